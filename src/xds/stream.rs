//! One ADS stream: a loop over {resources changed, client request, shutdown}.
//!
//! Both variants share the loop and the make-before-break logic; they differ only in how
//! requests are read into the [`TypeTracker`]s and how responses are built.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3 as discovery;
use envoy_types::pb::google::protobuf::{Struct, value::Kind};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::{Instrument, debug, info, warn};

use super::Profile;
use super::registry::{Entry, ProxyStatus, Registry, TypeStatuses, Variant};
use super::resource::{
    NodeIdentity, PerType, ProxyResources, Resource, ResourceMap, ResourceSource, ResourceType,
    state_version,
};
use super::shared::{AvailableKey, KeepAlive, Memo, PlanKey, ReadyKey, addr, keep};
use super::tracker::{Received, State, TypeTracker};
use imbl::ordmap::DiffItem;

/// A request of either variant, reduced to what the trackers need.
pub(super) enum Request {
    Sotw(Box<discovery::DiscoveryRequest>),
    Delta(Box<discovery::DeltaDiscoveryRequest>),
}

impl Request {
    fn node(&self) -> Option<&Node> {
        match self {
            Request::Sotw(r) => r.node.as_ref(),
            Request::Delta(r) => r.node.as_ref(),
        }
    }

    fn type_url(&self) -> &str {
        match self {
            Request::Sotw(r) => &r.type_url,
            Request::Delta(r) => &r.type_url,
        }
    }
}

/// A request as the stream reads it.
pub(super) type Incoming = Result<Request, Box<Status>>;
/// The requests of a stream, decoded.
pub(super) type Requests =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Incoming> + Send + 'static>>;
/// What the stream hands to the response writer. Both sides are boxed: a channel's block
/// holds 32 items whatever its bound, so the item's size is paid 32 times by every idle
/// stream.
pub(super) type Outgoing = Result<Box<Response>, Box<Status>>;
/// The stream's side of its response channel. `futures_channel`'s bounded channel rather
/// than tokio's: tokio's keeps a block of 32 slots and two cache-line-padded fields per
/// channel (about 1.1 KiB for every idle stream), `futures_channel`'s a node per queued
/// item and about 250 bytes.
pub(super) type ResponseSender = futures_channel::mpsc::Sender<Outgoing>;
/// The response body's side.
pub(super) type ResponseReceiver = futures_channel::mpsc::Receiver<Outgoing>;

/// A response of either variant, as it goes on the wire: the resources are the snapshot's
/// encoded bytes, shared with every other stream that sends them, and are copied once,
/// into the response's frame (`super::grpc`).
#[derive(Debug)]
pub(super) struct Response {
    pub variant: Variant,
    /// The response's `type_url`: a served type's, or any type a [`Profile`] answers empty.
    pub type_url: Cow<'static, str>,
    /// The `type_url` of the `Any` each resource is wrapped in.
    pub resource_type_url: &'static str,
    /// `version_info` (SotW) or `system_version_info` (Delta).
    pub version: String,
    pub nonce: String,
    /// SotW: the complete set; Delta: the new and changed resources.
    pub resources: super::tracker::Resources,
    /// Delta only: `removed_resources`.
    pub removed: Vec<String>,
}

/// Completes at `at`, or never.
async fn until(at: Option<SystemTime>) {
    match at {
        Some(at) => {
            let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
            tokio::time::sleep(wait).await;
        }
        None => std::future::pending().await,
    }
}

/// Reads namespace and labels from node metadata; anything else there is ignored.
pub fn identity(node: &Node) -> NodeIdentity {
    let fields = node.metadata.as_ref().map(|m: &Struct| &m.fields);
    let namespace = fields
        .and_then(|f| f.get("namespace"))
        .and_then(|v| match &v.kind {
            Some(Kind::StringValue(s)) if !s.is_empty() => Some(s.clone()),
            _ => None,
        });
    let labels = fields
        .and_then(|f| f.get("labels"))
        .and_then(|v| match &v.kind {
            Some(Kind::StructValue(s)) => Some(
                s.fields
                    .iter()
                    .filter_map(|(k, v)| match &v.kind {
                        Some(Kind::StringValue(s)) => Some((k.clone(), s.clone())),
                        _ => None,
                    })
                    .collect::<BTreeMap<_, _>>(),
            ),
            _ => None,
        });
    NodeIdentity { namespace, labels }
}

pub(super) struct StreamContext {
    pub profile: Profile,
    /// Boxed: it is set only where streams authenticate, and inline it would make every
    /// stream's state 40 bytes larger.
    pub principal: Option<Box<super::auth::Principal>>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub id: u64,
    /// The client's address, for the logs.
    pub peer: Option<std::net::SocketAddr>,
    pub variant: Variant,
    pub source: watch::Receiver<Arc<dyn ResourceSource>>,
    pub registry: Arc<Registry>,
    pub shared: Arc<super::shared::Shared>,
    pub shutdown: CancellationToken,
}

/// One ADS stream's state, boxed (see [`run`]).
pub(super) struct Stream {
    ctx: StreamContext,
    node_id: String,
    identity: NodeIdentity,
    connected_at: SystemTime,
    view: Arc<ProxyResources>,
    /// When the change behind the current view was observed.
    observed_at: Instant,
    /// Per type, when the change behind the response in flight was observed.
    in_flight_since: PerType<Option<Instant>>,
    trackers: PerType<TypeTracker>,
    /// Types whose response must be reconsidered: the view changed, the subscription
    /// changed, or a response was held back. Clean types cost nothing on a sync, so an ACK
    /// does not walk every resource of the proxy again.
    dirty: PerType<bool>,
    /// Per type, the version of the state the proxy should hold, as of the last planning.
    desired_versions: PerType<Option<Arc<str>>>,
    /// Where this stream's status is in the registry, from its first publication.
    entry: Option<Arc<Entry>>,
    nonces: u64,
    /// Types outside the profile's that a profile which answers them asked for. `None`
    /// for Envoy's streams, which never have any.
    others: Option<Box<OtherTypes>>,
}

/// Types a client asked for that the server answers once, empty
/// ([`Profile::answers_others_empty`]).
#[derive(Default)]
struct OtherTypes {
    /// Asked for, not answered yet.
    asked: BTreeSet<String>,
    /// Answered: later requests for them (ACKs) need nothing.
    answered: BTreeSet<String>,
}

/// Forgets a stream in the registry and the connected gauge, however the stream ends.
struct Disconnect {
    registry: Arc<Registry>,
    shared: Arc<super::shared::Shared>,
    stream: u64,
    connected: prometheus_client::metrics::gauge::Gauge,
}

impl Drop for Disconnect {
    fn drop(&mut self) {
        let left = self.registry.remove(self.stream);
        self.connected.dec();
        if left == 0 {
            self.shared.prune();
        }
    }
}

/// Counts a stream in the held gauge while it lives.
struct Held(prometheus_client::metrics::gauge::Gauge);

impl Held {
    fn new(gauge: &prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Held(gauge.clone())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Ends a stream with `status` (the response body sends it as the trailers). Waits while
/// responses before it are still queued, unless the client goes away or the server shuts
/// down; the status is never dropped in favour of OK.
pub(super) async fn end_with(
    responses: &mut ResponseSender,
    status: Status,
    shutdown: &CancellationToken,
) {
    tokio::select! {
        // `feed`, not `send`: queued is enough; `send` would also wait for room for a next.
        _ = responses.feed(Err(Box::new(status))) => {}
        () = shutdown.cancelled() => {}
    }
}

/// Runs one stream: waits for its first request, which names the node, then serves the
/// proxy until it goes away, the server shuts down, or the send side closes.
///
/// The stream's state lives in one box, built before the task starts, and this future
/// holds little else: its size is paid by every idle proxy's task, and state built in one
/// nested future and moved into another would be held by both.
pub(super) async fn run(mut s: Box<Stream>, mut requests: Requests, mut responses: ResponseSender) {
    let first = match requests.next().await {
        Some(Ok(m)) => m,
        Some(Err(status)) => {
            warn!(stream = s.ctx.id, peer = ?s.ctx.peer, code = ?status.code(), "stream ended: {}", status.message());
            end_with(&mut responses, *status, &s.ctx.shutdown).await;
            return;
        }
        None => {
            debug!(stream = s.ctx.id, peer = ?s.ctx.peer, "stream closed before its first request");
            return;
        }
    };
    if !s.open(&first, &mut responses).await {
        return;
    }
    let span = tracing::info_span!("xds_stream", stream = s.ctx.id, proxy = %s.node_id, variant = s.ctx.variant.as_str());
    async move {
        info!(namespace = ?s.identity.namespace, "proxy connected");
        let connected = s
            .ctx
            .metrics
            .connected
            .get_or_create(&[("variant", s.ctx.variant.as_str())])
            .clone();
        connected.inc();
        // Undone on drop: the stream future is dropped, not finished, when the client's
        // side goes away first.
        let _gone = Disconnect {
            registry: Arc::clone(&s.ctx.registry),
            shared: Arc::clone(&s.ctx.shared),
            stream: s.ctx.id,
            connected,
        };
        let result = s.serve(first, &mut requests, &mut responses).await;
        match result {
            Ok(()) => info!("proxy disconnected"),
            // The client is gone: there is nobody to tell.
            Err(e) if responses.is_closed() => debug!(error = %e, "stream ended"),
            Err(status) => {
                warn!(code = ?status.code(), "stream ended: {}", status.message());
                end_with(&mut responses, status, &s.ctx.shutdown).await;
            }
        }
    }
    .instrument(span)
    .await;
}

impl Stream {
    /// A stream whose node is not known yet (see [`Stream::open`]).
    pub(super) fn new(ctx: StreamContext) -> Box<Stream> {
        Box::new(Stream {
            ctx,
            node_id: String::new(),
            identity: NodeIdentity::default(),
            connected_at: SystemTime::now(),
            view: Arc::default(),
            observed_at: Instant::now(),
            in_flight_since: PerType::default(),
            trackers: PerType::from_fn(TypeTracker::new),
            dirty: PerType::from_fn(|_| true),
            desired_versions: PerType::default(),
            entry: None,
            nonces: 0,
            others: None,
        })
    }

    /// Takes the proxy that `first` names: checks that it names one and that the caller may
    /// speak for it, and holds it (it keeps its current configuration) until the source is
    /// complete. `false` when the stream ended instead, with its status sent.
    async fn open(&mut self, first: &Request, responses: &mut ResponseSender) -> bool {
        let ctx = &mut self.ctx;
        let Some(node) = first.node() else {
            let status = Status::invalid_argument(
                "the first request of an ADS stream must carry the node (id and metadata)",
            );
            warn!(stream = ctx.id, "stream ended: {}", status.message());
            end_with(responses, status, &ctx.shutdown).await;
            return false;
        };
        let node_id = node.id.clone();
        let mut identity = identity(node);
        if let Some(principal) = &ctx.principal {
            match super::auth::authorize(principal, identity.namespace.as_deref()) {
                Ok(ns) => identity.namespace = Some(ns),
                Err(status) => {
                    warn!(stream = ctx.id, proxy = %node_id, principal = %principal, "refused: {}", status.message());
                    end_with(responses, status, &ctx.shutdown).await;
                    return false;
                }
            }
        }
        // Until it goes away (its stream reset or its connection gone) or the server stops.
        if !ctx.source.borrow_and_update().is_ready() {
            let _held = Held::new(&ctx.metrics.held);
            while !ctx.source.borrow_and_update().is_ready() {
                tokio::select! {
                    () = ctx.shutdown.cancelled() => return false,
                    changed = ctx.source.changed() => if changed.is_err() { return false },
                }
            }
        }
        let (view, observed_at) = {
            let source = ctx.source.borrow_and_update();
            (source.resources_for(&identity), source.observed_at())
        };
        self.node_id = node_id;
        self.identity = identity;
        self.connected_at = SystemTime::now();
        self.view = view;
        self.observed_at = observed_at;
        true
    }
}

impl Stream {
    async fn serve(
        &mut self,
        first: Request,
        requests: &mut Requests,
        responses: &mut ResponseSender,
    ) -> Result<(), Status> {
        self.on_request(first);
        // `sync` is boxed each time it runs: inline, its state would make every idle
        // stream's task larger for as long as it lives.
        Box::pin(self.sync(responses)).await?;
        loop {
            let retry = self.next_retry();
            tokio::select! {
                biased;
                // Shutdown, or nobody reads the responses any more: the stream is gone.
                () = self.ctx.shutdown.cancelled() => return Ok(()),
                req = requests.next() => match req {
                    Some(Ok(req)) => {
                        self.on_request(req);
                        Box::pin(self.sync(responses)).await?;
                    }
                    Some(Err(status)) => return Err(*status),
                    None => return Ok(()),
                },
                changed = self.ctx.source.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    let (view, observed_at) = {
                        let source = self.ctx.source.borrow_and_update();
                        (source.resources_for(&self.identity), source.observed_at())
                    };
                    self.view = view;
                    self.observed_at = observed_at;
                    self.dirty = PerType::from_fn(|_| true);
                    Box::pin(self.sync(responses)).await?;
                }
                () = until(retry) => {
                    let now = SystemTime::now();
                    for &kind in self.ctx.profile.types() {
                        if self.trackers[kind].retry_if_due(now) {
                            info!(type_url = %kind, "offering refused resources again");
                            self.dirty[kind] = true;
                        }
                    }
                    Box::pin(self.sync(responses)).await?;
                }
            }
        }
    }

    /// When the first retry of refused resources is due, if any type has one.
    fn next_retry(&self) -> Option<SystemTime> {
        self.trackers.iter().filter_map(|(_, t)| t.retry_at()).min()
    }

    fn on_request(&mut self, req: Request) {
        let profile = self.ctx.profile;
        let Some(kind) = profile.served(req.type_url()) else {
            if profile.answers_others_empty() {
                let others = self.others.get_or_insert_default();
                if !others.answered.contains(req.type_url()) {
                    others.asked.insert(req.type_url().to_owned());
                }
                return;
            }
            debug!(
                type_url = req.type_url(),
                "ignoring request for a type this server does not serve"
            );
            return;
        };
        let source = Arc::clone(&self.ctx.source.borrow());
        let redact = |text: &str| source.redact(text);
        let tracker = &mut self.trackers[kind];
        let now = SystemTime::now();
        let outcome = match &req {
            Request::Sotw(r) => tracker.on_sotw_request(
                &r.resource_names,
                &r.response_nonce,
                r.error_detail.as_ref().map(|e| redact(&e.message)),
                now,
            ),
            Request::Delta(r) => tracker.on_delta_request(
                &r.resource_names_subscribe,
                &r.resource_names_unsubscribe,
                &r.initial_resource_versions
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                &r.response_nonce,
                r.error_detail.as_ref().map(|e| redact(&e.message)),
                now,
            ),
        };
        let type_label = [("type", kind.short())];
        if matches!(outcome, Received::Ack | Received::Nack)
            && let Some(since) = self.in_flight_since[kind].take()
        {
            if outcome == Received::Ack {
                self.ctx
                    .metrics
                    .push_latency
                    .observe(since.elapsed().as_secs_f64());
            } else {
                self.ctx.metrics.nacks.get_or_create(&type_label).inc();
            }
        }
        // An ACK can carry a new subscription too (SotW always sends the full list).
        if tracker.take_subscription_changed() {
            self.dirty[kind] = true;
        }
        match outcome {
            Received::Subscription => {
                self.dirty[kind] = true;
            }
            // What the proxy holds changed: clusters kept for its old listeners may go.
            Received::Ack | Received::Nack if kind == ResourceType::Listener => {
                self.dirty[ResourceType::Cluster] = true;
                self.dirty[ResourceType::Endpoint] = true;
            }
            Received::Ack | Received::Nack | Received::Stale => {}
        }
        match outcome {
            Received::Nack => warn!(
                type_url = %kind,
                error = tracker.nack().map_or("", |n| n.message.as_str()),
                "proxy rejected configuration"
            ),
            Received::Ack => debug!(type_url = %kind, version = tracker.acked_version(), "ACK"),
            Received::Stale => debug!(type_url = %kind, "stale nonce; ignored"),
            Received::Subscription => debug!(type_url = %kind, "subscription"),
        }
    }

    /// Listeners may only go out once every cluster they use was sent before them.
    fn listeners_ready(&self, view: &Arc<ProxyResources>) -> bool {
        let tracker = &self.trackers[ResourceType::Listener];
        let clusters = self.trackers[ResourceType::Cluster].sent_shared();
        let listeners = &view.listeners;
        let sent = |r: &Arc<Resource>| r.clusters.iter().all(|c| clusters.contains_key(c));
        if !tracker.is_wildcard() {
            return tracker
                .names()
                .iter()
                .filter_map(|name| listeners.get(name))
                .all(sent);
        }
        let compute = || {
            if view.uses.len() == view.clusters.len() {
                // The view holds exactly the clusters its listeners use: they were all sent
                // when none of them is missing from what was sent. The two maps share what
                // did not change, so this costs what changed, not what exists.
                !view
                    .clusters
                    .diff(&clusters)
                    .any(|d| matches!(d, DiffItem::Remove(..)))
            } else {
                listeners.values().all(sent)
            }
        };
        let key = ReadyKey {
            listeners: addr(listeners),
            clusters: addr(&*clusters),
        };
        let alive = || vec![keep(view), keep(&clusters)];
        self.ctx.shared.listeners_ready.get_or(key, alive, compute)
    }

    fn next_nonce(&mut self) -> String {
        self.nonces += 1;
        format!("{:x}-{}", self.ctx.id, self.nonces)
    }

    /// Sends whatever each type needs, clusters first, then endpoints, then listeners; and
    /// the empty answer to each other type asked for, where the profile gives one.
    async fn sync(&mut self, responses: &mut ResponseSender) -> Result<(), Status> {
        while let Some(type_url) = self.others.as_mut().and_then(|o| o.asked.pop_first()) {
            let response = Response {
                variant: self.ctx.variant,
                type_url: Cow::Owned(type_url.clone()),
                resource_type_url: "",
                version: state_version(std::iter::empty()),
                nonce: self.next_nonce(),
                resources: Default::default(),
                removed: Vec::new(),
            };
            debug!(type_url = %type_url, "answered empty");
            if let Some(o) = self.others.as_mut() {
                o.answered.insert(type_url);
            }
            tokio::select! {
                sent = responses.feed(Ok(Box::new(response))) => if sent.is_err() {
                    return Err(Status::cancelled("client went away"));
                },
                () = self.ctx.shutdown.cancelled() => return Ok(()),
            }
        }
        for &kind in self.ctx.profile.types() {
            if !self.dirty[kind] {
                continue;
            }
            let tracker = &self.trackers[kind];
            if !tracker.is_initialized() {
                self.dirty[kind] = false;
                continue;
            }
            if tracker.is_pending() {
                // Reconsidered when the ACK or NACK arrives.
                continue;
            }
            let view = Arc::clone(&self.view);
            let retained = self.retained(&view, kind);
            let available = retained.as_deref().unwrap_or(view.of(kind));
            self.trackers[kind].forget_withdrawn(available);
            let tracker = &self.trackers[kind];
            let desired = if retained.is_none() && tracker.plans_like_others().is_some() {
                view.whole_version(kind).to_owned()
            } else {
                tracker.desired_version(available)
            };
            if self.desired_versions[kind].as_deref() != Some(desired.as_str()) {
                self.desired_versions[kind] = Some(desired.into());
            }
            if kind == ResourceType::Listener && !self.listeners_ready(&view) {
                debug!("listeners wait for their clusters");
                continue;
            }
            self.dirty[kind] = false;
            let before = (kind == ResourceType::Cluster).then(|| tracker.sent_shared());
            let response = self.plan(kind, &view, retained.as_ref());
            if let (Some(before), Some(response)) = (before, &response) {
                // An EDS cluster sent again warms until its endpoints arrive (see
                // TypeTracker::resend): they follow in this same pass, unchanged or not.
                let again = response.resources.iter().filter(|r| {
                    before
                        .get(&r.name)
                        .is_some_and(|was| was.version != r.version)
                });
                if self.trackers[ResourceType::Endpoint].resend(again.map(|r| r.name.as_str())) {
                    self.dirty[ResourceType::Endpoint] = true;
                }
            }
            if let Some(response) = response {
                // A client that stopped reading fills the queue; shutdown must not wait
                // for it.
                tokio::select! {
                    sent = responses.feed(Ok(Box::new(response))) => if sent.is_err() {
                        return Err(Status::cancelled("client went away"));
                    },
                    () = self.ctx.shutdown.cancelled() => return Ok(()),
                }
            }
        }
        self.publish_status();
        Ok(())
    }

    fn plan(
        &mut self,
        kind: ResourceType,
        view: &Arc<ProxyResources>,
        retained: Option<&Arc<ResourceMap>>,
    ) -> Option<Response> {
        let response = self.plan_variant(kind, view, retained)?;
        self.ctx
            .metrics
            .pushes
            .get_or_create(&[("type", kind.short())])
            .inc();
        self.in_flight_since[kind] = Some(self.observed_at);
        Some(response)
    }

    /// The plan of this type, shared with every stream in the same state when the
    /// subscription allows (see `super::shared`).
    fn shared_plan<P: Clone>(
        &self,
        memo: &Memo<PlanKey, Option<P>>,
        kind: ResourceType,
        view: &Arc<ProxyResources>,
        retained: Option<&Arc<ResourceMap>>,
        plan: impl FnOnce(&TypeTracker, &ResourceMap) -> Option<P>,
    ) -> Option<P> {
        let tracker = &self.trackers[kind];
        let available: &ResourceMap = retained.map_or(view.of(kind), |r| &**r);
        let Some(first) = tracker.plans_like_others() else {
            return plan(tracker, available);
        };
        let sent = tracker.sent_shared();
        let key = PlanKey {
            kind,
            first,
            sent: addr(&*sent),
            available: addr(available),
        };
        let alive = || {
            let source: KeepAlive = match retained {
                Some(r) => keep(r),
                None => keep(view),
            };
            vec![source, keep(&sent)]
        };
        memo.get_or(key, alive, || plan(tracker, available))
    }

    fn plan_variant(
        &mut self,
        kind: ResourceType,
        view: &Arc<ProxyResources>,
        retained: Option<&Arc<ResourceMap>>,
    ) -> Option<Response> {
        let type_url = kind.type_url();
        let shared = Arc::clone(&self.ctx.shared);
        match self.ctx.variant {
            Variant::Sotw => {
                let plan =
                    self.shared_plan(&shared.sotw, kind, view, retained, TypeTracker::plan_sotw)?;
                let nonce = self.next_nonce();
                let response = Response {
                    variant: Variant::Sotw,
                    type_url: Cow::Borrowed(type_url),
                    resource_type_url: kind.resource_type_url(),
                    version: plan.version.clone(),
                    nonce: nonce.clone(),
                    resources: plan.resources.clone(),
                    removed: Vec::new(),
                };
                debug!(type_url = %kind, version = %plan.version, resources = plan.resources.len(), "push");
                self.trackers[kind].sent_sotw(nonce, plan);
                Some(response)
            }
            Variant::Delta => {
                let plan =
                    self.shared_plan(&shared.delta, kind, view, retained, TypeTracker::plan_delta)?;
                let nonce = self.next_nonce();
                let response = Response {
                    variant: Variant::Delta,
                    type_url: Cow::Borrowed(type_url),
                    resource_type_url: kind.resource_type_url(),
                    version: plan.version.clone(),
                    nonce: nonce.clone(),
                    resources: plan.resources.clone(),
                    removed: plan.removed.clone(),
                };
                debug!(type_url = %kind, updated = plan.resources.len(), removed = plan.removed.len(), "push");
                self.trackers[kind].sent_delta(nonce, plan);
                Some(response)
            }
        }
    }

    /// Clusters (and endpoints) that are no longer in the view but that listeners the proxy
    /// may still hold use: kept until the proxy has moved off those listeners. `None` when
    /// nothing is retained (almost always), so the view's map is used as it is.
    fn retained(&self, view: &Arc<ProxyResources>, kind: ResourceType) -> Option<Arc<ResourceMap>> {
        if !matches!(kind, ResourceType::Cluster | ResourceType::Endpoint) {
            return None;
        }
        let (acked, pending) = self.trackers[ResourceType::Listener].held_shared();
        let sent = self.trackers[kind].sent_shared();
        let compute = || retained(view.of(kind), &acked, pending.as_deref(), &sent);
        let key = AvailableKey {
            kind,
            view: addr(&**view),
            sent: addr(&*sent),
            acked_listeners: addr(&*acked),
            pending_listeners: pending.as_deref().map_or(0, addr),
        };
        let alive = || {
            let mut a: Vec<KeepAlive> = vec![keep(view), keep(&sent), keep(&acked)];
            a.extend(pending.as_ref().map(keep));
            a
        };
        self.ctx.shared.available.get_or(key, alive, compute)
    }

    /// Publishes the stream's status, after every request and response: reference counts
    /// on what the trackers hold and one small allocation, under the stream's own lock.
    fn publish_status(&mut self) {
        // Sized exactly, so that boxing it does not reallocate.
        let asked = || self.trackers.iter().filter(|(_, t)| t.is_initialized());
        let mut types = Vec::with_capacity(asked().count());
        types
            .extend(asked().map(|(kind, t)| (kind, t.status(self.desired_versions[kind].clone()))));
        let types: TypeStatuses = types.into_iter().collect();
        match &self.entry {
            Some(entry) => entry.set_types(types),
            None => {
                self.entry = Some(self.ctx.registry.put(ProxyStatus {
                    stream: self.ctx.id,
                    node_id: self.node_id.clone(),
                    identity: self.identity.clone(),
                    variant: self.ctx.variant,
                    connected_at: self.connected_at,
                    types,
                }));
            }
        }
    }
}

/// The resources of `sent` that are not in `view` but that listeners the proxy may still
/// hold (`acked`, `pending`) use: `view` plus those, or `None` when there are none.
fn retained(
    view: &ResourceMap,
    acked: &State,
    pending: Option<&State>,
    sent: &State,
) -> Option<Arc<ResourceMap>> {
    // Almost always the proxy was sent nothing that left the view; `sent` was planned from
    // an earlier view, so the walk over what the two maps do not share says so.
    let left_view: Vec<(&String, &Arc<Resource>)> = sent
        .diff(view)
        .filter_map(|item| match item {
            DiffItem::Remove(name, r) if !r.declared => Some((name, r)),
            _ => None,
        })
        .collect();
    if left_view.is_empty() {
        return None;
    }
    let needed: BTreeSet<&str> = acked
        .values()
        .chain(pending.into_iter().flat_map(|p| p.values()))
        .flat_map(|r| r.clusters.iter().map(String::as_str))
        .collect();
    let mut out = view.clone();
    let mut any = false;
    for (name, r) in left_view {
        if needed.contains(name.as_str()) {
            out.insert(name.clone(), Arc::clone(r));
            any = true;
        }
    }
    any.then(|| Arc::new(out))
}
