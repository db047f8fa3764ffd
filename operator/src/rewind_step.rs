//! One reconcile's part of a rewind: runs the pending `spec.rewind` once no worker is left
//! (the plan is [`crate::rewind`], the Kafka commit [`crate::observe::set_offsets`]).

use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::EventType;
use kube::ResourceExt;
use tracing::info;

use crate::context::Context;
use crate::crd::{RewindStatus, StreamingJob};
use crate::events::publish;
use crate::observation::{KafkaTarget, ObserveError, PartitionOffsets};
use crate::rewind::{check_offsets, pending, status, target, with_ignored, RewindTo};
use crate::scaling::Running;
use crate::{Error, Result};

/// What one pass does about `spec.rewind`.
#[derive(Debug, Default)]
pub(crate) struct Step {
    /// The id of a rewind waiting for the workers to stop.
    pub stopping: Option<String>,
    /// The last rewind done, for status.
    pub done: Option<RewindStatus>,
    /// Why the pending rewind was refused (it stops nothing and commits nothing).
    pub refused: Option<String>,
}

/// Runs a pending rewind once no worker is left, after checking explicit offsets against
/// `partitions` (as last observed) before stopping anything.
pub(crate) async fn step(
    ctx: &Context,
    job: &StreamingJob,
    ns: &str,
    now: Option<Running>,
    partitions: &[PartitionOffsets],
) -> Result<Step> {
    let last = ctx
        .rewound(job)
        .or_else(|| job.status.as_ref().and_then(|s| s.rewind.clone()));
    let Some(spec) = pending(
        job.spec.rewind.as_ref(),
        last.as_ref().map(|r| r.id.as_str()),
    ) else {
        return Ok(Step {
            done: with_ignored(last, job.spec.rewind.as_ref()),
            ..Step::default()
        });
    };
    let kafka = KafkaTarget::of(job, ns, &job.name_any());
    // validate() refused a bad target before this runs.
    let Ok(to) = target(spec, &kafka.source.topics) else {
        return Ok(Step {
            done: last,
            ..Step::default()
        });
    };
    let refused = |why: String| {
        let mut s = format!("rewind {:?}: {why}", spec.id);
        crate::status::cut(&mut s);
        Ok(Step {
            done: last.clone(),
            refused: Some(s),
            ..Step::default()
        })
    };
    if let RewindTo::Offsets(list) = &to {
        // Nothing stops before the partitions are known: without them a rewind Kafka would
        // refuse leaves the job stopped. observeError says why they are not.
        if partitions.is_empty() {
            return Ok(Step {
                done: last,
                ..Step::default()
            });
        }
        if let Err(why) = check_offsets(list, partitions) {
            return refused(why);
        }
    }
    // Setting offsets under a running worker cannot be undone: the store may not have seen a
    // pod yet, so the API server has the last word before the commit.
    let live = match now.filter(|n| n.pods == 0) {
        Some(_) => crate::apply::live_pods(&ctx.client, ns, &job.name_any()).await?,
        None => 0,
    };
    if now.is_some_and(|n| n.pods > 0) || live > 0 {
        return Ok(Step {
            stopping: Some(spec.id.clone()),
            done: last,
            refused: None,
        });
    }
    let kafka = crate::observe::with_credentials(&ctx.credentials(), ns, kafka)
        .await
        .map_err(Error::Rewind)?;
    let rewound = match crate::observe::rewind(ctx.observer.clone(), kafka, to).await {
        Ok(r) => r,
        // Kafka changed since the last observation: nothing was committed; the workers start
        // again from where they were.
        Err(ObserveError::RewindRefused(why)) => return refused(why),
        Err(e) => return Err(Error::Rewind(e)),
    };
    let done = status(spec, rewound, Timestamp::now());
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
    if let Some(c) = &done.capped {
        note.push_str(&format!(" ({c})"));
    }
    info!(id = %spec.id, partitions = done.offsets.len() + done.omitted as usize, "rewound; starting the workers");
    publish(
        ctx,
        job,
        (EventType::Normal, "Rewound", "Rewind"),
        crate::status::cut_message(note),
    )
    .await;
    Ok(Step {
        done: Some(done),
        ..Step::default()
    })
}
