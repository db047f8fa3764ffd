//! The bounds both binaries apply: the worker where it reads records and keeps windows, the
//! spec's validation (run by the worker and the operator) where it refuses a job at load.

/// Largest record value decoded; bigger ones go to the dead-letter path with this reason.
pub const MAX_RECORD_BYTES: usize = 8 << 20;
/// Deepest JSON nesting decoded.
pub const MAX_JSON_DEPTH: usize = 64;

/// Longest window in batches: the ring is allocated up front, so a typo cannot take the memory.
pub const MAX_WINDOW_BATCHES: i64 = 100_000;
