//! The OpenAPI document, generated from the handlers' annotations and the model's types.

use axum::Json;
use utoipa::OpenApi;

use crate::{api, apikeys, apis, config, mesh, pubsub, saga, tokens, topics};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ieum",
        description = "Service registry and control plane. Errors are `{\"error\": {\"code\", \"message\", \"field\"}}`; codes are listed in docs/errors.md. Calls carry `Authorization: Bearer TOKEN`; which role each route needs is in `auth::ROUTES` (README, Tokens and roles).",
        license(name = "Apache-2.0")
    ),
    paths(
        api::healthz,
        api::readyz,
        api::status,
        api::list_services,
        api::get_service,
        api::put_service,
        api::register,
        api::list_instances,
        api::heartbeat,
        api::set_state,
        api::deregister,
        api::telemetry,
        api::signals,
        api::list_events,
        api::service_events,
        api::stream_events,
        topics::list,
        topics::get,
        topics::correlation,
        mesh::info,
        mesh::issue,
        config::apply,
        config::list,
        config::get,
        config::history,
        config::delete,
        config::schema,
        saga::start,
        saga::execution,
        saga::list,
        saga::counts,
        saga::request,
        saga::flow,
        pubsub::publish,
        pubsub::subscribe,
        pubsub::fetch,
        pubsub::settle,
        tokens::create,
        tokens::list,
        tokens::revoke,
        apikeys::create,
        apikeys::list,
        apikeys::revoke,
        apis::list,
        apis::openapi,
    ),
    tags(
        (name = "services", description = "Service definitions and summaries"),
        (name = "instances", description = "Registration, heartbeats, drains, blocking queries"),
        (name = "events", description = "The durable event timeline and its live stream"),
        (name = "config", description = "Declarative resources: apply, history, schemas"),
        (name = "server", description = "Health and status"),
        (name = "sagas", description = "Saga executions, operator actions and flows"),
        (name = "mesh", description = "Workload identity: the mesh's CA and certificates for sidecars and gateways"),
        (name = "pubsubs", description = "`memory` PubSubs hosted for sidecars: publish, subscribe, fetch, settle"),
        (name = "tokens", description = "API tokens and their roles (admin only)"),
        (name = "apis", description = "The API catalogue: every `Api` the gateways publish, with its consumers, and its OpenAPI document for them"),
        (name = "apikeys", description = "API keys of the API gateway's consumers: created here only (the key is answered once; an `ApiKey` resource keeps its SHA-256), listed, revoked (operator)"),
    )
)]
struct ApiDoc;

/// The OpenAPI document of this server's API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc
}

pub(crate) async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi())
}
