//! redis-xds's own rules agree with real Envoy: for each setting redis-xds refuses that
//! Envoy's validation would pass, real Envoy 1.40, given that setting anyway (a static
//! bootstrap rendered from the accepted spec and then edited), mishandles it as the
//! problem message says.

use std::path::Path;

use serde_json::{Value, json};

use crate::common::{Proc, free_port, redis_xds, wait_until};
use crate::resp::Conn;
use crate::{Fixture, rc};

/// `render` of one RedisCluster: the problems it prints, and with none, the static
/// bootstrap.
fn render(dir: &Path, spec: &str) -> Result<Value, String> {
    let manifests = dir.join("manifests");
    let _ = std::fs::remove_dir_all(&manifests);
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(manifests.join("main.yaml"), rc("main", spec)).unwrap();
    let out = redis_xds()
        .args([
            "render",
            "--static-bootstrap",
            "--admin-port",
            "0",
            "--manifests",
        ])
        .arg(&manifests)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if stderr.contains("problem:") {
        return Err(stderr);
    }
    assert!(out.status.success(), "{stderr}");
    Ok(serde_json::from_slice(&out.stdout).unwrap())
}

/// Asserts that redis-xds refuses `spec` at `field`.
fn refused(dir: &Path, spec: &str, field: &str) {
    match render(dir, spec) {
        Ok(_) => panic!("redis-xds accepted {field} in:\n{spec}"),
        Err(problems) => assert!(problems.contains(field), "{field}: {problems}"),
    }
}

/// Real Envoy on `bootstrap`; returns it once its listener accepts connections.
fn envoy(dir: &Path, bootstrap: &Value, port: u16) -> Proc {
    let config = dir.join(format!("envoy-{port}.json"));
    std::fs::write(&config, bootstrap.to_string()).unwrap();
    let proc = crate::common::spawn_envoy(
        "envoy (edited static bootstrap)",
        &["-c".as_ref(), config.as_os_str()],
        &dir.join(format!("envoy-{port}.log")),
    );
    wait_until(&format!("envoy listens on {port}"), || {
        Conn::connect(&format!("127.0.0.1:{port}")).ok()
    });
    proc
}

fn proxy(bootstrap: &mut Value) -> &mut Value {
    &mut bootstrap["staticResources"]["listeners"][0]["filterChains"][0]["filters"][0]["typedConfig"]
}

pub fn own_rules(f: &Fixture) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let seeds = f.main.static_entries();
    let port = free_port();
    let base = format!("endpoints: {{static: [{seeds}]}}\nlistener:\n  port: {port}");
    let sidecar = format!("127.0.0.1:{port}");

    // keyFormatter with a '%' outside %KEY%: Envoy stops, the whole sidecar, on the first
    // command the route matches.
    refused(
        dir,
        &format!(
            "{base}\n  routes: [{{prefix: \"t:\", cluster: main, keyFormatter: \"100%:%KEY%\"}}]"
        ),
        "spec.listener.routes[0].keyFormatter",
    );
    let mut b = render(
        dir,
        &format!(
            "{base}\n  routes: [{{prefix: \"t:\", cluster: main, keyFormatter: \"pct:%KEY%\"}}]"
        ),
    )
    .unwrap();
    proxy(&mut b)["prefixRoutes"]["routes"][0]["keyFormatter"] = json!("100%:%KEY%");
    let mut e = envoy(dir, &b, port);
    let mut c = Conn::connect(&sidecar).unwrap();
    let _ = c.cmd(&["SET", "t:x", "1"]);
    let exited = wait_until("Envoy exits after a key formatter it cannot parse", || {
        e.child.try_wait().unwrap()
    });
    assert!(!exited.success(), "{exited:?}");
    drop(e);

    // customCommands with upper-case letters never match: Envoy answers the command itself
    // as unknown, and Redis never sees it.
    refused(
        dir,
        &format!("{base}\n  customCommands: [XDS.PROBE]"),
        "spec.listener.customCommands[0]",
    );
    let mut b = render(dir, &format!("{base}\n  customCommands: [xds.probe]")).unwrap();
    proxy(&mut b)["customCommands"] = json!(["XDS.PROBE"]);
    let e = envoy(dir, &b, port);
    let mut c = Conn::connect(&sidecar).unwrap();
    let before = f.main.error_replies();
    let reply = c.cmd(&["XDS.PROBE", "somekey"]).unwrap();
    assert!(reply.is_error(), "{reply:?}");
    assert_eq!(f.main.error_replies(), before, "Redis never saw XDS.PROBE");
    drop(e);

    // A fault on PING never fires: Envoy answers PING before it looks at faults.
    refused(
        dir,
        &format!("{base}\n  faults: [{{type: Error, percent: 100, commands: [PING]}}]"),
        "spec.listener.faults[0].commands[0]",
    );
    let mut b = render(
        dir,
        &format!("{base}\n  faults: [{{type: Error, percent: 100, commands: [GET]}}]"),
    )
    .unwrap();
    proxy(&mut b)["faults"][0]["commands"] = json!(["PING"]);
    let e = envoy(dir, &b, port);
    let mut c = Conn::connect(&sidecar).unwrap();
    assert_eq!(c.ok(&["PING"]), "PONG");
    drop(e);

    // A timeout under a millisecond: Envoy counts milliseconds, uses 0, and every command
    // fails.
    refused(
        dir,
        &format!("{base}\n  opTimeout: 500us"),
        "spec.listener.opTimeout",
    );
    let mut b = render(dir, &format!("{base}\n  opTimeout: 1ms")).unwrap();
    proxy(&mut b)["settings"]["opTimeout"] = json!("0.0005s");
    let e = envoy(dir, &b, port);
    let mut c = Conn::connect(&sidecar).unwrap();
    let failed = wait_until(
        "a command through the sub-millisecond timeout is answered",
        || c.cmd(&["SET", "k", "v"]).ok(),
    );
    assert!(failed.is_error(), "{failed:?}");
    drop(e);

    // enableHashtagging: false in mode Cluster: Envoy hashes the {...} part anyway. With
    // redirection off, a key sent to the wrong primary would come back as MOVED; none do.
    refused(
        dir,
        &format!("{base}\n  enableHashtagging: false"),
        "spec.listener.enableHashtagging",
    );
    let mut b = render(dir, &format!("{base}\n  enableRedirection: false")).unwrap();
    proxy(&mut b)["settings"]["enableHashtagging"] = json!(false);
    let e = envoy(dir, &b, port);
    let mut c = wait_until("the sidecar serves", || {
        let mut c = Conn::connect(&sidecar).ok()?;
        (c.cmd(&["SET", "{tag}probe", "1"]).ok()?.text() == "OK").then_some(c)
    });
    for i in 0..40 {
        assert_eq!(c.ok(&["SET", &format!("{{tag}}k{i}"), "v"]), "OK");
    }
    drop(e);

    // TCP keepalive longer than Linux takes: Envoy cannot set it, and every connection to
    // the servers fails.
    refused(
        dir,
        &format!("{base}\ntcpKeepalive: {{time: 24h}}"),
        "spec.tcpKeepalive.time",
    );
    let mut b = render(dir, &format!("{base}\ntcpKeepalive: {{time: 32767s}}")).unwrap();
    let keepalive =
        &mut b["staticResources"]["clusters"][0]["upstreamConnectionOptions"]["tcpKeepalive"];
    assert_eq!(keepalive["keepaliveTime"], 32767, "{keepalive}");
    keepalive["keepaliveTime"] = json!(86400);
    let e = envoy(dir, &b, port);
    let mut c = Conn::connect(&sidecar).unwrap();
    for _ in 0..3 {
        let r = c.cmd(&["SET", "k", "v"]).unwrap();
        assert!(r.is_error(), "{r:?}");
    }
    drop(e);
}
