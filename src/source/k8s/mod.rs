//! The Kubernetes source: watchers feeding the [`index::Index`]. What redis-xds writes to
//! the API server is `crate::k8s`, where `API_CALLS` lists every call.

pub mod index;
pub mod watch;
