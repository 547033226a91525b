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

use crate::compile::recompile;
use crate::metrics::Metrics;
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

/// How long a replaced snapshot is kept before it is dropped.
const RETIRE_AFTER: Duration = Duration::from_secs(1);

/// Drops a replaced snapshot a second later rather than now. Freeing a large model and
/// compile output takes milliseconds, and right after a publish those belong to the
/// streams pushing the change. Must be called within a Tokio runtime.
pub fn retire(old: Arc<Snapshot>) {
    tokio::spawn(async move {
        tokio::time::sleep(RETIRE_AFTER).await;
        drop(old);
    });
}

/// Compiles a model into a snapshot, reusing what did not change.
pub fn snapshot(
    model: &Arc<Model>,
    previous: Option<&Snapshot>,
    observed_at: Instant,
    metrics: &Metrics,
) -> Snapshot {
    let started = Instant::now();
    let compiled = recompile(model, previous.map(|p| (&*p.model, &*p.compiled)));
    metrics
        .compile_duration
        .observe(started.elapsed().as_secs_f64());
    for (kind, count) in [
        ("RedisCluster", model.redis_clusters.len()),
        ("Pod", model.pods.len()),
        ("EndpointSlice", model.endpoint_slices.len()),
        ("Secret", model.secrets.len()),
    ] {
        metrics
            .model_objects
            .get_or_create(&[("kind", kind)])
            .set(count as i64);
    }
    metrics
        .problems
        .get_or_create(&[("stage", "compile")])
        .set(compiled.problems.len() as i64);
    for reason in crate::compile::Reason::ALL {
        let n = compiled
            .problems
            .iter()
            .filter(|p| p.reason == reason)
            .count();
        metrics
            .problems_by_reason
            .get_or_create(&[("reason", reason.as_str())])
            .set(n as i64);
    }
    for p in &compiled.problems {
        warn!(object = %p.object, field = %p.field, reason = p.reason.as_str(), "{}", p.message);
    }
    let snap = Snapshot::build(Arc::clone(model), Arc::new(compiled), previous, observed_at);
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
    mut ready: watch::Receiver<bool>,
    snapshots: watch::Sender<Arc<Snapshot>>,
    sources: watch::Sender<Arc<dyn ResourceSource>>,
    debounce: Debounce,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut ready_open = true;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = models.changed() => if changed.is_err() { return },
            // A closed readiness channel means the source is done changing it.
            changed = ready.changed(), if ready_open => {
                if changed.is_err() {
                    ready_open = false;
                    continue;
                }
            }
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
        let mut snap = snapshot(&model, Some(&previous), first, &metrics);
        snap.ready = *ready.borrow_and_update();
        let snap = Arc::new(snap);
        snapshots.send_replace(Arc::clone(&snap));
        sources.send_replace(snap);
        retire(previous);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ObjectKey, RedisClusterObject};

    fn model(n: u64) -> Arc<Model> {
        let mut m = Model::default();
        let key = ObjectKey::new("ns", format!("rc{n}"));
        let object = RedisClusterObject::new(key.clone(), Default::default(), n);
        m.redis_clusters.insert(key, object.into());
        Arc::new(m)
    }

    struct Rig {
        models: watch::Sender<Arc<Model>>,
        snapshots: watch::Receiver<Arc<Snapshot>>,
        shutdown: CancellationToken,
    }

    fn rig(debounce: Debounce) -> Rig {
        let (models, model_rx) = watch::channel(model(0));
        let first = Arc::new(snapshot(
            &model(0),
            None,
            Instant::now(),
            &Metrics::default(),
        ));
        let (snap_tx, snapshots) = watch::channel(Arc::clone(&first));
        let (source_tx, _source_rx) = watch::channel::<Arc<dyn ResourceSource>>(first);
        let shutdown = CancellationToken::new();
        let (_ready_tx, ready_rx) = watch::channel(true);
        tokio::spawn(run(
            model_rx,
            ready_rx,
            snap_tx,
            source_tx,
            debounce,
            Arc::new(Metrics::default()),
            shutdown.clone(),
        ));
        Rig {
            models,
            snapshots,
            shutdown,
        }
    }

    fn objects(s: &Snapshot) -> usize {
        s.compiled.objects.len()
    }

    fn name(s: &Snapshot) -> String {
        s.compiled.objects.keys().next().unwrap().name.clone()
    }

    #[tokio::test(start_paused = true)]
    async fn should_coalesce_a_burst_into_one_snapshot_after_the_quiet_period() {
        let mut r = rig(Debounce::default());
        r.snapshots.borrow_and_update();
        for n in 1..=5 {
            r.models.send_replace(model(n));
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(
                !r.snapshots.has_changed().unwrap(),
                "published during the burst"
            );
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(
            r.snapshots.has_changed().unwrap(),
            "not published after the quiet period"
        );
        let s = Arc::clone(&r.snapshots.borrow_and_update());
        assert_eq!(
            (objects(&s), name(&s)),
            (1, "rc5".to_string()),
            "the last model of the burst"
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(
            !r.snapshots.has_changed().unwrap(),
            "one snapshot per burst"
        );
        r.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn should_publish_within_the_maximum_delay_while_changes_keep_coming() {
        let mut r = rig(Debounce::default());
        r.snapshots.borrow_and_update();
        let start = tokio::time::Instant::now();
        let mut n = 0;
        while !r.snapshots.has_changed().unwrap() {
            n += 1;
            r.models.send_replace(model(n));
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(
                start.elapsed() <= Duration::from_millis(1100),
                "no snapshot within the maximum delay"
            );
        }
        assert!(
            start.elapsed() >= Duration::from_millis(950),
            "published before the maximum delay"
        );
        r.shutdown.cancel();
    }
}
