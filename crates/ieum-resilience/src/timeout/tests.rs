use std::time::Duration;

use http::Response;
use tower::{Layer, ServiceExt};
use tower_test::mock;

use super::*;
use crate::classify::{Retryable, classify};
use crate::deadline::BUDGET_HEADER;
use crate::test_util::{Handle, Mock, get, settle};

fn service(per_attempt: Option<Duration>) -> (AttemptTimeout<Mock>, Handle) {
    let (mock, handle) = mock::pair();
    (AttemptTimeoutLayer::new(per_attempt).layer(mock), handle)
}

#[tokio::test(start_paused = true)]
async fn attempt_times_out_and_may_have_been_processed() {
    let (svc, mut handle) = service(Some(Duration::from_millis(300)));
    let call = tokio::spawn(svc.oneshot(get()));
    let (seen, _send) = handle.next_request().await.unwrap();
    assert_eq!(seen.headers()[BUDGET_HEADER], "300");
    tokio::time::advance(Duration::from_millis(301)).await;
    let err = call.await.unwrap().unwrap_err();
    assert!(err.is::<AttemptTimedOut>(), "{err}");
    assert_eq!(classify(&err).retryable, Retryable::IfIdempotent);
    assert_eq!(classify(&err).reason, "upstream-timeout");
}

#[tokio::test(start_paused = true)]
async fn attempt_budget_is_what_is_left_of_the_deadline() {
    let (svc, mut handle) = service(Some(Duration::from_secs(1)));
    let mut req = get();
    req.extensions_mut()
        .insert(Deadline(Instant::now() + Duration::from_millis(400)));
    let call = tokio::spawn(svc.oneshot(req));
    let (seen, send) = handle.next_request().await.unwrap();
    assert_eq!(seen.headers()[BUDGET_HEADER], "400");
    // The deadline layer owns the 400 ms timer; this layer adds none.
    tokio::time::advance(Duration::from_secs(2)).await;
    settle().await;
    assert!(!call.is_finished());
    send.send_response(Response::new(()));
    call.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn attempt_after_the_deadline_is_not_sent() {
    let (svc, mut handle) = service(None);
    let mut req = get();
    req.extensions_mut().insert(Deadline(Instant::now()));
    let err = svc.oneshot(req).await.unwrap_err();
    assert!(err.is::<DeadlineExceeded>());
    settle().await;
    assert!(!matches!(
        futures_util::FutureExt::now_or_never(handle.next_request()),
        Some(Some(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn no_timeout_no_deadline_passes_through() {
    let (svc, mut handle) = service(Some(Duration::ZERO));
    let call = tokio::spawn(svc.oneshot(get()));
    let (seen, send) = handle.next_request().await.unwrap();
    assert!(seen.headers().get(BUDGET_HEADER).is_none());
    tokio::time::advance(Duration::from_secs(100)).await;
    send.send_response(Response::new(()));
    call.await.unwrap().unwrap();
}
