//! A throwaway PostgreSQL server for tests and the chaos harness: Debian's server binaries,
//! `initdb` into a temporary directory, `postgres` on a free loopback port, gone on drop.
//!
//! The binaries are found by [`crate::tools::pg_bin_dir`].
//! PostgreSQL refuses to run as root, so as root the server runs as an unprivileged user:
//! `weir-pg` if it exists (scripts/install-tools.sh creates it), else `nobody`.

use std::io::Read;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const USER: &str = "weir";
pub const DATABASE: &str = "postgres";

/// A running server; dropping it stops the server and deletes its data.
pub struct PgServer {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

/// (uid, gid) of the user the server runs as when this process is root.
fn unprivileged_user() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    for name in ["weir-pg", "nobody"] {
        for line in passwd.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() > 3 && f[0] == name {
                if let (Ok(u), Ok(g)) = (f[2].parse(), f[3].parse()) {
                    return Some((u, g));
                }
            }
        }
    }
    None
}

fn is_root() -> bool {
    // The effective uid: the one PostgreSQL checks.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

impl PgServer {
    /// Starts a server. Without PostgreSQL installed: `None` with a note, except in CI (`CI`
    /// set), where it panics, since CI must run every test.
    pub fn start() -> Option<PgServer> {
        let Some(bin) = crate::tools::pg_bin_dir() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "the PostgreSQL server is required in CI: scripts/install-tools.sh installs it and sets WEIR_PG_BIN"
            );
            eprintln!("PostgreSQL server (initdb) not found; run scripts/install-tools.sh or set WEIR_PG_BIN. Skipping the PostgreSQL part.");
            return None;
        };
        Some(Self::start_with(&bin))
    }

    /// Starts a server from the binaries in `bin`; panics with the server's log if it fails.
    pub fn start_with(bin: &Path) -> PgServer {
        let dir = tempfile::Builder::new()
            .prefix("weir-pg-")
            .tempdir()
            .expect("temporary directory for PostgreSQL");
        let as_user = if is_root() {
            let (uid, gid) = unprivileged_user()
                .expect("running as root, and neither a weir-pg nor a nobody user exists to run PostgreSQL as");
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("chown the PostgreSQL directory");
            Some((uid, gid))
        } else {
            None
        };
        let data = dir.path().join("data");
        let log = dir.path().join("log");
        let cmd = |name: &str| {
            let mut c = Command::new(bin.join(name));
            if let Some((uid, gid)) = as_user {
                c.uid(uid).gid(gid);
            }
            // initdb and postgres read nothing of the caller's home; keep them out of it.
            c.current_dir(dir.path()).env("HOME", dir.path());
            c
        };
        let out = cmd("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                USER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.join("initdb").display()));
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let port = crate::net::free_port();
        let log_file = std::fs::File::create(&log).expect("PostgreSQL log file");
        if let Some((uid, gid)) = as_user {
            let _ = std::os::unix::fs::chown(&log, Some(uid), Some(gid));
        }
        let child = cmd("postgres")
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(dir.path())
            .args(["-c", "listen_addresses=127.0.0.1"])
            // The tests kill workers, never the server: durability against a server crash is
            // not what they show, and fsync makes every batch wait on the disk.
            .args(["-c", "fsync=off"])
            // Small, and off /dev/shm (64 MiB in a default container), so that the servers of
            // tests running in parallel fit.
            .args(["-c", "shared_buffers=16MB", "-c", "max_connections=50"])
            .args(["-c", "dynamic_shared_memory_type=mmap"])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.join("postgres").display()));
        let mut server = PgServer { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                if let Ok(mut c) = postgres::Client::connect(&server.url(), postgres::NoTls) {
                    if c.simple_query("SELECT 1").is_ok() {
                        return server;
                    }
                }
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("PostgreSQL exited ({status}): {}", server.log());
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not accept connections: {}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A URL for this server (no password: the throwaway server trusts local connections).
    pub fn url(&self) -> String {
        format!("postgresql://{USER}@127.0.0.1:{}/{DATABASE}", self.port)
    }

    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url(), postgres::NoTls).expect("connect to PostgreSQL")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.path().join("log")) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
