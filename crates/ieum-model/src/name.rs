//! Names of services, instances and resources: DNS-1123 labels.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

use crate::ValidationError;

/// Longest name, as for a DNS label.
pub const MAX_NAME_LEN: usize = 63;

/// A DNS-1123 label: 1–63 characters of `a-z`, `0-9` and `-`, starting and ending with a
/// letter or digit. Service names must be usable as DNS names (`NAME.service.ieum`) and as
/// Kubernetes object names, so the same rule applies everywhere.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Name(String);

impl Name {
    /// Checks `s` against the DNS-1123 label rule; the error says what to change.
    pub fn parse(s: &str) -> Result<Name, String> {
        if s.is_empty() {
            return Err("must not be empty".into());
        }
        if s.len() > MAX_NAME_LEN {
            return Err(format!(
                "must be at most {MAX_NAME_LEN} characters (is {})",
                s.len()
            ));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(format!(
                "`{s}` contains `{c}`: use lowercase letters, digits and `-` (a DNS-1123 label)"
            ));
        }
        if s.starts_with('-') || s.ends_with('-') {
            return Err(format!("`{s}` must start and end with a letter or digit"));
        }
        Ok(Name(s.to_owned()))
    }

    /// Parses `s` as the value of `field`, as a coded error (`E1004`).
    pub fn parse_field(s: &str, field: &str) -> Result<Name, ValidationError> {
        Name::parse(s).map_err(|m| ValidationError::new("E1004", field, m))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl FromStr for Name {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Name::parse(s)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Name::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for Name {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"))
            .description(Some("A DNS-1123 label"))
            .examples(["orders"])
            .into()
    }
}

impl utoipa::ToSchema for Name {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels() {
        for ok in ["a", "orders", "orders-v2", "0abc", &"a".repeat(63)] {
            assert!(Name::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_everything_else_with_a_reason() {
        let cases = [
            ("", "empty"),
            ("Orders", "contains `O`"),
            ("orders_v2", "contains `_`"),
            ("-orders", "start and end"),
            ("orders-", "start and end"),
            ("or.ders", "contains `.`"),
        ];
        for (bad, why) in cases {
            let err = Name::parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
        assert!(
            Name::parse(&"a".repeat(64))
                .unwrap_err()
                .contains("at most 63")
        );
    }
}
