//! `ieum run` and `ieum sidecar`: the sidecar's lifecycle around the data plane
//! (`ieum-proxy`): first snapshot, the app's environment, local health, registration,
//! heartbeats, drain and exit codes. Also where the data plane's options come from: the
//! egress mode (`--egress`, `IEUM_EGRESS`), the app's protocol (`--app-protocol`), opaque
//! TCP forwards (`--tcp`), and span export from the standard `OTEL_*` variables
//! (`docs/sidecar.md`). Event subscriptions (`docs/bridge.md`) are activated once the app
//! is healthy, and the instance is registered only when they are all active, so nothing
//! published after it is `up` is missed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration as StdDuration;

use anyhow::Context as _;
use ieum_model::instance::Protocol;
use ieum_model::{Duration, InstanceRegistration, Name};
use ieum_proxy::{
    AppProtocol, BridgeOptions, Egress, OtlpConfig, Sidecar, SidecarConfig, TcpForward,
};
use reqwest::Method;

use crate::cli::Context;
use crate::client::{Client, Failure};

/// Flags shared by `ieum run` and `ieum sidecar`.
#[derive(Debug, clap::Args)]
pub(crate) struct SidecarArgs {
    /// The service this instance belongs to.
    #[arg(long)]
    service: String,
    /// The port the app listens on (on 127.0.0.1).
    #[arg(long)]
    app_port: u16,
    /// Availability zone of this instance.
    #[arg(long)]
    zone: Option<String>,
    /// Region of this instance.
    #[arg(long)]
    region: Option<String>,
    /// Version of the app's code (canary routes select on it).
    #[arg(long)]
    version: Option<String>,
    /// Check the app with `GET PATH` (2xx is healthy) instead of a TCP connect.
    #[arg(long)]
    app_health_path: Option<String>,
    /// Address other sidecars use to reach this one (default: the inbound listener's).
    #[arg(long)]
    advertise_address: Option<IpAddr>,
    /// Outbound listener: the app's HTTP proxy and the sidecar's own API.
    #[arg(long, default_value = "127.0.0.1:7710")]
    outbound: SocketAddr,
    /// Inbound listener: other sidecars call this one here.
    #[arg(long, default_value = "127.0.0.1:7711")]
    inbound: SocketAddr,
    /// Admin listener: /ready, /metrics, /config, /endpoints.
    #[arg(long, default_value = "127.0.0.1:7719")]
    admin: SocketAddr,
    /// Longest wait for the first configuration snapshot (a saved one counts).
    #[arg(long, default_value = "30s")]
    snapshot_wait: Duration,
    /// Where the last snapshot is kept, so a restart works with the server down.
    #[arg(long, default_value = "./ieum-data")]
    data_dir: PathBuf,
    /// Lease of the registration; heartbeats go three times per lease.
    #[arg(long, default_value = "15s")]
    ttl: Duration,
    /// How often golden signals and breaker transitions are reported to the server.
    #[arg(long, default_value = "10s")]
    report_every: Duration,
    /// Longest wait for in-flight requests when stopping.
    #[arg(long, default_value = "10s")]
    drain_grace: Duration,
    /// Threads the proxy runs on. One (the default, like Linkerd's proxy) keeps the
    /// sidecar cheap beside its app and avoids cross-thread hand-offs; 0 means one per
    /// available core.
    #[arg(long, default_value_t = 1, env = "IEUM_PROXY_THREADS")]
    threads: usize,
    /// Destinations outside the registry: `allow` forwards them as a plain HTTP proxy
    /// (and tunnels CONNECT); `registry-only` answers 403 naming the host, so the app can
    /// only reach registered services.
    #[arg(
        long,
        env = "IEUM_EGRESS",
        default_value = "allow",
        value_name = "allow|registry-only"
    )]
    egress: Egress,
    /// What the app speaks on --app-port: `http` (requests proxied one by one) or `tcp`
    /// (opaque: the inbound listener pipes bytes; the instance registers as tcp).
    #[arg(long, default_value = "http", value_name = "http|tcp")]
    app_protocol: AppProtocol,
    /// An opaque TCP listener for the app, LISTEN=SERVICE[:PORT]: connections to LISTEN
    /// are piped to an endpoint of SERVICE picked by the balancer (at PORT instead of
    /// the registered port when given). Repeatable, e.g. --tcp 127.0.0.1:15432=postgres.
    #[arg(long = "tcp", value_name = "LISTEN=SERVICE[:PORT]")]
    tcp: Vec<TcpForward>,
    /// Do not ask the app for the event subscriptions it declares (`GET
    /// /ieum/subscriptions` once it is healthy); `Subscription` resources still apply.
    #[arg(long)]
    no_app_subscriptions: bool,
}

/// `ieum run … -- CMD…`.
#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    sidecar: SidecarArgs,
    /// Do not set HTTP_PROXY and friends for the app (IEUM_OUTBOUND is still set).
    #[arg(long)]
    no_http_proxy: bool,
    /// The app's command line.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

impl SidecarArgs {
    /// The runtime the sidecar runs on (`--threads`).
    pub(crate) fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let mut builder = match self.threads {
            1 => tokio::runtime::Builder::new_current_thread(),
            0 => tokio::runtime::Builder::new_multi_thread(),
            n => {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(n);
                b
            }
        };
        builder.enable_all().build()
    }
}

impl RunArgs {
    /// The runtime the sidecar and the app's supervision run on (`--threads`).
    pub(crate) fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        self.sidecar.runtime()
    }
}

/// Binds `addr` if free, else the same IP with a free port (ports from the design are
/// preferences: a second sidecar on one host must still start).
fn free_or_any(addr: SocketAddr) -> SocketAddr {
    match std::net::TcpListener::bind(addr) {
        Ok(_) => addr,
        Err(_) => SocketAddr::new(addr.ip(), 0),
    }
}

/// The environment that makes the app's HTTP clients use the sidecar (DESIGN: "How an app
/// reaches its sidecar").
pub(crate) fn app_env(
    service: &str,
    outbound: SocketAddr,
    http_proxy: bool,
) -> Vec<(String, String)> {
    let url = format!("http://{outbound}");
    let mut env = vec![
        ("IEUM_OUTBOUND".to_owned(), url.clone()),
        ("IEUM_SERVICE".to_owned(), service.to_owned()),
    ];
    if http_proxy {
        let no_proxy = "localhost,127.0.0.1,::1".to_owned();
        env.extend([
            ("HTTP_PROXY".to_owned(), url.clone()),
            ("http_proxy".to_owned(), url),
            ("NO_PROXY".to_owned(), no_proxy.clone()),
            ("no_proxy".to_owned(), no_proxy),
            ("NODE_USE_ENV_PROXY".to_owned(), "1".to_owned()),
        ]);
        let java = format!(
            "-Dhttp.proxyHost={} -Dhttp.proxyPort={} -Dhttp.nonProxyHosts=localhost|127.0.0.1",
            outbound.ip(),
            outbound.port()
        );
        let java = match std::env::var("JAVA_TOOL_OPTIONS") {
            Ok(existing) if !existing.trim().is_empty() => format!("{existing} {java}"),
            _ => java,
        };
        env.push(("JAVA_TOOL_OPTIONS".to_owned(), java));
    }
    env
}

/// A stable id for this instance: service, host and inbound port.
fn instance_id(service: &str, inbound: SocketAddr) -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "local".into());
    let host: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("{service}-{host}-{}", inbound.port())
}

/// Is the app healthy: its port accepts connections, or its health path answers 2xx.
async fn app_healthy(http: &reqwest::Client, port: u16, path: Option<&str>) -> Result<(), String> {
    let addr = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);
    match path {
        None => tokio::time::timeout(
            StdDuration::from_secs(2),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        .map_err(|_| format!("connecting to {addr} timed out"))?
        .map(|_| ())
        .map_err(|e| format!("connect to {addr}: {e}")),
        Some(path) => {
            let resp = http
                .get(format!("http://{addr}{path}"))
                .timeout(StdDuration::from_secs(2))
                .send()
                .await
                .map_err(|e| format!("GET {path}: {e}"))?;
            if resp.status().is_success() {
                Ok(())
            } else {
                Err(format!("GET {path} answered {}", resp.status()))
            }
        }
    }
}

/// What ended the sidecar's life.
enum End {
    /// SIGTERM or SIGINT.
    Signal,
    /// The app exited with this code.
    AppExited(i32),
}

pub(crate) async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

pub(crate) fn exit_code(status: std::process::ExitStatus) -> i32 {
    #[cfg(unix)]
    if let Some(sig) = std::os::unix::process::ExitStatusExt::signal(&status) {
        return 128 + sig;
    }
    status.code().unwrap_or(1)
}

/// `ieum sidecar`: the sidecar alone; exits 0 after a clean stop.
pub(crate) async fn sidecar(ctx: &Context, args: SidecarArgs) -> anyhow::Result<u8> {
    lifecycle(ctx, args, None).await
}

/// `ieum run`: the sidecar and the app; exits with the app's code.
pub(crate) async fn run(ctx: &Context, args: RunArgs) -> anyhow::Result<u8> {
    let app = (args.command, !args.no_http_proxy);
    lifecycle(ctx, args.sidecar, Some(app)).await
}

async fn lifecycle(
    ctx: &Context,
    args: SidecarArgs,
    app: Option<(Vec<String>, bool)>,
) -> anyhow::Result<u8> {
    let service = Name::parse(&args.service)
        .map_err(|m| Failure::Usage(format!("--service: service name {m}")))?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create the data dir {}", args.data_dir.display()))?;

    // The server's API, verified before anything is sent when it is `https://`.
    let api = Client::new(&ctx.server, ctx.token.clone())?;

    // 1. The workload's identity before anything else talks to the mesh: its certificate
    //    (renewed in place from then on) makes every call between sidecars mTLS, and,
    //    with an `https://` server, is what the sidecar authenticates with from then on.
    let enrolment = crate::enroll::enrolment(
        api,
        service.as_str(),
        &args.data_dir.join(format!("identity-{service}")),
        args.snapshot_wait.get(),
    )
    .await?;
    let api = enrolment.api.clone();
    let mesh = enrolment.mesh.clone();

    // 2. The push stream and the first snapshot, so the app's first call already works.
    let push = ieum_client::Client::start(ieum_client::Options {
        server: ctx.server.clone(),
        client: format!("sidecar {service}"),
        service: Some(service.to_string()),
        // The TCP forwards' services, so their endpoints are there before the first
        // connection.
        calls: args.tcp.iter().map(|f| f.service.clone()).collect(),
        gateway: None,
        snapshot_file: Some(
            args.data_dir
                .join(format!("sidecar-{service}.snapshot.json")),
        ),
        token: api.token(),
        tls: api.tls(),
    });
    let restored = push.snapshot().version > 0;
    if !restored && !push.wait_connected(args.snapshot_wait.get()).await {
        push.shutdown().await;
        let why = push.last_error().unwrap_or_else(|| "no answer".into());
        return Err(Failure::Unreachable(format!(
            "no configuration snapshot from {} within {} and none saved in {} ({why}): start the server, or point --server / IEUM_SERVER at it",
            ctx.server,
            args.snapshot_wait,
            args.data_dir.display()
        ))
        .into());
    }
    if restored && !push.connected() {
        eprintln!(
            "the control plane is unreachable; serving from the snapshot saved in {}",
            args.data_dir.display()
        );
    }

    // 3. The data plane. Spans go where the standard OpenTelemetry variables say; a bad
    //    setting is reported and tracing stays off (the app must still start).
    let otlp = match OtlpConfig::from_env(service.as_str()) {
        Ok(c) => c,
        Err(why) => {
            eprintln!("not exporting spans: {why}");
            None
        }
    };
    let app_addr = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), args.app_port);
    let proxy = Sidecar::start(SidecarConfig {
        service: service.to_string(),
        zone: args.zone.clone(),
        app_addr,
        outbound_listen: free_or_any(args.outbound),
        inbound_listen: free_or_any(args.inbound),
        admin_listen: free_or_any(args.admin),
        client: push.clone(),
        egress: args.egress,
        app_protocol: args.app_protocol,
        tcp: args.tcp.clone(),
        otlp: otlp.clone(),
        // Follows `mesh`: with mTLS on, callers without a mesh identity are denied
        // unless a policy (or `mtls: permissive`) says otherwise.
        enforce_mesh_identity: mesh.is_some(),
        mesh,
    })
    .await
    .context("cannot start the sidecar's listeners")?;
    // `type: memory` PubSubs live in the server this sidecar follows, so every service
    // shares them (docs/bridge.md); the app's saga and flow starts go there too.
    proxy
        .link_server(&ctx.server, api.token(), api.tls())
        .map_err(|e| Failure::Usage(format!("the server {}: {e}", ctx.server)))?;
    let (outbound, inbound, admin) = (
        proxy.outbound_addr(),
        proxy.inbound_addr(),
        proxy.admin_addr(),
    );
    eprintln!("ieum sidecar for {service}");
    eprintln!("  outbound  http://{outbound}  (the app's HTTP proxy; IEUM_OUTBOUND)");
    eprintln!("  inbound   {inbound}  -> app 127.0.0.1:{}", args.app_port);
    eprintln!("  admin     http://{admin}/ready  /metrics  /config  /endpoints");
    for (f, addr) in args.tcp.iter().zip(proxy.tcp_addrs()) {
        eprintln!("  tcp       {addr}  -> {} (opaque)", f.service);
    }
    if args.egress == Egress::RegistryOnly {
        eprintln!("  egress    registry-only: calls outside registered services get 403");
    }
    if let Some(o) = &otlp {
        eprintln!("  traces    {} ({:?})", o.endpoint, o.protocol);
    }

    // 4. The app, in its own process group so a terminal's Ctrl-C reaches the sidecar
    //    first and the app is stopped only after the drain.
    let mut child = match &app {
        Some((command, http_proxy)) => {
            let mut cmd = tokio::process::Command::new(&command[0]);
            cmd.args(&command[1..])
                .envs(app_env(service.as_str(), outbound, *http_proxy))
                .stdin(Stdio::null());
            #[cfg(unix)]
            cmd.process_group(0);
            Some(
                cmd.spawn()
                    .with_context(|| format!("cannot start `{}`", command.join(" ")))?,
            )
        }
        None => None,
    };

    let local = reqwest::Client::builder().no_proxy().build()?;
    let health_path = args.app_health_path.as_deref();
    let address = args
        .advertise_address
        .unwrap_or_else(|| match inbound.ip() {
            ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            ip => ip,
        });
    let id = instance_id(service.as_str(), inbound);
    let mut reg = InstanceRegistration::new(address.to_string(), inbound.port());
    reg.id = Some(id.clone());
    reg.ttl = args.ttl;
    reg.zone = args.zone.clone();
    reg.region = args.region.clone();
    reg.version = args.version.clone();
    reg.platform = Some("local".into());
    if args.app_protocol == AppProtocol::Tcp {
        reg.protocol = Protocol::Tcp;
    }
    reg.metadata
        .insert("appPort".into(), args.app_port.to_string());
    reg.metadata.insert("sidecar".into(), "ieum".into());
    // Callers verify this identity over mTLS (no identity: they call in plain text).
    if let Some(uri) = proxy.identity_uri() {
        reg.metadata.insert("identity".into(), uri);
    }
    let instances = format!("/v1/services/{service}/instances");
    let me = format!("{instances}/{id}");

    // 5. Wait for the app to be healthy, then for its event subscriptions to be active,
    //    then register; heartbeat while it stays healthy.
    let mut registered = false;
    let mut subscriptions_started = false;
    let mut reported_down = false;
    let mut waiting_since = tokio::time::Instant::now();
    let every = (args.ttl.get() / 3).max(StdDuration::from_millis(200));
    let mut tick = tokio::time::interval(StdDuration::from_millis(200));
    // Listen for signals once, for the whole life of the sidecar, so none is missed.
    let stop = tokio_util::sync::CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        signal().await;
        on_signal.cancel();
    });
    let mut report_tick = tokio::time::interval(args.report_every.get());
    report_tick.tick().await;
    let mut reporter = Reporter::new(&proxy);
    let end = loop {
        let exited = async {
            match child.as_mut() {
                Some(c) => c.wait().await.map(exit_code).unwrap_or(1),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = stop.cancelled() => break End::Signal,
            code = exited => break End::AppExited(code),
            _ = tick.tick() => {}
            _ = report_tick.tick() => {
                if registered {
                    reporter.send(&proxy, &api, &format!("{me}/telemetry"), args.report_every).await;
                }
                continue;
            }
        }
        let health = app_healthy(&local, args.app_port, health_path).await;
        proxy.set_app_healthy(health.is_ok());
        match (health, registered) {
            (Ok(()), false) => {
                if !subscriptions_started {
                    let start = proxy
                        .start_subscriptions(BridgeOptions {
                            consumer: id.clone(),
                            ask_app: !args.no_app_subscriptions,
                        })
                        .await;
                    for w in &start.warnings {
                        eprintln!("subscriptions: {w}");
                    }
                    if start.declared_by_app > 0 {
                        eprintln!("the app declared {} subscription(s)", start.declared_by_app);
                    }
                    subscriptions_started = true;
                }
                if let Err(why) = proxy.subscriptions_ready(StdDuration::ZERO).await {
                    if waiting_since.elapsed() > StdDuration::from_secs(5) {
                        eprintln!("not registering until subscriptions are active: {why}");
                        waiting_since = tokio::time::Instant::now();
                    }
                    continue;
                }
                match api
                    .write::<serde_json::Value>(Method::POST, &instances, Some(&reg))
                    .await
                {
                    Ok(_) => {
                        registered = true;
                        eprintln!(
                            "app healthy; registered {service}/{id} at {address}:{}",
                            inbound.port()
                        );
                        tick = tokio::time::interval(every);
                        tick.tick().await;
                    }
                    Err(e) => eprintln!("cannot register yet (will retry): {e}"),
                }
            }
            (Err(why), false) => {
                if waiting_since.elapsed() > StdDuration::from_secs(5) {
                    eprintln!("waiting for the app to be healthy: {why}");
                    waiting_since = tokio::time::Instant::now();
                }
            }
            (Ok(()), true) => {
                match api
                    .write::<serde_json::Value>(
                        Method::PUT,
                        &format!("{me}/heartbeat"),
                        None::<&()>,
                    )
                    .await
                {
                    Ok(_) => {
                        if reported_down {
                            eprintln!("app healthy again");
                            reported_down = false;
                        }
                    }
                    Err(e) if e.is_not_found() => {
                        eprintln!("the server no longer knows {service}/{id}; registering again");
                        let _ = api
                            .write::<serde_json::Value>(Method::POST, &instances, Some(&reg))
                            .await;
                    }
                    Err(e) => eprintln!("heartbeat failed (will retry): {e}"),
                }
            }
            (Err(why), true) => {
                if !reported_down {
                    eprintln!("app unhealthy: {why}");
                    let body = serde_json::json!({"state": "down", "reason": format!("local check failed: {why}")});
                    if api
                        .write::<serde_json::Value>(
                            Method::PUT,
                            &format!("{me}/state"),
                            Some(&body),
                        )
                        .await
                        .is_ok()
                    {
                        reported_down = true;
                    }
                }
            }
        }
    };

    // 6. Stop: drain, deregister, stop the app.
    let code = match end {
        End::Signal => {
            eprintln!("stopping: draining, then deregistering {service}/{id}");
            if registered {
                let body = serde_json::json!({"state": "draining"});
                let _ = api
                    .write::<serde_json::Value>(Method::PUT, &format!("{me}/state"), Some(&body))
                    .await;
            }
            proxy.drain(args.drain_grace.get()).await;
            if registered {
                let _ = api
                    .write::<serde_json::Value>(Method::DELETE, &me, None::<&()>)
                    .await;
            }
            match child.as_mut() {
                Some(c) => stop_app(c, args.drain_grace.get()).await,
                None => 0,
            }
        }
        End::AppExited(code) => {
            eprintln!("the app exited with code {code}");
            if registered || code != 0 {
                if !registered {
                    // Record why on the timeline even if it never became healthy.
                    let _ = api
                        .write::<serde_json::Value>(Method::POST, &instances, Some(&reg))
                        .await;
                }
                if code != 0 {
                    let body = serde_json::json!({"state": "down", "reason": format!("app exited with code {code}")});
                    let _ = api
                        .write::<serde_json::Value>(
                            Method::PUT,
                            &format!("{me}/state"),
                            Some(&body),
                        )
                        .await;
                }
                let _ = api
                    .write::<serde_json::Value>(Method::DELETE, &me, None::<&()>)
                    .await;
            }
            proxy.drain(StdDuration::ZERO).await;
            code
        }
    };
    proxy.flush_traces(StdDuration::from_secs(2)).await;
    push.shutdown().await;
    Ok(u8::try_from(code.clamp(0, 255)).unwrap_or(1))
}

/// Turns the data plane's counters and breaker transitions into telemetry reports.
struct Reporter {
    previous: std::collections::HashMap<(&'static str, String, String), ieum_proxy::Traffic>,
    /// The last sample of each topic line's cumulative counts, to send differences.
    previous_topics:
        std::collections::HashMap<(String, String, &'static str), ieum_proxy::TopicTraffic>,
    breakers: tokio::sync::broadcast::Receiver<ieum_resilience::breaker::reporter::Report>,
}

impl Reporter {
    fn new(proxy: &Sidecar) -> Self {
        Reporter {
            previous: Default::default(),
            previous_topics: Default::default(),
            breakers: proxy.breaker_reports(),
        }
    }

    async fn send(&mut self, proxy: &Sidecar, api: &Client, path: &str, window: Duration) {
        let mut signals = Vec::new();
        for t in proxy.traffic() {
            let key = (t.direction, t.dst_service.clone(), t.route.clone());
            let before = self.previous.get(&key);
            let requests = t.requests.saturating_sub(before.map_or(0, |b| b.requests));
            if requests > 0 {
                let g = t.since(before, window.get());
                signals.push(ieum_model::telemetry::Signals {
                    direction: t.direction.to_owned(),
                    destination: t.dst_service.clone(),
                    route: t.route.clone(),
                    requests,
                    requests_per_second: g.requests_per_second,
                    success_rate: g.success_rate,
                    p50_ms: g.p50_ms,
                    p99_ms: g.p99_ms,
                });
            }
            self.previous.insert(key, t);
        }
        let topics = self.topic_lines(proxy.topic_traffic());
        let mut breakers = Vec::new();
        while let Ok(r) = self.breakers.try_recv() {
            let t = r.transition;
            breakers.push(ieum_model::telemetry::BreakerChange {
                destination: t.id.destination.to_string(),
                endpoint: t.id.endpoint.as_ref().map(|e| e.to_string()),
                from: t.from.as_str().to_owned(),
                to: t.to.as_str().to_owned(),
                reason: t.reason,
                coalesced: r.coalesced,
            });
        }
        signals.truncate(ieum_model::telemetry::MAX_SIGNALS);
        breakers.truncate(ieum_model::telemetry::MAX_BREAKER_CHANGES);
        let (events, left_out) = proxy.take_event_records();
        if left_out > 0 {
            tracing::debug!(
                left_out,
                "more single events than one report holds: the rest are only counted"
            );
        }
        let (mut denials, denials_left_out) = proxy.take_denials();
        denials.truncate(ieum_model::telemetry::MAX_DENIALS);
        if denials_left_out > 0 {
            tracing::debug!(
                left_out = denials_left_out,
                "more kinds of denied calls than one report holds: the rest are only counted in /metrics"
            );
        }
        if signals.is_empty()
            && breakers.is_empty()
            && topics.is_empty()
            && events.is_empty()
            && denials.is_empty()
        {
            return;
        }
        let report = ieum_model::telemetry::TelemetryReport {
            window,
            signals,
            breakers,
            topics,
            events,
            denials,
        };
        if let Err(e) = api
            .write::<serde_json::Value>(Method::POST, path, Some(&report))
            .await
        {
            tracing::debug!(error = %e, "could not report telemetry");
        }
    }
}

impl Reporter {
    /// The counts of each topic line since the previous sample (lines without any are
    /// left out), remembering this sample for the next.
    fn topic_lines(
        &mut self,
        sample: Vec<ieum_proxy::TopicTraffic>,
    ) -> Vec<ieum_model::telemetry::TopicSignals> {
        let mut lines = Vec::new();
        for t in sample {
            let key = (t.pubsub.clone(), t.topic.clone(), t.direction);
            let before = self.previous_topics.get(&key);
            let since =
                |f: fn(&ieum_proxy::TopicTraffic) -> u64| f(&t).saturating_sub(before.map_or(0, f));
            let line = ieum_model::telemetry::TopicSignals {
                pubsub: t.pubsub.clone(),
                topic: t.topic.clone(),
                // The data plane says outbound/inbound; reports say what the app did.
                direction: if t.direction == "outbound" {
                    "publish"
                } else {
                    "consume"
                }
                .to_owned(),
                published: since(|t| t.published),
                delivered: since(|t| t.delivered),
                retried: since(|t| t.retried),
                dropped: since(|t| t.dropped),
                dead_lettered: since(|t| t.dead_lettered),
                failed: since(|t| t.publish_failed),
            };
            let any = line.published
                + line.delivered
                + line.retried
                + line.dropped
                + line.dead_lettered
                + line.failed
                > 0;
            if any && lines.len() < ieum_model::telemetry::MAX_TOPICS {
                lines.push(line);
            }
            self.previous_topics.insert(key, t);
        }
        lines
    }
}

/// SIGTERM to the app's process group, then SIGKILL after `grace`.
async fn stop_app(child: &mut tokio::process::Child, grace: StdDuration) -> i32 {
    #[cfg(unix)]
    if let Some(pid) = child.id() {
        crate::process::terminate(crate::process::Target::Group(pid));
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(Ok(status)) => exit_code(status),
        _ => {
            let _ = child.kill().await;
            child.wait().await.map(exit_code).unwrap_or(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_app_environment_points_every_client_stack_at_the_sidecar() {
        let env: std::collections::BTreeMap<_, _> =
            app_env("orders", "127.0.0.1:7710".parse().unwrap(), true)
                .into_iter()
                .collect();
        assert_eq!(env["IEUM_OUTBOUND"], "http://127.0.0.1:7710");
        assert_eq!(env["HTTP_PROXY"], "http://127.0.0.1:7710");
        assert_eq!(env["http_proxy"], "http://127.0.0.1:7710");
        assert_eq!(env["NO_PROXY"], "localhost,127.0.0.1,::1");
        assert_eq!(env["no_proxy"], env["NO_PROXY"]);
        assert_eq!(env["NODE_USE_ENV_PROXY"], "1");
        assert!(
            env["JAVA_TOOL_OPTIONS"].contains("-Dhttp.proxyHost=127.0.0.1 -Dhttp.proxyPort=7710")
        );
        let bare: Vec<_> = app_env("orders", "127.0.0.1:7710".parse().unwrap(), false)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(bare, ["IEUM_OUTBOUND", "IEUM_SERVICE"]);
    }

    #[test]
    fn topic_reports_carry_differences_of_the_counters() {
        let mut reporter = Reporter {
            previous: Default::default(),
            previous_topics: Default::default(),
            breakers: tokio::sync::broadcast::channel(1).1,
        };
        let sample = |published, failed, delivered, dead_lettered| {
            vec![
                ieum_proxy::TopicTraffic {
                    pubsub: "bus".into(),
                    topic: "orders".into(),
                    direction: "outbound",
                    published,
                    publish_failed: failed,
                    delivered: 0,
                    retried: 0,
                    dropped: 0,
                    dead_lettered: 0,
                },
                ieum_proxy::TopicTraffic {
                    pubsub: "bus".into(),
                    topic: "orders".into(),
                    direction: "inbound",
                    published: 0,
                    publish_failed: 0,
                    delivered,
                    retried: 0,
                    dropped: 0,
                    dead_lettered,
                },
            ]
        };
        let first = reporter.topic_lines(sample(10, 1, 4, 0));
        assert_eq!(first.len(), 2);
        assert_eq!(
            (
                first[0].direction.as_str(),
                first[0].published,
                first[0].failed
            ),
            ("publish", 10, 1)
        );
        assert_eq!(
            (first[1].direction.as_str(), first[1].delivered),
            ("consume", 4)
        );
        // Only what happened since: 5 more publishes; nothing new delivered, so that line
        // is left out.
        let second = reporter.topic_lines(sample(15, 1, 4, 0));
        assert_eq!(second.len(), 1, "{second:?}");
        assert_eq!((second[0].published, second[0].failed), (5, 0));
        let third = reporter.topic_lines(sample(15, 1, 6, 2));
        assert_eq!(
            (
                third[0].direction.as_str(),
                third[0].delivered,
                third[0].dead_lettered
            ),
            ("consume", 2, 2)
        );
    }

    #[test]
    fn instance_ids_are_valid() {
        let id = instance_id("orders", "127.0.0.1:7711".parse().unwrap());
        assert!(ieum_model::instance::valid_instance_id(&id), "{id}");
        assert!(id.starts_with("orders-") && id.ends_with("-7711"));
    }
}
