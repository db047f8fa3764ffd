//! The embedded default: librdkafka's mock cluster in-process, fed with sample records, so a
//! job runs on a laptop with no broker and no cluster.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rand::seq::IndexedRandom;
use rand::Rng;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use rdkafka::ClientConfig;
use tracing::info;

use crate::error::{Error, Result};
use crate::spec::{Format, JobFile};

/// Partitions of each topic the embedded cluster creates.
pub const PARTITIONS: i32 = 4;

/// Sample records per second the generator writes.
pub const RATE: u32 = 2_000;

const WORDS: &[&str] = &[
    "stream",
    "batch",
    "offset",
    "kafka",
    "weir",
    "window",
    "state",
    "record",
    "partition",
    "lag",
    "the",
    "a",
    "of",
    "and",
];
const PAGES: &[&str] = &["/", "/home", "/pricing", "/docs", "/blog", "/signup"];

pub struct Embedded {
    cluster: MockCluster<'static, DefaultProducerContext>,
    stop: Arc<AtomicBool>,
    generator: Option<JoinHandle<()>>,
}

impl Embedded {
    /// Starts the mock cluster, creates the job's topics, points the job at it, and starts
    /// writing sample records in the job's input format.
    ///
    /// # Errors
    /// When the mock cluster cannot start.
    pub fn start(job: &mut JobFile) -> Result<Embedded> {
        let cluster =
            MockCluster::new(1).map_err(Error::kafka("starting the embedded mock cluster"))?;
        let bootstrap = cluster.bootstrap_servers();
        let create = |t: &str, n| {
            cluster
                .create_topic(t, n, 1)
                .map_err(Error::kafka("creating a topic"))
        };
        for t in &job.spec.source.kafka.topics {
            create(t, PARTITIONS)?;
        }
        if let Some(k) = &mut job.spec.sink.kafka {
            create(&k.topic, PARTITIONS)?;
            k.bootstrap_servers = None;
        }
        if let Some(d) = &job.spec.dead_letter {
            create(&d.topic, 1)?;
        }
        let mut tables = Vec::new();
        for j in job.spec.pipeline.iter_mut().filter_map(|s| s.join.as_mut()) {
            if let Some(t) = &j.table.topic {
                create(t, PARTITIONS)?;
                tables.push(t.clone());
                j.table.bootstrap_servers = None;
            }
        }
        // The topics workers create for themselves: this cluster cannot create topics through
        // the admin API.
        for stage in crate::stages::split(job) {
            let s = &stage.job.spec;
            // A pipeline that does not compile fails at connect, with its reason.
            let stateful =
                crate::pipeline::Pipeline::compile(s).is_ok_and(|p| !p.state_types().is_empty());
            if stateful {
                let group = s.group_id(&job.namespace, &job.name);
                create(&crate::changelog::topic_name(&group), PARTITIONS)?;
            }
            if let Some(t) = &stage.writes {
                create(t, PARTITIONS)?;
            }
        }
        let spec = &mut job.spec;
        spec.source.kafka.bootstrap_servers = bootstrap.clone();
        info!(bootstrap = %bootstrap, topics = ?spec.source.kafka.topics, "embedded mock cluster started");

        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("linger.ms", "5")
            .create()
            .map_err(Error::kafka("creating the sample producer"))?;
        for t in &tables {
            write_users(&producer, t)?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let topics = spec.source.kafka.topics.clone();
        let format = spec.source.format;
        let flag = stop.clone();
        let generator = std::thread::spawn(move || generate(&producer, &topics, format, &flag));
        Ok(Embedded {
            cluster,
            stop,
            generator: Some(generator),
        })
    }

    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(g) = self.generator.take() {
            let _ = g.join();
        }
    }
}

/// Plans of the sample users, for a join table.
const PLANS: &[&str] = &["free", "pro", "team"];

/// A join table's sample rows: the generator's users `u0`..`u39` (`u40`..`u49` have no row)
/// with a name and a plan, written an hour ago so that views of any sample time find them.
fn write_users(producer: &BaseProducer, topic: &str) -> Result<()> {
    let at = chrono::Utc::now().timestamp_millis() - 3_600_000;
    for u in 0..40 {
        let key = format!("u{u}");
        let row = serde_json::json!({"name": format!("User {u}"), "plan": PLANS[u % PLANS.len()]})
            .to_string();
        producer
            .send(BaseRecord::to(topic).key(&key).payload(&row).timestamp(at))
            .map_err(|(e, _)| Error::kafka("writing sample table rows")(e))?;
    }
    producer
        .flush(Duration::from_secs(10))
        .map_err(Error::kafka("writing sample table rows"))?;
    info!(topic, rows = 40, "sample join table written");
    Ok(())
}

/// One sample record; about one in 500 is malformed, to show the dead-letter path. A JSON
/// sample carries its own time (`ts`, RFC 3339): up to 3 s before now, so records come out of
/// order, and one in 40 from 20 to 60 s before, late for a watermark of a few seconds.
fn sample(rng: &mut impl Rng, format: Format, n: u64) -> Vec<u8> {
    let broken = n % 500 == 499;
    match format {
        Format::Text if broken => vec![0xc3, 0x28],
        Format::Text => {
            let len = rng.random_range(3..9);
            (0..len)
                .map(|_| *WORDS.choose(rng).unwrap_or(&"weir"))
                .collect::<Vec<_>>()
                .join(" ")
                .into_bytes()
        }
        Format::Json if broken => b"{\"page\": \"/home\", ".to_vec(),
        Format::Json => serde_json::json!({
            "page": PAGES.choose(rng).unwrap_or(&"/"),
            "user": format!("u{}", rng.random_range(0..50)),
            "ms": rng.random_range(5..900),
            "ts": sample_time(rng),
        })
        .to_string()
        .into_bytes(),
        Format::Bytes | Format::Avro | Format::Protobuf | Format::Shuffle => {
            (0..16).map(|_| rng.random()).collect()
        }
    }
}

fn sample_time(rng: &mut impl Rng) -> String {
    let behind = if rng.random_range(0..40) == 0 {
        rng.random_range(20_000..60_000)
    } else {
        rng.random_range(0..3_000)
    };
    let t = chrono::Utc::now() - chrono::Duration::milliseconds(behind);
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn generate(producer: &BaseProducer, topics: &[String], format: Format, stop: &AtomicBool) {
    let mut rng = rand::rng();
    let mut n = 0u64;
    let tick = Duration::from_millis(100);
    let per_tick = u64::from(RATE / 10);
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..per_tick {
            let payload = sample(&mut rng, format, n);
            let key = format!("k{}", n % 64);
            let topic = &topics[(n % topics.len() as u64) as usize];
            // A full local queue only delays samples; the generator is best effort.
            let _ = producer.send(BaseRecord::to(topic).key(&key).payload(&payload));
            n += 1;
        }
        producer.poll(Duration::ZERO);
        std::thread::sleep(tick);
    }
    let _ = producer.flush(Duration::from_secs(5));
}

/// `weir-worker mock-kafka`: hosts a mock cluster on a loopback port for other processes
/// (multi-process tests, the drain benchmark) until stdin closes or the process is signalled.
///
/// # Errors
/// When the cluster cannot start or a topic spec is malformed.
pub fn host_mock_cluster(brokers: i32, topics: &[String]) -> Result<()> {
    let cluster = MockCluster::new(brokers).map_err(Error::kafka("starting the mock cluster"))?;
    for t in topics {
        let (name, parts) = match t.split_once(':') {
            Some((n, p)) => (
                n,
                p.parse::<i32>().map_err(|_| {
                    Error::Fatal(format!(
                        "--topic {t:?}: partitions must be a number, e.g. lines:8"
                    ))
                })?,
            ),
            None => (t.as_str(), 1),
        };
        // librdkafka asserts on these (an abort, not an error).
        if name.is_empty() || !(1..=10_000).contains(&parts) {
            return Err(Error::Fatal(format!(
                "--topic {t:?}: give a topic name and 1 to 10000 partitions, e.g. lines:8"
            )));
        }
        cluster
            .create_topic(name, parts, 1)
            .map_err(Error::kafka("creating a topic"))?;
    }
    println!("bootstrap.servers={}", cluster.bootstrap_servers());
    use std::io::{BufRead, Write};
    let _ = std::io::stdout().flush();
    // Block until stdin closes: the parent process owns our lifetime.
    for line in std::io::stdin().lock().lines() {
        if line.is_err() {
            break;
        }
    }
    Ok(())
}
