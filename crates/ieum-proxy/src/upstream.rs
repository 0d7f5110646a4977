//! Pooled upstream clients and the per-endpoint service the balancer calls.
//!
//! HTTP/1.1 goes through hyper-util's pooled client (keep-alive). HTTP/2 has a pool of its
//! own, one multiplexed connection per endpoint: hyper-util's client queues a waiter for
//! every request while an HTTP/2 connection is being made and keeps that queue when the
//! connect fails, so requests to an endpoint that refuses connections grew memory without
//! bound. Here a request waits for a connect in progress behind an async lock and leaves
//! nothing behind when it fails or is cancelled.
//!
//! With a mesh, an endpoint registered with an `identity` is reached over mTLS
//! ([`Transport::Mesh`]): its HTTP/1.1 requests go through a pooled client of its own whose
//! connector wraps each connection in TLS (ALPN `http/1.1`), so a connection verified for
//! one identity never serves a request meant for another; its HTTP/2 connection is wrapped
//! the same way (ALPN `h2`), keyed by address and identity. A failed handshake is a
//! connect error, like a refused connection.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Request, Response, Uri, Version, header};
use http_body::Body;
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::{Builder, Client};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use ieum_resilience::classify::{ConnectError, grpc};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tower::{BoxError, Service};

use crate::body::{ProxyBody, boxed};
use crate::mtls::outbound::{Alpn, Expect, OutboundTls, Target};

/// A pooled HTTP/1.1 client for bodies of type `B`.
type HttpClient<B> = Client<HttpConnector, B>;
/// A pooled HTTP/1.1 client over mTLS, towards one endpoint.
type MeshClient<B> = Client<MeshConnector, B>;

/// Longest wait for a TCP connection to an endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Which HTTP version a request leaves in, decided per endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Wire {
    /// Another ieum sidecar, whose inbound listener speaks both: the caller's version.
    Keep,
    /// A plain HTTP server: HTTP/1.1, except gRPC, which only exists over HTTP/2.
    Http1,
    /// An HTTP/2 or gRPC server: HTTP/2 (h2c prior knowledge).
    Http2,
}

impl Wire {
    /// The wire for an endpoint registered with `protocol` and `metadata`.
    pub(crate) fn of(protocol: &str, metadata: &BTreeMap<String, String>) -> Wire {
        if metadata.get("sidecar").is_some_and(|v| v == "ieum") {
            Wire::Keep
        } else if protocol == "h2" || protocol == "grpc" {
            Wire::Http2
        } else {
            Wire::Http1
        }
    }

    /// The version `req` goes out in.
    pub(crate) fn version<B>(self, req: &Request<B>) -> Version {
        let h2 = match self {
            Wire::Keep => req.version() == Version::HTTP_2,
            Wire::Http1 => grpc::is_grpc(req),
            Wire::Http2 => true,
        };
        if h2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        }
    }
}

/// Why a request to an upstream failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpError {
    /// No connection could be made: nothing was sent.
    #[error("cannot connect to {authority}: {source}")]
    Connect {
        /// The endpoint.
        authority: Authority,
        /// The cause.
        source: BoxError,
    },
    /// An HTTP/1.1 request failed.
    #[error(transparent)]
    Http1(#[from] hyper_util::client::legacy::Error),
    /// An HTTP/2 request failed.
    #[error(transparent)]
    Http2(#[from] hyper::Error),
}

impl UpError {
    /// True when nothing reached the upstream (safe to try elsewhere).
    pub(crate) fn is_connect(&self) -> bool {
        match self {
            UpError::Connect { .. } => true,
            UpError::Http1(e) => e.is_connect(),
            UpError::Http2(_) => false,
        }
    }

    /// As the resilience layers see it: connect failures are marked as such.
    pub(crate) fn into_box(self) -> BoxError {
        if self.is_connect() {
            ConnectError(self.into()).into()
        } else {
            self.into()
        }
    }
}

/// What a request to an upstream resolves to.
pub(crate) type UpFuture =
    Pin<Box<dyn Future<Output = Result<Response<Incoming>, UpError>> + Send>>;

/// How long requests that queued behind a failed connect share its failure instead of
/// each trying again (like pending requests of a failed connect in Envoy's pools).
const SHARED_FAILURE: Duration = Duration::from_millis(250);

/// The state of one endpoint's HTTP/2 connection.
enum H2Conn<B> {
    /// Nothing yet, or the last one closed.
    None,
    /// Open (until `is_closed`).
    Ready(http2::SendRequest<B>),
    /// The last connect failed at this time, for this reason.
    Failed(tokio::time::Instant, Arc<str>),
}

/// One HTTP/2 connection slot per endpoint.
type H2Slot<B> = Arc<tokio::sync::Mutex<H2Conn<B>>>;

/// The identity an HTTP/2 connection was verified for, as part of its pool key: two
/// targets are the same when they expect the same identity.
#[derive(Clone)]
struct Verified(Arc<Target>);

impl PartialEq for Verified {
    fn eq(&self, other: &Self) -> bool {
        self.0.expected == other.0.expected
    }
}

impl Eq for Verified {}

impl Hash for Verified {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.expected.hash(state);
    }
}

/// Where an HTTP/2 connection goes: the address, and over mTLS, the identity verified.
type H2Key = (Authority, Option<Verified>);

/// HTTP/2 connections by endpoint (see the module docs).
struct H2Pool<B> {
    slots: Mutex<HashMap<H2Key, H2Slot<B>>>,
}

/// How a call to one endpoint is secured.
pub(crate) enum Transport<B> {
    /// Plain text: no identity registered, or no mesh here.
    Plain,
    /// mTLS, with the peer proving its identity.
    Mesh(Arc<MeshEndpoint<B>>),
    /// The endpoint names an identity this sidecar cannot use: every call fails to
    /// connect with this reason.
    Broken {
        /// The service the endpoint belongs to.
        service: Arc<str>,
        /// What is wrong, and what to do.
        why: Arc<str>,
    },
}

impl<B> Clone for Transport<B> {
    fn clone(&self) -> Self {
        match self {
            Transport::Plain => Transport::Plain,
            Transport::Mesh(m) => Transport::Mesh(m.clone()),
            Transport::Broken { service, why } => Transport::Broken {
                service: service.clone(),
                why: why.clone(),
            },
        }
    }
}

impl<B> std::fmt::Debug for Transport<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Plain => f.write_str("Plain"),
            Transport::Mesh(m) => write!(f, "Mesh({})", m.tls.target.expected),
            Transport::Broken { why, .. } => write!(f, "Broken({why})"),
        }
    }
}

/// What wraps connections to one endpoint in TLS: the connectors for its identity, and
/// where refusals are noted.
#[derive(Clone)]
pub(crate) struct Handshaker {
    tls: Arc<OutboundTls>,
    target: Arc<Target>,
    /// The service called, whose answers show a refusal.
    service: Arc<str>,
}

impl Handshaker {
    async fn wrap(
        &self,
        authority: &Authority,
        alpn: Alpn,
        stream: TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, BoxError> {
        self.tls
            .handshake(&self.target, &self.service, authority, alpn, stream)
            .await
    }
}

/// An endpoint reached over mTLS: its handshaker and its own HTTP/1.1 pool.
pub(crate) struct MeshEndpoint<B> {
    tls: Handshaker,
    h1: MeshClient<B>,
}

/// Service, address and identity (URI) of an mTLS endpoint.
type EndpointKey = (Arc<str>, Authority, Arc<str>);

/// The mesh side of [`Clients`]: one [`MeshEndpoint`] per service, address and identity,
/// shared by every destination that holds it and forgotten when none does.
struct MeshClients<B> {
    tls: Arc<OutboundTls>,
    endpoints: Mutex<HashMap<EndpointKey, Weak<MeshEndpoint<B>>>>,
}

/// Pooled clients for one kind of body.
pub(crate) struct Clients<B> {
    h1: HttpClient<B>,
    h2: Arc<H2Pool<B>>,
    /// mTLS towards endpoints with an identity; `None` without a mesh.
    mesh: Option<Arc<MeshClients<B>>>,
}

impl<B> std::fmt::Debug for Clients<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clients")
            .field("mesh", &self.mesh.is_some())
            .finish_non_exhaustive()
    }
}

impl<B> Clone for Clients<B> {
    fn clone(&self) -> Self {
        Clients {
            h1: self.h1.clone(),
            h2: self.h2.clone(),
            mesh: self.mesh.clone(),
        }
    }
}

/// The pool settings every HTTP/1.1 client uses.
fn h1_builder() -> Builder {
    let mut b = Client::builder(TokioExecutor::new());
    b.pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(64);
    b
}

/// The TCP connector every client uses.
fn http_connector() -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    connector
}

impl<B> Clients<B>
where
    B: Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// Clients with the pool and connect settings every listener uses, plain text only.
    pub(crate) fn new() -> Self {
        Clients {
            h1: h1_builder().build(http_connector()),
            h2: Arc::new(H2Pool {
                slots: Mutex::new(HashMap::new()),
            }),
            mesh: None,
        }
    }

    /// [`Clients::new`], and mTLS with `tls` towards endpoints with an identity.
    pub(crate) fn with_mesh(tls: Arc<OutboundTls>) -> Self {
        Clients {
            mesh: Some(Arc::new(MeshClients {
                tls,
                endpoints: Mutex::new(HashMap::new()),
            })),
            ..Clients::new()
        }
    }

    /// How to reach an endpoint of `service` at `authority` registered with `metadata`.
    pub(crate) fn transport(
        &self,
        service: &str,
        authority: &Authority,
        metadata: &BTreeMap<String, String>,
    ) -> Transport<B> {
        let Some(mesh) = &self.mesh else {
            return Transport::Plain;
        };
        match mesh.tls.expect(metadata) {
            Expect::Plain => Transport::Plain,
            Expect::Broken(why) => Transport::Broken {
                service: service.into(),
                why,
            },
            Expect::Mesh(target) => Transport::Mesh(mesh.endpoint(service, authority, target)),
        }
    }

    /// Why the latest mTLS handshake with an endpoint of `service` failed, when one did
    /// in the last seconds (and none succeeded since).
    pub(crate) fn refusal(&self, service: &str) -> Option<Arc<str>> {
        self.mesh.as_ref()?.tls.refusal(service)
    }

    /// Sends `req` (its URI absolute) in its own HTTP version, in plain text: HTTP/2 as
    /// h2c prior knowledge, anything else as HTTP/1.1.
    pub(crate) fn request(&self, req: Request<B>) -> UpFuture {
        self.send(req, &Transport::Plain)
    }

    /// Sends `req` (its URI absolute) in its own HTTP version over `transport`.
    pub(crate) fn send(&self, mut req: Request<B>, transport: &Transport<B>) -> UpFuture {
        let tls = match transport {
            Transport::Plain => None,
            Transport::Mesh(endpoint) => Some(endpoint),
            Transport::Broken { service, why } => {
                if let Some(mesh) = &self.mesh {
                    mesh.tls.note_refusal(service, why);
                }
                let authority = req
                    .uri()
                    .authority()
                    .cloned()
                    .unwrap_or_else(|| Authority::from_static("unknown"));
                let source: BoxError = why.to_string().into();
                return Box::pin(async move { Err(UpError::Connect { authority, source }) });
            }
        };
        if req.version() == Version::HTTP_2 {
            let pool = self.h2.clone();
            let tls = tls.map(|e| e.tls.clone());
            Box::pin(async move { pool.send(req, tls).await })
        } else {
            *req.version_mut() = Version::HTTP_11;
            let fut = match tls {
                Some(endpoint) => endpoint.h1.request(req),
                None => self.h1.request(req),
            };
            Box::pin(async move { fut.await.map_err(UpError::from) })
        }
    }
}

impl<B> MeshClients<B>
where
    B: Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// The endpoint of `service` at `authority` that must be `target`'s identity: the one
    /// in use when there is one, so its pool is shared.
    fn endpoint(
        &self,
        service: &str,
        authority: &Authority,
        target: Arc<Target>,
    ) -> Arc<MeshEndpoint<B>> {
        let key = (
            Arc::<str>::from(service),
            authority.clone(),
            Arc::<str>::from(target.expected.uri()),
        );
        let mut endpoints = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(live) = endpoints.get(&key).and_then(Weak::upgrade) {
            return live;
        }
        if endpoints.len() >= 64 {
            // Forget endpoints no destination holds any more, so the map follows the mesh.
            endpoints.retain(|_, e| e.strong_count() > 0);
        }
        let tls = Handshaker {
            tls: self.tls.clone(),
            target,
            service: key.0.clone(),
        };
        let mut http = http_connector();
        // The URI says `https` (the pool key), the connector speaks TLS itself.
        http.enforce_http(false);
        let endpoint = Arc::new(MeshEndpoint {
            h1: h1_builder().build(MeshConnector {
                http,
                tls: tls.clone(),
            }),
            tls,
        });
        endpoints.insert(key, Arc::downgrade(&endpoint));
        endpoint
    }
}

/// The connector of an mTLS endpoint's HTTP/1.1 pool: TCP, then the TLS handshake with
/// the peer proving the endpoint's identity.
#[derive(Clone)]
pub(crate) struct MeshConnector {
    http: HttpConnector,
    tls: Handshaker,
}

impl Service<Uri> for MeshConnector {
    type Response = TokioIo<MeshIo>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<TokioIo<MeshIo>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let authority = uri.authority().cloned();
        let connecting = self.http.call(uri);
        let tls = self.tls.clone();
        Box::pin(async move {
            let authority = authority.ok_or("the request names no upstream")?;
            let tcp = connecting.await?.into_inner();
            let stream = tls.wrap(&authority, Alpn::Http1, tcp).await?;
            Ok(TokioIo::new(MeshIo(stream)))
        })
    }
}

/// A client TLS connection as hyper-util's pool holds it.
pub(crate) struct MeshIo(tokio_rustls::client::TlsStream<TcpStream>);

impl Connection for MeshIo {
    fn connected(&self) -> Connected {
        self.0.get_ref().0.connected()
    }
}

impl AsyncRead for MeshIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for MeshIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

impl<B> H2Pool<B>
where
    B: Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    async fn send(
        &self,
        req: Request<B>,
        tls: Option<Handshaker>,
    ) -> Result<Response<Incoming>, UpError> {
        let Some(authority) = req.uri().authority().cloned() else {
            return Err(UpError::Connect {
                authority: Authority::from_static("unknown"),
                source: "the request names no upstream".into(),
            });
        };
        let key = (
            authority.clone(),
            tls.as_ref().map(|t| Verified(t.target.clone())),
        );
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            // Forget endpoints whose connection is gone, so the map follows the mesh.
            if slots.len() > 64 {
                slots.retain(|_, s| {
                    s.try_lock()
                        .map_or(true, |c| matches!(&*c, H2Conn::Ready(c) if !c.is_closed()))
                });
            }
            slots
                .entry(key)
                .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(H2Conn::None)))
                .clone()
        };
        let mut sender = {
            let mut conn = slot.lock().await;
            match &*conn {
                H2Conn::Ready(c) if !c.is_closed() => c.clone(),
                H2Conn::Failed(at, why) if at.elapsed() < SHARED_FAILURE => {
                    return Err(UpError::Connect {
                        authority,
                        source: why.to_string().into(),
                    });
                }
                _ => match connect(&authority, tls.as_ref()).await {
                    Ok(c) => {
                        *conn = H2Conn::Ready(c.clone());
                        c
                    }
                    Err(e) => {
                        let why = match &e {
                            UpError::Connect { source, .. } => source.to_string(),
                            other => other.to_string(),
                        };
                        *conn = H2Conn::Failed(tokio::time::Instant::now(), why.into());
                        return Err(e);
                    }
                },
            }
        };
        sender.ready().await?;
        Ok(sender.send_request(req).await?)
    }
}

/// A new HTTP/2 connection to `authority` (h2c prior knowledge, or over mTLS with `tls`),
/// driven by its own task.
async fn connect<B>(
    authority: &Authority,
    tls: Option<&Handshaker>,
) -> Result<http2::SendRequest<B>, UpError>
where
    B: Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let failed = |source: BoxError| UpError::Connect {
        authority: authority.clone(),
        source,
    };
    let addr = format!(
        "{}:{}",
        authority.host().trim_matches(['[', ']']),
        authority.port_u16().unwrap_or(80)
    );
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| failed("connect timed out".into()))?
        .map_err(|e| failed(e.into()))?;
    let _ = stream.set_nodelay(true);
    match tls {
        None => h2_handshake(stream).await,
        Some(tls) => {
            let stream = tls
                .wrap(authority, Alpn::Http2, stream)
                .await
                .map_err(failed)?;
            h2_handshake(stream).await
        }
    }
    .map_err(|e| failed(e.into()))
}

/// The HTTP/2 handshake over `io`; the connection is driven by its own task.
async fn h2_handshake<I, B>(io: I) -> Result<http2::SendRequest<B>, hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(io))
        .await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "HTTP/2 connection to an upstream ended");
        }
    });
    Ok(sender)
}

/// `address:port` as an authority (IPv6 in brackets).
pub(crate) fn authority(address: &str, port: u16) -> Option<Authority> {
    let s = if address.contains(':') && !address.starts_with('[') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    };
    s.parse().ok()
}

/// Points `req` at `authority` in plain text, keeping its path and query.
pub(crate) fn retarget<B>(req: &mut Request<B>, authority: &Authority) {
    retarget_scheme(req, authority, Scheme::HTTP);
}

/// Points `req` at `authority` with `scheme`, keeping its path and query.
fn retarget_scheme<B>(req: &mut Request<B>, authority: &Authority, scheme: Scheme) {
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(scheme);
    parts.authority = Some(authority.clone());
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    *req.uri_mut() = Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"));
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those `Connection` names.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<header::HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| header::HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    // `TE: trailers` is end to end in practice: gRPC needs it on every hop.
    let te_trailers = headers
        .get_all(header::TE)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.contains("trailers")));
    for n in [
        header::CONNECTION,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(n);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    if te_trailers {
        headers.insert(header::TE, header::HeaderValue::from_static("trailers"));
    }
}

/// One endpoint: the shared pooled clients aimed at one address, in its wire version,
/// over its transport.
#[derive(Debug)]
pub(crate) struct Upstream<B> {
    pub(crate) client: Clients<B>,
    pub(crate) authority: Authority,
    pub(crate) wire: Wire,
    pub(crate) transport: Transport<B>,
}

impl<B> Clone for Upstream<B> {
    fn clone(&self) -> Self {
        Upstream {
            client: self.client.clone(),
            authority: self.authority.clone(),
            wire: self.wire,
            transport: self.transport.clone(),
        }
    }
}

impl<B> Service<Request<B>> for Upstream<B>
where
    B: Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<ProxyBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let scheme = match self.transport {
            Transport::Mesh(_) => Scheme::HTTPS,
            _ => Scheme::HTTP,
        };
        retarget_scheme(&mut req, &self.authority, scheme);
        *req.version_mut() = self.wire.version(&req);
        let fut = self.client.send(req, &self.transport);
        Box::pin(async move {
            match fut.await {
                Ok(res) => {
                    let mut res = res.map(boxed);
                    strip_hop_by_hop(res.headers_mut());
                    Ok(res)
                }
                Err(e) => Err(e.into_box()),
            }
        })
    }
}
