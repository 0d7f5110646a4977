//! The hosted PubSub API through the router (no socket): bad input, the lease cycle,
//! expiry and idle release.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use ieum_registry::{Options, Registry, SystemClock};
use ieum_store::MemoryStore;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::{Hosted, SettleAction, SettleRequest, SubscribeRequest};
use crate::{AppState, Auth, router};

/// A PubSub name no other test uses (the in-process hubs are shared by name).
fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &ieum_bridge::cloudevents::new_id()[..8])
}

async fn registry() -> Registry {
    Registry::start(
        Arc::new(MemoryStore::new()),
        Arc::new(SystemClock),
        Options::default(),
    )
    .await
    .unwrap()
}

/// A server (open, or with a token) with `PubSub/bus` of type memory (`redeliverAfter`
/// as given) and `PubSub/nats` of another type.
async fn server(auth: Auth, redeliver_after: &str) -> (Router, String) {
    let registry = registry().await;
    // A token presented on loopback is checked too: send it only where it is one.
    let with_token = matches!(auth, Auth::Token(_));
    let app = router(AppState {
        registry,
        auth,
        shutdown: CancellationToken::new(),
    });
    let bus = unique("bus");
    let yaml = format!(
        "apiVersion: ieum.dev/v1\nkind: PubSub\nmetadata: {{name: {bus}}}\nspec: {{type: memory, redeliverAfter: {redeliver_after}}}\n---\napiVersion: ieum.dev/v1\nkind: PubSub\nmetadata: {{name: nats}}\nspec: {{type: nats-jetstream, url: 'nats://127.0.0.1:4222'}}\n"
    );
    let (status, body) = call(
        &app,
        "POST",
        "/v1/apply",
        &[
            ("content-type", "application/yaml"),
            ("authorization", if with_token { "Bearer t" } else { "" }),
        ][..if with_token { 2 } else { 1 }],
        yaml.into_bytes(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    (app, bus)
}

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    (status, value)
}

async fn post_json(app: &Router, uri: &str, body: &Value) -> (StatusCode, Value) {
    call(
        app,
        "POST",
        uri,
        &[("content-type", "application/json")],
        body.to_string().into_bytes(),
    )
    .await
}

fn event(id: &str) -> Vec<u8> {
    json!({"specversion": "1.0", "id": id, "source": "orders", "type": "order.placed",
        "datacontenttype": "application/json", "data": {"n": 1}, "correlationid": "order-1"})
    .to_string()
    .into_bytes()
}

async fn publish(app: &Router, bus: &str, topic: &str, body: Vec<u8>) -> (StatusCode, Value) {
    call(
        app,
        "POST",
        &format!("/v1/pubsubs/{bus}/topics/{topic}/events"),
        &[("content-type", "application/cloudevents+json")],
        body,
    )
    .await
}

async fn subscribe(app: &Router, bus: &str, topic: &str, extra: Value) -> String {
    let mut body = json!({"group": "billing", "consumer": "billing-1"});
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    let (status, answer) = post_json(
        app,
        &format!("/v1/pubsubs/{bus}/topics/{topic}/subscriptions"),
        &body,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    answer["id"].as_str().unwrap().to_owned()
}

async fn fetch(app: &Router, bus: &str, id: &str, query: &str) -> (StatusCode, Value) {
    call(
        app,
        "POST",
        &format!("/v1/pubsubs/{bus}/subscriptions/{id}/fetch?{query}"),
        &[],
        Vec::new(),
    )
    .await
}

async fn settle(app: &Router, bus: &str, id: &str, lease: &str, body: Value) -> StatusCode {
    post_json(
        app,
        &format!("/v1/pubsubs/{bus}/subscriptions/{id}/leases/{lease}"),
        &body,
    )
    .await
    .0
}

#[tokio::test]
async fn an_unknown_or_non_memory_pubsub_is_a_404_that_says_what_to_apply() {
    let (app, _) = server(Auth::Open, "30s").await;
    let (status, body) = publish(&app, "nope", "orders", event("e-1")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "E3101");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("no PubSub named `nope`") && message.contains("type: memory"),
        "{message}"
    );
    let (status, body) = publish(&app, "nats", "orders", event("e-1")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "E3101");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("of type nats-jetstream, not memory"),
        "{body}"
    );
    let (status, body) = post_json(
        &app,
        "/v1/pubsubs/nope/topics/orders/subscriptions",
        &json!({"group": "billing"}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "E3101");
}

#[tokio::test]
async fn invalid_events_topics_and_requests_are_coded_400s() {
    let (app, bus) = server(Auth::Open, "30s").await;
    // Not JSON, not an object, a missing attribute, a bad time.
    for body in [
        b"not json".to_vec(),
        b"[1]".to_vec(),
        json!({"specversion": "1.0", "source": "s", "type": "t"})
            .to_string()
            .into_bytes(),
        json!({"specversion": "1.0", "id": "1", "source": "s", "type": "t", "time": "yesterday"})
            .to_string()
            .into_bytes(),
    ] {
        let (status, answer) = publish(&app, &bus, "orders", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert_eq!(answer["error"]["code"], "E3102", "{answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains("not a valid CloudEvent"),
            "{answer}"
        );
    }
    let (status, answer) = publish(&app, &bus, "a..b", event("e-1")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        (&answer["error"]["code"], &answer["error"]["field"]),
        (&json!("E3010"), &json!("topic"))
    );
    let subs = format!("/v1/pubsubs/{bus}/topics/orders/subscriptions");
    let (status, answer) = post_json(&app, &subs, &json!({"group": "g", "maxInFlight": 0})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(answer["error"]["field"], "maxInFlight");
    let (status, answer) = post_json(&app, &subs, &json!({"group": "g", "typo": 1})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(answer["error"]["code"], "E1002");
    let (status, answer) = post_json(
        &app,
        &subs,
        &json!({"group": "g", "deadLetterTopic": "orders"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(answer["error"]["code"], "E3014");
    let id = subscribe(&app, &bus, "orders", json!({})).await;
    let (status, answer) = fetch(&app, &bus, &id, "wait=21s").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(answer["error"]["field"], "wait");
    let (status, answer) = fetch(&app, &bus, "no-such-id", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(answer["error"]["code"], "E3103");
    let (status, answer) = post_json(
        &app,
        &format!("/v1/pubsubs/{bus}/subscriptions/{id}/leases/x"),
        &json!({"action": "maybe"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
}

#[tokio::test]
async fn writes_off_loopback_need_the_token() {
    let (app, bus) = server(Auth::Token("t".into()), "30s").await;
    let (status, _) = publish(&app, &bus, "orders", event("e-1")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = call(
        &app,
        "POST",
        &format!("/v1/pubsubs/{bus}/topics/orders/events"),
        &[("authorization", "Bearer t")],
        event("e-1"),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
}

#[tokio::test]
async fn events_are_leased_settled_and_redelivered_with_the_attempt_count() {
    let (app, bus) = server(Auth::Open, "30s").await;
    // Published before any subscription: no group keeps it.
    assert_eq!(
        publish(&app, &bus, "orders", event("before")).await.0,
        StatusCode::NO_CONTENT
    );
    let id = subscribe(&app, &bus, "orders", json!({"maxInFlight": 2})).await;
    let (_, got) = fetch(&app, &bus, &id, "max=10").await;
    assert_eq!(
        got["deliveries"],
        json!([]),
        "nothing from before the subscription"
    );

    for n in 1..=3 {
        let (status, _) = call(
            &app,
            "POST",
            &format!("/v1/pubsubs/{bus}/topics/orders/events"),
            &[("ieum-ordering-key", "customer-9")],
            event(&format!("e-{n}")),
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
    // At most maxInFlight leases at once, in publish order.
    let (status, got) = fetch(&app, &bus, &id, "max=10&wait=1s").await;
    assert_eq!(status, StatusCode::OK, "{got}");
    let list = got["deliveries"].as_array().unwrap().clone();
    assert_eq!(list.len(), 2, "{got}");
    assert_eq!(list[0]["event"]["id"], "e-1");
    assert_eq!(list[0]["event"]["correlationid"], "order-1");
    assert_eq!(list[0]["event"]["partitionkey"], "customer-9");
    assert_eq!(list[0]["event"]["data"], json!({"n": 1}));
    assert_eq!(list[0]["attempt"], 1);
    assert_eq!(list[1]["event"]["id"], "e-2");
    let (_, none) = fetch(&app, &bus, &id, "max=10").await;
    assert_eq!(none["deliveries"], json!([]), "no room left");

    let lease = |i: usize| list[i]["lease"].as_str().unwrap().to_owned();
    assert_eq!(
        settle(&app, &bus, &id, &lease(0), json!({"action": "ack"})).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        settle(&app, &bus, &id, &lease(0), json!({"action": "ack"})).await,
        StatusCode::NOT_FOUND,
        "a lease is settled once"
    );
    assert_eq!(
        settle(
            &app,
            &bus,
            &id,
            &lease(1),
            json!({"action": "nack", "delay": "100ms"})
        )
        .await,
        StatusCode::NO_CONTENT
    );
    let (_, got) = fetch(&app, &bus, &id, "max=10&wait=2s").await;
    let ids: Vec<&str> = got["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["event"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids[0], "e-3");
    let mut seen = ids.len();
    let mut again = got["deliveries"].as_array().unwrap().clone();
    if seen < 2 {
        let (_, more) = fetch(&app, &bus, &id, "max=10&wait=2s").await;
        again.extend(more["deliveries"].as_array().unwrap().iter().cloned());
        seen = again.len();
    }
    assert_eq!(seen, 2, "{again:?}");
    let retried = again.iter().find(|d| d["event"]["id"] == "e-2").unwrap();
    assert_eq!(retried["attempt"], 2, "a nack counts one more attempt");
    // Released: back at once, to the front, one attempt higher.
    let lease = retried["lease"].as_str().unwrap();
    assert_eq!(
        settle(&app, &bus, &id, lease, json!({"action": "release"})).await,
        StatusCode::NO_CONTENT
    );
    let (_, got) = fetch(&app, &bus, &id, "max=1&wait=1s").await;
    assert_eq!(got["deliveries"][0]["event"]["id"], "e-2");
    assert_eq!(got["deliveries"][0]["attempt"], 3);
}

#[tokio::test]
async fn dead_letters_carry_the_reason_to_the_dead_letter_topic() {
    let (app, bus) = server(Auth::Open, "30s").await;
    let dead = subscribe(&app, &bus, "orders-dead", json!({"group": "ops"})).await;
    let id = subscribe(
        &app,
        &bus,
        "orders",
        json!({"deadLetterTopic": "orders-dead"}),
    )
    .await;
    publish(&app, &bus, "orders", event("e-9")).await;
    let (_, got) = fetch(&app, &bus, &id, "wait=1s").await;
    let lease = got["deliveries"][0]["lease"].as_str().unwrap();
    assert_eq!(
        settle(
            &app,
            &bus,
            &id,
            lease,
            json!({"action": "deadLetter", "reason": "the app answered 422"})
        )
        .await,
        StatusCode::NO_CONTENT
    );
    let (_, got) = fetch(&app, &bus, &dead, "wait=1s").await;
    let event = &got["deliveries"][0]["event"];
    assert_eq!(event["id"], "e-9");
    assert_eq!(event["deadletterreason"], "the app answered 422");
    assert_eq!(event["deadlettertopic"], "orders");
    assert_eq!(event["deadletterattempts"], "1");
}

#[tokio::test]
async fn a_lease_not_settled_within_redeliver_after_goes_back() {
    let (app, bus) = server(Auth::Open, "1s").await;
    let first = subscribe(&app, &bus, "orders", json!({"consumer": "billing-1"})).await;
    let second = subscribe(&app, &bus, "orders", json!({"consumer": "billing-2"})).await;
    publish(&app, &bus, "orders", event("e-5")).await;
    let (_, got) = fetch(&app, &bus, &first, "wait=1s").await;
    assert_eq!(got["deliveries"][0]["attempt"], 1);
    let lease = got["deliveries"][0]["lease"].as_str().unwrap().to_owned();
    // billing-1 dies: nothing settles. Its group peer gets the event after 1s.
    let started = tokio::time::Instant::now();
    let (_, got) = fetch(&app, &bus, &second, "wait=5s").await;
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "not before redeliverAfter ({:?})",
        started.elapsed()
    );
    assert_eq!(got["deliveries"][0]["event"]["id"], "e-5");
    assert_eq!(got["deliveries"][0]["attempt"], 2);
    assert_eq!(
        settle(&app, &bus, &first, &lease, json!({"action": "ack"})).await,
        StatusCode::NOT_FOUND,
        "the ran-out lease cannot be settled any more"
    );
}

#[tokio::test]
async fn an_idle_subscription_is_released_with_its_leases() {
    let registry = registry().await;
    let bus = unique("bus");
    let app = router(AppState {
        registry: registry.clone(),
        auth: Auth::Open,
        shutdown: CancellationToken::new(),
    });
    call(
        &app,
        "POST",
        "/v1/apply",
        &[("content-type", "application/yaml")],
        format!("apiVersion: ieum.dev/v1\nkind: PubSub\nmetadata: {{name: {bus}}}\nspec: {{type: memory, redeliverAfter: 1h}}\n").into_bytes(),
    )
    .await;
    let hosted = Arc::new(Hosted::new(
        registry,
        CancellationToken::new(),
        Duration::from_millis(300),
    ));
    let request = |consumer: &str| SubscribeRequest {
        group: "billing".into(),
        consumer: Some(consumer.into()),
        max_in_flight: None,
        dead_letter_topic: None,
    };
    let gone = hosted
        .subscribe(&bus, "orders", request("billing-1"))
        .await
        .unwrap();
    let live = hosted
        .subscribe(&bus, "orders", request("billing-2"))
        .await
        .unwrap();
    let event = ieum_bridge::CloudEvent::from_json(&event("e-7")).unwrap();
    hosted.publish(&bus, "orders", &event, None).await.unwrap();
    let taken = hosted
        .fetch(&bus, &gone.id, 1, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(taken.len(), 1);
    // billing-2 keeps fetching (a long poll counts as activity); billing-1 never comes
    // back, so it is released and its lease goes back long before redeliverAfter (1h).
    let got = hosted
        .fetch(&bus, &live.id, 1, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].attempt, 2);
    let err = hosted
        .fetch(&bus, &gone.id, 1, Duration::ZERO)
        .await
        .unwrap_err();
    assert_eq!(err.status(), StatusCode::NOT_FOUND);
    let err = hosted
        .settle(
            &bus,
            &gone.id,
            &taken[0].lease,
            SettleRequest {
                action: SettleAction::Ack,
                delay: None,
                reason: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.status(), StatusCode::NOT_FOUND);
}
