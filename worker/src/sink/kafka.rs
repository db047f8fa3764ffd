//! The Kafka sink at least once: a batch's outputs through the [`KafkaWriter`], then their
//! acks, and only then does the engine commit offsets.

use std::sync::Arc;

use super::Sink;
use crate::batch::BatchOutput;
use crate::error::Result;
use crate::expr::Val;
use crate::producer::KafkaWriter;

/// The Kafka sink (at-least-once): results are produced, then acked, then offsets commit.
pub struct KafkaSink {
    writer: KafkaWriter,
    topic: Arc<str>,
    /// Records for the job's next stage, in the worker's own encoding.
    shuffle: bool,
    /// With `shuffle`: the records are partials of this aggregation.
    partials: Option<&'static str>,
}

impl KafkaSink {
    pub fn new(
        writer: KafkaWriter,
        topic: Arc<str>,
        shuffle: bool,
        partials: Option<&'static str>,
    ) -> Self {
        Self {
            writer,
            topic,
            shuffle,
            partials,
        }
    }
}

/// Queues one output record, as a sink's readers expect it or for the next stage (a
/// partial of aggregation `partials` carries its name in the contract's partial header).
pub(super) fn send_output(
    w: &mut KafkaWriter,
    topic: &str,
    shuffle: bool,
    partials: Option<&str>,
    key: &Val,
    value: &Val,
) -> Result<()> {
    if shuffle {
        let header = partials.map(|kind| (weir_contract::stages::PARTIAL_HEADER, kind));
        w.send_encoded_with(topic, None, key, Some(value), header)
    } else {
        w.send(topic, key, value)
    }
}

impl Sink for KafkaSink {
    fn write(&mut self, batch: &BatchOutput<'_>) -> Result<()> {
        for p in &batch.partitions {
            for o in p.outputs {
                send_output(
                    &mut self.writer,
                    &self.topic,
                    self.shuffle,
                    self.partials,
                    &o.key,
                    &o.value,
                )?;
            }
        }
        self.writer.flush()
    }

    // Each write is its records' sends and their acks, nothing that spans the batch.
    fn writes_parts(&self) -> bool {
        true
    }
}
