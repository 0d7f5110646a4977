//! Pooled HTTP/1.1 clients (keep-alive) and the per-endpoint service the balancer calls.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Request, Response, Uri, header};
use http_body::Body;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use ieum_resilience::classify::ConnectError;
use tower::{BoxError, Service};

use crate::body::{ProxyBody, boxed};

/// A pooled client for bodies of type `B`.
type HttpClient<B> = Client<HttpConnector, B>;

/// Pooled clients for one kind of body: requests go out in the HTTP version they came in
/// (HTTP/2 as h2c prior knowledge), so gRPC keeps its trailers and streams end to end.
#[derive(Debug)]
pub(crate) struct Clients<B> {
    h1: HttpClient<B>,
    h2: HttpClient<B>,
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
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let builder = || {
            let mut b = Client::builder(TokioExecutor::new());
            b.pool_timer(TokioTimer::new())
                .pool_idle_timeout(Duration::from_secs(90))
                .pool_max_idle_per_host(64);
            b
        };
        Clients {
            h1: builder().build(connector.clone()),
            h2: builder()
                .http2_only(true)
                .timer(TokioTimer::new())
                .build(connector),
        }
    }

    /// Sends `req` in its own HTTP version.
    pub(crate) fn request(&self, mut req: Request<B>) -> ResponseFuture {
        if req.version() == http::Version::HTTP_2 {
            self.h2.request(req)
        } else {
            *req.version_mut() = http::Version::HTTP_11;
            self.h1.request(req)
        }
    }
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

/// One endpoint: the shared pooled client aimed at one address.
#[derive(Debug)]
pub(crate) struct Upstream<B> {
    pub(crate) client: Clients<B>,
    pub(crate) authority: Authority,
}

impl<B> Upstream<B> {
    pub(crate) fn new(client: Clients<B>, authority: Authority) -> Self {
        Upstream { client, authority }
    }
}

impl<B> Clone for Upstream<B> {
    fn clone(&self) -> Self {
        Upstream {
            client: self.client.clone(),
            authority: self.authority.clone(),
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
        let fut = self.client.request(req);
        Box::pin(async move {
            match fut.await {
                Ok(res) => {
                    let mut res = res.map(boxed);
                    strip_hop_by_hop(res.headers_mut());
                    Ok(res)
                }
                Err(e) if e.is_connect() => Err(ConnectError(e.into()).into()),
                Err(e) => Err(e.into()),
            }
        })
    }
}
