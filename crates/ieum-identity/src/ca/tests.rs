use std::time::{Duration, SystemTime};

use base64::Engine as _;
use ieum_model::Name;
use rcgen::{CertificateParams, DnType, IsCa, KeyUsagePurpose, SanType};
use rustls::pki_types::CertificateSigningRequestDer;
use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};

use super::*;
use crate::KeyPair;
use crate::spiffe::Workload;

fn orders() -> SpiffeId {
    SpiffeId::service(TrustDomain::default(), Name::parse("orders").unwrap())
}

fn csr_pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    format!("-----BEGIN CERTIFICATE REQUEST-----\n{b64}\n-----END CERTIFICATE REQUEST-----\n")
}

fn csr_der(pem: &str) -> Vec<u8> {
    CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec()
}

fn seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Checks that `leaf` was signed by the key of `root`.
fn signed_by(leaf: &CertificateDer<'_>, root: &CertificateDer<'_>) -> bool {
    let (_, leaf) = X509Certificate::from_der(leaf).unwrap();
    let (_, root) = X509Certificate::from_der(root).unwrap();
    leaf.issuer() == root.subject() && leaf.verify_signature(Some(root.public_key())).is_ok()
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn the_ca_is_created_once_with_a_private_key_file_and_reloaded_identically() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("data").join("ca");
    let first = Ca::load_or_create(&ca_dir, TrustDomain::default()).unwrap();
    let cert_path = ca_dir.join(CA_CERT_FILE);
    let key_path = ca_dir.join(CA_KEY_FILE);
    assert_eq!(fs::read_to_string(&cert_path).unwrap(), first.cert_pem());
    assert!(
        fs::read_to_string(&key_path)
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );
    #[cfg(unix)]
    assert_eq!(mode(&key_path), 0o600);
    // Nothing but the two files: no temporary file is left behind.
    let mut names: Vec<String> = fs::read_dir(&ca_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, [CA_KEY_FILE, CA_CERT_FILE]);

    let key_before = fs::read(&key_path).unwrap();
    let second = Ca::load_or_create(&ca_dir, TrustDomain::default()).unwrap();
    assert_eq!(second.fingerprint(), first.fingerprint());
    assert_eq!(second.cert_pem(), first.cert_pem());
    assert_eq!(
        fs::read(&key_path).unwrap(),
        key_before,
        "the key is not rewritten"
    );
    // The reloaded CA signs with the same key: its certificates chain to the first root.
    let key = KeyPair::generate().unwrap();
    let issued = second
        .issue(&key.csr(&orders()).unwrap(), &orders(), DEFAULT_TTL)
        .unwrap();
    assert!(signed_by(&issued.chain[0], first.cert_der()));

    let other_dir = dir.path().join("other");
    let other = Ca::load_or_create(&other_dir, TrustDomain::default()).unwrap();
    assert_ne!(other.fingerprint(), first.fingerprint());
    // Each CA has a name of its own, so WebPKI never mistakes one for the other.
    let subject = |ca: &Ca| {
        let (_, cert) = X509Certificate::from_der(ca.cert_der()).unwrap();
        cert.subject().to_string()
    };
    assert_ne!(subject(&other), subject(&first));
    assert!(
        subject(&first).contains("ieum mesh CA ieum.local"),
        "{}",
        subject(&first)
    );
}

#[test]
fn a_ca_directory_with_one_file_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    Ca::load_or_create(dir.path(), TrustDomain::default()).unwrap();
    fs::remove_file(dir.path().join(CA_CERT_FILE)).unwrap();
    let err = Ca::load_or_create(dir.path(), TrustDomain::default()).unwrap_err();
    assert!(matches!(err, CaError::Incomplete { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("ca-key.pem exists but"), "{text}");
    assert!(text.contains("ca.pem does not"), "{text}");
    assert!(
        text.contains("restore the missing file, or remove"),
        "{text}"
    );
    // Nothing was created in its place.
    assert!(!dir.path().join(CA_CERT_FILE).exists());
}

#[test]
fn a_broken_ca_file_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    Ca::load_or_create(dir.path(), TrustDomain::default()).unwrap();
    let other = Ca::generate(TrustDomain::default()).unwrap();
    fs::write(dir.path().join(CA_CERT_FILE), other.cert_pem()).unwrap();
    let err = Ca::load_or_create(dir.path(), TrustDomain::default()).unwrap_err();
    let key_path = dir.path().join(CA_KEY_FILE);
    assert_eq!(
        err.to_string(),
        format!(
            "the CA key in {} is not the key of the CA certificate: supply the pair that belongs together",
            key_path.display()
        )
    );
    fs::write(dir.path().join(CA_CERT_FILE), "garbage").unwrap();
    let err = Ca::load_or_create(dir.path(), TrustDomain::default()).unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "the CA certificate in {} holds 0 certificates where it must hold exactly one",
            dir.path().join(CA_CERT_FILE).display()
        )),
        "{err}"
    );
}

#[test]
fn the_ca_is_shared_across_tasks() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Ca>();
    send_sync::<crate::Identity>();
    send_sync::<crate::Credentials>();
}

#[test]
fn a_ca_made_for_another_trust_domain_is_refused_on_load() {
    let dir = tempfile::tempdir().unwrap();
    Ca::load_or_create(dir.path(), TrustDomain::default()).unwrap();
    let prod = TrustDomain::parse("prod.example").unwrap();
    let err = Ca::load_or_create(dir.path(), prod).unwrap_err();
    assert!(
        matches!(err, CaError::TrustDomainMismatch { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("made for trust domain `ieum.local`, but `prod.example` is configured"),
        "{err}"
    );
}

#[test]
fn an_operators_ca_is_checked_before_use() {
    let ca = Ca::generate(TrustDomain::default()).unwrap();
    let (cert_pem, key_pem) = new_root(&TrustDomain::default(), SystemTime::now()).unwrap();
    // The pair as given works, and signs with the key given.
    let supplied = Ca::from_pem(&cert_pem, &key_pem, TrustDomain::default()).unwrap();
    let key = KeyPair::generate().unwrap();
    let issued = supplied
        .issue(&key.csr(&orders()).unwrap(), &orders(), DEFAULT_TTL)
        .unwrap();
    assert!(signed_by(&issued.chain[0], supplied.cert_der()));

    let cases = [
        (
            ca.cert_pem().to_owned(),
            key_pem.clone(),
            "is not the key of the CA certificate",
        ),
        (
            format!("{cert_pem}{}", ca.cert_pem()),
            key_pem.clone(),
            "holds 2 certificates where it must hold exactly one",
        ),
        (String::new(), key_pem.clone(), "must hold exactly one"),
        (
            cert_pem.clone(),
            "not a key".to_owned(),
            "not a usable PEM private key",
        ),
        (
            issued.cert_pem.clone(),
            key_pem.clone(),
            "is not a CA certificate",
        ),
    ];
    for (cert, key, why) in cases {
        let err = Ca::from_pem(&cert, &key, TrustDomain::default()).unwrap_err();
        assert!(err.to_string().contains(why), "{why}: {err}");
    }

    // An expired root.
    let old = SystemTime::now() - CA_VALIDITY - Duration::from_secs(3600);
    let (cert, key) = new_root(&TrustDomain::default(), old).unwrap();
    let err = Ca::from_pem(&cert, &key, TrustDomain::default()).unwrap_err();
    assert!(err.to_string().contains("expired at"), "{err}");
}

#[test]
fn the_fingerprint_is_the_lowercase_hex_sha256_of_the_roots_der() {
    // SHA-256("abc"), FIPS 180-2's test vector.
    assert_eq!(
        fingerprint(&CertificateDer::from(b"abc".to_vec())),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    let ca = Ca::generate(TrustDomain::default()).unwrap();
    assert_eq!(ca.fingerprint(), fingerprint(ca.cert_der()));
    assert_eq!(ca.fingerprint().len(), 64);
    // The PEM is the DER.
    let from_pem = CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap();
    assert_eq!(&from_pem, ca.cert_der());
}

#[test]
fn a_workload_certificate_carries_exactly_the_id_for_mesh_tls() {
    let ca = Ca::generate(TrustDomain::default()).unwrap();
    let key = KeyPair::generate().unwrap();
    let ttl = Duration::from_secs(3600);
    let before = SystemTime::now();
    let issued = ca
        .issue(&key.csr(&orders()).unwrap(), &orders(), ttl)
        .unwrap();
    let after = SystemTime::now();

    assert_eq!(issued.chain.len(), 2);
    assert_eq!(&issued.chain[1], ca.cert_der());
    let from_pem: Vec<_> = CertificateDer::pem_slice_iter(issued.chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(from_pem, issued.chain);
    assert_eq!(
        CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap(),
        issued.chain[0]
    );
    assert!(signed_by(&issued.chain[0], ca.cert_der()));

    let (_, leaf) = X509Certificate::from_der(&issued.chain[0]).unwrap();
    let sans = &leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names;
    assert_eq!(sans, &[GeneralName::URI("spiffe://ieum.local/svc/orders")]);
    assert!(!leaf.is_ca());
    let usage = leaf.key_usage().unwrap().unwrap().value;
    assert!(usage.digital_signature());
    assert!(!usage.key_cert_sign() && !usage.key_encipherment() && !usage.crl_sign());
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    assert!(!eku.any && !eku.code_signing && eku.other.is_empty());
    assert_eq!(leaf.public_key().raw, &key.public_key_der()[..]);

    // Valid from a minute before issuing, for `ttl`, to the second.
    let not_before = seconds(issued.not_before);
    let not_after = seconds(issued.not_after);
    assert_eq!(leaf.validity().not_before.timestamp() as u64, not_before);
    assert_eq!(leaf.validity().not_after.timestamp() as u64, not_after);
    assert!(seconds(before) - 60 <= not_before && not_before <= seconds(after) - 60);
    assert_eq!(not_after - not_before, 3600 + 60);

    // Every certificate has its own serial number, even for the same key.
    let again = ca
        .issue(&key.csr(&orders()).unwrap(), &orders(), ttl)
        .unwrap();
    let (_, again) = X509Certificate::from_der(&again.chain[0]).unwrap();
    assert_ne!(again.raw_serial(), leaf.raw_serial());
}

#[test]
fn the_names_a_csr_asks_for_are_ignored() {
    let ca = Ca::generate(TrustDomain::default()).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "admin");
    params.subject_alt_names = vec![
        SanType::DnsName("evil.example".try_into().unwrap()),
        SanType::URI("spiffe://ieum.local/svc/admin".try_into().unwrap()),
        SanType::IpAddress("10.0.0.1".parse().unwrap()),
    ];
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();

    let issued = ca.issue(&csr, &orders(), DEFAULT_TTL).unwrap();
    let (_, leaf) = X509Certificate::from_der(&issued.chain[0]).unwrap();
    let sans = &leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names;
    assert_eq!(sans, &[GeneralName::URI("spiffe://ieum.local/svc/orders")]);
    assert!(!leaf.is_ca());
    assert!(!leaf.key_usage().unwrap().unwrap().value.key_cert_sign());
    assert!(
        !leaf
            .extended_key_usage()
            .unwrap()
            .unwrap()
            .value
            .code_signing
    );
    let cn: Vec<_> = leaf
        .subject()
        .iter_common_name()
        .map(|cn| cn.as_str().unwrap())
        .collect();
    assert_eq!(cn, ["orders"]);
    // The key is the CSR's.
    assert_eq!(leaf.public_key().raw, &key.subject_public_key_info()[..]);
}

#[test]
fn a_csr_whose_signature_does_not_verify_is_refused() {
    let ca = Ca::generate(TrustDomain::default()).unwrap();
    let key = KeyPair::generate().unwrap();
    let der = csr_der(&key.csr(&orders()).unwrap());

    // The last byte is the signature's.
    let mut bad_signature = der.clone();
    *bad_signature.last_mut().unwrap() ^= 0x01;
    // A name changed after signing.
    let mut tampered = der.clone();
    let at = der.windows(6).position(|w| w == b"orders").unwrap();
    tampered[at] = b'x';

    for csr in [bad_signature, tampered] {
        let err = ca
            .issue(&csr_pem(&csr), &orders(), DEFAULT_TTL)
            .unwrap_err();
        assert!(matches!(err, CaError::Csr(_)), "{err:?}");
        assert!(
            err.to_string().contains("signature does not verify"),
            "{err}"
        );
    }
    // The untouched request is issued.
    ca.issue(&csr_pem(&der), &orders(), DEFAULT_TTL).unwrap();
}

#[test]
fn malformed_or_foreign_requests_are_refused_with_a_reason() {
    let ca = Ca::generate(TrustDomain::default()).unwrap();
    let key = KeyPair::generate().unwrap();
    let csr = key.csr(&orders()).unwrap();

    let err = ca.issue("hello", &orders(), DEFAULT_TTL).unwrap_err();
    assert!(
        err.to_string().contains("not a PEM certificate request"),
        "{err}"
    );
    let err = ca
        .issue(&csr_pem(b"\x30\x03\x02\x01\x00"), &orders(), DEFAULT_TTL)
        .unwrap_err();
    assert!(err.to_string().contains("cannot be parsed"), "{err}");

    let ed25519 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let other_key = CertificateParams::default()
        .serialize_request(&ed25519)
        .unwrap()
        .pem()
        .unwrap();
    let err = ca.issue(&other_key, &orders(), DEFAULT_TTL).unwrap_err();
    assert!(err.to_string().contains("not ECDSA P-256"), "{err}");

    let prod = SpiffeId::new(
        TrustDomain::parse("prod.example").unwrap(),
        Workload::coordinator(),
    );
    let err = ca.issue(&csr, &prod, DEFAULT_TTL).unwrap_err();
    assert!(matches!(err, CaError::ForeignTrustDomain { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("issues ids of trust domain `ieum.local` only")
    );

    let err = ca.issue(&csr, &orders(), Duration::ZERO).unwrap_err();
    assert!(err.to_string().contains("more than zero"), "{err}");
}

#[test]
fn no_certificate_outlives_the_root() {
    let ca = Ca::generate(TrustDomain::default()).unwrap();
    let key = KeyPair::generate().unwrap();
    let csr = key.csr(&orders()).unwrap();
    let issued = ca.issue(&csr, &orders(), CA_VALIDITY * 2).unwrap();
    assert_eq!(issued.not_after, ca.not_after());

    // Issuing as if after the root's end is refused.
    let late = ca.not_after() + Duration::from_secs(3600);
    let err = ca.issue_at(&csr, &orders(), DEFAULT_TTL, late).unwrap_err();
    assert!(
        err.to_string().contains("replace it before issuing"),
        "{err}"
    );
}

#[test]
fn issue_at_sets_the_validity_window_for_a_given_time() {
    let ca = Ca::generate(TrustDomain::default()).unwrap();
    let key = KeyPair::generate().unwrap();
    let then = UNIX_EPOCH + Duration::from_secs(seconds(SystemTime::now()) - 2 * 86_400);
    let issued = ca
        .issue_at(
            &key.csr(&orders()).unwrap(),
            &orders(),
            Duration::from_secs(3600),
            then,
        )
        .unwrap();
    assert_eq!(issued.not_before, then - CLOCK_SKEW);
    assert_eq!(issued.not_after, then + Duration::from_secs(3600));
}

#[test]
fn the_servers_certificate_names_its_addresses() {
    let ca = Ca::generate(TrustDomain::default()).unwrap();
    let sans = [
        "ieum.example.com".to_owned(),
        "10.1.2.3".to_owned(),
        "::1".to_owned(),
    ];
    let server = ca.server_certificate(&sans, DEFAULT_TTL).unwrap();
    assert_eq!(server.chain.len(), 2);
    assert!(signed_by(&server.chain[0], ca.cert_der()));
    let (_, leaf) = X509Certificate::from_der(&server.chain[0]).unwrap();
    let names = &leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names;
    assert_eq!(
        names,
        &[
            GeneralName::DNSName("ieum.example.com"),
            GeneralName::IPAddress(&[10, 1, 2, 3]),
            GeneralName::IPAddress(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
        ]
    );
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && !eku.client_auth);
    // The key is the certificate's.
    let certified = rustls::sign::CertifiedKey::from_der(
        server.chain.clone(),
        server.key.clone_key(),
        &crate::provider(),
    )
    .unwrap();
    certified.keys_match().unwrap();
    assert!(!format!("{server:?}").contains("PRIVATE"));

    for bad in [&[][..], &["not a name!".to_owned()][..]] {
        assert!(ca.server_certificate(bad, DEFAULT_TTL).is_err(), "{bad:?}");
    }
}
