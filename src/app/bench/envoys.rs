//! The simulated Envoys of `bench` (`bench-client`), and the ADS stream opening that the
//! tests' client (tests/common/xds.rs) shares with them.
//!
//! Each simulated Envoy has a connection and an ADS stream of its own, subscribes to
//! clusters and listeners and ACKs as Envoy does. A stream the server refuses, or that
//! ends before it synced, is reported and retried after Envoy's own backoff for the ADS
//! stream (`GrpcMuxImpl`: jittered, from 500 ms doubling to at most 30 s).
//!
//! It talks to its driver over standard streams. Out, one line each: `synced <unix µs>`
//! when a stream has synced (`resync <unix µs>` after a reconnect), `refused <gRPC code> <message>`
//! when a stream was refused, `ready` once all have synced the first time, then per round
//! `ack <unix µs>` for each stream that ACKed the change (or `resync` lines) and `done`. In,
//! one command per line: `reconnect` makes every stream drop its connection at the same
//! moment and connect again at once; the end of input ends the process.

use std::io::{BufRead, Write};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3 as discovery;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Status, Streaming};

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";

/// Requests queued per stream before the sender waits.
const REQUEST_BUFFER: usize = 16;

/// How long a simulated Envoy waits for the server to connect, answer or push during the
/// sync: far beyond any healthy server at 10,000 streams, so that only a broken one fails.
const WAIT: Duration = Duration::from_secs(120);
/// How long a synced stream waits for the change: the bench sends it once every stream of
/// the fleet has synced and the server's memory has settled.
const CHANGE_WAIT: Duration = Duration::from_secs(600);
/// Refusals of one stream in a row after which the run fails: Envoy would go on, but a
/// server that refuses a stream this often is broken, and the bench says so.
const MAX_REFUSALS: u32 = 20;
/// Envoy's ADS retry backoff (`GrpcMuxImpl`): the first wait and the longest, ms.
const BACKOFF_BASE_MS: u64 = 500;
const BACKOFF_MAX_MS: u64 = 30_000;

/// The sending half and the responses of an open stream.
pub type Opened<Req, Resp> = (mpsc::Sender<Req>, Streaming<Resp>);

/// `request` with `authorization: Bearer <token>` when there is a token, as Envoy's
/// `initial_metadata` sends it (`redis-xds bootstrap --xds-auth token`).
fn with_token<T>(message: T, token: Option<&str>) -> Result<tonic::Request<T>, Status> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| Status::invalid_argument("the token is not valid metadata"))?;
        request.metadata_mut().insert("authorization", value);
    }
    Ok(request)
}

/// Opens a State-of-the-World stream on `channel` that sends what `requests` receives.
/// Envoy queues its first request before the call (a server need not answer the headers
/// first); so can the caller. `Err` is the server's refusal.
pub async fn open_sotw(
    channel: Channel,
    requests: mpsc::Receiver<discovery::DiscoveryRequest>,
    token: Option<&str>,
) -> Result<Streaming<discovery::DiscoveryResponse>, Status> {
    Ok(AggregatedDiscoveryServiceClient::new(channel)
        .stream_aggregated_resources(with_token(ReceiverStream::new(requests), token)?)
        .await?
        .into_inner())
}

/// Opens a Delta stream, as [`open_sotw`].
pub async fn open_delta(
    channel: Channel,
    requests: mpsc::Receiver<discovery::DeltaDiscoveryRequest>,
    token: Option<&str>,
) -> Result<Streaming<discovery::DeltaDiscoveryResponse>, Status> {
    Ok(AggregatedDiscoveryServiceClient::new(channel)
        .delta_aggregated_resources(with_token(ReceiverStream::new(requests), token)?)
        .await?
        .into_inner())
}

/// A request channel with `first` already queued.
async fn queued<T>(first: T) -> (mpsc::Sender<T>, mpsc::Receiver<T>) {
    let (tx, rx) = mpsc::channel(REQUEST_BUFFER);
    tx.send(first).await.expect("the receiver is held here");
    (tx, rx)
}

/// What the simulated Envoys do.
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    /// Streams.
    pub streams: usize,
    /// Share of streams speaking State of the World (the rest Delta).
    pub sotw_share: f64,
    /// ServiceAccount tokens: stream `i` sends token `i` modulo their number. None: no
    /// `authorization`.
    pub tokens: Vec<String>,
    /// Connect every stream at once, as a fleet does when its control plane restarts; by
    /// default at most 128 are connecting at a time, as a fleet that starts up does.
    pub all_at_once: bool,
}

/// What a stream tells the reporter.
enum Event {
    /// Synced (the first time, or again after a reconnect), at unix µs.
    Synced(u128),
    /// ACKed a change, at unix µs.
    Acked(u128),
    /// Refused, with the gRPC code's name.
    Refused(String),
}

/// Runs the simulated Envoys until standard input closes.
pub async fn run(addr: std::net::SocketAddr, opts: ClientOptions) -> anyhow::Result<()> {
    let streams = opts.streams;
    let (events_tx, events_rx) = mpsc::unbounded_channel::<Event>();
    let (reconnect_tx, reconnect_rx) = watch::channel(0u64);
    let sotw = (streams as f64 * opts.sotw_share).round() as usize;
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
        .http2_keep_alive_interval(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(30));
    let (fail_tx, mut fail_rx) = mpsc::channel::<String>(streams.max(1));
    let tokens: Arc<[String]> = opts.tokens.into();
    // A fleet of sidecars does not start in the same millisecond: bound the streams that
    // are still connecting, so the server's accept backlog is not what is measured.
    let ramp = Arc::new(tokio::sync::Semaphore::new(if opts.all_at_once {
        tokio::sync::Semaphore::MAX_PERMITS
    } else {
        128
    }));
    let mut tasks = Vec::with_capacity(streams);
    for i in 0..streams {
        let envoy = Envoy {
            endpoint: endpoint.clone(),
            i,
            sotw: i < sotw,
            tokens: Arc::clone(&tokens),
            events: events_tx.clone(),
        };
        let (fail_tx, reconnect) = (fail_tx.clone(), reconnect_rx.clone());
        let permit = Arc::clone(&ramp).acquire_owned().await?;
        tasks.push(tokio::spawn(async move {
            if let Err(e) = envoy.run(permit, reconnect).await {
                let _ = fail_tx.send(format!("stream {i}: {e:#}")).await;
            }
        }));
    }
    drop((events_tx, fail_tx));
    // Commands, read on a thread of their own (standard input blocks).
    let (commands_tx, mut commands) = mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if commands_tx.send(line).is_err() {
                break;
            }
        }
    });
    let report = report(streams, events_rx);
    tokio::pin!(report);
    let result = loop {
        tokio::select! {
            result = &mut report => break result,
            // One failed stream fails the run, with its reason, instead of leaving the
            // others waiting for it.
            Some(failure) = fail_rx.recv() => break Err(anyhow::anyhow!("a simulated Envoy failed: {failure}")),
            command = commands.recv() => match command.as_deref() {
                Some("reconnect") => { reconnect_tx.send_modify(|g| *g += 1); }
                Some(other) => break Err(anyhow::anyhow!("unknown command {other:?}")),
                None => break Ok(()),
            },
        }
    };
    for t in tasks {
        t.abort();
    }
    result
}

/// Prints each event as its line, `ready` once every stream synced, then `done` after
/// every `streams` ACKs or resyncs; returns only when every stream has failed.
async fn report(streams: usize, mut events: mpsc::UnboundedReceiver<Event>) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout();
    let mut synced = 0usize;
    let mut completed = 0usize;
    let mut ready = false;
    while let Some(event) = events.recv().await {
        match event {
            Event::Synced(at) if !ready => {
                writeln!(stdout, "synced {at}")?;
                synced += 1;
                if synced == streams {
                    ready = true;
                    writeln!(stdout, "ready")?;
                    stdout.flush()?;
                }
            }
            Event::Synced(at) => {
                writeln!(stdout, "resync {at}")?;
                completed += 1;
            }
            Event::Acked(at) => {
                writeln!(stdout, "ack {at}")?;
                completed += 1;
            }
            Event::Refused(code) => writeln!(stdout, "refused {code}")?,
        }
        if ready && completed == streams {
            completed = 0;
            writeln!(stdout, "done")?;
            stdout.flush()?;
        }
    }
    bail!("every simulated Envoy stopped")
}

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

fn now_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros()
}

/// The node of stream `i`: in namespace `bench`, unless it authenticates, when the server
/// takes the namespace from its token.
fn node(i: usize, authenticates: bool) -> Node {
    use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
    let namespace = Value {
        kind: Some(Kind::StringValue("bench".into())),
    };
    Node {
        id: format!("bench-{i}"),
        metadata: Some(Struct {
            fields: (!authenticates)
                .then(|| ("namespace".to_string(), namespace))
                .into_iter()
                .collect(),
        }),
        ..Default::default()
    }
}

/// Envoy's wait before its `attempt`th retry (from 1), ms: a full jitter over the
/// exponential bound. The jitter is a hash of the stream and attempt, so runs repeat.
fn backoff_ms(i: usize, attempt: u32) -> u64 {
    let bound = BACKOFF_BASE_MS
        .saturating_mul(1 << attempt.min(16).saturating_sub(1))
        .min(BACKOFF_MAX_MS);
    let mut h = (i as u64) << 8 ^ u64::from(attempt);
    h = h.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^= h >> 31;
    h % bound.max(1) + 1
}

/// Why a stream did not sync.
enum Failed {
    /// The server refused it or ended it first: retried, as Envoy does.
    Refused(Status),
    /// Anything else fails the run.
    Broken(anyhow::Error),
}

impl From<anyhow::Error> for Failed {
    fn from(e: anyhow::Error) -> Self {
        Failed::Broken(e)
    }
}

/// A synced stream: its request sender and responses, with the connection under them.
enum Session {
    Sotw(Opened<discovery::DiscoveryRequest, discovery::DiscoveryResponse>),
    Delta(Opened<discovery::DeltaDiscoveryRequest, discovery::DeltaDiscoveryResponse>),
}

/// One simulated Envoy.
struct Envoy {
    endpoint: Endpoint,
    i: usize,
    sotw: bool,
    tokens: Arc<[String]>,
    events: mpsc::UnboundedSender<Event>,
}

/// The next message of `responses`: `Refused` when the server ended the stream.
async fn next<T>(responses: &mut Streaming<T>, limit: Duration, what: &str) -> Result<T, Failed> {
    match bounded(responses.message(), limit, what).await? {
        Ok(Some(m)) => Ok(m),
        Ok(None) => Err(Failed::Refused(Status::unavailable(format!(
            "the stream ended before {what}"
        )))),
        Err(status) => Err(Failed::Refused(status)),
    }
}

impl Envoy {
    fn token(&self) -> Option<&str> {
        (!self.tokens.is_empty()).then(|| self.tokens[self.i % self.tokens.len()].as_str())
    }

    /// Connects, syncs, and ACKs changes; on each reconnect command drops the connection
    /// and does it again at once. Ends only with an error.
    async fn run(
        self,
        permit: tokio::sync::OwnedSemaphorePermit,
        mut reconnect: watch::Receiver<u64>,
    ) -> anyhow::Result<()> {
        let mut permit = Some(permit);
        loop {
            let mut refusals = 0u32;
            let mut session = loop {
                match self.sync().await {
                    Ok(s) => break s,
                    Err(Failed::Refused(status)) => {
                        refusals += 1;
                        let _ = self
                            .events
                            .send(Event::Refused(format!("{:?}", status.code())));
                        if refusals >= MAX_REFUSALS {
                            bail!("refused {refusals} times in a row, last: {status}");
                        }
                        tokio::time::sleep(Duration::from_millis(backoff_ms(self.i, refusals)))
                            .await;
                    }
                    Err(Failed::Broken(e)) => return Err(e),
                }
            };
            drop(permit.take());
            reconnect.borrow_and_update();
            let _ = self.events.send(Event::Synced(now_micros()));
            // Each push after the sync is a change of the measurement: ACK it and report
            // when, until the driver says reconnect.
            loop {
                tokio::select! {
                    changed = reconnect.changed() => {
                        if changed.is_err() {
                            bail!("the driver is gone");
                        }
                        break;
                    }
                    acked = ack_next(&mut session) => match acked {
                        Ok(()) => { let _ = self.events.send(Event::Acked(now_micros())); }
                        Err(Failed::Refused(status)) => bail!("the stream failed after its sync: {status}"),
                        Err(Failed::Broken(e)) => return Err(e),
                    },
                }
            }
            // Dropped together: the stream, and the connection under it (each simulated
            // Envoy has its own).
            drop(session);
        }
    }

    /// A new connection and stream, synced: CDS and LDS answered and ACKed.
    async fn sync(&self) -> Result<Session, Failed> {
        let channel = bounded(self.endpoint.connect(), WAIT, "the connection")
            .await?
            .map_err(|e| Failed::Refused(Status::unavailable(e.to_string())))?;
        let token = self.token();
        if self.sotw {
            let req = |type_url: &str, version: &str, nonce: &str, node: Option<Node>| {
                discovery::DiscoveryRequest {
                    node,
                    type_url: type_url.into(),
                    version_info: version.into(),
                    response_nonce: nonce.into(),
                    ..Default::default()
                }
            };
            let (tx, rx) = queued(req(CDS, "", "", Some(node(self.i, token.is_some())))).await;
            let mut responses = bounded(open_sotw(channel, rx, token), WAIT, "the headers")
                .await?
                .map_err(Failed::Refused)?;
            let cds = next(&mut responses, WAIT, "the CDS response").await?;
            send(&tx, req(CDS, &cds.version_info, &cds.nonce, None)).await?;
            send(&tx, req(LDS, "", "", None)).await?;
            let lds = next(&mut responses, WAIT, "the LDS response").await?;
            send(&tx, req(LDS, &lds.version_info, &lds.nonce, None)).await?;
            Ok(Session::Sotw((tx, responses)))
        } else {
            let req = |type_url: &str, nonce: &str, node: Option<Node>| {
                discovery::DeltaDiscoveryRequest {
                    node,
                    type_url: type_url.into(),
                    response_nonce: nonce.into(),
                    ..Default::default()
                }
            };
            let (tx, rx) = queued(req(CDS, "", Some(node(self.i, token.is_some())))).await;
            let mut responses = bounded(open_delta(channel, rx, token), WAIT, "the headers")
                .await?
                .map_err(Failed::Refused)?;
            let cds = next(&mut responses, WAIT, "the CDS response").await?;
            send(&tx, req(CDS, &cds.nonce, None)).await?;
            send(&tx, req(LDS, "", None)).await?;
            let lds = next(&mut responses, WAIT, "the LDS response").await?;
            send(&tx, req(LDS, &lds.nonce, None)).await?;
            Ok(Session::Delta((tx, responses)))
        }
    }
}

async fn send<T>(tx: &mpsc::Sender<T>, request: T) -> anyhow::Result<()> {
    tx.send(request)
        .await
        .map_err(|_| anyhow::anyhow!("the stream closed"))
}

/// Waits for the next push on a synced stream and ACKs it.
async fn ack_next(session: &mut Session) -> Result<(), Failed> {
    match session {
        Session::Sotw((tx, responses)) => {
            let change = next(responses, CHANGE_WAIT, "the push of a change").await?;
            let ack = discovery::DiscoveryRequest {
                type_url: change.type_url,
                version_info: change.version_info,
                response_nonce: change.nonce,
                ..Default::default()
            };
            send(tx, ack).await?;
        }
        Session::Delta((tx, responses)) => {
            let change = next(responses, CHANGE_WAIT, "the push of a change").await?;
            let ack = discovery::DeltaDiscoveryRequest {
                type_url: change.type_url,
                response_nonce: change.nonce,
                ..Default::default()
            };
            send(tx, ack).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_back_off_as_envoy_does_within_its_bounds() {
        for i in 0..50 {
            assert!((1..=500).contains(&backoff_ms(i, 1)));
            assert!((1..=1_000).contains(&backoff_ms(i, 2)));
            assert!((1..=30_000).contains(&backoff_ms(i, 12)));
        }
        // Jittered: streams refused together do not all come back together.
        let waits: std::collections::BTreeSet<u64> = (0..50).map(|i| backoff_ms(i, 3)).collect();
        assert!(waits.len() > 40, "{waits:?}");
    }
}
