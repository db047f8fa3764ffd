//! The lag-driven autoscaler's decisions over a sequence of observations, as tables.

use k8s_openapi::jiff::Timestamp;
use weir_contract::spec::Duration;

use crate::autoscale::{decide, Inputs};
use crate::crd::{AutoscaleSpec, AutoscaleStatus};

fn spec() -> AutoscaleSpec {
    AutoscaleSpec {
        lag_threshold: 1000,
        growing_observations: 2,
        stabilization_window: Duration::from_secs(300),
    }
}

/// Runs the autoscaler over (seconds, lag) observations from `floor` within `ceiling`;
/// returns the worker count after each.
fn run(floor: u32, ceiling: u32, steps: &[(i64, Option<i64>)]) -> (Vec<u32>, AutoscaleStatus) {
    let spec = spec();
    let mut last: Option<AutoscaleStatus> = None;
    let mut counts = Vec::new();
    for &(secs, lag) in steps {
        let next = decide(
            &spec,
            last.as_ref(),
            Inputs {
                floor,
                ceiling,
                lag,
                now: Timestamp::from_second(secs).unwrap(),
            },
        );
        counts.push(next.workers);
        last = Some(next);
    }
    (counts, last.unwrap())
}

#[test]
fn decisions_follow_the_lag_within_floor_and_ceiling() {
    type Case = (&'static str, u32, u32, Vec<(i64, Option<i64>)>, Vec<u32>);
    let cases: Vec<Case> = vec![
        (
            "quiet: the floor",
            2,
            8,
            vec![(0, Some(10)), (15, Some(5)), (30, Some(0))],
            vec![2, 2, 2],
        ),
        (
            "growing past the threshold twice: doubled",
            2,
            8,
            vec![(0, Some(2000)), (15, Some(3000)), (30, Some(4000))],
            vec![2, 2, 4],
        ),
        (
            "high but shrinking: held",
            2,
            8,
            vec![(0, Some(9000)), (15, Some(8000)), (30, Some(7000))],
            vec![2, 2, 2],
        ),
        (
            "an unchanged lag in between keeps the count",
            2,
            8,
            vec![
                (0, Some(2000)),
                (15, Some(3000)),
                (30, Some(3000)),
                (45, Some(4000)),
            ],
            vec![2, 2, 2, 4],
        ),
        (
            "growth below the threshold: held",
            2,
            8,
            vec![(0, Some(100)), (15, Some(500)), (30, Some(900))],
            vec![2, 2, 2],
        ),
        (
            "keeps growing: doubled up to the ceiling",
            2,
            6,
            vec![
                (0, Some(2000)),
                (15, Some(3000)),
                (30, Some(4000)),
                (45, Some(5000)),
                (60, Some(6000)),
                (75, Some(7000)),
                (90, Some(8000)),
            ],
            vec![2, 2, 4, 4, 6, 6, 6],
        ),
        (
            "Kafka unread: nothing changes",
            2,
            8,
            vec![
                (0, Some(2000)),
                (15, Some(3000)),
                (30, None),
                (45, Some(4000)),
            ],
            vec![2, 2, 2, 4],
        ),
        (
            "calm for the window: down one worker per window",
            1,
            8,
            vec![
                (0, Some(2000)),
                (15, Some(3000)),
                (30, Some(4000)),
                (45, Some(0)),
                (300, Some(0)),
                (345, Some(0)),
                (600, Some(0)),
                (645, Some(0)),
                (945, Some(0)),
            ],
            vec![1, 1, 2, 2, 2, 1, 1, 1, 1],
        ),
        (
            "lag back above the threshold restarts the calm window",
            1,
            8,
            vec![
                (0, Some(2000)),
                (15, Some(3000)),
                (30, Some(4000)),
                (100, Some(0)),
                (350, Some(5000)),
                (400, Some(0)),
                (650, Some(0)),
                (700, Some(0)),
            ],
            vec![1, 1, 2, 2, 2, 2, 2, 1],
        ),
    ];
    for (case, floor, ceiling, steps, want) in cases {
        assert_eq!(run(floor, ceiling, &steps).0, want, "{case}");
    }
}

#[test]
fn status_says_why_with_the_inputs() {
    let (_, s) = run(2, 8, &[(0, Some(2000)), (15, Some(3000)), (30, Some(4000))]);
    assert_eq!(
        s.reason,
        "lag 4000 above 1000 and growing for 2 observations: 2 -> 4 workers"
    );
    assert_eq!(
        (s.floor, s.ceiling, s.lag, s.growing),
        (2, 8, Some(4000), 0)
    );
    let (_, s) = run(2, 2, &[(0, Some(2000)), (15, Some(3000)), (30, Some(4000))]);
    assert_eq!(
        s.reason,
        "holding at 2: lag 4000, threshold 1000, at the ceiling 2"
    );
    let (_, s) = run(
        1,
        8,
        &[
            (0, Some(2000)),
            (15, Some(3000)),
            (30, Some(4000)),
            (45, Some(0)),
            (345, Some(0)),
        ],
    );
    assert_eq!(s.reason, "lag 0 at or below 1000 for 5m: 2 -> 1 workers");
}

#[test]
fn a_new_floor_or_ceiling_bounds_the_last_decision() {
    let (_, s) = run(2, 8, &[(0, Some(2000)), (15, Some(3000)), (30, Some(4000))]);
    assert_eq!(s.workers, 4);
    let now = Timestamp::from_second(45).unwrap();
    let lower = decide(
        &spec(),
        Some(&s),
        Inputs {
            floor: 1,
            ceiling: 3,
            lag: Some(4000),
            now,
        },
    );
    assert_eq!(lower.workers, 3, "workers.max lowered to 3");
    let higher = decide(
        &spec(),
        Some(&s),
        Inputs {
            floor: 6,
            ceiling: 8,
            lag: Some(4000),
            now,
        },
    );
    assert_eq!(higher.workers, 6, "more partitions raised the floor");
}

mod through_the_controller {
    use std::time::Duration;

    use http::Method;
    use serde_json::json;

    use crate::context::Settings;
    use crate::fixtures::{self, DataObserver};
    use crate::metrics::Metrics;
    use crate::tests::controller::start_observed;
    use crate::tests::wc::{statuses, STS, WAIT};

    /// 8 partitions, `lag` records waiting on each.
    fn lagging(lag: i64) -> crate::observation::KafkaObservation {
        fixtures::topic("lines", &[(0, 1000 + lag, Some(1000)); 8])
    }

    #[tokio::test]
    async fn growing_lag_doubles_the_workers_and_their_environment_says_so() {
        let observer = DataObserver::new(Some(lagging(100)));
        let mut spec = fixtures::spec();
        spec["workers"]["autoscale"] = json!({"lagThreshold": 1000, "growingObservations": 2});
        let settings = Settings {
            observe_every: Duration::from_millis(100),
            ..Settings::default()
        };
        let (server, token, run) = start_observed(
            fixtures::job("wc", 1, spec),
            Metrics::new().unwrap(),
            |_| {},
            observer.clone(),
            settings,
        );
        // Each step waits until the status shows it, so each is one observation at least.
        for lag in [100, 200, 300] {
            observer.set(Some(lagging(lag)));
            server
                .wait_for(WAIT, |r| {
                    statuses(r).iter().any(|s| s["lag"]["records"] == 8 * lag)
                })
                .await;
        }
        let r = server
            .wait_for(WAIT, |r| {
                statuses(r).iter().any(|s| s["workers"]["desired"] == 4)
            })
            .await;
        token.cancel();
        run.await.unwrap();
        let s = statuses(&r)
            .into_iter()
            .find(|s| s["workers"]["desired"] == 4)
            .unwrap();
        assert_eq!(
            s["autoscale"]["reason"],
            "lag 2400 above 1000 and growing for 2 observations: 2 -> 4 workers"
        );
        assert_eq!(s["autoscale"]["floor"], 2, "8 partitions / 4 per worker");
        assert_eq!(s["workers"]["reason"], s["autoscale"]["reason"]);
        let last = r.iter().rev().find(|x| x.is(&Method::PATCH, STS)).unwrap();
        assert_eq!(last.body["spec"]["replicas"], 4);
        let env = last.body["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap();
        let workers = env.iter().find(|e| e["name"] == "WEIR_WORKERS").unwrap();
        assert_eq!(workers["value"], "4", "each worker knows the new count");
    }
}
