//! The one-node cluster of `scripts/node`, driven from a test: kubectl as cluster-admin and
//! redis-cli to pod IPs, both inside the node's network namespace.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::wait_until;

/// A running node; removed on drop.
pub struct Node {
    script: PathBuf,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn output(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// Runs `cmd`; panics with its output unless it succeeds.
fn check(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Node {
    /// A clean node, with this build's images imported: `scripts/node clean`,
    /// `scripts/node-images`, `scripts/node up`.
    pub fn start() -> Node {
        let script = root().join("scripts/node");
        check(Command::new(&script).arg("clean"));
        let node = Node { script };
        check(
            Command::new(root().join("scripts/node-images")).arg(env!("CARGO_BIN_EXE_redis-xds")),
        );
        check(Command::new(&node.script).arg("up"));
        node
    }

    /// The node's state directory (`$NODE_STATE`, by default `.tools/node`).
    pub fn state(&self) -> PathBuf {
        PathBuf::from(check(&mut self.cmd("state")).trim())
    }

    fn cmd(&self, sub: &str) -> Command {
        let mut c = Command::new(&self.script);
        c.arg(sub);
        c
    }

    /// kubectl as cluster-admin; `Err` carries its stderr.
    pub fn try_kubectl(&self, args: &[&str]) -> Result<String, String> {
        let out = output(self.cmd("kubectl").args(args));
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// kubectl as cluster-admin; panics unless it succeeds.
    pub fn kubectl(&self, args: &[&str]) -> String {
        self.try_kubectl(args)
            .unwrap_or_else(|e| panic!("kubectl {}: {e}", args.join(" ")))
    }

    /// Helm as cluster-admin; panics unless it succeeds.
    pub fn helm(&self, args: &[&str]) -> String {
        let out = output(self.cmd("helm").args(args));
        assert!(
            out.status.success(),
            "helm {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl get ... -o json`.
    pub fn get_json(&self, args: &[&str]) -> Value {
        let mut a = vec!["get"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(&self.kubectl(&a)).expect("kubectl prints JSON")
    }

    /// `kubectl apply -f -` of `yaml`.
    pub fn apply(&self, yaml: &str) {
        let mut child = self
            .cmd("kubectl")
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(yaml.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "kubectl apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A host program run inside the node's network namespace.
    pub fn exec(&self, args: &[&str]) -> Result<String, String> {
        let out = output(self.cmd("exec").args(args));
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// `redis-cli -h ip` with `args`, from the node itself (not through any sidecar).
    pub fn redis(&self, ip: &str, args: &[&str]) -> String {
        let mut a = vec!["redis-cli", "-h", ip];
        a.extend_from_slice(args);
        self.exec(&a)
            .unwrap_or_else(|e| panic!("redis-cli -h {ip} {args:?}: {e}"))
    }

    /// Stops one component (`kube-apiserver`, `kubelet`, ...).
    pub fn stop(&self, component: &str) {
        check(self.cmd("stop").arg(component));
    }

    /// Starts one component again.
    pub fn start_component(&self, component: &str) {
        check(self.cmd("start").arg(component));
    }

    /// Waits until the API server answers again.
    pub fn wait_api(&self) {
        wait_until("the API server", Duration::from_secs(90), || {
            self.try_kubectl(&["get", "--raw", "/readyz"]).ok()
        });
    }

    /// `kubectl rollout status` of `what` (`deployment/NAME`) in `namespace`, for at most
    /// three minutes.
    pub fn rollout_status(&self, namespace: &str, what: &str) {
        self.kubectl(&["-n", namespace, "rollout", "status", what, "--timeout=180s"]);
    }

    /// `kubectl wait` with a timeout in seconds.
    pub fn wait(&self, args: &[&str], secs: u64) {
        let timeout = format!("--timeout={secs}s");
        let mut a = vec!["wait"];
        a.extend_from_slice(args);
        a.push(&timeout);
        if let Err(e) = self.try_kubectl(&a) {
            panic!("kubectl {}: {e}", a.join(" "));
        }
    }

    /// The pods of `namespace` matching `selector`, as (name, IP, Ready).
    pub fn pods(&self, namespace: &str, selector: &str) -> Vec<(String, String, bool)> {
        let list = self.get_json(&["pods", "-n", namespace, "-l", selector]);
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .map(|p| {
                let ready = p["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True");
                (
                    p["metadata"]["name"].as_str().unwrap().to_owned(),
                    p["status"]["podIP"].as_str().unwrap_or("").to_owned(),
                    ready,
                )
            })
            .collect()
    }

    /// Prints what a person would look at first when a scenario failed.
    pub fn dump_state(&self) {
        for args in [
            &["get", "nodes", "-o", "wide"][..],
            &["get", "pods", "-A", "-o", "wide"],
            &["get", "redisclusters", "-A"],
            &["get", "events", "-A", "--sort-by=.lastTimestamp"],
            &["-n", "redis-xds", "logs", "deploy/redis-xds", "--tail=40"],
            &["-n", "istio-system", "logs", "deploy/istiod", "--tail=40"],
            &[
                "-n",
                "shop-mesh",
                "logs",
                "deploy/checkout",
                "-c",
                "istio-proxy",
                "--tail=40",
            ],
        ] {
            match self.try_kubectl(args) {
                Ok(out) => println!("$ kubectl {}\n{out}", args.join(" ")),
                Err(e) => println!("$ kubectl {}: {e}", args.join(" ")),
            }
        }
        // A pod that stays Pending: why, in the scheduler's words.
        if let Ok(out) = self.try_kubectl(&[
            "describe",
            "pods",
            "-A",
            "--field-selector",
            "status.phase=Pending",
        ]) {
            println!("$ kubectl describe pods -A --field-selector status.phase=Pending\n{out}");
        }
        // The last words of the node's own processes.
        let logs = self.state().join("logs");
        for component in ["kube-scheduler", "kube-controller-manager", "kubelet"] {
            let path = logs.join(format!("{component}.log"));
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    let lines: Vec<&str> = text.lines().collect();
                    let tail = &lines[lines.len().saturating_sub(25)..];
                    println!(
                        "--- last lines of {} ---\n{}",
                        path.display(),
                        tail.join("\n")
                    );
                }
                Err(e) => println!("--- {}: {e}", path.display()),
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::env::var_os("REDIS_XDS_NODE_KEEP").is_some() {
            println!("REDIS_XDS_NODE_KEEP: the node stays up; scripts/node clean removes it");
            return;
        }
        let out = output(&mut self.cmd("clean"));
        if !out.status.success() {
            eprintln!(
                "scripts/node clean failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
