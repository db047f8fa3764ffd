//! The real observer's record timestamps and kept clients against librdkafka's mock cluster:
//! the lag in seconds is the age of the next unread records' own timestamps, retention that
//! nears a committed offset makes OffsetsAtRisk with the margin in records and time, and a
//! dead broker is logged a bounded number of times per observation, by one kept client.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use rdkafka::ClientConfig;
use weir_contract::spec::StartingOffsets;

use super::kafka::{commit, target};
use crate::clients::ClientCache;
use crate::crd::StreamingJobStatus;
use crate::lag::{summarize, DEFAULT_ROWS};
use crate::observe::{KafkaObserver, Observer};
use crate::status;

/// Produces one record of `size` bytes per timestamp (ms) to `partition`, in order.
fn produce_at(
    cluster: &MockCluster<'static, DefaultProducerContext>,
    topic: &str,
    partition: i32,
    timestamps: &[i64],
    size: usize,
) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("message.max.bytes", "1000000")
        .create()
        .unwrap();
    let payload = vec![b'x'; size];
    for ts in timestamps {
        p.send(
            BaseRecord::<(), [u8]>::to(topic)
                .payload(&payload[..])
                .partition(partition)
                .timestamp(*ts),
        )
        .unwrap();
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

const HOUR: i64 = 3_600_000;

#[test]
fn the_lag_in_seconds_is_the_age_of_the_next_unread_records_timestamp() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("timed", 3, 1).unwrap();
    // An hour of history: partition 0 a record a minute, partition 1 a record a second from
    // half an hour ago, partition 2 two records it has read.
    let base = Timestamp::now().as_millisecond() - HOUR;
    let p0: Vec<i64> = (0..10).map(|i| base + i * 60_000).collect();
    let p1: Vec<i64> = (0..10).map(|i| base + HOUR / 2 + i * 1000).collect();
    produce_at(&cluster, "timed", 0, &p0, 10);
    produce_at(&cluster, "timed", 1, &p1, 10);
    produce_at(&cluster, "timed", 2, &[base, base + 1], 10);
    commit(&cluster, "timed", &[(0, 4), (1, 2), (2, 2)]);

    let observer = KafkaObserver::default();
    let t = target(&cluster.bootstrap_servers(), &["timed"], "latest");
    let obs = observer.kafka(&t).unwrap();
    // The word count's two stages: the input's group and the shuffle stage's.
    let clients = (observer.clients.created(), observer.clients.open());
    assert_eq!(clients, (2, 2));
    let next: Vec<Option<i64>> = obs.partitions.iter().map(|p| p.next_timestamp).collect();
    assert_eq!(
        next,
        [Some(p0[4]), Some(p1[2]), None],
        "the records at the committed offsets; none read where nothing waits"
    );
    let at = obs.read_at_millis.expect("the time of the read");
    let s = summarize(&obs, &StartingOffsets::Latest, DEFAULT_ROWS);
    assert_eq!(
        s.lag.seconds,
        Some((at - p0[4]) / 1000),
        "the oldest: partition 0"
    );
    // From the known timestamps: an hour back less four minutes, plus however long the test
    // has run (far below ten minutes).
    let seconds = s.lag.seconds.unwrap_or_default();
    assert!((3360..3360 + 600).contains(&seconds), "{seconds} s behind");
    let st = status::with_kafka(StreamingJobStatus::default(), Ok(&s));
    assert_eq!(
        serde_json::to_value(&st).unwrap()["lag"]["seconds"],
        seconds
    );

    // Partition 0 catches up: partition 1's next record sets the figure, read by the same
    // client.
    commit(&cluster, "timed", &[(0, 10)]);
    let obs = observer.kafka(&t).unwrap();
    let at = obs.read_at_millis.unwrap();
    let s = summarize(&obs, &StartingOffsets::Latest, DEFAULT_ROWS);
    assert_eq!(s.lag.seconds, Some((at - p1[2]) / 1000));
    assert_eq!(
        (observer.clients.created(), observer.clients.open()),
        clients,
        "the same clients for both observations"
    );
}

#[test]
fn retention_nearing_a_committed_offset_makes_offsets_at_risk_with_the_margin_in_records_and_time()
{
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("big", 2, 1).unwrap();
    // The mock keeps about 5 MiB per partition: 100 records of 100 KiB, one a second of
    // producer time, push its log start on by about half.
    let base = Timestamp::now().as_millisecond() - HOUR;
    let times: Vec<i64> = (0..100).map(|i| base + i * 1000).collect();
    for partition in [0, 1] {
        produce_at(&cluster, "big", partition, &times, 100 * 1024);
    }
    let observer = KafkaObserver::default();
    let t = target(&cluster.bootstrap_servers(), &["big"], "latest");
    let first = observer.kafka(&t).unwrap();
    let (start0, start1) = (first.partitions[0].log_start, first.partitions[1].log_start);
    assert!(
        (1..80).contains(&start0) && (1..70).contains(&start1),
        "the mock moved its log starts: {first:?}"
    );
    // Partition 0 two records from deletion; partition 1 thirty.
    commit(&cluster, "big", &[(0, start0 + 2), (1, start1 + 30)]);

    let obs = observer.kafka(&t).unwrap();
    let (p0, p1) = (&obs.partitions[0], &obs.partitions[1]);
    assert_eq!(
        (p0.log_start_timestamp, p0.next_timestamp),
        (Some(times[idx(start0)]), Some(times[idx(start0 + 2)])),
        "the records at the log start and at the commit"
    );
    assert_eq!(
        p1.log_start_timestamp, None,
        "a partition not at risk has its log start left unread"
    );
    let s = summarize(&obs, &StartingOffsets::Latest, DEFAULT_ROWS);
    assert_eq!(s.at_risk.len(), 1, "{:?}", s.at_risk);
    let st = status::with_kafka(StreamingJobStatus::default(), Ok(&s));
    let c = st
        .conditions
        .iter()
        .find(|c| c.type_ == status::OFFSETS_AT_RISK)
        .expect("OffsetsAtRisk");
    assert_eq!(c.status, "True");
    let expected = format!(
        "big-0: the next unread record (offset {}) is 2 records (about 2s of input) from the log start {start0}, under 10% of the {} records retained",
        start0 + 2,
        100 - start0
    );
    assert!(c.message.starts_with(&expected), "{}", c.message);
}

fn idx(offset: i64) -> usize {
    usize::try_from(offset).unwrap()
}

thread_local! {
    /// What the log wrote on this thread, while a test captures it.
    static CAPTURED: std::cell::RefCell<Option<Vec<u8>>> = const { std::cell::RefCell::new(None) };
}

/// Writes to the current thread's capture, if it has one; elsewhere nowhere.
struct ThreadCapture;

impl Write for ThreadCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURED.with(|c| {
            if let Some(c) = c.borrow_mut().as_mut() {
                c.extend_from_slice(buf);
            }
        });
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs `f` with this thread's log lines captured, and returns them. The subscriber is the
/// process's global one, installed once: a scoped one (`with_default`) loses lines when other
/// tests' threads log at the same time (tracing caches each call site's interest globally).
fn capture<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
    static INSTALLED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    INSTALLED.get_or_init(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_writer(|| ThreadCapture)
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .finish();
        // Not `init()`: that would also route the `log` crate here, and so raise the log level
        // of every librdkafka client the other tests create.
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other global subscriber in the operator's tests");
    });
    CAPTURED.with(|c| *c.borrow_mut() = Some(Vec::new()));
    let out = f();
    let bytes = CAPTURED.with(|c| c.borrow_mut().take()).unwrap_or_default();
    let lines = String::from_utf8_lossy(&bytes)
        .lines()
        .map(str::to_string)
        .collect();
    (out, lines)
}

/// librdkafka's lines are served on the observing thread (rust-rdkafka queues a client's log
/// to its main queue, which the observer polls), so a thread's own subscriber sees them all.
#[test]
fn a_dead_broker_is_logged_a_bounded_number_of_times_per_observation_by_one_kept_client() {
    // Nothing listens on a freshly closed port: every connection is refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let t = target(&format!("127.0.0.1:{port}"), &["lines"], "latest");
    let observer = KafkaObserver {
        timeout: Duration::from_secs(2),
        ..KafkaObserver::default()
    };
    // At debug, below the operator's default level (info): what a user who asks for more sees.
    let per_observation: Vec<Vec<String>> = (0..3)
        .map(|_| {
            let (e, lines) = capture(|| observer.kafka(&t).expect_err("nothing listens there"));
            assert!(
                matches!(e.metric_label(), "kafka" | "timeout"),
                "one error per observation: {e}"
            );
            lines
        })
        .collect();
    for (i, lines) in per_observation.iter().enumerate() {
        eprintln!("observation {i}: {} lines", lines.len());
        for l in lines {
            eprintln!("  {l}");
        }
    }
    let first = &per_observation[0];
    assert!(
        first
            .iter()
            .any(|l| l.contains("Kafka client error") && l.contains("Connection refused")),
        "librdkafka's cause reaches the log: {first:#?}"
    );
    assert!(first.len() <= 6, "{first:#?}");
    for later in &per_observation[1..] {
        assert!(
            later.iter().all(|l| !l.contains("Kafka client error")),
            "the kept client's link logs each kind once per 30 s: {later:#?}"
        );
        assert!(later.len() <= 2, "{later:#?}");
    }
    assert_eq!(
        (observer.clients.created(), observer.clients.open()),
        (1, 1),
        "one client for three observations"
    );

    // A client unused for longer than the cache's idle time is closed and replaced.
    let observer = KafkaObserver {
        timeout: Duration::from_millis(300),
        clients: Arc::new(ClientCache::new(Duration::ZERO)),
        ..KafkaObserver::default()
    };
    let _ = observer.kafka(&t);
    let _ = observer.kafka(&t);
    assert_eq!(
        (observer.clients.created(), observer.clients.open()),
        (2, 1)
    );
}
