//! The environment variables the operator's pod template sets and the worker reads.

/// The directory for local snapshots, on the worker's volume; without it no snapshot is
/// written or read.
pub const STATE_DIR_ENV: &str = "WEIR_STATE_DIR";

/// Where the ConfigMaps a job names (join tables, Avro schemas) are mounted, one directory
/// per ConfigMap; the worker reads `{configMap: {name, key}}` from `<dir>/<name>/<key>`.
pub const TABLES_DIR_ENV: &str = "WEIR_TABLES_DIR";

/// [`TABLES_DIR_ENV`]'s default: where the operator mounts them.
pub const TABLES_DIR: &str = "/etc/weir/tables";
