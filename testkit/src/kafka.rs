//! A test's own Kafka clients: write numbered or raw records, read a topic back to its
//! current end, and read a group's commits and a topic's ends. Each takes the client
//! settings to start from (`Broker::client`, or a user's bootstrap), so one code path serves
//! the mock cluster, tansu and a real cluster.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::{Error, Result};

const TIMEOUT: Duration = Duration::from_secs(10);
/// A read_committed reader never sees the transaction marker that may end a partition, so a
/// read also ends when nothing has come for this long.
const READ_IDLE: Duration = Duration::from_secs(10);
const READ_DEADLINE: Duration = Duration::from_secs(120);

/// Produces records `{"n": i}` keyed by `i` for `i` in `start..start + n`, to partition
/// `i % partitions`, and waits until every one is acknowledged.
pub fn produce_numbered(
    client: &ClientConfig,
    topic: &str,
    partitions: i32,
    start: u64,
    n: u64,
) -> Result<()> {
    let p: BaseProducer = client.clone().set("linger.ms", "5").create()?;
    let (mut key, mut payload) = (String::new(), String::new());
    for i in start..start + n {
        key.clear();
        payload.clear();
        let _ = write!(key, "{i}");
        let _ = write!(payload, r#"{{"n":{i}}}"#);
        let part = (i % partitions as u64) as i32;
        // A full queue: serve the acknowledgements, then send again.
        while p
            .send(
                BaseRecord::to(topic)
                    .key(&key)
                    .payload(&payload)
                    .partition(part),
            )
            .is_err()
        {
            p.poll(Duration::from_millis(5));
        }
    }
    p.flush(Duration::from_secs(120))?;
    Ok(())
}

/// Produces raw payloads (no key) to one partition.
pub fn produce_raw(
    client: &ClientConfig,
    topic: &str,
    partition: i32,
    payloads: &[&[u8]],
) -> Result<()> {
    let p: BaseProducer = client.create()?;
    for payload in payloads {
        p.send(
            BaseRecord::<[u8], [u8]>::to(topic)
                .payload(payload)
                .partition(partition),
        )
        .map_err(|(e, _)| e)?;
    }
    p.flush(Duration::from_secs(30))?;
    Ok(())
}

/// A record read back.
#[derive(Debug, Clone)]
pub struct ReadRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    /// The key as it was written (`key` is it as text, lossily).
    pub key_bytes: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

/// Every record of `topic` up to its high watermarks as they were at the start, in order
/// within each partition. librdkafka reads read_committed unless `client` says otherwise.
pub fn read_all(client: &ClientConfig, topic: &str) -> Result<Vec<ReadRecord>> {
    let c: BaseConsumer = client
        .clone()
        .set("group.id", "weir-test-reader")
        .set("enable.auto.commit", "false")
        .create()?;
    let md = c.fetch_metadata(Some(topic), TIMEOUT)?;
    let parts = md.topics().first().map_or(0, |t| t.partitions().len()) as i32;
    let mut tpl = TopicPartitionList::new();
    let mut ends = Vec::new();
    let mut done = Vec::new();
    for p in 0..parts {
        let (low, high) = c.fetch_watermarks(topic, p, TIMEOUT)?;
        ends.push(high);
        done.push(high <= low);
        if high > low {
            tpl.add_partition_offset(topic, p, Offset::Offset(low))?;
        }
    }
    let mut out = Vec::new();
    if tpl.count() == 0 {
        return Ok(out);
    }
    c.assign(&tpl)?;
    let started = Instant::now();
    let mut idle = Instant::now();
    while !done.iter().all(|d| *d) {
        if started.elapsed() > READ_DEADLINE {
            return Err(Error::Failed(format!(
                "reading {topic} took over {READ_DEADLINE:?}"
            )));
        }
        let m = match c.poll(Duration::from_millis(100)) {
            Some(m) => m?,
            None if idle.elapsed() > READ_IDLE => break,
            None => continue,
        };
        idle = Instant::now();
        let p = m.partition() as usize;
        if m.offset() >= ends[p] {
            continue;
        }
        out.push(ReadRecord {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            key_bytes: m.key().map(<[u8]>::to_vec),
            value: m.payload().unwrap_or_default().to_vec(),
            headers: m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            let v = String::from_utf8_lossy(h.value.unwrap_or_default());
                            (h.key.to_string(), v.into_owned())
                        })
                        .collect()
                })
                .unwrap_or_default(),
        });
        if m.offset() + 1 >= ends[p] {
            done[p] = true;
        }
    }
    Ok(out)
}

/// The group's committed offsets for partitions `0..partitions` of `topic` (-1 when none).
pub fn committed(
    client: &ClientConfig,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Result<Vec<i64>> {
    let c: BaseConsumer = client
        .clone()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let r = c.committed_offsets(tpl, TIMEOUT)?;
    Ok((0..partitions)
        .map(|p| match r.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => -1,
        })
        .collect())
}

/// The high watermark (the offset the next record will get) of partitions `0..partitions`.
pub fn high_watermarks(client: &ClientConfig, topic: &str, partitions: i32) -> Result<Vec<i64>> {
    let c: BaseConsumer = client.create()?;
    (0..partitions)
        .map(|p| Ok(c.fetch_watermarks(topic, p, TIMEOUT)?.1))
        .collect()
}

/// Record `i` of the drain benchmark's backlog (`weir-bench produce`): 100 bytes of JSON, 1000
/// users and 50 pages, padded to size.
pub fn drain_record(i: u64) -> String {
    let head = format!(
        r#"{{"user":"u{}","page":"/p{}","n":{i},"pad":""#,
        i % 1000,
        i % 50
    );
    let pad = 100usize.saturating_sub(head.len() + 2);
    format!("{head}{}\"}}", "x".repeat(pad))
}
