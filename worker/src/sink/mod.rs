//! Where a batch's results go. A sink writes and waits for acknowledgement; only then does
//! the engine commit offsets, so a crash repeats output rather than losing it.

mod exactly_once;
mod file;
mod kafka;
#[cfg(feature = "postgres")]
pub mod postgres;
mod stdout;

use std::sync::Arc;

pub use exactly_once::ExactlyOnceSink;
pub use file::FileSink;
pub use kafka::KafkaSink;
#[cfg(feature = "postgres")]
pub use postgres::PostgresSink;
pub use stdout::StdoutSink;

use crate::batch::BatchOutput;
use crate::changelog::LogFormat;
use crate::client::Identity;
use crate::error::Result;
use crate::pipeline::StateChange;
use crate::plan::TopicPartition;
use crate::producer::KafkaWriter;
use crate::spec::JobSpec;

pub trait Sink: Send {
    /// Writes the batch and returns once it is durable (acknowledged, flushed, renamed).
    ///
    /// # Errors
    /// When any part of the batch was not written; the engine then replays the batch.
    fn write(&mut self, batch: &BatchOutput<'_>) -> Result<()>;

    /// Whether the sink may take a batch in parts ([`Sink::write_part`] for each part as the
    /// batch is read, then `write` with its last part, its barrier results and its state
    /// changes; then the offsets). True only where a batch's writes are independent
    /// acknowledged sends (Kafka without transactions, stdout) or one file per partition that is
    /// renamed into place at the batch's end; a sink whose batch is one transaction takes it
    /// whole, and the budget caps the batch instead.
    fn writes_parts(&self) -> bool {
        false
    }

    /// Writes a part of a batch still being read and returns once it is durable; the batch's
    /// end comes through `write`. Only called when [`Sink::writes_parts`].
    ///
    /// # Errors
    /// As `write`.
    fn write_part(&mut self, part: &BatchOutput<'_>) -> Result<()> {
        self.write(part)
    }

    /// The batch whose parts were being written failed and runs again from its start: drops
    /// what its parts left unfinished (a file not yet renamed, a printed batch's count), so the
    /// replay does not add to it.
    fn abandon(&mut self) {}

    /// Whether `write` also stores the batch's state changes, in the same transaction as its
    /// output; the engine's changelog writer then leaves them to it.
    fn logs_state(&self) -> bool {
        false
    }

    /// Offered once the changelog is open: how the job's state changes become changelog
    /// records. A sink that writes them in its own transactions keeps it and returns true, and
    /// the commit step leaves the batch's changes to it; any other returns false, and the
    /// changelog writer logs them. A sink that wraps another must forward it: otherwise the
    /// changes are logged, but outside the wrapped sink's transactions.
    fn log_state_as(&mut self, _format: Arc<LogFormat>) -> bool {
        false
    }

    /// Whether `write` also sends the batch's dead letters, in the same transactions as the
    /// output of their partitions.
    fn writes_dead_letters(&self) -> bool {
        false
    }

    /// Takes over the worker's partitions before anything about them is read: a sink that
    /// can fence (Kafka transactions, a database's partition epochs) stops every older writer
    /// of these partitions here, so the offsets the engine reads next are final.
    ///
    /// A sink that commits output, state changes and offsets in one transaction of its own
    /// (a database) is their record: it returns where each owned partition resumes and the
    /// state to rebuild. `None` for sinks whose record is the Kafka group and the changelog
    /// topic.
    ///
    /// # Errors
    /// When fencing fails or the sink's record cannot be read.
    fn take_over(&mut self, _owned: &[TopicPartition]) -> Result<Option<Recovery>> {
        Ok(None)
    }
}

/// What a sink of record holds for a worker's partitions.
pub struct Recovery {
    /// Per owned partition: the offset after the last batch stored, if any.
    pub offsets: Vec<Option<i64>>,
    /// Per owned partition: its state changes, oldest first (or the latest value per key).
    pub changes: Vec<Vec<StateChange>>,
}

/// Builds the job's sinks, as one; with `print`, results are also shown on standard output.
///
/// # Errors
/// When a sink's client cannot be created.
pub fn build(spec: &JobSpec, id: &Identity, print: Option<u32>) -> Result<Box<dyn Sink>> {
    let s = &spec.sink;
    // The sinks that are not a record of offsets first; the record (Kafka exactly once,
    // PostgreSQL: validation allows one at most) last, so that it commits a batch only once
    // every other sink has it.
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    let mut record: Option<Box<dyn Sink>> = None;
    if let Some(o) = &s.stdout {
        sinks.push(Box::new(StdoutSink::new(o.limit, std::io::stdout())));
    } else if let Some(limit) = print {
        sinks.push(Box::new(StdoutSink::new(limit, std::io::stdout())));
    }
    if let Some(f) = &s.file {
        sinks.push(Box::new(FileSink::new(f.path.clone().into())?));
    }
    if let Some(k) = &s.kafka {
        let bootstrap = k
            .bootstrap_servers
            .as_deref()
            .unwrap_or(&spec.source.kafka.bootstrap_servers);
        let codecs = crate::record::Codecs::for_sink(k, &spec.source.kafka.credentials)
            .map_err(crate::error::Error::Settings)?;
        let routes = kafka::Routes::new(k)?;
        match k.delivery {
            crate::spec::Delivery::ExactlyOnce => {
                record = Some(Box::new(ExactlyOnceSink::new(
                    spec, id, routes, bootstrap, k.shuffle, k.partials, codecs,
                )?));
            }
            crate::spec::Delivery::AtLeastOnce => sinks.push(Box::new(KafkaSink::new(
                KafkaWriter::new(bootstrap, &spec.source.kafka, id, "sink")?.with_codecs(codecs),
                routes,
                k.shuffle,
                k.partials,
            ))),
        }
    }
    if s.postgres.is_some() {
        if record.is_some() {
            return Err(crate::error::Error::Fatal(
                "sink.kafka.delivery exactlyOnce cannot hold beside sink.postgres; set delivery: atLeastOnce or write to one of them".into(),
            ));
        }
        record = Some(postgres_sink(spec, id)?);
    }
    sinks.extend(record);
    match sinks.len() {
        0 => Err(crate::error::Error::Fatal(
            "the job has no sink; set sink.stdout, sink.kafka, sink.file or sink.postgres".into(),
        )),
        1 => Ok(sinks.remove(0)),
        _ => Ok(Box::new(Fanout(sinks))),
    }
}

#[cfg(feature = "postgres")]
fn postgres_sink(spec: &JobSpec, id: &Identity) -> Result<Box<dyn Sink>> {
    Ok(Box::new(PostgresSink::new(spec, id)?))
}

/// A worker built without the PostgreSQL sink (only the operator's tests build it so) refuses
/// a job that writes to PostgreSQL rather than dropping its output.
#[cfg(not(feature = "postgres"))]
fn postgres_sink(_spec: &JobSpec, _id: &Identity) -> Result<Box<dyn Sink>> {
    Err(crate::error::Error::Fatal(
        "this weir-worker was built without the PostgreSQL sink (cargo feature `postgres`); run a worker built with default features".into(),
    ))
}

/// Several sinks as one: each writes every batch, in order, the record of offsets (if any)
/// last; a failure in any replays the batch in all.
struct Fanout(Vec<Box<dyn Sink>>);

impl Sink for Fanout {
    fn write(&mut self, batch: &BatchOutput<'_>) -> Result<()> {
        self.0.iter_mut().try_for_each(|s| s.write(batch))
    }

    fn writes_parts(&self) -> bool {
        self.0.iter().all(|s| s.writes_parts())
    }

    fn write_part(&mut self, part: &BatchOutput<'_>) -> Result<()> {
        self.0.iter_mut().try_for_each(|s| s.write_part(part))
    }

    fn abandon(&mut self) {
        self.0.iter_mut().for_each(|s| s.abandon());
    }

    // Only the record (the last, when there is one) stores state and dead letters with its
    // batches; the others must not hide that it does.
    fn logs_state(&self) -> bool {
        self.0.iter().any(|s| s.logs_state())
    }

    fn log_state_as(&mut self, format: Arc<LogFormat>) -> bool {
        // Every sink is offered it (not only until one keeps it): the one that keeps it is the
        // record, and validation allows one at most.
        let mut kept = false;
        for s in &mut self.0 {
            kept |= s.log_state_as(format.clone());
        }
        kept
    }

    fn writes_dead_letters(&self) -> bool {
        self.0.iter().any(|s| s.writes_dead_letters())
    }

    fn take_over(&mut self, owned: &[TopicPartition]) -> Result<Option<Recovery>> {
        let mut recovery = None;
        for s in &mut self.0 {
            if let Some(r) = s.take_over(owned)? {
                recovery = Some(r);
            }
        }
        Ok(recovery)
    }
}
