//! `mqtt` over `rumqttc`'s MQTT 5 client (`rumqttc::v5`), QoS 1.
//!
//! A topic `a.b` is the MQTT topic `a/b` (the usual MQTT separator). A group is a shared
//! subscription `$share/{group}/a/b`. Publishing uses its own connection and returns on
//! the `PUBACK` of that packet (a reason code other than success or "no matching
//! subscribers" is a refusal). Each subscription has its own connection with a stable
//! client id (`{clientIdPrefix}-{topic}-{group}-{consumer}`), `clean_start = false` and a one-day
//! session, and acknowledges by hand: `ack` sends the `PUBACK`; a consumer that dies
//! without it gets the message again when it reconnects with the same id (`DUP` set).
//! MQTT has no negative ack: `nack(delay)` republishes the message after the delay to the
//! group's retry topic `ieum-retry/{group}/a/b` (which the group also subscribes to) with
//! the user property `ieum-attempt` one higher, then acknowledges the original; the
//! attempt count is that property (1 when absent), plus one for a `DUP` redelivery.
//! Binary mode carries attributes as user properties and `datacontenttype` as the
//! Content Type property (MQTT binding). Brokers keep messages only for sessions that
//! exist: subscribe before publishing.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use ieum_model::bridge::BrokerType;
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    Packet, PubAckReason, Publish, PublishProperties, SubscribeReasonCode,
};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use tokio::sync::{Mutex, mpsc, oneshot};

use super::{
    BrokerError, Delivery, PublishError, Publisher, Settings, Settle, SubscribeOptions,
    Subscription,
};
use crate::cloudevents::CloudEvent;
use crate::cloudevents::binding::{self, Message, Protocol};

const NAME: &str = "mqtt";
/// The user property counting deliveries across `nack` republishes.
const ATTEMPT: &str = "ieum-attempt";
/// How long a subscriber's session outlives its connection (a restart resumes it).
const SESSION_EXPIRY_SECS: u32 = 86_400;

type Waiter = oneshot::Sender<Result<(), BrokerError>>;

#[derive(Clone)]
pub(crate) struct MqttBroker {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    /// TLS for every connection of this broker (`mqtts://`/`ssl://`), when on.
    tls: Option<Arc<super::tls::Tls>>,
    host: String,
    port: u16,
    client: AsyncClient,
    /// Publishes whose packet id is not known yet, in the order they were queued.
    queued: Arc<std::sync::Mutex<VecDeque<Waiter>>>,
    /// Serialises "queue a waiter, queue the publish" so both queues share one order.
    order: Mutex<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn unreachable(settings: &Settings, reason: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unreachable {
        broker: NAME,
        url: settings.url.clone(),
        reason: reason.to_string(),
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `mqtt://host:port` → host and port (1883 by default, 8883 with TLS).
fn host_port(settings: &Settings, tls: bool) -> Result<(String, u16), BrokerError> {
    let rest = settings
        .url
        .split_once("://")
        .map_or(settings.url.as_str(), |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse().map_err(|_| {
                BrokerError::Config(format!("PubSub/{}: `{p}` is not a port", settings.name))
            })?,
        ),
        None => (authority, if tls { 8883 } else { 1883 }),
    };
    Ok((host.trim_matches(['[', ']']).to_owned(), port))
}

fn options(
    settings: &Settings,
    tls: Option<&super::tls::Tls>,
    host: &str,
    port: u16,
    client_id: String,
) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, host, port);
    if let Some(tls) = tls {
        o.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls.config.clone()),
        ));
    }
    o.set_keep_alive(Duration::from_secs(30));
    if let Some(secret) = &settings.secret {
        o.set_credentials(
            secret.username.clone().unwrap_or_default(),
            secret.password.clone(),
        );
    }
    o
}

/// Polls until the broker accepted the connection.
async fn connected(
    settings: &Settings,
    tls: Option<&super::tls::Tls>,
    eventloop: &mut EventLoop,
) -> Result<(), BrokerError> {
    let wait = async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(unreachable(settings, super::tls::reason(tls, e))),
            }
        }
    };
    tokio::time::timeout(super::CONNECT_TIMEOUT, wait)
        .await
        .map_err(|_| unreachable(settings, super::tls::reason(tls, "no CONNACK within 5s")))?
}

fn mqtt_topic(topic: &str) -> String {
    topic.replace('.', "/")
}

impl MqttBroker {
    /// Connects; with `tls` (an `mqtts://` or `ssl://` URL) every connection of this
    /// broker is TLS, verified by `tls`' configuration.
    pub(crate) async fn connect(
        settings: Settings,
        tls: Option<Arc<super::tls::Tls>>,
    ) -> Result<Arc<dyn super::Broker>, BrokerError> {
        let (host, port) = host_port(&settings, tls.is_some())?;
        let id = format!(
            "{}-pub-{}",
            settings.metadata("clientIdPrefix", "ieum"),
            &crate::cloudevents::new_id()[..8]
        );
        let (client, mut eventloop) =
            AsyncClient::new(options(&settings, tls.as_deref(), &host, port, id), 64);
        connected(&settings, tls.as_deref(), &mut eventloop).await?;
        let queued: Arc<std::sync::Mutex<VecDeque<Waiter>>> = Arc::default();
        let task = tokio::spawn(publisher_loop(eventloop, queued.clone(), settings.clone()));
        Ok(Arc::new(MqttBroker {
            inner: Arc::new(Inner {
                settings,
                tls,
                host,
                port,
                client,
                queued,
                order: Mutex::new(()),
                task,
            }),
        }))
    }

    async fn publish_raw(
        &self,
        topic: String,
        message: Message,
        attempt: Option<u32>,
    ) -> Result<(), BrokerError> {
        let inner = &self.inner;
        let mut user_properties = message.headers;
        if let Some(n) = attempt {
            user_properties.push((ATTEMPT.to_owned(), n.to_string()));
        }
        let properties = PublishProperties {
            user_properties,
            content_type: message.content_type,
            ..Default::default()
        };
        let (tx, rx) = oneshot::channel();
        {
            let _order = inner.order.lock().await;
            lock(&inner.queued).push_back(tx);
            if let Err(e) = inner
                .client
                .publish_with_properties(
                    topic,
                    QoS::AtLeastOnce,
                    false,
                    message.payload,
                    properties,
                )
                .await
            {
                lock(&inner.queued).pop_back();
                return Err(unreachable(&inner.settings, e));
            }
        }
        super::acked(NAME, async { rx.await.unwrap_or(Err(BrokerError::Closed)) }).await
    }
}

/// Drives the publishing connection: matches each outgoing publish to its waiter by
/// order, then each `PUBACK` to it by packet id.
async fn publisher_loop(
    mut eventloop: EventLoop,
    queued: Arc<std::sync::Mutex<VecDeque<Waiter>>>,
    settings: Settings,
) {
    let mut sent: HashMap<u16, Waiter> = HashMap::new();
    loop {
        match eventloop.poll().await {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                if let Some(w) = lock(&queued).pop_front() {
                    sent.insert(pkid, w);
                }
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                if let Some(w) = sent.remove(&ack.pkid) {
                    let result = match ack.reason {
                        PubAckReason::Success | PubAckReason::NoMatchingSubscribers => Ok(()),
                        reason => Err(BrokerError::Rejected {
                            broker: NAME,
                            reason: format!("PUBACK {reason:?}"),
                        }),
                    };
                    let _ = w.send(result);
                }
            }
            Ok(_) => {}
            Err(e) => {
                // Unacknowledged publishes fail now; rumqttc reconnects on the next poll.
                for (_, w) in sent.drain() {
                    let _ = w.send(Err(unreachable(&settings, &e)));
                }
                for w in lock(&queued).drain(..) {
                    let _ = w.send(Err(unreachable(&settings, &e)));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

#[async_trait]
impl Publisher for MqttBroker {
    async fn publish(
        &self,
        topic: &str,
        event: &CloudEvent,
        ordering_key: Option<&str>,
    ) -> Result<(), BrokerError> {
        super::check_topic(topic)?;
        let event = super::prepare(event, ordering_key)?;
        let message = binding::encode(&event, Protocol::Mqtt, self.inner.settings.mode);
        self.publish_raw(mqtt_topic(topic), message, None).await
    }
}

#[async_trait]
impl super::Broker for MqttBroker {
    fn kind(&self) -> BrokerType {
        BrokerType::Mqtt
    }

    async fn publish(
        &self,
        topic: &str,
        event: &CloudEvent,
        ordering_key: Option<&str>,
    ) -> Result<(), PublishError> {
        Publisher::publish(self, topic, event, ordering_key).await
    }

    async fn subscribe(
        &self,
        topic: &str,
        group: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription, BrokerError> {
        super::check_subscription(topic, &options)?;
        let inner = &self.inner;
        let settings = &inner.settings;
        // One session per topic, group and consumer: a session keeps its subscriptions,
        // so sharing one across topics would mix their messages.
        let client_id = format!(
            "{}-{topic}-{group}-{}",
            settings.metadata("clientIdPrefix", "ieum"),
            options.consumer
        );
        let mut o = self::options(
            settings,
            inner.tls.as_deref(),
            &inner.host,
            inner.port,
            client_id,
        );
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(SESSION_EXPIRY_SECS));
        o.set_manual_acks(true);
        let in_flight = u16::try_from(options.max_in_flight)
            .unwrap_or(u16::MAX)
            .max(1);
        o.set_receive_maximum(Some(in_flight));
        let (client, mut eventloop) = AsyncClient::new(o, 64);
        connected(settings, inner.tls.as_deref(), &mut eventloop).await?;
        let main = mqtt_topic(topic);
        let retry = format!("ieum-retry/{group}/{main}");
        for filter in [&main, &retry] {
            client
                .subscribe(format!("$share/{group}/{filter}"), QoS::AtLeastOnce)
                .await
                .map_err(|e| unreachable(settings, e))?;
        }
        // Active once both SUBACKs arrived; publishes that arrive meanwhile are kept.
        let mut early = Vec::new();
        let mut acks = 0;
        let wait = async {
            while acks < 2 {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(s))) => {
                        if let Some(code) = s
                            .return_codes
                            .iter()
                            .find(|c| !matches!(c, SubscribeReasonCode::Success(_)))
                        {
                            return Err(BrokerError::Rejected {
                                broker: NAME,
                                reason: format!("SUBACK {code:?} for $share/{group}/{main}"),
                            });
                        }
                        acks += 1;
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => early.push(p),
                    Ok(_) => {}
                    Err(e) => return Err(unreachable(settings, e)),
                }
            }
            Ok(())
        };
        tokio::time::timeout(super::CONNECT_TIMEOUT, wait)
            .await
            .map_err(|_| unreachable(settings, "no SUBACK within 5s"))??;
        let (tx, rx) = mpsc::channel(super::channel_capacity(options.max_in_flight));
        let (stop_tx, mut stop_rx) = oneshot::channel();
        let dead_letters: Option<(String, Arc<dyn Publisher>)> = options
            .dead_letter_topic
            .clone()
            .map(|t| (t, Arc::new(self.clone()) as Arc<dyn Publisher>));
        let broker = self.clone();
        let topic = topic.to_owned();
        let raw_source = options.raw_source.clone();
        let task = tokio::spawn(async move {
            let mut early = early.into_iter();
            loop {
                let publish = if let Some(p) = early.next() {
                    p
                } else {
                    let polled = tokio::select! {
                        _ = &mut stop_rx => return,
                        polled = eventloop.poll() => polled,
                    };
                    match polled {
                        Ok(Event::Incoming(Packet::Publish(p))) => p,
                        Ok(_) => continue,
                        Err(e) => {
                            tracing::warn!(%topic, error = %e, "MQTT subscriber connection");
                            tokio::select! {
                                _ = &mut stop_rx => return,
                                () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                            }
                        }
                    }
                };
                let (event, attempt) = match decode(&publish, raw_source.as_deref()) {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::warn!(%topic, error = %e, "acknowledging a message that is no CloudEvent");
                        let _ = client.ack(&publish).await;
                        continue;
                    }
                };
                let settle = MqttSettle {
                    client: client.clone(),
                    publish,
                    broker: broker.clone(),
                    retry_topic: retry.clone(),
                    attempt,
                };
                let delivery = Delivery::new(
                    event,
                    attempt,
                    &topic,
                    Box::new(settle),
                    dead_letters.clone(),
                );
                if tx.send(delivery).await.is_err() {
                    return;
                }
            }
        });
        Ok(Subscription::new(rx, stop_tx, task))
    }

    async fn close(&self) {
        let _ = self.inner.client.disconnect().await;
    }
}

fn to_message(p: &Publish) -> (Message, u32) {
    let mut message = Message {
        payload: p.payload.clone(),
        ..Message::default()
    };
    let mut attempt = 1;
    if let Some(props) = &p.properties {
        message.content_type = props.content_type.clone();
        for (name, value) in &props.user_properties {
            if name == ATTEMPT {
                attempt = value.parse().unwrap_or(1);
            } else {
                message.headers.push((name.clone(), value.clone()));
            }
        }
    }
    if p.dup {
        attempt += 1;
    }
    (message, attempt)
}

fn decode(
    p: &Publish,
    raw_source: Option<&str>,
) -> Result<(CloudEvent, u32), crate::cloudevents::CloudEventError> {
    let (message, attempt) = to_message(p);
    // MQTT has no stable message id (packet ids are reused).
    let origin = super::raw_origin(raw_source, || None);
    Ok((
        binding::decode_or_wrap(&message, Protocol::Mqtt, origin)?,
        attempt,
    ))
}

struct MqttSettle {
    client: AsyncClient,
    publish: Publish,
    broker: MqttBroker,
    retry_topic: String,
    attempt: u32,
}

#[async_trait]
impl Settle for MqttSettle {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        let settings = &self.broker.inner.settings;
        self.client
            .ack(&self.publish)
            .await
            .map_err(|e| unreachable(settings, e))
    }

    async fn nack(self: Box<Self>, delay: Duration) -> Result<(), BrokerError> {
        let MqttSettle {
            client,
            publish,
            broker,
            retry_topic,
            attempt,
        } = *self;
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let (message, _) = to_message(&publish);
            let copy = Message {
                payload: Bytes::clone(&message.payload),
                ..message
            };
            match broker
                .publish_raw(retry_topic, copy, Some(attempt.saturating_add(1)))
                .await
            {
                // Only once the copy is stored does the original go.
                Ok(()) => {
                    let _ = client.ack(&publish).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "MQTT retry republish; the broker redelivers on reconnect")
                }
            }
        });
        Ok(())
    }
}
