//! Istio mode: the same compiled listeners and clusters, delivered to istio-proxy sidecars
//! through istiod as `EnvoyFilter` objects (`networking.istio.io/v1alpha3`) instead of
//! over redis-xds's own ADS.
//!
//! For a RedisCluster whose endpoints come from a Service (`spec.endpoints.service`), a
//! sidecar's outbound listener for that Service is named `<clusterIP>_<port>` and proxies
//! TCP with `envoy.filters.network.tcp_proxy`. The generated filter:
//! - replaces that `tcp_proxy` with the compiled `redis_proxy` (`applyTo: NETWORK_FILTER`,
//!   context `SIDECAR_OUTBOUND`, `operation: REPLACE`: istiod honours REPLACE on network
//!   and HTTP filters only);
//! - adds every cluster the listener sends commands to (`applyTo: CLUSTER`,
//!   `operation: ADD`: a REPLACE of a cluster is silently ignored by istiod), with its
//!   endpoints inline, since nothing serves EDS for them in a mesh;
//! - selects workloads as `spec.listener.clients` does: its namespaces become the filter's
//!   namespace (any namespace: the mesh's root namespace) and its `matchLabels` the
//!   `workloadSelector` (which takes labels only).
//!
//! Listeners that select the same workloads share one filter, so that a cluster two of them
//! use is added once. Everything uses v3 types only: istiod drops v2 type URLs. A secret
//! written inline (an AUTH password from `auth.delivery: Inline`, a private key) is refused:
//! an EnvoyFilter is readable by anyone who may read EnvoyFilters and is stored in etcd, so
//! secrets reach the sidecar only as files (`auth.delivery: File`).

pub mod config_source;
pub mod mtls;
pub mod programmed;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::compile::{Compiled, Problem, Reason};
use crate::model::{Model, ObjectKey};
use crate::protojson;

/// The EnvoyFilter API version istiod serves.
pub const API_VERSION: &str = "networking.istio.io/v1alpha3";
/// Label on every generated EnvoyFilter, so that redis-xds finds (and removes) its own.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "redis-xds");
/// Annotation listing the RedisClusters (`namespace/name`, comma-separated) a filter was
/// generated from.
pub const SOURCES_ANNOTATION: &str = "redis-xds.dev/sources";

/// Settings of Istio mode.
#[derive(Clone, Debug)]
pub struct IstioOptions {
    /// The mesh's root namespace (`meshConfig.rootNamespace`, default `istio-system`): an
    /// EnvoyFilter there applies to workloads in every namespace.
    pub root_namespace: String,
    /// Whether secrets may travel inline. Only where no EnvoyFilter object is written:
    /// served to istiod as a config source, they stay in memory on their way to the
    /// sidecar, as over redis-xds's own xDS; written objects (and `render` output) land
    /// in etcd or in Git.
    pub inline_secrets: bool,
    /// The mesh's trust domain (`meshConfig.trustDomain`, default `cluster.local`): the
    /// Redis Pods' certificates carry `spiffe://<trust domain>/ns/<namespace>/sa/<name>`
    /// ([`mtls`]).
    pub trust_domain: String,
}

impl Default for IstioOptions {
    fn default() -> Self {
        IstioOptions {
            root_namespace: "istio-system".into(),
            inline_secrets: false,
            trust_domain: "cluster.local".into(),
        }
    }
}

/// What [`envoy_filters`] produced.
#[derive(Clone, Debug, Default)]
pub struct Generated {
    /// EnvoyFilter objects, ordered by namespace and name.
    pub filters: Vec<Value>,
    /// RedisClusters left out of Istio mode, and why.
    pub problems: Vec<Problem>,
}

/// Where one listener goes and what it carries.
struct Patch {
    owner: ObjectKey,
    listener_name: String,
    filter: Value,
    clusters: Vec<(String, Value)>,
}

fn problem(owner: &ObjectKey, field: &str, message: String) -> Problem {
    Problem {
        object: owner.clone(),
        field: field.into(),
        reason: Reason::Invalid,
        message,
    }
}

/// `true` when `value` carries a secret inline (what [`protojson::redact`] would hide).
fn has_inline_secret(value: &Value) -> bool {
    let mut redacted = value.clone();
    protojson::redact(&mut redacted);
    redacted != *value
}

/// The cluster as istiod must add it: endpoints inline rather than from EDS, and Istio's
/// mutual TLS towards the servers in the mesh ([`mtls::apply`]).
fn cluster_json(
    c: &crate::compile::CompiledCluster,
    mesh: &mtls::MeshPods<'_>,
    opts: &IstioOptions,
) -> Result<Result<Value, protojson::Error>, mtls::Unreachable> {
    let mut cluster = crate::render::with_inline_endpoints(c);
    mtls::apply(&mut cluster, mesh, &opts.trust_domain)?;
    Ok(protojson::to_json(&cluster).map(|mut value| {
        if let Some(map) = value.as_object_mut() {
            map.remove("@type");
        }
        value
    }))
}

/// The EnvoyFilters for every accepted listener of `compiled` whose RedisCluster reads its
/// endpoints from a Service, and a problem for each that cannot be expressed as one.
pub fn envoy_filters(model: &Model, compiled: &Compiled, opts: &IstioOptions) -> Generated {
    let mut out = Generated::default();
    let mesh = mtls::MeshPods::new(model);
    // (namespace, workload labels) -> patches
    let mut groups: BTreeMap<(String, BTreeMap<String, String>), Vec<Patch>> = BTreeMap::new();
    for listener in compiled.listeners.values() {
        let owner = &listener.owner;
        let Some(object) = model.redis_clusters.get(owner) else {
            continue;
        };
        let spec = &object.spec;
        let Some(service_name) = &spec.endpoints.service else {
            out.problems.push(problem(
                owner,
                "spec.endpoints",
                "Istio mode patches the outbound listener of a Service: read the endpoints from one with spec.endpoints.service".into(),
            ));
            continue;
        };
        let service_key = ObjectKey::new(&owner.namespace, service_name);
        let Some(service) = model.services.get(&service_key) else {
            out.problems.push(problem(
                owner,
                "spec.endpoints.service",
                format!("Service {service_key} not found; Istio mode names the sidecar's outbound listener after its ClusterIP"),
            ));
            continue;
        };
        let Some(cluster_ip) = &service.cluster_ip else {
            out.problems.push(problem(
                owner,
                "spec.endpoints.service",
                format!("Service {service_key} has no ClusterIP (a headless Service has no outbound listener of its own in Istio): give it a ClusterIP"),
            ));
            continue;
        };
        let listener_port = spec.listener.as_ref().map(|l| l.port).unwrap_or_default();
        let port = match service
            .ports
            .iter()
            .find(|(_, p)| u32::from(*p) == listener_port)
        {
            Some((_, p)) => *p,
            None => {
                let ports: Vec<u16> = service.ports.iter().map(|(_, p)| *p).collect();
                out.problems.push(problem(
                    owner,
                    "spec.listener.port",
                    format!("{listener_port} is not a port of Service {service_key} (it has {ports:?}); in Istio mode applications connect to the Service, so set the port they use"),
                ));
                continue;
            }
        };
        let mut listener_json = match protojson::to_json(&listener.listener) {
            Ok(v) => v,
            Err(e) => {
                out.problems
                    .push(problem(owner, "spec.listener", format!("encoding: {e}")));
                continue;
            }
        };
        let chains = listener_json["filterChains"].take();
        let chain = match chains.as_array().map(Vec::as_slice) {
            Some([chain]) => chain.clone(),
            _ => {
                out.problems.push(problem(owner, "spec.listener", "Istio mode replaces one network filter of the Service's listener; this listener needs several filter chains".into()));
                continue;
            }
        };
        if chain.get("transportSocket").is_some() {
            out.problems.push(problem(
                owner,
                "spec.listener.tls",
                "Istio mode cannot give the Service's outbound listener a TLS transport socket of its own (the mesh owns it): remove spec.listener.tls".into(),
            ));
            continue;
        }
        let filter = match chain["filters"].as_array().map(Vec::as_slice) {
            Some([filter]) => filter.clone(),
            _ => {
                out.problems.push(problem(owner, "spec.listener", "Istio mode replaces tcp_proxy with exactly one network filter; this listener needs several".into()));
                continue;
            }
        };
        let mut clusters = Vec::new();
        let mut failed = false;
        for name in &listener.clusters {
            let Some(c) = compiled.clusters.get(name) else {
                continue;
            };
            match cluster_json(c, &mesh, opts) {
                Ok(Ok(v)) => clusters.push((name.clone(), v)),
                Err(unreachable) => {
                    out.problems.push(problem(
                        &c.owner,
                        unreachable.field,
                        unreachable.message.clone(),
                    ));
                    if c.owner != *owner {
                        out.problems.push(problem(
                            owner,
                            "spec.listener",
                            format!("sends commands to RedisCluster {}, which cannot reach its servers in the mesh ({}: {})", c.owner, unreachable.field, unreachable.message),
                        ));
                    }
                    failed = true;
                }
                Ok(Err(e)) => {
                    out.problems.push(problem(
                        owner,
                        "spec",
                        format!("encoding cluster {name}: {e}"),
                    ));
                    failed = true;
                }
            }
        }
        if failed {
            continue;
        }
        if !opts.inline_secrets
            && (has_inline_secret(&filter) || clusters.iter().any(|(_, c)| has_inline_secret(c)))
        {
            out.problems.push(problem(
                owner,
                "spec.auth.delivery",
                "EnvoyFilter objects are stored in etcd (or Git) and seen by anyone allowed to read them: deliver passwords and keys as files (auth.delivery: File, for this RedisCluster and every one its routes and mirrors use), or serve them to istiod as a config source (serve --istio xds), which writes no object".into(),
            ));
            continue;
        }
        // Workloads: clients.selector as labels only.
        let clients = spec.listener.as_ref().and_then(|l| l.clients.as_ref());
        let selector = clients.and_then(|c| c.selector.as_ref());
        if selector.is_some_and(|s| s.match_expressions.as_ref().is_some_and(|e| !e.is_empty())) {
            out.problems.push(problem(
                owner,
                "spec.listener.clients.selector.matchExpressions",
                "Istio's workloadSelector takes labels only: write the selector as matchLabels"
                    .into(),
            ));
            continue;
        }
        let labels = selector
            .and_then(|s| s.match_labels.clone())
            .unwrap_or_default();
        let namespaces: Vec<String> = match clients.and_then(|c| c.namespaces.as_ref()) {
            Some(ns) if !ns.iter().any(|n| n == "*") => ns.clone(),
            _ => vec![opts.root_namespace.clone()],
        };
        for ns in namespaces {
            groups.entry((ns, labels.clone())).or_default().push(Patch {
                owner: owner.clone(),
                listener_name: format!("{cluster_ip}_{port}"),
                filter: filter.clone(),
                clusters: clusters.clone(),
            });
        }
    }
    for ((namespace, labels), patches) in groups {
        out.filters
            .push(filter_object(&namespace, &labels, &patches));
    }
    // A cluster several listeners use is reported once.
    out.problems.sort();
    out.problems.dedup();
    out
}

/// Name of the filter of one (namespace, workload labels) group: stable while the group's
/// selector is, and a valid object name whatever the labels are.
fn filter_name(labels: &BTreeMap<String, String>) -> String {
    use sha2::Digest;
    if labels.is_empty() {
        return "redis-xds".into();
    }
    let mut h = sha2::Sha256::new();
    for (k, v) in labels {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
        h.update([0]);
    }
    let digest = h.finalize();
    let hex: String = digest[..5].iter().map(|b| format!("{b:02x}")).collect();
    format!("redis-xds-{hex}")
}

fn filter_object(namespace: &str, labels: &BTreeMap<String, String>, patches: &[Patch]) -> Value {
    let mut config_patches = Vec::new();
    let mut added = BTreeSet::new();
    for p in patches {
        config_patches.push(json!({
            "applyTo": "NETWORK_FILTER",
            "match": {
                "context": "SIDECAR_OUTBOUND",
                "listener": {
                    "name": p.listener_name,
                    "filterChain": {"filter": {"name": "envoy.filters.network.tcp_proxy"}}
                }
            },
            "patch": {"operation": "REPLACE", "value": p.filter}
        }));
    }
    for p in patches {
        for (name, cluster) in &p.clusters {
            if added.insert(name.clone()) {
                config_patches.push(json!({
                    "applyTo": "CLUSTER",
                    "match": {"context": "SIDECAR_OUTBOUND"},
                    "patch": {"operation": "ADD", "value": cluster}
                }));
            }
        }
    }
    let sources: BTreeSet<String> = patches.iter().map(|p| p.owner.to_string()).collect();
    let mut spec = json!({"configPatches": config_patches});
    if !labels.is_empty() {
        spec["workloadSelector"] = json!({"labels": labels});
    }
    json!({
        "apiVersion": API_VERSION,
        "kind": "EnvoyFilter",
        "metadata": {
            "name": filter_name(labels),
            "namespace": namespace,
            "labels": {MANAGED_BY.0: MANAGED_BY.1},
            "annotations": {SOURCES_ANNOTATION: sources.into_iter().collect::<Vec<_>>().join(",")},
        },
        "spec": spec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> (Model, Compiled) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("objects.yaml"), yaml).unwrap();
        let loaded = crate::source::manifests::load_dir(dir.path()).unwrap();
        assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
        let compiled = crate::compile::compile(&loaded.model);
        assert!(compiled.problems.is_empty(), "{:?}", compiled.problems);
        (loaded.model, compiled)
    }

    const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: orders-redis, namespace: shop}\nspec:\n  clusterIP: 10.96.0.133\n  ports: [{name: redis, port: 6379}]\n";

    fn rc(name: &str, spec: &str) -> String {
        format!(
            "---\napiVersion: redis-xds.dev/v1alpha1\nkind: RedisCluster\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n{spec}"
        )
    }

    #[test]
    fn should_replace_tcp_proxy_on_the_services_listener_and_add_the_clusters() {
        let yaml = format!(
            "{SERVICE}{}{}",
            rc(
                "orders",
                "  endpoints: {service: orders-redis}\n  listener:\n    port: 6379\n    clients: {namespaces: [shop], selector: {matchLabels: {app: checkout}}}\n    routes: [{prefix: \"session:\", cluster: sessions}]\n"
            ),
            rc("sessions", "  endpoints: {static: [\"10.0.0.9:6379\"]}\n")
        );
        let (model, compiled) = load(&yaml);
        let out = envoy_filters(&model, &compiled, &IstioOptions::default());
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        assert_eq!(out.filters.len(), 1);
        let f = &out.filters[0];
        assert_eq!(f["metadata"]["namespace"], "shop");
        assert_eq!(f["spec"]["workloadSelector"]["labels"]["app"], "checkout");
        let patches = f["spec"]["configPatches"].as_array().unwrap();
        assert_eq!(patches[0]["applyTo"], "NETWORK_FILTER");
        assert_eq!(patches[0]["match"]["listener"]["name"], "10.96.0.133_6379");
        assert_eq!(patches[0]["patch"]["operation"], "REPLACE");
        assert_eq!(
            patches[0]["patch"]["value"]["name"],
            "envoy.filters.network.redis_proxy"
        );
        let added: Vec<&str> = patches[1..]
            .iter()
            .map(|p| {
                assert_eq!(p["patch"]["operation"], "ADD");
                p["patch"]["value"]["name"].as_str().unwrap()
            })
            .collect();
        assert_eq!(added, ["redis/shop/orders", "redis/shop/sessions"]);
        // Only v3 type URLs.
        let text = f.to_string();
        assert!(!text.contains(".v2."), "{text}");
        assert_eq!(
            f["metadata"]["annotations"][SOURCES_ANNOTATION],
            "shop/orders"
        );
    }

    /// A Pod `name` at `ip` labelled `app: <app>`; with an istio-proxy when `sa` is given.
    fn pod(name: &str, app: &str, ip: &str, sa: Option<&str>) -> String {
        let (mesh, spec) = match sa {
            Some(sa) => (
                ", security.istio.io/tlsMode: istio".to_owned(),
                format!("spec: {{serviceAccountName: {sa}, containers: []}}\n"),
            ),
            None => (String::new(), String::new()),
        };
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, labels: {{app: {app}{mesh}}}}}\n{spec}status: {{podIP: {ip}, conditions: [{{type: Ready, status: \"True\"}}]}}\n"
        )
    }

    fn added_cluster<'f>(filters: &'f [Value], name: &str) -> &'f Value {
        filters
            .iter()
            .flat_map(|f| f["spec"]["configPatches"].as_array().unwrap())
            .map(|p| &p["patch"]["value"])
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no cluster {name} in {filters:?}"))
    }

    #[test]
    fn should_give_servers_in_the_mesh_istio_mutual_tls_as_istiod_does() {
        let yaml = format!(
            "{SERVICE}{}{}{}{}{}{}",
            pod("orders-0", "orders", "10.244.0.10", Some("orders-redis")),
            pod("orders-1", "orders", "10.244.0.11", Some("orders-redis")),
            pod("cache-0", "cache", "10.244.0.20", Some("cache")),
            pod("cache-1", "cache", "10.244.0.21", None),
            rc(
                "orders",
                "  endpoints: {selector: {matchLabels: {app: orders}}}\n  listener:\n    port: 6379\n    routes: [{prefix: \"c:\", cluster: cache}, {prefix: \"p:\", cluster: plain}]\n"
            )
            .replace("{selector: {matchLabels: {app: orders}}}", "{service: orders-redis}"),
            rc(
                "cache",
                "  mode: Sharded\n  endpoints: {selector: {matchLabels: {app: cache}}}\n"
            ) + &rc("plain", "  endpoints: {static: [\"10.0.0.9:6379\"]}\n"),
        );
        // orders reads its seeds from the Service's EndpointSlice: both Pods.
        let slice = "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: orders-redis-a, namespace: shop, labels: {kubernetes.io/service-name: orders-redis}}\naddressType: IPv4\nendpoints: [{addresses: [10.244.0.10], conditions: {ready: true}, targetRef: {kind: Pod, name: orders-0}}, {addresses: [10.244.0.11], conditions: {ready: true}, targetRef: {kind: Pod, name: orders-1}}]\n";
        let (model, compiled) = load(&format!("{yaml}{slice}"));
        let out = envoy_filters(&model, &compiled, &IstioOptions::default());
        assert!(out.problems.is_empty(), "{:?}", out.problems);

        // Mode Cluster, every seed in the mesh: the cluster's own transport socket.
        let orders = added_cluster(&out.filters, "redis/shop/orders");
        let socket = &orders["transportSocket"];
        assert_eq!(socket["name"], "envoy.transport_sockets.tls");
        let common = &socket["typedConfig"]["commonTlsContext"];
        assert_eq!(common["alpnProtocols"], json!(["istio"]));
        let cert = &common["tlsCertificateSdsSecretConfigs"][0];
        assert_eq!(cert["name"], "default");
        assert_eq!(
            cert["sdsConfig"]["apiConfigSource"]["grpcServices"][0]["envoyGrpc"]["clusterName"],
            "sds-grpc"
        );
        let combined = &common["combinedValidationContext"];
        assert_eq!(
            combined["validationContextSdsSecretConfig"]["name"],
            "ROOTCA"
        );
        assert_eq!(
            combined["defaultValidationContext"]["matchTypedSubjectAltNames"],
            json!([{"sanType": "URI", "matcher": {"exact": "spiffe://cluster.local/ns/shop/sa/orders-redis"}}])
        );
        assert!(orders.get("transportSocketMatches").is_none());

        // Mode Sharded, one server in and one outside the mesh: decided per endpoint.
        let cache = added_cluster(&out.filters, "redis/shop/cache");
        assert!(cache.get("transportSocket").is_none(), "{cache}");
        let matches = cache["transportSocketMatches"].as_array().unwrap();
        assert_eq!(matches[0]["name"], "tlsMode-istio");
        assert_eq!(matches[0]["match"], json!({"tlsMode": "istio"}));
        assert_eq!(
            matches[0]["transportSocket"]["typedConfig"]["commonTlsContext"]["combinedValidationContext"]
                ["defaultValidationContext"]["matchTypedSubjectAltNames"][0]["matcher"]["exact"],
            "spiffe://cluster.local/ns/shop/sa/cache"
        );
        assert_eq!(
            matches[1]["transportSocket"]["name"],
            "envoy.transport_sockets.raw_buffer"
        );
        let tagged: BTreeMap<String, Value> =
            cache["loadAssignment"]["endpoints"][0]["lbEndpoints"]
                .as_array()
                .unwrap()
                .iter()
                .map(|ep| {
                    (
                        ep["endpoint"]["address"]["socketAddress"]["address"]
                            .as_str()
                            .unwrap()
                            .to_owned(),
                        ep["metadata"]["filterMetadata"]["envoy.transport_socket_match"].clone(),
                    )
                })
                .collect();
        assert_eq!(tagged["10.244.0.20"], json!({"tlsMode": "istio"}));
        assert_eq!(tagged["10.244.0.21"], Value::Null);

        // Outside the mesh: plain text, as before.
        let plain = added_cluster(&out.filters, "redis/shop/plain");
        assert!(plain.get("transportSocket").is_none(), "{plain}");
        assert!(plain.get("transportSocketMatches").is_none(), "{plain}");

        // Another trust domain names other identities.
        let opts = IstioOptions {
            trust_domain: "prod.example".into(),
            ..IstioOptions::default()
        };
        let out = envoy_filters(&model, &compiled, &opts);
        assert!(
            out.filters[0]
                .to_string()
                .contains("spiffe://prod.example/ns/shop/sa/orders-redis")
        );
    }

    #[test]
    fn should_report_servers_in_the_mesh_that_the_cluster_cannot_reach() {
        let yaml = format!(
            "{SERVICE}{}{}{}{}{}{}",
            pod("mixed-0", "mixed", "10.244.0.30", Some("redis")),
            pod("mixed-1", "mixed", "10.244.0.31", None),
            pod("tls-0", "tls", "10.244.0.40", Some("redis")),
            rc(
                "orders",
                "  endpoints: {service: orders-redis}\n  listener:\n    port: 6379\n    routes: [{prefix: \"m:\", cluster: mixed}, {prefix: \"t:\", cluster: tls}]\n"
            ),
            rc(
                "mixed",
                "  endpoints: {selector: {matchLabels: {app: mixed}}}\n"
            ),
            rc(
                "tls",
                "  endpoints: {selector: {matchLabels: {app: tls}}}\n  tls: {}\n"
            ),
        );
        let (model, compiled) = load(&yaml);
        let out = envoy_filters(&model, &compiled, &IstioOptions::default());
        let problems: Vec<String> = out.problems.iter().map(ToString::to_string).collect();
        let find = |prefix: &str| {
            problems
                .iter()
                .find(|p| p.starts_with(prefix))
                .unwrap_or_else(|| panic!("no problem {prefix:?} in {problems:#?}"))
        };
        assert!(find("shop/mixed: spec.endpoints: 1 of 2 seeds").contains("mixed-0"));
        assert!(
            find("shop/orders: spec.listener: sends commands to RedisCluster shop/mixed")
                .contains("one transport")
        );
        assert!(find("shop/tls: spec.tls:").contains("excludeInboundPorts"));
        assert!(out.filters.is_empty(), "{:?}", out.filters);
    }

    #[test]
    fn should_explain_what_istio_mode_cannot_express() {
        let yaml = format!(
            "{SERVICE}{}{}{}",
            rc(
                "no-service",
                "  endpoints: {static: [\"10.0.0.9:6379\"]}\n  listener: {port: 6380}\n"
            ),
            rc(
                "wrong-port",
                "  endpoints: {service: orders-redis}\n  listener: {port: 7000}\n"
            ),
            rc(
                "expressions",
                "  endpoints: {service: orders-redis}\n  listener:\n    port: 6379\n    clients: {selector: {matchExpressions: [{key: app, operator: In, values: [a]}]}}\n"
            ),
        );
        let (model, compiled) = load(&yaml);
        let out = envoy_filters(&model, &compiled, &IstioOptions::default());
        let fields: BTreeMap<String, String> = out
            .problems
            .iter()
            .map(|p| (p.object.name.clone(), format!("{}: {}", p.field, p.message)))
            .collect();
        assert!(
            fields["no-service"].starts_with("spec.endpoints:"),
            "{fields:?}"
        );
        assert!(fields["wrong-port"].contains("[6379]"), "{fields:?}");
        assert!(fields["expressions"].contains("matchLabels"), "{fields:?}");
        assert!(out.filters.is_empty());
    }

    #[test]
    fn should_refuse_inline_passwords_and_accept_file_delivery() {
        let secret = "---\napiVersion: v1\nkind: Secret\nmetadata: {name: auth, namespace: shop}\nstringData: {password: hunter2}\n";
        for (delivery, refused) in [("Inline", true), ("File", false)] {
            let yaml = format!(
                "{SERVICE}{secret}{}",
                rc(
                    "orders",
                    &format!(
                        "  endpoints: {{service: orders-redis}}\n  auth: {{secretRef: {{name: auth}}, delivery: {delivery}}}\n  listener: {{port: 6379}}\n"
                    )
                )
            );
            let (model, compiled) = load(&yaml);
            let out = envoy_filters(&model, &compiled, &IstioOptions::default());
            assert_eq!(
                out.problems.len(),
                usize::from(refused),
                "{delivery}: {:?}",
                out.problems
            );
            assert_eq!(out.filters.len(), usize::from(!refused));
            assert!(
                !serde_json::to_string(&out.filters)
                    .unwrap()
                    .contains("hunter2")
            );
            if refused {
                assert_eq!(out.problems[0].field, "spec.auth.delivery");
                // Served to istiod as a config source, nothing is stored: inline is fine.
                let opts = IstioOptions {
                    inline_secrets: true,
                    ..IstioOptions::default()
                };
                let out = envoy_filters(&model, &compiled, &opts);
                assert!(out.problems.is_empty(), "{:?}", out.problems);
                assert!(
                    serde_json::to_string(&out.filters)
                        .unwrap()
                        .contains("hunter2")
                );
            } else {
                // Any namespace: the root namespace.
                assert_eq!(out.filters[0]["metadata"]["namespace"], "istio-system");
            }
        }
    }
}

/// Logs the problems of `generated` when they differ from `reported` (the ones logged
/// last), so that each change is said once, not on every snapshot.
pub fn log_new_problems(generated: &Generated, reported: &mut Vec<String>) {
    let problems: Vec<String> = generated.problems.iter().map(ToString::to_string).collect();
    if problems != *reported {
        for p in &problems {
            tracing::warn!(problem = %p, "left out of Istio mode");
        }
        *reported = problems;
    }
}

/// How `serve` delivers the filters (`--istio`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Served to istiod as an `xds://` config source on this address
    /// ([`crate::istio::config_source`]): nothing is written to the API server.
    Xds(std::net::SocketAddr),
    /// As EnvoyFilter objects in the API server, each owned by its RedisClusters where
    /// they share its namespace (garbage-collected with them); filters of the root
    /// namespace are removed by redis-xds itself when no longer wanted.
    Write,
}
