//! The opt-in JSON access log, one line per request with Envoy's and Istio's field names
//! (`start_time`, `method`, `path`, `protocol`, `response_code`, `response_flags`,
//! `duration`, `upstream_cluster`, `route_name`, …) so existing dashboards and log
//! pipelines read it unchanged. Inbound lines also carry `tls` (whether the call came
//! over mTLS) and `client_id` (the caller's principal, empty without one), as Linkerd's
//! metrics do. Where lines go is the caller's choice ([`crate::Sidecar::enable_access_log`]);
//! nothing is formatted while it is off.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, Request, Response, header};
use ieum_model::Timestamp;
use ieum_resilience::classify::REASON_HEADER;

/// What the handler learnt about a call, left in the response's extensions for the log.
#[derive(Debug, Clone)]
pub(crate) struct Routed {
    /// `route_name`.
    pub(crate) route: String,
    /// `upstream_cluster`: the service called, or `external`.
    pub(crate) cluster: String,
}

/// The request half of a log line, taken before the request moves on.
#[derive(Debug)]
pub(crate) struct Entry {
    start: SystemTime,
    direction: &'static str,
    method: String,
    path: String,
    protocol: String,
    authority: Option<String>,
    user_agent: Option<String>,
    request_id: Option<String>,
    x_forwarded_for: Option<String>,
    traceparent: Option<String>,
    /// Inbound: whether the connection is TLS, and the caller's principal.
    peer: Option<(bool, String)>,
}

fn header(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

impl Entry {
    pub(crate) fn new<B>(req: &Request<B>, direction: &'static str) -> Entry {
        let h = req.headers();
        Entry {
            start: SystemTime::now(),
            direction,
            method: req.method().to_string(),
            path: req
                .uri()
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
            protocol: format!("{:?}", req.version()),
            authority: req
                .uri()
                .authority()
                .map(|a| a.to_string())
                .or_else(|| header(h, header::HOST.as_str())),
            user_agent: header(h, header::USER_AGENT.as_str()),
            request_id: header(h, "x-request-id"),
            x_forwarded_for: header(h, "x-forwarded-for"),
            traceparent: header(h, "traceparent"),
            peer: None,
        }
    }

    /// Notes how the caller connected (inbound lines): over TLS or not, and its principal
    /// (empty without one).
    pub(crate) fn peer(mut self, tls: bool, client_id: &str) -> Entry {
        self.peer = Some((tls, client_id.to_owned()));
        self
    }

    /// The whole line, once the response headers are known.
    pub(crate) fn line<B: http_body::Body>(self, res: &Response<B>, elapsed: Duration) -> String {
        let reason = res
            .headers()
            .get(REASON_HEADER)
            .and_then(|v| v.to_str().ok());
        let routed = res.extensions().get::<Routed>();
        let bytes_sent = http_body::Body::size_hint(res.body()).exact();
        let mut line = serde_json::json!({
            "start_time": Timestamp::from_system(self.start).to_string(),
            "direction": self.direction,
            "method": self.method,
            "path": self.path,
            "protocol": self.protocol,
            "response_code": res.status().as_u16(),
            "response_flags": flags(reason),
            "response_code_details": reason.unwrap_or("via_upstream"),
            "bytes_sent": bytes_sent,
            "duration": u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            "authority": self.authority,
            "user_agent": self.user_agent,
            "request_id": self.request_id,
            "x_forwarded_for": self.x_forwarded_for,
            "traceparent": self.traceparent,
            "route_name": routed.map(|r| r.route.as_str()),
            "upstream_cluster": routed.map(|r| r.cluster.as_str()),
        });
        if let (Some((tls, client_id)), Some(fields)) = (self.peer, line.as_object_mut()) {
            fields.insert("tls".into(), tls.into());
            fields.insert("client_id".into(), client_id.into());
        }
        line.to_string()
    }
}

/// Envoy's response flags for the reasons ieum gives.
fn flags(reason: Option<&str>) -> &'static str {
    match reason {
        Some("connect-failed") => "UF",
        Some("upstream-reset") => "UR",
        Some("deadline-exceeded" | "upstream-timeout") => "UT",
        Some("circuit-blocked" | "overloaded" | "queue-full") => "UO",
        Some("rate-limited") => "RL",
        Some("service-not-registered" | "egress-denied") => "NR",
        Some("no-endpoint" | "no-endpoint-ready") => "UH",
        Some("fault-injected") => "FI",
        _ => "-",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_has_envoys_field_names() {
        let req = Request::get("http://stock/x?y=1")
            .header("user-agent", "curl/8")
            .header("x-request-id", "abc")
            .body(())
            .unwrap();
        let e = Entry::new(&req, "outbound");
        let mut res = Response::new(http_body_util::Empty::<bytes::Bytes>::new());
        *res.status_mut() = http::StatusCode::BAD_GATEWAY;
        res.headers_mut().insert(
            REASON_HEADER,
            http::HeaderValue::from_static("connect-failed"),
        );
        res.extensions_mut().insert(Routed {
            route: "default".into(),
            cluster: "stock".into(),
        });
        let v: serde_json::Value =
            serde_json::from_str(&e.line(&res, Duration::from_millis(12))).unwrap();
        assert_eq!(v["method"], "GET");
        assert_eq!(v["path"], "/x?y=1");
        assert_eq!(v["authority"], "stock");
        assert_eq!(v["response_code"], 502);
        assert_eq!(v["response_flags"], "UF");
        assert_eq!(v["duration"], 12);
        assert_eq!(v["upstream_cluster"], "stock");
        assert_eq!(v["request_id"], "abc");
        assert_eq!(v["protocol"], "HTTP/1.1");
        // Outbound lines say nothing of the caller's TLS.
        assert!(
            v.get("tls").is_none() && v.get("client_id").is_none(),
            "{v}"
        );
    }

    #[test]
    fn inbound_lines_carry_tls_and_the_client_id() {
        let req = Request::get("/x").body(()).unwrap();
        let res = Response::new(http_body_util::Empty::<bytes::Bytes>::new());
        let line = |e: Entry| -> serde_json::Value {
            serde_json::from_str(&e.line(&res, Duration::from_millis(1))).unwrap()
        };
        let v = line(Entry::new(&req, "inbound").peer(true, "web"));
        assert_eq!((&v["tls"], &v["client_id"]), (&true.into(), &"web".into()));
        let v = line(Entry::new(&req, "inbound").peer(false, ""));
        assert_eq!((&v["tls"], &v["client_id"]), (&false.into(), &"".into()));
    }
}
