use http::Response;
use tower::{Layer, ServiceExt};
use tower_test::mock;

use super::*;
use crate::test_util::{Handle, Mock, get, settle};
use tokio::time::Instant;

fn service(queue: usize) -> (FailFast<Mock>, Handle) {
    let (mock, mut handle) = mock::pair();
    handle.allow(0);
    let layer = FailFastLayer::new(FailFastConfig {
        queue,
        timeout: Duration::from_secs(3),
    });
    (layer.layer(mock), handle)
}

#[tokio::test(start_paused = true)]
async fn fails_fast_after_the_timeout_until_an_endpoint_recovers() {
    let (svc, mut handle) = service(100);
    let start = Instant::now();
    let err = svc.clone().oneshot(get()).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<FailFastError>(),
        Some(&FailFastError::NoEndpointReady)
    );
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    assert!(svc.is_failing());
    // Now every request fails at once.
    let start = Instant::now();
    svc.clone().oneshot(get()).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::ZERO);
    // An endpoint recovers: requests flow again.
    handle.allow(1);
    let call = tokio::spawn(svc.clone().oneshot(get()));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(Response::new(()));
    call.await.unwrap().unwrap();
    assert!(!svc.is_failing());
}

#[tokio::test(start_paused = true)]
async fn requests_served_within_the_timeout_wait() {
    let (svc, mut handle) = service(100);
    let call = tokio::spawn(svc.clone().oneshot(get()));
    tokio::time::advance(Duration::from_secs(2)).await;
    handle.allow(1);
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(Response::new(()));
    call.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_sheds_at_once() {
    let (svc, _handle) = service(2);
    let waiting: Vec<_> = (0..2)
        .map(|_| tokio::spawn(svc.clone().oneshot(get())))
        .collect();
    settle().await;
    let start = Instant::now();
    let err = svc.clone().oneshot(get()).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<FailFastError>(),
        Some(&FailFastError::QueueFull)
    );
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(
        crate::classify::classify(&err).status,
        http::StatusCode::SERVICE_UNAVAILABLE
    );
    for w in waiting {
        w.abort();
    }
}
