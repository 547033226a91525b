//! `status`: a table of every connected proxy and its sync state, like
//! `istioctl proxy-status`, read from a running server's `/debug/syncz`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;

/// Errors fetching or reading the status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server could not be reached.
    #[error(
        "cannot reach the debug server at {addr}: {source}; is `redis-xds serve` running with --debug-addr {addr}?"
    )]
    Connect {
        /// Address tried.
        addr: String,
        /// Cause.
        #[source]
        source: std::io::Error,
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

/// A minimal HTTP/1.1 GET (the debug server is plain HTTP on a trusted address): the body
/// of a 200 answer.
pub fn http_get(addr: &str, path: &str) -> Result<String, Error> {
    let connect = |source| Error::Connect {
        addr: addr.to_owned(),
        source,
    };
    let answer = |detail: String| Error::Answer {
        addr: addr.to_owned(),
        path: path.to_owned(),
        detail,
    };
    let mut s = TcpStream::connect(addr).map_err(connect)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(connect)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(connect)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(connect)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| answer("no HTTP header".into()))?;
    let status_line = head.lines().next().unwrap_or_default();
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body).ok_or_else(|| answer("bad chunked body".into()))?
    } else {
        body.to_owned()
    };
    if !status_line.starts_with("HTTP/1.1 200") {
        return Err(answer(format!("{status_line}: {}", body.trim())));
    }
    Ok(body)
}

fn dechunk(mut rest: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(after.get(..size)?);
        rest = after.get(size + 2..)?;
    }
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

    #[test]
    fn should_decode_chunked_bodies() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").unwrap(),
            "hello world"
        );
        assert!(dechunk("zz\r\n").is_none());
    }
}
