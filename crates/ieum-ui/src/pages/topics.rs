//! `/ui/topics` and `/ui/topics/{pubsub}/{topic}`: events per topic as sidecars report
//! them, with the services that publish (rate, failed publishes) and consume (rate,
//! retries, drops, dead letters).

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
    Page::new(title, Nav::Topics, render(&view, now)).stream("/v1/events/stream")
}

fn render(t: &TopicView, now: Timestamp) -> Markup {
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
            p.muted { "As of " (format::time(now, now)) "." }
        }
    }
}
