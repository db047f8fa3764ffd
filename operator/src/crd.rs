//! The `StreamingJob` API: the worker's job spec plus the parts only Kubernetes needs.
//!
//! The pipeline half of the spec is `weir_contract::spec::JobSpec`, flattened in, so a manifest
//! and the worker's YAML file are the same document. Checks the API server can make itself are
//! CEL rules in the schema; the rest are made by the controller and reported in status.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, LocalObjectReference, ResourceRequirements, Toleration,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use weir_contract::spec::{Duration, JobSpec};

/// Job-wide rules. They sit on the spec, not on the worker's types, so that the worker's crate
/// stays free of Kubernetes; `fieldPath` points `kubectl` users at the field to fix.
const JOB_RULES: &str = r#"[
  {
    "rule": "!has(self.pipeline) || self.pipeline.all(s, [has(s.filter), has(s.map), has(s.select), has(s.flatMap), has(s.keyBy), has(s.aggregate), has(s.state), has(s.repartition), has(s.join), has(s.intervalJoin), has(s.sql)].filter(x, x).size() == 1)",
    "message": "each pipeline step sets exactly one of filter, map, select, flatMap, keyBy, aggregate, state, repartition, join, intervalJoin, sql; split a step that does several things",
    "fieldPath": ".pipeline",
    "reason": "FieldValueInvalid"
  },
  {
    "rule": "duration(self.batchInterval).getMilliseconds() == 0 || !has(self.pipeline) || self.pipeline.all(s, !has(s.window) || (has(s.window.time) && s.window.time == 'event') || !has(s.window.length) || duration(s.window.length).getMilliseconds() % duration(self.batchInterval).getMilliseconds() == 0)",
    "message": "pipeline[].window.length of a batch-time window must be a multiple of batchInterval; set it to e.g. 6 x batchInterval",
    "fieldPath": ".pipeline",
    "reason": "FieldValueInvalid"
  },
  {
    "rule": "duration(self.batchInterval).getMilliseconds() == 0 || !has(self.pipeline) || self.pipeline.all(s, !has(s.window) || (has(s.window.time) && s.window.time == 'event') || !has(s.window.slide) || duration(s.window.slide).getMilliseconds() % duration(self.batchInterval).getMilliseconds() == 0)",
    "message": "pipeline[].window.slide of a batch-time window must be a multiple of batchInterval; set it to batchInterval or a multiple of it",
    "fieldPath": ".pipeline",
    "reason": "FieldValueInvalid"
  },
  {
    "rule": "!has(self.pipeline) || has(self.source.watermark) || self.pipeline.all(s, !has(s.window) || !has(s.window.time) || s.window.time != 'event')",
    "message": "a window with time: event needs source.watermark (how far records may come out of order), e.g. watermark: {delay: 10s}",
    "fieldPath": ".source",
    "reason": "FieldRequired"
  },
  {
    "rule": "!has(self.pipeline) || self.pipeline.all(s, !has(s.window) || [has(s.window.length), has(s.window.gap)].filter(x, x).size() == 1)",
    "message": "pipeline[].window sets exactly one of length (tumbling or sliding) and gap (session, event time only)",
    "fieldPath": ".pipeline",
    "reason": "FieldValueInvalid"
  },
  {
    "rule": "[has(self.sink.stdout), has(self.sink.kafka), has(self.sink.file), has(self.sink.postgres)].filter(x, x).size() >= 1",
    "message": "sink sets at least one of stdout, kafka, file, postgres",
    "fieldPath": ".sink",
    "reason": "FieldValueInvalid"
  },
  {
    "rule": "!has(self.sink.postgres) || !has(self.sink.kafka) || !has(self.sink.kafka.delivery) || self.sink.kafka.delivery != 'exactlyOnce'",
    "message": "sink.kafka.delivery exactlyOnce cannot hold beside sink.postgres (two transactions, none spanning both); set delivery: atLeastOnce or write to one of them",
    "fieldPath": ".sink.kafka.delivery",
    "reason": "FieldValueForbidden"
  }
]"#;

fn job_rules(schema: &mut schemars::Schema) {
    let rules: serde_json::Value =
        serde_json::from_str(JOB_RULES).expect("JOB_RULES is valid JSON");
    schema.insert("x-kubernetes-validations".into(), rules);
}

/// A micro-batch streaming job over Kafka, run as a StatefulSet of workers.
// clippy reads the repeated `type_ = ...` of separate printcolumns as one duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "weir.dev",
    version = "v1alpha1",
    kind = "StreamingJob",
    plural = "streamingjobs",
    shortname = "sj",
    category = "weir",
    namespaced,
    status = "StreamingJobStatus",
    doc = "A micro-batch streaming job over Kafka, run by Weir as a StatefulSet of workers.",
    scale(
        spec_replicas_path = ".spec.workers.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Progress",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Progressing\")].reason",
        description = "Why the job is or is not progressing, e.g. KafkaUnreachable"
    ),
    printcolumn(
        name = "Workers",
        type_ = "integer",
        json_path = ".status.workers.ready",
        description = "Workers ready"
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".status.workers.desired",
        priority = 1
    ),
    printcolumn(
        name = "Lag",
        type_ = "integer",
        json_path = ".status.lag.records",
        description = "Records behind the end of the input topics"
    ),
    printcolumn(
        name = "Lag Seconds",
        type_ = "integer",
        json_path = ".status.lag.seconds",
        description = "Seconds the oldest unread record is behind now, the most over partitions"
    ),
    printcolumn(
        name = "Batch Lag",
        type_ = "integer",
        json_path = ".status.batchLag",
        description = "Batches waiting to run"
    ),
    printcolumn(
        name = "Last Batch",
        type_ = "date",
        json_path = ".status.lastBatch.time",
        description = "Time of the job's most recent batch"
    ),
    printcolumn(
        name = "Watermark",
        type_ = "string",
        json_path = ".status.eventTime.watermark",
        priority = "1",
        description = "The job's event-time watermark: windows up to it are closed"
    ),
    printcolumn(
        name = "Observed",
        type_ = "date",
        json_path = ".status.observedAt",
        priority = "1",
        description = "When the operator last read the job's offsets and workers"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = job_rules)]
pub struct StreamingJobSpec {
    /// What the workers run; this part is the worker's own job file.
    #[serde(flatten)]
    pub job: JobSpec,
    /// Worker image. Default: the image matching the operator's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,
    /// Each worker's container resources. Default: 100m CPU and 256Mi requested, 512Mi limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Scheduling and identity settings for the worker pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<PodTemplateOverrides>,
    #[serde(default)]
    pub workers: WorkersSpec,
    #[serde(default)]
    pub restart_policy: RestartPolicySpec,
    /// Scale the workers to zero, keeping offsets and state for a later resume.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,
    /// Moves the job's committed offsets once, each time `rewind.id` changes: the workers
    /// stop, the group's offsets are set, and the workers start again from there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewind: Option<RewindSpec>,
}

/// Where a rewind sets the job's offsets: exactly one of the targets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "[has(self.toTimestamp), has(self.offsets), has(self.toEarliest) && self.toEarliest, has(self.toLatest) && self.toLatest].filter(x, x).size() == 1",
    "message": "rewind sets exactly one of toTimestamp, offsets, toEarliest, toLatest",
    "reason": "FieldValueInvalid"
}]))]
pub struct RewindSpec {
    /// Any string; a new value runs the rewind once (e.g. a date or a ticket number).
    #[schemars(length(min = 1, max = 253))]
    pub id: String,
    /// Each partition goes to its first record at or after this time (RFC 3339), or to its
    /// end if there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub to_timestamp: Option<String>,
    /// Explicit offsets; partitions not listed keep theirs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 10000))]
    pub offsets: Option<Vec<RewindOffset>>,
    /// Every partition to the start of its log.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub to_earliest: bool,
    /// Every partition to its end: skip everything waiting.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub to_latest: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RewindOffset {
    #[schemars(length(min = 1, max = 249))]
    pub topic: String,
    #[schemars(range(min = 0))]
    pub partition: i32,
    #[schemars(range(min = 0))]
    pub offset: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ImagePullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl ImagePullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// How many workers run: one per `partitionsPerWorker` input partitions, within [min, max].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.min <= self.max",
    "message": "workers.min must not exceed workers.max; lower min or raise max",
    "reason": "FieldValueInvalid"
}]))]
pub struct WorkersSpec {
    #[serde(default = "default_partitions_per_worker")]
    #[schemars(range(min = 1, max = 10000))]
    pub partitions_per_worker: u32,
    #[serde(default = "default_min")]
    #[schemars(range(min = 1, max = 1000))]
    pub min: u32,
    #[serde(default = "default_max")]
    #[schemars(range(min = 1, max = 1000))]
    pub max: u32,
    /// A fixed worker count, kept within [min, max]; this is what `kubectl scale` and an
    /// autoscaler write through the `/scale` subresource. Unset: derived from partitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: Option<u32>,
    /// Lag-driven autoscaling above the partition-derived count, up to the caps. Off unless
    /// set; `replicas` wins over it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<AutoscaleSpec>,
}

/// Adds workers while lag keeps growing past a threshold, and removes them one at a time
/// once lag has stayed below it for a stabilization window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscaleSpec {
    /// Records of lag above which growing lag adds workers.
    #[schemars(range(min = 0))]
    pub lag_threshold: i64,
    /// Observations in a row the lag must grow, past the threshold, before workers are added.
    #[serde(default = "default_growing_observations")]
    #[schemars(range(min = 1, max = 100))]
    pub growing_observations: u32,
    /// How long lag must stay at or below the threshold (and since the last change) before a
    /// worker is removed.
    #[serde(default = "default_stabilization_window")]
    pub stabilization_window: Duration,
}

fn default_growing_observations() -> u32 {
    3
}
fn default_stabilization_window() -> Duration {
    Duration::from_secs(300)
}

impl Default for WorkersSpec {
    fn default() -> Self {
        Self {
            partitions_per_worker: default_partitions_per_worker(),
            min: default_min(),
            max: default_max(),
            replicas: None,
            autoscale: None,
        }
    }
}

fn default_partitions_per_worker() -> u32 {
    4
}
fn default_min() -> u32 {
    1
}
fn default_max() -> u32 {
    16
}

/// When a job that keeps failing is stopped instead of restarted again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestartPolicySpec {
    /// Worker restarts tolerated within `window` before the job is marked Failed.
    #[serde(default = "default_max_restarts")]
    #[schemars(range(max = 10000))]
    pub max_restarts: u32,
    #[serde(default = "default_restart_window")]
    pub window: Duration,
    /// First wait before a failed job is started again; doubles up to `maxBackoff`.
    #[serde(default = "default_restart_backoff")]
    pub backoff: Duration,
    #[serde(default = "default_max_restart_backoff")]
    pub max_backoff: Duration,
}

impl Default for RestartPolicySpec {
    fn default() -> Self {
        Self {
            max_restarts: default_max_restarts(),
            window: default_restart_window(),
            backoff: default_restart_backoff(),
            max_backoff: default_max_restart_backoff(),
        }
    }
}

fn default_max_restarts() -> u32 {
    5
}
fn default_restart_window() -> Duration {
    Duration::from_secs(600)
}
fn default_restart_backoff() -> Duration {
    Duration::from_secs(10)
}
fn default_max_restart_backoff() -> Duration {
    Duration::from_secs(300)
}

/// The pod settings a job may change. A closed list: everything else (security context,
/// probes, volumes) is Weir's, so a job cannot weaken the workers' guarantees.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplateOverrides {
    /// Extra pod labels; Weir's own selector labels win on conflict.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Needed only for workload identity to reach Kafka; the token is not mounted otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub service_account_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub priority_class_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub image_pull_secrets: Vec<LocalObjectReference>,
}

/// What the operator last saw of the job.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamingJobStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default)]
    pub workers: WorkersStatus,
    /// Worker pods that exist, ready or not (the StatefulSet's `status.replicas`): what
    /// `/scale` reports as the current count, so an autoscaler counts Pending pods too.
    /// The ready ones are `workers.ready`.
    // Always written (0 included): the status is a merge patch, and a left-out field stays.
    #[serde(default)]
    pub replicas: u32,
    /// Label selector of the worker pods, for the `/scale` subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Ready, Progressing, Stalled, Degraded, OffsetsOutOfRange (a committed offset outside
    /// its partition's log) and OffsetsAtRisk: True when, on some partition, records wait,
    /// retention has deleted records before (the log start is past 0), the job's position is
    /// inside the log, and fewer than 10% of the records the partition retains lie between the
    /// log start and the job's next unread record; the message gives each such partition's
    /// margin in records and in time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// When the operator last read the job's Kafka offsets and asked its workers: how old the
    /// figures in this status are. Far behind the observation period, the operator is
    /// overloaded (or stopped); `weir_job_observed_timestamp_seconds` says the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_at: Option<Time>,
    /// Input partitions over all topics, as last read from the brokers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_partitions: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<LagStatus>,
    /// Batches whose time has come but that have not run yet, summed over workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_lag: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_batch: Option<LastBatchStatus>,
    /// Event time, for a job with a watermark: the least of the workers' watermarks.
    // Null, not left out, when cleared (the job no longer has a watermark): a merge patch.
    #[serde(default)]
    pub event_time: Option<EventTimeStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offsets: Option<OffsetsStatus>,
    /// Worker ordinals whose `/progress` did not answer at the last observation.
    // Null when all answered, like observeError.
    #[serde(default)]
    #[schemars(length(max = 1000))]
    pub unreachable_workers: Option<Vec<u32>>,
    /// Why the last observation of Kafka failed; the numbers above are then the last known.
    // Serialized as null when cleared (no skip_serializing_if), so the merge patch removes it.
    #[serde(default)]
    pub observe_error: Option<String>,
    /// Worker restarts seen over the job's life: crashes Kubernetes restarted, and stalled
    /// workers the operator restarted.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub restarts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<LastFailureStatus>,
    /// Restarts counted against `restartPolicy.maxRestarts`; null again after a window
    /// without restarts.
    // Null, not left out, when cleared: the status is written with a merge patch.
    #[serde(default)]
    pub restart_budget: Option<RestartBudgetStatus>,
    /// Set when the restart budget was spent: the workers stay at zero (their offsets kept)
    /// until the spec changes or the `weir.dev/restart` annotation gets a new value.
    #[serde(default)]
    pub stopped: Option<StoppedStatus>,
    /// Each restarted worker pod's restart count as last seen, so a restart counts once:
    /// `worker/pod/count`, the pod named by the start of its uid (a recreated pod counts
    /// from zero again). Terse, so a thousand workers keep the object small.
    #[serde(default)]
    #[schemars(length(max = 1000))]
    pub seen_restarts: Vec<String>,
    /// The autoscaler's last decision and its inputs; null when autoscaling is off.
    #[serde(default)]
    pub autoscale: Option<AutoscaleStatus>,
    /// The last rewind done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewind: Option<RewindStatus>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscaleStatus {
    /// The workers the autoscaler asks for.
    pub workers: u32,
    /// The decision in words, with its inputs.
    pub reason: String,
    /// The partition-derived count it never goes below, and the cap it never exceeds.
    pub floor: u32,
    pub ceiling: u32,
    /// Lag at the last observation, if Kafka could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    /// Observations in a row the lag grew past the threshold.
    pub growing: u32,
    /// Since when lag has stayed at or below the threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calm_since: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_change: Option<Time>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RewindStatus {
    /// The `spec.rewind.id` it was done for.
    pub id: String,
    /// When the offsets were set.
    pub time: Time,
    /// The offsets committed, capped by topic and partition number.
    #[schemars(length(max = 20))]
    pub offsets: Vec<ResumedOffset>,
    /// Partitions set but not listed because of the cap.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub omitted: u32,
    /// The target it was done for, in words (e.g. `toEarliest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Offsets asked for past the end of their partition, which were set to the end instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capped: Option<String>,
    /// Set when `spec.rewind` names a different target under the id already done: it is not
    /// run again until the id changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignored: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The most recent worker failure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastFailureStatus {
    /// When the failed run ended (its container's finishedAt), or when the operator deleted
    /// a stalled worker's pod.
    pub time: Time,
    pub worker: u32,
    /// The container's termination message (what the worker wrote to /dev/termination-log,
    /// else the end of its log), or why the operator restarted it.
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Where the worker's next run says it resumed (its `/progress`), by topic and partition
    /// number, capped; empty until that run has said so. The group's committed offsets are
    /// not used: they move on with the new run's first commit.
    #[schemars(length(max = 20))]
    pub resumed_from: Vec<ResumedOffset>,
    /// Partitions of the worker not listed because of the cap.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub resumed_from_omitted: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResumedOffset {
    pub topic: String,
    pub partition: i32,
    /// Absent when the job has not committed the partition yet (it starts per
    /// startingOffsets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestartBudgetStatus {
    /// Start of the current `restartPolicy.window`.
    pub window_start: Time,
    /// Restarts since `windowStart`.
    pub used: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StoppedStatus {
    pub time: Time,
    pub reason: String,
    /// The `metadata.generation` that was stopped; a new one starts the job again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// The `weir.dev/restart` annotation's value when stopped; another value starts the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_annotation: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    Pending,
    Running,
    Rescaling,
    Degraded,
    Suspended,
    Failed,
}

impl Phase {
    /// The phase as `status.phase` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Running => "Running",
            Self::Rescaling => "Rescaling",
            Self::Degraded => "Degraded",
            Self::Suspended => "Suspended",
            Self::Failed => "Failed",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkersStatus {
    pub desired: u32,
    pub ready: u32,
    /// Why `desired` has its value, e.g. "12 partitions / 4 per worker".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LagStatus {
    /// End offsets minus the job's committed offsets, summed over partitions.
    pub records: i64,
    /// The lag of the laggiest partition.
    pub max_partition: i64,
    /// How far behind the head the job is in time, in seconds: over the partitions with
    /// records waiting, the most by which the next unread record's timestamp (the record at
    /// the committed offset) is older than the observation. 0 when no records wait. Null when
    /// a waiting partition's next record could not be read within the observation's bound
    /// (one record per partition, a short wait): never a made-up 0.
    // Null, not left out, when unknown: the status is written with a merge patch.
    #[serde(default)]
    pub seconds: Option<i64>,
}

/// The job's most recent batch: the workers' batches of the latest batch time together.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastBatchStatus {
    /// The batch time, RFC 3339.
    pub time: String,
    pub records: u64,
    /// The slowest worker's processing time.
    pub processing_millis: u64,
    /// The longest wait of a worker between the batch time and the batch's start.
    pub scheduling_delay_millis: u64,
}

/// The job's event-time watermark as the workers last reported it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventTimeStatus {
    /// RFC 3339: event-time windows ending at or before it (plus their allowed lateness) are
    /// closed and written.
    pub watermark: String,
    /// Seconds between the observation and the watermark: how far results lag behind now.
    pub lag_seconds: i64,
}

/// Per-partition offsets, laggiest first, capped so the object stays small.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OffsetsStatus {
    // crate::lag::MAX_ROWS; the API server refuses more, whatever an operator build writes.
    #[schemars(length(max = 200))]
    pub partitions: Vec<PartitionOffsetStatus>,
    /// Partitions not listed because of the cap.
    pub omitted: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PartitionOffsetStatus {
    pub topic: String,
    pub partition: i32,
    /// The group's committed offset; absent when the job has not committed one yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed: Option<i64>,
    /// The end of the log (high watermark).
    pub end: i64,
    pub lag: i64,
}

/// The `format`s the API server recognises in a CRD's schema (apiextensions-apiserver's
/// supported formats plus OpenAPI's numeric ones); any other makes it warn on every create and
/// update of the CRD and of each object.
pub const KNOWN_FORMATS: &[&str] = &[
    "int32",
    "int64",
    "float",
    "double",
    "byte",
    "binary",
    "date",
    "date-time",
    "datetime",
    "duration",
    "password",
    "bsonobjectid",
    "uri",
    "email",
    "hostname",
    "ipv4",
    "ipv6",
    "cidr",
    "mac",
    "uuid",
    "uuid3",
    "uuid4",
    "uuid5",
    "isbn",
    "isbn10",
    "isbn13",
    "creditcard",
    "ssn",
    "hexcolor",
    "rgbcolor",
];

/// The CRD as the API server gets it: the generated one with schemars' unsigned formats
/// rewritten (see [`kubernetes_formats`]).
pub fn definition() -> CustomResourceDefinition {
    let crd = <StreamingJob as kube::CustomResourceExt>::crd();
    let mut value = match serde_json::to_value(&crd) {
        Ok(v) => v,
        Err(_) => return crd,
    };
    kubernetes_formats(&mut value);
    serde_json::from_value(value).unwrap_or(crd)
}

/// Rewrites schemars' `uint8`..`uint64` (Rust's unsigned types) as the signed formats
/// Kubernetes knows, with the bounds that made them unsigned: `minimum: 0`, and for types
/// narrower than 64 bits the type's own maximum unless a tighter one is set. A u32 becomes
/// int64, since int32 could not hold its upper half.
pub fn kubernetes_formats(schema: &mut serde_json::Value) {
    use serde_json::Value;
    match schema {
        Value::Object(map) => {
            let unsigned = match map.get("format").and_then(Value::as_str) {
                Some("uint8") => Some(("int32", Some(u64::from(u8::MAX)))),
                Some("uint16") => Some(("int32", Some(u64::from(u16::MAX)))),
                Some("uint32") => Some(("int64", Some(u64::from(u32::MAX)))),
                Some("uint64" | "uint") => Some(("int64", None)),
                _ => None,
            };
            if let Some((format, max)) = unsigned {
                map.insert("format".into(), format.into());
                let min = map.get("minimum").and_then(Value::as_f64).unwrap_or(0.0);
                map.insert("minimum".into(), min.max(0.0).into());
                if let Some(max) = max {
                    // Exact as f64: every bound here is below 2^53.
                    #[allow(clippy::cast_precision_loss)]
                    let max = max as f64;
                    let set = map.get("maximum").and_then(Value::as_f64).unwrap_or(max);
                    map.insert("maximum".into(), set.min(max).into());
                }
            }
            map.values_mut().for_each(kubernetes_formats);
        }
        Value::Array(items) => items.iter_mut().for_each(kubernetes_formats),
        _ => {}
    }
}

/// Every `format` in `schema` the API server does not recognise, with its JSON path.
pub fn unknown_formats(schema: &serde_json::Value) -> Vec<String> {
    fn walk(v: &serde_json::Value, at: &str, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                if let Some(f) = map.get("format").and_then(serde_json::Value::as_str) {
                    if !KNOWN_FORMATS.contains(&f) {
                        out.push(format!("{at}: {f}"));
                    }
                }
                for (k, v) in map {
                    walk(v, &format!("{at}.{k}"), out);
                }
            }
            serde_json::Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    walk(v, &format!("{at}[{i}]"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(schema, "", &mut out);
    out
}
