//! The saga log: executions and their transitions, for the saga coordinator (`ieum-saga`).
//!
//! [`SagaLog`] is its own trait and its own connection pool, opened with [`open_saga_log`]
//! on the same URL as the [`crate::Store`]: on SQLite its connections run with
//! `synchronous = FULL`, so a committed transition survives a power loss, not only a
//! process crash (the registry's tables keep `NORMAL`). The coordinator batches the
//! transitions of concurrent executions into one [`SagaLog::append`] (group commit):
//! one fsync for many executions.
//!
//! **Fencing:** an [`Append`] made by a coordinator names it as `owner`; the transaction
//! stores its records only while that coordinator still holds the execution's lease
//! row (`owner`, `lease_until`). A coordinator that lost its lease (it paused, another
//! replica took over) learns it from the append and stops before acting.

use std::sync::Arc;

use ieum_model::Timestamp;
use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row};

use crate::StoreError;
use crate::sql::{Backend, Durability, connect, corrupt, unavailable};

/// States in which an execution still has work to do (or waits for an operator).
pub const UNFINISHED: [&str; 4] = ["running", "compensating", "paused", "stuck"];

/// A new execution.
#[derive(Debug, Clone, PartialEq)]
pub struct NewExecution {
    /// Its id.
    pub id: String,
    /// The saga's name.
    pub saga: String,
    /// The saga's revision it runs (its spec is copied: later applies do not change it).
    pub revision: i64,
    /// The caller's `Idempotency-Key`: a second start with the same key finds this one.
    pub idempotency_key: Option<String>,
    /// State at creation.
    pub state: String,
    /// The request body.
    pub input: serde_json::Value,
    /// The saga's spec at `revision`.
    pub spec: serde_json::Value,
    /// W3C trace id shared by every call of the execution.
    pub trace_id: String,
    /// When.
    pub at: Timestamp,
    /// Who started it.
    pub author: String,
    /// The coordinator that runs it, and until when its lease holds.
    pub owner: Option<String>,
    /// End of the owner's lease.
    pub lease_until: Timestamp,
}

/// An execution as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionRow {
    /// Its id.
    pub id: String,
    /// The saga's name.
    pub saga: String,
    /// The saga's revision.
    pub revision: i64,
    /// The start's `Idempotency-Key`.
    pub idempotency_key: Option<String>,
    /// State as of the last transition.
    pub state: String,
    /// The request body.
    pub input: serde_json::Value,
    /// The spec it runs.
    pub spec: serde_json::Value,
    /// W3C trace id.
    pub trace_id: String,
    /// Created.
    pub created_at: Timestamp,
    /// Last transition.
    pub updated_at: Timestamp,
    /// Who started it.
    pub author: String,
    /// The coordinator holding the lease, if any.
    pub owner: Option<String>,
    /// End of the lease.
    pub lease_until: Timestamp,
}

/// A record to append.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRecord {
    /// When.
    pub at: Timestamp,
    /// What (`call.started`, `state`, `operator.retry`, …).
    pub kind: String,
    /// The step concerned (index in the spec).
    pub step: Option<i64>,
    /// Details.
    pub data: serde_json::Value,
}

/// A stored record.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRecord {
    /// Position in the log (increasing across all executions).
    pub id: i64,
    /// The execution.
    pub execution: String,
    /// When.
    pub at: Timestamp,
    /// What.
    pub kind: String,
    /// The step concerned.
    pub step: Option<i64>,
    /// Details.
    pub data: serde_json::Value,
}

/// Records of one execution to append in a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Append {
    /// The execution.
    pub execution: String,
    /// The records, in order.
    pub records: Vec<NewRecord>,
    /// The execution's new state, when it changes.
    pub state: Option<String>,
    /// The coordinator appending; the records are stored only while it holds the lease.
    /// `None` for requests that any server may record (an operator's action).
    pub owner: Option<String>,
}

/// What became of one [`Append`] of a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Appended {
    /// Stored; the ids of its records.
    Stored(Vec<i64>),
    /// Not stored: the owner no longer holds the lease (or the execution is gone).
    Fenced,
}

/// What [`SagaLog::create`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Created {
    /// A new execution.
    New,
    /// An execution with the same saga and idempotency key exists: its id.
    Existing(String),
}

/// Which executions to list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecutionQuery {
    /// Only this saga's.
    pub saga: Option<String>,
    /// Only in this state.
    pub state: Option<String>,
    /// At most this many (newest first); 0 means 100.
    pub limit: u32,
}

/// Durable storage of saga executions.
#[async_trait::async_trait]
pub trait SagaLog: Send + Sync + 'static {
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;

    /// Stores a new execution with its first records, or finds the one with the same
    /// saga and idempotency key.
    async fn create(&self, e: &NewExecution, first: &[NewRecord]) -> Result<Created, StoreError>;

    /// Appends every batch in one transaction (group commit); one result per batch.
    async fn append(&self, batches: &[Append]) -> Result<Vec<Appended>, StoreError>;

    /// One execution.
    async fn execution(&self, id: &str) -> Result<Option<ExecutionRow>, StoreError>;

    /// An execution's records with an id above `after`, oldest first.
    async fn log(&self, id: &str, after: i64) -> Result<Vec<LogRecord>, StoreError>;

    /// Executions, newest first.
    async fn executions(&self, q: &ExecutionQuery) -> Result<Vec<ExecutionRow>, StoreError>;

    /// `(saga, state, count)` of every saga with executions.
    async fn counts(&self) -> Result<Vec<(String, String, i64)>, StoreError>;

    /// Takes the lease of unfinished executions that nobody holds, whose lease expired
    /// before `now`, or (with `force`, for a single server restarting) every unfinished
    /// one; returns the ids now held by `owner`.
    async fn claim(
        &self,
        owner: &str,
        until: Timestamp,
        now: Timestamp,
        force: bool,
    ) -> Result<Vec<String>, StoreError>;

    /// Extends `owner`'s leases of unfinished executions; returns the ids it still holds.
    async fn renew(&self, owner: &str, until: Timestamp) -> Result<Vec<String>, StoreError>;

    /// Gives up `owner`'s lease of one execution (when it finishes or the server stops).
    async fn release(&self, owner: &str, id: &str) -> Result<(), StoreError>;
}

/// Opens the saga log at a store URL (`sqlite://PATH` or `postgres://…`), migrating the
/// schema if needed.
pub async fn open_saga_log(url: &str) -> Result<Arc<dyn SagaLog>, StoreError> {
    Ok(Arc::new(SqlSagaLog::open(url).await?))
}

/// The saga log over SQLite or PostgreSQL.
#[derive(Debug, Clone)]
pub struct SqlSagaLog {
    pool: AnyPool,
    backend: Backend,
}

impl SqlSagaLog {
    /// Connects its own pool and brings the schema to this version.
    pub async fn open(url: &str) -> Result<SqlSagaLog, StoreError> {
        // Transitions are acted on once committed, so they must survive a power loss; group
        // commit keeps the cost at one sync per batch, whatever the number of executions.
        let (pool, backend) = connect(url, Durability::PowerLoss).await?;
        backend
            .migrator()
            .run(&pool)
            .await
            .map_err(|e| StoreError::Migration(e.to_string()))?;
        Ok(SqlSagaLog { pool, backend })
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

const COLUMNS: &str = "id, saga, revision, idempotency_key, state, input, spec, trace_id, \
                       created_at, updated_at, author, owner, lease_until";

fn unfinished_list() -> String {
    UNFINISHED
        .iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn execution_from_row(row: &AnyRow) -> Result<ExecutionRow, StoreError> {
    let get = |e: sqlx::Error| corrupt("saga execution", e);
    let input: String = row.try_get("input").map_err(get)?;
    let spec: String = row.try_get("spec").map_err(get)?;
    Ok(ExecutionRow {
        id: row.try_get("id").map_err(get)?,
        saga: row.try_get("saga").map_err(get)?,
        revision: row.try_get("revision").map_err(get)?,
        idempotency_key: row.try_get("idempotency_key").map_err(get)?,
        state: row.try_get("state").map_err(get)?,
        input: serde_json::from_str(&input).map_err(|e| corrupt("saga input", e))?,
        spec: serde_json::from_str(&spec).map_err(|e| corrupt("saga spec", e))?,
        trace_id: row.try_get("trace_id").map_err(get)?,
        created_at: Timestamp::from_millis(row.try_get("created_at").map_err(get)?),
        updated_at: Timestamp::from_millis(row.try_get("updated_at").map_err(get)?),
        author: row.try_get("author").map_err(get)?,
        owner: row.try_get("owner").map_err(get)?,
        lease_until: Timestamp::from_millis(row.try_get("lease_until").map_err(get)?),
    })
}

async fn insert_record(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    execution: &str,
    r: &NewRecord,
) -> Result<i64, StoreError> {
    let row = sqlx::query(
        "INSERT INTO saga_log (execution, at, kind, step, data) VALUES ($1, $2, $3, $4, $5) \
         RETURNING id",
    )
    .bind(execution)
    .bind(r.at.as_millis())
    .bind(r.kind.as_str())
    .bind(r.step)
    .bind(r.data.to_string())
    .fetch_one(&mut **tx)
    .await
    .map_err(unavailable)?;
    row.try_get(0).map_err(|e| corrupt("saga log id", e))
}

#[async_trait::async_trait]
impl SagaLog for SqlSagaLog {
    fn backend(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    async fn create(&self, e: &NewExecution, first: &[NewRecord]) -> Result<Created, StoreError> {
        let mut tx = crate::sql::begin_write(&self.pool, self.backend).await?;
        let inserted = sqlx::query(
            "INSERT INTO saga_executions (id, saga, revision, idempotency_key, state, input, spec, \
             trace_id, created_at, updated_at, author, owner, lease_until) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10, $11, $12) \
             ON CONFLICT (saga, idempotency_key) DO NOTHING RETURNING id",
        )
        .bind(e.id.as_str())
        .bind(e.saga.as_str())
        .bind(e.revision)
        .bind(e.idempotency_key.clone())
        .bind(e.state.as_str())
        .bind(e.input.to_string())
        .bind(e.spec.to_string())
        .bind(e.trace_id.as_str())
        .bind(e.at.as_millis())
        .bind(e.author.as_str())
        .bind(e.owner.clone())
        .bind(e.lease_until.as_millis())
        .fetch_optional(&mut *tx)
        .await
        .map_err(unavailable)?;
        if inserted.is_none() {
            let row = sqlx::query(
                "SELECT id FROM saga_executions WHERE saga = $1 AND idempotency_key = $2",
            )
            .bind(e.saga.as_str())
            .bind(e.idempotency_key.clone())
            .fetch_one(&mut *tx)
            .await
            .map_err(unavailable)?;
            tx.rollback().await.map_err(unavailable)?;
            let id: String = row
                .try_get(0)
                .map_err(|e| corrupt("saga execution id", e))?;
            return Ok(Created::Existing(id));
        }
        for r in first {
            insert_record(&mut tx, &e.id, r).await?;
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(Created::New)
    }

    async fn append(&self, batches: &[Append]) -> Result<Vec<Appended>, StoreError> {
        let mut out = Vec::with_capacity(batches.len());
        if batches.is_empty() {
            return Ok(out);
        }
        let mut tx = crate::sql::begin_write(&self.pool, self.backend).await?;
        for b in batches {
            let at = b
                .records
                .last()
                .map_or_else(|| Timestamp::from_millis(0), |r| r.at);
            // The update is the fence: it touches the row only while `owner` holds it. A
            // final state lets go of the lease in the same statement, so a claim that ran
            // between the coordinator's release and this commit cannot keep an owner on a
            // finished execution.
            let sql = format!(
                "UPDATE saga_executions SET state = COALESCE($1, state), \
                 owner = CASE WHEN $1 IS NOT NULL AND $1 NOT IN ({unfinished}) THEN NULL ELSE owner END, \
                 lease_until = CASE WHEN $1 IS NOT NULL AND $1 NOT IN ({unfinished}) THEN 0 ELSE lease_until END, \
                 updated_at = CASE WHEN $2 > updated_at THEN $2 ELSE updated_at END \
                 WHERE id = $3 AND ($4 IS NULL OR owner = $4)",
                unfinished = unfinished_list()
            );
            let done = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(b.state.clone())
                .bind(at.as_millis())
                .bind(b.execution.as_str())
                .bind(b.owner.clone())
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
            if done.rows_affected() == 0 {
                out.push(Appended::Fenced);
                continue;
            }
            let mut ids = Vec::with_capacity(b.records.len());
            for r in &b.records {
                ids.push(insert_record(&mut tx, &b.execution, r).await?);
            }
            out.push(Appended::Stored(ids));
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(out)
    }

    async fn execution(&self, id: &str) -> Result<Option<ExecutionRow>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM saga_executions WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        row.as_ref().map(execution_from_row).transpose()
    }

    async fn log(&self, id: &str, after: i64) -> Result<Vec<LogRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, execution, at, kind, step, data FROM saga_log \
             WHERE execution = $1 AND id > $2 ORDER BY id",
        )
        .bind(id)
        .bind(after)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(|row| {
                let get = |e: sqlx::Error| corrupt("saga log", e);
                let data: String = row.try_get("data").map_err(get)?;
                Ok(LogRecord {
                    id: row.try_get("id").map_err(get)?,
                    execution: row.try_get("execution").map_err(get)?,
                    at: Timestamp::from_millis(row.try_get("at").map_err(get)?),
                    kind: row.try_get("kind").map_err(get)?,
                    step: row.try_get("step").map_err(get)?,
                    data: serde_json::from_str(&data).map_err(|e| corrupt("saga log data", e))?,
                })
            })
            .collect()
    }

    async fn executions(&self, q: &ExecutionQuery) -> Result<Vec<ExecutionRow>, StoreError> {
        let mut sql = format!("SELECT {COLUMNS} FROM saga_executions WHERE 1 = 1");
        let mut n = 0;
        let mut next = || {
            n += 1;
            format!("${n}")
        };
        if q.saga.is_some() {
            sql += &format!(" AND saga = {}", next());
        }
        if q.state.is_some() {
            sql += &format!(" AND state = {}", next());
        }
        sql += &format!(" ORDER BY created_at DESC, id DESC LIMIT {}", next());
        // Only placeholders and fixed clauses are spliced in; every value is bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        if let Some(s) = &q.saga {
            query = query.bind(s.as_str());
        }
        if let Some(s) = &q.state {
            query = query.bind(s.as_str());
        }
        let limit = if q.limit == 0 {
            100
        } else {
            q.limit.min(10_000)
        };
        query = query.bind(i64::from(limit));
        let rows = query.fetch_all(&self.pool).await.map_err(unavailable)?;
        rows.iter().map(execution_from_row).collect()
    }

    async fn counts(&self) -> Result<Vec<(String, String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT saga, state, COUNT(*) AS n FROM saga_executions GROUP BY saga, state \
             ORDER BY saga, state",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(|row| {
                let get = |e: sqlx::Error| corrupt("saga counts", e);
                Ok((
                    row.try_get("saga").map_err(get)?,
                    row.try_get("state").map_err(get)?,
                    row.try_get("n").map_err(get)?,
                ))
            })
            .collect()
    }

    async fn claim(
        &self,
        owner: &str,
        until: Timestamp,
        now: Timestamp,
        force: bool,
    ) -> Result<Vec<String>, StoreError> {
        let free = if force {
            "1 = 1"
        } else {
            "(owner IS NULL OR owner = $1 OR lease_until < $3)"
        };
        let sql = format!(
            "UPDATE saga_executions SET owner = $1, lease_until = $2 \
             WHERE state IN ({}) AND {free} AND $3 = $3 RETURNING id",
            unfinished_list()
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(owner)
            .bind(until.as_millis())
            .bind(now.as_millis())
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter()
            .map(|r| r.try_get(0).map_err(|e| corrupt("saga execution id", e)))
            .collect()
    }

    async fn renew(&self, owner: &str, until: Timestamp) -> Result<Vec<String>, StoreError> {
        let sql = format!(
            "UPDATE saga_executions SET lease_until = $2 WHERE owner = $1 AND state IN ({}) \
             RETURNING id",
            unfinished_list()
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(owner)
            .bind(until.as_millis())
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter()
            .map(|r| r.try_get(0).map_err(|e| corrupt("saga execution id", e)))
            .collect()
    }

    async fn release(&self, owner: &str, id: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE saga_executions SET owner = NULL, lease_until = 0 WHERE id = $1 AND owner = $2",
        )
        .bind(id)
        .bind(owner)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }
}
