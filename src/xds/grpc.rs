//! The ADS gRPC service, framed here rather than by the generated tonic server.
//!
//! The generated server encodes every response of a stream into one buffer that keeps the
//! allocation of the largest message it ever sent (responses are split off it, and the
//! rest stays allocated), and gives every request stream an 8 KiB decode buffer. Across an
//! idle fleet that is most of the server's memory: a proxy holding a thousand listeners
//! keeps half a megabyte for its first push, for as long as it stays connected. Here each
//! response is encoded into an allocation of exactly its size, which is freed once the
//! HTTP/2 layer (`super::http2`) has written it, and requests are decoded by tonic's own
//! `Streaming` with a small initial buffer. Paths, statuses and trailers follow the gRPC
//! over HTTP/2 protocol.

use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::future::BoxFuture;
use http_body::Frame;
use prost::Message;
use tokio::sync::mpsc;
use tonic::Status;
use tonic::body::Body;
use tonic::codec::{BufferSettings, DecodeBuf, Decoder, Streaming};

use super::AdsServer;
use super::registry::Variant;
use super::stream::{Outgoing, Request as AnyRequest, Response as AnyResponse};

const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// Largest request accepted (a reconnecting Delta client lists every version it holds).
pub const MAX_REQUEST: usize = 16 * 1024 * 1024;
/// Largest response sent.
pub const MAX_RESPONSE: usize = 64 * 1024 * 1024;

/// Requests are small; the buffer grows in steps of this size when one is not.
const DECODE_BUFFER: usize = 1024;

/// The ADS service, served by [`super::http2::serve`].
#[derive(Clone, Debug)]
pub struct AdsService {
    server: AdsServer,
}

impl AdsService {
    pub(super) fn new(server: AdsServer) -> Self {
        AdsService { server }
    }
}

impl super::http2::Handler for AdsService {
    fn call(&self, request: http::Request<Body>) -> BoxFuture<'static, http::Response<Body>> {
        Box::pin(handle(self.server.clone(), request))
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
    // Headers and connection details (client certificates) as tonic presents them; the
    // body is held apart while the caller is authenticated.
    let (parts, body) = req.into_parts();
    let head = tonic::Request::from_http(http::Request::from_parts(parts, ()));
    let principal = match server.authenticate(&head).await {
        Ok(p) => p,
        Err(status) => return status.into_http(),
    };
    let responses = match variant {
        Variant::Sotw => open(&server, principal, variant, body, |m| {
            AnyRequest::Sotw(Box::new(m))
        }),
        Variant::Delta => open(&server, principal, variant, body, |m| {
            AnyRequest::Delta(Box::new(m))
        }),
    };
    let mut response = http::Response::new(Body::new(ResponseBody {
        responses,
        done: false,
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
    variant: Variant,
    body: Body,
    wrap: fn(Req) -> AnyRequest,
) -> mpsc::Receiver<Outgoing> {
    let requests = Streaming::new_request(Decode::<Req>::default(), body, None, Some(MAX_REQUEST));
    server.start(principal, variant, requests, wrap)
}

/// Decodes one prost message per gRPC frame.
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

/// The response stream: one gRPC frame per response, then the status as trailers.
struct ResponseBody {
    responses: mpsc::Receiver<Outgoing>,
    done: bool,
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
        let frame = match ready!(self.responses.poll_recv(cx)) {
            Some(Ok(response)) => match encode(&response) {
                Ok(bytes) => Frame::data(bytes),
                Err(status) => self.end(&status),
            },
            Some(Err(status)) => self.end(&status),
            None => self.end(&Status::ok("")),
        };
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// A gRPC frame (uncompressed flag, length, message) in an allocation of exactly its size.
fn encode(response: &AnyResponse) -> Result<Bytes, Status> {
    fn frame(message: &impl Message) -> Result<Bytes, Status> {
        let len = message.encoded_len();
        if len > MAX_RESPONSE {
            return Err(Status::resource_exhausted(format!(
                "a response of {len} bytes exceeds the limit of {MAX_RESPONSE}"
            )));
        }
        let mut buf = BytesMut::with_capacity(5 + len);
        buf.put_u8(0);
        buf.put_u32(u32::try_from(len).expect("bounded by MAX_RESPONSE"));
        message
            .encode(&mut buf)
            .map_err(|e| Status::internal(format!("encoding a response: {e}")))?;
        Ok(buf.freeze())
    }
    match response {
        AnyResponse::Sotw(r) => frame(&**r),
        AnyResponse::Delta(r) => frame(&**r),
    }
}

#[cfg(test)]
mod tests {
    use super::super::http2::Handler;
    use super::*;
    use envoy_types::pb::envoy::service::discovery::v3 as discovery;
    use std::sync::Arc;
    use tokio::sync::watch;

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
        let svc = service();
        let unknown = http::Request::builder()
            .uri("/envoy.service.discovery.v3.AggregatedDiscoveryService/Nope")
            .body(Body::empty())
            .unwrap();
        let response = svc.call(unknown).await;
        assert_eq!(grpc_status(&response), Some("12"));

        let gzip = http::Request::builder()
            .uri(DELTA_PATH)
            .header("grpc-encoding", "gzip")
            .body(Body::empty())
            .unwrap();
        let response = svc.call(gzip).await;
        assert_eq!(grpc_status(&response), Some("12"));
    }

    #[test]
    fn should_frame_a_response_in_exactly_its_size() {
        let response = AnyResponse::Delta(Box::new(discovery::DeltaDiscoveryResponse {
            nonce: "n-1".into(),
            type_url: super::super::resource::LISTENER.into(),
            ..Default::default()
        }));
        let bytes = encode(&response).unwrap();
        let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
        assert_eq!(bytes[0], 0, "not compressed");
        assert_eq!(len, bytes.len() - 5);
        let decoded = discovery::DeltaDiscoveryResponse::decode(&bytes[5..]).unwrap();
        assert_eq!(decoded.nonce, "n-1");
    }
}
