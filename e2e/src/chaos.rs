//! The kill test harness behind `e2e/chaos.sh`: a broker on 127.0.0.1 (or the user's, with
//! `--bootstrap`), a producer of N numbered records, a worker process running a stateful job
//! (a running count per key, `n % 1000`), and a loop that kill -9's the worker at random
//! moments and starts it again. At the end the output and the state are checked against what a
//! run without kills gives: each key's count is the number of inputs with that key, which a
//! run without kills produces by construction.
//!
//! - `postgres`: the job's table holds one row per key (upsert); `weir_state` holds the state.
//!   lost/duplicated compare each row's count with the expected count; state_equal compares
//!   the decoded `weir_state` with the expected counts.
//! - `kafka`: the exactly-once Kafka sink; the output topic holds every update of every key,
//!   read with read_committed.
//!
//! With `overlap`, each new worker starts while the previous one still runs (two workers with
//! one ordinal: an older pod that Kubernetes already replaced), and the older one is killed
//! only after the newer one has finished a batch. The newer worker's takeover must fence the
//! older one: Kafka fences its transactional producers, PostgreSQL its partition epochs.
//! librdkafka's mock cluster does not fence (DESIGN.md), so there only `lost=0` is expected.
//!   duplicated counts update records that repeat one already seen (a replayed batch);
//!   lost compares each key's last update with the expected count; state_equal compares those
//!   last updates, which are the state the job published, with the expected counts.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rand::Rng;
use rdkafka::ClientConfig;
use weir_contract::value::Val;

use weir_testkit::broker::create_topics;
use weir_testkit::pg::PgServer;
use weir_testkit::{kafka, Broker, Killed};

/// Distinct keys of the stateful job: inputs `n` count under `n % KEYS`.
pub const KEYS: u64 = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkKind {
    Kafka,
    Postgres,
}

impl std::str::FromStr for SinkKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "kafka" => Ok(Self::Kafka),
            "postgres" => Ok(Self::Postgres),
            other => bail!("--sink {other:?}: expected kafka or postgres"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    pub sink: SinkKind,
    pub records: u64,
    pub kills: u32,
    /// An already-running Kafka; without it the harness starts the mock cluster process.
    pub bootstrap: Option<String>,
    /// The `weir-worker` binary.
    pub worker: PathBuf,
    /// Where the worker's logs go, one file per start.
    pub log_dir: Option<PathBuf>,
    /// Start each worker while the previous one still runs, instead of after killing it.
    pub overlap: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub lost: u64,
    pub duplicated: u64,
    pub state_equal: bool,
    pub partitions: i32,
    pub kills: u32,
    pub seconds: u64,
    /// Whether the broker fences an older transactional producer (not the mock cluster).
    pub broker_fences: bool,
    /// Older workers that stopped by themselves (fenced) before they were killed.
    pub fenced_exits: u32,
    /// Per start after a kill: milliseconds from the kill to the next worker's first batch
    /// with records.
    pub recovery_ms: Vec<u64>,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "lost={} duplicated={} state_equal={}",
            self.lost, self.duplicated, self.state_equal
        )
    }
}

/// Partitions for `records`: a divisor of [`KEYS`] (so each key lives in one partition, where
/// its state is), enough that the mock cluster's ~5 MiB per partition keeps every record.
fn partitions(records: u64) -> i32 {
    let needed = records.div_ceil(25_000).max(4);
    [
        4u64, 5, 8, 10, 20, 25, 40, 50, 100, 125, 200, 250, 500, 1000,
    ]
    .into_iter()
    .find(|d| *d >= needed)
    .unwrap_or(1000) as i32
}

/// The count each key ends with: the number of inputs `n < records` with `n % KEYS == key`.
pub fn expected(records: u64) -> HashMap<u64, i64> {
    (0..KEYS.min(records))
        .map(|k| (k, (records / KEYS + u64::from(k < records % KEYS)) as i64))
        .collect()
}

/// A worker process; its log lines go to a file and its finished batches are counted.
struct Worker {
    proc: Killed,
    batches: Arc<AtomicU64>,
}

/// Waits until `w` finished a batch that read records, for at most `within`; how long that
/// took, or `None` when it did not happen in time.
fn first_batch(w: &mut Worker, k: u32, within: Duration) -> Result<Option<Duration>> {
    let started = Instant::now();
    while w.batches.load(Ordering::Relaxed) == 0 {
        if let Some(s) = w.exited()? {
            bail!("worker {k} exited ({s}) before its first batch; see its log");
        }
        if started.elapsed() > within {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(Some(started.elapsed()))
}

impl Worker {
    fn spawn(o: &Options, job: &Path, env: &[(String, String)], n: u32) -> Result<Worker> {
        let mut cmd = Command::new(&o.worker);
        cmd.arg("run")
            .arg(job)
            .args(["--http-addr", "127.0.0.1:0"])
            .env("WEIR_LOG_FORMAT", "json")
            .env("WEIR_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().context("starting the worker")?;
        let err = child.stderr.take().context("worker stderr")?;
        let batches = Arc::new(AtomicU64::new(0));
        let counter = batches.clone();
        let mut file = match &o.log_dir {
            Some(d) => Some(std::fs::File::create(d.join(format!("worker-{n:03}.log")))?),
            None => None,
        };
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                // Batches that read records: a kill after one lands while work is in flight.
                if line.contains("batch completed") && !line.contains("\"records_in\":0,") {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(f) = &mut file {
                    let _ = writeln!(f, "{line}");
                }
            }
        });
        Ok(Worker {
            proc: Killed::new(child),
            batches,
        })
    }

    fn exited(&mut self) -> Result<Option<std::process::ExitStatus>> {
        Ok(self.proc.child().try_wait()?)
    }

    fn kill9(&mut self) -> Result<()> {
        self.proc.child().kill()?;
        self.proc.child().wait()?;
        Ok(())
    }

    fn terminate(&mut self, within: Duration) -> Result<std::process::ExitStatus> {
        let pid = self.proc.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.exited()? {
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!("the worker did not exit within {within:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The group's committed offsets, asked again while the broker cannot answer yet (an offset
/// fetch answers UNSTABLE_OFFSET_COMMIT while a killed worker's transaction is still open).
fn group_offsets(
    client: &ClientConfig,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Result<Vec<i64>> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match kafka::committed(client, group, topic, partitions) {
            Ok(o) => return Ok(o),
            Err(e) if Instant::now() < deadline => {
                eprintln!("weir-chaos: reading the group's offsets failed ({e}); asking again");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => return Err(anyhow!(e).context("reading the group's offsets for 120 s")),
        }
    }
}

/// Client settings for the broker at `bootstrap`.
fn client(bootstrap: &str) -> ClientConfig {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .clone()
}

/// Compares final counts per key with the expected ones: (lost, duplicated).
fn compare(got: &HashMap<u64, i64>, want: &HashMap<u64, i64>) -> (u64, u64) {
    let mut lost = 0u64;
    let mut dup = 0u64;
    for (k, e) in want {
        let g = got.get(k).copied().unwrap_or(0);
        lost += (e - g).max(0) as u64;
        dup += (g - e).max(0) as u64;
    }
    for (k, g) in got {
        if !want.contains_key(k) {
            dup += (*g).max(0) as u64;
        }
    }
    (lost, dup)
}

/// Runs the harness.
///
/// # Errors
/// A part that would not start, or a worker that did not finish the input in time.
pub fn run(o: &Options) -> Result<Outcome> {
    let started = Instant::now();
    let id: u32 = rand::rng().random();
    let input = format!("chaos-in-{id:08x}");
    let output = format!("chaos-out-{id:08x}");
    let group = format!("chaos-{id:08x}");
    let changelog = weir_contract::stages::changelog_topic(&group);
    let table = format!("chaos_{id:08x}");
    let parts = partitions(o.records);
    if let Some(d) = &o.log_dir {
        std::fs::create_dir_all(d)?;
    }

    let mut topics = vec![(input.as_str(), parts)];
    if o.sink == SinkKind::Kafka {
        topics.push((output.as_str(), parts));
        topics.push((changelog.as_str(), parts));
    }
    let (_mock, bootstrap) = match &o.bootstrap {
        Some(b) => {
            create_topics(&client(b), &topics)?;
            (None, b.clone())
        }
        None => {
            let mock = Broker::mock_process(&o.worker, &topics)?;
            let b = mock.bootstrap();
            (Some(mock), b)
        }
    };
    let pg = match o.sink {
        SinkKind::Postgres => Some(PgServer::start().ok_or_else(|| {
            anyhow!(
                "no PostgreSQL server binaries: run scripts/install-tools.sh or set WEIR_PG_BIN"
            )
        })?),
        SinkKind::Kafka => None,
    };
    let mut env = Vec::new();
    let sink = match &pg {
        Some(pg) => {
            env.push(("WEIR_PG_URL".to_string(), pg.url()));
            format!("{{postgres: {{table: {table}, mode: upsert}}}}")
        }
        None => format!("{{kafka: {{topic: {output}, delivery: exactlyOnce}}}}"),
    };
    // Spread the input over the kill phase, so kills land while there is work in flight.
    let per_partition = o.records / parts as u64;
    let rate = (per_partition as f64 / (f64::from(o.kills) * 1.2 + 1.0)).max(200.0) as u64;
    let yaml = format!(
        r#"batchInterval: 200ms
source:
  kafka: {{bootstrapServers: "{bootstrap}", topics: [{input}], startingOffsets: earliest, groupId: {group}, maxRatePerPartition: {rate}, backpressure: {{enabled: false}}}}
  format: json
# Each key lives in one input partition by construction (n % KEYS over a divisor of KEYS
# partitions), so the state step keeps per-partition state: no shuffle between the kills.
pipeline:
  - {{id: by-key, keyBy: "value.n % {KEYS}"}}
  - {{id: counts, perPartition: true, state: {{initial: '0', update: 'state + size(values)'}}}}
sink: {sink}
"#
    );
    let dir = tempfile::tempdir()?;
    let job = dir.path().join("chaos.yaml");
    std::fs::write(&job, yaml)?;

    let producer = {
        let (b, t, n) = (bootstrap.clone(), input.clone(), o.records);
        std::thread::spawn(move || {
            let config = client(&b)
                .set("enable.idempotence", "true")
                .set("queue.buffering.max.messages", "500000")
                .clone();
            kafka::produce_numbered(&config, &t, parts, 0, n)
        })
    };

    let mut rng = rand::rng();
    let mut recovery_ms = Vec::new();
    let mut fenced_exits = 0;
    // The worker that runs now; with `overlap` it is killed only after its successor began.
    let mut older: Option<Worker> = None;
    let mut killed_at: Option<Instant> = None;
    for k in 0..=o.kills {
        let mut w = Worker::spawn(o, &job, &env, k)?;
        // Until it read something, or for a while when there is nothing left to read.
        let took = first_batch(&mut w, k, Duration::from_secs(10))?;
        if let (Some(at), Some(_)) = (killed_at.take(), took) {
            recovery_ms.push(at.elapsed().as_millis() as u64);
        }
        if let Some(mut prev) = older.take() {
            // Both run now; the newer one's takeover has fenced the older where the broker can.
            std::thread::sleep(Duration::from_millis(rng.random_range(0..1500)));
            if prev.exited()?.is_some() {
                fenced_exits += 1;
            }
            prev.kill9()?;
        }
        if k == o.kills {
            older = Some(w);
            break;
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..1500)));
        if o.overlap {
            older = Some(w);
        } else {
            w.kill9()?;
            killed_at = Some(Instant::now());
        }
    }
    producer
        .join()
        .map_err(|_| anyhow!("the producer panicked"))??;

    let mut last = older.context("the last worker")?;
    let reader = client(&bootstrap)
        .set("isolation.level", "read_committed")
        .clone();
    let ends = kafka::high_watermarks(&reader, &input, parts)?;
    let total: i64 = ends.iter().sum();
    let deadline = Instant::now() + Duration::from_secs(300 + o.records / 5_000);
    loop {
        let at: Vec<i64> = match &pg {
            Some(pg) => {
                let mut stored = vec![-1; parts as usize];
                for r in pg.client().query(
                    "SELECT partition, until_offset FROM weir_offsets WHERE job = $1 AND topic = $2",
                    &[&group, &input],
                )? {
                    let p: i32 = r.get(0);
                    if let Some(s) = stored.get_mut(p as usize) {
                        *s = r.get(1);
                    }
                }
                stored
            }
            None => group_offsets(&reader, &group, &input, parts)?,
        };
        if at == ends {
            break;
        }
        if let Some(s) = last.exited()? {
            bail!("the last worker exited ({s}) at offsets {at:?} of {ends:?}");
        }
        if Instant::now() > deadline {
            bail!("the last worker did not reach {ends:?} (total {total}); it is at {at:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = last.terminate(Duration::from_secs(30))?;
    if !status.success() {
        bail!("the last worker exited with {status} on SIGTERM");
    }

    let want = expected(o.records);
    let (lost, duplicated, state_equal) = match &pg {
        Some(pg) => {
            let mut client = pg.client();
            let mut got = HashMap::new();
            for r in client.query(&format!("SELECT key, value::text FROM {table}"), &[])? {
                let k: String = r.get(0);
                let v: String = r.get(1);
                got.insert(k.parse::<u64>()?, v.parse::<i64>()?);
            }
            let mut state = HashMap::new();
            for r in client.query(
                "SELECT key, value FROM weir_state WHERE job = $1 AND step = 'counts'",
                &[&group],
            )? {
                let k = weir_contract::value::codec::decode(r.get(0))?;
                let v = weir_contract::value::codec::decode(r.get(1))?;
                // A state step keeps the key's state and when it was last seen.
                match (k, v.field("state")) {
                    (Val::Int(k), Some(Val::Int(v))) if k >= 0 => {
                        state.insert(k as u64, *v);
                    }
                    other => bail!("unexpected state in weir_state: {other:?}"),
                }
            }
            let (lost, dup) = compare(&got, &want);
            (lost, dup, state == want)
        }
        None => {
            let mut seen = HashSet::new();
            let mut last_value = HashMap::new();
            let mut dup_records = 0u64;
            for r in kafka::read_all(&reader, &output)? {
                let (k, v) = (r.key, r.value);
                let k: u64 = k.context("an output record without a key")?.parse()?;
                let v: i64 = serde_json::from_slice(&v)?;
                if !seen.insert((k, v)) {
                    dup_records += 1;
                }
                last_value.insert(k, v);
            }
            let (lost, _) = compare(&last_value, &want);
            (lost, dup_records, last_value == want)
        }
    };
    Ok(Outcome {
        lost,
        duplicated,
        state_equal,
        partitions: parts,
        kills: o.kills,
        seconds: started.elapsed().as_secs(),
        // The harness's own broker is the mock cluster, which does not fence.
        broker_fences: o.bootstrap.is_some() || o.sink == SinkKind::Postgres,
        fenced_exits,
        recovery_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_compare_key_by_key() {
        let want = expected(2_500);
        assert_eq!(want.len(), 1000);
        assert_eq!(want[&0], 3);
        assert_eq!(want[&499], 3);
        assert_eq!(want[&500], 2);
        assert_eq!(want.values().sum::<i64>(), 2_500);
        let mut got = want.clone();
        got.insert(1, 1);
        got.insert(2, 5);
        got.insert(5000, 1);
        assert_eq!(compare(&got, &want), (2, 3));
        assert_eq!(partitions(20_000), 4);
        assert_eq!(partitions(1_000_000), 40);
    }
}
