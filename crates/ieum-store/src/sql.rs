//! The one [`Store`] implementation, over `sqlx`'s `Any` driver, for SQLite and PostgreSQL.

use std::collections::BTreeMap;
use std::str::FromStr;

use ieum_model::{Event, EventKind, Instance, Timestamp};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Row};

use crate::{
    Change, Committed, EventQuery, MAX_EVENT_PAGE, NewEvent, Order, Revision, Store, StoreError,
    StoredInstance, StoredResource, StoredToken,
};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub(crate) fn of(url: &str) -> Result<Backend, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            Err(StoreError::BadUrl(format!(
                "`{url}` is not a store URL: use sqlite://PATH or postgres://USER@HOST:PORT/DB"
            )))
        }
    }

    pub(crate) fn migrator(self) -> &'static Migrator {
        match self {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        }
    }
}

/// SQLite or PostgreSQL storage.
#[derive(Debug, Clone)]
pub struct SqlStore {
    pool: AnyPool,
    backend: Backend,
}

pub(crate) fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

pub(crate) fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

/// How hard SQLite syncs a commit (PostgreSQL keeps its server's setting).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Durability {
    /// `synchronous = NORMAL` in WAL mode: every commit survives a process crash
    /// (`kill -9`); a power loss may roll back the last ones.
    Crash,
    /// `synchronous = FULL`: every commit is synced to disk before it returns.
    PowerLoss,
}

/// A pool for `url` (created if it is a new SQLite file). One connection writes at a time
/// anyway; a few more serve reads (WAL lets them run beside the writer).
pub(crate) async fn connect(
    url: &str,
    durability: Durability,
) -> Result<(AnyPool, Backend), StoreError> {
    sqlx::any::install_default_drivers();
    let backend = Backend::of(url)?;
    let synchronous = match durability {
        Durability::Crash => "PRAGMA synchronous = NORMAL",
        Durability::PowerLoss => "PRAGMA synchronous = FULL",
    };
    let options = match backend {
        Backend::Sqlite => {
            AnyPoolOptions::new()
                .max_connections(4)
                .after_connect(move |conn, _| {
                    Box::pin(async move {
                        // The busy timeout first: the other statements may need a lock
                        // while another pool on the same file writes.
                        for pragma in [
                            "PRAGMA busy_timeout = 5000",
                            "PRAGMA journal_mode = WAL",
                            synchronous,
                        ] {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                        Ok(())
                    })
                })
        }
        Backend::Postgres => AnyPoolOptions::new().max_connections(8),
    };
    let url = match backend {
        Backend::Sqlite if !url.contains('?') => format!("{url}?mode=rwc"),
        _ => url.to_owned(),
    };
    let pool = options.connect(&url).await.map_err(unavailable)?;
    Ok((pool, backend))
}

/// Begins a transaction that writes. On SQLite it takes the write lock at once (`BEGIN
/// IMMEDIATE`), waiting up to the busy timeout for another writer — the registry and the
/// saga log write one file from two pools, and a deferred `BEGIN` that reads first and
/// writes later cannot wait: SQLite answers `database is locked` at once to avoid a
/// deadlock.
pub(crate) async fn begin_write(
    pool: &AnyPool,
    backend: Backend,
) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
    match backend {
        Backend::Sqlite => pool.begin_with("BEGIN IMMEDIATE").await,
        Backend::Postgres => pool.begin().await,
    }
    .map_err(unavailable)
}

/// Applies migrations up to and including `version` only; for upgrade tests.
pub async fn migrate_to(url: &str, version: i64) -> Result<(), StoreError> {
    let (pool, backend) = connect(url, Durability::Crash).await?;
    backend
        .migrator()
        .run_to(version, &pool)
        .await
        .map_err(|e| StoreError::Migration(e.to_string()))?;
    pool.close().await;
    Ok(())
}

impl SqlStore {
    /// Connects to `url` and brings the schema to this version.
    pub async fn open(url: &str) -> Result<SqlStore, StoreError> {
        let (pool, backend) = connect(url, Durability::Crash).await?;
        backend
            .migrator()
            .run(&pool)
            .await
            .map_err(|e| StoreError::Migration(e.to_string()))?;
        Ok(SqlStore { pool, backend })
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn labels_json(labels: &BTreeMap<String, String>) -> String {
    serde_json::to_string(labels).unwrap_or_else(|_| "{}".into())
}

fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, StoreError> {
    serde_json::from_str(s).map_err(|e| corrupt("labels", e))
}

fn parse_json(what: &str, s: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(s).map_err(|e| corrupt(what, e))
}

fn event_from_row(row: &AnyRow) -> Result<Event, StoreError> {
    let get = |e: sqlx::Error| corrupt("event", e);
    let kind: String = row.try_get("kind").map_err(get)?;
    let data: Option<String> = row.try_get("data").map_err(get)?;
    Ok(Event {
        id: row.try_get("id").map_err(get)?,
        time: Timestamp::from_millis(row.try_get("at").map_err(get)?),
        kind: EventKind::parse(&kind).ok_or_else(|| corrupt("event kind", &kind))?,
        service: row.try_get("service").map_err(get)?,
        instance: row.try_get("instance").map_err(get)?,
        message: row.try_get("message").map_err(get)?,
        author: row.try_get("author").map_err(get)?,
        data: match data {
            Some(d) => parse_json("event data", &d)?,
            None => serde_json::Value::Null,
        },
    })
}

fn resource_from_row(row: &AnyRow) -> Result<StoredResource, StoreError> {
    let get = |e: sqlx::Error| corrupt("resource", e);
    let labels: String = row.try_get("labels").map_err(get)?;
    let spec: String = row.try_get("spec").map_err(get)?;
    Ok(StoredResource {
        kind: row.try_get("kind").map_err(get)?,
        name: row.try_get("name").map_err(get)?,
        revision: row.try_get("revision").map_err(get)?,
        labels: parse_labels(&labels)?,
        spec: parse_json("spec", &spec)?,
        created_at: Timestamp::from_millis(row.try_get("created_at").map_err(get)?),
        updated_at: Timestamp::from_millis(row.try_get("updated_at").map_err(get)?),
        author: row.try_get("author").map_err(get)?,
    })
}

fn token_from_row(row: &AnyRow) -> Result<StoredToken, StoreError> {
    let get = |e: sqlx::Error| corrupt("token", e);
    let at = |v: Option<i64>| v.map(Timestamp::from_millis);
    Ok(StoredToken {
        name: row.try_get("name").map_err(get)?,
        role: row.try_get("role").map_err(get)?,
        service: row.try_get("service").map_err(get)?,
        hash: row.try_get("hash").map_err(get)?,
        created_at: Timestamp::from_millis(row.try_get("created_at").map_err(get)?),
        created_by: row.try_get("created_by").map_err(get)?,
        expires_at: at(row.try_get("expires_at").map_err(get)?),
        revoked_at: at(row.try_get("revoked_at").map_err(get)?),
        revoked_by: row.try_get("revoked_by").map_err(get)?,
    })
}

const TOKEN_COLUMNS: &str =
    "name, role, service, hash, created_at, created_by, expires_at, revoked_at, revoked_by";

async fn append_event(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    e: &NewEvent,
) -> Result<Event, StoreError> {
    let data = if e.data.is_null() {
        None
    } else {
        Some(e.data.to_string())
    };
    let row = sqlx::query(
        "INSERT INTO events (at, kind, service, instance, message, author, data) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
    )
    .bind(e.time.as_millis())
    .bind(e.kind.as_str())
    .bind(e.service.clone())
    .bind(e.instance.clone())
    .bind(e.message.clone())
    .bind(e.author.clone())
    .bind(data)
    .fetch_one(&mut **tx)
    .await
    .map_err(unavailable)?;
    Ok(Event {
        id: row.try_get(0).map_err(|err| corrupt("event id", err))?,
        time: e.time,
        kind: e.kind,
        service: e.service.clone(),
        instance: e.instance.clone(),
        message: e.message.clone(),
        author: e.author.clone(),
        data: e.data.clone(),
    })
}

async fn current_revision(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    kind: &str,
    name: &str,
) -> Result<Option<(i64, String)>, StoreError> {
    let row = sqlx::query("SELECT revision, labels FROM resources WHERE kind = $1 AND name = $2")
        .bind(kind)
        .bind(name)
        .fetch_optional(&mut **tx)
        .await
        .map_err(unavailable)?;
    row.map(|r| {
        let rev: i64 = r.try_get(0).map_err(|e| corrupt("revision", e))?;
        let labels: String = r.try_get(1).map_err(|e| corrupt("labels", e))?;
        Ok((rev, labels))
    })
    .transpose()
}

async fn last_revision(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    kind: &str,
    name: &str,
) -> Result<i64, StoreError> {
    let row = sqlx::query("SELECT MAX(revision) FROM revisions WHERE kind = $1 AND name = $2")
        .bind(kind)
        .bind(name)
        .fetch_one(&mut **tx)
        .await
        .map_err(unavailable)?;
    let max: Option<i64> = row.try_get(0).map_err(|e| corrupt("revision", e))?;
    Ok(max.unwrap_or(0))
}

async fn apply(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    change: &Change,
    out: &mut Committed,
) -> Result<(), StoreError> {
    match change {
        Change::PutResource {
            kind,
            name,
            labels,
            spec,
            author,
            time,
        } => {
            // Numbering continues across a delete, so a revision number never repeats.
            let revision = last_revision(tx, kind, name).await? + 1;
            let labels = labels_json(labels);
            let spec = spec.to_string();
            sqlx::query(
                "INSERT INTO resources (kind, name, revision, labels, spec, created_at, updated_at, author) \
                 VALUES ($1, $2, $3, $4, $5, $6, $6, $7) \
                 ON CONFLICT (kind, name) DO UPDATE SET revision = excluded.revision, \
                 labels = excluded.labels, spec = excluded.spec, updated_at = excluded.updated_at, \
                 author = excluded.author",
            )
            .bind(kind.as_str())
            .bind(name.as_str())
            .bind(revision)
            .bind(labels.clone())
            .bind(spec.clone())
            .bind(time.as_millis())
            .bind(author.as_str())
            .execute(&mut **tx)
            .await
            .map_err(unavailable)?;
            insert_revision(tx, kind, name, revision, &labels, Some(spec), author, *time).await?;
            out.revisions.push((kind.clone(), name.clone(), revision));
        }
        Change::DeleteResource {
            kind,
            name,
            author,
            time,
        } => {
            if let Some((revision, labels)) = current_revision(tx, kind, name).await? {
                sqlx::query("DELETE FROM resources WHERE kind = $1 AND name = $2")
                    .bind(kind.as_str())
                    .bind(name.as_str())
                    .execute(&mut **tx)
                    .await
                    .map_err(unavailable)?;
                insert_revision(tx, kind, name, revision + 1, &labels, None, author, *time).await?;
                out.revisions
                    .push((kind.clone(), name.clone(), revision + 1));
            }
        }
        Change::PutInstance { service, instance } => {
            let data = serde_json::to_string(instance).map_err(|e| corrupt("instance", e))?;
            sqlx::query(
                "INSERT INTO instances (service, id, state, data, updated_at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (service, id) DO UPDATE SET state = excluded.state, data = excluded.data, \
                 updated_at = excluded.updated_at",
            )
            .bind(service.as_str())
            .bind(instance.id.as_str())
            .bind(instance.state.as_str())
            .bind(data)
            .bind(instance.state_since.as_millis())
            .execute(&mut **tx)
            .await
            .map_err(unavailable)?;
        }
        Change::DeleteInstance { service, id } => {
            sqlx::query("DELETE FROM instances WHERE service = $1 AND id = $2")
                .bind(service.as_str())
                .bind(id.as_str())
                .execute(&mut **tx)
                .await
                .map_err(unavailable)?;
        }
        Change::Event(e) => out.events.push(append_event(tx, e).await?),
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn insert_revision(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    kind: &str,
    name: &str,
    revision: i64,
    labels: &str,
    spec: Option<String>,
    author: &str,
    at: Timestamp,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO revisions (kind, name, revision, labels, spec, author, at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(kind)
    .bind(name)
    .bind(revision)
    .bind(labels)
    .bind(spec)
    .bind(author)
    .bind(at.as_millis())
    .execute(&mut **tx)
    .await
    .map_err(unavailable)?;
    Ok(())
}

#[async_trait::async_trait]
impl Store for SqlStore {
    fn backend(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    async fn commit(&self, batch: &[Change]) -> Result<Committed, StoreError> {
        let mut out = Committed::default();
        if batch.is_empty() {
            return Ok(out);
        }
        let mut tx = begin_write(&self.pool, self.backend).await?;
        for change in batch {
            apply(&mut tx, change, &mut out).await?;
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(out)
    }

    async fn instances(&self) -> Result<Vec<StoredInstance>, StoreError> {
        let rows = sqlx::query("SELECT service, data FROM instances ORDER BY service, id")
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter()
            .map(|row| {
                let service: String = row.try_get(0).map_err(|e| corrupt("instance", e))?;
                let data: String = row.try_get(1).map_err(|e| corrupt("instance", e))?;
                let instance: Instance =
                    serde_json::from_str(&data).map_err(|e| corrupt("instance", e))?;
                Ok(StoredInstance { service, instance })
            })
            .collect()
    }

    async fn resources(&self, kind: &str) -> Result<Vec<StoredResource>, StoreError> {
        let rows = sqlx::query("SELECT * FROM resources WHERE kind = $1 ORDER BY name")
            .bind(kind)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter().map(resource_from_row).collect()
    }

    async fn resource(&self, kind: &str, name: &str) -> Result<Option<StoredResource>, StoreError> {
        let row = sqlx::query("SELECT * FROM resources WHERE kind = $1 AND name = $2")
            .bind(kind)
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.as_ref().map(resource_from_row).transpose()
    }

    async fn history(&self, kind: &str, name: &str) -> Result<Vec<Revision>, StoreError> {
        let rows = sqlx::query(
            "SELECT revision, labels, spec, author, at FROM revisions \
             WHERE kind = $1 AND name = $2 ORDER BY revision",
        )
        .bind(kind)
        .bind(name)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(|row| {
                let get = |e: sqlx::Error| corrupt("revision", e);
                let labels: String = row.try_get("labels").map_err(get)?;
                let spec: Option<String> = row.try_get("spec").map_err(get)?;
                Ok(Revision {
                    revision: row.try_get("revision").map_err(get)?,
                    labels: parse_labels(&labels)?,
                    spec: spec.map(|s| parse_json("spec", &s)).transpose()?,
                    author: row.try_get("author").map_err(get)?,
                    at: Timestamp::from_millis(row.try_get("at").map_err(get)?),
                })
            })
            .collect()
    }

    async fn events(&self, q: &EventQuery) -> Result<Vec<Event>, StoreError> {
        let mut sql = String::from(
            "SELECT id, at, kind, service, instance, message, author, data FROM events WHERE 1 = 1",
        );
        let mut n = 0;
        let mut next = || {
            n += 1;
            format!("${n}")
        };
        if q.service.is_some() {
            sql += &format!(" AND service = {}", next());
        }
        if q.instance.is_some() {
            sql += &format!(" AND instance = {}", next());
        }
        if !q.kinds.is_empty() {
            let slots: Vec<String> = q.kinds.iter().map(|_| next()).collect();
            sql += &format!(" AND kind IN ({})", slots.join(", "));
        }
        if q.since.is_some() {
            sql += &format!(" AND at >= {}", next());
        }
        if q.after_id.is_some() {
            sql += &format!(" AND id > {}", next());
        }
        sql += match q.order {
            Order::NewestFirst => " ORDER BY id DESC",
            Order::OldestFirst => " ORDER BY id ASC",
        };
        sql += &format!(" LIMIT {}", next());

        // Only placeholders and fixed clauses are spliced in; every value is bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        if let Some(s) = &q.service {
            query = query.bind(s.as_str());
        }
        if let Some(i) = &q.instance {
            query = query.bind(i.as_str());
        }
        for k in &q.kinds {
            query = query.bind(k.as_str());
        }
        if let Some(t) = q.since {
            query = query.bind(t.as_millis());
        }
        if let Some(id) = q.after_id {
            query = query.bind(id);
        }
        let limit = if q.limit == 0 {
            100
        } else {
            q.limit.min(MAX_EVENT_PAGE)
        };
        query = query.bind(i64::from(limit));
        let rows = query.fetch_all(&self.pool).await.map_err(unavailable)?;
        rows.iter().map(event_from_row).collect()
    }

    async fn last_event_per_service(&self) -> Result<Vec<Event>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at, kind, service, instance, message, author, data FROM events \
             WHERE id IN (SELECT MAX(id) FROM events WHERE service IS NOT NULL GROUP BY service)",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(event_from_row).collect()
    }

    async fn prune_events(&self, before: Timestamp) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM events WHERE at < $1")
            .bind(before.as_millis())
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(done.rows_affected())
    }

    async fn create_token(&self, t: &StoredToken) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO tokens (name, role, service, hash, created_at, created_by, expires_at, \
             revoked_at, revoked_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT DO NOTHING",
        )
        .bind(t.name.as_str())
        .bind(t.role.as_str())
        .bind(t.service.clone())
        .bind(t.hash.as_str())
        .bind(t.created_at.as_millis())
        .bind(t.created_by.as_str())
        .bind(t.expires_at.map(Timestamp::as_millis))
        .bind(t.revoked_at.map(Timestamp::as_millis))
        .bind(t.revoked_by.clone())
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(done.rows_affected() == 1)
    }

    async fn tokens(&self) -> Result<Vec<StoredToken>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY name"
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(token_from_row).collect()
    }

    async fn revoke_token(
        &self,
        name: &str,
        at: Timestamp,
        by: &str,
    ) -> Result<Option<StoredToken>, StoreError> {
        sqlx::query(
            "UPDATE tokens SET revoked_at = $2, revoked_by = $3 \
             WHERE name = $1 AND revoked_at IS NULL",
        )
        .bind(name)
        .bind(at.as_millis())
        .bind(by)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens WHERE name = $1"
        )))
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        row.as_ref().map(token_from_row).transpose()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

impl FromStr for Order {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "newest" | "desc" => Ok(Order::NewestFirst),
            "oldest" | "asc" => Ok(Order::OldestFirst),
            _ => Err(format!("`{s}` is not an order: use `newest` or `oldest`")),
        }
    }
}
