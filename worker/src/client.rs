//! librdkafka client settings shared by the worker's consumer and producers.

use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, ClientContext};

use crate::spec::KafkaSource;

/// Who a client belongs to, for client ids and logs.
#[derive(Clone, Debug)]
pub struct Identity {
    pub namespace: String,
    pub job: String,
    pub ordinal: u32,
    pub workers: u32,
}

impl Identity {
    pub fn client_id(&self, role: &str) -> String {
        format!("weir-{}-{}-{role}", self.job, self.ordinal)
    }
}

/// Base settings: the user's extra properties first, so Weir's own settings win, then the
/// credentials. The result holds secrets: never log it (its `Debug` prints them).
pub fn base(bootstrap: &str, source: &KafkaSource) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in &source.properties {
        c.set(k, v);
    }
    source.credentials.apply(&mut c);
    c.set("bootstrap.servers", bootstrap);
    c
}

/// Fetch settings the worker uses unless the job sets them (the drain benchmark's raw
/// consumer uses the same). librdkafka postpones a partition's next fetch by
/// `fetch.queue.backoff.ms` (1 s by default) whenever its local queue is full, which stalls a
/// consumer that does real work per record; a short backoff keeps the fetcher just ahead.
pub const CONSUMER_FETCH_DEFAULTS: &[(&str, &str)] = &[
    ("fetch.wait.max.ms", "100"),
    ("fetch.queue.backoff.ms", "10"),
];

/// The direct-stream consumer: assigned partitions, no auto commit, no silent offset resets.
pub fn consumer(source: &KafkaSource, id: &Identity, group: &str) -> ClientConfig {
    let mut c = base(&source.bootstrap_servers, source);
    c.set("group.id", group)
        .set("client.id", id.client_id("source"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // A position outside the log is handled by the worker (and logged), never skipped silently.
        .set("auto.offset.reset", "error")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed");
    for (key, value) in CONSUMER_FETCH_DEFAULTS {
        if !source.properties.contains_key(*key) {
            c.set(*key, *value);
        }
    }
    c
}

/// An idempotent producer: retries never duplicate a record.
pub fn producer(bootstrap: &str, source: &KafkaSource, id: &Identity, role: &str) -> ClientConfig {
    let mut c = base(bootstrap, source);
    c.set("client.id", id.client_id(role))
        .set("enable.idempotence", "true")
        .set("acks", "all");
    if !source.properties.contains_key("linger.ms") {
        c.set("linger.ms", "5");
    }
    c
}

/// Client events of the worker's consumers. A caught-up consumer reaches the end of its
/// partitions every batch, so end-of-partition notices are routine, not errors; librdkafka
/// retries everything else itself, so it is a warning.
pub struct SourceContext;

impl ClientContext for SourceContext {
    fn error(&self, error: KafkaError, reason: &str) {
        let eof = matches!(error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF);
        if eof {
            tracing::trace!(%error, reason, "end of partition");
        } else {
            tracing::warn!(%error, reason, "Kafka client error");
        }
    }
}

impl ConsumerContext for SourceContext {}
