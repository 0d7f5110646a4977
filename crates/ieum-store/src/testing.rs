//! Test support (feature `testing`): a fresh, empty database per test.
//!
//! PostgreSQL tests read `IEUM_TEST_POSTGRES_URL`; when it is unset they are skipped (so
//! `cargo test` passes with no services running), and `.ci/run` sets it and fails loudly
//! if the server is unreachable.

use sqlx::Connection;

/// The environment variable naming the PostgreSQL server for tests.
pub const POSTGRES_ENV: &str = "IEUM_TEST_POSTGRES_URL";

/// A fresh database: a SQLite file in a temporary folder, or a new PostgreSQL schema.
/// Call [`TestDb::cleanup`] at the end to drop a PostgreSQL schema.
#[derive(Debug)]
pub struct TestDb {
    /// Store URL to open.
    pub url: String,
    dir: Option<tempfile::TempDir>,
    schema: Option<(String, String)>,
}

impl TestDb {
    /// A SQLite database in a new temporary folder.
    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let url = format!("sqlite://{}/ieum.db", dir.path().display());
        TestDb {
            url,
            dir: Some(dir),
            schema: None,
        }
    }

    /// A new schema on the PostgreSQL server in `IEUM_TEST_POSTGRES_URL`, or `None` when the
    /// variable is unset. Panics when it is set but the server is unreachable.
    pub async fn postgres() -> Option<TestDb> {
        let base = std::env::var(POSTGRES_ENV).ok()?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let schema = format!("t_{}_{nanos}_{}", std::process::id(), rand::random::<u32>());
        let mut conn = sqlx::PgConnection::connect(&base)
            .await
            .unwrap_or_else(|e| panic!("{POSTGRES_ENV}={base} is set but unreachable: {e}"));
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&mut conn)
            .await
            .expect("create a test schema");
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
        Some(TestDb {
            url,
            dir: None,
            schema: Some((base, schema)),
        })
    }

    /// The folder of a SQLite database.
    pub fn dir(&self) -> Option<&std::path::Path> {
        self.dir.as_ref().map(tempfile::TempDir::path)
    }

    /// Drops the PostgreSQL schema (a SQLite folder goes with the value).
    pub async fn cleanup(self) {
        if let Some((base, schema)) = &self.schema {
            let mut conn = sqlx::PgConnection::connect(base)
                .await
                .expect("reconnect to drop the schema");
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                .execute(&mut conn)
                .await
                .expect("drop the test schema");
        }
    }
}
