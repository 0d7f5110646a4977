//! The registry: instances in memory, every change of state written through to the store.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use ieum_model::{
    CheckResult, Duration, Event, EventKind, Instance, InstanceCounts, InstanceRegistration,
    InstanceState, Name, ServiceSpec, ServiceSummary, ServiceView, Timestamp, Validator,
};
use ieum_store::{Change, Committed, EventQuery, NewEvent, Store};
use serde::Serialize;
use tokio::sync::{Notify, broadcast, mpsc, oneshot, watch};
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::check;

mod catalogue;
mod config;
mod views;
use crate::{Clock, RegistryError};
pub use catalogue::{CatalogueApi, CatalogueConsumer};
pub use config::{Applied, GATEWAY_KINDS, Outcome};
pub use views::{BreakerState, Bucket, Consumer, Golden, Publisher, TopicView, Traffic};

/// The `kind` of the resource that defines a service.
pub const SERVICE_KIND: &str = "Service";
/// Author of changes the registry makes by itself (expiry, checks, protection).
pub const SYSTEM_AUTHOR: &str = "registry";
/// Most changes committed in one transaction by the writer.
const MAX_BATCH: usize = 512;

/// Tunables of the registry; the defaults are what `ieum server` uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Share of all instances that must miss their lease within `protection_window` for
    /// the registry to assume it is cut off (not the services) and stop removing instances.
    pub protection_threshold: f64,
    /// Protection arms only with at least this many instances, so small deployments behave
    /// plainly.
    pub protection_min_instances: usize,
    /// The interval over which missed leases are counted.
    pub protection_window: Duration,
    /// Events older than this are deleted.
    pub event_retention: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            protection_threshold: 0.5,
            protection_min_instances: 10,
            protection_window: Duration::from_secs(15),
            event_retention: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// What `register` did.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Registered {
    /// The instance id (generated when the registration had none).
    pub id: String,
    /// The lease: heartbeat more often than this.
    pub ttl: Duration,
    /// False when the id was already registered (re-registration is idempotent).
    #[serde(skip)]
    pub created: bool,
}

/// Filter for instance queries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InstanceFilter {
    /// Only instances in this state.
    pub state: Option<InstanceState>,
    /// Only instances in this zone.
    pub zone: Option<String>,
}

/// Mass-failure protection as shown in `/v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProtectionStatus {
    /// Whether removal of down instances is suspended.
    pub active: bool,
    /// Since when.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<Timestamp>,
    /// The share of instances that arms it.
    pub threshold: f64,
    /// The smallest fleet it arms for.
    pub min_instances: usize,
    /// The interval over which missed leases are counted.
    pub window: Duration,
    /// Leases missed within the last window.
    pub recent_expiries: usize,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// When this server started.
    pub started_at: Timestamp,
    /// `sqlite` or `postgres`.
    pub store: String,
    /// False after a write failed, until one succeeds again.
    pub storage_ok: bool,
    /// The registry's change index (as in `X-Ieum-Index`).
    pub index: u64,
    /// Number of services.
    pub services: usize,
    /// Instances per state, across all services.
    pub instances: InstanceCounts,
    /// Mass-failure protection.
    pub protection: ProtectionStatus,
}

/// A handle to the registry; cheap to clone.
#[derive(Clone)]
pub struct Registry {
    core: Arc<Core>,
}

pub(crate) struct Core {
    state: Mutex<State>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    options: Options,
    events: broadcast::Sender<Event>,
    writes: mpsc::UnboundedSender<Write>,
    reaper_wake: Notify,
    storage_ok: AtomicBool,
    shutdown: CancellationToken,
    checker: check::Checker,
    started_at: Timestamp,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Serializes configuration applies and deletes: each reads the current revision
    /// before it writes, so two at once could report wrong diffs or lose an update.
    config_lock: tokio::sync::Mutex<()>,
    /// Golden signals reported by sidecars, per reporting service, newest last; bounded by
    /// [`SIGNAL_RETENTION`] and [`MAX_SIGNAL_SAMPLES`] (kept in memory: they are measurements,
    /// not changes of state).
    signals: Mutex<BTreeMap<String, VecDeque<ieum_model::telemetry::SignalSample>>>,
    /// Event counts per topic reported by sidecars, per reporting service, newest last;
    /// bounded like `signals` (the same retention and the same most samples per service).
    topics: Mutex<BTreeMap<String, VecDeque<ieum_model::telemetry::TopicSample>>>,
    /// Single events reported by sidecars (dead letters, correlated events, samples),
    /// with when they were received, oldest first; bounded by [`SIGNAL_RETENTION`] and
    /// [`MAX_EVENT_SIGHTINGS`].
    sightings: Mutex<VecDeque<(Timestamp, ieum_model::telemetry::EventSighting)>>,
    /// Memos for read-only views (current breaker states).
    views: views::Views,
}

/// How long reported signals are kept.
pub const SIGNAL_RETENTION: Duration = Duration::from_secs(3600);
/// Most signal samples kept per service.
pub const MAX_SIGNAL_SAMPLES: usize = 20_000;
/// Most single events kept from sidecars' reports (all services together).
pub const MAX_EVENT_SIGHTINGS: usize = 50_000;
/// Most dead-letter and drop events one report puts on a timeline; the last one counts
/// the rest.
pub const MAX_FAILURE_EVENTS_PER_REPORT: usize = 10;

/// The timeline events of a report's dead letters and drops: one per event, at most
/// [`MAX_FAILURE_EVENTS_PER_REPORT`], the last one counting those left out.
fn failure_events(
    now: Timestamp,
    service: &str,
    instance: &str,
    author: &str,
    records: &[ieum_model::telemetry::EventRecord],
) -> Vec<Change> {
    let failed: Vec<&ieum_model::telemetry::EventRecord> =
        records.iter().filter(|r| r.outcome.is_failure()).collect();
    let shown = failed.len().min(MAX_FAILURE_EVENTS_PER_REPORT);
    failed
        .iter()
        .take(shown)
        .enumerate()
        .map(|(i, r)| {
            let (kind, what) = match r.outcome {
                ieum_model::telemetry::EventOutcome::Dropped => {
                    (EventKind::EventDropped, "dropped")
                }
                _ => (EventKind::EventDeadLettered, "dead-lettered"),
            };
            let mut message = format!(
                "event {} ({}) from {}/{} {what} after {} attempt{}: {}",
                r.id,
                r.event_type,
                r.pubsub,
                r.topic,
                r.attempt,
                if r.attempt == 1 { "" } else { "s" },
                r.reason.as_deref().unwrap_or("no reason given")
            );
            if i + 1 == shown && failed.len() > shown {
                message += &format!(
                    " ({} more dead-lettered or dropped in this report)",
                    failed.len() - shown
                );
            }
            event(
                now,
                kind,
                service,
                Some(instance),
                message,
                author,
                serde_json::to_value(r).unwrap_or_default(),
            )
        })
        .collect()
}

/// Most `authz.denied` events one report puts on a timeline; the last one counts the
/// denial lines left out.
pub const MAX_DENIAL_EVENTS_PER_REPORT: usize = 10;

/// The timeline events of a report's denial samples: one per line (caller, request,
/// deciding rule, count), at most [`MAX_DENIAL_EVENTS_PER_REPORT`], the last one counting
/// the lines left out.
fn denial_events(
    now: Timestamp,
    service: &str,
    instance: &str,
    author: &str,
    denials: &[ieum_model::telemetry::Denial],
) -> Vec<Change> {
    let shown = denials.len().min(MAX_DENIAL_EVENTS_PER_REPORT);
    denials
        .iter()
        .take(shown)
        .enumerate()
        .map(|(i, d)| {
            let caller = match &d.caller {
                Some(c) => format!("`{c}`"),
                None => "a caller without a mesh identity".to_owned(),
            };
            let by = match (&d.policy, d.rule) {
                (Some(p), Some(r)) => format!("rules[{r}] of AuthorizationPolicy/{p}"),
                (Some(p), None) => format!("the default of AuthorizationPolicy/{p}"),
                (None, _) => "the implicit default (allow-mesh)".to_owned(),
            };
            let mut message = format!(
                "{} call{} {} {} from {caller} denied by {by}",
                d.count,
                if d.count == 1 { "" } else { "s" },
                d.method,
                d.path
            );
            if i + 1 == shown && denials.len() > shown {
                message += &format!(
                    " ({} more kinds of denied calls in this report)",
                    denials.len() - shown
                );
            }
            event(
                now,
                EventKind::AuthzDenied,
                service,
                Some(instance),
                message,
                author,
                serde_json::to_value(d).unwrap_or_default(),
            )
        })
        .collect()
}

/// Who waits for a write: the acknowledgement channel, if anyone.
type Ack = oneshot::Sender<Result<Vec<Event>, String>>;

/// A write within a batch: its range of the batch's changes and its acknowledgement.
type Job = (std::ops::Range<usize>, Option<Ack>);

/// Changes to store in order, and who waits for them.
struct Write {
    changes: Vec<Change>,
    ack: Option<Ack>,
}

#[derive(Default)]
struct State {
    services: BTreeMap<String, ServiceEntry>,
    /// Instances across all services (kept so protection need not count them).
    instance_count: usize,
    index: u64,
    timers: BinaryHeap<Reverse<Timer>>,
    next_generation: u64,
    protection: Protection,
}

struct ServiceEntry {
    labels: BTreeMap<String, String>,
    spec: ServiceSpec,
    revision: i64,
    created_at: Timestamp,
    updated_at: Timestamp,
    instances: BTreeMap<String, Entry>,
    index: u64,
    watch: watch::Sender<u64>,
    last_event: Option<Event>,
}

struct Entry {
    instance: Instance,
    /// Lease deadline; `None` when an active check decides liveness.
    lease: Option<Instant>,
    lease_generation: u64,
    /// Whether a lease timer for `lease_generation` is in the heap (heartbeats only move `lease`;
    /// the timer re-arms itself when it finds the lease extended).
    lease_queued: bool,
    removal: Option<Instant>,
    removal_generation: u64,
    check: Option<(u64, AbortHandle)>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Timer {
    at: Instant,
    generation: u64,
    kind: TimerKind,
    service: String,
    id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    Lease,
    Removal,
}

#[derive(Default)]
struct Protection {
    active: bool,
    since: Option<Timestamp>,
    expiries: VecDeque<Instant>,
    /// When the rule was last evaluated: at most once a second unless leases expired,
    /// because deciding to leave costs a pass over every instance.
    checked: Option<Instant>,
}

impl ServiceEntry {
    fn new(now: Timestamp, index: u64) -> Self {
        ServiceEntry {
            labels: BTreeMap::new(),
            spec: ServiceSpec::default(),
            revision: 0,
            created_at: now,
            updated_at: now,
            instances: BTreeMap::new(),
            index,
            watch: watch::channel(index).0,
            last_event: None,
        }
    }

    fn counts(&self) -> InstanceCounts {
        let mut c = InstanceCounts::default();
        for e in self.instances.values() {
            count(&mut c, e.instance.state);
        }
        c
    }
}

fn count(c: &mut InstanceCounts, state: InstanceState) {
    c.total += 1;
    match state {
        InstanceState::Up => c.up += 1,
        InstanceState::Starting => c.starting += 1,
        InstanceState::Draining => c.draining += 1,
        InstanceState::Down => c.down += 1,
    }
}

fn event(
    time: Timestamp,
    kind: EventKind,
    service: &str,
    instance: Option<&str>,
    message: String,
    author: &str,
    data: serde_json::Value,
) -> Change {
    Change::Event(NewEvent {
        time,
        kind,
        service: Some(service.to_owned()),
        instance: instance.map(str::to_owned),
        message,
        author: author.to_owned(),
        data,
    })
}

fn put_instance(service: &str, instance: &Instance) -> Change {
    Change::PutInstance {
        service: service.to_owned(),
        instance: Box::new(instance.clone()),
    }
}

fn new_id() -> String {
    format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

impl State {
    fn generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    /// Marks `service` changed: bumps the index and wakes its watchers.
    fn touch(&mut self, service: &str) {
        self.index += 1;
        let index = self.index;
        if let Some(s) = self.services.get_mut(service) {
            s.index = index;
            s.watch.send_replace(index);
        }
    }

    /// The entry of one instance.
    fn entry_mut(&mut self, service: &str, id: &str) -> Option<&mut Entry> {
        self.services.get_mut(service)?.instances.get_mut(id)
    }

    /// Queues a timer; true when it is now the earliest, so the reaper must wake to
    /// shorten its sleep (otherwise it wakes in time anyway).
    fn push_timer(&mut self, timer: Timer) -> bool {
        let earliest = self.timers.peek().is_none_or(|Reverse(t)| timer.at < t.at);
        self.timers.push(Reverse(timer));
        earliest
    }

    /// Arms the lease timer of an instance; true when the reaper must wake.
    fn arm_lease(&mut self, service: &str, id: &str) -> bool {
        let generation = self.generation();
        let Some(entry) = self.entry_mut(service, id) else {
            return false;
        };
        let Some(at) = entry.lease else { return false };
        entry.lease_generation = generation;
        entry.lease_queued = true;
        self.push_timer(Timer {
            at,
            generation,
            kind: TimerKind::Lease,
            service: service.to_owned(),
            id: id.to_owned(),
        })
    }

    /// Arms the removal timer of a down instance; true when the reaper must wake.
    fn arm_removal(&mut self, service: &str, id: &str, at: Instant) -> bool {
        let generation = self.generation();
        let Some(entry) = self.entry_mut(service, id) else {
            return false;
        };
        entry.removal = Some(at);
        entry.removal_generation = generation;
        self.push_timer(Timer {
            at,
            generation,
            kind: TimerKind::Removal,
            service: service.to_owned(),
            id: id.to_owned(),
        })
    }

    fn totals(&self) -> InstanceCounts {
        let mut c = InstanceCounts::default();
        for s in self.services.values() {
            for e in s.instances.values() {
                count(&mut c, e.instance.state);
            }
        }
        c
    }
}

/// Sets `instance` to `to`, keeping `upSince` meaningful: it starts when the instance
/// comes up from `starting`/`down` and survives a drain.
fn set_state(instance: &mut Instance, to: InstanceState, reason: String, now: Timestamp) {
    let was_running = matches!(instance.state, InstanceState::Up | InstanceState::Draining);
    match to {
        InstanceState::Up | InstanceState::Draining if !was_running => {
            instance.up_since = Some(now)
        }
        InstanceState::Starting | InstanceState::Down => instance.up_since = None,
        _ => {}
    }
    instance.state = to;
    instance.state_reason = reason;
    instance.state_since = now;
}

/// Sets a service's definition in memory and returns the changes that store it (the
/// resource, its revision and a `service.created`/`service.updated` event with the diff);
/// nothing when the definition is unchanged.
fn define_service(
    st: &mut State,
    name: &str,
    spec: ServiceSpec,
    labels: BTreeMap<String, String>,
    author: &str,
    now: Timestamp,
    rewrite: bool,
) -> Vec<Change> {
    let index = st.index;
    let existed = st.services.contains_key(name);
    let entry = st
        .services
        .entry(name.to_owned())
        .or_insert_with(|| ServiceEntry::new(now, index));
    if existed && entry.spec == spec && entry.labels == labels && !rewrite {
        return Vec::new();
    }
    let before = serde_json::json!({"labels": entry.labels, "spec": entry.spec});
    entry.spec = spec.clone();
    entry.labels = labels.clone();
    entry.updated_at = now;
    let (kind, message) = if existed {
        (
            EventKind::ServiceUpdated,
            format!("definition changed by {author}"),
        )
    } else {
        (EventKind::ServiceCreated, format!("defined by {author}"))
    };
    let spec_json = serde_json::to_value(&spec).unwrap_or_default();
    let after = serde_json::json!({"labels": labels, "spec": spec_json});
    let changes = ieum_model::resource::diff(&before, &after, "");
    let changes = vec![
        Change::PutResource {
            kind: SERVICE_KIND.into(),
            name: name.to_owned(),
            labels,
            spec: spec_json,
            author: author.to_owned(),
            time: now,
        },
        event(
            now,
            kind,
            name,
            None,
            message,
            author,
            serde_json::json!({"diff": changes}),
        ),
    ];
    st.touch(name);
    changes
}

/// Tells whoever waits on `jobs` that storing them failed.
fn fail(jobs: Vec<Job>, e: &ieum_store::StoreError) {
    for ack in jobs.into_iter().filter_map(|(_, ack)| ack) {
        let _ = ack.send(Err(e.to_string()));
    }
}

/// `at + d`, saturating far in the future instead of overflowing.
fn later(at: Instant, d: Duration) -> Instant {
    at.checked_add(d.get())
        .unwrap_or_else(|| at + std::time::Duration::from_secs(100 * 365 * 86_400))
}

/// Brings a lease-down instance back (to `up`, or `draining` when drained) and returns the
/// changes that record it.
fn recover(
    service: &str,
    id: &str,
    entry: &mut Entry,
    reason: &str,
    author: &str,
    now: Timestamp,
) -> [Change; 2] {
    let to = recovered_state(&entry.instance);
    set_state(&mut entry.instance, to, reason.to_owned(), now);
    entry.removal = None;
    [
        put_instance(service, &entry.instance),
        event(
            now,
            EventKind::InstanceUp,
            service,
            Some(id),
            format!("{reason}; {to}"),
            author,
            serde_json::Value::Null,
        ),
    ]
}

/// The state an instance returns to when it recovers.
fn recovered_state(instance: &Instance) -> InstanceState {
    if instance.drained {
        InstanceState::Draining
    } else {
        InstanceState::Up
    }
}

impl Registry {
    /// Restores the registry from `store` and starts its background tasks (writer, lease
    /// reaper, active checks, event retention).
    pub async fn start(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        options: Options,
    ) -> Result<Registry, RegistryError> {
        let services = store.resources(SERVICE_KIND).await?;
        let instances = store.instances().await?;
        let last_events = store.last_event_per_service().await?;

        let now = clock.now();
        let now_i = Instant::now();
        let (writes, write_rx) = mpsc::unbounded_channel();
        let core = Arc::new(Core {
            state: Mutex::new(State::default()),
            store,
            clock,
            options,
            events: broadcast::channel(4096).0,
            writes,
            reaper_wake: Notify::new(),
            storage_ok: AtomicBool::new(true),
            shutdown: CancellationToken::new(),
            checker: check::Checker::new(),
            started_at: now,
            tasks: Mutex::new(Vec::new()),
            config_lock: tokio::sync::Mutex::new(()),
            signals: Mutex::new(BTreeMap::new()),
            topics: Mutex::new(BTreeMap::new()),
            sightings: Mutex::new(VecDeque::new()),
            views: views::Views::default(),
        });
        let registry = Registry { core };

        let restored = instances.len();
        let mut to_check = Vec::new();
        {
            let mut st = registry.core.lock();
            for r in services {
                let spec: ServiceSpec = serde_json::from_value(r.spec).map_err(|e| {
                    ieum_store::StoreError::Corrupt(format!("service {}: {e}", r.name))
                })?;
                let mut entry = ServiceEntry::new(r.created_at, 0);
                entry.labels = r.labels;
                entry.spec = spec;
                entry.revision = r.revision;
                entry.updated_at = r.updated_at;
                st.services.insert(r.name, entry);
            }
            for e in last_events {
                if let Some(s) = e.service.clone().and_then(|n| st.services.get_mut(&n)) {
                    s.last_event = Some(e);
                }
            }
            for si in instances {
                let service = si.service.clone();
                let mut instance = si.instance;
                // Heartbeats are not stored: the last one is unknown after a restart.
                instance.last_heartbeat = None;
                let has_check = instance.check.is_some();
                // A restored lease gets one TTL of grace, so a restart does not mark every
                // instance down.
                let lease = (!has_check).then(|| now_i + instance.ttl.get());
                // Down instances keep at least one TTL after a restart too, so a server that
                // was away (or was protecting them) does not purge them at once.
                let removal_at = (instance.state == InstanceState::Down).then(|| {
                    let due = instance.state_since.plus(instance.deregister_after);
                    later(now_i, due.since(now).max(instance.ttl))
                });
                let id = instance.id.clone();
                let entry = Entry {
                    instance,
                    lease,
                    lease_generation: 0,
                    lease_queued: false,
                    removal: None,
                    removal_generation: 0,
                    check: None,
                };
                st.services
                    .entry(service.clone())
                    .or_insert_with(|| ServiceEntry::new(now, 0))
                    .instances
                    .insert(id.clone(), entry);
                st.instance_count += 1;
                st.arm_lease(&service, &id);
                if let Some(at) = removal_at {
                    st.arm_removal(&service, &id, at);
                }
                if has_check {
                    to_check.push((service, id));
                }
            }
            let services: Vec<String> = st.services.keys().cloned().collect();
            for s in services {
                st.touch(&s);
            }
            for (service, id) in to_check {
                registry.core.start_check(&mut st, &service, &id);
            }
            let total = st.services.len();
            let started = Change::Event(NewEvent {
                time: now,
                kind: EventKind::RegistryStarted,
                service: None,
                instance: None,
                message: format!("started; restored {restored} instances of {total} services"),
                author: SYSTEM_AUTHOR.into(),
                data: serde_json::json!({"instances": restored, "services": total}),
            });
            registry.core.send(vec![started], None);
        }

        let core = registry.core.clone();
        let writer = tokio::spawn(core.clone().writer(write_rx));
        let reaper = tokio::spawn(core.clone().reaper());
        let retention = tokio::spawn(core.clone().retention());
        core.tasks
            .lock()
            .expect("task list lock")
            .extend([writer, reaper, retention]);
        Ok(registry)
    }

    /// Stops background work after storing every pending change.
    pub async fn shutdown(&self) {
        self.core.shutdown.cancel();
        let tasks: Vec<_> = std::mem::take(&mut *self.core.tasks.lock().expect("task list lock"));
        for t in tasks {
            let _ = t.await;
        }
        let st = self.core.lock();
        for s in st.services.values() {
            for e in s.instances.values() {
                if let Some((_, h)) = &e.check {
                    h.abort();
                }
            }
        }
    }

    /// The store behind this registry.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.core.store
    }

    /// The registry's clock.
    pub fn now(&self) -> Timestamp {
        self.core.clock.now()
    }

    /// Whether the last write to storage succeeded.
    pub fn storage_ok(&self) -> bool {
        self.core.storage_ok.load(Ordering::Relaxed)
    }

    /// Live events, as they are stored.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.core.events.subscribe()
    }

    /// Creates or replaces a service definition.
    pub async fn put_service(
        &self,
        name: &Name,
        spec: ServiceSpec,
        labels: BTreeMap<String, String>,
        author: &str,
    ) -> Result<ServiceView, RegistryError> {
        let mut v = Validator::new("");
        spec.validate(&mut v);
        v.finish().map_err(RegistryError::Invalid)?;

        let now = self.core.clock.now();
        let rx = {
            let mut st = self.core.lock();
            let rewrite = !self.core.storage_ok.load(Ordering::Relaxed);
            let changes =
                define_service(&mut st, name.as_str(), spec, labels, author, now, rewrite);
            if changes.is_empty() {
                return Ok(self
                    .view_locked(&st, name.as_str())
                    .expect("service exists"));
            }
            self.core.send_acked(changes)
        };
        self.core.wait(rx).await?;
        let st = self.core.lock();
        Ok(self
            .view_locked(&st, name.as_str())
            .expect("service exists"))
    }

    /// Registers (or re-registers) an instance of `service`, creating the service if it is
    /// unknown.
    pub async fn register(
        &self,
        service: &Name,
        reg: InstanceRegistration,
        author: &str,
    ) -> Result<Registered, RegistryError> {
        let mut v = Validator::new("");
        reg.validate(&mut v);
        v.finish().map_err(RegistryError::Invalid)?;

        let core = &self.core;
        let now = core.clock.now();
        let now_i = Instant::now();
        let svc = service.as_str();
        let id = reg.id.clone().unwrap_or_else(new_id);
        let ttl = reg.ttl;

        let (rx, created) = {
            let mut st = core.lock();
            let mut changes = Vec::new();
            if !st.services.contains_key(svc) {
                let index = st.index;
                st.services
                    .insert(svc.to_owned(), ServiceEntry::new(now, index));
                changes.push(Change::PutResource {
                    kind: SERVICE_KIND.into(),
                    name: svc.to_owned(),
                    labels: BTreeMap::new(),
                    spec: serde_json::json!({}),
                    author: author.to_owned(),
                    time: now,
                });
                changes.push(event(
                    now,
                    EventKind::ServiceCreated,
                    svc,
                    None,
                    format!("created by the registration of instance {id}"),
                    author,
                    serde_json::Value::Null,
                ));
            }
            let service_entry = st.services.get_mut(svc).expect("service was just ensured");
            let created = !service_entry.instances.contains_key(&id);
            let mut restart_check = false;
            let mut new_lease = false;
            match service_entry.instances.get_mut(&id) {
                Some(entry) if entry.instance.matches(&reg) => {
                    // The same registration again: a heartbeat.
                    entry.instance.last_heartbeat = Some(now);
                    if entry.lease.is_some() {
                        entry.lease = Some(now_i + ttl.get());
                        new_lease = !entry.lease_queued;
                        if entry.instance.state == InstanceState::Down {
                            changes.extend(recover(
                                svc,
                                &id,
                                entry,
                                "registered again",
                                author,
                                now,
                            ));
                        }
                    }
                    // After a failed write memory may be ahead of storage: a client retrying
                    // the same registration must get it stored, not a silent "unchanged".
                    if changes.is_empty() && !core.storage_ok.load(Ordering::Relaxed) {
                        changes.push(put_instance(svc, &entry.instance));
                    }
                }
                Some(entry) => {
                    let before = serde_json::to_value(&entry.instance).unwrap_or_default();
                    let check_changed = entry.instance.check != reg.check;
                    // A check probes the address it was started with: a move restarts it.
                    let moved = entry.instance.address != reg.address
                        || i64::from(entry.instance.port) != reg.port;
                    apply_registration(&mut entry.instance, &reg);
                    entry.instance.last_heartbeat = Some(now);
                    if check_changed {
                        if let Some((_, h)) = entry.check.take() {
                            h.abort();
                        }
                        entry.instance.last_check = None;
                        if reg.check.is_some() {
                            set_state(
                                &mut entry.instance,
                                InstanceState::Starting,
                                "check changed; waiting for it to pass".into(),
                                now,
                            );
                            entry.lease = None;
                            restart_check = true;
                        } else {
                            let to = recovered_state(&entry.instance);
                            set_state(
                                &mut entry.instance,
                                to,
                                "check removed; heartbeats decide liveness".into(),
                                now,
                            );
                            entry.lease = Some(now_i + ttl.get());
                            new_lease = true;
                        }
                    } else if moved && reg.check.is_some() {
                        restart_check = true;
                    } else if entry.lease.is_some() {
                        entry.lease = Some(now_i + ttl.get());
                        new_lease = true;
                        if entry.instance.state == InstanceState::Down {
                            let to = recovered_state(&entry.instance);
                            set_state(&mut entry.instance, to, "registered again".into(), now);
                        }
                    }
                    if entry.instance.state != InstanceState::Down {
                        entry.removal = None;
                    }
                    let after = serde_json::to_value(&entry.instance).unwrap_or_default();
                    changes.push(put_instance(svc, &entry.instance));
                    changes.push(event(
                        now,
                        EventKind::InstanceUpdated,
                        svc,
                        Some(&id),
                        format!(
                            "registered again with different details; now {}",
                            entry.instance.state
                        ),
                        author,
                        serde_json::json!({"before": before, "after": after}),
                    ));
                }
                None => {
                    let has_check = reg.check.is_some();
                    let (state, reason) = if has_check {
                        (
                            InstanceState::Starting,
                            "registered; waiting for the first check to pass",
                        )
                    } else {
                        (InstanceState::Up, "registered")
                    };
                    let mut instance = Instance {
                        id: id.clone(),
                        address: String::new(),
                        port: 0,
                        protocol: reg.protocol,
                        zone: None,
                        region: None,
                        cluster: None,
                        platform: None,
                        version: None,
                        metadata: BTreeMap::new(),
                        weight: 0,
                        state,
                        drained: false,
                        state_reason: reason.into(),
                        state_since: now,
                        registered_at: now,
                        up_since: (state == InstanceState::Up).then_some(now),
                        last_heartbeat: Some(now),
                        ttl,
                        deregister_after: reg.deregister_after,
                        check: None,
                        last_check: None,
                    };
                    apply_registration(&mut instance, &reg);
                    let message = format!(
                        "registered at {}:{}, {state}",
                        instance.address, instance.port
                    );
                    changes.push(put_instance(svc, &instance));
                    changes.push(event(now, EventKind::InstanceRegistered, svc, Some(&id), message, author, serde_json::json!({"address": instance.address, "port": instance.port, "zone": instance.zone, "version": instance.version})));
                    service_entry.instances.insert(
                        id.clone(),
                        Entry {
                            instance,
                            lease: (!has_check).then(|| now_i + ttl.get()),
                            lease_generation: 0,
                            lease_queued: false,
                            removal: None,
                            removal_generation: 0,
                            check: None,
                        },
                    );
                    new_lease = !has_check;
                    restart_check = has_check;
                }
            }
            if created {
                st.instance_count += 1;
            }
            if new_lease && st.arm_lease(svc, &id) {
                core.reaper_wake.notify_one();
            }
            if restart_check {
                core.start_check(&mut st, svc, &id);
            }
            if changes.is_empty() {
                return Ok(Registered { id, ttl, created });
            }
            st.touch(svc);
            (core.send_acked(changes), created)
        };
        core.wait(rx).await?;
        Ok(Registered { id, ttl, created })
    }

    /// Renews an instance's lease. `NotFound` tells the client to register again.
    pub async fn heartbeat(&self, service: &str, id: &str) -> Result<(), RegistryError> {
        let core = &self.core;
        let now = core.clock.now();
        let rx = {
            let mut st = core.lock();
            let Some(entry) = st.entry_mut(service, id) else {
                return Err(not_found(service, id));
            };
            entry.instance.last_heartbeat = Some(now);
            let Some(_) = entry.lease else { return Ok(()) };
            let ttl = entry.instance.ttl;
            entry.lease = Some(Instant::now() + ttl.get());
            let rearm = !entry.lease_queued;
            let mut changes = Vec::new();
            if entry.instance.state == InstanceState::Down {
                changes.extend(recover(
                    service,
                    id,
                    entry,
                    "heartbeats resumed",
                    SYSTEM_AUTHOR,
                    now,
                ));
            }
            if rearm && st.arm_lease(service, id) {
                core.reaper_wake.notify_one();
            }
            if changes.is_empty() {
                return Ok(());
            }
            st.touch(service);
            core.send_acked(changes)
        };
        core.wait(rx).await?;
        Ok(())
    }

    /// Drains an instance (`Draining`) or returns a drained one to service (`Up`).
    pub async fn set_state(
        &self,
        service: &str,
        id: &str,
        to: InstanceState,
        author: &str,
    ) -> Result<Instance, RegistryError> {
        let core = &self.core;
        let now = core.clock.now();
        let rx = {
            let mut st = core.lock();
            let Some(entry) = st.entry_mut(service, id) else {
                return Err(not_found(service, id));
            };
            let inst = &mut entry.instance;
            let (kind, message) = match (to, inst.state) {
                (InstanceState::Draining, InstanceState::Draining)
                | (InstanceState::Up, InstanceState::Up) => {
                    return Ok(inst.clone());
                }
                (InstanceState::Draining, InstanceState::Up | InstanceState::Starting) => {
                    inst.drained = true;
                    set_state(
                        inst,
                        InstanceState::Draining,
                        format!("drained by {author}"),
                        now,
                    );
                    (EventKind::InstanceDraining, format!("drained by {author}"))
                }
                (InstanceState::Up, InstanceState::Draining) => {
                    inst.drained = false;
                    set_state(
                        inst,
                        InstanceState::Up,
                        format!("returned to service by {author}"),
                        now,
                    );
                    (
                        EventKind::InstanceUp,
                        format!("returned to service by {author}"),
                    )
                }
                (InstanceState::Draining | InstanceState::Up, current) => {
                    return Err(RegistryError::Conflict(format!(
                        "instance {id} is {current}: it can be set {to} once it is up again ({})",
                        inst.state_reason
                    )));
                }
                (other, _) => {
                    return Err(RegistryError::Invalid(vec![
                        ieum_model::ValidationError::new(
                            "E1214",
                            "state",
                            format!("`{other}` cannot be set by hand: use `draining` or `up`"),
                        ),
                    ]));
                }
            };
            let result = inst.clone();
            let changes = vec![
                put_instance(service, inst),
                event(
                    now,
                    kind,
                    service,
                    Some(id),
                    message,
                    author,
                    serde_json::Value::Null,
                ),
            ];
            st.touch(service);
            (core.send_acked(changes), result)
        };
        core.wait(rx.0).await?;
        Ok(rx.1)
    }

    /// Marks an instance `down` because its own sidecar (or an operator) says so, with the
    /// reason on the timeline. Heartbeats bring it back, as after a missed lease.
    pub async fn report_down(
        &self,
        service: &str,
        id: &str,
        reason: &str,
        author: &str,
    ) -> Result<Instance, RegistryError> {
        let core = &self.core;
        let now = core.clock.now();
        let (rx, result) = {
            let mut st = core.lock();
            let Some(entry) = st.entry_mut(service, id) else {
                return Err(not_found(service, id));
            };
            if entry.instance.state == InstanceState::Down {
                return Ok(entry.instance.clone());
            }
            let message = format!("reported down by {author}: {reason}");
            set_state(
                &mut entry.instance,
                InstanceState::Down,
                message.clone(),
                now,
            );
            let result = entry.instance.clone();
            let removal = later(Instant::now(), entry.instance.deregister_after);
            let changes = vec![
                put_instance(service, &result),
                event(
                    now,
                    EventKind::InstanceDown,
                    service,
                    Some(id),
                    message,
                    author,
                    serde_json::json!({"reason": reason}),
                ),
            ];
            if st.arm_removal(service, id, removal) {
                core.reaper_wake.notify_one();
            }
            st.touch(service);
            (core.send_acked(changes), result)
        };
        core.wait(rx).await?;
        Ok(result)
    }

    /// Takes a sidecar's report: keeps its signals and topic counts for a while, and
    /// records its breaker transitions as `breaker.changed` events on the service's
    /// timeline.
    pub async fn report_telemetry(
        &self,
        service: &str,
        id: &str,
        report: ieum_model::telemetry::TelemetryReport,
        author: &str,
    ) -> Result<(), RegistryError> {
        let mut v = Validator::new("");
        report.validate(&mut v);
        v.finish().map_err(RegistryError::Invalid)?;
        let core = &self.core;
        let now = core.clock.now();
        if self.instance(service, id).is_none() {
            return Err(not_found(service, id));
        }
        {
            let mut signals = core.signals.lock().unwrap_or_else(|p| p.into_inner());
            let list = signals.entry(service.to_owned()).or_default();
            for s in report.signals {
                list.push_back(ieum_model::telemetry::SignalSample {
                    at: now,
                    instance: id.to_owned(),
                    window: report.window,
                    signals: s,
                });
            }
            let oldest = now.minus(SIGNAL_RETENTION);
            while list.front().is_some_and(|s| s.at < oldest) || list.len() > MAX_SIGNAL_SAMPLES {
                list.pop_front();
            }
        }
        if !report.topics.is_empty() {
            let mut topics = core.topics.lock().unwrap_or_else(|p| p.into_inner());
            let list = topics.entry(service.to_owned()).or_default();
            for t in report.topics {
                list.push_back(ieum_model::telemetry::TopicSample {
                    at: now,
                    instance: id.to_owned(),
                    window: report.window,
                    topic: t,
                });
            }
            let oldest = now.minus(SIGNAL_RETENTION);
            while list.front().is_some_and(|s| s.at < oldest) || list.len() > MAX_SIGNAL_SAMPLES {
                list.pop_front();
            }
        }
        core.views.note_breakers(service, id, now, &report.breakers);
        let failures = failure_events(now, service, id, author, &report.events);
        let denials = denial_events(now, service, id, author, &report.denials);
        if !report.events.is_empty() {
            let mut sightings = core.sightings.lock().unwrap_or_else(|p| p.into_inner());
            for e in report.events {
                sightings.push_back((
                    now,
                    ieum_model::telemetry::EventSighting {
                        service: service.to_owned(),
                        instance: id.to_owned(),
                        event: e,
                    },
                ));
            }
            let oldest = now.minus(SIGNAL_RETENTION);
            while sightings.front().is_some_and(|(at, _)| *at < oldest)
                || sightings.len() > MAX_EVENT_SIGHTINGS
            {
                sightings.pop_front();
            }
        }
        if report.breakers.is_empty() && failures.is_empty() && denials.is_empty() {
            return Ok(());
        }
        let mut changes: Vec<Change> = report
            .breakers
            .iter()
            .map(|b| {
                let target = match &b.endpoint {
                    Some(e) => format!("{} (endpoint {e})", b.destination),
                    None => b.destination.clone(),
                };
                let mut message = format!("circuit to {target} {}: {}", b.to, b.reason);
                if b.coalesced > 0 {
                    message += &format!(" ({} more transitions folded in)", b.coalesced);
                }
                event(
                    now,
                    EventKind::BreakerChanged,
                    service,
                    Some(id),
                    message,
                    author,
                    serde_json::to_value(b).unwrap_or_default(),
                )
            })
            .collect();
        changes.extend(failures);
        changes.extend(denials);
        let rx = core.send_acked(changes);
        core.wait(rx).await?;
        Ok(())
    }

    /// The events reported with correlation id `correlation`, in the order they happened
    /// (by the reporting sidecar's clock; a publish before the deliveries of its event).
    pub fn correlation(&self, correlation: &str) -> Vec<ieum_model::telemetry::EventSighting> {
        let sightings = self
            .core
            .sightings
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut list: Vec<_> = sightings
            .iter()
            .filter(|(_, s)| s.event.correlation_id.as_deref() == Some(correlation))
            .map(|(_, s)| s.clone())
            .collect();
        list.sort_by(|a, b| {
            (a.event.at, a.event.direction != "publish", a.event.attempt).cmp(&(
                b.event.at,
                b.event.direction != "publish",
                b.event.attempt,
            ))
        });
        list
    }

    /// The most recent `limit` events reported for `pubsub`/`topic`, newest first.
    pub fn topic_events(
        &self,
        pubsub: &str,
        topic: &str,
        limit: usize,
    ) -> Vec<ieum_model::telemetry::EventSighting> {
        let sightings = self
            .core
            .sightings
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        sightings
            .iter()
            .rev()
            .filter(|(_, s)| s.event.pubsub == pubsub && s.event.topic == topic)
            .take(limit)
            .map(|(_, s)| s.clone())
            .collect()
    }

    /// Signals reported by `service`'s sidecars since `since`, oldest first.
    pub fn signals(
        &self,
        service: &str,
        since: Timestamp,
    ) -> Vec<ieum_model::telemetry::SignalSample> {
        let signals = self.core.signals.lock().unwrap_or_else(|p| p.into_inner());
        signals
            .get(service)
            .map(|l| l.iter().filter(|s| s.at >= since).cloned().collect())
            .unwrap_or_default()
    }

    /// Removes an instance at its own (or an operator's) request.
    pub async fn deregister(
        &self,
        service: &str,
        id: &str,
        author: &str,
    ) -> Result<(), RegistryError> {
        let core = &self.core;
        let now = core.clock.now();
        let rx = {
            let mut st = core.lock();
            let Some(entry) = st
                .services
                .get_mut(service)
                .and_then(|s| s.instances.remove(id))
            else {
                return Err(not_found(service, id));
            };
            st.instance_count -= 1;
            if let Some((_, h)) = entry.check {
                h.abort();
            }
            let changes = vec![
                Change::DeleteInstance {
                    service: service.to_owned(),
                    id: id.to_owned(),
                },
                event(
                    now,
                    EventKind::InstanceDeregistered,
                    service,
                    Some(id),
                    format!("deregistered by {author} (was {})", entry.instance.state),
                    author,
                    serde_json::Value::Null,
                ),
            ];
            st.touch(service);
            core.send_acked(changes)
        };
        core.wait(rx).await?;
        Ok(())
    }

    /// Records an event that no other change carries (token creation and revocation), on
    /// `service`'s timeline or the global one; returns once it is stored.
    pub async fn record_event(
        &self,
        kind: EventKind,
        service: Option<&str>,
        message: String,
        author: &str,
        data: serde_json::Value,
    ) -> Result<(), RegistryError> {
        let core = &self.core;
        let now = core.clock.now();
        let rx = core.send_acked(vec![Change::Event(ieum_store::NewEvent {
            time: now,
            kind,
            service: service.map(str::to_owned),
            instance: None,
            message,
            author: author.to_owned(),
            data,
        })]);
        core.wait(rx).await?;
        Ok(())
    }

    /// Identifies this registry's lifetime (its start time): change indexes compare only
    /// within one epoch, because they restart when the server does.
    pub fn epoch(&self) -> String {
        self.core.started_at.as_millis().to_string()
    }

    /// The registry's change index: it grows with every change of state.
    pub fn index(&self) -> u64 {
        self.core.lock().index
    }

    /// One instance, as it is now.
    pub fn instance(&self, service: &str, id: &str) -> Option<Instance> {
        let st = self.core.lock();
        st.services
            .get(service)?
            .instances
            .get(id)
            .map(|e| e.instance.clone())
    }

    /// A service's change index and every instance, or `None` for an unknown service.
    pub fn endpoints(&self, service: &str) -> Option<(u64, Vec<Instance>)> {
        let st = self.core.lock();
        st.services
            .get(service)
            .map(|s| select(s, &InstanceFilter::default()))
    }

    /// Every service with its summary, and the registry's index.
    pub fn services(&self) -> (u64, Vec<ServiceSummary>) {
        let now = self.core.clock.now();
        let st = self.core.lock();
        let list = st
            .services
            .iter()
            .map(|(name, s)| {
                let mut zones = BTreeSet::new();
                let mut regions = BTreeSet::new();
                let mut platforms = BTreeSet::new();
                let mut uptimes = Vec::new();
                for e in s.instances.values() {
                    let i = &e.instance;
                    zones.extend(i.zone.clone());
                    regions.extend(i.region.clone());
                    platforms.extend(i.platform.clone());
                    uptimes.extend(i.uptime(now).map(Duration::whole_seconds));
                }
                ServiceSummary {
                    name: name.clone(),
                    description: s.spec.description.clone(),
                    owner: s.spec.owner.clone(),
                    external: s.spec.external.is_some(),
                    instances: s.counts(),
                    zones: zones.into_iter().collect(),
                    regions: regions.into_iter().collect(),
                    platforms: platforms.into_iter().collect(),
                    oldest_uptime: uptimes.iter().max().copied(),
                    newest_uptime: uptimes.iter().min().copied(),
                    last_event: s.last_event.clone(),
                    revision: s.revision,
                }
            })
            .collect();
        (st.index, list)
    }

    /// One service with every instance.
    pub fn service(&self, name: &str) -> Option<ServiceView> {
        let st = self.core.lock();
        self.view_locked(&st, name)
    }

    fn view_locked(&self, st: &State, name: &str) -> Option<ServiceView> {
        let s = st.services.get(name)?;
        Some(ServiceView {
            name: name.to_owned(),
            labels: s.labels.clone(),
            spec: s.spec.clone(),
            revision: s.revision,
            created_at: s.created_at,
            updated_at: s.updated_at,
            counts: s.counts(),
            instances: s.instances.values().map(|e| e.instance.clone()).collect(),
        })
    }

    /// Instances of `service` matching `filter`, with the service's index. With `index`,
    /// waits up to `wait` for the service to change after that index (a blocking query).
    pub async fn instances(
        &self,
        service: &str,
        filter: &InstanceFilter,
        index: Option<u64>,
        wait: std::time::Duration,
    ) -> Result<(u64, Vec<Instance>), RegistryError> {
        let mut rx = {
            let st = self.core.lock();
            let s = st.services.get(service).ok_or_else(|| {
                RegistryError::NotFound(format!("service `{service}` is not registered"))
            })?;
            match index {
                // An index above the registry's comes from before a restart (indexes start
                // again): answer at once rather than sleep through changes.
                Some(i) if s.index <= i && i <= st.index => s.watch.subscribe(),
                _ => return Ok(select(s, filter)),
            }
        };
        let after = index.unwrap_or(0);
        let _ = tokio::time::timeout(wait, rx.wait_for(|v| *v > after)).await;
        let st = self.core.lock();
        let s = st.services.get(service).ok_or_else(|| {
            RegistryError::NotFound(format!("service `{service}` is not registered"))
        })?;
        Ok(select(s, filter))
    }

    /// Events from the store.
    pub async fn events(&self, query: &EventQuery) -> Result<Vec<Event>, RegistryError> {
        Ok(self.core.store.events(query).await?)
    }

    /// The registry's health and counters.
    pub fn status(&self) -> Status {
        let st = self.core.lock();
        let o = &self.core.options;
        Status {
            started_at: self.core.started_at,
            store: self.core.store.backend().to_owned(),
            storage_ok: self.storage_ok(),
            index: st.index,
            services: st.services.len(),
            instances: st.totals(),
            protection: ProtectionStatus {
                active: st.protection.active,
                since: st.protection.since,
                threshold: o.protection_threshold,
                min_instances: o.protection_min_instances,
                window: o.protection_window,
                recent_expiries: st.protection.expiries.len(),
            },
        }
    }
}

fn select(s: &ServiceEntry, filter: &InstanceFilter) -> (u64, Vec<Instance>) {
    let list = s
        .instances
        .values()
        .map(|e| &e.instance)
        .filter(|i| filter.state.is_none_or(|st| i.state == st))
        .filter(|i| {
            filter
                .zone
                .as_deref()
                .is_none_or(|z| i.zone.as_deref() == Some(z))
        })
        .cloned()
        .collect();
    (s.index, list)
}

fn not_found(service: &str, id: &str) -> RegistryError {
    RegistryError::NotFound(format!(
        "instance `{id}` of service `{service}` is not registered (it may have expired): register it again"
    ))
}

fn apply_registration(i: &mut Instance, reg: &InstanceRegistration) {
    i.address = reg.address.clone();
    i.port = reg.port_u16();
    i.protocol = reg.protocol;
    i.zone = reg.zone.clone();
    i.region = reg.region.clone();
    i.cluster = reg.cluster.clone();
    i.platform = reg.platform.clone();
    i.version = reg.version.clone();
    i.metadata = reg.metadata.clone();
    i.weight = reg.weight;
    i.ttl = reg.ttl;
    i.deregister_after = reg.deregister_after;
    i.check = reg.check.clone();
}

impl Core {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug; the state is still the best we
        // have, so keep serving it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn send(&self, changes: Vec<Change>, ack: Option<Ack>) {
        if self.writes.send(Write { changes, ack }).is_err() {
            tracing::warn!("registry writer stopped; change not stored");
        }
    }

    fn send_acked(&self, changes: Vec<Change>) -> oneshot::Receiver<Result<Vec<Event>, String>> {
        let (tx, rx) = oneshot::channel();
        self.send(changes, Some(tx));
        rx
    }

    async fn wait(
        &self,
        rx: oneshot::Receiver<Result<Vec<Event>, String>>,
    ) -> Result<Vec<Event>, RegistryError> {
        match rx.await {
            Ok(Ok(events)) => Ok(events),
            Ok(Err(e)) => Err(RegistryError::Storage(ieum_store::StoreError::Unavailable(
                e,
            ))),
            Err(_) => Err(RegistryError::ShuttingDown),
        }
    }

    /// Stores changes in arrival order, many per transaction, then publishes their events.
    async fn writer(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Write>) {
        loop {
            let first = tokio::select! {
                biased;
                w = rx.recv() => w,
                () = self.shutdown.cancelled() => rx.try_recv().ok(),
            };
            let Some(first) = first else { break };
            let mut writes = vec![first];
            let mut size = writes[0].changes.len();
            while size < MAX_BATCH {
                match rx.try_recv() {
                    Ok(w) => {
                        size += w.changes.len();
                        writes.push(w);
                    }
                    Err(_) => break,
                }
            }
            // One vector for the transaction; each job remembers its range, so a failed batch
            // can be retried job by job without copying changes.
            let mut changes = Vec::with_capacity(size);
            let mut jobs = Vec::with_capacity(writes.len());
            for w in writes {
                let start = changes.len();
                changes.extend(w.changes);
                jobs.push((start..changes.len(), w.ack));
            }
            if let Err((e, jobs)) = self.commit(&changes, jobs).await {
                if jobs.len() == 1 {
                    fail(jobs, &e);
                } else {
                    // One bad change must not sink the others: store each job alone, in order.
                    for (range, ack) in jobs {
                        let one = vec![(0..range.len(), ack)];
                        if let Err((e, job)) = self.commit(&changes[range], one).await {
                            fail(job, &e);
                        }
                    }
                }
            }
        }
    }

    /// Commits `changes` in one transaction, then publishes each job's events (the changes
    /// in its range) and acknowledges it; on failure hands the jobs back unacknowledged.
    async fn commit(
        &self,
        changes: &[Change],
        jobs: Vec<Job>,
    ) -> Result<(), (ieum_store::StoreError, Vec<Job>)> {
        match self.store.commit(changes).await {
            Ok(Committed { events, revisions }) => {
                self.storage_ok.store(true, Ordering::Relaxed);
                {
                    let mut st = self.lock();
                    for e in &events {
                        if let Some(s) = e.service.as_deref().and_then(|n| st.services.get_mut(n)) {
                            s.last_event = Some(e.clone());
                        }
                    }
                    for (kind, name, revision) in revisions {
                        if let Some(s) = st.services.get_mut(&name).filter(|_| kind == SERVICE_KIND)
                        {
                            s.revision = s.revision.max(revision);
                        }
                    }
                }
                let mut rest = events.as_slice();
                for (range, ack) in jobs {
                    let n = changes[range]
                        .iter()
                        .filter(|c| matches!(c, Change::Event(_)))
                        .count();
                    let (mine, tail) = rest.split_at(n.min(rest.len()));
                    rest = tail;
                    for e in mine {
                        let _ = self.events.send(e.clone());
                    }
                    if let Some(ack) = ack {
                        let _ = ack.send(Ok(mine.to_vec()));
                    }
                }
                Ok(())
            }
            Err(e) => {
                self.storage_ok.store(false, Ordering::Relaxed);
                tracing::error!(error = %e, changes = changes.len(), "could not store registry changes");
                Err((e, jobs))
            }
        }
    }

    /// Expires leases and removes long-down instances when their timers fire, and watches
    /// for mass failure.
    async fn reaper(self: Arc<Self>) {
        loop {
            let next = {
                let st = self.lock();
                st.timers.peek().map(|Reverse(t)| t.at)
            };
            let tick = Instant::now() + std::time::Duration::from_secs(1);
            let until = next.map_or(tick, |n| n.min(tick));
            tokio::select! {
                () = tokio::time::sleep_until(until) => {}
                () = self.reaper_wake.notified() => {}
                () = self.shutdown.cancelled() => break,
            }
            self.fire_timers();
        }
    }

    fn fire_timers(&self) {
        let now_i = Instant::now();
        let now = self.clock.now();
        let mut st = self.lock();
        let mut changes = Vec::new();
        let mut touched = BTreeSet::new();
        let mut expired = 0usize;
        while st.timers.peek().is_some_and(|Reverse(t)| t.at <= now_i) {
            let Some(Reverse(timer)) = st.timers.pop() else {
                break;
            };
            let Some(entry) = st.entry_mut(&timer.service, &timer.id) else {
                continue;
            };
            match timer.kind {
                TimerKind::Lease if timer.generation == entry.lease_generation => {
                    entry.lease_queued = false;
                    let Some(deadline) = entry.lease else {
                        continue;
                    };
                    if deadline > now_i {
                        // Heartbeats moved the lease: re-arm at the new deadline.
                        st.arm_lease(&timer.service, &timer.id);
                        continue;
                    }
                    if entry.instance.state == InstanceState::Down {
                        continue;
                    }
                    let ttl = entry.instance.ttl;
                    let reason = format!("missed heartbeats for {ttl}");
                    set_state(
                        &mut entry.instance,
                        InstanceState::Down,
                        reason.clone(),
                        now,
                    );
                    changes.push(put_instance(&timer.service, &entry.instance));
                    changes.push(event(
                        now,
                        EventKind::InstanceDown,
                        &timer.service,
                        Some(&timer.id),
                        reason,
                        SYSTEM_AUTHOR,
                        serde_json::json!({"ttl": ttl}),
                    ));
                    let removal = later(now_i, entry.instance.deregister_after);
                    st.arm_removal(&timer.service, &timer.id, removal);
                    touched.insert(timer.service.clone());
                    expired += 1;
                }
                TimerKind::Removal if timer.generation == entry.removal_generation => {
                    if entry.instance.state != InstanceState::Down || entry.removal.is_none() {
                        continue;
                    }
                    if st.protection.active {
                        // Keep it while the registry may be cut off; look again later.
                        let later = now_i + self.options.protection_window.get();
                        st.arm_removal(&timer.service, &timer.id, later);
                        continue;
                    }
                    let service = st
                        .services
                        .get_mut(&timer.service)
                        .expect("service holds the entry");
                    let entry = service
                        .instances
                        .remove(&timer.id)
                        .expect("entry was just found");
                    st.instance_count -= 1;
                    if let Some((_, h)) = entry.check {
                        h.abort();
                    }
                    let after = entry.instance.deregister_after;
                    changes.push(Change::DeleteInstance {
                        service: timer.service.clone(),
                        id: timer.id.clone(),
                    });
                    changes.push(event(
                        now,
                        EventKind::InstanceExpired,
                        &timer.service,
                        Some(&timer.id),
                        format!("removed after being down for {after}"),
                        SYSTEM_AUTHOR,
                        serde_json::Value::Null,
                    ));
                    touched.insert(timer.service.clone());
                }
                _ => {}
            }
        }
        for s in &touched {
            st.touch(s);
        }
        self.protection(&mut st, now, now_i, expired, &mut changes);
        // Send while holding the lock, like every other mutation, so the writer stores
        // changes in the order memory saw them.
        if !changes.is_empty() {
            self.send(changes, None);
        }
    }

    fn protection(
        &self,
        st: &mut State,
        now: Timestamp,
        now_i: Instant,
        expired: usize,
        changes: &mut Vec<Change>,
    ) {
        let o = &self.options;
        let window = o.protection_window.get();
        let p = &mut st.protection;
        p.expiries.extend(std::iter::repeat_n(now_i, expired));
        while p
            .expiries
            .front()
            .is_some_and(|t| now_i.duration_since(*t) > window)
        {
            p.expiries.pop_front();
        }
        let recent = p.expiries.len();
        let active = p.active;
        let due = p
            .checked
            .is_none_or(|t| now_i.duration_since(t) >= std::time::Duration::from_secs(1));
        if expired == 0 && !due {
            return;
        }
        p.checked = Some(now_i);
        let totals = InstanceCounts {
            total: st.instance_count,
            ..InstanceCounts::default()
        };
        let limit = o.protection_threshold * totals.total as f64;
        let system_event = |kind, message: String, data| {
            Change::Event(NewEvent {
                time: now,
                kind,
                service: None,
                instance: None,
                message,
                author: SYSTEM_AUTHOR.into(),
                data,
            })
        };
        if !active && totals.total >= o.protection_min_instances && recent as f64 > limit {
            st.protection.active = true;
            st.protection.since = Some(now);
            changes.push(system_event(
                EventKind::ProtectionEntered,
                format!(
                    "{recent} of {} instances missed heartbeats within {}: the registry is probably cut off; down instances are kept, not removed",
                    totals.total, o.protection_window
                ),
                serde_json::json!({"missed": recent, "total": totals.total}),
            ));
            tracing::warn!(
                missed = recent,
                total = totals.total,
                "entering mass-failure protection"
            );
        } else if active {
            let lease_down = st
                .services
                .values()
                .flat_map(|s| s.instances.values())
                .filter(|e| e.lease.is_some() && e.instance.state == InstanceState::Down)
                .count();
            if recent as f64 <= limit && lease_down as f64 <= limit {
                st.protection.active = false;
                st.protection.since = None;
                changes.push(system_event(
                    EventKind::ProtectionLeft,
                    format!("heartbeats recovered ({lease_down} of {} instances down): removal of down instances resumes", totals.total),
                    serde_json::json!({"down": lease_down, "total": totals.total}),
                ));
                tracing::info!("leaving mass-failure protection");
            }
        }
    }

    /// Deletes events past their retention once an hour.
    async fn retention(self: Arc<Self>) {
        let every = std::time::Duration::from_secs(3600);
        loop {
            let cutoff = self.clock.now().minus(self.options.event_retention);
            match self.store.prune_events(cutoff).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "pruned events past retention"),
                Err(e) => tracing::warn!(error = %e, "could not prune old events"),
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = self.shutdown.cancelled() => break,
            }
        }
    }

    /// Starts (or restarts) the active check of an instance.
    fn start_check(self: &Arc<Self>, st: &mut State, service: &str, id: &str) {
        let generation = st.generation();
        let Some(entry) = st.entry_mut(service, id) else {
            return;
        };
        let Some(check) = entry.instance.check.clone() else {
            return;
        };
        if let Some((_, h)) = entry.check.take() {
            h.abort();
        }
        let target = check::Target {
            address: entry.instance.address.clone(),
            port: entry.instance.port,
            check,
        };
        let core = Arc::downgrade(self);
        let (service_s, id_s) = (service.to_owned(), id.to_owned());
        let shutdown = self.shutdown.clone();
        let checker = self.checker.clone();
        let task = tokio::spawn(async move {
            let interval = target.check.interval.get();
            loop {
                let result = checker.run(&target).await;
                let Some(core) = core.upgrade() else { break };
                core.check_result(&service_s, &id_s, generation, result);
                drop(core);
                tokio::select! {
                    () = tokio::time::sleep(interval) => {}
                    () = shutdown.cancelled() => break,
                }
            }
        });
        entry.check = Some((generation, task.abort_handle()));
    }

    fn check_result(&self, service: &str, id: &str, generation: u64, result: check::Outcome) {
        let now = self.clock.now();
        let mut st = self.lock();
        let Some(entry) = st.entry_mut(service, id) else {
            return;
        };
        if entry.check.as_ref().map(|(g, _)| *g) != Some(generation) {
            return;
        }
        entry.instance.last_check = Some(CheckResult {
            at: now,
            passed: result.passed,
            output: result.output.clone(),
        });
        let state = entry.instance.state;
        let (to, kind, message) = match (result.passed, state) {
            (true, InstanceState::Starting | InstanceState::Down) => {
                let to = recovered_state(&entry.instance);
                (
                    to,
                    EventKind::InstanceUp,
                    format!("check passed: {}", result.output),
                )
            }
            // A starting instance that fails stays `starting` (booting apps fail checks for a
            // while); the failure shows as its last check output.
            (false, InstanceState::Up | InstanceState::Draining) => (
                InstanceState::Down,
                EventKind::InstanceDown,
                format!("check failed: {}", result.output),
            ),
            _ => return,
        };
        set_state(&mut entry.instance, to, message.clone(), now);
        let mut changes = vec![put_instance(service, &entry.instance)];
        changes.push(event(
            now,
            kind,
            service,
            Some(id),
            message,
            SYSTEM_AUTHOR,
            serde_json::json!({"output": result.output}),
        ));
        let deregister_after = entry.instance.deregister_after;
        if to == InstanceState::Down {
            if st.arm_removal(service, id, later(Instant::now(), deregister_after)) {
                self.reaper_wake.notify_one();
            }
        } else if let Some(e) = st.entry_mut(service, id) {
            e.removal = None;
        }
        st.touch(service);
        self.send(changes, None);
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("store", &self.core.store.backend())
            .finish_non_exhaustive()
    }
}
