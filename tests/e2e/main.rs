//! End to end: real Envoy 1.40 configured by `redis-xds serve` in front of real Redis
//! servers, driven by a plain single-node Redis client on the sidecar's listener. Every
//! scenario asserts on what the Redis servers saw.
//!
//! Runs under its own main (no libtest): the Redis Clusters are started once, shared by the
//! scenarios, and always torn down, whether scenarios fail or not. Pass a substring to run
//! only the matching scenarios.

#[path = "../common/mod.rs"]
mod common;
mod dashboards;
mod external_auth;
mod kubernetes;
mod own_rules;
mod redis;
mod resp;
mod scenarios;
mod tls;
mod zones;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use common::{Proc, Serve, envoy_dynamic, start_envoy, start_serve, wait_until};
use redis::{Cluster, Server};
use resp::Conn;

/// The shared Redis servers.
pub struct Fixture {
    /// 3 primaries, 3 replicas.
    pub main: Cluster,
    /// 3 primaries: route and mirror target.
    pub second: Cluster,
    /// 3 primaries with a password.
    pub secured: Cluster,
    pub _dir: tempfile::TempDir,
}

/// A sidecar: `redis-xds serve` on a manifests directory and Envoy from `redis-xds
/// bootstrap`, both killed on drop.
pub struct Sidecar {
    pub serve: Serve,
    pub envoy: Proc,
    pub admin: String,
    pub manifests: PathBuf,
    pub tmp: tempfile::TempDir,
}

impl Sidecar {
    pub fn start(files: &[(&str, String)]) -> Sidecar {
        let tmp = tempfile::tempdir().unwrap();
        let manifests = tmp.path().join("manifests");
        std::fs::create_dir(&manifests).unwrap();
        for (name, content) in files {
            std::fs::write(manifests.join(name), content).unwrap();
        }
        let serve = start_serve(&manifests, &["--debounce-quiet", "20ms"]);
        let xds = serve.xds.to_string();
        let (envoy, admin) = start_envoy(
            tmp.path(),
            &[
                "--xds-address",
                &xds,
                "--node-id",
                "e2e-app",
                "--namespace",
                "e2e",
            ],
        );
        Sidecar {
            serve,
            envoy,
            admin,
            manifests,
            tmp,
        }
    }

    pub fn write(&self, name: &str, content: &str) {
        // Replace atomically, as a deploy tool would.
        let tmp = self.manifests.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(tmp, self.manifests.join(name)).unwrap();
    }

    pub fn listeners(&self) -> Vec<String> {
        envoy_dynamic(&self.admin)
            .map(|(_, l)| l)
            .unwrap_or_default()
    }

    /// Waits until Envoy accepts connections on `port`.
    pub fn wait_listening(&self, port: u16) -> Conn {
        wait_until(&format!("the sidecar listens on {port}"), || {
            Conn::connect(&format!("127.0.0.1:{port}")).ok()
        })
    }

    /// Waits until Envoy listens on `port` and a command through it reaches Redis.
    pub fn wait_serving(&self, port: u16, probe: &[&str]) -> Conn {
        serving_on(port, probe)
    }
}

/// A connection to a sidecar on `port` once `probe` through it is answered without an
/// error: Envoy listens and knows the servers (in mode Cluster, from CLUSTER SLOTS, a
/// moment after it listens).
pub fn serving_on(port: u16, probe: &[&str]) -> Conn {
    wait_until(&format!("the sidecar serves Redis on {port}"), || {
        let mut c = Conn::connect(&format!("127.0.0.1:{port}")).ok()?;
        let r = c.cmd(probe).ok()?;
        (!r.is_error()).then_some(c)
    })
}

/// A RedisCluster manifest in namespace e2e.
pub fn rc(name: &str, spec: &str) -> String {
    common::redis_cluster("e2e", name, spec)
}

fn start_fixture(dir: &Path) -> Fixture {
    let (main, (second, secured)) = std::thread::scope(|s| {
        let main = s.spawn(|| Cluster::start(&dir.join("main"), 3, 1, None));
        let second = s.spawn(|| Cluster::start(&dir.join("second"), 3, 0, None));
        let secured =
            s.spawn(|| Cluster::start(&dir.join("secured"), 3, 0, Some("e2e-first-password")));
        (
            main.join().unwrap(),
            (second.join().unwrap(), secured.join().unwrap()),
        )
    });
    Fixture {
        main,
        second,
        secured,
        _dir: tempfile::tempdir_in(dir).unwrap(),
    }
}

pub fn standalone(dir: &Path) -> Server {
    redis::start_server(dir, redis::cluster_port(), false, None)
}

fn main() {
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let selected: Vec<_> = scenarios::ALL
        .iter()
        .filter(|(name, _)| filter.as_deref().is_none_or(|f| name.contains(f)))
        .collect();
    println!("\nrunning {} e2e scenarios", selected.len());
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let fixture = start_fixture(dir.path());
    println!(
        "redis fixtures ready in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let (mut passed, mut failed) = (0, 0);
    for (name, scenario) in selected {
        let t = std::time::Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| scenario(&fixture)));
        match result {
            Ok(()) => {
                passed += 1;
                println!("test {name} ... ok ({:.1}s)", t.elapsed().as_secs_f64());
            }
            Err(_) => {
                failed += 1;
                println!("test {name} ... FAILED");
            }
        }
    }
    drop(fixture);
    println!("\ne2e: {passed} passed, {failed} failed");
    std::process::exit(if failed == 0 { 0 } else { 1 });
}
