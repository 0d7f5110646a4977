//! One test suite, run against every backend: SQLite always, PostgreSQL when
//! `IEUM_TEST_POSTGRES_URL` is set (`.ci/run` sets it and fails if the server is down).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use ieum_model::{EventKind, Instance, InstanceState, Protocol, Timestamp};
use ieum_store::testing::TestDb;
use ieum_store::{Change, EventQuery, NewEvent, Order, SqlStore, Store, StoreError, migrate_to};
use sqlx::Connection;

/// Runs the body once per available backend, with the URL of a fresh database; the
/// database (and its temporary folder) lives until the body has finished.
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

fn instance(id: &str, state: InstanceState) -> Instance {
    Instance {
        id: id.into(),
        address: "10.0.0.1".into(),
        port: 8080,
        protocol: Protocol::Http,
        zone: Some("z1".into()),
        region: None,
        cluster: None,
        platform: Some("vm".into()),
        version: Some("v1".into()),
        metadata: BTreeMap::from([("k".into(), "v".into())]),
        weight: 1,
        state,
        drained: false,
        state_reason: "registered".into(),
        state_since: t(0),
        registered_at: t(0),
        up_since: Some(t(0)),
        last_heartbeat: None,
        ttl: ieum_model::Duration::from_secs(15),
        deregister_after: ieum_model::Duration::from_secs(600),
        check: None,
        last_check: None,
    }
}

fn event(ms: i64, kind: EventKind, service: &str, instance: Option<&str>) -> Change {
    Change::Event(NewEvent {
        time: t(ms),
        kind,
        service: Some(service.into()),
        instance: instance.map(Into::into),
        message: format!("{kind} at {ms}"),
        author: "test".into(),
        data: serde_json::json!({"ms": ms}),
    })
}

each_backend!(
    instances_round_trip_and_survive_reopen,
    |url: String| async move {
        let store = SqlStore::open(&url).await.unwrap();
        let committed = store
            .commit(&[
                Change::PutInstance {
                    service: "orders".into(),
                    instance: Box::new(instance("a", InstanceState::Up)),
                },
                Change::PutInstance {
                    service: "orders".into(),
                    instance: Box::new(instance("b", InstanceState::Up)),
                },
                event(0, EventKind::InstanceRegistered, "orders", Some("a")),
            ])
            .await
            .unwrap();
        assert_eq!(committed.events.len(), 1);
        assert!(committed.events[0].id > 0);

        store
            .commit(&[
                Change::PutInstance {
                    service: "orders".into(),
                    instance: Box::new(instance("a", InstanceState::Down)),
                },
                Change::DeleteInstance {
                    service: "orders".into(),
                    id: "b".into(),
                },
            ])
            .await
            .unwrap();
        store.close().await;

        let reopened = SqlStore::open(&url).await.unwrap();
        let all = reopened.instances().await.unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].service, "orders");
        assert_eq!(all[0].instance.state, InstanceState::Down);
        assert_eq!(all[0].instance, instance("a", InstanceState::Down));
    }
);

each_backend!(a_failing_batch_writes_nothing, |url: String| async move {
    let store = SqlStore::open(&url).await.unwrap();
    // Break the revisions table so the resource write in the middle of the batch fails.
    let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
    sqlx::query("DROP TABLE revisions")
        .execute(&mut conn)
        .await
        .unwrap();
    let err = store
        .commit(&[
            Change::PutInstance {
                service: "orders".into(),
                instance: Box::new(instance("a", InstanceState::Up)),
            },
            event(0, EventKind::InstanceRegistered, "orders", Some("a")),
            Change::PutResource {
                kind: "Service".into(),
                name: "orders".into(),
                labels: BTreeMap::new(),
                spec: serde_json::json!({}),
                author: "test".into(),
                time: t(0),
            },
        ])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert!(
        store.instances().await.unwrap().is_empty(),
        "instance write was not rolled back"
    );
    assert!(
        store
            .events(&EventQuery::default())
            .await
            .unwrap()
            .is_empty(),
        "event was not rolled back"
    );
    assert!(store.resource("Service", "orders").await.unwrap().is_none());
});

each_backend!(resources_keep_every_revision, |url: String| async move {
    let store = SqlStore::open(&url).await.unwrap();
    let put = |desc: &str, ms| Change::PutResource {
        kind: "Service".into(),
        name: "orders".into(),
        labels: BTreeMap::from([("team".into(), "checkout".into())]),
        spec: serde_json::json!({"description": desc}),
        author: format!("author-{ms}"),
        time: t(ms),
    };
    let c1 = store.commit(&[put("first", 1)]).await.unwrap();
    let c2 = store.commit(&[put("second", 2)]).await.unwrap();
    assert_eq!(c1.revisions, [("Service".into(), "orders".into(), 1)]);
    assert_eq!(c2.revisions, [("Service".into(), "orders".into(), 2)]);

    let current = store.resource("Service", "orders").await.unwrap().unwrap();
    assert_eq!(current.revision, 2);
    assert_eq!(current.spec["description"], "second");
    assert_eq!(current.created_at, t(1));
    assert_eq!(current.updated_at, t(2));
    assert_eq!(current.author, "author-2");
    assert_eq!(current.labels["team"], "checkout");

    store
        .commit(&[Change::DeleteResource {
            kind: "Service".into(),
            name: "orders".into(),
            author: "x".into(),
            time: t(3),
        }])
        .await
        .unwrap();
    assert!(store.resource("Service", "orders").await.unwrap().is_none());
    assert!(store.resources("Service").await.unwrap().is_empty());
    let history = store.history("Service", "orders").await.unwrap();
    let revs: Vec<_> = history
        .iter()
        .map(|r| (r.revision, r.spec.is_some()))
        .collect();
    assert_eq!(revs, [(1, true), (2, true), (3, false)]);
    assert_eq!(history[0].spec.as_ref().unwrap()["description"], "first");

    // Re-creating continues the numbering, so revisions never repeat.
    let c4 = store.commit(&[put("again", 4)]).await.unwrap();
    assert_eq!(c4.revisions[0].2, 4);
    assert_eq!(
        store
            .resource("Service", "orders")
            .await
            .unwrap()
            .unwrap()
            .created_at,
        t(4)
    );
});

each_backend!(
    event_queries_filter_order_and_page,
    |url: String| async move {
        let store = SqlStore::open(&url).await.unwrap();
        let mut batch = Vec::new();
        for i in 0..10 {
            let service = if i % 2 == 0 { "orders" } else { "stock" };
            let kind = if i % 3 == 0 {
                EventKind::InstanceDown
            } else {
                EventKind::InstanceUp
            };
            batch.push(event(i * 1000, kind, service, Some(&format!("i{}", i % 4))));
        }
        let ids: Vec<i64> = store
            .commit(&batch)
            .await
            .unwrap()
            .events
            .iter()
            .map(|e| e.id)
            .collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "ids increase in batch order: {ids:?}"
        );

        let all = store.events(&EventQuery::default()).await.unwrap();
        assert_eq!(all.len(), 10);
        assert_eq!(all[0].time, t(9000), "newest first by default");
        assert_eq!(all[0].data["ms"], 9000);

        let orders = store
            .events(&EventQuery {
                service: Some("orders".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(orders.len(), 5);
        assert!(
            orders
                .iter()
                .all(|e| e.service.as_deref() == Some("orders"))
        );

        let downs = store
            .events(&EventQuery {
                kinds: vec![EventKind::InstanceDown],
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            downs.iter().map(|e| e.time).collect::<Vec<_>>(),
            [t(9000), t(6000), t(3000), t(0)]
        );

        let one_instance = store
            .events(&EventQuery {
                instance: Some("i1".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(one_instance.len(), 3);

        let since = store
            .events(&EventQuery {
                since: Some(t(7000)),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(since.len(), 3);

        let after = store
            .events(&EventQuery {
                after_id: Some(ids[6]),
                order: Order::OldestFirst,
                limit: 2,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            after.iter().map(|e| e.id).collect::<Vec<_>>(),
            [ids[7], ids[8]]
        );

        let mut last = store.last_event_per_service().await.unwrap();
        last.sort_by(|a, b| a.service.cmp(&b.service));
        assert_eq!(
            last.iter()
                .map(|e| (e.service.as_deref(), e.time))
                .collect::<Vec<_>>(),
            [(Some("orders"), t(8000)), (Some("stock"), t(9000))]
        );

        let combined = store
            .events(&EventQuery {
                service: Some("stock".into()),
                kinds: vec![EventKind::InstanceUp, EventKind::InstanceDown],
                since: Some(t(3000)),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            combined.iter().map(|e| e.time).collect::<Vec<_>>(),
            [t(9000), t(7000), t(5000), t(3000)]
        );
    }
);

each_backend!(pruning_removes_only_old_events, |url: String| async move {
    let store = SqlStore::open(&url).await.unwrap();
    let batch: Vec<_> = (0..5)
        .map(|i| event(i * 1000, EventKind::InstanceUp, "orders", None))
        .collect();
    store.commit(&batch).await.unwrap();
    assert_eq!(store.prune_events(t(2000)).await.unwrap(), 2);
    let left = store
        .events(&EventQuery {
            order: Order::OldestFirst,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(left.first().unwrap().time, t(2000));
    assert_eq!(left.len(), 3);
});

each_backend!(
    upgrades_from_every_earlier_schema_version,
    |url: String| async move {
        // Bring a database to each earlier version, write data the way that version did, then
        // open it with this version: the data must still read back.
        migrate_to(&url, 1).await.unwrap();
        let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
        let data = serde_json::to_string(&instance("old", InstanceState::Up)).unwrap();
        sqlx::query("INSERT INTO instances (service, id, state, data, updated_at) VALUES ($1, $2, $3, $4, $5)")
        .bind("orders")
        .bind("old")
        .bind("up")
        .bind(data)
        .bind(0_i64)
        .execute(&mut conn)
        .await
        .unwrap();
        sqlx::query("INSERT INTO events (at, kind, service, instance, message, author, data) VALUES ($1, $2, $3, $4, $5, $6, $7)")
        .bind(t(0).as_millis())
        .bind("instance.registered")
        .bind("orders")
        .bind("old")
        .bind("registered")
        .bind("local")
        .bind(Option::<String>::None)
        .execute(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();

        let store = SqlStore::open(&url).await.unwrap();
        assert_eq!(store.instances().await.unwrap()[0].instance.id, "old");
        let events = store.events(&EventQuery::default()).await.unwrap();
        assert_eq!(events[0].kind, EventKind::InstanceRegistered);
        assert!(events[0].data.is_null());
        // Opening again is a no-op.
        SqlStore::open(&url).await.unwrap();
    }
);

#[tokio::test]
async fn bad_urls_say_what_to_write() {
    let err = SqlStore::open("mysql://localhost/x").await.unwrap_err();
    assert!(
        err.to_string().contains("use sqlite://PATH or postgres://"),
        "{err}"
    );
}
