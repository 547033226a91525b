//! Sources: turn the outside world into the [`crate::model::Model`].
//!
//! Both sources read the very same objects (RedisCluster, Secret, Pod, EndpointSlice,
//! Service); [`convert`] reduces each to its model form so nothing downstream knows where an
//! object came from.

pub mod convert;
pub mod directory;
pub mod k8s;
pub mod manifests;
