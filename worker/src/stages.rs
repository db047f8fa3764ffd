//! Kafka is the shuffle. Keyed steps work within an input partition; a `repartition` step
//! re-keys: the steps before it write each record, under the key its last `keyBy` gave it, to
//! the step's repartition topic (`<job>-<step>-repartition` unless it names one, with the
//! input's partition count), where the key's hash picks the partition; the steps after it
//! read that topic as a direct stream of its own, partition i on worker i mod N like any
//! input. So a job with R repartition steps runs as R + 1 stages, each a job with its own
//! consumer group (`<group>-<step>` after the first), offsets, changelog and batches, all in
//! the same worker process. Records between stages keep every CEL type (the worker's own
//! encoding). A stage writes to the next with the job's delivery when the sink is Kafka
//! exactly-once, and at least once otherwise.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::client::Identity;
use crate::engine::{Engine, Options};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::spec::{Delivery, Format, JobFile, KafkaSink, SinkSpec, StartingOffsets, StepSpec};

/// The repartition topic of a step.
pub fn repartition_topic(job: &str, step: &StepSpec) -> String {
    step.repartition
        .as_ref()
        .and_then(|r| r.topic.clone())
        .unwrap_or_else(|| format!("{job}-{}-repartition", step.id))
}

/// A stage: the job it runs, and the repartition topic it writes for the next stage.
pub struct Stage {
    /// The repartition step the stage reads after; "input" for the first.
    pub name: String,
    pub job: JobFile,
    pub writes: Option<String>,
}

/// The job's stages, in data-flow order; a job without repartition steps is one stage.
pub fn split(job: &JobFile) -> Vec<Stage> {
    let spec = &job.spec;
    let group = spec.group_id(&job.namespace, &job.name);
    let delivery = match &spec.sink.kafka {
        Some(k) => k.delivery,
        None => Delivery::AtLeastOnce,
    };
    let mut stages = Vec::new();
    let mut steps: Vec<StepSpec> = Vec::new();
    // The repartition step the stage being built reads from.
    let mut reads: Option<&StepSpec> = None;
    let stage_job = |reads: Option<&StepSpec>, steps: Vec<StepSpec>, sink: SinkSpec| {
        let mut s = spec.clone();
        s.pipeline = steps;
        s.sink = sink;
        if let Some(r) = reads {
            let k = &mut s.source.kafka;
            k.topics = vec![repartition_topic(&job.name, r)];
            k.group_id = Some(format!("{group}-{}", r.id));
            k.starting_offsets = StartingOffsets::Earliest;
            k.specific_offsets.clear();
            s.source.format = Format::Shuffle;
        }
        JobFile {
            name: job.name.clone(),
            namespace: job.namespace.clone(),
            spec: s,
        }
    };
    for step in &spec.pipeline {
        if step.repartition.is_none() {
            steps.push(step.clone());
            continue;
        }
        let topic = repartition_topic(&job.name, step);
        let sink = SinkSpec {
            kafka: Some(KafkaSink {
                topic: topic.clone(),
                bootstrap_servers: None,
                delivery,
                shuffle: true,
            }),
            ..SinkSpec::default()
        };
        stages.push(Stage {
            name: reads.map_or_else(|| "input".to_string(), |r| r.id.clone()),
            job: stage_job(reads, std::mem::take(&mut steps), sink),
            writes: Some(topic),
        });
        reads = Some(step);
    }
    stages.push(Stage {
        name: reads.map_or_else(|| "input".to_string(), |r| r.id.clone()),
        job: stage_job(reads, steps, spec.sink.clone()),
        writes: None,
    });
    stages
}

/// Connects every stage of the job, first to last, creating each repartition topic (with the
/// stage's input partition count) before the stage that reads it connects. The first stage
/// reports to `progress`: its offsets are the job's input offsets, which lag tools watch.
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
    let stages = split(&job);
    let last = stages.len() - 1;
    let mut engines = Vec::with_capacity(stages.len());
    for (i, stage) in stages.into_iter().enumerate() {
        let spec = stage.job.spec.clone();
        let sink = crate::sink::build(&spec, id, if i == last { print } else { None })?;
        let progress = if i == 0 {
            progress.clone()
        } else {
            Arc::new(Progress::new(
                id.clone(),
                spec.group_id(&id.namespace, &id.job),
                spec.batch_interval.as_std(),
            ))
        };
        let mut engine = Engine::connect(stage.job, id, sink, progress, cancel)?;
        engine.set_stage(&stage.name);
        if let Some(topic) = &stage.writes {
            let partitions = engine.input_partitions();
            crate::topics::ensure(&spec, topic, partitions, false)?;
            info!(stage = i, topic = %topic, partitions, "repartition topic ready");
        }
        engines.push(engine);
    }
    Ok(engines)
}

/// Runs the stages side by side until cancelled or each ran `opts.max_batches`; a stage that
/// fails stops the others (after their batch in flight). Returns the first stage's batches.
///
/// # Errors
/// The first stage error.
pub fn run(engines: &mut [Engine], opts: &Options, cancel: &CancellationToken) -> Result<u64> {
    if let [one] = engines {
        return one.run(opts, cancel);
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse_job;

    #[test]
    fn a_job_splits_at_its_repartition_steps_into_stages_joined_by_topics() {
        let job = parse_job(
            "batchInterval: 1s\nsource: {kafka: {bootstrapServers: 'k:9092', topics: [in], groupId: g}}\npipeline:\n- {id: k, keyBy: value}\n- {id: shuffle, repartition: {}}\n- {id: n, aggregate: {count: {}}}\nsink: {kafka: {topic: out}}\n",
            "wc",
        )
        .expect("job");
        let stages = split(&job);
        assert_eq!(stages.len(), 2);
        let (first, second) = (&stages[0].job.spec, &stages[1].job.spec);
        assert_eq!(stages[0].writes.as_deref(), Some("wc-shuffle-repartition"));
        assert_eq!(first.pipeline.len(), 1);
        let to_next = first.sink.kafka.as_ref().expect("kafka sink");
        assert!(to_next.shuffle && to_next.topic == "wc-shuffle-repartition");
        assert_eq!(second.source.kafka.topics, ["wc-shuffle-repartition"]);
        assert_eq!(second.source.kafka.group_id.as_deref(), Some("g-shuffle"));
        assert_eq!(second.source.format, Format::Shuffle);
        assert_eq!(second.pipeline[0].id, "n");
        assert_eq!(
            second.sink.kafka.as_ref().map(|k| k.topic.as_str()),
            Some("out")
        );
        assert!(stages[1].writes.is_none());
    }
}
