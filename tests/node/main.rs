//! redis-xds as users run it: on a real one-node Kubernetes (kubelet, containerd, kube-proxy,
//! CoreDNS; `scripts/node`), installed with `helm install` of charts/redis-xds, serving the sidecars
//! its own webhook injects into `deploy/examples`, with faults under steady traffic.
//!
//! Everything is asserted on what the Redis servers saw or what a client got back. The
//! scenarios build on each other (the install, then the workload, then faults), so they run
//! in order on one node and stop at the first that fails. The node lives in a private network
//! and mount namespace; it is removed however this ends (`scripts/node clean`, also run first
//! for what an aborted run left behind). `REDIS_XDS_NODE_KEEP=1` keeps it up for a look
//! (`scripts/node kubectl get pods -A`), and needs `scripts/node clean` afterwards.

mod cluster;
mod mesh;
mod scenarios;
mod traffic;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use cluster::Node;

type Scenario = fn(&Node);

const SCENARIOS: &[(&str, Scenario)] = &[
    (
        "install_should_become_ready_and_write_the_webhook_ca_bundle",
        scenarios::install,
    ),
    (
        "examples_should_shard_read_from_replicas_and_mirror",
        scenarios::examples,
    ),
    (
        "faults_should_cost_no_command_that_the_control_plane_could_save",
        scenarios::faults,
    ),
    (
        "istio_should_install_from_its_charts_with_redis_xds_as_a_config_source",
        mesh::install,
    ),
    (
        "mesh_workload_should_shard_read_from_replicas_and_mirror_over_istio_mtls",
        mesh::workload,
    ),
    (
        "strict_mtls_should_keep_every_command_and_report_what_cannot_work",
        mesh::strict,
    ),
    (
        "mesh_faults_should_cost_no_command_that_the_control_plane_could_save",
        mesh::faults,
    ),
    (
        "write_delivery_should_keep_istiod_serving_while_redis_xds_is_down",
        mesh::write_delivery,
    ),
];

fn main() {
    println!("\nrunning {} node scenarios", SCENARIOS.len());
    let started = Instant::now();
    let node = Node::start();
    println!("node ready in {:.1}s", started.elapsed().as_secs_f64());
    let (mut passed, mut failed) = (0, 0);
    // For work on one scenario: REDIS_XDS_NODE_SKIP=name,name leaves those out (only ones
    // that later scenarios do not build on).
    let skip = std::env::var("REDIS_XDS_NODE_SKIP").unwrap_or_default();
    let skip: Vec<&str> = skip.split(',').filter(|s| !s.is_empty()).collect();
    for (name, scenario) in SCENARIOS {
        if skip.contains(name) {
            println!("test {name} ... skipped (REDIS_XDS_NODE_SKIP)");
            continue;
        }
        if failed > 0 {
            // Each scenario needs what the ones before it set up.
            failed += 1;
            println!("test {name} ... FAILED (an earlier scenario failed)");
            continue;
        }
        let t = Instant::now();
        match catch_unwind(AssertUnwindSafe(|| scenario(&node))) {
            Ok(()) => {
                passed += 1;
                println!("test {name} ... ok ({:.1}s)", t.elapsed().as_secs_f64());
            }
            Err(_) => {
                failed += 1;
                println!("test {name} ... FAILED");
                node.dump_state();
            }
        }
    }
    drop(node);
    println!("\nnode: {passed} passed, {failed} failed");
    std::process::exit(if failed == 0 { 0 } else { 1 });
}

/// Polls `f` every 200 ms until it gives a value; panics naming `what` after `timeout`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
