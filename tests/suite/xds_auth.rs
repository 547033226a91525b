//! Who may receive what: token authentication against a mocked TokenReview API, the
//! namespace check on the node, per-namespace views checked on the wire, and passwords
//! delivered as files.

use crate::common;

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use common::xds::{self, CDS, LDS, node};
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use prost::Message;
use redis_xds::k8s::token_review::TokenReviewer;
use redis_xds::xds::auth::{Authenticated, Authenticator, Principal};
use redis_xds::xds::{AdsServer, Registry, ResourceSource};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::metadata::MetadataMap;

const PATIENCE: Duration = Duration::from_secs(10);

fn client() -> (
    kube::Client,
    tower_test::mock::Handle<Request<Body>, Response<Body>>,
) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, "default"), handle)
}

fn review_answer(
    authenticated: bool,
    username: &str,
    audiences: &[&str],
    error: Option<&str>,
) -> Response<Body> {
    let body = json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "metadata": {},
        "spec": {},
        "status": {"authenticated": authenticated, "user": {"username": username}, "audiences": audiences, "error": error}
    });
    Response::builder()
        .status(StatusCode::CREATED)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}

/// Expects one TokenReview for `token` and answers it.
async fn expect_review(
    handle: &mut std::pin::Pin<&mut tower_test::mock::Handle<Request<Body>, Response<Body>>>,
    token: &str,
    answer: Response<Body>,
) {
    let (req, send) = handle.next_request().await.expect("a TokenReview request");
    assert_eq!(req.method(), Method::POST);
    assert_eq!(
        req.uri().to_string(),
        "/apis/authentication.k8s.io/v1/tokenreviews?"
    );
    let body: Value =
        serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap()).unwrap();
    assert_eq!(body["kind"], "TokenReview");
    assert_eq!(body["spec"]["token"], token);
    assert_eq!(body["spec"]["audiences"], json!(["redis-xds"]));
    send.send_response(answer);
}

#[tokio::test]
async fn a_valid_token_names_the_namespace_and_is_cached() {
    let (client, handle) = client();
    let reviewer = TokenReviewer::new(client, "redis-xds");
    let server = tokio::spawn(async move {
        let mut handle = pin!(handle);
        expect_review(
            &mut handle,
            "good-token",
            review_answer(
                true,
                "system:serviceaccount:shop:checkout",
                &["redis-xds"],
                None,
            ),
        )
        .await;
        // Nothing else: the second call is answered from the cache.
    });
    let mut md = MetadataMap::new();
    md.insert("authorization", "Bearer good-token".parse().unwrap());
    let p = reviewer.authenticate(&md, None).await.unwrap().principal;
    assert_eq!(
        p,
        Principal {
            namespace: "shop".into(),
            service_account: "checkout".into()
        }
    );
    server.await.unwrap();
    let again = tokio::time::timeout(PATIENCE, reviewer.authenticate(&md, None))
        .await
        .expect("cached, no request");
    assert_eq!(again.unwrap().principal, p);
}

#[tokio::test]
async fn unknown_and_wrong_audience_tokens_are_refused() {
    let (client, handle) = client();
    let reviewer = TokenReviewer::new(client, "redis-xds");
    let server = tokio::spawn(async move {
        let mut handle = pin!(handle);
        expect_review(
            &mut handle,
            "unknown",
            review_answer(false, "", &[], Some("invalid bearer token")),
        )
        .await;
        expect_review(
            &mut handle,
            "other-audience",
            review_answer(true, "system:serviceaccount:shop:x", &["vault"], None),
        )
        .await;
        expect_review(
            &mut handle,
            "a-user",
            review_answer(true, "alice", &["redis-xds"], None),
        )
        .await;
    });
    let err = tonic::Status::from(reviewer.review("unknown").await.unwrap_err());
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(
        err.message().contains("invalid bearer token"),
        "{}",
        err.message()
    );
    assert!(
        !err.message().contains("unknown\""),
        "the token itself is never echoed"
    );
    let err = tonic::Status::from(reviewer.review("other-audience").await.unwrap_err());
    assert!(
        err.message().contains("audience \"redis-xds\""),
        "{}",
        err.message()
    );
    let err = tonic::Status::from(reviewer.review("a-user").await.unwrap_err());
    assert!(
        err.message().contains("not a ServiceAccount"),
        "{}",
        err.message()
    );
    server.await.unwrap();
}

#[tokio::test]
async fn an_expired_token_is_refused_without_asking_the_api_server() {
    let (client, _handle) = client();
    let reviewer = TokenReviewer::new(client, "redis-xds");
    // {"alg":"RS256"}.{"exp":1000}.(signature) : expired in 1970. No responder: a request would hang.
    let expired = "eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjEwMDB9.c2ln";
    let err: tonic::Status = tokio::time::timeout(PATIENCE, reviewer.review(expired))
        .await
        .expect("no API call")
        .unwrap_err()
        .into();
    assert!(err.message().contains("expired"), "{}", err.message());
    let err = reviewer
        .authenticate(&MetadataMap::new(), None)
        .await
        .unwrap_err();
    assert!(err.message().contains("Bearer"), "{}", err.message());
}

/// What the API server answers when API Priority and Fairness sheds a request.
fn throttled() -> Response<Body> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "Too many requests, please try again later.", "reason": "TooManyRequests",
        "details": {"retryAfterSeconds": 1}, "code": 429
    });
    Response::builder()
        .status(StatusCode::TOO_MANY_REQUESTS)
        .header("content-type", "application/json")
        .header("retry-after", "1")
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}

fn checkout() -> Response<Body> {
    review_answer(
        true,
        "system:serviceaccount:shop:checkout",
        &["redis-xds"],
        None,
    )
}

/// Whether another request reaches the mock while everything else can make progress: on a
/// paused clock the timeout fires only once no task can do anything more.
async fn another_request(
    handle: &mut std::pin::Pin<&mut tower_test::mock::Handle<Request<Body>, Response<Body>>>,
) -> bool {
    tokio::time::timeout(Duration::from_secs(3600), handle.next_request())
        .await
        .is_ok()
}

#[tokio::test(start_paused = true)]
async fn streams_presenting_one_token_at_once_cost_one_review() {
    let (client, handle) = client();
    let reviewer = Arc::new(TokenReviewer::new(client, "redis-xds"));
    let streams: Vec<_> = (0..20)
        .map(|_| {
            let reviewer = Arc::clone(&reviewer);
            tokio::spawn(async move { reviewer.review("same-token").await })
        })
        .collect();
    let mut handle = pin!(handle);
    expect_review(&mut handle, "same-token", checkout()).await;
    for s in streams {
        assert_eq!(s.await.unwrap().unwrap().namespace, "shop");
    }
    assert!(
        !another_request(&mut handle).await,
        "one review for 20 streams"
    );
}

#[tokio::test(start_paused = true)]
async fn a_throttled_review_is_asked_again_and_the_stream_waits() {
    let (client, handle) = client();
    let reviewer = Arc::new(TokenReviewer::new(client, "redis-xds"));
    let review = {
        let reviewer = Arc::clone(&reviewer);
        tokio::spawn(async move { reviewer.review("busy-token").await })
    };
    let mut handle = pin!(handle);
    for _ in 0..3 {
        expect_review(&mut handle, "busy-token", throttled()).await;
    }
    expect_review(&mut handle, "busy-token", checkout()).await;
    assert_eq!(review.await.unwrap().unwrap().service_account, "checkout");
}

#[tokio::test(start_paused = true)]
async fn a_review_the_api_server_keeps_refusing_ends_unavailable_after_the_patience() {
    let (client, handle) = client();
    let reviewer =
        Arc::new(TokenReviewer::new(client, "redis-xds").with_limits(4, Duration::from_secs(20)));
    let review = {
        let reviewer = Arc::clone(&reviewer);
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            (reviewer.review("busy-token").await, started.elapsed())
        })
    };
    let mut handle = pin!(handle);
    while !review.is_finished() {
        match tokio::time::timeout(Duration::from_secs(60), handle.next_request()).await {
            Ok(Some((_, send))) => send.send_response(throttled()),
            _ => break,
        }
    }
    let (result, waited) = review.await.unwrap();
    let status: Status = result.unwrap_err().into();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        waited >= Duration::from_secs(10) && waited <= Duration::from_secs(20),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn reviews_beyond_the_limit_wait_for_a_free_one() {
    let (client, handle) = client();
    let reviewer =
        Arc::new(TokenReviewer::new(client, "redis-xds").with_limits(2, Duration::from_secs(60)));
    let streams: Vec<_> = (0..4)
        .map(|i| {
            let reviewer = Arc::clone(&reviewer);
            tokio::spawn(async move { reviewer.review(&format!("token-{i}")).await })
        })
        .collect();
    let mut handle = pin!(handle);
    let mut pending = Vec::new();
    for _ in 0..2 {
        pending.push(handle.next_request().await.expect("a review"));
    }
    assert!(
        !another_request(&mut handle).await,
        "a third review while two are in flight"
    );
    let mut answered = 0;
    while let Some((_, send)) = pending.pop() {
        send.send_response(checkout());
        answered += 1;
        if answered + pending.len() < 4 {
            pending.push(handle.next_request().await.expect("the next review"));
        }
    }
    assert_eq!(answered, 4);
    for s in streams {
        assert!(s.await.unwrap().is_ok());
    }
}

/// Maps bearer tokens to principals, standing in for TokenReview in the stream tests.
#[derive(Debug)]
struct Tokens;

#[tonic::async_trait]
impl Authenticator for Tokens {
    async fn authenticate(
        &self,
        md: &MetadataMap,
        _: Option<&[Vec<u8>]>,
    ) -> Result<Authenticated, Status> {
        match md.get("authorization").and_then(|v| v.to_str().ok()) {
            Some("Bearer shop-token") => Ok(Principal {
                namespace: "shop".into(),
                service_account: "app".into(),
            }
            .into()),
            Some("Bearer web-token") => Ok(Principal {
                namespace: "web".into(),
                service_account: "app".into(),
            }
            .into()),
            _ => Err(Status::unauthenticated("bad token")),
        }
    }
}

const PASSWORD: &str = "shop-only-upstream-password";

fn model_yaml() -> String {
    format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: auth, namespace: shop}}
stringData: {{password: {PASSWORD}}}
---
apiVersion: redis-xds.dev/v1alpha1
kind: RedisCluster
metadata: {{name: orders, namespace: shop}}
spec:
  endpoints: {{static: ["127.0.0.1:7000"]}}
  auth: {{secretRef: {{name: auth}}}}
  listener: {{port: 7001, clients: {{namespaces: [shop]}}}}
---
apiVersion: redis-xds.dev/v1alpha1
kind: RedisCluster
metadata: {{name: public, namespace: shop}}
spec:
  endpoints: {{static: ["127.0.0.1:7100"]}}
  listener: {{port: 7101}}
"#
    )
}

async fn start_server() -> (std::net::SocketAddr, CancellationToken) {
    let snap: Arc<dyn ResourceSource> = common::snapshot_from_yaml(&model_yaml(), None);
    let (_tx, rx) = watch::channel(snap);
    let shutdown = CancellationToken::new();
    let ads = AdsServer::new(
        rx,
        Arc::new(Registry::default()),
        Arc::default(),
        shutdown.clone(),
    )
    .with_authenticator(Arc::new(Tokens));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _keep = _tx;
        redis_xds::xds::server::serve(listener, ads.into_service(), None, stop).await
    });
    (addr, shutdown)
}

/// Opens an authenticated Delta stream.
async fn delta_with_token(addr: std::net::SocketAddr, token: &str) -> xds::Delta {
    match xds::delta_as(addr, Some(token)).await {
        Ok(d) => d,
        Err(status) => panic!("stream refused at once: {status}"),
    }
}

#[tokio::test]
async fn a_stream_claiming_another_namespace_is_refused() {
    let (addr, shutdown) = start_server().await;
    let mut d = delta_with_token(addr, "web-token").await;
    d.subscribe(node("liar", Some("shop")), CDS, &[]).await;
    let err = tokio::time::timeout(PATIENCE, d.rx.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message().contains("\"shop\"") && err.message().contains("web/app"),
        "{}",
        err.message()
    );
    shutdown.cancel();
}

#[tokio::test]
async fn an_unauthenticated_stream_is_refused() {
    let (addr, shutdown) = start_server().await;
    use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let req = tokio_stream::iter(vec![DeltaDiscoveryRequest::default()]);
    let err = client.delta_aggregated_resources(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    shutdown.cancel();
}

/// Every byte a stream received, after subscribing to clusters and listeners.
async fn received(
    addr: std::net::SocketAddr,
    token: &str,
    claimed: Option<&str>,
) -> (Vec<String>, Vec<String>, Vec<u8>) {
    let mut d = delta_with_token(addr, token).await;
    d.subscribe(node("p", claimed), CDS, &[]).await;
    let cds = d.recv_ack().await;
    d.subscribe(None, LDS, &[]).await;
    let lds = d.recv_ack().await;
    let bytes = [cds.encode_to_vec(), lds.encode_to_vec()].concat();
    (
        xds::delta_names(&cds)
            .iter()
            .map(|s| s.to_string())
            .collect(),
        xds::delta_names(&lds)
            .iter()
            .map(|s| s.to_string())
            .collect(),
        bytes,
    )
}

#[tokio::test]
async fn a_proxy_that_clients_does_not_select_never_receives_that_cluster_or_its_password() {
    let (addr, shutdown) = start_server().await;
    // A proxy of namespace web, claiming nothing (it may not claim everything either).
    let (clusters, listeners, bytes) = received(addr, "web-token", None).await;
    assert_eq!(clusters, ["redis/shop/public"]);
    assert_eq!(listeners, ["redis/shop/public@127.0.0.1:7101"]);
    let wire = String::from_utf8_lossy(&bytes);
    assert!(
        !wire.contains(PASSWORD),
        "the password reached a proxy of another namespace"
    );
    assert!(!wire.contains("redis/shop/orders"));

    // The shop proxy gets both, password included (inline delivery over its stream).
    let (clusters, _, bytes) = received(addr, "shop-token", Some("shop")).await;
    assert_eq!(clusters, ["redis/shop/orders", "redis/shop/public"]);
    assert!(String::from_utf8_lossy(&bytes).contains(PASSWORD));
    shutdown.cancel();
}

#[test]
fn file_delivery_names_mounted_files_and_sends_no_password() {
    let yaml = model_yaml().replace(
        "auth: {secretRef: {name: auth}}",
        "auth: {secretRef: {name: auth}, delivery: File}",
    );
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("m.yaml"), yaml).unwrap();
    let out = common::run(&[
        "render",
        "--static-bootstrap",
        "--manifests",
        tmp.path().to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        !text.contains(PASSWORD),
        "File delivery must not inline the password"
    );
    let json: Value = serde_json::from_str(&text).unwrap();
    let clusters = json["staticResources"]["clusters"].as_array().unwrap();
    let orders = clusters
        .iter()
        .find(|c| c["name"] == "redis/shop/orders")
        .unwrap();
    let opts = &orders["typedExtensionProtocolOptions"]["envoy.filters.network.redis_proxy"];
    assert_eq!(
        opts["authPassword"]["filename"],
        "/etc/redis-xds/secrets/auth/password"
    );
}

/// An ECDSA P-256 key standing in for the API server's ServiceAccount signing key, and
/// what the API server publishes of it.
struct SigningKey {
    pkcs8: Vec<u8>,
    public: Vec<u8>,
}

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

impl SigningKey {
    fn generate() -> Self {
        use ring::signature::KeyPair;
        let rng = ring::rand::SystemRandom::new();
        let alg = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let pair = ring::signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
        SigningKey {
            pkcs8: pkcs8.as_ref().to_vec(),
            public: pair.public_key().as_ref().to_vec(),
        }
    }

    /// `/openid/v1/jwks` with this key as `kid`.
    fn jwks(&self, kid: &str) -> Value {
        use base64::Engine;
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        // An uncompressed point: 0x04, then x and y of 32 bytes each.
        let (x, y) = self.public[1..].split_at(32);
        json!({"keys": [{"use": "sig", "kty": "EC", "kid": kid, "crv": "P-256", "alg": "ES256", "x": b64(x), "y": b64(y)}]})
    }

    /// A ServiceAccount token as the API server makes them, valid for ten minutes.
    fn token(&self, kid: &str, sub: &str, audience: &str) -> String {
        let now = jsonwebtoken::get_current_timestamp();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(kid.into());
        let claims = json!({"iss": ISSUER, "aud": [audience], "sub": sub, "iat": now, "nbf": now, "exp": now + 600});
        jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_ec_der(&self.pkcs8),
        )
        .unwrap()
    }
}

/// `reviewer.admit(token)` on a task of its own, so that the test can answer its requests.
fn spawn_admit(
    reviewer: &TokenReviewer,
    token: &str,
) -> tokio::task::JoinHandle<Result<Authenticated, redis_xds::k8s::token_review::ReviewError>> {
    let (reviewer, token) = (reviewer.clone(), token.to_owned());
    tokio::spawn(async move { reviewer.admit(&token).await })
}

/// Expects `GET path` and answers `body`.
async fn expect_get(
    handle: &mut std::pin::Pin<&mut tower_test::mock::Handle<Request<Body>, Response<Body>>>,
    path: &str,
    body: Value,
) {
    let (req, send) = handle.next_request().await.expect("a GET");
    assert_eq!((req.method(), req.uri().path()), (&Method::GET, path));
    send.send_response(
        Response::builder()
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap(),
    );
}

#[tokio::test]
async fn a_token_the_published_keys_vouch_for_starts_at_once_and_its_review_can_still_end_it() {
    let (client, handle) = client();
    let reviewer = TokenReviewer::new(client, "redis-xds");
    let key = SigningKey::generate();
    let mut handle = pin!(handle);
    let token = key.token("k1", "system:serviceaccount:shop:checkout", "redis-xds");

    // The first token fetches the keys (issuer, then key set), and nothing else is
    // needed before the stream may start: no TokenReview has been answered yet.
    let admitting = spawn_admit(&reviewer, &token);
    expect_get(
        &mut handle,
        "/.well-known/openid-configuration",
        json!({"issuer": ISSUER, "jwks_uri": format!("{ISSUER}/openid/v1/jwks")}),
    )
    .await;
    expect_get(&mut handle, "/openid/v1/jwks", key.jwks("k1")).await;
    let admitted = tokio::time::timeout(PATIENCE, admitting)
        .await
        .expect("admitted without a TokenReview")
        .unwrap()
        .expect("vouched for by the published keys");
    assert_eq!(
        admitted.principal,
        Principal {
            namespace: "shop".into(),
            service_account: "checkout".into()
        }
    );

    // The review still follows, and what only it knows (the ServiceAccount is gone)
    // ends the stream.
    let confirming = tokio::spawn(admitted.confirmation.expect("the review follows"));
    expect_review(
        &mut handle,
        &token,
        review_answer(
            false,
            "",
            &[],
            Some("service account shop/checkout has been deleted"),
        ),
    )
    .await;
    let ended = confirming
        .await
        .unwrap()
        .expect_err("the review refused it");
    assert_eq!(ended.code(), tonic::Code::Unauthenticated);
    assert!(ended.message().contains("has been deleted"), "{ended:?}");
    // The sidecar's reconnect is refused from the cache, without asking again.
    let again = tokio::time::timeout(PATIENCE, reviewer.admit(&token))
        .await
        .expect("no API call")
        .expect_err("a refused token admitted again");
    assert!(again.to_string().contains("has been deleted"), "{again}");

    // A token the keys do not vouch for (signed by another key under the same key id,
    // or naming a key not published) waits for its review; the keys are not fetched
    // again within KEYS_REFRESH.
    let forged =
        SigningKey::generate().token("k1", "system:serviceaccount:shop:checkout", "redis-xds");
    let unknown = key.token("k2", "system:serviceaccount:shop:checkout", "redis-xds");
    for token in [forged, unknown] {
        let admitting = spawn_admit(&reviewer, &token);
        expect_review(
            &mut handle,
            &token,
            review_answer(false, "", &[], Some("invalid bearer token")),
        )
        .await;
        let refused = admitting.await.unwrap().expect_err("refused by its review");
        assert!(
            matches!(
                refused,
                redis_xds::k8s::token_review::ReviewError::Rejected(_)
            ),
            "{refused:?}"
        );
    }
    // And a token the keys vouch for, whose review agrees, is confirmed.
    let good = key.token("k1", "system:serviceaccount:shop:cart", "redis-xds");
    let admitted = reviewer.admit(&good).await.expect("vouched for");
    let confirming = tokio::spawn(admitted.confirmation.expect("the review follows"));
    expect_review(
        &mut handle,
        &good,
        review_answer(
            true,
            "system:serviceaccount:shop:cart",
            &["redis-xds"],
            None,
        ),
    )
    .await;
    confirming.await.unwrap().expect("confirmed");
}

#[tokio::test(start_paused = true)]
async fn published_keys_are_fetched_again_once_they_are_old() {
    let (client, handle) = client();
    let reviewer = TokenReviewer::new(client, "redis-xds");
    let key = SigningKey::generate();
    let mut handle = pin!(handle);
    let discovery = json!({"issuer": ISSUER, "jwks_uri": format!("{ISSUER}/openid/v1/jwks")});
    for round in 0..2 {
        let token = key.token(
            "k1",
            &format!("system:serviceaccount:shop:app-{round}"),
            "redis-xds",
        );
        let admitting = spawn_admit(&reviewer, &token);
        // Fetched the first time, and again once KEYS_MAX_AGE has passed: a key the cluster
        // stopped publishing stops admitting tokens.
        expect_get(
            &mut handle,
            "/.well-known/openid-configuration",
            discovery.clone(),
        )
        .await;
        expect_get(&mut handle, "/openid/v1/jwks", key.jwks("k1")).await;
        let admitted = admitting.await.unwrap().expect("vouched for");
        let confirming = tokio::spawn(admitted.confirmation.expect("the review follows"));
        expect_review(
            &mut handle,
            &token,
            review_answer(
                true,
                &format!("system:serviceaccount:shop:app-{round}"),
                &["redis-xds"],
                None,
            ),
        )
        .await;
        confirming.await.unwrap().expect("confirmed");
        tokio::time::advance(redis_xds::k8s::token_review::KEYS_MAX_AGE + Duration::from_secs(1))
            .await;
    }
}
