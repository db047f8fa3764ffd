//! The kill test harness, short: 20,000 records, three kill -9's of the worker at random
//! moments, with the PostgreSQL sink; and three times a second worker with the same ordinal
//! started beside the running one. `e2e/chaos.sh` runs the long version.

use std::path::PathBuf;

use weir_e2e::chaos::{run, Options, SinkKind};

fn worker_bin() -> PathBuf {
    weir_testkit::tools::workspace_binary("weir-worker")
}

/// Runs the PostgreSQL version of the harness: 20,000 records, three workers killed (with
/// `overlap`, each started beside the running one first), and asserts its closing line.
fn postgres_run(overlap: bool) {
    let found = weir_testkit::tools::pg_bin_dir();
    if weir_testkit::tools::required("the PostgreSQL server", "WEIR_PG_BIN", found).is_none() {
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
