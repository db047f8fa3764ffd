//! The operator at many jobs, against the scripted API (which records every request): at
//! steady state a job costs one request per observation period (its status, whose
//! `observedAt` moves), and that cost does not grow with the number of jobs. The benchmark
//! at the end (ignored; `bench/operator.sh` runs it) drives a thousand jobs and prints the
//! figures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;
use tokio_util::sync::CancellationToken;

use crate::context::{Context, Settings};
use crate::controller;
use crate::fixtures::{self, ApiServer, DataObserver, Recorded};
use crate::metrics::Metrics;

const JOBS: &str = "/apis/weir.dev/v1alpha1/namespaces/default/streamingjobs";

/// A running operator over `jobs` word-count jobs, all reading one 8-partition topic.
struct Fleet {
    server: ApiServer,
    metrics: Metrics,
    token: CancellationToken,
    run: tokio::task::JoinHandle<()>,
    jobs: usize,
}

fn start(jobs: usize, settings: Settings) -> Fleet {
    let (client, server) = fixtures::start();
    for i in 0..jobs {
        server.insert(JOBS, fixtures::job(&format!("j{i}"), 1, fixtures::spec()));
    }
    let observer = DataObserver::new(Some(fixtures::topic("lines", &[(0, 100, Some(100)); 8])));
    let metrics = Metrics::new().expect("metrics");
    let ctx = Arc::new(Context::new(client, settings, metrics.clone()).with_observer(observer));
    let token = CancellationToken::new();
    let run = tokio::spawn(controller::run(ctx, token.clone()));
    Fleet {
        server,
        metrics,
        token,
        run,
        jobs,
    }
}

/// Requests a reconcile makes, not the watches that stay open.
fn calls(r: &[Recorded]) -> usize {
    r.iter()
        .filter(|x| !(x.method == Method::GET && x.query.contains("watch=true")))
        .count()
}

/// Jobs whose status was written at least once.
fn observed(r: &[Recorded]) -> usize {
    let mut names: Vec<&str> = r
        .iter()
        .filter(|x| x.method == Method::PATCH && x.path.ends_with("/status"))
        .filter_map(|x| x.path.rsplit('/').nth(1))
        .collect();
    names.sort_unstable();
    names.dedup();
    names.len()
}

fn reconciles(m: &Metrics) -> f64 {
    m.render()
        .lines()
        .filter(|l| l.starts_with("weir_operator_reconciles_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// What steady state costs.
struct Cost {
    per_job_per_period: f64,
    per_reconcile: f64,
}

impl Fleet {
    /// Waits until every job has a status, lets `settle` pass, then measures over `window`.
    async fn steady_cost(&self, period: Duration, settle: Duration, window: Duration) -> Cost {
        let wait = Duration::from_secs(120);
        self.server
            .wait_for(wait, |r| observed(r) == self.jobs)
            .await;
        tokio::time::sleep(settle).await;
        let (calls0, rec0) = (calls(&self.server.requests()), reconciles(&self.metrics));
        tokio::time::sleep(window).await;
        let (calls1, rec1) = (calls(&self.server.requests()), reconciles(&self.metrics));
        let periods = window.as_secs_f64() / period.as_secs_f64();
        let made = (calls1 - calls0) as f64;
        Cost {
            per_job_per_period: made / (self.jobs as f64 * periods),
            per_reconcile: made / (rec1 - rec0).max(1.0),
        }
    }

    async fn stop(self) {
        self.token.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.run).await;
    }
}

fn settings(period: Duration) -> Settings {
    Settings {
        observe_every: period,
        ..Settings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_at_steady_state_costs_one_request_per_period_however_many_jobs_there_are() {
    let period = Duration::from_millis(500);
    let mut costs = Vec::new();
    for jobs in [10, 100] {
        let fleet = start(jobs, settings(period));
        let cost = fleet.steady_cost(period, period * 3, period * 6).await;
        let r = fleet.server.requests();
        let applies = r
            .iter()
            .filter(|x| x.content_type.as_deref() == Some("application/apply-patch+yaml"))
            .count();
        fleet.stop().await;
        assert_eq!(
            applies,
            jobs * 4,
            "each child applied once, never again when unchanged"
        );
        eprintln!(
            "{jobs} jobs: {:.2} requests per job per period, {:.2} per reconcile",
            cost.per_job_per_period, cost.per_reconcile
        );
        assert!(
            cost.per_job_per_period <= 1.1,
            "{jobs} jobs: {:.2} requests per job per period",
            cost.per_job_per_period
        );
        costs.push(cost.per_reconcile);
    }
    // The status write, when the observation was fresh: never more per reconcile, and no
    // more at 100 jobs than at 10.
    assert!(costs.iter().all(|c| *c <= 1.05), "{costs:?}");
    assert!(costs[1] <= costs[0] + 0.05, "{costs:?}");
}

/// `/proc/self` figures of this process (the operator and the scripted API together):
/// CPU seconds used and peak resident memory in MiB.
fn process_figures() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
    let after = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<f64>().ok())
        .unwrap_or(0.0);
    (cpu, hwm / 1024.0)
}

/// `bench/operator.sh`: a thousand jobs through the scripted API. Prints the time until every
/// job is observed with its children, the steady-state requests per job per period and per
/// reconcile, and the process's CPU and peak memory. Figures, not a pass/fail test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: bench/operator.sh runs it"]
async fn bench_a_thousand_jobs() {
    let jobs: usize = std::env::var("WEIR_BENCH_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let period = Duration::from_secs(15);
    let (cpu0, _) = process_figures();
    let started = Instant::now();
    let fleet = start(jobs, settings(period));
    fleet
        .server
        .wait_for(Duration::from_secs(600), |r| observed(r) == jobs)
        .await;
    let converged = started.elapsed();
    let (cpu1, _) = process_figures();
    let cost = fleet.steady_cost(period, Duration::ZERO, period * 2).await;
    let (cpu2, rss) = process_figures();
    let steady_cpu = (cpu2 - cpu1) / (period * 2).as_secs_f64();
    fleet.stop().await;
    println!("jobs: {jobs}");
    println!("time until every job is observed with its children: {converged:.1?}");
    println!("CPU seconds to get there: {:.1}", cpu1 - cpu0);
    println!(
        "steady state: {:.2} requests per job per 15 s period, {:.2} per reconcile",
        cost.per_job_per_period, cost.per_reconcile
    );
    println!("steady-state CPU: {:.1}% of a core", steady_cpu * 100.0);
    println!("peak RSS (operator and scripted API in one process): {rss:.0} MiB");
}
