//! The operator's Kafka clients, kept open between observations (part of observe).
//!
//! A client per observation reconnects every time, and against a dead broker each new client
//! logs librdkafka's errors afresh, so a job's every observation floods the log. Kept clients
//! keep their connections and their [`weir_contract::client::Link`], which logs each kind of
//! client error at most once per 30 s, however many observations see it.
//!
//! A client is keyed by its whole librdkafka configuration: the bootstrap servers, the job's
//! properties (security settings among them), its credentials and its group, which Kafka's
//! committed offsets are read for (librdkafka reads a consumer's own group only). Jobs on one
//! cluster thus share nothing but the brokers; a job's Secret that changes makes a new key,
//! and the old client goes once it has been unused for [`ClientCache::idle`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::Consumer;
use rdkafka::ClientConfig;

use crate::observation::{ObserveConsumer, ObserveError};

/// How long a client may go unused before it is closed: a few observation periods, so a job's
/// client lives as long as the job, and a deleted job's goes soon after it.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(300);

/// A kept client, with a lock for the reads that assign partitions (record timestamps): two
/// jobs that name the same group would otherwise read each other's assignment.
pub(crate) struct Kept {
    pub consumer: ObserveConsumer,
    pub assign: Mutex<()>,
}

/// The sorted configuration: holds credentials, so it is never printed (no `Debug`).
#[derive(Clone, PartialEq, Eq, Hash)]
struct Key(Vec<(String, String)>);

impl Key {
    fn of(config: &ClientConfig) -> Self {
        Self(
            config
                .config_map()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }
}

/// Open clients by configuration, each with when it was last used.
pub struct ClientCache {
    idle: Duration,
    clients: Mutex<HashMap<Key, (Arc<Kept>, Instant)>>,
    created: AtomicU64,
}

impl std::fmt::Debug for ClientCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCache")
            .field("idle", &self.idle)
            .field("open", &self.open())
            .field("created", &self.created())
            .finish()
    }
}

impl Default for ClientCache {
    fn default() -> Self {
        Self::new(DEFAULT_IDLE)
    }
}

impl ClientCache {
    /// Clients unused for `idle` are closed at the next use of the cache.
    pub fn new(idle: Duration) -> Self {
        Self {
            idle,
            clients: Mutex::default(),
            created: AtomicU64::new(0),
        }
    }

    pub fn idle(&self) -> Duration {
        self.idle
    }

    /// Clients created over the cache's life.
    pub fn created(&self) -> u64 {
        self.created.load(Ordering::Relaxed)
    }

    /// Clients open now.
    pub fn open(&self) -> usize {
        self.clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// The open client for `config`, or a new one; closes the clients unused for too long.
    ///
    /// # Errors
    /// [`ObserveError::Client`] when librdkafka refuses the settings.
    pub(crate) fn get(&self, config: &ClientConfig) -> Result<Arc<Kept>, ObserveError> {
        let key = Key::of(config);
        let now = Instant::now();
        let mut closed = Vec::new();
        let kept = {
            let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
            clients.retain(|k, (client, used)| {
                let keep = *k == key || now.duration_since(*used) < self.idle;
                if !keep {
                    closed.push(client.clone());
                }
                keep
            });
            match clients.get_mut(&key) {
                Some((client, used)) if now.duration_since(*used) < self.idle => {
                    *used = now;
                    client.clone()
                }
                _ => {
                    // Creating a client does not touch the network, so holding the lock is brief.
                    let consumer: ObserveConsumer = config
                        .clone()
                        // Warnings carry the causes ("Connection refused"); the Link rate-limits
                        // them. Debug lines would cost librdkafka work for nothing here.
                        .set_log_level(RDKafkaLogLevel::Warning)
                        .create_with_context(weir_contract::client::SourceContext::default())
                        .map_err(ObserveError::Client)?;
                    self.created.fetch_add(1, Ordering::Relaxed);
                    let client = Arc::new(Kept {
                        consumer,
                        assign: Mutex::new(()),
                    });
                    if let Some((old, _)) = clients.insert(key, (client.clone(), now)) {
                        closed.push(old);
                    }
                    client
                }
            }
        };
        // Closing a client waits for its threads: never under the lock.
        drop(closed);
        Ok(kept)
    }

    /// Closes the client for `config`, if open: after a refused login, so that a fixed user
    /// or ACL gets a fresh login (a client keeps its last refusal).
    pub(crate) fn forget(&self, config: &ClientConfig) {
        let old = self
            .clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&Key::of(config));
        drop(old);
    }
}

/// Serves the events a kept client has queued since it was last used (librdkafka's log lines
/// and error callbacks, which go to its [`weir_contract::client::Link`] and from there, rate
/// limited, to the log), for at most `within`, so its queue does not grow between
/// observations. Call only while it has no partitions assigned: polling would take records.
pub(crate) fn serve_events(kept: &Kept, within: Duration) {
    let deadline = Instant::now() + within;
    let consumer = &kept.consumer;
    if consumer.assignment().is_ok_and(|a| a.count() > 0) {
        return;
    }
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        // Serves events until `left` is over; returns early with an error event (reported to
        // the link by the client's context already).
        let _ = consumer.poll(left);
    }
}
