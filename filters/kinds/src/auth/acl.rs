//! Allow and deny rules on the identified consumer: its name or its groups. Used inline
//! by [`super::AuthFilter`] (`acl:`) and by the standalone `acl` filter kind.

use std::collections::HashSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::registry::SpecError;
use sluice_core::filter::Identity;

/// Consumers named, and consumers in any of the groups named.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Principals {
    /// Consumer names. Default: none.
    #[serde(default)]
    pub consumers: Vec<String>,
    /// Group names. Default: none.
    #[serde(default)]
    pub groups: Vec<String>,
}

impl Principals {
    fn is_empty(&self) -> bool {
        self.consumers.is_empty() && self.groups.is_empty()
    }
}

/// An ACL: `deny` wins over `allow`; with a non-empty `allow`, only the consumers it
/// names (by name or group) pass.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AclSpec {
    /// Who may pass. Default: empty, everyone identified (not denied) passes.
    #[serde(default)]
    pub allow: Principals,
    /// Who may not, whatever `allow` says. Default: nobody.
    #[serde(default)]
    pub deny: Principals,
}

/// A compiled ACL.
#[derive(Debug, Clone)]
pub struct Acl {
    allow_all: bool,
    allow_consumers: HashSet<Arc<str>>,
    allow_groups: HashSet<Arc<str>>,
    deny_consumers: HashSet<Arc<str>>,
    deny_groups: HashSet<Arc<str>>,
}

fn set(list: &[String], path: &str, errors: &mut Vec<SpecError>) -> HashSet<Arc<str>> {
    for (i, name) in list.iter().enumerate() {
        if name.is_empty() {
            errors.push(SpecError::at(format!("{path}[{i}]"), "must not be empty"));
        }
    }
    list.iter().map(|s| Arc::from(s.as_str())).collect()
}

impl Acl {
    /// Validates and compiles `spec`.
    pub fn new(spec: &AclSpec) -> Result<Acl, Vec<SpecError>> {
        let mut errors = Vec::new();
        if spec.allow.is_empty() && spec.deny.is_empty() {
            errors.push(SpecError::at(
                "",
                "needs at least one consumer or group in allow or deny",
            ));
        }
        let acl = Acl {
            allow_all: spec.allow.is_empty(),
            allow_consumers: set(&spec.allow.consumers, "allow.consumers", &mut errors),
            allow_groups: set(&spec.allow.groups, "allow.groups", &mut errors),
            deny_consumers: set(&spec.deny.consumers, "deny.consumers", &mut errors),
            deny_groups: set(&spec.deny.groups, "deny.groups", &mut errors),
        };
        if errors.is_empty() {
            Ok(acl)
        } else {
            Err(errors)
        }
    }

    /// Whether `id` may pass.
    pub fn allows(&self, id: &Identity) -> bool {
        if self.deny_consumers.contains(&id.consumer)
            || id.groups.iter().any(|g| self.deny_groups.contains(g))
        {
            return false;
        }
        self.allow_all
            || self.allow_consumers.contains(&id.consumer)
            || id.groups.iter().any(|g| self.allow_groups.contains(g))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn id(name: &str, groups: &[&str]) -> Identity {
        Identity {
            consumer: name.into(),
            groups: groups.iter().map(|g| Arc::from(*g)).collect(),
            claims: Vec::new(),
        }
    }

    fn acl(yaml: &str) -> Acl {
        Acl::new(&serde_yaml::from_str(yaml).unwrap()).unwrap()
    }

    #[test]
    fn deny_wins_and_allow_restricts() {
        let a = acl("{allow: {groups: [staff], consumers: [carol]}, deny: {consumers: [mallory]}}");
        assert!(a.allows(&id("alice", &["staff"])));
        assert!(a.allows(&id("carol", &[])));
        assert!(!a.allows(&id("bob", &["public"])));
        assert!(!a.allows(&id("mallory", &["staff"])));
        let d = acl("{deny: {groups: [banned]}}");
        assert!(d.allows(&id("bob", &[])));
        assert!(!d.allows(&id("eve", &["x", "banned"])));
    }

    #[test]
    fn an_empty_acl_is_an_error() {
        let errs = Acl::new(&AclSpec::default()).err().unwrap();
        assert_eq!(errs[0].path, "");
        let errs = Acl::new(&serde_yaml::from_str("{allow: {groups: ['']}}").unwrap())
            .err()
            .unwrap();
        assert_eq!(errs[0].path, "allow.groups[0]");
    }
}
