//! weir-worker: the streaming engine that runs one worker of a Weir job.
//!
//! The modules follow a batch through the worker:
//! - [`spec`]: the job spec users write (also embedded in the `StreamingJob` CRD), loaded and
//!   validated once.
//! - [`expr`]: CEL expressions, checked at load and compiled to closures.

pub mod expr;
pub mod pipeline;
pub mod record;
pub mod spec;
