//! The committed CRD is exactly what the code generates.

use crate::common;

#[test]
fn committed_crd_matches_the_generated_one() {
    let generated = redis_xds::app::cli::crd_yaml().expect("CRD serializes");
    let path = common::root().join("crds/redisclusters.yaml");
    if std::env::var_os("REDIS_XDS_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).expect("crds/redisclusters.yaml exists");
    assert!(
        committed == generated,
        "crds/redisclusters.yaml is stale: run `cargo run -- crd > crds/redisclusters.yaml`"
    );
}

#[test]
fn crd_command_prints_the_committed_file() {
    let out = common::run(&["crd"]);
    assert!(out.status.success());
    let committed =
        std::fs::read_to_string(common::root().join("crds/redisclusters.yaml")).unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), committed);
}

#[test]
fn crd_has_the_validation_the_api_server_enforces() {
    let crd: serde_json::Value =
        serde_yaml_ng::from_str(&redis_xds::app::cli::crd_yaml().unwrap()).unwrap();
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert_eq!(crd["spec"]["group"], "redis-xds.dev");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "rdc");
    assert!(version["subresources"]["status"].is_object());
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["Mode", "Endpoints", "Proxies", "Synced", "Age"]);

    let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let props = &spec["properties"];
    assert_eq!(
        props["mode"]["enum"],
        serde_json::json!(["Cluster", "Sharded"])
    );
    assert_eq!(props["port"]["minimum"], 1.0);
    assert_eq!(props["port"]["maximum"], 65535.0);
    let endpoint_rules = props["endpoints"]["x-kubernetes-validations"].to_string();
    assert!(endpoint_rules.contains("size() == 1"), "{endpoint_rules}");
    let listener = &props["listener"]["properties"];
    assert_eq!(
        listener["readPolicy"]["enum"],
        serde_json::json!([
            "Master",
            "PreferMaster",
            "Replica",
            "PreferReplica",
            "Any",
            "LocalZoneAffinity",
            "LocalZoneAffinityReplicasAndPrimary"
        ])
    );
    let mirror = &listener["routes"]["items"]["properties"]["mirror"]["items"]["properties"];
    assert_eq!(mirror["percent"]["maximum"], 100.0);
    assert_eq!(mirror["percent"]["minimum"], 0.0);
    assert!(
        listener["opTimeout"]["pattern"]
            .as_str()
            .unwrap()
            .contains("ms")
    );
    let spec_rules = spec["x-kubernetes-validations"].to_string();
    assert!(spec_rules.contains("readPolicy"), "{spec_rules}");
    assert!(spec_rules.contains("topology"), "{spec_rules}");
}

/// Every integer in a RedisCluster's spec has a minimum and a maximum, and every duration
/// a length limit: the API server does not enforce `format: uint32`, so an unbounded field
/// would let through values that redis-xds cannot decode (5,000,000,000 in a uint32).
#[test]
fn every_numeric_spec_field_has_both_bounds() {
    let yaml = std::fs::read_to_string(common::root().join("crds/redisclusters.yaml")).unwrap();
    let crd: serde_json::Value = serde_yaml_ng::from_str(&yaml).unwrap();
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    assert!(spec.is_object(), "no spec schema in the CRD");
    fn walk(node: &serde_json::Value, path: &str, numbers: &mut usize, missing: &mut Vec<String>) {
        if let Some(t) = node["type"].as_str() {
            if t == "integer" || t == "number" {
                *numbers += 1;
                if node["minimum"].is_null() || node["maximum"].is_null() {
                    missing.push(format!("{path}: minimum or maximum"));
                }
            }
            if t == "string" && node["pattern"].is_string() && node["maxLength"].is_null() {
                missing.push(format!("{path}: maxLength of a pattern string"));
            }
        }
        if let Some(props) = node["properties"].as_object() {
            for (name, child) in props {
                walk(child, &format!("{path}.{name}"), numbers, missing);
            }
        }
        if node["items"].is_object() {
            walk(&node["items"], &format!("{path}[]"), numbers, missing);
        }
        if node["additionalProperties"].is_object() {
            walk(
                &node["additionalProperties"],
                &format!("{path}{{}}"),
                numbers,
                missing,
            );
        }
    }
    let (mut numbers, mut missing) = (0, Vec::new());
    walk(spec, "spec", &mut numbers, &mut missing);
    assert!(
        numbers >= 10,
        "only {numbers} numeric fields found: the walk is broken"
    );
    assert!(missing.is_empty(), "unbounded spec fields: {missing:#?}");
}
