//! API tokens: creation (the secret is answered once), listing, revocation, and the check
//! of a presented secret.
//!
//! A secret is 256 random bits in URL-safe base64; the store keeps only its SHA-256.
//! Checking a secret hashes it and compares the hash with every known token's in constant
//! time. Known tokens are cached in memory and re-read from the store at most every
//! [`REFRESH`] (and at once after a change made through this server), so a token created
//! or revoked through another replica counts within that time.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::{Extension, Json, Router};
use ieum_model::{Duration, EventKind, Name, Timestamp, ValidationError};
use ieum_registry::Registry;
use ieum_store::{Store, StoreError, StoredToken};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::auth::{Author, Caller, Credential, Role, same, unauthorized};
use crate::error::{ApiError, ErrorBody};
use crate::extract::JsonBody;

/// Longest a change made through another server replica takes to count here.
pub const REFRESH: StdDuration = StdDuration::from_secs(5);

/// The name under which the admin token of the data dir (`admin.token`) is registered.
pub const ADMIN: &str = "admin";

/// Known tokens, cached from the store.
#[derive(Clone)]
pub(crate) struct Tokens {
    store: Arc<dyn Store>,
    cache: Arc<Mutex<Cache>>,
    /// The SHA-256 of the mesh CA (lowercase hex), when the server runs one: join tokens
    /// carry it, and a join token naming another CA is refused.
    ca_hash: Option<Arc<str>>,
}

#[derive(Default)]
struct Cache {
    entries: Vec<Entry>,
    loaded: Option<Instant>,
}

struct Entry {
    hash: [u8; 32],
    token: StoredToken,
    role: Role,
}

impl Tokens {
    pub(crate) fn new(store: Arc<dyn Store>, ca_hash: Option<String>) -> Tokens {
        Tokens {
            store,
            cache: Arc::default(),
            ca_hash: ca_hash.map(Into::into),
        }
    }

    /// The SHA-256 of the server's CA, which join tokens carry.
    pub(crate) fn ca_hash(&self) -> Option<&str> {
        self.ca_hash.as_deref()
    }

    /// Makes the next check re-read the store.
    async fn forget(&self) {
        self.cache.lock().await.loaded = None;
    }

    /// The known tokens, re-read from the store when the cache is older than [`REFRESH`].
    async fn fresh(&self) -> Result<tokio::sync::MutexGuard<'_, Cache>, Response> {
        let mut cache = self.cache.lock().await;
        if cache.loaded.is_none_or(|at| at.elapsed() >= REFRESH) {
            match self.store.tokens().await {
                Ok(list) => {
                    cache.entries = list.into_iter().filter_map(entry).collect();
                    cache.loaded = Some(Instant::now());
                }
                // With a list read before, go on with it; without one, nothing can be checked.
                Err(e) if cache.loaded.is_some() => {
                    tracing::warn!(error = %e, "cannot re-read API tokens; using the ones read before");
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot read API tokens");
                    return Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "E1503",
                        "storage is unavailable, so the token cannot be checked: retry when /readyz answers 200",
                    )
                    .into_response());
                }
            }
        }
        Ok(cache)
    }

    /// The holder of `secret` at `now`, or the `401` that refuses it.
    pub(crate) async fn verify(&self, secret: &str, now: Timestamp) -> Result<Caller, Response> {
        let hash = sha256(secret.as_bytes());
        let cache = self.fresh().await?;
        // Compare with every token, in constant time each, whatever matches first.
        let mut found = None;
        for e in &cache.entries {
            if same(&e.hash, &hash) {
                found = Some(e);
            }
        }
        let Some(e) = found else {
            return Err(unauthorized(
                "E1011",
                "the bearer token is not valid for this server: check --token / IEUM_TOKEN",
                true,
            ));
        };
        let t = &e.token;
        if let Some(refused) = refusal(t, now) {
            return Err(refused);
        }
        Ok(Caller {
            name: t.name.clone(),
            role: e.role,
            service: t.service.clone(),
            credential: Credential::Token,
        })
    }

    /// Whether the token named `name` is still usable at `now` (known, not revoked, not
    /// expired): a certificate it asked for is renewed with the certificate alone only
    /// while it is. The `401` says why not.
    pub(crate) async fn still_valid(&self, name: &str, now: Timestamp) -> Result<(), Response> {
        let cache = self.fresh().await?;
        let Some(e) = cache.entries.iter().find(|e| e.token.name == name) else {
            return Err(unauthorized(
                "E1023",
                format!(
                    "the token `{name}` that enrolled this certificate no longer exists: enrol                      again with a new join token"
                ),
                true,
            ));
        };
        refusal(&e.token, now).map_or(Ok(()), Err)
    }
}

/// The `401` that refuses a revoked or expired token; `None` for a usable one.
fn refusal(t: &StoredToken, now: Timestamp) -> Option<Response> {
    if let Some(at) = t.revoked_at {
        return Some(unauthorized(
            "E1014",
            format!(
                "the token `{}` was revoked at {at}: ask an admin for a new one",
                t.name
            ),
            true,
        ));
    }
    if let Some(at) = t.expires_at
        && now >= at
    {
        return Some(unauthorized(
            "E1013",
            format!(
                "the token `{}` expired at {at}: ask an admin for a new one",
                t.name
            ),
            true,
        ));
    }
    None
}

fn entry(token: StoredToken) -> Option<Entry> {
    let Some(role) = Role::parse(&token.role) else {
        tracing::warn!(token = %token.name, role = %token.role, "stored token with an unknown role is ignored");
        return None;
    };
    let Some(hash) = from_hex(&token.hash) else {
        tracing::warn!(token = %token.name, "stored token with an unreadable hash is ignored");
        return None;
    };
    Some(Entry { hash, token, role })
}

/// SHA-256 of `data`.
fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The hash of a secret as stored: SHA-256, lowercase hex.
pub fn hash_secret(secret: &str) -> String {
    sha256(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn from_hex(s: &str) -> Option<[u8; 32]> {
    let bytes = s.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

/// A new secret: 256 random bits from the system's generator, URL-safe base64 without
/// padding (43 characters).
pub fn new_secret() -> Result<String, ring::error::Unspecified> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)?;
    Ok(base64url(&bytes))
}

fn base64url(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

/// What registering the data dir's admin token found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminToken {
    /// It was not registered yet (first start, or a data dir from before tokens): it is now.
    Registered,
    /// It is registered and active.
    Active,
    /// It is registered and was revoked: it is refused.
    Revoked,
    /// A token named `admin` exists with another secret (another replica created it, or the
    /// file was replaced): the file's token is refused.
    Other,
}

/// Registers `secret` (the content of `admin.token`) as the `admin` token, unless a token
/// of that name exists.
pub async fn register_admin(
    store: &dyn Store,
    secret: &str,
    now: Timestamp,
) -> Result<AdminToken, StoreError> {
    let hash = hash_secret(secret);
    let token = StoredToken {
        name: ADMIN.into(),
        role: Role::Admin.as_str().into(),
        service: None,
        hash: hash.clone(),
        created_at: now,
        created_by: "ieum".into(),
        expires_at: None,
        revoked_at: None,
        revoked_by: None,
    };
    if store.create_token(&token).await? {
        return Ok(AdminToken::Registered);
    }
    let existing = store.tokens().await?.into_iter().find(|t| t.name == ADMIN);
    Ok(match existing {
        Some(t) if !same(t.hash.as_bytes(), hash.as_bytes()) => AdminToken::Other,
        Some(t) if t.revoked_at.is_some() => AdminToken::Revoked,
        Some(_) => AdminToken::Active,
        // The name is free but the hash is taken: the secret belongs to another token.
        None => AdminToken::Other,
    })
}

/// State of the token endpoints.
#[derive(Clone)]
pub(crate) struct Api {
    tokens: Tokens,
    registry: Registry,
}

/// The token routes.
pub(crate) fn routes<S>(tokens: Tokens, registry: Registry) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/v1/tokens", post(create).get(list))
        .route("/v1/tokens/{name}", delete(revoke))
        .with_state(Api { tokens, registry })
}

/// Body of `POST /v1/tokens`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateToken {
    /// Unique name (DNS-1123 label), recorded as the author of what the token writes. Names
    /// of revoked tokens stay taken.
    name: String,
    /// `admin`, `operator`, `reader`, `sidecar` or `gateway`.
    role: String,
    /// The service a `sidecar` token acts for (required), or a `gateway` token reports for
    /// (optional); not allowed for other roles.
    #[serde(default)]
    service: Option<String>,
    /// How long the token is valid, e.g. `24h`; without it, until revoked.
    #[serde(default)]
    ttl: Option<Duration>,
}

/// A token as the API shows it: never its secret or hash.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TokenView {
    name: String,
    role: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    service: Option<String>,
    /// `active`, `expired` or `revoked`.
    state: &'static str,
    created_at: Timestamp,
    created_by: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    revoked_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    revoked_by: Option<String>,
}

impl TokenView {
    fn new(t: StoredToken, now: Timestamp) -> TokenView {
        TokenView {
            state: state(&t, now),
            name: t.name,
            role: t.role,
            service: t.service,
            created_at: t.created_at,
            created_by: t.created_by,
            expires_at: t.expires_at,
            revoked_at: t.revoked_at,
            revoked_by: t.revoked_by,
        }
    }
}

fn state(t: &StoredToken, now: Timestamp) -> &'static str {
    if t.revoked_at.is_some() {
        "revoked"
    } else if t.expires_at.is_some_and(|at| now >= at) {
        "expired"
    } else {
        "active"
    }
}

/// Answer of `POST /v1/tokens`: the token and, this once, its secret.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreatedToken {
    #[serde(flatten)]
    token: TokenView,
    /// The secret, shown only in this answer: pass it as `Authorization: Bearer SECRET`.
    secret: String,
    /// For `sidecar` and `gateway` tokens of a server with a CA: the join token
    /// `ieum1.<ca-sha256-hex>.<secret>`, which also pins the server's CA for bootstrap
    /// trust; the server accepts it as the bearer token as well as the bare secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    join_token: Option<String>,
}

fn storage(e: StoreError) -> ApiError {
    tracing::error!(error = %e, "storage error answering a token request");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "E1503",
        "storage is unavailable: retry when /readyz answers 200",
    )
}

fn bad(field: &str, message: impl Into<String>) -> ApiError {
    ValidationError::new("E1018", field, message).into()
}

/// Creates a token and answers its secret, once.
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens",
    request_body = CreateToken,
    responses((status = 201, body = CreatedToken, description = "Created; the secret is in this answer only"),
        (status = 400, body = ErrorBody, description = "E1004 (name), E1018 (role, service, ttl)"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "E1019: the name is taken")))]
pub(crate) async fn create(
    State(api): State<Api>,
    Extension(author): Extension<Author>,
    JsonBody(req): JsonBody<CreateToken>,
) -> Result<Response, ApiError> {
    let name = Name::parse_field(&req.name, "name")?;
    let all: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
    let role = Role::parse(&req.role).ok_or_else(|| {
        bad(
            "role",
            format!("`{}` is not a role: use {}", req.role, all.join(", ")),
        )
    })?;
    let service = match (role, req.service) {
        (Role::Sidecar, None) => {
            return Err(bad(
                "service",
                "a sidecar token needs the service it acts for (--service)",
            ));
        }
        (Role::Sidecar | Role::Gateway, Some(s)) => Some(Name::parse_field(&s, "service")?),
        (_, None) => None,
        (role, Some(_)) => {
            return Err(bad(
                "service",
                format!(
                    "only sidecar and gateway tokens act for one service, not {role} tokens: leave it out"
                ),
            ));
        }
    };
    let now = api.registry.now();
    let expires_at = match req.ttl {
        Some(ttl) if ttl.is_zero() => return Err(bad("ttl", "must be above 0s, e.g. 24h")),
        Some(ttl) => Some(now.plus(ttl)),
        None => None,
    };
    let secret = new_secret().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "E1503",
            "the system's random generator failed; retry",
        )
    })?;
    let token = StoredToken {
        name: name.to_string(),
        role: role.as_str().into(),
        service: service.map(|s| s.to_string()),
        hash: hash_secret(&secret),
        created_at: now,
        created_by: author.0,
        expires_at,
        revoked_at: None,
        revoked_by: None,
    };
    let created = api
        .tokens
        .store
        .create_token(&token)
        .await
        .map_err(storage)?;
    if !created {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "E1019",
            format!("a token named `{name}` exists (names of revoked tokens stay taken): choose another name"),
        )
        .field("name"));
    }
    api.tokens.forget().await;
    tracing::info!(token = %token.name, role = %token.role, by = %token.created_by, "API token created");
    let expiry = token
        .expires_at
        .map_or_else(|| "never expires".to_owned(), |at| format!("expires {at}"));
    audit(
        &api.registry,
        EventKind::TokenCreated,
        &token,
        format!(
            "{} token `{}` created by {} ({expiry})",
            token.role, token.name, token.created_by
        ),
        &token.created_by,
    )
    .await;
    let join_token = match (role, api.tokens.ca_hash()) {
        (Role::Sidecar | Role::Gateway, Some(hash)) => Some(
            ieum_identity::JoinToken {
                ca_hash: hash.to_owned(),
                secret: secret.clone(),
            }
            .to_string(),
        ),
        _ => None,
    };
    let mut resp = (
        StatusCode::CREATED,
        Json(CreatedToken {
            token: TokenView::new(token, now),
            secret,
            join_token,
        }),
    )
        .into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// Every token, revoked and expired ones too; never a secret or a hash.
#[utoipa::path(get, path = "/v1/tokens", tag = "tokens",
    responses((status = 200, body = Vec<TokenView>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(crate) async fn list(State(api): State<Api>) -> Result<Json<Vec<TokenView>>, ApiError> {
    let now = api.registry.now();
    let list = api.tokens.store.tokens().await.map_err(storage)?;
    Ok(Json(
        list.into_iter().map(|t| TokenView::new(t, now)).collect(),
    ))
}

/// Revokes a token: it is refused from then on and kept, revoked, in the list.
#[utoipa::path(delete, path = "/v1/tokens/{name}", tag = "tokens",
    params(("name" = String, Path, description = "Token name")),
    responses((status = 200, body = TokenView, description = "Revoked (revoking again changes nothing)"),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "E1020: the last active admin token")))]
pub(crate) async fn revoke(
    State(api): State<Api>,
    Extension(author): Extension<Author>,
    Path(name): Path<String>,
) -> Result<Json<TokenView>, ApiError> {
    let now = api.registry.now();
    let all = api.tokens.store.tokens().await.map_err(storage)?;
    let Some(target) = all.iter().find(|t| t.name == name) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "E1404",
            format!("there is no token named `{name}`: see GET /v1/tokens"),
        ));
    };
    let active_admin =
        |t: &StoredToken| t.role == Role::Admin.as_str() && state(t, now) == "active";
    // Off loopback, without an active admin token nobody could manage tokens again.
    if active_admin(target) && all.iter().filter(|t| active_admin(t)).count() == 1 {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "E1020",
            format!("`{name}` is the last active admin token: create another admin token first"),
        ));
    }
    let revoked = api
        .tokens
        .store
        .revoke_token(&name, now, &author.0)
        .await
        .map_err(storage)?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "E1404",
                format!("there is no token named `{name}`"),
            )
        })?;
    api.tokens.forget().await;
    tracing::info!(token = %name, by = %author.0, "API token revoked");
    if target.revoked_at.is_none() {
        audit(
            &api.registry,
            EventKind::TokenRevoked,
            &revoked,
            format!(
                "{} token `{name}` revoked by {}: it no longer authenticates, and certificates it enrolled are not renewed",
                revoked.role, author.0
            ),
            &author.0,
        )
        .await;
    }
    Ok(Json(TokenView::new(revoked, now)))
}

/// Records a token's creation or revocation on its service's timeline (the global one for
/// tokens without a service). The token is already stored: a failure here is logged.
async fn audit(
    registry: &Registry,
    kind: EventKind,
    token: &StoredToken,
    message: String,
    author: &str,
) {
    let data = serde_json::json!({
        "token": token.name,
        "role": token.role,
        "service": token.service,
        "expiresAt": token.expires_at,
    });
    if let Err(e) = registry
        .record_event(kind, token.service.as_deref(), message, author, data)
        .await
    {
        tracing::warn!(token = %token.name, error = %e, "cannot record the token's {kind} event");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn secrets_are_256_bits_of_url_safe_base64() {
        let s = super::new_secret().unwrap();
        assert_eq!(s.len(), 43);
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_ne!(s, super::new_secret().unwrap());
    }

    #[test]
    fn base64url_matches_the_rfc_4648_vectors() {
        for (raw, encoded) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(super::base64url(raw.as_bytes()), encoded);
        }
        assert_eq!(super::base64url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn hashes_are_sha256_hex_and_read_back() {
        let h = super::hash_secret("abc");
        assert_eq!(
            h,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(super::from_hex(&h).unwrap(), super::sha256(b"abc"));
        assert!(super::from_hex("zz").is_none());
    }
}
