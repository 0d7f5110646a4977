//! `ieum demo`: the whole system in one command. A server on a temporary data dir, the
//! example shop of `demo/apps.rs` (each instance a real `ieum run` process with its app),
//! its configuration (`demo/shop.yaml`), steady load, an event flow (orders → shipping
//! through a `memory` PubSub the server hosts) and a little injected failure.
//! Ctrl-C stops the instances first (they drain and deregister), then the server.
//!
//! Every process is this same binary, so `cargo run --release -- demo` needs nothing else.
//! Each runs in its own process group: a Ctrl-C in the terminal reaches only the demo,
//! which then stops the others in order.

pub(crate) mod apps;

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration as StdDuration;

use anyhow::Context as _;
use ieum_model::ServiceSummary;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::cli::Context;
use crate::client::Client;
use crate::output::Format;
use apps::Shop;

/// `ieum demo` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// Address of the server's API and UI (another free port is used when it is taken).
    #[arg(long, default_value = "127.0.0.1:7700")]
    listen: SocketAddr,
    /// Keep data and logs here instead of a temporary folder removed on exit.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Checkouts per second from the synthetic shoppers.
    #[arg(long, default_value_t = 5.0)]
    rate: f64,
    /// Show every process's log here instead of writing it to files.
    #[arg(long)]
    verbose: bool,
}

/// The configuration applied on start.
const SHOP: &str = include_str!("demo/shop.yaml");

/// One instance of the shop: the service, its zone and version.
#[derive(Debug, Clone, Copy)]
struct Member {
    service: Shop,
    zone: &'static str,
    version: &'static str,
}

const fn member(service: Shop, zone: &'static str, version: &'static str) -> Member {
    Member {
        service,
        zone,
        version,
    }
}

/// The shop's instances, callees first; the shopper starts once the others are up.
const FLEET: [Member; 7] = [
    member(Shop::Stock, "zone-a", "1.0.3"),
    member(Shop::Stock, "zone-b", "1.0.3"),
    member(Shop::Payments, "zone-a", "3.2.0"),
    member(Shop::Shipping, "zone-b", "0.9.1"),
    member(Shop::Orders, "zone-a", "2.1.0"),
    member(Shop::Orders, "zone-b", "2.1.0"),
    member(Shop::Frontend, "zone-a", "1.4.0"),
];
const SHOPPER: Member = member(Shop::Shopper, "zone-a", "1.0.0");

/// Where the demo keeps its files; a temporary folder is removed on drop.
enum DataDir {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl DataDir {
    fn path(&self) -> &Path {
        match self {
            DataDir::Temp(t) => t.path(),
            DataDir::Kept(p) => p,
        }
    }
}

/// A running child process of the demo.
struct Proc {
    label: String,
    pid: Option<u32>,
    log: PathBuf,
}

/// Starts children and learns when they exit.
struct Supervisor {
    exe: PathBuf,
    dir: PathBuf,
    verbose: bool,
    server: String,
    exits: mpsc::UnboundedSender<(usize, i32)>,
    procs: Vec<Proc>,
}

impl Supervisor {
    /// Starts `exe ARGS` in its own process group, its output in `logs/LABEL.log`; `slot`
    /// reuses the place of a process that exited.
    fn spawn(&mut self, label: &str, args: &[String], slot: Option<usize>) -> anyhow::Result<()> {
        let log = self.dir.join("logs").join(format!("{label}.log"));
        let mut cmd = Command::new(&self.exe);
        cmd.args(args)
            .stdin(Stdio::null())
            .env(crate::EXIT_WITH_PARENT, "1")
            .process_group(0);
        if self.verbose {
            cmd.stdout(Stdio::inherit()).stderr(Stdio::inherit());
        } else {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .with_context(|| format!("cannot write {}", log.display()))?;
            cmd.stdout(file.try_clone()?).stderr(file);
        }
        let mut child: Child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", self.exe.display()))?;
        let index = slot.unwrap_or(self.procs.len());
        let proc = Proc {
            label: label.to_owned(),
            pid: child.id(),
            log,
        };
        match slot {
            Some(i) => self.procs[i] = proc,
            None => self.procs.push(proc),
        }
        let exits = self.exits.clone();
        tokio::spawn(async move {
            let code = child
                .wait()
                .await
                .map(crate::sidecar::exit_code)
                .unwrap_or(1);
            let _ = exits.send((index, code));
        });
        Ok(())
    }

    /// Starts one shop instance under `ieum run`.
    fn spawn_member(
        &mut self,
        m: Member,
        n: usize,
        rate: f64,
        slot: Option<usize>,
    ) -> anyhow::Result<()> {
        let port = free_port()?;
        let name = m.service.name();
        let label = format!("{name}-{n}");
        let mut args: Vec<String> = [
            "--server",
            &self.server,
            "run",
            "--service",
            name,
            "--app-port",
            &port.to_string(),
            "--zone",
            m.zone,
            "--region",
            "demo",
            "--version",
            m.version,
            "--app-health-path",
            "/health",
            "--outbound",
            "127.0.0.1:0",
            "--inbound",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--report-every",
            "5s",
            "--data-dir",
        ]
        .map(str::to_owned)
        .to_vec();
        args.push(self.dir.join("sidecars").join(&label).display().to_string());
        args.extend(["--", "demo-app", name, "--port"].map(str::to_owned));
        args.push(port.to_string());
        if m.service == Shop::Shopper {
            args.extend(["--rate".to_owned(), rate.to_string()]);
            args.extend(["--saga-server".to_owned(), self.server.clone()]);
        }
        let exe = self.exe.display().to_string();
        // `ieum run` starts the app with the command after `--`: this binary again.
        let dash = args.iter().position(|a| a == "--").unwrap_or(args.len());
        args.insert(dash + 1, exe);
        self.spawn(&label, &args, slot)
    }

    /// SIGTERM to every child matching `which`.
    fn terminate(&self, which: impl Fn(&Proc) -> bool) {
        for p in self.procs.iter().filter(|p| which(p)) {
            if let Some(pid) = p.pid {
                crate::process::terminate(crate::process::Target::Process(pid));
            }
        }
    }
}

/// A free port on loopback (free now; the app binds it a moment later).
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// `ieum demo`.
pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let data = match &args.data_dir {
        Some(p) => DataDir::Kept(p.clone()),
        None => DataDir::Temp(
            tempfile::Builder::new()
                .prefix("ieum-demo-")
                .tempdir()
                .context("cannot create a temporary folder")?,
        ),
    };
    let dir = data.path().to_owned();
    std::fs::create_dir_all(dir.join("logs"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let mut listen = args.listen;
    if TcpListener::bind(listen).is_err() {
        let port = free_port()?;
        eprintln!("{listen} is taken; the demo's server uses port {port}");
        listen.set_port(port);
    }
    let server = format!("http://{listen}");
    let (tx, mut exits) = mpsc::unbounded_channel();
    let mut sup = Supervisor {
        exe: std::env::current_exe().context("cannot find this program's path")?,
        dir: dir.clone(),
        verbose: args.verbose,
        server: server.clone(),
        exits: tx,
        procs: Vec::new(),
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        crate::sidecar::signal().await;
        on_signal.cancel();
    });

    let result = start_and_watch(&mut sup, &args, &data, &mut exits, &stop).await;
    shut_down(&mut sup, &mut exits).await;
    if let DataDir::Kept(p) = &data {
        eprintln!("data and logs kept in {}", p.display());
    }
    result
}

async fn start_and_watch(
    sup: &mut Supervisor,
    args: &DemoArgs,
    data: &DataDir,
    exits: &mut mpsc::UnboundedReceiver<(usize, i32)>,
    stop: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let dir = data.path();
    let api = Client::new(&sup.server, None)?;
    let started = Instant::now();
    eprint!("starting the server … ");
    let server_args = [
        "server",
        "--dev",
        "--listen",
        &sup.server["http://".len()..],
        "--data-dir",
    ]
    .map(str::to_owned)
    .into_iter()
    .chain([dir.join("server").display().to_string()])
    .collect::<Vec<_>>();
    sup.spawn("server", &server_args, None)?;
    wait_until(stop, exits, StdDuration::from_secs(30), || async {
        api.get::<serde_json::Value>("/v1/status").await.is_ok()
    })
    .await
    .map_err(|e| {
        e.context(format!(
            "the server did not start (see {})",
            sup.procs[0].log.display()
        ))
    })?;
    eprintln!("ok ({:.1} s)", started.elapsed().as_secs_f64());

    eprint!("applying the shop's configuration … ");
    let ctx = Context {
        server: sup.server.clone(),
        token: None,
        format: Format::Table,
    };
    let shop = ieum_model::resource::parse_documents(SHOP)
        .map_err(|e| anyhow::anyhow!("the demo configuration is invalid: {e}"))?;
    crate::config_cli::send_apply(&ctx, shop.clone(), false).await?;
    eprintln!("ok ({} resources)", shop.len());

    eprint!("starting {} instances under their sidecars … ", FLEET.len());
    // Slot 0 is the server; instance i is in slot i + 1.
    let members = numbered();
    for &(m, n) in &members[..FLEET.len()] {
        sup.spawn_member(m, n, args.rate, None)?;
    }
    let expected = |s: Shop| FLEET.iter().filter(|m| m.service == s).count();
    let all_up = || async {
        let Ok(list) = api.get::<Vec<ServiceSummary>>("/v1/services").await else {
            return false;
        };
        FLEET.iter().all(|m| {
            list.iter()
                .any(|s| s.name == m.service.name() && s.instances.up >= expected(m.service))
        })
    };
    wait_until(stop, exits, StdDuration::from_secs(60), all_up)
        .await
        .map_err(|e| {
            e.context(format!(
                "the shop did not come up (logs in {})",
                dir.join("logs").display()
            ))
        })?;
    eprintln!("ok ({:.1} s)", started.elapsed().as_secs_f64());
    let (shopper, n) = members[FLEET.len()];
    sup.spawn_member(shopper, n, args.rate, None)?;

    // The API gateway in front of orders, and a key to call it with.
    let gateway_port = free_port()?;
    let gateway_slot = sup.procs.len();
    let gateway_args = gateway_args(&sup.server, gateway_port, dir);
    sup.spawn("gateway", &gateway_args, None)?;
    let key = api
        .write::<serde_json::Value>(
            reqwest::Method::POST,
            "/v1/apikeys",
            Some(&serde_json::json!({"consumer": "newcomer"})),
        )
        .await
        .ok()
        .and_then(|v| v["key"].as_str().map(str::to_owned));
    banner(&sup.server, data, args.rate, gateway_port, key.as_deref());

    // An operator's change a little later, so the configuration page has a diff to show.
    let tune = tune(shop);
    let mut tuned = tune.is_none();
    let tune_at = tokio::time::sleep(StdDuration::from_secs(20));
    tokio::pin!(tune_at);
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = &mut tune_at, if !tuned => {
                tuned = true;
                let change = tune.iter().cloned().collect();
                match crate::config_cli::send_apply(&ctx, change, false).await {
                    Ok(_) => eprintln!("applied a change: ResiliencePolicy/payments-default backendRequest 500ms → 800ms (Configuration page)"),
                    Err(e) => eprintln!("could not apply the configuration change: {e:#}"),
                }
            }
            Some((slot, code)) = exits.recv() => {
                sup.procs[slot].pid = None;
                let label = sup.procs[slot].label.clone();
                let log = sup.procs[slot].log.display().to_string();
                if slot == gateway_slot {
                    eprintln!("the gateway exited with code {code} (log: {log}); starting it again in 5 s");
                    tokio::select! {
                        () = stop.cancelled() => return Ok(()),
                        () = tokio::time::sleep(StdDuration::from_secs(5)) => {}
                    }
                    sup.spawn("gateway", &gateway_args, Some(slot))?;
                    continue;
                }
                let Some(&(m, n)) = slot.checked_sub(1).and_then(|i| members.get(i)) else {
                    anyhow::bail!("the server exited with code {code} (see {log})");
                };
                eprintln!("{label} exited with code {code} (log: {log}); starting it again in 5 s");
                tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    () = tokio::time::sleep(StdDuration::from_secs(5)) => {}
                }
                sup.spawn_member(m, n, args.rate, Some(slot))?;
            }
        }
    }
}

/// Polls `ready` every 100 ms until it holds, the user stops, a child exits, or `limit`.
async fn wait_until<F, Fut>(
    stop: &tokio_util::sync::CancellationToken,
    exits: &mut mpsc::UnboundedReceiver<(usize, i32)>,
    limit: StdDuration,
    ready: F,
) -> anyhow::Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if ready().await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            anyhow::bail!("gave up after {} s", limit.as_secs());
        }
        tokio::select! {
            () = stop.cancelled() => anyhow::bail!("stopped"),
            Some((_, code)) = exits.recv() => anyhow::bail!("a process exited with code {code}"),
            () = tokio::time::sleep(StdDuration::from_millis(100)) => {}
        }
    }
}

/// The configuration change the demo applies once the shop runs.
fn tune(shop: Vec<ieum_model::resource::Resource>) -> Option<ieum_model::resource::Resource> {
    let mut policy = shop
        .into_iter()
        .find(|r| r.kind == "ResiliencePolicy" && r.metadata.name == "payments-default")?;
    policy.spec["timeouts"]["backendRequest"] = "800ms".into();
    Some(policy)
}

/// The fleet then the shopper, each with its number within its service (`stock-2`).
fn numbered() -> Vec<(Member, usize)> {
    let mut out: Vec<(Member, usize)> = Vec::new();
    for m in FLEET.into_iter().chain([SHOPPER]) {
        let n = out.iter().filter(|(o, _)| o.service == m.service).count() + 1;
        out.push((m, n));
    }
    out
}

/// `ieum gateway` for the demo, on `port`.
fn gateway_args(server: &str, port: u16, dir: &std::path::Path) -> Vec<String> {
    [
        "--server",
        server,
        "gateway",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--admin",
        "127.0.0.1:0",
        "--data-dir",
        &dir.join("gateway").display().to_string(),
    ]
    .map(str::to_owned)
    .to_vec()
}

fn banner(server: &str, data: &DataDir, rate: f64, gateway: u16, key: Option<&str>) {
    let dir = data.path().display();
    let kept = match data {
        DataDir::Temp(_) => "removed on exit",
        DataDir::Kept(_) => "kept",
    };
    let mut b = String::from("\nieum demo: a small shop, every instance under its own sidecar\n");
    b += &format!("  UI        {server}/ui\n");
    b += &format!("  API       {server}/v1\n");
    b += "  services  shopper → frontend → orders → stock, payments; shipping (8 instances in 2 zones)\n";
    b += &format!(
        "  sagas     a checkout saga every 3 s (stock, payments, shipping); about one in seven\n            finds no courier and compensates: {server}/ui/sagas\n"
    );
    b += &format!(
        "  events    orders publishes orders.placed to shop-events (a memory PubSub this server\n            hosts); shipping consumes it and asks for a retry now and then: {server}/ui/topics\n"
    );
    b += &format!(
        "  load      {rate} checkouts/s; stock delays 5% of calls by 150 ms and fails 2% with 503;\n            payments has a 20 s provider outage every 2 min, the first 40 s from now\n"
    );
    b += &format!(
        "  gateway   http://127.0.0.1:{gateway}/shop: orders' GET /orders/{{id}} as the API shop-public\n"
    );
    if let Some(key) = key {
        b += &format!(
            "            curl -H 'x-api-key: {key}' http://127.0.0.1:{gateway}/shop/orders/1\n"
        );
    }
    b += &format!("  data      {dir} ({kept}; logs in {dir}/logs)\n");
    b += &format!(
        "try: ieum get services --server {server}    ieum events stock --follow --server {server}\n"
    );
    b += "Ctrl-C stops everything.\n";
    eprint!("{b}");
}

/// Stops the instances (they drain, deregister and stop their apps), then the server.
async fn shut_down(sup: &mut Supervisor, exits: &mut mpsc::UnboundedReceiver<(usize, i32)>) {
    eprintln!("stopping: instances drain and deregister, then the server stops");
    let alive = |sup: &Supervisor| sup.procs.iter().filter(|p| p.pid.is_some()).count();
    for phase in [false, true] {
        // Phase one: every instance (slot > 0); phase two: the server.
        let is_server = |p: &Proc| p.label == "server";
        sup.terminate(|p| p.pid.is_some() && is_server(p) == phase);
        let deadline = Instant::now() + StdDuration::from_secs(15);
        while sup
            .procs
            .iter()
            .any(|p| p.pid.is_some() && is_server(p) == phase)
        {
            match tokio::time::timeout_at(deadline, exits.recv()).await {
                Ok(Some((slot, _))) => sup.procs[slot].pid = None,
                _ => break,
            }
        }
    }
    let left = alive(sup);
    if left > 0 {
        eprintln!("{left} processes did not stop in time; see the logs");
    } else {
        eprintln!("stopped");
    }
}
