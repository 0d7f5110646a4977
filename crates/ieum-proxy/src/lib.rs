//! The sidecar's data plane: three listeners in front of one app.
//!
//! ```text
//!  app ──HTTP_PROXY / Host / /v1/invoke/──► outbound ──► other sidecars' inbound ──► their app
//!                                                    └──► outside the mesh (egress, CONNECT;
//!                                                         403 with --egress registry-only)
//!  app ──TCP──► --tcp listener ─(balanced endpoint of the service, bytes piped)──► inbound
//!  other sidecars ────────────────────────► inbound ───► app_addr (HTTP, or piped TCP)
//!  every listener's spans ─── bounded queue ──► OTLP collector (when OTEL_* says so)
//!  operators, probes ─────────────────────► admin: /ready /metrics /config /endpoints
//! ```
//!
//! [`Sidecar::start`] binds the three listeners and serves them on tasks; the lifecycle
//! (`ieum run` / `ieum sidecar`: launching the app, registration, heartbeats) lives in the
//! binary and drives this through [`Sidecar::set_app_healthy`] and [`Sidecar::drain`].
//!
//! How the lifecycle drives it:
//!
//! ```no_run
//! use std::time::Duration;
//! use ieum_proxy::{Sidecar, SidecarConfig};
//!
//! # async fn run() -> std::io::Result<()> {
//! let client = ieum_client::Client::start(ieum_client::Options {
//!     server: "http://127.0.0.1:7700".into(),
//!     client: "orders-sidecar".into(),
//!     service: Some("orders".into()),
//!     calls: vec![],
//!     gateway: None,
//!     snapshot_file: None,
//!     token: None,
//!     tls: None,
//! });
//! let sidecar = Sidecar::start(SidecarConfig {
//!     service: "orders".into(),
//!     zone: Some("z1".into()),
//!     app_addr: "127.0.0.1:8080".parse().expect("an address"),
//!     outbound_listen: "127.0.0.1:7710".parse().expect("an address"),
//!     inbound_listen: "0.0.0.0:7711".parse().expect("an address"),
//!     admin_listen: "127.0.0.1:7719".parse().expect("an address"),
//!     client,
//!     egress: ieum_proxy::Egress::Allow,
//!     app_protocol: ieum_proxy::AppProtocol::Http,
//!     tcp: vec!["127.0.0.1:15432=postgres".parse().expect("a TCP forward")],
//!     otlp: ieum_proxy::OtlpConfig::from_env("orders").unwrap_or(None),
//!     enforce_mesh_identity: false,
//!     // With the mesh's credentials (`ieum_proxy::MeshConfig`), traffic between
//!     // sidecars is mTLS; `None` is plain text (`ieum server --dev`).
//!     mesh: None,
//! })
//! .await?;
//! // Register the instance at `sidecar.inbound_addr()` (with metadata `identity` =
//! // `sidecar.identity_uri()`, when there is one); start the app with
//! // `HTTP_PROXY=http://{outbound_addr}`; report its health as checks go.
//! sidecar.set_app_healthy(true);
//! // On SIGTERM: mark the instance draining, then
//! sidecar.drain(Duration::from_secs(30)).await;
//! sidecar.flush_traces(Duration::from_secs(2)).await;
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! - `outbound`: which service a request is for (absolute-form proxy request, `Host`, or
//!   the path form `/v1/invoke/SERVICE/PATH` for requests addressed to the listener
//!   itself), route selection and filters, then the destination's stack; egress.
//! - `control`: the app's saga and flow starts, forwarded to the server under the
//!   sidecar's credentials.
//! - `config`: the effective configuration read from the client's snapshot: routes
//!   compiled for matching, policy precedence, and the typed stack configuration.
//! - `dest`: one `ieum_resilience::stack::client` per route rule and backend (service and
//!   version subset), with endpoints kept in step with the snapshot.
//! - `upstream`: pooled keep-alive clients (HTTP/1.1, and HTTP/2 prior knowledge for
//!   requests that came in as HTTP/2, so gRPC keeps trailers and streams) and the
//!   per-endpoint service.
//! - `inbound`: forwarding to the app, with authorization, the service's own rate limit,
//!   the caller's deadline, and in-flight counting for drains.
//! - `authz`: `AuthorizationPolicy` evaluation (pure: policies, caller, request in;
//!   allow or deny with the deciding rule out), the 403 answer, denial samples for the
//!   telemetry report; [`PeerIdentity`] is where the TLS layer puts the caller's identity.
//! - `admin`: readiness, Prometheus metrics, the effective configuration, endpoints.
//! - `access_log`: the opt-in JSON access log (Envoy's field names).
//! - `breakers`: latest breaker states and the coalesced feed of transitions.
//! - `metrics`: Linkerd-named counters and histograms, atomics per label set.
//! - `upgrade`: HTTP/1.1 upgrades (WebSocket) spliced after a `101`; `CONNECT` tunnels.
//! - `tcp`: opaque TCP — the app's `--tcp` listeners piped to a balanced endpoint of a
//!   service, and the inbound listener of an app registered as `tcp`; `tcp_*` metrics.
//! - `trace`: W3C `traceparent` on every hop (always) and one span per proxied request
//!   (client span outbound, server span inbound) when an exporter is configured.
//! - `otlp`: the exporter — `OTEL_*` configuration, a bounded queue that drops (and
//!   counts) rather than wait, batches sent by one task over OTLP/HTTP protobuf or gRPC.
//! - `server`: the accept loop (HTTP/1.1 and h2c on one port) with graceful stop; `body`:
//!   the response body type and the in-flight guard.
//! - `mtls`: mTLS between sidecars when a [`MeshConfig`] is given — the inbound listener
//!   sniffs each connection's first byte and serves TLS with a mesh client certificate
//!   required (plain text too for an `mtls: permissive` service), putting the caller's
//!   identity on its requests; calls to endpoints registered with an `identity` go over
//!   TLS with the callee's SPIFFE id verified.
//!
//! **Invariant (static stability):** the request path never waits on the control plane,
//! except the client library's bounded first-use wait for a service never seen before.
//! With the server down, calls use the last snapshot, and `/ready` says since when the
//! control plane is unreachable.
//!
//! **Invariant:** every resilience concern comes from `ieum-resilience`; this crate only
//! chooses the configuration and the endpoints.
//!
//! **Invariant:** with a mesh configured, the inbound listener admits only mesh peers
//! (verified client certificates) unless the service is `mtls: permissive`, and a call to
//! an endpoint with an `identity` is sent only once the callee proved exactly that SPIFFE
//! id — never a DNS name.
//!
//! **Invariant:** span export never slows a request: spans are offered to a bounded
//! queue without waiting, and without an exporter nothing is recorded (only the
//! `traceparent` header is written).

mod access_log;
mod admin;
mod authz;
mod body;
mod breakers;
mod bridge;
mod config;
mod control;
mod dest;
mod inbound;
mod metrics;
mod mtls;
mod otlp;
mod outbound;
mod server;
mod tcp;
mod trace;
mod upgrade;
mod upstream;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use http::uri::Authority;
use ieum_client::{Client, Snapshot};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use authz::PeerIdentity;

/// Writes more Prometheus series into the text of `/metrics` ([`Sidecar::add_metrics`]).
pub type MetricsSource = Arc<dyn Fn(&mut String) + Send + Sync>;

/// Serves HTTP/1.1 and HTTP/2 (h2c) on `listener` with `handler`, one task per connection,
/// until `stop` (then open connections finish the requests in progress): the accept loop of
/// the sidecar's listeners, for other edges built on this crate (the API gateway).
pub fn serve_http<F, Fut>(
    listener: TcpListener,
    stop: CancellationToken,
    handler: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(http::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<http::Response<ProxyBody>, std::convert::Infallible>>
        + Send
        + 'static,
{
    server::spawn(listener, stop, None, handler)
}

/// [`serve_http`] over TLS with `config` (HTTP/2 when ALPN agrees on `h2`); a failed
/// handshake closes that connection only.
pub fn serve_https<F, Fut>(
    listener: TcpListener,
    stop: CancellationToken,
    config: Arc<rustls::ServerConfig>,
    handler: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(http::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<http::Response<ProxyBody>, std::convert::Infallible>>
        + Send
        + 'static,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let s = stop.clone();
    server::accept(listener, stop, None, move |stream| {
        let (acceptor, handler, stop) = (acceptor.clone(), handler.clone(), s.clone());
        async move {
            let handshake = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream));
            match handshake.await {
                Ok(Ok(tls)) => server::serve(tls, &stop, handler).await,
                Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake refused"),
                Err(_) => tracing::debug!("TLS handshake timed out"),
            }
        }
    })
}
pub use body::{BodyTooLarge, ProxyBody, RequestBody};
pub use bridge::{BridgeOptions, BridgeStart, TopicTraffic};
pub use metrics::{GoldenSignals, Traffic};
pub use mtls::MeshConfig;
pub use otlp::{OtlpConfig, OtlpProtocol};
pub use tcp::TcpForward;

use body::InFlightCounter;
use config::Config;
use dest::UpBody;
use metrics::{Direction, Metrics, RouteMetrics};
use upstream::Clients;

/// How often the connection to the control plane is sampled for `/ready`.
const CONNECTED_POLL: Duration = Duration::from_millis(200);

/// What a sidecar needs to start.
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    /// Its own service: the caller in breaker reports, `dst_service` of inbound metrics,
    /// and the target of inbound rate limits.
    pub service: String,
    /// Its zone, so balancing prefers endpoints in the same zone.
    pub zone: Option<String>,
    /// Where the app listens, e.g. `127.0.0.1:APP_PORT`; inbound traffic goes there.
    pub app_addr: SocketAddr,
    /// The app's calls to other services (HTTP proxy, `Host` routing, the sidecar's own
    /// API); port 0 picks a free one.
    pub outbound_listen: SocketAddr,
    /// Calls from other sidecars to this app; the address registered for the instance.
    pub inbound_listen: SocketAddr,
    /// `/ready`, `/metrics`, `/config`, `/endpoints`.
    pub admin_listen: SocketAddr,
    /// The push-stream client, already started by the caller.
    pub client: Client,
    /// What the outbound listener does with destinations that are not registered
    /// services.
    pub egress: Egress,
    /// What the app speaks on `app_addr`: HTTP is proxied request by request (routes,
    /// rate limits, metrics per request); TCP is piped byte for byte.
    pub app_protocol: AppProtocol,
    /// Opaque TCP listeners for the app (`--tcp 127.0.0.1:15432=postgres`).
    pub tcp: Vec<TcpForward>,
    /// Where spans go (OTLP); `None` records none (`traceparent` still propagates).
    pub otlp: Option<OtlpConfig>,
    /// Whether callers must prove a mesh identity. Always on with a [`mesh`](Self::mesh)
    /// (the TLS layer puts a [`PeerIdentity`] on each request), whatever this says; set it
    /// without a mesh only to test policies. When on, every call in is authorized, with
    /// the implicit default `allow-mesh` for a service no policy sets a default for —
    /// except a service whose `Service` says `mtls: permissive`, which admits callers
    /// without an identity as dev mode does. When off (no mesh: `ieum server --dev`),
    /// only services that an `AuthorizationPolicy` targets are checked, as in dev mode:
    /// the implicit default is `allow-all` and rules without `from` also match callers
    /// without an identity.
    pub enforce_mesh_identity: bool,
    /// mTLS between sidecars: this sidecar's identity and the mesh's roots. `None` is
    /// plain text everywhere (`ieum server --dev`). With it, the inbound listener requires
    /// mesh client certificates (unless the service is `mtls: permissive`), and calls to
    /// endpoints registered with an `identity` go over mTLS, verifying that identity.
    pub mesh: Option<MeshConfig>,
}

/// What the outbound listener does with a destination that is not a registered service
/// (a dotted name, an IP address and port, an unregistered name that resolves in DNS, a
/// `CONNECT` tunnel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Egress {
    /// Forwards it as a plain HTTP proxy would, and tunnels `CONNECT`: the app's calls
    /// outside the mesh keep working.
    #[default]
    Allow,
    /// Refuses it with 403 and a body naming the host (Istio's `REGISTRY_ONLY`): only
    /// registered services are reachable.
    RegistryOnly,
}

impl std::str::FromStr for Egress {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "allow" => Ok(Egress::Allow),
            "registry-only" | "registryOnly" => Ok(Egress::RegistryOnly),
            other => Err(format!(
                "`{other}` is not an egress mode: use allow or registry-only"
            )),
        }
    }
}

/// The protocol the app serves, which decides how the inbound listener forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AppProtocol {
    /// HTTP/1.1 or h2c (gRPC): requests are proxied one by one.
    #[default]
    Http,
    /// Opaque TCP: every accepted connection is piped to the app byte for byte.
    Tcp,
}

impl std::str::FromStr for AppProtocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "http" => Ok(AppProtocol::Http),
            "tcp" => Ok(AppProtocol::Tcp),
            other => Err(format!("`{other}` is not an app protocol: use http or tcp")),
        }
    }
}

/// Receives access log lines.
type AccessLogSink = Box<dyn Fn(String) + Send + Sync>;

/// State shared by the listeners and background tasks.
pub(crate) struct Shared {
    service: String,
    zone: Option<Arc<str>>,
    app: Authority,
    app_addr: SocketAddr,
    client: Client,
    /// The configuration in effect; replaced (with its stacks) when a resource changes.
    config: RwLock<Arc<Config>>,
    metrics: Metrics,
    inbound_metrics: Arc<RouteMetrics>,
    /// Calls outside the mesh (`dst_service="external"`, `route="egress"`).
    egress_metrics: Arc<RouteMetrics>,
    /// The outbound listener's port, to tell requests for the sidecar itself apart.
    outbound_port: u16,
    /// Pool towards other sidecars (bodies the retry layer can replay).
    up_client: Clients<UpBody>,
    /// Pool towards the app, and outside the mesh.
    app_client: Clients<body::RequestBody>,
    app_healthy: AtomicBool,
    /// Set by a drain: `/ready` answers 503 so load balancers stop sending.
    draining: AtomicBool,
    /// Where access log lines go, once enabled.
    access_log: std::sync::OnceLock<AccessLogSink>,
    /// Breaker transitions of every stack.
    breakers: breakers::Breakers,
    in_flight: Arc<InFlightCounter>,
    /// Since when the control plane is unreachable (`None` while connected).
    disconnected_since: Mutex<Option<SystemTime>>,
    /// Whether destinations outside the registry are reachable.
    egress: Egress,
    /// Records spans and hands them to the exporter; `None` without OTLP.
    tracer: Option<trace::Tracer>,
    /// The opaque TCP forwards, kept in step with the snapshot.
    tcp_forwards: Vec<Arc<tcp::Forward>>,
    /// Publish, subscriptions and bindings.
    bridge: bridge::Bridge,
    /// The server this sidecar follows, for the app's saga and flow starts (set by
    /// [`Sidecar::link_server`]).
    server: std::sync::OnceLock<control::ServerLink>,
    /// More series for `/metrics`, from what is built on this sidecar (an API gateway's).
    extra_metrics: std::sync::OnceLock<MetricsSource>,
    /// See [`SidecarConfig::enforce_mesh_identity`]: on with a mesh.
    enforce_mesh_identity: bool,
    /// Whether the own `Service` says `mtls: permissive` (from the snapshot): plain-text
    /// callers are admitted, and authorized as in dev mode.
    mtls_permissive: AtomicBool,
    /// The identity presented, with a mesh.
    identity: Option<ieum_identity::Identity>,
    /// The inbound listener's TLS, with a mesh. (The outbound side's lives in
    /// `up_client` and the opaque TCP forwards.)
    inbound_tls: Option<Arc<mtls::inbound::InboundTls>>,
    /// Samples of denied calls for the next telemetry report.
    denials: authz::DenialLog,
}

impl Shared {
    /// Whether the own service admits plain-text callers (`mtls: permissive`).
    fn mtls_permissive(&self) -> bool {
        self.mtls_permissive.load(Ordering::Relaxed)
    }

    fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Follows a new snapshot: a new configuration when a resource changed (keeping the
    /// stacks it does not change), otherwise new endpoints for the existing stacks.
    fn on_snapshot(&self, snapshot: &Snapshot) {
        self.mtls_permissive
            .store(mtls::permissive(snapshot, &self.service), Ordering::Relaxed);
        let current = self.config();
        if current.fingerprint != config::fingerprint(snapshot) {
            let fresh = Config::from_snapshot(snapshot);
            // Stacks whose inputs did not change carry over with their state.
            for d in current.dests.all() {
                if fresh.inputs(&d.key) == d.inputs {
                    d.update(snapshot, &self.up_client);
                    fresh.dests.insert(d);
                }
            }
            *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
            for f in &self.tcp_forwards {
                f.update(snapshot);
            }
            return;
        }
        for d in current.dests.all() {
            d.update(snapshot, &self.up_client);
        }
        for f in &self.tcp_forwards {
            f.update(snapshot);
        }
    }

    fn sample_connected(&self) {
        let connected = self.client.connected();
        let mut since = self
            .disconnected_since
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match (connected, *since) {
            (true, _) => *since = None,
            (false, None) => *since = Some(SystemTime::now()),
            (false, Some(_)) => {}
        }
    }
}

/// A running sidecar. Dropping it stops every listener.
pub struct Sidecar {
    shared: Arc<Shared>,
    outbound: SocketAddr,
    inbound: SocketAddr,
    admin: SocketAddr,
    /// Stops the inbound listener (first step of a drain).
    stop_inbound: CancellationToken,
    /// Stops everything else.
    stop: CancellationToken,
    /// Stops the span exporter (after a last flush), and its task.
    stop_export: CancellationToken,
    export_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Sidecar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sidecar")
            .field("service", &self.shared.service)
            .field("outbound", &self.outbound)
            .field("inbound", &self.inbound)
            .field("admin", &self.admin)
            .finish_non_exhaustive()
    }
}

impl Sidecar {
    /// Binds the three listeners (and the opaque TCP ones) and serves them.
    pub async fn start(config: SidecarConfig) -> std::io::Result<Sidecar> {
        let tls_error = |e: ieum_identity::ConfigError| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("mTLS: {e}"))
        };
        let (inbound_tls, outbound_tls) = match &config.mesh {
            Some(mesh) => {
                mesh.check()?;
                (
                    Some(Arc::new(
                        mtls::inbound::InboundTls::new(mesh).map_err(tls_error)?,
                    )),
                    Some(Arc::new(mtls::outbound::OutboundTls::new(mesh))),
                )
            }
            None => (None, None),
        };
        let bind = |what: String, addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|e| std::io::Error::new(e.kind(), format!("{what} {addr}: {e}")))
        };
        let outbound_l = bind("outbound listener".into(), config.outbound_listen).await?;
        let inbound_l = bind("inbound listener".into(), config.inbound_listen).await?;
        let admin_l = bind("admin listener".into(), config.admin_listen).await?;
        let mut tcp_ls = Vec::new();
        for f in &config.tcp {
            let l = bind(format!("TCP listener for `{}` at", f.service), f.listen).await?;
            tcp_ls.push((f.clone(), l));
        }
        let app = upstream::authority(&config.app_addr.ip().to_string(), config.app_addr.port())
            .ok_or_else(|| std::io::Error::other("the app address is not a valid authority"))?;
        let metrics = Metrics::default();
        // With a mesh, inbound series carry `tls` and `client_id`; this one counts plain
        // text (`mtls: permissive`).
        let inbound_metrics = if config.mesh.is_some() {
            metrics.inbound_peer(&config.service, false, "")
        } else {
            metrics.route(Direction::Inbound, &config.service, "default")
        };
        let egress_metrics = metrics.route(Direction::Outbound, "external", "egress");
        let snapshot = config.client.snapshot();
        let zone: Option<Arc<str>> = config.zone.as_deref().map(Arc::from);
        let mut tcp_forwards = Vec::new();
        for (f, l) in &tcp_ls {
            let m = metrics.tcp_dst(Direction::Outbound, &f.service);
            tcp_forwards.push(Arc::new(tcp::Forward::new(
                f.clone(),
                l.local_addr()?,
                &config.service,
                zone.clone(),
                &snapshot,
                m,
                outbound_tls.clone(),
            )));
        }
        let stop = CancellationToken::new();
        let stop_export = CancellationToken::new();
        let (tracer, export_task) = match config.otlp {
            Some(otlp) => {
                let (t, task) = trace::Tracer::start(otlp, stop_export.clone());
                (Some(t), Some(task))
            }
            None => (None, None),
        };
        let service = config.service;
        let shared = Arc::new(Shared {
            zone,
            service: service.clone(),
            app,
            app_addr: config.app_addr,
            config: RwLock::new(Arc::new(Config::from_snapshot(&snapshot))),
            metrics,
            inbound_metrics,
            egress_metrics,
            outbound_port: outbound_l.local_addr()?.port(),
            up_client: match &outbound_tls {
                Some(tls) => Clients::with_mesh(tls.clone()),
                None => Clients::new(),
            },
            app_client: Clients::new(),
            app_healthy: AtomicBool::new(true),
            draining: AtomicBool::new(false),
            breakers: breakers::Breakers::start(),
            access_log: std::sync::OnceLock::new(),
            in_flight: Arc::new(InFlightCounter::default()),
            disconnected_since: Mutex::new(None),
            client: config.client,
            egress: config.egress,
            tracer,
            tcp_forwards,
            bridge: bridge::Bridge::new(&snapshot, &service, stop.child_token()),
            server: std::sync::OnceLock::new(),
            extra_metrics: std::sync::OnceLock::new(),
            enforce_mesh_identity: config.enforce_mesh_identity || config.mesh.is_some(),
            mtls_permissive: AtomicBool::new(mtls::permissive(&snapshot, &service)),
            identity: config.mesh.map(|m| m.identity),
            inbound_tls,
            denials: authz::DenialLog::default(),
        });
        shared.sample_connected();
        let stop_inbound = stop.child_token();
        let sidecar = Sidecar {
            outbound: outbound_l.local_addr()?,
            inbound: inbound_l.local_addr()?,
            admin: admin_l.local_addr()?,
            shared: shared.clone(),
            stop_inbound: stop_inbound.clone(),
            stop: stop.clone(),
            stop_export,
            export_task: Mutex::new(export_task),
        };
        let s = shared.clone();
        let tcp = Some(shared.metrics.tcp_outbound.clone());
        server::spawn(outbound_l, stop.clone(), tcp, move |req| {
            outbound::handle(s.clone(), req)
        });
        match config.app_protocol {
            AppProtocol::Http => {
                let tcp = Some(shared.metrics.tcp_inbound.clone());
                match &shared.inbound_tls {
                    Some(tls) => mtls::inbound::serve_http(
                        shared.clone(),
                        tls.clone(),
                        inbound_l,
                        stop_inbound,
                        tcp,
                    ),
                    None => {
                        let s = shared.clone();
                        server::spawn(inbound_l, stop_inbound, tcp, move |req| {
                            inbound::handle(s.clone(), req)
                        });
                    }
                }
            }
            AppProtocol::Tcp => tcp::serve_inbound(shared.clone(), inbound_l, stop_inbound),
        }
        for (f, (_, l)) in shared.tcp_forwards.iter().zip(tcp_ls) {
            tcp::serve_forward(shared.clone(), f.clone(), l, stop.clone());
        }
        let s = shared.clone();
        server::spawn(admin_l, stop.clone(), None, move |req| {
            admin::handle(s.clone(), req)
        });
        tokio::spawn(follow(shared, stop));
        tracing::info!(?sidecar, "sidecar listening");
        Ok(sidecar)
    }

    /// The addresses of the opaque TCP listeners, in the order of
    /// [`SidecarConfig::tcp`] (with the ports chosen for port 0).
    pub fn tcp_addrs(&self) -> Vec<SocketAddr> {
        self.shared.tcp_forwards.iter().map(|f| f.local).collect()
    }

    /// Sends the spans still queued and stops the exporter, waiting at most `grace`; call
    /// it last when stopping, so the final requests' spans are not lost. Spans recorded
    /// afterwards are dropped.
    pub async fn flush_traces(&self, grace: Duration) {
        self.stop_export.cancel();
        let task = self
            .export_task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = task {
            let _ = tokio::time::timeout(grace, task).await;
        }
    }

    /// The outbound listener's address (what the app's `HTTP_PROXY` points at).
    pub fn outbound_addr(&self) -> SocketAddr {
        self.outbound
    }

    /// The inbound listener's address (what the instance is registered with).
    pub fn inbound_addr(&self) -> SocketAddr {
        self.inbound
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The SPIFFE id this sidecar presents (`spiffe://ieum.local/svc/orders`), with a mesh:
    /// what its instance's registration carries as metadata `identity`, so callers
    /// verify it. `None` without a mesh (callers then use plain text).
    pub fn identity_uri(&self) -> Option<String> {
        self.shared.identity.as_ref().map(|i| i.id().uri())
    }

    /// Reports the app's health, as the lifecycle's local check sees it; `/ready` follows.
    pub fn set_app_healthy(&self, healthy: bool) {
        self.shared.app_healthy.store(healthy, Ordering::Release);
    }

    /// Stops accepting inbound connections (open ones close after their current
    /// request) and answers `/ready` with 503 `draining`, then waits until no request is in flight in either direction, for at
    /// most `grace`. The outbound listener stays open: the app may still need to call
    /// others to finish its work.
    pub async fn drain(&self, grace: Duration) {
        self.shared.draining.store(true, Ordering::Release);
        self.stop_inbound.cancel();
        self.shared.bridge.stop();
        let idle = self.shared.in_flight.idle();
        if tokio::time::timeout(grace, idle).await.is_err() {
            tracing::warn!(
                in_flight = self.in_flight(),
                ?grace,
                "drain grace period over with requests still in flight"
            );
        }
    }

    /// Adds `source`'s series to the admin listener's `/metrics` (Prometheus text, written
    /// into the string it is given). Once; `false` when a source was added already.
    pub fn add_metrics(&self, source: MetricsSource) -> bool {
        self.shared.extra_metrics.set(source).is_ok()
    }

    /// Calls `service` in process, as the app's call to it through the outbound listener
    /// would go (routes, policies, balancing, mTLS, metrics, traces): what an API gateway
    /// built on this sidecar does with each request it accepts. The request's path is the
    /// service's; its body may be held to a limit ([`RequestBody::limited`]).
    pub async fn call(
        &self,
        service: &str,
        req: http::Request<RequestBody>,
    ) -> http::Response<ProxyBody> {
        outbound::call(self.shared.clone(), service.to_owned(), req).await
    }

    /// Requests in flight, inbound and outbound (response bodies included).
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.get()
    }

    /// Turns the JSON access log on: every request's line (Envoy's and Istio's field
    /// names) goes to `sink`, e.g. a writer to stderr. Once on, it stays on; `false` when
    /// it was already on.
    pub fn enable_access_log(&self, sink: impl Fn(String) + Send + Sync + 'static) -> bool {
        self.shared.access_log.set(Box::new(sink)).is_ok()
    }

    /// A sample of the traffic counters of every direction, destination and route; the
    /// difference of two samples gives the golden signals ([`Traffic::since`]).
    pub fn traffic(&self) -> Vec<Traffic> {
        self.shared.metrics.traffic()
    }

    /// Circuit-breaker transitions, coalesced per destination (the first at once, then at
    /// most one summary per 10 s), for recording as events on the service's timeline.
    pub fn breaker_reports(
        &self,
    ) -> tokio::sync::broadcast::Receiver<ieum_resilience::breaker::reporter::Report> {
        self.shared.breakers.subscribe()
    }

    /// Links the sidecar to the server at `url` it follows, reached with its bearer `token`
    /// (none once it authenticates with its certificate, which `tls` presents; `tls` also
    /// verifies an `https://` server). From then on `type: memory` PubSubs are hosted by
    /// that server, so services in different processes share them, and the app's saga and
    /// flow starts (`POST /v1/sagas/NAME/executions`, `POST /v1/flows/NAME` on the
    /// outbound listener) go to it under the sidecar's credentials. Call it right after
    /// [`Sidecar::start`], before the app starts; without it a `memory` PubSub lives in
    /// this process only and starts answer 503. Once only; the error says what to fix.
    pub fn link_server(
        &self,
        url: &str,
        token: Option<String>,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<(), String> {
        let host = ieum_bridge::MemoryHost {
            url: url.to_owned(),
            token,
            tls,
        };
        let link = control::ServerLink::new(&host)?;
        if self.shared.server.set(link).is_err() {
            return Err("the sidecar is already linked to a server".to_owned());
        }
        self.shared.bridge.set_memory_host(host);
        Ok(())
    }

    /// Activates subscriptions (call it once the app is healthy, before registering):
    /// asks the app for the ones it declares (`GET /ieum/subscriptions`) when told to,
    /// then starts those and the `Subscription`s and input `Binding`s of this service.
    /// From then on subscriptions follow the snapshot. Wait for them with
    /// [`Sidecar::subscriptions_ready`].
    pub async fn start_subscriptions(&self, options: BridgeOptions) -> BridgeStart {
        bridge::Bridge::start(&self.shared, options).await
    }

    /// Waits until every subscription is active (events published from then on reach the
    /// app), at most `timeout`; otherwise says which are not, and why. `Ok` when there
    /// are none.
    pub async fn subscriptions_ready(&self, timeout: Duration) -> Result<(), String> {
        self.shared.bridge.ready(timeout).await
    }

    /// A sample of the event counters of every `PubSub`, topic and direction; the
    /// difference of two samples gives the rates between them.
    pub fn topic_traffic(&self) -> Vec<TopicTraffic> {
        self.shared.bridge.metrics.traffic()
    }

    /// The single events kept since the last call (dead letters, drops, correlated events
    /// and a few samples per topic), and how many did not fit, for the telemetry report.
    pub fn take_event_records(&self) -> (Vec<ieum_model::telemetry::EventRecord>, u64) {
        self.shared.bridge.metrics.log.take()
    }

    /// Samples of the calls in that authorization denied since the last call (one line
    /// per caller, method, path and deciding rule, with a count; at most 20), and how many
    /// denials did not fit, for the telemetry report.
    pub fn take_denials(&self) -> (Vec<ieum_model::telemetry::Denial>, u64) {
        self.shared.denials.take()
    }

    /// Stops every listener and background task.
    pub fn shutdown(&self) {
        self.stop.cancel();
        self.stop_export.cancel();
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.stop.cancel();
        self.stop_export.cancel();
    }
}

/// Follows snapshots and samples the connection to the control plane.
async fn follow(shared: Arc<Shared>, stop: CancellationToken) {
    let mut changes = shared.client.changes();
    let mut tick = tokio::time::interval(CONNECTED_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let first = changes.borrow_and_update().clone();
    shared.on_snapshot(&first);
    bridge::Bridge::on_snapshot(&shared, &first);
    loop {
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    break;
                }
                let snapshot = changes.borrow_and_update().clone();
                shared.on_snapshot(&snapshot);
                bridge::Bridge::on_snapshot(&shared, &snapshot);
            }
            _ = tick.tick() => shared.sample_connected(),
            () = stop.cancelled() => break,
        }
    }
}
