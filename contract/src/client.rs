//! librdkafka client settings shared by the worker's consumer and producers.

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, ClientContext};

use crate::spec::KafkaSource;

/// Timeout of one broker request.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

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

/// How many records each of the worker's consumers prefetches, unless the job sets
/// `queued.min.messages`. librdkafka's default, 100,000, is kept full by a worker reading a
/// backlog: with two reading threads that was some 60 MiB of the worker's peak RSS, and what
/// the allocator kept of it grew with the batches run. A third of it keeps the fetcher ahead
/// of the pipeline all the same (bench/drain.sh, in the README). The bytes stay bounded by
/// `queued.max.messages.kbytes` (64 MiB) when records are large.
pub const PREFETCH_RECORDS: &str = "32768";

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
    let prefetch = ("queued.min.messages", PREFETCH_RECORDS);
    for (key, value) in CONSUMER_FETCH_DEFAULTS.iter().chain([&prefetch]) {
        if !source.properties.contains_key(*key) {
            c.set(*key, *value);
        }
    }
    c
}

/// An idempotent producer: retries never duplicate a record. Only failed deliveries are
/// reported: the writers count failures and wait for the queue to empty, and a report per
/// acknowledged record kept every record of a batch (and its report) in memory until the
/// batch's flush served them, a million events through the poll loop for a million records.
pub fn producer(bootstrap: &str, source: &KafkaSource, id: &Identity, role: &str) -> ClientConfig {
    let mut c = base(bootstrap, source);
    c.set("client.id", id.client_id(role))
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("delivery.report.only.error", "true");
    if !source.properties.contains_key("linger.ms") {
        c.set("linger.ms", "5");
    }
    c
}

/// What the worker's Kafka clients last said about their brokers, shared by the source's
/// consumers: librdkafka reports lost connections, unresolvable hosts and refused logins only
/// through its error callback, so this is where a dead broker becomes visible.
#[derive(Default)]
pub struct Link {
    inner: std::sync::Mutex<LinkState>,
}

#[derive(Default)]
struct LinkState {
    /// The latest client error and when it came.
    last: Option<(String, std::time::Instant)>,
    /// The latest of librdkafka's own error lines, which name the cause ("Failed to resolve
    /// ...", "Connection refused"), where the error codes that follow only say "all brokers
    /// are down".
    cause: Option<(String, std::time::Instant)>,
    /// Per error code: when it was last logged, and how many came since.
    logged: std::collections::HashMap<i32, (std::time::Instant, u64)>,
    /// librdkafka's reason for the last refused login (it names the mechanism and the
    /// broker's answer, never the password).
    refused_login: Option<String>,
}

/// The same client error is logged at most once in this long; the log line then says how
/// many were left out. librdkafka repeats an error on every reconnect attempt.
const LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

impl Link {
    /// The latest client error no older than `within`, if any: a line that names the cause
    /// first, else the latest error code.
    pub fn recent_error(&self, within: std::time::Duration) -> Option<String> {
        let s = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let recent = |e: &Option<(String, std::time::Instant)>| {
            e.as_ref()
                .filter(|(_, at)| at.elapsed() <= within)
                .map(|(e, _)| e.clone())
        };
        recent(&s.cause).or_else(|| recent(&s.last))
    }

    /// Reports one of librdkafka's own error or warning lines, which carry the cause.
    fn report_cause(&self, kind: i32, text: String) {
        {
            let mut s = self
                .inner
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            s.cause = Some((text.clone(), std::time::Instant::now()));
        }
        self.report(kind, text);
    }

    /// Reports an error a client returned or called back with; end-of-partition notices are
    /// routine (a caught-up consumer reaches the end every batch), not errors.
    pub fn report_kafka(&self, error: &KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        if matches!(error, KafkaError::PartitionEOF(_))
            || code == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
        {
            return;
        }
        let text = if reason.is_empty() {
            error.to_string()
        } else {
            format!("{error}: {reason}")
        };
        self.report(code.map_or(i32::MIN, |c| c as i32), text);
    }

    /// Records a client error or warning and logs it, at most once per [`LOG_EVERY`] for
    /// each `kind`, with how many were left out since.
    pub fn report(&self, kind: i32, text: String) {
        if let Some(left_out) = self.note(kind, text.clone()) {
            tracing::warn!(error = %text, left_out, "Kafka client error");
        }
    }

    /// The last refused login, if any: unlike an outage, no retry can help.
    pub fn refused_login_reason(&self) -> Option<String> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .refused_login
            .clone()
    }

    fn refused_login(&self, reason: String) {
        let mut s = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        s.last = Some((
            format!("authentication failed: {reason}"),
            std::time::Instant::now(),
        ));
        s.refused_login = Some(reason);
    }

    /// Records a client error; `Some(left out)` when it is due to be logged.
    fn note(&self, code: i32, text: String) -> Option<u64> {
        let now = std::time::Instant::now();
        let mut s = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        s.last = Some((text, now));
        match s.logged.get_mut(&code) {
            None => {
                s.logged.insert(code, (now, 0));
                Some(0)
            }
            Some(e) if now.duration_since(e.0) >= LOG_EVERY => {
                let left_out = e.1;
                *e = (now, 0);
                Some(left_out)
            }
            Some(e) => {
                e.1 += 1;
                None
            }
        }
    }
}

/// The fix for a broker that could not be reached, from what librdkafka said about it. PURE.
pub fn unreachable_fix(why: &str) -> &'static str {
    let w = why.to_ascii_lowercase();
    if w.contains("resolve") {
        "the host name does not resolve: fix source.kafka.bootstrapServers (in Kubernetes, the Service's name and namespace)"
    } else if w.contains("connection refused") {
        "nothing accepts connections there: check the port in source.kafka.bootstrapServers and that the brokers are running"
    } else if w.contains("ssl")
        || w.contains("tls")
        || w.contains("certificate")
        || w.contains("handshake")
    {
        "the TLS handshake failed: check security.protocol and the CA (ca.crt) in the Secret named by source.kafka.credentialsSecret"
    } else {
        "check source.kafka.bootstrapServers, that the brokers are running, and that the network lets the worker reach them"
    }
}

/// Client events of the worker's consumers. A consumer hands its errors to whoever polls it
/// (the source reports them to the [`Link`]); librdkafka's warnings and errors in its log
/// carry the cause ("Connect to ... failed: Connection refused"), so they go to the link too,
/// each kind logged at most once per [`LOG_EVERY`], since librdkafka repeats them per retry.
#[derive(Clone, Default)]
pub struct SourceContext {
    pub link: std::sync::Arc<Link>,
}

impl ClientContext for SourceContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if is_auth_failure(&error) {
            // Kept for the request that failed because of it: see [`auth_failure`].
            tracing::error!(%error, reason, "Kafka authentication failed");
            self.link.refused_login(reason.to_string());
            return;
        }
        self.link.report_kafka(&error, reason);
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error | L::Warning => {
                // Kinds by facility (FAIL, CONFWARN, ...), apart from error codes (>= -200).
                let kind = fac.bytes().fold(-1_000_i32, |h, b| {
                    h.wrapping_mul(31).wrapping_sub(i32::from(b))
                });
                self.link
                    .report_cause(kind, format!("{fac}: {log_message}"));
            }
            _ => tracing::trace!(facility = fac, "librdkafka: {log_message}"),
        }
    }
}

impl ConsumerContext for SourceContext {}

/// Whether librdkafka reports that the brokers refused the client's login (SASL or TLS
/// client authentication), as opposed to a network or broker failure.
pub fn is_auth_failure(error: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        error.rdkafka_error_code(),
        Some(C::Authentication | C::SaslAuthenticationFailed)
    )
}

/// Serves the events a consumer has queued (its error callbacks among them) and returns the
/// authentication failure it reported, if any. librdkafka reports a refused login only as a
/// client event; the request that failed because of it just times out or reports a transport
/// failure. Call only on a consumer with no partitions assigned: polling would take records.
pub fn auth_failure(consumer: &BaseConsumer<SourceContext>) -> Option<String> {
    // The event that failed the broker connection is queued before the request gives up; a
    // short wait covers the hand-over between librdkafka's threads.
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(200);
    while consumer.context().link.refused_login_reason().is_none() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        // Returns at the first event, or when `left` is over.
        let _ = consumer.poll(left);
    }
    consumer.context().link.refused_login_reason()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_consumer_prefetches_a_bounded_queue_unless_the_job_sets_its_own() {
        let id = Identity {
            namespace: "ns".into(),
            job: "j".into(),
            ordinal: 0,
            workers: 1,
        };
        let mut source: KafkaSource =
            serde_json::from_str(r#"{"bootstrapServers": "b:9092", "topics": ["t"]}"#)
                .expect("a source");
        let prefetch = |s: &KafkaSource| {
            consumer(s, &id, "g")
                .get("queued.min.messages")
                .map(str::to_string)
        };
        assert_eq!(prefetch(&source).as_deref(), Some(PREFETCH_RECORDS));
        source
            .properties
            .insert("queued.min.messages".into(), "500".into());
        assert_eq!(prefetch(&source).as_deref(), Some("500"));
    }

    #[test]
    fn producers_report_only_failed_deliveries_whatever_the_job_sets() {
        let id = Identity {
            namespace: "ns".into(),
            job: "j".into(),
            ordinal: 0,
            workers: 1,
        };
        let mut source: KafkaSource =
            serde_json::from_str(r#"{"bootstrapServers": "b:9092", "topics": ["t"]}"#)
                .expect("a source");
        source
            .properties
            .insert("delivery.report.only.error".into(), "false".into());
        let c = producer("b:9092", &source, &id, "sink");
        assert_eq!(c.get("delivery.report.only.error"), Some("true"));
        assert_eq!(c.get("enable.idempotence"), Some("true"));
    }

    #[test]
    fn an_unreachable_broker_gets_the_fix_for_what_librdkafka_said() {
        let fix = |why| unreachable_fix(why);
        assert!(fix("FAIL: nohost:9092/bootstrap: Failed to resolve 'nohost:9092': Name or service not known").contains("does not resolve"));
        assert!(fix("FAIL: 127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused (after 0ms in state CONNECT)").contains("check the port"));
        assert!(fix("FAIL: b:9093/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed").contains("TLS handshake"));
        assert!(fix("Local: Timed out").contains("network"));
    }

    #[test]
    fn a_repeated_client_error_is_logged_once_per_period_with_the_count_left_out() {
        let link = Link::default();
        assert_eq!(link.note(1, "down".into()), Some(0));
        assert_eq!(link.note(1, "down".into()), None);
        assert_eq!(link.note(1, "down".into()), None);
        assert_eq!(
            link.note(2, "other".into()),
            Some(0),
            "each kind on its own"
        );
        assert_eq!(link.recent_error(LOG_EVERY).as_deref(), Some("other"));
        {
            let mut s = link.inner.lock().expect("lock");
            let e = s.logged.get_mut(&1).expect("kind 1");
            e.0 = e.0.checked_sub(LOG_EVERY).expect("an instant 30 s back");
        }
        assert_eq!(link.note(1, "down".into()), Some(2));
    }
}
