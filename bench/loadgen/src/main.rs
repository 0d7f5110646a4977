//! Load generator for the registry benchmarks. It starts `ieum server` itself (so it knows
//! the process to measure), drives it over loopback HTTP, and prints one JSON object of
//! figures per scenario on stdout. Progress goes to stderr.
//!
//! Scenarios:
//! - `register`: registration throughput (instances per second) at a given concurrency.
//! - `heartbeats`: N instances heartbeating every P; the server's CPU (share of one core)
//!   and memory while it holds them.
//! - `watchers`: W blocking queries or SSE streams open on one service; one change; the
//!   time until each watcher has the news (p50/p99/max).
//! - `push`: S services × E endpoints, C push-stream clients each calling K services; one
//!   endpoint change at a time: bytes to affected and unaffected clients, propagation
//!   delay, snapshot sizes, and what a naive full resend would cost.
//! - `handshakes`: new connections per second to a sidecar's inbound listener, plain or
//!   mTLS (the generator enrols like a sidecar).
//! - `bridge`: publish latency through a sidecar vs `async-nats` directly, and delivery
//!   throughput of one sidecar to an app (real `ieum sidecar` processes, NATS JetStream).

#![allow(clippy::print_stdout, reason = "figures are this program's output")]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

#[derive(Debug, Parser)]
struct Args {
    /// The `ieum` binary to benchmark (a release build).
    #[arg(long, default_value = "target/release/ieum")]
    ieum: String,
    /// Extra arguments for `ieum server` (e.g. `--store postgres://…`).
    #[arg(long, allow_hyphen_values = true)]
    server_args: Vec<String>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Registration throughput.
    Register {
        #[arg(long, default_value_t = 20_000)]
        instances: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// Server CPU and memory holding instances with periodic heartbeats.
    Heartbeats {
        #[arg(long, default_value_t = 100_000)]
        instances: usize,
        /// Heartbeat period of each instance, seconds.
        #[arg(long, default_value_t = 10)]
        period: u64,
        /// How long to measure, seconds (after one warm-up period).
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// Push stream: bytes and propagation of one endpoint change to many clients.
    Push {
        #[arg(long, default_value_t = 10_000)]
        services: usize,
        #[arg(long, default_value_t = 5)]
        endpoints: usize,
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        /// Services each client calls.
        #[arg(long, default_value_t = 10)]
        calls: usize,
        /// Endpoint changes to make, one at a time.
        #[arg(long, default_value_t = 20)]
        changes: usize,
    },
    /// A fixed request rate against any URL (no server started): latency p50/p99 and the
    /// CPU the given processes spent, per 100,000 requests.
    FixedRate {
        /// Where to send `GET`s.
        #[arg(long)]
        url: String,
        /// A `Host` header (routes a sidecar's outbound listener).
        #[arg(long)]
        host: Option<String>,
        /// Requests per second.
        #[arg(long, default_value_t = 1000)]
        rate: u32,
        /// How long, seconds.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Processes whose CPU time to measure (comma-separated pids).
        #[arg(long, value_delimiter = ',')]
        pids: Vec<u32>,
    },
    /// The sidecar bridge over NATS JetStream: publish latency through a sidecar vs
    /// async-nats directly, and delivery throughput of one sidecar to an app.
    Bridge {
        /// NATS with JetStream.
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        nats: String,
        /// Publishes each way for the latency figures.
        #[arg(long, default_value_t = 5000)]
        count: usize,
        /// Events for the delivery throughput.
        #[arg(long, default_value_t = 20_000)]
        events: usize,
        /// The subscription's `maxInFlight`.
        #[arg(long, default_value_t = 32)]
        max_in_flight: u32,
    },
    /// New connections per second to a sidecar's inbound listener, one request each, in
    /// plain text or over mTLS as an enrolled mesh workload (no server started).
    Handshakes {
        /// The inbound listener.
        #[arg(long)]
        target: std::net::SocketAddr,
        /// The server to enrol with (mTLS); without it, plain text.
        #[arg(long)]
        mesh_server: Option<String>,
        /// The service behind `target` (its SPIFFE id is checked).
        #[arg(long, default_value = "up")]
        service: String,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// The sidecar's pid, for its CPU.
        #[arg(long)]
        pid: Option<u32>,
    },
    /// Notification latency of many watchers after one change.
    Watchers {
        #[arg(long, default_value_t = 1000)]
        watchers: usize,
        /// `blocking` (long-poll queries) or `sse` (event stream).
        #[arg(long, default_value = "blocking")]
        kind: String,
        /// Repeat the change this many times (figures cover every round).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
}

mod bridge;
mod handshakes;
mod push;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub(crate) struct Server {
    child: Child,
    pub(crate) base: String,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(ieum: &str, extra: &[String]) -> anyhow::Result<Server> {
        let dir = tempfile::tempdir()?;
        let mut child = Command::new(ieum)
            .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {ieum} (build it with cargo build --release)"))?;
        let stderr = child.stderr.take().context("stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let base = loop {
            let Some(line) = lines.next() else {
                bail!("the server exited before its banner")
            };
            let line = line?;
            if let Some(rest) = line.trim().strip_prefix("listening") {
                break format!(
                    "http://{}",
                    rest.split_whitespace().next().context("address")?
                );
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Ok(Server {
            child,
            base,
            _dir: dir,
        })
    }

    /// CPU seconds (user + system) the server has used so far.
    pub(crate) fn cpu_seconds(&self) -> anyhow::Result<f64> {
        cpu_seconds(self.child.id())
    }

    /// Resident memory in MiB.
    pub(crate) fn rss_mib(&self) -> anyhow::Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .context("VmRSS")?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()?;
        Ok(kb / 1024.0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU seconds (user + system) process `pid` has used so far.
pub(crate) fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("stat format")?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}

pub(crate) fn client(max_idle: usize) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(max_idle)
        .build(connector)
}

pub(crate) async fn send(
    c: &HttpClient,
    method: &str,
    uri: &str,
    body: Option<String>,
) -> anyhow::Result<(u16, Bytes)> {
    let req = http::Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let resp = c.request(req).await?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok((status, bytes))
}

fn registration(i: usize, ttl: &str) -> String {
    let zone = ["eu-1", "eu-2", "eu-3"][i % 3];
    serde_json::json!({
        "id": format!("i{i}"),
        "address": format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
        "port": 8080,
        "zone": zone,
        "version": "v1",
        "ttl": ttl,
    })
    .to_string()
}

/// Registers `n` instances spread over `services` services (`svc-0`, `svc-1`, …);
/// returns instances per second.
pub(crate) async fn register_all(
    c: &HttpClient,
    base: &str,
    n: usize,
    services: usize,
    concurrency: usize,
    ttl: &str,
) -> anyhow::Result<f64> {
    let sem = Arc::new(Semaphore::new(concurrency));
    let mut set = JoinSet::new();
    let start = Instant::now();
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await?;
        let (c, uri, body) = (
            c.clone(),
            format!("{base}/v1/services/svc-{}/instances", i % services),
            registration(i, ttl),
        );
        set.spawn(async move {
            let _permit = permit;
            let (status, body) = send(&c, "POST", &uri, Some(body)).await?;
            if status != 201 {
                bail!(
                    "registration answered {status}: {}",
                    String::from_utf8_lossy(&body)
                );
            }
            Ok(())
        });
        while let Some(done) = set.try_join_next() {
            done??;
        }
        if i > 0 && i % 20_000 == 0 {
            eprintln!("  registered {i}");
        }
    }
    while let Some(done) = set.join_next().await {
        done??;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Scenario::FixedRate {
        url,
        host,
        rate,
        seconds,
        pids,
    } = &args.scenario
    {
        return fixed_rate(url, host.as_deref(), *rate, *seconds, pids).await;
    }
    if let Scenario::Handshakes {
        target,
        mesh_server,
        service,
        seconds,
        concurrency,
        pid,
    } = &args.scenario
    {
        return handshakes::run(
            mesh_server.as_deref(),
            service,
            *target,
            *seconds,
            *concurrency,
            *pid,
        )
        .await;
    }
    let server = Server::start(&args.ieum, &args.server_args)?;
    let base = server.base.clone();
    match args.scenario {
        Scenario::FixedRate { .. } | Scenario::Handshakes { .. } => {
            unreachable!("handled above")
        }
        Scenario::Bridge {
            nats,
            count,
            events,
            max_in_flight,
        } => {
            bridge::run(&args.ieum, &base, &nats, count, events, max_in_flight).await?;
        }
        Scenario::Register {
            instances,
            concurrency,
        } => {
            let c = client(concurrency);
            eprintln!("registering {instances} instances, {concurrency} at a time");
            let rate = register_all(&c, &base, instances, 100, concurrency, "60s").await?;
            println!(
                "{}",
                serde_json::json!({"scenario": "register", "instances": instances, "concurrency": concurrency,
                    "registrationsPerSecond": rate.round(), "serverCpuSeconds": server.cpu_seconds()?,
                    "serverRssMiB": server.rss_mib()?.round()})
            );
        }
        Scenario::Heartbeats {
            instances,
            period,
            seconds,
            concurrency,
        } => {
            let c = client(concurrency);
            eprintln!("registering {instances} instances");
            let ttl = format!("{}s", period * 3);
            register_all(&c, &base, instances, 100, concurrency, &ttl).await?;
            let rate = instances as f64 / period as f64;
            eprintln!(
                "heartbeating {instances} instances every {period}s ({rate:.0}/s) for {period}s warm-up + {seconds}s"
            );
            let sem = Arc::new(Semaphore::new(concurrency));
            let tick = Duration::from_millis(10);
            let per_tick = rate * tick.as_secs_f64();
            let total = Duration::from_secs(period + seconds);
            let start = Instant::now();
            let mut interval = tokio::time::interval(tick);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let (mut sent, mut next, mut owed) = (0usize, 0usize, 0.0f64);
            let mut errors = 0usize;
            let mut set = JoinSet::new();
            let mut window: Option<(Instant, f64, usize)> = None;
            while start.elapsed() < total {
                interval.tick().await;
                if window.is_none() && start.elapsed() >= Duration::from_secs(period) {
                    window = Some((Instant::now(), server.cpu_seconds()?, sent));
                }
                owed += per_tick;
                while owed >= 1.0 {
                    owed -= 1.0;
                    let i = next;
                    next = (next + 1) % instances;
                    let permit = sem.clone().acquire_owned().await?;
                    let (c, uri) = (
                        c.clone(),
                        format!(
                            "{base}/v1/services/svc-{}/instances/i{i}/heartbeat",
                            i % 100
                        ),
                    );
                    set.spawn(async move {
                        let _permit = permit;
                        matches!(send(&c, "PUT", &uri, None).await, Ok((200, _)))
                    });
                    sent += 1;
                }
                while let Some(done) = set.try_join_next() {
                    if !done.unwrap_or(false) {
                        errors += 1;
                    }
                }
            }
            while let Some(done) = set.join_next().await {
                if !done.unwrap_or(false) {
                    errors += 1;
                }
            }
            let (w_start, w_cpu, w_sent) = window.context("the warm-up outlasted the run")?;
            let elapsed = w_start.elapsed().as_secs_f64();
            let cpu = (server.cpu_seconds()? - w_cpu) / elapsed;
            let status: serde_json::Value = serde_json::from_slice(
                &send(&c, "GET", &format!("{base}/v1/status"), None).await?.1,
            )?;
            println!(
                "{}",
                serde_json::json!({"scenario": "heartbeats", "instances": instances, "periodSeconds": period,
                    "measuredSeconds": elapsed.round(), "heartbeatsPerSecond": ((sent - w_sent) as f64 / elapsed).round(),
                    "failedHeartbeats": errors, "serverCoreShare": (cpu * 1000.0).round() / 1000.0,
                    "serverRssMiB": server.rss_mib()?.round(), "instancesUp": status["instances"]["up"]})
            );
        }
        Scenario::Push {
            services,
            endpoints,
            clients,
            calls,
            changes,
        } => {
            push::run(&server, services, endpoints, clients, calls, changes).await?;
        }
        Scenario::Watchers {
            watchers,
            kind,
            rounds,
        } => {
            let c = client(0);
            let reg = |id: &str| {
                serde_json::json!({"id": id, "address": "10.0.0.1", "port": 80, "ttl": "1h"})
                    .to_string()
            };
            send(
                &c,
                "POST",
                &format!("{base}/v1/services/watched/instances"),
                Some(reg("w0")),
            )
            .await?;
            let mut all = Vec::new();
            for round in 0..rounds {
                let latencies = watch_round(&base, watchers, &kind, round, &c).await?;
                all.extend(latencies);
            }
            all.sort_by(f64::total_cmp);
            let pct = |p: f64| {
                all[((all.len() as f64 * p).ceil() as usize)
                    .saturating_sub(1)
                    .min(all.len() - 1)]
            };
            println!(
                "{}",
                serde_json::json!({"scenario": "watchers", "kind": kind, "watchers": watchers, "rounds": rounds,
                    "notified": all.len(), "p50Ms": (pct(0.5) * 10.0).round() / 10.0,
                    "p99Ms": (pct(0.99) * 10.0).round() / 10.0, "maxMs": (pct(1.0) * 10.0).round() / 10.0})
            );
        }
    }
    Ok(())
}

/// Opens `n` watchers, makes one change, returns each watcher's delay in milliseconds.
async fn watch_round(
    base: &str,
    n: usize,
    kind: &str,
    round: usize,
    c: &HttpClient,
) -> anyhow::Result<Vec<f64>> {
    let (_, body) = send(
        c,
        "GET",
        &format!("{base}/v1/services/watched/instances"),
        None,
    )
    .await?;
    let _ = body;
    // The index to wait past.
    let req = http::Request::get(format!("{base}/v1/services/watched/instances"))
        .body(Full::new(Bytes::new()))?;
    let index: u64 = c.request(req).await?.headers()["x-ieum-index"]
        .to_str()?
        .parse()?;
    let ready = Arc::new(Semaphore::new(0));
    let (go_tx, go_rx) = tokio::sync::watch::channel(None::<Instant>);
    let mut set = JoinSet::new();
    for _ in 0..n {
        // One connection per watcher, as separate clients would have.
        let c = client(0);
        let (ready, mut go_rx, base, kind) = (
            ready.clone(),
            go_rx.clone(),
            base.to_owned(),
            kind.to_owned(),
        );
        set.spawn(async move {
            let uri = if kind == "sse" {
                format!("{base}/v1/events/stream?service=watched&kind=instance.registered")
            } else {
                format!("{base}/v1/services/watched/instances?index={index}&wait=60s")
            };
            let req = http::Request::get(uri).body(Full::new(Bytes::new()))?;
            if kind == "sse" {
                let resp = c.request(req).await?;
                ready.add_permits(1);
                let mut body = resp.into_body();
                loop {
                    let frame = body.frame().await.context("stream ended")??;
                    if frame.data_ref().is_some_and(|d| {
                        d.starts_with(b"id:") || d.windows(5).any(|w| w == b"data:")
                    }) {
                        break;
                    }
                }
            } else {
                let fut = c.request(req);
                ready.add_permits(1);
                let resp = fut.await?;
                resp.into_body().collect().await?;
            }
            let sent = go_rx
                .wait_for(Option::is_some)
                .await?
                .context("start time")?;
            anyhow::Ok(sent.elapsed().as_secs_f64() * 1000.0)
        });
    }
    // Blocking queries are pending once sent; give the server time to accept and park them
    // all, so the figure is the notification, not connection setup.
    let _ = ready.acquire_many(u32::try_from(n)?).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t0 = Instant::now();
    go_tx.send(Some(t0))?;
    let id = format!("w{}", round + 1);
    let body =
        serde_json::json!({"id": id, "address": "10.0.0.2", "port": 80, "ttl": "1h"}).to_string();
    send(
        c,
        "POST",
        &format!("{base}/v1/services/watched/instances"),
        Some(body),
    )
    .await?;
    let mut out = Vec::with_capacity(n);
    while let Some(done) = set.join_next().await {
        out.push(done??);
    }
    eprintln!("  round {round}: {} {kind} watchers notified", out.len());
    Ok(out)
}

/// Sends `rate` requests per second (open loop: each on schedule, whatever the answers do)
/// for `seconds`, over keep-alive connections; prints latency and CPU per 100k requests.
async fn fixed_rate(
    url: &str,
    host: Option<&str>,
    rate: u32,
    seconds: u64,
    pids: &[u32],
) -> anyhow::Result<()> {
    let c = client(256);
    let total = u64::from(rate) * seconds;
    let every = Duration::from_secs_f64(1.0 / f64::from(rate));
    let cpu_before: Vec<f64> = pids
        .iter()
        .map(|p| cpu_seconds(*p))
        .collect::<Result<_, _>>()?;
    let start = Instant::now();
    let mut set = JoinSet::new();
    for i in 0..total {
        let due = start + every.mul_f64(i as f64);
        tokio::time::sleep_until(due).await;
        let mut req = http::Request::get(url);
        if let Some(h) = host {
            req = req.header("host", h);
        }
        let req = req.body(Full::new(Bytes::new()))?;
        let c = c.clone();
        set.spawn(async move {
            let resp = c.request(req).await.ok()?;
            let ok = resp.status().is_success();
            resp.into_body().collect().await.ok()?;
            ok.then(|| due.elapsed().as_secs_f64() * 1000.0)
        });
    }
    let mut latencies = Vec::with_capacity(total as usize);
    let mut failed = 0;
    while let Some(r) = set.join_next().await {
        match r.ok().flatten() {
            Some(ms) => latencies.push(ms),
            None => failed += 1,
        }
    }
    let cpu: f64 = pids
        .iter()
        .zip(&cpu_before)
        .map(|(p, b)| cpu_seconds(*p).map(|a| a - b))
        .sum::<Result<f64, _>>()?;
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "{}",
        serde_json::json!({"scenario": "fixed-rate", "url": url, "rate": rate, "requests": total, "failed": failed,
            "p50Ms": (pct(0.5) * 1000.0).round() / 1000.0, "p99Ms": (pct(0.99) * 1000.0).round() / 1000.0,
            "cpuSecondsPer100k": (cpu / total as f64 * 100_000.0 * 100.0).round() / 100.0})
    );
    Ok(())
}
