//! The [`Broker`] trait and what it hands out: [`Subscription`]s of [`Delivery`]s.
//!
//! Each implementation lives in its own module and maps the same contract onto its
//! broker's primitives; the crate docs have the table.

pub(crate) mod amqp;
pub(crate) mod hosted;
pub(crate) mod kafka;
pub(crate) mod memory;
pub(crate) mod mqtt;
pub(crate) mod nats;
pub(crate) mod redis;
pub(crate) mod tls;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use ieum_model::bridge::{BrokerType, PubSubSpec};
use tokio::sync::mpsc;

pub use hosted::{ConnectOptions, MemoryHost, connect_with};
pub use memory::MemoryBroker;

use crate::cloudevents::{
    CloudEvent, CloudEventError, DEAD_LETTER_ATTEMPTS, DEAD_LETTER_REASON, DEAD_LETTER_TOPIC,
    PARTITION_KEY,
};

/// The longest a publish waits for the broker's acknowledgement before it fails.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a connect waits before it fails.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a broker operation failed. Every failure is reported: a publish either returns
/// `Ok` after the broker acknowledged, or one of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// The `PubSub` cannot be used as written (a missing secret, a bad URL).
    #[error("{0}")]
    Config(String),
    /// The topic name does not fit the rule every broker accepts.
    #[error("topic `{topic}`: {reason}")]
    Topic {
        /// The topic as given.
        topic: String,
        /// What is wrong.
        reason: String,
    },
    /// The event is not a valid CloudEvent.
    #[error("invalid CloudEvent: {0}")]
    Event(#[from] CloudEventError),
    /// The stream, exchange or queue does not exist and `autoCreate` is off.
    #[error(
        "`{0}` does not exist on the broker and autoCreate is off: create it, or set `autoCreate: true` on the PubSub"
    )]
    Missing(String),
    /// The broker cannot be reached, or the connection broke.
    #[error("{broker} at {url} is unreachable: {reason}")]
    Unreachable {
        /// The broker type.
        broker: &'static str,
        /// Its address as configured (never with a secret).
        url: String,
        /// What the client library said.
        reason: String,
    },
    /// The broker answered but refused.
    #[error("{broker} refused: {reason}")]
    Rejected {
        /// The broker type.
        broker: &'static str,
        /// Its reason.
        reason: String,
    },
    /// No acknowledgement in time; the message may or may not have been stored.
    #[error(
        "{broker} did not acknowledge within {timeout:?}; the outcome is unknown, so retry (consumers see at-least-once delivery)"
    )]
    Timeout {
        /// The broker type.
        broker: &'static str,
        /// How long was waited.
        timeout: Duration,
    },
    /// The broker or subscription was closed.
    #[error("the broker connection is closed")]
    Closed,
}

impl BrokerError {
    /// Whether trying again later may succeed (the sidecar answers 503 for these, 4xx for
    /// the others).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            BrokerError::Unreachable { .. } | BrokerError::Timeout { .. } | BrokerError::Closed
        )
    }
}

/// What [`Broker::publish`] returns.
pub type PublishError = BrokerError;

/// Options of one subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// This consumer's stable name within its group (the instance id): Redis Streams'
    /// consumer name and the MQTT client id, so a restarted consumer resumes what it left
    /// unacknowledged.
    pub consumer: String,
    /// Deliveries handed out and not yet settled, at most (the broker's prefetch).
    pub max_in_flight: u32,
    /// Where [`Delivery::dead_letter`] publishes; without it a dead-lettered event is
    /// discarded.
    pub dead_letter_topic: Option<String>,
    /// For input bindings fed by systems that do not speak CloudEvents: a message that is
    /// no CloudEvent is wrapped as one with this `source` (see
    /// [`binding::decode_or_wrap`](crate::cloudevents::binding::decode_or_wrap)) instead
    /// of being discarded.
    pub raw_source: Option<String>,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        SubscribeOptions {
            consumer: crate::cloudevents::new_id(),
            max_in_flight: ieum_model::bridge::DEFAULT_MAX_IN_FLIGHT,
            dead_letter_topic: None,
            raw_source: None,
        }
    }
}

/// A connection to one broker, shared by every publisher and subscription of a `PubSub`.
#[async_trait]
pub trait Broker: Send + Sync {
    /// The broker's type.
    fn kind(&self) -> BrokerType;

    /// Publishes `event` to `topic` and returns once the broker has acknowledged it
    /// (stored it durably where the broker can). `ordering_key`, when given, is written to
    /// the event's `partitionkey` extension (and used as the broker's own key where it
    /// has one), so subscribers can keep per-key order.
    async fn publish(
        &self,
        topic: &str,
        event: &CloudEvent,
        ordering_key: Option<&str>,
    ) -> Result<(), PublishError>;

    /// Starts consuming `topic` as a member of `group`: members of one group share the
    /// events, every group gets each event. Creates what is missing when `autoCreate` is
    /// on. The subscription is active when this returns: events published afterwards
    /// are delivered.
    async fn subscribe(
        &self,
        topic: &str,
        group: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription, BrokerError>;

    /// Closes the connection; subscriptions end.
    async fn close(&self);
}

/// Connects to the broker a `PubSub` describes. `name` is the `PubSub`'s name (it names
/// the in-memory broker, and appears in errors). Secrets named by `credentials.fromEnv`
/// are read here, from this process's environment, and handed to the client library only.
pub async fn connect(name: &str, spec: &PubSubSpec) -> Result<Arc<dyn Broker>, BrokerError> {
    let mut v = ieum_model::Validator::new("spec");
    spec.validate(&mut v);
    if let Err(errors) = v.finish() {
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        return Err(BrokerError::Config(format!(
            "PubSub/{name}: {}",
            text.join("; ")
        )));
    }
    let secret = match &spec.credentials {
        Some(c) => Some(Secret {
            username: c.username.clone(),
            password: std::env::var(&c.from_env).map_err(|_| {
                BrokerError::Config(format!(
                    "PubSub/{name}: the environment variable {} (credentials.fromEnv) is not set in this process",
                    c.from_env
                ))
            })?,
        }),
        None => None,
    };
    let settings = Settings {
        name: name.to_owned(),
        url: spec.url.clone().unwrap_or_default(),
        secret,
        mode: spec.cloud_events.mode,
        auto_create: spec.auto_create,
        redeliver_after: spec.redeliver_after.get(),
        metadata: spec.metadata.clone(),
    };
    // TLS travels beside `Settings` (which other modules build in their tests): loaded
    // once here, when the URL's scheme asks for it, and shared by every connection.
    let tls = if spec.uses_tls() {
        Some(Arc::new(tls::Tls::load(name, spec.tls.as_ref()).await?))
    } else {
        None
    };
    Ok(match spec.kind {
        BrokerType::Memory => Arc::new(memory::MemoryBroker::named(name, settings.mode)),
        BrokerType::NatsJetStream => Arc::new(nats::NatsBroker::connect(settings, tls).await?),
        BrokerType::RedisStreams => Arc::new(redis::RedisBroker::connect(settings, tls).await?),
        BrokerType::RabbitMq => amqp::AmqpBroker::connect(settings, tls).await?,
        BrokerType::Mqtt => mqtt::MqttBroker::connect(settings, tls).await?,
        BrokerType::Kafka => Arc::new(kafka::KafkaBroker::connect(settings).await?),
    })
}

/// A secret read from the environment. Its `Debug` never shows the password.
#[derive(Clone)]
pub(crate) struct Secret {
    pub(crate) username: Option<String>,
    pub(crate) password: String,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A validated `PubSub` with its secret resolved: what each implementation connects with.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) name: String,
    pub(crate) url: String,
    pub(crate) secret: Option<Secret>,
    pub(crate) mode: ieum_model::bridge::ContentMode,
    pub(crate) auto_create: bool,
    pub(crate) redeliver_after: Duration,
    pub(crate) metadata: std::collections::BTreeMap<String, String>,
}

impl Settings {
    /// `url` with the secret written into its userinfo, for libraries that take only a URL.
    pub(crate) fn url_with_secret(&self) -> String {
        let Some(secret) = &self.secret else {
            return self.url.clone();
        };
        let Some((scheme, rest)) = self.url.split_once("://") else {
            return self.url.clone();
        };
        let (user_in_url, host) = match rest.split_once('@') {
            Some((user, host)) => (Some(user.to_owned()), host),
            None => (None, rest),
        };
        let user = secret.username.clone().or(user_in_url).unwrap_or_default();
        format!(
            "{scheme}://{}:{}@{host}",
            url_escape(&user),
            url_escape(&secret.password)
        )
    }

    pub(crate) fn metadata(&self, key: &str, default: &str) -> String {
        self.metadata
            .get(key)
            .cloned()
            .unwrap_or_else(|| default.to_owned())
    }
}

fn url_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Checks a topic (and a group name) before it reaches a broker.
pub(crate) fn check_topic(topic: &str) -> Result<(), BrokerError> {
    ieum_model::bridge::validate_topic(topic).map_err(|reason| BrokerError::Topic {
        topic: topic.to_owned(),
        reason,
    })
}

/// Checks a subscription's topic and dead-letter topic before it reaches a broker.
pub(crate) fn check_subscription(
    topic: &str,
    options: &SubscribeOptions,
) -> Result<(), BrokerError> {
    check_topic(topic)?;
    if let Some(dlt) = &options.dead_letter_topic {
        check_topic(dlt)?;
    }
    Ok(())
}

/// The event as published: validated, with the ordering key in `partitionkey`.
pub(crate) fn prepare<'a>(
    event: &'a CloudEvent,
    ordering_key: Option<&str>,
) -> Result<std::borrow::Cow<'a, CloudEvent>, BrokerError> {
    event.validate()?;
    Ok(match ordering_key {
        Some(key) if event.extension(PARTITION_KEY) != Some(key) => {
            let mut e = event.clone();
            e.extensions
                .insert(PARTITION_KEY.to_owned(), key.to_owned());
            std::borrow::Cow::Owned(e)
        }
        _ => std::borrow::Cow::Borrowed(event),
    })
}

/// Bounds a broker call by [`PUBLISH_TIMEOUT`].
pub(crate) async fn acked<T>(
    broker: &'static str,
    fut: impl std::future::Future<Output = Result<T, BrokerError>>,
) -> Result<T, BrokerError> {
    match tokio::time::timeout(PUBLISH_TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => Err(BrokerError::Timeout {
            broker,
            timeout: PUBLISH_TIMEOUT,
        }),
    }
}

/// How one delivery is settled with its broker.
#[async_trait]
pub(crate) trait Settle: Send {
    /// Done: the broker forgets the message.
    async fn ack(self: Box<Self>) -> Result<(), BrokerError>;
    /// Not done: the broker delivers it again after `delay`, with the attempt count one
    /// higher.
    async fn nack(self: Box<Self>, delay: Duration) -> Result<(), BrokerError>;
}

/// Publishes on behalf of a delivery (its dead letters).
#[async_trait]
pub(crate) trait Publisher: Send + Sync {
    async fn publish(
        &self,
        topic: &str,
        event: &CloudEvent,
        ordering_key: Option<&str>,
    ) -> Result<(), BrokerError>;
}

/// One event handed to a subscriber. Settle it exactly once: [`ack`](Delivery::ack) after
/// the app succeeded, [`nack`](Delivery::nack) to try again later, or
/// [`dead_letter`](Delivery::dead_letter). A delivery dropped unsettled is left to the
/// broker, which delivers it again (to this consumer or another) — at-least-once.
pub struct Delivery {
    /// The event.
    pub event: CloudEvent,
    /// 1 for the first delivery, 2 for the first redelivery, and so on.
    pub attempt: u32,
    /// The topic it came from.
    pub topic: String,
    settle: Box<dyn Settle>,
    dead_letters: Option<(String, Arc<dyn Publisher>)>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("topic", &self.topic)
            .field("attempt", &self.attempt)
            .field("id", &self.event.id)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    pub(crate) fn new(
        event: CloudEvent,
        attempt: u32,
        topic: &str,
        settle: Box<dyn Settle>,
        dead_letters: Option<(String, Arc<dyn Publisher>)>,
    ) -> Self {
        Delivery {
            event,
            attempt: attempt.max(1),
            topic: topic.to_owned(),
            settle,
            dead_letters,
        }
    }

    /// The event's ordering key: the value of `attribute` (a Subscription's `orderingKey`,
    /// `partitionkey` by default). Deliveries with the same key must be handled one at a
    /// time to keep their order.
    pub fn ordering_key(&self, attribute: &str) -> Option<&str> {
        self.event.attribute(attribute)
    }

    /// Acknowledges: the broker will not deliver this event again.
    pub async fn ack(self) -> Result<(), BrokerError> {
        self.settle.ack().await
    }

    /// Gives the event back: the broker delivers it again after `delay` (at least),
    /// counting one more attempt.
    pub async fn nack(self, delay: Duration) -> Result<(), BrokerError> {
        self.settle.nack(delay).await
    }

    /// Publishes the event to the subscription's dead-letter topic with the extensions
    /// `deadletterreason`, `deadletterattempts` and `deadlettertopic`, then acknowledges it.
    /// Without a dead-letter topic the event is only acknowledged (discarded). If the
    /// dead-letter publish fails, the event is not acknowledged and the error returned.
    pub async fn dead_letter(self, reason: &str) -> Result<(), BrokerError> {
        if let Some((topic, publisher)) = &self.dead_letters {
            let mut event = self.event.clone();
            let reason: String = reason
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            let reason = if reason.is_empty() {
                "unspecified".to_owned()
            } else {
                reason
            };
            event
                .extensions
                .insert(DEAD_LETTER_REASON.to_owned(), reason);
            event
                .extensions
                .insert(DEAD_LETTER_ATTEMPTS.to_owned(), self.attempt.to_string());
            event
                .extensions
                .insert(DEAD_LETTER_TOPIC.to_owned(), self.topic.clone());
            let key = event.extension(PARTITION_KEY).map(str::to_owned);
            publisher.publish(topic, &event, key.as_deref()).await?;
        }
        self.settle.ack().await
    }
}

/// The deliveries of one subscription, in the order the broker hands them out. Ends when
/// the subscription or its broker closes.
pub struct Subscription {
    rx: mpsc::Receiver<Delivery>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

impl Subscription {
    /// A subscription fed by a task that stops when told on `stop` (or when the receiver
    /// is gone).
    pub(crate) fn new(
        rx: mpsc::Receiver<Delivery>,
        stop: tokio::sync::oneshot::Sender<()>,
        task: tokio::task::JoinHandle<()>,
    ) -> Self {
        Subscription {
            rx,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The next delivery; `None` once the subscription has ended.
    pub async fn next(&mut self) -> Option<Delivery> {
        self.rx.recv().await
    }

    /// Stops fetching. Deliveries already handed out can still be settled; those fetched
    /// but not yet handed out are left unacknowledged, so the broker redelivers them.
    pub async fn close(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.rx.close();
        while self.rx.try_recv().is_ok() {}
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl futures_util::Stream for Subscription {
    type Item = Delivery;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        self.rx.poll_recv(cx)
    }
}

/// What a broker passes to [`binding::decode_or_wrap`](crate::cloudevents::binding::decode_or_wrap)
/// for a subscription with a `raw_source`, with the broker's own stable id of the message.
pub(crate) fn raw_origin(
    raw_source: Option<&str>,
    id: impl FnOnce() -> Option<String>,
) -> Option<crate::cloudevents::binding::RawOrigin> {
    raw_source.map(|source| crate::cloudevents::binding::RawOrigin {
        source: source.to_owned(),
        id: id(),
    })
}

/// Channel capacity for a subscription: the in-flight bound, within reason.
pub(crate) fn channel_capacity(max_in_flight: u32) -> usize {
    usize::try_from(max_in_flight.clamp(1, 10_000)).unwrap_or(32)
}
