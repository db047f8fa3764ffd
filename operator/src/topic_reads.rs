//! Input topics' partition counts and log bounds, read once and shared by every job that
//! reads the topic on the same cluster with the same credentials (part of observe).
//!
//! Two hundred jobs on one topic each asked the brokers for the same metadata and the same
//! start and end offsets every period. A read younger than [`TopicReads::fresh_for`] is
//! reused by the other jobs; a job's own next observation always reads again, so a job never
//! sees older bounds than its last look (and its committed offsets, always its own read,
//! never pass an end it already saw). Committed offsets stay per job: they are per group.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;

/// How long a topic's read serves the other jobs: a third of the default observation period,
/// so jobs observed close together share it and none sees bounds older than that.
pub const DEFAULT_FRESH_FOR: Duration = Duration::from_secs(5);

/// One topic's bounds as read: per partition 0..n, (log start, end).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bounds {
    pub partitions: Vec<(i64, i64)>,
}

struct Read {
    at: Instant,
    /// The group whose observation made it: that job reads again next time.
    by: String,
    bounds: Bounds,
}

/// The cluster and credentials of a client configuration, without what is the job's own
/// (group, client id): holds credentials, so it is never printed.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Cluster(Vec<(String, String)>);

impl Cluster {
    fn of(config: &ClientConfig) -> Self {
        let mut entries: Vec<(String, String)> = config
            .config_map()
            .into_iter()
            .filter(|(k, _)| !matches!(&**k, "group.id" | "client.id"))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        entries.sort();
        Self(entries)
    }
}

/// The shared reads, by cluster and topic.
pub struct TopicReads {
    pub fresh_for: Duration,
    reads: Mutex<HashMap<(Cluster, String), Read>>,
    made: AtomicU64,
    shared: AtomicU64,
}

impl std::fmt::Debug for TopicReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicReads")
            .field("fresh_for", &self.fresh_for)
            .field("made", &self.made())
            .field("shared", &self.shared())
            .finish_non_exhaustive()
    }
}

impl Default for TopicReads {
    fn default() -> Self {
        Self {
            fresh_for: DEFAULT_FRESH_FOR,
            reads: Mutex::default(),
            made: AtomicU64::new(0),
            shared: AtomicU64::new(0),
        }
    }
}

impl TopicReads {
    /// A fresh read of `topic` made by another job (`group` is the asking job's), if any.
    pub fn get(&self, config: &ClientConfig, topic: &str, group: &str) -> Option<Bounds> {
        let reads = self.reads.lock().ok()?;
        let r = reads
            .get(&(Cluster::of(config), topic.to_string()))
            .filter(|r| r.by != group && r.at.elapsed() < self.fresh_for)?;
        self.shared.fetch_add(1, Ordering::Relaxed);
        Some(r.bounds.clone())
    }

    /// Keeps what `group`'s observation read of `topic`; forgets reads too old to share.
    pub fn put(&self, config: &ClientConfig, topic: &str, group: &str, bounds: Bounds) {
        self.made.fetch_add(1, Ordering::Relaxed);
        let Ok(mut reads) = self.reads.lock() else {
            return;
        };
        let fresh_for = self.fresh_for;
        reads.retain(|_, r| r.at.elapsed() < fresh_for);
        reads.insert(
            (Cluster::of(config), topic.to_string()),
            Read {
                at: Instant::now(),
                by: group.to_string(),
                bounds,
            },
        );
    }

    /// Topic reads made from the brokers so far.
    pub fn made(&self) -> u64 {
        self.made.load(Ordering::Relaxed)
    }

    /// Observations served from another job's read so far.
    pub fn shared(&self) -> u64 {
        self.shared.load(Ordering::Relaxed)
    }
}
