//! A WebSocket-style upgrade through two sidecars: after `101 Switching Protocols`, bytes
//! flow both ways over the spliced connections.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::convert::Infallible;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An app that accepts any upgrade and echoes what it receives afterwards.
async fn echo_app() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |mut req: Request<hyper::body::Incoming>| async move {
                        let mut res = Response::new(Empty::<Bytes>::new());
                        if req
                            .headers()
                            .get("upgrade")
                            .is_some_and(|v| v == "websocket")
                        {
                            let on = hyper::upgrade::on(&mut req);
                            tokio::spawn(async move {
                                let mut io = TokioIo::new(on.await.unwrap());
                                let mut buf = [0u8; 1024];
                                loop {
                                    let n = io.read(&mut buf).await.unwrap_or(0);
                                    if n == 0 {
                                        return;
                                    }
                                    io.write_all(&buf[..n]).await.unwrap();
                                }
                            });
                            *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                            res.headers_mut()
                                .insert("connection", "upgrade".parse().unwrap());
                            res.headers_mut()
                                .insert("upgrade", "websocket".parse().unwrap());
                        } else {
                            *res.status_mut() = StatusCode::BAD_REQUEST;
                        }
                        Ok::<_, Infallible>(res)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_upgraded_connection_echoes_through_two_sidecars() {
    let server = Server::start().await;
    let b = sidecar(
        client(&server, "stock", &[]),
        "stock",
        echo_app().await,
        None,
    )
    .await;
    server
        .register("stock", "stock-1", b.inbound_addr(), None)
        .await;
    let ca = client(&server, "web", &["stock"]);
    until(&ca, "stock", |s| s.up("stock").len() == 1).await;
    let a = sidecar(ca, "web", "127.0.0.1:9".parse().unwrap(), None).await;

    let mut conn = tokio::net::TcpStream::connect(a.outbound_addr())
        .await
        .unwrap();
    conn.write_all(
        b"GET http://stock/chat HTTP/1.1\r\nHost: stock\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        conn.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
    for msg in [&b"hello"[..], b"again, longer message"] {
        conn.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(
            std::time::Duration::from_secs(2),
            conn.read_exact(&mut back),
        )
        .await
        .expect("echo within 2 s")
        .unwrap();
        assert_eq!(back, msg);
    }
}

/// Reads a response head (up to the blank line).
async fn head(conn: &mut tokio::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        conn.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

#[tokio::test]
async fn connect_tunnels_outside_the_mesh() {
    let server = Server::start().await;
    let ca = client(&server, "web", &[]);
    assert!(ca.wait_connected(std::time::Duration::from_secs(5)).await);
    let a = sidecar(ca, "web", "127.0.0.1:9".parse().unwrap(), None).await;
    // A plain TCP echo server stands for an HTTPS site.
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = echo.accept().await.unwrap();
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    });
    let mut conn = tokio::net::TcpStream::connect(a.outbound_addr())
        .await
        .unwrap();
    conn.write_all(format!("CONNECT {echo_addr} HTTP/1.1\r\nHost: {echo_addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let h = head(&mut conn).await;
    assert!(h.starts_with("HTTP/1.1 200"), "{h}");
    conn.write_all(b"\x16\x03\x01 not really TLS")
        .await
        .unwrap();
    let mut back = [0u8; 18];
    conn.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"\x16\x03\x01 not really TLS");

    // Nothing listens: 502 with the reason.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gone = closed.local_addr().unwrap();
    drop(closed);
    let mut conn = tokio::net::TcpStream::connect(a.outbound_addr())
        .await
        .unwrap();
    conn.write_all(format!("CONNECT {gone} HTTP/1.1\r\nHost: {gone}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let h = head(&mut conn).await;
    assert!(h.starts_with("HTTP/1.1 502"), "{h}");
    assert!(h.contains("ieum-reason: connect-failed"), "{h}");
}
