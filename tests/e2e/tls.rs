//! Upstream TLS: Redis servers that speak only TLS and require client certificates
//! (`redis-server --port 0 --tls-port ... --tls-auth-clients yes`), reached through Envoy.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::{Proc, free_port, wait_until};
use crate::{Fixture, Sidecar, rc};

/// PEM files of a test CA, a server certificate for `localhost` and a client certificate.
struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        use crate::common::pki::{Ca, San};
        let ca = Ca::new("redis-xds e2e CA");
        // localhost, and 127.0.0.1 as an IP SAN: what a serverName that is an IP address
        // would have to match, and does not (sharded_tls).
        let server = ca.issue(&[San::Dns("localhost"), San::Ip("127.0.0.1")]);
        let client = ca.issue(&[San::Dns("redis-client")]);
        let pki = Pki {
            ca: ca.pem(),
            server_cert: server.cert,
            server_key: server.key,
            client_cert: client.cert,
            client_key: client.key,
            dir: dir.to_owned(),
        };
        for (name, pem) in [
            ("ca.crt", &pki.ca),
            ("server.crt", &pki.server_cert),
            ("server.key", &pki.server_key),
            ("client.crt", &pki.client_cert),
            ("client.key", &pki.client_key),
        ] {
            std::fs::write(dir.join(name), pem).unwrap();
        }
        pki
    }

    fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// `redis-cli` over TLS with the client certificate.
    fn cli(&self, port: u16, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .args(["--tls", "--cacert", &self.file("ca.crt")])
            .args(["--cert", &self.file("client.crt")])
            .args(["--key", &self.file("client.key")])
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

/// A standalone Redis server that accepts TLS only, and only from holders of a client
/// certificate the test CA signed.
fn tls_server(pki: &Pki, dir: &Path) -> (u16, Proc) {
    tls_server_with(pki, dir, free_port(), &[])
}

/// A TLS-only Redis Cluster node: the cluster bus and replication over TLS too.
fn tls_cluster_node(pki: &Pki, dir: &Path) -> (u16, Proc) {
    let port = crate::redis::cluster_port();
    tls_server_with(
        pki,
        dir,
        port,
        &[
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--tls-cluster",
            "yes",
            "--tls-replication",
            "yes",
        ],
    )
}

fn tls_server_with(pki: &Pki, dir: &Path, port: u16, extra: &[&str]) -> (u16, Proc) {
    let data = dir.join(port.to_string());
    std::fs::create_dir_all(&data).unwrap();
    let child = Command::new("redis-server")
        .args(extra)
        .args(["--port", "0", "--tls-port", &port.to_string()])
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(["--tls-cert-file", &pki.file("server.crt")])
        .args(["--tls-key-file", &pki.file("server.key")])
        .args(["--tls-ca-cert-file", &pki.file("ca.crt")])
        .args(["--tls-auth-clients", "yes"])
        .arg("--dir")
        .arg(&data)
        .stdout(std::fs::File::create(data.join("redis.log")).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server starts");
    let proc = Proc {
        child,
        name: "redis-server (TLS)",
        log: Some(crate::common::Log::File(data.join("redis.log"))),
    };
    wait_until(&format!("TLS redis on {port} answers PING"), || {
        (pki.cli(port, &["PING"])? == "PONG").then_some(())
    });
    (port, proc)
}

/// The Secrets of the CA and of the client certificate, as manifests.
fn secrets(pki: &Pki) -> String {
    secret("redis-ca", &[("ca.crt", &pki.ca)])
        + &secret(
            "redis-client",
            &[("tls.crt", &pki.client_cert), ("tls.key", &pki.client_key)],
        )
}

/// A Redis Cluster that speaks only TLS: Envoy reaches the seeds and every node CLUSTER
/// SLOTS reveals over TLS, with the client certificate, and keys land on every primary.
pub fn cluster_tls(_: &Fixture) {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let nodes: Vec<(u16, Proc)> = (0..3).map(|_| tls_cluster_node(&pki, tmp.path())).collect();
    let addrs: Vec<String> = nodes
        .iter()
        .map(|(p, _)| format!("127.0.0.1:{p}"))
        .collect();
    let out = Command::new("redis-cli")
        .args(["--tls", "--cacert", &pki.file("ca.crt")])
        .args(["--cert", &pki.file("client.crt")])
        .args(["--key", &pki.file("client.key")])
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli runs");
    assert!(
        out.status.success(),
        "cluster create failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    for (p, _) in &nodes {
        wait_until(&format!("TLS cluster node {p} is ok"), || {
            pki.cli(*p, &["CLUSTER", "INFO"])?
                .contains("cluster_state:ok")
                .then_some(())
        });
    }
    let port = free_port();
    // Seeds: the first node only; Envoy learns the others from CLUSTER SLOTS.
    let spec = format!(
        "endpoints: {{static: [\"{}\"]}}\ntls:\n  caSecretRef: {{name: redis-ca}}\n  serverName: localhost\n  clientCertificateSecretRef: {{name: redis-client}}\ntopology: {{refreshInterval: 1s}}\nlistener: {{port: {port}}}",
        addrs[0]
    );
    let sc = Sidecar::start(&[
        ("secrets.yaml", secrets(&pki)),
        ("cluster.yaml", rc("tls-cluster", &spec)),
    ]);
    let mut c = sc.wait_serving(port, &["SET", "probe", "1"]);
    for i in 0..60 {
        c.ok(&["SET", &format!("ctls:{i}"), "v"]);
        assert_eq!(c.ok(&["GET", &format!("ctls:{i}")]), "v");
    }
    let sizes: Vec<u64> = nodes
        .iter()
        .map(|(p, _)| pki.cli(*p, &["DBSIZE"]).unwrap().parse().unwrap())
        .collect();
    println!("  keys per TLS cluster primary: {sizes:?}");
    assert!(
        sizes.iter().all(|n| *n > 0),
        "every primary holds keys: {sizes:?}"
    );
    assert_eq!(sizes.iter().sum::<u64>(), 61);
}

fn secret(name: &str, entries: &[(&str, &str)]) -> String {
    let mut out = format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: e2e}}\nstringData:\n"
    );
    for (k, v) in entries {
        out.push_str(&format!("  {k}: |\n"));
        for line in v.lines() {
            out.push_str(&format!("    {line}\n"));
        }
    }
    out
}

/// Sharded mode over TLS with a client certificate: keys reach both servers (and their
/// health checks pass, or the ring would skip them); a server name the certificate does not
/// carry makes Envoy refuse the servers.
pub fn sharded_tls(_: &Fixture) {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let (p0, _s0) = tls_server(&pki, tmp.path());
    let (p1, _s1) = tls_server(&pki, tmp.path());
    let (port, wrong_port) = (free_port(), free_port());
    let spec = |name: &str, server_name: &str, port: u16| {
        rc(
            name,
            &format!(
                "mode: Sharded\nendpoints: {{static: [\"s0=127.0.0.1:{p0}\", \"s1=127.0.0.1:{p1}\"]}}\ntls:\n  caSecretRef: {{name: redis-ca}}\n  serverName: {server_name}\n  clientCertificateSecretRef: {{name: redis-client}}\nsharding: {{healthCheck: {{interval: 1s}}}}\nlistener: {{port: {port}}}"
            ),
        )
    };
    // The certificates name localhost; the second object expects another name.
    let sc = Sidecar::start(&[
        ("secrets.yaml", secrets(&pki)),
        (
            "tls.yaml",
            spec("tls", "localhost", port) + &spec("tls-wrong-name", "redis.example", wrong_port),
        ),
    ]);
    let mut c = sc.wait_serving(port, &["SET", "probe", "1"]);
    for i in 0..40 {
        c.ok(&["SET", &format!("tls:{i}"), "v"]);
        assert_eq!(c.ok(&["GET", &format!("tls:{i}")]), "v");
    }
    let sizes: Vec<u64> = [p0, p1]
        .iter()
        .map(|p| pki.cli(*p, &["DBSIZE"]).unwrap().parse().unwrap())
        .collect();
    println!("  keys per TLS server: {sizes:?}");
    assert!(
        sizes.iter().all(|n| *n > 0),
        "both servers hold keys: {sizes:?}"
    );
    assert_eq!(sizes.iter().sum::<u64>(), 41);

    // Envoy refuses servers whose certificate lacks the expected name: its handshakes fail
    // SAN verification, and commands on that listener fail.
    let stat = "cluster.redis/e2e/tls-wrong-name.ssl.fail_verify_san";
    wait_until("Envoy counts certificates refused for their name", || {
        let stats = crate::common::http_get(&sc.admin, "/stats")?;
        let line = stats.lines().find(|l| l.starts_with(stat))?;
        (line.rsplit(' ').next()?.parse::<u64>().ok()? > 0).then_some(())
    });
    let mut wrong = sc.wait_listening(wrong_port);
    let reply = wrong.cmd(&["GET", "tls:0"]).unwrap();
    assert!(reply.is_error(), "{reply:?}");
    drop(sc);

    // serverName an IP address: redis-xds refuses it. Envoy sends no SNI for it and
    // matches it against the certificate's DNS names, so against a certificate that holds
    // 127.0.0.1 as an IP SAN it never verifies; the same bootstrap with localhost does.
    let body = |server_name: &str| {
        format!(
            "mode: Sharded\nendpoints: {{static: [\"s0=127.0.0.1:{p0}\", \"s1=127.0.0.1:{p1}\"]}}\ntls:\n  caSecretRef: {{name: redis-ca}}\n  serverName: {server_name}\n  clientCertificateSecretRef: {{name: redis-client}}\nsharding: {{healthCheck: {{interval: 1s}}}}\nlistener: {{port: {port}}}"
        )
    };
    let dir = tmp.path().join("sni");
    std::fs::create_dir_all(&dir).unwrap();
    let problems = crate::own_rules::render_with(&dir, &body("127.0.0.1"), &secrets(&pki))
        .expect_err("redis-xds refuses an IP address as serverName");
    assert!(problems.contains("spec.tls.serverName"), "{problems}");
    let good = crate::own_rules::render_with(&dir, &body("localhost"), &secrets(&pki)).unwrap();
    let e = crate::own_rules::envoy(&dir, &good, port);
    wait_until("localhost verifies", || {
        let mut c = crate::resp::Conn::connect(&format!("127.0.0.1:{port}")).ok()?;
        (c.cmd(&["SET", "sni", "1"]).ok()?.text() == "OK").then_some(())
    });
    drop(e);
    let mut by_ip = good.clone();
    let tls = &mut by_ip["staticResources"]["clusters"][0]["transportSocket"]["typedConfig"];
    tls["sni"] = serde_json::json!("127.0.0.1");
    tls["commonTlsContext"]["validationContext"]["matchTypedSubjectAltNames"][0]["matcher"]["exact"] =
        serde_json::json!("127.0.0.1");
    let admin_port = free_port();
    by_ip["admin"]["address"]["socketAddress"]["portValue"] = serde_json::json!(admin_port);
    let e = crate::own_rules::envoy(&dir, &by_ip, port);
    let admin = format!("127.0.0.1:{admin_port}");
    let stat = "cluster.redis/e2e/main.ssl.fail_verify_san";
    wait_until("Envoy refuses the certificate for its name", || {
        let stats = crate::common::http_get(&admin, "/stats")?;
        let line = stats.lines().find(|l| l.starts_with(stat))?;
        (line.rsplit(' ').next()?.parse::<u64>().ok()? > 0).then_some(())
    });
    let mut c = crate::resp::Conn::connect(&format!("127.0.0.1:{port}")).unwrap();
    let r = c.cmd(&["SET", "sni", "1"]).unwrap();
    assert!(
        r.is_error(),
        "a serverName that is an IP address verified: {r:?}"
    );
    drop(e);
}
