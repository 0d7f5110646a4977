//! `memory` PubSubs hosted by the server, through `ieum_bridge`'s hosted client broker over
//! a real socket: the same contract every broker keeps (attributes intact, nack and
//! redelivery, dead letters, a consumer dropped mid-delivery, per-key order), tokens, and
//! what a sidecar sees when the server cannot help.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use ieum_bridge::cloudevents::{
    DEAD_LETTER_ATTEMPTS, DEAD_LETTER_REASON, DEAD_LETTER_TOPIC, PARTITION_KEY,
};
use ieum_bridge::{
    Broker, BrokerError, CloudEvent, ConnectOptions, Delivery, MemoryHost, SubscribeOptions,
    Subscription, connect_with,
};
use ieum_control::{AppState, Auth, router, serve};
use ieum_model::bridge::PubSubSpec;
use ieum_registry::{Options, Registry, SystemClock};
use ieum_store::MemoryStore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const WAIT: Duration = Duration::from_secs(15);

/// `ieum server`'s router on a real socket, with `PubSub/{name}` of type memory.
struct Server {
    url: String,
    stop: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn server(auth: Auth, name: &str) -> Server {
    let registry = Registry::start(
        Arc::new(MemoryStore::new()),
        Arc::new(SystemClock),
        Options::default(),
    )
    .await
    .unwrap();
    let stop = CancellationToken::new();
    // A token presented on loopback is checked too: send it only where it is one.
    let with_token = matches!(auth, Auth::Token(_));
    let app = router(AppState {
        registry,
        auth,
        shutdown: stop.clone(),
    });
    let yaml = format!(
        "apiVersion: ieum.dev/v1\nkind: PubSub\nmetadata: {{name: {name}}}\nspec: {{type: memory, redeliverAfter: 1s}}\n"
    );
    let mut apply =
        axum::http::Request::post("/v1/apply").header("content-type", "application/yaml");
    if with_token {
        apply = apply.header("authorization", "Bearer t");
    }
    let apply = apply.body(axum::body::Body::from(yaml)).unwrap();
    let res = app.clone().oneshot(apply).await.unwrap();
    assert!(
        res.status().is_success(),
        "{:?}",
        res.into_body().collect().await
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let s = stop.clone();
    tokio::spawn(serve(listener, app, async move { s.cancelled().await }));
    Server { url, stop }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &ieum_bridge::cloudevents::new_id()[..8])
}

fn memory_spec() -> PubSubSpec {
    serde_json::from_value(serde_json::json!({"type": "memory", "redeliverAfter": "1s"})).unwrap()
}

async fn hosted(server: &Server, name: &str, token: Option<&str>) -> Arc<dyn Broker> {
    let options = ConnectOptions {
        memory_host: Some(MemoryHost {
            url: server.url.clone(),
            token: token.map(str::to_owned),
            tls: None,
        }),
    };
    connect_with(name, &memory_spec(), &options).await.unwrap()
}

fn event(n: usize) -> CloudEvent {
    CloudEvent::from_json(
        serde_json::json!({
            "specversion": "1.0", "id": format!("e-{n}"), "source": "orders",
            "type": "com.example.order.created", "subject": format!("order {n}"),
            "datacontenttype": "application/json", "data": {"n": n, "note": "café"},
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "correlationid": "checkout-7"
        })
        .to_string()
        .as_bytes(),
    )
    .unwrap()
}

fn options(consumer: &str) -> SubscribeOptions {
    SubscribeOptions {
        consumer: consumer.to_owned(),
        max_in_flight: 16,
        dead_letter_topic: None,
        raw_source: None,
    }
}

async fn next(sub: &mut Subscription) -> Delivery {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("a delivery within 15s")
        .expect("the subscription is open")
}

#[tokio::test]
async fn the_hosted_broker_keeps_the_broker_contract_across_clients() {
    let name = unique("bus");
    let server = server(Auth::Open, &name).await;
    // Two clients, as two sidecars in two processes would have.
    let billing = hosted(&server, &name, None).await;
    let orders = hosted(&server, &name, None).await;
    assert_eq!(billing.kind(), ieum_model::bridge::BrokerType::Memory);

    // Attributes and data arrive unchanged, every group gets every event, ack is final.
    let topic = unique("orders");
    let mut sub = billing
        .subscribe(&topic, "billing", options("billing-1"))
        .await
        .unwrap();
    let mut audit = billing
        .subscribe(&topic, "audit", options("audit-1"))
        .await
        .unwrap();
    let sent = event(1);
    orders.publish(&topic, &sent, None).await.unwrap();
    let got = next(&mut sub).await;
    assert_eq!(got.event, sent);
    assert_eq!((got.attempt, got.topic.as_str()), (1, topic.as_str()));
    got.ack().await.unwrap();
    let other = next(&mut audit).await;
    assert_eq!(other.event.id, sent.id);
    other.ack().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), sub.next())
            .await
            .is_err(),
        "acknowledged: not delivered again"
    );

    // nack: again after the delay, attempt 2.
    orders.publish(&topic, &event(2), None).await.unwrap();
    let first = next(&mut sub).await;
    let start = tokio::time::Instant::now();
    first.nack(Duration::from_millis(300)).await.unwrap();
    let second = next(&mut sub).await;
    assert_eq!((second.event.id.as_str(), second.attempt), ("e-2", 2));
    assert!(start.elapsed() >= Duration::from_millis(250));
    second.ack().await.unwrap();

    // Dropped unsettled (its subscription gone too): the next consumer gets it at once.
    orders.publish(&topic, &event(3), None).await.unwrap();
    let dropped = next(&mut sub).await;
    assert_eq!(dropped.attempt, 1);
    drop(dropped);
    drop(sub);
    let mut restarted = billing
        .subscribe(&topic, "billing", options("billing-2"))
        .await
        .unwrap();
    let again = next(&mut restarted).await;
    assert_eq!((again.event.id.as_str(), again.attempt), ("e-3", 2));
    again.ack().await.unwrap();
    restarted.close().await;
    audit.close().await;
}

#[tokio::test]
async fn dead_letters_and_per_key_order_through_the_server() {
    let name = unique("bus");
    let server = server(Auth::Open, &name).await;
    let b = hosted(&server, &name, None).await;
    let topic = unique("pay");
    let dlt = format!("{topic}-dead");
    let mut dead = b.subscribe(&dlt, "ops", options("ops-1")).await.unwrap();
    let mut opts = options("billing-1");
    opts.dead_letter_topic = Some(dlt.clone());
    let mut sub = b.subscribe(&topic, "billing", opts).await.unwrap();
    b.publish(&topic, &event(5), Some("k1")).await.unwrap();
    let d = next(&mut sub).await;
    d.dead_letter("the app answered 500\nthree times")
        .await
        .unwrap();
    let got = next(&mut dead).await;
    assert_eq!(got.event.id, "e-5");
    assert_eq!(
        got.event.extension(DEAD_LETTER_REASON),
        Some("the app answered 500 three times")
    );
    assert_eq!(got.event.extension(DEAD_LETTER_ATTEMPTS), Some("1"));
    assert_eq!(got.event.extension(DEAD_LETTER_TOPIC), Some(topic.as_str()));
    assert_eq!(got.event.extension(PARTITION_KEY), Some("k1"));
    got.ack().await.unwrap();

    let ordered = unique("ordered");
    let mut sub = b
        .subscribe(&ordered, "billing", options("billing-1"))
        .await
        .unwrap();
    for n in 0..20 {
        let key = if n % 2 == 0 { "even" } else { "odd" };
        b.publish(&ordered, &event(n), Some(key)).await.unwrap();
    }
    let mut seen: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for _ in 0..20 {
        let d = next(&mut sub).await;
        seen.entry(d.ordering_key(PARTITION_KEY).unwrap().to_owned())
            .or_default()
            .push(d.event.id.clone());
        d.ack().await.unwrap();
    }
    let ids = |r: std::iter::StepBy<std::ops::Range<usize>>| {
        r.map(|n| format!("e-{n}")).collect::<Vec<_>>()
    };
    assert_eq!(seen["even"], ids((0..20).step_by(2)));
    assert_eq!(seen["odd"], ids((1..20).step_by(2)));
    sub.close().await;
    dead.close().await;
}

#[tokio::test]
async fn tokens_unknown_pubsubs_and_a_down_server_are_clear_errors() {
    let name = unique("bus");
    let server = server(Auth::Token("t".into()), &name).await;
    let topic = unique("orders");

    // Invalid input never reaches the server.
    let b = hosted(&server, &name, Some("t")).await;
    let err = b.publish("a b", &event(0), None).await.unwrap_err();
    assert!(matches!(err, BrokerError::Topic { .. }), "{err}");
    let mut bad = event(0);
    bad.time = Some("yesterday".into());
    assert!(matches!(
        b.publish(&topic, &bad, None).await.unwrap_err(),
        BrokerError::Event(_)
    ));
    b.publish(&topic, &event(1), None).await.unwrap();

    // Without the token: a configuration error that says what to set.
    let anonymous = hosted(&server, &name, None).await;
    let err = anonymous
        .publish(&topic, &event(1), None)
        .await
        .unwrap_err();
    assert!(matches!(err, BrokerError::Config(_)), "{err}");
    assert!(err.to_string().contains("IEUM_TOKEN"), "{err}");

    // A PubSub the server does not host: refused with the server's reason.
    let other = hosted(&server, "not-applied", Some("t")).await;
    let err = other
        .subscribe(&topic, "billing", options("billing-1"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BrokerError::Rejected { reason, .. } if reason.contains("E3101")),
        "{err}"
    );
    assert!(!err.is_retryable());

    // The server is gone: retryable, so the sidecar answers 503 and tries again.
    let url = server.url.clone();
    drop(server);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let err = b.publish(&topic, &event(2), None).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(
        matches!(&err, BrokerError::Unreachable { url: u, .. } if *u == url),
        "{err}"
    );
}

#[tokio::test]
async fn a_fetch_abandoned_by_its_client_takes_nothing() {
    let name = unique("bus");
    let server = server(Auth::Open, &name).await;
    let b = hosted(&server, &name, None).await;
    let topic = unique("orders");
    // A consumer long-polls, then goes away mid-poll (as a killed sidecar's does).
    let gone = b
        .subscribe(&topic, "billing", options("billing-1"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(gone);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut live = b
        .subscribe(&topic, "billing", options("billing-2"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.publish(&topic, &event(1), None).await.unwrap();
    // The abandoned poll took nothing: the live consumer gets the event first time.
    let got = next(&mut live).await;
    assert_eq!((got.event.id.as_str(), got.attempt), ("e-1", 1));
    got.ack().await.unwrap();
    live.close().await;
}
