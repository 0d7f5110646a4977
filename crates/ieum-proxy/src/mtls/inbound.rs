//! The accepting side: TLS or plain text per connection, the peer's identity onto every
//! request, and the answer to plain-text callers of a strict service.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use ieum_identity::{ClientAuth, ConfigError, PeerError, SpiffeId, peer_identity, server_config};
use ieum_resilience::classify::{REASON_HEADER, SOURCE_HEADER, grpc};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use super::{HANDSHAKE_TIMEOUT, MeshConfig, Sniffed, sniff};
use crate::Shared;
use crate::access_log::Entry;
use crate::authz::PeerIdentity;
use crate::body::{ProxyBody, text};
use crate::metrics::{RouteMetrics, TcpMetrics};

/// The reason header's value when a plain-text call reaches a strict service.
pub(crate) const MTLS_REQUIRED: &str = "mtls-required";
/// gRPC's `UNAUTHENTICATED`.
const GRPC_UNAUTHENTICATED: u16 = 16;
/// How long an HTTP caller may take to send its first byte (HTTP clients speak first).
const HTTP_FIRST_BYTE: Duration = HANDSHAKE_TIMEOUT;
/// How long an opaque TCP caller may stay silent before a permissive listener takes it
/// for a plain-text client of a protocol where the server speaks first.
pub(crate) const TCP_FIRST_BYTE: Duration = Duration::from_secs(1);

/// The inbound listener's TLS: one acceptor per mode, both presenting the sidecar's
/// rotating identity.
pub(crate) struct InboundTls {
    /// A mesh client certificate is required.
    strict: TlsAcceptor,
    /// A client certificate is optional (but checked when given).
    permissive: TlsAcceptor,
}

impl std::fmt::Debug for InboundTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundTls").finish_non_exhaustive()
    }
}

/// A connection the inbound listener took.
pub(crate) enum Accepted {
    /// TLS, with the peer's identity when it presented a certificate.
    Tls {
        stream: Box<TlsStream<TcpStream>>,
        peer: Option<SpiffeId>,
    },
    /// Plain text (the caller decides whether the service admits it).
    Plain(TcpStream),
}

impl InboundTls {
    /// The acceptors of `mesh`, built once: a renewal of the identity applies to the next
    /// handshake without rebuilding them.
    pub(crate) fn new(mesh: &MeshConfig) -> Result<InboundTls, ConfigError> {
        let make =
            |auth| server_config(&mesh.identity, mesh.roots.clone(), auth).map(TlsAcceptor::from);
        Ok(InboundTls {
            strict: make(ClientAuth::Required)?,
            permissive: make(ClientAuth::Optional)?,
        })
    }

    /// Takes one accepted connection: peeks at its first byte (at most `wait`; silence
    /// counts as `on_silence`), then completes a TLS handshake — client certificate
    /// required unless `permissive` — or hands it back as plain text. `None`: closed, or
    /// the handshake failed (logged).
    pub(crate) async fn accept(
        &self,
        stream: TcpStream,
        permissive: bool,
        wait: Duration,
        on_silence: Sniffed,
    ) -> Option<Accepted> {
        let sniffed = match sniff(&stream, wait).await {
            Sniffed::Silent => on_silence,
            s => s,
        };
        match sniffed {
            Sniffed::Plain => Some(Accepted::Plain(stream)),
            Sniffed::Closed | Sniffed::Silent => None,
            Sniffed::Tls => {
                let peer_addr = stream.peer_addr().ok();
                let acceptor = if permissive {
                    &self.permissive
                } else {
                    &self.strict
                };
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let peer = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(peer_identity);
                        Some(Accepted::Tls {
                            stream: Box::new(stream),
                            peer,
                        })
                    }
                    Ok(Err(e)) => {
                        match PeerError::from_io(&e) {
                            Some(reason) => {
                                tracing::debug!(peer = ?peer_addr, %reason, "mTLS handshake refused")
                            }
                            None => {
                                tracing::debug!(peer = ?peer_addr, error = %e, "TLS handshake failed")
                            }
                        }
                        None
                    }
                    Err(_) => {
                        tracing::debug!(peer = ?peer_addr, "TLS handshake timed out");
                        None
                    }
                }
            }
        }
    }
}

/// What the inbound listener learnt about a TLS connection, on each of its requests.
#[derive(Debug)]
pub(crate) struct Peer {
    /// The caller's principal (`orders`, `gateway:edge`), empty without a certificate.
    pub(crate) client_id: String,
    /// The inbound counters of `tls="true"` and this `client_id`.
    pub(crate) metrics: Arc<RouteMetrics>,
}

/// Serves the HTTP inbound listener of a sidecar with a mesh.
pub(crate) fn serve_http(
    shared: Arc<Shared>,
    tls: Arc<InboundTls>,
    listener: TcpListener,
    stop: CancellationToken,
    tcp: Option<Arc<TcpMetrics>>,
) {
    let s = stop.clone();
    crate::server::accept(listener, stop, tcp, move |stream| {
        let (shared, tls, stop) = (shared.clone(), tls.clone(), s.clone());
        async move { connection(shared, &tls, stream, &stop).await }
    });
}

/// One connection of the HTTP inbound listener.
async fn connection(
    shared: Arc<Shared>,
    tls: &InboundTls,
    stream: TcpStream,
    stop: &CancellationToken,
) {
    let permissive = shared.mtls_permissive();
    match tls
        .accept(stream, permissive, HTTP_FIRST_BYTE, Sniffed::Closed)
        .await
    {
        None => {}
        Some(Accepted::Plain(stream)) => {
            crate::server::serve(stream, stop, move |req| plain(shared.clone(), req)).await;
        }
        Some(Accepted::Tls { stream, peer }) => {
            let client_id = peer.map(|p| p.principal()).unwrap_or_default();
            let metrics = shared
                .metrics
                .inbound_peer(&shared.service, true, &client_id);
            let identity = (!client_id.is_empty()).then(|| PeerIdentity(client_id.clone()));
            let peer = Arc::new(Peer { client_id, metrics });
            crate::server::serve(stream, stop, move |mut req: Request<Incoming>| {
                if let Some(id) = &identity {
                    req.extensions_mut().insert(id.clone());
                }
                req.extensions_mut().insert(peer.clone());
                crate::inbound::handle(shared.clone(), req)
            })
            .await;
        }
    }
}

/// A request on a plain-text connection: forwarded when the service is permissive (now:
/// a service made strict since the connection opened refuses its next request), refused
/// otherwise.
async fn plain(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    if shared.mtls_permissive() {
        return crate::inbound::handle(shared, req).await;
    }
    let metrics = &shared.inbound_metrics;
    metrics.request();
    let start = Instant::now();
    let entry = shared
        .access_log
        .get()
        .map(|_| Entry::new(&req, "inbound").peer(false, ""));
    let http1 = req.version() < http::Version::HTTP_2;
    let res = refuse(&shared.service, grpc::is_grpc(&req), http1);
    metrics.response(res.status(), false, start.elapsed());
    if let (Some(entry), Some(sink)) = (entry, shared.access_log.get()) {
        sink(entry.line(&res, start.elapsed()));
    }
    Ok(res)
}

/// The answer to a plain-text call into a strict service: 403 (gRPC: `UNAUTHENTICATED`)
/// with `ieum-reason: mtls-required`, saying what to do; an HTTP/1 connection closes.
fn refuse(service: &str, grpc: bool, http1: bool) -> Response<ProxyBody> {
    let body = format!(
        "{MTLS_REQUIRED}: `{service}` accepts only mesh peers over mTLS (its Service is \
         `mtls: strict`, the default), and this call came in plain text. Call it through a \
         sidecar of the mesh, or set `mtls: permissive` on Service/{service} to let \
         plain-text callers in while they migrate.\n"
    );
    let mut res = Response::new(text(if grpc { String::new() } else { body }));
    *res.status_mut() = if grpc {
        StatusCode::OK
    } else {
        StatusCode::FORBIDDEN
    };
    let h = res.headers_mut();
    h.insert(REASON_HEADER, HeaderValue::from_static(MTLS_REQUIRED));
    h.insert(SOURCE_HEADER, HeaderValue::from_static("local"));
    if http1 {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if grpc {
        h.insert(grpc::STATUS, HeaderValue::from(GRPC_UNAUTHENTICATED));
        h.insert(grpc::MESSAGE, HeaderValue::from_static(MTLS_REQUIRED));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
    } else {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    res
}
