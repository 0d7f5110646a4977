//! The effective configuration, read from the client's snapshot: routes compiled for
//! matching, and the policies that apply to each destination.
//!
//! Rebuilt only when a resource changes (its revision), never on the request path.
//! Precedence follows `ieum_model::policy`: a Route rule's own `timeouts`/`retry` > a
//! `ResiliencePolicy` targeting that Route > one targeting the Service > the defaults.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use http::{HeaderMap, HeaderName, HeaderValue, Method, Request};
use ieum_client::Snapshot;
use ieum_model::authz::AuthorizationPolicySpec;
use ieum_model::policy::{
    FaultInjectionSpec, RateLimitPolicySpec, ResiliencePolicySpec, TargetKind, TargetRef,
};
use ieum_model::route::{
    Backend, Filter, HeaderModifier, PathMatchKind, PathRewriteKind, RouteRule, RouteSpec,
    ValueMatchKind,
};
use ieum_resilience::limit::{RateLimitConfig, RateLimitLayer};
use ieum_resilience::stack::StackConfig;
use regex::Regex;
use serde::Serialize;

/// Resources and the revisions they had when the configuration was built.
pub(crate) type Fingerprint = Vec<(String, i64)>;

/// The fingerprint of a snapshot's resources.
pub(crate) fn fingerprint(s: &Snapshot) -> Fingerprint {
    s.resources
        .iter()
        .map(|(k, r)| (k.clone(), r.revision))
        .collect()
}

/// A value condition compiled once.
#[derive(Debug)]
enum Cond {
    Exact(String),
    Regex(Regex),
}

impl Cond {
    fn new(kind: ValueMatchKind, value: &str) -> Option<Cond> {
        Some(match kind {
            ValueMatchKind::Exact => Cond::Exact(value.to_owned()),
            ValueMatchKind::RegularExpression => Cond::Regex(anchored(value)?),
        })
    }

    fn test(&self, v: &str) -> bool {
        match self {
            Cond::Exact(e) => e == v,
            Cond::Regex(r) => r.is_match(v),
        }
    }
}

fn anchored(pattern: &str) -> Option<Regex> {
    Regex::new(&format!("^(?:{pattern})$")).ok()
}

#[derive(Debug)]
enum PathCond {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

#[derive(Debug, Default)]
struct Match {
    path: Option<PathCond>,
    method: Option<Method>,
    headers: Vec<(HeaderName, Cond)>,
    query: Vec<(String, Cond)>,
}

impl Match {
    fn test<B>(&self, req: &Request<B>, path: &str) -> bool {
        if let Some(p) = &self.path {
            let ok = match p {
                PathCond::Exact(v) => path == v,
                PathCond::Prefix(v) => prefix_matches(path, v),
                PathCond::Regex(r) => r.is_match(path),
            };
            if !ok {
                return false;
            }
        }
        if self.method.as_ref().is_some_and(|m| m != req.method()) {
            return false;
        }
        for (name, cond) in &self.headers {
            let found = req
                .headers()
                .get_all(name)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| cond.test(v)));
            if !found {
                return false;
            }
        }
        if !self.query.is_empty() {
            let query = req.uri().query().unwrap_or("");
            for (name, cond) in &self.query {
                let found = query.split('&').any(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    k == name && cond.test(v)
                });
                if !found {
                    return false;
                }
            }
        }
        true
    }
}

/// `/v2` matches `/v2` and `/v2/x`, not `/v22` (Gateway API).
fn prefix_matches(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return true;
    }
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// One route resource, compiled.
#[derive(Debug)]
pub(crate) struct CompiledRoute {
    /// The resource's name: the `route` label and the target of Route-scoped policies.
    pub(crate) name: String,
    spec: RouteSpec,
    matches: Vec<Vec<Match>>,
}

/// What a request was matched to.
#[derive(Debug, Clone)]
pub(crate) struct Selection<'a> {
    /// The route resource, if one matched.
    pub(crate) route: Option<&'a CompiledRoute>,
    /// The rule within it.
    pub(crate) rule: Option<(usize, &'a RouteRule)>,
}

impl Selection<'_> {
    /// The `route` label.
    pub(crate) fn label(&self) -> &str {
        self.route.map_or("default", |r| r.name.as_str())
    }

    /// The rule's filters.
    pub(crate) fn filters(&self) -> &[Filter] {
        self.rule.map_or(&[], |(_, r)| r.filters.as_slice())
    }

    /// The matched path prefix (for `ReplacePrefixMatch`).
    fn prefix(&self) -> Option<&str> {
        let (_, rule) = self.rule?;
        rule.matches.iter().find_map(|m| {
            m.path
                .as_ref()
                .filter(|p| p.kind == PathMatchKind::PathPrefix)
                .map(|p| p.value.as_str())
        })
    }
}

/// The configuration in effect.
#[derive(Default)]
pub(crate) struct Config {
    pub(crate) fingerprint: Fingerprint,
    /// The stacks built under this configuration; replaced with it, so a policy change
    /// never leaves a stack built from the old one in use.
    pub(crate) dests: crate::dest::Dests,
    /// Routes by the service callers address, in resource-name order.
    routes: BTreeMap<String, Vec<CompiledRoute>>,
    policies: HashMap<(TargetKind, String), ResiliencePolicySpec>,
    rate_limits: HashMap<(TargetKind, String), RateLimitPolicySpec>,
    faults: HashMap<(TargetKind, String), FaultInjectionSpec>,
    /// `AuthorizationPolicy`s by the service they target, compiled, in name order: read
    /// by the inbound listener for every call, so indexed here once per change.
    authz: HashMap<String, Vec<crate::authz::Policy>>,
    /// Resources that could not be read, with why (shown by `/config`).
    problems: Vec<String>,
    /// The limit on calls into this sidecar's own service, built on first use.
    inbound_limit: OnceLock<RateLimitLayer>,
}

fn target(t: &TargetRef) -> (TargetKind, String) {
    (t.kind, t.name.as_str().to_owned())
}

impl Config {
    /// Reads every resource of the snapshot. A resource that does not parse is skipped
    /// (and reported by `/config`): the server validated it, so this means a newer format.
    pub(crate) fn from_snapshot(s: &Snapshot) -> Config {
        let mut c = Config {
            fingerprint: fingerprint(s),
            ..Config::default()
        };
        for (key, r) in &s.resources {
            let spec = r.spec.clone();
            let result = match r.kind.as_str() {
                "Route" => serde_json::from_value::<RouteSpec>(spec).map(|spec| {
                    let matches = spec
                        .rules
                        .iter()
                        .map(|rule| rule.matches.iter().map(compile_match).collect())
                        .collect();
                    c.routes
                        .entry(spec.service.as_str().to_owned())
                        .or_default()
                        .push(CompiledRoute {
                            name: r.name.clone(),
                            spec,
                            matches,
                        });
                }),
                "ResiliencePolicy" => {
                    serde_json::from_value::<ResiliencePolicySpec>(spec).map(|p| {
                        c.policies.insert(target(&p.target_ref), p);
                    })
                }
                "RateLimitPolicy" => serde_json::from_value::<RateLimitPolicySpec>(spec).map(|p| {
                    c.rate_limits.insert(target(&p.target_ref), p);
                }),
                "FaultInjection" => serde_json::from_value::<FaultInjectionSpec>(spec).map(|p| {
                    c.faults.insert(target(&p.target_ref), p);
                }),
                "AuthorizationPolicy" => {
                    match serde_json::from_value::<AuthorizationPolicySpec>(spec) {
                        Ok(p) => {
                            let policy = crate::authz::Policy::compile(&r.name, &p);
                            c.authz
                                .entry(p.service().as_str().to_owned())
                                .or_default()
                                .push(policy);
                            Ok(())
                        }
                        Err(e) => {
                            // Fails closed: a policy this sidecar cannot read denies
                            // every call into the service it targets.
                            if let Some(service) = r.spec["targetRef"]["name"].as_str() {
                                let policy =
                                    crate::authz::Policy::unreadable(&r.name, e.to_string());
                                c.authz.entry(service.to_owned()).or_default().push(policy);
                            }
                            Err(e)
                        }
                    }
                }
                _ => Ok(()),
            };
            if let Err(e) = result {
                tracing::warn!(resource = %key, error = %e, "ignoring a resource this sidecar cannot read");
                c.problems.push(format!("{key}: {e}"));
            }
        }
        for list in c.authz.values_mut() {
            list.sort_by(|a, b| a.name.cmp(&b.name));
        }
        c
    }

    /// The `AuthorizationPolicy`s targeting `service`, in name order (none: empty).
    pub(crate) fn authorization(&self, service: &str) -> &[crate::authz::Policy] {
        self.authz.get(service).map_or(&[], Vec::as_slice)
    }

    /// The route rule that takes `req` addressed to `service` (path given separately, as
    /// the path form strips its prefix). Rules are tried in order, routes in name order;
    /// a call no rule matches goes to the service itself with its policies.
    pub(crate) fn select<B>(&self, service: &str, req: &Request<B>, path: &str) -> Selection<'_> {
        for route in self.routes.get(service).into_iter().flatten() {
            for (i, (rule, matches)) in route.spec.rules.iter().zip(&route.matches).enumerate() {
                if matches.is_empty() || matches.iter().any(|m| m.test(req, path)) {
                    return Selection {
                        route: Some(route),
                        rule: Some((i, rule)),
                    };
                }
            }
        }
        Selection {
            route: None,
            rule: None,
        }
    }

    /// The resilience policy for calls to `service` through `route`: the Route's policy
    /// over the Service's (stanza by stanza).
    pub(crate) fn policy(&self, service: &str, route: Option<&str>) -> ResiliencePolicySpec {
        let svc = self
            .policies
            .get(&(TargetKind::Service, service.to_owned()));
        let rt = route.and_then(|r| self.policies.get(&(TargetKind::Route, r.to_owned())));
        match (rt, svc) {
            (Some(r), Some(s)) => r.overlay(s),
            (Some(p), None) | (None, Some(p)) => p.clone(),
            (None, None) => ResiliencePolicySpec::new(TargetRef {
                kind: TargetKind::Service,
                name: ieum_model::Name::parse(service)
                    .or_else(|_| ieum_model::Name::parse("default"))
                    .expect("`default` is a valid name"),
            }),
        }
    }

    /// The rate limit of calls through `route` (outbound). A limit on a Service is applied
    /// by that service's own sidecar, inbound ([`Config::inbound_rate_limit`]).
    fn rate_limit(&self, route: Option<&str>) -> Option<&RateLimitPolicySpec> {
        route.and_then(|r| self.rate_limits.get(&(TargetKind::Route, r.to_owned())))
    }

    /// The rate limit on calls into `service`, applied by its sidecar.
    pub(crate) fn inbound_rate_limit(&self, service: &str) -> Option<&RateLimitPolicySpec> {
        self.rate_limits
            .get(&(TargetKind::Service, service.to_owned()))
    }

    /// The limiter of calls into `service` (a pass-through without a limit). One per
    /// configuration, so its state lasts until the configuration changes.
    pub(crate) fn inbound_limiter(&self, service: &str) -> &RateLimitLayer {
        self.inbound_limit.get_or_init(|| {
            RateLimitLayer::new(
                self.inbound_rate_limit(service)
                    .and_then(|r| RateLimitConfig::from_policy(&r.limit)),
            )
        })
    }

    /// Faults injected into calls to `service` through `route` (the Route's win).
    fn fault(&self, service: &str, route: Option<&str>) -> Option<&FaultInjectionSpec> {
        route
            .and_then(|r| self.faults.get(&(TargetKind::Route, r.to_owned())))
            .or_else(|| self.faults.get(&(TargetKind::Service, service.to_owned())))
    }

    /// The typed stack configuration for one destination.
    pub(crate) fn stack(
        &self,
        caller: &str,
        zone: Option<Arc<str>>,
        sel: &Selection<'_>,
        backend: &str,
    ) -> StackConfig {
        let route = sel.route.map(|r| r.name.as_str());
        let policy = self.policy(backend, route);
        let config = StackConfig::from_policy(
            caller,
            backend,
            zone,
            &policy,
            self.rate_limit(route),
            self.fault(backend, route),
        );
        match sel.rule {
            Some((_, rule)) => config.with_route(rule.timeouts.as_ref(), rule.retry.as_ref()),
            None => config,
        }
    }

    /// Everything a destination's stack is built from, as a string: equal inputs build
    /// an equal stack, so a stack (with its breakers, latency estimates and retry budget)
    /// survives configuration changes that do not concern it.
    pub(crate) fn inputs(&self, key: &crate::dest::DestKey) -> String {
        let route = (!key.route.is_empty()).then_some(key.route.as_str());
        let rule = route
            .and_then(|r| self.routes.values().flatten().find(|c| c.name == r))
            .and_then(|c| c.spec.rules.get(key.rule));
        serde_json::json!({
            "policy": self.policy(&key.service, route),
            "rateLimit": self.rate_limit(route),
            "fault": self.fault(&key.service, route),
            "timeouts": rule.and_then(|r| r.timeouts),
            "retry": rule.and_then(|r| r.retry.as_ref()),
            "ruleExists": route.is_none() || rule.is_some(),
        })
        .to_string()
    }

    /// The effective configuration as JSON, for `/config`.
    pub(crate) fn to_json(&self, services: &[String]) -> serde_json::Value {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Effective<'a> {
            routes: Vec<(&'a str, &'a RouteSpec)>,
            policy: ResiliencePolicySpec,
            #[serde(skip_serializing_if = "Option::is_none")]
            fault_injection: Option<&'a FaultInjectionSpec>,
            #[serde(skip_serializing_if = "Option::is_none")]
            inbound_rate_limit: Option<&'a RateLimitPolicySpec>,
        }
        let per_service: BTreeMap<&str, Effective<'_>> = services
            .iter()
            .map(|s| {
                let routes = self
                    .routes
                    .get(s)
                    .into_iter()
                    .flatten()
                    .map(|r| (r.name.as_str(), &r.spec))
                    .collect();
                let e = Effective {
                    routes,
                    policy: self.policy(s, None),
                    fault_injection: self.fault(s, None),
                    inbound_rate_limit: self.inbound_rate_limit(s),
                };
                (s.as_str(), e)
            })
            .collect();
        let route_policies: BTreeMap<String, &ResiliencePolicySpec> = self
            .policies
            .iter()
            .filter(|((k, _), _)| *k == TargetKind::Route)
            .map(|((_, n), p)| (n.clone(), p))
            .collect();
        let resources: Vec<String> = self
            .fingerprint
            .iter()
            .map(|(k, rev)| format!("{k}@{rev}"))
            .collect();
        let authorization: BTreeMap<&str, Vec<&str>> = self
            .authz
            .iter()
            .map(|(s, list)| (s.as_str(), list.iter().map(|p| p.name.as_str()).collect()))
            .collect();
        serde_json::json!({
            "resources": resources,
            "services": per_service,
            "authorizationPolicies": authorization,
            "routePolicies": route_policies,
            "problems": self.problems,
        })
    }
}

fn compile_match(m: &ieum_model::route::RouteMatch) -> Match {
    // A condition that cannot compile (validated by the server, so never in practice)
    // makes the match impossible rather than broader.
    let never = || Cond::Regex(Regex::new("^\\b\\B$").expect("a valid regex"));
    Match {
        path: m.path.as_ref().map(|p| match p.kind {
            PathMatchKind::Exact => PathCond::Exact(p.value.clone()),
            PathMatchKind::PathPrefix => PathCond::Prefix(p.value.clone()),
            PathMatchKind::RegularExpression => match anchored(&p.value) {
                Some(r) => PathCond::Regex(r),
                None => PathCond::Exact(String::new()),
            },
        }),
        method: m
            .method
            .as_deref()
            .and_then(|s| Method::from_bytes(s.as_bytes()).ok()),
        headers: m
            .headers
            .iter()
            .filter_map(|h| {
                let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
                Some((name, Cond::new(h.kind, &h.value).unwrap_or_else(never)))
            })
            .collect(),
        query: m
            .query_params
            .iter()
            .map(|q| {
                (
                    q.name.clone(),
                    Cond::new(q.kind, &q.value).unwrap_or_else(never),
                )
            })
            .collect(),
    }
}

/// Picks a backend of `rule` by weight among the lowest priority that has an endpoint up
/// (`has_endpoints` says so for a backend); `None` when the rule has no backends (the call
/// goes to the service addressed).
pub(crate) fn pick_backend(
    rule: &RouteRule,
    has_endpoints: impl Fn(&Backend) -> bool,
) -> Option<&Backend> {
    if rule.backends.is_empty() {
        return None;
    }
    let mut priorities: Vec<u32> = rule.backends.iter().map(|b| b.priority).collect();
    priorities.sort_unstable();
    priorities.dedup();
    let group = priorities
        .iter()
        .copied()
        .find(|p| {
            rule.backends
                .iter()
                .any(|b| b.priority == *p && b.weight > 0 && has_endpoints(b))
        })
        .unwrap_or(priorities[0]);
    let candidates: Vec<&Backend> = rule
        .backends
        .iter()
        .filter(|b| b.priority == group && b.weight > 0)
        .collect();
    let total: u64 = candidates.iter().map(|b| u64::from(b.weight)).sum();
    if total == 0 {
        return candidates.first().copied().or(rule.backends.first());
    }
    let mut n = rand::random_range(0..total);
    for b in &candidates {
        let w = u64::from(b.weight);
        if n < w {
            return Some(b);
        }
        n -= w;
    }
    candidates.last().copied()
}

/// Applies a rule's request filters: headers and path. Returns a redirect answer
/// (status, location) when the rule has one, and the new path.
pub(crate) fn apply_request_filters(
    sel: &Selection<'_>,
    headers: &mut HeaderMap,
    path: &str,
    host: &str,
) -> (Option<(u16, String)>, Option<String>) {
    let mut new_path = None;
    for f in sel.filters() {
        match f {
            Filter::RequestHeaderModifier(m) => modify(headers, m),
            Filter::UrlRewrite { path: rewrite } => {
                new_path = Some(match rewrite.kind {
                    PathRewriteKind::ReplaceFullPath => rewrite.value.clone(),
                    PathRewriteKind::ReplacePrefixMatch => {
                        let prefix = sel.prefix().unwrap_or("/").trim_end_matches('/');
                        let rest = path.strip_prefix(prefix).unwrap_or(path);
                        let base = rewrite.value.trim_end_matches('/');
                        let joined = format!("{base}{rest}");
                        if joined.is_empty() {
                            "/".to_owned()
                        } else {
                            joined
                        }
                    }
                });
            }
            Filter::RequestRedirect(r) => {
                let scheme = r.scheme.as_deref().unwrap_or("http");
                let hostname = r.hostname.as_deref().unwrap_or(host);
                let port = r.port.map(|p| format!(":{p}")).unwrap_or_default();
                let p = r.path.as_deref().unwrap_or(path);
                return (
                    Some((r.status_code, format!("{scheme}://{hostname}{port}{p}"))),
                    None,
                );
            }
            Filter::ResponseHeaderModifier(_) => {}
        }
    }
    (None, new_path)
}

/// Applies a rule's response header filters.
pub(crate) fn apply_response_filters(sel: &Selection<'_>, headers: &mut HeaderMap) {
    for f in sel.filters() {
        if let Filter::ResponseHeaderModifier(m) = f {
            modify(headers, m);
        }
    }
}

fn modify(headers: &mut HeaderMap, m: &HeaderModifier) {
    let parse = |name: &str, value: &str| {
        Some((
            HeaderName::from_bytes(name.as_bytes()).ok()?,
            HeaderValue::from_str(value).ok()?,
        ))
    };
    for h in &m.set {
        if let Some((n, v)) = parse(&h.name, &h.value) {
            headers.insert(n, v);
        }
    }
    for h in &m.add {
        if let Some((n, v)) = parse(&h.name, &h.value) {
            headers.append(n, v);
        }
    }
    for name in &m.remove {
        if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
            headers.remove(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(resources: &[(&str, &str, serde_json::Value)]) -> Snapshot {
        Snapshot::of_resources(resources)
    }

    fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn rules_match_in_order_on_path_method_headers_and_query() {
        let c = Config::from_snapshot(&snapshot(&[(
            "Route",
            "orders-main",
            serde_json::json!({"service": "orders", "rules": [
                {"matches": [{"path": {"type": "PathPrefix", "value": "/v2"}, "method": "GET",
                              "headers": [{"name": "x-canary", "value": "tr.*", "type": "RegularExpression"}]}]},
                {"matches": [{"queryParams": [{"name": "beta", "value": "1"}]}]},
                {"matches": [{"path": {"type": "Exact", "value": "/health"}}]}
            ]}),
        )]));
        let rule = |r: &Request<()>| {
            let path = r.uri().path().to_owned();
            c.select("orders", r, &path).rule.map(|(i, _)| i)
        };
        assert_eq!(rule(&req("GET", "/v2/x", &[("x-canary", "true")])), Some(0));
        assert_eq!(rule(&req("GET", "/v22", &[("x-canary", "true")])), None);
        assert_eq!(rule(&req("POST", "/v2", &[("x-canary", "true")])), None);
        assert_eq!(rule(&req("GET", "/v2", &[("x-canary", "xtrue")])), None);
        assert_eq!(rule(&req("GET", "/a?x=2&beta=1", &[])), Some(1));
        assert_eq!(rule(&req("GET", "/health", &[])), Some(2));
        assert_eq!(rule(&req("GET", "/health/x", &[])), None);
        let none = req("GET", "/", &[]);
        assert_eq!(c.select("stock", &none, "/").label(), "default");
    }

    #[test]
    fn route_policies_overlay_service_policies_and_rules_win() {
        let c = Config::from_snapshot(&snapshot(&[
            (
                "Route",
                "r",
                serde_json::json!({"service": "orders", "rules": [
                    {"matches": [{"path": {"value": "/slow"}}], "timeouts": {"request": "9s", "backendRequest": "0s"}},
                    {}
                ]}),
            ),
            (
                "ResiliencePolicy",
                "svc",
                serde_json::json!({"targetRef": {"kind": "Service", "name": "orders"},
                "timeouts": {"request": "3s", "backendRequest": "1s"}, "retry": {"attempts": 2}}),
            ),
            (
                "ResiliencePolicy",
                "rt",
                serde_json::json!({"targetRef": {"kind": "Route", "name": "r"},
                "retry": {"attempts": 5}}),
            ),
        ]));
        let r = req("GET", "/slow", &[]);
        let sel = c.select("orders", &r, "/slow");
        let s = c.stack("web", None, &sel, "orders");
        assert_eq!(s.request_timeout, Some(std::time::Duration::from_secs(9)));
        assert_eq!(s.retry.attempts, 5, "route policy over service policy");
        let r = req("GET", "/other", &[]);
        let sel = c.select("orders", &r, "/other");
        let s = c.stack("web", None, &sel, "orders");
        assert_eq!(s.request_timeout, Some(std::time::Duration::from_secs(3)));
        assert_eq!(s.backend_request, Some(std::time::Duration::from_secs(1)));
    }

    #[test]
    fn filters_rewrite_headers_and_paths() {
        let c = Config::from_snapshot(&snapshot(&[(
            "Route",
            "r",
            serde_json::json!({"service": "orders", "rules": [
                {"matches": [{"path": {"value": "/api/"}}], "filters": [
                    {"type": "RequestHeaderModifier", "set": [{"name": "x-from", "value": "mesh"}], "remove": ["x-drop"]},
                    {"type": "URLRewrite", "path": {"type": "ReplacePrefixMatch", "value": "/v1"}},
                    {"type": "ResponseHeaderModifier", "add": [{"name": "x-seen", "value": "1"}]}
                ]}
            ]}),
        )]));
        let r = req("GET", "/api/orders/7", &[("x-drop", "y")]);
        let sel = c.select("orders", &r, "/api/orders/7");
        let mut h = r.headers().clone();
        let (redirect, path) = apply_request_filters(&sel, &mut h, "/api/orders/7", "orders");
        assert!(redirect.is_none());
        assert_eq!(path.as_deref(), Some("/v1/orders/7"));
        assert_eq!(h["x-from"], "mesh");
        assert!(!h.contains_key("x-drop"));
        let mut rh = HeaderMap::new();
        apply_response_filters(&sel, &mut rh);
        assert_eq!(rh["x-seen"], "1");
    }

    #[test]
    fn a_redirect_answers_instead_of_calling() {
        let c = Config::from_snapshot(&snapshot(&[(
            "Route",
            "r",
            serde_json::json!({"service": "orders", "rules": [
                {"matches": [{"path": {"type": "Exact", "value": "/old"}}], "filters": [
                    {"type": "RequestRedirect", "path": "/new", "statusCode": 301}
                ]}
            ]}),
        )]));
        let r = req("GET", "/old", &[]);
        let sel = c.select("orders", &r, "/old");
        let mut h = HeaderMap::new();
        let (redirect, _) = apply_request_filters(&sel, &mut h, "/old", "orders");
        assert_eq!(redirect, Some((301, "http://orders/new".to_owned())));
    }

    #[test]
    fn backends_split_by_weight_within_the_first_healthy_priority() {
        let rule: RouteRule = serde_json::from_value(serde_json::json!({"backends": [
            {"service": "orders", "version": "v1", "weight": 3},
            {"service": "orders", "version": "v2", "weight": 1},
            {"service": "orders-dr", "weight": 1, "priority": 1}
        ]}))
        .unwrap();
        let mut v2 = 0;
        for _ in 0..4000 {
            let b = pick_backend(&rule, |_| true).unwrap();
            assert_eq!(b.service.as_str(), "orders");
            if b.version.as_deref() == Some("v2") {
                v2 += 1;
            }
        }
        assert!((800..1200).contains(&v2), "{v2}");
        let b = pick_backend(&rule, |b| b.service.as_str() == "orders-dr").unwrap();
        assert_eq!(b.service.as_str(), "orders-dr", "failover to priority 1");
    }
}
