//! HTTP/2 frames (RFC 9113 section 4 and 6): the 9-octet header, and writers for every
//! frame this server sends. Writers append to the connection's output buffer, so nothing is
//! allocated per frame.

/// Frame types.
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PUSH_PROMISE: u8 = 0x5;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

/// Flags.
pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
pub const PRIORITY_FLAG: u8 = 0x20;

/// Settings identifiers.
pub const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
pub const SETTINGS_ENABLE_PUSH: u16 = 0x2;
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
pub const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;
pub const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;

/// The client connection preface.
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Length of a frame header.
pub const HEADER_LEN: usize = 9;

/// Largest flow-control window (2^31 - 1).
pub const MAX_WINDOW: i64 = (1 << 31) - 1;

/// Window a stream or connection starts with before any SETTINGS or WINDOW_UPDATE.
pub const DEFAULT_WINDOW: i64 = 65_535;

/// Frame payload size every endpoint must accept.
pub const DEFAULT_MAX_FRAME: u32 = 16_384;

/// Error codes (RFC 9113 section 7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reason(pub u32);

impl Reason {
    pub const NO_ERROR: Reason = Reason(0x0);
    pub const PROTOCOL_ERROR: Reason = Reason(0x1);
    pub const INTERNAL_ERROR: Reason = Reason(0x2);
    pub const FLOW_CONTROL_ERROR: Reason = Reason(0x3);
    pub const STREAM_CLOSED: Reason = Reason(0x5);
    pub const FRAME_SIZE_ERROR: Reason = Reason(0x6);
    pub const REFUSED_STREAM: Reason = Reason(0x7);
    pub const CANCEL: Reason = Reason(0x8);
    pub const COMPRESSION_ERROR: Reason = Reason(0x9);
    pub const ENHANCE_YOUR_CALM: Reason = Reason(0xb);

    /// The name RFC 9113 gives the code.
    pub fn name(self) -> &'static str {
        match self.0 {
            0x0 => "NO_ERROR",
            0x1 => "PROTOCOL_ERROR",
            0x2 => "INTERNAL_ERROR",
            0x3 => "FLOW_CONTROL_ERROR",
            0x4 => "SETTINGS_TIMEOUT",
            0x5 => "STREAM_CLOSED",
            0x6 => "FRAME_SIZE_ERROR",
            0x7 => "REFUSED_STREAM",
            0x8 => "CANCEL",
            0x9 => "COMPRESSION_ERROR",
            0xa => "CONNECT_ERROR",
            0xb => "ENHANCE_YOUR_CALM",
            0xc => "INADEQUATE_SECURITY",
            0xd => "HTTP_1_1_REQUIRED",
            _ => "unknown error code",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({:#x})", self.name(), self.0)
    }
}

/// A parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub len: usize,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

impl Head {
    /// Parses the first nine octets of `buf`, which must hold at least that many.
    pub fn parse(buf: &[u8]) -> Head {
        Head {
            len: (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]),
            kind: buf[3],
            flags: buf[4],
            // The reserved bit is ignored on receipt.
            stream: u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff,
        }
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag == flag
    }
}

/// Appends a frame header.
pub fn head(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    debug_assert!(len < 1 << 24);
    let len = len as u32;
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
}

/// Appends a SETTINGS frame with these values.
pub fn settings(out: &mut Vec<u8>, values: &[(u16, u32)]) {
    head(out, values.len() * 6, SETTINGS, 0, 0);
    for (id, value) in values {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&value.to_be_bytes());
    }
}

pub fn settings_ack(out: &mut Vec<u8>) {
    head(out, 0, SETTINGS, ACK, 0);
}

pub fn ping(out: &mut Vec<u8>, flags: u8, payload: [u8; 8]) {
    head(out, 8, PING, flags, 0);
    out.extend_from_slice(&payload);
}

pub fn window_update(out: &mut Vec<u8>, stream: u32, increment: u32) {
    debug_assert!(increment > 0 && i64::from(increment) <= MAX_WINDOW);
    head(out, 4, WINDOW_UPDATE, 0, stream);
    out.extend_from_slice(&increment.to_be_bytes());
}

pub fn rst_stream(out: &mut Vec<u8>, stream: u32, reason: Reason) {
    head(out, 4, RST_STREAM, 0, stream);
    out.extend_from_slice(&reason.0.to_be_bytes());
}

pub fn goaway(out: &mut Vec<u8>, last_stream: u32, reason: Reason, debug: &str) {
    head(out, 8 + debug.len(), GOAWAY, 0, 0);
    out.extend_from_slice(&(last_stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(&reason.0.to_be_bytes());
    out.extend_from_slice(debug.as_bytes());
}

/// Appends a header block as one HEADERS frame and as many CONTINUATION frames as frames of
/// `max_frame` octets need.
pub fn headers(out: &mut Vec<u8>, stream: u32, block: &[u8], end_stream: bool, max_frame: usize) {
    let mut chunks = block.chunks(max_frame.max(1));
    let first = chunks.next().unwrap_or_default();
    let mut rest = chunks.peekable();
    let end_headers = if rest.peek().is_none() {
        END_HEADERS
    } else {
        0
    };
    let end_stream = if end_stream { END_STREAM } else { 0 };
    head(out, first.len(), HEADERS, end_stream | end_headers, stream);
    out.extend_from_slice(first);
    while let Some(chunk) = rest.next() {
        let end_headers = if rest.peek().is_none() {
            END_HEADERS
        } else {
            0
        };
        head(out, chunk.len(), CONTINUATION, end_headers, stream);
        out.extend_from_slice(chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_write_a_header_that_parses_back() {
        let mut out = Vec::new();
        head(&mut out, 0x01_02_03, DATA, END_STREAM, 0x8000_0007);
        assert_eq!(out.len(), HEADER_LEN);
        assert_eq!(
            Head::parse(&out),
            Head {
                len: 0x01_02_03,
                kind: DATA,
                flags: END_STREAM,
                stream: 7
            }
        );
    }

    #[test]
    fn should_split_a_header_block_into_continuations() {
        let block: Vec<u8> = (0..10).collect();
        let mut out = Vec::new();
        headers(&mut out, 3, &block, true, 4);
        let first = Head::parse(&out);
        assert_eq!(
            (first.len, first.kind, first.flags),
            (4, HEADERS, END_STREAM)
        );
        let second = Head::parse(&out[13..]);
        assert_eq!(
            (second.len, second.kind, second.flags),
            (4, CONTINUATION, 0)
        );
        let third = Head::parse(&out[26..]);
        assert_eq!(
            (third.len, third.kind, third.flags),
            (2, CONTINUATION, END_HEADERS)
        );
        assert_eq!(out.len(), 3 * HEADER_LEN + 10);

        let mut single = Vec::new();
        headers(&mut single, 1, &block, false, 16_384);
        assert_eq!(Head::parse(&single).flags, END_HEADERS);
    }
}
