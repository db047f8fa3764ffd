//! The real observer against the second, independent broker: tansu with its sqlite engine, in
//! its own process, so the observer is not tuned to librdkafka's mock cluster.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use weir_testkit::broker::create_topics;
use weir_testkit::Broker;

use super::kafka::target;
use crate::lag::{summarize, DEFAULT_ROWS};
use crate::observe::{self, KafkaObserver};

#[tokio::test]
async fn the_real_observer_reads_tansu_too() {
    let Some(broker) = Broker::tansu() else {
        return;
    };
    let bootstrap = broker.bootstrap();
    create_topics(&broker.client(), &[("clicks", 3)]).unwrap();

    let p: BaseProducer = broker.client().create().unwrap();
    for (partition, n) in [(0, 4), (2, 7)] {
        for i in 0..n {
            let payload = format!("record {i}");
            p.send(
                BaseRecord::<(), str>::to("clicks")
                    .payload(&payload)
                    .partition(partition),
            )
            .unwrap();
        }
    }
    p.flush(Duration::from_secs(10)).unwrap();
    let c: BaseConsumer = broker
        .client()
        .set("group.id", "weir.default.wc")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("clicks", 0, Offset::Offset(1))
        .unwrap();
    tpl.add_partition_offset("clicks", 2, Offset::Offset(7))
        .unwrap();
    c.commit(&tpl, CommitMode::Sync).unwrap();

    let t = target(&bootstrap, &["clicks"], "earliest");
    let obs = observe::kafka(std::sync::Arc::new(KafkaObserver::default()), t)
        .await
        .unwrap();
    let seen: Vec<(i32, i64, Option<i64>)> = obs
        .partitions
        .iter()
        .map(|p| (p.partition, p.end, p.committed))
        .collect();
    assert_eq!(seen, [(0, 4, Some(1)), (1, 0, None), (2, 7, Some(7))]);
    let s = summarize(&obs, &"earliest".parse().unwrap(), DEFAULT_ROWS);
    assert_eq!(
        (s.partitions, s.lag.records, s.lag.max_partition),
        (3, 3, 3)
    );

    // A timestamp policy counts from the first record at or after the time: "timed" has
    // records stamped 1 s, 2 s, 3 s, 4 s after the epoch; 2.5 s finds offset 2.
    write_timed(&broker);
    let at = "1970-01-01T00:00:02.5Z";
    let t = target(&bootstrap, &["timed"], at);
    let timed = observe::kafka(std::sync::Arc::new(KafkaObserver::default()), t)
        .await
        .unwrap();
    assert_eq!(timed.partitions[0].offset_for_time, Some(2));
    let s = summarize(&timed, &at.parse().unwrap(), DEFAULT_ROWS);
    assert_eq!(s.lag.records, 2, "offsets 2 and 3 wait");
    // The next unread record is offset 2, stamped 3 s after the epoch.
    assert_eq!(timed.partitions[0].next_timestamp, Some(3_000));
    assert_eq!(
        s.lag.seconds,
        timed.read_at_millis.map(|at| (at - 3_000) / 1000)
    );

    // Probe: for a time after every record Kafka answers no offset (start at the end); tansu
    // answers 0, the first offset, which would count the whole log. That case is tested with
    // the broker's answers as data (tests::lag::no_commit_counts_from_where_the_worker_will_start).
    let t = target(&bootstrap, &["timed"], "2100-01-01T00:00:00Z");
    let future = observe::kafka(std::sync::Arc::new(KafkaObserver::default()), t)
        .await
        .unwrap();
    assert_eq!(
        future.partitions[0].offset_for_time,
        Some(0),
        "tansu's gap has changed"
    );
}

/// Topic "timed": one partition, records stamped 1 s, 2 s, 3 s and 4 s after the epoch.
fn write_timed(broker: &Broker) {
    create_topics(&broker.client(), &[("timed", 1)]).unwrap();
    let p: BaseProducer = broker.client().create().unwrap();
    for ts in [1_000i64, 2_000, 3_000, 4_000] {
        p.send(
            BaseRecord::<(), str>::to("timed")
                .payload("x")
                .partition(0)
                .timestamp(ts),
        )
        .unwrap();
    }
    p.flush(Duration::from_secs(10)).unwrap();
}

#[tokio::test]
async fn a_rewind_to_a_time_commits_the_first_offset_at_or_after_it() {
    let Some(broker) = Broker::tansu() else {
        return;
    };
    write_timed(&broker);

    let t = target(&broker.bootstrap(), &["timed"], "latest");
    let set = crate::observe::set_offsets(
        &t,
        &crate::rewind::RewindTo::Timestamp(2_500),
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(set.offsets[0].offset, Some(2), "the record stamped 3 s");
    let obs = observe::kafka(std::sync::Arc::new(KafkaObserver::default()), t)
        .await
        .unwrap();
    assert_eq!(
        obs.partitions[0].committed,
        Some(2),
        "read back from the group"
    );
}
