//! Declarative rewind: when `spec.rewind.id` changes, the workers stop, the job's group
//! offsets are set (to a time, explicit offsets, the start or the end of the log), and the
//! workers start again from there.
//!
//! The offsets are set only once no worker pod is left: a worker still running would commit
//! over them when its batch ends. The commit is an ordinary group offset commit (the workers
//! assign partitions themselves, so the group has no members to disturb), so every Kafka tool
//! sees the new position at once.

use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use kube::runtime::events::EventType;
use kube::ResourceExt;
use tracing::info;

use crate::controller::Context;
use crate::crd::{ResumedOffset, RewindSpec, RewindStatus, StreamingJob};
use crate::observe::{KafkaTarget, ObserveError};
use crate::reconcile::publish;
use crate::restarts::RESUMED_ROWS;
use crate::scaling::Running;
use crate::{Error, Result};

/// Where the offsets go, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RewindTo {
    /// Milliseconds since the epoch.
    Timestamp(i64),
    Offsets(Vec<(String, i32, i64)>),
    Earliest,
    Latest,
}

/// PURE: the spec's target, or what is wrong with it (a message naming the field).
///
/// # Errors
/// When not exactly one target is set, the timestamp is not RFC 3339, or an offset names a
/// topic the job does not read.
pub fn target(spec: &RewindSpec, topics: &[String]) -> Result<RewindTo, String> {
    let set = [
        spec.to_timestamp.is_some(),
        spec.offsets.is_some(),
        spec.to_earliest,
        spec.to_latest,
    ];
    if set.iter().filter(|x| **x).count() != 1 {
        return Err("set exactly one of toTimestamp, offsets, toEarliest, toLatest".into());
    }
    if let Some(t) = &spec.to_timestamp {
        let at: Timestamp = t.parse().map_err(|_| {
            format!("toTimestamp {t:?} is not an RFC 3339 time, e.g. 2026-01-31T12:00:00Z")
        })?;
        return Ok(RewindTo::Timestamp(at.as_millisecond()));
    }
    if let Some(offsets) = &spec.offsets {
        if let Some(o) = offsets.iter().find(|o| !topics.contains(&o.topic)) {
            return Err(format!(
                "offsets names topic {:?}, which the job does not read",
                o.topic
            ));
        }
        return Ok(RewindTo::Offsets(
            offsets
                .iter()
                .map(|o| (o.topic.clone(), o.partition, o.offset))
                .collect(),
        ));
    }
    Ok(if spec.to_earliest {
        RewindTo::Earliest
    } else {
        RewindTo::Latest
    })
}

/// PURE: the rewind to run, if `spec`'s id is not the one last done.
pub fn pending<'a>(spec: Option<&'a RewindSpec>, done: Option<&str>) -> Option<&'a RewindSpec> {
    spec.filter(|r| done != Some(r.id.as_str()))
}

/// PURE: what status shows of a rewind done at `now`.
pub fn status(id: &str, mut offsets: Vec<ResumedOffset>, now: Timestamp) -> RewindStatus {
    offsets.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    let omitted = offsets.len().saturating_sub(RESUMED_ROWS);
    offsets.truncate(RESUMED_ROWS);
    RewindStatus {
        id: id.to_string(),
        time: Time(now),
        offsets,
        omitted: u32::try_from(omitted).unwrap_or(u32::MAX),
    }
}

/// Commits the job's group offsets per `to`, within `timeout`. Blocking: call it from the
/// blocking pool. Returns the offsets committed.
///
/// # Errors
/// When the brokers cannot be reached, a topic is missing, or the commit is refused.
pub fn set_offsets(
    target: &KafkaTarget,
    to: &RewindTo,
    timeout: Duration,
) -> Result<Vec<ResumedOffset>, ObserveError> {
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(ObserveError::Timeout(timeout))
    };
    let source = &target.source;
    let consumer: BaseConsumer = weir_worker::client::base(&source.bootstrap_servers, source)
        .set("group.id", &target.group)
        .set("client.id", "weir-operator-rewind")
        .set("enable.auto.commit", "false")
        .create()
        .map_err(ObserveError::Client)?;
    let mut tpl = TopicPartitionList::new();
    match to {
        RewindTo::Offsets(list) => {
            for (topic, partition, offset) in list {
                tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))
                    .map_err(ObserveError::kafka("partition list"))?;
            }
        }
        _ => {
            let at = match to {
                RewindTo::Timestamp(ms) => Offset::Offset(*ms),
                RewindTo::Earliest => Offset::Beginning,
                _ => Offset::End,
            };
            let (mut ask, mut ends) = (TopicPartitionList::new(), TopicPartitionList::new());
            for topic in &source.topics {
                let md = consumer
                    .fetch_metadata(Some(topic), left()?)
                    .map_err(ObserveError::kafka("topic metadata"))?;
                let t = md
                    .topics()
                    .iter()
                    .find(|t| t.name() == topic && t.error().is_none())
                    .filter(|t| !t.partitions().is_empty())
                    .ok_or_else(|| ObserveError::MissingTopic(topic.clone()))?;
                for p in t.partitions() {
                    ask.add_partition_offset(topic, p.id(), at)
                        .map_err(ObserveError::kafka("partition list"))?;
                    ends.add_partition_offset(topic, p.id(), Offset::End)
                        .map_err(ObserveError::kafka("partition list"))?;
                }
            }
            let list = |l: TopicPartitionList| {
                let found = consumer
                    .offsets_for_times(l, left()?)
                    .map_err(ObserveError::kafka("list offsets"))?;
                for e in found.elements() {
                    e.error().map_err(ObserveError::kafka("list offsets"))?;
                }
                Ok::<_, ObserveError>(found)
            };
            let (found, ends) = (list(ask)?, list(ends)?);
            for e in found.elements() {
                let offset = match e.offset() {
                    Offset::Offset(o) => o,
                    // No record at or after the time: the end, so nothing older is read again.
                    _ => ends
                        .find_partition(e.topic(), e.partition())
                        .and_then(|x| match x.offset() {
                            Offset::Offset(o) => Some(o),
                            _ => None,
                        })
                        .ok_or(ObserveError::NoOffsets("end"))?,
                };
                tpl.add_partition_offset(e.topic(), e.partition(), Offset::Offset(offset))
                    .map_err(ObserveError::kafka("partition list"))?;
            }
        }
    }
    consumer
        .commit(&tpl, CommitMode::Sync)
        .map_err(ObserveError::kafka("offset commit"))?;
    Ok(tpl
        .elements()
        .iter()
        .map(|e| ResumedOffset {
            topic: e.topic().to_string(),
            partition: e.partition(),
            offset: match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            },
        })
        .collect())
}

/// Runs a pending rewind once no worker is left. Returns the id of a rewind still waiting
/// for the workers to stop, and the last rewind done for status.
pub(crate) async fn step(
    ctx: &Context,
    job: &StreamingJob,
    ns: &str,
    now: Option<Running>,
) -> Result<(Option<String>, Option<RewindStatus>)> {
    let last = ctx
        .rewound(job)
        .or_else(|| job.status.as_ref().and_then(|s| s.rewind.clone()));
    let Some(spec) = pending(
        job.spec.rewind.as_ref(),
        last.as_ref().map(|r| r.id.as_str()),
    ) else {
        return Ok((None, last));
    };
    if now.is_some_and(|n| n.pods > 0) {
        return Ok((Some(spec.id.clone()), last));
    }
    let kafka = KafkaTarget::of(job, ns, &job.name_any());
    // validate() refused a bad target before this runs.
    let Ok(to) = target(spec, &kafka.source.topics) else {
        return Ok((None, last));
    };
    let kafka = crate::observe::with_credentials(ctx, ns, kafka)
        .await
        .map_err(Error::Rewind)?;
    let offsets = crate::observe::rewind(ctx.observer.clone(), kafka, to)
        .await
        .map_err(Error::Rewind)?;
    let done = status(&spec.id, offsets, Timestamp::now());
    ctx.keep_rewound(job, done.clone());
    let shown: Vec<String> = done
        .offsets
        .iter()
        .map(|o| format!("{}/{}@{}", o.topic, o.partition, o.offset.unwrap_or(-1)))
        .collect();
    let mut note = format!(
        "rewind {:?}: group offsets set to {}",
        spec.id,
        shown.join(", ")
    );
    if done.omitted > 0 {
        note.push_str(&format!(" and {} more partitions", done.omitted));
    }
    info!(id = %spec.id, partitions = done.offsets.len() + done.omitted as usize, "rewound; starting the workers");
    publish(
        ctx,
        job,
        (EventType::Normal, "Rewound", "Rewind"),
        crate::status::cut_message(note),
    )
    .await;
    Ok((None, Some(done)))
}
