//! The xDS port's HTTP/2 server: connections accepted here, optionally over TLS, each
//! served by one [`Connection`] future.
//!
//! Why not hyper and h2: their connection allocates a 16 KiB write buffer, an 8 KiB read
//! buffer and a 4 KiB HPACK buffer at the handshake and keeps them for its life. An idle
//! Envoy sidecar needs none of that; across ten thousand sidecars it was most of the
//! server's memory. This server parses frames from a buffer on the stack and builds frames
//! to send in a buffer it frees once written. It serves exactly what gRPC over HTTP/2
//! needs (RFC 9113 without server push or priorities; HPACK with Huffman decoding through
//! `httlib-huffman`), and is tested against h2's client (tonic) and against Envoy.

mod body;
mod connection;
mod frame;
mod header;
mod hpack;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::connection::{Connection, Handler, Settings};
pub use self::frame::Reason;

use super::conn::Tracked;
use crate::memory::Reclaimer;

/// The DER certificates a TLS client presented, leaf first; in every request's extensions
/// when the connection is TLS and the client sent any.
#[derive(Clone, Debug)]
pub struct PeerCertificates(pub Arc<[Vec<u8>]>);

/// How long a TLS handshake may take.
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);

/// What `serve` needs besides the listener and the handler.
#[derive(Clone)]
pub struct Options {
    pub settings: Settings,
    /// TLS; its ALPN must offer `h2`.
    pub tls: Option<TlsAcceptor>,
    /// Told about every connection, so memory is returned once they are gone.
    pub reclaimer: Arc<Reclaimer>,
    /// TCP keepalive on accepted sockets.
    pub tcp_keepalive: Option<Duration>,
}

/// Accepts connections on `listener` and serves each with `handler` until `shutdown`; then
/// sends every connection a GOAWAY and returns once they have ended.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: H,
    options: Options,
    shutdown: CancellationToken,
) {
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors, most likely: wait instead of spinning.
                tracing::warn!(error = %e, "accepting an xDS connection failed");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        configure(&tcp, options.tcp_keepalive);
        let io = Tracked::new(tcp, Arc::clone(&options.reclaimer));
        let ended = move |r: io::Result<()>| {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "xDS connection ended");
            }
        };
        // A plaintext connection's task is the connection itself and nothing more: with
        // thousands of idle proxies, every octet of it counts.
        match &options.tls {
            None => connections.spawn(
                Connection::new(
                    io,
                    handler.clone(),
                    options.settings.clone(),
                    http::Extensions::new(),
                    shutdown.clone(),
                )
                .with_reclaimer(Arc::clone(&options.reclaimer))
                .map(ended),
            ),
            Some(tls) => connections.spawn(
                Box::pin(tls_connection(
                    io,
                    tls.clone(),
                    handler.clone(),
                    options.settings.clone(),
                    Arc::clone(&options.reclaimer),
                    shutdown.clone(),
                ))
                .map(ended),
            ),
        };
    }
    // Refused from here on, so that proxies try another replica at once instead of waiting
    // in the backlog of a server that drains.
    drop(listener);
    connections.close();
    connections.wait().await;
}

fn configure(tcp: &TcpStream, keepalive: Option<Duration>) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "TCP_NODELAY");
    }
    if let Some(idle) = keepalive {
        let keepalive = socket2::TcpKeepalive::new().with_time(idle);
        if let Err(e) = socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive) {
            tracing::debug!(error = %e, "TCP keepalive");
        }
    }
}

async fn tls_connection<H: Handler>(
    io: Tracked<TcpStream>,
    tls: TlsAcceptor,
    handler: H,
    settings: Settings,
    reclaimer: Arc<Reclaimer>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let handshake = tokio::time::timeout(TLS_HANDSHAKE, tls.accept(io));
    let stream = tokio::select! {
        () = shutdown.cancelled() => return Ok(()),
        r = handshake => r.map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??,
    };
    let session = stream.get_ref().1;
    if session.alpn_protocol().is_some_and(|p| p != b"h2") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "TLS client negotiated a protocol other than h2",
        ));
    }
    let mut extensions = http::Extensions::new();
    if let Some(certs) = session.peer_certificates() {
        extensions.insert(PeerCertificates(
            certs.iter().map(|c| c.as_ref().to_vec()).collect(),
        ));
    }
    Connection::new(stream, handler, settings, extensions, shutdown)
        .with_reclaimer(reclaimer)
        .run()
        .await
}
