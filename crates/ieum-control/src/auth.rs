//! Who may call what: API tokens with roles, and the one table that says which permission
//! every route needs.
//!
//! - [`ROUTES`] maps every route (method and matched path) to a [`Permission`]; a route
//!   missing from it is refused (`403 E1017`), even on loopback. A unit test walks every
//!   registered route and checks it has an entry.
//! - [`Role`]s hold permissions ([`Role::allows`]). `sidecar` tokens (and `gateway` tokens
//!   given a service) act only for instances of their own service (`403 E1016`).
//! - [`Auth`] says what a request *without* a token may do: on a server bound only to
//!   loopback ([`Auth::Open`]) everything, recorded as author `local`; elsewhere only reads
//!   (unless reads need a token too). A request that presents a token is always checked,
//!   on loopback too, and acts with that token's role under its name.
//! - Missing, unknown, expired and revoked tokens are `401` with `WWW-Authenticate: Bearer`;
//!   a role without the permission is `403`. Every answer carries a code (docs/errors.md).
//! - Reads also take a browser's login (`Basic`, any user name, the token as password), and
//!   a `401` to a read offers it, so the UI asks for a token when reads need one. Writes
//!   take only `Bearer`, so a browser never sends a remembered login to change anything.

use std::sync::Arc;

use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ieum_registry::Registry;

use crate::error::ApiError;
use crate::tokens::Tokens;

/// Who made a request, as recorded in events and configuration history: a token's name,
/// `local` (loopback without a token) or `anonymous` (an open read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Author(pub String);

/// The holder of a valid token, attached to the requests it makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name; the author of every write it makes.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The one service it acts for (`sidecar`, and `gateway` when given one).
    pub service: Option<String>,
    /// How it proved who it is.
    pub credential: Credential,
}

/// How a [`Caller`] proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// An API token (or join token).
    Token,
    /// A mesh certificate presented on the HTTPS listener (an enrolled sidecar or gateway).
    Certificate {
        /// The token that asked for the certificate, if any: renewals with the certificate
        /// alone need it still valid.
        enrolled_by: Option<String>,
    },
}

/// The mesh certificate a client presented on the server's HTTPS listener, verified by the
/// TLS layer (chained to the CA, of the mesh's trust domain); attached to every request of
/// the connection.
#[derive(Debug, Clone)]
pub struct ClientCertificate {
    /// Its SPIFFE id.
    pub id: ieum_identity::SpiffeId,
    /// The token that asked for it ([`ieum_identity::enrolled_by`]).
    pub enrolled_by: Option<String>,
}

impl ClientCertificate {
    /// The certificate of a verified TLS peer's chain, if it is a mesh certificate.
    pub fn of(chain: &[rustls::pki_types::CertificateDer<'_>]) -> Option<ClientCertificate> {
        Some(ClientCertificate {
            id: ieum_identity::peer_identity(chain)?,
            enrolled_by: ieum_identity::enrolled_by(chain),
        })
    }

    /// The caller it makes: a service's certificate acts as that service's `sidecar`, a
    /// gateway's as that `gateway`, named by its SPIFFE id. The server's own (`system:*`)
    /// identities never act over the API.
    fn caller(&self) -> Option<Caller> {
        let (role, service) = match self.id.workload() {
            ieum_identity::Workload::Service(name) => (Role::Sidecar, name.to_string()),
            ieum_identity::Workload::Gateway(name) => (Role::Gateway, name.to_string()),
            ieum_identity::Workload::System(_) => return None,
        };
        Some(Caller {
            name: self.id.uri(),
            role,
            service: Some(service),
            credential: Credential::Certificate {
                enrolled_by: self.enrolled_by.clone(),
            },
        })
    }
}

/// What a request without a token may do; a request with one is always checked.
#[derive(Debug, Clone)]
pub enum Auth {
    /// Bound only to loopback: the host is the trust boundary, so a request without a token
    /// may do everything (recorded as author `local`). A request that presents a token is
    /// still checked and acts with that token's role, under its name.
    Open,
    /// Every write needs a token from the store; reads too unless `open_reads`.
    Tokens {
        /// Whether reads (`reader` permissions: the API's GETs and the UI) need no token.
        open_reads: bool,
        /// A secret held in this process's memory only, for the server's own clients (the
        /// saga coordinator's embedded sidecar): role `reader`, author `system:coordinator`
        /// (a name no stored token can have). Never stored, never printed.
        internal: Option<Arc<str>>,
    },
    /// Like `Tokens { open_reads: true }`, plus one `admin` secret held in memory only
    /// (recorded as author `admin`): for tests and embedded servers.
    Token(Arc<str>),
}

/// A role, the set of [`Permission`]s a token holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Everything, including token management.
    Admin,
    /// Configuration, drains and instance state, saga operator actions; all reads.
    Operator,
    /// Read-only.
    Reader,
    /// A sidecar: register, heartbeat, state, deregister and telemetry for instances of its
    /// own service only; configuration reads and the push stream; starting sagas and flows;
    /// the server's `memory` PubSubs.
    Sidecar,
    /// A gateway: configuration reads, the push stream, telemetry.
    Gateway,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 5] = [
        Role::Admin,
        Role::Operator,
        Role::Reader,
        Role::Sidecar,
        Role::Gateway,
    ];

    /// The role's name in tokens and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Reader => "reader",
            Role::Sidecar => "sidecar",
            Role::Gateway => "gateway",
        }
    }

    /// The role named `s`.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether the role holds `p` (for service-scoped permissions, before the service
    /// check).
    pub fn allows(self, p: Permission) -> bool {
        use Permission as P;
        match self {
            Role::Admin => true,
            Role::Operator => matches!(
                p,
                P::Public
                    | P::Read
                    | P::ReadConfig
                    | P::Push
                    | P::Instance
                    | P::Operate
                    | P::Certificate
            ),
            Role::Reader => matches!(p, P::Public | P::Read | P::ReadConfig | P::Push),
            Role::Sidecar => matches!(
                p,
                P::Public
                    | P::ReadConfig
                    | P::Push
                    | P::Instance
                    | P::Telemetry
                    | P::StartSaga
                    | P::PubSub
                    | P::Certificate
            ),
            Role::Gateway => matches!(
                p,
                P::Public | P::ReadConfig | P::Push | P::Telemetry | P::Certificate
            ),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Health and the root redirect: never a token, even when reads need one.
    Public,
    /// Reads of the timeline, telemetry views, topics, sagas, history, status and the UI.
    /// Open without a token when reads are open.
    Read,
    /// Reads of configuration and endpoints (services, instances, resources, schemas, the
    /// OpenAPI document). Open without a token when reads are open.
    ReadConfig,
    /// The gRPC push stream (configuration and endpoints, live). Always needs a token off
    /// loopback: it holds a session open on the server.
    Push,
    /// Register, heartbeat, set the state of, deregister an instance of the service in the
    /// path (`{name}`); scoped to a token's service.
    Instance,
    /// Report an instance's telemetry; scoped to a token's service.
    Telemetry,
    /// Change configuration (apply, delete, put a service) and act on saga executions.
    Operate,
    /// Start a saga execution or run a flow.
    StartSaga,
    /// Publish, subscribe, fetch and settle on the server's `memory` PubSubs.
    PubSub,
    /// Get a mesh certificate for a workload (`POST /v1/certificates`). The workload is in
    /// the body, so the handler holds a scoped token to its own service (it reads the
    /// [`Caller`]).
    Certificate,
    /// Manage API tokens.
    Admin,
}

impl Permission {
    /// Whether an open read may skip the token.
    pub fn is_read(self) -> bool {
        matches!(self, Permission::Read | Permission::ReadConfig)
    }

    /// Whether a token with a service may use it only for that service (`{name}` in the
    /// path).
    pub fn is_scoped(self) -> bool {
        matches!(self, Permission::Instance | Permission::Telemetry)
    }

    /// A short description, for error messages.
    pub fn describe(self) -> &'static str {
        match self {
            Permission::Public => "public",
            Permission::Read => "reading (role reader or above)",
            Permission::ReadConfig => "reading configuration",
            Permission::Push => "the push stream",
            Permission::Instance => "acting on instances",
            Permission::Telemetry => "reporting telemetry",
            Permission::Operate => "changing configuration or acting on sagas (role operator)",
            Permission::StartSaga => "starting sagas and flows",
            Permission::PubSub => "using the server's memory PubSubs",
            Permission::Certificate => "getting mesh certificates",
            Permission::Admin => "managing tokens (role admin)",
        }
    }
}

/// Every route of the server — method, path as registered, permission — in one place.
/// `HEAD` is answered as `GET`. A route missing here is refused (`403 E1017`).
pub const ROUTES: &[(&str, &str, Permission)] = {
    use Permission::*;
    &[
        // Health and the root.
        ("GET", "/", Public),
        ("GET", "/healthz", Public),
        ("GET", "/readyz", Public),
        // The mesh CA's certificate: what a sidecar checks before it sends its token.
        ("GET", "/v1/mesh", Public),
        // Configuration and endpoints: readers, sidecars and gateways.
        ("GET", "/v1/openapi.json", ReadConfig),
        ("GET", "/v1/services", ReadConfig),
        ("GET", "/v1/services/{name}", ReadConfig),
        ("GET", "/v1/services/{name}/instances", ReadConfig),
        ("GET", "/v1/resources/{kind}", ReadConfig),
        ("GET", "/v1/resources/{kind}/{name}", ReadConfig),
        ("GET", "/v1/schemas/{file}", ReadConfig),
        ("GET", "/v1/apis", ReadConfig),
        ("GET", "/v1/apis/{name}/openapi.json", ReadConfig),
        ("POST", "/ieum.push.v1.Push/{*rest}", Push),
        // Everything else that only reads.
        ("GET", "/v1/status", Read),
        ("GET", "/v1/services/{name}/events", Read),
        ("GET", "/v1/services/{name}/signals", Read),
        ("GET", "/v1/events", Read),
        ("GET", "/v1/events/stream", Read),
        ("GET", "/v1/topics", Read),
        ("GET", "/v1/topics/{pubsub}/{topic}", Read),
        ("GET", "/v1/correlations/{id}", Read),
        ("GET", "/v1/resources/{kind}/{name}/history", Read),
        ("GET", "/v1/sagas", Read),
        ("GET", "/v1/sagas/executions", Read),
        ("GET", "/v1/sagas/executions/{id}", Read),
        // The web UI.
        ("GET", "/ui", Read),
        ("GET", "/ui/", Read),
        ("GET", "/ui/services", Read),
        ("GET", "/ui/services/", Read),
        ("GET", "/ui/services/{name}", Read),
        ("GET", "/ui/topology", Read),
        ("GET", "/ui/topics", Read),
        ("GET", "/ui/topics/{pubsub}/{topic}", Read),
        ("GET", "/ui/correlations", Read),
        ("GET", "/ui/correlations/{id}", Read),
        ("GET", "/ui/config", Read),
        ("GET", "/ui/config/{kind}/{name}", Read),
        ("GET", "/ui/apis", Read),
        ("GET", "/ui/apis/{name}", Read),
        ("GET", "/ui/events", Read),
        ("GET", "/ui/sagas", Read),
        ("GET", "/ui/sagas/executions/{id}", Read),
        ("GET", "/ui/{*rest}", Read),
        // Instances: operators for any service, sidecars for their own.
        ("POST", "/v1/services/{name}/instances", Instance),
        ("DELETE", "/v1/services/{name}/instances/{id}", Instance),
        (
            "PUT",
            "/v1/services/{name}/instances/{id}/heartbeat",
            Instance,
        ),
        ("PUT", "/v1/services/{name}/instances/{id}/state", Instance),
        (
            "POST",
            "/v1/services/{name}/instances/{id}/telemetry",
            Telemetry,
        ),
        // Configuration and saga operator actions.
        ("PUT", "/v1/services/{name}", Operate),
        ("POST", "/v1/apply", Operate),
        ("DELETE", "/v1/resources/{kind}/{name}", Operate),
        ("POST", "/v1/sagas/executions/{id}/{op}", Operate),
        // What apps do through their sidecars.
        ("POST", "/v1/sagas/{name}/executions", StartSaga),
        ("POST", "/v1/flows/{name}", StartSaga),
        ("POST", "/v1/pubsubs/{name}/topics/{topic}/events", PubSub),
        (
            "POST",
            "/v1/pubsubs/{name}/topics/{topic}/subscriptions",
            PubSub,
        ),
        (
            "POST",
            "/v1/pubsubs/{name}/subscriptions/{id}/fetch",
            PubSub,
        ),
        (
            "POST",
            "/v1/pubsubs/{name}/subscriptions/{id}/leases/{lease}",
            PubSub,
        ),
        // Mesh certificates (the handler scopes a token with a service to its workload).
        ("POST", "/v1/certificates", Certificate),
        // Tokens.
        ("POST", "/v1/tokens", Admin),
        ("GET", "/v1/tokens", Admin),
        ("DELETE", "/v1/tokens/{name}", Admin),
        // The API gateway's consumer keys: operators manage them.
        ("POST", "/v1/apikeys", Operate),
        ("GET", "/v1/apikeys", Operate),
        ("DELETE", "/v1/apikeys/{id}", Operate),
    ]
};

/// What [`required`] found for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Required {
    /// The route and what it needs.
    Route(Permission),
    /// The path is a route, but not with this method (answered `405`).
    WrongMethod,
    /// The route has no entry in [`ROUTES`] (refused).
    Unlisted,
}

/// The permission a request needs, from its method and the path of the route it matched.
pub fn required(method: &Method, path: &str) -> Required {
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    let mut path_known = false;
    for (m, p, permission) in ROUTES {
        if *p == path {
            if *m == method {
                return Required::Route(*permission);
            }
            path_known = true;
        }
    }
    if path_known {
        Required::WrongMethod
    } else {
        Required::Unlisted
    }
}

/// The middleware's state.
#[derive(Clone)]
pub(crate) struct Guard {
    pub(crate) auth: Auth,
    pub(crate) tokens: Tokens,
    /// For the clock that decides expiry.
    pub(crate) registry: Registry,
}

/// The realm of every challenge.
const CHALLENGE: &str = "Bearer realm=\"ieum\"";
const CHALLENGE_INVALID: &str = "Bearer realm=\"ieum\", error=\"invalid_token\"";

/// A `401` with a coded body and a Bearer challenge.
pub(crate) fn unauthorized(code: &str, message: impl Into<String>, invalid: bool) -> Response {
    let mut resp = ApiError::new(StatusCode::UNAUTHORIZED, code, message).into_response();
    let challenge = if invalid {
        CHALLENGE_INVALID
    } else {
        CHALLENGE
    };
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    resp
}

/// The secret a request presents: `Authorization: Bearer SECRET`, or, for reads only, a
/// browser's login `Authorization: Basic` with any user name and the secret as password
/// (so the UI can ask for a token when reads need one). `Err` says what is wrong.
fn credential(req: &Request) -> Result<Option<String>, &'static str> {
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| "the Authorization header is not text")?;
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
        return Ok(Some(rest.to_owned()));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        if !matches!(*req.method(), Method::GET | Method::HEAD) {
            return Err("a browser login (Basic) only reads: send `Authorization: Bearer TOKEN`");
        }
        let pair = base64_decode(rest)
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or("the Basic credentials are not base64 of `user:password`")?;
        return match pair.split_once(':') {
            Some((_, secret)) if !secret.is_empty() => Ok(Some(secret.to_owned())),
            _ => Err("give the token as the password of the login"),
        };
    }
    Err("the Authorization header is not `Bearer TOKEN`: pass --token or set IEUM_TOKEN")
}

/// Standard base64, padding optional; `None` for anything else.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// A `401` to a read also offers the browser login (after the Bearer challenge).
fn offer_login(method: &Method, mut resp: Response) -> Response {
    if resp.status() == StatusCode::UNAUTHORIZED && matches!(*method, Method::GET | Method::HEAD) {
        resp.headers_mut().append(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"ieum\", charset=\"UTF-8\""),
        );
    }
    resp
}

/// Middleware: finds what the route needs, checks the token if one is presented, attaches
/// the [`Author`] (and the [`Caller`]), and refuses what is not allowed.
pub(crate) async fn authorize(State(guard): State<Guard>, req: Request, next: Next) -> Response {
    let Some(path) = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
    else {
        // No route matched: the fallback answers 404 and touches nothing.
        return next.run(req).await;
    };
    let permission = match required(req.method(), &path) {
        Required::Route(p) => p,
        Required::WrongMethod => {
            return ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "E1405",
                "this endpoint does not take that method: see /v1/openapi.json",
            )
            .into_response();
        }
        Required::Unlisted => {
            tracing::error!(method = %req.method(), route = %path, "a route has no permission in auth::ROUTES; refused");
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "E1017",
                format!(
                    "{} {path} has no required permission in the server's route table, so it is refused: \
                     this is a bug in ieum, please report it",
                    req.method()
                ),
            )
            .into_response();
        }
    };
    let mut req = req;
    if permission == Permission::Public {
        req.extensions_mut().insert(Author("anonymous".into()));
        return next.run(req).await;
    }
    let method = req.method().clone();
    let caller = match credential(&req) {
        // Without a token, a mesh certificate on the HTTPS listener says who calls.
        Ok(None) => req
            .extensions()
            .get::<ClientCertificate>()
            .and_then(ClientCertificate::caller),
        Err(why) => return offer_login(&method, unauthorized("E1011", why, true)),
        Ok(Some(secret)) => match guard.caller(&secret).await {
            Ok(c) => Some(c),
            Err(resp) => return offer_login(&method, resp),
        },
    };
    let author = match caller {
        Some(caller) => {
            if let Err(resp) = permitted(&caller, permission, &path, &mut req).await {
                return resp;
            }
            let author = Author(caller.name.clone());
            req.extensions_mut().insert(caller);
            author
        }
        None => match &guard.auth {
            Auth::Open => Author("local".into()),
            Auth::Tokens {
                open_reads: true, ..
            }
            | Auth::Token(_)
                if permission.is_read() =>
            {
                Author("anonymous".into())
            }
            _ => {
                return offer_login(
                    &method,
                    unauthorized(
                        "E1010",
                        format!(
                            "{} needs a token on this server: pass --token or set IEUM_TOKEN (an admin \
                         creates tokens with `ieum token create`; the first admin token is in the \
                         server's data dir, file admin.token)",
                            permission.describe()
                        ),
                        false,
                    ),
                );
            }
        },
    };
    req.extensions_mut().insert(author);
    next.run(req).await
}

/// Whether `caller` may use a route that needs `permission`; the error response if not.
async fn permitted(
    caller: &Caller,
    permission: Permission,
    path: &str,
    req: &mut Request,
) -> Result<(), Response> {
    if !caller.role.allows(permission) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "E1015",
            format!(
                "the token `{}` has role {}, which does not allow {}: use a token whose role does",
                caller.name,
                caller.role,
                permission.describe()
            ),
        )
        .into_response());
    }
    let Some(own) = &caller.service else {
        return Ok(());
    };
    if !permission.is_scoped() {
        return Ok(());
    }
    let (mut parts, body) = std::mem::take(req).into_parts();
    let params = RawPathParams::from_request_parts(&mut parts, &()).await;
    let target = params.ok().and_then(|p| {
        p.iter()
            .find(|(k, _)| *k == "name")
            .map(|(_, v)| v.to_owned())
    });
    *req = Request::from_parts(parts, body);
    if target.as_deref() == Some(own.as_str()) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "E1016",
        format!(
            "the {} token `{}` acts only for instances of service `{own}`, not `{}` ({path}): \
             use that service's own token",
            caller.role,
            caller.name,
            target.as_deref().unwrap_or("?"),
        ),
    )
    .field("name")
    .into_response())
}

impl Guard {
    /// The holder of `secret`, or the `401` that refuses it.
    async fn caller(&self, token: &str) -> Result<Caller, Response> {
        // A join token (`ieum1.<ca-hash>.<secret>`) names the CA it trusts: it must be ours.
        let join = ieum_identity::JoinToken::parse(token)
            .map_err(|e| unauthorized("E1021", e.to_string(), true))?;
        let secret = match &join {
            Some(j) => {
                if let Some(own) = self.tokens.ca_hash()
                    && own != j.ca_hash.as_str()
                {
                    return Err(unauthorized(
                        "E1022",
                        format!(
                            "the join token pins the CA sha256:{} but this server's CA is \
                             sha256:{own}: the token is for another server; ask this server's \
                             admin for one (`ieum token create`)",
                            j.ca_hash
                        ),
                        true,
                    ));
                }
                j.secret.as_str()
            }
            None => token,
        };
        let internal = match &self.auth {
            Auth::Token(admin) => Some((admin, "admin", Role::Admin)),
            Auth::Tokens {
                internal: Some(s), ..
            } => Some((s, "system:coordinator", Role::Reader)),
            _ => None,
        };
        if let Some((known, name, role)) = internal
            && same(secret.as_bytes(), known.as_bytes())
        {
            return Ok(Caller {
                name: name.into(),
                role,
                service: None,
                credential: Credential::Token,
            });
        }
        self.tokens.verify(secret, self.registry.now()).await
    }
}

/// Constant-time comparison, so a secret cannot be guessed byte by byte from timing.
pub(crate) use ieum_model::secret::same;

#[cfg(test)]
mod tests;
