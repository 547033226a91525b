//! The Istio config source (`serve --istio`) speaks to a client as istiod's own `xds://`
//! client does (istio.io/istio `pkg/adsc`): a first request per type whose nonce is the
//! time, one request for every Istio type it knows, ACKs carrying the node. Real istiod
//! runs against it in tests/istio.rs; this pins the protocol in-process.

use std::sync::Arc;

use prost::Message;
use redis_xds::istio::config_source::{self, EnvoyFilter, McpResource};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::common;
use crate::common::xds::{node, sotw};

const ENVOY_FILTER: &str = "networking.istio.io/v1alpha3/EnvoyFilter";
const MCP_RESOURCE: &str = "type.googleapis.com/istio.mcp.v1alpha1.Resource";
const OTHERS: [&str; 2] = [
    "core/v1alpha1/MeshConfig",
    "networking.istio.io/v1/VirtualService",
];

fn objects(read_policy: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: orders-redis, namespace: shop}}\nspec:\n  clusterIP: 10.96.0.133\n  ports: [{{name: redis, port: 6379}}]\n---\napiVersion: redis-xds.dev/v1alpha1\nkind: RedisCluster\nmetadata: {{name: orders, namespace: shop}}\nspec:\n  endpoints: {{service: orders-redis}}\n  listener: {{port: 6379, readPolicy: {read_policy}}}\n"
    )
}

fn body(resource: &envoy_types::pb::google::protobuf::Any) -> (String, EnvoyFilter) {
    assert_eq!(resource.type_url, MCP_RESOURCE);
    let r = McpResource::decode(resource.value.as_slice()).unwrap();
    let name = r.metadata.unwrap().name;
    let spec = EnvoyFilter::decode(r.body.unwrap().value.as_slice()).unwrap();
    (name, spec)
}

#[tokio::test]
async fn should_answer_every_type_istiod_asks_and_follow_the_filters() {
    let first = common::snapshot_from_yaml(&objects("Master"), None);
    let (snapshots_tx, snapshots) = watch::channel(Arc::clone(&first));
    let shutdown = CancellationToken::new();
    let (tx, rx) = config_source::channel();
    tokio::spawn(config_source::follow_snapshots(
        snapshots,
        Default::default(),
        tx,
        shutdown.clone(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(config_source::serve(listener, rx, shutdown.clone()));
    let _stop = shutdown.clone().drop_guard();

    let mut client = sotw(addr).await;
    // As adsc: the node on the first request only, the time as every first nonce.
    let id = "sidecar~10.0.0.1~istiod-0.istio-system~istio-system.svc.cluster.local";
    client
        .send(
            node(id, None),
            OTHERS[0],
            &[],
            "",
            "2026-12-07 18:00:00",
            None,
        )
        .await;
    client
        .send(None, ENVOY_FILTER, &[], "", "2026-12-07 18:00:01", None)
        .await;
    client
        .send(None, OTHERS[1], &[], "", "2026-12-07 18:00:02", None)
        .await;
    let mut seen = Vec::new();
    let mut filter = None;
    for _ in 0..3 {
        let resp = client.recv().await;
        if resp.type_url == ENVOY_FILTER {
            filter = Some(resp.clone());
        } else {
            assert!(
                resp.resources.is_empty(),
                "{} answered empty",
                resp.type_url
            );
        }
        seen.push(resp.type_url.clone());
        client.ack(&resp, &[]).await;
    }
    seen.sort();
    let mut expected = vec![ENVOY_FILTER.to_owned(), OTHERS[0].into(), OTHERS[1].into()];
    expected.sort();
    assert_eq!(seen, expected, "each type answered once");
    let filter = filter.unwrap();
    assert_eq!(filter.resources.len(), 1);
    let (name, spec) = body(&filter.resources[0]);
    // No clients selector: one filter in the mesh's root namespace, for every sidecar.
    assert_eq!(name, "istio-system/redis-xds");
    assert!(!spec.config_patches.is_empty());

    // An edit reaches istiod as a new EnvoyFilter state; the empty types stay answered.
    snapshots_tx.send_replace(common::snapshot_from_yaml(
        &objects("Replica"),
        Some(&first),
    ));
    let next = client.recv().await;
    assert_eq!(next.type_url, ENVOY_FILTER);
    assert_ne!(next.version_info, filter.version_info);
    assert_ne!(body(&next.resources[0]).1, spec);
}
