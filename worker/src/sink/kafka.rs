//! The Kafka sink at least once: a batch's outputs through the [`KafkaWriter`], then their
//! acks, and only then does the engine commit offsets.

use std::sync::Arc;

use super::Sink;
use crate::batch::BatchOutput;
use crate::error::Result;
use crate::expr::Val;
use crate::pipeline::event_time::event_header;
use crate::pipeline::Output;
use crate::producer::KafkaWriter;
use weir_contract::stages::{EVENT_TIME_HEADER, PARTIAL_HEADER, WATERMARK_HEADER};

/// The Kafka sink (at-least-once): results are produced, then acked, then offsets commit.
pub struct KafkaSink {
    writer: KafkaWriter,
    topic: Arc<str>,
    /// Records for the job's next stage, in the worker's own encoding.
    shuffle: bool,
    /// With `shuffle`: the records are partials of this aggregation.
    partials: Option<&'static str>,
    /// The topic's partition count, once a watermark record needed it.
    partitions: Option<i32>,
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
            partitions: None,
        }
    }
}

/// Queues one output record, as a sink's readers expect it or for the next stage (a
/// partial of aggregation `partials` carries its name in the contract's partial header, a
/// record with an event time that time and its watermark in the event-time header).
pub(super) fn send_output(
    w: &mut KafkaWriter,
    topic: &str,
    shuffle: bool,
    partials: Option<&str>,
    o: &Output,
) -> Result<()> {
    if !shuffle {
        return w.send(topic, &o.key, &o.value);
    }
    let text;
    let header = match o.event {
        Some((time, against)) => {
            text = event_header(time, against);
            Some((EVENT_TIME_HEADER, text.as_str()))
        }
        None => partials.map(|kind| (PARTIAL_HEADER, kind)),
    };
    w.send_encoded_with(topic, None, &o.key, Some(&o.value), header)
}

/// Queues an input partition's watermark record to every partition of the repartition topic,
/// after the partition's records: each of the next stage's partitions learns it, in order.
pub(super) fn send_marker(
    w: &mut KafkaWriter,
    topic: &str,
    partitions: &mut Option<i32>,
    marker: &(Val, Val),
) -> Result<()> {
    let n = match *partitions {
        Some(n) => n,
        None => {
            let n = w.partitions(topic)?;
            *partitions = Some(n);
            n
        }
    };
    for r in 0..n {
        w.send_encoded_with(
            topic,
            Some(r),
            &marker.0,
            Some(&marker.1),
            Some((WATERMARK_HEADER, "1")),
        )?;
    }
    Ok(())
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
                    o,
                )?;
            }
            if let Some(m) = p.marker {
                send_marker(&mut self.writer, &self.topic, &mut self.partitions, m)?;
            }
        }
        self.writer.flush()
    }

    // Each write is its records' sends and their acks, nothing that spans the batch.
    fn writes_parts(&self) -> bool {
        true
    }
}
