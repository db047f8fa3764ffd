//! weir-worker: the streaming engine that runs one worker of a Weir job.
//!
//! What the worker shares with the operator (the job spec and its validation, CEL and its
//! values, client settings and credentials, stage naming) is the `weir-contract` crate,
//! re-exported here under the paths the engine uses ([`spec`], [`expr`], [`value`],
//! [`credentials`], [`limits`]). The modules follow a batch through the worker:
//! - `source`: this worker's partitions (ordinal i of N owns p mod N == i), where they resume,
//!   and reading offset ranges in parallel lanes; [`client`]: librdkafka settings (and the
//!   check `validate` runs with them).
//! - [`plan`]: PURE batch plans: ranges capped by the high watermark, the rate limit and the
//!   PID backpressure estimate, all within the batch's memory budget; [`memory`]: that budget,
//!   from the pod's memory limit or the worker's flags.
//! - [`record`]: decoding per format; [`pipeline`]: PURE steps, aggregates, windows and keyed
//!   state per partition.
//! - [`batch`]: a batch's results (outputs, state changes, dead letters per partition).
//! - [`sink`]: stdout, Kafka, files, PostgreSQL; [`dead_letter`]: records that failed, with the
//!   reason; [`changelog`]: keyed state logged to a compacted topic each batch, and restored at
//!   start; `producer`: the Kafka writer all of them produce with.
//! - `commit`: the commit step, one order per delivery mode (offsets last, or inside the
//!   transaction).
//! - [`engine`]: the batch loop (plan, read and run, finish, commit, progress);
//!   `watermark`: a stage's event-time watermark over its partitions.
//! - [`progress`]: BatchInfo, metrics; [`http`]: `/progress`, `/healthz`, `/metrics`.
//! - [`app`]: `weir-worker run` wiring and signals; `shutdown`: waits that SIGTERM ends;
//!   [`embedded`]: the in-process mock cluster.
//! - [`stages`]: a job with `repartition` steps runs as stages joined by Kafka topics;
//!   `topics`: the changelog and repartition topics workers create; [`partitioner`]: the
//!   Kafka clients' key hashes, for shuffles to a partitioned join table's partitioning.
//! - [`error`]: errors classified retriable, abortable (replay the batch) or fatal.
//!
//! The engine's API is re-exported at the root: [`Engine`] with its [`Options`], the stages
//! that run a job ([`stages::connect`], [`stages::run`]), [`Progress`] and the errors.

pub mod app;
pub mod avro;
pub mod batch;
pub mod changelog;
pub mod client;
mod commit;
pub mod dead_letter;
pub mod embedded;
pub mod engine;
pub mod error;
pub mod explain;
pub mod http;
pub mod memory;
pub mod partitioner;
pub mod pipeline;
pub mod plan;
mod producer;
pub mod progress;
pub mod protobuf;
pub mod record;
pub mod registry;
mod shutdown;
pub mod sink;
mod source;
pub mod stages;
mod table;
mod topics;
mod watermark;

// The contract shared with the operator, under the paths the engine has always used.
pub use weir_contract::{credentials, expr, limits, spec, value};

// The engine's API: what the binary, the embedded cluster and the tests run a job with.
pub use app::RunConfig;
pub use client::Identity;
pub use engine::{Engine, Options};
pub use error::{Class, Error, Result};
pub use memory::Budget;
pub use progress::{Progress, Snapshot};
pub use sink::Sink;
pub use spec::{JobFile, JobSpec};
