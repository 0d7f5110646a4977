//! `rabbitmq` over `lapin` (AMQP 0-9-1).
//!
//! A topic is a durable fanout exchange of the same name; a group is a durable queue
//! `{topic}.{group}` bound to it, a quorum queue by default (`metadata.queueType`), since
//! quorum queues count deliveries (`x-delivery-count`), which gives the attempt count.
//! (With classic queues only "redelivered or not" is known: attempt 2 stands for any
//! redelivery.) Publishing uses publisher confirms on a dedicated channel and returns on
//! the broker's `basic.ack`; messages are persistent, and the ordering key is the routing
//! key. Each subscription has its own channel with `basic.qos` = the in-flight bound;
//! `ack` is `basic.ack`; `nack(delay)` waits out the delay (the message stays unacked,
//! so a crash still returns it) then `basic.nack` with requeue. When a consumer's channel
//! or connection closes, RabbitMQ requeues what it left unacked. Attributes travel as
//! `cloudEvents:`-prefixed headers (the AMQP binding's application properties).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt as _;
use ieum_model::bridge::BrokerType;
use lapin::Confirmation;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::{mpsc, oneshot};

use super::{
    BrokerError, Delivery, PublishError, Publisher, Settings, Settle, SubscribeOptions,
    Subscription,
};
use crate::cloudevents::binding::{self, Message, Protocol};
use crate::cloudevents::{CloudEvent, PARTITION_KEY};

const NAME: &str = "rabbitmq";

#[derive(Clone)]
pub(crate) struct AmqpBroker {
    inner: Arc<Inner>,
}

struct Inner {
    connection: Connection,
    publisher: Channel,
    settings: Settings,
    exchanges: Mutex<HashSet<String>>,
}

fn unreachable(settings: &Settings, reason: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unreachable {
        broker: NAME,
        url: settings.url.clone(),
        reason: reason.to_string(),
    }
}

fn error(settings: &Settings, e: &lapin::Error) -> BrokerError {
    let text = e.to_string();
    if text.contains("NOT_FOUND") || text.contains("404") {
        BrokerError::Missing(text)
    } else if text.contains("connection") || text.contains("IO") || text.contains("closed") {
        unreachable(settings, text)
    } else {
        BrokerError::Rejected {
            broker: NAME,
            reason: text,
        }
    }
}

impl AmqpBroker {
    /// Connects; with `tls` (an `amqps://` URL) over TLS verified by `tls`' configuration.
    pub(crate) async fn connect(
        settings: Settings,
        tls: Option<Arc<super::tls::Tls>>,
    ) -> Result<Arc<dyn super::Broker>, BrokerError> {
        let connecting = async {
            match &tls {
                None => {
                    Connection::connect(
                        &settings.url_with_secret(),
                        ConnectionProperties::default(),
                    )
                    .await
                }
                Some(tls) => connect_tls(&settings, tls).await,
            }
        };
        let reason = |e: &dyn std::fmt::Display| super::tls::reason(tls.as_deref(), e);
        let connection = tokio::time::timeout(super::CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| unreachable(&settings, reason(&"no answer within 5s")))?
            .map_err(|e| unreachable(&settings, reason(&e)))?;
        let publisher = connection
            .create_channel()
            .await
            .map_err(|e| error(&settings, &e))?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| error(&settings, &e))?;
        Ok(Arc::new(AmqpBroker {
            inner: Arc::new(Inner {
                connection,
                publisher,
                settings,
                exchanges: Mutex::default(),
            }),
        }))
    }
}

/// An `amqps://` connection whose TLS is `tls`' configuration (lapin's own TLS setup
/// would add the CA file to the platform's roots and check only the URL's host).
async fn connect_tls(settings: &Settings, tls: &super::tls::Tls) -> lapin::Result<Connection> {
    let uri: lapin::uri::AMQPUri = settings.url_with_secret().parse().map_err(|_| {
        lapin::Error::from(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("`{}` is not an AMQP URI", settings.url),
        ))
    })?;
    let runtime = lapin::runtime::default_runtime()?;
    let connector = lapin::tcp::RustlsConnector::from(tls.config.clone());
    Connection::connector(
        uri,
        runtime,
        async move |uri, runtime| {
            let host = uri.authority.host.clone();
            let addrs: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((host.as_str(), uri.authority.port))
                    .await?
                    .collect();
            let stream = lapin::AsyncTcpStream::connect(&runtime, addrs).await?;
            Ok(stream.into_rustls(&connector, &host).await?)
        },
        ConnectionProperties::default(),
    )
    .await
}

impl Inner {
    fn known(&self, exchange: &str) -> bool {
        self.exchanges
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(exchange)
    }

    /// Declares the topic's exchange (or, without `autoCreate`, checks that it exists, on
    /// a throwaway channel since a failed check closes its channel).
    async fn ensure_exchange(&self, topic: &str) -> Result<(), BrokerError> {
        if self.known(topic) {
            return Ok(());
        }
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(|e| error(&self.settings, &e))?;
        let options = ExchangeDeclareOptions {
            durable: true,
            passive: !self.settings.auto_create,
            ..Default::default()
        };
        let result = channel
            .exchange_declare(
                ShortString::from(topic),
                ExchangeKind::Fanout,
                options,
                FieldTable::default(),
            )
            .await;
        match result {
            Ok(()) => {
                let _ = channel.close(200, ShortString::from("OK")).await;
                self.exchanges
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(topic.to_owned());
                Ok(())
            }
            Err(e) => match error(&self.settings, &e) {
                BrokerError::Missing(_) => Err(BrokerError::Missing(format!("exchange {topic}"))),
                other => Err(other),
            },
        }
    }
}

#[async_trait]
impl Publisher for AmqpBroker {
    async fn publish(
        &self,
        topic: &str,
        event: &CloudEvent,
        ordering_key: Option<&str>,
    ) -> Result<(), BrokerError> {
        super::check_topic(topic)?;
        let event = super::prepare(event, ordering_key)?;
        let inner = &self.inner;
        inner.ensure_exchange(topic).await?;
        let message = binding::encode(&event, Protocol::Amqp, inner.settings.mode);
        let mut headers = FieldTable::default();
        for (name, value) in &message.headers {
            headers.insert(
                ShortString::from(name.as_str()),
                AMQPValue::LongString(LongString::from(value.as_str())),
            );
        }
        let mut properties = BasicProperties::default()
            .with_headers(headers)
            .with_delivery_mode(2)
            .with_message_id(ShortString::from(event.id.as_str()));
        if let Some(ct) = &message.content_type {
            properties = properties.with_content_type(ShortString::from(ct.as_str()));
        }
        let routing_key = event.extension(PARTITION_KEY).unwrap_or_default();
        super::acked(NAME, async {
            let confirm = inner
                .publisher
                .basic_publish(
                    ShortString::from(topic),
                    ShortString::from(routing_key),
                    BasicPublishOptions::default(),
                    &message.payload,
                    properties,
                )
                .await
                .map_err(|e| error(&inner.settings, &e))?;
            match confirm.await.map_err(|e| error(&inner.settings, &e))? {
                Confirmation::Ack(_) => Ok(()),
                Confirmation::Nack(_) => Err(BrokerError::Rejected {
                    broker: NAME,
                    reason: format!(
                        "the broker could not store the message for exchange {topic} (basic.nack)"
                    ),
                }),
                Confirmation::NotRequested => Err(BrokerError::Rejected {
                    broker: NAME,
                    reason: "publisher confirms are off on the publishing channel".into(),
                }),
            }
        })
        .await
    }
}

#[async_trait]
impl super::Broker for AmqpBroker {
    fn kind(&self) -> BrokerType {
        BrokerType::RabbitMq
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
        inner.ensure_exchange(topic).await?;
        let queue = format!("{topic}.{group}");
        let channel = inner
            .connection
            .create_channel()
            .await
            .map_err(|e| error(settings, &e))?;
        let prefetch = u16::try_from(options.max_in_flight).unwrap_or(u16::MAX);
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| error(settings, &e))?;
        let mut arguments = FieldTable::default();
        arguments.insert(
            ShortString::from("x-queue-type"),
            AMQPValue::LongString(LongString::from(
                settings.metadata("queueType", "quorum").as_str(),
            )),
        );
        channel
            .queue_declare(
                ShortString::from(queue.as_str()),
                QueueDeclareOptions {
                    durable: true,
                    passive: !settings.auto_create,
                    ..Default::default()
                },
                arguments,
            )
            .await
            .map_err(|e| match error(settings, &e) {
                BrokerError::Missing(_) => BrokerError::Missing(format!("queue {queue}")),
                other => other,
            })?;
        if settings.auto_create {
            channel
                .queue_bind(
                    ShortString::from(queue.as_str()),
                    ShortString::from(topic),
                    ShortString::from(""),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| error(settings, &e))?;
        }
        let tag = format!("ieum-{}", options.consumer);
        let mut consumer = channel
            .basic_consume(
                ShortString::from(queue.as_str()),
                ShortString::from(tag.as_str()),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| error(settings, &e))?;
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
                    _ = &mut stop_rx => {
                        let _ = channel
                            .basic_cancel(ShortString::from(tag.as_str()), BasicCancelOptions::default())
                            .await;
                        return;
                    }
                    next = consumer.next() => next,
                };
                let delivery = match next {
                    Some(Ok(d)) => d,
                    Some(Err(e)) => {
                        tracing::warn!(%topic, error = %e, "AMQP consumer error");
                        return;
                    }
                    None => return,
                };
                let attempt = attempt_of(&delivery);
                let event = match decode(&delivery, raw_source.as_deref()) {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::warn!(%topic, error = %e, "rejecting a message that is no CloudEvent");
                        let _ = delivery
                            .acker
                            .nack(BasicNackOptions {
                                requeue: false,
                                multiple: false,
                            })
                            .await;
                        continue;
                    }
                };
                let settle = AmqpSettle {
                    acker: delivery.acker,
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
        let _ = self
            .inner
            .connection
            .close(200, ShortString::from("OK"))
            .await;
    }
}

fn as_i64(v: &AMQPValue) -> Option<i64> {
    match v {
        AMQPValue::ShortShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongLongInt(n) => Some(*n),
        _ => None,
    }
}

/// Quorum queues count earlier deliveries in `x-delivery-count`.
fn attempt_of(d: &lapin::message::Delivery) -> u32 {
    let count = d
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-delivery-count").and_then(as_i64));
    match count {
        Some(n) => u32::try_from(n.saturating_add(1)).unwrap_or(u32::MAX),
        None if d.redelivered => 2,
        None => 1,
    }
}

fn decode(
    d: &lapin::message::Delivery,
    raw_source: Option<&str>,
) -> Result<CloudEvent, crate::cloudevents::CloudEventError> {
    let mut message = Message {
        content_type: d.properties.content_type().as_ref().map(|c| c.to_string()),
        payload: Bytes::copy_from_slice(&d.data),
        ..Message::default()
    };
    if let Some(headers) = d.properties.headers() {
        for (name, value) in headers.inner() {
            let text = match value {
                AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                AMQPValue::ShortString(s) => s.to_string(),
                _ => continue,
            };
            message.headers.push((name.to_string(), text));
        }
    }
    let origin = super::raw_origin(raw_source, || {
        d.properties.message_id().as_ref().map(|id| id.to_string())
    });
    binding::decode_or_wrap(&message, Protocol::Amqp, origin)
}

struct AmqpSettle {
    acker: lapin::Acker,
}

#[async_trait]
impl Settle for AmqpSettle {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        self.acker
            .ack(BasicAckOptions::default())
            .await
            .map(drop)
            .map_err(|e| BrokerError::Rejected {
                broker: NAME,
                reason: format!("basic.ack: {e}"),
            })
    }

    async fn nack(self: Box<Self>, delay: Duration) -> Result<(), BrokerError> {
        let acker = self.acker;
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Err(e) = acker
                .nack(BasicNackOptions {
                    requeue: true,
                    multiple: false,
                })
                .await
            {
                tracing::warn!(error = %e, "basic.nack after the retry delay");
            }
        });
        Ok(())
    }
}
