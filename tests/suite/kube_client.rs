//! The Kubernetes client paths against a mocked API server (`tower_test`): every request
//! redis-xds makes is asserted exactly (method, path, query, body), and answered by hand.
//! No real API server can run on these machines; `deploy/` documents the real-cluster path.

use crate::common;

use std::collections::HashMap;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::Api;
use kube::client::Body;
use redis_xds::k8s::lease::{LeaseConfig, acquire_or_renew};
use redis_xds::k8s::status::write_changed;
use redis_xds::model::ObjectKey;
use redis_xds::snapshot::Snapshot;
use redis_xds::source::k8s::index::{Index, KINDS};
use serde_json::{Value, json};
use tokio::sync::watch;
use tower_test::mock::{self, Handle};

const PATIENCE: Duration = Duration::from_secs(10);
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/redis-xds/leases";

type MockHandle = Handle<Request<Body>, Response<Body>>;

fn client() -> (kube::Client, MockHandle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, "default"), handle)
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

async fn body_json(req: Request<Body>) -> Value {
    let bytes = req.into_body().collect_bytes().await.unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn cfg() -> LeaseConfig {
    LeaseConfig {
        name: "redis-xds-status".into(),
        identity: "redis-xds-0".into(),
        duration: Duration::from_secs(15),
    }
}

fn lease(holder: &str, renewed: &str, version: &str, transitions: i32) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "redis-xds-status", "namespace": "redis-xds", "resourceVersion": version},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "renewTime": renewed,
                 "acquireTime": renewed, "leaseTransitions": transitions}
    })
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "leases \"redis-xds-status\" not found"})
}

fn leases_api(client: kube::Client) -> Api<k8s_openapi::api::coordination::v1::Lease> {
    Api::namespaced(client, "redis-xds")
}

#[tokio::test]
async fn lease_is_created_when_absent() {
    let (client, handle) = client();
    let server = tokio::spawn(async move {
        let mut handle = pin!(handle);
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri().to_string(), format!("{LEASES}/redis-xds-status"));
        send.send_response(json_response(StatusCode::NOT_FOUND, &not_found()));

        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req.method(), Method::POST);
        assert_eq!(req.uri().to_string(), format!("{LEASES}?"));
        let body = body_json(req).await;
        assert_eq!(body["metadata"]["name"], "redis-xds-status");
        assert_eq!(body["spec"]["holderIdentity"], "redis-xds-0");
        assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
        assert_eq!(body["spec"]["leaseTransitions"], 0);
        assert!(body["spec"]["renewTime"].is_string());
        send.send_response(json_response(
            StatusCode::CREATED,
            &lease("redis-xds-0", "2026-01-01T00:00:00.000000Z", "1", 0),
        ));
    });
    let now = jiff::Timestamp::now();
    assert!(
        acquire_or_renew(&leases_api(client), &cfg(), now)
            .await
            .unwrap()
    );
    server.await.unwrap();
}

#[tokio::test]
async fn a_fresh_lease_of_another_replica_is_left_alone() {
    let (client, handle) = client();
    let now = jiff::Timestamp::now();
    let renewed = now.to_string();
    let server = tokio::spawn(async move {
        let mut handle = pin!(handle);
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req.method(), Method::GET);
        send.send_response(json_response(
            StatusCode::OK,
            &lease("redis-xds-1", &renewed, "7", 3),
        ));
        // No further request: the call below returns without writing.
    });
    let held = tokio::time::timeout(PATIENCE, acquire_or_renew(&leases_api(client), &cfg(), now))
        .await
        .unwrap()
        .unwrap();
    assert!(!held);
    server.await.unwrap();
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_with_its_resource_version() {
    let (client, handle) = client();
    let server = tokio::spawn(async move {
        let mut handle = pin!(handle);
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req.method(), Method::GET);
        send.send_response(json_response(
            StatusCode::OK,
            &lease("redis-xds-1", "2020-01-01T00:00:00.000000Z", "42", 3),
        ));

        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req.method(), Method::PUT);
        assert_eq!(req.uri().to_string(), format!("{LEASES}/redis-xds-status?"));
        let body = body_json(req).await;
        assert_eq!(
            body["metadata"]["resourceVersion"], "42",
            "optimistic concurrency"
        );
        assert_eq!(body["spec"]["holderIdentity"], "redis-xds-0");
        assert_eq!(body["spec"]["leaseTransitions"], 4);
        send.send_response(json_response(StatusCode::OK, &body));
    });
    assert!(
        acquire_or_renew(&leases_api(client), &cfg(), jiff::Timestamp::now())
            .await
            .unwrap()
    );
    server.await.unwrap();
}

#[tokio::test]
async fn the_holder_renews_and_loses_a_race_on_conflict() {
    let (client, handle) = client();
    let server = tokio::spawn(async move {
        let mut handle = pin!(handle);
        for conflict in [false, true] {
            let (req, send) = handle.next_request().await.unwrap();
            assert_eq!(req.method(), Method::GET);
            send.send_response(json_response(
                StatusCode::OK,
                &lease("redis-xds-0", "2026-01-01T00:00:00.000000Z", "9", 1),
            ));
            let (req, send) = handle.next_request().await.unwrap();
            assert_eq!(req.method(), Method::PUT);
            let body = body_json(req).await;
            assert_eq!(
                body["spec"]["leaseTransitions"], 1,
                "a renewal is not a transition"
            );
            assert_ne!(body["spec"]["renewTime"], "2026-01-01T00:00:00.000000Z");
            if conflict {
                let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409, "message": "the object has been modified"});
                send.send_response(json_response(StatusCode::CONFLICT, &status));
            } else {
                send.send_response(json_response(StatusCode::OK, &body));
            }
        }
    });
    let api = leases_api(client);
    let now = jiff::Timestamp::now();
    assert!(acquire_or_renew(&api, &cfg(), now).await.unwrap());
    assert!(!acquire_or_renew(&api, &cfg(), now).await.unwrap());
    server.await.unwrap();
}

fn snapshot(yaml: &str) -> Arc<Snapshot> {
    common::snapshot_from_yaml(yaml, None)
}

const ORDERS: &str = "apiVersion: redis-xds.dev/v1alpha1\nkind: RedisCluster\nmetadata: {name: orders, namespace: shop, generation: 3}\nspec:\n  endpoints: {static: [\"10.0.0.1:6379\", \"10.0.0.2:6379\"]}\n  listener: {port: 6379, routes: [{prefix: \"x\", cluster: LIST}]}\n";

#[tokio::test]
async fn status_is_patched_with_conditions_and_only_when_it_changed() {
    let (client, handle) = client();
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = Arc::clone(&seen);
    let server = tokio::spawn(async move {
        let mut handle = pin!(handle);
        while let Some((req, send)) = handle.next_request().await {
            assert_eq!(req.method(), Method::PATCH);
            assert_eq!(
                req.uri().to_string(),
                "/apis/redis-xds.dev/v1alpha1/namespaces/shop/redisclusters/orders/status?"
            );
            assert_eq!(
                req.headers()["content-type"],
                "application/merge-patch+json"
            );
            let body = body_json(req).await;
            sink.lock().unwrap().push(body.clone());
            send.send_response(json_response(StatusCode::OK, &json!({"apiVersion": "redis-xds.dev/v1alpha1", "kind": "RedisCluster", "metadata": {"name": "orders", "namespace": "shop"}, "spec": {"endpoints": {"static": ["10.0.0.1:6379"]}}})));
        }
    });
    let mut written = HashMap::new();
    // A route to a missing cluster: Accepted=False with the reason and the field.
    let broken = snapshot(&ORDERS.replace("LIST", "nowhere"));
    tokio::time::timeout(
        PATIENCE,
        write_changed(&client, &broken, &Default::default(), &[], &mut written),
    )
    .await
    .unwrap();
    // Unchanged: no request (the call would wait forever for an answer otherwise).
    tokio::time::timeout(
        PATIENCE,
        write_changed(&client, &broken, &Default::default(), &[], &mut written),
    )
    .await
    .unwrap();
    // Fixed: written again.
    let fixed = snapshot(&ORDERS.replace("LIST", "orders"));
    tokio::time::timeout(
        PATIENCE,
        write_changed(&client, &fixed, &Default::default(), &[], &mut written),
    )
    .await
    .unwrap();
    drop(client);
    server.await.unwrap();

    let patches = seen.lock().unwrap().clone();
    assert_eq!(patches.len(), 2, "{patches:#?}");
    let first = &patches[0]["status"];
    assert_eq!(first["observedGeneration"], 3);
    assert_eq!(first["endpoints"], 2);
    assert_eq!(first["conditions"][0]["type"], "Accepted");
    assert_eq!(first["conditions"][0]["status"], "False");
    assert_eq!(first["conditions"][0]["reason"], "RefNotFound");
    assert_eq!(
        first["conditions"][0]["message"],
        "spec.listener.routes[0].cluster: RedisCluster \"nowhere\" not found"
    );
    assert_eq!(first["conditions"][1]["type"], "Programmed");
    assert_eq!(first["conditions"][1]["reason"], "NotAccepted");
    let second = &patches[1]["status"];
    assert_eq!(second["conditions"][0]["status"], "True");
    assert_eq!(second["conditions"][1]["status"], "True");
    assert_eq!(second["conditions"][1]["reason"], "NoProxies");
    assert_eq!(
        second["proxies"],
        json!({"connected": 0, "synced": 0, "rejected": 0})
    );
    let _ = ObjectKey::new("shop", "orders");
}

/// Answers the watchers' list and watch calls; records every request line.
async fn fake_api_server(handle: MockHandle, requests: Arc<Mutex<Vec<String>>>) {
    let mut handle = pin!(handle);
    let mut held = Vec::new();
    while let Some((req, send)) = handle.next_request().await {
        let uri = req.uri().to_string();
        requests
            .lock()
            .unwrap()
            .push(format!("{} {uri}", req.method()));
        let path = req.uri().path().to_string();
        let watching = uri.contains("watch=true");
        let (api_version, kind, items) = match path.as_str() {
            "/apis/redis-xds.dev/v1alpha1/redisclusters" => (
                "redis-xds.dev/v1alpha1",
                "RedisClusterList",
                json!([
                    {"apiVersion": "redis-xds.dev/v1alpha1", "kind": "RedisCluster",
                     "metadata": {"name": "orders", "namespace": "shop", "resourceVersion": "5"},
                     "spec": {"endpoints": {"selector": {"matchLabels": {"app": "redis"}}}, "listener": {"port": 6379}}},
                    {"apiVersion": "redis-xds.dev/v1alpha1", "kind": "RedisCluster",
                     "metadata": {"name": "bad", "namespace": "shop", "resourceVersion": "6"},
                     "spec": {"endpoints": {"static": ["10.0.0.9:6379"]}, "listener": {"port": 6380, "opTimeout": "soon"}}}
                ]),
            ),
            "/api/v1/pods" => (
                "v1",
                "PodList",
                json!([
                    {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "redis-0", "namespace": "shop", "labels": {"app": "redis"}, "resourceVersion": "7"},
                     "status": {"podIP": "10.1.0.1", "conditions": [{"type": "Ready", "status": "True"}]}}
                ]),
            ),
            "/apis/discovery.k8s.io/v1/endpointslices" => {
                ("discovery.k8s.io/v1", "EndpointSliceList", json!([]))
            }
            "/api/v1/secrets" => ("v1", "SecretList", json!([])),
            other => panic!("unexpected request {other}"),
        };
        if watching {
            // Keep watches open without events: the test only needs the initial lists.
            held.push(send);
            continue;
        }
        let list = json!({"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": "10"}, "items": items});
        send.send_response(json_response(StatusCode::OK, &list));
    }
}

#[tokio::test]
async fn watchers_list_every_kind_in_all_namespaces_and_leave_out_only_the_broken_object() {
    let (client, handle) = client();
    let requests: Arc<Mutex<Vec<String>>> = Arc::default();
    tokio::spawn(fake_api_server(handle, Arc::clone(&requests)));

    let (model_tx, mut models) = watch::channel(Arc::new(redis_xds::model::Model::default()));
    let (ready_tx, mut ready) = watch::channel(false);
    let (state_tx, state) = watch::channel(Arc::default());
    let shared = redis_xds::source::k8s::watch::Watchers {
        index: Arc::new(Mutex::new(Index::new(model_tx, ready_tx))),
        problems: Arc::default(),
        crd_missing: Arc::default(),
        state: state_tx,
        metrics: Arc::default(),
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let tasks: Vec<_> =
        redis_xds::source::k8s::watch::tasks(&client, None, false, shared, shutdown.clone())
            .into_iter()
            .map(|(_, task)| tokio::spawn(task))
            .collect();
    tokio::time::timeout(PATIENCE, ready.wait_for(|r| *r))
        .await
        .expect("ready after every list")
        .unwrap();
    let model = Arc::clone(&models.borrow_and_update());
    let compiled = redis_xds::compile::compile(&model);
    let orders = &compiled.objects[&ObjectKey::new("shop", "orders")];
    assert!(orders.accepted);
    assert_eq!(orders.endpoints, 1, "the Ready pod behind the selector");
    assert!(
        !model
            .redis_clusters
            .contains_key(&ObjectKey::new("shop", "bad"))
    );
    let problems = state.borrow().problems.clone();
    assert_eq!(problems.len(), 1);
    assert!(
        problems[0]
            .to_string()
            .contains("RedisCluster shop/bad: spec.listener.opTimeout: invalid duration"),
        "{}",
        problems[0]
    );

    // After each list, a watch from the list's resourceVersion, with bookmarks.
    let watches = tokio::time::timeout(PATIENCE, async {
        loop {
            let w: Vec<String> = requests
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.contains("watch=true"))
                .cloned()
                .collect();
            if w.len() == 4 {
                return w;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("four watches");
    for path in [
        "/api/v1/pods",
        "/api/v1/secrets",
        "/apis/discovery.k8s.io/v1/endpointslices",
        "/apis/redis-xds.dev/v1alpha1/redisclusters",
    ] {
        let w = watches
            .iter()
            .find(|l| l.starts_with(&format!("GET {path}?")))
            .unwrap_or_else(|| panic!("no watch of {path}: {watches:?}"));
        assert!(w.contains("resourceVersion=10"), "{w}");
        assert!(w.contains("allowWatchBookmarks=true"), "{w}");
        assert!(w.contains("timeoutSeconds="), "{w}");
    }
    let mut lines = requests.lock().unwrap().clone();
    lines.retain(|l| !l.contains("watch=true"));
    lines.sort();
    assert_eq!(
        lines,
        [
            "GET /api/v1/pods?&limit=500",
            // Pages of 50: Helm release Secrets run to hundreds of KiB each.
            "GET /api/v1/secrets?&limit=50",
            "GET /apis/discovery.k8s.io/v1/endpointslices?&limit=500",
            "GET /apis/redis-xds.dev/v1alpha1/redisclusters?&limit=500",
        ]
    );
    assert_eq!(KINDS.len(), 4);
    shutdown.cancel();
    for t in tasks {
        t.await.unwrap();
    }
}
