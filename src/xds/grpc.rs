//! The two ADS methods as a gRPC service for tonic's server (`super::server`).
//!
//! tonic's server does HTTP/2 (hyper and h2), TLS and the routing by service name; tonic's
//! `Streaming` decodes the requests. Only the response side is done here, for memory's
//! sake: tonic's generated server encodes a stream's responses into one buffer per stream
//! that keeps the allocation of the largest response it ever sent (each message is split
//! off it and the rest stays allocated), which across an idle fleet holding a thousand
//! listeners is half a megabyte per proxy. Here each response is written into an
//! allocation of exactly its size, which h2 frees once it has sent it, and the resources
//! in it are copied straight from the snapshot's encoded bytes, so no per-stream protobuf
//! message is built. The message prefix and the status trailers follow the gRPC over
//! HTTP/2 protocol; the trailers are written by tonic's `Status`.
//!
//! Errors a client causes end its stream with a status that says what went wrong, never
//! with OK: see [`request_error`].

use std::convert::Infallible;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::Stream as _;
use futures_util::future::BoxFuture;
use http_body::Frame;
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use tonic::body::Body;
use tonic::codec::{BufferSettings, DecodeBuf, Decoder, Streaming};
use tonic::server::NamedService;
use tonic::{Code, Status};

use super::AdsServer;
use super::registry::Variant;
use super::resource::Resource;
use super::stream::{Request as AnyRequest, Response, ResponseReceiver};

/// Largest request accepted, bytes (a gRPC message, checked by tonic's decoder from the
/// declared length, before the body is buffered). The largest legitimate one is a
/// reconnecting Delta client that lists every resource it holds in
/// `initial_resource_versions`: about 100 bytes a resource, so 4 MiB is room for some
/// 40,000. A larger one ends the stream with `RESOURCE_EXHAUSTED`.
pub const MAX_REQUEST: usize = 4 * 1024 * 1024;
/// Largest response sent, bytes: far above any real push (a thousand listeners and clusters
/// take about a megabyte), so this only guards against a runaway snapshot; such a response
/// ends the stream with `RESOURCE_EXHAUSTED`.
pub const MAX_RESPONSE: usize = 64 * 1024 * 1024;
/// tonic's decode buffer for a stream's requests starts at this size and grows in steps of
/// it: an ACK is one to three hundred bytes, and the buffer lives as long as the stream.
/// tonic's default (8 KiB) would be a quarter of an idle stream's memory.
pub const DECODE_BUFFER: usize = 512;

/// The gRPC service name (`envoy/service/discovery/v3/ads.proto`).
pub const SERVICE: &str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// The ADS service, for `tonic::transport::Server::add_service`.
#[derive(Clone, Debug)]
pub struct AdsService {
    server: AdsServer,
}

impl AdsService {
    pub(super) fn new(server: AdsServer) -> Self {
        AdsService { server }
    }
}

impl NamedService for AdsService {
    const NAME: &'static str = SERVICE;
}

impl tower_service::Service<http::Request<Body>> for AdsService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let server = self.server.clone();
        Box::pin(async move { Ok(handle(server, request).await) })
    }
}

async fn handle(server: AdsServer, req: http::Request<Body>) -> http::Response<Body> {
    let variant = match req.uri().path() {
        SOTW_PATH => Variant::Sotw,
        DELTA_PATH => Variant::Delta,
        other => {
            return Status::unimplemented(format!("no method {other} on this server")).into_http();
        }
    };
    // Messages are never compressed in either direction (Envoy does not ask for it).
    if let Some(encoding) = req.headers().get("grpc-encoding")
        && encoding != "identity"
    {
        return Status::unimplemented(format!(
            "message encoding {encoding:?} is not supported; send uncompressed messages"
        ))
        .into_http();
    }
    // Headers and connection details (client certificates, peer address) as tonic presents
    // them; the body is held apart while the caller is authenticated.
    let (parts, body) = req.into_parts();
    let head = tonic::Request::from_http(http::Request::from_parts(parts, ()));
    let peer = head.remote_addr();
    let (principal, confirmation) = match server.authenticate(&head).await {
        Ok(Some(a)) => (Some(a.principal), a.confirmation),
        Ok(None) => (None, None),
        Err(status) => {
            // Before the first request: no stream number or node yet, so the peer names it.
            // Refusal messages never quote the credential.
            tracing::warn!(peer = ?peer, variant = variant.as_str(), code = ?status.code(), "stream refused: {}", status.message());
            return status.into_http();
        }
    };
    let responses = match variant {
        Variant::Sotw => open(&server, principal, peer, variant, body, |m| {
            AnyRequest::Sotw(Box::new(m))
        }),
        Variant::Delta => open(&server, principal, peer, variant, body, |m| {
            AnyRequest::Delta(Box::new(m))
        }),
    };
    let (responses, stop) = responses;
    // The rest of the authentication runs as a task of its own (a body that is not polled,
    // its client's window full, must not hold a review back); a refusal stops the stream
    // and is sent as its status.
    let confirming = confirmation.map(|confirmation| {
        let (refused, refusal) = tokio::sync::oneshot::channel();
        let stream = stop.clone();
        let task = tokio::spawn(async move {
            if let Err(status) = confirmation.await {
                let _ = refused.send(status);
                stream.cancel();
            }
        });
        Box::new(Confirming {
            refusal,
            task: task.abort_handle(),
        })
    });
    let mut response = http::Response::new(Body::new(ResponseBody {
        responses,
        done: false,
        confirming,
        _gone: stop.drop_guard(),
    }));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

/// Starts a stream reading requests of type `Req` from `body`.
fn open<Req: Message + Default + Send + 'static>(
    server: &AdsServer,
    principal: Option<super::auth::Principal>,
    peer: Option<SocketAddr>,
    variant: Variant,
    body: Body,
    wrap: fn(Req) -> AnyRequest,
) -> (ResponseReceiver, tokio_util::sync::CancellationToken) {
    let requests = Streaming::new_request(Decode::<Req>::default(), body, None, Some(MAX_REQUEST));
    server.start(principal, peer, variant, requests, wrap)
}

/// The status a stream ends with when reading a request failed.
///
/// tonic reports a message that cannot be read as `INTERNAL` (a set compressed flag without
/// a `grpc-encoding`, a body that ends inside a message) and one over the size limit as
/// `OUT_OF_RANGE`. For the client both are its own fault, and gRPC's status code guide
/// names the codes for that: `INVALID_ARGUMENT` for a request that is malformed,
/// `RESOURCE_EXHAUSTED` for one that is too large. The reason is kept.
pub(super) fn request_error(status: Status) -> Status {
    match status.code() {
        Code::OutOfRange => {
            Status::resource_exhausted(format!("request too large: {}", status.message()))
        }
        Code::Internal => {
            Status::invalid_argument(format!("malformed request stream: {}", status.message()))
        }
        _ => status,
    }
}

/// Decodes one prost message per gRPC message.
struct Decode<T>(PhantomData<fn() -> T>);

impl<T> Default for Decode<T> {
    fn default() -> Self {
        Decode(PhantomData)
    }
}

impl<T: Message + Default> Decoder for Decode<T> {
    type Item = T;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<T>, Status> {
        T::decode(src)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("malformed request: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(DECODE_BUFFER, 32 * 1024)
    }
}

/// The confirmation of a stream's authentication, running as a task of its own.
struct Confirming {
    /// Receives the status if the confirmation refuses the caller.
    refusal: tokio::sync::oneshot::Receiver<Status>,
    /// Aborted when the body goes (the client is gone: nothing left to confirm).
    task: tokio::task::AbortHandle,
}

impl Drop for Confirming {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The response stream: one gRPC message per response, then the status as trailers.
struct ResponseBody {
    responses: ResponseReceiver,
    done: bool,
    /// The rest of the caller's authentication while it runs: a refusal ends the body with
    /// its status.
    confirming: Option<Box<Confirming>>,
    /// Stops the stream when the body is dropped (the client reset the stream or left).
    _gone: tokio_util::sync::DropGuard,
}

impl ResponseBody {
    fn end(&mut self, status: &Status) -> Frame<Bytes> {
        self.done = true;
        self.responses.close();
        let mut trailers = http::HeaderMap::new();
        if status.add_header(&mut trailers).is_err() {
            // Only a message that cannot be a header value fails; the code still goes out.
            trailers.insert("grpc-status", http::HeaderValue::from(status.code() as i32));
        }
        Frame::trailers(trailers)
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(confirming) = &mut self.confirming
            && let Poll::Ready(refused) = Pin::new(&mut confirming.refusal).poll(cx)
        {
            self.confirming = None;
            // The authenticator logs a refusal: it knows whom it refused. No refusal sent
            // (the sender dropped): confirmed.
            if let Ok(status) = refused {
                return Poll::Ready(Some(Ok(self.end(&status))));
            }
        }
        let frame = match ready!(Pin::new(&mut self.responses).poll_next(cx)) {
            Some(Ok(response)) => match encode(&response) {
                Ok(bytes) => Frame::data(bytes),
                Err(status) => self.end(&status),
            },
            Some(Err(status)) => self.end(&status),
            // The stream ended on its own (the client half-closed, or shutdown): every
            // error is sent on the channel before it closes.
            None => self.end(&Status::ok("")),
        };
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

// Field numbers of envoy/service/discovery/v3/discovery.proto and google/protobuf/any.proto.
const ANY_TYPE_URL: u32 = 1;
const ANY_VALUE: u32 = 2;
const SOTW_VERSION_INFO: u32 = 1;
const SOTW_RESOURCES: u32 = 2;
const SOTW_TYPE_URL: u32 = 4;
const SOTW_NONCE: u32 = 5;
const DELTA_SYSTEM_VERSION_INFO: u32 = 1;
const DELTA_RESOURCES: u32 = 2;
const DELTA_TYPE_URL: u32 = 4;
const DELTA_NONCE: u32 = 5;
const DELTA_REMOVED_RESOURCES: u32 = 6;
const RESOURCE_VERSION: u32 = 1;
const RESOURCE_RESOURCE: u32 = 2;
const RESOURCE_NAME: u32 = 3;

/// Length of a length-delimited field holding `len` bytes.
fn field_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// Length of a proto3 string or bytes field (absent when empty).
fn scalar_len(tag: u32, len: usize) -> usize {
    if len == 0 { 0 } else { field_len(tag, len) }
}

fn put_header(tag: u32, len: usize, buf: &mut BytesMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

fn put_scalar(tag: u32, value: &[u8], buf: &mut BytesMut) {
    if !value.is_empty() {
        put_header(tag, value.len(), buf);
        buf.put_slice(value);
    }
}

/// `google.protobuf.Any` around an encoded resource.
fn any_len(type_url: &str, r: &Resource) -> usize {
    scalar_len(ANY_TYPE_URL, type_url.len()) + scalar_len(ANY_VALUE, r.body.len())
}

fn put_any(type_url: &str, r: &Resource, buf: &mut BytesMut) {
    put_scalar(ANY_TYPE_URL, type_url.as_bytes(), buf);
    put_scalar(ANY_VALUE, &r.body, buf);
}

/// `envoy.service.discovery.v3.Resource` (Delta).
fn delta_resource_len(type_url: &str, r: &Resource) -> usize {
    scalar_len(RESOURCE_VERSION, r.version.len())
        + field_len(RESOURCE_RESOURCE, any_len(type_url, r))
        + scalar_len(RESOURCE_NAME, r.name.len())
}

fn put_delta_resource(type_url: &str, r: &Resource, buf: &mut BytesMut) {
    put_scalar(RESOURCE_VERSION, r.version.as_bytes(), buf);
    put_header(RESOURCE_RESOURCE, any_len(type_url, r), buf);
    put_any(type_url, r, buf);
    put_scalar(RESOURCE_NAME, r.name.as_bytes(), buf);
}

/// Encoded length of a `DiscoveryResponse` or `DeltaDiscoveryResponse`.
fn message_len(r: &Response) -> usize {
    match r.variant {
        Variant::Sotw => {
            scalar_len(SOTW_VERSION_INFO, r.version.len())
                + r.resources
                    .iter()
                    .map(|x| field_len(SOTW_RESOURCES, any_len(r.resource_type_url, x)))
                    .sum::<usize>()
                + scalar_len(SOTW_TYPE_URL, r.type_url.len())
                + scalar_len(SOTW_NONCE, r.nonce.len())
        }
        Variant::Delta => {
            scalar_len(DELTA_SYSTEM_VERSION_INFO, r.version.len())
                + r.resources
                    .iter()
                    .map(|x| field_len(DELTA_RESOURCES, delta_resource_len(r.resource_type_url, x)))
                    .sum::<usize>()
                + scalar_len(DELTA_TYPE_URL, r.type_url.len())
                + scalar_len(DELTA_NONCE, r.nonce.len())
                + r.removed
                    .iter()
                    // Repeated strings are written even when empty.
                    .map(|n| field_len(DELTA_REMOVED_RESOURCES, n.len()))
                    .sum::<usize>()
        }
    }
}

fn put_message(r: &Response, buf: &mut BytesMut) {
    match r.variant {
        Variant::Sotw => {
            put_scalar(SOTW_VERSION_INFO, r.version.as_bytes(), buf);
            for x in r.resources.iter() {
                put_header(SOTW_RESOURCES, any_len(r.resource_type_url, x), buf);
                put_any(r.resource_type_url, x, buf);
            }
            put_scalar(SOTW_TYPE_URL, r.type_url.as_bytes(), buf);
            put_scalar(SOTW_NONCE, r.nonce.as_bytes(), buf);
        }
        Variant::Delta => {
            put_scalar(DELTA_SYSTEM_VERSION_INFO, r.version.as_bytes(), buf);
            for x in r.resources.iter() {
                put_header(
                    DELTA_RESOURCES,
                    delta_resource_len(r.resource_type_url, x),
                    buf,
                );
                put_delta_resource(r.resource_type_url, x, buf);
            }
            put_scalar(DELTA_TYPE_URL, r.type_url.as_bytes(), buf);
            put_scalar(DELTA_NONCE, r.nonce.as_bytes(), buf);
            for n in &r.removed {
                put_header(DELTA_REMOVED_RESOURCES, n.len(), buf);
                buf.put_slice(n.as_bytes());
            }
        }
    }
}

/// A gRPC message (compressed flag 0, big-endian length, the message) in an allocation of
/// exactly its size.
fn encode(response: &Response) -> Result<Bytes, Status> {
    let len = message_len(response);
    if len > MAX_RESPONSE {
        return Err(Status::resource_exhausted(format!(
            "a response of {len} bytes exceeds the limit of {MAX_RESPONSE}"
        )));
    }
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(u32::try_from(len).expect("bounded by MAX_RESPONSE"));
    put_message(response, &mut buf);
    debug_assert_eq!(buf.len(), 5 + len, "message_len and put_message disagree");
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::discovery::v3 as discovery;
    use envoy_types::pb::google::protobuf::Any;
    use std::sync::Arc;
    use tokio::sync::watch;
    use tower_service::Service;

    fn service() -> AdsService {
        let source: Arc<dyn super::super::ResourceSource> =
            Arc::new(crate::snapshot::Snapshot::build(
                Arc::default(),
                Arc::default(),
                None,
                std::time::Instant::now(),
            ));
        let (_tx, rx) = watch::channel(source);
        AdsServer::new(
            rx,
            Arc::default(),
            Arc::default(),
            tokio_util::sync::CancellationToken::new(),
        )
        .into_service()
    }

    fn grpc_status(response: &http::Response<Body>) -> Option<&str> {
        response.headers().get("grpc-status")?.to_str().ok()
    }

    #[tokio::test]
    async fn should_answer_unknown_methods_and_compressed_streams_with_unimplemented() {
        let mut svc = service();
        let unknown = http::Request::builder()
            .uri("/envoy.service.discovery.v3.AggregatedDiscoveryService/Nope")
            .body(Body::empty())
            .unwrap();
        let response = svc.call(unknown).await.unwrap();
        assert_eq!(grpc_status(&response), Some("12"));

        let gzip = http::Request::builder()
            .uri(DELTA_PATH)
            .header("grpc-encoding", "gzip")
            .body(Body::empty())
            .unwrap();
        let response = svc.call(gzip).await.unwrap();
        assert_eq!(grpc_status(&response), Some("12"));
    }

    fn resource(name: &str, version: &str, body: &[u8]) -> Arc<Resource> {
        Arc::new(Resource {
            name: name.into(),
            version: version.into(),
            body: Bytes::copy_from_slice(body),
            clusters: Vec::new(),
            declared: false,
        })
    }

    fn message(bytes: &Bytes) -> &[u8] {
        let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
        assert_eq!(bytes[0], 0, "not compressed");
        assert_eq!(
            len,
            bytes.len() - 5,
            "allocation of exactly the message's size"
        );
        &bytes[5..]
    }

    #[test]
    fn should_encode_a_delta_response_as_prost_decodes_it() {
        let type_url = super::super::resource::LISTENER;
        let big = vec![0xabu8; 300];
        let response = Response {
            variant: Variant::Delta,
            type_url: type_url.into(),
            resource_type_url: type_url,
            version: "v-1".into(),
            nonce: "n-1".into(),
            resources: [resource("a", "1", b"\x0a\x01x"), resource("b", "", &big)].into(),
            removed: vec!["gone".into(), String::new()],
        };
        let bytes = encode(&response).unwrap();
        let decoded = discovery::DeltaDiscoveryResponse::decode(message(&bytes)).unwrap();
        let expected = discovery::DeltaDiscoveryResponse {
            system_version_info: "v-1".into(),
            resources: vec![
                discovery::Resource {
                    name: "a".into(),
                    version: "1".into(),
                    resource: Some(Any {
                        type_url: type_url.into(),
                        value: b"\x0a\x01x".to_vec(),
                    }),
                    ..Default::default()
                },
                discovery::Resource {
                    name: "b".into(),
                    resource: Some(Any {
                        type_url: type_url.into(),
                        value: big,
                    }),
                    ..Default::default()
                },
            ],
            type_url: type_url.into(),
            removed_resources: vec!["gone".into(), String::new()],
            nonce: "n-1".into(),
            ..Default::default()
        };
        assert_eq!(decoded, expected);
        assert_eq!(bytes.len() - 5, expected.encoded_len());
    }

    #[test]
    fn should_encode_a_sotw_response_as_prost_decodes_it() {
        let type_url = super::super::resource::CLUSTER;
        let response = Response {
            variant: Variant::Sotw,
            type_url: type_url.into(),
            resource_type_url: type_url,
            version: "v-2".into(),
            nonce: "n-2".into(),
            resources: [resource("c", "9", b"\x0a\x01c"), resource("e", "0", b"")].into(),
            removed: Vec::new(),
        };
        let bytes = encode(&response).unwrap();
        let decoded = discovery::DiscoveryResponse::decode(message(&bytes)).unwrap();
        let expected = discovery::DiscoveryResponse {
            version_info: "v-2".into(),
            resources: vec![
                Any {
                    type_url: type_url.into(),
                    value: b"\x0a\x01c".to_vec(),
                },
                Any {
                    type_url: type_url.into(),
                    value: Vec::new(),
                },
            ],
            type_url: type_url.into(),
            nonce: "n-2".into(),
            ..Default::default()
        };
        assert_eq!(decoded, expected);
        assert_eq!(bytes.len() - 5, expected.encoded_len());
    }

    #[test]
    fn should_wrap_a_config_sources_resources_in_mcps_type_not_the_responses() {
        use super::super::resource::{ISTIO_ENVOY_FILTER, MCP_RESOURCE};
        let response = Response {
            variant: Variant::Sotw,
            type_url: ISTIO_ENVOY_FILTER.into(),
            resource_type_url: MCP_RESOURCE,
            version: "v-3".into(),
            nonce: "n-3".into(),
            resources: [resource("shop/f", "1", b"\x0a\x01f")].into(),
            removed: Vec::new(),
        };
        let bytes = encode(&response).unwrap();
        let decoded = discovery::DiscoveryResponse::decode(message(&bytes)).unwrap();
        assert_eq!(decoded.type_url, ISTIO_ENVOY_FILTER);
        assert_eq!(decoded.resources[0].type_url, MCP_RESOURCE);
        assert_eq!(decoded.resources[0].value, b"\x0a\x01f");
        assert_eq!(bytes.len() - 5, decoded.encoded_len());
    }

    #[test]
    fn should_map_unreadable_requests_to_invalid_argument_and_large_ones_to_resource_exhausted() {
        let truncated = request_error(Status::internal("Unexpected EOF decoding stream."));
        assert_eq!(truncated.code(), Code::InvalidArgument);
        assert!(truncated.message().contains("Unexpected EOF"));
        let large = request_error(Status::out_of_range("found 9 bytes"));
        assert_eq!(large.code(), Code::ResourceExhausted);
        assert!(large.message().contains("found 9 bytes"));
        let other = request_error(Status::permission_denied("no"));
        assert_eq!(other.code(), Code::PermissionDenied);
    }
}
