//! The rustls configurations of mTLS between mesh workloads.
//!
//! - **Who is presented:** an [`Identity`], the workload's current [`Credentials`] behind
//!   a lock, is the certificate resolver of both configurations. [`Identity::replace`]
//!   swaps them; every handshake that starts afterwards presents the new certificate, with
//!   no listener or connector rebuilt.
//! - **Who is accepted:** a peer whose chain verifies against the mesh roots (rustls'
//!   WebPKI checks: signature, validity, extended key usage) and whose leaf carries exactly
//!   one SPIFFE id of this mesh's trust domain. A client checks the server's id against the
//!   one it meant to reach ([`client_config`]'s `expected`); DNS names and IP addresses in
//!   the certificate are not checked, since mesh peers are dialled by IP and the SPIFFE id
//!   is what names them. A server checks that a client is of the mesh; which client may
//!   do what is the policies' business, with [`peer_identity`].
//! - **Refusals** are logged where they happen (`warn`, with the reason) and surface as
//!   rustls errors that [`PeerError::from_tls`] and [`PeerError::from_io`] turn back into
//!   a [`PeerError`] whose message says what to fix.
//! - **Protocol:** TLS 1.3 only, ring only (given to every builder, never the process
//!   default). No session resumption: every connection is a full handshake, so each one
//!   checks the certificates as they are now (expiry, rotation); connections are long-lived
//!   (keep-alive), so this costs little.

use std::fmt;
use std::io;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, Resumption, WebPkiServerVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{
    ClientHello, NoServerSessionStorage, ParsedCertificate, ResolvesServerCert,
    WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName,
    OtherError, RootCertStore, ServerConfig, SignatureScheme,
};

use crate::spiffe::{SpiffeId, TrustDomain};
use crate::workload::Credentials;
use crate::x509::rfc3339;

/// The ALPN protocols a mesh listener offers, preferred first.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Whether a mesh listener requires a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// A client must present a mesh certificate (the default).
    Required,
    /// A client may connect without a certificate (`Service.spec.mtls: permissive`, for
    /// migration); one that presents a certificate must still present a valid one.
    Optional,
}

/// Why a mesh TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// There is no root to verify peers against.
    #[error(
        "no trusted mesh root: give the mesh CA's certificate (the server's ca.pem, IEUM_CA_FILE)"
    )]
    NoRoots,
    /// The roots given are not usable.
    #[error("the mesh roots {0}")]
    Roots(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// Why a peer's certificate was refused, or why the peer refused ours; the message says
/// what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// The peer presented no certificate where one is required.
    #[error(
        "the peer presented no certificate: mesh peers must present their identity (a caller outside the mesh needs `mtls: permissive` on the service)"
    )]
    NoCertificate,
    /// The peer's certificate is past its end of validity.
    #[error(
        "the peer's certificate expired{}: the peer must renew it (check that it reaches the server and that its clock is right)",
        at(*.not_after)
    )]
    Expired {
        /// When it expired, when known.
        not_after: Option<SystemTime>,
    },
    /// The peer's certificate is not valid yet.
    #[error(
        "the peer's certificate is not valid yet{}: check the clocks of both hosts (NTP)",
        not_before.map(|t| format!(" (valid from {})", rfc3339(t))).unwrap_or_default()
    )]
    NotYetValid {
        /// When it becomes valid, when known.
        not_before: Option<SystemTime>,
    },
    /// The peer's certificate does not chain to a mesh root.
    #[error(
        "the peer's certificate was not issued by this mesh's CA (it is self-signed, or from another CA): the peer must enrol with this mesh's server, or its CA must be added to the trusted roots"
    )]
    UnknownIssuer,
    /// The peer is of another mesh.
    #[error(
        "the peer is {found}, of trust domain `{}`, not this mesh's `{expected}`: both sides must use the same trust domain",
        found.trust_domain()
    )]
    WrongTrustDomain {
        /// This mesh's trust domain.
        expected: TrustDomain,
        /// Who the peer is.
        found: SpiffeId,
    },
    /// The peer is of the mesh, but not the workload this side meant to reach.
    #[error(
        "expected {expected}, but the peer is {found}: the address belongs to another workload (a stale endpoint?), so the call was not sent"
    )]
    WrongIdentity {
        /// Who this side meant to reach.
        expected: SpiffeId,
        /// Who the peer is.
        found: SpiffeId,
    },
    /// The peer's certificate chains to a mesh root but names no mesh workload.
    #[error(
        "the peer's certificate carries no usable SPIFFE id ({reason}): it is not a mesh workload certificate"
    )]
    NoIdentity {
        /// What is wrong with its URI SANs.
        reason: String,
    },
    /// The peer's certificate may not be used for this side of TLS.
    #[error(
        "the peer's certificate may not be used here (its extended key usage lacks serverAuth or clientAuth): it is not a mesh workload certificate"
    )]
    WrongUsage,
    /// The peer refused this side's certificate (or its absence).
    #[error("the peer refused this side's certificate (TLS alert {alert:?}): {}", refusal_hint(*.alert))]
    RefusedByPeer {
        /// The alert the peer sent.
        alert: AlertDescription,
    },
    /// The certificate is invalid for another reason.
    #[error("the peer's certificate is invalid: {reason}")]
    Invalid {
        /// rustls' reason.
        reason: String,
    },
}

impl PeerError {
    /// The peer error a failed handshake's rustls error stands for, if it is about
    /// certificates.
    pub fn from_tls(error: &rustls::Error) -> Option<PeerError> {
        match error {
            rustls::Error::InvalidCertificate(e) => Some(PeerError::from_certificate_error(e)),
            rustls::Error::NoCertificatesPresented => Some(PeerError::NoCertificate),
            rustls::Error::AlertReceived(alert) => match alert {
                AlertDescription::BadCertificate
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::CertificateRevoked
                | AlertDescription::CertificateExpired
                | AlertDescription::CertificateUnknown
                | AlertDescription::UnknownCA
                | AlertDescription::AccessDenied
                | AlertDescription::CertificateRequired => {
                    Some(PeerError::RefusedByPeer { alert: *alert })
                }
                _ => None,
            },
            _ => None,
        }
    }

    /// [`PeerError::from_tls`] for the `io::Error` a tokio-rustls handshake, read or
    /// write fails with.
    pub fn from_io(error: &io::Error) -> Option<PeerError> {
        error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .and_then(PeerError::from_tls)
    }

    /// The peer error of a WebPKI verification failure, or of one of ours carried through
    /// rustls.
    fn from_certificate_error(error: &CertificateError) -> PeerError {
        match error {
            CertificateError::Expired => PeerError::Expired { not_after: None },
            CertificateError::ExpiredContext { not_after, .. } => PeerError::Expired {
                not_after: Some(system_time(*not_after)),
            },
            CertificateError::NotValidYet => PeerError::NotYetValid { not_before: None },
            CertificateError::NotValidYetContext { not_before, .. } => PeerError::NotYetValid {
                not_before: Some(system_time(*not_before)),
            },
            // A bad signature is a certificate naming a trusted CA as its issuer that the
            // CA did not sign (forged, or from another CA of the same name): to the peer's
            // operator it is the same as an unknown issuer.
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                PeerError::UnknownIssuer
            }
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                PeerError::WrongUsage
            }
            CertificateError::Other(OtherError(inner)) => match inner.downcast_ref::<PeerError>() {
                Some(ours) => ours.clone(),
                None => PeerError::Invalid {
                    reason: inner.to_string(),
                },
            },
            other => PeerError::Invalid {
                reason: rustls::Error::InvalidCertificate(other.clone()).to_string(),
            },
        }
    }

    /// The rustls error that carries this refusal through the handshake.
    fn into_tls(self) -> rustls::Error {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(self))))
    }
}

/// ` at TIME`, or nothing.
fn at(t: Option<SystemTime>) -> String {
    t.map(|t| format!(" at {}", rfc3339(t))).unwrap_or_default()
}

/// What to check when the peer refused this side's certificate with `alert`.
fn refusal_hint(alert: AlertDescription) -> &'static str {
    match alert {
        AlertDescription::CertificateExpired => {
            "this side's certificate expired or the peer's clock is off: check renewal and NTP"
        }
        AlertDescription::CertificateRequired => {
            "the peer requires a client certificate: this side must enrol with the mesh"
        }
        AlertDescription::UnknownCA => {
            "the peer does not trust this side's CA: both sides must be of the same mesh"
        }
        _ => {
            "check that both sides trust the same mesh CA and are of the same trust domain; the peer's log says why"
        }
    }
}

/// A certificate time as a `SystemTime`.
fn system_time(t: UnixTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(t.as_secs())
}

/// A workload's current credentials, shared by every listener and connector built with
/// it, and swapped whole by [`Identity::replace`] when the certificate is renewed. Cheap to
/// clone: clones share the same credentials.
#[derive(Clone)]
pub struct Identity {
    /// The credentials new handshakes present.
    current: Arc<RwLock<Arc<Credentials>>>,
}

impl Identity {
    /// An identity presenting `credentials`.
    pub fn new(credentials: Credentials) -> Identity {
        Identity {
            current: Arc::new(RwLock::new(Arc::new(credentials))),
        }
    }

    /// Presents `credentials` from the next handshake on; connections already open keep
    /// the certificate they were established with.
    pub fn replace(&self, credentials: Credentials) {
        tracing::debug!(
            id = %credentials.id(),
            not_after = %rfc3339(credentials.not_after()),
            "presenting a new certificate"
        );
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(credentials);
    }

    /// The credentials presented now.
    pub fn current(&self) -> Arc<Credentials> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The SPIFFE id presented now.
    pub fn id(&self) -> SpiffeId {
        self.current().id().clone()
    }

    /// The chain and key new handshakes present.
    fn certified_key(&self) -> Arc<CertifiedKey> {
        self.current().certified_key().clone()
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Identity").field(&self.current()).finish()
    }
}

impl ResolvesServerCert for Identity {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.certified_key())
    }
}

impl ResolvesClientCert for Identity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.certified_key())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The configuration of a mesh listener (a sidecar's inbound side): presents `identity`,
/// and requires (or, with [`ClientAuth::Optional`], allows) a client certificate of the
/// mesh: chained to `roots`, with a SPIFFE id of `identity`'s trust domain. ALPN offers
/// `h2` and `http/1.1`.
pub fn server_config(
    identity: &Identity,
    roots: Arc<RootCertStore>,
    client_auth: ClientAuth,
) -> Result<Arc<ServerConfig>, ConfigError> {
    if roots.is_empty() {
        return Err(ConfigError::NoRoots);
    }
    let provider = crate::provider();
    let verifier = mesh_client_verifier(roots, identity.id().trust_domain().clone(), client_auth)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(identity.clone()));
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Verifies a client's certificate as a mesh peer: chained to `roots`, with a SPIFFE id of
/// `trust_domain`; with [`ClientAuth::Optional`], a client may also present none.
pub(crate) fn mesh_client_verifier(
    roots: Arc<RootCertStore>,
    trust_domain: TrustDomain,
    client_auth: ClientAuth,
) -> Result<Arc<dyn ClientCertVerifier>, ConfigError> {
    let builder = WebPkiClientVerifier::builder_with_provider(roots, crate::provider());
    let builder = match client_auth {
        ClientAuth::Required => builder,
        ClientAuth::Optional => builder.allow_unauthenticated(),
    };
    let inner = builder
        .build()
        .map_err(|e| ConfigError::Roots(format!("cannot verify clients ({e})")))?;
    Ok(Arc::new(MeshClientVerifier {
        inner,
        trust_domain,
    }))
}

/// The configuration of a mesh connector (a sidecar's outbound side): presents `identity`
/// and accepts a server chained to `roots` whose SPIFFE id is `expected`, or, when
/// `expected` is `None`, any id of `identity`'s trust domain. The server name given to
/// the connector is not checked. No ALPN is offered: set `alpn_protocols` on a clone to
/// what the connector speaks.
pub fn client_config(
    identity: &Identity,
    roots: Arc<RootCertStore>,
    expected: Option<SpiffeId>,
) -> Result<Arc<ClientConfig>, ConfigError> {
    if roots.is_empty() {
        return Err(ConfigError::NoRoots);
    }
    let provider = crate::provider();
    let signatures = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| ConfigError::Roots(format!("cannot verify servers ({e})")))?;
    let verifier = MeshServerVerifier {
        roots,
        algorithms: provider.signature_verification_algorithms,
        signatures,
        trust_domain: identity.id().trust_domain().clone(),
        expected,
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(identity.clone()));
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// The SPIFFE id of a peer, from the chain it presented (leaf first, as
/// `CommonState::peer_certificates` gives it): the leaf's one URI SAN, if it is a SPIFFE
/// id of the shape ieum issues. Use it after the handshake, on a chain the configuration
/// has verified.
pub fn peer_identity(certs: &[CertificateDer<'_>]) -> Option<SpiffeId> {
    let leaf = certs.first()?;
    crate::x509::leaf(leaf).ok().map(|leaf| leaf.id)
}

/// The API token that asked for a peer's certificate (see [`crate::Ca::issue_enrolled`]),
/// from the chain it presented; `None` when none did (issued on a loopback server without
/// a token, or by the server for itself). Use it on a chain the configuration has verified.
pub fn enrolled_by(certs: &[CertificateDer<'_>]) -> Option<String> {
    let leaf = certs.first()?;
    crate::x509::leaf(leaf)
        .ok()
        .and_then(|leaf| leaf.enrolled_by)
}

/// A trust store of the certificates in `pem` (the mesh CA's `ca.pem`, or several roots
/// while a CA is replaced).
pub fn roots_from_pem(pem: &str) -> Result<RootCertStore, ConfigError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::Roots(format!("are not valid PEM ({e})")))?;
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| ConfigError::Roots(format!("hold an unusable certificate ({e})")))?;
    }
    if roots.is_empty() {
        return Err(ConfigError::NoRoots);
    }
    Ok(roots)
}

/// The SPIFFE id of a verified leaf, if it is of `trust_domain`.
fn mesh_peer(leaf: &CertificateDer<'_>, trust_domain: &TrustDomain) -> Result<SpiffeId, PeerError> {
    let found = crate::x509::leaf(leaf)
        .map_err(|reason| PeerError::NoIdentity { reason })?
        .id;
    if found.trust_domain() != trust_domain {
        return Err(PeerError::WrongTrustDomain {
            expected: trust_domain.clone(),
            found,
        });
    }
    Ok(found)
}

/// Logs why a peer's certificate was refused, and passes the error on.
fn refused(side: &'static str, error: rustls::Error) -> rustls::Error {
    match PeerError::from_tls(&error) {
        Some(reason) => tracing::warn!(peer = side, %reason, "refused a mesh peer's certificate"),
        None => tracing::warn!(peer = side, reason = %error, "refused a mesh peer's certificate"),
    }
    error
}

/// The client side's check of a server: WebPKI's chain checks without the name, then the
/// SPIFFE id.
#[derive(Debug)]
struct MeshServerVerifier {
    /// The mesh roots.
    roots: Arc<RootCertStore>,
    /// The provider's signature algorithms, for the chain.
    algorithms: WebPkiSupportedAlgorithms,
    /// WebPKI's verifier, for the handshake signatures (which do not involve names).
    signatures: Arc<WebPkiServerVerifier>,
    /// The mesh's trust domain.
    trust_domain: TrustDomain,
    /// The workload this connector means to reach, if one.
    expected: Option<SpiffeId>,
}

impl MeshServerVerifier {
    /// Checks the chain and the id.
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        let found = mesh_peer(end_entity, &self.trust_domain).map_err(PeerError::into_tls)?;
        if let Some(expected) = &self.expected
            && &found != expected
        {
            return Err(PeerError::WrongIdentity {
                expected: expected.clone(),
                found,
            }
            .into_tls());
        }
        Ok(())
    }
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verify(end_entity, intermediates, now)
            .map(|()| ServerCertVerified::assertion())
            .map_err(|e| refused("server", e))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.supported_verify_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        self.signatures.root_hint_subjects()
    }
}

/// The server side's check of a client: WebPKI's, then the trust domain of its SPIFFE id.
#[derive(Debug)]
struct MeshClientVerifier {
    /// WebPKI's client verifier over the mesh roots.
    inner: Arc<dyn ClientCertVerifier>,
    /// The mesh's trust domain.
    trust_domain: TrustDomain,
}

impl ClientCertVerifier for MeshClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
            .and_then(|verified| {
                mesh_peer(end_entity, &self.trust_domain).map_err(PeerError::into_tls)?;
                Ok(verified)
            })
            .map_err(|e| refused("client", e))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests;
