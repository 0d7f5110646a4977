//! API tokens and roles through the API, without sockets: on `MemoryStore`, on SQLite, and
//! on PostgreSQL when `IEUM_TEST_POSTGRES_URL` is set.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use ieum_control::auth::{Permission, ROUTES};
use ieum_control::tokens::{AdminToken, register_admin};
use ieum_control::{AppState, Auth, Role, router};
use ieum_model::Timestamp;
use ieum_registry::{Clock, Options, Registry};
use ieum_store::testing::TestDb;
use ieum_store::{MemoryStore, SqlStore, Store};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const ADMIN: &str = "the-admin-secret";

/// A wall clock the test moves by hand.
#[derive(Debug)]
struct TestClock(AtomicI64);

impl TestClock {
    fn new() -> Arc<TestClock> {
        Arc::new(TestClock(AtomicI64::new(
            Timestamp::from_system(SystemTime::now()).as_millis(),
        )))
    }
    fn advance(&self, d: Duration) {
        self.0
            .fetch_add(i64::try_from(d.as_millis()).unwrap(), Ordering::SeqCst);
    }
}

impl Clock for TestClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_millis(self.0.load(Ordering::SeqCst))
    }
}

struct Server {
    app: Router,
    clock: Arc<TestClock>,
}

/// A server over `store` whose `admin` token (as registered at first start) is [`ADMIN`].
async fn server(store: Arc<dyn Store>, auth: Auth) -> Server {
    let clock = TestClock::new();
    assert_eq!(
        register_admin(store.as_ref(), ADMIN, clock.now())
            .await
            .unwrap(),
        AdminToken::Registered
    );
    let registry = Registry::start(store, clock.clone(), Options::default())
        .await
        .unwrap();
    let app = router(AppState {
        registry,
        auth,
        shutdown: CancellationToken::new(),
    });
    Server { app, clock }
}

fn tokens_required() -> Auth {
    Auth::Tokens {
        open_reads: true,
        internal: None,
    }
}

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
    body: Option<Value>,
) -> Resp {
    let authorization = token.map(|t| format!("Bearer {t}"));
    call_as(app, method, uri, authorization.as_deref(), body).await
}

/// A call with this `Authorization` header.
async fn call_as(
    app: &Router,
    method: &str,
    uri: &str,
    authorization: Option<&str>,
    body: Option<Value>,
) -> Resp {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json");
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        app.clone().oneshot(req.body(body).unwrap()),
    )
    .await
    .expect("an answer within 10s")
    .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = if headers
        .get("content-type")
        .is_some_and(|c| c == "text/event-stream")
    {
        String::new()
    } else {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    Resp {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    }
}

#[track_caller]
fn refused(r: &Resp, status: StatusCode, code: &str) {
    assert_eq!(r.status, status, "{}", r.text);
    assert_eq!(r.body["error"]["code"], code, "{}", r.text);
    if status == StatusCode::UNAUTHORIZED {
        let challenge = r.headers["www-authenticate"].to_str().unwrap();
        assert!(challenge.starts_with("Bearer "), "{challenge}");
    }
}

/// Creates a token with the admin token; returns its secret.
async fn create(app: &Router, name: &str, role: &str, service: Option<&str>) -> String {
    let mut body = json!({"name": name, "role": role});
    if let Some(s) = service {
        body["service"] = json!(s);
    }
    let r = call(app, "POST", "/v1/tokens", Some(ADMIN), Some(body)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.headers["cache-control"], "no-store");
    assert_eq!(r.body["name"], name);
    assert_eq!(r.body["role"], role);
    assert_eq!(r.body["state"], "active");
    assert_eq!(r.body["createdBy"], "admin");
    let secret = r.body["secret"].as_str().unwrap().to_owned();
    assert_eq!(secret.len(), 43, "256 bits, URL-safe base64");
    secret
}

const SERVICE: &str = r#"{"resources": [{"apiVersion": "ieum.dev/v1", "kind": "Service",
    "metadata": {"name": "orders"}, "spec": {"description": "Takes orders"}},
    {"apiVersion": "ieum.dev/v1", "kind": "Route", "metadata": {"name": "orders-api"},
    "spec": {"service": "orders", "rules": [{"backends": [{"service": "orders"}]}]}}]}"#;

fn instance(id: &str) -> Value {
    json!({"id": id, "address": "10.0.0.1", "port": 8080})
}

/// The roles, on one store.
async fn roles_hold(store: Arc<dyn Store>) {
    let Server { app, .. } = server(store, tokens_required()).await;
    let reader = create(&app, "ro", "reader", None).await;
    let ci = create(&app, "ci", "operator", None).await;
    let sidecar = create(&app, "orders-sidecar", "sidecar", Some("orders")).await;
    let gateway = create(&app, "edge", "gateway", None).await;
    let apply = serde_json::from_str::<Value>(SERVICE).unwrap();

    // A reader cannot apply.
    let r = call(
        &app,
        "POST",
        "/v1/apply",
        Some(&reader),
        Some(apply.clone()),
    )
    .await;
    refused(&r, StatusCode::FORBIDDEN, "E1015");
    assert!(r.text.contains("reader"), "{}", r.text);
    // Nor can a sidecar or a gateway.
    for t in [&sidecar, &gateway] {
        let r = call(&app, "POST", "/v1/apply", Some(t), Some(apply.clone())).await;
        refused(&r, StatusCode::FORBIDDEN, "E1015");
    }
    // An operator can, and is the author in the history and on the timeline.
    let r = call(&app, "POST", "/v1/apply", Some(&ci), Some(apply.clone())).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let history = call(
        &app,
        "GET",
        "/v1/resources/Service/orders/history",
        None,
        None,
    )
    .await;
    assert_eq!(history.status, StatusCode::OK, "{}", history.text);
    assert_eq!(history.body[0]["author"], "ci", "{}", history.text);
    let history = call(
        &app,
        "GET",
        "/v1/resources/Route/orders-api/history",
        None,
        None,
    )
    .await;
    assert_eq!(history.body[0]["author"], "ci", "{}", history.text);
    for kind in ["config.changed", "service.created"] {
        let events = call(&app, "GET", &format!("/v1/events?kind={kind}"), None, None).await;
        assert_eq!(events.body[0]["author"], "ci", "{}", events.text);
        assert!(
            events.body[0]["message"].as_str().unwrap().contains("ci") || kind != "config.changed"
        );
    }
    // …but an operator cannot manage tokens.
    let r = call(
        &app,
        "POST",
        "/v1/tokens",
        Some(&ci),
        Some(json!({"name": "mine", "role": "admin"})),
    )
    .await;
    refused(&r, StatusCode::FORBIDDEN, "E1015");
    let r = call(&app, "GET", "/v1/tokens", Some(&ci), None).await;
    refused(&r, StatusCode::FORBIDDEN, "E1015");

    // A sidecar token for orders registers, heartbeats and reports for orders…
    let r = call(
        &app,
        "POST",
        "/v1/services/orders/instances",
        Some(&sidecar),
        Some(instance("o1")),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let events = call(
        &app,
        "GET",
        "/v1/events?kind=instance.registered",
        None,
        None,
    )
    .await;
    assert_eq!(
        events.body[0]["author"], "orders-sidecar",
        "{}",
        events.text
    );
    let r = call(
        &app,
        "PUT",
        "/v1/services/orders/instances/o1/heartbeat",
        Some(&sidecar),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let report = json!({"window": "10s"});
    let r = call(
        &app,
        "POST",
        "/v1/services/orders/instances/o1/telemetry",
        Some(&sidecar),
        Some(report.clone()),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    // …and a gateway reports telemetry too.
    let r = call(
        &app,
        "POST",
        "/v1/services/orders/instances/o1/telemetry",
        Some(&gateway),
        Some(report.clone()),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    // …but not for stock.
    let r = call(
        &app,
        "POST",
        "/v1/services/stock/instances",
        Some(&sidecar),
        Some(instance("s1")),
    )
    .await;
    refused(&r, StatusCode::FORBIDDEN, "E1016");
    assert_eq!(r.body["error"]["field"], "name");
    let message = r.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("`orders`") && message.contains("`stock`"),
        "{message}"
    );
    // Percent-encoding does not smuggle another service past the check.
    let r = call(
        &app,
        "POST",
        "/v1/services/st%6Fck/instances",
        Some(&sidecar),
        Some(instance("s1")),
    )
    .await;
    refused(&r, StatusCode::FORBIDDEN, "E1016");
    let r = call(
        &app,
        "POST",
        "/v1/services/stock/instances/s1/telemetry",
        Some(&sidecar),
        Some(report),
    )
    .await;
    refused(&r, StatusCode::FORBIDDEN, "E1016");
    // No stock instance came to be.
    let r = call(&app, "GET", "/v1/services/stock", None, None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    // A reader cannot act on instances; an operator can drain any.
    let r = call(
        &app,
        "PUT",
        "/v1/services/orders/instances/o1/state",
        Some(&reader),
        Some(json!({"state": "draining"})),
    )
    .await;
    refused(&r, StatusCode::FORBIDDEN, "E1015");
    let r = call(
        &app,
        "PUT",
        "/v1/services/orders/instances/o1/state",
        Some(&ci),
        Some(json!({"state": "draining"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let events = call(&app, "GET", "/v1/events?kind=instance.draining", None, None).await;
    assert_eq!(events.body[0]["author"], "ci", "{}", events.text);

    // The list shows every token, never a secret or a hash.
    let r = call(&app, "GET", "/v1/tokens", Some(ADMIN), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let names: Vec<&str> = r
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin", "ci", "edge", "orders-sidecar", "ro"]);
    for secret in [ADMIN, &reader, &ci, &sidecar, &gateway] {
        assert!(!r.text.contains(secret), "a secret is listed: {}", r.text);
        let hash = ieum_control::tokens::hash_secret(secret);
        assert!(!r.text.contains(&hash), "a hash is listed: {}", r.text);
    }
    for t in r.body.as_array().unwrap() {
        assert!(t.get("secret").is_none() && t.get("hash").is_none(), "{t}");
    }
    assert_eq!(r.body[3]["service"], "orders");

    // Without a token, reads stay open and writes are refused; wrong tokens are refused.
    let r = call(&app, "GET", "/v1/services", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = call(&app, "POST", "/v1/apply", None, Some(apply.clone())).await;
    refused(&r, StatusCode::UNAUTHORIZED, "E1010");
    let r = call(
        &app,
        "POST",
        "/v1/apply",
        Some("guess"),
        Some(apply.clone()),
    )
    .await;
    refused(&r, StatusCode::UNAUTHORIZED, "E1011");
    assert!(!r.text.contains("guess"));

    // A revoked token is refused, and listed as revoked.
    let r = call(&app, "DELETE", "/v1/tokens/ci", Some(ADMIN), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["state"], "revoked");
    assert_eq!(r.body["revokedBy"], "admin");
    let r = call(&app, "POST", "/v1/apply", Some(&ci), Some(apply.clone())).await;
    refused(&r, StatusCode::UNAUTHORIZED, "E1014");
    // Even for reads.
    let r = call(&app, "GET", "/v1/services", Some(&ci), None).await;
    refused(&r, StatusCode::UNAUTHORIZED, "E1014");
    // Its name stays taken.
    let r = call(
        &app,
        "POST",
        "/v1/tokens",
        Some(ADMIN),
        Some(json!({"name": "ci", "role": "operator"})),
    )
    .await;
    refused(&r, StatusCode::CONFLICT, "E1019");
    let r = call(&app, "DELETE", "/v1/tokens/nope", Some(ADMIN), None).await;
    refused(&r, StatusCode::NOT_FOUND, "E1404");

    // The last active admin cannot be revoked; once there is another, it can.
    let r = call(&app, "DELETE", "/v1/tokens/admin", Some(ADMIN), None).await;
    refused(&r, StatusCode::CONFLICT, "E1020");
    let root = create(&app, "root", "admin", None).await;
    let r = call(&app, "DELETE", "/v1/tokens/admin", Some(&root), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["revokedBy"], "root");
    let r = call(&app, "GET", "/v1/tokens", Some(ADMIN), None).await;
    refused(&r, StatusCode::UNAUTHORIZED, "E1014");
}

#[tokio::test]
async fn roles_hold_on_the_memory_store() {
    roles_hold(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn roles_hold_on_sqlite() {
    let db = TestDb::sqlite();
    roles_hold(Arc::new(SqlStore::open(&db.url).await.unwrap())).await;
    db.cleanup().await;
}

#[tokio::test]
async fn roles_hold_on_postgres() {
    match TestDb::postgres().await {
        Some(db) => {
            roles_hold(Arc::new(SqlStore::open(&db.url).await.unwrap())).await;
            db.cleanup().await;
        }
        None => eprintln!("IEUM_TEST_POSTGRES_URL not set: PostgreSQL run skipped"),
    }
}

#[tokio::test]
async fn expired_tokens_are_refused() {
    let Server { app, clock } = server(Arc::new(MemoryStore::new()), tokens_required()).await;
    let r = call(
        &app,
        "POST",
        "/v1/tokens",
        Some(ADMIN),
        Some(json!({"name": "short", "role": "operator", "ttl": "1h"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let expires: Timestamp = r.body["expiresAt"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        expires.as_millis() - clock.now().as_millis(),
        3_600_000,
        "{}",
        r.text
    );
    let secret = r.body["secret"].as_str().unwrap().to_owned();
    let apply = serde_json::from_str::<Value>(SERVICE).unwrap();
    let r = call(
        &app,
        "POST",
        "/v1/apply",
        Some(&secret),
        Some(apply.clone()),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    clock.advance(Duration::from_secs(3599));
    let r = call(&app, "GET", "/v1/status", Some(&secret), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    clock.advance(Duration::from_secs(1));
    let r = call(&app, "POST", "/v1/apply", Some(&secret), Some(apply)).await;
    refused(&r, StatusCode::UNAUTHORIZED, "E1013");
    assert!(r.text.contains("short"), "{}", r.text);
    let r = call(&app, "GET", "/v1/tokens", Some(ADMIN), None).await;
    assert_eq!(r.body[1]["name"], "short");
    assert_eq!(r.body[1]["state"], "expired");
}

#[tokio::test]
async fn token_requests_are_checked() {
    let Server { app, .. } = server(Arc::new(MemoryStore::new()), tokens_required()).await;
    for (body, status, code, field) in [
        (
            json!({"name": "x", "role": "root"}),
            StatusCode::BAD_REQUEST,
            "E1018",
            "role",
        ),
        (
            json!({"name": "x", "role": "sidecar"}),
            StatusCode::BAD_REQUEST,
            "E1018",
            "service",
        ),
        (
            json!({"name": "x", "role": "reader", "service": "orders"}),
            StatusCode::BAD_REQUEST,
            "E1018",
            "service",
        ),
        (
            json!({"name": "x", "role": "sidecar", "service": "Not A Name"}),
            StatusCode::BAD_REQUEST,
            "E1004",
            "service",
        ),
        (
            json!({"name": "Bad_Name", "role": "reader"}),
            StatusCode::BAD_REQUEST,
            "E1004",
            "name",
        ),
        (
            json!({"name": "x", "role": "reader", "ttl": "0s"}),
            StatusCode::BAD_REQUEST,
            "E1018",
            "ttl",
        ),
        (
            json!({"name": "x", "role": "reader", "ttl": "15"}),
            StatusCode::BAD_REQUEST,
            "E1005",
            "ttl",
        ),
        (
            json!({"name": "x", "role": "reader", "secret": "mine"}),
            StatusCode::BAD_REQUEST,
            "E1002",
            "secret",
        ),
        (
            json!({"name": "admin", "role": "reader"}),
            StatusCode::CONFLICT,
            "E1019",
            "name",
        ),
    ] {
        let r = call(&app, "POST", "/v1/tokens", Some(ADMIN), Some(body.clone())).await;
        refused(&r, status, code);
        assert_eq!(r.body["error"]["field"], field, "{body}: {}", r.text);
    }
    // A gateway may be given a service, and is then held to it.
    let edge = create(&app, "edge", "gateway", Some("orders")).await;
    let r = call(
        &app,
        "POST",
        "/v1/services/stock/instances/s1/telemetry",
        Some(&edge),
        Some(json!({"window": "10s"})),
    )
    .await;
    refused(&r, StatusCode::FORBIDDEN, "E1016");
}

#[tokio::test]
async fn on_loopback_no_token_is_local_and_a_token_is_still_checked() {
    let Server { app, .. } = server(Arc::new(MemoryStore::new()), Auth::Open).await;
    let apply = serde_json::from_str::<Value>(SERVICE).unwrap();
    // Without a token: everything, as `local` (token management too).
    let r = call(&app, "POST", "/v1/apply", None, Some(apply.clone())).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = call(
        &app,
        "POST",
        "/v1/tokens",
        None,
        Some(json!({"name": "ro", "role": "reader"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["createdBy"], "local");
    let reader = r.body["secret"].as_str().unwrap().to_owned();
    let ci = create(&app, "ci", "operator", None).await;
    // With a token: that token's role and name.
    let r = call(
        &app,
        "POST",
        "/v1/apply",
        Some(&reader),
        Some(apply.clone()),
    )
    .await;
    refused(&r, StatusCode::FORBIDDEN, "E1015");
    let r = call(
        &app,
        "POST",
        "/v1/apply",
        Some("guess"),
        Some(apply.clone()),
    )
    .await;
    refused(&r, StatusCode::UNAUTHORIZED, "E1011");
    let r = call(&app, "POST", "/v1/apply", Some(&ci), Some(apply.clone())).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let history = call(
        &app,
        "GET",
        "/v1/resources/Service/orders/history",
        None,
        None,
    )
    .await;
    let authors: Vec<&str> = history
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["author"].as_str().unwrap())
        .collect();
    // The second apply changed nothing, so only the first made a revision.
    assert_eq!(authors, ["local"], "{}", history.text);
    let r = call(
        &app,
        "PUT",
        "/v1/services/orders",
        Some(&ci),
        Some(json!({"description": "Takes orders, now"})),
    )
    .await;
    assert!(r.status.is_success(), "{}", r.text);
    let history = call(
        &app,
        "GET",
        "/v1/resources/Service/orders/history",
        None,
        None,
    )
    .await;
    assert_eq!(history.body[1]["author"], "ci", "{}", history.text);
}

#[tokio::test]
async fn reads_can_need_a_token_too() {
    let Server { app, .. } = server(
        Arc::new(MemoryStore::new()),
        Auth::Tokens {
            open_reads: false,
            internal: None,
        },
    )
    .await;
    for uri in ["/v1/services", "/v1/events", "/ui", "/v1/openapi.json"] {
        let r = call(&app, "GET", uri, None, None).await;
        refused(&r, StatusCode::UNAUTHORIZED, "E1010");
    }
    // Health stays open, for probes.
    for uri in ["/healthz", "/readyz"] {
        assert_eq!(
            call(&app, "GET", uri, None, None).await.status,
            StatusCode::OK
        );
    }
    let reader = create(&app, "ro", "reader", None).await;
    for uri in ["/v1/services", "/v1/events", "/ui", "/v1/openapi.json"] {
        let r = call(&app, "GET", uri, Some(&reader), None).await;
        assert_eq!(r.status, StatusCode::OK, "{uri}: {}", r.text);
    }
    // A browser logs in to the UI: any user name, the token as password.
    let r = call(&app, "GET", "/ui/services", None, None).await;
    let challenges: Vec<&str> = r
        .headers
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(
        challenges,
        [
            "Bearer realm=\"ieum\"",
            "Basic realm=\"ieum\", charset=\"UTF-8\""
        ]
    );
    let login = format!("Basic {}", base64(&format!("me:{reader}")));
    let r = call_as(&app, "GET", "/ui/services", Some(&login), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let wrong = format!("Basic {}", base64("me:guess"));
    let r = call_as(&app, "GET", "/ui/services", Some(&wrong), None).await;
    refused(&r, StatusCode::UNAUTHORIZED, "E1011");
    // …but a login never writes, even an admin's.
    let admin_login = format!("Basic {}", base64(&format!("me:{ADMIN}")));
    let r = call_as(
        &app,
        "POST",
        "/v1/apply",
        Some(&admin_login),
        Some(serde_json::from_str(SERVICE).unwrap()),
    )
    .await;
    refused(&r, StatusCode::UNAUTHORIZED, "E1011");
    assert!(r.headers.get_all("www-authenticate").iter().count() == 1);
    // A sidecar reads configuration, not the timeline.
    let sidecar = create(&app, "orders-sidecar", "sidecar", Some("orders")).await;
    let r = call(&app, "GET", "/v1/services", Some(&sidecar), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = call(&app, "GET", "/v1/events", Some(&sidecar), None).await;
    refused(&r, StatusCode::FORBIDDEN, "E1015");
}

#[tokio::test]
async fn the_internal_secret_only_reads() {
    let Server { app, .. } = server(
        Arc::new(MemoryStore::new()),
        Auth::Tokens {
            open_reads: false,
            internal: Some("internal-secret".into()),
        },
    )
    .await;
    let r = call(&app, "GET", "/v1/services", Some("internal-secret"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let apply = serde_json::from_str::<Value>(SERVICE).unwrap();
    let r = call(
        &app,
        "POST",
        "/v1/apply",
        Some("internal-secret"),
        Some(apply),
    )
    .await;
    refused(&r, StatusCode::FORBIDDEN, "E1015");
    assert!(r.text.contains("system:coordinator"), "{}", r.text);
}

#[tokio::test]
async fn the_admin_token_of_the_data_dir_is_registered_once() {
    let store = MemoryStore::new();
    let now = Timestamp::from_system(SystemTime::now());
    assert_eq!(
        register_admin(&store, "first", now).await.unwrap(),
        AdminToken::Registered
    );
    assert_eq!(
        register_admin(&store, "first", now).await.unwrap(),
        AdminToken::Active
    );
    assert_eq!(
        register_admin(&store, "another", now).await.unwrap(),
        AdminToken::Other
    );
    let all = store.tokens().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].name, "admin");
    assert_eq!(all[0].role, "admin");
    assert_eq!(all[0].hash, ieum_control::tokens::hash_secret("first"));
    store.revoke_token("admin", now, "root").await.unwrap();
    assert_eq!(
        register_admin(&store, "first", now).await.unwrap(),
        AdminToken::Revoked
    );
}

/// A concrete path for a route pattern.
fn concrete(pattern: &str) -> String {
    pattern
        .split('/')
        .map(|seg| match seg {
            "{*rest}" => "x".to_owned(),
            "{kind}" => "Service".to_owned(),
            "{file}" => "Service.json".to_owned(),
            "{op}" => "retry".to_owned(),
            s if s.starts_with('{') => "x".to_owned(),
            s => s.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn every_route_in_the_table_is_routed_and_enforced() {
    // On loopback without a token, every route in the table is reached: none is refused,
    // and none falls to the fallback.
    let Server { app, .. } = server(Arc::new(MemoryStore::new()), Auth::Open).await;
    for (method, pattern, _) in ROUTES {
        let uri = concrete(pattern);
        let r = call(&app, method, &uri, None, None).await;
        assert_ne!(
            r.status,
            StatusCode::FORBIDDEN,
            "{method} {uri}: {}",
            r.text
        );
        assert_ne!(
            r.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {uri}: {}",
            r.text
        );
        assert!(
            !r.text.contains("no such endpoint"),
            "{method} {uri} is not routed: {}",
            r.text
        );
    }
    // With tokens required, each role reaches exactly the routes its permissions allow.
    let Server { app, .. } = server(Arc::new(MemoryStore::new()), tokens_required()).await;
    let mut secrets = Vec::new();
    for role in Role::ALL {
        let service = matches!(role, Role::Sidecar).then_some("x");
        let name = format!("t-{role}");
        secrets.push((role, create(&app, &name, role.as_str(), service).await));
    }
    for (method, pattern, permission) in ROUTES {
        let uri = concrete(pattern);
        for (role, secret) in &secrets {
            let r = call(&app, method, &uri, Some(secret), None).await;
            if *permission == Permission::Public || role.allows(*permission) {
                assert!(
                    r.status != StatusCode::FORBIDDEN && r.status != StatusCode::UNAUTHORIZED,
                    "{role} {method} {uri}: {}",
                    r.text
                );
            } else {
                refused(&r, StatusCode::FORBIDDEN, "E1015");
            }
        }
        // Without a token: only public routes and open reads.
        let r = call(&app, method, &uri, None, None).await;
        if *permission == Permission::Public || permission.is_read() {
            assert_ne!(r.status, StatusCode::UNAUTHORIZED, "{method} {uri}");
        } else {
            refused(&r, StatusCode::UNAUTHORIZED, "E1010");
        }
    }
}

/// Standard base64 with padding, for Basic credentials.
fn base64(s: &str) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in s.as_bytes().chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(A[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}
