//! The inbound listener: other sidecars' calls, forwarded to the app over a pooled
//! keep-alive connection. Every request is counted in flight until its response body
//! ends, so a drain waits for it, and recorded in the inbound metrics.
//!
//! The caller's `traceparent` is replaced by this hop's (the app's parent is the inbound
//! server span), and with an exporter a server span is recorded.
//!
//! Authorization (`authz`) comes first: the service's `AuthorizationPolicy`s from the
//! snapshot decide, with the caller's [`crate::PeerIdentity`] (put on the request by the
//! TLS layer of the accepted connection, `mtls`), and a denial answers 403 without
//! calling the app or the server.
//!
//! With a mesh, requests arriving over TLS carry what the listener learnt about their
//! connection (`mtls::inbound::Peer`): they are counted under its `tls`/`client_id`
//! labels and logged with them. Plain-text requests (no extension: nothing is added per
//! request without a mesh) count as `tls="false"`.

use std::convert::Infallible;
use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use ieum_resilience::classify::{REASON_HEADER, SOURCE_HEADER, classify, is_failure};
use ieum_resilience::classify::{error_response, grpc};
use ieum_resilience::deadline::incoming_budget;
use tokio::time::Instant;
use tower::{BoxError, Layer, ServiceExt};

use crate::Shared;
use crate::access_log::Entry;
use crate::authz::{self, Caller, RequestFacts};
use crate::body::{Guarded, InFlight, ProxyBody, RequestBody, boxed, text};
use crate::config::Config;
use crate::mtls::inbound::Peer;
use crate::trace::{Hop, Kind, Pending};
use crate::upstream::{Wire, retarget, strip_hop_by_hop};

pub(crate) async fn handle(
    shared: Arc<Shared>,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let guard = InFlight::new(&shared.in_flight);
    let peer = req.extensions().get::<Arc<Peer>>().cloned();
    let metrics = peer
        .as_ref()
        .map_or(&shared.inbound_metrics, |p| &p.metrics);
    metrics.request();
    let start = Instant::now();
    let entry = shared.access_log.get().map(|_| {
        let e = Entry::new(&req, "inbound");
        match &peer {
            Some(p) => e.peer(true, &p.client_id),
            None => e.peer(false, ""),
        }
    });
    // The app's parent is this hop's server span.
    let hop = Hop::enter(req.headers_mut());
    let span = Pending::start(shared.tracer.as_ref(), hop, Kind::Server, &req);
    let res = forward(&shared, req).await;
    metrics.response(res.status(), is_failure(&res), start.elapsed());
    if let (Some(entry), Some(sink)) = (entry, shared.access_log.get()) {
        sink(entry.line(&res, start.elapsed()));
    }
    if let (Some(span), Some(tracer)) = (span, &shared.tracer) {
        tracer.record(span.finish(&res, &shared.service, "default"));
    }
    Ok(res.map(|b| Guarded::wrap(b, guard)))
}

/// The 403 for a call authorization denies (counted and sampled), or `None` to go on.
/// Only services an `AuthorizationPolicy` targets are checked unless mesh identities are
/// enforced ([`crate::SidecarConfig::enforce_mesh_identity`], on with a mesh); a service
/// that is `mtls: permissive` admits callers without an identity as dev mode does.
fn authorize<B>(shared: &Shared, config: &Config, req: &Request<B>) -> Option<Response<ProxyBody>> {
    let policies = config.authorization(&shared.service);
    let enforce = shared.enforce_mesh_identity && !shared.mtls_permissive();
    if policies.is_empty() && !enforce {
        return None;
    }
    let caller = Caller::of(req);
    let facts = RequestFacts::new(req.method(), req.uri().path(), req.headers());
    let decision = authz::decide(policies, &caller, &facts, !enforce);
    if decision.allow {
        return None;
    }
    shared
        .metrics
        .authz_denied
        .denied(caller.label(), decision.policy().unwrap_or("-"));
    shared.denials.record(&caller, &facts, &decision);
    tracing::debug!(caller = caller.label(), reason = %decision.reason(&caller), "call denied");
    Some(authz::forbidden(
        &decision,
        &caller,
        &facts,
        &shared.service,
        grpc::is_grpc(req),
    ))
}

async fn forward(shared: &Shared, req: Request<Incoming>) -> Response<ProxyBody> {
    let mut req = req.map(RequestBody::new);
    let config = shared.config();
    if let Some(denied) = authorize(shared, &config, &req) {
        return denied;
    }
    // The service's own rate limit (a `RateLimitPolicy` targeting it) is enforced here,
    // where every caller's traffic meets.
    let limiter = config
        .inbound_limiter(&shared.service)
        .layer(tower::service_fn(|()| async { Ok::<_, Infallible>(()) }));
    if let Err(e) = limiter.oneshot(()).await {
        let mut res: Response<ProxyBody> = error_response(&e, grpc::is_grpc(&req));
        let reason = res.headers().get(REASON_HEADER).cloned();
        if let Some(r) = reason.as_ref().and_then(|r| r.to_str().ok()) {
            *res.body_mut() = text(format!("{r}: calls into `{}`\n", shared.service));
        }
        return res;
    }
    // A caller's budget (`ieum-budget-ms`, `grpc-timeout`) bounds the wait for the app:
    // past it, nobody is waiting for the answer.
    let budget = incoming_budget(req.headers());
    let upgrade = crate::upgrade::take(&mut req);
    strip_hop_by_hop(req.headers_mut());
    if let Some(u) = &upgrade {
        u.restore(req.headers_mut());
    }
    retarget(&mut req, &shared.app);
    // HTTP/2 between sidecars is ours; towards the app, only gRPC needs it (and its
    // servers speak it), while every HTTP app speaks HTTP/1.1.
    *req.version_mut() = Wire::Http1.version(&req);
    let call = shared.app_client.request(req);
    let result = match budget {
        Some(b) => match tokio::time::timeout(b, call).await {
            Ok(r) => r,
            Err(_) => {
                return local_error(
                    shared,
                    StatusCode::GATEWAY_TIMEOUT,
                    "deadline-exceeded",
                    "local",
                );
            }
        },
        None => call.await,
    };
    match result {
        Ok(res) => {
            let mut res = res.map(boxed);
            strip_hop_by_hop(res.headers_mut());
            if let Some(u) = upgrade {
                u.splice(&mut res);
            }
            res
        }
        Err(e) => {
            let err: BoxError = e.into_box();
            let c = classify(&err);
            tracing::debug!(error = %err, app = %shared.app_addr, "call to the app failed");
            local_error(shared, c.status, c.reason, c.source.as_str())
        }
    }
}

fn local_error(
    shared: &Shared,
    status: StatusCode,
    reason: &'static str,
    source: &'static str,
) -> Response<ProxyBody> {
    let mut res = Response::new(text(format!(
        "{reason}: calling the app of `{}` at {}\n",
        shared.service, shared.app_addr
    )));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(REASON_HEADER, HeaderValue::from_static(reason));
    h.insert(SOURCE_HEADER, HeaderValue::from_static(source));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}
