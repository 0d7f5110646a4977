use std::time::Duration;

use http::{Request, Response, StatusCode};
use tower::{Layer, ServiceExt};

use super::*;
use crate::test_util::get;

#[derive(Debug, thiserror::Error)]
#[error("client error")]
struct Wrapper(#[source] std::io::Error);

#[test]
fn every_error_of_this_crate_has_a_source_a_retry_rule_and_a_reason() {
    let cases: Vec<(BoxError, Source, Retryable, u16, &str)> = vec![
        (
            crate::deadline::DeadlineExceeded::while_waiting().into(),
            Source::Local,
            Retryable::No,
            504,
            "deadline-exceeded",
        ),
        (
            crate::timeout::AttemptTimedOut(Duration::from_secs(1)).into(),
            Source::Upstream,
            Retryable::IfIdempotent,
            504,
            "upstream-timeout",
        ),
        (
            crate::breaker::Blocked {
                destination: "orders".into(),
                state: crate::breaker::BreakerState::Blocked,
            }
            .into(),
            Source::Local,
            Retryable::Safe,
            503,
            "circuit-blocked",
        ),
        (
            crate::fail_fast::FailFastError::NoEndpointReady.into(),
            Source::Local,
            Retryable::No,
            503,
            "no-endpoint-ready",
        ),
        (
            crate::fail_fast::FailFastError::QueueFull.into(),
            Source::Local,
            Retryable::No,
            503,
            "queue-full",
        ),
        (
            crate::limit::Overloaded { max: 1 }.into(),
            Source::Local,
            Retryable::No,
            503,
            "overloaded",
        ),
        (
            crate::limit::RateLimited {
                retry_after: Duration::from_millis(10),
            }
            .into(),
            Source::Downstream,
            Retryable::No,
            429,
            "rate-limited",
        ),
        (
            crate::balance::NoEndpoint {
                destination: "orders".into(),
            }
            .into(),
            Source::Local,
            Retryable::No,
            503,
            "no-endpoint",
        ),
        (
            ConnectError("refused".into()).into(),
            Source::Upstream,
            Retryable::Safe,
            502,
            "connect-failed",
        ),
        (
            h2::Error::from(h2::Reason::REFUSED_STREAM).into(),
            Source::Upstream,
            Retryable::Safe,
            503,
            "refused-stream",
        ),
        (
            Box::new(Wrapper(std::io::ErrorKind::ConnectionRefused.into())),
            Source::Upstream,
            Retryable::Safe,
            502,
            "connect-failed",
        ),
        (
            Box::new(Wrapper(std::io::ErrorKind::ConnectionReset.into())),
            Source::Upstream,
            Retryable::IfIdempotent,
            502,
            "upstream-reset",
        ),
        (
            "something odd".into(),
            Source::Upstream,
            Retryable::IfIdempotent,
            502,
            "upstream-error",
        ),
    ];
    for (err, source, retryable, status, reason) in cases {
        let c = classify(&err);
        assert_eq!(
            (c.source, c.retryable, c.status.as_u16(), c.reason),
            (source, retryable, status, reason),
            "{err}"
        );
    }
}

#[test]
fn failures_are_5xx_or_grpc_trouble() {
    let mut res = Response::new(());
    assert!(!is_failure(&res));
    *res.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    assert!(!is_failure(&res));
    *res.status_mut() = StatusCode::BAD_GATEWAY;
    assert!(is_failure(&res));
    let mut grpc = Response::new(());
    grpc.headers_mut()
        .insert("grpc-status", http::HeaderValue::from_static("14"));
    assert!(is_failure(&grpc));
    grpc.headers_mut()
        .insert("grpc-status", http::HeaderValue::from_static("5"));
    assert!(!is_failure(&grpc), "NOT_FOUND is the caller's problem");
}

fn failing(
    err: fn() -> BoxError,
) -> impl tower::Service<Request<()>, Response = Response<()>, Error = BoxError> + Clone {
    tower::service_fn(move |_req: Request<()>| async move { Err::<Response<()>, BoxError>(err()) })
}

#[tokio::test]
async fn errors_become_responses_with_reason_headers() {
    let svc = ErrorResponseLayer.layer(failing(|| {
        crate::limit::RateLimited {
            retry_after: Duration::from_millis(1500),
        }
        .into()
    }));
    let res = svc.oneshot(get()).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers()[REASON_HEADER], "rate-limited");
    assert_eq!(res.headers()[SOURCE_HEADER], "downstream");
    assert_eq!(res.headers()[http::header::RETRY_AFTER], "2");
}

#[tokio::test]
async fn grpc_callers_get_grpc_status() {
    let svc = ErrorResponseLayer.layer(failing(|| {
        crate::deadline::DeadlineExceeded::while_waiting().into()
    }));
    let mut req = get();
    req.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["grpc-status"], "4");
    assert_eq!(res.headers()["grpc-message"], "deadline-exceeded");
}

#[tokio::test]
async fn successes_pass_untouched() {
    let svc = ErrorResponseLayer.layer(tower::service_fn(|_req: Request<()>| async {
        Ok::<_, BoxError>(Response::new(()))
    }));
    let res = svc.oneshot(get()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers().get(REASON_HEADER).is_none());
}
