//! W3C trace context on every hop, and one span per proxied request.
//!
//! Propagation is always on, exporter or not: each hop reads the incoming `traceparent`
//! (or starts a trace when there is none or it is malformed), keeps the trace id, gives
//! itself a new span id and sends that on, so the next hop's parent is this one. The
//! outbound listener's span is a `CLIENT` span whose parent is the app's span (when the
//! app sent one); the inbound listener's is a `SERVER` span whose parent is the calling
//! sidecar's client span, and the app sees the server span as its parent. `tracestate`
//! passes through unchanged (and is dropped with a malformed `traceparent`, as the W3C
//! specification requires).
//!
//! Spans are recorded only with an exporter configured ([`crate::OtlpConfig`]) and when
//! the incoming context is sampled (parent-based, always-on for new traces: Envoy's and
//! the OpenTelemetry SDKs' default). A span ends when the response headers are ready, as
//! `response_latency_ms` does. Attributes follow the OpenTelemetry HTTP conventions
//! (`http.request.method`, `url.path`, `http.response.status_code`, `server.address`,
//! `error.type`) plus `ieum.direction`, `ieum.dst_service`, `ieum.route` and
//! `ieum.retry.attempts`.
//!
//! Events follow the same trace: a publish records a `PRODUCER` span (`send TOPIC`, child
//! of the outbound hop) and writes its context into the event's `traceparent` extension;
//! each delivery records a `CONSUMER` span (`process TOPIC`) whose parent is that
//! extension, and the app sees the consumer span as its parent. Their attributes follow
//! the OpenTelemetry messaging and CloudEvents conventions (`messaging.*`,
//! `cloudevents.event_*`) plus `ieum.pubsub`, `ieum.delivery.attempt` and
//! `ieum.correlation_id`.

use std::time::SystemTime;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Response};
use ieum_resilience::classify::REASON_HEADER;
use ieum_resilience::retry::ATTEMPTS_HEADER;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{Span, Status, span::SpanKind, status::StatusCode};
use tokio::time::Instant;

pub(crate) use crate::otlp::Tracer;

/// The W3C trace context header.
pub(crate) const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// Vendor trace state, dropped with a malformed `traceparent`.
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// A parsed `traceparent` (version `00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TraceContext {
    pub(crate) trace_id: [u8; 16],
    pub(crate) span_id: [u8; 8],
    /// Trace flags; bit 0 is `sampled`.
    pub(crate) flags: u8,
}

impl TraceContext {
    /// Parses a `traceparent` value. Versions above `00` are read by their first four
    /// fields (forward compatibility); `ff`, all-zero ids and upper-case hex are invalid.
    pub(crate) fn parse(v: &[u8]) -> Option<TraceContext> {
        if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
            return None;
        }
        let version = hex::<1>(&v[0..2])?[0];
        if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
            return None;
        }
        let trace_id = hex::<16>(&v[3..35])?;
        let span_id = hex::<8>(&v[36..52])?;
        let flags = hex::<1>(&v[53..55])?[0];
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceContext {
            trace_id,
            span_id,
            flags,
        })
    }

    pub(crate) fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The `traceparent` value for this context (version `00`, only the sampled flag).
    pub(crate) fn header(&self) -> HeaderValue {
        let mut out = Vec::with_capacity(55);
        out.extend_from_slice(b"00-");
        push_hex(&mut out, &self.trace_id);
        out.push(b'-');
        push_hex(&mut out, &self.span_id);
        out.extend_from_slice(if self.sampled() { b"-01" } else { b"-00" });
        HeaderValue::from_bytes(&out).expect("hex digits and dashes are a valid header value")
    }
}

fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0xf)]);
    }
}

/// Lower-case hex into `N` bytes.
fn hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

fn new_span_id() -> [u8; 8] {
    loop {
        let id: u64 = rand::random();
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

fn new_trace_id() -> [u8; 16] {
    loop {
        let id: u128 = rand::random();
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

/// This hop of a request: the caller's context and this hop's own.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hop {
    /// The span id of the caller, when it sent a valid `traceparent`.
    pub(crate) parent: Option<[u8; 8]>,
    /// This hop: same trace, new span id.
    pub(crate) ctx: TraceContext,
}

impl Hop {
    /// Reads the caller's `traceparent` from `headers` and replaces it with this hop's.
    pub(crate) fn enter(headers: &mut HeaderMap) -> Hop {
        let incoming = headers
            .get(&TRACEPARENT)
            .and_then(|v| TraceContext::parse(v.as_bytes()));
        let hop = match incoming {
            Some(p) => Hop {
                parent: Some(p.span_id),
                ctx: TraceContext {
                    span_id: new_span_id(),
                    ..p
                },
            },
            None => {
                // No context, or one that cannot be trusted: a new trace, sampled.
                headers.remove(&TRACESTATE);
                Hop {
                    parent: None,
                    ctx: TraceContext {
                        trace_id: new_trace_id(),
                        span_id: new_span_id(),
                        flags: 1,
                    },
                }
            }
        };
        headers.insert(TRACEPARENT, hop.ctx.header());
        hop
    }
}

impl Hop {
    /// A hop below the context `traceparent` names (same trace, new span id), or `None`
    /// when it is missing or malformed.
    pub(crate) fn child_of(traceparent: Option<&str>) -> Option<Hop> {
        let parent = TraceContext::parse(traceparent?.as_bytes())?;
        Some(Hop {
            parent: Some(parent.span_id),
            ctx: TraceContext {
                span_id: new_span_id(),
                ..parent
            },
        })
    }
}

/// Which side of the call a span describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The outbound listener's call to another service (or outside the mesh).
    Client,
    /// The inbound listener's handling of another sidecar's call.
    Server,
}

/// A span being timed: what is known when the request arrives.
#[derive(Debug)]
pub(crate) struct Pending {
    hop: Hop,
    kind: Kind,
    start: SystemTime,
    started: Instant,
    method: Method,
    path: String,
    server_address: Option<String>,
}

impl Pending {
    /// Starts timing `hop` when `tracer` is on and the trace is sampled; `None` costs
    /// nothing further.
    pub(crate) fn start<B>(
        tracer: Option<&Tracer>,
        hop: Hop,
        kind: Kind,
        req: &http::Request<B>,
    ) -> Option<Pending> {
        tracer?;
        if !hop.ctx.sampled() {
            return None;
        }
        let server_address = req.uri().host().map(str::to_owned).or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(|h| h.rsplit_once(':').map_or(h, |(host, _)| host).to_owned())
        });
        Some(Pending {
            hop,
            kind,
            start: SystemTime::now(),
            started: Instant::now(),
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            server_address,
        })
    }

    /// The finished span for `res`, with the destination service and route label.
    pub(crate) fn finish<B>(self, res: &Response<B>, dst_service: &str, route: &str) -> Span {
        let status = res.status().as_u16();
        let start_ns = unix_nanos(self.start);
        let end_ns = start_ns
            .saturating_add(u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX));
        let attempts = res
            .headers()
            .get(ATTEMPTS_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(1);
        let mut attributes = vec![
            string("http.request.method", self.method.as_str()),
            string("url.path", &self.path),
            int("http.response.status_code", i64::from(status)),
            string(
                "ieum.direction",
                match self.kind {
                    Kind::Client => "outbound",
                    Kind::Server => "inbound",
                },
            ),
        ];
        if !dst_service.is_empty() {
            attributes.push(string("ieum.dst_service", dst_service));
        }
        if !route.is_empty() {
            attributes.push(string("ieum.route", route));
        }
        // A client calls the service by its name; outside the mesh, by the host it named.
        let server_address = match self.kind {
            Kind::Client if !dst_service.is_empty() && dst_service != "external" => {
                Some(dst_service)
            }
            _ => self.server_address.as_deref(),
        };
        if let Some(a) = server_address {
            attributes.push(string("server.address", a));
        }
        if self.kind == Kind::Client {
            attributes.push(int("ieum.retry.attempts", attempts));
        }
        // OpenTelemetry: 5xx is an error on both sides, 4xx only for the client.
        let error = status >= 500 || (self.kind == Kind::Client && status >= 400);
        let reason = res
            .headers()
            .get(REASON_HEADER)
            .and_then(|v| v.to_str().ok());
        if error {
            let status_text = status.to_string();
            attributes.push(string("error.type", reason.unwrap_or(&status_text)));
        }
        Span {
            trace_id: self.hop.ctx.trace_id.to_vec(),
            span_id: self.hop.ctx.span_id.to_vec(),
            parent_span_id: self.hop.parent.map(|p| p.to_vec()).unwrap_or_default(),
            flags: u32::from(self.hop.ctx.flags & 1)
                | if self.hop.parent.is_some() {
                    0x300
                } else {
                    0x100
                },
            name: match self.kind {
                Kind::Client => format!("{} {dst_service}", self.method),
                Kind::Server => format!("{} inbound", self.method),
            },
            kind: match self.kind {
                Kind::Client => SpanKind::Client,
                Kind::Server => SpanKind::Server,
            } as i32,
            start_time_unix_nano: start_ns,
            end_time_unix_nano: end_ns,
            attributes,
            status: Some(Status {
                message: if error {
                    reason.unwrap_or_default().to_owned()
                } else {
                    String::new()
                },
                code: if error {
                    StatusCode::Error
                } else {
                    StatusCode::Unset
                } as i32,
            }),
            ..Default::default()
        }
    }
}

/// When a span started, on the wall clock (for its timestamps) and the monotonic one (for
/// its duration).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SpanClock {
    start: SystemTime,
    started: Instant,
}

impl SpanClock {
    pub(crate) fn start() -> SpanClock {
        SpanClock {
            start: SystemTime::now(),
            started: Instant::now(),
        }
    }

    /// Start and end, in Unix nanoseconds.
    fn bounds(&self) -> (u64, u64) {
        let start = unix_nanos(self.start);
        let end = start
            .saturating_add(u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX));
        (start, end)
    }
}

/// The side of a messaging span (OpenTelemetry messaging conventions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MessagingKind {
    /// The app's publish, through the sidecar to the broker (`PRODUCER`, `send`).
    Send,
    /// A delivery of an event to the app (`CONSUMER`, `process`).
    Process,
}

/// What a messaging span says.
pub(crate) struct Messaging<'a> {
    /// The span's own context and its parent: for `Process`, the event's `traceparent`.
    pub(crate) hop: Hop,
    pub(crate) kind: MessagingKind,
    pub(crate) started: SpanClock,
    pub(crate) pubsub: &'a str,
    pub(crate) topic: &'a str,
    /// The consumer group, for deliveries.
    pub(crate) group: Option<&'a str>,
    pub(crate) event: &'a ieum_bridge::CloudEvent,
    /// The delivery attempt (deliveries only).
    pub(crate) attempt: u32,
    /// Why it failed, when it did.
    pub(crate) error: Option<&'a str>,
}

/// A finished messaging span: `send TOPIC` or `process TOPIC`, with the
/// `messaging.*` attributes, the event's id, type and correlation id.
pub(crate) fn messaging_span(m: &Messaging<'_>) -> Span {
    let (start, end) = m.started.bounds();
    let (operation, kind) = match m.kind {
        MessagingKind::Send => ("send", SpanKind::Producer),
        MessagingKind::Process => ("process", SpanKind::Consumer),
    };
    let mut attributes = vec![
        string("messaging.system", "ieum"),
        string("messaging.operation.type", operation),
        string("messaging.destination.name", m.topic),
        string("messaging.message.id", &m.event.id),
        string("cloudevents.event_id", &m.event.id),
        string("cloudevents.event_source", &m.event.source),
        string("cloudevents.event_type", &m.event.ty),
        string("ieum.pubsub", m.pubsub),
    ];
    if let Some(group) = m.group {
        attributes.push(string("messaging.consumer.group.name", group));
    }
    if m.kind == MessagingKind::Process {
        attributes.push(int("ieum.delivery.attempt", i64::from(m.attempt)));
    }
    if let Some(c) = m.event.extension(ieum_bridge::cloudevents::CORRELATION_ID) {
        attributes.push(string("ieum.correlation_id", c));
    }
    if let Some(e) = m.error {
        attributes.push(string("error.type", e));
    }
    Span {
        trace_id: m.hop.ctx.trace_id.to_vec(),
        span_id: m.hop.ctx.span_id.to_vec(),
        parent_span_id: m.hop.parent.map(|p| p.to_vec()).unwrap_or_default(),
        flags: u32::from(m.hop.ctx.flags & 1) | if m.hop.parent.is_some() { 0x300 } else { 0x100 },
        name: format!("{operation} {}", m.topic),
        kind: kind as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        attributes,
        status: Some(Status {
            message: m.error.unwrap_or_default().to_owned(),
            code: if m.error.is_some() {
                StatusCode::Error
            } else {
                StatusCode::Unset
            } as i32,
        }),
        ..Default::default()
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

pub(crate) fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    }
}

fn int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_writes_w3c_traceparent() {
        let c = TraceContext::parse(VALID.as_bytes()).unwrap();
        assert_eq!(c.trace_id[0], 0x4b);
        assert_eq!(c.span_id[7], 0xb7);
        assert!(c.sampled());
        assert_eq!(c.header(), VALID);
        let unsampled = TraceContext::parse(
            &VALID.as_bytes()[..54]
                .iter()
                .chain(b"0")
                .copied()
                .collect::<Vec<_>>(),
        )
        .unwrap();
        assert!(!unsampled.sampled());
        assert!(unsampled.header().to_str().unwrap().ends_with("-00"));
        // A future version with more fields is read by its first four.
        let future = format!("01{}-extra", &VALID[2..]);
        assert!(TraceContext::parse(future.as_bytes()).is_some());
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn a_hop_keeps_the_trace_and_takes_a_new_span_id() {
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static(VALID));
        h.insert(TRACESTATE, HeaderValue::from_static("vendor=1"));
        let hop = Hop::enter(&mut h);
        let incoming = TraceContext::parse(VALID.as_bytes()).unwrap();
        assert_eq!(hop.parent, Some(incoming.span_id));
        assert_eq!(hop.ctx.trace_id, incoming.trace_id);
        assert_ne!(hop.ctx.span_id, incoming.span_id);
        assert_eq!(h[&TRACEPARENT], hop.ctx.header());
        assert_eq!(h[&TRACESTATE], "vendor=1");

        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static("garbage"));
        h.insert(TRACESTATE, HeaderValue::from_static("vendor=1"));
        let hop = Hop::enter(&mut h);
        assert_eq!(hop.parent, None);
        assert!(hop.ctx.sampled(), "new traces are sampled");
        assert!(!h.contains_key(&TRACESTATE));
        let sent = TraceContext::parse(h[&TRACEPARENT].as_bytes()).unwrap();
        assert_eq!(sent, hop.ctx);
    }
}
