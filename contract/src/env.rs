//! The environment variables the operator's pod template sets and the worker reads.

/// The directory for local snapshots, on the worker's volume; without it no snapshot is
/// written or read.
pub const STATE_DIR_ENV: &str = "WEIR_STATE_DIR";
