//! Property-based fuzzing on stable Rust (proptest): the config parser and validator,
//! the router, header and cookie parsing, and the strict request-framing check.
//!
//! Each target runs for a bounded number of cases and a bounded time, so the ordinary
//! `cargo test` runs them (a few seconds each). `scripts/fuzz.sh [minutes]` runs them
//! for longer through the same code: `SLUICE_FUZZ_SECS` (time per target, default 3),
//! `SLUICE_FUZZ_CASES` (cases per target, default 20000) and `SLUICE_FUZZ_SEED` (a u64;
//! default: from the clock, printed, so a failure can be replayed). Every target prints
//! one line: `fuzz <target>: <cases> cases in <secs>s, <failures> failures (seed <seed>)`.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{
    Config as RunConfig, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner,
};
use sluice_config::Config;
use sluice_core::framing::{self, BodyFraming, HeadLimits};
use sluice_core::router::{MatchInput, Router};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Runs `prop` over values of `strategy` in rounds of 256 cases, until the case count
/// or the time bound is reached. Panics with the seed and the minimal failing input.
fn fuzz<S: Strategy>(target: &str, strategy: S, prop: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let secs = env_u64("SLUICE_FUZZ_SECS").unwrap_or(3);
    let max_cases = env_u64("SLUICE_FUZZ_CASES").unwrap_or(20_000);
    let seed = env_u64("SLUICE_FUZZ_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let mut cases = 0u64;
    let mut round = 0u64;
    while cases < max_cases && Instant::now() < deadline {
        let round_cases = 256.min(max_cases - cases) as u32;
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&seed.to_le_bytes());
        bytes[8..16].copy_from_slice(&round.to_le_bytes());
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &bytes);
        let config = RunConfig {
            cases: round_cases,
            failure_persistence: None,
            max_shrink_time: 10_000,
            ..RunConfig::default()
        };
        let mut runner = TestRunner::new_with_rng(config, rng);
        if let Err(e) = runner.run(&strategy, &prop) {
            let detail = match e {
                TestError::Fail(reason, value) => format!("{reason}; minimal input: {value:?}"),
                TestError::Abort(reason) => format!("aborted: {reason}"),
            };
            println!(
                "fuzz {target}: {cases} cases in {:.1}s, 1 failures (seed {seed}, round {round})",
                started.elapsed().as_secs_f64()
            );
            panic!("fuzz {target} failed (SLUICE_FUZZ_SEED={seed}, round {round}): {detail}");
        }
        cases += u64::from(round_cases);
        round += 1;
    }
    println!(
        "fuzz {target}: {cases} cases in {:.1}s, 0 failures (seed {seed})",
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------
// Framing

fn eol() -> impl Strategy<Value = &'static str> {
    prop_oneof![60 => Just("\r\n"), 1 => Just("\n"), 1 => Just("\r"), 1 => Just("\n\r")]
}

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::sample::select(vec!["GET", "POST", "PUT", "OPTIONS", "DELETE", "PATCH", "HEAD"]).prop_map(String::from),
        1 => prop::sample::select(vec!["CONNECT", "G(T", "get", "", "GET\t", "X-Y"]).prop_map(String::from),
        1 => "[!-~]{1,6}",
    ]
}

fn target() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(vec![
            "/", "/a?b=c", "/x/y", "*", "http://test/x", "https://test", "http://other/x", "HTTP://TEST/",
            "test:443", "/%zz", "/%41", "/a#f", "/a b", "/a\"b", "//x", "", "/\u{e9}", "/a\u{0}"
        ])
        .prop_map(String::from),
        3 => "/[ -~]{0,16}",
        1 => "[\\x00-\\x7f]{0,8}",
    ]
}

fn version() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        8 => Just(" HTTP/1.1"),
        2 => Just(" HTTP/1.0"),
        1 => prop::sample::select(vec![" HTTP/2.0", " http/1.1", " HTTP/1.1 ", "", "  HTTP/1.1", " HTTP/1.10", " HTTP/0.9"]),
    ]
}

fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        12 => prop::sample::select(vec![
            "Host", "host", "Content-Length", "content-length", "Transfer-Encoding", "transfer-encoding",
            "X-A", "Expect", "Connection", "Cookie"
        ])
        .prop_map(String::from),
        1 => prop::sample::select(vec!["Transfer-Encoding ", "X A", "X\u{1}", "", " Host", "X:Y", "\tX"]).prop_map(String::from),
        1 => "[!-~]{1,8}",
    ]
}

fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![
        12 => prop::sample::select(vec![
            "test", "TEST", "test:80", "other", "[::1]:80", "chunked", "Chunked", " chunked ", "identity, chunked",
            "gzip", "xchunked", "chunked, chunked", "5", "0", "05", "5, 5", "+5", "-1", "", "a\u{0}b",
            "100-continue", "close", "a=1; b=2", "\"chunked\"", "chunked;q=1", "18446744073709551616"
        ])
        .prop_map(String::from),
        2 => "[ -~]{0,12}",
        1 => "[\\x00-\\xff]{0,6}",
    ]
}

fn header_line() -> impl Strategy<Value = String> {
    (
        header_name(),
        prop_oneof![Just(": "), Just(":"), Just(" : "), Just(":\t")],
        header_value(),
        eol(),
        prop::option::weighted(0.05, "[ \t][a-z]{1,4}"),
    )
        .prop_map(|(n, sep, v, eol, fold)| match fold {
            Some(f) => format!("{n}{sep}{v}{eol}{f}{eol}"),
            None => format!("{n}{sep}{v}{eol}"),
        })
}

/// Request heads from a grammar of near-valid pieces, and an optional tail.
fn head() -> impl Strategy<Value = Vec<u8>> {
    (
        method(),
        prop_oneof![10 => Just(" "), 1 => Just("  "), 1 => Just("\t")],
        target(),
        version(),
        eol(),
        prop::collection::vec(header_line(), 0..6),
        eol(),
        prop::collection::vec(any::<u8>(), 0..8),
        prop::bool::weighted(0.7),
    )
        .prop_map(|(m, sp, t, v, eol1, headers, eol2, tail, host)| {
            let mut raw = format!("{m}{sp}{t}{v}{eol1}").into_bytes();
            if host {
                raw.extend_from_slice(b"Host: test\r\n");
            }
            for h in headers {
                raw.extend_from_slice(h.as_bytes());
            }
            raw.extend_from_slice(eol2.as_bytes());
            raw.extend_from_slice(&tail);
            raw
        })
}

/// When the strict check accepts a head, httparse (pingora's parser) reads the same
/// request from it, and its framing is unambiguous.
fn accepted_heads_agree_with_httparse(raw: &[u8]) -> Result<(), TestCaseError> {
    let limits = HeadLimits::default();
    let Ok(head) = framing::check_head(raw, &limits) else {
        return Ok(());
    };
    let mut headers = [httparse::EMPTY_HEADER; 256];
    let mut req = httparse::Request::new(&mut headers);
    let parsed = req.parse(raw);
    let len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        other => {
            return Err(TestCaseError::fail(format!(
                "we accepted, httparse said {other:?}"
            )))
        }
    };
    prop_assert_eq!(len, head.len, "the head ends where httparse says");
    prop_assert_eq!(req.headers.len(), head.headers);
    prop_assert_eq!(req.version, Some(u8::from(head.http11)));
    let count = |name: &str| {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .count()
    };
    let value = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
    };
    prop_assert!(count("content-length") <= 1 && count("transfer-encoding") <= 1);
    prop_assert!(
        count("content-length") + count("transfer-encoding") <= 1,
        "CL and TE together"
    );
    prop_assert!(count("host") <= 1);
    if head.http11 {
        prop_assert_eq!(count("host"), 1);
    }
    match head.body {
        BodyFraming::None => prop_assert_eq!(count("content-length") + count("transfer-encoding"), 0),
        BodyFraming::Length(n) => prop_assert_eq!(
            value("content-length").and_then(|v| v.parse::<u64>().ok()),
            Some(n)
        ),
        BodyFraming::Chunked => {
            prop_assert!(value("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")))
        }
    }
    // No line ending but CRLF, no control character in names or values.
    for (i, b) in raw[..len].iter().enumerate() {
        if *b == b'\n' {
            prop_assert!(i > 0 && raw[i - 1] == b'\r', "bare LF at {}", i);
        }
        if *b == b'\r' {
            prop_assert!(raw.get(i + 1) == Some(&b'\n'), "bare CR at {}", i);
        }
    }
    for h in req.headers.iter() {
        prop_assert!(h.name.bytes().all(framing::is_tchar));
        prop_assert!(h.value.iter().all(|&b| b == b'\t' || b >= 0x20 && b != 0x7f));
    }
    // The check is a function of the head alone: what follows it does not matter.
    let mut longer = raw[..len].to_vec();
    longer.extend_from_slice(b"GET / HTTP/1.1\r\n");
    prop_assert_eq!(framing::check_head(&longer, &limits), Ok(head));
    Ok(())
}

#[test]
fn fuzz_framing_generated_heads() {
    let accepted = AtomicU64::new(0);
    fuzz("framing_heads", head(), |raw| {
        if framing::check_head(&raw, &HeadLimits::default()).is_ok() {
            accepted.fetch_add(1, Ordering::Relaxed);
        }
        accepted_heads_agree_with_httparse(&raw)
    });
    let accepted = accepted.load(Ordering::Relaxed);
    println!("fuzz framing_heads: {accepted} heads accepted (each checked against httparse)");
    assert!(accepted > 0, "the generator reaches accepted heads");
}

#[test]
fn fuzz_framing_arbitrary_bytes() {
    let bytes = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        prop::collection::vec(any::<u8>(), 0..128).prop_map(|mut v| {
            v.splice(0..0, b"GET / HTTP/1.1\r\nHost: test\r\n".iter().copied());
            v.extend_from_slice(b"\r\n\r\n");
            v
        }),
    ];
    fuzz("framing_bytes", bytes, |raw| {
        // Small limits too, so the limit paths run.
        let small = HeadLimits {
            max_head: 64,
            max_line: 16,
            max_headers: 2,
            max_uri: 8,
        };
        let _ = framing::check_head(&raw, &small);
        accepted_heads_agree_with_httparse(&raw)
    });
}

#[test]
fn fuzz_framing_parsed_header_lists() {
    let fields = prop::collection::vec((header_name(), header_value()), 0..12);
    fuzz(
        "framing_parsed",
        (fields, 0usize..10_000),
        |(fields, target_len)| {
            let limits = HeadLimits::default();
            let r = framing::check_parsed(
                fields.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())),
                target_len,
                &limits,
            );
            if let Ok(BodyFraming::Length(n)) = r {
                let cls: Vec<_> = fields
                    .iter()
                    .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .collect();
                prop_assert_eq!(cls.len(), 1);
                prop_assert_eq!(cls[0].1.trim().parse::<u64>().ok(), Some(n));
            }
            prop_assert!(r.is_err() || target_len <= limits.max_uri);
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------
// Header and cookie parsing

#[test]
fn fuzz_cookie_parsing() {
    let name = "[a-zA-Z0-9_\\-]{1,6}";
    let value = "[a-zA-Z0-9_\\-=\"]{0,6}";
    let jar = prop::collection::vec((name, value), 0..6);
    let sep = prop::sample::select(vec!["; ", ";", " ;\t", ";  "]);
    fuzz("cookie", (jar, sep, "[ -~]{0,24}"), |(jar, sep, noise)| {
        // Never panics on anything.
        let _ = sluice_core::cookie::pairs(&noise).count();
        let header = jar
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(sep);
        let parsed: Vec<(&str, &str)> = sluice_core::cookie::pairs(&header).collect();
        let want: Vec<(&str, &str)> = jar.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        prop_assert_eq!(&parsed, &want, "{}", header);
        for (k, _) in &jar {
            let first = jar.iter().find(|(k2, _)| k2 == k).map(|(_, v)| v.as_str());
            prop_assert_eq!(sluice_core::cookie::find(&header, k), first);
        }
        Ok(())
    });
}

#[test]
fn fuzz_header_values_and_sizes() {
    fuzz(
        "headers",
        ("[ -~]{0,24}", "[\\x00-\\x7f]{0,12}", "[a-z0-9=&%+]{0,24}"),
        |(host, size, query)| {
            // A Host the check accepts is a valid URI authority.
            if framing::is_valid_host(host.as_bytes()) {
                prop_assert!(host.parse::<http::uri::Authority>().is_ok(), "{}", host);
            }
            // Sizes parse or fail cleanly; what parses prints back to the same size.
            if let Ok(s) = sluice_config::limits::ByteSize::parse(&size) {
                prop_assert_eq!(sluice_config::limits::ByteSize::parse(&s.to_string()), Ok(s));
            }
            // Query parameters: never panics; a parameter found is one the query names.
            for pair in query.split('&') {
                let name = pair.split_once('=').map_or(pair, |(k, _)| k);
                if !name.contains('%') && !name.contains('+') {
                    prop_assert!(sluice_core::router::query_param(&query, name).is_some());
                }
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------
// Config parser and validator

const EXAMPLES: &[&str] = &[
    include_str!("../../../config/examples/quickstart.yaml"),
    include_str!("../../../config/examples/routing.yaml"),
    include_str!("../../../config/examples/resilience.yaml"),
    include_str!("../../../config/examples/load-balancing.yaml"),
    include_str!("../../../config/examples/rewrite-headers.yaml"),
];

/// A config whose lines are mutated: deleted, duplicated, or a value replaced.
fn mutated_config() -> impl Strategy<Value = String> {
    let tokens = prop::sample::select(vec![
        "-1",
        "0",
        "1",
        "1e9",
        "99999999999999999999",
        "null",
        "[]",
        "{}",
        "\"\"",
        "x",
        "*",
        "/a",
        "true",
        "64KiB",
        "off",
        "1s",
        "-1s",
        "10GiB",
        "{max: 1}",
        "[1, 2]",
        "\"127.0.0.1:0\"",
        "\"[::1]:80\"",
        "{prefix: /}",
        "{regex: '('}",
        "\u{0}",
        "'\\n'",
    ]);
    (
        prop::sample::select(EXAMPLES.to_vec()),
        prop::collection::vec((any::<prop::sample::Index>(), 0u8..4, tokens), 1..5),
    )
        .prop_map(|(base, edits)| {
            let mut lines: Vec<String> = base.lines().map(String::from).collect();
            for (at, op, token) in edits {
                if lines.is_empty() {
                    break;
                }
                let i = at.index(lines.len());
                match op {
                    0 => {
                        lines.remove(i);
                    }
                    1 => {
                        let l = lines[i].clone();
                        lines.insert(i, l);
                    }
                    2 => {
                        if let Some((k, _)) = lines[i].split_once(": ") {
                            lines[i] = format!("{k}: {token}");
                        }
                    }
                    _ => {
                        let indent: String = lines[i].chars().take_while(|c| *c == ' ').collect();
                        lines.insert(i, format!("{indent}limits: {{max_request_body: {token}}}"));
                    }
                }
            }
            lines.join("\n")
        })
}

fn config_round_trips_and_compiles(c: &Config) -> Result<(), TestCaseError> {
    prop_assert!(c.validate().is_ok(), "a parsed config validates");
    // Revealed: serialization redacts filter specs and secrets for views (see `secret`).
    let json = sluice_config::secret::reveal(|| serde_json::to_value(c).unwrap());
    let again = Config::from_json_value(json);
    let err = again.as_ref().err().map(|e| format!("{e:?}"));
    prop_assert_eq!(again.as_ref().ok(), Some(c), "JSON round trip: {:?}", err);
    prop_assert_eq!(c.content_hash(), c.clone().content_hash());
    // A validated config's routes always compile into a router.
    prop_assert!(Router::new(&c.routes).is_ok());
    Ok(())
}

#[test]
fn fuzz_config_mutations() {
    let valid = AtomicU64::new(0);
    fuzz(
        "config_mutations",
        mutated_config(),
        |text| match Config::from_text(&text) {
            Ok(c) => {
                valid.fetch_add(1, Ordering::Relaxed);
                config_round_trips_and_compiles(&c)
            }
            Err(errors) => {
                prop_assert!(!errors.0.is_empty(), "an error list is never empty");
                Ok(())
            }
        },
    );
    let valid = valid.load(Ordering::Relaxed);
    println!("fuzz config_mutations: {valid} mutated configs were valid (each round-tripped and compiled)");
    assert!(valid > 0, "the mutations reach valid configs");
}

#[test]
fn fuzz_config_arbitrary_text() {
    let text = prop_oneof![
        "\\PC{0,64}",
        "[a-z_:{}\\[\\], \\n\"0-9.-]{0,96}",
        Just("listeners: [{name: a, listen: \"127.0.0.1:1\"}]\n".to_string()).prop_flat_map(|base| {
            "[a-z_:{}\\[\\], \\n0-9]{0,48}".prop_map(move |tail| format!("{base}{tail}"))
        }),
    ];
    fuzz("config_text", text, |text| {
        if let Ok(c) = Config::from_text(&text) {
            config_round_trips_and_compiles(&c)?;
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------
// Router

#[derive(Debug, Clone)]
struct RouteSpec {
    host: Option<&'static str>,
    path: Option<(u8, &'static str)>,
    methods: Vec<&'static str>,
    header: Option<(&'static str, Option<&'static str>)>,
    priority: i32,
}

fn route_spec() -> impl Strategy<Value = RouteSpec> {
    (
        prop::option::of(prop::sample::select(vec![
            "a.example",
            "*.example",
            "b.a.example",
            "*.a.example",
            "A.example",
        ])),
        prop::option::of((
            0u8..3,
            prop::sample::select(vec![
                "/", "/x", "/x/", "/x/y", "/xy", "/x.*", "/[a-z]+", "/x(/.*)?",
            ]),
        )),
        prop::collection::vec(prop::sample::select(vec!["GET", "POST"]), 0..2),
        prop::option::of((
            prop::sample::select(vec!["x-v", "x-w"]),
            prop::option::of(prop::sample::select(vec!["1", "2"])),
        )),
        -1i32..2,
    )
        .prop_map(|(host, path, methods, header, priority)| RouteSpec {
            host,
            path,
            methods,
            header,
            priority,
        })
}

fn route_json(i: usize, r: &RouteSpec) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    if let Some(h) = r.host {
        m.insert("hosts".into(), serde_json::json!([h]));
    }
    if let Some((kind, p)) = r.path {
        let key = ["exact", "prefix", "regex"][kind as usize];
        m.insert("path".into(), serde_json::json!({ key: p }));
    }
    if !r.methods.is_empty() {
        m.insert("methods".into(), serde_json::json!(r.methods));
    }
    if let Some((name, value)) = r.header {
        let cond = match value {
            Some(v) => serde_json::json!({"name": name, "exact": v}),
            None => serde_json::json!({"name": name, "present": true}),
        };
        m.insert("headers".into(), serde_json::json!([cond]));
    }
    serde_json::json!({"id": format!("r{i}"), "priority": r.priority, "match": m, "upstream": "u"})
}

/// What the documentation says a route matches, written independently of the router.
fn naive_match(
    r: &RouteSpec,
    host: Option<&str>,
    path: &str,
    method: &str,
    headers: &http::HeaderMap,
) -> bool {
    if let Some(pattern) = r.host {
        let Some(host) = host else { return false };
        let host = host
            .rsplit_once(':')
            .map_or(host, |(h, _)| h)
            .to_ascii_lowercase();
        let pattern = pattern.to_ascii_lowercase();
        let ok = match pattern.strip_prefix('*') {
            Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
            None => host == pattern,
        };
        if !ok {
            return false;
        }
    }
    if let Some((kind, p)) = r.path {
        let ok = match kind {
            0 => path == p,
            1 => {
                let p = p.trim_end_matches('/');
                p.is_empty() || path == p || path.strip_prefix(p).is_some_and(|rest| rest.starts_with('/'))
            }
            _ => regex::Regex::new(&format!("^(?:{p})$")).unwrap().is_match(path),
        };
        if !ok {
            return false;
        }
    }
    if !r.methods.is_empty() && !r.methods.contains(&method) {
        return false;
    }
    if let Some((name, value)) = r.header {
        let got = headers.get(name).and_then(|v| v.to_str().ok());
        let ok = match value {
            Some(v) => got == Some(v),
            None => got.is_some(),
        };
        if !ok {
            return false;
        }
    }
    true
}

#[test]
fn fuzz_router_matches_what_the_docs_say() {
    let request = (
        prop::option::of(prop::sample::select(vec![
            "a.example",
            "A.EXAMPLE:8080",
            "b.a.example",
            "c.b.a.example",
            "example",
            "x.example",
            ".example",
            "other",
        ])),
        prop::sample::select(vec![
            "/", "/x", "/x/", "/xy", "/x/y", "/x/y/z", "/X", "", "/abc", "//x",
        ]),
        prop::sample::select(vec!["GET", "POST", "PUT"]),
        prop::option::of((
            prop::sample::select(vec!["x-v", "x-w"]),
            prop::sample::select(vec!["1", "2"]),
        )),
    );
    fuzz(
        "router",
        (
            prop::collection::vec(route_spec(), 0..8),
            prop::collection::vec(request, 1..6),
        ),
        |(specs, requests)| {
            let routes: Vec<_> = specs.iter().enumerate().map(|(i, r)| route_json(i, r)).collect();
            let routes: Vec<sluice_config::model::RouteConfig> =
                serde_json::from_value(serde_json::Value::Array(routes)).unwrap();
            let router = match Router::new(&routes) {
                Ok(r) => r,
                Err(e) => {
                    return Err(TestCaseError::fail(format!(
                        "valid routes did not compile: {e:?}"
                    )))
                }
            };
            for (host, path, method, header) in requests {
                let method = http::Method::from_bytes(method.as_bytes()).unwrap();
                let mut headers = http::HeaderMap::new();
                if let Some((k, v)) = header {
                    headers.insert(k, v.parse().unwrap());
                }
                let found = router.find(&MatchInput {
                    method: &method,
                    host,
                    path,
                    query: None,
                    headers: &headers,
                });
                let matching: Vec<usize> = specs
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| naive_match(r, host, path, method.as_str(), &headers))
                    .map(|(i, _)| i)
                    .collect();
                match found {
                    Some(m) => prop_assert!(
                        matching.contains(&m.index),
                        "router chose route {} for {:?} {} but it does not match (matching: {:?}; {:?})",
                        m.index,
                        host,
                        path,
                        matching,
                        specs
                    ),
                    None => prop_assert!(
                        matching.is_empty(),
                        "no route found for {:?} {} but {:?} match",
                        host,
                        path,
                        matching
                    ),
                }
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------
// The request-line scanner (the connection wrapper's check, before pingora's parser)

/// httparse's verdict on the request line: the errors on which pingora 0.9.1 rewrites
/// the line (`escape_illegal_request_line`) rather than refusing it.
fn pingora_would_rewrite(line: &[u8]) -> bool {
    let mut raw = line.to_vec();
    raw.extend_from_slice(b"\r\n\r\n");
    let mut headers = [httparse::EMPTY_HEADER; 4];
    let mut req = httparse::Request::new(&mut headers);
    matches!(
        req.parse(&raw),
        Err(httparse::Error::Token | httparse::Error::Version)
    )
}

#[test]
fn fuzz_request_line_scanner() {
    use sluice_core::request_line::{self, RequestLine, Verdict};
    let generated =
        (method(), target(), version(), eol()).prop_map(|(m, t, v, e)| format!("{m} {t}{v}{e}").into_bytes());
    let bytes = prop_oneof![
        3 => generated,
        1 => prop::collection::vec(any::<u8>(), 0..48),
        1 => prop::collection::vec(any::<u8>(), 0..32).prop_map(|mut v| {
            v.splice(0..0, b"GET /".iter().copied());
            v.extend_from_slice(b" HTTP/1.1\r\n");
            v
        }),
    ];
    let refused = AtomicU64::new(0);
    fuzz(
        "request_line",
        (bytes, prop::collection::vec(any::<prop::sample::Index>(), 0..4)),
        |(raw, cuts)| {
            let whole = request_line::check(&raw);
            // The verdict does not depend on how the bytes arrive.
            let mut at: Vec<usize> = cuts.iter().map(|i| i.index(raw.len() + 1)).collect();
            at.sort_unstable();
            let mut s = RequestLine::new();
            let mut v = Verdict::More;
            let mut from = 0;
            for to in at.into_iter().chain([raw.len()]) {
                v = s.feed(&raw[from..to]);
                from = to;
                if v != Verdict::More {
                    break;
                }
            }
            prop_assert_eq!(v, whole, "split verdict");
            if matches!(whole, Verdict::Refuse(_)) {
                refused.fetch_add(1, Ordering::Relaxed);
            }
            // Whatever pingora would rewrite is refused before it sees it: a line the
            // scanner passes reaches pingora's parser as the client sent it.
            if let Some(end) = raw.iter().position(|&b| b == b'\n' || b == b'\r') {
                let line = &raw[..end];
                if whole == Verdict::Pass && line != b"PRI * HTTP/2.0" {
                    prop_assert!(
                        !pingora_would_rewrite(line),
                        "passed a line pingora rewrites: {:?}",
                        line.escape_ascii().to_string()
                    );
                }
                if pingora_would_rewrite(line) && !line.starts_with(b"PRI * ") {
                    prop_assert!(
                        matches!(whole, Verdict::Refuse(_)),
                        "did not refuse {:?}",
                        line.escape_ascii().to_string()
                    );
                }
            }
            Ok(())
        },
    );
    let refused = refused.load(Ordering::Relaxed);
    println!("fuzz request_line: {refused} lines refused");
    assert!(refused > 0, "the generator reaches refused lines");
}
