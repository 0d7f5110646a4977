use std::sync::Arc;
use std::sync::Mutex as StdMutex;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tower::{Layer, ServiceExt};
use tower_test::mock;

use super::reporter::{Report, coalescing};
use super::*;
use crate::classify::classify;
use crate::test_util::{get, settle, status};

fn config() -> BreakerConfig {
    BreakerConfig {
        consecutive_failures: 3,
        failure_rate: None,
        slow_calls: None,
        window: WindowKind::Calls(10),
        minimum_calls: 10,
        blocked_base: Duration::from_secs(5),
        blocked_max: Duration::from_secs(60),
        probes: 1,
    }
}

fn recording(config: BreakerConfig) -> (Arc<Breaker>, Arc<StdMutex<Vec<Transition>>>) {
    let log: Arc<StdMutex<Vec<Transition>>> = Arc::default();
    let sink = log.clone();
    let reporter = Reporter::new(move |t| sink.lock().unwrap().push(t));
    (
        Arc::new(Breaker::new(
            BreakerId::service("web", "orders"),
            config,
            Some(reporter),
        )),
        log,
    )
}

fn call(b: &Breaker, outcome: Outcome) {
    let p = b.try_acquire().expect("allowed");
    b.record(p, outcome, Duration::from_millis(1));
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_block_then_probe_then_allow() {
    let (b, log) = recording(config());
    call(&b, Outcome::Failure);
    call(&b, Outcome::Failure);
    call(&b, Outcome::Success);
    call(&b, Outcome::Failure);
    call(&b, Outcome::Failure);
    assert_eq!(b.state(), BreakerState::Allowed, "a success resets the run");
    call(&b, Outcome::Failure);
    assert_eq!(b.state(), BreakerState::Blocked);
    let err = b.try_acquire().unwrap_err();
    assert_eq!(err.state, BreakerState::Blocked);
    assert_eq!(classify(&err.into()).reason, "circuit-blocked");
    {
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(
            (log[0].from, log[0].to),
            (BreakerState::Allowed, BreakerState::Blocked)
        );
        assert!(
            log[0]
                .reason
                .starts_with("3 consecutive failures; blocked for"),
            "{}",
            log[0].reason
        );
    }
    // Penalty is base × [1, 1.5).
    tokio::time::advance(Duration::from_millis(4999)).await;
    assert!(b.try_acquire().is_err());
    tokio::time::advance(Duration::from_millis(2501)).await;
    let probe = b.try_acquire().expect("a probe");
    assert_eq!(b.state(), BreakerState::Probing);
    assert!(b.try_acquire().is_err(), "one probe only");
    b.record(probe, Outcome::Success, Duration::from_millis(1));
    assert_eq!(b.state(), BreakerState::Allowed);
    let states: Vec<_> = log.lock().unwrap().iter().map(|t| t.to.as_str()).collect();
    assert_eq!(states, ["blocked", "probing", "allowed"]);
}

#[tokio::test(start_paused = true)]
async fn failed_probe_blocks_longer() {
    let (b, log) = recording(config());
    for _ in 0..3 {
        call(&b, Outcome::Failure);
    }
    tokio::time::advance(Duration::from_secs(8)).await;
    let probe = b.try_acquire().unwrap();
    b.record(probe, Outcome::Failure, Duration::from_millis(1));
    assert_eq!(b.state(), BreakerState::Blocked);
    // Second penalty: 10 s × [1, 1.5).
    tokio::time::advance(Duration::from_millis(9999)).await;
    assert!(b.try_acquire().is_err());
    tokio::time::advance(Duration::from_secs(6)).await;
    assert!(b.try_acquire().is_ok());
    assert!(log.lock().unwrap()[2].reason.starts_with("a probe failed"));
}

#[tokio::test(start_paused = true)]
async fn penalty_never_exceeds_the_max() {
    let cfg = BreakerConfig {
        blocked_max: Duration::from_secs(8),
        ..config()
    };
    let (b, _) = recording(cfg);
    for n in 1..=10 {
        assert!(b.penalty(n) <= Duration::from_secs(8));
        assert!(b.penalty(n) >= Duration::from_secs(5));
    }
}

#[tokio::test(start_paused = true)]
async fn failure_rate_over_a_count_window() {
    let cfg = BreakerConfig {
        consecutive_failures: 0,
        failure_rate: Some(0.6),
        ..config()
    };
    let (b, log) = recording(cfg);
    // F S F S F S F S F: 5 failures in 9 calls, below the minimum of 10 calls.
    for i in 0..9 {
        call(
            &b,
            if i % 2 == 0 {
                Outcome::Failure
            } else {
                Outcome::Success
            },
        );
    }
    assert_eq!(
        b.state(),
        BreakerState::Allowed,
        "below the minimum number of calls"
    );
    call(&b, Outcome::Success);
    assert_eq!(b.state(), BreakerState::Allowed, "5 of 10: 50 %");
    call(&b, Outcome::Failure);
    assert_eq!(
        b.state(),
        BreakerState::Allowed,
        "the oldest failure left: still 5 of 10"
    );
    call(&b, Outcome::Failure);
    assert_eq!(b.state(), BreakerState::Blocked, "6 of the last 10");
    assert!(
        log.lock().unwrap()[0]
            .reason
            .starts_with("failure rate 60% over the last 10 calls")
    );
}

#[tokio::test(start_paused = true)]
async fn failure_rate_over_a_time_window_forgets_old_calls() {
    let cfg = BreakerConfig {
        consecutive_failures: 0,
        failure_rate: Some(0.5),
        window: WindowKind::Time(Duration::from_secs(10)),
        minimum_calls: 4,
        ..config()
    };
    let (b, _) = recording(cfg);
    for _ in 0..3 {
        call(&b, Outcome::Failure);
    }
    tokio::time::advance(Duration::from_secs(11)).await;
    call(&b, Outcome::Failure);
    assert_eq!(
        b.state(),
        BreakerState::Allowed,
        "old failures left the window"
    );
    for _ in 0..3 {
        call(&b, Outcome::Success);
    }
    call(&b, Outcome::Failure);
    call(&b, Outcome::Failure);
    assert_eq!(
        b.state(),
        BreakerState::Blocked,
        "3 of 6 recent calls failed"
    );
}

#[tokio::test(start_paused = true)]
async fn slow_calls_block() {
    let cfg = BreakerConfig {
        consecutive_failures: 0,
        failure_rate: Some(1.0),
        slow_calls: Some((0.8, Duration::from_secs(1))),
        minimum_calls: 5,
        ..config()
    };
    let (b, log) = recording(cfg);
    for i in 0..5 {
        let p = b.try_acquire().unwrap();
        let took = if i == 0 {
            Duration::from_millis(10)
        } else {
            Duration::from_secs(2)
        };
        b.record(p, Outcome::Success, took);
    }
    assert_eq!(b.state(), BreakerState::Blocked);
    assert!(
        log.lock().unwrap()[0].reason.contains("slower than 1s"),
        "{}",
        log.lock().unwrap()[0].reason
    );
}

#[tokio::test(start_paused = true)]
async fn cancelled_probe_frees_its_slot() {
    let (b, _) = recording(config());
    for _ in 0..3 {
        call(&b, Outcome::Failure);
    }
    tokio::time::advance(Duration::from_secs(8)).await;
    let probe = b.try_acquire().unwrap();
    assert!(b.try_acquire().is_err());
    b.record(probe, Outcome::Cancelled, Duration::ZERO);
    assert!(b.try_acquire().is_ok());
}

#[test]
fn probing_admits_exactly_n_under_contention() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let cfg = BreakerConfig {
            probes: 3,
            blocked_base: Duration::from_millis(1),
            blocked_max: Duration::from_millis(1),
            ..config()
        };
        let (b, _) = recording(cfg);
        for _ in 0..3 {
            call(&b, Outcome::Failure);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let barrier = Arc::new(tokio::sync::Barrier::new(16));
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (b, barrier) = (b.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    b.try_acquire().is_ok()
                })
            })
            .collect();
        let mut admitted = 0;
        for t in tasks {
            admitted += usize::from(t.await.unwrap());
        }
        assert_eq!(admitted, 3);
    });
}

#[tokio::test(start_paused = true)]
async fn layer_blocks_without_calling_upstream_and_probes_exactly_n() {
    let cfg = BreakerConfig {
        probes: 2,
        ..config()
    };
    let (b, _) = recording(cfg);
    let (mock, mut handle) = mock::pair::<Request<()>, Response<()>>();
    let svc = CircuitBreakerLayer::new(b.clone()).layer(mock);
    for _ in 0..3 {
        let call = tokio::spawn(svc.clone().oneshot(get()));
        let (_, send) = handle.next_request().await.unwrap();
        send.send_response(status(502));
        assert_eq!(
            call.await.unwrap().unwrap().status(),
            StatusCode::BAD_GATEWAY
        );
    }
    assert_eq!(b.state(), BreakerState::Blocked);
    let err = svc.clone().oneshot(get()).await.unwrap_err();
    assert!(err.is::<Blocked>());
    tokio::time::advance(Duration::from_secs(8)).await;
    // Ten callers at once while probing: exactly two reach upstream.
    let calls: Vec<_> = (0..10)
        .map(|_| tokio::spawn(svc.clone().oneshot(get())))
        .collect();
    settle().await;
    let mut probes = Vec::new();
    while let Some(Some(r)) = futures_util::FutureExt::now_or_never(handle.next_request()) {
        probes.push(r);
    }
    assert_eq!(probes.len(), 2);
    for (_, send) in probes {
        send.send_response(status(200));
    }
    let mut refused = 0;
    for c in calls {
        if c.await.unwrap().is_err() {
            refused += 1;
        }
    }
    assert_eq!(refused, 8);
    assert_eq!(b.state(), BreakerState::Allowed);
}

#[tokio::test(start_paused = true)]
async fn coalescing_reporter_folds_a_burst_per_destination() {
    let reports: Arc<StdMutex<Vec<Report>>> = Arc::default();
    let sink = reports.clone();
    let (reporter, task) = coalescing(Duration::from_secs(1), move |r| {
        sink.lock().unwrap().push(r)
    });
    let transition = |dest: &str, to: BreakerState| Transition {
        id: BreakerId {
            caller: "web".into(),
            destination: dest.into(),
            endpoint: Some("10.0.0.1:80".into()),
        },
        from: BreakerState::Allowed,
        to,
        reason: "test".into(),
        at: Instant::now(),
    };
    for i in 0..100 {
        reporter.report(transition(
            "orders",
            if i % 2 == 0 {
                BreakerState::Blocked
            } else {
                BreakerState::Allowed
            },
        ));
    }
    reporter.report(transition("stock", BreakerState::Blocked));
    settle().await;
    {
        let r = reports.lock().unwrap();
        assert_eq!(r.len(), 2, "first transition of each destination at once");
        assert_eq!(r[0].coalesced, 0);
    }
    tokio::time::advance(Duration::from_millis(1001)).await;
    settle().await;
    {
        let r = reports.lock().unwrap();
        assert_eq!(r.len(), 3, "one summary for orders, nothing more for stock");
        assert_eq!(r[2].coalesced, 99);
        assert_eq!(&*r[2].transition.id.destination, "orders");
        assert_eq!(
            r[2].transition.to,
            BreakerState::Allowed,
            "the latest state"
        );
    }
    // After the window a new transition is reported at once again.
    reporter.report(transition("orders", BreakerState::Blocked));
    settle().await;
    assert_eq!(reports.lock().unwrap().len(), 4);
    drop(reporter);
    task.await.unwrap();
}
