//! The kill test harness, short: 20,000 records, three kill -9's of the worker at random
//! moments, with the PostgreSQL sink; and three times a second worker with the same ordinal
//! started beside the running one. `e2e/chaos.sh` runs the long version.

use std::path::PathBuf;

use weir_e2e::chaos::{run, Options, SinkKind};

/// The worker binary cargo built for the workspace's tests.
fn worker_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("weir-worker");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p weir-worker` (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// Runs the PostgreSQL version of the harness: 20,000 records, three workers killed (with
/// `overlap`, each started beside the running one first), and asserts its closing line.
fn postgres_run(overlap: bool) {
    if weir_e2e::pg::bin_dir().is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "the PostgreSQL server is required in CI: scripts/install-tools.sh installs it"
        );
        eprintln!("PostgreSQL server not installed; skipping");
        return;
    }
    let log_dir = tempfile::tempdir().expect("tempdir");
    let outcome = run(&Options {
        sink: SinkKind::Postgres,
        records: 20_000,
        kills: 3,
        bootstrap: None,
        worker: worker_bin(),
        log_dir: Some(log_dir.path().to_path_buf()),
        overlap,
    })
    .expect("the harness ran");
    assert_eq!(
        outcome.to_string(),
        "lost=0 duplicated=0 state_equal=true",
        "worker logs in {}",
        log_dir.keep().display()
    );
}

#[test]
fn postgres_sink_killed_three_times_loses_and_repeats_nothing() {
    postgres_run(false);
}

#[test]
fn postgres_sink_with_a_second_worker_of_the_same_ordinal_started_three_times_counts_once() {
    postgres_run(true);
}
