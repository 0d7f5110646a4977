use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use super::*;

#[test]
fn a_tls_handshake_record_is_told_from_plain_text() {
    assert_eq!(classify(0x16), Sniffed::Tls);
    // HTTP/1.1 methods, the HTTP/2 preface (`PRI * HTTP/2.0`), and binary protocols that
    // speak first (PostgreSQL's startup message starts with its length).
    for first in [b'G', b'P', b'D', b'O', b'H', b'C', 0x00, 0x03, 0x15, 0x17] {
        assert_eq!(classify(first), Sniffed::Plain, "{first:#04x}");
    }
}

/// A connected pair: what the listener accepted, and the client's end.
async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (accepted, _) = listener.accept().await.unwrap();
    (accepted, client)
}

#[tokio::test]
async fn sniffing_peeks_at_the_first_byte_without_consuming_it() {
    let wait = Duration::from_secs(5);
    let (accepted, mut client) = pair().await;
    client.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    assert_eq!(sniff(&accepted, wait).await, Sniffed::Tls);
    // The byte is still there for the TLS acceptor (or HTTP) to read.
    let mut buf = [0u8; 3];
    let n = accepted.peek(&mut buf).await.unwrap();
    assert!(n >= 1 && buf[0] == 0x16, "{buf:?}");

    let (accepted, mut client) = pair().await;
    client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    assert_eq!(sniff(&accepted, wait).await, Sniffed::Plain);

    let (accepted, client) = pair().await;
    drop(client);
    assert_eq!(sniff(&accepted, wait).await, Sniffed::Closed);

    let (accepted, _client) = pair().await;
    assert_eq!(
        sniff(&accepted, Duration::from_millis(50)).await,
        Sniffed::Silent
    );
}

#[test]
fn only_an_explicit_permissive_service_is_permissive() {
    let mut snapshot = Snapshot::default();
    assert!(
        !permissive(&snapshot, "stock"),
        "no Service resource: strict"
    );
    let mut put = |name: &str, spec: serde_json::Value| {
        snapshot.resources.insert(
            format!("Service/{name}"),
            ieum_client::Resource {
                kind: "Service".into(),
                name: name.into(),
                revision: 1,
                spec,
            },
        );
    };
    put("stock", serde_json::json!({"mtls": "permissive"}));
    put("orders", serde_json::json!({"mtls": "strict"}));
    put("web", serde_json::json!({"description": "no mtls field"}));
    put("odd", serde_json::json!({"mtls": {"mode": "permissive"}}));
    assert!(permissive(&snapshot, "stock"));
    for strict in ["orders", "web", "odd", "unknown"] {
        assert!(!permissive(&snapshot, strict), "{strict}");
    }
}
