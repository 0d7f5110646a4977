//! TLS for broker connections: one rustls client configuration per `PubSub`, handed to
//! every client library that takes one (`async-nats`, `lapin`, `rumqttc`); the `redis`
//! crate builds its own from the same CA certificates.
//!
//! TLS is chosen by the URL's scheme (`tls://`, `amqps://`, `mqtts://`/`ssl://`,
//! `rediss://`); `tls.caFile` and `tls.serverName` only say what to trust and which name
//! to expect. The certificate is always verified: there is no switch to turn that off.
//!
//! - **Crypto:** rustls with the `ring` provider, given explicitly to every configuration
//!   built here, so nothing depends on a process-wide default (for the `redis` crate,
//!   which asks for the default, [`install_ring_as_default`] installs ring when no other
//!   provider was installed first). No OpenSSL.
//! - **Roots:** the CA certificates of `tls.caFile`, and only those, when it is set;
//!   otherwise the platform's trusted roots through `rustls-native-certs`. That crate was
//!   already in the build (`async-nats` and `redis` use it), and it reads the store the
//!   host's operators keep up to date (Debian's `ca-certificates`, `SSL_CERT_FILE`,
//!   `SSL_CERT_DIR`), where a compiled-in bundle such as `webpki-roots` changes only with
//!   a new build of ieum and ignores a company's own CA installed on the host.
//! - **Name:** the URL's host, or `tls.serverName`. The override is applied by the
//!   verifier, [`Verifier`], which checks the certificate with rustls' WebPKI verifier
//!   against that name; SNI still carries the URL's host (Redis, whose client connects
//!   by name, sends `serverName` as SNI too).
//! - **Errors:** the verifier keeps the last verification failure, so a failed connect
//!   says "TLS: the broker's certificate did not verify against tls.caFile PATH (…)"
//!   however the client library wraps the handshake error (Redis, whose client uses its
//!   own verifier, is recognised by the error's text).

use std::sync::{Arc, Mutex, PoisonError};

use ieum_model::bridge::PubSubTls;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::BrokerError;

/// A `PubSub`'s TLS settings, loaded: what each broker implementation connects with.
#[derive(Debug)]
pub(crate) struct Tls {
    /// The client configuration (ring provider, [`Verifier`]) the libraries are handed.
    pub(crate) config: Arc<ClientConfig>,
    /// The PEM text of `tls.caFile`, for the `redis` crate, which builds its own
    /// configuration from it.
    pub(crate) ca_pem: Option<Vec<u8>>,
    /// `tls.serverName`, when set: the name the certificate must carry.
    pub(crate) server_name: Option<String>,
    /// What is trusted, in words, for errors.
    trust: String,
    /// `tls.caFile`, for errors.
    ca_file: Option<String>,
    /// The last certificate verification failure, taken by [`Tls::explain`].
    failure: Arc<Mutex<Option<String>>>,
}

impl Tls {
    /// Reads `tls.caFile` (or the platform's roots) and builds the client configuration.
    /// A missing, unreadable or empty CA file is a [`BrokerError::Config`] naming it.
    pub(crate) async fn load(pubsub: &str, spec: Option<&PubSubTls>) -> Result<Tls, BrokerError> {
        let ca_file = spec.and_then(|t| t.ca_file.clone());
        let server_name = spec.and_then(|t| t.server_name.clone());
        let mut roots = RootCertStore::empty();
        let (ca_pem, trust) = match &ca_file {
            Some(path) => {
                let pem = tokio::fs::read(path).await.map_err(|e| {
                    BrokerError::Config(format!(
                        "PubSub/{pubsub}: cannot read tls.caFile {path}: {e}; give the path of a PEM file with the CA certificate(s) of the broker, readable by this process"
                    ))
                })?;
                let certs = CertificateDer::pem_slice_iter(&pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| {
                        BrokerError::Config(format!(
                            "PubSub/{pubsub}: tls.caFile {path} is not a valid PEM file ({e})"
                        ))
                    })?;
                if certs.is_empty() {
                    return Err(BrokerError::Config(format!(
                        "PubSub/{pubsub}: tls.caFile {path} holds no certificate: it must hold the CA certificate(s) in PEM (-----BEGIN CERTIFICATE-----)"
                    )));
                }
                for cert in certs {
                    roots.add(cert).map_err(|e| {
                        BrokerError::Config(format!(
                            "PubSub/{pubsub}: tls.caFile {path} holds a certificate that cannot be a trust anchor ({e})"
                        ))
                    })?;
                }
                (Some(pem), format!("tls.caFile {path}"))
            }
            None => {
                let found = tokio::task::spawn_blocking(rustls_native_certs::load_native_certs)
                    .await
                    .map_err(|e| {
                        BrokerError::Config(format!(
                            "PubSub/{pubsub}: reading the platform's CA certificates failed: {e}"
                        ))
                    })?;
                let (added, _ignored) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    let why: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
                    return Err(BrokerError::Config(format!(
                        "PubSub/{pubsub}: no trusted CA certificates found on this host{}: install them (Debian: ca-certificates), or name the broker's CA with tls.caFile",
                        if why.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", why.join("; "))
                        }
                    )));
                }
                (None, "the platform's trusted CA certificates".to_owned())
            }
        };
        let server = match &server_name {
            Some(name) => Some(ServerName::try_from(name.clone()).map_err(|e| {
                BrokerError::Config(format!(
                    "PubSub/{pubsub}: tls.serverName `{name}` is not a DNS name or IP address ({e})"
                ))
            })?),
            None => None,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| BrokerError::Config(format!("PubSub/{pubsub}: TLS: {e}")))?;
        let failure = Arc::new(Mutex::new(None));
        let verifier = Verifier {
            inner: webpki,
            server_name: server,
            failure: failure.clone(),
        };
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| BrokerError::Config(format!("PubSub/{pubsub}: TLS: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Ok(Tls {
            config: Arc::new(config),
            ca_pem,
            server_name,
            trust,
            ca_file,
            failure,
        })
    }

    /// The reason of a failed connect: when the broker's certificate did not verify,
    /// that, with what was trusted and what to check; otherwise `error` as it is.
    pub(crate) fn explain(&self, error: impl std::fmt::Display) -> String {
        let text = error.to_string();
        let recorded = self
            .failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let why = match recorded {
            Some(why) => why,
            None if text.to_ascii_lowercase().contains("certificate") => text,
            None => return text,
        };
        let name = match &self.server_name {
            Some(name) => format!("`{name}` (tls.serverName)"),
            None => "the URL's host".to_owned(),
        };
        let fix = match &self.ca_file {
            Some(path) => {
                format!("check that {path} holds the CA that signed it and that it names {name}")
            }
            None => format!(
                "check that it names {name}, or name the private CA that signed it in tls.caFile"
            ),
        };
        format!(
            "TLS: the broker's certificate did not verify against {} ({why}): {fix}",
            self.trust
        )
    }
}

/// The reason of a failed connect, explained by [`Tls::explain`] when TLS is on.
pub(crate) fn reason(tls: Option<&Tls>, error: impl std::fmt::Display) -> String {
    match tls {
        Some(tls) => tls.explain(error),
        None => error.to_string(),
    }
}

/// Installs ring as rustls' process-wide provider unless one is installed already, for
/// libraries that build their configuration with `ClientConfig::builder()` (the `redis`
/// crate). Every configuration built here names its provider itself.
pub(crate) fn install_ring_as_default() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Another thread may have installed one in between: either way one is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// rustls' WebPKI verifier, checking the name of `tls.serverName` when it is set, and
/// remembering why a certificate was refused. It verifies exactly as WebPKI does: this
/// is no way around the check.
#[derive(Debug)]
struct Verifier {
    inner: Arc<WebPkiServerVerifier>,
    server_name: Option<ServerName<'static>>,
    failure: Arc<Mutex<Option<String>>>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = self.server_name.as_ref().unwrap_or(server_name);
        self.inner
            .verify_server_cert(end_entity, intermediates, name, ocsp_response, now)
            .inspect_err(|e| {
                *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(e.to_string());
            })
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

    fn root_hint_subjects(&self) -> Option<&[rustls::DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}
