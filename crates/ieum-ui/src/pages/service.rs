//! `/ui/services/{name}`: one service: its instances, circuit breakers, callers and
//! callees with golden signals, the topics it publishes to and consumes, SLA over the last
//! hour, interfaces, the configuration that applies with its history, and its timeline.

use std::collections::BTreeSet;

use ieum_model::resource::Kind;
use ieum_model::service::MtlsMode;
use ieum_model::{Duration, Event, EventKind, Instance, ServiceView, Timestamp};
use ieum_registry::Registry;
use ieum_registry::registry::{BreakerState, Bucket, Golden, TopicView};
use ieum_store::{EventQuery, Revision, StoredResource};
use maud::{Markup, html};

use crate::format::{self, NONE};
use crate::interfaces::{self, Parsed};
use crate::layout::{self, Nav, Page};
use crate::pages::services::{RECENT, SLA_SPAN, counts_badge, observed_text, sla_status, sla_text};
use crate::pages::topics;
use crate::parts;

/// Events shown on a timeline.
pub(crate) const TIMELINE: u32 = 200;
/// Width of one SLA bucket.
const STEP: Duration = Duration::from_secs(300);

struct View {
    now: Timestamp,
    service: ServiceView,
    kinds: Vec<EventKind>,
    unknown_kinds: Vec<String>,
    events: Vec<Event>,
    breakers: Vec<BreakerState>,
    callers: Vec<(String, Golden)>,
    callees: Vec<(String, Golden)>,
    served: Option<Golden>,
    /// Topics the service publishes to or consumes, over [`topics::SPAN`].
    topics: Vec<TopicView>,
    buckets: Vec<Bucket>,
    config: Vec<(StoredResource, Vec<Revision>)>,
}

pub(crate) async fn page(registry: &Registry, name: &str, kind: Option<&str>) -> Page {
    let Some(service) = registry.service(name) else {
        return layout::not_found(
            "Service not found",
            html! { "No service named " code { (name) } " is registered." },
        );
    };
    let now = registry.now();
    let (kinds, unknown_kinds) = parts::parse_kinds(kind);
    let query = EventQuery {
        service: Some(name.to_owned()),
        kinds: kinds.clone(),
        limit: TIMELINE,
        ..EventQuery::default()
    };
    let events = match registry.events(&query).await {
        Ok(e) => e,
        Err(e) => return layout::failed("the timeline", &e),
    };
    let config = match configuration(registry, name).await {
        Ok(c) => c,
        Err(e) => return layout::failed("the configuration", &e),
    };
    let traffic = registry.traffic(now.minus(RECENT));
    let breakers = registry
        .breakers()
        .into_iter()
        .filter(|b| b.caller == name || b.destination == name)
        .collect();
    let view = View {
        now,
        kinds,
        unknown_kinds,
        events,
        breakers,
        callers: traffic
            .edges
            .iter()
            .filter(|((_, to), _)| to == name)
            .map(|((from, _), g)| (from.clone(), *g))
            .collect(),
        callees: traffic
            .edges
            .iter()
            .filter(|((from, _), _)| from == name)
            .map(|((_, to), g)| (to.clone(), *g))
            .collect(),
        served: traffic.served.get(name).copied(),
        topics: registry
            .topics(now.minus(topics::SPAN))
            .into_iter()
            .filter(|t| {
                t.publishers.iter().any(|p| p.service == name)
                    || t.consumers.iter().any(|c| c.service == name)
            })
            .collect(),
        buckets: registry.signal_buckets(name, aligned(now.minus(SLA_SPAN)), STEP),
        config,
        service,
    };
    let mut stream = format!("/v1/events/stream?service={name}");
    if !view.kinds.is_empty() {
        stream += &format!("&kind={}", parts::kinds_param(&view.kinds));
    }
    Page::new(name, Nav::Services, render(&view)).stream(stream)
}

/// `t` rounded down to a multiple of [`STEP`], so buckets start on the clock (12:05, 12:10).
fn aligned(t: Timestamp) -> Timestamp {
    let step = i64::try_from(STEP.as_millis_u64()).unwrap_or(1);
    Timestamp::from_millis(t.as_millis().div_euclid(step) * step)
}

/// The resources that apply to the service, each with its history.
async fn configuration(
    registry: &Registry,
    name: &str,
) -> Result<Vec<(StoredResource, Vec<Revision>)>, ieum_registry::RegistryError> {
    let resources = registry
        .resources_for(&BTreeSet::from([name.to_owned()]))
        .await?;
    let mut out = Vec::with_capacity(resources.len());
    for r in resources {
        let history = match Kind::parse(&r.kind) {
            Some(kind) => registry.history(kind, &r.name).await.unwrap_or_default(),
            None => Vec::new(),
        };
        out.push((r, history));
    }
    Ok(out)
}

fn render(v: &View) -> Markup {
    let s = &v.service;
    let spec = &s.spec;
    html! {
        h1 { (s.name) " " (counts_badge(s.counts.up, s.counts.total)) }
        @if let Some(d) = &spec.description { p.sub data-testid="description" { (d) } }
        dl.meta {
            @if let Some(o) = &spec.owner { dt { "Owner" } dd { (o) } }
            @if !spec.tags.is_empty() { dt { "Tags" } dd { (spec.tags.join(", ")) } }
            @if !s.labels.is_empty() {
                dt { "Labels" }
                dd { @for (k, val) in &s.labels { span.kv { (k) "=" (val) } " " } }
            }
            @if let Some(x) = &spec.external {
                dt { "External" }
                dd.mono { (x.host) ":" (x.port) @if x.tls { " (TLS)" } }
            }
            @if spec.mtls_mode() == MtlsMode::Permissive {
                dt { "mTLS" }
                dd data-testid="mtls" {
                    (format::badge("warn", "permissive"))
                    " plain-text callers are let in beside mesh peers, without an identity; set "
                    code { "mtls: strict" } " once every caller runs in the mesh."
                }
            }
            dt { "Defined" }
            dd { "revision " (s.revision) ", updated " (format::time(s.updated_at, v.now)) }
        }
        (instances(v))
        (breakers(v))
        (traffic(v))
        (events(v))
        (sla(v))
        (interfaces_section(v))
        (config(v))
        (timeline(v))
    }
}

fn instances(v: &View) -> Markup {
    html! {
        h2 #instances-heading { "Instances" }
        @if v.service.instances.is_empty() {
            p.empty #instances data-live { "No instance is registered." }
        } @else {
            table data-testid="instances" {
                thead {
                    tr {
                        th { "Instance" } th { "State" } th { "Zone" } th { "Region" } th { "Platform" }
                        th { "Version" } th { "Address" } th.num { "Uptime" } th { "Last heartbeat" } th { "Check" }
                    }
                }
                tbody #instances data-live {
                    @for i in &v.service.instances { (instance_row(i, v.now)) }
                }
            }
        }
    }
}

fn instance_row(i: &Instance, now: Timestamp) -> Markup {
    html! {
        tr data-testid="instance-row" data-instance=(i.id) data-state=(i.state.as_str()) {
            td {
                span.mono { (i.id) }
                @if !i.metadata.is_empty() {
                    div.kv data-testid="metadata" {
                        @for (k, val) in &i.metadata { (k) "=" (val) " " }
                    }
                }
            }
            td {
                span class={ "badge " (format::state_class(i.state)) } data-testid="state" { (i.state.as_str()) }
                div.kv title=(i.state_since) { (i.state_reason) " · " (format::ago(i.state_since, now)) }
            }
            td { (i.zone.as_deref().unwrap_or(NONE)) }
            td { (i.region.as_deref().unwrap_or(NONE)) }
            td { (i.platform.as_deref().unwrap_or(NONE)) }
            td { (i.version.as_deref().unwrap_or(NONE)) }
            td.mono { (i.address) ":" (i.port) }
            @match (i.up_since, i.uptime(now)) {
                (Some(since), Some(up)) => td.num.uptime data-testid="uptime" data-since=(since) title={ "up since " (since) } { (format::duration(up)) },
                _ => td.num.uptime data-testid="uptime" title={ (i.state.as_str()) " since " (i.state_since) } { (NONE) },
            }
            td { @match i.last_heartbeat { Some(t) => (format::time(t, now)), None => (NONE) } }
            td {
                @match &i.last_check {
                    Some(c) => {
                        (format::badge(if c.passed { "ok" } else { "bad" }, if c.passed { "passed" } else { "failed" }))
                        " " span.kv data-testid="check-output" { (c.output) }
                        " " span.kv { (format::time(c.at, now)) }
                    }
                    None => span.muted { @if i.check.is_some() { "not run yet" } @else { "heartbeats" } }
                }
            }
        }
    }
}

fn breakers(v: &View) -> Markup {
    let mut list: Vec<&BreakerState> = v.breakers.iter().collect();
    // Open first, then by caller and destination.
    list.sort_by_key(|b| (!b.is_open(), b.caller.as_str(), b.destination.as_str()));
    let open = list.iter().filter(|b| b.is_open()).count();
    html! {
        h2 { "Circuit breakers" }
        section #breakers data-live {
            @if list.is_empty() {
                p.empty { "No breaker transition reported for calls from or to this service since the server started." }
            } @else {
                p.sub {
                    @if open == 0 { "All breakers are closed." }
                    @else { (format::badge("bad", &format!("{open} open"))) " — calls through an open breaker fail fast." }
                }
                (parts::breakers_table(&list, v.now))
            }
        }
    }
}

fn edge_table(title: &str, list: &[(String, Golden)], breakers: &[&BreakerState]) -> Markup {
    html! {
        h3 { (title) }
        @if list.is_empty() {
            p.muted { "None reported in the last minute." }
        } @else {
            table data-testid=(title.to_lowercase()) {
                thead {
                    tr {
                        th { "Service" } th.num { "req/s" } th.num { "success" } th.num { "p50" } th.num { "p99" } th { "Breakers" }
                    }
                }
                tbody {
                    @for (name, g) in list {
                        @let mine: Vec<&&BreakerState> = breakers.iter().filter(|b| b.caller == *name || b.destination == *name).collect();
                        tr data-testid="edge" data-service=(name) {
                            td { (parts::service_link(name)) }
                            (parts::signal_cells(Some(g), false, true))
                            td {
                                @if mine.is_empty() { span.muted { (NONE) } }
                                @else {
                                    @let worst = mine.iter().find(|b| b.is_open()).or(mine.first());
                                    @if let Some(b) = worst { (format::breaker(&b.state)) }
                                    @if mine.len() > 1 { " " span.kv { "(" (mine.len()) " breakers)" } }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn traffic(v: &View) -> Markup {
    let name = v.service.name.as_str();
    let as_caller: Vec<&BreakerState> = v.breakers.iter().filter(|b| b.caller == name).collect();
    let as_callee: Vec<&BreakerState> = v
        .breakers
        .iter()
        .filter(|b| b.destination == name)
        .collect();
    html! {
        h2 { "Traffic" }
        section #traffic data-live {
            p.sub {
                "Last minute, as the sidecars report it. Served: "
                @match v.served.filter(|g| g.requests > 0) {
                    Some(g) => {
                        (format::rate(g.requests_per_second)) " req/s"
                        @if let Some(r) = g.success_rate { ", " (format::percent(r)) " success" }
                        @if let Some(p) = g.p99_ms { ", p99 " (format::millis(p)) }
                    }
                    None => "nothing reported",
                }
            }
            (edge_table("Callers", &v.callers, &as_callee))
            (edge_table("Callees", &v.callees, &as_caller))
        }
    }
}

/// The topics the service publishes to and consumes, with its own counts.
fn events(v: &View) -> Markup {
    let name = v.service.name.as_str();
    html! {
        h2 { "Events" }
        section #topics data-live {
            @if v.topics.is_empty() {
                p.muted { "No events published or consumed in the last " (topics::SPAN) "." }
            } @else {
                table data-testid="service-topics" {
                    thead { tr { th { "Topic" } th { "Role" } th.num { "per second" } th.num { "events" } th.num { "failures" } } }
                    tbody {
                        @for t in &v.topics {
                            @for p in t.publishers.iter().filter(|p| p.service == name) {
                                tr data-testid="service-topic" data-role="publishes" {
                                    td { (parts::topic_link(&t.pubsub, &t.topic)) }
                                    td { "publishes" }
                                    td.num { (format::rate(p.per_second)) }
                                    td.num { (p.published) }
                                    td.num { (p.failed) " failed" }
                                }
                            }
                            @for c in t.consumers.iter().filter(|c| c.service == name) {
                                tr data-testid="service-topic" data-role="consumes" {
                                    td { (parts::topic_link(&t.pubsub, &t.topic)) }
                                    td { "consumes" }
                                    td.num { (format::rate(c.per_second)) }
                                    td.num { (c.delivered) }
                                    td.num { (c.retried) " retried, " (c.dropped) " dropped, " (c.dead_lettered) " dead-lettered" }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// SLA target against what was observed, per five minutes over the last hour: a small
/// chart of success and a table.
fn sla(v: &View) -> Markup {
    let sla = v.service.spec.sla.as_ref();
    let hour = {
        let mut acc: Option<Golden> = None;
        for b in &v.buckets {
            acc = Some(merge(acc, &b.signals));
        }
        acc
    };
    html! {
        h2 { "SLA" }
        section #sla data-live {
            @match sla {
                Some(sla) => {
                    @let (class, word) = sla_status(sla, hour.as_ref());
                    p.sub data-testid="sla" {
                        span class={ "badge " (class) } { (word) }
                        " target " strong { (sla_text(sla)) } " · observed over the last hour " strong { (observed_text(hour.as_ref())) }
                    }
                }
                None => p.sub { "No SLA is declared (set " code { "spec.sla" } " on the Service)." },
            }
            @if v.buckets.iter().any(|b| b.signals.requests > 0) {
                (chart(&v.buckets, sla.map(|s| s.availability)))
                table {
                    thead { tr { th { "From" } th.num { "requests" } th.num { "success" } th.num { "p99" } th { "" } } }
                    tbody {
                        @for b in v.buckets.iter().rev().filter(|b| b.signals.requests > 0) {
                            @let g = &b.signals;
                            tr {
                                td { (format::time(b.start, v.now)) }
                                td.num { (g.requests) }
                                td.num { (g.success_rate.map_or(NONE.into(), format::percent)) }
                                td.num { (g.p99_ms.map_or(NONE.into(), format::millis)) }
                                td { @if let Some(sla) = sla { @let (c, w) = sla_status(sla, Some(g)); span class={ "badge " (c) } { (w) } } }
                            }
                        }
                    }
                }
            } @else {
                p.muted { "No traffic reported in the last hour." }
            }
        }
    }
}

/// Sums two buckets' signals (rates added, success weighted, p99 the worst).
fn merge(a: Option<Golden>, b: &Golden) -> Golden {
    let Some(a) = a else { return *b };
    let n = (a.requests + b.requests) as f64;
    let weighted = |x: Option<f64>, y: Option<f64>| match (x, y) {
        (Some(x), Some(y)) if n > 0.0 => Some((x * a.requests as f64 + y * b.requests as f64) / n),
        (x, y) => x.or(y),
    };
    Golden {
        requests: a.requests + b.requests,
        requests_per_second: a.requests_per_second + b.requests_per_second,
        success_rate: weighted(a.success_rate, b.success_rate),
        p50_ms: weighted(a.p50_ms, b.p50_ms),
        p99_ms: match (a.p99_ms, b.p99_ms) {
            (Some(x), Some(y)) => Some(x.max(y)),
            (x, y) => x.or(y),
        },
    }
}

/// Success per bucket as bars, with the availability target as a line.
fn chart(buckets: &[Bucket], target: Option<f64>) -> Markup {
    let (w, h) = (600.0_f64, 80.0_f64);
    let n = buckets.len().max(1) as f64;
    let bw = w / n;
    // The chart spans from a round figure below the lowest value shown (at most 90%) to
    // 100%, so every bar has a height.
    let lowest = buckets
        .iter()
        .filter_map(|b| b.signals.success_rate)
        .map(|r| r * 100.0)
        .chain(target)
        .fold(100.0_f64, f64::min);
    let floor = (((lowest - 1.0) / 10.0).floor() * 10.0).clamp(0.0, 90.0);
    let y = |pct: f64| h - (pct - floor) / (100.0 - floor) * h;
    html! {
        svg width=(w) height=(h + 16.0) viewBox={ "0 0 " (w) " " (h + 16.0) } role="img" aria-label="success rate per five minutes, last hour" {
            rect x="0" y="0" width=(w) height=(h) fill="#fff" stroke="#e3e3e0" {}
            @for (i, b) in buckets.iter().enumerate() {
                @if let Some(r) = b.signals.success_rate {
                    @let pct = r * 100.0;
                    @let ok = match target { Some(t) => pct >= t, None => r >= 0.99 };
                    rect x=(format!("{:.1}", i as f64 * bw + 1.0)) y=(format!("{:.1}", y(pct))) width=(format!("{:.1}", (bw - 2.0).max(1.0))) height=(format!("{:.1}", h - y(pct))) fill=(if ok { "#9fd3ad" } else { "#e9a39c" }) {
                        title { (format::percent(r)) }
                    }
                }
            }
            @if let Some(t) = target {
                line x1="0" x2=(w) y1=(format!("{:.1}", y(t))) y2=(format!("{:.1}", y(t))) stroke="#9a6700" stroke-dasharray="4 3" {}
                text x="4" y=(format!("{:.1}", (y(t) - 3.0).max(10.0))) fill="#9a6700" { "target " (t) "%" }
            }
            text x="0" y=(h + 13.0) fill="#656d76" { "1 h ago" }
            text x=(w) y=(h + 13.0) fill="#656d76" text-anchor="end" { "now · axis " (floor) "–100%" }
        }
    }
}

fn interfaces_section(v: &View) -> Markup {
    let list = &v.service.spec.interfaces;
    html! {
        h2 { "Interfaces" }
        @if list.is_empty() {
            p.muted { "No interface definition is declared." }
        }
        @for iface in list {
            @let kind = match iface.kind {
                ieum_model::service::InterfaceKind::Openapi => "OpenAPI",
                ieum_model::service::InterfaceKind::Grpc => "gRPC",
                ieum_model::service::InterfaceKind::Asyncapi => "AsyncAPI",
            };
            section data-testid="interface" {
                @match interfaces::parse(iface) {
                    Parsed::Link(url) => {
                        h3 { (kind) }
                        p { "Published at " a href=(url) rel="noreferrer noopener" { (url) } " (not fetched by the UI)." }
                    }
                    Parsed::OpenApi { title, version, operations } => {
                        h3 { (kind) @if let Some(t) = title { " · " (t) } @if let Some(ver) = version { " " span.muted { (ver) } } }
                        table {
                            thead { tr { th { "Method" } th { "Path" } th { "Summary" } } }
                            tbody {
                                @for op in operations {
                                    tr data-testid="operation" { td.mono { (op.method) } td.mono { (op.path) } td { (op.summary) } }
                                }
                            }
                        }
                    }
                    Parsed::Grpc(services) => {
                        h3 { (kind) }
                        @for svc in services {
                            table {
                                thead { tr { th colspan="2" { span.mono { (svc.name) } } } }
                                tbody {
                                    @for m in &svc.methods {
                                        tr data-testid="rpc" {
                                            td.mono { (m.name) }
                                            td.mono {
                                                "(" @if m.client_streaming { "stream " } (m.input) ") → ("
                                                @if m.server_streaming { "stream " } (m.output) ")"
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    Parsed::AsyncApi(channels) => {
                        h3 { (kind) }
                        table {
                            thead { tr { th { "Channel" } th { "Operations" } } }
                            tbody { @for (c, ops) in channels { tr { td.mono { (c) } td { (ops) } } } }
                        }
                    }
                    Parsed::Unreadable(why) => {
                        h3 { (kind) }
                        p.muted { "Could not read the inline definition: " (why) }
                        details { summary { "Show it" } pre { (iface.inline.as_deref().unwrap_or_default()) } }
                    }
                }
            }
        }
    }
}

fn config(v: &View) -> Markup {
    html! {
        h2 { "Configuration" }
        @if v.config.is_empty() {
            p.muted { "No route or policy applies to this service." }
        } @else {
            p.sub { "Resources that apply to this service, newest revision first." }
            table data-testid="resources" {
                thead { tr { th { "Kind" } th { "Name" } th.num { "Revision" } th { "Updated" } th { "By" } } }
                tbody {
                    @for (r, _) in &v.config {
                        tr {
                            td { (r.kind) }
                            td { a href={ "/ui/config/" (r.kind) "/" (r.name) } { (r.name) } }
                            td.num { (r.revision) }
                            td { (format::time(r.updated_at, v.now)) }
                            td { (r.author) }
                        }
                    }
                }
            }
            @for (r, history) in &v.config {
                h3 { (r.kind) "/" (r.name) }
                (parts::history(history, v.now, false))
            }
        }
    }
}

fn timeline(v: &View) -> Markup {
    let base = format!("/ui/services/{}?", v.service.name);
    html! {
        h2 #timeline-heading { "Timeline" }
        (parts::kind_filter(&base, &v.kinds))
        @if !v.unknown_kinds.is_empty() {
            p.muted { "Not event kinds (ignored): " (v.unknown_kinds.join(", ")) }
        }
        (parts::timeline("timeline", &v.events, v.now, false))
        @if v.events.len() >= TIMELINE as usize {
            p.muted { "The newest " (TIMELINE) " events. " a href={ "/ui/events?service=" (v.service.name) } { "More on the events page" } }
        }
    }
}
