//! `kafka` over `rdkafka` (librdkafka, built from the sources bundled with the crate).
//!
//! The url is the bootstrap list: `kafka://host:port[,host:port…]` or Kafka's own
//! `host:port[,host:port…]` (port 9092 when left out). There is no SASL or TLS yet:
//! `credentials` on a kafka `PubSub` are refused with [`BrokerError::Config`].
//!
//! How the contract maps:
//!
//! - **Topics.** A topic is a Kafka topic. With `autoCreate` (the default) a missing one
//!   is created with the AdminClient: `metadata.partitions` partitions (3 by default, so
//!   up to three members of a group share the work) and `metadata.replicationFactor`
//!   replicas (1 by default, which suits one broker: write 3 on a real cluster). With
//!   `autoCreate: false` a missing topic is [`BrokerError::Missing`]. Metadata requests
//!   never create topics (`allow.auto.create.topics=false`).
//! - **Publishing.** One `FutureProducer` per `PubSub`, idempotent with `acks=all`:
//!   [`Broker::publish`](super::Broker::publish) returns once every in-sync replica has
//!   the record. The record key is the ordering key (the `partitionkey` attribute), so one
//!   key's events go to one partition, in order; events without a key are spread over the
//!   partitions and keep no order among themselves. Binary mode writes the attributes as
//!   `ce_` headers and `datacontenttype` as the `content-type` header; structured mode
//!   writes the JSON event with `content-type: application/cloudevents+json` (Kafka
//!   binding 1.0.2). On receipt, a record key becomes `partitionkey` when the event has
//!   none (the binding maps one onto the other).
//! - **Groups.** A group is a consumer group (`group.id` = the group). Kafka's groups
//!   span topics: one group name used on several topics is one group whose rebalances
//!   pause all of them briefly. Each subscription is one consumer on its own thread,
//!   with the eager protocol (`range,roundrobin`). [`Broker::subscribe`](super::Broker::subscribe)
//!   returns after the first partition assignment (at most [`SUBSCRIBE_TIMEOUT`]). A
//!   partition the group has no offset for starts at its end (events published after
//!   subscribe), and that position is committed at once, so a consumer that starts again
//!   resumes there rather than at the then-current end.
//! - **Settling.** Kafka acknowledges by committing an offset per partition, not per
//!   message. The subscription keeps the offsets it handed out and has not settled, and
//!   commits the lowest of them (or one past the last received when none is left):
//!   everything below a committed offset is acked, dead-lettered, or not a CloudEvent
//!   (which is logged and skipped). Commits are sent every poll (100 ms) and, waiting for
//!   the broker, when partitions are revoked and when the subscription ends.
//! - **`nack(delay)`.** Kafka cannot redeliver one message, so the subscription hands the
//!   same event out again itself after the delay, with the attempt count one higher; its
//!   offset stays uncommitted meanwhile, so a crash in between leaves it to the broker. A
//!   delivery dropped unsettled is handed out again at once, the same way (as `memory`
//!   does).
//! - **Attempt count.** Kafka keeps none, so it is counted in this process: exact while the
//!   process lives, including across subscriptions of the same topic and group on the
//!   same `PubSub` (a subscription that ends leaves its unsettled offsets' counts for the
//!   next one). After a crash of the process the broker's redelivery starts at 1 again.
//! - **Crashed consumers.** A member that stops heartbeating for `redeliverAfter`
//!   (`session.timeout.ms`, at least 6 s, Kafka's minimum) loses its partitions; the
//!   member that gets them reads from the last committed offset: every unsettled event
//!   again, and settled ones above the first unsettled one too (at-least-once).
//! - **In-flight bound.** A delivery holds one of `max_in_flight` permits until settled;
//!   with none free the consumer pauses its partitions (and keeps polling, so rebalances
//!   go on) and resumes when one is settled.
//! - **Closing.** [`Subscription::close`](super::Subscription::close) commits what is
//!   settled and leaves the group. A delivery settled after that is not committed: the
//!   next member receives it again. [`Broker::close`](super::Broker::close) stops every
//!   subscription and flushes the producer.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use ieum_model::bridge::BrokerType;
use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers as _, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, mpsc, oneshot};

use super::{
    BrokerError, Delivery, PublishError, Publisher, Settings, Settle, SubscribeOptions,
    Subscription,
};
use crate::cloudevents::binding::{self, Message, Protocol};
use crate::cloudevents::{CloudEvent, CloudEventError, PARTITION_KEY};

const NAME: &str = "kafka";
/// Partitions of a topic created without `metadata.partitions`.
const DEFAULT_PARTITIONS: &str = "3";
/// Replication factor of a topic created without `metadata.replicationFactor`.
const DEFAULT_REPLICATION: &str = "1";
/// The longest [`Broker::subscribe`](super::Broker::subscribe) waits for the group to
/// assign partitions.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one poll of a consumer blocks: bounds how late a stop, a commit or an
/// in-process retry is noticed.
const POLL: Duration = Duration::from_millis(100);
/// How long one poll blocks while the in-flight bound is reached (partitions paused).
const PAUSED_POLL: Duration = Duration::from_millis(20);
/// Kafka's default `group.min.session.timeout.ms` and `group.max.session.timeout.ms`.
const MIN_SESSION: Duration = Duration::from_secs(6);
const MAX_SESSION: Duration = Duration::from_secs(30 * 60);
/// How long a new topic may take to appear in the metadata.
const TOPIC_VISIBLE: Duration = Duration::from_secs(10);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn millis(d: Duration) -> String {
    d.as_millis().to_string()
}

#[derive(Clone)]
pub(crate) struct KafkaBroker {
    inner: Arc<Inner>,
}

/// Offsets a subscription handed out and did not settle, with their attempt counts, by
/// (topic, group) and then (partition, offset).
type Unsettled = HashMap<(String, String), HashMap<(i32, i64), u32>>;

struct Inner {
    settings: Settings,
    /// `bootstrap.servers`.
    bootstrap: String,
    /// Replaced by a new one when librdkafka declares it failed for good (an idempotent
    /// producer's fatal error).
    producer: std::sync::RwLock<Arc<FutureProducer>>,
    admin: AdminClient<DefaultClientContext>,
    /// Topics seen in the metadata (or created): not looked up again.
    topics: Mutex<HashSet<String>>,
    /// Left by ended subscriptions for the next one of the same topic and group.
    unsettled: Mutex<Unsettled>,
    /// Set by [`Broker::close`](super::Broker::close): consumers stop.
    closed: AtomicBool,
    /// Each consumer thread holds a clone; `close` drops this one and waits until the
    /// receiver says every clone is gone.
    workers: Mutex<Option<mpsc::Sender<()>>>,
    workers_done: tokio::sync::Mutex<mpsc::Receiver<()>>,
}

fn unreachable(settings: &Settings, reason: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unreachable {
        broker: NAME,
        url: settings.url.clone(),
        reason: reason.to_string(),
    }
}

/// The bootstrap list of a kafka url: `kafka://h:p,h:p` or `h:p,h:p`, port 9092 by default.
/// `name` is the PubSub's, for errors.
fn bootstrap(name: &str, url: &str) -> Result<String, BrokerError> {
    let config = |what: &str| {
        BrokerError::Config(format!(
            "PubSub/{name}: the kafka url `{url}` {what}: write kafka://HOST:PORT or HOST:PORT,HOST:PORT"
        ))
    };
    let url = url.trim();
    let hosts = url.strip_prefix("kafka://").unwrap_or(url);
    if hosts.contains("://") {
        return Err(config("has a scheme other than kafka://"));
    }
    let hosts = hosts.split(['/', '?', '#']).next().unwrap_or_default();
    if hosts.contains('@') {
        return Err(BrokerError::Config(format!(
            "PubSub/{name}: the kafka url names a user, but SASL is not supported yet: remove `user@` and use a listener without authentication"
        )));
    }
    let mut list = Vec::new();
    for host in hosts.split(',') {
        let host = host.trim();
        if host.is_empty() || host.starts_with(':') {
            return Err(config("has an empty broker address"));
        }
        let has_port = match host.strip_prefix('[') {
            Some(v6) => v6.contains("]:"),
            None => host.contains(':'),
        };
        list.push(if has_port {
            host.to_owned()
        } else {
            format!("{host}:9092")
        });
    }
    Ok(list.join(","))
}

/// Runs a blocking librdkafka call off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BrokerError> + Send + 'static,
) -> Result<T, BrokerError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BrokerError::Rejected {
            broker: NAME,
            reason: format!("a blocking Kafka call failed: {e}"),
        })?
}

impl KafkaBroker {
    pub(crate) async fn connect(settings: Settings) -> Result<Self, BrokerError> {
        if settings.secret.is_some() {
            return Err(BrokerError::Config(format!(
                "PubSub/{}: `credentials` are not supported for kafka yet (SASL is not built in): remove them and use a listener without authentication",
                settings.name
            )));
        }
        let bootstrap = bootstrap(&settings.name, &settings.url)?;
        let producer = new_producer(&settings, &bootstrap)?;
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("client.id", format!("ieum-{}-admin", settings.name))
            .create()
            .map_err(|e| BrokerError::Config(format!("PubSub/{}: {e}", settings.name)))?;
        let (workers, workers_done) = mpsc::channel(1);
        let inner = Arc::new(Inner {
            settings,
            bootstrap,
            producer: std::sync::RwLock::new(Arc::new(producer)),
            admin,
            topics: Mutex::default(),
            unsettled: Mutex::default(),
            closed: AtomicBool::new(false),
            workers: Mutex::new(Some(workers)),
            workers_done: tokio::sync::Mutex::new(workers_done),
        });
        // librdkafka connects lazily: ask for the cluster's brokers to know it answers.
        let probe = inner.clone();
        blocking(move || {
            probe
                .producer()
                .client()
                .fetch_metadata(None, super::CONNECT_TIMEOUT)
                .map(drop)
                .map_err(|e| unreachable(&probe.settings, e))
        })
        .await?;
        Ok(KafkaBroker { inner })
    }
}

/// The producer: idempotent, `acks=all`, giving up on a record after [`super::PUBLISH_TIMEOUT`].
fn new_producer(settings: &Settings, bootstrap: &str) -> Result<FutureProducer, BrokerError> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("client.id", format!("ieum-{}", settings.name))
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", millis(super::PUBLISH_TIMEOUT))
        .set("allow.auto.create.topics", "false")
        .set(
            "socket.connection.setup.timeout.ms",
            millis(super::CONNECT_TIMEOUT),
        )
        .create()
        .map_err(|e| BrokerError::Config(format!("PubSub/{}: {e}", settings.name)))
}

impl Inner {
    fn producer(&self) -> Arc<FutureProducer> {
        self.producer
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// After a fatal error of `failed`, puts a new producer in its place (once, however
    /// many publishes saw the error).
    fn replace_producer(&self, failed: &Arc<FutureProducer>) {
        let mut current = self
            .producer
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !Arc::ptr_eq(&current, failed) {
            return;
        }
        match new_producer(&self.settings, &self.bootstrap) {
            Ok(p) => *current = Arc::new(p),
            Err(e) => {
                tracing::warn!(pubsub = %self.settings.name, error = %e, "replacing the failed Kafka producer")
            }
        }
    }

    fn known(&self, topic: &str) -> bool {
        lock(&self.topics).contains(topic)
    }

    fn count(&self, key: &str, default: &str) -> i32 {
        // The model checked the value (a whole number from 1).
        self.settings
            .metadata(key, default)
            .parse()
            .unwrap_or_else(|_| default.parse().unwrap_or(1))
    }

    /// Makes sure `topic` exists: creates it when `autoCreate` is on, and waits until the
    /// metadata shows it; [`BrokerError::Missing`] when it does not exist and may not be
    /// created.
    async fn ensure_topic(self: &Arc<Self>, topic: &str) -> Result<(), BrokerError> {
        if self.known(topic) {
            return Ok(());
        }
        if self.settings.auto_create {
            self.create_topic(topic).await?;
        }
        let inner = self.clone();
        let name = topic.to_owned();
        let found = blocking(move || inner.await_topic(&name)).await?;
        if !found {
            return Err(BrokerError::Missing(format!("topic {topic}")));
        }
        lock(&self.topics).insert(topic.to_owned());
        Ok(())
    }

    async fn create_topic(&self, topic: &str) -> Result<(), BrokerError> {
        let partitions = self.count("partitions", DEFAULT_PARTITIONS);
        let replication = self.count("replicationFactor", DEFAULT_REPLICATION);
        let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
        let options = AdminOptions::new().operation_timeout(Some(super::PUBLISH_TIMEOUT));
        let results = super::acked(NAME, async {
            self.admin
                .create_topics([&new], &options)
                .await
                .map_err(|e| match e.rdkafka_error_code() {
                    Some(code) if is_transport(code) => unreachable(&self.settings, e),
                    _ => BrokerError::Rejected {
                        broker: NAME,
                        reason: format!("creating topic {topic}: {e}"),
                    },
                })
        })
        .await?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    let hint = match code {
                        RDKafkaErrorCode::InvalidReplicationFactor => format!(
                            ": set the PubSub's metadata.replicationFactor (is {replication}) to at most the number of brokers"
                        ),
                        RDKafkaErrorCode::InvalidPartitions => format!(
                            ": set the PubSub's metadata.partitions (is {partitions}) to a count the broker accepts"
                        ),
                        RDKafkaErrorCode::TopicAuthorizationFailed
                        | RDKafkaErrorCode::ClusterAuthorizationFailed
                        | RDKafkaErrorCode::PolicyViolation => format!(
                            ": the broker does not let ieum create it; create topic {name} yourself (and set autoCreate: false)"
                        ),
                        _ => String::new(),
                    };
                    return Err(BrokerError::Rejected {
                        broker: NAME,
                        reason: format!("creating topic {name}: {code}{hint}"),
                    });
                }
            }
        }
        Ok(())
    }

    /// Blocking: whether the metadata shows `topic` with partitions. Right after a create
    /// it may take a moment; without `autoCreate` the first "unknown topic" is the answer.
    fn await_topic(&self, topic: &str) -> Result<bool, BrokerError> {
        let deadline = tokio::time::Instant::now() + TOPIC_VISIBLE;
        loop {
            let metadata = self
                .producer()
                .client()
                .fetch_metadata(Some(topic), super::CONNECT_TIMEOUT)
                .map_err(|e| unreachable(&self.settings, e))?;
            let entry = metadata.topics().iter().find(|t| t.name() == topic);
            let error = entry.and_then(|t| t.error());
            match (entry, error) {
                (Some(t), None) if !t.partitions().is_empty() => return Ok(true),
                (_, Some(e))
                    if !matches!(
                        RDKafkaErrorCode::from(e),
                        RDKafkaErrorCode::UnknownTopicOrPartition
                            | RDKafkaErrorCode::UnknownTopic
                            | RDKafkaErrorCode::LeaderNotAvailable
                    ) =>
                {
                    return Err(BrokerError::Rejected {
                        broker: NAME,
                        reason: format!("metadata of topic {topic}: {}", RDKafkaErrorCode::from(e)),
                    });
                }
                _ if !self.settings.auto_create => return Ok(false),
                _ if tokio::time::Instant::now() >= deadline => return Ok(false),
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn take_unsettled(&self, topic: &str, group: &str) -> HashMap<(i32, i64), u32> {
        lock(&self.unsettled)
            .remove(&(topic.to_owned(), group.to_owned()))
            .unwrap_or_default()
    }

    fn leave_unsettled(&self, topic: &str, group: &str, left: HashMap<(i32, i64), u32>) {
        if left.is_empty() {
            return;
        }
        lock(&self.unsettled)
            .entry((topic.to_owned(), group.to_owned()))
            .or_default()
            .extend(left);
    }

    fn consumer_config(&self, group: &str) -> ClientConfig {
        let session = self
            .settings
            .redeliver_after
            .clamp(MIN_SESSION, MAX_SESSION);
        let heartbeat = (session / 3).min(Duration::from_secs(1));
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap)
            .set("client.id", format!("ieum-{}", self.settings.name))
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "latest")
            .set("allow.auto.create.topics", "false")
            .set("partition.assignment.strategy", "range,roundrobin")
            .set("session.timeout.ms", millis(session))
            .set("heartbeat.interval.ms", millis(heartbeat))
            .set(
                "socket.connection.setup.timeout.ms",
                millis(super::CONNECT_TIMEOUT),
            );
        config
    }
}

fn is_transport(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::NetworkException
            | RDKafkaErrorCode::Resolve
            | RDKafkaErrorCode::BrokerNotAvailable
            | RDKafkaErrorCode::LeaderNotAvailable
            | RDKafkaErrorCode::NotLeaderForPartition
    )
}

fn publish_error(inner: &Inner, topic: &str, e: &KafkaError) -> BrokerError {
    match e.rdkafka_error_code() {
        Some(
            RDKafkaErrorCode::UnknownTopicOrPartition
            | RDKafkaErrorCode::UnknownTopic
            | RDKafkaErrorCode::UnknownPartition,
        ) => {
            lock(&inner.topics).remove(topic);
            BrokerError::Missing(format!("topic {topic}"))
        }
        Some(
            RDKafkaErrorCode::MessageTimedOut
            | RDKafkaErrorCode::RequestTimedOut
            | RDKafkaErrorCode::OperationTimedOut,
        ) => BrokerError::Timeout {
            broker: NAME,
            timeout: super::PUBLISH_TIMEOUT,
        },
        Some(code) if is_transport(code) => unreachable(&inner.settings, e),
        _ => BrokerError::Rejected {
            broker: NAME,
            reason: format!("publishing to {topic}: {e}"),
        },
    }
}

#[async_trait]
impl Publisher for KafkaBroker {
    async fn publish(
        &self,
        topic: &str,
        event: &CloudEvent,
        ordering_key: Option<&str>,
    ) -> Result<(), BrokerError> {
        super::check_topic(topic)?;
        let event = super::prepare(event, ordering_key)?;
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(BrokerError::Closed);
        }
        let message = binding::encode(&event, Protocol::Kafka, inner.settings.mode);
        let mut headers = OwnedHeaders::new_with_capacity(message.headers.len() + 1);
        for (name, value) in &message.headers {
            headers = headers.insert(Header {
                key: name,
                value: Some(value.as_str()),
            });
        }
        if let Some(ct) = &message.content_type {
            headers = headers.insert(Header {
                key: "content-type",
                value: Some(ct.as_str()),
            });
        }
        let mut record = FutureRecord::to(topic)
            .payload(message.payload.as_ref())
            .headers(headers);
        if let Some(key) = event.extension(PARTITION_KEY) {
            record = record.key(key);
        }
        let producer = inner.producer();
        // One bound for all of it, a topic created on the way included.
        let result = super::acked(NAME, async {
            inner.ensure_topic(topic).await?;
            producer
                .send(record, super::PUBLISH_TIMEOUT)
                .await
                .map(drop)
                .map_err(|(e, _)| publish_error(inner, topic, &e))
        })
        .await;
        if result.is_err()
            && let Some((code, reason)) = producer.client().fatal_error()
        {
            // An idempotent producer that failed for good refuses everything after; the
            // next publish gets a new one.
            tracing::warn!(pubsub = %inner.settings.name, %code, reason, "the Kafka producer failed for good; replacing it");
            inner.replace_producer(&producer);
            return Err(unreachable(
                &inner.settings,
                format!("the producer failed ({code}: {reason}); a new one takes the next publish"),
            ));
        }
        result
    }
}

#[async_trait]
impl super::Broker for KafkaBroker {
    fn kind(&self) -> BrokerType {
        BrokerType::Kafka
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
        let inner = self.inner.clone();
        if inner.closed.load(Ordering::Acquire) {
            return Err(BrokerError::Closed);
        }
        inner.ensure_topic(topic).await?;
        let Some(alive) = lock(&inner.workers).clone() else {
            return Err(BrokerError::Closed);
        };
        let tracker = Arc::new(Mutex::new(Tracker::default()));
        let (ready_tx, ready_rx) = oneshot::channel();
        let last_error = Arc::new(Mutex::new(None));
        let context = GroupContext {
            inner: inner.clone(),
            topic: topic.to_owned(),
            group: group.to_owned(),
            tracker: tracker.clone(),
            ready: Mutex::new(Some(ready_tx)),
            last_error: last_error.clone(),
        };
        let consumer: BaseConsumer<GroupContext> = inner
            .consumer_config(group)
            .create_with_context(context)
            .map_err(|e| BrokerError::Config(format!("PubSub/{}: {e}", inner.settings.name)))?;
        consumer
            .subscribe(&[topic])
            .map_err(|e| BrokerError::Rejected {
                broker: NAME,
                reason: format!("subscribing group {group} to topic {topic}: {e}"),
            })?;
        let (tx, rx) = mpsc::channel(super::channel_capacity(options.max_in_flight));
        let (stop_tx, stop_rx) = oneshot::channel();
        let (retry_tx, retry_rx) = std::sync::mpsc::channel();
        let dead_letters: Option<(String, Arc<dyn Publisher>)> = options
            .dead_letter_topic
            .clone()
            .map(|t| (t, Arc::new(self.clone()) as Arc<dyn Publisher>));
        let worker = Worker {
            inner: inner.clone(),
            consumer,
            topic: topic.to_owned(),
            group: group.to_owned(),
            tracker,
            permits: Arc::new(Semaphore::new(super::channel_capacity(
                options.max_in_flight,
            ))),
            tx,
            retry_tx,
            retries: retry_rx,
            stash: VecDeque::new(),
            paused: None,
            dead_letters,
            raw_source: options.raw_source.clone(),
            _alive: alive,
        };
        let task = tokio::task::spawn_blocking(move || worker.run(stop_rx));
        match tokio::time::timeout(SUBSCRIBE_TIMEOUT, ready_rx).await {
            Ok(Ok(())) => Ok(Subscription::new(rx, stop_tx, task)),
            waited => {
                let _ = stop_tx.send(());
                let _ = task.await;
                let last = lock(&last_error)
                    .take()
                    .map(|e| format!(" (last error: {e})"))
                    .unwrap_or_default();
                Err(match waited {
                    Err(_) => unreachable(
                        &inner.settings,
                        format!(
                            "group {group} assigned no partitions of topic {topic} within {SUBSCRIBE_TIMEOUT:?}{last}"
                        ),
                    ),
                    _ if inner.closed.load(Ordering::Acquire) => BrokerError::Closed,
                    _ => unreachable(
                        &inner.settings,
                        format!("the consumer of group {group} stopped before it joined{last}"),
                    ),
                })
            }
        }
    }

    async fn close(&self) {
        let inner = &self.inner;
        inner.closed.store(true, Ordering::Release);
        drop(lock(&inner.workers).take());
        let mut done = inner.workers_done.lock().await;
        if tokio::time::timeout(super::PUBLISH_TIMEOUT, done.recv())
            .await
            .is_err()
        {
            tracing::warn!(pubsub = %inner.settings.name, "Kafka consumers did not stop within 10s");
        }
        let flush = inner.clone();
        let _ = blocking(move || {
            flush
                .producer()
                .flush(super::PUBLISH_TIMEOUT)
                .map_err(|e| unreachable(&flush.settings, e))
        })
        .await
        .inspect_err(|e| tracing::warn!(pubsub = %inner.settings.name, error = %e, "flushing the Kafka producer"));
    }
}

/// What the subscription knows of one assigned partition.
#[derive(Debug)]
struct Partition {
    /// One past the highest offset received.
    next: i64,
    /// Offsets handed out (or waiting for an in-process retry) and not settled, with the
    /// attempt count of their last delivery.
    outstanding: BTreeMap<i64, u32>,
    /// The offset last committed.
    committed: i64,
}

impl Partition {
    fn at(offset: i64) -> Self {
        Partition {
            next: offset,
            outstanding: BTreeMap::new(),
            committed: offset,
        }
    }

    /// The offset below which everything is settled.
    fn watermark(&self) -> i64 {
        self.outstanding.keys().next().copied().unwrap_or(self.next)
    }
}

/// The settled/unsettled bookkeeping of one subscription, shared by its consumer thread,
/// its rebalance callback and its deliveries.
#[derive(Debug, Default)]
struct Tracker {
    partitions: HashMap<i32, Partition>,
    /// Attempt counts an earlier subscription of the same topic and group left.
    earlier: HashMap<(i32, i64), u32>,
    /// Counts assignments, so a pause covers the current one.
    generation: u64,
}

impl Tracker {
    /// A record was received: its attempt count.
    fn received(&mut self, partition: i32, offset: i64) -> u32 {
        let attempt = self
            .earlier
            .remove(&(partition, offset))
            .map_or(1, |a| a.saturating_add(1));
        let p = self
            .partitions
            .entry(partition)
            .or_insert_with(|| Partition::at(offset));
        p.next = p.next.max(offset + 1);
        p.outstanding.insert(offset, attempt);
        attempt
    }

    /// A record that is no CloudEvent: settled as it arrives.
    fn skipped(&mut self, partition: i32, offset: i64) {
        let p = self
            .partitions
            .entry(partition)
            .or_insert_with(|| Partition::at(offset));
        p.next = p.next.max(offset + 1);
    }

    /// An in-process redelivery is about to be handed out: whether its offset is still
    /// this subscription's to deliver (its partition may have gone to another member).
    fn redelivering(&mut self, partition: i32, offset: i64, attempt: u32) -> bool {
        match self
            .partitions
            .get_mut(&partition)
            .and_then(|p| p.outstanding.get_mut(&offset))
        {
            Some(a) => {
                *a = attempt;
                true
            }
            None => false,
        }
    }

    /// A delivery could not be handed out after all: it does not count as an attempt.
    fn not_handed_out(&mut self, partition: i32, offset: i64) {
        if let Some(a) = self
            .partitions
            .get_mut(&partition)
            .and_then(|p| p.outstanding.get_mut(&offset))
        {
            *a = a.saturating_sub(1);
        }
    }

    fn settled(&mut self, partition: i32, offset: i64) {
        if let Some(p) = self.partitions.get_mut(&partition) {
            p.outstanding.remove(&offset);
        }
    }

    /// The offsets to commit now (those that moved), recorded as committed.
    fn due(&mut self) -> Vec<(i32, i64)> {
        let mut out = Vec::new();
        for (&partition, p) in &mut self.partitions {
            let mark = p.watermark();
            if mark > p.committed {
                p.committed = mark;
                out.push((partition, mark));
            }
        }
        out
    }

    /// What is left unsettled, for the next subscription of the same topic and group.
    fn left(&mut self) -> HashMap<(i32, i64), u32> {
        let mut left = std::mem::take(&mut self.earlier);
        for (&partition, p) in &self.partitions {
            for (&offset, &attempt) in &p.outstanding {
                left.insert((partition, offset), attempt);
            }
        }
        left
    }
}

/// The consumer's callbacks: rebalances (run on the consumer thread, inside `poll`).
struct GroupContext {
    inner: Arc<Inner>,
    topic: String,
    group: String,
    tracker: Arc<Mutex<Tracker>>,
    /// Told once the first assignment is in place: `subscribe` returns then.
    ready: Mutex<Option<oneshot::Sender<()>>>,
    /// The last error librdkafka reported, for a `subscribe` that times out.
    last_error: Arc<Mutex<Option<String>>>,
}

impl ClientContext for GroupContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(topic = %self.topic, group = %self.group, error = %error, reason, "Kafka consumer");
        *lock(&self.last_error) = Some(format!("{error}: {reason}"));
    }
}

impl ConsumerContext for GroupContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                let mut assignment = TopicPartitionList::new();
                for (partition, offset) in self.starts(consumer, &partitions) {
                    if let Err(e) = assignment.add_partition_offset(&self.topic, partition, offset)
                    {
                        tracing::warn!(topic = %self.topic, partition, error = %e, "Kafka assignment");
                    }
                }
                if let Err(e) = consumer.assign(&assignment) {
                    tracing::warn!(topic = %self.topic, group = %self.group, error = %e, "Kafka assign");
                }
                tracing::debug!(topic = %self.topic, group = %self.group, ?partitions, "Kafka partitions assigned");
                if let Some(ready) = lock(&self.ready).take() {
                    let _ = ready.send(());
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // Commit what is settled while the partitions are still ours.
                commit(consumer, &self.topic, &self.tracker, CommitMode::Sync);
                if let Err(e) = consumer.unassign() {
                    tracing::warn!(topic = %self.topic, group = %self.group, error = %e, "Kafka unassign");
                }
            }
            other => {
                tracing::warn!(topic = %self.topic, group = %self.group, error = %RDKafkaErrorCode::from(other), "Kafka rebalance failed");
                let _ = consumer.unassign();
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::warn!(topic = %self.topic, group = %self.group, error = %e, "Kafka offset commit failed; those events may be delivered again");
        }
    }
}

impl GroupContext {
    /// Where each newly assigned partition starts: where this subscription left it when
    /// it had it already, else the group's committed offset, else the partition's end
    /// (committed at once, so the position outlives this consumer).
    fn starts(&self, consumer: &BaseConsumer<Self>, partitions: &[i32]) -> Vec<(i32, Offset)> {
        let earlier = self.inner.take_unsettled(&self.topic, &self.group);
        let mut starts = Vec::with_capacity(partitions.len());
        let unknown: Vec<i32> = {
            let mut tracker = lock(&self.tracker);
            tracker.generation += 1;
            tracker.earlier.extend(earlier);
            // Partitions that went to another member: it reads them from the committed
            // offset.
            tracker.partitions.retain(|p, _| partitions.contains(p));
            for (&p, state) in &tracker.partitions {
                starts.push((p, Offset::Offset(state.next)));
            }
            partitions
                .iter()
                .copied()
                .filter(|p| !tracker.partitions.contains_key(p))
                .collect()
        };
        if unknown.is_empty() {
            return starts;
        }
        let mut query = TopicPartitionList::new();
        for &p in &unknown {
            query.add_partition(&self.topic, p);
        }
        let committed = consumer
            .committed_offsets(query, super::PUBLISH_TIMEOUT)
            .inspect_err(|e| tracing::warn!(topic = %self.topic, group = %self.group, error = %e, "reading committed Kafka offsets"))
            .ok();
        let mut initial = TopicPartitionList::new();
        let mut known = Vec::new();
        for p in unknown {
            let committed = committed
                .as_ref()
                .and_then(|c| c.find_partition(&self.topic, p))
                .map(|e| e.offset());
            let start = match committed {
                Some(Offset::Offset(o)) => Some(o),
                _ => match consumer.fetch_watermarks(&self.topic, p, super::PUBLISH_TIMEOUT) {
                    Ok((_, high)) => {
                        let _ = initial.add_partition_offset(&self.topic, p, Offset::Offset(high));
                        Some(high)
                    }
                    Err(e) => {
                        tracing::warn!(topic = %self.topic, partition = p, error = %e, "reading the end of a Kafka partition; starting at the end");
                        None
                    }
                },
            };
            match start {
                Some(o) => {
                    known.push((p, o));
                    starts.push((p, Offset::Offset(o)));
                }
                None => starts.push((p, Offset::End)),
            }
        }
        if initial.count() > 0
            && let Err(e) = consumer.commit(&initial, CommitMode::Sync)
        {
            tracing::warn!(topic = %self.topic, group = %self.group, error = %e, "committing the start of new Kafka partitions");
        }
        let mut tracker = lock(&self.tracker);
        for (p, o) in known {
            tracker.partitions.insert(p, Partition::at(o));
        }
        starts
    }
}

/// Commits what moved in `tracker`.
fn commit(
    consumer: &BaseConsumer<GroupContext>,
    topic: &str,
    tracker: &Mutex<Tracker>,
    mode: CommitMode,
) {
    let offsets = lock(tracker).due();
    if offsets.is_empty() {
        return;
    }
    let mut list = TopicPartitionList::new();
    for (p, o) in offsets {
        let _ = list.add_partition_offset(topic, p, Offset::Offset(o));
    }
    if let Err(e) = consumer.commit(&list, mode) {
        tracing::warn!(%topic, error = %e, "Kafka offset commit failed; those events may be delivered again");
    }
}

/// A record as received, detached from the consumer.
struct Received {
    partition: i32,
    offset: i64,
    key: Option<String>,
    message: Message,
}

impl Received {
    fn of(m: &BorrowedMessage<'_>) -> Self {
        let mut message = Message {
            payload: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
            ..Message::default()
        };
        if let Some(headers) = m.headers() {
            for h in headers.iter() {
                let value = String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned();
                if h.key.eq_ignore_ascii_case("content-type") {
                    message.content_type = Some(value);
                } else {
                    message.headers.push((h.key.to_owned(), value));
                }
            }
        }
        Received {
            partition: m.partition(),
            offset: m.offset(),
            key: m
                .key()
                .and_then(|k| std::str::from_utf8(k).ok())
                .filter(|k| !k.is_empty())
                .map(str::to_owned),
            message,
        }
    }

    fn decode(&self, raw_source: Option<&str>) -> Result<CloudEvent, CloudEventError> {
        let origin = super::raw_origin(raw_source, || {
            Some(format!("{}-{}", self.partition, self.offset))
        });
        let mut event = binding::decode_or_wrap(&self.message, Protocol::Kafka, origin)?;
        if let Some(key) = &self.key
            && event.extension(PARTITION_KEY).is_none()
        {
            event
                .extensions
                .insert(PARTITION_KEY.to_owned(), key.clone());
        }
        Ok(event)
    }
}

/// A delivery to hand out again (after a nack, or dropped unsettled).
struct Retry {
    event: CloudEvent,
    partition: i32,
    offset: i64,
    attempt: u32,
}

/// One subscription's consumer, run on a blocking thread: polls, hands out, commits.
struct Worker {
    inner: Arc<Inner>,
    consumer: BaseConsumer<GroupContext>,
    topic: String,
    group: String,
    tracker: Arc<Mutex<Tracker>>,
    permits: Arc<Semaphore>,
    tx: mpsc::Sender<Delivery>,
    retry_tx: std::sync::mpsc::Sender<Retry>,
    retries: std::sync::mpsc::Receiver<Retry>,
    /// Records received while paused (librdkafka drops most; kept for the rest).
    stash: VecDeque<Received>,
    /// The assignment generation paused, while the in-flight bound is reached.
    paused: Option<u64>,
    dead_letters: Option<(String, Arc<dyn Publisher>)>,
    /// Wraps records that are no CloudEvent (input bindings).
    raw_source: Option<String>,
    _alive: mpsc::Sender<()>,
}

impl Worker {
    fn run(mut self, mut stop: oneshot::Receiver<()>) {
        loop {
            if !matches!(stop.try_recv(), Err(oneshot::error::TryRecvError::Empty))
                || self.inner.closed.load(Ordering::Acquire)
                || self.tx.is_closed()
            {
                break;
            }
            commit(
                &self.consumer,
                &self.topic,
                &self.tracker,
                CommitMode::Async,
            );
            let permit = match self.permits.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(TryAcquireError::NoPermits) => {
                    self.pause();
                    if let Some(r) = self.poll(PAUSED_POLL) {
                        self.stash.push_back(r);
                    }
                    continue;
                }
                Err(TryAcquireError::Closed) => break,
            };
            self.resume();
            let handed = if let Some(r) = self.stash.pop_front() {
                self.deliver(r, permit)
            } else if let Ok(r) = self.retries.try_recv() {
                self.redeliver(r, permit)
            } else if let Some(r) = self.poll(POLL) {
                self.deliver(r, permit)
            } else {
                true
            };
            if !handed {
                break;
            }
        }
        commit(&self.consumer, &self.topic, &self.tracker, CommitMode::Sync);
        let left = lock(&self.tracker).left();
        self.inner.leave_unsettled(&self.topic, &self.group, left);
        // Dropping the consumer leaves the group (after a last revoke and commit).
    }

    fn poll(&mut self, timeout: Duration) -> Option<Received> {
        match self.consumer.poll(timeout)? {
            Ok(m) => Some(Received::of(&m)),
            Err(e) => {
                tracing::warn!(topic = %self.topic, group = %self.group, error = %e, "Kafka consumer");
                None
            }
        }
    }

    fn pause(&mut self) {
        let generation = lock(&self.tracker).generation;
        if self.paused == Some(generation) {
            return;
        }
        if let Ok(assignment) = self.consumer.assignment()
            && assignment.count() > 0
            && let Err(e) = self.consumer.pause(&assignment)
        {
            tracing::warn!(topic = %self.topic, error = %e, "pausing Kafka partitions");
        }
        self.paused = Some(generation);
    }

    fn resume(&mut self) {
        if self.paused.take().is_none() {
            return;
        }
        if let Ok(assignment) = self.consumer.assignment()
            && assignment.count() > 0
            && let Err(e) = self.consumer.resume(&assignment)
        {
            tracing::warn!(topic = %self.topic, error = %e, "resuming Kafka partitions");
        }
    }

    /// Hands out a received record; `false` when the subscriber is gone.
    fn deliver(&mut self, r: Received, permit: OwnedSemaphorePermit) -> bool {
        let event = match r.decode(self.raw_source.as_deref()) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(topic = %self.topic, partition = r.partition, offset = r.offset, error = %e, "skipping a record that is no CloudEvent");
                lock(&self.tracker).skipped(r.partition, r.offset);
                return true;
            }
        };
        let attempt = lock(&self.tracker).received(r.partition, r.offset);
        self.hand_out(
            Retry {
                event,
                partition: r.partition,
                offset: r.offset,
                attempt,
            },
            permit,
        )
    }

    /// Hands out a nacked or dropped delivery again, if its partition is still ours.
    fn redeliver(&mut self, r: Retry, permit: OwnedSemaphorePermit) -> bool {
        if !lock(&self.tracker).redelivering(r.partition, r.offset, r.attempt) {
            return true;
        }
        self.hand_out(r, permit)
    }

    fn hand_out(&mut self, r: Retry, permit: OwnedSemaphorePermit) -> bool {
        let (partition, offset) = (r.partition, r.offset);
        let delivery = Delivery::new(
            r.event.clone(),
            r.attempt,
            &self.topic,
            Box::new(KafkaSettle {
                tracker: self.tracker.clone(),
                retries: self.retry_tx.clone(),
                pending: Some(r),
                _permit: permit,
            }),
            self.dead_letters.clone(),
        );
        if self.tx.blocking_send(delivery).is_err() {
            lock(&self.tracker).not_handed_out(partition, offset);
            return false;
        }
        true
    }
}

struct KafkaSettle {
    tracker: Arc<Mutex<Tracker>>,
    retries: std::sync::mpsc::Sender<Retry>,
    /// The delivery, until it is settled.
    pending: Option<Retry>,
    _permit: OwnedSemaphorePermit,
}

#[async_trait]
impl Settle for KafkaSettle {
    async fn ack(mut self: Box<Self>) -> Result<(), BrokerError> {
        if let Some(r) = self.pending.take() {
            lock(&self.tracker).settled(r.partition, r.offset);
        }
        Ok(())
    }

    async fn nack(mut self: Box<Self>, delay: Duration) -> Result<(), BrokerError> {
        if let Some(mut r) = self.pending.take() {
            r.attempt = r.attempt.saturating_add(1);
            let retries = self.retries.clone();
            // The offset stays outstanding: if the subscription ends before the delay is
            // over, the broker delivers the event again to the group.
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = retries.send(r);
            });
        }
        Ok(())
    }
}

impl Drop for KafkaSettle {
    fn drop(&mut self) {
        if let Some(mut r) = self.pending.take() {
            r.attempt = r.attempt.saturating_add(1);
            let _ = self.retries.send(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_become_bootstrap_lists() {
        for (url, want) in [
            ("kafka://127.0.0.1:9092", "127.0.0.1:9092"),
            ("127.0.0.1:9092", "127.0.0.1:9092"),
            ("kafka://a:1,b:2/", "a:1,b:2"),
            ("a, b:19092", "a:9092,b:19092"),
            ("[::1]:9093,[::1]", "[::1]:9093,[::1]:9092"),
        ] {
            assert_eq!(bootstrap("bus", url).unwrap(), want, "{url}");
        }
        for url in ["a,,b", "nats://a:4222", "kafka://u@a:9092", ":9092"] {
            let err = bootstrap("bus", url).unwrap_err();
            assert!(matches!(err, BrokerError::Config(_)), "{url}: {err}");
            assert!(err.to_string().contains("PubSub/bus"), "{err}");
        }
    }

    #[test]
    fn commits_stop_below_the_first_unsettled_offset() {
        let mut t = Tracker::default();
        t.partitions.insert(0, Partition::at(10));
        assert_eq!(t.received(0, 10), 1);
        assert_eq!(t.received(0, 11), 1);
        assert_eq!(t.received(0, 12), 1);
        assert!(t.due().is_empty(), "nothing settled yet");
        t.settled(0, 11);
        assert!(t.due().is_empty(), "10 is still out");
        t.settled(0, 10);
        assert_eq!(t.due(), [(0, 12)]);
        // A nacked offset stays out: redelivered with its new attempt, still blocking.
        assert!(t.redelivering(0, 12, 2));
        t.skipped(0, 13);
        assert!(t.due().is_empty());
        t.settled(0, 12);
        assert_eq!(t.due(), [(0, 14)], "past the skipped record too");
        assert!(!t.redelivering(0, 12, 3), "settled: not handed out again");
        // What is left goes to the next subscription, which counts on from it.
        t.received(0, 14);
        t.not_handed_out(0, 14);
        let left = t.left();
        assert_eq!(left, HashMap::from([((0, 14), 0)]));
        let mut next = Tracker {
            earlier: HashMap::from([((0, 20), 2)]),
            ..Tracker::default()
        };
        assert_eq!(next.received(0, 20), 3);
        assert_eq!(next.received(0, 21), 1);
    }
}
