//! Test harness of the worker: the workspace's brokers and clients (`weir_testkit`) with the
//! worker's own parts on top: worker processes with their log lines collected, and the
//! engine run in this process against a broker.
// Each test binary uses a part of the harness.
#![allow(dead_code, unused_imports)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use weir_testkit::kafka::ReadRecord;
pub use weir_testkit::{eventually, free_port, http_get, pg, refused_address, signal, Broker};

pub const WORKER: &str = env!("CARGO_BIN_EXE_weir-worker");

/// The mock cluster in its own process (this crate's worker binary), with topics made at
/// start.
pub fn mock_process_with(topics: &[(&str, i32)]) -> Broker {
    Broker::mock_process(Path::new(WORKER), topics).unwrap_or_else(|e| panic!("mock-kafka: {e}"))
}

/// Produces `n` JSON records `{"n": i}` keyed by i, spread round-robin over `partitions`.
pub fn produce_numbered(broker: &Broker, topic: &str, partitions: i32, start: u64, n: u64) {
    weir_testkit::kafka::produce_numbered(&broker.client(), topic, partitions, start, n)
        .unwrap_or_else(|e| panic!("producing to {topic}: {e}"));
}

/// Produces raw payloads to one partition.
pub fn produce_raw(broker: &Broker, topic: &str, partition: i32, payloads: &[&[u8]]) {
    weir_testkit::kafka::produce_raw(&broker.client(), topic, partition, payloads)
        .unwrap_or_else(|e| panic!("producing to {topic}: {e}"));
}

/// Every record of `topic` up to its current high watermarks.
pub fn read_all(broker: &Broker, topic: &str) -> Vec<ReadRecord> {
    weir_testkit::kafka::read_all(&broker.client(), topic)
        .unwrap_or_else(|e| panic!("reading {topic}: {e}"))
}

/// The group's committed offsets for each partition of `topic` (-1 when none).
pub fn committed(broker: &Broker, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    weir_testkit::kafka::committed(&broker.client(), group, topic, partitions)
        .unwrap_or_else(|e| panic!("reading {group}'s offsets: {e}"))
}

pub fn high_watermarks(broker: &Broker, topic: &str, partitions: i32) -> Vec<i64> {
    weir_testkit::kafka::high_watermarks(&broker.client(), topic, partitions)
        .unwrap_or_else(|e| panic!("reading {topic}'s ends: {e}"))
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

    /// Batches completed by the stage named `stage` ("input", or a repartition step's id).
    pub fn completed(&self, stage: &str) -> usize {
        let stage = format!("\"stage\":\"{stage}\"");
        self.logs
            .lock()
            .expect("logs")
            .iter()
            .filter(|l| l.contains("batch completed") && l.contains(&stage))
            .count()
    }

    /// The fields of the stage's last "batch completed" log line.
    fn last_completed(&self, stage: &str) -> Option<serde_json::Value> {
        let stage = format!("\"stage\":\"{stage}\"");
        let logs = self.logs.lock().expect("logs");
        let line = logs
            .iter()
            .rev()
            .find(|l| l.contains("batch completed") && l.contains(&stage))?;
        serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .map(|v| v["fields"].clone())
    }

    /// Runs a two-stage job file (its second stage reading after repartition step `stage`,
    /// with a batch interval of about a second) and kills it `times` times, each right after
    /// both stages finished a batch of the same tick (the first at least two) that kept to
    /// its schedule: between transactions, because the mock cluster shows aborted records to
    /// read_committed readers and aborts no transaction a killed producer left open
    /// (DESIGN.md), so a kill inside one would show what Kafka hides. A batch that ran late or
    /// long (a loaded machine) could be followed at once by the next, so the kill waits for a
    /// tick that left most of the interval idle. What such a kill tests is the restart: state,
    /// watermarks and offsets from where the last transactions left them.
    pub fn kill_between_batches(file: &Path, stage: &str, times: usize) {
        let on_time = |f: Option<serde_json::Value>| {
            f.is_some_and(|f| {
                let ms = |k: &str| f[k].as_u64().unwrap_or(u64::MAX);
                f["pending_batches"].as_u64() == Some(0)
                    && ms("processing_ms").saturating_add(ms("scheduling_delay_ms")) <= 300
            })
        };
        for _ in 0..times {
            let mut w = WorkerProc::spawn(file, &[]);
            let deadline = Instant::now() + Duration::from_secs(90);
            while !(w.completed("input") >= 2
                && w.completed(stage) >= w.completed("input")
                && on_time(w.last_completed("input"))
                && on_time(w.last_completed(stage)))
            {
                assert!(
                    Instant::now() < deadline,
                    "two batches of each stage, the last on time: {}",
                    w.all_logs()
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            w.signal("KILL");
            w.wait_exit(Duration::from_secs(10))
                .expect("killed worker exits");
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
    worker_of(broker, yaml, 0, 1)
}

/// As [`worker_zero_of_one`], as worker `ordinal` of `workers`.
pub fn worker_of(
    broker: &Broker,
    yaml: &str,
    ordinal: u32,
    workers: u32,
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
        ordinal,
        workers,
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
