//! The API catalogue through the API: `GET /v1/apis` and each API's OpenAPI document for its
//! consumers (`GET /v1/apis/{name}/openapi.json`).

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

async fn call(app: &Router, method: &str, uri: &str, body: &str) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/yaml")
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
    call(app, "GET", uri, "").await
}

/// `orders` publishes an OpenAPI document of its own; `billing` (behind `partner`) does
/// not exist yet, so `partner`'s document is built from its listed operations.
const SHOP: &str = r#"
apiVersion: ieum.dev/v1
kind: Service
metadata: {name: orders}
spec:
  owner: team-checkout
  interfaces:
  - kind: openapi
    inline: |
      openapi: 3.0.3
      info: {title: Orders, version: "1.4"}
      servers: [{url: "http://orders.internal"}]
      components: {schemas: {Order: {type: object}}}
      paths:
        /orders:
          post: {summary: Place an order}
        /orders/{orderId}:
          parameters: [{name: orderId, in: path, required: true, schema: {type: string}}]
          get: {summary: Look an order up}
          delete: {summary: Cancel an order}
        /health:
          get: {summary: Liveness}
---
apiVersion: ieum.dev/v1
kind: Api
metadata: {name: shop-public}
spec:
  basePath: /shop
  backend: {service: orders}
  operations: [{method: GET, path: "/orders/{id}"}]
  auth: {apiKey: {header: x-api-key}}
  description: Look up an order
---
apiVersion: ieum.dev/v1
kind: Api
metadata: {name: partner}
spec:
  basePath: /partner/v1
  hostnames: [api.partner.example]
  backend: {service: billing}
  operations:
  - {method: GET, path: "/invoices/{invoiceId}"}
  - {method: POST, path: "/invoices/{invoiceId}/payments/{paymentId}"}
  - {method: GET, path: /invoices}
  auth:
    anonymous: true
    jwt: {issuer: https://id.partner.example, audiences: [billing], jwksUrl: https://id.partner.example/jwks.json}
  owner: team-billing
---
apiVersion: ieum.dev/v1
kind: ApiConsumer
metadata: {name: newcomer}
spec: {apis: [shop-public]}
---
apiVersion: ieum.dev/v1
kind: ApiConsumer
metadata: {name: partner-app}
spec: {apis: [partner, shop-public]}
"#;

async fn shop() -> Router {
    let app = app().await;
    let (status, body) = call(&app, "POST", "/v1/apply", SHOP).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app
}

/// `METHOD path` of every operation of a document, sorted.
fn operations(doc: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if [
                "get", "put", "post", "delete", "patch", "head", "options", "trace",
            ]
            .contains(&method.as_str())
            {
                out.push(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn the_catalogue_lists_every_api_with_its_consumers_and_owner() {
    let app = shop().await;
    let (status, list) = get(&app, "/v1/apis").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(
        list,
        json!([
            {
                "name": "partner",
                "basePath": "/partner/v1",
                "hostnames": ["api.partner.example"],
                "backend": {"service": "billing"},
                "auth": ["jwt", "anonymous"],
                "owner": "team-billing",
                "consumers": ["partner-app"],
                "openapi": "/v1/apis/partner/openapi.json",
            },
            {
                "name": "shop-public",
                "basePath": "/shop",
                "hostnames": [],
                "backend": {"service": "orders"},
                "auth": ["apiKey"],
                // Not set on the Api: the backend service's.
                "owner": "team-checkout",
                "description": "Look up an order",
                "consumers": ["newcomer", "partner-app"],
                "openapi": "/v1/apis/shop-public/openapi.json",
            },
        ])
    );
    let (status, empty) = get(&self::app().await, "/v1/apis").await;
    assert_eq!((status, empty), (StatusCode::OK, json!([])));
}

#[tokio::test]
async fn listed_operations_become_exactly_those_paths_under_the_base_path() {
    let app = shop().await;
    let (status, doc) = get(&app, "/v1/apis/partner/openapi.json").await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], "partner");
    assert_eq!(
        operations(&doc),
        [
            "GET /partner/v1/invoices",
            "GET /partner/v1/invoices/{invoiceId}",
            "POST /partner/v1/invoices/{invoiceId}/payments/{paymentId}",
        ]
    );
    let params = |path: &str, method: &str| -> Vec<Value> {
        doc["paths"][path][method]["parameters"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(
        params("/partner/v1/invoices/{invoiceId}", "get"),
        [
            json!({"name": "invoiceId", "in": "path", "required": true, "schema": {"type": "string"}})
        ]
    );
    let names: Vec<Value> = params(
        "/partner/v1/invoices/{invoiceId}/payments/{paymentId}",
        "post",
    )
    .iter()
    .map(|p| p["name"].clone())
    .collect();
    assert_eq!(names, [json!("invoiceId"), json!("paymentId")]);
    assert!(params("/partner/v1/invoices", "get").is_empty());
    assert!(
        doc["paths"]["/partner/v1/invoices"]["get"]["responses"]["200"]["description"].is_string()
    );
}

#[tokio::test]
async fn a_service_with_its_own_document_gets_its_paths_filtered_and_prefixed() {
    let app = shop().await;
    let (status, doc) = get(&app, "/v1/apis/shop-public/openapi.json").await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    // Only the listed GET; `{id}` covers the document's `{orderId}`, whose name stays.
    assert_eq!(operations(&doc), ["GET /shop/orders/{orderId}"]);
    let item = &doc["paths"]["/shop/orders/{orderId}"];
    assert_eq!(item["get"]["summary"], "Look an order up");
    assert_eq!(item["parameters"][0]["name"], "orderId");
    assert_eq!(doc["info"]["version"], "1.4");
    assert_eq!(doc["info"]["description"], "Look up an order");
    assert_eq!(doc["components"]["schemas"]["Order"]["type"], "object");
    // The service's own address is not how consumers reach it.
    assert!(doc.get("servers").is_none(), "{doc}");

    // Exposing every operation takes the whole document.
    let widened = SHOP.replace(
        "operations: [{method: GET, path: \"/orders/{id}\"}]",
        "operations: all",
    );
    let (status, body) = call(&app, "POST", "/v1/apply", &widened).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, doc) = get(&app, "/v1/apis/shop-public/openapi.json").await;
    assert_eq!(
        operations(&doc),
        [
            "DELETE /shop/orders/{orderId}",
            "GET /shop/health",
            "GET /shop/orders/{orderId}",
            "POST /shop/orders",
        ]
    );
}

#[tokio::test]
async fn security_schemes_and_servers_follow_the_api() {
    let app = shop().await;
    let (_, shop) = get(&app, "/v1/apis/shop-public/openapi.json").await;
    assert_eq!(
        shop["components"]["securitySchemes"],
        json!({"apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"}})
    );
    assert_eq!(shop["security"], json!([{"apiKey": []}]));

    let (_, partner) = get(&app, "/v1/apis/partner/openapi.json").await;
    assert_eq!(
        partner["components"]["securitySchemes"],
        json!({"jwt": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}})
    );
    // A JWT, or nothing at all (anonymous calls are let in).
    assert_eq!(partner["security"], json!([{"jwt": []}, {}]));
    assert_eq!(
        partner["servers"],
        json!([{"url": "https://api.partner.example"}])
    );

    let open = SHOP.replace(
        "auth: {apiKey: {header: x-api-key}}",
        "auth: {anonymous: true}",
    );
    let (status, body) = call(&app, "POST", "/v1/apply", &open).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, shop) = get(&app, "/v1/apis/shop-public/openapi.json").await;
    assert!(shop.get("security").is_none(), "{shop}");
    assert!(
        shop["components"].get("securitySchemes").is_none(),
        "{shop}"
    );
}

#[tokio::test]
async fn an_unknown_api_is_a_coded_404() {
    let app = shop().await;
    let (status, body) = get(&app, "/v1/apis/nope/openapi.json").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "E1404", "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("nope"),
        "{body}"
    );
    // A consumer is not an API.
    let (status, _) = get(&app, "/v1/apis/newcomer/openapi.json").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn both_routes_are_in_the_servers_own_document() {
    let app = app().await;
    let (status, doc) = get(&app, "/v1/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["paths"]["/v1/apis"]["get"].is_object());
    assert!(doc["paths"]["/v1/apis/{name}/openapi.json"]["get"].is_object());
}
