//! The publisher: model changes in, snapshots out, with debouncing.
//!
//! Bursts of changes (an editor writing several files, a rollout touching many pods)
//! coalesce: a snapshot is built once the model has been quiet for `quiet`, and at the
//! latest `max_delay` after the first change of the burst.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::compile::compile;
use crate::model::Model;
use crate::snapshot::Snapshot;
use crate::xds::ResourceSource;

/// Debounce settings.
#[derive(Clone, Copy, Debug)]
pub struct Debounce {
    /// Quiet period after the last change.
    pub quiet: Duration,
    /// Longest delay after the first change of a burst.
    pub max_delay: Duration,
}

impl Default for Debounce {
    fn default() -> Self {
        Debounce {
            quiet: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        }
    }
}

/// Compiles a model into a snapshot, reusing what did not change.
pub fn snapshot(model: &Model, previous: Option<&Snapshot>, observed_at: Instant) -> Snapshot {
    let started = Instant::now();
    let compiled = compile(model);
    for p in &compiled.problems {
        warn!(object = %p.object, field = %p.field, reason = p.reason.as_str(), "{}", p.message);
    }
    let snap = Snapshot::build(Arc::new(compiled), previous, observed_at);
    info!(
        clusters = snap.compiled.clusters.len(),
        listeners = snap.compiled.listeners.len(),
        problems = snap.compiled.problems.len(),
        compile_ms = started.elapsed().as_secs_f64() * 1000.0,
        "published snapshot"
    );
    snap
}

/// Follows `models` until `shutdown`, publishing a snapshot per (debounced) change on both
/// `snapshots` (for the debug views) and `sources` (for the ADS server).
pub async fn run(
    mut models: watch::Receiver<Arc<Model>>,
    snapshots: watch::Sender<Arc<Snapshot>>,
    sources: watch::Sender<Arc<dyn ResourceSource>>,
    debounce: Debounce,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = models.changed() => if changed.is_err() { return },
        }
        let first = Instant::now();
        let deadline = tokio::time::Instant::from_std(first + debounce.max_delay);
        loop {
            let quiet_end = tokio::time::Instant::now() + debounce.quiet;
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep_until(quiet_end.min(deadline)) => break,
                changed = models.changed() => {
                    if changed.is_err() { return }
                    if tokio::time::Instant::now() >= deadline { break }
                }
            }
        }
        let model = Arc::clone(&models.borrow_and_update());
        let previous = Arc::clone(&snapshots.borrow());
        let snap = Arc::new(snapshot(&model, Some(&previous), first));
        snapshots.send_replace(Arc::clone(&snap));
        sources.send_replace(snap);
    }
}
