//! Kubernetes mode with every real part that runs here: kube-apiserver and etcd, `serve`
//! watching them with `--xds-auth token` over TLS, Envoy 1.40 presenting a ServiceAccount
//! token from the TokenRequest API, and a Redis Cluster whose servers stand for Pods.
//!
//! There is no kubelet: the test creates the Pods and writes their status (phase, Ready,
//! `podIP`) itself. Each Redis server listens on its own loopback address, 127.0.0.2 to
//! 127.0.0.7, on one shared port, as Pods behind one Redis port do; the API server takes
//! loopback addresses in Pod status (it refuses them in EndpointSlices).

use std::time::Instant;

use serde_json::{Value, json};

use crate::Fixture;
use crate::common::apiserver::{ApiServer, start_serve_kube};
use crate::common::{free_port, http_get, start_envoy, wait_until};
use crate::redis::{Cluster, Server, command_calls};
use crate::resp::{Conn, Reply};

const FIRST: &str = "k8s-first-password";
const SECOND: &str = "k8s-second-password";
const RDC: &str = "/apis/redis-xds.dev/v1alpha1/namespaces/shop/redisclusters";

/// A CA and a serving certificate for 127.0.0.1, written as ca.pem, xds.pem, xds-key.pem.
fn xds_pki(dir: &std::path::Path) {
    use crate::common::pki::{Ca, San};
    let ca = Ca::new("redis-xds e2e xDS CA");
    let xds = ca.issue(&[San::Ip("127.0.0.1")]);
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("xds.pem"), xds.cert).unwrap();
    std::fs::write(dir.join("xds-key.pem"), xds.key).unwrap();
}

/// Creates Pod `name` in `shop` and writes the status a kubelet would: Running, Ready, and
/// `ip` as its address.
fn running_pod(api: &ApiServer, name: &str, ip: &str) {
    api.create(
        "/api/v1/namespaces/shop/pods",
        &json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": "orders-redis"}},
            "spec": {"containers": [{"name": "redis", "image": "redis:8"}]},
        }),
    );
    let status = json!({"status": {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": "True"}],
    }});
    let (code, body) = api
        .request(
            "PATCH",
            &format!("/api/v1/namespaces/shop/pods/{name}/status"),
            Some(&status.to_string()),
        )
        .expect("the API server answers");
    assert_eq!(code, 200, "the status of Pod {name}: {body}");
}

/// The columns of `kubectl get rdc` for one RedisCluster, by header.
fn kubectl_row(api: &ApiServer, name: &str) -> Option<Vec<(String, String)>> {
    let out = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&api.kubeconfig)
        .args(["get", "rdc", "-n", "shop", name])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next()?.split_whitespace().collect();
    let row: Vec<&str> = lines.next()?.split_whitespace().collect();
    Some(
        header
            .iter()
            .zip(row)
            .map(|(h, v)| (h.to_string(), v.to_string()))
            .collect(),
    )
}

fn column<'a>(row: &'a [(String, String)], header: &str) -> Option<&'a str> {
    row.iter()
        .find(|(h, _)| h == header)
        .map(|(_, v)| v.as_str())
}

fn calls(servers: &[&Server], command: &str) -> u64 {
    servers
        .iter()
        .map(|s| command_calls(&mut s.conn(), command))
        .sum()
}

pub fn kubernetes(_f: &Fixture) {
    let tmp = tempfile::tempdir().unwrap();
    let hosts: Vec<String> = (2..=7).map(|i| format!("127.0.0.{i}")).collect();
    let (api, mut cluster) = std::thread::scope(|s| {
        let api = s.spawn(ApiServer::start);
        let cluster = Cluster::start_on(tmp.path(), &hosts, 1, Some(FIRST));
        (api.join().expect("the API server starts"), cluster)
    });
    let redis_port = cluster.servers[0].port;
    api.install_crd();
    api.namespace("shop");
    api.create(
        "/api/v1/namespaces/shop/serviceaccounts",
        &json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "checkout"}}),
    );
    api.create(
        "/api/v1/namespaces/shop/secrets",
        &json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "orders-redis-auth"},
            "stringData": {"password": FIRST},
        }),
    );
    for (i, host) in hosts.iter().enumerate() {
        running_pod(&api, &format!("orders-redis-{i}"), host);
    }
    let listener_port = free_port();
    api.create(
        RDC,
        &json!({
            "apiVersion": "redis-xds.dev/v1alpha1",
            "kind": "RedisCluster",
            "metadata": {"name": "orders", "namespace": "shop"},
            "spec": {
                "endpoints": {"selector": {"matchLabels": {"app": "orders-redis"}}},
                "port": redis_port,
                "auth": {"secretRef": {"name": "orders-redis-auth"}},
                "topology": {"refreshInterval": "1s"},
                "listener": {"port": listener_port, "readPolicy": "Replica"},
            },
        }),
    );

    xds_pki(tmp.path());
    let path = |n: &str| tmp.path().join(n).to_str().unwrap().to_owned();
    let serve = start_serve_kube(
        &api,
        &[
            "--xds-auth",
            "token",
            "--xds-tls-cert",
            &path("xds.pem"),
            "--xds-tls-key",
            &path("xds-key.pem"),
            "--debounce-quiet",
            "20ms",
        ],
        "info",
    );
    // The sidecar's projected token: the TokenRequest API, for the redis-xds audience.
    let request = api.create(
        "/api/v1/namespaces/shop/serviceaccounts/checkout/token",
        &json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"audiences": ["redis-xds"], "expirationSeconds": 3600},
        }),
    );
    let token = request["status"]["token"]
        .as_str()
        .expect("a token")
        .to_owned();
    std::fs::write(tmp.path().join("token"), &token).unwrap();
    let xds = serve.xds.to_string();
    let (_envoy, _admin) = start_envoy(
        tmp.path(),
        &[
            "--xds-address",
            &xds,
            "--node-id",
            "checkout-7d9f-abcde",
            "--namespace",
            "shop",
            "--xds-auth",
            "token",
            "--token-path",
            &path("token"),
            "--xds-tls-ca",
            &path("ca.pem"),
        ],
    );
    let sidecar = format!("127.0.0.1:{listener_port}");
    let mut c = wait_until("the sidecar serves the Pods' Redis Cluster", || {
        let mut c = Conn::connect(&sidecar).ok()?;
        (c.cmd(&["SET", "k8s:probe", "1"]).ok()?.text() == "OK").then_some(c)
    });
    let syncz = http_get(&serve.debug, "/debug/syncz").unwrap_or_default();
    assert!(
        syncz.contains("checkout-7d9f-abcde") && syncz.contains("\"namespace\":\"shop\""),
        "the sidecar is not listed under its token's namespace: {syncz}"
    );

    // Sharding: keys land on every primary, behind one plain Redis address.
    for i in 0..60 {
        c.ok(&["SET", &format!("k8s:{i}"), &i.to_string()]);
    }
    let primaries = cluster.servers_with_role("master");
    let replicas = cluster.servers_with_role("slave");
    assert_eq!((primaries.len(), replicas.len()), (3, 3));
    for p in &primaries {
        let keys = p.conn().ok(&["DBSIZE"]).parse::<u64>().unwrap();
        assert!(keys > 0, "primary {} holds no key", p.addr());
    }
    assert_eq!(
        c.cmd(&["MGET", "k8s:1", "k8s:2", "k8s:3"]).unwrap(),
        Reply::Array(Some(vec![
            Reply::Bulk(Some(b"1".to_vec())),
            Reply::Bulk(Some(b"2".to_vec())),
            Reply::Bulk(Some(b"3".to_vec())),
        ]))
    );

    // Replica reads: after the replicas caught up, every GET goes to a replica.
    wait_until("the replicas hold every key", || {
        let held: u64 = replicas
            .iter()
            .map(|r| r.conn().ok(&["DBSIZE"]).parse::<u64>().unwrap_or(0))
            .sum();
        (held == 61).then_some(())
    });
    for s in &cluster.servers {
        s.conn().ok(&["CONFIG", "RESETSTAT"]);
    }
    for i in 0..60 {
        assert_eq!(c.ok(&["GET", &format!("k8s:{i}")]), i.to_string());
    }
    let (on_primaries, on_replicas) = (calls(&primaries, "get"), calls(&replicas, "get"));
    println!("  GETs on primaries {on_primaries}, on replicas {on_replicas}");
    assert_eq!((on_primaries, on_replicas), (0, 60));

    // The operator's view: kubectl's columns, written by serve's status writer.
    let row = wait_until("kubectl get rdc shows the synced proxy", || {
        let row = kubectl_row(&api, "orders")?;
        (column(&row, "PROXIES") == Some("1") && column(&row, "SYNCED") == Some("1")).then_some(row)
    });
    assert_eq!(column(&row, "ENDPOINTS"), Some("6"), "{row:?}");

    // Rotation: the servers first, then the Secret, through the API server. Old
    // connections are killed, so only a fresh AUTH with the new password can work.
    for s in &cluster.servers {
        let mut admin = s.conn();
        admin.ok(&["CONFIG", "SET", "requirepass", SECOND]);
        admin.ok(&["CONFIG", "SET", "masterauth", SECOND]);
    }
    for s in cluster.servers.iter_mut() {
        s.password = Some(SECOND.to_owned());
        let _ = s
            .conn()
            .cmd(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]);
    }
    wait_until("the old password no longer works", || {
        let mut c = Conn::connect(&sidecar).ok()?;
        c.cmd(&["SET", "k8s:old", "1"])
            .ok()?
            .is_error()
            .then_some(())
    });
    let (code, body) = api
        .request(
            "PATCH",
            "/api/v1/namespaces/shop/secrets/orders-redis-auth",
            Some(&json!({"stringData": {"password": SECOND}}).to_string()),
        )
        .expect("the API server answers");
    assert_eq!(code, 200, "{body}");
    let rotated = Instant::now();
    wait_until("commands work with the rotated password", || {
        let mut c = Conn::connect(&sidecar).ok()?;
        (c.cmd(&["SET", "k8s:rotated", "2"]).ok()?.text() == "OK").then_some(())
    });
    println!(
        "  the rotated Secret reached Envoy and Redis AUTH after {:.1}s",
        rotated.elapsed().as_secs_f64()
    );

    let log = serve.log.lock().unwrap().clone();
    for secret in [FIRST, SECOND, token.as_str()] {
        assert!(!log.contains(secret), "serve logged a secret");
    }
    let status: Value = serde_json::from_str(
        &api.get(&format!("{RDC}/orders"))
            .map(|(_, b)| b)
            .unwrap_or_default(),
    )
    .unwrap_or_default();
    assert!(
        !status.to_string().contains(SECOND),
        "the status carries the password"
    );
}
