//! The sidecar bridge over real sockets: a control plane in process, sidecars of two
//! services, test apps that publish through their sidecar and record what is delivered.
//! Every test runs on the in-memory broker; the core ones also on NATS JetStream and Kafka
//! when `IEUM_TEST_NATS_URL` / `IEUM_TEST_KAFKA_URL` are set (and print why they skip them
//! otherwise).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{HeaderMap, Response};
use http_body_util::{BodyExt, Full};
use ieum_proxy::{BridgeOptions, Sidecar};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(15);
const TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A name no other test (or earlier run against a real broker) uses.
fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

/// The brokers a test runs on: `memory` always, NATS and Kafka when their URLs are set.
fn brokers() -> Vec<(&'static str, String)> {
    let mut out = vec![("memory", "type: memory\n".to_owned())];
    match std::env::var("IEUM_TEST_NATS_URL") {
        Ok(url) if !url.is_empty() => out.push((
            "nats",
            format!("type: nats-jetstream\nurl: {url}\nredeliverAfter: 2s\n"),
        )),
        _ => eprintln!("skipped for nats-jetstream: set IEUM_TEST_NATS_URL to run it"),
    }
    match std::env::var("IEUM_TEST_KAFKA_URL") {
        Ok(url) if !url.is_empty() => out.push((
            "kafka",
            format!("type: kafka\nurl: '{url}'\nredeliverAfter: 2s\n"),
        )),
        _ => eprintln!("skipped for kafka: set IEUM_TEST_KAFKA_URL to run it"),
    }
    out
}

/// A `PubSub` document.
fn pubsub(name: &str, spec: &str) -> String {
    let spec: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    format!("apiVersion: ieum.dev/v1\nkind: PubSub\nmetadata: {{name: {name}}}\nspec:\n{spec}")
}

/// A `Subscription` document; `extra` adds spec lines.
fn subscription(
    name: &str,
    pubsub: &str,
    topic: &str,
    service: &str,
    route: &str,
    extra: &str,
) -> String {
    let extra: String = extra.lines().map(|l| format!("  {l}\n")).collect();
    format!(
        "---\napiVersion: ieum.dev/v1\nkind: Subscription\nmetadata: {{name: {name}}}\nspec:\n  pubsub: {pubsub}\n  topic: {topic}\n  service: {service}\n  route: {route}\n{extra}"
    )
}

/// One request the app received.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Seen {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map_or("", |v| v.to_str().unwrap_or(""))
    }

    /// A `ce-` attribute, decoded as the HTTP binding says (values are percent-encoded).
    fn ce(&self, name: &str) -> String {
        ieum_bridge::cloudevents::binding::percent_decode(self.header(&format!("ce-{name}")))
            .unwrap()
    }
}

/// How the recording app answers the `n`th request (0-based) it received.
type Answer = Arc<dyn Fn(&Seen, usize) -> (u16, String) + Send + Sync>;

/// An app that records every request it gets on `rx` and answers with `answer`.
async fn recorder(answer: Answer) -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let count = Arc::new(AtomicUsize::new(0));
    let addr = app(move |req: http::Request<hyper::body::Incoming>| {
        let tx = tx.clone();
        let answer = answer.clone();
        let count = count.clone();
        async move {
            let path = req.uri().path().to_owned();
            let (parts, body) = req.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            let seen = Seen {
                path,
                headers: parts.headers,
                body,
            };
            let n = count.fetch_add(1, Ordering::SeqCst);
            let (status, text) = answer(&seen, n);
            let _ = tx.send(seen);
            reply(status, text)
        }
    })
    .await;
    (addr, rx)
}

fn always(status: u16, body: &'static str) -> Answer {
    Arc::new(move |_, _| (status, body.to_owned()))
}

/// The next request the app got, within `WAIT`.
async fn next(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("nothing delivered in time")
        .expect("the app is gone")
}

/// Asserts nothing more arrives for a while.
async fn nothing_more(rx: &mut mpsc::UnboundedReceiver<Seen>, what: &str) {
    if let Ok(Some(seen)) = tokio::time::timeout(Duration::from_millis(700), rx.recv()).await {
        panic!("{what}, got {seen:?}");
    }
}

/// A sidecar for `service` whose subscriptions are active, once the snapshot holds every
/// resource in `keys`.
async fn subscriber(
    server: &Server,
    service: &str,
    app_addr: SocketAddr,
    keys: &[&str],
) -> Sidecar {
    let c = client(server, service, &[]);
    let keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
    until(&c, "the bridge resources", |s| {
        keys.iter().all(|k| s.resources.contains_key(k))
    })
    .await;
    let sidecar = sidecar(c, service, app_addr, None).await;
    let start = sidecar
        .start_subscriptions(BridgeOptions {
            consumer: format!("{service}-1"),
            ask_app: false,
        })
        .await;
    assert_eq!(start.declared_by_app, 0);
    sidecar.subscriptions_ready(WAIT).await.unwrap();
    sidecar
}

/// A sidecar for a publishing service without an app, once it knows `pubsub`.
async fn publisher(server: &Server, service: &str, pubsub: &str) -> Sidecar {
    let c = client(server, service, &[]);
    let key = format!("PubSub/{pubsub}");
    until(&c, "the PubSub", |s| s.resources.contains_key(&key)).await;
    sidecar(c, service, "127.0.0.1:9".parse().unwrap(), None).await
}

/// POSTs to the sidecar's own API.
async fn post(
    sidecar: &Sidecar,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    let mut req = direct()
        .post(format!("http://{}{path}", sidecar.outbound_addr()))
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

/// The value of one metric line of `sidecar`'s `/metrics` (0 when absent).
async fn metric(sidecar: &Sidecar, name: &str, pubsub: &str, topic: &str, direction: &str) -> u64 {
    let (_, text) = admin(sidecar, "/metrics").await;
    let prefix =
        format!("{name}{{pubsub=\"{pubsub}\",topic=\"{topic}\",direction=\"{direction}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.parse().unwrap())
}

/// Deliveries in progress at the app, per key and in all, with their peaks.
#[derive(Debug, Default)]
struct Busy {
    per_key: std::collections::HashMap<String, usize>,
    max_per_key: usize,
    now: usize,
    max_now: usize,
}

/// The trace id of a `traceparent`.
fn trace_id(tp: &str) -> &str {
    tp.split('-').nth(1).unwrap_or("")
}

#[tokio::test]
async fn an_event_published_by_one_service_is_delivered_to_another() {
    for (broker, spec) in brokers() {
        let server = Server::start().await;
        let (bus, topic) = (unique("bus"), unique("orders"));
        server
            .apply(
                &(pubsub(&bus, &spec)
                    + &subscription(
                        "billing-orders",
                        &bus,
                        &topic,
                        "billing",
                        "/events/orders",
                        "",
                    )),
            )
            .await;
        let (app_addr, mut rx) = recorder(always(200, "")).await;
        let billing = subscriber(
            &server,
            "billing",
            app_addr,
            &["Subscription/billing-orders"],
        )
        .await;
        let orders = publisher(&server, "orders", &bus).await;

        let res = post(
            &orders,
            &format!("/v1/publish/{bus}/{topic}"),
            &[
                ("content-type", "application/json"),
                ("ce-type", "com.example.order.created"),
                ("traceparent", TRACE),
            ],
            r#"{"id":42}"#,
        )
        .await;
        assert_eq!(res.status(), 204, "{broker}: {}", res.text().await.unwrap());
        let id = res.headers()["ieum-event-id"].to_str().unwrap().to_owned();

        let seen = next(&mut rx).await;
        assert_eq!(seen.path, "/events/orders", "{broker}");
        assert_eq!(seen.body, r#"{"id":42}"#, "{broker}");
        assert_eq!(seen.header("content-type"), "application/json");
        assert_eq!(seen.header("ce-specversion"), "1.0");
        assert_eq!(seen.header("ce-id"), id);
        assert_eq!(seen.header("ce-source"), "orders");
        assert_eq!(seen.header("ce-type"), "com.example.order.created");
        assert!(!seen.header("ce-time").is_empty());
        assert_eq!(seen.header("ieum-attempt"), "1");
        assert_eq!(seen.header("ieum-topic"), topic);
        assert_eq!(
            seen.header("ieum-subscription"),
            "Subscription/billing-orders"
        );
        // The trace continues: same trace id, a span of its own.
        let tp = seen.header("traceparent");
        assert_eq!(trace_id(tp), trace_id(TRACE), "{broker}: {tp}");
        assert_ne!(tp, TRACE);
        nothing_more(&mut rx, "one publish is one delivery").await;

        assert_eq!(
            metric(
                &orders,
                "ieum_events_published_total",
                &bus,
                &topic,
                "outbound"
            )
            .await,
            1
        );
        assert_eq!(
            metric(
                &billing,
                "ieum_events_delivered_total",
                &bus,
                &topic,
                "inbound"
            )
            .await,
            1
        );
        let traffic = billing.topic_traffic();
        assert!(traffic.iter().any(|t| t.topic == topic && t.delivered == 1));
        server.stop().await;
    }
}

#[tokio::test]
async fn a_cloudevent_passes_through_and_structured_mode_delivers_json() {
    let server = Server::start().await;
    let (bus, topic) = (unique("bus"), unique("orders"));
    server
        .apply(
            &(pubsub(&bus, "type: memory\n")
                + &subscription(
                    "s",
                    &bus,
                    &topic,
                    "billing",
                    "/e",
                    "cloudEvents: {mode: structured}",
                )),
        )
        .await;
    let (app_addr, mut rx) = recorder(always(204, "")).await;
    let _billing = subscriber(&server, "billing", app_addr, &["Subscription/s"]).await;
    let orders = publisher(&server, "orders", &bus).await;

    let event = r#"{"specversion":"1.0","id":"evt-1","source":"/shop","type":"x.y","subject":"order-7","correlationid":"c-9","datacontenttype":"application/json","data":{"n":1}}"#;
    let res = post(
        &orders,
        &format!("/v1/publish/{bus}/{topic}"),
        &[("content-type", "application/cloudevents+json")],
        event,
    )
    .await;
    assert_eq!(res.status(), 204);
    let seen = next(&mut rx).await;
    assert_eq!(seen.header("content-type"), "application/cloudevents+json");
    let got: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(got["id"], "evt-1");
    assert_eq!(got["source"], "/shop");
    assert_eq!(got["subject"], "order-7");
    assert_eq!(got["correlationid"], "c-9");
    assert_eq!(got["data"], serde_json::json!({"n": 1}));
    // The publisher's hop was added as the trace context.
    assert_eq!(got["traceparent"].as_str().unwrap().len(), 55);

    // A CloudEvent that breaks the spec is refused, not wrapped.
    let res = post(
        &orders,
        &format!("/v1/publish/{bus}/{topic}"),
        &[("ce-specversion", "1.0"), ("ce-type", "x")],
        "data",
    )
    .await;
    assert_eq!(res.status(), 400);
    let text = res.text().await.unwrap();
    assert!(text.contains("`id` is missing"), "{text}");
    nothing_more(&mut rx, "a refused event is not delivered").await;
    server.stop().await;
}

#[tokio::test]
async fn retry_and_5xx_redeliver_with_the_attempt_count() {
    for (broker, spec) in brokers() {
        let server = Server::start().await;
        let (bus, topic) = (unique("bus"), unique("orders"));
        server
            .apply(
                &(pubsub(&bus, &spec)
                    + &subscription(
                        "s",
                        &bus,
                        &topic,
                        "billing",
                        "/e",
                        "retry: {attempts: 3, backoff: 10ms, maxBackoff: 50ms}",
                    )),
            )
            .await;
        let answer: Answer = Arc::new(|_, n| match n {
            0 => (200, r#"{"status":"RETRY"}"#.to_owned()),
            1 => (503, "busy".to_owned()),
            _ => (200, r#"{"status":"SUCCESS"}"#.to_owned()),
        });
        let (app_addr, mut rx) = recorder(answer).await;
        let billing = subscriber(&server, "billing", app_addr, &["Subscription/s"]).await;
        let orders = publisher(&server, "orders", &bus).await;
        let res = post(&orders, &format!("/v1/publish/{bus}/{topic}"), &[], "hello").await;
        assert_eq!(res.status(), 204);

        let mut ids = Vec::new();
        for attempt in 1..=3 {
            let seen = next(&mut rx).await;
            assert_eq!(seen.header("ieum-attempt"), attempt.to_string(), "{broker}");
            assert_eq!(seen.body, "hello");
            ids.push(seen.header("ce-id").to_owned());
        }
        assert!(
            ids.iter().all(|i| *i == ids[0]),
            "{broker}: the same event, {ids:?}"
        );
        nothing_more(&mut rx, "acknowledged after the success").await;
        assert_eq!(
            metric(
                &billing,
                "ieum_events_retried_total",
                &bus,
                &topic,
                "inbound"
            )
            .await,
            2
        );
        assert_eq!(
            metric(
                &billing,
                "ieum_events_delivered_total",
                &bus,
                &topic,
                "inbound"
            )
            .await,
            1
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn after_the_retry_limit_an_event_is_dead_lettered_with_reason_and_attempts() {
    for (broker, spec) in brokers() {
        let server = Server::start().await;
        let (bus, topic) = (unique("bus"), unique("orders"));
        let dead = format!("{topic}-dead");
        server
            .apply(&(pubsub(&bus, &spec)
                + &subscription("s", &bus, &topic, "billing", "/e", &format!("deadLetterTopic: {dead}\nretry: {{attempts: 2, backoff: 10ms, maxBackoff: 20ms}}"))
                + &subscription("d", &bus, &dead, "billing", "/dead", "")))
            .await;
        let answer: Answer = Arc::new(|seen, _| {
            if seen.path == "/dead" {
                (200, String::new())
            } else {
                (500, "broken".to_owned())
            }
        });
        let (app_addr, mut rx) = recorder(answer).await;
        let billing = subscriber(
            &server,
            "billing",
            app_addr,
            &["Subscription/s", "Subscription/d"],
        )
        .await;
        let orders = publisher(&server, "orders", &bus).await;
        let res = post(&orders, &format!("/v1/publish/{bus}/{topic}"), &[], "x").await;
        assert_eq!(res.status(), 204);

        for attempt in 1..=3 {
            let seen = next(&mut rx).await;
            assert_eq!(seen.path, "/e", "{broker}");
            assert_eq!(seen.header("ieum-attempt"), attempt.to_string());
        }
        let dl = next(&mut rx).await;
        assert_eq!(dl.path, "/dead", "{broker}");
        assert_eq!(dl.body, "x");
        assert_eq!(dl.header("ce-deadlettertopic"), topic);
        assert_eq!(dl.header("ce-deadletterattempts"), "3");
        let reason = dl.ce("deadletterreason");
        assert!(
            reason.contains("500") && reason.contains("3 attempts"),
            "{reason}"
        );
        nothing_more(&mut rx, "dead-lettered means settled").await;
        assert_eq!(
            metric(
                &billing,
                "ieum_events_dead_lettered_total",
                &bus,
                &topic,
                "inbound"
            )
            .await,
            1
        );
        assert_eq!(
            metric(
                &billing,
                "ieum_events_retried_total",
                &bus,
                &topic,
                "inbound"
            )
            .await,
            2
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn drop_dead_letters_when_a_topic_is_set_and_discards_otherwise() {
    let server = Server::start().await;
    let bus = unique("bus");
    let (with, without) = (unique("with"), unique("without"));
    let dead = format!("{with}-dead");
    server
        .apply(
            &(pubsub(&bus, "type: memory\n")
                + &subscription(
                    "a",
                    &bus,
                    &with,
                    "billing",
                    "/a",
                    &format!("deadLetterTopic: {dead}"),
                )
                + &subscription("b", &bus, &without, "billing", "/b", "")
                + &subscription("d", &bus, &dead, "billing", "/dead", "")),
        )
        .await;
    let answer: Answer = Arc::new(|seen, _| {
        if seen.path == "/dead" {
            (200, String::new())
        } else {
            (200, r#"{"status":"DROP"}"#.to_owned())
        }
    });
    let (app_addr, mut rx) = recorder(answer).await;
    let billing = subscriber(
        &server,
        "billing",
        app_addr,
        &["Subscription/a", "Subscription/b", "Subscription/d"],
    )
    .await;
    let orders = publisher(&server, "orders", &bus).await;

    assert_eq!(
        post(&orders, &format!("/v1/publish/{bus}/{with}"), &[], "1")
            .await
            .status(),
        204
    );
    assert_eq!(next(&mut rx).await.path, "/a");
    let dl = next(&mut rx).await;
    assert_eq!(dl.path, "/dead");
    assert_eq!(dl.ce("deadletterreason"), "the app answered DROP");
    assert_eq!(dl.header("ce-deadletterattempts"), "1");

    assert_eq!(
        post(&orders, &format!("/v1/publish/{bus}/{without}"), &[], "2")
            .await
            .status(),
        204
    );
    assert_eq!(next(&mut rx).await.path, "/b");
    nothing_more(&mut rx, "a dropped event is not delivered again").await;
    assert_eq!(
        metric(
            &billing,
            "ieum_events_dead_lettered_total",
            &bus,
            &with,
            "inbound"
        )
        .await,
        1
    );
    assert_eq!(
        metric(
            &billing,
            "ieum_events_dropped_total",
            &bus,
            &without,
            "inbound"
        )
        .await,
        1
    );
    server.stop().await;
}

#[tokio::test]
async fn events_of_one_key_are_delivered_one_at_a_time_in_order() {
    for (broker, spec) in brokers() {
        let server = Server::start().await;
        let (bus, topic) = (unique("bus"), unique("orders"));
        server
            .apply(
                &(pubsub(&bus, &spec)
                    + &subscription("s", &bus, &topic, "billing", "/e", "maxInFlight: 8")),
            )
            .await;
        // The app is slow and counts deliveries in progress, per key and in all.
        let busy: Arc<Mutex<Busy>> = Arc::default();
        let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let (b, s) = (busy.clone(), seen.clone());
        let app_addr = app(move |req: http::Request<hyper::body::Incoming>| {
            let (busy, seen) = (b.clone(), s.clone());
            async move {
                let key = req.headers()["ce-partitionkey"]
                    .to_str()
                    .unwrap()
                    .to_owned();
                let body = req.into_body().collect().await.unwrap().to_bytes();
                {
                    let mut g = busy.lock().unwrap();
                    let per_key = g.per_key.entry(key.clone()).or_default();
                    *per_key += 1;
                    let pk = *per_key;
                    g.max_per_key = g.max_per_key.max(pk);
                    g.now += 1;
                    g.max_now = g.max_now.max(g.now);
                }
                tokio::time::sleep(Duration::from_millis(40)).await;
                seen.lock()
                    .unwrap()
                    .push((key.clone(), String::from_utf8(body.to_vec()).unwrap()));
                {
                    let mut g = busy.lock().unwrap();
                    *g.per_key.get_mut(&key).unwrap() -= 1;
                    g.now -= 1;
                }
                reply(200, "")
            }
        })
        .await;
        let _billing = subscriber(&server, "billing", app_addr, &["Subscription/s"]).await;
        let orders = publisher(&server, "orders", &bus).await;
        for i in 0..6 {
            for key in ["k1", "k2", "k3"] {
                let res = post(
                    &orders,
                    &format!("/v1/publish/{bus}/{topic}"),
                    &[("ieum-ordering-key", key)],
                    i.to_string(),
                )
                .await;
                assert_eq!(res.status(), 204);
            }
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        while seen.lock().unwrap().len() < 18 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{broker}: not all delivered"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let seen = seen.lock().unwrap().clone();
        for key in ["k1", "k2", "k3"] {
            let order: Vec<&str> = seen
                .iter()
                .filter(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
                .collect();
            assert_eq!(order, ["0", "1", "2", "3", "4", "5"], "{broker}: {key}");
        }
        let (max_per_key, max_now) = {
            let g = busy.lock().unwrap();
            (g.max_per_key, g.max_now)
        };
        assert_eq!(
            max_per_key, 1,
            "{broker}: one key was delivered twice at once"
        );
        assert!(
            max_now >= 2,
            "{broker}: different keys should go concurrently (max {max_now})"
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn the_app_declares_subscriptions_at_start() {
    let server = Server::start().await;
    let (bus, topic) = (unique("bus"), unique("orders"));
    server.apply(&pubsub(&bus, "type: memory\n")).await;
    let declared = format!(
        r#"[{{"pubsub":"{bus}","topic":"{topic}","route":"/declared","retry":{{"attempts":0}}}},{{"pubsub":"{bus}","topic":"bad topic","route":"/x"}}]"#
    );
    let answer: Answer = Arc::new(move |seen, _| {
        if seen.path == "/ieum/subscriptions" {
            (200, declared.clone())
        } else {
            (200, String::new())
        }
    });
    let (app_addr, mut rx) = recorder(answer).await;
    let c = client(&server, "billing", &[]);
    let key = format!("PubSub/{bus}");
    until(&c, "the PubSub", |s| s.resources.contains_key(&key)).await;
    let billing = sidecar(c, "billing", app_addr, None).await;
    let start = billing
        .start_subscriptions(BridgeOptions {
            consumer: "billing-1".into(),
            ask_app: true,
        })
        .await;
    assert_eq!(start.declared_by_app, 1, "{:?}", start.warnings);
    assert_eq!(start.warnings.len(), 1);
    assert!(start.warnings[0].contains("topic"), "{:?}", start.warnings);
    billing.subscriptions_ready(WAIT).await.unwrap();
    assert_eq!(next(&mut rx).await.path, "/ieum/subscriptions");
    let (_, subs) = admin(&billing, "/subscriptions").await;
    assert!(
        subs.contains("\"origin\": \"app\"") && subs.contains("\"state\": \"active\""),
        "{subs}"
    );

    let orders = publisher(&server, "orders", &bus).await;
    assert_eq!(
        post(&orders, &format!("/v1/publish/{bus}/{topic}"), &[], "hi")
            .await
            .status(),
        204
    );
    let seen = next(&mut rx).await;
    assert_eq!(seen.path, "/declared");
    assert_eq!(seen.header("ieum-subscription"), "app");

    // An app that declares nothing (404) gets no subscription, and a warning.
    let (plain, _rx) = recorder(always(404, "")).await;
    let other = sidecar(client(&server, "other", &[]), "other", plain, None).await;
    let start = other
        .start_subscriptions(BridgeOptions {
            consumer: "other-1".into(),
            ask_app: true,
        })
        .await;
    assert_eq!(start.declared_by_app, 0);
    assert!(start.warnings[0].contains("404"), "{:?}", start.warnings);
    other.subscriptions_ready(Duration::ZERO).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn subscriptions_follow_resources_without_a_restart() {
    let server = Server::start().await;
    let (bus, topic) = (unique("bus"), unique("orders"));
    server.apply(&pubsub(&bus, "type: memory\n")).await;
    let (app_addr, mut rx) = recorder(always(200, "")).await;
    let billing = subscriber(&server, "billing", app_addr, &[]).await;
    let orders = publisher(&server, "orders", &bus).await;

    server
        .apply(&subscription("s", &bus, &topic, "billing", "/first", ""))
        .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, subs) = admin(&billing, "/subscriptions").await;
        if subs.contains("/first") && subs.contains("\"active\"") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{subs}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        post(&orders, &format!("/v1/publish/{bus}/{topic}"), &[], "1")
            .await
            .status(),
        204
    );
    assert_eq!(next(&mut rx).await.path, "/first");

    server
        .apply(&subscription("s", &bus, &topic, "billing", "/second", ""))
        .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, subs) = admin(&billing, "/subscriptions").await;
        if subs.contains("/second") && !subs.contains("/first") && subs.contains("\"active\"") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{subs}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        post(&orders, &format!("/v1/publish/{bus}/{topic}"), &[], "2")
            .await
            .status(),
        204
    );
    let seen = next(&mut rx).await;
    assert_eq!((seen.path.as_str(), &seen.body[..]), ("/second", &b"2"[..]));
    server.stop().await;
}

#[tokio::test]
async fn publish_errors_are_clear_and_never_204() {
    let server = Server::start().await;
    // A NATS PubSub nobody listens for: the port was free a moment ago.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (down, topic) = (unique("down"), unique("orders"));
    server
        .apply(
            &(pubsub(
                &down,
                &format!("type: nats-jetstream\nurl: nats://127.0.0.1:{port}\n"),
            ) + &subscription("s", &down, &topic, "orders", "/e", "")),
        )
        .await;
    let c = client(&server, "orders", &[]);
    until(&c, "the resources", |s| {
        s.resources.contains_key("Subscription/s")
    })
    .await;
    let orders = sidecar(c, "orders", "127.0.0.1:9".parse().unwrap(), None).await;
    let res = post(&orders, &format!("/v1/publish/{down}/{topic}"), &[], "x").await;
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "1");
    let text = res.text().await.unwrap();
    assert!(
        text.contains("unreachable") && text.contains(&down),
        "{text}"
    );
    assert_eq!(
        metric(
            &orders,
            "ieum_events_publish_failed_total",
            &down,
            &topic,
            "outbound"
        )
        .await,
        1
    );

    let res = post(&orders, "/v1/publish/nosuch/orders", &[], "x").await;
    assert_eq!(res.status(), 404);
    let text = res.text().await.unwrap();
    assert!(
        text.contains("PubSub `nosuch` is not defined") && text.contains(&down),
        "{text}"
    );

    let res = post(&orders, &format!("/v1/publish/{down}/a..b"), &[], "x").await;
    assert_eq!(res.status(), 400);
    assert!(res.text().await.unwrap().contains("empty part"));

    let res = direct()
        .get(format!(
            "http://{}/v1/publish/{down}/{topic}",
            orders.outbound_addr()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);

    // A subscription to the unreachable broker keeps the sidecar from being ready, and says why.
    let start = orders
        .start_subscriptions(BridgeOptions {
            consumer: "orders-1".into(),
            ask_app: false,
        })
        .await;
    assert_eq!(start.declared_by_app, 0);
    let err = orders
        .subscriptions_ready(Duration::from_millis(1500))
        .await
        .unwrap_err();
    assert!(
        err.contains("Subscription/s") && err.contains("unreachable"),
        "{err}"
    );
    server.stop().await;
}

#[tokio::test]
async fn output_and_input_bindings_carry_raw_payloads() {
    let server = Server::start().await;
    let (bus, topic) = (unique("bus"), unique("invoices"));
    server
        .apply(&format!(
            "{}---\napiVersion: ieum.dev/v1\nkind: Binding\nmetadata: {{name: invoices-out}}\nspec: {{pubsub: {bus}, direction: output, topic: {topic}}}\n---\napiVersion: ieum.dev/v1\nkind: Binding\nmetadata: {{name: invoices-in}}\nspec: {{pubsub: {bus}, direction: input, topic: {topic}, service: billing, route: /invoices}}\n---\napiVersion: ieum.dev/v1\nkind: Binding\nmetadata: {{name: only-billing}}\nspec: {{pubsub: {bus}, direction: output, topic: {topic}, service: billing}}\n",
            pubsub(&bus, "type: memory\ncloudEvents: {mode: structured}\n")
        ))
        .await;
    let (app_addr, mut rx) = recorder(always(200, "")).await;
    let _billing = subscriber(&server, "billing", app_addr, &["Binding/invoices-in"]).await;
    let c = client(&server, "orders", &[]);
    until(&c, "the output binding", |s| {
        s.resources.contains_key("Binding/invoices-out")
    })
    .await;
    let orders = sidecar(c, "orders", "127.0.0.1:9".parse().unwrap(), None).await;

    let res = post(
        &orders,
        "/v1/bindings/invoices-out",
        &[("content-type", "text/csv")],
        "a,b\n1,2\n",
    )
    .await;
    assert_eq!(res.status(), 204, "{}", res.text().await.unwrap());
    let seen = next(&mut rx).await;
    assert_eq!(seen.path, "/invoices");
    assert_eq!(seen.body, "a,b\n1,2\n");
    assert_eq!(seen.header("content-type"), "text/csv");
    assert!(
        seen.headers.get("ce-id").is_none(),
        "raw means no CloudEvents headers"
    );
    assert_eq!(seen.header("ieum-subscription"), "Binding/invoices-in");

    // A binding reserved for another service, or none at all: 404 naming what exists.
    for name in ["only-billing", "nosuch"] {
        let res = post(&orders, &format!("/v1/bindings/{name}"), &[], "x").await;
        assert_eq!(res.status(), 404);
        let text = res.text().await.unwrap();
        assert!(
            text.contains(name) && text.contains("invoices-out"),
            "{text}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn a_drain_stops_fetching_and_finishes_the_delivery_in_flight() {
    let server = Server::start().await;
    let (bus, topic) = (unique("bus"), unique("orders"));
    server
        .apply(
            &(pubsub(&bus, "type: memory\n")
                + &subscription("s", &bus, &topic, "billing", "/e", "")),
        )
        .await;
    let started = Arc::new(tokio::sync::Notify::new());
    let done = Arc::new(AtomicUsize::new(0));
    let (s, d) = (started.clone(), done.clone());
    let app_addr = app(move |_req: http::Request<hyper::body::Incoming>| {
        let (started, done) = (s.clone(), d.clone());
        async move {
            started.notify_one();
            tokio::time::sleep(Duration::from_millis(400)).await;
            done.fetch_add(1, Ordering::SeqCst);
            Response::new(Full::new(Bytes::new()))
        }
    })
    .await;
    let billing = subscriber(&server, "billing", app_addr, &["Subscription/s"]).await;
    let orders = publisher(&server, "orders", &bus).await;
    assert_eq!(
        post(&orders, &format!("/v1/publish/{bus}/{topic}"), &[], "1")
            .await
            .status(),
        204
    );
    tokio::time::timeout(WAIT, started.notified())
        .await
        .unwrap();
    billing.drain(Duration::from_secs(5)).await;
    assert_eq!(
        done.load(Ordering::SeqCst),
        1,
        "the drain waited for the delivery"
    );
    assert_eq!(
        metric(
            &billing,
            "ieum_events_delivered_total",
            &bus,
            &topic,
            "inbound"
        )
        .await,
        1
    );
    // Fetching stopped: a later event stays with the broker.
    assert_eq!(
        post(&orders, &format!("/v1/publish/{bus}/{topic}"), &[], "2")
            .await
            .status(),
        204
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(done.load(Ordering::SeqCst), 1);
    server.stop().await;
}
