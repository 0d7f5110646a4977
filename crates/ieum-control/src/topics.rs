//! Events as sidecars report them: `GET /v1/topics` (who publishes and consumes what, with
//! rates and failures), `GET /v1/topics/{pubsub}/{topic}` (one topic with its latest single
//! events) and `GET /v1/correlations/{id}` (every event reported with one correlation id,
//! in order). Read-only views of memory kept one hour, like the golden signals.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use ieum_model::Duration;
use ieum_model::telemetry::EventSighting;
use ieum_registry::registry::TopicView;
use serde::Serialize;

use crate::AppState;
use crate::api::parse_since;
use crate::error::{ApiError, ErrorBody};
use crate::extract::QueryParams;

/// Default span of `since`.
const DEFAULT_SPAN: Duration = Duration::from_secs(600);
/// Default and largest number of single events on a topic.
const EVENTS: (usize, usize) = (50, 1000);

/// `GET /v1/topics`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TopicList {
    /// Every topic with events reported since `since`, by `PubSub` and topic.
    topics: Vec<TopicView>,
}

/// `GET /v1/topics/{pubsub}/{topic}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TopicDetail {
    /// Publishers and consumers with their counts.
    #[serde(flatten)]
    topic: TopicView,
    /// The latest single events reported on it, newest first.
    events: Vec<EventSighting>,
}

/// Topics with events reported by sidecars since `since`, with their publishers and
/// consumers.
#[utoipa::path(get, path = "/v1/topics", tag = "events",
    params(("since" = Option<String>, Query, description = "RFC 3339 time, or a duration ago such as 10m (default 10m)")),
    responses((status = 200, body = TopicList), (status = 400, body = ErrorBody)))]
pub(crate) async fn list(
    State(app): State<AppState>,
    q: QueryParams,
) -> Result<Json<TopicList>, ApiError> {
    q.only(&["since"])?;
    let since = q
        .parse("since", parse_since)?
        .unwrap_or_else(|| app.registry.now().minus(DEFAULT_SPAN));
    Ok(Json(TopicList {
        topics: app.registry.topics(since),
    }))
}

/// One topic: publishers, consumers and its latest single events (every dead letter and
/// drop, every correlated event, a few samples of the rest).
#[utoipa::path(get, path = "/v1/topics/{pubsub}/{topic}", tag = "events",
    params(("pubsub" = String, Path, description = "PubSub (or Binding) name"),
        ("topic" = String, Path, description = "Topic"),
        ("since" = Option<String>, Query, description = "RFC 3339 time, or a duration ago such as 10m (default 10m)"),
        ("limit" = Option<usize>, Query, description = "Most single events (default 50, at most 1000)")),
    responses((status = 200, body = TopicDetail), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn get(
    State(app): State<AppState>,
    Path((pubsub, topic)): Path<(String, String)>,
    q: QueryParams,
) -> Result<Json<TopicDetail>, ApiError> {
    q.only(&["since", "limit"])?;
    let since = q
        .parse("since", parse_since)?
        .unwrap_or_else(|| app.registry.now().minus(DEFAULT_SPAN));
    let limit = q
        .parse("limit", |s| match s.parse::<usize>() {
            Ok(n) if (1..=EVENTS.1).contains(&n) => Ok(n),
            _ => Err(format!("`{s}`: use a number from 1 to {}", EVENTS.1)),
        })?
        .unwrap_or(EVENTS.0);
    let events = app.registry.topic_events(&pubsub, &topic, limit);
    let view = app
        .registry
        .topics(since)
        .into_iter()
        .find(|t| t.pubsub == pubsub && t.topic == topic);
    let topic = match view {
        Some(v) => v,
        None if !events.is_empty() => TopicView {
            pubsub,
            topic,
            ..TopicView::default()
        },
        None => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "E1404",
                format!(
                    "no events reported on {pubsub}/{topic} since {since}: topics appear once an app publishes or consumes through a sidecar"
                ),
            ));
        }
    };
    Ok(Json(TopicDetail { topic, events }))
}

/// Every event reported with the `correlationid` extension `id` (kept one hour), in the
/// order the sidecars saw them; an empty list when there is none.
#[utoipa::path(get, path = "/v1/correlations/{id}", tag = "events",
    params(("id" = String, Path, description = "The correlation id")),
    responses((status = 200, body = Vec<EventSighting>)))]
pub(crate) async fn correlation(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Json<Vec<EventSighting>> {
    Json(app.registry.correlation(&id))
}
