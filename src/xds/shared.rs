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

/// Entries kept per table before it is emptied and refilled by the streams that need them.
const CAPACITY: usize = 1024;
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

/// What may be sent of `kind`: the view's map, plus clusters retained for listeners the
/// proxy may still hold (`None`: the view's map as it is).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct AvailableKey {
    pub kind: ResourceType,
    pub view: usize,
    pub sent: usize,
    pub acked_listeners: usize,
    pub pending_listeners: usize,
}

/// Whether every cluster of every listener was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct ReadyKey {
    pub listeners: usize,
    pub clusters: usize,
}

/// The next response of a wildcard subscriber.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct PlanKey {
    pub kind: ResourceType,
    pub first: bool,
    pub sent: usize,
    pub available: usize,
}

struct Entry<V> {
    alive: Vec<KeepAlive>,
    value: V,
}

impl<V> Entry<V> {
    /// Whether a stream can still look this entry up: everything its key points to lives.
    fn live(&self) -> bool {
        self.alive.iter().all(|w| w.strong_count() > 0)
    }
}

struct Table<K, V> {
    entries: HashMap<K, Entry<V>>,
    inserts: usize,
}

/// One kind of shared result, by key.
pub(super) struct Memo<K, V> {
    table: Mutex<Table<K, V>>,
}

impl<K, V> Default for Memo<K, V> {
    fn default() -> Self {
        Memo {
            table: Mutex::new(Table {
                entries: HashMap::new(),
                inserts: 0,
            }),
        }
    }
}

impl<K: Copy + Eq + std::hash::Hash, V: Clone> Memo<K, V> {
    /// The value for `key`, computed (outside the lock) when no stream did yet.
    pub(super) fn get_or(
        &self,
        key: K,
        alive: impl FnOnce() -> Vec<KeepAlive>,
        compute: impl FnOnce() -> V,
    ) -> V {
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
    fn prune(&self) {
        let mut table = self.lock();
        table.entries.retain(|_, e| e.live());
        if table.entries.is_empty() {
            table.entries.shrink_to_fit();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table<K, V>> {
        // Every update is one insert, retain or clear: a poisoned table is still consistent.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

/// The shared results, one table per kind.
#[derive(Default)]
pub(super) struct Shared {
    pub available: Memo<AvailableKey, Option<Arc<ResourceMap>>>,
    pub listeners_ready: Memo<ReadyKey, bool>,
    pub sotw: Memo<PlanKey, Option<SotwPlan>>,
    pub delta: Memo<PlanKey, Option<DeltaPlan>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Shared {
    /// Drops, in every table, the entries no stream can look up any more.
    pub(super) fn prune(&self) {
        self.available.prune();
        self.listeners_ready.prune();
        self.sotw.prune();
        self.delta.prune();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_compute_once_per_key_and_forget_keys_that_died() {
        let shared = Memo::<ReadyKey, bool>::default();
        let a: Arc<ResourceMap> = Arc::default();
        let key = ReadyKey {
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
                    true
                },
            );
            assert!(v);
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
        let shared = Memo::<ReadyKey, bool>::default();
        let mut held = Vec::new();
        for i in 0..CAPACITY + 1 {
            let key = ReadyKey {
                listeners: i,
                clusters: 0,
            };
            let alive: Arc<ResourceMap> = Arc::default();
            shared.get_or(key, || vec![keep(&alive)], || false);
            held.push(alive);
        }
        assert_eq!(shared.len(), 1);
    }
}
