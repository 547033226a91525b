//! An external AUTH service for the sidecar's clients: a small gRPC server in the test that
//! accepts one password and refuses every other.

use envoy_types::pb::envoy::service::redis_auth::v3::redis_proxy_external_auth_server::{
    RedisProxyExternalAuth, RedisProxyExternalAuthServer,
};
use envoy_types::pb::envoy::service::redis_auth::v3::{
    RedisProxyExternalAuthRequest, RedisProxyExternalAuthResponse,
};
use envoy_types::pb::google::rpc::Status;

use crate::common::{free_port, wait_until};
use crate::resp::Conn;
use crate::{Fixture, Sidecar, rc};

const ACCEPTED: &str = "one-time-token-1";

/// Accepts `ACCEPTED` and counts every request it answers.
struct TokenService {
    asked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

#[tonic::async_trait]
impl RedisProxyExternalAuth for TokenService {
    async fn authenticate(
        &self,
        request: tonic::Request<RedisProxyExternalAuthRequest>,
    ) -> Result<tonic::Response<RedisProxyExternalAuthResponse>, tonic::Status> {
        self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let ok = request.get_ref().password == ACCEPTED;
        Ok(tonic::Response::new(RedisProxyExternalAuthResponse {
            status: Some(Status {
                // google.rpc.Code: 0 OK, 16 UNAUTHENTICATED.
                code: if ok { 0 } else { 16 },
                ..Default::default()
            }),
            message: if ok {
                String::new()
            } else {
                "bad token".into()
            },
            ..Default::default()
        }))
    }
}

/// Starts the service on 127.0.0.1 in a runtime of its own; it stops when the returned
/// guard drops.
fn start_service() -> (
    String,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tokio::runtime::Runtime,
) {
    let port = free_port();
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let service = TokenService {
        asked: std::sync::Arc::clone(&asked),
    };
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    runtime.spawn(
        tonic::transport::Server::builder()
            .add_service(RedisProxyExternalAuthServer::new(service))
            .serve(addr),
    );
    wait_until("the AUTH service listens", || {
        std::net::TcpStream::connect(addr).ok()
    });
    (addr.to_string(), asked, runtime)
}

/// Clients authenticate through the external service: its token is accepted, another
/// password refused, and without AUTH commands are refused.
pub fn external_auth(f: &Fixture) {
    let (service, asked, _runtime) = start_service();
    let port = free_port();
    let spec = format!(
        "endpoints: {{static: [{}]}}\nlistener:\n  port: {port}\n  externalAuth: {{service: \"{service}\"}}",
        f.main.static_entries()
    );
    let _sc = Sidecar::start(&[("main.yaml", rc("main", &spec))]);
    let sidecar = format!("127.0.0.1:{port}");
    let mut c = wait_until("the listener asks the AUTH service", || {
        let mut c = Conn::connect(&sidecar).ok()?;
        let reply = c.cmd(&["AUTH", ACCEPTED]).ok()?;
        (reply.text() == "OK").then_some(c)
    });
    assert_eq!(c.ok(&["SET", "ext:k", "v"]), "OK");
    assert_eq!(c.ok(&["GET", "ext:k"]), "v");

    let mut refused = Conn::connect(&sidecar).unwrap();
    let before = asked.load(std::sync::atomic::Ordering::SeqCst);
    let reply = refused.cmd(&["AUTH", "guessed"]).unwrap();
    assert!(reply.is_error(), "a wrong token is refused: {reply:?}");
    assert!(
        asked.load(std::sync::atomic::Ordering::SeqCst) > before,
        "Envoy asked the service"
    );
    let reply = refused.cmd(&["GET", "ext:k"]).unwrap();
    assert!(reply.is_error(), "no command without AUTH: {reply:?}");

    // downstreamAuth next to externalAuth: Envoy asks the service about every AUTH and
    // never compares the passwords, so redis-xds refuses the pair. Given both anyway, the
    // password is refused and the service's token still gets in.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: clients, namespace: e2e}\nstringData: {password: static-pw}\n";
    let problems = crate::own_rules::render_with(
        dir,
        &format!("{spec}\n  downstreamAuth: {{secretRef: {{name: clients}}}}"),
        secret,
    )
    .expect_err("redis-xds refuses downstreamAuth with externalAuth");
    assert!(
        problems.contains("spec.listener.downstreamAuth: downstreamAuth is ignored"),
        "{problems}"
    );
    let mut b = crate::own_rules::render(dir, &spec).unwrap();
    crate::own_rules::proxy(&mut b)["downstreamAuthPasswords"] =
        serde_json::json!([{"inlineString": "static-pw"}]);
    drop(_sc);
    let e = crate::own_rules::envoy(dir, &b, port);
    let mut c = Conn::connect(&sidecar).unwrap();
    let reply = c.cmd(&["AUTH", "static-pw"]).unwrap();
    assert!(
        reply.is_error(),
        "the downstream password got in: {reply:?}"
    );
    assert_eq!(c.ok(&["AUTH", ACCEPTED]), "OK");
    drop(e);
}
