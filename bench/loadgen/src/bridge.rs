//! `bridge`: the sidecar bridge over NATS JetStream, with real `ieum sidecar` processes.
//!
//! 1. Publish latency: the same 256-byte JSON body published `count` times through a
//!    sidecar (`POST /v1/publish/…`, answered once JetStream acknowledged) and directly
//!    with `async-nats` (publish, then wait for the ack), interleaved so both see the same
//!    machine; p50/p99 of each and what the sidecar adds.
//! 2. Delivery throughput: `events` CloudEvents (binary mode, `ce-` headers) published
//!    straight into JetStream as fast as acks come back, delivered by one sidecar to an
//!    app that answers 200 at once; messages per second from the first publish to the
//!    last delivery, and the sidecar's CPU per 10,000 events.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::{cpu_seconds, send};

/// One `ieum sidecar` process, killed on drop.
struct Sidecar {
    child: Child,
    outbound: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn sidecar(ieum: &str, server: &str, service: &str, app_port: u16) -> anyhow::Result<Sidecar> {
    let dir = tempfile::tempdir()?;
    let [outbound, inbound, admin] = [free_port()?, free_port()?, free_port()?];
    let child = Command::new(ieum)
        .args(["sidecar", "--service", service, "--server", server])
        .args(["--app-port", &app_port.to_string()])
        .args(["--outbound", &format!("127.0.0.1:{outbound}")])
        .args(["--inbound", &format!("127.0.0.1:{inbound}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .arg("--data-dir")
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("start {ieum} sidecar"))?;
    Ok(Sidecar {
        child,
        outbound: SocketAddr::from(([127, 0, 0, 1], outbound)),
        _dir: dir,
    })
}

/// An app that answers every request 200 and counts them.
async fn counting_app() -> anyhow::Result<(u16, Arc<AtomicUsize>, Arc<Notify>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let count = Arc::new(AtomicUsize::new(0));
    let notify = Arc::new(Notify::new());
    let (c, n) = (count.clone(), notify.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (c, n) = (c.clone(), n.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    if req.method() == http::Method::POST {
                        c.fetch_add(1, Ordering::Relaxed);
                        n.notify_one();
                    }
                    async {
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::new(),
                        )))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok((port, count, notify))
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// Runs both measurements against the server at `base`; prints one JSON line.
pub(crate) async fn run(
    ieum: &str,
    base: &str,
    nats: &str,
    count: usize,
    events: usize,
    max_in_flight: u32,
) -> anyhow::Result<()> {
    let http = crate::client(4);
    let bus = format!("bench{}", std::process::id());
    let yaml = format!(
        "apiVersion: ieum.dev/v1\nkind: PubSub\nmetadata: {{name: {bus}}}\nspec: {{type: nats-jetstream, url: \"{nats}\"}}\n---\n\
         apiVersion: ieum.dev/v1\nkind: Subscription\nmetadata: {{name: {bus}-deliver}}\n\
         spec: {{pubsub: {bus}, topic: {bus}.deliver, service: bench-sub, route: /events, maxInFlight: {max_in_flight}}}\n"
    );
    let req = http::Request::post(format!("{base}/v1/apply"))
        .header("content-type", "application/yaml")
        .body(Full::new(Bytes::from(yaml)))?;
    let res = http.request(req).await?;
    if !res.status().is_success() {
        bail!("apply failed: {}", res.status());
    }
    let (app_port, delivered, arrived) = counting_app().await?;
    let publisher = sidecar(ieum, base, "bench-pub", app_port)?;
    let subscriber = sidecar(ieum, base, "bench-sub", app_port)?;
    // Both are up once registered; the subscriber registers only with its subscription
    // active.
    let deadline = Instant::now() + Duration::from_secs(60);
    for service in ["bench-pub", "bench-sub"] {
        loop {
            let (status, body) = send(
                &http,
                "GET",
                &format!("{base}/v1/services/{service}/instances"),
                None,
            )
            .await?;
            let up = status == 200 && String::from_utf8_lossy(&body).contains("\"up\"");
            if up {
                break;
            }
            if Instant::now() > deadline {
                bail!("{service}'s sidecar did not come up within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let client = async_nats::connect(nats).await?;
    let js = async_nats::jetstream::new(client);
    let payload = Bytes::from(format!("{{\"order\":42,\"pad\":\"{}\"}}", "x".repeat(230)));
    let lat_topic = format!("{bus}.latency");
    let publish_uri = format!("http://{}/v1/publish/{bus}/{lat_topic}", publisher.outbound);
    let through_sidecar = || {
        let req = http::Request::post(&publish_uri)
            .header("content-type", "application/json")
            .header("ce-type", "com.example.order.created")
            .body(Full::new(payload.clone()));
        async {
            let res = http.request(req?).await?;
            if res.status() != 204 {
                bail!("publish through the sidecar answered {}", res.status());
            }
            Ok(())
        }
    };
    // The sidecar creates the stream on its first publish; then both publish to it.
    through_sidecar().await?;
    eprintln!("publish latency: {count} publishes each way, interleaved");
    let (mut direct, mut sidecar_ms) = (Vec::new(), Vec::new());
    for i in 0..count + 500 {
        let t = Instant::now();
        js.publish(lat_topic.clone(), payload.clone())
            .await?
            .await?;
        let d = t.elapsed();
        let t = Instant::now();
        through_sidecar().await?;
        let s = t.elapsed();
        if i >= 500 {
            direct.push(d);
            sidecar_ms.push(s);
        }
    }
    direct.sort();
    sidecar_ms.sort();

    eprintln!("delivery: {events} events into JetStream, delivered to the app by one sidecar");
    let topic = format!("{bus}.deliver");
    let cpu_before = cpu_seconds(subscriber.child.id())?;
    let start = Instant::now();
    let mut acks = Vec::with_capacity(256);
    for i in 0..events {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("ce-specversion", "1.0");
        headers.insert("ce-id", format!("bench-{i}").as_str());
        headers.insert("ce-source", "bench");
        headers.insert("ce-type", "com.example.order.created");
        headers.insert("content-type", "application/json");
        acks.push(
            js.publish_with_headers(topic.clone(), headers, payload.clone())
                .await?,
        );
        if acks.len() == 256 {
            for a in acks.drain(..) {
                a.await?;
            }
        }
    }
    for a in acks.drain(..) {
        a.await?;
    }
    let published_in = start.elapsed();
    let deadline = start + Duration::from_secs(300);
    while delivered.load(Ordering::Relaxed) < events {
        if Instant::now() > deadline {
            bail!(
                "only {} of {events} events delivered within 300 s",
                delivered.load(Ordering::Relaxed)
            );
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), arrived.notified()).await;
    }
    let elapsed = start.elapsed();
    let cpu = cpu_seconds(subscriber.child.id())? - cpu_before;
    let rate = events as f64 / elapsed.as_secs_f64();
    let (d50, d99) = (percentile(&direct, 0.5), percentile(&direct, 0.99));
    let (s50, s99) = (percentile(&sidecar_ms, 0.5), percentile(&sidecar_ms, 0.99));
    println!(
        "{}",
        serde_json::json!({
            "scenario": "bridge", "broker": "nats-jetstream", "publishes": count,
            "directP50Ms": (d50 * 1000.0).round() / 1000.0, "directP99Ms": (d99 * 1000.0).round() / 1000.0,
            "sidecarP50Ms": (s50 * 1000.0).round() / 1000.0, "sidecarP99Ms": (s99 * 1000.0).round() / 1000.0,
            "addedP50Ms": ((s50 - d50) * 1000.0).round() / 1000.0, "addedP99Ms": ((s99 - d99) * 1000.0).round() / 1000.0,
            "events": events, "maxInFlight": max_in_flight,
            "publishedInSeconds": (published_in.as_secs_f64() * 100.0).round() / 100.0,
            "deliveredPerSecond": rate.round(),
            "sidecarCpuSeconds": (cpu * 100.0).round() / 100.0,
            "sidecarCpuSecondsPer10kEvents": (cpu / events as f64 * 10_000.0 * 1000.0).round() / 1000.0,
        })
    );
    drop((publisher, subscriber));
    Ok(())
}
