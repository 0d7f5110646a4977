//! `ieum server`'s HTTP side: the REST API `/v1`, its OpenAPI document, health endpoints
//! and the live event stream, over a [`Registry`].
//!
//! Layout:
//! - [`router`] builds the whole app from an [`AppState`]; tests drive it with
//!   `tower::ServiceExt::oneshot`, no socket needed.
//! - `api`: one handler per endpoint, annotated for the OpenAPI document (`openapi`).
//! - `extract`: strict JSON bodies, path names and query parameters whose every failure is
//!   a coded 4xx naming the field.
//! - [`push`]: the gRPC push stream (snapshot, then deltas, scoped to what a client calls).
//! - `saga`: saga executions (start, read, list, counts, operator actions) and flows,
//!   over an `ieum_saga::Coordinator` given to [`router_with`].
//! - `config`: configuration resources (apply, read, history, delete, JSON Schemas).
//! - `pubsub`: `memory` PubSubs hosted for sidecars (publish, subscribe, fetch under
//!   leases, settle): `ieum_bridge`'s in-process broker, shared over HTTP.
//! - `auth`: the route → permission table ([`auth::ROUTES`]), roles, and the middleware
//!   that checks tokens; open on loopback without a token.
//! - [`tokens`]: API tokens (create, list, revoke; hashed in the store, cached here).
//! - `apikeys`: the API gateway's consumer keys (create, list, revoke), stored as `ApiKey`
//!   resources that hold only each key's SHA-256.
//! - `apis`: the API catalogue (`/v1/apis`) and each `Api`'s OpenAPI document for its
//!   consumers (`/v1/apis/{name}/openapi.json`).
//! - `error`: [`ApiError`], the one error shape `{"error": {code, message, field}}`.
//! - The web UI (`ieum-ui`) is merged in under `/ui`; `/` redirects there.
//!
//! **Invariant:** handlers hold no logic of their own beyond parsing and mapping; the
//! registry decides, so every client (CLI, UI, sidecar) gets the same answers.

use std::future::Future;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use ieum_registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

mod api;
mod apikeys;
mod apis;
pub mod auth;
mod config;
mod error;
mod extract;
pub mod mesh;
mod openapi;
mod pubsub;
pub mod push;
mod saga;
pub mod tokens;
mod topics;

pub use api::INDEX_HEADER;
pub use auth::{Auth, Author, Caller, ClientCertificate, Credential, Permission, Role};
pub use error::{ApiError, ErrorBody, ErrorDetail};
pub use openapi::openapi;

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The registry.
    pub registry: Registry,
    /// How requests are authorized.
    pub auth: Auth,
    /// Cancelled when the server shuts down; ends streams and blocking queries.
    pub shutdown: CancellationToken,
}

/// The whole HTTP app, without a saga coordinator (saga and flow endpoints answer 503).
pub fn router(state: AppState) -> Router {
    router_with(state, None)
}

/// The whole HTTP app, with the saga coordinator behind `/v1/sagas` and `/v1/flows`
/// and the UI's saga pages.
pub fn router_with(state: AppState, sagas: Option<ieum_saga::Coordinator>) -> Router {
    router_with_mesh(state, sagas, None)
}

/// [`router_with`], plus the mesh's certificate authority behind `/v1/mesh` and
/// `/v1/certificates` (without one they answer 404 saying so).
pub fn router_with_mesh(
    state: AppState,
    sagas: Option<ieum_saga::Coordinator>,
    mesh: Option<mesh::Mesh>,
) -> Router {
    let tokens = tokens::Tokens::new(
        state.registry.store().clone(),
        mesh.as_ref().map(mesh::Mesh::ca_fingerprint),
    );
    let guard = auth::Guard {
        auth: state.auth.clone(),
        tokens: tokens.clone(),
        registry: state.registry.clone(),
    };
    // The push stream is gRPC on the same port: one address is all a client needs.
    let push = push::service(state.registry.clone(), state.shutdown.clone())
        .map_request(|req: axum::http::Request<axum::body::Body>| req.map(tonic::body::Body::new));
    let push_path = format!(
        "/{}/{{*rest}}",
        <push::PushServer as tonic::server::NamedService>::NAME
    );
    Router::new()
        .route_service(&push_path, push)
        // The web UI (read-only pages under /ui); the root leads to it.
        .merge(ieum_ui::router(state.registry.clone()))
        .merge(saga::routes(sagas.clone()))
        .merge(pubsub::routes(
            state.registry.clone(),
            state.shutdown.clone(),
        ))
        .merge(ieum_ui::sagas_router(sagas))
        .merge(tokens::routes(tokens.clone(), state.registry.clone()))
        .merge(apikeys::routes(state.registry.clone()))
        .merge(mesh::routes(mesh, tokens, state.registry.clone()))
        .route("/", get(|| async { axum::response::Redirect::to("/ui") }))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/v1/status", get(api::status))
        .route("/v1/openapi.json", get(openapi::serve))
        .route("/v1/services", get(api::list_services))
        .route(
            "/v1/services/{name}",
            get(api::get_service).put(api::put_service),
        )
        .route(
            "/v1/services/{name}/instances",
            post(api::register).get(api::list_instances),
        )
        .route(
            "/v1/services/{name}/instances/{id}",
            axum::routing::delete(api::deregister),
        )
        .route(
            "/v1/services/{name}/instances/{id}/heartbeat",
            put(api::heartbeat),
        )
        .route(
            "/v1/services/{name}/instances/{id}/state",
            put(api::set_state),
        )
        .route("/v1/services/{name}/events", get(api::service_events))
        .route("/v1/services/{name}/signals", get(api::signals))
        .route(
            "/v1/services/{name}/instances/{id}/telemetry",
            post(api::telemetry),
        )
        .route("/v1/events", get(api::list_events))
        .route("/v1/events/stream", get(api::stream_events))
        .route("/v1/topics", get(topics::list))
        .route("/v1/topics/{pubsub}/{topic}", get(topics::get))
        .route("/v1/correlations/{id}", get(topics::correlation))
        .route("/v1/apply", post(config::apply))
        .route("/v1/resources/{kind}", get(config::list))
        .route(
            "/v1/resources/{kind}/{name}",
            get(config::get).delete(config::delete),
        )
        .route("/v1/resources/{kind}/{name}/history", get(config::history))
        .route("/v1/schemas/{file}", get(config::schema))
        .route("/v1/apis", get(apis::list))
        .route("/v1/apis/{name}/openapi.json", get(apis::openapi))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "E1404",
                "no such endpoint: the API is described at /v1/openapi.json",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "E1405",
                "this endpoint does not take that method: see /v1/openapi.json",
            )
        })
        .layer(DefaultBodyLimit::max(extract::MAX_BODY))
        // After routing, so it sees the matched route (`auth::ROUTES`).
        .layer(axum::middleware::from_fn_with_state(guard, auth::authorize))
        .with_state(state)
}

/// Serves `app` on `listener` until `shutdown` completes, then finishes open requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Serves `app` over TLS (`config`: the server's certificate, ALPN `h2` and `http/1.1`) on
/// `listener` until `shutdown` completes: then accepts no more connections, and waits for
/// open ones to finish the requests in progress (streams end with the server's
/// cancellation token). A failed handshake closes that connection only.
pub async fn serve_tls(
    listener: TcpListener,
    app: Router,
    config: std::sync::Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto;
    use hyper_util::service::TowerToHyperService;

    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let builder = builder.clone();
        let app = app.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let handshake =
                tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(stream));
            let tls = match handshake.await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            // A client's mesh certificate (verified in the handshake) goes with each of
            // the connection's requests: an enrolled sidecar needs no token.
            let certificate = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(ClientCertificate::of);
            let service = TowerToHyperService::new(tower::ServiceExt::map_request(
                app,
                move |mut req: axum::http::Request<hyper::body::Incoming>| {
                    if let Some(c) = &certificate {
                        req.extensions_mut().insert(c.clone());
                    }
                    req
                },
            ));
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use ieum_registry::{Options, Registry, SystemClock};
    use ieum_store::MemoryStore;
    use tokio_util::sync::CancellationToken;
    use tower::ServiceExt;

    use super::{AppState, Auth, router};

    #[tokio::test]
    async fn the_root_leads_to_the_ui_which_reads_without_a_token() {
        let registry = Registry::start(
            Arc::new(MemoryStore::new()),
            Arc::new(SystemClock),
            Options::default(),
        )
        .await
        .unwrap();
        let app = router(AppState {
            registry,
            auth: Auth::Token("secret".into()),
            shutdown: CancellationToken::new(),
        });
        let get = |uri: &str| Request::builder().uri(uri).body(Body::empty()).unwrap();
        let resp = app.clone().oneshot(get("/")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::SEE_OTHER);
        assert_eq!(resp.headers()["location"], "/ui");
        let resp = app.clone().oneshot(get("/ui")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        let resp = app.oneshot(get("/ui/services/nope")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    }
}
