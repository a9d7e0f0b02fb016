//! Path rewriting, compiled from a route's `rewrite`.

use regex::Regex;
use sluice_config::model::Rewrite;

use sluice_config::ConfigError;

/// A compiled path rewrite.
#[derive(Debug, Clone)]
pub enum PathRewrite {
    /// Replace the matched prefix (of `prefix_len` bytes) with this, possibly empty.
    Prefix(String),
    /// Replace the whole path.
    Path(String),
    /// Regex substitution over the path.
    Regex(Regex, String),
}

impl PathRewrite {
    /// Compiles a rewrite; `None` when it changes nothing. An error's path is inside the
    /// rewrite (`regex.pattern`).
    pub fn new(rw: &Rewrite) -> Result<Option<PathRewrite>, ConfigError> {
        if let Some(p) = &rw.path {
            return Ok(Some(PathRewrite::Path(p.clone())));
        }
        if let Some(re) = &rw.regex {
            let r = Regex::new(&re.pattern)
                .map_err(|e| ConfigError::at("regex.pattern", format!("invalid regex: {e}")))?;
            return Ok(Some(PathRewrite::Regex(r, re.replacement.clone())));
        }
        if rw.strip_prefix || rw.prefix.is_some() {
            return Ok(Some(PathRewrite::Prefix(rw.prefix.clone().unwrap_or_default())));
        }
        Ok(None)
    }

    /// The new path for `path`, whose first `prefix_len` bytes matched the route's prefix.
    pub fn apply(&self, path: &str, prefix_len: Option<usize>) -> String {
        match self {
            PathRewrite::Path(p) => p.clone(),
            PathRewrite::Regex(r, rep) => r.replace(path, rep.as_str()).into_owned(),
            PathRewrite::Prefix(new) => {
                let rest = path.get(prefix_len.unwrap_or(0)..).unwrap_or("");
                let joined = format!("{}{}", new.trim_end_matches('/'), rest);
                if joined.is_empty() {
                    "/".to_string()
                } else if joined.starts_with('/') {
                    joined
                } else {
                    format!("/{joined}")
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rw(yaml: &str) -> PathRewrite {
        PathRewrite::new(&serde_yaml::from_str(yaml).unwrap())
            .unwrap()
            .unwrap()
    }

    #[test]
    fn strips_and_replaces_prefixes() {
        assert_eq!(rw("{strip_prefix: true}").apply("/api/users", Some(4)), "/users");
        assert_eq!(rw("{strip_prefix: true}").apply("/api", Some(4)), "/");
        assert_eq!(
            rw("{strip_prefix: true, prefix: /v2}").apply("/api/users", Some(4)),
            "/v2/users"
        );
        assert_eq!(rw("{prefix: /}").apply("/api/users", Some(4)), "/users");
    }

    #[test]
    fn replaces_whole_path_and_regex() {
        assert_eq!(rw("{path: /fixed}").apply("/any", None), "/fixed");
        assert_eq!(
            rw("{regex: {pattern: '^/u/(\\d+)$', replacement: '/users/$1'}}").apply("/u/42", None),
            "/users/42"
        );
    }
}
