//! The ADS server driven by an in-process client over real gRPC on 127.0.0.1, through
//! every protocol rule it promises. Each test is named after the rule it checks.

use crate::common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::xds::{
    self, CDS, Delta, EDS, LDS, PATIENCE, Sotw, delta_names, nack, node, sotw_names,
};
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use redis_xds::snapshot::Snapshot;
use redis_xds::xds::{AdsServer, Registry, ResourceSource, ResourceType};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

fn rc(name: &str, spec: &str) -> String {
    common::redis_cluster("ns", name, spec)
}

/// `a` (Cluster mode) has a listener for proxies in namespace "shop" that routes `s:` to
/// `b` and `t:` to `c` (both Sharded, so they have EDS endpoints).
fn base_model(b_port: u16) -> String {
    rc(
        "a",
        "endpoints: {static: [\"127.0.0.1:7000\"]}\nlistener:\n  port: 7001\n  clients: {namespaces: [shop]}\n  routes: [{prefix: \"s:\", cluster: b}, {prefix: \"t:\", cluster: c}]",
    ) + &rc(
        "b",
        &format!("mode: Sharded\nendpoints: {{static: [\"x=127.0.0.1:{b_port}\"]}}"),
    ) + &rc(
        "c",
        "mode: Sharded\nendpoints: {static: [\"y=127.0.0.1:7300\"]}",
    )
}

const A: &str = "redis/ns/a";
const B: &str = "redis/ns/b";
const C: &str = "redis/ns/c";
const LA: &str = "redis/ns/a@127.0.0.1:7001";

struct Harness {
    sources: watch::Sender<Arc<dyn ResourceSource>>,
    previous: Arc<Snapshot>,
    addr: SocketAddr,
    registry: Arc<Registry>,
    metrics: Arc<redis_xds::metrics::Metrics>,
    shutdown: CancellationToken,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn snapshot(yaml: &str, previous: Option<&Snapshot>) -> Arc<Snapshot> {
    let snap = common::snapshot_from_yaml(yaml, previous);
    assert!(
        snap.compiled.problems.is_empty(),
        "{:?}",
        snap.compiled.problems
    );
    snap
}

impl Harness {
    async fn start(yaml: &str) -> Harness {
        Harness::start_with(snapshot(yaml, None)).await
    }

    async fn start_with(first: Arc<Snapshot>) -> Harness {
        let (sources, rx) = watch::channel::<Arc<dyn ResourceSource>>(first.clone());
        let registry = Arc::new(Registry::default());
        let shutdown = CancellationToken::new();
        let metrics = Arc::new(redis_xds::metrics::Metrics::default());
        let ads = AdsServer::new(
            rx,
            Arc::clone(&registry),
            Arc::clone(&metrics),
            shutdown.clone(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = shutdown.clone();
        tokio::spawn(redis_xds::xds::server::serve(
            listener,
            ads.into_service(),
            None,
            stop,
        ));
        Harness {
            sources,
            previous: first,
            addr,
            registry,
            metrics,
            shutdown,
        }
    }

    fn publish(&mut self, yaml: &str) {
        let snap = snapshot(yaml, Some(&self.previous));
        self.previous = Arc::clone(&snap);
        self.sources.send_replace(snap);
    }

    async fn delta(&self) -> Delta {
        xds::delta(self.addr).await
    }

    async fn sotw(&self) -> Sotw {
        xds::sotw(self.addr).await
    }
}

/// Opens a Delta stream for a proxy in "shop" and takes it to a synced state: CDS a,b,c,
/// EDS b,c and LDS a, all ACKed.
async fn synced_delta(h: &Harness) -> Delta {
    let mut d = h.delta().await;
    d.subscribe(node("p", Some("shop")), CDS, &[]).await;
    let cds = d.recv_ack().await;
    assert_eq!(cds.type_url, CDS);
    assert_eq!(delta_names(&cds), [A, B, C]);
    d.subscribe(None, EDS, &[B, C]).await;
    let eds = d.recv_ack().await;
    assert_eq!(eds.type_url, EDS);
    assert_eq!(delta_names(&eds), [B, C]);
    d.subscribe(None, LDS, &[]).await;
    let lds = d.recv_ack().await;
    assert_eq!(lds.type_url, LDS);
    assert_eq!(delta_names(&lds), [LA]);
    d
}

#[tokio::test]
async fn delta_wildcard_and_named_subscriptions_deliver_the_proxys_view() {
    let h = Harness::start(&base_model(7200)).await;
    let _d = synced_delta(&h).await;
    // A proxy in another namespace is not selected by `clients`: no listener, and so no
    // clusters either, yet its first requests are still answered.
    let mut other = h.delta().await;
    other.subscribe(node("q", Some("web")), CDS, &[]).await;
    let cds = other.recv_ack().await;
    assert!(cds.resources.is_empty() && cds.removed_resources.is_empty());
    other.subscribe(None, LDS, &[]).await;
    let lds = other.recv().await;
    assert!(lds.resources.is_empty());
}

#[tokio::test]
async fn delta_sends_only_what_changed_and_nothing_for_an_unchanged_model() {
    let mut h = Harness::start(&base_model(7200)).await;
    let mut d = synced_delta(&h).await;
    // Identical content: nothing may be sent. The next change proves it: its response
    // must be the first one to arrive.
    h.publish(&base_model(7200));
    h.publish(&base_model(7201));
    let eds = d.recv().await;
    assert_eq!(eds.type_url, EDS, "the unchanged publish sent something");
    assert_eq!(delta_names(&eds), [B], "only the changed endpoints");
    assert!(eds.removed_resources.is_empty());
}

#[tokio::test]
async fn delta_reports_deletions_and_removes_listeners_before_their_clusters() {
    let mut h = Harness::start(&base_model(7200)).await;
    let mut d = synced_delta(&h).await;
    h.publish(&rc("z", "endpoints: {static: [\"127.0.0.1:1\"]}"));
    // The listener goes first; its clusters stay until the proxy confirmed it is gone.
    let lds = d.recv().await;
    assert_eq!(lds.type_url, LDS);
    assert_eq!(lds.removed_resources, [LA]);
    assert!(
        h.registry.list()[0].types[&ResourceType::Cluster]
            .acked_version
            .is_some()
    );
    d.ack(&lds).await;
    let cds = d.recv().await;
    assert_eq!(cds.type_url, CDS);
    assert_eq!(cds.removed_resources, [A, B, C]);
}

/// Opens a Delta stream for a proxy in "shop" subscribed to all clusters and listeners,
/// with the first response of each ACKed.
async fn cds_and_lds(h: &Harness) -> Delta {
    let mut d = h.delta().await;
    d.subscribe(node("p", Some("shop")), CDS, &[]).await;
    d.recv_ack().await;
    d.subscribe(None, LDS, &[]).await;
    d.recv_ack().await;
    d
}

#[tokio::test]
async fn delta_adds_clusters_before_the_listener_that_uses_them() {
    let mut h = Harness::start(&rc("z", "endpoints: {static: [\"127.0.0.1:1\"]}")).await;
    let mut d = cds_and_lds(&h).await;
    h.publish(&base_model(7200));
    let first = d.recv().await;
    assert_eq!(first.type_url, CDS, "clusters first");
    assert_eq!(delta_names(&first), [A, B, C]);
    let second = d.recv().await;
    assert_eq!(second.type_url, LDS, "then the listener");
    assert_eq!(delta_names(&second), [LA]);
}

/// A listener waits for the clusters it uses, also when their push is held back behind a
/// response still in flight.
#[tokio::test]
async fn delta_holds_a_listener_until_clusters_held_back_behind_a_pending_response_went_out() {
    let z = |port: u16| {
        rc(
            "z",
            &format!("endpoints: {{static: [\"127.0.0.1:{port}\"]}}\nlistener: {{port: 7101}}"),
        )
    };
    let y = rc(
        "y",
        "endpoints: {static: [\"127.0.0.1:7400\"]}\nlistener: {port: 7401}",
    );
    let mut h = Harness::start(&z(1)).await;
    let mut d = cds_and_lds(&h).await;
    // A change of z's cluster alone: its CDS response is not answered yet.
    h.publish(&z(2));
    let pending = d.recv().await;
    assert_eq!(pending.type_url, CDS);
    assert_eq!(delta_names(&pending), ["redis/ns/z"]);
    // y arrives meanwhile: its cluster cannot go out before that answer, nor its listener.
    h.publish(&(z(2) + &y));
    d.ack(&pending).await;
    let next = d.recv().await;
    assert_eq!(
        next.type_url, CDS,
        "the cluster before the listener that uses it"
    );
    assert_eq!(delta_names(&next), ["redis/ns/y"]);
    d.ack(&next).await;
    let last = d.recv().await;
    assert_eq!(last.type_url, LDS);
    assert_eq!(delta_names(&last), ["redis/ns/y@127.0.0.1:7401"]);
}

#[tokio::test]
async fn delta_reports_subscribed_names_that_do_not_exist_and_delivers_them_when_they_appear() {
    let mut h = Harness::start(&base_model(7200)).await;
    let mut d = h.delta().await;
    d.subscribe(node("p", None), EDS, &["redis/ns/later"]).await;
    let eds = d.recv_ack().await;
    assert!(eds.resources.is_empty());
    assert_eq!(eds.removed_resources, ["redis/ns/later"]);
    h.publish(
        &(base_model(7200)
            + &rc("later", "mode: Sharded\nendpoints: {static: [\"l=127.0.0.1:7400\"]}")
            + &rc("user", "endpoints: {static: [\"127.0.0.1:1\"]}\nlistener: {port: 7002, catchAll: {cluster: later}}")),
    );
    let eds = d.recv().await;
    assert_eq!(delta_names(&eds), ["redis/ns/later"]);
}

#[tokio::test]
async fn delta_honours_subscribe_and_unsubscribe_whatever_the_nonce() {
    let h = Harness::start(&base_model(7200)).await;
    let mut d = h.delta().await;
    d.subscribe(node("p", None), EDS, &[B]).await;
    assert_eq!(delta_names(&d.recv_ack().await), [B]);
    d.send(DeltaDiscoveryRequest {
        type_url: EDS.into(),
        response_nonce: "not-a-nonce-of-this-stream".into(),
        resource_names_subscribe: vec![C.into()],
        resource_names_unsubscribe: vec![B.into()],
        ..Default::default()
    })
    .await;
    let eds = d.recv().await;
    assert_eq!(delta_names(&eds), [C]);
    assert!(
        eds.removed_resources.is_empty(),
        "unsubscribed names are not reported"
    );
    let status = &h.registry.list()[0];
    assert_eq!(status.node_id, "p");
}

#[tokio::test]
async fn delta_does_not_resend_a_nacked_version_and_records_the_error() {
    let mut h = Harness::start(&base_model(7200)).await;
    let mut d = synced_delta(&h).await;
    let changed = base_model(7200).replace("port: 7001", "port: 7001\n    opTimeout: 2s");
    h.publish(&changed);
    let lds = d.recv().await;
    assert_eq!(lds.type_url, LDS);
    d.send(DeltaDiscoveryRequest {
        type_url: LDS.into(),
        response_nonce: lds.nonce.clone(),
        error_detail: nack("listener rejected for the test"),
        ..Default::default()
    })
    .await;
    // Wait until the NACK is recorded, then republish the same content: nothing may be
    // sent. A later endpoint change proves it (its response arrives first).
    let deadline = Instant::now() + PATIENCE;
    loop {
        let status = h.registry.list();
        if let Some(nack) = &status[0].types[&ResourceType::Listener].nack {
            assert_eq!(nack.message, "listener rejected for the test");
            break;
        }
        assert!(Instant::now() < deadline, "NACK not recorded");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    h.publish(&changed);
    h.publish(&changed.replace("127.0.0.1:7200", "127.0.0.1:7201"));
    let next = d.recv().await;
    assert_eq!(next.type_url, EDS, "the NACKed listener was sent again");
    listener_not_resent(&h, ResourceType::Endpoint, &next.nonce, &lds.nonce).await;
}

/// Once the stream has published the sync that sent `nonce` for `kind` (the registry is
/// updated after the whole sync, listeners included), the last listener response must
/// still be the NACKed one.
async fn listener_not_resent(h: &Harness, kind: ResourceType, nonce: &str, nacked: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let status = h.registry.list();
        if status[0].types[&kind].nonce.as_deref() == Some(nonce) {
            assert_eq!(
                status[0].types[&ResourceType::Listener].nonce.as_deref(),
                Some(nacked),
                "the NACKed listener was sent again"
            );
            return;
        }
        assert!(Instant::now() < deadline, "the sync never completed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn delta_reconnect_with_initial_resource_versions_gets_only_the_differences() {
    let h = Harness::start(&base_model(7200)).await;
    let mut first = h.delta().await;
    first.subscribe(node("p", Some("shop")), CDS, &[]).await;
    let cds = first.recv_ack().await;
    let versions: BTreeMap<String, String> = cds
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    drop(first);

    let mut again = h.delta().await;
    let mut initial: std::collections::HashMap<String, String> = versions
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    initial.insert(B.into(), "an-old-version".into());
    initial.insert("redis/ns/gone".into(), "1".into());
    again
        .send(DeltaDiscoveryRequest {
            node: node("p", Some("shop")),
            type_url: CDS.into(),
            initial_resource_versions: initial,
            ..Default::default()
        })
        .await;
    let cds = again.recv().await;
    assert_eq!(
        delta_names(&cds),
        [B],
        "only the cluster whose version differs"
    );
    assert_eq!(cds.removed_resources, ["redis/ns/gone"]);
}

#[tokio::test]
async fn the_node_is_taken_from_the_first_request_of_a_stream() {
    let h = Harness::start(&base_model(7200)).await;
    let mut d = h.delta().await;
    d.subscribe(node("web-proxy", Some("web")), CDS, &[]).await;
    d.recv_ack().await;
    // A later request claiming another namespace changes nothing.
    d.subscribe(node("web-proxy", Some("shop")), LDS, &[]).await;
    let lds = d.recv().await;
    assert!(lds.resources.is_empty());
    let status = h.registry.list();
    assert_eq!(status[0].identity.namespace.as_deref(), Some("web"));
}

#[tokio::test]
async fn a_stream_whose_first_request_has_no_node_is_refused() {
    let h = Harness::start(&base_model(7200)).await;
    let mut d = h.delta().await;
    d.subscribe(None, CDS, &[]).await;
    let err = tokio::time::timeout(PATIENCE, d.rx.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("node"), "{}", err.message());
}

#[tokio::test]
async fn a_proxy_without_metadata_matches_every_clients_selector() {
    let h = Harness::start(&base_model(7200)).await;
    let mut d = h.delta().await;
    d.subscribe(node("anonymous", None), CDS, &[]).await;
    assert_eq!(delta_names(&d.recv_ack().await), [A, B, C]);
}

#[tokio::test]
async fn sotw_lds_and_cds_responses_carry_the_full_set() {
    let mut h = Harness::start(&base_model(7200)).await;
    let mut s = h.sotw().await;
    s.send(node("p", Some("shop")), CDS, &[], "", "", None)
        .await;
    let cds = s.recv().await;
    assert_eq!(sotw_names(&cds), [A, B, C]);
    s.ack(&cds, &[]).await;
    s.send(None, LDS, &[], "", "", None).await;
    let lds = s.recv().await;
    assert_eq!(sotw_names(&lds), [LA]);
    s.ack(&lds, &[]).await;
    // A change to one cluster resends the whole CDS set.
    h.publish(&base_model(7200).replace("127.0.0.1:7000", "127.0.0.1:7009"));
    let cds2 = s.recv().await;
    assert_eq!(cds2.type_url, CDS);
    assert_eq!(sotw_names(&cds2), [A, B, C]);
    assert_ne!(cds2.version_info, cds.version_info);
}

#[tokio::test]
async fn sotw_does_not_answer_a_request_with_a_stale_nonce() {
    let h = Harness::start(&base_model(7200)).await;
    let mut s = h.sotw().await;
    s.send(node("p", None), EDS, &[B], "", "", None).await;
    let eds = s.recv().await;
    assert_eq!(sotw_names(&eds), [B]);
    // Stale: an unknown nonce with a new subscription. It must be ignored...
    s.send(None, EDS, &[B, C], "", "stale-nonce", None).await;
    // ...which the next valid request proves: its answer comes first and holds only C.
    s.ack(&eds, &[C]).await;
    let next = s.recv().await;
    assert_eq!(sotw_names(&next), [C.to_string()]);
}

#[tokio::test]
async fn sotw_records_a_nack_and_does_not_resend_the_rejected_version() {
    let mut h = Harness::start(&base_model(7200)).await;
    let mut s = h.sotw().await;
    s.send(node("p", Some("shop")), CDS, &[], "", "", None)
        .await;
    let cds = s.recv().await;
    s.ack(&cds, &[]).await;
    s.send(None, LDS, &[], "", "", None).await;
    let lds = s.recv().await;
    s.ack(&lds, &[]).await;
    let changed = base_model(7200).replace("port: 7001", "port: 7001\n    opTimeout: 3s");
    h.publish(&changed);
    let lds2 = s.recv().await;
    assert_eq!(lds2.type_url, LDS);
    s.send(
        None,
        LDS,
        &[],
        &lds.version_info,
        &lds2.nonce,
        nack("bad listener"),
    )
    .await;
    let deadline = Instant::now() + PATIENCE;
    while h.registry.list()[0].types[&ResourceType::Listener]
        .nack
        .is_none()
    {
        assert!(Instant::now() < deadline, "NACK not recorded");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status = &h.registry.list()[0].types[&ResourceType::Listener];
    assert_eq!(
        status.acked_version.as_deref(),
        Some(lds.version_info.as_str()),
        "the proxy keeps the old version"
    );
    assert_eq!(status.nack.as_ref().unwrap().version, lds2.version_info);
    h.publish(&changed);
    h.publish(&changed.replace("127.0.0.1:7000", "127.0.0.1:7009"));
    let next = s.recv().await;
    assert_eq!(
        next.type_url, CDS,
        "the NACKed listener version was sent again"
    );
    listener_not_resent(&h, ResourceType::Cluster, &next.nonce, &lds2.nonce).await;
}

#[tokio::test]
async fn sotw_removes_listeners_before_the_clusters_they_use() {
    let mut h = Harness::start(&base_model(7200)).await;
    let mut s = h.sotw().await;
    s.send(node("p", Some("shop")), CDS, &[], "", "", None)
        .await;
    let cds = s.recv().await;
    s.ack(&cds, &[]).await;
    s.send(None, LDS, &[], "", "", None).await;
    let lds = s.recv().await;
    s.ack(&lds, &[]).await;
    h.publish(&rc("z", "endpoints: {static: [\"127.0.0.1:1\"]}"));
    let first = s.recv().await;
    assert_eq!(first.type_url, LDS);
    assert!(first.resources.is_empty());
    s.ack(&first, &[]).await;
    let second = s.recv().await;
    assert_eq!(second.type_url, CDS);
    assert!(second.resources.is_empty());
}

#[tokio::test]
async fn shutdown_ends_every_stream() {
    let h = Harness::start(&base_model(7200)).await;
    let mut d = synced_delta(&h).await;
    assert_eq!(h.registry.count(redis_xds::xds::Variant::Delta), 1);
    h.shutdown.cancel();
    let end = tokio::time::timeout(PATIENCE, d.rx.message())
        .await
        .expect("stream ends");
    assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
}

#[tokio::test]
async fn a_proxy_that_goes_away_is_forgotten() {
    let h = Harness::start(&base_model(7200)).await;
    let d = synced_delta(&h).await;
    assert_eq!(h.registry.list().len(), 1);
    drop(d);
    let deadline = Instant::now() + PATIENCE;
    while !h.registry.list().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the registry still lists a disconnected proxy"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(h.registry.count(redis_xds::xds::Variant::Delta), 0);
}

#[tokio::test]
async fn a_proxy_held_until_the_source_is_ready_is_let_go_when_it_leaves() {
    let mut held = Arc::into_inner(snapshot(&base_model(7200), None)).unwrap();
    held.ready = false;
    let h = Harness::start_with(Arc::new(held)).await;
    let d = h.delta().await;
    d.subscribe(node("p", Some("shop")), CDS, &[]).await;
    let deadline = Instant::now() + PATIENCE;
    while h.metrics.held.get() == 0 {
        assert!(Instant::now() < deadline, "the proxy was never held");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(d);
    while h.metrics.held.get() > 0 {
        assert!(
            Instant::now() < deadline,
            "a proxy that left is still held, waiting for the source"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn proxies_in_the_same_state_share_one_copy_of_what_they_were_sent() {
    let mut h = Harness::start(&base_model(7200)).await;
    let mut a = synced_delta(&h).await;
    let mut b = synced_delta(&h).await;
    // A change both must follow, each with exactly the changed endpoints.
    h.publish(&base_model(7201));
    for d in [&mut a, &mut b] {
        let eds = d.recv_ack().await;
        assert_eq!(delta_names(&eds), [B]);
    }
    let deadline = Instant::now() + PATIENCE;
    let acked = |s: &redis_xds::xds::ProxyStatus| {
        s.types
            .get(&ResourceType::Endpoint)
            .and_then(|t| t.acked_version.clone())
    };
    let statuses = loop {
        let list = h.registry.list();
        if list.len() == 2 && acked(&list[0]).is_some() && acked(&list[0]) == acked(&list[1]) {
            break list;
        }
        assert!(Instant::now() < deadline, "both proxies ACK the change");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    // Wildcard subscribers with the same view hold one shared state, not a copy each.
    for kind in [ResourceType::Cluster, ResourceType::Listener] {
        let (x, y) = (&statuses[0].types[&kind], &statuses[1].types[&kind]);
        assert!(!x.sent.is_empty(), "{kind} was sent");
        assert!(
            Arc::ptr_eq(&x.sent, &y.sent),
            "{kind}: two copies of the same state"
        );
    }
    // A proxy with another view gets its own.
    let mut other = h.delta().await;
    other.subscribe(node("q", Some("web")), CDS, &[]).await;
    let cds = other.recv_ack().await;
    assert!(cds.resources.is_empty());
}
