//! Handlers for configuration resources: apply, read, history, delete, JSON Schemas.

use std::collections::BTreeMap;

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use ieum_model::resource::{self, Kind, Resource};
use ieum_model::{Timestamp, ValidationError};
use ieum_registry::Applied;
use ieum_store::StoredResource;
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::auth::Author;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{QueryParams, parse_json};

/// Body of `POST /v1/apply` as JSON (YAML bodies are the documents themselves).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApplyRequest {
    /// The resources, applied together or not at all.
    resources: Vec<Resource>,
}

/// Answer of `POST /v1/apply`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ApplyResponse {
    /// True when nothing was written.
    dry_run: bool,
    /// One result per resource, in order.
    results: Vec<Applied>,
}

/// A stored resource as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ResourceView {
    api_version: &'static str,
    kind: String,
    metadata: MetadataView,
    spec: serde_json::Value,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MetadataView {
    name: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
    revision: i64,
    created_at: Timestamp,
    updated_at: Timestamp,
    author: String,
}

impl From<StoredResource> for ResourceView {
    fn from(r: StoredResource) -> Self {
        ResourceView {
            api_version: resource::API_VERSION,
            kind: r.kind,
            metadata: MetadataView {
                name: r.name,
                labels: r.labels,
                revision: r.revision,
                created_at: r.created_at,
                updated_at: r.updated_at,
                author: r.author,
            },
            spec: r.spec,
        }
    }
}

/// One revision in a history, with what it changed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RevisionView {
    revision: i64,
    at: Timestamp,
    author: String,
    /// True when this revision deleted the resource.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    deleted: bool,
    /// What changed from the previous revision.
    diff: Vec<resource::Change>,
    /// The resource at this revision.
    #[serde(skip_serializing_if = "Option::is_none")]
    spec: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
}

fn kind_of(s: &str) -> Result<Kind, ApiError> {
    Kind::parse(s).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "E1404",
            format!("`{s}` is not a kind: use {}", Kind::names()),
        )
    })
}

/// Applies resources (JSON `{"resources": [...]}` or a YAML multi-document body), all or
/// nothing; `?dryRun=true` reports the diff without writing.
#[utoipa::path(post, path = "/v1/apply", tag = "config",
    params(("dryRun" = Option<bool>, Query, description = "Validate and diff only")),
    request_body(content = ApplyRequest, description = "JSON, or YAML documents with Content-Type application/yaml"),
    responses((status = 200, body = ApplyResponse), (status = 400, body = ErrorBody, description = "Invalid resources; E3406: an `ApiKey` (create keys with POST /v1/apikeys)")))]
pub(crate) async fn apply(
    State(app): State<AppState>,
    Extension(author): Extension<Author>,
    headers: HeaderMap,
    q: QueryParams,
    body: Bytes,
) -> Result<Json<ApplyResponse>, ApiError> {
    q.only(&["dryRun"])?;
    let dry_run = q
        .parse("dryRun", |s| {
            s.parse::<bool>()
                .map_err(|_| format!("`{s}` is not true or false"))
        })?
        .unwrap_or(false);
    let yaml = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.contains("yaml"));
    let resources = if yaml {
        let text = std::str::from_utf8(&body).map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "E1001",
                "the body is not UTF-8 text",
            )
        })?;
        resource::parse_documents(text).map_err(|e| ApiError::invalid(vec![e]))?
    } else {
        parse_json::<ApplyRequest>(&body)?.resources
    };
    if resources.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "E2011",
            "nothing to apply: send at least one resource",
        ));
    }
    let checked = check_all(&resources)?;
    let results = app.registry.apply(checked, &author.0, dry_run).await?;
    Ok(Json(ApplyResponse { dry_run, results }))
}

/// Checks every resource; all errors of all resources, each naming its resource. Kinds
/// that are not applied (`ApiKey`: `POST /v1/apikeys` creates them) are refused (`E3406`).
pub(crate) fn check_all(resources: &[Resource]) -> Result<Vec<resource::Checked>, ApiError> {
    let mut checked = Vec::new();
    let mut errors: Vec<ValidationError> = Vec::new();
    for (i, r) in resources.iter().enumerate() {
        let id = || {
            if r.metadata.name.is_empty() {
                format!("resource {}", i + 1)
            } else {
                format!("{}/{}", r.kind, r.metadata.name)
            }
        };
        if let Err(e) = resource::applicable(r) {
            errors.push(e.in_resource(id()));
            continue;
        }
        match resource::check(r) {
            Ok(c) => checked.push(c),
            Err(errs) => {
                let id = id();
                errors.extend(errs.into_iter().map(|e| e.in_resource(id.clone())));
            }
        }
    }
    if errors.is_empty() {
        Ok(checked)
    } else {
        Err(ApiError::invalid(errors))
    }
}

/// Every resource of a kind.
#[utoipa::path(get, path = "/v1/resources/{kind}", tag = "config",
    params(("kind" = String, Path, description = "Service, Route, ResiliencePolicy, RateLimitPolicy or FaultInjection (any case, singular or plural)")),
    responses((status = 200, body = Vec<ResourceView>), (status = 404, body = ErrorBody)))]
pub(crate) async fn list(
    State(app): State<AppState>,
    Path(kind): Path<String>,
) -> Result<Json<Vec<ResourceView>>, ApiError> {
    let kind = kind_of(&kind)?;
    Ok(Json(
        app.registry
            .resources(kind)
            .await?
            .into_iter()
            .map(ResourceView::from)
            .collect(),
    ))
}

/// One resource.
#[utoipa::path(get, path = "/v1/resources/{kind}/{name}", tag = "config",
    params(("kind" = String, Path, description = "Kind"), ("name" = String, Path, description = "Name")),
    responses((status = 200, body = ResourceView), (status = 404, body = ErrorBody)))]
pub(crate) async fn get(
    State(app): State<AppState>,
    Path((kind, name)): Path<(String, String)>,
) -> Result<Json<ResourceView>, ApiError> {
    let kind = kind_of(&kind)?;
    Ok(Json(app.registry.resource(kind, &name).await?.into()))
}

/// Every revision of a resource, oldest first, each with its diff from the one before.
#[utoipa::path(get, path = "/v1/resources/{kind}/{name}/history", tag = "config",
    params(("kind" = String, Path, description = "Kind"), ("name" = String, Path, description = "Name")),
    responses((status = 200, body = Vec<RevisionView>), (status = 404, body = ErrorBody)))]
pub(crate) async fn history(
    State(app): State<AppState>,
    Path((kind, name)): Path<(String, String)>,
) -> Result<Json<Vec<RevisionView>>, ApiError> {
    let kind = kind_of(&kind)?;
    let revisions = app.registry.history(kind, &name).await?;
    let mut previous = serde_json::json!({});
    let mut out = Vec::with_capacity(revisions.len());
    for r in revisions {
        let now = match &r.spec {
            Some(spec) => serde_json::json!({"labels": r.labels, "spec": spec}),
            None => serde_json::json!({}),
        };
        out.push(RevisionView {
            revision: r.revision,
            at: r.at,
            author: r.author,
            deleted: r.spec.is_none(),
            diff: resource::diff(&previous, &now, ""),
            spec: r.spec,
            labels: r.labels,
        });
        previous = now;
    }
    Ok(Json(out))
}

/// Deletes a resource (a service only once it has no instances).
#[utoipa::path(delete, path = "/v1/resources/{kind}/{name}", tag = "config",
    params(("kind" = String, Path, description = "Kind"), ("name" = String, Path, description = "Name")),
    responses((status = 200, body = Applied), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn delete(
    State(app): State<AppState>,
    Extension(author): Extension<Author>,
    Path((kind, name)): Path<(String, String)>,
) -> Result<Json<Applied>, ApiError> {
    let kind = kind_of(&kind)?;
    Ok(Json(
        app.registry.delete_resource(kind, &name, &author.0).await?,
    ))
}

/// The JSON Schema of a kind, e.g. `/v1/schemas/Route.json`, for editors.
#[utoipa::path(get, path = "/v1/schemas/{file}", tag = "config",
    params(("file" = String, Path, description = "KIND.json")),
    responses((status = 200, description = "JSON Schema 2020-12"), (status = 404, body = ErrorBody)))]
pub(crate) async fn schema(Path(file): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    let kind = kind_of(file.strip_suffix(".json").unwrap_or(&file))?;
    Ok(Json(resource::json_schema(kind)))
}
