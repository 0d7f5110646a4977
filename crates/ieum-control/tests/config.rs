//! Configuration resources through the API: apply, dry runs, validation, history, events.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use ieum_control::{AppState, Auth, router};
use ieum_registry::{Options, Registry, SystemClock};
use ieum_store::MemoryStore;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

async fn app() -> Router {
    let registry = Registry::start(
        Arc::new(MemoryStore::new()),
        Arc::new(SystemClock),
        Options::default(),
    )
    .await
    .unwrap();
    router(AppState {
        registry,
        auth: Auth::Open,
        shutdown: CancellationToken::new(),
    })
}

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    content_type: &str,
    body: &str,
) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", content_type)
        .body(Body::from(body.to_owned()))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn get(app: &Router, uri: &str) -> (StatusCode, Value) {
    call(app, "GET", uri, "application/json", "").await
}

async fn apply_yaml(app: &Router, yaml: &str) -> (StatusCode, Value) {
    call(app, "POST", "/v1/apply", "application/yaml", yaml).await
}

const SHOP: &str = r#"
apiVersion: ieum.dev/v1
kind: Service
metadata: {name: orders, labels: {team: checkout}}
spec: {description: Takes orders}
---
apiVersion: ieum.dev/v1
kind: Route
metadata: {name: orders-api}
spec:
  service: orders
  rules:
  - matches: [{path: {type: PathPrefix, value: /v2/}}]
    backends: [{service: orders, version: v2}]
    timeouts: {request: 2s}
---
apiVersion: ieum.dev/v1
kind: ResiliencePolicy
metadata: {name: orders-default}
spec:
  targetRef: {kind: Service, name: orders}
  retry: {codes: [503], attempts: 1}
"#;

fn outcomes(v: &Value) -> Vec<String> {
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{}/{} {}",
                r["kind"].as_str().unwrap(),
                r["name"].as_str().unwrap(),
                r["outcome"].as_str().unwrap()
            )
        })
        .collect()
}

#[tokio::test]
async fn apply_creates_versions_and_records_changes_on_the_timeline() {
    let app = app().await;
    let (status, body) = apply_yaml(&app, SHOP).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        outcomes(&body),
        [
            "Service/orders created",
            "Route/orders-api created",
            "ResiliencePolicy/orders-default created"
        ]
    );
    assert_eq!(body["results"][1]["revision"], 1);

    let (_, again) = apply_yaml(&app, SHOP).await;
    assert_eq!(
        outcomes(&again),
        [
            "Service/orders unchanged",
            "Route/orders-api unchanged",
            "ResiliencePolicy/orders-default unchanged"
        ],
        "re-applying the same files writes nothing"
    );

    let changed = SHOP.replace("timeouts: {request: 2s}", "timeouts: {request: 3s}");
    let (_, body) = apply_yaml(&app, &changed).await;
    assert_eq!(body["results"][1]["outcome"], "configured");
    assert_eq!(body["results"][1]["revision"], 2);
    let diff = &body["results"][1]["diff"][0];
    assert_eq!(diff["path"], "spec.rules[0].timeouts.request");
    assert_eq!(
        (diff["before"].as_str(), diff["after"].as_str()),
        (Some("2s"), Some("3s"))
    );

    let (_, route) = get(&app, "/v1/resources/routes/orders-api").await;
    assert_eq!(route["metadata"]["revision"], 2);
    assert_eq!(route["spec"]["rules"][0]["timeouts"]["request"], "3s");
    assert_eq!(route["metadata"]["author"], "local");

    let (_, history) = get(&app, "/v1/resources/Route/orders-api/history").await;
    let h = history.as_array().unwrap();
    assert_eq!(h.len(), 2);
    assert_eq!(h[1]["diff"].as_array().unwrap().len(), 1);

    let (_, events) = get(
        &app,
        "/v1/services/orders/events?kind=config.changed&order=oldest",
    )
    .await;
    let messages: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        messages,
        [
            "Route/orders-api created by local (revision 1)",
            "ResiliencePolicy/orders-default created by local (revision 1)",
            "Route/orders-api changed by local (revision 2): spec.rules[0].timeouts.request",
        ]
    );
    assert_eq!(events[2]["data"]["diff"][0]["after"], "3s");
    // The Service itself keeps its own event kinds.
    let (_, created) = get(&app, "/v1/services/orders/events?kind=service.created").await;
    assert_eq!(created[0]["data"]["diff"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn a_dry_run_reports_and_writes_nothing() {
    let app = app().await;
    let (status, body) = call(
        &app,
        "POST",
        "/v1/apply?dryRun=true",
        "application/yaml",
        SHOP,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["dryRun"], true);
    assert_eq!(body["results"][0]["outcome"], "created");
    let (_, routes) = get(&app, "/v1/resources/route").await;
    assert_eq!(routes, Value::Array(vec![]));
    let (_, services) = get(&app, "/v1/services").await;
    assert_eq!(services, Value::Array(vec![]));
}

#[tokio::test]
async fn one_bad_resource_rejects_the_whole_apply_with_every_error() {
    let app = app().await;
    let bad = format!(
        "{SHOP}---\napiVersion: ieum.dev/v1\nkind: Route\nmetadata: {{name: checkout}}\nspec:\n  service: orders\n  rules:\n  - {{}}\n  - retry: {{attempts: 11}}\n    matches: [{{method: FETCH}}]\n"
    );
    let (status, body) = apply_yaml(&app, &bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let details = body["error"]["details"].as_array().unwrap();
    let lines: Vec<String> = details
        .iter()
        .map(|d| {
            format!(
                "{} {} {}",
                d["code"].as_str().unwrap(),
                d["resource"].as_str().unwrap(),
                d["field"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        lines,
        [
            "E2004 Route/checkout spec.rules[1].matches[0].method",
            "E2104 Route/checkout spec.rules[1].retry.attempts"
        ]
    );
    let (_, routes) = get(&app, "/v1/resources/routes").await;
    assert_eq!(routes, Value::Array(vec![]), "nothing half-written");

    let (status, body) = apply_yaml(&app, "kind: [oops\n").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "E1001");
    let (status, body) = call(
        &app,
        "POST",
        "/v1/apply",
        "application/json",
        r#"{"resources": []}"#,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("E2011"))
    );
    let twice = format!("{SHOP}---\n{}", SHOP.split("---").nth(1).unwrap());
    let (status, body) = apply_yaml(&app, &twice).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("E2010"))
    );
}

#[tokio::test]
async fn references_to_unknown_services_are_warnings() {
    let app = app().await;
    let route = "apiVersion: ieum.dev/v1\nkind: Route\nmetadata: {name: r}\nspec: {service: ghost, rules: [{backends: [{service: ghost}]}]}\n";
    let (status, body) = apply_yaml(&app, route).await;
    assert_eq!(status, StatusCode::OK);
    let w = &body["results"][0]["warnings"][0];
    assert_eq!(w["code"], "W2001");
    assert!(
        w["message"]
            .as_str()
            .unwrap()
            .contains("`ghost` is not registered")
    );
    assert_eq!(body["results"][0]["outcome"], "created");
}

#[tokio::test]
async fn the_service_api_and_apply_are_the_same_write() {
    let app = app().await;
    let (status, _) = call(
        &app,
        "PUT",
        "/v1/services/orders",
        "application/json",
        r#"{"description": "one"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let doc = "apiVersion: ieum.dev/v1\nkind: Service\nmetadata: {name: orders}\nspec: {description: two}\n";
    let (_, body) = apply_yaml(&app, doc).await;
    assert_eq!(body["results"][0]["outcome"], "configured");
    assert_eq!(body["results"][0]["revision"], 2);
    let (_, svc) = get(&app, "/v1/services/orders").await;
    assert_eq!(svc["spec"]["description"], "two");
    assert_eq!(svc["revision"], 2);
    let (_, history) = get(&app, "/v1/resources/services/orders/history").await;
    assert_eq!(history.as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn policies_on_a_route_land_on_its_service_timeline_and_deletes_are_revisions() {
    let app = app().await;
    apply_yaml(&app, SHOP).await;
    let chaos = "apiVersion: ieum.dev/v1\nkind: FaultInjection\nmetadata: {name: chaos}\nspec:\n  targetRef: {kind: Route, name: orders-api}\n  abort: {httpStatus: 503, percent: 5}\n";
    let (status, body) = apply_yaml(&app, chaos).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, events) = get(
        &app,
        "/v1/services/orders/events?kind=config.changed&limit=1",
    )
    .await;
    assert!(
        events[0]["message"]
            .as_str()
            .unwrap()
            .starts_with("FaultInjection/chaos created"),
        "{events}"
    );

    let (status, deleted) = call(
        &app,
        "DELETE",
        "/v1/resources/faultinjection/chaos",
        "application/json",
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (deleted["outcome"].as_str(), deleted["revision"].as_i64()),
        (Some("deleted"), Some(2))
    );
    let (status, _) = get(&app, "/v1/resources/faultinjection/chaos").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, history) = get(&app, "/v1/resources/faultinjection/chaos/history").await;
    assert_eq!(history[1]["deleted"], true);
    let (_, events) = get(
        &app,
        "/v1/services/orders/events?kind=config.changed&limit=1",
    )
    .await;
    assert!(
        events[0]["message"]
            .as_str()
            .unwrap()
            .starts_with("FaultInjection/chaos deleted")
    );

    call(
        &app,
        "POST",
        "/v1/services/orders/instances",
        "application/json",
        r#"{"address": "10.0.0.1", "port": 80}"#,
    )
    .await;
    let (status, body) = call(
        &app,
        "DELETE",
        "/v1/resources/service/orders",
        "application/json",
        "",
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, _) = get(&app, "/v1/resources/widgets").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_route_moved_to_another_service_is_recorded_on_both_timelines() {
    let app = app().await;
    let route = |svc: &str| {
        format!(
            "apiVersion: ieum.dev/v1\nkind: Route\nmetadata: {{name: r}}\nspec: {{service: {svc}, rules: [{{}}]}}\n"
        )
    };
    apply_yaml(&app, &route("orders")).await;
    let (status, _) = apply_yaml(&app, &route("stock")).await;
    assert_eq!(status, StatusCode::OK);
    for svc in ["orders", "stock"] {
        let (_, events) = get(
            &app,
            &format!("/v1/services/{svc}/events?kind=config.changed&limit=1"),
        )
        .await;
        assert!(
            events[0]["message"]
                .as_str()
                .unwrap()
                .starts_with("Route/r changed"),
            "{svc}: {events}"
        );
    }
}

#[tokio::test]
async fn schemas_are_served_per_kind() {
    let app = app().await;
    let (status, schema) = get(&app, "/v1/schemas/Route.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(schema["properties"]["kind"]["const"], "Route");
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    let (status, _) = get(&app, "/v1/schemas/Nope.json").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
