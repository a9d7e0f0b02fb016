//! Leader election on a `coordination.k8s.io/v1` Lease, so that one replica of several
//! writes status back (kube 4.2's runtime has no leader election).
//!
//! Every `retry_period` each replica reads the Lease:
//! - none: it creates one naming itself (`holderIdentity`, `leaseDurationSeconds`,
//!   `acquireTime`, `renewTime`); a `409 AlreadyExists` means another replica was first;
//! - its own: it renews `renewTime` with a replace carrying the `resourceVersion` it
//!   read, so a concurrent writer makes it fail with `409 Conflict` (optimistic
//!   concurrency) and it reads again;
//! - another's: it takes it over (new holder, `leaseTransitions + 1`) once the record
//!   has not changed for `leaseDurationSeconds` **as observed locally** (the holder's
//!   clock is never compared with ours, as in client-go), or at once when the holder
//!   is empty.
//!
//! A leader that cannot renew stops calling itself leader when its last successful
//! renewal is older than two thirds of the duration, before anyone may take over.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::Client;
use tokio::sync::watch;

/// What one elector needs.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// The Lease's namespace.
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// This replica's identity (`holderIdentity`): the pod name.
    pub identity: String,
    /// `leaseDurationSeconds` (whole seconds, at least 1).
    pub duration: Duration,
    /// How often to renew or check.
    pub retry: Duration,
}

impl LeaseSettings {
    /// The settings of `kubernetes.status`, with the namespace and identity from the
    /// environment (`POD_NAMESPACE`, `POD_NAME`, else the host name).
    pub fn from_config(cfg: &sluice_config::kubernetes::StatusConfig) -> LeaseSettings {
        let namespace = cfg
            .lease_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok().filter(|s| !s.is_empty()))
            .unwrap_or_else(|| "default".into());
        let duration = Duration::from_secs(cfg.lease_duration.as_secs().max(1));
        let retry = cfg.retry_period.clamp(Duration::from_millis(50), duration / 2);
        LeaseSettings {
            namespace,
            name: cfg.lease_name.clone(),
            identity: identity(),
            duration,
            retry,
        }
    }
}

/// This replica's identity: `$POD_NAME`, else `$HOSTNAME`, else `/etc/hostname`.
pub fn identity() -> String {
    std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| "sluice".into())
}

/// The record of a Lease that matters for expiry: when it changes, the holder is alive.
#[derive(Debug, Clone, PartialEq)]
struct Record {
    holder: Option<String>,
    renew: Option<MicroTime>,
    transitions: Option<i32>,
}

fn record(l: &Lease) -> Record {
    let spec = l.spec.clone().unwrap_or_default();
    Record {
        holder: spec.holder_identity,
        renew: spec.renew_time,
        transitions: spec.lease_transitions,
    }
}

/// Runs the election for ever, telling `leader` whether this replica holds the Lease.
pub async fn run(client: Client, s: LeaseSettings, leader: watch::Sender<bool>) {
    let api: Api<Lease> = Api::namespaced(client, &s.namespace);
    let secs = i32::try_from(s.duration.as_secs()).unwrap_or(i32::MAX);
    let mut observed: Option<(Record, Instant)> = None;
    let mut last_renew: Option<Instant> = None;
    let set = |v: bool| {
        leader.send_if_modified(|cur| {
            if *cur != v {
                if v {
                    tracing::info!(
                        "kubernetes: {} holds Lease {}/{}",
                        s.identity,
                        s.namespace,
                        s.name
                    );
                } else {
                    tracing::info!("kubernetes: {} lost Lease {}/{}", s.identity, s.namespace, s.name);
                }
                *cur = v;
                true
            } else {
                false
            }
        });
    };
    loop {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let mine = |spec: LeaseSpec, acquire: bool| LeaseSpec {
            holder_identity: Some(s.identity.clone()),
            lease_duration_seconds: Some(secs),
            renew_time: Some(now.clone()),
            acquire_time: if acquire {
                Some(now.clone())
            } else {
                spec.acquire_time.clone()
            },
            lease_transitions: if acquire {
                Some(spec.lease_transitions.unwrap_or(0) + i32::from(spec.holder_identity.is_some()))
            } else {
                spec.lease_transitions
            },
            ..spec
        };
        let outcome: Result<bool, String> = match api.get_opt(&s.name).await {
            Err(e) => Err(format!("get: {e}")),
            Ok(None) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(s.name.clone()),
                        namespace: Some(s.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(mine(LeaseSpec::default(), true)),
                };
                match api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(format!("create: {e}")),
                }
            }
            Ok(Some(lease)) => {
                let rec = record(&lease);
                let spec = lease.spec.clone().unwrap_or_default();
                let held_by_me = spec.holder_identity.as_deref() == Some(s.identity.as_str());
                let free = spec.holder_identity.as_deref().is_none_or(str::is_empty);
                let expired = match &observed {
                    Some((r, at)) if *r == rec => at.elapsed() >= s.duration,
                    _ => {
                        observed = Some((rec.clone(), Instant::now()));
                        false
                    }
                };
                if held_by_me || free || expired {
                    let mut next = lease;
                    next.spec = Some(mine(spec, !held_by_me));
                    match api.replace(&s.name, &PostParams::default(), &next).await {
                        Ok(l) => {
                            observed = Some((record(&l), Instant::now()));
                            Ok(true)
                        }
                        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                        Err(e) => Err(format!("update: {e}")),
                    }
                } else {
                    Ok(false)
                }
            }
        };
        match outcome {
            Ok(true) => {
                last_renew = Some(Instant::now());
                set(true);
            }
            Ok(false) => {
                last_renew = None;
                set(false);
            }
            Err(e) => {
                tracing::warn!("kubernetes: Lease {}/{}: {e}", s.namespace, s.name);
                if last_renew.is_none_or(|t| t.elapsed() >= s.duration * 2 / 3) {
                    set(false);
                }
            }
        }
        tokio::time::sleep(s.retry).await;
    }
}
