//! The xDS port's HTTP/2 server against h2's client (flow control, multiplexing, shutdown)
//! and against hand-written frames (protocol errors, keepalive, limits). Envoy itself is
//! the client in tests/envoy_serve.rs, tests/envoy_tls.rs and the e2e scenarios.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body_util::{BodyExt, StreamBody};
use redis_xds::memory::Reclaimer;
use redis_xds::xds::http2::{self, Connection, Handler, Settings};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::body::Body;

/// Test endpoints: `/echo` answers with the request body once it ended, `/big` with
/// `x-size` generated octets, `/wait` with headers at once and its end once the request
/// ended, `/watch` with headers at once while a task of its own reads the request and
/// signals `ended` when the request stops (ended or cut off). Every response but `/echo`'s
/// ends with an `x-done` trailer.
#[derive(Clone, Default)]
struct Endpoints {
    ended: Arc<tokio::sync::Notify>,
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fn body_of(frames: Vec<http_body::Frame<Bytes>>) -> Body {
    Body::new(StreamBody::new(futures_util::stream::iter(
        frames.into_iter().map(Ok::<_, Status>),
    )))
}

fn done() -> http_body::Frame<Bytes> {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-done", http::HeaderValue::from_static("yes"));
    http_body::Frame::trailers(trailers)
}

impl Handler for Endpoints {
    fn call(&self, request: http::Request<Body>) -> BoxFuture<'static, http::Response<Body>> {
        let ended = Arc::clone(&self.ended);
        Box::pin(async move {
            let path = request.uri().path().to_owned();
            let size: usize = request
                .headers()
                .get("x-size")
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(0);
            let body = request.into_body();
            match path.as_str() {
                "/echo" => {
                    let got = body.collect().await.map(|c| c.to_bytes());
                    let frames = match got {
                        Ok(b) => vec![http_body::Frame::data(b)],
                        Err(_) => vec![],
                    };
                    http::Response::new(body_of(frames))
                }
                "/big" => {
                    let data = Bytes::from(pattern(size));
                    // In uneven pieces, to cross frame and window boundaries.
                    let mut frames: Vec<_> = data
                        .chunks(100_003)
                        .map(|c| http_body::Frame::data(data.slice_ref(c)))
                        .collect();
                    frames.push(done());
                    http::Response::new(body_of(frames))
                }
                "/watch" => {
                    tokio::spawn(async move {
                        let _ = body.collect().await;
                        ended.notify_one();
                    });
                    // A response that never ends, like an ADS stream's.
                    http::Response::new(Body::new(StreamBody::new(
                        futures_util::stream::pending::<Result<http_body::Frame<Bytes>, Status>>(),
                    )))
                }
                _ => {
                    let rest = async move {
                        let _ = body.collect().await;
                        Ok::<_, Status>(done())
                    };
                    http::Response::new(Body::new(StreamBody::new(futures_util::stream::once(
                        rest,
                    ))))
                }
            }
        })
    }
}

fn options(settings: Settings) -> http2::Options {
    http2::Options {
        settings,
        tls: None,
        reclaimer: Arc::new(Reclaimer::new(Duration::from_secs(1), Duration::ZERO)),
        tcp_keepalive: None,
    }
}

async fn server() -> (std::net::SocketAddr, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(http2::serve(
        listener,
        Endpoints::default(),
        options(Settings::default()),
        stop.clone(),
    ));
    (addr, stop)
}

async fn h2_client(
    addr: std::net::SocketAddr,
    window: u32,
    connection_window: u32,
) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(window)
        .initial_connection_window_size(connection_window)
        .handshake(tcp)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// Fails a test that stops making progress (a flow-control deadlock) instead of hanging.
async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("no progress in 60 s")
}

/// Reads a response body, releasing flow-control credit as it goes, and its trailers.
async fn read_all(body: &mut h2::RecvStream) -> (Vec<u8>, Option<http::HeaderMap>) {
    let mut got = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        body.flow_control().release_capacity(chunk.len()).unwrap();
        got.extend_from_slice(&chunk);
    }
    (got, body.trailers().await.unwrap())
}

#[tokio::test]
async fn a_response_larger_than_the_clients_windows_arrives_whole() {
    let (addr, _stop) = server().await;
    // A stream window of 1,000 octets: the response needs hundreds of window updates.
    let mut client = h2_client(addr, 1_000, 65_535).await;
    let request = http::Request::post("http://xds/big")
        .header("x-size", "300000")
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    let (got, trailers) = within(read_all(&mut response.into_body())).await;
    assert_eq!(got.len(), 300_000);
    assert!(got == pattern(300_000), "the data arrived out of order");
    assert_eq!(trailers.unwrap()["x-done"], "yes");
}

#[tokio::test]
async fn request_bodies_beyond_the_servers_windows_are_credited_as_the_handler_reads() {
    let (addr, _stop) = server().await;
    let mut client = h2_client(addr, 65_535, 65_535).await;
    // Three times the stream window and most of the connection window, in one stream.
    let sent = pattern(3 * 1024 * 1024 + 17);
    let request = http::Request::post("http://xds/echo").body(()).unwrap();
    let (response, mut send) = client.send_request(request, false).unwrap();
    send.send_data(Bytes::from(sent.clone()), true).unwrap();
    let response = within(response).await.unwrap();
    let (got, _) = within(read_all(&mut response.into_body())).await;
    assert!(got == sent, "echoed {} octets", got.len());
    // The connection window was credited back too: another stream goes through.
    let request = http::Request::post("http://xds/echo").body(()).unwrap();
    let (response, mut send) = client.send_request(request, false).unwrap();
    send.send_data(Bytes::from(sent.clone()), true).unwrap();
    let (again, _) =
        within(async { read_all(&mut response.await.unwrap().into_body()).await }).await;
    assert_eq!(again.len(), sent.len());
}

#[tokio::test]
async fn concurrent_streams_on_one_connection_each_get_their_own_answer() {
    let (addr, _stop) = server().await;
    let mut client = h2_client(addr, 65_535, 65_535).await;
    // One request first, so that the client knows the server's stream limit (16) and queues
    // what goes beyond it instead of having it refused.
    let request = http::Request::post("http://xds/big").body(()).unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    response.await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..20usize {
        let mut client = client.clone().ready().await.unwrap();
        tasks.push(tokio::spawn(async move {
            let size = 10_000 + i * 7_919;
            let request = http::Request::post("http://xds/big")
                .header("x-size", size.to_string())
                .body(())
                .unwrap();
            let (response, _) = client.send_request(request, true).unwrap();
            let (got, _) = read_all(&mut response.await.unwrap().into_body()).await;
            (size, got)
        }));
    }
    for t in tasks {
        let (size, got) = t.await.unwrap();
        assert!(
            got == pattern(size),
            "stream of {size} octets got {}",
            got.len()
        );
    }
}

#[tokio::test]
async fn shutdown_lets_open_streams_finish_and_then_ends_the_server() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let serving = tokio::spawn(http2::serve(
        listener,
        Endpoints::default(),
        options(Settings::default()),
        stop.clone(),
    ));
    let mut client = h2_client(addr, 65_535, 65_535).await;
    let request = http::Request::post("http://xds/wait").body(()).unwrap();
    let (response, mut send) = client.send_request(request, false).unwrap();
    let response = response.await.unwrap();
    stop.cancel();
    // New connections are refused at once, while the open stream drains.
    within(async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    // The stream is still served: its end comes once the request ends.
    send.send_data(Bytes::from_static(b"last words"), true)
        .unwrap();
    let (_, trailers) = read_all(&mut response.into_body()).await;
    assert_eq!(trailers.unwrap()["x-done"], "yes");
    serving.await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting connections"
    );
}

// --- Hand-written frames over an in-memory connection.

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A header block of literal fields (no Huffman coding, no indexing); names and values
/// under 127 octets.
fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0);
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.push(value.len() as u8);
        out.extend_from_slice(value.as_bytes());
    }
    out
}

fn request_block(path: &str) -> Vec<u8> {
    block(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", "xds"),
        (":path", path),
    ])
}

#[derive(Debug, PartialEq, Eq)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const WINDOW_UPDATE: u8 = 8;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;
const PADDED: u8 = 8;
const ACK: u8 = 1;

struct Raw {
    io: DuplexStream,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    stop: CancellationToken,
    endpoints: Endpoints,
}

impl Raw {
    /// A connection with the preface and SETTINGS exchanged.
    async fn start(settings: Settings) -> Raw {
        Raw::start_with(settings, None).await
    }

    async fn start_with(settings: Settings, reclaimer: Option<Arc<Reclaimer>>) -> Raw {
        let (near, far) = tokio::io::duplex(1 << 20);
        let stop = CancellationToken::new();
        let endpoints = Endpoints::default();
        let mut connection = Connection::new(
            far,
            endpoints.clone(),
            settings,
            Default::default(),
            stop.clone(),
        );
        if let Some(r) = reclaimer {
            connection = connection.with_reclaimer(r);
        }
        let task = tokio::spawn(connection.run());
        let mut raw = Raw {
            io: near,
            task,
            stop,
            endpoints,
        };
        raw.send(PREFACE).await;
        raw.send(&frame(SETTINGS, 0, 0, &[])).await;
        let settings = raw.next().await.unwrap();
        assert_eq!((settings.kind, settings.flags), (SETTINGS, 0));
        assert_eq!(raw.next().await.unwrap().kind, WINDOW_UPDATE);
        assert_eq!(
            raw.next().await.unwrap(),
            Frame {
                kind: SETTINGS,
                flags: ACK,
                stream: 0,
                payload: vec![]
            }
        );
        raw.send(&frame(SETTINGS, ACK, 0, &[])).await;
        raw
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
    }

    /// The next frame, or `None` once the server closed the connection.
    async fn next(&mut self) -> Option<Frame> {
        let mut head = [0u8; 9];
        if self.io.read_exact(&mut head).await.is_err() {
            return None;
        }
        let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
        let mut payload = vec![0; len];
        self.io.read_exact(&mut payload).await.unwrap();
        Some(Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes(head[5..9].try_into().unwrap()),
            payload,
        })
    }

    /// Expects a GOAWAY with this error code, then the end of the connection.
    async fn expect_goaway(mut self, code: u32) {
        let goaway = self.next().await.expect("a GOAWAY");
        assert_eq!(goaway.kind, GOAWAY, "{goaway:?}");
        assert_eq!(
            u32::from_be_bytes(goaway.payload[4..8].try_into().unwrap()),
            code,
            "{}",
            String::from_utf8_lossy(&goaway.payload[8..])
        );
        assert_eq!(self.next().await, None, "the connection stays open");
        self.task.await.unwrap().unwrap();
    }

    async fn ping_answered(&mut self) {
        self.send(&frame(PING, 0, 0, b"12345678")).await;
        let pong = self.next().await.unwrap();
        assert_eq!(
            pong,
            Frame {
                kind: PING,
                flags: ACK,
                stream: 0,
                payload: b"12345678".to_vec()
            }
        );
    }
}

#[tokio::test]
async fn a_large_response_once_written_is_noted_for_the_memory_reclaimer() {
    let reclaimer = Arc::new(Reclaimer::new(Duration::from_secs(1), Duration::ZERO));
    let mut raw = Raw::start_with(Settings::default(), Some(Arc::clone(&reclaimer))).await;
    // Room for the whole response.
    raw.send(&frame(WINDOW_UPDATE, 0, 0, &1_000_000u32.to_be_bytes()))
        .await;
    raw.send(&frame(SETTINGS, 0, 0, &[0, 4, 0, 0x10, 0, 0]))
        .await;
    assert_eq!(raw.next().await.unwrap().flags, ACK);
    let mut stream = 1;
    for (size, counted) in [("1000", false), ("200000", true)] {
        let mut fields = request_block("/big");
        fields.extend(block(&[("x-size", size)]));
        raw.send(&frame(HEADERS, END_HEADERS | END_STREAM, stream, &fields))
            .await;
        let mut received = 0;
        loop {
            let f = raw.next().await.unwrap();
            if f.kind == DATA {
                received += f.payload.len();
            }
            if f.flags & END_STREAM != 0 {
                break;
            }
        }
        assert_eq!(received.to_string(), size);
        assert_eq!(
            !reclaimer.settled(),
            counted,
            "a response of {size} octets, noted: {}",
            !reclaimer.settled()
        );
        stream += 2;
    }
}

#[tokio::test]
async fn a_peer_resetting_streams_before_they_are_answered_is_cut_off() {
    let mut raw = Raw::start(Settings::default()).await;
    // `/echo` answers only once its request ended: every stream is reset unanswered.
    let mut stream = 1;
    let mut open_and_reset = async |raw: &mut Raw, count: u32| {
        let mut batch = Vec::new();
        for _ in 0..count {
            batch.extend(frame(HEADERS, END_HEADERS, stream, &request_block("/echo")));
            batch.extend(frame(RST_STREAM, 0, stream, &8u32.to_be_bytes()));
            stream += 2;
        }
        raw.send(&batch).await;
    };
    open_and_reset(&mut raw, 256).await;
    raw.ping_answered().await;
    open_and_reset(&mut raw, 1).await;
    raw.expect_goaway(0xb).await;
}

#[tokio::test]
async fn pings_are_answered_with_their_payload() {
    let mut raw = Raw::start(Settings::default()).await;
    raw.ping_answered().await;
}

#[tokio::test]
async fn a_client_that_does_not_speak_http2_gets_a_protocol_error() {
    let (near, far) = tokio::io::duplex(1 << 16);
    let task = tokio::spawn(
        Connection::new(
            far,
            Endpoints::default(),
            Settings::default(),
            Default::default(),
            CancellationToken::new(),
        )
        .run(),
    );
    let mut raw = Raw {
        io: near,
        task,
        stop: CancellationToken::new(),
        endpoints: Endpoints::default(),
    };
    raw.send(b"GET / HTTP/1.1\r\nHost: xds\r\n\r\n").await;
    assert_eq!(raw.next().await.unwrap().kind, SETTINGS);
    assert_eq!(raw.next().await.unwrap().kind, WINDOW_UPDATE);
    raw.expect_goaway(0x1).await;
}

#[tokio::test]
async fn frame_level_violations_end_the_connection_with_the_matching_error() {
    // Larger than SETTINGS_MAX_FRAME_SIZE: FRAME_SIZE_ERROR.
    let mut raw = Raw::start(Settings::default()).await;
    raw.send(&frame(DATA, 0, 1, &vec![0; 16_385])).await;
    raw.expect_goaway(0x6).await;
    // DATA on a stream never opened: PROTOCOL_ERROR.
    let mut raw = Raw::start(Settings::default()).await;
    raw.send(&frame(DATA, 0, 5, b"hi")).await;
    raw.expect_goaway(0x1).await;
    // A header block interrupted by another frame: PROTOCOL_ERROR.
    let mut raw = Raw::start(Settings::default()).await;
    let block = request_block("/echo");
    raw.send(&frame(HEADERS, 0, 1, &block[..5])).await;
    raw.send(&frame(PING, 0, 0, b"12345678")).await;
    raw.expect_goaway(0x1).await;
    // A connection window past 2^31-1: FLOW_CONTROL_ERROR.
    let mut raw = Raw::start(Settings::default()).await;
    raw.send(&frame(WINDOW_UPDATE, 0, 0, &0x7fff_ffffu32.to_be_bytes()))
        .await;
    raw.expect_goaway(0x3).await;
    // A header block that is not valid HPACK: COMPRESSION_ERROR.
    let mut raw = Raw::start(Settings::default()).await;
    raw.send(&frame(HEADERS, END_HEADERS, 1, &[0xff, 0x7f]))
        .await;
    raw.expect_goaway(0x9).await;
}

#[tokio::test]
async fn a_header_block_on_a_closed_stream_is_ignored_but_keeps_the_hpack_table() {
    let mut raw = Raw::start(Settings::default()).await;
    raw.send(&frame(HEADERS, END_HEADERS, 3, &request_block("/wait")))
        .await;
    assert_eq!(raw.next().await.unwrap().kind, HEADERS);
    // Stream 1 was skipped, so it is closed: its block is ignored, but it adds
    // ":path: /wait" to the dynamic table (literal with incremental indexing, name 4).
    let mut indexed = vec![0x44, 5];
    indexed.extend_from_slice(b"/wait");
    raw.send(&frame(HEADERS, END_HEADERS, 1, &indexed)).await;
    // A request naming its path by that entry (index 62) is served.
    raw.send(&frame(HEADERS, END_HEADERS, 5, &[0x83, 0x86, 0x80 | 62]))
        .await;
    let headers = raw.next().await.unwrap();
    assert_eq!((headers.kind, headers.stream), (HEADERS, 5), "{headers:?}");
}

#[tokio::test]
async fn a_peer_that_shrinks_its_hpack_table_gets_a_size_update_first() {
    let mut raw = Raw::start(Settings::default()).await;
    // SETTINGS_HEADER_TABLE_SIZE = 0.
    raw.send(&frame(SETTINGS, 0, 0, &[0, 1, 0, 0, 0, 0])).await;
    assert_eq!(raw.next().await.unwrap().flags, ACK);
    for (stream, update) in [(1, true), (3, false)] {
        raw.send(&frame(
            HEADERS,
            END_HEADERS,
            stream,
            &request_block("/wait"),
        ))
        .await;
        let headers = raw.next().await.unwrap();
        assert_eq!(headers.kind, HEADERS);
        assert_eq!(headers.payload[0] == 0x20, update, "{headers:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn after_a_peers_goaway_its_open_streams_go_on_and_new_ones_are_refused() {
    let mut raw = Raw::start(Settings::default()).await;
    raw.send(&frame(HEADERS, END_HEADERS, 1, &request_block("/wait")))
        .await;
    assert_eq!(raw.next().await.unwrap().kind, HEADERS);
    raw.send(&frame(GOAWAY, 0, 0, &[0, 0, 0, 0, 0, 0, 0, 0]))
        .await;
    raw.send(&frame(HEADERS, END_HEADERS, 3, &request_block("/wait")))
        .await;
    let rst = raw.next().await.unwrap();
    assert_eq!((rst.kind, rst.stream), (RST_STREAM, 3));
    // Well past any drain deadline, with keepalive answered, stream 1 is still served.
    for _ in 0..3 {
        let ping = raw.next().await.unwrap();
        assert_eq!((ping.kind, ping.flags), (PING, 0));
        raw.send(&frame(PING, ACK, 0, &ping.payload)).await;
    }
    raw.send(&frame(DATA, END_STREAM, 1, b"")).await;
    let trailers = raw.next().await.unwrap();
    assert_eq!(
        (trailers.kind, trailers.stream, trailers.flags & END_STREAM),
        (HEADERS, 1, END_STREAM)
    );
    // Its last stream done, the connection ends.
    assert_eq!(raw.next().await, None);
}

#[tokio::test]
async fn a_malformed_request_resets_only_its_stream() {
    let mut raw = Raw::start(Settings::default()).await;
    let mut fields = block(&[(":method", "POST"), (":scheme", "http"), (":path", "/echo")]);
    fields.extend(block(&[("Upper-Case", "x")]));
    raw.send(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &fields))
        .await;
    let rst = raw.next().await.unwrap();
    assert_eq!(
        (rst.kind, rst.stream, rst.payload),
        (RST_STREAM, 1, 1u32.to_be_bytes().to_vec())
    );
    raw.ping_answered().await;
}

#[tokio::test]
async fn padded_and_continued_frames_are_read_without_their_padding() {
    let mut raw = Raw::start(Settings::default()).await;
    let request = request_block("/echo");
    // HEADERS padded with 3 octets and split over a CONTINUATION.
    let (first, rest) = request.split_at(10);
    let mut padded = vec![3];
    padded.extend_from_slice(first);
    padded.extend_from_slice(&[0, 0, 0]);
    raw.send(&frame(HEADERS, PADDED, 1, &padded)).await;
    raw.send(&frame(CONTINUATION, END_HEADERS, 1, rest)).await;
    let mut data = vec![2];
    data.extend_from_slice(b"payload");
    data.extend_from_slice(&[0, 0]);
    raw.send(&frame(DATA, PADDED | END_STREAM, 1, &data)).await;
    let headers = raw.next().await.unwrap();
    assert_eq!((headers.kind, headers.stream), (HEADERS, 1));
    let echoed = raw.next().await.unwrap();
    assert_eq!(
        (echoed.kind, echoed.payload.as_slice()),
        (DATA, &b"payload"[..])
    );
    let end = raw.next().await.unwrap();
    assert_eq!((end.kind, end.flags & END_STREAM), (DATA, END_STREAM));
}

#[tokio::test]
async fn streams_past_the_concurrency_limit_are_refused() {
    let mut raw = Raw::start(Settings {
        max_concurrent_streams: 1,
        ..Default::default()
    })
    .await;
    raw.send(&frame(HEADERS, END_HEADERS, 1, &request_block("/wait")))
        .await;
    let headers = raw.next().await.unwrap();
    assert_eq!((headers.kind, headers.stream), (HEADERS, 1));
    raw.send(&frame(HEADERS, END_HEADERS, 3, &request_block("/wait")))
        .await;
    let rst = raw.next().await.unwrap();
    assert_eq!(
        (rst.kind, rst.stream, rst.payload),
        (RST_STREAM, 3, 7u32.to_be_bytes().to_vec())
    );
    // Once the first ends, a new one is served.
    raw.send(&frame(DATA, END_STREAM, 1, b"")).await;
    let trailers = raw.next().await.unwrap();
    assert_eq!(
        (trailers.kind, trailers.stream, trailers.flags & END_STREAM),
        (HEADERS, 1, END_STREAM)
    );
    raw.send(&frame(HEADERS, END_HEADERS, 5, &request_block("/wait")))
        .await;
    let headers = raw.next().await.unwrap();
    assert_eq!((headers.kind, headers.stream), (HEADERS, 5));
}

#[tokio::test(start_paused = true)]
async fn an_answered_keepalive_keeps_the_connection_and_an_unanswered_one_ends_it() {
    let settings = Settings {
        keepalive_interval: Duration::from_secs(30),
        keepalive_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let mut raw = Raw::start(settings.clone()).await;
    let mut pinged_at = Vec::new();
    for _ in 0..3 {
        let ping = raw.next().await.unwrap();
        assert_eq!((ping.kind, ping.flags), (PING, 0));
        pinged_at.push(tokio::time::Instant::now());
        raw.send(&frame(PING, ACK, 0, &ping.payload)).await;
    }
    // An idle peer that answers is pinged once per interval.
    assert_eq!(pinged_at[2] - pinged_at[1], Duration::from_secs(30));
    // A peer that does not answer but is heard from otherwise is alive: no drop, and no
    // PING while it keeps talking.
    let ping = raw.next().await.unwrap();
    assert_eq!((ping.kind, ping.flags), (PING, 0));
    let unanswered = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    raw.ping_answered().await;
    let ping = raw.next().await.unwrap();
    assert_eq!((ping.kind, ping.flags), (PING, 0), "{ping:?}");
    assert_eq!(
        tokio::time::Instant::now() - unanswered,
        Duration::from_secs(40),
        "pinged again one interval after the timeout that found the peer alive"
    );
    // A stream whose handler reads the request in a task of its own.
    raw.send(&frame(HEADERS, END_HEADERS, 1, &request_block("/watch")))
        .await;
    assert_eq!(raw.next().await.unwrap().kind, HEADERS);
    let ping = raw.next().await.unwrap();
    assert_eq!((ping.kind, ping.flags), (PING, 0));
    // Not answered: the server drops the connection, and the handler learns that its
    // request was cut off.
    assert_eq!(raw.next().await, None);
    raw.task.await.unwrap().unwrap();
    tokio::time::timeout(Duration::from_secs(3600), raw.endpoints.ended.notified())
        .await
        .expect("the handler still waits for a request of a connection that is gone");
}

#[tokio::test]
async fn a_graceful_shutdown_sends_goaway_and_finishes_open_streams() {
    let mut raw = Raw::start(Settings::default()).await;
    raw.send(&frame(HEADERS, END_HEADERS, 1, &request_block("/wait")))
        .await;
    assert_eq!(raw.next().await.unwrap().kind, HEADERS);
    raw.stop.cancel();
    let goaway = raw.next().await.unwrap();
    assert_eq!(goaway.kind, GOAWAY);
    assert_eq!(
        goaway.payload[..8],
        [0, 0, 0, 1, 0, 0, 0, 0],
        "last stream 1, NO_ERROR"
    );
    // A new stream is refused; the open one is answered.
    raw.send(&frame(HEADERS, END_HEADERS, 3, &request_block("/wait")))
        .await;
    let rst = raw.next().await.unwrap();
    assert_eq!((rst.kind, rst.stream), (RST_STREAM, 3));
    raw.send(&frame(DATA, END_STREAM, 1, b"")).await;
    let trailers = raw.next().await.unwrap();
    assert_eq!(
        (trailers.kind, trailers.flags & END_STREAM),
        (HEADERS, END_STREAM)
    );
    assert_eq!(raw.next().await, None);
    raw.task.await.unwrap().unwrap();
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn frames() -> impl Strategy<Value = Vec<(u8, u8, u32, Vec<u8>)>> {
        let frame = (
            0u8..11,
            any::<u8>(),
            prop_oneof![Just(0u32), Just(1), Just(3), 0u32..8],
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..12),
                Just(request_block("/echo")),
                Just(vec![0, 0, 0, 4, 0, 0, 0, 0]),
            ],
        );
        proptest::collection::vec(frame, 1..12)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Whatever frames arrive, the connection answers or closes, and never panics.
        #[test]
        fn no_frame_sequence_panics_the_connection(frames in frames()) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let mut raw = Raw::start(Settings::default()).await;
                for (kind, flags, stream, payload) in &frames {
                    // The server may already have closed; later writes then fail.
                    if raw.io.write_all(&frame(*kind, *flags, *stream, payload)).await.is_err() {
                        break;
                    }
                }
                raw.io.shutdown().await.ok();
                // Drain what the server sends until it closes.
                while raw.next().await.is_some() {}
                let ended = raw.task.await;
                prop_assert!(ended.is_ok(), "the connection panicked: {:?}", ended);
                Ok(())
            })?;
        }
    }
}
