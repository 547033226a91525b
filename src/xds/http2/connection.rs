//! One HTTP/2 connection, server side: a single future that reads frames, runs the handler
//! of every stream and writes responses, with flow control in both directions.
//!
//! Memory follows traffic: received bytes are parsed straight from a buffer on the poller's
//! stack, and only a frame cut off by the end of a read is kept (in an allocation of its
//! size); frames to send are built in a buffer that is freed once written. An idle
//! connection holds its streams, its HPACK table and nothing else.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::task::AtomicWaker;
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::body::Body;

use super::body::{Inbox, RequestBody};
use super::frame::{self, Head, Reason};
use super::header;
use crate::memory::Reclaimer;

/// Serves the requests of one connection.
pub trait Handler: Clone + Send + Sync + Unpin + 'static {
    /// The response to `request`; its body is streamed as it produces frames.
    fn call(&self, request: http::Request<Body>) -> BoxFuture<'static, http::Response<Body>>;
}

/// Connection settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// A PING goes out this long after the last one was answered.
    pub keepalive_interval: Duration,
    /// The connection is dropped when a PING is not answered within this time.
    pub keepalive_timeout: Duration,
    /// Streams a client may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_concurrent_streams: u32,
    /// After a graceful shutdown began, streams still open after this long are dropped.
    pub drain_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            max_concurrent_streams: 16,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// Window each stream's requests get (SETTINGS_INITIAL_WINDOW_SIZE).
const STREAM_WINDOW: usize = 1024 * 1024;
/// Window of the connection as a whole.
const CONNECTION_WINDOW: usize = 4 * 1024 * 1024;
/// Largest frame payload accepted (SETTINGS_MAX_FRAME_SIZE is left at its default).
const MAX_FRAME: usize = frame::DEFAULT_MAX_FRAME as usize;
/// Frames are read in chunks of this size, on the stack.
const READ_CHUNK: usize = 16 * 1024;
/// Response data is taken from handlers while less than this is waiting to be written.
const WRITE_HIGH: usize = 64 * 1024;
/// Reading stops while this much is waiting to be written (a peer that sends PINGs or
/// SETTINGS but does not read the answers).
const WRITE_LIMIT: usize = 1024 * 1024;
/// Frames handled in one poll before the task yields to others.
const BUDGET: usize = 64;
/// How long a connection that failed may take to write its GOAWAY.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Streams the peer may reset before their handler answered, within a window: opening
/// and resetting streams at once makes this server start handlers for nothing (the "rapid
/// reset" attack).
const MAX_EARLY_RESETS: usize = 256;
const EARLY_RESETS_WINDOW: Duration = Duration::from_secs(30);
/// A response message at least this large tells the memory reclaimer once it is written.
const LARGE_RESPONSE: usize = 64 * 1024;
/// Payload of the keepalive PING.
const KEEPALIVE: [u8; 8] = *b"rxds-ka!";

/// An error that ends the connection with a GOAWAY (RFC 9113 section 5.4.1).
#[derive(Debug)]
struct ConnectionError {
    reason: Reason,
    why: &'static str,
}

fn error<T>(reason: Reason, why: &'static str) -> Result<T, ConnectionError> {
    Err(ConnectionError { reason, why })
}

enum Respond {
    /// The handler is preparing the response headers.
    Calling(BoxFuture<'static, http::Response<Body>>),
    /// Headers sent; data of the body not yet sent is in `pending`.
    Sending { body: Body, pending: Bytes },
}

struct Stream {
    id: u32,
    respond: Respond,
    inbox: Arc<Inbox>,
    /// The peer may still send (no END_STREAM yet).
    receiving: bool,
    /// What this server may still send.
    send_window: i64,
    /// What the peer may still send.
    recv_window: i64,
    /// Credit the handler released and the peer was not told about yet.
    unacked: usize,
    /// `pending` holds a large response message.
    large: bool,
}

/// HEADERS received without END_HEADERS: CONTINUATION frames follow.
struct Continuation {
    stream: u32,
    end_stream: bool,
    block: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Open,
    /// GOAWAY sent or received: no new streams; ends when the open ones have.
    Draining,
    /// Ends once the frames waiting are written (or the close timeout passed).
    Closing,
}

/// A served connection; `run` drives it to its end.
pub struct Connection<IO, H> {
    io: IO,
    handler: H,
    settings: Settings,
    /// Copied into every request (the TLS peer's certificates).
    extensions: http::Extensions,
    decoder: super::hpack::Decoder,
    streams: Vec<Stream>,
    /// Bodies of streams that ended but whose handlers still hold them: what they release
    /// is still credited to the connection.
    retired: Vec<Arc<Inbox>>,
    /// The start of a frame the last read cut off.
    inbound: Vec<u8>,
    out: Vec<u8>,
    written: usize,
    flush: bool,
    preface: bool,
    settings_received: bool,
    continuation: Option<Continuation>,
    peer_initial_window: i64,
    peer_max_frame: usize,
    send_window: i64,
    recv_window: i64,
    unacked: usize,
    last_stream: u32,
    phase: Phase,
    waker: Arc<AtomicWaker>,
    /// Keepalive, drain and close deadlines.
    timer: Pin<Box<Sleep>>,
    ping_outstanding: bool,
    /// A frame arrived since the keepalive timer was last armed.
    heard: bool,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    shutdown_seen: bool,
    reclaimer: Option<Arc<Reclaimer>>,
    early_resets: usize,
    /// When the count of early resets started.
    early_resets_since: Instant,
    /// The next header block starts with a dynamic table size update to 0.
    table_size_update: bool,
    /// The peer sent GOAWAY: it opens no more streams; the connection ends with its last.
    peer_goaway: bool,
}

impl<IO, H> Connection<IO, H>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    pub fn new(
        io: IO,
        handler: H,
        settings: Settings,
        extensions: http::Extensions,
        shutdown: CancellationToken,
    ) -> Self {
        let mut out = Vec::new();
        frame::settings(
            &mut out,
            &[
                (
                    frame::SETTINGS_MAX_CONCURRENT_STREAMS,
                    settings.max_concurrent_streams,
                ),
                (frame::SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW as u32),
                (
                    frame::SETTINGS_MAX_HEADER_LIST_SIZE,
                    header::MAX_HEADER_LIST as u32,
                ),
            ],
        );
        frame::window_update(
            &mut out,
            0,
            (CONNECTION_WINDOW - frame::DEFAULT_WINDOW as usize) as u32,
        );
        let timer = Box::pin(tokio::time::sleep(settings.keepalive_interval));
        Connection {
            io,
            handler,
            settings,
            extensions,
            decoder: header::decoder(),
            streams: Vec::new(),
            retired: Vec::new(),
            inbound: Vec::new(),
            out,
            written: 0,
            flush: false,
            preface: false,
            settings_received: false,
            continuation: None,
            peer_initial_window: frame::DEFAULT_WINDOW,
            peer_max_frame: MAX_FRAME,
            send_window: frame::DEFAULT_WINDOW,
            recv_window: CONNECTION_WINDOW as i64,
            unacked: 0,
            last_stream: 0,
            phase: Phase::Open,
            waker: Arc::default(),
            timer,
            ping_outstanding: false,
            heard: false,
            shutdown: Box::pin(shutdown.cancelled_owned()),
            shutdown_seen: false,
            reclaimer: None,
            early_resets: 0,
            early_resets_since: Instant::now(),
            table_size_update: false,
            peer_goaway: false,
        }
    }

    /// Tells `reclaimer` whenever a large response was written.
    pub fn with_reclaimer(mut self, reclaimer: Arc<Reclaimer>) -> Self {
        self.reclaimer = Some(reclaimer);
        self
    }

    /// Serves the connection until it ends (the same as awaiting it).
    pub async fn run(self) -> io::Result<()> {
        self.await
    }

    fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.waker.register(cx.waker());
        for _ in 0..BUDGET {
            let mut progress = self.poll_shutdown_signal(cx);
            match self.poll_timer(cx) {
                Some(true) => progress = true,
                Some(false) => {}
                // The peer stopped answering or the close took too long: drop it.
                None => return Poll::Ready(Ok(())),
            }
            if self.phase != Phase::Closing && self.out.len() < WRITE_LIMIT {
                progress |= self.poll_read(cx)?;
            }
            if self.phase != Phase::Closing {
                self.credit();
                progress |= self.poll_streams(cx);
            }
            progress |= self.poll_write(cx)?;
            if self.out.is_empty() && !self.flush && self.finished() {
                // Best effort: the peer may already be gone, and the close deadline bounds
                // the wait.
                return match Pin::new(&mut self.io).poll_shutdown(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(r) => {
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "closing an HTTP/2 connection");
                        }
                        Poll::Ready(Ok(()))
                    }
                };
            }
            if !progress {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn finished(&self) -> bool {
        match self.phase {
            Phase::Open => self.peer_goaway && self.streams.is_empty(),
            Phase::Draining => self.streams.is_empty(),
            Phase::Closing => true,
        }
    }

    fn poll_shutdown_signal(&mut self, cx: &mut Context<'_>) -> bool {
        if self.shutdown_seen || self.shutdown.as_mut().poll(cx).is_pending() {
            return false;
        }
        self.shutdown_seen = true;
        if self.phase == Phase::Open {
            frame::goaway(&mut self.out, self.last_stream, Reason::NO_ERROR, "");
            self.drain();
        }
        true
    }

    fn drain(&mut self) {
        self.phase = Phase::Draining;
        let deadline = Instant::now() + self.settings.drain_timeout;
        self.timer.as_mut().reset(deadline);
    }

    /// `None`: the connection is to be dropped now.
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Option<bool> {
        if self.timer.as_mut().poll(cx).is_pending() {
            return Some(false);
        }
        if self.phase != Phase::Open {
            tracing::debug!(phase = ?self.phase, "HTTP/2 connection dropped: drain or close deadline passed");
            return None;
        }
        // Any frame from the peer shows it is alive: a busy peer (a sidecar taking its
        // first full push) is neither pinged nor dropped for a late PING acknowledgement.
        if std::mem::take(&mut self.heard) {
            self.ping_outstanding = false;
            let next = Instant::now() + self.settings.keepalive_interval;
            self.timer.as_mut().reset(next);
            return Some(false);
        }
        if self.ping_outstanding {
            tracing::debug!("HTTP/2 connection dropped: keepalive PING not answered");
            return None;
        }
        frame::ping(&mut self.out, 0, KEEPALIVE);
        self.ping_outstanding = true;
        let deadline = Instant::now() + self.settings.keepalive_timeout;
        self.timer.as_mut().reset(deadline);
        Some(true)
    }

    /// Ends the connection over a protocol error of the peer.
    fn fail(&mut self, e: ConnectionError) {
        tracing::debug!(reason = %e.reason, why = e.why, "HTTP/2 connection error");
        frame::goaway(&mut self.out, self.last_stream, e.reason, e.why);
        self.close(Reason::CANCEL);
    }

    /// Drops every stream and closes once the frames waiting are written.
    fn close(&mut self, reason: Reason) {
        for s in std::mem::take(&mut self.streams) {
            s.inbox.close(Some(reason));
        }
        self.retired.clear();
        self.continuation = None;
        self.inbound = Vec::new();
        self.phase = Phase::Closing;
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        self.timer.as_mut().reset(deadline);
    }

    fn poll_read(&mut self, cx: &mut Context<'_>) -> io::Result<bool> {
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut buf = ReadBuf::uninit(&mut chunk);
        match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
            Poll::Pending => Ok(false),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                // The peer closed the connection: nothing it started can be answered.
                self.close(Reason::CANCEL);
                Ok(true)
            }
            Poll::Ready(Ok(())) => {
                if let Err(e) = self.receive(buf.filled()) {
                    self.fail(e);
                }
                Ok(true)
            }
        }
    }

    fn receive(&mut self, data: &[u8]) -> Result<(), ConnectionError> {
        if self.inbound.is_empty() {
            let used = self.parse(data)?;
            if used < data.len() && self.phase != Phase::Closing {
                self.inbound = data[used..].to_vec();
            }
            return Ok(());
        }
        let mut inbound = std::mem::take(&mut self.inbound);
        inbound.extend_from_slice(data);
        let used = self.parse(&inbound)?;
        if used < inbound.len() && self.phase != Phase::Closing {
            self.inbound = inbound[used..].to_vec();
        }
        Ok(())
    }

    /// Handles the complete frames at the start of `buf`; returns how much it used.
    fn parse(&mut self, buf: &[u8]) -> Result<usize, ConnectionError> {
        let mut at = 0;
        if !self.preface {
            let n = buf.len().min(frame::PREFACE.len());
            if buf[..n] != frame::PREFACE[..n] {
                return error(
                    Reason::PROTOCOL_ERROR,
                    "not an HTTP/2 connection preface; gRPC needs HTTP/2 (prior knowledge, or ALPN h2 over TLS)",
                );
            }
            if n < frame::PREFACE.len() {
                return Ok(0);
            }
            self.preface = true;
            at = n;
        }
        while buf.len() - at >= frame::HEADER_LEN && self.phase != Phase::Closing {
            let head = Head::parse(&buf[at..]);
            if head.len > MAX_FRAME {
                return error(
                    Reason::FRAME_SIZE_ERROR,
                    "frame larger than SETTINGS_MAX_FRAME_SIZE",
                );
            }
            let end = at + frame::HEADER_LEN + head.len;
            if buf.len() < end {
                break;
            }
            self.frame(head, &buf[at + frame::HEADER_LEN..end])?;
            at = end;
        }
        Ok(at)
    }

    fn frame(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnectionError> {
        self.heard = true;
        if let Some(c) = &self.continuation
            && (head.kind != frame::CONTINUATION || head.stream != c.stream)
        {
            return error(Reason::PROTOCOL_ERROR, "a header block was interrupted");
        }
        if !self.settings_received && head.kind != frame::SETTINGS {
            return error(
                Reason::PROTOCOL_ERROR,
                "the preface must be followed by SETTINGS",
            );
        }
        match head.kind {
            frame::DATA => self.data(head, payload),
            frame::HEADERS => self.headers(head, payload),
            frame::CONTINUATION => self.continuation(head, payload),
            frame::PRIORITY => {
                if head.stream == 0 {
                    return error(Reason::PROTOCOL_ERROR, "PRIORITY on stream 0");
                }
                // A stream that is not open yet cannot be reset: the frame is ignored.
                if head.len != 5 && head.stream <= self.last_stream {
                    self.reset(head.stream, Reason::FRAME_SIZE_ERROR);
                }
                Ok(())
            }
            frame::RST_STREAM => self.rst_stream(head, payload),
            frame::SETTINGS => self.settings(head, payload),
            frame::PUSH_PROMISE => error(Reason::PROTOCOL_ERROR, "clients cannot push"),
            frame::PING => self.ping(head, payload),
            frame::GOAWAY => {
                if head.stream != 0 {
                    return error(Reason::PROTOCOL_ERROR, "GOAWAY on a stream");
                }
                if head.len < 8 {
                    return error(Reason::FRAME_SIZE_ERROR, "GOAWAY shorter than 8 octets");
                }
                // Its streams go on (with keepalive); only new ones are refused.
                self.peer_goaway = true;
                Ok(())
            }
            frame::WINDOW_UPDATE => self.window_update(head, payload),
            // Unknown frame types are ignored (RFC 9113 section 4.1).
            _ => Ok(()),
        }
    }

    fn find(&self, id: u32) -> Option<usize> {
        self.streams.iter().position(|s| s.id == id)
    }

    fn data(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnectionError> {
        if head.stream == 0 {
            return error(Reason::PROTOCOL_ERROR, "DATA on stream 0");
        }
        let len = head.len;
        if len as i64 > self.recv_window {
            return error(
                Reason::FLOW_CONTROL_ERROR,
                "DATA beyond the connection's window",
            );
        }
        self.recv_window -= len as i64;
        let data = unpad(head, payload)?;
        let Some(i) = self.find(head.stream) else {
            if head.stream > self.last_stream {
                return error(
                    Reason::PROTOCOL_ERROR,
                    "DATA on a stream that was never opened",
                );
            }
            // A stream that ended; the peer may not have known yet.
            self.unacked += len;
            return Ok(());
        };
        let s = &mut self.streams[i];
        if !s.receiving {
            self.unacked += len;
            self.reset(head.stream, Reason::STREAM_CLOSED);
            return Ok(());
        }
        if len as i64 > s.recv_window {
            self.unacked += len;
            self.reset(head.stream, Reason::FLOW_CONTROL_ERROR);
            return Ok(());
        }
        s.recv_window -= len as i64;
        // Padding is credited at once; the data as the handler takes it.
        let padding = len - data.len();
        s.unacked += padding;
        self.unacked += padding;
        if !data.is_empty() {
            s.inbox.push(data);
        }
        if head.has(frame::END_STREAM) {
            s.receiving = false;
            s.inbox.close(None);
        }
        Ok(())
    }

    fn headers(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnectionError> {
        if head.stream == 0 || head.stream.is_multiple_of(2) {
            return error(
                Reason::PROTOCOL_ERROR,
                "HEADERS on a stream a client cannot open",
            );
        }
        let mut block = unpad(head, payload)?;
        if head.has(frame::PRIORITY_FLAG) {
            if block.len() < 5 {
                return error(
                    Reason::FRAME_SIZE_ERROR,
                    "HEADERS too short for its priority",
                );
            }
            block = &block[5..];
        }
        let end_stream = head.has(frame::END_STREAM);
        if head.has(frame::END_HEADERS) {
            return self.header_block(head.stream, end_stream, block);
        }
        if block.len() > header::MAX_HEADER_LIST {
            return error(Reason::ENHANCE_YOUR_CALM, "header block too large");
        }
        self.continuation = Some(Continuation {
            stream: head.stream,
            end_stream,
            block: block.to_vec(),
        });
        Ok(())
    }

    fn continuation(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnectionError> {
        let Some(mut c) = self.continuation.take() else {
            return error(Reason::PROTOCOL_ERROR, "CONTINUATION without HEADERS");
        };
        if c.block.len() + payload.len() > header::MAX_HEADER_LIST {
            return error(Reason::ENHANCE_YOUR_CALM, "header block too large");
        }
        c.block.extend_from_slice(payload);
        if head.has(frame::END_HEADERS) {
            return self.header_block(c.stream, c.end_stream, &c.block);
        }
        self.continuation = Some(c);
        Ok(())
    }

    fn header_block(
        &mut self,
        id: u32,
        end_stream: bool,
        block: &[u8],
    ) -> Result<(), ConnectionError> {
        if id <= self.last_stream {
            // Trailers (gRPC clients send none), or a block on a stream that is not open any
            // more (this server may have reset it while the block was on its way): decoded
            // to keep the HPACK table in step, then ignored (RFC 9113 section 5.1).
            header::decode_trailers(&mut self.decoder, block).or_else(|()| {
                error(
                    Reason::COMPRESSION_ERROR,
                    "header block could not be decoded",
                )
            })?;
            let Some(i) = self.find(id).filter(|&i| self.streams[i].receiving) else {
                return Ok(());
            };
            if end_stream {
                let s = &mut self.streams[i];
                s.receiving = false;
                s.inbox.close(None);
            } else {
                self.reset(id, Reason::PROTOCOL_ERROR);
            }
            return Ok(());
        }
        self.last_stream = id;
        let request = match header::decode_request(&mut self.decoder, block) {
            Ok(r) => r,
            Err(None) => {
                return error(
                    Reason::COMPRESSION_ERROR,
                    "header block could not be decoded",
                );
            }
            Err(Some(malformed)) => {
                tracing::debug!(stream = id, why = %malformed.0, "malformed request");
                frame::rst_stream(&mut self.out, id, Reason::PROTOCOL_ERROR);
                return Ok(());
            }
        };
        if self.phase != Phase::Open
            || self.peer_goaway
            || self.streams.len() >= self.settings.max_concurrent_streams as usize
        {
            frame::rst_stream(&mut self.out, id, Reason::REFUSED_STREAM);
            return Ok(());
        }
        let inbox = Inbox::new(Arc::clone(&self.waker));
        if end_stream {
            inbox.close(None);
        }
        let (mut parts, ()) = request.into_parts();
        parts.extensions = self.extensions.clone();
        let body = Body::new(RequestBody::new(Arc::clone(&inbox)));
        let respond = self.handler.call(http::Request::from_parts(parts, body));
        self.streams.push(Stream {
            id,
            respond: Respond::Calling(respond),
            inbox,
            receiving: !end_stream,
            send_window: self.peer_initial_window,
            recv_window: STREAM_WINDOW as i64,
            unacked: 0,
            large: false,
        });
        Ok(())
    }

    fn rst_stream(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnectionError> {
        if head.len != 4 {
            return error(Reason::FRAME_SIZE_ERROR, "RST_STREAM is not 4 octets");
        }
        if head.stream == 0 {
            return error(Reason::PROTOCOL_ERROR, "RST_STREAM on stream 0");
        }
        if head.stream > self.last_stream {
            return error(
                Reason::PROTOCOL_ERROR,
                "RST_STREAM on a stream that was never opened",
            );
        }
        let reason = Reason(u32::from_be_bytes([
            payload[0], payload[1], payload[2], payload[3],
        ]));
        if let Some(i) = self.find(head.stream) {
            if matches!(self.streams[i].respond, Respond::Calling(_)) {
                let now = Instant::now();
                if now - self.early_resets_since > EARLY_RESETS_WINDOW {
                    self.early_resets_since = now;
                    self.early_resets = 0;
                }
                self.early_resets += 1;
                if self.early_resets > MAX_EARLY_RESETS {
                    return error(
                        Reason::ENHANCE_YOUR_CALM,
                        "too many streams reset before they were answered",
                    );
                }
            }
            self.remove(i, Some(reason));
        }
        Ok(())
    }

    fn settings(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnectionError> {
        if head.stream != 0 {
            return error(Reason::PROTOCOL_ERROR, "SETTINGS on a stream");
        }
        if head.has(frame::ACK) {
            if head.len != 0 {
                return error(
                    Reason::FRAME_SIZE_ERROR,
                    "SETTINGS acknowledgement with a payload",
                );
            }
            return Ok(());
        }
        if !head.len.is_multiple_of(6) {
            return error(
                Reason::FRAME_SIZE_ERROR,
                "SETTINGS not a multiple of 6 octets",
            );
        }
        for setting in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([setting[0], setting[1]]);
            let value = u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
            match id {
                frame::SETTINGS_ENABLE_PUSH if value > 1 => {
                    return error(Reason::PROTOCOL_ERROR, "SETTINGS_ENABLE_PUSH not 0 or 1");
                }
                frame::SETTINGS_INITIAL_WINDOW_SIZE => {
                    let value = i64::from(value);
                    if value > frame::MAX_WINDOW {
                        return error(
                            Reason::FLOW_CONTROL_ERROR,
                            "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1",
                        );
                    }
                    let delta = value - self.peer_initial_window;
                    for s in &mut self.streams {
                        s.send_window += delta;
                        if s.send_window > frame::MAX_WINDOW {
                            return error(Reason::FLOW_CONTROL_ERROR, "stream window above 2^31-1");
                        }
                    }
                    self.peer_initial_window = value;
                }
                frame::SETTINGS_MAX_FRAME_SIZE => {
                    if !(frame::DEFAULT_MAX_FRAME..1 << 24).contains(&value) {
                        return error(
                            Reason::PROTOCOL_ERROR,
                            "SETTINGS_MAX_FRAME_SIZE out of range",
                        );
                    }
                    self.peer_max_frame = value as usize;
                }
                // This server's header blocks never use the dynamic table, but a decoder
                // that shrinks it below the default expects the encoder to acknowledge
                // that with a size update at the start of the next block (RFC 7541
                // section 4.2).
                frame::SETTINGS_HEADER_TABLE_SIZE if (value as usize) < header::TABLE_SIZE => {
                    self.table_size_update = true;
                }
                // It never pushes and opens no streams; other settings do not apply.
                _ => {}
            }
        }
        self.settings_received = true;
        frame::settings_ack(&mut self.out);
        Ok(())
    }

    fn ping(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnectionError> {
        if head.stream != 0 {
            return error(Reason::PROTOCOL_ERROR, "PING on a stream");
        }
        if head.len != 8 {
            return error(Reason::FRAME_SIZE_ERROR, "PING is not 8 octets");
        }
        let data: [u8; 8] = payload.try_into().expect("length checked");
        if !head.has(frame::ACK) {
            frame::ping(&mut self.out, frame::ACK, data);
        } else if data == KEEPALIVE && self.ping_outstanding {
            self.ping_outstanding = false;
            // The next PING follows a quiet interval from here.
            self.heard = false;
            if self.phase == Phase::Open {
                let next = Instant::now() + self.settings.keepalive_interval;
                self.timer.as_mut().reset(next);
            }
        }
        Ok(())
    }

    fn window_update(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnectionError> {
        if head.len != 4 {
            return error(Reason::FRAME_SIZE_ERROR, "WINDOW_UPDATE is not 4 octets");
        }
        let increment = i64::from(
            u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff,
        );
        if head.stream == 0 {
            if increment == 0 {
                return error(Reason::PROTOCOL_ERROR, "WINDOW_UPDATE of 0");
            }
            self.send_window += increment;
            if self.send_window > frame::MAX_WINDOW {
                return error(Reason::FLOW_CONTROL_ERROR, "connection window above 2^31-1");
            }
            return Ok(());
        }
        let Some(i) = self.find(head.stream) else {
            return Ok(());
        };
        if increment == 0 {
            self.reset(head.stream, Reason::PROTOCOL_ERROR);
            return Ok(());
        }
        let s = &mut self.streams[i];
        s.send_window += increment;
        if s.send_window > frame::MAX_WINDOW {
            self.reset(head.stream, Reason::FLOW_CONTROL_ERROR);
        }
        Ok(())
    }

    /// Resets a stream: tells the peer, and drops the stream if it is open.
    fn reset(&mut self, id: u32, reason: Reason) {
        frame::rst_stream(&mut self.out, id, reason);
        if let Some(i) = self.find(id) {
            self.remove(i, Some(reason));
        }
    }

    /// Drops a stream; `reset` tells its handler why, if it did not end normally.
    fn remove(&mut self, i: usize, reset: Option<Reason>) {
        let s = self.streams.remove(i);
        s.inbox.close(reset.or(if s.receiving {
            Some(Reason::CANCEL)
        } else {
            None
        }));
        // What the handler still holds is credited to the connection when released.
        self.retired.push(s.inbox);
    }

    /// Sends the credit handlers released, once it is worth a frame.
    fn credit(&mut self) {
        // The count first: at 1 the body is gone and has released all it ever will.
        let mut unacked = 0;
        self.retired.retain(|inbox| {
            let held = Arc::strong_count(inbox) > 1;
            unacked += inbox.take_released();
            held
        });
        self.unacked += unacked;
        if self.retired.is_empty() && self.retired.capacity() > 0 {
            self.retired = Vec::new();
        }
        for s in &mut self.streams {
            let released = s.inbox.take_released();
            s.unacked += released;
            self.unacked += released;
            if s.receiving && s.unacked >= STREAM_WINDOW / 2 {
                frame::window_update(&mut self.out, s.id, s.unacked as u32);
                s.recv_window += s.unacked as i64;
                s.unacked = 0;
            }
        }
        if self.unacked >= CONNECTION_WINDOW / 2 {
            frame::window_update(&mut self.out, 0, self.unacked as u32);
            self.recv_window += self.unacked as i64;
            self.unacked = 0;
        }
    }

    /// Runs the handlers and turns what they produce into frames, within the windows.
    fn poll_streams(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        let mut i = 0;
        while i < self.streams.len() && self.out.len() < WRITE_HIGH {
            let outcome = self.poll_stream(i, cx);
            progress |= outcome.progress;
            match outcome.end {
                None => i += 1,
                Some(End::Complete) => {
                    // The response is complete; a peer still sending is told to stop.
                    if self.streams[i].receiving {
                        frame::rst_stream(&mut self.out, self.streams[i].id, Reason::NO_ERROR);
                    }
                    self.remove(i, None);
                }
                Some(End::Reset(reason)) => {
                    frame::rst_stream(&mut self.out, self.streams[i].id, reason);
                    self.remove(i, Some(reason));
                }
            }
        }
        if self.streams.is_empty() && self.streams.capacity() > 0 {
            self.streams = Vec::new();
        }
        progress
    }

    fn poll_stream(&mut self, i: usize, cx: &mut Context<'_>) -> StreamOutcome {
        let out = &mut self.out;
        let s = &mut self.streams[i];
        let mut progress = false;
        if let Respond::Calling(respond) = &mut s.respond {
            let Poll::Ready(response) = respond.as_mut().poll(cx) else {
                return StreamOutcome::pending(false);
            };
            let (parts, body) = response.into_parts();
            let mut block = Vec::new();
            if std::mem::take(&mut self.table_size_update) {
                block.push(header::TABLE_SIZE_ZERO);
            }
            header::encode_response(&mut block, parts.status, &parts.headers);
            let end = body.is_end_stream();
            frame::headers(out, s.id, &block, end, self.peer_max_frame);
            if end {
                return StreamOutcome::ended(End::Complete);
            }
            s.respond = Respond::Sending {
                body,
                pending: Bytes::new(),
            };
            progress = true;
        }
        let Respond::Sending { body, pending } = &mut s.respond else {
            return StreamOutcome::pending(progress);
        };
        loop {
            if !pending.is_empty() {
                let n = (pending.len() as i64)
                    .min(self.send_window)
                    .min(s.send_window)
                    .min(self.peer_max_frame as i64);
                if n <= 0 {
                    return StreamOutcome::pending(progress);
                }
                let n = n as usize;
                frame::head(out, n, frame::DATA, 0, s.id);
                out.extend_from_slice(&pending.split_to(n));
                self.send_window -= n as i64;
                s.send_window -= n as i64;
                progress = true;
                if pending.is_empty()
                    && std::mem::take(&mut s.large)
                    && let Some(r) = &self.reclaimer
                {
                    r.large_buffer_freed();
                }
                if out.len() >= WRITE_HIGH {
                    return StreamOutcome::pending(progress);
                }
                continue;
            }
            match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Pending => return StreamOutcome::pending(progress),
                Poll::Ready(None) => {
                    frame::head(out, 0, frame::DATA, frame::END_STREAM, s.id);
                    return StreamOutcome::ended(End::Complete);
                }
                Poll::Ready(Some(Ok(f))) => match f.into_data() {
                    Ok(data) => {
                        s.large = data.len() >= LARGE_RESPONSE;
                        *pending = data;
                        progress = true;
                    }
                    Err(f) => {
                        let mut block = Vec::new();
                        if std::mem::take(&mut self.table_size_update) {
                            block.push(header::TABLE_SIZE_ZERO);
                        }
                        if let Some(trailers) = f.trailers_ref() {
                            header::encode_trailers(&mut block, trailers);
                        }
                        frame::headers(out, s.id, &block, true, self.peer_max_frame);
                        return StreamOutcome::ended(End::Complete);
                    }
                },
                Poll::Ready(Some(Err(e))) => {
                    tracing::debug!(stream = s.id, error = %e, "response body failed");
                    return StreamOutcome::ended(End::Reset(Reason::INTERNAL_ERROR));
                }
            }
        }
    }

    fn poll_write(&mut self, cx: &mut Context<'_>) -> io::Result<bool> {
        let mut progress = false;
        while self.written < self.out.len() {
            match Pin::new(&mut self.io).poll_write(cx, &self.out[self.written..]) {
                Poll::Pending => return Ok(progress),
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => {
                    self.written += n;
                    self.flush = true;
                    progress = true;
                }
                Poll::Ready(Err(e)) => return Err(e),
            }
        }
        // All written: the buffer is not kept for an idle connection.
        if !self.out.is_empty() {
            self.out = Vec::new();
            self.written = 0;
        }
        if self.flush {
            match Pin::new(&mut self.io).poll_flush(cx) {
                Poll::Pending => {}
                Poll::Ready(r) => {
                    r?;
                    self.flush = false;
                }
            }
        }
        Ok(progress)
    }
}

/// How a stream's response ended.
enum End {
    Complete,
    /// The stream is to be reset with this reason.
    Reset(Reason),
}

/// What polling a stream did; `end` is set once its response is over.
struct StreamOutcome {
    progress: bool,
    end: Option<End>,
}

impl StreamOutcome {
    fn pending(progress: bool) -> Self {
        StreamOutcome {
            progress,
            end: None,
        }
    }

    fn ended(end: End) -> Self {
        StreamOutcome {
            progress: true,
            end: Some(end),
        }
    }
}

/// However the connection ends (an I/O error, a keepalive timeout, its task dropped), the
/// handlers still reading a request learn that it was cut off.
impl<IO, H> Drop for Connection<IO, H> {
    fn drop(&mut self) {
        for s in &self.streams {
            s.inbox.close(Some(Reason::CANCEL));
        }
    }
}

/// Serves the connection until it ends. An error is the transport's; protocol errors of
/// the peer end the connection with a GOAWAY and `Ok`.
impl<IO, H> Future for Connection<IO, H>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    H: Handler + Unpin,
{
    type Output = io::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_run(cx)
    }
}

/// The payload of a DATA or HEADERS frame without its padding.
fn unpad(head: Head, payload: &[u8]) -> Result<&[u8], ConnectionError> {
    if !head.has(frame::PADDED) {
        return Ok(payload);
    }
    let Some((&pad, rest)) = payload.split_first() else {
        return error(
            Reason::FRAME_SIZE_ERROR,
            "padded frame without a pad length",
        );
    };
    let Some(len) = rest.len().checked_sub(usize::from(pad)) else {
        return error(Reason::PROTOCOL_ERROR, "padding longer than the frame");
    };
    Ok(&rest[..len])
}
