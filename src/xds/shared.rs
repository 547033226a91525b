//! Work shared between streams in the same state.
//!
//! Thousands of proxies with one identity hold the same resources, so after a change they
//! all compute the same things: which clusters stay for listeners still in use, whether
//! listeners may go out, and the response itself. Their protocol states are shared `Arc`s
//! (a plan's state becomes each stream's `sent`), so "the same state" is "the same
//! pointers". Each result is computed by the first stream and reused by the others, which
//! also keeps one copy of each state instead of one per stream.
//!
//! Keys are addresses. Every entry holds weak references to the `Arc`s its key points to:
//! their allocations stay, so an address cannot be reused by another value while the entry
//! exists, but their contents go when no stream needs them. Entries whose keys died are
//! pruned every so often and when the last stream leaves.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use super::resource::{ResourceMap, ResourceType};
use super::tracker::{DeltaPlan, SotwPlan};

/// Entries kept before the table is emptied and refilled by the streams that need them.
const CAPACITY: usize = 4096;
/// Inserts between two prunes of dead entries.
const PRUNE_EVERY: usize = 64;

/// An address that identifies a shared value.
pub(super) fn addr<T: ?Sized>(value: &T) -> usize {
    std::ptr::from_ref(value).cast::<()>() as usize
}

/// What a key points to, held weakly by its entry.
pub(super) type KeepAlive = Weak<dyn Any + Send + Sync>;

/// The weak reference an entry keeps of `value`.
pub(super) fn keep<T: Any + Send + Sync>(value: &Arc<T>) -> KeepAlive {
    let weak: Weak<dyn Any + Send + Sync> = Arc::downgrade(value) as _;
    weak
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Key {
    /// What may be sent of `kind`: the view's map, plus clusters retained for listeners
    /// the proxy may still hold.
    Available {
        kind: ResourceType,
        view: usize,
        sent: usize,
        acked_listeners: usize,
        pending_listeners: usize,
    },
    /// Whether every cluster of every listener was sent.
    ListenersReady { listeners: usize, clusters: usize },
    /// The next response of a wildcard subscriber.
    Plan {
        kind: ResourceType,
        sotw: bool,
        first: bool,
        sent: usize,
        available: usize,
    },
}

#[derive(Clone, Debug)]
pub(super) enum Value {
    /// `None`: the view's map as it is.
    Available(Option<Arc<ResourceMap>>),
    ListenersReady(bool),
    Sotw(Option<SotwPlan>),
    Delta(Option<DeltaPlan>),
}

struct Entry {
    alive: Vec<KeepAlive>,
    value: Value,
}

impl Entry {
    /// Whether a stream can still look this entry up: everything its key points to lives.
    fn live(&self) -> bool {
        self.alive.iter().all(|w| w.strong_count() > 0)
    }
}

#[derive(Default)]
struct Table {
    entries: HashMap<Key, Entry>,
    inserts: usize,
}

/// The table of shared results.
#[derive(Default)]
pub(super) struct Shared {
    table: Mutex<Table>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Shared {
    /// The value for `key`, computed (outside the lock) when no stream did yet.
    pub(super) fn get_or(
        &self,
        key: Key,
        alive: impl FnOnce() -> Vec<KeepAlive>,
        compute: impl FnOnce() -> Value,
    ) -> Value {
        if let Some(e) = self.lock().entries.get(&key) {
            return e.value.clone();
        }
        let value = compute();
        let mut table = self.lock();
        table.inserts += 1;
        if table.inserts.is_multiple_of(PRUNE_EVERY) || table.entries.len() >= CAPACITY {
            table.entries.retain(|_, e| e.live());
        }
        if table.entries.len() >= CAPACITY {
            table.entries.clear();
        }
        table.entries.insert(
            key,
            Entry {
                alive: alive(),
                value: value.clone(),
            },
        );
        value
    }

    /// Drops the entries no stream can look up any more, and what they hold.
    pub(super) fn prune(&self) {
        let mut table = self.lock();
        table.entries.retain(|_, e| e.live());
        if table.entries.is_empty() {
            table.entries.shrink_to_fit();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // Every update is one insert, retain or clear: a poisoned table is still consistent.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_compute_once_per_key_and_forget_keys_that_died() {
        let shared = Shared::default();
        let a: Arc<ResourceMap> = Arc::default();
        let key = Key::ListenersReady {
            listeners: addr(&*a),
            clusters: 0,
        };
        let mut computed = 0;
        for _ in 0..3 {
            let v = shared.get_or(
                key,
                || vec![keep(&a)],
                || {
                    computed += 1;
                    Value::ListenersReady(true)
                },
            );
            assert!(matches!(v, Value::ListenersReady(true)));
        }
        assert_eq!(computed, 1);
        assert_eq!(shared.len(), 1);
        // The entry holds the map's allocation (its address cannot be taken by another
        // value), not the map.
        assert_eq!((Arc::strong_count(&a), Arc::weak_count(&a)), (1, 1));
        shared.prune();
        assert_eq!(shared.len(), 1, "a live entry is kept");
        drop(a);
        shared.prune();
        assert_eq!(shared.len(), 0, "an entry nobody can look up is dropped");
    }

    #[test]
    fn should_empty_the_table_when_full() {
        let shared = Shared::default();
        let mut held = Vec::new();
        for i in 0..CAPACITY + 1 {
            let key = Key::ListenersReady {
                listeners: i,
                clusters: 0,
            };
            let alive: Arc<ResourceMap> = Arc::default();
            shared.get_or(key, || vec![keep(&alive)], || Value::ListenersReady(false));
            held.push(alive);
        }
        assert_eq!(shared.len(), 1);
    }
}
