//! `sluice cache purge (--key KEY | --prefix PREFIX) --admin URL`: the admin API's
//! cache purge from the command line.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

/// How long one admin call may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Purges the response cache of the gateway whose admin API is at `admin`
/// (`http://host:port`): the entries of `key`, or every entry whose key starts with
/// `prefix`. Prints how many went.
pub async fn purge(
    admin: &str,
    token: Option<&str>,
    key: Option<&str>,
    prefix: Option<&str>,
) -> Result<(), String> {
    let base = admin.trim_end_matches('/');
    let body = match (key, prefix) {
        (Some(k), None) => json!({ "key": k }),
        (None, Some(p)) => json!({ "prefix": p }),
        _ => return Err("give one of --key and --prefix".into()),
    };
    let mut req = http::Request::builder()
        .method(http::Method::POST)
        .uri(format!("{base}/api/v1/cache/purge"))
        .header(http::header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req
        .body(Full::new(Bytes::from(body.to_string())))
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
    let purged = json.get("purged").and_then(Value::as_u64).unwrap_or(0);
    println!("purged {purged} cache entries");
    Ok(())
}
