//! Kubernetes for real: the CRD, `serve` in Kubernetes mode and its status writer against a
//! real kube-apiserver and etcd on loopback (`common::apiserver`). Each test starts its own
//! API server (about 6 s), which is killed when the test ends, whatever happens.

mod common;

use common::apiserver::{ApiServer, start_serve_kube};
use serde_json::{Value, json};

const RDC: &str = "/apis/redis-xds.dev/v1alpha1";

/// An API server with the RedisCluster CRD installed and the namespace `shop`.
fn with_shop() -> ApiServer {
    let api = ApiServer::start();
    api.install_crd();
    api.namespace("shop");
    api
}

fn redis_cluster(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "redis-xds.dev/v1alpha1",
        "kind": "RedisCluster",
        "metadata": {"name": name},
        "spec": spec,
    })
}

/// POSTs a RedisCluster into `shop` and expects the API server to refuse it with a message
/// that contains `expected`.
fn expect_refused(api: &ApiServer, object: Value, expected: &str) {
    let (code, body) = api
        .request(
            "POST",
            &format!("{RDC}/namespaces/shop/redisclusters"),
            Some(&object.to_string()),
        )
        .expect("the API server answers");
    assert_eq!(code, 422, "not refused: {object}\n{body}");
    assert!(
        body.contains(expected),
        "refused without {expected:?}: {body}"
    );
}

#[test]
fn should_establish_the_crd_and_refuse_what_its_schema_and_cel_refuse() {
    let api = with_shop();
    let fixed = json!({"static": ["10.0.0.5:6379"]});

    // CEL rules.
    expect_refused(
        &api,
        redis_cluster(
            "sharded-reads",
            json!({"mode": "Sharded", "endpoints": fixed, "listener": {"port": 6379, "readPolicy": "Replica"}}),
        ),
        "spec.listener.readPolicy applies to mode Cluster only",
    );
    expect_refused(
        &api,
        redis_cluster(
            "sharded-topology",
            json!({"mode": "Sharded", "endpoints": fixed, "topology": {"refreshInterval": "5s"}}),
        ),
        "spec.topology applies to mode Cluster only",
    );
    let node_auth = json!([{"address": "10.0.0.5:6379", "secretRef": {"name": "node"}}]);
    expect_refused(
        &api,
        redis_cluster(
            "sharded-node-auth",
            json!({"mode": "Sharded", "endpoints": fixed, "endpointAuth": node_auth}),
        ),
        "spec.endpointAuth applies to mode Cluster only",
    );
    expect_refused(
        &api,
        redis_cluster(
            "iam-and-node-auth",
            json!({"endpoints": fixed, "endpointAuth": node_auth, "awsIam": {"cacheName": "c", "user": "u"}}),
        ),
        "awsIam replaces auth and endpointAuth",
    );
    expect_refused(
        &api,
        redis_cluster(
            "two-sources",
            json!({"endpoints": {"static": ["10.0.0.5:6379"], "service": "orders"}}),
        ),
        "set exactly one of endpoints.selector, endpoints.service or endpoints.static",
    );
    expect_refused(
        &api,
        redis_cluster(
            "delay-without-delay",
            json!({"endpoints": fixed, "listener": {"port": 6379, "faults": [{"type": "Delay", "percent": 5}]}}),
        ),
        "a Delay fault needs delay",
    );
    // Schema: enums and bounds.
    expect_refused(
        &api,
        redis_cluster("bad-mode", json!({"mode": "Bogus", "endpoints": fixed})),
        "spec.mode",
    );
    expect_refused(
        &api,
        redis_cluster(
            "bad-port",
            json!({"endpoints": fixed, "listener": {"port": 70000}}),
        ),
        "spec.listener.port",
    );

    // A uint32 the API server would otherwise store (it ignores `format: uint32`).
    expect_refused(
        &api,
        redis_cluster(
            "huge-buffer",
            json!({"endpoints": fixed, "listener": {"port": 6379, "maxBufferSizeBeforeFlush": 5_000_000_000u64}}),
        ),
        "spec.listener.maxBufferSizeBeforeFlush",
    );

    // And a valid one is stored as it was written.
    let created = api.create(
        &format!("{RDC}/namespaces/shop/redisclusters"),
        &redis_cluster(
            "orders",
            json!({"endpoints": fixed, "listener": {"port": 6379, "readPolicy": "Replica"}}),
        ),
    );
    assert_eq!(created["spec"]["listener"]["readPolicy"], "Replica");
    assert_eq!(created["metadata"]["generation"], 1);
}

#[test]
fn should_say_that_the_crd_is_missing_until_it_is_installed() {
    let api = ApiServer::start();
    let serve = start_serve_kube(&api, &["--xds-auth", "none"], "info");
    let missing = common::wait_until("serve says the CRD is missing", || {
        let log = serve.log.lock().unwrap().clone();
        log.contains("RedisCluster CRD").then_some(log)
    });
    assert!(
        missing.contains("kubectl apply -f crds/redisclusters.yaml"),
        "the log does not say how to install the CRD:\n{missing}"
    );
    assert!(
        !missing.contains("404 page not found"),
        "the log repeats the API server's 404:\n{missing}"
    );
    let readyz = String::from_utf8(
        std::process::Command::new("curl")
            .args(["-sS", "--max-time", "5"])
            .arg(format!("http://{}/readyz", serve.debug))
            .output()
            .expect("curl runs")
            .stdout,
    )
    .unwrap();
    assert!(
        readyz.contains("not ready") && readyz.contains("RedisCluster CRD"),
        "/readyz does not name the missing CRD: {readyz:?}"
    );

    api.install_crd();
    common::wait_until("serve is ready once the CRD is installed", || {
        let readyz = common::http_get(&serve.debug, "/readyz")?;
        (readyz.trim() == "ready").then_some(())
    });
    // The log is read from serve's stderr by another thread, so the line may reach it a
    // moment after /readyz already answers.
    common::wait_until("serve logs that the CRD is installed", || {
        let log = serve.log.lock().unwrap();
        log.contains("the RedisCluster CRD is installed")
            .then_some(())
    });
}

fn condition(object: &Value, kind: &str) -> Option<Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .cloned()
}

#[test]
fn should_write_status_for_each_watched_redis_cluster() {
    let api = with_shop();
    let path = format!("{RDC}/namespaces/shop/redisclusters");
    api.create(
        &path,
        &redis_cluster(
            "orders",
            json!({"endpoints": {"static": ["10.0.0.5:6379", "10.0.0.6:6379"]}, "listener": {"port": 6379}}),
        ),
    );
    api.create(
        &path,
        &redis_cluster(
            "sessions",
            json!({
                "endpoints": {"static": ["10.0.0.7:6379"]},
                "listener": {"port": 6380, "routes": [{"prefix": "s:", "cluster": "nowhere"}]},
            }),
        ),
    );
    // Stored by the API server (it matches the CRD's pattern) but not a duration Envoy takes.
    api.create(
        &path,
        &redis_cluster(
            "forever",
            json!({"endpoints": {"static": ["10.0.0.8:6379"]}, "connectTimeout": "99999999999999999999h"}),
        ),
    );
    let _serve = start_serve_kube(&api, &["--xds-auth", "none"], "info");

    let get = |name: &str| -> Option<Value> {
        let (code, body) = api.get(&format!("{path}/{name}"))?;
        (code == 200).then(|| serde_json::from_str(&body).unwrap())
    };
    // The object once it has an Accepted condition, and that condition.
    let accepted_condition = |name: &str| -> (Value, Value) {
        let object = common::wait_until(&format!("{name} has an Accepted condition"), || {
            let o = get(name)?;
            condition(&o, "Accepted").map(|_| o)
        });
        let accepted = condition(&object, "Accepted").unwrap();
        (object, accepted)
    };
    let (orders, accepted) = accepted_condition("orders");
    assert_eq!(accepted["status"], "True", "{orders}");
    assert_eq!(orders["status"]["observedGeneration"], 1, "{orders}");
    assert_eq!(orders["status"]["endpoints"], 2, "{orders}");

    let (sessions, refused) = accepted_condition("sessions");
    assert_eq!(refused["status"], "False", "{sessions}");
    assert_eq!(refused["reason"], "RefNotFound", "{sessions}");
    let message = refused["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("spec.listener.routes[0].cluster") && message.contains("nowhere"),
        "the condition does not name the field and the missing RedisCluster: {message}"
    );

    let (forever, unread) = accepted_condition("forever");
    assert_eq!(unread["status"], "False", "{forever}");
    assert_eq!(unread["reason"], "Invalid", "{forever}");
    let message = unread["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("connectTimeout") && message.contains("longer than the largest duration"),
        "the condition does not name the field and the reason: {message}"
    );
    assert_eq!(forever["status"]["observedGeneration"], 1, "{forever}");

    // An edit is observed: the generation moves and the status follows it.
    let (code, body) = api
        .request(
            "PATCH",
            &format!("{path}/orders"),
            Some(
                &json!({"spec": {"listener": {"port": 6379, "readPolicy": "PreferReplica"}}})
                    .to_string(),
            ),
        )
        .unwrap();
    assert_eq!(code, 200, "{body}");
    common::wait_until("orders' status follows generation 2", || {
        let o = get("orders")?;
        (o["status"]["observedGeneration"] == 2).then_some(())
    });
}

#[test]
fn should_follow_changes_soon_after_the_api_server_comes_back() {
    let mut api = with_shop();
    let path = format!("{RDC}/namespaces/shop/redisclusters");
    let created = api.create(
        &path,
        &redis_cluster(
            "orders",
            json!({"endpoints": {"static": ["10.0.0.5:6379"]}, "listener": {"port": 6379}}),
        ),
    );
    let serve = start_serve_kube(&api, &["--xds-auth", "none"], "info");
    // The generation of shop/orders in the published snapshot (what proxies are served).
    let served = |generation: i64| {
        common::http_get(&serve.debug, "/debug/model").is_some_and(|m| {
            let model: Value = serde_json::from_str(&m).unwrap_or_default();
            model["redis_clusters"].as_array().is_some_and(|list| {
                list.iter().any(|o| {
                    o["name"] == "shop/orders"
                        && o["generation"] == generation
                        && o["accepted"] == true
                })
            })
        })
    };
    common::wait_until("orders is served", || served(1).then_some(()));

    // History that etcd's compaction will remove: writes after the one serve last saw.
    for i in 0..5 {
        api.create(
            "/api/v1/namespaces/shop/configmaps",
            &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("history-{i}")}}),
        );
    }
    // Down long enough for kube-runtime's default backoff to have grown past 6 s, and
    // compacted meanwhile, as the API server does every 5 minutes: the resource version
    // serve last saw is gone from etcd's history.
    api.stop_apiserver();
    let compacted = api.compact_etcd();
    std::thread::sleep(std::time::Duration::from_secs(10));
    assert!(
        served(1),
        "the configuration was withdrawn while the API server was down"
    );
    api.start_again();
    // A restarted API server answers /readyz a few seconds before it serves custom
    // resources again (it answers 503, then holds requests, while its CRD handlers start):
    // the clock starts once it serves RedisClusters.
    common::wait_until("the API server serves RedisClusters again", || {
        let (code, _) = api.get(&path)?;
        (code == 200).then_some(())
    });

    // A watch resumed from the version serve last saw is refused with 410 Gone: serve must
    // LIST afresh (it does so after any outage), not resume.
    let seen = created["metadata"]["resourceVersion"].as_str().unwrap();
    assert!(seen.parse::<u64>().unwrap() < compacted);
    let (_, body) = api
        .get(&format!(
            "{path}?watch=true&resourceVersion={seen}&timeoutSeconds=1"
        ))
        .unwrap();
    assert!(
        body.contains("\"code\":410"),
        "a watch from the compacted version {seen} was not refused with 410: {body}"
    );

    let changed = std::time::Instant::now();
    let (code, body) = api
        .request(
            "PATCH",
            &format!("{path}/orders"),
            Some(&json!({"spec": {"listener": {"port": 6390}}}).to_string()),
        )
        .unwrap();
    assert_eq!(code, 200, "{body}");
    common::wait_until("the change is served", || served(2).then_some(()));
    let took = changed.elapsed();
    eprintln!("a change made after the API server came back was served after {took:?}");
    // A restarted API server answers custom resources with 503 and `Retry-After: 5` for a
    // moment; serve's client retries within a second regardless (serve.rs, kube_client),
    // and its watchers retry at most 1.2 s apart (WatchBackoff), then a fresh LIST and the
    // debounce. Measured 0.1-0.2 s; honouring Retry-After, as kube-client does by default,
    // took 3.5 s, and kube-runtime's default watcher backoff 16-30 s.
    assert!(
        took < std::time::Duration::from_secs(2),
        "a change after the API server came back took {took:?} to reach the proxies"
    );
}

/// The names of the proxy counts Leases in `default`.
fn counts_leases(api: &ApiServer) -> Option<Vec<String>> {
    let (code, body) = api.get(
        "/apis/coordination.k8s.io/v1/namespaces/default/leases?labelSelector=redis-xds.dev%2Fproxy-counts%3Dredis-xds-status",
    )?;
    let list: Value = (code == 200).then(|| serde_json::from_str(&body).ok())??;
    let mut names: Vec<String> = list["items"]
        .as_array()?
        .iter()
        .filter_map(|l| l["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    Some(names)
}

/// Two replicas, a real Envoy on each: whichever holds the status Lease counts both
/// proxies in `.status.proxies` (each replica publishes its own counts in a Lease). When
/// the holder stops, the other takes the Lease over and counts what is left.
#[test]
fn should_count_the_proxies_of_every_replica_and_move_the_status_lease_when_its_holder_stops() {
    let api = with_shop();
    let port = common::free_port();
    let path = format!("{RDC}/namespaces/shop/redisclusters");
    api.create(
        &path,
        &redis_cluster(
            "orders",
            json!({"endpoints": {"static": ["127.0.0.1:7000"]}, "listener": {"port": port}}),
        ),
    );
    let mut a = start_serve_kube(
        &api,
        &["--xds-auth", "none", "--identity", "replica-a"],
        "info",
    );
    let mut b = start_serve_kube(
        &api,
        &["--xds-auth", "none", "--identity", "replica-b"],
        "info",
    );
    let holder = || -> Option<String> {
        let (code, body) =
            api.get("/apis/coordination.k8s.io/v1/namespaces/default/leases/redis-xds-status")?;
        let lease: Value = (code == 200).then(|| serde_json::from_str(&body).ok())??;
        lease["spec"]["holderIdentity"].as_str().map(str::to_owned)
    };
    let first = common::wait_until("a replica holds the status Lease", holder);
    let tmp = tempfile::tempdir().unwrap();
    let mut envoys = Vec::new();
    for (replica, node) in [(&a, "envoy-a"), (&b, "envoy-b")] {
        let dir = tmp.path().join(node);
        std::fs::create_dir(&dir).unwrap();
        let xds = replica.xds.to_string();
        envoys.push(common::start_envoy(
            &dir,
            &[
                "--xds-address",
                &xds,
                "--node-id",
                node,
                "--namespace",
                "shop",
            ],
        ));
    }
    let orders = format!("{path}/orders");
    let (api_ref, orders_ref) = (&api, &orders);
    let proxies = |want: Value| {
        move || -> Option<Value> {
            let (code, body) = api_ref.get(orders_ref)?;
            let o: Value = (code == 200).then(|| serde_json::from_str(&body).ok())??;
            (o["status"]["proxies"] == want).then_some(o)
        }
    };
    let both = common::wait_until(
        "orders counts the proxies of both replicas",
        proxies(json!({"connected": 2, "synced": 2, "rejected": 0})),
    );
    let programmed = condition(&both, "Programmed").unwrap();
    assert_eq!(programmed["status"], "True", "{both}");
    assert_eq!(programmed["message"], "all 2 proxies in sync", "{both}");
    assert_eq!(
        counts_leases(&api).unwrap(),
        ["redis-xds-status-replica-a", "redis-xds-status-replica-b"]
    );

    let (stopping, other) = match first.as_str() {
        "replica-a" => (&mut a, "replica-b"),
        "replica-b" => (&mut b, "replica-a"),
        h => panic!("unexpected holder {h:?}"),
    };
    assert!(
        stopping.proc.terminate().success(),
        "serve did not stop cleanly"
    );
    // Its counts go with it.
    assert_eq!(
        counts_leases(&api).unwrap(),
        [format!("redis-xds-status-{other}")]
    );
    // The Lease lasts 15 s; the other replica takes it over once it has expired, and
    // counts the one proxy left connected.
    common::wait_until_for(
        &format!("{other} holds the status Lease"),
        std::time::Duration::from_secs(40),
        || (holder().as_deref() == Some(other)).then_some(()),
    );
    common::wait_until(
        "orders counts the one proxy left",
        proxies(json!({"connected": 1, "synced": 1, "rejected": 0})),
    );
}

/// Namespace `shop` with ServiceAccount `app`, whose tokens the proxies present, and the
/// RedisCluster `orders` they are served.
fn with_app_and_orders() -> ApiServer {
    let api = with_shop();
    api.create(
        "/api/v1/namespaces/shop/serviceaccounts",
        &json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "app"}}),
    );
    api.create(
        &format!("{RDC}/namespaces/shop/redisclusters"),
        &redis_cluster(
            "orders",
            json!({"endpoints": {"static": ["10.0.0.5:6379"]}, "listener": {"port": 6379}}),
        ),
    );
    api
}

/// A token for ServiceAccount `shop/app` from the TokenRequest API, for `audience`.
fn service_account_token(api: &ApiServer, audience: &str) -> String {
    let answer = api.create(
        "/api/v1/namespaces/shop/serviceaccounts/app/token",
        &json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"audiences": [audience], "expirationSeconds": 600},
        }),
    );
    answer["status"]["token"]
        .as_str()
        .expect("a token")
        .to_owned()
}

/// A Delta stream with `token`, subscribed to clusters as proxy `id` of `shop`.
async fn subscribed_with_token(
    addr: std::net::SocketAddr,
    token: &str,
    id: &str,
) -> Result<common::xds::Delta, tonic::Status> {
    let d = common::xds::delta_as(addr, Some(token)).await?;
    d.subscribe(common::xds::node(id, Some("shop")), common::xds::CDS, &[])
        .await;
    Ok(d)
}

/// Opens a Delta stream with `token`, subscribes to clusters as a proxy in `shop`, and
/// returns the first response or the status the stream ended with.
async fn delta_with_token(
    addr: std::net::SocketAddr,
    token: &str,
) -> Result<envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse, tonic::Status> {
    let mut d = subscribed_with_token(addr, token, "app-1").await?;
    let next = tokio::time::timeout(common::xds::PATIENCE, d.rx.message())
        .await
        .expect("an answer within the patience")?;
    next.ok_or_else(|| tonic::Status::unknown("the stream ended without a response"))
}

/// A ServiceAccount token for `shop/app` and the redis-xds audience that expired a minute
/// ago, signed (ES256) with the API server's ServiceAccount key.
fn expired_token(api: &ApiServer) -> String {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    let (_, body) = api
        .get("/api/v1/namespaces/shop/serviceaccounts/app")
        .unwrap();
    let account: Value = serde_json::from_str(&body).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = json!({"alg": "ES256", "typ": "JWT"});
    let claims = json!({
        "iss": "https://kubernetes.default.svc.cluster.local",
        "aud": ["redis-xds"],
        "sub": "system:serviceaccount:shop:app",
        "iat": now - 3600,
        "nbf": now - 3600,
        "exp": now - 60,
        "kubernetes.io": {
            "namespace": "shop",
            "serviceaccount": {"name": "app", "uid": account["metadata"]["uid"]},
        },
    });
    let signing_input = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let rng = ring::rand::SystemRandom::new();
    let key = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &api.sa_key_der,
        &rng,
    )
    .unwrap();
    let signature = key.sign(&rng, signing_input.as_bytes()).unwrap();
    format!("{signing_input}.{}", B64.encode(signature.as_ref()))
}

/// A token for ServiceAccount `shop/<account>` with `uid` and the redis-xds audience,
/// valid for ten minutes, with the claims the TokenRequest API puts in, signed (ES256) with
/// the API server's ServiceAccount key under the key id it publishes: a token the keys
/// vouch for whatever the API server knows of that account.
fn signed_token(api: &ApiServer, account: &str, uid: &str) -> String {
    let (_, jwks) = api.get("/openid/v1/jwks").expect("the published keys");
    let jwks: Value = serde_json::from_str(&jwks).unwrap();
    let kid = jwks["keys"][0]["kid"]
        .as_str()
        .expect("a key id")
        .to_owned();
    let now = jsonwebtoken::get_current_timestamp();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(kid);
    let claims = json!({
        "iss": "https://kubernetes.default.svc.cluster.local",
        "aud": ["redis-xds"], "sub": format!("system:serviceaccount:shop:{account}"),
        "iat": now, "nbf": now, "exp": now + 600,
        "kubernetes.io": {"namespace": "shop", "serviceaccount": {"name": account, "uid": uid}},
    });
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_ec_der(&api.sa_key_der),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn should_end_a_stream_whose_token_the_keys_vouch_for_but_token_review_refuses() {
    let api = with_app_and_orders();
    let serve = start_serve_kube(&api, &["--xds-auth", "token"], "info");
    common::wait_until("serve is ready", || {
        (common::http_get(&serve.debug, "/readyz")?.trim() == "ready").then_some(())
    });
    // Signed with the cluster's key, for the right audience and issuer, but for a
    // ServiceAccount that does not exist: only the TokenReview knows.
    let ghost = signed_token(&api, "ghost", "00000000-0000-0000-0000-000000000000");
    let mut d = subscribed_with_token(serve.xds, &ghost, "ghost-1")
        .await
        .expect("the stream starts on the token's signature");
    let ended = loop {
        match tokio::time::timeout(common::xds::PATIENCE, d.rx.message())
            .await
            .expect("the stream ends within the patience")
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended with OK"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), tonic::Code::Unauthenticated, "{ended:?}");
    assert!(
        ended.message().contains("rejected by the Kubernetes API"),
        "{ended:?}"
    );
    // Reconnecting is refused before the stream starts.
    let refused = delta_with_token(serve.xds, &ghost)
        .await
        .expect_err("a refused token was served again");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    // A token signed the same way for the ServiceAccount that exists is served, and
    // stays served once its review has confirmed it.
    let (_, account) = api
        .get("/api/v1/namespaces/shop/serviceaccounts/app")
        .unwrap();
    let account: Value = serde_json::from_str(&account).unwrap();
    let app = signed_token(&api, "app", account["metadata"]["uid"].as_str().unwrap());
    let mut d = subscribed_with_token(serve.xds, &app, "app-1")
        .await
        .expect("a proxy of shop/app is served");
    let first = d.rx.message().await.expect("served").expect("a response");
    assert_eq!(first.resources.len(), 1, "the orders cluster");
    // Once the API server has answered its review (the second, after ghost's), the stream
    // is still open: a subscription to another type is answered.
    common::wait_until("the review of shop/app answered", || {
        (api.token_reviews().values().sum::<f64>() >= 2.0).then_some(())
    });
    d.subscribe(None, common::xds::LDS, &[]).await;
    let next = tokio::time::timeout(common::xds::PATIENCE, d.rx.message())
        .await
        .expect("an answer within the patience")
        .expect("the stream of a confirmed token stays open");
    assert!(next.is_some(), "the stream ended");
    let log = serve.log.lock().unwrap().clone();
    assert!(
        !log.contains(&ghost) && !log.contains(&app),
        "a token was logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn should_admit_proxies_by_their_service_account_tokens() {
    let api = with_app_and_orders();
    let serve = start_serve_kube(&api, &["--xds-auth", "token"], "info");
    common::wait_until("serve is ready", || {
        (common::http_get(&serve.debug, "/readyz")?.trim() == "ready").then_some(())
    });

    // The right audience: reviewed by the API server, and served.
    let good = service_account_token(&api, "redis-xds");
    let response = delta_with_token(serve.xds, &good)
        .await
        .expect("a proxy with a redis-xds token is served");
    assert_eq!(response.resources.len(), 1, "the orders cluster");

    // A real token for another audience is refused with the reason.
    let other = service_account_token(&api, "somebody-else");
    let refused = delta_with_token(serve.xds, &other)
        .await
        .expect_err("a token for another audience was accepted");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");

    // A token signed with the cluster's own key, for the right audience, that has expired:
    // the TokenRequest API does not make those, so it is signed here.
    let expired = expired_token(&api);
    let refused = delta_with_token(serve.xds, &expired)
        .await
        .expect_err("an expired token was accepted");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert!(
        refused.message().contains("expired"),
        "the refusal does not say the token expired: {refused:?}"
    );

    // So is something that is no token at all.
    let refused = delta_with_token(serve.xds, "not-a-token")
        .await
        .expect_err("a made-up token was accepted");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    // And no token appears in the log.
    let log = serve.log.lock().unwrap().clone();
    assert!(
        !log.contains(&good) && !log.contains(&other),
        "a token was logged"
    );
}

/// Whether the API server would let redis-xds' ServiceAccount (deploy/base/rbac.yaml) do `verb`
/// on `group`/`resource` (with `/subresource`) in `namespace` (empty: all namespaces), by a
/// SubjectAccessReview.
fn allowed(api: &ApiServer, verb: &str, group: &str, resource: &str, namespace: &str) -> bool {
    allowed_named(api, verb, group, resource, namespace, "")
}

fn allowed_named(
    api: &ApiServer,
    verb: &str,
    group: &str,
    resource: &str,
    namespace: &str,
    name: &str,
) -> bool {
    let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
    let review = api.create(
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        &json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": "system:serviceaccount:redis-xds:redis-xds",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:redis-xds", "system:authenticated"],
                "resourceAttributes": {
                    "verb": verb, "group": group, "resource": resource,
                    "subresource": subresource, "namespace": namespace, "name": name,
                },
            },
        }),
    );
    review["status"]["allowed"] == true
}

/// Whether redis-xds's ServiceAccount may `verb` the non-resource URL `path`.
fn path_allowed(api: &ApiServer, verb: &str, path: &str) -> bool {
    let review = api.create(
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        &json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": "system:serviceaccount:redis-xds:redis-xds",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:redis-xds", "system:authenticated"],
                "nonResourceAttributes": {"verb": verb, "path": path},
            },
        }),
    );
    review["status"]["allowed"] == true
}

#[test]
fn should_grant_the_service_account_exactly_the_calls_it_makes() {
    use redis_xds::k8s::calls::{API_CALLS, ISTIO_API_CALLS, PATH_CALLS};
    let api = ApiServer::start();
    api.install_crd();
    for file in ["deploy/base/namespace.yaml", "deploy/base/rbac.yaml"] {
        let out = api.kubectl_apply(&["-f", file]);
        assert!(
            out.status.success(),
            "kubectl apply -f {file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for call in API_CALLS {
        for verb in call.verbs {
            // The status Lease and the CA Secret live in redis-xds' own namespace, and
            // the one webhook configuration it patches is its own; the rest is
            // cluster-wide.
            let namespace = match (call.resource, *verb) {
                ("leases", _) | ("secrets", "create") => "redis-xds",
                _ => "",
            };
            let name = match call.resource {
                "mutatingwebhookconfigurations" => "redis-xds",
                _ => "",
            };
            assert!(
                allowed_named(&api, verb, call.group, call.resource, namespace, name),
                "deploy/base/rbac.yaml does not allow {verb} {}/{} ({})",
                call.group,
                call.resource,
                call.why
            );
        }
    }
    // Istio mode's one extra call, from deploy/istio, for its one ServiceAccount only.
    api.namespace("istio-system");
    let out = api.kubectl_apply(&["-f", "deploy/istio/istiod-debug-rbac.yaml"]);
    assert!(
        out.status.success(),
        "kubectl apply -f deploy/istio/istiod-debug-rbac.yaml: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for call in ISTIO_API_CALLS {
        for verb in call.verbs {
            assert!(
                allowed_named(
                    &api,
                    verb,
                    call.group,
                    call.resource,
                    "istio-system",
                    "redis-xds-istiod-debug"
                ),
                "deploy/istio does not allow {verb} {} ({})",
                call.resource,
                call.why
            );
            assert!(
                !allowed_named(
                    &api,
                    verb,
                    call.group,
                    call.resource,
                    "istio-system",
                    "istiod"
                ),
                "deploy/istio allows {verb} {} of another ServiceAccount",
                call.resource
            );
        }
    }
    for call in PATH_CALLS {
        for verb in call.verbs {
            assert!(
                path_allowed(&api, verb, call.path),
                "deploy/base/rbac.yaml does not allow {verb} {} ({})",
                call.path,
                call.why
            );
        }
    }
    for (verb, group, resource, namespace) in [
        ("create", "", "pods", "shop"),
        ("patch", "", "pods", ""),
        ("get", "", "configmaps", "shop"),
        ("list", "", "configmaps", ""),
        ("patch", "redis-xds.dev", "redisclusters", "shop"),
        ("delete", "redis-xds.dev", "redisclusters", "shop"),
        ("create", "", "secrets", "shop"),
        ("update", "coordination.k8s.io", "leases", "kube-system"),
        ("update", "", "secrets", "redis-xds"),
        ("delete", "", "secrets", "redis-xds"),
    ] {
        assert!(
            !allowed(&api, verb, group, resource, namespace),
            "deploy/base/rbac.yaml allows {verb} {group}/{resource} in {namespace:?}, which redis-xds never does"
        );
    }
    // Only its own webhook configuration, not another injector's.
    for name in ["istio-sidecar-injector", ""] {
        assert!(
            !allowed_named(
                &api,
                "patch",
                "admissionregistration.k8s.io",
                "mutatingwebhookconfigurations",
                "",
                name
            ),
            "deploy/base/rbac.yaml lets redis-xds patch webhook configuration {name:?}"
        );
    }
}

#[test]
fn should_apply_deploy_and_its_examples() {
    let api = ApiServer::start();
    let out = api.kubectl_apply(&["-k", "deploy/"]);
    assert!(
        out.status.success(),
        "kubectl apply -k deploy/: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The CRD came with it; the examples use it once it is Established.
    api.wait_crd_established();
    let out = api.kubectl_apply(&["-k", "deploy/examples/"]);
    assert!(
        out.status.success(),
        "kubectl apply -k deploy/examples/: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, body) = api
        .get("/apis/apps/v1/namespaces/redis-xds/deployments/redis-xds")
        .unwrap();
    assert_eq!(code, 200, "the redis-xds Deployment: {body}");
    let (code, body) = api.get(&format!("{RDC}/redisclusters")).unwrap();
    assert_eq!(code, 200, "{body}");
    let list: Value = serde_json::from_str(&body).unwrap();
    assert!(
        !list["items"].as_array().unwrap().is_empty(),
        "deploy/examples created no RedisCluster"
    );
    // Every object a pod template references exists: no pod would wait in
    // ContainerCreating for a Secret, ConfigMap or ServiceAccount that nothing creates.
    let mut templates = 0;
    for (kind, path) in [
        ("Deployment", "/apis/apps/v1/deployments"),
        ("StatefulSet", "/apis/apps/v1/statefulsets"),
        ("Job", "/apis/batch/v1/jobs"),
    ] {
        let (_, body) = api.get(path).unwrap();
        let list: Value = serde_json::from_str(&body).unwrap();
        for item in list["items"].as_array().unwrap() {
            templates += 1;
            let ns = item["metadata"]["namespace"].as_str().unwrap();
            let name = item["metadata"]["name"].as_str().unwrap();
            for (what, object) in pod_references(&item["spec"]["template"]["spec"]) {
                let path = match what {
                    "Secret" => format!("/api/v1/namespaces/{ns}/secrets/{object}"),
                    "ConfigMap" => format!("/api/v1/namespaces/{ns}/configmaps/{object}"),
                    _ => format!("/api/v1/namespaces/{ns}/serviceaccounts/{object}"),
                };
                let (code, _) = api.get(&path).unwrap();
                assert_eq!(
                    code, 200,
                    "{kind} {ns}/{name} needs {what} {object}, which nothing creates"
                );
            }
        }
    }
    assert!(templates >= 3, "found {templates} pod templates");
}

/// The Secrets, ConfigMaps and ServiceAccount a pod spec refers to, as (kind, name).
/// The `default` ServiceAccount is left out: the controller manager creates it in every
/// namespace, and there is none here.
fn pod_references(spec: &Value) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let name = |v: &Value| v.as_str().map(str::to_owned);
    if let Some(sa) = name(&spec["serviceAccountName"]).filter(|sa| sa != "default") {
        out.push(("ServiceAccount", sa));
    }
    for v in spec["volumes"].as_array().into_iter().flatten() {
        out.extend(name(&v["secret"]["secretName"]).map(|n| ("Secret", n)));
        out.extend(name(&v["configMap"]["name"]).map(|n| ("ConfigMap", n)));
        for source in v["projected"]["sources"].as_array().into_iter().flatten() {
            out.extend(name(&source["secret"]["name"]).map(|n| ("Secret", n)));
            out.extend(name(&source["configMap"]["name"]).map(|n| ("ConfigMap", n)));
        }
    }
    let containers = ["containers", "initContainers"]
        .iter()
        .flat_map(|k| spec[*k].as_array().cloned().unwrap_or_default());
    for c in containers {
        for e in c["env"].as_array().into_iter().flatten() {
            let optional = |r: &Value| r["optional"].as_bool() == Some(true);
            let s = &e["valueFrom"]["secretKeyRef"];
            if !optional(s) {
                out.extend(name(&s["name"]).map(|n| ("Secret", n)));
            }
            let m = &e["valueFrom"]["configMapKeyRef"];
            if !optional(m) {
                out.extend(name(&m["name"]).map(|n| ("ConfigMap", n)));
            }
        }
        for e in c["envFrom"].as_array().into_iter().flatten() {
            out.extend(name(&e["secretRef"]["name"]).map(|n| ("Secret", n)));
            out.extend(name(&e["configMapRef"]["name"]).map(|n| ("ConfigMap", n)));
        }
    }
    out
}

#[test]
fn pod_references_finds_what_a_template_names() {
    let spec = json!({
        "serviceAccountName": "redis-xds",
        "volumes": [{"name": "tls", "secret": {"secretName": "redis-xds-tls"}},
                    {"name": "ca", "configMap": {"name": "redis-xds-ca"}}],
        "containers": [{"name": "c", "env": [{"name": "P", "valueFrom": {"secretKeyRef": {"name": "auth", "key": "password"}}}]}],
    });
    let refs = pod_references(&spec);
    assert_eq!(
        refs,
        [
            ("ServiceAccount", "redis-xds".to_string()),
            ("Secret", "redis-xds-tls".to_string()),
            ("ConfigMap", "redis-xds-ca".to_string()),
            ("Secret", "auth".to_string()),
        ]
    );
}

#[test]
fn should_read_a_secret_that_becomes_referenced_after_it_was_listed() {
    let api = with_shop();
    for (name, password) in [
        ("orders-auth", "s3cret-orders"),
        ("unrelated", "s3cret-other"),
    ] {
        api.create(
            "/api/v1/namespaces/shop/secrets",
            &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
                    "stringData": {"password": password}}),
        );
    }
    let serve = start_serve_kube(&api, &["--xds-auth", "none"], "info");
    common::wait_until("serve is ready", || {
        (common::http_get(&serve.debug, "/readyz")?.trim() == "ready").then_some(())
    });
    // Listed while nothing referenced it: kept by name only. A RedisCluster naming it now
    // needs its data, read with a GET.
    api.create(
        &format!("{RDC}/namespaces/shop/redisclusters"),
        &redis_cluster(
            "orders",
            json!({"endpoints": {"static": ["10.0.0.5:6379"]}, "auth": {"secretRef": {"name": "orders-auth"}},
                   "listener": {"port": 6379}}),
        ),
    );
    let model = common::wait_until("orders is served with its password", || {
        let m = common::http_get(&serve.debug, "/debug/model")?;
        let model: Value = serde_json::from_str(&m).ok()?;
        model["redis_clusters"]
            .as_array()?
            .iter()
            .any(|o| o["name"] == "shop/orders" && o["accepted"] == true)
            .then_some(model)
    });
    let text = model.to_string();
    assert!(!text.contains("s3cret"), "/debug/model shows a password");
    let log = serve.log.lock().unwrap().clone();
    assert!(!log.contains("s3cret"), "a password was logged");
    assert!(
        !log.contains("refused") && !log.contains("failed"),
        "the Secret was not read cleanly:\n{log}"
    );
}

/// `GET http://{addr}{path}` with an optional bearer token: (status, body).
fn debug_get(addr: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = cmd.arg(format!("http://{addr}{path}")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_owned())
}

#[test]
fn should_open_debug_only_to_callers_the_cluster_allows() {
    let api = with_shop();
    for name in ["operator", "intruder"] {
        api.create(
            "/api/v1/namespaces/shop/serviceaccounts",
            &json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}}),
        );
    }
    // The ClusterRole operators are bound to, exactly as deploy/ ships it.
    let yaml =
        std::fs::read_to_string(common::root().join("deploy/base/debug-access.yaml")).unwrap();
    let role: Value = serde_yaml_ng::from_str(&yaml).unwrap();
    api.create("/apis/rbac.authorization.k8s.io/v1/clusterroles", &role);
    api.create(
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        &json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "redis-xds-debug-operator"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "redis-xds-debug"},
            "subjects": [{"kind": "ServiceAccount", "name": "operator", "namespace": "shop"}],
        }),
    );
    // Tokens of the API server's own audience, as `kubectl create token` makes them.
    let token = |name: &str| {
        api.create(
            &format!("/api/v1/namespaces/shop/serviceaccounts/{name}/token"),
            &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}),
        )["status"]["token"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (operator, intruder) = (token("operator"), token("intruder"));

    // Loopback is not trusted here: every test caller is on loopback.
    let serve = start_serve_kube(
        &api,
        &["--xds-auth", "none", "--debug-trust-loopback", "false"],
        "info",
    );
    common::wait_until("serve is ready", || {
        (common::http_get(&serve.debug, "/readyz")?.trim() == "ready").then_some(())
    });
    // Probes and Prometheus stay open.
    assert_eq!(debug_get(&serve.debug, "/metrics", None).0, 200);
    assert_eq!(debug_get(&serve.debug, "/healthz", None).0, 200);

    let (code, body) = debug_get(&serve.debug, "/debug/syncz", None);
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("Bearer"), "{body}");
    let (code, body) = debug_get(&serve.debug, "/debug/model", Some("not-a-token"));
    assert_eq!(code, 401, "{body}");
    let (code, body) = debug_get(&serve.debug, "/debug/model", Some(&intruder));
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("system:serviceaccount:shop:intruder") && body.contains("redis-xds-debug"),
        "the refusal does not say who and what to bind: {body}"
    );
    for path in ["/debug/syncz", "/debug/model"] {
        let (code, body) = debug_get(&serve.debug, path, Some(&operator));
        assert_eq!(code, 200, "{path}: {body}");
    }
    let log = serve.log.lock().unwrap().clone();
    assert!(
        !log.contains(&operator) && !log.contains(&intruder),
        "a token was logged"
    );
}

/// A fleet of sidecars with distinct ServiceAccount tokens reconnecting at once to a
/// freshly started `serve --xds-auth token` (its review cache empty), against the real
/// API server: every stream ends synced and none is refused. Not timed: the figures are
/// `scripts/bench-token-storm`'s.
#[test]
fn a_storm_of_token_authenticated_streams_all_sync_and_none_is_refused() {
    const STREAMS: usize = 300;
    let api = with_app_and_orders();
    let tokens: Vec<String> = (0..STREAMS)
        .map(|_| service_account_token(&api, "redis-xds"))
        .collect();
    let distinct: std::collections::BTreeSet<&String> = tokens.iter().collect();
    assert_eq!(distinct.len(), STREAMS, "each TokenRequest is a new token");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(&file, tokens.join("\n")).unwrap();

    let serve = start_serve_kube(&api, &["--xds-auth", "token"], "info");
    common::wait_until("serve is ready", || {
        (common::http_get(&serve.debug, "/readyz")?.trim() == "ready").then_some(())
    });
    // The simulated Envoys run until their input closes; it stays open until they said
    // `ready` or gave up (then their output ends).
    let mut client = common::redis_xds()
        .args(["bench-client", "--addr", &serve.xds.to_string()])
        .args(["--streams", &STREAMS.to_string(), "--sotw-share", "0.5"])
        .arg("--tokens")
        .arg(&file)
        .arg("--all-at-once")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("bench-client runs");
    let mut lines = Vec::new();
    {
        use std::io::BufRead;
        let stdout = std::io::BufReader::new(client.stdout.take().unwrap());
        for line in stdout.lines() {
            let line = line.unwrap();
            let ready = line == "ready";
            lines.push(line);
            if ready {
                break;
            }
        }
    }
    // While they are connected: each was served as its token's ServiceAccount.
    let syncz = common::http_get(&serve.debug, "/debug/syncz").expect("syncz");
    drop(client.stdin.take());
    let out = client.wait_with_output().unwrap();
    let log = serve.log.lock().unwrap().clone();
    assert!(
        lines.iter().any(|l| l == "ready"),
        "every stream synced:\n{}\n{log}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("synced ")).count(),
        STREAMS
    );
    let refused: Vec<&String> = lines.iter().filter(|l| l.starts_with("refused ")).collect();
    assert!(refused.is_empty(), "streams refused: {refused:?}");
    let proxies: Value = serde_json::from_str(&syncz).unwrap();
    let proxies = proxies["proxies"].as_array().expect("proxies");
    assert_eq!(proxies.len(), STREAMS, "{syncz}");
    assert!(proxies.iter().all(|p| p["namespace"] == "shop"), "{syncz}");
}
