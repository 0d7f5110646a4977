//! The REST API driven without sockets: every bad-input class, auth, and the main flows.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use ieum_control::{AppState, Auth, router};
use ieum_registry::{Options, Registry, SystemClock};
use ieum_store::MemoryStore;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

async fn app_with(auth: Auth) -> (Router, Registry) {
    let registry = Registry::start(
        Arc::new(MemoryStore::new()),
        Arc::new(SystemClock),
        Options::default(),
    )
    .await
    .unwrap();
    let app = router(AppState {
        registry: registry.clone(),
        auth,
        shutdown: CancellationToken::new(),
    });
    (app, registry)
}

async fn app() -> Router {
    app_with(Auth::Open).await.0
}

struct Resp {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
}

async fn call(app: &Router, method: &str, uri: &str, body: Option<&str>) -> Resp {
    call_with(app, method, uri, body, None).await
}

async fn call_with(
    app: &Router,
    method: &str,
    uri: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> Resp {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned())))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    Resp {
        status,
        headers,
        body,
    }
}

fn assert_error(r: &Resp, status: StatusCode, code: &str, field: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.body["error"]["code"], code, "{}", r.body);
    assert_eq!(
        r.body["error"]["field"].as_str().unwrap_or(""),
        field,
        "{}",
        r.body
    );
    assert!(!r.body["error"]["message"].as_str().unwrap().is_empty());
}

const INSTANCE: &str =
    r#"{"id": "a1", "address": "10.0.0.1", "port": 8080, "zone": "eu-1", "version": "v1"}"#;

#[tokio::test]
async fn register_list_describe_and_query() {
    let app = app().await;
    let r = call(
        &app,
        "POST",
        "/v1/services/orders/instances",
        Some(INSTANCE),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body, json!({"id": "a1", "ttl": "15s"}));
    let again = call(
        &app,
        "POST",
        "/v1/services/orders/instances",
        Some(INSTANCE),
    )
    .await;
    assert_eq!(again.status, StatusCode::OK, "re-registering is idempotent");

    let list = call(&app, "GET", "/v1/services", None).await;
    assert_eq!(list.status, StatusCode::OK);
    assert!(list.headers.contains_key("x-ieum-index"));
    let orders = &list.body[0];
    assert_eq!(orders["name"], "orders");
    assert_eq!(
        orders["instances"],
        json!({"total": 1, "up": 1, "starting": 0, "draining": 0, "down": 0})
    );
    assert_eq!(orders["zones"], json!(["eu-1"]));
    assert!(orders["oldestUptime"].is_string());

    let one = call(&app, "GET", "/v1/services/orders", None).await;
    assert_eq!(one.body["name"], "orders");
    assert_eq!(one.body["instances"][0]["state"], "up");
    assert_eq!(one.body["instances"][0]["version"], "v1");
    assert!(one.body["instances"][0]["upSince"].is_string());
    assert!(one.body["spec"].is_object());

    let q = call(
        &app,
        "GET",
        "/v1/services/orders/instances?state=up&zone=eu-1",
        None,
    )
    .await;
    assert_eq!(q.body.as_array().unwrap().len(), 1);
    let index: u64 = q.headers["x-ieum-index"].to_str().unwrap().parse().unwrap();
    let other_zone = call(&app, "GET", "/v1/services/orders/instances?zone=us-1", None).await;
    assert_eq!(other_zone.body, json!([]));

    // A blocking query with nothing changing answers after `wait`, with the same index.
    let start = tokio::time::Instant::now();
    let w = call(
        &app,
        "GET",
        &format!("/v1/services/orders/instances?index={index}&wait=200ms"),
        None,
    )
    .await;
    assert!(start.elapsed() >= std::time::Duration::from_millis(200));
    assert_eq!(
        w.headers["x-ieum-index"].to_str().unwrap(),
        index.to_string()
    );
}

#[tokio::test]
async fn a_blocking_query_answers_as_soon_as_the_set_changes() {
    let app = app().await;
    call(
        &app,
        "POST",
        "/v1/services/orders/instances",
        Some(INSTANCE),
    )
    .await;
    let q = call(&app, "GET", "/v1/services/orders/instances", None).await;
    let index: u64 = q.headers["x-ieum-index"].to_str().unwrap().parse().unwrap();
    let waiter = {
        let app = app.clone();
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            let r = call(
                &app,
                "GET",
                &format!("/v1/services/orders/instances?index={index}&wait=30s"),
                None,
            )
            .await;
            (start.elapsed(), r)
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let d = call(
        &app,
        "PUT",
        "/v1/services/orders/instances/a1/state",
        Some(r#"{"state": "draining"}"#),
    )
    .await;
    assert_eq!(d.status, StatusCode::OK, "{}", d.body);
    let (waited, r) = waiter.await.unwrap();
    assert!(waited < std::time::Duration::from_secs(5), "{waited:?}");
    assert_eq!(r.body[0]["state"], "draining");
    let new_index: u64 = r.headers["x-ieum-index"].to_str().unwrap().parse().unwrap();
    assert!(new_index > index);
}

#[tokio::test]
async fn heartbeats_drains_and_deregistration() {
    let app = app().await;
    call(
        &app,
        "POST",
        "/v1/services/orders/instances",
        Some(INSTANCE),
    )
    .await;
    assert_eq!(
        call(
            &app,
            "PUT",
            "/v1/services/orders/instances/a1/heartbeat",
            None
        )
        .await
        .status,
        StatusCode::OK
    );
    let unknown = call(
        &app,
        "PUT",
        "/v1/services/orders/instances/zz/heartbeat",
        None,
    )
    .await;
    assert_error(&unknown, StatusCode::NOT_FOUND, "E1404", "");
    assert!(
        unknown.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("register it again")
    );

    let state = "/v1/services/orders/instances/a1/state";
    let bad_state = call(&app, "PUT", state, Some(r#"{"state": "starting"}"#)).await;
    assert_error(&bad_state, StatusCode::BAD_REQUEST, "E1214", "state");
    let no_reason = call(&app, "PUT", state, Some(r#"{"state": "down"}"#)).await;
    assert_error(&no_reason, StatusCode::BAD_REQUEST, "E1215", "reason");
    let nul = call(
        &app,
        "PUT",
        state,
        Some(r#"{"state": "down", "reason": "a\u0000b"}"#),
    )
    .await;
    assert_error(&nul, StatusCode::BAD_REQUEST, "E1215", "reason");
    let down_body = r#"{"state": "down", "reason": "app exited with code 3"}"#;
    let down = call(&app, "PUT", state, Some(down_body)).await;
    assert_eq!(down.status, StatusCode::OK, "{}", down.body);
    assert_eq!(down.body["state"], "down");
    assert_eq!(
        down.body["stateReason"],
        "reported down by local: app exited with code 3"
    );
    // A heartbeat brings it back, as after a missed lease.
    let hb = "/v1/services/orders/instances/a1/heartbeat";
    assert_eq!(call(&app, "PUT", hb, None).await.status, StatusCode::OK);
    let back = call(&app, "GET", "/v1/services/orders", None).await;
    assert_eq!(back.body["instances"][0]["state"], "up");

    assert_eq!(
        call(&app, "DELETE", "/v1/services/orders/instances/a1", None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(&app, "DELETE", "/v1/services/orders/instances/a1", None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    let timeline = call(&app, "GET", "/v1/services/orders/events?order=oldest", None).await;
    let kinds: Vec<&str> = timeline
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "service.created",
            "instance.registered",
            "instance.down",
            "instance.up",
            "instance.deregistered"
        ]
    );
    assert_eq!(timeline.body[4]["author"], "local");
}

#[tokio::test]
async fn service_definitions_are_validated_and_versioned() {
    let app = app().await;
    let spec = r#"{"description": "Takes orders", "owner": "team-checkout",
                  "interfaces": [{"kind": "openapi", "url": "http://orders/openapi.json"}],
                  "sla": {"availability": 99.9, "latencyP99": "200ms"}}"#;
    let created = call(&app, "PUT", "/v1/services/orders", Some(spec)).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.body["revision"], 1);
    assert_eq!(created.body["spec"]["sla"]["latencyP99"], "200ms");
    let updated = call(
        &app,
        "PUT",
        "/v1/services/orders",
        Some(r#"{"description": "v2"}"#),
    )
    .await;
    assert_eq!(updated.status, StatusCode::OK);
    assert_eq!(updated.body["revision"], 2);

    let bad = call(
        &app,
        "PUT",
        "/v1/services/orders",
        Some(r#"{"sla": {"availability": 150}, "interfaces": [{"kind": "grpc"}]}"#),
    )
    .await;
    assert_error(&bad, StatusCode::BAD_REQUEST, "E1103", "interfaces[0]");
    assert_eq!(
        bad.body["error"]["details"].as_array().unwrap().len(),
        2,
        "every problem is listed"
    );
    let unchanged = call(&app, "GET", "/v1/services/orders", None).await;
    assert_eq!(
        unchanged.body["spec"]["description"], "v2",
        "nothing half-written"
    );
    assert_eq!(unchanged.body["revision"], 2);
}

#[tokio::test]
async fn every_bad_input_class_is_a_coded_4xx() {
    let app = app().await;
    // (method, uri, body, status, code, field)
    type Case<'a> = (
        &'a str,
        &'a str,
        Option<&'a str>,
        StatusCode,
        &'a str,
        &'a str,
    );
    let cases: &[Case<'_>] = &[
        (
            "POST",
            "/v1/services/Orders/instances",
            Some(INSTANCE),
            StatusCode::BAD_REQUEST,
            "E1004",
            "name",
        ),
        (
            "POST",
            "/v1/services/orders_v2/instances",
            Some(INSTANCE),
            StatusCode::BAD_REQUEST,
            "E1004",
            "name",
        ),
        (
            "POST",
            "/v1/services/orders/instances",
            Some(r#"{"address": "10.0.0.1", "port": 70000}"#),
            StatusCode::BAD_REQUEST,
            "E1207",
            "port",
        ),
        (
            "POST",
            "/v1/services/orders/instances",
            Some(r#"{"address": "10.0.0.1", "port": -1}"#),
            StatusCode::BAD_REQUEST,
            "E1207",
            "port",
        ),
        (
            "POST",
            "/v1/services/orders/instances",
            Some(r#"{"address": "not a host", "port": 80}"#),
            StatusCode::BAD_REQUEST,
            "E1206",
            "address",
        ),
        (
            "POST",
            "/v1/services/orders/instances",
            Some(r#"{"address": "10.0.0.1", "port": 80, "ttl": "15"}"#),
            StatusCode::BAD_REQUEST,
            "E1005",
            "ttl",
        ),
        (
            "POST",
            "/v1/services/orders/instances",
            Some(r#"{"address": "10.0.0.1", "port": 80, "ttl": "100ms"}"#),
            StatusCode::BAD_REQUEST,
            "E1212",
            "ttl",
        ),
        (
            "POST",
            "/v1/services/orders/instances",
            Some(r#"{"address": "10.0.0.1", "port": 80, "prot": "h2"}"#),
            StatusCode::BAD_REQUEST,
            "E1002",
            "prot",
        ),
        (
            "POST",
            "/v1/services/orders/instances",
            Some(r#"{"address": "10.0.0.1", "port": 80, "protocol": "ftp"}"#),
            StatusCode::BAD_REQUEST,
            "E1005",
            "protocol",
        ),
        (
            "POST",
            "/v1/services/orders/instances",
            Some(
                r#"{"address": "10.0.0.1", "port": 80, "check": {"http": "/h", "interval": "1ms"}}"#,
            ),
            StatusCode::BAD_REQUEST,
            "E1203",
            "check.interval",
        ),
        (
            "POST",
            "/v1/services/orders/instances",
            Some(r#"{"address": "10.0.0.1", "port": 80"#),
            StatusCode::BAD_REQUEST,
            "E1001",
            "",
        ),
        (
            "POST",
            "/v1/services/orders/instances",
            Some("[1, 2]"),
            StatusCode::BAD_REQUEST,
            "E1005",
            "",
        ),
        (
            "POST",
            "/v1/services/orders/instances",
            None,
            StatusCode::BAD_REQUEST,
            "E1001",
            "",
        ),
        (
            "POST",
            "/v1/services/orders/instances",
            Some(r#"{"id": "a b", "address": "10.0.0.1", "port": 80}"#),
            StatusCode::BAD_REQUEST,
            "E1205",
            "id",
        ),
        (
            "PUT",
            "/v1/services/orders/instances/a%20b/heartbeat",
            None,
            StatusCode::BAD_REQUEST,
            "E1205",
            "id",
        ),
        (
            "PUT",
            "/v1/services/orders",
            Some(r#"{"descripton": "typo"}"#),
            StatusCode::BAD_REQUEST,
            "E1002",
            "descripton",
        ),
        (
            "GET",
            "/v1/services/orders/instances?stat=up",
            None,
            StatusCode::BAD_REQUEST,
            "E1006",
            "stat",
        ),
        (
            "GET",
            "/v1/events?kind=instance.exploded",
            None,
            StatusCode::BAD_REQUEST,
            "E1006",
            "kind",
        ),
        (
            "GET",
            "/v1/events?limit=0",
            None,
            StatusCode::BAD_REQUEST,
            "E1006",
            "limit",
        ),
        (
            "GET",
            "/v1/events?since=yesterday",
            None,
            StatusCode::BAD_REQUEST,
            "E1006",
            "since",
        ),
        (
            "GET",
            "/v1/nothing-here",
            None,
            StatusCode::NOT_FOUND,
            "E1404",
            "",
        ),
        (
            "PATCH",
            "/v1/services",
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            "E1405",
            "",
        ),
    ];
    for (method, uri, body, status, code, field) in cases {
        let r = call(&app, method, uri, *body).await;
        assert_eq!(r.status, *status, "{method} {uri} {body:?}: {}", r.body);
        assert_eq!(
            r.body["error"]["code"], *code,
            "{method} {uri} {body:?}: {}",
            r.body
        );
        assert_eq!(
            r.body["error"]["field"].as_str().unwrap_or(""),
            *field,
            "{method} {uri} {body:?}: {}",
            r.body
        );
    }
    // A too-large body is refused before parsing.
    let big = format!(
        r#"{{"address": "10.0.0.1", "port": 80, "metadata": {{"k": "{}"}}}}"#,
        "x".repeat(2 << 20)
    );
    let r = call(&app, "POST", "/v1/services/orders/instances", Some(&big)).await;
    assert_error(&r, StatusCode::PAYLOAD_TOO_LARGE, "E1003", "");
    // None of it was stored.
    assert_eq!(
        call(&app, "GET", "/v1/services", None).await.body,
        json!([])
    );
    let events = call(&app, "GET", "/v1/events?kind=instance.registered", None).await;
    assert_eq!(events.body, json!([]));
}

#[tokio::test]
async fn duration_errors_say_how_to_write_one() {
    let app = app().await;
    let r = call(
        &app,
        "POST",
        "/v1/services/orders/instances",
        Some(r#"{"address": "10.0.0.1", "port": 80, "ttl": "15"}"#),
    )
    .await;
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("like `250ms`"),
        "{}",
        r.body
    );
}

#[tokio::test]
async fn off_loopback_writes_need_the_token() {
    let (app, _) = app_with(Auth::Token("s3cret".into())).await;
    let anon = call(
        &app,
        "POST",
        "/v1/services/orders/instances",
        Some(INSTANCE),
    )
    .await;
    assert_error(&anon, StatusCode::UNAUTHORIZED, "E1010", "");
    assert!(
        anon.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("IEUM_TOKEN")
    );
    let wrong = call_with(
        &app,
        "POST",
        "/v1/services/orders/instances",
        Some(INSTANCE),
        Some("guess"),
    )
    .await;
    assert_error(&wrong, StatusCode::UNAUTHORIZED, "E1011", "");
    let ok = call_with(
        &app,
        "POST",
        "/v1/services/orders/instances",
        Some(INSTANCE),
        Some("s3cret"),
    )
    .await;
    assert_eq!(ok.status, StatusCode::CREATED);
    // Reads stay open; the write is recorded with its author.
    let events = call(&app, "GET", "/v1/events?kind=instance.registered", None).await;
    assert_eq!(events.status, StatusCode::OK);
    assert_eq!(events.body[0]["author"], "admin");
}

#[tokio::test]
async fn health_status_and_openapi() {
    let app = app().await;
    assert_eq!(
        call(&app, "GET", "/healthz", None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        call(&app, "GET", "/readyz", None).await.status,
        StatusCode::OK
    );
    let status = call(&app, "GET", "/v1/status", None).await;
    assert_eq!(status.body["store"], "memory");
    assert_eq!(status.body["protection"]["active"], false);
    let doc = call(&app, "GET", "/v1/openapi.json", None).await;
    assert!(doc.body["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc.body["paths"].as_object().unwrap();
    for p in [
        "/v1/services",
        "/v1/services/{name}/instances",
        "/v1/services/{name}/instances/{id}/heartbeat",
        "/v1/events/stream",
        "/v1/sagas/{name}/executions",
        "/v1/sagas/executions/{id}",
        "/v1/sagas/executions/{id}/{op}",
        "/v1/flows/{name}",
    ] {
        assert!(
            paths.contains_key(p),
            "{p} missing from the OpenAPI document"
        );
    }
    let schemas = doc.body["components"]["schemas"].as_object().unwrap();
    assert!(schemas.contains_key("InstanceRegistration"));
    assert!(schemas.contains_key("ExecutionView"));
}

#[tokio::test]
async fn event_stream_replays_after_an_id_then_follows_live() {
    let (app, registry) = app_with(Auth::Open).await;
    call(
        &app,
        "POST",
        "/v1/services/orders/instances",
        Some(INSTANCE),
    )
    .await;
    let first = call(
        &app,
        "GET",
        "/v1/events?order=oldest&kind=service.created",
        None,
    )
    .await;
    let after = first.body[0]["id"].as_i64().unwrap();

    let req = Request::get("/v1/events/stream?service=orders")
        .header("last-event-id", after.to_string())
        .body(Body::empty())
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let mut text = String::new();
    let mut next = async || {
        let frame = tokio::time::timeout(std::time::Duration::from_secs(5), body.frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        String::from_utf8(frame.into_data().unwrap().to_vec()).unwrap()
    };
    text.push_str(&next().await);
    assert!(
        text.contains("event: instance.registered"),
        "backlog first: {text}"
    );
    registry.deregister("orders", "a1", "local").await.unwrap();
    let live = next().await;
    assert!(live.contains("event: instance.deregistered"), "{live}");
    assert!(live.contains("\"author\":\"local\""), "{live}");
}

#[tokio::test]
async fn sidecar_reports_keep_signals_and_record_breaker_changes() {
    let app = app().await;
    call(
        &app,
        "POST",
        "/v1/services/orders/instances",
        Some(INSTANCE),
    )
    .await;
    let report = r#"{"window": "10s",
        "signals": [{"direction": "outbound", "destination": "stock", "requests": 50, "requestsPerSecond": 5.0,
                     "successRate": 0.9, "p50Ms": 3.0, "p99Ms": 40.0}],
        "breakers": [{"destination": "stock", "endpoint": "s1", "from": "allowed", "to": "blocked",
                      "reason": "5 consecutive failures", "coalesced": 3}]}"#;
    let r = call(
        &app,
        "POST",
        "/v1/services/orders/instances/a1/telemetry",
        Some(report),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let signals = call(&app, "GET", "/v1/services/orders/signals?since=1m", None).await;
    assert_eq!(signals.body[0]["destination"], "stock");
    assert_eq!(signals.body[0]["p99Ms"], 40.0);
    assert_eq!(signals.body[0]["instance"], "a1");
    let events = call(
        &app,
        "GET",
        "/v1/services/orders/events?kind=breaker.changed",
        None,
    )
    .await;
    assert_eq!(
        events.body[0]["message"],
        "circuit to stock (endpoint s1) blocked: 5 consecutive failures (3 more transitions folded in)"
    );
    let bad = call(
        &app,
        "POST",
        "/v1/services/orders/instances/a1/telemetry",
        Some(r#"{"window": "0s"}"#),
    )
    .await;
    assert_error(&bad, StatusCode::BAD_REQUEST, "E1301", "window");
    let unknown = call(
        &app,
        "POST",
        "/v1/services/orders/instances/zz/telemetry",
        Some(r#"{"window": "10s"}"#),
    )
    .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn topics_and_correlations_are_served_from_sidecar_reports() {
    let app = app().await;
    call(
        &app,
        "POST",
        "/v1/services/orders/instances",
        Some(INSTANCE),
    )
    .await;
    let report = r#"{"window": "10s",
        "topics": [{"pubsub": "bus", "topic": "orders.placed", "direction": "publish", "published": 20}],
        "events": [
          {"at": "2026-11-26T12:00:00.100Z", "pubsub": "bus", "topic": "orders.placed", "direction": "consume",
           "outcome": "deadLettered", "id": "e-2", "source": "orders", "type": "order.placed", "attempt": 3,
           "correlationId": "order-7", "reason": "the app answered 500"},
          {"at": "2026-11-26T12:00:00.000Z", "pubsub": "bus", "topic": "orders.placed", "direction": "publish",
           "outcome": "published", "id": "e-2", "source": "orders", "type": "order.placed",
           "correlationId": "order-7", "traceId": "4bf92f3577b34da6a3ce929d0e0e4736"}]}"#;
    let r = call(
        &app,
        "POST",
        "/v1/services/orders/instances/a1/telemetry",
        Some(report),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);

    let list = call(&app, "GET", "/v1/topics", None).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.body);
    let topic = &list.body["topics"][0];
    assert_eq!(
        (&topic["pubsub"], &topic["topic"]),
        (&json!("bus"), &json!("orders.placed"))
    );
    assert_eq!(topic["publishers"][0]["service"], "orders");
    assert_eq!(topic["publishers"][0]["published"], 20);

    let one = call(&app, "GET", "/v1/topics/bus/orders.placed?limit=1", None).await;
    assert_eq!(one.status, StatusCode::OK, "{}", one.body);
    let events = one.body["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "limit holds");
    assert_eq!(events[0]["service"], "orders");
    assert_eq!(events[0]["instance"], "a1");

    let chain = call(&app, "GET", "/v1/correlations/order-7", None).await;
    let outcomes: Vec<&str> = chain
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["published", "deadLettered"], "in order of time");
    let none = call(&app, "GET", "/v1/correlations/nothing", None).await;
    assert_eq!(none.body, json!([]));

    let dead = call(
        &app,
        "GET",
        "/v1/services/orders/events?kind=event.dead_lettered",
        None,
    )
    .await;
    assert_eq!(
        dead.body[0]["message"],
        "event e-2 (order.placed) from bus/orders.placed dead-lettered after 3 attempts: the app answered 500"
    );
    assert_eq!(dead.body[0]["data"]["correlationId"], "order-7");

    let missing = call(&app, "GET", "/v1/topics/bus/nothing", None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let bad = call(&app, "GET", "/v1/topics/bus/orders.placed?limit=0", None).await;
    assert_error(&bad, StatusCode::BAD_REQUEST, "E1006", "limit");
    let hostile = call(
        &app,
        "POST",
        "/v1/services/orders/instances/a1/telemetry",
        Some(
            r#"{"window": "10s", "events": [{"at": "2026-11-26T12:00:00Z", "pubsub": "bus",
            "topic": "t", "direction": "up", "outcome": "delivered", "id": "x", "source": "s",
            "type": "t"}]}"#,
        ),
    )
    .await;
    assert_error(
        &hostile,
        StatusCode::BAD_REQUEST,
        "E1305",
        "events[0].direction",
    );
}
