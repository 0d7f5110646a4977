//! `/ui/events`: every event, newest first, filterable by service and kind, live.

use ieum_model::Name;
use ieum_registry::Registry;
use ieum_store::EventQuery;
use maud::html;

use crate::layout::{self, Nav, Page};
use crate::parts;

/// Events listed unless `limit` says otherwise.
const DEFAULT_LIMIT: u32 = 200;
/// Most events one page lists.
const MAX_LIMIT: u32 = 2000;

pub(crate) async fn page(
    registry: &Registry,
    service: Option<&str>,
    kind: Option<&str>,
    limit: Option<&str>,
) -> Page {
    let service = service.map(str::trim).filter(|s| !s.is_empty());
    let bad_service = service.filter(|s| Name::parse(s).is_err());
    let (kinds, unknown) = parts::parse_kinds(kind);
    let limit = limit
        .and_then(|l| l.parse::<u32>().ok())
        .unwrap_or(DEFAULT_LIMIT)
        .clamp(1, MAX_LIMIT);
    let query = EventQuery {
        service: service.map(str::to_owned),
        kinds: kinds.clone(),
        limit,
        ..EventQuery::default()
    };
    let events = if bad_service.is_some() {
        Vec::new()
    } else {
        match registry.events(&query).await {
            Ok(e) => e,
            Err(e) => return layout::failed("events", &e),
        }
    };
    let now = registry.now();
    let mut base = String::from("/ui/events?");
    let mut stream = String::from("/v1/events/stream?");
    if let Some(s) = service.filter(|_| bad_service.is_none()) {
        base += &format!("service={s}&");
        stream += &format!("service={s}&");
    }
    if !kinds.is_empty() {
        stream += &format!("kind={}", parts::kinds_param(&kinds));
    }
    let body = html! {
        h1 { "Events" }
        form.filters method="get" action="/ui/events" {
            label { "Service " input type="text" name="service" value=(service.unwrap_or_default()) placeholder="any" size="18"; }
            label { "Kind " (parts::kind_select(&kinds)) }
            label { "Show " input type="number" name="limit" value=(limit) min="1" max=(MAX_LIMIT) style="width:5.5em"; }
            button type="submit" { "Filter" }
            @if service.is_some() || !kinds.is_empty() { a href="/ui/events" { "clear" } }
        }
        (parts::kind_filter(&base, &kinds))
        @if let Some(s) = bad_service {
            p.muted { code { (s) } " is not a service name." }
        }
        @if !unknown.is_empty() {
            p.muted { "Not event kinds (ignored): " (unknown.join(", ")) }
        }
        @if let Some(s) = service.filter(|_| bad_service.is_none()) {
            p.sub { "Events of " (parts::service_link(s)) "." }
        }
        (parts::timeline("events", &events, now, true))
    };
    let page = Page::new("Events", Nav::Events, body);
    if bad_service.is_some() {
        page
    } else {
        page.stream(stream.trim_end_matches(['&', '?']).to_owned())
    }
}
