//! The mesh's certificate authority through the API, without sockets: `/v1/mesh` and
//! `/v1/certificates` with the roles of the tokens that ask.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use ieum_control::mesh::Mesh;
use ieum_control::tokens::register_admin;
use ieum_control::{AppState, Auth, router_with_mesh};
use ieum_identity::{Ca, Credentials, KeyPair, SpiffeId, TrustDomain, Workload};
use ieum_model::Timestamp;
use ieum_registry::{Options, Registry, SystemClock};
use ieum_store::{MemoryStore, Store};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const ADMIN: &str = "the-admin-secret";

async fn app(auth: Auth) -> (Router, Arc<Ca>) {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    register_admin(
        store.as_ref(),
        ADMIN,
        Timestamp::from_system(SystemTime::now()),
    )
    .await
    .unwrap();
    let registry = Registry::start(store, Arc::new(SystemClock), Options::default())
        .await
        .unwrap();
    let ca = Arc::new(Ca::generate(TrustDomain::parse("shop.example").unwrap()).unwrap());
    let mesh = Mesh::new(ca.clone(), Duration::from_secs(3600), true);
    let app = router_with_mesh(
        AppState {
            registry,
            auth,
            shutdown: CancellationToken::new(),
        },
        None,
        Some(mesh),
    );
    (app, ca)
}

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
    let res = app.clone().oneshot(req.body(body).unwrap()).await.unwrap();
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// A new token's secret.
async fn token(app: &Router, name: &str, role: &str, service: Option<&str>) -> String {
    let mut body = json!({"name": name, "role": role});
    if let Some(s) = service {
        body["service"] = json!(s);
    }
    let (status, answer) = call(app, "POST", "/v1/tokens", Some(ADMIN), Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    answer["secret"].as_str().unwrap().to_owned()
}

fn csr_for(workload: &str) -> (KeyPair, String) {
    let key = KeyPair::generate().unwrap();
    let id = SpiffeId::new(
        TrustDomain::parse("shop.example").unwrap(),
        Workload::parse_principal(workload).unwrap(),
    );
    let csr = key.csr(&id).unwrap();
    (key, csr)
}

#[tokio::test]
async fn sidecar_tokens_get_certificates_for_their_own_service_only() {
    let (app, ca) = app(Auth::Tokens {
        open_reads: true,
        internal: None,
    })
    .await;

    // The mesh settings are public: a sidecar checks the CA before it sends its token.
    let (status, info) = call(&app, "GET", "/v1/mesh", None, None).await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(info["trustDomain"], "shop.example");
    assert_eq!(info["mtls"], true);
    assert_eq!(info["fingerprint"], ca.fingerprint());
    assert_eq!(info["caPem"], ca.cert_pem());

    let orders = token(&app, "orders-1", "sidecar", Some("orders")).await;
    let (key, csr) = csr_for("orders");
    let (status, issued) = call(
        &app,
        "POST",
        "/v1/certificates",
        Some(&orders),
        Some(json!({"workload": "orders", "csr": csr})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    assert_eq!(issued["spiffeId"], "spiffe://shop.example/svc/orders");
    let creds = Credentials::new(issued["chainPem"].as_str().unwrap(), key).unwrap();
    assert_eq!(creds.id().uri(), "spiffe://shop.example/svc/orders");

    // Another service's identity: refused, saying whose token it is.
    let (_, csr) = csr_for("stock");
    let (status, err) = call(
        &app,
        "POST",
        "/v1/certificates",
        Some(&orders),
        Some(json!({"workload": "stock", "csr": csr})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{err}");
    assert_eq!(err["error"]["code"], "E1605");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("orders-1"),
        "{err}"
    );

    // The server's own identity is never issued, even to an admin.
    let (_, csr) = csr_for("system:coordinator");
    let (status, err) = call(
        &app,
        "POST",
        "/v1/certificates",
        Some(ADMIN),
        Some(json!({"workload": "system:coordinator", "csr": csr})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{err}");
    assert_eq!(err["error"]["code"], "E1603");

    // A broken CSR is a 400 naming the field.
    let (status, err) = call(
        &app,
        "POST",
        "/v1/certificates",
        Some(&orders),
        Some(json!({"workload": "orders", "csr": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(
        (
            err["error"]["code"].as_str(),
            err["error"]["field"].as_str()
        ),
        (Some("E1604"), Some("csr"))
    );

    // Without a token, off loopback: refused.
    let (_, csr) = csr_for("orders");
    let (status, _) = call(
        &app,
        "POST",
        "/v1/certificates",
        None,
        Some(json!({"workload": "orders", "csr": csr})),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // A revoked join token cannot renew.
    let (status, _) = call(&app, "DELETE", "/v1/tokens/orders-1", Some(ADMIN), None).await;
    assert!(status.is_success(), "{status}");
    let (_, csr) = csr_for("orders");
    let (status, err) = call(
        &app,
        "POST",
        "/v1/certificates",
        Some(&orders),
        Some(json!({"workload": "orders", "csr": csr})),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{err}");
    assert_eq!(err["error"]["code"], "E1014");
}

#[tokio::test]
async fn a_loopback_server_enrols_without_a_token_and_a_reader_cannot() {
    let (app, _) = app(Auth::Open).await;
    let (_, csr) = csr_for("gateway:edge");
    let (status, issued) = call(
        &app,
        "POST",
        "/v1/certificates",
        None,
        Some(json!({"workload": "gateway:edge", "csr": csr})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    assert_eq!(issued["spiffeId"], "spiffe://shop.example/gateway/edge");

    let reader = token(&app, "dashboards", "reader", None).await;
    let (_, csr) = csr_for("orders");
    let (status, err) = call(
        &app,
        "POST",
        "/v1/certificates",
        Some(&reader),
        Some(json!({"workload": "orders", "csr": csr})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{err}");
}
