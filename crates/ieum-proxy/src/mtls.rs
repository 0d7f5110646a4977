//! mTLS between sidecars: the data plane's half of mesh identity.
//!
//! [`MeshConfig`] hands a sidecar its rotating [`Identity`] and the mesh's roots (the
//! lifecycle in the binary enrols, renews and calls [`Identity::replace`]). The rustls
//! configurations are built once, at start, with the identity as their certificate
//! resolver, so a renewal applies to the next handshake with nothing rebuilt.
//!
//! - `inbound`: the inbound listener. It peeks at the first byte of every accepted
//!   connection ([`sniff`]: `0x16` starts a TLS handshake record) and serves TLS with a
//!   mesh client certificate required — or, when the sidecar's own `Service` says
//!   `mtls: permissive`, optional, and plain text too. After the handshake the peer's
//!   SPIFFE id becomes the [`crate::PeerIdentity`] of every request on the connection, and
//!   its principal the `client_id` of the inbound metrics and access log.
//! - `outbound`: calls to an endpoint whose registration carries `identity` (a SPIFFE
//!   id) go over TLS, and the peer must prove exactly that id — never a DNS name, since
//!   endpoints are dialled by IP. ALPN offers `h2` for HTTP/2 and `http/1.1` otherwise.
//!   A failed handshake is a connect error (retries, breakers and outlier detection treat
//!   it like a refused connection) that names the identity expected and why the peer was
//!   refused. Endpoints without `identity` (external services, `ieum register`ed
//!   instances) are called in plain text.
//!
//! Opaque TCP (`tcp`) does the same: a forward wraps its connection in TLS towards an
//! endpoint with an identity (unless it dials another port than the registered one, which
//! is then not the sidecar's), and a `tcp` app's inbound listener accepts as above.
//!
//! Without a [`MeshConfig`] nothing here runs: every listener and call is plain text, as
//! under `ieum server --dev`, and no request pays for any of it.

pub(crate) mod inbound;
pub(crate) mod outbound;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ieum_client::Snapshot;
use ieum_identity::{Identity, TrustDomain};
use rustls::RootCertStore;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The first byte of a TLS record carrying a handshake message (a ClientHello, when a
/// connection starts with TLS). No HTTP/1.1 method, HTTP/2 preface or plain-text client
/// that speaks first starts with it.
pub(crate) const TLS_HANDSHAKE: u8 = 0x16;

/// Longest wait for a TLS handshake to finish, either side.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The mesh's identity and trust for one sidecar: with it, traffic between sidecars is
/// mTLS; without it ([`crate::SidecarConfig::mesh`] `None`), plain text everywhere.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// This sidecar's workload identity, presented by both directions of its traffic.
    /// Renewal is the caller's: [`Identity::replace`] on a clone applies to every
    /// handshake that starts afterwards, with no restart.
    pub identity: Identity,
    /// The mesh CA's certificates, that peers' chains must lead to.
    pub roots: Arc<RootCertStore>,
    /// The mesh's trust domain; the identity must be of it, and so must every peer.
    pub trust_domain: TrustDomain,
}

impl MeshConfig {
    /// Checks that the identity is of the configured trust domain; the error says what to
    /// fix.
    pub(crate) fn check(&self) -> std::io::Result<()> {
        let id = self.identity.id();
        if id.trust_domain() != &self.trust_domain {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "the sidecar's identity {id} is of trust domain `{}`, but the mesh's is `{}`: \
                     enrol with this mesh's server, or configure its trust domain",
                    id.trust_domain(),
                    self.trust_domain
                ),
            ));
        }
        Ok(())
    }
}

/// What the first byte of a connection says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sniffed {
    /// A TLS handshake starts.
    Tls,
    /// Anything else: plain text.
    Plain,
    /// The peer closed before sending anything.
    Closed,
    /// Nothing arrived within the wait (a protocol where the server speaks first, or an
    /// idle client).
    Silent,
}

/// Which protocol a connection that starts with `first` speaks.
pub(crate) fn classify(first: u8) -> Sniffed {
    if first == TLS_HANDSHAKE {
        Sniffed::Tls
    } else {
        Sniffed::Plain
    }
}

/// Peeks at the first byte of `stream` (leaving it to be read), waiting at most `wait`.
pub(crate) async fn sniff(stream: &TcpStream, wait: Duration) -> Sniffed {
    let mut first = [0u8; 1];
    match tokio::time::timeout(wait, stream.peek(&mut first)).await {
        Err(_) => Sniffed::Silent,
        Ok(Ok(0)) | Ok(Err(_)) => Sniffed::Closed,
        Ok(Ok(_)) => classify(first[0]),
    }
}

/// Whether the snapshot's `Service` resource for `service` says `mtls: permissive`. A
/// spec this sidecar cannot read counts as strict (closed).
pub(crate) fn permissive(snapshot: &Snapshot, service: &str) -> bool {
    snapshot
        .resources
        .get(&format!("Service/{service}"))
        .and_then(|r| r.spec.get("mtls"))
        .and_then(|m| m.as_str())
        == Some(ieum_model::service::MtlsMode::Permissive.as_str())
}

/// A TCP connection, in plain text or wrapped in TLS (either side).
#[derive(Debug)]
pub(crate) enum Stream {
    /// Plain text.
    Plain(TcpStream),
    /// TLS, as a client or a server.
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests;
