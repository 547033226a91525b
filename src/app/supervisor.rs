//! The long-running tasks of `serve`, each named and run in a span of its own, watched so
//! that none can stop unnoticed.
//!
//! Every task runs until shutdown. One that ends before it (returned, or panicked) is a
//! failure: the supervisor logs which task and why, turns `/readyz` and `/healthz` red,
//! and starts the shutdown; `serve` then exits non-zero, so that Kubernetes restarts the
//! container rather than leaving a replica that serves stale configuration with green
//! probes. This is what an Erlang "one for all" supervisor does, and what `kube-runtime`
//! users build around `tokio::select!`.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::{Id, JoinError, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info_span, warn};

/// How long the tasks have to end once the shutdown started, before `serve` stops waiting
/// for them and names those still running.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// Why a task ended before the shutdown.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TaskFailure {
    /// It returned.
    #[error("task {0} stopped on its own; it should run until shutdown")]
    Stopped(&'static str),
    /// It panicked, with the panic's message when it had one.
    #[error("task {0} panicked: {1}")]
    Panicked(&'static str, String),
}

/// The failure `/readyz` and `/healthz` report once a task has failed, as text; `None`
/// while all run.
pub type Health = watch::Receiver<Option<String>>;

/// The tasks of one `serve`.
pub struct Supervisor {
    tasks: JoinSet<()>,
    names: HashMap<Id, &'static str>,
    shutdown: CancellationToken,
    health: watch::Sender<Option<String>>,
}

impl Supervisor {
    /// A supervisor whose failures start `shutdown`.
    pub fn new(shutdown: CancellationToken) -> Supervisor {
        Supervisor {
            tasks: JoinSet::new(),
            names: HashMap::new(),
            shutdown,
            health: watch::Sender::new(None),
        }
    }

    /// What the probes read.
    pub fn health(&self) -> Health {
        self.health.subscribe()
    }

    /// Runs `task` as `name`, in the span `task{name=...}`.
    ///
    /// In debug builds only, the task named by the environment variable
    /// `REDIS_XDS_TEST_PANIC_TASK` panics once it has started, so that a test can watch
    /// `serve` stop (tests/suite/manifests_serve.rs); release builds have no such hook.
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let task = task.instrument(info_span!("task", name));
        #[cfg(debug_assertions)]
        let task = {
            let doomed = std::env::var("REDIS_XDS_TEST_PANIC_TASK").is_ok_and(|t| t == name);
            async move {
                if doomed {
                    tokio::task::yield_now().await;
                    panic!("REDIS_XDS_TEST_PANIC_TASK names this task");
                }
                task.await
            }
        };
        let handle = self.tasks.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// Number of tasks still running.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether no task runs.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    fn failure(&self, id: Id, result: Result<(), JoinError>) -> Option<TaskFailure> {
        let name = self.names.get(&id).copied().unwrap_or("unnamed");
        match result {
            Ok(()) if self.shutdown.is_cancelled() => None,
            Ok(()) => Some(TaskFailure::Stopped(name)),
            Err(e) if e.is_panic() => {
                let panic = e.into_panic();
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(no message)".into());
                Some(TaskFailure::Panicked(name, message))
            }
            // Cancelled: only `stop` aborts tasks, after the shutdown.
            Err(_) => None,
        }
    }

    /// Waits until a task fails, records and logs it, and starts the shutdown; returns the
    /// failure. Waits until the shutdown instead if every task ends with it, and forever
    /// when there are no tasks and no shutdown.
    pub async fn failed(&mut self) -> Option<TaskFailure> {
        loop {
            let (id, result) = match self.tasks.join_next_with_id().await {
                Some(Ok((id, ()))) => (id, Ok(())),
                Some(Err(e)) => (e.id(), Err(e)),
                None => {
                    self.shutdown.cancelled().await;
                    return None;
                }
            };
            let failure = self.failure(id, result);
            self.names.remove(&id);
            if let Some(failure) = failure {
                error!(error = %failure, "a task of serve failed: stopping, to be restarted");
                self.health.send_replace(Some(failure.to_string()));
                self.shutdown.cancel();
                return Some(failure);
            }
            if self.shutdown.is_cancelled() && self.tasks.is_empty() {
                return None;
            }
        }
    }

    /// After the shutdown started: waits for every task to end, for at most `grace`, then
    /// aborts the rest, naming them. Returns the first failure seen meanwhile (a panic
    /// while stopping counts).
    pub async fn stop(mut self, grace: Duration) -> Option<TaskFailure> {
        self.shutdown.cancel();
        let mut first = None;
        let deadline = tokio::time::Instant::now() + grace;
        while !self.tasks.is_empty() {
            match tokio::time::timeout_at(deadline, self.tasks.join_next_with_id()).await {
                Ok(Some(Ok((id, ())))) => {
                    self.names.remove(&id);
                }
                Ok(Some(Err(e))) => {
                    let id = e.id();
                    if let Some(f) = self.failure(id, Err(e)) {
                        error!(error = %f, "a task of serve failed while stopping");
                        first.get_or_insert(f);
                    }
                    self.names.remove(&id);
                }
                Ok(None) => break,
                Err(_) => {
                    let mut left: Vec<&str> = self.names.values().copied().collect();
                    left.sort_unstable();
                    warn!(tasks = ?left, "tasks still running {grace:?} after the shutdown started; aborting them");
                    self.tasks.abort_all();
                    while self.tasks.join_next().await.is_some() {}
                    break;
                }
            }
        }
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task that runs until `shutdown`.
    fn until(shutdown: &CancellationToken) -> impl Future<Output = ()> + Send + 'static {
        let s = shutdown.clone();
        async move { s.cancelled().await }
    }

    #[tokio::test]
    async fn a_task_that_panics_is_named_and_stops_everything() {
        let shutdown = CancellationToken::new();
        let mut s = Supervisor::new(shutdown.clone());
        let health = s.health();
        s.spawn("publisher", until(&shutdown));
        s.spawn("status writer", async { panic!("lost the snapshot") });
        let failure = s.failed().await;
        assert_eq!(
            failure,
            Some(TaskFailure::Panicked(
                "status writer",
                "lost the snapshot".into()
            ))
        );
        assert!(shutdown.is_cancelled(), "the failure starts the shutdown");
        assert_eq!(
            health.borrow().as_deref(),
            Some("task status writer panicked: lost the snapshot")
        );
        assert_eq!(s.stop(Duration::from_secs(5)).await, None);
    }

    #[tokio::test]
    async fn a_task_that_returns_before_the_shutdown_is_a_failure() {
        let shutdown = CancellationToken::new();
        let mut s = Supervisor::new(shutdown.clone());
        s.spawn("publisher", until(&shutdown));
        s.spawn("watcher", async {});
        assert_eq!(s.failed().await, Some(TaskFailure::Stopped("watcher")));
        assert_eq!(
            TaskFailure::Stopped("watcher").to_string(),
            "task watcher stopped on its own; it should run until shutdown"
        );
    }

    #[tokio::test]
    async fn tasks_that_end_with_the_shutdown_are_no_failure() {
        let shutdown = CancellationToken::new();
        let mut s = Supervisor::new(shutdown.clone());
        let health = s.health();
        for name in ["a", "b", "c"] {
            s.spawn(name, until(&shutdown));
        }
        shutdown.cancel();
        assert_eq!(s.failed().await, None);
        assert!(health.borrow().is_none());
        assert_eq!(s.stop(Duration::from_secs(5)).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_ignores_the_shutdown_is_aborted_after_the_grace() {
        let shutdown = CancellationToken::new();
        let mut s = Supervisor::new(shutdown.clone());
        s.spawn("stubborn", std::future::pending());
        s.spawn("polite", until(&shutdown));
        assert_eq!(s.len(), 2);
        assert_eq!(s.stop(Duration::from_secs(10)).await, None);
    }

    #[tokio::test]
    async fn a_panic_while_stopping_is_reported() {
        let shutdown = CancellationToken::new();
        let mut s = Supervisor::new(shutdown.clone());
        let s2 = shutdown.clone();
        s.spawn("flusher", async move {
            s2.cancelled().await;
            panic!("could not flush");
        });
        assert_eq!(
            s.stop(Duration::from_secs(5)).await,
            Some(TaskFailure::Panicked("flusher", "could not flush".into()))
        );
    }
}
