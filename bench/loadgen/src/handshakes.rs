//! `handshakes`: new connections per second to a sidecar's inbound listener, each one
//! request (`Connection: close`): in plain text, or as a mesh workload over mTLS (the load
//! generator enrols with the server like a sidecar: its own key pair, a CSR, a certificate
//! for `svc/bench-client`). The difference is what a full TLS 1.3 handshake with client
//! certificates costs the sidecar.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use ieum_identity::{Credentials, Identity, KeyPair, SpiffeId, TrustDomain, Workload};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::{cpu_seconds, send};

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: up\r\nConnection: close\r\n\r\n";

/// A certificate for `svc/bench-client` from the server at `base` (a loopback server
/// enrols without a token), and a connector expecting `svc/{service}`.
async fn mesh_connector(base: &str, service: &str) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let http = crate::client(2);
    let (status, body) = send(&http, "GET", &format!("{base}/v1/mesh"), None).await?;
    if status != 200 {
        bail!("GET /v1/mesh answered {status}");
    }
    let info: serde_json::Value = serde_json::from_slice(&body)?;
    let td = TrustDomain::parse(info["trustDomain"].as_str().context("trustDomain")?)?;
    let roots = Arc::new(ieum_identity::roots_from_pem(
        info["caPem"].as_str().context("caPem")?,
    )?);
    let id = SpiffeId::new(td.clone(), Workload::parse_principal("bench-client")?);
    let key = KeyPair::generate()?;
    let request = serde_json::json!({"workload": "bench-client", "csr": key.csr(&id)?});
    let (status, body) = send(
        &http,
        "POST",
        &format!("{base}/v1/certificates"),
        Some(request.to_string()),
    )
    .await?;
    if status != 201 {
        bail!(
            "POST /v1/certificates answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let issued: serde_json::Value = serde_json::from_slice(&body)?;
    let credentials = Credentials::new(issued["chainPem"].as_str().context("chainPem")?, key)?;
    let expected = SpiffeId::new(td, Workload::parse_principal(service)?);
    let mut config =
        (*ieum_identity::client_config(&Identity::new(credentials), roots, Some(expected))?)
            .clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// One connection, one request, read to the end; `true` for a 200.
async fn once(
    target: SocketAddr,
    tls: Option<&tokio_rustls::TlsConnector>,
) -> anyhow::Result<bool> {
    let tcp = TcpStream::connect(target).await?;
    tcp.set_nodelay(true)?;
    let mut answer = Vec::with_capacity(512);
    match tls {
        Some(connector) => {
            let name = rustls::pki_types::ServerName::IpAddress(target.ip().into());
            let mut s = connector.connect(name, tcp).await?;
            s.write_all(REQUEST).await?;
            s.read_to_end(&mut answer).await?;
        }
        None => {
            let mut s = tcp;
            s.write_all(REQUEST).await?;
            s.read_to_end(&mut answer).await?;
        }
    }
    Ok(answer.starts_with(b"HTTP/1.1 200"))
}

/// Runs for `seconds` with `concurrency` loops; prints one JSON line.
pub(crate) async fn run(
    base: Option<&str>,
    service: &str,
    target: SocketAddr,
    seconds: u64,
    concurrency: usize,
    pid: Option<u32>,
) -> anyhow::Result<()> {
    let tls = match base {
        Some(base) => Some(Arc::new(mesh_connector(base, service).await?)),
        None => None,
    };
    if !once(target, tls.as_deref()).await? {
        bail!("the first request to {target} did not answer 200");
    }
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let cpu_before = pid.map(cpu_seconds).transpose()?;
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (tls, done, failed) = (tls.clone(), done.clone(), failed.clone());
        tasks.spawn(async move {
            while Instant::now() < until {
                match once(target, tls.as_deref()).await {
                    Ok(true) => done.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let cpu = match (pid, cpu_before) {
        (Some(p), Some(before)) => Some(cpu_seconds(p)? - before),
        _ => None,
    };
    let n = done.load(Ordering::Relaxed);
    println!(
        "{}",
        serde_json::json!({
            "scenario": "handshakes", "mtls": base.is_some(), "connections": n,
            "failed": failed.load(Ordering::Relaxed),
            "connectionsPerSecond": (n as f64 / seconds as f64).round(),
            "sidecarCpuSeconds": cpu.map(|c| (c * 100.0).round() / 100.0),
            "connectionsPerCpuSecond": cpu.filter(|c| *c > 0.0).map(|c| (n as f64 / c).round()),
        })
    );
    Ok(())
}
