//! The outbound path as a library: subscribe to the control plane's push stream and keep
//! a local snapshot of the services a program calls and the configuration that concerns
//! it. The sidecar, the gateway, the saga coordinator and Rust programs (proxyless) use it.
//!
//! Layout:
//! - [`snapshot`]: the [`Snapshot`] and how push messages change it; persistence.
//! - [`Client`]: a handle; a background task connects, resumes from the last version it
//!   holds, reconnects with jittered backoff, and saves the snapshot after every change.
//!
//! **Invariant (static stability):** nothing here is on a request path. Readers use the
//! last snapshot; with the server down it stays as it was (restored from disk after a
//! restart) and [`Client::connected`] says so. The one wait is [`Client::endpoints`] for a
//! service never seen before: at most [`FIRST_USE_WAIT`].

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ieum_wire::PROTOCOL;
use ieum_wire::v1::push_client::PushClient;
use ieum_wire::v1::{ClientMessage, Hello, Subscribe, client_message};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub mod snapshot;

pub use snapshot::{Endpoint, Resource, Service, Snapshot};

/// Longest a first call to an unknown service waits for its endpoints.
pub const FIRST_USE_WAIT: Duration = Duration::from_secs(1);
/// Shortest and longest wait between reconnection attempts.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(10));

/// How to reach the control plane and what to ask for.
#[derive(Debug, Clone)]
pub struct Options {
    /// The server's API address, e.g. `http://127.0.0.1:7700`.
    pub server: String,
    /// Who this client is, for the server's logs.
    pub client: String,
    /// The client's own service, if any (it receives resources that target it).
    pub service: Option<String>,
    /// Services it calls from the start (more are added on first use).
    pub calls: Vec<String>,
    /// A gateway's name (`ieum gateway --name`): the session also receives every `Api`,
    /// `ApiConsumer`, `ApiKey` (hashes) and `Flow` (what a gateway publishes). Needs a
    /// `gateway` token off loopback.
    pub gateway: Option<String>,
    /// Where to keep the last snapshot, so a restart serves with the server down.
    pub snapshot_file: Option<PathBuf>,
    /// Bearer token, for servers not bound to loopback.
    pub token: Option<String>,
    /// For an `https://` server: the TLS configuration that verifies it (bootstrap trust,
    /// `ieum_identity::ServerTrust::client_config`). Required for `https://`: without it
    /// the client does not connect, never falling back to an unverified connection.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Could not connect.
    #[error("cannot connect to {server}: {source}")]
    Connect {
        /// The server.
        server: String,
        /// Why.
        source: tonic::transport::Error,
    },
    /// The server refused or ended the stream.
    #[error("push stream: {0}")]
    Stream(#[from] tonic::Status),
    /// An `https://` server and no TLS configuration to verify it with.
    #[error(
        "cannot verify the server {0}: set IEUM_CA_FILE to its CA certificate or use a join \
         token (IEUM_TOKEN=ieum1.<ca-hash>.<secret>)"
    )]
    NoTrust(String),
}

/// A connector for tonic that speaks TLS with `config` to the URI's host: the server name
/// checked is the URI's host (an IP address or a DNS name).
fn tls_connector(
    config: Arc<rustls::ClientConfig>,
) -> impl tower::Service<
    tonic::codegen::http::Uri,
    Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    Error = std::io::Error,
    Future = impl Future<
        Output = std::io::Result<
            hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
        >,
    > + Send,
> + Clone
+ Send {
    let connector = tokio_rustls::TlsConnector::from(config);
    tower::service_fn(move |uri: tonic::codegen::http::Uri| {
        let connector = connector.clone();
        async move {
            let host = uri
                .host()
                .ok_or_else(|| std::io::Error::other(format!("{uri}: no host")))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            let _ = tcp.set_nodelay(true);
            let name = rustls::pki_types::ServerName::try_from(host)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let tls = connector.connect(name, tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        }
    })
}

struct Inner {
    snapshot: watch::Sender<Arc<Snapshot>>,
    connected: watch::Sender<bool>,
    last_error: Mutex<Option<String>>,
    subscribe: mpsc::UnboundedSender<Vec<String>>,
    shutdown: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// A handle to the push-stream subscription; cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("connected", &self.connected())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Restores the saved snapshot (if any) and starts connecting in the background.
    pub fn start(options: Options) -> Client {
        let restored = options
            .snapshot_file
            .as_deref()
            .and_then(|p| match Snapshot::load(p) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "cannot read the saved snapshot");
                    None
                }
            })
            .unwrap_or_default();
        let (subscribe, sub_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            snapshot: watch::channel(Arc::new(restored)).0,
            connected: watch::channel(false).0,
            last_error: Mutex::new(None),
            subscribe,
            shutdown: CancellationToken::new(),
            task: Mutex::new(None),
        });
        let task = tokio::spawn(run(inner.clone(), options, sub_rx));
        *inner.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        Client { inner }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.snapshot.borrow().clone()
    }

    /// A receiver that sees every new snapshot.
    pub fn changes(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.inner.snapshot.subscribe()
    }

    /// Whether a session is open. When false, the snapshot is the last one received.
    pub fn connected(&self) -> bool {
        *self.inner.connected.borrow()
    }

    /// Waits until connected, for at most `timeout`.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut rx = self.inner.connected.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|c| *c))
            .await
            .is_ok()
    }

    /// Why the last session ended, if it did.
    pub fn last_error(&self) -> Option<String> {
        self.inner
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The endpoints of `service`. A service met for the first time is subscribed to, and
    /// this waits up to [`FIRST_USE_WAIT`] for its endpoints; `None` when they did not come
    /// (server down, or the service is unknown).
    pub async fn endpoints(&self, service: &str) -> Option<Service> {
        if let Some(s) = self.snapshot().services.get(service) {
            return Some(s.clone());
        }
        // The server refuses invalid names; asking would end the session for everyone.
        if !valid_name(service) {
            return None;
        }
        let _ = self.inner.subscribe.send(vec![service.to_owned()]);
        let mut rx = self.changes();
        let wait = rx.wait_for(|s| s.services.contains_key(service));
        match tokio::time::timeout(FIRST_USE_WAIT, wait).await {
            Ok(Ok(s)) => s.services.get(service).cloned(),
            _ => None,
        }
    }

    /// Stops the background task.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        let task = self
            .inner
            .task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }
}

/// A DNS-1123 label, as service names are.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

async fn run(
    inner: Arc<Inner>,
    options: Options,
    mut sub_rx: mpsc::UnboundedReceiver<Vec<String>>,
) {
    let mut calls: BTreeSet<String> = options
        .calls
        .iter()
        .filter(|c| valid_name(c))
        .cloned()
        .collect();
    calls.extend(inner.snapshot.borrow().services.keys().cloned());
    let mut backoff = BACKOFF.0;
    loop {
        let result = session(&inner, &options, &mut calls, &mut sub_rx).await;
        // A session that got through starts the backoff again from the shortest wait.
        if inner.connected.send_replace(false) {
            backoff = BACKOFF.0;
        }
        match result {
            Ok(true) => break,
            Ok(false) => backoff = BACKOFF.0,
            Err(e) => {
                tracing::debug!(error = %e, "push session ended");
                *inner.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
            }
        }
        // Full jitter, so a fleet of clients does not reconnect in lockstep.
        let wait = backoff.mul_f64(0.5 + rand::random::<f64>() / 2.0);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = inner.shutdown.cancelled() => break,
        }
        backoff = (backoff * 2).min(BACKOFF.1);
    }
}

/// One session; `Ok(true)` when the client shut down, `Ok(false)` when the server ended
/// the stream.
async fn session(
    inner: &Inner,
    options: &Options,
    calls: &mut BTreeSet<String>,
    sub_rx: &mut mpsc::UnboundedReceiver<Vec<String>>,
) -> Result<bool, Error> {
    let connect = async {
        let endpoint = tonic::transport::Endpoint::from_shared(options.server.clone())
            .map_err(|source| Error::Connect {
                server: options.server.clone(),
                source,
            })?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true);
        let connected = match (&options.tls, endpoint.uri().scheme_str()) {
            (Some(tls), Some("https")) => {
                endpoint
                    .connect_with_connector(tls_connector(tls.clone()))
                    .await
            }
            (None, Some("https")) => return Err(Error::NoTrust(options.server.clone())),
            _ => endpoint.connect().await,
        };
        connected.map_err(|source| Error::Connect {
            server: options.server.clone(),
            source,
        })
    };
    let channel = tokio::select! {
        c = connect => c?,
        () = inner.shutdown.cancelled() => return Ok(true),
    };
    let mut client = PushClient::new(channel);
    let (tx, rx) = mpsc::channel(16);
    let (resume_version, resume_epoch) = {
        let s = inner.snapshot.borrow();
        (s.version, s.epoch.clone())
    };
    let hello = Hello {
        protocol: PROTOCOL,
        client: options.client.clone(),
        service: options.service.clone().unwrap_or_default(),
        gateway: options.gateway.clone().unwrap_or_default(),
        calls: calls.iter().cloned().collect(),
        resume_version,
        resume_epoch,
    };
    let _ = tx
        .send(ClientMessage {
            kind: Some(client_message::Kind::Hello(hello)),
        })
        .await;
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let bearer = options
        .token
        .as_ref()
        .and_then(|t| format!("Bearer {t}").parse().ok());
    if let Some(v) = bearer {
        request.metadata_mut().insert("authorization", v);
    }
    let mut stream = client.stream(request).await?.into_inner();
    loop {
        tokio::select! {
            msg = stream.message() => {
                let Some(msg) = msg? else { return Ok(false) };
                // In place; the snapshot is copied only while a reader still holds the old one.
                inner.snapshot.send_modify(|s| Arc::make_mut(s).apply(&msg));
                let next = inner.snapshot.borrow().clone();
                if let Some(path) = options.snapshot_file.clone() {
                    // File I/O (with fsync) off the async workers, in message order.
                    let s = next.clone();
                    let saved = tokio::task::spawn_blocking(move || s.save(&path).map_err(|e| (path, e))).await;
                    if let Ok(Err((path, e))) = saved {
                        tracing::warn!(path = %path.display(), error = %e, "cannot save the snapshot");
                    }
                }
                inner.connected.send_replace(true);
            }
            Some(new) = sub_rx.recv() => {
                let new: Vec<String> = new.into_iter().filter(|n| calls.insert(n.clone())).collect();
                if !new.is_empty() {
                    let msg = ClientMessage { kind: Some(client_message::Kind::Subscribe(Subscribe { services: new })) };
                    if tx.send(msg).await.is_err() {
                        return Ok(false);
                    }
                }
            }
            () = inner.shutdown.cancelled() => return Ok(true),
        }
    }
}
