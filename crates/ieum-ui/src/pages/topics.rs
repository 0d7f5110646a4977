//! `/ui/topics` and `/ui/topics/{pubsub}/{topic}`: events per topic as sidecars report
//! them, with the services that publish (rate, failed publishes) and consume (rate,
//! retries, drops, dead letters) and the latest single events; `/ui/correlations/{id}`:
//! every event reported with one correlation id, in order (a choreography followed
//! across services).

use ieum_model::telemetry::{EventOutcome, EventSighting};
use ieum_model::{Duration, Timestamp};
use ieum_registry::Registry;
use ieum_registry::registry::TopicView;
use maud::{Markup, html};

use crate::format::{self, NONE};
use crate::layout::{self, Nav, Page};
use crate::parts;

/// Events reported over this span are shown (as on the topology page).
pub(crate) const SPAN: Duration = Duration::from_secs(600);

/// Every topic with events over [`SPAN`].
pub(crate) fn list(registry: &Registry) -> Page {
    let now = registry.now();
    let topics = registry.topics(now.minus(SPAN));
    let body = html! {
        h1 { "Topics" }
        p.sub { "Events published and consumed through PubSubs and Bindings over the last " (SPAN) ", as the sidecars report them." }
        form.filters method="get" action="/ui/correlations" {
            label { "Follow a correlation id " input type="search" name="id" placeholder="e.g. an order id" required; }
            button type="submit" { "Show its events" }
        }
        section #topics data-live {
            (table(&topics))
            p.muted { "As of " (format::time(now, now)) "." }
        }
    };
    Page::new("Topics", Nav::Topics, body).stream("/v1/events/stream")
}

/// The list of topics with their publishers, consumers and failures (shared with the
/// topology page).
pub(crate) fn table(topics: &[TopicView]) -> Markup {
    html! {
        @if topics.is_empty() {
            p.empty { "No events reported in the last " (SPAN) ". Topics show here once apps publish or consume through a sidecar (" code { "/v1/publish/PUBSUB/TOPIC" } ")." }
        } @else {
            table data-testid="topics" {
                thead { tr { th { "Topic" } th { "Publishers" } th { "Consumers" } th.num { "published/s" } th.num { "delivered/s" } th.num { "failures" } } }
                tbody {
                    @for t in topics {
                        tr data-testid="topic" data-pubsub=(t.pubsub) data-topic=(t.topic) {
                            td { (parts::topic_link(&t.pubsub, &t.topic)) }
                            td { (services(t.publishers.iter().map(|p| p.service.as_str()))) }
                            td { (services(t.consumers.iter().map(|c| c.service.as_str()))) }
                            td.num { (format::rate(t.publishers.iter().map(|p| p.per_second).sum())) }
                            td.num { (format::rate(t.consumers.iter().map(|c| c.per_second).sum())) }
                            td.num { (failures(t.failures())) }
                        }
                    }
                }
            }
        }
    }
}

fn services<'a>(names: impl Iterator<Item = &'a str>) -> Markup {
    let names: Vec<&str> = names.collect();
    html! {
        @if names.is_empty() { span.muted { (NONE) } }
        @for (i, n) in names.iter().enumerate() {
            @if i > 0 { ", " }
            (parts::service_link(n))
        }
    }
}

fn failures(n: u64) -> Markup {
    html! {
        @if n == 0 { span.muted { "0" } } @else { (format::badge("bad", &n.to_string())) }
    }
}

/// One topic's page.
pub(crate) fn page(registry: &Registry, pubsub: &str, topic: &str) -> Page {
    let now = registry.now();
    let Some(view) = registry
        .topics(now.minus(SPAN))
        .into_iter()
        .find(|t| t.pubsub == pubsub && t.topic == topic)
    else {
        return layout::not_found(
            "Topic not found",
            html! { "No events reported on " code { (pubsub) "/" (topic) } " in the last " (SPAN) "." },
        );
    };
    let title = format!("{pubsub}/{topic}");
    let recent = registry.topic_events(pubsub, topic, RECENT);
    Page::new(title, Nav::Topics, render(&view, &recent, now)).stream("/v1/events/stream")
}

/// Single events shown on a topic's page.
pub(crate) const RECENT: usize = 50;

/// Every event reported with correlation id `id`, in order.
pub(crate) fn correlation(registry: &Registry, id: &str) -> Page {
    let now = registry.now();
    let list = registry.correlation(id);
    let body = html! {
        h1 { "Correlation " span.mono { (id) } }
        p.sub { "Events carrying the CloudEvents extension " code { "correlationid" } " = " code { (id) } ", in the order the sidecars saw them (each by its own clock), as reported over the last hour." }
        section #correlation data-live {
            @if list.is_empty() {
                p.empty { "No event with this correlation id was reported in the last hour. Publish events with a " code { "ce-correlationid" } " header (or a " code { "correlationid" } " attribute) to follow them here." }
            } @else {
                (events_table(&list, now, true))
            }
            p.muted { "As of " (format::time(now, now)) "." }
        }
    };
    Page::new(format!("Correlation {id}"), Nav::Topics, body).stream("/v1/events/stream")
}

/// Single events: when, which service saw it and how, the event, and its correlation.
fn events_table(list: &[EventSighting], now: Timestamp, with_topic: bool) -> Markup {
    html! {
        table data-testid="event-records" {
            thead { tr {
                th { "When" } th { "Service" } th { "" }
                @if with_topic { th { "Topic" } }
                th { "Event" } th { "Type" } th { "Outcome" } th.num { "Attempt" } th { "Correlation" } th { "Reason" }
            } }
            tbody {
                @for s in list {
                    @let e = &s.event;
                    tr data-testid="event-record" data-outcome=(e.outcome.as_str()) data-service=(s.service) {
                        td { (format::time(e.at, now)) }
                        td { (parts::service_link(&s.service)) }
                        td.muted { @if e.direction == "publish" { "published" } @else { "consumed" } }
                        @if with_topic { td { (parts::topic_link(&e.pubsub, &e.topic)) } }
                        td.mono title={ "source " (e.source) } { (e.id) }
                        td.mono { (e.event_type) }
                        td { (outcome(e.outcome)) }
                        td.num { @if e.attempt > 0 { (e.attempt) } }
                        td { @if let Some(c) = &e.correlation_id { (correlation_link(c)) } }
                        td.muted { (e.reason.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
    }
}

fn outcome(o: EventOutcome) -> Markup {
    let class = match o {
        EventOutcome::Published | EventOutcome::Delivered => "ok",
        EventOutcome::Retried => "warn",
        EventOutcome::DeadLettered | EventOutcome::Dropped => "bad",
    };
    format::badge(class, o.as_str())
}

fn correlation_link(id: &str) -> Markup {
    html! { a.mono href={ "/ui/correlations/" (parts::encode_segment(id)) } { (id) } }
}

fn render(t: &TopicView, recent: &[EventSighting], now: Timestamp) -> Markup {
    html! {
        h1 { span.mono { (t.pubsub) "/" (t.topic) } }
        p.sub { "Topic " code { (t.topic) } " of " a href={ "/ui/config/PubSub/" (t.pubsub) } { (t.pubsub) } ", over the last " (SPAN) ", as the sidecars report it." }
        section #topic data-live {
            h2 { "Publishers" }
            @if t.publishers.is_empty() {
                p.muted { "No service published in the last " (SPAN) "." }
            } @else {
                table data-testid="publishers" {
                    thead { tr { th { "Service" } th.num { "published/s" } th.num { "published" } th.num { "failed" } } }
                    tbody {
                        @for p in &t.publishers {
                            tr data-testid="publisher" data-service=(p.service) {
                                td { (parts::service_link(&p.service)) }
                                td.num { (format::rate(p.per_second)) }
                                td.num data-testid="published" { (p.published) }
                                td.num data-testid="failed" { (failures(p.failed)) }
                            }
                        }
                    }
                }
            }
            h2 { "Consumers" }
            @if t.consumers.is_empty() {
                p.muted { "No service consumed in the last " (SPAN) "." }
            } @else {
                table data-testid="consumers" {
                    thead { tr { th { "Service" } th.num { "delivered/s" } th.num { "delivered" } th.num { "retried" } th.num { "dropped" } th.num { "dead-lettered" } } }
                    tbody {
                        @for c in &t.consumers {
                            tr data-testid="consumer" data-service=(c.service) {
                                td { (parts::service_link(&c.service)) }
                                td.num { (format::rate(c.per_second)) }
                                td.num data-testid="delivered" { (c.delivered) }
                                td.num data-testid="retried" { (failures(c.retried)) }
                                td.num data-testid="dropped" { (failures(c.dropped)) }
                                td.num data-testid="dead-lettered" { (failures(c.dead_lettered)) }
                            }
                        }
                    }
                }
            }
            h2 { "Latest events" }
            @if recent.is_empty() {
                p.muted { "No single events reported yet (sidecars report every dead letter and drop, every event with a correlation id, and a few others per topic)." }
            } @else {
                (events_table(recent, now, false))
            }
            p.muted { "As of " (format::time(now, now)) "." }
        }
    }
}
