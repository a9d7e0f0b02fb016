//! The JSON Schema of the config file, generated from the model's own types (so it cannot
//! drift from what the parser accepts): every field's doc comment is its `description`,
//! every serde default its `default`, and `deny_unknown_fields` becomes
//! `additionalProperties: false`.
//!
//! The model does not know the filter kinds: a route's `filters` items are a one-key
//! object whose spec each kind owns. [`config_schema`] takes the kinds' spec schemas from
//! the caller (the filter registry in `sluice-filters`) and makes each filter item one of
//! them. `sluice schema` prints the result; `config/schema/sluice.schema.json` is that
//! output, checked in, and a test fails when it is stale.
//!
//! Hand-written schemas here are for the types whose serde form is written by hand
//! (durations, sizes, status ranges, ...): each says what the parser accepts.

use std::borrow::Cow;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde_json::{json, Map, Value};

/// The `$id` of the published schema, the path it is checked in at, relative to the
/// repository root.
pub const SCHEMA_PATH: &str = "config/schema/sluice.schema.json";

/// The name of the definition a route's filter items refer to.
pub const FILTER_DEFINITION: &str = "Filter";

/// A duration as the config writes it (humantime): `250ms`, `5s`, `1m 30s`, `2h`.
pub struct DurationText;

impl JsonSchema for DurationText {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A duration: a number and a unit (ns, us, ms, s, m or min, h, d), or several (`1m 30s`).",
            "pattern": r"^\s*([0-9]+\s*[a-zA-Zµ]+\s*)+$",
            "examples": ["250ms", "5s", "1m 30s"],
        })
    }
}

/// An IP network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`), or one address.
pub struct CidrText;

impl JsonSchema for CidrText {
    fn schema_name() -> Cow<'static, str> {
        "Cidr".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "An IP network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`).",
            "pattern": r"^[0-9a-fA-F.:]+(/[0-9]{1,3})?$",
        })
    }
}

/// Generates the schema of a whole config file. `filter_kinds` is called with the
/// generator and returns each filter kind's name and its spec's schema (made with the same
/// generator, so shared types are one definition); a filter item must then be a one-key
/// object `{<kind>: <spec>}` of one of them. Without kinds, a filter item is any one-key
/// object.
pub fn config_schema(filter_kinds: impl FnOnce(&mut SchemaGenerator) -> Vec<(String, Schema)>) -> Schema {
    let settings = schemars::generate::SchemaSettings::draft2020_12();
    let mut generator = settings.into_generator();
    let kinds = filter_kinds(&mut generator);
    let mut root = generator.root_schema_for::<crate::Config>();
    if let Some(obj) = root.as_object_mut() {
        obj.insert(
            "title".into(),
            json!("Sluice config (a file for `sluice run --config` and `sluice validate`)"),
        );
        obj.insert("$id".into(), json!(format!("https://sluice.dev/{SCHEMA_PATH}")));
    }
    if !kinds.is_empty() {
        let filter = filter_one_of(kinds);
        if let Some(defs) = root
            .as_object_mut()
            .and_then(|o| o.get_mut("$defs"))
            .and_then(Value::as_object_mut)
        {
            defs.insert(FILTER_DEFINITION.into(), filter);
        }
    }
    root
}

/// `oneOf` the kinds, each a one-key object.
fn filter_one_of(kinds: Vec<(String, Schema)>) -> Value {
    let names: Vec<Value> = kinds.iter().map(|(n, _)| json!(n)).collect();
    let one_of: Vec<Value> = kinds
        .into_iter()
        .map(|(name, spec)| {
            let mut properties = Map::new();
            properties.insert(name.clone(), spec.to_value());
            json!({
                "type": "object",
                "title": name,
                "properties": properties,
                "required": [name],
                "additionalProperties": false,
            })
        })
        .collect();
    json!({
        "description": "One filter of the route's chain: a one-key object, the filter kind and its spec (`- rate_limit: {requests: 10, per: 1s}`). The kinds and their specs are documented in docs/config.md.",
        "type": "object",
        "minProperties": 1,
        "maxProperties": 1,
        "propertyNames": {"enum": names},
        "oneOf": one_of,
    })
}

impl JsonSchema for crate::model::FilterConfig {
    fn schema_name() -> Cow<'static, str> {
        FILTER_DEFINITION.into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // Replaced by the kinds' specs in `config_schema`.
        json_schema!({
            "description": "One filter of the route's chain: a one-key object, the filter kind and its spec.",
            "type": "object",
            "minProperties": 1,
            "maxProperties": 1,
        })
    }
}

impl JsonSchema for crate::limits::ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A size: a number of bytes, or a string with a unit (B, KiB, MiB, GiB; KB, MB, GB and K, M, G mean the same).",
            "oneOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": r"^\s*[0-9]+\s*([kKmMgG]([iI]?[bB])?|[bB])?\s*$"},
            ],
            "examples": [65536, "64KiB", "1MiB"],
        })
    }
}

impl JsonSchema for crate::limits::RequestBuffering {
    fn schema_name() -> Cow<'static, str> {
        "RequestBuffering".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let size = generator.subschema_for::<crate::limits::ByteSize>();
        json_schema!({
            "description": "`off` (stream the request body), `on` (buffer up to the default), or `{max: <size>}`.",
            "oneOf": [
                {"type": "string", "enum": ["off", "on"]},
                {"type": "boolean"},
                {
                    "type": "object",
                    "properties": {"max": size},
                    "additionalProperties": false,
                },
            ],
        })
    }
}

impl JsonSchema for crate::resilience::StatusRange {
    fn schema_name() -> Cow<'static, str> {
        "StatusRange".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A status code (`503`), a class (`5xx`) or a range (`500-504`).",
            "oneOf": [
                {"type": "integer", "minimum": 100, "maximum": 599},
                {"type": "string", "pattern": r"^\s*([1-5][0-9]{2}|[1-5]xx|[1-5][0-9]{2}\s*-\s*[1-5][0-9]{2})\s*$"},
            ],
        })
    }
}

impl JsonSchema for crate::resilience::HealthCheckKind {
    fn schema_name() -> Cow<'static, str> {
        "HealthCheckKind".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let http = generator.subschema_for::<crate::resilience::HttpHealthCheck>();
        json_schema!({
            "description": "How an endpoint is checked: `tcp`, `http` (all defaults), or `{http: {...}}`.",
            "oneOf": [
                {"type": "string", "enum": ["tcp", "http"]},
                {
                    "type": "object",
                    "properties": {"http": http},
                    "required": ["http"],
                    "additionalProperties": false,
                },
            ],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_describes_fields_with_their_docs_and_defaults() {
        let schema = config_schema(|_| Vec::new()).to_value();
        let server = &schema["$defs"]["ServerConfig"];
        let grace = &server["properties"]["shutdown_timeout"];
        assert!(
            grace["description"]
                .as_str()
                .is_some_and(|d| d.contains("Default: `30s`")),
            "{grace}"
        );
        assert_eq!(grace["default"], "30s", "{grace}");
        assert_eq!(server["additionalProperties"], false, "{server}");
    }

    #[test]
    fn filter_items_are_one_of_the_kinds_given() {
        let schema = config_schema(|g| {
            vec![(
                "headers".to_string(),
                g.subschema_for::<crate::model::HeaderOps>(),
            )]
        })
        .to_value();
        let filter = &schema["$defs"][FILTER_DEFINITION];
        assert_eq!(filter["propertyNames"]["enum"], json!(["headers"]), "{filter}");
        assert_eq!(filter["oneOf"][0]["required"], json!(["headers"]), "{filter}");
    }
}
