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
    /// Whether reads (the API's GETs and the UI) need no token where tokens are required.
    /// `--open-reads false`: every request but /healthz and /readyz needs a token, role
    /// `reader` or above.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    open_reads: bool,
    /// Require tokens on loopback too, as off loopback (a request without one is refused
    /// where it would be off loopback): for tests of roles and shared hosts.
    #[arg(long)]
    require_tokens: bool,
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
    /// The trust domain of the mesh's identities (`spiffe://TRUST_DOMAIN/svc/NAME`).
    #[arg(long, default_value = ieum_identity::spiffe::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// Where the mesh's CA lives (`ca.pem`, `ca-key.pem`): created on first start, or put
    /// there by the operator. Replicas of one server share it. Default: DATA_DIR/ca.
    #[arg(long)]
    ca_dir: Option<PathBuf>,
    /// Lifetime of the certificates issued to sidecars and gateways; they renew after two
    /// thirds of it.
    #[arg(long, default_value = "24h")]
    cert_ttl: Duration,
    /// Serve the API over HTTPS on loopback too (beyond loopback it always is, except
    /// under --dev): for tests and hosts whose users should not trust each other.
    #[arg(long, conflicts_with = "dev")]
    tls: bool,
    /// A DNS name (or address) the server is reached at, written into its certificate
    /// beside the listen address, the host's addresses, `localhost` and 127.0.0.1.
    /// Repeatable.
    #[arg(long = "advertise-name", value_name = "NAME")]
    advertise_names: Vec<String>,
}

/// Lifetime of the server's own API certificate; renewed after two thirds of it.
const SERVER_CERT_TTL: std::time::Duration = std::time::Duration::from_secs(90 * 24 * 3600);

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

    let admin_path = args.data_dir.join("admin.token");
    register_admin(&registry, &admin_path).await?;
    let (auth, auth_line) = if listen.ip().is_loopback() && !args.require_tokens {
        (
            Auth::Open,
            "open on loopback: without a token, writes are recorded as `local`; a token, when \
             given, is checked"
                .to_owned(),
        )
    } else {
        let internal = ieum_control::tokens::new_secret()
            .map_err(|_| anyhow::anyhow!("the system's random generator failed"))?;
        let reads = if args.open_reads {
            "writes need"
        } else {
            "every request needs"
        };
        (
            Auth::Tokens {
                open_reads: args.open_reads,
                internal: Some(internal.into()),
            },
            format!(
                "{reads} a bearer token (IEUM_TOKEN); the admin token is in {}",
                admin_path.display()
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
    let trust_domain = ieum_identity::TrustDomain::parse(&args.trust_domain)
        .map_err(|e| anyhow::anyhow!("--trust-domain: {e}"))?;
    let ca_dir = args
        .ca_dir
        .clone()
        .unwrap_or_else(|| args.data_dir.join("ca"));
    let ca = Arc::new(
        ieum_identity::Ca::load_or_create(&ca_dir, trust_domain)
            .with_context(|| format!("the mesh's CA in {}", ca_dir.display()))?,
    );
    // Beyond loopback (or with --tls) the API is HTTPS with a certificate of the CA.
    let tls = if args.tls || !listen.ip().is_loopback() {
        let sans = server_sans(local, &args.advertise_names);
        Some(server_tls(&ca, sans, shutdown.clone())?)
    } else {
        None
    };
    // Under --dev sidecars talk plain text; otherwise every sidecar enrols and uses mTLS.
    let mtls = !args.dev;
    let mesh = ieum_control::mesh::Mesh::new(ca.clone(), args.cert_ttl.get(), mtls);
    let coordinator = if mtls {
        Some(coordinator_identity(
            &ca,
            args.cert_ttl.get(),
            shutdown.clone(),
        )?)
    } else {
        None
    };
    let own_trust = match &tls {
        Some(_) => Some(
            ieum_identity::ServerTrust::Roots(ca.roots())
                .client_config()
                .context("the TLS configuration of the coordinator's push client")?,
        ),
        None => None,
    };
    let sagas = start_sagas(
        &store_url,
        &registry,
        local,
        &auth,
        args.saga_lease,
        coordinator,
        own_trust,
    )
    .await?;
    let app = ieum_control::router_with_mesh(
        AppState {
            registry: registry.clone(),
            auth,
            shutdown: shutdown.clone(),
        },
        Some(sagas.clone()),
        Some(mesh),
    );
    let mesh_line = if mtls {
        format!(
            "mTLS between sidecars, trust domain {}, CA sha256:{} ({})",
            ca.trust_domain().as_str(),
            ca.fingerprint(),
            ca_dir.display()
        )
    } else {
        "plain text between sidecars (--dev)".to_owned()
    };

    let tls_line = tls.as_ref().map(|_| {
        format!(
            "HTTPS with a certificate of the mesh CA; clients pin sha256:{} (a join token \
             carries it) or set IEUM_CA_FILE={}",
            ca.fingerprint(),
            ca_dir.join(ieum_identity::ca::CA_CERT_FILE).display()
        )
    });
    banner(
        local,
        tls_line.as_deref(),
        &store_url,
        registry.store().backend(),
        &auth_line,
        &mesh_line,
        args.dev,
    );

    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        eprintln!("shutting down: finishing open requests and storing pending changes");
        signal.cancel();
    });
    let stop = shutdown.clone();
    match tls {
        Some(config) => {
            ieum_control::serve_tls(listener, app, config, async move { stop.cancelled().await })
                .await?
        }
        None => ieum_control::serve(listener, app, async move { stop.cancelled().await }).await?,
    }
    sagas.shutdown().await;
    registry.shutdown().await;
    eprintln!("stopped");
    Ok(())
}

/// The server's own mesh identity for its outgoing calls (saga and flow steps):
/// `system:coordinator`, issued by its CA in process and renewed the same way after two
/// thirds of its lifetime, until `stop`.
fn coordinator_identity(
    ca: &Arc<ieum_identity::Ca>,
    ttl: std::time::Duration,
    stop: CancellationToken,
) -> anyhow::Result<ieum_proxy::MeshConfig> {
    let id = ieum_identity::SpiffeId::new(
        ca.trust_domain().clone(),
        ieum_identity::Workload::coordinator(),
    );
    let issue = {
        let (ca, id) = (ca.clone(), id.clone());
        move || -> anyhow::Result<ieum_identity::Credentials> {
            let key = ieum_identity::KeyPair::generate()?;
            let issued = ca.issue(&key.csr(&id)?, &id, ttl)?;
            Ok(ieum_identity::Credentials::new(&issued.chain_pem, key)?)
        }
    };
    let identity = ieum_identity::Identity::new(issue()?);
    tokio::spawn(crate::enroll::keep_renewed(
        identity.clone(),
        stop,
        move || std::future::ready(issue()),
    ));
    Ok(ieum_proxy::MeshConfig {
        identity,
        roots: ca.roots(),
        trust_domain: ca.trust_domain().clone(),
    })
}

/// The names in the server's certificate: the listen address (or, listening on every
/// address, the host's non-loopback addresses, best effort), `localhost`, 127.0.0.1 and
/// every `--advertise-name`.
fn server_sans(local: SocketAddr, advertised: &[String]) -> Vec<String> {
    let mut sans = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    if local.ip().is_unspecified() {
        sans.extend(host_addresses().iter().map(ToString::to_string));
    } else {
        sans.push(local.ip().to_string());
    }
    sans.extend(advertised.iter().cloned());
    let mut seen = std::collections::BTreeSet::new();
    sans.retain(|s| seen.insert(s.clone()));
    sans
}

/// The host's own non-loopback addresses, read from Linux's `/proc/net/fib_trie` (IPv4:
/// the `/32 host LOCAL` entries) and `/proc/net/if_inet6` (global IPv6); none elsewhere.
fn host_addresses() -> Vec<std::net::IpAddr> {
    let mut found = Vec::new();
    if let Ok(trie) = std::fs::read_to_string("/proc/net/fib_trie") {
        let mut last: Option<std::net::Ipv4Addr> = None;
        for line in trie.lines() {
            let t = line.trim();
            if let Some(ip) = t.strip_prefix("|-- ") {
                last = ip.parse().ok();
            } else if t.starts_with("/32 host LOCAL")
                && let Some(ip) = last
                && !ip.is_loopback()
            {
                found.push(ip.into());
            }
        }
    }
    if let Ok(v6) = std::fs::read_to_string("/proc/net/if_inet6") {
        for line in v6.lines() {
            let Some(hex) = line.split_whitespace().next() else {
                continue;
            };
            let Ok(bits) = u128::from_str_radix(hex, 16) else {
                continue;
            };
            let ip = std::net::Ipv6Addr::from(bits);
            // Link-local addresses need a scope, which a certificate cannot name.
            if !ip.is_loopback() && (ip.segments()[0] & 0xffc0) != 0xfe80 {
                found.push(ip.into());
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

/// The HTTPS configuration of the API: a certificate of `ca` naming `sans`, renewed in
/// place after two thirds of [`SERVER_CERT_TTL`] until `stop`.
fn server_tls(
    ca: &Arc<ieum_identity::Ca>,
    sans: Vec<String>,
    stop: CancellationToken,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let cert = ca
        .server_certificate(&sans, SERVER_CERT_TTL)
        .with_context(|| format!("the server's certificate for {}", sans.join(", ")))?;
    let key = ieum_identity::ServerKey::new(cert)?;
    // Enrolled sidecars and gateways may authenticate with their mesh certificate.
    let config =
        ieum_identity::api_server_config(&key, Some((ca.roots(), ca.trust_domain().clone())))?;
    let ca = ca.clone();
    tokio::spawn(async move {
        let mut wait = SERVER_CERT_TTL.mul_f64(2.0 / 3.0);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            match ca
                .server_certificate(&sans, SERVER_CERT_TTL)
                .map_err(anyhow::Error::from)
                .and_then(|c| Ok(key.replace(c)?))
            {
                Ok(()) => {
                    tracing::info!("renewed the server's API certificate");
                    wait = SERVER_CERT_TTL.mul_f64(2.0 / 3.0);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew the server's API certificate; retrying in 1m");
                    wait = std::time::Duration::from_secs(60);
                }
            }
        }
    });
    Ok(config)
}

/// Opens the saga log on the same database and starts the coordinator, whose embedded
/// sidecar follows this server over loopback.
async fn start_sagas(
    store_url: &str,
    registry: &Registry,
    local: SocketAddr,
    auth: &Auth,
    lease: Duration,
    mesh: Option<ieum_proxy::MeshConfig>,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> anyhow::Result<ieum_saga::Coordinator> {
    let log = ieum_store::open_saga_log(store_url)
        .await
        .with_context(|| format!("cannot open the saga log in {}", redact(store_url)))?;
    let mut own = local;
    if own.ip().is_unspecified() {
        own.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut options =
        ieum_saga::Options::new(log, registry.store().clone(), format!("{scheme}://{own}"));
    options.server_tls = tls;
    // Tokens required: the embedded sidecar follows this server with the in-memory secret
    // (role reader), which no revocation of a stored token can break.
    if let Auth::Tokens {
        internal: Some(t), ..
    } = auth
    {
        options.token = Some(t.to_string());
    }
    if lease.is_zero() {
        anyhow::bail!("--saga-lease must be above 0s");
    }
    options.lease = lease.get();
    options.mesh = mesh;
    ieum_saga::Coordinator::start(options)
        .await
        .context("cannot start the saga coordinator")
}

fn banner(
    addr: SocketAddr,
    tls: Option<&str>,
    store_url: &str,
    backend: &str,
    auth: &str,
    mesh: &str,
    dev: bool,
) {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let base = format!("{scheme}://{addr}");
    let mut b = format!("ieum {} server\n", env!("CARGO_PKG_VERSION"));
    b += &format!("  listening  {addr} (HTTP/1.1 and HTTP/2)\n");
    if let Some(tls) = tls {
        b += &format!("  tls        {tls}\n");
    }
    b += &format!("  UI         {base}/ui\n");
    b += &format!("  API        {base}/v1\n");
    b += &format!("  OpenAPI    {base}/v1/openapi.json\n");
    b += &format!("  events     {base}/v1/events/stream (Server-Sent Events)\n");
    b += &format!("  sagas      {base}/v1/sagas  flows {base}/v1/flows/NAME\n");
    b += &format!("  health     {base}/healthz  {base}/readyz\n");
    b += &format!("  store      {backend} {}\n", redact(store_url));
    b += &format!("  auth       {auth}\n");
    b += &format!("  mesh       {mesh}\n");
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

/// Registers the data dir's admin token (created on first start) as the API token `admin`;
/// a data dir from before tokens existed is migrated here.
async fn register_admin(registry: &Registry, path: &Path) -> anyhow::Result<()> {
    use ieum_control::tokens::AdminToken;
    let secret = admin_token(path)?;
    let found =
        ieum_control::tokens::register_admin(registry.store().as_ref(), &secret, registry.now())
            .await
            .context("cannot register the admin token in the store")?;
    match found {
        AdminToken::Registered => eprintln!(
            "registered the admin token of {} as the API token `admin`",
            path.display()
        ),
        AdminToken::Active => {}
        AdminToken::Revoked => eprintln!(
            "warning: the admin token in {} was revoked and is refused; use another admin token",
            path.display()
        ),
        AdminToken::Other => eprintln!(
            "warning: the store's API token `admin` has another secret than {} (another server \
             created it, or the file was replaced), so this file's token is refused: use the \
             admin.token of the server that created it, or another admin token",
            path.display()
        ),
    }
    Ok(())
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

pub(crate) async fn wait_for_signal() {
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
