//! Test support: a control plane in process, test apps, and sidecars wired to them.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use ieum_client::{Client, Options, Snapshot};
use ieum_control::{AppState, Auth, router};
use ieum_model::{InstanceRegistration, Name};
use ieum_proxy::{Sidecar, SidecarConfig};
use ieum_registry::{Options as RegistryOptions, Registry, SystemClock};
use ieum_store::{MemoryStore, Store};
use tokio_util::sync::CancellationToken;

/// `ieum server` in process, on a real socket.
pub(crate) struct Server {
    pub(crate) registry: Registry,
    pub(crate) addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    pub(crate) async fn start() -> Server {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let registry = Registry::start(store, Arc::new(SystemClock), RegistryOptions::default())
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let app = router(AppState {
            registry: registry.clone(),
            auth: Auth::Open,
            shutdown: stop.clone(),
        });
        let s = stop.clone();
        let task = tokio::spawn(async move {
            ieum_control::serve(listener, app, async move { s.cancelled().await })
                .await
                .unwrap();
        });
        Server {
            registry,
            addr,
            stop,
            task,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
        self.registry.shutdown().await;
    }

    /// Registers an instance of `service` at `addr` (a sidecar's inbound listener, or an
    /// app directly).
    pub(crate) async fn register(
        &self,
        service: &str,
        id: &str,
        addr: SocketAddr,
        version: Option<&str>,
    ) {
        self.register_in(service, id, addr, version, None).await;
    }

    /// Registers an instance of `service` at `addr` with registration `metadata` (a
    /// sidecar's `sidecar: ieum` and `identity`).
    pub(crate) async fn register_with(
        &self,
        service: &str,
        id: &str,
        addr: SocketAddr,
        metadata: &[(&str, &str)],
    ) {
        let mut reg = InstanceRegistration::new(addr.ip().to_string(), addr.port());
        reg.id = Some(id.into());
        reg.metadata = metadata
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        reg.ttl = ieum_model::Duration::from_secs(3600);
        self.registry
            .register(&Name::parse(service).unwrap(), reg, "test")
            .await
            .unwrap();
    }

    /// Registers an instance with a version and a zone.
    pub(crate) async fn register_in(
        &self,
        service: &str,
        id: &str,
        addr: SocketAddr,
        version: Option<&str>,
        zone: Option<&str>,
    ) {
        let mut reg = InstanceRegistration::new(addr.ip().to_string(), addr.port());
        reg.id = Some(id.into());
        reg.version = version.map(Into::into);
        reg.zone = zone.map(Into::into);
        reg.ttl = ieum_model::Duration::from_secs(3600);
        self.registry
            .register(&Name::parse(service).unwrap(), reg, "test")
            .await
            .unwrap();
    }

    /// Applies YAML documents.
    pub(crate) async fn apply(&self, yaml: &str) {
        let checked: Vec<_> = ieum_model::resource::parse_documents(yaml)
            .unwrap()
            .iter()
            .map(|r| ieum_model::resource::check(r).unwrap())
            .collect();
        self.registry.apply(checked, "test", false).await.unwrap();
    }
}

/// A push-stream client for `service`.
pub(crate) fn client(server: &Server, service: &str, calls: &[&str]) -> Client {
    Client::start(Options {
        server: server.url(),
        client: format!("{service}-sidecar"),
        service: Some(service.into()),
        calls: calls.iter().map(|s| (*s).to_owned()).collect(),
        gateway: None,
        snapshot_file: None,
        token: None,
        tls: None,
    })
}

/// Waits until the client's snapshot satisfies `f`.
pub(crate) async fn until(client: &Client, what: &str, f: impl Fn(&Snapshot) -> bool) {
    let mut rx = client.changes();
    let r = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|s| f(s))).await;
    assert!(
        r.is_ok(),
        "timed out waiting for {what}; have {:#?}",
        client.snapshot()
    );
}

/// Starts a sidecar for `service` in front of `app`, all listeners on free ports.
pub(crate) async fn sidecar(
    client: Client,
    service: &str,
    app: SocketAddr,
    zone: Option<&str>,
) -> Sidecar {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    Sidecar::start(SidecarConfig {
        service: service.into(),
        zone: zone.map(Into::into),
        app_addr: app,
        outbound_listen: any,
        inbound_listen: any,
        admin_listen: any,
        client,
        egress: ieum_proxy::Egress::Allow,
        app_protocol: ieum_proxy::AppProtocol::Http,
        tcp: Vec::new(),
        otlp: None,
        enforce_mesh_identity: false,
        mesh: None,
    })
    .await
    .unwrap()
}

/// Starts a sidecar with every option given by `config` (listeners on free ports).
pub(crate) async fn sidecar_with(
    client: Client,
    service: &str,
    app: SocketAddr,
    config: impl FnOnce(&mut SidecarConfig),
) -> Sidecar {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut c = SidecarConfig {
        service: service.into(),
        zone: None,
        app_addr: app,
        outbound_listen: any,
        inbound_listen: any,
        admin_listen: any,
        client,
        egress: ieum_proxy::Egress::Allow,
        app_protocol: ieum_proxy::AppProtocol::Http,
        tcp: Vec::new(),
        otlp: None,
        enforce_mesh_identity: false,
        mesh: None,
    };
    config(&mut c);
    Sidecar::start(c).await.unwrap()
}

/// An app answering with `handler`, on a free port.
pub(crate) async fn app<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let fut = handler(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// A response with `status` and `body`.
pub(crate) fn reply(status: u16, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(body.into())));
    *res.status_mut() = http::StatusCode::from_u16(status).unwrap();
    res
}

/// A plain HTTP client using `sidecar` as its HTTP proxy, as `HTTP_PROXY` makes apps do.
pub(crate) fn proxied(sidecar: &Sidecar) -> reqwest::Client {
    {
        // reqwest asks for a rustls provider even for plain HTTP: ring, as in ieum.
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder()
    }
    .proxy(reqwest::Proxy::http(format!("http://{}", sidecar.outbound_addr())).unwrap())
    .build()
    .unwrap()
}

/// A plain HTTP client without any proxy.
pub(crate) fn direct() -> reqwest::Client {
    {
        // reqwest asks for a rustls provider even for plain HTTP: ring, as in ieum.
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder()
    }
    .no_proxy()
    .build()
    .unwrap()
}

/// GETs an admin path of `sidecar`.
pub(crate) async fn admin(sidecar: &Sidecar, path: &str) -> (u16, String) {
    let res = direct()
        .get(format!("http://{}{path}", sidecar.admin_addr()))
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

/// An app speaking HTTP/2 without TLS (h2c prior knowledge), as gRPC servers do.
pub(crate) async fn app_h2<F, Fut, B>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let fut = handler(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
            });
        }
    });
    addr
}
