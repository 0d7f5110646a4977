//! `/ui/topology`: who calls whom over the last minutes, as an inline SVG with services in
//! columns by call depth, coloured by health, and the same edges as a table. Topics with
//! events sit between their publishers and consumers (publisher → topic → consumer).

use std::collections::{BTreeMap, BTreeSet};

use ieum_model::{Duration, Timestamp};
use ieum_registry::Registry;
use ieum_registry::registry::{BreakerState, Golden, TopicView};
use maud::{Markup, html};

use crate::format;
use crate::layout::{Nav, Page};
use crate::pages::topics;
use crate::parts;

/// Edges seen over this span are drawn.
const SPAN: Duration = Duration::from_secs(600);

struct View {
    now: Timestamp,
    /// Health class of each service (`ok`, `warn`, `bad`, `idle`).
    health: BTreeMap<String, &'static str>,
    edges: BTreeMap<(String, String), Golden>,
    breakers: Vec<BreakerState>,
    /// Topics with events over the span, drawn between publishers and consumers.
    topics: Vec<TopicView>,
}

/// A topic's node in the graph: `pubsub/topic`, which no service name can be (service
/// names have no `/`).
fn topic_key(t: &TopicView) -> String {
    format!("{}/{}", t.pubsub, t.topic)
}

pub(crate) fn page(registry: &Registry) -> Page {
    let now = registry.now();
    let traffic = registry.traffic(now.minus(SPAN));
    let health = registry
        .services()
        .1
        .into_iter()
        .map(|s| {
            let c = s.instances;
            let mut class = match (c.up, c.total) {
                (_, 0) => "idle",
                (u, t) if u == t => "ok",
                (0, _) => "bad",
                _ => "warn",
            };
            if let Some(r) = traffic.served.get(&s.name).and_then(|g| g.success_rate) {
                class = worst(class, success_class(r));
            }
            (s.name, class)
        })
        .collect();
    let view = View {
        now,
        health,
        edges: traffic.edges,
        breakers: registry.breakers(),
        topics: registry.topics(now.minus(SPAN)),
    };
    Page::new("Topology", Nav::Topology, render(&view)).stream("/v1/events/stream")
}

fn success_class(rate: f64) -> &'static str {
    if rate >= 0.99 {
        "ok"
    } else if rate >= 0.95 {
        "warn"
    } else {
        "bad"
    }
}

fn worst(a: &'static str, b: &'static str) -> &'static str {
    let rank = |c: &str| match c {
        "bad" => 3,
        "warn" => 2,
        "ok" => 1,
        _ => 0,
    };
    if rank(b) > rank(a) { b } else { a }
}

fn colour(class: &str) -> (&'static str, &'static str) {
    match class {
        "ok" => ("#e7f4ea", "#1a7f37"),
        "warn" => ("#fdf4dc", "#9a6700"),
        "bad" => ("#fbe9e7", "#c0362c"),
        _ => ("#eef0f2", "#59636e"),
    }
}

/// Call depth of every node: callers left, callees right. Cycles are broken where a
/// depth-first walk finds them, so every service gets one column.
fn depths(nodes: &BTreeSet<&str>, edges: &[(&str, &str)]) -> BTreeMap<String, usize> {
    let mut out: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, b) in edges {
        out.entry(a).or_default().push(b);
    }
    // Depth-first, marking edges that close a cycle (back edges).
    let mut state: BTreeMap<&str, u8> = BTreeMap::new(); // 1 on the path, 2 done
    let mut back: BTreeSet<(&str, &str)> = BTreeSet::new();
    // Start from services nobody calls, so a cycle is cut where it closes, not where the
    // walk happened to enter it.
    let called: BTreeSet<&str> = edges.iter().map(|(_, b)| *b).collect();
    let starts = nodes
        .iter()
        .filter(|n| !called.contains(*n))
        .chain(nodes.iter().filter(|n| called.contains(*n)));
    for start in starts {
        if state.contains_key(start) {
            continue;
        }
        let mut stack: Vec<(&str, usize)> = vec![(start, 0)];
        state.insert(start, 1);
        while let Some((n, i)) = stack.pop() {
            let next = out.get(n).and_then(|v| v.get(i)).copied();
            match next {
                Some(m) => {
                    stack.push((n, i + 1));
                    match state.get(m) {
                        Some(1) => {
                            back.insert((n, m));
                        }
                        Some(_) => {}
                        None => {
                            state.insert(m, 1);
                            stack.push((m, 0));
                        }
                    }
                }
                None => {
                    state.insert(n, 2);
                }
            }
        }
    }
    // Longest path over what remains (a DAG), relaxing in rounds: at most one per node.
    let dag: Vec<(&str, &str)> = edges
        .iter()
        .filter(|e| !back.contains(*e) && e.0 != e.1)
        .copied()
        .collect();
    let mut depth: BTreeMap<&str, usize> = nodes.iter().map(|n| (*n, 0)).collect();
    for _ in 0..nodes.len() {
        let mut changed = false;
        for (a, b) in &dag {
            let d = depth[a] + 1;
            if depth[b] < d {
                depth.insert(b, d);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    depth.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

fn render(v: &View) -> Markup {
    let pairs: Vec<(&str, &str)> = v
        .edges
        .keys()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let keys: Vec<String> = v.topics.iter().map(topic_key).collect();
    let mut topic_pairs: Vec<(&str, &str)> = Vec::new();
    for (t, key) in v.topics.iter().zip(&keys) {
        topic_pairs.extend(
            t.publishers
                .iter()
                .map(|p| (p.service.as_str(), key.as_str())),
        );
        topic_pairs.extend(
            t.consumers
                .iter()
                .map(|c| (key.as_str(), c.service.as_str())),
        );
    }
    let topic_nodes: BTreeSet<&str> = keys.iter().map(String::as_str).collect();
    let nodes: BTreeSet<&str> = pairs
        .iter()
        .chain(&topic_pairs)
        .flat_map(|(a, b)| [*a, *b])
        .chain(topic_nodes.iter().copied())
        .collect();
    let open: BTreeSet<(&str, &str)> = v
        .breakers
        .iter()
        .filter(|b| b.is_open())
        .map(|b| (b.caller.as_str(), b.destination.as_str()))
        .collect();
    html! {
        h1 { "Topology" }
        p.sub { "Calls reported by sidecars over the last " (SPAN) ", callers to the left of what they call. Services are coloured by instance health and success rate; calls by success rate, dashed red where a breaker is open. Topics (purple) sit between the services that publish to them and those that consume them." }
        section #topology data-live {
            @if nodes.is_empty() {
                p.empty { "No calls or events reported in the last " (SPAN) ". Calls show here once services run with sidecars (" code { "ieum run" } ")." }
            } @else {
                (graph(v, &nodes, &pairs, &topic_pairs, &topic_nodes, &open))
                h2 { "Calls" }
                table data-testid="edges" {
                    thead { tr { th { "Caller" } th { "Calls" } th.num { "req/s" } th.num { "success" } th.num { "p50" } th.num { "p99" } th { "Breaker" } } }
                    tbody {
                        @for ((a, b), g) in &v.edges {
                            tr data-testid="edge" data-caller=(a) data-callee=(b) {
                                td { (parts::service_link(a)) }
                                td { (parts::service_link(b)) }
                                (parts::signal_cells(Some(g), false, true))
                                td {
                                    @if open.contains(&(a.as_str(), b.as_str())) { (format::breaker("blocked")) }
                                    @else { span.muted { (format::NONE) } }
                                }
                            }
                        }
                    }
                }
                @if !v.topics.is_empty() {
                    h2 { "Topics" }
                    (topics::table(&v.topics))
                }
            }
            p.muted { "As of " (format::time(v.now, v.now)) "." }
        }
    }
}

fn graph(
    v: &View,
    nodes: &BTreeSet<&str>,
    pairs: &[(&str, &str)],
    topic_pairs: &[(&str, &str)],
    topic_nodes: &BTreeSet<&str>,
    open: &BTreeSet<(&str, &str)>,
) -> Markup {
    const NW: f64 = 170.0;
    const NH: f64 = 32.0;
    const COL: f64 = 250.0;
    const ROW: f64 = 50.0;
    let all: Vec<(&str, &str)> = pairs.iter().chain(topic_pairs).copied().collect();
    let depth = depths(nodes, &all);
    let mut columns: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    for n in nodes {
        columns.entry(depth[*n]).or_default().push(n);
    }
    let mut pos: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for (d, list) in &columns {
        for (i, n) in list.iter().enumerate() {
            pos.insert(n, (20.0 + *d as f64 * COL, 20.0 + i as f64 * ROW));
        }
    }
    let width = 40.0 + columns.len() as f64 * COL;
    let height = 40.0 + columns.values().map(Vec::len).max().unwrap_or(1) as f64 * ROW;
    let curve = |a: &str, b: &str| {
        let ((ax, ay), (bx, by)) = (pos[a], pos[b]);
        let (x1, y1, x2, y2) = (ax + NW, ay + NH / 2.0, bx, by + NH / 2.0);
        let bend = ((x2 - x1).abs() / 2.0).max(60.0);
        format!(
            "M {x1:.0} {y1:.0} C {:.0} {y1:.0}, {:.0} {y2:.0}, {x2:.0} {y2:.0}",
            x1 + bend,
            x2 - bend
        )
    };
    let topics: BTreeMap<&str, &TopicView> = v
        .topics
        .iter()
        .filter_map(|t| {
            let key = topic_key(t);
            topic_nodes.get(key.as_str()).map(|k| (*k, t))
        })
        .collect();
    html! {
        svg width=(width) height=(height) viewBox={ "0 0 " (width) " " (height) } role="img" aria-label="call graph" data-testid="graph" {
            defs {
                marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse" {
                    path d="M 0 0 L 10 5 L 0 10 z" fill="#8c959f" {}
                }
            }
            @for (a, b) in pairs {
                @let g = &v.edges[&((*a).to_owned(), (*b).to_owned())];
                @let blocked = open.contains(&(*a, *b));
                @let class = if blocked { "bad" } else { g.success_rate.map_or("idle", success_class) };
                @let w = 1.0 + (1.0 + g.requests_per_second).log10().min(3.0);
                path d=(curve(a, b))
                    fill="none" stroke=(colour(class).1) stroke-width=(format!("{w:.1}")) stroke-opacity="0.8"
                    stroke-dasharray=[blocked.then_some("6 4")] marker-end="url(#arrow)" {
                    title { (a) " → " (b) ": " (format::rate(g.requests_per_second)) " req/s"
                        @if let Some(r) = g.success_rate { ", " (format::percent(r)) " success" }
                        @if blocked { ", breaker open" } }
                }
            }
            @for (a, b) in topic_pairs {
                path d=(curve(a, b)) fill="none" stroke=(TOPIC.1) stroke-width="1.5" stroke-opacity="0.8"
                    stroke-dasharray="2 3" marker-end="url(#arrow)" data-testid="topic-edge" data-from=(a) data-to=(b) {
                    title { (a) " → " (b) }
                }
            }
            @for n in topic_nodes {
                @let (x, y) = pos[n];
                @if let Some(t) = topics.get(n) {
                    a href=(parts::topic_href(&t.pubsub, &t.topic)) data-testid="topic-node" data-topic=(n) {
                        rect x=(x) y=(y) width=(NW) height=(NH) rx=(NH / 2.0) fill=(TOPIC.0) stroke=(TOPIC.1) {}
                        text x=(x + 14.0) y=(y + 20.0) fill="#1f2328" { (truncate(n, 22)) }
                    }
                }
            }
            @for n in nodes.iter().filter(|n| !topic_nodes.contains(*n)) {
                @let (x, y) = pos[n];
                @let class = v.health.get(*n).copied().unwrap_or("idle");
                @let (fill, stroke) = colour(class);
                a href=(parts::service_href(n)) {
                    rect x=(x) y=(y) width=(NW) height=(NH) rx="6" fill=(fill) stroke=(stroke) {}
                    text x=(x + 10.0) y=(y + 20.0) fill="#1f2328" { (truncate(n, 22)) }
                }
            }
        }
    }
}

/// Fill and stroke of topic nodes and edges.
const TOPIC: (&str, &str) = ("#f3eefc", "#8250df");

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depths_put_callees_right_and_survive_cycles() {
        let edges = [
            ("web", "orders"),
            ("orders", "stock"),
            ("orders", "payments"),
            ("payments", "stock"),
            ("stock", "orders"), // a cycle
        ];
        let nodes: BTreeSet<&str> = edges.iter().flat_map(|(a, b)| [*a, *b]).collect();
        let d = depths(&nodes, &edges);
        assert_eq!(d["web"], 0);
        assert!(d["orders"] > d["web"]);
        assert!(d["stock"] > d["payments"]);
        assert!(d["payments"] > d["orders"]);
    }
}
