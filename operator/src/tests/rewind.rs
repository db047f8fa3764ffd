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
use crate::context::Settings;
use crate::crd::{RewindOffset, RewindSpec};
use crate::fixtures::{self, DataObserver, Recorded};
use crate::observe::set_offsets;
use crate::observe::{KafkaObserver, Observer};
use crate::rewind::{self, RewindTo};
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
    let committed = |t: &crate::observation::KafkaTarget| {
        let obs = KafkaObserver::default().kafka(t).unwrap();
        obs.partitions
            .iter()
            .map(|p| p.committed)
            .collect::<Vec<_>>()
    };
    let wait = Duration::from_secs(10);

    let set = set_offsets(&t, &RewindTo::Latest, wait).unwrap();
    assert_eq!(
        set.offsets.iter().map(|o| o.offset).collect::<Vec<_>>(),
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
    server
        .wait_for(WAIT, |r| replicas(r).last() == Some(&0))
        .await;
    // Workers still committing: no offsets are touched through another pass.
    // A pass is a fresh observation: the children are applied only when they change.
    let passes = || observer.asked.lock().unwrap().len();
    let before = passes();
    server.wait_for(WAIT, |_| passes() > before).await;
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
    let before = passes();
    server.wait_for(WAIT, |_| passes() > before + 2).await;
    token.cancel();
    run.await.unwrap();
    assert_eq!(
        observer.rewinds.lock().unwrap().len(),
        1,
        "done once per id"
    );
    assert_eq!(replicas(&server.requests()).last(), Some(&2));
}

#[test]
fn explicit_offsets_are_checked_against_the_partitions_kafka_has() {
    let known = fixtures::topic("lines", &[(0, 100, Some(60)); 3]).partitions;
    let checked =
        rewind::check_offsets(&[("lines".into(), 0, 10), ("lines".into(), 2, 500)], &known)
            .unwrap();
    assert_eq!(
        checked.offsets,
        [("lines".to_string(), 0, 10), ("lines".to_string(), 2, 100)],
        "past the end: the end, not the offset given"
    );
    assert_eq!(
        checked.capped,
        ["lines/2: 500 is past the end of the partition, 100; set to the end"]
    );
    let refused = rewind::check_offsets(&[("lines".into(), 0, 10), ("lines".into(), 7, 1)], &known)
        .unwrap_err();
    assert!(
        refused.starts_with("partition lines/7 does not exist (lines has 3 partitions, 0..2)"),
        "{refused}"
    );
    let done = rewind::status(
        &RewindSpec {
            offsets: Some(vec![RewindOffset {
                topic: "lines".into(),
                partition: 2,
                offset: 500,
            }]),
            ..spec("r1")
        },
        rewind::Rewound {
            offsets: Vec::new(),
            capped: checked.capped,
        },
        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
    );
    assert_eq!(done.target.as_deref(), Some("offsets lines/2@500"));
    assert!(done.capped.unwrap().contains("set to the end"));
}

#[test]
fn status_says_when_a_new_target_under_a_done_id_is_ignored() {
    let earliest = RewindSpec {
        to_earliest: true,
        ..spec("1")
    };
    let done = rewind::status(
        &earliest,
        rewind::Rewound::default(),
        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
    );
    let same = rewind::with_ignored(Some(done.clone()), Some(&earliest)).unwrap();
    assert_eq!(same.ignored, None, "the spec is what was done");
    let switched = RewindSpec {
        to_timestamp: Some("2026-01-31T12:00:00Z".into()),
        ..spec("1")
    };
    let ignored = rewind::with_ignored(Some(done), Some(&switched)).unwrap();
    assert_eq!(
        ignored.ignored.as_deref(),
        Some(
            "spec.rewind asks for toTimestamp 2026-01-31T12:00:00Z under id \"1\", which was \
             already done (for toEarliest); set a new id to run it"
        )
    );
}

fn warnings<'a>(r: &'a [Recorded], reason: &str) -> Vec<&'a Recorded> {
    r.iter()
        .filter(|x| x.is(&Method::POST, EVENTS) && x.body["reason"] == reason)
        .collect()
}

#[tokio::test]
async fn an_impossible_rewind_stops_nothing_and_posts_a_warning() {
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
    spec["rewind"] = json!({"id": "bad", "offsets": [
        {"topic": "lines", "partition": 3, "offset": 5},
        {"topic": "lines", "partition": 9, "offset": 5},
    ]});
    server
        .push_event(JOBS, "MODIFIED", fixtures::job("wc", 2, spec))
        .await;
    let r = server
        .wait_for(WAIT, |r| !warnings(r, "RewindRefused").is_empty())
        .await;
    let event = warnings(&r, "RewindRefused")[0];
    assert_eq!(event.body["type"], "Warning");
    let note = event.body["note"].as_str().unwrap();
    assert!(
        note.starts_with(
            "rewind \"bad\": partition lines/9 does not exist (lines has 8 partitions, 0..7)"
        ),
        "{note}"
    );
    let status = r
        .iter()
        .rev()
        .find(|x| x.is(&Method::PATCH, STATUS))
        .map(|x| x.body["status"].clone())
        .unwrap();
    let condition = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "RewindRefused")
        .cloned()
        .expect("a RewindRefused condition");
    assert_eq!(condition["status"], "True");
    assert!(condition["message"].as_str().unwrap().contains("lines/9"));
    // Several more passes: still nothing stopped, nothing committed, one Warning.
    let passes = || observer.asked.lock().unwrap().len();
    let before = passes();
    server.wait_for(WAIT, |_| passes() > before + 2).await;
    token.cancel();
    run.await.unwrap();
    let r = server.requests();
    assert!(
        replicas(&r).iter().all(|n| *n == 2),
        "the workers were never stopped: {:?}",
        replicas(&r)
    );
    assert!(
        observer.rewinds.lock().unwrap().is_empty(),
        "nothing committed"
    );
    assert_eq!(
        warnings(&r, "RewindRefused").len(),
        1,
        "one Warning per refusal"
    );
}

#[tokio::test]
async fn three_rewinds_post_three_events_with_their_own_ids() {
    let observer = DataObserver::new(Some(fixtures::topic("lines", &[(20, 100, Some(60)); 2])));
    let settings = Settings {
        observe_every: Duration::from_millis(100),
        ..Settings::default()
    };
    let (server, token, run) = start_wc(&observer, settings);
    server.wait_for(WAIT, |r| !replicas(r).is_empty()).await;
    let targets = [
        json!({"toEarliest": true}),
        json!({"toLatest": true}),
        json!({"offsets": [{"topic": "lines", "partition": 1, "offset": 42}]}),
    ];
    for (i, to) in targets.iter().enumerate() {
        let id = format!("r{i}");
        let mut spec = fixtures::spec();
        let mut rewind = to.clone();
        rewind["id"] = json!(id);
        spec["rewind"] = rewind;
        server
            .push_event(JOBS, "MODIFIED", fixtures::job("wc", 2 + i as i64, spec))
            .await;
        server
            .wait_for(WAIT, |r| warnings(r, "Rewound").len() > i)
            .await;
    }
    token.cancel();
    run.await.unwrap();
    let r = server.requests();
    let notes: Vec<String> = warnings(&r, "Rewound")
        .iter()
        .map(|e| e.body["note"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        notes.len(),
        3,
        "three Events, not one with a count: {notes:?}"
    );
    assert!(
        notes[0].starts_with("rewind \"r0\": group offsets set to lines/0@20"),
        "{notes:?}"
    );
    assert!(
        notes[1].starts_with("rewind \"r1\": group offsets set to lines/0@100"),
        "{notes:?}"
    );
    assert!(
        notes[2].starts_with("rewind \"r2\": group offsets set to lines/1@42"),
        "{notes:?}"
    );
}

#[tokio::test]
async fn a_rewind_kafka_cannot_do_commits_nothing_on_a_real_broker() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("lines", 3, 1).unwrap();
    produce(&cluster, "lines", 3, 10, 1_700_000_000_000);
    let t = target(&cluster.bootstrap_servers(), &["lines"], "earliest");
    let wait = Duration::from_secs(10);
    set_offsets(&t, &RewindTo::Earliest, wait).unwrap();
    let asked = RewindTo::Offsets(vec![("lines".into(), 1, 5), ("lines".into(), 9, 5)]);
    let e = set_offsets(&t, &asked, wait).unwrap_err();
    assert!(
        e.to_string().contains("partition lines/9 does not exist"),
        "{e}"
    );
    let committed: Vec<_> = KafkaObserver::default()
        .kafka(&t)
        .unwrap()
        .partitions
        .iter()
        .map(|p| p.committed)
        .collect();
    assert_eq!(committed, [Some(0); 3], "not even lines/1 was committed");
    // Past the end: the end, said so.
    let done = set_offsets(&t, &RewindTo::Offsets(vec![("lines".into(), 2, 500)]), wait).unwrap();
    assert_eq!(done.offsets[0].offset, Some(10));
    assert_eq!(done.capped.len(), 1);
}
