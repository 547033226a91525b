//! redis-xds: a Kubernetes-native xDS control plane for Envoy's redis_proxy.
//!
//! Data flows one way: `source` (manifests directory, Kubernetes) fills the [`model`],
//! [`compile`] turns it into Envoy resources, later stages serve them. See DESIGN in the
//! README for the whole picture.
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod bootstrap;
pub mod compile;
pub mod debug;
pub mod inject;
pub mod istio;
pub mod k8s;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod protojson;
pub mod render;
pub mod snapshot;
pub mod source;
pub mod tls;
pub mod xds;

/// Every binary that links this crate (the server, its tests and benchmarks) allocates
/// through jemalloc, so tests and benchmarks measure the allocator production runs with
/// (see [`memory`]).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[cfg(test)]
mod architecture;
