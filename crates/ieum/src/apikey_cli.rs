//! `ieum apikey create|list|revoke`: API keys of the gateway's consumers, through the
//! server's `/v1/apikeys` (role `operator`, or no token on a loopback server).

use ieum_model::{Duration, Name};
use reqwest::Method;
use serde_json::{Value, json};

use crate::cli::Context;
use crate::client::Failure;
use crate::output::{self, Table, or_dash};

/// `ieum apikey …`.
#[derive(Debug, clap::Args)]
pub(crate) struct ApikeyArgs {
    #[command(subcommand)]
    command: ApikeyCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ApikeyCommand {
    /// Create a key for an `ApiConsumer` and print it, only it, on stdout, this once (the
    /// server keeps only its SHA-256): `ieum apikey create mobile-app`.
    Create {
        /// The `ApiConsumer` the key authenticates as.
        consumer: String,
        /// How long the key is accepted, e.g. `90d`; without it, until revoked.
        #[arg(long)]
        ttl: Option<Duration>,
    },
    /// List keys with their consumer and first characters; never the keys.
    List {
        /// Only this consumer's keys.
        #[arg(long)]
        consumer: Option<String>,
    },
    /// Revoke a key: gateways refuse it from then on.
    Revoke {
        /// The key's id (`ieum apikey list`).
        id: String,
    },
}

fn name(s: &str, what: &str) -> Result<Name, Failure> {
    Name::parse(s).map_err(|m| Failure::Usage(format!("{what} {m}")))
}

pub(crate) async fn run(ctx: &Context, args: ApikeyArgs) -> anyhow::Result<()> {
    match args.command {
        ApikeyCommand::Create { consumer, ttl } => create(ctx, &consumer, ttl).await,
        ApikeyCommand::List { consumer } => list(ctx, consumer.as_deref()).await,
        ApikeyCommand::Revoke { id } => revoke(ctx, &id).await,
    }
}

async fn create(ctx: &Context, consumer: &str, ttl: Option<Duration>) -> anyhow::Result<()> {
    let consumer = name(consumer, "consumer name")?;
    let mut body = json!({"consumer": consumer.as_str()});
    if let Some(ttl) = ttl {
        body["ttl"] = json!(ttl);
    }
    let created: Value = ctx
        .client()?
        .write(Method::POST, "/v1/apikeys", Some(&body))
        .await?;
    let (Some(key), Some(id)) = (created["key"].as_str(), created["id"].as_str()) else {
        anyhow::bail!("the server answered no key: is it an ieum server?");
    };
    let expiry = created["expiresAt"]
        .as_str()
        .map_or_else(String::new, |at| format!(", expires {at}"));
    eprintln!(
        "created API key `{id}` for consumer `{consumer}`{expiry}; the key, on stdout, is shown \
         only this once: clients send it in the header their Api names (x-api-key by default)"
    );
    output::out(&format!("{key}\n"))
}

async fn list(ctx: &Context, consumer: Option<&str>) -> anyhow::Result<()> {
    let path = match consumer {
        Some(c) => format!("/v1/apikeys?consumer={}", name(c, "--consumer")?),
        None => "/v1/apikeys".to_owned(),
    };
    let list: Vec<Value> = ctx.client()?.get(&path).await?;
    if output::structured(ctx.format, &list)? {
        return Ok(());
    }
    let mut t = Table::new(&["ID", "CONSUMER", "PREFIX", "CREATED", "BY", "EXPIRES"]);
    for k in &list {
        let s = |f: &str| or_dash(k[f].as_str());
        let prefix = k["prefix"]
            .as_str()
            .map_or_else(|| "-".to_owned(), |p| format!("ieumk_{p}…"));
        t.row(vec![
            s("id"),
            s("consumer"),
            prefix,
            s("createdAt"),
            s("createdBy"),
            s("expiresAt"),
        ]);
    }
    output::out(&t.render())
}

async fn revoke(ctx: &Context, id: &str) -> anyhow::Result<()> {
    let id = name(id, "key id")?;
    let revoked: Value = ctx
        .client()?
        .write(Method::DELETE, &format!("/v1/apikeys/{id}"), None::<&()>)
        .await?;
    if output::structured(ctx.format, &revoked)? {
        return Ok(());
    }
    output::out(&format!(
        "API key `{id}` of consumer `{}` revoked\n",
        revoked["consumer"].as_str().unwrap_or("?")
    ))
}
