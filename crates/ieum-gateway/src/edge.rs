//! One request at the edge: match, authenticate, limit, call, answer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use ieum_model::Timestamp;
use ieum_model::api::{ApiSpec, JwtAuth, OperationSet, Operations};
use ieum_model::route::HeaderModifier;
use ieum_proxy::{ProxyBody, RequestBody, Sidecar};
use ieum_resilience::classify::SOURCE_HEADER;

use crate::catalog::{Catalog, PublishedApi};
use crate::cors;
use crate::jwt::{JwtError, JwtVerifier};
use crate::limits::{self, Limits};
use crate::metrics::{ApiMetrics, Seen, access_line};

/// The header that tells a service which consumer called, set by the gateway only.
pub(crate) const CONSUMER_HEADER: &str = "ieum-consumer";
/// The header that tells a service which API a call came through.
pub(crate) const API_HEADER: &str = "ieum-api";

pub(crate) struct Edge {
    pub(crate) name: String,
    pub(crate) sidecar: Sidecar,
    pub(crate) catalog: Arc<RwLock<Arc<Catalog>>>,
    pub(crate) limits: Limits,
    pub(crate) jwt: Verifiers,
    pub(crate) metrics: Arc<ApiMetrics>,
    /// Whether each request's JSON line goes to stderr.
    pub(crate) access_log: bool,
}

/// One JWT verifier per API with `auth.jwt`, kept while its settings stay the same so
/// its cache of the issuer's keys survives configuration pushes.
pub(crate) struct Verifiers {
    http: reqwest::Client,
    by_api: std::sync::Mutex<std::collections::HashMap<String, (JwtAuth, JwtVerifier)>>,
}

impl Verifiers {
    pub(crate) fn new(http: reqwest::Client) -> Verifiers {
        Verifiers {
            http,
            by_api: std::sync::Mutex::default(),
        }
    }

    /// The verifier of `api`'s JWT settings, if it takes JWTs.
    fn of(&self, api: &str, spec: &ApiSpec) -> Option<JwtVerifier> {
        let auth = spec.auth.jwt.as_ref()?;
        let mut by_api = self
            .by_api
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match by_api.get(api) {
            Some((known, v)) if known == auth => Some(v.clone()),
            _ => {
                let v = JwtVerifier::new(auth, self.http.clone());
                by_api.insert(api.to_owned(), (auth.clone(), v.clone()));
                Some(v)
            }
        }
    }
}

impl Edge {
    /// Answers one request, then counts it and writes its access log line.
    pub(crate) async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let start = tokio::time::Instant::now();
        let (method, path) = (req.method().clone(), req.uri().path().to_owned());
        let mut note = Note::default();
        let res = self.answer(req, &mut note).await;
        let seen = Seen {
            api: note.api.as_deref().unwrap_or("-"),
            operation: note.operation.as_deref().unwrap_or("-"),
            consumer: note.consumer.as_deref().unwrap_or("-"),
            method: method.as_str(),
            path: &path,
            status: res.status().as_u16(),
            duration: start.elapsed(),
        };
        self.metrics.record(&seen);
        if self.access_log {
            eprintln!("{}", access_line(&seen));
        }
        res
    }

    async fn answer(&self, req: Request<Incoming>, note: &mut Note) -> Response<ProxyBody> {
        let catalog = self
            .catalog
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let host = host_of(&req);
        let Some((api, rest)) = catalog.find(host.as_deref(), req.uri().path()) else {
            return error(
                StatusCode::NOT_FOUND,
                "not-found",
                "no API is published at this path",
            );
        };
        note.api = Some(api.name.clone());
        let spec = &api.spec;
        // CORS: preflights are answered here, before credentials (they carry none).
        let origin = spec
            .cors
            .as_ref()
            .and_then(|c| cors::allowed_origin(c, &req).map(|o| (c, o)));
        if cors::is_preflight(&req) {
            return match &origin {
                Some((c, o)) => cors::preflight(spec, c, o.clone()).map(|()| empty()),
                None => error(
                    StatusCode::FORBIDDEN,
                    "cors-refused",
                    "this origin may not call this API from a browser",
                ),
            };
        }
        if spec.operations == Operations::Named(OperationSet::FromOpenApi) {
            // Fail closed: exposing every operation would publish more than was asked.
            return error(
                StatusCode::NOT_IMPLEMENTED,
                "not-implemented",
                "this API takes its operations from an OpenAPI document, which this gateway does not read yet",
            );
        }
        let Some(operation) = operation_exposed(spec, req.method().as_str(), &rest) else {
            return error(
                StatusCode::NOT_FOUND,
                "not-found",
                "this API has no such operation",
            );
        };
        note.operation = Some(operation);
        let jwt = self.jwt.of(&api.name, &api.spec);
        let consumer = match authenticate(&catalog, api, jwt.as_ref(), req.headers()).await {
            Ok(c) => c,
            Err(refused) => return refused.answer(api),
        };
        note.consumer = Some(
            consumer
                .clone()
                .unwrap_or_else(|| limits::ANONYMOUS.to_owned()),
        );
        if let Err(e) = self.limits.admit(
            &api.name,
            spec,
            consumer.as_deref().unwrap_or(limits::ANONYMOUS),
        ) {
            let mut res = error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                &format!("the {} is used up; retry later", e.what),
            );
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(e.retry_after));
            return res;
        }
        let Some(service) = spec.backend.service.as_ref().map(ToString::to_string) else {
            return error(
                StatusCode::NOT_IMPLEMENTED,
                "not-implemented",
                "this API is served by a flow, which this gateway does not run yet",
            );
        };
        if declared_length(req.headers()).is_some_and(|n| n > spec.max_body_bytes) {
            return too_large(spec.max_body_bytes);
        }
        let exceeded = Arc::new(AtomicBool::new(false));
        let (mut parts, body) = req.into_parts();
        let body = RequestBody::limited(body, spec.max_body_bytes, exceeded.clone());
        // The consumer a service can trust: never the client's own copies.
        parts.headers.remove(CONSUMER_HEADER);
        parts.headers.remove(API_HEADER);
        if let Some(c) = &consumer
            && let Ok(v) = HeaderValue::from_str(c)
        {
            parts.headers.insert(CONSUMER_HEADER, v);
        }
        if let Ok(v) = HeaderValue::from_str(&api.name) {
            parts.headers.insert(API_HEADER, v);
        }
        if let Some(m) = &spec.request_headers {
            modify(&mut parts.headers, m);
        }
        let path_and_query = match parts.uri.query() {
            Some(q) => format!("{rest}?{q}"),
            None => rest,
        };
        parts.uri = match Uri::try_from(path_and_query) {
            Ok(u) => u,
            Err(_) => return error(StatusCode::BAD_REQUEST, "bad-request", "invalid path"),
        };
        let mut res = self
            .sidecar
            .call(&service, Request::from_parts(parts, body))
            .await;
        if exceeded.load(Ordering::Acquire) {
            return too_large(spec.max_body_bytes);
        }
        if res.headers().contains_key(SOURCE_HEADER) {
            // The mesh answered (no instance, breaker open, timeout): say so without
            // naming anything inside.
            tracing::debug!(gateway = %self.name, api = %api.name, status = %res.status(), "the mesh answered for the service");
            let status = res.status();
            let (code, message) = match status {
                StatusCode::GATEWAY_TIMEOUT => ("timeout", "the API did not answer in time"),
                StatusCode::TOO_MANY_REQUESTS => ("rate-limited", "too many requests; retry later"),
                _ => ("unavailable", "the API is unavailable; retry later"),
            };
            let retry_after = res.headers().get(header::RETRY_AFTER).cloned();
            res = error(status, code, message);
            if let Some(v) = retry_after {
                res.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return res;
        }
        if let Some(m) = &spec.response_headers {
            modify(res.headers_mut(), m);
        }
        if let Some((c, o)) = origin {
            cors::allow(res.headers_mut(), c, o);
        }
        res
    }
}

fn empty() -> ProxyBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}

/// The request's host without its port: the `:authority` of HTTP/2, or `Host`.
fn host_of<B>(req: &Request<B>) -> Option<String> {
    let raw = req.uri().host().map(str::to_owned).or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
    })?;
    let host = match raw.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h.to_owned(),
        _ => raw,
    };
    Some(host.to_ascii_lowercase())
}

/// Whether the API exposes `method path` (a path below its base path).
/// The operation of the API that `method path` is (`*` for an API exposing all), if any.
fn operation_exposed(spec: &ApiSpec, method: &str, path: &str) -> Option<String> {
    match &spec.operations {
        Operations::Named(OperationSet::All) => Some("*".to_owned()),
        Operations::Named(OperationSet::FromOpenApi) => None,
        Operations::List(ops) => ops
            .iter()
            .find(|op| op.matches(method, path))
            .map(|op| format!("{} {}", op.method, op.path)),
    }
}

/// What is known of a request as it goes, for its metrics and access log.
#[derive(Default)]
struct Note {
    api: Option<String>,
    operation: Option<String>,
    consumer: Option<String>,
}

/// Why a request was refused its API.
enum Refused {
    /// No credential, and the API is not anonymous.
    NoCredential,
    /// A key no consumer holds.
    UnknownKey,
    /// A JWT that does not verify (expired, another audience, …).
    BadToken(JwtError),
    /// The identity provider's keys cannot be fetched: 503, the caller may retry.
    KeysUnavailable,
    /// A consumer the API is not granted to, or a valid JWT whose subject is no consumer.
    NotGranted,
}

impl Refused {
    /// The 401 (with the API's challenges) or 403.
    fn answer(self, api: &PublishedApi) -> Response<ProxyBody> {
        let bad_token = matches!(self, Refused::BadToken(_));
        let detail;
        let message = match self {
            Refused::NoCredential => "this API needs a credential",
            Refused::UnknownKey => "the API key is not valid",
            Refused::BadToken(e) => {
                detail = e.to_string();
                detail.as_str()
            }
            Refused::KeysUnavailable => {
                let mut res = error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the token cannot be checked right now; retry later",
                );
                res.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
                return res;
            }
            Refused::NotGranted => {
                return error(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "this consumer may not use this API",
                );
            }
        };
        let mut res = error(StatusCode::UNAUTHORIZED, "unauthorized", message);
        let auth = &api.spec.auth;
        let mut challenges = Vec::new();
        if let Some(k) = &auth.api_key {
            challenges.push(format!(
                "ApiKey realm=\"{}\", header=\"{}\"",
                api.name, k.header
            ));
        }
        if auth.jwt.is_some() {
            challenges.push(if bad_token {
                format!(
                    "Bearer realm=\"{}\", error=\"invalid_token\", error_description=\"{message}\"",
                    api.name
                )
            } else {
                format!("Bearer realm=\"{}\"", api.name)
            });
        }
        for c in challenges {
            if let Ok(v) = HeaderValue::from_str(&c) {
                res.headers_mut().append(header::WWW_AUTHENTICATE, v);
            }
        }
        res
    }
}

/// The consumer of a request (`None`: anonymous), or why it is refused: an API key in the
/// API's header, else a bearer JWT whose subject an `ApiConsumer` lists.
async fn authenticate(
    catalog: &Catalog,
    api: &PublishedApi,
    jwt: Option<&JwtVerifier>,
    headers: &HeaderMap,
) -> Result<Option<String>, Refused> {
    let auth = &api.spec.auth;
    let now = SystemTime::now();
    let key = auth
        .api_key
        .as_ref()
        .and_then(|k| headers.get(k.header.as_str()));
    let bearer = jwt.zip(bearer(headers));
    let consumer = match (key, bearer) {
        (Some(presented), _) => presented
            .to_str()
            .ok()
            .and_then(|k| catalog.consumer_of_key(k.trim(), Timestamp::from_system(now)))
            .ok_or(Refused::UnknownKey)?,
        (None, Some((verifier, token))) => {
            let secs = now
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let claims = verifier.verify(token, secs).await.map_err(|e| {
                if e.is_unavailable() {
                    Refused::KeysUnavailable
                } else {
                    Refused::BadToken(e)
                }
            })?;
            claims
                .sub
                .as_deref()
                .and_then(|sub| catalog.consumer_of_subject(sub))
                .ok_or(Refused::NotGranted)?
        }
        (None, None) if auth.anonymous => return Ok(None),
        (None, None) => return Err(Refused::NoCredential),
    };
    if !catalog.may_use(consumer, &api.name) {
        return Err(Refused::NotGranted);
    }
    Ok(Some(consumer.to_owned()))
}

/// The token of `Authorization: Bearer TOKEN`.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn too_large(max: u64) -> Response<ProxyBody> {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body-too-large",
        &format!("the request body is larger than this API accepts ({max} bytes)"),
    )
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Applies a header rule.
fn modify(headers: &mut HeaderMap, m: &HeaderModifier) {
    for name in &m.remove {
        if let Ok(n) = HeaderName::try_from(name.as_str()) {
            headers.remove(n);
        }
    }
    for (h, append) in m
        .set
        .iter()
        .map(|h| (h, false))
        .chain(m.add.iter().map(|h| (h, true)))
    {
        let (Ok(n), Ok(v)) = (
            HeaderName::try_from(h.name.as_str()),
            HeaderValue::try_from(h.value.as_str()),
        ) else {
            continue;
        };
        if append {
            headers.append(n, v);
        } else {
            headers.insert(n, v);
        }
    }
}

/// A JSON error made by the gateway: `{"error": {"code", "message"}}`.
fn error(status: StatusCode, code: &str, message: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    let mut res = Response::new(
        http_body_util::Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}
