//! Pooled upstream clients and the per-endpoint service the balancer calls.
//!
//! HTTP/1.1 goes through hyper-util's pooled client (keep-alive). HTTP/2 has a pool of its
//! own, one multiplexed connection per endpoint: hyper-util's client queues a waiter for
//! every request while an HTTP/2 connection is being made and keeps that queue when the
//! connect fails, so requests to an endpoint that refuses connections grew memory without
//! bound. Here a request waits for a connect in progress behind an async lock and leaves
//! nothing behind when it fails or is cancelled.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Request, Response, Uri, Version, header};
use http_body::Body;
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use ieum_resilience::classify::{ConnectError, grpc};
use tower::{BoxError, Service};

use crate::body::{ProxyBody, boxed};

/// A pooled HTTP/1.1 client for bodies of type `B`.
type HttpClient<B> = Client<HttpConnector, B>;

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

/// HTTP/2 connections by endpoint (see the module docs).
struct H2Pool<B> {
    slots: Mutex<HashMap<Authority, H2Slot<B>>>,
}

/// Pooled clients for one kind of body.
pub(crate) struct Clients<B> {
    h1: HttpClient<B>,
    h2: Arc<H2Pool<B>>,
}

impl<B> std::fmt::Debug for Clients<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clients").finish_non_exhaustive()
    }
}

impl<B> Clone for Clients<B> {
    fn clone(&self) -> Self {
        Clients {
            h1: self.h1.clone(),
            h2: self.h2.clone(),
        }
    }
}

impl<B> Clients<B>
where
    B: Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// Clients with the pool and connect settings every listener uses.
    pub(crate) fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let mut b = Client::builder(TokioExecutor::new());
        b.pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64);
        Clients {
            h1: b.build(connector),
            h2: Arc::new(H2Pool {
                slots: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Sends `req` (its URI absolute) in its own HTTP version: HTTP/2 as h2c prior
    /// knowledge, anything else as HTTP/1.1.
    pub(crate) fn request(&self, mut req: Request<B>) -> UpFuture {
        if req.version() == Version::HTTP_2 {
            let pool = self.h2.clone();
            Box::pin(async move { pool.send(req).await })
        } else {
            *req.version_mut() = Version::HTTP_11;
            let fut = self.h1.request(req);
            Box::pin(async move { fut.await.map_err(UpError::from) })
        }
    }
}

impl<B> H2Pool<B>
where
    B: Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    async fn send(&self, req: Request<B>) -> Result<Response<Incoming>, UpError> {
        let Some(authority) = req.uri().authority().cloned() else {
            return Err(UpError::Connect {
                authority: Authority::from_static("unknown"),
                source: "the request names no upstream".into(),
            });
        };
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
                .entry(authority.clone())
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
                _ => match connect(&authority).await {
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

/// A new HTTP/2 connection to `authority` (h2c prior knowledge), driven by its own task.
async fn connect<B>(authority: &Authority) -> Result<http2::SendRequest<B>, UpError>
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
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| failed("connect timed out".into()))?
        .map_err(|e| failed(e.into()))?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| failed(e.into()))?;
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

/// Points `req` at `authority`, keeping its path and query.
pub(crate) fn retarget<B>(req: &mut Request<B>, authority: &Authority) {
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(Scheme::HTTP);
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

/// One endpoint: the shared pooled clients aimed at one address, in its wire version.
#[derive(Debug)]
pub(crate) struct Upstream<B> {
    pub(crate) client: Clients<B>,
    pub(crate) authority: Authority,
    pub(crate) wire: Wire,
}

impl<B> Clone for Upstream<B> {
    fn clone(&self) -> Self {
        Upstream {
            client: self.client.clone(),
            authority: self.authority.clone(),
            wire: self.wire,
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
        retarget(&mut req, &self.authority);
        *req.version_mut() = self.wire.version(&req);
        let fut = self.client.request(req);
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
