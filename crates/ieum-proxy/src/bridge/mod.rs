//! The sidecar bridge: publish, subscribe and bindings over the brokers of `ieum-bridge`.
//!
//! ```text
//!  app ──POST /v1/publish/{pubsub}/{topic}──► outbound (own API) ──► broker   (204 once acked)
//!  app ──POST /v1/bindings/{name}───────────► outbound (own API) ──► broker
//!  broker ──► subscription runner ──POST route (CloudEvent)──► app   2xx ack · RETRY/5xx nack
//!                                                                   DROP / exhausted → dead letter
//! ```
//!
//! - `resources`: `PubSub`, `Subscription` and `Binding` read from the snapshot, and the
//!   subscriptions the app declares (`GET /ieum/subscriptions`).
//! - `publish`: the two endpoints of the sidecar's own API.
//! - `deliver`: one runner per subscription — subscribe (retrying while the broker is
//!   unreachable), then deliver each event to the app with per-key order, at most
//!   `maxInFlight` at once, and settle it by the app's answer.
//! - `metrics`: `ieum_events_*_total` per `pubsub`, `topic`, `direction`.
//!
//! Brokers are connected lazily, once per `PubSub` (and content mode), on the first
//! publish or subscription that needs one; a changed `PubSub` (a new revision) is a new
//! connection, and the subscriptions using it restart. Subscriptions run only once the
//! lifecycle activated them ([`crate::Sidecar::start_subscriptions`], when the app is
//! healthy) and follow every snapshot after that: a subscription that appears starts, one
//! that disappears stops fetching and finishes what it handed out.
//!
//! **Invariant:** an event is acknowledged to the broker only after the app answered
//! 2xx, or after it was dead-lettered (or deliberately discarded); anything else is left
//! to the broker, which redelivers it (at-least-once).

mod deliver;
mod metrics;
mod publish;
mod resources;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use ieum_bridge::{Broker, BrokerError};
use ieum_client::Snapshot;
use ieum_model::bridge::{ContentMode, PubSubSpec};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

pub use metrics::TopicTraffic;
pub(crate) use metrics::{EventMetrics, Outcome};
pub(crate) use publish::{handle as own_api, is_bridge_path};
use resources::{Resources, Wanted};

use crate::Shared;
use crate::upstream::Clients;

/// How the lifecycle activates subscriptions.
#[derive(Debug, Clone)]
pub struct BridgeOptions {
    /// This consumer's stable name within its groups (the instance id), so a restarted
    /// sidecar resumes what it left unacknowledged where the broker supports it (Redis
    /// Streams, MQTT).
    pub consumer: String,
    /// Ask the app which subscriptions it wants (`GET /ieum/subscriptions`).
    pub ask_app: bool,
}

/// What activating subscriptions found.
#[derive(Debug, Clone, Default)]
pub struct BridgeStart {
    /// Subscriptions the app declared (and that were valid).
    pub declared_by_app: usize,
    /// Problems worth a line in the log: what the app answered that is not usable.
    pub warnings: Vec<String>,
}

/// The state of one subscription, as `/subscriptions` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "state", content = "reason")]
pub(crate) enum RunState {
    /// Subscribing.
    Starting,
    /// Subscribed: events published from now on are delivered.
    Active,
    /// Subscribing failed (retried with backoff), or the subscription ended.
    Failed(String),
}

/// A running subscription.
struct Runner {
    wanted: Wanted,
    state: Arc<Mutex<RunState>>,
    stop: CancellationToken,
}

/// Broker connections by `PubSub` name and content-mode override.
type Slots = HashMap<(String, Option<ContentMode>), Arc<Slot>>;

/// One broker connection slot: connected on first use.
struct Slot {
    revision: i64,
    conn: tokio::sync::Mutex<Option<Arc<dyn Broker>>>,
}

#[derive(Default)]
struct State {
    /// Set once subscriptions are activated.
    activation: Option<BridgeOptions>,
    /// What the app declared at activation.
    app_declared: Vec<ieum_model::bridge::SubscriptionSpec>,
    runners: HashMap<String, Runner>,
}

/// The bridge's part of the sidecar's shared state.
pub(crate) struct Bridge {
    resources: RwLock<Arc<Resources>>,
    fingerprint: Mutex<crate::config::Fingerprint>,
    brokers: Mutex<Slots>,
    state: Mutex<State>,
    /// Bumped on every change of a runner's state, for waiters.
    changed: tokio::sync::watch::Sender<u64>,
    pub(crate) metrics: EventMetrics,
    /// Deliveries to the app and the subscription question.
    pub(crate) client: Clients<Full<Bytes>>,
    /// Stops every runner's fetching (drain, shutdown).
    stop: CancellationToken,
    /// The server that hosts `type: memory` PubSubs, once the lifecycle named it: without
    /// one they are this process's own.
    memory_host: std::sync::OnceLock<ieum_bridge::MemoryHost>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Bridge {
    pub(crate) fn new(snapshot: &Snapshot, service: &str, stop: CancellationToken) -> Bridge {
        Bridge {
            resources: RwLock::new(Arc::new(Resources::from_snapshot(snapshot, service))),
            fingerprint: Mutex::new(crate::config::fingerprint(snapshot)),
            brokers: Mutex::default(),
            state: Mutex::default(),
            changed: tokio::sync::watch::Sender::new(0),
            metrics: EventMetrics::default(),
            client: Clients::new(),
            stop,
            memory_host: std::sync::OnceLock::new(),
        }
    }

    /// Sends `type: memory` PubSubs to `host` (set once, before the first use).
    pub(crate) fn set_memory_host(&self, host: ieum_bridge::MemoryHost) {
        if self.memory_host.set(host).is_err() {
            tracing::warn!("the server hosting memory PubSubs is set already; keeping the first");
        }
    }

    pub(crate) fn resources(&self) -> Arc<Resources> {
        self.resources
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Follows a snapshot: new resources, then the subscriptions they imply.
    pub(crate) fn on_snapshot(shared: &Arc<Shared>, snapshot: &Snapshot) {
        let bridge = &shared.bridge;
        let fingerprint = crate::config::fingerprint(snapshot);
        {
            let mut current = lock(&bridge.fingerprint);
            if *current == fingerprint {
                return;
            }
            *current = fingerprint;
        }
        let fresh = Resources::from_snapshot(snapshot, &shared.service);
        for p in &fresh.problems {
            tracing::warn!(problem = %p, "ignoring a bridge resource this sidecar cannot read");
        }
        *bridge
            .resources
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(fresh);
        Bridge::reconcile(shared);
    }

    /// The connection to `pubsub` (connecting now if there is none), in its own content
    /// mode or `mode` when given (raw bindings use binary mode, so payloads stay as is).
    pub(crate) async fn broker(
        &self,
        pubsub: &str,
        spec: &PubSubSpec,
        revision: i64,
        mode: Option<ContentMode>,
    ) -> Result<Arc<dyn Broker>, BrokerError> {
        let slot = {
            let mut brokers = lock(&self.brokers);
            let slot = brokers.entry((pubsub.to_owned(), mode)).or_insert_with(|| {
                Arc::new(Slot {
                    revision,
                    conn: tokio::sync::Mutex::new(None),
                })
            });
            if slot.revision != revision {
                // A changed PubSub: a new connection. Users of the old one keep it until
                // they stop (subscriptions restart with the new revision).
                *slot = Arc::new(Slot {
                    revision,
                    conn: tokio::sync::Mutex::new(None),
                });
            }
            slot.clone()
        };
        let mut conn = slot.conn.lock().await;
        if let Some(b) = &*conn {
            return Ok(b.clone());
        }
        let mut spec = spec.clone();
        if let Some(mode) = mode {
            spec.cloud_events.mode = mode;
        }
        let options = ieum_bridge::ConnectOptions {
            memory_host: self.memory_host.get().cloned(),
        };
        let broker = ieum_bridge::connect_with(pubsub, &spec, &options).await?;
        tracing::info!(
            pubsub,
            broker = spec.kind.as_str(),
            "connected to the broker"
        );
        *conn = Some(broker.clone());
        Ok(broker)
    }

    /// Forgets a connection that failed, so the next use connects again.
    pub(crate) fn forget(&self, pubsub: &str, mode: Option<ContentMode>, broker: &Arc<dyn Broker>) {
        let slot = lock(&self.brokers).get(&(pubsub.to_owned(), mode)).cloned();
        if let Some(slot) = slot
            && let Ok(mut conn) = slot.conn.try_lock()
            && conn.as_ref().is_some_and(|b| Arc::ptr_eq(b, broker))
        {
            *conn = None;
        }
    }

    /// Activates subscriptions: asks the app for its own (when told to), then starts every
    /// subscription that concerns this service.
    pub(crate) async fn start(shared: &Arc<Shared>, options: BridgeOptions) -> BridgeStart {
        // Read the latest snapshot now, so what the caller saw applied is subscribed.
        Bridge::on_snapshot(shared, &shared.client.snapshot());
        let mut start = BridgeStart::default();
        let mut declared = Vec::new();
        if options.ask_app {
            let pubsubs = shared.bridge.resources().pubsubs.clone();
            match deliver::ask_app(shared).await {
                Ok(Some(body)) => {
                    let (list, problems) =
                        resources::app_declared(&body, &shared.service, &pubsubs);
                    start.warnings.extend(problems);
                    declared = list;
                }
                Ok(None) => start.warnings.push(
                    "the app answered 404 to GET /ieum/subscriptions: it declares no subscriptions"
                        .to_owned(),
                ),
                Err(why) => start.warnings.push(format!(
                    "GET /ieum/subscriptions: {why}: no subscriptions declared by the app"
                )),
            }
        }
        start.declared_by_app = declared.len();
        {
            let mut state = lock(&shared.bridge.state);
            state.app_declared = declared;
            state.activation = Some(options);
        }
        Bridge::reconcile(shared);
        start
    }

    /// Starts the subscriptions wanted and not running, stops those running and no longer
    /// wanted. Does nothing before activation or after a stop.
    fn reconcile(shared: &Arc<Shared>) {
        let bridge = &shared.bridge;
        let resources = bridge.resources();
        let mut state = lock(&bridge.state);
        let Some(options) = state.activation.clone() else {
            return;
        };
        if bridge.stop.is_cancelled() {
            return;
        }
        let mut wanted: Vec<Wanted> = resources.subscriptions.clone();
        for s in &state.app_declared {
            let revision = resources
                .pubsubs
                .get(s.pubsub.as_str())
                .map_or(0, |(_, r)| *r);
            wanted.push(Wanted::from_subscription("app".to_owned(), s, revision));
        }
        // One subscription per pubsub, topic and group: two would split the events.
        let mut seen = BTreeMap::new();
        wanted.retain(|w| {
            let id = (w.pubsub.clone(), w.topic.clone(), w.group.clone());
            match seen.get(&id) {
                Some(first) => {
                    tracing::warn!(
                        ignored = %w.origin, kept = %first, pubsub = %w.pubsub, topic = %w.topic, group = %w.group,
                        "two subscriptions of one topic in one group: keeping the first"
                    );
                    false
                }
                None => {
                    seen.insert(id, w.origin.clone());
                    true
                }
            }
        });
        let keys: HashMap<String, Wanted> = wanted.into_iter().map(|w| (w.key(), w)).collect();
        let gone: Vec<String> = state
            .runners
            .keys()
            .filter(|k| !keys.contains_key(*k))
            .cloned()
            .collect();
        for k in gone {
            if let Some(r) = state.runners.remove(&k) {
                tracing::info!(origin = %r.wanted.origin, topic = %r.wanted.topic, "subscription stopped");
                r.stop.cancel();
            }
        }
        for (key, w) in keys {
            if state.runners.contains_key(&key) {
                continue;
            }
            let runner = Runner {
                wanted: w.clone(),
                state: Arc::new(Mutex::new(RunState::Starting)),
                stop: bridge.stop.child_token(),
            };
            tokio::spawn(deliver::run(
                shared.clone(),
                w,
                options.consumer.clone(),
                runner.state.clone(),
                runner.stop.clone(),
            ));
            state.runners.insert(key, runner);
        }
        drop(state);
        bridge.changed.send_modify(|n| *n += 1);
    }

    /// Records a runner's new state and wakes waiters.
    pub(crate) fn set_state(&self, state: &Mutex<RunState>, new: RunState) {
        *lock(state) = new;
        self.changed.send_modify(|n| *n += 1);
    }

    /// Why subscriptions are not all active yet (`None`: they are, or there are none).
    pub(crate) fn not_ready(&self) -> Option<String> {
        let state = lock(&self.state);
        state.activation.as_ref()?;
        let waiting: Vec<String> = state
            .runners
            .values()
            .filter_map(|r| match &*lock(&r.state) {
                RunState::Active => None,
                RunState::Starting => Some(format!(
                    "{} ({}/{}): subscribing",
                    r.wanted.origin, r.wanted.pubsub, r.wanted.topic
                )),
                RunState::Failed(why) => Some(format!(
                    "{} ({}/{}): {why}",
                    r.wanted.origin, r.wanted.pubsub, r.wanted.topic
                )),
            })
            .collect();
        (!waiting.is_empty()).then(|| waiting.join("; "))
    }

    /// Waits until every subscription is active, at most `timeout`; otherwise says which
    /// are not and why.
    pub(crate) async fn ready(&self, timeout: Duration) -> Result<(), String> {
        let mut rx = self.changed.subscribe();
        let wait = async {
            loop {
                rx.borrow_and_update();
                if self.not_ready().is_none() {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(timeout, wait).await;
        match self.not_ready() {
            None => Ok(()),
            Some(why) => Err(why),
        }
    }

    /// Stops fetching on every subscription; deliveries handed out finish.
    pub(crate) fn stop(&self) {
        self.stop.cancel();
        lock(&self.state).runners.clear();
    }

    /// The subscriptions and their states, for `/subscriptions`.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        let state = lock(&self.state);
        let mut list: Vec<serde_json::Value> = state
            .runners
            .values()
            .map(|r| {
                let mut v = serde_json::to_value(&r.wanted).unwrap_or_default();
                v["status"] = serde_json::to_value(&*lock(&r.state)).unwrap_or_default();
                v
            })
            .collect();
        list.sort_by_key(|v| v["origin"].to_string() + &v["topic"].to_string());
        let resources = self.resources();
        serde_json::json!({
            "active": state.activation.is_some() && !self.stop.is_cancelled(),
            "subscriptions": list,
            "pubsubs": resources.pubsubs.keys().collect::<Vec<_>>(),
            "outputBindings": resources.outputs.keys().collect::<Vec<_>>(),
            "problems": resources.problems,
        })
    }
}
