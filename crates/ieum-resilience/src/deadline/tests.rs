use std::time::Duration;

use http::Response;
use tower::{Layer, ServiceExt};
use tower_test::mock;

use super::*;
use crate::classify::{Source, classify};
use crate::test_util::{Handle, Mock, get, settle};

fn service(timeout: Option<Duration>) -> (DeadlineService<Mock>, Handle) {
    let (mock, handle) = mock::pair();
    (DeadlineLayer::new(timeout).layer(mock), handle)
}

#[test]
fn parses_grpc_timeouts() {
    assert_eq!(parse_grpc_timeout(b"1H"), Some(Duration::from_secs(3600)));
    assert_eq!(parse_grpc_timeout(b"2M"), Some(Duration::from_secs(120)));
    assert_eq!(parse_grpc_timeout(b"3S"), Some(Duration::from_secs(3)));
    assert_eq!(
        parse_grpc_timeout(b"250m"),
        Some(Duration::from_millis(250))
    );
    assert_eq!(parse_grpc_timeout(b"7u"), Some(Duration::from_micros(7)));
    assert_eq!(parse_grpc_timeout(b"9n"), Some(Duration::from_nanos(9)));
    for bad in [&b""[..], b"m", b"123456789m", b"10x", b"-1S", b"1.5S"] {
        assert_eq!(
            parse_grpc_timeout(bad),
            None,
            "{:?}",
            std::str::from_utf8(bad)
        );
    }
}

#[test]
fn incoming_budget_takes_the_smallest_header() {
    let mut h = http::HeaderMap::new();
    assert_eq!(incoming_budget(&h), None);
    h.insert(BUDGET_HEADER, HeaderValue::from_static("800"));
    h.insert(GRPC_TIMEOUT, HeaderValue::from_static("1S"));
    h.insert(ENVOY_EXPECTED_TIMEOUT, HeaderValue::from_static("600"));
    assert_eq!(incoming_budget(&h), Some(Duration::from_millis(600)));
    h.insert(ENVOY_EXPECTED_TIMEOUT, HeaderValue::from_static("junk"));
    assert_eq!(incoming_budget(&h), Some(Duration::from_millis(800)));
}

#[tokio::test(start_paused = true)]
async fn forwards_the_smaller_of_caller_budget_and_local_timeout() {
    let (svc, mut handle) = service(Some(Duration::from_secs(2)));
    let mut req = get();
    req.headers_mut()
        .insert(BUDGET_HEADER, HeaderValue::from_static("500"));
    req.headers_mut()
        .insert(ENVOY_EXPECTED_TIMEOUT, HeaderValue::from_static("900"));
    let start = Instant::now();
    let call = tokio::spawn(svc.oneshot(req));
    let (seen, send) = handle.next_request().await.unwrap();
    assert_eq!(seen.headers()[BUDGET_HEADER], "500");
    assert!(
        seen.headers().get(ENVOY_EXPECTED_TIMEOUT).is_none(),
        "Envoy's header is not forwarded"
    );
    assert!(
        seen.headers().get(GRPC_TIMEOUT).is_none(),
        "not a gRPC request"
    );
    assert_eq!(
        Deadline::of(&seen),
        Some(Deadline(start + Duration::from_millis(500)))
    );
    send.send_response(Response::new(()));
    assert!(call.await.unwrap().is_ok());
}

#[tokio::test(start_paused = true)]
async fn grpc_requests_get_grpc_timeout() {
    let (svc, mut handle) = service(Some(Duration::from_millis(1500)));
    let mut req = get();
    req.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc+proto"),
    );
    let call = tokio::spawn(svc.oneshot(req));
    let (seen, send) = handle.next_request().await.unwrap();
    assert_eq!(seen.headers()[GRPC_TIMEOUT], "1500m");
    assert_eq!(seen.headers()[BUDGET_HEADER], "1500");
    send.send_response(Response::new(()));
    call.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn exhausted_budget_fails_without_calling_upstream() {
    let (svc, mut handle) = service(Some(Duration::from_secs(2)));
    let mut req = get();
    req.headers_mut()
        .insert(GRPC_TIMEOUT, HeaderValue::from_static("0m"));
    let err = svc.oneshot(req).await.unwrap_err();
    let e = err
        .downcast_ref::<DeadlineExceeded>()
        .expect("a deadline error");
    assert!(e.is_before_sending());
    let c = classify(&err);
    assert_eq!(c.status, http::StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(c.source, Source::Downstream);
    assert_eq!(c.reason, "deadline-exceeded");
    settle().await;
    assert!(
        !matches!(
            futures_util::FutureExt::now_or_never(handle.next_request()),
            Some(Some(_))
        ),
        "upstream was called"
    );
}

#[tokio::test(start_paused = true)]
async fn bounds_the_whole_exchange() {
    let (svc, mut handle) = service(Some(Duration::from_secs(2)));
    let call = tokio::spawn(svc.oneshot(get()));
    let (_seen, _send) = handle.next_request().await.unwrap();
    tokio::time::advance(Duration::from_millis(1999)).await;
    settle().await;
    assert!(!call.is_finished());
    tokio::time::advance(Duration::from_millis(2)).await;
    let err = call.await.unwrap().unwrap_err();
    assert!(err.is::<DeadlineExceeded>(), "{err}");
    assert_eq!(classify(&err).source, Source::Local);
}

#[tokio::test(start_paused = true)]
async fn zero_timeout_and_no_budget_leave_requests_unbounded() {
    let (svc, mut handle) = service(Some(Duration::ZERO));
    let call = tokio::spawn(svc.oneshot(get()));
    let (seen, send) = handle.next_request().await.unwrap();
    assert!(seen.headers().get(BUDGET_HEADER).is_none());
    assert!(Deadline::of(&seen).is_none());
    tokio::time::advance(Duration::from_secs(3600)).await;
    send.send_response(Response::new(()));
    call.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_outer_deadline_only_gets_tighter() {
    let (svc, mut handle) = service(Some(Duration::from_secs(10)));
    let mut req = get();
    let outer = Deadline(Instant::now() + Duration::from_secs(1));
    req.extensions_mut().insert(outer);
    let call = tokio::spawn(svc.oneshot(req));
    let (seen, send) = handle.next_request().await.unwrap();
    assert_eq!(Deadline::of(&seen), Some(outer));
    assert_eq!(seen.headers()[BUDGET_HEADER], "1000");
    send.send_response(Response::new(()));
    call.await.unwrap().unwrap();
}

#[test]
fn long_budgets_keep_grpc_timeout_within_eight_digits() {
    let mut h = http::HeaderMap::new();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    write_budget(&mut h, Duration::from_micros(1500));
    assert_eq!(h[GRPC_TIMEOUT], "2m", "rounded up, never sent as exhausted");
    assert_eq!(h[BUDGET_HEADER], "2");
    write_budget(&mut h, Duration::from_secs(200_000));
    assert_eq!(h[GRPC_TIMEOUT], "200000S");
    assert_eq!(
        parse_grpc_timeout(h[GRPC_TIMEOUT].as_bytes()),
        Some(Duration::from_secs(200_000))
    );
}
