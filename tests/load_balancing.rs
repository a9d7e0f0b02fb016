//! Load balancing across the endpoints of one upstream, each endpoint a separate
//! [`TestUpstream`], observed through the `x-upstream` header and the upstreams' own
//! request counts.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::{Method, StatusCode};

use crate::support::{eventually, http_client, upstream_of, Gateway, Mode, TestUpstream};

/// A gateway with one upstream `pool` over `ups` (with `weights`, or weight 1 each) using
/// `load_balancing`, and a catch-all route to it.
async fn pool(ups: &[TestUpstream], weights: Option<&[u32]>, load_balancing: &str) -> Gateway {
    let endpoints: Vec<String> = ups
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let weight = weights.map_or(1, |w| w[i]);
            format!("{{address: \"{{{{{}}}}}\", weight: {weight}}}", u.name())
        })
        .collect();
    let yaml = format!(
        r#"
listeners: [{{name: web, listen: "{{{{http}}}}"}}]
upstreams:
- id: pool
  load_balancing: {load_balancing}
  endpoints: [{}]
routes:
- {{id: all, upstream: pool}}
"#,
        endpoints.join(", ")
    );
    let refs: Vec<&TestUpstream> = ups.iter().collect();
    Gateway::start(&yaml, &refs).await
}

/// Sends `n` sequential requests built by `req` and counts which upstream answered each.
async fn spread(n: usize, req: impl Fn(usize) -> reqwest::RequestBuilder) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for i in 0..n {
        let resp = req(i).send().await.expect("request through the gateway");
        assert_eq!(resp.status(), StatusCode::OK);
        *counts.entry(upstream_of(&resp)).or_default() += 1;
    }
    counts
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| ((*k).to_string(), *v)).collect()
}

#[tokio::test]
async fn round_robin_shares_requests_equally() {
    let ups = TestUpstream::start_many(&["a", "b", "c"]).await;
    let gw = pool(&ups, None, "round_robin").await;
    let seen = spread(30, |_| gw.request(Method::GET, "/")).await;
    assert_eq!(seen, counts(&[("a", 10), ("b", 10), ("c", 10)]));
    assert_eq!(
        ups.iter().map(TestUpstream::requests).collect::<Vec<_>>(),
        [10, 10, 10]
    );
}

#[tokio::test]
async fn weighted_round_robin_gives_exact_shares_and_skips_weight_zero() {
    let ups = TestUpstream::start_many(&["a", "b", "c", "d"]).await;
    let gw = pool(&ups, Some(&[5, 3, 2, 0]), "weighted_round_robin").await;

    let first = spread(10, |_| gw.request(Method::GET, "/")).await;
    assert_eq!(
        first,
        counts(&[("a", 5), ("b", 3), ("c", 2)]),
        "exact within one cycle of 10"
    );
    let rest = spread(90, |_| gw.request(Method::GET, "/")).await;
    assert_eq!(rest, counts(&[("a", 45), ("b", 27), ("c", 18)]));
    assert_eq!(ups[3].requests(), 0, "weight 0 drains the endpoint");
}

#[tokio::test]
async fn least_request_avoids_the_endpoint_with_requests_in_flight() {
    let ups = TestUpstream::start_many(&["a", "b", "c"]).await;
    let [a, b, c] = [&ups[0], &ups[1], &ups[2]];
    let gw = pool(&ups, None, "least_request").await;
    a.set_mode(Mode::Delay(Duration::from_secs(3))).await;

    // Send requests one at a time until one is held by the slow endpoint `a`.
    let mut background = Vec::new();
    for sent in 1..=40 {
        if a.in_flight() > 0 {
            break;
        }
        background.push(tokio::spawn(gw.request(Method::GET, "/slow").send()));
        eventually(
            Duration::from_secs(5),
            "the request to reach an endpoint",
            || async { a.requests() + b.requests() + c.requests() == sent },
        )
        .await;
    }
    assert_eq!(a.in_flight(), 1, "one request is in flight at the slow endpoint");

    // One kept-alive connection: the gateway finishes each request (and its in-flight
    // count) before it reads the next from the same connection.
    let client = http_client();
    let held = a.requests();
    let seen = spread(20, |_| client.get(gw.http_url("/fast"))).await;
    assert_eq!(
        a.requests(),
        held,
        "no new request went to the busy endpoint: {seen:?}"
    );
    assert_eq!(seen.values().sum::<usize>(), 20);
    assert!(
        a.in_flight() > 0,
        "the slow request was still in flight throughout"
    );

    for task in background {
        let resp = task.await.expect("join").expect("background request");
        assert_eq!(resp.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn consistent_hash_on_header_keeps_each_key_on_one_endpoint() {
    let ups = TestUpstream::start_many(&["a", "b", "c"]).await;
    let gw = pool(&ups, None, "{consistent_hash: {header: x-user}}").await;

    let mut owner = BTreeMap::new();
    for key in 0..60 {
        let seen = spread(3, |_| {
            gw.request(Method::GET, "/")
                .header("x-user", format!("user-{key}"))
        })
        .await;
        assert_eq!(seen.len(), 1, "key user-{key} stayed on one endpoint: {seen:?}");
        owner.insert(key, seen.into_keys().next().expect("one endpoint"));
    }
    let used: std::collections::BTreeSet<&String> = owner.values().collect();
    assert_eq!(used.len(), 3, "60 keys spread over all endpoints: {owner:?}");

    // Same key again later: same endpoint.
    let again = spread(1, |_| gw.request(Method::GET, "/").header("x-user", "user-7")).await;
    assert_eq!(again.keys().next(), owner.get(&7));

    // No header: the client IP is the key, so every such request lands together.
    let no_header = spread(10, |_| gw.request(Method::GET, "/")).await;
    assert_eq!(no_header.len(), 1, "{no_header:?}");
}

#[tokio::test]
async fn consistent_hash_on_cookie_keeps_each_session_on_one_endpoint() {
    let ups = TestUpstream::start_many(&["a", "b", "c"]).await;
    let gw = pool(&ups, None, "{consistent_hash: {cookie: session}}").await;

    let mut used = std::collections::BTreeSet::new();
    for key in 0..60 {
        let seen = spread(3, |i| {
            // Other cookies around it, in varying order, do not matter.
            let cookie = if i % 2 == 0 {
                format!("theme=dark; session=s{key}")
            } else {
                format!("session=s{key}; lang=en-{i}")
            };
            gw.request(Method::GET, "/").header("cookie", cookie)
        })
        .await;
        assert_eq!(seen.len(), 1, "session s{key} stayed on one endpoint: {seen:?}");
        used.extend(seen.into_keys());
    }
    assert_eq!(used.len(), 3, "60 sessions spread over all endpoints: {used:?}");
}

#[tokio::test]
async fn consistent_hash_on_client_ip_sends_one_client_to_one_endpoint() {
    let ups = TestUpstream::start_many(&["a", "b", "c"]).await;
    let gw = pool(&ups, None, "{consistent_hash: client_ip}").await;
    let seen = spread(20, |i| {
        gw.request(Method::GET, &format!("/item/{i}"))
            .header("x-user", format!("u{i}"))
    })
    .await;
    assert_eq!(
        seen.len(),
        1,
        "every request from 127.0.0.1 went to one endpoint: {seen:?}"
    );
}
