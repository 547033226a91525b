//! A fleet reconnecting at once to a freshly started `serve --xds-auth token`, against a
//! real kube-apiserver and etcd (tests/common/apiserver.rs), in a release build.
//!
//! redis-xds runs as its own ServiceAccount with the RBAC of deploy/base, so its
//! TokenReviews go through API Priority and Fairness as in a cluster (the default
//! `service-accounts` flow schema, priority level `workload-low`), not as the fixture's
//! administrator, whom APF exempts. N distinct tokens come from the TokenRequest API. All N
//! simulated Envoys (`redis-xds bench-client --all-at-once`) connect in the same moment,
//! so the review cache is empty for every one of them. The same storm against a fresh
//! `serve --xds-auth none` is the baseline.
//!
//! Reports, as one JSON line per N: the time from the start of the storm until all N are
//! synced (with and without authentication), streams refused on the way, and the
//! TokenReview calls that reached the API server by answer code (429 is APF throttling),
//! from its own `apiserver_request_total`.
//!
//! Run with `scripts/bench-token-storm [N...]` (`cargo bench --bench token_storm`); under
//! `cargo test` it only says how to run it.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;

use common::apiserver::ApiServer;

/// Tokens are made by this many threads at once.
const TOKEN_THREADS: usize = 8;

/// A token for ServiceAccount `namespace/account`, for `audience` (the API server's own
/// when `None`).
fn token(api: &ApiServer, namespace: &str, account: &str, audience: Option<&str>) -> String {
    let mut spec = json!({"expirationSeconds": 3600});
    if let Some(audience) = audience {
        spec["audiences"] = json!([audience]);
    }
    let answer = api.create(
        &format!("/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token"),
        &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}),
    );
    answer["status"]["token"]
        .as_str()
        .expect("a token")
        .to_owned()
}

/// A kubeconfig for the API server that authenticates with `token`.
fn kubeconfig_with(api: &ApiServer, token: &str, path: &std::path::Path) {
    let ca = path.with_extension("ca.pem");
    std::fs::write(&ca, &api.ca_pem).unwrap();
    let config = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": api.url, "certificate-authority": ca}}],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    });
    std::fs::write(path, config.to_string()).unwrap();
}

fn now_micros() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as f64
}

/// Storm outcome: ms from the start until every stream synced, refusals, and ms until the
/// API server had answered every token's review.
struct Storm {
    all_synced_ms: f64,
    refused: usize,
    all_reviewed_ms: Option<f64>,
}

/// A fresh `serve` with `auth` (and `kubeconfig`), then `n` simulated Envoys at once. With
/// `reviews` (the API server and its count of reviews answered 201 before), the streams
/// stay open until it has answered `n` more: streams start on the token's signature, and their
/// reviews follow.
fn storm(
    kubeconfig: &std::path::Path,
    auth: &str,
    n: usize,
    tokens: Option<&std::path::Path>,
    reviews: Option<(&ApiServer, f64)>,
) -> Storm {
    let serve =
        common::apiserver::start_serve_as(kubeconfig, "redis-xds", &["--xds-auth", auth], "info");
    common::wait_until("serve is ready", || {
        (common::http_get(&serve.debug, "/readyz")?.trim() == "ready").then_some(())
    });
    let mut client = common::redis_xds();
    client
        .args(["bench-client", "--addr", &serve.xds.to_string()])
        .args(["--streams", &n.to_string(), "--all-at-once"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(tokens) = tokens {
        client.arg("--tokens").arg(tokens);
    }
    let t0 = now_micros();
    let mut child = client.spawn().expect("bench-client runs");
    let mut last = t0;
    let mut refused = 0;
    let mut ready = false;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(at) = line.strip_prefix("synced ") {
            last = last.max(at.parse().unwrap());
        } else if line.starts_with("refused ") {
            eprintln!("{auth}: {line}");
            refused += 1;
        } else if line == "ready" {
            ready = true;
            break;
        }
    }
    let all_reviewed_ms = reviews.map(|(api, before)| {
        common::wait_until_for(
            "the API server answered every token's review",
            std::time::Duration::from_secs(300),
            || {
                let answered = api.token_reviews().get("201").copied().unwrap_or(0.0);
                (answered - before >= n as f64).then_some(())
            },
        );
        (now_micros() - t0) / 1000.0
    });
    drop(child.stdin.take());
    let _ = child.wait();
    assert!(ready, "the simulated Envoys gave up");
    Storm {
        all_synced_ms: (last - t0) / 1000.0,
        refused,
        all_reviewed_ms,
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("token_storm: run with scripts/bench-token-storm (it takes minutes)");
        return;
    }
    let sizes: Vec<usize> = std::env::var("STORM_SIZES")
        .unwrap_or_else(|_| "1000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let api = ApiServer::start();
    for file in [
        "crds/redisclusters.yaml",
        "deploy/base/namespace.yaml",
        "deploy/base/rbac.yaml",
    ] {
        let out = api.kubectl_apply(&["--server-side", "-f", file]);
        assert!(
            out.status.success(),
            "kubectl apply -f {file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    api.wait_crd_established();
    api.namespace("shop");
    api.create(
        "/api/v1/namespaces/shop/serviceaccounts",
        &json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "app"}}),
    );
    api.create(
        "/apis/redis-xds.dev/v1alpha1/namespaces/shop/redisclusters",
        &json!({
            "apiVersion": "redis-xds.dev/v1alpha1", "kind": "RedisCluster",
            "metadata": {"name": "orders"},
            "spec": {"endpoints": {"static": ["10.0.0.5:6379"]}, "listener": {"port": 6379}},
        }),
    );
    let dir = tempfile::tempdir().unwrap();
    // redis-xds as its own ServiceAccount, as deploy/ runs it.
    let own = token(&api, "redis-xds", "redis-xds", None);
    let kubeconfig = dir.path().join("redis-xds.kubeconfig");
    kubeconfig_with(&api, &own, &kubeconfig);

    for n in sizes {
        let made = std::sync::Mutex::new(Vec::with_capacity(n));
        std::thread::scope(|s| {
            for t in 0..TOKEN_THREADS {
                let (api, made) = (&api, &made);
                s.spawn(move || {
                    let mine: Vec<String> = (t..n)
                        .step_by(TOKEN_THREADS)
                        .map(|_| token(api, "shop", "app", Some("redis-xds")))
                        .collect();
                    made.lock().unwrap().extend(mine);
                });
            }
        });
        let tokens = made.into_inner().unwrap();
        let file = dir.path().join(format!("tokens-{n}"));
        let mut f = std::fs::File::create(&file).unwrap();
        for t in &tokens {
            writeln!(f, "{t}").unwrap();
        }
        drop(f);

        let baseline = storm(&kubeconfig, "none", n, None, None);
        let before = api.token_reviews();
        let with_tokens = storm(
            &kubeconfig,
            "token",
            n,
            Some(&file),
            Some((&api, before.get("201").copied().unwrap_or(0.0))),
        );
        let after = api.token_reviews();
        let reviews: BTreeMap<String, f64> = after
            .iter()
            .map(|(code, v)| (code.clone(), v - before.get(code).copied().unwrap_or(0.0)))
            .filter(|(_, v)| *v > 0.0)
            .collect();
        let total: f64 = reviews.values().sum();
        let throttled = reviews.get("429").copied().unwrap_or(0.0);
        let report = json!({
            "streams": n,
            "distinct_tokens": tokens.len(),
            "unauthenticated_all_synced_ms": baseline.all_synced_ms,
            "token_all_synced_ms": with_tokens.all_synced_ms,
            "ratio_to_unauthenticated": with_tokens.all_synced_ms / baseline.all_synced_ms,
            "token_all_reviewed_ms": with_tokens.all_reviewed_ms,
            "token_reviews": total,
            "token_reviews_by_code": reviews,
            "token_reviews_throttled": throttled,
            "streams_refused": with_tokens.refused,
            "streams_refused_unauthenticated": baseline.refused,
        });
        println!("{report}");
    }
}
