//! The gateway's one error-to-status mapping.
//!
//! Every response the gateway produces itself because something went wrong goes through
//! [`ErrorKind::status`] and [`error_response`], so the status and the JSON body shape are
//! decided in exactly one place.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use pingora::{Error, ErrorSource, ErrorType};
use sluice_core::edge::compile::ErrorPages;
use sluice_core::edge::error_page::Vars;
use sluice_core::framing::Refusal;
use sluice_core::normalize::TargetRefusal;
use sluice_core::{RejectKind, Response};

/// Why the gateway answered with an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No route matched the request.
    NoRoute,
    /// The upstream refused or did not accept the connection.
    UpstreamConnect,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// The upstream closed or reset the connection mid-request.
    UpstreamReset,
    /// The upstream spoke broken HTTP, or TLS to it failed.
    UpstreamProtocol,
    /// No endpoint of the upstream is available (all ejected, unhealthy or drained).
    NoHealthyEndpoint,
    /// The config is not loaded yet.
    NotReady,
    /// The route's circuit breaker is open (the configured short-circuit response was
    /// sent; its status is the configured one, 503 by default).
    CircuitOpen,
    /// The client went away or sent something we could not read.
    Downstream,
    /// A filter refused the request (authentication, authorization, a rate limit, ...).
    Rejected(RejectKind),
    /// A bug or resource problem inside the gateway.
    Internal,
    /// The request's framing, size or head broke a strict check
    /// ([`sluice_core::framing`], `pipeline/strict.rs`): 400, 413, 414, 431 or 501.
    Framing(Refusal),
    /// The request's target or header names could not be normalised, or a
    /// normalisation option refuses them ([`sluice_core::normalize`]): 400.
    Target(TargetRefusal),
    /// The upstream's response body is over the route's `max_response_body` (a 502
    /// when known from its `Content-Length`; otherwise the response is cut).
    UpstreamResponseTooLarge,
    /// The upstream stopped sending its response body for longer than the read
    /// timeout (the response is cut; a 504 if nothing was sent yet).
    UpstreamBodyTimeout,
}

impl ErrorKind {
    /// The HTTP status for this kind. The only place statuses for errors are chosen.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::NoRoute => StatusCode::NOT_FOUND,
            ErrorKind::Downstream => StatusCode::BAD_REQUEST,
            ErrorKind::UpstreamConnect | ErrorKind::UpstreamReset | ErrorKind::UpstreamProtocol => {
                StatusCode::BAD_GATEWAY
            }
            ErrorKind::UpstreamTimeout | ErrorKind::UpstreamBodyTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::UpstreamResponseTooLarge => StatusCode::BAD_GATEWAY,
            ErrorKind::NoHealthyEndpoint | ErrorKind::NotReady | ErrorKind::CircuitOpen => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Framing(r) => StatusCode::from_u16(r.status()).unwrap_or(StatusCode::BAD_REQUEST),
            ErrorKind::Target(_) => StatusCode::BAD_REQUEST,
            ErrorKind::Rejected(k) => match k {
                RejectKind::BadRequest => StatusCode::BAD_REQUEST,
                RejectKind::Unauthenticated => StatusCode::UNAUTHORIZED,
                RejectKind::Forbidden => StatusCode::FORBIDDEN,
                RejectKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                RejectKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
                RejectKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            },
        }
    }

    /// Stable machine-readable code, also the `kind` label of `sluice_upstream_errors_total`.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::NoRoute => "no_route",
            ErrorKind::UpstreamConnect => "upstream_connect",
            ErrorKind::UpstreamTimeout => "upstream_timeout",
            ErrorKind::UpstreamBodyTimeout => "upstream_body_timeout",
            ErrorKind::UpstreamResponseTooLarge => "upstream_response_too_large",
            ErrorKind::UpstreamReset => "upstream_reset",
            ErrorKind::UpstreamProtocol => "upstream_protocol",
            ErrorKind::NoHealthyEndpoint => "no_healthy_endpoint",
            ErrorKind::NotReady => "not_ready",
            ErrorKind::CircuitOpen => "circuit_open",
            ErrorKind::Downstream => "downstream",
            ErrorKind::Internal => "internal",
            ErrorKind::Framing(r) => match r {
                Refusal::BadRequest(_) => "malformed_request",
                Refusal::NotImplemented(_) => "not_implemented",
                Refusal::HeaderTooLarge(_) => "header_too_large",
                Refusal::UriTooLong => "uri_too_long",
                Refusal::PayloadTooLarge => "payload_too_large",
            },
            ErrorKind::Target(_) => "bad_target",
            ErrorKind::Rejected(k) => match k {
                RejectKind::BadRequest => "bad_request",
                RejectKind::Unauthenticated => "unauthenticated",
                RejectKind::Forbidden => "forbidden",
                RejectKind::PayloadTooLarge => "payload_too_large",
                RejectKind::RateLimited => "rate_limited",
                RejectKind::Unavailable => "unavailable",
            },
        }
    }

    /// A message for the client. It never names upstream addresses or internals; the
    /// details go to the log under the request id.
    pub fn describe(self) -> &'static str {
        match self {
            ErrorKind::NoRoute => "no route matches this request",
            ErrorKind::UpstreamConnect => "could not connect to the upstream",
            ErrorKind::UpstreamTimeout => "the upstream did not answer in time",
            ErrorKind::UpstreamBodyTimeout => "the upstream stopped sending its response",
            ErrorKind::UpstreamResponseTooLarge => "the upstream response is too large",
            ErrorKind::UpstreamReset => "the upstream closed the connection",
            ErrorKind::UpstreamProtocol => "the upstream sent an invalid response",
            ErrorKind::NoHealthyEndpoint => "no healthy upstream endpoint is available",
            ErrorKind::NotReady => "the gateway has no configuration yet",
            ErrorKind::CircuitOpen => "the upstream's circuit breaker is open",
            ErrorKind::Downstream => "the request could not be read",
            ErrorKind::Internal => "internal gateway error",
            ErrorKind::Framing(r) => r.reason(),
            ErrorKind::Target(r) => r.reason(),
            ErrorKind::Rejected(k) => match k {
                RejectKind::BadRequest => "the request is not acceptable here",
                RejectKind::Unauthenticated => "authentication is required",
                RejectKind::Forbidden => "access is denied",
                RejectKind::PayloadTooLarge => "the request body is too large",
                RejectKind::RateLimited => "rate limit exceeded",
                RejectKind::Unavailable => "the request cannot be admitted now",
            },
        }
    }

    /// Whether this is an upstream failure (counted in upstream error metrics).
    pub fn is_upstream(self) -> bool {
        matches!(
            self,
            ErrorKind::UpstreamConnect
                | ErrorKind::UpstreamTimeout
                | ErrorKind::UpstreamBodyTimeout
                | ErrorKind::UpstreamResponseTooLarge
                | ErrorKind::UpstreamReset
                | ErrorKind::UpstreamProtocol
                | ErrorKind::NoHealthyEndpoint
        )
    }

    /// Classifies a pingora error.
    pub fn of(e: &Error) -> ErrorKind {
        use ErrorType::*;
        match e.esource() {
            ErrorSource::Downstream => return ErrorKind::Downstream,
            ErrorSource::Internal | ErrorSource::Unset => {
                if let HTTPStatus(code) = e.etype() {
                    return if *code == 404 {
                        ErrorKind::NoRoute
                    } else {
                        ErrorKind::Internal
                    };
                }
            }
            ErrorSource::Upstream => {}
        }
        match e.etype() {
            ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout => {
                ErrorKind::UpstreamTimeout
            }
            ConnectRefused | ConnectNoRoute | ConnectError | BindError | SocketError => {
                ErrorKind::UpstreamConnect
            }
            ConnectionClosed | ReadError | WriteError | H2Error | H2Downgrade => ErrorKind::UpstreamReset,
            TLSHandshakeFailure | InvalidCert | HandshakeError | InvalidHTTPHeader | H1Error => {
                ErrorKind::UpstreamProtocol
            }
            InvalidH2 => ErrorKind::UpstreamProtocol,
            _ => match e.esource() {
                ErrorSource::Upstream => ErrorKind::UpstreamProtocol,
                _ => ErrorKind::Internal,
            },
        }
    }
}

/// The JSON error response: `{"error": code, "message": …, "request_id": …}`, with the
/// request id also in its header.
pub fn error_response(kind: ErrorKind, message: &str, request_id: &str, id_header: &HeaderName) -> Response {
    let body = serde_json::json!({
        "error": kind.code(),
        "status": kind.status().as_u16(),
        "message": message,
        "request_id": request_id,
    });
    let mut headers = vec![(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    )];
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.push((id_header.clone(), v));
    }
    Response {
        status: kind.status(),
        headers,
        body: Bytes::from(body.to_string()),
    }
}

/// `resp` (a gateway-made error answer) with its body replaced by the page `pages`
/// choose for `accept`, when `pages` cover its status. The status, headers and the
/// error code in logs and metrics stay as the one mapping made them.
pub fn apply_page(
    resp: &mut Response,
    code: &str,
    message: &str,
    request_id: &str,
    pages: &ErrorPages,
    accept: Option<&str>,
) {
    if !pages.statuses.contains(resp.status.as_u16()) {
        return;
    }
    let Some((content_type, template)) = pages.page(accept) else {
        return;
    };
    let body = template.render(&Vars {
        status: resp.status.as_u16(),
        reason: resp.status.canonical_reason().unwrap_or(""),
        code,
        message,
        request_id,
    });
    resp.headers.retain(|(k, _)| k != http::header::CONTENT_TYPE);
    resp.headers
        .push((http::header::CONTENT_TYPE, content_type.clone()));
    resp.body = Bytes::from(body);
}

/// The response for a filter's refusal: the JSON error of its kind with the filter's
/// headers, or, when the filter was configured with its own answer
/// ([`sluice_core::CustomReject`]), that status and body (the error code in logs
/// and metrics stays the kind's).
pub fn reject_response(reject: sluice_core::Reject, request_id: &str, id_header: &HeaderName) -> Response {
    let kind = ErrorKind::Rejected(reject.kind);
    let mut resp = error_response(kind, &reject.message, request_id, id_header);
    if let Some(custom) = &reject.custom {
        if let Some(status) = custom.status {
            resp.status = status;
        }
        if let Some((content_type, body)) = &custom.body {
            resp.headers.retain(|(k, _)| k != http::header::CONTENT_TYPE);
            resp.headers
                .push((http::header::CONTENT_TYPE, content_type.clone()));
            resp.body = body.clone();
        }
    }
    resp.headers.extend(reject.headers);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rejection_kind_has_its_own_status_and_code() {
        let mut seen = std::collections::HashSet::new();
        for k in RejectKind::ALL {
            let e = ErrorKind::Rejected(k);
            assert!(e.status().is_client_error() || e.status() == StatusCode::SERVICE_UNAVAILABLE);
            assert!(seen.insert(e.code()), "code {} used twice", e.code());
            assert!(!e.is_upstream());
        }
        assert_eq!(
            ErrorKind::Rejected(RejectKind::RateLimited).status(),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            ErrorKind::Rejected(RejectKind::Unauthenticated).status(),
            StatusCode::UNAUTHORIZED
        );
    }
}
