//! The real observer against a real broker: librdkafka's mock cluster in this process. What
//! was produced and committed must come back as partitions, ends, commits and lag in status.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::json;

use crate::crd::{StreamingJob, StreamingJobStatus};
use crate::fixtures;
use crate::lag::{summarize, DEFAULT_ROWS};
use crate::observation::{KafkaTarget, ObserveError};
use crate::observe::{self, KafkaObserver, Observer};
use crate::status::{self, Observation};

const GROUP: &str = "weir.default.wc";

pub(super) fn target(bootstrap: &str, topics: &[&str], starting: &str) -> KafkaTarget {
    let mut spec = fixtures::spec();
    spec["source"]["kafka"] =
        json!({"bootstrapServers": bootstrap, "topics": topics, "startingOffsets": starting});
    let job: StreamingJob = serde_json::from_value(fixtures::job("wc", 1, spec)).unwrap();
    let t = KafkaTarget::of(&job, "default", "wc");
    assert_eq!(t.group, GROUP, "the worker's default group");
    t
}

fn produce(cluster: &MockCluster<'static, DefaultProducerContext>, topic: &str, counts: &[usize]) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .create()
        .unwrap();
    for (partition, n) in counts.iter().enumerate() {
        for i in 0..*n {
            let payload = format!("record {i}");
            p.send(
                BaseRecord::<(), str>::to(topic)
                    .payload(&payload)
                    .partition(i32::try_from(partition).unwrap()),
            )
            .unwrap();
        }
        p.flush(Duration::from_secs(10)).unwrap();
    }
}

/// Commits `offsets` (partition, offset) for `topic` in the job's group, as a worker would.
pub(super) fn commit(
    cluster: &MockCluster<'static, DefaultProducerContext>,
    topic: &str,
    offsets: &[(i32, i64)],
) {
    commit_in(cluster, GROUP, topic, offsets);
}

fn commit_in(
    cluster: &MockCluster<'static, DefaultProducerContext>,
    group: &str,
    topic: &str,
    offsets: &[(i32, i64)],
) {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for (p, o) in offsets {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*o))
            .unwrap();
    }
    c.commit(&tpl, CommitMode::Sync).unwrap();
}

/// `status.lag` without its seconds, once they are known to be there: the records were
/// produced just now, so their figure says nothing the seconds' own tests do not.
fn in_records(lag: &serde_json::Value) -> serde_json::Value {
    assert!(
        lag["seconds"].as_i64().is_some_and(|s| s >= 0),
        "every waiting partition's next record was read: {lag}"
    );
    let mut lag = lag.clone();
    lag.as_object_mut().unwrap().remove("seconds");
    lag
}

#[tokio::test]
async fn the_real_observer_reads_what_was_produced_and_committed() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("clicks", 4, 1).unwrap();
    cluster.create_topic("views", 2, 1).unwrap();
    produce(&cluster, "clicks", &[10, 20, 30, 0]);
    produce(&cluster, "views", &[5, 0]);
    commit(&cluster, "clicks", &[(0, 4), (1, 20), (3, 0)]);

    let t = target(
        &cluster.bootstrap_servers(),
        &["clicks", "views"],
        "earliest",
    );
    let obs = observe::kafka(Arc::new(KafkaObserver::default()), t)
        .await
        .unwrap();
    assert_eq!(
        obs.topics,
        [("clicks".to_string(), 4), ("views".to_string(), 2)]
    );
    let seen: Vec<(&str, i32, i64, i64, Option<i64>)> = obs
        .partitions
        .iter()
        .map(|p| {
            (
                p.topic.as_str(),
                p.partition,
                p.log_start,
                p.end,
                p.committed,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("clicks", 0, 0, 10, Some(4)),
            ("clicks", 1, 0, 20, Some(20)),
            ("clicks", 2, 0, 30, None),
            ("clicks", 3, 0, 0, Some(0)),
            ("views", 0, 0, 5, None),
            ("views", 1, 0, 0, None),
        ]
    );

    // earliest: the uncommitted clicks/2 and views/0 count in full.
    let s = summarize(&obs, &"earliest".parse().unwrap(), DEFAULT_ROWS);
    let applied = Observation::Applied {
        desired: 2,
        reason: "test".into(),
        suspended: false,
        stopped: None,
        current: 2,
        ready: 2,
        selector: String::new(),
    };
    let st = status::with_kafka(
        status::compute(None, Some(1), &applied, Timestamp::now()),
        Ok(&s),
    );
    let json = serde_json::to_value(&st).unwrap();
    assert_eq!(json["observedPartitions"], 6);
    assert_eq!(
        in_records(&json["lag"]),
        json!({"records": 6 + 30 + 5, "maxPartition": 30})
    );
    assert_eq!(
        json["offsets"]["partitions"][0],
        json!({"topic": "clicks", "partition": 2, "end": 30, "lag": 30})
    );
    assert_eq!(
        json["offsets"]["partitions"][1],
        json!({"topic": "clicks", "partition": 0, "committed": 4, "end": 10, "lag": 6})
    );
    assert_eq!(json["offsets"]["omitted"], 0);

    let latest = summarize(&obs, &"latest".parse().unwrap(), DEFAULT_ROWS);
    assert_eq!(
        latest.lag.records, 6,
        "latest: uncommitted partitions start at the end"
    );
}

#[tokio::test]
async fn the_status_lag_includes_the_shuffle_stage_between_the_key_change_and_the_count() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("lines", 2, 1).unwrap();
    // The word count's keyBy -> count runs as two stages joined by this topic.
    cluster.create_topic("wc-counts-repartition", 2, 1).unwrap();
    produce(&cluster, "lines", &[10, 10]);
    commit(&cluster, "lines", &[(0, 10), (1, 10)]);
    produce(&cluster, "wc-counts-repartition", &[30, 5]);
    commit_in(
        &cluster,
        "weir.default.wc-counts",
        "wc-counts-repartition",
        &[(0, 20)],
    );

    let t = target(&cluster.bootstrap_servers(), &["lines"], "latest");
    assert_eq!(t.stages.len(), 1, "{:?}", t.stages);
    assert_eq!(
        (t.stages[0].topic.as_str(), t.stages[0].group.as_str()),
        ("wc-counts-repartition", "weir.default.wc-counts")
    );
    let obs = observe::kafka(Arc::new(KafkaObserver::default()), t)
        .await
        .unwrap();
    let s = summarize(&obs, &"latest".parse().unwrap(), DEFAULT_ROWS);
    assert_eq!(
        s.partitions, 2,
        "workers are scaled by the input's partitions"
    );
    let st = status::with_kafka(StreamingJobStatus::default(), Ok(&s));
    let json = serde_json::to_value(&st).unwrap();
    // The input is caught up; the shuffle stage has 10 to go on partition 0 and, with no
    // commit yet, all 5 of partition 1 (a stage's group starts at the earliest offset).
    assert_eq!(
        in_records(&json["lag"]),
        json!({"records": 15, "maxPartition": 10})
    );
    assert_eq!(
        json["offsets"]["partitions"][0],
        json!({"topic": "wc-counts-repartition", "partition": 0, "committed": 20, "end": 30, "lag": 10})
    );
}

#[test]
fn retention_moves_the_log_start_and_lag_counts_from_it() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("big", 1, 1).unwrap();
    // The mock keeps about 5 MiB per partition: 100 records of 100 KiB push its log start on.
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("message.max.bytes", "1000000")
        .create()
        .unwrap();
    let payload = vec![b'x'; 100 * 1024];
    for _ in 0..100 {
        p.send(
            BaseRecord::<(), [u8]>::to("big")
                .payload(&payload[..])
                .partition(0),
        )
        .unwrap();
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(30)).unwrap();
    commit(&cluster, "big", &[(0, 1)]);

    let obs = KafkaObserver::default()
        .kafka(&target(&cluster.bootstrap_servers(), &["big"], "latest"))
        .unwrap();
    let part = &obs.partitions[0];
    assert_eq!(part.end, 100);
    assert!(
        part.log_start > 1,
        "the mock moved its log start past the commit: {part:?}"
    );
    let s = summarize(&obs, &"latest".parse().unwrap(), DEFAULT_ROWS);
    assert_eq!(s.lag.records, 100 - part.log_start);
    assert_eq!(
        s.offsets.partitions[0].committed,
        Some(1),
        "the row shows the real commit"
    );
}

#[test]
fn a_missing_topic_and_an_unreachable_broker_are_typed_errors_in_bounded_time() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("there", 1, 1).unwrap();
    let observer = KafkaObserver {
        timeout: Duration::from_secs(3),
        ..KafkaObserver::default()
    };
    let err = observer
        .kafka(&target(
            &cluster.bootstrap_servers(),
            &["there", "absent"],
            "latest",
        ))
        .unwrap_err();
    assert!(
        matches!(&err, ObserveError::MissingTopic(t) if t == "absent"),
        "{err}"
    );
    assert_eq!(err.metric_label(), "missing_topic");

    // Nothing listens on a freshly closed port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let err = observer
        .kafka(&target(&format!("127.0.0.1:{port}"), &["there"], "latest"))
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(err, ObserveError::Kafka { .. } | ObserveError::Timeout(_)),
        "{err}"
    );
}

#[tokio::test]
async fn a_thousand_partition_topic_is_read_in_few_requests_and_its_status_stays_small() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("wide", 1000, 1).unwrap();
    let mut counts = vec![0; 1000];
    counts[17] = 9;
    counts[999] = 3;
    produce(&cluster, "wide", &counts);
    let started = Instant::now();
    let obs = observe::kafka(
        Arc::new(KafkaObserver::default()),
        target(&cluster.bootstrap_servers(), &["wide"], "earliest"),
    )
    .await
    .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(obs.partitions.len(), 1000);
    let s = summarize(&obs, &"earliest".parse().unwrap(), DEFAULT_ROWS);
    assert_eq!((s.lag.records, s.offsets.omitted), (12, 980));
    let top: Vec<(i32, i64)> = s.offsets.partitions[..3]
        .iter()
        .map(|r| (r.partition, r.lag))
        .collect();
    assert_eq!(top, [(17, 9), (999, 3), (0, 0)]);
    let st = status::with_kafka(StreamingJobStatus::default(), Ok(&s));
    let bytes = serde_json::to_vec(&st).unwrap().len();
    assert!(bytes < 100 * 1024, "{bytes} bytes");
}

/// Probe: the mock cluster does not look offsets up by timestamp (its ListOffsets handler has
/// "FIXME: by timestamp" and answers -1, the end), so the timestamp policy is tested on tansu.
#[tokio::test]
async fn probe_the_mock_cluster_finds_no_offset_for_a_timestamp() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("timed", 1, 1).unwrap();
    produce(&cluster, "timed", &[6]);
    let t = target(
        &cluster.bootstrap_servers(),
        &["timed"],
        "2020-01-01T00:00:00Z",
    );
    let obs = observe::kafka(Arc::new(KafkaObserver::default()), t)
        .await
        .unwrap();
    assert_eq!(obs.partitions[0].offset_for_time, None);
}

/// A refused login (a SASL client against the mock cluster, which has no SASL: librdkafka
/// fails the login with its authentication error) and a refused topic (TopicAuthorizationFailed
/// injected into the mock's metadata) are named as such, with what to check, not reported as
/// a broker outage or a missing topic.
#[test]
fn a_refused_login_or_topic_is_named_in_the_observation() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("lines", 1, 1).unwrap();
    let mut t = target(&cluster.bootstrap_servers(), &["lines"], "earliest");
    t.source.credentials = weir_contract::credentials::Credentials::from_secret_data(
        "Secret default/kafka-client",
        [
            ("security.protocol", "SASL_PLAINTEXT"),
            ("sasl.mechanism", "PLAIN"),
            ("sasl.username", "weir"),
            ("sasl.password", "wrong"),
        ]
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())),
    )
    .unwrap();
    let e = KafkaObserver::default().kafka(&t).unwrap_err();
    assert_eq!(e.metric_label(), "auth", "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("Kafka authentication failed")
            && msg.contains("source.kafka.credentialsSecret")
            && !msg.contains("wrong"),
        "{msg}"
    );

    let t = target(&cluster.bootstrap_servers(), &["lines"], "earliest");
    cluster
        .topic_error(
            "lines",
            rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
        )
        .unwrap();
    let e = KafkaObserver::default().kafka(&t).unwrap_err();
    assert_eq!(e.metric_label(), "auth", "{e}");
    assert!(e.to_string().contains("Kafka authorization failed"), "{e}");
}

#[test]
fn jobs_on_one_topic_share_its_read_but_each_reads_its_own_commits() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("shared", 4, 1).unwrap();
    produce(&cluster, "shared", &[10, 10, 10, 10]);
    commit(&cluster, "shared", &[(0, 5), (1, 5), (2, 5), (3, 5)]);
    let first = target(&cluster.bootstrap_servers(), &["shared"], "earliest");
    let mut second = first.clone();
    second.group = "weir.default.other".into();
    commit_in(
        &cluster,
        &second.group,
        "shared",
        &[(0, 1), (1, 1), (2, 1), (3, 1)],
    );

    let observer = KafkaObserver::default();
    let a = observer.kafka(&first).unwrap();
    let b = observer.kafka(&second).unwrap();
    assert_eq!(
        (observer.topics.made(), observer.topics.shared()),
        (1, 1),
        "the second job used the first one's read of the topic"
    );
    let ends = |o: &crate::observation::KafkaObservation| -> Vec<i64> {
        o.partitions.iter().map(|p| p.end).collect()
    };
    assert_eq!(ends(&a), ends(&b));
    let committed = |o: &crate::observation::KafkaObservation| -> Vec<Option<i64>> {
        o.partitions.iter().map(|p| p.committed).collect()
    };
    assert_eq!(committed(&a), [Some(5); 4]);
    assert_eq!(committed(&b), [Some(1); 4], "each job's own group");

    // A job's next look reads again: never older bounds than its own last read.
    produce(&cluster, "shared", &[3, 0, 0, 0]);
    let again = observer.kafka(&first).unwrap();
    assert_eq!(observer.topics.made(), 2);
    assert_eq!(again.partitions[0].end, 13);
}
