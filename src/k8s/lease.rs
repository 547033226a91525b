//! Leader election with a `coordination.k8s.io/v1` Lease: only the holder writes status.
//! Every replica serves xDS regardless.
//!
//! The holder renews every third of the lease duration. Another replica takes over once
//! the lease has not been renewed for a whole duration, or at its next try once the holder
//! released it on shutdown (as client-go's leader election does with `ReleaseOnCancel`). Updates carry the Lease's
//! resourceVersion, so two replicas racing for an expired lease cannot both win.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Lease settings.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Lease name.
    pub name: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// How long a lease lasts without renewal.
    pub duration: Duration,
}

/// Tries to acquire or renew the lease; `Ok(true)` when this replica holds it afterwards.
pub async fn acquire_or_renew(
    api: &Api<Lease>,
    cfg: &LeaseConfig,
    now: jiff::Timestamp,
) -> Result<bool, kube::Error> {
    let seconds = i32::try_from(cfg.duration.as_secs()).unwrap_or(i32::MAX);
    let Some(mut lease) = api.get_opt(&cfg.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(cfg.name.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(cfg.identity.clone()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            // Another replica created it first.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    let held_by_me = spec.holder_identity.as_deref() == Some(cfg.identity.as_str());
    let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
        (Some(MicroTime(renewed)), Some(d)) => {
            now.as_millisecond() > renewed.as_millisecond() + i64::from(d) * 1000
        }
        _ => true,
    };
    if !held_by_me && !expired {
        return Ok(false);
    }
    if !held_by_me {
        spec.holder_identity = Some(cfg.identity.clone());
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.renew_time = Some(MicroTime(now));
    spec.lease_duration_seconds = Some(seconds);
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        // Someone else updated it since we read it: they won this round.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gives the lease up if this replica holds it: the holder is cleared, so that another
/// replica takes over at its next try instead of after the lease expired.
pub async fn release(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(&cfg.name).await? else {
        return Ok(());
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.renew_time = None;
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        // Updated since we read it: whoever did holds it now.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        other => other.map(drop),
    }
}

/// Keeps trying until `shutdown`, then releases the lease if held; publishes whether this
/// replica leads.
pub async fn run(
    api: Api<Lease>,
    cfg: LeaseConfig,
    leader: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let period = cfg.duration / 3;
    loop {
        let held = match acquire_or_renew(&api, &cfg, jiff::Timestamp::now()).await {
            Ok(held) => held,
            Err(e) => {
                warn!(error = %e, lease = %cfg.name, "lease request failed; not writing status until it succeeds");
                false
            }
        };
        if leader.send_replace(held) != held {
            info!(lease = %cfg.name, leader = held, "status leadership changed");
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(period) => {}
        }
    }
    if *leader.borrow() {
        leader.send_replace(false);
        // Bounded: a stopping replica must not hang on an unreachable API server.
        match tokio::time::timeout(Duration::from_secs(2), release(&api, &cfg)).await {
            Ok(Ok(())) => info!(lease = %cfg.name, "status lease released"),
            Ok(Err(e)) => {
                warn!(error = %e, lease = %cfg.name, "cannot release the status lease; it expires on its own")
            }
            Err(_) => {
                warn!(lease = %cfg.name, "releasing the status lease timed out; it expires on its own")
            }
        }
    }
}
