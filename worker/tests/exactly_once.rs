//! The exactly-once Kafka sink: one transaction per input partition and batch holding output,
//! state changes, dead letters and offsets; fencing of a zombie worker; and probes that state
//! what the brokers available here cannot show (see DESIGN.md, "Real parts").

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rdkafka::bindings::rd_kafka_resp_err_t as RDKafkaRespErr;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaApiKey;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use weir_worker::batch::BatchOutput;
use weir_worker::changelog::LogFormat;
use weir_worker::dead_letter::H_STEP;
use weir_worker::engine::{Engine, Options};
use weir_worker::error::Error;
use weir_worker::plan::TopicPartition;
use weir_worker::sink::{Recovery, Sink};

const PARTITIONS: i32 = 2;

/// A running count per input partition and n mod 5 of records whose 100 / d can be computed:
/// a record with d = 0 fails the map step.
const JOB: &str = r#"
batchInterval: 100ms
source:
  kafka: {bootstrapServers: BOOTSTRAP, topics: [in], startingOffsets: earliest, groupId: eo, backpressure: {enabled: false}}
pipeline:
  - {id: share, map: "{'k': value.n % 5, 'q': 100 / value.d}"}
  - {id: by-k, keyBy: "string(partition) + ':' + string(value.k)"}
  - {id: sums, state: {initial: '0', update: "state + size(values)"}}
sink: {kafka: {topic: out, delivery: exactlyOnce}}
deadLetter: {topic: dead}
"#;

fn topics(broker: &Broker) {
    for t in ["in", "out", "dead", "eo-changelog"] {
        broker.create_topic(t, PARTITIONS);
    }
}

/// Records {n, d} for n in `from..from + n`; every 10th has d = 0. Adds to the expected
/// counts and returns the number of poison records.
fn produce(broker: &Broker, from: u64, n: u64, sums: &mut HashMap<String, i64>) -> u64 {
    let p: BaseProducer = broker.client().create().expect("producer");
    let mut poison = 0;
    for i in from..from + n {
        let d = if i % 10 == 3 { 0 } else { 1 + i % 4 };
        if d == 0 {
            poison += 1;
        } else {
            // Keys are per input partition (keyed state lives in a partition).
            let part = (i % PARTITIONS as u64) as i32;
            *sums.entry(format!("{part}:{}", i % 5)).or_default() += 1;
        }
        let payload = format!(r#"{{"n":{i},"d":{d}}}"#);
        p.send(
            BaseRecord::<[u8], str>::to("in")
                .payload(&payload)
                .partition((i % PARTITIONS as u64) as i32),
        )
        .expect("send");
    }
    p.flush(Duration::from_secs(30)).expect("flush");
    poison
}

/// The last count written per key, read with read_committed.
fn sums(broker: &Broker) -> HashMap<String, i64> {
    read_all(broker, "out")
        .into_iter()
        .map(|r| {
            let v: i64 = serde_json::from_slice(&r.value).expect("a number");
            (r.key.expect("key"), v)
        })
        .collect()
}

#[test]
fn output_state_dead_letters_and_offsets_commit_together() {
    let broker = Broker::in_process();
    topics(&broker);
    let mut expected = HashMap::new();
    let poison = produce(&broker, 0, 200, &mut expected);
    let snap = run(&broker, JOB, 3);
    assert_eq!(snap.records_in, 200);
    assert_eq!(sums(&broker), expected);

    let dead = read_all(&broker, "dead");
    assert_eq!(dead.len() as u64, poison);
    assert!(dead
        .iter()
        .all(|d| d.headers.iter().any(|(k, v)| k == H_STEP && v == "share")));
    assert!(
        !read_all(&broker, "eo-changelog").is_empty(),
        "state changes went to the changelog in the transactions"
    );
    // The engine mirrors the offsets to the group after each transaction.
    assert_eq!(
        committed(&broker, "eo", "in", PARTITIONS),
        high_watermarks(&broker, "in", PARTITIONS)
    );
}

#[test]
fn a_zombie_worker_whose_commit_the_broker_fences_stops_and_the_newer_worker_goes_on() {
    let broker = Broker::in_process();
    topics(&broker);
    let mut expected = HashMap::new();
    produce(&broker, 0, 50, &mut expected);
    let (mut zombie, _) = connect(&broker, JOB).expect("first worker");
    let cancel = CancellationToken::new();
    let one = Options {
        max_batches: Some(1),
        ..Default::default()
    };
    zombie
        .run(&one, &cancel)
        .expect("a batch before the takeover");

    // A newer worker for the same partitions (after a restart the old one did not notice).
    let (mut newer, _) = connect(&broker, JOB).expect("newer worker");
    produce(&broker, 50, 50, &mut expected);
    // Kafka answers the older producer's next EndTxn with PRODUCER_FENCED; the mock cluster
    // does not (see the probe below), so that answer is given to it here.
    let Broker::InProcess(mock) = &broker else {
        unreachable!("an in-process mock cluster")
    };
    mock.request_errors(
        RDKafkaApiKey::EndTxn,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_PRODUCER_FENCED],
    );
    // The zombie's next batch with records cannot commit (its first planned batch may not
    // have seen them yet).
    let err = zombie
        .run(
            &Options {
                max_batches: Some(5),
                ..Default::default()
            },
            &cancel,
        )
        .expect_err("the zombie cannot commit");
    assert!(matches!(err, Error::Fenced(_)), "{err}");
    assert!(
        err.to_string()
            .contains("a newer worker owns this partition"),
        "{err}"
    );
    let before = read_all(&broker, "out").len();
    newer.run(&one, &cancel).expect("the newer worker commits");
    assert!(read_all(&broker, "out").len() > before);
}

/// The job above at 10 records per partition and batch, so that batches follow each other.
fn slow_job() -> String {
    JOB.replace(
        "backpressure: {enabled: false}}",
        "backpressure: {enabled: false}, maxRatePerPartition: 100}",
    )
}

/// A sink whose takeover first lets an older worker of the same partitions commit two more
/// batches: the older pod that Kubernetes already replaced (a partitioned node, a forced
/// delete) keeps running until the newer worker's producers fence it.
struct OlderWorkerCommitsUntilFenced {
    inner: Box<dyn Sink>,
    older: Option<Engine>,
}

impl Sink for OlderWorkerCommitsUntilFenced {
    fn write(&mut self, batch: &BatchOutput<'_>) -> weir_worker::error::Result<()> {
        self.inner.write(batch)
    }
    fn logs_state(&self) -> bool {
        self.inner.logs_state()
    }
    fn log_state_as(&mut self, format: Arc<LogFormat>) -> bool {
        self.inner.log_state_as(format)
    }
    fn writes_dead_letters(&self) -> bool {
        self.inner.writes_dead_letters()
    }
    fn take_over(
        &mut self,
        owned: &[TopicPartition],
    ) -> weir_worker::error::Result<Option<Recovery>> {
        if let Some(mut older) = self.older.take() {
            let two = Options {
                max_batches: Some(2),
                ..Default::default()
            };
            older
                .run(&two, &CancellationToken::new())
                .expect("the older worker's last batches");
        }
        self.inner.take_over(owned)
    }
}

#[test]
fn a_newer_worker_reads_offsets_only_after_fencing_the_older_so_nothing_counts_twice() {
    let broker = Broker::in_process();
    topics(&broker);
    let mut expected = HashMap::new();
    produce(&broker, 0, 100, &mut expected);
    let job = slow_job();
    let (mut older, _) = connect(&broker, &job).expect("older worker");
    let one = Options {
        max_batches: Some(1),
        ..Default::default()
    };
    older.run(&one, &CancellationToken::new()).expect("a batch");
    assert_eq!(committed(&broker, "eo", "in", PARTITIONS), vec![10, 10]);

    let (mut newer, _) = connect_with_sink(&broker, &job, |inner| {
        Box::new(OlderWorkerCommitsUntilFenced {
            inner,
            older: Some(older),
        })
    })
    .expect("newer worker");
    // Where the newer worker starts is where the older one stopped when it was fenced, not
    // where it was when the newer one began.
    let starts: Vec<i64> = newer.positions().iter().map(|(_, o)| *o).collect();
    assert_eq!(starts, vec![30, 30]);
    newer
        .run(
            &Options {
                max_batches: Some(4),
                ..Default::default()
            },
            &CancellationToken::new(),
        )
        .expect("the newer worker's batches");
    assert_eq!(committed(&broker, "eo", "in", PARTITIONS), vec![50, 50]);
    assert_eq!(sums(&broker), expected, "every record counted once");
}

#[test]
fn probe_mock_cluster_read_committed_consumers_still_see_aborted_records() {
    // Kafka hides aborted records from read_committed readers; librdkafka's mock cluster does
    // not. So the abort path is shown here only up to the broker, and on a real cluster by
    // e2e/chaos.sh --bootstrap.
    let broker = Broker::in_process();
    broker.create_topic("t", 1);
    let p: BaseProducer = broker
        .client()
        .set("transactional.id", "probe")
        .create()
        .expect("producer");
    p.init_transactions(Duration::from_secs(10)).expect("init");
    p.begin_transaction().expect("begin");
    p.send(BaseRecord::<[u8], str>::to("t").payload("aborted"))
        .expect("send");
    p.flush(Duration::from_secs(10)).expect("flush");
    p.abort_transaction(Duration::from_secs(10)).expect("abort");
    let seen = read_all(&broker, "t");
    assert_eq!(
        seen.len(),
        1,
        "the mock cluster now hides aborted records: make the exactly-once tests assert it"
    );
}

#[test]
fn probe_mock_cluster_offsets_sent_in_a_transaction_are_not_group_offsets() {
    let broker = Broker::in_process();
    broker.create_topic("t", 1);
    let p: BaseProducer = broker
        .client()
        .set("transactional.id", "probe-offsets")
        .create()
        .expect("producer");
    let c: BaseConsumer = broker
        .client()
        .set("group.id", "probe-group")
        .create()
        .expect("consumer");
    p.init_transactions(Duration::from_secs(10)).expect("init");
    p.begin_transaction().expect("begin");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("t", 0, Offset::Offset(7))
        .expect("tpl");
    let meta = c.group_metadata().expect("group metadata");
    p.send_offsets_to_transaction(&tpl, &meta, Duration::from_secs(10))
        .expect("send offsets");
    p.commit_transaction(Duration::from_secs(10))
        .expect("commit");
    assert_eq!(
        committed(&broker, "probe-group", "t", 1),
        vec![-1],
        "the mock cluster now stores transactional offsets: the engine's mirror commit is no longer needed there"
    );
}

#[test]
fn probe_tansu_cannot_finish_a_transaction() {
    let Some(broker) = Broker::tansu() else {
        return;
    };
    broker.create_topic("t", 1);
    let p: BaseProducer = broker
        .client()
        .set("transactional.id", "probe-tansu")
        .set("transaction.timeout.ms", "5000")
        .create()
        .expect("producer");
    let done = p.init_transactions(Duration::from_secs(5)).and_then(|()| {
        p.begin_transaction()?;
        p.send(BaseRecord::<[u8], str>::to("t").payload("x"))
            .map_err(|(e, _)| e)?;
        p.commit_transaction(Duration::from_secs(5))
    });
    assert!(
        done.is_err(),
        "tansu now finishes transactions: run the exactly-once tests on it too"
    );
}

#[test]
fn probe_mock_cluster_does_not_fence_an_older_producer() {
    // On Kafka, a producer that starts with a transactional id fences every older producer of
    // that id: the older one's next transactional call fails. The mock cluster lets the older
    // one go on, so the fencing test injects the broker's answer instead.
    let broker = Broker::in_process();
    broker.create_topic("t", 1);
    let producer = || -> BaseProducer {
        broker
            .client()
            .set("transactional.id", "probe-fence")
            .create()
            .expect("producer")
    };
    let old = producer();
    old.init_transactions(Duration::from_secs(10))
        .expect("init");
    old.begin_transaction().expect("begin");
    old.send(BaseRecord::<[u8], str>::to("t").payload("a"))
        .expect("send");
    let newer = producer();
    newer
        .init_transactions(Duration::from_secs(10))
        .expect("init newer");
    assert!(
        old.commit_transaction(Duration::from_secs(10)).is_ok(),
        "the mock cluster now fences older producers: drop the injected error from the fencing test"
    );
}
