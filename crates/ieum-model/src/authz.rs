//! `AuthorizationPolicy`: which callers may reach a service, and with which requests.
//!
//! A policy targets one `Service`; that service's own sidecars enforce it on every call
//! in, from the pushed snapshot (never asking the server on the request path). It holds an
//! optional `default` and a list of `rules`; a rule allows or denies the requests that
//! match both its `from` (who calls) and its `to` (what is asked).
//!
//! **Callers** (principals) are the mesh identities mTLS proves, written as strings: a
//! service name (`orders`), `gateway:NAME`, or `system:coordinator` (the server's own
//! calls: saga and flow steps). Patterns in `from` ([`PrincipalPattern`]): a service name
//! with `*` wildcards (`checkout-*`), `gateway:NAME` (wildcards too), `system:coordinator`,
//! or `*` for any mesh identity. A caller without a mesh identity (no client certificate)
//! matches no pattern.
//!
//! **Requests** (`to`): operations with `methods` (uppercase, matched exactly), `paths`
//! ([`PathPattern`]: exact, or a prefix written with a trailing `/*`) and `headers`
//! (`name: value`, `*` wildcards in the value). Every field an operation sets must match;
//! one operation of the list matching is enough.
//!
//! How rules, defaults and several policies combine is decided in `ieum-proxy`'s `authz`
//! module and documented in `docs/sidecar.md` ("Authorization").
//!
//! The matching primitives ([`PrincipalPattern::matches`], [`PathPattern::matches`],
//! [`glob`]) live here, beside the validation that accepts them, so the server and the
//! sidecar can never disagree on what a pattern means.
//!
//! Validation codes: `E32xx`. An unknown `action` or `default` is a shape error (`E1005`)
//! naming the field.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::policy::{TargetKind, TargetRef};
use crate::{Name, Validator};

/// Most rules in one policy.
pub const MAX_RULES: usize = 64;
/// Most patterns in one `from`, and most methods or paths in one operation.
pub const MAX_PATTERNS: usize = 64;
/// Most operations in one `to`, and most headers in one operation.
pub const MAX_OPERATIONS: usize = 16;
/// Longest path pattern, header value pattern or principal string.
pub const MAX_PATTERN_LEN: usize = 1024;
/// The system identities a `from` may name after `system:`.
pub const SYSTEM_IDENTITIES: [&str; 1] = ["coordinator"];

/// The spec of an `AuthorizationPolicy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    /// The service whose incoming calls this policy governs (always a `Service`).
    pub target_ref: TargetRef,
    /// What happens to a request no rule matches. Without one (in every policy of the
    /// service) the service is `allow-mesh`, or `allow-all` under `ieum server --dev`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<DefaultAction>,
    /// Rules, in order. A matching `deny` beats any matching `allow`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<AuthorizationRule>,
}

/// The decision for requests that no rule matches.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum DefaultAction {
    /// Every caller, with or without a mesh identity.
    AllowAll,
    /// Callers with a mesh identity (a valid client certificate); others are denied.
    AllowMesh,
    /// Nobody.
    Deny,
}

impl DefaultAction {
    /// The name as written in `default:`.
    pub fn as_str(self) -> &'static str {
        match self {
            DefaultAction::AllowAll => "allow-all",
            DefaultAction::AllowMesh => "allow-mesh",
            DefaultAction::Deny => "deny",
        }
    }

    /// The stricter of two defaults (`deny` > `allow-mesh` > `allow-all`): what applies
    /// when several policies of one service set different defaults.
    pub fn stricter(self, other: DefaultAction) -> DefaultAction {
        self.max(other)
    }
}

/// What a rule does to the requests it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Lets them through (unless a `deny` rule matches too).
    Allow,
    /// Refuses them with 403, whatever else matches.
    Deny,
}

impl Action {
    /// The name as written in `action:`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
}

/// One rule: who (`from`) asking what (`to`), and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationRule {
    /// `allow` or `deny`.
    pub action: Action,
    /// Caller patterns; any one matching is enough. Left out, the rule is about every
    /// caller (see `docs/sidecar.md` for callers without a mesh identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<String>>,
    /// Request patterns; any one matching is enough. Left out, every request matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<Operation>>,
}

/// What a request asks: every field set must match.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    /// Uppercase HTTP methods (`GET`, `POST`); one must equal the request's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// Path patterns: exact (`/health`), or a prefix ending in `/*` (`/stock/*`); one must
    /// match the request's path (without its query).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
    /// Header name → value pattern (`*` wildcards; `*` alone: present with any value).
    /// Every header listed must be present with a matching value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
}

/// A caller pattern of `from`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrincipalPattern {
    /// `*`: any mesh identity (services, gateways, the system).
    AnyMesh,
    /// A service name, with `*` wildcards.
    Service(String),
    /// `gateway:NAME`, NAME with `*` wildcards.
    Gateway(String),
    /// `system:NAME`, one of [`SYSTEM_IDENTITIES`].
    System(String),
}

impl PrincipalPattern {
    /// Parses a pattern as written in `from`, or says what is wrong with it.
    pub fn parse(s: &str) -> Result<PrincipalPattern, String> {
        if s == "*" {
            return Ok(PrincipalPattern::AnyMesh);
        }
        match s.split_once(':') {
            None => name_pattern(s).map(|()| PrincipalPattern::Service(s.to_owned())),
            Some(("gateway", name)) => {
                name_pattern(name).map(|()| PrincipalPattern::Gateway(name.to_owned()))
            }
            Some(("system", name)) if SYSTEM_IDENTITIES.contains(&name) => {
                Ok(PrincipalPattern::System(name.to_owned()))
            }
            Some(("system", name)) => Err(format!(
                "`system:{name}` is not a system identity: use {}",
                SYSTEM_IDENTITIES.map(|n| format!("system:{n}")).join(", ")
            )),
            Some(_) => Err(format!(
                "`{s}` is not a caller: use a service name (`orders`, `checkout-*`), \
                 `gateway:NAME`, `system:coordinator`, or `*` for any mesh identity"
            )),
        }
    }

    /// Whether a caller's principal string (`orders`, `gateway:edge`,
    /// `system:coordinator`) matches.
    pub fn matches(&self, principal: &str) -> bool {
        match self {
            PrincipalPattern::AnyMesh => true,
            PrincipalPattern::Service(p) => !principal.contains(':') && glob(p, principal),
            PrincipalPattern::Gateway(p) => principal
                .strip_prefix("gateway:")
                .is_some_and(|name| glob(p, name)),
            PrincipalPattern::System(n) => principal.strip_prefix("system:") == Some(n.as_str()),
        }
    }
}

/// Checks a caller's principal string (what mTLS proves and reports carry): a service
/// name, `gateway:NAME` or `system:NAME`.
pub fn validate_principal(s: &str) -> Result<(), String> {
    let name = match s.split_once(':') {
        None => s,
        Some(("gateway" | "system", name)) => name,
        Some(_) => {
            return Err(format!(
                "`{s}` is not a service, gateway:NAME or system:NAME"
            ));
        }
    };
    Name::parse(name).map(|_| ())
}

/// A name with `*` wildcards: lowercase letters, digits, `-` and `*`.
fn name_pattern(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("is empty: write a name, or `*` for any mesh identity".into());
    }
    if s.len() > crate::name::MAX_NAME_LEN {
        return Err(format!(
            "`{s}` is longer than {} characters",
            crate::name::MAX_NAME_LEN
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '*'))
    {
        return Err(if c.is_ascii_uppercase() {
            format!(
                "`{s}` has uppercase letters: names are lowercase (`{}`)",
                s.to_ascii_lowercase()
            )
        } else {
            format!("`{s}` has `{c}`: use lowercase letters, digits, `-` and `*` wildcards")
        });
    }
    if s.contains('*') {
        Ok(())
    } else {
        Name::parse(s).map(|_| ())
    }
}

/// Whether `text` matches `pattern`, where `*` stands for any run of characters (also
/// none) and every other character for itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    glob_bytes(pattern.as_bytes(), text.as_bytes())
}

/// [`glob`] over bytes (header values need not be UTF-8).
pub fn glob_bytes(p: &[u8], t: &[u8]) -> bool {
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and how much of the text it has taken so far.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if p.get(pi) == Some(&b'*') {
            star = Some((pi, ti));
            pi += 1;
        } else if p.get(pi) == Some(&t[ti]) {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// A path pattern of `to[].paths`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPattern {
    /// The path itself (`/health`).
    Exact(String),
    /// Everything under a prefix: `/stock/*` is `Prefix("/stock/")`, which matches
    /// `/stock/` and `/stock/7`, not `/stock` (list both to include it); `/*` matches
    /// every path.
    Prefix(String),
}

impl PathPattern {
    /// Parses a pattern, or says what is wrong with it.
    pub fn parse(s: &str) -> Result<PathPattern, String> {
        if !s.starts_with('/') {
            return Err(format!(
                "`{s}` must start with `/` (e.g. `/stock/*` or `/health`)"
            ));
        }
        if s.len() > MAX_PATTERN_LEN {
            return Err(format!("longer than {MAX_PATTERN_LEN} characters"));
        }
        if let Some(c) = s.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("`{s}` has {c:?}: encode it (`%20` for a space)"));
        }
        if s.contains(['?', '#']) {
            return Err(format!(
                "`{s}` has a query or fragment: paths are matched without the query, so drop \
                 everything from `?`"
            ));
        }
        let (body, prefix) = match s.strip_suffix("/*") {
            Some(stem) => (stem, true),
            None => (s, false),
        };
        if body.contains('*') {
            return Err(format!(
                "`{s}`: `*` is only allowed as a last segment `/*`, for a prefix (`/stock/*`)"
            ));
        }
        let segments: Vec<&str> = body.split('/').skip(1).collect();
        // `/` alone and `/*` have one empty segment; elsewhere an empty one is a `//`.
        let inner_empty = segments.len() > 1 && segments[..segments.len() - 1].contains(&"");
        let trailing_empty = prefix && segments.last() == Some(&"") && segments.len() > 1;
        if inner_empty || trailing_empty || segments.iter().any(|seg| *seg == "." || *seg == "..") {
            return Err(format!(
                "`{s}` has `//`, `.` or `..` segments: requests are matched after those are \
                 resolved, so it would never match; write the path they resolve to"
            ));
        }
        let mut bytes = body.bytes().enumerate();
        while let Some((i, b)) = bytes.next() {
            if b == b'%' {
                let hex = body.get(i + 1..i + 3).unwrap_or("");
                if hex.len() != 2 || !hex.bytes().all(|h| h.is_ascii_hexdigit()) {
                    return Err(format!(
                        "`{s}` has a `%` that is not followed by two hex digits"
                    ));
                }
                bytes.next();
                bytes.next();
            }
        }
        Ok(if prefix {
            PathPattern::Prefix(format!("{body}/"))
        } else {
            PathPattern::Exact(s.to_owned())
        })
    }

    /// Whether `path` (without its query) matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Exact(p) => path == p,
            PathPattern::Prefix(p) => path.starts_with(p.as_str()),
        }
    }
}

/// Checks an HTTP method as written in `methods`: uppercase letters.
pub fn validate_method(m: &str) -> Result<(), String> {
    if !m.is_empty() && m.len() <= 32 && m.bytes().all(|b| b.is_ascii_uppercase()) {
        return Ok(());
    }
    if !m.is_empty() && m.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(format!(
            "`{m}`: write methods in uppercase (`{}`)",
            m.to_ascii_uppercase()
        ));
    }
    Err(format!(
        "`{m}` is not an HTTP method: uppercase letters, e.g. GET, POST, DELETE"
    ))
}

impl AuthorizationPolicySpec {
    /// Checks every field; paths are relative to `v`'s prefix (`spec`).
    pub fn validate(&self, v: &mut Validator) {
        v.check(
            self.target_ref.kind == TargetKind::Service,
            "E3201",
            "targetRef.kind",
            || {
                format!(
                    "`{:?}`: an AuthorizationPolicy targets a Service (its sidecars enforce it on \
                     every call in); use `targetRef: {{kind: Service, name: …}}`",
                    self.target_ref.kind
                )
            },
        );
        v.check(
            self.default.is_some() || !self.rules.is_empty(),
            "E3202",
            "",
            || {
                "the policy says nothing: set `default` (allow-all, allow-mesh or deny), add \
                 `rules`, or both"
                    .into()
            },
        );
        v.check(self.rules.len() <= MAX_RULES, "E3208", "rules", || {
            format!("at most {MAX_RULES} rules (has {})", self.rules.len())
        });
        for (i, rule) in self.rules.iter().enumerate() {
            v.nested(&format!("rules[{i}]"), |v| rule.validate(v));
        }
    }

    /// The service targeted.
    pub fn service(&self) -> &Name {
        &self.target_ref.name
    }
}

/// Records `E3203` when a list is present but empty.
fn not_empty<T>(v: &mut Validator, field: &str, list: Option<&[T]>, instead: &str) {
    if list.is_some_and(|l| l.is_empty()) {
        v.error(
            "E3203",
            field,
            format!("an empty list matches nothing here: {instead}"),
        );
    }
}

/// Records `E3208` when a list is longer than `max`.
fn at_most(v: &mut Validator, field: &str, len: usize, max: usize) {
    v.check(len <= max, "E3208", field, || {
        format!("at most {max} entries (has {len})")
    });
}

impl AuthorizationRule {
    /// Checks the rule; paths are relative to `v`'s prefix (`spec.rules[i]`).
    pub fn validate(&self, v: &mut Validator) {
        v.check(
            self.from.is_some() || self.to.is_some(),
            "E3203",
            "",
            || {
                format!(
                    "a rule with neither `from` nor `to` matches every request: say who calls \
                 (`from`) or what they ask (`to`), or use `default: {}` instead",
                    match self.action {
                        Action::Allow => "allow-all",
                        Action::Deny => "deny",
                    }
                )
            },
        );
        not_empty(
            v,
            "from",
            self.from.as_deref(),
            "list callers, or leave `from` out to match any caller",
        );
        not_empty(
            v,
            "to",
            self.to.as_deref(),
            "list operations, or leave `to` out to match any request",
        );
        if let Some(from) = &self.from {
            at_most(v, "from", from.len(), MAX_PATTERNS);
            for (i, p) in from.iter().enumerate() {
                if let Err(why) = PrincipalPattern::parse(p) {
                    v.error("E3204", &format!("from[{i}]"), why);
                }
            }
        }
        if let Some(to) = &self.to {
            at_most(v, "to", to.len(), MAX_OPERATIONS);
            for (i, op) in to.iter().enumerate() {
                v.nested(&format!("to[{i}]"), |v| op.validate(v));
            }
        }
    }
}

impl Operation {
    /// Checks the operation; paths are relative to `v`'s prefix (`spec.rules[i].to[j]`).
    pub fn validate(&self, v: &mut Validator) {
        v.check(
            self.methods.is_some() || self.paths.is_some() || self.headers.is_some(),
            "E3203",
            "",
            || {
                "an operation without `methods`, `paths` or `headers` matches every request: \
                 leave `to` out instead"
                    .into()
            },
        );
        let leave_out = |f: &str| format!("list some, or leave `{f}` out to match any");
        not_empty(v, "methods", self.methods.as_deref(), &leave_out("methods"));
        not_empty(v, "paths", self.paths.as_deref(), &leave_out("paths"));
        if self.headers.as_ref().is_some_and(BTreeMap::is_empty) {
            v.error(
                "E3203",
                "headers",
                format!(
                    "an empty map matches nothing here: {}",
                    leave_out("headers")
                ),
            );
        }
        if let Some(methods) = &self.methods {
            at_most(v, "methods", methods.len(), MAX_PATTERNS);
            for (i, m) in methods.iter().enumerate() {
                if let Err(why) = validate_method(m) {
                    v.error("E3205", &format!("methods[{i}]"), why);
                }
            }
        }
        if let Some(paths) = &self.paths {
            at_most(v, "paths", paths.len(), MAX_PATTERNS);
            for (i, p) in paths.iter().enumerate() {
                if let Err(why) = PathPattern::parse(p) {
                    v.error("E3206", &format!("paths[{i}]"), why);
                }
            }
        }
        if let Some(headers) = &self.headers {
            at_most(v, "headers", headers.len(), MAX_OPERATIONS);
            for (name, value) in headers {
                let field = format!("headers.{name}");
                v.check(
                    crate::saga::valid_header_name(name) && name.len() <= 128,
                    "E3207",
                    &field,
                    || format!("`{name}` is not a header name (a token of up to 128 characters)"),
                );
                v.check(
                    !value.is_empty()
                        && value.len() <= MAX_PATTERN_LEN
                        && !value.chars().any(char::is_control),
                    "E3207",
                    &field,
                    || {
                        format!(
                            "the value pattern must be 1 to {MAX_PATTERN_LEN} characters without \
                             control characters (`*` for any value)"
                        )
                    },
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{check, parse_documents};

    fn errors(spec: &str) -> Vec<String> {
        let text = format!(
            "apiVersion: ieum.dev/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p}}\nspec:\n{spec}"
        );
        match check(&parse_documents(&text).unwrap()[0]) {
            Ok(_) => Vec::new(),
            Err(errs) => errs
                .iter()
                .map(|e| format!("{} {}", e.code, e.field))
                .collect(),
        }
    }

    #[test]
    fn the_documented_example_checks_normalizes_and_names_its_service() {
        let text = r#"
apiVersion: ieum.dev/v1
kind: AuthorizationPolicy
metadata: {name: stock-callers}
spec:
  targetRef: {kind: Service, name: stock}
  default: deny
  rules:
  - action: allow
    from: [orders, "checkout-*"]
    to: [{methods: [GET, POST], paths: ["/stock/*"]}]
  - action: allow
    from: ["gateway:edge", "system:coordinator"]
  - action: deny
    from: [reports]
  - action: allow
    to: [{headers: {x-probe: "*"}}]
"#;
        let checked = check(&parse_documents(text).unwrap()[0]).unwrap();
        assert_eq!(checked.id(), "AuthorizationPolicy/stock-callers");
        assert_eq!(checked.services, [Name::parse("stock").unwrap()]);
        assert_eq!(checked.spec["default"], "deny");
        assert_eq!(checked.spec["rules"][1]["action"], "allow");
        assert!(
            checked.spec["rules"][1].get("to").is_none(),
            "absent stays absent"
        );
        let spec: AuthorizationPolicySpec = serde_json::from_value(checked.spec).unwrap();
        assert_eq!(spec.default, Some(DefaultAction::Deny));
        assert_eq!(spec.rules[2].action, Action::Deny);
        assert_eq!(
            spec.rules[0].to.as_ref().unwrap()[0].paths.as_deref(),
            Some(&["/stock/*".to_owned()][..])
        );
    }

    #[test]
    fn bad_policies_get_codes_and_field_paths() {
        assert_eq!(
            errors("  targetRef: {kind: Route, name: r}\n  default: deny\n"),
            ["E3201 spec.targetRef.kind"]
        );
        assert_eq!(
            errors("  targetRef: {kind: Service, name: s}\n"),
            ["E3202 spec"]
        );
        assert_eq!(
            errors(
                "  targetRef: {kind: Service, name: s}\n  rules:\n  - {action: allow, from: [a]}\n  - {action: permit}\n"
            ),
            ["E1005 spec.rules[1].action"],
            "an unknown action is a shape error naming the field"
        );
        assert_eq!(
            errors("  targetRef: {kind: Service, name: s}\n  default: allow-some\n"),
            ["E1005 spec.default"]
        );
        assert_eq!(
            errors(
                "  targetRef: {kind: Service, name: s}\n  rules:\n  - {action: allow, from: [a], to: [{verbs: [GET]}]}\n"
            ),
            ["E1002 spec.rules[0].to[0].verbs"]
        );
        let spec = r#"  targetRef: {kind: Service, name: s}
  rules:
  - {action: deny}
  - action: allow
    from: ["Orders", "spiffe://x/svc/a", "gateway:", "system:janitor", "ok-*", "*", "a_b"]
  - action: allow
    from: []
    to: []
  - action: allow
    to:
    - {}
    - methods: [get, "P0ST", GET]
      paths: ["stock/*", "/a/*/b", "/a?x=1", "/a//b", "/a/../b", "/x/*", "/*", "/%zz", "/%41"]
      headers: {"bad header": x, x-ok: "", x-fine: "v*"}
    - {methods: []}
"#;
        assert_eq!(
            errors(spec),
            [
                "E3203 spec.rules[0]",
                "E3204 spec.rules[1].from[0]",
                "E3204 spec.rules[1].from[1]",
                "E3204 spec.rules[1].from[2]",
                "E3204 spec.rules[1].from[3]",
                "E3204 spec.rules[1].from[6]",
                "E3203 spec.rules[2].from",
                "E3203 spec.rules[2].to",
                "E3203 spec.rules[3].to[0]",
                "E3205 spec.rules[3].to[1].methods[0]",
                "E3205 spec.rules[3].to[1].methods[1]",
                "E3206 spec.rules[3].to[1].paths[0]",
                "E3206 spec.rules[3].to[1].paths[1]",
                "E3206 spec.rules[3].to[1].paths[2]",
                "E3206 spec.rules[3].to[1].paths[3]",
                "E3206 spec.rules[3].to[1].paths[4]",
                "E3206 spec.rules[3].to[1].paths[7]",
                "E3207 spec.rules[3].to[1].headers.bad header",
                "E3207 spec.rules[3].to[1].headers.x-ok",
                "E3203 spec.rules[3].to[2].methods",
            ]
        );
        let many = format!(
            "  targetRef: {{kind: Service, name: s}}\n  rules:\n{}",
            "  - {action: deny, from: [a]}\n".repeat(MAX_RULES + 1)
        );
        assert_eq!(errors(&many), ["E3208 spec.rules"]);
    }

    #[test]
    fn messages_say_what_to_write() {
        let text = "apiVersion: ieum.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec: {targetRef: {kind: Service, name: s}, rules: [{action: allow, from: [Orders], to: [{methods: [get]}]}]}\n";
        let errs = check(&parse_documents(text).unwrap()[0]).unwrap_err();
        let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "E3204 spec.rules[0].from[0]: `Orders` has uppercase letters: names are lowercase (`orders`)",
                "E3205 spec.rules[0].to[0].methods[0]: `get`: write methods in uppercase (`GET`)",
            ]
        );
    }

    #[test]
    fn principal_patterns_match_their_kind_of_caller_only() {
        let p = |s: &str| PrincipalPattern::parse(s).unwrap();
        assert!(p("orders").matches("orders"));
        assert!(!p("orders").matches("orders-v2"));
        assert!(p("checkout-*").matches("checkout-web"));
        assert!(p("checkout-*").matches("checkout-"));
        assert!(!p("checkout-*").matches("checkout"));
        assert!(
            !p("checkout-*").matches("gateway:checkout-web"),
            "a service pattern never matches a gateway"
        );
        assert!(p("*-api").matches("orders-api"));
        assert!(p("gateway:edge").matches("gateway:edge"));
        assert!(!p("gateway:edge").matches("edge"));
        assert!(p("gateway:*").matches("gateway:internal"));
        assert!(!p("gateway:*").matches("system:coordinator"));
        assert!(p("system:coordinator").matches("system:coordinator"));
        assert!(!p("system:coordinator").matches("coordinator"));
        for caller in ["orders", "gateway:edge", "system:coordinator"] {
            assert!(p("*").matches(caller), "{caller}");
        }
        assert_eq!(PrincipalPattern::parse("*"), Ok(PrincipalPattern::AnyMesh));
        assert!(PrincipalPattern::parse("-orders").is_err());
        assert!(validate_principal("gateway:edge").is_ok());
        assert!(validate_principal("orders").is_ok());
        assert!(validate_principal("user:bob").is_err());
        assert!(validate_principal("Orders").is_err());
    }

    #[test]
    fn globs_take_any_run_of_characters() {
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "aXbYc"));
        assert!(glob("a*b*c", "abc"));
        assert!(!glob("a*b*c", "acb"));
        assert!(glob("*c", "abcbc"));
        assert!(!glob("a", "ab"));
        assert!(!glob("ab", "a"));
        assert!(glob("v1.*", "v1.2.3"));
    }

    #[test]
    fn path_patterns_are_exact_or_prefixes() {
        let p = |s: &str| PathPattern::parse(s).unwrap();
        assert_eq!(p("/stock/*"), PathPattern::Prefix("/stock/".into()));
        assert!(p("/stock/*").matches("/stock/7"));
        assert!(p("/stock/*").matches("/stock/"));
        assert!(!p("/stock/*").matches("/stock"));
        assert!(!p("/stock/*").matches("/stocks/7"));
        assert!(p("/*").matches("/"));
        assert!(p("/*").matches("/anything/at/all"));
        assert!(p("/health").matches("/health"));
        assert!(!p("/health").matches("/health/"));
        assert!(p("/").matches("/"));
        assert!(p("/a%20b").matches("/a%20b"));
        assert!(PathPattern::parse("/a/*/").is_err());
        assert!(PathPattern::parse("/a//*").is_err());
        assert!(PathPattern::parse("*").is_err());
    }

    #[test]
    fn stricter_defaults_win() {
        use DefaultAction::*;
        assert_eq!(AllowAll.stricter(AllowMesh), AllowMesh);
        assert_eq!(Deny.stricter(AllowAll), Deny);
        assert_eq!(AllowMesh.stricter(Deny), Deny);
        assert_eq!(
            serde_json::to_value(AllowMesh).unwrap(),
            serde_json::json!("allow-mesh")
        );
    }
}
