//! Composing what the sources say into one [`Config`]: the base document (the file)
//! plus the routes and upstreams of each resource set (etcd), with every error naming
//! where the faulty element came from (`sluice.yaml: routes[2].match` or
//! `/sluice/routes/api.match.path`).

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use sluice_config::validate::{ConfigError, ConfigErrors, ParseOptions};
use sluice_config::Config;

/// The objects etcd provides, as read from one revision of the store.
///
/// Values are kept as JSON values (not yet [`crate::model`] types) so that a value that
/// does not fit the model is reported by [`compose`] with the key it came from, alongside
/// every other error.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// Routes by id (the last segment of `{prefix}/routes/{id}`). Default: none.
    pub routes: BTreeMap<String, serde_json::Value>,
    /// Upstreams by id (the last segment of `{prefix}/upstreams/{id}`). Default: none.
    pub upstreams: BTreeMap<String, serde_json::Value>,
    /// Consumers by name (the last segment of `{prefix}/consumers/{name}`).
    /// Default: none.
    #[serde(default)]
    pub consumers: BTreeMap<String, serde_json::Value>,
    /// Inline listener certificates by name (`{prefix}/certificates/{name}`; the
    /// Kubernetes source's TLS Secrets). Default: none.
    #[serde(default)]
    pub certificates: BTreeMap<String, serde_json::Value>,
    /// L4 routes by id (`{prefix}/l4_routes/{id}`; the Kubernetes source's TLSRoutes,
    /// TCPRoutes and UDPRoutes). Default: none.
    #[serde(default)]
    pub l4_routes: BTreeMap<String, serde_json::Value>,
    /// Client-certificate policies by name (`{prefix}/client_auth/{name}`; the
    /// Kubernetes source's Gateway frontend validation). Default: none.
    #[serde(default)]
    pub client_auth: BTreeMap<String, serde_json::Value>,
    /// Keys that could not be read: the value is neither JSON nor YAML, the key is of an
    /// unknown or unsupported kind, or its id is invalid. The path of each error is the
    /// full etcd key (`/sluice/routes/foo`). Default: none.
    pub errors: Vec<ConfigError>,
    /// The etcd revision these objects were read at. Default: `0` (nothing read yet).
    pub revision: i64,
}

/// The kinds of resource etcd holds, in the order they are composed.
const KINDS: [&str; 6] = [
    "upstreams",
    "routes",
    "consumers",
    "certificates",
    "l4_routes",
    "client_auth",
];

/// The field that names an object of `kind`, and that its key's last segment gives:
/// `name` for consumers, `id` for the others.
pub fn id_field(kind: &str) -> &'static str {
    if matches!(kind, "consumers" | "certificates" | "client_auth") {
        "name"
    } else {
        "id"
    }
}

impl Resources {
    fn kind(&self, kind: &str) -> &BTreeMap<String, serde_json::Value> {
        match kind {
            "routes" => &self.routes,
            "consumers" => &self.consumers,
            "certificates" => &self.certificates,
            "l4_routes" => &self.l4_routes,
            "client_auth" => &self.client_auth,
            _ => &self.upstreams,
        }
    }
}

/// Where an element of the composed document came from.
enum Origin {
    /// The base document, at this index of its list.
    Base(usize),
    /// An etcd key.
    Key(String),
}

/// Builds and validates the config from the base document and, when given, the etcd
/// resources under `prefix` (e.g. `/sluice`). [`compose_all`] with at most one resource
/// set.
pub fn compose(
    base: serde_json::Value,
    base_origin: &str,
    etcd: Option<(&str, &Resources)>,
) -> Result<Config, ConfigErrors> {
    compose_all(base, base_origin, etcd.as_slice())
}

/// Builds and validates the config from the base document and the resource sets
/// (`(prefix, resources)`, e.g. etcd's under `/sluice`), in order.
///
/// Etcd's routes and upstreams are appended after the base document's. An etcd object
/// without an `id` takes the id from its key; one whose `id` differs from its key's is an
/// error at `<key>.id`. An id defined both in the base document and in etcd is an error
/// naming both places. The errors in [`Resources::errors`] are reported too.
///
/// Every error path names where the element came from: `<base_origin>: routes[2].match`
/// for the base document (`routes[2]` is the index in the base document itself) and
/// `<prefix>/routes/<id>.match.path` for etcd objects. With an empty `base_origin` the
/// base document's paths are given bare (`routes[2].match`).
///
/// An upstream left out for an error of its own (an unreadable key, an id that does not
/// match its key) is not reported again as unknown by the routes that name it. The files
/// the config names are checked too ([`crate::files::check`]).
pub fn compose_all(
    base: serde_json::Value,
    base_origin: &str,
    sets: &[(&str, &Resources)],
) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();
    let mut set_aside_upstreams = HashSet::new();
    let mut doc = match base {
        serde_json::Value::Null => serde_json::Map::new(),
        serde_json::Value::Object(map) => map,
        other => {
            return Err(ConfigErrors::one(
                base_origin,
                format!("expected a map at the top level, found {}", kind_name(&other)),
            ))
        }
    };
    // For each kind, the origin of every element of the composed list, by index.
    let mut origins: BTreeMap<&str, Vec<Origin>> = BTreeMap::new();
    for kind in KINDS {
        let base_len = doc.get(kind).and_then(|v| v.as_array()).map_or(0, Vec::len);
        origins.insert(kind, (0..base_len).map(Origin::Base).collect());
    }
    // For each kind, where every id seen so far is defined.
    let mut defined: BTreeMap<&str, BTreeMap<String, String>> = BTreeMap::new();
    for kind in KINDS {
        let ids = defined.entry(kind).or_default();
        for (i, item) in doc
            .get(kind)
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
            .enumerate()
        {
            if let Some(id) = item.get(id_field(kind)).and_then(|v| v.as_str()) {
                ids.entry(id.to_string())
                    .or_insert_with(|| base_path(base_origin, &format!("{kind}[{i}]")));
            }
        }
    }
    for (prefix, res) in sets {
        let prefix = prefix.trim_end_matches('/');
        errors.extend(res.errors.iter().cloned());
        let upstream_keys = format!("{prefix}/upstreams/");
        set_aside_upstreams.extend(
            res.errors
                .iter()
                .filter_map(|e| e.path.strip_prefix(upstream_keys.as_str()))
                .map(str::to_string),
        );
        for kind in KINDS {
            let ids = defined.entry(kind).or_default();
            let list = match doc.get_mut(kind) {
                Some(serde_json::Value::Array(list)) => list,
                // Not a list: the model reports it; etcd objects are not added to it.
                Some(_) => continue,
                None => {
                    doc.insert(kind.to_string(), serde_json::Value::Array(Vec::new()));
                    match doc.get_mut(kind) {
                        Some(serde_json::Value::Array(list)) => list,
                        _ => continue,
                    }
                }
            };
            let kind_origins = origins.entry(kind).or_default();
            for (id, value) in res.kind(kind) {
                let key = format!("{prefix}/{kind}/{id}");
                let mut value = value.clone();
                let Some(obj) = value.as_object_mut() else {
                    if kind == "upstreams" {
                        set_aside_upstreams.insert(id.clone());
                    }
                    errors.push(ConfigError {
                        path: key,
                        message: format!("expected a map, found {}", kind_name(&value)),
                    });
                    continue;
                };
                let field = id_field(kind);
                match obj.get(field) {
                    None => {
                        obj.insert(field.into(), serde_json::Value::String(id.clone()));
                    }
                    Some(serde_json::Value::String(given)) if given == id => {}
                    Some(given) => {
                        if kind == "upstreams" {
                            set_aside_upstreams.insert(id.clone());
                        }
                        errors.push(ConfigError {
                            path: format!("{key}.{field}"),
                            message: format!("{field} {given} does not match the key's {field} {id:?}"),
                        });
                        continue;
                    }
                }
                if let Some(first) = ids.get(id) {
                    errors.push(ConfigError {
                        path: format!("{key}.{field}"),
                        message: format!("duplicate {field} {id:?}: also defined at {first}"),
                    });
                    continue;
                }
                ids.insert(id.clone(), key.clone());
                list.push(value);
                kind_origins.push(Origin::Key(key));
            }
        }
    }
    let options = ParseOptions {
        set_aside_upstreams,
        extra: Some(&crate::files::check),
    };
    match Config::from_json_value_with(serde_json::Value::Object(doc), &options) {
        Ok(config) if errors.is_empty() => Ok(config),
        Ok(_) => Err(ConfigErrors(errors)),
        Err(found) => {
            errors.extend(found.0.into_iter().map(|e| ConfigError {
                path: origin_path(&origins, base_origin, &e.path),
                message: e.message,
            }));
            Err(ConfigErrors(errors))
        }
    }
}

/// `path` of the composed document as the path of where its element came from.
fn origin_path(origins: &BTreeMap<&str, Vec<Origin>>, base_origin: &str, path: &str) -> String {
    let head_end = path.find('.').unwrap_or(path.len());
    let (head, rest) = path.split_at(head_end);
    if let Some((name, index)) = head.split_once('[') {
        let index = index.trim_end_matches(']').parse::<usize>().ok();
        let origin = origins.get(name).and_then(|list| index.and_then(|i| list.get(i)));
        match origin {
            Some(Origin::Key(key)) => return format!("{key}{rest}"),
            Some(Origin::Base(i)) => return base_path(base_origin, &format!("{name}[{i}]{rest}")),
            None => {}
        }
    }
    base_path(base_origin, path)
}

/// A path of the base document, prefixed with where that document came from.
pub(crate) fn base_path(base_origin: &str, path: &str) -> String {
    match (base_origin.is_empty(), path.is_empty()) {
        (true, _) => path.to_string(),
        (false, true) => base_origin.to_string(),
        (false, false) => format!("{base_origin}: {path}"),
    }
}

/// The JSON type of a value, for error messages.
fn kind_name(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "a map",
    }
}

/// A value with every map's keys in sorted order, so equal values print equally.
pub(crate) fn canonical(value: &serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let sorted: BTreeMap<&String, serde_json::Value> =
                map.iter().map(|(k, v)| (k, canonical(v))).collect();
            serde_json::Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
        }
        serde_json::Value::Array(list) => serde_json::Value::Array(list.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use sluice_config::validate::parse_value;

    const BASE: &str = "listeners: [{name: web, listen: '127.0.0.1:8080'}]\nupstreams: [{id: u, endpoints: [{address: '127.0.0.1:9000'}]}]\nroutes:\n- {id: a, upstream: u}\n- {id: b, upstream: u}\n";

    fn resources(routes: &[(&str, &str)], upstreams: &[(&str, &str)]) -> Resources {
        let map = |items: &[(&str, &str)]| {
            items
                .iter()
                .map(|(id, text)| (id.to_string(), serde_yaml::from_str(text).unwrap()))
                .collect()
        };
        Resources {
            routes: map(routes),
            upstreams: map(upstreams),
            consumers: BTreeMap::new(),
            certificates: BTreeMap::new(),
            l4_routes: BTreeMap::new(),
            client_auth: BTreeMap::new(),
            errors: Vec::new(),
            revision: 7,
        }
    }

    #[test]
    fn consumers_from_etcd_are_named_by_their_key() {
        let mut res = resources(&[], &[]);
        res.consumers
            .insert("bob".into(), serde_yaml::from_str("{groups: [g]}").unwrap());
        res.consumers
            .insert("eve".into(), serde_yaml::from_str("{name: mallory}").unwrap());
        res.consumers
            .insert("alice".into(), serde_yaml::from_str("{}").unwrap());
        let base = format!("{BASE}consumers: [{{name: alice}}]\n");
        assert_eq!(
            errors(&base, &res),
            [
                "/sluice/consumers/alice.name: duplicate name \"alice\": also defined at sluice.yaml: consumers[0]",
                "/sluice/consumers/eve.name: name \"mallory\" does not match the key's name \"eve\"",
            ]
        );
        res.consumers.remove("alice");
        res.consumers.remove("eve");
        let c = compose(
            parse_value(&base).unwrap(),
            "sluice.yaml",
            Some(("/sluice", &res)),
        )
        .unwrap();
        assert_eq!(c.consumers[1].name, "bob");
        assert_eq!(c.consumers[1].groups, ["g"]);
    }

    fn errors(base: &str, res: &Resources) -> Vec<String> {
        match compose(parse_value(base).unwrap(), "sluice.yaml", Some(("/sluice", res))) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn etcd_objects_are_added_and_take_their_id_from_the_key() {
        let res = resources(
            &[("api", "{upstream: eu, match: {path: {prefix: /api}}}")],
            &[("eu", "{endpoints: [{address: '127.0.0.1:9001'}]}")],
        );
        let config = compose(
            parse_value(BASE).unwrap(),
            "sluice.yaml",
            Some(("/sluice/", &res)),
        )
        .unwrap();
        let ids: Vec<_> = config.routes.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "api"]);
        assert_eq!(config.upstreams[1].id, "eu");
    }

    #[test]
    fn etcd_error_paths_name_the_key() {
        let res = resources(
            &[
                ("ok", "{upstream: u}"),
                ("bad", "{upstream: u, match: {path: {regex: '(['}}}"),
                ("typo", "{upstream: u, match: {pth: x}}"),
            ],
            &[],
        );
        let errs = errors(BASE, &res);
        assert!(
            errs.iter()
                .any(|e| e.starts_with("/sluice/routes/bad.match.path.regex: invalid regex")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.starts_with("/sluice/routes/typo.match.pth: unknown field")),
            "{errs:?}"
        );
        assert_eq!(errs.len(), 2, "{errs:?}");
    }

    #[test]
    fn base_error_paths_keep_their_index_after_a_set_aside_element() {
        // routes[0] does not fit the model and is set aside before validation; the
        // semantic error in routes[2] must still be reported at index 2.
        let base = "listeners: [{name: web, listen: '127.0.0.1:8080'}]\nupstreams: [{id: u, endpoints: [{address: '127.0.0.1:9000'}]}]\nroutes:\n- {id: a, upstream: u, nope: 1}\n- {id: b, upstream: u}\n- {id: c, upstream: u, match: {path: {prefix: api}}}\n";
        let res = resources(&[("e", "{upstream: u, match: {path: {regex: '(['}}}")], &[]);
        let errs = errors(base, &res);
        assert!(
            errs.iter()
                .any(|e| e.starts_with("sluice.yaml: routes[0].nope: unknown field")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.starts_with("sluice.yaml: routes[2].match.path.prefix: \"api\" must start")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.starts_with("/sluice/routes/e.match.path.regex: invalid regex")),
            "{errs:?}"
        );
        assert_eq!(errs.len(), 3, "{errs:?}");
    }

    #[test]
    fn an_id_that_differs_from_the_key_is_an_error() {
        let res = resources(&[("api", "{id: other, upstream: u}")], &[]);
        assert_eq!(
            errors(BASE, &res),
            ["/sluice/routes/api.id: id \"other\" does not match the key's id \"api\""]
        );
    }

    #[test]
    fn an_id_in_both_file_and_etcd_names_both() {
        let res = resources(&[("b", "{upstream: u}")], &[]);
        assert_eq!(
            errors(BASE, &res),
            ["/sluice/routes/b.id: duplicate id \"b\": also defined at sluice.yaml: routes[1]"]
        );
    }

    #[test]
    fn unreadable_keys_are_reported_with_the_rest() {
        let mut res = resources(&[("x", "{upstream: nope}")], &[]);
        res.errors.push(ConfigError {
            path: "/sluice/routes/y".into(),
            message: "invalid JSON".into(),
        });
        let errs = errors(BASE, &res);
        assert_eq!(
            errs,
            [
                "/sluice/routes/y: invalid JSON",
                "/sluice/routes/x.upstream: unknown upstream \"nope\""
            ]
        );
    }

    #[test]
    fn an_upstream_left_out_of_etcd_is_not_also_unknown() {
        // `eu` is dropped for its id, `us` cannot be read: the routes naming them get
        // no second, misleading "unknown upstream" error. `nope` is really unknown.
        let mut res = resources(
            &[
                ("to-eu", "{upstream: eu}"),
                ("to-us", "{upstream: u, circuit_breaker: {fallback_upstream: us}}"),
                ("to-nope", "{upstream: nope}"),
            ],
            &[("eu", "{id: europe, endpoints: [{address: '127.0.0.1:9001'}]}")],
        );
        res.errors.push(ConfigError {
            path: "/sluice/upstreams/us".into(),
            message: "invalid JSON".into(),
        });
        assert_eq!(
            errors(BASE, &res),
            [
                "/sluice/upstreams/us: invalid JSON",
                "/sluice/upstreams/eu.id: id \"europe\" does not match the key's id \"eu\"",
                "/sluice/routes/to-nope.upstream: unknown upstream \"nope\"",
            ]
        );
    }

    #[test]
    fn an_id_in_two_resource_sets_names_both() {
        let one = resources(&[("x", "{upstream: u}")], &[]);
        let two = resources(&[("x", "{upstream: u}"), ("y", "{upstream: u}")], &[]);
        let errs = compose_all(
            parse_value(BASE).unwrap(),
            "sluice.yaml",
            &[("/sluice", &one), ("k8s:default", &two)],
        )
        .unwrap_err();
        assert_eq!(
            errs.to_string(),
            "k8s:default/routes/x.id: duplicate id \"x\": also defined at /sluice/routes/x"
        );
        let two = resources(&[("y", "{upstream: u}")], &[]);
        let config = compose_all(
            parse_value(BASE).unwrap(),
            "sluice.yaml",
            &[("/sluice", &one), ("k8s:default", &two)],
        )
        .unwrap();
        let ids: Vec<_> = config.routes.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "x", "y"]);
    }

    #[test]
    fn certificate_files_are_checked_with_the_base_origin() {
        let base = "listeners:\n- {name: web, listen: 'bad'}\n- {name: tls, listen: '127.0.0.1:8443', tls: {certificates: [{cert: /nonexistent/c.pem, key: /nonexistent/k.pem}]}}\nupstreams: [{id: u, endpoints: [{address: '127.0.0.1:9000'}]}]\nroutes: [{id: a, upstream: u}]\n";
        let errs = errors(base, &Resources::default());
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(
            errs[0].starts_with("sluice.yaml: listeners[0].listen: "),
            "{errs:?}"
        );
        assert!(
            errs[1].starts_with(
                "sluice.yaml: listeners[1].tls.certificates[0].cert: cannot read /nonexistent/c.pem"
            ),
            "{errs:?}"
        );
        assert!(
            errs[2].starts_with("sluice.yaml: listeners[1].tls.certificates[0].key: cannot read"),
            "{errs:?}"
        );
    }

    #[test]
    fn document_level_errors_name_the_base_origin() {
        let errs = errors("routes: []", &Resources::default());
        assert_eq!(
            errs,
            ["sluice.yaml: listeners: at least one listener is required"]
        );
    }

    #[test]
    fn resources_round_trip_through_json() {
        let mut res = resources(&[("x", "{upstream: u}")], &[]);
        res.errors.push(ConfigError {
            path: "/sluice/foo/x".into(),
            message: "unknown".into(),
        });
        let text = serde_json::to_string(&res).unwrap();
        assert_eq!(serde_json::from_str::<Resources>(&text).unwrap(), res);
    }
}
