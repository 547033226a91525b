//! Steady traffic through a sidecar: a pod that SETs and GETs about seven times a second,
//! one redis-cli (one new connection to Envoy) per command, and prints every result. Its
//! log, with the container runtime's timestamps, is the record of what a client saw during
//! a fault. With redis-xds's own sidecar it talks to 127.0.0.1:6379; in an Istio mesh, to
//! the Service's name, whose outbound listener istio-proxy holds.

use std::time::Duration;

use jiff::Timestamp;

use crate::cluster::Node;

/// The traffic pod: in `shop`, labelled like the checkout app so that its sidecar gets the
/// orders listener.
pub const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: traffic
  namespace: shop
  labels: {app: checkout, role: traffic}
spec:
  securityContext:
    runAsNonRoot: true
    runAsUser: 999
    seccompProfile: {type: RuntimeDefault}
  containers:
    - name: app
      image: redis:7.2
      command: ["sh", "-c"]
      args:
        - |
          i=0
          while true; do
            i=$((i + 1))
            echo "set $i $(redis-cli -h 127.0.0.1 -p 6379 SET traffic:$((i % 50)) $i 2>&1 | tr '\n' ' ')"
            echo "get $i $(redis-cli -h 127.0.0.1 -p 6379 GET traffic:$((i % 50)) 2>&1 | tr '\n' ' ')"
            sleep 0.1
          done
      securityContext:
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        capabilities: {drop: ["ALL"]}
"#;

/// One command's result.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Timestamp,
    pub line: String,
    pub ok: bool,
}

/// The traffic pod for `namespace`, sending to `host` (its sidecar's listener).
pub fn pod(namespace: &str, host: &str) -> String {
    POD.replace("namespace: shop", &format!("namespace: {namespace}"))
        .replace("-h 127.0.0.1", &format!("-h {host}"))
}

/// Every result the traffic pod logged so far.
pub fn samples(node: &Node) -> Vec<Sample> {
    samples_in(node, "shop")
}

/// Every result the traffic pod of `namespace` logged so far.
pub fn samples_in(node: &Node, namespace: &str) -> Vec<Sample> {
    let log = node.kubectl(&[
        "-n",
        namespace,
        "logs",
        "traffic",
        "-c",
        "app",
        "--timestamps",
    ]);
    log.lines()
        .filter_map(|l| {
            let (ts, rest) = l.split_once(' ')?;
            let at: Timestamp = ts.parse().ok()?;
            let mut words = rest.split_whitespace();
            let op = words.next()?;
            let _seq = words.next()?;
            let result: Vec<&str> = words.collect();
            // SET answers OK; GET answers the number last written (or nothing, for a key
            // never written). Anything else is an error a client would see.
            let ok = match op {
                "set" => result == ["OK"],
                "get" => {
                    result.is_empty()
                        || (result.len() == 1 && result[0].bytes().all(|b| b.is_ascii_digit()))
                }
                _ => return None,
            };
            Some(Sample {
                at,
                line: rest.to_owned(),
                ok,
            })
        })
        .collect()
}

/// What the client saw between two instants.
#[derive(Debug, Default)]
pub struct Window {
    pub sent: usize,
    pub failed: usize,
    /// The longest run of consecutive failed commands, and how long it lasted.
    pub longest_run: usize,
    pub longest_outage: Duration,
    pub first_failure: Option<String>,
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} commands sent, {} failed, longest failure run {} commands ({:.1}s)",
            self.sent,
            self.failed,
            self.longest_run,
            self.longest_outage.as_secs_f64()
        )?;
        if let Some(first) = &self.first_failure {
            write!(f, ", first failure: {first:?}")?;
        }
        Ok(())
    }
}

/// Sums up the samples taken in `[from, to]`.
pub fn window(samples: &[Sample], from: Timestamp, to: Timestamp) -> Window {
    let mut w = Window::default();
    let mut run: Option<(usize, Timestamp)> = None;
    let mut last_at = from;
    for s in samples.iter().filter(|s| s.at >= from && s.at <= to) {
        w.sent += 1;
        if s.ok {
            if let Some((n, start)) = run.take() {
                w.record_run(n, s.at.duration_since(start));
            }
        } else {
            w.failed += 1;
            w.first_failure.get_or_insert_with(|| s.line.clone());
            let (n, _) = run.get_or_insert((0, last_at));
            *n += 1;
        }
        last_at = s.at;
    }
    if let Some((n, start)) = run {
        w.record_run(n, last_at.duration_since(start));
    }
    w
}

impl Window {
    fn record_run(&mut self, n: usize, span: jiff::SignedDuration) {
        if n > self.longest_run {
            self.longest_run = n;
            self.longest_outage = span.unsigned_abs();
        }
    }
}
