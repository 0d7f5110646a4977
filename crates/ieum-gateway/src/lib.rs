//! The API gateway: what a business offers its users, published as managed APIs.
//!
//! ```text
//!  consumer ──HTTP──► gateway listener ──(Api: host, base path, operation, auth, limits)──►
//!      Sidecar::call(service) ──mTLS as gateway:NAME──► the service's sidecar ──► its app
//! ```
//!
//! A [`Gateway`] serves one listener in front of an [`ieum_proxy::Sidecar`] (its outbound
//! library: discovery, routes, resilience, mTLS, metrics, traces) whose push client follows
//! the server as a gateway, so its snapshot holds every `Api`, `ApiConsumer`, `ApiKey` and
//! `Flow`. For each request:
//!
//! 1. the `Api` whose host names and base path match (the longest base path wins); none is
//!    404 with nothing internal in it;
//! 2. the operation, when the API lists them (404 otherwise);
//! 3. the consumer: an API key (its SHA-256 compared with every known key's, in constant
//!    time each), a bearer JWT (`jwt`: signature by the issuer's JWKS, `iss`, `aud`,
//!    `exp`, `nbf`) whose `sub` an `ApiConsumer` lists, or, with `anonymous`, nobody; a
//!    missing or invalid credential is 401 with `WWW-Authenticate`, a consumer the API is
//!    not granted to (or a subject that is no consumer) 403, unreachable JWKS 503;
//! 4. rate limits and quotas (`limits`: per consumer, per API; 429 with `Retry-After`);
//!    CORS preflights are answered before authentication (`cors`);
//! 5. the body limit: a declared length above it is 413 at once, a streamed body is cut
//!    off past it and answered 413;
//! 6. the call: the base path stripped, client-supplied `ieum-consumer` headers removed
//!    and the authenticated consumer set, header rules applied, then the service through
//!    the mesh. An answer the mesh made itself (no instance, breaker open, timeout) is
//!    replaced by a short JSON error with no internal name or address.
//!
//! `catalog` compiles the snapshot's resources into what requests are matched against,
//! once per snapshot change; `edge` handles one request.

// The request future (edge → the outbound library → the resilience stack) is deep enough
// that proving it `Send` needs more than the default 128 steps.
#![recursion_limit = "256"]
mod catalog;
mod cors;
mod edge;
mod jwt;
mod limits;
mod metrics;
mod tls;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use ieum_proxy::Sidecar;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use catalog::Catalog;
pub use tls::{RELOAD_EVERY, TlsFiles};

/// What a gateway is started with.
pub struct GatewayConfig {
    /// The gateway's name (`gateway:NAME` in the mesh).
    pub name: String,
    /// Where consumers connect.
    pub listen: SocketAddr,
    /// The outbound library the gateway calls services through; its push client must
    /// follow the server as this gateway (`ieum_client::Options::gateway`).
    pub sidecar: Sidecar,
    /// That push client.
    pub client: ieum_client::Client,
    /// Terminate TLS with this certificate and key (reloaded when the files change);
    /// plain HTTP without.
    pub tls: Option<TlsFiles>,
    /// Write one JSON line per request to stderr (API, operation, consumer, status, time).
    pub access_log: bool,
}

/// A running gateway.
pub struct Gateway {
    addr: SocketAddr,
    stop: CancellationToken,
    catalog: Arc<RwLock<Arc<Catalog>>>,
}

impl Gateway {
    /// Binds the listener and serves until [`Gateway::shutdown`].
    pub async fn start(config: GatewayConfig) -> std::io::Result<Gateway> {
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let catalog = Arc::new(RwLock::new(Arc::new(Catalog::compile(
            &config.client.snapshot(),
        ))));
        // Recompile on every snapshot change.
        let mut changes = config.client.changes();
        let (follow, until) = (catalog.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    () = until.cancelled() => return,
                }
                let compiled = Arc::new(Catalog::compile(&changes.borrow_and_update()));
                *follow
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = compiled;
            }
        });
        // Per API, operation and consumer, beside the outbound library's own series.
        let metrics = Arc::new(metrics::ApiMetrics::default());
        let rendered = metrics.clone();
        config
            .sidecar
            .add_metrics(Arc::new(move |out: &mut String| rendered.render(out)));
        let edge = Arc::new(edge::Edge {
            name: config.name,
            sidecar: config.sidecar,
            metrics,
            access_log: config.access_log,
            catalog: catalog.clone(),
            limits: limits::Limits::default(),
            // For the identity providers' keys (JWKS), outside the mesh.
            jwt: edge::Verifiers::new(reqwest::Client::new()),
        });
        let handler = move |req| {
            let edge = edge.clone();
            async move { Ok(edge.handle(req).await) }
        };
        match &config.tls {
            Some(files) => {
                let tls = tls::server_config(files, RELOAD_EVERY, stop.clone())
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                ieum_proxy::serve_https(listener, stop.clone(), tls, handler);
            }
            None => {
                ieum_proxy::serve_http(listener, stop.clone(), handler);
            }
        }
        Ok(Gateway {
            addr,
            stop,
            catalog,
        })
    }

    /// The listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The APIs in effect.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Stops accepting; open connections finish the requests in progress.
    pub fn shutdown(&self) {
        self.stop.cancel();
    }
}
