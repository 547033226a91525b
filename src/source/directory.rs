//! Follows a manifests directory: every change to a `*.yaml` / `*.yml` file (create, edit,
//! rename, delete, replace-by-rename) produces a new model.
//!
//! The directory is polled: content hashes of every manifest are compared each interval.
//! Polling sees renames and atomic replaces the same way as edits, works on every file
//! system (including the symlink swaps of Kubernetes ConfigMap volumes) and costs little
//! for the few files such a directory holds.
//!
//! A file that cannot be read as YAML at all keeps its last good content in the model, with
//! the problem reported; other files are unaffected.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::manifests::{self, LoadProblem, ParsedFile};
use crate::model::{Model, ObjectKey};

/// What the directory currently says.
#[derive(Debug, Default)]
pub struct DirState {
    /// The model.
    pub model: Arc<Model>,
    /// Problems with files and objects (including files served from their last good read).
    pub problems: Vec<LoadProblem>,
    /// Skipped documents.
    pub notes: Vec<String>,
}

#[derive(Debug)]
struct FileEntry {
    hash: [u8; 32],
    /// What is served for this file: the latest parse, or the last good one.
    served: ParsedFile,
    /// Set while the current content is unreadable and `served` is older.
    stale: Option<LoadProblem>,
}

/// Reads the directory and keeps per-file state between reads.
#[derive(Debug)]
pub struct DirWatcher {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileEntry>,
    first_seen: HashMap<ObjectKey, u64>,
    next_seen: u64,
    dir_problem: Option<LoadProblem>,
    polled: bool,
    /// Polls whose listing of the directory failed.
    read_failures: u64,
}

impl DirWatcher {
    /// A watcher for `dir`; nothing is read until [`DirWatcher::poll`].
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DirWatcher {
            dir: dir.into(),
            files: BTreeMap::new(),
            first_seen: HashMap::new(),
            next_seen: 0,
            dir_problem: None,
            polled: false,
            read_failures: 0,
        }
    }

    /// How many polls could not list the directory so far.
    pub fn read_failures(&self) -> u64 {
        self.read_failures
    }

    /// Re-reads the directory; returns the new state when anything changed.
    pub fn poll(&mut self) -> Option<DirState> {
        // The first poll always reports, even an empty directory.
        let mut changed = !std::mem::replace(&mut self.polled, true);
        let listing = match list(&self.dir) {
            Ok(l) => {
                changed |= self.dir_problem.take().is_some();
                l
            }
            Err(e) => {
                self.read_failures += 1;
                // Keep serving what was read before: a directory that briefly disappears
                // (a volume remount) must not take every listener away.
                let problem = LoadProblem {
                    file: self.dir.clone(),
                    line: None,
                    object: None,
                    message: format!(
                        "cannot read the manifests directory: {e}; serving the last good content"
                    ),
                };
                if self.dir_problem.as_ref() != Some(&problem) {
                    warn!(dir = %self.dir.display(), error = %e, "cannot read the manifests directory");
                    self.dir_problem = Some(problem);
                    return Some(self.state());
                }
                return None;
            }
        };
        let before = self.files.len();
        self.files.retain(|path, _| listing.contains(path));
        changed |= self.files.len() != before;
        for path in listing {
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let hash: [u8; 32] = Sha256::digest(&bytes).into();
            if self.files.get(&path).is_some_and(|f| f.hash == hash) {
                continue;
            }
            changed = true;
            let parsed = match String::from_utf8(bytes) {
                Ok(text) => manifests::parse_file(&path, &text),
                Err(_) => ParsedFile {
                    problems: vec![LoadProblem {
                        file: path.clone(),
                        line: None,
                        object: None,
                        message: "not UTF-8 text".into(),
                    }],
                    ..Default::default()
                },
            };
            info!(file = %path.display(), objects = parsed.objects.len(), problems = parsed.problems.len(), "manifest file read");
            let entry = match self.files.remove(&path) {
                Some(old) if parsed.is_unreadable() && !old.served.objects.is_empty() => {
                    FileEntry {
                        hash,
                        stale: parsed.problems.first().cloned().map(|mut p| {
                            p.message
                                .push_str("; serving the last good content of this file");
                            p
                        }),
                        served: old.served,
                    }
                }
                _ => FileEntry {
                    hash,
                    served: parsed,
                    stale: None,
                },
            };
            self.files.insert(path, entry);
        }
        changed.then(|| self.state())
    }

    fn state(&mut self) -> DirState {
        let parsed: Vec<(PathBuf, ParsedFile)> = self
            .files
            .iter()
            .map(|(p, f)| {
                let mut served = f.served.clone();
                if let Some(stale) = &f.stale {
                    served.problems.push(stale.clone());
                }
                (p.clone(), served)
            })
            .collect();
        let first_seen = &mut self.first_seen;
        let next_seen = &mut self.next_seen;
        let (model, mut problems, notes) = manifests::assemble(&parsed, &mut |key| {
            Some(*first_seen.entry(key.clone()).or_insert_with(|| {
                *next_seen += 1;
                *next_seen
            }))
        });
        if let Some(p) = &self.dir_problem {
            problems.insert(0, p.clone());
        }
        DirState {
            model: Arc::new(model),
            problems,
            notes,
        }
    }
}

fn list(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if manifests::is_manifest(&path) && path.is_file() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Polls `dir` every `interval` until `shutdown`, publishing each new state.
pub async fn run(
    mut watcher: DirWatcher,
    interval: Duration,
    states: watch::Sender<Arc<DirState>>,
    models: watch::Sender<Arc<Model>>,
    metrics: Arc<crate::metrics::Metrics>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let errors = metrics
        .watch_errors
        .get_or_create(&[("kind", "Manifests")])
        .clone();
    let events = metrics
        .source_events
        .get_or_create(&[("source", "manifests")])
        .clone();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let failures = watcher.read_failures();
        let polled = watcher.poll();
        errors.inc_by(watcher.read_failures() - failures);
        if let Some(state) = polled {
            events.inc();
            metrics
                .problems
                .get_or_create(&[("stage", "load")])
                .set(state.problems.len() as i64);
            for p in &state.problems {
                warn!(problem = %p, "manifest problem");
            }
            let model = Arc::clone(&state.model);
            states.send_replace(Arc::new(state));
            crate::model::publish_if_changed(&models, &model);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rc(name: &str, port: u16) -> String {
        format!(
            "apiVersion: redis-xds.dev/v1alpha1\nkind: RedisCluster\nmetadata: {{name: {name}, namespace: ns}}\nspec:\n  endpoints: {{static: [\"127.0.0.1:{port}\"]}}\n"
        )
    }

    fn names(state: &DirState) -> Vec<String> {
        state
            .model
            .redis_clusters
            .keys()
            .map(|k| k.name.clone())
            .collect()
    }

    #[test]
    fn should_follow_creates_edits_renames_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = DirWatcher::new(dir.path());
        let s = w.poll().expect("the first poll reports the (empty) state");
        assert!(names(&s).is_empty());
        assert!(w.poll().is_none(), "nothing changed");

        std::fs::write(dir.path().join("a.yaml"), rc("a", 1)).unwrap();
        assert_eq!(names(&w.poll().unwrap()), ["a"]);

        std::fs::write(dir.path().join("a.yaml"), rc("a", 2)).unwrap();
        let s = w.poll().expect("an edit is a change");
        let spec = &s.model.redis_clusters.values().next().unwrap().spec;
        assert_eq!(spec.endpoints.static_.as_ref().unwrap()[0], "127.0.0.1:2");

        std::fs::rename(dir.path().join("a.yaml"), dir.path().join("b.yml")).unwrap();
        let s = w.poll().expect("a rename is a change");
        assert_eq!(names(&s), ["a"]);
        assert!(
            matches!(&s.model.redis_clusters.values().next().unwrap().origin, crate::model::Origin::File(p) if p.ends_with("b.yml"))
        );

        // Replace by rename, as editors and ConfigMap volumes do.
        std::fs::write(dir.path().join(".b.yml.tmp"), rc("c", 3)).unwrap();
        assert!(
            w.poll().is_none(),
            "hidden and non-manifest files are not read"
        );
        std::fs::rename(dir.path().join(".b.yml.tmp"), dir.path().join("b.yml")).unwrap();
        assert_eq!(names(&w.poll().unwrap()), ["c"]);

        std::fs::remove_file(dir.path().join("b.yml")).unwrap();
        assert!(names(&w.poll().unwrap()).is_empty());
    }

    #[test]
    fn should_keep_the_last_good_content_of_a_file_that_stops_parsing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), rc("a", 1)).unwrap();
        std::fs::write(dir.path().join("b.yaml"), rc("b", 1)).unwrap();
        let mut w = DirWatcher::new(dir.path());
        assert_eq!(names(&w.poll().unwrap()), ["a", "b"]);

        std::fs::write(dir.path().join("a.yaml"), "apiVersion: [unclosed\n").unwrap();
        let s = w.poll().unwrap();
        assert_eq!(
            names(&s),
            ["a", "b"],
            "a.yaml keeps serving its last good content"
        );
        assert_eq!(s.problems.len(), 1);
        let line = s.problems[0].to_string();
        assert!(
            line.contains("a.yaml")
                && line.contains("not valid YAML")
                && line.contains("last good content"),
            "{line}"
        );

        std::fs::write(dir.path().join("a.yaml"), rc("a2", 1)).unwrap();
        let s = w.poll().unwrap();
        assert_eq!(names(&s), ["a2", "b"]);
        assert!(s.problems.is_empty());
    }

    #[test]
    fn should_keep_first_seen_order_across_reloads() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("z.yaml"), rc("first", 1)).unwrap();
        let mut w = DirWatcher::new(dir.path());
        w.poll();
        std::fs::write(dir.path().join("a.yaml"), rc("second", 1)).unwrap();
        let s = w.poll().unwrap();
        let seen = |n: &str| s.model.redis_clusters[&ObjectKey::new("ns", n)].seen;
        assert!(
            seen("first") < seen("second"),
            "an object seen earlier stays older whatever the file order"
        );
    }
}
