use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;

use super::*;
use crate::{Ca, TrustDomain};

const HASH: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[test]
fn join_tokens_parse_and_print() {
    let t = JoinToken::parse(&format!("ieum1.{HASH}.s3cret"))
        .expect("well formed")
        .expect("a join token");
    assert_eq!(t.ca_hash, HASH);
    assert_eq!(t.secret, "s3cret");
    assert_eq!(t.to_string(), format!("ieum1.{HASH}.s3cret"));
    // Upper-case hex is read as the same hash.
    let upper = JoinToken::parse(&format!("ieum1.{}.x", HASH.to_uppercase()))
        .expect("well formed")
        .expect("a join token");
    assert_eq!(upper.ca_hash, HASH);
    // A bare secret is not a join token, and is its own secret.
    assert!(JoinToken::parse("abcdef").expect("bare").is_none());
    assert_eq!(JoinToken::secret_of("abcdef").expect("bare"), "abcdef");
    assert_eq!(
        JoinToken::secret_of(&format!("ieum1.{HASH}.s")).expect("join"),
        "s"
    );
    for bad in [
        "ieum1.abc.secret".to_owned(),
        format!("ieum1.{HASH}"),
        format!("ieum1.{HASH}."),
        format!("ieum1.{}.s", "g".repeat(64)),
    ] {
        assert!(JoinToken::parse(&bad).is_err(), "{bad} must be refused");
    }
}

#[test]
fn trust_comes_from_the_file_first_then_the_pin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::generate(TrustDomain::default()).expect("ca");
    let file = dir.path().join("ca.pem");
    std::fs::write(&file, ca.cert_pem()).expect("write");
    let token = format!("ieum1.{HASH}.s");
    assert!(matches!(
        ServerTrust::from_settings(Some(&file), Some(&token)),
        Ok(Some(ServerTrust::Roots(_)))
    ));
    assert!(matches!(
        ServerTrust::from_settings(None, Some(&token)),
        Ok(Some(ServerTrust::Pin(h))) if h == HASH
    ));
    assert!(matches!(
        ServerTrust::from_settings(None, Some("bare")),
        Ok(None)
    ));
    let missing = ServerTrust::from_settings(Some(&dir.path().join("nope.pem")), None);
    assert!(matches!(missing, Err(BootstrapError::CaFile { .. })));
    // An https server without trust is refused with what to set; http needs none.
    let e = ServerTrust::required("https://10.0.0.1:7700", None).expect_err("no trust");
    assert!(e.to_string().contains("IEUM_CA_FILE"), "{e}");
    assert!(
        ServerTrust::required("http://127.0.0.1:7700", None)
            .expect("plain")
            .is_none()
    );
}

/// Handshakes a client of `trust` (connecting to `name`) with a server presenting a
/// certificate of `ca` for `sans`.
async fn handshake(ca: &Ca, sans: &[&str], trust: &ServerTrust, name: &str) -> Result<(), String> {
    let sans: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
    let cert = ca
        .server_certificate(&sans, Duration::from_secs(3600))
        .expect("server certificate");
    let server =
        api_server_config(&ServerKey::new(cert).expect("key"), None).expect("server config");
    let client = trust.client_config().expect("client config");
    let (c, s) = tokio::io::duplex(64 * 1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    let served = tokio::spawn(async move { acceptor.accept(s).await.map(|_| ()) });
    let connector = tokio_rustls::TlsConnector::from(client);
    let name = ServerName::try_from(name.to_owned()).expect("name");
    let result = connector
        .connect(name, c)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string());
    let _ = served.await;
    result
}

#[tokio::test]
async fn a_pinned_ca_is_trusted_and_another_is_refused() {
    let ca = Ca::generate(TrustDomain::default()).expect("ca");
    let other = Ca::generate(TrustDomain::default()).expect("other ca");
    let pinned = ServerTrust::Pin(ca.fingerprint());
    handshake(&ca, &["10.1.2.3", "localhost"], &pinned, "10.1.2.3")
        .await
        .expect("the pinned CA's server is trusted");
    handshake(&ca, &["10.1.2.3", "localhost"], &pinned, "localhost")
        .await
        .expect("by DNS name too");

    // A server whose chain holds another CA than the pinned one.
    let e = handshake(&other, &["10.1.2.3"], &pinned, "10.1.2.3")
        .await
        .expect_err("another CA is refused");
    assert!(e.contains("pinned by the join token"), "{e}");

    // The right CA, but the certificate does not name the address connected to.
    let e = handshake(&ca, &["10.1.2.3"], &pinned, "10.9.9.9")
        .await
        .expect_err("a wrong server name is refused");
    assert!(e.to_lowercase().contains("not valid for name"), "{e}");
}

#[tokio::test]
async fn a_ca_file_is_trusted_and_checks_names() {
    let ca = Ca::generate(TrustDomain::default()).expect("ca");
    let other = Ca::generate(TrustDomain::default()).expect("other ca");
    let trust = ServerTrust::Roots(Arc::new(ca.roots().as_ref().clone()));
    handshake(&ca, &["127.0.0.1"], &trust, "127.0.0.1")
        .await
        .expect("trusted");
    assert!(
        handshake(&other, &["127.0.0.1"], &trust, "127.0.0.1")
            .await
            .is_err()
    );
    assert!(
        handshake(&ca, &["127.0.0.1"], &trust, "localhost")
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_renewed_server_certificate_is_presented() {
    let ca = Ca::generate(TrustDomain::default()).expect("ca");
    let key = ServerKey::new(
        ca.server_certificate(&["10.0.0.1".into()], Duration::from_secs(60))
            .expect("cert"),
    )
    .expect("key");
    key.replace(
        ca.server_certificate(&["10.0.0.2".into()], Duration::from_secs(60))
            .expect("cert"),
    )
    .expect("replace");
    let server = api_server_config(&key, None).expect("server config");
    let client = ServerTrust::Pin(ca.fingerprint())
        .client_config()
        .expect("client config");
    let (c, s) = tokio::io::duplex(64 * 1024);
    let served = tokio::spawn(async move {
        tokio_rustls::TlsAcceptor::from(server)
            .accept(s)
            .await
            .map(|_| ())
    });
    let name = ServerName::try_from("10.0.0.2").expect("name");
    tokio_rustls::TlsConnector::from(client)
        .connect(name, c)
        .await
        .expect("the renewed certificate names 10.0.0.2");
    let _ = served.await;
}
