//! `e2e/chaos.sh`'s engine: runs the kill test harness ([`weir_e2e::chaos`]) and prints its
//! closing line, `lost=<n> duplicated=<n> state_equal=<true|false>`. The line before it says
//! whether the broker fences older workers (`broker_fences=`), which `state_equal` needs when
//! workers overlap.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use weir_e2e::chaos::{run, Options};

const USAGE: &str = "usage: weir-chaos --worker PATH --sink kafka|postgres --records N --kills K [--bootstrap HOST:PORT] [--log-dir DIR] [--overlap]";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return Ok(());
    }
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
            "--overlap",
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
        overlap: args.iter().any(|a| a == "--overlap"),
    };
    let outcome = run(&o)?;
    println!(
        "sink={:?} records={} kills={} overlap={} partitions={} seconds={} fenced_exits={} recovery_ms={:?}",
        o.sink,
        o.records,
        outcome.kills,
        o.overlap,
        outcome.partitions,
        outcome.seconds,
        outcome.fenced_exits,
        outcome.recovery_ms
    );
    println!("broker_fences={}", outcome.broker_fences);
    println!("{outcome}");
    Ok(())
}
