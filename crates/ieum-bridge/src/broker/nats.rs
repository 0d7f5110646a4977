//! `nats-jetstream` over `async-nats`.
//!
//! A topic is a subject, stored by one stream per topic (named `{streamPrefix}_{topic}`
//! with `.` and `_` escaped, as stream names cannot hold `.`). A group is a durable pull
//! consumer with explicit acks, `ack_wait` = `redeliverAfter` and `max_ack_pending` = the
//! in-flight bound; a new group starts with events published after it (`DeliverPolicy::New`).
//! Publishing waits for JetStream's publish ack; the attempt count is the consumer's
//! delivery count; `nack(delay)` is a `NAK` with that delay. Attributes travel as `ce-`
//! headers (NATS binding).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer, stream};
use async_trait::async_trait;
use futures_util::StreamExt as _;
use ieum_model::bridge::BrokerType;
use tokio::sync::{mpsc, oneshot};

use super::{
    BrokerError, Delivery, PublishError, Publisher, Settings, Settle, SubscribeOptions,
    Subscription,
};
use crate::cloudevents::CloudEvent;
use crate::cloudevents::binding::{self, Message, Protocol};

const NAME: &str = "nats-jetstream";

#[derive(Clone)]
pub(crate) struct NatsBroker {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    settings: Settings,
    streams: Mutex<HashSet<String>>,
}

fn unreachable(settings: &Settings, reason: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unreachable {
        broker: NAME,
        url: settings.url.clone(),
        reason: reason.to_string(),
    }
}

/// A stream or consumer name for a topic or group: `.` and `_` escaped so distinct names
/// stay distinct.
fn escape(s: &str) -> String {
    s.replace('_', "_5F").replace('.', "_2E")
}

impl NatsBroker {
    /// Connects; with `tls` (a `tls://` URL) the connection must be upgraded to TLS,
    /// verified by `tls`' configuration, or it fails.
    pub(crate) async fn connect(
        settings: Settings,
        tls: Option<Arc<super::tls::Tls>>,
    ) -> Result<Self, BrokerError> {
        let mut options = async_nats::ConnectOptions::new()
            .connection_timeout(super::CONNECT_TIMEOUT)
            .name(format!("ieum-bridge {}", settings.name));
        if let Some(secret) = &settings.secret {
            options = match &secret.username {
                Some(user) => options.user_and_password(user.clone(), secret.password.clone()),
                None => options.token(secret.password.clone()),
            };
        }
        if let Some(tls) = &tls {
            options = options
                .require_tls(true)
                .tls_client_config(tls.config.as_ref().clone());
        }
        let reason = |e: &dyn std::fmt::Display| super::tls::reason(tls.as_deref(), e);
        let client = tokio::time::timeout(
            super::CONNECT_TIMEOUT,
            options.connect(settings.url.as_str()),
        )
        .await
        .map_err(|_| unreachable(&settings, reason(&"no answer within 5s")))?
        .map_err(|e| unreachable(&settings, reason(&e)))?;
        let js = jetstream::new(client.clone());
        Ok(NatsBroker {
            inner: Arc::new(Inner {
                client,
                js,
                settings,
                streams: Mutex::default(),
            }),
        })
    }
}

impl Inner {
    fn stream_name(&self, topic: &str) -> String {
        format!(
            "{}_{}",
            self.settings.metadata("streamPrefix", "ieum"),
            escape(topic)
        )
    }

    async fn ensure_stream(&self, topic: &str) -> Result<stream::Stream, BrokerError> {
        let name = self.stream_name(topic);
        let result = if self.settings.auto_create {
            self.js
                .get_or_create_stream(stream::Config {
                    name: name.clone(),
                    subjects: vec![topic.to_owned()],
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())
        } else {
            self.js.get_stream(&name).await.map_err(|e| e.to_string())
        };
        match result {
            Ok(s) => {
                self.streams
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(topic.to_owned());
                Ok(s)
            }
            Err(e) if !self.settings.auto_create && e.contains("not found") => {
                Err(BrokerError::Missing(format!("stream {name}")))
            }
            Err(e) => Err(BrokerError::Rejected {
                broker: NAME,
                reason: format!("stream {name}: {e}"),
            }),
        }
    }

    fn known(&self, topic: &str) -> bool {
        self.streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(topic)
    }
}

#[async_trait]
impl Publisher for NatsBroker {
    async fn publish(
        &self,
        topic: &str,
        event: &CloudEvent,
        ordering_key: Option<&str>,
    ) -> Result<(), BrokerError> {
        super::check_topic(topic)?;
        let event = super::prepare(event, ordering_key)?;
        let inner = &self.inner;
        if inner.settings.auto_create && !inner.known(topic) {
            inner.ensure_stream(topic).await?;
        }
        let message = binding::encode(&event, Protocol::Nats, inner.settings.mode);
        let mut headers = async_nats::HeaderMap::new();
        for (name, value) in &message.headers {
            headers.insert(name.as_str(), value.as_str());
        }
        if let Some(ct) = &message.content_type {
            headers.insert("content-type", ct.as_str());
        }
        super::acked(NAME, async {
            let ack = inner
                .js
                .publish_with_headers(topic.to_owned(), headers, message.payload)
                .await
                .map_err(|e| publish_error(&inner.settings, topic, &e.to_string()))?;
            ack.await
                .map_err(|e| publish_error(&inner.settings, topic, &e.to_string()))?;
            Ok(())
        })
        .await
    }
}

fn publish_error(settings: &Settings, topic: &str, e: &str) -> BrokerError {
    if e.contains("no responders") {
        BrokerError::Missing(format!("a stream for subject {topic}"))
    } else if e.contains("disconnected") || e.contains("connection") || e.contains("timed out") {
        unreachable(settings, e)
    } else {
        BrokerError::Rejected {
            broker: NAME,
            reason: e.to_owned(),
        }
    }
}

#[async_trait]
impl super::Broker for NatsBroker {
    fn kind(&self) -> BrokerType {
        BrokerType::NatsJetStream
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
        let stream = inner.ensure_stream(topic).await?;
        let durable = escape(group);
        let config = consumer::pull::Config {
            durable_name: Some(durable.clone()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: inner.settings.redeliver_after,
            max_ack_pending: i64::from(options.max_in_flight),
            deliver_policy: consumer::DeliverPolicy::New,
            filter_subject: topic.to_owned(),
            ..Default::default()
        };
        let consumer = stream
            .get_or_create_consumer(&durable, config)
            .await
            .map_err(|e| BrokerError::Rejected {
                broker: NAME,
                reason: format!("consumer {durable}: {e}"),
            })?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| BrokerError::Rejected {
                broker: NAME,
                reason: format!("consumer {durable}: {e}"),
            })?;
        let (tx, rx) = mpsc::channel(super::channel_capacity(options.max_in_flight));
        let (stop_tx, mut stop_rx) = oneshot::channel();
        let dead_letters: Option<(String, Arc<dyn Publisher>)> = options
            .dead_letter_topic
            .clone()
            .map(|t| (t, Arc::new(self.clone()) as Arc<dyn Publisher>));
        let topic = topic.to_owned();
        let raw_source = options.raw_source.clone();
        let task = tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = &mut stop_rx => return,
                    next = messages.next() => next,
                };
                let msg = match next {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        tracing::warn!(%topic, error = %e, "JetStream consumer error");
                        continue;
                    }
                    None => return,
                };
                let attempt = msg
                    .info()
                    .map(|i| u32::try_from(i.delivered).unwrap_or(u32::MAX))
                    .unwrap_or(1);
                let event = match decode(&msg, raw_source.as_deref()) {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::warn!(%topic, error = %e, "terminating a message that is no CloudEvent");
                        let _ = msg.ack_with(AckKind::Term).await;
                        continue;
                    }
                };
                let delivery = Delivery::new(
                    event,
                    attempt,
                    &topic,
                    Box::new(NatsSettle(msg)),
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
        let _ = self.inner.client.drain().await;
    }
}

fn decode(
    msg: &jetstream::Message,
    raw_source: Option<&str>,
) -> Result<CloudEvent, crate::cloudevents::CloudEventError> {
    let mut message = Message {
        payload: msg.payload.clone(),
        ..Message::default()
    };
    if let Some(headers) = &msg.headers {
        for (name, values) in headers.iter() {
            let name: &str = name.as_ref();
            for value in values {
                if name.eq_ignore_ascii_case("content-type") {
                    message.content_type = Some(value.as_str().to_owned());
                } else {
                    message
                        .headers
                        .push((name.to_owned(), value.as_str().to_owned()));
                }
            }
        }
    }
    let origin = super::raw_origin(raw_source, || {
        msg.info()
            .ok()
            .map(|i| format!("{}-{}", i.stream, i.stream_sequence))
    });
    binding::decode_or_wrap(&message, Protocol::Nats, origin)
}

struct NatsSettle(jetstream::Message);

#[async_trait]
impl Settle for NatsSettle {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        self.0.ack().await.map_err(|e| BrokerError::Rejected {
            broker: NAME,
            reason: format!("ack: {e}"),
        })
    }

    async fn nack(self: Box<Self>, delay: Duration) -> Result<(), BrokerError> {
        self.0
            .ack_with(AckKind::Nak(Some(delay)))
            .await
            .map_err(|e| BrokerError::Rejected {
                broker: NAME,
                reason: format!("nak: {e}"),
            })
    }
}
