//! The `canary` filter with the real binary and real `stable` and `canary` upstreams
//! that tag their answers (`x-upstream`): the weighted split through the filter, header,
//! cookie, query, source and consumer rules and their precedence, sticky keys (share of
//! distinct keys, staying put, monotonic when the weight rises, keyless clients given a
//! cookie), the reason in the response header and the access log, and the per-version
//! metrics.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{eventually, http_client, upstream_entries, upstream_of, Gateway, TestUpstream};

/// What the client saw: the upstream that answered, the decision header, a cookie set.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    upstream: String,
    decision: String,
    set_cookie: Option<String>,
    request_id: String,
}

/// One override case: the request headers, the backend expected, the response header expected.
type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);

async fn send(client: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> Seen {
    let mut req = client.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request through the gateway");
    assert_eq!(resp.status(), StatusCode::OK);
    let h = |n: &str| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    Seen {
        upstream: upstream_of(&resp),
        decision: h("x-sluice-backend").unwrap_or_default(),
        set_cookie: h("set-cookie"),
        request_id: h("x-request-id").unwrap_or_default(),
    }
}

/// Sends requests `0..n`, `parallel` at a time over kept-alive connections; request `i`
/// carries the headers `headers(i)`. Returns what each one saw, in order.
async fn many(
    gw: &Gateway,
    n: usize,
    parallel: usize,
    headers: impl Fn(usize) -> Vec<(String, String)> + Send + Sync + 'static,
) -> Vec<Seen> {
    let client = http_client();
    let url = Arc::new(gw.http_url("/x"));
    let headers = Arc::new(headers);
    let tasks: Vec<_> = (0..parallel)
        .map(|t| {
            let (client, url, headers) = (client.clone(), url.clone(), headers.clone());
            tokio::spawn(async move {
                let mut out = Vec::new();
                for i in (t..n).step_by(parallel) {
                    let hs = headers(i);
                    let hs: Vec<(&str, &str)> = hs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                    out.push((i, send(&client, &url, &hs).await));
                }
                out
            })
        })
        .collect();
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(
            tokio::time::timeout(Duration::from_secs(120), t)
                .await
                .expect("bounded in time")
                .expect("task"),
        );
    }
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, s)| s).collect()
}

fn tally(seen: &[Seen]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for s in seen {
        *m.entry(s.upstream.clone()).or_default() += 1;
    }
    m
}

/// Upstreams `stable` and `canary`, route `api` over them with these weights and a
/// `canary` filter with `spec` (YAML flow), after `before` (filters before it), with
/// `server` settings.
fn config(
    ups: &[TestUpstream],
    stable: u32,
    canary: u32,
    server: &str,
    head: &str,
    before: &str,
    spec: &str,
) -> String {
    format!(
        r#"
server: {{{server}}}
listeners: [{{name: web, listen: "{{{{http}}}}"}}]
upstreams:
{}{head}
routes:
- id: api
  match: {{path: {{prefix: /}}}}
  backends: [{{upstream: stable, weight: {stable}}}, {{upstream: canary, weight: {canary}}}]
  filters:
{before}  - canary: {spec}
"#,
        upstream_entries(&[&ups[0], &ups[1]])
    )
}

fn metric(m: &crate::support::Metrics, name: &str, labels: &[(&str, &str)]) -> usize {
    m.value(name, labels) as usize
}

#[tokio::test]
async fn weights_through_the_filter_are_within_one_point_over_ten_thousand_requests_and_counted_per_version()
{
    let ups = TestUpstream::start_many(&["stable", "canary"]).await;
    let yaml = config(&ups, 90, 10, "", "", "", "{response_header: x-sluice-backend}");
    let gw = Gateway::start(&yaml, &[&ups[0], &ups[1]]).await;
    let seen = many(&gw, 10_000, 8, |_| vec![]).await;
    let t = tally(&seen);
    let (stable, canary) = (t["stable"], t["canary"]);
    assert_eq!(stable + canary, 10_000, "{t:?}");
    assert!((8_900..=9_100).contains(&stable), "{t:?}");
    assert!((900..=1_100).contains(&canary), "{t:?}");
    for s in &seen {
        assert_eq!(s.decision, format!("{}; reason=weight", s.upstream));
    }
    // Per-version figures: responses by class, the latency histogram, the decisions.
    let m = gw
        .metrics_when(Duration::from_secs(10), |m| {
            m.get(
                "sluice_backend_responses_total",
                &[("route", "api"), ("backend", "canary"), ("class", "2xx")],
            ) == Some(canary as f64)
        })
        .await;
    for (b, n) in [("stable", stable), ("canary", canary)] {
        let l = [("route", "api"), ("backend", b)];
        assert_eq!(
            metric(
                &m,
                "sluice_backend_responses_total",
                &[l[0], l[1], ("class", "2xx")]
            ),
            n
        );
        assert_eq!(
            metric(
                &m,
                "sluice_backend_responses_total",
                &[l[0], l[1], ("class", "5xx")]
            ),
            0
        );
        assert_eq!(metric(&m, "sluice_backend_request_duration_seconds_count", &l), n);
        assert_eq!(
            metric(
                &m,
                "sluice_backend_decisions_total",
                &[l[0], l[1], ("reason", "weight")]
            ),
            n
        );
        assert_eq!(
            metric(
                &m,
                "sluice_backend_decisions_total",
                &[l[0], l[1], ("reason", "header")]
            ),
            0
        );
    }
}

const ALICE_KEY: &str = "alice-secret-key-0001";

#[tokio::test]
async fn header_cookie_query_source_and_consumer_rules_override_the_weights_in_precedence_order() {
    let ups = TestUpstream::start_many(&["stable", "canary"]).await;
    let consumers = format!(
        "consumers:\n- {{name: alice, groups: [beta], credentials: {{key_auth: {{keys: [\"{ALICE_KEY}\"]}}}}}}\n- {{name: guest}}\n"
    );
    let spec = r#"
      rules:
        - {backend: canary, header: {name: x-canary}}
        - {backend: canary, header: {name: x-version, regex: "^v2(\\.|$)"}}
        - {backend: canary, cookie: {name: canary}}
        - {backend: canary, query: {name: version, exact: v2}}
        - {backend: canary, source: [10.0.0.0/8, "2001:db8::/32"]}
        - {backend: canary, groups: [beta]}
      response_header: x-sluice-backend"#;
    let yaml = config(
        &ups,
        100,
        0,
        "trusted_proxies: [127.0.0.1/32], access_log: true",
        &consumers,
        "  - auth: {methods: [{key_auth: {}}], anonymous: guest}\n",
        spec,
    );
    let gw = Gateway::start(&yaml, &[&ups[0], &ups[1]]).await;
    let client = http_client();
    let url = gw.http_url("/x?a=1");
    let cases: &[Case] = &[
        (&[], "stable", "stable; reason=weight"),
        (&[("x-canary", "always")], "canary", "canary; reason=header"),
        (&[("x-canary", "yes")], "stable", "stable; reason=weight"),
        (&[("x-version", "v2.1")], "canary", "canary; reason=header"),
        (&[("x-version", "v20")], "stable", "stable; reason=weight"),
        (
            &[("cookie", "a=b; canary=always")],
            "canary",
            "canary; reason=cookie",
        ),
        // The header's `never` beats the cookie's `always` (header > cookie).
        (
            &[("x-canary", "never"), ("cookie", "canary=always")],
            "stable",
            "stable; reason=header",
        ),
        (&[("cookie", "canary=never")], "stable", "stable; reason=cookie"),
        // The cookie's `never` beats the query (cookie > query).
        (
            &[("cookie", "canary=never"), ("x-forwarded-for", "10.9.8.7")],
            "stable",
            "stable; reason=cookie",
        ),
        (
            &[("x-forwarded-for", "10.9.8.7")],
            "canary",
            "canary; reason=source",
        ),
        (
            &[("x-forwarded-for", "2001:db8::5")],
            "canary",
            "canary; reason=source",
        ),
        (
            &[("x-forwarded-for", "192.0.2.1")],
            "stable",
            "stable; reason=weight",
        ),
        (&[("apikey", ALICE_KEY)], "canary", "canary; reason=consumer"),
        (
            &[("apikey", ALICE_KEY), ("x-canary", "never")],
            "stable",
            "stable; reason=header",
        ),
    ];
    let mut ids = Vec::new();
    for (headers, upstream, decision) in cases {
        let s = send(&client, &url, headers).await;
        assert_eq!(
            (s.upstream.as_str(), s.decision.as_str()),
            (*upstream, *decision),
            "{headers:?}"
        );
        ids.push((
            s.request_id,
            decision.split("reason=").nth(1).unwrap_or_default().to_string(),
        ));
    }
    // The query rule, alone and below the cookie.
    let q = gw.http_url("/x?b=2&version=v2");
    let s = send(&client, &q, &[]).await;
    assert_eq!(s.decision, "canary; reason=query");
    let s = send(&client, &q, &[("cookie", "canary=never")]).await;
    assert_eq!(s.decision, "stable; reason=cookie");
    let s = send(&client, &gw.http_url("/x?version=v3"), &[]).await;
    assert_eq!(s.decision, "stable; reason=weight");
    // Canary got only what the rules sent it: its weight is 0.
    let to_canary = cases.iter().filter(|c| c.1 == "canary").count() + 1;
    assert_eq!(ups[1].requests(), to_canary);
    // The reason is in every access-log line, next to the backend.
    let lines = || -> Vec<Value> {
        std::fs::read_to_string(gw.dir().join("stdout.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let want = ids.len();
    eventually(Duration::from_secs(10), "the access-log lines", || {
        let n = lines().iter().filter(|l| l["route"] == "api").count();
        async move { n >= want }
    })
    .await;
    let all = lines();
    for (id, reason) in &ids {
        let line = all
            .iter()
            .find(|l| l["request_id"] == id.as_str())
            .expect("a line per request");
        assert_eq!(line["backend_reason"], reason.as_str(), "{line}");
    }
    let m = gw.metrics().await;
    let d = |b: &str, r: &str| {
        metric(
            &m,
            "sluice_backend_decisions_total",
            &[("route", "api"), ("backend", b), ("reason", r)],
        )
    };
    assert_eq!(d("canary", "header"), 2);
    assert_eq!(d("canary", "source"), 2);
    assert_eq!(d("canary", "consumer"), 1);
    assert_eq!(d("canary", "query"), 1);
    assert_eq!(d("stable", "cookie"), 3);
}

#[tokio::test]
async fn sticky_keys_stay_put_follow_the_weight_and_stay_on_the_canary_when_its_weight_rises() {
    let ups = TestUpstream::start_many(&["stable", "canary"]).await;
    let spec = "{sticky: {key: header, name: x-user}, response_header: x-sluice-backend}";
    let gw = Gateway::start(&config(&ups, 80, 20, "", "", "", spec), &[&ups[0], &ups[1]]).await;
    let user = |i: usize| vec![("x-user".to_string(), format!("user-{i}"))];
    const KEYS: usize = 5_000;
    let first = many(&gw, KEYS, 8, user).await;
    let on_canary: Vec<bool> = first.iter().map(|s| s.upstream == "canary").collect();
    let n = on_canary.iter().filter(|c| **c).count();
    // ±2 points of 20% over 5,000 distinct keys.
    assert!((900..=1_100).contains(&n), "{n} of {KEYS} keys on the canary");
    assert!(first.iter().all(|s| s.decision.ends_with("reason=sticky")));
    // Each key stays on its version over many requests.
    let again = many(&gw, 2_000, 8, move |i| user(i % 200)).await;
    for (i, s) in again.iter().enumerate() {
        assert_eq!(s.upstream, first[i % 200].upstream, "key user-{} moved", i % 200);
    }
    // Raise the canary's weight: every key on it stays; about 40% of keys are on it now.
    gw.reload(&config(&ups, 60, 40, "", "", "", spec)).await;
    let after = many(&gw, KEYS, 8, user).await;
    for (i, s) in after.iter().enumerate() {
        if on_canary[i] {
            assert_eq!(
                s.upstream, "canary",
                "key user-{i} left the canary when its weight rose"
            );
        }
    }
    let n = after.iter().filter(|s| s.upstream == "canary").count();
    assert!(
        (1_900..=2_100).contains(&n),
        "{n} of {KEYS} keys on the canary at 40%"
    );
}

#[tokio::test]
async fn keyless_clients_get_a_cookie_and_stay_on_their_version() {
    let ups = TestUpstream::start_many(&["stable", "canary"]).await;
    let spec =
        "{sticky: {key: cookie, cookie: {max_age: 1d, same_site: lax}}, response_header: x-sluice-backend}";
    let gw = Gateway::start(&config(&ups, 50, 50, "", "", "", spec), &[&ups[0], &ups[1]]).await;
    let client = http_client();
    let url = gw.http_url("/x");
    let mut counts = BTreeMap::<String, usize>::new();
    for _ in 0..200 {
        let s = send(&client, &url, &[]).await;
        assert!(s.decision.ends_with("reason=weight"), "{s:?}");
        let cookie = s.set_cookie.clone().expect("a keyless client gets a cookie");
        assert!(cookie.starts_with("sluice_canary="), "{cookie}");
        assert!(
            cookie.contains("; Max-Age=86400") && cookie.contains("; SameSite=Lax"),
            "{cookie}"
        );
        let pair = cookie.split(';').next().unwrap_or_default().to_string();
        for _ in 0..5 {
            let again = send(&client, &url, &[("cookie", &pair)]).await;
            assert_eq!(again.upstream, s.upstream, "{pair} moved");
            assert!(again.decision.ends_with("reason=sticky"), "{again:?}");
            assert_eq!(again.set_cookie, None, "a client with a key gets no new one");
        }
        *counts.entry(s.upstream).or_default() += 1;
    }
    // New clients follow the weights (50/50 over 200: far from all on one side).
    assert!(counts.values().all(|&n| (60..=140).contains(&n)), "{counts:?}");
}
