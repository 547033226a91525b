//! Per-proxy xDS state as data: what each connected stream was sent and what it accepted.
//! Written by the stream handlers, read by the debug view and status.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use super::resource::{NodeIdentity, ResourceType};
pub use super::tracker::TypeStatus;

/// The xDS variant a stream speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Variant {
    /// State of the World.
    Sotw,
    /// Incremental (Delta).
    Delta,
}

impl Variant {
    /// Label for logs, metrics and the debug view.
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Sotw => "sotw",
            Variant::Delta => "delta",
        }
    }
}

/// One connected stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyStatus {
    /// Server-assigned stream id.
    pub stream: u64,
    /// `node.id`.
    pub node_id: String,
    /// Namespace and labels from the node metadata.
    pub identity: NodeIdentity,
    /// SotW or Delta.
    pub variant: Variant,
    /// When the stream opened.
    pub connected_at: SystemTime,
    /// Per type the proxy asked for.
    pub types: TypeStatuses,
}

/// The status of each type a proxy asked for, ordered by type. Kept for every connected
/// proxy, so stored in an allocation of its exact size rather than a map (whose node has
/// room for eleven entries).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TypeStatuses(Box<[(ResourceType, TypeStatus)]>);

impl TypeStatuses {
    /// The status of one type, if the proxy asked for it.
    pub fn get(&self, kind: &ResourceType) -> Option<&TypeStatus> {
        self.0.iter().find(|(k, _)| k == kind).map(|(_, t)| t)
    }

    /// Every type with its status, in type order.
    pub fn iter(&self) -> impl Iterator<Item = (&ResourceType, &TypeStatus)> {
        self.0.iter().map(|(k, t)| (k, t))
    }

    /// Every status, in type order.
    pub fn values(&self) -> impl Iterator<Item = &TypeStatus> {
        self.0.iter().map(|(_, t)| t)
    }
}

impl std::ops::Index<&ResourceType> for TypeStatuses {
    type Output = TypeStatus;

    fn index(&self, kind: &ResourceType) -> &TypeStatus {
        self.get(kind).expect("the proxy asked for this type")
    }
}

impl FromIterator<(ResourceType, TypeStatus)> for TypeStatuses {
    fn from_iter<I: IntoIterator<Item = (ResourceType, TypeStatus)>>(items: I) -> Self {
        let mut all: Vec<_> = items.into_iter().collect();
        all.sort_by_key(|(k, _)| *k);
        all.dedup_by_key(|(k, _)| *k);
        TypeStatuses(all.into_boxed_slice())
    }
}

/// One stream's place in the [`Registry`]: the stream updates its own status here, under
/// a lock of its own, so that its updates neither take the registry's lock nor wait for
/// other streams'.
#[derive(Debug)]
pub struct Entry(Mutex<ProxyStatus>);

impl Entry {
    /// Replaces the stream's per-type status.
    pub fn set_types(&self, types: TypeStatuses) {
        // Swapped under the lock, dropped after it.
        let old = std::mem::replace(&mut lock(&self.0).types, types);
        drop(old);
    }

    fn get(&self) -> ProxyStatus {
        lock(&self.0).clone()
    }
}

/// All connected streams.
#[derive(Debug, Default)]
pub struct Registry {
    streams: Mutex<HashMap<u64, Arc<Entry>>>,
}

impl Registry {
    /// Adds a stream (or replaces the one with its id) and returns its entry, through which
    /// the stream updates its status from then on.
    pub fn put(&self, status: ProxyStatus) -> Arc<Entry> {
        let entry = Arc::new(Entry(Mutex::new(status)));
        let stream = lock(&entry.0).stream;
        lock(&self.streams).insert(stream, Arc::clone(&entry));
        entry
    }

    /// Forgets a stream; returns how many are still connected.
    pub fn remove(&self, stream: u64) -> usize {
        let mut streams = lock(&self.streams);
        streams.remove(&stream);
        // A table sized for a fleet that has left would be kept for good otherwise.
        if streams.capacity() > 64 && streams.len() * 4 < streams.capacity() {
            let keep = streams.len() * 2;
            streams.shrink_to(keep);
        }
        streams.len()
    }

    /// Number of connected streams.
    pub fn len(&self) -> usize {
        lock(&self.streams).len()
    }

    /// Whether no stream is connected.
    pub fn is_empty(&self) -> bool {
        lock(&self.streams).is_empty()
    }

    /// Every stream, ordered by node id then stream id.
    pub fn list(&self) -> Vec<ProxyStatus> {
        // The entries are taken out of the registry's lock first: a stream updating its
        // status never waits for this copy of every other stream's.
        let entries: Vec<Arc<Entry>> = lock(&self.streams).values().cloned().collect();
        let mut out: Vec<ProxyStatus> = entries.iter().map(|e| e.get()).collect();
        out.sort_by(|a, b| (&a.node_id, a.stream).cmp(&(&b.node_id, b.stream)));
        out
    }

    /// Number of connected streams per variant.
    pub fn count(&self, variant: Variant) -> usize {
        let entries: Vec<Arc<Entry>> = lock(&self.streams).values().cloned().collect();
        entries
            .iter()
            .filter(|e| lock(&e.0).variant == variant)
            .count()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the value half-updated (every
    // update is one insert, remove or swap), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(stream: u64) -> ProxyStatus {
        ProxyStatus {
            stream,
            node_id: format!("proxy-{stream}"),
            identity: Default::default(),
            variant: Variant::Delta,
            connected_at: std::time::SystemTime::UNIX_EPOCH,
            types: TypeStatuses::default(),
        }
    }

    #[test]
    fn should_keep_type_statuses_in_type_order_and_find_each() {
        let with = |v: &str| TypeStatus {
            desired_version: Some(v.into()),
            sent_version: None,
            nonce: None,
            acked_version: None,
            pending: false,
            nack: None,
            rejected: None,
            sent: std::sync::Arc::default(),
        };
        let types: TypeStatuses = [
            (ResourceType::Listener, with("l")),
            (ResourceType::Cluster, with("c")),
        ]
        .into_iter()
        .collect();
        let order: Vec<_> = types.iter().map(|(k, _)| *k).collect();
        assert_eq!(order, [ResourceType::Cluster, ResourceType::Listener]);
        assert_eq!(
            types[&ResourceType::Listener].desired_version.as_deref(),
            Some("l")
        );
        assert!(types.get(&ResourceType::Endpoint).is_none());
        assert_eq!(types.values().count(), 2);
    }

    #[test]
    fn a_stream_should_update_its_status_through_its_entry() {
        let r = Registry::default();
        let entry = r.put(status(7));
        r.put(status(8));
        let synced = TypeStatus {
            acked_version: Some("v1".into()),
            ..Default::default()
        };
        entry.set_types(
            [(ResourceType::Cluster, synced.clone())]
                .into_iter()
                .collect(),
        );
        let all = r.list();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].stream, 7);
        assert_eq!(all[0].types.get(&ResourceType::Cluster), Some(&synced));
        assert_eq!(all[1].types.iter().count(), 0, "stream 8 is untouched");
        assert_eq!(r.count(Variant::Delta), 2);
        assert_eq!(r.count(Variant::Sotw), 0);
        // Once removed, a late update through the entry does not bring the stream back.
        assert_eq!(r.remove(7), 1);
        entry.set_types(TypeStatuses::default());
        let left: Vec<u64> = r.list().iter().map(|s| s.stream).collect();
        assert_eq!(left, [8]);
    }

    #[test]
    fn should_give_back_the_table_of_a_fleet_that_left() {
        let r = Registry::default();
        for i in 0..5000 {
            r.put(status(i));
        }
        let full = lock(&r.streams).capacity();
        assert!(full >= 5000);
        for i in 0..4990 {
            r.remove(i);
        }
        assert_eq!(r.len(), 10);
        let kept = lock(&r.streams).capacity();
        assert!(kept < full / 10, "kept {kept}");
        // The streams still connected are all there.
        let left: Vec<u64> = r.list().iter().map(|s| s.stream).collect();
        assert_eq!(left, (4990..5000).collect::<Vec<_>>());
    }
}
