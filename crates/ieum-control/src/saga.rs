//! Handlers for sagas and flows: start an execution, read it and its log, list and count
//! executions, an operator's retry / skip / abort, a caller's cancel; run a flow.
//!
//! The UI's buttons are plain `<form method=post>` to the operator endpoints: such a
//! request is answered with a redirect back to the execution's page, and refused when the
//! browser says it came from another site (a form on a foreign page cannot drive the
//! API of a server open on loopback).

use std::time::Duration;

use axum::Extension;
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use ieum_saga::{Coordinator, Op};
use ieum_store::saga::ExecutionQuery;
use serde_json::{Value, json};

use crate::auth::Author;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{QueryParams, parse_json};

/// The answer to a start that is not final yet (`202`).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Started {
    /// The execution's id.
    id: String,
    /// True when the `Idempotency-Key` found an execution started before.
    existing: bool,
    /// Where to read it.
    href: String,
}

/// `GET /v1/sagas/executions`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct ExecutionList {
    /// Newest first.
    executions: Vec<ieum_saga::ExecutionSummary>,
}

/// `GET /v1/sagas`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct SagaList {
    /// Every saga defined or with executions.
    sagas: Vec<ieum_saga::SagaCounts>,
}

/// The answer to an action on an execution (`202`).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Requested {
    /// The execution's id.
    id: String,
    /// `cancel`, `retry`, `skip` or `abort`.
    requested: String,
}

/// Longest `?wait=` honoured.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// The saga and flow routes, over a coordinator (or answering 503 without one).
pub(crate) fn routes<S>(sagas: Option<Coordinator>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/v1/sagas", get(counts))
        .route("/v1/sagas/{name}/executions", post(start))
        .route("/v1/sagas/executions", get(list))
        .route("/v1/sagas/executions/{id}", get(execution))
        .route("/v1/sagas/executions/{id}/{op}", post(request))
        .route("/v1/flows/{name}", post(flow))
        .with_state(sagas)
}

type Sagas = State<Option<Coordinator>>;

fn coordinator(s: &Option<Coordinator>) -> Result<&Coordinator, ApiError> {
    s.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "E1503",
            "the saga coordinator is not running on this server",
        )
    })
}

fn api_error(e: ieum_saga::Error) -> ApiError {
    use ieum_saga::Error;
    match e {
        Error::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, "E1404", m),
        Error::Conflict(m) | Error::Invalid(m) => ApiError::new(StatusCode::CONFLICT, "E1409", m),
        Error::Storage(e) => {
            tracing::error!(error = %e, "storage error answering a saga request");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "E1503",
                "storage is unavailable; retry when /readyz answers 200",
            )
        }
        Error::Stopping => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "E1503",
            "the server is shutting down; retry",
        ),
    }
}

fn parse_wait(v: &str) -> Result<Duration, String> {
    let d: ieum_model::Duration = v.parse().map_err(|e| format!("{e}"))?;
    if d.get() > MAX_WAIT {
        return Err(format!(
            "must be at most {}",
            ieum_model::Duration::from(MAX_WAIT)
        ));
    }
    Ok(d.get())
}

/// `POST /v1/sagas/{name}/executions`: the body is the input; `Idempotency-Key`
/// de-duplicates; `?wait=5s` answers with the result when it is final in time.
#[utoipa::path(post, path = "/v1/sagas/{name}/executions", tag = "sagas",
    params(("name" = String, Path, description = "The Saga resource"),
        ("wait" = Option<String>, Query, description = "Answer with the final execution when it ends within this long (at most 60s)"),
        ("Idempotency-Key" = Option<String>, Header, description = "A second start with the same key returns the first execution")),
    request_body(content = Object, description = "The saga's input (any JSON)"),
    responses((status = 202, body = Started, description = "Started (or found by its key); not final yet"),
        (status = 200, body = ieum_saga::ExecutionView, description = "Final within `wait`"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn start(
    State(sagas): Sagas,
    Path(name): Path<String>,
    Extension(author): Extension<Author>,
    q: QueryParams,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let c = coordinator(&sagas)?;
    q.only(&["wait"])?;
    let wait = q.parse("wait", parse_wait)?;
    let input: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        parse_json(&body)?
    };
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let k = v
                .to_str()
                .ok()
                .map(str::trim)
                .filter(|k| !k.is_empty() && k.len() <= 256);
            Some(k.map(str::to_owned).ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "E1005",
                    "Idempotency-Key must be 1 to 256 visible characters",
                )
                .field("Idempotency-Key")
            })?)
        }
    };
    let started = c
        .start_execution(&name, input, key, &author.0)
        .await
        .map_err(api_error)?;
    let location = format!("/v1/sagas/executions/{}", started.id);
    if let Some(wait) = wait
        && let Some(view) = c.wait(&started.id, wait).await.map_err(api_error)?
    {
        return Ok((StatusCode::OK, [(header::LOCATION, location)], Json(view)).into_response());
    }
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location.clone())],
        Json(Started {
            id: started.id,
            existing: started.existing,
            href: location,
        }),
    )
        .into_response())
}

/// `GET /v1/sagas/executions/{id}`: the execution, its steps and its full log.
#[utoipa::path(get, path = "/v1/sagas/executions/{id}", tag = "sagas",
    params(("id" = String, Path, description = "Execution id")),
    responses((status = 200, body = ieum_saga::ExecutionView), (status = 404, body = ErrorBody)))]
pub(crate) async fn execution(
    State(sagas): Sagas,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let c = coordinator(&sagas)?;
    Ok(Json(c.execution(&id).await.map_err(api_error)?).into_response())
}

/// `GET /v1/sagas/executions?saga=&state=&limit=`: newest first.
#[utoipa::path(get, path = "/v1/sagas/executions", tag = "sagas",
    params(("saga" = Option<String>, Query, description = "Only this saga"),
        ("state" = Option<String>, Query, description = "running, compensating, paused, stuck, completed, compensated or aborted"),
        ("limit" = Option<u32>, Query, description = "At most this many (1 to 10000; 100)")),
    responses((status = 200, body = ExecutionList), (status = 400, body = ErrorBody)))]
pub(crate) async fn list(State(sagas): Sagas, q: QueryParams) -> Result<Response, ApiError> {
    let c = coordinator(&sagas)?;
    q.only(&["saga", "state", "limit"])?;
    let state = q.parse("state", |s| {
        ieum_saga::ExecState::parse(s)
            .map(|_| s.to_owned())
            .ok_or_else(|| {
                let all: Vec<_> = ieum_saga::ExecState::ALL
                    .iter()
                    .map(|s| s.as_str())
                    .collect();
                format!("`{s}` is not a state: use {}", all.join(", "))
            })
    })?;
    let limit = q.parse("limit", |s| {
        s.parse::<u32>()
            .ok()
            .filter(|n| (1..=10_000).contains(n))
            .ok_or_else(|| "must be a number from 1 to 10000".to_owned())
    })?;
    let query = ExecutionQuery {
        saga: q.get("saga").map(str::to_owned),
        state,
        limit: limit.unwrap_or(100),
    };
    let executions = c.list(&query).await.map_err(api_error)?;
    Ok(Json(ExecutionList { executions }).into_response())
}

/// `GET /v1/sagas`: every saga with its executions' counts by state.
#[utoipa::path(get, path = "/v1/sagas", tag = "sagas",
    responses((status = 200, body = SagaList)))]
pub(crate) async fn counts(State(sagas): Sagas) -> Result<Response, ApiError> {
    let c = coordinator(&sagas)?;
    let sagas = c.counts().await.map_err(api_error)?;
    Ok(Json(SagaList { sagas }).into_response())
}

/// Whether a browser says the form came from another site.
fn cross_site(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return !matches!(site, "same-origin" | "none");
    }
    match (
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
        headers.get(header::HOST).and_then(|v| v.to_str().ok()),
    ) {
        (Some(origin), Some(host)) => origin.split_once("://").map(|(_, h)| h) != Some(host),
        (Some(_), None) => true,
        _ => false,
    }
}

/// `POST /v1/sagas/executions/{id}/{op}`: `cancel`, or an operator's `retry`, `skip`,
/// `abort`; recorded with the author in the execution's log.
#[utoipa::path(post, path = "/v1/sagas/executions/{id}/{op}", tag = "sagas",
    params(("id" = String, Path, description = "Execution id"),
        ("op" = String, Path, description = "cancel (running or paused), retry, skip or abort (paused or stuck)")),
    responses((status = 202, body = Requested), (status = 303, description = "From the UI's form: back to the execution's page"),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn request(
    State(sagas): Sagas,
    Path((id, op)): Path<(String, String)>,
    Extension(author): Extension<Author>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let c = coordinator(&sagas)?;
    let op = Op::parse(&op).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "E1404",
            format!("`{op}` is not an action on an execution: use cancel, retry, skip or abort"),
        )
    })?;
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if form && cross_site(&headers) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "E1012",
            "a form from another site cannot act on executions",
        ));
    }
    c.request(&id, op, &author.0).await.map_err(api_error)?;
    if form {
        return Ok(Redirect::to(&format!("/ui/sagas/executions/{id}")).into_response());
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(Requested {
            id,
            requested: op.as_str().to_owned(),
        }),
    )
        .into_response())
}

/// `POST /v1/flows/{name}`: runs the flow with the body as input, answers its output.
#[utoipa::path(post, path = "/v1/flows/{name}", tag = "sagas",
    params(("name" = String, Path, description = "The Flow resource"),
        ("traceparent" = Option<String>, Header, description = "W3C trace context to continue")),
    request_body(content = Object, description = "The flow's input (any JSON)"),
    responses((status = 200, body = Object, description = "The flow's output"),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody, description = "E2952: a template or condition cannot be evaluated for this input"),
        (status = 502, body = Object, description = "E2951: a step failed; `step` has its name, status and body")))]
pub(crate) async fn flow(
    State(sagas): Sagas,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    use ieum_saga::FlowError;
    let c = coordinator(&sagas)?;
    let input: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        parse_json(&body)?
    };
    let traceparent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match c.run_flow(&name, input, traceparent).await {
        Ok(output) => Ok(Json(output).into_response()),
        Err(FlowError::NotFound(m)) => Err(ApiError::new(StatusCode::NOT_FOUND, "E1404", m)),
        Err(FlowError::Invalid(m)) => Err(ApiError::new(StatusCode::CONFLICT, "E1409", m)),
        Err(e @ FlowError::Expression { .. }) => {
            let step = match &e {
                FlowError::Expression { step, .. } => step.clone(),
                _ => String::new(),
            };
            Err(
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "E2952", e.to_string())
                    .field(format!("steps.{step}")),
            )
        }
        Err(FlowError::StepFailed {
            step,
            status,
            message,
            body,
        }) => Ok((
            StatusCode::BAD_GATEWAY,
            Json(json!({
                "error": {
                    "code": "E2951",
                    "message": format!("step `{step}` failed: {message}"),
                    "field": format!("steps.{step}"),
                },
                "step": {"name": step, "status": status, "body": body},
            })),
        )
            .into_response()),
        Err(FlowError::Storage(e)) => Err(api_error(ieum_saga::Error::Storage(e))),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn forms_from_other_sites_are_told_apart() {
        let mut h = HeaderMap::new();
        assert!(!cross_site(&h), "curl sends neither header");
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(cross_site(&h));
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(!cross_site(&h));
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:7700"));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:7700"),
        );
        assert!(!cross_site(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(cross_site(&h));
    }

    #[test]
    fn waits_are_bounded() {
        assert_eq!(parse_wait("5s"), Ok(Duration::from_secs(5)));
        assert!(parse_wait("2m").is_err());
        assert!(parse_wait("5").is_err());
    }
}
