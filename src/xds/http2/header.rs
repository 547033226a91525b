//! Header blocks: requests decoded with HPACK (RFC 7541) into `http` types and checked the
//! way RFC 9113 section 8 asks; responses and trailers encoded as literals that never touch
//! the peer's dynamic table, so the encoder keeps no state.

use std::borrow::Cow;

use super::hpack;

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};

/// Largest header list (names, values and 32 octets per field) a request may carry; also
/// advertised as SETTINGS_MAX_HEADER_LIST_SIZE.
pub const MAX_HEADER_LIST: usize = 64 * 1024;

/// Size of the HPACK dynamic table the peer may use for its requests (the default, which
/// this server never changes).
pub const TABLE_SIZE: usize = 4096;

/// A dynamic table size update to 0, the first octet of a block after the peer shrank
/// its table.
pub const TABLE_SIZE_ZERO: u8 = 0x20;

/// Why a decoded header block is not a valid request; the stream is reset with
/// PROTOCOL_ERROR (RFC 9113 section 8.1.1).
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed(pub Cow<'static, str>);

/// What a request's header block carried.
#[derive(Default)]
struct Fields {
    method: Option<Method>,
    scheme: Option<String>,
    authority: Option<String>,
    path: Option<String>,
    headers: HeaderMap,
    size: usize,
    problem: Option<Malformed>,
}

fn bad<T>(why: impl Into<Cow<'static, str>>) -> Result<T, Malformed> {
    Err(Malformed(why.into()))
}

fn text(value: &[u8], what: &'static str) -> Result<String, Malformed> {
    match std::str::from_utf8(value) {
        Ok(s) if !s.is_empty() => Ok(s.to_owned()),
        _ => bad(what),
    }
}

impl Fields {
    fn add(&mut self, name: &[u8], value: &[u8]) -> Result<(), Malformed> {
        self.size += name.len() + value.len() + 32;
        if self.size > MAX_HEADER_LIST {
            return bad("header list too large");
        }
        if let Some(pseudo) = name.strip_prefix(b":") {
            if !self.headers.is_empty() {
                return bad("pseudo-header field after a regular field");
            }
            let slot = match pseudo {
                b"method" => {
                    if self.method.is_some() {
                        return bad("repeated :method");
                    }
                    self.method =
                        Some(Method::from_bytes(value).or_else(|_| bad("invalid :method"))?);
                    return Ok(());
                }
                b"scheme" => &mut self.scheme,
                b"authority" => &mut self.authority,
                b"path" => &mut self.path,
                _ => return bad("unknown pseudo-header field"),
            };
            if slot.is_some() {
                return bad("repeated pseudo-header field");
            }
            *slot = Some(text(value, "empty or non-UTF-8 pseudo-header field")?);
            return Ok(());
        }
        if name.iter().any(u8::is_ascii_uppercase) {
            return bad("uppercase header field name");
        }
        match name {
            b"connection" | b"proxy-connection" | b"keep-alive" | b"transfer-encoding"
            | b"upgrade" => return bad("connection-specific header field"),
            b"te" if value != b"trailers" => return bad("te other than \"trailers\""),
            _ => {}
        }
        let name = HeaderName::from_bytes(name).or_else(|_| bad("invalid header field name"))?;
        let value =
            HeaderValue::from_bytes(value).or_else(|_| bad("invalid header field value"))?;
        self.headers.append(name, value);
        Ok(())
    }
}

/// Decodes a request's header block. `Err(None)` is a decoding failure, which breaks the
/// connection's HPACK state (COMPRESSION_ERROR); `Err(Some)` a malformed request.
pub fn decode_request(
    decoder: &mut hpack::Decoder,
    block: &[u8],
) -> Result<http::Request<()>, Option<Malformed>> {
    let mut fields = Fields::default();
    decoder
        .decode(block, |name, value| {
            if fields.problem.is_none()
                && let Err(m) = fields.add(name, value)
            {
                fields.problem = Some(m);
            }
        })
        .map_err(|_| None)?;
    if let Some(problem) = fields.problem {
        return Err(Some(problem));
    }
    request(fields).map_err(Some)
}

fn request(fields: Fields) -> Result<http::Request<()>, Malformed> {
    let Some(method) = fields.method else {
        return bad("missing :method");
    };
    if method == Method::CONNECT {
        return bad("CONNECT is not served");
    }
    let (Some(scheme), Some(path)) = (fields.scheme, fields.path) else {
        return bad("missing :scheme or :path");
    };
    let mut uri = Uri::builder().scheme(scheme.as_str()).path_and_query(path);
    if let Some(authority) = &fields.authority {
        uri = uri.authority(authority.as_str());
    } else {
        // `http::Uri` needs an authority next to a scheme; a request without one is still
        // valid HTTP/2 (the Host header, if any, names the target).
        uri = uri.authority("localhost");
    }
    let uri = uri
        .build()
        .or_else(|_| bad("invalid :scheme, :authority or :path"))?;
    let mut request = http::Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = http::Version::HTTP_2;
    *request.headers_mut() = fields.headers;
    Ok(request)
}

/// Decodes a trailing header block (request trailers, which gRPC clients do not send) only
/// to keep the HPACK state; its fields are dropped.
pub fn decode_trailers(decoder: &mut hpack::Decoder, block: &[u8]) -> Result<(), ()> {
    decoder.decode(block, |_, _| {}).map_err(|_| ())
}

/// A new decoder whose peer may not grow the dynamic table past what was advertised.
pub fn decoder() -> hpack::Decoder {
    // Decoding stops at twice the largest list accepted: a block of tiny references to a
    // large table entry must not expand into megabytes.
    hpack::Decoder::new(TABLE_SIZE, 2 * MAX_HEADER_LIST)
}

/// HPACK integer with an `prefix`-bit prefix; `first` holds the bits above the prefix.
fn integer(out: &mut Vec<u8>, first: u8, prefix: u32, mut value: usize) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// A string literal without Huffman coding.
fn string(out: &mut Vec<u8>, s: &[u8]) {
    integer(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

/// Index of `:status` in the static table.
const STATUS: usize = 8;

fn fields(out: &mut Vec<u8>, headers: &HeaderMap) {
    for (name, value) in headers {
        // Literal without indexing, new name.
        out.push(0);
        string(out, name.as_str().as_bytes());
        string(out, value.as_bytes());
    }
}

/// Encodes response headers.
pub fn encode_response(out: &mut Vec<u8>, status: StatusCode, headers: &HeaderMap) {
    if status == StatusCode::OK {
        // Indexed field: static entry 8 is ":status: 200".
        out.push(0x80 | STATUS as u8);
    } else {
        // Literal without indexing, name from static entry 8.
        integer(out, 0, 4, STATUS);
        string(out, status.as_str().as_bytes());
    }
    fields(out, headers);
}

/// Encodes trailers.
pub fn encode_trailers(out: &mut Vec<u8>, trailers: &HeaderMap) {
    fields(out, trailers);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(block: &[u8]) -> Vec<(String, String)> {
        let mut fields = Vec::new();
        decoder()
            .decode(block, |n, v| {
                fields.push((
                    String::from_utf8(n.to_vec()).unwrap(),
                    String::from_utf8(v.to_vec()).unwrap(),
                ))
            })
            .unwrap();
        fields
    }

    #[test]
    fn should_encode_responses_and_trailers_that_a_decoder_reads_back() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/grpc"));
        // Long enough for a multi-octet length.
        let long = "x".repeat(300);
        headers.insert("grpc-message", HeaderValue::from_str(&long).unwrap());
        let mut out = Vec::new();
        encode_response(&mut out, StatusCode::OK, &headers);
        assert_eq!(
            decode(&out),
            vec![
                (":status".into(), "200".into()),
                ("content-type".into(), "application/grpc".into()),
                ("grpc-message".into(), long.clone()),
            ]
        );
        let mut out = Vec::new();
        encode_response(&mut out, StatusCode::NOT_FOUND, &HeaderMap::new());
        assert_eq!(decode(&out), vec![(":status".into(), "404".into())]);
    }

    fn block(fields: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (n, v) in fields {
            out.push(0);
            string(&mut out, n.as_bytes());
            string(&mut out, v.as_bytes());
        }
        out
    }

    const GOOD: &[(&str, &str)] = &[
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", "xds"),
        (":path", "/svc/Method"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ];

    #[test]
    fn should_decode_a_request() {
        let req = decode_request(&mut decoder(), &block(GOOD)).unwrap();
        assert_eq!(req.method(), Method::POST);
        assert_eq!(req.uri().path(), "/svc/Method");
        assert_eq!(req.uri().authority().unwrap().as_str(), "xds");
        assert_eq!(req.headers()["content-type"], "application/grpc");
    }

    #[test]
    fn should_refuse_malformed_requests_and_say_why() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&GOOD[1..], "missing :method"),
            (&[GOOD[0], GOOD[1], GOOD[2]], "missing :scheme or :path"),
            (&[("te", "trailers"), GOOD[0]], "after a regular field"),
            (&[GOOD[0], GOOD[0]], "repeated :method"),
            (&[(":status", "200")], "unknown pseudo-header"),
            (&[GOOD[0], ("Content-Type", "x")], "uppercase"),
            (&[GOOD[0], ("connection", "close")], "connection-specific"),
            (&[GOOD[0], ("te", "gzip")], "te other than"),
        ];
        for (fields, why) in cases {
            let err = decode_request(&mut decoder(), &block(fields)).unwrap_err();
            let Some(Malformed(msg)) = err else {
                panic!("{fields:?}: a decoding error")
            };
            assert!(msg.contains(why), "{fields:?}: {msg}");
        }
        let big = "v".repeat(MAX_HEADER_LIST);
        let mut fields = GOOD.to_vec();
        fields.push(("x-big", &big));
        assert!(matches!(
            decode_request(&mut decoder(), &block(&fields)),
            Err(Some(Malformed(m))) if m.contains("too large")
        ));
    }

    #[test]
    fn should_report_undecodable_blocks_and_table_growth_past_the_advertised_size() {
        // An index past both tables.
        assert_eq!(
            decode_request(&mut decoder(), &[0xff, 0x7f]).unwrap_err(),
            None
        );
        // Dynamic table size update to 8192.
        let mut grow = Vec::new();
        integer(&mut grow, 0x20, 5, 8192);
        grow.extend_from_slice(&block(GOOD));
        assert_eq!(decode_request(&mut decoder(), &grow).unwrap_err(), None);
    }
}
