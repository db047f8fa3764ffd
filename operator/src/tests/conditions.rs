//! Progressing, Stalled and Degraded from observations, as tables.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use weir_contract::spec::StartingOffsets;

use crate::conditions::{
    apply, per_worker, stall_after, stalled, still, transitions, Health, WorkerOffsets,
};
use crate::crd::{Phase, RestartBudgetStatus, StreamingJobStatus, WorkersStatus};
use crate::fixtures;

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(secs).unwrap()
}

fn w(committed: i64, lag: i64) -> WorkerOffsets {
    WorkerOffsets { committed, lag }
}

fn running(desired: u32, ready: u32) -> StreamingJobStatus {
    StreamingJobStatus {
        phase: Some(if ready >= desired {
            Phase::Running
        } else {
            Phase::Degraded
        }),
        workers: WorkersStatus {
            desired,
            ready,
            reason: None,
        },
        ..StreamingJobStatus::default()
    }
}

fn condition(s: &StreamingJobStatus, type_: &str) -> (String, String) {
    let c = s.conditions.iter().find(|c| c.type_ == type_).unwrap();
    (c.status.clone(), c.reason.clone())
}

#[test]
fn offsets_are_summed_per_owning_worker() {
    // (log start, end, committed): partitions 0..5, worker i owns p mod 2 == i.
    let obs = fixtures::topic(
        "lines",
        &[
            (0, 100, Some(10)),
            (0, 100, Some(20)),
            (0, 100, None),
            (0, 100, Some(100)),
            (0, 50, Some(50)),
        ],
    );
    let got = per_worker(&obs.partitions, &StartingOffsets::Earliest, 2);
    assert_eq!(got, [w(60, 190), w(120, 80)]);
    let got = per_worker(&obs.partitions, &StartingOffsets::Latest, 2);
    assert_eq!(
        got[0],
        w(60, 90),
        "an uncommitted partition starts at its end"
    );
    assert!(per_worker(&obs.partitions, &StartingOffsets::Earliest, 0).is_empty());
}

#[test]
fn a_worker_is_still_while_records_wait_and_its_commits_do_not_move() {
    // (case, before, counts, now, counts after)
    let cases = [
        (
            "no progress, lag waits",
            vec![w(10, 5)],
            vec![2],
            vec![w(10, 5)],
            vec![3],
        ),
        (
            "committed moved",
            vec![w(10, 5)],
            vec![2],
            vec![w(11, 4)],
            vec![0],
        ),
        (
            "nothing waits",
            vec![w(10, 0)],
            vec![2],
            vec![w(10, 0)],
            vec![0],
        ),
        (
            "one of two",
            vec![w(10, 5), w(10, 5)],
            vec![0, 0],
            vec![w(10, 5), w(20, 5)],
            vec![1, 0],
        ),
        (
            "a rescale starts over",
            vec![w(10, 5)],
            vec![7],
            vec![w(10, 5), w(0, 1)],
            vec![0, 0],
        ),
        (
            "the first observation",
            vec![],
            vec![],
            vec![w(10, 5)],
            vec![0],
        ),
    ];
    for (case, before, counts, now, after) in cases {
        assert_eq!(still(&before, &counts, &now), after, "{case}");
    }
}

#[test]
fn a_stall_is_judged_by_the_clock_not_by_the_count_of_observations() {
    let s = Duration::from_secs;
    // (batches, batch interval, observation period, time without progress that stalls)
    let cases = [
        (5, s(5), s(15), s(75)),
        (3, s(60), s(15), s(180)),
        (2, s(10), s(15), s(30)),
    ];
    for (batches, interval, every, want) in cases {
        assert_eq!(
            stall_after(batches, interval, every),
            want,
            "{batches} x {interval:?}"
        );
    }
    // Observations that come late (an operator with many jobs) judge no later: one look
    // after 80 s without progress is enough.
    assert_eq!(
        stalled(&[None, Some(s(80)), Some(s(74)), Some(s(75))], s(75)),
        [1, 3]
    );
    assert_eq!(stalled(&[None, None], s(0)), Vec::<u32>::new());
    assert_eq!(crate::conditions::human(s(75)), "1m15s");
    assert_eq!(
        crate::conditions::human(Duration::from_millis(250)),
        "250ms"
    );
    assert_eq!(crate::conditions::human(s(7260)), "2h1m");
}

#[test]
fn conditions_follow_the_health() {
    let healthy = Health {
        advanced: Some(true),
        lag: 10,
        stalled: vec![],
        still_for: Duration::ZERO,
        retrying: vec![],
    };
    let s = apply(running(2, 2), &healthy, Some(1), t(0));
    assert_eq!(s.phase, Some(Phase::Running));
    assert_eq!(
        condition(&s, "Progressing"),
        ("True".into(), "OffsetsAdvancing".into())
    );
    assert_eq!(
        condition(&s, "Stalled"),
        ("False".into(), "NotStalled".into())
    );
    assert_eq!(
        condition(&s, "Degraded"),
        ("False".into(), "WorkersHealthy".into())
    );

    let caught_up = Health {
        advanced: Some(false),
        lag: 0,
        ..healthy.clone()
    };
    let s = apply(running(2, 2), &caught_up, Some(1), t(0));
    assert_eq!(
        condition(&s, "Progressing"),
        ("False".into(), "CaughtUp".into())
    );
    assert_eq!(s.phase, Some(Phase::Running), "a quiet job is healthy");

    let stuck = Health {
        advanced: Some(false),
        lag: 10,
        stalled: vec![1],
        still_for: Duration::from_secs(90),
        retrying: vec![],
    };
    let s = apply(running(2, 2), &stuck, Some(1), t(0));
    assert_eq!(
        condition(&s, "Progressing"),
        ("False".into(), "OffsetsNotAdvancing".into())
    );
    assert_eq!(
        condition(&s, "Stalled"),
        ("True".into(), "OffsetsNotAdvancing".into())
    );
    assert_eq!(
        condition(&s, "Degraded"),
        ("True".into(), "WorkersStalled".into())
    );
    assert_eq!(s.phase, Some(Phase::Degraded));
    let stalled_msg = &s
        .conditions
        .iter()
        .find(|c| c.type_ == "Stalled")
        .unwrap()
        .message;
    assert_eq!(
        stalled_msg,
        "worker 1: records wait and no offsets were committed for 1m30s"
    );

    let mut restarted = running(2, 2);
    restarted.restart_budget = Some(RestartBudgetStatus {
        window_start: Time(t(0)),
        used: 2,
    });
    restarted.unreachable_workers = Some(vec![0]);
    let s = apply(restarted, &healthy, Some(1), t(0));
    assert_eq!(
        condition(&s, "Degraded"),
        ("True".into(), "WorkersUnreachable".into())
    );
    let message = &s
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap()
        .message;
    assert!(
        message.contains("worker 0 does not answer at /progress; 2 worker restarts since"),
        "{message}"
    );

    let s = apply(running(3, 1), &healthy, Some(1), t(0));
    assert_eq!(
        condition(&s, "Degraded"),
        ("True".into(), "WorkersNotReady".into())
    );

    let mut suspended = running(0, 0);
    suspended.phase = Some(Phase::Suspended);
    let s = apply(suspended, &stuck, Some(1), t(0));
    assert_eq!(
        condition(&s, "Stalled").0,
        "False",
        "only running workers stall"
    );
    assert_eq!(s.phase, Some(Phase::Suspended));
}

#[test]
fn flips_of_stalled_and_degraded_become_events() {
    let stuck = Health {
        advanced: Some(false),
        lag: 10,
        stalled: vec![0],
        still_for: Duration::from_secs(75),
        retrying: vec![],
    };
    let ok = Health {
        advanced: Some(true),
        ..Health::default()
    };
    let healthy = apply(running(1, 1), &ok, Some(1), t(0));
    let bad = apply(healthy.clone(), &stuck, Some(1), t(10));
    let reasons = |ts: Vec<crate::conditions::Transition>| {
        ts.into_iter()
            .map(|t| (t.warning, t.reason))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        reasons(transitions(Some(&healthy), &bad)),
        [(true, "Stalled".into()), (true, "Degraded".into())]
    );
    assert!(
        transitions(Some(&bad), &bad).is_empty(),
        "no flip, no event"
    );
    let again = apply(bad.clone(), &ok, Some(1), t(20));
    assert_eq!(
        reasons(transitions(Some(&bad), &again)),
        [
            (false, "StalledCleared".into()),
            (false, "DegradedCleared".into())
        ]
    );
}

/// Every combination of what one reconcile observes, through both halves of the status
/// (`status::compute`, then `conditions::apply`): the phase and the conditions never disagree.
#[test]
fn phase_and_conditions_agree_over_every_combination_of_observations() {
    use crate::conditions::{DEGRADED, PROGRESSING};
    use crate::status::{compute, Observation, READY};
    // (desired, current pods, ready pods, suspended, stopped by the restart policy)
    let sets = [
        (2, 0, 0, false, false),
        (2, 2, 0, false, false),
        (2, 2, 1, false, false),
        (2, 2, 2, false, false),
        (3, 2, 2, false, false),
        (1, 3, 3, false, false),
        (0, 0, 0, true, false),
        (0, 0, 0, false, true),
    ];
    let cond = |s: &StreamingJobStatus, type_: &str| {
        let c = s.conditions.iter().find(|c| c.type_ == type_).unwrap();
        (c.status.clone(), c.reason.clone(), c.message.clone())
    };
    let mut cases = 0;
    for (desired, current, ready, suspended, stopped) in sets {
        for unreachable in [false, true] {
            for kafka_down in [false, true] {
                for stalled_worker in [false, true] {
                    for restarted in [false, true] {
                        for (advanced, lag) in
                            [(None, 0), (None, 5), (Some(true), 5), (Some(false), 5)]
                        {
                            let observation = Observation::Applied {
                                desired,
                                reason: "test".into(),
                                suspended,
                                stopped: stopped.then(|| "3 restarts in 10m".into()),
                                current,
                                ready,
                                selector: "weir.dev/job=wc".into(),
                            };
                            let health = Health {
                                advanced,
                                lag,
                                stalled: if stalled_worker { vec![0] } else { vec![] },
                                still_for: Duration::from_secs(90),
                                retrying: vec![],
                            };
                            let pass = |previous: Option<&StreamingJobStatus>| {
                                let mut s = compute(previous, Some(1), &observation, t(10));
                                s.unreachable_workers = unreachable.then(|| vec![1]);
                                s.observe_error =
                                    kafka_down.then(|| "BrokerTransportFailure".into());
                                s.restart_budget = restarted.then(|| RestartBudgetStatus {
                                    window_start: Time(t(0)),
                                    used: 1,
                                });
                                apply(s, &health, Some(1), t(10))
                            };
                            let s = pass(None);
                            let case = format!(
                                "{desired}/{current}/{ready} suspended={suspended} \
                                 stopped={stopped} unreachable={unreachable} \
                                 kafka_down={kafka_down} stalled={stalled_worker} \
                                 restarted={restarted} advanced={advanced:?} lag={lag}: {s:#?}"
                            );
                            let phase = s.phase.unwrap();
                            let ready_c = cond(&s, READY);
                            let degraded = cond(&s, DEGRADED);
                            let progressing = cond(&s, PROGRESSING);
                            assert_eq!(
                                ready_c.0 == "True",
                                phase == Phase::Running,
                                "Ready is True exactly when Running: {case}"
                            );
                            assert_eq!(
                                degraded.0 == "True",
                                phase == Phase::Degraded,
                                "Degraded is True exactly in phase Degraded: {case}"
                            );
                            if ready_c.0 == "True" {
                                assert!(
                                    ready >= desired
                                        && !unreachable
                                        && !kafka_down
                                        && !stalled_worker,
                                    "Ready only for a job able to make progress: {case}"
                                );
                            }
                            if degraded.1 == "WorkersHealthy" {
                                assert!(
                                    ready >= desired && !unreachable && !kafka_down,
                                    "healthy only when it is: {case}"
                                );
                            }
                            if kafka_down {
                                assert_eq!(
                                    (progressing.0.as_str(), progressing.1.as_str()),
                                    ("Unknown", "KafkaUnreachable"),
                                    "{case}"
                                );
                            } else {
                                assert_ne!(progressing.1, "KafkaUnreachable", "{case}");
                            }
                            // Recomputed from what it wrote, the status is the same: no
                            // write, no Event.
                            let again = pass(Some(&s));
                            assert_eq!(again, s, "stable: {case}");
                            assert_eq!(transitions(Some(&s), &again), [], "{case}");
                            cases += 1;
                        }
                    }
                }
            }
        }
    }
    assert_eq!(cases, 8 * 2 * 2 * 2 * 2 * 4);
}

#[test]
fn only_a_worker_that_claims_to_run_or_is_quiet_past_its_bound_is_stalled() {
    use crate::conditions::{judge, Said};
    let bound = Duration::from_secs(75);
    let said = |w: u32| match w {
        0 => Said::Running,
        1 => Said::Retrying,
        2 => Said::Quiet(Duration::from_secs(74)),
        _ => Said::Quiet(Duration::from_secs(76)),
    };
    assert_eq!(judge(&[0, 1, 2, 3], said, bound), [0, 3]);
    assert_eq!(judge(&[1, 2], said, bound), Vec::<u32>::new());
}
