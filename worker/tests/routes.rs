//! More than one output: a Kafka sink's routes through the engine on a real broker
//! (librdkafka's mock cluster): each result goes to every route whose condition holds and to
//! the sink's topic when none does, under at-least-once and exactly-once alike; a condition
//! that fails on a result stops the batch with the reason, writing nothing of it.

mod common;

use std::collections::BTreeMap;

use common::*;

fn job(group: &str, delivery: &str, when_slow: &str) -> String {
    format!(
        r#"
batchInterval: 100ms
source:
  kafka: {{bootstrapServers: BOOTSTRAP, topics: [in], startingOffsets: earliest, groupId: {group}, backpressure: {{enabled: false}}}}
pipeline:
  - {{id: shape, select: {{id: value.id, status: value.status, ms: value.ms}}}}
sink:
  kafka:
    topic: rest-{group}
    delivery: {delivery}
    routes:
      - {{when: "value.status >= 500", topic: errors-{group}}}
      - {{when: "{when_slow}", topic: slow-{group}}}
"#
    )
}

/// Record ids per topic.
fn ids(broker: &Broker, topic: &str) -> Vec<i64> {
    let mut v: Vec<i64> = read_all(broker, topic)
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(&r.value).expect("JSON");
            v["id"].as_i64().expect("id")
        })
        .collect();
    v.sort_unstable();
    v
}

#[test]
fn each_result_goes_to_every_route_that_takes_it_and_the_rest_to_the_sinks_topic() {
    let broker = Broker::in_process();
    broker.create_topic("in", 2);
    let mut rng = weir_testkit::random::Lcg::new(3);
    let records: Vec<(i64, i64, i64)> = (0..400)
        .map(|id| {
            (
                id,
                [200, 200, 404, 500, 503][rng.below(5) as usize],
                rng.below(1_000) as i64,
            )
        })
        .collect();
    for p in 0..2 {
        let payloads: Vec<String> = records
            .iter()
            .filter(|r| r.0 % 2 == p)
            .map(|(id, status, ms)| format!(r#"{{"id": {id}, "status": {status}, "ms": {ms}}}"#))
            .collect();
        let refs: Vec<&[u8]> = payloads.iter().map(|s| s.as_bytes()).collect();
        produce_raw(&broker, "in", p as i32, &refs);
    }
    let mut want: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for (id, status, ms) in &records {
        let (error, slow) = (*status >= 500, *ms > 700);
        if error {
            want.entry("errors").or_default().push(*id);
        }
        if slow {
            want.entry("slow").or_default().push(*id);
        }
        if !error && !slow {
            want.entry("rest").or_default().push(*id);
        }
    }
    for (group, delivery) in [("alo", "atLeastOnce"), ("eo", "exactlyOnce")] {
        for t in ["rest", "errors", "slow"] {
            broker.create_topic(&format!("{t}-{group}"), 2);
        }
        run(&broker, &job(group, delivery, "value.ms > 700"), 2);
        for (t, expected) in &want {
            assert_eq!(
                &ids(&broker, &format!("{t}-{group}")),
                expected,
                "{delivery}: {t}"
            );
        }
    }

    // A condition that fails on a result (a field it lacks) stops the batch, naming the
    // route, and writes nothing of it.
    broker.create_topic("rest-bad", 2);
    broker.create_topic("errors-bad", 2);
    broker.create_topic("slow-bad", 2);
    let (mut engine, _) =
        connect(&broker, &job("bad", "atLeastOnce", "value.missing > 1")).expect("connect");
    let once = weir_worker::engine::Options {
        max_batches: Some(1),
        ..Default::default()
    };
    let e = engine
        .run(&once, &tokio_util::sync::CancellationToken::new())
        .expect_err("a failing route");
    assert!(
        e.to_string()
            .contains("sink.kafka.routes[1].when failed on the result"),
        "{e}"
    );
    assert!(committed(&broker, "bad", "in", 2).iter().all(|o| *o <= 0));
}
