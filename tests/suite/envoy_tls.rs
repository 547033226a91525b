//! TLS and mutual TLS on the xDS port, with certificates made in the test: real Envoy
//! connects with a client certificate and gets its configuration; a client without one is
//! refused.

use crate::common;

use std::path::Path;

use common::{envoy_dynamic, start_envoy, start_serve, wait_until};

struct Pki {
    ca: String,
}

fn make_pki(dir: &Path) -> Pki {
    use common::pki::{Ca, San};
    let ca = Ca::new("redis-xds test CA");
    let server = ca.issue(&[San::Dns("redis-xds.test"), San::Ip("127.0.0.1")]);
    let client = ca.issue(&[San::Uri("spiffe://cluster.local/ns/shop/sa/app")]);
    for (name, pem) in [
        ("ca.pem", ca.pem()),
        ("server.pem", server.cert),
        ("server.key", server.key),
        ("client.pem", client.cert),
        ("client.key", client.key),
    ] {
        std::fs::write(dir.join(name), pem).unwrap();
    }
    Pki { ca: ca.pem() }
}

const MANIFEST: &str = r#"apiVersion: redis-xds.dev/v1alpha1
kind: RedisCluster
metadata: {name: orders, namespace: shop}
spec:
  endpoints: {static: ["127.0.0.1:7000"]}
  listener: {port: PORT}
"#;

#[test]
fn envoy_with_a_client_certificate_gets_config_over_mutual_tls_and_others_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = make_pki(tmp.path());
    let dir = tmp.path().join("manifests");
    std::fs::create_dir(&dir).unwrap();
    let port = common::free_port();
    std::fs::write(
        dir.join("orders.yaml"),
        MANIFEST.replace("PORT", &port.to_string()),
    )
    .unwrap();
    let p = |n: &str| tmp.path().join(n).to_str().unwrap().to_string();
    let common::Serve {
        proc: _serve,
        xds,
        debug,
        log,
    } = start_serve(
        &dir,
        &[
            "--xds-tls-cert",
            &p("server.pem"),
            "--xds-tls-key",
            &p("server.key"),
            "--xds-tls-client-ca",
            &p("ca.pem"),
            "--xds-auth",
            "mtls",
        ],
    );
    let xds = xds.to_string();
    let (_envoy, admin) = start_envoy(
        tmp.path(),
        &[
            "--xds-address",
            &xds,
            "--node-id",
            "tls-proxy",
            "--namespace",
            "shop",
            "--xds-tls-ca",
            &p("ca.pem"),
            "--xds-tls-cert",
            &p("client.pem"),
            "--xds-tls-key",
            &p("client.key"),
            "--xds-auth",
            "mtls",
        ],
    );
    let listener = format!("redis/shop/orders@127.0.0.1:{port}");
    wait_until("Envoy holds the listener received over mTLS", || {
        let (_, listeners) = envoy_dynamic(&admin)?;
        (listeners == [listener.clone()]).then_some(())
    });
    // The namespace is the certificate's (spiffe://cluster.local/ns/shop/sa/app).
    let syncz = common::http_get(&debug, "/debug/syncz").unwrap();
    assert!(syncz.contains("\"namespace\":\"shop\""), "{syncz}");

    // The same certificate claiming another namespace is refused.
    let other = tmp.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let (_liar, _) = start_envoy(
        &other,
        &[
            "--xds-address",
            &xds,
            "--node-id",
            "liar-proxy",
            "--namespace",
            "bank",
            "--xds-tls-ca",
            &p("ca.pem"),
            "--xds-tls-cert",
            &p("client.pem"),
            "--xds-tls-key",
            &p("client.key"),
        ],
    );
    wait_until("the lying proxy is refused", || {
        let l = log.lock().unwrap();
        (l.contains("liar-proxy") && l.contains("refused") && l.contains("\"bank\"")).then_some(())
    });
    let syncz = common::http_get(&debug, "/debug/syncz").unwrap();
    assert!(!syncz.contains("liar-proxy"), "{syncz}");

    // A client that trusts the server but presents no certificate is refused, and so is a
    // plaintext client.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
        use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&pki.ca)).domain_name("redis-xds.test");
        let endpoint = Endpoint::from_shared(format!("https://{xds}")).unwrap().tls_config(tls).unwrap();
        let refused = match endpoint.connect().await {
            Err(_) => true,
            Ok(channel) => {
                let mut client = AggregatedDiscoveryServiceClient::new(channel);
                let req = tokio_stream::iter(vec![Default::default()]);
                match client.delta_aggregated_resources(req).await {
                    Err(_) => true,
                    Ok(resp) => resp.into_inner().message().await.is_err(),
                }
            }
        };
        assert!(refused, "a client without a certificate was served");

        let plain = Endpoint::from_shared(format!("http://{xds}")).unwrap();
        let refused = match plain.connect().await {
            Err(_) => true,
            Ok(channel) => {
                let mut client = AggregatedDiscoveryServiceClient::new(channel);
                let req = tokio_stream::iter(vec![Default::default()]);
                client.delta_aggregated_resources(req).await.is_err()
            }
        };
        assert!(refused, "a plaintext client was served");
    });
}
