//! Opaque TCP through a sidecar pair: the caller's `--tcp` listener, a balanced endpoint,
//! the callee's inbound listener in TCP mode, and a real echo server behind it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use ieum_proxy::{AppProtocol, Sidecar};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// A TCP echo server.
async fn echo_server() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Sends `payload` on a connection to `addr` and reads back as many bytes.
async fn round_trip(addr: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = s.split();
    let (_, got) = tokio::join!(
        async {
            w.write_all(payload).await.unwrap();
            w.shutdown().await.unwrap();
        },
        async {
            let mut got = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), r.read_to_end(&mut got))
                .await
                .expect("the echo came back")
                .unwrap();
            got
        }
    );
    got
}

/// Waits until `sidecar`'s `/metrics` has `line`.
async fn metric(sidecar: &Sidecar, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, text) = admin(sidecar, "/metrics").await;
        if text.lines().any(|l| l == line) {
            return;
        }
        assert!(Instant::now() < deadline, "no `{line}` in\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn bytes_go_through_a_sidecar_pair_to_a_tcp_app_and_are_counted() {
    let server = Server::start().await;
    let echo = echo_server().await;
    let b = sidecar_with(client(&server, "db", &[]), "db", echo, |c| {
        c.app_protocol = AppProtocol::Tcp;
    })
    .await;
    server.register("db", "db-1", b.inbound_addr(), None).await;
    let a = sidecar_with(
        client(&server, "web", &["db"]),
        "web",
        "127.0.0.1:9".parse().unwrap(),
        |c| {
            c.tcp = vec![
                "127.0.0.1:0=db".parse().unwrap(),
                "127.0.0.1:0=ghost".parse().unwrap(),
            ];
        },
    )
    .await;
    let [db, ghost] = a.tcp_addrs()[..] else {
        panic!("two TCP listeners")
    };

    // Two connections at once, one of them large: bytes arrive intact, in order.
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let (small, large) = tokio::join!(round_trip(db, b"PING\r\n"), round_trip(db, &big));
    assert_eq!(small, b"PING\r\n");
    assert_eq!(large.len(), big.len());
    assert!(large == big, "the large payload came back unchanged");

    let sent = (big.len() + 6).to_string();
    let out = r#"direction="outbound",peer="dst",dst_service="db""#;
    metric(&a, &format!("tcp_open_total{{{out}}} 2")).await;
    metric(&a, &format!("tcp_close_total{{{out}}} 2")).await;
    metric(&a, &format!("tcp_open_connections{{{out}}} 0")).await;
    metric(&a, &format!("tcp_write_bytes_total{{{out}}} {sent}")).await;
    metric(&a, &format!("tcp_read_bytes_total{{{out}}} {sent}")).await;
    let inb = r#"direction="inbound",peer="dst",dst_service="db""#;
    metric(&b, &format!("tcp_open_total{{{inb}}} 2")).await;
    metric(&b, &format!("tcp_write_bytes_total{{{inb}}} {sent}")).await;

    // A service without endpoints: the connection is closed, and that is counted.
    let start = Instant::now();
    let mut s = TcpStream::connect(ghost).await.unwrap();
    let mut buf = [0; 16];
    let n = tokio::time::timeout(Duration::from_secs(6), s.read(&mut buf))
        .await
        .expect("closed, not left hanging")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(start.elapsed() < Duration::from_secs(5));
    metric(
        &a,
        r#"tcp_connect_errors_total{direction="outbound",peer="dst",dst_service="ghost"} 1"#,
    )
    .await;

    // Endpoints follow the snapshot: a second instance takes connections once the first
    // is gone.
    let echo2 = echo_server().await;
    let b2 = sidecar_with(client(&server, "db", &[]), "db", echo2, |c| {
        c.app_protocol = AppProtocol::Tcp;
    })
    .await;
    server.register("db", "db-2", b2.inbound_addr(), None).await;
    server
        .registry
        .deregister("db", "db-1", "test")
        .await
        .unwrap();
    drop(b);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, text) = admin(&b2, "/metrics").await;
        if text.contains(r#"tcp_open_total{direction="inbound",peer="dst",dst_service="db"} 1"#) {
            break;
        }
        assert!(Instant::now() < deadline, "db-2 never got a connection");
        // Until the change arrives, a connection may go to the stopped sidecar and close.
        let _ = tokio::time::timeout(Duration::from_secs(3), round_trip(db, b"x")).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(round_trip(db, b"again").await, b"again");
}
