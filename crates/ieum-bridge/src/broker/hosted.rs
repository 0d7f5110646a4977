//! `memory` hosted by `ieum server`: a client [`Broker`] over the server's
//! `/v1/pubsubs` API, so sidecars of different services — different processes — share a
//! `memory` PubSub. The server keeps the in-process broker of `memory.rs` and hands its
//! events out as leases.
//!
//! | broker operation | request to the server |
//! | --- | --- |
//! | `publish` | `POST /v1/pubsubs/{name}/topics/{topic}/events`, the event in structured JSON → 204 once queued |
//! | `subscribe` | `POST /v1/pubsubs/{name}/topics/{topic}/subscriptions` `{group, consumer, maxInFlight, deadLetterTopic}` → 201 `{id}`: the group exists from then on |
//! | deliveries | `POST /v1/pubsubs/{name}/subscriptions/{id}/fetch?max=N&wait=20s` in a loop, while a place among `maxInFlight` is free (`max=0` every 10 s otherwise, to stay alive) |
//! | `ack`, `nack(delay)`, dropped unsettled | `POST /v1/pubsubs/{name}/subscriptions/{id}/leases/{lease}` `{action: ack \| nack (+ delay) \| release}` → 204 |
//! | `dead_letter` | a publish to the dead-letter topic, then `ack` |
//!
//! The server gives a delivery back to the queue when it is not settled within the
//! PubSub's `redeliverAfter` (its sidecar died), and releases a subscription nobody
//! fetched for a minute; a fetch then answers 404, the [`Subscription`] ends, and the
//! sidecar subscribes again. A server that cannot be reached is
//! [`BrokerError::Unreachable`] (the sidecar answers a publish with 503).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use ieum_model::bridge::{BrokerType, PubSubSpec};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};

use super::{
    Broker, BrokerError, Delivery, PUBLISH_TIMEOUT, PublishError, Publisher, Settle,
    SubscribeOptions, Subscription,
};
use crate::cloudevents::{CloudEvent, STRUCTURED_CONTENT_TYPE};

/// Longest a fetch waits on the server for a first event.
const FETCH_WAIT: Duration = Duration::from_secs(20);
/// Most deliveries one fetch asks for.
const FETCH_MAX: usize = 256;
/// How often a subscription with every place in flight tells the server it is alive.
const KEEPALIVE: Duration = Duration::from_secs(10);
/// Longest wait for the server's answer to a subscribe or a settle.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Waits between fetches that failed: from the first to the longest.
const RETRY: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(5));
/// The broker type named in errors.
const BROKER: &str = "memory";

/// The server that hosts `memory` PubSubs (`ieum server`), as a sidecar reaches it.
#[derive(Clone)]
pub struct MemoryHost {
    /// The server's API address, e.g. `http://127.0.0.1:7700`.
    pub url: String,
    /// Its bearer token, for a server not bound to loopback (writes need it).
    pub token: Option<String>,
    /// For an `https://` server: the TLS configuration that verifies it (bootstrap trust,
    /// `ieum_identity::ServerTrust`); required for `https://`, never skipped.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl MemoryHost {
    /// An HTTP/1.1 client of the server: verified by `tls` for `https://` (never without),
    /// never through a proxy. The error says what to fix.
    pub fn http_client(&self) -> Result<reqwest::Client, String> {
        let mut builder = reqwest::Client::builder().no_proxy();
        match (&self.tls, self.url.starts_with("https://")) {
            (Some(tls), _) => {
                // HTTP/1.1 only: this client speaks no HTTP/2.
                let mut tls = (**tls).clone();
                tls.alpn_protocols = vec![b"http/1.1".to_vec()];
                builder = builder.tls_backend_preconfigured(tls);
            }
            (None, true) => {
                return Err(format!(
                    "the server {} is HTTPS and nothing verifies it: set IEUM_CA_FILE to its \
                     CA certificate or use a join token",
                    self.url
                ));
            }
            // Plain HTTP: no TLS is ever used, but the client needs a provider.
            (None, false) => super::tls::install_ring_as_default(),
        }
        builder
            .build()
            .map_err(|e| format!("an HTTP client of {}: {e}", self.url))
    }
}

impl PartialEq for MemoryHost {
    fn eq(&self, other: &Self) -> bool {
        let same_tls = match (&self.tls, &other.tls) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        self.url == other.url && self.token == other.token && same_tls
    }
}

impl Eq for MemoryHost {}

impl std::fmt::Debug for MemoryHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryHost")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// How [`connect_with`] connects, beyond what the `PubSub` says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectOptions {
    /// Where `type: memory` PubSubs live: with a host, every process that names it shares
    /// them through that server; without one they are this process's own.
    pub memory_host: Option<MemoryHost>,
}

/// [`connect`](super::connect), except that a `memory` PubSub is reached through
/// `options.memory_host` when one is given.
pub async fn connect_with(
    name: &str,
    spec: &PubSubSpec,
    options: &ConnectOptions,
) -> Result<Arc<dyn Broker>, BrokerError> {
    match (&options.memory_host, spec.kind) {
        (Some(host), BrokerType::Memory) => {
            let mut v = ieum_model::Validator::new("spec");
            spec.validate(&mut v);
            if let Err(errors) = v.finish() {
                let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
                return Err(BrokerError::Config(format!(
                    "PubSub/{name}: {}",
                    text.join("; ")
                )));
            }
            Ok(Arc::new(HostedBroker::new(name, host)?))
        }
        _ => super::connect(name, spec).await,
    }
}

/// A `memory` PubSub hosted by a server.
#[derive(Clone)]
pub(crate) struct HostedBroker {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    /// The server's address, without a trailing `/`.
    server: String,
    token: Option<String>,
    /// The PubSub's name.
    name: String,
    /// Set by [`Broker::close`]: subscriptions stop fetching.
    closed: watch::Sender<bool>,
}

/// What `POST …/subscriptions` answers.
#[derive(Deserialize)]
struct Subscribed {
    id: String,
}

/// What `POST …/fetch` answers.
#[derive(Deserialize)]
struct Fetched {
    deliveries: Vec<Fetch>,
}

#[derive(Deserialize)]
struct Fetch {
    lease: String,
    attempt: u32,
    event: Box<RawValue>,
}

/// The body of `POST …/subscriptions`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SubscribeBody<'a> {
    group: &'a str,
    consumer: &'a str,
    max_in_flight: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    dead_letter_topic: Option<&'a str>,
}

/// The body of `POST …/leases/{lease}`.
#[derive(Serialize)]
#[serde(tag = "action", rename_all = "camelCase")]
enum SettleBody {
    Ack,
    Nack { delay: ieum_model::Duration },
    Release,
}

/// Why a fetch failed.
enum FetchError {
    /// The server no longer knows the subscription: it ends.
    Gone(String),
    /// Anything else: try again.
    Failed(BrokerError),
}

impl HostedBroker {
    fn new(name: &str, host: &MemoryHost) -> Result<Self, BrokerError> {
        let http = host
            .http_client()
            .map_err(|e| BrokerError::Config(format!("PubSub/{name}: {e}")))?;
        Ok(HostedBroker {
            inner: Arc::new(Inner {
                http,
                server: host.url.trim_end_matches('/').to_owned(),
                token: host.token.clone(),
                name: name.to_owned(),
                closed: watch::Sender::new(false),
            }),
        })
    }
}

impl Inner {
    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        let req = self
            .http
            .post(format!("{}/v1/pubsubs/{}{path}", self.server, self.name));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// Sends `req` and reads the whole answer.
    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<(reqwest::StatusCode, Bytes), BrokerError> {
        let res = req
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| self.failed(&e, timeout))?;
        let status = res.status();
        let body = res.bytes().await.map_err(|e| self.failed(&e, timeout))?;
        Ok((status, body))
    }

    /// A request that got no answer.
    fn failed(&self, e: &reqwest::Error, timeout: Duration) -> BrokerError {
        if e.is_timeout() {
            return BrokerError::Timeout {
                broker: BROKER,
                timeout,
            };
        }
        let mut reason = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            reason = format!("{reason}: {s}");
            source = s.source();
        }
        BrokerError::Unreachable {
            broker: BROKER,
            url: self.server.clone(),
            reason: format!("the server hosting PubSub/{}: {reason}", self.name),
        }
    }

    /// An answer other than a success.
    fn refused(&self, status: reqwest::StatusCode, body: &[u8]) -> BrokerError {
        let message = api_message(status, body);
        match status.as_u16() {
            401 | 403 => BrokerError::Config(format!(
                "PubSub/{}: the server at {} refused this sidecar ({message}): give the sidecar the server's token (--token or IEUM_TOKEN)",
                self.name, self.server
            )),
            429 | 500.. => BrokerError::Unreachable {
                broker: BROKER,
                url: self.server.clone(),
                reason: format!(
                    "the server hosting PubSub/{} answered {status}: {message}",
                    self.name
                ),
            },
            _ => BrokerError::Rejected {
                broker: BROKER,
                reason: format!(
                    "the server hosting PubSub/{} answered {status}: {message}",
                    self.name
                ),
            },
        }
    }

    async fn fetch(&self, id: &str, max: usize, wait: Duration) -> Result<Vec<Fetch>, FetchError> {
        let wait_text = ieum_model::Duration::from(wait).to_string();
        // `max` is a number and `wait` like `20s`: nothing to escape.
        let req = self.post(&format!(
            "/subscriptions/{id}/fetch?max={max}&wait={wait_text}"
        ));
        let (status, body) = self
            .send(req, wait + REQUEST_TIMEOUT)
            .await
            .map_err(FetchError::Failed)?;
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(FetchError::Gone(api_message(status, &body)));
        }
        if !status.is_success() {
            return Err(FetchError::Failed(self.refused(status, &body)));
        }
        serde_json::from_slice::<Fetched>(&body)
            .map(|f| f.deliveries)
            .map_err(|e| {
                FetchError::Failed(BrokerError::Rejected {
                    broker: BROKER,
                    reason: format!("the server's answer to a fetch is not understood: {e}"),
                })
            })
    }

    async fn settle(&self, path: &str, body: &SettleBody) -> Result<(), BrokerError> {
        let json = serde_json::to_vec(body)
            .map_err(|e| BrokerError::Config(format!("a settle request: {e}")))?;
        let req = self
            .post(path)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(json);
        let (status, answer) = self.send(req, REQUEST_TIMEOUT).await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(self.refused(status, &answer))
        }
    }
}

/// `code: message` from the API's error body, or the status alone.
fn api_message(status: reqwest::StatusCode, body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    match (v["error"]["code"].as_str(), v["error"]["message"].as_str()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        _ => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                status.to_string()
            } else {
                text.chars().take(300).collect()
            }
        }
    }
}

#[async_trait]
impl Publisher for HostedBroker {
    async fn publish(
        &self,
        topic: &str,
        event: &CloudEvent,
        ordering_key: Option<&str>,
    ) -> Result<(), BrokerError> {
        super::check_topic(topic)?;
        // The ordering key travels in `partitionkey`, which the server keeps.
        let event = super::prepare(event, ordering_key)?;
        let req = self
            .inner
            .post(&format!("/topics/{topic}/events"))
            .header(http::header::CONTENT_TYPE, STRUCTURED_CONTENT_TYPE)
            .body(event.to_json());
        super::acked(BROKER, async {
            let (status, body) = self.inner.send(req, PUBLISH_TIMEOUT).await?;
            if status.is_success() {
                Ok(())
            } else {
                Err(self.inner.refused(status, &body))
            }
        })
        .await
    }
}

#[async_trait]
impl Broker for HostedBroker {
    fn kind(&self) -> BrokerType {
        BrokerType::Memory
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
        let body = serde_json::to_vec(&SubscribeBody {
            group,
            consumer: &options.consumer,
            max_in_flight: options.max_in_flight,
            dead_letter_topic: options.dead_letter_topic.as_deref(),
        })
        .map_err(|e| BrokerError::Config(format!("a subscribe request: {e}")))?;
        let req = self
            .inner
            .post(&format!("/topics/{topic}/subscriptions"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body);
        let (status, answer) = self.inner.send(req, REQUEST_TIMEOUT).await?;
        if !status.is_success() {
            return Err(self.inner.refused(status, &answer));
        }
        let Subscribed { id } =
            serde_json::from_slice(&answer).map_err(|e| BrokerError::Rejected {
                broker: BROKER,
                reason: format!("the server's answer to a subscribe is not understood: {e}"),
            })?;
        let capacity = super::channel_capacity(options.max_in_flight);
        let (tx, rx) = mpsc::channel(capacity);
        let (stop_tx, stop_rx) = oneshot::channel();
        let dead_letters: Option<(String, Arc<dyn Publisher>)> = options
            .dead_letter_topic
            .map(|t| (t, Arc::new(self.clone()) as Arc<dyn Publisher>));
        let feed = Feed {
            inner: self.inner.clone(),
            id,
            topic: topic.to_owned(),
            permits: Arc::new(Semaphore::new(capacity)),
            dead_letters,
        };
        let task = tokio::spawn(feed.run(tx, stop_rx));
        Ok(Subscription::new(rx, stop_tx, task))
    }

    async fn close(&self) {
        self.inner.closed.send_replace(true);
    }
}

/// One subscription's fetch loop.
struct Feed {
    inner: Arc<Inner>,
    /// The server's id of the subscription.
    id: String,
    topic: String,
    /// Places among `maxInFlight`: one per delivery handed out and not settled.
    permits: Arc<Semaphore>,
    dead_letters: Option<(String, Arc<dyn Publisher>)>,
}

impl Feed {
    /// Fetches while there is room, until told to stop, the receiver is gone, the broker
    /// is closed or the server released the subscription.
    async fn run(self, tx: mpsc::Sender<Delivery>, mut stop: oneshot::Receiver<()>) {
        let mut closed = self.inner.closed.subscribe();
        let mut failures = 0u32;
        loop {
            let first = tokio::select! {
                _ = &mut stop => return,
                _ = closed.wait_for(|c| *c) => return,
                () = tx.closed() => return,
                p = self.permits.clone().acquire_owned() => match p {
                    Ok(p) => Some(p),
                    Err(_) => return,
                },
                // Every place is taken: a fetch of none keeps the subscription alive.
                () = tokio::time::sleep(KEEPALIVE) => None,
            };
            let mut held: Vec<OwnedSemaphorePermit> = first.into_iter().collect();
            if !held.is_empty() {
                while held.len() < FETCH_MAX {
                    match self.permits.clone().try_acquire_owned() {
                        Ok(p) => held.push(p),
                        Err(_) => break,
                    }
                }
            }
            let wait = if held.is_empty() {
                Duration::ZERO
            } else {
                FETCH_WAIT
            };
            let fetched = tokio::select! {
                _ = &mut stop => return,
                _ = closed.wait_for(|c| *c) => return,
                r = self.inner.fetch(&self.id, held.len(), wait) => r,
            };
            match fetched {
                Ok(items) => {
                    failures = 0;
                    for item in items {
                        let settle = HostedSettle {
                            inner: self.inner.clone(),
                            path: format!("/subscriptions/{}/leases/{}", self.id, item.lease),
                            settled: false,
                            _permit: held.pop(),
                        };
                        let event = match CloudEvent::from_json(item.event.get().as_bytes()) {
                            Ok(e) => e,
                            Err(e) => {
                                // The server keeps only valid events; give it back.
                                tracing::warn!(topic = %self.topic, error = %e, "an event from the server cannot be read; leaving it to the server");
                                drop(settle);
                                continue;
                            }
                        };
                        let delivery = Delivery::new(
                            event,
                            item.attempt,
                            &self.topic,
                            Box::new(settle),
                            self.dead_letters.clone(),
                        );
                        if tx.send(delivery).await.is_err() {
                            return;
                        }
                    }
                }
                Err(FetchError::Gone(why)) => {
                    tracing::warn!(topic = %self.topic, reason = %why, "the server released this subscription; it ends (and is subscribed again)");
                    return;
                }
                Err(FetchError::Failed(e)) => {
                    if failures == 0 {
                        tracing::warn!(topic = %self.topic, error = %e, "fetching from the server failed; retrying");
                    }
                    let exp = RETRY.0.saturating_mul(1 << failures.min(5));
                    failures = failures.saturating_add(1);
                    tokio::select! {
                        _ = &mut stop => return,
                        () = tokio::time::sleep(exp.min(RETRY.1)) => {}
                    }
                }
            }
        }
    }
}

/// Settles one lease with the server.
struct HostedSettle {
    inner: Arc<Inner>,
    /// `/subscriptions/{id}/leases/{lease}`.
    path: String,
    settled: bool,
    /// A place among the subscription's `maxInFlight` until settled.
    _permit: Option<OwnedSemaphorePermit>,
}

#[async_trait]
impl Settle for HostedSettle {
    async fn ack(mut self: Box<Self>) -> Result<(), BrokerError> {
        self.settled = true;
        self.inner.settle(&self.path, &SettleBody::Ack).await
    }

    async fn nack(mut self: Box<Self>, delay: Duration) -> Result<(), BrokerError> {
        self.settled = true;
        let delay = ieum_model::Duration::from(delay);
        self.inner
            .settle(&self.path, &SettleBody::Nack { delay })
            .await
    }
}

impl Drop for HostedSettle {
    /// Dropped unsettled (the subscription closed, the sidecar stopped): the event goes
    /// back at once. Should that request fail, the server's lease runs out instead.
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let inner = self.inner.clone();
        let path = std::mem::take(&mut self.path);
        runtime.spawn(async move {
            if let Err(e) = inner.settle(&path, &SettleBody::Release).await {
                tracing::debug!(error = %e, "could not give a delivery back; its lease runs out instead");
            }
        });
    }
}
