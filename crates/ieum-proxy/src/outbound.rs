//! The outbound listener: the app's calls to other services.
//!
//! Where a request goes, from its absolute-form target (`GET http://orders/path`, as an
//! HTTP proxy receives) or else its `Host` header:
//! - a DNS label (`orders`) or `NAME.service.ieum` is a mesh service;
//! - `localhost` or an IP address is the listener itself (the sidecar's own API: the path
//!   form `/v1/invoke/SERVICE/PATH` calls `SERVICE` with `/PATH`), except an absolute-form
//!   target on another port, which is egress;
//! - a dotted name (`api.example.com`) is outside the mesh (service names are DNS labels):
//!   egress, forwarded as a plain HTTP proxy would, without routes or policies;
//! - `CONNECT host:port` is a TCP tunnel outside the mesh (HTTPS through the proxy).
//!
//! A mesh service must be known to the control plane; a name that is not, but resolves
//! in DNS, is egress, and one that resolves nowhere gets a 502 saying so. Then a route
//! rule is selected and its filters applied, a backend is picked by weight (and
//! priority), and the call goes through that destination's resilience stack.
//!
//! With [`crate::Egress::RegistryOnly`] (`--egress registry-only`) nothing leaves the
//! mesh: egress requests, `CONNECT` tunnels and unregistered names get a 403 naming the
//! host and how to allow it, counted as failures of `dst_service="external"`.
//!
//! Every request but `CONNECT` gets this hop's `traceparent` (see [`crate::trace`]) and,
//! with an exporter, a client span.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;

use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body::Body as _;
use hyper::body::Incoming;
use ieum_resilience::classify::{REASON_HEADER, SOURCE_HEADER, classify, is_failure};
use tokio::time::Instant;
use tower::ServiceExt;

use crate::access_log::{Entry, Routed};
use crate::body::{Guarded, InFlight, ProxyBody, RequestBody, text};
use crate::config::{apply_request_filters, apply_response_filters, pick_backend};
use crate::dest::{Dest, DestKey, has_up};
use crate::metrics::Direction;
use crate::trace::{Hop, Kind, Pending};
use crate::upstream::{Transport, Upstream, Wire, strip_hop_by_hop};
use crate::{Egress, Shared};

/// Prefix of the path form of the sidecar's own API.
const INVOKE: &str = "/v1/invoke/";

pub(crate) async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    Ok(dispatch(shared, req.map(RequestBody::new), None).await)
}

/// A call to `service` made in process (an API gateway's), as if it had come to the
/// outbound listener for that service: routes, policies, balancing, metrics, traces.
pub(crate) async fn call(
    shared: Arc<Shared>,
    service: String,
    req: Request<RequestBody>,
) -> Response<ProxyBody> {
    dispatch(shared, req, Some(service)).await
}

/// Handles one request: for `service`, or where the request itself says.
async fn dispatch(
    shared: Arc<Shared>,
    mut req: Request<RequestBody>,
    service: Option<String>,
) -> Response<ProxyBody> {
    let guard = InFlight::new(&shared.in_flight);
    let log = shared
        .access_log
        .get()
        .map(|_| (Entry::new(&req, "outbound"), Instant::now()));
    let span = if req.method() == http::Method::CONNECT {
        None
    } else {
        let hop = Hop::enter(req.headers_mut());
        Pending::start(shared.tracer.as_ref(), hop, Kind::Client, &req)
    };
    let res = if let Some(service) = service {
        proxy(&shared, service, req).await
    } else if req.method() == http::Method::CONNECT {
        tunnel(&shared, req).await
    } else {
        match target(&req, shared.outbound_port) {
            Target::Service(service) => proxy(&shared, service, req).await,
            Target::Own => own_api(&shared, req).await,
            Target::Egress(authority) => egress(&shared, authority, req).await,
        }
    };
    if let (Some((entry, start)), Some(sink)) = (log, shared.access_log.get()) {
        sink(entry.line(&res, start.elapsed()));
    }
    if let (Some(span), Some(tracer)) = (span, &shared.tracer) {
        let routed = res.extensions().get::<Routed>();
        let (dst, route) = routed.map_or(("", ""), |r| (r.cluster.as_str(), r.route.as_str()));
        tracer.record(span.finish(&res, dst, route));
    }
    res.map(|b| Guarded::wrap(b, guard))
}

/// The answer to a destination outside the registry when egress is restricted.
fn refuse(shared: &Shared, host: &str) -> Response<ProxyBody> {
    let metrics = &shared.egress_metrics;
    metrics.request();
    let mut res = local(
        StatusCode::FORBIDDEN,
        "egress-denied",
        format!(
            "egress to `{host}` is refused: this sidecar runs with --egress registry-only, so \
             it only calls services registered in ieum. Register `{host}` as a service, or \
             start the sidecar with --egress allow (IEUM_EGRESS=allow) to let calls outside \
             the mesh through\n"
        ),
    );
    metrics.response(res.status(), true, std::time::Duration::ZERO);
    res.extensions_mut().insert(Routed {
        route: "egress".into(),
        cluster: "external".into(),
    });
    res
}

/// Where a request goes.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    /// A service of the mesh (or, when not registered, a name DNS may know).
    Service(String),
    /// The listener itself: the sidecar's own API.
    Own,
    /// Outside the mesh: forwarded as a plain HTTP proxy would.
    Egress(Authority),
}

/// Suffix of the mesh's DNS names (`NAME.service.ieum`).
const MESH_SUFFIX: &str = ".service.ieum";

/// Which target a request names. `own_port` is the listener's port: an absolute-form
/// request for a loopback address on another port is egress, not the sidecar's API.
fn target<B>(req: &Request<B>, own_port: u16) -> Target {
    let absolute = req.uri().authority().cloned();
    let authority = match &absolute {
        Some(a) => a.clone(),
        None => {
            let parsed = req
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.parse::<Authority>().ok());
            match parsed {
                Some(a) => a,
                None => return Target::Own,
            }
        }
    };
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase();
    if host == "localhost" || host.parse::<IpAddr>().is_ok() {
        let port = authority.port_u16().unwrap_or(80);
        return if absolute.is_some() && port != own_port {
            Target::Egress(authority)
        } else {
            Target::Own
        };
    }
    if let Some(name) = host.strip_suffix(MESH_SUFFIX) {
        return Target::Service(name.to_owned());
    }
    // Service names are DNS labels: a dotted name is outside the mesh.
    if host.contains('.') {
        return Target::Egress(authority);
    }
    Target::Service(host)
}

/// Forwards a request outside the mesh, as a plain HTTP proxy: no routes or policies
/// (they are the mesh's), hop-by-hop headers removed, errors explained.
async fn egress(
    shared: &Arc<Shared>,
    authority: Authority,
    mut req: Request<RequestBody>,
) -> Response<ProxyBody> {
    if shared.egress == Egress::RegistryOnly {
        return refuse(shared, authority.as_str());
    }
    let metrics = shared.egress_metrics.clone();
    metrics.request();
    let start = Instant::now();
    let upgrade = crate::upgrade::take(&mut req);
    strip_hop_by_hop(req.headers_mut());
    if let Some(u) = &upgrade {
        u.restore(req.headers_mut());
    }
    // Outside the mesh nothing says what a server speaks: HTTP/1.1, and gRPC over HTTP/2.
    let upstream = Upstream {
        client: shared.app_client.clone(),
        authority: authority.clone(),
        wire: Wire::Http1,
        transport: Transport::Plain,
    };
    let mut res = match upstream.oneshot(req).await {
        Ok(res) => res,
        Err(e) => {
            let c = classify(&e);
            local(
                c.status,
                c.reason,
                format!("{}: calling `{authority}` outside the mesh\n", c.reason),
            )
        }
    };
    metrics.response(res.status(), is_failure(&res), start.elapsed());
    if let Some(u) = upgrade {
        u.splice(&mut res);
    }
    res.extensions_mut().insert(Routed {
        route: "egress".into(),
        cluster: "external".into(),
    });
    res
}

/// `CONNECT host:port`: a TCP tunnel outside the mesh (HTTPS through the proxy).
async fn tunnel(shared: &Arc<Shared>, req: Request<RequestBody>) -> Response<ProxyBody> {
    let Some(authority) = req.uri().authority().cloned() else {
        return local(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "CONNECT needs host:port\n".to_owned(),
        );
    };
    if shared.egress == Egress::RegistryOnly {
        return refuse(shared, authority.as_str());
    }
    let metrics = &shared.egress_metrics;
    metrics.request();
    let start = Instant::now();
    let mut res = match crate::upgrade::connect(req, &authority).await {
        Ok(()) => Response::new(text(String::new())),
        Err(c) => local(
            c.status,
            c.reason,
            format!("{}: tunnel to `{authority}`\n", c.reason),
        ),
    };
    metrics.response(res.status(), is_failure(&res), start.elapsed());
    res.extensions_mut().insert(Routed {
        route: "egress".into(),
        cluster: "external".into(),
    });
    res
}

/// Whether `name` resolves in DNS (bounded: this is on the request path of a name the
/// mesh does not know).
async fn resolves(name: &str) -> bool {
    let lookup = tokio::net::lookup_host((name, 80));
    match tokio::time::timeout(DNS_WAIT, lookup).await {
        Ok(Ok(mut addrs)) => addrs.next().is_some(),
        _ => false,
    }
}

/// Longest wait for DNS when a name is not registered.
const DNS_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

async fn own_api(shared: &Arc<Shared>, mut req: Request<RequestBody>) -> Response<ProxyBody> {
    if crate::bridge::is_bridge_path(req.uri().path()) {
        return crate::bridge::own_api(shared, req).await;
    }
    if crate::control::is_control_path(req.method(), req.uri().path()) {
        return crate::control::forward(shared, req).await;
    }
    let Some(rest) = req.uri().path().strip_prefix(INVOKE) else {
        return local(
            StatusCode::NOT_FOUND,
            "not-found",
            "this is the ieum sidecar: call http://SERVICE/PATH through it as an HTTP proxy, \
             with `Host: SERVICE`, or as /v1/invoke/SERVICE/PATH; publish events with \
             POST /v1/publish/PUBSUB/TOPIC or POST /v1/bindings/NAME; start sagas and \
             flows with POST /v1/sagas/NAME/executions and POST /v1/flows/NAME\n"
                .to_owned(),
        );
    };
    let (service, path) = match rest.split_once('/') {
        Some((s, p)) => (s.to_ascii_lowercase(), format!("/{p}")),
        None => (rest.to_ascii_lowercase(), "/".to_owned()),
    };
    if service.is_empty() {
        return local(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "the path form is /v1/invoke/SERVICE/PATH\n".to_owned(),
        );
    }
    let pq = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let Ok(pq) = PathAndQuery::try_from(pq) else {
        return local(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "invalid path\n".to_owned(),
        );
    };
    *req.uri_mut() = Uri::from(pq);
    proxy(shared, service, req).await
}

/// A short text answer made by the sidecar itself.
pub(crate) fn local(status: StatusCode, reason: &'static str, body: String) -> Response<ProxyBody> {
    let mut res = Response::new(text(body));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(REASON_HEADER, HeaderValue::from_static(reason));
    h.insert(SOURCE_HEADER, HeaderValue::from_static("local"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

async fn proxy(
    shared: &Arc<Shared>,
    name: String,
    mut req: Request<RequestBody>,
) -> Response<ProxyBody> {
    // Known to the control plane? (The one wait: a service never seen before.)
    // A name that cannot be a service (not a DNS label) is never asked for: the server
    // would refuse the subscription.
    let known = match shared.client.snapshot().services.get(&name) {
        Some(s) => s.known,
        None if ieum_model::Name::parse(&name).is_err() => false,
        None => shared
            .client
            .endpoints(&name)
            .await
            .is_some_and(|s| s.known),
    };
    if !known && shared.egress == Egress::RegistryOnly && shared.client.connected() {
        return refuse(shared, &name);
    }
    if !known {
        // Not in the mesh: a name DNS knows is egress (the app's calls outside keep
        // working); one that resolves nowhere gets a 502 that says so.
        let authority = req.uri().authority().cloned().or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.parse().ok())
        });
        if let Some(authority) = authority.filter(|a| a.host().eq_ignore_ascii_case(&name))
            && resolves(&name).await
        {
            return egress(shared, authority, req).await;
        }
        let why = if shared.client.connected() {
            format!(
                "service `{name}` is not registered in ieum and does not resolve in DNS: check the name, or register an instance of it\n"
            )
        } else {
            format!(
                "service `{name}` is not in this sidecar's last snapshot and the control plane is unreachable\n"
            )
        };
        return local(StatusCode::BAD_GATEWAY, "service-not-registered", why);
    }

    let config = shared.config();
    let path = req.uri().path().to_owned();
    let sel = config.select(&name, &req, &path);
    let snapshot = shared.client.snapshot();
    let backend = sel.rule.and_then(|(_, rule)| {
        pick_backend(rule, |b| {
            has_up(&snapshot, b.service.as_str(), b.version.as_deref())
        })
    });
    let (service, version) = match backend {
        Some(b) => (b.service.as_str().to_owned(), b.version.clone()),
        None => (name.clone(), None),
    };
    let snapshot = if snapshot.services.contains_key(&service) {
        snapshot
    } else {
        // A backend met for the first time: subscribe to it.
        let _ = shared.client.endpoints(&service).await;
        shared.client.snapshot()
    };

    let (redirect, new_path) = apply_request_filters(&sel, req.headers_mut(), &path, &name);
    if let Some((code, location)) = redirect {
        let mut res = Response::new(text(String::new()));
        *res.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::FOUND);
        if let Ok(v) = HeaderValue::try_from(location) {
            res.headers_mut().insert(header::LOCATION, v);
        }
        return res;
    }
    let pq = match (new_path, req.uri().query()) {
        (Some(p), Some(q)) => format!("{p}?{q}"),
        (Some(p), None) => p,
        (None, _) => req
            .uri()
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned()),
    };
    *req.uri_mut() = PathAndQuery::try_from(pq).map_or_else(|_| Uri::from_static("/"), Uri::from);
    let upgrade = crate::upgrade::take(&mut req);
    strip_hop_by_hop(req.headers_mut());
    if let Some(u) = &upgrade {
        u.restore(req.headers_mut());
    }
    if let Ok(h) = HeaderValue::try_from(service.as_str()) {
        req.headers_mut().insert(header::HOST, h);
    }

    let key = DestKey {
        route: sel.route.map(|r| r.name.clone()).unwrap_or_default(),
        rule: sel.rule.map_or(0, |(i, _)| i),
        service,
        version,
    };
    let dest = match config.dests.get(&key) {
        Some(d) => d,
        None => {
            let stack = config
                .stack(&shared.service, shared.zone.clone(), &sel, &key.service)
                .with_reporter(shared.breakers.reporter.clone());
            let metrics = shared
                .metrics
                .route(Direction::Outbound, &key.service, sel.label());
            let inputs = config.inputs(&key);
            config.dests.get_or_insert(key.clone(), || {
                Dest::new(key, &stack, &snapshot, &shared.up_client, metrics, inputs)
            })
        }
    };

    dest.metrics.request();
    let start = Instant::now();
    let Ok(mut res) = dest.stack.clone().oneshot(req).await;
    dest.metrics
        .response(res.status(), is_failure(&res), start.elapsed());
    if res.body().is_end_stream()
        && let Some(reason) = res.headers().get(REASON_HEADER).cloned()
        && res.headers().contains_key(SOURCE_HEADER)
    {
        let reason = reason.to_str().unwrap_or("error").to_owned();
        // A call that never left because the callee did not prove its identity says why
        // (and which identity was expected).
        let body = match shared.up_client.refusal(&dest.key.service) {
            Some(why) if res.status().is_server_error() => {
                format!("{reason}: calling `{}`: {why}\n", dest.key.service)
            }
            _ => format!("{reason}: calling `{}`\n", dest.key.service),
        };
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        res.headers_mut().remove(header::CONTENT_LENGTH);
        *res.body_mut() = text(body);
    }
    if let Some(u) = upgrade {
        u.splice(&mut res);
    }
    apply_response_filters(&sel, res.headers_mut());
    if shared.access_log.get().is_some() || shared.tracer.is_some() {
        res.extensions_mut().insert(Routed {
            route: sel.label().to_owned(),
            cluster: dest.key.service.clone(),
        });
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, host: Option<&str>) -> Request<()> {
        let mut b = Request::get(uri);
        if let Some(h) = host {
            b = b.header(header::HOST, h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn the_target_comes_from_the_uri_then_the_host() {
        let svc = |s: &str| Target::Service(s.to_owned());
        let out = |s: &str| Target::Egress(s.parse().unwrap());
        let t = |uri: &str, host: Option<&str>| target(&req(uri, host), 7710);
        assert_eq!(t("http://Orders/x", Some("ignored")), svc("orders"));
        assert_eq!(t("http://orders:8080/x", None), svc("orders"));
        assert_eq!(t("/x", Some("stock")), svc("stock"));
        assert_eq!(t("/x", Some("stock:80")), svc("stock"));
        assert_eq!(t("http://stock.service.ieum/x", None), svc("stock"));
        assert_eq!(t("/v1/invoke/stock/x", Some("127.0.0.1:7710")), Target::Own);
        assert_eq!(t("/x", Some("localhost:7710")), Target::Own);
        assert_eq!(t("http://127.0.0.1:7710/x", None), Target::Own);
        assert_eq!(t("/x", Some("[::1]:7710")), Target::Own);
        assert_eq!(t("/x", None), Target::Own);
        assert_eq!(t("http://127.0.0.1:8080/x", None), out("127.0.0.1:8080"));
        assert_eq!(t("http://localhost/x", None), out("localhost"));
        assert_eq!(t("http://api.example.com/x", None), out("api.example.com"));
        assert_eq!(
            t("/x", Some("api.example.com:8443")),
            out("api.example.com:8443")
        );
    }
}
