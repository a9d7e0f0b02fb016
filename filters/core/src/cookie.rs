//! `Cookie` request header parsing (RFC 6265 §4.2, §5.4), pure and allocation-free.
//!
//! Lenient the way user agents and nginx's `$cookie_NAME` are: pairs are split on `;`,
//! optional whitespace around each pair is dropped, a pair without `=` or with an
//! empty name is skipped, and the value is kept as sent (quotes included). The first
//! pair with the name wins, across several `Cookie` fields in order.

use http::HeaderMap;

/// The `(name, value)` pairs of one `Cookie` field value, in order.
pub fn pairs(header: &str) -> impl Iterator<Item = (&str, &str)> {
    header.split(';').filter_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        let k = k.trim_matches([' ', '\t']);
        (!k.is_empty()).then(|| (k, v.trim_matches([' ', '\t'])))
    })
}

/// The value of cookie `name` in one `Cookie` field value.
pub fn find<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    pairs(header).find_map(|(k, v)| (k == name).then_some(v))
}

/// The value of cookie `name` in the request's `Cookie` fields (values that are not
/// visible ASCII are skipped).
pub fn get<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| find(v, name))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn finds_cookies_the_way_user_agents_send_them() {
        assert_eq!(find("a=1; b=2", "b"), Some("2"));
        assert_eq!(find("a=1;b=2;", "b"), Some("2"));
        assert_eq!(find(" a = 1 ;\tb=x=y", "b"), Some("x=y"));
        assert_eq!(find("a=1; a=2", "a"), Some("1"));
        assert_eq!(find("a; =3; b=\"q\"", "b"), Some("\"q\""));
        assert_eq!(find("a=", "a"), Some(""));
        assert_eq!(find("ab=1", "a"), None);
        assert_eq!(find("", "a"), None);
        let mut h = HeaderMap::new();
        h.append(http::header::COOKIE, "x=1".parse().unwrap());
        h.append(http::header::COOKIE, "sid=abc".parse().unwrap());
        assert_eq!(get(&h, "sid"), Some("abc"));
        assert_eq!(get(&h, "none"), None);
    }
}
