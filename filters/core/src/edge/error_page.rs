//! Error pages: a body template per media type, chosen by the request's `Accept` and
//! filled with the status, the error code, a message and the request id.
//!
//! Pure. The gateway's one error-to-status mapping decides the status and the code; a
//! route's or listener's pages only decide what the body of that answer looks like.
//!
//! Templates name values in double braces: `{{status}}` (`503`), `{{reason}}`
//! (`Service Unavailable`), `{{code}}` (`circuit_open`, or `upstream_status` for a
//! replaced upstream answer), `{{message}}` and `{{request_id}}`. Each value is escaped
//! for the page's type: HTML escaping for `text/html` (and other `*/html`, `*/xml`
//! types), JSON string escaping for `*/json` and `*+json`, none for the rest.

use std::fmt::Write as _;

/// A template: literal text and named values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
    escape: Escape,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Value(Value),
}

/// A value a template can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value {
    /// `{{status}}`: the status code.
    Status,
    /// `{{reason}}`: the status's reason phrase.
    Reason,
    /// `{{code}}`: the gateway's error code.
    Code,
    /// `{{message}}`: the message for the client.
    Message,
    /// `{{request_id}}`: the request id.
    RequestId,
}

impl Value {
    /// Every value, with its name in a template.
    pub const ALL: [(&'static str, Value); 5] = [
        ("status", Value::Status),
        ("reason", Value::Reason),
        ("code", Value::Code),
        ("message", Value::Message),
        ("request_id", Value::RequestId),
    ];
}

/// How values are escaped in a page of some media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// `&<>"'` as character references.
    Html,
    /// As inside a JSON string.
    Json,
    /// As they are.
    None,
}

impl Escape {
    /// The escaping for a page of `content_type`.
    pub fn for_type(content_type: &str) -> Escape {
        let media = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if media.ends_with("/json") || media.ends_with("+json") {
            Escape::Json
        } else if media.ends_with("/html") || media.ends_with("/xml") || media.ends_with("+xml") {
            Escape::Html
        } else {
            Escape::None
        }
    }
}

/// A template that does not parse: the message names the place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError(pub String);

impl std::fmt::Display for TemplateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TemplateError {}

impl Template {
    /// Parses `text` for a page of `content_type`. An unknown `{{name}}` or an unclosed
    /// `{{` is an error; single braces are text.
    pub fn parse(text: &str, content_type: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 2..];
            let close = after.find("}}").ok_or_else(|| {
                TemplateError(format!(
                    "`{{{{` at byte {} is never closed",
                    text.len() - rest.len() + open
                ))
            })?;
            let name = after[..close].trim();
            let value = Value::ALL
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| *v)
                .ok_or_else(|| {
                    TemplateError(format!(
                        "unknown value `{{{{{name}}}}}`; expected one of status, reason, code, message, request_id"
                    ))
                })?;
            parts.push(Part::Value(value));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template {
            parts,
            escape: Escape::for_type(content_type),
        })
    }

    /// The page for `vars`.
    pub fn render(&self, vars: &Vars<'_>) -> String {
        let mut out = String::with_capacity(256);
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Value(v) => {
                    let status;
                    let raw = match v {
                        Value::Status => {
                            status = vars.status.to_string();
                            status.as_str()
                        }
                        Value::Reason => vars.reason,
                        Value::Code => vars.code,
                        Value::Message => vars.message,
                        Value::RequestId => vars.request_id,
                    };
                    escape_into(&mut out, raw, self.escape);
                }
            }
        }
        out
    }
}

/// The values of one error.
#[derive(Debug, Clone, Copy)]
pub struct Vars<'a> {
    /// The status code.
    pub status: u16,
    /// Its reason phrase.
    pub reason: &'a str,
    /// The gateway's error code.
    pub code: &'a str,
    /// The message for the client.
    pub message: &'a str,
    /// The request id.
    pub request_id: &'a str,
}

fn escape_into(out: &mut String, s: &str, escape: Escape) {
    match escape {
        Escape::None => out.push_str(s),
        Escape::Html => {
            for c in s.chars() {
                match c {
                    '&' => out.push_str("&amp;"),
                    '<' => out.push_str("&lt;"),
                    '>' => out.push_str("&gt;"),
                    '"' => out.push_str("&quot;"),
                    '\'' => out.push_str("&#39;"),
                    c => out.push(c),
                }
            }
        }
        Escape::Json => {
            for c in s.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    c if (c as u32) < 0x20 || c == '<' || c == '>' => {
                        let _ = write!(out, "\\u{:04x}", c as u32);
                    }
                    c => out.push(c),
                }
            }
        }
    }
}

/// Which of `types` (the pages' media types, in the configured order) the request's
/// `Accept` prefers: the highest q-value of the most specific matching range (RFC 9110
/// §12.5.1), the earlier page on a tie. Without `Accept`, or when it takes none of
/// them, the first: an error is answered whatever the client accepts.
pub fn choose(types: &[&str], accept: Option<&str>) -> usize {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return 0;
    };
    let ranges: Vec<(&str, &str, u16)> = accept
        .split(',')
        .filter_map(|member| {
            let mut parts = member.split(';');
            let range = parts.next()?.trim();
            let (ty, sub) = range.split_once('/')?;
            let mut q = 1000;
            for p in parts {
                if let Some((k, v)) = p.split_once('=') {
                    if k.trim().eq_ignore_ascii_case("q") {
                        q = parse_q(v.trim())?;
                    }
                }
            }
            Some((ty.trim(), sub.trim(), q))
        })
        .collect();
    let mut best: Option<(usize, u16)> = None;
    for (i, t) in types.iter().enumerate() {
        let media = t.split(';').next().unwrap_or("").trim();
        let (ty, sub) = media.split_once('/').unwrap_or((media, ""));
        // The most specific range that matches decides this type's weight.
        let mut weight: Option<(u8, u16)> = None;
        for &(rt, rs, q) in &ranges {
            let specificity = if rt.eq_ignore_ascii_case(ty) && rs.eq_ignore_ascii_case(sub) {
                3
            } else if rt.eq_ignore_ascii_case(ty) && rs == "*" {
                2
            } else if rt == "*" && rs == "*" {
                1
            } else {
                continue;
            };
            if weight.is_none_or(|(s, _)| specificity > s) {
                weight = Some((specificity, q));
            }
        }
        let q = weight.map_or(0, |(_, q)| q);
        if q > 0 && best.is_none_or(|(_, bq)| q > bq) {
            best = Some((i, q));
        }
    }
    best.map_or(0, |(i, _)| i)
}

fn parse_q(v: &str) -> Option<u16> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut t: u16 = 0;
    for (i, b) in frac.bytes().enumerate() {
        t += u16::from(b - b'0') * [100, 10, 1][i];
    }
    match int {
        "0" => Some(t),
        "1" if t == 0 => Some(1000),
        _ => None,
    }
}

/// A set of statuses: single codes (`404`), classes (`5xx`) and ranges (`500-504`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusSet(Vec<(u16, u16)>);

impl StatusSet {
    /// Parses each item; the error names the one that does not parse.
    pub fn parse<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<StatusSet, String> {
        let mut ranges = Vec::new();
        for item in items {
            let s = item.trim();
            let code = |t: &str| t.parse::<u16>().ok().filter(|c| (100..=599).contains(c));
            let range = if let Some(class) = s.strip_suffix("xx").or_else(|| s.strip_suffix("XX")) {
                class
                    .parse::<u16>()
                    .ok()
                    .filter(|c| (1..=5).contains(c))
                    .map(|c| (c * 100, c * 100 + 99))
            } else if let Some((a, b)) = s.split_once('-') {
                code(a.trim()).zip(code(b.trim())).filter(|(a, b)| a <= b)
            } else {
                code(s).map(|c| (c, c))
            };
            ranges.push(range.ok_or_else(|| {
                format!(
                    "`{s}` is not a status: expected a code (`404`), a class (`5xx`) or a range (`500-504`)"
                )
            })?);
        }
        Ok(StatusSet(ranges))
    }

    /// Whether `status` is in the set.
    pub fn contains(&self, status: u16) -> bool {
        self.0.iter().any(|&(a, b)| (a..=b).contains(&status))
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn vars() -> Vars<'static> {
        Vars {
            status: 503,
            reason: "Service Unavailable",
            code: "circuit_open",
            message: "the upstream's circuit breaker is open",
            request_id: "<id\"1>",
        }
    }

    #[test]
    fn values_are_filled_and_escaped_for_the_page_type() {
        let t = Template::parse(
            "<h1>{{status}} {{ reason }}</h1><p>{{request_id}}</p>",
            "text/html",
        )
        .unwrap();
        assert_eq!(
            t.render(&vars()),
            "<h1>503 Service Unavailable</h1><p>&lt;id&quot;1&gt;</p>"
        );
        let t = Template::parse(
            r#"{"error":"{{code}}","id":"{{request_id}}","msg":"{{message}}"}"#,
            "application/json; charset=utf-8",
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&t.render(&vars())).unwrap();
        assert_eq!(v["id"], "<id\"1>");
        assert_eq!(v["error"], "circuit_open");
        let t = Template::parse("{{status}} {single} }}", "text/plain").unwrap();
        assert_eq!(t.render(&vars()), "503 {single} }}");
    }

    #[test]
    fn bad_templates_name_the_problem() {
        let e = Template::parse("x {{nope}}", "text/html").unwrap_err();
        assert!(e.0.contains("unknown value `{{nope}}`"), "{e}");
        let e = Template::parse("abc {{status", "text/html").unwrap_err();
        assert!(e.0.contains("byte 4"), "{e}");
    }

    #[test]
    fn accept_chooses_the_page() {
        let types = ["text/html", "application/json"];
        assert_eq!(choose(&types, None), 0);
        assert_eq!(choose(&types, Some("application/json")), 1);
        assert_eq!(choose(&types, Some("text/html;q=0.5, application/json;q=0.9")), 1);
        assert_eq!(choose(&types, Some("application/*;q=0.2, */*;q=0.1")), 1);
        assert_eq!(choose(&types, Some("*/*")), 0);
        assert_eq!(choose(&types, Some("image/png")), 0);
        assert_eq!(choose(&types, Some("text/html;q=0, */*")), 1);
        assert_eq!(choose(&types, Some("text/*, application/json;q=0.9")), 0);
    }

    #[test]
    fn status_sets() {
        let s = StatusSet::parse(["404", "5xx", "420-429"]).unwrap();
        assert!(s.contains(404) && s.contains(503) && s.contains(429) && s.contains(420));
        assert!(!s.contains(401) && !s.contains(430));
        assert!(StatusSet::parse(["6xx"]).is_err());
        assert!(StatusSet::parse(["504-500"]).is_err());
        assert!(StatusSet::parse(["abc"]).unwrap_err().contains("`abc`"));
    }
}
