//! The calling side: which endpoints are called over TLS, the client configurations per
//! identity expected, the handshake, and the last refusal per service (so the caller's
//! answer can say why its call never left).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::Authority;
use ieum_identity::{Identity, PeerError, SpiffeId, client_config};
use rustls::RootCertStore;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tower::BoxError;

use super::{HANDSHAKE_TIMEOUT, MeshConfig};

/// The registration metadata key holding an instance's SPIFFE id.
pub(crate) const IDENTITY_KEY: &str = "identity";

/// How long a refusal is shown in the answers of calls to its service.
const REFUSAL_SHOWN: Duration = Duration::from_secs(10);

/// What the connection carries, which decides the ALPN offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Alpn {
    /// HTTP/1.1 (`http/1.1`).
    Http1,
    /// HTTP/2 (`h2`).
    Http2,
    /// Opaque TCP (no ALPN).
    Opaque,
}

/// The connectors towards workloads that must prove one identity.
pub(crate) struct Target {
    /// Who the peer must be.
    pub(crate) expected: SpiffeId,
    http1: TlsConnector,
    http2: TlsConnector,
    opaque: TlsConnector,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Target({})", self.expected)
    }
}

impl Target {
    fn connector(&self, alpn: Alpn) -> &TlsConnector {
        match alpn {
            Alpn::Http1 => &self.http1,
            Alpn::Http2 => &self.http2,
            Alpn::Opaque => &self.opaque,
        }
    }
}

/// How to reach an endpoint, from its registration.
#[derive(Debug, Clone)]
pub(crate) enum Expect {
    /// In plain text: it carries no identity, or this sidecar runs without a mesh.
    Plain,
    /// Over mTLS, with the peer proving this identity.
    Mesh(Arc<Target>),
    /// It names an identity this sidecar cannot use: calls fail to connect, saying why.
    Broken(Arc<str>),
}

/// The outbound half of a sidecar's mesh configuration, shared by its HTTP clients and
/// opaque TCP forwards.
pub(crate) struct OutboundTls {
    identity: Identity,
    roots: Arc<RootCertStore>,
    /// Connectors by the identity expected: one per service called, built on first use.
    targets: Mutex<HashMap<SpiffeId, Arc<Target>>>,
    /// The latest refused handshake per service called, and when.
    refusals: Mutex<HashMap<String, (Instant, Arc<str>)>>,
}

impl std::fmt::Debug for OutboundTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundTls")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl OutboundTls {
    pub(crate) fn new(mesh: &MeshConfig) -> OutboundTls {
        OutboundTls {
            identity: mesh.identity.clone(),
            roots: mesh.roots.clone(),
            targets: Mutex::new(HashMap::new()),
            refusals: Mutex::new(HashMap::new()),
        }
    }

    /// How to reach an endpoint registered with `metadata`.
    pub(crate) fn expect(&self, metadata: &BTreeMap<String, String>) -> Expect {
        let Some(raw) = metadata.get(IDENTITY_KEY) else {
            return Expect::Plain;
        };
        let id = match SpiffeId::parse(raw) {
            Ok(id) => id,
            Err(e) => {
                return Expect::Broken(
                    format!(
                        "the endpoint's registration metadata `{IDENTITY_KEY}` is not a mesh \
                         identity ({e}); re-register it with its sidecar's SPIFFE id, or \
                         without `{IDENTITY_KEY}` to be called in plain text"
                    )
                    .into(),
                );
            }
        };
        match self.target(&id) {
            Ok(t) => Expect::Mesh(t),
            Err(e) => Expect::Broken(e.into()),
        }
    }

    /// The connectors for peers that must be `expected`, built once per identity.
    fn target(&self, expected: &SpiffeId) -> Result<Arc<Target>, String> {
        let mut targets = self.targets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = targets.get(expected) {
            return Ok(t.clone());
        }
        let base = client_config(&self.identity, self.roots.clone(), Some(expected.clone()))
            .map_err(|e| format!("cannot call {expected} over mTLS: {e}"))?;
        let with = |alpn: &[&[u8]]| {
            let mut c = (*base).clone();
            c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            TlsConnector::from(Arc::new(c))
        };
        let target = Arc::new(Target {
            expected: expected.clone(),
            http1: with(&[b"http/1.1"]),
            http2: with(&[b"h2"]),
            opaque: with(&[]),
        });
        targets.insert(expected.clone(), target.clone());
        Ok(target)
    }

    /// Wraps `stream`, connected to an endpoint of `service` at `authority`, in TLS for
    /// `alpn`, with the peer proving `target`'s identity. The error names the identity
    /// expected and why the handshake failed; it is also kept for [`OutboundTls::refusal`].
    pub(crate) async fn handshake(
        &self,
        target: &Target,
        service: &str,
        authority: &Authority,
        alpn: Alpn,
        stream: TcpStream,
    ) -> Result<TlsStream<TcpStream>, BoxError> {
        // Mesh peers are dialled by IP and named by their SPIFFE id: the name given here
        // only fills SNI, and the verifier does not look at it.
        let host = authority.host().trim_matches(['[', ']']);
        let name = ServerName::try_from(host.to_owned())
            .unwrap_or_else(|_| ServerName::try_from("mesh.invalid").expect("a valid DNS name"));
        let handshake = target.connector(alpn).connect(name, stream);
        let why = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(tls)) => {
                self.clear_refusal(service);
                return Ok(tls);
            }
            Ok(Err(e)) => match PeerError::from_io(&e) {
                Some(peer) => peer.to_string(),
                None => format!(
                    "the TLS handshake failed ({e}): is a sidecar of this mesh, with mTLS on, \
                     listening there?"
                ),
            },
            Err(_) => format!(
                "no TLS handshake within {}s: is a mesh sidecar listening there?",
                HANDSHAKE_TIMEOUT.as_secs()
            ),
        };
        let message = format!(
            "mTLS with {authority} (expecting {}): {why}",
            target.expected
        );
        tracing::debug!(%service, %message, "mTLS handshake refused");
        self.note_refusal(service, &message);
        Err(message.into())
    }

    /// Notes that a call to `service` was refused for `why` (shown for a while).
    pub(crate) fn note_refusal(&self, service: &str, why: &str) {
        let mut refusals = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        refusals.insert(service.to_owned(), (Instant::now(), why.into()));
    }

    fn clear_refusal(&self, service: &str) {
        let mut refusals = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        if !refusals.is_empty() {
            refusals.remove(service);
        }
    }

    /// Why the latest handshake with an endpoint of `service` failed, if one did in the
    /// last seconds and none succeeded since.
    pub(crate) fn refusal(&self, service: &str) -> Option<Arc<str>> {
        let refusals = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        refusals
            .get(service)
            .filter(|(at, _)| at.elapsed() < REFUSAL_SHOWN)
            .map(|(_, why)| why.clone())
    }
}
