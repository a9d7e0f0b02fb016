//! Cache: a route's response caching, through pingora-cache's hooks. The route's rules
//! decide whether the request uses the cache and what its key is
//! ([`sluice_core::edge::cache`]); RFC 9111's freshness, `Vary`, the `Authorization`
//! rules and the stale windows are pingora-cache's; the store is
//! [`crate::edge::cache_store`]. Each answer says what the cache did in `Cache-Status`
//! (RFC 9211) and in `sluice_cache_requests_total{route, outcome}`.
//!
//! The cache runs after the request phase, so authentication, limits and the breaker
//! have had their say before a hit is served.

use std::time::{Duration, SystemTime};

use http::header;
use pingora::cache::cache_control::{CacheControl, Cacheable, InterpretCacheControl};
use pingora::cache::filters::{calculate_serve_stale_durations, resp_cacheable};
use pingora::cache::key::HashBinary;
use pingora::cache::{
    CacheKey, CacheMeta, CacheMetaDefaults, CacheOptionOverrides, CachePhase, NoCacheReason, RespCacheable,
    VarianceBuilder,
};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use sluice_core::edge::cache::{key_text, request_bypass, Bypass, CacheStatus, KeyInput, Outcome};
use sluice_core::edge::compile::CacheRules;

use super::ingress::request_host;
use super::Ctx;

/// What the cache did for this request, for its `Cache-Status`.
#[derive(Debug, Default)]
pub struct State {
    /// The request does not use the cache, and why.
    bypass: Option<Bypass>,
    /// The cache was enabled for the request.
    enabled: bool,
    /// The upstream's answer was found cacheable (and is being stored).
    stored: bool,
}

/// `Cache-Status` (RFC 9211).
pub const CACHE_STATUS: http::HeaderName = http::HeaderName::from_static("cache-status");

fn rules(ctx: &Ctx) -> Option<&CacheRules> {
    ctx.route_entry()?.responses.as_deref()?.cache.as_ref()
}

/// `request_cache_filter`: turns the cache on for a request on a caching route, unless
/// the request bypasses it.
pub fn request(session: &mut Session, ctx: &mut Ctx) {
    let (bypass, lock_timeout, max_object) = {
        let Some(rules) = rules(ctx) else { return };
        let Some(snap) = ctx.snapshot.as_ref() else { return };
        let req = session.req_header();
        let bypass = request_bypass(
            &req.method,
            &req.headers,
            ctx.filter.identity.is_some(),
            rules.cache_authenticated,
        );
        (bypass, snap.config.cache.lock_timeout, rules.max_object_size)
    };
    let state = ctx.http.get_or_insert_with(Default::default);
    let cache = state.cache.get_or_insert_with(State::default);
    if bypass.is_some() {
        cache.bypass = bypass;
        return;
    }
    // Made (and sized) when a config with a caching route was published.
    let Some(c) = crate::edge::cache_store::existing() else {
        return;
    };
    let mut overrides = CacheOptionOverrides::default();
    overrides.wait_timeout = Some(lock_timeout);
    session
        .cache
        .enable(&c.store, Some(&c.lru), None, Some(&*c.lock), Some(overrides));
    session
        .cache
        .set_max_file_size_bytes(usize::try_from(max_object).unwrap_or(usize::MAX));
    cache.enabled = true;
}

/// `cache_key_callback`: the route's key over the request.
pub fn key(session: &Session, ctx: &Ctx) -> Result<CacheKey> {
    let rules = rules(ctx).ok_or_else(|| Error::explain(InternalError, "cache key without cache rules"))?;
    let req = session.req_header();
    // The edge's one normalised view: `normalize` wrote the normalised path and host
    // back into the request, so this is what routing saw and the upstream gets, never
    // the raw target (`/a/../b` and `/%62` share `/b`'s entry).
    let host = request_host(req).map(|h| h.rsplit_once(':').map_or(h, |(a, _)| a));
    let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
    let text = key_text(
        &rules.key,
        &KeyInput {
            scheme: if tls { "https" } else { "http" },
            host,
            path: req.uri.path(),
            query: req.uri.query(),
            headers: &req.headers,
            consumer: ctx.filter.identity.as_ref().map(|i| &*i.consumer),
        },
    );
    Ok(CacheKey::new(text, ""))
}

fn no_default_freshness(_: http::StatusCode) -> Option<Duration> {
    None
}

/// `response_cache_filter`: whether the upstream's answer is stored, by RFC 9111
/// (pingora-cache's rules) and the route's own: its default freshness for answers
/// that give none, its stale windows, and no `Set-Cookie` unless allowed.
pub fn response(session: &Session, resp: &ResponseHeader, ctx: &mut Ctx) -> RespCacheable {
    let verdict = decide(session, resp, ctx);
    if let Some(state) = ctx.http.as_mut().and_then(|s| s.cache.as_mut()) {
        state.stored = verdict.is_cacheable();
    }
    verdict
}

fn decide(session: &Session, resp: &ResponseHeader, ctx: &Ctx) -> RespCacheable {
    let Some(rules) = rules(ctx) else {
        return RespCacheable::Uncacheable(NoCacheReason::NeverEnabled);
    };
    if !rules.cache_set_cookie && resp.headers.contains_key(header::SET_COOKIE) {
        return RespCacheable::Uncacheable(NoCacheReason::Custom("set-cookie"));
    }
    let vary_star = resp
        .headers
        .get_all(header::VARY)
        .iter()
        .any(|v| v.to_str().is_ok_and(|s| s.split(',').any(|f| f.trim() == "*")));
    if vary_star {
        return RespCacheable::Uncacheable(NoCacheReason::Custom("vary-star"));
    }
    let cc = CacheControl::from_resp_headers(resp);
    let authorization = session.req_header().headers.contains_key(header::AUTHORIZATION);
    let swr = u32::try_from(rules.stale_while_revalidate.as_secs()).unwrap_or(u32::MAX);
    let sie = u32::try_from(rules.stale_if_error.as_secs()).unwrap_or(u32::MAX);
    let defaults = CacheMetaDefaults::new(no_default_freshness, swr, sie);
    let verdict = resp_cacheable(cc.as_ref(), resp.clone(), authorization, &defaults);
    if verdict.is_cacheable() {
        return verdict;
    }
    // No freshness of its own: the route's default, for the statuses it names, unless
    // `Cache-Control` or the `Authorization` rule forbids storing.
    let Some(ttl) = rules.default_ttl else {
        return verdict;
    };
    let status = resp.status.as_u16();
    let forbidden = cc.as_ref().is_some_and(|c| c.is_cacheable() == Cacheable::No)
        || (authorization && cc.as_ref().is_none_or(|c| !c.allow_caching_authorized_req()))
        || resp.headers.contains_key(header::EXPIRES)
        || cc.as_ref().is_some_and(|c| c.fresh_duration().is_some());
    if forbidden || !rules.default_ttl_statuses.contains(&status) {
        return verdict;
    }
    let (swr, sie) = calculate_serve_stale_durations(cc.as_ref(), &defaults);
    let mut header = resp.clone();
    if let Some(c) = &cc {
        c.strip_private_headers(&mut header);
    }
    let now = SystemTime::now();
    RespCacheable::Cacheable(CacheMeta::new(now + ttl, now, swr, sie, header))
}

/// `cache_vary_filter`: the variant of a stored answer this request wants, from the
/// request headers its `Vary` names.
pub fn vary(meta: &CacheMeta, req: &RequestHeader) -> Option<HashBinary> {
    let mut names: Vec<String> = Vec::new();
    for v in meta.headers().get_all(header::VARY) {
        let Ok(s) = v.to_str() else { continue };
        names.extend(
            s.split(',')
                .map(|f| f.trim().to_ascii_lowercase())
                .filter(|f| !f.is_empty()),
        );
    }
    if names.is_empty() {
        return None;
    }
    let mut b = VarianceBuilder::new();
    for name in names {
        let mut value = Vec::new();
        for (i, v) in req.headers.get_all(name.as_str()).iter().enumerate() {
            if i > 0 {
                value.push(b',');
            }
            value.extend_from_slice(v.as_bytes());
        }
        b.add_owned_name_value(name, value);
    }
    b.finalize()
}

/// `should_serve_stale`: while revalidating (`stale-while-revalidate`; pingora has
/// checked the entry's window) and when the upstream failed or answered 5xx
/// (`stale-if-error`, likewise).
pub fn serve_stale(error: Option<&Error>) -> bool {
    error.is_none_or(|e| *e.esource() == ErrorSource::Upstream)
}

/// The response head towards the client: `Cache-Status`, and the outcome counted.
pub fn response_head(session: &Session, resp: &mut ResponseHeader, ctx: &Ctx) -> Result<()> {
    let Some(state) = ctx.http.as_ref().and_then(|s| s.cache.as_ref()) else {
        return Ok(());
    };
    if resp.status.is_informational() {
        return Ok(());
    }
    let status = status(session, state, resp.status.as_u16());
    if let Some(m) = ctx.route_entry().and_then(|r| r.cache_metrics.as_ref()) {
        m.observe(status.outcome);
    }
    resp.insert_header(CACHE_STATUS, status.value())?;
    Ok(())
}

fn ttl(meta: &CacheMeta) -> i64 {
    let now = SystemTime::now();
    match meta.fresh_until().duration_since(now) {
        Ok(left) => i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
        // Stale: how long, rounded up, so a just-stale entry says -1, not 0.
        Err(e) => {
            let d = e.duration();
            -i64::try_from(d.as_secs() + u64::from(d.subsec_nanos() > 0)).unwrap_or(i64::MAX)
        }
    }
}

fn status(session: &Session, state: &State, code: u16) -> CacheStatus {
    if let Some(b) = state.bypass {
        return CacheStatus {
            detail: Some(b.as_str()),
            ..CacheStatus::new(Outcome::Bypass)
        };
    }
    let cache = &session.cache;
    let collapsed = cache.lock_duration().is_some();
    let meta_ttl = || cache.maybe_cache_meta().map(ttl);
    match cache.phase() {
        CachePhase::Hit => CacheStatus {
            ttl: meta_ttl(),
            collapsed,
            ..CacheStatus::new(Outcome::Hit)
        },
        CachePhase::Stale => CacheStatus {
            ttl: meta_ttl(),
            detail: Some("stale-if-error"),
            ..CacheStatus::new(Outcome::Stale)
        },
        CachePhase::StaleUpdating => CacheStatus {
            ttl: meta_ttl(),
            detail: Some("stale-while-revalidate"),
            ..CacheStatus::new(Outcome::Stale)
        },
        CachePhase::Expired => CacheStatus {
            fwd_status: Some(code),
            stored: state.stored,
            ..CacheStatus::new(Outcome::Expired)
        },
        CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => CacheStatus {
            fwd_status: Some(304),
            ttl: meta_ttl(),
            stored: state.stored,
            ..CacheStatus::new(Outcome::Expired)
        },
        CachePhase::Disabled(reason) if state.enabled => CacheStatus {
            fwd_status: Some(code),
            collapsed,
            detail: Some(detail(reason)),
            ..CacheStatus::new(Outcome::Miss)
        },
        _ => CacheStatus {
            fwd_status: Some(code),
            stored: state.stored,
            collapsed,
            ..CacheStatus::new(Outcome::Miss)
        },
    }
}

fn detail(reason: NoCacheReason) -> &'static str {
    match reason {
        NoCacheReason::OriginNotCache => "uncacheable",
        NoCacheReason::ResponseTooLarge | NoCacheReason::PredictedResponseTooLarge => "too-large",
        NoCacheReason::UpstreamError => "upstream-error",
        NoCacheReason::CacheLockTimeout => "lock-timeout",
        NoCacheReason::Custom(c) => c,
        _ => "not-stored",
    }
}
