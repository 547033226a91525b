//! Every call redis-xds makes to the Kubernetes API server that is not a list or watch of
//! its inputs (those are `crate::source::k8s`): status and the Leases it writes, the reviews
//! it asks for, the CA Secret and the webhook configuration it keeps, the EnvoyFilters of Istio mode. [`calls::API_CALLS`]
//! lists them all, and deploy/'s RBAC is checked against that list.

pub mod ca;
pub mod calls;
pub mod client;
pub mod debug_access;
pub mod envoy_filters;
pub mod fleet;
pub mod istiod_token;
pub mod lease;
pub mod status;
pub mod token_review;
