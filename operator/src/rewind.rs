//! PURE: declarative rewind's plan: when `spec.rewind.id` changes, the workers stop, the job's group
//! offsets are set (to a time, explicit offsets, the start or the end of the log), and the
//! workers start again from there.
//!
//! The offsets are set only once no worker pod is left: a worker still running would commit
//! over them when its batch ends. The commit is an ordinary group offset commit (the workers
//! assign partitions themselves, so the group has no members to disturb), so every Kafka tool
//! sees the new position at once.
//!
//! Explicit offsets are checked against the partitions Kafka reports before anything stops,
//! and again just before the commit: a partition that does not exist refuses the whole rewind
//! (a Warning Event and the `RewindRefused` condition name it, and the workers keep running);
//! an offset past the end of its partition is set to the end, and status says so. All the
//! offsets go in one commit, never part of them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use crate::crd::{ResumedOffset, RewindSpec, RewindStatus};
use crate::observation::PartitionOffsets;
use crate::restarts::RESUMED_ROWS;

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

/// The condition a refused rewind sets, naming what Kafka does not have.
pub const REWIND_REFUSED: &str = "RewindRefused";

/// PURE: a spec's target in words, as status shows it (`toEarliest`, `offsets lines/2@7`).
pub fn describe(spec: &RewindSpec) -> String {
    let mut words = match (&spec.to_timestamp, &spec.offsets) {
        (Some(t), _) => format!("toTimestamp {t}"),
        (None, Some(list)) => format!(
            "offsets {}",
            list.iter()
                .map(|o| format!("{}/{}@{}", o.topic, o.partition, o.offset))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ if spec.to_earliest => "toEarliest".into(),
        _ if spec.to_latest => "toLatest".into(),
        _ => "no target".into(),
    };
    crate::status::cut(&mut words);
    words
}

/// Explicit offsets, checked against the partitions Kafka reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    /// What to commit: every listed partition, offsets past the end set to the end.
    pub offsets: Vec<(String, i32, i64)>,
    /// One line per offset that was past the end.
    pub capped: Vec<String>,
}

/// PURE: `list` against `known` partitions (their ends as last read).
///
/// # Errors
/// Names every listed partition Kafka does not have, with each topic's partition count.
pub fn check_offsets(
    list: &[(String, i32, i64)],
    known: &[PartitionOffsets],
) -> Result<Checked, String> {
    let mut checked = Checked {
        offsets: Vec::with_capacity(list.len()),
        capped: Vec::new(),
    };
    let mut missing = Vec::new();
    for (topic, partition, offset) in list {
        match known
            .iter()
            .find(|p| p.topic == *topic && p.partition == *partition)
        {
            None => missing.push(format!("{topic}/{partition}")),
            Some(p) if *offset > p.end => {
                checked.capped.push(format!(
                    "{topic}/{partition}: {offset} is past the end of the partition, {}; set to the end",
                    p.end
                ));
                checked.offsets.push((topic.clone(), *partition, p.end));
            }
            Some(_) => checked.offsets.push((topic.clone(), *partition, *offset)),
        }
    }
    if missing.is_empty() {
        return Ok(checked);
    }
    let mut topics: Vec<&str> = list.iter().map(|(t, _, _)| t.as_str()).collect();
    topics.sort_unstable();
    topics.dedup();
    let counts: Vec<String> = topics
        .iter()
        .map(|t| {
            let n = known.iter().filter(|p| p.topic == *t).count();
            format!("{t} has {n} partitions, 0..{}", n.saturating_sub(1))
        })
        .collect();
    Err(format!(
        "partition {} does not exist ({}); fix spec.rewind.offsets and set a new id. \
         No offsets were set",
        missing.join(", "),
        counts.join("; ")
    ))
}

/// What a rewind committed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rewound {
    pub offsets: Vec<ResumedOffset>,
    /// As [`Checked::capped`].
    pub capped: Vec<String>,
}

/// PURE: what status shows of a rewind done at `now`.
pub fn status(spec: &RewindSpec, done: Rewound, now: Timestamp) -> RewindStatus {
    let mut offsets = done.offsets;
    offsets.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    let omitted = offsets.len().saturating_sub(RESUMED_ROWS);
    offsets.truncate(RESUMED_ROWS);
    let capped = (!done.capped.is_empty()).then(|| {
        let mut s = done.capped.join("; ");
        crate::status::cut(&mut s);
        s
    });
    RewindStatus {
        id: spec.id.clone(),
        time: Time(now),
        offsets,
        omitted: u32::try_from(omitted).unwrap_or(u32::MAX),
        target: Some(describe(spec)),
        capped,
        ignored: None,
    }
}

/// PURE: `last` with a note when `spec` asks for another target under the id already done,
/// which a user who edited only the target would otherwise wait for in vain.
pub fn with_ignored(last: Option<RewindStatus>, spec: Option<&RewindSpec>) -> Option<RewindStatus> {
    let mut last = last?;
    last.ignored = spec
        .filter(|s| s.id == last.id)
        .map(describe)
        .filter(|asked| last.target.as_ref().is_some_and(|done| done != asked))
        .map(|asked| {
            let mut s = format!(
                "spec.rewind asks for {asked} under id {:?}, which was already done (for {}); \
                 set a new id to run it",
                last.id,
                last.target.as_deref().unwrap_or_default()
            );
            crate::status::cut(&mut s);
            s
        });
    Some(last)
}

/// Sets or clears the `RewindRefused` condition; returns the note of a refusal the previous
/// status did not show yet, for a Warning Event.
pub(crate) fn record_refusal(
    status: &mut crate::crd::StreamingJobStatus,
    previous: Option<&crate::crd::StreamingJobStatus>,
    refused: Option<&str>,
    generation: Option<i64>,
    now: Timestamp,
) -> Option<String> {
    let Some(message) = refused else {
        status.conditions.retain(|c| c.type_ != REWIND_REFUSED);
        return None;
    };
    let shown = previous.is_some_and(|p| {
        p.conditions
            .iter()
            .any(|c| c.type_ == REWIND_REFUSED && c.message == message)
    });
    crate::status::set_condition(
        &mut status.conditions,
        Condition {
            type_: REWIND_REFUSED.into(),
            status: "True".into(),
            reason: "PartitionNotFound".into(),
            message: message.to_string(),
            observed_generation: generation,
            last_transition_time: Time(now),
        },
    );
    (!shown).then(|| message.to_string())
}
