//! The saga log on every backend: SQLite always, PostgreSQL when `IEUM_TEST_POSTGRES_URL`
//! is set.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use ieum_model::Timestamp;
use ieum_store::saga::{
    Append, Appended, Created, ExecutionQuery, NewExecution, NewRecord, SqlSagaLog,
};
use ieum_store::testing::TestDb;
use ieum_store::{SagaLog, SqlStore};
use serde_json::json;

macro_rules! each_backend {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;
            #[tokio::test]
            async fn sqlite() {
                let db = TestDb::sqlite();
                ($body)(db.url.clone()).await;
                db.cleanup().await;
            }
            #[tokio::test]
            async fn postgres() {
                match TestDb::postgres().await {
                    Some(db) => {
                        ($body)(db.url.clone()).await;
                        db.cleanup().await;
                    }
                    None => eprintln!("IEUM_TEST_POSTGRES_URL not set: PostgreSQL run skipped"),
                }
            }
        }
    };
}

fn t(ms: i64) -> Timestamp {
    Timestamp::from_millis(1_800_000_000_000 + ms)
}

fn execution(id: &str, key: Option<&str>, owner: Option<&str>) -> NewExecution {
    NewExecution {
        id: id.into(),
        saga: "trip".into(),
        revision: 3,
        idempotency_key: key.map(Into::into),
        state: "running".into(),
        input: json!({"flight": {"to": "ICN"}}),
        spec: json!({"steps": []}),
        trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
        at: t(0),
        author: "test".into(),
        owner: owner.map(Into::into),
        lease_until: t(10_000),
    }
}

fn record(ms: i64, kind: &str, step: Option<i64>) -> NewRecord {
    NewRecord {
        at: t(ms),
        kind: kind.into(),
        step,
        data: json!({"kind": kind}),
    }
}

async fn open(url: &str) -> SqlSagaLog {
    // The registry's store migrates first, as `ieum server` does; the log opens after.
    SqlStore::open(url).await.unwrap().close().await;
    SqlSagaLog::open(url).await.unwrap()
}

each_backend!(starts_are_deduplicated_by_key, |url: String| async move {
    let log = open(&url).await;
    let first = [record(0, "execution.started", None)];
    let e = execution("e1", Some("k1"), Some("c1"));
    assert_eq!(log.create(&e, &first).await.unwrap(), Created::New);
    // The same key finds the first execution and stores nothing.
    let again = execution("e2", Some("k1"), Some("c1"));
    assert_eq!(
        log.create(&again, &first).await.unwrap(),
        Created::Existing("e1".into())
    );
    assert!(log.execution("e2").await.unwrap().is_none());
    assert!(log.log("e2", 0).await.unwrap().is_empty());
    // Without a key, or with another saga, nothing collides.
    for id in ["e3", "e4"] {
        let e = execution(id, None, None);
        assert_eq!(log.create(&e, &first).await.unwrap(), Created::New);
    }
    let mut other = execution("e5", Some("k1"), None);
    other.saga = "checkout".into();
    assert_eq!(log.create(&other, &first).await.unwrap(), Created::New);

    let row = log.execution("e1").await.unwrap().unwrap();
    assert_eq!(row.input, json!({"flight": {"to": "ICN"}}));
    assert_eq!(row.revision, 3);
    assert_eq!(row.owner.as_deref(), Some("c1"));
    assert_eq!(row.idempotency_key.as_deref(), Some("k1"));
});

each_backend!(appends_are_fenced_by_the_lease, |url: String| async move {
    let log = open(&url).await;
    for id in ["a", "b"] {
        let e = execution(id, None, Some("c1"));
        log.create(&e, &[record(0, "execution.started", None)])
            .await
            .unwrap();
    }
    // One batch for two executions (group commit); the second append names an owner
    // that does not hold `b`, so only `a`'s records are stored.
    let got = log
        .append(&[
            Append {
                execution: "a".into(),
                records: vec![
                    record(5, "call.started", Some(0)),
                    record(6, "call.finished", Some(0)),
                ],
                state: Some("compensating".into()),
                owner: Some("c1".into()),
            },
            Append {
                execution: "b".into(),
                records: vec![record(5, "call.started", Some(0))],
                state: Some("completed".into()),
                owner: Some("c2".into()),
            },
            // An operator's request is recorded by any server.
            Append {
                execution: "b".into(),
                records: vec![record(7, "operator.cancel", None)],
                state: None,
                owner: None,
            },
        ])
        .await
        .unwrap();
    assert!(matches!(&got[0], Appended::Stored(ids) if ids.len() == 2 && ids[0] < ids[1]));
    assert_eq!(got[1], Appended::Fenced);
    assert!(matches!(&got[2], Appended::Stored(ids) if ids.len() == 1));

    let a = log.execution("a").await.unwrap().unwrap();
    assert_eq!((a.state.as_str(), a.updated_at), ("compensating", t(6)));
    let b = log.execution("b").await.unwrap().unwrap();
    assert_eq!(b.state, "running", "a fenced append changes nothing");
    let kinds: Vec<_> = log
        .log("b", 0)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.kind)
        .collect();
    assert_eq!(kinds, ["execution.started", "operator.cancel"]);
    let a_log = log.log("a", 0).await.unwrap();
    assert_eq!(a_log.len(), 3);
    assert_eq!(a_log[1].step, Some(0));
    assert_eq!(a_log[1].data, json!({"kind": "call.started"}));
    // Reading on from a position returns only what follows it.
    let after = log.log("a", a_log[1].id).await.unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].kind, "call.finished");
});

each_backend!(
    leases_are_claimed_renewed_and_taken_over,
    |url: String| async move {
        let log = open(&url).await;
        log.create(&execution("held", None, Some("c1")), &[])
            .await
            .unwrap();
        log.create(&execution("free", None, None), &[])
            .await
            .unwrap();
        let mut done = execution("done", None, None);
        done.state = "completed".into();
        log.create(&done, &[]).await.unwrap();

        // c2 takes only what nobody holds (c1's lease runs until t(10_000)).
        let mut got = log.claim("c2", t(20_000), t(1_000), false).await.unwrap();
        got.sort();
        assert_eq!(got, ["free"]);
        // c1 renews what it holds.
        assert_eq!(log.renew("c1", t(30_000)).await.unwrap(), ["held"]);
        // Once c1's lease has expired, c2 takes it over and c1's appends are fenced.
        let mut got = log.claim("c2", t(60_000), t(40_000), false).await.unwrap();
        got.sort();
        assert_eq!(got, ["free", "held"]);
        assert!(log.renew("c1", t(70_000)).await.unwrap().is_empty());
        let fenced = log
            .append(&[Append {
                execution: "held".into(),
                records: vec![record(1, "call.started", Some(0))],
                state: None,
                owner: Some("c1".into()),
            }])
            .await
            .unwrap();
        assert_eq!(fenced, [Appended::Fenced]);
        // A restarting single server takes everything unfinished at once.
        let mut got = log.claim("c3", t(90_000), t(41_000), true).await.unwrap();
        got.sort();
        assert_eq!(got, ["free", "held"]);
        log.release("c3", "held").await.unwrap();
        let held = log.execution("held").await.unwrap().unwrap();
        assert_eq!(held.owner, None);
        assert_eq!(log.renew("c3", t(95_000)).await.unwrap(), ["free"]);
    }
);

each_backend!(
    executions_are_listed_and_counted,
    |url: String| async move {
        let log = open(&url).await;
        for (i, (saga, state)) in [
            ("trip", "completed"),
            ("trip", "compensated"),
            ("trip", "completed"),
            ("checkout", "stuck"),
        ]
        .into_iter()
        .enumerate()
        {
            let mut e = execution(&format!("x{i}"), None, None);
            e.saga = saga.into();
            e.state = state.into();
            e.at = t(i as i64);
            log.create(&e, &[]).await.unwrap();
        }
        let all = log.executions(&ExecutionQuery::default()).await.unwrap();
        let ids: Vec<_> = all.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["x3", "x2", "x1", "x0"], "newest first");
        let q = ExecutionQuery {
            saga: Some("trip".into()),
            state: Some("completed".into()),
            limit: 1,
        };
        let ids: Vec<_> = log
            .executions(&q)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(ids, ["x2"]);
        assert_eq!(
            log.counts().await.unwrap(),
            [
                ("checkout".into(), "stuck".into(), 1),
                ("trip".into(), "compensated".into(), 1),
                ("trip".into(), "completed".into(), 2),
            ]
        );
    }
);

/// The registry's store and the saga log write one SQLite file from two pools: writers
/// wait for each other (busy timeout) instead of failing with `database is locked`.
#[tokio::test]
async fn the_registry_and_the_saga_log_write_one_sqlite_file_at_once() {
    use ieum_store::{Change, NewEvent, Store};
    let db = TestDb::sqlite();
    let store = std::sync::Arc::new(SqlStore::open(&db.url).await.unwrap());
    let log = std::sync::Arc::new(SqlSagaLog::open(&db.url).await.unwrap());
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..8 {
        let store = store.clone();
        tasks.spawn(async move {
            for i in 0..50 {
                let event = Change::Event(NewEvent {
                    time: t(i),
                    kind: ieum_model::EventKind::InstanceUp,
                    service: Some(format!("svc-{w}")),
                    instance: None,
                    message: format!("writer {w} event {i}"),
                    author: "test".into(),
                    data: json!(null),
                });
                store.commit(&[event]).await.expect("a registry write");
            }
        });
        let log = log.clone();
        tasks.spawn(async move {
            for i in 0..50 {
                let id = format!("ex-{w}-{i}");
                let key = format!("key-{w}-{i}");
                log.create(
                    &execution(&id, Some(&key), Some("coordinator-1")),
                    &[record(i, "started", None)],
                )
                .await
                .expect("a saga log write");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    db.cleanup().await;
}
