//! Per-stream, per-type xDS protocol state as plain data.
//!
//! A [`TypeTracker`] knows what the client subscribed to, what the server last sent, what
//! the client confirmed, and the last rejection. Its methods are the protocol's transitions;
//! each cites the rule of the xDS protocol specification it follows. No I/O happens here, so
//! every rule is unit-tested below without a network.
//!
//! One response per type is in flight at a time: the next one waits for the ACK or NACK of
//! the previous. That keeps "what the client holds" exact, which make-before-break needs,
//! and costs nothing when changes arrive slower than a round trip (they are debounced).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use imbl::ordmap::DiffItem;

use super::resource::{Resource, ResourceMap, ResourceType, state_version};

/// A client's resources of one type by name, as it holds them or will once it applied the
/// response in flight. Resources it declared on reconnecting are [`Resource::declared`].
/// A wildcard subscriber's state is the very map it was planned from, so thousands of
/// streams hold one state, and the next plan compares maps that share what did not change.
pub type State = ResourceMap;

/// A rejected response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nack {
    /// Version (state hash) of the rejected response.
    pub version: String,
    /// Envoy's error message.
    pub message: String,
    /// When the NACK arrived.
    pub at: SystemTime,
}

/// A resource the client refused in this version: it does not hold it (it keeps the
/// version it had before, if any). Kept until the resource changes or the client accepts it
/// on a retry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// The refused resource, as it was offered.
    pub resource: Arc<Resource>,
    /// The NACK that refused it.
    pub nack: Arc<Nack>,
}

/// Refused resources by name.
pub type RejectedMap = BTreeMap<String, Rejected>;

/// The first retry of a refused resource that did not change comes this long after its
/// NACK; each further NACK doubles the wait, up to [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_secs(10);
/// The longest wait between retries of a refused resource.
pub const RETRY_MAX: Duration = Duration::from_secs(160);

/// When refused resources that did not change are offered again.
#[derive(Clone, Debug)]
struct Retry {
    /// NACKs in a row (without an ACK that left nothing refused).
    nacks: u32,
    /// When the next retry is due.
    due: SystemTime,
    /// The retry is due: the next plan offers the refused resources again.
    now: bool,
}

/// One type's state on one stream. The versions, the nonce and the NACK are the stream
/// tracker's own, shared: a stream publishes its status after every request and response,
/// and that costs reference counts, not copies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TypeStatus {
    /// Version of the state this proxy should hold now.
    pub desired_version: Option<Arc<str>>,
    /// Version of the last response sent.
    pub sent_version: Option<Arc<str>>,
    /// Nonce of the last response sent.
    pub nonce: Option<Arc<str>>,
    /// Version the proxy last ACKed.
    pub acked_version: Option<Arc<str>>,
    /// A response awaits its ACK or NACK.
    pub pending: bool,
    /// The last NACK, until a later ACK leaves nothing refused.
    pub nack: Option<Arc<Nack>>,
    /// The resources the proxy refused and does not hold, by name.
    pub rejected: Option<Arc<RejectedMap>>,
    /// The resources of the last response, as the proxy holds them once applied (for the
    /// config dump). Shared with the snapshot, not copied.
    pub sent: Arc<State>,
}

/// Where one type stands on one proxy, as RedisCluster status, `redis-xds status` and
/// `/debug/syncz` show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncState {
    /// Nothing sent yet.
    NotSent,
    /// The proxy refused something and does not hold it.
    Nacked,
    /// The proxy ACKed the state it should hold.
    Synced,
    /// A response is in flight, or the proxy holds an older state than it should.
    Stale,
}

impl SyncState {
    /// The name shown: `NOT_SENT`, `NACKED`, `SYNCED` or `STALE`.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncState::NotSent => "NOT_SENT",
            SyncState::Nacked => "NACKED",
            SyncState::Synced => "SYNCED",
            SyncState::Stale => "STALE",
        }
    }
}

impl TypeStatus {
    /// Where this type stands on its proxy.
    pub fn sync_state(&self) -> SyncState {
        if self.sent_version.is_none() {
            SyncState::NotSent
        } else if self.nack.is_some() {
            SyncState::Nacked
        } else if !self.pending
            && self.acked_version.is_some()
            && self.acked_version == self.desired_version
        {
            SyncState::Synced
        } else {
            SyncState::Stale
        }
    }
}

/// What a request meant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Received {
    /// The first request, or a change of subscription.
    Subscription,
    /// The pending response was applied.
    Ack,
    /// The pending response was rejected.
    Nack,
    /// SotW request carrying an old nonce: ignored entirely.
    Stale,
}

#[derive(Clone, Debug)]
struct Pending {
    nonce: Arc<str>,
    state: Arc<State>,
    version: Arc<str>,
    /// Refused resources this response left out (see [`TypeTracker::offer`]).
    withheld: Vec<String>,
}

/// Protocol state of one resource type on one stream.
#[derive(Clone, Debug)]
pub struct TypeTracker {
    kind: ResourceType,
    initialized: bool,
    wildcard: bool,
    names: BTreeSet<String>,
    // Shared between `sent`, `pending` and `acked` (and the registry): once a response is
    // ACKed these are one allocation, not three copies per stream.
    sent: Arc<State>,
    acked: Arc<State>,
    // Boxed, like `nack`: each is set only part of the time, and inline they would make
    // every idle stream's three trackers larger.
    pending: Option<Box<Pending>>,
    // `Arc<str>`, not `String`: 8 bytes less each, three times per tracker, in every idle
    // stream; `pending`, the ACKed version and the registry share one allocation.
    sent_version: Option<Arc<str>>,
    acked_version: Option<Arc<str>>,
    last_nonce: Option<Arc<str>>,
    nack: Option<Arc<Nack>>,
    // Both `None` almost always: a refusal is rare, and every idle stream pays for these.
    rejected: Option<Arc<RejectedMap>>,
    retry: Option<Box<Retry>>,
    reported_missing: BTreeSet<String>,
    /// Set when a request changed what the client subscribes to; the stream takes it to
    /// know the type must be reconsidered even when the request was only an ACK.
    subscription_changed: bool,
}

/// The resources of a response, shared: a plan is made once for every stream in the same
/// state (`super::shared`), and each stream's response takes the list with one reference
/// count instead of a copy (at 1,000 RedisClusters a copy is 8 KB per stream and push,
/// and as many reference counts on resources every stream shares).
pub type Resources = Arc<[Arc<Resource>]>;

/// What to put in a State-of-the-World response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SotwPlan {
    /// `version_info`.
    pub version: String,
    /// The complete set.
    pub resources: Resources,
    state: Arc<State>,
    withheld: Vec<String>,
}

/// What to put in a Delta response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeltaPlan {
    /// `system_version_info`: the hash of the client's state once applied.
    pub version: String,
    /// New and changed resources.
    pub resources: Resources,
    /// `removed_resources`: deleted, and subscribed names that do not exist.
    pub removed: Vec<String>,
    state: Arc<State>,
    missing: Vec<String>,
    withheld: Vec<String>,
}

/// The empty state every tracker starts from: one allocation, so that streams that receive
/// the same first response share what it leaves them holding (see `super::shared`).
static EMPTY: std::sync::LazyLock<Arc<State>> = std::sync::LazyLock::new(Arc::default);

fn version_of(state: &State) -> String {
    state_version(state.iter().map(|(n, r)| (n, r.version.as_str())))
}

impl TypeTracker {
    /// A tracker for a type the client has not asked for yet.
    pub fn new(kind: ResourceType) -> Self {
        TypeTracker {
            kind,
            initialized: false,
            wildcard: false,
            names: BTreeSet::new(),
            sent: Arc::clone(&EMPTY),
            acked: Arc::clone(&EMPTY),
            pending: None,
            sent_version: None,
            acked_version: None,
            last_nonce: None,
            nack: None,
            rejected: None,
            retry: None,
            reported_missing: BTreeSet::new(),
            subscription_changed: false,
        }
    }

    /// Whether the client has asked for this type.
    pub fn is_initialized(&self) -> bool {
        self.initialized
    }

    /// Version of the last response sent.
    pub fn sent_version(&self) -> Option<&str> {
        self.sent_version.as_deref()
    }

    /// Version of the last response the client ACKed.
    pub fn acked_version(&self) -> Option<&str> {
        self.acked_version.as_deref()
    }

    /// The last NACK, until a later response is ACKed and nothing is refused any more.
    pub fn nack(&self) -> Option<&Nack> {
        self.nack.as_deref()
    }

    /// Resources the client refused and does not hold, by name.
    pub fn rejected(&self) -> Option<&RejectedMap> {
        self.rejected.as_deref()
    }

    /// When refused resources that did not change will be offered again, if any are
    /// refused.
    pub fn retry_at(&self) -> Option<SystemTime> {
        self.retry
            .as_ref()
            .filter(|r| !r.now && self.rejected.is_some())
            .map(|r| r.due)
    }

    /// If the retry is due at `now`, marks it so that the next plan offers the refused
    /// resources again; returns whether it did.
    pub fn retry_if_due(&mut self, now: SystemTime) -> bool {
        match &mut self.retry {
            Some(r) if !r.now && r.due <= now && self.rejected.is_some() => {
                r.now = true;
                true
            }
            _ => false,
        }
    }

    /// Whether the last requests changed the subscription; resets the flag.
    pub fn take_subscription_changed(&mut self) -> bool {
        std::mem::take(&mut self.subscription_changed)
    }

    /// Whether a response waits for its ACK or NACK.
    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Whether the client subscribed to everything of this type.
    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }

    /// Explicitly subscribed names.
    pub fn names(&self) -> &BTreeSet<String> {
        &self.names
    }

    /// This type's state for the registry, sharing the tracker's versions, nonce and NACK;
    /// `desired_version` is the stream's, as of its last planning.
    pub fn status(&self, desired_version: Option<Arc<str>>) -> TypeStatus {
        TypeStatus {
            desired_version,
            sent_version: self.sent_version.clone(),
            nonce: self.last_nonce.clone(),
            acked_version: self.acked_version.clone(),
            pending: self.pending.is_some(),
            nack: self.nack.clone(),
            rejected: self.rejected.clone(),
            sent: Arc::clone(&self.sent),
        }
    }

    /// Resources of the last response sent, as the client will hold them once applied.
    pub fn sent_shared(&self) -> Arc<State> {
        Arc::clone(&self.sent)
    }

    /// Resources the client holds for sure (ACKed), and those of the response in flight:
    /// everything it may be using right now.
    pub fn held_shared(&self) -> (Arc<State>, Option<Arc<State>>) {
        (
            Arc::clone(&self.acked),
            self.pending.as_ref().map(|p| Arc::clone(&p.state)),
        )
    }

    /// When the next plan depends only on what was sent and what is available (a wildcard
    /// subscription without explicit names, nothing in flight, no missing names reported):
    /// whether nothing was sent yet. Streams in that situation with the same sent state
    /// and the same available resources get the same plan, so it can be computed once.
    pub fn plans_like_others(&self) -> Option<bool> {
        (self.initialized
            && self.pending.is_none()
            && self.wildcard
            && self.names.is_empty()
            && self.reported_missing.is_empty()
            && self.rejected.is_none())
        .then_some(self.sent_version.is_none())
    }

    fn settle(&mut self, nonce: &str, error: Option<String>, at: SystemTime) -> Option<Received> {
        let pending = self.pending.take_if(|p| &*p.nonce == nonce)?;
        Some(match error {
            Some(message) => {
                self.refuse(*pending, message, at);
                Received::Nack
            }
            None => {
                // "The client ... will send an ACK" once it applied the response: it holds
                // every resource of it. What was withheld from it is still refused.
                self.rejected = self
                    .rejected
                    .take()
                    .and_then(|rejected| still_refused(rejected, &pending.withheld));
                self.acked = pending.state;
                self.acked_version = Some(pending.version);
                if self.rejected.is_none() {
                    self.nack = None;
                    self.retry = None;
                }
                Received::Ack
            }
        })
    }

    /// A NACK of `pending`: records which resources the client refused, and what it holds.
    ///
    /// "The client ... will send a NACK ... with the error_detail populated" (xDS protocol,
    /// "ACK/NACK and resource type instance version"); the protocol leaves open which
    /// resources of the response the client applied. Envoy applies each listener and
    /// cluster of a response on its own, keeps the others, and names the ones it could
    /// not apply as `NAME: reason` ("Error adding/updating listener(s) NAME: ..."). So the
    /// resources this response offered that the message names are refused, and the
    /// others are held; when it names none of them, every resource it offered is taken as
    /// refused, which errs toward offering again, never toward saying held. A refused
    /// resource keeps the version the client held before, or none.
    fn refuse(&mut self, pending: Pending, message: String, at: SystemTime) {
        let nack = Arc::new(Nack {
            version: pending.version.to_string(),
            message,
            at,
        });
        let offered: Vec<Arc<Resource>> = self
            .acked
            .diff(&pending.state)
            .filter_map(|item| match item {
                DiffItem::Add(_, r) => Some(r),
                DiffItem::Update {
                    old: (_, was),
                    new: (_, r),
                } if was.version != r.version => Some(r),
                _ => None,
            })
            .filter(|r| !r.declared)
            .cloned()
            .collect();
        let named: Vec<Arc<Resource>> = offered
            .iter()
            .filter(|r| names_as_failed(&nack.message, &r.name))
            .cloned()
            .collect();
        let refused = if named.is_empty() { offered } else { named };
        let mut rejected = self
            .rejected
            .take()
            .and_then(|r| still_refused(r, &pending.withheld))
            .map(Arc::unwrap_or_clone)
            .unwrap_or_default();
        let mut held = Arc::unwrap_or_clone(pending.state);
        for r in refused {
            match self.acked.get(&r.name) {
                Some(before) => held.insert(r.name.clone(), Arc::clone(before)),
                None => held.remove(&r.name),
            };
            rejected.insert(
                r.name.clone(),
                Rejected {
                    resource: r,
                    nack: Arc::clone(&nack),
                },
            );
        }
        let held = Arc::new(held);
        let version: Arc<str> = version_of(&held).into();
        self.sent = Arc::clone(&held);
        self.sent_version = Some(Arc::clone(&version));
        self.acked = held;
        self.acked_version = Some(version);
        let nacks = self.retry.as_ref().map_or(0, |r| r.nacks) + 1;
        self.retry = Some(Box::new(Retry {
            nacks,
            due: at + retry_delay(nacks),
            now: false,
        }));
        self.rejected = (!rejected.is_empty()).then(|| Arc::new(rejected));
        self.nack = Some(nack);
    }

    /// A State-of-the-World request.
    pub fn on_sotw_request(
        &mut self,
        resource_names: &[String],
        response_nonce: &str,
        error: Option<String>,
        at: SystemTime,
    ) -> Received {
        let mut outcome = Received::Subscription;
        // A nonce when nothing of the type was sent on this stream answers nothing here:
        // the request is the client's first. istiod's config-source client puts the time
        // in its first requests' nonce (istio.io/istio `pkg/adsc`, `Send`); istiod's own
        // server and go-control-plane take such a request as new, and so does this one.
        if !response_nonce.is_empty() && self.last_nonce.is_some() {
            // "If the nonce is not the most recent one sent, the request is stale and the
            // management server should not respond to it" (xDS protocol, "Resource update
            // ordering"). A request for a settled nonce is stale as well.
            match self.settle(response_nonce, error, at) {
                Some(r) => outcome = r,
                None => return Received::Stale,
            }
        }
        let first = !std::mem::replace(&mut self.initialized, true);
        // SotW requests always carry the full list of names. For LDS and CDS an empty list
        // means wildcard (legacy wildcard); "*" means wildcard too.
        let explicit: BTreeSet<String> = resource_names
            .iter()
            .filter(|n| *n != "*")
            .cloned()
            .collect();
        let wildcard = self.kind.allows_wildcard()
            && (resource_names.is_empty() || resource_names.iter().any(|n| n == "*"));
        if first || wildcard != self.wildcard || explicit != self.names {
            self.subscription_changed = true;
        }
        self.wildcard = wildcard;
        self.names = explicit;
        outcome
    }

    /// A Delta request.
    pub fn on_delta_request(
        &mut self,
        subscribe: &[String],
        unsubscribe: &[String],
        initial_versions: &BTreeMap<String, String>,
        response_nonce: &str,
        error: Option<String>,
        at: SystemTime,
    ) -> Received {
        let mut outcome = Received::Subscription;
        if !response_nonce.is_empty()
            && let Some(r) = self.settle(response_nonce, error, at)
        {
            outcome = r;
        }
        // In Delta, subscription changes are honoured whatever the nonce: they are not
        // tied to a response ("the nonce ... is only used to match ACK/NACKs").
        if !subscribe.is_empty() || !unsubscribe.is_empty() {
            self.subscription_changed = true;
        }
        if !self.initialized {
            self.initialized = true;
            self.subscription_changed = true;
            // "If the first request has no resource names, the client is a wildcard
            // subscriber" (legacy wildcard, LDS and CDS only).
            self.wildcard = self.kind.allows_wildcard() && subscribe.is_empty();
            // "initial_resource_versions ... the versions of the resources the client
            // already has": only what differs is sent after a reconnect.
            if !initial_versions.is_empty() {
                self.sent = Arc::new(
                    initial_versions
                        .iter()
                        .map(|(n, v)| (n.clone(), Resource::declared(n, v)))
                        .collect(),
                );
                self.acked = Arc::clone(&self.sent);
            }
        }
        for name in subscribe {
            if name == "*" {
                self.wildcard = self.kind.allows_wildcard();
            } else {
                self.names.insert(name.clone());
            }
        }
        for name in unsubscribe {
            if name == "*" {
                self.wildcard = false;
            } else {
                self.names.remove(name);
                // The client forgets an unsubscribed resource; resubscribing must resend it.
                Arc::make_mut(&mut self.sent).remove(name);
                Arc::make_mut(&mut self.acked).remove(name);
                self.reported_missing.remove(name);
            }
        }
        outcome
    }

    /// The state this client should hold: what it subscribed to, out of `available`. For a
    /// wildcard subscriber that is `available` itself, shared rather than copied.
    pub fn desired(&self, available: &ResourceMap) -> State {
        if self.wildcard {
            return available.clone();
        }
        self.names
            .iter()
            .filter_map(|name| Some((name.clone(), Arc::clone(available.get(name)?))))
            .collect()
    }

    /// The state to offer: `desired`, except that a refused resource that did not change
    /// is withheld (the client keeps what it holds of it) until its retry is due. Offering
    /// it again unchanged would be refused again: Envoy applies a listener or a cluster
    /// as it is given, so only a change, or a change around it (a port freed, say), can
    /// make it pass, and the retry is there for the latter.
    fn offer(&self, desired: State) -> (State, Vec<String>) {
        let Some(rejected) = &self.rejected else {
            return (desired, Vec::new());
        };
        if self.retry.as_ref().is_some_and(|r| r.now) {
            return (desired, Vec::new());
        }
        let mut state = desired;
        let mut withheld = Vec::new();
        for (name, r) in rejected.iter() {
            if state.get(name).map(|d| &d.version) != Some(&r.resource.version) {
                continue;
            }
            match self.sent.get(name) {
                Some(held) => state.insert(name.clone(), Arc::clone(held)),
                None => state.remove(name),
            };
            withheld.push(name.clone());
        }
        (state, withheld)
    }

    /// Forgets refusals of resources the client should no longer hold: nothing will be
    /// offered for them, so no response would settle them. Returns whether any was.
    pub fn forget_withdrawn(&mut self, available: &ResourceMap) -> bool {
        let Some(rejected) = &self.rejected else {
            return false;
        };
        let wanted = |name: &str| {
            available.contains_key(name) && (self.wildcard || self.names.contains(name))
        };
        if rejected.keys().all(|n| wanted(n)) {
            return false;
        }
        let still: RejectedMap = rejected
            .iter()
            .filter(|(n, _)| wanted(n))
            .map(|(n, r)| (n.clone(), r.clone()))
            .collect();
        self.rejected = (!still.is_empty()).then(|| Arc::new(still));
        if self.rejected.is_none() && self.pending.is_none() {
            self.nack = None;
            self.retry = None;
        }
        true
    }

    /// Version of [`TypeTracker::desired`], without building it.
    pub fn desired_version(&self, available: &ResourceMap) -> String {
        if self.wildcard {
            return version_of(available);
        }
        state_version(
            self.names
                .iter()
                .filter_map(|name| Some((name, available.get(name)?.version.as_str()))),
        )
    }

    /// The SotW response to send now, if any.
    pub fn plan_sotw(&self, available: &ResourceMap) -> Option<SotwPlan> {
        if !self.initialized || self.pending.is_some() {
            return None;
        }
        let (state, withheld) = self.offer(self.desired(available));
        let version = version_of(&state);
        // The first request is always answered, even with nothing: Envoy waits for it
        // before finishing initialization. Afterwards only a changed state is sent.
        if self.sent_version.as_deref() == Some(version.as_str()) {
            return None;
        }
        let resources = state
            .values()
            .filter(|r| !r.declared)
            .cloned()
            .collect::<Vec<_>>()
            .into();
        Some(SotwPlan {
            version,
            resources,
            state: Arc::new(state),
            withheld,
        })
    }

    /// The Delta response to send now, if any.
    pub fn plan_delta(&self, available: &ResourceMap) -> Option<DeltaPlan> {
        if !self.initialized || self.pending.is_some() {
            return None;
        }
        let (state, withheld) = self.offer(self.desired(available));
        // What differs between what the client holds and what it should: a walk over the
        // nodes the two maps do not share.
        let mut resources: Vec<Arc<Resource>> = Vec::new();
        let mut removed: Vec<String> = Vec::new();
        for item in self.sent.diff(&state) {
            match item {
                DiffItem::Add(_, r) => resources.push(Arc::clone(r)),
                DiffItem::Update {
                    old: (_, was),
                    new: (_, r),
                } if was.version != r.version => resources.push(Arc::clone(r)),
                DiffItem::Update { .. } => {}
                DiffItem::Remove(name, _) => removed.push(name.clone()),
            }
        }
        resources.retain(|r| !r.declared);
        // Names subscribed explicitly that do not exist are reported once, so the client
        // stops waiting for them; they are delivered when they appear.
        let missing: Vec<String> = self
            .names
            .iter()
            .filter(|n| {
                !state.contains_key(*n)
                    && !self.sent.contains_key(*n)
                    && !self.reported_missing.contains(*n)
            })
            .cloned()
            .collect();
        removed.extend(missing.iter().cloned());
        removed.sort();
        removed.dedup();
        let first = self.sent_version.is_none();
        if resources.is_empty() && removed.is_empty() && !first {
            return None;
        }
        Some(DeltaPlan {
            version: version_of(&state),
            resources: resources.into(),
            removed,
            state: Arc::new(state),
            missing,
            withheld,
        })
    }

    /// Forgets that the client holds `names`, so that the next plan sends them again even
    /// though they did not change; returns whether any was held.
    ///
    /// For endpoints whose cluster was just sent again: "Clusters go through warming before
    /// they can serve requests. This process happens both during Envoy initialization and
    /// when the Cluster is updated", and warming completes only when a ClusterLoadAssignment
    /// for it arrives (xDS protocol, "Resource warming"). Without one, Envoy waits for its
    /// initial fetch timeout (15 s) with the cluster warming.
    pub fn resend<'a>(&mut self, names: impl IntoIterator<Item = &'a str>) -> bool {
        let held: Vec<&str> = names
            .into_iter()
            .filter(|n| self.sent.contains_key(*n))
            .collect();
        if held.is_empty() {
            return false;
        }
        let sent = Arc::make_mut(&mut self.sent);
        for name in held {
            sent.remove(name);
        }
        // A SotW plan compares versions only: a state equal to the one last sent would not
        // go out again.
        self.sent_version = None;
        true
    }

    /// Records a SotW response as sent.
    pub fn sent_sotw(&mut self, nonce: String, plan: SotwPlan) {
        self.record(nonce, plan.state, plan.version, plan.withheld);
    }

    /// Records a Delta response as sent.
    pub fn sent_delta(&mut self, nonce: String, plan: DeltaPlan) {
        self.reported_missing.extend(plan.missing);
        self.record(nonce, plan.state, plan.version, plan.withheld);
    }

    fn record(&mut self, nonce: String, state: Arc<State>, version: String, withheld: Vec<String>) {
        if let Some(retry) = &mut self.retry {
            retry.now = false;
        }
        let nonce: Arc<str> = nonce.into();
        let version: Arc<str> = version.into();
        self.sent = Arc::clone(&state);
        self.sent_version = Some(Arc::clone(&version));
        self.last_nonce = Some(Arc::clone(&nonce));
        self.pending = Some(Box::new(Pending {
            nonce,
            state,
            version,
            withheld,
        }));
    }
}

/// What stays refused once a response settled: what it withheld. The others were offered
/// again, or left the desired state; either way their refusal is over.
fn still_refused(rejected: Arc<RejectedMap>, withheld: &[String]) -> Option<Arc<RejectedMap>> {
    if withheld.len() == rejected.len() {
        return Some(rejected);
    }
    let still: RejectedMap = withheld
        .iter()
        .filter_map(|n| Some((n.clone(), rejected.get(n)?.clone())))
        .collect();
    (!still.is_empty()).then(|| Arc::new(still))
}

/// The wait before the retry that follows the `nacks`-th NACK in a row.
fn retry_delay(nacks: u32) -> Duration {
    RETRY_FIRST
        .saturating_mul(1 << nacks.saturating_sub(1).min(16))
        .min(RETRY_MAX)
}

/// Whether Envoy's error message names `name` as a resource it failed to apply: `name`
/// followed by `:`, at the start or after a space, a comma or a new line.
fn names_as_failed(message: &str, name: &str) -> bool {
    !name.is_empty()
        && message.match_indices(name).any(|(i, _)| {
            let before = message[..i].chars().next_back();
            let after = message[i + name.len()..].chars().next();
            matches!(before, None | Some(' ' | ',' | '\n')) && after == Some(':')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn res(name: &str, version: &str) -> Arc<Resource> {
        Arc::new(Resource {
            name: name.into(),
            version: version.into(),
            body: Bytes::from(format!("{name}{version}")),
            clusters: Vec::new(),
            declared: false,
        })
    }

    fn map(items: &[(&str, &str)]) -> ResourceMap {
        items
            .iter()
            .map(|(n, v)| (n.to_string(), res(n, v)))
            .collect()
    }

    fn names(rs: &[Arc<Resource>]) -> Vec<&str> {
        rs.iter().map(|r| r.name.as_str()).collect()
    }

    const NOW: SystemTime = SystemTime::UNIX_EPOCH;

    #[test]
    fn sotw_should_answer_the_first_request_even_when_empty() {
        let mut t = TypeTracker::new(ResourceType::Listener);
        assert!(
            t.plan_sotw(&map(&[])).is_none(),
            "nothing before the client asks"
        );
        assert_eq!(
            t.on_sotw_request(&[], "", None, NOW),
            Received::Subscription
        );
        let plan = t.plan_sotw(&map(&[])).expect("empty first response");
        assert!(plan.resources.is_empty());
    }

    #[test]
    fn sotw_should_send_the_full_set_and_nothing_while_unchanged() {
        let mut t = TypeTracker::new(ResourceType::Cluster);
        t.on_sotw_request(&[], "", None, NOW);
        let avail = map(&[("a", "1"), ("b", "1")]);
        let plan = t.plan_sotw(&avail).unwrap();
        assert_eq!(names(&plan.resources), ["a", "b"]);
        t.sent_sotw("n1".into(), plan);
        assert!(t.plan_sotw(&avail).is_none(), "one response in flight");
        assert_eq!(t.on_sotw_request(&[], "n1", None, NOW), Received::Ack);
        assert!(
            t.plan_sotw(&avail).is_none(),
            "unchanged state is not resent"
        );
        let changed = map(&[("a", "2"), ("b", "1")]);
        let plan = t.plan_sotw(&changed).unwrap();
        assert_eq!(
            names(&plan.resources),
            ["a", "b"],
            "LDS/CDS responses carry the full set"
        );
    }

    #[test]
    fn sotw_should_ignore_a_request_with_a_stale_nonce() {
        let mut t = TypeTracker::new(ResourceType::Cluster);
        t.on_sotw_request(&[], "", None, NOW);
        let plan = t.plan_sotw(&map(&[("a", "1")])).unwrap();
        t.sent_sotw("n1".into(), plan);
        assert_eq!(t.on_sotw_request(&[], "n0", None, NOW), Received::Stale);
        assert!(t.is_pending());
        assert_eq!(t.on_sotw_request(&[], "n1", None, NOW), Received::Ack);
        assert_eq!(
            t.on_sotw_request(&[], "n1", None, NOW),
            Received::Stale,
            "settled nonce"
        );
    }

    #[test]
    fn sotw_should_take_a_nonce_before_anything_was_sent_as_a_first_request() {
        let mut t = TypeTracker::new(ResourceType::EnvoyFilter);
        assert_eq!(
            t.on_sotw_request(&[], "2026-12-07 18:00:00 +0000 UTC", None, NOW),
            Received::Subscription
        );
        assert!(t.is_initialized() && t.is_wildcard());
        let plan = t.plan_sotw(&map(&[("shop/f", "1")])).unwrap();
        t.sent_sotw("n1".into(), plan);
        // Once something was sent, an unknown nonce is stale again.
        assert_eq!(
            t.on_sotw_request(&[], "2026-12-07 18:00:01 +0000 UTC", None, NOW),
            Received::Stale
        );
        assert_eq!(t.on_sotw_request(&[], "n1", None, NOW), Received::Ack);
    }

    #[test]
    fn status_should_share_the_trackers_versions_not_copy_them() {
        let mut t = TypeTracker::new(ResourceType::Cluster);
        t.on_sotw_request(&[], "", None, NOW);
        let plan = t.plan_sotw(&map(&[("a", "1")])).unwrap();
        let version = plan.version.clone();
        t.sent_sotw("n1".into(), plan);
        let desired: Arc<str> = version.as_str().into();
        let sent = t.status(Some(Arc::clone(&desired)));
        assert!(sent.pending);
        assert_eq!(sent.sent_version.as_deref(), Some(version.as_str()));
        assert_eq!(sent.nonce.as_deref(), Some("n1"));
        assert_eq!(sent.acked_version, None);
        assert!(Arc::ptr_eq(
            sent.desired_version.as_ref().unwrap(),
            &desired
        ));
        t.on_sotw_request(&[], "n1", None, NOW);
        let acked = t.status(None);
        assert!(!acked.pending);
        // Once ACKed, the sent and the ACKed version are one allocation, and the status
        // published before holds that same one.
        let acked_version = acked.acked_version.as_ref().unwrap();
        assert!(Arc::ptr_eq(
            acked_version,
            acked.sent_version.as_ref().unwrap()
        ));
        assert!(Arc::ptr_eq(
            acked_version,
            sent.sent_version.as_ref().unwrap()
        ));
    }

    #[test]
    fn sotw_should_record_a_nack_and_not_resend_the_rejected_version() {
        let mut t = TypeTracker::new(ResourceType::Listener);
        t.on_sotw_request(&[], "", None, NOW);
        let good = map(&[("l", "1")]);
        let plan = t.plan_sotw(&good).unwrap();
        t.sent_sotw("n1".into(), plan);
        t.on_sotw_request(&[], "n1", None, NOW);
        let bad = map(&[("l", "2")]);
        let plan = t.plan_sotw(&bad).unwrap();
        let bad_version = plan.version.clone();
        t.sent_sotw("n2".into(), plan);
        assert_eq!(
            t.on_sotw_request(&[], "n2", Some("boom".into()), NOW),
            Received::Nack
        );
        assert_eq!(t.nack().unwrap().message, "boom");
        assert_eq!(t.nack().unwrap().version, bad_version);
        assert_ne!(t.acked_version(), Some(bad_version.as_str()));
        assert!(
            t.plan_sotw(&bad).is_none(),
            "a NACKed version is not sent again"
        );
        let fixed = map(&[("l", "3")]);
        let plan = t.plan_sotw(&fixed).unwrap();
        t.sent_sotw("n3".into(), plan);
        t.on_sotw_request(&[], "n3", None, NOW);
        assert!(t.nack().is_none(), "a later ACK clears the NACK");
    }

    #[test]
    fn sotw_should_send_only_named_endpoints() {
        let mut t = TypeTracker::new(ResourceType::Endpoint);
        t.on_sotw_request(&[], "", None, NOW);
        assert!(!t.is_wildcard(), "EDS has no wildcard");
        t.on_sotw_request(&["b".into()], "", None, NOW);
        let plan = t.plan_sotw(&map(&[("a", "1"), ("b", "1")])).unwrap();
        assert_eq!(names(&plan.resources), ["b"]);
    }

    #[test]
    fn sotw_should_answer_a_changed_subscription_in_an_ack() {
        let mut t = TypeTracker::new(ResourceType::Endpoint);
        t.on_sotw_request(&["a".into()], "", None, NOW);
        let avail = map(&[("a", "1"), ("b", "1")]);
        let plan = t.plan_sotw(&avail).unwrap();
        t.sent_sotw("n1".into(), plan);
        t.on_sotw_request(&["a".into(), "b".into()], "n1", None, NOW);
        let plan = t.plan_sotw(&avail).unwrap();
        assert_eq!(names(&plan.resources), ["a", "b"]);
    }

    #[test]
    fn delta_should_send_only_changes_and_report_deletions() {
        let mut t = TypeTracker::new(ResourceType::Cluster);
        t.on_delta_request(&[], &[], &BTreeMap::new(), "", None, NOW);
        assert!(t.is_wildcard());
        let plan = t.plan_delta(&map(&[("a", "1"), ("b", "1")])).unwrap();
        assert_eq!(names(&plan.resources), ["a", "b"]);
        t.sent_delta("n1".into(), plan);
        t.on_delta_request(&[], &[], &BTreeMap::new(), "n1", None, NOW);
        let plan = t.plan_delta(&map(&[("a", "2")])).unwrap();
        assert_eq!(names(&plan.resources), ["a"]);
        assert_eq!(plan.removed, ["b"]);
    }

    #[test]
    fn delta_should_honour_subscriptions_whatever_the_nonce() {
        let mut t = TypeTracker::new(ResourceType::Endpoint);
        t.on_delta_request(&["a".into()], &[], &BTreeMap::new(), "", None, NOW);
        let avail = map(&[("a", "1"), ("b", "1")]);
        let plan = t.plan_delta(&avail).unwrap();
        t.sent_delta("n1".into(), plan);
        assert_eq!(
            t.on_delta_request(
                &["b".into()],
                &["a".into()],
                &BTreeMap::new(),
                "stale",
                None,
                NOW
            ),
            Received::Subscription
        );
        assert!(t.names().contains("b") && !t.names().contains("a"));
        t.on_delta_request(&[], &[], &BTreeMap::new(), "n1", None, NOW);
        let plan = t.plan_delta(&avail).unwrap();
        assert_eq!(names(&plan.resources), ["b"]);
        assert!(
            plan.removed.is_empty(),
            "an unsubscribed name is not reported removed"
        );
    }

    #[test]
    fn delta_should_report_missing_names_once_and_deliver_them_when_they_appear() {
        let mut t = TypeTracker::new(ResourceType::Endpoint);
        t.on_delta_request(&["later".into()], &[], &BTreeMap::new(), "", None, NOW);
        let plan = t.plan_delta(&map(&[])).unwrap();
        assert_eq!(plan.removed, ["later"]);
        t.sent_delta("n1".into(), plan);
        t.on_delta_request(&[], &[], &BTreeMap::new(), "n1", None, NOW);
        assert!(t.plan_delta(&map(&[])).is_none(), "reported once");
        let plan = t.plan_delta(&map(&[("later", "1")])).unwrap();
        assert_eq!(names(&plan.resources), ["later"]);
    }

    #[test]
    fn delta_should_honour_initial_resource_versions_on_reconnect() {
        let mut t = TypeTracker::new(ResourceType::Cluster);
        let initial: BTreeMap<String, String> = [
            ("a".to_string(), "1".to_string()),
            ("gone".to_string(), "1".to_string()),
        ]
        .into_iter()
        .collect();
        t.on_delta_request(&[], &[], &initial, "", None, NOW);
        let plan = t.plan_delta(&map(&[("a", "1"), ("b", "1")])).unwrap();
        assert_eq!(names(&plan.resources), ["b"], "the client already has a@1");
        assert_eq!(plan.removed, ["gone"]);
    }

    #[test]
    fn delta_should_not_resend_a_nacked_version() {
        let mut t = TypeTracker::new(ResourceType::Listener);
        t.on_delta_request(&[], &[], &BTreeMap::new(), "", None, NOW);
        let bad = map(&[("l", "bad")]);
        let plan = t.plan_delta(&bad).unwrap();
        t.sent_delta("n1".into(), plan);
        assert_eq!(
            t.on_delta_request(
                &[],
                &[],
                &BTreeMap::new(),
                "n1",
                Some("rejected".into()),
                NOW
            ),
            Received::Nack
        );
        assert!(t.plan_delta(&bad).is_none());
        let (acked, pending) = t.held_shared();
        assert_eq!(
            acked.len() + pending.map_or(0, |p| p.len()),
            0,
            "the client holds nothing it NACKed"
        );
    }

    #[test]
    fn delta_explicit_wildcard_can_be_added_and_removed() {
        let mut t = TypeTracker::new(ResourceType::Listener);
        t.on_delta_request(&["x".into()], &[], &BTreeMap::new(), "", None, NOW);
        assert!(!t.is_wildcard());
        t.on_delta_request(&["*".into()], &[], &BTreeMap::new(), "", None, NOW);
        assert!(t.is_wildcard());
        t.on_delta_request(&[], &["*".into()], &BTreeMap::new(), "", None, NOW);
        assert!(!t.is_wildcard());
    }

    #[test]
    fn state_versions_depend_on_names_and_versions_only() {
        let a = map(&[("a", "1"), ("b", "2")]);
        let t = TypeTracker::new(ResourceType::Cluster);
        let v1 = version_of(&t.desired(&a));
        let mut t2 = TypeTracker::new(ResourceType::Cluster);
        t2.on_sotw_request(&[], "", None, NOW);
        let v2 = version_of(&t2.desired(&a));
        assert_ne!(v1, v2, "an unsubscribed tracker wants nothing");
        assert_eq!(v2, version_of(&t2.desired(&map(&[("b", "2"), ("a", "1")]))));
        assert_ne!(v2, version_of(&t2.desired(&map(&[("a", "1"), ("b", "3")]))));
    }

    #[test]
    fn delta_should_resend_endpoints_of_a_cluster_sent_again_though_unchanged() {
        let mut t = TypeTracker::new(ResourceType::Endpoint);
        t.on_delta_request(
            &["a".into(), "b".into()],
            &[],
            &BTreeMap::new(),
            "",
            None,
            NOW,
        );
        let avail = map(&[("a", "1"), ("b", "1")]);
        let plan = t.plan_delta(&avail).unwrap();
        t.sent_delta("n1".into(), plan);
        t.on_delta_request(&[], &[], &BTreeMap::new(), "n1", None, NOW);
        assert!(t.plan_delta(&avail).is_none(), "nothing changed");
        assert!(!t.resend(["c"]), "a name the client does not hold");
        assert!(t.resend(["a"]));
        let plan = t.plan_delta(&avail).expect("a goes out again");
        assert_eq!(names(&plan.resources), ["a"]);
        assert!(plan.removed.is_empty());
    }

    #[test]
    fn sotw_should_resend_endpoints_of_a_cluster_sent_again_though_unchanged() {
        let mut t = TypeTracker::new(ResourceType::Endpoint);
        t.on_sotw_request(&["a".into(), "b".into()], "", None, NOW);
        let avail = map(&[("a", "1"), ("b", "1")]);
        let plan = t.plan_sotw(&avail).unwrap();
        let version = plan.version.clone();
        t.sent_sotw("n1".into(), plan);
        t.on_sotw_request(&["a".into(), "b".into()], "n1", None, NOW);
        assert!(t.plan_sotw(&avail).is_none(), "nothing changed");
        assert!(t.resend(["b"]));
        let plan = t.plan_sotw(&avail).expect("the set goes out again");
        assert_eq!(names(&plan.resources), ["a", "b"]);
        assert_eq!(plan.version, version, "same content, same version");
    }

    fn delta_nack(t: &mut TypeTracker, nonce: &str, message: &str, at: SystemTime) -> Received {
        t.on_delta_request(&[], &[], &BTreeMap::new(), nonce, Some(message.into()), at)
    }

    fn delta_ack(t: &mut TypeTracker, nonce: &str) -> Received {
        t.on_delta_request(&[], &[], &BTreeMap::new(), nonce, None, NOW)
    }

    fn versions(state: &State) -> Vec<(&str, &str)> {
        state
            .iter()
            .map(|(n, r)| (n.as_str(), r.version.as_str()))
            .collect()
    }

    #[test]
    fn should_find_the_resources_envoys_message_names_as_failed() {
        let lds = "Error adding/updating listener(s) redis_6379: cannot bind '127.0.0.1:6379': Address already in use, x/y@1: bad";
        assert!(names_as_failed(lds, "redis_6379"));
        assert!(names_as_failed(lds, "x/y@1"));
        assert!(!names_as_failed(lds, "6379"), "part of a name");
        assert!(!names_as_failed(lds, "redis_637"), "a prefix of a name");
        assert!(!names_as_failed(lds, "y@1"), "a suffix of a name");
        assert!(names_as_failed("a: first\nb: second", "b"));
        assert!(!names_as_failed(lds, ""));
    }

    #[test]
    fn delta_should_hold_what_a_nack_did_not_name_and_withhold_what_it_did() {
        let mut t = TypeTracker::new(ResourceType::Listener);
        t.on_delta_request(&[], &[], &BTreeMap::new(), "", None, NOW);
        let plan = t.plan_delta(&map(&[("a", "1"), ("b", "1")])).unwrap();
        t.sent_delta("n1".into(), plan);
        delta_ack(&mut t, "n1");
        let next = map(&[("a", "2"), ("b", "2"), ("c", "1")]);
        let plan = t.plan_delta(&next).unwrap();
        assert_eq!(names(&plan.resources), ["a", "b", "c"]);
        t.sent_delta("n2".into(), plan);
        let message = "Error adding/updating listener(s) b: cannot bind, c: no such cluster";
        assert_eq!(delta_nack(&mut t, "n2", message, NOW), Received::Nack);
        // Envoy applied a@2 and kept b@1; it holds no c.
        let (held, pending) = t.held_shared();
        assert!(pending.is_none());
        assert_eq!(versions(&held), [("a", "2"), ("b", "1")]);
        assert_eq!(versions(&t.sent_shared()), [("a", "2"), ("b", "1")]);
        let rejected = t.rejected().expect("b and c are refused");
        assert_eq!(rejected.keys().collect::<Vec<_>>(), ["b", "c"]);
        assert_eq!(rejected["b"].resource.version, "2");
        assert_eq!(rejected["c"].nack.message, message);
        assert_ne!(
            t.acked_version(),
            Some(t.desired_version(&next).as_str()),
            "what the proxy holds is not what it should"
        );
        assert!(
            t.plan_delta(&next).is_none(),
            "refused resources that did not change are not offered again at once"
        );
        // c changes: it is offered again, b is still withheld.
        let fixed = map(&[("a", "2"), ("b", "2"), ("c", "2")]);
        let plan = t.plan_delta(&fixed).unwrap();
        assert_eq!(names(&plan.resources), ["c"]);
        assert!(plan.removed.is_empty(), "b is kept at its old version");
        t.sent_delta("n3".into(), plan);
        assert_eq!(delta_ack(&mut t, "n3"), Received::Ack);
        let rejected = t.rejected().expect("b is still refused");
        assert_eq!(rejected.keys().collect::<Vec<_>>(), ["b"]);
        assert!(t.nack().is_some(), "the NACK stands while b is refused");
        assert_eq!(
            versions(&t.held_shared().0),
            [("a", "2"), ("b", "1"), ("c", "2")]
        );
    }

    #[test]
    fn delta_should_offer_refused_resources_again_when_the_retry_is_due() {
        let mut t = TypeTracker::new(ResourceType::Listener);
        t.on_delta_request(&[], &[], &BTreeMap::new(), "", None, NOW);
        let want = map(&[("l", "1")]);
        let plan = t.plan_delta(&want).unwrap();
        t.sent_delta("n1".into(), plan);
        delta_nack(
            &mut t,
            "n1",
            "Error adding/updating listener(s) l: cannot bind",
            NOW,
        );
        assert!(t.held_shared().0.is_empty(), "the proxy holds no l");
        let due = t.retry_at().expect("a retry is planned");
        assert_eq!(due, NOW + RETRY_FIRST);
        assert!(!t.retry_if_due(due - Duration::from_millis(1)));
        assert!(t.plan_delta(&want).is_none());
        assert!(t.retry_if_due(due));
        assert_eq!(t.retry_at(), None, "the retry is under way");
        let plan = t.plan_delta(&want).expect("l is offered again, unchanged");
        assert_eq!(names(&plan.resources), ["l"]);
        t.sent_delta("n2".into(), plan);
        // Refused again: the next retry waits twice as long.
        let later = NOW + Duration::from_secs(30);
        delta_nack(
            &mut t,
            "n2",
            "Error adding/updating listener(s) l: cannot bind",
            later,
        );
        assert_eq!(t.retry_at(), Some(later + RETRY_FIRST * 2));
        assert!(t.retry_if_due(later + RETRY_FIRST * 2));
        let plan = t.plan_delta(&want).unwrap();
        t.sent_delta("n3".into(), plan);
        assert_eq!(delta_ack(&mut t, "n3"), Received::Ack);
        assert!(t.rejected().is_none());
        assert!(t.nack().is_none());
        assert_eq!(t.retry_at(), None);
        assert_eq!(t.acked_version(), Some(t.desired_version(&want).as_str()));
    }

    #[test]
    fn a_nack_naming_nothing_offered_should_refuse_everything_offered() {
        let mut t = TypeTracker::new(ResourceType::Cluster);
        t.on_delta_request(&[], &[], &BTreeMap::new(), "", None, NOW);
        let plan = t.plan_delta(&map(&[("a", "1"), ("b", "1")])).unwrap();
        t.sent_delta("n1".into(), plan);
        delta_ack(&mut t, "n1");
        let plan = t.plan_delta(&map(&[("a", "2"), ("b", "1")])).unwrap();
        t.sent_delta("n2".into(), plan);
        delta_nack(&mut t, "n2", "Proto constraint validation failed", NOW);
        assert_eq!(
            t.rejected().unwrap().keys().collect::<Vec<_>>(),
            ["a"],
            "only what the response changed"
        );
        assert_eq!(versions(&t.held_shared().0), [("a", "1"), ("b", "1")]);
    }

    #[test]
    fn a_refused_resource_that_goes_away_should_stop_being_refused() {
        let mut t = TypeTracker::new(ResourceType::Listener);
        t.on_delta_request(&[], &[], &BTreeMap::new(), "", None, NOW);
        let plan = t.plan_delta(&map(&[("a", "1"), ("l", "1")])).unwrap();
        t.sent_delta("n1".into(), plan);
        delta_nack(
            &mut t,
            "n1",
            "Error adding/updating listener(s) l: bad",
            NOW,
        );
        assert!(t.rejected().is_some());
        let gone = map(&[("a", "1")]);
        // Nothing to send: the proxy never held l. Nothing will settle its refusal.
        assert!(t.plan_delta(&gone).is_none());
        assert!(!t.forget_withdrawn(&map(&[("a", "1"), ("l", "1")])));
        assert!(t.forget_withdrawn(&gone));
        assert!(t.rejected().is_none());
        assert!(t.nack().is_none());
        assert_eq!(t.retry_at(), None);
    }

    #[test]
    fn sotw_should_keep_the_old_version_of_a_refused_resource_in_later_responses() {
        let mut t = TypeTracker::new(ResourceType::Listener);
        t.on_sotw_request(&[], "", None, NOW);
        let plan = t.plan_sotw(&map(&[("a", "1"), ("b", "1")])).unwrap();
        t.sent_sotw("n1".into(), plan);
        t.on_sotw_request(&[], "n1", None, NOW);
        let plan = t.plan_sotw(&map(&[("a", "1"), ("b", "2")])).unwrap();
        t.sent_sotw("n2".into(), plan);
        t.on_sotw_request(
            &[],
            "n2",
            Some("Error adding/updating listener(s) b: bad".into()),
            NOW,
        );
        assert_eq!(versions(&t.held_shared().0), [("a", "1"), ("b", "1")]);
        // a changes: the full set goes out with b at the version the proxy kept.
        let next = map(&[("a", "2"), ("b", "2")]);
        let plan = t.plan_sotw(&next).unwrap();
        let sent: Vec<(&str, &str)> = plan
            .resources
            .iter()
            .map(|r| (r.name.as_str(), r.version.as_str()))
            .collect();
        assert_eq!(sent, [("a", "2"), ("b", "1")]);
        assert_ne!(plan.version, t.desired_version(&next));
        t.sent_sotw("n3".into(), plan);
        t.on_sotw_request(&[], "n3", None, NOW);
        assert!(t.nack().is_some(), "b is still refused");
        assert!(t.retry_if_due(NOW + RETRY_FIRST));
        let plan = t.plan_sotw(&next).expect("the retry offers b@2");
        assert_eq!(plan.version, t.desired_version(&next));
        t.sent_sotw("n4".into(), plan);
        t.on_sotw_request(&[], "n4", None, NOW);
        assert!(t.nack().is_none() && t.rejected().is_none());
    }

    #[test]
    fn retries_should_double_up_to_a_bound() {
        assert_eq!(retry_delay(1), RETRY_FIRST);
        assert_eq!(retry_delay(2), RETRY_FIRST * 2);
        assert_eq!(retry_delay(3), RETRY_FIRST * 4);
        assert_eq!(retry_delay(30), RETRY_MAX);
        assert_eq!(retry_delay(u32::MAX), RETRY_MAX);
    }
}
