//! Kafka is the shuffle: a job with `repartition` steps runs as stages joined by Kafka topics,
//! all in the same worker process. How a job is cut into stages, and the names of their topics
//! and groups, are the contract's ([`weir_contract::stages`]: the operator reads the same
//! groups); here, starting the stages and running them side by side.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::client::Identity;
use crate::engine::{Engine, Options};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::spec::JobFile;
pub use weir_contract::stages::{
    moved_state, repartition_topic, split, with_shuffles, MovedState, Stage,
};

/// Refuses to start a job whose stateful step moved behind an inserted shuffle while its old
/// per-partition state is still the only state it has: that state counted each key once per
/// input partition, so carrying it into the per-key stage would be wrong, and dropping it
/// silently would lose it. Once the step's new stage has logged state, the move is done.
///
/// # Errors
/// A moved step with old state and no new state, not listed under `checkpoint.resetState`;
/// or brokers that cannot be asked.
fn check_moved_state(job: &JobFile) -> Result<()> {
    let reset = job
        .spec
        .checkpoint
        .as_ref()
        .map_or(&[][..], |c| &c.reset_state[..]);
    for m in moved_state(job) {
        let old = crate::changelog::topic_name(&m.was);
        let new = crate::changelog::topic_name(&m.now);
        if !crate::topics::holds_records(&job.spec, &old)?
            || crate::topics::holds_records(&job.spec, &new)?
        {
            continue;
        }
        if reset.contains(&m.step) {
            warn!(step = %m.step, old_changelog = %old, changelog = %new, "the step's per-partition state is not carried over; its per-key state starts empty (listed under checkpoint.resetState)");
            continue;
        }
        return Err(Error::Fatal(format!(
            "pipeline step {step:?} now gets all of a key's records in one place, through an automatic repartition (group {now:?}, changelog topic {new:?}), but its state in changelog topic {old:?} was kept per input partition, with a key counted once per partition: to start the step's state empty, list {step:?} under checkpoint.resetState until the step has new state (its first batch with records after the change; then remove it); to keep per-partition results and that state, set perPartition: true on step {step:?}",
            step = m.step,
            now = m.now,
        )));
    }
    Ok(())
}

/// Connects every stage of the job, first to last, creating each repartition topic (with the
/// stage's input partition count) before the stage that reads it connects. Every stage
/// reports to `progress`: the first as itself, the later ones as its [`Progress::stage`]s, so
/// their batches, offsets and lag show in `/progress`, health and metrics beside the first's.
///
/// # Errors
/// As [`Engine::connect`], or a repartition topic that cannot be made.
pub fn connect(
    job: JobFile,
    id: &Identity,
    print: Option<u32>,
    progress: Arc<Progress>,
    cancel: &CancellationToken,
) -> Result<Vec<Engine>> {
    check_moved_state(&job)?;
    let stages = split(&job);
    let last = stages.len() - 1;
    let mut engines = Vec::with_capacity(stages.len());
    for (i, stage) in stages.into_iter().enumerate() {
        let spec = stage.job.spec.clone();
        let sink = crate::sink::build(&spec, id, if i == last { print } else { None })?;
        let progress = if i == 0 {
            progress.clone()
        } else {
            progress.stage(&stage.name, spec.group_id(&id.namespace, &id.job))
        };
        let mut engine = Engine::connect(stage.job, id, sink, progress, cancel)?;
        engine.set_stage(&stage.name);
        if let Some(topic) = &stage.writes {
            // A shuffle to a partitioned join table copies the table's partitioning.
            let by = spec
                .sink
                .kafka
                .as_ref()
                .and_then(|k| k.partition_by.as_ref());
            let needs = match by {
                Some(b) => {
                    let n = crate::topics::partition_count(
                        &spec,
                        &b.table,
                        b.bootstrap_servers.as_deref(),
                    )?;
                    crate::topics::Partitions::Like(n, &b.table)
                }
                None => crate::topics::Partitions::AtLeast(engine.input_partitions()),
            };
            crate::topics::ensure(&spec, topic, needs, false)?;
            info!(stage = i, topic = %topic, ?needs, "repartition topic ready");
        }
        engines.push(engine);
    }
    // A stage reads in parts only when every stage after it does: a later stage that takes
    // its batches whole drains one budget per interval, and the stages before it keep pace.
    let mut later_in_parts = true;
    for engine in engines.iter_mut().rev() {
        let own = engine.reads_in_parts();
        if !later_in_parts {
            engine.read_whole_batches();
        }
        later_in_parts &= own;
    }
    Ok(engines)
}

/// Runs the stages side by side until cancelled or each ran `opts.max_batches`; a stage that
/// fails stops the others (after their batch in flight). Returns the first stage's batches.
/// The stages hold their batches at the same time, so they share the batch budget: each
/// gets an equal part of `opts.budget`.
///
/// # Errors
/// The first stage error.
pub fn run(engines: &mut [Engine], opts: &Options, cancel: &CancellationToken) -> Result<u64> {
    if let [one] = engines {
        return one.run(opts, cancel);
    }
    let opts = &Options {
        budget: opts.budget.split(engines.len()),
        ..opts.clone()
    };
    let results: Vec<Result<u64>> = std::thread::scope(|s| {
        let handles: Vec<_> = engines
            .iter_mut()
            .map(|e| {
                s.spawn(move || {
                    let r = e.run(opts, cancel);
                    if r.is_err() {
                        cancel.cancel();
                    }
                    r
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Fatal("a stage's thread panicked".into())))
            })
            .collect()
    });
    let mut first = None;
    for r in results {
        match r {
            Ok(n) => {
                first.get_or_insert(n);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(first.unwrap_or(0))
}
