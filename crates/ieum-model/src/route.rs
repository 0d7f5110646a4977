//! The `Route` resource: how calls to a service are matched, split and shaped, after the
//! Gateway API's HTTPRoute (GEP-1731 retries, GEP-1742 timeouts).

use serde::{Deserialize, Serialize};

use crate::policy::{Retry, Timeouts};
use crate::{Name, Validator};

/// Most rules in one route.
pub const MAX_RULES: usize = 64;
/// Most backends in one rule.
pub const MAX_BACKENDS: usize = 16;

/// The spec of a `Route`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteSpec {
    /// The service whose calls this route handles (callers address this name).
    #[schema(value_type = String)]
    pub service: Name,
    /// Rules, tried in order; the first whose matches fit handles the call.
    pub rules: Vec<RouteRule>,
}

/// One rule: which calls, where they go, and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteRule {
    /// Calls this rule takes; any one match is enough. Empty matches every call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RouteMatch>,
    /// Where matched calls go, split by weight. Empty sends them to `spec.service`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<Backend>,
    /// Changes applied to matched calls, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Filter>,
    /// Timeouts of this rule (above any policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
    /// Retries of this rule (above any policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
}

/// Conditions on a call; all set conditions must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteMatch {
    /// The request path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// The HTTP method, e.g. `GET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Request headers that must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ValueMatch>,
    /// Query parameters that must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<ValueMatch>,
}

/// A path condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathMatch {
    /// How `value` is compared.
    #[serde(rename = "type", default)]
    pub kind: PathMatchKind,
    /// The path, prefix or regular expression.
    pub value: String,
}

/// How a path is compared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum PathMatchKind {
    /// The whole path equals `value`.
    Exact,
    /// The path starts with `value`, on a segment boundary (`/v2` matches `/v2/x`, not `/v22`).
    #[default]
    PathPrefix,
    /// The path matches the regular expression `value` (anchored).
    RegularExpression,
}

/// A header or query parameter condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ValueMatch {
    /// Header (case-insensitive) or parameter name.
    pub name: String,
    /// The value, or a regular expression.
    pub value: String,
    /// How `value` is compared.
    #[serde(rename = "type", default)]
    pub kind: ValueMatchKind,
}

/// How a header or parameter value is compared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum ValueMatchKind {
    /// Equal.
    #[default]
    Exact,
    /// Matches the regular expression (anchored).
    RegularExpression,
}

/// A destination of matched calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backend {
    /// The service to call.
    #[schema(value_type = String)]
    pub service: Name,
    /// Only its instances running this version (canary releases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Share of calls among backends of the same priority (0 takes none).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Failover order: backends of priority 0 take traffic while any of them is healthy,
    /// then priority 1, and so on.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: u32,
}

fn default_weight() -> u32 {
    1
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A change applied to matched calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum Filter {
    /// Sets, adds or removes request headers.
    RequestHeaderModifier(HeaderModifier),
    /// Sets, adds or removes response headers.
    ResponseHeaderModifier(HeaderModifier),
    /// Rewrites the path before the call goes upstream.
    #[serde(rename = "URLRewrite")]
    UrlRewrite {
        /// The new path.
        path: PathRewrite,
    },
    /// Answers with a redirect instead of calling upstream.
    RequestRedirect(Redirect),
}

/// Header changes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderModifier {
    /// Headers to set (replacing any value).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<Header>,
    /// Headers to add (keeping existing values).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<Header>,
    /// Header names to remove.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderModifier {
    /// Checks every field; paths are relative to `v`'s prefix.
    pub(crate) fn validate(&self, v: &mut Validator) {
        v.check(
            !(self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()),
            "E2007",
            "",
            || "set at least one of `set`, `add` or `remove`".into(),
        );
        let names = self
            .set
            .iter()
            .map(|h| ("set", &h.name))
            .chain(self.add.iter().map(|h| ("add", &h.name)));
        for (i, (field, name)) in names
            .chain(self.remove.iter().map(|n| ("remove", n)))
            .enumerate()
        {
            v.check(valid_header_name(name), "E2005", field, || {
                format!("entry {i}: `{name}` is not a valid header name")
            });
        }
    }
}

/// A header name and value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Header {
    /// Name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// A path rewrite.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathRewrite {
    /// How to rewrite.
    #[serde(rename = "type")]
    pub kind: PathRewriteKind,
    /// The replacement.
    pub value: String,
}

/// Path rewrite kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum PathRewriteKind {
    /// Replace the whole path.
    ReplaceFullPath,
    /// Replace the part matched by a `PathPrefix` match.
    ReplacePrefixMatch,
}

/// A redirect answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Redirect {
    /// `http` or `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Host of the new location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Port of the new location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Path of the new location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// 301, 302 (default), 303, 307 or 308.
    #[serde(default = "default_redirect")]
    pub status_code: u16,
}

fn default_redirect() -> u16 {
    302
}

pub(crate) const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

pub(crate) fn valid_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn check_regex(v: &mut Validator, field: &str, pattern: &str) {
    if let Err(e) = regex::Regex::new(pattern) {
        let first = e.to_string().lines().last().unwrap_or("").trim().to_owned();
        v.error(
            "E2003",
            field,
            format!("`{pattern}` is not a valid regular expression: {first}"),
        );
    }
}

impl RouteSpec {
    /// Checks every rule; paths are relative to `v`'s prefix (usually `spec`).
    pub fn validate(&self, v: &mut Validator) {
        v.check(!self.rules.is_empty(), "E2002", "rules", || {
            "a route needs at least one rule".into()
        });
        v.check(self.rules.len() <= MAX_RULES, "E2002", "rules", || {
            format!("at most {MAX_RULES} rules (has {})", self.rules.len())
        });
        for (i, rule) in self.rules.iter().enumerate() {
            v.nested(&format!("rules[{i}]"), |v| rule.validate(v));
        }
    }

    /// Every service this route sends calls to, besides its own.
    pub fn backend_services(&self) -> impl Iterator<Item = &Name> {
        self.rules
            .iter()
            .flat_map(|r| r.backends.iter().map(|b| &b.service))
    }
}

impl RouteRule {
    fn validate(&self, v: &mut Validator) {
        for (i, m) in self.matches.iter().enumerate() {
            v.nested(&format!("matches[{i}]"), |v| m.validate(v));
        }
        v.check(
            self.backends.len() <= MAX_BACKENDS,
            "E2006",
            "backends",
            || {
                format!(
                    "at most {MAX_BACKENDS} backends (has {})",
                    self.backends.len()
                )
            },
        );
        if !self.backends.is_empty() {
            let weights: u64 = self.backends.iter().map(|b| u64::from(b.weight)).sum();
            v.check(weights > 0, "E2006", "backends", || {
                "every backend has weight 0: no call could be sent anywhere".into()
            });
        }
        for (i, b) in self.backends.iter().enumerate() {
            v.check(
                b.weight <= 10_000,
                "E2006",
                &format!("backends[{i}].weight"),
                || format!("must be between 0 and 10000 (is {})", b.weight),
            );
            if let Some(version) = &b.version {
                v.check(
                    !version.is_empty() && version.len() <= 128,
                    "E2006",
                    &format!("backends[{i}].version"),
                    || "must be 1 to 128 characters".into(),
                );
            }
        }
        let has_prefix = self.matches.iter().any(|m| {
            m.path
                .as_ref()
                .is_some_and(|p| p.kind == PathMatchKind::PathPrefix)
        });
        let redirects = self
            .filters
            .iter()
            .filter(|f| matches!(f, Filter::RequestRedirect(_)))
            .count();
        v.check(redirects <= 1, "E2007", "filters", || {
            "at most one RequestRedirect per rule".into()
        });
        for (i, f) in self.filters.iter().enumerate() {
            v.nested(&format!("filters[{i}]"), |v| f.validate(v, has_prefix));
        }
        if let Some(t) = &self.timeouts {
            v.nested("timeouts", |v| t.validate(v));
        }
        if let Some(r) = &self.retry {
            v.nested("retry", |v| r.validate(v));
        }
    }
}

impl RouteMatch {
    fn validate(&self, v: &mut Validator) {
        if let Some(p) = &self.path {
            match p.kind {
                PathMatchKind::Exact | PathMatchKind::PathPrefix => {
                    v.check(p.value.starts_with('/'), "E2003", "path.value", || {
                        format!("`{}` must start with `/`", p.value)
                    });
                }
                PathMatchKind::RegularExpression => check_regex(v, "path.value", &p.value),
            }
        }
        if let Some(m) = &self.method {
            v.check(METHODS.contains(&m.as_str()), "E2004", "method", || {
                format!(
                    "`{m}` is not an HTTP method: use one of {}",
                    METHODS.join(", ")
                )
            });
        }
        for (field, list) in [
            ("headers", &self.headers),
            ("queryParams", &self.query_params),
        ] {
            for (i, h) in list.iter().enumerate() {
                let path = format!("{field}[{i}]");
                v.check(
                    valid_header_name(&h.name),
                    "E2005",
                    &format!("{path}.name"),
                    || format!("`{}` is not a valid name", h.name),
                );
                if h.kind == ValueMatchKind::RegularExpression {
                    check_regex(v, &format!("{path}.value"), &h.value);
                }
            }
        }
    }
}

impl Filter {
    fn validate(&self, v: &mut Validator, has_prefix_match: bool) {
        match self {
            Filter::RequestHeaderModifier(m) | Filter::ResponseHeaderModifier(m) => m.validate(v),
            Filter::UrlRewrite { path } => {
                v.check(path.value.starts_with('/'), "E2007", "path.value", || {
                    format!("`{}` must start with `/`", path.value)
                });
                if path.kind == PathRewriteKind::ReplacePrefixMatch {
                    v.check(has_prefix_match, "E2009", "path.type", || {
                        "ReplacePrefixMatch needs a `PathPrefix` match in the same rule".into()
                    });
                }
            }
            Filter::RequestRedirect(r) => {
                v.check(
                    [301, 302, 303, 307, 308].contains(&r.status_code),
                    "E2008",
                    "statusCode",
                    || {
                        format!(
                            "{} is not a redirect: use 301, 302, 303, 307 or 308",
                            r.status_code
                        )
                    },
                );
                if let Some(s) = &r.scheme {
                    v.check(s == "http" || s == "https", "E2008", "scheme", || {
                        format!("`{s}`: use http or https")
                    });
                }
                if let Some(p) = &r.path {
                    v.check(p.starts_with('/'), "E2008", "path", || {
                        format!("`{p}` must start with `/`")
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(yaml: &str) -> Vec<String> {
        let spec: RouteSpec = serde_yaml_ng::from_str(yaml).unwrap();
        let mut v = Validator::new("spec");
        spec.validate(&mut v);
        v.finish()
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|e| format!("{} {}", e.code, e.field))
            .collect()
    }

    #[test]
    fn the_documented_example_is_valid() {
        let yaml = r#"
service: orders
rules:
- matches:
  - path: {type: PathPrefix, value: /v2/}
    method: GET
    headers: [{name: x-canary, value: "true"}]
  backends:
  - {service: orders, version: v2, weight: 100}
- matches: [{path: {type: PathPrefix, value: /}}]
  backends:
  - {service: orders, version: v1, weight: 90}
  - {service: orders, version: v2, weight: 10}
  timeouts: {request: 2s, backendRequest: 500ms}
  retry: {codes: [502, 503, 504], attempts: 2, backoff: 25ms}
  filters:
  - {type: RequestHeaderModifier, set: [{name: x-from, value: mesh}]}
"#;
        assert_eq!(errors(yaml), Vec::<String>::new());
        let spec: RouteSpec = serde_yaml_ng::from_str(yaml).unwrap();
        assert_eq!(spec.rules[1].backends[1].weight, 10);
        assert_eq!(
            spec.rules[0].matches[0].path.as_ref().unwrap().kind,
            PathMatchKind::PathPrefix
        );
    }

    #[test]
    fn problems_point_at_their_field() {
        let yaml = r#"
service: orders
rules:
- matches:
  - path: {type: Exact, value: "no-slash"}
    method: FETCH
    headers: [{name: "bad header", value: x}]
    queryParams: [{name: q, value: "(", type: RegularExpression}]
  backends: [{service: orders, weight: 0}]
  filters:
  - {type: URLRewrite, path: {type: ReplacePrefixMatch, value: /x}}
  - {type: RequestRedirect, statusCode: 200}
  retry: {attempts: 11}
"#;
        assert_eq!(
            errors(yaml),
            [
                "E2003 spec.rules[0].matches[0].path.value",
                "E2004 spec.rules[0].matches[0].method",
                "E2005 spec.rules[0].matches[0].headers[0].name",
                "E2003 spec.rules[0].matches[0].queryParams[0].value",
                "E2006 spec.rules[0].backends",
                "E2009 spec.rules[0].filters[0].path.type",
                "E2008 spec.rules[0].filters[1].statusCode",
                "E2104 spec.rules[0].retry.attempts",
            ]
        );
    }

    #[test]
    fn a_route_needs_rules_and_known_filters() {
        assert_eq!(errors("service: orders\nrules: []\n"), ["E2002 spec.rules"]);
        let err = serde_yaml_ng::from_str::<RouteSpec>(
            "service: orders\nrules: [{filters: [{type: Teleport}]}]\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("Teleport"), "{err}");
    }
}
