use serde_json::json;

use super::*;
use crate::resource::{check, parse_documents};

/// The spec of an `Api` written as YAML `spec:` lines, checked as `ieum apply` would.
fn api(spec: &str) -> ApiSpec {
    let yaml = format!(
        "apiVersion: ieum.dev/v1\nkind: Api\nmetadata: {{name: shop-public}}\nspec:\n{spec}"
    );
    let checked = check(&parse_documents(&yaml).unwrap()[0]).unwrap();
    serde_json::from_value(checked.spec).unwrap()
}

fn listed(doc: &Value) -> Vec<String> {
    operations(doc)
        .into_iter()
        .map(|(m, p)| format!("{m} {p}"))
        .collect()
}

const ORDERS: &str = r##"
openapi: 3.0.3
info: {title: Orders, version: "1.4", description: Orders of the shop}
servers: [{url: "http://orders.internal:8080"}]
security: [{internal: []}]
tags: [{name: orders}]
components:
  schemas: {Order: {type: object}}
  securitySchemes: {internal: {type: http, scheme: basic}}
paths:
  /orders:
    get: {summary: List orders}
    post: {summary: Place an order}
  /orders/{orderId}:
    parameters: [{name: orderId, in: path, required: true, schema: {type: string}}]
    servers: [{url: "http://elsewhere"}]
    get:
      summary: One order
      security: [{internal: []}]
      responses: {"200": {description: The order, content: {application/json: {schema: {$ref: "#/components/schemas/Order"}}}}}
    delete: {summary: Cancel an order}
  /health:
    get: {summary: Liveness}
"##;

fn orders() -> Value {
    crate::service::parse_definition(ORDERS).unwrap()
}

#[test]
fn listed_operations_without_a_document_become_paths_with_their_parameters() {
    let spec = api(
        "  basePath: /shop\n  backend: {service: orders}\n  operations: [{method: GET, path: \"/orders/{id}\"}, {method: POST, path: /orders}, {method: DELETE, path: \"/orders/{id}/items/{item}\"}]\n  auth: {apiKey: {header: x-api-key}}\n  description: Look up an order\n",
    );
    let doc = document("shop-public", &spec, None);
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], "shop-public");
    assert_eq!(doc["info"]["description"], "Look up an order");
    let mut ops = listed(&doc);
    ops.sort();
    assert_eq!(
        ops,
        [
            "DELETE /shop/orders/{id}/items/{item}",
            "GET /shop/orders/{id}",
            "POST /shop/orders",
        ]
    );
    let get = &doc["paths"]["/shop/orders/{id}"]["get"];
    assert_eq!(
        get["parameters"],
        json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}])
    );
    assert!(get["responses"]["200"]["description"].is_string());
    let names: Vec<&str> = doc["paths"]["/shop/orders/{id}/items/{item}"]["delete"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["id", "item"]);
    assert!(
        doc["paths"]["/shop/orders"]["post"]
            .get("parameters")
            .is_none()
    );
    assert!(doc.get("servers").is_none(), "no hostnames, no servers");
}

#[test]
fn the_backends_document_is_kept_to_the_listed_operations_and_prefixed() {
    let spec = api(
        "  basePath: /shop\n  backend: {service: orders}\n  operations: [{method: GET, path: \"/orders/{id}\"}, {method: PUT, path: \"/orders/{id}\"}]\n  auth: {apiKey: {}}\n",
    );
    let doc = document("shop-public", &spec, Some(&orders()));
    let mut ops = listed(&doc);
    ops.sort();
    // GET from the document (its parameter name kept); PUT, which it lacks, declared.
    assert_eq!(
        ops,
        ["GET /shop/orders/{orderId}", "PUT /shop/orders/{orderId}"]
    );
    let item = &doc["paths"]["/shop/orders/{orderId}"];
    assert_eq!(item["get"]["summary"], "One order");
    assert_eq!(item["parameters"][0]["name"], "orderId");
    assert_eq!(item["put"]["parameters"][0]["name"], "orderId");
    assert!(item.get("delete").is_none(), "not listed");
    assert!(item.get("servers").is_none() && item["get"].get("security").is_none());
    assert_eq!(doc["info"]["version"], "1.4");
    assert_eq!(doc["info"]["description"], "Orders of the shop");
    // The backend's schemas stay (references resolve); its own auth and servers do not.
    assert_eq!(doc["components"]["schemas"]["Order"]["type"], "object");
    assert!(
        doc["components"]["securitySchemes"]
            .get("internal")
            .is_none()
    );
    assert!(doc.get("servers").is_none());
    assert_eq!(doc["security"], json!([{"apiKey": []}]));
}

#[test]
fn all_operations_take_the_whole_document_and_a_root_base_path_adds_nothing() {
    let spec = api("  basePath: /\n  backend: {service: orders}\n  auth: {anonymous: true}\n");
    let doc = document("orders", &spec, Some(&orders()));
    assert_eq!(
        listed(&doc),
        [
            "GET /health",
            "GET /orders",
            "POST /orders",
            "GET /orders/{orderId}",
            "DELETE /orders/{orderId}",
        ]
    );
    assert!(doc.get("security").is_none(), "anonymous only");
    assert!(doc["components"].get("securitySchemes").is_none());
    let spec = api(
        "  basePath: /shop\n  backend: {service: orders}\n  operations: fromOpenApi\n  auth: {anonymous: true}\n",
    );
    assert_eq!(listed(&document("x", &spec, Some(&orders()))).len(), 5);
    // Without a document, `all` has nothing to list.
    let doc = document("x", &spec, None);
    assert_eq!(doc["paths"], json!({}));
    assert!(doc.get("components").is_none());
}

#[test]
fn a_swagger_2_document_or_one_without_paths_is_not_used() {
    let spec = api(
        "  basePath: /shop\n  backend: {service: orders}\n  operations: [{method: GET, path: /orders}]\n  auth: {anonymous: true}\n",
    );
    for other in [
        json!({"swagger": "2.0", "paths": {"/orders": {"get": {"summary": "S"}}}}),
        json!({"openapi": "3.0.0"}),
    ] {
        let doc = document("x", &spec, Some(&other));
        assert_eq!(listed(&doc), ["GET /shop/orders"]);
        assert!(doc["paths"]["/shop/orders"]["get"].get("summary").is_none());
    }
}

#[test]
fn security_schemes_and_servers_follow_auth_and_hostnames() {
    let spec = api(
        "  basePath: /shop\n  hostnames: [api.shop.example, \"*.shop.example\"]\n  backend: {service: orders}\n  operations: [{method: GET, path: /orders}]\n  auth:\n    anonymous: true\n    apiKey: {header: x-shop-key}\n    jwt: {issuer: https://id.example, audiences: [shop], jwksUrl: https://id.example/jwks.json}\n",
    );
    let doc = document("shop-public", &spec, None);
    assert_eq!(
        doc["components"]["securitySchemes"],
        json!({
            "apiKey": {"type": "apiKey", "in": "header", "name": "x-shop-key"},
            "jwt": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
        })
    );
    assert_eq!(
        doc["security"],
        json!([{"apiKey": []}, {"jwt": []}, {}]),
        "either credential, or none"
    );
    assert_eq!(
        doc["servers"][0],
        json!({"url": "https://api.shop.example"})
    );
    assert_eq!(doc["servers"][1]["url"], "https://{label}.shop.example");
    assert_eq!(doc["servers"][1]["variables"]["label"]["default"], "www");
}

#[test]
fn covering_and_shapes() {
    assert!(covers("/orders/{id}", "/orders/{orderId}"));
    assert!(covers("/orders/{id}", "/orders/latest"));
    assert!(!covers("/orders/latest", "/orders/{id}"));
    assert!(!covers("/orders/{id}", "/orders"));
    assert!(!covers("/orders", "/orders/{id}"));
    assert_eq!(shape("/a/{x}/b/{y}"), "/a/{}/b/{}");
    assert_eq!(full_path("/", "/a"), "/a");
    assert_eq!(full_path("/shop", "/"), "/shop/");
}
