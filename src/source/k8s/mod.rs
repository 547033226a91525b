//! The Kubernetes source: watchers feeding the [`index::Index`], and the status writer
//! (elected by a Lease). [`calls::API_CALLS`] lists every API call made.

pub mod calls;
pub mod fleet;
pub mod index;
pub mod lease;
pub mod status;
pub mod watch;
