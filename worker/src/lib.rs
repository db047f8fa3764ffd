//! weir-worker: the streaming engine that runs one worker of a Weir job.
//!
//! The modules follow a batch through the worker:
//! - [`spec`]: the job spec users write (also embedded in the `StreamingJob` CRD), loaded and
//!   validated once; [`expr`]: CEL, checked at load and compiled to closures.
//! - [`source`]: this worker's partitions (ordinal i of N owns p mod N == i), where they resume,
//!   and reading offset ranges in parallel lanes; [`client`]: librdkafka settings;
//!   [`credentials`]: SASL/TLS settings from a mounted Secret, never printed.
//! - [`plan`]: PURE batch plans: ranges capped by the high watermark, the rate limit and the
//!   PID backpressure estimate, all within the batch's memory budget; [`memory`]: that budget,
//!   from the pod's memory limit or the worker's flags.
//! - [`record`]: decoding per format; [`pipeline`]: PURE steps, aggregates, windows and keyed
//!   state per partition.
//! - [`sink`]: stdout, Kafka, files; [`dead_letter`]: records that failed, with the reason.
//! - [`changelog`]: keyed state logged to a compacted topic each batch, and restored at start.
//! - [`engine`]: the batch loop (plan, read, run, write, log state, commit offsets last).
//! - [`progress`]: BatchInfo, metrics; [`http`]: `/progress`, `/healthz`, `/metrics`.
//! - [`app`]: `weir-worker run` wiring and signals; [`shutdown`]: waits that SIGTERM ends; [`embedded`]: the in-process mock cluster.
//! - [`stages`]: a job with `repartition` steps runs as stages joined by Kafka topics;
//!   [`topics`]: the changelog and repartition topics workers create.
//! - [`error`]: errors classified retriable, abortable (replay the batch) or fatal.

pub mod app;
pub mod batch;
pub mod changelog;
pub mod client;
pub mod dead_letter;
pub mod embedded;
pub mod engine;
pub mod error;
pub mod http;
pub mod memory;
pub mod pipeline;
pub mod plan;
pub mod producer;
pub mod progress;
pub mod record;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod stages;
pub mod topics;

// The contract shared with the operator, under the paths the engine has always used.
pub use weir_contract::{credentials, expr, limits, spec, value};
