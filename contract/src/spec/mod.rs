//! The job spec: what a user writes, in the worker's YAML file and inside a `StreamingJob`.
//!
//! One set of types feeds serde (both the file and the CRD), schemars (the CRD schema) and
//! validation. Every field has a safe default where one exists; fields that select a kind of
//! thing (a pipeline step; `sink`, which may set several) are structs of optional members
//! (a step sets exactly one), because that is the shape Kubernetes structural schemas and
//! `kubectl explain` handle well.

mod avro;
mod duration;
mod join;
mod load;
mod sql;
mod time;
mod validate;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use avro::{AvroKeySpec, AvroSpec, ProtobufSpec, RegistrySpec, SchemaFile};
pub use duration::{Duration, DurationError, DURATION_PATTERN};
pub use join::{
    ConfigMapKey, IntervalJoinKind, IntervalJoinSpec, JoinKind, JoinSpec, PartitionBy, Partitioner,
    TableSpec,
};
pub use load::{load_job_file, parse_job, JobFile, LoadError, KUBERNETES_ONLY_FIELDS};
pub use time::{EmitMode, LatePolicy, WatermarkSpec, WindowTime, MAX_WINDOWS_PER_RECORD};
pub use validate::{FieldError, ValidationErrors, SECRET_PROPERTIES};

/// A streaming job: where records come from, what happens to them, where results go.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobSpec {
    /// How often a batch is planned, e.g. "5s". Window lengths and slides are multiples of it.
    pub batch_interval: Duration,
    pub source: SourceSpec,
    /// Steps applied in order to each partition's records.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub pipeline: Vec<StepSpec>,
    pub sink: SinkSpec,
    /// Where records that cannot be decoded or processed go. Without it they are counted,
    /// logged and skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<DeadLetterSpec>,
    /// Keyed-state settings: local snapshots and explicit state resets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointSpec>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceSpec {
    pub kafka: KafkaSource,
    /// How record values are decoded.
    #[serde(default)]
    pub format: Format,
    /// Each record's event time, for windows with `time: event`: a CEL expression over the
    /// record giving milliseconds since the epoch or an RFC 3339 timestamp (`value.ts`,
    /// `timestamp(value.ts)`, `int(value.epochSeconds) * 1000`). Default: the Kafka record's
    /// timestamp. A record whose time cannot be computed is a dead letter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub event_time: Option<Expr>,
    /// The out-of-orderness bound that closes event-time windows; needed by them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<WatermarkSpec>,
    /// With `format: avro`: the schema and the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avro: Option<AvroSpec>,
    /// With `format: protobuf`: the schema and the message type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protobuf: Option<ProtobufSpec>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSource {
    /// Comma-separated host:port list.
    #[schemars(length(min = 1, max = 2048))]
    pub bootstrap_servers: String,
    /// Input topics; several topics are read as one stream (a union).
    #[schemars(length(min = 1, max = 64))]
    pub topics: Vec<String>,
    /// "earliest", "latest", or an RFC 3339 timestamp. Used for partitions the job has no
    /// committed offset for.
    #[serde(default)]
    pub starting_offsets: StartingOffsets,
    /// Where given partitions start when the job's group has no offset for them (instead of
    /// startingOffsets). A committed offset always wins, so a restart never rewinds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub specific_offsets: Vec<PartitionOffset>,
    /// Records per second per partition; a batch reads at most this times the batch interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_rate_per_partition: Option<u64>,
    #[serde(default)]
    pub backpressure: BackpressureSpec,
    #[serde(default)]
    pub retries: RetrySpec,
    /// Threads (each with its own consumer) that read the worker's partitions. Default: one
    /// per core, never more than the worker's partitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub read_threads: Option<u32>,
    /// Bytes of records read past a partition's batch range that a reading thread keeps for
    /// the next batch (also bounded by the batch budget); past it, it drops them and seeks
    /// back. Default: 1 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_ahead_bytes: Option<u64>,
    /// What to do when a partition's position is outside its log: below the log start
    /// (retention deleted records the job has not read) or past the log end (the topic was
    /// recreated, or a broker came back without its data). `fail` (the default) stops the
    /// worker with the numbers and the fix; `earliest` or `latest` moves to that end of the
    /// log and says how many records were skipped.
    #[serde(default)]
    pub offset_out_of_range: OutOfRangePolicy,
    /// Consumer group that holds the job's offsets. Default: `weir.<namespace>.<job>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// Name of a Secret with the client's SASL/TLS settings (keys: security.protocol,
    /// sasl.mechanism, sasl.username, sasl.password, ca.crt, tls.crt, tls.key, ...), which the
    /// operator mounts into the workers. Outside Kubernetes the worker reads the same keys from
    /// --kafka-credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$")
    )]
    pub credentials_secret: Option<String>,
    /// Extra librdkafka client settings (never credentials: those come from the secret).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 128, "x-kubernetes-validations" = [{
        "rule": "!self.exists(k, k in ['sasl.password', 'sasl.username', 'ssl.key.password', 'ssl.key.pem', 'ssl.keystore.password', 'sasl.oauthbearer.client.secret', 'sasl.oauthbearer.config'])",
        "message": "properties may not hold credentials (sasl.username, sasl.password, ssl.key.*, ...): put them in the Secret named by credentialsSecret"
    }]))]
    pub properties: BTreeMap<String, String>,
    /// The credentials themselves, read at startup from the mounted Secret (or a local
    /// directory or env file): never written in, or serialized with, a spec.
    #[serde(skip)]
    #[schemars(skip)]
    pub credentials: crate::credentials::Credentials,
}

/// What a worker does with a position outside its partition's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OutOfRangePolicy {
    /// Stop with an error that names the partition, the offsets and the fix.
    #[default]
    Fail,
    /// Go on from the log start.
    Earliest,
    /// Go on from the log end.
    Latest,
}

/// Where a partition without a committed offset starts.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum StartingOffsets {
    Earliest,
    #[default]
    Latest,
    /// The first offset whose record timestamp is at or after this time.
    Timestamp(chrono::DateTime<chrono::Utc>),
}

impl std::fmt::Display for StartingOffsets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Earliest => f.write_str("earliest"),
            Self::Latest => f.write_str("latest"),
            Self::Timestamp(t) => {
                f.write_str(&t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
            }
        }
    }
}

impl std::str::FromStr for StartingOffsets {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "earliest" => Ok(Self::Earliest),
            "latest" => Ok(Self::Latest),
            other => chrono::DateTime::parse_from_rfc3339(other)
                .map(|t| Self::Timestamp(t.with_timezone(&chrono::Utc)))
                .map_err(|_| {
                    format!("startingOffsets {other:?} is not \"earliest\", \"latest\" or an RFC 3339 timestamp such as \"2026-11-01T00:00:00Z\"")
                }),
        }
    }
}

impl Serialize for StartingOffsets {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for StartingOffsets {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for StartingOffsets {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "StartingOffsets".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "maxLength": 64,
            "default": "latest",
            "description": "\"earliest\", \"latest\", or an RFC 3339 timestamp.",
            "x-kubernetes-validations": [{
                "rule": "self == 'earliest' || self == 'latest' || self.matches('^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\\\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$')",
                "message": "startingOffsets must be \"earliest\", \"latest\" or an RFC 3339 timestamp such as 2026-11-01T00:00:00Z"
            }]
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PartitionOffset {
    pub topic: String,
    #[schemars(range(min = 0))]
    pub partition: i32,
    #[schemars(range(min = 0))]
    pub offset: i64,
}

/// Spark's PID rate estimator: the rate follows what the job managed to process.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackpressureSpec {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Records per second per partition before the first estimate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub initial_rate: Option<u64>,
    /// The estimator never goes below this rate (records/s per partition).
    #[serde(default = "default_min_rate")]
    #[schemars(range(min = 1))]
    pub min_rate: u64,
}

impl Default for BackpressureSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            initial_rate: None,
            min_rate: default_min_rate(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetrySpec {
    /// Attempts after the first for a failing broker call, before the worker gives up.
    #[serde(default = "default_max_retries")]
    #[schemars(range(max = 100))]
    pub max_retries: u32,
    /// First wait between attempts; it doubles each time, up to 30 times this.
    #[serde(default = "default_backoff")]
    pub backoff: Duration,
}

impl RetrySpec {
    /// The waits between attempts: `backoff`, doubling each time up to 30 times it, one per
    /// retry allowed.
    pub fn waits(&self) -> impl Iterator<Item = std::time::Duration> {
        let first = self.backoff.as_std();
        let cap = first.saturating_mul(30);
        std::iter::successors(Some(first), move |w| Some(w.saturating_mul(2).min(cap)))
            .take(self.max_retries as usize)
    }

    /// The longest a worker retries one broker call before it gives up and exits, when each
    /// attempt takes `attempt` (its request timeout): the operator waits this long for a worker
    /// that does not answer before it calls it stalled.
    pub fn give_up_within(&self, attempt: std::time::Duration) -> std::time::Duration {
        let waits = self.waits().fold(
            std::time::Duration::ZERO,
            std::time::Duration::saturating_add,
        );
        attempt
            .saturating_mul(self.max_retries.saturating_add(1))
            .saturating_add(waits)
    }
}

impl Default for RetrySpec {
    fn default() -> Self {
        Self {
            max_retries: default_max_retries(),
            backoff: default_backoff(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Format {
    /// A JSON document per record; `value` is the parsed document.
    #[default]
    Json,
    /// UTF-8 text; `value` is a string.
    Text,
    /// Raw bytes; `value` is bytes.
    Bytes,
    /// Avro (`source.avro`: a schema, or the Confluent wire format with a Schema Registry);
    /// `value` is the decoded record, with its types (records and maps as objects, longs and
    /// timestamps as integers).
    Avro,
    /// Protobuf messages of one type (`source.protobuf`); `value` is the message with every
    /// field (unset scalars at their defaults, unset messages null), enums as their names.
    Protobuf,
    /// The worker's own encoding of keys and values between the stages of a job (a
    /// repartition topic); set by the worker, never in a spec.
    #[serde(skip)]
    Shuffle,
}

/// One pipeline step: an id and exactly one operation.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepSpec {
    /// Stable name of the step; keyed state is stored under it, so keep it when editing.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub id: String,
    /// CEL boolean: keep the record when true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub filter: Option<Expr>,
    /// CEL expression whose result becomes the record's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub map: Option<Expr>,
    /// Computed fields: the new value is an object with one field per entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 64, "additionalProperties" = {"type": "string", "maxLength": 4096}))]
    pub select: Option<BTreeMap<String, Expr>>,
    /// CEL list expression: one output record per element, seen as `item`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub flat_map: Option<Expr>,
    /// CEL expression whose result becomes the record's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub key_by: Option<Expr>,
    /// Per-key aggregation of each batch (or of each window, with `window`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate: Option<AggregateSpec>,
    /// Windowing for `aggregate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowSpec>,
    /// Per-key state updated every batch (mapWithState).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<StateStepSpec>,
    /// Join each record with a table row by a key: the row is `table` to the steps after it
    /// (within the stage: select what a later stage needs into the value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<JoinSpec>,
    /// Join this stream's two sides in event time within a bound, per key: each pair as
    /// `{"left": value, "right": value}`, keyed by the key. Needs `source.watermark`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_join: Option<IntervalJoinSpec>,
    /// A SQL query over the records that reach the step (`FROM input`), compiled when the job
    /// loads to the steps above: WHERE a filter, GROUP BY a keyBy and an aggregate (windowed by
    /// `TUMBLE`, `HOP` or `SESSION` over event time), HAVING a filter, the select list a select.
    /// Columns are the value's fields; `_key`, `_timestamp` and their kin the record's parts.
    /// `weir-worker explain` prints what it compiles to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16384))]
    pub sql: Option<String>,
    /// Re-key through a Kafka topic so that keyed steps after it see every record of a key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repartition: Option<RepartitionSpec>,
    /// On an `aggregate` or `state` step: keep a result and a state per input partition
    /// instead of one per key. Without it, the worker brings every record of a key to one
    /// place first (an automatic repartition, see the README) whenever a `keyBy` changed the
    /// key or the job reads several topics.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub per_partition: bool,
    /// On an `aggregate` step behind a shuffle (automatic or a `repartition` step just
    /// before it): whether the stage before the shuffle combines each key's records of a
    /// batch into one partial, so the shuffle carries one record per key and batch of each
    /// partition instead of every record. Default true for `count`, and for `sum`, `min`,
    /// `max` and `avg` of `key` and `value`; `false` ships every record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub combine: Option<bool>,
    /// On an `aggregate` step at the end of a stage: write one partial accumulator per key
    /// and batch for the next stage's aggregate of the same id to merge, instead of results;
    /// set by `stages::split` (combine before the shuffle), never in a spec.
    #[serde(skip)]
    #[schemars(skip)]
    pub partial: bool,
}

impl StepSpec {
    /// The operations the step sets, by their field names (a valid step sets one).
    pub fn operations(&self) -> Vec<&'static str> {
        [
            ("filter", self.filter.is_some()),
            ("map", self.map.is_some()),
            ("select", self.select.is_some()),
            ("flatMap", self.flat_map.is_some()),
            ("keyBy", self.key_by.is_some()),
            ("aggregate", self.aggregate.is_some()),
            ("state", self.state.is_some()),
            ("repartition", self.repartition.is_some()),
            ("join", self.join.is_some()),
            ("intervalJoin", self.interval_join.is_some()),
            ("sql", self.sql.is_some()),
        ]
        .into_iter()
        .filter_map(|(n, set)| set.then_some(n))
        .collect()
    }
}

/// A Kubernetes label (and step id): lower-case letters, digits and '-', 1 to 63 characters,
/// starting and ending with a letter or digit.
pub(crate) fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// A CEL expression, checked when the job loads.
pub type Expr = String;

#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AggregateSpec {
    /// Number of records per key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<Empty>,
    /// Sum of a numeric CEL expression per key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub sum: Option<Expr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub min: Option<Expr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub max: Option<Expr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub avg: Option<Expr>,
    /// reduceByKey: a CEL expression of `a` and `b` combining two values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub reduce: Option<Expr>,
    /// groupByKey: the list of a CEL expression's values per key, in record order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub collect: Option<Expr>,
}

/// An empty object, for options that take no settings (`count: {}`).
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub struct Empty {}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WindowSpec {
    /// `batch` (the default: windows of batches) or `event` (windows of the records' own
    /// time, closed by `source.watermark`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub time: WindowTime,
    /// The window's length: for batch time a multiple of the batch interval. A tumbling or
    /// sliding window has a length; a session window (event time only) has a `gap` instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<Duration>,
    /// How far apart windows start; default: the batch interval for batch time, the length for
    /// event time (tumbling windows). For event time the length is a multiple of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slide: Option<Duration>,
    /// Event time only: a session window per key, closed after this long without a record;
    /// a record within the gap of two sessions joins them into one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap: Option<Duration>,
    /// Event time only: how long after the watermark passes a window's end it still takes
    /// records (and is written). Default 0s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_lateness: Option<Duration>,
    /// Event time only: what becomes of records behind a closed window. Default: drop, counted.
    #[serde(default, skip_serializing_if = "is_default")]
    pub late: LatePolicy,
    /// Event time only: `onClose` (the default) or `everyBatch` (early updates too).
    #[serde(default, skip_serializing_if = "is_default")]
    pub emit: EmitMode,
}

fn is_default<T: Default + PartialEq>(t: &T) -> bool {
    *t == T::default()
}

#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StateStepSpec {
    /// CEL: the state of a key seen for the first time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub initial: Option<Expr>,
    /// CEL of `key`, `values` and `state`: the new state.
    #[schemars(length(max = 4096))]
    pub update: Expr,
    /// CEL of `key` and `state`: drop the key's state when true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub remove: Option<Expr>,
    /// Remove a key not seen for this long, emitting a final record for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Also emit the full state every batch (stateSnapshots).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub snapshots: bool,
}

#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RepartitionSpec {
    /// Topic to shuffle through; default `<job>-<step>-repartition`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

/// Where results go: one or more members set, and each result goes to every one. The sinks
/// that are not the job's record of offsets (stdout, files, Kafka at least once) write a batch
/// first; the one that is (Kafka exactly once, or PostgreSQL) commits it last, so a crash in
/// between repeats the batch in the others rather than losing it there. At most one sink can
/// be the record: Kafka exactly once and PostgreSQL are refused together.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SinkSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<StdoutSink>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaSink>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileSink>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresSink>,
}

/// Spark's `print()`: the first records of each batch to standard output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StdoutSink {
    /// Records shown per batch.
    #[serde(default = "default_print_limit")]
    #[schemars(range(max = 100000))]
    pub limit: u32,
}

impl Default for StdoutSink {
    fn default() -> Self {
        Self {
            limit: default_print_limit(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSink {
    #[schemars(length(min = 1, max = 249))]
    pub topic: String,
    /// Default: the source's bootstrap servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_servers: Option<String>,
    #[serde(default)]
    pub delivery: Delivery,
    /// Write values as Avro with this schema (and the registry's framing), instead of JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avro: Option<AvroSpec>,
    /// Write values as Protobuf messages of this type, instead of JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protobuf: Option<ProtobufSpec>,
    /// More outputs: each result goes to every route whose `when` holds, and to `topic` when
    /// none does. All in the same transaction under exactly-once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub routes: Vec<RouteSpec>,
    /// Write keys and values in the worker's own encoding, for the next stage of the job;
    /// set by the worker for a repartition topic, never in a spec.
    #[serde(skip)]
    #[schemars(skip)]
    pub shuffle: bool,
    /// With `shuffle`: every record is a partial of this aggregation (its name, as the spec
    /// writes it), marked so in a header; set by the worker, never in a spec.
    #[serde(skip)]
    #[schemars(skip)]
    pub partials: Option<&'static str>,
    /// With `shuffle`: each record goes to the partition a partitioned join table keeps its
    /// join key in; set by the worker, never in a spec.
    #[serde(skip)]
    #[schemars(skip)]
    pub partition_by: Option<PartitionBy>,
    /// With `shuffle`: each record carries its Kafka timestamp as its event time, for a join
    /// after the shuffle in a job without event time (a repartition record's own timestamp is
    /// when it was written); set by the worker, never in a spec.
    #[serde(skip)]
    #[schemars(skip)]
    pub keeps_time: bool,
}

/// One more output of a Kafka sink.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteSpec {
    /// CEL of `key` and `value` (the result): true to write the result to `topic`.
    #[schemars(length(min = 1, max = 4096))]
    pub when: Expr,
    #[schemars(length(min = 1, max = 249))]
    pub topic: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Delivery {
    /// Output is written, then offsets are committed: a crash may repeat a batch's output.
    #[default]
    AtLeastOnce,
    /// Output, state changes and offsets commit in one Kafka transaction per partition batch.
    ExactlyOnce,
}

/// Files named by batch time and partition, so a replayed batch overwrites its own file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FileSink {
    /// Directory the batch files go to.
    #[schemars(length(min = 1, max = 4096))]
    pub path: String,
}

/// Exactly-once into PostgreSQL: each batch's rows, keyed-state changes and source offsets
/// commit in one database transaction. The offsets go to `weir_offsets` (job, topic,
/// partition, until_offset, batch_time) and the state to `weir_state`, both created if
/// missing; `job` is the job's consumer group. A restarted worker resumes from `weir_offsets`
/// (the offsets of record) and rebuilds its state from `weir_state`; the Kafka group gets a
/// copy of the offsets after each batch, for lag tools. A replayed batch is skipped when
/// `weir_offsets` already holds it, so `insert` mode never repeats rows either.
///
/// Connection settings never appear in the spec with a password. In order: the URL in
/// `urlFile` (a mounted Secret), `url` (without a password), the worker's `WEIR_PG_URL`
/// variable, then libpq's `PGHOST`, `PGPORT`, `PGUSER`, `PGDATABASE`; `PGPASSWORD` supplies
/// the password when the URL has none. Connections are not encrypted (no TLS in this version):
/// keep the database on a trusted network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostgresSink {
    /// Table the results go to, optionally `schema.table`. Each output record is a row with a
    /// `key text` column (string keys as they are, other keys as JSON) and a `value jsonb`
    /// column. Created if missing (in upsert mode with `key` as its primary key); an existing
    /// table needs those two columns, and for upsert a unique constraint on `key`.
    #[schemars(
        length(min = 1, max = 127),
        regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")
    )]
    pub table: String,
    #[serde(default)]
    pub mode: PostgresMode,
    /// A libpq connection URL without a password, e.g. `postgresql://weir@db:5432/app`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub url: Option<String>,
    /// A file holding the connection URL, password included: a key of a mounted Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub url_file: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum PostgresMode {
    /// One row per key, holding its latest value (`INSERT ... ON CONFLICT (key) DO UPDATE`).
    /// Needs keyed output, e.g. a `keyBy` step before a `state` or `aggregate` step.
    #[default]
    Upsert,
    /// One row per output record.
    Insert,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterSpec {
    /// Topic that receives the raw record, with the error in headers.
    #[schemars(length(min = 1, max = 249))]
    pub topic: String,
}

#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointSpec {
    /// Write a local snapshot of keyed state this often; it only shortens the changelog replay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_interval: Option<Duration>,
    /// Step ids whose state is dropped on the next start, for an incompatible change.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reset_state: Vec<String>,
}

fn yes() -> bool {
    true
}
fn default_min_rate() -> u64 {
    100
}
fn default_max_retries() -> u32 {
    5
}
fn default_backoff() -> Duration {
    Duration::from_millis(500)
}
fn default_print_limit() -> u32 {
    10
}

impl JobSpec {
    /// Every ConfigMap key the job reads (join tables, Avro schemas), for the operator to
    /// mount.
    pub fn config_maps(&self) -> Vec<&ConfigMapKey> {
        let tables = self
            .pipeline
            .iter()
            .filter_map(|s| s.join.as_ref()?.table.config_map.as_ref());
        let sink = self.sink.kafka.as_ref();
        fn key(a: Option<&AvroSpec>) -> Option<&SchemaFile> {
            a?.key.as_ref()?.schema.as_ref()
        }
        let schemas = [
            self.source.avro.as_ref().and_then(|a| a.schema.as_ref()),
            sink.and_then(|k| k.avro.as_ref()?.schema.as_ref()),
            key(self.source.avro.as_ref()),
            key(sink.and_then(|k| k.avro.as_ref())),
            self.source.protobuf.as_ref().map(|p| &p.schema),
            sink.and_then(|k| k.protobuf.as_ref()).map(|p| &p.schema),
        ]
        .into_iter()
        .flatten()
        .filter_map(|s| s.config_map.as_ref());
        tables.chain(schemas).collect()
    }

    /// The consumer group that holds this job's offsets.
    pub fn group_id(&self, namespace: &str, job: &str) -> String {
        self.source
            .kafka
            .group_id
            .clone()
            .unwrap_or_else(|| format!("weir.{namespace}.{job}"))
    }
}
