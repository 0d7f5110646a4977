//! The mesh's certificate authority over HTTP: `GET /v1/mesh` (the trust domain, the CA
//! certificate and its fingerprint, whether mTLS is on) and `POST /v1/certificates`
//! (a workload's CSR in, a short-lived certificate for its SPIFFE id out).
//!
//! The CA decides the identity, never the CSR: a request names the workload (`orders`,
//! `gateway:edge`), the caller must be allowed to act for it (a `sidecar` token only for
//! its own service; loopback and `admin`/`operator` tokens for any service or gateway),
//! and the certificate carries exactly `spiffe://TRUST_DOMAIN/svc/orders`. `system:*`
//! identities are the server's own and are never issued here. The private key stays
//! with the workload: only its public key travels, inside the CSR.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use axum::{Extension, Router, routing::get, routing::post};
use ieum_identity::{Ca, SpiffeId, Workload};
use serde::{Deserialize, Serialize};

use axum::response::{IntoResponse, Response};
use ieum_registry::Registry;

use crate::auth::{Caller, Credential, Role};
use crate::error::{ApiError, ErrorBody};
use crate::extract::JsonBody;
use crate::tokens::Tokens;

/// Default lifetime of an issued certificate.
pub const DEFAULT_CERT_TTL: Duration = Duration::from_secs(24 * 3600);

/// The server's CA and how it issues.
#[derive(Clone)]
pub struct Mesh {
    ca: Arc<Ca>,
    ttl: Duration,
    mtls: bool,
}

impl Mesh {
    /// The lowercase hex SHA-256 of the CA certificate, which join tokens carry.
    pub(crate) fn ca_fingerprint(&self) -> String {
        self.ca.fingerprint()
    }
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("trust_domain", &self.ca.trust_domain().as_str())
            .field("ttl", &self.ttl)
            .field("mtls", &self.mtls)
            .finish_non_exhaustive()
    }
}

impl Mesh {
    /// Issues with `ca` for `ttl`; `mtls` says whether sidecars should use it (off under
    /// `--dev`).
    pub fn new(ca: Arc<Ca>, ttl: Duration, mtls: bool) -> Mesh {
        Mesh { ca, ttl, mtls }
    }

    /// The CA.
    pub fn ca(&self) -> &Arc<Ca> {
        &self.ca
    }
}

/// `GET /v1/mesh`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeshInfo {
    /// The trust domain of every identity (`spiffe://TRUST_DOMAIN/…`).
    pub trust_domain: String,
    /// Whether sidecars use mTLS between each other (off when the server runs `--dev`).
    pub mtls: bool,
    /// The CA certificate (PEM) that every mesh certificate chains to.
    pub ca_pem: String,
    /// Lowercase hex SHA-256 of the CA certificate (DER), as a join token pins it.
    pub fingerprint: String,
    /// The lifetime of issued certificates.
    pub certificate_ttl: String,
}

/// `POST /v1/certificates`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertificateRequest {
    /// The workload the certificate is for: a service name (`orders`) or `gateway:NAME`.
    pub workload: String,
    /// A PEM certificate signing request (ECDSA P-256) made with the workload's own key.
    /// Only its public key is used.
    pub csr: String,
}

/// A certificate issued for a workload.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuedCertificate {
    /// The SPIFFE id the certificate carries.
    pub spiffe_id: String,
    /// The certificate and the CA certificate, PEM, leaf first.
    pub chain_pem: String,
    /// The CA certificate, PEM (the roots to verify peers with).
    pub ca_pem: String,
    /// Its expiry (RFC 3339).
    pub not_after: String,
}

/// The routes; `mesh` is `None` on servers without a CA (the routes answer 404 saying so).
pub(crate) fn routes<S: Clone + Send + Sync + 'static>(
    mesh: Option<Mesh>,
    tokens: Tokens,
    registry: Registry,
) -> Router<S> {
    Router::new()
        .route("/v1/mesh", get(info))
        .route("/v1/certificates", post(issue))
        .layer(Extension(mesh.map(Arc::new)))
        .layer(Extension(tokens))
        .layer(Extension(registry))
}

fn no_ca() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "E1601",
        "this server runs no certificate authority",
    )
}

/// The mesh's trust domain and CA, for sidecars and gateways before they enrol.
#[utoipa::path(get, path = "/v1/mesh", tag = "mesh",
    responses((status = 200, body = MeshInfo), (status = 404, body = ErrorBody)))]
pub(crate) async fn info(
    Extension(mesh): Extension<Option<Arc<Mesh>>>,
) -> Result<Json<MeshInfo>, ApiError> {
    let mesh = mesh.ok_or_else(no_ca)?;
    Ok(Json(MeshInfo {
        trust_domain: mesh.ca.trust_domain().as_str().to_owned(),
        mtls: mesh.mtls,
        ca_pem: mesh.ca.cert_pem().to_owned(),
        fingerprint: mesh.ca.fingerprint(),
        certificate_ttl: humantime::format_duration(mesh.ttl).to_string(),
    }))
}

/// Issues a short-lived certificate for a workload's CSR.
#[utoipa::path(post, path = "/v1/certificates", tag = "mesh",
    request_body = CertificateRequest,
    responses((status = 201, body = IssuedCertificate), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn issue(
    Extension(mesh): Extension<Option<Arc<Mesh>>>,
    Extension(tokens): Extension<Tokens>,
    Extension(registry): Extension<Registry>,
    caller: Option<Extension<Caller>>,
    body: JsonBody<CertificateRequest>,
) -> Result<(StatusCode, Json<IssuedCertificate>), Response> {
    // A renewal with the certificate alone goes on only while the token that enrolled it
    // is valid: revoking that token stops renewals.
    let enrolled_by = match caller.as_ref().map(|Extension(c)| c) {
        None => None,
        Some(Caller {
            credential: Credential::Token,
            name,
            ..
        }) => Some(name.clone()),
        Some(Caller {
            credential: Credential::Certificate { enrolled_by },
            ..
        }) => {
            if let Some(token) = enrolled_by {
                tokens.still_valid(token, registry.now()).await?;
            }
            enrolled_by.clone()
        }
    };
    issue_for(mesh, caller, body, enrolled_by.as_deref()).map_err(IntoResponse::into_response)
}

fn issue_for(
    mesh: Option<Arc<Mesh>>,
    caller: Option<Extension<Caller>>,
    JsonBody(req): JsonBody<CertificateRequest>,
    enrolled_by: Option<&str>,
) -> Result<(StatusCode, Json<IssuedCertificate>), ApiError> {
    let mesh = mesh.ok_or_else(no_ca)?;
    let workload = Workload::parse_principal(&req.workload).map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "E1602", e.to_string()).field("workload")
    })?;
    if matches!(workload, Workload::System(_)) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "E1603",
            format!(
                "`{}` is an identity of the server itself and is never issued to a workload",
                req.workload
            ),
        )
        .field("workload"));
    }
    if let Some(Extension(caller)) = &caller {
        may_act_for(caller, &workload, &req.workload)?;
    }
    let id = SpiffeId::new(mesh.ca.trust_domain().clone(), workload);
    let issued = mesh
        .ca
        .issue_enrolled(&req.csr, &id, mesh.ttl, enrolled_by)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "E1604", e.to_string()).field("csr"))?;
    Ok((
        StatusCode::CREATED,
        Json(IssuedCertificate {
            spiffe_id: id.uri(),
            chain_pem: issued.chain_pem,
            ca_pem: mesh.ca.cert_pem().to_owned(),
            not_after: humantime::format_rfc3339_seconds(issued.not_after).to_string(),
        }),
    ))
}

/// Whether `caller` may get a certificate for `workload`: a `sidecar` token only for its own
/// service, a `gateway` token only for its own gateway (or any gateway when it names none),
/// `admin` and `operator` for any. (Without a token the request came to a loopback
/// server, where the host is the trust boundary.)
fn may_act_for(caller: &Caller, workload: &Workload, asked: &str) -> Result<(), ApiError> {
    let allowed = match (caller.role, workload) {
        (Role::Admin | Role::Operator, _) => true,
        (Role::Sidecar, Workload::Service(name)) => {
            caller.service.as_deref() == Some(name.as_str())
        }
        (Role::Gateway, Workload::Gateway(name)) => caller
            .service
            .as_deref()
            .is_none_or(|own| own == name.as_str()),
        _ => false,
    };
    if allowed {
        return Ok(());
    }
    let own = match (&caller.role, &caller.service) {
        (Role::Sidecar, Some(s)) => format!("service `{s}`"),
        (Role::Gateway, Some(g)) => format!("`gateway:{g}`"),
        _ => "no workload".to_owned(),
    };
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "E1605",
        format!(
            "token `{}` ({:?}) may get certificates for {own} only, not `{asked}`: use that workload's own join token",
            caller.name, caller.role
        ),
    )
    .field("workload"))
}
