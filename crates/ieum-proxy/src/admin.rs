//! The admin listener: `/ready`, `/metrics`, `/config`, `/endpoints`.
//!
//! `/ready` answers 503 while draining and when the app is unhealthy. A control plane that cannot be
//! reached makes the sidecar *degraded*, not unready: it still serves on its last
//! snapshot (static stability), so it answers 200 with `degraded: control plane
//! unreachable since T` — taking it out of rotation then would turn a control-plane outage
//! into a data-plane one.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use ieum_model::Timestamp;

use crate::Shared;
use crate::body::{ProxyBody, text};

pub(crate) async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(answer(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "use GET\n".into(),
        ));
    }
    let res = match req.uri().path() {
        "/ready" => ready(&shared),
        "/metrics" => {
            let mut text = shared.metrics.render();
            shared.bridge.metrics.render(&mut text);
            if let Some(t) = &shared.tracer {
                t.render(&mut text);
            }
            if let Some(extra) = shared.extra_metrics.get() {
                extra(&mut text);
            }
            answer(StatusCode::OK, "text/plain; version=0.0.4", text)
        }
        "/config" => {
            let snapshot = shared.client.snapshot();
            let mut services: Vec<String> = snapshot.services.keys().cloned().collect();
            services.push(shared.service.clone());
            services.sort();
            services.dedup();
            let mut body = shared.config().to_json(&services);
            body["service"] = shared.service.clone().into();
            body["zone"] = shared.zone.as_deref().into();
            json(&body)
        }
        "/subscriptions" => json(&shared.bridge.to_json()),
        "/endpoints" => {
            let snapshot = shared.client.snapshot();
            json(&serde_json::json!({
                "version": snapshot.version,
                "connected": shared.client.connected(),
                "services": snapshot.services,
                "breakers": shared.breakers.views(),
            }))
        }
        _ => answer(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: /ready, /metrics, /config, /endpoints, /subscriptions\n".into(),
        ),
    };
    Ok(res)
}

fn ready(shared: &Shared) -> Response<ProxyBody> {
    let plain = "text/plain; charset=utf-8";
    if shared.draining.load(Ordering::Acquire) {
        return answer(StatusCode::SERVICE_UNAVAILABLE, plain, "draining\n".into());
    }
    if !shared.app_healthy.load(Ordering::Acquire) {
        return answer(
            StatusCode::SERVICE_UNAVAILABLE,
            plain,
            format!("not ready: the app at {} is not healthy\n", shared.app_addr),
        );
    }
    shared.sample_connected();
    let since = *shared
        .disconnected_since
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    match since {
        Some(t) => answer(
            StatusCode::OK,
            plain,
            format!(
                "degraded: control plane unreachable since {}; serving the last snapshot\n",
                Timestamp::from_system(t)
            ),
        ),
        None => answer(StatusCode::OK, plain, "ready\n".into()),
    }
}

fn json(v: &serde_json::Value) -> Response<ProxyBody> {
    let body =
        serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    answer(StatusCode::OK, "application/json", body)
}

fn answer(status: StatusCode, content_type: &'static str, body: String) -> Response<ProxyBody> {
    let mut res = Response::new(text(body));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}
