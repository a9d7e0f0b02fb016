//! The etcd [`RolloutStore`]: several replicas sharing one etcd run each rollout once.
//!
//! Key layout under the etcd prefix (`--etcd-prefix`, default `/sluice`):
//!
//! - `{prefix}/rollouts/state/{route}`: a route's rollout state (the controller's JSON);
//!   its revision is the key's `mod_revision`, and [`RolloutStore::store`] is a
//!   transaction comparing it (`0`: the key must be absent, `create_revision == 0`).
//!   State keys carry no lease: they outlive every replica.
//! - `{prefix}/rollouts/leader`: the leading replica's id, attached to its lease. A
//!   replica campaigns once a tick ([`LeaseTiming::keep_alive`]) with a put-if-absent;
//!   the key vanishes when the leader's lease ends (revoked at shutdown, or expired
//!   [`LeaseTiming::ttl`] after its last keep-alive when it died), and the next
//!   replica's campaign takes it: a takeover within `ttl + keep_alive` of the death.
//! - `{prefix}/rollouts/stats/{route}/{replica}`: a replica's cumulative per-backend
//!   figures ([`StatsSample`] list, JSON), attached to its lease, so a dead replica's
//!   figures vanish with it. [`RolloutStore::replica_stats`] is one range get.
//!
//! The config source ([`sluice_sources::etcd`]) ignores `{prefix}/rollouts/`.
//!
//! [`RolloutStore::is_leader`] reads atomics kept by a background task: it is true only
//! while this replica holds the leader key *and* its lease is known alive, that is before
//! `last keep-alive sent + ttl - margin`; a keep-alive that goes unanswered (etcd
//! unreachable) therefore turns leadership off by itself, before etcd could hand the key
//! to another replica. Nothing here is on the request path: an unreachable etcd makes
//! the store's calls fail (with errors naming etcd) and the runtime keeps serving the last
//! weights it applied.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};
use rand::Rng;
use sluice_core::split::StatsSample;
use sluice_sources::etcd::{self, EtcdOptions};

use super::store::{RolloutStore, StoreError, Stored};

/// How long a replica's lease lives and how often it is renewed.
#[derive(Debug, Clone, Copy)]
pub struct LeaseTiming {
    /// The lease's time to live: how long after a replica's death its leadership and
    /// figures last. Whole seconds (etcd's unit), at least 2. Default: 3 s.
    pub ttl: Duration,
    /// How often the lease is renewed and the leader key campaigned for; also the timeout
    /// of each keep-alive answer. Default: 1 s.
    pub keep_alive: Duration,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        LeaseTiming {
            ttl: Duration::from_secs(3),
            keep_alive: Duration::from_secs(1),
        }
    }
}

/// A replica id for this process: `{hostname}-{pid}-{4 hex digits}`, used when
/// `--replica-id` (`SLUICE_REPLICA_ID`) is not given.
pub fn default_replica_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "sluice".into());
    let suffix: u16 = rand::rng().random();
    sanitize(&format!("{host}-{}-{suffix:04x}", std::process::id()))
}

/// Keeps `[A-Za-z0-9._-]` (one etcd key segment) and turns anything else into `-`.
fn sanitize(id: &str) -> String {
    let out: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if out.is_empty() {
        "replica".into()
    } else {
        out
    }
}

/// What the background task and the store's calls share.
struct Shared {
    opts: EtcdOptions,
    /// `{prefix}/rollouts`.
    base: String,
    replica: String,
    timing: LeaseTiming,
    /// The connected client, once the task connected.
    client: ArcSwapOption<Client>,
    /// This replica's live lease id; 0 when there is none.
    lease: AtomicI64,
    /// This replica holds the leader key (under [`Shared::lease`]).
    holds_key: AtomicBool,
    /// Milliseconds since [`Shared::epoch`] until which the lease is known alive.
    alive_until_ms: AtomicU64,
    epoch: Instant,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn lease_alive(&self) -> bool {
        self.lease.load(Ordering::Acquire) != 0 && self.now_ms() < self.alive_until_ms.load(Ordering::Acquire)
    }

    fn lost(&self) {
        self.holds_key.store(false, Ordering::Release);
        self.alive_until_ms.store(0, Ordering::Release);
        self.lease.store(0, Ordering::Release);
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> StoreError {
        StoreError(format!("etcd {} ({what}): {e}", self.opts.endpoints.join(",")))
    }

    fn client(&self) -> Result<Client, StoreError> {
        match self.client.load_full() {
            Some(c) => Ok((*c).clone()),
            None => Err(self.err("connect", "not connected yet")),
        }
    }

    async fn timed<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.opts.request_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.err(what, e)),
            Err(_) => Err(self.err(what, format!("timed out after {:?}", self.opts.request_timeout))),
        }
    }

    fn state_key(&self, route: &str) -> String {
        format!("{}/state/{route}", self.base)
    }

    fn stats_prefix(&self, route: &str) -> String {
        format!("{}/stats/{route}/", self.base)
    }

    fn leader_key(&self) -> String {
        format!("{}/leader", self.base)
    }
}

/// The rollout store of replicas sharing etcd. See the module docs.
pub struct EtcdStore {
    shared: Arc<Shared>,
    /// The background task; `None` when no Tokio runtime could run it (logged).
    task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("prefix", &self.shared.opts.prefix)
            .field("replica", &self.shared.replica)
            .field("leader", &self.is_leader())
            .finish()
    }
}

impl EtcdStore {
    /// Starts the store's background task (connect, lease, campaign) and returns at once;
    /// until it connects, calls fail and [`RolloutStore::is_leader`] is false. The task
    /// runs on the current Tokio runtime, or outside one on the gateway's background
    /// runtime ([`crate::control::background`]). `replica` is sanitized to one key segment.
    pub fn start(opts: EtcdOptions, replica: &str, timing: LeaseTiming) -> EtcdStore {
        let base = format!("{}/rollouts", opts.prefix.trim_end_matches('/'));
        let shared = Arc::new(Shared {
            opts,
            base,
            replica: sanitize(replica),
            timing,
            client: ArcSwapOption::empty(),
            lease: AtomicI64::new(0),
            holds_key: AtomicBool::new(false),
            alive_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        });
        let handle = tokio::runtime::Handle::try_current()
            .ok()
            .or_else(crate::control::background::handle);
        let task = match handle {
            Some(h) => Some(h.spawn(run(Arc::clone(&shared)))),
            None => {
                tracing::error!("rollout store: no runtime for the etcd store; this replica never leads");
                None
            }
        };
        EtcdStore { shared, task }
    }

    /// The store of a gateway started with `--etcd`: [`EtcdStore::start`] with the default
    /// [`LeaseTiming`], as `replica_id` (`--replica-id`) or else [`default_replica_id`].
    pub fn for_gateway(opts: &EtcdOptions, replica_id: Option<&str>) -> EtcdStore {
        let replica = replica_id.map_or_else(default_replica_id, str::to_string);
        EtcdStore::start(opts.clone(), &replica, LeaseTiming::default())
    }

    /// Stops campaigning and revokes the lease, so another replica takes the lead (and
    /// this replica's figures vanish) at once rather than after the lease's TTL.
    pub async fn resign(&self) {
        if let Some(task) = &self.task {
            task.abort();
        }
        let lease = self.shared.lease.swap(0, Ordering::AcqRel);
        self.shared.lost();
        if lease != 0 {
            if let Ok(client) = self.shared.client() {
                let mut leases = client.lease_client();
                if let Err(e) = self.shared.timed("revoke", leases.revoke(lease)).await {
                    tracing::warn!("rollout store: {e}");
                }
            }
        }
    }

    /// The id of the replica that holds the leader key now, read from etcd.
    pub async fn leader_replica(&self) -> Result<Option<String>, StoreError> {
        let mut client = self.shared.client()?;
        let resp = self
            .shared
            .timed("get", client.get(self.shared.leader_key(), None))
            .await?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The background task: connect, then hold a lease and campaign until it is lost; again.
async fn run(shared: Arc<Shared>) {
    let mut wait = shared.timing.keep_alive / 2;
    loop {
        match etcd::connect(&shared.opts).await {
            Ok(client) => {
                shared.client.store(Some(Arc::new(client.clone())));
                if let Err(e) = session(&shared, client.clone()).await {
                    tracing::warn!(replica = %shared.replica, "rollout store: {e}; leadership dropped");
                }
                // Best effort: revoke the lease we stop renewing, so that its leader key
                // and figures go now rather than at its expiry (etcd may be unreachable).
                let lease = shared.lease.swap(0, Ordering::AcqRel);
                shared.lost();
                if lease != 0 {
                    let mut leases = client.lease_client();
                    let _ = tokio::time::timeout(shared.timing.keep_alive, leases.revoke(lease)).await;
                }
                wait = shared.timing.keep_alive / 2;
            }
            Err(e) => {
                tracing::warn!(replica = %shared.replica, "rollout store: {e}");
                wait = (wait * 2).min(shared.timing.ttl);
            }
        }
        tokio::time::sleep(wait).await;
    }
}

/// One lease: granted, kept alive each tick, and used to campaign for the leader key.
/// Returns when the lease is lost.
async fn session(shared: &Shared, client: Client) -> Result<(), StoreError> {
    let timing = shared.timing;
    let ttl_secs = i64::try_from(timing.ttl.as_secs().max(2)).unwrap_or(3);
    // What is left of the TTL when we stop trusting the lease: a keep-alive's round trip
    // and the clocks' drift.
    let margin = timing.keep_alive / 2;
    let mut leases = client.lease_client();
    let sent = shared.now_ms();
    let grant = shared.timed("lease grant", leases.grant(ttl_secs, None)).await?;
    let id = grant.id();
    let (mut keeper, mut answers) = shared.timed("lease keep-alive", leases.keep_alive(id)).await?;
    let ttl_ms = u64::try_from(timing.ttl.saturating_sub(margin).as_millis()).unwrap_or(0);
    shared.lease.store(id, Ordering::Release);
    shared.alive_until_ms.store(sent + ttl_ms, Ordering::Release);
    tracing::info!(replica = %shared.replica, lease = id, "rollout store: lease granted");

    let mut kv = client.clone();
    let mut tick = tokio::time::interval(timing.keep_alive);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // `keep_alive` read the answer to its first request itself.
    let mut pending_answers = 0u32;
    loop {
        tick.tick().await;
        // Renew: every answer with a positive TTL proves the lease alive at its send time.
        let sent = shared.now_ms();
        keeper
            .keep_alive()
            .await
            .map_err(|e| shared.err("lease keep-alive", e))?;
        pending_answers += 1;
        while pending_answers > 0 {
            match tokio::time::timeout(timing.keep_alive, answers.message()).await {
                Ok(Ok(Some(answer))) => {
                    pending_answers -= 1;
                    if answer.ttl() <= 0 {
                        return Err(shared.err("lease keep-alive", format!("lease {id:x} expired")));
                    }
                    if pending_answers == 0 {
                        shared.alive_until_ms.store(sent + ttl_ms, Ordering::Release);
                    }
                }
                Ok(Ok(None)) => return Err(shared.err("lease keep-alive", "stream closed")),
                Ok(Err(e)) => return Err(shared.err("lease keep-alive", e)),
                Err(_) => break,
            }
        }
        if !shared.lease_alive() {
            return Err(shared.err("lease keep-alive", "no answer within the lease's TTL"));
        }

        // Campaign: take the leader key if nobody holds it; else see whether we do.
        let key = shared.leader_key();
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.as_str(),
                shared.replica.as_str(),
                Some(PutOptions::new().with_lease(id)),
            )])
            .or_else([TxnOp::get(key.as_str(), None)]);
        match tokio::time::timeout(timing.keep_alive, kv.txn(txn)).await {
            Ok(Ok(resp)) => {
                let holds = resp.succeeded()
                    || resp.op_responses().iter().any(|r| match r {
                        TxnOpResponse::Get(get) => get.kvs().first().is_some_and(|kv| kv.lease() == id),
                        _ => false,
                    });
                let was = shared.holds_key.swap(holds, Ordering::AcqRel);
                if holds != was {
                    tracing::info!(replica = %shared.replica, leader = holds, "rollout store: leadership changed");
                }
            }
            Ok(Err(e)) => tracing::warn!("rollout store: {}", shared.err("campaign", e)),
            Err(_) => tracing::warn!("rollout store: {}", shared.err("campaign", "timed out")),
        }
    }
}

#[async_trait]
impl RolloutStore for EtcdStore {
    async fn load(&self, route: &str) -> Result<Option<Stored>, StoreError> {
        let mut client = self.shared.client()?;
        let resp = self
            .shared
            .timed("get", client.get(self.shared.state_key(route), None))
            .await?;
        Ok(resp.kvs().first().map(|kv| Stored {
            state: kv.value().to_vec(),
            revision: u64::try_from(kv.mod_revision()).unwrap_or(0),
        }))
    }

    async fn store(&self, route: &str, revision: u64, state: &[u8]) -> Result<bool, StoreError> {
        let mut client = self.shared.client()?;
        let key = self.shared.state_key(route);
        let compare = if revision == 0 {
            Compare::create_revision(key.as_str(), CompareOp::Equal, 0)
        } else {
            let revision = i64::try_from(revision).map_err(|e| self.shared.err("txn", e))?;
            Compare::mod_revision(key.as_str(), CompareOp::Equal, revision)
        };
        let txn = Txn::new()
            .when([compare])
            .and_then([TxnOp::put(key.as_str(), state.to_vec(), None)]);
        let resp = self.shared.timed("txn", client.txn(txn)).await?;
        Ok(resp.succeeded())
    }

    async fn delete(&self, route: &str) -> Result<(), StoreError> {
        let mut client = self.shared.client()?;
        self.shared
            .timed("delete", client.delete(self.shared.state_key(route), None))
            .await?;
        Ok(())
    }

    fn is_leader(&self) -> bool {
        self.shared.holds_key.load(Ordering::Acquire) && self.shared.lease_alive()
    }

    fn replica(&self) -> &str {
        &self.shared.replica
    }

    async fn publish_stats(&self, route: &str, samples: &[StatsSample]) -> Result<(), StoreError> {
        let lease = self.shared.lease.load(Ordering::Acquire);
        if lease == 0 {
            return Err(self.shared.err("put", "no lease yet"));
        }
        let mut client = self.shared.client()?;
        let json = serde_json::to_vec(samples).map_err(|e| self.shared.err("put", e))?;
        let key = format!("{}{}", self.shared.stats_prefix(route), self.shared.replica);
        self.shared
            .timed(
                "put",
                client.put(key, json, Some(PutOptions::new().with_lease(lease))),
            )
            .await?;
        Ok(())
    }

    async fn replica_stats(&self, route: &str) -> Result<Vec<(String, Vec<StatsSample>)>, StoreError> {
        let mut client = self.shared.client()?;
        let prefix = self.shared.stats_prefix(route);
        let resp = self
            .shared
            .timed(
                "get",
                client.get(prefix.as_str(), Some(GetOptions::new().with_prefix())),
            )
            .await?;
        let mut out = Vec::with_capacity(resp.kvs().len());
        for kv in resp.kvs() {
            let key = String::from_utf8_lossy(kv.key());
            let replica = key.strip_prefix(prefix.as_str()).unwrap_or(&key).to_string();
            match serde_json::from_slice::<Vec<StatsSample>>(kv.value()) {
                Ok(samples) => out.push((replica, samples)),
                Err(e) => tracing::warn!("rollout store: ignoring etcd key {key}: {e}"),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
#[path = "../../../config/sources/tests/support/mod.rs"]
mod etcd_support;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::etcd_support::Etcd;
    use super::*;

    /// Short leases, so that handovers take about two seconds.
    const FAST: LeaseTiming = LeaseTiming {
        ttl: Duration::from_secs(2),
        keep_alive: Duration::from_millis(400),
    };

    fn opts(etcd: &Etcd, prefix: &str) -> EtcdOptions {
        EtcdOptions {
            endpoints: vec![etcd.endpoint()],
            prefix: prefix.into(),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(2),
            ..EtcdOptions::default()
        }
    }

    /// Polls `cond` every 50 ms until it holds; panics with `what` after `limit`.
    async fn eventually(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
        let start = Instant::now();
        loop {
            if cond() {
                return start.elapsed();
            }
            assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn leaders(stores: &[&EtcdStore]) -> Vec<String> {
        stores
            .iter()
            .filter(|s| s.is_leader())
            .map(|s| s.replica().to_string())
            .collect()
    }

    async fn connected(store: &EtcdStore) {
        let start = Instant::now();
        while store.load("probe").await.is_err() {
            assert!(start.elapsed() < Duration::from_secs(10), "store never connected");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn state_is_compare_and_swapped_on_the_keys_revision() {
        let etcd = Etcd::start().await;
        let store = EtcdStore::start(opts(&etcd, "/cas"), "a", FAST);
        connected(&store).await;
        assert!(store.load("r1").await.unwrap().is_none());
        assert!(store.store("r1", 0, b"{\"step\":1}").await.unwrap());
        assert!(
            !store.store("r1", 0, b"{\"step\":9}").await.unwrap(),
            "create refused when present"
        );
        let first = store.load("r1").await.unwrap().unwrap();
        assert_eq!(first.state, b"{\"step\":1}");
        assert!(first.revision > 0);
        assert!(store.store("r1", first.revision, b"{\"step\":2}").await.unwrap());
        assert!(
            !store.store("r1", first.revision, b"{\"step\":9}").await.unwrap(),
            "a stale revision is refused"
        );
        let second = store.load("r1").await.unwrap().unwrap();
        assert_eq!(second.state, b"{\"step\":2}");
        assert!(second.revision > first.revision);
        // Another replica sees the same state and revision, and loses a race it is late for.
        let other = EtcdStore::start(opts(&etcd, "/cas"), "b", FAST);
        connected(&other).await;
        assert_eq!(other.load("r1").await.unwrap(), Some(second.clone()));
        assert!(other.store("r1", second.revision, b"{\"step\":3}").await.unwrap());
        assert!(!store.store("r1", second.revision, b"{\"step\":9}").await.unwrap());
        // The key is where the docs say, and other routes are apart.
        let mut client = etcd.client().await;
        let kv = client.get("/cas/rollouts/state/r1", None).await.unwrap();
        assert_eq!(kv.kvs()[0].value(), b"{\"step\":3}");
        assert!(store.load("r2").await.unwrap().is_none());
        store.delete("r1").await.unwrap();
        assert!(other.load("r1").await.unwrap().is_none());
        assert!(
            other.store("r1", 0, b"{\"step\":1}").await.unwrap(),
            "created again after delete"
        );
    }

    #[tokio::test]
    async fn leadership_is_held_by_one_replica_and_taken_over_when_it_ends() {
        let etcd = Etcd::start().await;
        let a = EtcdStore::start(opts(&etcd, "/lead"), "a", FAST);
        let b = EtcdStore::start(opts(&etcd, "/lead"), "b", FAST);
        let c = EtcdStore::start(opts(&etcd, "/lead"), "c", FAST);
        eventually("one leader", Duration::from_secs(10), || {
            leaders(&[&a, &b, &c]).len() == 1
        })
        .await;
        // It stays one replica over several lease renewals.
        let first = leaders(&[&a, &b, &c]);
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(
                leaders(&[&a, &b, &c]),
                first,
                "leadership moved or split while nobody died"
            );
        }
        assert_eq!(a.leader_replica().await.unwrap(), Some(first[0].clone()));
        let all = [a, b, c];
        let (gone, rest): (Vec<_>, Vec<_>) = all.into_iter().partition(|s| s.replica() == first[0]);
        let gone = gone.into_iter().next().unwrap();

        // The leader resigns (revokes its lease): another takes over within a renewal or two.
        gone.resign().await;
        assert!(!gone.is_leader());
        let took = eventually("a new leader after a resignation", Duration::from_secs(3), || {
            leaders(&[&rest[0], &rest[1]]).len() == 1
        })
        .await;
        assert!(took <= FAST.keep_alive * 3, "took {took:?}");
        assert!(!gone.is_leader());

        // The new leader dies without resigning (its client dropped): its lease expires and
        // the last replica takes over within the TTL and a renewal.
        let second = leaders(&[&rest[0], &rest[1]]);
        let mut rest = rest;
        let idx = rest.iter().position(|s| s.replica() == second[0]).unwrap();
        let dead = rest.remove(idx);
        drop(dead);
        let took = eventually("a new leader after a death", Duration::from_secs(8), || {
            rest[0].is_leader()
        })
        .await;
        assert!(took <= FAST.ttl + FAST.keep_alive * 3, "took {took:?}");
        assert_eq!(
            rest[0].leader_replica().await.unwrap().as_deref(),
            Some(rest[0].replica())
        );
    }

    #[tokio::test]
    async fn figures_are_per_replica_and_vanish_with_its_lease() {
        let etcd = Etcd::start().await;
        let a = EtcdStore::start(opts(&etcd, "/stats"), "a", FAST);
        let b = EtcdStore::start(opts(&etcd, "/stats"), "b", FAST);
        let c = EtcdStore::start(opts(&etcd, "/stats"), "c", FAST);
        for s in [&a, &b, &c] {
            connected(s).await;
            eventually("a lease", Duration::from_secs(5), || s.shared.lease_alive()).await;
        }
        let sample = |n: u64| StatsSample {
            requests: n,
            errors: n / 10,
            buckets: vec![n],
        };
        a.publish_stats("r", &[sample(100), sample(10)]).await.unwrap();
        b.publish_stats("r", &[sample(200), sample(20)]).await.unwrap();
        c.publish_stats("r", &[sample(300), sample(30)]).await.unwrap();
        c.publish_stats("other", &[sample(1)]).await.unwrap();
        let mut got = a.replica_stats("r").await.unwrap();
        got.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(
            got,
            vec![
                ("a".to_string(), vec![sample(100), sample(10)]),
                ("b".to_string(), vec![sample(200), sample(20)]),
                ("c".to_string(), vec![sample(300), sample(30)]),
            ]
        );
        // A newer publish replaces the replica's figures.
        b.publish_stats("r", &[sample(250), sample(25)]).await.unwrap();
        let got = c.replica_stats("r").await.unwrap();
        assert!(got.contains(&("b".to_string(), vec![sample(250), sample(25)])));

        // A resigned replica's figures go at once; a dead one's when its lease expires.
        a.resign().await;
        let names = |v: Vec<(String, Vec<StatsSample>)>| v.into_iter().map(|(r, _)| r).collect::<Vec<_>>();
        let mut now = names(b.replica_stats("r").await.unwrap());
        now.sort();
        assert_eq!(now, ["b", "c"]);
        drop(c);
        let start = Instant::now();
        loop {
            if names(b.replica_stats("r").await.unwrap()) == ["b"] {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(8),
                "a dead replica's figures stayed"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(b.replica_stats("other").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_unreachable_etcd_turns_leadership_off_and_calls_fail_quickly() {
        let mut etcd = Etcd::start().await;
        let a = EtcdStore::start(opts(&etcd, "/down"), "a", FAST);
        eventually("leader", Duration::from_secs(10), || a.is_leader()).await;
        etcd.kill();
        let off = eventually("leadership off", Duration::from_secs(5), || !a.is_leader()).await;
        assert!(off <= FAST.ttl, "stayed leader {off:?} after etcd went away");
        let start = Instant::now();
        let err = a.load("r").await.unwrap_err();
        assert!(err.0.contains("etcd"), "{err}");
        assert!(
            start.elapsed() <= Duration::from_secs(3),
            "a call blocked {:?}",
            start.elapsed()
        );
        etcd.restart().await;
        eventually("leader again", Duration::from_secs(15), || a.is_leader()).await;
    }

    #[test]
    fn replica_ids_are_one_key_segment() {
        assert_eq!(sanitize("host/1 2"), "host-1-2");
        assert_eq!(sanitize(""), "replica");
        let id = default_replica_id();
        assert!(id.contains(&std::process::id().to_string()), "{id}");
        assert_eq!(sanitize(&id), id);
    }
}
