//! The `auth` filter kind: a route's authentication methods as "any of", with an
//! optional anonymous consumer, an inline ACL and identity headers. The engine is
//! [`crate::auth::AuthFilter`]; see `docs/access-control.md`.
//!
//! ```yaml
//! filters:
//!   - auth:
//!       methods: [{key_auth: {}}, {basic_auth: {realm: api}}]
//!       anonymous: guest
//! ```

use crate::registry::Kind;

/// The registry entry.
pub const KIND: Kind = Kind {
    name: "auth",
    answers: false,
    build: crate::auth::build_auth,
    redact: crate::auth::redact_auth,
    schema: Some(crate::registry::schema_of::<crate::auth::AuthSpec>),
};
