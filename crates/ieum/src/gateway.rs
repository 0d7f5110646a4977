//! `ieum gateway`: the API gateway, publishing `Api`s at the edge through the mesh.
//!
//! The lifecycle of a sidecar without an app: enrol as `gateway:NAME` (mTLS to the
//! services behind it), follow the server as a gateway (every `Api`, `ApiConsumer`,
//! `ApiKey`, `Flow`), start the outbound library (`ieum_proxy::Sidecar`, its own listeners
//! on loopback, admin with `/metrics`), then serve consumers on `--listen` until SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use ieum_model::{Duration, Name};
use ieum_proxy::{Sidecar, SidecarConfig};

use crate::cli::Context;
use crate::client::{Client, Failure};

/// `ieum gateway`.
#[derive(Debug, clap::Args)]
pub(crate) struct GatewayArgs {
    /// The gateway's name: its mesh identity is `gateway:NAME`, and a `gateway` token for
    /// it (`ieum token create … --role gateway --service NAME`) lets it in off loopback.
    #[arg(long, default_value = "edge")]
    name: String,
    /// Where API consumers connect (loopback unless told otherwise, like every listener).
    #[arg(long, default_value = "127.0.0.1:7780")]
    listen: SocketAddr,
    /// Serve HTTPS with this certificate chain (PEM; reloaded when the file changes).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Write one JSON line per request to stderr: API, operation, consumer, method, path,
    /// status, duration.
    #[arg(long)]
    access_log: bool,
    /// Admin listener: /ready, /metrics (per API, operation and consumer; and the calls
    /// into the mesh).
    #[arg(long, default_value = "127.0.0.1:7789")]
    admin: SocketAddr,
    /// Longest wait for the first configuration snapshot (a saved one counts).
    #[arg(long, default_value = "30s")]
    snapshot_wait: Duration,
    /// Where the last snapshot and the gateway's certificate are kept.
    #[arg(long, default_value = "./ieum-data")]
    data_dir: PathBuf,
}

/// Runs the gateway until SIGTERM or Ctrl-C.
pub(crate) async fn run(ctx: &Context, args: GatewayArgs) -> anyhow::Result<()> {
    let name =
        Name::parse(&args.name).map_err(|m| Failure::Usage(format!("--name: gateway name {m}")))?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create the data dir {}", args.data_dir.display()))?;
    let api = Client::new(&ctx.server, ctx.token.clone())?;
    let enrolment = crate::enroll::enrolment(
        api,
        &format!("gateway:{name}"),
        &args.data_dir.join(format!("identity-gateway-{name}")),
        args.snapshot_wait.get(),
    )
    .await?;
    let (api, mesh) = (enrolment.api.clone(), enrolment.mesh.clone());

    let client = ieum_client::Client::start(ieum_client::Options {
        server: ctx.server.clone(),
        client: format!("gateway {name}"),
        service: None,
        calls: Vec::new(),
        gateway: Some(name.to_string()),
        snapshot_file: Some(args.data_dir.join(format!("gateway-{name}.snapshot.json"))),
        token: api.token(),
        tls: api.tls(),
    });
    if client.snapshot().version == 0 && !client.wait_connected(args.snapshot_wait.get()).await {
        client.shutdown().await;
        let why = client.last_error().unwrap_or_else(|| "no answer".into());
        return Err(Failure::Unreachable(format!(
            "no configuration snapshot from {} within {} and none saved in {} ({why}): start the server, or point --server / IEUM_SERVER at it",
            ctx.server,
            args.snapshot_wait,
            args.data_dir.display()
        ))
        .into());
    }
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let sidecar = Sidecar::start(SidecarConfig {
        service: format!("gateway-{name}"),
        zone: None,
        // Nothing is registered at the inbound listener, so nothing reaches this.
        app_addr: SocketAddr::from(([127, 0, 0, 1], 9)),
        outbound_listen: loopback,
        inbound_listen: loopback,
        admin_listen: args.admin,
        client: client.clone(),
        // An API's backend is a registered service, never a name outside the mesh.
        egress: ieum_proxy::Egress::RegistryOnly,
        app_protocol: ieum_proxy::AppProtocol::Http,
        tcp: Vec::new(),
        otlp: ieum_proxy::OtlpConfig::from_env(&format!("gateway-{name}")).unwrap_or(None),
        enforce_mesh_identity: false,
        mesh,
    })
    .await
    .context("cannot start the gateway's outbound library")?;
    let admin = sidecar.admin_addr();
    let https = args.tls_cert.is_some();
    let gateway = ieum_gateway::Gateway::start(ieum_gateway::GatewayConfig {
        name: name.to_string(),
        listen: args.listen,
        sidecar,
        client: client.clone(),
        tls: match (args.tls_cert, args.tls_key) {
            (Some(cert), Some(key)) => Some(ieum_gateway::TlsFiles { cert, key }),
            _ => None,
        },
        access_log: args.access_log,
    })
    .await
    .with_context(|| format!("cannot listen on {}", args.listen))?;
    eprintln!("ieum gateway {name}");
    let scheme = if https { "https" } else { "http" };
    eprintln!("  listening {scheme}://{}", gateway.addr());
    eprintln!("  admin     http://{admin}/ready  /metrics");
    eprintln!(
        "  apis      {}",
        match gateway.catalog().api_names() {
            names if names.is_empty() => "none yet (kind: Api)".to_owned(),
            names => names.join(", "),
        }
    );
    crate::server::wait_for_signal().await;
    eprintln!("stopping: finishing open requests");
    // The outbound library stops with the gateway's last connection.
    gateway.shutdown();
    client.shutdown().await;
    Ok(())
}
