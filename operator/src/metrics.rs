//! The operator's metrics: one OpenTelemetry meter, exported through a Prometheus registry.
//!
//! Labels are fixed names (error variants, outcomes), never job names, so the number of
//! series stays bounded however many jobs a cluster runs. The one exception is the per-job
//! gauges (`weir_job_*`), which exist to tell jobs apart: one series per job and figure, read
//! from [`JobFigures`] at each scrape, and gone once the job is deleted. `weir_job_phase` and
//! `weir_job_condition` add one label of a fixed set each (the phases, the condition types
//! and their three statuses), in the manner of kube-state-metrics' `kube_pod_status_phase`:
//! every value has a series, 1 for the current one and 0 for the others, so a flip never
//! leaves a stale 1 behind.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::metrics::{Counter, Histogram, Meter, MeterProvider, ObservableGauge};
use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use prometheus::{Encoder, TextEncoder};

use crate::crd::{Phase, StreamingJobStatus};

#[derive(Clone)]
pub struct Metrics {
    registry: prometheus::Registry,
    // Kept so the exporter stays registered for the life of the metrics.
    _provider: SdkMeterProvider,
    reconciles: Counter<u64>,
    failures: Counter<u64>,
    observe_failures: Counter<u64>,
    duration: Histogram<f64>,
    jobs: Jobs,
    // Kept so the per-job callbacks stay registered.
    _gauges: Arc<Vec<ObservableGauge<i64>>>,
}

/// What the per-job gauges show of one job, as its last reconcile saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobFigures {
    pub lag: Option<i64>,
    /// `status.lag.seconds`: unknown (no series) when a waiting partition's next record could
    /// not be read.
    pub lag_seconds: Option<i64>,
    pub batch_lag: Option<u64>,
    pub workers_desired: u32,
    pub workers_ready: u32,
    pub restarts: u32,
    /// `status.observedAt` in seconds since the epoch: `time() - ` this is how old the job's
    /// figures are, which a gauge of the age would hide once the operator stops updating it.
    pub observed_at: Option<i64>,
    pub phase: Option<Phase>,
    /// The status of each condition type the job has, by type; only [`CONDITION_TYPES`] are
    /// exported.
    pub conditions: BTreeMap<String, String>,
}

impl JobFigures {
    /// The phase and conditions of `status`, for the gauges.
    pub fn with_status(mut self, status: &StreamingJobStatus) -> Self {
        self.phase = status.phase;
        self.conditions = status
            .conditions
            .iter()
            .map(|c| (c.type_.clone(), c.status.clone()))
            .collect();
        self
    }
}

/// The condition types the operator sets: the only values of `weir_job_condition`'s
/// `condition` label.
pub const CONDITION_TYPES: [&str; 7] = [
    crate::status::READY,
    crate::conditions::PROGRESSING,
    crate::conditions::STALLED,
    crate::conditions::DEGRADED,
    crate::status::OFFSETS_OUT_OF_RANGE,
    crate::status::OFFSETS_AT_RISK,
    crate::rewind::REWIND_REFUSED,
];

/// A condition's statuses as Kubernetes writes them, and as the `status` label says them
/// (lower case, as kube-state-metrics does).
const CONDITION_STATUSES: [(&str, &str); 3] =
    [("True", "true"), ("False", "false"), ("Unknown", "unknown")];

const PHASES: [Phase; 6] = [
    Phase::Pending,
    Phase::Running,
    Phase::Rescaling,
    Phase::Degraded,
    Phase::Suspended,
    Phase::Failed,
];

/// Each job's figures by (namespace, name).
type Jobs = Arc<Mutex<BTreeMap<(String, String), JobFigures>>>;

/// One gauge per figure, observed from `jobs` at each scrape; a figure a job does not have
/// yet (no lag before the first Kafka read) has no series.
fn job_gauges(meter: &Meter, jobs: &Jobs) -> Vec<ObservableGauge<i64>> {
    type Pick = fn(&JobFigures) -> Option<i64>;
    let figures: [(&'static str, &'static str, Pick); 7] = [
        (
            "weir_job_lag_records",
            "Records behind the end of the job's input topics",
            |f| f.lag,
        ),
        (
            "weir_job_lag_seconds",
            "Seconds the job's oldest unread record is behind now, the most over partitions",
            |f| f.lag_seconds,
        ),
        (
            "weir_job_batch_lag",
            "Batches waiting to run, summed over the workers",
            |f| f.batch_lag.map(|n| i64::try_from(n).unwrap_or(i64::MAX)),
        ),
        (
            "weir_job_workers_desired",
            "Workers the job should run",
            |f| Some(i64::from(f.workers_desired)),
        ),
        ("weir_job_workers_ready", "Workers ready", |f| {
            Some(i64::from(f.workers_ready))
        }),
        (
            "weir_job_restarts",
            "Worker restarts over the job's life",
            |f| Some(i64::from(f.restarts)),
        ),
        (
            "weir_job_observed_timestamp_seconds",
            "When the operator last read the job's offsets and workers (Unix time)",
            |f| f.observed_at,
        ),
    ];
    figures
        .into_iter()
        .map(|(name, description, pick)| {
            let jobs = jobs.clone();
            meter
                .i64_observable_gauge(name)
                .with_description(description)
                .with_callback(move |gauge| {
                    let Ok(jobs) = jobs.lock() else { return };
                    for ((namespace, job), figures) in jobs.iter() {
                        if let Some(v) = pick(figures) {
                            let labels = [
                                KeyValue::new("namespace", namespace.clone()),
                                KeyValue::new("job", job.clone()),
                            ];
                            gauge.observe(v, &labels);
                        }
                    }
                })
                .build()
        })
        .collect()
}

/// `weir_job_phase` and `weir_job_condition`: a series per job and value of the fixed label
/// set, 1 for the job's current one. A job without a phase yet (never reconciled to a status)
/// has no phase series; a condition the job does not have, no condition series.
fn state_gauges(meter: &Meter, jobs: &Jobs) -> Vec<ObservableGauge<i64>> {
    let phases = jobs.clone();
    let phase = meter
        .i64_observable_gauge("weir_job_phase")
        .with_description("The job's phase: 1 for the current one, 0 for the others")
        .with_callback(move |gauge| {
            let Ok(jobs) = phases.lock() else { return };
            for ((namespace, job), figures) in jobs.iter() {
                let Some(current) = figures.phase else {
                    continue;
                };
                for p in PHASES {
                    let labels = [
                        KeyValue::new("namespace", namespace.clone()),
                        KeyValue::new("job", job.clone()),
                        KeyValue::new("phase", p.as_str()),
                    ];
                    gauge.observe(i64::from(p == current), &labels);
                }
            }
        })
        .build();
    let conditions = jobs.clone();
    let condition = meter
        .i64_observable_gauge("weir_job_condition")
        .with_description(
            "The job's conditions: 1 for each condition's current status (true, false, \
             unknown), 0 for the others",
        )
        .with_callback(move |gauge| {
            let Ok(jobs) = conditions.lock() else { return };
            for ((namespace, job), figures) in jobs.iter() {
                for type_ in CONDITION_TYPES {
                    let Some(current) = figures.conditions.get(type_) else {
                        continue;
                    };
                    for (status, label) in CONDITION_STATUSES {
                        let labels = [
                            KeyValue::new("namespace", namespace.clone()),
                            KeyValue::new("job", job.clone()),
                            KeyValue::new("condition", type_),
                            KeyValue::new("status", label),
                        ];
                        gauge.observe(i64::from(current == status), &labels);
                    }
                }
            }
        })
        .build();
    vec![phase, condition]
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A fresh registry and meter; each operator (and each test) gets its own.
    ///
    /// # Errors
    /// When the Prometheus exporter cannot be built.
    pub fn new() -> Result<Self, opentelemetry_sdk::error::OTelSdkError> {
        let registry = prometheus::Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .build()?;
        let provider = SdkMeterProvider::builder().with_reader(exporter).build();
        let meter = provider.meter("weir-operator");
        let jobs = Jobs::default();
        let failures = meter
            .u64_counter("weir_operator_reconcile_errors")
            .with_description("Failed reconciles, by error kind")
            .build();
        for label in crate::Error::METRIC_LABELS {
            failures.add(0, &[KeyValue::new("error", label)]);
        }
        Ok(Self {
            _gauges: Arc::new(
                job_gauges(&meter, &jobs)
                    .into_iter()
                    .chain(state_gauges(&meter, &jobs))
                    .collect(),
            ),
            jobs,
            reconciles: meter
                .u64_counter("weir_operator_reconciles")
                .with_description("Reconciles run, by outcome")
                .build(),
            failures,
            observe_failures: meter
                .u64_counter("weir_operator_observe_errors")
                .with_description("Failed reads of a job's Kafka offsets, by error kind")
                .build(),
            duration: meter
                .f64_histogram("weir_operator_reconcile_duration")
                .with_unit("s")
                .with_description("Time one reconcile took")
                .with_boundaries(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
                .build(),
            registry,
            _provider: provider,
        })
    }

    /// Records one reconcile; `outcome` is a fixed name such as "applied" or "invalid".
    pub fn reconciled(&self, outcome: &'static str, took: Duration) {
        self.reconciles.add(1, &[KeyValue::new("outcome", outcome)]);
        self.duration.record(took.as_secs_f64(), &[]);
    }

    /// Records one failed reconcile, labelled by [`crate::Error::metric_label`].
    pub fn failed(&self, error: &crate::Error, took: Duration) {
        self.failures
            .add(1, &[KeyValue::new("error", error.metric_label())]);
        self.duration.record(took.as_secs_f64(), &[]);
    }

    /// Records one failed Kafka observation, labelled by
    /// [`crate::observation::ObserveError::metric_label`].
    pub fn observe_failed(&self, error: &crate::observation::ObserveError) {
        self.observe_failures
            .add(1, &[KeyValue::new("error", error.metric_label())]);
    }

    /// Sets what the per-job gauges show for a job.
    pub fn job(&self, namespace: &str, name: &str, figures: JobFigures) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.insert((namespace.to_string(), name.to_string()), figures);
        }
    }

    /// Drops a deleted job's series.
    pub fn forget_job(&self, namespace: &str, name: &str) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.remove(&(namespace.to_string(), name.to_string()));
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec only fails on invalid metric names, which are fixed above.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_with_bounded_labels() {
        let m = Metrics::new().unwrap();
        let errors = |text: &str, kind: &str| -> Option<f64> {
            text.lines()
                .find(|l| {
                    l.starts_with("weir_operator_reconcile_errors_total{")
                        && l.contains(&format!("error=\"{kind}\""))
                })
                .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        };
        // Every kind is there from the start, at 0: a healthy error rate reads 0.
        let fresh = m.render();
        for kind in crate::Error::METRIC_LABELS {
            assert_eq!(errors(&fresh, kind), Some(0.0), "{kind} in\n{fresh}");
        }
        m.reconciled("applied", Duration::from_millis(20));
        m.failed(
            &crate::Error::MissingField("metadata.uid"),
            Duration::from_millis(1),
        );
        let text = m.render();
        assert!(
            text.contains("weir_operator_reconciles_total{outcome=\"applied\""),
            "{text}"
        );
        assert_eq!(errors(&text, "missing_field"), Some(1.0), "{text}");
        assert_eq!(
            crate::Error::MissingField("x").metric_label(),
            "missing_field"
        );
        assert!(crate::Error::METRIC_LABELS.contains(&crate::Error::CacheNotReady.metric_label()));
        assert!(
            text.contains("weir_operator_reconcile_duration_seconds_bucket"),
            "{text}"
        );
    }
}

#[cfg(test)]
mod job_tests {
    use super::*;

    #[test]
    fn per_job_gauges_are_scraped_and_go_with_the_job() {
        let m = Metrics::new().unwrap();
        m.job(
            "prod",
            "clicks",
            JobFigures {
                lag: Some(1234),
                lag_seconds: Some(95),
                batch_lag: Some(2),
                workers_desired: 3,
                workers_ready: 2,
                restarts: 4,
                observed_at: Some(1_796_000_000),
                ..JobFigures::default()
            },
        );
        m.job("prod", "views", JobFigures::default());
        let text = m.render();
        for line in [
            "weir_job_lag_records{job=\"clicks\",namespace=\"prod\"",
            "weir_job_lag_seconds{job=\"clicks\",namespace=\"prod\"",
            "weir_job_batch_lag{job=\"clicks\",namespace=\"prod\"",
            "weir_job_workers_desired{job=\"clicks\",namespace=\"prod\"",
            "weir_job_workers_ready{job=\"clicks\",namespace=\"prod\"",
            "weir_job_restarts{job=\"clicks\",namespace=\"prod\"",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        let value = |name: &str, job: &str| -> Option<f64> {
            text.lines()
                .find(|l| l.starts_with(name) && l.contains(&format!("job=\"{job}\"")))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
        };
        assert_eq!(value("weir_job_lag_records", "clicks"), Some(1234.0));
        assert_eq!(value("weir_job_lag_seconds", "clicks"), Some(95.0));
        assert_eq!(
            value("weir_job_lag_seconds", "views"),
            None,
            "unknown is no series, never 0"
        );
        assert_eq!(value("weir_job_workers_ready", "clicks"), Some(2.0));
        assert_eq!(value("weir_job_restarts", "clicks"), Some(4.0));
        assert_eq!(
            value("weir_job_observed_timestamp_seconds", "clicks"),
            Some(1_796_000_000.0)
        );
        assert_eq!(
            value("weir_job_lag_records", "views"),
            None,
            "no lag read yet"
        );
        assert_eq!(value("weir_job_workers_desired", "views"), Some(0.0));

        m.forget_job("prod", "clicks");
        let text = m.render();
        assert!(!text.contains("job=\"clicks\""), "{text}");
        assert!(text.contains("job=\"views\""), "{text}");
    }

    #[test]
    fn phase_and_conditions_are_one_series_per_value_and_go_with_the_job() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
        let condition = |type_: &str, status: &str| Condition {
            type_: type_.into(),
            status: status.into(),
            reason: "R".into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
        };
        let mut status = StreamingJobStatus {
            phase: Some(Phase::Failed),
            conditions: vec![
                condition("Ready", "False"),
                condition("OffsetsAtRisk", "True"),
                condition("Progressing", "Unknown"),
                // Not a type the operator sets: no label value of its own.
                condition("SomethingElse", "True"),
            ],
            ..StreamingJobStatus::default()
        };
        let m = Metrics::new().unwrap();
        m.job("prod", "clicks", JobFigures::default().with_status(&status));
        m.job("prod", "fresh", JobFigures::default());
        let text = m.render();
        let value = |text: &str, labels: &str| -> Option<f64> {
            text.lines()
                .find(|l| l.contains(labels) && l.contains("job=\"clicks\""))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
        };
        let phase = |text: &str, p: &str| value(text, &format!("phase=\"{p}\""));
        let cond = |text: &str, c: &str, s: &str| {
            value(
                text,
                &format!("condition=\"{c}\",job=\"clicks\",namespace=\"prod\",status=\"{s}\""),
            )
        };
        assert_eq!(phase(&text, "Failed"), Some(1.0), "{text}");
        for other in ["Pending", "Running", "Rescaling", "Degraded", "Suspended"] {
            assert_eq!(phase(&text, other), Some(0.0), "{other} in\n{text}");
        }
        assert_eq!(cond(&text, "OffsetsAtRisk", "true"), Some(1.0), "{text}");
        assert_eq!(cond(&text, "OffsetsAtRisk", "false"), Some(0.0), "{text}");
        assert_eq!(cond(&text, "Ready", "false"), Some(1.0), "{text}");
        assert_eq!(cond(&text, "Progressing", "unknown"), Some(1.0), "{text}");
        assert_eq!(
            cond(&text, "Stalled", "false"),
            None,
            "a condition not set has no series"
        );
        assert!(!text.contains("SomethingElse"), "{text}");
        assert!(
            !text
                .lines()
                .any(|l| l.starts_with("weir_job_phase") && l.contains("job=\"fresh\"")),
            "no phase before the first status:\n{text}"
        );

        // A flip moves the 1; nothing stays at 1 from before.
        status.phase = Some(Phase::Running);
        status.conditions[1] = condition("OffsetsAtRisk", "False");
        m.job("prod", "clicks", JobFigures::default().with_status(&status));
        let text = m.render();
        assert_eq!(phase(&text, "Failed"), Some(0.0), "{text}");
        assert_eq!(phase(&text, "Running"), Some(1.0), "{text}");
        assert_eq!(cond(&text, "OffsetsAtRisk", "true"), Some(0.0), "{text}");
        assert_eq!(cond(&text, "OffsetsAtRisk", "false"), Some(1.0), "{text}");

        // A removed job's series go, every one of them.
        m.forget_job("prod", "clicks");
        let text = m.render();
        assert!(!text.contains("job=\"clicks\""), "{text}");
    }

    #[test]
    fn the_dashboard_queries_only_metrics_the_operator_exports() {
        let m = Metrics::new().unwrap();
        m.reconciled("applied", Duration::from_millis(5));
        m.failed(&crate::Error::MissingField("x"), Duration::from_millis(5));
        m.job(
            "ns",
            "j",
            JobFigures {
                lag: Some(1),
                lag_seconds: Some(1),
                batch_lag: Some(1),
                observed_at: Some(1),
                ..JobFigures::default()
            }
            .with_status(&StreamingJobStatus {
                phase: Some(Phase::Running),
                conditions: vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    reason: "WorkersReady".into(),
                    message: String::new(),
                    observed_generation: None,
                    last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                    ),
                }],
                ..StreamingJobStatus::default()
            }),
        );
        let text = m.render();
        let queried = dashboard_metrics(|name| {
            name.starts_with("weir_operator_") || name.starts_with("weir_job_")
        });
        assert!(queried.len() >= 5, "{queried:?}");
        for name in queried {
            assert!(
                exported(&text, &name),
                "the dashboard queries {name}, which the operator does not export:\n{text}"
            );
        }
    }

    /// The rest of the dashboard's metrics are the workers': each is in a worker's `/metrics`
    /// once it has completed a batch.
    #[test]
    fn the_dashboard_queries_only_metrics_the_workers_export() {
        use weir_contract::progress::{BatchInfo, RangeInfo};
        use weir_worker::progress::Progress;
        let id = weir_contract::client::Identity {
            namespace: "ns".into(),
            job: "j".into(),
            ordinal: 0,
            workers: 1,
        };
        let p = Progress::new(id, "g".into(), Duration::from_secs(1));
        p.record(BatchInfo {
            batch: 0,
            batch_time: String::new(),
            batch_time_ms: 0,
            ranges: vec![RangeInfo {
                topic: "t".into(),
                partition: 0,
                from: 0,
                until: 10,
                high_watermark: Some(12),
                lag: Some(2),
            }],
            records_in: 10,
            partials_in: 0,
            represented_in: None,
            records_out: 9,
            dead_lettered: 1,
            scheduling_delay_ms: 1,
            processing_ms: 4,
            total_delay_ms: 5,
            pending_batches: 0,
            lag: Some(2),
            source_error: None,
            rate_limit: None,
            event_time: None,
        });
        let text = p.metrics_text();
        let queried = dashboard_metrics(|name| {
            !(name.starts_with("weir_operator_") || name.starts_with("weir_job_"))
        });
        assert!(queried.len() >= 8, "{queried:?}");
        for name in queried {
            assert!(
                exported(&text, &name),
                "the dashboard queries {name}, which the worker does not export:\n{text}"
            );
        }
    }

    /// The `weir_…` names in the shipped dashboard's JSON that `pick` keeps, sorted, once each.
    fn dashboard_metrics(pick: impl Fn(&str) -> bool) -> Vec<String> {
        let dashboard = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../charts/weir/dashboards/weir.json"
        ))
        .unwrap();
        let mut queried: Vec<String> = dashboard
            .match_indices("weir_")
            .map(|(at, _)| {
                let rest = &dashboard[at..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                rest[..end].to_string()
            })
            .filter(|name| pick(name))
            .collect();
        queried.sort_unstable();
        queried.dedup();
        queried
    }

    fn exported(text: &str, name: &str) -> bool {
        text.lines()
            .any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
    }
}
