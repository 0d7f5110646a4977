//! `memory` PubSubs hosted by the server, so sidecars of different services (different
//! processes) share them: the server keeps `ieum_bridge`'s in-process broker and sidecars
//! reach it over HTTP (`ieum_bridge`'s hosted client broker).
//!
//! - `POST /v1/pubsubs/{name}/topics/{topic}/events`: publish one CloudEvent (structured
//!   JSON) → 204 once queued for every group of the topic.
//! - `POST /v1/pubsubs/{name}/topics/{topic}/subscriptions` `{group, consumer,
//!   maxInFlight, deadLetterTopic}` → 201 `{id}`: the group exists once this answers, so
//!   events published from then on are kept for it.
//! - `POST /v1/pubsubs/{name}/subscriptions/{id}/fetch?max=N&wait=20s`: up to `N` events,
//!   each under a lease, waiting at most `wait` for the first (a long poll).
//! - `POST /v1/pubsubs/{name}/subscriptions/{id}/leases/{lease}` `{action}`: `ack`, `nack`
//!   (with `delay`), `deadLetter` (with `reason`) or `release` → 204.
//!
//! A lease not settled within the PubSub's `redeliverAfter` ends and its event goes back
//! to the front of the queue, one attempt higher (its sidecar died). A subscription not
//! fetched or settled for a minute is released with its leases. A subscription holds at
//! most its `maxInFlight` leases, and the server at most 10,000
//! subscriptions; a group keeps at most 100,000 unconsumed events. Nothing survives a
//! restart: sidecars subscribe again when a fetch answers 404.
//!
//! The hub is a broker the server runs, not registry state, so it lives here beside its
//! handlers (`Hosted`); the handlers themselves only parse and map.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use ieum_bridge::{Broker, BrokerError, CloudEvent, Delivery, MemoryBroker};
use ieum_model::bridge::{BrokerType, MAX_IN_FLIGHT, PubSubSpec};
use ieum_model::resource::Kind;
use ieum_registry::{Registry, RegistryError};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::{ApiError, ErrorBody};
use crate::extract::{JsonBody, QueryParams};

/// Most subscriptions the server hosts at once.
const MAX_SUBSCRIPTIONS: usize = 10_000;
/// Longest `wait` of a fetch.
const MAX_WAIT: Duration = Duration::from_secs(20);
/// Most deliveries one fetch hands out.
const MAX_FETCH: usize = 1_000;
/// A subscription nobody fetched or settled for this long is released.
const IDLE: Duration = Duration::from_secs(60);
/// How often leases and subscriptions are checked for expiry.
const SWEEP: Duration = Duration::from_millis(200);
/// Largest event accepted: the sidecar takes 4 MiB bodies, which base64 makes larger.
const MAX_EVENT: usize = 8 * 1024 * 1024;
/// The header naming a publish's ordering key (as the sidecar's publish API).
const ORDERING_KEY: &str = "ieum-ordering-key";

/// The hosted PubSubs' subscriptions and their leases.
pub(crate) struct Hosted {
    registry: Registry,
    shutdown: CancellationToken,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    /// Set once the task that expires leases and idle subscriptions runs.
    sweeping: std::sync::atomic::AtomicBool,
    /// How long a subscription may go without a fetch or a settle ([`IDLE`]).
    idle: Duration,
}

/// One consumer's subscription to a group of a topic.
struct Session {
    id: String,
    pubsub: String,
    broker: MemoryBroker,
    topic: String,
    group: String,
    consumer: String,
    dead_letter_topic: Option<String>,
    /// Most leases held at once.
    max_in_flight: usize,
    /// How long a lease lasts: the PubSub's `redeliverAfter`.
    redeliver_after: Duration,
    state: Mutex<SessionState>,
    /// One fetch at a time, so the in-flight bound holds.
    fetch: tokio::sync::Mutex<()>,
}

struct SessionState {
    leases: HashMap<String, Lease>,
    last_seen: Instant,
    /// Fetches waiting now: such a subscription is not idle.
    fetching: usize,
}

/// A delivery handed out and not settled yet. Dropped, its event goes back to the front
/// of the queue.
struct Lease {
    delivery: Delivery,
    deadline: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `POST …/subscriptions`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct SubscribeRequest {
    /// The consumer group: its members share the events, every group gets each event.
    group: String,
    /// This consumer's name within the group (the instance id), for the server's log.
    #[serde(default)]
    consumer: Option<String>,
    /// Most leases held at once (1–10,000; 32).
    #[serde(default)]
    max_in_flight: Option<u32>,
    /// Where a `deadLetter` settle publishes the event.
    #[serde(default)]
    dead_letter_topic: Option<String>,
}

/// The answer to a subscribe (`201`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Subscribed {
    /// The subscription's id, for fetches and settles.
    id: String,
    /// How long a lease lasts (the PubSub's `redeliverAfter`).
    redeliver_after: ieum_model::Duration,
    /// Where to fetch.
    fetch: String,
}

/// The answer to a fetch.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Fetched {
    /// In the order the queue held them.
    deliveries: Vec<Leased>,
}

/// One delivery under a lease.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Leased {
    /// Settle it with `POST …/leases/{lease}` within `redeliverAfter`.
    lease: String,
    /// 1 for the first delivery, 2 for the first redelivery, and so on.
    attempt: u32,
    /// The CloudEvent in structured JSON.
    #[schema(value_type = Object)]
    event: Box<RawValue>,
}

/// `POST …/leases/{lease}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct SettleRequest {
    /// What to do with the event.
    action: SettleAction,
    /// `nack`: deliver it again after this long (at most 1h; 0s).
    #[serde(default)]
    delay: Option<ieum_model::Duration>,
    /// `deadLetter`: why (the `deadletterreason` extension).
    #[serde(default)]
    reason: Option<String>,
}

/// How a lease is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) enum SettleAction {
    /// Done: the event is forgotten.
    Ack,
    /// Not done: delivered again after `delay`, one attempt higher.
    Nack,
    /// Published to the subscription's dead-letter topic (or discarded without one), then
    /// forgotten.
    DeadLetter,
    /// Given back at once, to the front of the queue (the consumer stopped).
    Release,
}

/// The routes of the hosted PubSubs.
pub(crate) fn routes<S>(registry: Registry, shutdown: CancellationToken) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let hosted = Arc::new(Hosted::new(registry, shutdown, IDLE));
    Router::new()
        .route(
            "/v1/pubsubs/{name}/topics/{topic}/events",
            post(publish).layer(DefaultBodyLimit::max(MAX_EVENT)),
        )
        .route(
            "/v1/pubsubs/{name}/topics/{topic}/subscriptions",
            post(subscribe),
        )
        .route("/v1/pubsubs/{name}/subscriptions/{id}/fetch", post(fetch))
        .route(
            "/v1/pubsubs/{name}/subscriptions/{id}/leases/{lease}",
            post(settle),
        )
        .with_state(hosted)
}

type HostedState = State<Arc<Hosted>>;

fn bad_topic(field: &str, why: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "E3010", format!("{field} {why}")).field(field)
}

fn unknown_subscription(name: &str, id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "E3103",
        format!(
            "PubSub/{name} has no subscription `{id}`: it was released (idle for a minute, or the server restarted); subscribe again"
        ),
    )
}

impl Hosted {
    fn new(registry: Registry, shutdown: CancellationToken, idle: Duration) -> Self {
        Hosted {
            registry,
            shutdown,
            sessions: Mutex::default(),
            sweeping: std::sync::atomic::AtomicBool::new(false),
            idle,
        }
    }

    /// The `memory` PubSub `name` as applied, and its broker.
    async fn pubsub(&self, name: &str) -> Result<(MemoryBroker, PubSubSpec), ApiError> {
        let stored = match self.registry.resource(Kind::PubSub, name).await {
            Ok(r) => r,
            Err(RegistryError::NotFound(_)) => {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "E3101",
                    format!(
                        "no PubSub named `{name}` is applied on this server: apply a `kind: PubSub` named {name} with `spec: {{type: memory}}`"
                    ),
                )
                .field("name"));
            }
            Err(e) => return Err(e.into()),
        };
        let spec: PubSubSpec = serde_json::from_value(stored.spec).map_err(|e| {
            tracing::error!(pubsub = name, error = %e, "a stored PubSub cannot be read");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "E1500",
                format!("PubSub/{name} as stored cannot be read ({e}): apply it again"),
            )
        })?;
        if spec.kind != BrokerType::Memory {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "E3101",
                format!(
                    "PubSub/{name} is of type {}, not memory: the server hosts only `memory` PubSubs; sidecars connect to a {} broker themselves",
                    spec.kind.as_str(),
                    spec.kind.as_str()
                ),
            )
            .field("name"));
        }
        let broker = MemoryBroker::named(name, spec.cloud_events.mode);
        Ok((broker, spec))
    }

    /// Publishes `event` to `topic` of the `memory` PubSub `name`.
    async fn publish(
        &self,
        name: &str,
        topic: &str,
        event: &CloudEvent,
        ordering_key: Option<&str>,
    ) -> Result<(), ApiError> {
        let (broker, _) = self.pubsub(name).await?;
        ieum_model::bridge::validate_topic(topic).map_err(|why| bad_topic("topic", why))?;
        Broker::publish(&broker, topic, event, ordering_key)
            .await
            .map_err(|e| match e {
                BrokerError::Event(e) => ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "E3102",
                    format!("not a valid CloudEvent: {e}"),
                ),
                BrokerError::Topic { reason, .. } => bad_topic("topic", reason),
                other => ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "E3106",
                    format!("PubSub/{name} cannot take the event now: {other}"),
                ),
            })
    }

    /// Creates a subscription (and the group it reads, when missing).
    async fn subscribe(
        self: &Arc<Self>,
        name: &str,
        topic: &str,
        req: SubscribeRequest,
    ) -> Result<Subscribed, ApiError> {
        let (broker, spec) = self.pubsub(name).await?;
        ieum_model::bridge::validate_topic(topic).map_err(|why| bad_topic("topic", why))?;
        ieum_model::bridge::validate_topic(&req.group).map_err(|why| bad_topic("group", why))?;
        if let Some(dlt) = &req.dead_letter_topic {
            ieum_model::bridge::validate_topic(dlt)
                .map_err(|why| bad_topic("deadLetterTopic", why))?;
            if dlt == topic {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "E3014",
                    "the dead-letter topic must differ from the topic",
                )
                .field("deadLetterTopic"));
            }
        }
        let max_in_flight = req
            .max_in_flight
            .unwrap_or(ieum_model::bridge::DEFAULT_MAX_IN_FLIGHT);
        if !(1..=MAX_IN_FLIGHT).contains(&max_in_flight) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "E3013",
                format!("must be 1–{MAX_IN_FLIGHT} (is {max_in_flight})"),
            )
            .field("maxInFlight"));
        }
        let consumer = req.consumer.unwrap_or_default();
        if consumer.len() > 256 || consumer.chars().any(char::is_control) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "E1005",
                "must be at most 256 printable characters",
            )
            .field("consumer"));
        }
        broker
            .join(topic, &req.group)
            .map_err(|e| bad_topic("topic", e.to_string()))?;
        let id = ieum_bridge::cloudevents::new_id();
        let session = Arc::new(Session {
            id: id.clone(),
            pubsub: name.to_owned(),
            broker,
            topic: topic.to_owned(),
            group: req.group,
            consumer,
            dead_letter_topic: req.dead_letter_topic,
            max_in_flight: usize::try_from(max_in_flight).unwrap_or(1),
            redeliver_after: spec.redeliver_after.get(),
            state: Mutex::new(SessionState {
                leases: HashMap::new(),
                last_seen: Instant::now(),
                fetching: 0,
            }),
            fetch: tokio::sync::Mutex::new(()),
        });
        {
            let mut sessions = lock(&self.sessions);
            if sessions.len() >= MAX_SUBSCRIPTIONS {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "E3105",
                    format!(
                        "the server hosts {MAX_SUBSCRIPTIONS} subscriptions already: retry once idle ones are released (after a minute), or use a real broker"
                    ),
                ));
            }
            sessions.insert(id.clone(), session.clone());
        }
        tracing::debug!(pubsub = name, topic, group = %session.group, consumer = %session.consumer, %id, "subscribed");
        self.start_sweeping();
        Ok(Subscribed {
            fetch: format!("/v1/pubsubs/{name}/subscriptions/{id}/fetch"),
            id,
            redeliver_after: spec.redeliver_after,
        })
    }

    /// The subscription `id` of `name`, marked as fetching (until the guard is dropped).
    fn enter(&self, name: &str, id: &str) -> Result<(Arc<Session>, Fetching), ApiError> {
        let sessions = lock(&self.sessions);
        let session = sessions
            .get(id)
            .filter(|s| s.pubsub == name)
            .cloned()
            .ok_or_else(|| unknown_subscription(name, id))?;
        {
            let mut state = lock(&session.state);
            state.fetching += 1;
            state.last_seen = Instant::now();
        }
        drop(sessions);
        Ok((session.clone(), Fetching(session)))
    }

    /// Up to `max` deliveries of the subscription `id`, each under a lease; waits at most
    /// `wait` for the first.
    async fn fetch(
        &self,
        name: &str,
        id: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Leased>, ApiError> {
        let (session, _fetching) = self.enter(name, id)?;
        let _one = session.fetch.lock().await;
        let room = session
            .max_in_flight
            .saturating_sub(lock(&session.state).leases.len());
        let n = max.min(room).min(MAX_FETCH);
        if n == 0 {
            return Ok(Vec::new());
        }
        let pulled = tokio::select! {
            () = self.shutdown.cancelled() => return Ok(Vec::new()),
            r = session.broker.pull(&session.topic, &session.group, n, wait, session.dead_letter_topic.as_deref()) => r,
        };
        let deliveries = pulled.map_err(|e| bad_topic("topic", e.to_string()))?;
        let deadline = Instant::now() + session.redeliver_after;
        let mut out = Vec::with_capacity(deliveries.len());
        let mut state = lock(&session.state);
        for delivery in deliveries {
            let lease = ieum_bridge::cloudevents::new_id();
            let json = String::from_utf8(delivery.event.to_json()).unwrap_or_default();
            let Ok(event) = RawValue::from_string(json) else {
                // Cannot happen (to_json writes JSON); the event goes back when dropped.
                continue;
            };
            out.push(Leased {
                lease: lease.clone(),
                attempt: delivery.attempt,
                event,
            });
            state.leases.insert(lease, Lease { delivery, deadline });
        }
        state.last_seen = Instant::now();
        Ok(out)
    }

    /// Settles one lease.
    async fn settle(
        &self,
        name: &str,
        id: &str,
        lease: &str,
        req: SettleRequest,
    ) -> Result<(), ApiError> {
        let delay = req.delay.map(|d| d.get()).unwrap_or_default();
        if delay > Duration::from_secs(3600) {
            return Err(
                ApiError::new(StatusCode::BAD_REQUEST, "E1005", "must be at most 1h")
                    .field("delay"),
            );
        }
        let session = lock(&self.sessions)
            .get(id)
            .filter(|s| s.pubsub == name)
            .cloned()
            .ok_or_else(|| unknown_subscription(name, id))?;
        let taken = {
            let mut state = lock(&session.state);
            state.last_seen = Instant::now();
            state.leases.remove(lease)
        };
        let Some(Lease { delivery, .. }) = taken else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "E3104",
                format!(
                    "lease `{lease}` of subscription `{id}` is not held: it was settled, or it ran out (redeliverAfter) and the event was given back for another delivery"
                ),
            ));
        };
        let result = match req.action {
            SettleAction::Ack => delivery.ack().await,
            SettleAction::Nack => delivery.nack(delay).await,
            SettleAction::DeadLetter => {
                let reason = req
                    .reason
                    .as_deref()
                    .unwrap_or("dead-lettered by the consumer");
                delivery.dead_letter(reason).await
            }
            SettleAction::Release => {
                drop(delivery);
                Ok(())
            }
        };
        result.map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "E3106",
                format!("PubSub/{name}: the lease could not be settled: {e}"),
            )
        })
    }

    /// Starts the task that ends leases past their deadline and releases idle
    /// subscriptions (once).
    fn start_sweeping(self: &Arc<Self>) {
        if self
            .sweeping
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        let weak: Weak<Hosted> = Arc::downgrade(self);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Some(hosted) = weak.upgrade() else {
                    return;
                };
                hosted.sweep(Instant::now());
            }
        });
    }

    /// Ends the leases past their deadline (their events go back to the front of their
    /// queue) and releases subscriptions idle for [`Hosted::idle`].
    fn sweep(&self, now: Instant) {
        let mut released = Vec::new();
        {
            let mut sessions = lock(&self.sessions);
            sessions.retain(|_, s| {
                let mut state = lock(&s.state);
                let idle = state.fetching == 0 && now.duration_since(state.last_seen) >= self.idle;
                if idle {
                    released.push((s.clone(), std::mem::take(&mut state.leases)));
                }
                !idle
            });
        }
        for (s, leases) in released {
            tracing::info!(pubsub = %s.pubsub, topic = %s.topic, group = %s.group, consumer = %s.consumer, id = %s.id, unsettled = leases.len(), "released a subscription nobody fetched for {:?}", self.idle);
            drop(leases);
        }
        let sessions: Vec<Arc<Session>> = lock(&self.sessions).values().cloned().collect();
        for s in sessions {
            let expired: Vec<Lease> = {
                let mut state = lock(&s.state);
                let ids: Vec<String> = state
                    .leases
                    .iter()
                    .filter(|(_, l)| l.deadline <= now)
                    .map(|(id, _)| id.clone())
                    .collect();
                ids.iter()
                    .filter_map(|id| state.leases.remove(id))
                    .collect()
            };
            if !expired.is_empty() {
                tracing::info!(pubsub = %s.pubsub, topic = %s.topic, group = %s.group, consumer = %s.consumer, count = expired.len(), "deliveries not settled within redeliverAfter go back to the queue");
            }
            // Dropped unsettled: each goes back to the front of its queue.
            drop(expired);
        }
    }
}

/// Marks a subscription as fetching while alive, so it is not released as idle.
struct Fetching(Arc<Session>);

impl Drop for Fetching {
    fn drop(&mut self) {
        let mut state = lock(&self.0.state);
        state.fetching = state.fetching.saturating_sub(1);
        state.last_seen = Instant::now();
    }
}

/// `POST /v1/pubsubs/{name}/topics/{topic}/events`: queues one CloudEvent for every group
/// of the topic. The body is the event in structured JSON; `ieum-ordering-key` (or the
/// event's `partitionkey`) is the ordering key.
#[utoipa::path(post, path = "/v1/pubsubs/{name}/topics/{topic}/events", tag = "pubsubs",
    params(("name" = String, Path, description = "A PubSub of type memory"),
        ("topic" = String, Path, description = "The topic"),
        ("ieum-ordering-key" = Option<String>, Header, description = "Written to the event's partitionkey")),
    request_body(content = Object, content_type = "application/cloudevents+json", description = "A CloudEvent in structured JSON"),
    responses((status = 204, description = "Queued for every group of the topic"),
        (status = 400, body = ErrorBody, description = "Not a valid CloudEvent (E3102), topic (E3010) or ordering key"),
        (status = 404, body = ErrorBody, description = "No PubSub of that name and type memory (E3101)"),
        (status = 503, body = ErrorBody, description = "A group of the topic is full (E3106)")))]
pub(crate) async fn publish(
    State(hosted): HostedState,
    Path((name, topic)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let event = CloudEvent::from_json(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "E3102",
            format!(
                "not a valid CloudEvent: {e}; send one event in structured JSON (application/cloudevents+json)"
            ),
        )
    })?;
    let key = match headers.get(ORDERING_KEY) {
        None => None,
        Some(v) => Some(v.to_str().ok().filter(|k| !k.is_empty()).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "E1005",
                format!("the {ORDERING_KEY} header must be non-empty printable ASCII"),
            )
            .field(ORDERING_KEY)
        })?),
    };
    hosted.publish(&name, &topic, &event, key).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/pubsubs/{name}/topics/{topic}/subscriptions`: subscribes a consumer to a
/// group of the topic. The group keeps every event published once this answers.
#[utoipa::path(post, path = "/v1/pubsubs/{name}/topics/{topic}/subscriptions", tag = "pubsubs",
    params(("name" = String, Path, description = "A PubSub of type memory"),
        ("topic" = String, Path, description = "The topic")),
    request_body = SubscribeRequest,
    responses((status = 201, body = Subscribed),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "No PubSub of that name and type memory (E3101)"),
        (status = 503, body = ErrorBody, description = "Too many subscriptions (E3105)")))]
pub(crate) async fn subscribe(
    State(hosted): HostedState,
    Path((name, topic)): Path<(String, String)>,
    JsonBody(req): JsonBody<SubscribeRequest>,
) -> Result<Response, ApiError> {
    let subscribed = hosted.subscribe(&name, &topic, req).await?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, subscribed.fetch.clone())],
        Json(subscribed),
    )
        .into_response())
}

/// `POST /v1/pubsubs/{name}/subscriptions/{id}/fetch?max=N&wait=D`: up to `max` events
/// (1; at most the subscription's free places), each under a lease of `redeliverAfter`,
/// waiting at most `wait` (0s; at most 20s) for the first. `max=0` only keeps the
/// subscription alive.
#[utoipa::path(post, path = "/v1/pubsubs/{name}/subscriptions/{id}/fetch", tag = "pubsubs",
    params(("name" = String, Path, description = "The PubSub"),
        ("id" = String, Path, description = "The subscription"),
        ("max" = Option<u32>, Query, description = "At most this many (0 to 1000; 1)"),
        ("wait" = Option<String>, Query, description = "Wait this long for a first event (at most 20s; 0s)")),
    responses((status = 200, body = Fetched),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "The subscription was released (E3103): subscribe again")))]
pub(crate) async fn fetch(
    State(hosted): HostedState,
    Path((name, id)): Path<(String, String)>,
    q: QueryParams,
) -> Result<Json<Fetched>, ApiError> {
    q.only(&["max", "wait"])?;
    let max = q
        .parse("max", |s| {
            s.parse::<usize>()
                .ok()
                .filter(|n| *n <= MAX_FETCH)
                .ok_or_else(|| format!("must be a number from 0 to {MAX_FETCH}"))
        })?
        .unwrap_or(1);
    let wait = q
        .parse("wait", |s| {
            let d: ieum_model::Duration = s.parse().map_err(|e| format!("{e}"))?;
            if d.get() > MAX_WAIT {
                return Err(format!(
                    "must be at most {}",
                    ieum_model::Duration::from(MAX_WAIT)
                ));
            }
            Ok(d.get())
        })?
        .unwrap_or_default();
    let deliveries = hosted.fetch(&name, &id, max, wait).await?;
    Ok(Json(Fetched { deliveries }))
}

/// `POST /v1/pubsubs/{name}/subscriptions/{id}/leases/{lease}`: settles a delivery.
#[utoipa::path(post, path = "/v1/pubsubs/{name}/subscriptions/{id}/leases/{lease}", tag = "pubsubs",
    params(("name" = String, Path, description = "The PubSub"),
        ("id" = String, Path, description = "The subscription"),
        ("lease" = String, Path, description = "The lease of a fetched delivery")),
    request_body = SettleRequest,
    responses((status = 204, description = "Settled"),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "Unknown subscription (E3103), or a lease settled or run out (E3104)")))]
pub(crate) async fn settle(
    State(hosted): HostedState,
    Path((name, id, lease)): Path<(String, String, String)>,
    JsonBody(req): JsonBody<SettleRequest>,
) -> Result<StatusCode, ApiError> {
    hosted.settle(&name, &id, &lease, req).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests;
