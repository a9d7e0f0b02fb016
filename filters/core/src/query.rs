//! Query-string editing: the one function that removes a parameter from a query (a
//! credential a filter read from it, `hide_credentials`), used by the gateway's
//! upstream request and by any other caller, so every caller strips the same way.

/// `query` without any `name` parameter, matched by its exact (undecoded) name, with
/// empty pairs dropped too; `None` when `query` has no `name` parameter (nothing to
/// change). An empty result means the request has no query left.
pub fn without_param(query: &str, name: &str) -> Option<String> {
    let is = |kv: &str| kv.split_once('=').map_or(kv, |(k, _)| k) == name;
    if !query.split('&').any(is) {
        return None;
    }
    let mut kept = String::with_capacity(query.len());
    for kv in query.split('&').filter(|kv| !kv.is_empty() && !is(kv)) {
        if !kept.is_empty() {
            kept.push('&');
        }
        kept.push_str(kv);
    }
    Some(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parameter_is_removed_by_its_name_only() {
        assert_eq!(
            without_param("x=1&token=t&y=2&token=u", "token").as_deref(),
            Some("x=1&y=2")
        );
        assert_eq!(without_param("token=t", "token").as_deref(), Some(""));
        assert_eq!(without_param("token", "token").as_deref(), Some(""));
        assert_eq!(without_param("&token=t&&x", "token").as_deref(), Some("x"));
        assert_eq!(without_param("tokens=t&x", "token"), None);
        assert_eq!(without_param("", "token"), None);
    }
}
