use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::Request;
use tokio::time::Instant;
use tower::{Layer, ServiceExt};
use tower_test::mock;

use super::*;
use crate::test_util::get;

fn counting() -> (
    impl Service<Request<()>, Response = Response<()>, Error = BoxError> + Clone,
    Arc<AtomicUsize>,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let svc = tower::service_fn(move |_req: Request<()>| {
        c.fetch_add(1, Ordering::Relaxed);
        async { Ok::<_, BoxError>(Response::new(())) }
    });
    (svc, calls)
}

#[tokio::test(start_paused = true)]
async fn abort_answers_without_calling_upstream() {
    let (inner, calls) = counting();
    let cfg = FaultConfig {
        abort: Some((Abort::Http(StatusCode::SERVICE_UNAVAILABLE), 1.0)),
        delay: None,
    };
    let res = FaultInjectionLayer::new(Some(cfg))
        .layer(inner)
        .oneshot(get())
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()[REASON_HEADER], "fault-injected");
    assert_eq!(calls.load(Ordering::Relaxed), 0);
}

#[tokio::test(start_paused = true)]
async fn grpc_abort_sets_grpc_status() {
    let (inner, _) = counting();
    let cfg = FaultConfig {
        abort: Some((Abort::Grpc(14), 1.0)),
        delay: None,
    };
    let res = FaultInjectionLayer::new(Some(cfg))
        .layer(inner)
        .oneshot(get())
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["grpc-status"], "14");
}

#[tokio::test(start_paused = true)]
async fn delay_holds_the_request_before_upstream_sees_it() {
    let (mock, mut handle) = mock::pair::<Request<()>, Response<()>>();
    let cfg = FaultConfig {
        delay: Some((Duration::from_millis(300), 1.0)),
        abort: None,
    };
    let start = Instant::now();
    let call = tokio::spawn(
        FaultInjectionLayer::new(Some(cfg))
            .layer(mock)
            .oneshot(get()),
    );
    let (_, send) = handle.next_request().await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(300));
    send.send_response(Response::new(()));
    call.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn shares_are_sampled_per_request() {
    let (inner, calls) = counting();
    let cfg = FaultConfig {
        abort: Some((Abort::Http(StatusCode::INTERNAL_SERVER_ERROR), 0.3)),
        delay: None,
    };
    let svc = FaultInjectionLayer::new(Some(cfg)).layer(inner);
    let mut aborted = 0;
    for _ in 0..2000 {
        if svc.clone().oneshot(get()).await.unwrap().status() == 500 {
            aborted += 1;
        }
    }
    // 600 expected; 5 standard deviations is about ±100.
    assert!((500..700).contains(&aborted), "{aborted}");
    assert_eq!(calls.load(Ordering::Relaxed), 2000 - aborted);
}

#[tokio::test(start_paused = true)]
async fn zero_share_and_no_config_pass_through() {
    let (inner, calls) = counting();
    let cfg = FaultConfig {
        abort: Some((Abort::Http(StatusCode::INTERNAL_SERVER_ERROR), 0.0)),
        delay: Some((Duration::from_secs(1), 0.0)),
    };
    let start = Instant::now();
    for layer in [
        FaultInjectionLayer::new(Some(cfg)),
        FaultInjectionLayer::new(None),
    ] {
        for _ in 0..100 {
            assert_eq!(
                layer
                    .layer(inner.clone())
                    .oneshot(get())
                    .await
                    .unwrap()
                    .status(),
                200
            );
        }
    }
    assert_eq!(calls.load(Ordering::Relaxed), 200);
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[test]
fn config_from_the_policy() {
    let spec: ieum_model::policy::FaultInjectionSpec = serde_json::from_str(
        r#"{"targetRef": {"kind": "Route", "name": "stock-main"},
            "delay": {"duration": "300ms", "percent": 10},
            "abort": {"httpStatus": 503, "percent": 5}}"#,
    )
    .unwrap();
    let cfg = FaultConfig::from(&spec);
    assert_eq!(cfg.delay, Some((Duration::from_millis(300), 0.1)));
    assert_eq!(
        cfg.abort,
        Some((Abort::Http(StatusCode::SERVICE_UNAVAILABLE), 0.05))
    );
}
