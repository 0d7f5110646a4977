//! API keys of the gateway's consumers through the API (`/v1/apikeys`), without sockets;
//! and over a real socket, that gateways receive their hashes on the push stream and
//! sidecars never do.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use ieum_control::{AppState, Auth, router, serve};
use ieum_registry::{Options, Registry, SystemClock};
use ieum_store::MemoryStore;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const ADMIN: &str = "the-admin-secret";

const SHOP: &str = r#"
apiVersion: ieum.dev/v1
kind: Api
metadata: {name: shop}
spec: {basePath: /shop, backend: {service: orders}, auth: {apiKey: {}}}
---
apiVersion: ieum.dev/v1
kind: ApiConsumer
metadata: {name: mobile-app}
spec: {apis: [shop]}
"#;

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
    text: String,
}

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    content_type: &str,
    body: &str,
) -> Resp {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", content_type);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    Resp {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    }
}

async fn json_call(
    app: &Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Value,
) -> Resp {
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    call(app, method, uri, token, "application/json", &body).await
}

#[track_caller]
fn refused(r: &Resp, status: StatusCode, code: &str, field: &str) {
    assert_eq!(r.status, status, "{}", r.text);
    assert_eq!(r.body["error"]["code"], code, "{}", r.text);
    assert_eq!(
        r.body["error"]["field"].as_str().unwrap_or(""),
        field,
        "{}",
        r.text
    );
}

/// SHA-256 as lowercase hex, computed here rather than with the server's own helper.
fn sha256_hex(s: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, s.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A server (admin secret [`ADMIN`], open reads) with the shop's `Api` and `ApiConsumer`
/// applied, and `operator` and `reader` tokens: (app, registry, operator, reader).
async fn server() -> (Router, Registry, CancellationToken, String, String) {
    let registry = Registry::start(
        Arc::new(MemoryStore::new()),
        Arc::new(SystemClock),
        Options::default(),
    )
    .await
    .unwrap();
    let stop = CancellationToken::new();
    let app = router(AppState {
        registry: registry.clone(),
        auth: Auth::Token(ADMIN.into()),
        shutdown: stop.clone(),
    });
    let r = call(
        &app,
        "POST",
        "/v1/apply",
        Some(ADMIN),
        "application/yaml",
        SHOP,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let mut secrets = Vec::new();
    for role in ["operator", "reader"] {
        let r = json_call(
            &app,
            "POST",
            "/v1/tokens",
            Some(ADMIN),
            json!({"name": role, "role": role}),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        secrets.push(r.body["secret"].as_str().unwrap().to_owned());
    }
    let reader = secrets.pop().unwrap();
    let operator = secrets.pop().unwrap();
    (app, registry, stop, operator, reader)
}

/// `POST /v1/apikeys` for `consumer` as `token`, expected to succeed: the answer.
async fn create(app: &Router, token: &str, consumer: &str) -> Value {
    let r = json_call(
        app,
        "POST",
        "/v1/apikeys",
        Some(token),
        json!({"consumer": consumer}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.headers["cache-control"], "no-store");
    r.body
}

#[tokio::test]
async fn keys_are_answered_once_stored_as_hashes_listed_without_them_and_revoked() {
    let (app, registry, _stop, operator, reader) = server().await;

    // Bad requests, each with its code and field.
    let r = json_call(
        &app,
        "POST",
        "/v1/apikeys",
        Some(&operator),
        json!({"consumer": "web"}),
    )
    .await;
    refused(&r, StatusCode::NOT_FOUND, "E3405", "consumer");
    assert!(r.text.contains("no ApiConsumer `web`"), "{}", r.text);
    let r = json_call(
        &app,
        "POST",
        "/v1/apikeys",
        Some(&operator),
        json!({"consumer": "Web_App"}),
    )
    .await;
    refused(&r, StatusCode::BAD_REQUEST, "E1004", "consumer");
    let r = json_call(
        &app,
        "POST",
        "/v1/apikeys",
        Some(&operator),
        json!({"consumer": "mobile-app", "key": "ieumk_mine"}),
    )
    .await;
    refused(&r, StatusCode::BAD_REQUEST, "E1002", "key");
    let r = json_call(
        &app,
        "POST",
        "/v1/apikeys",
        Some(&operator),
        json!({"consumer": "mobile-app", "ttl": "0s"}),
    )
    .await;
    refused(&r, StatusCode::BAD_REQUEST, "E3404", "ttl");
    // None of them stored anything.
    let r = json_call(&app, "GET", "/v1/resources/ApiKey", None, Value::Null).await;
    assert_eq!(r.body, json!([]), "{}", r.text);

    // Created: the key, this once.
    let created = create(&app, &operator, "mobile-app").await;
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    let secret = key.strip_prefix("ieumk_").expect("ieumk_ and the secret");
    assert_eq!(secret.len(), 43, "256 bits in URL-safe base64: {key}");
    assert!(
        secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "{key}"
    );
    assert_eq!(created["consumer"], "mobile-app");
    assert_eq!(created["prefix"], secret[..6]);
    let suffix = id
        .strip_prefix("mobile-app-")
        .expect("the consumer's name, then hex");
    assert_eq!(suffix.len(), 6, "{id}");
    assert!(
        suffix
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{id}"
    );
    assert!(created.get("expiresAt").is_none(), "{created}");

    // Stored as an ApiKey resource with the key's SHA-256 and never the key.
    let r = json_call(
        &app,
        "GET",
        &format!("/v1/resources/ApiKey/{id}"),
        None,
        Value::Null,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["spec"]["sha256"], sha256_hex(&key), "{}", r.text);
    assert_eq!(r.body["spec"]["consumer"], "mobile-app");
    assert_eq!(r.body["spec"]["prefix"], secret[..6]);
    assert_eq!(r.body["metadata"]["author"], "operator");
    assert_eq!(r.body["metadata"]["revision"], 1);
    assert!(
        !r.text.contains(secret),
        "the key is not stored: {}",
        r.text
    );
    // Its creation is on the timeline, as every configuration change is; without the key.
    let r = json_call(&app, "GET", "/v1/events?limit=100", None, Value::Null).await;
    assert!(
        r.text.contains(&format!("ApiKey/{id} created by operator")),
        "{}",
        r.text
    );
    assert!(!r.text.contains(secret), "{}", r.text);

    // Another key of the same consumer, valid for a while: another id, another key.
    let r = json_call(
        &app,
        "POST",
        "/v1/apikeys",
        Some(&operator),
        json!({"consumer": "mobile-app", "ttl": "90d"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let second = r.body;
    assert_ne!(second["id"], created["id"]);
    assert_ne!(second["key"], created["key"]);
    assert!(second["expiresAt"].is_string(), "{second}");
    let second_id = second["id"].as_str().unwrap();
    let r = json_call(
        &app,
        "GET",
        &format!("/v1/resources/ApiKey/{second_id}"),
        None,
        Value::Null,
    )
    .await;
    assert_eq!(
        r.body["spec"]["expiresAt"], second["expiresAt"],
        "{}",
        r.text
    );

    // Listed without keys or hashes, to operators only.
    let r = json_call(&app, "GET", "/v1/apikeys", Some(&operator), Value::Null).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let list = r.body.as_array().unwrap();
    assert_eq!(list.len(), 2, "{}", r.text);
    let ids: BTreeSet<&str> = list.iter().map(|k| k["id"].as_str().unwrap()).collect();
    assert_eq!(ids, BTreeSet::from([id.as_str(), second_id]));
    for k in list {
        assert_eq!(k["consumer"], "mobile-app");
        assert_eq!(k["createdBy"], "operator");
        assert!(k["createdAt"].is_string(), "{k}");
        assert!(k["prefix"].is_string(), "{k}");
    }
    for hidden in [
        "sha256".to_owned(),
        sha256_hex(&key),
        secret.to_owned(),
        second["key"].as_str().unwrap()["ieumk_".len()..].to_owned(),
    ] {
        assert!(!r.text.contains(&hidden), "{hidden} listed: {}", r.text);
    }
    let r = json_call(
        &app,
        "GET",
        "/v1/apikeys?consumer=mobile-app",
        Some(&operator),
        Value::Null,
    )
    .await;
    assert_eq!(r.body.as_array().unwrap().len(), 2, "{}", r.text);
    let r = json_call(
        &app,
        "GET",
        "/v1/apikeys?consumer=web",
        Some(&operator),
        Value::Null,
    )
    .await;
    assert_eq!(r.body, json!([]), "{}", r.text);
    let r = json_call(
        &app,
        "GET",
        "/v1/apikeys?consumer=Web_App",
        Some(&operator),
        Value::Null,
    )
    .await;
    refused(&r, StatusCode::BAD_REQUEST, "E1006", "consumer");
    let r = json_call(
        &app,
        "GET",
        "/v1/apikeys?owner=x",
        Some(&operator),
        Value::Null,
    )
    .await;
    refused(&r, StatusCode::BAD_REQUEST, "E1006", "owner");

    // Gateways get the hashes; no sidecar does, whatever it calls.
    let gateway: BTreeSet<String> = registry
        .gateway_resources()
        .await
        .unwrap()
        .into_iter()
        .map(|r| format!("{}/{}", r.kind, r.name))
        .collect();
    assert!(gateway.contains(&format!("ApiKey/{id}")), "{gateway:?}");
    assert!(
        gateway.contains(&format!("ApiKey/{second_id}")),
        "{gateway:?}"
    );
    let everything: BTreeSet<String> = ["mobile-app", "shop", "orders", &id]
        .into_iter()
        .map(str::to_owned)
        .collect();
    let sidecar = registry.resources_for(&everything).await.unwrap();
    assert!(sidecar.iter().all(|r| r.kind != "ApiKey"), "{sidecar:?}");

    // `apply` refuses API keys: one alone, or among others (all or nothing), JSON or YAML.
    let forged = json!({"apiVersion": "ieum.dev/v1", "kind": "ApiKey",
        "metadata": {"name": id},
        "spec": {"consumer": "mobile-app", "sha256": sha256_hex("ieumk_chosen"), "prefix": "chosen"}});
    let r = json_call(
        &app,
        "POST",
        "/v1/apply",
        Some(&operator),
        json!({"resources": [forged]}),
    )
    .await;
    refused(&r, StatusCode::BAD_REQUEST, "E3406", "kind");
    assert!(r.text.contains("ieum apikey create CONSUMER"), "{}", r.text);
    let service = json!({"apiVersion": "ieum.dev/v1", "kind": "Service",
        "metadata": {"name": "billing"}, "spec": {}});
    let r = json_call(
        &app,
        "POST",
        "/v1/apply?dryRun=true",
        Some(ADMIN),
        json!({"resources": [service, forged]}),
    )
    .await;
    refused(&r, StatusCode::BAD_REQUEST, "E3406", "kind");
    let r = json_call(
        &app,
        "POST",
        "/v1/apply",
        Some(ADMIN),
        json!({"resources": [service, forged]}),
    )
    .await;
    refused(&r, StatusCode::BAD_REQUEST, "E3406", "kind");
    let yaml = format!(
        "apiVersion: ieum.dev/v1\nkind: ApiKey\nmetadata: {{name: new-key}}\nspec: {{consumer: mobile-app, sha256: {}, prefix: x}}\n",
        sha256_hex("x")
    );
    let r = call(
        &app,
        "POST",
        "/v1/apply",
        Some(ADMIN),
        "application/yaml",
        &yaml,
    )
    .await;
    refused(&r, StatusCode::BAD_REQUEST, "E3406", "kind");
    // Nothing changed: the key's hash is the one the server made, and billing is not there.
    let r = json_call(
        &app,
        "GET",
        &format!("/v1/resources/ApiKey/{id}"),
        None,
        Value::Null,
    )
    .await;
    assert_eq!(r.body["spec"]["sha256"], sha256_hex(&key), "{}", r.text);
    assert_eq!(r.body["metadata"]["revision"], 1);
    let r = json_call(
        &app,
        "GET",
        "/v1/resources/ApiKey/new-key",
        None,
        Value::Null,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    let r = json_call(
        &app,
        "GET",
        "/v1/resources/Service/billing",
        None,
        Value::Null,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);

    // Readers and callers without a token manage no keys.
    let r = json_call(
        &app,
        "POST",
        "/v1/apikeys",
        Some(&reader),
        json!({"consumer": "mobile-app"}),
    )
    .await;
    refused(&r, StatusCode::FORBIDDEN, "E1015", "");
    let r = json_call(&app, "GET", "/v1/apikeys", Some(&reader), Value::Null).await;
    refused(&r, StatusCode::FORBIDDEN, "E1015", "");
    let r = json_call(
        &app,
        "DELETE",
        &format!("/v1/apikeys/{id}"),
        Some(&reader),
        Value::Null,
    )
    .await;
    refused(&r, StatusCode::FORBIDDEN, "E1015", "");
    let r = json_call(
        &app,
        "POST",
        "/v1/apikeys",
        None,
        json!({"consumer": "mobile-app"}),
    )
    .await;
    refused(&r, StatusCode::UNAUTHORIZED, "E1010", "");
    let r = json_call(&app, "GET", "/v1/apikeys", None, Value::Null).await;
    refused(&r, StatusCode::UNAUTHORIZED, "E1010", "");
    let r = json_call(&app, "GET", "/v1/apikeys", Some(ADMIN), Value::Null).await;
    assert_eq!(
        r.body.as_array().unwrap().len(),
        2,
        "the reader created nothing: {}",
        r.text
    );

    // Revoked: the resource is gone, with its deletion in its history.
    let r = json_call(
        &app,
        "DELETE",
        &format!("/v1/apikeys/{id}"),
        Some(&operator),
        Value::Null,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["id"], id.as_str());
    assert_eq!(r.body["consumer"], "mobile-app");
    assert_eq!(r.body["revokedBy"], "operator");
    assert!(r.body["revokedAt"].is_string(), "{}", r.text);
    assert!(!r.text.contains("sha256"), "{}", r.text);
    let r = json_call(
        &app,
        "GET",
        &format!("/v1/resources/ApiKey/{id}"),
        None,
        Value::Null,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    let r = json_call(
        &app,
        "GET",
        &format!("/v1/resources/ApiKey/{id}/history"),
        None,
        Value::Null,
    )
    .await;
    let revisions = r.body.as_array().unwrap();
    assert_eq!(revisions.len(), 2, "{}", r.text);
    assert_eq!(revisions[1]["deleted"], true, "{}", r.text);
    assert!(
        registry
            .gateway_resources()
            .await
            .unwrap()
            .iter()
            .all(|r| r.name != id),
        "a revoked key leaves what gateways hold"
    );
    let r = json_call(&app, "GET", "/v1/apikeys", Some(&operator), Value::Null).await;
    assert_eq!(r.body.as_array().unwrap().len(), 1, "{}", r.text);
    assert_eq!(r.body[0]["id"], second_id);
    let r = json_call(
        &app,
        "DELETE",
        &format!("/v1/apikeys/{id}"),
        Some(&operator),
        Value::Null,
    )
    .await;
    refused(&r, StatusCode::NOT_FOUND, "E1404", "");
    let r = json_call(
        &app,
        "DELETE",
        "/v1/apikeys/Not_An_Id",
        Some(&operator),
        Value::Null,
    )
    .await;
    refused(&r, StatusCode::BAD_REQUEST, "E1004", "id");

    // The endpoints are in the OpenAPI document.
    let r = json_call(&app, "GET", "/v1/openapi.json", None, Value::Null).await;
    let paths = &r.body["paths"];
    assert!(paths["/v1/apikeys"]["post"].is_object(), "{paths}");
    assert!(paths["/v1/apikeys"]["get"].is_object(), "{paths}");
    assert!(paths["/v1/apikeys/{id}"]["delete"].is_object(), "{paths}");
}

/// Waits until `client`'s snapshot satisfies `ok`.
async fn until(
    client: &ieum_client::Client,
    what: &str,
    ok: impl Fn(&ieum_client::Snapshot) -> bool,
) -> Arc<ieum_client::Snapshot> {
    let mut changes = client.changes();
    let wait = async {
        loop {
            let s = changes.borrow_and_update().clone();
            if ok(&s) {
                return s;
            }
            changes.changed().await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{what} within 10s; have {:?}",
                client.snapshot().resources.keys()
            )
        })
}

#[tokio::test]
async fn gateways_receive_keys_on_the_push_stream_and_sidecars_never() {
    let (app, _registry, stop, operator, _) = server().await;
    let before = create(&app, &operator, "mobile-app").await;
    let before_id = format!("ApiKey/{}", before["id"].as_str().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let s = stop.clone();
    tokio::spawn(serve(
        listener,
        app.clone(),
        async move { s.cancelled().await },
    ));
    let options = |gateway: Option<&str>, service: Option<&str>| ieum_client::Options {
        server: url.clone(),
        client: "apikeys test".into(),
        service: service.map(str::to_owned),
        calls: vec!["orders".into()],
        gateway: gateway.map(str::to_owned),
        snapshot_file: None,
        token: Some(ADMIN.into()),
        tls: None,
    };
    let gateway = ieum_client::Client::start(options(Some("edge"), None));
    let sidecar = ieum_client::Client::start(options(None, Some("orders")));
    // In the gateway's snapshot, with its hash.
    let snap = until(&gateway, "the key in the snapshot", |s| {
        s.resources.contains_key(&before_id)
    })
    .await;
    assert_eq!(snap.resources[&before_id].spec["consumer"], "mobile-app");
    assert_eq!(
        snap.resources[&before_id].spec["sha256"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
    // A key created later arrives as a delta; a revoked one leaves.
    let after = create(&app, &operator, "mobile-app").await;
    let after_id = format!("ApiKey/{}", after["id"].as_str().unwrap());
    let key = after["key"].as_str().unwrap();
    let snap = until(&gateway, "the new key", |s| {
        s.resources.contains_key(&after_id)
    })
    .await;
    assert_eq!(snap.resources[&after_id].spec["sha256"], sha256_hex(key));
    let r = json_call(
        &app,
        "DELETE",
        &format!("/v1/apikeys/{}", before["id"].as_str().unwrap()),
        Some(&operator),
        Value::Null,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    until(&gateway, "the revocation", |s| {
        !s.resources.contains_key(&before_id)
    })
    .await;
    // The sidecar of the service the API fronts followed all along and holds none: a route
    // for its service, applied after the keys, reaches it, and no key came before.
    let route = "apiVersion: ieum.dev/v1\nkind: Route\nmetadata: {name: orders-api}\nspec: {service: orders, rules: [{backends: [{service: orders}]}]}\n";
    let r = call(
        &app,
        "POST",
        "/v1/apply",
        Some(&operator),
        "application/yaml",
        route,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let snap = until(&sidecar, "the route", |s| {
        s.resources.contains_key("Route/orders-api")
    })
    .await;
    let held: Vec<String> = snap.resources.keys().cloned().collect();
    assert!(held.iter().all(|k| !k.starts_with("ApiKey/")), "{held:?}");
    gateway.shutdown().await;
    sidecar.shutdown().await;
    stop.cancel();
}
