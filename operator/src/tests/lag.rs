//! PURE: lag from offsets (commits, no commits, retention), the capped rows, and the status
//! they make.

use k8s_openapi::jiff::Timestamp;
use weir_contract::spec::StartingOffsets;

use crate::crd::StreamingJobStatus;
use crate::fixtures;
use crate::lag::{
    at_risk, lag_seconds, next_unread, partition_lag, partition_lag_seconds, summarize,
    DEFAULT_ROWS, MAX_ROWS,
};
use crate::observation::{KafkaObservation, PartitionOffsets};
use crate::status::{self, Observation};

fn part(log_start: i64, end: i64, committed: Option<i64>) -> PartitionOffsets {
    fixtures::topic("t", &[(log_start, end, committed)]).partitions[0].clone()
}

fn at(time: &str) -> StartingOffsets {
    time.parse().unwrap()
}

#[test]
fn lag_is_end_minus_committed() {
    for policy in [StartingOffsets::Earliest, StartingOffsets::Latest] {
        assert_eq!(partition_lag(&part(0, 100, Some(40)), &policy), 60);
        assert_eq!(partition_lag(&part(0, 100, Some(100)), &policy), 0);
    }
}

#[test]
fn no_commit_counts_from_where_the_worker_will_start() {
    let fresh = part(30, 100, None);
    assert_eq!(
        partition_lag(&fresh, &StartingOffsets::Earliest),
        70,
        "earliest: everything still in the log"
    );
    assert_eq!(partition_lag(&fresh, &StartingOffsets::Latest), 0);
    let time = at("2026-11-01T00:00:00Z");
    let with_time = PartitionOffsets {
        offset_for_time: Some(90),
        ..fresh.clone()
    };
    assert_eq!(partition_lag(&with_time, &time), 10);
    assert_eq!(
        partition_lag(&fresh, &time),
        0,
        "no record at or after the time: the worker starts at the end"
    );
}

#[test]
fn records_deleted_by_retention_are_not_lag() {
    assert_eq!(
        partition_lag(&part(500, 800, Some(100)), &StartingOffsets::Latest),
        300,
        "the worker resumes at the log start, 500"
    );
    assert_eq!(
        partition_lag(&part(0, 50, Some(80)), &StartingOffsets::Latest),
        0,
        "a commit past the end (recreated topic) is not negative lag"
    );
}

/// A topic of `n` partitions where partition p has p * 7 % 1000 records of lag.
fn wide(name: &str, n: i32) -> KafkaObservation {
    let parts: Vec<_> = (0..n)
        .map(|p| (0, 10_000, Some(10_000 - i64::from(p * 7 % 1000))))
        .collect();
    fixtures::topic(name, &parts)
}

#[test]
fn a_thousand_partitions_make_capped_rows_laggiest_first() {
    let obs = wide("events", 1000);
    let s = summarize(&obs, &StartingOffsets::Latest, DEFAULT_ROWS);
    assert_eq!(s.partitions, 1000);
    let expected: i64 = (0..1000).map(|p| i64::from(p * 7 % 1000)).sum();
    assert_eq!(s.lag.records, expected);
    assert_eq!(s.lag.max_partition, 999);
    assert_eq!((s.offsets.partitions.len(), s.offsets.omitted), (20, 980));
    let lags: Vec<i64> = s.offsets.partitions.iter().map(|r| r.lag).collect();
    assert_eq!(lags, (980..1000).rev().collect::<Vec<i64>>());
    let first = &s.offsets.partitions[0];
    // 7p = 999 (mod 1000) for p = 857.
    assert_eq!(
        (first.partition, first.committed, first.end),
        (857, Some(9001), 10_000)
    );

    let job = status::compute(None, Some(1), &applied(), Timestamp::UNIX_EPOCH);
    let st = status::with_kafka(job, Ok(&s));
    let bytes = serde_json::to_vec(&st).unwrap().len();
    assert!(bytes < 100 * 1024, "status is {bytes} bytes");
}

#[test]
fn the_row_cap_holds_whatever_is_configured() {
    // Kafka's longest topic name: the worst case for the size of a row.
    let obs = wide(&"t".repeat(249), 1000);
    let s = summarize(&obs, &StartingOffsets::Latest, 1_000_000);
    assert_eq!(s.offsets.partitions.len(), MAX_ROWS);
    assert_eq!(s.offsets.omitted, 800);
    let st = status::with_kafka(
        status::compute(None, Some(1), &applied(), Timestamp::UNIX_EPOCH),
        Ok(&s),
    );
    let bytes = serde_json::to_vec(&st).unwrap().len();
    assert!(bytes < 100 * 1024, "status is {bytes} bytes");
    assert_eq!(
        summarize(&obs, &StartingOffsets::Latest, 0).offsets.omitted,
        1000
    );
}

fn applied() -> Observation {
    Observation::Applied {
        desired: 2,
        reason: "test".into(),
        suspended: false,
        stopped: None,
        current: 2,
        ready: 2,
        selector: "weir.dev/job=j".into(),
    }
}

#[test]
fn a_quiet_job_yields_the_same_status_and_no_write() {
    // Equal lags everywhere: the order must still be stable.
    let obs = fixtures::topic("t", &[(0, 10, Some(5)); 50]);
    let first = status::with_kafka(
        status::compute(None, Some(1), &applied(), Timestamp::UNIX_EPOCH),
        Ok(&summarize(&obs, &StartingOffsets::Latest, 5)),
    );
    let again = status::with_kafka(
        status::compute(Some(&first), Some(1), &applied(), Timestamp::now()),
        Ok(&summarize(&obs, &StartingOffsets::Latest, 5)),
    );
    assert!(!status::changed(Some(&first), &again));
    let rows: Vec<i32> = first
        .offsets
        .unwrap()
        .partitions
        .iter()
        .map(|r| r.partition)
        .collect();
    assert_eq!(rows, [0, 1, 2, 3, 4]);
}

#[test]
fn a_failed_read_keeps_the_last_numbers_and_says_why() {
    let s = summarize(
        &fixtures::topic("t", &[(0, 10, Some(4))]),
        &StartingOffsets::Latest,
        DEFAULT_ROWS,
    );
    let base = status::compute(None, Some(1), &applied(), Timestamp::UNIX_EPOCH);
    let ok = status::with_kafka(base, Ok(&s));
    let failed = status::with_kafka(ok.clone(), Err("brokers down"));
    assert_eq!(failed.lag, ok.lag);
    assert_eq!(failed.observe_error.as_deref(), Some("brokers down"));
    let recovered = status::with_kafka(failed, Ok(&s));
    assert_eq!(recovered, ok);
    let json = serde_json::to_value(&recovered).unwrap();
    assert!(
        json["observeError"].is_null() && json.get("observeError").is_some(),
        "sent as null, so the merge patch clears it"
    );
}

#[test]
fn a_committed_offset_outside_the_log_is_a_condition_that_names_the_partition_and_the_fix() {
    let mut obs = fixtures::topic("t", &[(0, 10, Some(1000)), (0, 10, Some(5))]);
    obs.partitions[1].log_start = 8;
    let s = summarize(&obs, &StartingOffsets::Latest, DEFAULT_ROWS);
    let st = status::with_kafka(StreamingJobStatus::default(), Ok(&s));
    let c = st
        .conditions
        .iter()
        .find(|c| c.type_ == status::OFFSETS_OUT_OF_RANGE)
        .expect("condition");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "CommittedOffsetsOutsideLog")
    );
    assert!(
        c.message
            .contains("t-0: committed offset 1000 is past the log end 10")
            && c.message
                .contains("t-1: committed offset 5 is before the log start 8")
            && c.message.contains("offsetOutOfRange"),
        "{}",
        c.message
    );
    let fine = summarize(
        &fixtures::topic("t", &[(0, 10, Some(10))]),
        &StartingOffsets::Latest,
        DEFAULT_ROWS,
    );
    let st = status::with_kafka(st, Ok(&fine));
    let c = st
        .conditions
        .iter()
        .find(|c| c.type_ == status::OFFSETS_OUT_OF_RANGE)
        .expect("condition");
    assert_eq!(c.status, "False");
}

/// A partition with `next` as the next unread record's timestamp (ms).
fn timed(log_start: i64, end: i64, committed: Option<i64>, next: Option<i64>) -> PartitionOffsets {
    PartitionOffsets {
        next_timestamp: next,
        ..part(log_start, end, committed)
    }
}

#[test]
fn lag_in_seconds_is_the_next_unread_records_age_and_unknown_is_never_zero() {
    let now = Some(1_000_000);
    let latest = StartingOffsets::Latest;
    assert_eq!(next_unread(&part(0, 100, Some(40)), &latest), Some(40));
    assert_eq!(
        next_unread(&part(50, 100, Some(40)), &latest),
        Some(50),
        "the log start, once retention passed the commit"
    );
    assert_eq!(next_unread(&part(0, 100, Some(100)), &latest), None);
    assert_eq!(
        next_unread(&part(30, 100, None), &StartingOffsets::Earliest),
        Some(30)
    );

    let behind = timed(0, 100, Some(40), Some(1_000_000 - 90_500));
    assert_eq!(
        partition_lag_seconds(&behind, &latest, now),
        Some(90),
        "whole seconds"
    );
    let caught_up = timed(0, 100, Some(100), None);
    assert_eq!(
        partition_lag_seconds(&caught_up, &latest, now),
        Some(0),
        "nothing waits: 0, no read needed"
    );
    let unread = timed(0, 100, Some(40), None);
    assert_eq!(
        partition_lag_seconds(&unread, &latest, now),
        None,
        "waiting, timestamp unknown: null"
    );
    assert_eq!(
        partition_lag_seconds(&behind, &latest, None),
        None,
        "no time of the read"
    );
    let ahead = timed(0, 100, Some(40), Some(1_005_000));
    assert_eq!(
        partition_lag_seconds(&ahead, &latest, now),
        Some(0),
        "a producer clock ahead of ours"
    );

    let obs = |parts: Vec<PartitionOffsets>| KafkaObservation {
        partitions: parts,
        read_at_millis: now,
        ..KafkaObservation::default()
    };
    let older = timed(0, 100, Some(10), Some(1_000_000 - 300_000));
    let job = obs(vec![behind.clone(), older.clone(), caught_up.clone()]);
    assert_eq!(
        lag_seconds(&job, &latest),
        Some(300),
        "the most over partitions"
    );
    assert_eq!(lag_seconds(&obs(vec![caught_up.clone()]), &latest), Some(0));
    assert_eq!(
        lag_seconds(&obs(vec![behind.clone(), unread.clone()]), &latest),
        None,
        "one waiting partition unread: the most over the others could understate"
    );
    let mut staged = obs(vec![caught_up]);
    staged.stages.push(crate::observation::StageOffsets {
        partitions: vec![older],
        ..Default::default()
    });
    assert_eq!(
        lag_seconds(&staged, &latest),
        Some(300),
        "a later stage's backlog counts"
    );

    let s = summarize(&job, &latest, DEFAULT_ROWS);
    assert_eq!(s.lag.seconds, Some(300));
    let st = status::with_kafka(
        StreamingJobStatus::default(),
        Ok(&summarize(&obs(vec![unread]), &latest, DEFAULT_ROWS)),
    );
    let json = serde_json::to_value(&st).unwrap();
    assert!(
        json["lag"]["seconds"].is_null() && json["lag"].get("seconds").is_some(),
        "sent as null, so the merge patch clears a figure that is no longer known: {json}"
    );
}

#[test]
fn offsets_are_at_risk_when_the_unread_backlog_fills_nine_tenths_of_the_retained_log() {
    let latest = StartingOffsets::Latest;
    // 1000 records retained (1000..2000): under 100 before the position is at risk.
    let risk = at_risk(&part(1000, 2000, Some(1099)), &latest).expect("99 < 10% of 1000");
    assert_eq!(
        (risk.position, risk.margin, risk.margin_millis),
        (1099, 99, None)
    );
    assert_eq!(
        at_risk(&part(1000, 2000, Some(1100)), &latest),
        None,
        "exactly 10%: kept"
    );
    assert_eq!(
        at_risk(&part(1000, 2000, Some(2000)), &latest),
        None,
        "nothing waits"
    );
    assert_eq!(
        at_risk(&part(0, 2000, Some(5)), &latest),
        None,
        "retention has deleted nothing yet"
    );
    assert_eq!(
        at_risk(&part(1000, 2000, Some(10)), &latest),
        None,
        "gone already: OffsetsOutOfRange's"
    );
    assert_eq!(
        at_risk(&part(1000, 2000, None), &StartingOffsets::Earliest).map(|r| r.margin),
        Some(0),
        "a job starting at the earliest offset reads the records retention deletes next"
    );
    assert_eq!(at_risk(&part(1000, 2000, None), &latest), None);

    let mut p = part(1000, 2000, Some(1020));
    p.log_start_timestamp = Some(50_000);
    p.next_timestamp = Some(50_000 + 200_000);
    let risk = at_risk(&p, &latest).unwrap();
    assert_eq!(risk.margin_millis, Some(200_000));
    assert_eq!(
        risk.describe(),
        "t-0: the next unread record (offset 1020) is 20 records (about 3m20s of input) from the log start 1000, under 10% of the 1000 records retained"
    );

    let mut obs = fixtures::topic(
        "t",
        &[
            (1000, 2000, Some(1050)),
            (1000, 2000, Some(1010)),
            (1000, 2000, Some(1500)),
        ],
    );
    obs.partitions[0].topic = "u".into();
    let s = summarize(&obs, &latest, DEFAULT_ROWS);
    assert_eq!(s.at_risk.len(), 2);
    assert!(
        s.at_risk[0].starts_with("t-1:") && s.at_risk[1].starts_with("u-0:"),
        "least margin first: {:?}",
        s.at_risk
    );
    let st = status::with_kafka(StreamingJobStatus::default(), Ok(&s));
    let c = st
        .conditions
        .iter()
        .find(|c| c.type_ == status::OFFSETS_AT_RISK)
        .expect("condition");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "RetentionNearCommittedOffsets")
    );
    assert!(
        c.message
            .contains("t-1: the next unread record (offset 1010) is 10 records (time unknown")
            && c.message.contains("retention.ms"),
        "{}",
        c.message
    );
    let safe = summarize(
        &fixtures::topic("t", &[(1000, 2000, Some(1500))]),
        &latest,
        DEFAULT_ROWS,
    );
    let st = status::with_kafka(st, Ok(&safe));
    let c = st
        .conditions
        .iter()
        .find(|c| c.type_ == status::OFFSETS_AT_RISK)
        .unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "RetentionMarginKept")
    );
}

#[test]
fn many_partitions_at_risk_are_named_up_to_the_cap() {
    let obs = fixtures::topic("t", &[(1000, 2000, Some(1001)); 12]);
    let s = summarize(&obs, &StartingOffsets::Latest, DEFAULT_ROWS);
    assert_eq!(s.at_risk.len(), crate::lag::MAX_OUT_OF_RANGE + 1);
    assert_eq!(
        s.at_risk.last().map(String::as_str),
        Some("and 7 more partitions")
    );
}

#[test]
fn offsets_at_risk_flips_post_one_warning_and_one_normal_event() {
    let summary = |committed| {
        summarize(
            &fixtures::topic("t", &[(1000, 2000, Some(committed))]),
            &StartingOffsets::Latest,
            DEFAULT_ROWS,
        )
    };
    let safe = status::with_kafka(StreamingJobStatus::default(), Ok(&summary(1500)));
    let risky = status::with_kafka(safe.clone(), Ok(&summary(1001)));
    let flips = crate::conditions::transitions(Some(&safe), &risky);
    assert_eq!(flips.len(), 1, "{flips:?}");
    assert!(flips[0].warning && flips[0].reason == "OffsetsAtRisk");
    assert!(
        flips[0]
            .note
            .contains("t-0: the next unread record (offset 1001) is 1 records"),
        "{}",
        flips[0].note
    );
    assert!(
        crate::conditions::transitions(Some(&risky), &risky).is_empty(),
        "once per flip"
    );
    let flips = crate::conditions::transitions(Some(&risky), &safe);
    assert_eq!(flips.len(), 1, "{flips:?}");
    assert!(!flips[0].warning && flips[0].reason == "OffsetsAtRiskCleared");
}
