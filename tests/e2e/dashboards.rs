//! The dashboards (dashboards/*.json) against real Prometheus (Debian's package) scraping
//! real Envoy and `redis-xds serve` while commands flow through the shared Redis Clusters:
//! every panel's query returns series, each with the labels its legend names.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

use crate::common::{Proc, free_port, http_get, wait_until_for};
use crate::resp::Conn;
use crate::{Fixture, Sidecar, rc};

/// Prometheus on loopback scraping `targets` (job name, address, metrics path) every
/// second, killed on drop.
struct Prometheus {
    _proc: Proc,
    addr: String,
}

impl Prometheus {
    fn start(dir: &Path, targets: &[(&str, &str, &str)]) -> Prometheus {
        let jobs: String = targets
            .iter()
            .map(|(job, addr, path)| {
                format!(
                    "  - job_name: {job}\n    metrics_path: {path}\n    static_configs: [{{targets: [\"{addr}\"]}}]\n"
                )
            })
            .collect();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n{jobs}"
            ),
        )
        .unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let log = dir.join("prometheus.log");
        let child = std::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("prometheus runs (scripts/deps installs it)");
        let proc = Proc {
            child,
            name: "prometheus",
            log: Some(crate::common::Log::File(log)),
        };
        let p = Prometheus { _proc: proc, addr };
        wait_until_for(
            "prometheus is ready",
            std::time::Duration::from_secs(60),
            || http_get(&p.addr, "/-/ready").filter(|b| b.contains("Ready")),
        );
        p
    }

    /// The `data.result` of an instant query.
    fn result(&self, expr: &str) -> Result<Value, String> {
        let q = percent_encoding::utf8_percent_encode(expr, percent_encoding::NON_ALPHANUMERIC);
        let body = http_get(&self.addr, &format!("/api/v1/query?query={q}"))
            .ok_or_else(|| "no answer".to_string())?;
        let mut v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if v["status"] != "success" {
            return Err(body);
        }
        Ok(v["data"]["result"].take())
    }

    /// The value of an instant query that returns one series.
    fn query_value(&self, expr: &str) -> Result<f64, String> {
        let result = self.result(expr)?;
        result[0]["value"][1]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no single value: {result}"))
    }

    /// The series an instant query returns, as their label sets.
    fn query(&self, expr: &str) -> Result<Vec<serde_json::Map<String, Value>>, String> {
        Ok(self
            .result(expr)?
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["metric"].as_object().cloned())
            .collect())
    }
}

/// Every panel query of a dashboard: (panel title, expression, labels its legend names).
fn panel_queries(dashboard: &Value) -> Vec<(String, String, Vec<String>)> {
    let mut out = Vec::new();
    let mut panels: Vec<&Value> = dashboard["panels"].as_array().unwrap().iter().collect();
    while let Some(p) = panels.pop() {
        // Rows hold their panels when collapsed.
        panels.extend(p["panels"].as_array().into_iter().flatten());
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or_default().to_string();
            let legend = t["legendFormat"].as_str().unwrap_or_default();
            let labels = legend
                .split("{{")
                .skip(1)
                .filter_map(|s| s.split_once("}}").map(|(l, _)| l.trim().to_string()))
                .collect();
            out.push((p["title"].as_str().unwrap_or("?").to_string(), expr, labels));
        }
    }
    out
}

/// Grafana's variables as the test sets them: every RedisCluster, a rate window of 30
/// scrapes, a step of one.
fn instantiate(expr: &str) -> String {
    expr.replace("$__rate_interval", "30s")
        .replace("$__interval", "1s")
        .replace("$rediscluster", ".+")
        .replace("$instance", ".+")
}

pub fn dashboards(f: &Fixture) {
    f.main.flush();
    f.second.flush();
    let port = free_port();
    let down = free_port();
    // Replica reads, a prefix route with a mirror, a write mirror, fault injection on
    // INCR, client AUTH; and a RedisCluster whose only seed is down, for `no upstream host`.
    let main = rc(
        "main",
        &format!(
            "endpoints: {{static: [{}]}}\ntopology: {{refreshInterval: 1s}}\nlistener:\n  port: {port}\n  readPolicy: Replica\n  downstreamAuth: {{secretRef: {{name: clients}}}}\n  routes:\n    - {{prefix: \"other:\", cluster: second}}\n    - {{prefix: \"gone:\", cluster: gone}}\n  catchAll: {{mirror: [{{cluster: second, excludeReadCommands: true}}]}}\n  faults: [{{type: Error, percent: 50, commands: [INCR]}}]",
            f.main.static_entries()
        ),
    ) + &rc(
        "second",
        &format!(
            "endpoints: {{static: [{}]}}\ntopology: {{refreshInterval: 1s}}",
            f.second.static_entries()
        ),
    ) + &rc(
        "gone",
        &format!(
            "endpoints: {{static: [\"127.0.0.1:{down}\"]}}\ntopology: {{refreshInterval: 1s}}"
        ),
    );
    let secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: clients, namespace: e2e}\nstringData: {password: e2e-client-password}\n";
    let sc = Sidecar::start(&[("clients.yaml", secret.into()), ("rc.yaml", main)]);
    let connect = || {
        let mut c = Conn::connect(&format!("127.0.0.1:{port}")).ok()?;
        (c.cmd(&["AUTH", "e2e-client-password"]).ok()?.text() == "OK").then_some(c)
    };
    let mut c = crate::common::wait_until("the sidecar serves replica reads", || {
        let mut c = connect()?;
        c.cmd(&["SET", "probe", "1"]).ok()?;
        (!c.cmd(&["GET", "probe"]).ok()?.is_error()).then_some(c)
    });
    let prometheus = Prometheus::start(
        sc.tmp.path(),
        &[
            ("envoy", &sc.admin, "/stats/prometheus"),
            ("redis-xds", &sc.serve.debug, "/metrics"),
        ],
    );
    let dashboards: Vec<(String, Value)> =
        std::fs::read_dir(crate::common::root().join("dashboards"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .map(|p| {
                let text = std::fs::read_to_string(&p).unwrap();
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
                )
            })
            .collect();
    assert!(
        dashboards.len() >= 2,
        "dashboards/ holds the two dashboards"
    );
    // Traffic until every query has its series: rates need two scrapes of it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let mut round = 0;
    let missing = loop {
        round += 1;
        for i in 0..20 {
            let key = format!("d:{round}:{i}");
            c.ok(&["SET", &key, "v"]);
            c.ok(&["GET", &key]);
            c.ok(&["SET", &format!("other:{key}"), "v"]);
            // Half of these are answered by the injected fault.
            let _ = c.cmd(&["INCR", &format!("n:{round}")]);
        }
        // No server behind `gone`: `no upstream host`.
        let _ = c.cmd(&["GET", "gone:key"]);
        // A client with the wrong password.
        if let Ok(mut bad) = Conn::connect(&format!("127.0.0.1:{port}")) {
            let _ = bad.cmd(&["AUTH", "not-the-password"]);
        }
        let missing = unanswered(&prometheus, &dashboards);
        if missing.is_empty() || std::time::Instant::now() > deadline {
            break missing;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    let exported: BTreeSet<String> = prometheus
        .query("count by (__name__) ({__name__=~\".+\"})")
        .unwrap()
        .iter()
        .filter_map(|m| m["__name__"].as_str().map(str::to_owned))
        .collect();
    if std::env::var_os("REDIS_XDS_PRINT_METRICS").is_some() {
        println!(
            "{}",
            exported.iter().cloned().collect::<Vec<_>>().join("\n")
        );
    }
    assert!(
        missing.is_empty(),
        "after {round} rounds of traffic:\n{}",
        missing.join("\n")
    );
    // What the traffic did shows where the panels look: not only series, but counts.
    for (what, expr, positive) in [
        (
            "Fault injections: INCR answered by the injected error",
            "sum(envoy_redis_command_incr_error_fault{envoy_redis_prefix=\"e2e/main\"})",
            true,
        ),
        (
            "Errors by command: GET answered `no upstream host` by the route to gone",
            "sum(envoy_redis_command_get_error{envoy_redis_prefix=\"e2e/main\"})",
            true,
        ),
        (
            "Healthy servers: none in the cluster of gone, whose only server is down",
            "sum(envoy_cluster_membership_healthy{envoy_cluster_name=~\".*gone.*\"})",
            false,
        ),
        (
            "Healthy servers: main's six",
            "sum(envoy_cluster_membership_healthy{envoy_cluster_name=~\".*main.*\"})",
            true,
        ),
        (
            "Topology refreshes: CLUSTER SLOTS asked of main",
            "sum(envoy_cluster_update_attempt{envoy_cluster_name=~\".*main.*\"})",
            true,
        ),
        (
            "Mirrored commands: requests to second, the mirror and route target",
            "sum(envoy_cluster_upstream_rq_total{envoy_cluster_name=~\".*second.*\"})",
            true,
        ),
        (
            "Proxies per RedisCluster: the sidecar holds main",
            "sum(redis_xds_rediscluster_proxies{rediscluster=\"e2e/main\", state=\"synced\"})",
            true,
        ),
    ] {
        let value = prometheus
            .query_value(expr)
            .unwrap_or_else(|e| panic!("{what}: {expr}: {e}"));
        assert_eq!(value > 0.0, positive, "{what}: {expr} is {value}");
    }
    let queries: usize = dashboards.iter().map(|(_, d)| panel_queries(d).len()).sum();
    println!("  {queries} panel queries answered with their labels");
    // The metric names the dashboards and the alerts use are all exported (no panel hides
    // a typo behind an `or`; an alert on a name nobody exports never fires).
    let alerts: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(crate::common::root().join("monitoring/alerts.yaml")).unwrap(),
    )
    .unwrap();
    let alert_exprs = alerts["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap())
        .map(|r| {
            (
                "monitoring/alerts.yaml".to_string(),
                r["alert"].as_str().unwrap().to_string(),
                r["expr"].as_str().unwrap().to_string(),
            )
        });
    let panel_exprs = dashboards.iter().flat_map(|(file, d)| {
        panel_queries(d)
            .into_iter()
            .map(|(title, expr, _)| (file.clone(), title, expr))
    });
    for (file, title, expr) in panel_exprs.chain(alert_exprs) {
        for name in metric_names(&expr) {
            assert!(
                exported.iter().any(|e| regex_like(&name, e)),
                "{file} \"{title}\" names {name}, which neither Envoy nor redis-xds exports"
            );
        }
    }
}

/// The panel queries that do not (yet) return series with their legend's labels.
fn unanswered(prometheus: &Prometheus, dashboards: &[(String, Value)]) -> Vec<String> {
    let mut missing = Vec::new();
    for (file, d) in dashboards {
        for (title, expr, labels) in panel_queries(d) {
            match prometheus.query(&instantiate(&expr)) {
                Err(e) => missing.push(format!("{file} \"{title}\": {expr}: {e}")),
                Ok(series) if series.is_empty() => {
                    missing.push(format!("{file} \"{title}\": no series for {expr}"))
                }
                Ok(series) => {
                    for l in &labels {
                        if !series.iter().all(|s| s.get(l).is_some_and(|v| v != "")) {
                            missing.push(format!(
                                "{file} \"{title}\": a series without label {l}: {expr}"
                            ));
                        }
                    }
                }
            }
        }
    }
    missing
}

/// Metric names (or `__name__` patterns) an expression names.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("__name__=~\"") {
        let tail = &rest[i + 11..];
        let end = tail.find('"').unwrap_or(tail.len());
        out.push(format!("~{}", &tail[..end]));
        rest = &tail[end..];
    }
    // What is left once quoted strings, label matchers (`{...}`) and grouping lists
    // (`by (...)`, `without (...)`, `on (...)`, `ignoring (...)`) are taken out names
    // metrics only.
    let mut bare = String::with_capacity(expr.len());
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                for d in chars.by_ref() {
                    if d == '"' {
                        break;
                    }
                }
                bare.push(' ');
            }
            '{' => {
                for d in chars.by_ref() {
                    if d == '}' {
                        break;
                    }
                }
                bare.push(' ');
            }
            _ => bare.push(c),
        }
    }
    for keyword in [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ] {
        while let Some(i) = find_word(&bare, keyword) {
            let rest = &bare[i + keyword.len()..];
            let skip = match rest.trim_start().strip_prefix('(') {
                Some(list) => {
                    rest.len() - list.len() + list.find(')').map_or(list.len(), |e| e + 1)
                }
                None => 0,
            };
            bare.replace_range(i..i + keyword.len() + skip, " ");
        }
    }
    for word in bare.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')) {
        if (word.starts_with("envoy_") || word.starts_with("redis_xds_"))
            && !out.iter().any(|o| o == word)
        {
            out.push(word.to_string());
        }
    }
    out
}

/// Where `word` stands as a whole word in `text`.
fn find_word(text: &str, word: &str) -> Option<usize> {
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(word).map(|(i, _)| i).find(|&i| {
        !text[..i].chars().next_back().is_some_and(is_word)
            && !text[i + word.len()..].chars().next().is_some_and(is_word)
    })
}

/// Whether an exported name matches a name or a `~pattern` (the dashboards' patterns are
/// `prefix.+suffix`).
fn regex_like(name: &str, exported: &str) -> bool {
    match name.strip_prefix('~') {
        Some(pattern) => match pattern.split_once(".+") {
            Some((prefix, suffix)) => {
                exported.len() > prefix.len() + suffix.len()
                    && exported.starts_with(prefix)
                    && exported.ends_with(suffix)
            }
            None => exported == pattern,
        },
        None => exported == name,
    }
}
