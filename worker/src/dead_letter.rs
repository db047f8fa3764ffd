//! Records that could not be decoded or processed: sent to the dead-letter topic with the
//! reason in headers, or counted and logged. Either way the job goes on.
//!
//! A dead letter keeps the original record's key, value and headers. One the producer or the
//! broker refuses for its size is sent again reduced (its headers, the error, the start of its
//! value and a header saying it was cut): a dead-letter topic exists so that one bad record
//! cannot stop a job, so its own limits must not stop it either.

use std::sync::Arc;

use rdkafka::message::{Header, OwnedHeaders};
use tracing::warn;

use crate::client::Identity;
use crate::error::Result;
use crate::producer::{KafkaWriter, Refused, PRODUCER_MAX_MESSAGE_BYTES, REFUSED_PREFIX_BYTES};
use crate::spec::JobSpec;

/// Header names on dead-lettered records.
pub const H_ERROR: &str = "weir.error";
pub const H_STEP: &str = "weir.step";
pub const H_TOPIC: &str = "weir.source.topic";
pub const H_PARTITION: &str = "weir.source.partition";
pub const H_OFFSET: &str = "weir.source.offset";
/// Set on a reduced dead letter: why and how it was cut ("value 2097152 bytes, kept the
/// first 16384: ...").
pub const H_TRUNCATED: &str = "weir.truncated";

/// A dead letter larger than this is reduced before it is sent; the rest of the producer's
/// limit is room for headers and the record's framing.
const REDUCE_ABOVE: usize = PRODUCER_MAX_MESSAGE_BYTES - (64 << 10);

/// Dead letters logged per batch when there is no dead-letter topic; the rest are counted.
const LOGGED_PER_BATCH: usize = 10;

/// A record that failed, with its original bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub topic: Arc<str>,
    pub partition: i32,
    /// -1 for an aggregate result, which has no single source record.
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// The original record's headers, in order (none for an aggregate result).
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// The step that failed; `None` for a record that could not be decoded.
    pub step: Option<Arc<str>>,
    pub error: String,
}

pub struct DeadLetters {
    target: Option<(KafkaWriter, String)>,
}

impl DeadLetters {
    /// # Errors
    /// When the dead-letter producer cannot be created.
    pub fn new(spec: &JobSpec, id: &Identity) -> Result<Self> {
        let target = match &spec.dead_letter {
            Some(d) => Some((
                KafkaWriter::keeping_refused(
                    &spec.source.kafka.bootstrap_servers,
                    &spec.source.kafka,
                    id,
                    "dead-letter",
                )?,
                d.topic.clone(),
            )),
            None => None,
        };
        Ok(Self { target })
    }

    /// Sends (and waits for the acks of) a batch's dead letters, or logs them.
    ///
    /// A letter refused for its size is sent again reduced, and if that is refused too, as
    /// its headers alone; neither fails the batch.
    ///
    /// # Errors
    /// When the dead-letter topic did not acknowledge them for another reason; the batch is
    /// then replayed, since committing its offsets would lose these records.
    pub fn write(&mut self, letters: &[DeadLetter]) -> Result<()> {
        if letters.is_empty() {
            return Ok(());
        }
        match &mut self.target {
            Some((writer, topic)) => {
                for d in letters {
                    send(writer, topic, d)?;
                }
                writer.flush()?;
                for keep_value in [true, false] {
                    let refused = writer.take_refused();
                    if refused.is_empty() {
                        return Ok(());
                    }
                    for r in &refused {
                        warn!(topic = %r.topic, value_bytes = r.value_len, error = %r.error, "a dead letter was refused for its size; sending it reduced");
                        let (value, headers) = reduced(r, keep_value);
                        writer.send_raw(topic, r.key.as_deref(), value, headers)?;
                    }
                    writer.flush()?;
                }
                let left = writer.take_refused();
                match left.first() {
                    None => Ok(()),
                    Some(r) => Err(crate::error::Error::Sink(format!(
                        "{} dead letters were refused even reduced to their headers; first error: {}",
                        left.len(),
                        r.error
                    ))),
                }
            }
            None => {
                for d in letters.iter().take(LOGGED_PER_BATCH) {
                    warn!(topic = %d.topic, partition = d.partition, offset = d.offset, step = d.step.as_deref().unwrap_or("decode"), error = %d.error, "skipping a record (no deadLetter topic is set)");
                }
                if letters.len() > LOGGED_PER_BATCH {
                    warn!(
                        skipped = letters.len() - LOGGED_PER_BATCH,
                        "more records skipped in this batch"
                    );
                }
                Ok(())
            }
        }
    }
}

/// A refused dead letter's reduced form: its headers plus why it was cut, and the start of its
/// value (or, when even that was refused, no value and only Weir's headers).
fn reduced(r: &Refused, keep_value: bool) -> (Option<&[u8]>, OwnedHeaders) {
    let note = if keep_value {
        format!(
            "value {} bytes, kept the first {}: {}",
            r.value_len,
            r.prefix.len(),
            r.error
        )
    } else {
        format!(
            "value {} bytes and the original headers dropped: {}",
            r.value_len, r.error
        )
    };
    let mut h = OwnedHeaders::new_with_capacity(r.headers.len() + 1);
    for (k, v) in &r.headers {
        if (keep_value || k.starts_with("weir.")) && k != H_TRUNCATED {
            h = h.insert(Header {
                key: k,
                value: v.as_deref(),
            });
        }
    }
    h = h.insert(Header {
        key: H_TRUNCATED,
        value: Some(note.as_bytes()),
    });
    (keep_value.then_some(r.prefix.as_slice()), h)
}

/// Queues one dead letter: the original bytes and headers, with the error and where it came
/// from in Weir's headers. One too large for any producer's limit is reduced before it is sent
/// (in a transaction, a refusal would abort the whole transaction).
///
/// # Errors
/// When the record is refused.
pub fn send(writer: &mut KafkaWriter, topic: &str, d: &DeadLetter) -> Result<()> {
    let partition = d.partition.to_string();
    let offset = d.offset.to_string();
    let size = d.key.as_ref().map_or(0, Vec::len)
        + d.payload.as_ref().map_or(0, Vec::len)
        + d.headers
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
            .sum::<usize>();
    let payload = d.payload.as_deref().unwrap_or_default();
    let cut = size > REDUCE_ABOVE;
    let mut h = OwnedHeaders::new_with_capacity(d.headers.len() + 6);
    let mut kept_header_bytes = 0;
    for (k, v) in &d.headers {
        kept_header_bytes += k.len() + v.as_ref().map_or(0, Vec::len);
        // Reduced: original headers while they fit well inside the limit.
        if cut && kept_header_bytes > REDUCE_ABOVE / 2 {
            break;
        }
        h = h.insert(Header {
            key: k,
            value: v.as_deref(),
        });
    }
    let truncated;
    if cut {
        truncated = format!(
            "value {} bytes, kept the first {}: the dead letter would exceed the producer's limit of {} bytes",
            payload.len(),
            payload.len().min(REFUSED_PREFIX_BYTES),
            PRODUCER_MAX_MESSAGE_BYTES
        );
        h = h.insert(Header {
            key: H_TRUNCATED,
            value: Some(truncated.as_bytes()),
        });
    }
    h = h
        .insert(Header {
            key: H_ERROR,
            value: Some(d.error.as_bytes()),
        })
        .insert(Header {
            key: H_TOPIC,
            value: Some(d.topic.as_bytes()),
        })
        .insert(Header {
            key: H_PARTITION,
            value: Some(partition.as_bytes()),
        })
        .insert(Header {
            key: H_OFFSET,
            value: Some(offset.as_bytes()),
        });
    if let Some(step) = &d.step {
        h = h.insert(Header {
            key: H_STEP,
            value: Some(step.as_bytes()),
        });
    }
    let payload = if cut {
        d.payload
            .as_deref()
            .map(|p| &p[..p.len().min(REFUSED_PREFIX_BYTES)])
    } else {
        d.payload.as_deref()
    };
    // A key as large as the limit cannot be cut without losing what it meant: it is dropped.
    let key = d
        .key
        .as_deref()
        .filter(|k| !cut || k.len() <= REFUSED_PREFIX_BYTES);
    writer.send_raw(topic, key, payload, h)
}
