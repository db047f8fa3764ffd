//! The Kafka sink at least once: a batch's outputs through the [`KafkaWriter`], then their
//! acks, and only then does the engine commit offsets.

use std::sync::Arc;

use super::Sink;
use crate::batch::BatchOutput;
use crate::error::{Error, Result};
use crate::expr::Val;
use crate::expr::{Program, Var, Vars};
use crate::pipeline::event_time::event_header;
use crate::pipeline::Output;
use crate::producer::KafkaWriter;
use weir_contract::stages::{EVENT_TIME_HEADER, PARTIAL_HEADER, WATERMARK_HEADER};

/// Where each result goes: every route whose condition holds, else the sink's topic.
pub struct Routes {
    topic: Arc<str>,
    routes: Vec<(Program, Arc<str>)>,
    /// A shuffle to a partitioned join table's partitioning.
    by: Option<By>,
}

/// The partition of a shuffled record: its join key's, as the table's producers placed it.
struct By {
    /// The join key; `None`: the record's key.
    on: Option<Program>,
    partitioner: crate::spec::Partitioner,
    /// The repartition topic's partition count (the table's), once asked.
    partitions: std::sync::OnceLock<i32>,
}

/// What a route's condition sees of a result.
struct ResultVars<'a>(&'a Output);

impl Vars for ResultVars<'_> {
    fn var(&self, v: Var) -> Option<std::borrow::Cow<'_, Val>> {
        match v {
            Var::Key => Some(std::borrow::Cow::Borrowed(&self.0.key)),
            Var::Value => Some(std::borrow::Cow::Borrowed(&self.0.value)),
            _ => None,
        }
    }
}

impl Routes {
    /// The sink's topic alone (a repartition topic).
    pub fn only(topic: &str) -> Routes {
        Routes {
            topic: Arc::from(topic),
            routes: Vec::new(),
            by: None,
        }
    }

    /// # Errors
    /// A condition that does not compile (validation checked it).
    pub fn new(k: &crate::spec::KafkaSink) -> Result<Routes> {
        let routes = k
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| {
                Program::compile(&r.when, &[Var::Key, Var::Value])
                    .map(|p| (p, Arc::from(r.topic.as_str())))
                    .map_err(|e| Error::Fatal(format!("sink.kafka.routes[{i}].when: {e}")))
            })
            .collect::<Result<_>>()?;
        let by = match &k.partition_by {
            None => None,
            Some(b) => Some(By {
                on: b
                    .on
                    .as_deref()
                    .map(|on| Program::compile(on, &[Var::Key, Var::Value]))
                    .transpose()
                    .map_err(|e| {
                        Error::Fatal(format!("the join key of table {:?}: {e}", b.table))
                    })?,
                partitioner: b.partitioner,
                partitions: std::sync::OnceLock::new(),
            }),
        };
        Ok(Routes {
            topic: Arc::from(k.topic.as_str()),
            routes,
            by,
        })
    }

    /// The partition a shuffled result goes to; `None`: its key's hash picks it. A join key
    /// that cannot be computed, or is no text, goes anywhere: the join step computes it again
    /// after the shuffle and treats the record as it treats such a record in any join.
    fn partition(&self, w: &KafkaWriter, o: &Output) -> Result<Option<i32>> {
        let Some(by) = &self.by else {
            return Ok(None);
        };
        let n = match by.partitions.get() {
            Some(&n) => n,
            None => {
                let n = w.partitions(&self.topic)?;
                let _ = by.partitions.set(n);
                n
            }
        };
        let vars = ResultVars(o);
        let on = match &by.on {
            Some(p) => match p.eval(&vars) {
                Ok(v) => v,
                Err(_) => return Ok(Some(0)),
            },
            None => std::borrow::Cow::Borrowed(&o.key),
        };
        Ok(Some(match crate::pipeline::join::key_text(&on) {
            Some(k) => crate::partitioner::partition(by.partitioner, k.as_bytes(), n),
            None => 0,
        }))
    }

    /// The sink's own topic, where repartition and watermark records go.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Calls `f` with every topic `o` goes to.
    fn each(&self, o: &Output, mut f: impl FnMut(&str) -> Result<()>) -> Result<()> {
        let mut routed = false;
        for (i, (when, topic)) in self.routes.iter().enumerate() {
            // A condition that fails on a result cannot say where it goes: the batch stops
            // with the reason rather than write it to the wrong place.
            let take = when.eval_bool(&ResultVars(o)).map_err(|e| {
                Error::Fatal(format!(
                    "sink.kafka.routes[{i}].when failed on the result with key {}: {}; make the condition total (e.g. has(value.x) && ...)",
                    o.key, e.0
                ))
            })?;
            if take {
                routed = true;
                f(topic)?;
            }
        }
        if routed {
            Ok(())
        } else {
            f(&self.topic)
        }
    }
}

/// The Kafka sink (at-least-once): results are produced, then acked, then offsets commit.
pub struct KafkaSink {
    writer: KafkaWriter,
    routes: Routes,
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
        routes: Routes,
        shuffle: bool,
        partials: Option<&'static str>,
    ) -> Self {
        Self {
            writer,
            routes,
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
    routes: &Routes,
    shuffle: bool,
    partials: Option<&str>,
    o: &Output,
) -> Result<()> {
    if !shuffle {
        return routes.each(o, |topic| w.send(topic, &o.key, &o.value));
    }
    let topic = routes.topic();
    let text;
    let header = match o.event {
        Some((time, against)) => {
            text = event_header(time, against);
            Some((EVENT_TIME_HEADER, text.as_str()))
        }
        None => partials.map(|kind| (PARTIAL_HEADER, kind)),
    };
    let partition = routes.partition(w, o)?;
    w.send_encoded_with(topic, partition, &o.key, Some(&o.value), header)
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
                    &self.routes,
                    self.shuffle,
                    self.partials,
                    o,
                )?;
            }
            if let Some(m) = p.marker {
                send_marker(
                    &mut self.writer,
                    self.routes.topic(),
                    &mut self.partitions,
                    m,
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
