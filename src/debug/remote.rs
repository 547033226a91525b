//! `status`: a table of every connected proxy and its sync state, like
//! `istioctl proxy-status`, read from a running server's `/debug/syncz`.

use std::time::Duration;

use serde_json::Value;

/// Errors fetching or reading the status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server could not be reached.
    #[error(
        "cannot reach the debug server at {addr}: {cause}; is `redis-xds serve` running with --debug-addr {addr}?"
    )]
    Connect {
        /// Address tried.
        addr: String,
        /// What failed, with its causes (shown in the message, so not also as a source).
        cause: String,
    },
    /// The server answered something else than 200 with JSON.
    #[error("unexpected answer from {addr}{path}: {detail}")]
    Answer {
        /// Address.
        addr: String,
        /// Path.
        path: String,
        /// What was wrong.
        detail: String,
    },
}

/// How long a GET may take in all, connection included.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A GET over plain HTTP (the debug server listens on a trusted address) with hyper's
/// client: the body of a 200 answer. Blocking, for the CLI and the tests: it runs on a
/// runtime of its own in a thread of its own, so it may be called from within another
/// runtime too.
pub fn http_get(addr: &str, path: &str) -> Result<String, Error> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::Connect {
                    addr: addr.to_owned(),
                    cause: e.to_string(),
                })?;
            runtime.block_on(get(addr, path))
        })
        .join()
        .unwrap_or_else(|_| {
            Err(Error::Answer {
                addr: addr.to_owned(),
                path: path.to_owned(),
                detail: "the request's thread panicked".into(),
            })
        })
    })
}

async fn get(addr: &str, path: &str) -> Result<String, Error> {
    use http_body_util::BodyExt;
    let connect = |cause: String| Error::Connect {
        addr: addr.to_owned(),
        cause,
    };
    let answer = |detail: String| Error::Answer {
        addr: addr.to_owned(),
        path: path.to_owned(),
        detail,
    };
    let uri: http::Uri = format!("http://{addr}{path}")
        .parse()
        .map_err(|e| answer(format!("not a URL: {e}")))?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let exchange = async {
        let response = client.get(uri).await.map_err(|e| connect(chain(&e)))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| answer(format!("reading the body: {e}")))?
            .to_bytes();
        Ok::<_, Error>((status, String::from_utf8_lossy(&body).into_owned()))
    };
    let (status, body) = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| connect(format!("no answer within {TIMEOUT:?}")))??;
    if status != http::StatusCode::OK {
        return Err(answer(format!("HTTP {status}: {}", body.trim())));
    }
    Ok(body)
}

/// An error and its causes, as one line: hyper's own message names only the stage.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Renders `/debug/syncz` as a table.
pub fn table(syncz: &Value) -> String {
    let mut rows = vec![[
        "PROXY".to_string(),
        "NAMESPACE".into(),
        "VARIANT".into(),
        "CDS".into(),
        "EDS".into(),
        "LDS".into(),
        "LAST ERROR".into(),
    ]];
    for p in syncz["proxies"].as_array().into_iter().flatten() {
        // "-": the proxy never asked for that type (e.g. EDS without Sharded clusters).
        let state = |t: &str| p["types"][t]["state"].as_str().unwrap_or("-").to_string();
        let error = ["CDS", "EDS", "LDS"]
            .iter()
            .find_map(|t| {
                p["types"][*t]["last_nack"]["message"]
                    .as_str()
                    .map(|m| format!("{t}: {}", m.lines().next().unwrap_or_default()))
            })
            .unwrap_or_default();
        rows.push([
            p["proxy"].as_str().unwrap_or_default().to_string(),
            p["namespace"].as_str().unwrap_or("-").to_string(),
            p["variant"].as_str().unwrap_or_default().to_string(),
            state("CDS"),
            state("EDS"),
            state("LDS"),
            error,
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn should_render_one_row_per_proxy_with_the_first_nack() {
        let syncz = json!({"proxies": [
            {"proxy": "a", "namespace": "shop", "variant": "delta", "types": {
                "CDS": {"state": "SYNCED"}, "EDS": {"state": "SYNCED"},
                "LDS": {"state": "NACKED", "last_nack": {"message": "bad listener\nmore"}}}},
            {"proxy": "b-long-name", "namespace": null, "variant": "sotw", "types": {"CDS": {"state": "STALE"}}}
        ]});
        let t = table(&syncz);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[0].starts_with("PROXY        NAMESPACE  VARIANT  CDS"),
            "{t}"
        );
        assert!(
            lines[1].contains("NACKED") && lines[1].ends_with("LDS: bad listener"),
            "{t}"
        );
        assert!(
            lines[2].starts_with("b-long-name  -          sotw     STALE   -"),
            "{t}"
        );
    }
}
