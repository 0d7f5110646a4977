//! The API catalogue over HTTP: `GET /v1/apis` (every `Api` with its backend, how
//! consumers authenticate, who answers for it and which consumers may use it) and
//! `GET /v1/apis/{name}/openapi.json` (the document consumers read: the backend's own
//! OpenAPI paths kept to the API's operations under its base path, or the listed operations
//! themselves). The registry reads the catalogue (`Registry::apis`) and writes the document
//! (`Registry::api_openapi`); the UI's `/ui/apis` shows the same.

use axum::Json;
use axum::extract::{Path, State};
use ieum_model::api::ApiBackend;
use ieum_registry::registry::CatalogueApi;
use serde::Serialize;

use crate::AppState;
use crate::error::{ApiError, ErrorBody};

/// One `Api` of `GET /v1/apis`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ApiSummary {
    /// The `Api`'s name.
    name: String,
    /// Where it starts at the edge (`/shop`).
    base_path: String,
    /// The host names it answers for; any host when empty.
    hostnames: Vec<String>,
    /// The service (or `Flow`) behind it.
    backend: ApiBackend,
    /// How consumers authenticate: `apiKey`, `jwt`, `anonymous`.
    auth: Vec<&'static str>,
    /// Who answers for it: the `Api`'s owner, else its backend service's.
    #[serde(skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
    /// One line about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    /// The `ApiConsumer`s that may use it.
    consumers: Vec<String>,
    /// Where its OpenAPI document is.
    openapi: String,
}

impl From<CatalogueApi> for ApiSummary {
    fn from(a: CatalogueApi) -> Self {
        let auth = &a.spec.auth;
        let kinds = [
            (auth.api_key.is_some(), "apiKey"),
            (auth.jwt.is_some(), "jwt"),
            (auth.anonymous, "anonymous"),
        ];
        ApiSummary {
            openapi: format!("/v1/apis/{}/openapi.json", a.name),
            auth: kinds
                .iter()
                .filter(|(on, _)| *on)
                .map(|(_, k)| *k)
                .collect(),
            consumers: a.consumers.into_iter().map(|c| c.name).collect(),
            name: a.name,
            base_path: a.spec.base_path,
            hostnames: a.spec.hostnames,
            backend: a.spec.backend,
            owner: a.owner,
            description: a.spec.description,
        }
    }
}

/// Every `Api`, by name, with the consumers that may use it.
#[utoipa::path(get, path = "/v1/apis", tag = "apis",
    responses((status = 200, body = Vec<ApiSummary>)))]
pub(crate) async fn list(State(app): State<AppState>) -> Result<Json<Vec<ApiSummary>>, ApiError> {
    Ok(Json(
        app.registry
            .apis()
            .await?
            .into_iter()
            .map(ApiSummary::from)
            .collect(),
    ))
}

/// The OpenAPI 3.1 document of an `Api`, as its consumers call it: the backend service's
/// own OpenAPI paths (an inline `openapi` interface) kept to the API's operations and
/// prefixed with its base path, or else its listed operations with their path parameters;
/// `servers` from its host names; security schemes from `auth`.
#[utoipa::path(get, path = "/v1/apis/{name}/openapi.json", tag = "apis",
    params(("name" = String, Path, description = "The Api's name")),
    responses(
        (status = 200, description = "An OpenAPI 3.1 document (JSON)"),
        (status = 404, body = ErrorBody, description = "E1404: no Api of that name")))]
pub(crate) async fn openapi(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let api = app.registry.api(&name).await?;
    Ok(Json(app.registry.api_openapi(&api)))
}
