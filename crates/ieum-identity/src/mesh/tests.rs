use std::time::Duration;

use ieum_model::Name;

use super::*;
use crate::{Ca, KeyPair};

fn orders() -> SpiffeId {
    SpiffeId::service(TrustDomain::default(), Name::parse("orders").unwrap())
}

fn identity(ca: &Ca, id: &SpiffeId) -> Identity {
    let key = KeyPair::generate().unwrap();
    let issued = ca
        .issue(&key.csr(id).unwrap(), id, Duration::from_secs(3600))
        .unwrap();
    Identity::new(Credentials::new(&issued.chain_pem, key).unwrap())
}

#[test]
fn the_peer_identity_is_the_leafs_spiffe_id() {
    let ca = Ca::generate(TrustDomain::default()).unwrap();
    let identity = identity(&ca, &orders());
    assert_eq!(peer_identity(identity.current().chain()), Some(orders()));
    // No chain, a CA certificate (no workload id) or garbage: no identity.
    assert_eq!(peer_identity(&[]), None);
    assert_eq!(peer_identity(&[ca.cert_der().clone()]), None);
    assert_eq!(
        peer_identity(&[CertificateDer::from(vec![0x30, 0x00])]),
        None
    );
}

#[test]
fn the_identity_resolves_to_its_current_credentials() {
    let ca = Ca::generate(TrustDomain::default()).unwrap();
    let identity = identity(&ca, &orders());
    let first = identity.current();
    let client = ResolvesClientCert::resolve(&identity, &[], &[]).unwrap();
    assert_eq!(client.cert, first.chain());
    assert!(ResolvesClientCert::has_certs(&identity));

    let stock = SpiffeId::service(TrustDomain::default(), Name::parse("stock").unwrap());
    let next = crate::mesh::tests::identity(&ca, &stock).current();
    // A clone shares the credentials: replacing through it is seen by the original.
    identity.clone().replace((*next).clone());
    assert_eq!(identity.id(), stock);
    let client = ResolvesClientCert::resolve(&identity, &[], &[]).unwrap();
    assert_eq!(client.cert, next.chain());
    assert!(format!("{identity:?}").contains("spiffe://ieum.local/svc/stock"));
}

#[test]
fn rustls_errors_map_to_peer_errors_that_say_what_to_fix() {
    let expired = rustls::Error::InvalidCertificate(CertificateError::ExpiredContext {
        time: UnixTime::since_unix_epoch(Duration::from_secs(1_700_000_100)),
        not_after: UnixTime::since_unix_epoch(Duration::from_secs(1_700_000_000)),
    });
    let err = PeerError::from_tls(&expired).unwrap();
    assert_eq!(
        err,
        PeerError::Expired {
            not_after: Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        }
    );
    assert!(
        err.to_string()
            .contains("expired at 2023-11-14T22:13:20Z: the peer must renew it"),
        "{err}"
    );

    let cases = [
        (
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
            "not issued by this mesh's CA",
        ),
        (
            rustls::Error::InvalidCertificate(CertificateError::NotValidYet),
            "not valid yet: check the clocks",
        ),
        (
            rustls::Error::InvalidCertificate(CertificateError::InvalidPurpose),
            "extended key usage",
        ),
        (
            rustls::Error::InvalidCertificate(CertificateError::BadSignature),
            "not issued by this mesh's CA",
        ),
        (
            rustls::Error::InvalidCertificate(CertificateError::BadEncoding),
            "the peer's certificate is invalid",
        ),
        (
            rustls::Error::NoCertificatesPresented,
            "presented no certificate",
        ),
        (
            rustls::Error::AlertReceived(AlertDescription::CertificateExpired),
            "check renewal and NTP",
        ),
        (
            rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
            "requires a client certificate",
        ),
    ];
    for (error, why) in cases {
        let err = PeerError::from_tls(&error).unwrap();
        assert!(err.to_string().contains(why), "{error:?}: {err}");
    }

    // Ours, carried through rustls, come back as they were.
    let wrong = PeerError::WrongIdentity {
        expected: SpiffeId::service(TrustDomain::default(), Name::parse("stock").unwrap()),
        found: orders(),
    };
    let tls = wrong.clone().into_tls();
    assert_eq!(PeerError::from_tls(&tls), Some(wrong.clone()));
    let io = io::Error::new(io::ErrorKind::InvalidData, tls);
    assert_eq!(PeerError::from_io(&io), Some(wrong.clone()));
    assert!(wrong.to_string().contains(
        "expected spiffe://ieum.local/svc/stock, but the peer is spiffe://ieum.local/svc/orders"
    ));

    // Not about certificates.
    assert_eq!(PeerError::from_tls(&rustls::Error::DecryptError), None);
    assert_eq!(
        PeerError::from_tls(&rustls::Error::AlertReceived(
            AlertDescription::HandshakeFailure
        )),
        None
    );
    assert_eq!(PeerError::from_io(&io::Error::other("reset")), None);
}

#[test]
fn a_peer_of_another_trust_domain_is_named_in_the_refusal() {
    let ca = Ca::generate(TrustDomain::parse("prod.example").unwrap()).unwrap();
    let id = SpiffeId::service(ca.trust_domain().clone(), Name::parse("orders").unwrap());
    let identity = identity(&ca, &id);
    let err = mesh_peer(&identity.current().chain()[0], &TrustDomain::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the peer is spiffe://prod.example/svc/orders, of trust domain `prod.example`, not this mesh's `ieum.local`: both sides must use the same trust domain"
    );
    assert_eq!(
        mesh_peer(&identity.current().chain()[0], ca.trust_domain()).unwrap(),
        id
    );
    let err = mesh_peer(ca.cert_der(), ca.trust_domain()).unwrap_err();
    assert!(matches!(err, PeerError::NoIdentity { .. }), "{err:?}");
}

#[test]
fn roots_come_from_pem_and_configurations_need_them() {
    let a = Ca::generate(TrustDomain::default()).unwrap();
    let b = Ca::generate(TrustDomain::default()).unwrap();
    let roots = roots_from_pem(&format!("{}{}", a.cert_pem(), b.cert_pem())).unwrap();
    assert_eq!(roots.len(), 2);
    assert!(matches!(roots_from_pem(""), Err(ConfigError::NoRoots)));
    assert!(matches!(
        roots_from_pem("-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n"),
        Err(ConfigError::Roots(_))
    ));

    let identity = identity(&a, &orders());
    let empty = Arc::new(RootCertStore::empty());
    assert!(matches!(
        server_config(&identity, empty.clone(), ClientAuth::Required),
        Err(ConfigError::NoRoots)
    ));
    assert!(matches!(
        client_config(&identity, empty, None),
        Err(ConfigError::NoRoots)
    ));

    let server = server_config(&identity, a.roots(), ClientAuth::Required).unwrap();
    assert_eq!(
        server.alpn_protocols,
        [b"h2".to_vec(), b"http/1.1".to_vec()]
    );
    assert_eq!(server.send_tls13_tickets, 0);
    assert!(!server.session_storage.can_cache());
    let client = client_config(&identity, a.roots(), Some(orders())).unwrap();
    assert!(client.alpn_protocols.is_empty());
}
