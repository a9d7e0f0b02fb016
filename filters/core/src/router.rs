//! The compiled router: matches a request to a route.
//!
//! Precedence is explicit (see `docs/config.md`, "Route precedence"):
//! 1. host: an exact host beats a wildcard (longer suffix first), which beats no host;
//! 2. path: `exact` beats `regex`, which beats `prefix` (longer first), which beats none;
//! 3. more method, header and query conditions beat fewer;
//! 4. a higher `priority` wins;
//! 5. the earlier route in the config wins.
//!
//! Routes are bucketed by host so a request only tests the routes that can match its
//! host, in precedence order; the first that matches wins.

use rustc_hash::FxHashMap as HashMap;
use std::cmp::Reverse;

use http::{HeaderMap, HeaderName, Method};
use regex::Regex;
use sluice_config::model::{PathMatch, RouteConfig, ValueMatch};
use sluice_config::ConfigError;

/// What the router looks at in a request.
#[derive(Debug, Clone, Copy)]
pub struct MatchInput<'a> {
    /// Request method.
    pub method: &'a Method,
    /// Host, from `:authority` or `Host`, with or without a port.
    pub host: Option<&'a str>,
    /// Path, without the query.
    pub path: &'a str,
    /// Raw query string, without `?`.
    pub query: Option<&'a str>,
    /// Request headers.
    pub headers: &'a HeaderMap,
}

/// A successful match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteMatch {
    /// Index of the route in the config's `routes`.
    pub index: usize,
    /// Length of the matched path prefix, for `prefix` routes (used by prefix rewriting).
    pub prefix_len: Option<usize>,
}

enum PathCond {
    Any,
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

enum ValueCond {
    Exact(String),
    Regex(Regex),
    Present(bool),
}

struct HeaderCond {
    name: HeaderName,
    cond: ValueCond,
}

struct QueryCond {
    name: String,
    cond: ValueCond,
}

struct Matcher {
    index: usize,
    path: PathCond,
    methods: Vec<Method>,
    headers: Vec<HeaderCond>,
    query: Vec<QueryCond>,
}

/// An immutable, compiled router.
#[derive(Default)]
pub struct Router {
    matchers: Vec<Matcher>,
    /// Exact host (lower case) → its routes.
    exact: HashMap<String, Bucket>,
    /// Wildcard suffix (`.example.com`, lower case) → its routes. Looked up label by
    /// label from the longest suffix of the request host.
    wildcard: HashMap<String, Bucket>,
    /// Routes with no host condition.
    any_host: Bucket,
}

/// The routes of one host bucket, indexed by path kind so that a lookup costs a few hash
/// probes rather than a scan. Every list is in precedence order.
#[derive(Default)]
struct Bucket {
    /// Exact path → slots.
    exact: HashMap<String, Vec<usize>>,
    /// Regex routes, tested in order (through a `RegexSet` first when there are many).
    regex: Vec<usize>,
    regex_set: Option<regex::RegexSet>,
    /// The set's patterns, one per line: the key under which a rebuild reuses the set.
    regex_key: String,
    /// Prefix (without trailing `/`; empty for `/`) → slots.
    prefix: HashMap<String, Vec<usize>>,
    /// Routes with no path condition.
    any_path: Vec<usize>,
}

/// Above this many regex routes in a bucket, one `RegexSet` pass picks the candidates.
const REGEX_SET_THRESHOLD: usize = 4;

/// Compiled regexes and regex sets of a previous router, by pattern, for a rebuild to
/// reuse: compiling them is most of the cost of building a router.
#[derive(Default)]
struct RegexCache {
    regexes: HashMap<String, Regex>,
    sets: HashMap<String, regex::RegexSet>,
}

impl RegexCache {
    fn of(router: &Router) -> RegexCache {
        let mut cache = RegexCache::default();
        for m in &router.matchers {
            let conds = m
                .headers
                .iter()
                .map(|h| &h.cond)
                .chain(m.query.iter().map(|q| &q.cond));
            for c in conds {
                if let ValueCond::Regex(r) = c {
                    cache.regexes.insert(r.as_str().to_string(), r.clone());
                }
            }
            if let PathCond::Regex(r) = &m.path {
                cache.regexes.insert(r.as_str().to_string(), r.clone());
            }
        }
        let buckets = router
            .exact
            .values()
            .chain(router.wildcard.values())
            .chain(std::iter::once(&router.any_host));
        for b in buckets {
            if let Some(set) = &b.regex_set {
                cache.sets.insert(b.regex_key.clone(), set.clone());
            }
        }
        cache
    }

    /// `^(?:re)$`, compiled or reused.
    fn anchored(&self, re: &str) -> Result<Regex, String> {
        let full = format!("^(?:{re})$");
        if let Some(r) = self.regexes.get(&full) {
            return Ok(r.clone());
        }
        Regex::new(&full).map_err(|e| format!("invalid regex {re:?}: {e}"))
    }
}

impl Bucket {
    fn new(slots: &[usize], matchers: &[Matcher], cache: &RegexCache) -> Bucket {
        let mut b = Bucket::default();
        for &s in slots {
            match &matchers[s].path {
                PathCond::Exact(p) => b.exact.entry(p.clone()).or_default().push(s),
                PathCond::Regex(_) => b.regex.push(s),
                PathCond::Prefix(p) => b.prefix.entry(p.clone()).or_default().push(s),
                PathCond::Any => b.any_path.push(s),
            }
        }
        if b.regex.len() > REGEX_SET_THRESHOLD {
            let patterns: Vec<&str> = b
                .regex
                .iter()
                .filter_map(|&s| match &matchers[s].path {
                    PathCond::Regex(r) => Some(r.as_str()),
                    _ => None,
                })
                .collect();
            b.regex_key = patterns.join("\n");
            b.regex_set = match cache.sets.get(&b.regex_key) {
                Some(set) => Some(set.clone()),
                None => regex::RegexSet::new(patterns).ok(),
            };
        }
        b
    }

    fn find(&self, matchers: &[Matcher], input: &MatchInput<'_>) -> Option<RouteMatch> {
        let first = |slots: &[usize]| slots.iter().find_map(|&s| matchers[s].test(input));
        if let Some(m) = self.exact.get(input.path).and_then(|slots| first(slots)) {
            return Some(m);
        }
        if !self.regex.is_empty() {
            let found = match &self.regex_set {
                Some(set) => {
                    let hits = set.matches(input.path);
                    hits.iter().find_map(|i| matchers[self.regex[i]].test(input))
                }
                None => first(&self.regex),
            };
            if found.is_some() {
                return found;
            }
        }
        if !self.prefix.is_empty() {
            // Candidate prefixes on segment boundaries, longest first:
            // "/a/b/c" → "/a/b/c", "/a/b", "/a", "".
            let mut candidate = input.path;
            loop {
                if let Some(m) = self.prefix.get(candidate).and_then(|slots| first(slots)) {
                    return Some(m);
                }
                if candidate.is_empty() {
                    break;
                }
                candidate = candidate.rsplit_once('/').map_or("", |(head, _)| head);
            }
        }
        first(&self.any_path)
    }
}

fn value_cond(v: &ValueMatch, cache: &RegexCache) -> Result<ValueCond, String> {
    if let Some(e) = &v.exact {
        Ok(ValueCond::Exact(e.clone()))
    } else if let Some(r) = &v.regex {
        Ok(ValueCond::Regex(cache.anchored(r)?))
    } else {
        Ok(ValueCond::Present(v.present.unwrap_or(true)))
    }
}

impl ValueCond {
    fn test(&self, value: Option<&str>) -> bool {
        match (self, value) {
            (ValueCond::Present(want), v) => *want == v.is_some(),
            (ValueCond::Exact(e), Some(v)) => e == v,
            (ValueCond::Regex(r), Some(v)) => r.is_match(v),
            (_, None) => false,
        }
    }
}

/// Specificity key; smaller sorts first.
fn precedence(
    r: &RouteConfig,
    order: usize,
) -> (u8, usize, u8, Reverse<usize>, Reverse<usize>, Reverse<i32>, usize) {
    let m = &r.matches;
    let (host_rank, host_len) = if m.hosts.is_empty() {
        (2, 0)
    } else if m.hosts.iter().all(|h| h.starts_with("*.")) {
        (1, 0)
    } else {
        (0, 0)
    };
    let (path_rank, path_len) = match &m.path {
        Some(PathMatch::Exact(_)) => (0, 0),
        Some(PathMatch::Regex(_)) => (1, 0),
        Some(PathMatch::Prefix(p)) => (2, p.trim_end_matches('/').len()),
        None => (3, 0),
    };
    let conditions = usize::from(!m.methods.is_empty()) + m.headers.len() + m.query.len();
    (
        host_rank,
        host_len,
        path_rank,
        Reverse(path_len),
        Reverse(conditions),
        Reverse(r.priority),
        order,
    )
}

impl Router {
    /// Compiles the routes. The config must have been validated; a regex that does not
    /// compile is still reported rather than panicking, at its field path
    /// (`routes[2].match.path.regex`).
    pub fn new(routes: &[RouteConfig]) -> Result<Router, ConfigError> {
        Self::build(routes, &RegexCache::default())
    }

    /// [`Router::new`], reusing the compiled regexes and regex sets of `previous` for
    /// patterns that did not change, so that a reload that changes a few routes of many
    /// does not compile every regex again.
    pub fn rebuild(routes: &[RouteConfig], previous: &Router) -> Result<Router, ConfigError> {
        Self::build(routes, &RegexCache::of(previous))
    }

    fn build(routes: &[RouteConfig], cache: &RegexCache) -> Result<Router, ConfigError> {
        let mut order: Vec<usize> = (0..routes.len()).collect();
        order.sort_by_key(|&i| precedence(&routes[i], i));
        let mut router = Router::default();
        let mut wildcard: HashMap<String, Vec<usize>> = HashMap::default();
        let mut exact: HashMap<String, Vec<usize>> = HashMap::default();
        let mut any_host = Vec::new();
        for &i in &order {
            let r = &routes[i];
            let m = &r.matches;
            let at = |field: String| {
                move |message: String| ConfigError::at(format!("routes[{i}].match.{field}"), message)
            };
            let path = match &m.path {
                None => PathCond::Any,
                Some(PathMatch::Exact(p)) => PathCond::Exact(p.clone()),
                Some(PathMatch::Prefix(p)) => PathCond::Prefix(p.trim_end_matches('/').to_string()),
                Some(PathMatch::Regex(re)) => {
                    PathCond::Regex(cache.anchored(re).map_err(at("path.regex".into()))?)
                }
            };
            let mut methods = Vec::new();
            for (j, meth) in m.methods.iter().enumerate() {
                methods.push(
                    Method::from_bytes(meth.as_bytes())
                        .map_err(|e| at(format!("methods[{j}]"))(format!("method {meth:?}: {e}")))?,
                );
            }
            let mut headers = Vec::new();
            for (j, h) in m.headers.iter().enumerate() {
                let name = HeaderName::from_bytes(h.name.as_bytes())
                    .map_err(|e| at(format!("headers[{j}].name"))(format!("header {:?}: {e}", h.name)))?;
                headers.push(HeaderCond {
                    name,
                    cond: value_cond(h, cache).map_err(at(format!("headers[{j}].regex")))?,
                });
            }
            let mut query = Vec::new();
            for (j, q) in m.query.iter().enumerate() {
                query.push(QueryCond {
                    name: q.name.clone(),
                    cond: value_cond(q, cache).map_err(at(format!("query[{j}].regex")))?,
                });
            }
            let slot = router.matchers.len();
            router.matchers.push(Matcher {
                index: i,
                path,
                methods,
                headers,
                query,
            });
            if m.hosts.is_empty() {
                any_host.push(slot);
            }
            for h in &m.hosts {
                let h = h.to_ascii_lowercase();
                match h.strip_prefix('*') {
                    Some(suffix) => wildcard.entry(suffix.to_string()).or_default().push(slot),
                    None => exact.entry(h).or_default().push(slot),
                }
            }
        }
        let m = &router.matchers;
        router.exact = exact
            .into_iter()
            .map(|(h, slots)| (h, Bucket::new(&slots, m, cache)))
            .collect();
        router.wildcard = wildcard
            .into_iter()
            .map(|(h, slots)| (h, Bucket::new(&slots, m, cache)))
            .collect();
        router.any_host = Bucket::new(&any_host, m, cache);
        Ok(router)
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.matchers.len()
    }

    /// Whether there are no routes.
    pub fn is_empty(&self) -> bool {
        self.matchers.is_empty()
    }

    /// Finds the route for a request, honouring the documented precedence.
    pub fn find(&self, input: &MatchInput<'_>) -> Option<RouteMatch> {
        let host = input.host.map(strip_port);
        if let Some(host) = host {
            let lower;
            let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
                lower = host.to_ascii_lowercase();
                lower.as_str()
            } else {
                host
            };
            if let Some(m) = self.exact.get(host).and_then(|b| b.find(&self.matchers, input)) {
                return Some(m);
            }
            if !self.wildcard.is_empty() {
                // ".b.example.com", ".example.com", ".com" for "a.b.example.com": longest
                // suffix first, at least one label left in front.
                let mut rest = host;
                while let Some(dot) = rest.find('.') {
                    let suffix = &rest[dot..];
                    // A wildcard needs a label in front: `*.example` is not `.example`
                    // (found by fuzzing).
                    if suffix.len() < host.len() {
                        if let Some(m) = self
                            .wildcard
                            .get(suffix)
                            .and_then(|b| b.find(&self.matchers, input))
                        {
                            return Some(m);
                        }
                    }
                    rest = &rest[dot + 1..];
                }
            }
        }
        self.any_host.find(&self.matchers, input)
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map_or(host, |(h, _)| &host[..h.len() + 1]);
    }
    host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    })
}

impl Matcher {
    fn test(&self, input: &MatchInput<'_>) -> Option<RouteMatch> {
        let prefix_len = match &self.path {
            PathCond::Any => None,
            PathCond::Exact(p) => {
                if input.path != p {
                    return None;
                }
                None
            }
            PathCond::Prefix(p) => {
                let rest = input.path.strip_prefix(p.as_str())?;
                if !(rest.is_empty() || rest.starts_with('/') || p.is_empty()) {
                    return None;
                }
                Some(p.len())
            }
            PathCond::Regex(r) => {
                if !r.is_match(input.path) {
                    return None;
                }
                None
            }
        };
        if !self.methods.is_empty() && !self.methods.contains(input.method) {
            return None;
        }
        for h in &self.headers {
            let v = input.headers.get(&h.name).and_then(|v| v.to_str().ok());
            if !h.cond.test(v) {
                return None;
            }
        }
        if !self.query.is_empty() {
            let q = input.query.unwrap_or("");
            for qc in &self.query {
                let v = query_param(q, &qc.name);
                if !qc.cond.test(v.as_deref()) {
                    return None;
                }
            }
        }
        Some(RouteMatch {
            index: self.index,
            prefix_len,
        })
    }
}

/// The first value of query parameter `name` in `query`, percent-decoded.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use sluice_config::model::Config;

    fn router(routes_yaml: &str) -> Router {
        let text = format!("listeners: [{{name: w, listen: '127.0.0.1:1'}}]\nupstreams: [{{id: u, endpoints: [{{address: '127.0.0.1:2'}}]}}]\nroutes:\n{routes_yaml}");
        let c = Config::from_text(&text).unwrap();
        Router::new(&c.routes).unwrap()
    }

    fn routes(routes_yaml: &str) -> Vec<RouteConfig> {
        let text = format!("listeners: [{{name: w, listen: '127.0.0.1:1'}}]\nupstreams: [{{id: u, endpoints: [{{address: '127.0.0.1:2'}}]}}]\nroutes:\n{routes_yaml}");
        Config::from_text(&text).unwrap().routes
    }

    #[test]
    fn rebuild_reuses_unchanged_regexes_and_compiles_changed_ones() {
        let mut yaml: String = (0..8)
            .map(|i| format!("- {{id: r{i}, upstream: u, match: {{path: {{regex: '/r{i}/[0-9]+'}}}}}}\n"))
            .collect();
        yaml.push_str("- {id: h, upstream: u, match: {headers: [{name: x-t, regex: 'a+'}]}}\n");
        let first = Router::new(&routes(&yaml)).unwrap();
        let changed = yaml.replace("/r3/[0-9]+", "/r3/[a-z]+");
        let second = Router::rebuild(&routes(&changed), &first).unwrap();
        // The unchanged pattern is the same compiled regex (shared), the changed one new.
        let regex_of = |r: &Router, i: usize| match &r.matchers.iter().find(|m| m.index == i).unwrap().path {
            PathCond::Regex(re) => re.clone(),
            _ => unreachable!(),
        };
        assert_eq!(regex_of(&second, 0).as_str(), regex_of(&first, 0).as_str());
        assert_eq!(regex_of(&second, 3).as_str(), "^(?:/r3/[a-z]+)$");
        assert_eq!(find(&second, "GET", "", "/r3/abc", &[]), Some(3));
        assert_eq!(find(&second, "GET", "", "/r3/123", &[]), None);
        assert_eq!(find(&second, "GET", "", "/r5/123", &[]), Some(5));
        assert_eq!(find(&second, "GET", "", "/x", &[("x-t", "aaa")]), Some(8));
        // An identical route list reuses the whole regex set.
        let third = Router::rebuild(&routes(&changed), &second).unwrap();
        assert_eq!(third.any_host.regex_key, second.any_host.regex_key);
        assert_eq!(find(&third, "GET", "", "/r7/9", &[]), Some(7));
    }

    fn find(r: &Router, method: &str, host: &str, uri: &str, headers: &[(&str, &str)]) -> Option<usize> {
        let (path, query) = uri.split_once('?').map_or((uri, None), |(p, q)| (p, Some(q)));
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        r.find(&MatchInput {
            method: &method,
            host: Some(host),
            path,
            query,
            headers: &map,
        })
        .map(|m| m.index)
    }

    #[test]
    fn exact_host_beats_wildcard_beats_any() {
        let r = router("- {id: any, upstream: u}\n- {id: wild, upstream: u, match: {hosts: ['*.example.com']}}\n- {id: exact, upstream: u, match: {hosts: [api.example.com]}}\n");
        assert_eq!(find(&r, "GET", "api.example.com", "/", &[]), Some(2));
        assert_eq!(find(&r, "GET", "API.example.com:8080", "/", &[]), Some(2));
        assert_eq!(find(&r, "GET", "www.example.com", "/", &[]), Some(1));
        assert_eq!(find(&r, "GET", "example.com", "/", &[]), Some(0));
        assert_eq!(find(&r, "GET", "other.org", "/", &[]), Some(0));
        // Found by fuzzing: a wildcard needs a label in front of its suffix.
        assert_eq!(find(&r, "GET", ".example.com", "/", &[]), Some(0));
    }

    #[test]
    fn exact_path_beats_regex_beats_longer_prefix_beats_shorter() {
        let r = router("- {id: short, upstream: u, match: {path: {prefix: /api}}}\n- {id: long, upstream: u, match: {path: {prefix: /api/v1}}}\n- {id: re, upstream: u, match: {path: {regex: '/api/v[0-9]+/special'}}}\n- {id: ex, upstream: u, match: {path: {exact: /api/v1/special}}}\n");
        assert_eq!(find(&r, "GET", "h", "/api/v1/special", &[]), Some(3));
        assert_eq!(find(&r, "GET", "h", "/api/v2/special", &[]), Some(2));
        assert_eq!(find(&r, "GET", "h", "/api/v1/users", &[]), Some(1));
        assert_eq!(find(&r, "GET", "h", "/api/v2", &[]), Some(0));
        assert_eq!(
            find(&r, "GET", "h", "/apix", &[]),
            None,
            "prefix matches on segment boundaries"
        );
    }

    #[test]
    fn more_conditions_then_priority_then_order_break_ties() {
        let r = router("- {id: plain, upstream: u, match: {path: {prefix: /}}}\n- {id: get, upstream: u, match: {path: {prefix: /}, methods: [GET]}}\n- {id: low, upstream: u, priority: 1, match: {path: {prefix: /x}}}\n- {id: high, upstream: u, priority: 5, match: {path: {prefix: /x}}}\n");
        assert_eq!(find(&r, "GET", "h", "/", &[]), Some(1));
        assert_eq!(find(&r, "POST", "h", "/", &[]), Some(0));
        assert_eq!(find(&r, "POST", "h", "/x", &[]), Some(3));
    }

    #[test]
    fn header_and_query_conditions() {
        let r = router("- {id: base, upstream: u}\n- {id: h, upstream: u, match: {headers: [{name: x-env, exact: canary}]}}\n- {id: re, upstream: u, match: {headers: [{name: x-user, regex: 'u[0-9]+'}]}}\n- {id: q, upstream: u, match: {query: [{name: debug, exact: 'on now'}]}}\n- {id: absent, upstream: u, match: {path: {exact: /absent}, headers: [{name: x-skip, present: false}]}}\n");
        assert_eq!(find(&r, "GET", "h", "/", &[("x-env", "canary")]), Some(1));
        assert_eq!(find(&r, "GET", "h", "/", &[("x-user", "u42")]), Some(2));
        assert_eq!(
            find(&r, "GET", "h", "/", &[("x-user", "u42x")]),
            Some(0),
            "regex is anchored"
        );
        assert_eq!(find(&r, "GET", "h", "/?a=1&debug=on+now", &[]), Some(3));
        assert_eq!(find(&r, "GET", "h", "/absent", &[]), Some(4));
        assert_eq!(find(&r, "GET", "h", "/absent", &[("x-skip", "1")]), Some(0));
    }

    #[test]
    fn percent_decoding_in_query() {
        assert_eq!(query_param("a=%41b&c", "a").as_deref(), Some("Ab"));
        assert_eq!(query_param("a=%4", "a").as_deref(), Some("%4"));
        assert_eq!(query_param("c", "c").as_deref(), Some(""));
        assert_eq!(query_param("c", "d"), None);
    }
}
