//! weir-worker: the streaming engine that runs one worker of a Weir job.
//!
//! The modules follow a batch through the worker:
//! - [`spec`]: the job spec users write (also embedded in the `StreamingJob` CRD), loaded and
//!   validated once.
//! - [`expr`]: CEL expressions, checked at load and compiled to closures.

pub mod app;
pub mod client;
pub mod dead_letter;
pub mod embedded;
pub mod engine;
pub mod error;
pub mod expr;
pub mod http;
pub mod pipeline;
pub mod plan;
pub mod progress;
pub mod record;
pub mod sink;
pub mod source;
pub mod spec;
