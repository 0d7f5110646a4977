//! The coordinator end to end: a real registry server, real participants over HTTP, calls
//! through the embedded sidecar, the log on SQLite (and PostgreSQL when
//! `IEUM_TEST_POSTGRES_URL` is set).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Participant, Reply, Server, Trip, calls, input};
use ieum_saga::Op;
use ieum_store::testing::TestDb;
use serde_json::json;

#[tokio::test]
async fn the_happy_path_runs_every_step_once_with_keys_and_one_trace() {
    let db = TestDb::sqlite();
    let server = Server::start(&db.url).await;
    let trip = Trip::start(&server).await;
    let v = server.run("trip", input()).await;
    assert_eq!(v.state, "completed", "{v:#?}");
    assert_eq!(
        calls(&v),
        ["action:flight", "action:hotel", "action:payment"]
    );
    assert_eq!(trip.flights.effects(), ["/book"]);
    assert_eq!(trip.hotels.effects(), ["/book"]);
    assert_eq!(trip.payments.effects(), ["/charge"]);
    // Templates: the input's parts, and an earlier step's answer.
    let output = v.output.clone().unwrap();
    assert_eq!(output["flight"]["input"], json!({"to": "ICN"}));
    assert_eq!(
        output["hotel"]["input"],
        json!({"guest": "kim", "flight": output["flight"]["id"]})
    );
    assert_eq!(output["payment"]["input"], json!({"amount": 120}));
    // Every call carries the step's idempotency key and the execution's trace.
    let seen = trip.hotels.seen();
    assert_eq!(seen[0].key, format!("{}:hotel:action", v.id));
    for p in [&trip.flights, &trip.hotels, &trip.payments] {
        let tp = p.seen()[0].traceparent.clone().unwrap();
        assert_eq!(tp.split('-').nth(1).unwrap(), v.trace_id, "{tp}");
    }
    db.cleanup().await;
}

#[tokio::test]
async fn a_failure_at_each_step_compensates_exactly_the_completed_steps_in_reverse() {
    let db = TestDb::sqlite();
    let server = Server::start(&db.url).await;
    let trip = Trip::start(&server).await;
    let expected = [
        (&trip.flights, "/book", vec!["action:flight"]),
        (
            &trip.hotels,
            "/book",
            vec!["action:flight", "action:hotel", "compensation:flight"],
        ),
        (
            &trip.payments,
            "/charge",
            vec![
                "action:flight",
                "action:hotel",
                "action:payment",
                "compensation:hotel",
                "compensation:flight",
            ],
        ),
    ];
    for (failing, path, want) in expected {
        let path = path.to_owned();
        // A business failure: the service says no, so nothing happened there.
        failing.rule(move |p, _| {
            (p == path).then(|| Reply::Status(409, json!({"error": "no seats"})))
        });
        let v = server.run("trip", input()).await;
        failing.rule(|_, _| None);
        assert_eq!(v.state, "compensated", "{v:#?}");
        assert_eq!(calls(&v), want);
        // 409 is not retried.
        let failed = v
            .steps
            .iter()
            .find(|s| s.attempts > 0 && format!("{:?}", s.status) == "Failed")
            .unwrap();
        assert_eq!(failed.attempts, 1);
    }
    // Compensations reached the services with their keys and the templates' ids.
    let cancels: Vec<_> = trip
        .flights
        .seen()
        .into_iter()
        .filter(|s| s.path.starts_with("/cancel/"))
        .collect();
    assert_eq!(cancels.len(), 2);
    assert!(
        cancels[0].path.starts_with("/cancel/flights-book-"),
        "{cancels:?}"
    );
    assert!(cancels[0].key.ends_with(":flight:compensation"));
    db.cleanup().await;
}

#[tokio::test]
async fn an_action_in_doubt_is_compensated_and_each_attempt_is_bounded() {
    let db = TestDb::sqlite();
    let server = Server::start(&db.url).await;
    let trip = Trip::start(&server).await;
    // The hotel books at once but answers after the 300 ms attempt timeout, every time.
    trip.hotels
        .rule(|p, _| (p == "/book").then(|| Reply::Slow(Duration::from_secs(1))));
    let v = server.run("trip", input()).await;
    assert_eq!(v.state, "compensated", "{v:#?}");
    assert_eq!(
        calls(&v),
        [
            "action:flight",
            "action:hotel",
            "action:hotel",
            "action:hotel",
            "compensation:hotel",
            "compensation:flight"
        ]
    );
    // One effect despite three attempts (same key), then undone by key.
    assert_eq!(
        trip.hotels.effects(),
        ["/book", &format!("/cancel/{}:hotel:action", v.id)]
    );
    let durations: Vec<u64> = v
        .log
        .iter()
        .filter(|r| {
            r.kind == "call.finished"
                && r.step.as_deref() == Some("hotel")
                && r.data["phase"] == "action"
        })
        .map(|r| r.data["result"]["durationMs"].as_u64().unwrap())
        .collect();
    assert_eq!(durations.len(), 3);
    for d in durations {
        assert!((290..900).contains(&d), "attempt took {d} ms");
    }
    let hotel = &v.steps[1];
    assert_eq!(format!("{:?}", hotel.status), "InDoubt");
    db.cleanup().await;
}

#[tokio::test]
async fn a_5xx_is_retried_and_a_compensation_that_fails_is_retried_until_it_succeeds() {
    let db = TestDb::sqlite();
    let server = Server::start(&db.url).await;
    let trip = Trip::start(&server).await;
    // The hotel fails once with 503 (retried), the payment is refused, and the first two
    // flight cancellations fail.
    trip.hotels
        .rule(|p, n| (p == "/book" && n == 1).then(|| Reply::Status(503, json!({}))));
    trip.payments
        .rule(|p, _| (p == "/charge").then(|| Reply::Status(402, json!({"error": "declined"}))));
    trip.flights.rule(|p, _| {
        let n = p.starts_with("/cancel/");
        n.then_some(())?;
        None
    });
    let fails = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let f = fails.clone();
    trip.flights.rule(move |p, _| {
        if p.starts_with("/cancel/") && f.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2 {
            Some(Reply::Status(500, json!({"error": "try later"})))
        } else {
            None
        }
    });
    let v = server.run("trip", input()).await;
    assert_eq!(v.state, "compensated", "{v:#?}");
    assert_eq!(v.steps[1].attempts, 2, "the 503 was retried");
    assert_eq!(v.steps[0].compensation_attempts, 3);
    assert_eq!(v.steps[0].compensation, "done");
    assert_eq!(v.steps[1].compensation, "done");
    assert_eq!(
        trip.flights.effects().len(),
        2,
        "booked once, cancelled once"
    );
    db.cleanup().await;
}

#[tokio::test]
async fn a_stuck_compensation_waits_for_operator_retry_skip_or_abort() {
    let db = TestDb::sqlite();
    let server = Server::start(&db.url).await;
    let trip = Trip::start(&server).await;
    trip.payments
        .rule(|p, _| (p == "/charge").then(|| Reply::Status(402, json!({}))));
    let broken = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let b = broken.clone();
    // A 4xx: the mesh's breakers and outlier detection count only 5xx, so the endpoint
    // stays in the balancer while the operator works.
    trip.hotels.rule(move |p, _| {
        (p.starts_with("/cancel/") && b.load(std::sync::atomic::Ordering::SeqCst))
            .then(|| Reply::Status(409, json!({})))
    });
    let c = server.coordinator.clone();

    // retry: three more attempts, then (fixed) success.
    let id = c
        .start_execution("trip", input(), None, "t")
        .await
        .unwrap()
        .id;
    let v = server.until_state(&id, "stuck").await;
    assert_eq!(v.steps[1].compensation_attempts, 3, "stuckAfter: 3");
    assert_eq!(v.steps[1].compensation, "pending");
    // A request that does not apply is refused before it is recorded.
    assert!(matches!(
        c.request(&id, Op::Cancel, "ops").await,
        Err(ieum_saga::Error::Conflict(_))
    ));
    c.request(&id, Op::Retry, "ops").await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let v = c.execution(&id).await.unwrap();
        if v.state == "stuck" && v.steps[1].compensation_attempts == 6 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{v:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    broken.store(false, std::sync::atomic::Ordering::SeqCst);
    c.request(&id, Op::Retry, "ops").await.unwrap();
    let v = server.finish(&id).await;
    assert_eq!(v.state, "compensated");
    assert_eq!(v.steps[1].compensation_attempts, 7);
    let audit: Vec<_> = v
        .log
        .iter()
        .filter(|r| r.kind == "request.applied")
        .map(|r| {
            (
                r.data["op"].as_str().unwrap().to_owned(),
                r.data["author"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        audit,
        [
            ("retry".into(), "ops".into()),
            ("retry".into(), "ops".into())
        ]
    );
    // Each operator retry is a new round of keys: a participant that remembers its
    // answers by key does not answer with the failure it remembers.
    let keys: Vec<_> = trip
        .hotels
        .seen()
        .into_iter()
        .filter(|s| s.path.starts_with("/cancel/"))
        .map(|s| s.key.trim_start_matches(&format!("{id}:")).to_owned())
        .collect();
    assert_eq!(keys[0], "hotel:compensation");
    assert_eq!(keys[3], "hotel:compensation:1");
    assert_eq!(keys[6], "hotel:compensation:2");

    // skip: the stuck compensation is passed over, the next one runs.
    broken.store(true, std::sync::atomic::Ordering::SeqCst);
    let id = c
        .start_execution("trip", input(), None, "t")
        .await
        .unwrap()
        .id;
    server.until_state(&id, "stuck").await;
    c.request(&id, Op::Skip, "ops").await.unwrap();
    let v = server.finish(&id).await;
    assert_eq!(v.state, "compensated");
    assert_eq!(v.steps[1].compensation, "skipped");
    assert_eq!(v.steps[0].compensation, "done");

    // abort: nothing more runs.
    let id = c
        .start_execution("trip", input(), None, "t")
        .await
        .unwrap()
        .id;
    server.until_state(&id, "stuck").await;
    c.request(&id, Op::Abort, "ops").await.unwrap();
    let v = server.finish(&id).await;
    assert_eq!(v.state, "aborted");
    assert_eq!(v.steps[0].compensation, "abandoned");
    assert!(!calls(&v).contains(&"compensation:flight".to_owned()));
    db.cleanup().await;
}

#[tokio::test]
async fn a_paused_step_waits_for_an_operator() {
    let db = TestDb::sqlite();
    let server = Server::start(&db.url).await;
    let p = Participant::start("ledger").await;
    server.register("ledger", p.addr).await;
    server
        .apply(
            r#"
apiVersion: ieum.dev/v1
kind: Saga
metadata: {name: ledger}
spec:
  steps:
  - {name: reserve, action: {service: ledger, method: POST, path: /reserve}, compensation: {service: ledger, method: POST, path: /release}}
  - {name: post, action: {service: ledger, method: POST, path: /post}, onFailure: pause}
"#,
        )
        .await;
    p.rule(|path, n| (path == "/post" && n == 1).then(|| Reply::Status(422, json!({}))));
    let c = &server.coordinator;
    let id = c
        .start_execution("ledger", json!({}), None, "t")
        .await
        .unwrap()
        .id;
    server.until_state(&id, "paused").await;
    c.request(&id, Op::Retry, "ops").await.unwrap();
    let v = server.finish(&id).await;
    assert_eq!(v.state, "completed");
    // The retry is a new round: a de-duplicating service does not answer from the failure.
    let keys: Vec<_> = p
        .seen()
        .into_iter()
        .filter(|s| s.path == "/post")
        .map(|s| s.key)
        .collect();
    assert_eq!(
        keys,
        [format!("{id}:post:action"), format!("{id}:post:action:1")]
    );

    // Cancel while paused compensates.
    p.rule(|path, _| (path == "/post").then(|| Reply::Status(422, json!({}))));
    let id = c
        .start_execution("ledger", json!({}), None, "t")
        .await
        .unwrap()
        .id;
    server.until_state(&id, "paused").await;
    c.request(&id, Op::Cancel, "ops").await.unwrap();
    let v = server.finish(&id).await;
    assert_eq!(v.state, "compensated");
    assert_eq!(
        calls(&v),
        ["action:reserve", "action:post", "compensation:reserve"]
    );
    db.cleanup().await;
}

#[tokio::test]
async fn a_start_with_the_same_key_is_the_same_execution() {
    let db = TestDb::sqlite();
    let server = Server::start(&db.url).await;
    let trip = Trip::start(&server).await;
    let c = &server.coordinator;
    let a = c
        .start_execution("trip", input(), Some("order-42".into()), "t")
        .await
        .unwrap();
    let b = c
        .start_execution("trip", input(), Some("order-42".into()), "t")
        .await
        .unwrap();
    assert!(!a.existing && b.existing);
    assert_eq!(a.id, b.id);
    server.finish(&a.id).await;
    let again = c
        .start_execution("trip", input(), Some("order-42".into()), "t")
        .await
        .unwrap();
    assert_eq!(again.id, a.id, "also after it finished");
    assert_eq!(trip.flights.effects(), ["/book"]);
    let missing = c.start_execution("nope", input(), None, "t").await;
    assert!(matches!(missing, Err(ieum_saga::Error::NotFound(_))));
    db.cleanup().await;
}

async fn restart_mid_saga(url: &str) {
    let server = Server::start_with(url, |o| o.lease = Duration::from_millis(600)).await;
    let trip = Trip::start(&server).await;
    // The payment books at once and answers after 1.5 s: the coordinator dies meanwhile.
    trip.payments
        .rule(|p, _| (p == "/charge").then(|| Reply::Slow(Duration::from_millis(1500))));
    let id = server
        .coordinator
        .start_execution("trip", input(), None, "t")
        .await
        .unwrap()
        .id;
    for _ in 0..100 {
        if trip.payments.count("/charge") > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(trip.payments.count("/charge"), 1);
    server.crash().await;

    // A new server over the same database resumes the execution: the call that was in
    // flight is sent again with the same key, and the participant applies it once.
    let server = Server::start_with(url, |o| {
        o.lease = Duration::from_millis(600);
        o.claim_every = Duration::from_millis(100);
    })
    .await;
    server.register("flights", trip.flights.addr).await;
    server.register("hotels", trip.hotels.addr).await;
    server.register("payments", trip.payments.addr).await;
    let v = server.finish(&id).await;
    assert_eq!(v.state, "completed", "{v:#?}");
    assert_eq!(
        calls(&v),
        [
            "action:flight",
            "action:hotel",
            "action:payment",
            "action:payment"
        ]
    );
    let resumed = v.log.iter().rfind(|r| r.kind == "call.started").unwrap();
    assert_eq!(resumed.data["resumed"], true);
    assert_eq!(trip.payments.count("/charge"), 2);
    assert_eq!(trip.payments.effects(), ["/charge"], "applied once");
    assert_eq!(trip.flights.effects(), ["/book"]);
    server.crash().await;
}

#[tokio::test]
async fn a_restarted_coordinator_resumes_mid_saga_on_sqlite() {
    let db = TestDb::sqlite();
    restart_mid_saga(&db.url).await;
    db.cleanup().await;
}

#[tokio::test]
async fn a_restarted_coordinator_resumes_mid_saga_on_postgres() {
    // On PostgreSQL a new coordinator waits for the dead one's lease to expire.
    match TestDb::postgres().await {
        Some(db) => {
            restart_mid_saga(&db.url).await;
            db.cleanup().await;
        }
        None => eprintln!("IEUM_TEST_POSTGRES_URL not set: PostgreSQL run skipped"),
    }
}

#[tokio::test]
async fn a_second_replica_takes_over_when_the_first_dies_on_postgres() {
    let Some(db) = TestDb::postgres().await else {
        eprintln!("IEUM_TEST_POSTGRES_URL not set: PostgreSQL run skipped");
        return;
    };
    let short = |o: &mut ieum_saga::Options| {
        o.lease = Duration::from_millis(800);
        o.claim_every = Duration::from_millis(100);
    };
    let a = Server::start_with(&db.url, short).await;
    let b = Server::start_with(&db.url, short).await;
    let trip = Trip::start(&a).await;
    for (name, p) in [
        ("flights", &trip.flights),
        ("hotels", &trip.hotels),
        ("payments", &trip.payments),
    ] {
        b.register(name, p.addr).await;
    }
    trip.payments
        .rule(|p, _| (p == "/charge").then(|| Reply::Slow(Duration::from_millis(1500))));
    let id = a
        .coordinator
        .start_execution("trip", input(), None, "t")
        .await
        .unwrap()
        .id;
    // While A is alive and renewing, B leaves the execution alone.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let row = a.log.execution(&id).await.unwrap().unwrap();
    assert_eq!(row.owner.as_deref(), Some(a.coordinator.owner()));
    for _ in 0..100 {
        if trip.payments.count("/charge") > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.crash().await;
    let v = b.finish(&id).await;
    assert_eq!(v.state, "completed", "{v:#?}");
    assert_eq!(v.owner, None, "released when finished");
    let owners: Vec<_> = v
        .log
        .iter()
        .filter(|r| r.kind == "call.started")
        .map(|r| r.data["resumed"].as_bool().unwrap())
        .collect();
    assert_eq!(owners, [false, false, false, true]);
    assert_eq!(trip.payments.effects(), ["/charge"], "applied once");
    b.crash().await;
    db.cleanup().await;
}
