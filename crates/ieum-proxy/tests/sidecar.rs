//! Two sidecars and a control plane in process, over real sockets on 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use ieum_proxy::Sidecar;
use tokio::time::Instant;

/// A control plane, app B behind sidecar B (service `stock`), and sidecar A (service
/// `web`) without an app in front.
struct Mesh {
    server: Server,
    a: Sidecar,
    b: Sidecar,
    /// Calls that reached app B.
    hits: Arc<AtomicUsize>,
}

impl Mesh {
    /// `app` answers B's calls and is counted in `hits`.
    async fn start<F, Fut>(app_b: F) -> Mesh
    where
        F: Fn(http::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: std::future::Future<Output = http::Response<http_body_util::Full<bytes::Bytes>>>
            + Send
            + 'static,
    {
        let server = Server::start().await;
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let app_addr = app(move |req| {
            h.fetch_add(1, Ordering::SeqCst);
            app_b(req)
        })
        .await;
        let b = sidecar(client(&server, "stock", &[]), "stock", app_addr, None).await;
        server
            .register("stock", "stock-1", b.inbound_addr(), None)
            .await;
        let client_a = client(&server, "web", &["stock"]);
        until(&client_a, "stock's endpoint", |s| s.up("stock").len() == 1).await;
        // A's app-less outbound: the app address is never called.
        let a = sidecar(client_a, "web", "127.0.0.1:9".parse().unwrap(), None).await;
        Mesh { server, a, b, hits }
    }

    async fn apply(&self, yaml: &str, key: &str) {
        self.server.apply(yaml).await;
        in_effect(&self.a, key).await;
    }
}

fn echo(
    req: http::Request<hyper::body::Incoming>,
) -> impl std::future::Future<Output = http::Response<http_body_util::Full<bytes::Bytes>>> {
    let host = req
        .headers()
        .get(http::header::HOST)
        .map(|h| h.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    async move { reply(200, format!("stock {pq} host={host}")) }
}

/// Waits until `sidecar`'s configuration in effect has resource `key` (`Kind/name`).
async fn in_effect(sidecar: &Sidecar, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, text) = admin(sidecar, "/config").await;
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let found = v["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r.as_str().unwrap().starts_with(&format!("{key}@")));
        if found {
            return;
        }
        assert!(Instant::now() < deadline, "{key} never took effect: {v:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_three_request_forms_reach_the_app_behind_another_sidecar() {
    let mesh = Mesh::start(echo).await;
    // HTTP proxy form, as any client with HTTP_PROXY sends it.
    let res = proxied(&mesh.a)
        .get("http://stock/items?x=1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "stock /items?x=1 host=stock");
    // Host routing on the plain listener.
    let res = direct()
        .get(format!("http://{}/by-host", mesh.a.outbound_addr()))
        .header("host", "stock")
        .send()
        .await
        .unwrap();
    assert_eq!(res.text().await.unwrap(), "stock /by-host host=stock");
    // The path form of the sidecar's own API.
    let res = direct()
        .get(format!(
            "http://{}/v1/invoke/stock/deep/path?q=2",
            mesh.a.outbound_addr()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "stock /deep/path?q=2 host=stock");
    // Anything else addressed to the listener itself says how to use it.
    let res = direct()
        .get(format!("http://{}/what", mesh.a.outbound_addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert!(
        res.text()
            .await
            .unwrap()
            .contains("/v1/invoke/SERVICE/PATH")
    );
    assert_eq!(mesh.hits.load(Ordering::SeqCst), 3);

    // Keep-alive: many calls, all answered.
    let c = proxied(&mesh.a);
    for i in 0..50 {
        let res = c.get(format!("http://stock/n/{i}")).send().await.unwrap();
        assert_eq!(res.status(), 200);
    }
}

#[tokio::test]
async fn an_unknown_service_gets_a_502_that_says_so() {
    let mesh = Mesh::start(echo).await;
    let res = proxied(&mesh.a).get("http://ghost/x").send().await.unwrap();
    assert_eq!(res.status(), 502);
    assert_eq!(res.headers()["ieum-reason"], "service-not-registered");
    let body = res.text().await.unwrap();
    assert!(body.contains("`ghost` is not registered"), "{body}");
    assert_eq!(mesh.hits.load(Ordering::SeqCst), 0);
    // A name that cannot be a service is answered without asking the control plane, and
    // the subscription keeps working for real names.
    let res = direct()
        .get(format!("http://{}/x", mesh.a.outbound_addr()))
        .header("host", "not_a_label")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 502);
    let res = proxied(&mesh.a).get("http://stock/x").send().await.unwrap();
    assert_eq!(res.status(), 200);
    let (_, ready) = admin(&mesh.a, "/ready").await;
    assert_eq!(ready, "ready\n");
}

#[tokio::test]
async fn metrics_count_both_directions_and_admin_shows_config_and_endpoints() {
    let mesh = Mesh::start(|req: http::Request<hyper::body::Incoming>| async move {
        if req.uri().path() == "/fail" {
            reply(500, "no")
        } else {
            reply(200, "ok")
        }
    })
    .await;
    let c = proxied(&mesh.a);
    for _ in 0..3 {
        assert_eq!(c.get("http://stock/ok").send().await.unwrap().status(), 200);
    }
    assert_eq!(
        c.get("http://stock/fail").send().await.unwrap().status(),
        500
    );

    let (code, text) = admin(&mesh.a, "/metrics").await;
    assert_eq!(code, 200);
    let out = r#"direction="outbound",dst_service="stock",route="default""#;
    assert!(
        text.contains(&format!("request_total{{{out}}} 4")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "response_total{{{out},classification=\"success\",status_code=\"200\"}} 3"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "response_total{{{out},classification=\"failure\",status_code=\"500\"}} 1"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("response_latency_ms_count{{{out}}} 4")),
        "{text}"
    );
    assert!(text.contains("# TYPE response_latency_ms histogram"));
    // Connections accepted from the app (reqwest keeps one alive).
    let open = text
        .lines()
        .find(|l| l.starts_with(r#"tcp_open_total{direction="outbound",peer="src"}"#))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap();
    assert!(open >= 1, "{text}");
    assert!(text.contains("# TYPE tcp_open_connections gauge"));

    // The same counters, sampled for the golden signals the lifecycle reports.
    let t = mesh
        .a
        .traffic()
        .into_iter()
        .find(|t| t.dst_service == "stock")
        .unwrap();
    assert_eq!(
        (t.direction, t.requests, t.successes, t.failures),
        ("outbound", 4, 3, 1)
    );
    let g = t.since(None, Duration::from_secs(1));
    assert_eq!(g.success_rate, Some(0.75));
    assert!(g.p99_ms.is_some());

    let (_, text) = admin(&mesh.b, "/metrics").await;
    let inb = r#"direction="inbound",dst_service="stock",route="default""#;
    assert!(
        text.contains(&format!("request_total{{{inb}}} 4")),
        "{text}"
    );

    let (code, text) = admin(&mesh.a, "/endpoints").await;
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ep = &v["services"]["stock"]["endpoints"]["stock-1"];
    assert_eq!(ep["port"], mesh.b.inbound_addr().port());
    assert_eq!(ep["state"], "up");

    mesh.apply(
        "apiVersion: ieum.dev/v1\nkind: ResiliencePolicy\nmetadata: {name: stock}\nspec: {targetRef: {kind: Service, name: stock}, timeouts: {request: 3s}}\n",
        "ResiliencePolicy/stock",
    )
    .await;
    let (code, text) = admin(&mesh.a, "/config").await;
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["service"], "web");
    assert_eq!(
        v["services"]["stock"]["policy"]["timeouts"]["request"], "3s",
        "{v:#}"
    );

    let (code, text) = admin(&mesh.a, "/ready").await;
    assert_eq!((code, text.as_str()), (200, "ready\n"));
    mesh.b.set_app_healthy(false);
    let (code, text) = admin(&mesh.b, "/ready").await;
    assert_eq!(code, 503);
    assert!(text.contains("not healthy"), "{text}");
}

#[tokio::test]
async fn a_retry_on_503_makes_a_flaky_upstream_succeed() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c2 = calls.clone();
    let mesh = Mesh::start(move |_req| {
        let n = c2.fetch_add(1, Ordering::SeqCst);
        async move {
            if n < 2 {
                reply(503, "busy")
            } else {
                reply(200, "fine")
            }
        }
    })
    .await;
    // Without a retry stanza, the 503 comes back as is.
    let res = proxied(&mesh.a).get("http://stock/x").send().await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    mesh.apply(
        "apiVersion: ieum.dev/v1\nkind: ResiliencePolicy\nmetadata: {name: stock}\nspec: {targetRef: {kind: Service, name: stock}, retry: {codes: [503], attempts: 3, backoff: 10ms}}\n",
        "ResiliencePolicy/stock",
    )
    .await;
    let res = proxied(&mesh.a).get("http://stock/x").send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["ieum-attempts"], "2");
    assert_eq!(res.text().await.unwrap(), "fine");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "1 before the policy, then 503 + 200"
    );
}

#[tokio::test]
async fn a_per_try_timeout_cuts_a_slow_attempt_and_the_retry_succeeds() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c2 = calls.clone();
    let mesh = Mesh::start(move |_req| {
        let n = c2.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            reply(200, format!("try {n}"))
        }
    })
    .await;
    mesh.apply(
        "apiVersion: ieum.dev/v1\nkind: ResiliencePolicy\nmetadata: {name: stock}\nspec: {targetRef: {kind: Service, name: stock}, timeouts: {request: 5s, backendRequest: 300ms}, retry: {attempts: 1, idempotent: true, backoff: 10ms}}\n",
        "ResiliencePolicy/stock",
    )
    .await;
    let start = Instant::now();
    let res = proxied(&mesh.a).get("http://stock/x").send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "try 1");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_route_rule_timeout_answers_504_with_a_reason() {
    let mesh = Mesh::start(|req: http::Request<hyper::body::Incoming>| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        reply(200, "ok")
    })
    .await;
    mesh.apply(
        "apiVersion: ieum.dev/v1\nkind: Route\nmetadata: {name: stock-main}\nspec: {service: stock, rules: [{matches: [{path: {type: PathPrefix, value: /slow}}], timeouts: {request: 200ms}}]}\n",
        "Route/stock-main",
    )
    .await;
    let start = Instant::now();
    let res = proxied(&mesh.a)
        .get("http://stock/slow")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 504);
    assert_eq!(res.headers()["ieum-reason"], "deadline-exceeded");
    assert!(res.text().await.unwrap().contains("deadline-exceeded"));
    assert!(start.elapsed() < Duration::from_secs(1));
    // Other paths are not bound by that rule.
    let res = proxied(&mesh.a)
        .get("http://stock/fast")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (_, text) = admin(&mesh.a, "/metrics").await;
    assert!(
        text.contains(
            r#"request_total{direction="outbound",dst_service="stock",route="stock-main"} 1"#
        ),
        "{text}"
    );
}

#[tokio::test]
async fn a_breaker_blocks_then_probes_and_closes_when_the_upstream_recovers() {
    let healthy = Arc::new(AtomicBool::new(false));
    let h = healthy.clone();
    let mesh = Mesh::start(move |_req| {
        let ok = h.load(Ordering::SeqCst);
        async move {
            if ok {
                reply(200, "up")
            } else {
                reply(500, "down")
            }
        }
    })
    .await;
    mesh.apply(
        "apiVersion: ieum.dev/v1\nkind: ResiliencePolicy\nmetadata: {name: stock}\nspec: {targetRef: {kind: Service, name: stock}, circuitBreaker: {scope: service, consecutiveFailures: 3, blockedFor: {base: 400ms, max: 400ms}}}\n",
        "ResiliencePolicy/stock",
    )
    .await;
    let mut reports = mesh.a.breaker_reports();
    let c = proxied(&mesh.a);
    for _ in 0..3 {
        assert_eq!(c.get("http://stock/x").send().await.unwrap().status(), 500);
    }
    assert_eq!(mesh.hits.load(Ordering::SeqCst), 3);
    // The transition is reported (for the timeline) and shown by /endpoints.
    let r = tokio::time::timeout(Duration::from_secs(2), reports.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (&*r.transition.id.destination, r.transition.to.as_str()),
        ("stock", "blocked")
    );
    let (_, text) = admin(&mesh.a, "/endpoints").await;
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["breakers"][0]["destination"], "stock", "{v:#}");
    assert_eq!(v["breakers"][0]["state"], "blocked", "{v:#}");
    // Blocked: answered at once, the app is not called.
    let res = c.get("http://stock/x").send().await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["ieum-reason"], "circuit-blocked");
    assert_eq!(mesh.hits.load(Ordering::SeqCst), 3);
    // The upstream recovers; after the penalty (400 ms + up to 50 % jitter) a probe goes
    // through and closes the breaker.
    healthy.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(c.get("http://stock/x").send().await.unwrap().status(), 200);
    assert_eq!(mesh.hits.load(Ordering::SeqCst), 4, "one probe");
    for _ in 0..5 {
        assert_eq!(c.get("http://stock/x").send().await.unwrap().status(), 200);
    }
}

#[tokio::test]
async fn route_weights_split_traffic_by_version_and_headers_pick_a_rule() {
    let server = Server::start().await;
    // Instances without a sidecar: the endpoint is the app itself.
    let v1 = app(|_req| async { reply(200, "v1") }).await;
    let v2 = app(|_req| async { reply(200, "v2") }).await;
    server.register("orders", "orders-v1", v1, Some("v1")).await;
    server.register("orders", "orders-v2", v2, Some("v2")).await;
    server
        .apply(
            r#"apiVersion: ieum.dev/v1
kind: Route
metadata: {name: orders-canary}
spec:
  service: orders
  rules:
  - matches: [{headers: [{name: x-canary, value: "yes"}]}]
    backends: [{service: orders, version: v2}]
    filters: [{type: ResponseHeaderModifier, set: [{name: x-rule, value: canary}]}]
  - backends:
    - {service: orders, version: v1, weight: 80}
    - {service: orders, version: v2, weight: 20}
"#,
        )
        .await;
    let ca = client(&server, "web", &["orders"]);
    until(&ca, "orders and its route", |s| {
        s.up("orders").len() == 2 && s.resources.contains_key("Route/orders-canary")
    })
    .await;
    let a = sidecar(ca, "web", "127.0.0.1:9".parse().unwrap(), None).await;
    let c = proxied(&a);
    let mut v2 = 0;
    for _ in 0..400 {
        let body = c
            .get("http://orders/")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if body == "v2" {
            v2 += 1;
        }
    }
    assert!(
        (40..=130).contains(&v2),
        "about 20 % of 400 go to v2, got {v2}"
    );
    for _ in 0..20 {
        let res = c
            .get("http://orders/")
            .header("x-canary", "yes")
            .send()
            .await
            .unwrap();
        assert_eq!(res.headers()["x-rule"], "canary");
        assert_eq!(res.text().await.unwrap(), "v2");
    }
}

#[tokio::test]
async fn fault_injection_aborts_without_calling_the_upstream() {
    let mesh = Mesh::start(echo).await;
    mesh.apply(
        "apiVersion: ieum.dev/v1\nkind: FaultInjection\nmetadata: {name: stock-chaos}\nspec: {targetRef: {kind: Service, name: stock}, abort: {httpStatus: 418, percent: 100}}\n",
        "FaultInjection/stock-chaos",
    )
    .await;
    let res = proxied(&mesh.a).get("http://stock/x").send().await.unwrap();
    assert_eq!(res.status(), 418);
    assert_eq!(mesh.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn ready_degrades_when_the_server_stops_and_traffic_keeps_flowing() {
    let mesh = Mesh::start(echo).await;
    let c = proxied(&mesh.a);
    assert_eq!(c.get("http://stock/x").send().await.unwrap().status(), 200);
    let Mesh { server, a, b, hits } = mesh;
    server.stop().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let (code, text) = admin(&a, "/ready").await;
        assert_eq!(code, 200, "degraded, still serving");
        if text.starts_with("degraded") {
            break text;
        }
        assert!(Instant::now() < deadline, "still {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        text.contains("control plane unreachable since 20"),
        "{text}"
    );
    for _ in 0..5 {
        let res = c.get("http://stock/x").send().await.unwrap();
        assert_eq!(res.status(), 200, "the last snapshot keeps traffic flowing");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 6);
    drop(b);
}

#[tokio::test]
async fn drain_waits_for_an_in_flight_slow_request() {
    let mesh = Mesh::start(|_req| async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        reply(200, "slow but complete")
    })
    .await;
    let c = proxied(&mesh.a);
    let call = tokio::spawn(async move { c.get("http://stock/slow").send().await.unwrap() });
    let deadline = Instant::now() + Duration::from_secs(3);
    while mesh.b.in_flight() == 0 {
        assert!(Instant::now() < deadline, "the request never reached B");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let start = Instant::now();
    mesh.b.drain(Duration::from_secs(5)).await;
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(300),
        "drain returned early: {waited:?}"
    );
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    assert_eq!(mesh.b.in_flight(), 0);
    let res = call.await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "slow but complete");
    // New connections are refused once drained.
    assert!(
        tokio::net::TcpStream::connect(mesh.b.inbound_addr())
            .await
            .is_err()
    );
    assert_eq!(
        admin(&mesh.b, "/ready").await,
        (503, "draining\n".to_owned())
    );
}

#[tokio::test]
async fn drain_gives_up_after_the_grace_period() {
    let mesh = Mesh::start(|_req| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        reply(200, "late")
    })
    .await;
    let c = proxied(&mesh.a);
    let _call = tokio::spawn(async move { c.get("http://stock/slow").send().await });
    while mesh.b.in_flight() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let start = Instant::now();
    mesh.b.drain(Duration::from_millis(300)).await;
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    assert_eq!(mesh.b.in_flight(), 1);
}

#[tokio::test]
async fn a_services_rate_limit_is_enforced_by_its_own_sidecar() {
    let mesh = Mesh::start(echo).await;
    mesh.server
        .apply("apiVersion: ieum.dev/v1\nkind: RateLimitPolicy\nmetadata: {name: stock-in}\nspec: {targetRef: {kind: Service, name: stock}, limit: {requests: 3, per: 1m}}\n")
        .await;
    in_effect(&mesh.b, "RateLimitPolicy/stock-in").await;
    let c = proxied(&mesh.a);
    for _ in 0..3 {
        assert_eq!(c.get("http://stock/x").send().await.unwrap().status(), 200);
    }
    let res = c.get("http://stock/x").send().await.unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["ieum-reason"], "rate-limited");
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(mesh.hits.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn the_callers_budget_bounds_the_next_hop_too() {
    let mesh = Mesh::start(|req: http::Request<hyper::body::Incoming>| async move {
        let budget = req
            .headers()
            .get("ieum-budget-ms")
            .map(|v| v.to_str().unwrap().to_owned());
        if req.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        reply(200, budget.unwrap_or_default())
    })
    .await;
    mesh.apply(
        "apiVersion: ieum.dev/v1\nkind: ResiliencePolicy\nmetadata: {name: stock}\nspec: {targetRef: {kind: Service, name: stock}, timeouts: {request: 400ms}}\n",
        "ResiliencePolicy/stock",
    )
    .await;
    // The app behind B sees what is left of the budget.
    let budget: u64 = proxied(&mesh.a)
        .get("http://stock/fast")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=400).contains(&budget), "{budget}");
    let res = proxied(&mesh.a)
        .get("http://stock/slow")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 504);
    // The next hop honours a budget it is given: B stops waiting for its app.
    let start = Instant::now();
    let res = direct()
        .get(format!("http://{}/slow", mesh.b.inbound_addr()))
        .header("host", "stock")
        .header("ieum-budget-ms", "200")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 504);
    assert_eq!(res.headers()["ieum-reason"], "deadline-exceeded");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_secs(1),
        "{waited:?}"
    );
}

#[tokio::test]
async fn calls_prefer_endpoints_in_the_callers_zone() {
    let server = Server::start().await;
    let near = Arc::new(AtomicUsize::new(0));
    let far = Arc::new(AtomicUsize::new(0));
    let (n, f) = (near.clone(), far.clone());
    let near_app = app(move |_req| {
        n.fetch_add(1, Ordering::SeqCst);
        async { reply(200, "near") }
    })
    .await;
    let far_app = app(move |_req| {
        f.fetch_add(1, Ordering::SeqCst);
        async { reply(200, "far") }
    })
    .await;
    server
        .register_in("stock", "near", near_app, None, Some("z1"))
        .await;
    server
        .register_in("stock", "far", far_app, None, Some("z2"))
        .await;
    let ca = client(&server, "web", &["stock"]);
    until(&ca, "both endpoints", |s| s.up("stock").len() == 2).await;
    let a = sidecar(ca, "web", "127.0.0.1:9".parse().unwrap(), Some("z1")).await;
    let c = proxied(&a);
    for _ in 0..50 {
        assert_eq!(c.get("http://stock/").send().await.unwrap().status(), 200);
    }
    assert_eq!(
        (near.load(Ordering::SeqCst), far.load(Ordering::SeqCst)),
        (50, 0)
    );
}

#[tokio::test]
async fn calls_outside_the_mesh_pass_through_as_a_plain_proxy() {
    let mesh = Mesh::start(echo).await;
    let outside = app(|req: http::Request<hyper::body::Incoming>| async move {
        reply(200, format!("outside {}", req.uri().path()))
    })
    .await;
    let res = proxied(&mesh.a)
        .get(format!("http://127.0.0.1:{}/direct", outside.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "outside /direct");
    assert_eq!(mesh.hits.load(Ordering::SeqCst), 0, "not through the mesh");
    // Nothing listens there: the error says so.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let res = proxied(&mesh.a)
        .get(format!("http://localhost:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 502);
    assert_eq!(res.headers()["ieum-reason"], "connect-failed");
    let (_, text) = admin(&mesh.a, "/metrics").await;
    assert!(
        text.contains(
            r#"request_total{direction="outbound",dst_service="external",route="egress"} 2"#
        ),
        "{text}"
    );
}

#[tokio::test]
async fn the_access_log_writes_one_json_line_per_request_when_enabled() {
    let mesh = Mesh::start(echo).await;
    let lines = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let l = lines.clone();
    assert!(
        mesh.a
            .enable_access_log(move |line| l.lock().unwrap().push(line))
    );
    let l = lines.clone();
    assert!(
        mesh.b
            .enable_access_log(move |line| l.lock().unwrap().push(line))
    );
    let res = proxied(&mesh.a)
        .get("http://stock/logged")
        .header("x-request-id", "req-1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let _ = proxied(&mesh.a).get("http://ghost/").send().await.unwrap();
    let lines = lines.lock().unwrap().clone();
    let parsed: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let out = parsed
        .iter()
        .find(|v| v["direction"] == "outbound" && v["path"] == "/logged")
        .expect("the outbound line");
    assert_eq!(out["response_code"], 200);
    assert_eq!(out["upstream_cluster"], "stock");
    assert_eq!(out["route_name"], "default");
    assert_eq!(out["request_id"], "req-1");
    let inb = parsed
        .iter()
        .find(|v| v["direction"] == "inbound")
        .expect("the inbound line");
    assert_eq!(inb["request_id"], "req-1");
    assert!(
        parsed
            .iter()
            .any(|v| v["response_code"] == 502 && v["response_flags"] == "NR")
    );
}

#[tokio::test]
async fn a_configuration_change_elsewhere_keeps_a_destinations_breaker() {
    let mesh = Mesh::start(|_req| async { reply(500, "down") }).await;
    mesh.apply(
        "apiVersion: ieum.dev/v1\nkind: ResiliencePolicy\nmetadata: {name: stock}\nspec: {targetRef: {kind: Service, name: stock}, circuitBreaker: {scope: service, consecutiveFailures: 2, blockedFor: {base: 60s, max: 60s}}}\n",
        "ResiliencePolicy/stock",
    )
    .await;
    let c = proxied(&mesh.a);
    for _ in 0..2 {
        assert_eq!(c.get("http://stock/x").send().await.unwrap().status(), 500);
    }
    let blocked = |res: &reqwest::Response| {
        res.status() == 503 && res.headers()["ieum-reason"] == "circuit-blocked"
    };
    assert!(blocked(&c.get("http://stock/x").send().await.unwrap()));
    // A resource that does not change calls to stock: the breaker keeps its state.
    mesh.apply(
        "apiVersion: ieum.dev/v1\nkind: ResiliencePolicy\nmetadata: {name: web}\nspec: {targetRef: {kind: Service, name: web}, timeouts: {request: 5s}}\n",
        "ResiliencePolicy/web",
    )
    .await;
    assert!(blocked(&c.get("http://stock/x").send().await.unwrap()));
    assert_eq!(mesh.hits.load(Ordering::SeqCst), 2);
    // A change of stock's own policy builds a new stack.
    mesh.server
        .apply("apiVersion: ieum.dev/v1\nkind: ResiliencePolicy\nmetadata: {name: stock}\nspec: {targetRef: {kind: Service, name: stock}, circuitBreaker: {scope: service, consecutiveFailures: 3, blockedFor: {base: 60s, max: 60s}}}\n")
        .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, text) = admin(&mesh.a, "/config").await;
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        if v["services"]["stock"]["policy"]["circuitBreaker"]["consecutiveFailures"] == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "{v:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(c.get("http://stock/x").send().await.unwrap().status(), 500);
    assert_eq!(mesh.hits.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn registry_only_egress_refuses_outside_calls_with_a_403_that_says_why() {
    let server = Server::start().await;
    let b = sidecar(
        client(&server, "stock", &[]),
        "stock",
        app(echo).await,
        None,
    )
    .await;
    server
        .register("stock", "stock-1", b.inbound_addr(), None)
        .await;
    let outside_hits = Arc::new(AtomicUsize::new(0));
    let h = outside_hits.clone();
    let outside = app(move |_req| {
        h.fetch_add(1, Ordering::SeqCst);
        async { reply(200, "outside") }
    })
    .await;
    let client_a = client(&server, "web", &["stock"]);
    until(&client_a, "stock's endpoint", |s| s.up("stock").len() == 1).await;
    let a = sidecar_with(client_a, "web", "127.0.0.1:9".parse().unwrap(), |c| {
        c.egress = ieum_proxy::Egress::RegistryOnly;
    })
    .await;
    let c = proxied(&a);

    // The mesh still works.
    assert_eq!(c.get("http://stock/x").send().await.unwrap().status(), 200);
    // An address outside, a dotted name, an unregistered name: refused, naming the host.
    let outside_host = format!("127.0.0.1:{}", outside.port());
    for (url, host) in [
        (format!("http://{outside_host}/x"), outside_host.as_str()),
        ("http://api.example.com/x".to_owned(), "api.example.com"),
        ("http://ghost/x".to_owned(), "ghost"),
    ] {
        let res = c.get(&url).send().await.unwrap();
        assert_eq!(res.status(), 403, "{url}");
        assert_eq!(res.headers()["ieum-reason"], "egress-denied");
        let body = res.text().await.unwrap();
        assert!(
            body.contains(&format!("egress to `{host}` is refused")),
            "{body}"
        );
        assert!(
            body.contains("registered") && body.contains("--egress allow"),
            "{body}"
        );
    }
    // CONNECT tunnels too.
    let mut conn = tokio::net::TcpStream::connect(a.outbound_addr())
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    conn.write_all(
        format!("CONNECT {outside_host} HTTP/1.1\r\nHost: {outside_host}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = vec![0; 1024];
    let n = conn.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert_eq!(
        outside_hits.load(Ordering::SeqCst),
        0,
        "nothing left the mesh"
    );
    let (_, text) = admin(&a, "/metrics").await;
    assert!(
        text.contains(
            r#"response_total{direction="outbound",dst_service="external",route="egress",classification="failure",status_code="403"} 4"#
        ),
        "{text}"
    );
}
