//! `redis-streams` over the `redis` crate (tokio).
//!
//! A topic is a stream (key `{keyPrefix}{topic}`, no prefix by default); a group is a
//! consumer group created at `$` (events after it) with `MKSTREAM` when `autoCreate` is on.
//! Publishing is `XADD` and returns with its reply. Each subscription reads with its own
//! connection (`XREADGROUP … BLOCK` would stall a shared one) and settles on the shared
//! one: `ack` is `XACK`. Redis has no negative ack: `nack(delay)` leaves the entry pending
//! and, after the delay, the subscription takes it back with `XCLAIM` (which counts a
//! delivery). Entries another consumer left pending longer than `redeliverAfter` (it
//! crashed) are found with `XPENDING` and taken over with `XCLAIM`; at start a consumer
//! first takes back its own pending entries. The attempt count is Redis's delivery count.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use ieum_model::bridge::BrokerType;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamClaimReply, StreamId, StreamPendingCountReply, StreamReadReply};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::{
    BrokerError, Delivery, PublishError, Publisher, Settings, Settle, SubscribeOptions,
    Subscription,
};
use crate::cloudevents::CloudEvent;
use crate::cloudevents::binding::{self, Message, Protocol};

const NAME: &str = "redis-streams";
/// The entry field holding the payload.
const DATA_FIELD: &str = "data";
/// The entry field holding the content type.
const CONTENT_TYPE_FIELD: &str = "content-type";
/// How long one `XREADGROUP` blocks, which bounds how late a stop is noticed.
const BLOCK: Duration = Duration::from_millis(500);

#[derive(Clone)]
pub(crate) struct RedisBroker {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    conn: MultiplexedConnection,
    settings: Settings,
    /// How each new connection is made (the name resolution `tls.serverName` needs).
    connect: Connect,
}

/// How [`connection`] opens a connection: for `rediss://`, with the TLS settings (to
/// explain a refused certificate) and, when `tls.serverName` differs from the URL's host,
/// a resolver that sends that name to the host's address.
#[derive(Clone, Default)]
struct Connect {
    tls: Option<Arc<super::tls::Tls>>,
    config: redis::AsyncConnectionConfig,
}

fn unreachable(settings: &Settings, reason: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unreachable {
        broker: NAME,
        url: settings.url.clone(),
        reason: reason.to_string(),
    }
}

fn error(settings: &Settings, e: &redis::RedisError) -> BrokerError {
    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout() {
        unreachable(settings, e)
    } else {
        BrokerError::Rejected {
            broker: NAME,
            reason: e.to_string(),
        }
    }
}

impl RedisBroker {
    /// Connects; with `tls` (a `rediss://` URL) over TLS that trusts `tls.caFile` (or the
    /// platform's roots) and checks `tls.serverName` (or the URL's host).
    pub(crate) async fn connect(
        settings: Settings,
        tls: Option<Arc<super::tls::Tls>>,
    ) -> Result<Self, BrokerError> {
        let config_error =
            |e: redis::RedisError| BrokerError::Config(format!("PubSub/{}: {e}", settings.name));
        let (client, connect) = match tls {
            None => (
                redis::Client::open(settings.url_with_secret()).map_err(config_error)?,
                Connect::default(),
            ),
            Some(tls) => tls_client(&settings, tls).map_err(config_error)?,
        };
        let conn = connection(&client, &settings, &connect).await?;
        Ok(RedisBroker {
            inner: Arc::new(Inner {
                client,
                conn,
                settings,
                connect,
            }),
        })
    }
}

/// A `rediss://` client: the CA file as its only roots, the certificate check always on
/// (whatever the URL says), and `tls.serverName` as the name connected to, resolved to
/// the URL's host.
fn tls_client(
    settings: &Settings,
    tls: Arc<super::tls::Tls>,
) -> redis::RedisResult<(redis::Client, Connect)> {
    use redis::{ConnectionAddr, IntoConnectionInfo as _};
    // The `redis` crate builds its rustls configuration with the process-wide provider.
    super::tls::install_ring_as_default();
    let info = settings.url_with_secret().into_connection_info()?;
    let ConnectionAddr::TcpTls { host, port, .. } = info.addr().clone() else {
        return Err(redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "TLS needs a rediss:// URL",
        )));
    };
    let mut config = redis::AsyncConnectionConfig::new();
    let name = match &tls.server_name {
        Some(name) if *name != host => {
            config = config.set_dns_resolver(ServerNameResolver {
                name: name.clone(),
                host,
            });
            name.clone()
        }
        _ => host,
    };
    let info = info.set_addr(ConnectionAddr::TcpTls {
        host: name,
        port,
        insecure: false,
        tls_params: None,
    });
    let client = match &tls.ca_pem {
        Some(pem) => redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.clone()),
            },
        )?,
        None => redis::Client::open(info)?,
    };
    Ok((
        client,
        Connect {
            tls: Some(tls),
            config,
        },
    ))
}

/// Resolves `tls.serverName` to the address of the URL's host, so the TLS client checks
/// (and sends as SNI) the certificate's name while connecting where the URL says.
struct ServerNameResolver {
    name: String,
    host: String,
}

impl redis::io::AsyncDNSResolver for ServerNameResolver {
    fn resolve<'a, 'b: 'a>(
        &'a self,
        host: &'b str,
        port: u16,
    ) -> redis::RedisFuture<'a, Box<dyn Iterator<Item = std::net::SocketAddr> + Send + 'a>> {
        Box::pin(async move {
            let target = if host == self.name {
                self.host.as_str()
            } else {
                host
            };
            let addrs = tokio::net::lookup_host((target, port)).await?;
            Ok(Box::new(addrs) as Box<dyn Iterator<Item = std::net::SocketAddr> + Send>)
        })
    }
}

async fn connection(
    client: &redis::Client,
    settings: &Settings,
    connect: &Connect,
) -> Result<MultiplexedConnection, BrokerError> {
    let reason = |e: &dyn std::fmt::Display| super::tls::reason(connect.tls.as_deref(), e);
    tokio::time::timeout(
        super::CONNECT_TIMEOUT,
        client.get_multiplexed_async_connection_with_config(&connect.config),
    )
    .await
    .map_err(|_| unreachable(settings, reason(&"no answer within 5s")))?
    .map_err(|e| unreachable(settings, reason(&e)))
}

impl Inner {
    fn key(&self, topic: &str) -> String {
        format!("{}{topic}", self.settings.metadata("keyPrefix", ""))
    }
}

#[async_trait]
impl Publisher for RedisBroker {
    async fn publish(
        &self,
        topic: &str,
        event: &CloudEvent,
        ordering_key: Option<&str>,
    ) -> Result<(), BrokerError> {
        super::check_topic(topic)?;
        let event = super::prepare(event, ordering_key)?;
        let inner = &self.inner;
        let message = binding::encode(&event, Protocol::RedisStreams, inner.settings.mode);
        let mut cmd = redis::cmd("XADD");
        cmd.arg(inner.key(topic));
        if !inner.settings.auto_create {
            cmd.arg("NOMKSTREAM");
        }
        cmd.arg("*");
        for (name, value) in &message.headers {
            cmd.arg(name).arg(value);
        }
        if let Some(ct) = &message.content_type {
            cmd.arg(CONTENT_TYPE_FIELD).arg(ct);
        }
        if !message.payload.is_empty() {
            cmd.arg(DATA_FIELD).arg(message.payload.as_ref());
        }
        let mut conn = inner.conn.clone();
        let id: Option<String> = super::acked(NAME, async {
            cmd.query_async(&mut conn)
                .await
                .map_err(|e| error(&inner.settings, &e))
        })
        .await?;
        match id {
            Some(_) => Ok(()),
            None => Err(BrokerError::Missing(format!("stream {}", inner.key(topic)))),
        }
    }
}

#[async_trait]
impl super::Broker for RedisBroker {
    fn kind(&self) -> BrokerType {
        BrokerType::RedisStreams
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
        let key = inner.key(topic);
        let mut create = redis::cmd("XGROUP");
        create.arg("CREATE").arg(&key).arg(group).arg("$");
        if inner.settings.auto_create {
            create.arg("MKSTREAM");
        }
        let mut conn = inner.conn.clone();
        match create.query_async::<()>(&mut conn).await {
            Ok(()) => {}
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            Err(e) if e.to_string().contains("requires the key to exist") => {
                return Err(BrokerError::Missing(format!("stream {key}")));
            }
            Err(e) => return Err(error(&inner.settings, &e)),
        }
        let reader = connection(&inner.client, &inner.settings, &inner.connect).await?;
        let (tx, rx) = mpsc::channel(super::channel_capacity(options.max_in_flight));
        let (stop_tx, stop_rx) = oneshot::channel();
        let (retry_tx, retry_rx) = mpsc::unbounded_channel();
        let dead_letters: Option<(String, Arc<dyn Publisher>)> = options
            .dead_letter_topic
            .clone()
            .map(|t| (t, Arc::new(self.clone()) as Arc<dyn Publisher>));
        let reader = Reader {
            inner,
            reader,
            key,
            topic: topic.to_owned(),
            group: group.to_owned(),
            consumer: options.consumer.clone(),
            raw_source: options.raw_source.clone(),
            permits: Arc::new(Semaphore::new(super::channel_capacity(
                options.max_in_flight,
            ))),
            tx,
            retry_tx,
            dead_letters,
        };
        let task = tokio::spawn(reader.run(stop_rx, retry_rx));
        Ok(Subscription::new(rx, stop_tx, task))
    }

    async fn close(&self) {}
}

struct Reader {
    /// Wraps entries that are no CloudEvent (input bindings).
    raw_source: Option<String>,
    inner: Arc<Inner>,
    reader: MultiplexedConnection,
    key: String,
    topic: String,
    group: String,
    consumer: String,
    permits: Arc<Semaphore>,
    tx: mpsc::Sender<Delivery>,
    retry_tx: mpsc::UnboundedSender<(String, u32)>,
    dead_letters: Option<(String, Arc<dyn Publisher>)>,
}

enum Step {
    Stop,
    Retry(String, u32),
    Read,
}

impl Reader {
    async fn run(
        mut self,
        mut stop: oneshot::Receiver<()>,
        mut retries: mpsc::UnboundedReceiver<(String, u32)>,
    ) {
        // What this consumer left unacknowledged in an earlier life comes first.
        if let Err(e) = self.reclaim(true).await {
            tracing::warn!(topic = %self.topic, error = %e, "reclaiming own pending entries");
        }
        let idle = self.inner.settings.redeliver_after;
        let mut next_reclaim = tokio::time::Instant::now() + idle / 2;
        loop {
            let step = tokio::select! {
                biased;
                _ = &mut stop => Step::Stop,
                Some((id, attempt)) = retries.recv() => Step::Retry(id, attempt),
                () = std::future::ready(()) => Step::Read,
            };
            let result = match step {
                Step::Stop => return,
                Step::Retry(id, attempt) => self.claim(&[id], 0, Some(attempt)).await,
                Step::Read => {
                    if tokio::time::Instant::now() >= next_reclaim {
                        next_reclaim = tokio::time::Instant::now() + idle / 2;
                        self.reclaim(false).await
                    } else {
                        self.read().await
                    }
                }
            };
            match result {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(topic = %self.topic, error = %e, "reading the stream");
                    tokio::select! {
                        _ = &mut stop => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    /// Reads new entries; `Ok(false)` when the subscriber is gone.
    async fn read(&mut self) -> Result<bool, BrokerError> {
        let free = self.permits.available_permits();
        if free == 0 {
            // Wait for a settle before fetching more.
            let Ok(p) = self.permits.clone().acquire_owned().await else {
                return Ok(false);
            };
            drop(p);
            return Ok(true);
        }
        let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(free)
            .arg("BLOCK")
            .arg(u64::try_from(BLOCK.as_millis()).unwrap_or(500))
            .arg("STREAMS")
            .arg(&self.key)
            .arg(">")
            .query_async(&mut self.reader)
            .await
            .map_err(|e| error(&self.inner.settings, &e))?;
        let entries = reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .map(|id| (id, 1));
        self.deliver(entries.collect()).await
    }

    /// Takes over entries pending longer than `redeliverAfter` (`own`: this consumer's
    /// entries from an earlier life, whatever their idle time).
    async fn reclaim(&mut self, own: bool) -> Result<bool, BrokerError> {
        let idle = if own {
            0
        } else {
            u64::try_from(self.inner.settings.redeliver_after.as_millis()).unwrap_or(u64::MAX)
        };
        let mut cmd = redis::cmd("XPENDING");
        cmd.arg(&self.key)
            .arg(&self.group)
            .arg("IDLE")
            .arg(idle)
            .arg("-")
            .arg("+")
            .arg(self.permits.available_permits().max(1));
        if own {
            cmd.arg(&self.consumer);
        }
        let pending: StreamPendingCountReply = cmd
            .query_async(&mut self.reader)
            .await
            .map_err(|e| error(&self.inner.settings, &e))?;
        if pending.ids.is_empty() {
            return Ok(true);
        }
        let counts: HashMap<String, usize> = pending
            .ids
            .iter()
            .map(|p| (p.id.clone(), p.times_delivered))
            .collect();
        let ids: Vec<String> = pending.ids.into_iter().map(|p| p.id).collect();
        let claimed: StreamClaimReply = redis::cmd("XCLAIM")
            .arg(&self.key)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(idle)
            .arg(&ids)
            .query_async(&mut self.reader)
            .await
            .map_err(|e| error(&self.inner.settings, &e))?;
        let entries = claimed
            .ids
            .into_iter()
            .map(|e| {
                let before = counts.get(&e.id).copied().unwrap_or(1);
                (e, u32::try_from(before + 1).unwrap_or(u32::MAX))
            })
            .collect();
        self.deliver(entries).await
    }

    /// Takes back one entry this consumer nacked.
    async fn claim(
        &mut self,
        ids: &[String],
        idle: u64,
        attempt: Option<u32>,
    ) -> Result<bool, BrokerError> {
        let claimed: StreamClaimReply = redis::cmd("XCLAIM")
            .arg(&self.key)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(idle)
            .arg(ids)
            .query_async(&mut self.reader)
            .await
            .map_err(|e| error(&self.inner.settings, &e))?;
        let entries = claimed
            .ids
            .into_iter()
            .map(|e| (e, attempt.unwrap_or(2)))
            .collect();
        self.deliver(entries).await
    }

    async fn deliver(&mut self, entries: Vec<(StreamId, u32)>) -> Result<bool, BrokerError> {
        for (entry, attempt) in entries {
            let Ok(permit) = self.permits.clone().acquire_owned().await else {
                return Ok(false);
            };
            let event = match decode(&entry, self.raw_source.as_deref()) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(topic = %self.topic, id = %entry.id, error = %e, "acknowledging an entry that is no CloudEvent");
                    let _ = self.xack(&entry.id).await;
                    continue;
                }
            };
            let settle = RedisSettle {
                inner: self.inner.clone(),
                key: self.key.clone(),
                group: self.group.clone(),
                id: entry.id.clone(),
                attempt,
                retry_tx: self.retry_tx.clone(),
                _permit: permit,
            };
            let delivery = Delivery::new(
                event,
                attempt,
                &self.topic,
                Box::new(settle),
                self.dead_letters.clone(),
            );
            if self.tx.send(delivery).await.is_err() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn xack(&self, id: &str) -> Result<(), BrokerError> {
        xack(&self.inner, &self.key, &self.group, id).await
    }
}

async fn xack(inner: &Inner, key: &str, group: &str, id: &str) -> Result<(), BrokerError> {
    let mut conn = inner.conn.clone();
    redis::cmd("XACK")
        .arg(key)
        .arg(group)
        .arg(id)
        .query_async::<i64>(&mut conn)
        .await
        .map(drop)
        .map_err(|e| error(&inner.settings, &e))
}

fn decode(
    entry: &StreamId,
    raw_source: Option<&str>,
) -> Result<CloudEvent, crate::cloudevents::CloudEventError> {
    let mut message = Message::default();
    for (field, value) in &entry.map {
        let bytes: Vec<u8> = redis::from_redis_value_ref(value).unwrap_or_default();
        match field.as_str() {
            DATA_FIELD => message.payload = Bytes::from(bytes),
            CONTENT_TYPE_FIELD => {
                message.content_type = Some(String::from_utf8_lossy(&bytes).into_owned());
            }
            name => message.headers.push((
                name.to_owned(),
                String::from_utf8_lossy(&bytes).into_owned(),
            )),
        }
    }
    let origin = super::raw_origin(raw_source, || Some(entry.id.clone()));
    binding::decode_or_wrap(&message, Protocol::RedisStreams, origin)
}

struct RedisSettle {
    inner: Arc<Inner>,
    key: String,
    group: String,
    id: String,
    attempt: u32,
    retry_tx: mpsc::UnboundedSender<(String, u32)>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

#[async_trait]
impl Settle for RedisSettle {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        xack(&self.inner, &self.key, &self.group, &self.id).await
    }

    async fn nack(self: Box<Self>, delay: Duration) -> Result<(), BrokerError> {
        let RedisSettle {
            id,
            attempt,
            retry_tx,
            ..
        } = *self;
        // The entry stays pending; the subscription claims it back after the delay. If
        // the subscription is gone by then, it stays pending for the next consumer.
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = retry_tx.send((id, attempt.saturating_add(1)));
        });
        Ok(())
    }
}
