//! The mesh's certificate authority, run by `ieum server`: a root created in the data
//! directory on first start (or supplied by the operator), which signs short-lived
//! workload certificates for the SPIFFE ids the server decides, and the server's own API
//! certificate.
//!
//! - **Keys:** ECDSA P-256 (rcgen over ring), for the root, the server and every workload.
//! - **Files:** `ca.pem` (the root certificate) and `ca-key.pem` (its PKCS#8 key, mode
//!   0600), each written to a temporary file in the same directory, flushed and renamed, so
//!   a crash never leaves a half-written file. Both present: loaded; neither: created; one
//!   without the other: refused with a message saying which to restore or remove.
//! - **Issuing:** [`Ca::issue`] reads only the public key of a CSR, after checking the CSR's
//!   self-signature (the caller holds the key). Every name, usage or extension the CSR asks
//!   for is ignored: the certificate carries exactly the SPIFFE id the caller passes, as its
//!   one URI SAN.
//! - **Times:** not-before is a minute in the past ([`CLOCK_SKEW`]), so a peer whose clock
//!   is slightly behind accepts a fresh certificate; not-after is `now + ttl`, never later
//!   than the root's own not-after. Times are whole seconds, as X.509 stores them, so the
//!   `not_after` returned is exactly the certificate's.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyUsagePurpose, PublicKeyData as _, SanType, SerialNumber,
};
use ring::rand::SecureRandom as _;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{
    CertificateDer, CertificateSigningRequestDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName,
};
use x509_parser::prelude::{FromDer as _, X509Certificate};

use crate::spiffe::{SpiffeId, TrustDomain};
use crate::x509::{rfc3339, system_time, uri_sans, whole_seconds};

/// The root certificate's file in the CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The root key's file in the CA directory (mode 0600).
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// How long a root created by [`Ca::load_or_create`] is valid: ten years.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
/// The lifetime of a workload certificate unless configured: 24 hours.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// How far in the past a certificate's validity starts, for peers whose clock is behind.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Why the CA could not be loaded or created, or could not issue a certificate; the
/// message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A file of the CA directory could not be read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done (`read`, `write`, `create the directory`).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// One of `ca.pem` and `ca-key.pem` exists without the other.
    #[error(
        "{} exists but {} does not: restore the missing file, or remove {} to create a new CA (every workload must then enrol again)",
        present.display(), missing.display(), present.display()
    )]
    Incomplete {
        /// The file that exists.
        present: PathBuf,
        /// The file that is missing.
        missing: PathBuf,
    },
    /// The CA certificate cannot be used.
    #[error("the CA certificate {0}")]
    Certificate(String),
    /// The CA key cannot be used.
    #[error("the CA key {0}")]
    Key(String),
    /// The CA certificate names a trust domain other than the one configured.
    #[error(
        "the CA certificate was made for trust domain `{certificate}`, but `{configured}` is configured: configure `{certificate}`, or supply a CA for `{configured}`"
    )]
    TrustDomainMismatch {
        /// The trust domain in the certificate (its `spiffe://TD` URI SAN).
        certificate: TrustDomain,
        /// The trust domain the CA was asked to serve.
        configured: TrustDomain,
    },
    /// The certificate signing request was refused.
    #[error("certificate signing request refused: {0}")]
    Csr(String),
    /// The id to issue is of another trust domain.
    #[error("cannot issue {id}: this CA issues ids of trust domain `{ca}` only")]
    ForeignTrustDomain {
        /// The id asked for.
        id: SpiffeId,
        /// The CA's trust domain.
        ca: TrustDomain,
    },
    /// The validity asked for is empty.
    #[error("{0}")]
    Validity(String),
    /// A subject alternative name for the server certificate is neither an IP address nor
    /// a DNS name.
    #[error("server certificate: `{0}` is neither an IP address nor a DNS name")]
    San(String),
    /// Generating a key, a serial number or a signature failed.
    #[error("{what} failed: {reason}")]
    Crypto {
        /// What was being done.
        what: &'static str,
        /// The library's reason.
        reason: String,
    },
}

/// A certificate issued for a workload's CSR.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The workload's certificate, PEM.
    pub cert_pem: String,
    /// The chain to present, PEM: the workload's certificate, then the root.
    pub chain_pem: String,
    /// The same chain, DER.
    pub chain: Vec<CertificateDer<'static>>,
    /// The start of validity (a minute before it was issued).
    pub not_before: SystemTime,
    /// The end of validity.
    pub not_after: SystemTime,
}

/// The key and certificate of the server's own API, generated by the server, which is the
/// CA: its key never leaves it either.
pub struct ServerCertificate {
    /// The chain to present: the server's certificate, then the root.
    pub chain: Vec<CertificateDer<'static>>,
    /// The server's private key (PKCS#8).
    pub key: PrivateKeyDer<'static>,
    /// The server's certificate, PEM (to show or save; the key is not given as PEM).
    pub cert_pem: String,
    /// The end of validity.
    pub not_after: SystemTime,
}

impl fmt::Debug for ServerCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCertificate")
            .field("cert_pem", &self.cert_pem)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The mesh's certificate authority: a root certificate and its key, in memory.
pub struct Ca {
    /// The only trust domain it issues ids of.
    trust_domain: TrustDomain,
    /// The root certificate, DER: the trust anchor of every workload and the last
    /// certificate of every chain issued.
    cert: CertificateDer<'static>,
    /// The same, PEM, as read or written.
    cert_pem: String,
    /// The root as a trust store, for the mesh's rustls configurations.
    roots: Arc<RootCertStore>,
    /// The signing key with the root's subject and key identifier.
    issuer: Issuer<'static, rcgen::KeyPair>,
    /// The root's end of validity: no certificate outlives it.
    not_after: SystemTime,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("trust_domain", &self.trust_domain)
            .field("fingerprint", &self.fingerprint())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Loads the CA from `dir/ca.pem` and `dir/ca-key.pem`, or creates a new root there
    /// when neither exists (the directory too). Blocking file I/O: call it at start-up,
    /// or through `spawn_blocking`.
    pub fn load_or_create(dir: &Path, trust_domain: TrustDomain) -> Result<Ca, CaError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let exists = |path: &Path| {
            path.try_exists().map_err(|source| CaError::Io {
                action: "look for",
                path: path.to_owned(),
                source,
            })
        };
        match (exists(&cert_path)?, exists(&key_path)?) {
            (true, true) => {
                let cert_pem = read(&cert_path)?;
                let key_pem = read(&key_path)?;
                warn_if_readable_by_others(&key_path);
                let ca = Ca::from_pem(&cert_pem, &key_pem, trust_domain).map_err(|e| match e {
                    CaError::Certificate(reason) => {
                        CaError::Certificate(format!("in {} {reason}", cert_path.display()))
                    }
                    CaError::Key(reason) => {
                        CaError::Key(format!("in {} {reason}", key_path.display()))
                    }
                    other => other,
                })?;
                tracing::info!(
                    dir = %dir.display(),
                    trust_domain = %ca.trust_domain,
                    fingerprint = %ca.fingerprint(),
                    "loaded the mesh CA"
                );
                Ok(ca)
            }
            (false, false) => {
                fs::create_dir_all(dir).map_err(|source| CaError::Io {
                    action: "create the directory",
                    path: dir.to_owned(),
                    source,
                })?;
                let (cert_pem, key_pem) = new_root(&trust_domain, SystemTime::now())?;
                // The key first: a crash between the two leaves a key without a
                // certificate, which is refused with a message, never a certificate whose
                // key is lost.
                write_atomically(&key_path, key_pem.as_bytes(), 0o600)?;
                write_atomically(&cert_path, cert_pem.as_bytes(), 0o644)?;
                let ca = Ca::from_pem(&cert_pem, &key_pem, trust_domain)?;
                tracing::info!(
                    dir = %dir.display(),
                    trust_domain = %ca.trust_domain,
                    fingerprint = %ca.fingerprint(),
                    "created a new mesh CA"
                );
                Ok(ca)
            }
            (true, false) => Err(CaError::Incomplete {
                present: cert_path,
                missing: key_path,
            }),
            (false, true) => Err(CaError::Incomplete {
                present: key_path,
                missing: cert_path,
            }),
        }
    }

    /// A new root in memory only, for tests and for servers that keep no data directory.
    pub fn generate(trust_domain: TrustDomain) -> Result<Ca, CaError> {
        let (cert_pem, key_pem) = new_root(&trust_domain, SystemTime::now())?;
        Ca::from_pem(&cert_pem, &key_pem, trust_domain)
    }

    /// A CA from a certificate and key an operator supplied (PEM; the key PKCS#8, SEC1 or
    /// PKCS#1). The certificate must be one CA certificate, currently valid, whose key is
    /// `key_pem`; if it carries a `spiffe://TD` URI SAN, `TD` must be `trust_domain`.
    pub fn from_pem(
        cert_pem: &str,
        key_pem: &str,
        trust_domain: TrustDomain,
    ) -> Result<Ca, CaError> {
        let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CaError::Certificate(format!("is not valid PEM ({e})")))?;
        let cert = match <[_; 1]>::try_from(certs) {
            Ok([cert]) => cert,
            Err(certs) => {
                return Err(CaError::Certificate(format!(
                    "holds {} certificates where it must hold exactly one (-----BEGIN CERTIFICATE-----), the CA's own",
                    certs.len()
                )));
            }
        };
        let (_, parsed) = X509Certificate::from_der(&cert)
            .map_err(|e| CaError::Certificate(format!("cannot be parsed ({e})")))?;
        if !parsed.is_ca() {
            return Err(CaError::Certificate(
                "is not a CA certificate (basicConstraints CA:TRUE): supply the certificate of a CA, not of a server".into(),
            ));
        }
        if let Ok(Some(usage)) = parsed.key_usage()
            && !usage.value.key_cert_sign()
        {
            return Err(CaError::Certificate(
                "may not sign certificates (its key usage lacks keyCertSign)".into(),
            ));
        }
        let not_after = system_time(parsed.validity().not_after.timestamp());
        if not_after <= SystemTime::now() {
            return Err(CaError::Certificate(format!(
                "expired at {}: replace it (every workload must then enrol again)",
                parsed.validity().not_after
            )));
        }
        for id in uri_sans(&parsed) {
            if let Some(domain) = id.strip_prefix("spiffe://")
                && !domain.contains('/')
                && domain != trust_domain.as_str()
            {
                return Err(CaError::TrustDomainMismatch {
                    certificate: TrustDomain::parse(domain).map_err(|e| {
                        CaError::Certificate(format!("names an invalid trust domain: {e}"))
                    })?,
                    configured: trust_domain,
                });
            }
        }
        let key = rcgen::KeyPair::from_pem(key_pem)
            .map_err(|e| CaError::Key(format!("is not a usable PEM private key ({e})")))?;
        if key.subject_public_key_info() != parsed.public_key().raw {
            return Err(CaError::Key(
                "is not the key of the CA certificate: supply the pair that belongs together"
                    .into(),
            ));
        }
        let mut roots = RootCertStore::empty();
        roots
            .add(cert.clone())
            .map_err(|e| CaError::Certificate(format!("cannot be a trust anchor ({e})")))?;
        let issuer = Issuer::from_ca_cert_der(&cert, key)
            .map_err(|e| CaError::Certificate(format!("cannot sign ({e})")))?;
        Ok(Ca {
            trust_domain,
            cert_pem: pem(&cert),
            cert,
            roots: Arc::new(roots),
            issuer,
            not_after,
        })
    }

    /// The trust domain the CA issues ids of.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The root certificate, PEM: what `IEUM_CA_FILE` names on the workloads' side.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The root certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The lowercase hex SHA-256 of the root's DER: what a join token carries so that a
    /// workload checks the server before sending anything (as `kubeadm` join tokens do).
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert)
    }

    /// The root as a trust store for [`server_config`](crate::server_config) and
    /// [`client_config`](crate::client_config).
    pub fn roots(&self) -> Arc<RootCertStore> {
        self.roots.clone()
    }

    /// The root's end of validity.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Issues a certificate for `id` to the holder of the key that signed `csr_pem`,
    /// valid from a minute ago for `ttl`. Only the CSR's public key is used, once its
    /// signature verifies; the names it asks for are ignored.
    pub fn issue(&self, csr_pem: &str, id: &SpiffeId, ttl: Duration) -> Result<Issued, CaError> {
        self.issue_at(csr_pem, id, ttl, SystemTime::now())
    }

    /// [`Ca::issue`] recording in the certificate the API token that asked for it
    /// (`enrolled_by`, a token name): a workload that later renews with the certificate
    /// alone is renewed only while that token is still valid, so revoking the token stops
    /// renewals. The name is the subject's organizational unit `token:NAME`; read it with
    /// [`crate::enrolled_by`].
    pub fn issue_enrolled(
        &self,
        csr_pem: &str,
        id: &SpiffeId,
        ttl: Duration,
        enrolled_by: Option<&str>,
    ) -> Result<Issued, CaError> {
        self.issue_with(csr_pem, id, ttl, SystemTime::now(), enrolled_by)
    }

    /// [`Ca::issue`] as if the time were `now`: validity from `now` minus [`CLOCK_SKEW`]
    /// to `now + ttl`. For a server whose wall clock is a `Clock`, and for tests of expired
    /// and not-yet-valid certificates.
    pub fn issue_at(
        &self,
        csr_pem: &str,
        id: &SpiffeId,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<Issued, CaError> {
        self.issue_with(csr_pem, id, ttl, now, None)
    }

    fn issue_with(
        &self,
        csr_pem: &str,
        id: &SpiffeId,
        ttl: Duration,
        now: SystemTime,
        enrolled_by: Option<&str>,
    ) -> Result<Issued, CaError> {
        if id.trust_domain() != &self.trust_domain {
            return Err(CaError::ForeignTrustDomain {
                id: id.clone(),
                ca: self.trust_domain.clone(),
            });
        }
        let public_key = csr_public_key(csr_pem)?;
        let (not_before, not_after) = self.validity(now, ttl)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = subject(&id.principal());
        if let Some(token) = enrolled_by {
            params.distinguished_name.push(
                DnType::OrganizationalUnitName,
                format!("{ENROLLED_BY}{token}"),
            );
        }
        params.subject_alt_names = vec![SanType::URI(ia5(id.uri()).map_err(|e| {
            CaError::Crypto {
                what: "encoding the SPIFFE id",
                reason: e,
            }
        })?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = offset_date_time(not_before)?;
        params.not_after = offset_date_time(not_after)?;
        params.serial_number = Some(random_serial()?);
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&public_key, &self.issuer)
            .map_err(|e| CaError::Crypto {
                what: "signing the certificate",
                reason: e.to_string(),
            })?;
        let cert_pem = cert.pem();
        tracing::debug!(%id, ?not_after, "issued a workload certificate");
        Ok(Issued {
            chain_pem: format!("{cert_pem}{}", self.cert_pem),
            cert_pem,
            chain: vec![cert.der().clone(), self.cert.clone()],
            not_before,
            not_after,
        })
    }

    /// A key and certificate for the server's own API, valid for `ttl`, naming `sans`
    /// (each an IP address or a DNS name: the addresses the server is reached at). The
    /// certificate is for TLS servers only.
    pub fn server_certificate(
        &self,
        sans: &[String],
        ttl: Duration,
    ) -> Result<ServerCertificate, CaError> {
        if sans.is_empty() {
            return Err(CaError::Validity(
                "a server certificate needs at least one address or DNS name".into(),
            ));
        }
        let mut names = Vec::with_capacity(sans.len());
        for san in sans {
            names.push(match san.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => match ServerName::try_from(san.as_str()) {
                    Ok(ServerName::DnsName(_)) => {
                        SanType::DnsName(ia5(san.clone()).map_err(|_| CaError::San(san.clone()))?)
                    }
                    _ => return Err(CaError::San(san.clone())),
                },
            });
        }
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| {
            CaError::Crypto {
                what: "generating the server's key",
                reason: e.to_string(),
            }
        })?;
        let (not_before, not_after) = self.validity(SystemTime::now(), ttl)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = subject("ieum server");
        params.subject_alt_names = names;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = offset_date_time(not_before)?;
        params.not_after = offset_date_time(not_after)?;
        params.serial_number = Some(random_serial()?);
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| CaError::Crypto {
                what: "signing the server's certificate",
                reason: e.to_string(),
            })?;
        Ok(ServerCertificate {
            chain: vec![cert.der().clone(), self.cert.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            cert_pem: cert.pem(),
            not_after,
        })
    }

    /// The validity window of a certificate issued at `now` for `ttl`: from `now` minus
    /// [`CLOCK_SKEW`], to `now + ttl` or the root's end if sooner, in whole seconds.
    fn validity(
        &self,
        now: SystemTime,
        ttl: Duration,
    ) -> Result<(SystemTime, SystemTime), CaError> {
        if ttl.is_zero() {
            return Err(CaError::Validity(
                "the lifetime of a certificate must be more than zero".into(),
            ));
        }
        let not_before = whole_seconds(now.checked_sub(CLOCK_SKEW).unwrap_or(UNIX_EPOCH));
        let not_after = whole_seconds(
            now.checked_add(ttl)
                .unwrap_or(self.not_after)
                .min(self.not_after),
        );
        if not_after <= not_before {
            return Err(CaError::Certificate(format!(
                "expires at {}: replace it before issuing more certificates",
                rfc3339(self.not_after)
            )));
        }
        Ok((not_before, not_after))
    }
}

/// The lowercase hex SHA-256 of a certificate's DER, as [`Ca::fingerprint`]: what a
/// workload compares a root it is shown against.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    use std::fmt::Write as _;
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    digest
        .as_ref()
        .iter()
        .fold(String::with_capacity(64), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}

/// A new self-signed root for `trust_domain`, valid from a minute before `now` for
/// [`CA_VALIDITY`]: its certificate and key, PEM.
fn new_root(trust_domain: &TrustDomain, now: SystemTime) -> Result<(String, String), CaError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| {
        CaError::Crypto {
            what: "generating the CA key",
            reason: e.to_string(),
        }
    })?;
    let mut params = CertificateParams::default();
    // A name of its own: WebPKI finds a certificate's issuer by name, so a certificate
    // from another ieum CA (a re-created one) is then of an unknown issuer, not one whose
    // signature fails against a namesake.
    let tag: String = random_bytes::<4>()?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    params.distinguished_name = subject(&format!("ieum mesh CA {trust_domain} {tag}"));
    // The trust domain's own SPIFFE id, so that a later start with another trust domain
    // is refused with a reason instead of splitting the mesh.
    params.subject_alt_names = vec![SanType::URI(
        ia5(format!("spiffe://{trust_domain}")).map_err(|e| CaError::Crypto {
            what: "encoding the trust domain",
            reason: e,
        })?,
    )];
    // Path length 0: the root signs workload certificates directly, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = offset_date_time(whole_seconds(
        now.checked_sub(CLOCK_SKEW).unwrap_or(UNIX_EPOCH),
    ))?;
    params.not_after = offset_date_time(whole_seconds(now + CA_VALIDITY))?;
    params.serial_number = Some(random_serial()?);
    let cert = params.self_signed(&key).map_err(|e| CaError::Crypto {
        what: "signing the CA certificate",
        reason: e.to_string(),
    })?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The public key of a CSR, once its self-signature verifies: what the holder of the key
/// proved it holds. Nothing else of the CSR is read.
fn csr_public_key(csr_pem: &str) -> Result<rcgen::SubjectPublicKeyInfo, CaError> {
    let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes()).map_err(|e| {
        CaError::Csr(format!(
            "not a PEM certificate request (-----BEGIN CERTIFICATE REQUEST-----): {e}"
        ))
    })?;
    let (rest, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(der.as_ref())
            .map_err(|e| CaError::Csr(format!("it cannot be parsed ({e})")))?;
    if !rest.is_empty() {
        return Err(CaError::Csr("it has trailing bytes".into()));
    }
    csr.verify_signature().map_err(|e| {
        CaError::Csr(format!(
            "its signature does not verify with its own public key ({e}): the request was corrupted, or not made by the holder of the key"
        ))
    })?;
    let spki = csr.certification_request_info.subject_pki.raw;
    let key = rcgen::SubjectPublicKeyInfo::from_der(spki)
        .map_err(|e| CaError::Csr(format!("its public key is not supported ({e})")))?;
    if key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
        return Err(CaError::Csr(
            "its key is not ECDSA P-256, the mesh's key type: generate it with KeyPair::generate"
                .into(),
        ));
    }
    Ok(key)
}

/// The subject of the certificates made here: `O=ieum, CN=common_name`. Peers are
/// identified by the URI SAN; the subject is for people reading the certificate.
/// The prefix of the subject's organizational unit that names the enrolling token.
pub(crate) const ENROLLED_BY: &str = "token:";

fn subject(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "ieum");
    name.push(DnType::CommonName, common_name);
    name
}

/// `s` as an IA5 (ASCII) string.
fn ia5(s: String) -> Result<Ia5String, String> {
    Ia5String::try_from(s).map_err(|e| e.to_string())
}

/// A random positive 128-bit serial number: unique per certificate, where rcgen's default
/// (a hash of the public key) would repeat for two certificates of one key.
fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = random_bytes::<16>()?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x40; // never a leading zero byte, so the encoding is always 16 bytes
    Ok(SerialNumber::from_slice(&bytes))
}

/// `N` bytes from the system's random number generator.
fn random_bytes<const N: usize>() -> Result<[u8; N], CaError> {
    let mut bytes = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CaError::Crypto {
            what: "drawing random bytes",
            reason: "the system's random number generator failed".into(),
        })?;
    Ok(bytes)
}

/// A `SystemTime` (whole seconds) as rcgen takes it.
fn offset_date_time(t: SystemTime) -> Result<time::OffsetDateTime, CaError> {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    i64::try_from(secs)
        .ok()
        .and_then(|secs| time::OffsetDateTime::from_unix_timestamp(secs).ok())
        .ok_or_else(|| CaError::Validity(format!("{secs} seconds since 1970 is out of range")))
}

/// A certificate, PEM: the same text whether it was read from an operator's file (with
/// whatever comments that held) or made here.
fn pem(cert: &CertificateDer<'_>) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 64);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        // Base64 is ASCII.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Reads a CA file.
fn read(path: &Path) -> Result<String, CaError> {
    fs::read_to_string(path).map_err(|source| CaError::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })
}

/// Warns when the CA key file can be read by users other than its owner.
fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(meta) = fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = format_args!("{mode:o}"),
                    "the mesh CA's key can be read by other users: `chmod 600` it"
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// Writes `contents` to `path` whole or not at all: into a temporary file beside it
/// (created with `mode` on unix), flushed to disk, then renamed over `path`.
fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), CaError> {
    let io_error = |action: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| CaError::Io {
            action,
            path,
            source,
        }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    // A leftover of an earlier crash of a process with the same id.
    let _ = fs::remove_file(&tmp);
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let result = (|| {
        let mut file = options.open(&tmp).map_err(io_error("create", &tmp))?;
        file.write_all(contents).map_err(io_error("write", &tmp))?;
        file.sync_all().map_err(io_error("write", &tmp))?;
        drop(file);
        fs::rename(&tmp, path).map_err(io_error("write", path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    // The rename itself is durable once the directory is.
    #[cfg(unix)]
    if let Ok(dir) = fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests;
