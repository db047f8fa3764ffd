//! Test harness: real brokers (librdkafka's mock cluster in-process or in its own process on a
//! loopback port, and tansu's sqlite engine), real worker processes, and clients to inspect
//! what they wrote and committed.
#![allow(dead_code)]

#[path = "../../../e2e/src/pg.rs"]
pub mod pg;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

pub const WORKER: &str = env!("CARGO_BIN_EXE_weir-worker");
const TIMEOUT: Duration = Duration::from_secs(10);

/// A Kafka implementation the test talks to.
pub enum Broker {
    /// librdkafka's mock cluster in this process.
    InProcess(MockCluster<'static, DefaultProducerContext>),
    /// The mock cluster hosted by `weir-worker mock-kafka` in its own process.
    MockProcess {
        child: Child,
        _stdin: ChildStdin,
        bootstrap: String,
    },
    /// tansu with its sqlite engine.
    Tansu {
        child: Child,
        bootstrap: String,
        port: u16,
        bin: PathBuf,
        _dir: tempfile::TempDir,
    },
}

impl Broker {
    pub fn in_process() -> Broker {
        Broker::InProcess(MockCluster::new(1).expect("mock cluster"))
    }

    /// tansu's sqlite engine on a free loopback port; `None` (with a note) when tansu is not
    /// installed, which only `scripts/test.sh` guarantees.
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
        let bin = std::env::var("WEIR_TANSU_BIN")
            .ok()
            .map(PathBuf::from)
            .or_else(|| {
                let home = std::env::var_os("HOME")?;
                let p = Path::new(&home).join(".cache/weir-tools/tansu-0.6.0/bin/tansu");
                p.exists().then_some(p)
            });
        let Some(bin) = bin else {
            assert!(std::env::var_os("CI").is_none(), "tansu is required in CI: scripts/install-tools.sh installs it and sets WEIR_TANSU_BIN");
            eprintln!(
                "tansu not installed; run scripts/install-tools.sh. Skipping the tansu part."
            );
            return None;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let bootstrap = format!("127.0.0.1:{port}");
        let child = start_tansu_with(&bin, dir.path(), port, more);
        Some(Broker::Tansu {
            child,
            bootstrap,
            port,
            bin,
            _dir: dir,
        })
    }

    /// Sends a signal (`KILL`, `STOP`, `CONT`) to a broker in its own process.
    pub fn signal(&self, sig: &str) {
        let (Broker::MockProcess { child, .. } | Broker::Tansu { child, .. }) = self else {
            panic!("the in-process mock cluster has no process to signal")
        };
        signal(child, sig);
    }

    /// Kills tansu and starts it again on the same port with the same data, as a broker
    /// that crashed and came back.
    pub fn restart_tansu(&mut self, down_for: Duration) {
        let Broker::Tansu {
            child,
            port,
            bin,
            _dir,
            ..
        } = self
        else {
            panic!("only tansu keeps its data across a restart")
        };
        let _ = child.kill();
        let _ = child.wait();
        std::thread::sleep(down_for);
        *child = start_tansu(bin, _dir.path(), *port);
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

    /// Client settings that suit this broker (tansu holds fetches for fetch.wait.max.ms).
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
            // The mock cluster's admin CreateTopics times out: its topics are made at start.
            Broker::MockProcess { .. } => panic!("create the topics with mock_process_with"),
            Broker::Tansu { .. } => {
                let admin: AdminClient<DefaultClientContext> =
                    self.client().create().expect("admin");
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("rt");
                let r = rt.block_on(admin.create_topics(
                    &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
                    &AdminOptions::new().operation_timeout(Some(TIMEOUT)),
                ));
                let r = r.expect("create_topics");
                for t in r {
                    t.expect("topic created");
                }
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        match self {
            Broker::MockProcess { child, .. } | Broker::Tansu { child, .. } => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Broker::InProcess(_) => {}
        }
    }
}

/// tansu's broker with its sqlite engine in `dir`, listening on `port` once this returns.
fn start_tansu(bin: &Path, dir: &Path, port: u16) -> Child {
    start_tansu_with(bin, dir, port, &[])
}

/// As [`start_tansu`], with more broker options.
fn start_tansu_with(bin: &Path, dir: &Path, port: u16, more: &[&str]) -> Child {
    let bootstrap = format!("127.0.0.1:{port}");
    let child = Command::new(bin)
        .args([
            "broker",
            "--listener-url",
            &format!("tcp://127.0.0.1:{port}"),
            "--advertised-listener-url",
            &format!("tcp://127.0.0.1:{port}"),
            "--storage-engine",
            // Relative to the working directory: tansu misreads absolute sqlite URLs.
            "sqlite://tansu.db",
        ])
        .args(more)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tansu");
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(&bootstrap).is_err() {
        assert!(
            Instant::now() < deadline,
            "tansu did not listen on {bootstrap}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// The mock cluster in its own process, with topics created at start.
pub fn mock_process_with(topics: &[(&str, i32)]) -> Broker {
    let mut cmd = Command::new(WORKER);
    cmd.arg("mock-kafka");
    for (t, p) in topics {
        cmd.args(["--topic", &format!("{t}:{p}")]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start mock-kafka");
    let stdin = child.stdin.take().expect("stdin");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("bootstrap line");
    let bootstrap = line
        .trim()
        .strip_prefix("bootstrap.servers=")
        .expect("bootstrap.servers=")
        .to_string();
    Broker::MockProcess {
        child,
        _stdin: stdin,
        bootstrap,
    }
}

/// `kill -SIG` a child process (`TERM`, `KILL`, `STOP`, `CONT`).
fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -{sig} {}", child.id());
}

/// A loopback address where every connection is refused, and stays so while the guard
/// lives: a socket bound to the port but not listening holds it (no test or other process
/// can start a server there, as could happen to a port picked free and released) and the
/// kernel answers a connection with a reset.
pub fn refused_address() -> (socket2::Socket, String) {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("a socket");
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().expect("an address");
    s.bind(&any.into()).expect("bind");
    let port = s
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .expect("the bound address")
        .port();
    (s, format!("127.0.0.1:{port}"))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Produces `n` JSON records `{"n": i}` keyed by i, spread round-robin over `partitions`.
pub fn produce_numbered(broker: &Broker, topic: &str, partitions: i32, start: u64, n: u64) {
    let p: BaseProducer = broker
        .client()
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    for i in start..start + n {
        let key = i.to_string();
        let payload = format!(r#"{{"n":{i}}}"#);
        let part = (i % partitions as u64) as i32;
        loop {
            match p.send(
                BaseRecord::to(topic)
                    .key(&key)
                    .payload(&payload)
                    .partition(part),
            ) {
                Ok(()) => break,
                Err((_, _)) => {
                    p.poll(Duration::from_millis(10));
                }
            }
        }
    }
    p.flush(Duration::from_secs(30)).expect("flush");
}

/// Produces raw payloads to one partition.
pub fn produce_raw(broker: &Broker, topic: &str, partition: i32, payloads: &[&[u8]]) {
    let p: BaseProducer = broker.client().create().expect("producer");
    for payload in payloads {
        p.send(
            BaseRecord::<[u8], [u8]>::to(topic)
                .payload(payload)
                .partition(partition),
        )
        .expect("send");
    }
    p.flush(Duration::from_secs(30)).expect("flush");
}

/// A record read back.
#[derive(Debug, Clone)]
pub struct ReadRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

/// Every record of `topic` up to its current high watermarks.
pub fn read_all(broker: &Broker, topic: &str) -> Vec<ReadRecord> {
    let c: BaseConsumer = broker
        .client()
        .set("group.id", "weir-test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let md = c.fetch_metadata(Some(topic), TIMEOUT).expect("metadata");
    let parts = md.topics()[0].partitions().len() as i32;
    let mut tpl = TopicPartitionList::new();
    let mut ends = Vec::new();
    for p in 0..parts {
        let (low, high) = c.fetch_watermarks(topic, p, TIMEOUT).expect("watermarks");
        ends.push(high);
        if high > low {
            tpl.add_partition_offset(topic, p, Offset::Offset(low))
                .expect("tpl");
        }
    }
    let mut out = Vec::new();
    if tpl.count() == 0 {
        return out;
    }
    c.assign(&tpl).expect("assign");
    let mut done: Vec<bool> = (0..parts)
        .map(|p| {
            let (low, high) = c.fetch_watermarks(topic, p, TIMEOUT).unwrap_or((0, 0));
            high <= low
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done.iter().all(|d| *d) {
        assert!(Instant::now() < deadline, "reading {topic} timed out");
        let Some(m) = c.poll(Duration::from_millis(100)) else {
            continue;
        };
        let Ok(m) = m else { continue };
        let p = m.partition();
        if m.offset() >= ends[p as usize] {
            continue;
        }
        out.push(ReadRecord {
            partition: p,
            offset: m.offset(),
            key: m.key().map(|k| String::from_utf8_lossy(k).to_string()),
            value: m.payload().unwrap_or_default().to_vec(),
            headers: m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_string(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).to_string(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
        });
        if m.offset() + 1 >= ends[p as usize] {
            done[p as usize] = true;
        }
    }
    out
}

/// The group's committed offsets for each partition of `topic` (-1 when none).
pub fn committed(broker: &Broker, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let c: BaseConsumer = broker
        .client()
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let r = c
        .committed_offsets(tpl, TIMEOUT)
        .expect("committed offsets");
    (0..partitions)
        .map(|p| match r.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => -1,
        })
        .collect()
}

pub fn high_watermarks(broker: &Broker, topic: &str, partitions: i32) -> Vec<i64> {
    let c: BaseConsumer = broker.client().create().expect("consumer");
    (0..partitions)
        .map(|p| c.fetch_watermarks(topic, p, TIMEOUT).expect("watermarks").1)
        .collect()
}

/// Writes a job file into `dir` and returns its path.
pub fn job_file(dir: &Path, yaml: &str) -> PathBuf {
    let path = dir.join("job.yaml");
    std::fs::write(&path, yaml).expect("write job");
    path
}

/// A worker process with its log lines collected.
pub struct WorkerProc {
    pub child: Child,
    pub logs: Arc<Mutex<Vec<String>>>,
    pub http: Option<String>,
}

impl WorkerProc {
    pub fn spawn(job: &Path, args: &[&str]) -> WorkerProc {
        Self::spawn_with_env(job, args, &[])
    }

    pub fn spawn_with_env(job: &Path, args: &[&str], env: &[(&str, &Path)]) -> WorkerProc {
        let mut child = Command::new(WORKER)
            .arg("run")
            .arg(job)
            .args(["--http-addr", "127.0.0.1:0"])
            .args(args)
            .envs(env.iter().copied())
            .env("WEIR_LOG_FORMAT", "json")
            .env("WEIR_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn worker");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let err = child.stderr.take().expect("stderr");
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if std::env::var_os("WEIR_TEST_ECHO").is_some() {
                    eprintln!("worker: {line}");
                }
                sink.lock().expect("logs").push(line);
            }
        });
        let mut w = WorkerProc {
            child,
            logs,
            http: None,
        };
        w.http = w
            .wait_log("worker starting", Duration::from_secs(30))
            .and_then(|l| {
                let v: serde_json::Value = serde_json::from_str(&l).ok()?;
                v["fields"]["progress"].as_str().map(|s| {
                    s.trim_start_matches("http://")
                        .trim_end_matches("/progress")
                        .to_string()
                })
            });
        w
    }

    /// Waits for a log line containing `needle`.
    pub fn wait_log(&self, needle: &str, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(l) = self
                .logs
                .lock()
                .expect("logs")
                .iter()
                .find(|l| l.contains(needle))
            {
                return Some(l.clone());
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn count_logs(&self, needle: &str) -> usize {
        self.logs
            .lock()
            .expect("logs")
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    pub fn all_logs(&self) -> String {
        self.logs.lock().expect("logs").join("\n")
    }

    /// `GET path` on the worker's HTTP port.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.http.as_deref()?, path)
    }

    pub fn progress(&self) -> Option<serde_json::Value> {
        let (status, body) = self.get("/progress?last=100")?;
        (status == 200)
            .then(|| serde_json::from_str(&body).ok())
            .flatten()
    }

    pub fn signal(&self, sig: &str) {
        signal(&self.child, sig);
    }

    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.0 GET, so tests need no HTTP client library.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// Waits until `f` holds, or panics with `what`.
pub fn eventually(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a job (its YAML with `BOOTSTRAP` for the broker's address) in this process as worker
/// 0 of 1 for `batches` batches, and returns its progress.
pub fn run(broker: &Broker, yaml: &str, batches: u64) -> weir_worker::progress::Snapshot {
    let engine = connect(broker, yaml);
    let (mut engine, progress) = match engine {
        Ok(e) => e,
        Err(e) => panic!("connect: {e}"),
    };
    let cancel = tokio_util::sync::CancellationToken::new();
    let n = engine
        .run(
            &weir_worker::engine::Options {
                max_batches: Some(batches),
                ..Default::default()
            },
            &cancel,
        )
        .expect("run");
    assert_eq!(n, batches);
    progress.snapshot(100)
}

/// As [`run`], with batches that hold at most `budget`.
pub fn run_within(
    broker: &Broker,
    yaml: &str,
    batches: u64,
    budget: weir_worker::memory::Budget,
) -> weir_worker::progress::Snapshot {
    let (mut engine, progress) = connect(broker, yaml).unwrap_or_else(|e| panic!("connect: {e}"));
    let opts = weir_worker::engine::Options {
        max_batches: Some(batches),
        budget,
    };
    let n = engine
        .run(&opts, &tokio_util::sync::CancellationToken::new())
        .expect("run");
    assert_eq!(n, batches);
    progress.snapshot(100)
}

/// A job (its YAML with `BOOTSTRAP` for the broker's address) as worker 0 of 1 of namespace
/// "test" runs it, with the progress it reports to.
fn worker_zero_of_one(
    broker: &Broker,
    yaml: &str,
) -> (
    weir_worker::spec::JobFile,
    weir_worker::client::Identity,
    Arc<weir_worker::progress::Progress>,
) {
    let yaml = yaml.replace("BOOTSTRAP", &broker.bootstrap());
    let job = weir_worker::spec::parse_job(&yaml, "t").expect("job");
    let id = weir_worker::client::Identity {
        namespace: "test".into(),
        job: job.name.clone(),
        ordinal: 0,
        workers: 1,
    };
    let progress = Arc::new(weir_worker::progress::Progress::new(
        id.clone(),
        "g".into(),
        job.spec.batch_interval.as_std(),
    ));
    (job, id, progress)
}

/// Connects a job's engine in this process as worker 0 of 1 (see [`run`]).
pub fn connect(
    broker: &Broker,
    yaml: &str,
) -> weir_worker::error::Result<(
    weir_worker::engine::Engine,
    Arc<weir_worker::progress::Progress>,
)> {
    connect_with_sink(broker, yaml, |s| s)
}

/// As [`connect`], with the job's own sink wrapped by `wrap`: a seam for what happens around
/// the sink's calls (another worker acting meanwhile).
pub fn connect_with_sink(
    broker: &Broker,
    yaml: &str,
    wrap: impl FnOnce(Box<dyn weir_worker::sink::Sink>) -> Box<dyn weir_worker::sink::Sink>,
) -> weir_worker::error::Result<(
    weir_worker::engine::Engine,
    Arc<weir_worker::progress::Progress>,
)> {
    let (job, id, progress) = worker_zero_of_one(broker, yaml);
    let sink = wrap(weir_worker::sink::build(&job.spec, &id, None).expect("sink"));
    let cancel = tokio_util::sync::CancellationToken::new();
    let engine = weir_worker::engine::Engine::connect(job, &id, sink, progress.clone(), &cancel)?;
    Ok((engine, progress))
}

/// Runs every stage of a job (see [`run`]) until `done` holds (checked between batches, for
/// at most a minute), then stops them after their batch in flight.
pub fn run_stages_until(broker: &Broker, yaml: &str, mut done: impl FnMut() -> bool) {
    let (job, id, progress) = worker_zero_of_one(broker, yaml);
    let cancel = tokio_util::sync::CancellationToken::new();
    let mut stages =
        weir_worker::stages::connect(job, &id, None, progress, &cancel).expect("connect stages");
    let stop = cancel.clone();
    let runner = std::thread::spawn(move || {
        weir_worker::stages::run(&mut stages, &weir_worker::engine::Options::default(), &stop)
    });
    eventually(
        "the stages to finish their work",
        Duration::from_secs(60),
        &mut done,
    );
    cancel.cancel();
    runner.join().expect("stages thread").expect("stages run");
}

/// Runs every stage of a job (see [`run`]) side by side, each for `batches` batches, sharing
/// `budget` as the worker does; returns the progress, later stages under `stages`.
pub fn run_stages_within(
    broker: &Broker,
    yaml: &str,
    batches: u64,
    budget: weir_worker::memory::Budget,
) -> weir_worker::progress::Snapshot {
    let (job, id, progress) = worker_zero_of_one(broker, yaml);
    let cancel = tokio_util::sync::CancellationToken::new();
    let mut stages = weir_worker::stages::connect(job, &id, None, progress.clone(), &cancel)
        .unwrap_or_else(|e| panic!("connect stages: {e}"));
    let opts = weir_worker::engine::Options {
        max_batches: Some(batches),
        budget,
    };
    weir_worker::stages::run(&mut stages, &opts, &cancel).expect("run the stages");
    progress.snapshot(100)
}

/// Runs every stage of a job (see [`run`]) in turn, first to last, each for `batches`
/// batches, so a later stage's batches see everything the earlier stages wrote; returns the
/// progress, later stages under `stages`.
pub fn run_stages_in_turn(
    broker: &Broker,
    yaml: &str,
    batches: u64,
) -> weir_worker::progress::Snapshot {
    let (job, id, progress) = worker_zero_of_one(broker, yaml);
    let cancel = tokio_util::sync::CancellationToken::new();
    let mut stages = weir_worker::stages::connect(job, &id, None, progress.clone(), &cancel)
        .unwrap_or_else(|e| panic!("connect stages: {e}"));
    let opts = weir_worker::engine::Options {
        max_batches: Some(batches),
        ..Default::default()
    };
    for stage in &mut stages {
        stage.run(&opts, &cancel).expect("run a stage");
    }
    progress.snapshot(100)
}
