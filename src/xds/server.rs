//! The xDS port: tonic's server (hyper and h2 underneath, rustls for TLS) with every
//! HTTP/2 and gRPC setting chosen here, in one place, with the reason for it.
//!
//! Used by `serve`, by `bench` (so that it measures what production runs) and by the tests.
//! Nothing in this crate reads or writes HTTP/2 frames or HPACK: h2 does, and it is where
//! the HTTP/2 denial-of-service fixes land (Rapid Reset, CONTINUATION floods, MadeYouReset).

use std::sync::Arc;
use std::time::Duration;

use tokio_stream::StreamExt;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use super::grpc::AdsService;

/// HTTP/2 PING every 30 s on a connection that has been quiet: a dead proxy (a node that
/// vanished without a FIN) is noticed within a minute, not after TCP's many minutes, and
/// its stream and view are freed. Envoy's own keepalive to the server is the same figure
/// in `redis-xds bootstrap`.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a PING may go unanswered before the connection is closed.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP keepalive idle time on accepted sockets: a second line behind the HTTP/2 PING, for
/// connections stuck before HTTP/2 starts (a TLS handshake that never finishes).
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// A TLS handshake that takes longer is abandoned: [`crate::tls::HANDSHAKE_TIMEOUT`].
pub const TLS_HANDSHAKE_TIMEOUT: Duration = crate::tls::HANDSHAKE_TIMEOUT;

/// Initial flow-control window of each stream, bytes: the RFC 9113 default (65,535),
/// rounded to 64 KiB. A proxy sends small requests (an ACK is a few hundred bytes, a
/// reconnecting Delta client's version list tens of kilobytes), so a larger window buys
/// nothing, while it is what h2 buffers for a stream whose handler is busy: the window
/// bounds the memory a client can park on the server.
pub const INITIAL_STREAM_WINDOW: u32 = 64 * 1024;
/// Initial flow-control window of a connection, bytes: four streams' worth. hyper's
/// default of 1 MiB would let each of thousands of connections park a megabyte.
pub const INITIAL_CONNECTION_WINDOW: u32 = 256 * 1024;
/// Largest frame the server accepts, bytes: the protocol's minimum and default (16 KiB).
/// Larger frames help bulk transfers, and no request here is one.
pub const MAX_FRAME_SIZE: u32 = 16 * 1024;
/// Streams one connection may have open at once. Envoy runs ADS as one stream per
/// connection (and a reconnect makes a new connection); 16 leaves room for clients that
/// multiplex a few, and bounds what one connection can make the server hold (each open
/// stream is a task and a view).
pub const MAX_CONCURRENT_STREAMS: u32 = 16;
/// Largest header list accepted, bytes (RFC 9113 `SETTINGS_MAX_HEADER_LIST_SIZE`): gRPC's
/// headers plus a ServiceAccount token (1-2 KiB) fit several times over. h2 refuses larger
/// lists, and counts CONTINUATION frames against it, which is what stops a CONTINUATION
/// flood.
pub const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
/// Streams the client may reset before the server accepted them, at once, before h2 sends
/// GOAWAY ENHANCE_YOUR_CALM: the Rapid Reset guard (CVE-2023-44487). h2's default.
pub const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// Streams the server may reset because of the client's protocol errors before h2 sends
/// GOAWAY ENHANCE_YOUR_CALM: the MadeYouReset guard (CVE-2025-8671). This is h2's and
/// hyper's default, but it must be set here: tonic passes `None` when it is not set, and
/// hyper takes `None` as "no limit", which leaves the guard off.
pub const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;
// No encode buffer: tonic's keeps the allocation of the largest response it ever encoded
// for the life of the stream, so responses are written by `super::grpc` into allocations of
// exactly their size instead, which h2 frees once sent.

// Adaptive flow-control windows stay off: they send BDP PINGs, which help large downloads
// by the server, and requests here are small.

/// tonic's server with the settings above. TLS is not tonic's: [`serve`] hands it
/// connections that [`crate::tls::accept`] has already handshaken, so that the serving
/// certificate can be renewed in place.
pub fn builder() -> Server {
    Server::builder()
        .accept_http1(false)
        .initial_stream_window_size(INITIAL_STREAM_WINDOW)
        .initial_connection_window_size(INITIAL_CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .http2_max_header_list_size(MAX_HEADER_LIST_SIZE)
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESET_STREAMS))
        .http2_max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESET_STREAMS))
        .http2_adaptive_window(Some(false))
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
}

/// Connections the kernel queues for `accept` when tokio's default (1,024) is not enough:
/// the system's own limit, `net.core.somaxconn` (4,096 on current kernels), as Go's
/// listeners (istiod's among them) take. When a rollout sends a whole fleet's sidecars to
/// one replica in the same second, a full queue drops their SYNs, and each dropped client
/// waits a second or more for its retransmission.
pub fn listen_backlog() -> i32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|n: &i32| *n > 0)
        .unwrap_or(4096)
}

/// A listener on `addr` for the xDS port, with [`listen_backlog`] (and `SO_REUSEADDR`, as
/// tokio's `bind` sets it).
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(listen_backlog())?;
    TcpListener::from_std(socket.into())
}

/// TCP settings of every accepted xDS connection: no Nagle delay (responses are written
/// whole), and [`TCP_KEEPALIVE`].
fn on_accept(tcp: &tokio::net::TcpStream) {
    let _ = tcp.set_nodelay(true);
    let keepalive = socket2_keepalive(TCP_KEEPALIVE);
    let _ = socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive);
}

fn socket2_keepalive(idle: Duration) -> socket2::TcpKeepalive {
    socket2::TcpKeepalive::new().with_time(idle)
}

/// How long connections may take to close after shutdown: their streams end at once, so
/// only a client that stopped reading keeps one open.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `service` on `listener` until `shutdown`; then stops accepting, sends every
/// connection a GOAWAY and returns once they have all closed (the streams end on
/// `shutdown` too), or after [`DRAIN_TIMEOUT`]. With `tls` (from
/// [`crate::tls::server_config`], ALPN `h2`), every connection is TLS.
pub async fn serve(
    listener: TcpListener,
    service: AdsService,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let router = builder().add_service(service);
    let stopped = shutdown.clone().cancelled_owned();
    let stop_accepting = shutdown.clone();
    let server = async move {
        match tls {
            None => {
                let incoming = TcpIncoming::from(listener)
                    .with_nodelay(Some(true))
                    .with_keepalive(Some(TCP_KEEPALIVE));
                router.serve_with_incoming_shutdown(incoming, stopped).await
            }
            Some(config) => {
                let connections = crate::tls::accept(listener, config, on_accept, stop_accepting);
                let incoming = tokio_stream::wrappers::ReceiverStream::new(connections)
                    .map(Ok::<_, std::io::Error>);
                router.serve_with_incoming_shutdown(incoming, stopped).await
            }
        }
    };
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(DRAIN_TIMEOUT).await;
    };
    tokio::select! {
        served = server => served,
        () = deadline => {
            tracing::warn!(timeout = ?DRAIN_TIMEOUT, "xDS connections still open after shutdown; stopping without them");
            Ok(())
        }
    }
}
