//! Stream-table joins: each record looks up a row of a table by a key (Kafka Streams'
//! KStream-GlobalKTable join; Spark Streaming's `transform` with a reference RDD).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Duration, Expr};

/// A join of each record with a table row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JoinSpec {
    pub table: TableSpec,
    /// CEL: the record's side of the join, compared with the table's keys as text (a number
    /// as its digits). Default: the record's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub on: Option<Expr>,
    /// `inner` (the default) drops a record with no row; `left` keeps it with `table` null.
    #[serde(default, skip_serializing_if = "is_inner")]
    pub kind: JoinKind,
}

fn is_inner(k: &JoinKind) -> bool {
    *k == JoinKind::Inner
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum JoinKind {
    #[default]
    Inner,
    Left,
}

/// Where a table's rows come from: exactly one of `topic` and `file`. Every worker holds the
/// whole table in memory (a global table): keep it to reference data.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TableSpec {
    /// A (compacted) Kafka topic: a record's key is a row's key, its JSON value the row, and a
    /// tombstone (no value) deletes the row. Read from the start before the first batch and
    /// followed before every batch; a record sees the row as of its own time (its event time,
    /// else its Kafka timestamp): the table's latest version at or before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 249))]
    pub topic: Option<String>,
    /// With `topic`: its brokers, when not the source's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_servers: Option<String>,
    /// With `topic`: how far behind the newest record looked up a record may be and still see
    /// the row of its own time; an older record sees the row as of that bound (older versions
    /// are let go). Default 1h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<Duration>,
    /// A file of rows (a mounted ConfigMap key): a JSON object of key to row, a JSON array of
    /// keys, or text with one key per line (`#` comments); a key of an array or a text file has
    /// the row `true`. Reread before a batch when it changed; a change that does not parse is
    /// logged and the table kept as it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub file: Option<String>,
    /// A key of a ConfigMap in the job's namespace, read as `file` is: the operator mounts the
    /// ConfigMap into the workers (at `/etc/weir/tables/<name>`), and the kubelet swaps in a
    /// changed ConfigMap within a minute or so, which the workers then reread. Outside
    /// Kubernetes the worker reads `$WEIR_TABLES_DIR/<name>/<key>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapKey>,
    /// With `topic`: each worker holds only the table's partitions that match its own (Kafka
    /// Streams' KTable; without it every worker holds the whole table, a GlobalKTable). The
    /// records are first shuffled to the table's partitioning: by the join key (`on`), hashed
    /// as the table's producers hash keys (`partitioner`), through a repartition topic with
    /// the table's partition count; a record still sees the row as of its own time.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partitioned: bool,
    /// With `partitioned`: how the table's producers chose a key's partition. `murmur2` (the
    /// default: Java clients, Kafka Streams, Kafka Connect; librdkafka's `murmur2_random`) or
    /// `crc32` (librdkafka's default, `consistent_random`). A worker checks every row it
    /// reads against it and stops, naming the row, on one in another partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitioner: Option<Partitioner>,
}

/// How a producer picks the partition of a record with a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Partitioner {
    /// murmur2 of the key's bytes, made positive, modulo the partition count.
    #[default]
    Murmur2,
    /// CRC-32 of the key's bytes modulo the partition count.
    Crc32,
}

impl std::fmt::Display for Partitioner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Partitioner::Murmur2 => "murmur2",
            Partitioner::Crc32 => "crc32",
        })
    }
}

/// A shuffle to a partitioned join table's partitioning (set by the worker between stages,
/// never in a spec): each record goes to the partition the table keeps its join key in.
#[derive(Clone, Debug, PartialEq)]
pub struct PartitionBy {
    /// The join key over the record's key and value; `None`: the key.
    pub on: Option<Expr>,
    pub partitioner: Partitioner,
    /// The table's topic (whose partition count the repartition topic takes) and brokers.
    pub table: String,
    pub bootstrap_servers: Option<String>,
}

/// One key of a ConfigMap.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapKey {
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

impl ConfigMapKey {
    /// Where a worker reads the key: under the directory the operator mounts ConfigMaps at.
    pub fn path(&self) -> std::path::PathBuf {
        let dir = std::env::var_os(crate::env::TABLES_DIR_ENV)
            .unwrap_or_else(|| crate::env::TABLES_DIR.into());
        std::path::Path::new(&dir).join(&self.name).join(&self.key)
    }
}

impl JoinSpec {
    /// The shuffle a partitioned table needs before the join; `None` for a global table.
    pub fn partition_by(&self) -> Option<PartitionBy> {
        let t = &self.table;
        Some(PartitionBy {
            on: self.on.clone(),
            partitioner: t.partitioner.unwrap_or_default(),
            table: t.topic.clone().filter(|_| t.partitioned)?,
            bootstrap_servers: t.bootstrap_servers.clone(),
        })
    }
}

impl TableSpec {
    /// The file a file or ConfigMap table is read from.
    pub fn file_path(&self) -> Option<std::path::PathBuf> {
        match (&self.file, &self.config_map) {
            (Some(f), _) => Some(f.into()),
            (None, c) => c.as_ref().map(ConfigMapKey::path),
        }
    }
}

/// A join of two streams in event time within a bound (Flink's interval join, Kafka Streams'
/// windowed join): a left record at time t meets every right record of its key with a time
/// from t - `before` to t + `after`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IntervalJoinSpec {
    /// CEL over the record's value: true for the left side, false for the right. It runs
    /// behind the shuffle that brings the two streams' keys together, where `topic` names
    /// the repartition topic: tell the sides apart by the value (`has(value.clickId)`), or
    /// tag them with a select before the keyBy.
    #[schemars(length(min = 1, max = 4096))]
    pub left: Expr,
    /// How long before a left record a right one may be. Default 0s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Duration>,
    /// How long after a left record a right one may be. Default 0s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Duration>,
    /// `inner` (the default): the pairs; `left`: also each left record that met none, with
    /// `right` null, once the watermark passes its bound; `outer`: and each such right record.
    #[serde(default, skip_serializing_if = "is_inner_interval")]
    pub kind: IntervalJoinKind,
    /// A record behind the watermark by more than its bound: `drop` (the default, counted) or
    /// `deadLetter` (with the reason; needs `deadLetter`).
    #[serde(default, skip_serializing_if = "is_drop")]
    pub late: super::LatePolicy,
}

fn is_inner_interval(k: &IntervalJoinKind) -> bool {
    *k == IntervalJoinKind::Inner
}

fn is_drop(p: &super::LatePolicy) -> bool {
    *p == super::LatePolicy::Drop
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum IntervalJoinKind {
    #[default]
    Inner,
    Left,
    Outer,
}
