//! Enrolled workloads authenticate with their mesh certificate: the server's HTTPS listener
//! (real TLS on 127.0.0.1) takes a client certificate of its CA in place of a token, as
//! the workload's own `sidecar` role; renewals with the certificate alone go on only while
//! the token that enrolled it is valid; token creation and revocation are on the timeline.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ieum_control::mesh::Mesh;
use ieum_control::tokens::register_admin;
use ieum_control::{AppState, Auth, router_with_mesh};
use ieum_identity::{
    Ca, Credentials, Identity, KeyPair, ServerKey, ServerTrust, SpiffeId, TrustDomain, Workload,
};
use ieum_model::Timestamp;
use ieum_registry::{Options, Registry, SystemClock};
use ieum_store::{MemoryStore, Store};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const ADMIN: &str = "the-admin-secret";

struct Server {
    url: String,
    ca: Arc<Ca>,
    stop: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A server with tokens (not open on loopback) serving HTTPS with a certificate of its CA,
/// taking mesh client certificates.
async fn server() -> Server {
    let _ = rustls::crypto::ring::default_provider().install_default();
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
    let stop = CancellationToken::new();
    let app = router_with_mesh(
        AppState {
            registry,
            auth: Auth::Tokens {
                open_reads: true,
                internal: None,
            },
            shutdown: stop.clone(),
        },
        None,
        Some(Mesh::new(ca.clone(), Duration::from_secs(3600), true)),
    );
    let key = ServerKey::new(
        ca.server_certificate(&["127.0.0.1".to_owned()], Duration::from_secs(3600))
            .unwrap(),
    )
    .unwrap();
    let config =
        ieum_identity::api_server_config(&key, Some((ca.roots(), ca.trust_domain().clone())))
            .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let shutdown = stop.clone();
    tokio::spawn(ieum_control::serve_tls(listener, app, config, async move {
        shutdown.cancelled().await;
    }));
    Server { url, ca, stop }
}

/// A client of `server`: with `identity`'s certificate, or none.
fn client(server: &Server, identity: Option<&Identity>) -> reqwest::Client {
    let mut tls = (*ServerTrust::Roots(server.ca.roots())
        .client_config_as(identity)
        .unwrap())
    .clone();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .no_proxy()
        .tls_backend_preconfigured(tls)
        .build()
        .unwrap()
}

async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = http.request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// A certificate for `workload` asked for by `http` (with `token`, if any).
async fn enrol(
    server: &Server,
    http: &reqwest::Client,
    token: Option<&str>,
    workload: &str,
) -> Result<Credentials, (StatusCode, Value)> {
    let key = KeyPair::generate().unwrap();
    let id = SpiffeId::new(
        server.ca.trust_domain().clone(),
        Workload::parse_principal(workload).unwrap(),
    );
    let (status, answer) = send(
        http,
        reqwest::Method::POST,
        format!("{}/v1/certificates", server.url),
        token,
        Some(json!({"workload": workload, "csr": key.csr(&id).unwrap()})),
    )
    .await;
    if status != StatusCode::CREATED {
        return Err((status, answer));
    }
    Ok(Credentials::new(answer["chainPem"].as_str().unwrap(), key).unwrap())
}

fn enrolled_by(credentials: &Credentials) -> Option<String> {
    ieum_identity::enrolled_by(credentials.chain())
}

#[tokio::test]
async fn an_enrolled_sidecar_authenticates_with_its_certificate_until_its_token_is_revoked() {
    let server = server().await;
    let anonymous = client(&server, None);
    let (status, created) = send(
        &anonymous,
        reqwest::Method::POST,
        format!("{}/v1/tokens", server.url),
        Some(ADMIN),
        Some(json!({"name": "orders-1", "role": "sidecar", "service": "orders"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let join = created["joinToken"].as_str().unwrap().to_owned();

    // Enrolment with the join token; the certificate names the token that asked.
    let first = enrol(&server, &anonymous, Some(&join), "orders")
        .await
        .unwrap();
    assert_eq!(enrolled_by(&first).as_deref(), Some("orders-1"));
    let identity = Identity::new(first);
    let by_cert = client(&server, Some(&identity));

    // Without a token, the certificate acts as the service's sidecar: its own instances…
    let registration = json!({"id": "orders-a", "address": "127.0.0.1", "port": 9000});
    let (status, answer) = send(
        &by_cert,
        reqwest::Method::POST,
        format!("{}/v1/services/orders/instances", server.url),
        None,
        Some(registration.clone()),
    )
    .await;
    assert!(status.is_success(), "{status} {answer}");
    let (_, events) = send(
        &anonymous,
        reqwest::Method::GET,
        format!(
            "{}/v1/events?service=orders&kind=instance.registered",
            server.url
        ),
        None,
        None,
    )
    .await;
    assert_eq!(
        events[0]["author"], "spiffe://shop.example/svc/orders",
        "{events}"
    );
    // …but not another service's, nor configuration.
    let (status, answer) = send(
        &by_cert,
        reqwest::Method::POST,
        format!("{}/v1/services/payments/instances", server.url),
        None,
        Some(registration),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    assert_eq!(answer["error"]["code"], "E1016");
    let (status, answer) = send(
        &by_cert,
        reqwest::Method::PUT,
        format!("{}/v1/services/orders", server.url),
        None,
        Some(json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    assert_eq!(answer["error"]["code"], "E1015");
    // Without a certificate or token, nothing is written.
    let (status, _) = send(
        &anonymous,
        reqwest::Method::PUT,
        format!(
            "{}/v1/services/orders/instances/orders-a/heartbeat",
            server.url
        ),
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // A renewal with the certificate alone, for its own workload only; the new certificate
    // still names the enrolling token.
    let renewed = enrol(&server, &by_cert, None, "orders").await.unwrap();
    assert_eq!(enrolled_by(&renewed).as_deref(), Some("orders-1"));
    identity.replace(renewed);
    let (status, answer) = enrol(&server, &by_cert, None, "payments")
        .await
        .unwrap_err();
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    assert_eq!(answer["error"]["code"], "E1605");

    // Revoking the token stops renewals; the certificate serves until it expires.
    let (status, _) = send(
        &anonymous,
        reqwest::Method::DELETE,
        format!("{}/v1/tokens/orders-1", server.url),
        Some(ADMIN),
        None,
    )
    .await;
    assert!(status.is_success());
    let (status, answer) = enrol(&server, &by_cert, None, "orders").await.unwrap_err();
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    assert_eq!(answer["error"]["code"], "E1014");
    let (status, answer) = send(
        &by_cert,
        reqwest::Method::PUT,
        format!(
            "{}/v1/services/orders/instances/orders-a/heartbeat",
            server.url
        ),
        None,
        None,
    )
    .await;
    assert!(status.is_success(), "{status} {answer}");

    // Both token changes are on the service's timeline, by the admin, without the secret.
    let (_, events) = send(
        &anonymous,
        reqwest::Method::GET,
        format!(
            "{}/v1/events?service=orders&kind=token.created,token.revoked&order=asc",
            server.url
        ),
        None,
        None,
    )
    .await;
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["token.created", "token.revoked"], "{events}");
    for e in events.as_array().unwrap() {
        assert_eq!(e["author"], "admin");
        assert_eq!(e["data"]["token"], "orders-1");
        assert!(!e.to_string().contains(&join[join.len() - 20..]));
    }
}

#[tokio::test]
async fn a_certificate_from_another_ca_or_without_a_token_behind_it_is_refused() {
    let server = server().await;
    // Another CA's certificate for the same trust domain fails the handshake.
    let other = Ca::generate(TrustDomain::parse("shop.example").unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let id = SpiffeId::new(
        other.trust_domain().clone(),
        Workload::parse_principal("orders").unwrap(),
    );
    let issued = other
        .issue(&key.csr(&id).unwrap(), &id, Duration::from_secs(600))
        .unwrap();
    let foreign = Identity::new(Credentials::new(&issued.chain_pem, key).unwrap());
    let err = client(&server, Some(&foreign))
        .get(format!("{}/v1/services", server.url))
        .send()
        .await
        .expect_err("the handshake fails");
    assert!(err.is_connect() || err.is_request(), "{err:?}");

    // A certificate enrolled by a token that was then deleted from the store would renew
    // nothing; one the server's CA issued with no token (a loopback enrolment) renews.
    let key = KeyPair::generate().unwrap();
    let own_id = SpiffeId::new(
        server.ca.trust_domain().clone(),
        Workload::parse_principal("orders").unwrap(),
    );
    let issued = server
        .ca
        .issue_enrolled(
            &key.csr(&own_id).unwrap(),
            &own_id,
            Duration::from_secs(600),
            Some("never-existed"),
        )
        .unwrap();
    let orphan = Identity::new(Credentials::new(&issued.chain_pem, key).unwrap());
    let (status, answer) = enrol(&server, &client(&server, Some(&orphan)), None, "orders")
        .await
        .unwrap_err();
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    assert_eq!(answer["error"]["code"], "E1023");

    let key = KeyPair::generate().unwrap();
    let issued = server
        .ca
        .issue(
            &key.csr(&own_id).unwrap(),
            &own_id,
            Duration::from_secs(600),
        )
        .unwrap();
    let local = Identity::new(Credentials::new(&issued.chain_pem, key).unwrap());
    let renewed = enrol(&server, &client(&server, Some(&local)), None, "orders")
        .await
        .unwrap();
    assert_eq!(enrolled_by(&renewed), None);
}

#[tokio::test]
async fn a_push_stream_follows_only_its_own_service_and_no_gateway() {
    let server = server().await;
    let anonymous = client(&server, None);
    let (status, created) = send(
        &anonymous,
        reqwest::Method::POST,
        format!("{}/v1/tokens", server.url),
        Some(ADMIN),
        Some(json!({"name": "orders-1", "role": "sidecar", "service": "orders"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let join = created["joinToken"].as_str().unwrap().to_owned();
    let tls = ServerTrust::Roots(server.ca.roots())
        .client_config()
        .unwrap();
    let options = |service: &str| ieum_client::Options {
        server: server.url.clone(),
        client: format!("test as {service}"),
        service: Some(service.to_owned()),
        calls: vec![],
        gateway: None,
        snapshot_file: None,
        token: Some(join.clone()),
        tls: Some(tls.clone()),
    };
    let open = |service: &str| ieum_client::Client::start(options(service));
    let own = open("orders");
    assert!(own.wait_connected(Duration::from_secs(10)).await);
    let other = open("payments");
    assert!(!other.wait_connected(Duration::from_secs(2)).await);
    let why = other.last_error().unwrap_or_default();
    assert!(why.contains("acts for service `orders` only"), "{why}");
    // Nor may it follow what a gateway publishes.
    let as_gateway = ieum_client::Client::start(ieum_client::Options {
        gateway: Some("edge".into()),
        service: None,
        ..options("orders")
    });
    assert!(!as_gateway.wait_connected(Duration::from_secs(2)).await);
    let why = as_gateway.last_error().unwrap_or_default();
    assert!(why.contains("may not follow gateway `edge`"), "{why}");
    own.shutdown().await;
    other.shutdown().await;
    as_gateway.shutdown().await;
}
