//! Responses: what the route (or its listener) asks the gateway to do to a response
//! on its way to the client. Compression and decompression (pingora's encoders, the
//! decision in [`sluice_core::edge::encoding`]), gRPC-Web translation
//! ([`sluice_core::edge::grpc_web`]), error pages in place of chosen upstream
//! answers, and the upstream response body limit.
//!
//! Nothing here costs a request on a route that uses none of it: [`begin`] leaves
//! `ctx.http` empty, and every later hook returns on that one check.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::http::compression::{Algorithm, Encode};
use sluice_core::edge::compile::{Compression, ErrorPages, ListenerResponses, RouteResponses};
use sluice_core::edge::encoding::{self, AcceptEncoding, Action, Coding, Facts};
use sluice_core::edge::error_page::Vars;
use sluice_core::edge::grpc_web::{self, Base64Decoder, Base64Encoder, Mode};

use super::forward::RespEdit;
use super::Ctx;
use crate::edge::error::ErrorKind;

/// What one request needs from this module while its response streams.
#[derive(Default)]
pub struct State {
    /// The client's `Accept-Encoding`, when compression applies.
    accept: Option<AcceptEncoding>,
    /// The body's encoder (or decoder), once the response head chose one.
    coder: Option<Box<dyn Encode + Send + Sync>>,
    /// The gRPC-Web call, when the request is one.
    grpc: Option<GrpcWeb>,
    /// An error page replacing the upstream's body.
    page: Option<Bytes>,
    /// The upstream response body limit, and the bytes seen so far.
    body_limit: Option<(u64, u64)>,
    /// The cache's part ([`super::cache`]).
    pub cache: Option<super::cache::State>,
}

struct GrpcWeb {
    mode: Mode,
    upstream_type: HeaderValue,
    /// The upstream answered gRPC: its body and trailers are translated.
    active: bool,
    decoder: Base64Decoder,
    encoder: Base64Encoder,
}

/// The route's and the listener's settings for this request.
fn settings(ctx: &Ctx) -> (Option<&RouteResponses>, Option<&ListenerResponses>) {
    let Some(snap) = ctx.snapshot.as_ref() else {
        return (None, None);
    };
    let route = ctx.route_entry().and_then(|r| r.responses.as_deref());
    let listener = snap.listeners.get(ctx.listener).and_then(|l| l.as_deref());
    (route, listener)
}

/// The compression that applies: the route's, else the listener's.
fn compression(ctx: &Ctx) -> Option<&Compression> {
    let (route, listener) = settings(ctx);
    match route.and_then(|r| r.compression.as_ref()) {
        Some(own) => own.as_ref(),
        None => listener.and_then(|l| l.compression.as_ref()),
    }
}

/// The error pages that apply: the route's, else the listener's.
pub fn error_pages(ctx: &Ctx) -> Option<&ErrorPages> {
    let (route, listener) = settings(ctx);
    route
        .and_then(|r| r.error_pages.as_ref())
        .or_else(|| listener.and_then(|l| l.error_pages.as_ref()))
}

/// Once the request is admitted: notes what its response will need. Leaves `ctx.http`
/// empty when nothing applies.
pub fn begin(session: &Session, ctx: &mut Ctx) {
    let (route, listener) = settings(ctx);
    if route.is_none() && listener.is_none() {
        return;
    }
    let req = session.req_header();
    let accept =
        compression(ctx).map(|_| AcceptEncoding::parse(req.headers.get_all(header::ACCEPT_ENCODING)));
    let grpc = route.filter(|r| r.grpc_web).and_then(|_| {
        let ct = req.headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
        let (mode, upstream_type) = grpc_web::request_mode(ct)?;
        Some(GrpcWeb {
            mode,
            upstream_type,
            active: false,
            decoder: Base64Decoder::default(),
            encoder: Base64Encoder::default(),
        })
    });
    let body_limit = route.and_then(|r| r.max_response_body).map(|l| (l, 0));
    let pages = error_pages(ctx).is_some_and(|p| !p.upstream_statuses.is_empty());
    if accept.is_none() && grpc.is_none() && body_limit.is_none() && !pages {
        return;
    }
    let state = ctx.http.get_or_insert_with(Default::default);
    state.accept = accept;
    state.grpc = grpc;
    state.body_limit = body_limit;
}

/// The upstream request of a gRPC-Web call: gRPC's content type, `te: trailers`, and
/// no length when a text body shrinks as it is decoded.
pub fn upstream_request(upstream: &mut RequestHeader, ctx: &Ctx) -> Result<()> {
    let Some(g) = ctx.http.as_ref().and_then(|s| s.grpc.as_ref()) else {
        return Ok(());
    };
    upstream.insert_header(header::CONTENT_TYPE, g.upstream_type.clone())?;
    upstream.insert_header(header::TE, HeaderValue::from_static("trailers"))?;
    if g.mode == Mode::Text {
        upstream.remove_header(&header::CONTENT_LENGTH);
    }
    // gRPC ends a request with an empty DATA frame, never with the HEADERS frame.
    upstream.set_send_end_stream(false);
    Ok(())
}

/// A request body chunk of a gRPC-Web text call, decoded.
pub fn request_body(body: &mut Option<Bytes>, end: bool, ctx: &mut Ctx) -> Result<()> {
    let Some(g) = ctx.http.as_mut().and_then(|s| s.grpc.as_mut()) else {
        return Ok(());
    };
    if g.mode != Mode::Text {
        return Ok(());
    }
    let chunk = body.as_deref().unwrap_or(&[]);
    match g.decoder.decode(chunk, end) {
        Ok(decoded) => {
            *body = Some(decoded);
            Ok(())
        }
        Err(e) => {
            ctx.error = Some(ErrorKind::Downstream);
            Err(Error::because(InvalidHTTPHeader, "gRPC-Web text request", e).into_down())
        }
    }
}

/// The upstream's response head: refused when its `Content-Length` is over the
/// route's limit (nothing has been sent yet: the client gets a 502).
pub fn upstream_response(resp: &ResponseHeader, ctx: &mut Ctx) -> Result<()> {
    let Some((limit, _)) = ctx.http.as_ref().and_then(|s| s.body_limit) else {
        return Ok(());
    };
    let length = resp
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if length.is_some_and(|l| l > limit) {
        return Err(too_large(ctx));
    }
    Ok(())
}

fn too_large(ctx: &mut Ctx) -> Box<Error> {
    ctx.error = Some(ErrorKind::UpstreamResponseTooLarge);
    let mut e = Error::explain(
        HTTPStatus(ErrorKind::UpstreamResponseTooLarge.status().as_u16()),
        "the upstream response body is over the route's max_response_body",
    );
    e.set_retry(false);
    e
}

/// An upstream body chunk: counted against the route's limit. Past it the response
/// is cut, and logged as `upstream_response_too_large`.
pub fn upstream_body(body: &Option<Bytes>, ctx: &mut Ctx) -> Result<()> {
    let Some(state) = ctx.http.as_mut() else {
        return Ok(());
    };
    let Some((limit, seen)) = state.body_limit.as_mut() else {
        return Ok(());
    };
    *seen += body.as_ref().map_or(0, |b| b.len() as u64);
    if *seen > *limit {
        return Err(too_large(ctx));
    }
    Ok(())
}

/// The response head towards the client: gRPC-Web's content type, an error page in
/// place of a chosen upstream status, then the compression decision.
pub fn response_head(session: &Session, resp: &mut ResponseHeader, ctx: &mut Ctx) -> Result<()> {
    if ctx.http.is_none() || resp.status.is_informational() {
        return Ok(());
    }
    grpc_head(resp, ctx);
    error_page(session, resp, ctx)?;
    compress_head(session, resp, ctx);
    Ok(())
}

fn grpc_head(resp: &mut ResponseHeader, ctx: &mut Ctx) {
    let Some(g) = ctx.http.as_mut().and_then(|s| s.grpc.as_mut()) else {
        return;
    };
    let upstream = resp
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(client_type) = grpc_web::response_content_type(g.mode, upstream) else {
        return;
    };
    let _ = resp.insert_header(header::CONTENT_TYPE, client_type);
    resp.remove_header(&header::CONTENT_LENGTH);
    // The trailers become the body's last frame: always chunked towards an HTTP/1.1
    // client (pingora drops this for an HTTP/2 one).
    let _ = resp.insert_header(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    g.active = true;
}

fn error_page(session: &Session, resp: &mut ResponseHeader, ctx: &mut Ctx) -> Result<()> {
    let status = resp.status;
    let page = {
        let Some(pages) = error_pages(ctx).filter(|p| p.upstream_statuses.contains(status.as_u16())) else {
            return Ok(());
        };
        let accept = session
            .req_header()
            .headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok());
        let Some((content_type, template)) = pages.page(accept) else {
            return Ok(());
        };
        let body = template.render(&Vars {
            status: status.as_u16(),
            reason: status.canonical_reason().unwrap_or(""),
            code: "upstream_status",
            message: status.canonical_reason().unwrap_or("upstream error"),
            request_id: &ctx.filter.request_id,
        });
        (content_type.clone(), Bytes::from(body))
    };
    for h in [
        header::CONTENT_ENCODING,
        header::ETAG,
        header::LAST_MODIFIED,
        header::ACCEPT_RANGES,
        header::TRANSFER_ENCODING,
    ] {
        resp.remove_header(&h);
    }
    resp.insert_header(header::CONTENT_TYPE, page.0)?;
    resp.insert_header(header::CONTENT_LENGTH, page.1.len().to_string())?;
    if let Some(state) = ctx.http.as_mut() {
        state.page = Some(page.1);
        // The page is the body now: the upstream's coding and gRPC do not apply.
        state.grpc = None;
        state.accept = None;
    }
    Ok(())
}

fn compress_head(session: &Session, resp: &mut ResponseHeader, ctx: &mut Ctx) {
    let Some(accept) = ctx.http.as_ref().and_then(|s| s.accept) else {
        return;
    };
    let Some(c) = compression(ctx) else { return };
    let head = session.req_header().method == http::Method::HEAD;
    let decision = encoding::decide(
        &c.policy,
        &accept,
        &Facts::of(resp.status.as_u16(), &resp.headers, head),
    );
    let coder = match decision.action {
        Action::Pass => None,
        Action::Compress(Coding::Brotli) => {
            Some(Box::new(BrotliEncoder::new(c.levels.br)) as Box<dyn Encode + Send + Sync>)
        }
        Action::Compress(coding) => algorithm(coding).compressor(c.levels.of(coding)),
        Action::Decompress(Coding::Zstd) => {
            ZstdDecoder::new().map(|d| Box::new(d) as Box<dyn Encode + Send + Sync>)
        }
        Action::Decompress(coding) => algorithm(coding).decompressor(true),
    };
    let decision = match coder {
        Some(_) => decision,
        None => encoding::Decision {
            action: Action::Pass,
            ..decision
        },
    };
    encoding::edit_headers(decision, &mut RespEdit(resp));
    if coder.is_some() {
        // The body streams through the coder: its length is not known ahead (pingora
        // drops this for an HTTP/2 client).
        let _ = resp.insert_header(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    }
    if let Some(state) = ctx.http.as_mut() {
        state.coder = coder;
    }
}

fn algorithm(c: Coding) -> Algorithm {
    match c {
        Coding::Gzip => Algorithm::Gzip,
        Coding::Brotli => Algorithm::Brotli,
        Coding::Zstd => Algorithm::Zstd,
    }
}

/// A response body chunk towards the client: the error page in place of the
/// upstream's body, gRPC-Web text encoding, then compression.
pub fn response_body(body: &mut Option<Bytes>, end: bool, ctx: &mut Ctx) -> Result<()> {
    let Some(state) = ctx.http.as_mut() else {
        return Ok(());
    };
    if let Some(page) = &state.page {
        *body = end.then(|| page.clone());
        return Ok(());
    }
    if let Some(g) = state.grpc.as_mut().filter(|g| g.active && g.mode == Mode::Text) {
        let chunk = body.as_deref().unwrap_or(&[]);
        *body = Some(if end {
            g.encoder.finish(chunk)
        } else {
            g.encoder.encode(chunk)
        });
    }
    if let Some(coder) = state.coder.as_mut() {
        let input = body.as_deref().unwrap_or(&[]);
        match coder.encode(input, end) {
            Ok(out) => *body = Some(out),
            Err(e) => {
                // The head already promised the coding: the body cannot go on.
                tracing::warn!(request_id = %ctx.filter.request_id, "response (de)compression failed: {e}");
                return Err(e);
            }
        }
    }
    Ok(())
}

/// The upstream's trailers of a gRPC-Web call: the body's last frame (base64 in the
/// text mode), since a browser sees no trailers.
pub fn response_trailers(trailers: &HeaderMap, ctx: &mut Ctx) -> Option<Bytes> {
    let g = ctx.http.as_mut()?.grpc.as_mut().filter(|g| g.active)?;
    let frame = grpc_web::trailer_frame(trailers);
    Some(match g.mode {
        Mode::Binary => frame,
        Mode::Text => g.encoder.finish(&frame),
    })
}

/// A Brotli encoder that ends its stream with the last meta-block: pingora's only
/// flushes at the end, which strict decoders (Python's `brotli`) refuse.
struct BrotliEncoder {
    inner: Option<brotli::CompressorWriter<Vec<u8>>>,
    total_in: usize,
    total_out: usize,
}

impl BrotliEncoder {
    fn new(level: u32) -> BrotliEncoder {
        BrotliEncoder {
            // 4 KiB buffer, a 512 KiB window (lgwin 19), as pingora's.
            inner: Some(brotli::CompressorWriter::new(Vec::new(), 4096, level, 19)),
            total_in: 0,
            total_out: 0,
        }
    }
}

impl Encode for BrotliEncoder {
    fn encode(&mut self, input: &[u8], end: bool) -> Result<Bytes> {
        use std::io::Write;
        self.total_in += input.len();
        let Some(w) = self.inner.as_mut() else {
            return Ok(Bytes::new());
        };
        w.write_all(input)
            .or_err(InternalError, "while compressing Brotli")?;
        let out = if end {
            self.inner
                .take()
                .map(brotli::CompressorWriter::into_inner)
                .unwrap_or_default()
        } else {
            std::mem::take(w.get_mut())
        };
        self.total_out += out.len();
        Ok(Bytes::from(out))
    }

    fn stat(&self) -> (&'static str, usize, usize, std::time::Duration) {
        ("brotli", self.total_in, self.total_out, std::time::Duration::ZERO)
    }
}

/// A zstd decoder (pingora's encoders decode gzip and br only).
struct ZstdDecoder {
    inner: parking_lot::Mutex<zstd::stream::write::Decoder<'static, Vec<u8>>>,
    total_in: usize,
    total_out: usize,
}

impl ZstdDecoder {
    /// `None` when zstd cannot make a decoder (the body then passes as it is).
    fn new() -> Option<ZstdDecoder> {
        Some(ZstdDecoder {
            inner: parking_lot::Mutex::new(zstd::stream::write::Decoder::new(Vec::new()).ok()?),
            total_in: 0,
            total_out: 0,
        })
    }
}

impl Encode for ZstdDecoder {
    fn encode(&mut self, input: &[u8], end: bool) -> Result<Bytes> {
        use std::io::Write;
        let mut d = self.inner.lock();
        self.total_in += input.len();
        d.write_all(input).or_err(InternalError, "while decoding zstd")?;
        if end {
            d.flush().or_err(InternalError, "while decoding zstd")?;
        }
        let out = std::mem::take(d.get_mut());
        self.total_out += out.len();
        Ok(Bytes::from(out))
    }

    fn stat(&self) -> (&'static str, usize, usize, std::time::Duration) {
        (
            "de-zstd",
            self.total_in,
            self.total_out,
            std::time::Duration::ZERO,
        )
    }
}
