//! The REST API and the UI pages of sagas, and flows, over a real socket.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Participant, Reply, Server, Trip, input};
use ieum_store::testing::TestDb;
use serde_json::{Value, json};

fn http() -> reqwest::Client {
    {
        // reqwest asks for a rustls provider even for plain HTTP: ring, as in ieum.
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder()
    }
    .no_proxy()
    .redirect(reqwest::redirect::Policy::none())
    .build()
    .unwrap()
}

#[tokio::test]
async fn executions_are_started_read_listed_and_acted_on_over_http() {
    let db = TestDb::sqlite();
    let server = Server::start(&db.url).await;
    let trip = Trip::start(&server).await;
    let base = server.base();
    let c = http();

    // ?wait answers with the final result when it is ready in time.
    let r = c
        .post(format!("{base}/v1/sagas/trip/executions?wait=10s"))
        .header("idempotency-key", "order-1")
        .json(&input())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let done: Value = r.json().await.unwrap();
    assert_eq!(done["state"], "completed");
    assert_eq!(done["steps"].as_array().unwrap().len(), 3);
    assert!(done["log"].as_array().unwrap().len() >= 8, "the full log");
    let id = done["id"].as_str().unwrap().to_owned();

    // The same key: the same execution, 202 without waiting.
    let r = c
        .post(format!("{base}/v1/sagas/trip/executions"))
        .header("idempotency-key", "order-1")
        .json(&input())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(
        r.headers()["location"],
        format!("/v1/sagas/executions/{id}")
    );
    let again: Value = r.json().await.unwrap();
    assert_eq!(
        (again["id"].as_str(), again["existing"].as_bool()),
        (Some(id.as_str()), Some(true))
    );
    assert_eq!(trip.flights.effects(), ["/book"]);

    // Errors name what is wrong.
    let r = c
        .post(format!("{base}/v1/sagas/nope/executions"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = c
        .post(format!("{base}/v1/sagas/trip/executions?wait=forever"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(
        (e["error"]["code"].as_str(), e["error"]["field"].as_str()),
        (Some("E1006"), Some("wait"))
    );
    let r = c
        .post(format!("{base}/v1/sagas/trip/executions"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .post(format!("{base}/v1/sagas/executions/{id}/retry"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409, "a completed execution takes no retry");
    let r = c
        .post(format!("{base}/v1/sagas/executions/{id}/explode"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = c
        .get(format!("{base}/v1/sagas/executions/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // A stuck execution, then an operator's form from the UI: redirected back to it.
    trip.payments
        .rule(|p, _| (p == "/charge").then(|| Reply::Status(402, json!({}))));
    trip.hotels.rule(|p, _| {
        p.starts_with("/cancel/")
            .then(|| Reply::Status(409, json!({})))
    });
    let r = c
        .post(format!("{base}/v1/sagas/trip/executions"))
        .json(&input())
        .send()
        .await
        .unwrap();
    let stuck_id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    server.until_state(&stuck_id, "stuck").await;
    let r = c
        .post(format!("{base}/v1/sagas/executions/{stuck_id}/skip"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("sec-fetch-site", "cross-site")
        .body("op=skip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a form from another site is refused");
    let r = c
        .post(format!("{base}/v1/sagas/executions/{stuck_id}/skip"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("sec-fetch-site", "same-origin")
        .body("op=skip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(
        r.headers()["location"],
        format!("/ui/sagas/executions/{stuck_id}")
    );
    let v = server.finish(&stuck_id).await;
    assert_eq!(v.state, "compensated");
    let applied = v.log.iter().find(|r| r.kind == "request.applied").unwrap();
    assert_eq!(applied.data["author"], "local");

    // Lists and counts.
    let list: Value = c
        .get(format!(
            "{base}/v1/sagas/executions?saga=trip&state=compensated"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<_> = list["executions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].clone())
        .collect();
    assert_eq!(ids, [json!(stuck_id)]);
    let r = c
        .get(format!("{base}/v1/sagas/executions?state=weird"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let counts: Value = c
        .get(format!("{base}/v1/sagas"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        counts["sagas"][0],
        json!({"saga": "trip", "defined": true, "states": {"completed": 1, "compensated": 1}, "total": 2})
    );

    // The UI: counts by state, and the execution's timeline with its facts.
    let page = c
        .get(format!("{base}/ui/sagas"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(r#"href="/ui/sagas?saga=trip&amp;state=completed""#),
        "{page}"
    );
    assert!(page.contains(&format!("/ui/sagas/executions/{stuck_id}")));
    let r = c
        .get(format!("{base}/ui/sagas/executions/{stuck_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("form-action 'self'")
    );
    let page = r.text().await.unwrap();
    for fact in [
        "compensation hotel",
        "skip applied",
        "to hotel · requested by local",
        &format!("{stuck_id}:hotel:compensation"),
        "POST http://payments/charge",
        "402",
    ] {
        assert!(page.contains(fact), "{fact} missing from {page}");
    }
    assert!(
        !page.contains("<form method=\"post\""),
        "a finished execution has no buttons"
    );
    let r = c
        .get(format!("{base}/ui/sagas/executions/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    db.cleanup().await;
}

#[tokio::test]
async fn a_stuck_execution_page_has_its_operator_buttons() {
    let db = TestDb::sqlite();
    let server = Server::start(&db.url).await;
    let trip = Trip::start(&server).await;
    trip.payments.rule(|p, _| {
        (p == "/charge").then(|| Reply::Status(402, json!({"why": "<script>x</script>"})))
    });
    trip.hotels.rule(|p, _| {
        p.starts_with("/cancel/")
            .then(|| Reply::Status(409, json!({})))
    });
    let id = server
        .coordinator
        .start_execution("trip", input(), None, "t")
        .await
        .unwrap()
        .id;
    server.until_state(&id, "stuck").await;
    let page = http()
        .get(format!("{}/ui/sagas/executions/{id}", server.base()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for op in ["retry", "skip", "abort"] {
        assert!(
            page.contains(&format!(r#"action="/v1/sagas/executions/{id}/{op}""#)),
            "{op} button missing"
        );
    }
    assert!(!page.contains("<script>x</script>"), "bodies are escaped");
    db.cleanup().await;
}

#[tokio::test]
async fn flows_call_in_sequence_and_in_parallel_with_conditions() {
    let db = TestDb::sqlite();
    let server = Server::start(&db.url).await;
    let orders = Participant::start("orders").await;
    let shipping = Participant::start("shipping").await;
    let billing = Participant::start("billing").await;
    server.register("orders", orders.addr).await;
    server.register("shipping", shipping.addr).await;
    server.register("billing", billing.addr).await;
    server
        .apply(
            r#"
apiVersion: ieum.dev/v1
kind: Flow
metadata: {name: order-summary}
spec:
  steps:
  - parallel:
    - {name: order, call: {service: orders, method: POST, path: "/orders/${input.id}", body: {want: "${input.id}"}}}
    - {name: shipment, call: {service: shipping, method: POST, path: "/shipments"}}
  - name: invoice
    if: "${input.invoice}"
    call: {service: billing, method: POST, path: "/invoices/${steps.order.body.id}"}
  output: {order: "${steps.order.body.id}", shipment: "${steps.shipment.body.id}", invoiced: "${has(steps.invoice.body)}"}
"#,
        )
        .await;
    // Both parallel calls are held 500 ms: together they take about 500 ms, not 1 s.
    orders.rule(|_, _| Some(Reply::Slow(Duration::from_millis(500))));
    shipping.rule(|_, _| Some(Reply::Slow(Duration::from_millis(500))));
    let c = http();
    let t0 = tokio::time::Instant::now();
    let r = c
        .post(format!("{}/v1/flows/order-summary", server.base()))
        .json(&json!({"id": 7, "invoice": true}))
        .send()
        .await
        .unwrap();
    let took = t0.elapsed();
    assert_eq!(r.status(), 200);
    let out: Value = r.json().await.unwrap();
    assert_eq!(out["order"], "orders-orders-7-1");
    assert_eq!(out["shipment"], "shipping-shipments-1");
    assert_eq!(out["invoiced"], true);
    assert!(
        took < Duration::from_millis(950),
        "parallel calls took {took:?}"
    );
    assert_eq!(billing.seen()[0].path, "/invoices/orders-orders-7-1");

    // The condition is false: the step is skipped.
    let r = c
        .post(format!("{}/v1/flows/order-summary", server.base()))
        .json(&json!({"id": 8, "invoice": false}))
        .send()
        .await
        .unwrap();
    let out: Value = r.json().await.unwrap();
    assert_eq!(out["invoiced"], false);
    assert_eq!(billing.seen().len(), 1);

    // A failing step fails the flow with 502, naming it.
    shipping.rule(|_, _| Some(Reply::Status(404, json!({"error": "unknown order"}))));
    let r = c
        .post(format!("{}/v1/flows/order-summary", server.base()))
        .json(&json!({"id": 9, "invoice": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "E2951");
    assert_eq!(e["step"]["name"], "shipment");
    assert_eq!(e["step"]["body"], json!({"error": "unknown order"}));
    // A condition that is not a boolean for this input: 422, naming the step.
    shipping.rule(|_, _| None);
    let r = c
        .post(format!("{}/v1/flows/order-summary", server.base()))
        .json(&json!({"id": 9, "invoice": "yes"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let e: Value = r.json().await.unwrap();
    assert_eq!(
        (e["error"]["code"].as_str(), e["error"]["field"].as_str()),
        (Some("E2952"), Some("steps.invoice"))
    );
    let r = c
        .post(format!("{}/v1/flows/nope", server.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    db.cleanup().await;
}
