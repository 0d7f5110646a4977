//! Trace context across a sidecar pair, and spans exported to a test OTLP collector that
//! decodes what it receives with `prost`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::BodyExt;
use ieum_proxy::{OtlpConfig, OtlpProtocol, Sidecar};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use tokio::time::Instant;

/// Spans received, with the `service.name` of their resource.
type Received = Arc<Mutex<Vec<(String, Span)>>>;

fn collect(received: &Received, body: &[u8]) {
    let req = ExportTraceServiceRequest::decode(body).expect("an OTLP export request");
    for rs in req.resource_spans {
        let service = rs
            .resource
            .unwrap()
            .attributes
            .into_iter()
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| match kv.value?.value? {
                Value::StringValue(s) => Some(s),
                _ => None,
            })
            .expect("service.name");
        for ss in rs.scope_spans {
            assert_eq!(ss.scope.unwrap().name, "ieum-proxy");
            for span in ss.spans {
                received.lock().unwrap().push((service.clone(), span));
            }
        }
    }
}

/// An OTLP/HTTP collector: `POST /v1/traces` with a protobuf body.
async fn http_collector() -> (SocketAddr, Received) {
    let received: Received = Arc::default();
    let r = received.clone();
    let addr = app(move |req: http::Request<hyper::body::Incoming>| {
        let r = r.clone();
        async move {
            assert_eq!(req.uri().path(), "/v1/traces");
            assert_eq!(req.headers()["content-type"], "application/x-protobuf");
            assert_eq!(req.headers()["x-collector-token"], "secret");
            let body = req.into_body().collect().await.unwrap().to_bytes();
            collect(&r, &body);
            reply(200, "")
        }
    })
    .await;
    (addr, received)
}

/// An OTLP/gRPC collector (h2c): the unary `TraceService/Export`.
async fn grpc_collector() -> (SocketAddr, Received) {
    let received: Received = Arc::default();
    let r = received.clone();
    let addr = app_h2(move |req: http::Request<hyper::body::Incoming>| {
        let r = r.clone();
        async move {
            assert_eq!(
                req.uri().path(),
                "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
            );
            assert_eq!(req.headers()["content-type"], "application/grpc");
            let body = req.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body[0], 0, "uncompressed");
            let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
            collect(&r, &body[5..5 + len]);
            http::Response::builder()
                .header("content-type", "application/grpc")
                .header("grpc-status", "0")
                .body(http_body_util::Full::new(Bytes::new()))
                .unwrap()
        }
    })
    .await;
    (addr, received)
}

fn otlp(collector: SocketAddr, protocol: OtlpProtocol, service: &str) -> OtlpConfig {
    let vars = [
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
            format!("http://{collector}"),
        ),
        (
            "OTEL_EXPORTER_OTLP_PROTOCOL".to_owned(),
            match protocol {
                OtlpProtocol::HttpProtobuf => "http/protobuf",
                OtlpProtocol::Grpc => "grpc",
            }
            .to_owned(),
        ),
        (
            "OTEL_EXPORTER_OTLP_HEADERS".to_owned(),
            "x-collector-token=secret".to_owned(),
        ),
    ];
    OtlpConfig::from_vars(service, |k| {
        vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    })
    .unwrap()
    .unwrap()
}

/// `web` (sidecar A, no app) calls `stock` (sidecar B in front of an app that records the
/// `traceparent` it gets and answers 503 to the first call of `/flaky`).
struct Pair {
    server: Server,
    a: Sidecar,
    _b: Sidecar,
    seen: Arc<Mutex<Vec<String>>>,
}

async fn pair(collector: SocketAddr, protocol: OtlpProtocol) -> Pair {
    let server = Server::start().await;
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let flaky = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    let app_b = app(move |req: http::Request<hyper::body::Incoming>| {
        let tp = req
            .headers()
            .get("traceparent")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        s.lock().unwrap().push(tp);
        let first_flaky = req.uri().path() == "/flaky" && flaky.fetch_add(1, Ordering::SeqCst) == 0;
        async move {
            if first_flaky {
                reply(503, "busy")
            } else {
                reply(200, "ok")
            }
        }
    })
    .await;
    let b = sidecar_with(client(&server, "stock", &[]), "stock", app_b, |c| {
        c.otlp = Some(otlp(collector, protocol, "stock"));
    })
    .await;
    server
        .register("stock", "stock-1", b.inbound_addr(), None)
        .await;
    let client_a = client(&server, "web", &["stock"]);
    until(&client_a, "stock's endpoint", |s| s.up("stock").len() == 1).await;
    let a = sidecar_with(client_a, "web", "127.0.0.1:9".parse().unwrap(), |c| {
        c.otlp = Some(otlp(collector, protocol, "web"));
    })
    .await;
    Pair {
        server,
        a,
        _b: b,
        seen,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Trace id and parent id of a `traceparent`.
fn ids(tp: &str) -> (String, String, String) {
    let p: Vec<&str> = tp.split('-').collect();
    assert_eq!((p.len(), p[0]), (4, "00"), "{tp}");
    (p[1].to_owned(), p[2].to_owned(), p[3].to_owned())
}

/// Waits until `n` spans of `trace` have arrived; returns them with their service.
async fn spans_of(received: &Received, trace: &str, n: usize) -> Vec<(String, Span)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got: Vec<(String, Span)> = received
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s)| hex(&s.trace_id) == trace)
            .cloned()
            .collect();
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} spans of {trace} arrived",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn attr(span: &Span, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.clone()?.value)
}

fn s(v: &str) -> Option<Value> {
    Some(Value::StringValue(v.to_owned()))
}

fn i(v: i64) -> Option<Value> {
    Some(Value::IntValue(v))
}

#[tokio::test]
async fn one_trace_spans_both_hops_with_client_and_server_spans_linked() {
    let (collector, received) = http_collector().await;
    let p = pair(collector, OtlpProtocol::HttpProtobuf).await;
    let c = proxied(&p.a);

    // 1. The app sent no context: the caller's sidecar starts the trace.
    let res = c.get("http://stock/x?q=1").send().await.unwrap();
    assert_eq!(res.status(), 200);
    let at_app = p.seen.lock().unwrap()[0].clone();
    let (trace, app_parent, flags) = ids(&at_app);
    assert_eq!(flags, "01", "new traces are sampled");
    let spans = spans_of(&received, &trace, 2).await;
    let (svc, client_span) = spans
        .iter()
        .find(|(_, s)| s.kind == SpanKind::Client as i32)
        .expect("a client span");
    let (svc_b, server_span) = spans
        .iter()
        .find(|(_, s)| s.kind == SpanKind::Server as i32)
        .expect("a server span");
    assert_eq!((svc.as_str(), svc_b.as_str()), ("web", "stock"));
    assert!(client_span.parent_span_id.is_empty(), "the root span");
    assert_eq!(
        server_span.parent_span_id, client_span.span_id,
        "the callee's server span is the child of the caller's client span"
    );
    assert_eq!(
        app_parent,
        hex(&server_span.span_id),
        "the app's parent is the server span"
    );
    assert_eq!(attr(client_span, "http.request.method"), s("GET"));
    assert_eq!(attr(client_span, "url.path"), s("/x"));
    assert_eq!(attr(client_span, "http.response.status_code"), i(200));
    assert_eq!(attr(client_span, "server.address"), s("stock"));
    assert_eq!(attr(client_span, "ieum.dst_service"), s("stock"));
    assert_eq!(attr(client_span, "ieum.route"), s("default"));
    assert_eq!(attr(client_span, "ieum.retry.attempts"), i(1));
    assert_eq!(attr(server_span, "ieum.dst_service"), s("stock"));
    assert_eq!(attr(server_span, "http.response.status_code"), i(200));
    assert!(client_span.start_time_unix_nano <= server_span.start_time_unix_nano);
    assert!(client_span.end_time_unix_nano >= client_span.start_time_unix_nano);

    // 2. The app sent its own context: the trace goes on under the app's span.
    let app_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let app_span = "00f067aa0ba902b7";
    let res = c
        .get("http://stock/y")
        .header("traceparent", format!("00-{app_trace}-{app_span}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(ids(&p.seen.lock().unwrap()[1]).0, app_trace);
    let spans = spans_of(&received, app_trace, 2).await;
    let (_, client_span) = spans
        .iter()
        .find(|(_, s)| s.kind == SpanKind::Client as i32)
        .unwrap();
    assert_eq!(hex(&client_span.parent_span_id), app_span);

    // 3. Not sampled: the context still travels, but no span is recorded.
    let quiet = "0af7651916cd43dd8448eb211c80319c";
    c.get("http://stock/z")
        .header("traceparent", format!("00-{quiet}-b7ad6b7169203331-00"))
        .send()
        .await
        .unwrap();
    let (t, _, flags) = ids(&p.seen.lock().unwrap()[2]);
    assert_eq!((t.as_str(), flags.as_str()), (quiet, "00"));

    // 4. A retried call: one client span with the attempts, a server span per attempt.
    p.server
        .apply("apiVersion: ieum.dev/v1\nkind: ResiliencePolicy\nmetadata: {name: stock}\nspec: {targetRef: {kind: Service, name: stock}, retry: {codes: [503], attempts: 2, backoff: 10ms}}\n")
        .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, text) = admin(&p.a, "/config").await;
        if text.contains("ResiliencePolicy/stock@") {
            break;
        }
        assert!(Instant::now() < deadline, "the policy never took effect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let res = c.get("http://stock/flaky").send().await.unwrap();
    assert_eq!(res.status(), 200);
    let seen = p.seen.lock().unwrap().clone();
    let (trace, _, _) = ids(&seen[seen.len() - 1]);
    let spans = spans_of(&received, &trace, 3).await;
    let client_span = spans
        .iter()
        .find(|(_, s)| s.kind == SpanKind::Client as i32)
        .map(|(_, s)| s)
        .unwrap();
    assert_eq!(attr(client_span, "ieum.retry.attempts"), i(2));
    let statuses: Vec<_> = spans
        .iter()
        .filter(|(_, s)| s.kind == SpanKind::Server as i32)
        .inspect(|(_, s)| assert_eq!(s.parent_span_id, client_span.span_id))
        .map(|(_, s)| attr(s, "http.response.status_code"))
        .collect();
    assert_eq!(statuses.len(), 2, "{statuses:?}");
    assert!(statuses.contains(&i(503)) && statuses.contains(&i(200)));

    // Nothing was ever recorded for the unsampled trace; the export is counted.
    assert!(
        received
            .lock()
            .unwrap()
            .iter()
            .all(|(_, s)| hex(&s.trace_id) != quiet)
    );
    let (_, metrics) = admin(&p.a, "/metrics").await;
    let exported: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ieum_trace_spans_exported_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(exported >= 3, "{metrics}");
}

#[tokio::test]
async fn spans_go_over_grpc_when_asked() {
    let (collector, received) = grpc_collector().await;
    let p = pair(collector, OtlpProtocol::Grpc).await;
    let res = proxied(&p.a).get("http://stock/g").send().await.unwrap();
    assert_eq!(res.status(), 200);
    let (trace, _, _) = ids(&p.seen.lock().unwrap()[0]);
    let spans = spans_of(&received, &trace, 2).await;
    let services: Vec<&str> = spans.iter().map(|(s, _)| s.as_str()).collect();
    assert!(services.contains(&"web") && services.contains(&"stock"));
}

#[tokio::test]
async fn a_collector_that_never_answers_does_not_slow_requests() {
    // Accepts connections and never answers.
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = hole.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hole.accept().await {
            held.push(s);
        }
    });
    let mut config = otlp(addr, OtlpProtocol::HttpProtobuf, "web");
    config.timeout = Duration::from_millis(300);
    let server = Server::start().await;
    let stock = app(|_req| async { reply(200, "ok") }).await;
    let b = sidecar(client(&server, "stock", &[]), "stock", stock, None).await;
    server
        .register("stock", "stock-1", b.inbound_addr(), None)
        .await;
    let client_a = client(&server, "web", &["stock"]);
    until(&client_a, "stock's endpoint", |s| s.up("stock").len() == 1).await;
    let a = sidecar_with(client_a, "web", "127.0.0.1:9".parse().unwrap(), |c| {
        c.otlp = Some(config);
    })
    .await;
    let c = proxied(&a);
    let start = Instant::now();
    for _ in 0..50 {
        assert_eq!(c.get("http://stock/").send().await.unwrap().status(), 200);
    }
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "50 calls took {:?}",
        start.elapsed()
    );
    // The batch is lost and counted, not retried forever.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, text) = admin(&a, "/metrics").await;
        if text.contains("ieum_trace_spans_failed_total 50") {
            break;
        }
        assert!(Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_event_is_traced_from_the_publish_through_the_broker_to_the_app() {
    let (collector, received) = http_collector().await;
    let server = Server::start().await;
    let bus = format!("bus-{:08x}", rand::random::<u32>());
    server
        .apply(&format!(
            "apiVersion: ieum.dev/v1\nkind: PubSub\nmetadata: {{name: {bus}}}\nspec: {{type: memory}}\n---\n\
             apiVersion: ieum.dev/v1\nkind: Subscription\nmetadata: {{name: billing-orders}}\n\
             spec: {{pubsub: {bus}, topic: orders.placed, service: billing, route: /events}}\n"
        ))
        .await;
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let record = seen.clone();
    let app_addr = app(move |req: http::Request<hyper::body::Incoming>| {
        let tp = req
            .headers()
            .get("traceparent")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        record.lock().unwrap().push(tp);
        async { reply(200, "") }
    })
    .await;
    let c = client(&server, "billing", &[]);
    until(&c, "the subscription", |snap| {
        snap.resources.contains_key("Subscription/billing-orders")
    })
    .await;
    let billing = sidecar_with(c, "billing", app_addr, |c| {
        c.otlp = Some(otlp(collector, OtlpProtocol::HttpProtobuf, "billing"));
    })
    .await;
    billing
        .start_subscriptions(ieum_proxy::BridgeOptions {
            consumer: "billing-1".into(),
            ask_app: false,
        })
        .await;
    billing
        .subscriptions_ready(Duration::from_secs(10))
        .await
        .unwrap();
    let c = client(&server, "orders", &[]);
    let key = format!("PubSub/{bus}");
    until(&c, "the PubSub", |snap| snap.resources.contains_key(&key)).await;
    let orders = sidecar_with(c, "orders", "127.0.0.1:9".parse().unwrap(), |c| {
        c.otlp = Some(otlp(collector, OtlpProtocol::HttpProtobuf, "orders"));
    })
    .await;

    let app_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let app_span = "00f067aa0ba902b7";
    let res = direct()
        .post(format!(
            "http://{}/v1/publish/{bus}/orders.placed",
            orders.outbound_addr()
        ))
        .header("traceparent", format!("00-{app_trace}-{app_span}-01"))
        .header("ce-correlationid", "order-7")
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no delivery");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let at_app = seen.lock().unwrap()[0].clone();
    let (trace, app_parent, _) = ids(&at_app);
    assert_eq!(trace, app_trace, "the trace crosses the broker");

    // The outbound hop (client), the publish (producer), the delivery (consumer).
    let spans = spans_of(&received, app_trace, 3).await;
    let find = |kind: SpanKind| {
        spans
            .iter()
            .find(|(_, span)| span.kind == kind as i32)
            .unwrap_or_else(|| panic!("a {kind:?} span in {spans:#?}"))
    };
    let (_, hop) = find(SpanKind::Client);
    let (svc_p, producer) = find(SpanKind::Producer);
    let (svc_c, consumer) = find(SpanKind::Consumer);
    assert_eq!((svc_p.as_str(), svc_c.as_str()), ("orders", "billing"));
    assert_eq!(hex(&hop.parent_span_id), app_span);
    assert_eq!(
        producer.parent_span_id, hop.span_id,
        "publish under the hop"
    );
    assert_eq!(
        consumer.parent_span_id, producer.span_id,
        "the delivery is the child of the publish, through the event's traceparent"
    );
    assert_eq!(app_parent, hex(&consumer.span_id), "the app's parent");
    assert_eq!(producer.name, "send orders.placed");
    assert_eq!(consumer.name, "process orders.placed");
    assert_eq!(attr(producer, "messaging.operation.type"), s("send"));
    assert_eq!(
        attr(consumer, "messaging.destination.name"),
        s("orders.placed")
    );
    assert_eq!(
        attr(consumer, "messaging.consumer.group.name"),
        s("billing")
    );
    assert_eq!(attr(consumer, "ieum.delivery.attempt"), i(1));
    assert_eq!(attr(consumer, "ieum.correlation_id"), s("order-7"));
    assert_eq!(attr(consumer, "ieum.pubsub"), s(&bus));
    assert_eq!(
        attr(producer, "messaging.message.id"),
        attr(consumer, "messaging.message.id")
    );

    // Both sidecars keep a record of the correlated event for their next report.
    let (published, _) = orders.take_event_records();
    assert_eq!(published.len(), 1, "{published:#?}");
    assert_eq!(published[0].correlation_id.as_deref(), Some("order-7"));
    assert_eq!(published[0].trace_id.as_deref(), Some(app_trace));
    assert_eq!(published[0].direction, "publish");
    let (consumed, _) = billing.take_event_records();
    assert_eq!(consumed.len(), 1, "{consumed:#?}");
    assert_eq!(consumed[0].id, published[0].id);
    assert_eq!(
        consumed[0].outcome,
        ieum_model::telemetry::EventOutcome::Delivered
    );
    server.stop().await;
}
