//! `sluice rollout status|pause|resume|promote|abort [ROUTE] --admin URL`: the admin
//! API's rollout calls from the command line.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use serde_json::Value;

/// How long one admin call may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Runs one rollout command against the admin API at `admin` (`http://host:port`):
/// `status` (all routes, or `route`), or a command for `route`. Prints the result and
/// returns whether the call succeeded.
pub async fn run(admin: &str, token: Option<&str>, action: &str, route: Option<&str>) -> Result<(), String> {
    let base = admin.trim_end_matches('/');
    let (method, path) = match (action, route) {
        ("status", None) => (http::Method::GET, "/api/v1/rollouts".to_string()),
        ("status", Some(r)) => (http::Method::GET, format!("/api/v1/rollouts/{}", encode(r))),
        (cmd, Some(r)) => (
            http::Method::POST,
            format!("/api/v1/rollouts/{}/{cmd}", encode(r)),
        ),
        (cmd, None) => return Err(format!("`rollout {cmd}` needs a ROUTE")),
    };
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("{base}{path}"));
    if let Some(t) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("{base}: {e}"))?;
    let client = sluice_filters::outbound::plain()?;
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>((status, body))
    };
    let (status, body) = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| format!("{base}: no answer within {TIMEOUT:?}"))?
        .map_err(|e| format!("{base}: {e}"))?;
    let json: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    if !status.is_success() {
        let why = json
            .get("error")
            .and_then(Value::as_str)
            .map_or_else(|| json.to_string(), str::to_string);
        return Err(format!("{} {why}", status.as_u16()));
    }
    match (action, route) {
        ("status", None) => print_table(&json),
        ("status", Some(_)) => println!("{}", serde_json::to_string_pretty(&json).unwrap_or_default()),
        (cmd, Some(r)) => {
            let state = json.get("state").and_then(Value::as_str).unwrap_or("?");
            println!("{cmd} sent to {r} (state now {state}; the leader carries it out within a tick)");
        }
        _ => {}
    }
    Ok(())
}

fn print_table(json: &Value) {
    let list = json
        .get("rollouts")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if list.is_empty() {
        println!("no rollouts");
        return;
    }
    println!(
        "{:<24} {:<12} {:>5} {:>7}  LAST ANALYSIS",
        "ROUTE", "STATE", "STEP", "WEIGHT"
    );
    for r in list {
        let s = |k: &str| {
            r.get(k).map_or_else(String::new, |v| {
                v.as_str().map_or_else(|| v.to_string(), str::to_string)
            })
        };
        let last = r.get("last_analysis").filter(|a| !a.is_null()).map_or_else(
            || "-".to_string(),
            |a| {
                format!(
                    "{}: {}",
                    a.get("verdict").and_then(Value::as_str).unwrap_or("?"),
                    a.get("reason").and_then(Value::as_str).unwrap_or("")
                )
            },
        );
        println!(
            "{:<24} {:<12} {:>5} {:>6}%  {last}",
            s("route"),
            s("state"),
            s("step"),
            s("weight")
        );
    }
}

/// Route ids are `[A-Za-z0-9._-]` (validated), so they go into a path as they are;
/// anything else is percent-encoded.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"._-".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
