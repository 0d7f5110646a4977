//! `/ui/services`: every service at a glance: instances up of total, where they run,
//! uptimes, SLA target against what is observed, last event, golden signals, open breakers.

use std::collections::BTreeMap;

use ieum_model::service::Sla;
use ieum_model::{Duration, ServiceSummary, Timestamp};
use ieum_registry::Registry;
use ieum_registry::registry::{BreakerState, Golden, Traffic};
use maud::{Markup, html};

use crate::format::{self, NONE};
use crate::layout::{Nav, Page};
use crate::parts;

/// Golden signals on the list are over the last minute.
pub(crate) const RECENT: Duration = Duration::from_secs(60);
/// SLAs are judged over the last hour.
pub(crate) const SLA_SPAN: Duration = Duration::from_secs(3600);

/// Everything the services page shows, read in one go.
pub(crate) struct ServicesView {
    pub(crate) now: Timestamp,
    pub(crate) services: Vec<ServiceSummary>,
    pub(crate) slas: BTreeMap<String, Sla>,
    pub(crate) recent: Traffic,
    pub(crate) hour: Traffic,
    pub(crate) breakers: Vec<BreakerState>,
}

impl ServicesView {
    /// Reads it from the registry (memory only: no store round trip).
    pub(crate) fn read(registry: &Registry) -> Self {
        let now = registry.now();
        ServicesView {
            now,
            services: registry.services().1,
            slas: registry.slas(),
            recent: registry.traffic(now.minus(RECENT)),
            hour: registry.traffic(now.minus(SLA_SPAN)),
            breakers: registry.breakers(),
        }
    }
}

pub(crate) fn page(registry: &Registry) -> Page {
    let view = ServicesView::read(registry);
    Page::new("Services", Nav::Services, render(&view)).stream("/v1/events/stream")
}

/// The badge for a service's instances: green when all are up, amber when some are, red
/// when none is, grey without instances.
pub(crate) fn counts_badge(up: usize, total: usize) -> Markup {
    let class = match (up, total) {
        (_, 0) => "idle",
        (u, t) if u == t => "ok",
        (0, _) => "bad",
        _ => "warn",
    };
    html! { span class={ "badge " (class) } title="instances up / registered" { (up) "/" (total) " up" } }
}

/// How an SLA compares with what was observed over the last hour.
pub(crate) fn sla_status(sla: &Sla, observed: Option<&Golden>) -> (&'static str, &'static str) {
    let Some(g) = observed.filter(|g| g.requests > 0) else {
        return ("idle", "no data");
    };
    let availability_ok = g.success_rate.is_none_or(|r| r * 100.0 >= sla.availability);
    let latency_ok = match (sla.latency_p99, g.p99_ms) {
        (Some(target), Some(p99)) => p99 <= target.get().as_secs_f64() * 1000.0,
        _ => true,
    };
    match (availability_ok, latency_ok) {
        (true, true) => ("ok", "met"),
        (false, _) => ("bad", "missed"),
        (true, false) => ("warn", "slow"),
    }
}

/// `99.9% · p99 200ms` for a target, the same shape for what was observed.
pub(crate) fn sla_text(sla: &Sla) -> String {
    match sla.latency_p99 {
        Some(p) => format!("{}% · p99 {p}", sla.availability),
        None => format!("{}%", sla.availability),
    }
}

pub(crate) fn observed_text(g: Option<&Golden>) -> String {
    let Some(g) = g.filter(|g| g.requests > 0) else {
        return "no traffic reported".into();
    };
    let a = g.success_rate.map_or(NONE.into(), format::percent);
    match g.p99_ms {
        Some(p) => format!("{a} · p99 {}", format::millis(p)),
        None => a,
    }
}

pub(crate) fn render(v: &ServicesView) -> Markup {
    let total_instances: usize = v.services.iter().map(|s| s.instances.total).sum();
    let up_instances: usize = v.services.iter().map(|s| s.instances.up).sum();
    let open: Vec<&BreakerState> = v.breakers.iter().filter(|b| b.is_open()).collect();
    let mut open_to: BTreeMap<&str, usize> = BTreeMap::new();
    for b in &open {
        *open_to.entry(b.destination.as_str()).or_default() += 1;
    }
    html! {
        h1 { "Services" }
        div.cards #summary data-live {
            div.card { span.muted { "Services" } b { (v.services.len()) } }
            div.card { span.muted { "Instances up" } b { (up_instances) " / " (total_instances) } }
            div.card { span.muted { "Open circuit breakers" } b data-testid="open-breakers" { (open.len()) } }
        }
        section #breakers data-live {
            @if !open.is_empty() {
                h2 { "Circuit breakers" }
                p.sub { "Open breakers: these callers fail calls fast instead of sending them." }
                (parts::breakers_table(&open, v.now))
            }
        }
        @if v.services.is_empty() {
            p.empty { "No service is registered yet. Register an instance or apply a Service resource." }
        }
        table data-testid="services" {
            thead {
                tr {
                    th { "Service" } th { "Instances" } th { "Zones" } th { "Regions" } th { "Platforms" }
                    th.num { "Oldest up" } th.num { "Newest up" } th { "SLA (1 h)" } th { "Last event" }
                    th.num title="requests per second, last minute" { "req/s" }
                    th.num title="share of failed requests, last minute" { "errors" }
                    th.num title="worst reported p99 latency, last minute" { "p99" }
                    th { "Breakers" }
                }
            }
            tbody #services data-live {
                @for s in &v.services {
                    (row(v, s, open_to.get(s.name.as_str()).copied().unwrap_or(0)))
                }
            }
        }
    }
}

fn row(v: &ServicesView, s: &ServiceSummary, open: usize) -> Markup {
    let list = |l: &[String]| {
        if l.is_empty() {
            NONE.to_owned()
        } else {
            l.join(", ")
        }
    };
    let recent = v.recent.served.get(&s.name);
    html! {
        tr data-testid="service-row" data-service=(s.name) {
            td {
                (parts::service_link(&s.name))
                @if s.external { " " (format::badge("idle", "external")) }
                @if let Some(d) = &s.description { div.kv { (d) } }
            }
            td { (counts_badge(s.instances.up, s.instances.total)) }
            td { (list(&s.zones)) }
            td { (list(&s.regions)) }
            td { (list(&s.platforms)) }
            td.num data-testid="oldest-uptime" { (s.oldest_uptime.map_or(NONE.into(), format::duration)) }
            td.num data-testid="newest-uptime" { (s.newest_uptime.map_or(NONE.into(), format::duration)) }
            td data-testid="sla" {
                @if let Some(sla) = v.slas.get(&s.name) {
                    @let hour = v.hour.served.get(&s.name);
                    @let (class, word) = sla_status(sla, hour);
                    span class={ "badge " (class) } { (word) }
                    div.kv { "target " (sla_text(sla)) }
                    div.kv { "observed " (observed_text(hour)) }
                } @else {
                    span.muted { (NONE) }
                }
            }
            td {
                @if let Some(e) = &s.last_event {
                    span.kind title=(e.message) { (e.kind.as_str()) }
                    div.kv { (format::time(e.time, v.now)) }
                } @else { (NONE) }
            }
            (parts::signal_cells(recent, true, false))
            td data-testid="service-breakers" {
                @if open > 0 {
                    span.badge.bad title="callers' breakers to this service that are open" { (open) " open" }
                } @else { span.muted { (NONE) } }
            }
        }
    }
}
