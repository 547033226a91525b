//! Scale of the Kubernetes watch: what objects that no RedisCluster uses cost `serve`.
//!
//! Starts a real kube-apiserver and etcd (tests/common/apiserver.rs), one RedisCluster,
//! and measures `redis-xds serve`'s time to ready and resident memory twice: on the bare
//! cluster, then with 20,000 Pods and 5,000 Secrets in 50 unrelated namespaces, 500 of the
//! Secrets 200 KiB each (the size of Helm release Secrets). Prints one JSON line.
//!
//! Run with `scripts/bench-watch` (`cargo bench --bench watch_scale`); under `cargo test`
//! it only says how to run it, since it takes minutes and measures rather than checks.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::{Api, PostParams};
use serde_json::json;

use common::apiserver::{ApiServer, start_serve_kube};

const NAMESPACES: usize = 50;
const PODS: usize = 20_000;
const SECRETS: usize = 5_000;
const LARGE_SECRETS: usize = 500;
const LARGE_SECRET_BYTES: usize = 200 * 1024;

/// (seconds from start to `/readyz` ready, VmRSS KiB once ready, VmHWM KiB) of one serve.
fn measure(api: &ApiServer) -> (f64, u64, u64) {
    let started = Instant::now();
    let serve = start_serve_kube(api, &["--xds-auth", "none"], "info");
    common::wait_until("serve is ready", || {
        (common::http_get(&serve.debug, "/readyz")?.trim() == "ready").then_some(())
    });
    let ready = started.elapsed().as_secs_f64();
    // Settle: the first snapshot is published right after ready.
    std::thread::sleep(Duration::from_secs(2));
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", serve.proc.child.id())).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (ready, field("VmRSS:"), field("VmHWM:"))
}

/// A Pod as a Deployment's would look: two containers, env, resources, probes; status with
/// an IP and conditions, as a kubelet writes it.
fn pod(i: usize) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": format!("web-{i}"),
            "labels": {"app": "web", "pod-template-hash": "7d9f8c6b5", "tier": "frontend"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-30T10:00:00Z"},
        },
        "spec": {
            "containers": [
                {
                    "name": "web",
                    "image": "registry.example/web:1.2.3",
                    "ports": [{"containerPort": 8080, "name": "http"}],
                    "env": (0..10).map(|e| json!({"name": format!("SETTING_{e}"), "value": "a-typical-value"})).collect::<Vec<_>>(),
                    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
                    "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}},
                },
                {"name": "sidecar", "image": "registry.example/sidecar:4.5.6"},
            ],
        },
    }))
    .unwrap()
}

fn secret(i: usize) -> Secret {
    let size = if i < LARGE_SECRETS {
        LARGE_SECRET_BYTES
    } else {
        64
    };
    let blob: String = (0..size).map(|b| (b'a' + (b % 26) as u8) as char).collect();
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": format!("sh.helm.release.v1.app-{i}.v1"), "labels": {"owner": "helm"}},
        "type": "helm.sh/release.v1",
        "stringData": {"release": blob},
    }))
    .unwrap()
}

async fn populate(api: &ApiServer) {
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&api.kubeconfig).unwrap(),
        &Default::default(),
    )
    .await
    .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for n in 0..NAMESPACES {
        let ns: Namespace = serde_json::from_value(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": format!("unrelated-{n}")}}),
        )
        .unwrap();
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
    }
    let pods = futures_util::stream::iter(0..PODS).map(|i| {
        let api: Api<Pod> =
            Api::namespaced(client.clone(), &format!("unrelated-{}", i % NAMESPACES));
        async move {
            let created = api.create(&PostParams::default(), &pod(i)).await.unwrap();
            let name = created.metadata.name.unwrap();
            let status = json!({"status": {
                "phase": "Running",
                "podIP": format!("10.{}.{}.{}", 1 + i / 65536, (i / 256) % 256, i % 256),
                "conditions": [
                    {"type": "Initialized", "status": "True"},
                    {"type": "Ready", "status": "True"},
                    {"type": "ContainersReady", "status": "True"},
                    {"type": "PodScheduled", "status": "True"},
                ],
            }});
            api.patch_status(
                &name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&status),
            )
            .await
            .unwrap();
        }
    });
    pods.buffer_unordered(16).collect::<Vec<()>>().await;
    let secrets = futures_util::stream::iter(0..SECRETS).map(|i| {
        let api: Api<Secret> =
            Api::namespaced(client.clone(), &format!("unrelated-{}", i % NAMESPACES));
        async move {
            api.create(&PostParams::default(), &secret(i))
                .await
                .unwrap();
        }
    });
    secrets.buffer_unordered(8).collect::<Vec<()>>().await;
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("watch_scale: a measurement of minutes; run it with scripts/bench-watch");
        return;
    }
    let api = ApiServer::start();
    api.install_crd();
    api.namespace("shop");
    api.create(
        "/apis/redis-xds.dev/v1alpha1/namespaces/shop/redisclusters",
        &json!({
            "apiVersion": "redis-xds.dev/v1alpha1",
            "kind": "RedisCluster",
            "metadata": {"name": "orders"},
            "spec": {"endpoints": {"selector": {"matchLabels": {"app": "orders-redis"}}}, "port": 6379, "listener": {"port": 6379}},
        }),
    );
    let (bare_ready, bare_rss, bare_hwm) = measure(&api);
    eprintln!("bare cluster: ready in {bare_ready:.1}s, RSS {bare_rss} KiB (peak {bare_hwm} KiB)");

    let started = Instant::now();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(populate(&api));
    eprintln!(
        "created {PODS} Pods and {SECRETS} Secrets in {:.0}s",
        started.elapsed().as_secs_f64()
    );

    let (ready, rss, hwm) = measure(&api);
    eprintln!("with them: ready in {ready:.1}s, RSS {rss} KiB (peak {hwm} KiB)");
    println!(
        "{}",
        json!({
            "pods": PODS,
            "secrets": SECRETS,
            "large_secrets": LARGE_SECRETS,
            "large_secret_kib": LARGE_SECRET_BYTES / 1024,
            "bare_ready_s": bare_ready,
            "bare_rss_kib": bare_rss,
            "bare_peak_rss_kib": bare_hwm,
            "ready_s": ready,
            "rss_kib": rss,
            "peak_rss_kib": hwm,
            "growth_mib": (rss as f64 - bare_rss as f64) / 1024.0,
            "peak_growth_mib": (hwm as f64 - bare_hwm as f64) / 1024.0,
        })
    );
}
