//! `ieum`: one binary that connects services and composes them.
//!
//! This crate only parses the command line and wires libraries together:
//! - `server`: `ieum server`, the control plane (registry, API, event stream).
//! - `cli`: the operator commands (`get`, `describe`, `events`, `register`), talking to
//!   a server over its REST API through `client`, printing with `output`.
//! - `config_cli`: configuration commands (`apply`, `validate`, `diff`, `delete`,
//!   `history`, `schema`).
//! - `sidecar`: `ieum run` and `ieum sidecar`.
//! - `gateway`: `ieum gateway`, the API gateway (`ieum-gateway` on the sidecar's outbound
//!   library).
//! - `demo`: `ieum demo`, the whole system with an example shop, and its apps.
//! - `token_cli`: `ieum token create|list|revoke` (API tokens and roles).
//! - `apikey_cli`: `ieum apikey create|list|revoke` (API keys of the gateway's consumers).
//! - `process`: SIGTERM to processes and process groups.
//!
//! Exit codes: 0 ok, 1 rejected or invalid, 2 usage error, 3 server unreachable.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod apikey_cli;
mod cli;
mod client;
mod config_cli;
mod demo;
mod enroll;
mod gateway;
mod output;
mod process;
mod server;
mod sidecar;
mod token_cli;

/// ieum (이음): a service registry and mesh control plane in one binary.
#[derive(Debug, Parser)]
#[command(name = "ieum", version, about)]
struct Cli {
    /// The ieum server to talk to.
    #[arg(
        long,
        global = true,
        env = "IEUM_SERVER",
        default_value = "http://127.0.0.1:7700"
    )]
    server: String,
    /// API token (`ieum token create`): needed off loopback for writes; on loopback, given,
    /// it is checked and acts with its role and name.
    #[arg(long, global = true, env = "IEUM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = output::Format::Table)]
    output: output::Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the whole system with an example shop, load and a little failure, then open
    /// the UI it prints. Ctrl-C stops everything.
    Demo(demo::DemoArgs),
    /// Run the control plane: registry, REST API, event stream.
    Server(server::ServerArgs),
    /// List resources: `ieum get services`, `ieum get service orders`, `ieum get routes`.
    Get(cli::GetArgs),
    /// Show one resource in detail: `ieum describe service orders`.
    Describe(cli::DescribeArgs),
    /// Show the event timeline (of one service, or all): `ieum events orders --follow`.
    Events(cli::EventsArgs),
    /// Apply configuration files (many YAML documents per file; folders too), all or
    /// nothing: `ieum apply -f shop.yaml [--dry-run]`.
    Apply(config_cli::ApplyArgs),
    /// Check configuration files offline, without a server.
    Validate(config_cli::Files),
    /// Show what applying the files would change, field by field.
    Diff(config_cli::Files),
    /// Delete a resource: `ieum delete route orders-api`.
    Delete(config_cli::NamedArgs),
    /// Every revision of a resource with what each changed: `ieum history route orders-api`.
    History(config_cli::NamedArgs),
    /// Print the JSON Schema of a kind (for editors): `ieum schema Route`.
    Schema(config_cli::SchemaArgs),
    /// Run an app beside its sidecar, sharing one lifecycle: `ieum run --service orders
    /// --app-port 8080 -- python3 app.py`. Exits with the app's code.
    Run(sidecar::RunArgs),
    /// Run the sidecar alone (containers, systemd): `ieum sidecar --service orders
    /// --app-port 8080`.
    Sidecar(sidecar::SidecarArgs),
    /// Run an API gateway: publishes `kind: Api` resources at --listen (default
    /// 127.0.0.1:7780) and calls the services behind them through the mesh.
    Gateway(gateway::GatewayArgs),
    /// Register an instance and keep it alive with heartbeats until stopped (for VMs and
    /// scripts); deregisters it on Ctrl-C.
    Register(cli::RegisterArgs),
    /// API tokens and their roles: `ieum token create ci --role operator`, `ieum token
    /// list`, `ieum token revoke ci`.
    Token(token_cli::TokenArgs),
    /// API keys of the gateway's consumers: `ieum apikey create mobile-app` (prints the key
    /// once), `ieum apikey list`, `ieum apikey revoke ID`.
    Apikey(apikey_cli::ApikeyArgs),
    /// One of the demo's example services (started by `ieum demo`).
    #[command(hide = true)]
    DemoApp(demo::apps::AppArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // ring is the process's one rustls provider (HTTP clients that speak no TLS still ask
    // for one); every configuration of ours names it too.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match &cli.command {
        Command::Run(args) => args.runtime(),
        Command::Sidecar(args) => args.runtime(),
        _ => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let ctx = cli::Context {
        server: cli.server,
        token: cli.token,
        format: cli.output,
    };
    let result: anyhow::Result<u8> = runtime.block_on(async move {
        if std::env::var_os(EXIT_WITH_PARENT).is_some() {
            tokio::spawn(stop_when_orphaned());
        }
        let done = |r: anyhow::Result<()>| r.map(|()| 0u8);
        match cli.command {
            Command::Demo(args) => done(demo::run(args).await),
            Command::DemoApp(args) => done(demo::apps::run(args).await),
            Command::Run(args) => sidecar::run(&ctx, args).await,
            Command::Sidecar(args) => sidecar::sidecar(&ctx, args).await,
            Command::Gateway(args) => done(gateway::run(&ctx, args).await),
            Command::Server(args) => done(server::run(args).await),
            Command::Get(args) => done(cli::get(&ctx, args).await),
            Command::Describe(args) => done(cli::describe(&ctx, args).await),
            Command::Events(args) => done(cli::events(&ctx, args).await),
            Command::Register(args) => done(cli::register(&ctx, args).await),
            Command::Apply(args) => done(config_cli::apply(&ctx, args).await),
            Command::Validate(files) => done(config_cli::validate(&ctx, files).await),
            Command::Diff(files) => done(config_cli::diff(&ctx, files).await),
            Command::Delete(args) => done(config_cli::delete(&ctx, args).await),
            Command::History(args) => done(config_cli::history(&ctx, args).await),
            Command::Schema(args) => done(config_cli::schema(&args)),
            Command::Token(args) => done(token_cli::run(&ctx, args).await),
            Command::Apikey(args) => done(apikey_cli::run(&ctx, args).await),
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let code = e
                .downcast_ref::<client::Failure>()
                .map_or(1, client::Failure::exit_code);
            eprintln!("error: {e:#}");
            ExitCode::from(code)
        }
    }
}

/// Set by a supervisor (`ieum demo`) on its children: a child whose supervisor dies stops
/// itself as on SIGTERM (drain, deregister), instead of living on as an orphan.
pub(crate) const EXIT_WITH_PARENT: &str = "IEUM_EXIT_WITH_PARENT";

/// Sends this process SIGTERM once its parent is gone (it is re-parented).
async fn stop_when_orphaned() {
    #[cfg(unix)]
    {
        let parent = std::os::unix::process::parent_id();
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tick.tick().await;
            if std::os::unix::process::parent_id() != parent {
                process::terminate(process::Target::Process(std::process::id()));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
