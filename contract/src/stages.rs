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
//!
//! Keyed results are global by default (Kafka Streams' rule): [`with_shuffles`] inserts a
//! repartition step before every keyed step (`aggregate`, windowed or not, `state` and
//! `intervalJoin`) whose records may not be partitioned by their key, so all of a key's
//! records meet in one state.
//!
//! Combine before the shuffle (Spark's reduceByKey, Flink's local aggregation): when the step
//! after a repartition is an aggregate that can be computed from parts ([`combinable`]), the
//! stage before it ends in a copy of that aggregate marked `combine`, which writes one
//! partial accumulator per key per partition batch instead of every record; the header
//! [`PARTIAL_HEADER`] tells the next stage's aggregate to merge it rather than add it, so a
//! topic that still holds plain records (written before an upgrade) reads correctly.

use crate::expr::{Program, Var};
use crate::spec::{
    Delivery, Format, JobFile, JobSpec, KafkaSink, RepartitionSpec, SinkSpec, StartingOffsets,
    StepSpec,
};

/// The changelog topic of a job (or a later stage) whose consumer group is `group`.
pub fn changelog_topic(group: &str) -> String {
    format!("{group}-changelog")
}

/// The repartition topic of a step.
pub fn repartition_topic(job: &str, step: &StepSpec) -> String {
    step.repartition
        .as_ref()
        .and_then(|r| r.topic.clone())
        .unwrap_or_else(|| format!("{job}-{}-repartition", step.id))
}

/// The pipeline a job runs: its steps, with a repartition step inserted before each keyed
/// step (`aggregate` or `state`) that would otherwise see only part of a key's records.
///
/// Weir keeps keyed state per input topic-partition, so a keyed step sees all of a key's
/// records only when they all arrive in one partition of one topic. That is provable in one
/// case: the job reads a single topic (or the step comes after a repartition) and no `keyBy`
/// since then changed the key, because Kafka producers put a key's records in one partition
/// (`keyBy: key` keeps the record's own key, so it changes nothing). Everything else gets the
/// shuffle: a `keyBy` of anything else, and several input topics even without a `keyBy`, since
/// the same key in two topics would be two states. A step with `perPartition: true` asks for
/// per-partition results and gets none; an explicit `repartition` before the step already is
/// the shuffle.
///
/// The inserted step takes the keyed step's id, so its topic (`<job>-<step>-repartition`),
/// the next stage's group (`<group>-<step>`) and changelog stay the same across restarts and
/// pipeline edits that keep the step's id.
pub fn with_shuffles(spec: &JobSpec) -> Vec<StepSpec> {
    // Whether the records' keys may differ from what their partitions were chosen by.
    let mut rekeyed = spec.source.kafka.topics.len() > 1;
    let mut steps = Vec::with_capacity(spec.pipeline.len() + 1);
    for step in &spec.pipeline {
        if step.repartition.is_some() {
            rekeyed = false;
        } else if step.key_by.as_deref().is_some_and(|e| e.trim() != "key") {
            rekeyed = true;
        } else if step.join.as_ref().is_some_and(|j| j.table.partitioned) {
            // The join meets the table partition by partition: the records go to the table's
            // partitioning first, and are not partitioned by their own key after it.
            if steps
                .last()
                .is_none_or(|s: &StepSpec| s.repartition.is_none())
            {
                steps.push(StepSpec {
                    id: step.id.clone(),
                    repartition: Some(RepartitionSpec::default()),
                    ..StepSpec::default()
                });
            }
            rekeyed = true;
        } else if (step.aggregate.is_some() || step.state.is_some() || step.interval_join.is_some())
            && rekeyed
            && !step.per_partition
        {
            steps.push(StepSpec {
                id: step.id.clone(),
                repartition: Some(RepartitionSpec::default()),
                ..StepSpec::default()
            });
            rekeyed = false;
        }
        steps.push(step.clone());
    }
    steps
}

/// The header that marks a repartition record as a partial accumulator rather than a record;
/// its value is the aggregation's name ([`combinable`]), so a partial of another kind (the
/// job changed while the topic held partials) is refused, not merged.
pub const PARTIAL_HEADER: &str = "weir-partial";

/// The header of a repartition record that carries its event time and the watermark its input
/// partition had before it, as `<event ms>:<watermark ms>`: the next stage judges lateness
/// by them, as the first stage would have.
pub const EVENT_TIME_HEADER: &str = "weir-event-time";

/// The header of a repartition record that is no record but an input partition's watermark
/// (key: the partition as `topic/partition`; value: `{watermark, idle, partitions}`), written to
/// every partition of the topic: the next stage's watermark is the least of its inputs'.
pub const WATERMARK_HEADER: &str = "weir-watermark";

/// The aggregation (its name) a step's input can be combined by before a shuffle, when it
/// can: count, sum, min, max and avg, windowed or not, whose expression reads only `key` and
/// `value` (the other variables would name the repartition record in the next stage, so the
/// first stage cannot compute them the same). Not `reduce`: the spec does not require its
/// expression to be associative and commutative, and partials would change its result when
/// it is not; not `collect`, whose result is every value; not `state` steps, which see every
/// value.
pub fn combinable(step: &StepSpec) -> Option<&'static str> {
    let a = step.aggregate.as_ref()?;
    // An event-time window judges every record by its own time: partials have none.
    let event_time = step
        .window
        .as_ref()
        .is_some_and(|w| w.time == crate::spec::WindowTime::Event);
    if step.combine == Some(false)
        || event_time
        || step.state.is_some()
        || a.reduce.is_some()
        || a.collect.is_some()
    {
        return None;
    }
    let (name, expr) = match (&a.sum, &a.min, &a.max, &a.avg) {
        (Some(e), ..) => ("sum", e),
        (None, Some(e), ..) => ("min", e),
        (None, None, Some(e), _) => ("max", e),
        (None, None, None, Some(e)) => ("avg", e),
        (None, None, None, None) => return Some("count"),
    };
    let p = Program::compile(expr, &Var::RECORD).ok()?;
    let elsewhere = [
        Var::Partition,
        Var::Offset,
        Var::Timestamp,
        Var::Headers,
        Var::Topic,
    ];
    (!elsewhere.into_iter().any(|v| p.uses(v))).then_some(name)
}

/// A stage: the job it runs, and the repartition topic it writes for the next stage.
pub struct Stage {
    /// The repartition step the stage reads after; "input" for the first.
    pub name: String,
    pub job: JobFile,
    pub writes: Option<String>,
}

/// The job's stages, in data-flow order: the pipeline of [`with_shuffles`] cut at its
/// repartition steps; a job without any is one stage.
pub fn split(job: &JobFile) -> Vec<Stage> {
    let spec = &job.spec;
    let group = spec.group_id(&job.namespace, &job.name);
    let delivery = match &spec.sink.kafka {
        Some(k) => k.delivery,
        None => Delivery::AtLeastOnce,
    };
    let pipeline = with_shuffles(spec);
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
    for (j, step) in pipeline.iter().enumerate() {
        if step.repartition.is_none() {
            steps.push(step.clone());
            continue;
        }
        let topic = repartition_topic(&job.name, step);
        let next = pipeline.get(j + 1);
        let partials = next.and_then(combinable);
        let partition_by = next.and_then(|n| n.join.as_ref()?.partition_by());
        // The next stage's steps: a join among them looks rows up as of each record's time,
        // which without event time is its Kafka timestamp, lost in the repartition record.
        let joins_after = pipeline[j + 1..]
            .iter()
            .take_while(|s| s.repartition.is_none())
            .any(|s| s.join.is_some());
        if let (Some(next), Some(_)) = (next, partials) {
            steps.push(StepSpec {
                id: next.id.clone(),
                aggregate: next.aggregate.clone(),
                partial: true,
                ..StepSpec::default()
            });
        }
        let sink = SinkSpec {
            kafka: Some(KafkaSink {
                topic: topic.clone(),
                bootstrap_servers: None,
                delivery,
                avro: None,
                protobuf: None,
                routes: Vec::new(),
                shuffle: true,
                partials,
                partition_by,
                keeps_time: joins_after && spec.source.watermark.is_none(),
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

/// A stateful step (a windowed aggregate or a state step) that an inserted shuffle moved to
/// a later stage than the one it ran in before Weir inserted shuffles: its state was kept
/// per input partition under the old stage's group, and is now kept per key under the new.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MovedState {
    pub step: String,
    /// The group (and so the changelog) the step's per-partition state was kept under.
    pub was: String,
    /// The group of the stage it runs in now.
    pub now: String,
}

/// The stateful steps of a job that [`with_shuffles`] moved into a later stage.
pub fn moved_state(job: &JobFile) -> Vec<MovedState> {
    let group = job.spec.group_id(&job.namespace, &job.name);
    // Each stateful step's stage group when the stages are cut at these repartition steps.
    let groups = |pipeline: &[StepSpec]| {
        let mut at = group.clone();
        let mut out = Vec::new();
        for step in pipeline {
            if step.repartition.is_some() {
                at = format!("{group}-{}", step.id);
            } else if step.state.is_some() || (step.aggregate.is_some() && step.window.is_some()) {
                out.push((step.id.clone(), at.clone()));
            }
        }
        out
    };
    let before = groups(&job.spec.pipeline);
    let now = groups(&with_shuffles(&job.spec));
    before
        .into_iter()
        .zip(now)
        .filter(|((_, was), (_, now))| was != now)
        .map(|((step, was), (_, now))| MovedState { step, was, now })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse_job;

    /// The stages a job with these input topics and steps runs, as "stage: step ids" lines.
    fn stages_of(topics: &str, steps: &str) -> String {
        let yaml = format!(
            "batchInterval: 1s\nsource: {{kafka: {{bootstrapServers: 'k:9092', topics: [{topics}]}}}}\npipeline:\n{steps}sink: {{stdout: {{}}}}\n"
        );
        let job = parse_job(&yaml, "j").expect("job");
        split(&job)
            .iter()
            .map(|s| {
                let ids: Vec<String> = s
                    .job
                    .spec
                    .pipeline
                    .iter()
                    .map(|p| match p.partial {
                        true => format!("{}(combine)", p.id),
                        false => p.id.clone(),
                    })
                    .collect();
                match ids.as_slice() {
                    [] => format!("{}: -", s.name),
                    _ => format!("{}: {}", s.name, ids.join(" ")),
                }
            })
            .collect::<Vec<_>>()
            .join(" | ")
    }

    #[test]
    fn a_partitioned_table_join_runs_behind_a_shuffle_to_the_tables_partitioning() {
        let join = |partitioned: &str| {
            format!("- {{id: f, filter: 'value.ok'}}\n- {{id: j, join: {{table: {{topic: users{partitioned}}}, on: value.user}}}}\n- {{id: n, aggregate: {{count: {{}}}}}}\n")
        };
        // A global table needs no shuffle; the count after it counts per input key in place.
        assert_eq!(stages_of("in", &join("")), "input: f j n");
        // A partitioned one: the records go to the table's partitioning, by the join key, and
        // a keyed step after the join shuffles again (they are no longer by their own key).
        assert_eq!(
            stages_of("in", &join(", partitioned: true")),
            "input: f | j: j n(combine) | n: n"
        );
        let yaml = format!(
            "batchInterval: 1s\nsource: {{kafka: {{bootstrapServers: 'k:9092', topics: [in]}}}}\npipeline:\n{}sink: {{stdout: {{}}}}\n",
            join(", partitioned: true, partitioner: crc32")
        );
        let stages = split(&parse_job(&yaml, "j").expect("job"));
        let to_join = stages[0].job.spec.sink.kafka.as_ref().expect("shuffle");
        let by = to_join
            .partition_by
            .as_ref()
            .expect("partitioned by the join key");
        assert_eq!(
            (by.on.as_deref(), by.partitioner, by.table.as_str()),
            (Some("value.user"), crate::spec::Partitioner::Crc32, "users")
        );
        assert!(
            to_join.keeps_time,
            "the join after it looks rows up by record time"
        );
        let to_count = stages[1].job.spec.sink.kafka.as_ref().expect("shuffle");
        assert!(to_count.partition_by.is_none() && !to_count.keeps_time);
    }

    #[test]
    fn a_keyed_step_after_a_key_change_gets_a_shuffle_unless_the_key_is_the_inputs_partitioning() {
        let words = "- {id: words, flatMap: \"value.split(' ')\"}\n- {id: by-word, keyBy: item}\n";
        let count = "- {id: n, aggregate: {count: {}}}\n";
        let table: &[(&str, String, &str)] = &[
            // The README's word count: keyBy, then count, on one topic.
            ("in", format!("{words}{count}"), "input: words by-word n(combine) | n: n"),
            // Windowed aggregates and state steps are keyed steps too.
            (
                "in",
                format!("{words}- {{id: w, window: {{length: 2s}}, aggregate: {{count: {{}}}}}}\n"),
                "input: words by-word w(combine) | w: w",
            ),
            (
                "in",
                format!("{words}- {{id: s, state: {{update: 'size(values)'}}}}\n"),
                "input: words by-word | s: s",
            ),
            // The input's own key on one topic: its partitions already hold each key whole.
            ("in", count.to_string(), "input: n"),
            ("in", format!("- {{id: k, keyBy: key}}\n{count}"), "input: k n"),
            // Two topics: the same key in each would be two states.
            ("a, b", count.to_string(), "input: n(combine) | n: n"),
            // Steps that keep the key do not undo a key change.
            (
                "in",
                format!("{words}- {{id: f, filter: 'item != \"\"'}}\n{count}"),
                "input: words by-word f n(combine) | n: n",
            ),
            // The user's own repartition is the shuffle: no second one.
            (
                "in",
                format!("{words}- {{id: shuffle, repartition: {{}}}}\n{count}"),
                "input: words by-word n(combine) | shuffle: n",
            ),
            // After a shuffle the key is the partitioning, until the next keyBy.
            (
                "in",
                format!("{words}{count}- {{id: m, aggregate: {{sum: value}}}}\n- {{id: k2, keyBy: 'string(value)'}}\n- {{id: c2, aggregate: {{count: {{}}}}}}\n"),
                "input: words by-word n(combine) | n: n m k2 c2(combine) | c2: c2",
            ),
            // A step that asks for per-partition results gets them, and only that step.
            (
                "in",
                format!("{words}- {{id: p, perPartition: true, aggregate: {{count: {{}}}}}}\n- {{id: q, aggregate: {{count: {{}}}}}}\n"),
                "input: words by-word p q(combine) | q: q",
            ),
            // No keyed step: nothing to bring together.
            ("a, b", words.to_string(), "input: words by-word"),
        ];
        for (topics, steps, want) in table {
            assert_eq!(
                &stages_of(topics, steps),
                want,
                "topics [{topics}]:\n{steps}"
            );
        }
    }

    #[test]
    fn a_stateful_step_behind_an_inserted_shuffle_is_known_to_have_moved_its_state() {
        let job = |steps: &str| {
            parse_job(
                &format!("batchInterval: 1s\nsource: {{kafka: {{bootstrapServers: 'k:9092', topics: [in], groupId: g}}}}\npipeline:\n{steps}sink: {{stdout: {{}}}}\n"),
                "wc",
            )
            .expect("job")
        };
        let moved = moved_state(&job(
            "- {id: k, keyBy: value}\n- {id: s, state: {update: 'size(values)'}}\n",
        ));
        assert_eq!(
            moved,
            [MovedState {
                step: "s".into(),
                was: "g".into(),
                now: "g-s".into()
            }]
        );
        // Already behind the user's own shuffle, asking for per-partition state, or a
        // per-batch aggregate (it keeps no state): nothing moved.
        for steps in [
            "- {id: k, keyBy: value}\n- {id: r, repartition: {}}\n- {id: s, state: {update: 'size(values)'}}\n",
            "- {id: k, keyBy: value}\n- {id: s, perPartition: true, state: {update: 'size(values)'}}\n",
            "- {id: k, keyBy: value}\n- {id: n, aggregate: {count: {}}}\n",
        ] {
            assert_eq!(moved_state(&job(steps)), [], "{steps}");
        }
    }

    #[test]
    fn the_inserted_shuffle_has_a_stable_topic_and_group_named_by_its_step() {
        let job = parse_job(
            "batchInterval: 1s\nsource: {kafka: {bootstrapServers: 'k:9092', topics: [in]}}\npipeline:\n- {id: k, keyBy: value}\n- {id: counts, aggregate: {count: {}}}\nsink: {stdout: {}}\n",
            "wc",
        )
        .expect("job");
        let stages = split(&job);
        assert_eq!(stages[0].writes.as_deref(), Some("wc-counts-repartition"));
        let k = &stages[1].job.spec.source.kafka;
        assert_eq!(k.topics, ["wc-counts-repartition"]);
        assert_eq!(k.group_id.as_deref(), Some("weir.default.wc-counts"));
        assert_eq!(k.starting_offsets, StartingOffsets::Earliest);
        assert!(stages[1].job.spec.sink.stdout.is_some());
    }

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
        // The keyBy, then the count's combine: one partial per key per partition batch.
        assert_eq!(first.pipeline.len(), 2);
        assert!(first.pipeline[1].partial && first.pipeline[1].id == "n");
        let to_next = first.sink.kafka.as_ref().expect("kafka sink");
        assert!(to_next.shuffle && to_next.topic == "wc-shuffle-repartition");
        assert_eq!(to_next.partials, Some("count"));
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

    #[test]
    fn only_aggregates_computable_from_parts_of_key_and_value_are_combined() {
        let first = |agg: &str| {
            let job = parse_job(
                &format!("batchInterval: 1s\nsource: {{kafka: {{bootstrapServers: 'k:9092', topics: [in]}}}}\npipeline:\n- {{id: k, keyBy: value.page}}\n- {{id: a, {agg}}}\nsink: {{stdout: {{}}}}\n"),
                "wc",
            )
            .expect("job");
            let stages = split(&job);
            let spec = &stages[0].job.spec;
            let partials = spec.sink.kafka.as_ref().and_then(|k| k.partials);
            (spec.pipeline.iter().filter(|s| s.partial).count(), partials)
        };
        for (agg, want) in [
            ("aggregate: {count: {}}", Some("count")),
            ("aggregate: {sum: value.n}", Some("sum")),
            ("aggregate: {min: 'value.n + size(key)'}", Some("min")),
            ("aggregate: {max: value.n}", Some("max")),
            ("aggregate: {avg: value.n}", Some("avg")),
            (
                "window: {length: 2s}, aggregate: {sum: value.n}",
                Some("sum"),
            ),
            // Not documented associative and commutative: a partial could change it.
            ("aggregate: {reduce: 'a + b'}", None),
            ("aggregate: {collect: value}", None),
            // These would name the repartition record in the next stage.
            ("aggregate: {sum: partition}", None),
            ("aggregate: {max: timestamp}", None),
            ("aggregate: {min: headers.x}", None),
            ("state: {update: 'size(values)'}", None),
            // The spec's opt-out: every record goes through the shuffle.
            ("aggregate: {count: {}}, combine: false", None),
        ] {
            let n = usize::from(want.is_some());
            assert_eq!(first(agg), (n, want), "{agg}");
        }
    }
}
