//! Opaque TCP: connections piped byte for byte, for protocols the proxy does not parse
//! (PostgreSQL, Redis, anything with its own framing).
//!
//! - **Outbound** ([`TcpForward`], `--tcp 127.0.0.1:15432=postgres`): a listener of its
//!   own per forward; each accepted connection goes to an endpoint of the service picked
//!   by the balancer (P2C over connect latency, with per-endpoint breakers, so an endpoint
//!   that refuses connections stops being picked), within [`CONNECT_TIMEOUT`].
//!   Endpoints come from the snapshot and follow it, whatever protocol they registered.
//! - **Inbound** (`--app-protocol tcp`): the inbound listener pipes every connection to the
//!   app instead of speaking HTTP.
//! - **mTLS** (with a mesh): a forward wraps its connection in TLS towards an endpoint
//!   registered with an `identity`, verifying it (not when `:PORT` dials another port than
//!   the registered one: that is not the sidecar); the inbound listener requires a mesh
//!   client certificate, or, for an `mtls: permissive` service, also takes plain text — a
//!   client that stays silent for `TCP_FIRST_BYTE` (a protocol where the server speaks
//!   first) counts as plain text there.
//!
//! Metrics are Linkerd's `tcp_*` with `peer="dst"`, `direction` and `dst_service`:
//! `tcp_open_total`, `tcp_close_total`, `tcp_open_connections`, `tcp_read_bytes_total`
//! (from the destination), `tcp_write_bytes_total` (to it), counted as bytes move, plus
//! `tcp_connect_errors_total`. A piped connection is not a request: a drain stops accepting
//! new ones but does not wait for open ones.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use ieum_client::Snapshot;
use ieum_resilience::balance::{BalanceConfig, Balancer, BalancerHandle, Endpoint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower::{BoxError, Service, ServiceExt};

use crate::Shared;
use crate::metrics::{Direction, TcpDst};
use crate::mtls::inbound::{Accepted, TCP_FIRST_BYTE};
use crate::mtls::outbound::{Alpn, Expect, OutboundTls};
use crate::mtls::{Sniffed, Stream};

/// Longest wait for a destination to accept a connection (including the wait for an
/// available endpoint).
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// An opaque TCP listener for the app: `LISTEN=SERVICE[:PORT]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpForward {
    /// Where the app connects, e.g. `127.0.0.1:15432`.
    pub listen: SocketAddr,
    /// The service whose endpoints receive the connections.
    pub service: String,
    /// The port to connect to on each endpoint's address, when it is not the registered
    /// one (an instance registered for HTTP that also serves this protocol elsewhere).
    pub port: Option<u16>,
}

impl FromStr for TcpForward {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let usage = "expected LISTEN=SERVICE[:PORT], e.g. 127.0.0.1:15432=postgres";
        let (listen, target) = s.split_once('=').ok_or_else(|| format!("`{s}`: {usage}"))?;
        let listen: SocketAddr = listen
            .parse()
            .map_err(|_| format!("`{listen}` is not an IP address and port: {usage}"))?;
        let (service, port) = match target.split_once(':') {
            Some((name, port)) => (
                name,
                Some(
                    port.parse::<u16>()
                        .ok()
                        .filter(|p| *p != 0)
                        .ok_or_else(|| format!("`{port}` is not a port: {usage}"))?,
                ),
            ),
            None => (target, None),
        };
        let service = ieum_model::Name::parse(service)
            .map_err(|m| format!("`{service}`: service name {m}"))?;
        Ok(TcpForward {
            listen,
            service: service.to_string(),
            port,
        })
    }
}

/// Connects to one endpoint; the balancer's view of it.
#[derive(Debug, Clone)]
struct Connect {
    addr: String,
    /// mTLS towards a sidecar with an identity: the outbound TLS, what to expect, and the
    /// service (for refusal notes).
    tls: Option<(Arc<OutboundTls>, Expect, Arc<str>)>,
}

impl Service<Request<()>> for Connect {
    type Response = Response<Stream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Stream>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<()>) -> Self::Future {
        let addr = self.addr.clone();
        let tls = self.tls.clone();
        Box::pin(async move {
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&addr))
                .await
                .map_err(|_| format!("connecting to {addr} timed out"))??;
            let _ = stream.set_nodelay(true);
            let stream = match tls {
                None | Some((_, Expect::Plain, _)) => Stream::Plain(stream),
                Some((_, Expect::Broken(why), _)) => return Err(why.to_string().into()),
                Some((tls, Expect::Mesh(target), service)) => {
                    let authority: http::uri::Authority = addr.parse()?;
                    let s = tls
                        .handshake(&target, &service, &authority, Alpn::Opaque, stream)
                        .await?;
                    Stream::Tls(Box::new(s.into()))
                }
            };
            Ok(Response::new(stream))
        })
    }
}

/// Id, address, weight, zone and the identity expected of an endpoint.
type Signature = (String, String, u32, Option<String>, Option<String>);

/// One outbound forward: its listener's address, balancer and metrics.
pub(crate) struct Forward {
    pub(crate) spec: TcpForward,
    /// Where it listens (the port chosen when `spec.listen` had port 0).
    pub(crate) local: SocketAddr,
    balancer: Balancer<Connect>,
    handle: BalancerHandle<Connect>,
    last: Mutex<Vec<Signature>>,
    metrics: Arc<TcpDst>,
    /// mTLS towards endpoints with an identity, with a mesh.
    tls: Option<Arc<OutboundTls>>,
}

impl Forward {
    pub(crate) fn new(
        spec: TcpForward,
        local: SocketAddr,
        caller: &str,
        zone: Option<Arc<str>>,
        snapshot: &Snapshot,
        metrics: Arc<TcpDst>,
        tls: Option<Arc<OutboundTls>>,
    ) -> Forward {
        let mut config = BalanceConfig::new(caller, spec.service.as_str());
        config.local_zone = zone;
        let (eps, signature) = endpoints(&spec, snapshot, tls.as_ref());
        let (balancer, handle) = Balancer::new(config, eps);
        Forward {
            spec,
            local,
            balancer,
            handle,
            last: Mutex::new(signature),
            metrics,
            tls,
        }
    }

    /// Follows the snapshot's endpoints (the balancer keeps the state of those that stay).
    pub(crate) fn update(&self, snapshot: &Snapshot) {
        let (eps, signature) = endpoints(&self.spec, snapshot, self.tls.as_ref());
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if *last != signature {
            self.handle.update(eps);
            *last = signature;
        }
    }
}

fn endpoints(
    spec: &TcpForward,
    snapshot: &Snapshot,
    tls: Option<&Arc<OutboundTls>>,
) -> (Vec<Endpoint<Connect>>, Vec<Signature>) {
    let service: Arc<str> = spec.service.as_str().into();
    let eps: Vec<Endpoint<Connect>> = snapshot
        .up(&spec.service)
        .into_iter()
        .filter_map(|e| {
            let authority = crate::upstream::authority(&e.address, spec.port.unwrap_or(e.port))?;
            // Another port than the registered one is not the sidecar: no mTLS there.
            let tls = tls
                .filter(|_| spec.port.is_none())
                .map(|t| (t.clone(), t.expect(&e.metadata), service.clone()));
            let mut ep = Endpoint::new(
                e.id.as_str(),
                Connect {
                    addr: authority.to_string(),
                    tls,
                },
            )
            .weight(e.weight);
            if !e.zone.is_empty() {
                ep = ep.zone(e.zone.as_str());
            }
            Some(ep)
        })
        .collect();
    let signature = eps
        .iter()
        .map(|e| {
            (
                e.id.to_string(),
                e.service.addr.clone(),
                e.weight,
                e.zone.as_deref().map(str::to_owned),
                e.service
                    .tls
                    .as_ref()
                    .map(|(_, expect, _)| format!("{expect:?}")),
            )
        })
        .collect();
    (eps, signature)
}

/// Accepts on `listener` until `stop`, handing each connection to `pipe`.
fn accept_loop<F, Fut>(listener: TcpListener, stop: CancellationToken, pipe: F)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = stop.cancelled() => break,
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(pipe(stream));
        }
    });
}

/// Serves an outbound forward.
pub(crate) fn serve_forward(
    shared: Arc<Shared>,
    forward: Arc<Forward>,
    listener: TcpListener,
    stop: CancellationToken,
) {
    accept_loop(listener, stop, move |down| {
        let (shared, forward) = (shared.clone(), forward.clone());
        async move {
            let _src = shared.metrics.tcp_outbound.open();
            let service = &forward.spec.service;
            if !shared.client.snapshot().services.contains_key(service) {
                // Met for the first time: subscribe (bounded wait), then take its endpoints.
                let _ = shared.client.endpoints(service).await;
                forward.update(&shared.client.snapshot());
            }
            let connect = async {
                let mut b = forward.balancer.clone();
                b.ready().await?;
                b.call(Request::new(())).await
            };
            let up = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
                Ok(Ok(res)) => res.into_body(),
                Ok(Err(e)) => {
                    forward.metrics.connect_error();
                    tracing::debug!(%service, error = %e, "no connection to the destination");
                    return;
                }
                Err(_) => {
                    forward.metrics.connect_error();
                    tracing::debug!(%service, "no endpoint accepted a connection in time");
                    return;
                }
            };
            splice(down, up, &forward.metrics).await;
        }
    });
}

/// Serves the inbound listener for an app that speaks opaque TCP.
pub(crate) fn serve_inbound(shared: Arc<Shared>, listener: TcpListener, stop: CancellationToken) {
    let metrics = shared.metrics.tcp_dst(Direction::Inbound, &shared.service);
    accept_loop(listener, stop, move |down| {
        let (shared, metrics) = (shared.clone(), metrics.clone());
        async move {
            let _src = shared.metrics.tcp_inbound.open();
            let down = match &shared.inbound_tls {
                None => Stream::Plain(down),
                Some(tls) => {
                    let permissive = shared.mtls_permissive();
                    // A silent client of a strict service may still be slow to say hello.
                    let silence = if permissive {
                        Sniffed::Plain
                    } else {
                        Sniffed::Tls
                    };
                    match tls.accept(down, permissive, TCP_FIRST_BYTE, silence).await {
                        Some(Accepted::Tls { stream, .. }) => {
                            Stream::Tls(Box::new((*stream).into()))
                        }
                        Some(Accepted::Plain(s)) if permissive => Stream::Plain(s),
                        Some(Accepted::Plain(_)) => {
                            tracing::debug!(
                                service = %shared.service,
                                "refused a plain-text connection: the service is `mtls: strict`"
                            );
                            return;
                        }
                        None => return,
                    }
                }
            };
            let up = match tokio::time::timeout(
                CONNECT_TIMEOUT,
                TcpStream::connect(shared.app_addr),
            )
            .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    metrics.connect_error();
                    tracing::debug!(app = %shared.app_addr, error = %e, "cannot connect to the app");
                    return;
                }
                Err(_) => {
                    metrics.connect_error();
                    tracing::debug!(app = %shared.app_addr, "connecting to the app timed out");
                    return;
                }
            };
            let _ = up.set_nodelay(true);
            splice(down, up, &metrics).await;
        }
    });
}

/// Pipes `down` (the connecting side) and `up` (the destination) until both close,
/// counting the destination's bytes as they move.
async fn splice<D, U>(mut down: D, up: U, metrics: &Arc<TcpDst>)
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let _open = metrics.open();
    let mut up = Counted {
        inner: up,
        metrics: metrics.clone(),
    };
    if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
        tracing::debug!(error = %e, "piped connection ended with an error");
    }
}

pin_project_lite::pin_project! {
    /// The destination's socket, counting bytes read from it and written to it.
    struct Counted<U> {
        #[pin]
        inner: U,
        metrics: Arc<TcpDst>,
    }
}

impl<U: AsyncRead> AsyncRead for Counted<U> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let res = this.inner.poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        this.metrics
            .read_bytes
            .fetch_add(n as u64, Ordering::Relaxed);
        res
    }
}

impl<U: AsyncWrite> AsyncWrite for Counted<U> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let res = this.inner.poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &res {
            this.metrics
                .write_bytes
                .fetch_add(*n as u64, Ordering::Relaxed);
        }
        res
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_parse_with_an_optional_port() {
        let f: TcpForward = "127.0.0.1:15432=postgres".parse().unwrap();
        assert_eq!(f.listen, "127.0.0.1:15432".parse().unwrap());
        assert_eq!((f.service.as_str(), f.port), ("postgres", None));
        let f: TcpForward = "[::1]:6379=cache:6380".parse().unwrap();
        assert_eq!((f.service.as_str(), f.port), ("cache", Some(6380)));
        for bad in [
            "postgres",
            "15432=postgres",
            "127.0.0.1:1=Bad_Name",
            "127.0.0.1:1=db:0",
            "127.0.0.1:1=db:x",
        ] {
            assert!(bad.parse::<TcpForward>().is_err(), "{bad}");
        }
    }
}
