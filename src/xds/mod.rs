//! The ADS server: Envoy's Aggregated Discovery Service, State-of-the-World and Delta.
//!
//! It knows the xDS protocol (nonces, ACK/NACK, subscriptions, ordering) and nothing about
//! Redis: resources come from a [`ResourceSource`] published on a `watch` channel. Every
//! stream runs its own task; per-type protocol state lives in [`tracker::TypeTracker`], the
//! per-stream state visible to operators in [`Registry`].

pub mod auth;
pub mod conn;
pub mod grpc;
pub mod http2;
pub mod registry;
pub mod resource;
mod shared;
mod stream;
pub mod tracker;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Status, Streaming};

pub use self::registry::{ProxyStatus, Registry, TypeStatus, TypeStatuses, Variant};
pub use self::resource::{
    NodeIdentity, ProxyResources, Resource, ResourceMap, ResourceSource, ResourceType, TYPES,
};
pub use self::stream::identity;
use self::stream::{Request as AnyRequest, StreamContext};

/// Responses buffered per stream before the handler waits for the client to read.
const RESPONSE_BUFFER: usize = 4;

/// The ADS service.
#[derive(Clone, Debug)]
pub struct AdsServer {
    authenticator: Option<Arc<dyn auth::Authenticator>>,
    metrics: Arc<crate::metrics::Metrics>,
    source: watch::Receiver<Arc<dyn ResourceSource>>,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
    next_stream: Arc<AtomicU64>,
    reclaimer: Arc<crate::memory::Reclaimer>,
    shared: Arc<shared::Shared>,
}

impl AdsServer {
    /// A server that serves what `source` holds, records streams in `registry`, and ends
    /// every stream when `shutdown` is cancelled.
    pub fn new(
        source: watch::Receiver<Arc<dyn ResourceSource>>,
        registry: Arc<Registry>,
        metrics: Arc<crate::metrics::Metrics>,
        shutdown: CancellationToken,
    ) -> Self {
        AdsServer {
            authenticator: None,
            metrics,
            source,
            registry,
            shutdown,
            next_stream: Arc::new(AtomicU64::new(1)),
            reclaimer: Arc::default(),
            shared: Arc::default(),
        }
    }

    /// Uses `reclaimer` instead of the default one (release 1 s after departures pause, at
    /// most every 10 s).
    pub fn with_reclaimer(mut self, reclaimer: Arc<crate::memory::Reclaimer>) -> Self {
        self.reclaimer = reclaimer;
        self
    }

    /// Notified of every stream that ends; run it (`Reclaimer::run`) so that memory freed
    /// by departed proxies goes back to the system.
    pub fn reclaimer(&self) -> Arc<crate::memory::Reclaimer> {
        Arc::clone(&self.reclaimer)
    }

    /// Requires every stream to authenticate; its namespace then comes from the identity.
    pub fn with_authenticator(mut self, authenticator: Arc<dyn auth::Authenticator>) -> Self {
        self.authenticator = Some(authenticator);
        self
    }

    async fn authenticate<T>(
        &self,
        request: &Request<T>,
    ) -> Result<Option<auth::Principal>, Status> {
        let Some(a) = &self.authenticator else {
            return Ok(None);
        };
        let certs = request.extensions().get::<http2::PeerCertificates>();
        let principal = a
            .authenticate(request.metadata(), certs.map(|c| &*c.0))
            .await?;
        Ok(Some(principal))
    }

    /// The gRPC service, for [`http2::serve`].
    pub fn into_service(self) -> grpc::AdsService {
        grpc::AdsService::new(self)
    }

    /// Starts a stream over `incoming`; its responses arrive on the returned channel.
    fn start<Req>(
        &self,
        principal: Option<auth::Principal>,
        variant: Variant,
        incoming: Streaming<Req>,
        wrap: fn(Req) -> AnyRequest,
    ) -> mpsc::Receiver<stream::Outgoing>
    where
        Req: Send + 'static,
    {
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let ctx = StreamContext {
            principal,
            metrics: Arc::clone(&self.metrics),
            id,
            variant,
            source: self.source.clone(),
            registry: Arc::clone(&self.registry),
            reclaimer: Arc::clone(&self.reclaimer),
            shared: Arc::clone(&self.shared),
            shutdown: self.shutdown.clone(),
        };
        let (resp_tx, resp_rx) = mpsc::channel(RESPONSE_BUFFER);
        // Read by the stream itself (no task or channel in between: each costs memory for
        // every idle proxy).
        let mut requests: stream::Requests =
            Box::pin(incoming.map(move |r| r.map(wrap).map_err(Box::new)));
        tokio::spawn(async move {
            // The first request names the node; wait for it before anything else.
            let first = match requests.next().await {
                Some(Ok(m)) => m,
                _ => return,
            };
            stream::run(ctx, first, requests, resp_tx).await;
        });
        resp_rx
    }
}
