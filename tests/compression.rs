//! Response compression: the coding chosen from `Accept-Encoding` with its q-values,
//! every coding decoded by real clients (curl, and Python's gzip, brotli and zstandard),
//! bodies already coded passed as they are or decoded for clients that do not take
//! them, and the head (`Vary`, weak `ETag`, no `Content-Length`) made to match.

use std::process::Command;

use crate::support::{Gateway, Origin, Reply};

/// A compressible page, well above the default `min_size` (1 KiB).
fn page() -> String {
    (0..400)
        .map(|i| format!("<p>line {i} of a page that compresses well</p>\n"))
        .collect()
}

async fn origin() -> Origin {
    Origin::start(|seen| {
        let body = page();
        match seen.path.as_str() {
            "/small" => Reply::ok("tiny", &[("content-type", "text/plain")]),
            "/png" => Reply::ok(body, &[("content-type", "image/png")]),
            "/etag" => Reply::ok(body, &[("content-type", "text/html"), ("etag", "\"v1\"")]),
            "/gzipped" => Reply::ok(
                gzip(body.as_bytes()),
                &[("content-type", "text/html"), ("content-encoding", "gzip")],
            ),
            _ => Reply::ok(body, &[("content-type", "text/html; charset=utf-8")]),
        }
    })
    .await
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

async fn gateway(origin: &Origin, route_extra: &str) -> Gateway {
    Gateway::builder(&format!(
        r#"
listeners: [{{name: web, listen: "{{{{http}}}}", compression: {{}}}}]
upstreams: [{{id: o, endpoints: [{{address: "{}"}}]}}]
routes:
  - {{id: r, upstream: o{route_extra}}}
"#,
        origin.addr()
    ))
    .start()
    .await
}

async fn fetch(
    gw: &Gateway,
    path: &str,
    accept_encoding: Option<&str>,
) -> (reqwest::header::HeaderMap, Vec<u8>) {
    let mut req = gw.request(reqwest::Method::GET, path);
    if let Some(ae) = accept_encoding {
        req = req.header("accept-encoding", ae);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200, "{path} {accept_encoding:?}");
    let headers = resp.headers().clone();
    (headers, resp.bytes().await.unwrap().to_vec())
}

fn header<'a>(h: &'a reqwest::header::HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).map(|v| v.to_str().unwrap())
}

/// Decodes `body` with Python's own decoder for `coding` (the test venv's brotli and
/// zstandard, the standard library's gzip).
fn python_decode(coding: &str, body: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("body");
    std::fs::write(&input, body).unwrap();
    let script = r#"
import sys
coding, path = sys.argv[1], sys.argv[2]
data = open(path, 'rb').read()
if coding == 'gzip':
    import gzip; out = gzip.decompress(data)
elif coding == 'br':
    import brotli; out = brotli.decompress(data)
elif coding == 'zstd':
    import zstandard; out = zstandard.ZstdDecompressor().decompressobj().decompress(data)
else:
    raise SystemExit('unknown coding ' + coding)
sys.stdout.buffer.write(out)
"#;
    let out = Command::new(crate::support::kafka::python())
        .args(["-c", script, coding, input.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python could not decode {coding}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_coding_is_decoded_by_curl_and_python() {
    let o = origin().await;
    let gw = gateway(&o, "").await;
    let plain = page().into_bytes();
    for coding in ["gzip", "br", "zstd"] {
        let (h, body) = fetch(&gw, "/page", Some(coding)).await;
        assert_eq!(header(&h, "content-encoding"), Some(coding));
        assert!(header(&h, "vary")
            .unwrap()
            .to_ascii_lowercase()
            .contains("accept-encoding"));
        assert!(h.get("content-length").is_none() || body.len() < plain.len());
        assert!(
            body.len() < plain.len() / 3,
            "{coding}: {} bytes from {}",
            body.len(),
            plain.len()
        );
        assert_eq!(python_decode(coding, &body), plain, "python decoding {coding}");

        // curl asks for the one coding and decodes it itself.
        let out = Command::new("curl")
            .args([
                "-sS",
                "--compressed",
                "-H",
                &format!("accept-encoding: {coding}"),
                "-D",
                "-",
            ])
            .arg(gw.http_url("/page"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "curl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.to_ascii_lowercase()
                .contains(&format!("content-encoding: {coding}")),
            "{coding}: {head}"
        );
        assert_eq!(body.as_bytes(), plain, "curl decoding {coding}");
    }
    // Plain `curl --compressed` offers them all: the route's first choice wins.
    let out = Command::new("curl")
        .args([
            "-sS",
            "--compressed",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download} %header{content-encoding}",
        ])
        .arg(gw.http_url("/page"))
        .output()
        .unwrap();
    let report = String::from_utf8(out.stdout).unwrap();
    assert!(report.ends_with(" br"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q_values_and_identity_zero_are_honoured() {
    let o = origin().await;
    let gw = gateway(&o, "").await;
    let cases = [
        ("gzip;q=0.5, br;q=0.9, zstd;q=0.1", Some("br")),
        ("gzip;q=1, br;q=0.4", Some("gzip")),
        ("br;q=0, zstd;q=0, gzip", Some("gzip")),
        ("gzip;q=0", None),
        ("*;q=0.2, br;q=0", Some("zstd")),
        ("identity, gzip;q=0.5", None),
        ("deflate", None),
    ];
    for (ae, expect) in cases {
        let (h, body) = fetch(&gw, "/page", Some(ae)).await;
        assert_eq!(header(&h, "content-encoding"), expect, "accept-encoding: {ae}");
        if expect.is_none() {
            assert_eq!(body, page().into_bytes(), "{ae}");
        }
    }
    // Too small to be worth it, or not a listed type: as it is...
    let (h, body) = fetch(&gw, "/small", Some("gzip")).await;
    assert_eq!(
        (header(&h, "content-encoding"), body.as_slice()),
        (None, b"tiny".as_slice())
    );
    let (h, _) = fetch(&gw, "/png", Some("gzip")).await;
    assert_eq!(header(&h, "content-encoding"), None);
    // ...unless the client refuses an uncoded body.
    let (h, body) = fetch(&gw, "/small", Some("identity;q=0, gzip")).await;
    assert_eq!(header(&h, "content-encoding"), Some("gzip"));
    assert_eq!(python_decode("gzip", &body), b"tiny");
    // No Accept-Encoding: nothing is compressed.
    let (h, _) = fetch(&gw, "/page", None).await;
    assert_eq!(header(&h, "content-encoding"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coded_body_passes_as_it_is_or_is_decoded_for_clients_that_do_not_take_it() {
    let o = origin().await;
    let gw = gateway(&o, "").await;
    let coded = gzip(page().as_bytes());
    // Taken as it is: the very bytes the origin sent, not compressed twice.
    let (h, body) = fetch(&gw, "/gzipped", Some("gzip, br")).await;
    assert_eq!(header(&h, "content-encoding"), Some("gzip"));
    assert_eq!(body, coded);
    // A client that takes only br, or nothing: decoded.
    for ae in [Some("br;q=1, gzip;q=0"), None] {
        let (h, body) = fetch(&gw, "/gzipped", ae).await;
        assert_eq!(header(&h, "content-encoding"), None, "{ae:?}");
        assert_eq!(body, page().into_bytes(), "{ae:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_body_gets_a_weak_etag_and_a_route_can_turn_compression_off() {
    let o = origin().await;
    let gw = gateway(&o, "").await;
    let (h, _) = fetch(&gw, "/etag", Some("gzip")).await;
    assert_eq!(header(&h, "etag"), Some("W/\"v1\""));
    let (h, _) = fetch(&gw, "/etag", None).await;
    assert_eq!(header(&h, "etag"), Some("\"v1\""));

    let off = gateway(&o, ", compression: {enabled: false}").await;
    let (h, body) = fetch(&off, "/page", Some("gzip")).await;
    assert_eq!(header(&h, "content-encoding"), None);
    assert_eq!(body, page().into_bytes());

    let gzip_only = gateway(&o, ", compression: {codings: [gzip], levels: {gzip: 1}}").await;
    let (h, body) = fetch(&gzip_only, "/page", Some("br, zstd, gzip;q=0.1")).await;
    assert_eq!(header(&h, "content-encoding"), Some("gzip"));
    assert_eq!(python_decode("gzip", &body), page().into_bytes());
}
