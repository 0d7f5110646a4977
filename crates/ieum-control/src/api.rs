//! Handlers of the REST API `/v1`.

use std::convert::Infallible;
use std::time::Duration as StdDuration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures_util::Stream;
use ieum_model::{
    Duration, Event, EventKind, Instance, InstanceRegistration, InstanceState, ServiceSpec,
    ServiceSummary, ServiceView, Timestamp,
};
use ieum_registry::{InstanceFilter, Registered, Status};
use ieum_store::{EventQuery, MAX_EVENT_PAGE, Order};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use crate::AppState;
use crate::auth::Author;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{InstancePath, JsonBody, QueryParams, ServiceName};

/// Header carrying the change index of what a response shows.
pub const INDEX_HEADER: &str = "x-ieum-index";
/// Longest a blocking query may wait.
const MAX_WAIT: StdDuration = StdDuration::from_secs(600);
/// Wait of a blocking query that gives an index but no `wait`.
const DEFAULT_WAIT: StdDuration = StdDuration::from_secs(60);

fn with_index<T: IntoResponse>(index: u64, body: T) -> Response {
    let mut resp = body.into_response();
    resp.headers_mut()
        .insert(INDEX_HEADER, HeaderValue::from(index));
    resp
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "server", responses((status = 200, description = "The server is alive")))]
pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: storage answers and the last write succeeded.
#[utoipa::path(get, path = "/readyz", tag = "server", responses(
    (status = 200, description = "Ready"),
    (status = 503, description = "Storage unavailable", body = ErrorBody)))]
pub(crate) async fn readyz(State(app): State<AppState>) -> Result<&'static str, ApiError> {
    if let Err(e) = app.registry.store().ping().await {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "E1503",
            format!("storage does not answer: {e}"),
        ));
    }
    if !app.registry.storage_ok() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "E1503",
            "the last write to storage failed",
        ));
    }
    Ok("ready\n")
}

/// The registry's counters, storage health and mass-failure protection.
#[utoipa::path(get, path = "/v1/status", tag = "server", responses((status = 200, body = Status)))]
pub(crate) async fn status(State(app): State<AppState>) -> Json<Status> {
    Json(app.registry.status())
}

/// Every service with a summary of its instances and its latest event.
#[utoipa::path(get, path = "/v1/services", tag = "services", responses(
    (status = 200, body = Vec<ServiceSummary>, headers(("x-ieum-index" = u64, description = "Change index")))))]
pub(crate) async fn list_services(State(app): State<AppState>) -> Response {
    let (index, list) = app.registry.services();
    with_index(index, Json(list))
}

/// One service: its definition and every instance.
#[utoipa::path(get, path = "/v1/services/{name}", tag = "services",
    params(("name" = String, Path, description = "Service name")),
    responses((status = 200, body = ServiceView), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_service(
    State(app): State<AppState>,
    ServiceName(name): ServiceName,
) -> Result<Json<ServiceView>, ApiError> {
    app.registry
        .service(name.as_str())
        .map(Json)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "E1404",
                format!("service `{name}` is not registered"),
            )
        })
}

/// Creates or replaces a service definition (the `spec` of a `Service` resource).
#[utoipa::path(put, path = "/v1/services/{name}", tag = "services",
    params(("name" = String, Path, description = "Service name")),
    request_body = ServiceSpec,
    responses((status = 201, description = "Created", body = ServiceView), (status = 200, description = "Updated", body = ServiceView),
        (status = 400, body = ErrorBody)))]
pub(crate) async fn put_service(
    State(app): State<AppState>,
    Extension(author): Extension<Author>,
    ServiceName(name): ServiceName,
    JsonBody(spec): JsonBody<ServiceSpec>,
) -> Result<Response, ApiError> {
    let existing = app.registry.service(name.as_str());
    let existed = existing.is_some();
    let labels = existing.map(|s| s.labels).unwrap_or_default();
    let view = app
        .registry
        .put_service(&name, spec, labels, &author.0)
        .await?;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(view)).into_response())
}

/// Registers an instance; re-registering the same id updates it.
#[utoipa::path(post, path = "/v1/services/{name}/instances", tag = "instances",
    params(("name" = String, Path, description = "Service name")),
    request_body = InstanceRegistration,
    responses((status = 201, description = "Registered", body = Registered), (status = 200, description = "Already registered", body = Registered),
        (status = 400, body = ErrorBody)))]
pub(crate) async fn register(
    State(app): State<AppState>,
    Extension(author): Extension<Author>,
    ServiceName(name): ServiceName,
    JsonBody(reg): JsonBody<InstanceRegistration>,
) -> Result<Response, ApiError> {
    let out = app.registry.register(&name, reg, &author.0).await?;
    let status = if out.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(out)).into_response())
}

/// Instances of a service; with `index`, a blocking query that answers as soon as the set
/// changes after that index (or after `wait`).
#[utoipa::path(get, path = "/v1/services/{name}/instances", tag = "instances",
    params(("name" = String, Path, description = "Service name"),
        ("state" = Option<String>, Query, description = "starting | up | draining | down"),
        ("zone" = Option<String>, Query, description = "Only this zone"),
        ("index" = Option<u64>, Query, description = "Wait for a change after this X-Ieum-Index"),
        ("wait" = Option<String>, Query, description = "Longest wait, e.g. 30s (default 60s, at most 10m)")),
    responses((status = 200, body = Vec<Instance>, headers(("x-ieum-index" = u64, description = "Change index"))), (status = 404, body = ErrorBody)))]
pub(crate) async fn list_instances(
    State(app): State<AppState>,
    ServiceName(name): ServiceName,
    q: QueryParams,
) -> Result<Response, ApiError> {
    q.only(&["state", "zone", "index", "wait"])?;
    let state = q.parse("state", |s| {
        InstanceState::parse(s)
            .ok_or_else(|| format!("`{s}` is not a state: use starting, up, draining or down"))
    })?;
    let zone = q.get("zone").map(str::to_owned);
    let index = q.parse("index", |s| {
        s.parse::<u64>()
            .map_err(|_| format!("`{s}` is not a number"))
    })?;
    let wait = q.parse("wait", |s| s.parse::<Duration>().map_err(|e| e.to_string()))?;
    let wait = wait.map_or(DEFAULT_WAIT, Duration::get).min(MAX_WAIT);
    let filter = InstanceFilter { state, zone };
    let query = app.registry.instances(name.as_str(), &filter, index, wait);
    let (index, list) = tokio::select! {
        r = query => r?,
        () = app.shutdown.cancelled() => return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "E1503", "the server is shutting down; retry")),
    };
    Ok(with_index(index, Json(list)))
}

/// Renews an instance's lease. 404 means: register again.
#[utoipa::path(put, path = "/v1/services/{name}/instances/{id}/heartbeat", tag = "instances",
    params(("name" = String, Path, description = "Service name"), ("id" = String, Path, description = "Instance id")),
    responses((status = 200, description = "Lease renewed"), (status = 404, description = "Unknown instance: register again", body = ErrorBody)))]
pub(crate) async fn heartbeat(
    State(app): State<AppState>,
    InstancePath(name, id): InstancePath,
) -> Result<Json<serde_json::Value>, ApiError> {
    app.registry.heartbeat(name.as_str(), &id).await?;
    Ok(Json(serde_json::json!({})))
}

/// Body of `PUT …/state`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct StateChange {
    /// `draining`, `up`, or `down` (with a `reason`, as a sidecar reports its app).
    state: String,
    /// Why, for `down`: shown on the timeline.
    #[serde(default)]
    reason: Option<String>,
}

/// Drains an instance or returns it to service.
#[utoipa::path(put, path = "/v1/services/{name}/instances/{id}/state", tag = "instances",
    params(("name" = String, Path, description = "Service name"), ("id" = String, Path, description = "Instance id")),
    request_body = StateChange,
    responses((status = 200, body = Instance), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn set_state(
    State(app): State<AppState>,
    Extension(author): Extension<Author>,
    InstancePath(name, id): InstancePath,
    JsonBody(change): JsonBody<StateChange>,
) -> Result<Json<Instance>, ApiError> {
    let to = match change.state.as_str() {
        "draining" => InstanceState::Draining,
        "up" => InstanceState::Up,
        "down" => {
            let Some(reason) = change.reason.filter(|r| !r.trim().is_empty()) else {
                return Err(ieum_model::ValidationError::new(
                    "E1215",
                    "reason",
                    "say why the instance is down",
                )
                .into());
            };
            if reason.len() > 1024 || reason.chars().any(char::is_control) {
                return Err(ieum_model::ValidationError::new(
                    "E1215",
                    "reason",
                    "must be at most 1024 characters of text without control characters",
                )
                .into());
            }
            return Ok(Json(
                app.registry
                    .report_down(name.as_str(), &id, &reason, &author.0)
                    .await?,
            ));
        }
        other => {
            return Err(ieum_model::ValidationError::new(
                "E1214",
                "state",
                format!(
                    "`{other}` cannot be set by hand: use `draining`, `up`, or `down` with a reason"
                ),
            )
            .into());
        }
    };
    Ok(Json(
        app.registry
            .set_state(name.as_str(), &id, to, &author.0)
            .await?,
    ))
}

/// A sidecar's report: golden signals and circuit-breaker transitions.
#[utoipa::path(post, path = "/v1/services/{name}/instances/{id}/telemetry", tag = "instances",
    params(("name" = String, Path, description = "Service name"), ("id" = String, Path, description = "Instance id")),
    request_body = ieum_model::telemetry::TelemetryReport,
    responses((status = 204, description = "Taken"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn telemetry(
    State(app): State<AppState>,
    Extension(author): Extension<Author>,
    InstancePath(name, id): InstancePath,
    JsonBody(report): JsonBody<ieum_model::telemetry::TelemetryReport>,
) -> Result<StatusCode, ApiError> {
    app.registry
        .report_telemetry(name.as_str(), &id, report, &author.0)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Golden signals the service's sidecars reported (kept one hour), oldest first.
#[utoipa::path(get, path = "/v1/services/{name}/signals", tag = "services",
    params(("name" = String, Path, description = "Service name"),
        ("since" = Option<String>, Query, description = "RFC 3339 time, or a duration ago such as 10m (default 10m)")),
    responses((status = 200, body = Vec<ieum_model::telemetry::SignalSample>)))]
pub(crate) async fn signals(
    State(app): State<AppState>,
    ServiceName(name): ServiceName,
    q: QueryParams,
) -> Result<Json<Vec<ieum_model::telemetry::SignalSample>>, ApiError> {
    q.only(&["since"])?;
    let since = q
        .parse("since", parse_since)?
        .unwrap_or_else(|| app.registry.now().minus(Duration::from_secs(600)));
    Ok(Json(app.registry.signals(name.as_str(), since)))
}

/// Deregisters an instance.
#[utoipa::path(delete, path = "/v1/services/{name}/instances/{id}", tag = "instances",
    params(("name" = String, Path, description = "Service name"), ("id" = String, Path, description = "Instance id")),
    responses((status = 204, description = "Removed"), (status = 404, body = ErrorBody)))]
pub(crate) async fn deregister(
    State(app): State<AppState>,
    Extension(author): Extension<Author>,
    InstancePath(name, id): InstancePath,
) -> Result<StatusCode, ApiError> {
    app.registry
        .deregister(name.as_str(), &id, &author.0)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

const EVENT_PARAMS: [&str; 7] = [
    "service", "instance", "kind", "since", "limit", "after", "order",
];

/// Reads the event filters shared by the list and the stream.
fn event_query(q: &QueryParams, service: Option<String>) -> Result<EventQuery, ApiError> {
    let kinds = q
        .parse("kind", |s| {
            s.split(',')
                .map(|k| {
                    EventKind::parse(k.trim()).ok_or_else(|| {
                        let all: Vec<_> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
                        format!("`{k}` is not an event kind: use {}", all.join(", "))
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })?
        .unwrap_or_default();
    let since = q.parse("since", parse_since)?;
    let limit = q.parse("limit", |s| match s.parse::<u32>() {
        Ok(n) if (1..=MAX_EVENT_PAGE).contains(&n) => Ok(n),
        _ => Err(format!("`{s}` must be a number from 1 to {MAX_EVENT_PAGE}")),
    })?;
    let after_id = q.parse("after", |s| {
        s.parse::<i64>()
            .map_err(|_| format!("`{s}` is not an event id"))
    })?;
    let order = q
        .parse("order", |s| s.parse::<Order>())?
        .unwrap_or_default();
    if let Some(s) = q.get("service") {
        ieum_model::Name::parse_field(s, "service")?;
    }
    Ok(EventQuery {
        service: service.or_else(|| q.get("service").map(str::to_owned)),
        instance: q.get("instance").map(str::to_owned),
        kinds,
        since,
        after_id,
        limit: limit.unwrap_or(100),
        order,
    })
}

/// `since` is an RFC 3339 time or a duration ago (`10m`).
pub(crate) fn parse_since(s: &str) -> Result<Timestamp, String> {
    if let Ok(t) = s.parse::<Timestamp>() {
        return Ok(t);
    }
    match s.parse::<Duration>() {
        Ok(ago) => Ok(Timestamp::from_system(std::time::SystemTime::now()).minus(ago)),
        Err(_) => Err(format!(
            "`{s}` is neither an RFC 3339 time nor a duration ago like `10m`"
        )),
    }
}

/// Events, newest first: filter by service, instance, kinds (comma-separated), time.
#[utoipa::path(get, path = "/v1/events", tag = "events",
    params(("service" = Option<String>, Query, description = "Only this service"),
        ("instance" = Option<String>, Query, description = "Only this instance"),
        ("kind" = Option<String>, Query, description = "Comma-separated kinds, e.g. instance.down,instance.up"),
        ("since" = Option<String>, Query, description = "RFC 3339 time, or a duration ago such as 10m"),
        ("after" = Option<i64>, Query, description = "Only events after this id"),
        ("order" = Option<String>, Query, description = "newest (default) or oldest"),
        ("limit" = Option<u32>, Query, description = "At most this many (default 100, at most 10000)")),
    responses((status = 200, body = Vec<Event>), (status = 400, body = ErrorBody)))]
pub(crate) async fn list_events(
    State(app): State<AppState>,
    q: QueryParams,
) -> Result<Json<Vec<Event>>, ApiError> {
    q.only(&EVENT_PARAMS)?;
    let query = event_query(&q, None)?;
    Ok(Json(app.registry.events(&query).await?))
}

/// The timeline of one service, newest first.
#[utoipa::path(get, path = "/v1/services/{name}/events", tag = "events",
    params(("name" = String, Path, description = "Service name"),
        ("instance" = Option<String>, Query, description = "Only this instance"),
        ("kind" = Option<String>, Query, description = "Comma-separated kinds"),
        ("since" = Option<String>, Query, description = "RFC 3339 time, or a duration ago such as 10m"),
        ("limit" = Option<u32>, Query, description = "At most this many (default 100)")),
    responses((status = 200, body = Vec<Event>)))]
pub(crate) async fn service_events(
    State(app): State<AppState>,
    ServiceName(name): ServiceName,
    q: QueryParams,
) -> Result<Json<Vec<Event>>, ApiError> {
    q.only(&["instance", "kind", "since", "limit", "after", "order"])?;
    let query = event_query(&q, Some(name.to_string()))?;
    Ok(Json(app.registry.events(&query).await?))
}

/// Live events as Server-Sent Events. Resumes after `Last-Event-ID` (or `after`) from the
/// store, then follows live; each SSE `id` is the event id.
#[utoipa::path(get, path = "/v1/events/stream", tag = "events",
    params(("service" = Option<String>, Query, description = "Only this service"),
        ("kind" = Option<String>, Query, description = "Comma-separated kinds"),
        ("after" = Option<i64>, Query, description = "Replay stored events after this id first")),
    responses((status = 200, description = "text/event-stream of Event objects, SSE event type = kind")))]
pub(crate) async fn stream_events(
    State(app): State<AppState>,
    headers: HeaderMap,
    q: QueryParams,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    q.only(&["service", "instance", "kind", "after"])?;
    let mut filter = event_query(&q, None)?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
        .or(filter.after_id);
    filter.order = Order::OldestFirst;
    filter.limit = MAX_EVENT_PAGE;
    // Subscribe before reading the backlog so nothing falls between the two.
    let mut live = app.registry.subscribe();
    let registry = app.registry.clone();
    let shutdown = app.shutdown.clone();
    // Without a resume point the stream starts after the newest stored event, so a lag
    // later catches up from there, never from the start of history.
    let start = match resume {
        Some(id) => id,
        None => {
            let newest = EventQuery {
                limit: 1,
                ..EventQuery::default()
            };
            app.registry
                .events(&newest)
                .await?
                .first()
                .map_or(0, |e| e.id)
        }
    };
    let stream = async_stream(shutdown, move |tx| async move {
        let mut last = start;
        if resume.is_some() && !catch_up(&registry, &filter, &mut last, &tx).await {
            return;
        }
        loop {
            match live.recv().await {
                Ok(e) => {
                    if e.id <= last || !filter.matches(&e) {
                        continue;
                    }
                    last = e.id;
                    if tx.send(sse(&e)).await.is_err() {
                        return;
                    }
                }
                // Too slow for the live feed: catch up from the store.
                Err(RecvError::Lagged(_)) => {
                    if !catch_up(&registry, &filter, &mut last, &tx).await {
                        return;
                    }
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(StdDuration::from_secs(15))))
}

/// Sends every stored event after `last` that passes `filter`, page by page; false when
/// the client left or the store failed (the stream then ends, and the client resumes with
/// `Last-Event-ID`).
async fn catch_up(
    registry: &ieum_registry::Registry,
    filter: &EventQuery,
    last: &mut i64,
    tx: &tokio::sync::mpsc::Sender<Result<SseEvent, Infallible>>,
) -> bool {
    loop {
        let page = match registry
            .events(&EventQuery {
                after_id: Some(*last),
                ..filter.clone()
            })
            .await
        {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "event stream: cannot read stored events");
                return false;
            }
        };
        let full = page.len() >= filter.limit as usize;
        for e in page {
            *last = e.id;
            if tx.send(sse(&e)).await.is_err() {
                return false;
            }
        }
        if !full {
            return true;
        }
    }
}

fn sse(e: &Event) -> Result<SseEvent, Infallible> {
    let data = serde_json::to_string(e).unwrap_or_default();
    Ok(SseEvent::default()
        .id(e.id.to_string())
        .event(e.kind.as_str())
        .data(data))
}

/// A stream fed by a task through a small channel; the task ends when the client leaves or
/// the server shuts down (so graceful shutdown does not wait on open streams).
fn async_stream<F, Fut>(
    shutdown: tokio_util::sync::CancellationToken,
    f: F,
) -> impl Stream<Item = Result<SseEvent, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<SseEvent, Infallible>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let task = f(tx);
    tokio::spawn(async move {
        tokio::select! {
            () = task => {}
            () = shutdown.cancelled() => {}
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
