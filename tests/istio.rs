//! Istio mode against real istiod (pilot-discovery built from the istio.io/istio module by
//! scripts/kube-tools), a real API server and real Envoy 1.40 standing in for istio-proxy
//! (with Istio's metadata exchange, ALPN filter and auto-mTLS off, since upstream Envoy
//! lacks Istio's own extensions).
//!
//! istiod's sidecar listeners bind 0.0.0.0 (15001, 15006), so each test runs in a private
//! network namespace of its own (`unshare -n`, re-running this test binary inside it):
//! every address there is loopback, and nothing is reachable from outside.

mod common;
#[path = "e2e/redis.rs"]
#[allow(dead_code)]
mod redis;
#[path = "e2e/resp.rs"]
#[allow(dead_code)]
mod resp;

use std::process::Command;

use common::apiserver::ApiServer;
use common::{Log, Proc, free_port, http_get, wait_until};
use serde_json::{Value, json};

/// Set inside the private network namespace.
const IN_NETNS: &str = "REDIS_XDS_TEST_PRIVATE_NETNS";

/// Inside the namespace: brings up its loopback and returns true. Outside: runs `test` of
/// this binary inside a new one, asserts it passed, and returns false.
fn in_private_network(test: &str) -> bool {
    if std::env::var_os(IN_NETNS).is_some() {
        let up = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .expect("ip runs");
        assert!(up.success(), "ip link set lo up");
        return true;
    }
    let out = Command::new("unshare")
        .arg("-n")
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env(IN_NETNS, "1")
        .output()
        .expect("unshare runs (the tests run as root)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{test} in a private network namespace:\n{stdout}\n{stderr}"
    );
    false
}

fn kubectl(api: &ApiServer, args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&api.kubeconfig)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Istio's CRDs (from the istio.io/istio module), Established; namespaces istio-system
/// and shop; mutual TLS off mesh-wide (upstream Envoy has no SDS agent beside it).
fn install_istio(api: &ApiServer) {
    let crds = std::env::var("ISTIO_CRDS").expect("ISTIO_CRDS is set by scripts/kube-tools");
    // Too large for client-side apply's last-applied annotation.
    kubectl(api, &["create", "-f", &crds], None);
    kubectl(
        api,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd",
            "--all",
        ],
        None,
    );
    for ns in ["istio-system", "shop"] {
        api.namespace(ns);
    }
    kubectl(
        api,
        &["apply", "-f", "-"],
        Some(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: DISABLE}}\n",
        ),
    );
}

/// istiod reading config from `api` (and from redis-xds's config source on
/// `config_source`), its plaintext xDS on the returned port.
fn start_istiod(api: &ApiServer, dir: &std::path::Path, config_source: Option<u16>) -> (Proc, u16) {
    start_istiod_on(
        api,
        dir,
        config_source,
        &format!("127.0.0.1:{}", free_port()),
    )
}

/// [`start_istiod`] with its HTTP (debug) endpoints on `http` (`IP:PORT`). Its debug
/// endpoints answer a caller from another address only with a token of audience
/// `istio-ca`, and show every proxy only to one of the root namespace (istio-system).
fn start_istiod_on(
    api: &ApiServer,
    dir: &std::path::Path,
    config_source: Option<u16>,
    http: &str,
) -> (Proc, u16) {
    let grpc = free_port();
    let proc = spawn_istiod(api, dir, config_source, http, grpc);
    wait_until("istiod is ready", || http_get(http, "/ready").map(|_| ()));
    (proc, grpc)
}

/// istiod serving xDS on `grpc`, not waited for.
fn spawn_istiod(
    api: &ApiServer,
    dir: &std::path::Path,
    config_source: Option<u16>,
    http: &str,
    grpc: u16,
) -> Proc {
    let (monitoring, ctrlz) = (free_port(), free_port());
    let mesh = dir.join("mesh.yaml");
    std::fs::write(
        &mesh,
        format!(
            "rootNamespace: istio-system\nenableAutoMtls: false\ndefaultConfig:\n  discoveryAddress: 127.0.0.1:{grpc}\n{}",
            match config_source {
                // Without k8s:// istiod would stop reading Istio config from the API server.
                Some(port) => format!("configSources:\n  - address: k8s://\n  - address: xds://127.0.0.1:{port}\n"),
                None => String::new(),
            }
        ),
    )
    .unwrap();
    let log = dir.join("istiod.log");
    let child = Command::new(std::env::var("PILOT_DISCOVERY_BIN").expect(
        "PILOT_DISCOVERY_BIN is not set: run the tests through scripts/test, which builds istiod",
    ))
    .args(["discovery", "--kubeconfig"])
    .arg(&api.kubeconfig)
    .arg("--meshConfig")
    .arg(&mesh)
    .args(["--networksConfig", "/nonexistent"])
    .args(["--httpAddr", http])
    .args(["--grpcAddr", &format!("127.0.0.1:{grpc}")])
    .args(["--secureGRPCAddr", "", "--httpsAddr", ""])
    .args(["--monitoringAddr", &format!("127.0.0.1:{monitoring}")])
    .args(["--ctrlz_port", &ctrlz.to_string()])
    .env("POD_NAMESPACE", "istio-system")
    .env("POD_NAME", "istiod-test")
    .env("REVISION", "default")
    .env("PILOT_ENABLE_METADATA_EXCHANGE", "false")
    .env("PILOT_ENABLE_ALPN_FILTER", "false")
    .stdout(std::process::Stdio::null())
    .stderr(std::fs::File::create(&log).unwrap())
    .spawn()
    .expect("istiod starts");
    Proc {
        child,
        name: "istiod",
        log: Some(Log::File(log)),
    }
}

/// Envoy as the sidecar of pod `shop/checkout-0` (label app=checkout), taking its
/// configuration from istiod as istio-proxy does.
fn start_sidecar(dir: &std::path::Path, istiod: u16) -> (Proc, String) {
    let admin = free_port();
    let bootstrap = json!({
        "node": {
            "id": "sidecar~10.244.0.5~checkout-0.shop~shop.svc.cluster.local",
            "cluster": "checkout.shop",
            "metadata": {
                "NAMESPACE": "shop",
                "NAME": "checkout-0",
                "LABELS": {"app": "checkout"},
                "ISTIO_VERSION": "1.31.0",
                "CLUSTER_ID": "Kubernetes",
                "INTERCEPTION_MODE": "REDIRECT",
                "WORKLOAD_NAME": "checkout",
            }
        },
        "admin": {"address": {"socketAddress": {"address": "127.0.0.1", "portValue": admin}}},
        "dynamicResources": {
            "adsConfig": {
                "apiType": "GRPC",
                "transportApiVersion": "V3",
                "grpcServices": [{"envoyGrpc": {"clusterName": "xds-grpc"}}]
            },
            "cdsConfig": {"ads": {}, "resourceApiVersion": "V3"},
            "ldsConfig": {"ads": {}, "resourceApiVersion": "V3"}
        },
        "staticResources": {"clusters": [{
            "name": "xds-grpc",
            "type": "STATIC",
            "connectTimeout": "1s",
            "typedExtensionProtocolOptions": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicitHttpConfig": {"http2ProtocolOptions": {}}
            }},
            "loadAssignment": {"clusterName": "xds-grpc", "endpoints": [{"lbEndpoints": [{"endpoint": {
                "address": {"socketAddress": {"address": "127.0.0.1", "portValue": istiod}}
            }}]}]}
        }]}
    });
    let config = dir.join("sidecar.json");
    std::fs::write(&config, bootstrap.to_string()).unwrap();
    (
        common::spawn_envoy(
            "envoy (Istio sidecar)",
            &["-c".as_ref(), config.as_os_str()],
            &dir.join("sidecar.log"),
        ),
        format!("127.0.0.1:{admin}"),
    )
}

/// The network filters of the sidecar's listener `name`, from its config dump.
fn listener_filters(admin: &str, name: &str) -> Option<Vec<String>> {
    let dump: Value =
        serde_json::from_str(&http_get(admin, "/config_dump?resource=dynamic_listeners")?).ok()?;
    let listener = dump["configs"]
        .as_array()?
        .iter()
        .find(|l| l["name"] == name)?;
    let chains = listener["active_state"]["listener"]["filter_chains"].as_array()?;
    Some(
        chains
            .iter()
            .flat_map(|c| c["filters"].as_array().cloned().unwrap_or_default())
            .filter_map(|f| f["name"].as_str().map(str::to_owned))
            .collect(),
    )
}

#[test]
fn render_istio_output_applied_through_istiod_turns_the_services_listener_into_redis_proxy() {
    if !in_private_network(
        "render_istio_output_applied_through_istiod_turns_the_services_listener_into_redis_proxy",
    ) {
        return;
    }
    let api = ApiServer::start();
    let tmp = tempfile::tempdir().unwrap();
    install_istio(&api);
    let service = api.create(
        "/api/v1/namespaces/shop/services",
        &json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "orders-redis"},
                "spec": {"selector": {"app": "orders-redis"}, "ports": [{"name": "tcp-redis", "port": 6379}]}}),
    );
    let cluster_ip = service["spec"]["clusterIP"].as_str().unwrap().to_owned();
    let listener = format!("{cluster_ip}_6379");

    let (_istiod, grpc) = start_istiod(&api, tmp.path(), None);
    let (_sidecar, admin) = start_sidecar(tmp.path(), grpc);
    wait_until(
        "istiod gives the sidecar the Service's listener, with tcp_proxy",
        || {
            listener_filters(&admin, &listener)
                .filter(|f| f.iter().any(|n| n == "envoy.filters.network.tcp_proxy"))
        },
    );

    // The GitOps path: `render --istio` on manifests that name the Service as the API
    // server has it, applied with kubectl.
    let manifests = tmp.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    std::fs::write(
        manifests.join("objects.yaml"),
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: orders-redis, namespace: shop}}\nspec: {{clusterIP: {cluster_ip}, ports: [{{name: tcp-redis, port: 6379}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: orders-redis-1, namespace: shop, labels: {{kubernetes.io/service-name: orders-redis}}}}\naddressType: IPv4\nports: [{{name: tcp-redis, port: 6379}}]\nendpoints: [{{addresses: [192.0.2.10], conditions: {{ready: true}}}}]\n---\napiVersion: redis-xds.dev/v1alpha1\nkind: RedisCluster\nmetadata: {{name: orders, namespace: shop}}\nspec:\n  endpoints: {{service: orders-redis}}\n  listener:\n    port: 6379\n    readPolicy: Replica\n    clients: {{namespaces: [shop], selector: {{matchLabels: {{app: checkout}}}}}}\n"
        ),
    )
    .unwrap();
    let out = common::redis_xds()
        .args(["render", "--istio", "--manifests"])
        .arg(&manifests)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let filters = String::from_utf8(out.stdout).unwrap();
    kubectl(&api, &["apply", "-f", "-"], Some(&filters));

    wait_until(
        "istiod replaces tcp_proxy with redis_proxy on the sidecar",
        || {
            listener_filters(&admin, &listener)
                .filter(|f| f == &["envoy.filters.network.redis_proxy".to_string()])
        },
    );
    // The added cluster (warming: 192.0.2.10 answers nobody).
    let clusters = http_get(&admin, "/config_dump?resource=dynamic_warming_clusters")
        .unwrap_or_default()
        + &http_get(&admin, "/config_dump?resource=dynamic_active_clusters").unwrap_or_default();
    assert!(clusters.contains("\"redis/shop/orders\""), "{clusters}");
    let dump = http_get(&admin, "/config_dump?resource=dynamic_listeners").unwrap();
    assert!(dump.contains("\"read_policy\": \"REPLICA\""), "{dump}");

    // Deleting the filter gives the Service back to plain tcp_proxy.
    kubectl(
        &api,
        &[
            "delete",
            "envoyfilters.networking.istio.io",
            "-n",
            "shop",
            "--all",
        ],
        None,
    );
    wait_until("the Service's listener is plain tcp_proxy again", || {
        listener_filters(&admin, &listener)
            .filter(|f| f.iter().any(|n| n == "envoy.filters.network.tcp_proxy"))
    });
}

/// Runs `ip` or `iptables` inside the test's network namespace.
fn net(cmd: &str, args: &[&str]) {
    // Both live in /usr/sbin, which a non-login PATH may lack.
    let sbin = format!("/usr/sbin/{cmd}");
    let program = if std::path::Path::new(&sbin).exists() {
        sbin.as_str()
    } else {
        cmd
    };
    let out = Command::new(program)
        .args(args)
        .output()
        .expect("ip and iptables run");
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Pods' addresses on the namespace's loopback: the API server refuses loopback addresses
/// in EndpointSlices, so Redis listens on these instead.
fn pod_addresses(prefix: &str, n: usize) -> Vec<String> {
    (1..=n)
        .map(|i| {
            let ip = format!("{prefix}.{i}");
            net("ip", &["addr", "add", &format!("{ip}/32"), "dev", "lo"]);
            ip
        })
        .collect()
}

/// What istio-init does for a Service's ClusterIP: connections to it go to Envoy's 15001,
/// which hands them to the listener of their original destination.
fn capture(cluster_ip: &str, port: u16) {
    // A route to the ClusterIP, as a pod's default route gives it.
    net(
        "ip",
        &["addr", "add", &format!("{cluster_ip}/32"), "dev", "lo"],
    );
    net(
        "iptables",
        &[
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            cluster_ip,
            "--dport",
            &port.to_string(),
            "-j",
            "REDIRECT",
            "--to-ports",
            "15001",
        ],
    );
}

fn endpoint_slice(api: &ApiServer, service: &str, addresses: &[String], port: u16) {
    api.create(
        "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices",
        &json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": format!("{service}-1"), "labels": {"kubernetes.io/service-name": service}},
                "addressType": "IPv4",
                "ports": [{"name": "tcp-redis", "port": port}],
                "endpoints": addresses.iter().map(|a| json!({"addresses": [a], "conditions": {"ready": true}})).collect::<Vec<_>>()}),
    );
}

fn calls(servers: &[&redis::Server], command: &str) -> u64 {
    servers
        .iter()
        .map(|s| redis::command_calls(&mut s.conn(), command))
        .sum()
}

/// One written EnvoyFilter: `namespace/name`, its owners, the listeners it patches.
type WrittenFilter = (String, Vec<String>, Vec<String>);

/// The EnvoyFilters serve has written, as (namespace/name, owners, listener names patched);
/// `None` while the API server does not list them (just after the CRD is Established).
fn written_filters(api: &ApiServer) -> Option<Vec<WrittenFilter>> {
    let (_, body) = api
        .get("/apis/networking.istio.io/v1alpha3/envoyfilters?labelSelector=app.kubernetes.io%2Fmanaged-by%3Dredis-xds")
        .unwrap();
    let list: Value = serde_json::from_str(&body).ok()?;
    let items = list["items"].as_array()?;
    Some(
        items
            .iter()
            .map(|f| {
                let owners = f["metadata"]["ownerReferences"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|o| o["name"].as_str().unwrap_or_default().to_owned())
                    .collect();
                let listeners = f["spec"]["configPatches"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p["match"]["listener"]["name"].as_str().map(str::to_owned))
                    .collect();
                (
                    format!(
                        "{}/{}",
                        f["metadata"]["namespace"].as_str().unwrap_or_default(),
                        f["metadata"]["name"].as_str().unwrap_or_default()
                    ),
                    owners,
                    listeners,
                )
            })
            .collect(),
    )
}

/// The mesh of the serve tests, in the test's private network namespace: a real API server
/// with Istio's and redis-xds's CRDs, two Redis Clusters standing for Pods (orders: 3
/// primaries and 3 replicas; sessions: 3 primaries), their Services (ClusterIP, port 6379)
/// and EndpointSlices, the ClusterIP capture, and RedisClusters `sessions` and `orders`
/// (reads from replicas, writes mirrored to sessions, for pods labelled app=checkout in shop).
struct Mesh {
    api: ApiServer,
    tmp: tempfile::TempDir,
    orders: redis::Cluster,
    sessions: redis::Cluster,
    /// ClusterIPs of orders-redis and sessions-redis.
    cluster_ips: Vec<String>,
}

const RDC: &str = "/apis/redis-xds.dev/v1alpha1/namespaces/shop/redisclusters";

fn redis_service(api: &ApiServer, name: &str, target_port: u16) -> String {
    api.create(
        "/api/v1/namespaces/shop/services",
        &json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name},
                "spec": {"selector": {"app": name}, "ports": [{"name": "tcp-redis", "port": 6379, "targetPort": target_port}]}}),
    )["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn mesh() -> Mesh {
    let api = ApiServer::start();
    let tmp = tempfile::tempdir().unwrap();
    install_istio(&api);
    api.install_crd();
    let orders = redis::Cluster::start_on(
        &tmp.path().join("orders"),
        &pod_addresses("10.244.1", 6),
        1,
        None,
    );
    let sessions = redis::Cluster::start_on(
        &tmp.path().join("sessions"),
        &pod_addresses("10.244.2", 3),
        0,
        None,
    );
    let mut cluster_ips = Vec::new();
    for (service, cluster) in [("orders-redis", &orders), ("sessions-redis", &sessions)] {
        let port = cluster.servers[0].port;
        let ip = redis_service(&api, service, port);
        let hosts: Vec<String> = cluster.servers.iter().map(|s| s.host.clone()).collect();
        endpoint_slice(&api, service, &hosts, port);
        capture(&ip, 6379);
        cluster_ips.push(ip);
    }
    api.create(
        RDC,
        &json!({"apiVersion": "redis-xds.dev/v1alpha1", "kind": "RedisCluster",
                "metadata": {"name": "sessions"},
                "spec": {"endpoints": {"service": "sessions-redis"}, "port": sessions.servers[0].port}}),
    );
    api.create(
        RDC,
        &json!({"apiVersion": "redis-xds.dev/v1alpha1", "kind": "RedisCluster",
                "metadata": {"name": "orders"},
                "spec": {"endpoints": {"service": "orders-redis"}, "port": orders.servers[0].port,
                         "topology": {"refreshInterval": "1s"},
                         "listener": {"port": 6379, "readPolicy": "Replica",
                                      "catchAll": {"mirror": [{"cluster": "sessions", "excludeReadCommands": true}]},
                                      "clients": {"namespaces": ["shop"], "selector": {"matchLabels": {"app": "checkout"}}}}}}),
    );
    Mesh {
        api,
        tmp,
        orders,
        sessions,
        cluster_ips,
    }
}

fn keys(servers: &[redis::Server]) -> u64 {
    servers
        .iter()
        .map(|s| s.conn().ok(&["DBSIZE"]).parse::<u64>().unwrap())
        .sum()
}

/// An application on the Service's ClusterIP, as to one Redis server: sharding across the
/// primaries, GETs from replicas only, and every SET mirrored to sessions.
fn traffic(m: &Mesh, cluster_ip: &str) {
    let service = format!("{cluster_ip}:6379");
    let before = keys(&m.sessions.servers);
    let mut c = wait_until(
        "the Service's ClusterIP answers through the sidecar",
        || {
            let mut c = resp::Conn::connect(&service).ok()?;
            (c.cmd(&["SET", "mesh:probe", "1"]).ok()?.text() == "OK").then_some(c)
        },
    );
    for i in 0..60 {
        c.ok(&["SET", &format!("mesh:{i}"), &i.to_string()]);
    }
    let primaries = m.orders.servers_with_role("master");
    let replicas = m.orders.servers_with_role("slave");
    assert_eq!((primaries.len(), replicas.len()), (3, 3));
    for p in &primaries {
        let n: u64 = p.conn().ok(&["DBSIZE"]).parse().unwrap();
        assert!(n > 0, "primary {} holds no key", p.addr());
    }
    let (primary_gets, replica_gets) = (calls(&primaries, "get"), calls(&replicas, "get"));
    for i in 0..60 {
        assert_eq!(c.ok(&["GET", &format!("mesh:{i}")]), i.to_string());
    }
    assert_eq!(
        calls(&primaries, "get"),
        primary_gets,
        "no GET on a primary"
    );
    assert_eq!(calls(&replicas, "get") - replica_gets, 60);
    // Mirroring is fire-and-forget: wait for it. The keys are the same every time, so only
    // a first run adds them.
    wait_until("the writes are mirrored to sessions", || {
        let n = keys(&m.sessions.servers);
        (n >= 61 && n >= before).then_some(())
    });
}

fn patch_read_policy(m: &Mesh, admin: &str) {
    let (code, body) = m
        .api
        .request(
            "PATCH",
            &format!("{RDC}/orders"),
            Some(r#"{"spec": {"listener": {"readPolicy": "PreferReplica"}}}"#),
        )
        .unwrap();
    assert_eq!(code, 200, "{body}");
    wait_until("the sidecar gets readPolicy PREFER_REPLICA", || {
        http_get(admin, "/config_dump?resource=dynamic_listeners")
            .filter(|d| d.contains("\"read_policy\": \"PREFER_REPLICA\""))
    });
}

fn delete_orders_and_see_tcp_proxy(m: &Mesh, admin: &str, listener: &str) {
    let (code, body) = m
        .api
        .request("DELETE", &format!("{RDC}/orders"), None)
        .unwrap();
    assert_eq!(code, 200, "{body}");
    wait_until("the Service's listener is tcp_proxy again", || {
        listener_filters(admin, listener)
            .filter(|f| f.iter().any(|n| n == "envoy.filters.network.tcp_proxy"))
    });
}

/// Deletes and re-creates Service orders-redis, which gets another ClusterIP, and captures
/// it; returns the new ClusterIP and its listener's name.
fn recreate_orders_service(m: &Mesh) -> (String, String) {
    let (code, body) = m
        .api
        .request(
            "DELETE",
            "/api/v1/namespaces/shop/services/orders-redis",
            None,
        )
        .unwrap();
    assert_eq!(code, 200, "{body}");
    let ip = redis_service(&m.api, "orders-redis", m.orders.servers[0].port);
    assert_ne!(m.cluster_ips[0], ip);
    capture(&ip, 6379);
    let listener = format!("{ip}_6379");
    (ip, listener)
}

fn has_redis_proxy(admin: &str, listener: &str) -> Option<()> {
    listener_filters(admin, listener)
        .filter(|f| f == &["envoy.filters.network.redis_proxy".to_string()])
        .map(drop)
}

/// `serve --istio=write` against the mesh's API server.
fn serve_writing(m: &Mesh) -> common::Serve {
    common::apiserver::start_serve_kube(
        &m.api,
        &[
            "--istio",
            "write",
            "--xds-auth",
            "none",
            "--debounce-quiet",
            "20ms",
        ],
        "info",
    )
}

#[test]
fn serve_writes_the_filters_follows_edits_and_cluster_ips_and_removes_them() {
    if !in_private_network(
        "serve_writes_the_filters_follows_edits_and_cluster_ips_and_removes_them",
    ) {
        return;
    }
    let m = mesh();
    let serve = serve_writing(&m);
    let written = wait_until("serve writes the EnvoyFilter", || {
        written_filters(&m.api).filter(|w| !w.is_empty())
    });
    assert_eq!(written.len(), 1, "{written:?}");
    let (name, owners, listeners) = &written[0];
    assert!(name.starts_with("shop/redis-xds-"), "{name}");
    assert_eq!(owners, &["orders"], "owned by its RedisCluster");
    let first = format!("{}_6379", m.cluster_ips[0]);
    assert_eq!(listeners, std::slice::from_ref(&first));

    let (istiod, grpc) = start_istiod(&m.api, m.tmp.path(), None);
    let (_sidecar, admin) = start_sidecar(m.tmp.path(), grpc);
    wait_until(
        "the sidecar gets redis_proxy from the written filter",
        || has_redis_proxy(&admin, &first),
    );
    traffic(&m, &m.cluster_ips[0]);
    patch_read_policy(&m, &admin);

    // The Service re-created with another ClusterIP: the filter follows it.
    let (second_ip, second) = recreate_orders_service(&m);
    wait_until("the filter patches the new ClusterIP's listener", || {
        written_filters(&m.api)?
            .iter()
            .any(|(_, _, l)| l == std::slice::from_ref(&second))
            .then_some(())
    });
    wait_until(
        "the sidecar's listener for the new ClusterIP is redis_proxy",
        || has_redis_proxy(&admin, &second),
    );
    traffic(&m, &second_ip);

    // In this delivery the mesh's control plane does not depend on redis-xds: with
    // redis-xds gone, istiod restarted on the same port serves the written filter to the
    // reconnecting sidecar, which ACKs the new istiod's listeners and keeps redis_proxy.
    drop(serve);
    drop(istiod);
    let http = format!("127.0.0.1:{}", free_port());
    let _istiod = spawn_istiod(&m.api, m.tmp.path(), None, &http, grpc);
    wait_until("istiod restarted, without redis-xds, is ready", || {
        http_get(&http, "/ready").map(|_| ())
    });
    wait_until("the sidecar ACKs the restarted istiod's listeners", || {
        let syncz: Value = serde_json::from_str(&http_get(&http, "/debug/syncz")?).ok()?;
        syncz
            .as_array()?
            .iter()
            .any(|p| {
                p["listener_sent"].as_str().is_some_and(|s| !s.is_empty())
                    && p["listener_sent"] == p["listener_acked"]
            })
            .then_some(())
    });
    assert!(
        has_redis_proxy(&admin, &second).is_some(),
        "the restarted istiod dropped the filter"
    );
    traffic(&m, &second_ip);
    let _serve = serve_writing(&m);

    // The RedisCluster deleted: the filter goes, and the Service is plain tcp_proxy again.
    delete_orders_and_see_tcp_proxy(&m, &admin, &second);
    wait_until("the filter is gone", || {
        written_filters(&m.api).filter(Vec::is_empty)
    });
}

#[test]
fn istiod_does_not_start_while_its_xds_config_source_is_unreachable() {
    if !in_private_network("istiod_does_not_start_while_its_xds_config_source_is_unreachable") {
        return;
    }
    // What the xds delivery costs (docs/istio.md): istiod 1.31 exits when it cannot reach
    // a config source at start, so with redis-xds down istiod cannot restart.
    let api = ApiServer::start();
    install_istio(&api);
    let tmp = tempfile::tempdir().unwrap();
    let nothing = free_port();
    let http = format!("127.0.0.1:{}", free_port());
    let mut istiod = spawn_istiod(&api, tmp.path(), Some(nothing), &http, free_port());
    let status = common::wait_until_for(
        "istiod gives up on the unreachable config source",
        std::time::Duration::from_secs(120),
        || istiod.child.try_wait().ok().flatten(),
    );
    assert!(!status.success(), "{status}");
    let log = std::fs::read_to_string(tmp.path().join("istiod.log")).unwrap();
    assert!(log.contains("MCP"), "{log}");
}

#[test]
fn serve_is_istiods_config_source_and_writes_nothing_to_the_api_server() {
    if !in_private_network("serve_is_istiods_config_source_and_writes_nothing_to_the_api_server") {
        return;
    }
    let m = mesh();
    let config_port = free_port();
    let config_addr = format!("127.0.0.1:{config_port}");
    // istiod's debug endpoints on an address that is not loopback, as a pod reaches
    // istiod's Service: they serve such a caller only with a token.
    net("ip", &["addr", "add", "10.96.7.1/32", "dev", "lo"]);
    let istiod_http = format!("10.96.7.1:{}", free_port());
    let istiod_debug = format!("http://{istiod_http}");
    // The ServiceAccount of the root namespace whose tokens redis-xds requests for istiod
    // (deploy/istio/istiod-debug-rbac.yaml).
    m.api.create(
        "/api/v1/namespaces/istio-system/serviceaccounts",
        &json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "redis-xds-istiod-debug"}}),
    );
    let serve = common::apiserver::start_serve_kube(
        &m.api,
        &[
            "--istio",
            "--istio-config-addr",
            &config_addr,
            "--istiod-debug-addr",
            &istiod_debug,
            "--istiod-debug-service-account",
            "istio-system/redis-xds-istiod-debug",
            "--xds-auth",
            "none",
            "--debounce-quiet",
            "20ms",
        ],
        "info",
    );
    let (_istiod, grpc) = start_istiod_on(&m.api, m.tmp.path(), Some(config_port), &istiod_http);
    // Without the token, istiod refuses a caller from that address.
    let unauthenticated = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("{istiod_debug}/debug/syncz"))
        .output()
        .expect("curl runs");
    assert_eq!(String::from_utf8_lossy(&unauthenticated.stdout), "401");
    let (_sidecar, admin) = start_sidecar(m.tmp.path(), grpc);
    let listener = format!("{}_6379", m.cluster_ips[0]);
    wait_until(
        "istiod hands the sidecar redis_proxy from the config source",
        || has_redis_proxy(&admin, &listener),
    );
    // Nothing went through the API server.
    let (_, body) = m
        .api
        .get("/apis/networking.istio.io/v1alpha3/envoyfilters")
        .unwrap();
    let list: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list["items"].as_array().map(Vec::len), Some(0), "{body}");

    traffic(&m, &m.cluster_ips[0]);
    // Status says what istiod reports: the one selected sidecar holds the patched listener.
    // Three periodic steps lie between (istiod's push, redis-xds's 5 s probe of istiod, the
    // Lease holder's status write); with the other Istio tests' API servers and istiods on
    // the same two cores, that can take longer than the usual bound.
    let mut seen = Value::Null;
    common::wait_until_for(
        "orders is IstioProgrammed",
        std::time::Duration::from_secs(90),
        || {
            let (_, body) = m.api.get(&format!("{RDC}/orders"))?;
            let rc: Value = serde_json::from_str(&body).ok()?;
            let c = rc["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "IstioProgrammed")?
                .clone();
            if c["message"] != seen["message"] {
                println!("  IstioProgrammed {}: {}", c["status"], c["message"]);
                seen = c.clone();
            }
            (c["status"] == "True" && c["reason"] == "Programmed").then_some(c)
        },
    );
    let (_, body) = m.api.get(&format!("{RDC}/orders")).unwrap();
    assert!(
        body.contains(&format!("1 of 1 sidecars hold redis_proxy on {listener}")),
        "{body}"
    );
    assert!(
        !serve.log.lock().unwrap().contains("eyJ"),
        "a token was logged"
    );
    patch_read_policy(&m, &admin);
    // A new ClusterIP is followed.
    let (second_ip, second) = recreate_orders_service(&m);
    wait_until(
        "the sidecar's listener for the new ClusterIP is redis_proxy",
        || has_redis_proxy(&admin, &second),
    );
    traffic(&m, &second_ip);
    delete_orders_and_see_tcp_proxy(&m, &admin, &second);
}
