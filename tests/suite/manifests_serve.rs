//! `serve --manifests`: creating, editing, renaming and deleting files reaches a subscribed
//! proxy; a malformed file is reported and leaves everything else served.

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::xds::{self, CDS, Delta, LDS, delta_names, node};
use redis_xds::app::serve::{Handles, ServeOptions};
use redis_xds::snapshot::publish::Debounce;
use tokio_util::sync::CancellationToken;

fn rc(name: &str, port: u16) -> String {
    common::redis_cluster(
        "ns",
        name,
        &format!("endpoints: {{static: [\"127.0.0.1:7000\"]}}\nlistener: {{port: {port}}}"),
    )
}

async fn start(dir: &Path) -> (std::net::SocketAddr, Handles, CancellationToken) {
    let shutdown = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let opts = ServeOptions {
        manifests: Some(dir.to_owned()),
        xds_addr: "127.0.0.1:0".parse().unwrap(),
        debug_addr: None,
        poll_interval: Duration::from_millis(20),
        debounce: Debounce {
            quiet: Duration::from_millis(10),
            max_delay: Duration::from_millis(200),
        },
        tls: None,
        kube: Default::default(),
        xds_auth: redis_xds::app::serve::XdsAuth::None,
        debug_auth: redis_xds::app::serve::DebugAuth::None,
        ca: None,
        webhook: None,
        service_name: "redis-xds".into(),
        istio: None,
    };
    let stop = shutdown.clone();
    tokio::spawn(async move {
        redis_xds::app::serve::run(opts, stop, move |addr, handles| {
            let _ = tx.send((addr, handles));
        })
        .await
        .unwrap();
    });
    let (addr, handles) = rx.await.unwrap();
    (addr, handles, shutdown)
}

/// Receives responses until one of `type_url` arrives, ACKing each.
async fn next_of(
    d: &mut Delta,
    type_url: &str,
) -> envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse {
    loop {
        let r = d.recv_ack().await;
        if r.type_url == type_url {
            return r;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_changes_reach_a_subscribed_proxy_and_a_malformed_file_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("a.yaml"), rc("a", 7001)).unwrap();
    let (addr, handles, shutdown) = start(dir).await;
    let mut d = xds::delta(addr).await;
    d.subscribe(node("p", Some("ns")), CDS, &[]).await;
    assert_eq!(delta_names(&d.recv_ack().await), ["redis/ns/a"]);
    d.subscribe(None, LDS, &[]).await;
    assert_eq!(
        delta_names(&d.recv_ack().await),
        ["redis/ns/a@127.0.0.1:7001"]
    );

    // Create.
    std::fs::write(dir.join("b.yml"), rc("b", 7002)).unwrap();
    let lds = next_of(&mut d, LDS).await;
    assert_eq!(delta_names(&lds), ["redis/ns/b@127.0.0.1:7002"]);

    // Edit.
    std::fs::write(dir.join("b.yml"), rc("b", 7003)).unwrap();
    let lds = next_of(&mut d, LDS).await;
    assert_eq!(delta_names(&lds), ["redis/ns/b@127.0.0.1:7003"]);
    assert_eq!(lds.removed_resources, ["redis/ns/b@127.0.0.1:7002"]);

    // Rename away from a manifest name (the objects disappear)...
    std::fs::rename(dir.join("b.yml"), dir.join("b.yml.disabled")).unwrap();
    let lds = next_of(&mut d, LDS).await;
    assert_eq!(lds.removed_resources, ["redis/ns/b@127.0.0.1:7003"]);
    // ...and replace-by-rename onto a manifest name (they come back).
    std::fs::rename(dir.join("b.yml.disabled"), dir.join("c.yaml")).unwrap();
    let lds = next_of(&mut d, LDS).await;
    assert_eq!(delta_names(&lds), ["redis/ns/b@127.0.0.1:7003"]);

    // A malformed edit of a.yaml: reported, and a.yaml keeps serving its last good content.
    std::fs::write(
        dir.join("a.yaml"),
        "apiVersion: redis-xds.dev/v1alpha1\nkind: [broken\n",
    )
    .unwrap();
    let mut dir_rx = handles.dir.clone().unwrap();
    let state = tokio::time::timeout(xds::PATIENCE, dir_rx.wait_for(|s| !s.problems.is_empty()))
        .await
        .expect("the problem is reported")
        .unwrap()
        .clone();
    assert!(
        state.problems[0].to_string().contains("a.yaml"),
        "{}",
        state.problems[0]
    );
    // Nothing was withdrawn: the next push is exactly the next change.
    std::fs::write(dir.join("d.yaml"), rc("d", 7004)).unwrap();
    let lds = next_of(&mut d, LDS).await;
    assert_eq!(delta_names(&lds), ["redis/ns/d@127.0.0.1:7004"]);
    assert!(
        lds.removed_resources.is_empty(),
        "{:?}",
        lds.removed_resources
    );

    // Delete: the listener goes, then (after the ACK) its cluster.
    std::fs::remove_file(dir.join("d.yaml")).unwrap();
    let lds = next_of(&mut d, LDS).await;
    assert_eq!(lds.removed_resources, ["redis/ns/d@127.0.0.1:7004"]);
    let cds = next_of(&mut d, CDS).await;
    assert_eq!(cds.removed_resources, ["redis/ns/d"]);

    assert_eq!(handles.registry.list().len(), 1);
    shutdown.cancel();
}

/// A task of `serve` that dies takes `serve` down with it, named, and non-zero, so that
/// Kubernetes restarts it; until then `/healthz` says why. (Debug builds let a test make a
/// task panic: `REDIS_XDS_TEST_PANIC_TASK`.)
#[test]
fn serve_stops_non_zero_naming_a_task_that_died() {
    for task in ["publish", "watch manifests", "debug server"] {
        let out = common::redis_xds()
            .args([
                "serve",
                "--xds-addr",
                "127.0.0.1:0",
                "--debug-addr",
                "127.0.0.1:0",
                "--manifests",
            ])
            .arg(common::root().join("examples/quickstart"))
            .env("REDIS_XDS_TEST_PANIC_TASK", task)
            .env("RUST_LOG", "info")
            .output()
            .expect("serve runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{task}: {stderr}");
        assert!(
            stderr.contains(&format!("task {task} panicked")),
            "{task}: {stderr}"
        );
        assert!(stderr.contains("serve stopped"), "{task}: {stderr}");
    }
}
