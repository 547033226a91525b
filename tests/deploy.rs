//! deploy/: every manifest parses into its Kubernetes type with unknown fields rejected,
//! RBAC grants exactly the calls the code makes, the Deployment is hardened, and the
//! example RedisClusters compile and are accepted by real Envoy.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use redis_xds::source::k8s::calls::API_CALLS;
use serde::de::DeserializeOwned;
use serde_yaml_ng::Value;

fn manifest_files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in ["deploy", "deploy/examples", "crds"] {
        for e in std::fs::read_dir(common::root().join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") {
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
    let path = common::root().join("deploy/deployment.yaml");
    let text = std::fs::read_to_string(path)
        .unwrap()
        .replace("readinessProbe:", "readynessProbe:");
    let doc: Value = serde_yaml_ng::from_str(&text).unwrap();
    let err = check(&doc).unwrap_err();
    assert!(err.contains("readynessProbe"), "{err}");
}

#[test]
fn kustomizations_list_files_that_exist_and_install_the_crd() {
    for dir in ["deploy", "deploy/examples", "crds"] {
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
        if dir == "deploy" {
            assert!(resources.contains(&"../crds"));
        }
    }
    // Every manifest in those directories is part of its kustomization.
    for dir in ["deploy", "deploy/examples"] {
        let k = documents(&common::root().join(dir).join("kustomization.yaml")).remove(0);
        let listed: BTreeSet<String> = k["resources"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_string())
            .collect();
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

#[test]
fn rbac_grants_exactly_the_api_calls_the_code_makes() {
    let mut granted = BTreeSet::new();
    for doc in documents(&common::root().join("deploy/rbac.yaml")) {
        let rules = match doc["kind"].as_str() {
            Some("ClusterRole") => strict::<ClusterRole>(&doc)
                .unwrap()
                .rules
                .unwrap_or_default(),
            Some("Role") => strict::<Role>(&doc).unwrap().rules.unwrap_or_default(),
            _ => continue,
        };
        for r in rules {
            for g in r.api_groups.unwrap_or_default() {
                for res in r.resources.clone().unwrap_or_default() {
                    for v in &r.verbs {
                        assert!(g != "*" && res != "*" && v != "*", "no wildcards in RBAC");
                        granted.insert((g.clone(), res.clone(), v.clone()));
                    }
                }
            }
        }
    }
    let used: BTreeSet<(String, String, String)> = API_CALLS
        .iter()
        .flat_map(|c| {
            c.verbs
                .iter()
                .map(|v| (c.group.to_string(), c.resource.to_string(), v.to_string()))
        })
        .collect();
    assert_eq!(granted, used);
}

#[test]
fn the_deployment_is_hardened_and_probed() {
    let doc = documents(&common::root().join("deploy/deployment.yaml")).remove(0);
    let d: Deployment = strict(&doc).unwrap();
    let spec = d.spec.unwrap();
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.unwrap();
    assert_eq!(
        pod.security_context.as_ref().unwrap().run_as_non_root,
        Some(true)
    );
    let c = &pod.containers[0];
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_string()][..])
    );
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
    let res = c.resources.as_ref().unwrap();
    assert!(res.requests.is_some() && res.limits.is_some());
    assert_eq!(pod.service_account_name.as_deref(), Some("redis-xds"));
    // The args are ones serve accepts.
    let args: Vec<&str> = c
        .args
        .as_ref()
        .unwrap()
        .iter()
        .map(String::as_str)
        .collect();
    let out = common::redis_xds()
        .args(&args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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

    // The init container's bootstrap command is one redis-xds accepts, and Envoy too.
    let doc = documents(&dir.join("checkout.yaml")).remove(0);
    let d: Deployment = strict(&doc).unwrap();
    let init = &d
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .init_containers
        .unwrap()[0];
    let args: Vec<String> = init
        .args
        .as_ref()
        .unwrap()
        .iter()
        .map(|a| {
            a.replace("$(POD_NAME)", "checkout-abc")
                .replace("$(POD_NAMESPACE)", "shop")
                .replace("$(APP)", "checkout")
                .replace("/etc/envoy/envoy.json", path.to_str().unwrap())
        })
        .collect();
    // Files the sidecar would mount: a CA and a token.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let ca_path = tmp.path().join("ca.crt");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let token_path = tmp.path().join("token");
    std::fs::write(&token_path, "projected-token").unwrap();
    let args: Vec<String> = args
        .iter()
        .map(|a| {
            a.replace("/etc/redis-xds/ca/ca.crt", ca_path.to_str().unwrap())
                .replace(
                    "/var/run/secrets/redis-xds/token",
                    token_path.to_str().unwrap(),
                )
        })
        .collect();
    assert!(
        args.iter().any(|a| a == "--xds-auth=token"),
        "the example uses token auth"
    );
    let out = common::redis_xds().args(&args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bootstrap = std::fs::read_to_string(&path).unwrap();
    assert!(bootstrap.contains("envoy.grpc_credentials.file_based_metadata"));
    let (ok, log) = common::envoy_validate(&path);
    assert!(ok, "{log}");
}
