//! API tokens in every store: SQLite always, PostgreSQL when `IEUM_TEST_POSTGRES_URL` is set,
//! and `MemoryStore`, which keeps the same contract.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use ieum_model::Timestamp;
use ieum_store::testing::TestDb;
use ieum_store::{MemoryStore, SqlStore, Store, StoredToken, migrate_to};

fn t(ms: i64) -> Timestamp {
    Timestamp::from_millis(1_800_000_000_000 + ms)
}

fn token(name: &str, role: &str, service: Option<&str>, hash: &str) -> StoredToken {
    StoredToken {
        name: name.into(),
        role: role.into(),
        service: service.map(Into::into),
        hash: hash.into(),
        created_at: t(0),
        created_by: "admin".into(),
        expires_at: None,
        revoked_at: None,
        revoked_by: None,
    }
}

/// The contract, on any store.
async fn contract(store: &dyn Store) {
    assert!(store.tokens().await.unwrap().is_empty());
    let mut ci = token("ci", "operator", None, &"a".repeat(64));
    ci.expires_at = Some(t(86_400_000));
    assert!(store.create_token(&ci).await.unwrap());
    let orders = token("orders-1", "sidecar", Some("orders"), &"b".repeat(64));
    assert!(store.create_token(&orders).await.unwrap());
    // A taken name is refused and changes nothing.
    let again = token("ci", "admin", None, &"c".repeat(64));
    assert!(!store.create_token(&again).await.unwrap());

    let all = store.tokens().await.unwrap();
    assert_eq!(all, vec![ci.clone(), orders.clone()], "by name, as stored");

    let revoked = store
        .revoke_token("ci", t(10), "root")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(revoked.revoked_at, Some(t(10)));
    assert_eq!(revoked.revoked_by.as_deref(), Some("root"));
    // Revoking again keeps the first revocation.
    let twice = store
        .revoke_token("ci", t(20), "other")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(twice, revoked);
    assert!(
        store
            .revoke_token("nope", t(20), "root")
            .await
            .unwrap()
            .is_none()
    );
    // A revoked token keeps its name.
    assert!(!store.create_token(&again).await.unwrap());
    let all = store.tokens().await.unwrap();
    assert_eq!(all[0], revoked);
    assert_eq!(all[1], orders, "others untouched");
}

#[tokio::test]
async fn memory_store_keeps_the_token_contract() {
    contract(&MemoryStore::new()).await;
}

#[tokio::test]
async fn memory_store_tokens_fail_with_writes() {
    let store = MemoryStore::new();
    store.fail_writes(true);
    assert!(
        store
            .create_token(&token("ci", "reader", None, "h"))
            .await
            .is_err()
    );
    store.fail_writes(false);
    assert!(store.tokens().await.unwrap().is_empty());
}

async fn sql(url: String) {
    let store = SqlStore::open(&url).await.unwrap();
    contract(&store).await;
    store.close().await;
    // Tokens survive a reopen.
    let reopened = SqlStore::open(&url).await.unwrap();
    let all = reopened.tokens().await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].service.as_deref(), Some("orders"));
    assert_eq!(all[0].expires_at, Some(t(86_400_000)));
    reopened.close().await;
}

async fn upgrade(url: String) {
    // A database made before tokens existed gains the table on open, empty.
    migrate_to(&url, 8).await.unwrap();
    let store = SqlStore::open(&url).await.unwrap();
    assert!(store.tokens().await.unwrap().is_empty());
    assert!(
        store
            .create_token(&token("admin", "admin", None, &"d".repeat(64)))
            .await
            .unwrap()
    );
    store.close().await;
}

#[tokio::test]
async fn sqlite_keeps_the_token_contract() {
    let db = TestDb::sqlite();
    sql(db.url.clone()).await;
    db.cleanup().await;
}

#[tokio::test]
async fn sqlite_gains_tokens_on_upgrade() {
    let db = TestDb::sqlite();
    upgrade(db.url.clone()).await;
    db.cleanup().await;
}

#[tokio::test]
async fn postgres_keeps_the_token_contract() {
    match TestDb::postgres().await {
        Some(db) => {
            sql(db.url.clone()).await;
            db.cleanup().await;
        }
        None => eprintln!("IEUM_TEST_POSTGRES_URL not set: PostgreSQL run skipped"),
    }
}

#[tokio::test]
async fn postgres_gains_tokens_on_upgrade() {
    match TestDb::postgres().await {
        Some(db) => {
            upgrade(db.url.clone()).await;
            db.cleanup().await;
        }
        None => eprintln!("IEUM_TEST_POSTGRES_URL not set: PostgreSQL run skipped"),
    }
}
