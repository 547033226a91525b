//! The in-process and single-process suites in one test binary: each module was a binary of
//! its own, and each linked the whole crate, which on a 2-core machine cost more than the
//! tests. The suites that own heavy fixtures or their own harness stay apart: tests/e2e,
//! tests/node, tests/apiserver.rs, tests/istio.rs and tests/bench.rs.

#[path = "../common/mod.rs"]
mod common;

mod ads;
mod alerts;
mod chart;
mod compile;
mod compile_props;
mod crd;
mod deploy;
mod envoy_refuses;
mod envoy_serve;
mod envoy_tls;
mod examples;
mod inject;
mod istio_config_source;
mod kube_client;
mod manifests_serve;
mod operator_view;
mod overview;
mod xds_auth;
mod xds_port;
