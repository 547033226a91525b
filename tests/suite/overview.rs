//! `/` on the debug port, as a person sees it: loaded in headless Chromium (Debian's
//! package) with two proxies connected, one in sync and one rejecting a listener, and a
//! RedisCluster with a problem.

use crate::common;

use common::xds::{self, CDS, LDS, node};
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;

/// The page after Chromium loaded it (scripts would have run; there are none), as its DOM.
fn rendered(url: &str) -> String {
    let out = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--dump-dom",
            url,
        ])
        .output()
        .expect("chromium runs: run the tests through scripts/test, which installs it");
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The text of the element with `id`, tags dropped: what a reader sees there.
fn text_of(dom: &str, id: &str) -> String {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in {dom}"));
    let tag = dom[..start].rfind('<').unwrap();
    let name: String = dom[tag + 1..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    let end = dom[start..]
        .find(&format!("</{name}>"))
        .map_or(dom.len(), |e| start + e);
    let mut text = String::new();
    let mut in_tag = false;
    for c in dom[tag..end].chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                text.push(' ');
            }
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    // The DOM is serialized as HTML: text comes back with its entities.
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_shows_objects_proxies_and_what_they_acked_without_scripts() {
    let tmp = tempfile::tempdir().unwrap();
    let good = common::redis_cluster(
        "shop",
        "orders",
        "endpoints: {static: [\"127.0.0.1:7000\"]}\nlistener: {port: 6379}",
    );
    let broken = common::redis_cluster(
        "shop",
        "sessions",
        "endpoints: {static: [\"127.0.0.1:7001\"]}\nlistener: {port: 6380, routes: [{prefix: \"s:\", cluster: nowhere}]}",
    );
    std::fs::write(tmp.path().join("objects.yaml"), format!("{good}{broken}")).unwrap();
    let serve = common::start_serve_logging(tmp.path(), &[], "info");

    // One proxy in sync; one that refuses the listener.
    let mut synced = xds::delta(serve.xds).await;
    synced
        .subscribe(node("checkout-7f9c", Some("shop")), CDS, &[])
        .await;
    synced.recv_ack().await;
    synced.subscribe(None, LDS, &[]).await;
    synced.recv_ack().await;
    let mut refusing = xds::delta(serve.xds).await;
    refusing
        .subscribe(node("billing-<b>5d2</b>", Some("shop")), CDS, &[])
        .await;
    refusing.recv_ack().await;
    refusing.subscribe(None, LDS, &[]).await;
    let lds = refusing.recv().await;
    refusing
        .send(DeltaDiscoveryRequest {
            type_url: LDS.into(),
            response_nonce: lds.nonce.clone(),
            error_detail: xds::nack("redis/shop/orders@0.0.0.0:6379: cannot bind"),
            ..Default::default()
        })
        .await;
    // The NACK is in the registry once syncz says so.
    common::wait_until("the NACK is recorded", || {
        common::http_get(&serve.debug, "/debug/syncz")
            .filter(|s| s.contains("NACKED"))
            .map(|_| ())
    });

    // The same facts for Prometheus.
    let metrics = common::http_get(&serve.debug, "/metrics").expect("metrics");
    for sample in [
        "redis_xds_proxies{state=\"synced\"} 1",
        "redis_xds_proxies{state=\"nacked\"} 1",
        "redis_xds_proxies{state=\"stale\"} 0",
        "redis_xds_ready 1",
    ] {
        assert!(metrics.contains(sample), "{sample} in {metrics}");
    }

    let url = format!("http://{}/", serve.debug);
    if std::env::var_os("REDIS_XDS_UPDATE_SCREENSHOT").is_some() {
        // The picture in docs/operations.md, of this very page.
        let png = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/overview.png");
        let status = std::process::Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
            ])
            .args([
                "--window-size=1280,720",
                &format!("--screenshot={png}"),
                &url,
            ])
            .output()
            .expect("chromium runs");
        assert!(status.status.success());
    }
    let dom = tokio::task::spawn_blocking({
        let url = url.clone();
        move || rendered(&url)
    })
    .await
    .unwrap();
    assert!(!dom.contains("<script"), "no scripts: {dom}");
    assert_eq!(text_of(&dom, "serving").split(' ').next(), Some("Ready"));
    let summary = text_of(&dom, "summary");
    assert!(
        summary.starts_with("2 proxies connected: 1 in sync, 1 rejecting configuration"),
        "{summary}"
    );
    let objects = text_of(&dom, "redisclusters");
    assert!(objects.contains("shop/orders"), "{objects}");
    assert!(objects.contains("shop/sessions"), "{objects}");
    assert!(objects.contains("Not accepted"), "{objects}");
    assert!(
        objects.contains("spec.listener.routes[0].cluster"),
        "the problem names the field: {objects}"
    );
    let proxies = text_of(&dom, "proxies");
    assert!(proxies.contains("checkout-7f9c"), "{proxies}");
    assert!(proxies.contains("SYNCED"), "{proxies}");
    assert!(
        proxies.contains("NACKED")
            && proxies.contains("NACK: redis/shop/orders@0.0.0.0:6379: cannot bind"),
        "{proxies}"
    );
    // A node id is text, never markup.
    assert!(proxies.contains("billing-<b>5d2</b>"), "{proxies}");
    assert!(!dom.contains("<b>5d2</b>"), "escaped: {dom}");
    // Links to the JSON views and to each proxy's config dump.
    for link in [
        "href=\"/debug/syncz\"",
        "href=\"/debug/model\"",
        "href=\"/debug/config_dump?proxy=checkout%2D7f9c\"",
    ] {
        assert!(dom.contains(link), "{link} in {dom}");
    }
}
