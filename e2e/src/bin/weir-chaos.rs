//! `e2e/chaos.sh`'s engine: runs the kill test harness ([`weir_e2e::chaos`]) and prints its
//! closing line, `lost=<n> duplicated=<n> state_equal=<true|false>`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use weir_e2e::chaos::{run, Options};

const USAGE: &str = "usage: weir-chaos --worker PATH --sink kafka|postgres --records N --kills K [--bootstrap HOST:PORT] [--log-dir DIR]";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |name: &str| -> Option<String> {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    for a in args.iter().filter(|a| a.starts_with("--")) {
        if ![
            "--worker",
            "--sink",
            "--records",
            "--kills",
            "--bootstrap",
            "--log-dir",
        ]
        .contains(&a.as_str())
        {
            bail!("unknown option {a}\n{USAGE}");
        }
    }
    let need = |name: &str| get(name).with_context(|| format!("missing {name}\n{USAGE}"));
    let o = Options {
        sink: need("--sink")?.parse()?,
        records: need("--records")?.parse().context("--records")?,
        kills: need("--kills")?.parse().context("--kills")?,
        bootstrap: get("--bootstrap"),
        worker: PathBuf::from(need("--worker")?),
        log_dir: get("--log-dir").map(PathBuf::from),
    };
    let outcome = run(&o)?;
    println!(
        "sink={:?} records={} kills={} partitions={} seconds={}",
        o.sink, o.records, outcome.kills, outcome.partitions, outcome.seconds
    );
    println!("{outcome}");
    Ok(())
}
