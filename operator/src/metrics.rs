//! The operator's metrics: one OpenTelemetry meter, exported through a Prometheus registry.
//!
//! Labels are fixed names (error variants, outcomes), never job names, so the number of
//! series stays bounded however many jobs a cluster runs.

use std::time::Duration;

use opentelemetry::metrics::{Counter, Histogram, MeterProvider};
use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use prometheus::{Encoder, TextEncoder};

#[derive(Clone)]
pub struct Metrics {
    registry: prometheus::Registry,
    // Kept so the exporter stays registered for the life of the metrics.
    _provider: SdkMeterProvider,
    reconciles: Counter<u64>,
    failures: Counter<u64>,
    observe_failures: Counter<u64>,
    duration: Histogram<f64>,
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
        Ok(Self {
            reconciles: meter
                .u64_counter("weir_operator_reconciles")
                .with_description("Reconciles run, by outcome")
                .build(),
            failures: meter
                .u64_counter("weir_operator_reconcile_errors")
                .with_description("Failed reconciles, by error kind")
                .build(),
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
    /// [`crate::observe::ObserveError::metric_label`].
    pub fn observe_failed(&self, error: &crate::observe::ObserveError) {
        self.observe_failures
            .add(1, &[KeyValue::new("error", error.metric_label())]);
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
        assert!(
            text.contains("weir_operator_reconcile_errors_total{error=\"missing_field\""),
            "{text}"
        );
        assert!(
            text.contains("weir_operator_reconcile_duration_seconds_bucket"),
            "{text}"
        );
    }
}
