//! Operator commands against a running server.

use std::collections::BTreeMap;
use std::time::Duration as StdDuration;

use anyhow::Context as _;
use futures_util::StreamExt;
use ieum_model::{
    Check, Duration, Event, Instance, InstanceRegistration, Name, Protocol, ServiceSummary,
    ServiceView,
};
use reqwest::Method;

use crate::client::{Client, Failure};
use crate::output::{self, Format, Table, ago, human, now, or_dash};

/// What every command needs.
#[derive(Debug)]
pub(crate) struct Context {
    pub(crate) server: String,
    pub(crate) token: Option<String>,
    pub(crate) format: Format,
}

impl Context {
    pub(crate) fn client(&self) -> anyhow::Result<Client> {
        Client::new(&self.server, self.token.clone())
    }
}

/// Kinds the CLI knows, accepted case-insensitively, singular or plural.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Service,
    Instance,
}

fn kind(s: &str) -> Result<Kind, Failure> {
    match s.to_ascii_lowercase().as_str() {
        "service" | "services" | "svc" => Ok(Kind::Service),
        "instance" | "instances" | "inst" => Ok(Kind::Instance),
        other => Err(Failure::Usage(format!(
            "unknown kind `{other}`: use services or instances"
        ))),
    }
}

fn service_name(s: &str) -> Result<Name, Failure> {
    Name::parse(s).map_err(|m| Failure::Usage(format!("service name {m}")))
}

/// `ieum get KIND [NAME]`.
#[derive(Debug, clap::Args)]
pub(crate) struct GetArgs {
    /// `services`, `instances` (of the service NAME), or a configuration kind (`routes`,
    /// `resiliencepolicies`, `ratelimitpolicies`, `faultinjections`).
    kind: String,
    /// A service name.
    name: Option<String>,
}

pub(crate) async fn get(ctx: &Context, args: GetArgs) -> anyhow::Result<()> {
    let Ok(registry_kind) = kind(&args.kind) else {
        return crate::config_cli::get(ctx, &args.kind, args.name.as_deref()).await;
    };
    let client = ctx.client()?;
    match (registry_kind, args.name) {
        (Kind::Service, None) => {
            let list: Vec<ServiceSummary> = client.get("/v1/services").await?;
            if output::structured(ctx.format, &list)? {
                return Ok(());
            }
            let now = now();
            let mut t = Table::new(&["NAME", "UP", "ZONES", "OLDEST UPTIME", "LAST EVENT"]);
            for s in &list {
                let last = s
                    .last_event
                    .as_ref()
                    .map(|e| {
                        format!(
                            "{} {} {}",
                            ago(e.time, now),
                            e.kind,
                            e.instance.as_deref().unwrap_or("")
                        )
                    })
                    .unwrap_or_else(|| "-".into());
                t.row(vec![
                    s.name.clone(),
                    format!("{}/{}", s.instances.up, s.instances.total),
                    or_dash(Some(&s.zones.join(","))),
                    s.oldest_uptime.map_or("-".into(), human),
                    last.trim_end().to_owned(),
                ]);
            }
            output::out(&t.render())
        }
        (Kind::Service, Some(name)) => {
            let view: ServiceView = client
                .get(&format!("/v1/services/{}", service_name(&name)?))
                .await?;
            if output::structured(ctx.format, &view)? {
                return Ok(());
            }
            output::out(&instance_table(&view.instances))
        }
        (Kind::Instance, Some(name)) => {
            let list: Vec<Instance> = client
                .get(&format!("/v1/services/{}/instances", service_name(&name)?))
                .await?;
            if output::structured(ctx.format, &list)? {
                return Ok(());
            }
            output::out(&instance_table(&list))
        }
        (Kind::Instance, None) => {
            Err(Failure::Usage("name the service: `ieum get instances SERVICE`".into()).into())
        }
    }
}

fn instance_table(list: &[Instance]) -> String {
    let now = now();
    let mut t = Table::new(&[
        "ID",
        "STATE",
        "ADDRESS",
        "ZONE",
        "VERSION",
        "UPTIME",
        "LAST HEARTBEAT",
        "REASON",
    ]);
    for i in list {
        t.row(vec![
            i.id.clone(),
            i.state.to_string(),
            format!("{}:{}", i.address, i.port),
            or_dash(i.zone.as_deref()),
            or_dash(i.version.as_deref()),
            i.uptime(now).map_or("-".into(), human),
            i.last_heartbeat.map_or("-".into(), |t| ago(t, now)),
            i.state_reason.clone(),
        ]);
    }
    t.render()
}

/// `ieum describe KIND NAME`.
#[derive(Debug, clap::Args)]
pub(crate) struct DescribeArgs {
    /// `service`.
    kind: String,
    /// The service name.
    name: String,
}

pub(crate) async fn describe(ctx: &Context, args: DescribeArgs) -> anyhow::Result<()> {
    if kind(&args.kind)? != Kind::Service {
        return Err(Failure::Usage(
            "only services can be described: `ieum describe service NAME`".into(),
        )
        .into());
    }
    let name = service_name(&args.name)?;
    let client = ctx.client()?;
    let view: ServiceView = client.get(&format!("/v1/services/{name}")).await?;
    let events: Vec<Event> = client
        .get(&format!("/v1/services/{name}/events?limit=10"))
        .await?;
    if output::structured(
        ctx.format,
        &serde_json::json!({"service": view, "events": events}),
    )? {
        return Ok(());
    }
    let now = now();
    let spec = &view.spec;
    let mut s = String::new();
    let mut field = |k: &str, v: String| s.push_str(&format!("{k:<13}{v}\n"));
    field("Name:", view.name.clone());
    field("Description:", or_dash(spec.description.as_deref()));
    field("Owner:", or_dash(spec.owner.as_deref()));
    if !spec.tags.is_empty() {
        field("Tags:", spec.tags.join(", "));
    }
    if let Some(sla) = &spec.sla {
        let p99 = sla
            .latency_p99
            .map(|d| format!(", p99 ≤ {d}"))
            .unwrap_or_default();
        field("SLA:", format!("{}% available{p99}", sla.availability));
    }
    if let Some(ext) = &spec.external {
        field(
            "External:",
            format!(
                "{}:{}{}",
                ext.host,
                ext.port,
                if ext.tls { " (TLS)" } else { "" }
            ),
        );
    }
    for i in &spec.interfaces {
        let at = i.url.clone().unwrap_or_else(|| "inline".into());
        field("Interface:", format!("{:?} {at}", i.kind).to_lowercase());
    }
    field(
        "Revision:",
        format!("{} (updated {})", view.revision, ago(view.updated_at, now)),
    );
    let c = view.counts;
    field(
        "Instances:",
        format!(
            "{} up, {} starting, {} draining, {} down ({} total)",
            c.up, c.starting, c.draining, c.down, c.total
        ),
    );
    s.push('\n');
    if !view.instances.is_empty() {
        s.push_str(&instance_table(&view.instances));
        s.push('\n');
    }
    s.push_str("Recent events:\n");
    s.push_str(&event_table(&events, now, false));
    output::out(&s)
}

fn event_table(events: &[Event], now: ieum_model::Timestamp, with_service: bool) -> String {
    let mut header = vec!["AGE", "KIND"];
    if with_service {
        header.push("SERVICE");
    }
    header.extend(["INSTANCE", "MESSAGE"]);
    let mut t = Table::new(&header);
    for e in events {
        let mut row = vec![ago(e.time, now), e.kind.to_string()];
        if with_service {
            row.push(or_dash(e.service.as_deref()));
        }
        row.extend([or_dash(e.instance.as_deref()), e.message.clone()]);
        t.row(row);
    }
    t.render()
}

/// `ieum events [SERVICE]`.
#[derive(Debug, clap::Args)]
pub(crate) struct EventsArgs {
    /// Only this service's timeline.
    service: Option<String>,
    /// Keep printing new events as they happen.
    #[arg(short, long)]
    follow: bool,
    /// Only these kinds (comma-separated), e.g. `instance.down,instance.up`.
    #[arg(long)]
    kind: Option<String>,
    /// Only this instance.
    #[arg(long)]
    instance: Option<String>,
    /// Only events since a time (RFC 3339) or a duration ago (`10m`).
    #[arg(long)]
    since: Option<String>,
    /// At most this many past events.
    #[arg(long, default_value_t = 50)]
    limit: u32,
}

fn query_string(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b',' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub(crate) async fn events(ctx: &Context, args: EventsArgs) -> anyhow::Result<()> {
    let client = ctx.client()?;
    if let Some(s) = &args.service {
        service_name(s)?;
    }
    let filters = [
        ("service", args.service.clone()),
        ("instance", args.instance.clone()),
        ("kind", args.kind.clone()),
    ];
    let mut pairs = filters.to_vec();
    pairs.push(("since", args.since.clone()));
    pairs.push(("limit", Some(args.limit.to_string())));
    let mut past: Vec<Event> = client
        .get(&format!("/v1/events{}", query_string(&pairs)))
        .await?;
    past.reverse(); // oldest first reads like a log
    let with_service = args.service.is_none();
    if !args.follow {
        if output::structured(ctx.format, &past)? {
            return Ok(());
        }
        return output::out(&event_table(&past, now(), with_service));
    }
    for e in &past {
        print_event(ctx.format, e, with_service)?;
    }
    let last = past.last().map(|e| e.id).unwrap_or(0);
    let mut pairs = filters.to_vec();
    pairs.push(("after", Some(last.to_string())));
    let resp = client
        .stream(&format!("/v1/events/stream{}", query_string(&pairs)))
        .await?;
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    loop {
        tokio::select! {
            chunk = body.next() => {
                let Some(chunk) = chunk else { break };
                let chunk = chunk.map_err(|e| client.unreachable(&e))?;
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buf.find("\n\n") {
                    let block: String = buf.drain(..end + 2).collect();
                    let data: String = block.lines().filter_map(|l| l.strip_prefix("data:")).map(str::trim_start).collect();
                    if data.is_empty() {
                        continue;
                    }
                    let e: Event = serde_json::from_str(&data).context("malformed event from the server")?;
                    print_event(ctx.format, &e, with_service)?;
                }
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    Ok(())
}

fn print_event(format: Format, e: &Event, with_service: bool) -> anyhow::Result<()> {
    let line = match format {
        Format::Json => serde_json::to_string(e)? + "\n",
        Format::Yaml => format!("---\n{}", serde_yaml_ng::to_string(e)?),
        Format::Table => {
            let service = if with_service {
                format!("{} ", or_dash(e.service.as_deref()))
            } else {
                String::new()
            };
            format!(
                "{} {} {service}{} {}\n",
                e.time,
                e.kind,
                or_dash(e.instance.as_deref()),
                e.message
            )
        }
    };
    output::out(&line)
}

/// `ieum register SERVICE --address A --port P`.
#[derive(Debug, clap::Args)]
pub(crate) struct RegisterArgs {
    /// Service to register under (created if unknown).
    service: String,
    /// Address where the instance listens.
    #[arg(long)]
    address: String,
    /// Port where the instance listens.
    #[arg(long)]
    port: u16,
    /// Instance id (generated by the server when absent).
    #[arg(long)]
    id: Option<String>,
    /// Lease; heartbeats are sent three times per lease.
    #[arg(long, default_value = "15s")]
    ttl: Duration,
    /// Application protocol: http, h2, grpc or tcp.
    #[arg(long, default_value = "http")]
    protocol: String,
    /// Availability zone.
    #[arg(long)]
    zone: Option<String>,
    /// Region.
    #[arg(long)]
    region: Option<String>,
    /// Cluster.
    #[arg(long)]
    cluster: Option<String>,
    /// Platform (vm, kubernetes, local, …).
    #[arg(long, default_value = "vm")]
    platform: String,
    /// Version of the code the instance runs.
    #[arg(long)]
    version: Option<String>,
    /// Relative share of traffic.
    #[arg(long, default_value_t = 1)]
    weight: u32,
    /// Metadata, `KEY=VALUE`, repeatable.
    #[arg(long = "meta", value_parser = parse_kv)]
    metadata: Vec<(String, String)>,
    /// Let the server check `GET PATH` on the instance instead of relying on heartbeats.
    #[arg(long)]
    check_http: Option<String>,
    /// Let the server check that the port accepts TCP connections.
    #[arg(long)]
    check_tcp: bool,
    /// Interval of the server's check.
    #[arg(long, default_value = "10s")]
    check_interval: Duration,
    /// Leave the instance registered on exit (it expires with its lease).
    #[arg(long)]
    keep: bool,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))
}

pub(crate) async fn register(ctx: &Context, args: RegisterArgs) -> anyhow::Result<()> {
    let service = service_name(&args.service)?;
    let protocol: Protocol =
        serde_json::from_value(serde_json::Value::String(args.protocol.clone())).map_err(|_| {
            Failure::Usage(format!(
                "unknown protocol `{}`: use http, h2, grpc or tcp",
                args.protocol
            ))
        })?;
    let mut reg = InstanceRegistration::new(args.address.clone(), args.port);
    reg.id = args.id.clone();
    reg.ttl = args.ttl;
    reg.protocol = protocol;
    reg.zone = args.zone.clone();
    reg.region = args.region.clone();
    reg.cluster = args.cluster.clone();
    reg.platform = Some(args.platform.clone());
    reg.version = args.version.clone();
    reg.weight = args.weight;
    reg.metadata = args.metadata.iter().cloned().collect::<BTreeMap<_, _>>();
    if args.check_http.is_some() || args.check_tcp {
        reg.check = Some(Check {
            http: args.check_http.clone(),
            tcp: args.check_tcp.then_some(true),
            grpc: None,
            interval: args.check_interval,
            timeout: Duration::from_secs(2).min(args.check_interval),
        });
    }
    let client = ctx.client()?;
    let path = format!("/v1/services/{service}/instances");
    let registered: serde_json::Value = client.write(Method::POST, &path, Some(&reg)).await?;
    let id = registered["id"].as_str().unwrap_or_default().to_owned();
    reg.id = Some(id.clone());
    if !output::structured(ctx.format, &registered)? {
        output::out(&format!("{id}\n"))?;
    }
    eprintln!(
        "registered {service}/{id} at {}:{}; heartbeating every {}; Ctrl-C to stop",
        args.address,
        args.port,
        human_every(args.ttl)
    );

    let every = (args.ttl.get() / 3).max(StdDuration::from_millis(200));
    let heartbeat = format!("/v1/services/{service}/instances/{id}/heartbeat");
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                match client.write::<serde_json::Value>(Method::PUT, &heartbeat, None::<&()>).await {
                    Ok(_) => {}
                    Err(e) if e.is_not_found() => {
                        eprintln!("the server no longer knows {service}/{id}; registering again");
                        if let Err(e) = client.write::<serde_json::Value>(Method::POST, &path, Some(&reg)).await {
                            eprintln!("registering again failed: {e}");
                        }
                    }
                    Err(e) => eprintln!("heartbeat failed (will retry): {e}"),
                }
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    if !args.keep {
        match client
            .write::<serde_json::Value>(
                Method::DELETE,
                &format!("/v1/services/{service}/instances/{id}"),
                None::<&()>,
            )
            .await
        {
            Ok(_) => eprintln!("deregistered {service}/{id}"),
            Err(e) => eprintln!("could not deregister {service}/{id}: {e}"),
        }
    }
    Ok(())
}

fn human_every(ttl: Duration) -> String {
    Duration::from(ttl.get() / 3).to_string()
}
