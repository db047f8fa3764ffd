//! Events: what the operator tells `kubectl describe` beside the status.

use kube::runtime::events::{Event, EventType};
use kube::Resource;
use tracing::warn;

use crate::context::Context;
use crate::crd::StreamingJob;

/// An Event is a courtesy; status already says it, so a failed post is only logged.
///
/// kube-runtime's recorder folds Events with the same type, reason and action into one (a
/// series with a count) and keeps the first one's note, so three rewinds would show the
/// first id three times. The action carries a fingerprint of the note: each occurrence with
/// other facts is an Event of its own, and only true repeats are counted in one.
pub async fn publish(
    ctx: &Context,
    job: &StreamingJob,
    (type_, reason, action): (EventType, &str, &str),
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        action: format!("{action}-{:08x}", fingerprint(&note)),
        note: Some(note),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &job.object_ref(&())).await {
        warn!(error = %e, "cannot publish event");
    }
}

/// FNV-1a of `text`: stable across builds and processes (unlike std's hasher), so a restarted
/// operator folds a repeat the same way.
pub fn fingerprint(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}
