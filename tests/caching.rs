//! Response caching (RFC 9111): a fresh stored answer served with `Age` and
//! `Cache-Status`, `Vary`, `private` and `no-store` honoured, one upstream request for
//! many concurrent misses (the cache lock), purges through the admin API and `sluice
//! cache purge`, `stale-if-error` while the upstream is down, and nothing cached for an
//! authenticated consumer unless the route says so.

use std::process::Command;
use std::time::Duration;

use crate::support::{Gateway, Origin, Reply};

const TOKEN: &str = "purge-s3cret";

async fn origin() -> Origin {
    Origin::start(|seen| {
        let lang = seen
            .headers
            .get("accept-language")
            .map_or("none", |v| v.to_str().unwrap())
            .to_string();
        match seen.path.as_str() {
            "/vary" => Reply::ok(
                format!("lang={lang}"),
                &[("cache-control", "max-age=60"), ("vary", "Accept-Language")],
            ),
            "/private" => Reply::ok("mine", &[("cache-control", "private, max-age=60")]),
            "/no-store" => Reply::ok("never", &[("cache-control", "no-store")]),
            "/cookie" => Reply::ok("c", &[("cache-control", "max-age=60"), ("set-cookie", "s=1")]),
            "/plain" => Reply::ok("no freshness", &[]),
            "/slow" => {
                Reply::ok("slow answer", &[("cache-control", "max-age=60")]).after(Duration::from_millis(500))
            }
            "/short" => Reply::ok(
                "short-lived",
                &[("cache-control", "max-age=1, stale-if-error=600")],
            ),
            "/swr" => Reply::ok(
                format!("version {}", seen.count),
                &[("cache-control", "max-age=1, stale-while-revalidate=600")],
            ),
            p => Reply::ok(format!("body of {p}"), &[("cache-control", "max-age=60")]),
        }
    })
    .await
}

async fn gateway(origin: &Origin, extra_routes: &str) -> Gateway {
    Gateway::builder(&format!(
        r#"
admin: {{listen: "{{{{admin}}}}", token: "{TOKEN}"}}
listeners: [{{name: web, listen: "{{{{http}}}}"}}]
upstreams: [{{id: o, endpoints: [{{address: "{}"}}]}}]
consumers:
  - {{name: alice, credentials: {{key_auth: {{keys: ["alice-key"]}}}}}}
routes:
  - {{id: cached, upstream: o, cache: {{}}}}
  - {{id: defaulted, upstream: o, match: {{path: {{prefix: /defaulted}}}}, cache: {{default_ttl: 30s}}}}
  - id: authed
    upstream: o
    match: {{path: {{prefix: /authed}}}}
    filters: [{{key_auth: {{}}}}]
    cache: {{}}
  - id: authed-cached
    upstream: o
    match: {{path: {{prefix: /per-consumer}}}}
    filters: [{{key_auth: {{}}}}]
    cache: {{cache_authenticated: true, key: [host, path, query, consumer]}}
{extra_routes}"#,
        origin.addr()
    ))
    .start()
    .await
}

struct Answer {
    status: u16,
    cache_status: String,
    age: Option<u64>,
    body: String,
}

async fn get(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = gw.request(reqwest::Method::GET, path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let h = resp.headers().clone();
    Answer {
        status: resp.status().as_u16(),
        cache_status: h
            .get("cache-status")
            .map_or(String::new(), |v| v.to_str().unwrap().to_string()),
        age: h.get("age").map(|v| v.to_str().unwrap().parse().unwrap()),
        body: resp.text().await.unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cacheable_answer_is_served_from_the_cache_with_age_and_cache_status() {
    let o = origin().await;
    let gw = gateway(&o, "").await;
    let first = get(&gw, "/doc", &[]).await;
    assert_eq!((first.status, first.body.as_str()), (200, "body of /doc"));
    assert!(
        first.cache_status.starts_with("sluice; fwd=uri-miss"),
        "{}",
        first.cache_status
    );
    assert!(first.cache_status.contains("stored"), "{}", first.cache_status);
    let second = get(&gw, "/doc", &[]).await;
    assert_eq!(second.body, "body of /doc");
    assert!(
        second.cache_status.starts_with("sluice; hit; ttl="),
        "{}",
        second.cache_status
    );
    assert!(second.age.is_some_and(|a| a <= 60), "Age: {:?}", second.age);
    assert_eq!(o.hits("/doc"), 1);
    // A different query is a different key.
    get(&gw, "/doc?v=2", &[]).await;
    assert_eq!(o.hits("/doc"), 2);
    // HEAD is answered from the same entry.
    let head = gw.request(reqwest::Method::HEAD, "/doc").send().await.unwrap();
    assert!(head.headers()["cache-status"].to_str().unwrap().contains("hit"));
    assert_eq!(o.hits("/doc"), 2);

    // An answer without freshness is stored only where the route gives a default.
    get(&gw, "/plain", &[]).await;
    let again = get(&gw, "/plain", &[]).await;
    assert!(
        again.cache_status.contains("fwd=uri-miss"),
        "{}",
        again.cache_status
    );
    assert_eq!(o.hits("/plain"), 2);
    get(&gw, "/defaulted/plain", &[]).await;
    let again = get(&gw, "/defaulted/plain", &[]).await;
    assert!(again.cache_status.contains("hit"), "{}", again.cache_status);
    assert_eq!(o.hits("/defaulted/plain"), 1);

    let m = gw
        .metrics_when(Duration::from_secs(5), |m| {
            m.value(
                "sluice_cache_requests_total",
                &[("route", "cached"), ("outcome", "hit")],
            ) >= 2.0
        })
        .await;
    assert!(
        m.value(
            "sluice_cache_requests_total",
            &[("route", "cached"), ("outcome", "hit")]
        ) >= 2.0
    );
    assert!(
        m.value(
            "sluice_cache_requests_total",
            &[("route", "cached"), ("outcome", "miss")]
        ) >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_private_no_store_and_set_cookie_are_honoured() {
    let o = origin().await;
    let gw = gateway(&o, "").await;
    let de = get(&gw, "/vary", &[("accept-language", "de")]).await;
    let fr = get(&gw, "/vary", &[("accept-language", "fr")]).await;
    assert_eq!((de.body.as_str(), fr.body.as_str()), ("lang=de", "lang=fr"));
    let de2 = get(&gw, "/vary", &[("accept-language", "de")]).await;
    let fr2 = get(&gw, "/vary", &[("accept-language", "fr")]).await;
    assert_eq!((de2.body.as_str(), fr2.body.as_str()), ("lang=de", "lang=fr"));
    assert!(de2.cache_status.contains("hit") && fr2.cache_status.contains("hit"));
    assert_eq!(o.hits("/vary"), 2);

    for path in ["/private", "/no-store", "/cookie"] {
        get(&gw, path, &[]).await;
        let again = get(&gw, path, &[]).await;
        assert!(
            !again.cache_status.contains("hit"),
            "{path}: {}",
            again.cache_status
        );
        assert_eq!(o.hits(path), 2, "{path}");
    }
    // A request with Authorization is stored only when the answer allows it (public,
    // s-maxage, must-revalidate): max-age alone does not.
    get(&gw, "/with-auth", &[("authorization", "Bearer x")]).await;
    get(&gw, "/with-auth", &[("authorization", "Bearer x")]).await;
    assert_eq!(o.hits("/with-auth"), 2);
    // A client's no-store bypasses the cache.
    get(&gw, "/fresh", &[]).await;
    let bypass = get(&gw, "/fresh", &[("cache-control", "no-store")]).await;
    assert_eq!(bypass.cache_status, "sluice; fwd=bypass; detail=no-store");
    assert_eq!(o.hits("/fresh"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_cached_for_an_authenticated_consumer_unless_the_route_says_so() {
    let o = origin().await;
    let gw = gateway(&o, "").await;
    for _ in 0..2 {
        let a = get(&gw, "/authed/x", &[("apikey", "alice-key")]).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.cache_status, "sluice; fwd=bypass; detail=authenticated");
    }
    assert_eq!(o.hits("/authed/x"), 2);
    // Refused requests never reach the cache.
    assert_eq!(get(&gw, "/authed/x", &[]).await.status, 401);

    get(&gw, "/per-consumer/x", &[("apikey", "alice-key")]).await;
    let hit = get(&gw, "/per-consumer/x", &[("apikey", "alice-key")]).await;
    assert!(hit.cache_status.contains("hit"), "{}", hit.cache_status);
    assert_eq!(o.hits("/per-consumer/x"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_misses_make_one_upstream_request() {
    let o = origin().await;
    let gw = gateway(&o, "").await;
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let req = gw.request(reqwest::Method::GET, "/slow");
        tasks.push(tokio::spawn(async move {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), (200, "slow answer".to_string()));
    }
    assert_eq!(o.hits("/slow"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purges_by_key_and_prefix_through_the_admin_api_and_the_cli() {
    let o = origin().await;
    let gw = gateway(&o, "").await;
    let host = gw.http_addr().ip().to_string();
    for p in ["/a/1", "/a/2", "/b/1"] {
        get(&gw, p, &[]).await;
        assert!(get(&gw, p, &[]).await.cache_status.contains("hit"), "{p}");
    }
    let client = reqwest::Client::new();
    let purge = |body: String, token: Option<&'static str>| {
        let mut req = client.post(gw.admin_url("/api/v1/cache/purge")).body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    // The token is required.
    let denied = purge(format!(r#"{{"key": "{host}/a/1"}}"#), None).await.unwrap();
    assert_eq!(denied.status(), 401);
    let bad = purge(r#"{"key": "a", "prefix": "b"}"#.into(), Some(TOKEN))
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    let by_key = purge(format!(r#"{{"key": "{host}/a/1"}}"#), Some(TOKEN))
        .await
        .unwrap();
    assert_eq!(by_key.status(), 200);
    assert_eq!(by_key.json::<serde_json::Value>().await.unwrap()["purged"], 1);
    assert!(get(&gw, "/a/1", &[]).await.cache_status.contains("fwd=uri-miss"));
    assert!(get(&gw, "/a/2", &[]).await.cache_status.contains("hit"));

    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["cache", "purge", "--prefix", &format!("{host}/a/"), "--admin"])
        .arg(format!("http://{}", gw.admin_addr()))
        .env("SLUICE_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "purged 2 cache entries"
    );
    assert!(get(&gw, "/a/2", &[]).await.cache_status.contains("fwd=uri-miss"));
    assert!(get(&gw, "/b/1", &[]).await.cache_status.contains("hit"));
    assert_eq!((o.hits("/a/1"), o.hits("/a/2"), o.hits("/b/1")), (2, 2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_serves_the_stored_answer_while_the_upstream_is_down() {
    let mut o = origin().await;
    let gw = gateway(&o, "").await;
    let first = get(&gw, "/short", &[]).await;
    assert_eq!(first.body, "short-lived");
    o.stop();
    // Once the entry is stale (max-age=1), the failing upstream makes the gateway
    // serve it, saying so.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let last = loop {
        let a = get(&gw, "/short", &[]).await;
        if a.status == 200 && a.body == "short-lived" && a.cache_status.contains("detail=stale-if-error") {
            break a.cache_status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no stale-if-error answer within 10 s; last: {} {} {}",
            a.status,
            a.cache_status,
            a.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(last.contains("ttl=-"), "{last}");
    // Without a stored answer the upstream's failure shows.
    assert_eq!(get(&gw, "/never-stored", &[]).await.status, 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_answers_at_once_and_refreshes_in_the_background() {
    let o = origin().await;
    let gw = gateway(&o, "").await;
    assert_eq!(get(&gw, "/swr", &[]).await.body, "version 1");
    // Once stale, the stored answer is served as it is while one request refreshes it...
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let a = get(&gw, "/swr", &[]).await;
        if a.cache_status.contains("detail=stale-while-revalidate") {
            assert_eq!(a.body, "version 1");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never served stale: {}",
            a.cache_status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ...and the refreshed answer is then served from the cache.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let a = get(&gw, "/swr", &[]).await;
        if a.body == "version 2" && a.cache_status.contains("hit") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never refreshed: {} {}",
            a.body,
            a.cache_status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(o.hits("/swr"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_is_the_normalised_path_so_other_spellings_share_one_entry() {
    let o = origin().await;
    let gw = gateway(&o, "").await;
    let first = get(&gw, "/norm/key", &[]).await;
    assert_eq!(first.body, "body of /norm/key");
    assert!(first.cache_status.contains("stored"), "{}", first.cache_status);
    // Merged slashes and a percent-encoded unreserved letter are the same resource:
    // served from the one stored entry, never a second fill (or a poisoned one).
    for spelling in ["/norm//key", "/%6Eorm/key"] {
        let a = get(&gw, spelling, &[]).await;
        assert_eq!(a.body, "body of /norm/key", "{spelling}");
        assert!(
            a.cache_status.starts_with("sluice; hit"),
            "{spelling}: {}",
            a.cache_status
        );
    }
    assert_eq!(o.hits("/norm/key"), 1);
}
