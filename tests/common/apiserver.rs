//! A real Kubernetes API server for tests: etcd and kube-apiserver (built from their Go
//! modules by `scripts/kube-tools`, found through `ETCD_BIN` and `KUBE_APISERVER_BIN`) on
//! loopback, with TLS, RBAC, a token file with an admin token and a ServiceAccount signing
//! key, as a cluster has them. There is no kubelet or controller: tests create objects and
//! patch their status themselves. Both processes are killed when the value is dropped.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rcgen::KeyPair;

use super::{Proc, free_port};

/// The admin's bearer token (group system:masters).
pub const ADMIN_TOKEN: &str = "redis-xds-test-admin-token";

/// A running API server and its etcd.
pub struct ApiServer {
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// A kubeconfig for the admin.
    pub kubeconfig: PathBuf,
    /// The CA that signed the serving certificate (PEM).
    pub ca_pem: String,
    /// The ServiceAccount token signing key (PKCS#8 DER, ECDSA P-256), for tokens the
    /// TokenRequest API will not make (expired ones).
    pub sa_key_der: Vec<u8>,
    /// etcd's client URL, `http://127.0.0.1:PORT`.
    pub etcd_url: String,
    dir: tempfile::TempDir,
    etcd: Proc,
    apiserver: Proc,
    apiserver_args: Vec<std::ffi::OsString>,
}

fn bin(var: &str) -> PathBuf {
    PathBuf::from(std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the tests through scripts/test, which builds etcd and kube-apiserver")
    }))
}

fn spawn_apiserver(dir: &Path, args: &[std::ffi::OsString]) -> Proc {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("apiserver.log"))
        .unwrap();
    Proc {
        child: std::process::Command::new(bin("KUBE_APISERVER_BIN"))
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("kube-apiserver starts"),
        name: "kube-apiserver",
        log: Some(super::Log::File(dir.join("apiserver.log"))),
    }
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

impl ApiServer {
    /// Starts etcd and kube-apiserver and waits until `/readyz` answers ok (about 6 s).
    pub fn start() -> ApiServer {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();

        let ca = super::pki::Ca::new("redis-xds test cluster CA");
        let serving = ca.issue(&[
            super::pki::San::Dns("localhost"),
            super::pki::San::Dns("kubernetes.default.svc"),
            super::pki::San::Ip("127.0.0.1"),
        ]);
        let ca_pem = ca.pem();
        let ca_file = write(d, "ca.pem", &ca_pem);
        let cert_file = write(d, "apiserver.pem", &serving.cert);
        let key_file = write(d, "apiserver-key.pem", &serving.key);
        // ES256 ServiceAccount tokens: signed with the private key, verified with the
        // public one.
        let sa = KeyPair::generate().unwrap();
        let sa_key = write(d, "sa-key.pem", &sa.serialize_pem());
        let sa_key_der = sa.serialize_der();
        let sa_pub = write(d, "sa-pub.pem", &sa.public_key_pem());
        let tokens = write(
            d,
            "tokens.csv",
            &format!("{ADMIN_TOKEN},admin,admin-uid,\"system:masters\"\n"),
        );

        let (client_port, peer_port) = (free_port(), free_port());
        let etcd_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let etcd = Proc {
            child: std::process::Command::new(bin("ETCD_BIN"))
                .arg("--data-dir")
                .arg(d.join("etcd"))
                .args(["--listen-client-urls", &etcd_url])
                .args(["--advertise-client-urls", &etcd_url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &format!("default={peer_url}")])
                .args(["--unsafe-no-fsync", "--log-level", "error"])
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(d.join("etcd.log")).unwrap())
                .spawn()
                .expect("etcd starts"),
            name: "etcd",
            log: Some(super::Log::File(d.join("etcd.log"))),
        };

        let port = free_port();
        let mut args: Vec<std::ffi::OsString> = Vec::new();
        let mut arg = |a: &dyn AsRef<std::ffi::OsStr>| args.push(a.as_ref().to_owned());
        for (flag, value) in [
            ("--etcd-servers", etcd_url.as_str().as_ref()),
            ("--bind-address", "127.0.0.1".as_ref()),
            ("--advertise-address", "127.0.0.1".as_ref()),
            ("--secure-port", port.to_string().as_ref()),
            ("--tls-cert-file", cert_file.as_os_str()),
            ("--tls-private-key-file", key_file.as_os_str()),
            ("--client-ca-file", ca_file.as_os_str()),
            ("--token-auth-file", tokens.as_os_str()),
            ("--authorization-mode", "RBAC".as_ref()),
            (
                "--service-account-issuer",
                "https://kubernetes.default.svc.cluster.local".as_ref(),
            ),
            ("--service-account-key-file", sa_pub.as_os_str()),
            ("--service-account-signing-key-file", sa_key.as_os_str()),
            ("--service-cluster-ip-range", "10.96.0.0/16".as_ref()),
            ("--endpoint-reconciler-type", "none".as_ref()),
            // No controller creates default ServiceAccounts.
            ("--disable-admission-plugins", "ServiceAccount".as_ref()),
            ("--v", "0".as_ref()),
        ] {
            arg(&flag);
            arg(&value);
        }
        let apiserver = spawn_apiserver(d, &args);
        let url = format!("https://127.0.0.1:{port}");
        let kubeconfig = write(
            d,
            "kubeconfig",
            &serde_json::json!({
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "test", "cluster": {
                    "server": url,
                    "certificate-authority": ca_file,
                }}],
                "users": [{"name": "admin", "user": {"token": ADMIN_TOKEN}}],
                "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin"}}],
                "current-context": "test",
            })
            .to_string(),
        );
        let mut server = ApiServer {
            url,
            kubeconfig,
            ca_pem,
            sa_key_der,
            etcd_url: etcd_url.clone(),
            dir,
            etcd,
            apiserver,
            apiserver_args: args,
        };
        server.wait_ready();
        server
    }

    /// Stops kube-apiserver (etcd keeps running); [`ApiServer::start_again`] brings it back.
    pub fn stop_apiserver(&mut self) {
        let _ = self.apiserver.child.kill();
        let _ = self.apiserver.child.wait();
    }

    /// Compacts etcd's history up to its current revision (as kube-apiserver does every
    /// 5 minutes), through etcd's JSON gateway: a watch from an older resource version then
    /// gets 410 Gone. Returns the revision.
    pub fn compact_etcd(&self) -> u64 {
        let post = |path: &str, body: &str| {
            let out = std::process::Command::new("curl")
                .args([
                    "-sS",
                    "--max-time",
                    "10",
                    "-X",
                    "POST",
                    "--data-binary",
                    body,
                ])
                .arg(format!("{}{path}", self.etcd_url))
                .output()
                .expect("curl runs");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            serde_json::from_str::<serde_json::Value>(&text)
                .unwrap_or_else(|e| panic!("etcd {path}: {e}: {text}"))
        };
        // The key "/" (base64 "Lw=="): any read returns the store's current revision.
        let range = post("/v3/kv/range", r#"{"key": "Lw=="}"#);
        let revision: u64 = range["header"]["revision"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .expect("etcd reports its revision");
        let answer = post(
            "/v3/kv/compaction",
            &serde_json::json!({"revision": revision.to_string(), "physical": true}).to_string(),
        );
        assert!(
            answer.get("error").is_none(),
            "compaction refused: {answer}"
        );
        revision
    }

    /// Starts kube-apiserver again, on the same port and etcd, and waits until it is ready.
    pub fn start_again(&mut self) {
        self.apiserver = spawn_apiserver(self.dir.path(), &self.apiserver_args);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.apiserver.child.try_wait().unwrap() {
                panic!(
                    "kube-apiserver exited ({status}):\n{}",
                    self.log("apiserver.log")
                );
            }
            if self.get("/readyz").is_some_and(|(code, _)| code == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver not ready after 60 s:\n{}",
                self.log("apiserver.log")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The tail of one of the servers' logs.
    pub fn log(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// A request with curl as the admin: (HTTP status, body), or `None` when the server
    /// does not answer.
    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> Option<(u16, String)> {
        self.request_as(ADMIN_TOKEN, method, path, body)
    }

    /// A request with curl, with `token`: (HTTP status, body).
    pub fn request_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Option<(u16, String)> {
        let ca = self.dir.path().join("ca.pem");
        let mut cmd = std::process::Command::new("curl");
        cmd.args([
            "-sS",
            "--max-time",
            "10",
            "-X",
            method,
            "-w",
            "\n%{http_code}",
        ])
        .arg("--cacert")
        .arg(&ca)
        .args(["-H", &format!("Authorization: Bearer {token}")]);
        if let Some(b) = body {
            let content_type = if method == "PATCH" {
                "application/merge-patch+json"
            } else {
                "application/json"
            };
            cmd.args([
                "-H",
                &format!("Content-Type: {content_type}"),
                "--data-binary",
                b,
            ]);
        }
        let out = cmd.arg(format!("{}{path}", self.url)).output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n')?;
        Some((code.trim().parse().ok()?, body.to_string()))
    }

    /// TokenReview POSTs the API server has answered, by HTTP code (from its own
    /// `apiserver_request_total`).
    pub fn token_reviews(&self) -> std::collections::BTreeMap<String, f64> {
        let (_, metrics) = self.get("/metrics").expect("the API server's metrics");
        let mut out = std::collections::BTreeMap::new();
        for line in metrics.lines() {
            if !line.starts_with("apiserver_request_total{")
                || !line.contains("resource=\"tokenreviews\"")
                || !line.contains("verb=\"POST\"")
            {
                continue;
            }
            let code = line
                .split("code=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("?")
                .to_owned();
            let value: f64 = line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            *out.entry(code).or_default() += value;
        }
        out
    }

    /// GET as the admin.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        self.request("GET", path, None)
    }

    /// Creates an object (JSON) at `path`, panicking unless the API server accepts it.
    pub fn create(&self, path: &str, object: &serde_json::Value) -> serde_json::Value {
        let (code, body) = self
            .request("POST", path, Some(&object.to_string()))
            .expect("the API server answers");
        assert!(code == 200 || code == 201, "POST {path} -> {code}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Installs the RedisCluster CRD from `crds/` and waits until it is Established.
    pub fn install_crd(&self) {
        let yaml = std::fs::read_to_string(super::root().join("crds/redisclusters.yaml")).unwrap();
        let crd: serde_json::Value = serde_yaml_ng::from_str(&yaml).unwrap();
        self.create(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            &crd,
        );
        self.wait_crd_established();
    }

    /// Waits until the RedisCluster CRD is Established.
    pub fn wait_crd_established(&self) {
        super::wait_until("the RedisCluster CRD is Established", || {
            let (_, body) = self.get(
                "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/redisclusters.redis-xds.dev",
            )?;
            let crd: serde_json::Value = serde_json::from_str(&body).ok()?;
            crd["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Established" && c["status"] == "True")
                .then_some(())
        });
    }

    /// Creates a namespace.
    /// `kubectl apply ARGS` as the admin, from the repository's root: its output, whatever
    /// the outcome.
    pub fn kubectl_apply(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("apply")
            .args(args)
            .current_dir(super::root())
            .output()
            .expect("kubectl runs")
    }

    pub fn namespace(&self, name: &str) {
        self.create(
            "/api/v1/namespaces",
            &serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
        );
    }
}

/// `redis-xds serve` in Kubernetes mode against `api` (its admin kubeconfig), with OS-chosen
/// xDS and debug ports; `extra` are more flags.
pub fn start_serve_kube(api: &ApiServer, extra: &[&str], level: &str) -> super::Serve {
    start_serve_as(&api.kubeconfig, "default", extra, level)
}

/// `redis-xds serve` in Kubernetes mode with the credentials of `kubeconfig`, its Leases
/// in `lease_namespace`, on OS-chosen xDS and debug ports.
pub fn start_serve_as(
    kubeconfig: &Path,
    lease_namespace: &str,
    extra: &[&str],
    level: &str,
) -> super::Serve {
    let mut cmd = super::redis_xds();
    cmd.args([
        "serve",
        "--xds-addr",
        "127.0.0.1:0",
        "--debug-addr",
        "127.0.0.1:0",
        "--lease-namespace",
        lease_namespace,
    ])
    .args(extra)
    .env("KUBECONFIG", kubeconfig)
    .env_remove("KUBERNETES_SERVICE_HOST");
    super::start_serve_command(cmd, level)
}
