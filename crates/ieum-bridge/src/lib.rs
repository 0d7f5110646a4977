//! The sidecar bridge's broker layer: CloudEvents with their protocol bindings, and one
//! [`Broker`] trait over NATS JetStream, RabbitMQ, MQTT 5, Redis Streams, Kafka and an
//! in-memory broker. The sidecar's publish endpoint, subscriptions and bindings are written
//! against this crate; it holds no business logic and parses nothing but CloudEvents
//! envelopes.
//!
//! # Layout
//!
//! - [`cloudevents`]: [`CloudEvent`] (spec 1.0), validation, the JSON format, and
//!   - [`cloudevents::http`]: the HTTP binding both ways (what the app sends to `POST
//!     /v1/publish/{pubsub}/{topic}` and what the sidecar POSTs to the app);
//!   - [`cloudevents::binding`]: every broker protocol's binding as one neutral
//!     [`Message`](cloudevents::binding::Message) (the table of choices is there).
//! - [`broker`]: the [`Broker`] trait, [`connect`] (from a `PubSub` spec) and
//!   [`connect_with`] (a `memory` PubSub hosted by a server: [`MemoryHost`]),
//!   [`Subscription`] and [`Delivery`]; one private module per broker.
//!
//! # The contract
//!
//! - [`Broker::publish`] returns only after the broker acknowledged, within
//!   [`broker::PUBLISH_TIMEOUT`]; every failure is a [`BrokerError`] that says what to do,
//!   and [`BrokerError::is_retryable`] tells 503 from 4xx. Never a silent drop.
//! - [`Broker::subscribe`] returns once the subscription is active. Groups share events
//!   among their members; each group gets every event. Missing streams, exchanges, queues
//!   and groups are created when the `PubSub` says `autoCreate` (the default).
//! - A [`Delivery`] is settled once: [`Delivery::ack`] after the app succeeded,
//!   [`Delivery::nack`] with a delay, or [`Delivery::dead_letter`] with a reason (the
//!   dead-letter event carries `deadletterreason`, `deadletterattempts` and
//!   `deadlettertopic`). A delivery dropped unsettled, or left when a consumer dies, is
//!   redelivered by the broker: at-least-once. [`Delivery::attempt`] counts deliveries.
//! - An ordering key is written to the `partitionkey` extension (and is the broker's own
//!   key where it has one); [`Delivery::ordering_key`] reads it back so the sidecar can
//!   deliver one key at a time. Each broker hands out one topic's events in publish order.
//! - [`Subscription::close`] stops fetching and leaves what was not handed out to the
//!   broker; handed-out deliveries can still be settled.
//! - Secrets named by `credentials.fromEnv` are read at [`connect`] from this process's
//!   environment and go to the client library only: never logged, never stored.
//!
//! # The brokers
//!
//! | type | topic → | group → | publish ack | attempt count | `nack(delay)` | crashed consumer's messages |
//! | --- | --- | --- | --- | --- | --- | --- |
//! | `nats-jetstream` | subject, one stream per topic | durable pull consumer | JetStream publish ack | delivery count | `NAK` with delay | redelivered after `redeliverAfter` (`ack_wait`) |
//! | `rabbitmq` | fanout exchange | quorum queue `{topic}.{group}` | publisher confirm | `x-delivery-count` + 1 | wait, then `basic.nack` requeue | requeued when its channel closes |
//! | `mqtt` | topic, `.` → `/` | shared subscription `$share/{group}/…` | `PUBACK` | `ieum-attempt` user property (+1 if `DUP`) | republish to `ieum-retry/{group}/…`, then `PUBACK` | resent when the same consumer reconnects (persistent session) |
//! | `redis-streams` | stream | consumer group | `XADD` reply | delivery count (`XPENDING`) | stays pending, `XCLAIM`ed after the delay | `XPENDING` + `XCLAIM` after `redeliverAfter`; a restarted consumer takes back its own at once |
//! | `kafka` | topic (created with `metadata.partitions`, 3 by default) | consumer group | `acks=all`, idempotent producer | counted in this process (Kafka keeps none) | handed out again by the subscription after the delay; the offset stays uncommitted | its partitions go to another member after `redeliverAfter` (session timeout), read from the last committed offset |
//! | `memory` | per-process topic (hosted by `ieum server` for sidecars) | FIFO queue | immediate (hosted: once the server queued it) | exact | re-queued after the delay | re-queued at once when dropped; hosted: after `redeliverAfter` when its sidecar died |
//!
//! Kafka settles by committing one offset per partition: the lowest unsettled one, so an
//! event above an unsettled one can come again after a restart (at-least-once).
//!
//! Each module's docs give the details and the reasons.

pub mod broker;
pub mod cloudevents;

pub use broker::{
    Broker, BrokerError, ConnectOptions, Delivery, MemoryBroker, MemoryHost, PublishError,
    SubscribeOptions, Subscription, connect, connect_with,
};
pub use cloudevents::{CloudEvent, CloudEventError};
