//! Work shared between streams in the same state.
//!
//! Thousands of proxies with one identity hold the same resources, so after a change they
//! all compute the same things: which clusters stay for listeners still in use, whether
//! listeners may go out, and the response itself. Their protocol states are shared `Arc`s
//! (a plan's state becomes each stream's `sent`), so "the same state" is "the same
//! pointers". Each result is computed by the first stream and reused by the others, which
//! also keeps one copy of each state instead of one per stream.
//!
//! Keys are addresses; every entry holds the `Arc`s its key points to, so an address cannot
//! be reused by another value while its entry exists.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::resource::{ResourceMap, ResourceType};
use super::tracker::{DeltaPlan, SotwPlan};

/// Entries kept before the table is emptied and refilled by the streams that need them.
const CAPACITY: usize = 4096;

/// An address that identifies a shared value.
pub(super) fn addr<T: ?Sized>(value: &T) -> usize {
    std::ptr::from_ref(value).cast::<()>() as usize
}

/// Something an entry keeps alive.
pub(super) type KeepAlive = Arc<dyn Any + Send + Sync>;

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
    _alive: Vec<KeepAlive>,
    value: Value,
}

/// The table of shared results.
#[derive(Default)]
pub(super) struct Shared {
    entries: Mutex<HashMap<Key, Entry>>,
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
        if let Some(e) = self.lock().get(&key) {
            return e.value.clone();
        }
        let value = compute();
        let mut entries = self.lock();
        if entries.len() >= CAPACITY {
            entries.clear();
        }
        entries.insert(
            key,
            Entry {
                _alive: alive(),
                value: value.clone(),
            },
        );
        value
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
        // Every update is one insert or clear: a poisoned table is still consistent.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_compute_once_per_key_and_keep_the_key_alive() {
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
                || vec![Arc::clone(&a) as KeepAlive],
                || {
                    computed += 1;
                    Value::ListenersReady(true)
                },
            );
            assert!(matches!(v, Value::ListenersReady(true)));
        }
        assert_eq!(computed, 1);
        assert_eq!(shared.len(), 1);
        // The entry holds the map: its address cannot be taken by another value.
        assert_eq!(Arc::strong_count(&a), 2);
    }

    #[test]
    fn should_empty_the_table_when_full() {
        let shared = Shared::default();
        for i in 0..CAPACITY + 1 {
            let key = Key::ListenersReady {
                listeners: i,
                clusters: 0,
            };
            shared.get_or(key, Vec::new, || Value::ListenersReady(false));
        }
        assert_eq!(shared.len(), 1);
    }
}
