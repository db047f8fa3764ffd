//! Records that could not be decoded or processed: sent to the dead-letter topic with the
//! reason in headers, or counted and logged. Either way the job goes on.

use std::sync::Arc;

use rdkafka::message::{Header, OwnedHeaders};
use tracing::warn;

use crate::client::Identity;
use crate::error::Result;
use crate::sink::KafkaWriter;
use crate::spec::JobSpec;

/// Header names on dead-lettered records.
pub const H_ERROR: &str = "weir.error";
pub const H_STEP: &str = "weir.step";
pub const H_TOPIC: &str = "weir.source.topic";
pub const H_PARTITION: &str = "weir.source.partition";
pub const H_OFFSET: &str = "weir.source.offset";

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
                KafkaWriter::new(
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
    /// # Errors
    /// When the dead-letter topic did not acknowledge them; the batch is then replayed, since
    /// committing its offsets would lose these records.
    pub fn write(&mut self, letters: &[DeadLetter]) -> Result<()> {
        if letters.is_empty() {
            return Ok(());
        }
        match &mut self.target {
            Some((writer, topic)) => {
                for d in letters {
                    send(writer, topic, d)?;
                }
                writer.flush()
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

/// Queues one dead letter: the original bytes, with the error and where it came from in
/// headers.
///
/// # Errors
/// When the record is refused.
pub fn send(writer: &mut KafkaWriter, topic: &str, d: &DeadLetter) -> Result<()> {
    let partition = d.partition.to_string();
    let offset = d.offset.to_string();
    let mut h = OwnedHeaders::new_with_capacity(5)
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
    writer.send_raw(topic, d.key.as_deref(), d.payload.as_deref(), h)
}
