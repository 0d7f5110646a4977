//! The workload's side of enrolment: a key pair generated in the process (its private key
//! never leaves it: only the CSR, which holds the public key, is sent), and the
//! [`Credentials`] built from the chain the CA returned and that key.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, DistinguishedName, DnType, PublicKeyData as _, SanType};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

use crate::spiffe::SpiffeId;

/// Why a key, a CSR or credentials could not be made; the message says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    /// Generating the key or signing the CSR failed.
    #[error("{what} failed: {reason}")]
    Crypto {
        /// What was being done.
        what: &'static str,
        /// The library's reason.
        reason: String,
    },
    /// The chain the CA returned is not usable.
    #[error("the issued certificate chain {0}")]
    Chain(String),
    /// The certificate is for another key than this process holds.
    #[error(
        "the issued certificate is for another key than this key pair: send the CSR of the key pair the credentials are built with"
    )]
    KeyMismatch,
}

/// A workload's ECDSA P-256 key pair. The private key stays in this value and then in the
/// [`Credentials`] built from it; there is no way to export it.
pub struct KeyPair {
    /// The key, as rcgen signs CSRs with it.
    inner: rcgen::KeyPair,
}

impl KeyPair {
    /// A new key pair from the system's random number generator.
    pub fn generate() -> Result<KeyPair, CredentialsError> {
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map(|inner| KeyPair { inner })
            .map_err(|e| CredentialsError::Crypto {
                what: "generating a key pair",
                reason: e.to_string(),
            })
    }

    /// The private key as PKCS#8 PEM, to keep beside its certificate in the workload's own
    /// data directory (mode 0600), so a restart while the server is away can go on with a
    /// certificate that is still valid. It is never sent anywhere.
    pub fn to_pkcs8_pem(&self) -> String {
        self.inner.serialize_pem()
    }

    /// A key pair read back from [`KeyPair::to_pkcs8_pem`]; only ECDSA P-256 keys.
    pub fn from_pkcs8_pem(pem: &str) -> Result<KeyPair, CredentialsError> {
        let inner = rcgen::KeyPair::from_pem(pem).map_err(|e| CredentialsError::Crypto {
            what: "reading a saved key pair",
            reason: e.to_string(),
        })?;
        if !inner.is_compatible(&rcgen::PKCS_ECDSA_P256_SHA256) {
            return Err(CredentialsError::Crypto {
                what: "reading a saved key pair",
                reason: "not an ECDSA P-256 key".into(),
            });
        }
        Ok(KeyPair { inner })
    }

    /// A certificate signing request (PEM) for `id`, signed with this key. The CA uses
    /// only its public key: the id in it is informative, the CA decides the real one.
    pub fn csr(&self, id: &SpiffeId) -> Result<String, CredentialsError> {
        let crypto = |what: &'static str| {
            move |e: rcgen::Error| CredentialsError::Crypto {
                what,
                reason: e.to_string(),
            }
        };
        let mut params = CertificateParams::default();
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, id.principal());
        params.distinguished_name = subject;
        params.subject_alt_names = vec![SanType::URI(
            id.uri()
                .try_into()
                .map_err(crypto("encoding the SPIFFE id"))?,
        )];
        params
            .serialize_request(&self.inner)
            .map_err(crypto("signing the CSR"))?
            .pem()
            .map_err(crypto("encoding the CSR"))
    }

    /// The public key (SubjectPublicKeyInfo, DER).
    pub fn public_key_der(&self) -> Vec<u8> {
        self.inner.subject_public_key_info()
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("algorithm", &"ECDSA P-256")
            .finish_non_exhaustive()
    }
}

/// A workload's current identity: the chain the CA issued (leaf first) and the private key
/// it certifies, ready for rustls. Cheap to clone (the key is shared, not copied).
#[derive(Clone)]
pub struct Credentials {
    /// The SPIFFE id the leaf certifies, read from the certificate.
    id: SpiffeId,
    /// The chain and the signing key, as rustls presents them.
    certified: Arc<CertifiedKey>,
    /// The leaf's start of validity.
    not_before: SystemTime,
    /// The leaf's end of validity.
    not_after: SystemTime,
}

impl Credentials {
    /// Credentials from the chain the CA returned (PEM, leaf first, as
    /// [`Issued::chain_pem`](crate::Issued::chain_pem)) and the key pair whose CSR was
    /// sent. The id is read from the leaf: compare [`Credentials::id`] with the one asked
    /// for.
    pub fn new(chain_pem: &str, key: KeyPair) -> Result<Credentials, CredentialsError> {
        let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CredentialsError::Chain(format!("is not valid PEM ({e})")))?;
        Credentials::from_chain(chain, key)
    }

    /// [`Credentials::new`] from DER certificates, leaf first.
    pub fn from_chain(
        chain: Vec<CertificateDer<'static>>,
        key: KeyPair,
    ) -> Result<Credentials, CredentialsError> {
        let first = chain.first().ok_or_else(|| {
            CredentialsError::Chain("holds no certificate (-----BEGIN CERTIFICATE-----)".into())
        })?;
        let leaf = crate::x509::leaf(first).map_err(|why| {
            CredentialsError::Chain(format!(
                "does not start with a mesh workload certificate: {why}"
            ))
        })?;
        if leaf.public_key != key.public_key_der() {
            return Err(CredentialsError::KeyMismatch);
        }
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.inner.serialize_der()));
        let signing_key = crate::provider()
            .key_provider
            .load_private_key(der)
            .map_err(|e| CredentialsError::Crypto {
                what: "loading the key into rustls",
                reason: e.to_string(),
            })?;
        Ok(Credentials {
            id: leaf.id,
            certified: Arc::new(CertifiedKey::new(chain, signing_key)),
            not_before: leaf.not_before,
            not_after: leaf.not_after,
        })
    }

    /// The SPIFFE id the certificate carries.
    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    /// The chain presented to peers, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.certified.cert
    }

    /// The private key, as rustls signs with it (it cannot be exported from there).
    pub fn key(&self) -> &Arc<dyn rustls::sign::SigningKey> {
        &self.certified.key
    }

    /// The start of the certificate's validity.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// The end of the certificate's validity.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// When to renew: once two thirds of the lifetime have passed, which leaves a third
    /// (8 hours of the default 24) to reach the server.
    pub fn renew_at(&self) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or(Duration::ZERO);
        self.not_before + lifetime * 2 / 3
    }

    /// The chain and key, as the rustls resolvers hand them out.
    pub(crate) fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("id", &self.id.uri())
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Ca, TrustDomain, Workload};
    use ieum_model::Name;

    fn orders() -> SpiffeId {
        SpiffeId::service(TrustDomain::default(), Name::parse("orders").unwrap())
    }

    #[test]
    fn credentials_come_from_the_issued_chain_and_the_key_whose_csr_was_sent() {
        let ca = Ca::generate(TrustDomain::default()).unwrap();
        let key = KeyPair::generate().unwrap();
        let issued = ca
            .issue(
                &key.csr(&orders()).unwrap(),
                &orders(),
                Duration::from_secs(3600),
            )
            .unwrap();
        let creds = Credentials::new(&issued.chain_pem, key).unwrap();
        assert_eq!(creds.id(), &orders());
        assert_eq!(creds.chain(), &issued.chain[..]);
        assert_eq!(creds.not_before(), issued.not_before);
        assert_eq!(creds.not_after(), issued.not_after);
        assert_eq!(creds.chain().len(), 2);
    }

    #[test]
    fn a_saved_key_pair_reads_back_and_still_matches_its_certificate() {
        let ca = Ca::generate(TrustDomain::default()).unwrap();
        let key = KeyPair::generate().unwrap();
        let issued = ca
            .issue(
                &key.csr(&orders()).unwrap(),
                &orders(),
                Duration::from_secs(3600),
            )
            .unwrap();
        let pem = key.to_pkcs8_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{pem}");
        let back = KeyPair::from_pkcs8_pem(&pem).unwrap();
        assert_eq!(back.public_key_der(), key.public_key_der());
        assert!(Credentials::new(&issued.chain_pem, back).is_ok());
        // Another key does not match the certificate.
        let other = KeyPair::generate().unwrap();
        assert!(matches!(
            Credentials::new(&issued.chain_pem, other),
            Err(CredentialsError::KeyMismatch)
        ));
        assert!(KeyPair::from_pkcs8_pem("not a key").is_err());
    }

    #[test]
    fn renewal_is_due_after_two_thirds_of_the_lifetime() {
        let ca = Ca::generate(TrustDomain::default()).unwrap();
        let key = KeyPair::generate().unwrap();
        let issued = ca
            .issue(
                &key.csr(&orders()).unwrap(),
                &orders(),
                Duration::from_secs(3 * 3600),
            )
            .unwrap();
        let creds = Credentials::new(&issued.chain_pem, key).unwrap();
        // The lifetime is 3 h plus the minute of clock skew before it.
        let lifetime = Duration::from_secs(3 * 3600 + 60);
        assert_eq!(
            creds
                .not_after()
                .duration_since(creds.not_before())
                .unwrap(),
            lifetime
        );
        assert_eq!(creds.renew_at(), creds.not_before() + lifetime * 2 / 3);
        assert!(creds.renew_at() > SystemTime::now() + Duration::from_secs(3600));
        assert!(creds.renew_at() < creds.not_after() - Duration::from_secs(3600));
    }

    #[test]
    fn a_chain_for_another_key_is_refused() {
        let ca = Ca::generate(TrustDomain::default()).unwrap();
        let key = KeyPair::generate().unwrap();
        let issued = ca
            .issue(
                &key.csr(&orders()).unwrap(),
                &orders(),
                Duration::from_secs(60),
            )
            .unwrap();
        let other = KeyPair::generate().unwrap();
        let err = Credentials::new(&issued.chain_pem, other).unwrap_err();
        assert_eq!(err, CredentialsError::KeyMismatch);
    }

    #[test]
    fn a_chain_without_a_mesh_leaf_is_refused_with_a_reason() {
        let key = KeyPair::generate().unwrap();
        let err = Credentials::new("", key).unwrap_err();
        assert!(err.to_string().contains("holds no certificate"), "{err}");

        // The CA's own certificate has a URI SAN, but not a workload's id.
        let ca = Ca::generate(TrustDomain::default()).unwrap();
        let err = Credentials::new(ca.cert_pem(), KeyPair::generate().unwrap()).unwrap_err();
        assert!(err.to_string().contains("has no path"), "{err}");
        assert!(matches!(err, CredentialsError::Chain(_)));
    }

    #[test]
    fn the_csr_names_the_id_and_signs_with_the_key() {
        let key = KeyPair::generate().unwrap();
        let id = SpiffeId::new(TrustDomain::default(), Workload::coordinator());
        let csr = key.csr(&id).unwrap();
        assert!(csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        let der = rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(csr.as_bytes())
            .unwrap();
        use x509_parser::prelude::FromDer as _;
        let (_, parsed) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&der).unwrap();
        parsed.verify_signature().unwrap();
        assert_eq!(
            parsed.certification_request_info.subject_pki.raw,
            &key.public_key_der()[..]
        );
        assert!(!format!("{key:?}").contains("PRIVATE"));
    }
}
