//! Every page rendered from a real registry (over `MemoryStore`, with paused time so
//! uptimes are exact): the facts people come for are in the HTML, hostile text is escaped,
//! unknown names answer 404.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use ieum_model::service::{Interface, InterfaceKind, Sla};
use ieum_model::telemetry::{
    BreakerChange, EventOutcome, EventRecord, Signals, TelemetryReport, TopicSignals,
};
use ieum_model::{Duration, InstanceRegistration, Name, ServiceSpec, Timestamp};
use ieum_registry::{Options, Registry, TokioClock};
use ieum_store::MemoryStore;
use tower::ServiceExt;

/// 2026-05-01T12:00:00Z
const START: i64 = 1_777_636_800_000;

async fn registry() -> Registry {
    Registry::start(
        Arc::new(MemoryStore::new()),
        Arc::new(TokioClock::starting_at(Timestamp::from_millis(START))),
        Options::default(),
    )
    .await
    .unwrap()
}

fn app(registry: &Registry) -> Router {
    ieum_ui::router(registry.clone())
}

async fn get(app: &Router, uri: &str) -> (StatusCode, String) {
    let req = Request::builder().uri(uri).body(Body::empty()).unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    if status.is_success() {
        let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with("text/html"), "{ct}");
        let csp = resp.headers()["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'nonce-"), "{csp}");
    }
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

fn name(s: &str) -> Name {
    Name::parse(s).unwrap()
}

fn reg(id: &str, zone: &str, version: &str) -> InstanceRegistration {
    let mut r = InstanceRegistration::new("10.0.0.1", 8080);
    r.id = Some(id.into());
    r.zone = Some(zone.into());
    r.region = Some("eu".into());
    r.platform = Some("vm".into());
    r.version = Some(version.into());
    // Long leases: paused time jumps ahead when the runtime idles.
    r.ttl = Duration::from_secs(3600);
    r
}

const PROTO: &str = r#"syntax = "proto3";
package shop.orders.v1;
service Orders {
  rpc PlaceOrder (PlaceOrderRequest) returns (Order);
  rpc WatchOrder (WatchRequest) returns (stream Order);
}"#;

const OPENAPI: &str = "openapi: 3.0.0\ninfo: {title: Orders API, version: '1.4'}\npaths:\n  /orders:\n    get: {summary: List orders}\n    post: {summary: Place an order}\n  /orders/{id}:\n    get: {summary: One order}\n";

async fn apply(registry: &Registry, yaml: &str, author: &str) {
    let checked: Vec<_> = ieum_model::resource::parse_documents(yaml)
        .unwrap()
        .iter()
        .map(|r| ieum_model::resource::check(r).unwrap())
        .collect();
    registry.apply(checked, author, false).await.unwrap();
}

const ROUTE_V1: &str = "apiVersion: ieum.dev/v1\nkind: Route\nmetadata: {name: orders-api}\nspec: {service: orders, rules: [{timeouts: {request: 2s}}]}\n";
const ROUTE_V2: &str = "apiVersion: ieum.dev/v1\nkind: Route\nmetadata: {name: orders-api}\nspec: {service: orders, rules: [{timeouts: {request: 5s}}]}\n";

/// A small shop: `orders` (two instances, one up for 3h 12m), `stock` (one instance
/// reported down by its sidecar), `orders` calling `stock` through an open breaker, and a
/// route changed by bob.
async fn shop() -> Registry {
    let r = registry().await;
    let orders = ServiceSpec {
        description: Some("Takes and tracks customer orders".into()),
        owner: Some("team-checkout".into()),
        interfaces: vec![
            Interface {
                kind: InterfaceKind::Openapi,
                url: None,
                inline: Some(OPENAPI.into()),
            },
            Interface {
                kind: InterfaceKind::Grpc,
                url: None,
                inline: Some(PROTO.into()),
            },
            Interface {
                kind: InterfaceKind::Asyncapi,
                url: Some("https://orders.example/asyncapi.yaml".into()),
                inline: None,
            },
        ],
        sla: Some(Sla {
            availability: 99.9,
            latency_p99: Some(Duration::from_millis(200)),
        }),
        ..ServiceSpec::default()
    };
    r.put_service(&name("orders"), orders, BTreeMap::new(), "alice")
        .await
        .unwrap();
    r.register(&name("orders"), reg("orders-1", "eu-1a", "v1.2.0"), "local")
        .await
        .unwrap();
    // 3h 12m in steps, heartbeating.
    for _ in 0..12 {
        tokio::time::advance(std::time::Duration::from_secs(16 * 60)).await;
        r.heartbeat("orders", "orders-1").await.unwrap();
    }
    r.register(&name("orders"), reg("orders-2", "eu-1b", "v1.3.0"), "local")
        .await
        .unwrap();
    r.register(&name("stock"), reg("stock-1", "eu-1a", "v7"), "local")
        .await
        .unwrap();
    r.register(&name("stock"), reg("stock-2", "eu-1b", "v7"), "local")
        .await
        .unwrap();
    tokio::time::advance(std::time::Duration::from_secs(30)).await;
    r.report_down("stock", "stock-1", "app exited with code 137", "sidecar")
        .await
        .unwrap();
    let report = TelemetryReport {
        events: Vec::new(),
        denials: Vec::new(),
        window: Duration::from_secs(10),
        signals: vec![
            Signals {
                direction: "outbound".into(),
                destination: "stock".into(),
                route: "default".into(),
                requests: 100,
                requests_per_second: 10.0,
                success_rate: Some(0.8),
                p50_ms: Some(5.0),
                p99_ms: Some(250.0),
            },
            Signals {
                direction: "inbound".into(),
                destination: "orders".into(),
                route: "default".into(),
                requests: 200,
                requests_per_second: 20.0,
                success_rate: Some(0.9995),
                p50_ms: Some(3.0),
                p99_ms: Some(120.0),
            },
        ],
        breakers: vec![BreakerChange {
            destination: "stock".into(),
            endpoint: None,
            from: "allowed".into(),
            to: "blocked".into(),
            reason: "5 consecutive failures".into(),
            coalesced: 0,
        }],
        topics: Vec::new(),
    };
    r.report_telemetry("orders", "orders-1", report, "sidecar")
        .await
        .unwrap();
    apply(&r, ROUTE_V1, "alice").await;
    tokio::time::advance(std::time::Duration::from_secs(5)).await;
    apply(&r, ROUTE_V2, "bob").await;
    r
}

/// The `<tr>`/`<li>` elements carrying `data-testid="{id}"`, as text.
fn elements<'a>(html: &'a str, id: &str) -> Vec<&'a str> {
    let marker = format!("data-testid=\"{id}\"");
    html.match_indices(&marker)
        .map(|(i, _)| {
            let start = html[..i].rfind('<').unwrap();
            let tag: String = html[start + 1..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            let close = format!("</{tag}>");
            let end = html[i..].find(&close).map_or(html.len(), |e| i + e);
            &html[start..end]
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn services_page_shows_states_uptimes_slas_and_open_breakers() {
    let r = shop().await;
    let app = app(&r);
    for uri in ["/ui", "/ui/", "/ui/services"] {
        let (status, html) = get(&app, uri).await;
        assert_eq!(status, StatusCode::OK, "{uri}");
        for nav in ["Services", "Topology", "Configuration", "Events"] {
            assert!(html.contains(&format!(">{nav}</a>")), "{nav} in nav");
        }
        let rows = elements(&html, "service-row");
        assert_eq!(rows.len(), 2);
        let orders = rows
            .iter()
            .find(|r| r.contains("data-service=\"orders\""))
            .unwrap();
        assert!(orders.contains("href=\"/ui/services/orders\""), "{orders}");
        assert!(orders.contains("2/2 up"), "{orders}");
        assert!(orders.contains("eu-1a, eu-1b"), "{orders}");
        assert!(orders.contains("3h 12m"), "oldest uptime: {orders}");
        assert!(orders.contains("target 99.9% · p99 200ms"), "{orders}");
        assert!(orders.contains(">met<"), "{orders}");
        assert!(orders.contains("config.changed"), "last event: {orders}");
        // 200 requests in one 10 s report: 20 req/s, 0.05% errors, p99 120 ms.
        assert!(
            orders.contains(">20.0<") && orders.contains("0.05%") && orders.contains("120 ms"),
            "{orders}"
        );
        let stock = rows
            .iter()
            .find(|r| r.contains("data-service=\"stock\""))
            .unwrap();
        assert!(stock.contains("1/2 up"), "{stock}");
        assert!(
            stock.contains("1 open"),
            "open breaker towards stock: {stock}"
        );
        // Errors of stock as its callers see them: 20%.
        assert!(stock.contains("20.0%"), "{stock}");
        let breakers = elements(&html, "breaker");
        assert_eq!(breakers.len(), 1);
        assert!(breakers[0].contains(">open<") && breakers[0].contains("5 consecutive failures"));
        assert!(html.contains("data-stream=\"/v1/events/stream\""));
    }
}

#[tokio::test(start_paused = true)]
async fn service_page_shows_instances_with_uptime() {
    let r = shop().await;
    let (status, html) = get(&app(&r), "/ui/services/orders").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("Takes and tracks customer orders"));
    assert!(html.contains("team-checkout"));
    let rows = elements(&html, "instance-row");
    assert_eq!(rows.len(), 2);
    let first = rows.iter().find(|r| r.contains("orders-1")).unwrap();
    let uptime = elements(first, "uptime");
    assert_eq!(uptime.len(), 1);
    assert!(uptime[0].ends_with(">3h 12m"), "{}", uptime[0]);
    assert!(
        uptime[0].contains("data-since=\"2026-05-01T12:00:00.000Z\""),
        "{}",
        uptime[0]
    );
    assert!(first.contains("eu-1a") && first.contains("v1.2.0") && first.contains(">up<"));
    let second = rows.iter().find(|r| r.contains("orders-2")).unwrap();
    assert!(elements(second, "uptime")[0].ends_with(">35s"), "{second}");
    // The timeline follows this service's events only.
    assert!(html.contains("data-stream=\"/v1/events/stream?service=orders\""));
}

#[tokio::test(start_paused = true)]
async fn stock_timeline_says_what_happened_and_filters_by_kind() {
    let r = shop().await;
    let app = app(&r);
    let (_, html) = get(&app, "/ui/services/stock").await;
    let events = elements(&html, "event");
    let down = events
        .iter()
        .find(|e| e.contains("data-kind=\"instance.down\""))
        .expect("a down event");
    assert!(down.contains("stock-1"), "{down}");
    assert!(down.contains("app exited with code 137"), "{down}");
    assert!(events.iter().any(|e| e.contains("instance.registered")));
    let row = elements(&html, "instance-row")
        .into_iter()
        .find(|r| r.contains("stock-1"))
        .unwrap();
    assert!(
        row.contains(">down<") && row.contains("app exited with code 137"),
        "{row}"
    );

    let (_, html) = get(&app, "/ui/services/stock?kind=instance.down").await;
    let events = elements(&html, "event");
    assert_eq!(events.len(), 1, "{events:#?}");
    assert!(events[0].contains("app exited with code 137"));
    assert!(
        html.contains("data-stream=\"/v1/events/stream?service=stock&amp;kind=instance.down\"")
    );
    let (status, html) = get(&app, "/ui/services/stock?kind=nonsense").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("Not event kinds (ignored): nonsense"));
}

#[tokio::test(start_paused = true)]
async fn service_page_shows_breakers_traffic_sla_interfaces_and_configuration() {
    let r = shop().await;
    let (_, html) = get(&app(&r), "/ui/services/orders").await;
    // Circuit breakers.
    assert!(html.contains("<h2>Circuit breakers</h2>"));
    let breakers = elements(&html, "breaker");
    assert_eq!(breakers.len(), 1);
    assert!(breakers[0].contains("data-state=\"blocked\""));
    assert!(breakers[0].contains(">open<"));
    assert!(breakers[0].contains("href=\"/ui/services/stock\""));
    // Callees with golden signals.
    let edges = elements(&html, "edge");
    assert_eq!(edges.len(), 1);
    for fact in ["stock", ">10.0<", "80.0%", "5.0 ms", "250 ms", ">open<"] {
        assert!(edges[0].contains(fact), "{fact} in {}", edges[0]);
    }
    // SLA: 99.95% over the hour against 99.9%.
    let sla = elements(&html, "sla");
    assert!(
        sla[0].contains(">met<") && sla[0].contains("99.95%"),
        "{}",
        sla[0]
    );
    // Interfaces.
    let ops: Vec<&str> = elements(&html, "operation");
    assert_eq!(ops.len(), 3);
    assert!(
        ops.iter().any(|o| o.contains(">POST<")
            && o.contains(">/orders<")
            && o.contains("Place an order"))
    );
    let rpcs = elements(&html, "rpc");
    assert_eq!(rpcs.len(), 2);
    assert!(rpcs[1].contains("WatchOrder") && rpcs[1].contains("stream Order"));
    assert!(html.contains("shop.orders.v1.Orders"));
    assert!(html.contains("href=\"https://orders.example/asyncapi.yaml\""));
    // Configuration that applies, with history.
    assert!(html.contains("href=\"/ui/config/Route/orders-api\""));
    let revisions = elements(&html, "revision");
    assert!(
        revisions
            .iter()
            .any(|r| r.contains("revision 2 by <strong data-testid=\"author\">bob</strong>"))
    );
    let diffs = elements(&html, "diff");
    assert!(
        diffs
            .iter()
            .any(|d| d.contains("spec.rules[0].timeouts.request")
                && d.contains(">2s<")
                && d.contains(">5s<"))
    );
}

#[tokio::test(start_paused = true)]
async fn config_pages_show_the_last_apply_with_diff_and_author() {
    let r = shop().await;
    let app = app(&r);
    let (status, html) = get(&app, "/ui/config").await;
    assert_eq!(status, StatusCode::OK);
    let last = elements(&html, "last-apply");
    assert!(last[0].contains(">bob<"), "{}", last[0]);
    let diffs = elements(&html, "diff");
    assert_eq!(diffs.len(), 1, "{diffs:#?}");
    assert!(diffs[0].contains("spec.rules[0].timeouts.request"));
    assert!(diffs[0].contains(">2s<") && diffs[0].contains(">5s<") && diffs[0].contains("→"));
    assert!(html.contains("href=\"/ui/config/Service/orders\""));

    let (status, html) = get(&app, "/ui/config/Route/orders-api").await;
    assert_eq!(status, StatusCode::OK);
    let revisions = elements(&html, "revision");
    assert_eq!(revisions.len(), 2);
    assert!(revisions[0].contains("revision 2") && revisions[0].contains("bob"));
    assert!(revisions[1].contains("revision 1") && revisions[1].contains("alice"));
    assert!(html.contains("request: 5s"), "the current document in YAML");
    // Kinds as people type them.
    let (status, _) = get(&app, "/ui/config/routes/orders-api").await;
    assert_eq!(status, StatusCode::OK);
    let (status, html) = get(&app, "/ui/config/Route/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(html.contains("No Route named <code>nope</code>"));
    let (status, _) = get(&app, "/ui/config/Gadget/x").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(start_paused = true)]
async fn events_page_lists_and_filters_every_event() {
    let r = shop().await;
    let app = app(&r);
    let (status, html) = get(&app, "/ui/events").await;
    assert_eq!(status, StatusCode::OK);
    let all = elements(&html, "event");
    assert!(
        all.iter()
            .any(|e| e.contains("href=\"/ui/services/orders\""))
    );
    assert!(all.iter().any(|e| e.contains("registry.started")));
    assert!(
        all.iter()
            .any(|e| e.contains("breaker.changed") && e.contains("circuit to stock blocked"))
    );

    let (_, html) = get(
        &app,
        "/ui/events?service=stock&kind=instance.down,instance.registered",
    )
    .await;
    let some = elements(&html, "event");
    assert_eq!(some.len(), 3, "{some:#?}");
    assert!(some.iter().all(|e| e.contains("/ui/services/stock")));
    assert!(html.contains(
        "data-stream=\"/v1/events/stream?service=stock&amp;kind=instance.down,instance.registered\""
    ));
    let (status, html) = get(&app, "/ui/events?service=Not%20A%20Name").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("is not a service name"));
    assert!(!html.contains("data-stream="));
}

#[tokio::test(start_paused = true)]
async fn topology_shows_who_calls_whom() {
    let r = shop().await;
    let (status, html) = get(&app(&r), "/ui/topology").await;
    assert_eq!(status, StatusCode::OK);
    let edges = elements(&html, "edge");
    assert_eq!(edges.len(), 1);
    assert!(
        edges[0].contains("data-caller=\"orders\"") && edges[0].contains("data-callee=\"stock\"")
    );
    assert!(edges[0].contains(">open<"));
    assert!(html.contains("<svg") && html.contains("orders → stock"));
}

#[tokio::test(start_paused = true)]
async fn unknown_names_get_a_404_page() {
    let r = shop().await;
    let app = app(&r);
    let (status, html) = get(&app, "/ui/services/nosuch").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(html.contains("No service named <code>nosuch</code> is registered."));
    assert!(html.contains(">Services</a>"), "the nav bar is there");
    let (status, html) = get(&app, "/ui/services/%3Cb%3Ex").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(html.contains("<code>&lt;b&gt;x</code>"), "escaped");
    let (status, _) = get(&app, "/ui/nowhere").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(start_paused = true)]
async fn hostile_text_is_escaped() {
    let r = registry().await;
    let evil = "<script>alert(1)</script>\"'&";
    let spec = ServiceSpec {
        description: Some(evil.into()),
        owner: Some("<img src=x onerror=alert(2)>".into()),
        tags: vec!["<marquee>".into()],
        interfaces: vec![Interface {
            kind: InterfaceKind::Openapi,
            url: None,
            inline: Some(
                "paths: {'/<script>': {get: {summary: '<script>alert(3)</script>'}}}".into(),
            ),
        }],
        ..ServiceSpec::default()
    };
    r.put_service(
        &name("evil"),
        spec,
        BTreeMap::from([("x".into(), "\"><script>".into())]),
        "local",
    )
    .await
    .unwrap();
    let mut i = reg("e1", "z", "<v>");
    i.metadata
        .insert("k\"><script>".into(), "<script>alert(4)</script>".into());
    r.register(&name("evil"), i, "<script>author</script>")
        .await
        .unwrap();
    let app = app(&r);
    for uri in [
        "/ui/services/evil",
        "/ui",
        "/ui/events",
        "/ui/config",
        "/ui/config/Service/evil",
    ] {
        let (status, html) = get(&app, uri).await;
        assert_eq!(status, StatusCode::OK, "{uri}");
        // The only script element is the page's own, carrying its nonce.
        assert_eq!(html.matches("<script").count(), 1, "{uri}");
        assert!(html.contains("<script nonce="), "{uri}");
        assert!(!html.contains("<img src=x"), "{uri}");
        assert!(!html.contains("<marquee>"), "{uri}");
    }
    let (_, html) = get(&app, "/ui/services/evil").await;
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;'&amp;"));
    assert!(html.contains("&lt;script&gt;alert(4)&lt;/script&gt;"));
    assert!(html.contains("&lt;script&gt;alert(3)&lt;/script&gt;"));
}

#[tokio::test(start_paused = true)]
async fn a_thousand_services_render() {
    let r = registry().await;
    for n in 0..1000 {
        let mut i = reg(
            &format!("svc-{n:04}-1"),
            ["eu-1a", "eu-1b", "eu-1c"][n % 3],
            "v1",
        );
        i.address = format!("10.0.{}.{}", n / 250, n % 250 + 1);
        r.register(&name(&format!("svc-{n:04}")), i, "local")
            .await
            .unwrap();
    }
    let (status, html) = get(&app(&r), "/ui").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(elements(&html, "service-row").len(), 1000);
    assert!(html.contains("href=\"/ui/services/svc-0999\""));
}

/// Writes every page of the shop to `$IEUM_UI_DUMP/*.html` (does nothing without it), to
/// look at them in a browser: `IEUM_UI_DUMP=/tmp/ui cargo test -p ieum-ui --test pages dump`.
#[tokio::test(start_paused = true)]
async fn dump_pages_when_asked() {
    let Ok(dir) = std::env::var("IEUM_UI_DUMP") else {
        return;
    };
    let r = api_shop().await;
    let app = app(&r);
    for (file, uri) in [
        ("services", "/ui"),
        ("orders", "/ui/services/orders"),
        ("stock", "/ui/services/stock"),
        ("topology", "/ui/topology"),
        ("config", "/ui/config"),
        ("route", "/ui/config/Route/orders-api"),
        ("events", "/ui/events"),
        ("missing", "/ui/services/nope"),
        ("apis", "/ui/apis"),
        ("api", "/ui/apis/shop-public"),
        ("partner-api", "/ui/apis/partner"),
    ] {
        let (_, html) = get(&app, uri).await;
        std::fs::write(format!("{dir}/{file}.html"), html).unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn breakers_close_and_leave_with_their_caller() {
    let r = shop().await;
    let app = app(&r);
    let report = |to: &str| TelemetryReport {
        events: Vec::new(),
        denials: Vec::new(),
        window: Duration::from_secs(10),
        signals: Vec::new(),
        breakers: vec![BreakerChange {
            destination: "stock".into(),
            endpoint: Some("stock-1".into()),
            from: "blocked".into(),
            to: to.into(),
            reason: "probes passed".into(),
            coalesced: 2,
        }],
        topics: Vec::new(),
    };
    r.report_telemetry("orders", "orders-2", report("probing"), "sidecar")
        .await
        .unwrap();
    r.report_telemetry("orders", "orders-1", report("allowed"), "sidecar")
        .await
        .unwrap();
    let (_, html) = get(&app, "/ui/services/stock").await;
    let rows = elements(&html, "breaker");
    assert_eq!(rows.len(), 3, "{rows:#?}");
    assert!(rows[0].contains(">open<"), "open first: {}", rows[0]);
    assert!(
        rows.iter()
            .any(|b| b.contains(">half-open<") && b.contains("orders-2"))
    );
    assert!(
        rows.iter()
            .any(|b| b.contains(">closed<") && b.contains("stock-1"))
    );
    r.deregister("orders", "orders-2", "local").await.unwrap();
    let (_, html) = get(&app, "/ui/services/stock").await;
    assert_eq!(elements(&html, "breaker").len(), 2);
}

fn topic_line(direction: &str, counts: [u64; 6]) -> TopicSignals {
    let [
        published,
        failed,
        delivered,
        retried,
        dropped,
        dead_lettered,
    ] = counts;
    TopicSignals {
        pubsub: "bus".into(),
        topic: "orders.created".into(),
        direction: direction.into(),
        published,
        delivered,
        retried,
        dropped,
        dead_lettered,
        failed,
    }
}

/// `orders` publishes to `bus/orders.created` (two 10 s reports: 50 + 30 acknowledged, 2
/// failed), `billing` consumes it (40 delivered, 3 retried, 1 dropped, 2 dead-lettered).
async fn events_shop() -> Registry {
    let r = registry().await;
    r.register(&name("orders"), reg("orders-1", "eu-1a", "v1"), "local")
        .await
        .unwrap();
    r.register(&name("billing"), reg("billing-1", "eu-1a", "v1"), "local")
        .await
        .unwrap();
    let report = |topics| TelemetryReport {
        events: Vec::new(),
        denials: Vec::new(),
        window: Duration::from_secs(10),
        signals: Vec::new(),
        breakers: Vec::new(),
        topics,
    };
    for (published, failed) in [(50, 2), (30, 0)] {
        r.report_telemetry(
            "orders",
            "orders-1",
            report(vec![topic_line("publish", [published, failed, 0, 0, 0, 0])]),
            "sidecar",
        )
        .await
        .unwrap();
        tokio::time::advance(std::time::Duration::from_secs(10)).await;
    }
    r.report_telemetry(
        "billing",
        "billing-1",
        report(vec![topic_line("consume", [0, 0, 40, 3, 1, 2])]),
        "sidecar",
    )
    .await
    .unwrap();
    r
}

#[tokio::test(start_paused = true)]
async fn topic_page_lists_publishers_and_consumers_with_their_counts() {
    let r = events_shop().await;
    let app = app(&r);
    let (status, html) = get(&app, "/ui/topics/bus/orders.created").await;
    assert_eq!(status, StatusCode::OK);
    let publishers = elements(&html, "publisher");
    assert_eq!(publishers.len(), 1, "{publishers:#?}");
    let p = publishers[0];
    assert!(p.contains("data-service=\"orders\""), "{p}");
    // 80 events over two 10 s windows: 4.0/s.
    assert!(p.contains(">4.0<") && p.contains(">80<"), "{p}");
    assert!(p.contains(">2<"), "failed publishes: {p}");
    let consumers = elements(&html, "consumer");
    assert_eq!(consumers.len(), 1, "{consumers:#?}");
    let c = consumers[0];
    assert!(c.contains("data-service=\"billing\""), "{c}");
    assert!(c.contains(">4.0<") && c.contains(">40<"), "{c}");
    for (what, n) in [("retried", 3), ("dropped", 1), ("dead-lettered", 2)] {
        let cell = elements(c, what);
        assert!(cell[0].contains(&format!(">{n}<")), "{what}: {}", cell[0]);
    }

    // The list, the nav link, and each service's side of it.
    let (_, html) = get(&app, "/ui/topics").await;
    assert!(html.contains("href=\"/ui/topics\""), "nav link");
    let rows = elements(&html, "topic");
    assert_eq!(rows.len(), 1);
    assert!(rows[0].contains("href=\"/ui/topics/bus/orders.created\""));
    assert!(
        rows[0].contains(">8<"),
        "2 + 3 + 1 + 2 failures: {}",
        rows[0]
    );
    let (_, html) = get(&app, "/ui/services/orders").await;
    let mine = elements(&html, "service-topic");
    assert_eq!(mine.len(), 1);
    assert!(mine[0].contains("data-role=\"publishes\"") && mine[0].contains(">80<"));
    let (_, html) = get(&app, "/ui/services/billing").await;
    let mine = elements(&html, "service-topic");
    assert!(mine[0].contains("data-role=\"consumes\"") && mine[0].contains(">40<"));

    // Past the span, the topic is gone.
    tokio::time::advance(std::time::Duration::from_secs(700)).await;
    let (status, _) = get(&app, "/ui/topics/bus/orders.created").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(start_paused = true)]
async fn topology_puts_topics_between_publishers_and_consumers() {
    let r = events_shop().await;
    let app = app(&r);
    let (_, html) = get(&app, "/ui/topology").await;
    let nodes = elements(&html, "topic-node");
    assert_eq!(nodes.len(), 1, "{html}");
    assert!(nodes[0].contains("data-topic=\"bus/orders.created\""));
    assert!(nodes[0].contains("href=\"/ui/topics/bus/orders.created\""));
    let edges: Vec<(String, String)> = elements(&html, "topic-edge")
        .iter()
        .map(|e| {
            let attr = |k: &str| {
                let start = e.find(&format!("{k}=\"")).unwrap() + k.len() + 2;
                e[start..start + e[start..].find('"').unwrap()].to_owned()
            };
            (attr("data-from"), attr("data-to"))
        })
        .collect();
    assert_eq!(
        edges,
        [
            ("orders".to_owned(), "bus/orders.created".to_owned()),
            ("bus/orders.created".to_owned(), "billing".to_owned())
        ]
    );
    // Columns: publisher, topic, consumer from left to right.
    let x = |marker: &str| -> f64 {
        let i = html.find(marker).unwrap();
        let at = i + html[i..].find("<rect x=\"").unwrap() + 9;
        html[at..at + html[at..].find('"').unwrap()]
            .parse()
            .unwrap()
    };
    let (publisher, topic, consumer) = (
        x("href=\"/ui/services/orders\"><rect"),
        x("data-topic=\"bus/orders.created\""),
        x("href=\"/ui/services/billing\"><rect"),
    );
    assert!(
        publisher < topic && topic < consumer,
        "{publisher} {topic} {consumer}"
    );
}

#[tokio::test(start_paused = true)]
async fn hostile_topic_names_are_refused_and_escaped() {
    let r = events_shop().await;
    let mut line = topic_line("publish", [1, 0, 0, 0, 0, 0]);
    line.pubsub = "<script>alert(1)</script>".into();
    line.topic = "\"><img src=x>".into();
    let err = r
        .report_telemetry(
            "orders",
            "orders-1",
            TelemetryReport {
                events: Vec::new(),
                denials: Vec::new(),
                window: Duration::from_secs(10),
                signals: Vec::new(),
                breakers: Vec::new(),
                topics: vec![line],
            },
            "sidecar",
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("E1304") || format!("{err:?}").contains("E1304"),
        "{err:?}"
    );
    let app = app(&r);
    let (status, html) = get(
        &app,
        "/ui/topics/%3Cscript%3Ealert(1)%3C%2Fscript%3E/%22%3E%3Cimg%20src=x%3E",
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        html.matches("<script").count(),
        1,
        "only the page's own script"
    );
    assert!(!html.contains("<img src=x"));
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{html}"
    );
    let (_, html) = get(&app, "/ui/topics").await;
    assert!(
        !html.contains("alert(1)"),
        "the refused report left nothing"
    );
}

fn record(
    direction: &str,
    outcome: EventOutcome,
    id: &str,
    attempt: u32,
    correlation: Option<&str>,
    at: Timestamp,
) -> EventRecord {
    EventRecord {
        at,
        pubsub: "bus".into(),
        topic: "orders.created".into(),
        direction: direction.into(),
        outcome,
        id: id.into(),
        source: "orders".into(),
        event_type: "order.created".into(),
        attempt,
        correlation_id: correlation.map(str::to_owned),
        trace_id: None,
        reason: outcome
            .is_failure()
            .then(|| "the app answered 500 Internal Server Error".to_owned()),
    }
}

#[tokio::test(start_paused = true)]
async fn correlated_events_are_listed_in_order_and_dead_letters_reach_the_timeline() {
    let r = events_shop().await;
    let app = app(&r);
    let t0 = r.now();
    let at = |ms: i64| Timestamp::from_millis(t0.as_millis() + ms);
    let report = |events| TelemetryReport {
        window: Duration::from_secs(10),
        signals: Vec::new(),
        breakers: Vec::new(),
        topics: Vec::new(),
        events,
        denials: Vec::new(),
    };
    // The consumer reports before the publisher; the page still lists them in order.
    let mut consumed = vec![
        record(
            "consume",
            EventOutcome::Retried,
            "e-1",
            1,
            Some("order 7"),
            at(20),
        ),
        record(
            "consume",
            EventOutcome::Delivered,
            "e-1",
            2,
            Some("order 7"),
            at(400),
        ),
    ];
    // Twelve dead letters in one report: ten timeline events, the last counting the rest.
    for n in 0..12 {
        consumed.push(record(
            "consume",
            EventOutcome::DeadLettered,
            &format!("dead-{n}"),
            4,
            (n == 0).then_some("<script>x</script>"),
            at(500 + n),
        ));
    }
    r.report_telemetry("billing", "billing-1", report(consumed), "sidecar")
        .await
        .unwrap();
    let published = vec![record(
        "publish",
        EventOutcome::Published,
        "e-1",
        0,
        Some("order 7"),
        at(10),
    )];
    r.report_telemetry("orders", "orders-1", report(published), "sidecar")
        .await
        .unwrap();

    let (status, html) = get(&app, "/ui/correlations/order%207").await;
    assert_eq!(status, StatusCode::OK);
    let rows = elements(&html, "event-record");
    let seen: Vec<(&str, &str)> = rows
        .iter()
        .map(|row| {
            let service = ["orders", "billing"]
                .into_iter()
                .find(|s| row.contains(&format!("data-service=\"{s}\"")))
                .unwrap();
            let outcome = ["published", "retried", "delivered"]
                .into_iter()
                .find(|o| row.contains(&format!("data-outcome=\"{o}\"")))
                .unwrap();
            (service, outcome)
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("orders", "published"),
            ("billing", "retried"),
            ("billing", "delivered")
        ]
    );
    assert!(rows[0].contains("href=\"/ui/topics/bus/orders.created\""));

    // The topics page's form goes to the correlation's page.
    let req = Request::builder()
        .uri("/ui/correlations?id=order+7")
        .body(Body::empty())
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    assert!(res.status().is_redirection());
    assert_eq!(res.headers()["location"], "/ui/correlations/order%207");

    // The topic lists its latest single events, newest first, with the dead letters.
    let (_, html) = get(&app, "/ui/topics/bus/orders.created").await;
    let rows = elements(&html, "event-record");
    assert_eq!(rows.len(), 15, "every record fits under the limit");
    assert!(
        rows[0].contains("data-outcome=\"published\""),
        "{}",
        rows[0]
    );
    assert_eq!(
        rows.iter()
            .filter(|r| r.contains("data-outcome=\"deadLettered\""))
            .count(),
        12
    );
    assert!(
        html.contains("href=\"/ui/correlations/%3Cscript%3Ex%3C%2Fscript%3E\""),
        "a hostile correlation id is encoded in links"
    );
    assert!(!html.contains("<script>x</script>"), "and escaped in text");

    // Dead letters are on billing's timeline, bounded per report.
    let events = r
        .events(&ieum_store::EventQuery {
            service: Some("billing".into()),
            kinds: vec![ieum_model::EventKind::EventDeadLettered],
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(events.len(), 10, "{events:#?}");
    let messages: Vec<&str> = events.iter().map(|e| e.message.as_str()).collect();
    assert!(
        messages.iter().any(|m| m.contains("event dead-0 (order.created) from bus/orders.created dead-lettered after 4 attempts: the app answered 500")),
        "{messages:#?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.ends_with("(2 more dead-lettered or dropped in this report)")),
        "{messages:#?}"
    );
    let (_, html) = get(&app, "/ui/services/billing?kind=event.dead_lettered").await;
    assert!(
        html.contains("dead-lettered after 4 attempts"),
        "timeline shows them"
    );
}

/// Two APIs over the shop: `shop-public` (orders, whose OpenAPI document gives the
/// operation its summary; owner inherited from orders) and `partner` (stock, which has no
/// document; hosts and JWTs), with consumers.
const APIS: &str = r#"
apiVersion: ieum.dev/v1
kind: Api
metadata: {name: shop-public}
spec:
  basePath: /shop
  backend: {service: orders}
  operations: [{method: GET, path: "/orders/{id}"}]
  auth: {apiKey: {header: x-api-key}}
  rateLimit: {perConsumer: {requests: 20, per: 1s}}
  description: Look up an order
---
apiVersion: ieum.dev/v1
kind: Api
metadata: {name: partner}
spec:
  basePath: /partner
  hostnames: [api.partner.example]
  backend: {service: stock}
  operations: [{method: GET, path: "/levels/{sku}"}, {method: POST, path: "/levels/{sku}/reserve"}]
  auth:
    anonymous: true
    jwt: {issuer: https://id.partner.example, audiences: [stock], jwksUrl: https://id.partner.example/jwks.json}
  owner: team-partners
  description: Stock levels <b>for</b> partners
---
apiVersion: ieum.dev/v1
kind: ApiConsumer
metadata: {name: newcomer}
spec: {apis: [shop-public], description: Whoever runs the demo}
---
apiVersion: ieum.dev/v1
kind: ApiConsumer
metadata: {name: wholesaler}
spec: {apis: [partner, shop-public]}
"#;

async fn api_shop() -> Registry {
    let r = shop().await;
    apply(&r, APIS, "alice").await;
    r
}

#[tokio::test(start_paused = true)]
async fn the_api_catalogue_lists_each_api_with_its_backend_and_consumers() {
    let r = api_shop().await;
    let (status, html) = get(&app(&r), "/ui/apis").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains(">APIs</a>"), "APIs in the nav");
    assert!(html.contains("name=\"q\""), "a search form");
    let rows = elements(&html, "api-row");
    assert_eq!(rows.len(), 2);
    let shop = rows
        .iter()
        .find(|r| r.contains("data-api=\"shop-public\""))
        .unwrap();
    for fact in [
        "href=\"/ui/apis/shop-public\"",
        "Look up an order",
        ">/shop<",
        "href=\"/ui/services/orders\"",
        "API key",
        // Not set on the Api: orders' owner.
        "team-checkout",
        "2/2 up",
        "target 99.9% · p99 200ms",
        "href=\"/ui/config/ApiConsumer/newcomer\"",
        "href=\"/ui/config/ApiConsumer/wholesaler\"",
    ] {
        assert!(shop.contains(fact), "{fact}: {shop}");
    }
    let partner = rows
        .iter()
        .find(|r| r.contains("data-api=\"partner\""))
        .unwrap();
    for fact in [
        "api.partner.example",
        "JWT, anonymous",
        "team-partners",
        "1/2 up",
        "Stock levels &lt;b&gt;for&lt;/b&gt; partners",
        ">wholesaler<",
    ] {
        assert!(partner.contains(fact), "{fact}: {partner}");
    }
    assert!(!partner.contains(">newcomer<"), "{partner}");
}

#[tokio::test(start_paused = true)]
async fn the_search_filter_hides_apis_that_do_not_match() {
    let r = api_shop().await;
    let app = app(&r);
    for (q, want) in [
        ("checkout", vec!["shop-public"]),
        ("Partner", vec!["partner"]),
        ("stock+levels", vec!["partner"]),
        ("%2Fshop", vec!["shop-public"]),
        ("orders", vec!["shop-public"]),
        ("", vec!["partner", "shop-public"]),
    ] {
        let (status, html) = get(&app, &format!("/ui/apis?q={q}")).await;
        assert_eq!(status, StatusCode::OK, "{q}");
        let shown: Vec<&str> = want
            .iter()
            .copied()
            .filter(|a| html.contains(&format!("data-api=\"{a}\"")))
            .collect();
        assert_eq!(shown, want, "q={q}");
        assert_eq!(elements(&html, "api-row").len(), want.len(), "q={q}");
    }
    let (_, html) = get(&app, "/ui/apis?q=%3Cb%3Enothing").await;
    assert!(elements(&html, "api-row").is_empty());
    assert!(
        html.contains("No API matches <code>&lt;b&gt;nothing</code>"),
        "{html}"
    );
    assert!(
        html.contains("value=\"&lt;b&gt;nothing\""),
        "the query stays in the box"
    );
}

#[tokio::test(start_paused = true)]
async fn an_api_page_shows_operations_with_curl_lines_and_consumers() {
    let r = api_shop().await;
    let app = app(&r);
    let (status, html) = get(&app, "/ui/apis/shop-public").await;
    assert_eq!(status, StatusCode::OK);
    let ops = elements(&html, "operation");
    assert_eq!(ops.len(), 1, "{html}");
    assert!(ops[0].contains(">GET<") && ops[0].contains(">/shop/orders/{id}<"));
    // The summary comes from orders' own OpenAPI document.
    assert!(ops[0].contains("One order"), "{}", ops[0]);
    assert!(
        ops[0].contains("curl -H &quot;x-api-key: $KEY&quot; 'http://GATEWAY/shop/orders/{id}'"),
        "{}",
        ops[0]
    );
    let consumers = elements(&html, "consumer");
    assert_eq!(consumers.len(), 2);
    assert!(consumers[0].contains(">newcomer<") && consumers[0].contains("Whoever runs the demo"));
    assert!(html.contains("href=\"/v1/apis/shop-public/openapi.json\""));
    assert!(html.contains("20 per 1s per consumer"), "rate limit");
    // The backend's health, SLA and signals, as the services page shows them.
    let backend = elements(&html, "backend");
    assert!(backend[0].contains("2/2 up") && backend[0].contains("target 99.9% · p99 200ms"));
    assert!(backend[0].contains("120 ms"), "p99: {}", backend[0]);

    let (_, html) = get(&app, "/ui/apis/partner").await;
    let curls: Vec<&str> = elements(&html, "operation");
    assert_eq!(curls.len(), 2);
    assert!(
        html.contains(
            "curl -X POST -H &quot;Authorization: Bearer $TOKEN&quot; 'https://api.partner.example/partner/levels/{sku}/reserve'"
        ),
        "{html}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_unknown_api_gets_the_not_found_page() {
    let r = api_shop().await;
    let (status, html) = get(&app(&r), "/ui/apis/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(html.contains("No Api named <code>nope</code> is published."));
    assert!(html.contains(">Services</a>"), "the nav bar is there");
    let (status, _) = get(&app(&r), "/ui/apis/newcomer").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "a consumer is not an API");
}
