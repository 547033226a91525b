//! The ADS server: Envoy's Aggregated Discovery Service, State-of-the-World and Delta.
//!
//! It knows the xDS protocol (nonces, ACK/NACK, subscriptions, ordering) and nothing about
//! Redis: resources come from a [`ResourceSource`] published on a `watch` channel. Every
//! stream runs its own task; per-type protocol state lives in [`tracker::TypeTracker`], the
//! per-stream state visible to operators in [`Registry`].
//!
//! Two kinds of client speak it ([`Profile`]): Envoy, served clusters, endpoints and
//! listeners; and istiod reading redis-xds as an `xds://` config source, served Istio
//! EnvoyFilters. Both go through the same streams and trackers.

pub mod auth;
pub mod grpc;
pub mod registry;
pub mod resource;
pub mod server;
mod shared;
mod stream;
pub mod tracker;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Status, Streaming};

pub use self::registry::{ProxyStatus, Registry, TypeStatus, TypeStatuses, Variant};
pub use self::resource::{
    ALL_TYPES, NodeIdentity, ProxyResources, Resource, ResourceMap, ResourceSource, ResourceType,
    TYPES,
};
pub use self::stream::identity;
use self::stream::{Request as AnyRequest, StreamContext};

/// Responses buffered per stream before the handler waits for the client to read (plus
/// one: a `futures_channel` bounded channel gives each sender a slot of its own).
const RESPONSE_BUFFER: usize = 4;

/// Which client a server speaks to: the types it serves, and what it does with a request
/// for any other.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Profile {
    /// Envoy: clusters, endpoints and listeners ([`TYPES`]). A request for any other type
    /// is ignored, as a management server does with a type it does not serve (Envoy waits
    /// for it as for any resource not sent yet).
    #[default]
    Envoy,
    /// istiod reading an `xds://` config source (`meshConfig.configSources`): EnvoyFilters.
    /// istiod asks for every Istio config type it knows and counts the source as synced
    /// only once each was answered (`adsc.HasSynced`), so every other type is answered
    /// once, empty.
    IstioConfigSource,
}

impl Profile {
    /// The types served, in make-before-break order.
    pub fn types(self) -> &'static [ResourceType] {
        match self {
            Profile::Envoy => &TYPES,
            Profile::IstioConfigSource => &[ResourceType::EnvoyFilter],
        }
    }

    /// Whether a request for a type not in [`Profile::types`] gets one empty response.
    pub fn answers_others_empty(self) -> bool {
        self == Profile::IstioConfigSource
    }

    /// The served type that `type_url` names, if any.
    fn served(self, type_url: &str) -> Option<ResourceType> {
        ResourceType::from_type_url(type_url).filter(|t| self.types().contains(t))
    }
}

/// The ADS service.
#[derive(Clone, Debug)]
pub struct AdsServer {
    profile: Profile,
    authenticator: Option<Arc<dyn auth::Authenticator>>,
    metrics: Arc<crate::metrics::Metrics>,
    source: watch::Receiver<Arc<dyn ResourceSource>>,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
    next_stream: Arc<AtomicU64>,
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
        // Every type's NACK count is exported from the start, at 0, so that a rate over it
        // exists before the first NACK.
        for t in resource::ALL_TYPES {
            let _ = metrics.nacks.get_or_create(&[("type", t.short())]);
        }
        AdsServer {
            profile: Profile::Envoy,
            authenticator: None,
            metrics,
            source,
            registry,
            shutdown,
            next_stream: Arc::new(AtomicU64::new(1)),
            shared: Arc::default(),
        }
    }

    /// Serves `profile`'s client rather than Envoy.
    pub fn with_profile(mut self, profile: Profile) -> Self {
        self.profile = profile;
        self
    }

    /// Requires every stream to authenticate; its namespace then comes from the identity.
    pub fn with_authenticator(mut self, authenticator: Arc<dyn auth::Authenticator>) -> Self {
        self.authenticator = Some(authenticator);
        self
    }

    async fn authenticate<T>(
        &self,
        request: &Request<T>,
    ) -> Result<Option<auth::Authenticated>, Status> {
        let Some(a) = &self.authenticator else {
            return Ok(None);
        };
        // DER certificates the TLS client presented, leaf first (tonic's TLS puts them in
        // the request's extensions).
        let certs: Option<Vec<Vec<u8>>> = request
            .peer_certs()
            .map(|c| c.iter().map(|d| d.as_ref().to_vec()).collect());
        Ok(Some(
            a.authenticate(request.metadata(), certs.as_deref()).await?,
        ))
    }

    /// The gRPC service, for [`server::serve`].
    pub fn into_service(self) -> grpc::AdsService {
        grpc::AdsService::new(self)
    }

    /// Starts a stream over `incoming`; its responses arrive on the returned channel. The
    /// stream stops when the returned token is cancelled (the response body holds it as a
    /// drop guard: the client reset the stream or closed the connection; or its
    /// authentication was refused after it started) or when the server shuts down.
    fn start<Req>(
        &self,
        principal: Option<auth::Principal>,
        peer: Option<std::net::SocketAddr>,
        variant: Variant,
        incoming: Streaming<Req>,
        wrap: fn(Req) -> AnyRequest,
    ) -> (stream::ResponseReceiver, CancellationToken)
    where
        Req: Send + 'static,
    {
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        // One token for "stop": the server's shutdown, or the response body dropped. A
        // child token costs less per idle stream than watching the channel for closing.
        let stop = self.shutdown.child_token();
        let gone = stop.clone();
        let ctx = StreamContext {
            profile: self.profile,
            principal: principal.map(Box::new),
            metrics: Arc::clone(&self.metrics),
            id,
            peer,
            variant,
            source: self.source.clone(),
            registry: Arc::clone(&self.registry),
            shared: Arc::clone(&self.shared),
            shutdown: stop,
        };
        let (resp_tx, resp_rx) = futures_channel::mpsc::channel(RESPONSE_BUFFER);
        // Read by the stream itself (no task or channel in between: each costs memory for
        // every idle proxy).
        let requests: stream::Requests = Box::pin(
            incoming.map(move |r| r.map(wrap).map_err(|s| Box::new(grpc::request_error(s)))),
        );
        tokio::spawn(stream::run(stream::Stream::new(ctx), requests, resp_tx));
        (resp_rx, gone)
    }
}
