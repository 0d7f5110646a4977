//! The app's calls to the control plane through its sidecar: `POST /v1/sagas/NAME/executions`
//! and `POST /v1/flows/NAME` on the outbound listener go to the server the sidecar follows,
//! under the sidecar's own credentials (its mesh certificate once enrolled, else its token),
//! so the app holds no token and needs no address but `IEUM_OUTBOUND`.
//!
//! Only these starts are forwarded: they are what the `sidecar` role may do. The request's
//! query (`?wait=5s`), body and the headers that carry meaning (`Content-Type`, `Accept`,
//! `Idempotency-Key`, trace context) go through; the server's answer comes back as it is.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};

use crate::Shared;
use crate::body::ProxyBody;

/// Largest body forwarded (the server refuses larger ones too).
const MAX_BODY: usize = 1 << 20;
/// Longest wait for the server's answer: above the longest `?wait=` it allows.
const TIMEOUT: Duration = Duration::from_secs(90);

/// Request headers forwarded to the server.
const FORWARDED: [&str; 6] = [
    "content-type",
    "accept",
    "idempotency-key",
    "traceparent",
    "tracestate",
    "baggage",
];
/// Response headers returned to the app.
const RETURNED: [&str; 4] = ["content-type", "location", "retry-after", "idempotency-key"];

/// The server a sidecar follows, as its own API reaches it.
pub(crate) struct ServerLink {
    url: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl ServerLink {
    /// A link to `host`'s server; the error says what to fix.
    pub(crate) fn new(host: &ieum_bridge::MemoryHost) -> Result<ServerLink, String> {
        Ok(ServerLink {
            url: host.url.trim_end_matches('/').to_owned(),
            token: host.token.clone(),
            http: host.http_client()?,
        })
    }
}

/// Whether a request to the sidecar's own API is one for the control plane.
pub(crate) fn is_control_path(method: &Method, path: &str) -> bool {
    if method != Method::POST {
        return false;
    }
    let one_segment = |s: &str| !s.is_empty() && !s.contains('/');
    if let Some(rest) = path.strip_prefix("/v1/sagas/")
        && let Some(name) = rest.strip_suffix("/executions")
    {
        return one_segment(name);
    }
    path.strip_prefix("/v1/flows/").is_some_and(one_segment)
}

/// Forwards `req` (a saga or flow start) to the server and answers with its response.
pub(crate) async fn forward(
    shared: &Arc<Shared>,
    req: Request<crate::body::RequestBody>,
) -> Response<ProxyBody> {
    let Some(link) = shared.server.get() else {
        return crate::outbound::local(
            StatusCode::SERVICE_UNAVAILABLE,
            "no-control-plane",
            "this sidecar was started without a server to forward saga and flow starts to\n"
                .to_owned(),
        );
    };
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return crate::outbound::local(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                format!("the body is larger than {MAX_BODY} bytes\n"),
            );
        }
        Err(e) => {
            return crate::outbound::local(
                StatusCode::BAD_REQUEST,
                "bad-request",
                format!("cannot read the request body: {e}\n"),
            );
        }
    };
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), |pq| pq.as_str());
    let mut out = link
        .http
        .post(format!("{}{path_and_query}", link.url))
        .timeout(TIMEOUT)
        .body(body);
    for name in FORWARDED {
        for value in parts.headers.get_all(name) {
            out = out.header(name, value);
        }
    }
    if let Some(t) = &link.token {
        out = out.bearer_auth(t);
    }
    let resp = match out.send().await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::warn!(error = %e, server = %link.url, "cannot forward a start to the control plane");
            let (status, reason) = if e.is_timeout() {
                (StatusCode::GATEWAY_TIMEOUT, "control-plane-timeout")
            } else {
                (StatusCode::BAD_GATEWAY, "control-plane-unreachable")
            };
            return crate::outbound::local(
                status,
                reason,
                "the control plane did not answer; retry with the same Idempotency-Key\n"
                    .to_owned(),
            );
        }
    };
    let status = resp.status();
    let mut headers = http::HeaderMap::new();
    for name in RETURNED {
        if let Some(v) = resp.headers().get(name) {
            headers.insert(name, v.clone());
        }
    }
    let bytes = match resp.bytes().await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, server = %link.url, "the control plane's answer broke off");
            return crate::outbound::local(
                StatusCode::BAD_GATEWAY,
                "control-plane-unreachable",
                "the control plane's answer broke off; retry with the same Idempotency-Key\n"
                    .to_owned(),
            );
        }
    };
    let mut res = Response::new(full(bytes));
    *res.status_mut() = status;
    *res.headers_mut() = headers;
    if !res.headers().contains_key(header::CONTENT_TYPE) {
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
    }
    res
}

fn full(bytes: Bytes) -> ProxyBody {
    crate::body::boxed(http_body_util::Full::new(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_saga_and_flow_starts_are_for_the_control_plane() {
        let post = Method::POST;
        assert!(is_control_path(&post, "/v1/sagas/checkout/executions"));
        assert!(is_control_path(&post, "/v1/flows/quote"));
        assert!(!is_control_path(&Method::GET, "/v1/flows/quote"));
        assert!(!is_control_path(&post, "/v1/sagas//executions"));
        assert!(!is_control_path(&post, "/v1/sagas/a/b/executions"));
        assert!(!is_control_path(&post, "/v1/sagas/executions/x/cancel"));
        assert!(!is_control_path(&post, "/v1/flows/"));
        assert!(!is_control_path(&post, "/v1/flows/a/b"));
        assert!(!is_control_path(&post, "/v1/tokens"));
    }
}
