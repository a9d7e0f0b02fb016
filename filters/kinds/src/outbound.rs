//! The one HTTP client stack of the gateway's own outbound calls: JWKS documents, forward
//! auth, mirror copies, the rollout loop's webhooks and the CLI's calls to the admin API.
//! (The trace exporter, in the gateway's `observe/`, which may not use this crate, builds
//! the same hyper client itself, for `http://` collectors.) Hyper's pooled HTTP/1.1 client over rustls (aws-lc, the provider pingora
//! uses), `http://` and `https://`, with Mozilla's roots or a CA set of the caller's.
//!
//! One stack means one TLS configuration to audit, one set of pool settings, and one
//! place where the gateway's outbound behaviour (no proxy from the environment, no
//! cookies, redirects only when a caller asks for them) is decided.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// The connector of every outbound client: TCP (no Nagle) wrapped in TLS for `https://`.
pub type Connector = HttpsConnector<HttpConnector>;

/// A pooled outbound client sending bodies of type `B`.
pub type HttpClient<B> = Client<Connector, B>;

/// Pool settings of an outbound client.
#[derive(Debug, Clone, Copy)]
pub struct Pool {
    /// How long an idle keep-alive connection is kept. Default: 60 s.
    pub idle_timeout: Duration,
    /// Idle connections kept per host. Default: 32.
    pub max_idle_per_host: usize,
}

impl Default for Pool {
    fn default() -> Pool {
        Pool {
            idle_timeout: Duration::from_secs(60),
            max_idle_per_host: 32,
        }
    }
}

/// Mozilla's root certificates (the `webpki-roots` set), for `https://` services of the
/// public internet.
pub fn public_roots() -> rustls::RootCertStore {
    rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

/// A client trusting `roots` for `https://` URLs (plain `http://` too), with `pool`'s
/// settings. Fails only when rustls refuses its own safe defaults.
pub fn client<B>(roots: rustls::RootCertStore, pool: Pool) -> Result<HttpClient<B>, String>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let tls =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(pool.idle_timeout)
        .pool_max_idle_per_host(pool.max_idle_per_host)
        .build(connector))
}

/// A client for `http://` calls alone (loopback: the admin API, a collector), trusting
/// no certificate authority: it is [`client`] with an empty root set, so an `https://`
/// URL fails its handshake instead of being sent in the clear.
pub fn plain<B>() -> Result<HttpClient<B>, String>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    client(rustls::RootCertStore::empty(), Pool::default())
}

/// What [`get`] asks for.
#[derive(Debug, Clone)]
pub struct Get<'a> {
    /// The URL, `http://` or `https://`.
    pub url: &'a str,
    /// The `Accept` header sent. Default: none.
    pub accept: Option<&'static str>,
    /// The whole exchange's limit, redirects included.
    pub timeout: Duration,
    /// The largest body taken; a longer one is an error.
    pub max_bytes: usize,
    /// Redirects followed (301, 302, 303, 307, 308), at most this many.
    pub redirects: usize,
}

/// GETs `req.url` and returns the body of a 2xx answer, following up to `req.redirects`
/// redirects, within `req.timeout`, refusing a body over `req.max_bytes`. Errors name
/// what went wrong without the URL's query (which may hold a credential).
pub async fn get(client: &HttpClient<Empty<Bytes>>, req: &Get<'_>) -> Result<Bytes, String> {
    match tokio::time::timeout(req.timeout, get_inner(client, req)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {:?}", req.timeout)),
    }
}

async fn get_inner(client: &HttpClient<Empty<Bytes>>, req: &Get<'_>) -> Result<Bytes, String> {
    let mut uri: Uri = req.url.parse().map_err(|e| format!("not a URL: {e}"))?;
    let mut hops = 0;
    loop {
        let mut r = Request::get(uri.clone());
        if let Some(accept) = req.accept {
            r = r.header(http::header::ACCEPT, HeaderValue::from_static(accept));
        }
        let r = r.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
        let resp = client.request(r).await.map_err(|e| error_text(&e))?;
        let status = resp.status();
        if is_redirect(status) {
            if hops == req.redirects {
                return Err(format!("more than {} redirects", req.redirects));
            }
            hops += 1;
            let location = resp
                .headers()
                .get(http::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| format!("status {status} without a Location"))?;
            uri = resolve(&uri, location)?;
            continue;
        }
        if !status.is_success() {
            return Err(format!("status {status}"));
        }
        let too_long = || format!("document over {} bytes", req.max_bytes);
        if resp
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .is_some_and(|n| n > req.max_bytes as u64)
        {
            return Err(too_long());
        }
        return match Limited::new(resp.into_body(), req.max_bytes).collect().await {
            Ok(body) => Ok(body.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_long()),
            Err(e) => Err(e.to_string()),
        };
    }
}

fn is_redirect(s: StatusCode) -> bool {
    matches!(s.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// `location` resolved against `base` (absolute, or an absolute path on the same origin).
fn resolve(base: &Uri, location: &str) -> Result<Uri, String> {
    let loc: Uri = location
        .parse()
        .map_err(|_| "a redirect to an invalid Location".to_string())?;
    if loc.scheme().is_some() {
        return match loc.scheme_str() {
            Some("http" | "https") if loc.authority().is_some() => Ok(loc),
            _ => Err("a redirect to a URL that is not http:// or https://".into()),
        };
    }
    if !location.starts_with('/') || location.starts_with("//") {
        return Err("a redirect to a relative Location".into());
    }
    let mut parts = base.clone().into_parts();
    parts.path_and_query = loc.path_and_query().cloned();
    Uri::from_parts(parts).map_err(|e| e.to_string())
}

/// An error's text with its sources (hyper's top error says only "client error").
fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn redirects_resolve_on_the_same_origin_or_to_an_absolute_url() {
        let base: Uri = "https://idp.example/keys?x=1".parse().unwrap();
        assert_eq!(
            resolve(&base, "/v2/keys").unwrap().to_string(),
            "https://idp.example/v2/keys"
        );
        assert_eq!(
            resolve(&base, "http://other.example/k").unwrap().to_string(),
            "http://other.example/k"
        );
        assert!(resolve(&base, "keys").is_err());
        assert!(resolve(&base, "//evil.example/k").is_err());
        assert!(resolve(&base, "file:///etc/passwd").is_err());
    }

    async fn serve(answers: Vec<&'static str>) -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            for a in answers {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await.unwrap();
                s.write_all(a.as_bytes()).await.unwrap();
            }
        });
        addr
    }

    fn get_req(url: &str, max_bytes: usize) -> Get<'_> {
        Get {
            url,
            accept: Some("application/json"),
            timeout: Duration::from_secs(5),
            max_bytes,
            redirects: 1,
        }
    }

    #[tokio::test]
    async fn a_get_follows_a_redirect_and_caps_the_body() {
        let addr = serve(vec![
            "HTTP/1.1 302 Found\r\nLocation: /two\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
            "HTTP/1.1 500 Oops\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        ])
        .await;
        let c = plain().unwrap();
        let url = format!("http://{addr}/one");
        assert_eq!(get(&c, &get_req(&url, 5)).await.unwrap(), "hello");
        let err = get(&c, &get_req(&url, 4)).await.unwrap_err();
        assert!(err.contains("over 4 bytes"), "{err}");
        let err = get(&c, &get_req(&url, 4)).await.unwrap_err();
        assert_eq!(err, "status 500 Internal Server Error");
    }
}
