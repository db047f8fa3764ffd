//! Where the tools the tests run are, in one place. `scripts/install-tools.sh` installs each
//! and sets its `WEIR_*_BIN` variable; each lookup takes that variable, then where Debian's
//! package or the install script puts the tool.
//!
//! CI (`CI` set) must run every test, so there a missing tool panics with what installs it;
//! elsewhere the lookup prints a note and the test skips the part that needs the tool.

use std::path::{Path, PathBuf};

/// The tansu release `scripts/install-tools.sh` builds (`TANSU_VERSION` there).
pub const TANSU_VERSION: &str = "0.6.0";

/// tansu, the second, independent Kafka broker.
pub fn tansu() -> Option<PathBuf> {
    let installed = std::env::var_os("HOME").map(|h| {
        Path::new(&h)
            .join(".cache/weir-tools")
            .join(format!("tansu-{TANSU_VERSION}"))
            .join("bin/tansu")
    });
    required("tansu", "WEIR_TANSU_BIN", installed)
}

/// Debian's `promtool`.
pub fn promtool() -> Option<PathBuf> {
    required(
        "promtool",
        "WEIR_PROMTOOL_BIN",
        Some(PathBuf::from("/usr/bin/promtool")),
    )
}

/// Debian's `prometheus`: also found beside `WEIR_PROMTOOL_BIN`'s promtool.
pub fn prometheus() -> Option<PathBuf> {
    let beside_promtool = std::env::var_os("WEIR_PROMTOOL_BIN")
        .and_then(|p| Path::new(&p).parent().map(|d| d.join("prometheus")))
        .filter(|p| p.exists());
    required(
        "prometheus",
        "WEIR_PROMETHEUS_BIN",
        beside_promtool.or(Some(PathBuf::from("/usr/bin/prometheus"))),
    )
}

/// Debian's `chromium`, run headless.
pub fn chromium() -> Option<PathBuf> {
    required(
        "chromium",
        "WEIR_CHROMIUM_BIN",
        Some(PathBuf::from("/usr/bin/chromium")),
    )
}

/// `kubectl`.
pub fn kubectl() -> Option<PathBuf> {
    required("kubectl", "WEIR_KUBECTL_BIN", on_path("kubectl"))
}

/// `helm`.
pub fn helm() -> Option<PathBuf> {
    required("helm", "WEIR_HELM_BIN", on_path("helm"))
}

/// The directory with PostgreSQL's `initdb` and `postgres`: `WEIR_PG_BIN`, then `PATH`,
/// then the newest `/usr/lib/postgresql/<version>/bin` (Debian's package, off `PATH`).
/// No CI rule here: [`crate::pg::PgServer::start`] applies it.
pub fn pg_bin_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("WEIR_PG_BIN").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d));
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            if d.join("initdb").is_file() && d.join("postgres").is_file() {
                return Some(d);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b)
}

/// A binary of this workspace (`weir-worker`, `weir-operator`), beside the running test
/// executable: `scripts/test.sh` builds both before the tests. Integration tests of the crate
/// that owns the binary should use `env!("CARGO_BIN_EXE_...")` instead.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("the target directory")
        .join(name);
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p {name}` (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// `name` in a directory of `PATH`.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// `$env` if set, else `fallback` if it exists; missing: a panic in CI, a note elsewhere.
pub fn required(name: &str, env: &str, fallback: Option<PathBuf>) -> Option<PathBuf> {
    let found = std::env::var_os(env)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| fallback.filter(|p| p.exists()));
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{name} is required in CI: scripts/install-tools.sh installs it and sets {env}"
        );
        eprintln!("{name} not installed; run scripts/install-tools.sh (or set {env}). Skipping.");
    }
    found
}
