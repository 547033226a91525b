//! `bench`: the control plane under N simulated Envoys, against a measured floor.
//!
//! The server runs in this process; the simulated Envoys run in a child process (the same
//! binary, `bench-client`), so the server's CPU time and memory are its own. Every stream
//! subscribes to clusters and listeners and ACKs the way Envoy does. Once all are synced,
//! one RedisCluster changes; each client reports the wall-clock time at which it ACKed the
//! resulting push, and the latency is measured from the change (before compile) to each
//! ACK. The floor is a minimal server that pushes the very same encoded bytes to the same
//! streams and does nothing else.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use envoy_types::pb::envoy::service::discovery::v3 as discovery;
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;

use crate::model::{Model, ObjectKey, RedisClusterObject};
use crate::snapshot::Snapshot;
use crate::xds::{AdsServer, Registry, ResourceSource};

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";

/// What to measure.
#[derive(Clone, Copy, Debug)]
pub struct BenchOptions {
    /// Simulated Envoys.
    pub streams: usize,
    /// RedisClusters in the model.
    pub clusters: usize,
    /// Share of streams speaking State of the World (the rest Delta).
    pub sotw_share: f64,
    /// Changes pushed to the synced fleet one after another (at least 1); the server's
    /// figures are those of the round with the median p99, the floor's p99 is the median
    /// of as many rounds of its own. With `reconnect`, storms instead of changes.
    pub rounds: usize,
    /// Measure reconnect storms instead of changes ([`run_reconnect`]).
    pub reconnect: bool,
}

/// The results.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    /// Streams.
    pub streams: usize,
    /// RedisClusters.
    pub clusters: usize,
    /// SotW share.
    pub sotw_share: f64,
    /// Changes measured ([`BenchOptions::rounds`]).
    pub rounds: usize,
    /// Change to ACK, 99th percentile, of each round in order, ms.
    pub p99_rounds_ms: Vec<f64>,
    /// The floor's p99 of each of its rounds in order, ms.
    pub floor_p99_rounds_ms: Vec<f64>,
    /// Change to ACK, median (the round with the median p99, as the next three).
    pub p50_ms: f64,
    /// Change to ACK, 99th percentile.
    pub p99_ms: f64,
    /// Change to the last ACK.
    pub max_ms: f64,
    /// Server CPU time from the change to the last ACK (the same round).
    pub cpu_s: f64,
    /// Server RSS growth per connected, idle stream.
    pub rss_per_stream_kib: f64,
    /// Server live heap growth per connected, idle stream (what the allocator handed out,
    /// whether or not the pages were touched).
    pub heap_per_stream_kib: f64,
    /// Server RSS after every stream disconnected (and the server gave freed memory back),
    /// relative to before they connected.
    pub rss_after_disconnect_ratio: f64,
    /// Server RSS after the last of two more fleets connected, synced, took a change and
    /// left, relative to after the one before: 1.0 means a cycle keeps nothing.
    pub rss_second_cycle_ratio: f64,
    /// Server RSS after every stream of the first fleet disconnected minus before they
    /// connected, KiB (what `rss_after_disconnect_ratio` is made of).
    pub rss_kept_kib: f64,
    /// Of that, jemalloc's own metadata, KiB: kept for the fleet's peak and reused by the
    /// next fleet ([`crate::memory::allocator_metadata`]).
    pub allocator_metadata_kept_kib: f64,
    /// Server live heap after the last fleet left minus before the first connected, KiB:
    /// what the server kept (the new snapshot, the registry's table) — a leak grows it
    /// with every fleet.
    pub heap_retained_kib: f64,
    /// Compile of the whole model.
    pub compile_ms: f64,
    /// Compile of the changed model, reusing the compile of the one before (what a change
    /// costs): one RedisCluster changed.
    pub recompile_ms: f64,
    /// The floor's change-to-ACK p99, the median of its rounds.
    pub floor_p99_ms: f64,
    /// The floor's CPU time from the change to the last ACK, s, in its round with the
    /// median p99 (as [`Report::cpu_s`] for the server).
    pub floor_cpu_s: f64,
    /// The floor's RSS growth per stream.
    pub floor_rss_per_stream_kib: f64,
    /// p99_ms / floor_p99_ms: two medians.
    pub ratio_to_floor: f64,
    /// The default debounce that production adds on top (quiet period).
    pub debounce_quiet_ms: f64,
    /// The live heap per connected, idle stream by jemalloc size class: `(size in bytes,
    /// allocations per stream)`, the classes that grew by at least one allocation per 20
    /// streams, largest share first. A heap profile by size: which buffer is which is read
    /// from the libraries' sources (`BENCHMARKS.md`).
    pub heap_classes_per_stream: Vec<(u64, f64)>,
}

/// Allocations per stream by size class between two readings of
/// [`crate::memory::live_by_size_class`], the larger shares of bytes first.
fn classes_per_stream(
    before: &[(u64, u64)],
    after: &[(u64, u64)],
    streams: usize,
) -> Vec<(u64, f64)> {
    let before: std::collections::BTreeMap<u64, u64> = before.iter().copied().collect();
    let mut out: Vec<(u64, f64)> = after
        .iter()
        .map(|(size, n)| {
            let was = before.get(size).copied().unwrap_or(0);
            (*size, (*n as f64 - was as f64) / streams.max(1) as f64)
        })
        .filter(|(_, per)| *per >= 0.05)
        .collect();
    out.sort_by(|a, b| (b.0 as f64 * b.1).total_cmp(&(a.0 as f64 * a.1)));
    out
}

/// A model of `n` RedisClusters like the examples: Cluster mode, a listener each, a prefix
/// route to the next one and a 10% write mirror to the one after.
pub fn model(n: usize, variant: usize) -> Model {
    let mut m = Model::default();
    for i in 0..n {
        let name = format!("rc-{i}");
        let spec = serde_json::from_value(json!({
            "endpoints": {"static": [format!("10.0.{}.{}:6379", i / 250, i % 250 + 1), format!("10.1.{}.{}:6379", i / 250, i % 250 + 1)]},
            "topology": {"refreshInterval": "5s"},
            "listener": {
                "port": 10000 + i,
                "readPolicy": "PreferReplica",
                "routes": [{"prefix": if i == 0 { format!("v{variant}:") } else { "r:".into() }, "cluster": format!("rc-{}", (i + 1) % n)}],
                "catchAll": {"mirror": [{"cluster": format!("rc-{}", (i + 2) % n), "percent": 10, "excludeReadCommands": true}]}
            }
        }))
        .expect("a valid generated spec");
        let key = ObjectKey::new("bench", name);
        let object = RedisClusterObject::new(key.clone(), spec, i as u64);
        m.redis_clusters.insert(key, object.into());
    }
    m
}

fn snapshot(model: Model, previous: Option<&Snapshot>) -> Snapshot {
    let compiled = crate::compile::recompile(&model, previous.map(|p| (&*p.model, &*p.compiled)));
    Snapshot::build(
        Arc::new(model),
        Arc::new(compiled),
        previous,
        Instant::now(),
    )
}

/// Resident set size of this process, KiB.
fn rss_kib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0.0)
}

/// Peak resident set size of this process since the last [`reset_peak_rss`], KiB.
fn peak_rss_kib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(f64::NAN)
}

/// Starts the peak RSS over from the current RSS (`5` to `/proc/self/clear_refs`,
/// proc(5)).
fn reset_peak_rss() -> anyhow::Result<()> {
    std::fs::write("/proc/self/clear_refs", "5")
        .context("resetting the peak RSS through /proc/self/clear_refs")
}

/// The live heap, KiB (NaN where the allocator cannot tell).
fn heap_kib() -> f64 {
    crate::memory::heap_in_use().map_or(f64::NAN, |b| b as f64 / 1024.0)
}

/// User plus system CPU time of this process, seconds.
fn cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<f64>().ok())
        .sum();
    ticks / 100.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

struct Clients {
    child: Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Clients {
    fn start(addr: SocketAddr, opts: &BenchOptions) -> anyhow::Result<Clients> {
        let mut child = Command::new(std::env::current_exe()?)
            .args([
                "bench-client",
                "--addr",
                &addr.to_string(),
                "--streams",
                &opts.streams.to_string(),
            ])
            .args(["--sotw-share", &opts.sotw_share.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the simulated Envoys")?;
        let lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        Ok(Clients { child, lines })
    }

    fn expect(&mut self, word: &str) -> anyhow::Result<Vec<String>> {
        let mut before = Vec::new();
        for line in self.lines.by_ref() {
            let line = line?;
            if line == word {
                return Ok(before);
            }
            before.push(line);
        }
        bail!("the simulated Envoys exited before {word:?}")
    }

    /// Sends one command line to the simulated Envoys.
    fn command(&mut self, command: &str) -> anyhow::Result<()> {
        let stdin = self
            .child
            .stdin
            .as_mut()
            .context("the simulated Envoys' input")?;
        writeln!(stdin, "{command}")?;
        stdin.flush()?;
        Ok(())
    }

    fn stop(mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Latencies from `t0` to each reported ACK, sorted, in ms.
fn latencies(lines: &[String], t0: SystemTime) -> Vec<f64> {
    times_after(lines, "ack ", t0)
}

/// Times from `t0` to each line that starts with `prefix` and then gives unix µs, sorted,
/// in ms.
fn times_after(lines: &[String], prefix: &str, t0: SystemTime) -> Vec<f64> {
    let t0 = t0
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as f64;
    let mut out: Vec<f64> = lines
        .iter()
        .filter_map(|l| l.strip_prefix(prefix)?.parse::<f64>().ok())
        .map(|us| (us - t0) / 1000.0)
        .collect();
    out.sort_by(f64::total_cmp);
    out
}

/// Waits until `done` holds, for at most 60 s.
async fn wait_until(done: impl Fn() -> bool, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        if Instant::now() > deadline {
            bail!("{what} after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Waits until jemalloc has returned what was freed: its resident heap stops falling
/// (readings 250 ms apart stay within 1% or 64 KiB of each other for a whole decay
/// period, 1 s), for at most 15 s.
async fn settle() {
    let resident = || crate::memory::heap_resident().unwrap_or(0) as f64;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = resident();
    let mut steady = 0;
    while steady < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = resident();
        if (last - now).abs() <= (last * 0.01).max(64.0 * 1024.0) {
            steady += 1;
        } else {
            steady = 0;
        }
        last = now;
    }
}

/// One change pushed to the synced fleet: its latencies from the change to each stream's
/// ACK, ms, and the server's CPU time until the last ACK, s.
#[derive(Clone, Copy, Debug)]
struct Round {
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    cpu_s: f64,
}

/// The item with the median `key` (the lower middle one of an even count); `None` for
/// none.
fn median_by<T: Copy>(items: &[T], key: impl Fn(&T) -> f64) -> Option<T> {
    let mut sorted = items.to_vec();
    sorted.sort_by(|a, b| key(a).total_cmp(&key(b)));
    sorted.get(sorted.len().checked_sub(1)? / 2).copied()
}

/// The server under measurement, in this process, on a loopback port: what `rx` holds, its
/// streams recorded in `registry`, until `shutdown`.
fn serve_in_process(
    rx: watch::Receiver<Arc<dyn ResourceSource>>,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) -> anyhow::Result<(
    SocketAddr,
    tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
)> {
    let ads = AdsServer::new(rx, registry, Arc::default(), shutdown.clone());
    let listener = crate::xds::server::bind(([127, 0, 0, 1], 0).into())?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        crate::xds::server::serve(listener, ads.into_service(), None, shutdown).await
    });
    Ok((addr, server))
}

/// The floor (`bench-floor` with `extra` flags) in a fresh process of its own, so that
/// neither measurement inherits the other's heap: its standard output, one JSON object.
fn run_floor(opts: &BenchOptions, extra: &[&str]) -> anyhow::Result<Vec<u8>> {
    let out = Command::new(std::env::current_exe()?)
        .arg("bench-floor")
        .args(extra)
        .args([
            "--streams",
            &opts.streams.to_string(),
            "--clusters",
            &opts.clusters.to_string(),
            "--rounds",
            &opts.rounds.to_string(),
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("running the floor")?;
    if !out.status.success() {
        bail!("the floor failed");
    }
    Ok(out.stdout)
}

/// Runs the benchmark.
pub async fn run(opts: BenchOptions) -> anyhow::Result<Report> {
    let base = model(opts.clusters, 0);
    let median_ms = |f: &dyn Fn()| {
        let mut runs: Vec<f64> = (0..5)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64() * 1000.0
            })
            .collect();
        runs.sort_by(f64::total_cmp);
        runs[2]
    };
    let compile_ms = median_ms(&|| drop(crate::compile::compile(&base)));
    let recompile_ms = {
        let compiled = crate::compile::compile(&base);
        let mut changed = model(opts.clusters, 1);
        changed.share_unchanged(&base);
        median_ms(&|| {
            drop(crate::compile::recompile(
                &changed,
                Some((&base, &compiled)),
            ))
        })
    };

    // The server.
    let first = Arc::new(snapshot(base, None));
    let (tx, rx) = watch::channel::<Arc<dyn ResourceSource>>(first.clone());
    let registry = Arc::new(Registry::default());
    let shutdown = CancellationToken::new();
    let (addr, server) = serve_in_process(rx, Arc::clone(&registry), shutdown.clone())?;
    // Once every stream of a fleet has gone and the allocator has given the freed memory
    // back.
    let departed = async || {
        wait_until(|| registry.is_empty(), "streams still registered").await?;
        settle().await;
        Ok::<(), anyhow::Error>(())
    };
    // Once a connected fleet is idle: the first pushes' buffers were given back.
    let idle = settle;

    // The starting value is a warm server: one proxy connected, synced and left, so the
    // serving code is paged in and lazily built runtime structures exist, as on any
    // server that has seen a proxy.
    let warm = BenchOptions {
        streams: 1,
        sotw_share: 0.0,
        ..opts
    };
    let mut one = Clients::start(addr, &warm)?;
    one.expect("ready")?;
    one.stop();
    departed().await?;

    let rss_before = rss_kib();
    let heap_before = heap_kib();
    let classes_before = crate::memory::live_by_size_class().unwrap_or_default();
    let metadata_kib =
        || crate::memory::allocator_metadata().map_or(f64::NAN, |b| b as f64 / 1024.0);
    let metadata_before = metadata_kib();
    let mut clients = Clients::start(addr, &opts)?;
    clients.expect("ready")?;
    idle().await;
    let rss_connected = rss_kib();
    let heap_connected = heap_kib();
    let heap_classes_per_stream = classes_per_stream(
        &classes_before,
        &crate::memory::live_by_size_class().unwrap_or_default(),
        opts.streams,
    );

    // Each change arrives as a model (the sources' output); the clock starts before the
    // compile. Every round starts from an idle fleet, as the first one does.
    let mut current = first;
    let opts = BenchOptions {
        rounds: opts.rounds.max(1),
        ..opts
    };
    let mut rounds: Vec<Round> = Vec::with_capacity(opts.rounds);
    for variant in 1..=opts.rounds {
        if variant > 1 {
            idle().await;
        }
        let mut next = model(opts.clusters, variant);
        next.share_unchanged(&current.model);
        let cpu0 = cpu_s();
        let t0 = SystemTime::now();
        let changed = Arc::new(snapshot(next, Some(&current)));
        tx.send_replace(changed.clone());
        // Only the server holds snapshots from here on, and it retires the replaced one as
        // in production.
        crate::snapshot::publish::retire(std::mem::replace(&mut current, changed));
        let lines = clients.expect("done")?;
        let cpu = cpu_s() - cpu0;
        let lat = latencies(&lines, t0);
        if lat.len() != opts.streams {
            bail!(
                "{} of {} streams ACKed change {variant}",
                lat.len(),
                opts.streams
            );
        }
        rounds.push(Round {
            p50_ms: percentile(&lat, 0.5),
            p99_ms: percentile(&lat, 0.99),
            max_ms: lat.last().copied().unwrap_or(f64::NAN),
            cpu_s: cpu,
        });
    }
    clients.stop();
    departed().await?;
    let rss_after = rss_kib();
    let metadata_after = metadata_kib();

    // Two more fleets connect, sync, take a change and leave: without a leak the last
    // ends where the one before left the server.
    let mut previous = rss_after;
    let mut rss_after_cycle = rss_after;
    for cycle in rounds.len() + 1..rounds.len() + 3 {
        let mut again = Clients::start(addr, &opts)?;
        again.expect("ready")?;
        let mut changed = model(opts.clusters, cycle);
        changed.share_unchanged(&current.model);
        let next = Arc::new(snapshot(changed, Some(&current)));
        tx.send_replace(next.clone());
        crate::snapshot::publish::retire(std::mem::replace(&mut current, next));
        again.expect("done")?;
        again.stop();
        departed().await?;
        previous = rss_after_cycle;
        rss_after_cycle = rss_kib();
    }
    let heap_retained = heap_kib() - heap_before;
    shutdown.cancel();
    let _ = server.await;

    // The floor: the same bytes, pushed by a server that does nothing else, in a fresh
    // process of its own so that neither measurement inherits the other's heap.
    let out = run_floor(&opts, &[])?;
    let floor: serde_json::Value =
        serde_json::from_slice(&out).context("reading the floor's result")?;
    let numbers = |field: &str| -> Vec<f64> {
        floor[field]
            .as_array()
            .map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect())
            .unwrap_or_default()
    };
    let floor_p99_rounds_ms = numbers("p99_rounds_ms");
    let floor_cpu_rounds_s = numbers("cpu_rounds_s");
    let floor_rounds: Vec<(f64, f64)> = floor_p99_rounds_ms
        .iter()
        .copied()
        .zip(floor_cpu_rounds_s.iter().copied())
        .collect();
    let (floor_p99_ms, floor_cpu_s) =
        median_by(&floor_rounds, |r| r.0).unwrap_or((f64::NAN, f64::NAN));
    let floor_rss_per_stream_kib = floor["rss_per_stream_kib"].as_f64().unwrap_or(f64::NAN);

    let p99_rounds_ms: Vec<f64> = rounds.iter().map(|r| r.p99_ms).collect();
    let typical = median_by(&rounds, |r| r.p99_ms).expect("at least one round");
    Ok(Report {
        streams: opts.streams,
        clusters: opts.clusters,
        sotw_share: opts.sotw_share,
        rounds: rounds.len(),
        p99_rounds_ms,
        floor_p99_rounds_ms,
        p50_ms: typical.p50_ms,
        p99_ms: typical.p99_ms,
        max_ms: typical.max_ms,
        cpu_s: typical.cpu_s,
        rss_per_stream_kib: (rss_connected - rss_before) / opts.streams as f64,
        heap_per_stream_kib: (heap_connected - heap_before) / opts.streams as f64,
        rss_after_disconnect_ratio: rss_after / rss_before,
        rss_kept_kib: rss_after - rss_before,
        allocator_metadata_kept_kib: metadata_after - metadata_before,
        rss_second_cycle_ratio: rss_after_cycle / previous,
        heap_retained_kib: heap_retained,
        compile_ms,
        recompile_ms,
        floor_p99_ms,
        floor_cpu_s,
        floor_rss_per_stream_kib,
        ratio_to_floor: typical.p99_ms / floor_p99_ms,
        debounce_quiet_ms: crate::snapshot::publish::Debounce::default()
            .quiet
            .as_secs_f64()
            * 1000.0,
        heap_classes_per_stream,
    })
}

pub mod envoys;
mod floor;

/// The floor alone (`bench-floor`), printing `{"p99_rounds_ms": [..], "rss_per_stream_kib"}`.
pub async fn floor_only(opts: BenchOptions) -> anyhow::Result<()> {
    let first = snapshot(model(opts.clusters, 0), None);
    let changed = snapshot(model(opts.clusters, 1), Some(&first));
    let node = crate::xds::NodeIdentity {
        namespace: Some("bench".into()),
        labels: None,
    };
    if opts.reconnect {
        let (rounds, rss_settled_kib) = floor::storms(&opts, &first.resources_for(&node)).await?;
        let out = FloorStorms {
            rounds,
            rss_settled_kib,
        };
        println!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    let f = floor::run(
        &opts,
        &first.resources_for(&node),
        &changed.resources_for(&node),
    )
    .await?;
    println!(
        "{}",
        json!({
            "p99_rounds_ms": f.p99_rounds_ms,
            "cpu_rounds_s": f.cpu_rounds_s,
            "rss_per_stream_kib": f.rss_per_stream_kib,
        })
    );
    Ok(())
}

/// What `bench --reconnect` measures: a fleet of synced streams that all drop their
/// connections at the same moment and connect again at once, as when every sidecar of a
/// redis-xds replica moves to another during a rollout.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StormReport {
    /// Streams.
    pub streams: usize,
    /// RedisClusters.
    pub clusters: usize,
    /// SotW share.
    pub sotw_share: f64,
    /// Storms measured; the figures are those of the storm with the median
    /// `resync_all_ms`.
    pub rounds: usize,
    /// From the drop to the last stream synced again, of each storm in order, ms.
    pub resync_all_rounds_ms: Vec<f64>,
    /// From the drop to the last stream synced again, ms.
    pub resync_all_ms: f64,
    /// From the drop to a stream synced again, median over the streams, ms.
    pub resync_p50_ms: f64,
    /// From the drop to a stream synced again, 99th percentile, ms.
    pub resync_p99_ms: f64,
    /// Server CPU time from the drop to the last resync, s.
    pub cpu_s: f64,
    /// Server peak RSS from the drop to the last resync, KiB.
    pub storm_peak_rss_kib: f64,
    /// Server RSS with the fleet connected, synced and idle before the storm, KiB.
    pub rss_settled_kib: f64,
    /// `storm_peak_rss_kib / rss_settled_kib`.
    pub peak_to_settled: f64,
    /// Streams the server refused (or ended before they synced) during the storms.
    pub refused: usize,
    /// The floor's drop-to-last-resync of each storm, ms.
    pub floor_resync_all_rounds_ms: Vec<f64>,
    /// The floor's drop-to-last-resync, its median storm, ms.
    pub floor_resync_all_ms: f64,
    /// The floor's CPU time in that storm, s.
    pub floor_cpu_s: f64,
    /// The floor's peak RSS in that storm, KiB.
    pub floor_storm_peak_rss_kib: f64,
    /// The floor's RSS with its fleet settled, KiB.
    pub floor_rss_settled_kib: f64,
    /// `resync_all_ms / floor_resync_all_ms`: two medians.
    pub ratio_to_floor: f64,
}

/// One storm: its figures as [`StormReport`] names them.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
struct Storm {
    all_ms: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_s: f64,
    peak_rss_kib: f64,
    refused: usize,
}

/// Drops every stream of `clients` at once and waits until all have synced again.
fn storm(clients: &mut Clients, streams: usize) -> anyhow::Result<Storm> {
    reset_peak_rss()?;
    let cpu0 = cpu_s();
    let t0 = SystemTime::now();
    clients.command("reconnect")?;
    let lines = clients.expect("done")?;
    let cpu = cpu_s() - cpu0;
    let peak = peak_rss_kib();
    let resync = times_after(&lines, "resync ", t0);
    if resync.len() != streams {
        bail!("{} of {streams} streams synced again", resync.len());
    }
    Ok(Storm {
        all_ms: resync.last().copied().unwrap_or(f64::NAN),
        p50_ms: percentile(&resync, 0.5),
        p99_ms: percentile(&resync, 0.99),
        cpu_s: cpu,
        peak_rss_kib: peak,
        refused: lines.iter().filter(|l| l.starts_with("refused ")).count(),
    })
}

/// `rounds` storms on a fleet of `opts.streams` at `addr`, each from a settled fleet; and
/// the settled RSS before the first.
async fn storms(addr: SocketAddr, opts: &BenchOptions) -> anyhow::Result<(Vec<Storm>, f64)> {
    let mut clients = Clients::start(addr, opts)?;
    clients.expect("ready")?;
    settle().await;
    let settled = rss_kib();
    let mut out = Vec::with_capacity(opts.rounds.max(1));
    for round in 0..opts.rounds.max(1) {
        if round > 0 {
            settle().await;
        }
        out.push(storm(&mut clients, opts.streams)?);
    }
    clients.stop();
    Ok((out, settled))
}

/// Runs the reconnect benchmark: the server in this process, then the floor in its own.
pub async fn run_reconnect(opts: BenchOptions) -> anyhow::Result<StormReport> {
    let first = Arc::new(snapshot(model(opts.clusters, 0), None));
    let (_tx, rx) = watch::channel::<Arc<dyn ResourceSource>>(first);
    let shutdown = CancellationToken::new();
    let (addr, server) = serve_in_process(rx, Arc::default(), shutdown.clone())?;
    let (rounds, rss_settled_kib) = storms(addr, &opts).await?;
    shutdown.cancel();
    let _ = server.await;

    let out = run_floor(&opts, &["--reconnect"])?;
    let floor: FloorStorms = serde_json::from_slice(&out).context("reading the floor's result")?;
    let typical = median_by(&rounds, |r| r.all_ms).context("at least one storm")?;
    let floor_typical = median_by(&floor.rounds, |r| r.all_ms).context("a floor storm")?;
    Ok(StormReport {
        streams: opts.streams,
        clusters: opts.clusters,
        sotw_share: opts.sotw_share,
        rounds: rounds.len(),
        resync_all_rounds_ms: rounds.iter().map(|r| r.all_ms).collect(),
        resync_all_ms: typical.all_ms,
        resync_p50_ms: typical.p50_ms,
        resync_p99_ms: typical.p99_ms,
        cpu_s: typical.cpu_s,
        storm_peak_rss_kib: typical.peak_rss_kib,
        rss_settled_kib,
        peak_to_settled: typical.peak_rss_kib / rss_settled_kib,
        refused: rounds.iter().map(|r| r.refused).sum(),
        floor_resync_all_rounds_ms: floor.rounds.iter().map(|r| r.all_ms).collect(),
        floor_resync_all_ms: floor_typical.all_ms,
        floor_cpu_s: floor_typical.cpu_s,
        floor_storm_peak_rss_kib: floor_typical.peak_rss_kib,
        floor_rss_settled_kib: floor.rss_settled_kib,
        ratio_to_floor: typical.all_ms / floor_typical.all_ms,
    })
}

/// What `bench-floor --reconnect` prints.
#[derive(serde::Serialize, serde::Deserialize)]
struct FloorStorms {
    rounds: Vec<Storm>,
    rss_settled_kib: f64,
}

/// The reconnect report as text lines.
pub fn storm_text(r: &StormReport) -> String {
    format!(
        "streams {} (SotW share {}), RedisClusters {}; every stream dropped at once, {} storms\n\
         drop to all synced again, the median storm: {:.1} ms (per stream p50 {:.1} ms, p99 {:.1} ms); by storm: {}\n\
         floor (same bytes, minimal server): {:.1} ms (by storm: {}); ratio to floor {:.2}\n\
         server CPU {:.2} s (floor {:.2} s); RSS settled {:.0} KiB, peak in the storm {:.0} KiB ({:.2}x; floor {:.0} -> {:.0} KiB); streams refused {}",
        r.streams,
        r.sotw_share,
        r.clusters,
        r.rounds,
        r.resync_all_ms,
        r.resync_p50_ms,
        r.resync_p99_ms,
        ms_list(&r.resync_all_rounds_ms),
        r.floor_resync_all_ms,
        ms_list(&r.floor_resync_all_rounds_ms),
        r.ratio_to_floor,
        r.cpu_s,
        r.floor_cpu_s,
        r.rss_settled_kib,
        r.storm_peak_rss_kib,
        r.peak_to_settled,
        r.floor_rss_settled_kib,
        r.floor_storm_peak_rss_kib,
        r.refused,
    )
}

fn ms_list(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format!("{v:.1}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The report as text lines.
pub fn text(r: &Report) -> String {
    format!(
        "streams {} (SotW share {}), RedisClusters {}\n\
         change to ACK, the round with the median p99 of {}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (debounce quiet period 0; production adds {:.0} ms); p99 by round: {}\n\
         floor (same bytes, minimal server): p99 {:.1} ms (median; by round: {}); ratio to floor {:.2}\n\
         server CPU {:.2} s (floor {:.2} s); RSS per idle stream {:.1} KiB (floor {:.1} KiB), live heap per stream {:.1} KiB\n\
         after every stream left: RSS {:.0}% of before ({:.0} KiB more, of which jemalloc's metadata {:.0} KiB), a further fleet {:.0}% of the one before; heap kept {:.0} KiB\n\
         compile of {} RedisClusters: {:.1} ms; of the change: {:.1} ms\n\
         live heap per idle stream by size class (bytes x allocations): {}",
        r.streams,
        r.sotw_share,
        r.clusters,
        r.rounds,
        r.p50_ms,
        r.p99_ms,
        r.max_ms,
        r.debounce_quiet_ms,
        ms_list(&r.p99_rounds_ms),
        r.floor_p99_ms,
        ms_list(&r.floor_p99_rounds_ms),
        r.ratio_to_floor,
        r.cpu_s,
        r.floor_cpu_s,
        r.rss_per_stream_kib,
        r.floor_rss_per_stream_kib,
        r.heap_per_stream_kib,
        r.rss_after_disconnect_ratio * 100.0,
        r.rss_kept_kib,
        r.allocator_metadata_kept_kib,
        r.rss_second_cycle_ratio * 100.0,
        r.heap_retained_kib,
        r.clusters,
        r.compile_ms,
        r.recompile_ms,
        r.heap_classes_per_stream
            .iter()
            .map(|(size, n)| format!("{size} x {n:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}
