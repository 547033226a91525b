//! Install and sidecar injection against a real API server: `kubectl apply -k deploy/`,
//! `serve` as the redis-xds ServiceAccount with its own CA (`--ca-secret`) and the
//! webhook, the API server calling that webhook over TLS for every Pod it creates, and the
//! injected sidecar run by real Envoy 1.40 with a projected token until it is SYNCED.

use crate::common;

use std::process::Command;

use common::apiserver::ApiServer;
use common::{free_port, http_get, wait_until};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

fn kubectl(api: &ApiServer, args: &[&str]) -> std::process::Output {
    Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&api.kubeconfig)
        .args(args)
        .current_dir(common::root())
        .output()
        .expect("kubectl runs")
}

/// A token from the TokenRequest API for ServiceAccount `namespace/name`.
fn token(api: &ApiServer, namespace: &str, name: &str, audience: Option<&str>) -> String {
    let spec = match audience {
        Some(a) => json!({"audiences": [a], "expirationSeconds": 3600}),
        None => json!({"expirationSeconds": 3600}),
    };
    let answer = api.create(
        &format!("/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token"),
        &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}),
    );
    answer["status"]["token"]
        .as_str()
        .expect("a token")
        .to_owned()
}

fn create_pod(api: &ApiServer, namespace: &str, pod: Value) -> (u16, Value) {
    let (code, body) = api
        .request(
            "POST",
            &format!("/api/v1/namespaces/{namespace}/pods"),
            Some(&pod.to_string()),
        )
        .expect("the API server answers");
    (code, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn app_pod(name: &str, labels: Value, annotations: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {
            "serviceAccountName": "checkout",
            "containers": [{"name": "app", "image": "redis:7.2"}],
        },
    })
}

fn init_names(pod: &Value) -> Vec<String> {
    pod["spec"]["initContainers"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| c["name"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn should_install_with_one_command_and_inject_sidecars_that_reach_synced() {
    let api = ApiServer::start();
    let tmp = tempfile::tempdir().unwrap();

    // 1. The whole of deploy/ applies.
    let out = kubectl(&api, &["apply", "-k", "deploy/"]);
    assert!(
        out.status.success(),
        "kubectl apply -k deploy/: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    api.wait_crd_established();

    // 2. serve runs as the redis-xds ServiceAccount, with exactly deploy/'s RBAC: it creates
    // its CA, issues its certificate and writes the webhook's caBundle with those rights.
    let sa_token = token(&api, "redis-xds", "redis-xds", None);
    let kubeconfig = tmp.path().join("redis-xds.kubeconfig");
    let ca_file = tmp.path().join("cluster-ca.pem");
    std::fs::write(&ca_file, &api.ca_pem).unwrap();
    std::fs::write(
        &kubeconfig,
        json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": {"server": api.url, "certificate-authority": ca_file}}],
            "users": [{"name": "redis-xds", "user": {"token": sa_token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "redis-xds"}}],
            "current-context": "test",
        })
        .to_string(),
    )
    .unwrap();
    let xds_port = free_port();
    let mut cmd = common::redis_xds();
    cmd.args(["serve", "--xds-addr"])
        .arg(format!("127.0.0.1:{xds_port}"))
        .args([
            "--debug-addr",
            "127.0.0.1:0",
            "--lease-namespace",
            "redis-xds",
            "--ca-secret",
            "redis-xds-ca",
            "--tls-san",
            "127.0.0.1",
            "--webhook-addr",
            "127.0.0.1:0",
            "--inject-xds-address",
        ])
        .arg(format!("127.0.0.1:{xds_port}"))
        .args(["--debounce-quiet", "20ms"])
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST");
    let serve = common::start_serve_command(cmd, "info");
    let webhook = {
        let log = serve.log.lock().unwrap().clone();
        log.lines()
            .find(|l| l.contains("sidecar injection webhook listening"))
            .and_then(|l| l.split("addr=").nth(1))
            .and_then(|s| s.split_whitespace().next())
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no webhook address in the log:\n{log}"))
    };

    // The CA Secret exists, and its bundle went into both webhooks' caBundle.
    let (code, body) = api
        .get("/api/v1/namespaces/redis-xds/secrets/redis-xds-ca")
        .unwrap();
    assert_eq!(code, 200, "{body}");
    let secret: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(secret["type"], "kubernetes.io/tls");
    let bundle = secret["data"]["ca.crt"].as_str().unwrap().to_owned();
    let config_path =
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/redis-xds";
    let mut config: Value = wait_until("serve writes the webhooks' caBundle", || {
        let (_, body) = api.get(config_path)?;
        let config: Value = serde_json::from_str(&body).ok()?;
        config["webhooks"]
            .as_array()?
            .iter()
            .all(|w| w["clientConfig"]["caBundle"].as_str() == Some(bundle.as_str()))
            .then_some(config)
    });
    // No kubelet or kube-proxy here, so the API server reaches the webhook at its loopback
    // address instead of through the Service; selectors, rules and caBundle stay as
    // deploy/ has them.
    for w in config["webhooks"].as_array_mut().unwrap() {
        let client = w["clientConfig"].as_object_mut().unwrap();
        let path = client["service"]["path"].as_str().unwrap().to_owned();
        client.remove("service");
        client.insert("url".into(), json!(format!("https://{webhook}{path}")));
    }
    let (code, body) = api
        .request("PUT", config_path, Some(&config.to_string()))
        .unwrap();
    assert_eq!(code, 200, "{body}");

    // 3. The API server calls the webhook over TLS for each new Pod.
    for (ns, labels) in [
        ("shop", json!({"redis-xds.dev/inject": "enabled"})),
        ("plain", json!({})),
    ] {
        api.create(
            "/api/v1/namespaces",
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels}}),
        );
        api.create(
            &format!("/api/v1/namespaces/{ns}/serviceaccounts"),
            &json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "checkout"}}),
        );
    }
    let (admin_port, status_port) = (free_port(), free_port());
    let (code, injected) = create_pod(
        &api,
        "shop",
        app_pod(
            "checkout-0",
            json!({"app": "checkout"}),
            json!({
                "redis-xds.dev/admin-port": admin_port.to_string(),
                "redis-xds.dev/status-port": status_port.to_string(),
            }),
        ),
    );
    assert_eq!(code, 201, "{injected}");
    assert_eq!(init_names(&injected), ["redis-xds-proxy"]);
    assert_eq!(
        injected["metadata"]["labels"]["redis-xds.dev/proxy"],
        "true"
    );
    let pod: Pod = serde_json::from_value(injected.clone()).unwrap();
    let spec = pod.spec.clone().unwrap();
    let sidecar = spec.init_containers.clone().unwrap().remove(0);
    assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
    // The same hardening review as deploy/'s Deployment.
    assert_eq!(
        common::hardening_problems(&spec, &sidecar),
        Vec::<String>::new()
    );
    let token_volume = spec
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == "redis-xds-token")
        .unwrap();
    let projection = token_volume.projected.unwrap().sources.unwrap().remove(0);
    assert_eq!(
        projection
            .service_account_token
            .unwrap()
            .audience
            .as_deref(),
        Some("redis-xds")
    );
    assert_eq!(
        spec.containers.len(),
        1,
        "the application is left as it was"
    );

    // A pod that already has the sidecar is left alone: still one.
    let mut again = injected.clone();
    again["metadata"] = json!({"name": "checkout-copy", "labels": injected["metadata"]["labels"], "annotations": injected["metadata"]["annotations"]});
    again.as_object_mut().unwrap().remove("status");
    let (code, copy) = create_pod(&api, "shop", again);
    assert_eq!(code, 201, "{copy}");
    assert_eq!(init_names(&copy), ["redis-xds-proxy"]);

    // An unlabelled namespace: unchanged, unless the pod itself asks.
    let (code, plain) = create_pod(&api, "plain", app_pod("plain-0", json!({}), json!({})));
    assert_eq!(code, 201, "{plain}");
    assert!(init_names(&plain).is_empty(), "{plain}");
    assert!(plain["metadata"]["labels"]["redis-xds.dev/proxy"].is_null());
    let (code, asked) = create_pod(
        &api,
        "plain",
        app_pod(
            "asked-0",
            json!({"redis-xds.dev/inject": "enabled"}),
            json!({}),
        ),
    );
    assert_eq!(code, 201, "{asked}");
    assert_eq!(init_names(&asked), ["redis-xds-proxy"]);
    // Or by annotation.
    let (code, annotated) = create_pod(
        &api,
        "plain",
        app_pod(
            "annotated-0",
            json!({}),
            json!({"redis-xds.dev/inject": "enabled"}),
        ),
    );
    assert_eq!(code, 201, "{annotated}");
    assert_eq!(init_names(&annotated), ["redis-xds-proxy"]);
    // Opted out in a labelled namespace.
    let (code, out) = create_pod(
        &api,
        "shop",
        app_pod(
            "batch-0",
            json!({"redis-xds.dev/inject": "disabled"}),
            json!({}),
        ),
    );
    assert_eq!(code, 201, "{out}");
    assert!(init_names(&out).is_empty(), "{out}");
    // kube-system is never touched, whatever the pod asks.
    let (code, system) = create_pod(
        &api,
        "kube-system",
        app_pod(
            "system-0",
            json!({"redis-xds.dev/inject": "enabled"}),
            json!({}),
        ),
    );
    assert_eq!(code, 201, "{system}");
    assert!(init_names(&system).is_empty(), "{system}");
    // A bad override refuses the pod, naming the annotation.
    let (code, refused) = create_pod(
        &api,
        "shop",
        app_pod(
            "checkout-bad",
            json!({"app": "checkout"}),
            json!({"redis-xds.dev/proxy-memory": "lots"}),
        ),
    );
    let message = refused["message"].as_str().unwrap_or_default();
    assert!(
        code >= 400 && message.contains("redis-xds.dev/proxy-memory"),
        "{code}: {refused}"
    );

    // 4. The injected sidecar, run by real Envoy with a projected token, reaches SYNCED.
    api.create(
        "/apis/redis-xds.dev/v1alpha1/namespaces/shop/redisclusters",
        &json!({
            "apiVersion": "redis-xds.dev/v1alpha1",
            "kind": "RedisCluster",
            "metadata": {"name": "sessions"},
            "spec": {
                "endpoints": {"static": ["127.0.0.1:1"]},
                "listener": {"port": free_port(), "clients": {"selector": {"matchLabels": {"app": "checkout"}}}},
            },
        }),
    );
    let token_path = tmp.path().join("token");
    std::fs::write(
        &token_path,
        token(&api, "shop", "checkout", Some("redis-xds")),
    )
    .unwrap();
    // What kubelet does: $(VAR) from the downward API, and the token volume's file.
    let args: Vec<String> = sidecar
        .args
        .clone()
        .unwrap()
        .iter()
        .map(|a| {
            a.replace("$(POD_NAME)", "checkout-0")
                .replace("$(POD_IP)", "127.0.0.1")
                .replace(
                    "/var/run/secrets/redis-xds/token",
                    token_path.to_str().unwrap(),
                )
        })
        .collect();
    let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    let _envoy = common::spawn_envoy(
        "envoy (injected sidecar)",
        &args,
        &tmp.path().join("envoy.log"),
    );
    // The startup probe's target: the status listener answers /ready once Envoy has its
    // configuration.
    let status = format!("127.0.0.1:{status_port}");
    wait_until("the sidecar's status listener answers /ready", || {
        http_get(&status, "/ready").filter(|body| body.contains("LIVE"))
    });
    assert!(
        http_get(&status, "/config_dump").is_none(),
        "the status listener exposes only /ready"
    );
    wait_until("serve lists the injected sidecar as SYNCED", || {
        let syncz: Value = serde_json::from_str(&http_get(&serve.debug, "/debug/syncz")?).ok()?;
        let proxy = syncz["proxies"]
            .as_array()?
            .iter()
            .find(|p| p["proxy"] == "checkout-0" && p["namespace"] == "shop")?
            .clone();
        let types = proxy["types"].as_object()?;
        (types.len() >= 2 && types.values().all(|t| t["state"] == "SYNCED")).then_some(())
    });
    let listeners = http_get(&format!("127.0.0.1:{admin_port}"), "/listeners").unwrap();
    assert!(listeners.contains("sessions"), "{listeners}");
}
