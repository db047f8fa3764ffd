//! Declarative rewind: the target a spec names, the offsets it commits on a real broker
//! (librdkafka's mock cluster), read back by the real observer; and the sequencing through the
//! real `Controller` and the scripted API: workers to zero, offsets set once no pod is left,
//! the workers back, status and an Event saying what was done.

use std::time::Duration;

use http::Method;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use rdkafka::ClientConfig;
use serde_json::json;

use super::controller::start_wc;
use super::kafka::target;
use crate::controller::Settings;
use crate::crd::{RewindOffset, RewindSpec};
use crate::fixtures::{self, DataObserver, Recorded};
use crate::observe::{KafkaObserver, Observer};
use crate::rewind::{self, set_offsets, RewindTo};
use crate::tests::wc::{pod, replicas, EVENTS, JOBS, PODS, STATUS, WAIT};

/// Produces `n` records to each of `topic`'s partitions, record i at `t0 + 1000 * i` ms.
fn produce(
    cluster: &MockCluster<'static, DefaultProducerContext>,
    topic: &str,
    parts: i32,
    n: i64,
    t0: i64,
) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .create()
        .unwrap();
    for partition in 0..parts {
        for i in 0..n {
            p.send(
                BaseRecord::<(), str>::to(topic)
                    .payload("r")
                    .partition(partition)
                    .timestamp(t0 + 1000 * i),
            )
            .unwrap();
        }
    }
    p.flush(Duration::from_secs(10)).unwrap();
}

fn spec(id: &str) -> RewindSpec {
    RewindSpec {
        id: id.into(),
        to_timestamp: None,
        offsets: None,
        to_earliest: false,
        to_latest: false,
    }
}

#[test]
fn the_spec_names_exactly_one_valid_target() {
    let topics = vec!["lines".to_string()];
    let cases = [
        (
            RewindSpec {
                to_timestamp: Some("2026-01-31T12:00:00Z".into()),
                ..spec("a")
            },
            Ok(RewindTo::Timestamp(1_769_860_800_000)),
        ),
        (
            RewindSpec {
                to_earliest: true,
                ..spec("a")
            },
            Ok(RewindTo::Earliest),
        ),
        (
            RewindSpec {
                offsets: Some(vec![RewindOffset {
                    topic: "lines".into(),
                    partition: 1,
                    offset: 7,
                }]),
                ..spec("a")
            },
            Ok(RewindTo::Offsets(vec![("lines".into(), 1, 7)])),
        ),
        (
            spec("a"),
            Err("set exactly one of toTimestamp, offsets, toEarliest, toLatest".to_string()),
        ),
        (
            RewindSpec {
                to_earliest: true,
                to_latest: true,
                ..spec("a")
            },
            Err("set exactly one of toTimestamp, offsets, toEarliest, toLatest".to_string()),
        ),
        (
            RewindSpec {
                to_timestamp: Some("yesterday".into()),
                ..spec("a")
            },
            Err(
                "toTimestamp \"yesterday\" is not an RFC 3339 time, e.g. 2026-01-31T12:00:00Z"
                    .into(),
            ),
        ),
        (
            RewindSpec {
                offsets: Some(vec![RewindOffset {
                    topic: "other".into(),
                    partition: 0,
                    offset: 0,
                }]),
                ..spec("a")
            },
            Err("offsets names topic \"other\", which the job does not read".into()),
        ),
    ];
    for (s, want) in cases {
        assert_eq!(rewind::target(&s, &topics), want, "{s:?}");
    }
    let done = Some("a");
    assert!(
        rewind::pending(Some(&spec("a")), done).is_none(),
        "done once"
    );
    assert!(
        rewind::pending(Some(&spec("b")), done).is_some(),
        "a new id"
    );
    assert!(
        rewind::pending(Some(&spec("a")), None).is_some(),
        "never done"
    );
    assert!(rewind::pending(None, done).is_none());
}

#[tokio::test]
async fn rewind_commits_the_group_offsets_on_a_real_broker() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("lines", 3, 1).unwrap();
    let t0 = 1_700_000_000_000;
    produce(&cluster, "lines", 3, 10, t0);
    let t = target(&cluster.bootstrap_servers(), &["lines"], "earliest");
    let committed = |t: &crate::observe::KafkaTarget| {
        let obs = KafkaObserver::default().kafka(t).unwrap();
        obs.partitions
            .iter()
            .map(|p| p.committed)
            .collect::<Vec<_>>()
    };
    let wait = Duration::from_secs(10);

    let set = set_offsets(&t, &RewindTo::Latest, wait).unwrap();
    assert_eq!(
        set.iter().map(|o| o.offset).collect::<Vec<_>>(),
        [Some(10); 3]
    );
    assert_eq!(committed(&t), [Some(10); 3], "latest: everything skipped");

    set_offsets(&t, &RewindTo::Earliest, wait).unwrap();
    assert_eq!(committed(&t), [Some(0); 3]);
    // The mock finds no offset for any time (see the probe in tests::kafka), which is Kafka's
    // answer for a time after the last record: the end, so nothing is read again. The first
    // offset at or after a time is tested on tansu (tests::tansu).
    set_offsets(&t, &RewindTo::Timestamp(t0 + 60_000), wait).unwrap();
    assert_eq!(committed(&t), [Some(10); 3]);

    set_offsets(&t, &RewindTo::Earliest, wait).unwrap();
    assert_eq!(committed(&t), [Some(0); 3]);

    let explicit = RewindTo::Offsets(vec![("lines".into(), 2, 7)]);
    set_offsets(&t, &explicit, wait).unwrap();
    assert_eq!(
        committed(&t),
        [Some(0), Some(0), Some(7)],
        "unlisted partitions keep theirs"
    );
}

#[tokio::test]
async fn a_new_rewind_id_stops_the_workers_sets_offsets_once_and_starts_them_again() {
    // 8 partitions of 100 records, committed at 60: two workers.
    let observer = DataObserver::new(Some(fixtures::topic("lines", &[(20, 100, Some(60)); 8])));
    let settings = Settings {
        observe_every: Duration::from_millis(100),
        ..Settings::default()
    };
    let (server, token, run) = start_wc(&observer, settings);
    server.wait_for(WAIT, |r| replicas(r) == [2]).await;
    server.insert(PODS, pod(0));
    server.insert(PODS, pod(1));

    let mut spec = fixtures::spec();
    spec["rewind"] = json!({"id": "replay-2026-01", "toEarliest": true});
    server
        .push_event(JOBS, "MODIFIED", fixtures::job("wc", 2, spec.clone()))
        .await;
    let r = server
        .wait_for(WAIT, |r| replicas(r).last() == Some(&0))
        .await;
    // Workers still committing: no offsets are touched through another pass.
    let passes = |r: &[Recorded]| replicas(r).len();
    let before = passes(&r);
    server.wait_for(WAIT, |r| passes(r) > before).await;
    assert!(
        observer.rewinds.lock().unwrap().is_empty(),
        "not while a worker runs"
    );

    server.remove(PODS, "wc-0");
    server.remove(PODS, "wc-1");
    let r = server
        .wait_for(WAIT, |r| replicas(r).last() == Some(&2))
        .await;
    assert_eq!(*observer.rewinds.lock().unwrap(), [RewindTo::Earliest]);
    let event = r
        .iter()
        .find(|x| x.is(&Method::POST, EVENTS) && x.body["reason"] == "Rewound")
        .expect("a Rewound event");
    assert!(
        event.body["note"]
            .as_str()
            .unwrap()
            .starts_with("rewind \"replay-2026-01\": group offsets set to lines/0@20, lines/1@20"),
        "{}",
        event.body["note"]
    );
    let status = r
        .iter()
        .rev()
        .find(|x| x.is(&Method::PATCH, STATUS))
        .map(|x| x.body["status"].clone())
        .unwrap();
    assert_eq!(status["rewind"]["id"], "replay-2026-01");
    assert_eq!(status["rewind"]["offsets"].as_array().unwrap().len(), 8);
    assert_eq!(
        status["rewind"]["offsets"][3],
        json!({"topic": "lines", "partition": 3, "offset": 20})
    );

    // The same id again (e.g. after another edit): nothing more is rewound.
    server.insert(PODS, pod(0));
    server
        .push_event(JOBS, "MODIFIED", fixtures::job("wc", 3, spec))
        .await;
    let before = passes(&server.requests());
    server.wait_for(WAIT, |r| passes(r) > before + 2).await;
    token.cancel();
    run.await.unwrap();
    assert_eq!(
        observer.rewinds.lock().unwrap().len(),
        1,
        "done once per id"
    );
    assert_eq!(replicas(&server.requests()).last(), Some(&2));
}
