//! A Kafka for a test to talk to, each real: librdkafka's mock cluster in this process, the
//! same mock cluster hosted by `weir-worker mock-kafka` in its own process (so it can be
//! killed and frozen), or tansu with its sqlite engine (an independent implementation, and
//! the one that keeps its data across a restart).
//!
//! Their quirks, written down once (DESIGN.md has the whole list):
//! - the mock cluster neither fences producers nor hides aborted records from
//!   read_committed readers, and its admin CreateTopics times out: a mock process makes its
//!   topics at start;
//! - tansu misreads absolute sqlite URLs (so it runs in its data directory with a relative
//!   one), and holds a fetch for `fetch.wait.max.ms`, so clients of it set that low.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::ClientConfig;

use crate::{net, process, tools, Error, Result};

const TIMEOUT: Duration = Duration::from_secs(10);

/// A Kafka implementation the test talks to; a broker in its own process dies with this.
pub enum Broker {
    /// librdkafka's mock cluster in this process.
    InProcess(MockCluster<'static, DefaultProducerContext>),
    /// The mock cluster hosted by `weir-worker mock-kafka` in its own process.
    MockProcess {
        child: Child,
        /// Held open: the mock process exits when its stdin closes.
        _stdin: ChildStdin,
        bootstrap: String,
    },
    /// tansu with its sqlite engine.
    Tansu {
        child: Child,
        bootstrap: String,
        port: u16,
        bin: PathBuf,
        more: Vec<String>,
        _dir: tempfile::TempDir,
    },
}

impl Broker {
    pub fn in_process() -> Broker {
        Broker::InProcess(MockCluster::new(1).expect("mock cluster"))
    }

    /// The mock cluster in a `worker mock-kafka` process, with `topics` made at start.
    pub fn mock_process(worker: &Path, topics: &[(&str, i32)]) -> Result<Broker> {
        let mut cmd = Command::new(worker);
        cmd.arg("mock-kafka");
        for (t, p) in topics {
            cmd.args(["--topic", &format!("{t}:{p}")]);
        }
        let echo = std::env::var_os("WEIR_TEST_ECHO").is_some();
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(if echo {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .map_err(|source| Error::Io {
                what: format!("starting {} mock-kafka", worker.display()),
                source,
            })?;
        let (Some(stdin), Some(out)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(Error::Failed("mock-kafka without stdin or stdout".into()));
        };
        // Killed on every early return below.
        let child = process::Killed::new(child);
        let mut line = String::new();
        BufReader::new(out)
            .read_line(&mut line)
            .map_err(|source| Error::Io {
                what: "reading mock-kafka's bootstrap line".into(),
                source,
            })?;
        let bootstrap = line
            .trim()
            .strip_prefix("bootstrap.servers=")
            .ok_or_else(|| Error::Failed(format!("mock-kafka printed {line:?}")))?
            .to_string();
        Ok(Broker::MockProcess {
            child: child.into_inner(),
            _stdin: stdin,
            bootstrap,
        })
    }

    /// tansu on a free loopback port; `None` (with a note) when it is not installed.
    pub fn tansu() -> Option<Broker> {
        Self::tansu_with(&[])
    }

    /// tansu with `--authentication`: every client must log in with SASL SCRAM against users
    /// in its storage, and a fresh broker has none, so every login is refused as a wrong
    /// password is. `None` (with a note) when tansu is not installed.
    pub fn tansu_authenticating() -> Option<Broker> {
        Self::tansu_with(&["--authentication"])
    }

    fn tansu_with(more: &[&str]) -> Option<Broker> {
        let bin = tools::tansu()?;
        let dir = tempfile::tempdir().expect("tempdir");
        let port = net::free_port();
        let more: Vec<String> = more.iter().map(|s| s.to_string()).collect();
        let child = start_tansu(&bin, dir.path(), port, &more);
        Some(Broker::Tansu {
            child,
            bootstrap: format!("127.0.0.1:{port}"),
            port,
            bin,
            more,
            _dir: dir,
        })
    }

    /// Sends a signal (`KILL`, `STOP`, `CONT`) to a broker in its own process.
    pub fn signal(&self, sig: &str) {
        let (Broker::MockProcess { child, .. } | Broker::Tansu { child, .. }) = self else {
            panic!("the in-process mock cluster has no process to signal")
        };
        process::signal(child, sig);
    }

    /// Kills tansu and starts it again on the same port with the same data, as a broker
    /// that crashed and came back.
    pub fn restart_tansu(&mut self, down_for: Duration) {
        let Broker::Tansu {
            child,
            port,
            bin,
            more,
            _dir,
            ..
        } = self
        else {
            panic!("only tansu keeps its data across a restart")
        };
        let _ = child.kill();
        let _ = child.wait();
        std::thread::sleep(down_for);
        *child = start_tansu(bin, _dir.path(), *port, more);
    }

    /// Kills the broker's process for good.
    pub fn kill(&mut self) {
        if let Broker::MockProcess { child, .. } | Broker::Tansu { child, .. } = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn bootstrap(&self) -> String {
        match self {
            Broker::InProcess(c) => c.bootstrap_servers(),
            Broker::MockProcess { bootstrap, .. } | Broker::Tansu { bootstrap, .. } => {
                bootstrap.clone()
            }
        }
    }

    pub fn is_tansu(&self) -> bool {
        matches!(self, Broker::Tansu { .. })
    }

    /// Client settings that suit this broker.
    pub fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.bootstrap());
        if self.is_tansu() {
            c.set("fetch.wait.max.ms", "10");
        }
        c
    }

    pub fn create_topic(&self, topic: &str, partitions: i32) {
        match self {
            Broker::InProcess(c) => c.create_topic(topic, partitions, 1).expect("create topic"),
            Broker::MockProcess { .. } => panic!("make a mock process's topics at its start"),
            Broker::Tansu { .. } => {
                create_topics(&self.client(), &[(topic, partitions)]).expect("create topic")
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Creates `topics` (name, partitions) through the admin API, each with the broker's default
/// replication.
pub fn create_topics(client: &ClientConfig, topics: &[(&str, i32)]) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = client.create()?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(t, p)| NewTopic::new(t, *p, TopicReplication::Fixed(-1)))
        .collect();
    // On a thread of its own, so that a test inside a runtime (`#[tokio::test]`) can call it.
    let made = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|source| Error::Io {
                        what: "a runtime for the admin client".into(),
                        source,
                    })?;
                let opts = AdminOptions::new().operation_timeout(Some(TIMEOUT));
                Ok::<_, Error>(rt.block_on(admin.create_topics(&new, &opts))?)
            })
            .join()
            .map_err(|_| Error::Failed("the admin client's thread panicked".into()))
    })??;
    for r in made {
        r.map_err(|(t, e)| Error::Failed(format!("creating topic {t}: {e}")))?;
    }
    Ok(())
}

/// tansu's broker with its sqlite engine in `dir`, listening on `port` once this returns.
pub fn start_tansu(bin: &Path, dir: &Path, port: u16, more: &[String]) -> Child {
    let url = format!("tcp://127.0.0.1:{port}");
    let child = Command::new(bin)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        // Relative to the working directory: tansu misreads absolute sqlite URLs.
        .args(["--storage-engine", "sqlite://tansu.db"])
        .args(more)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tansu");
    let child = process::Killed::new(child);
    let bootstrap = format!("127.0.0.1:{port}");
    assert!(
        net::wait_listening(&bootstrap, Duration::from_secs(30)),
        "tansu did not listen on {bootstrap}"
    );
    child.into_inner()
}
