use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full, StreamBody};
use tower::{Layer, ServiceExt};
use tower_test::mock;

use super::*;
use crate::classify::ConnectError;
use crate::test_util::status;
use crate::timeout::AttemptTimedOut;

type Inner = Request<RetryBody<Full<Bytes>>>;
type Mock = mock::Mock<Inner, Response<()>>;

/// What upstream saw: (time of arrival, body).
type Seen = Arc<Mutex<Vec<(Instant, Bytes)>>>;

/// Serves requests with `answer(n)` (n counts from 1) and records what arrived.
fn upstream(
    answer: impl Fn(usize) -> Result<Response<()>, BoxError> + Send + 'static,
) -> (Mock, Seen) {
    let (mock, mut handle) = mock::pair::<Inner, Response<()>>();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let n = {
                let mut log = log.lock().unwrap();
                log.push((Instant::now(), body));
                log.len()
            };
            match answer(n) {
                Ok(res) => send.send_response(res),
                Err(e) => send.send_error(e),
            }
        }
    });
    (mock, seen)
}

fn layer(policy: RetryPolicy) -> RetryLayer {
    RetryLayer::new(
        policy,
        Arc::new(RetryBudget::new(0.2, 10, Duration::from_secs(10))),
    )
}

fn post(body: &'static str) -> Request<Full<Bytes>> {
    Request::post("http://orders/v1")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

/// Tries made: the header, absent when the first try answered.
fn attempts_header(res: &Response<()>) -> &str {
    res.headers()
        .get(ATTEMPTS_HEADER)
        .map_or("1", |v| v.to_str().unwrap())
}

#[tokio::test(start_paused = true)]
async fn retries_listed_codes_and_replays_the_body() {
    let (mock, seen) = upstream(|n| Ok(status(if n == 1 { 503 } else { 200 })));
    let res = layer(RetryPolicy::default())
        .layer(mock)
        .oneshot(post("hello"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(attempts_header(&res), "2");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|(_, b)| b == "hello"));
    // Full jitter below the first ceiling (25 ms).
    assert!(seen[1].0 - seen[0].0 <= Duration::from_millis(25));
}

#[tokio::test(start_paused = true)]
async fn unlisted_codes_are_not_retried() {
    let (mock, seen) = upstream(|_| Ok(status(500)));
    let res = layer(RetryPolicy::default())
        .layer(mock)
        .oneshot(post("x"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        res.headers().get(ATTEMPTS_HEADER).is_none(),
        "only retried answers say so"
    );
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn gives_up_after_attempts() {
    let (mock, seen) = upstream(|_| Ok(status(503)));
    let policy = RetryPolicy {
        attempts: 3,
        ..RetryPolicy::default()
    };
    let res = layer(policy).layer(mock).oneshot(post("x")).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(attempts_header(&res), "4");
    assert_eq!(seen.lock().unwrap().len(), 4);
}

#[tokio::test(start_paused = true)]
async fn zero_attempts_disables_retrying() {
    let (mock, seen) = upstream(|_| Ok(status(503)));
    let res = layer(RetryPolicy::none())
        .layer(mock)
        .oneshot(post("x"))
        .await
        .unwrap();
    assert_eq!(attempts_header(&res), "1");
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn bodies_over_the_limit_are_sent_once() {
    let (mock, seen) = upstream(|_| Ok(status(503)));
    let policy = RetryPolicy {
        max_body_bytes: 4,
        ..RetryPolicy::default()
    };
    let res = layer(policy)
        .layer(mock)
        .oneshot(post("more than four"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(attempts_header(&res), "1");
    assert_eq!(seen.lock().unwrap()[0].1, "more than four");
}

fn streamed(chunks: &'static [&'static str]) -> Request<StreamBody<Chunks>> {
    let frames = chunks
        .iter()
        .map(|c| Ok::<_, BoxError>(Frame::data(Bytes::from_static(c.as_bytes()))));
    Request::post("http://orders/v1")
        .body(StreamBody::new(futures_util::stream::iter(
            frames.collect::<Vec<_>>(),
        )))
        .unwrap()
}

type Chunks = futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, BoxError>>>;
type StreamMock = mock::Mock<Request<RetryBody<StreamBody<Chunks>>>, Response<()>>;

/// Like [`upstream`], for streamed request bodies of unknown size; the returned future
/// serves requests and must be polled alongside the call (it is not `Send`).
fn streamed_upstream(
    answer: impl Fn(usize) -> Response<()> + 'static,
) -> (StreamMock, impl std::future::Future<Output = ()>, Seen) {
    let (mock, mut handle) = mock::pair::<Request<RetryBody<StreamBody<Chunks>>>, Response<()>>();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let serve = async move {
        while let Some((req, send)) = handle.next_request().await {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let n = {
                let mut log = log.lock().unwrap();
                log.push((Instant::now(), body));
                log.len()
            };
            send.send_response(answer(n));
        }
    };
    (mock, serve, seen)
}

#[tokio::test(start_paused = true)]
async fn streamed_bodies_of_unknown_size_are_replayed_within_the_limit() {
    let (mock, serve, seen) = streamed_upstream(|n| status(if n == 1 { 503 } else { 200 }));
    let req = streamed(&["grpc ", "frame ", "data"]);
    assert_eq!(
        req.body().size_hint().upper(),
        None,
        "a streamed body has no known size"
    );
    let call = layer(RetryPolicy::default()).layer(mock).oneshot(req);
    let (res, ()) = futures_util::future::join(call, serve).await;
    assert_eq!(res.unwrap().status(), StatusCode::OK);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|(_, b)| b == "grpc frame data"));
}

#[tokio::test(start_paused = true)]
async fn streamed_bodies_over_the_limit_are_not_retried() {
    let (mock, serve, seen) = streamed_upstream(|_| status(503));
    let policy = RetryPolicy {
        max_body_bytes: 8,
        ..RetryPolicy::default()
    };
    let call = layer(policy)
        .layer(mock)
        .oneshot(streamed(&["0123456", "789abc"]));
    let (res, ()) = futures_util::future::join(call, serve).await;
    assert_eq!(res.unwrap().status(), StatusCode::SERVICE_UNAVAILABLE);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].1, "0123456789abc",
        "the one attempt still got the whole body"
    );
}

#[tokio::test(start_paused = true)]
async fn connection_failures_are_retried() {
    let (mock, seen) = upstream(|n| {
        if n == 1 {
            Err(ConnectError("refused".into()).into())
        } else {
            Ok(status(200))
        }
    });
    let res = layer(RetryPolicy::default())
        .layer(mock)
        .oneshot(post("x"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn refused_streams_are_retried() {
    let (mock, seen) = upstream(|n| {
        if n == 1 {
            Err(h2::Error::from(h2::Reason::REFUSED_STREAM).into())
        } else {
            Ok(status(200))
        }
    });
    let res = layer(RetryPolicy::default())
        .layer(mock)
        .oneshot(post("x"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn maybe_processed_failures_need_idempotent() {
    let timed_out = |_| Err(AttemptTimedOut(Duration::from_secs(1)).into());
    let (mock, seen) = upstream(timed_out);
    let err = layer(RetryPolicy::default())
        .layer(mock)
        .oneshot(post("x"))
        .await
        .unwrap_err();
    assert!(err.is::<AttemptTimedOut>());
    assert_eq!(seen.lock().unwrap().len(), 1);

    let (mock, seen) = upstream(timed_out);
    let policy = RetryPolicy {
        idempotent: true,
        ..RetryPolicy::default()
    };
    layer(policy)
        .layer(mock)
        .oneshot(post("x"))
        .await
        .unwrap_err();
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn grpc_unavailable_is_retried_without_being_listed() {
    let (mock, seen) = upstream(|n| {
        let mut res = status(200);
        let code = if n == 1 { "14" } else { "0" };
        res.headers_mut()
            .insert("grpc-status", http::HeaderValue::from_static(code));
        Ok(res)
    });
    let policy = RetryPolicy {
        codes: vec![],
        ..RetryPolicy::default()
    };
    let res = layer(policy).layer(mock).oneshot(post("x")).await.unwrap();
    assert_eq!(res.headers()["grpc-status"], "0");
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_up_to_the_cap() {
    let answer = |n| {
        let mut res = status(if n == 1 { 503 } else { 200 });
        res.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("1"),
        );
        Ok(res)
    };
    let (mock, seen) = upstream(answer);
    let policy = RetryPolicy {
        backoff: Backoff::new(Duration::from_millis(10), Duration::from_secs(5)),
        ..RetryPolicy::default()
    };
    layer(policy).layer(mock).oneshot(post("x")).await.unwrap();
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen[1].0 - seen[0].0, Duration::from_secs(1));
    }
    let (mock, seen) = upstream(answer);
    let policy = RetryPolicy {
        backoff: Backoff::new(Duration::from_millis(10), Duration::from_millis(250)),
        ..RetryPolicy::default()
    };
    layer(policy).layer(mock).oneshot(post("x")).await.unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen[1].0 - seen[0].0, Duration::from_millis(250));
}

#[tokio::test(start_paused = true)]
async fn no_retry_when_the_deadline_would_pass_during_the_wait() {
    let (mock, seen) = upstream(|_| {
        let mut res = status(503);
        res.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("1"),
        );
        Ok(res)
    });
    let policy = RetryPolicy {
        backoff: Backoff::new(Duration::from_millis(10), Duration::from_secs(1)),
        ..RetryPolicy::default()
    };
    let mut req = post("x");
    req.extensions_mut()
        .insert(Deadline(Instant::now() + Duration::from_millis(500)));
    let res = layer(policy).layer(mock).oneshot(req).await.unwrap();
    assert_eq!(attempts_header(&res), "1");
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn budget_caps_retries_under_load() {
    let (mock, seen) = upstream(|_| Ok(status(503)));
    // No reserve: only 20 % of the original requests may be retried.
    let budget = Arc::new(RetryBudget::new(0.2, 0, Duration::from_secs(10)));
    let policy = RetryPolicy {
        attempts: 3,
        ..RetryPolicy::default()
    };
    let svc = RetryLayer::new(policy, budget).layer(mock);
    let mut calls = Vec::new();
    for _ in 0..100 {
        calls.push(tokio::spawn(svc.clone().oneshot(post("x"))));
    }
    for c in calls {
        c.await.unwrap().unwrap();
    }
    let total = seen.lock().unwrap().len();
    // Without the budget this would be 400 calls.
    assert!((100..=120).contains(&total), "{total} calls");
}
