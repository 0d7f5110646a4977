//! Real mTLS handshakes over 127.0.0.1 sockets (tokio-rustls) between workloads whose
//! certificates the mesh CA issued, and refusals of every kind of wrong peer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ieum_identity::{
    Ca, ClientAuth, Credentials, Identity, KeyPair, PeerError, SpiffeId, TrustDomain,
    client_config, peer_identity, roots_from_pem, server_config,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    AlertDescription, ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

fn service(name: &str) -> SpiffeId {
    SpiffeId::service(TrustDomain::default(), name.parse().unwrap())
}

/// Credentials for `id` issued by `ca` as if it were `now`.
fn credentials_at(ca: &Ca, id: &SpiffeId, ttl: Duration, now: SystemTime) -> Credentials {
    let key = KeyPair::generate().unwrap();
    let issued = ca.issue_at(&key.csr(id).unwrap(), id, ttl, now).unwrap();
    Credentials::new(&issued.chain_pem, key).unwrap()
}

fn enrol(ca: &Ca, id: &SpiffeId) -> Identity {
    Identity::new(credentials_at(
        ca,
        id,
        Duration::from_secs(3600),
        SystemTime::now(),
    ))
}

/// What each side saw: the peer's chain, or why the handshake (or the first read) failed.
struct Outcome {
    client: io::Result<Vec<CertificateDer<'static>>>,
    server: io::Result<Vec<CertificateDer<'static>>>,
    /// The ALPN protocol agreed, as the client saw it.
    alpn: Option<Vec<u8>>,
    /// The cipher suite agreed, as the client saw it.
    suite: Option<rustls::CipherSuite>,
}

impl Outcome {
    fn client_error(&self) -> PeerError {
        let err = self
            .client
            .as_ref()
            .expect_err("the client should have failed");
        PeerError::from_io(err).unwrap_or_else(|| panic!("not a peer error: {err:?}"))
    }

    fn server_error(&self) -> PeerError {
        let err = self
            .server
            .as_ref()
            .expect_err("the server should have failed");
        PeerError::from_io(err).unwrap_or_else(|| panic!("not a peer error: {err:?}"))
    }

    fn client_saw(&self) -> Option<SpiffeId> {
        peer_identity(
            self.client
                .as_ref()
                .expect("the client should have connected"),
        )
    }

    fn server_saw(&self) -> Option<SpiffeId> {
        peer_identity(
            self.server
                .as_ref()
                .expect("the server should have accepted"),
        )
    }
}

/// One connection from `client` to `server` on 127.0.0.1; both sides exchange a message
/// after the handshake, so a refusal by either is seen by both.
async fn connect(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let accept = async {
        let (tcp, _) = listener.accept().await?;
        let mut tls = TlsAcceptor::from(server).accept(tcp).await?;
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .unwrap_or_default()
            .to_vec();
        tls.write_all(b"hi").await?;
        tls.flush().await?;
        let mut buf = [0u8; 2];
        tls.read_exact(&mut buf).await?;
        Ok(peer)
    };
    let dial = async {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::IpAddress(addr.ip().into());
        let mut tls = TlsConnector::from(client).connect(name, tcp).await?;
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .unwrap_or_default()
            .to_vec();
        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let suite = tls.get_ref().1.negotiated_cipher_suite().map(|s| s.suite());
        let mut buf = [0u8; 2];
        tls.read_exact(&mut buf).await?;
        tls.write_all(b"hi").await?;
        tls.flush().await?;
        Ok((peer, alpn, suite))
    };
    let (server, client) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(accept, dial)
    })
    .await
    .expect("the handshake should finish or fail, not hang");
    let (client, alpn, suite) = match client {
        Ok((peer, alpn, suite)) => (Ok(peer), alpn, suite),
        Err(e) => (Err(e), None, None),
    };
    Outcome {
        client,
        server,
        alpn,
        suite,
    }
}

#[tokio::test]
async fn two_workloads_of_one_ca_speak_mtls_both_ways_and_see_each_other() {
    let ca = Ca::generate(TrustDomain::default()).unwrap();
    let orders = enrol(&ca, &service("orders"));
    let stock = enrol(&ca, &service("stock"));

    // orders calls stock.
    let server = server_config(&stock, ca.roots(), ClientAuth::Required).unwrap();
    let mut client = (*client_config(&orders, ca.roots(), Some(service("stock"))).unwrap()).clone();
    client.alpn_protocols = vec![b"h2".to_vec()];
    let out = connect(server, Arc::new(client)).await;
    assert_eq!(out.client_saw(), Some(service("stock")));
    assert_eq!(out.server_saw(), Some(service("orders")));
    assert_eq!(out.alpn.as_deref(), Some(&b"h2"[..]));
    // TLS 1.3 with AES-128-GCM: the cheapest suite of the mesh's security level.
    assert_eq!(
        out.suite,
        Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
    );
    // Each side presents its chain: leaf, root.
    assert_eq!(out.client.as_ref().unwrap(), stock.current().chain());

    // stock calls orders.
    let server = server_config(&orders, ca.roots(), ClientAuth::Required).unwrap();
    let client = client_config(&stock, ca.roots(), Some(service("orders"))).unwrap();
    let out = connect(server, client).await;
    assert_eq!(out.client_saw(), Some(service("orders")));
    assert_eq!(out.server_saw(), Some(service("stock")));

    // A client expecting no one in particular accepts any workload of the mesh.
    let server = server_config(&orders, ca.roots(), ClientAuth::Required).unwrap();
    let client = client_config(&stock, ca.roots(), None).unwrap();
    let out = connect(server, client).await;
    assert_eq!(out.client_saw(), Some(service("orders")));
}

#[tokio::test]
async fn a_client_expecting_stock_refuses_a_server_that_is_orders() {
    let ca = Ca::generate(TrustDomain::default()).unwrap();
    let orders = enrol(&ca, &service("orders"));
    let caller = enrol(&ca, &service("web"));
    let server = server_config(&orders, ca.roots(), ClientAuth::Required).unwrap();
    let client = client_config(&caller, ca.roots(), Some(service("stock"))).unwrap();
    let out = connect(server, client).await;
    assert_eq!(
        out.client_error(),
        PeerError::WrongIdentity {
            expected: service("stock"),
            found: service("orders"),
        }
    );
    assert!(matches!(
        out.server_error(),
        PeerError::RefusedByPeer {
            alert: AlertDescription::CertificateUnknown
        }
    ));
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_both_ways() {
    let ca = Ca::generate(TrustDomain::default()).unwrap();
    // Same trust domain, same names: only the CA differs.
    let rogue_ca = Ca::generate(TrustDomain::default()).unwrap();
    let orders = enrol(&ca, &service("orders"));
    let web = enrol(&ca, &service("web"));
    let rogue_orders = enrol(&rogue_ca, &service("orders"));
    let rogue_web = enrol(&rogue_ca, &service("web"));
    // The rogue side trusts both, so that only the mesh side's check is tested.
    let both =
        Arc::new(roots_from_pem(&format!("{}{}", ca.cert_pem(), rogue_ca.cert_pem())).unwrap());

    // A rogue server.
    let server = server_config(&rogue_orders, both.clone(), ClientAuth::Required).unwrap();
    let client = client_config(&web, ca.roots(), Some(service("orders"))).unwrap();
    let out = connect(server, client).await;
    assert_eq!(out.client_error(), PeerError::UnknownIssuer);
    assert!(matches!(
        out.server_error(),
        PeerError::RefusedByPeer {
            alert: AlertDescription::UnknownCA
        }
    ));

    // A rogue client.
    let server = server_config(&orders, ca.roots(), ClientAuth::Required).unwrap();
    let client = client_config(&rogue_web, both, Some(service("orders"))).unwrap();
    let out = connect(server, client).await;
    assert_eq!(out.server_error(), PeerError::UnknownIssuer);
    assert!(matches!(
        out.client_error(),
        PeerError::RefusedByPeer {
            alert: AlertDescription::UnknownCA
        }
    ));
}

#[tokio::test]
async fn a_self_signed_server_is_refused() {
    let ca = Ca::generate(TrustDomain::default()).unwrap();
    let web = enrol(&ca, &service("web"));
    // A self-signed certificate claiming to be orders, with every usage the mesh's have.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://ieum.local/svc/orders".try_into().unwrap(),
    )];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.self_signed(&key).unwrap();
    let server =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
    let client = client_config(&web, ca.roots(), Some(service("orders"))).unwrap();
    let out = connect(Arc::new(server), client).await;
    assert_eq!(out.client_error(), PeerError::UnknownIssuer);
}

#[tokio::test]
async fn an_expired_certificate_is_refused_both_ways() {
    let ca = Ca::generate(TrustDomain::default()).unwrap();
    let two_days_ago = SystemTime::now() - Duration::from_secs(2 * 86_400);
    let expired = credentials_at(
        &ca,
        &service("orders"),
        Duration::from_secs(3600),
        two_days_ago,
    );
    let not_after = expired.not_after();
    let expired = Identity::new(expired);
    let web = enrol(&ca, &service("web"));
    let orders = enrol(&ca, &service("orders"));

    // An expired server.
    let server = server_config(&expired, ca.roots(), ClientAuth::Required).unwrap();
    let client = client_config(&web, ca.roots(), Some(service("orders"))).unwrap();
    let out = connect(server, client).await;
    let err = out.client_error();
    assert_eq!(
        err,
        PeerError::Expired {
            not_after: Some(not_after)
        }
    );
    assert!(err.to_string().contains("the peer must renew it"), "{err}");
    assert!(matches!(
        out.server_error(),
        PeerError::RefusedByPeer {
            alert: AlertDescription::CertificateExpired
        }
    ));

    // An expired client.
    let server = server_config(&orders, ca.roots(), ClientAuth::Required).unwrap();
    let client = client_config(&expired, ca.roots(), Some(service("orders"))).unwrap();
    let out = connect(server, client).await;
    assert!(matches!(out.server_error(), PeerError::Expired { .. }));
    assert!(matches!(
        out.client_error(),
        PeerError::RefusedByPeer {
            alert: AlertDescription::CertificateExpired
        }
    ));
}

#[tokio::test]
async fn a_certificate_not_valid_yet_is_refused() {
    let ca = Ca::generate(TrustDomain::default()).unwrap();
    let tomorrow = SystemTime::now() + Duration::from_secs(86_400);
    let early = Identity::new(credentials_at(
        &ca,
        &service("orders"),
        Duration::from_secs(3600),
        tomorrow,
    ));
    let web = enrol(&ca, &service("web"));
    let server = server_config(&early, ca.roots(), ClientAuth::Required).unwrap();
    let client = client_config(&web, ca.roots(), None).unwrap();
    let out = connect(server, client).await;
    let err = out.client_error();
    assert!(
        matches!(
            err,
            PeerError::NotYetValid {
                not_before: Some(_)
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("check the clocks"), "{err}");
}

#[tokio::test]
async fn a_peer_of_another_trust_domain_is_refused_even_when_its_root_is_trusted() {
    let ca = Ca::generate(TrustDomain::default()).unwrap();
    let prod = TrustDomain::parse("prod.example").unwrap();
    let prod_ca = Ca::generate(prod.clone()).unwrap();
    // Both roots are trusted on both sides (say, two meshes being merged).
    let both =
        Arc::new(roots_from_pem(&format!("{}{}", ca.cert_pem(), prod_ca.cert_pem())).unwrap());
    let orders = enrol(&ca, &service("orders"));
    let prod_orders_id = SpiffeId::service(prod.clone(), "orders".parse().unwrap());
    let prod_orders = enrol(&prod_ca, &prod_orders_id);
    let web = enrol(&ca, &service("web"));

    // As a server, to a client that expects no one in particular.
    let server = server_config(&prod_orders, both.clone(), ClientAuth::Required).unwrap();
    let client = client_config(&web, both.clone(), None).unwrap();
    let out = connect(server, client).await;
    assert_eq!(
        out.client_error(),
        PeerError::WrongTrustDomain {
            expected: TrustDomain::default(),
            found: prod_orders_id.clone(),
        }
    );
    assert!(matches!(
        out.server_error(),
        PeerError::RefusedByPeer {
            alert: AlertDescription::CertificateUnknown
        }
    ));

    // As a client, with a configuration that would accept the server, so that the
    // server's own check is what refuses it.
    let server = server_config(&orders, both.clone(), ClientAuth::Required).unwrap();
    let out = connect(server.clone(), lenient_client(Some(&prod_orders))).await;
    assert_eq!(
        out.server_error(),
        PeerError::WrongTrustDomain {
            expected: TrustDomain::default(),
            found: prod_orders_id,
        }
    );
    assert!(matches!(
        out.client_error(),
        PeerError::RefusedByPeer {
            alert: AlertDescription::CertificateUnknown
        }
    ));
    // Its own mesh configuration refuses this mesh's server likewise.
    let out = connect(server, client_config(&prod_orders, both, None).unwrap()).await;
    assert_eq!(
        out.client_error(),
        PeerError::WrongTrustDomain {
            expected: prod,
            found: service("orders"),
        }
    );
}

#[tokio::test]
async fn a_replaced_identity_is_presented_from_the_next_handshake_on() {
    let ca = Ca::generate(TrustDomain::default()).unwrap();
    let orders = enrol(&ca, &service("orders"));
    let web = enrol(&ca, &service("web"));
    // Built once, like a listener and a connector.
    let server = server_config(&orders, ca.roots(), ClientAuth::Required).unwrap();
    let client = client_config(&web, ca.roots(), Some(service("orders"))).unwrap();

    let first_orders = orders.current().chain()[0].clone();
    let first_web = web.current().chain()[0].clone();
    let out = connect(server.clone(), client.clone()).await;
    assert_eq!(out.client.as_ref().unwrap()[0], first_orders);
    assert_eq!(out.server.as_ref().unwrap()[0], first_web);

    // Renewed: new keys, new certificates, same ids.
    let renewed = credentials_at(
        &ca,
        &service("orders"),
        Duration::from_secs(7200),
        SystemTime::now(),
    );
    let renewed_leaf = renewed.chain()[0].clone();
    orders.replace(renewed);
    let renewed_web = credentials_at(
        &ca,
        &service("web"),
        Duration::from_secs(7200),
        SystemTime::now(),
    );
    let renewed_web_leaf = renewed_web.chain()[0].clone();
    web.replace(renewed_web);
    assert_ne!(renewed_leaf, first_orders);

    let out = connect(server, client).await;
    assert_eq!(out.client.as_ref().unwrap()[0], renewed_leaf);
    assert_eq!(out.server.as_ref().unwrap()[0], renewed_web_leaf);
    assert_eq!(out.client_saw(), Some(service("orders")));
}

/// A client with no certificate that accepts any server, to test what a listener
/// does with callers outside the mesh.
#[derive(Debug)]
struct AcceptAnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client that accepts any server, presenting `identity` or no certificate: what a
/// caller outside the mesh, or one not checking the server, looks like to a listener.
fn lenient_client(identity: Option<&Identity>) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider)));
    Arc::new(match identity {
        Some(identity) => builder.with_client_cert_resolver(Arc::new(identity.clone())),
        None => builder.with_no_client_auth(),
    })
}

#[tokio::test]
async fn a_caller_without_a_certificate_is_refused_unless_the_listener_is_permissive() {
    let ca = Ca::generate(TrustDomain::default()).unwrap();
    let orders = enrol(&ca, &service("orders"));

    let strict = server_config(&orders, ca.roots(), ClientAuth::Required).unwrap();
    let out = connect(strict, lenient_client(None)).await;
    let err = out.server_error();
    assert_eq!(err, PeerError::NoCertificate);
    assert!(err.to_string().contains("mtls: permissive"), "{err}");
    assert!(matches!(
        out.client_error(),
        PeerError::RefusedByPeer {
            alert: AlertDescription::CertificateRequired
        }
    ));

    let permissive = server_config(&orders, ca.roots(), ClientAuth::Optional).unwrap();
    let out = connect(permissive.clone(), lenient_client(None)).await;
    assert_eq!(out.server.as_ref().unwrap().len(), 0);
    assert_eq!(out.server_saw(), None);

    // Permissive still refuses a bad certificate, and still reads a good one.
    let rogue_ca = Ca::generate(TrustDomain::default()).unwrap();
    let rogue = enrol(&rogue_ca, &service("web"));
    let both =
        Arc::new(roots_from_pem(&format!("{}{}", ca.cert_pem(), rogue_ca.cert_pem())).unwrap());
    let client = client_config(&rogue, both, None).unwrap();
    let out = connect(permissive.clone(), client).await;
    assert_eq!(out.server_error(), PeerError::UnknownIssuer);
    let web = enrol(&ca, &service("web"));
    let client = client_config(&web, ca.roots(), None).unwrap();
    let out = connect(permissive, client).await;
    assert_eq!(out.server_saw(), Some(service("web")));
}
