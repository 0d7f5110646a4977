//! `memory`: an in-process broker for local development and tests.
//!
//! Brokers of the same name in one process share their topics (the server will host one
//! for every sidecar later). Each group of a topic is one FIFO queue; a delivery holds a
//! permit of the group's in-flight bound until it is settled. `nack` puts the event back
//! at the end after its delay; a delivery dropped unsettled goes back to the front at
//! once, as a broker does when a consumer's connection drops. Nothing survives the
//! process.

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

/// The in-memory broker.
#[derive(Clone)]
pub(crate) struct MemoryBroker {
    hub: Arc<Hub>,
    mode: ContentMode,
}

impl MemoryBroker {
    /// The broker called `name` in this process, created on first use.
    pub(crate) fn named(name: &str, mode: ContentMode) -> Self {
        let hub = lock(&HUBS).entry(name.to_owned()).or_default().clone();
        MemoryBroker { hub, mode }
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
        let groups: Vec<Arc<Group>> = lock(&self.hub.topics)
            .get(topic)
            .map(|g| g.values().cloned().collect())
            .unwrap_or_default();
        for group in groups {
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
        super::check_topic(topic)?;
        if let Some(dlt) = &options.dead_letter_topic {
            super::check_topic(dlt)?;
        }
        let group = lock(&self.hub.topics)
            .entry(topic.to_owned())
            .or_default()
            .entry(group.to_owned())
            .or_default()
            .clone();
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
                    _permit: permit,
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
    _permit: OwnedSemaphorePermit,
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
