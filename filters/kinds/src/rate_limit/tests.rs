use super::*;
use crate::test_support::block_on;
use governor::clock::FakeRelativeClock;
use sluice_core::filter::Identity;

fn limit(yaml: &str, clock: &FakeRelativeClock) -> RateLimit<FakeRelativeClock> {
    let spec: RateLimitSpec = serde_yaml::from_str(yaml).unwrap();
    let config = sluice_config::Config::default();
    let services = sluice_core::Services::default();
    RateLimit::new(&spec, &BuildCtx::new(&config, &services), clock.clone()).unwrap()
}

fn run(l: &RateLimit<FakeRelativeClock>, headers: &http::HeaderMap, ctx: &mut FilterCtx) -> Flow {
    let m = http::Method::GET;
    let view = RequestView {
        method: &m,
        scheme: "http",
        host: None,
        authority: None,
        path: "/",
        query: None,
        headers,
        client_ip: None,
    };
    block_on(l.on_request(&view, ctx))
}

fn admitted(l: &RateLimit<FakeRelativeClock>) -> bool {
    matches!(
        run(l, &http::HeaderMap::new(), &mut FilterCtx::default()),
        Flow::Continue
    )
}

#[test]
fn admits_the_burst_then_one_per_interval() {
    let clock = FakeRelativeClock::default();
    let l = limit("{requests: 2, per: 1s}", &clock);
    assert!(admitted(&l));
    assert!(admitted(&l));
    assert!(!admitted(&l));
    clock.advance(Duration::from_millis(500));
    assert!(admitted(&l));
    assert!(!admitted(&l));
}

#[test]
fn burst_can_differ_from_the_rate() {
    let clock = FakeRelativeClock::default();
    let l = limit("{requests: 10, per: 1s, burst: 1}", &clock);
    assert_eq!(
        l.local().check(b""),
        Outcome::Admit {
            limit: 0,
            remaining: 0,
            reset: Duration::from_millis(100)
        }
    );
    assert_eq!(
        l.local().check(b""),
        Outcome::Refuse {
            limit: 0,
            wait: Duration::from_millis(100)
        }
    );
}

#[test]
fn rejects_with_retry_after_and_ratelimit_headers() {
    let clock = FakeRelativeClock::default();
    let l = limit("{requests: 1, per: 1m}", &clock);
    let mut ctx = FilterCtx::default();
    assert!(matches!(
        run(&l, &http::HeaderMap::new(), &mut ctx),
        Flow::Continue
    ));
    assert_eq!(ctx.log.get("limit_decision"), Some("allowed"));
    // The admitted response gets the RateLimit-* headers.
    let mut resp = http::HeaderMap::new();
    l.on_response(StatusCode::OK, &mut resp, &ctx);
    assert_eq!(resp["ratelimit-limit"], "1");
    assert_eq!(resp["ratelimit-remaining"], "0");
    assert_eq!(resp["ratelimit-reset"], "60");
    let mut ctx = FilterCtx::default();
    let Flow::Reject(r) = run(&l, &http::HeaderMap::new(), &mut ctx) else {
        panic!("expected a rejection")
    };
    assert_eq!(r.kind, RejectKind::RateLimited);
    let h: http::HeaderMap = r.headers.into_iter().collect();
    assert_eq!(h["retry-after"], "60");
    assert_eq!(h["ratelimit-remaining"], "0");
    assert_eq!(h["ratelimit-reset"], "60");
    assert_eq!(ctx.log.get("limit"), Some("default"));
    assert_eq!(ctx.log.get("limit_decision"), Some("rejected"));
}

#[test]
fn several_limits_must_all_admit_and_the_refusing_one_is_named() {
    let clock = FakeRelativeClock::default();
    let l = limit(
        "{limits: [{name: burst, requests: 10, per: 1s, burst: 3}, {name: hourly, requests: 4, per: 1h}]}",
        &clock,
    );
    for _ in 0..3 {
        assert!(admitted(&l));
    }
    let mut ctx = FilterCtx::default();
    assert!(matches!(
        run(&l, &http::HeaderMap::new(), &mut ctx),
        Flow::Reject(_)
    ));
    assert_eq!(ctx.log.get("limit"), Some("burst"));
    clock.advance(Duration::from_secs(1));
    assert!(admitted(&l), "the 4th of the hour");
    let mut ctx = FilterCtx::default();
    assert!(matches!(
        run(&l, &http::HeaderMap::new(), &mut ctx),
        Flow::Reject(_)
    ));
    assert_eq!(ctx.log.get("limit"), Some("hourly"));
    // The hourly refusals consumed nothing from the burst limit after the first: the
    // burst limit alone would admit now.
}

#[test]
fn keys_by_header_and_consumer() {
    let clock = FakeRelativeClock::default();
    let l = limit(
        "{requests: 1, per: 1h, key: [consumer, header], header: x-tenant}",
        &clock,
    );
    let mut h = http::HeaderMap::new();
    h.insert("x-tenant", "acme".parse().unwrap());
    let who = |c: &str| FilterCtx {
        identity: Some(Identity {
            consumer: c.into(),
            ..Identity::default()
        }),
        ..FilterCtx::default()
    };
    assert!(matches!(run(&l, &h, &mut who("alice")), Flow::Continue));
    assert!(matches!(run(&l, &h, &mut who("alice")), Flow::Reject(_)));
    assert!(
        matches!(run(&l, &h, &mut who("bob")), Flow::Continue),
        "another consumer"
    );
    h.insert("x-tenant", "other".parse().unwrap());
    assert!(
        matches!(run(&l, &h, &mut who("alice")), Flow::Continue),
        "another tenant"
    );
    assert_eq!(l.local().keys(), 3);
}

#[test]
fn keys_by_client_ip() {
    let clock = FakeRelativeClock::default();
    let l = limit("{requests: 1, per: 1h, key: client_ip}", &clock);
    let from = |ip: &str| FilterCtx {
        client_ip: Some(ip.parse().unwrap()),
        ..FilterCtx::default()
    };
    let h = http::HeaderMap::new();
    assert!(matches!(run(&l, &h, &mut from("10.0.0.1")), Flow::Continue));
    assert!(matches!(run(&l, &h, &mut from("10.0.0.1")), Flow::Reject(_)));
    assert!(matches!(run(&l, &h, &mut from("::1")), Flow::Continue));
}

#[test]
fn distinct_keys_past_the_cap_share_one_overflow_bucket() {
    let clock = FakeRelativeClock::default();
    let l = limit("{requests: 2, per: 1h, header: x-k, max_keys: 100}", &clock);
    let mut admitted_new = 0;
    for i in 0..10_000 {
        let mut h = http::HeaderMap::new();
        h.insert("x-k", HeaderValue::from(i));
        if matches!(run(&l, &h, &mut FilterCtx::default()), Flow::Continue) {
            admitted_new += 1;
        }
    }
    assert_eq!(l.local().keys(), 100, "the store stops at its cap");
    // 100 keys with their own buckets, then one shared bucket of 2 for the rest.
    assert_eq!(admitted_new, 100 + 2);
}

#[test]
fn idle_keys_are_evicted_once_their_buckets_are_full_again() {
    let clock = FakeRelativeClock::default();
    let l = limit("{requests: 1, per: 10s, header: x-k}", &clock);
    let mut h = http::HeaderMap::new();
    h.insert("x-k", "a".parse().unwrap());
    assert!(matches!(run(&l, &h, &mut FilterCtx::default()), Flow::Continue));
    clock.advance(Duration::from_secs(5));
    assert_eq!(l.local().sweep(), 0, "a key whose bucket is not full yet stays");
    clock.advance(Duration::from_secs(6));
    assert_eq!(l.local().sweep(), 1);
    assert_eq!(l.local().keys(), 0);
}

#[test]
fn a_configured_rejection_replaces_status_and_body() {
    let clock = FakeRelativeClock::default();
    let l = limit(
        "{requests: 1, per: 1h, rejection: {status: 503, body: slow down}}",
        &clock,
    );
    assert!(admitted(&l));
    let Flow::Reject(r) = run(&l, &http::HeaderMap::new(), &mut FilterCtx::default()) else {
        panic!("expected a rejection")
    };
    let c = r.custom.unwrap();
    assert_eq!(c.status, Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(c.body.as_ref().unwrap().1, "slow down");
}

#[test]
fn spec_errors_are_named() {
    let b = |v: serde_json::Value| crate::registry::build_for_test(build, &v).err().unwrap();
    let errs = b(serde_json::json!({"requests": 1, "pre": "1s"}));
    assert!(errs[0].message.contains("unknown field `pre`"), "{errs:?}");
    assert_eq!(b(serde_json::json!({"requests": 0}))[0].path, "requests");
    assert_eq!(
        b(serde_json::json!({"limits": [{"name": "a", "requests": 1}, {"name": "a", "requests": 2}]}))[0]
            .path,
        "limits[1].name"
    );
    assert_eq!(
        b(serde_json::json!({"requests": 1, "limits": [{"requests": 2}]}))[0].path,
        "limits"
    );
    assert_eq!(
        b(serde_json::json!({"requests": 1, "redis": {"url": "nope://x"}}))[0].path,
        "redis.url"
    );
    assert_eq!(
        b(serde_json::json!({"requests": 1, "rejection": {"status": 200}}))[0].path,
        "rejection.status"
    );
    assert_eq!(
        b(serde_json::json!({"requests": 1, "key": "header"}))[0].path,
        "header"
    );
    // Validation checks a Redis spec without connecting.
    assert!(crate::registry::build_for_test(
        build,
        &serde_json::json!({"requests": 1, "redis": {"url": "redis://127.0.0.1:1"}})
    )
    .is_ok());
}

#[test]
fn the_local_fallback_enforces_this_replicas_share() {
    let spec: RateLimitSpec =
        serde_yaml::from_str("{requests: 9, per: 1h, redis: {url: 'redis://127.0.0.1:1', replicas: 3}}")
            .unwrap();
    let config = sluice_config::Config::default();
    let services = sluice_core::Services::default();
    let l = RateLimit::new(
        &spec,
        &BuildCtx::new(&config, &services),
        FakeRelativeClock::default(),
    )
    .unwrap();
    // No runtime (validation): no store, the local buckets hold the share.
    let admitted = (0..10)
        .filter(|_| matches!(l.local().check(b""), Outcome::Admit { .. }))
        .count();
    assert_eq!(admitted, 3);
}

#[test]
fn describes_its_limits_without_the_redis_url() {
    let d = describe(&serde_json::json!({"limits": [{"name": "burst", "requests": 10, "per": "1s", "burst": 20}], "key": ["client_ip"], "redis": {"url": "redis://:secret@h:6379"}})).unwrap();
    assert_eq!(d["limits"][0]["name"], "burst");
    assert_eq!(d["limits"][0]["burst"], 20);
    assert_eq!(d["key"][0], "client_ip");
    assert_eq!(d["store"], "redis");
    assert!(!d.to_string().contains("secret"));
}
