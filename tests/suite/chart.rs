//! The Helm chart (charts/redis-xds), rendered with real Helm (v4, built from its Go module
//! by scripts/kube-tools): it installs what `kubectl kustomize` of deploy/ and each overlay
//! gives, object for object, its schema refuses bad values by name, and `helm lint`
//! passes.

use crate::common;

use std::collections::BTreeMap;

use serde_yaml_ng::Value;

const CHART: &str = "charts/redis-xds";

/// Labels Helm's conventions add to every object, which deploy/ has no use for.
const HELM_LABELS: [&str; 4] = [
    "helm.sh/chart",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
];

/// `helm <args>` in the repository: (success, stdout, stderr).
fn helm(args: &[&str]) -> (bool, String, String) {
    // scripts/kube-tools exports HELM_BIN; .tools/bin is where it builds Helm.
    let bin = std::env::var_os("HELM_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| common::root().join(".tools/bin/helm"));
    let out = std::process::Command::new(bin)
        .args(args)
        .current_dir(common::root())
        .output()
        .expect("helm runs (scripts/kube-tools builds it)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `helm template` of the chart as release redis-xds in namespace redis-xds, CRDs
/// included, with `--set` values.
fn render(sets: &[&str]) -> Result<Vec<Value>, String> {
    let mut args = vec![
        "template",
        "redis-xds",
        CHART,
        "--namespace",
        "redis-xds",
        "--include-crds",
    ];
    for s in sets {
        args.extend(["--set", s]);
    }
    let (ok, stdout, stderr) = helm(&args);
    if !ok {
        return Err(stderr);
    }
    Ok(serde_yaml_ng::Deserializer::from_str(&stdout)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect())
}

/// Objects by `kind namespace/name`, with Helm's own labels taken off.
fn by_name(docs: Vec<Value>) -> BTreeMap<String, Value> {
    docs.into_iter()
        .map(|mut d| {
            let key = format!(
                "{} {}/{}",
                d["kind"].as_str().unwrap_or("?"),
                d["metadata"]["namespace"].as_str().unwrap_or(""),
                d["metadata"]["name"].as_str().unwrap_or("?"),
            );
            if let Some(Value::Mapping(labels)) =
                d.get_mut("metadata").and_then(|m| m.get_mut("labels"))
            {
                for l in HELM_LABELS {
                    labels.remove(l);
                }
            }
            (key, d)
        })
        .collect()
}

/// The chart with `sets` gives what `kubectl kustomize dir` gives, but the Namespace
/// (Helm's convention: `helm install --namespace redis-xds --create-namespace`).
fn assert_same_objects(sets: &[&str], dir: &str) {
    let chart = by_name(render(sets).unwrap_or_else(|e| panic!("helm template {sets:?}: {e}")));
    let mut kustomized = by_name(super::deploy::kustomize(dir));
    let namespace = kustomized.remove("Namespace /redis-xds");
    assert!(namespace.is_some(), "{dir} installs the namespace");
    assert_eq!(
        chart.keys().collect::<Vec<_>>(),
        kustomized.keys().collect::<Vec<_>>(),
        "helm template {sets:?} against kubectl kustomize {dir}: the objects differ"
    );
    for (key, want) in &kustomized {
        let mut differences = Vec::new();
        differ(key, &chart[key], want, &mut differences);
        assert!(
            differences.is_empty(),
            "helm template {sets:?} differs from kubectl kustomize {dir}:\n{}",
            differences.join("\n")
        );
    }
}

/// Where `got` and `want` differ, by path. Numbers compare by value (kustomize writes a
/// whole float such as the CRD's `100.0` as `100`).
fn differ(path: &str, got: &Value, want: &Value, out: &mut Vec<String>) {
    match (got, want) {
        (Value::Mapping(g), Value::Mapping(w)) => {
            for (k, wv) in w {
                let name = format!("{path}.{}", k.as_str().unwrap_or("?"));
                match g.get(k) {
                    Some(gv) => differ(&name, gv, wv, out),
                    None => out.push(format!("{name}: missing from the chart")),
                }
            }
            for k in g.keys().filter(|k| !w.contains_key(*k)) {
                out.push(format!(
                    "{path}.{}: only in the chart",
                    k.as_str().unwrap_or("?")
                ));
            }
        }
        (Value::Sequence(g), Value::Sequence(w)) if g.len() == w.len() => {
            for (i, (gv, wv)) in g.iter().zip(w).enumerate() {
                differ(&format!("{path}[{i}]"), gv, wv, out);
            }
        }
        (Value::Number(g), Value::Number(w)) if g.as_f64() == w.as_f64() => {}
        _ if got == want => {}
        _ => out.push(format!(
            "{path}: chart {} / kustomize {}",
            serde_yaml_ng::to_string(got).unwrap_or_default().trim(),
            serde_yaml_ng::to_string(want).unwrap_or_default().trim()
        )),
    }
}

#[test]
fn default_values_install_what_deploy_installs() {
    assert_same_objects(&[], "deploy");
}

#[test]
fn cert_manager_values_install_what_the_cert_manager_overlay_installs() {
    assert_same_objects(&["certManager.enabled=true"], "deploy/cert-manager");
}

#[test]
fn istio_values_install_what_the_istio_overlay_installs() {
    assert_same_objects(&["istio.enabled=true"], "deploy/istio");
}

#[test]
fn the_chart_lints_and_its_crd_and_alerts_are_the_repositorys() {
    let (ok, stdout, stderr) = helm(&["lint", "--strict", CHART]);
    assert!(ok, "helm lint: {stdout}{stderr}");
    // Helm installs crds/ as they are (never templated, never upgraded): the same file
    // as `redis-xds crd` writes to crds/.
    let read = |p: &str| std::fs::read_to_string(common::root().join(p)).unwrap();
    assert_eq!(
        read("charts/redis-xds/crds/redisclusters.yaml"),
        read("crds/redisclusters.yaml"),
        "charts/redis-xds/crds/redisclusters.yaml is not crds/redisclusters.yaml: copy it"
    );
    assert_eq!(
        read("charts/redis-xds/files/alerts.yaml"),
        read("monitoring/alerts.yaml"),
        "charts/redis-xds/files/alerts.yaml is not monitoring/alerts.yaml: copy it"
    );
    // The ServiceMonitor and PrometheusRule are monitoring/'s.
    let chart = by_name(
        render(&[
            "metrics.serviceMonitor.enabled=true",
            "metrics.prometheusRule.enabled=true",
        ])
        .unwrap(),
    );
    for (file, key) in [
        (
            "monitoring/servicemonitor.yaml",
            "ServiceMonitor redis-xds/redis-xds",
        ),
        (
            "monitoring/prometheusrule.yaml",
            "PrometheusRule redis-xds/redis-xds",
        ),
    ] {
        let want: Value = serde_yaml_ng::from_str(&read(file)).unwrap();
        assert_eq!(chart.get(key), Some(&want), "{key} against {file}");
    }
}

#[test]
fn the_values_schema_refuses_bad_values_by_name() {
    for (set, names) in [
        ("replicas=0", "replicas"),
        ("replicas=-3", "replicas"),
        ("replicas=two", "replicas"),
        ("replica=3", "replica"),
        ("xds.auth=tokens", "auth"),
        ("xds.auth=mtls", "clientCaSecret"),
        ("istio.configPort=18000", "configPort"),
        ("image.pullPolicy=Sometimes", "pullPolicy"),
        ("metrics.serviceMonitor.interval=soon", "interval"),
        ("xds.tokenAudience=a b", "tokenAudience"),
        (
            "istio.istiodDebugAddr=https://istiod:15014",
            "istiodDebugAddr",
        ),
        ("istio.trustDomain=a/b", "trustDomain"),
    ] {
        let refused = render(&[set]).expect_err(set);
        assert!(
            refused.contains(names)
                && refused.contains("values don't meet the specifications of the schema"),
            "--set {set}: the refusal does not name {names:?}: {refused}"
        );
    }
    // A PodDisruptionBudget that allows no eviction at all is refused too.
    let refused = render(&["replicas=1"]).expect_err("minAvailable 1 of 1 replica");
    assert!(
        refused.contains("podDisruptionBudget.minAvailable"),
        "{refused}"
    );
    assert!(render(&["replicas=1", "podDisruptionBudget.minAvailable=0"]).is_ok());
    // mtls with its client CA is a valid install.
    let docs = render(&["xds.auth=mtls", "xds.clientCaSecret=sidecar-ca"]).unwrap();
    let deployment = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("Deployment"))
        .unwrap();
    let args: Vec<&str> = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        args.contains(&"--xds-auth=mtls")
            && args.contains(&"--xds-tls-client-ca=/etc/redis-xds/client-ca/ca.crt"),
        "{args:?}"
    );
    // Another trust domain reaches serve; the default adds no argument (deploy/istio).
    let args = |sets: &[&str]| -> Vec<String> {
        let docs = render(sets).unwrap();
        let deployment = docs
            .iter()
            .find(|d| d["kind"].as_str() == Some("Deployment"))
            .unwrap();
        deployment["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect()
    };
    let custom = args(&["istio.enabled=true", "istio.trustDomain=prod.example"]);
    assert!(
        custom.contains(&"--istio-trust-domain=prod.example".to_owned()),
        "{custom:?}"
    );
    let default = args(&["istio.enabled=true"]);
    assert!(
        !default
            .iter()
            .any(|a| a.starts_with("--istio-trust-domain")),
        "{default:?}"
    );
}
