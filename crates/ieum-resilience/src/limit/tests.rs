use std::num::NonZeroU32;
use std::time::Duration;

use http::{Request, Response};
use tower::{Layer, ServiceExt};
use tower_test::mock;

use super::*;
use crate::classify::ErrorResponseLayer;
use crate::test_util::{get, settle};

#[tokio::test(start_paused = true)]
async fn bulkhead_refuses_over_the_limit_and_frees_slots() {
    let (mock, mut handle) = mock::pair::<Request<()>, Response<()>>();
    let svc = ConcurrencyLimitLayer::new(Some(2)).layer(mock);
    let a = tokio::spawn(svc.clone().oneshot(get()));
    let b = tokio::spawn(svc.clone().oneshot(get()));
    let (_, send_a) = handle.next_request().await.unwrap();
    let (_, send_b) = handle.next_request().await.unwrap();
    assert_eq!(svc.in_flight(), 2);
    let err = svc.clone().oneshot(get()).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<Overloaded>(),
        Some(&Overloaded { max: 2 })
    );
    send_a.send_response(Response::new(()));
    a.await.unwrap().unwrap();
    let c = tokio::spawn(svc.clone().oneshot(get()));
    let (_, send_c) = handle.next_request().await.unwrap();
    send_b.send_response(Response::new(()));
    send_c.send_response(Response::new(()));
    b.await.unwrap().unwrap();
    c.await.unwrap().unwrap();
    assert_eq!(svc.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_request_frees_its_slot() {
    let (mock, mut handle) = mock::pair::<Request<()>, Response<()>>();
    let svc = ConcurrencyLimitLayer::new(Some(1)).layer(mock);
    let a = tokio::spawn(svc.clone().oneshot(get()));
    let _req = handle.next_request().await.unwrap();
    a.abort();
    settle().await;
    assert_eq!(svc.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn unconfigured_layers_pass_through() {
    let (mock, mut handle) = mock::pair::<Request<()>, Response<()>>();
    let svc = ConcurrencyLimitLayer::new(None).layer(RateLimitLayer::new(None).layer(mock));
    let calls: Vec<_> = (0..50)
        .map(|_| tokio::spawn(svc.clone().oneshot(get())))
        .collect();
    for _ in 0..50 {
        let (_, send) = handle.next_request().await.unwrap();
        send.send_response(Response::new(()));
    }
    for c in calls {
        c.await.unwrap().unwrap();
    }
}

fn limit(requests: u32, per: Duration, burst: u32) -> RateLimitLayer {
    RateLimitLayer::new(Some(RateLimitConfig {
        requests: NonZeroU32::new(requests).unwrap(),
        per,
        burst: NonZeroU32::new(burst).unwrap(),
    }))
}

#[tokio::test(start_paused = true)]
async fn rate_limit_answers_429_with_retry_after() {
    let inner = tower::service_fn(|_req: Request<()>| async {
        Ok::<_, tower::BoxError>(Response::new(()))
    });
    let svc = ErrorResponseLayer.layer(limit(2, Duration::from_secs(1), 2).layer(inner));
    for _ in 0..2 {
        assert_eq!(svc.clone().oneshot(get()).await.unwrap().status(), 200);
    }
    let res = svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()[http::header::RETRY_AFTER], "1");
    assert_eq!(
        res.headers()[crate::classify::REASON_HEADER],
        "rate-limited"
    );
    // One request every 500 ms.
    tokio::time::advance(Duration::from_millis(499)).await;
    assert_eq!(svc.clone().oneshot(get()).await.unwrap().status(), 429);
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(svc.clone().oneshot(get()).await.unwrap().status(), 200);
}

#[tokio::test(start_paused = true)]
async fn rate_limit_reports_when_to_come_back() {
    let inner = tower::service_fn(|_req: Request<()>| async {
        Ok::<_, tower::BoxError>(Response::new(()))
    });
    let svc = limit(10, Duration::from_secs(10), 1).layer(inner);
    svc.clone().oneshot(get()).await.unwrap();
    let err = svc.clone().oneshot(get()).await.unwrap_err();
    let rl = err.downcast_ref::<RateLimited>().unwrap();
    assert_eq!(rl.retry_after, Duration::from_secs(1));
}
