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
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3 as discovery;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
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
    /// of as many rounds of its own.
    pub rounds: usize,
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
    let t0 = t0
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as f64;
    let mut out: Vec<f64> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("ack ")?.parse::<f64>().ok())
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
    let ads = AdsServer::new(rx, Arc::clone(&registry), Arc::default(), shutdown.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stop = shutdown.clone();
    let server = tokio::spawn(async move {
        crate::xds::server::serve(listener, ads.into_service(), None, stop).await
    });
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
    let out = Command::new(std::env::current_exe()?)
        .args([
            "bench-floor",
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
    let floor: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("reading the floor's result")?;
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

mod floor {
    //! The floor: a Delta-only ADS server that answers the initial requests with prebuilt
    //! responses and then broadcasts one prebuilt change. No protocol state, no compile.

    use super::*;
    use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
        AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
    };
    use envoy_types::pb::google::protobuf::Any;
    use std::pin::Pin;
    use tonic::{Request, Response, Status, Streaming};

    /// What the floor's process reports: the p99 of each round, ms, and the RSS growth per
    /// stream, KiB.
    pub struct Floor {
        pub p99_rounds_ms: Vec<f64>,
        pub cpu_rounds_s: Vec<f64>,
        pub rss_per_stream_kib: f64,
    }

    #[derive(Clone)]
    struct Server {
        initial_cds: Arc<discovery::DeltaDiscoveryResponse>,
        initial_lds: Arc<discovery::DeltaDiscoveryResponse>,
        change: watch::Receiver<Option<Arc<discovery::DeltaDiscoveryResponse>>>,
    }

    type Out<T> = Pin<Box<dyn futures_util::Stream<Item = Result<T, Status>> + Send>>;

    #[tonic::async_trait]
    impl AggregatedDiscoveryService for Server {
        type StreamAggregatedResourcesStream = Out<discovery::DiscoveryResponse>;
        type DeltaAggregatedResourcesStream = Out<discovery::DeltaDiscoveryResponse>;

        async fn stream_aggregated_resources(
            &self,
            _: Request<Streaming<discovery::DiscoveryRequest>>,
        ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
            Err(Status::unimplemented("the floor is Delta only"))
        }

        async fn delta_aggregated_resources(
            &self,
            request: Request<Streaming<discovery::DeltaDiscoveryRequest>>,
        ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
            let mut incoming = request.into_inner();
            let (tx, rx) = mpsc::channel(4);
            let me = self.clone();
            tokio::spawn(async move {
                let mut change = me.change.clone();
                loop {
                    tokio::select! {
                        m = incoming.message() => match m {
                            Ok(Some(r)) if r.response_nonce.is_empty() => {
                                let resp = if r.type_url == CDS { &me.initial_cds } else { &me.initial_lds };
                                if tx.send(Ok((**resp).clone())).await.is_err() { return }
                            }
                            Ok(Some(_)) => {}
                            _ => return,
                        },
                        c = change.changed() => {
                            if c.is_err() { return }
                            let next = change.borrow_and_update().clone();
                            if let Some(resp) = next
                                && tx.send(Ok((*resp).clone())).await.is_err()
                            {
                                return;
                            }
                        }
                    }
                }
            });
            Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
        }
    }

    fn response(
        type_url: &str,
        resources: &crate::xds::ResourceMap,
        nonce: &str,
    ) -> discovery::DeltaDiscoveryResponse {
        discovery::DeltaDiscoveryResponse {
            type_url: type_url.into(),
            nonce: nonce.into(),
            resources: resources
                .values()
                .map(|r| discovery::Resource {
                    name: r.name.clone(),
                    version: r.version.clone(),
                    resource: Some(Any {
                        type_url: type_url.into(),
                        value: r.body.to_vec(),
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    pub async fn run(
        opts: &BenchOptions,
        initial: &crate::xds::ProxyResources,
        changed: &crate::xds::ProxyResources,
    ) -> anyhow::Result<Floor> {
        // The change: exactly the listeners whose bytes differ, as the real server sends.
        let diff: crate::xds::ResourceMap = changed
            .listeners
            .iter()
            .filter(|(n, r)| {
                initial
                    .listeners
                    .get(*n)
                    .is_none_or(|o| o.version != r.version)
            })
            .map(|(n, r)| (n.clone(), Arc::clone(r)))
            .collect();
        let (change_tx, change_rx) = watch::channel(None);
        let server = Server {
            initial_cds: Arc::new(response(CDS, &initial.clusters, "f-1")),
            initial_lds: Arc::new(response(LDS, &initial.listeners, "f-2")),
            change: change_rx,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            // The same keepalive and socket settings as the xDS port.
            tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(crate::xds::server::KEEPALIVE_INTERVAL))
                .http2_keepalive_timeout(Some(crate::xds::server::KEEPALIVE_TIMEOUT))
                .tcp_keepalive(Some(crate::xds::server::TCP_KEEPALIVE))
                .tcp_nodelay(true)
                .add_service(AggregatedDiscoveryServiceServer::new(server))
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                    stop.cancelled().await
                })
                .await
        });
        let rss_before = rss_kib();
        let delta_only = BenchOptions {
            sotw_share: 0.0,
            ..*opts
        };
        let mut clients = Clients::start(addr, &delta_only)?;
        clients.expect("ready")?;
        let rss_connected = rss_kib();
        // The same change again in every round, under a new nonce: the floor does not look
        // at what it sends.
        let mut p99_rounds_ms = Vec::with_capacity(opts.rounds);
        let mut cpu_rounds_s = Vec::with_capacity(opts.rounds);
        for round in 0..opts.rounds.max(1) {
            // Each change reaches an idle fleet and server, as the server's rounds do.
            settle().await;
            let cpu0 = cpu_s();
            let t0 = SystemTime::now();
            let nonce = format!("f-{}", round + 3);
            change_tx.send_replace(Some(Arc::new(response(LDS, &diff, &nonce))));
            let lines = clients.expect("done")?;
            cpu_rounds_s.push(cpu_s() - cpu0);
            p99_rounds_ms.push(percentile(&latencies(&lines, t0), 0.99));
        }
        clients.stop();
        shutdown.cancel();
        let _ = task.await;
        Ok(Floor {
            p99_rounds_ms,
            cpu_rounds_s,
            rss_per_stream_kib: (rss_connected - rss_before) / opts.streams as f64,
        })
    }
}

/// The floor alone (`bench-floor`), printing `{"p99_rounds_ms": [..], "rss_per_stream_kib"}`.
pub async fn floor_only(opts: BenchOptions) -> anyhow::Result<()> {
    let first = snapshot(model(opts.clusters, 0), None);
    let changed = snapshot(model(opts.clusters, 1), Some(&first));
    let node = crate::xds::NodeIdentity {
        namespace: Some("bench".into()),
        labels: None,
    };
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

/// The simulated Envoys (`bench-client`): opens the streams, syncs, prints `ready`, then
/// for each round ACKs the next push on every stream and prints `ack <unix micros>` per
/// stream and `done`, until stdin closes.
pub async fn client(addr: SocketAddr, streams: usize, sotw_share: f64) -> anyhow::Result<()> {
    let (ready_tx, ready_rx) = mpsc::channel::<()>(streams.max(1));
    let (ack_tx, ack_rx) = mpsc::channel::<u128>(streams.max(1));
    let sotw = (streams as f64 * sotw_share).round() as usize;
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .http2_keep_alive_interval(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(30));
    let (fail_tx, mut fail_rx) = mpsc::channel::<String>(streams.max(1));
    let mut tasks = Vec::new();
    // A fleet of sidecars does not connect in the same millisecond: bound the streams that
    // are still connecting, so the server's accept backlog is not what is measured.
    let connecting = Arc::new(tokio::sync::Semaphore::new(128));
    for i in 0..streams {
        let endpoint = endpoint.clone();
        let (ready_tx, ack_tx, fail_tx) = (ready_tx.clone(), ack_tx.clone(), fail_tx.clone());
        let permit = Arc::clone(&connecting).acquire_owned().await?;
        tasks.push(tokio::spawn(async move {
            let result = if i < sotw {
                sotw_stream(endpoint, i, permit, ready_tx, ack_tx).await
            } else {
                delta_stream(endpoint, i, permit, ready_tx, ack_tx).await
            };
            if let Err(e) = result {
                let _ = fail_tx.send(format!("stream {i}: {e:#}")).await;
            }
        }));
    }
    drop((ready_tx, ack_tx, fail_tx));
    // Stdin closing means go, at any point.
    let quit = tokio::task::spawn_blocking(|| {
        let mut s = String::new();
        let _ = std::io::stdin().read_line(&mut s);
    });
    let report = report_rounds(streams, ready_rx, ack_rx);
    tokio::select! {
        result = report => result?,
        // One failed stream fails the run, with its reason, instead of leaving the others
        // waiting for it.
        Some(failure) = fail_rx.recv() => bail!("a simulated Envoy failed: {failure}"),
        _ = quit => {}
    }
    for t in tasks {
        t.abort();
    }
    Ok(())
}

/// Prints `ready` once every stream has synced, then each round's `ack <unix micros>` lines
/// and `done`; returns only when a stream failed.
async fn report_rounds(
    streams: usize,
    mut ready_rx: mpsc::Receiver<()>,
    mut ack_rx: mpsc::Receiver<u128>,
) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout();
    for _ in 0..streams {
        ready_rx
            .recv()
            .await
            .context("a stream failed before it synced")?;
    }
    writeln!(stdout, "ready")?;
    stdout.flush()?;
    loop {
        for _ in 0..streams {
            let at = ack_rx
                .recv()
                .await
                .context("a stream failed before it ACKed the change")?;
            writeln!(stdout, "ack {at}")?;
        }
        writeln!(stdout, "done")?;
        stdout.flush()?;
    }
}

fn node(i: usize) -> Option<Node> {
    use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
    Some(Node {
        id: format!("bench-{i}"),
        metadata: Some(Struct {
            fields: [(
                "namespace".to_string(),
                Value {
                    kind: Some(Kind::StringValue("bench".into())),
                },
            )]
            .into_iter()
            .collect(),
        }),
        ..Default::default()
    })
}

/// How long a simulated Envoy waits for the server to connect, answer or push during the
/// sync: far beyond any healthy server at 10,000 streams, so that only a broken one fails.
const WAIT: Duration = Duration::from_secs(120);
/// How long a synced stream waits for the change: the bench sends it once every stream of
/// the fleet has synced and the server's memory has settled.
const CHANGE_WAIT: Duration = Duration::from_secs(600);

/// `future`, or an error naming `what` after `limit`.
async fn bounded<T>(
    future: impl std::future::Future<Output = T>,
    limit: Duration,
    what: &str,
) -> anyhow::Result<T> {
    tokio::time::timeout(limit, future)
        .await
        .map_err(|_| anyhow::anyhow!("no {what} within {limit:?}"))
}

/// The next response on a stream, within `limit`; a stream that ends or fails is an error.
async fn next<T>(
    responses: &mut tonic::Streaming<T>,
    limit: Duration,
    what: &str,
) -> anyhow::Result<T> {
    bounded(responses.message(), limit, what)
        .await?
        .with_context(|| format!("the stream failed before {what}"))?
        .with_context(|| format!("the stream ended before {what}"))
}

fn now_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros()
}

async fn delta_stream(
    endpoint: tonic::transport::Endpoint,
    i: usize,
    permit: tokio::sync::OwnedSemaphorePermit,
    ready: mpsc::Sender<()>,
    ack: mpsc::Sender<u128>,
) -> anyhow::Result<()> {
    let req = |type_url: &str, nonce: &str, node| discovery::DeltaDiscoveryRequest {
        node,
        type_url: type_url.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    };
    let mut client = AggregatedDiscoveryServiceClient::new(
        bounded(endpoint.connect(), WAIT, "the connection").await??,
    );
    let (tx, rx) = mpsc::channel(4);
    // Sent before the call, as Envoy does: a server need not answer the headers first.
    tx.send(req(CDS, "", node(i))).await?;
    let mut responses = bounded(
        client.delta_aggregated_resources(ReceiverStream::new(rx)),
        WAIT,
        "the response headers",
    )
    .await??
    .into_inner();
    let cds = next(&mut responses, WAIT, "the CDS response").await?;
    tx.send(req(CDS, &cds.nonce, None)).await?;
    tx.send(req(LDS, "", None)).await?;
    let lds = next(&mut responses, WAIT, "the LDS response").await?;
    tx.send(req(LDS, &lds.nonce, None)).await?;
    drop(permit);
    ready.send(()).await?;
    // Each push after the sync is a change of the measurement: ACK it and report when, until
    // the process ends.
    loop {
        let change = next(&mut responses, CHANGE_WAIT, "the push of a change").await?;
        tx.send(req(&change.type_url, &change.nonce, None)).await?;
        ack.send(now_micros()).await?;
    }
}

async fn sotw_stream(
    endpoint: tonic::transport::Endpoint,
    i: usize,
    permit: tokio::sync::OwnedSemaphorePermit,
    ready: mpsc::Sender<()>,
    ack: mpsc::Sender<u128>,
) -> anyhow::Result<()> {
    let req = |type_url: &str, version: &str, nonce: &str, node| discovery::DiscoveryRequest {
        node,
        type_url: type_url.into(),
        version_info: version.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    };
    let mut client = AggregatedDiscoveryServiceClient::new(
        bounded(endpoint.connect(), WAIT, "the connection").await??,
    );
    let (tx, rx) = mpsc::channel(4);
    // Sent before the call, as Envoy does: a server need not answer the headers first.
    tx.send(req(CDS, "", "", node(i))).await?;
    let mut responses = bounded(
        client.stream_aggregated_resources(ReceiverStream::new(rx)),
        WAIT,
        "the response headers",
    )
    .await??
    .into_inner();
    let cds = next(&mut responses, WAIT, "the CDS response").await?;
    tx.send(req(CDS, &cds.version_info, &cds.nonce, None))
        .await?;
    tx.send(req(LDS, "", "", None)).await?;
    let lds = next(&mut responses, WAIT, "the LDS response").await?;
    tx.send(req(LDS, &lds.version_info, &lds.nonce, None))
        .await?;
    drop(permit);
    ready.send(()).await?;
    loop {
        let change = next(&mut responses, CHANGE_WAIT, "the push of a change").await?;
        tx.send(req(
            &change.type_url,
            &change.version_info,
            &change.nonce,
            None,
        ))
        .await?;
        ack.send(now_micros()).await?;
    }
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
