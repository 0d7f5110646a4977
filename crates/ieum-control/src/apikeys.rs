//! API keys of the API gateway's consumers (`/v1/apikeys`): create (the key is answered
//! once), list, revoke.
//!
//! A key is `ieumk_` and 256 random bits in URL-safe base64 ([`new_secret`], as for API
//! tokens). It is stored as an `ApiKey` resource through the registry's ordinary apply,
//! holding only the key's SHA-256, its first characters and its consumer: so it has
//! revisions, history and `config.changed` events, and reaches every gateway on the push
//! stream (`GATEWAY_KINDS`), never a sidecar. Revoking a key deletes the resource.
//!
//! `apply` refuses `ApiKey` documents (`resource::applicable`), so every key is one this
//! server generated, and this module is the only writer of the kind.

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::{Extension, Json, Router};
use ieum_model::api::{API_KEY_PREFIX, ApiKeySpec};
use ieum_model::resource::{self, Kind, Metadata, Resource};
use ieum_model::{Duration, Name, Timestamp, ValidationError};
use ieum_registry::{Registry, RegistryError};
use ieum_store::StoredResource;
use serde::{Deserialize, Serialize};

use crate::auth::Author;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{JsonBody, QueryParams};
use crate::tokens::{hash_secret, new_secret};

/// How many characters of the key (after `ieumk_`) its `prefix` shows.
const SHOWN: usize = 6;

/// Random hex digits that follow the consumer's name in a key's id.
const ID_SUFFIX_BYTES: usize = 3;

/// The API key routes.
pub(crate) fn routes<S>(registry: Registry) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/v1/apikeys", post(create).get(list))
        .route("/v1/apikeys/{id}", delete(revoke))
        .with_state(registry)
}

/// Body of `POST /v1/apikeys`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateApiKey {
    /// The `ApiConsumer` the key is for; it must exist.
    consumer: String,
    /// How long the key is accepted, e.g. `90d`; without it, until revoked.
    #[serde(default)]
    ttl: Option<Duration>,
}

/// Answer of `POST /v1/apikeys`: the key, this once.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreatedApiKey {
    /// The key's id: the name of its `ApiKey` resource (`mobile-app-3f9c2a`).
    id: String,
    /// The consumer it authenticates as.
    consumer: String,
    /// The key, shown only in this answer: a client sends it in the header its `Api`
    /// names (`x-api-key` by default).
    key: String,
    /// Its first characters after `ieumk_`, as listings show them.
    prefix: String,
    /// When it stops being accepted, with a `ttl`.
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<Timestamp>,
}

/// An API key as listings show it: never the key or its hash.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ApiKeyView {
    /// The key's id.
    id: String,
    /// The consumer it authenticates as.
    consumer: String,
    /// Its first characters after `ieumk_`.
    prefix: String,
    created_at: Timestamp,
    /// Who created it.
    created_by: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<Timestamp>,
}

impl ApiKeyView {
    /// The view of a stored `ApiKey`; `None` for one whose spec does not read (never
    /// written by this server).
    fn new(r: StoredResource) -> Option<ApiKeyView> {
        let spec: ApiKeySpec = match serde_json::from_value(r.spec) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(key = %r.name, error = %e, "stored ApiKey with an unreadable spec is skipped");
                return None;
            }
        };
        Some(ApiKeyView {
            id: r.name,
            consumer: spec.consumer,
            prefix: spec.prefix,
            created_at: r.created_at,
            created_by: r.author,
            expires_at: spec.expires_at,
        })
    }
}

/// Answer of `DELETE /v1/apikeys/{id}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RevokedApiKey {
    #[serde(flatten)]
    key: ApiKeyView,
    revoked_at: Timestamp,
    revoked_by: String,
}

fn unavailable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "E1503",
        "the system's random generator failed; retry",
    )
}

/// `n` random bytes from the system's generator, as lowercase hex.
fn random_hex(n: usize) -> Result<String, ApiError> {
    let mut bytes = vec![0u8; n];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| unavailable())?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The id of a new key of `consumer`: its name (shortened to leave room), `-`, and random
/// hex digits.
fn new_id(consumer: &Name) -> Result<Name, ApiError> {
    let room = ieum_model::name::MAX_NAME_LEN - 1 - 2 * ID_SUFFIX_BYTES;
    let stem = &consumer.as_str()[..consumer.as_str().len().min(room)];
    let id = format!(
        "{}-{}",
        stem.trim_end_matches('-'),
        random_hex(ID_SUFFIX_BYTES)?
    );
    Name::parse_field(&id, "id").map_err(ApiError::from)
}

/// Creates an API key for an `ApiConsumer` and answers it, once.
#[utoipa::path(post, path = "/v1/apikeys", tag = "apikeys",
    request_body = CreateApiKey,
    responses((status = 201, body = CreatedApiKey, description = "Created; the key is in this answer only"),
        (status = 400, body = ErrorBody, description = "E1004 (consumer), E3404 (ttl)"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "E3405: no such ApiConsumer")))]
pub(crate) async fn create(
    State(registry): State<Registry>,
    Extension(author): Extension<Author>,
    JsonBody(req): JsonBody<CreateApiKey>,
) -> Result<Response, ApiError> {
    let consumer = Name::parse_field(&req.consumer, "consumer")?;
    let now = registry.now();
    let expires_at = match req.ttl {
        Some(ttl) if ttl.is_zero() => {
            return Err(ValidationError::new("E3404", "ttl", "must be above 0s, e.g. 90d").into());
        }
        Some(ttl) => Some(now.plus(ttl)),
        None => None,
    };
    match registry
        .resource(Kind::ApiConsumer, consumer.as_str())
        .await
    {
        Ok(_) => {}
        Err(RegistryError::NotFound(_)) => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "E3405",
                format!(
                    "there is no ApiConsumer `{consumer}`: apply one (kind: ApiConsumer, the APIs \
                     it may call) before creating its keys"
                ),
            )
            .field("consumer"));
        }
        Err(e) => return Err(e.into()),
    }
    let secret = new_secret().map_err(|_| unavailable())?;
    let key = format!("{API_KEY_PREFIX}{secret}");
    let prefix: String = secret.chars().take(SHOWN).collect();
    // An id is never reused, even once revoked (its history stays with it): a new key
    // must not look like an old one. Two creates racing to the same 24 random bits are
    // not guarded against.
    let mut id = None;
    for _ in 0..8 {
        let candidate = new_id(&consumer)?;
        match registry.history(Kind::ApiKey, candidate.as_str()).await {
            Err(RegistryError::NotFound(_)) => {
                id = Some(candidate);
                break;
            }
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let Some(id) = id else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "E1409",
            format!("no free id for a new key of `{consumer}`; retry"),
        ));
    };
    let spec = ApiKeySpec {
        consumer: consumer.to_string(),
        sha256: hash_secret(&key),
        prefix: prefix.clone(),
        expires_at,
    };
    let checked = resource::check(&Resource {
        api_version: resource::API_VERSION.into(),
        kind: Kind::ApiKey.as_str().into(),
        metadata: Metadata {
            name: id.to_string(),
            labels: Default::default(),
        },
        spec: serde_json::to_value(&spec)
            .map_err(|e| ApiError::from(ValidationError::new("E1005", "spec", e.to_string())))?,
    })
    .map_err(ApiError::invalid)?;
    registry.apply(vec![checked], &author.0, false).await?;
    tracing::info!(key = %id, %consumer, by = %author.0, "API key created");
    let mut resp = (
        StatusCode::CREATED,
        Json(CreatedApiKey {
            id: id.to_string(),
            consumer: consumer.to_string(),
            key,
            prefix,
            expires_at,
        }),
    )
        .into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// Every API key (of one consumer with `?consumer=`); never a key or its hash.
#[utoipa::path(get, path = "/v1/apikeys", tag = "apikeys",
    params(("consumer" = Option<String>, Query, description = "Only this consumer's keys")),
    responses((status = 200, body = Vec<ApiKeyView>), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(crate) async fn list(
    State(registry): State<Registry>,
    q: QueryParams,
) -> Result<Json<Vec<ApiKeyView>>, ApiError> {
    q.only(&["consumer"])?;
    let consumer = q.parse("consumer", Name::parse)?;
    let keys = registry.resources(Kind::ApiKey).await?;
    Ok(Json(
        keys.into_iter()
            .filter_map(ApiKeyView::new)
            .filter(|k| consumer.as_ref().is_none_or(|c| k.consumer == c.as_str()))
            .collect(),
    ))
}

/// Revokes an API key: deletes its `ApiKey`, and gateways refuse the key once they have
/// the change.
#[utoipa::path(delete, path = "/v1/apikeys/{id}", tag = "apikeys",
    params(("id" = String, Path, description = "The key's id")),
    responses((status = 200, body = RevokedApiKey), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn revoke(
    State(registry): State<Registry>,
    Extension(author): Extension<Author>,
    Path(id): Path<String>,
) -> Result<Json<RevokedApiKey>, ApiError> {
    let id = Name::parse_field(&id, "id")?;
    let gone = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "E1404",
            format!("there is no API key `{id}`: see GET /v1/apikeys (`ieum apikey list`)"),
        )
    };
    let stored = match registry.resource(Kind::ApiKey, id.as_str()).await {
        Ok(r) => r,
        Err(RegistryError::NotFound(_)) => return Err(gone()),
        Err(e) => return Err(e.into()),
    };
    let key = ApiKeyView::new(stored).ok_or_else(gone)?;
    match registry
        .delete_resource(Kind::ApiKey, id.as_str(), &author.0)
        .await
    {
        Ok(_) => {}
        Err(RegistryError::NotFound(_)) => return Err(gone()),
        Err(e) => return Err(e.into()),
    }
    tracing::info!(key = %id, consumer = %key.consumer, by = %author.0, "API key revoked");
    Ok(Json(RevokedApiKey {
        key,
        revoked_at: registry.now(),
        revoked_by: author.0,
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use ieum_model::Name;

    #[test]
    fn ids_are_the_consumer_and_six_hex_digits_within_a_label() {
        let id = super::new_id(&Name::parse("mobile-app").unwrap()).unwrap();
        let (stem, suffix) = id.as_str().rsplit_once('-').unwrap();
        assert_eq!(stem, "mobile-app");
        assert_eq!(suffix.len(), 6);
        assert!(
            suffix
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        // A consumer with the longest name still gets a valid id.
        let long = format!("{}-b", "a".repeat(61));
        let id = super::new_id(&Name::parse(&long).unwrap()).unwrap();
        assert_eq!(id.as_str().len(), 63);
        assert!(id.as_str().starts_with(&"a".repeat(56)));
        // Shortened, it does not end its stem with `-`.
        let cut = format!("{}-{}", "a".repeat(55), "b".repeat(7));
        let id = super::new_id(&Name::parse(&cut).unwrap()).unwrap();
        assert_eq!(id.as_str().len(), 62, "{id}");
        assert!(!id.as_str().contains("--"), "{id}");
    }
}
