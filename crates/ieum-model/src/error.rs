//! Coded validation errors that point at the field to fix.
//!
//! Codes are stable and documented in `docs/errors.md`; messages say what to do next.
//! Ranges: `E10xx` request shape (JSON, names, sizes), `E11xx` `Service` spec, `E12xx`
//! instance registration and checks, `E13xx` sidecar telemetry reports, `E2xxx` routes and
//! policies, `E30xx` the bridge's `PubSub`, `Subscription` and `Binding`, `E32xx`
//! `AuthorizationPolicy`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One problem with user input: a stable code, the field path and what to fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ValidationError {
    /// Stable error code, e.g. `E1201`.
    pub code: String,
    /// The resource at fault (`Route/checkout`) when a request carries several.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource: String,
    /// Path of the offending field, e.g. `check.interval` or `spec.rules[1].retry.attempts`;
    /// empty when the problem is the whole input.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl ValidationError {
    /// A new error for `field`.
    pub fn new(code: &str, field: impl Into<String>, message: impl Into<String>) -> Self {
        ValidationError {
            code: code.to_owned(),
            resource: String::new(),
            field: field.into(),
            message: message.into(),
        }
    }

    /// Names the resource at fault.
    pub fn in_resource(mut self, resource: impl Into<String>) -> Self {
        self.resource = resource.into();
        self
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.resource.is_empty() {
            write!(f, "{} {}", self.code, self.resource)?;
            return if self.field.is_empty() {
                write!(f, ": {}", self.message)
            } else {
                write!(f, " {}: {}", self.field, self.message)
            };
        }
        if self.field.is_empty() {
            write!(f, "{} {}", self.code, self.message)
        } else {
            write!(f, "{} {}: {}", self.code, self.field, self.message)
        }
    }
}

impl std::error::Error for ValidationError {}

/// Collects every problem in one pass, with field paths relative to a prefix.
///
/// Validation reports all errors at once so a user fixes a file in one round trip.
#[derive(Debug, Default)]
pub struct Validator {
    prefix: String,
    errors: Vec<ValidationError>,
}

impl Validator {
    /// A validator whose field paths start at `prefix` (empty for the top level).
    pub fn new(prefix: impl Into<String>) -> Self {
        Validator {
            prefix: prefix.into(),
            errors: Vec::new(),
        }
    }

    /// The full path of `field` under this validator's prefix.
    pub fn path(&self, field: &str) -> String {
        match (self.prefix.is_empty(), field.is_empty()) {
            (true, _) => field.to_owned(),
            (false, true) => self.prefix.clone(),
            (false, false) if field.starts_with('[') => format!("{}{field}", self.prefix),
            (false, false) => format!("{}.{field}", self.prefix),
        }
    }

    /// Records a problem with `field`.
    pub fn error(&mut self, code: &str, field: &str, message: impl Into<String>) {
        let path = self.path(field);
        self.errors.push(ValidationError::new(code, path, message));
    }

    /// Records a problem when `ok` is false.
    pub fn check(&mut self, ok: bool, code: &str, field: &str, message: impl FnOnce() -> String) {
        if !ok {
            self.error(code, field, message());
        }
    }

    /// Runs `f` with a validator nested under `field`, keeping its errors.
    pub fn nested(&mut self, field: &str, f: impl FnOnce(&mut Validator)) {
        let mut inner = Validator::new(self.path(field));
        f(&mut inner);
        self.errors.append(&mut inner.errors);
    }

    /// Whether nothing was recorded so far.
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }

    /// `Ok(())` when nothing was recorded, otherwise every error recorded.
    pub fn finish(self) -> Result<(), Vec<ValidationError>> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(self.errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_paths_join_with_dots_and_brackets() {
        let mut v = Validator::new("spec");
        v.nested("rules", |v| {
            v.nested("[1]", |v| {
                v.error("E2104", "retry.attempts", "must be at most 10")
            });
        });
        let errs = v.finish().unwrap_err();
        assert_eq!(errs[0].field, "spec.rules[1].retry.attempts");
        assert_eq!(
            errs[0].to_string(),
            "E2104 spec.rules[1].retry.attempts: must be at most 10"
        );
    }

    #[test]
    fn errors_name_their_resource() {
        let e = ValidationError::new(
            "E2104",
            "spec.rules[1].retry.attempts",
            "must be at most 10",
        )
        .in_resource("Route/checkout");
        assert_eq!(
            e.to_string(),
            "E2104 Route/checkout spec.rules[1].retry.attempts: must be at most 10"
        );
        assert_eq!(
            ValidationError::new("E2000", "", "bad")
                .in_resource("Route/x")
                .to_string(),
            "E2000 Route/x: bad"
        );
    }

    #[test]
    fn check_records_only_failures() {
        let mut v = Validator::new("");
        v.check(true, "E1", "a", || "never".into());
        v.check(false, "E2", "b", || "b is wrong".into());
        let errs = v.finish().unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "b");
    }
}
