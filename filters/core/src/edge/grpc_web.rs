//! gRPC-Web framing (the gRPC-Web protocol, `PROTOCOL-WEB.md` in grpc/grpc): what the
//! gateway changes to turn a gRPC-Web call from a browser (HTTP/1.1 or h2, no trailers)
//! into a gRPC call to an HTTP/2 upstream, and the answer back.
//!
//! - The content type: `application/grpc-web[-text][+proto]` becomes
//!   `application/grpc[+proto]` on the way up and back again on the way down.
//! - The body: the same length-prefixed messages. In the text mode
//!   (`application/grpc-web-text`) both bodies are base64: [`Base64Decoder`] and
//!   [`Base64Encoder`] work chunk by chunk, carrying the bytes of an unfinished quantum.
//! - The trailers: HTTP/2 trailers become the body's last frame ([`trailer_frame`]):
//!   flag `0x80`, a 4-byte length, then `name:value\r\n` lines.
//!
//! pingora's own bridge (`GrpcWebCtx`) covers the binary mode only; this adds the text
//! mode and keeps the decisions pure.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue};

/// The gRPC-Web mode of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `application/grpc-web`: messages as they are.
    Binary,
    /// `application/grpc-web-text`: messages in base64.
    Text,
}

const GRPC_WEB_TEXT: &str = "application/grpc-web-text";
const GRPC_WEB: &str = "application/grpc-web";
const GRPC: &str = "application/grpc";

/// The mode of a request's `Content-Type` and the type to send upstream in its place
/// (`application/grpc` with the same `+format` suffix); `None` when it is not gRPC-Web.
pub fn request_mode(content_type: &str) -> Option<(Mode, HeaderValue)> {
    let ct = content_type.trim();
    let lower = ct.to_ascii_lowercase();
    let (mode, rest) = if let Some(rest) = lower.strip_prefix(GRPC_WEB_TEXT) {
        (Mode::Text, rest)
    } else if let Some(rest) = lower.strip_prefix(GRPC_WEB) {
        (Mode::Binary, rest)
    } else {
        return None;
    };
    // `+proto`, `+json`, parameters; anything else (`application/grpc-webx`) is not ours.
    if !(rest.is_empty() || rest.starts_with('+') || rest.starts_with(';')) {
        return None;
    }
    HeaderValue::from_str(&format!("{GRPC}{rest}"))
        .ok()
        .map(|v| (mode, v))
}

/// The `Content-Type` for the client in place of the upstream's `application/grpc...`;
/// `None` when the upstream did not answer gRPC (its answer then passes as it is).
pub fn response_content_type(mode: Mode, upstream: &str) -> Option<HeaderValue> {
    let rest = upstream.trim().to_ascii_lowercase();
    let rest = rest.strip_prefix(GRPC)?;
    if !(rest.is_empty() || rest.starts_with('+') || rest.starts_with(';')) {
        return None;
    }
    let base = match mode {
        Mode::Binary => GRPC_WEB,
        Mode::Text => GRPC_WEB_TEXT,
    };
    HeaderValue::from_str(&format!("{base}{rest}")).ok()
}

/// The flag byte of a trailer frame.
pub const TRAILER_FLAG: u8 = 0x80;

/// The gRPC-Web frame carrying `trailers`: `0x80`, the length (big-endian `u32`), then
/// each field as `name:value\r\n` (names lower case, as HTTP/2 has them).
pub fn trailer_frame(trailers: &HeaderMap) -> Bytes {
    let mut fields = BytesMut::with_capacity(64);
    for (name, value) in trailers {
        fields.put_slice(name.as_str().as_bytes());
        fields.put_u8(b':');
        fields.put_slice(value.as_bytes());
        fields.put_slice(b"\r\n");
    }
    let mut frame = BytesMut::with_capacity(5 + fields.len());
    frame.put_u8(TRAILER_FLAG);
    frame.put_u32(u32::try_from(fields.len()).unwrap_or(u32::MAX));
    frame.put_slice(&fields);
    frame.freeze()
}

/// A base64 request body is not base64.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotBase64;

impl std::fmt::Display for NotBase64 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the gRPC-Web text body is not valid base64")
    }
}

impl std::error::Error for NotBase64 {}

/// Decodes a base64 body (standard alphabet) that arrives in chunks of any size. A
/// quantum cut by a chunk boundary waits for the next chunk; padded quanta may appear
/// mid-stream (a client that encodes each message on its own).
#[derive(Debug, Default)]
pub struct Base64Decoder {
    carry: Vec<u8>,
}

impl Base64Decoder {
    /// Decodes what `chunk` completes; at `end` nothing may be left over.
    pub fn decode(&mut self, chunk: &[u8], end: bool) -> Result<Bytes, NotBase64> {
        self.carry
            .extend(chunk.iter().copied().filter(|b| !b.is_ascii_whitespace()));
        let whole = self.carry.len() / 4 * 4;
        if end && whole != self.carry.len() {
            return Err(NotBase64);
        }
        let mut out = Vec::with_capacity(whole / 4 * 3);
        // Runs of quanta end at each padded quantum, so every run decodes on its own.
        let mut start = 0;
        for q in (0..whole).step_by(4) {
            if self.carry[q + 3] == b'=' || q + 4 == whole {
                STANDARD
                    .decode_vec(&self.carry[start..q + 4], &mut out)
                    .map_err(|_| NotBase64)?;
                start = q + 4;
            }
        }
        self.carry.drain(..whole);
        Ok(out.into())
    }
}

/// Encodes a body in base64 as it streams: each chunk's whole 3-byte groups go out at
/// once, the rest waits; [`Base64Encoder::finish`] pads the end.
#[derive(Debug, Default)]
pub struct Base64Encoder {
    carry: Vec<u8>,
}

impl Base64Encoder {
    /// The base64 of what `chunk` completes.
    pub fn encode(&mut self, chunk: &[u8]) -> Bytes {
        self.carry.extend_from_slice(chunk);
        let whole = self.carry.len() / 3 * 3;
        let out = STANDARD.encode(&self.carry[..whole]);
        self.carry.drain(..whole);
        Bytes::from(out)
    }

    /// The base64 of what is left and of `tail`, padded: the end of the body.
    pub fn finish(&mut self, tail: &[u8]) -> Bytes {
        self.carry.extend_from_slice(tail);
        let out = STANDARD.encode(&self.carry);
        self.carry.clear();
        Bytes::from(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn request_types_map_to_grpc() {
        let m = |s| request_mode(s).map(|(m, v)| (m, v.to_str().unwrap().to_string()));
        assert_eq!(m("application/grpc-web"), Some((Mode::Binary, GRPC.into())));
        assert_eq!(
            m("application/grpc-web+proto"),
            Some((Mode::Binary, "application/grpc+proto".into()))
        );
        assert_eq!(
            m("Application/GRPC-Web-Text+proto"),
            Some((Mode::Text, "application/grpc+proto".into()))
        );
        assert_eq!(m("application/grpc-web-text"), Some((Mode::Text, GRPC.into())));
        assert_eq!(m("application/grpc"), None);
        assert_eq!(m("application/grpc-webx"), None);
        assert_eq!(m("text/plain"), None);
    }

    #[test]
    fn response_types_map_back() {
        let r = |m, s| response_content_type(m, s).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(r(Mode::Binary, "application/grpc"), Some(GRPC_WEB.into()));
        assert_eq!(
            r(Mode::Text, "application/grpc+proto"),
            Some("application/grpc-web-text+proto".into())
        );
        assert_eq!(r(Mode::Binary, "text/html"), None);
    }

    #[test]
    fn trailers_become_the_last_frame() {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        t.insert("grpc-message", HeaderValue::from_static("ok"));
        let f = trailer_frame(&t);
        let fields = b"grpc-status:0\r\ngrpc-message:ok\r\n";
        assert_eq!(f[0], TRAILER_FLAG);
        assert_eq!(
            u32::from_be_bytes([f[1], f[2], f[3], f[4]]) as usize,
            fields.len()
        );
        assert_eq!(&f[5..], fields);
    }

    #[test]
    fn base64_round_trips_across_any_chunking() {
        let body: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let text = STANDARD.encode(&body);
        for size in [1, 2, 3, 4, 5, 7, 64, 1000, 2000] {
            let mut d = Base64Decoder::default();
            let mut out = Vec::new();
            let chunks: Vec<&[u8]> = text.as_bytes().chunks(size).collect();
            for (i, c) in chunks.iter().enumerate() {
                out.extend_from_slice(&d.decode(c, i + 1 == chunks.len()).unwrap());
            }
            assert_eq!(out, body, "decode, chunks of {size}");

            let mut e = Base64Encoder::default();
            let mut enc = Vec::new();
            for c in body.chunks(size) {
                enc.extend_from_slice(&e.encode(c));
            }
            enc.extend_from_slice(&e.finish(b""));
            assert_eq!(enc, text.as_bytes(), "encode, chunks of {size}");
        }
    }

    #[test]
    fn padded_quanta_mid_stream_decode() {
        let a = STANDARD.encode(b"ab");
        let b = STANDARD.encode(b"cde");
        let joined = format!("{a}{b}");
        let mut d = Base64Decoder::default();
        assert_eq!(&d.decode(joined.as_bytes(), true).unwrap()[..], b"abcde");
    }

    #[test]
    fn broken_base64_is_refused() {
        let mut d = Base64Decoder::default();
        assert_eq!(d.decode(b"abc", true), Err(NotBase64));
        let mut d = Base64Decoder::default();
        assert_eq!(d.decode(b"ab!d", false), Err(NotBase64));
    }

    #[test]
    fn the_trailer_frame_joins_the_encoded_tail() {
        let mut e = Base64Encoder::default();
        let mut out = Vec::new();
        out.extend_from_slice(&e.encode(b"hello"));
        out.extend_from_slice(&e.finish(&[TRAILER_FLAG, 0, 0, 0, 0]));
        let decoded = STANDARD.decode(&out).unwrap();
        assert_eq!(
            decoded,
            [b"hello".as_slice(), &[TRAILER_FLAG, 0, 0, 0, 0]].concat()
        );
    }
}
