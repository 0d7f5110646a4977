//! TLS to real brokers. Each test makes a CA and a server certificate for `localhost` and
//! `127.0.0.1` (rcgen), then:
//!
//! - RabbitMQ, MQTT and Redis: runs a TLS terminator on `127.0.0.1:0` (tokio-rustls) that
//!   forwards the decrypted bytes to the plain broker of `IEUM_TEST_AMQP_URL`,
//!   `IEUM_TEST_MQTT_URL` or `IEUM_TEST_REDIS_URL`, and connects to it with the TLS
//!   scheme (`amqps://`, `mqtts://`, `rediss://`);
//! - NATS: starts its own `nats-server --tls -js` (NATS upgrades to TLS after a plain
//!   `INFO`, which a byte-forwarding terminator cannot do), when `IEUM_TEST_NATS_URL` is
//!   set (the binary: `IEUM_TEST_NATS_SERVER`, else `nats-server` on `PATH`, else
//!   `/usr/sbin/nats-server`).
//!
//! With `tls.caFile` naming the CA, publish → subscribe → deliver → ack goes through;
//! with another CA, or a `serverName` the certificate does not carry, connecting fails
//! with an error that names the certificate and the CA file. Without a broker's URL its
//! test prints why it skipped and passes; the CA file errors need no broker.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use ieum_bridge::{Broker, BrokerError, CloudEvent, SubscribeOptions};
use ieum_model::bridge::{BrokerType, PubSubSpec};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tokio::io::AsyncBufReadExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

const WAIT: Duration = Duration::from_secs(15);

/// A CA, another CA, and a server certificate for `localhost`/`127.0.0.1` signed by the
/// first, written to PEM files in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    ca_file: PathBuf,
    other_ca_file: PathBuf,
    cert_file: PathBuf,
    key_file: PathBuf,
    server: Arc<ServerConfig>,
}

fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca("ieum test CA");
    let other = new_ca("some other CA");
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let cert = params.signed_by(&key, &ca).unwrap();
    let write = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let ca_file = write("ca.pem", ca.pem());
    let other_ca_file = write("other-ca.pem", other.pem());
    let cert_file = write("server.pem", cert.pem());
    let key_file = write("server-key.pem", key.serialize_pem());
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    Pki {
        dir,
        ca_file,
        other_ca_file,
        cert_file,
        key_file,
        server: Arc::new(server),
    }
}

/// A TLS listener on `127.0.0.1:0` that forwards each connection, decrypted, to
/// `upstream`. Stops accepting when dropped.
struct Terminator {
    addr: SocketAddr,
    handshakes: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Terminator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn terminator(upstream: SocketAddr, config: Arc<ServerConfig>) -> Terminator {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(config);
    let handshakes = Arc::new(AtomicUsize::new(0));
    let counted = handshakes.clone();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let counted = counted.clone();
            tokio::spawn(async move {
                // A client that refuses the certificate ends here.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                let Ok(mut plain) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    Terminator {
        addr,
        handshakes,
        task,
    }
}

/// The broker URL of `var`, or `None` with a note.
fn env_url(var: &str, what: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("skipped {what} over TLS: set {var} to run it");
            None
        }
    }
}

/// `scheme://[user@]host:port/rest` → the address of its host and port, and its user
/// part (`user@` or empty) and path (`/rest` or empty).
async fn split_url(url: &str, default_port: u16) -> (SocketAddr, String, String) {
    let (_, rest) = url.split_once("://").unwrap();
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (user, hostport) = match authority.rsplit_once('@') {
        Some((user, hp)) => (format!("{user}@"), hp),
        None => (String::new(), authority),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().unwrap()),
        None => (hostport, default_port),
    };
    let upstream = tokio::net::lookup_host((host, port))
        .await
        .unwrap()
        .next()
        .unwrap();
    (upstream, user, path.to_owned())
}

fn spec(kind: BrokerType, url: &str, tls: &str) -> PubSubSpec {
    let yaml = format!(
        "type: {}\nredeliverAfter: 1s\nurl: '{url}'\ntls: {tls}\n",
        kind.as_str()
    );
    serde_yaml_ng::from_str(&yaml).unwrap()
}

fn ca_tls(ca: &Path, server_name: Option<&str>) -> String {
    match server_name {
        Some(name) => format!("{{caFile: '{}', serverName: {name}}}", ca.display()),
        None => format!("{{caFile: '{}'}}", ca.display()),
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &ieum_bridge::cloudevents::new_id()[..8])
}

async fn connect(kind: BrokerType, url: &str, tls: &str) -> Result<Arc<dyn Broker>, BrokerError> {
    ieum_bridge::connect(&unique("tls"), &spec(kind, url, tls)).await
}

/// Publish → subscribe → deliver → ack over `broker`.
async fn round_trip(broker: &dyn Broker) {
    let topic = unique("tls-orders");
    let mut sub = broker
        .subscribe(
            &topic,
            "billing",
            SubscribeOptions {
                consumer: format!("c-{}", std::process::id()),
                max_in_flight: 8,
                dead_letter_topic: None,
                raw_source: None,
            },
        )
        .await
        .unwrap();
    let sent = CloudEvent::wrap(
        "orders",
        "com.example.order.created",
        Some("application/json"),
        Bytes::from_static(b"{\"n\":1}"),
    );
    broker.publish(&topic, &sent, Some("k1")).await.unwrap();
    let got = tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("a delivery within 15s")
        .expect("the subscription is open");
    assert_eq!(got.event.id, sent.id);
    assert_eq!(got.event.data, sent.data);
    assert_eq!(got.attempt, 1);
    got.ack().await.unwrap();
    // Acknowledged: it does not come again.
    assert!(
        tokio::time::timeout(Duration::from_millis(2500), sub.next())
            .await
            .is_err()
    );
    sub.close().await;
}

/// Connecting with `tls` fails on the certificate, and says so, naming `ca`.
async fn refused(kind: BrokerType, url: &str, tls: &str, ca: &Path, why: &str) {
    let started = tokio::time::Instant::now();
    let err = match connect(kind, url, tls).await {
        Ok(_) => panic!("{}: connected although {why}", kind.as_str()),
        Err(e) => e,
    };
    let text = err.to_string();
    eprintln!("{} refused as it should ({why}): {text}", kind.as_str());
    assert!(
        matches!(&err, BrokerError::Unreachable { url: u, .. } if u == url),
        "{}: {text}",
        kind.as_str()
    );
    assert!(text.contains("TLS"), "{text}");
    assert!(text.contains("certificate"), "{text}");
    assert!(
        text.contains(&ca.display().to_string()),
        "the CA file is named: {text}"
    );
    assert!(started.elapsed() < Duration::from_secs(8), "{text}");
}

/// Every TLS case against one broker reached through a terminator.
async fn through_terminator(kind: BrokerType, var: &str, tls_scheme: &str, default_port: u16) {
    let Some(plain) = env_url(var, kind.as_str()) else {
        return;
    };
    let pki = pki();
    let (upstream, user, path) = split_url(&plain, default_port).await;
    let term = terminator(upstream, pki.server.clone()).await;
    let url = format!("{tls_scheme}://{user}{}{path}", term.addr);

    // The right CA: the whole round trip, over TLS.
    let broker = connect(kind, &url, &ca_tls(&pki.ca_file, None))
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", kind.as_str()));
    round_trip(&*broker).await;
    broker.close().await;
    assert!(term.handshakes.load(Ordering::SeqCst) >= 1);

    // `serverName` overrides the URL's host (127.0.0.1, which the certificate names
    // too): a name it carries works, another is refused.
    let broker = connect(kind, &url, &ca_tls(&pki.ca_file, Some("localhost")))
        .await
        .unwrap_or_else(|e| panic!("{} with serverName: {e}", kind.as_str()));
    broker.close().await;
    refused(
        kind,
        &url,
        &ca_tls(&pki.ca_file, Some("broker.example")),
        &pki.ca_file,
        "the certificate does not name broker.example",
    )
    .await;

    // Another CA: refused, naming the certificate and the file.
    refused(
        kind,
        &url,
        &ca_tls(&pki.other_ca_file, None),
        &pki.other_ca_file,
        "another CA signed the certificate",
    )
    .await;
    drop(pki.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_over_tls() {
    through_terminator(BrokerType::RabbitMq, "IEUM_TEST_AMQP_URL", "amqps", 5672).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_over_tls() {
    through_terminator(BrokerType::Mqtt, "IEUM_TEST_MQTT_URL", "mqtts", 1883).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls() {
    through_terminator(
        BrokerType::RedisStreams,
        "IEUM_TEST_REDIS_URL",
        "rediss",
        6379,
    )
    .await;
}

/// A `nats-server` with TLS and JetStream on a free port, killed when dropped.
struct NatsServer {
    port: u16,
    _child: tokio::process::Child,
}

fn nats_server_binary() -> PathBuf {
    if let Ok(path) = std::env::var("IEUM_TEST_NATS_SERVER") {
        return PathBuf::from(path);
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("nats-server"))
            .find(|p| p.is_file())
    });
    on_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/nats-server"))
}

async fn nats_server(pki: &Pki) -> NatsServer {
    let binary = nats_server_binary();
    let store = pki.dir.path().join("jetstream");
    let mut child = tokio::process::Command::new(&binary)
        .args(["-a", "127.0.0.1", "-p", "-1", "--tls", "--tlscert"])
        .arg(&pki.cert_file)
        .arg("--tlskey")
        .arg(&pki.key_file)
        .arg("-js")
        .arg("-sd")
        .arg(&store)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "IEUM_TEST_NATS_URL is set but {} cannot be started ({e}): install nats-server or set IEUM_TEST_NATS_SERVER",
                binary.display()
            )
        });
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let port = tokio::time::timeout(WAIT, async {
        let mut port = None;
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some((_, addr)) = line.split_once("Listening for client connections on ") {
                port = addr
                    .trim()
                    .rsplit_once(':')
                    .map(|(_, p)| p.parse().unwrap());
            }
            if line.contains("Server is ready") {
                return port.expect("nats-server said where it listens");
            }
        }
        panic!("nats-server exited before it was ready");
    })
    .await
    .expect("nats-server ready within 15s");
    // Keep reading its log so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    NatsServer {
        port,
        _child: child,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_over_tls() {
    if env_url("IEUM_TEST_NATS_URL", "nats-jetstream").is_none() {
        return;
    }
    let pki = pki();
    let server = nats_server(&pki).await;
    let kind = BrokerType::NatsJetStream;
    let url = format!("tls://127.0.0.1:{}", server.port);

    let broker = connect(kind, &url, &ca_tls(&pki.ca_file, None))
        .await
        .unwrap_or_else(|e| panic!("nats-jetstream: {e}"));
    round_trip(&*broker).await;
    broker.close().await;

    let broker = connect(kind, &url, &ca_tls(&pki.ca_file, Some("localhost")))
        .await
        .unwrap_or_else(|e| panic!("nats-jetstream with serverName: {e}"));
    broker.close().await;
    refused(
        kind,
        &url,
        &ca_tls(&pki.ca_file, Some("broker.example")),
        &pki.ca_file,
        "the certificate does not name broker.example",
    )
    .await;
    refused(
        kind,
        &url,
        &ca_tls(&pki.other_ca_file, None),
        &pki.other_ca_file,
        "another CA signed the certificate",
    )
    .await;

    // A `nats://` URL takes no `tls` (E3006); when the server demands TLS, async-nats
    // upgrades anyway, trusting only the platform's roots: the private CA is refused.
    let err = match connect(kind, &format!("nats://127.0.0.1:{}", server.port), "null").await {
        Ok(_) => panic!("a plain connection to a TLS-only nats-server succeeded"),
        Err(e) => e,
    };
    assert!(matches!(err, BrokerError::Unreachable { .. }), "{err}");
    drop(server);
}

#[tokio::test]
async fn ca_file_problems_are_config_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    // Port 9 (discard) on loopback: nothing listens, and nothing is reached, since the
    // CA file is read first.
    for (kind, url) in [
        (BrokerType::NatsJetStream, "tls://127.0.0.1:9"),
        (BrokerType::RabbitMq, "amqps://127.0.0.1:9/%2f"),
        (BrokerType::Mqtt, "mqtts://127.0.0.1:9"),
        (BrokerType::RedisStreams, "rediss://127.0.0.1:9"),
    ] {
        let missing = dir.path().join("missing-ca.pem");
        let err = connect(kind, url, &ca_tls(&missing, None))
            .await
            .err()
            .unwrap();
        let text = err.to_string();
        assert!(matches!(err, BrokerError::Config(_)), "{text}");
        assert!(text.contains("tls.caFile"), "{text}");
        assert!(
            text.contains(&missing.display().to_string()),
            "the path is named: {text}"
        );
        assert!(!err.is_retryable());
    }
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let err = connect(
        BrokerType::Mqtt,
        "mqtts://127.0.0.1:9",
        &ca_tls(&empty, None),
    )
    .await
    .err()
    .unwrap();
    assert!(matches!(err, BrokerError::Config(_)), "{err}");
    assert!(err.to_string().contains("holds no certificate"), "{err}");
    assert!(
        err.to_string().contains(&empty.display().to_string()),
        "{err}"
    );
    // `tls` with a plain scheme is refused before anything is read.
    let err = connect(
        BrokerType::RabbitMq,
        "amqp://127.0.0.1:9/%2f",
        &ca_tls(&empty, None),
    )
    .await
    .err()
    .unwrap();
    assert!(matches!(err, BrokerError::Config(_)), "{err}");
    assert!(err.to_string().contains("E3006"), "{err}");
}
