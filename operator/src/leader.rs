//! Leader election with a `coordination.k8s.io/v1` Lease, so that two operator replicas never
//! reconcile at once.
//!
//! The holder renews `renewTime` every `renew_every`; anyone may take the lease once
//! `renewTime + leaseDurationSeconds` has passed. Writes carry the lease's resourceVersion, so
//! when two candidates race, the API server lets exactly one win (the other gets 409).

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    /// This replica's identity, usually its pod name.
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_every: Duration,
}

/// What to do with the lease as it is now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds it, or the holder let it expire: take it.
    Acquire,
    /// We hold it: renew it.
    Renew,
    /// Someone else holds a live lease.
    Follow { holder: String },
}

/// Decides from the lease's spec alone (PURE).
pub fn decide(
    spec: Option<&LeaseSpec>,
    me: &str,
    now: Timestamp,
    default_duration: Duration,
) -> Decision {
    let Some(spec) = spec else {
        return Decision::Acquire;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() {
        return Decision::Acquire;
    }
    if holder == me {
        return Decision::Renew;
    }
    let duration = spec.lease_duration_seconds.map_or(default_duration, |s| {
        Duration::from_secs(u64::try_from(s).unwrap_or(0))
    });
    let last = spec.renew_time.as_ref().or(spec.acquire_time.as_ref());
    let expired = match last {
        None => true,
        Some(MicroTime(t)) => {
            let until =
                t.saturating_add(SignedDuration::try_from(duration).unwrap_or(SignedDuration::MAX));
            until.is_ok_and(|u| u < now)
        }
    };
    if expired {
        Decision::Acquire
    } else {
        Decision::Follow {
            holder: holder.to_string(),
        }
    }
}

/// The spec to write after `decision` (never called for `Follow`).
pub fn next_spec(
    current: Option<&LeaseSpec>,
    decision: &Decision,
    cfg: &LeaseConfig,
    now: Timestamp,
) -> LeaseSpec {
    let mut spec = current.cloned().unwrap_or_default();
    if *decision == Decision::Acquire {
        if current.is_some_and(|c| c.holder_identity.as_deref() != Some(&cfg.identity)) {
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.acquire_time = Some(MicroTime(now));
    }
    spec.holder_identity = Some(cfg.identity.clone());
    spec.lease_duration_seconds =
        Some(i32::try_from(cfg.lease_duration.as_secs()).unwrap_or(i32::MAX));
    spec.renew_time = Some(MicroTime(now));
    spec
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// One round: read the lease, take or renew it if allowed. `Ok(true)` when we hold it now.
///
/// # Errors
/// API errors other than losing a race (409), which is `Ok(false)`.
pub async fn try_acquire_or_renew(
    api: &Api<Lease>,
    cfg: &LeaseConfig,
) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let current = api.get_opt(&cfg.name).await?;
    let decision = decide(
        current.as_ref().and_then(|l| l.spec.as_ref()),
        &cfg.identity,
        now,
        cfg.lease_duration,
    );
    if let Decision::Follow { .. } = decision {
        return Ok(false);
    }
    let spec = next_spec(
        current.as_ref().and_then(|l| l.spec.as_ref()),
        &decision,
        cfg,
        now,
    );
    let result = match current {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.name.clone()),
                    namespace: Some(cfg.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec),
            };
            api.create(&PostParams::default(), &lease).await
        }
        Some(mut lease) => {
            // Keeping metadata.resourceVersion makes this a compare-and-swap.
            lease.spec = Some(spec);
            api.replace(&cfg.name, &PostParams::default(), &lease).await
        }
    };
    match result {
        Ok(_) => Ok(true),
        Err(e) if is_conflict(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Campaigns until `shutdown`, publishing whether we lead. A leader that cannot renew steps
/// down before its lease can expire, so two leaders never overlap.
pub async fn run(
    api: Api<Lease>,
    cfg: LeaseConfig,
    leading: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    // Step down with a margin: others may take the lease at renew + duration.
    let deadline = cfg
        .lease_duration
        .saturating_sub(cfg.renew_every.min(cfg.lease_duration / 3));
    let mut last_renewed: Option<Instant> = None;
    loop {
        match try_acquire_or_renew(&api, &cfg).await {
            Ok(true) => last_renewed = Some(Instant::now()),
            Ok(false) => last_renewed = None,
            Err(e) => warn!(error = %e, lease = %cfg.name, "cannot read or renew the leader lease"),
        }
        let now_leading = last_renewed.is_some_and(|t| t.elapsed() < deadline);
        if leading.send_replace(now_leading) != now_leading {
            info!(identity = %cfg.identity, leading = now_leading, "leadership changed");
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(cfg.renew_every) => {}
        }
    }
    if *leading.borrow() {
        release(&api, &cfg).await;
        leading.send_replace(false);
    }
}

/// The lease was lost while working; the caller should exit so it rejoins the election cleanly.
#[derive(Debug, thiserror::Error)]
#[error("lost the leader lease {0}")]
pub struct LostLease(pub String);

/// Runs `work` only while this replica holds the lease: waits to lead, starts `work` with a
/// token, and cancels that token (then waits for `work` to finish) if the lease is lost.
///
/// # Errors
/// [`LostLease`] when leadership ended before `shutdown` did.
pub async fn while_leading<F, Fut>(
    api: Api<Lease>,
    cfg: LeaseConfig,
    shutdown: CancellationToken,
    work: F,
) -> Result<(), LostLease>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let name = cfg.name.clone();
    let campaign_stop = shutdown.child_token();
    let (tx, mut rx) = watch::channel(false);
    let campaign = tokio::spawn(run(api, cfg, tx, campaign_stop.clone()));
    let mut lost = false;
    let leading = tokio::select! {
        r = rx.wait_for(|l| *l) => r.is_ok(),
        () = shutdown.cancelled() => false,
    };
    if leading {
        info!(lease = %name, "leading: starting work");
        let stop = shutdown.child_token();
        let work = work(stop.clone());
        tokio::pin!(work);
        // Only a bool leaves the select: a watch::Ref held across an await is not Send. A
        // campaign that ended (channel closed) means not leading either.
        let lost_lead = tokio::select! {
            () = &mut work => false,
            _ = rx.wait_for(|l| !*l) => true,
        };
        if lost_lead {
            warn!(lease = %name, "lost the leader lease; stopping work");
            lost = !shutdown.is_cancelled();
            stop.cancel();
            work.await;
        }
    }
    campaign_stop.cancel();
    if let Err(e) = campaign.await {
        warn!(error = %e, "leader campaign task failed");
    }
    if lost {
        Err(LostLease(name))
    } else {
        Ok(())
    }
}

/// Hands the lease back on a clean exit so the next replica need not wait for it to expire.
async fn release(api: &Api<Lease>, cfg: &LeaseConfig) {
    let Ok(Some(mut lease)) = api.get_opt(&cfg.name).await else {
        return;
    };
    if let Some(spec) = lease.spec.as_mut() {
        if spec.holder_identity.as_deref() != Some(&cfg.identity) {
            return;
        }
        spec.holder_identity = None;
    }
    if let Err(e) = api.replace(&cfg.name, &PostParams::default(), &lease).await {
        warn!(error = %e, "cannot release the leader lease; it will expire");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(15);

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn held_by(holder: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(t(renewed))),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn free_or_missing_lease_is_taken() {
        assert_eq!(decide(None, "a", t(100), D), Decision::Acquire);
        let free = LeaseSpec::default();
        assert_eq!(decide(Some(&free), "a", t(100), D), Decision::Acquire);
    }

    #[test]
    fn own_lease_is_renewed() {
        assert_eq!(
            decide(Some(&held_by("a", 0)), "a", t(1000), D),
            Decision::Renew
        );
    }

    #[test]
    fn live_lease_of_another_is_respected_until_it_expires() {
        let lease = held_by("b", 100);
        assert_eq!(
            decide(Some(&lease), "a", t(110), D),
            Decision::Follow { holder: "b".into() }
        );
        assert_eq!(
            decide(Some(&lease), "a", t(115), D),
            Decision::Follow { holder: "b".into() }
        );
        assert_eq!(decide(Some(&lease), "a", t(116), D), Decision::Acquire);
    }

    #[test]
    fn taking_over_counts_a_transition() {
        let cfg = LeaseConfig {
            name: "weir-operator".into(),
            namespace: "weir".into(),
            identity: "a".into(),
            lease_duration: D,
            renew_every: Duration::from_secs(5),
        };
        let spec = next_spec(Some(&held_by("b", 0)), &Decision::Acquire, &cfg, t(50));
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(spec.lease_transitions, Some(1));
        assert_eq!(spec.renew_time, Some(MicroTime(t(50))));
        let renewed = next_spec(Some(&spec), &Decision::Renew, &cfg, t(55));
        assert_eq!(renewed.lease_transitions, Some(1));
        assert_eq!(renewed.acquire_time, Some(MicroTime(t(50))));
    }
}
