//! Filling the tables of a stage's join steps. A topic table is read from its start when the
//! engine connects (that is its restore: the topic is its own changelog) and followed to its
//! end before every batch, so a record sees every row written before its batch was planned. A
//! file table is reread before a batch when the file changed (a ConfigMap update swaps the
//! mounted file); a change that does not parse is logged and the table kept as it was.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use tracing::{info, warn};

use crate::client::{self, Identity, SourceContext};
use crate::error::{Error, Result};
use crate::expr::Val;
use crate::pipeline::join::{key_text, Table, ALWAYS};
use crate::pipeline::Pipeline;
use crate::plan::TopicPartition;
use crate::record::MAX_JSON_DEPTH;
use crate::spec::{JobSpec, Partitioner, TableSpec};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a catch-up waits for the table's records before the batch is not planned (and
/// tried again the next interval).
const STALL: Duration = Duration::from_secs(30);
/// Largest file table read: a file table is reference data, not a dataset.
const MAX_FILE_BYTES: u64 = 64 << 20;
const DEFAULT_HISTORY_MS: i64 = 3_600_000;

/// The tables of one stage's join steps, with where each is filled from.
pub struct Tables {
    loaders: Vec<Loader>,
}

struct Loader {
    step: Arc<str>,
    table: Arc<Table>,
    from: From,
}

enum From {
    Topic {
        consumer: BaseConsumer<SourceContext>,
        topic: String,
        /// The next offset to read, per partition.
        next: HashMap<i32, i64>,
        history_ms: i64,
        /// A partitioned table's partitioner and partition count: every row read must be in
        /// the partition it puts the row's key in, as the shuffle before the join assumes.
        check: Option<(Partitioner, i32)>,
    },
    File {
        path: PathBuf,
        /// The file's modification time and size when last read.
        seen: Option<(SystemTime, u64)>,
    },
}

impl Tables {
    /// Opens every join step's table and reads it whole: a partitioned table only in the
    /// partitions the worker owns of its input (the repartition topic that copies the table's
    /// partitioning).
    ///
    /// # Errors
    /// A table topic that does not exist or cannot be read, a table file that cannot be read
    /// or parsed.
    pub fn open(
        spec: &JobSpec,
        id: &Identity,
        group: &str,
        pipeline: &Pipeline,
        owned: &[TopicPartition],
    ) -> Result<Tables> {
        let mut loaders = Vec::new();
        for (step, table) in pipeline.tables() {
            let Some(t) = spec
                .pipeline
                .iter()
                .find(|s| *s.id == *step)
                .and_then(|s| s.join.as_ref())
                .map(|j| &j.table)
            else {
                continue;
            };
            let from = match (&t.topic, t.file_path()) {
                (Some(topic), _) => open_topic(spec, t, topic, id, group, &step, owned)?,
                (None, Some(path)) => From::File { path, seen: None },
                (None, None) => continue,
            };
            let mut loader = Loader { step, table, from };
            loader.catch_up(true)?;
            match &loader.from {
                From::Topic {
                    next,
                    check: Some(_),
                    ..
                } => {
                    let mut held: Vec<i32> = next.keys().copied().collect();
                    held.sort_unstable();
                    info!(step = %loader.step, rows = loader.table.len(), partitions = ?held, "join table loaded (its partitions of this worker)");
                }
                _ => info!(step = %loader.step, rows = loader.table.len(), "join table loaded"),
            }
            loaders.push(loader);
        }
        Ok(Tables { loaders })
    }

    /// Brings every table up to date: a topic to its current end, a changed file reread.
    ///
    /// # Errors
    /// A table topic that did not answer (retriable: the batch is not planned).
    pub fn catch_up(&mut self) -> Result<()> {
        self.loaders.iter_mut().try_for_each(|l| l.catch_up(false))
    }
}

fn open_topic(
    spec: &JobSpec,
    t: &TableSpec,
    topic: &str,
    id: &Identity,
    group: &str,
    step: &str,
    owned: &[TopicPartition],
) -> Result<From> {
    let mut config = client::consumer(&spec.source.kafka, id, &format!("{group}-{step}-table"));
    config.set("client.id", id.client_id("table"));
    if let Some(b) = &t.bootstrap_servers {
        config.set("bootstrap.servers", b);
    }
    let consumer: BaseConsumer<SourceContext> = config
        .create_with_context(SourceContext::default())
        .map_err(Error::kafka("creating the join table reader"))?;
    let meta = consumer
        .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
        .map_err(Error::kafka("reading the join table's metadata"))?;
    let partitions: Vec<i32> = meta
        .topics()
        .iter()
        .filter(|m| m.name() == topic && m.error().is_none())
        .flat_map(|m| m.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(Error::Fatal(format!(
            "pipeline step {step:?}: the join table's topic {topic:?} does not exist; create it (a compacted topic whose records are the table's rows)"
        )));
    }
    let count = i32::try_from(partitions.len()).unwrap_or(i32::MAX);
    let check = t
        .partitioned
        .then(|| (t.partitioner.unwrap_or_default(), count));
    let partitions = if t.partitioned {
        // The stage reads only the repartition topic, whose partition p holds the records
        // whose join keys the table keeps in its partition p (the stages checked, just before,
        // that it has the table's partition count).
        owned.iter().map(|tp| tp.partition).collect()
    } else {
        partitions
    };
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .map_err(Error::kafka("building a partition list"))?;
    }
    consumer
        .assign(&tpl)
        .map_err(Error::kafka("assigning the join table"))?;
    Ok(From::Topic {
        consumer,
        topic: topic.to_string(),
        next: partitions.iter().map(|&p| (p, 0)).collect(),
        history_ms: t.history.map_or(DEFAULT_HISTORY_MS, |h| h.as_millis_i64()),
        check,
    })
}

impl Loader {
    fn catch_up(&mut self, first: bool) -> Result<()> {
        match &mut self.from {
            From::Topic {
                consumer,
                topic,
                next,
                history_ms,
                check,
            } => {
                let mut ends = HashMap::new();
                for (&p, &at) in next.iter() {
                    let (low, high) = consumer
                        .fetch_watermarks(topic, p, REQUEST_TIMEOUT)
                        .map_err(Error::kafka("reading the join table's ends"))?;
                    if high > at.max(low) {
                        ends.insert(p, high);
                    }
                }
                let (read, skipped) =
                    follow(consumer, topic, next, ends, &self.table, *check, &self.step)?;
                if skipped > 0 {
                    warn!(step = %self.step, topic = %topic, skipped, "join table records skipped: a key that is not UTF-8 text or a value that is not JSON");
                }
                if read > 0 && !first {
                    tracing::debug!(step = %self.step, read, rows = self.table.len(), "join table followed");
                }
                self.table.prune(*history_ms);
                Ok(())
            }
            From::File { path, seen } => {
                let meta = std::fs::metadata(&*path);
                let now = meta
                    .as_ref()
                    .ok()
                    .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
                if now.is_some() && now == *seen {
                    return Ok(());
                }
                match read_file(path) {
                    Ok(rows) => {
                        let n = rows.len();
                        self.table.replace(rows);
                        *seen = now;
                        if !first {
                            info!(step = %self.step, file = %path.display(), rows = n, "join table file changed: reread");
                        }
                        Ok(())
                    }
                    Err(why) if first => Err(Error::Fatal(format!(
                        "pipeline step {:?}: join table file {}: {why}",
                        self.step,
                        path.display()
                    ))),
                    Err(why) => {
                        warn!(step = %self.step, file = %path.display(), error = %why, "join table file changed but cannot be read; keeping the rows read before");
                        *seen = now;
                        Ok(())
                    }
                }
            }
        }
    }
}

/// Reads the table topic's partitions in `ends` up to those offsets into `table`; returns the
/// records read and those skipped.
fn follow(
    consumer: &BaseConsumer<SourceContext>,
    topic: &str,
    next: &mut HashMap<i32, i64>,
    mut ends: HashMap<i32, i64>,
    table: &Table,
    check: Option<(Partitioner, i32)>,
    step: &str,
) -> Result<(u64, u64)> {
    let (mut read, mut skipped) = (0u64, 0u64);
    let mut last = Instant::now();
    while !ends.is_empty() {
        if last.elapsed() > STALL {
            return Err(Error::Unreachable {
                op: "reading the join table",
                why: format!(
                    "topic {topic:?} sent no record for {STALL:?} with partitions {:?} unfinished",
                    ends.keys().collect::<Vec<_>>()
                )
                .into(),
                source: Box::new(KafkaError::NoMessageReceived),
            });
        }
        let m = match consumer.poll(Duration::from_millis(100)) {
            None => continue,
            // An end reached by an earlier catch-up may be reported only now: the partition
            // is done when its position is at the end asked for.
            Some(Err(KafkaError::PartitionEOF(p))) => {
                if ends
                    .get(&p)
                    .is_some_and(|&end| next.get(&p).is_some_and(|&n| n >= end))
                {
                    ends.remove(&p);
                }
                continue;
            }
            Some(Err(e)) => return Err(Error::kafka("reading the join table")(e)),
            Some(Ok(m)) => m,
        };
        last = Instant::now();
        let (p, offset) = (m.partition(), m.offset());
        next.insert(p, offset + 1);
        if ends.get(&p).is_some_and(|&end| offset + 1 >= end) {
            ends.remove(&p);
        }
        read += 1;
        let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else {
            skipped += 1;
            continue;
        };
        if let Some((partitioner, n)) = check {
            let want = crate::partitioner::partition(partitioner, key.as_bytes(), n);
            if want != p {
                return Err(Error::Fatal(format!(
                    "pipeline step {step:?}: partition {p} of the join table {topic:?} holds key {key:?} (offset {offset}), which the {partitioner} partitioner puts in partition {want}: the table was not written with that partitioner, so a record could miss its row; set join.table.partitioner to the one its producers use (murmur2 for Java clients and Kafka Streams, crc32 for librdkafka's default), or remove partitioned to hold the table whole on every worker"
                )));
            }
        }
        let at = m.timestamp().to_millis().unwrap_or(ALWAYS);
        match m.payload() {
            None => table.put(key, at, None),
            Some(bytes) => match Val::from_json(bytes, MAX_JSON_DEPTH) {
                Ok(row) => table.put(key, at, Some(row)),
                Err(_) => skipped += 1,
            },
        }
    }
    Ok((read, skipped))
}

/// A file's rows: a JSON object of key to row, a JSON array of keys, or one key per line.
fn read_file(path: &std::path::Path) -> std::result::Result<HashMap<Arc<str>, Val>, String> {
    let len = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    if len > MAX_FILE_BYTES {
        return Err(format!("{len} bytes; the limit is {MAX_FILE_BYTES}: keep a file table to reference data, or use a topic"));
    }
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let v = Val::from_json(trimmed.as_bytes(), MAX_JSON_DEPTH)
            .map_err(|e| format!("not valid JSON: {e}"))?;
        return match v {
            Val::Map(m) => Ok(m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
            Val::List(keys) => keys
                .iter()
                .map(|k| {
                    key_text(k)
                        .map(|k| (Arc::from(&*k), Val::Bool(true)))
                        .ok_or_else(|| {
                            format!(
                                "a key of the array is {}, not text or a number",
                                k.type_name()
                            )
                        })
                })
                .collect(),
            _ => Err("neither an object of rows nor an array of keys".into()),
        };
    }
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| (Arc::from(l), Val::Bool(true)))
        .collect())
}
