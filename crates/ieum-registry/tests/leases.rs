//! Lease expiry, recovery, removal, drains, protection and blocking queries, with paused
//! time over the in-memory store.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration as StdDuration;

use ieum_model::{Duration, EventKind, InstanceRegistration, InstanceState, Name, Timestamp};
use ieum_registry::{InstanceFilter, Options, Registry, RegistryError, TokioClock};
use ieum_store::{EventQuery, MemoryStore, Order, Store};
use tokio::time::sleep;

const T0: i64 = 1_800_000_000_000;

async fn start(store: Arc<MemoryStore>, options: Options) -> Registry {
    let clock = Arc::new(TokioClock::starting_at(Timestamp::from_millis(T0)));
    Registry::start(store, clock, options).await.unwrap()
}

fn name(s: &str) -> Name {
    Name::parse(s).unwrap()
}

fn reg(id: &str, ttl_secs: u64) -> InstanceRegistration {
    let mut r = InstanceRegistration::new("10.0.0.1", 8080);
    r.id = Some(id.into());
    r.ttl = Duration::from_secs(ttl_secs);
    r.deregister_after = Duration::from_secs(60);
    r
}

fn state(r: &Registry, service: &str, id: &str) -> Option<InstanceState> {
    r.service(service)?
        .instances
        .into_iter()
        .find(|i| i.id == id)
        .map(|i| i.state)
}

/// Events of a kind, oldest first, once the writer has stored them.
async fn events(store: &MemoryStore, kind: EventKind) -> Vec<ieum_model::Event> {
    sleep(StdDuration::from_millis(1)).await;
    store
        .events(&EventQuery {
            kinds: vec![kind],
            order: Order::OldestFirst,
            ..Default::default()
        })
        .await
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_missed_lease_marks_the_instance_down_within_a_second() {
    let store = Arc::new(MemoryStore::new());
    let r = start(store.clone(), Options::default()).await;
    let out = r
        .register(&name("orders"), reg("a", 5), "local")
        .await
        .unwrap();
    assert!(out.created);
    assert_eq!(out.ttl, Duration::from_secs(5));
    assert_eq!(state(&r, "orders", "a"), Some(InstanceState::Up));

    sleep(StdDuration::from_millis(4_900)).await;
    assert_eq!(
        state(&r, "orders", "a"),
        Some(InstanceState::Up),
        "still inside the lease"
    );

    sleep(StdDuration::from_millis(1_000)).await;
    assert_eq!(
        state(&r, "orders", "a"),
        Some(InstanceState::Down),
        "lease ran out 0.9s ago"
    );
    let down = events(&store, EventKind::InstanceDown).await;
    assert_eq!(down.len(), 1);
    assert_eq!(down[0].message, "missed heartbeats for 5s");
    let late = down[0].time.since(Timestamp::from_millis(T0 + 5_000));
    assert!(
        late <= Duration::from_secs(1),
        "down {late} after the lease ran out"
    );
    r.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn heartbeats_keep_it_up_and_bring_it_back() {
    let store = Arc::new(MemoryStore::new());
    let r = start(store.clone(), Options::default()).await;
    r.register(&name("orders"), reg("a", 5), "local")
        .await
        .unwrap();
    for _ in 0..15 {
        sleep(StdDuration::from_secs(4)).await;
        r.heartbeat("orders", "a").await.unwrap();
    }
    assert_eq!(state(&r, "orders", "a"), Some(InstanceState::Up));
    assert!(events(&store, EventKind::InstanceDown).await.is_empty());
    let up_since = r.service("orders").unwrap().instances[0].up_since.unwrap();
    assert_eq!(
        up_since,
        Timestamp::from_millis(T0),
        "uptime counts from registration"
    );

    sleep(StdDuration::from_secs(7)).await;
    assert_eq!(state(&r, "orders", "a"), Some(InstanceState::Down));
    r.heartbeat("orders", "a").await.unwrap();
    let inst = r.service("orders").unwrap().instances.remove(0);
    assert_eq!(inst.state, InstanceState::Up);
    assert_eq!(inst.state_reason, "heartbeats resumed");
    let restarted = inst
        .up_since
        .unwrap()
        .since(Timestamp::from_millis(T0 + 67_000));
    assert!(
        restarted < Duration::from_millis(10),
        "uptime restarts at the recovery, not {restarted}"
    );
    assert_eq!(events(&store, EventKind::InstanceUp).await.len(), 1);

    // And the re-armed lease still expires.
    sleep(StdDuration::from_secs(6)).await;
    assert_eq!(state(&r, "orders", "a"), Some(InstanceState::Down));
    r.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn unknown_instances_get_not_found_so_clients_register_again() {
    let r = start(Arc::new(MemoryStore::new()), Options::default()).await;
    let err = r.heartbeat("orders", "nope").await.unwrap_err();
    assert!(matches!(err, RegistryError::NotFound(_)));
    assert!(err.to_string().contains("register it again"), "{err}");
    r.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn instances_down_past_deregister_after_are_removed() {
    let store = Arc::new(MemoryStore::new());
    let r = start(store.clone(), Options::default()).await;
    r.register(&name("orders"), reg("a", 5), "local")
        .await
        .unwrap();
    sleep(StdDuration::from_secs(6)).await;
    assert_eq!(state(&r, "orders", "a"), Some(InstanceState::Down));
    sleep(StdDuration::from_secs(55)).await;
    assert_eq!(
        state(&r, "orders", "a"),
        Some(InstanceState::Down),
        "60s not over yet"
    );
    sleep(StdDuration::from_secs(6)).await;
    assert_eq!(state(&r, "orders", "a"), None);
    let expired = events(&store, EventKind::InstanceExpired).await;
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].instance.as_deref(), Some("a"));
    assert!(
        store.instances().await.unwrap().is_empty(),
        "removal is durable"
    );
    assert!(matches!(
        r.heartbeat("orders", "a").await,
        Err(RegistryError::NotFound(_))
    ));
    r.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn re_registering_is_idempotent_and_changes_are_events() {
    let store = Arc::new(MemoryStore::new());
    let r = start(store.clone(), Options::default()).await;
    let first = r
        .register(&name("orders"), reg("a", 5), "local")
        .await
        .unwrap();
    let again = r
        .register(&name("orders"), reg("a", 5), "local")
        .await
        .unwrap();
    assert!(first.created && !again.created);
    assert_eq!(r.service("orders").unwrap().instances.len(), 1);
    assert_eq!(events(&store, EventKind::InstanceRegistered).await.len(), 1);
    assert!(events(&store, EventKind::InstanceUpdated).await.is_empty());

    let mut moved = reg("a", 5);
    moved.port = 9090;
    r.register(&name("orders"), moved, "local").await.unwrap();
    assert_eq!(r.service("orders").unwrap().instances[0].port, 9090);
    let updated = events(&store, EventKind::InstanceUpdated).await;
    assert_eq!(updated.len(), 1);
    assert_eq!(updated[0].data["before"]["port"], 8080);
    assert_eq!(updated[0].data["after"]["port"], 9090);

    // A generated id is returned when the registration has none.
    let generated = r
        .register(
            &name("orders"),
            InstanceRegistration::new("10.0.0.2", 80),
            "local",
        )
        .await
        .unwrap();
    assert_eq!(generated.id.len(), 12);
    assert_eq!(generated.ttl, Duration::from_secs(15));
    r.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn registering_under_an_unknown_service_creates_it() {
    let store = Arc::new(MemoryStore::new());
    let r = start(store.clone(), Options::default()).await;
    r.register(&name("stock"), reg("a", 5), "alice")
        .await
        .unwrap();
    let created = events(&store, EventKind::ServiceCreated).await;
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].author, "alice");
    assert_eq!(
        store
            .resource("Service", "stock")
            .await
            .unwrap()
            .unwrap()
            .revision,
        1
    );
    assert_eq!(r.service("stock").unwrap().revision, 1);
    r.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn drains_survive_a_down_and_back() {
    let store = Arc::new(MemoryStore::new());
    let r = start(store.clone(), Options::default()).await;
    r.register(&name("orders"), reg("a", 5), "local")
        .await
        .unwrap();
    let drained = r
        .set_state("orders", "a", InstanceState::Draining, "bob")
        .await
        .unwrap();
    assert_eq!(drained.state, InstanceState::Draining);
    assert_eq!(
        drained.up_since,
        Some(Timestamp::from_millis(T0)),
        "a drain keeps the uptime"
    );
    let ev = events(&store, EventKind::InstanceDraining).await;
    assert_eq!(ev[0].message, "drained by bob");

    sleep(StdDuration::from_secs(6)).await;
    assert_eq!(state(&r, "orders", "a"), Some(InstanceState::Down));
    let err = r
        .set_state("orders", "a", InstanceState::Up, "bob")
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Conflict(_)), "{err}");
    r.heartbeat("orders", "a").await.unwrap();
    assert_eq!(
        state(&r, "orders", "a"),
        Some(InstanceState::Draining),
        "recovers into draining"
    );

    r.set_state("orders", "a", InstanceState::Up, "bob")
        .await
        .unwrap();
    assert_eq!(state(&r, "orders", "a"), Some(InstanceState::Up));
    let err = r
        .set_state("orders", "a", InstanceState::Down, "bob")
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::Invalid(ref e) if e[0].code == "E1214"),
        "{err}"
    );
    r.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn deregistration_removes_and_records_who() {
    let store = Arc::new(MemoryStore::new());
    let r = start(store.clone(), Options::default()).await;
    r.register(&name("orders"), reg("a", 5), "local")
        .await
        .unwrap();
    r.deregister("orders", "a", "carol").await.unwrap();
    assert_eq!(state(&r, "orders", "a"), None);
    let ev = events(&store, EventKind::InstanceDeregistered).await;
    assert_eq!(ev[0].author, "carol");
    assert!(matches!(
        r.deregister("orders", "a", "carol").await,
        Err(RegistryError::NotFound(_))
    ));
    // Its lease timer fires later and must find nothing to do.
    sleep(StdDuration::from_secs(10)).await;
    assert!(events(&store, EventKind::InstanceDown).await.is_empty());
    r.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn mass_failure_keeps_instances_and_recovery_resumes_removal() {
    let store = Arc::new(MemoryStore::new());
    let r = start(store.clone(), Options::default()).await;
    for i in 0..20 {
        r.register(&name("orders"), reg(&format!("i{i}"), 5), "local")
            .await
            .unwrap();
    }
    // Only 5 of 20 keep heartbeating: 75% miss within one window.
    for _ in 0..4 {
        sleep(StdDuration::from_secs(4)).await;
        for i in 0..5 {
            r.heartbeat("orders", &format!("i{i}")).await.unwrap();
        }
    }
    let status = r.status();
    assert!(status.protection.active, "{status:?}");
    assert_eq!(status.instances.down, 15, "down is still recorded");
    let entered = events(&store, EventKind::ProtectionEntered).await;
    assert_eq!(entered.len(), 1);
    assert!(
        entered[0].message.starts_with("15 of 20 instances"),
        "{}",
        entered[0].message
    );

    // Well past deregisterAfter (60s): nothing is removed while protected.
    for _ in 0..30 {
        sleep(StdDuration::from_secs(4)).await;
        for i in 0..5 {
            r.heartbeat("orders", &format!("i{i}")).await.unwrap();
        }
    }
    assert_eq!(r.service("orders").unwrap().instances.len(), 20);
    assert!(events(&store, EventKind::InstanceExpired).await.is_empty());

    // The cut-off ends: heartbeats come back, protection is left.
    for i in 0..20 {
        r.heartbeat("orders", &format!("i{i}")).await.unwrap();
    }
    sleep(StdDuration::from_secs(2)).await;
    assert!(!r.status().protection.active);
    assert_eq!(events(&store, EventKind::ProtectionLeft).await.len(), 1);
    r.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn protection_does_not_arm_for_small_fleets() {
    let store = Arc::new(MemoryStore::new());
    let r = start(store.clone(), Options::default()).await;
    for i in 0..5 {
        r.register(&name("orders"), reg(&format!("i{i}"), 5), "local")
            .await
            .unwrap();
    }
    sleep(StdDuration::from_secs(70)).await;
    assert!(!r.status().protection.active);
    assert!(
        events(&store, EventKind::ProtectionEntered)
            .await
            .is_empty()
    );
    assert_eq!(
        r.service("orders").unwrap().instances.len(),
        0,
        "all five removed plainly"
    );
    assert_eq!(events(&store, EventKind::InstanceExpired).await.len(), 5);
    r.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn restored_leases_get_one_ttl_of_grace() {
    let store = Arc::new(MemoryStore::new());
    let r = start(store.clone(), Options::default()).await;
    r.register(&name("orders"), reg("a", 5), "local")
        .await
        .unwrap();
    r.register(&name("orders"), reg("b", 5), "local")
        .await
        .unwrap();
    r.shutdown().await;

    // The server was away for a minute: far longer than the lease.
    sleep(StdDuration::from_secs(60)).await;
    let r = start(store.clone(), Options::default()).await;
    assert_eq!(
        state(&r, "orders", "a"),
        Some(InstanceState::Up),
        "not down right after a restart"
    );
    let started = events(&store, EventKind::RegistryStarted).await;
    assert_eq!(
        started.last().unwrap().message,
        "started; restored 2 instances of 1 services"
    );

    sleep(StdDuration::from_secs(3)).await;
    r.heartbeat("orders", "a").await.unwrap();
    sleep(StdDuration::from_secs(3)).await;
    assert_eq!(
        state(&r, "orders", "a"),
        Some(InstanceState::Up),
        "heartbeating instance stays up"
    );
    assert_eq!(
        state(&r, "orders", "b"),
        Some(InstanceState::Down),
        "silent one expires after the grace"
    );
    r.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn blocking_queries_wake_on_change_or_time_out() {
    let store = Arc::new(MemoryStore::new());
    let r = start(store.clone(), Options::default()).await;
    r.register(&name("orders"), reg("a", 30), "local")
        .await
        .unwrap();
    let (index, list) = r
        .instances(
            "orders",
            &InstanceFilter::default(),
            None,
            StdDuration::ZERO,
        )
        .await
        .unwrap();
    assert_eq!(list.len(), 1);

    let waiter = {
        let r = r.clone();
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let out = r
                .instances(
                    "orders",
                    &InstanceFilter::default(),
                    Some(index),
                    StdDuration::from_secs(30),
                )
                .await;
            (started.elapsed(), out.unwrap())
        })
    };
    sleep(StdDuration::from_secs(2)).await;
    r.register(&name("orders"), reg("b", 30), "local")
        .await
        .unwrap();
    let (waited, (new_index, list)) = waiter.await.unwrap();
    assert!(
        waited < StdDuration::from_millis(2_100),
        "woke {waited:?} after start"
    );
    assert!(new_index > index);
    assert_eq!(list.len(), 2);

    // Heartbeats are not changes: a watcher times out with the same index.
    let waiter = {
        let r = r.clone();
        tokio::spawn(async move {
            r.instances(
                "orders",
                &InstanceFilter::default(),
                Some(new_index),
                StdDuration::from_secs(10),
            )
            .await
        })
    };
    sleep(StdDuration::from_secs(1)).await;
    r.heartbeat("orders", "a").await.unwrap();
    let (same, _) = waiter.await.unwrap().unwrap();
    assert_eq!(same, new_index);

    // Filters apply to what is returned.
    r.set_state("orders", "b", InstanceState::Draining, "local")
        .await
        .unwrap();
    let filter = InstanceFilter {
        state: Some(InstanceState::Up),
        zone: None,
    };
    let (_, up) = r
        .instances("orders", &filter, None, StdDuration::ZERO)
        .await
        .unwrap();
    assert_eq!(up.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), ["a"]);
    assert!(matches!(
        r.instances("nope", &filter, None, StdDuration::ZERO).await,
        Err(RegistryError::NotFound(_))
    ));
    r.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn events_past_retention_are_pruned() {
    let store = Arc::new(MemoryStore::new());
    let options = Options {
        event_retention: Duration::from_secs(7200),
        ..Options::default()
    };
    let r = start(store.clone(), options.clone()).await;
    r.register(&name("orders"), reg("a", 3600), "local")
        .await
        .unwrap();
    sleep(StdDuration::from_secs(3600)).await;
    r.heartbeat("orders", "a").await.unwrap();
    r.register(&name("orders"), reg("b", 3600), "local")
        .await
        .unwrap();
    let first_hour = |events: &[ieum_model::Event]| {
        events
            .iter()
            .filter(|e| e.time < Timestamp::from_millis(T0 + 3600 * 1000))
            .count()
    };
    assert_eq!(
        first_hour(&store.events(&EventQuery::default()).await.unwrap()),
        3
    );
    // The pruner runs hourly; two hours after the first events they go, the later ones stay.
    sleep(StdDuration::from_secs(2 * 3600 + 60)).await;
    let left = store
        .events(&EventQuery {
            order: Order::OldestFirst,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(first_hour(&left), 0, "{left:#?}");
    assert!(left.iter().any(|e| e.instance.as_deref() == Some("b")));
    r.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_write_is_reported_and_marks_storage_unhealthy() {
    let store = Arc::new(MemoryStore::new());
    let r = start(store.clone(), Options::default()).await;
    store.fail_writes(true);
    let err = r
        .register(&name("orders"), reg("a", 5), "local")
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Storage(_)), "{err}");
    assert!(!r.status().storage_ok);
    store.fail_writes(false);
    // The client retries the same registration: it must now be stored, not "unchanged".
    r.register(&name("orders"), reg("a", 5), "local")
        .await
        .unwrap();
    assert!(r.status().storage_ok);
    let stored: Vec<String> = store
        .instances()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.instance.id)
        .collect();
    assert_eq!(stored, ["a"]);
    r.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn invalid_registrations_change_nothing() {
    let store = Arc::new(MemoryStore::new());
    let r = start(store.clone(), Options::default()).await;
    let mut bad = reg("a", 5);
    bad.port = 0;
    bad.ttl = Duration::from_millis(10);
    let err = r.register(&name("orders"), bad, "local").await.unwrap_err();
    let RegistryError::Invalid(errs) = err else {
        panic!("expected Invalid")
    };
    assert_eq!(
        errs.iter().map(|e| e.code.as_str()).collect::<Vec<_>>(),
        ["E1207", "E1212"]
    );
    assert!(r.service("orders").is_none());
    sleep(StdDuration::from_millis(5)).await;
    assert!(store.resources("Service").await.unwrap().is_empty());
    r.shutdown().await;
}
