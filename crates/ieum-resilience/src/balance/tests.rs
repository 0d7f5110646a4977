use std::collections::HashMap;
use std::time::Duration;

use http::{HeaderValue, StatusCode};
use proptest::prelude::*;
use tower::ServiceExt;

use super::*;
use crate::breaker::Outcome;
use crate::test_util::get;

/// An endpoint answering `code` after `latency`, naming itself in `x-ep`.
fn responder(
    id: &'static str,
    latency: Duration,
    code: u16,
) -> impl Service<Request<()>, Response = Response<()>, Error = BoxError, Future: Send>
+ Clone
+ Send
+ Sync {
    tower::service_fn(move |_req: Request<()>| async move {
        tokio::time::sleep(latency).await;
        let mut res = Response::new(());
        *res.status_mut() = StatusCode::from_u16(code).unwrap();
        res.headers_mut()
            .insert("x-ep", HeaderValue::from_static(id));
        Ok::<_, BoxError>(res)
    })
}

async fn send<S>(b: &mut Balancer<S>, req: Request<()>) -> Result<Response<()>, BoxError>
where
    Balancer<S>: Service<Request<()>, Response = Response<()>, Error = BoxError>,
{
    b.ready().await?;
    b.call(req).await
}

async fn tally<S>(b: &mut Balancer<S>, n: usize) -> HashMap<String, usize>
where
    Balancer<S>: Service<Request<()>, Response = Response<()>, Error = BoxError>,
{
    let mut counts = HashMap::new();
    for _ in 0..n {
        let res = send(b, get()).await.unwrap();
        *counts
            .entry(res.headers()["x-ep"].to_str().unwrap().to_owned())
            .or_insert(0) += 1;
    }
    counts
}

fn cfg() -> BalanceConfig {
    BalanceConfig {
        breaker: None,
        ..BalanceConfig::new("web", "orders")
    }
}

#[tokio::test(start_paused = true)]
async fn p2c_ewma_avoids_a_slow_endpoint() {
    let eps = vec![
        Endpoint::new("a", responder("a", Duration::from_millis(5), 200)),
        Endpoint::new("b", responder("b", Duration::from_millis(5), 200)),
        Endpoint::new("slow", responder("slow", Duration::from_millis(300), 200)),
    ];
    let (mut b, _h) = Balancer::new(cfg(), eps);
    let counts = tally(&mut b, 300).await;
    // Uniform would give the slow endpoint ~100.
    assert!(counts.get("slow").copied().unwrap_or(0) < 20, "{counts:?}");
}

#[tokio::test(start_paused = true)]
async fn fast_failures_do_not_attract_traffic() {
    let eps = vec![
        Endpoint::new("a", responder("a", Duration::from_millis(20), 200)),
        Endpoint::new("b", responder("b", Duration::from_millis(20), 200)),
        Endpoint::new("bad", responder("bad", Duration::ZERO, 503)),
    ];
    let (mut b, _h) = Balancer::new(cfg(), eps);
    let counts = tally(&mut b, 300).await;
    // Answering 503 in no time must not make "bad" look like the fastest.
    assert!(counts.get("bad").copied().unwrap_or(0) < 30, "{counts:?}");
}

#[tokio::test(start_paused = true)]
async fn weighted_round_robin_is_exact() {
    let eps = vec![
        Endpoint::new("a", responder("a", Duration::ZERO, 200)).weight(1),
        Endpoint::new("b", responder("b", Duration::ZERO, 200)).weight(2),
        Endpoint::new("c", responder("c", Duration::ZERO, 200)).weight(3),
        Endpoint::new("off", responder("off", Duration::ZERO, 200)).weight(0),
    ];
    let (mut b, _h) = Balancer::new(
        BalanceConfig {
            algorithm: Algorithm::RoundRobin,
            ..cfg()
        },
        eps,
    );
    let counts = tally(&mut b, 600).await;
    assert_eq!(counts.get("a"), Some(&100));
    assert_eq!(counts.get("b"), Some(&200));
    assert_eq!(counts.get("c"), Some(&300));
    assert_eq!(counts.get("off"), None);
}

#[tokio::test(start_paused = true)]
async fn least_request_avoids_busy_endpoints() {
    let eps = vec![
        Endpoint::new("busy", responder("busy", Duration::from_secs(60), 200)),
        Endpoint::new("idle", responder("idle", Duration::from_millis(1), 200)),
    ];
    let (b, h) = Balancer::new(
        BalanceConfig {
            algorithm: Algorithm::LeastRequest,
            ..cfg()
        },
        eps,
    );
    // Fill the busy endpoint: with two endpoints P2C always compares both.
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(tokio::spawn(b.clone().oneshot(get())));
    }
    crate::test_util::settle().await;
    // Every second request goes to the emptier one: at most one more on "busy" than "idle".
    let busy = h.in_flight("busy");
    let idle = h.in_flight("idle");
    assert_eq!(busy + idle, 20);
    assert!(busy.abs_diff(idle) <= 1, "busy {busy} idle {idle}");
    for t in held {
        t.abort();
    }
}

#[tokio::test(start_paused = true)]
async fn consistent_hash_is_sticky_and_moves_little() {
    let header = HeaderName::from_static("x-user");
    let all = ["a", "b", "c", "d"];
    let eps = |ids: &[&'static str]| {
        ids.iter()
            .map(|id| Endpoint::new(*id, responder(id, Duration::ZERO, 200)))
            .collect::<Vec<_>>()
    };
    let (mut b, h) = Balancer::new(
        BalanceConfig {
            algorithm: Algorithm::ConsistentHash(header.clone()),
            ..cfg()
        },
        eps(&all),
    );
    let mut before = HashMap::new();
    for user in 0..200 {
        let mut req = get();
        req.headers_mut().insert(&header, HeaderValue::from(user));
        let first = send(&mut b, req).await.unwrap().headers()["x-ep"].clone();
        for _ in 0..3 {
            let mut req = get();
            req.headers_mut().insert(&header, HeaderValue::from(user));
            assert_eq!(send(&mut b, req).await.unwrap().headers()["x-ep"], first);
        }
        before.insert(user, first);
    }
    let used: std::collections::HashSet<_> = before.values().collect();
    assert_eq!(used.len(), 4, "keys spread over every endpoint");
    h.update(eps(&["a", "b", "c"]));
    for user in 0..200 {
        let mut req = get();
        req.headers_mut().insert(&header, HeaderValue::from(user));
        let now = send(&mut b, req).await.unwrap().headers()["x-ep"].clone();
        if before[&user] != "d" {
            assert_eq!(
                now, before[&user],
                "user {user} moved though its endpoint stayed"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn zone_aware_stays_local_while_enough_is_healthy() {
    let eps = vec![
        Endpoint::new("l1", responder("l1", Duration::ZERO, 200)).zone("z1"),
        Endpoint::new("l2", responder("l2", Duration::ZERO, 200)).zone("z1"),
        Endpoint::new("r1", responder("r1", Duration::ZERO, 200)).zone("z2"),
        Endpoint::new("r2", responder("r2", Duration::ZERO, 200)).zone("z2"),
    ];
    let config = BalanceConfig {
        local_zone: Some("z1".into()),
        breaker: Some(BreakerConfig::default()),
        ..cfg()
    };
    let (mut b, h) = Balancer::new(config, eps);
    let counts = tally(&mut b, 100).await;
    assert_eq!(
        counts.get("l1").copied().unwrap_or(0) + counts.get("l2").copied().unwrap_or(0),
        100,
        "{counts:?}"
    );
    // Block one local endpoint: 1 of 2 (50 %) is below 70 %, so spill to every zone.
    let breaker = h.breaker("l1").unwrap();
    for _ in 0..5 {
        let p = breaker.try_acquire().unwrap();
        breaker.record(p, Outcome::Failure, Duration::ZERO);
    }
    let counts = tally(&mut b, 300).await;
    assert_eq!(counts.get("l1"), None);
    assert!(counts.get("r1").copied().unwrap_or(0) > 50, "{counts:?}");
}

#[tokio::test(start_paused = true)]
async fn endpoint_breakers_take_failing_endpoints_out() {
    let eps = vec![
        Endpoint::new("good", responder("good", Duration::from_millis(1), 200)),
        Endpoint::new("bad", responder("bad", Duration::from_millis(1), 502)),
    ];
    // Round robin sends every other request to "bad" until its breaker blocks it.
    let config = BalanceConfig {
        algorithm: Algorithm::RoundRobin,
        ..BalanceConfig::new("web", "orders")
    };
    let (mut b, h) = Balancer::new(config, eps);
    let mut bad = 0;
    for _ in 0..200 {
        if send(&mut b, get()).await.unwrap().status() == 502 {
            bad += 1;
        }
    }
    // 5 consecutive failures block it; the rest go to "good".
    assert_eq!(bad, 5);
    assert_eq!(
        h.breaker("bad").unwrap().state(),
        crate::breaker::BreakerState::Blocked
    );
}

#[tokio::test(start_paused = true)]
async fn outlier_detection_ejects_but_never_too_many() {
    let eps = vec![
        Endpoint::new("a", responder("a", Duration::from_millis(1), 500)),
        Endpoint::new("b", responder("b", Duration::from_millis(1), 500)),
        Endpoint::new("c", responder("c", Duration::from_millis(1), 200)),
    ];
    let outlier = OutlierConfig {
        consecutive_5xx: 2,
        max_ejection_share: 0.5,
        ..OutlierConfig::default()
    };
    let (mut b, h) = Balancer::new(
        BalanceConfig {
            outlier: Some(outlier),
            ..cfg()
        },
        eps,
    );
    for _ in 0..100 {
        send(&mut b, get()).await.unwrap();
    }
    let ejected = ["a", "b", "c"].iter().filter(|id| h.is_ejected(id)).count();
    // 50 % of 3 endpoints rounds down to one.
    assert_eq!(ejected, 1);
    assert!(!h.is_ejected("c"));
}

#[tokio::test(start_paused = true)]
async fn not_ready_without_endpoints_until_an_update() {
    let (mut b, h) = Balancer::new(cfg(), Vec::new());
    let waiting = tokio::spawn({
        let mut b = b.clone();
        async move { b.ready().await.map(|_| ()) }
    });
    crate::test_util::settle().await;
    assert!(!waiting.is_finished());
    h.update(vec![Endpoint::new(
        "a",
        responder("a", Duration::ZERO, 200),
    )]);
    waiting.await.unwrap().unwrap();
    assert_eq!(send(&mut b, get()).await.unwrap().headers()["x-ep"], "a");
}

#[tokio::test(start_paused = true)]
async fn wakes_when_a_blocked_endpoint_may_probe() {
    let (mut b, h) = Balancer::new(
        BalanceConfig::new("web", "orders"),
        vec![Endpoint::new("a", responder("a", Duration::ZERO, 200))],
    );
    let breaker = h.breaker("a").unwrap();
    for _ in 0..5 {
        let p = breaker.try_acquire().unwrap();
        breaker.record(p, Outcome::Failure, Duration::ZERO);
    }
    let start = Instant::now();
    b.ready().await.unwrap();
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_millis(7500),
        "{waited:?}"
    );
    assert_eq!(send(&mut b, get()).await.unwrap().status(), 200);
    assert_eq!(breaker.state(), crate::breaker::BreakerState::Allowed);
}

fn run<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
        .block_on(f)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn p2c_traffic_follows_weights(weights in proptest::collection::vec(1u32..6, 2..5)) {
        const IDS: [&str; 5] = ["e0", "e1", "e2", "e3", "e4"];
        let n = 3000;
        let counts = run(async {
            let eps = weights.iter().enumerate().map(|(i, w)| Endpoint::new(IDS[i], responder(IDS[i], Duration::ZERO, 200)).weight(*w)).collect();
            let (mut b, _h) = Balancer::new(cfg(), eps);
            tally(&mut b, n).await
        });
        let total: u32 = weights.iter().sum();
        for (i, w) in weights.iter().enumerate() {
            let expected = n as f64 * f64::from(*w) / f64::from(total);
            let got = counts.get(IDS[i]).copied().unwrap_or(0) as f64;
            // Binomial: 5 standard deviations.
            let tolerance = 5.0 * (expected * (1.0 - f64::from(*w) / f64::from(total))).sqrt();
            prop_assert!((got - expected).abs() <= tolerance, "endpoint {i} weight {w}: got {got}, expected {expected:.0} ({counts:?})");
        }
    }

    #[test]
    fn zone_preference_holds_exactly_while_local_capacity_suffices(local in 1usize..6, remote in 1usize..6, blocked in 0usize..6) {
        const L: [&str; 6] = ["l0", "l1", "l2", "l3", "l4", "l5"];
        const R: [&str; 6] = ["r0", "r1", "r2", "r3", "r4", "r5"];
        let blocked = blocked.min(local);
        let counts = run(async {
            let mut eps: Vec<_> = L[..local].iter().map(|id| Endpoint::new(*id, responder(id, Duration::ZERO, 200)).zone("z1")).collect();
            eps.extend(R[..remote].iter().map(|id| Endpoint::new(*id, responder(id, Duration::ZERO, 200)).zone("z2")));
            let config = BalanceConfig { local_zone: Some("z1".into()), breaker: Some(BreakerConfig::default()), ..cfg() };
            let (mut b, h) = Balancer::new(config, eps);
            for id in &L[..blocked] {
                let breaker = h.breaker(id).unwrap();
                for _ in 0..5 {
                    let p = breaker.try_acquire().unwrap();
                    breaker.record(p, Outcome::Failure, Duration::ZERO);
                }
            }
            tally(&mut b, 400).await
        });
        let to_local: usize = counts.iter().filter(|(k, _)| k.starts_with('l')).map(|(_, v)| v).sum();
        let healthy_share = (local - blocked) as f64 / local as f64;
        if blocked < local && healthy_share >= 0.7 {
            prop_assert_eq!(to_local, 400, "{:?}", counts);
        } else {
            prop_assert!(to_local < 400, "{:?}", counts);
            for id in &L[..blocked] {
                prop_assert!(!counts.contains_key(*id), "a blocked endpoint got traffic: {:?}", counts);
            }
        }
    }
}

type MockEp = tower_test::mock::Mock<Request<()>, Response<()>>;
type MockHandle = tower_test::mock::Handle<Request<()>, Response<()>>;

fn mock_endpoints(n: usize) -> (Vec<Endpoint<MockEp>>, Vec<MockHandle>) {
    (0..n)
        .map(|i| {
            let (mock, handle) = tower_test::mock::pair();
            (Endpoint::new(format!("m{i}"), mock), handle)
        })
        .unzip()
}

#[tokio::test(start_paused = true)]
async fn relays_to_one_endpoint_and_counts_in_flight() {
    let (eps, mut handles) = mock_endpoints(2);
    let (b, h) = Balancer::new(cfg(), eps);
    let call = tokio::spawn(b.clone().oneshot(get()));
    crate::test_util::settle().await;
    assert_eq!(h.in_flight("m0") + h.in_flight("m1"), 1);
    // Exactly one endpoint got the request.
    let mut got = Vec::new();
    for (i, handle) in handles.iter_mut().enumerate() {
        if let Some(Some(r)) = futures_util::FutureExt::now_or_never(handle.next_request()) {
            got.push((i, r));
        }
    }
    assert_eq!(got.len(), 1);
    let (_, (_, send)) = got.pop().unwrap();
    send.send_response(Response::new(()));
    call.await.unwrap().unwrap();
    assert_eq!(h.in_flight("m0") + h.in_flight("m1"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_call_releases_its_endpoint() {
    let (eps, mut handles) = mock_endpoints(1);
    let (b, h) = Balancer::new(BalanceConfig::new("web", "orders"), eps);
    let call = tokio::spawn(b.clone().oneshot(get()));
    let _req = handles[0].next_request().await.unwrap();
    assert_eq!(h.in_flight("m0"), 1);
    call.abort();
    crate::test_util::settle().await;
    assert_eq!(h.in_flight("m0"), 0);
    // A cancelled call is neither a success nor a failure for the breaker.
    assert_eq!(
        h.breaker("m0").unwrap().state(),
        crate::breaker::BreakerState::Allowed
    );
}

#[tokio::test(start_paused = true)]
async fn endpoint_errors_count_as_failures() {
    let (eps, mut handles) = mock_endpoints(1);
    let (b, h) = Balancer::new(BalanceConfig::new("web", "orders"), eps);
    for _ in 0..5 {
        let call = tokio::spawn(b.clone().oneshot(get()));
        let (_, send) = handles[0].next_request().await.unwrap();
        send.send_error(crate::classify::ConnectError("refused".into()));
        assert!(call.await.unwrap().is_err());
    }
    assert_eq!(
        h.breaker("m0").unwrap().state(),
        crate::breaker::BreakerState::Blocked
    );
}
