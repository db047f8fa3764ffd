//! How much a batch may hold: the worker's memory limit (the pod's cgroup limit) turned into
//! a budget of bytes and records in flight, or the budget given with `--batch-bytes` and
//! `--batch-records`.
//!
//! Without a budget the first batch after an outage reads the whole backlog and holds it,
//! decoded, until its output is written: memory grew with the backlog. With one, a batch stops
//! reading where its budget is spent and the next batches read the rest, so memory follows
//! the configuration. The derivation is PURE; [`cgroup_limit`] is the only I/O.

use std::num::ParseIntError;
use std::path::Path;

use serde::Serialize;

/// What one batch may hold in flight: the bytes of its records (keys and values as read) and
/// their number. The planner keeps a batch's ranges within it; the source stops reading a
/// batch whose bytes would pass it (a single record larger than the budget is read alone).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Budget {
    pub bytes: u64,
    pub records: u64,
}

impl Budget {
    /// This budget shared by `n` stages that hold their batches at the same time.
    pub fn split(self, n: usize) -> Budget {
        let n = n.max(1) as u64;
        Budget {
            bytes: (self.bytes / n).max(1),
            records: (self.records / n).max(1),
        }
    }
}

impl Default for Budget {
    /// The budget of a worker that found no memory limit.
    fn default() -> Self {
        budget_for_limit(FALLBACK_LIMIT)
    }
}

/// The memory assumed when no cgroup limit is found (outside a container, or a pod without a
/// memory limit): the operator's default pod limit, so a worker behaves the same in a
/// default pod and on a laptop.
pub const FALLBACK_LIMIT: u64 = 512 << 20;

/// Where a cgroup v2 limit is (`max` when there is none).
const CGROUP_V2_MAX: &str = "/sys/fs/cgroup/memory.max";
/// Where a cgroup v1 limit is (a number near `i64::MAX` when there is none).
const CGROUP_V1_LIMIT: &str = "/sys/fs/cgroup/memory/memory.limit_in_bytes";

/// A cgroup v1 limit at or above this is the kernel's "no limit" (it reports `i64::MAX`
/// rounded down to a page).
const NO_LIMIT_FROM: u64 = 1 << 60;

/// The share of the memory limit that batches' records may hold, decoded, with their
/// outputs. The rest is the process's own: librdkafka's fetch and produce queues (about 100
/// MiB), keyed state, the runtime.
const BATCH_SHARE_DIVISOR: u64 = 2;

/// What one record in flight costs besides its bytes, and how much its bytes grow when it is
/// decoded and carried to the output, measured on the drain benchmark's 100-byte JSON
/// records (about 6 times their size decoded, with their output and its encoding, plus a
/// fixed cost per record): a batch's bytes take half of its share and its records the other
/// half.
const RECORD_COST: u64 = 256;
const DECODED_GROWTH: u64 = 6;

/// The smallest `--batch-bytes`: below it a batch holds a handful of records and the worker
/// spends its time planning batches.
pub const MIN_BATCH_BYTES: u64 = 64 << 10;

/// Where a worker's budget came from, for its start-up log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BudgetFrom {
    /// `--batch-bytes` / `--batch-records`.
    Flags,
    /// The cgroup's memory limit.
    Cgroup(u64),
    /// No cgroup limit: [`FALLBACK_LIMIT`].
    Fallback,
}

#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error("--batch-bytes {given:?} is not a size: write bytes or a number with Ki, Mi, Gi (or K, M, G), e.g. 64Mi")]
    Size {
        given: String,
        #[source]
        source: ParseIntError,
    },
    #[error("--batch-bytes {given:?} has an unknown unit: use Ki, Mi, Gi (or K, M, G), e.g. 64Mi")]
    Unit { given: String },
    #[error("--batch-bytes {given} is below the smallest budget, {MIN_BATCH_BYTES} bytes (64Ki): set at least 64Ki")]
    TooSmall { given: u64 },
    #[error("--batch-bytes {given} is more than half the worker's memory limit ({limit} bytes): records take several times their size once decoded, so a batch that holds that much gets the worker OOM-killed; set at most {max}, or leave it out for the default ({default}, from the limit)")]
    OverLimit {
        given: u64,
        limit: u64,
        max: u64,
        default: u64,
    },
    #[error("--batch-records must be at least 1")]
    NoRecords,
}

/// A size as Kubernetes writes memory (`64Mi`, `1Gi`, `500M`) or plain bytes.
///
/// # Errors
/// Not a number, or a unit other than Ki/Mi/Gi/Ti or K/M/G/T.
pub fn parse_size(given: &str) -> Result<u64, BudgetError> {
    let s = given.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().map_err(|source| BudgetError::Size {
        given: given.to_string(),
        source,
    })?;
    let factor: u64 = match unit.trim() {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "K" | "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        _ => {
            return Err(BudgetError::Unit {
                given: given.to_string(),
            })
        }
    };
    Ok(n.saturating_mul(factor))
}

/// A cgroup memory file's limit: `None` for "max" (v2) or the kernel's "no limit" (v1), or
/// a file that does not hold a number.
pub fn parse_limit(text: &str) -> Option<u64> {
    let t = text.trim();
    if t == "max" {
        return None;
    }
    t.parse::<u64>()
        .ok()
        .filter(|&n| n > 0 && n < NO_LIMIT_FROM)
}

/// The memory limit of the worker's cgroup (v2, then v1), if it has one.
pub fn cgroup_limit() -> Option<u64> {
    cgroup_limit_in(Path::new(CGROUP_V2_MAX), Path::new(CGROUP_V1_LIMIT))
}

fn cgroup_limit_in(v2: &Path, v1: &Path) -> Option<u64> {
    [v2, v1]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| parse_limit(&t))
}

/// Gives the memory freed by a batch (or a part of one) back to the system. glibc keeps what
/// its arenas free, each thread's arena fragmented its own way, so without this the worker's
/// peak RSS grew with the number of batches run rather than with what one batch holds.
pub fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: malloc_trim only returns free memory of glibc's heaps to the kernel; it
        // takes the arenas' locks itself and touches no memory in use.
        unsafe {
            malloc_trim(0);
        }
    }
}

/// The budget of a batch (of all the worker's stages together) for a memory limit.
pub fn budget_for_limit(limit: u64) -> Budget {
    let share = limit / BATCH_SHARE_DIVISOR;
    Budget {
        bytes: (share / 2 / DECODED_GROWTH).max(MIN_BATCH_BYTES),
        records: (share / 2 / RECORD_COST).max(1),
    }
}

/// The worker's batch budget: the flags where given, the rest from the memory limit
/// (`limit`, the cgroup's, or [`FALLBACK_LIMIT`] when `None`).
///
/// # Errors
/// A `--batch-bytes` that is not a size, is below [`MIN_BATCH_BYTES`] or above half the
/// memory limit; a `--batch-records` of 0.
pub fn resolve(
    bytes: Option<&str>,
    records: Option<u64>,
    limit: Option<u64>,
) -> Result<(Budget, BudgetFrom), BudgetError> {
    let from = match (bytes.is_some() || records.is_some(), limit) {
        (true, _) => BudgetFrom::Flags,
        (false, Some(l)) => BudgetFrom::Cgroup(l),
        (false, None) => BudgetFrom::Fallback,
    };
    let memory = limit.unwrap_or(FALLBACK_LIMIT);
    let mut budget = budget_for_limit(memory);
    if let Some(given) = bytes {
        let n = parse_size(given)?;
        if n < MIN_BATCH_BYTES {
            return Err(BudgetError::TooSmall { given: n });
        }
        if let Some(limit) = limit.filter(|&l| n > l / BATCH_SHARE_DIVISOR) {
            return Err(BudgetError::OverLimit {
                given: n,
                limit,
                max: limit / BATCH_SHARE_DIVISOR,
                default: budget.bytes,
            });
        }
        budget.bytes = n;
    }
    if let Some(r) = records {
        if r == 0 {
            return Err(BudgetError::NoRecords);
        }
        budget.records = r;
    }
    Ok((budget, from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_kubernetes_writes_memory() {
        assert_eq!(parse_size("64Mi").ok(), Some(64 << 20));
        assert_eq!(parse_size("1Gi").ok(), Some(1 << 30));
        assert_eq!(parse_size("500M").ok(), Some(500_000_000));
        assert_eq!(parse_size(" 1048576 ").ok(), Some(1 << 20));
        assert!(matches!(parse_size("64MB"), Err(BudgetError::Unit { .. })));
        assert!(matches!(parse_size("Mi"), Err(BudgetError::Size { .. })));
        assert!(matches!(parse_size("-1"), Err(BudgetError::Size { .. })));
    }

    #[test]
    fn cgroup_files_without_a_limit_give_none() {
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("9223372036854771712\n"), None, "v1's no limit");
        assert_eq!(parse_limit("536870912\n"), Some(512 << 20));
        assert_eq!(parse_limit("garbage"), None);
        assert_eq!(parse_limit("0"), None);
        let dir = tempfile::tempdir().expect("tempdir");
        let (v2, v1) = (dir.path().join("memory.max"), dir.path().join("v1"));
        assert_eq!(cgroup_limit_in(&v2, &v1), None, "no files");
        std::fs::write(&v1, "1073741824\n").expect("write");
        assert_eq!(cgroup_limit_in(&v2, &v1), Some(1 << 30), "v1 only");
        std::fs::write(&v2, "max\n").expect("write");
        assert_eq!(cgroup_limit_in(&v2, &v1), None, "v2 says there is no limit");
    }

    #[test]
    fn the_budget_follows_the_memory_limit_and_the_flags_win() {
        let (b, from) = resolve(None, None, Some(512 << 20)).expect("budget");
        assert_eq!(from, BudgetFrom::Cgroup(512 << 20));
        assert_eq!(b, budget_for_limit(512 << 20));
        assert!(b.bytes * DECODED_GROWTH + b.records * RECORD_COST <= (512 << 20) / 2);
        let (big, _) = resolve(None, None, Some(4 << 30)).expect("budget");
        assert_eq!(
            big.bytes / b.bytes,
            8,
            "eight times the memory, eight times the budget"
        );
        let (fallback, from) = resolve(None, None, None).expect("budget");
        assert_eq!((fallback, from), (b, BudgetFrom::Fallback));

        let (b, from) = resolve(Some("8Mi"), Some(1000), Some(512 << 20)).expect("budget");
        assert_eq!(
            (b.bytes, b.records, from),
            (8 << 20, 1000, BudgetFrom::Flags)
        );
        let (b, _) = resolve(Some("8Mi"), None, None).expect("budget");
        assert_eq!(b.records, budget_for_limit(FALLBACK_LIMIT).records);
    }

    #[test]
    fn a_budget_that_cannot_work_is_refused_with_the_fix() {
        let e = resolve(Some("1Ki"), None, None).expect_err("too small");
        assert!(e.to_string().contains("set at least 64Ki"), "{e}");
        let e = resolve(Some("300Mi"), None, Some(512 << 20)).expect_err("over the limit");
        assert!(
            e.to_string()
                .contains("more than half the worker's memory limit (536870912 bytes)")
                && e.to_string().contains("set at most 268435456"),
            "{e}"
        );
        assert!(resolve(Some("256Mi"), None, Some(512 << 20)).is_ok());
        assert!(matches!(
            resolve(None, Some(0), None),
            Err(BudgetError::NoRecords)
        ));
        let e = resolve(Some("lots"), None, None).expect_err("not a size");
        assert!(
            std::error::Error::source(&e).is_some(),
            "keeps the parse error"
        );
    }
}
