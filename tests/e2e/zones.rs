//! The zone-aware read policies on real Envoy 1.40 and a real Valkey 9.1 Cluster: Valkey
//! reports each server's `availability_zone` in INFO, which Envoy reads with
//! `enable_zone_discovery` and matches against its own `node.locality.zone`.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::json;

use crate::common::{Serve, free_port, start_envoy, start_serve, wait_until};
use crate::own_rules::{envoy, refused, render};
use crate::redis::Cluster;
use crate::resp::Conn;
use crate::{Fixture, rc};

/// Zone `a` for every primary; its replicas get `b` and `c`. Returns the zone of each port.
fn place(cluster: &Cluster) -> BTreeMap<u16, &'static str> {
    let mut zones = BTreeMap::new();
    let primaries = cluster.primaries();
    for p in &primaries {
        zones.insert(*p, "a");
    }
    let mut taken: BTreeMap<u16, usize> = BTreeMap::new();
    for r in cluster.replicas() {
        let info = cluster.conn(r).ok(&["INFO", "replication"]);
        let primary: u16 = info
            .lines()
            .find_map(|l| l.strip_prefix("master_port:"))
            .and_then(|p| p.trim().parse().ok())
            .expect("a replica names its primary");
        let n = taken.entry(primary).or_default();
        zones.insert(r, ["b", "c"][*n % 2]);
        *n += 1;
    }
    for (port, zone) in &zones {
        cluster
            .conn(*port)
            .ok(&["CONFIG", "SET", "availability-zone", zone]);
    }
    zones
}

/// GETs per zone: sends `n` GETs through the sidecar on `port` and counts where they landed.
fn gets_by_zone(
    cluster: &Cluster,
    zones: &BTreeMap<u16, &'static str>,
    port: u16,
    n: usize,
) -> BTreeMap<&'static str, u64> {
    cluster.reset_stats();
    let mut c = Conn::connect(&format!("127.0.0.1:{port}")).unwrap();
    for i in 0..n {
        let reply = c.cmd(&["GET", &format!("zone:{i}")]).unwrap();
        assert!(!reply.is_error(), "GET zone:{i}: {reply:?}");
    }
    let mut by_zone = BTreeMap::new();
    for (p, zone) in zones {
        *by_zone.entry(*zone).or_default() += cluster.calls(*p, "get");
    }
    by_zone
}

/// One serve and one Envoy in `zone`, on `spec`.
fn sidecar(dir: &Path, spec: &str, zone: &str) -> (Serve, crate::common::Proc) {
    let manifests = dir.join(format!("manifests-{zone}"));
    let _ = std::fs::remove_dir_all(&manifests);
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(manifests.join("zones.yaml"), rc("zones", spec)).unwrap();
    let serve = start_serve(&manifests, &[]);
    let xds = serve.xds.to_string();
    let node = format!("zone-{zone}");
    let envoy_dir = dir.join(&node);
    std::fs::create_dir_all(&envoy_dir).unwrap();
    let (envoy, _admin) = start_envoy(
        &envoy_dir,
        &["--xds-address", &xds, "--node-id", &node, "--zone", zone],
    );
    (serve, envoy)
}

/// Waits until every read of a round through the sidecar on `port` lands as `want` says.
fn reads_land(
    cluster: &Cluster,
    zones: &BTreeMap<u16, &'static str>,
    port: u16,
    what: &str,
    want: impl Fn(&BTreeMap<&'static str, u64>) -> bool,
) -> BTreeMap<&'static str, u64> {
    wait_until(what, || {
        Conn::connect(&format!("127.0.0.1:{port}")).ok()?;
        let seen = gets_by_zone(cluster, zones, port, 60);
        want(&seen).then_some(seen)
    })
}

pub fn zone_aware_reads(_f: &Fixture) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cluster = Cluster::start_valkey(&dir.join("valkey"), 3, 2);
    let zones = place(&cluster);
    let seeds = cluster.static_entries();
    let port = free_port();
    let spec = |policy: &str, discovery: bool| {
        let topology = if discovery {
            "topology: {zoneDiscovery: true}\n"
        } else {
            ""
        };
        format!(
            "endpoints: {{static: [{seeds}]}}\n{topology}listener:\n  port: {port}\n  readPolicy: {policy}"
        )
    };
    let count = |seen: &BTreeMap<&str, u64>, zone: &str| seen.get(zone).copied().unwrap_or(0);

    // LocalZoneAffinity in zone b: every read on a replica in b.
    {
        let _running = sidecar(dir, &spec("LocalZoneAffinity", true), "b");
        let seen = reads_land(&cluster, &zones, port, "reads land in zone b only", |s| {
            count(s, "b") == 60
        });
        println!("  LocalZoneAffinity, proxy in b: {seen:?}");
    }
    // In zone a, where only primaries are, it reads from replicas in any zone; with the
    // primary allowed, it reads from the primaries in a.
    {
        let _running = sidecar(dir, &spec("LocalZoneAffinity", true), "a");
        let seen = reads_land(&cluster, &zones, port, "reads land on replicas", |s| {
            count(s, "a") == 0 && count(s, "b") > 0 && count(s, "c") > 0
        });
        println!("  LocalZoneAffinity, proxy in a: {seen:?}");
    }
    {
        let _running = sidecar(dir, &spec("LocalZoneAffinityReplicasAndPrimary", true), "a");
        let seen = reads_land(
            &cluster,
            &zones,
            port,
            "reads land on the primaries in a",
            |s| count(s, "a") == 60,
        );
        println!("  LocalZoneAffinityReplicasAndPrimary, proxy in a: {seen:?}");
    }

    // Without zone discovery redis-xds refuses the policy; given it anyway, Envoy in zone b
    // reads from replicas of every zone, as PreferReplica does.
    for policy in ["LocalZoneAffinity", "LocalZoneAffinityReplicasAndPrimary"] {
        refused(dir, &spec(policy, false), "spec.listener.readPolicy");
    }
    let mut b = render(dir, &spec("LocalZoneAffinity", true)).unwrap();
    let config = &mut b["staticResources"]["clusters"][0]["clusterType"]["typedConfig"];
    assert_eq!(config["enableZoneDiscovery"], true, "{config}");
    config
        .as_object_mut()
        .unwrap()
        .remove("enableZoneDiscovery");
    b["node"]["locality"] = json!({"zone": "b"});
    let e = envoy(dir, &b, port);
    let seen = reads_land(&cluster, &zones, port, "reads land on replicas", |s| {
        count(s, "a") == 0 && count(s, "b") + count(s, "c") == 60
    });
    assert!(
        count(&seen, "c") > 0,
        "without zone discovery Envoy still kept to zone b: {seen:?}"
    );
    println!("  LocalZoneAffinity without zone discovery, proxy in b: {seen:?}");
    drop(e);
}
