//! Bootstrap trust: how a client that holds nothing but a join token (or the CA's PEM)
//! verifies the server before it sends anything, and the server's own API certificate.
//!
//! - [`JoinToken`]: `ieum1.<ca-sha256-hex>.<secret>`, as `kubeadm` join tokens carry the
//!   hash of the cluster CA. The secret is the bearer token; the hash pins the CA.
//! - [`ServerTrust`]: the CA named by `IEUM_CA_FILE`, or the CA whose SHA-256 a join token
//!   carries; [`ServerTrust::client_config`] is the one rustls configuration every client
//!   of the server (CLI, sidecars, the push stream, the hosted broker) uses.
//! - [`ServerKey`]: the server's own certificate, swapped in place when renewed, and
//!   [`api_server_config`], the configuration of its HTTPS listener.
//!
//! **Invariant:** nothing here builds a verifier that accepts an unverified server: with
//! a pin, the chain must contain the pinned CA and verify against it, with the server's
//! name or IP among the certificate's SANs.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::ca::{ServerCertificate, fingerprint};
use crate::mesh::{ALPN, ClientAuth, Identity};
use crate::spiffe::TrustDomain;

/// The prefix of a join token: `ieum1.<ca-sha256-hex>.<secret>`.
pub const JOIN_TOKEN_PREFIX: &str = "ieum1";
/// The environment variable naming the server's CA certificate (PEM).
pub const CA_FILE_ENV: &str = "IEUM_CA_FILE";

/// Why bootstrap trust could not be set up; each message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// A token starts like a join token but is not one.
    #[error(
        "the join token is malformed: expected `ieum1.<64 hex digits of the CA's SHA-256>.<secret>` \
         as `ieum token create` prints it ({0})"
    )]
    Token(&'static str),
    /// The CA file cannot be read or holds no certificate.
    #[error("{CA_FILE_ENV}={path}: {reason}: point it at the server's ca.pem (DATA_DIR/ca/ca.pem)")]
    CaFile {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// An `https://` server and nothing to verify it with.
    #[error(
        "cannot verify the server {server}: set {CA_FILE_ENV} to the server's CA certificate \
         (its DATA_DIR/ca/ca.pem) or use a join token (IEUM_TOKEN=ieum1.<ca-hash>.<secret>, \
         from `ieum token create`)"
    )]
    NoTrust {
        /// The server's address.
        server: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The mesh roots cannot verify clients.
    #[error("mesh client verification: {0}")]
    Mesh(#[from] crate::mesh::ConfigError),
}

/// A join token: the secret a sidecar or gateway presents, and the hash of the CA that
/// must have issued the server's certificate.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The lowercase hex SHA-256 of the CA certificate's DER ([`crate::Ca::fingerprint`]).
    pub ca_hash: String,
    /// The bearer secret the server stores hashed.
    pub secret: String,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_hash", &self.ca_hash)
            .finish_non_exhaustive()
    }
}

impl JoinToken {
    /// `Ok(None)` for a bare secret (no `ieum1.` prefix); the token for a well-formed join
    /// token; an error for one that starts with `ieum1.` but is malformed.
    pub fn parse(token: &str) -> Result<Option<JoinToken>, BootstrapError> {
        let Some(rest) = token
            .strip_prefix(JOIN_TOKEN_PREFIX)
            .and_then(|r| r.strip_prefix('.'))
        else {
            return Ok(None);
        };
        let Some((hash, secret)) = rest.split_once('.') else {
            return Err(BootstrapError::Token(
                "no `.` between the CA hash and the secret",
            ));
        };
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BootstrapError::Token(
                "the CA hash is not 64 hexadecimal digits",
            ));
        }
        if secret.is_empty() {
            return Err(BootstrapError::Token("the secret is empty"));
        }
        Ok(Some(JoinToken {
            ca_hash: hash.to_ascii_lowercase(),
            secret: secret.to_owned(),
        }))
    }

    /// The bearer secret of `token`: the secret part of a join token, or `token` itself.
    pub fn secret_of(token: &str) -> Result<String, BootstrapError> {
        Ok(match JoinToken::parse(token)? {
            Some(j) => j.secret,
            None => token.to_owned(),
        })
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{JOIN_TOKEN_PREFIX}.{}.{}", self.ca_hash, self.secret)
    }
}

/// What a client trusts as the server's CA.
#[derive(Clone)]
pub enum ServerTrust {
    /// The CA certificates of a PEM file (`IEUM_CA_FILE`) or handed over in process.
    Roots(Arc<RootCertStore>),
    /// The CA whose certificate's SHA-256 (lowercase hex) is this, found in the chain the
    /// server presents.
    Pin(String),
}

impl fmt::Debug for ServerTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerTrust::Roots(r) => write!(f, "ServerTrust::Roots({} roots)", r.len()),
            ServerTrust::Pin(h) => write!(f, "ServerTrust::Pin(sha256:{h})"),
        }
    }
}

impl ServerTrust {
    /// The CA certificates in the PEM file at `path`.
    pub fn from_ca_file(path: &Path) -> Result<ServerTrust, BootstrapError> {
        let fail = |reason: String| BootstrapError::CaFile {
            path: path.display().to_string(),
            reason,
        };
        let pem =
            std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read it ({e})")))?;
        let roots = crate::roots_from_pem(&pem).map_err(|e| fail(e.to_string()))?;
        Ok(ServerTrust::Roots(Arc::new(roots)))
    }

    /// What a client trusts given `ca_file` (`IEUM_CA_FILE`) and its `token`: the file
    /// first, else the pin of a join token, else nothing (`Ok(None)`).
    pub fn from_settings(
        ca_file: Option<&Path>,
        token: Option<&str>,
    ) -> Result<Option<ServerTrust>, BootstrapError> {
        if let Some(path) = ca_file {
            return ServerTrust::from_ca_file(path).map(Some);
        }
        match token.map(JoinToken::parse).transpose()?.flatten() {
            Some(join) => Ok(Some(ServerTrust::Pin(join.ca_hash))),
            None => Ok(None),
        }
    }

    /// [`ServerTrust::from_settings`] with `IEUM_CA_FILE` from the environment.
    pub fn from_env(token: Option<&str>) -> Result<Option<ServerTrust>, BootstrapError> {
        let file = std::env::var_os(CA_FILE_ENV).filter(|f| !f.is_empty());
        ServerTrust::from_settings(file.as_deref().map(Path::new), token)
    }

    /// The trust a client of `server` needs: `None` for `http://` servers; for `https://`
    /// ones, `trust` or the error that says how to give it.
    pub fn required(
        server: &str,
        trust: Option<&ServerTrust>,
    ) -> Result<Option<ServerTrust>, BootstrapError> {
        if !server.starts_with("https://") {
            return Ok(None);
        }
        trust
            .cloned()
            .map(Some)
            .ok_or_else(|| BootstrapError::NoTrust {
                server: server.to_owned(),
            })
    }

    /// The rustls configuration of a client of the server (ring, TLS 1.2 and 1.3, ALPN
    /// `h2` and `http/1.1`, no client certificate): the server's chain must verify against
    /// this trust, and its certificate must name the address or DNS name connected to.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, BootstrapError> {
        self.client_config_as(None)
    }

    /// [`ServerTrust::client_config`] presenting `identity`'s certificate (the current one
    /// at each handshake), so a workload that has enrolled authenticates to the server
    /// with its certificate instead of a token.
    pub fn client_config_as(
        &self,
        identity: Option<&Identity>,
    ) -> Result<Arc<ClientConfig>, BootstrapError> {
        let provider = crate::provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = match self {
            ServerTrust::Roots(roots) => builder.with_root_certificates(roots.clone()),
            ServerTrust::Pin(hash) => {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                        pin: hash.to_ascii_lowercase(),
                        algorithms: provider.signature_verification_algorithms,
                        provider: provider.clone(),
                    }))
            }
        };
        let mut config = match identity {
            Some(identity) => builder.with_client_cert_resolver(Arc::new(identity.clone())),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

/// Verifies a server against the CA of a pin: the CA is taken from the chain the server
/// presents only if its SHA-256 is the pin, then the chain and the server's name are
/// verified against it as against any root.
#[derive(Debug)]
struct PinnedVerifier {
    pin: String,
    algorithms: WebPkiSupportedAlgorithms,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

/// Why a pinned verification failed.
#[derive(Debug, thiserror::Error)]
#[error(
    "the server's certificate chain does not contain the CA pinned by the join token \
     (sha256:{0}): the token is for another server or CA, or something intercepts the \
     connection; ask for a join token from this server (`ieum token create`) or set \
     IEUM_CA_FILE to its ca.pem"
)]
struct PinMismatch(String);

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates.iter().find(|c| fingerprint(c) == self.pin) else {
            return Err(rustls::Error::General(
                PinMismatch(self.pin.clone()).to_string(),
            ));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(format!("the pinned CA: {e}")))?;
        verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The server's own API certificate and key, swapped whole by [`ServerKey::replace`] when
/// renewed; new handshakes present the current one. Cheap to clone.
#[derive(Clone)]
pub struct ServerKey {
    current: Arc<RwLock<Arc<CertifiedKey>>>,
}

impl fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerKey").finish_non_exhaustive()
    }
}

impl ServerKey {
    /// A key presenting `cert`.
    pub fn new(cert: ServerCertificate) -> Result<ServerKey, BootstrapError> {
        Ok(ServerKey {
            current: Arc::new(RwLock::new(certified(cert)?)),
        })
    }

    /// Presents `cert` from the next handshake on.
    pub fn replace(&self, cert: ServerCertificate) -> Result<(), BootstrapError> {
        let key = certified(cert)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = key;
        Ok(())
    }
}

fn certified(cert: ServerCertificate) -> Result<Arc<CertifiedKey>, BootstrapError> {
    let provider = crate::provider();
    let key = provider.key_provider.load_private_key(cert.key)?;
    Ok(Arc::new(CertifiedKey::new(cert.chain, key)))
}

impl ResolvesServerCert for ServerKey {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

/// The configuration of the server's HTTPS listener: presents `key`, ALPN `h2` and
/// `http/1.1`. With `mesh` (the CA's roots and trust domain), a client may present a mesh
/// certificate instead of a token (an enrolled sidecar or gateway; read it with
/// [`crate::peer_identity`]); a client without one authenticates with a token as before.
pub fn api_server_config(
    key: &ServerKey,
    mesh: Option<(Arc<RootCertStore>, TrustDomain)>,
) -> Result<Arc<ServerConfig>, BootstrapError> {
    let builder = ServerConfig::builder_with_provider(crate::provider())
        .with_safe_default_protocol_versions()?;
    let builder = match mesh {
        Some((roots, trust_domain)) => builder.with_client_cert_verifier(
            crate::mesh::mesh_client_verifier(roots, trust_domain, ClientAuth::Optional)?,
        ),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(key.clone()));
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests;
