//! `memory`: an in-process broker for local development and tests.
//!
//! Brokers of the same name in one process share their topics. `ieum server` keeps them
//! for every sidecar: it publishes and [`pull`](MemoryBroker::pull)s on behalf of the
//! sidecars' `hosted` client brokers, so sidecars of different services share a `memory`
//! PubSub. Each group of a topic is one FIFO queue of at most 100,000 events; a
//! subscription's delivery holds a permit of its in-flight bound until it is settled.
//! `nack` puts the event back at the end after its delay; a delivery dropped unsettled
//! goes back to the front at once, as a broker does when a consumer's connection drops.
//! Nothing survives the process.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use ieum_model::bridge::{BrokerType, ContentMode};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use super::{
    BrokerError, Delivery, PublishError, Publisher, Settle, SubscribeOptions, Subscription,
};
use crate::cloudevents::CloudEvent;
use crate::cloudevents::binding::{self, Message, Protocol};

static HUBS: LazyLock<Mutex<HashMap<String, Arc<Hub>>>> = LazyLock::new(Default::default);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Default)]
struct Hub {
    topics: Mutex<HashMap<String, HashMap<String, Arc<Group>>>>,
}

/// Most events one group of a topic keeps unconsumed; a publish beyond it is refused (a
/// group nobody reads would otherwise grow without bound).
const MAX_QUEUED: usize = 100_000;

#[derive(Default)]
struct Group {
    queue: Mutex<VecDeque<Entry>>,
    ready: Notify,
}

impl Group {
    fn push_back(&self, entry: Entry) {
        lock(&self.queue).push_back(entry);
        self.ready.notify_one();
    }
    fn push_front(&self, entry: Entry) {
        lock(&self.queue).push_front(entry);
        self.ready.notify_one();
    }
}

struct Entry {
    message: Message,
    attempt: u32,
}

/// The in-memory broker: a handle on the topics of one name in this process.
#[derive(Clone)]
pub struct MemoryBroker {
    hub: Arc<Hub>,
    mode: ContentMode,
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl MemoryBroker {
    /// The broker called `name` in this process, created on first use; events are kept in
    /// `mode` (which changes nothing a subscriber sees).
    pub fn named(name: &str, mode: ContentMode) -> Self {
        let hub = lock(&HUBS).entry(name.to_owned()).or_default().clone();
        MemoryBroker { hub, mode }
    }

    /// The group `group` of `topic`, created when missing: events published from now on
    /// are kept for it.
    fn group(&self, topic: &str, group: &str) -> Arc<Group> {
        lock(&self.hub.topics)
            .entry(topic.to_owned())
            .or_default()
            .entry(group.to_owned())
            .or_default()
            .clone()
    }

    /// Creates the group `group` of `topic` unless it exists, so events published from
    /// now on are kept for it (what [`Broker::subscribe`](super::Broker::subscribe) does
    /// before it fetches).
    pub fn join(&self, topic: &str, group: &str) -> Result<(), BrokerError> {
        super::check_topic(topic)?;
        super::check_topic(group)?;
        self.group(topic, group);
        Ok(())
    }

    /// Takes up to `max` events from the group `group` of `topic` (creating it when
    /// missing), waiting at most `wait` for the first. Nothing is taken that is not
    /// returned: a caller that wants none does not hold any back from other members of
    /// the group. Each [`Delivery`] settles as a subscription's does (dropped unsettled,
    /// it goes back to the front of the queue with its attempt one higher);
    /// `dead_letter_topic` is where [`Delivery::dead_letter`] publishes.
    pub async fn pull(
        &self,
        topic: &str,
        group: &str,
        max: usize,
        wait: Duration,
        dead_letter_topic: Option<&str>,
    ) -> Result<Vec<Delivery>, BrokerError> {
        super::check_topic(topic)?;
        super::check_topic(group)?;
        if let Some(dlt) = dead_letter_topic {
            super::check_topic(dlt)?;
        }
        let queue = self.group(topic, group);
        let dead_letters: Option<(String, Arc<dyn Publisher>)> =
            dead_letter_topic.map(|t| (t.to_owned(), Arc::new(self.clone()) as Arc<dyn Publisher>));
        let deadline = tokio::time::Instant::now() + wait;
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        loop {
            let ready = queue.ready.notified();
            let taken: Vec<Entry> = {
                let mut q = lock(&queue.queue);
                let n = max.min(q.len());
                q.drain(..n).collect()
            };
            if !lock(&queue.queue).is_empty() {
                // Others waiting on this group may take the rest.
                queue.ready.notify_one();
            }
            for entry in taken {
                match binding::decode(&entry.message, Protocol::Http) {
                    Ok(event) => {
                        let attempt = entry.attempt;
                        let settle = MemorySettle {
                            group: queue.clone(),
                            entry: Some(entry),
                            _permit: None,
                        };
                        out.push(Delivery::new(
                            event,
                            attempt,
                            topic,
                            Box::new(settle),
                            dead_letters.clone(),
                        ));
                    }
                    Err(e) => {
                        tracing::warn!(%topic, error = %e, "dropping an undecodable message");
                    }
                }
            }
            if !out.is_empty() {
                break;
            }
            if tokio::time::timeout_at(deadline, ready).await.is_err() {
                break;
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl Publisher for MemoryBroker {
    async fn publish(
        &self,
        topic: &str,
        event: &CloudEvent,
        ordering_key: Option<&str>,
    ) -> Result<(), BrokerError> {
        super::check_topic(topic)?;
        let event = super::prepare(event, ordering_key)?;
        let message = binding::encode(&event, Protocol::Http, self.mode);
        let groups: Vec<(String, Arc<Group>)> = lock(&self.hub.topics)
            .get(topic)
            .map(|g| g.iter().map(|(n, g)| (n.clone(), g.clone())).collect())
            .unwrap_or_default();
        if let Some((name, _)) = groups
            .iter()
            .find(|(_, g)| lock(&g.queue).len() >= MAX_QUEUED)
        {
            return Err(BrokerError::Rejected {
                broker: "memory",
                reason: format!(
                    "the group `{name}` of topic `{topic}` holds {MAX_QUEUED} events nobody consumed: start its consumers, or use a real broker"
                ),
            });
        }
        for (_, group) in groups {
            group.push_back(Entry {
                message: message.clone(),
                attempt: 1,
            });
        }
        Ok(())
    }
}

#[async_trait]
impl super::Broker for MemoryBroker {
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
        let group = self.group(topic, group);
        let (tx, rx) = mpsc::channel(super::channel_capacity(options.max_in_flight));
        let (stop_tx, mut stop_rx) = oneshot::channel();
        let permits = Arc::new(Semaphore::new(super::channel_capacity(
            options.max_in_flight,
        )));
        let dead_letters: Option<(String, Arc<dyn Publisher>)> = options
            .dead_letter_topic
            .clone()
            .map(|t| (t, Arc::new(self.clone()) as Arc<dyn Publisher>));
        let topic = topic.to_owned();
        let task = tokio::spawn(async move {
            loop {
                let permit = tokio::select! {
                    _ = &mut stop_rx => return,
                    p = permits.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => return,
                    },
                };
                let entry = loop {
                    let ready = group.ready.notified();
                    if let Some(e) = lock(&group.queue).pop_front() {
                        break e;
                    }
                    tokio::select! {
                        _ = &mut stop_rx => return,
                        () = ready => {}
                    }
                };
                let event = match binding::decode(&entry.message, Protocol::Http) {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::warn!(%topic, error = %e, "dropping an undecodable message");
                        continue;
                    }
                };
                let attempt = entry.attempt;
                let settle = MemorySettle {
                    group: group.clone(),
                    entry: Some(entry),
                    _permit: Some(permit),
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

    async fn close(&self) {}
}

struct MemorySettle {
    group: Arc<Group>,
    entry: Option<Entry>,
    /// A subscription's place among its in-flight deliveries (none for a pull).
    _permit: Option<OwnedSemaphorePermit>,
}

#[async_trait]
impl Settle for MemorySettle {
    async fn ack(mut self: Box<Self>) -> Result<(), BrokerError> {
        self.entry = None;
        Ok(())
    }

    async fn nack(mut self: Box<Self>, delay: Duration) -> Result<(), BrokerError> {
        if let Some(mut entry) = self.entry.take() {
            entry.attempt += 1;
            let group = self.group.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                group.push_back(entry);
            });
        }
        Ok(())
    }
}

impl Drop for MemorySettle {
    fn drop(&mut self) {
        if let Some(mut entry) = self.entry.take() {
            entry.attempt += 1;
            self.group.push_front(entry);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::broker::Broker;

    fn broker() -> MemoryBroker {
        MemoryBroker::named(&crate::cloudevents::new_id(), ContentMode::Binary)
    }

    fn event(n: usize) -> CloudEvent {
        CloudEvent::new(format!("e-{n}"), "orders", "order.placed")
    }

    #[tokio::test(start_paused = true)]
    async fn a_pull_waits_for_the_first_event_and_takes_at_most_max() {
        let b = broker();
        b.join("orders", "billing").unwrap();
        let started = tokio::time::Instant::now();
        let none = b
            .pull("orders", "billing", 5, Duration::from_secs(2), None)
            .await
            .unwrap();
        assert!(none.is_empty());
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        for n in 0..3 {
            Broker::publish(&b, "orders", &event(n), None)
                .await
                .unwrap();
        }
        assert!(
            b.pull("orders", "billing", 0, Duration::ZERO, None)
                .await
                .unwrap()
                .is_empty(),
            "a pull of none takes none"
        );
        let two = b
            .pull("orders", "billing", 2, Duration::ZERO, None)
            .await
            .unwrap();
        let ids: Vec<&str> = two.iter().map(|d| d.event.id.as_str()).collect();
        assert_eq!(ids, ["e-0", "e-1"]);
        // Dropped unsettled: back to the front, one attempt higher.
        drop(two);
        let all = b
            .pull("orders", "billing", 10, Duration::ZERO, None)
            .await
            .unwrap();
        let seen: Vec<(&str, u32)> = all
            .iter()
            .map(|d| (d.event.id.as_str(), d.attempt))
            .collect();
        assert_eq!(seen, [("e-1", 2), ("e-0", 2), ("e-2", 1)]);
    }

    #[tokio::test]
    async fn a_full_group_refuses_publishes_and_names_itself() {
        let b = broker();
        b.join("orders", "billing").unwrap();
        for n in 0..MAX_QUEUED {
            Broker::publish(&b, "orders", &event(n), None)
                .await
                .unwrap();
        }
        let err = Broker::publish(&b, "orders", &event(0), None)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, BrokerError::Rejected { reason, .. } if reason.contains("`billing`")),
            "{err}"
        );
        // One consumed: room for one more.
        let mut taken = b
            .pull("orders", "billing", 1, Duration::ZERO, None)
            .await
            .unwrap();
        taken.pop().unwrap().ack().await.unwrap();
        Broker::publish(&b, "orders", &event(0), None)
            .await
            .unwrap();
    }
}
