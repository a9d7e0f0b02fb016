//! The Kafka sink: a producer on its own thread and runtime, built on `rskafka` (a pure
//! Rust client: no librdkafka to build; TLS through rustls, SASL PLAIN and SCRAM, gzip
//! and Snappy compression). `docs/logging.md` explains the choice.
//!
//! The loop:
//!
//! 1. takes records from the sink's bounded queue into the next batch, formatting each
//!    as JSON (the message value) with its key, until the batch holds
//!    `batch_max_bytes`, or `linger` has passed since its first record;
//! 2. sends the batch, one produce request per partition. A record's partition is the
//!    murmur2 hash of its key modulo the partition count (Kafka's default partitioner,
//!    so a route's records stay in order on one partition); records without a key go,
//!    a batch at a time, to the partitions in turn;
//! 3. when Kafka cannot be reached or the send fails, keeps the batch, drops the client,
//!    and tries again (connecting anew) with a back-off of 100 ms doubling to 5 s.
//!    Meanwhile it takes nothing from the queue, so the queue fills, and the stream
//!    drops (and counts, `reason="full"`) what does not fit; the workers never wait.
//!    Delivery resumes by itself when the broker is back. A batch the broker answers
//!    with an error 5 times in a row (a record too large, say) is dropped and counted
//!    as `rejected`.
//!
//! When the stream is dropped (a reload with other sinks, or shutdown) the loop sends
//! what is queued, trying for at most 5 s, and ends.

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder, Credentials, SaslConfig};
use rskafka::record::Record;
use sluice_config::logging::{AccessField, KafkaCompression, KafkaKey, KafkaSink, SaslMechanism};

use super::{LogRecord, SinkCounters};

/// Kafka's default partitioner hash (`org.apache.kafka.common.utils.Utils.murmur2`).
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = SEED ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rem = chunks.remainder();
    if rem.len() >= 3 {
        h ^= u32::from(rem[2]) << 16;
    }
    if rem.len() >= 2 {
        h ^= u32::from(rem[1]) << 8;
    }
    if !rem.is_empty() {
        h ^= u32::from(rem[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// A message timestamp (milliseconds since the epoch; the epoch itself for a clock
/// before it).
fn chrono_time(t: std::time::SystemTime) -> rskafka::chrono::DateTime<rskafka::chrono::Utc> {
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    rskafka::chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// The partition (index into `n` partitions) for `key`.
pub fn partition_for(key: &[u8], n: usize) -> usize {
    ((murmur2(key) & 0x7fff_ffff) as usize) % n.max(1)
}

/// Starts the producer thread for `config`, taking records from `rx`.
pub fn spawn<R: LogRecord>(
    stream: &str,
    sink: &str,
    config: &KafkaSink,
    rx: Receiver<Arc<R>>,
    fields: Arc<[AccessField]>,
    counters: SinkCounters,
) -> Result<(), String> {
    let setup = Setup::from_config(config)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let label = format!("{stream}/{sink}");
    std::thread::Builder::new()
        .name(format!("sluice-kafka-{stream}-{sink}"))
        .spawn(move || {
            rt.block_on(
                Producer {
                    setup,
                    label,
                    rx,
                    fields,
                    counters,
                    conn: None,
                    next_partition: 0,
                }
                .run(),
            );
        })
        .map(|_| ())
        .map_err(|e| format!("cannot start the producer thread: {e}"))
}

/// What connecting needs, resolved when the sink starts.
struct Setup {
    config: KafkaSink,
    tls: Option<Arc<rustls::ClientConfig>>,
    sasl: Option<SaslConfig>,
}

impl Setup {
    fn from_config(config: &KafkaSink) -> Result<Setup, String> {
        let tls = config.tls.as_ref().map(tls_config).transpose()?.map(Arc::new);
        let sasl = match &config.sasl {
            None => None,
            Some(s) => {
                let password = match (&s.password, &s.password_env) {
                    (Some(p), _) => p.expose().to_string(),
                    (None, Some(var)) => {
                        std::env::var(var).map_err(|_| format!("sasl.password_env: ${var} is not set"))?
                    }
                    (None, None) => return Err("sasl: no password".into()),
                };
                let c = Credentials::new(s.username.clone(), password);
                Some(match s.mechanism {
                    SaslMechanism::Plain => SaslConfig::Plain(c),
                    SaslMechanism::ScramSha256 => SaslConfig::ScramSha256(c),
                    SaslMechanism::ScramSha512 => SaslConfig::ScramSha512(c),
                })
            }
        };
        Ok(Setup {
            config: config.clone(),
            tls,
            sasl,
        })
    }
}

fn tls_config(t: &sluice_config::logging::KafkaTls) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    match &t.ca {
        Some(ca) => {
            let pem = std::fs::read(ca).map_err(|e| format!("tls.ca {ca}: {e}"))?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| format!("tls.ca {ca}: {e}"))?;
                roots.add(cert).map_err(|e| format!("tls.ca {ca}: {e}"))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_root_certificates(roots);
    match (&t.cert, &t.key) {
        (Some(cert), Some(key)) => {
            let pem = std::fs::read(cert).map_err(|e| format!("tls.cert {cert}: {e}"))?;
            let chain = rustls_pemfile::certs(&mut pem.as_slice())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("tls.cert {cert}: {e}"))?;
            let pem = std::fs::read(key).map_err(|e| format!("tls.key {key}: {e}"))?;
            let key_der = rustls_pemfile::private_key(&mut pem.as_slice())
                .map_err(|e| format!("tls.key {key}: {e}"))?
                .ok_or_else(|| format!("tls.key {key}: no private key"))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| format!("tls: {e}"))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// A connected client with a client per partition of the topic.
struct Conn {
    _client: Client,
    partitions: Vec<PartitionClient>,
}

/// One formatted record waiting in the batch.
struct Pending {
    key: Option<Vec<u8>>,
    record: Record,
}

struct Producer<R> {
    setup: Setup,
    label: String,
    rx: Receiver<Arc<R>>,
    fields: Arc<[AccessField]>,
    counters: SinkCounters,
    conn: Option<Conn>,
    next_partition: usize,
}

/// How often the loop looks at the queue while a batch is empty or lingering.
const POLL: Duration = Duration::from_millis(10);
/// How long the loop tries to send what is left once the stream is dropped.
const FINAL_FLUSH: Duration = Duration::from_secs(5);
/// How long one connect or produce may take before it counts as failed.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

impl<R: LogRecord> Producer<R> {
    async fn run(mut self) {
        let mut batch: Vec<Pending> = Vec::new();
        let mut bytes = 0usize;
        let mut first_at: Option<Instant> = None;
        let mut backoff = Duration::from_millis(100);
        let mut refusals = 0u32;
        let mut gone_at: Option<Instant> = None;
        let mut value = Vec::with_capacity(512);
        loop {
            // Fill the batch from the queue.
            while bytes < self.setup.config.batch_max_bytes {
                match self.rx.try_recv() {
                    Ok(r) => {
                        value.clear();
                        r.write_json(&self.fields, &mut value);
                        let key = r.key(self.setup.config.key).map(|k| k.as_bytes().to_vec());
                        let record = Record {
                            key: key.clone(),
                            value: Some(value.clone()),
                            headers: BTreeMap::new(),
                            timestamp: chrono_time(r.timestamp()),
                        };
                        bytes += record.approximate_size();
                        batch.push(Pending { key, record });
                        first_at.get_or_insert_with(Instant::now);
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        gone_at.get_or_insert_with(Instant::now);
                        break;
                    }
                }
            }
            if let Some(at) = gone_at {
                if batch.is_empty() {
                    return;
                }
                if at.elapsed() > FINAL_FLUSH {
                    self.counters.closed.inc_by(batch.len() as u64);
                    tracing::warn!(sink = %self.label, dropped = batch.len(), "Kafka sink stopped with records unsent");
                    return;
                }
            }
            let due = first_at.is_some_and(|t| t.elapsed() >= self.setup.config.linger);
            if batch.is_empty() || (bytes < self.setup.config.batch_max_bytes && !due && gone_at.is_none()) {
                tokio::time::sleep(POLL).await;
                continue;
            }
            match self.send(&mut batch).await {
                Ok(()) => {
                    bytes = 0;
                    first_at = None;
                    backoff = Duration::from_millis(100);
                    refusals = 0;
                }
                Err((e, refused)) => {
                    if refused {
                        refusals += 1;
                    }
                    if refusals >= 5 {
                        self.counters.rejected.inc_by(batch.len() as u64);
                        tracing::warn!(sink = %self.label, dropped = batch.len(), "Kafka refused a batch 5 times; dropped: {e}");
                        batch.clear();
                        bytes = 0;
                        first_at = None;
                        refusals = 0;
                    } else {
                        tracing::warn!(sink = %self.label, retry_in = ?backoff, "Kafka send failed: {e}");
                    }
                    self.conn = None;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn connect(&self) -> Result<Conn, String> {
        let c = &self.setup.config;
        let mut builder = ClientBuilder::new(c.brokers.clone())
            .client_id(c.client_id.clone())
            .backoff_config(rskafka::BackoffConfig {
                init_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_millis(500),
                base: 2.0,
                deadline: Some(REQUEST_DEADLINE),
            });
        if let Some(tls) = &self.setup.tls {
            builder = builder.tls_config(tls.clone());
        }
        if let Some(sasl) = &self.setup.sasl {
            builder = builder.sasl_config(sasl.clone());
        }
        let client = builder.build().await.map_err(|e| format!("connect: {e}"))?;
        let topics = client.list_topics().await.map_err(|e| format!("metadata: {e}"))?;
        let Some(topic) = topics.into_iter().find(|t| t.name == c.topic) else {
            return Err(format!("topic {:?} does not exist", c.topic));
        };
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in &topic.partitions {
            partitions.push(
                client
                    .partition_client(c.topic.clone(), *p, UnknownTopicHandling::Error)
                    .await
                    .map_err(|e| format!("partition {p}: {e}"))?,
            );
        }
        if partitions.is_empty() {
            return Err(format!("topic {:?} has no partitions", c.topic));
        }
        tracing::info!(sink = %self.label, topic = %c.topic, partitions = partitions.len(), "Kafka sink connected");
        Ok(Conn {
            _client: client,
            partitions,
        })
    }

    /// Sends the batch, one produce per partition; on success the batch is emptied.
    /// The error says whether the broker answered (refused) or could not be reached.
    async fn send(&mut self, batch: &mut Vec<Pending>) -> Result<(), (String, bool)> {
        if self.conn.is_none() {
            let conn = tokio::time::timeout(REQUEST_DEADLINE * 2, self.connect())
                .await
                .map_err(|_| ("connect: timed out".to_string(), false))?
                .map_err(|e| (e, false))?;
            self.conn = Some(conn);
        }
        let Some(conn) = &self.conn else {
            return Err(("not connected".into(), false));
        };
        let n = conn.partitions.len();
        let sticky = self.next_partition % n;
        let mut groups: Vec<Vec<Record>> = (0..n).map(|_| Vec::new()).collect();
        for p in batch.iter() {
            let i = p.key.as_deref().map_or(sticky, |k| partition_for(k, n));
            groups[i].push(p.record.clone());
        }
        let compression = match self.setup.config.compression {
            KafkaCompression::None => Compression::NoCompression,
            KafkaCompression::Gzip => Compression::Gzip,
            KafkaCompression::Snappy => Compression::Snappy,
        };
        let total = batch.len() as u64;
        let mut sent = vec![false; n];
        for (i, records) in groups.into_iter().enumerate() {
            if records.is_empty() {
                sent[i] = true;
                continue;
            }
            let r = tokio::time::timeout(
                REQUEST_DEADLINE * 2,
                conn.partitions[i].produce(records, compression),
            )
            .await;
            match r {
                Ok(Ok(_offsets)) => sent[i] = true,
                Ok(Err(e)) => {
                    let refused = matches!(e, rskafka::client::error::Error::ServerError { .. });
                    // Keep only what was not sent, so nothing goes out twice.
                    let before = batch.len();
                    batch.retain(|p| !sent[p.key.as_deref().map_or(sticky, |k| partition_for(k, n))]);
                    self.counters.written.inc_by((before - batch.len()) as u64);
                    return Err((format!("produce: {e}"), refused));
                }
                Err(_) => {
                    let before = batch.len();
                    batch.retain(|p| !sent[p.key.as_deref().map_or(sticky, |k| partition_for(k, n))]);
                    self.counters.written.inc_by((before - batch.len()) as u64);
                    return Err(("produce: timed out".into(), false));
                }
            }
        }
        self.next_partition = self.next_partition.wrapping_add(1);
        self.counters.written.inc_by(total);
        batch.clear();
        Ok(())
    }
}

/// The key of an access-log record or event, for [`LogRecord::key`] implementations.
pub fn key_of<'a>(key: KafkaKey, route: Option<&'a str>, request_id: Option<&'a str>) -> Option<&'a str> {
    match key {
        KafkaKey::Route => route,
        KafkaKey::RequestId => request_id,
        KafkaKey::None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // Vectors from Kafka's UtilsTest.
        assert_eq!(murmur2(b"21"), -973_932_308);
        assert_eq!(murmur2(b"foobar"), -790_332_482);
        assert_eq!(murmur2(b"a-little-bit-long-string"), -985_981_536);
        assert_eq!(murmur2(b"a-little-bit-longer-string"), -1_486_304_829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"),
            -58_897_971
        );
        assert_eq!(murmur2(b"abc"), 479_470_107);
        assert!(partition_for(b"route-a", 3) < 3);
    }
}
