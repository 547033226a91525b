//! The scenarios, in the order they run. `resilience` kills a primary of the shared
//! cluster, so it runs last.

use std::time::Instant;

use crate::common::{envoy_counter, free_port, http_get, start_serve_full, wait_until};
use crate::redis::Cluster;
use crate::resp::{Conn, Reply};
use crate::{Fixture, Sidecar, rc, standalone};

pub type Scenario = fn(&Fixture);

pub const ALL: &[(&str, Scenario)] = &[
    (
        "sharding_spreads_keys_and_multi_key_commands_work",
        sharding,
    ),
    (
        "read_policy_sends_reads_to_replicas_and_flips_live",
        read_policy,
    ),
    (
        "prefix_routes_pick_the_longest_prefix_and_strip_it",
        prefix_routes,
    ),
    (
        "mirroring_copies_writes_not_reads_at_the_configured_share",
        mirroring,
    ),
    ("auth_uses_the_secret_and_follows_its_rotation", auth),
    ("sharded_mode_keeps_keys_when_a_server_moves", sharded),
    (
        "a_sharded_server_not_ready_gets_no_new_keys_and_finishes_what_is_in_flight",
        sharded_removal,
    ),
    (
        "a_sharded_server_holding_the_maintenance_key_drains_and_comes_back",
        maintenance_key,
    ),
    (
        "a_dead_shard_is_ejected_by_outlier_detection_and_its_keys_move",
        outlier_ejection,
    ),
    (
        "adding_and_deleting_a_listener_reaches_envoy_without_restart",
        live_change,
    ),
    (
        "bad_input_during_traffic_changes_nothing_that_works",
        bad_input,
    ),
    (
        "host_name_seeds_resp3_key_formatters_and_module_commands_work_through_envoy",
        capabilities,
    ),
    (
        "the_connection_rate_limit_refuses_a_reconnect_storm",
        connection_rate_limit,
    ),
    (
        "a_moved_reply_naming_a_host_is_followed_through_the_dns_cache",
        moved_to_host_names,
    ),
    (
        "each_node_is_authenticated_as_its_own_acl_user",
        acl_user_per_node,
    ),
    (
        "an_external_auth_service_accepts_one_token_and_refuses_another",
        crate::external_auth::external_auth,
    ),
    (
        "sharded_servers_over_tls_with_a_client_certificate",
        crate::tls::sharded_tls,
    ),
    (
        "a_redis_cluster_over_tls_is_discovered_and_sharded_over_tls",
        crate::tls::cluster_tls,
    ),
    (
        "kubernetes_mode_with_a_real_api_server_token_auth_and_pods",
        crate::kubernetes::kubernetes,
    ),
    (
        "every_setting_redis_xds_refuses_is_one_real_envoy_mishandles",
        crate::own_rules::own_rules,
    ),
    (
        "zone_aware_reads_keep_to_the_proxys_zone_on_valkey",
        crate::zones::zone_aware_reads,
    ),
    (
        "every_dashboard_panel_answers_on_real_prometheus",
        crate::dashboards::dashboards,
    ),
    (
        "traffic_survives_a_control_plane_restart_and_a_primary_failure",
        resilience,
    ),
];

fn main_spec(f: &Fixture, port: u16, listener_extra: &str) -> String {
    format!(
        "endpoints: {{static: [{}]}}\ntopology: {{refreshInterval: 1s}}\nlistener:\n  port: {port}\n{}",
        f.main.static_entries(),
        listener_extra
            .lines()
            .map(|l| format!("  {l}\n"))
            .collect::<String>()
    )
}

fn second_rc(f: &Fixture) -> String {
    rc(
        "second",
        &format!(
            "endpoints: {{static: [{}]}}\ntopology: {{refreshInterval: 1s}}",
            f.second.static_entries()
        ),
    )
}

/// Whether a key is stored on a cluster's primaries.
fn holds(cluster: &Cluster, key: &str) -> bool {
    cluster
        .primaries()
        .iter()
        .any(|p| cluster.conn(*p).cmd(&["EXISTS", key]).ok() == Some(Reply::Int(1)))
}

fn sum_calls(cluster: &Cluster, ports: &[u16], command: &str) -> u64 {
    ports.iter().map(|p| cluster.calls(*p, command)).sum()
}

fn sharding(f: &Fixture) {
    f.main.flush();
    let port = free_port();
    let sc = Sidecar::start(&[("main.yaml", rc("main", &main_spec(f, port, "")))]);
    let mut c = sc.wait_serving(port, &["SET", "probe", "1"]);
    c.ok(&["DEL", "probe"]);
    for i in 0..1000 {
        c.ok(&["SET", &format!("key:{i}"), &i.to_string()]);
    }
    let per_primary: Vec<u64> = f
        .main
        .primaries()
        .iter()
        .map(|p| f.main.conn(*p).ok(&["DBSIZE"]).parse().unwrap())
        .collect();
    println!("  keys per primary: {per_primary:?}");
    assert_eq!(per_primary.len(), 3);
    assert!(
        per_primary.iter().all(|n| *n > 200),
        "keys not spread over every primary: {per_primary:?}"
    );
    assert_eq!(per_primary.iter().sum::<u64>(), 1000);

    let keys: Vec<String> = (0..50).map(|i| format!("key:{i}")).collect();
    let mut args = vec!["MGET"];
    args.extend(keys.iter().map(String::as_str));
    let Reply::Array(Some(values)) = c.cmd(&args).unwrap() else {
        panic!("MGET did not return an array")
    };
    let values: Vec<String> = values.iter().map(Reply::text).collect();
    assert_eq!(
        values,
        (0..50).map(|i| i.to_string()).collect::<Vec<_>>(),
        "MGET across slots"
    );
    args[0] = "DEL";
    assert_eq!(c.ok(&args), "50", "DEL across slots");

    for k in ["{user:7}:name", "{user:7}:email", "{user:7}:cart"] {
        c.ok(&["SET", k, "x"]);
    }
    let holding: Vec<u16> = f
        .main
        .primaries()
        .into_iter()
        .filter(|p| {
            f.main
                .conn(*p)
                .cmd(&["EXISTS", "{user:7}:name", "{user:7}:email", "{user:7}:cart"])
                .ok()
                == Some(Reply::Int(3))
        })
        .collect();
    assert_eq!(
        holding.len(),
        1,
        "hash-tagged keys must share one slot, hence one primary"
    );
}

fn read_policy(f: &Fixture) {
    f.main.flush();
    let port = free_port();
    let sc = Sidecar::start(&[(
        "main.yaml",
        rc("main", &main_spec(f, port, "readPolicy: Replica")),
    )]);
    let mut c = sc.wait_serving(port, &["SET", "probe", "1"]);
    wait_until("replica reads work", || {
        (!c.cmd(&["GET", "probe"]).ok()?.is_error()).then_some(())
    });
    for i in 0..30 {
        c.ok(&["SET", &format!("r:{i}"), "v"]);
    }
    let (primaries, replicas) = (f.main.primaries(), f.main.replicas());
    f.main.reset_stats();
    for i in 0..100 {
        c.ok(&["GET", &format!("r:{}", i % 30)]);
    }
    let (on_primaries, on_replicas) = (
        sum_calls(&f.main, &primaries, "get"),
        sum_calls(&f.main, &replicas, "get"),
    );
    println!("  Replica: GETs on primaries {on_primaries}, on replicas {on_replicas}");
    assert_eq!(on_primaries, 0);
    assert_eq!(on_replicas, 100);

    let envoy_pid = sc.envoy.child.id();
    sc.write(
        "main.yaml",
        &rc("main", &main_spec(f, port, "readPolicy: Master")),
    );
    // A listener change applies to new connections; existing ones keep the settings they
    // started with until they close (Envoy drains the old listener).
    wait_until("readPolicy Master applies to new connections", || {
        let mut c = Conn::connect(&format!("127.0.0.1:{port}")).ok()?;
        f.main.reset_stats();
        for i in 0..20 {
            c.cmd(&["GET", &format!("r:{i}")]).ok()?;
        }
        (sum_calls(&f.main, &primaries, "get") == 20 && sum_calls(&f.main, &replicas, "get") == 0)
            .then_some(())
    });
    assert_eq!(sc.envoy.child.id(), envoy_pid);
    assert!(
        crate::common::envoy_dynamic(&sc.admin).is_some(),
        "Envoy kept running"
    );
}

fn prefix_routes(f: &Fixture) {
    f.main.flush();
    f.second.flush();
    let port = free_port();
    let routes = "routes:\n  - {prefix: \"b:\", cluster: second}\n  - {prefix: \"strip:\", cluster: second, removePrefix: true}\n  - {prefix: \"b:main:\", cluster: main}";
    let sc = Sidecar::start(&[(
        "all.yaml",
        rc("main", &main_spec(f, port, routes)) + &second_rc(f),
    )]);
    let mut c = sc.wait_serving(port, &["SET", "b:probe", "1"]);
    for k in ["b:x", "strip:foo", "b:main:y", "plain"] {
        c.ok(&["SET", k, "1"]);
    }
    assert!(
        holds(&f.second, "b:x") && !holds(&f.main, "b:x"),
        "prefixed key goes to the other cluster"
    );
    assert!(
        holds(&f.second, "foo") && !holds(&f.second, "strip:foo"),
        "removePrefix strips the prefix"
    );
    assert!(
        holds(&f.main, "b:main:y") && !holds(&f.second, "b:main:y"),
        "the longest prefix wins"
    );
    assert!(
        holds(&f.main, "plain") && !holds(&f.second, "plain"),
        "unrouted keys use the catch-all"
    );
    assert_eq!(
        c.ok(&["GET", "foo"]),
        "",
        "reads of the stripped name go to main, which lacks it"
    );
    assert_eq!(c.ok(&["GET", "strip:foo"]), "1");
}

fn mirroring(f: &Fixture) {
    f.main.flush();
    f.second.flush();
    let port = free_port();
    let spec = "routes:\n  - {prefix: \"half:\", cluster: main, mirror: [{cluster: second, percent: 50}]}\n  - {prefix: \"none:\", cluster: main, mirror: [{cluster: second, percent: 0}]}\ncatchAll:\n  mirror: [{cluster: second, excludeReadCommands: true}]";
    let sc = Sidecar::start(&[(
        "all.yaml",
        rc("main", &main_spec(f, port, spec)) + &second_rc(f),
    )]);
    let mut c = sc.wait_serving(port, &["SET", "probe", "1"]);
    // Mirrored writes are fire-and-forget: one sent before Envoy reached the mirror's
    // servers is gone for good, so each attempt writes again.
    wait_until("the mirror receives writes", || {
        c.cmd(&["SET", "probe", "1"]).ok()?;
        holds(&f.second, "probe").then_some(())
    });
    f.second.flush();
    f.second.reset_stats();
    let primaries = f.second.primaries();
    for i in 0..100 {
        c.ok(&["SET", &format!("m:{i}"), "v"]);
    }
    for i in 0..100 {
        c.ok(&["GET", &format!("m:{i}")]);
    }
    // Mirrored requests are fire-and-forget: wait for the last writes to land.
    wait_until("100 mirrored writes", || {
        (f.second.dbsize() == 100).then_some(())
    });
    assert_eq!(sum_calls(&f.second, &primaries, "set"), 100);
    assert_eq!(
        sum_calls(&f.second, &primaries, "get"),
        0,
        "excludeReadCommands keeps reads off the mirror"
    );

    for i in 0..100 {
        c.ok(&["SET", &format!("none:{i}"), "v"]);
    }
    for i in 0..400 {
        c.ok(&["SET", &format!("half:{i}"), "v"]);
    }
    // Flush the mirror path with one more catch-all write, then count.
    c.ok(&["SET", "m:last", "v"]);
    wait_until("the last mirrored write", || {
        holds(&f.second, "m:last").then_some(())
    });
    let half = f.second.dbsize() - 101;
    println!("  percent 50 mirrored {half} of 400 writes");
    assert!(
        (120..=280).contains(&half),
        "percent 50 mirrored {half} of 400"
    );
    let none = (0..100)
        .filter(|i| holds(&f.second, &format!("none:{i}")))
        .count();
    assert_eq!(none, 0, "percent 0 mirrors nothing");
}

fn auth(f: &Fixture) {
    let port = free_port();
    let secret = |pw: &str| {
        format!(
            "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: redis-auth, namespace: e2e}}\nstringData: {{password: {pw}}}\n"
        )
    };
    let cluster = rc(
        "secured",
        &format!(
            "endpoints: {{static: [{}]}}\ntopology: {{refreshInterval: 1s}}\nauth: {{secretRef: {{name: redis-auth}}}}\nlistener: {{port: {port}}}",
            f.secured.static_entries()
        ),
    );
    let sc = Sidecar::start(&[
        ("secret.yaml", secret("e2e-first-password")),
        ("rc.yaml", cluster),
    ]);
    let mut c = sc.wait_serving(port, &["SET", "auth:probe", "1"]);
    assert_eq!(c.ok(&["GET", "auth:probe"]), "1");
    assert!(holds(&f.secured, "auth:probe"));

    // Rotate: the servers first, then the Secret. Old connections are killed so that only
    // a fresh AUTH with the new password can work.
    for s in &f.secured.servers {
        let mut admin = f.secured.conn(s.port);
        admin.ok(&["CONFIG", "SET", "requirepass", "e2e-second-password"]);
        admin.ok(&["CONFIG", "SET", "masterauth", "e2e-second-password"]);
    }
    let rotated = |port: u16| crate::redis::conn(port, Some("e2e-second-password"));
    for s in &f.secured.servers {
        let _ = rotated(s.port).cmd(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]);
    }
    wait_until("the old password no longer works", || {
        let mut c = Conn::connect(&format!("127.0.0.1:{port}")).ok()?;
        c.cmd(&["SET", "auth:old", "1"])
            .ok()?
            .is_error()
            .then_some(())
    });
    sc.write("secret.yaml", &secret("e2e-second-password"));
    let started = Instant::now();
    wait_until("commands work with the rotated password", || {
        let mut c = Conn::connect(&format!("127.0.0.1:{port}")).ok()?;
        (c.cmd(&["SET", "auth:rotated", "2"]).ok()?.text() == "OK").then_some(())
    });
    println!(
        "  rotated password in use after {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let auth_fails = http_get(&sc.serve.debug, "/metrics").unwrap_or_default();
    assert!(!auth_fails.contains("e2e-second-password"));
    // Restore for anyone running the scenario again against the same fixture.
    for s in &f.secured.servers {
        let mut admin = rotated(s.port);
        admin.ok(&["CONFIG", "SET", "requirepass", "e2e-first-password"]);
        admin.ok(&["CONFIG", "SET", "masterauth", "e2e-first-password"]);
    }
}

/// Passive health checking in mode Sharded: a shard that dies after it was healthy is
/// ejected by Envoy's outlier detection from the failed connections of the traffic itself,
/// long before the next active health check (here an hour away), and its keys go to the
/// shard left.
fn outlier_ejection(f: &Fixture) {
    let dir = f._dir.path().join("outlier");
    let live = standalone(&dir);
    let mut doomed = standalone(&dir);
    let port = free_port();
    let sc = Sidecar::start(&[(
        "cache.yaml",
        rc(
            "ejecting",
            &format!(
                "mode: Sharded\nendpoints: {{static: [\"a={}\", \"b={}\"]}}\nsharding:\n  healthCheck: {{interval: 1h}}\n  outlierDetection: {{consecutiveFailures: 2, interval: 1s}}\nlistener: {{port: {port}}}",
                live.addr(),
                doomed.addr()
            ),
        ),
    )]);
    let mut c = sc.wait_serving(port, &["SET", "probe", "1"]);
    wait_until("both shards receive keys", || {
        for i in 0..40 {
            c.cmd(&["SET", &format!("warm:{i}"), "1"]).ok()?;
        }
        [&live, &doomed]
            .iter()
            .all(|s| crate::redis::conn(s.port, None).ok(&["DBSIZE"]) != "0")
            .then_some(())
    });
    doomed.proc.terminate();
    let started = Instant::now();
    wait_until("every key goes to the shard left", || {
        let mut c = Conn::connect(&format!("127.0.0.1:{port}")).ok()?;
        (0..40)
            .all(|i| {
                c.cmd(&["SET", &format!("after:{i}"), "1"])
                    .is_ok_and(|r| r.text() == "OK")
            })
            .then_some(())
    });
    println!(
        "  the dead shard was ejected and bypassed after {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let enforced = envoy_counter(
        &sc.admin,
        "cluster.redis/e2e/ejecting.outlier_detection.ejections_enforced_consecutive_local_origin_failure",
    );
    assert!(enforced >= 1, "no ejection for local-origin failures");
    let held = crate::redis::conn(live.port, None).ok(&["EXISTS", "after:0", "after:39"]);
    assert_eq!(
        held, "2",
        "the keys written after the ejection are not on the live shard"
    );
}

/// Redirections to host names: a Redis Cluster that announces `localhost` (as managed ones
/// announce their DNS names) answers `MOVED <slot> localhost:<port>` once a slot moved while
/// Envoy's slot map is stale; Envoy follows it through the listener's DNS cache
/// (`dns_cache_config`) instead of handing the client the redirection.
fn moved_to_host_names(f: &Fixture) {
    let dir = f._dir.path().join("hostnames");
    let cluster = Cluster::start_announcing_localhost(&dir, 3);
    let port = free_port();
    let sc = Sidecar::start(&[(
        "named.yaml",
        rc(
            "named",
            &format!(
                "endpoints: {{static: [\"localhost:{}\"]}}\ntopology: {{refreshInterval: 1h, redirectRefreshThreshold: 1000}}\nlistener: {{port: {port}}}",
                cluster.servers[0].port
            ),
        ),
    )]);
    let mut c = sc.wait_serving(port, &["SET", "probe", "1"]);
    // The key's slot moves away from the server that owned it.
    let key = "moved:key";
    let (slot, owner, target) = cluster.move_slot_of(key);
    let target = &cluster.servers[target];
    let moved = cluster.servers[owner]
        .conn()
        .cmd(&["SET", key, "x"])
        .unwrap();
    assert!(
        moved
            .text()
            .starts_with(&format!("MOVED {slot} localhost:")),
        "the old owner does not redirect by name: {moved:?}"
    );
    // Envoy still sends the key to the old owner, gets the MOVED by name and follows it.
    assert_eq!(c.ok(&["SET", key, "followed"]), "OK");
    assert_eq!(target.conn().ok(&["GET", key]), "followed");
    assert_eq!(
        envoy_counter(
            &sc.admin,
            "cluster.redis/e2e/named.upstream_internal_redirect_succeeded_total"
        ),
        1,
        "Envoy did not follow the redirection itself"
    );
}

/// `connectionRateLimit`: Envoy opens at most that many new connections per second to each
/// server. With 1 per second, a server whose clients are killed five times in a row is
/// reconnected to at most twice in that burst; the other commands are refused
/// (`redis_cluster.connection_rate_limited`), and a second later commands flow again.
fn connection_rate_limit(f: &Fixture) {
    let dir = f._dir.path().join("rate");
    let server = standalone(&dir);
    let port = free_port();
    let sc = Sidecar::start(&[(
        "limited.yaml",
        rc(
            "limited",
            &format!(
                "mode: Sharded\nendpoints: {{static: [\"{}\"]}}\nlistener: {{port: {port}, connectionRateLimit: 1}}",
                server.addr()
            ),
        ),
    )]);
    sc.wait_serving(port, &["SET", "probe", "1"]);
    let admin = || crate::redis::conn(server.port, None);
    let mut refused = 0;
    for i in 0..5 {
        // Every client connection of the server is closed, so the next command needs a new
        // upstream connection.
        admin().ok(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]);
        let mut c = Conn::connect(&format!("127.0.0.1:{port}")).unwrap();
        if c.cmd(&["SET", "limited", &i.to_string()])
            .unwrap()
            .is_error()
        {
            refused += 1;
        }
    }
    assert!(
        refused >= 3,
        "only {refused} of 5 reconnections were refused"
    );
    let limited = envoy_counter(
        &sc.admin,
        "cluster.redis/e2e/limited.redis_cluster.connection_rate_limited",
    );
    assert!(
        limited >= 3,
        "Envoy counted {limited} rate-limited connections"
    );
    wait_until("commands flow again once the rate allows", || {
        let mut c = Conn::connect(&format!("127.0.0.1:{port}")).ok()?;
        (c.cmd(&["SET", "limited", "after"]).ok()?.text() == "OK").then_some(())
    });
}

fn sharded(f: &Fixture) {
    let dir = f._dir.path().join("sharded");
    let servers = [standalone(&dir), standalone(&dir), standalone(&dir)];
    let port = free_port();
    let spec = |addrs: &[String]| {
        rc(
            "cache",
            &format!(
                "mode: Sharded\nendpoints: {{static: [\"s0={}\", \"s1={}\", \"s2={}\"]}}\nlistener: {{port: {port}}}",
                addrs[0], addrs[1], addrs[2]
            ),
        )
    };
    let mut addrs: Vec<String> = servers.iter().map(|s| s.addr()).collect();
    let sc = Sidecar::start(&[("cache.yaml", spec(&addrs))]);
    let mut c = sc.wait_serving(port, &["SET", "probe", "1"]);
    wait_until("every shard is healthy and receives keys", || {
        for i in 0..50 {
            c.cmd(&["SET", &format!("warm:{i}"), "1"]).ok()?;
        }
        servers
            .iter()
            .all(|s| crate::redis::conn(s.port, None).ok(&["DBSIZE"]) != "0")
            .then_some(())
    });
    for s in &servers {
        crate::redis::conn(s.port, None).ok(&["FLUSHALL"]);
    }
    for i in 0..300 {
        c.ok(&["SET", &format!("k:{i}"), &i.to_string()]);
    }
    let keys_on = |port: u16| -> Vec<String> {
        let mut keys: Vec<String> = crate::redis::conn(port, None)
            .ok(&["KEYS", "k:*"])
            .split(',')
            .filter(|k| !k.is_empty())
            .map(String::from)
            .collect();
        keys.sort();
        keys
    };
    let before: Vec<Vec<String>> = servers.iter().map(|s| keys_on(s.port)).collect();
    println!(
        "  keys per shard: {:?}",
        before.iter().map(Vec::len).collect::<Vec<_>>()
    );
    assert!(before.iter().all(|k| !k.is_empty()), "every shard got keys");
    assert_eq!(before.iter().map(Vec::len).sum::<usize>(), 300);

    // s2 comes back on another port, under the same name.
    let [s0, s1, s2] = servers;
    drop(s2);
    let moved = standalone(&dir);
    addrs[2] = moved.addr();
    sc.write("cache.yaml", &spec(&addrs));
    wait_until("the moved shard receives its keys", || {
        let _ = c.cmd(&["SET", &before[2][0], "again"]);
        (crate::redis::conn(moved.port, None).ok(&["DBSIZE"]) != "0").then_some(())
    });
    for (server, keys) in [(&s0, &before[0]), (&s1, &before[1])] {
        for k in keys {
            let i = k.trim_start_matches("k:");
            assert_eq!(
                c.ok(&["GET", k]),
                i,
                "{k} moved away from {}",
                server.addr()
            );
        }
        let now = keys_on(server.port);
        assert!(
            keys.iter().all(|k| now.contains(k)),
            "a key left {}",
            server.addr()
        );
    }
    // Keys of s2 now go to the moved server, nowhere else.
    for k in before[2].iter().take(20) {
        c.ok(&["SET", k, "x"]);
    }
    assert!(keys_on(moved.port).len() >= 20.min(before[2].len()));
}

/// Mode Sharded: a server taken out of the endpoints (its Pod no longer Ready) gets no new
/// key at once, though it still answers Envoy's health checks; a command already in flight
/// on it still completes there.
fn sharded_removal(f: &Fixture) {
    let dir = f._dir.path().join("sharded-removal");
    let hosts = ["127.0.0.1", "127.0.0.2", "127.0.0.3"].map(String::from);
    let redis_port = crate::redis::port_on_every(&hosts);
    let servers = hosts
        .clone()
        .map(|h| crate::redis::start_server_on(&dir, &h, redis_port, false, None));
    let port = free_port();
    let objects = |s2_ready: bool| {
        let mut yaml = rc(
            "drain",
            &format!(
                "mode: Sharded\nendpoints: {{selector: {{matchLabels: {{app: drain}}}}}}\nport: {redis_port}\nlistener: {{port: {port}, opTimeout: 20s}}"
            ),
        );
        for (i, host) in hosts.iter().enumerate() {
            let ready = if i < 2 || s2_ready { "True" } else { "False" };
            yaml.push_str(&format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: s{i}, namespace: e2e, labels: {{app: drain}}}}\nstatus: {{podIP: {host}, conditions: [{{type: Ready, status: \"{ready}\"}}]}}\n"
            ));
        }
        yaml
    };
    let sc = Sidecar::start(&[("drain.yaml", objects(true))]);
    let mut c = sc.wait_serving(port, &["SET", "probe", "1"]);
    let dbsize = |s: &crate::redis::Server| -> u64 { s.conn().ok(&["DBSIZE"]).parse().unwrap() };
    wait_until("every shard is healthy and receives keys", || {
        for i in 0..50 {
            c.cmd(&["SET", &format!("warm:{i}"), "1"]).ok()?;
        }
        servers.iter().all(|s| dbsize(s) > 0).then_some(())
    });
    // A key that lives on s2.
    let key = (0..)
        .map(|i| format!("q:{i}"))
        .find(|k| {
            c.ok(&["SET", k, "x"]);
            let on_s2 = servers[2].conn().ok(&["EXISTS", k]) == "1";
            c.ok(&["DEL", k]);
            on_s2
        })
        .unwrap();
    // A write to it in flight while s2 leaves: s2 holds writes for 4 s (Envoy's Redis proxy
    // has no blocking commands; opTimeout is longer), and the SET through Envoy waits there.
    servers[2].conn().ok(&["CLIENT", "PAUSE", "4000", "WRITE"]);
    let mut in_flight = Conn::connect(&format!("127.0.0.1:{port}")).unwrap();
    let written = key.clone();
    let waiter =
        std::thread::spawn(move || in_flight.cmd(&["SET", &written, "done"]).map(|r| r.text()));
    wait_until("the SET waits on s2", || {
        servers[2]
            .conn()
            .ok(&["INFO", "clients"])
            .contains("blocked_clients:1")
            .then_some(())
    });

    let eds_acked = || -> Option<String> {
        let syncz: serde_json::Value =
            serde_json::from_str(&http_get(&sc.serve.debug, "/debug/syncz")?).ok()?;
        let eds = &syncz["proxies"][0]["types"]["EDS"];
        (eds["state"] == "SYNCED").then(|| eds["acked_version"].as_str().unwrap_or("").to_owned())
    };
    let before = wait_until("EDS in sync", eds_acked);
    sc.write("drain.yaml", &objects(false));
    wait_until("Envoy ACKed the endpoints without a Ready s2", || {
        eds_acked().filter(|v| *v != before)
    });
    assert!(
        servers[2]
            .conn()
            .ok(&["INFO", "clients"])
            .contains("blocked_clients:1"),
        "the SET is still in flight on s2 when it leaves the ring"
    );
    // New keys: none on s2 (which still answers health checks), all on the two others.
    for i in 0..300 {
        c.ok(&["SET", &format!("after:{i}"), "1"]);
    }
    let after = |s: &crate::redis::Server| {
        s.conn()
            .ok(&["KEYS", "after:*"])
            .split(',')
            .filter(|k| !k.is_empty())
            .count()
    };
    let sizes: Vec<usize> = servers.iter().map(after).collect();
    println!("  300 keys after s2 turned not Ready: {sizes:?}");
    assert_eq!(sizes[2], 0, "a key went to the server taken out");
    assert_eq!(sizes[0] + sizes[1], 300);

    // The write that was in flight on s2 completes there once s2 takes writes again.
    let reply = waiter
        .join()
        .unwrap()
        .expect("the in-flight client's connection");
    assert_eq!(reply, "OK", "the write in flight on s2");
    assert_eq!(servers[2].conn().ok(&["GET", &key]), "done");
}

/// Mode Sharded with `healthCheck.key`: Envoy checks with EXISTS, so an operator who sets
/// the key on a running server drains it out of the ring, and deleting it brings it back.
fn maintenance_key(f: &Fixture) {
    let dir = f._dir.path().join("maintenance");
    let servers = [standalone(&dir), standalone(&dir), standalone(&dir)];
    let port = free_port();
    let spec = rc(
        "maint",
        &format!(
            "mode: Sharded\nendpoints: {{static: [\"s0={}\", \"s1={}\", \"s2={}\"]}}\nsharding:\n  healthCheck: {{interval: 200ms, unhealthyThreshold: 2, key: redis-xds:maintenance}}\nlistener: {{port: {port}}}",
            servers[0].addr(),
            servers[1].addr(),
            servers[2].addr()
        ),
    );
    let sc = Sidecar::start(&[("maint.yaml", spec)]);
    let mut c = sc.wait_serving(port, &["SET", "probe", "1"]);
    let count = |s: &crate::redis::Server, pattern: &str| {
        s.conn()
            .ok(&["KEYS", pattern])
            .split(',')
            .filter(|k| !k.is_empty())
            .count()
    };
    let s2 = format!("{}::health_flags::", servers[2].addr());
    let s2_flags = || -> Option<String> {
        let clusters = http_get(&sc.admin, "/clusters")?;
        clusters
            .lines()
            .find(|l| l.contains(&s2))
            .map(str::to_owned)
    };
    wait_until("every shard healthy", || {
        s2_flags().filter(|l| l.ends_with("healthy"))
    });

    servers[2].conn().ok(&["SET", "redis-xds:maintenance", "1"]);
    wait_until("Envoy fails s2's health check", || {
        s2_flags().filter(|l| l.contains("failed_active_hc"))
    });
    for i in 0..300 {
        c.ok(&["SET", &format!("during:{i}"), "1"]);
    }
    let during: Vec<usize> = servers.iter().map(|s| count(s, "during:*")).collect();
    println!("  300 keys while s2 holds the maintenance key: {during:?}");
    assert_eq!(during[2], 0, "a key went to the server in maintenance");

    servers[2].conn().ok(&["DEL", "redis-xds:maintenance"]);
    let t = Instant::now();
    wait_until("s2 back in the ring", || {
        for i in 0..100 {
            c.cmd(&["SET", &format!("after:{i}"), "1"]).ok()?;
        }
        (count(&servers[2], "after:*") > 0).then_some(())
    });
    println!(
        "  s2 gets keys again {:.1}s after the key was deleted ({:?})",
        t.elapsed().as_secs_f64(),
        s2_flags()
    );
}

fn live_change(f: &Fixture) {
    let port = free_port();
    let sc = Sidecar::start(&[("main.yaml", rc("main", &main_spec(f, port, "")))]);
    sc.wait_serving(port, &["SET", "probe", "1"]);
    let pid = sc.envoy.child.id();
    let port2 = free_port();
    let started = Instant::now();
    sc.write(
        "second.yaml",
        &rc(
            "second",
            &format!(
                "endpoints: {{static: [{}]}}\nlistener: {{port: {port2}}}",
                f.second.static_entries()
            ),
        ),
    );
    sc.wait_serving(port2, &["PING"]);
    println!(
        "  new listener serving after {:.2}s",
        started.elapsed().as_secs_f64()
    );
    std::fs::remove_file(sc.manifests.join("second.yaml")).unwrap();
    let started = Instant::now();
    wait_until("the deleted listener closes", || {
        Conn::connect(&format!("127.0.0.1:{port2}"))
            .is_err()
            .then_some(())
    });
    println!(
        "  deleted listener closed after {:.2}s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(sc.envoy.child.id(), pid);
    assert!(
        crate::common::envoy_dynamic(&sc.admin).is_some(),
        "Envoy never restarted"
    );
}

fn bad_input(f: &Fixture) {
    let port = free_port();
    let sc = Sidecar::start(&[("main.yaml", rc("main", &main_spec(f, port, "")))]);
    let mut c = sc.wait_serving(port, &["SET", "probe", "1"]);
    let port2 = free_port();
    sc.write(
        "broken.yaml",
        "apiVersion: redis-xds.dev/v1alpha1\nkind: RedisCluster\nmetadata: {name: broken\n",
    );
    sc.write(
        "dangling.yaml",
        &rc("dangling", &format!("endpoints: {{static: [{}]}}\nlistener: {{port: {port2}, catchAll: {{cluster: missing}}}}", f.second.static_entries())),
    );
    let model = wait_until("both problems show in /debug/model", || {
        let body = http_get(&sc.serve.debug, "/debug/model")?;
        (body.contains("broken.yaml") && body.contains("RedisCluster \\\"missing\\\" not found"))
            .then_some(body)
    });
    assert!(model.contains("not valid YAML"), "{model}");
    for i in 0..200 {
        c.ok(&["SET", &format!("bad:{i}"), "v"]);
        assert_eq!(c.ok(&["GET", &format!("bad:{i}")]), "v");
    }
    assert!(
        Conn::connect(&format!("127.0.0.1:{port2}")).is_err(),
        "the dangling listener was not sent"
    );
    assert!(sc.listeners().iter().all(|l| !l.contains("dangling")));
}

/// Envoy 1.40's newer redis_proxy settings, end to end: seeds given as `localhost` (resolved
/// with the default family, IPv4 first), a RESP3 listener, a route that rewrites keys for a
/// tenant, and a module command Envoy would otherwise refuse.
fn capabilities(f: &Fixture) {
    f.main.flush();
    let port = free_port();
    let seeds = f.main.static_entries().replace("127.0.0.1", "localhost");
    let spec = format!(
        "endpoints: {{static: [{seeds}]}}\ntopology: {{refreshInterval: 1s}}\nlistener:\n  port: {port}\n  protocolVersion: RESP3\n  customCommands: [xds.probe]\n  connectionRateLimit: 100\n  routes:\n    - {{prefix: \"t:\", cluster: main, removePrefix: true, keyFormatter: \"tenant-a:%KEY%\"}}"
    );
    let sc = Sidecar::start(&[("main.yaml", rc("main", &spec))]);
    let sidecar = format!("127.0.0.1:{port}");
    // RESP3: a data command before `HELLO 3` is refused; after it, everything works.
    let mut c = wait_until("the RESP3 listener serves after HELLO 3", || {
        let mut c = Conn::connect(&sidecar).ok()?;
        let hello = c.cmd(&["HELLO", "3"]).ok()?;
        let Reply::Array(Some(fields)) = hello else {
            return None;
        };
        let proto = fields
            .chunks(2)
            .find(|kv| kv[0].text() == "proto")
            .map(|kv| kv[1].clone());
        assert_eq!(proto, Some(Reply::Int(3)), "HELLO 3 answers proto 3");
        (c.cmd(&["SET", "probe", "1"]).ok()?.text() == "OK").then_some(c)
    });
    let mut plain = Conn::connect(&sidecar).unwrap();
    let refused = plain.cmd(&["GET", "probe"]).unwrap();
    assert!(refused.is_error(), "a RESP2 client is refused: {refused:?}");

    // Host-name seeds: keys land on every primary of the cluster named by `localhost`.
    for i in 0..60 {
        c.ok(&["SET", &format!("k{i}"), "v"]);
    }
    for p in f.main.primaries() {
        assert!(
            f.main.conn(p).ok(&["DBSIZE"]) != "0",
            "primary {p} holds keys"
        );
    }

    // The tenant route: `t:x` is stored as `tenant-a:x`, and read back through the route.
    c.ok(&["SET", "t:x", "tenant value"]);
    assert!(holds(&f.main, "tenant-a:x") && !holds(&f.main, "t:x"));
    assert_eq!(c.ok(&["GET", "t:x"]), "tenant value");

    // A module command reaches Redis (which has no such module and counts one more error
    // reply); a command Envoy does not know is answered by Envoy itself, in Redis's words.
    let before = f.main.error_replies();
    let forwarded = c.cmd(&["xds.probe", "somekey"]).unwrap();
    assert!(forwarded.is_error(), "{forwarded:?}");
    assert_eq!(f.main.error_replies(), before + 1, "Redis saw xds.probe");
    let local = c.cmd(&["xds.other", "somekey"]).unwrap();
    assert!(local.is_error(), "{local:?}");
    assert_eq!(f.main.error_replies(), before + 1, "Envoy kept xds.other");
    drop(sc);
}

fn resilience(f: &Fixture) {
    let port = free_port();
    let xds_port = free_port();
    let xds = format!("127.0.0.1:{xds_port}");
    let tmp = tempfile::tempdir().unwrap();
    let manifests = tmp.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    std::fs::write(
        manifests.join("main.yaml"),
        rc("main", &main_spec(f, port, "")),
    )
    .unwrap();
    let mut serve = Some(start_serve_full(&manifests, &xds, &[], "info"));
    let (_envoy, _admin) = crate::common::start_envoy(
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
    let sidecar = format!("127.0.0.1:{port}");
    wait_until("the sidecar serves", || {
        let mut c = Conn::connect(&sidecar).ok()?;
        (c.cmd(&["SET", "probe", "1"]).ok()?.text() == "OK").then_some(())
    });

    // A bounded loop of commands while the control plane dies and comes back.
    let mut c = Conn::connect(&sidecar).unwrap();
    let mut failures = 0;
    for i in 0..1500 {
        if i == 300 {
            // Killed, not stopped: the worst case.
            serve = None;
        }
        if i == 400 {
            serve = Some(start_serve_full(&manifests, &xds, &[], "info"));
        }
        let key = format!("res:{i}");
        match (c.cmd(&["SET", &key, "v"]), c.cmd(&["GET", &key])) {
            (Ok(a), Ok(b)) if !a.is_error() && b.text() == "v" => {}
            other => {
                failures += 1;
                eprintln!("  command {i} failed: {other:?}");
            }
        }
    }
    assert_eq!(
        failures, 0,
        "commands failed while the control plane restarted"
    );
    let debug = serve.as_ref().unwrap().debug.clone();
    wait_until("Envoy reconnects to the restarted control plane", || {
        let syncz = http_get(&debug, "/debug/syncz")?;
        syncz.contains("e2e-app").then_some(())
    });

    // Kill a primary: its replica takes over and commands succeed again.
    let victim = f.main.primaries()[0];
    let pid = f
        .main
        .servers
        .iter()
        .find(|s| s.port == victim)
        .unwrap()
        .proc
        .child
        .id();
    let started = Instant::now();
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status();
    // Keys in every slot range: some go to the dead primary's slots.
    let keys: Vec<String> = (0..60).map(|i| format!("failover:{i}")).collect();
    wait_until("every slot is served again", || {
        let mut c = Conn::connect(&sidecar).ok()?;
        keys.iter()
            .all(|k| c.cmd(&["SET", k, "v"]).is_ok_and(|r| !r.is_error()))
            .then_some(())
    });
    println!(
        "  recovered from a primary failure in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert!(!f.main.primaries().contains(&victim));
}

/// An ACL user per node of the shared cluster, `<prefix><port>` with password
/// `pw-<port>` and every permission; removed on drop, whatever the scenario did.
pub struct AclUsers<'a>(&'a Cluster, &'static str);

impl<'a> AclUsers<'a> {
    pub fn create(cluster: &'a Cluster, prefix: &'static str) -> Self {
        let users = AclUsers(cluster, prefix);
        for s in &cluster.servers {
            let (user, password) = users.credentials(s.port);
            cluster.conn(s.port).ok(&[
                "ACL",
                "SETUSER",
                &user,
                "on",
                &format!(">{password}"),
                "~*",
                "&*",
                "+@all",
            ]);
        }
        users
    }

    /// The user name and password of the server on `port`.
    pub fn credentials(&self, port: u16) -> (String, String) {
        (format!("{}{port}", self.1), format!("pw-{port}"))
    }
}

impl Drop for AclUsers<'_> {
    fn drop(&mut self) {
        for s in &self.0.servers {
            let _ = self
                .0
                .conn(s.port)
                .cmd(&["ACL", "DELUSER", &format!("{}{}", self.1, s.port)]);
        }
    }
}

/// An ACL user per node (`endpointAuth`): Envoy authenticates to each server, discovered
/// replicas included, as that server's own user.
fn acl_user_per_node(f: &Fixture) {
    f.main.flush();
    let users = AclUsers::create(&f.main, "envoy-");
    let mut secrets = String::new();
    let mut entries = String::new();
    for s in &f.main.servers {
        let (user, password) = users.credentials(s.port);
        secrets.push_str(&format!(
            "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: node-{}, namespace: e2e}}\nstringData: {{username: {user}, password: {password}}}\n",
            s.port
        ));
        entries.push_str(&format!(
            "  - {{address: \"127.0.0.1:{}\", secretRef: {{name: node-{}}}}}\n",
            s.port, s.port
        ));
    }
    let port = free_port();
    let spec = format!(
        "endpoints: {{static: [{}]}}\nendpointAuth:\n{entries}listener: {{port: {port}, readPolicy: PreferReplica}}",
        f.main.static_entries()
    );
    let sc = Sidecar::start(&[("secrets.yaml", secrets), ("main.yaml", rc("main", &spec))]);
    let mut c = sc.wait_serving(port, &["SET", "probe", "1"]);
    for i in 0..60 {
        c.ok(&["SET", &format!("acl:{i}"), "v"]);
        c.ok(&["GET", &format!("acl:{i}")]);
    }
    // Each server sees Envoy's connections as its own user.
    for p in f.main.primaries().into_iter().chain(f.main.replicas()) {
        let clients = f.main.conn(p).ok(&["CLIENT", "LIST"]);
        assert!(
            clients.contains(&format!("user=envoy-{p} ")),
            "server {p} has a connection of user envoy-{p}:\n{clients}"
        );
    }
}
