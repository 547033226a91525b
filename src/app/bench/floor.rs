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

/// Serves `initial` to every new stream, then what `change` holds, until the returned
/// token is cancelled.
async fn start(
    initial: &crate::xds::ProxyResources,
    change: watch::Receiver<Option<Arc<discovery::DeltaDiscoveryResponse>>>,
) -> anyhow::Result<(
    SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
)> {
    let server = Server {
        initial_cds: Arc::new(response(CDS, &initial.clusters, "f-1")),
        initial_lds: Arc::new(response(LDS, &initial.listeners, "f-2")),
        change,
    };
    let listener = crate::xds::server::bind(([127, 0, 0, 1], 0).into())?;
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
    Ok((addr, shutdown, task))
}

/// Reconnect storms on the floor: every stream dropped at once and answered again from
/// the prebuilt responses (Delta only, as the floor speaks).
pub async fn storms(
    opts: &BenchOptions,
    initial: &crate::xds::ProxyResources,
) -> anyhow::Result<(Vec<Storm>, f64)> {
    let (_change_tx, change_rx) = watch::channel(None);
    let (addr, shutdown, task) = start(initial, change_rx).await?;
    let delta_only = BenchOptions {
        sotw_share: 0.0,
        ..*opts
    };
    let result = super::storms(addr, &delta_only).await;
    shutdown.cancel();
    let _ = task.await;
    result
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
    let (addr, shutdown, task) = start(initial, change_rx).await?;
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
