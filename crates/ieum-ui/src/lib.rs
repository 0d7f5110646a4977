//! ieum's web UI, served by `ieum server` under `/ui`.
//!
//! Pages are rendered on the server with [`maud`] (compile-time templates that escape
//! everything they interpolate) and are complete without script: every fact is in the
//! HTML. One small inline script (`assets/live.js`) follows the server's event stream
//! (`/v1/events/stream`) and re-fetches the page to swap the parts marked `data-live`, so
//! timelines and tables stay current. One inline stylesheet (`assets/ui.css`); no external
//! assets, no JavaScript build: a plain `cargo build` embeds it all.
//!
//! Layout:
//! - [`router`]: the routes; handlers only parse the query and pick a page.
//! - `pages`: one module per page (services, service, topology, topics, APIs,
//!   configuration, events, sagas — the last reads the saga coordinator, not the
//!   registry);
//!   each reads its view from the [`Registry`] (memory for instances, signals, topic
//!   counts and breakers; the store for events and configuration) and renders it.
//! - `parts`: timelines, breaker rows, signal cells and diffs shared by pages.
//! - `interfaces`: OpenAPI, gRPC (`.proto`) and AsyncAPI definitions read into lists.
//! - `format`: durations (`3h 12m`), relative times (absolute in `title`), numbers.
//! - `layout`: the page shell, nav bar, and response headers (a CSP whose script nonce is
//!   new for every response).
//!
//! **Invariant:** the UI only reads. It never fetches anything over the network while
//! rendering (interfaces given by URL are links), and never writes to the registry. Its
//! only forms (a saga execution's operator buttons) post to the REST API, not to `/ui`.

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use ieum_registry::Registry;
use maud::html;

mod format;
mod interfaces;
mod layout;
mod pages;
mod parts;

type Params = Query<BTreeMap<String, String>>;

/// The UI's routes (`/ui`, `/ui/services`, `/ui/services/{name}`, `/ui/topology`,
/// `/ui/topics`, `/ui/topics/{pubsub}/{topic}`, `/ui/config`, `/ui/config/{kind}/{name}`,
/// `/ui/events`, `/ui/apis`, `/ui/apis/{name}`), for any outer router state.
pub fn router<S>(registry: Registry) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/ui", get(services))
        .route("/ui/", get(services))
        .route("/ui/services", get(services))
        .route(
            "/ui/services/",
            get(|| async { Redirect::to("/ui/services") }),
        )
        .route("/ui/services/{name}", get(service))
        .route("/ui/topology", get(topology))
        .route("/ui/topics", get(topics))
        .route("/ui/topics/{pubsub}/{topic}", get(topic))
        .route("/ui/correlations", get(correlation_query))
        .route("/ui/correlations/{id}", get(correlation))
        .route("/ui/config", get(config))
        .route("/ui/config/{kind}/{name}", get(resource))
        .route("/ui/events", get(events))
        .route("/ui/apis", get(apis))
        .route("/ui/apis/{name}", get(api))
        .route("/ui/{*rest}", get(unknown))
        .with_state(registry)
}

/// The saga pages (`/ui/sagas`, `/ui/sagas/executions/{id}`), over the server's saga
/// coordinator (without one they say it is not running).
pub fn sagas_router<S>(sagas: Option<ieum_saga::Coordinator>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    pages::sagas::router(sagas)
}

async fn services(State(registry): State<Registry>) -> Response {
    pages::services::page(&registry).into_response()
}

async fn service(
    State(registry): State<Registry>,
    Path(name): Path<String>,
    Query(q): Params,
) -> Response {
    pages::service::page(&registry, &name, q.get("kind").map(String::as_str))
        .await
        .into_response()
}

async fn topology(State(registry): State<Registry>) -> Response {
    pages::topology::page(&registry).into_response()
}

async fn topics(State(registry): State<Registry>) -> Response {
    pages::topics::list(&registry).into_response()
}

async fn topic(
    State(registry): State<Registry>,
    Path((pubsub, topic)): Path<(String, String)>,
) -> Response {
    pages::topics::page(&registry, &pubsub, &topic).into_response()
}

async fn correlation(State(registry): State<Registry>, Path(id): Path<String>) -> Response {
    pages::topics::correlation(&registry, &id).into_response()
}

/// The topics page's form: `?id=` to the correlation's page.
async fn correlation_query(Query(q): Params) -> Response {
    match q.get("id").map(|s| s.trim()).filter(|s| !s.is_empty()) {
        Some(id) => {
            Redirect::to(&format!("/ui/correlations/{}", parts::encode_segment(id))).into_response()
        }
        None => Redirect::to("/ui/topics").into_response(),
    }
}

async fn config(State(registry): State<Registry>) -> Response {
    pages::config::list(&registry).await.into_response()
}

async fn resource(
    State(registry): State<Registry>,
    Path((kind, name)): Path<(String, String)>,
) -> Response {
    pages::config::resource(&registry, &kind, &name)
        .await
        .into_response()
}

async fn apis(State(registry): State<Registry>, Query(q): Params) -> Response {
    pages::apis::list(&registry, q.get("q").map(String::as_str))
        .await
        .into_response()
}

async fn api(State(registry): State<Registry>, Path(name): Path<String>) -> Response {
    pages::apis::page(&registry, &name).await.into_response()
}

async fn events(State(registry): State<Registry>, Query(q): Params) -> Response {
    let get = |k: &str| q.get(k).map(String::as_str);
    pages::events::page(&registry, get("service"), get("kind"), get("limit"))
        .await
        .into_response()
}

async fn unknown(Path(rest): Path<String>) -> Response {
    layout::not_found(
        "Page not found",
        html! { "There is no page at " code { "/ui/" (rest) } "." },
    )
    .into_response()
}
