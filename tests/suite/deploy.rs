//! deploy/: every manifest parses into its Kubernetes type with unknown fields rejected,
//! RBAC grants exactly the calls the code makes, the Deployment is hardened, and the
//! example RedisClusters compile and are accepted by real Envoy.

use crate::common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use redis_xds::k8s::calls::{API_CALLS, ApiCall, ISTIO_API_CALLS, PATH_CALLS};
use serde::de::DeserializeOwned;
use serde_yaml_ng::Value;

/// The kustomization directories.
const KUSTOMIZATIONS: [&str; 6] = [
    "deploy",
    "deploy/base",
    "deploy/examples",
    "deploy/examples-istio",
    "deploy/cert-manager",
    "deploy/istio",
];

fn manifest_files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in KUSTOMIZATIONS.iter().copied().chain(["crds"]) {
        for e in std::fs::read_dir(common::root().join(dir)).unwrap() {
            let p = e.unwrap().path();
            // Kustomize patches are partial objects: checked by the overlay's own test.
            let patch = p.to_string_lossy().ends_with("-patch.yaml");
            if p.extension().is_some_and(|x| x == "yaml") && !patch {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| {
            <Value as serde::Deserialize>::deserialize(d)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// Deserializes strictly: any field the type does not know is an error.
fn strict<T: DeserializeOwned>(doc: &Value) -> Result<T, String> {
    let mut unknown = Vec::new();
    let mut cb = |p: serde_ignored::Path<'_>| unknown.push(p.to_string());
    let v: T =
        serde_path_to_error::deserialize(serde_ignored::Deserializer::new(doc.clone(), &mut cb))
            .map_err(|e| format!("{}: {}", e.path(), e.inner()))?;
    unknown.retain(|p| p != "apiVersion" && p != "kind");
    match unknown.first() {
        Some(p) => Err(format!("unknown field {p}")),
        None => Ok(v),
    }
}

/// cert-manager's kinds: no Rust types here, so the fields redis-xds relies on are checked.
fn cert_manager(doc: &Value) -> Result<(), String> {
    if doc["apiVersion"].as_str() != Some("cert-manager.io/v1") {
        return Err("apiVersion must be cert-manager.io/v1".into());
    }
    if doc["metadata"]["namespace"].as_str() != Some("redis-xds") {
        return Err("metadata.namespace must be redis-xds".into());
    }
    let spec = &doc["spec"];
    let known: &[&str] = match doc["kind"].as_str() {
        Some("Issuer") => &["selfSigned", "ca"],
        _ => &[
            "isCA",
            "commonName",
            "secretName",
            "duration",
            "renewBefore",
            "dnsNames",
            "usages",
            "privateKey",
            "issuerRef",
        ],
    };
    for (k, _) in spec.as_mapping().ok_or("no spec")? {
        let k = k.as_str().unwrap_or_default();
        if !known.contains(&k) {
            return Err(format!("unknown field spec.{k}"));
        }
    }
    if doc["kind"].as_str() == Some("Certificate")
        && (spec["secretName"].as_str().is_none() || spec["issuerRef"]["name"].as_str().is_none())
    {
        return Err("a Certificate needs spec.secretName and spec.issuerRef.name".into());
    }
    Ok(())
}

fn check(doc: &Value) -> Result<(), String> {
    let kind = doc["kind"].as_str().unwrap_or_default();
    match kind {
        "Namespace" => strict::<Namespace>(doc).map(drop),
        "ServiceAccount" => strict::<ServiceAccount>(doc).map(drop),
        "ClusterRole" => strict::<ClusterRole>(doc).map(drop),
        "ClusterRoleBinding" => strict::<ClusterRoleBinding>(doc).map(drop),
        "Role" => strict::<Role>(doc).map(drop),
        "RoleBinding" => strict::<RoleBinding>(doc).map(drop),
        "Deployment" => strict::<Deployment>(doc).map(drop),
        "StatefulSet" => strict::<StatefulSet>(doc).map(drop),
        "Job" => strict::<Job>(doc).map(drop),
        "Service" => strict::<Service>(doc).map(drop),
        "NetworkPolicy" => strict::<NetworkPolicy>(doc).map(drop),
        "MutatingWebhookConfiguration" => strict::<MutatingWebhookConfiguration>(doc).map(drop),
        "Issuer" | "Certificate" => cert_manager(doc),
        "PodDisruptionBudget" => strict::<PodDisruptionBudget>(doc).map(drop),
        "CustomResourceDefinition" => strict::<CustomResourceDefinition>(doc).map(drop),
        "RedisCluster" => {
            let mut d = doc.clone();
            // status is written by redis-xds; a manifest has none.
            if let Value::Mapping(m) = &mut d {
                m.remove("status");
            }
            strict::<redis_xds::api::RedisCluster>(&d).map(drop)
        }
        "Kustomization" => Ok(()),
        other => Err(format!(
            "no type checked for kind {other:?}; add it to this test"
        )),
    }
}

#[test]
fn every_manifest_parses_into_its_type_with_unknown_fields_rejected() {
    let mut kinds = BTreeSet::new();
    for path in manifest_files() {
        for doc in documents(&path) {
            kinds.insert(doc["kind"].as_str().unwrap_or_default().to_string());
            check(&doc).unwrap_or_else(|e| {
                panic!(
                    "{}: {} {}: {e}",
                    path.display(),
                    doc["kind"].as_str().unwrap_or(""),
                    doc["metadata"]["name"].as_str().unwrap_or("")
                )
            });
        }
    }
    for k in [
        "Deployment",
        "ClusterRole",
        "Service",
        "PodDisruptionBudget",
        "StatefulSet",
        "RedisCluster",
        "CustomResourceDefinition",
    ] {
        assert!(kinds.contains(k), "no {k} found in deploy/");
    }
}

#[test]
fn a_misspelt_field_is_caught() {
    let path = common::root().join("deploy/base/deployment.yaml");
    let text = std::fs::read_to_string(path)
        .unwrap()
        .replace("readinessProbe:", "readynessProbe:");
    let doc: Value = serde_yaml_ng::from_str(&text).unwrap();
    let err = check(&doc).unwrap_err();
    assert!(err.contains("readynessProbe"), "{err}");
}

#[test]
fn kustomizations_list_files_that_exist_and_install_the_crd() {
    for dir in KUSTOMIZATIONS.iter().copied().chain(["crds"]) {
        let k = documents(&common::root().join(dir).join("kustomization.yaml")).remove(0);
        let resources: Vec<&str> = k["resources"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        for r in &resources {
            assert!(
                common::root().join(dir).join(r).exists(),
                "{dir}/kustomization.yaml lists missing {r}"
            );
        }
        if dir == "deploy/base" {
            assert!(resources.contains(&"../../crds"));
        }
    }
    // Every manifest in those directories is part of its kustomization.
    for dir in KUSTOMIZATIONS {
        let k = documents(&common::root().join(dir).join("kustomization.yaml")).remove(0);
        let mut listed: BTreeSet<String> = k["resources"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_string())
            .collect();
        for p in k["patches"].as_sequence().into_iter().flatten() {
            let path = p["path"].as_str().unwrap().to_string();
            assert!(
                common::root().join(dir).join(&path).exists(),
                "{dir}/kustomization.yaml patches with missing {path}"
            );
            listed.insert(path);
        }
        for f in manifest_files()
            .iter()
            .filter(|p| p.parent() == Some(&common::root().join(dir)))
        {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                name == "kustomization.yaml" || listed.contains(&name),
                "{dir}/{name} is not in the kustomization"
            );
        }
    }
}

/// (group, resource, verb) of every resource a rule grants; no wildcards.
fn resource_grants(r: &PolicyRule) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for g in r.api_groups.clone().unwrap_or_default() {
        for res in r.resources.clone().unwrap_or_default() {
            for v in &r.verbs {
                assert!(g != "*" && res != "*" && v != "*", "no wildcards in RBAC");
                out.insert((g.clone(), res.clone(), v.clone()));
            }
        }
    }
    out
}

/// (group, resource, verb) of every call listed.
fn calls(list: &[ApiCall]) -> BTreeSet<(String, String, String)> {
    list.iter()
        .flat_map(|c| {
            c.verbs
                .iter()
                .map(|v| (c.group.to_string(), c.resource.to_string(), v.to_string()))
        })
        .collect()
}

#[test]
fn the_istio_overlay_grants_exactly_the_calls_of_istio_mode_for_its_one_service_account() {
    let docs = documents(&common::root().join("deploy/istio/istiod-debug-rbac.yaml"));
    let mut granted = BTreeSet::new();
    for doc in &docs {
        if doc["kind"].as_str() != Some("Role") {
            continue;
        }
        let role: Role = strict(doc).unwrap();
        assert_eq!(role.metadata.namespace.as_deref(), Some("istio-system"));
        for r in role.rules.unwrap_or_default() {
            assert_eq!(
                r.resource_names.as_deref(),
                Some(&["redis-xds-istiod-debug".to_string()][..]),
                "the token of that one ServiceAccount only"
            );
            granted.extend(resource_grants(&r));
        }
    }
    assert_eq!(granted, calls(ISTIO_API_CALLS));
    // Bound to redis-xds's ServiceAccount, and the Deployment asks for that account's tokens.
    let binding = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("RoleBinding"))
        .unwrap();
    assert_eq!(binding["subjects"][0]["name"].as_str(), Some("redis-xds"));
    assert_eq!(
        binding["subjects"][0]["namespace"].as_str(),
        Some("redis-xds")
    );
    let deployment = kustomize("deploy/istio")
        .into_iter()
        .find(|d| d["kind"].as_str() == Some("Deployment"))
        .unwrap();
    let args =
        serde_yaml_ng::to_string(&deployment["spec"]["template"]["spec"]["containers"][0]["args"])
            .unwrap();
    assert!(
        args.contains("--istiod-debug-service-account=istio-system/redis-xds-istiod-debug"),
        "{args}"
    );
}

#[test]
fn rbac_grants_exactly_the_api_calls_the_code_makes() {
    let mut granted = BTreeSet::new();
    let mut granted_paths = BTreeSet::new();
    for doc in documents(&common::root().join("deploy/base/rbac.yaml")) {
        let rules = match doc["kind"].as_str() {
            Some("ClusterRole") => strict::<ClusterRole>(&doc)
                .unwrap()
                .rules
                .unwrap_or_default(),
            Some("Role") => strict::<Role>(&doc).unwrap().rules.unwrap_or_default(),
            _ => continue,
        };
        for r in rules {
            for path in r.non_resource_urls.clone().unwrap_or_default() {
                for v in &r.verbs {
                    assert!(!path.contains('*') && v != "*", "no wildcards in RBAC");
                    granted_paths.insert((path.clone(), v.clone()));
                }
            }
            granted.extend(resource_grants(&r));
        }
    }
    assert_eq!(granted, calls(API_CALLS));
    let used_paths: BTreeSet<(String, String)> = PATH_CALLS
        .iter()
        .flat_map(|c| c.verbs.iter().map(|v| (c.path.to_string(), v.to_string())))
        .collect();
    assert_eq!(granted_paths, used_paths);
}

#[test]
fn the_deployment_is_hardened_and_probed() {
    let doc = documents(&common::root().join("deploy/base/deployment.yaml")).remove(0);
    let d: Deployment = strict(&doc).unwrap();
    let spec = d.spec.unwrap();
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.unwrap();
    let c = &pod.containers[0];
    assert_eq!(common::hardening_problems(&pod, c), Vec::<String>::new());
    // The review catches what it is there for.
    let mut weak = c.clone();
    weak.security_context
        .as_mut()
        .unwrap()
        .read_only_root_filesystem = None;
    weak.resources = None;
    assert_eq!(common::hardening_problems(&pod, &weak).len(), 3);
    assert_eq!(
        c.readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/readyz")
    );
    assert_eq!(
        c.liveness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/healthz")
    );
    assert_eq!(pod.service_account_name.as_deref(), Some("redis-xds"));
    // The args are ones serve accepts.
    let args: Vec<&str> = c
        .args
        .as_ref()
        .unwrap()
        .iter()
        .map(String::as_str)
        .collect();
    assert_serve_accepts(&args);
}

#[test]
fn the_example_redisclusters_compile_and_envoy_accepts_them() {
    let dir = common::root().join("deploy/examples");
    let out = common::run(&[
        "render",
        "--manifests",
        dir.to_str().unwrap(),
        "--node-namespace",
        "shop",
        "--node-label",
        "app=checkout",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["listeners"].as_array().unwrap().len(), 1);
    assert_eq!(json["clusters"].as_array().unwrap().len(), 3);

    let out = common::run(&[
        "render",
        "--static-bootstrap",
        "--manifests",
        dir.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("bootstrap.json");
    std::fs::write(&path, &out.stdout).unwrap();
    let (ok, log) = common::envoy_validate(&path);
    assert!(ok, "{log}");

    // The sample app carries no sidecar of its own: its namespace is labelled for the
    // injector, and what the injector adds to its pods is a bootstrap Envoy accepts.
    let ns: Namespace = strict(&documents(&dir.join("namespace.yaml")).remove(0)).unwrap();
    assert_eq!(
        ns.metadata.labels.unwrap()[redis_xds::inject::INJECT],
        "enabled"
    );
    let doc = documents(&dir.join("checkout.yaml")).remove(0);
    let d: Deployment = strict(&doc).unwrap();
    let template = d.spec.unwrap().template;
    assert!(template.spec.as_ref().unwrap().init_containers.is_none());
    let pod = k8s_openapi::api::core::v1::Pod {
        metadata: template.metadata.unwrap(),
        spec: template.spec,
        status: None,
    };
    let ca = redis_xds::k8s::ca::Authority::generate().unwrap();
    let opts = redis_xds::inject::InjectOptions {
        xds_address: "redis-xds.redis-xds.svc:18000".into(),
        server_name: "redis-xds.redis-xds.svc".into(),
        image: "envoyproxy/envoy:v1.40.0".into(),
        token_audience: "redis-xds".into(),
        own_namespace: "redis-xds".into(),
        bundle: std::sync::Arc::new(std::sync::RwLock::new(ca.bundle().to_owned())),
    };
    let injected =
        redis_xds::inject::inject(&pod, "shop", redis_xds::inject::Scope::Namespace, &opts)
            .unwrap()
            .unwrap();
    let sidecar = &injected.spec.unwrap().init_containers.unwrap()[0];
    let args = sidecar.args.as_ref().unwrap();
    assert_eq!(args[0], "--config-yaml");
    // What kubelet does with $(VAR) from the downward API, and the token file it mounts.
    let token_path = tmp.path().join("token");
    std::fs::write(&token_path, "projected-token").unwrap();
    let config = args[1]
        .replace("$(POD_NAME)", "checkout-7d9c-abcde")
        .replace("$(POD_IP)", "127.0.0.1")
        .replace(
            "/var/run/secrets/redis-xds/token",
            token_path.to_str().unwrap(),
        );
    assert!(config.contains("envoy.grpc_credentials.file_based_metadata"));
    std::fs::write(&path, config).unwrap();
    let (ok, log) = common::envoy_validate(&path);
    assert!(ok, "{log}");
}

#[test]
fn the_webhook_configuration_matches_the_injector() {
    let doc = documents(&common::root().join("deploy/base/webhook.yaml")).remove(0);
    let config: MutatingWebhookConfiguration = strict(&doc).unwrap();
    let webhooks = config.webhooks.unwrap();
    assert_eq!(webhooks.len(), 3);
    let service: Service =
        strict(&documents(&common::root().join("deploy/base/service.yaml")).remove(0)).unwrap();
    let ports = service.spec.unwrap().ports.unwrap();
    let deployment: Deployment =
        strict(&documents(&common::root().join("deploy/base/deployment.yaml")).remove(0)).unwrap();
    let container = deployment
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .containers
        .remove(0);
    let args = container.args.unwrap();
    for w in &webhooks {
        // Fail where pods asked for the sidecar by label; Ignore where every other pod
        // passes (an injector outage must not stop them).
        let (policy, path) = match w.name.as_str() {
            "namespace.inject.redis-xds.dev" => ("Fail", "/inject"),
            "object.inject.redis-xds.dev" => ("Fail", "/inject/opt-in"),
            "annotation.inject.redis-xds.dev" => ("Ignore", "/inject/opt-in"),
            other => panic!("unexpected webhook {other}"),
        };
        assert_eq!(w.failure_policy.as_deref(), Some(policy), "{}", w.name);
        assert_eq!(w.side_effects, "None");
        let svc = w.client_config.service.as_ref().unwrap();
        assert_eq!(svc.path.as_deref(), Some(path), "{}", w.name);
        // The Service port it calls leads to the port serve's webhook listens on.
        let port = ports.iter().find(|p| Some(p.port) == svc.port).unwrap();
        let target = port.target_port.clone().unwrap();
        let container_port = container
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .find(|p| {
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(
                    p.name.clone().unwrap_or_default(),
                ) == target
            })
            .unwrap()
            .container_port;
        assert!(
            args.contains(&format!("--webhook-addr=0.0.0.0:{container_port}")),
            "{args:?}"
        );
        // Never the system namespaces nor redis-xds's own, whatever else matches.
        let exprs = w
            .namespace_selector
            .as_ref()
            .unwrap()
            .match_expressions
            .clone()
            .unwrap();
        let excluded = exprs
            .iter()
            .find(|e| e.key == "kubernetes.io/metadata.name" && e.operator == "NotIn")
            .unwrap()
            .values
            .clone()
            .unwrap();
        for ns in redis_xds::inject::SYSTEM_NAMESPACES
            .iter()
            .chain(&["redis-xds"])
        {
            assert!(
                excluded.iter().any(|e| e == ns),
                "{} does not exclude {ns}",
                w.name
            );
        }
    }
    // The injected pods' label is what the NetworkPolicy lets reach the xDS port.
    let np =
        std::fs::read_to_string(common::root().join("deploy/base/networkpolicy.yaml")).unwrap();
    assert!(np.contains(redis_xds::inject::PROXY_LABEL));
}

#[test]
fn the_cert_manager_overlay_hands_serve_the_certificate_it_issues() {
    let dir = common::root().join("deploy/cert-manager");
    let certs = documents(&dir.join("certificates.yaml"));
    let serving = certs
        .iter()
        .find(|d| d["metadata"]["name"].as_str() == Some("redis-xds-serving"))
        .unwrap();
    let secret = serving["spec"]["secretName"].as_str().unwrap();
    // Issued by the CA Issuer, whose CA is the self-signed Certificate's Secret.
    let issuer = serving["spec"]["issuerRef"]["name"].as_str().unwrap();
    let ca_issuer = certs
        .iter()
        .find(|d| {
            d["kind"].as_str() == Some("Issuer") && d["metadata"]["name"].as_str() == Some(issuer)
        })
        .unwrap();
    let ca_secret = ca_issuer["spec"]["ca"]["secretName"].as_str().unwrap();
    assert!(
        certs
            .iter()
            .any(|d| d["kind"].as_str() == Some("Certificate")
                && d["spec"]["isCA"].as_bool() == Some(true)
                && d["spec"]["secretName"].as_str() == Some(ca_secret))
    );
    // The names serve's own CA would put in the certificate.
    let names: Vec<&str> = serving["spec"]["dnsNames"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "redis-xds.redis-xds.svc",
            "redis-xds.redis-xds.svc.cluster.local"
        ]
    );

    let patch = documents(&dir.join("deployment-patch.yaml")).remove(0);
    let pod = &patch["spec"]["template"]["spec"];
    assert_eq!(
        pod["volumes"][0]["secret"]["secretName"].as_str(),
        Some(secret)
    );
    let c = &pod["containers"][0];
    let mount = c["volumeMounts"][0]["mountPath"].as_str().unwrap();
    let args: Vec<&str> = c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    for (flag, file) in [
        ("--xds-tls-cert", "tls.crt"),
        ("--xds-tls-key", "tls.key"),
        ("--xds-tls-ca-bundle", "ca.crt"),
    ] {
        assert!(
            args.contains(&format!("{flag}={mount}/{file}").as_str()),
            "{flag}: {args:?}"
        );
    }
    assert!(!args.iter().any(|a| a.starts_with("--ca-secret")));
    assert_serve_accepts(&args);

    let webhook = documents(&dir.join("webhook-patch.yaml")).remove(0);
    assert_eq!(
        webhook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].as_str(),
        Some("redis-xds/redis-xds-serving")
    );
}

/// `args` (a container's, starting with `serve`) are ones `redis-xds` accepts.
fn assert_serve_accepts<S: AsRef<std::ffi::OsStr>>(args: &[S]) {
    let out = common::redis_xds()
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `kubectl kustomize` of one directory, as documents.
pub(crate) fn kustomize(dir: &str) -> Vec<Value> {
    let out = std::process::Command::new("kubectl")
        .args(["kustomize", dir])
        .current_dir(common::root())
        .output()
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl kustomize {dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_yaml_ng::Deserializer::from_slice(&out.stdout)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

#[test]
fn every_overlay_builds_and_the_istio_one_runs_serve_as_istiods_config_source() {
    for dir in KUSTOMIZATIONS {
        for doc in kustomize(dir) {
            check(&doc).unwrap_or_else(|e| panic!("{dir}: {e}"));
        }
    }
    let docs = kustomize("deploy/istio");
    let deployment: Deployment = strict(
        docs.iter()
            .find(|d| d["kind"].as_str() == Some("Deployment"))
            .unwrap(),
    )
    .unwrap();
    let c = deployment
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .containers
        .remove(0);
    let args = c.args.unwrap();
    assert!(args.contains(&"--istio=xds".to_string()), "{args:?}");
    assert_serve_accepts(&args);
    assert!(c.ports.unwrap().iter().any(|p| p.container_port == 18002));
    let service: Service = strict(
        docs.iter()
            .find(|d| d["kind"].as_str() == Some("Service"))
            .unwrap(),
    )
    .unwrap();
    assert!(
        service
            .spec
            .unwrap()
            .ports
            .unwrap()
            .iter()
            .any(|p| p.port == 18002)
    );
}

/// Prometheus finds the metrics: the pod annotations and the ServiceMonitor name the port
/// `serve` answers `/metrics` on, and the Service exposes it under the name the
/// ServiceMonitor uses.
#[test]
fn prometheus_is_pointed_at_the_port_that_serves_metrics() {
    let doc = documents(&common::root().join("deploy/base/deployment.yaml")).remove(0);
    let d: Deployment = strict(&doc).unwrap();
    let template = d.spec.unwrap().template;
    let annotations = template.metadata.unwrap().annotations.unwrap();
    let container = &template.spec.unwrap().containers[0];
    let debug_port = container
        .args
        .as_ref()
        .unwrap()
        .iter()
        .find_map(|a| a.strip_prefix("--debug-addr="))
        .and_then(|a| a.rsplit(':').next())
        .expect("--debug-addr in the container's args")
        .to_owned();
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], debug_port);
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    let named_port = container
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .find(|p| p.container_port.to_string() == debug_port)
        .and_then(|p| p.name.clone())
        .expect("the debug port is named");

    let services = documents(&common::root().join("deploy/base/service.yaml"));
    let service = &services[0];
    let monitor = documents(&common::root().join("monitoring/servicemonitor.yaml")).remove(0);
    assert_eq!(monitor["kind"], "ServiceMonitor");
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["path"], "/metrics");
    let port = service["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"] == endpoint["port"])
        .expect("the ServiceMonitor's port is one of the Service's");
    assert_eq!(port["targetPort"], named_port.as_str());
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"],
        service["metadata"]["labels"]
    );
}
