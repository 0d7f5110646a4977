//! Authorization of calls into this sidecar's service: `AuthorizationPolicy` resources
//! from the snapshot, evaluated on the inbound listener before the app is called, with no
//! call to the server.
//!
//! [`decide`] is pure: policies (compiled once per snapshot change by `config`), the
//! caller and the request's facts in, allow or deny with the rule that decided out. The
//! semantics (`docs/sidecar.md`, "Authorization"):
//!
//! 1. A policy this sidecar cannot read denies every call (fails closed).
//! 2. The *effective default* is the strictest `default` of the service's policies
//!    (`deny` > `allow-mesh` > `allow-all`); when none sets one, `allow-mesh`, or
//!    `allow-all` in dev mode.
//! 3. A matching `deny` rule (of any policy) denies, whatever else matches.
//! 4. Otherwise a matching `allow` rule (of any policy) allows.
//! 5. Otherwise the effective default decides: `allow-all` allows, `allow-mesh` allows
//!    callers with a mesh identity, `deny` denies.
//!
//! A rule without `from` matches every caller with a mesh identity. A caller without one
//! (no client certificate) matches a `deny` rule without `from` always (denying can only
//! narrow), and an `allow` rule without `from` only when the service admits such callers
//! at all: in dev mode, or when the effective default is `allow-all`. A `from` list never
//! matches a caller without an identity.
//!
//! Paths are compared in every reading the app might give them — as sent, with
//! percent-encoded unreserved characters decoded and `.`/`..`/`//` resolved, and with
//! `%2F`, `%5C` and `\` taken as `/` too: a `deny` rule matches when any reading matches,
//! an `allow` rule only when all do, so an encoding trick can only lead to a denial.
//!
//! [`PeerIdentity`] is how the TLS layer tells this module who the caller is: a request
//! extension holding the caller's principal string. Without it the caller is
//! [`Caller::Unauthenticated`].

use std::sync::Mutex;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use ieum_model::authz::{
    Action, AuthorizationPolicySpec, DefaultAction, PathPattern, PrincipalPattern, glob_bytes,
};
use ieum_model::telemetry::Denial;
use ieum_resilience::classify::{REASON_HEADER, SOURCE_HEADER, grpc};

use crate::body::{ProxyBody, text};

/// The reason header's value on a denial.
pub(crate) const DENIED_REASON: &str = "authz-denied";
/// Most distinct denials (caller, method, path, rule) kept between two telemetry reports;
/// further ones are only counted (in `/metrics` and as left out).
pub(crate) const MAX_DENIAL_SAMPLES: usize = 20;
/// Longest path kept in a denial sample and written in an answer.
const MAX_PATH_SHOWN: usize = 256;
/// gRPC's `PERMISSION_DENIED`.
const GRPC_PERMISSION_DENIED: u16 = 7;

/// The caller's mesh identity, proven by its client certificate: the principal string
/// (`orders`, `gateway:edge`, `system:coordinator`). The TLS layer of the inbound
/// listener inserts it into each request's extensions once the peer's certificate is
/// verified; a request without it comes from a caller without a mesh identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity(pub String);

/// Who is calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Caller<'a> {
    /// A mesh identity (a principal string).
    Mesh(&'a str),
    /// No mesh identity: plain text, or TLS without a client certificate.
    Unauthenticated,
}

impl<'a> Caller<'a> {
    /// The caller of `req`, from its [`PeerIdentity`].
    pub(crate) fn of<B>(req: &'a Request<B>) -> Caller<'a> {
        match req.extensions().get::<PeerIdentity>() {
            Some(PeerIdentity(p)) => Caller::Mesh(p),
            None => Caller::Unauthenticated,
        }
    }

    /// The `caller` label of `ieum_authz_denied_total`: the principal, or `-`.
    pub(crate) fn label(&self) -> &'a str {
        match *self {
            Caller::Mesh(p) => p,
            Caller::Unauthenticated => "-",
        }
    }

    fn describe(&self) -> String {
        match self {
            Caller::Mesh(p) => format!("caller `{p}`"),
            Caller::Unauthenticated => "a caller without a mesh identity".into(),
        }
    }
}

/// What a request asks, as rules see it.
#[derive(Debug)]
pub(crate) struct RequestFacts<'a> {
    method: &'a str,
    /// The path as sent, then its other readings ([`path_readings`]).
    paths: Vec<String>,
    headers: &'a HeaderMap,
}

impl<'a> RequestFacts<'a> {
    /// The facts of a request with `method`, `path` (without the query) and `headers`.
    pub(crate) fn new(method: &'a Method, path: &str, headers: &'a HeaderMap) -> Self {
        RequestFacts {
            method: method.as_str(),
            paths: path_readings(path),
            headers,
        }
    }

    /// The path as sent.
    fn path(&self) -> &str {
        self.paths.first().map_or("/", String::as_str)
    }
}

/// The readings of a path an app might give it: as sent; with percent-encoded unreserved
/// characters decoded, `.`/`..` segments resolved and `//` merged; and the same with
/// `%2F`, `%5C` and `\` as `/`. Without duplicates, the path as sent first.
fn path_readings(raw: &str) -> Vec<String> {
    let mut out = vec![raw.to_owned()];
    for slashes in [false, true] {
        let p = resolve(&decode(raw, slashes));
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// Decodes percent-encoded unreserved characters (RFC 3986: letters, digits, `-._~`),
/// and with `slashes` also `%2F`, `%5C` and `\` as `/`.
fn decode(raw: &str, slashes: bool) -> String {
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            )
        {
            let c = (h * 16 + l) as u8;
            let unreserved = c.is_ascii_alphanumeric() || b"-._~".contains(&c);
            if unreserved {
                out.push(c);
            } else if slashes && (c == b'/' || c == b'\\') {
                out.push(b'/');
            } else {
                out.extend_from_slice(&b[i..i + 3]);
            }
            i += 3;
            continue;
        }
        out.push(if slashes && b[i] == b'\\' { b'/' } else { b[i] });
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Resolves `.` and `..` segments and merges `//` (a trailing `/` stays).
fn resolve(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing = false;
    for s in path.split('/') {
        trailing = matches!(s, "" | "." | "..");
        match s {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || trailing {
        out.push('/');
    }
    out
}

/// One operation of a rule's `to`, compiled.
#[derive(Debug)]
struct Operation {
    methods: Option<Vec<String>>,
    paths: Option<Vec<PathPattern>>,
    headers: Vec<(HeaderName, String)>,
}

impl Operation {
    /// Whether `req` matches; `every_reading` demands that every reading of the path
    /// matches (allow rules), otherwise one is enough (deny rules).
    fn matches(&self, req: &RequestFacts<'_>, every_reading: bool) -> bool {
        if let Some(methods) = &self.methods
            && !methods.iter().any(|m| m == req.method)
        {
            return false;
        }
        if let Some(paths) = &self.paths {
            let one = |p: &String| paths.iter().any(|pattern| pattern.matches(p));
            let ok = if every_reading {
                req.paths.iter().all(one)
            } else {
                req.paths.iter().any(one)
            };
            if !ok {
                return false;
            }
        }
        self.headers.iter().all(|(name, pattern)| {
            req.headers
                .get_all(name)
                .iter()
                .any(|v| glob_bytes(pattern.as_bytes(), v.as_bytes()))
        })
    }
}

/// One rule, compiled.
#[derive(Debug)]
struct Rule {
    action: Action,
    from: Option<Vec<PrincipalPattern>>,
    to: Option<Vec<Operation>>,
}

impl Rule {
    fn matches(
        &self,
        caller: &Caller<'_>,
        req: &RequestFacts<'_>,
        admits_unauthenticated: bool,
    ) -> bool {
        let caller_ok = match (&self.from, caller) {
            (Some(patterns), Caller::Mesh(p)) => patterns.iter().any(|x| x.matches(p)),
            (Some(_), Caller::Unauthenticated) => false,
            (None, Caller::Mesh(_)) => true,
            (None, Caller::Unauthenticated) => {
                self.action == Action::Deny || admits_unauthenticated
            }
        };
        caller_ok
            && self.to.as_ref().is_none_or(|ops| {
                ops.iter()
                    .any(|op| op.matches(req, self.action == Action::Allow))
            })
    }
}

/// An `AuthorizationPolicy`, compiled for matching.
#[derive(Debug)]
pub(crate) struct Policy {
    /// The resource's name, named in reasons, metrics and reports.
    pub(crate) name: String,
    default: Option<DefaultAction>,
    rules: Vec<Rule>,
    /// Why this sidecar cannot read the policy; such a policy denies every call.
    unreadable: Option<String>,
}

impl Policy {
    /// Compiles a spec; a pattern that does not parse (the server validated it, so a
    /// newer format) makes the whole policy unreadable, which denies every call.
    pub(crate) fn compile(name: &str, spec: &AuthorizationPolicySpec) -> Policy {
        match compile_rules(spec) {
            Ok(rules) => Policy {
                name: name.to_owned(),
                default: spec.default,
                rules,
                unreadable: None,
            },
            Err(why) => Policy::unreadable(name, why),
        }
    }

    /// A policy this sidecar could not read (`why`): it denies every call.
    pub(crate) fn unreadable(name: &str, why: String) -> Policy {
        Policy {
            name: name.to_owned(),
            default: None,
            rules: Vec::new(),
            unreadable: Some(why),
        }
    }
}

fn compile_rules(spec: &AuthorizationPolicySpec) -> Result<Vec<Rule>, String> {
    let mut rules = Vec::with_capacity(spec.rules.len());
    for (i, r) in spec.rules.iter().enumerate() {
        let at = |why: String| format!("rules[{i}]: {why}");
        let from = match &r.from {
            Some(list) => Some(
                list.iter()
                    .map(|p| PrincipalPattern::parse(p))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(at)?,
            ),
            None => None,
        };
        let mut to = None;
        if let Some(ops) = &r.to {
            let mut compiled = Vec::with_capacity(ops.len());
            for op in ops {
                let paths = match &op.paths {
                    Some(list) => Some(
                        list.iter()
                            .map(|p| PathPattern::parse(p))
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(at)?,
                    ),
                    None => None,
                };
                let mut headers = Vec::new();
                for (name, pattern) in op.headers.iter().flatten() {
                    let name = HeaderName::from_bytes(name.as_bytes())
                        .map_err(|e| at(format!("header `{name}`: {e}")))?;
                    headers.push((name, pattern.clone()));
                }
                compiled.push(Operation {
                    methods: op.methods.clone(),
                    paths,
                    headers,
                });
            }
            to = Some(compiled);
        }
        rules.push(Rule {
            action: r.action,
            from,
            to,
        });
    }
    Ok(rules)
}

/// What decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecidedBy<'a> {
    /// Rule `index` of `policy`.
    Rule {
        policy: &'a str,
        index: usize,
        action: Action,
    },
    /// The effective default, set by `policy` (`None`: the implicit one).
    Default {
        policy: Option<&'a str>,
        default: DefaultAction,
    },
    /// A policy this sidecar cannot read.
    Unreadable { policy: &'a str, why: &'a str },
}

/// Allow or deny, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decision<'a> {
    /// Whether the call goes on to the app.
    pub(crate) allow: bool,
    /// The rule or default that decided.
    pub(crate) by: DecidedBy<'a>,
    /// Whether callers without a mesh identity can be allowed by rules without `from`
    /// (dev mode, or an effective `allow-all`): says which fix to suggest.
    admits_unauthenticated: bool,
}

impl<'a> Decision<'a> {
    /// The policy whose rule or default decided; `None` for the implicit default.
    pub(crate) fn policy(&self) -> Option<&'a str> {
        match self.by {
            DecidedBy::Rule { policy, .. } | DecidedBy::Unreadable { policy, .. } => Some(policy),
            DecidedBy::Default { policy, .. } => policy,
        }
    }

    /// The index of the rule that decided, when one did.
    pub(crate) fn rule(&self) -> Option<usize> {
        match self.by {
            DecidedBy::Rule { index, .. } => Some(index),
            _ => None,
        }
    }

    /// Why, in words naming the policy and the rule.
    pub(crate) fn reason(&self, caller: &Caller<'_>) -> String {
        match self.by {
            DecidedBy::Rule {
                policy,
                index,
                action,
            } => format!(
                "rules[{index}] (action: {}) of AuthorizationPolicy/{policy} matches",
                action.as_str()
            ),
            DecidedBy::Default {
                policy: Some(policy),
                default,
            } => {
                let mut s = format!(
                    "no rule matches and AuthorizationPolicy/{policy} sets `default: {}`",
                    default.as_str()
                );
                if default == DefaultAction::AllowMesh && *caller == Caller::Unauthenticated {
                    s += ", which admits only callers with a mesh identity";
                }
                s
            }
            DecidedBy::Default {
                policy: None,
                default,
            } => {
                let mut s = format!(
                    "no AuthorizationPolicy sets a default, so the service is {}",
                    default.as_str()
                );
                if default == DefaultAction::AllowMesh && *caller == Caller::Unauthenticated {
                    s += ", which admits only callers with a mesh identity";
                }
                s
            }
            DecidedBy::Unreadable { policy, why } => format!(
                "AuthorizationPolicy/{policy} cannot be read by this sidecar ({why}), so every \
                 call is denied until it can"
            ),
        }
    }

    /// What to change to allow such a call.
    fn fix(&self, caller: &Caller<'_>, req: &RequestFacts<'_>, service: &str) -> String {
        let what = format!(
            "to: [{{methods: [{}], paths: [\"{}\"]}}]",
            req.method,
            shown(req.path())
        );
        match (self.by, caller) {
            (DecidedBy::Unreadable { policy, .. }, _) => format!(
                "run a sidecar as new as the server, or fix or delete AuthorizationPolicy/{policy}"
            ),
            (DecidedBy::Rule { policy, index, .. }, _) => format!(
                "narrow or remove rules[{index}] of AuthorizationPolicy/{policy} \
                 (`ieum get authorizationpolicy {policy}`), then `ieum apply` it"
            ),
            (DecidedBy::Default { policy, .. }, Caller::Mesh(p)) => {
                let rule = format!("{{action: allow, from: [\"{p}\"], {what}}}");
                match policy {
                    Some(policy) => format!(
                        "add the rule `{rule}` to AuthorizationPolicy/{policy} and `ieum apply` it"
                    ),
                    None => format!(
                        "apply an AuthorizationPolicy targeting `{service}` with the rule `{rule}`"
                    ),
                }
            }
            (DecidedBy::Default { policy, .. }, Caller::Unauthenticated)
                if self.admits_unauthenticated =>
            {
                let rule = format!("{{action: allow, {what}}}");
                match policy {
                    Some(policy) => format!(
                        "add the rule `{rule}` to AuthorizationPolicy/{policy} and `ieum apply` it"
                    ),
                    None => format!(
                        "apply an AuthorizationPolicy targeting `{service}` with the rule `{rule}`"
                    ),
                }
            }
            (DecidedBy::Default { .. }, Caller::Unauthenticated) => format!(
                "call through a sidecar of the mesh (its client certificate names the caller), \
                 or set `default: allow-all` in an AuthorizationPolicy targeting `{service}` to \
                 admit callers without a mesh identity"
            ),
        }
    }
}

/// The strictest `default` of `policies` and the first policy (in name order) that sets
/// it; without any, the implicit default (`allow-mesh`, `allow-all` in dev mode).
fn effective_default(policies: &[Policy], dev_mode: bool) -> (DefaultAction, Option<&str>) {
    let mut best: Option<(DefaultAction, &str)> = None;
    for p in policies {
        if let Some(d) = p.default
            && best.is_none_or(|(b, _)| d > b)
        {
            best = Some((d, p.name.as_str()));
        }
    }
    match best {
        Some((d, name)) => (d, Some(name)),
        None if dev_mode => (DefaultAction::AllowAll, None),
        None => (DefaultAction::AllowMesh, None),
    }
}

/// Decides a call into the service that `policies` target (all of them; in name order).
/// `dev_mode`: no mTLS is expected (`ieum server --dev`, or a sidecar that does not
/// enforce mesh identities yet), so the implicit default is `allow-all` and rules without
/// `from` also match callers without an identity.
pub(crate) fn decide<'a>(
    policies: &'a [Policy],
    caller: &Caller<'_>,
    req: &RequestFacts<'_>,
    dev_mode: bool,
) -> Decision<'a> {
    let (default, set_by) = effective_default(policies, dev_mode);
    let admits_unauthenticated = dev_mode || default == DefaultAction::AllowAll;
    let decision = |allow, by| Decision {
        allow,
        by,
        admits_unauthenticated,
    };
    if let Some(p) = policies.iter().find(|p| p.unreadable.is_some()) {
        let why = p.unreadable.as_deref().unwrap_or_default();
        return decision(
            false,
            DecidedBy::Unreadable {
                policy: &p.name,
                why,
            },
        );
    }
    let mut allowed = None;
    for p in policies {
        for (index, rule) in p.rules.iter().enumerate() {
            if !rule.matches(caller, req, admits_unauthenticated) {
                continue;
            }
            let by = DecidedBy::Rule {
                policy: &p.name,
                index,
                action: rule.action,
            };
            match rule.action {
                Action::Deny => return decision(false, by),
                Action::Allow => {
                    allowed.get_or_insert(by);
                }
            }
        }
    }
    if let Some(by) = allowed {
        return decision(true, by);
    }
    let allow = match default {
        DefaultAction::AllowAll => true,
        DefaultAction::AllowMesh => matches!(caller, Caller::Mesh(_)),
        DefaultAction::Deny => false,
    };
    decision(
        allow,
        DecidedBy::Default {
            policy: set_by,
            default,
        },
    )
}

/// `path` cut to [`MAX_PATH_SHOWN`] characters.
fn shown(path: &str) -> &str {
    match path.char_indices().nth(MAX_PATH_SHOWN) {
        Some((i, _)) => &path[..i],
        None => path,
    }
}

/// The answer to a denied call: 403 with `ieum-reason: authz-denied` and a body saying
/// which rule or default denied it and how to allow it (gRPC callers get
/// `PERMISSION_DENIED`).
pub(crate) fn forbidden(
    decision: &Decision<'_>,
    caller: &Caller<'_>,
    req: &RequestFacts<'_>,
    service: &str,
    grpc: bool,
) -> Response<ProxyBody> {
    let body = format!(
        "{DENIED_REASON}: {} may not {} {} on `{service}`: {}. To allow it, {}.\n",
        caller.describe(),
        req.method,
        shown(req.path()),
        decision.reason(caller),
        decision.fix(caller, req, service)
    );
    let mut res = Response::new(text(if grpc { String::new() } else { body }));
    if !grpc {
        *res.status_mut() = StatusCode::FORBIDDEN;
    }
    let h = res.headers_mut();
    h.insert(REASON_HEADER, HeaderValue::from_static(DENIED_REASON));
    h.insert(SOURCE_HEADER, HeaderValue::from_static("local"));
    if grpc {
        h.insert(grpc::STATUS, HeaderValue::from(GRPC_PERMISSION_DENIED));
        h.insert(grpc::MESSAGE, HeaderValue::from_static(DENIED_REASON));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
    } else {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    res
}

/// Samples of denied calls kept for the next telemetry report: one line per caller,
/// method, path and deciding rule with a count, at most [`MAX_DENIAL_SAMPLES`] lines; the
/// rest are counted as left out.
#[derive(Debug, Default)]
pub(crate) struct DenialLog {
    inner: Mutex<(Vec<Denial>, u64)>,
}

impl DenialLog {
    /// Notes a denied call.
    pub(crate) fn record(&self, caller: &Caller<'_>, req: &RequestFacts<'_>, d: &Decision<'_>) {
        let caller = match caller {
            Caller::Mesh(p) => Some(*p),
            Caller::Unauthenticated => None,
        };
        let path = shown(req.path());
        let policy = d.policy();
        let rule = d.rule().and_then(|r| u32::try_from(r).ok());
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (lines, left_out) = &mut *inner;
        let same = lines.iter().position(|l| {
            l.caller.as_deref() == caller
                && l.method == req.method
                && l.path == path
                && l.policy.as_deref() == policy
                && l.rule == rule
        });
        match same {
            Some(i) => lines[i].count += 1,
            None if lines.len() < MAX_DENIAL_SAMPLES => lines.push(Denial {
                caller: caller.map(str::to_owned),
                method: req.method.to_owned(),
                path: path.to_owned(),
                policy: policy.map(str::to_owned),
                rule,
                count: 1,
            }),
            None => *left_out += 1,
        }
    }

    /// The lines kept since the last call, and how many denials did not fit.
    pub(crate) fn take(&self) -> (Vec<Denial>, u64) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (lines, left_out) = std::mem::take(&mut *inner);
        (lines, left_out)
    }
}

#[cfg(test)]
mod tests;
