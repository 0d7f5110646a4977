//! `ieum server`: opens the store, restores the registry, serves the API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use ieum_control::{AppState, Auth};
use ieum_model::Duration;
use ieum_registry::{Options, Registry, SystemClock};
use tokio_util::sync::CancellationToken;

/// `ieum server` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct ServerArgs {
    /// Address of the API and the UI. Off loopback, writes need a token.
    #[arg(long, default_value = "127.0.0.1:7700")]
    listen: SocketAddr,
    /// Where the embedded database and the admin token live.
    #[arg(long, default_value = "./ieum-data")]
    data_dir: PathBuf,
    /// Storage URL: `sqlite://PATH` (default: a file in --data-dir) or
    /// `postgres://USER@HOST:PORT/DB` for several server replicas.
    #[arg(long, env = "IEUM_STORE")]
    store: Option<String>,
    /// Development mode: loopback only, says it is not for production.
    #[arg(long)]
    dev: bool,
    /// Share of instances missing heartbeats within one window that makes the registry
    /// assume it is cut off and stop removing instances.
    #[arg(long, default_value_t = 0.5)]
    protection_threshold: f64,
    /// Smallest fleet for which mass-failure protection arms.
    #[arg(long, default_value_t = 10)]
    protection_min_instances: usize,
    /// How long events are kept.
    #[arg(long, default_value = "30d")]
    event_retention: Duration,
    /// How long a server's hold on a saga execution lasts without renewal; on
    /// PostgreSQL, another replica resumes the executions of a dead one after this.
    #[arg(long, default_value = "15s")]
    saga_lease: Duration,
}

pub(crate) async fn run(args: ServerArgs) -> anyhow::Result<()> {
    init_logging();
    let mut listen = args.listen;
    if args.dev && !listen.ip().is_loopback() {
        listen.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    if !(0.0..=1.0).contains(&args.protection_threshold) {
        anyhow::bail!(
            "--protection-threshold must be between 0 and 1 (is {})",
            args.protection_threshold
        );
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create the data dir {}", args.data_dir.display()))?;
    let store_url = match &args.store {
        Some(url) => url.clone(),
        None => format!("sqlite://{}", args.data_dir.join("ieum.db").display()),
    };
    let store = ieum_store::open(&store_url)
        .await
        .with_context(|| format!("cannot open the store {}", redact(&store_url)))?;
    let options = Options {
        protection_threshold: args.protection_threshold,
        protection_min_instances: args.protection_min_instances,
        event_retention: args.event_retention,
        ..Options::default()
    };
    let registry = Registry::start(store, Arc::new(SystemClock), options).await?;

    let (auth, auth_line) = if listen.ip().is_loopback() {
        (
            Auth::Open,
            "open on loopback; writes are recorded as `local`".to_owned(),
        )
    } else {
        let path = args.data_dir.join("admin.token");
        let token = admin_token(&path)?;
        (
            Auth::Token(token.into()),
            format!(
                "writes need a bearer token (IEUM_TOKEN); the admin token is in {}",
                path.display()
            ),
        )
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {listen}: is another server running? choose one with --listen"
            )
        })?;
    let local = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let sagas = start_sagas(&store_url, &registry, local, &auth, args.saga_lease).await?;
    let app = ieum_control::router_with(
        AppState {
            registry: registry.clone(),
            auth,
            shutdown: shutdown.clone(),
        },
        Some(sagas.clone()),
    );

    banner(
        local,
        &store_url,
        registry.store().backend(),
        &auth_line,
        args.dev,
    );

    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        eprintln!("shutting down: finishing open requests and storing pending changes");
        signal.cancel();
    });
    let stop = shutdown.clone();
    ieum_control::serve(listener, app, async move { stop.cancelled().await }).await?;
    sagas.shutdown().await;
    registry.shutdown().await;
    eprintln!("stopped");
    Ok(())
}

/// Opens the saga log on the same database and starts the coordinator, whose embedded
/// sidecar follows this server over loopback.
async fn start_sagas(
    store_url: &str,
    registry: &Registry,
    local: SocketAddr,
    auth: &Auth,
    lease: Duration,
) -> anyhow::Result<ieum_saga::Coordinator> {
    let log = ieum_store::open_saga_log(store_url)
        .await
        .with_context(|| format!("cannot open the saga log in {}", redact(store_url)))?;
    let mut own = local;
    if own.ip().is_unspecified() {
        own.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let mut options =
        ieum_saga::Options::new(log, registry.store().clone(), format!("http://{own}"));
    if let Auth::Token(t) = auth {
        options.token = Some(t.to_string());
    }
    if lease.is_zero() {
        anyhow::bail!("--saga-lease must be above 0s");
    }
    options.lease = lease.get();
    ieum_saga::Coordinator::start(options)
        .await
        .context("cannot start the saga coordinator")
}

fn banner(addr: SocketAddr, store_url: &str, backend: &str, auth: &str, dev: bool) {
    let base = format!("http://{addr}");
    let mut b = format!("ieum {} server\n", env!("CARGO_PKG_VERSION"));
    b += &format!("  listening  {addr} (HTTP/1.1 and HTTP/2)\n");
    b += &format!("  UI         {base}/ui\n");
    b += &format!("  API        {base}/v1\n");
    b += &format!("  OpenAPI    {base}/v1/openapi.json\n");
    b += &format!("  events     {base}/v1/events/stream (Server-Sent Events)\n");
    b += &format!("  sagas      {base}/v1/sagas  flows {base}/v1/flows/NAME\n");
    b += &format!("  health     {base}/healthz  {base}/readyz\n");
    b += &format!("  store      {backend} {}\n", redact(store_url));
    b += &format!("  auth       {auth}\n");
    if dev {
        b += "  dev mode   NOT FOR PRODUCTION: loopback only, no TLS, open API\n";
    }
    b += &format!(
        "try: ieum register demo --address 127.0.0.1 --port 8080   then   ieum get services --server {base}\n"
    );
    eprint!("{b}");
}

/// Hides a password in a store URL.
fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Reads the admin token, creating it (readable by the owner only) on first start.
fn admin_token(path: &Path) -> anyhow::Result<String> {
    if let Ok(t) = std::fs::read_to_string(path) {
        let t = t.trim().to_owned();
        if !t.is_empty() {
            return Ok(t);
        }
    }
    let token: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(path)
        .with_context(|| format!("cannot write the admin token to {}", path.display()))?;
    std::io::Write::write_all(&mut f, format!("{token}\n").as_bytes())?;
    eprintln!(
        "created the admin token in {} (keep it secret)",
        path.display()
    );
    Ok(token)
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            super::redact("postgres://u:pw@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(super::redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(super::redact("sqlite://./x.db"), "sqlite://./x.db");
    }
}
