//! Durable storage for ieum behind one trait, [`Store`], with two real backends: SQLite
//! (embedded, the default, zero setup) and PostgreSQL (for several server replicas).
//!
//! Layout:
//! - [`Store`]: the trait every caller uses; [`open`] picks the backend from a URL.
//! - `sql`: the one implementation, over `sqlx`'s `Any` driver. Both backends run the same
//!   statements (`$1` placeholders, `INSERT … ON CONFLICT`, `RETURNING`), so they cannot
//!   drift apart; only the migrations differ, one folder per dialect.
//! - `migrations/{sqlite,postgres}`: versioned schema changes, applied on open.
//! - [`saga`]: the saga coordinator's durable log ([`SagaLog`]), its own pool on the same
//!   database (`synchronous = FULL` on SQLite), with lease rows for several replicas.
//! - [`MemoryStore`]: the same contract in memory, without durability, for tests that run
//!   with paused time and for throwaway runs.
//!
//! **Invariant:** a [`Store::commit`] is one transaction. Either every change of a batch
//! (an instance and the event that explains it, a resource and its revision) is stored, or
//! none is. Nothing here knows HTTP or the registry's rules.

use std::collections::BTreeMap;
use std::sync::Arc;

use ieum_model::{Event, EventKind, Instance, Timestamp};

mod memory;
pub mod saga;
mod sql;
#[cfg(feature = "testing")]
pub mod testing;

pub use memory::MemoryStore;
pub use saga::{SagaLog, SqlSagaLog, open_saga_log};
pub use sql::{SqlStore, migrate_to};

/// Why storage failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or refused the statement.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Stored data could not be read back (a bug or a manual edit).
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    /// The schema could not be brought to this version.
    #[error("schema migration failed: {0}")]
    Migration(String),
    /// The store URL is not one we can open.
    #[error("{0}")]
    BadUrl(String),
}

/// A resource as stored: its current spec and revision.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResource {
    /// Kind, e.g. `Service`.
    pub kind: String,
    /// Name, unique within the kind.
    pub name: String,
    /// Revision number, 1 for the first version, increasing by one per change.
    pub revision: i64,
    /// Labels from `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// The `spec`, as JSON.
    pub spec: serde_json::Value,
    /// When the first revision was stored.
    pub created_at: Timestamp,
    /// When the latest revision was stored.
    pub updated_at: Timestamp,
    /// Who wrote the latest revision.
    pub author: String,
}

/// One past version of a resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Revision {
    /// Revision number.
    pub revision: i64,
    /// Labels at that revision.
    pub labels: BTreeMap<String, String>,
    /// The spec at that revision; `None` when the revision deleted the resource.
    pub spec: Option<serde_json::Value>,
    /// Who wrote it.
    pub author: String,
    /// When.
    pub at: Timestamp,
}

/// An event to append; the store assigns its id.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// When it happened.
    pub time: Timestamp,
    /// What happened.
    pub kind: EventKind,
    /// Service concerned.
    pub service: Option<String>,
    /// Instance concerned.
    pub instance: Option<String>,
    /// Why, in words.
    pub message: String,
    /// Who caused it.
    pub author: String,
    /// Details for tools.
    pub data: serde_json::Value,
}

/// One change in a [`Store::commit`] batch.
#[derive(Debug, Clone)]
pub enum Change {
    /// Create or replace a resource; stores a new revision.
    PutResource {
        /// Kind.
        kind: String,
        /// Name.
        name: String,
        /// Labels.
        labels: BTreeMap<String, String>,
        /// Spec.
        spec: serde_json::Value,
        /// Who.
        author: String,
        /// When.
        time: Timestamp,
    },
    /// Delete a resource; stores a deleting revision. Deleting a missing one does nothing.
    DeleteResource {
        /// Kind.
        kind: String,
        /// Name.
        name: String,
        /// Who.
        author: String,
        /// When.
        time: Timestamp,
    },
    /// Create or replace an instance.
    PutInstance {
        /// Service it belongs to.
        service: String,
        /// The instance as of this change.
        instance: Box<Instance>,
    },
    /// Remove an instance.
    DeleteInstance {
        /// Service it belongs to.
        service: String,
        /// Instance id.
        id: String,
    },
    /// Append an event.
    Event(NewEvent),
}

/// What a commit stored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Committed {
    /// The appended events with their ids, in batch order.
    pub events: Vec<Event>,
    /// `(kind, name, revision)` of every resource written, in batch order.
    pub revisions: Vec<(String, String, i64)>,
}

/// An instance as restored from storage.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredInstance {
    /// Service it belongs to.
    pub service: String,
    /// The instance as of its last change.
    pub instance: Instance,
}

/// Order of an event query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// Newest first (timelines).
    #[default]
    NewestFirst,
    /// Oldest first (catching up from a cursor).
    OldestFirst,
}

/// Which events to read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventQuery {
    /// Only this service's events.
    pub service: Option<String>,
    /// Only this instance's events.
    pub instance: Option<String>,
    /// Only these kinds (empty: all).
    pub kinds: Vec<EventKind>,
    /// Only events at or after this time.
    pub since: Option<Timestamp>,
    /// Only events with an id above this one (a cursor).
    pub after_id: Option<i64>,
    /// At most this many (capped at [`MAX_EVENT_PAGE`]).
    pub limit: u32,
    /// Order of the result.
    pub order: Order,
}

impl EventQuery {
    /// Whether `e` passes the query's filters (service, instance, kinds, since, after);
    /// order and limit are not filters.
    pub fn matches(&self, e: &Event) -> bool {
        self.service
            .as_ref()
            .is_none_or(|s| e.service.as_ref() == Some(s))
            && self
                .instance
                .as_ref()
                .is_none_or(|i| e.instance.as_ref() == Some(i))
            && (self.kinds.is_empty() || self.kinds.contains(&e.kind))
            && self.since.is_none_or(|t| e.time >= t)
            && self.after_id.is_none_or(|id| e.id > id)
    }
}

/// A control-plane API token as stored: who holds it, with which role, and the SHA-256 of
/// its secret (never the secret itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    /// Unique name (DNS-1123); recorded as the author of every write made with the token.
    pub name: String,
    /// Role (`admin`, `operator`, `reader`, `sidecar`, `gateway`); the store does not
    /// interpret it.
    pub role: String,
    /// For `sidecar` (and optionally `gateway`) tokens: the one service it acts for.
    pub service: Option<String>,
    /// SHA-256 of the secret, lowercase hex. The secret is shown once, at creation.
    pub hash: String,
    /// When it was created.
    pub created_at: Timestamp,
    /// Who created it (a token name, `local`, or `ieum` for the first admin).
    pub created_by: String,
    /// When it stops being accepted; `None`: never.
    pub expires_at: Option<Timestamp>,
    /// When it was revoked; a revoked token is kept so the record stays.
    pub revoked_at: Option<Timestamp>,
    /// Who revoked it.
    pub revoked_by: Option<String>,
}

/// Largest page of events one query returns.
pub const MAX_EVENT_PAGE: u32 = 10_000;

/// Durable storage. Every method is one round trip or one transaction.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;

    /// Stores every change of the batch in one transaction.
    async fn commit(&self, batch: &[Change]) -> Result<Committed, StoreError>;

    /// Every stored instance.
    async fn instances(&self) -> Result<Vec<StoredInstance>, StoreError>;

    /// Every resource of a kind, by name.
    async fn resources(&self, kind: &str) -> Result<Vec<StoredResource>, StoreError>;

    /// One resource.
    async fn resource(&self, kind: &str, name: &str) -> Result<Option<StoredResource>, StoreError>;

    /// Every revision of one resource, oldest first.
    async fn history(&self, kind: &str, name: &str) -> Result<Vec<Revision>, StoreError>;

    /// Events matching the query.
    async fn events(&self, query: &EventQuery) -> Result<Vec<Event>, StoreError>;

    /// The latest event of every service that has one.
    async fn last_event_per_service(&self) -> Result<Vec<Event>, StoreError>;

    /// Deletes events older than `before`; returns how many.
    async fn prune_events(&self, before: Timestamp) -> Result<u64, StoreError>;

    /// Stores a new API token; `false` (and nothing stored) when its name, revoked or
    /// not, is taken.
    async fn create_token(&self, token: &StoredToken) -> Result<bool, StoreError>;

    /// Every API token, revoked and expired ones too, by name.
    async fn tokens(&self) -> Result<Vec<StoredToken>, StoreError>;

    /// Marks a token revoked at `at` by `by` (a token revoked before keeps its first
    /// revocation); returns it as stored afterwards, `None` when there is no such token.
    async fn revoke_token(
        &self,
        name: &str,
        at: Timestamp,
        by: &str,
    ) -> Result<Option<StoredToken>, StoreError>;

    /// Checks the database answers.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// Opens (and migrates) the store at `url`: `sqlite://PATH` or `postgres://…`.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    Ok(Arc::new(SqlStore::open(url).await?))
}
