//! The alerting rules (monitoring/): valid for Prometheus (`promtool check rules`), each
//! alert firing and not firing on its unit tests (`promtool test rules`), the
//! PrometheusRule holding the same groups as the plain file, and every redis-xds metric
//! they name one that redis-xds exports. promtool is Debian's `prometheus` package.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn monitoring(file: &str) -> String {
    format!("{}/monitoring/{file}", env!("CARGO_MANIFEST_DIR"))
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(Path::new(&monitoring("")))
        .output()
        .expect("promtool runs: run the tests through scripts/test, which installs it");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

fn yaml(file: &str) -> Value {
    serde_yaml_ng::from_str(&std::fs::read_to_string(monitoring(file)).unwrap()).unwrap()
}

#[test]
fn the_rules_are_valid_and_their_unit_tests_pass() {
    let checked = promtool(&["check", "rules", "alerts.yaml"]);
    assert!(checked.contains("SUCCESS: 7 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "alerts_test.yaml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
    // Every alert is tested, both ways.
    let tests = yaml("alerts_test.yaml");
    let cases: Vec<&Value> = tests["tests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().unwrap())
        .collect();
    let alerts = yaml("alerts.yaml");
    let rules = alerts["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap());
    for rule in rules {
        let name = rule["alert"].as_str().unwrap();
        let of = |firing: bool| {
            cases.iter().any(|c| {
                c["alertname"] == name
                    && c["exp_alerts"]
                        .as_array()
                        .is_some_and(|a| a.is_empty() != firing)
            })
        };
        assert!(
            of(true) && of(false),
            "{name} is tested firing and not firing"
        );
    }
}

#[test]
fn the_prometheusrule_holds_the_same_groups() {
    let rule = yaml("prometheusrule.yaml");
    assert_eq!(rule["kind"], "PrometheusRule");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["spec"]["groups"], yaml("alerts.yaml")["groups"]);
}

#[test]
fn the_rules_name_only_metrics_redis_xds_exports() {
    // A family is written once it has a series: give each one.
    let m = redis_xds::metrics::Metrics::default();
    m.connected.get_or_create(&[("variant", "delta")]).inc();
    m.pushes.get_or_create(&[("type", "LDS")]).inc();
    m.nacks.get_or_create(&[("type", "LDS")]).inc();
    m.model_objects
        .get_or_create(&[("kind", "RedisCluster")])
        .set(1);
    m.problems.get_or_create(&[("stage", "compile")]).set(1);
    m.source_events
        .get_or_create(&[("source", "kubernetes")])
        .inc();
    m.proxies.get_or_create(&[("state", "synced")]).set(1);
    let exported: BTreeSet<String> = m
        .encode()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let rules = std::fs::read_to_string(monitoring("alerts.yaml")).unwrap();
    let named: BTreeSet<String> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("redis_xds_"))
        .map(str::to_owned)
        .collect();
    assert!(!named.is_empty());
    for name in named {
        let base = ["_total", "_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name);
        assert!(
            exported.contains(base),
            "{name} is not exported; exported: {exported:?}"
        );
    }
}
