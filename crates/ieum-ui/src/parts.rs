//! Pieces several pages share: the event timeline and its filter, breaker rows, golden
//! signal cells, diff tables and resource histories.

use ieum_model::resource::{self, Change};
use ieum_model::{Event, EventKind, Timestamp};
use ieum_registry::registry::{BreakerState, Golden};
use ieum_store::Revision;
use maud::{Markup, html};

use crate::format::{self, NONE};

/// The URL of a service's page.
pub(crate) fn service_href(name: &str) -> String {
    format!("/ui/services/{name}")
}

/// A link to a service's page.
pub(crate) fn service_link(name: &str) -> Markup {
    html! { a href=(service_href(name)) { (name) } }
}

/// The URL of a topic's page. `PubSub` names and topics reported by sidecars are checked
/// (DNS-1123 names; letters, digits, `.`, `_`, `-`), so they need no escaping in a path.
pub(crate) fn topic_href(pubsub: &str, topic: &str) -> String {
    format!("/ui/topics/{pubsub}/{topic}")
}

/// A link to a topic's page, reading `pubsub/topic`.
pub(crate) fn topic_link(pubsub: &str, topic: &str) -> Markup {
    html! { a.mono href=(topic_href(pubsub, topic)) { (pubsub) "/" (topic) } }
}

/// `s` as one path segment: everything but unreserved characters percent-encoded
/// (correlation ids are free text).
pub(crate) fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Kinds of events parsed from a `kind=a,b` query value (unknown ones are dropped, and
/// returned apart so the page can say so).
pub(crate) fn parse_kinds(value: Option<&str>) -> (Vec<EventKind>, Vec<String>) {
    let mut kinds = Vec::new();
    let mut unknown = Vec::new();
    for k in value.unwrap_or_default().split(',').map(str::trim) {
        if k.is_empty() {
            continue;
        }
        match EventKind::parse(k) {
            Some(kind) if !kinds.contains(&kind) => kinds.push(kind),
            Some(_) => {}
            None => unknown.push(k.to_owned()),
        }
    }
    (kinds, unknown)
}

/// `a,b` for a `kind=` query value.
pub(crate) fn kinds_param(kinds: &[EventKind]) -> String {
    kinds
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// The colour of an event kind's badge.
fn kind_class(kind: EventKind) -> &'static str {
    match kind {
        EventKind::InstanceDown
        | EventKind::InstanceExpired
        | EventKind::ProtectionEntered
        | EventKind::EventDeadLettered
        | EventKind::EventDropped
        | EventKind::AuthzDenied => "bad",
        EventKind::InstanceDraining
        | EventKind::BreakerChanged
        | EventKind::ConfigChanged
        | EventKind::TokenRevoked => "warn",
        EventKind::InstanceUp | EventKind::InstanceRegistered | EventKind::ProtectionLeft => "ok",
        _ => "idle",
    }
}

/// Quick filters above a timeline: all, or one group of kinds. `base` is the page's path
/// with any other query parameters (ending in `?` or `&`).
pub(crate) fn kind_filter(base: &str, current: &[EventKind]) -> Markup {
    let groups: [(&str, &[EventKind]); 8] = [
        ("all", &[]),
        (
            "instances",
            &[
                EventKind::InstanceRegistered,
                EventKind::InstanceUpdated,
                EventKind::InstanceUp,
                EventKind::InstanceDown,
                EventKind::InstanceDraining,
                EventKind::InstanceDeregistered,
                EventKind::InstanceExpired,
            ],
        ),
        (
            "down",
            &[EventKind::InstanceDown, EventKind::InstanceExpired],
        ),
        ("breakers", &[EventKind::BreakerChanged]),
        (
            "events",
            &[EventKind::EventDeadLettered, EventKind::EventDropped],
        ),
        (
            "authorization",
            &[
                EventKind::AuthzDenied,
                EventKind::TokenCreated,
                EventKind::TokenRevoked,
            ],
        ),
        (
            "configuration",
            &[
                EventKind::ConfigChanged,
                EventKind::ServiceCreated,
                EventKind::ServiceUpdated,
            ],
        ),
        (
            "registry",
            &[
                EventKind::RegistryStarted,
                EventKind::ProtectionEntered,
                EventKind::ProtectionLeft,
            ],
        ),
    ];
    let same = |g: &[EventKind]| g.len() == current.len() && g.iter().all(|k| current.contains(k));
    let grouped = groups.iter().any(|(_, g)| same(g));
    html! {
        div.filters data-testid="kind-filter" {
            span.muted { "Show:" }
            @for (label, g) in groups {
                a href={ (base) "kind=" (kinds_param(g)) } class=[same(g).then_some("on")] { (label) }
            }
            @if !grouped {
                @for k in current {
                    a.on href={ (base) "kind=" (k.as_str()) } { (k.as_str()) }
                }
            }
        }
    }
}

/// A `<select>` of every kind, for filter forms.
pub(crate) fn kind_select(current: &[EventKind]) -> Markup {
    let one = (current.len() == 1).then(|| current[0]);
    html! {
        select name="kind" {
            option value="" selected[current.is_empty()] { "every kind" }
            @if current.len() > 1 {
                option value=(kinds_param(current)) selected { (kinds_param(current)) }
            }
            @for k in EventKind::ALL {
                option value=(k.as_str()) selected[one == Some(k)] { (k.as_str()) }
            }
        }
    }
}

/// Events newest first, as a live list (`id`, swapped whole by the live script).
pub(crate) fn timeline(id: &str, events: &[Event], now: Timestamp, with_service: bool) -> Markup {
    html! {
        @if events.is_empty() {
            p.empty #(id) data-live { "No events match." }
        } @else {
            ol.timeline #(id) data-live {
                @for e in events {
                    li data-testid="event" data-id=(e.id) data-kind=(e.kind.as_str()) {
                        span { (format::time(e.time, now)) }
                        span { span class={ "badge kind " (kind_class(e.kind)) } { (e.kind.as_str()) } }
                        span {
                            @if with_service {
                                @if let Some(s) = &e.service { (service_link(s)) " " }
                            }
                            @if let Some(i) = &e.instance { span.mono { (i) } ": " }
                            span data-testid="event-message" { (e.message) }
                            " " span.muted { "— " (e.author) }
                        }
                    }
                }
            }
        }
    }
}

/// Golden signal cells: req/s, success (or errors), p50, p99.
pub(crate) fn signal_cells(g: Option<&Golden>, errors: bool, p50: bool) -> Markup {
    let g = g.filter(|g| g.requests > 0);
    html! {
        td.num { (g.map_or(NONE.into(), |g| format::rate(g.requests_per_second))) }
        td.num {
            @match g.and_then(|g| g.success_rate) {
                Some(r) if errors => span class=[(r < 0.99).then_some(if r < 0.95 { "badge bad" } else { "badge warn" })] { (format::error_percent(1.0 - r)) },
                Some(r) => span class=[(r < 0.99).then_some(if r < 0.95 { "badge bad" } else { "badge warn" })] { (format::percent(r)) },
                None => (NONE),
            }
        }
        @if p50 {
            td.num { (g.and_then(|g| g.p50_ms).map_or(NONE.into(), format::millis)) }
        }
        td.num { (g.and_then(|g| g.p99_ms).map_or(NONE.into(), format::millis)) }
    }
}

/// Breaker rows: caller (instance), destination (endpoint), state, since, reason.
pub(crate) fn breakers_table(list: &[&BreakerState], now: Timestamp) -> Markup {
    html! {
        table {
            thead { tr { th { "Caller" } th { "Instance" } th { "Calls" } th { "Endpoint" } th { "State" } th { "Since" } th { "Reason" } } }
            tbody {
                @for b in list {
                    tr data-testid="breaker" data-state=(b.state) class=[b.is_open().then_some("open")] {
                        td { (service_link(&b.caller)) }
                        td.mono { (b.instance) }
                        td { (service_link(&b.destination)) }
                        td.mono { (b.endpoint.as_deref().unwrap_or("all endpoints")) }
                        td { (format::breaker(&b.state)) }
                        td { (format::time(b.since, now)) }
                        td { (b.reason) }
                    }
                }
            }
        }
    }
}

/// A JSON value as a table cell shows it: strings bare, the rest as compact JSON.
fn value(v: Option<&serde_json::Value>) -> String {
    match v {
        None => String::new(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    }
}

/// A diff: one row per field path, old → new.
pub(crate) fn diff_table(changes: &[Change]) -> Markup {
    html! {
        @if changes.is_empty() {
            p.muted { "No field changed." }
        } @else {
            table.diff {
                thead { tr { th { "Field" } th { "Change" } th { "Old" } th {} th { "New" } } }
                tbody {
                    @for c in changes {
                        tr data-testid="diff" {
                            td.mono { (c.path) }
                            td { (c.op) }
                            td.mono.before { (value(c.before.as_ref())) }
                            td.arrow { "→" }
                            td.mono.after { (value(c.after.as_ref())) }
                        }
                    }
                }
            }
        }
    }
}

/// Each revision with its diff from the one before (the first from nothing; a deleted
/// resource's revision to nothing), newest first.
pub(crate) fn with_diffs(history: &[Revision]) -> Vec<(&Revision, Vec<Change>)> {
    let doc = |r: &Revision| match &r.spec {
        Some(spec) => serde_json::json!({"labels": r.labels, "spec": spec}),
        None => serde_json::json!({}),
    };
    let mut out = Vec::with_capacity(history.len());
    let mut before = serde_json::json!({});
    for r in history {
        let after = doc(r);
        out.push((r, resource::diff(&before, &after, "")));
        before = after;
    }
    out.reverse();
    out
}

/// Revisions, newest first, each with author, time and diff.
pub(crate) fn history(history: &[Revision], now: Timestamp, open_latest: bool) -> Markup {
    html! {
        @for (i, (r, diff)) in with_diffs(history).into_iter().enumerate() {
            details data-testid="revision" open[open_latest && i == 0] {
                summary {
                    "revision " (r.revision) " by " strong data-testid="author" { (r.author) } " · "
                    (format::time(r.at, now))
                    @if r.spec.is_none() { " · " (format::badge("bad", "deleted")) }
                    " · " (diff.len()) " field" @if diff.len() != 1 { "s" }
                }
                (diff_table(&diff))
            }
        }
    }
}
