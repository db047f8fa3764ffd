//! weir-contract: what the worker and the operator share, so that the operator depends on
//! this and not on the engine (no PostgreSQL client, no pipeline, no sinks in the operator).
//!
//! The modules, from what a user writes to what a worker reports:
//! - [`spec`]: the job spec users write (the worker's file and the `StreamingJob` CRD's
//!   pipeline), loaded and validated once; [`expr`]: CEL, checked at load and compiled to
//!   closures; [`value`]: the values records and expressions carry, and their byte codec;
//!   [`limits`]: the bounds validation and the worker both apply.
//! - [`stages`]: how a job with `repartition` steps is cut into stages, and the names of their
//!   topics and groups.
//! - [`client`]: librdkafka settings and the client context that watches the link;
//!   [`credentials`]: SASL/TLS settings from a mounted Secret, never printed; [`auth`]: a
//!   refused login or permission, and what to check.
//! - [`env`](mod@env): the environment the operator's pods give the worker; [`progress`]: the parts of
//!   a worker's `/progress` the operator reads back.

pub mod auth;
pub mod client;
pub mod credentials;
pub mod env;
pub mod expr;
pub mod limits;
pub mod progress;
pub mod spec;
pub mod stages;
pub mod value;
