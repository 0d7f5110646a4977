//! Active checks against real sockets (real time: these talk to real servers).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration as StdDuration;

use bytes::Bytes;
use http_body_util::{Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use ieum_model::{Check, Duration, EventKind, InstanceRegistration, InstanceState, Name};
use ieum_registry::{Options, Registry, SystemClock};
use ieum_store::{EventQuery, MemoryStore, Order, Store};
use tokio::net::TcpListener;

async fn start() -> (Registry, Arc<MemoryStore>) {
    let store = Arc::new(MemoryStore::new());
    let r = Registry::start(store.clone(), Arc::new(SystemClock), Options::default())
        .await
        .unwrap();
    (r, store)
}

fn checked(port: u16, check: Check) -> InstanceRegistration {
    let mut reg = InstanceRegistration::new("127.0.0.1", port);
    reg.id = Some("a".into());
    reg.check = Some(check);
    reg
}

fn check() -> Check {
    Check {
        http: None,
        tcp: None,
        grpc: None,
        interval: Duration::from_secs(1),
        timeout: Duration::from_millis(500),
    }
}

async fn wait_for_state(r: &Registry, want: InstanceState) -> ieum_model::Instance {
    let deadline = tokio::time::Instant::now() + StdDuration::from_secs(10);
    loop {
        let inst = r.service("app").unwrap().instances.remove(0);
        if inst.state == want {
            return inst;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {} ({}), wanted {want}",
            inst.state,
            inst.state_reason
        );
        tokio::time::sleep(StdDuration::from_millis(50)).await;
    }
}

/// Serves `GET` with the status in `status` (as hundreds: 2 → 200, 5 → 503).
async fn http_server(status: Arc<AtomicU8>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let status = status.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let code = if status.load(Ordering::SeqCst) == 2 {
                        200
                    } else {
                        503
                    };
                    async move {
                        Ok::<_, Infallible>(
                            hyper::Response::builder()
                                .status(code)
                                .body(Full::new(Bytes::from(if code == 200 {
                                    "fine"
                                } else {
                                    "database unreachable"
                                })))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    port
}

#[tokio::test]
async fn http_checks_bring_instances_up_and_down_with_the_output() {
    let (r, store) = start().await;
    let status = Arc::new(AtomicU8::new(2));
    let port = http_server(status.clone()).await;
    let out = r
        .register(
            &Name::parse("app").unwrap(),
            checked(
                port,
                Check {
                    http: Some("/healthz".into()),
                    ..check()
                },
            ),
            "local",
        )
        .await
        .unwrap();
    assert!(out.created);
    let inst = wait_for_state(&r, InstanceState::Up).await;
    assert_eq!(inst.last_check.unwrap().output, "HTTP 200 OK: fine");

    status.store(5, Ordering::SeqCst);
    let inst = wait_for_state(&r, InstanceState::Down).await;
    assert_eq!(
        inst.state_reason,
        "check failed: HTTP 503 Service Unavailable: database unreachable"
    );
    tokio::time::sleep(StdDuration::from_millis(20)).await;
    let down = store
        .events(&EventQuery {
            kinds: vec![EventKind::InstanceDown],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        down[0].data["output"],
        "HTTP 503 Service Unavailable: database unreachable"
    );

    status.store(2, Ordering::SeqCst);
    wait_for_state(&r, InstanceState::Up).await;
    r.shutdown().await;
}

#[tokio::test]
async fn the_first_check_runs_at_once_and_instances_start_as_starting() {
    let (r, store) = start().await;
    let port = http_server(Arc::new(AtomicU8::new(2))).await;
    let slow = Check {
        http: Some("/".into()),
        interval: Duration::from_secs(3600),
        ..check()
    };
    r.register(&Name::parse("app").unwrap(), checked(port, slow), "local")
        .await
        .unwrap();
    tokio::time::sleep(StdDuration::from_millis(5)).await;
    let registered = store
        .events(&EventQuery {
            kinds: vec![EventKind::InstanceRegistered],
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        registered[0].message.ends_with("starting"),
        "{}",
        registered[0].message
    );
    // With an hour between checks, only an immediate first check can bring it up.
    wait_for_state(&r, InstanceState::Up).await;
    r.shutdown().await;
}

#[tokio::test]
async fn tcp_checks_follow_the_listener() {
    let (r, store) = start().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accept = tokio::spawn(async move {
        loop {
            let _ = listener.accept().await;
        }
    });
    r.register(
        &Name::parse("app").unwrap(),
        checked(
            port,
            Check {
                tcp: Some(true),
                ..check()
            },
        ),
        "local",
    )
    .await
    .unwrap();
    let inst = wait_for_state(&r, InstanceState::Up).await;
    assert_eq!(
        inst.last_check.unwrap().output,
        format!("connected to 127.0.0.1:{port}")
    );

    accept.abort();
    let _ = accept.await;
    let inst = wait_for_state(&r, InstanceState::Down).await;
    assert!(
        inst.state_reason.contains("refused"),
        "{}",
        inst.state_reason
    );
    tokio::time::sleep(StdDuration::from_millis(20)).await;
    let timeline = store
        .events(&EventQuery {
            instance: Some("a".into()),
            order: Order::OldestFirst,
            ..Default::default()
        })
        .await
        .unwrap();
    let kinds: Vec<_> = timeline.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            EventKind::InstanceRegistered,
            EventKind::InstanceUp,
            EventKind::InstanceDown
        ]
    );
    r.shutdown().await;
}

/// A gRPC health server over real HTTP/2 answering with `status` (1 SERVING, 2 NOT_SERVING).
async fn grpc_health_server(status: Arc<AtomicU8>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let status = status.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let s = status.load(Ordering::SeqCst);
                        async move {
                            assert_eq!(req.uri().path(), "/grpc.health.v1.Health/Check");
                            assert_eq!(req.headers()["content-type"], "application/grpc");
                            let mut trailers = hyper::HeaderMap::new();
                            trailers.insert("grpc-status", "0".parse().unwrap());
                            let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
                                Ok(Frame::data(Bytes::from(vec![0, 0, 0, 0, 2, 0x08, s]))),
                                Ok(Frame::trailers(trailers)),
                            ];
                            let body = StreamBody::new(futures_util::stream::iter(frames));
                            Ok::<_, Infallible>(
                                hyper::Response::builder()
                                    .header("content-type", "application/grpc")
                                    .body(body)
                                    .unwrap(),
                            )
                        }
                    },
                );
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    port
}

#[tokio::test]
async fn grpc_checks_speak_the_health_protocol_over_http2() {
    let (r, _) = start().await;
    let status = Arc::new(AtomicU8::new(1));
    let port = grpc_health_server(status.clone()).await;
    r.register(
        &Name::parse("app").unwrap(),
        checked(
            port,
            Check {
                grpc: Some("app".into()),
                ..check()
            },
        ),
        "local",
    )
    .await
    .unwrap();
    let inst = wait_for_state(&r, InstanceState::Up).await;
    assert_eq!(inst.last_check.unwrap().output, "SERVING");
    status.store(2, Ordering::SeqCst);
    let inst = wait_for_state(&r, InstanceState::Down).await;
    assert_eq!(inst.state_reason, "check failed: NOT_SERVING");
    r.shutdown().await;
}

#[tokio::test]
async fn a_check_that_hangs_fails_on_its_timeout() {
    let (r, _) = start().await;
    // Accepts connections but never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            if let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        }
    });
    r.register(
        &Name::parse("app").unwrap(),
        checked(
            port,
            Check {
                http: Some("/".into()),
                ..check()
            },
        ),
        "local",
    )
    .await
    .unwrap();
    tokio::time::sleep(StdDuration::from_millis(800)).await;
    let inst = r.service("app").unwrap().instances.remove(0);
    assert_eq!(
        inst.state,
        InstanceState::Starting,
        "a starting instance that fails stays out of traffic"
    );
    let last = inst
        .last_check
        .expect("the first check finished on its timeout");
    assert!(!last.passed);
    assert_eq!(last.output, "no answer within the check timeout of 500ms");
    r.shutdown().await;
}
