//! A non-durable [`Store`] in memory, for tests that run with paused time (real database
//! I/O and paused time do not mix) and for ephemeral runs. It follows the same contract as
//! the SQL store: a failing batch changes nothing.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use ieum_model::{Event, Instance, Timestamp};

use crate::{
    Change, Committed, EventQuery, MAX_EVENT_PAGE, Order, Revision, Store, StoreError,
    StoredInstance, StoredResource, StoredToken,
};

/// Storage in memory; everything is lost when it is dropped.
#[derive(Debug, Default)]
pub struct MemoryStore {
    data: Mutex<Data>,
    fail_writes: AtomicBool,
}

#[derive(Debug, Default, Clone)]
struct Data {
    resources: BTreeMap<(String, String), StoredResource>,
    revisions: BTreeMap<(String, String), Vec<Revision>>,
    instances: BTreeMap<(String, String), Instance>,
    events: Vec<Event>,
    next_event: i64,
    tokens: BTreeMap<String, StoredToken>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    /// Makes every following commit fail (as if the database were down), or succeed again.
    pub fn fail_writes(&self, fail: bool) {
        self.fail_writes.store(fail, Ordering::Relaxed);
    }

    fn check_writes(&self) -> Result<(), StoreError> {
        if self.fail_writes.load(Ordering::Relaxed) {
            return Err(StoreError::Unavailable(
                "writes are failing (MemoryStore::fail_writes)".into(),
            ));
        }
        Ok(())
    }

    fn data(&self) -> std::sync::MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn commit(&self, batch: &[Change]) -> Result<Committed, StoreError> {
        self.check_writes()?;
        let mut guard = self.data();
        // Work on a copy and swap it in at the end: all or nothing.
        let mut d = guard.clone();
        let mut out = Committed::default();
        for change in batch {
            match change {
                Change::PutResource {
                    kind,
                    name,
                    labels,
                    spec,
                    author,
                    time,
                } => {
                    let key = (kind.clone(), name.clone());
                    let history = d.revisions.entry(key.clone()).or_default();
                    let revision = history.last().map_or(1, |r| r.revision + 1);
                    history.push(Revision {
                        revision,
                        labels: labels.clone(),
                        spec: Some(spec.clone()),
                        author: author.clone(),
                        at: *time,
                    });
                    let created_at = d.resources.get(&key).map_or(*time, |r| r.created_at);
                    d.resources.insert(
                        key,
                        StoredResource {
                            kind: kind.clone(),
                            name: name.clone(),
                            revision,
                            labels: labels.clone(),
                            spec: spec.clone(),
                            created_at,
                            updated_at: *time,
                            author: author.clone(),
                        },
                    );
                    out.revisions.push((kind.clone(), name.clone(), revision));
                }
                Change::DeleteResource {
                    kind,
                    name,
                    author,
                    time,
                } => {
                    let key = (kind.clone(), name.clone());
                    if let Some(old) = d.resources.remove(&key) {
                        let history = d.revisions.entry(key).or_default();
                        let revision = history.last().map_or(1, |r| r.revision + 1);
                        history.push(Revision {
                            revision,
                            labels: old.labels,
                            spec: None,
                            author: author.clone(),
                            at: *time,
                        });
                        out.revisions.push((kind.clone(), name.clone(), revision));
                    }
                }
                Change::PutInstance { service, instance } => {
                    d.instances
                        .insert((service.clone(), instance.id.clone()), (**instance).clone());
                }
                Change::DeleteInstance { service, id } => {
                    d.instances.remove(&(service.clone(), id.clone()));
                }
                Change::Event(e) => {
                    d.next_event += 1;
                    let event = Event {
                        id: d.next_event,
                        time: e.time,
                        kind: e.kind,
                        service: e.service.clone(),
                        instance: e.instance.clone(),
                        message: e.message.clone(),
                        author: e.author.clone(),
                        data: e.data.clone(),
                    };
                    d.events.push(event.clone());
                    out.events.push(event);
                }
            }
        }
        *guard = d;
        Ok(out)
    }

    async fn instances(&self) -> Result<Vec<StoredInstance>, StoreError> {
        Ok(self
            .data()
            .instances
            .iter()
            .map(|((service, _), instance)| StoredInstance {
                service: service.clone(),
                instance: instance.clone(),
            })
            .collect())
    }

    async fn resources(&self, kind: &str) -> Result<Vec<StoredResource>, StoreError> {
        Ok(self
            .data()
            .resources
            .values()
            .filter(|r| r.kind == kind)
            .cloned()
            .collect())
    }

    async fn resource(&self, kind: &str, name: &str) -> Result<Option<StoredResource>, StoreError> {
        Ok(self
            .data()
            .resources
            .get(&(kind.to_owned(), name.to_owned()))
            .cloned())
    }

    async fn history(&self, kind: &str, name: &str) -> Result<Vec<Revision>, StoreError> {
        Ok(self
            .data()
            .revisions
            .get(&(kind.to_owned(), name.to_owned()))
            .cloned()
            .unwrap_or_default())
    }

    async fn events(&self, q: &EventQuery) -> Result<Vec<Event>, StoreError> {
        let d = self.data();
        let matches = |e: &&Event| q.matches(e);
        let limit = if q.limit == 0 {
            100
        } else {
            q.limit.min(MAX_EVENT_PAGE)
        } as usize;
        Ok(match q.order {
            Order::NewestFirst => d
                .events
                .iter()
                .rev()
                .filter(matches)
                .take(limit)
                .cloned()
                .collect(),
            Order::OldestFirst => d
                .events
                .iter()
                .filter(matches)
                .take(limit)
                .cloned()
                .collect(),
        })
    }

    async fn last_event_per_service(&self) -> Result<Vec<Event>, StoreError> {
        let d = self.data();
        let mut last: BTreeMap<&str, &Event> = BTreeMap::new();
        for e in &d.events {
            if let Some(s) = e.service.as_deref() {
                last.insert(s, e);
            }
        }
        Ok(last.into_values().cloned().collect())
    }

    async fn prune_events(&self, before: Timestamp) -> Result<u64, StoreError> {
        let mut d = self.data();
        let n = d.events.len();
        d.events.retain(|e| e.time >= before);
        Ok((n - d.events.len()) as u64)
    }

    async fn create_token(&self, token: &StoredToken) -> Result<bool, StoreError> {
        self.check_writes()?;
        let mut d = self.data();
        if d.tokens.contains_key(&token.name) || d.tokens.values().any(|t| t.hash == token.hash) {
            return Ok(false);
        }
        d.tokens.insert(token.name.clone(), token.clone());
        Ok(true)
    }

    async fn tokens(&self) -> Result<Vec<StoredToken>, StoreError> {
        Ok(self.data().tokens.values().cloned().collect())
    }

    async fn revoke_token(
        &self,
        name: &str,
        at: Timestamp,
        by: &str,
    ) -> Result<Option<StoredToken>, StoreError> {
        self.check_writes()?;
        let mut d = self.data();
        Ok(d.tokens.get_mut(name).map(|t| {
            if t.revoked_at.is_none() {
                t.revoked_at = Some(at);
                t.revoked_by = Some(by.to_owned());
            }
            t.clone()
        }))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
