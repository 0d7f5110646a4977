//! `ieum token create|list|revoke`: API tokens, through the server's `/v1/tokens` (role
//! `admin`, or no token on a loopback server).

use ieum_model::{Duration, Name};
use reqwest::Method;
use serde_json::{Value, json};

use crate::cli::Context;
use crate::client::Failure;
use crate::output::{self, Table, or_dash};

/// `ieum token …`.
#[derive(Debug, clap::Args)]
pub(crate) struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Debug, clap::Subcommand)]
enum TokenCommand {
    /// Create a token and print it, only it, on stdout, this once (the server keeps only
    /// its hash): the secret, or for `sidecar` and `gateway` tokens the join token
    /// `ieum1.<CA sha256>.<secret>`, which also pins the server's CA.
    /// `ieum token create ci --role operator`.
    Create(CreateArgs),
    /// List tokens with their role, service and state; never their secrets.
    List,
    /// Revoke a token: it is refused from then on, and stays listed as revoked.
    Revoke {
        /// The token's name.
        name: String,
    },
}

#[derive(Debug, clap::Args)]
struct CreateArgs {
    /// A unique name (DNS-1123 label), recorded as the author of what the token writes.
    name: String,
    /// What the token may do.
    #[arg(long, value_parser = ["admin", "operator", "reader", "sidecar", "gateway"])]
    role: String,
    /// The service a `sidecar` token acts for (required for sidecars); optional for
    /// gateways.
    #[arg(long)]
    service: Option<String>,
    /// How long the token is valid, e.g. `24h`; without it, until revoked.
    #[arg(long)]
    ttl: Option<Duration>,
}

fn name(s: &str, what: &str) -> Result<Name, Failure> {
    Name::parse(s).map_err(|m| Failure::Usage(format!("{what} {m}")))
}

pub(crate) async fn run(ctx: &Context, args: TokenArgs) -> anyhow::Result<()> {
    match args.command {
        TokenCommand::Create(args) => create(ctx, args).await,
        TokenCommand::List => list(ctx).await,
        TokenCommand::Revoke { name: n } => revoke(ctx, &n).await,
    }
}

async fn create(ctx: &Context, args: CreateArgs) -> anyhow::Result<()> {
    let token = name(&args.name, "token name")?;
    let mut body = json!({"name": token.as_str(), "role": args.role});
    if let Some(s) = &args.service {
        body["service"] = json!(name(s, "--service")?.as_str());
    }
    if let Some(ttl) = args.ttl {
        body["ttl"] = json!(ttl);
    }
    let created: Value = ctx
        .client()?
        .write(Method::POST, "/v1/tokens", Some(&body))
        .await?;
    let Some(secret) = created["secret"].as_str() else {
        anyhow::bail!("the server answered no secret: is it an ieum server?");
    };
    let mut about = format!("created token `{token}` (role {}", args.role);
    if let Some(s) = created["service"].as_str() {
        about += &format!(", service {s}");
    }
    if let Some(at) = created["expiresAt"].as_str() {
        about += &format!(", expires {at}");
    }
    // Sidecar and gateway tokens are join tokens: `ieum1.<ca-sha256>.<secret>`, which the
    // server accepts as the bearer token and which pins its CA for bootstrap trust.
    if let Some(join) = created["joinToken"].as_str() {
        eprintln!(
            "{about}); its join token (`ieum1.<CA sha256>.<secret>`: the secret, and the CA \
             a sidecar pins before sending anything), on stdout, is shown only this once"
        );
        return output::out(&format!("{join}\n"));
    }
    eprintln!("{about}); its secret, on stdout, is shown only this once");
    output::out(&format!("{secret}\n"))
}

async fn list(ctx: &Context) -> anyhow::Result<()> {
    let list: Vec<Value> = ctx.client()?.get("/v1/tokens").await?;
    if output::structured(ctx.format, &list)? {
        return Ok(());
    }
    let mut t = Table::new(&[
        "NAME", "ROLE", "SERVICE", "STATE", "CREATED", "BY", "EXPIRES",
    ]);
    for tok in &list {
        let s = |k: &str| or_dash(tok[k].as_str());
        t.row(vec![
            s("name"),
            s("role"),
            s("service"),
            s("state"),
            s("createdAt"),
            s("createdBy"),
            s("expiresAt"),
        ]);
    }
    output::out(&t.render())
}

async fn revoke(ctx: &Context, token: &str) -> anyhow::Result<()> {
    let token = name(token, "token name")?;
    let revoked: Value = ctx
        .client()?
        .write(Method::DELETE, &format!("/v1/tokens/{token}"), None::<&()>)
        .await?;
    if output::structured(ctx.format, &revoked)? {
        return Ok(());
    }
    output::out(&format!(
        "token `{token}` revoked at {}\n",
        revoked["revokedAt"].as_str().unwrap_or("?")
    ))
}
