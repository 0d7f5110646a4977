//! mTLS between sidecars over real sockets on 127.0.0.1: a CA made in the test issues each
//! sidecar its identity; `web`'s sidecar calls `stock`'s, whose inbound listener admits
//! only mesh peers (unless `stock` is `mtls: permissive`), and `web` verifies that the
//! endpoint is exactly the identity its registration names.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use ieum_identity::{
    Ca, Credentials, Identity, KeyPair, PeerError, SpiffeId, TrustDomain, client_config,
};
use ieum_proxy::{AppProtocol, MeshConfig, Sidecar};
use rustls::ClientConfig;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

fn id(service: &str) -> SpiffeId {
    SpiffeId::service(TrustDomain::default(), service.parse().unwrap())
}

/// Credentials for `service` from `ca`, valid for `ttl`.
fn credentials(ca: &Ca, service: &str, ttl: Duration) -> Credentials {
    let key = KeyPair::generate().unwrap();
    let csr = key.csr(&id(service)).unwrap();
    let issued = ca.issue(&csr, &id(service), ttl).unwrap();
    Credentials::new(&issued.chain_pem, key).unwrap()
}

fn mesh_config(ca: &Ca, identity: &Identity) -> MeshConfig {
    MeshConfig {
        identity: identity.clone(),
        roots: ca.roots(),
        trust_domain: TrustDomain::default(),
    }
}

/// A control plane, the `stock` app behind its sidecar, and a `web` sidecar calling it;
/// both sidecars with identities from one CA.
struct Mesh {
    server: Server,
    ca: Ca,
    web: Sidecar,
    stock: Sidecar,
    web_identity: Identity,
    stock_identity: Identity,
    /// Calls that reached the `stock` app.
    hits: Arc<AtomicUsize>,
    /// `stock`'s access log lines.
    stock_log: Arc<Mutex<Vec<String>>>,
}

impl Mesh {
    /// Starts the mesh with `stock` registered under `registered` as its `identity`.
    async fn start(registered: &str) -> Mesh {
        let server = Server::start().await;
        let ca = Ca::generate(TrustDomain::default()).unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let app_addr = app(move |req| {
            h.fetch_add(1, Ordering::SeqCst);
            let path = req.uri().path().to_owned();
            async move { reply(200, format!("stock {path}")) }
        })
        .await;
        let stock_identity = Identity::new(credentials(&ca, "stock", Duration::from_secs(3600)));
        let stock = sidecar_with(client(&server, "stock", &[]), "stock", app_addr, |c| {
            c.mesh = Some(mesh_config(&ca, &stock_identity));
        })
        .await;
        assert_eq!(
            stock.identity_uri().as_deref(),
            Some("spiffe://ieum.local/svc/stock")
        );
        let stock_log = Arc::new(Mutex::new(Vec::new()));
        let l = stock_log.clone();
        stock.enable_access_log(move |line| l.lock().unwrap().push(line));
        server
            .register_with(
                "stock",
                "stock-1",
                stock.inbound_addr(),
                &[("sidecar", "ieum"), ("identity", registered)],
            )
            .await;
        let web_client = client(&server, "web", &["stock"]);
        until(&web_client, "stock's endpoint", |s| {
            s.up("stock").len() == 1
        })
        .await;
        let web_identity = Identity::new(credentials(&ca, "web", Duration::from_secs(3600)));
        let web = sidecar_with(web_client, "web", "127.0.0.1:9".parse().unwrap(), |c| {
            c.mesh = Some(mesh_config(&ca, &web_identity));
        })
        .await;
        Mesh {
            server,
            ca,
            web,
            stock,
            web_identity,
            stock_identity,
            hits,
            stock_log,
        }
    }

    /// Calls `stock` through the `web` sidecar: status, `ieum-reason`, body.
    async fn call(&self, path: &str) -> (u16, String, String) {
        let res = proxied(&self.web)
            .get(format!("http://stock{path}"))
            .send()
            .await
            .unwrap();
        let reason = res
            .headers()
            .get("ieum-reason")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (res.status().as_u16(), reason, res.text().await.unwrap())
    }

    /// A raw TLS client configuration presenting `identity` and verifying `stock`.
    fn tls_as(&self, identity: &Identity) -> Arc<ClientConfig> {
        client_config(identity, self.ca.roots(), Some(id("stock"))).unwrap()
    }

    async fn metrics(&self, sidecar: &Sidecar) -> String {
        admin(sidecar, "/metrics").await.1
    }
}

/// `request_total` of `stock`'s inbound side for `tls`/`client_id`, if it has the series.
fn inbound_requests(metrics: &str, tls: bool, client_id: &str) -> Option<u64> {
    let series = format!(
        "request_total{{direction=\"inbound\",dst_service=\"stock\",route=\"default\",\
         tls=\"{tls}\",client_id=\"{client_id}\"}} "
    );
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .map(|n| n.parse().unwrap())
}

/// Connects to `addr` with TLS as `config`, sends `GET /raw` over HTTP/1.1 and reads the
/// whole answer; any failure, handshake included, is the error.
async fn raw_exchange(config: Arc<ClientConfig>, addr: SocketAddr) -> std::io::Result<String> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(addr.ip().to_string()).unwrap();
    let mut tls = TlsConnector::from(config).connect(name, tcp).await?;
    tls.write_all(b"GET /raw HTTP/1.1\r\nhost: stock\r\nconnection: close\r\n\r\n")
        .await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out))
        .await
        .expect("an answer or an error in time")?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// A GET over a new mTLS connection to `addr` with `config`: the status and the server's
/// leaf certificate.
async fn fresh_get(
    config: Arc<ClientConfig>,
    addr: SocketAddr,
) -> Result<(u16, CertificateDer<'static>), Box<dyn std::error::Error + Send + Sync>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(addr.ip().to_string())?;
    let tls = TlsConnector::from(config).connect(name, tcp).await?;
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let req = http::Request::get("/fresh")
        .header("host", "stock")
        .body(Empty::<Bytes>::new())?;
    let res = sender.send_request(req).await?;
    let status = res.status().as_u16();
    res.into_body().collect().await?;
    Ok((status, leaf))
}

/// A client certificate resolver with no certificate: a TLS client outside the mesh.
#[derive(Debug)]
struct NoCertificate;

impl ResolvesClientCert for NoCertificate {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}

#[tokio::test]
async fn sidecars_call_each_other_over_mtls_with_the_callers_identity() {
    let mesh = Mesh::start("spiffe://ieum.local/svc/stock").await;
    let (status, reason, body) = mesh.call("/items/1").await;
    assert_eq!((status, reason.as_str()), (200, ""), "{body}");
    assert_eq!(body, "stock /items/1");

    // HTTP/2 between the sidecars too (ALPN h2), when the app calls in HTTP/2.
    let tcp = TcpStream::connect(mesh.web.outbound_addr()).await.unwrap();
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("http://stock/h2")
        .version(http::Version::HTTP_2)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = h2.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"stock /h2");
    assert_eq!(mesh.hits.load(Ordering::SeqCst), 2);

    let metrics = mesh.metrics(&mesh.stock).await;
    assert_eq!(
        inbound_requests(&metrics, true, "web"),
        Some(2),
        "{metrics}"
    );
    // No plain-text call came in (the series exists, for the permissive case).
    assert_eq!(inbound_requests(&metrics, false, ""), Some(0), "{metrics}");
    let log = mesh.stock_log.lock().unwrap().clone();
    assert_eq!(log.len(), 2, "{log:?}");
    for line in &log {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(
            (&v["tls"], &v["client_id"]),
            (&true.into(), &"web".into()),
            "{v}"
        );
    }
    // The caller's side: its own calls are outbound, no inbound series.
    let web_metrics = mesh.metrics(&mesh.web).await;
    assert!(
        web_metrics.contains(
            "request_total{direction=\"outbound\",dst_service=\"stock\",route=\"default\"} 2"
        ),
        "{web_metrics}"
    );
}

#[tokio::test]
async fn the_inbound_listener_refuses_callers_outside_the_mesh() {
    let mesh = Mesh::start("spiffe://ieum.local/svc/stock").await;
    let inbound = mesh.stock.inbound_addr();

    // Plain text: a 403 that says what to do; the app is never called.
    let res = direct()
        .get(format!("http://{inbound}/plain"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(res.headers()["ieum-reason"], "mtls-required");
    assert_eq!(res.headers()["ieum-error-source"], "local");
    let body = res.text().await.unwrap();
    assert!(
        body.starts_with("mtls-required: `stock` accepts only mesh peers over mTLS")
            && body.contains("set `mtls: permissive` on Service/stock"),
        "{body}"
    );

    // TLS without a client certificate: refused in the handshake.
    let mut anonymous = (*mesh.tls_as(&mesh.web_identity)).clone();
    anonymous.client_auth_cert_resolver = Arc::new(NoCertificate);
    let err = raw_exchange(Arc::new(anonymous), inbound)
        .await
        .expect_err("a TLS client without a certificate is refused");
    assert!(
        matches!(
            PeerError::from_io(&err),
            Some(PeerError::RefusedByPeer { .. })
        ),
        "{err}"
    );

    // A certificate of another CA (same trust domain, same name): refused.
    let other_ca = Ca::generate(TrustDomain::default()).unwrap();
    let impostor = Identity::new(credentials(&other_ca, "web", Duration::from_secs(3600)));
    let err = raw_exchange(mesh.tls_as(&impostor), inbound)
        .await
        .expect_err("a certificate from another CA is refused");
    assert!(
        matches!(
            PeerError::from_io(&err),
            Some(PeerError::RefusedByPeer { .. })
        ),
        "{err}"
    );
    assert_eq!(
        mesh.hits.load(Ordering::SeqCst),
        0,
        "nothing reached the app"
    );

    // The same raw client with a mesh certificate gets through: the refusals above are
    // about the certificates, not the client.
    let answer = raw_exchange(mesh.tls_as(&mesh.web_identity), inbound)
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("stock /raw"), "{answer}");
    assert_eq!(mesh.hits.load(Ordering::SeqCst), 1);

    let metrics = mesh.metrics(&mesh.stock).await;
    assert_eq!(inbound_requests(&metrics, false, ""), Some(1), "{metrics}");
    assert_eq!(
        inbound_requests(&metrics, true, "web"),
        Some(1),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_callee_that_is_not_the_identity_registered_is_never_sent_the_call() {
    // `stock`'s address registered as `orders`: a stale or hijacked endpoint.
    let mesh = Mesh::start("spiffe://ieum.local/svc/orders").await;
    let (status, reason, body) = mesh.call("/items/1").await;
    assert!(status == 502 || status == 503, "{status} {reason}: {body}");
    assert!(
        ["connect-failed", "circuit-blocked", "no-endpoint-ready"].contains(&reason.as_str()),
        "{reason}: {body}"
    );
    assert!(
        body.contains(
            "expected spiffe://ieum.local/svc/orders, but the peer is spiffe://ieum.local/svc/stock"
        ),
        "{body}"
    );
    assert!(
        body.contains(&format!("mTLS with {}", mesh.stock.inbound_addr())),
        "{body}"
    );
    assert_eq!(mesh.hits.load(Ordering::SeqCst), 0, "the call never left");
    let metrics = mesh.metrics(&mesh.stock).await;
    assert_eq!(inbound_requests(&metrics, true, "web"), None, "{metrics}");
}

/// Retries `f` until it holds, for at most 5 s.
async fn eventually<F, Fut>(what: &str, f: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match f().await {
            Ok(()) => return,
            Err(last) => assert!(Instant::now() < deadline, "{what}: {last}"),
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn a_permissive_service_also_admits_plain_text_and_mesh_callers_keep_their_identity() {
    let mesh = Mesh::start("spiffe://ieum.local/svc/stock").await;
    let plain_url = format!("http://{}/plain", mesh.stock.inbound_addr());
    mesh.server
        .apply(
            "apiVersion: ieum.dev/v1\nkind: Service\nmetadata: {name: stock}\nspec: {mtls: permissive}\n",
        )
        .await;
    eventually("plain text admitted", || async {
        let res = direct().get(&plain_url).send().await.unwrap();
        match res.status().as_u16() {
            200 => Ok(()),
            other => Err(format!("{other}: {}", res.text().await.unwrap())),
        }
    })
    .await;
    let (status, _, body) = mesh.call("/mesh").await;
    assert_eq!((status, body.as_str()), (200, "stock /mesh"));
    let metrics = mesh.metrics(&mesh.stock).await;
    assert!(
        inbound_requests(&metrics, false, "").unwrap() >= 1,
        "{metrics}"
    );
    assert_eq!(
        inbound_requests(&metrics, true, "web"),
        Some(1),
        "{metrics}"
    );

    // The caller's identity still decides: a policy admitting only `web` denies the
    // plain-text caller and lets `web` in.
    mesh.server
        .apply(
            "apiVersion: ieum.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: only-web}\nspec:\n  targetRef: {kind: Service, name: stock}\n  default: deny\n  rules:\n  - action: allow\n    from: [web]\n",
        )
        .await;
    eventually("the policy in effect", || async {
        let res = direct().get(&plain_url).send().await.unwrap();
        match res.status().as_u16() {
            403 => Ok(()),
            other => Err(format!("{other}: {}", res.text().await.unwrap())),
        }
    })
    .await;
    let res = direct().get(&plain_url).send().await.unwrap();
    assert_eq!(res.headers()["ieum-reason"], "authz-denied");
    let body = res.text().await.unwrap();
    assert!(
        body.contains("a caller without a mesh identity may not GET /plain"),
        "{body}"
    );
    let (status, _, body) = mesh.call("/mesh").await;
    assert_eq!((status, body.as_str()), (200, "stock /mesh"));

    // Back to strict: plain text is refused again, live.
    mesh.server
        .apply(
            "apiVersion: ieum.dev/v1\nkind: Service\nmetadata: {name: stock}\nspec: {mtls: strict}\n",
        )
        .await;
    eventually("plain text refused", || async {
        let res = direct().get(&plain_url).send().await.unwrap();
        let reason = res
            .headers()
            .get("ieum-reason")
            .map(|v| v.to_str().unwrap().to_owned());
        match reason.as_deref() {
            Some("mtls-required") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

const ONLY_ORDERS: &str = "\
apiVersion: ieum.dev/v1
kind: AuthorizationPolicy
metadata: {name: stock-callers}
spec:
  targetRef: {kind: Service, name: stock}
  default: deny
  rules:
  - action: allow
    from: [orders]
";

const ORDERS_AND_WEB: &str = "\
apiVersion: ieum.dev/v1
kind: AuthorizationPolicy
metadata: {name: stock-callers}
spec:
  targetRef: {kind: Service, name: stock}
  default: deny
  rules:
  - action: allow
    from: [orders, web]
";

#[tokio::test]
async fn policies_decide_by_the_identity_the_certificate_proves() {
    let mesh = Mesh::start("spiffe://ieum.local/svc/stock").await;
    assert_eq!(mesh.call("/x").await.0, 200, "allow-mesh by default");

    mesh.server.apply(ONLY_ORDERS).await;
    eventually("web denied", || async {
        match mesh.call("/x").await {
            (403, reason, body) if reason == "authz-denied" => {
                assert!(
                    body.starts_with("authz-denied: caller `web` may not GET /x on `stock`"),
                    "{body}"
                );
                Ok(())
            }
            (status, reason, body) => Err(format!("{status} {reason}: {body}")),
        }
    })
    .await;
    let hits = mesh.hits.load(Ordering::SeqCst);
    let metrics = mesh.metrics(&mesh.stock).await;
    assert!(
        metrics.contains("ieum_authz_denied_total{caller=\"web\",policy=\"stock-callers\"}"),
        "{metrics}"
    );

    mesh.server.apply(ORDERS_AND_WEB).await;
    eventually("web allowed", || async {
        match mesh.call("/x").await {
            (200, _, body) if body == "stock /x" => Ok(()),
            (status, reason, body) => Err(format!("{status} {reason}: {body}")),
        }
    })
    .await;
    assert_eq!(mesh.hits.load(Ordering::SeqCst), hits + 1);
}

#[tokio::test]
async fn a_renewed_certificate_is_presented_without_losing_a_request() {
    let mesh = Mesh::start("spiffe://ieum.local/svc/stock").await;
    let old = mesh.stock_identity.current();
    // A longer lifetime, so the new certificate differs in its end of validity too.
    let new = credentials(&mesh.ca, "stock", Duration::from_secs(7200));
    assert_ne!(old.not_after(), new.not_after());
    assert_ne!(old.chain()[0], new.chain()[0]);

    let stop = Arc::new(AtomicBool::new(false));
    let rotated = Arc::new(AtomicBool::new(false));
    // Through the sidecars: kept-alive connections (one client) and new ones from the app
    // (a client per request), several at once so `web` opens more mesh connections.
    let mut through = Vec::new();
    for worker in 0..4 {
        let (stop, url) = (stop.clone(), "http://stock/steady".to_owned());
        let web = proxied(&mesh.web);
        let outbound = mesh.web.outbound_addr();
        through.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(Ordering::SeqCst) {
                let client = if worker % 2 == 0 {
                    web.clone()
                } else {
                    {
                        // reqwest asks for a rustls provider even for plain HTTP: ring, as in ieum.
                        let _ = rustls::crypto::ring::default_provider().install_default();
                        reqwest::Client::builder()
                    }
                    .proxy(reqwest::Proxy::http(format!("http://{outbound}")).unwrap())
                    .build()
                    .unwrap()
                };
                match client.get(&url).send().await {
                    Ok(res) if res.status() == 200 => ok += 1,
                    Ok(res) => {
                        failed.push(format!("{}: {}", res.status(), res.text().await.unwrap()))
                    }
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        }));
    }
    // Straight to `stock`'s inbound listener: a new handshake for every request, noting
    // which certificate was presented, and whether the rotation had happened before.
    let (config, inbound) = (mesh.tls_as(&mesh.web_identity), mesh.stock.inbound_addr());
    let fresh = {
        let (stop, rotated) = (stop.clone(), rotated.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let after = rotated.load(Ordering::SeqCst);
                let got = fresh_get(config.clone(), inbound)
                    .await
                    .map_err(|e| e.to_string());
                seen.push((after, got));
            }
            seen
        })
    };

    tokio::time::sleep(Duration::from_millis(800)).await;
    mesh.stock_identity.replace(new.clone());
    rotated.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    stop.store(true, Ordering::SeqCst);

    let mut total = 0;
    for t in through {
        let (ok, failed) = t.await.unwrap();
        assert!(
            failed.is_empty(),
            "requests lost across the rotation: {failed:?}"
        );
        assert!(ok > 0);
        total += ok;
    }
    let seen = fresh.await.unwrap();
    let (mut before, mut after) = (0, 0);
    for (rotated, got) in &seen {
        let (status, leaf) = got.as_ref().expect("every new connection is served");
        assert_eq!(*status, 200);
        if *rotated {
            assert_eq!(leaf, &new.chain()[0], "a handshake after the rotation");
            after += 1;
        } else if leaf == &old.chain()[0] {
            before += 1;
        }
    }
    assert!(before > 0 && after > 0, "{before} before, {after} after");
    assert_eq!(mesh.stock_identity.current().not_after(), new.not_after());
    let metrics = mesh.metrics(&mesh.stock).await;
    let counted = inbound_requests(&metrics, true, "web").unwrap();
    assert!(
        counted >= u64::from(total) + seen.len() as u64,
        "{counted} counted for {total} + {} calls",
        seen.len()
    );
}

/// A TCP echo server.
async fn echo_server() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn opaque_tcp_between_sidecars_is_mtls_too() {
    let server = Server::start().await;
    let ca = Ca::generate(TrustDomain::default()).unwrap();
    let db_identity = Identity::new(credentials(&ca, "db", Duration::from_secs(3600)));
    let db = sidecar_with(client(&server, "db", &[]), "db", echo_server().await, |c| {
        c.app_protocol = AppProtocol::Tcp;
        c.mesh = Some(mesh_config(&ca, &db_identity));
    })
    .await;
    server
        .register_with(
            "db",
            "db-1",
            db.inbound_addr(),
            &[("identity", "spiffe://ieum.local/svc/db")],
        )
        .await;
    let web_client = client(&server, "web", &["db"]);
    until(&web_client, "db's endpoint", |s| s.up("db").len() == 1).await;
    let web_identity = Identity::new(credentials(&ca, "web", Duration::from_secs(3600)));
    let web = sidecar_with(web_client, "web", "127.0.0.1:9".parse().unwrap(), |c| {
        c.tcp = vec!["127.0.0.1:0=db".parse().unwrap()];
        c.mesh = Some(mesh_config(&ca, &web_identity));
    })
    .await;

    let mut s = TcpStream::connect(web.tcp_addrs()[0]).await.unwrap();
    s.write_all(b"PING\r\n").await.unwrap();
    s.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"PING\r\n");

    // Plain text straight to the strict inbound listener is closed unanswered.
    let mut s = TcpStream::connect(db.inbound_addr()).await.unwrap();
    s.write_all(b"PING\r\n").await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got))
        .await
        .unwrap();
    assert!(read.is_err() || got.is_empty(), "{got:?}");

    // A raw mesh client gets the echo over TLS, and the server proves it is `db`.
    let config = client_config(&web_identity, ca.roots(), Some(id("db"))).unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let tcp = TcpStream::connect(db.inbound_addr()).await.unwrap();
    let mut tls = TlsConnector::from(config).connect(name, tcp).await.unwrap();
    tls.write_all(b"PONG").await.unwrap();
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"PONG");
}
