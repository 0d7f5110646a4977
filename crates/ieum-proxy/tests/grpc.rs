//! HTTP/2 (h2c prior knowledge) and gRPC through two sidecars: trailers arrive, and a
//! trailers-only `UNAVAILABLE` is retried.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use common::*;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

#[tokio::test]
async fn grpc_over_h2c_keeps_its_trailers_and_unavailable_is_retried() {
    let server = Server::start().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let app_addr = app_h2(move |req: Request<hyper::body::Incoming>| {
        let n = c.fetch_add(1, Ordering::SeqCst);
        async move {
            let flaky = req.uri().path() == "/test.Echo/Flaky";
            let version = req.version();
            let te = req.headers().get("te").cloned();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let unavailable = flaky && n == 0;
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            trailers.insert("x-len", HeaderValue::from(body.len()));
            trailers.insert("x-te", te.unwrap_or(HeaderValue::from_static("none")));
            trailers.insert(
                "x-version",
                HeaderValue::from_str(&format!("{version:?}")).unwrap(),
            );
            // Trailers-only answer when unavailable: the status is in the headers.
            let (body, trailers) = if unavailable {
                (Bytes::new(), None)
            } else {
                (body, Some(Ok::<_, Infallible>(trailers)))
            };
            let mut res = Response::new(Full::new(body).with_trailers(async move { trailers }));
            res.headers_mut()
                .insert("content-type", HeaderValue::from_static("application/grpc"));
            if unavailable {
                res.headers_mut()
                    .insert("grpc-status", HeaderValue::from_static("14"));
            }
            res
        }
    })
    .await;
    let b = sidecar(client(&server, "stock", &[]), "stock", app_addr, None).await;
    server
        .register("stock", "stock-1", b.inbound_addr(), None)
        .await;
    server
        .apply("apiVersion: ieum.dev/v1\nkind: ResiliencePolicy\nmetadata: {name: stock}\nspec: {targetRef: {kind: Service, name: stock}, retry: {backoff: 5ms}}\n")
        .await;
    let ca = client(&server, "web", &["stock"]);
    until(&ca, "stock and its policy", |s| {
        s.up("stock").len() == 1 && s.resources.contains_key("ResiliencePolicy/stock")
    })
    .await;
    let a = sidecar(ca, "web", "127.0.0.1:9".parse().unwrap(), None).await;

    let stream = tokio::net::TcpStream::connect(a.outbound_addr())
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let call = |path: &str| {
        Request::post(format!("http://stock{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(Bytes::from_static(b"\0\0\0\0\x05hello")))
            .unwrap()
    };
    let res = sender.send_request(call("/test.Echo/Say")).await.unwrap();
    assert_eq!(res.status(), 200);
    let collected = res.into_body().collect().await.unwrap();
    let trailers = collected
        .trailers()
        .cloned()
        .expect("trailers through both sidecars");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-len"], "10");
    assert_eq!(trailers["x-te"], "trailers");
    assert_eq!(trailers["x-version"], "HTTP/2.0", "HTTP/2 end to end");
    assert_eq!(&collected.to_bytes()[..], b"\0\0\0\0\x05hello");

    let before = calls.load(Ordering::SeqCst);
    calls.store(0, Ordering::SeqCst);
    let res = sender.send_request(call("/test.Echo/Flaky")).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["ieum-attempts"], "2");
    let collected = res.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(before, 1);
}

/// A request body fed chunk by chunk from a channel.
struct Chunks(tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|c| c.map(|b| Ok(http_body::Frame::data(b))))
    }
}

#[tokio::test]
async fn a_bidirectional_stream_flows_both_ways_before_either_side_ends() {
    let server = Server::start().await;
    // The app echoes the request body as it arrives.
    let app_addr = app_h2(|req: Request<hyper::body::Incoming>| async move {
        let mut res = Response::new(req.into_body());
        res.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/grpc"));
        res
    })
    .await;
    let b = sidecar(client(&server, "stock", &[]), "stock", app_addr, None).await;
    server
        .register("stock", "stock-1", b.inbound_addr(), None)
        .await;
    // With retries on, the body is recorded for replay while it streams.
    server
        .apply("apiVersion: ieum.dev/v1\nkind: ResiliencePolicy\nmetadata: {name: stock}\nspec: {targetRef: {kind: Service, name: stock}, retry: {}}\n")
        .await;
    let ca = client(&server, "web", &["stock"]);
    until(&ca, "stock and its policy", |s| {
        s.up("stock").len() == 1 && s.resources.contains_key("ResiliencePolicy/stock")
    })
    .await;
    let a = sidecar(ca, "web", "127.0.0.1:9".parse().unwrap(), None).await;

    let stream = tokio::net::TcpStream::connect(a.outbound_addr())
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let req = Request::post("http://stock/test.Chat/Talk")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Chunks(rx))
        .unwrap();
    let first = Bytes::from_static(b"\0\0\0\0\x03one");
    tx.send(first.clone()).await.unwrap();
    let wait = std::time::Duration::from_secs(3);
    let res = tokio::time::timeout(wait, sender.send_request(req))
        .await
        .expect("headers before the request ends")
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut body = res.into_body();
    for chunk in [first, Bytes::from_static(b"\0\0\0\0\x03two")] {
        if chunk.ends_with(b"two") {
            tx.send(chunk.clone()).await.unwrap();
        }
        let frame = tokio::time::timeout(wait, body.frame())
            .await
            .expect("each message echoed while the stream is open")
            .unwrap()
            .unwrap();
        assert_eq!(frame.into_data().unwrap(), chunk);
    }
    drop(tx);
    let rest = tokio::time::timeout(wait, body.collect())
        .await
        .unwrap()
        .unwrap();
    assert!(rest.to_bytes().is_empty());
}

#[tokio::test]
async fn h2c_callers_reach_http1_only_services_and_a_refusing_h2_endpoint_fails_fast() {
    let server = Server::start().await;
    // A plain HTTP/1.1 server registered without a sidecar: it must get HTTP/1.1.
    let plain = app(|req: Request<hyper::body::Incoming>| async move {
        reply(200, format!("{:?}", req.version()))
    })
    .await;
    server.register("plain", "plain-1", plain, None).await;
    // A "sidecar" (it says so in its metadata) that refuses connections: HTTP/2 is kept
    // towards sidecars, so this exercises the HTTP/2 pool's failure path.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut reg = ieum_model::InstanceRegistration::new(closed.ip().to_string(), closed.port());
    reg.id = Some("gone-1".into());
    reg.metadata.insert("sidecar".into(), "ieum".into());
    reg.ttl = ieum_model::Duration::from_secs(3600);
    server
        .registry
        .register(&ieum_model::Name::parse("gone").unwrap(), reg, "test")
        .await
        .unwrap();
    let ca = client(&server, "web", &["plain", "gone"]);
    until(&ca, "plain and gone", |s| {
        s.up("plain").len() == 1 && s.up("gone").len() == 1
    })
    .await;
    let a = sidecar(ca, "web", "127.0.0.1:9".parse().unwrap(), None).await;

    let stream = tokio::net::TcpStream::connect(a.outbound_addr())
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let get = |host: &str| {
        Request::get(format!("http://{host}/"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let res = sender.send_request(get("plain")).await.unwrap();
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        &body[..],
        b"HTTP/1.1",
        "an HTTP/1.1-only service gets HTTP/1.1"
    );

    let wait = std::time::Duration::from_secs(5);
    for _ in 0..50 {
        let res = tokio::time::timeout(wait, sender.send_request(get("gone")))
            .await
            .expect("a refusing endpoint answers, it does not hang")
            .unwrap();
        assert!(res.status().is_server_error(), "{}", res.status());
    }
    // The connection to the sidecar still serves other destinations.
    let res = sender.send_request(get("plain")).await.unwrap();
    assert_eq!(res.status(), 200);
}
