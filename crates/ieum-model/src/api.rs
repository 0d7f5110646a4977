//! `Api` and `ApiConsumer`: what an API gateway (`ieum gateway`) publishes, and who may
//! use it.
//!
//! An **`Api`** is a public API: a base path (and, optionally, host names) at the edge, the
//! service (or `Flow`) behind it, which of its operations are exposed, how consumers
//! authenticate (API keys, JWTs, or anonymous), rate limits and quotas, CORS, header rules,
//! a body size limit, and its own timeouts and retries as a `Route` has them.
//!
//! An **`ApiConsumer`** names the APIs a consumer may use and the JWT subjects that are
//! that consumer. API keys are never written in resources: `ieum apikey create CONSUMER`
//! prints a key once, and the server keeps only its SHA-256, as an **`ApiKey`** resource
//! that only that endpoint writes (`ieum apply` refuses the kind).
//!
//! Validation codes: `E33xx` (`Api`, `ApiConsumer`), `E34xx` (`ApiKey`).
//!
//! [`openapi`] writes an `Api`'s OpenAPI document for its consumers.

pub mod openapi;

use serde::{Deserialize, Serialize};

use crate::policy::{RateLimit, Retry, Timeouts};
use crate::route::{HeaderModifier, METHODS, valid_header_name};
use crate::{Duration, Name, Validator};

/// Longest base path or operation path.
pub const MAX_PATH_LEN: usize = 256;
/// Most host names of one API.
pub const MAX_HOSTNAMES: usize = 16;
/// Most operations listed in one API.
pub const MAX_OPERATIONS: usize = 256;
/// Most origins, methods or headers in a CORS rule.
pub const MAX_CORS_ENTRIES: usize = 64;
/// Largest body limit an API may set.
pub const MAX_BODY_LIMIT: u64 = 64 << 20;
/// The body limit when an API sets none.
pub const DEFAULT_BODY_LIMIT: u64 = 1 << 20;
/// Longest clock skew a JWT check may allow.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);
/// Most APIs or JWT subjects of one consumer.
pub const MAX_CONSUMER_ENTRIES: usize = 256;

/// The spec of an `Api`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiSpec {
    /// Where the API starts at the edge (`/shop`): a request for `/shop/orders/7` calls
    /// the backend with `/orders/7`. `/` publishes the whole path space.
    pub base_path: String,
    /// Host names it answers for (`api.shop.example`, `*.shop.example`); any host when
    /// empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    /// What answers: a service (optionally one version of it) or a `Flow`.
    pub backend: ApiBackend,
    /// Which operations are exposed: `all` (the default), `fromOpenApi` (those of the
    /// service's OpenAPI document), or a list of `{method, path}`.
    #[serde(default)]
    pub operations: Operations,
    /// How consumers authenticate.
    pub auth: ApiAuth,
    /// Rate limits (429 with `Retry-After`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<ApiRateLimit>,
    /// Quotas over longer periods (429 with `Retry-After` until the period turns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<ApiQuota>,
    /// Cross-origin requests from browsers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<Cors>,
    /// Header changes on the way in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HeaderModifier>,
    /// Header changes on the way out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<HeaderModifier>,
    /// The largest request body accepted, in bytes (413 above it).
    #[serde(default = "default_body_limit")]
    pub max_body_bytes: u64,
    /// Timeouts, as a `Route` rule has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
    /// Retries, as a `Route` rule has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Who answers for the API, for the catalogue (the service's owner when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// One line for the catalogue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

fn default_body_limit() -> u64 {
    DEFAULT_BODY_LIMIT
}

/// What answers an API's requests: exactly one of `service` and `flow`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiBackend {
    /// A service, called through the mesh with its routes and policies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<Name>,
    /// Only this version of the service (its instances' `version`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// A `Flow`, run by the gateway itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<Name>,
}

/// Which operations an API exposes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Operations {
    /// `all` or `fromOpenApi`.
    Named(OperationSet),
    /// Exactly these.
    List(Vec<Operation>),
}

impl Default for Operations {
    fn default() -> Self {
        Operations::Named(OperationSet::All)
    }
}

/// A named set of operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum OperationSet {
    /// Every path under the base path, every method.
    All,
    /// The operations of the backend service's OpenAPI document (its `interfaces`).
    FromOpenApi,
}

/// One operation: a method and a path below the base path, where a segment written
/// `{name}` matches any one segment (as OpenAPI writes paths).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    /// The HTTP method, uppercase.
    pub method: String,
    /// The path below the base path, e.g. `/orders/{id}`.
    pub path: String,
}

impl Operation {
    /// Whether this operation is `method path` (a path below the base path).
    pub fn matches(&self, method: &str, path: &str) -> bool {
        if self.method != method {
            return false;
        }
        let mut want = self.path.trim_matches('/').split('/');
        let mut got = path.trim_matches('/').split('/');
        loop {
            match (want.next(), got.next()) {
                (None, None) => return true,
                (Some(w), Some(g)) => {
                    let param = w.starts_with('{') && w.ends_with('}');
                    if !(param && !g.is_empty() || w == g) {
                        return false;
                    }
                }
                _ => return false,
            }
        }
    }
}

/// How consumers of an API authenticate. With several ways set, any one suffices; with
/// `anonymous`, a request with no credential at all is let in too (one with a wrong
/// credential is still refused).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiAuth {
    /// Requests without credentials are let in (as consumer `anonymous`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub anonymous: bool,
    /// API keys (`ieum apikey create CONSUMER`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<ApiKeyAuth>,
    /// Bearer JWTs from an identity provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtAuth>,
}

/// Where an API key is read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiKeyAuth {
    /// The request header that carries the key.
    #[serde(default = "default_key_header")]
    pub header: String,
}

fn default_key_header() -> String {
    "x-api-key".to_owned()
}

/// JWT validation: signature by a key of the issuer, `iss`, `aud`, `exp` and `nbf` checked
/// within `clockSkew`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtAuth {
    /// The `iss` every token must carry.
    pub issuer: String,
    /// Accepted `aud` values; a token must carry one of them.
    pub audiences: Vec<String>,
    /// Where the issuer publishes its keys (a JWKS document), fetched by the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// The keys themselves, as a JWKS document (`{"keys": [...]}`), instead of a URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<serde_json::Value>,
    /// How far clocks may disagree when `exp` and `nbf` are checked.
    #[serde(default = "default_clock_skew")]
    pub clock_skew: Duration,
}

fn default_clock_skew() -> Duration {
    Duration::from_secs(60)
}

/// Rate limits of an API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiRateLimit {
    /// For each consumer separately.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_consumer: Option<RateLimit>,
    /// For the API as a whole, every consumer together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_api: Option<RateLimit>,
}

/// Quotas of an API: requests per consumer per fixed period (an hour, a day, a month).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiQuota {
    /// For each consumer separately.
    pub per_consumer: Quota,
}

/// `requests` per `per`, counted in fixed periods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Quota {
    /// Requests allowed per period.
    pub requests: u64,
    /// The period (1m to 31d).
    pub per: Duration,
}

/// CORS: which browser origins may call the API, answered at the gateway (preflights never
/// reach the backend).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cors {
    /// Origins (`https://shop.example`), or `*` for any.
    pub allow_origins: Vec<String>,
    /// Methods a preflight may ask for; the API's operations' methods when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_methods: Vec<String>,
    /// Request headers a preflight may ask for (besides the CORS-safelisted ones).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_headers: Vec<String>,
    /// Response headers the browser may show to the page.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    /// Whether cookies and credentials may be sent (never with `*` origins).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight's answer.
    #[serde(default = "default_cors_max_age")]
    pub max_age: Duration,
}

fn default_cors_max_age() -> Duration {
    Duration::from_secs(600)
}

impl ApiSpec {
    /// The service behind the API, if it is one.
    pub fn services(&self) -> Vec<Name> {
        self.backend.service.iter().cloned().collect()
    }

    /// Checks every field; paths are relative to `v`'s prefix.
    pub fn validate(&self, v: &mut Validator) {
        v.check(
            valid_base_path(&self.base_path),
            "E3301",
            "basePath",
            || {
                format!(
                    "`{}`: a base path starts with `/`, has no empty, `.` or `..` segment, no \
                 `*`, `?` or `#`, does not end with `/` (except `/` itself), and is at most \
                 {MAX_PATH_LEN} characters",
                    self.base_path
                )
            },
        );
        v.check(
            self.hostnames.len() <= MAX_HOSTNAMES,
            "E3302",
            "hostnames",
            || format!("at most {MAX_HOSTNAMES} (has {})", self.hostnames.len()),
        );
        for (i, h) in self.hostnames.iter().enumerate() {
            v.check(
                valid_hostname(h),
                "E3302",
                &format!("hostnames[{i}]"),
                || {
                    format!(
                        "`{h}` is not a DNS name (lowercase), optionally starting with `*.` for \
                     any one label"
                    )
                },
            );
        }
        v.nested("backend", |v| self.backend.validate(v));
        if let Operations::List(ops) = &self.operations {
            v.check(
                !ops.is_empty() && ops.len() <= MAX_OPERATIONS,
                "E3304",
                "operations",
                || {
                    format!(
                        "list 1 to {MAX_OPERATIONS} operations, or write `all` or `fromOpenApi`"
                    )
                },
            );
            for (i, op) in ops.iter().enumerate() {
                v.check(
                    METHODS.contains(&op.method.as_str()),
                    "E3304",
                    &format!("operations[{i}].method"),
                    || {
                        format!(
                            "`{}` is not an HTTP method: use one of {}",
                            op.method,
                            METHODS.join(", ")
                        )
                    },
                );
                v.check(
                    valid_operation_path(&op.path),
                    "E3304",
                    &format!("operations[{i}].path"),
                    || {
                        format!(
                            "`{}`: a path below the base path starts with `/`; a segment \
                             `{{name}}` matches any one segment",
                            op.path
                        )
                    },
                );
            }
        }
        if self.backend.flow.is_some() {
            v.check(
                self.operations != Operations::Named(OperationSet::FromOpenApi),
                "E3304",
                "operations",
                || "a Flow has no OpenAPI document: use `all` or list the operations".into(),
            );
        }
        v.nested("auth", |v| self.auth.validate(v));
        if let Some(r) = &self.rate_limit {
            v.nested("rateLimit", |v| {
                v.check(
                    r.per_consumer.is_some() || r.per_api.is_some(),
                    "E3309",
                    "",
                    || "set `perConsumer`, `perApi` or both".into(),
                );
                if let Some(l) = &r.per_consumer {
                    v.nested("perConsumer", |v| l.validate(v));
                }
                if let Some(l) = &r.per_api {
                    v.nested("perApi", |v| l.validate(v));
                }
            });
        }
        if let Some(q) = &self.quota {
            v.nested("quota.perConsumer", |v| {
                v.check(q.per_consumer.requests >= 1, "E3309", "requests", || {
                    "must be at least 1".into()
                });
                v.check(
                    q.per_consumer.per >= Duration::from_secs(60)
                        && q.per_consumer.per <= Duration::from_secs(31 * 86_400),
                    "E3309",
                    "per",
                    || format!("must be between 1m and 31d (is {})", q.per_consumer.per),
                );
            });
        }
        if let Some(c) = &self.cors {
            v.nested("cors", |v| c.validate(v));
        }
        for (field, m) in [
            ("requestHeaders", &self.request_headers),
            ("responseHeaders", &self.response_headers),
        ] {
            if let Some(m) = m {
                v.nested(field, |v| m.validate(v));
            }
        }
        v.check(
            (1..=MAX_BODY_LIMIT).contains(&self.max_body_bytes),
            "E3308",
            "maxBodyBytes",
            || {
                format!(
                    "must be between 1 and {MAX_BODY_LIMIT} (64 MiB) (is {})",
                    self.max_body_bytes
                )
            },
        );
        if let Some(t) = &self.timeouts {
            v.nested("timeouts", |v| t.validate(v));
        }
        if let Some(r) = &self.retry {
            v.nested("retry", |v| r.validate(v));
        }
    }
}

impl ApiBackend {
    fn validate(&self, v: &mut Validator) {
        v.check(
            self.service.is_some() != self.flow.is_some(),
            "E3303",
            "",
            || "set exactly one of `service` and `flow`".into(),
        );
        if let Some(version) = &self.version {
            v.check(self.service.is_some(), "E3303", "version", || {
                "a version selects instances of a `service`; a flow has none".into()
            });
            v.check(
                !version.is_empty() && version.len() <= 128,
                "E3303",
                "version",
                || "must be 1 to 128 characters".into(),
            );
        }
    }
}

impl ApiAuth {
    fn validate(&self, v: &mut Validator) {
        v.check(
            self.anonymous || self.api_key.is_some() || self.jwt.is_some(),
            "E3305",
            "",
            || {
                "say how consumers authenticate: `apiKey`, `jwt`, or `anonymous: true` for an \
                 open API"
                    .into()
            },
        );
        if let Some(k) = &self.api_key {
            v.check(
                valid_header_name(&k.header),
                "E3306",
                "apiKey.header",
                || format!("`{}` is not a valid header name", k.header),
            );
            v.check(
                !k.header.eq_ignore_ascii_case("authorization"),
                "E3306",
                "apiKey.header",
                || "`Authorization` carries JWTs: use another header for keys".into(),
            );
        }
        if let Some(j) = &self.jwt {
            v.nested("jwt", |v| j.validate(v));
        }
    }
}

impl JwtAuth {
    fn validate(&self, v: &mut Validator) {
        v.check(
            !self.issuer.is_empty() && self.issuer.len() <= 1024,
            "E3307",
            "issuer",
            || "must be 1 to 1024 characters (the `iss` the provider writes)".into(),
        );
        v.check(
            !self.audiences.is_empty() && self.audiences.iter().all(|a| !a.is_empty()),
            "E3307",
            "audiences",
            || "list at least one non-empty audience (`aud`)".into(),
        );
        v.check(
            self.jwks_url.is_some() != self.jwks.is_some(),
            "E3307",
            "",
            || "set exactly one of `jwksUrl` and `jwks`".into(),
        );
        if let Some(url) = &self.jwks_url {
            v.check(
                url.starts_with("https://") || url.starts_with("http://"),
                "E3307",
                "jwksUrl",
                || format!("`{url}` is not an http(s) URL"),
            );
        }
        if let Some(jwks) = &self.jwks {
            v.check(
                jwks["keys"].as_array().is_some_and(|k| !k.is_empty()),
                "E3307",
                "jwks",
                || "a JWKS document is `{\"keys\": [ … ]}` with at least one key".into(),
            );
        }
        v.check(
            self.clock_skew <= MAX_CLOCK_SKEW,
            "E3307",
            "clockSkew",
            || format!("must be at most {MAX_CLOCK_SKEW} (is {})", self.clock_skew),
        );
    }
}

impl Cors {
    fn validate(&self, v: &mut Validator) {
        v.check(
            !self.allow_origins.is_empty() && self.allow_origins.len() <= MAX_CORS_ENTRIES,
            "E3310",
            "allowOrigins",
            || format!("list 1 to {MAX_CORS_ENTRIES} origins, or `*`"),
        );
        for (i, o) in self.allow_origins.iter().enumerate() {
            v.check(
                o == "*" || valid_origin(o),
                "E3310",
                &format!("allowOrigins[{i}]"),
                || format!("`{o}` is not an origin like `https://shop.example` (or `*`)"),
            );
        }
        v.check(
            !(self.allow_credentials && self.allow_origins.iter().any(|o| o == "*")),
            "E3310",
            "allowCredentials",
            || "browsers refuse credentials with origin `*`: list the origins".into(),
        );
        for (i, m) in self.allow_methods.iter().enumerate() {
            v.check(
                METHODS.contains(&m.as_str()),
                "E3310",
                &format!("allowMethods[{i}]"),
                || format!("`{m}` is not an HTTP method"),
            );
        }
        for (field, list) in [
            ("allowHeaders", &self.allow_headers),
            ("exposeHeaders", &self.expose_headers),
        ] {
            v.check(list.len() <= MAX_CORS_ENTRIES, "E3310", field, || {
                format!("at most {MAX_CORS_ENTRIES}")
            });
            for (i, h) in list.iter().enumerate() {
                v.check(
                    valid_header_name(h),
                    "E3310",
                    &format!("{field}[{i}]"),
                    || format!("`{h}` is not a valid header name"),
                );
            }
        }
        v.check(
            self.max_age <= Duration::from_secs(86_400),
            "E3310",
            "maxAge",
            || format!("must be at most 24h (is {})", self.max_age),
        );
    }
}

/// The spec of an `ApiConsumer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiConsumerSpec {
    /// The `Api`s it may call.
    pub apis: Vec<Name>,
    /// JWT subjects (`sub`) that are this consumer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt_subjects: Vec<String>,
    /// Who the consumer is, for the catalogue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl ApiConsumerSpec {
    /// Checks every field; paths are relative to `v`'s prefix.
    pub fn validate(&self, v: &mut Validator) {
        v.check(
            !self.apis.is_empty() && self.apis.len() <= MAX_CONSUMER_ENTRIES,
            "E3311",
            "apis",
            || format!("list 1 to {MAX_CONSUMER_ENTRIES} APIs the consumer may call"),
        );
        v.check(
            self.jwt_subjects.len() <= MAX_CONSUMER_ENTRIES,
            "E3312",
            "jwtSubjects",
            || format!("at most {MAX_CONSUMER_ENTRIES}"),
        );
        for (i, s) in self.jwt_subjects.iter().enumerate() {
            v.check(
                !s.is_empty() && s.len() <= 256,
                "E3312",
                &format!("jwtSubjects[{i}]"),
                || "a subject is 1 to 256 characters".into(),
            );
        }
    }
}

fn valid_base_path(p: &str) -> bool {
    if p == "/" {
        return true;
    }
    p.len() <= MAX_PATH_LEN
        && p.starts_with('/')
        && !p.ends_with('/')
        && !p.contains(['*', '?', '#'])
        && p[1..]
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..")
}

fn valid_operation_path(p: &str) -> bool {
    p.len() <= MAX_PATH_LEN
        && p.starts_with('/')
        && !p.contains(['*', '?', '#'])
        && p[1..]
            .split('/')
            .all(|s| s != "." && s != ".." && (!s.contains(['{', '}']) || is_param(s)))
}

fn is_param(segment: &str) -> bool {
    segment.len() > 2
        && segment.starts_with('{')
        && segment.ends_with('}')
        && !segment[1..segment.len() - 1].contains(['{', '}'])
}

fn valid_hostname(h: &str) -> bool {
    let name = h.strip_prefix("*.").unwrap_or(h);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

fn valid_origin(o: &str) -> bool {
    let Some((scheme, rest)) = o.split_once("://") else {
        return false;
    };
    let host = rest
        .rsplit_once(':')
        .filter(|(_, port)| port.parse::<u16>().is_ok())
        .map_or(rest, |(h, _)| h);
    (scheme == "https" || scheme == "http")
        && !rest.contains('/')
        && (valid_hostname(host) || host.parse::<std::net::IpAddr>().is_ok())
}

#[cfg(test)]
mod tests;

/// What every API key starts with, so a leaked one is recognised (by people and by secret
/// scanners) as an ieum API key.
pub const API_KEY_PREFIX: &str = "ieumk_";
/// Longest `prefix` an `ApiKey` shows of its key.
pub const MAX_KEY_PREFIX_LEN: usize = 8;

/// The spec of an `ApiKey`: one key of an `ApiConsumer`, as gateways check it. The
/// resource's name is the key's id (`mobile-app-3f9c2a`).
///
/// Only `POST /v1/apikeys` (`ieum apikey create CONSUMER`) writes one, never `apply`, so a
/// key is always 256 random bits the server made. The spec holds no secret: a gateway
/// hashes the presented key and compares the hash. Revoking a key is deleting the resource.
/// Validation codes: `E34xx`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiKeySpec {
    /// The `ApiConsumer` a request carrying this key is.
    pub consumer: String,
    /// SHA-256 of the whole key (`ieumk_…`, as presented), 64 lowercase hex digits.
    pub sha256: String,
    /// The first characters of the key after `ieumk_`, so people can tell their keys
    /// apart; never enough to guess it.
    pub prefix: String,
    /// When the key stops being accepted; never when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<crate::Timestamp>,
}

impl ApiKeySpec {
    /// Whether the key is still accepted at `now`.
    pub fn valid_at(&self, now: crate::Timestamp) -> bool {
        self.expires_at.is_none_or(|at| now < at)
    }

    /// Checks every field; paths are relative to `v`'s prefix.
    pub fn validate(&self, v: &mut Validator) {
        if let Err(m) = Name::parse(&self.consumer) {
            v.error("E3401", "consumer", format!("an ApiConsumer's name {m}"));
        }
        v.check(
            self.sha256.len() == 64
                && self
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "E3402",
            "sha256",
            || "must be the key's SHA-256 as 64 lowercase hex digits".into(),
        );
        v.check(
            (1..=MAX_KEY_PREFIX_LEN).contains(&self.prefix.len())
                && self
                    .prefix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "E3403",
            "prefix",
            || {
                format!(
                    "must be 1 to {MAX_KEY_PREFIX_LEN} URL-safe characters (letters, digits, `-`, `_`)"
                )
            },
        );
    }
}
