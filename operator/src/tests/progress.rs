//! Workers' `/progress`: the operator's reading of the worker's own JSON, the fold into batch
//! lag and last batch, and fetching from the worker's real HTTP server.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use weir_contract::client::Identity;
use weir_contract::progress::{BatchInfo, RangeInfo};
use weir_worker::progress::Progress;

use crate::crd::LastBatchStatus;
use crate::progress::{fetch, fold, ProgressError, WorkerBatch, WorkerSnapshot, LAST_BATCHES};

pub(super) fn worker(ordinal: u32, workers: u32) -> Progress {
    let id = Identity {
        namespace: "default".into(),
        job: "wc".into(),
        ordinal,
        workers,
    };
    Progress::new(id, "weir.default.wc".into(), Duration::from_secs(5))
}

pub(super) fn batch(
    n: u64,
    time_ms: i64,
    records: u64,
    processing: u64,
    pending: u64,
) -> BatchInfo {
    BatchInfo {
        batch: n,
        batch_time: format!("t{time_ms}"),
        batch_time_ms: time_ms,
        ranges: vec![RangeInfo {
            topic: "lines".into(),
            partition: 0,
            from: 0,
            until: i64::try_from(records).unwrap(),
            high_watermark: Some(1000),
            lag: Some(1000 - i64::try_from(records).unwrap()),
        }],
        records_in: records,
        partials_in: 0,
        represented_in: None,
        records_out: records,
        dead_lettered: 0,
        scheduling_delay_ms: processing / 2,
        processing_ms: processing,
        total_delay_ms: processing + processing / 2,
        pending_batches: pending,
        lag: Some(1000 - i64::try_from(records).unwrap()),
        rate_limit: None,
        event_time: None,
        source_error: None,
    }
}

fn wb(time_ms: i64, records: u64, processing: u64, pending: u64) -> WorkerBatch {
    WorkerBatch {
        batch_time: format!("t{time_ms}"),
        batch_time_ms: time_ms,
        records_in: records,
        processing_ms: processing,
        scheduling_delay_ms: processing / 2,
        pending_batches: pending,
        event_time: None,
    }
}

/// A batch of a job with a watermark at `watermark_ms` (`None`: not yet known).
fn with_watermark(mut b: BatchInfo, watermark_ms: Option<i64>) -> BatchInfo {
    b.event_time = Some(weir_contract::progress::EventTimeInfo {
        watermark: None,
        watermark_ms,
        partitions: vec![],
        late_records: 0,
    });
    b
}

#[test]
fn the_jobs_watermark_is_the_least_of_its_workers_last_stages() {
    let snapshot = |p: &Progress| -> WorkerSnapshot {
        serde_json::from_slice(&serde_json::to_vec(&p.snapshot(LAST_BATCHES)).unwrap()).unwrap()
    };
    // Worker 0: the first stage is far ahead; its windows' stage is at 9 s. Worker 1: 7 s.
    let w0 = worker(0, 2);
    w0.record(with_watermark(batch(1, 5000, 10, 40, 0), Some(60_000)));
    w0.stage("w", "g-w".into())
        .record(with_watermark(batch(1, 5000, 10, 40, 0), Some(9_000)));
    let w1 = worker(1, 2);
    w1.record(with_watermark(batch(1, 5000, 10, 40, 0), Some(60_000)));
    w1.stage("w", "g-w".into())
        .record(with_watermark(batch(1, 5000, 10, 40, 0), Some(7_000)));
    let answers: Vec<(u32, Result<WorkerSnapshot, ()>)> =
        vec![(0, Ok(snapshot(&w0))), (1, Ok(snapshot(&w1)))];
    assert_eq!(fold(&answers).watermark_ms, Some(7_000));
    // One worker that does not know its watermark yet leaves the job's unknown, never the
    // other worker's as if it were the job's.
    let w2 = worker(2, 3);
    w2.record(with_watermark(batch(1, 5000, 10, 40, 0), None));
    let mut answers = answers;
    answers.push((2, Ok(snapshot(&w2))));
    assert_eq!(fold(&answers).watermark_ms, None);
    // A job without event time has none.
    let plain = worker(0, 1);
    plain.record(batch(1, 5000, 10, 40, 0));
    let answers: Vec<(u32, Result<WorkerSnapshot, ()>)> = vec![(0, Ok(snapshot(&plain)))];
    assert_eq!(fold(&answers).watermark_ms, None);
}

#[test]
fn the_workers_own_snapshot_reads_as_the_operators_type() {
    let p = worker(1, 3);
    p.record(batch(1, 5000, 10, 40, 0));
    p.record(batch(2, 10_000, 20, 60, 2));
    let json = serde_json::to_vec(&p.snapshot(LAST_BATCHES)).unwrap();
    let s: WorkerSnapshot = serde_json::from_slice(&json).unwrap();
    assert_eq!(s.worker, 1);
    assert_eq!(s.batches, [wb(5000, 10, 40, 0), wb(10_000, 20, 60, 2)]);
}

#[test]
fn a_shuffle_stages_pending_batches_count_in_the_batch_lag() {
    let p = worker(0, 1);
    p.record(batch(1, 5000, 10, 40, 1));
    let shuffle = p.stage("counts", "weir.default.wc-counts".into());
    shuffle.record(batch(1, 5000, 10, 40, 3));
    let json = serde_json::to_vec(&p.snapshot(LAST_BATCHES)).unwrap();
    let s: WorkerSnapshot = serde_json::from_slice(&json).unwrap();
    assert_eq!(s.stages[0].stage, "counts");
    assert_eq!(s.stages[0].batches, [wb(5000, 10, 40, 3)]);
    let answers: Vec<(u32, Result<WorkerSnapshot, ()>)> = vec![(0, Ok(s))];
    assert_eq!(fold(&answers).batch_lag, Some(1 + 3));
}

#[test]
fn the_last_batch_adds_the_workers_batches_of_the_latest_time() {
    let answers: Vec<(u32, Result<WorkerSnapshot, ()>)> = vec![
        (
            0,
            Ok(WorkerSnapshot {
                worker: 0,
                started_at_ms: None,
                resumed_from: vec![],
                retrying: None,
                batches: vec![wb(5000, 7, 30, 0), wb(10_000, 10, 40, 1)],
                stages: vec![],
            }),
        ),
        (2, Err(())),
        (
            1,
            Ok(WorkerSnapshot {
                worker: 1,
                started_at_ms: None,
                resumed_from: vec![],
                retrying: None,
                batches: vec![wb(10_000, 5, 90, 2)],
                stages: vec![],
            }),
        ),
        (
            3,
            Ok(WorkerSnapshot {
                worker: 3,
                started_at_ms: None,
                resumed_from: vec![],
                retrying: None,
                batches: vec![],
                stages: vec![],
            }),
        ),
    ];
    let s = fold(&answers);
    assert_eq!(
        s.batch_lag,
        Some(3),
        "pending batches of each worker's latest"
    );
    assert_eq!(
        s.last_batch,
        Some(LastBatchStatus {
            time: "t10000".into(),
            records: 15,
            processing_millis: 90,
            scheduling_delay_millis: 45,
        })
    );
    assert_eq!(s.unreachable, [2]);

    let nothing: Vec<(u32, Result<WorkerSnapshot, ()>)> = vec![(1, Err(())), (0, Err(()))];
    let s = fold(&nothing);
    assert_eq!(
        (s.batch_lag, s.last_batch, s.unreachable),
        (None, None, vec![0, 1])
    );
}

#[tokio::test]
async fn fetch_reads_the_workers_http_server_and_types_its_failures() {
    let p = Arc::new(worker(0, 1));
    p.record(batch(1, 5000, 10, 40, 0));
    let stop = CancellationToken::new();
    let (addr, task) = weir_worker::http::serve("127.0.0.1:0", p, stop.clone())
        .await
        .unwrap();
    let s = fetch(&addr.to_string(), Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(s.batches, [wb(5000, 10, 40, 0)]);
    stop.cancel();
    task.await.unwrap();

    let err = fetch(&addr.to_string(), Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(matches!(err, ProgressError::Io(_)), "{err}");

    // Accepts connections (the kernel's backlog) but never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let err = fetch(&addr, Duration::from_millis(200)).await.unwrap_err();
    assert!(matches!(err, ProgressError::Timeout(_)), "{err}");
}
