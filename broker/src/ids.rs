//! Identifiers are types, parsed once at the edge: inner code cannot receive an unvalidated
//! string (the linkerd `Id` habit). All share one grammar, chosen so ids are safe in store
//! keys, log fields, URL paths and AWS session names: 1–64 characters of `[A-Za-z0-9_.-]`,
//! starting with a letter or digit.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// Whether `s` is a record id: 1 to 64 letters, digits, `_`, `.` and `-`, starting with a
/// letter or digit (every id type below, and every key of the tables the admin API lists).
pub(crate) fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Parses an identifier.
            ///
            /// # Errors
            /// When the value is not 1–64 characters of `[A-Za-z0-9_.-]` starting with a
            /// letter or digit.
            pub fn parse(s: &str) -> Result<Self, String> {
                if valid_id(s) {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(format!(
                        concat!("invalid ", $what, " {:?}: expected 1-64 characters of [A-Za-z0-9_.-] starting with a letter or digit"),
                        s.chars().take(80).collect::<String>()
                    ))
                }
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }

            fn inline_schema() -> bool {
                true
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({
                    "type": "string",
                    "description": concat!("A ", $what, ": 1-64 characters of [A-Za-z0-9_.-] starting with a letter or digit."),
                    "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
                    "minLength": 1,
                    "maxLength": 64
                })
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// A customer tenant.
    TenantId, "tenant id");
id_type!(
    /// A connector instance (one scan target of one tenant).
    InstanceId, "instance id");
id_type!(
    /// A binding: one tenant's trust relationship or pasted secret with one provider.
    BindingId, "binding id");
id_type!(
    /// A worker, as named in its certificate's SPIFFE id.
    WorkerId, "worker id");
id_type!(
    /// An operator, as named in its certificate's SPIFFE id.
    OperatorId, "operator id");
id_type!(
    /// A metrics scraper, as named in its certificate's SPIFFE id.
    MetricsId, "metrics scraper id");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grammar() {
        assert!(TenantId::parse("demo").is_ok());
        assert!(InstanceId::parse("ci_01HZ.x-y").is_ok());
        assert!(TenantId::parse("").is_err());
        assert!(TenantId::parse("-lead").is_err());
        assert!(TenantId::parse("a/b").is_err());
        assert!(TenantId::parse("a b").is_err());
        assert!(TenantId::parse(&"a".repeat(65)).is_err());
        assert!(TenantId::parse(&"a".repeat(64)).is_ok());
        assert!(TenantId::parse("tén").is_err());
    }

    #[test]
    fn deserialize_validates() {
        assert!(serde_json::from_str::<TenantId>("\"ok\"").is_ok());
        assert!(serde_json::from_str::<TenantId>("\"../etc\"").is_err());
    }
}
