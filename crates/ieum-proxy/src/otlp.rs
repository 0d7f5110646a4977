//! The OTLP span exporter: configuration from the standard `OTEL_*` variables, a bounded
//! queue, and one background task that sends batches.
//!
//! Why not `opentelemetry-otlp` and the SDK's batch processor: the exporter crate brings
//! its own HTTP client stack (another `reqwest` major, or `tonic` channels) next to ours,
//! and the SDK's span objects and processor cost more per request than the few attributes
//! a proxy records. Here spans are built directly as `opentelemetry-proto` messages,
//! encoded with `prost`, and sent with the sidecar's own `hyper` client — OTLP/HTTP
//! protobuf by default, or OTLP/gRPC (a unary call over h2c) when asked.
//!
//! The request path never waits on export: a span is offered to a bounded channel
//! ([`QUEUE`]) with `try_send`, and dropped (and counted in
//! `ieum_trace_spans_dropped_total`) when the queue is full. The task sends a batch every
//! second or as soon as [`BATCH`] spans are waiting; a failed batch is dropped and counted,
//! not retried, so a dead collector costs one bounded wait per batch and nothing else.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Request, Uri, header};
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::trace::string;
use crate::upstream::Clients;

/// Spans waiting for export at most; more are dropped.
pub(crate) const QUEUE: usize = 4096;
/// Spans per export request at most; a full batch is sent at once.
pub(crate) const BATCH: usize = 512;
/// Longest time a span waits in a partial batch.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// The gRPC method of OTLP trace export.
const GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// How spans travel to the collector (`OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OtlpProtocol {
    /// `http/protobuf`: `POST …/v1/traces` with a protobuf body (the default).
    #[default]
    HttpProtobuf,
    /// `grpc`: the unary `TraceService/Export` call over cleartext HTTP/2.
    Grpc,
}

/// Where and how spans are exported: the standard OpenTelemetry exporter variables.
#[derive(Debug, Clone)]
pub struct OtlpConfig {
    /// The URL requests go to: `…/v1/traces` for HTTP; the collector's base URL for gRPC.
    pub endpoint: Uri,
    /// HTTP/protobuf or gRPC.
    pub protocol: OtlpProtocol,
    /// Extra request headers (`OTEL_EXPORTER_OTLP_HEADERS`), e.g. a collector's token.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Longest wait for one export request (`OTEL_EXPORTER_OTLP_TIMEOUT`, default 10 s).
    pub timeout: Duration,
    /// Resource attributes: `service.name` first (`OTEL_SERVICE_NAME`, else the sidecar's
    /// service), then `OTEL_RESOURCE_ATTRIBUTES`.
    pub resource: Vec<(String, String)>,
}

impl OtlpConfig {
    /// From the process environment; `Ok(None)` when no endpoint is set (or
    /// `OTEL_SDK_DISABLED=true`, or `OTEL_TRACES_EXPORTER=none`).
    pub fn from_env(service: &str) -> Result<Option<OtlpConfig>, String> {
        Self::from_vars(service, |k| std::env::var(k).ok())
    }

    /// As [`OtlpConfig::from_env`], reading variables through `var`.
    pub fn from_vars(
        service: &str,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<OtlpConfig>, String> {
        let var = |k: &str| {
            var(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        // The signal-specific variable wins over the general one.
        let either = |specific: &str, general: &str| {
            var(specific)
                .map(|v| (specific.to_owned(), v))
                .or_else(|| var(general).map(|v| (general.to_owned(), v)))
        };
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
        {
            return Ok(None);
        }
        let protocol = match either(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ) {
            None => OtlpProtocol::HttpProtobuf,
            Some((_, p)) if p == "http/protobuf" => OtlpProtocol::HttpProtobuf,
            Some((_, p)) if p == "grpc" => OtlpProtocol::Grpc,
            Some((name, p)) => {
                return Err(format!(
                    "{name}={p} is not supported: use http/protobuf (the default) or grpc"
                ));
            }
        };
        let (name, endpoint) = match (
            var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            var("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            (Some(e), _) => ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", e),
            // The general endpoint is a base: HTTP appends the signal's path.
            (None, Some(base)) if protocol == OtlpProtocol::HttpProtobuf => (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("{}/v1/traces", base.trim_end_matches('/')),
            ),
            (None, Some(base)) => ("OTEL_EXPORTER_OTLP_ENDPOINT", base),
            (None, None) => return Ok(None),
        };
        let endpoint: Uri = endpoint
            .parse()
            .map_err(|e| format!("{name}={endpoint} is not a URL: {e}"))?;
        match endpoint.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(format!(
                    "{name}={endpoint}: https is not supported yet; send to a collector over http (e.g. a local agent)"
                ));
            }
            _ => return Err(format!("{name}={endpoint} needs an http:// URL")),
        }
        let mut headers = Vec::new();
        if let Some((name, list)) = either(
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "OTEL_EXPORTER_OTLP_HEADERS",
        ) {
            for (k, v) in pairs(&list) {
                let k = HeaderName::try_from(k.as_str())
                    .map_err(|_| format!("{name}: `{k}` is not a header name"))?;
                let v = HeaderValue::try_from(v.as_str())
                    .map_err(|_| format!("{name}: the value of `{k}` is not a header value"))?;
                headers.push((k, v));
            }
        }
        let timeout = match either(
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ) {
            None => Duration::from_secs(10),
            Some((name, ms)) => Duration::from_millis(
                ms.parse()
                    .map_err(|_| format!("{name}={ms} is not a number of milliseconds"))?,
            ),
        };
        let service_name = var("OTEL_SERVICE_NAME").unwrap_or_else(|| service.to_owned());
        let mut resource = vec![("service.name".to_owned(), service_name)];
        for (k, v) in var("OTEL_RESOURCE_ATTRIBUTES")
            .as_deref()
            .map(pairs)
            .unwrap_or_default()
        {
            if k != "service.name" {
                resource.push((k, v));
            }
        }
        Ok(Some(OtlpConfig {
            endpoint,
            protocol,
            headers,
            timeout,
            resource,
        }))
    }
}

/// `k1=v1,k2=v2` with percent-encoded values (the OTel list format).
fn pairs(list: &str) -> Vec<(String, String)> {
    list.split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), percent_decode(v.trim())))
        .filter(|(k, _)| !k.is_empty())
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Export counters, rendered on `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    exported: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
    /// Whether the last export failed (to log a change of state once, not every batch).
    failing: AtomicBool,
}

/// Hands finished spans to the export task. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Tracer {
    tx: mpsc::Sender<Span>,
    stats: Arc<Stats>,
}

impl Tracer {
    /// Starts the export task; it sends what is queued and ends when `stop` is cancelled.
    pub(crate) fn start(
        config: OtlpConfig,
        stop: CancellationToken,
    ) -> (Tracer, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let stats = Arc::new(Stats::default());
        let task = tokio::spawn(export(config, rx, stats.clone(), stop));
        (Tracer { tx, stats }, task)
    }

    /// Queues `span` without waiting; a full queue drops it.
    pub(crate) fn record(&self, span: Span) {
        if self.tx.try_send(span).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The Prometheus lines of the export counters.
    pub(crate) fn render(&self, out: &mut String) {
        for (name, help, v) in [
            (
                "ieum_trace_spans_exported_total",
                "Spans accepted by the OTLP collector.",
                &self.stats.exported,
            ),
            (
                "ieum_trace_spans_dropped_total",
                "Spans dropped because the export queue was full.",
                &self.stats.dropped,
            ),
            (
                "ieum_trace_spans_failed_total",
                "Spans lost in export requests that failed.",
                &self.stats.failed,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
    }
}

/// The export task: batches of at most [`BATCH`], sent at least every [`FLUSH_EVERY`].
async fn export(
    config: OtlpConfig,
    mut rx: mpsc::Receiver<Span>,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    let client: Clients<Full<Bytes>> = Clients::new();
    let mut batch = Vec::with_capacity(BATCH);
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let room = BATCH - batch.len();
        tokio::select! {
            n = rx.recv_many(&mut batch, room) => {
                if n == 0 {
                    break;
                }
                if batch.len() >= BATCH {
                    send(&config, &client, &stats, std::mem::take(&mut batch)).await;
                }
            }
            _ = tick.tick() => {
                if !batch.is_empty() {
                    send(&config, &client, &stats, std::mem::take(&mut batch)).await;
                }
            }
            () = stop.cancelled() => break,
        }
    }
    // Stopping: what is queued goes out in one last round.
    while let Ok(span) = rx.try_recv() {
        batch.push(span);
        if batch.len() >= BATCH {
            send(&config, &client, &stats, std::mem::take(&mut batch)).await;
        }
    }
    if !batch.is_empty() {
        send(&config, &client, &stats, batch).await;
    }
}

async fn send(config: &OtlpConfig, client: &Clients<Full<Bytes>>, stats: &Stats, spans: Vec<Span>) {
    let n = spans.len() as u64;
    let message = request(config, spans);
    let result = tokio::time::timeout(config.timeout, post(config, client, message)).await;
    let result = result.unwrap_or_else(|_| Err(format!("no answer within {:?}", config.timeout)));
    match result {
        Ok(()) => {
            stats.exported.fetch_add(n, Ordering::Relaxed);
            if stats.failing.swap(false, Ordering::Relaxed) {
                tracing::info!(endpoint = %config.endpoint, "span export works again");
            }
        }
        Err(why) => {
            stats.failed.fetch_add(n, Ordering::Relaxed);
            if !stats.failing.swap(true, Ordering::Relaxed) {
                tracing::warn!(endpoint = %config.endpoint, error = %why, "span export failed; dropping spans until it works");
            }
        }
    }
}

/// One export request for `spans`.
fn request(config: &OtlpConfig, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: config.resource.iter().map(|(k, v)| string(k, v)).collect(),
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "ieum-proxy".to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

async fn post(
    config: &OtlpConfig,
    client: &Clients<Full<Bytes>>,
    message: ExportTraceServiceRequest,
) -> Result<(), String> {
    let grpc = config.protocol == OtlpProtocol::Grpc;
    let (uri, body, content_type) = if grpc {
        // A gRPC message: uncompressed flag, big-endian length, then the protobuf.
        let len = message.encoded_len();
        let mut buf = BytesMut::with_capacity(5 + len);
        buf.put_u8(0);
        buf.put_u32(u32::try_from(len).map_err(|_| "batch too large".to_owned())?);
        message
            .encode(&mut buf)
            .map_err(|e| format!("encoding: {e}"))?;
        let mut parts = config.endpoint.clone().into_parts();
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static(GRPC_PATH));
        let uri = Uri::from_parts(parts).map_err(|e| e.to_string())?;
        (uri, buf.freeze(), "application/grpc")
    } else {
        let body = Bytes::from(message.encode_to_vec());
        (config.endpoint.clone(), body, "application/x-protobuf")
    };
    let mut req = Request::post(uri)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    if grpc {
        *req.version_mut() = http::Version::HTTP_2;
        req.headers_mut()
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    for (k, v) in &config.headers {
        req.headers_mut().insert(k.clone(), v.clone());
    }
    let res = client.request(req).await.map_err(|e| e.to_string())?;
    let status = res.status();
    let header_status = res.headers().get("grpc-status").cloned();
    let collected = res
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?;
    if !status.is_success() {
        return Err(format!("the collector answered {status}"));
    }
    if grpc {
        let code = header_status.or_else(|| {
            collected
                .trailers()
                .and_then(|t| t.get("grpc-status").cloned())
        });
        match code.as_ref().map(HeaderValue::as_bytes) {
            Some(b"0") => {}
            Some(c) => {
                return Err(format!(
                    "the collector answered grpc-status {}",
                    String::from_utf8_lossy(c)
                ));
            }
            None => return Err("the collector's answer has no grpc-status".to_owned()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: std::collections::HashMap<String, String> = list
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn nothing_is_exported_without_an_endpoint() {
        assert!(OtlpConfig::from_vars("web", vars(&[])).unwrap().is_none());
        let off = vars(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_SDK_DISABLED", "true"),
        ]);
        assert!(OtlpConfig::from_vars("web", off).unwrap().is_none());
    }

    #[test]
    fn the_standard_variables_configure_the_exporter() {
        let c = OtlpConfig::from_vars(
            "web",
            vars(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "x-token=a%20b, x-other=c"),
                ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=dev"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(c.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(c.headers[0].1, "a b");
        assert_eq!(c.headers[1].0, "x-other");
        assert_eq!(c.timeout, Duration::from_secs(10));
        assert_eq!(
            c.resource,
            [
                ("service.name".to_owned(), "web".to_owned()),
                ("deployment.environment".to_owned(), "dev".to_owned())
            ]
        );

        let c = OtlpConfig::from_vars(
            "web",
            vars(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:4318"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:9999/custom"),
                ("OTEL_SERVICE_NAME", "storefront"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "250"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.endpoint, "http://c:9999/custom", "used as is");
        assert_eq!(c.resource[0].1, "storefront");
        assert_eq!(c.timeout, Duration::from_millis(250));

        let c = OtlpConfig::from_vars(
            "web",
            vars(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (c.endpoint.to_string().as_str(), c.protocol),
            ("http://c:4317/", OtlpProtocol::Grpc)
        );
    }

    #[test]
    fn unsupported_settings_are_explained() {
        let e = OtlpConfig::from_vars(
            "web",
            vars(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ]),
        )
        .unwrap_err();
        assert!(e.contains("OTEL_EXPORTER_OTLP_PROTOCOL=http/json"), "{e}");
        let e = OtlpConfig::from_vars(
            "web",
            vars(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318")]),
        )
        .unwrap_err();
        assert!(e.contains("https is not supported"), "{e}");
    }
}
