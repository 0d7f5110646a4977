//! The demo's example services, small HTTP apps that know nothing of ieum beyond the
//! `IEUM_OUTBOUND` their sidecar gives them: they call each other by logical name
//! (`http://stock/reserve`) through it, as any HTTP client behind a proxy would.
//!
//! `shopper → frontend → orders → stock, payments`. Stock is a little slow now and then;
//! payments has regular provider outages, so breakers, retries and timelines have
//! something to show. The shopper also starts a `checkout` saga every few seconds (stock,
//! payments, shipping through the server's coordinator); shipping sometimes finds no
//! courier, so some executions compensate. Every step's endpoint de-duplicates on the
//! `Idempotency-Key` the coordinator sends, as saga participants must.
//!
//! Events: orders publishes `orders.placed` for each order it takes through its sidecar
//! (`POST $IEUM_OUTBOUND/v1/publish/shop-events/orders.placed`, a binary-mode CloudEvent
//! whose `correlationid` is the order's id) to the `memory` PubSub the server hosts;
//! shipping receives it on `/events/order-placed` and asks for a retry now and then.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ieum_model::Duration;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;

/// The services of the demo shop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub(crate) enum Shop {
    /// Synthetic load: checks out at `--rate` per second.
    Shopper,
    /// `POST /checkout` → orders.
    Frontend,
    /// `POST /orders` → stock, then payments; publishes `orders.placed`.
    Orders,
    /// `POST /reserve`, `POST /release`, `GET /items`.
    Stock,
    /// `POST /charge`, `POST /refund`, with provider outages.
    Payments,
    /// `POST /ship`, `POST /cancel`; no courier for some orders. Consumes
    /// `orders.placed` on `POST /events/order-placed`.
    Shipping,
}

impl Shop {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Shop::Shopper => "shopper",
            Shop::Frontend => "frontend",
            Shop::Orders => "orders",
            Shop::Stock => "stock",
            Shop::Payments => "payments",
            Shop::Shipping => "shipping",
        }
    }
}

/// `ieum demo-app NAME --port P` (started by `ieum demo` under `ieum run`).
#[derive(Debug, clap::Args)]
pub(crate) struct AppArgs {
    /// Which service to be.
    #[arg(value_enum)]
    service: Shop,
    /// Port to listen on (127.0.0.1).
    #[arg(long)]
    port: u16,
    /// Shopper: checkouts per second.
    #[arg(long, default_value_t = 5.0)]
    rate: f64,
    /// Shopper: the ieum server whose saga coordinator runs the `checkout` saga (none: no
    /// sagas are started).
    #[arg(long)]
    saga_server: Option<String>,
    /// Shopper: seconds between two `checkout` sagas.
    #[arg(long, default_value_t = 3.0)]
    saga_every: f64,
    /// Payments: the first provider outage starts this long after start.
    #[arg(long, default_value = "40s")]
    outage_after: Duration,
    /// Payments: outages repeat this often.
    #[arg(long, default_value = "2m")]
    outage_every: Duration,
    /// Payments: each outage lasts this long.
    #[arg(long, default_value = "20s")]
    outage_for: Duration,
}

const ITEMS: [&str; 5] = ["tea", "kettle", "mug", "teapot", "honey"];
/// The `memory` PubSub of the shop's events (`demo/shop.yaml`), hosted by the server.
const SHOP_EVENTS: &str = "shop-events";
/// The topic orders publishes to for each order it takes.
const ORDERS_PLACED: &str = "orders.placed";

struct App {
    /// Calls to other services, through the sidecar.
    mesh: reqwest::Client,
    /// The sidecar's own API (`IEUM_OUTBOUND`), called directly: publishing events.
    sidecar: reqwest::Client,
    /// `IEUM_OUTBOUND`.
    outbound: String,
    started: Instant,
    args: AppArgs,
    next_id: AtomicU64,
    stock: Mutex<HashMap<&'static str, i64>>,
    orders: Mutex<HashMap<u64, Value>>,
    /// Answers already given, by `Idempotency-Key` (the newest `SEEN_KEYS`).
    seen: Mutex<Seen>,
}

/// How many answers an app remembers for de-duplication.
const SEEN_KEYS: usize = 10_000;

/// Answers by idempotency key, oldest forgotten first.
#[derive(Default)]
struct Seen {
    answers: HashMap<String, (StatusCode, Value)>,
    order: std::collections::VecDeque<String>,
}

impl Seen {
    fn get(&self, key: &str) -> Option<(StatusCode, Value)> {
        self.answers.get(key).cloned()
    }

    fn put(&mut self, key: String, answer: (StatusCode, Value)) {
        if self.answers.insert(key.clone(), answer).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > SEEN_KEYS {
            if let Some(old) = self.order.pop_front() {
                self.answers.remove(&old);
            }
        }
    }
}

/// Runs one demo service until it is stopped (SIGTERM from its sidecar).
pub(crate) async fn run(args: AppArgs) -> anyhow::Result<()> {
    let outbound = std::env::var("IEUM_OUTBOUND")
        .context("IEUM_OUTBOUND is not set: demo apps run under `ieum run`")?;
    let mesh = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(&outbound)?)
        .timeout(std::time::Duration::from_secs(5))
        .build()?;
    let sidecar = reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(5))
        .build()?;
    let service = args.service;
    let port = args.port;
    // Order ids double as events' correlation ids: each orders instance counts from its
    // own random base, so two instances do not hand out the same id.
    let first_id = match service {
        Shop::Orders => u64::from(rand::random::<u16>()) * 1_000_000 + 1,
        _ => 1,
    };
    let app = Arc::new(App {
        mesh,
        sidecar,
        outbound: outbound.trim_end_matches('/').to_owned(),
        started: Instant::now(),
        args,
        next_id: AtomicU64::new(first_id),
        stock: Mutex::new(ITEMS.iter().map(|i| (*i, 1_000)).collect()),
        orders: Mutex::new(HashMap::new()),
        seen: Mutex::new(Seen::default()),
    });
    let router = Router::new().route("/health", get(|| async { "ok\n" }));
    let router = match service {
        Shop::Shopper => {
            tokio::spawn(shop(app.clone()));
            if let Some(server) = app.args.saga_server.clone() {
                tokio::spawn(start_sagas(app.clone(), server));
            }
            router
        }
        Shop::Frontend => router.route("/checkout", post(checkout)),
        Shop::Orders => router
            .route("/orders", post(place_order))
            .route("/orders/{id}", get(get_order)),
        Shop::Stock => router
            .route("/reserve", post(reserve))
            .route("/release", post(release))
            .route("/items", get(items)),
        Shop::Payments => router
            .route("/charge", post(charge))
            .route("/refund", post(refund)),
        Shop::Shipping => router
            .route("/ship", post(ship))
            .route("/cancel", post(cancel))
            .route("/events/order-placed", post(order_placed)),
    };
    let listener = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .await
        .with_context(|| format!("cannot listen on 127.0.0.1:{port}"))?;
    axum::serve(listener, router.with_state(app))
        .with_graceful_shutdown(crate::sidecar::signal())
        .await?;
    Ok(())
}

type Shared = State<Arc<App>>;

/// A little work, so latency has a shape.
async fn work(min_ms: u64, max_ms: u64) {
    let ms = rand::random_range(min_ms..=max_ms);
    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
}

fn reply(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

/// Answers a repeated `Idempotency-Key` with the first answer; otherwise runs `handle`
/// and remembers what it answered.
async fn once<F, Fut>(app: &App, headers: &HeaderMap, handle: F) -> Response
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = (StatusCode, Value)>,
{
    let key = headers
        .get("idempotency-key")
        .and_then(|k| k.to_str().ok())
        .map(str::to_owned);
    if let Some(k) = &key
        && let Some((status, body)) = lock(&app.seen).get(k)
    {
        return reply(status, body);
    }
    let (status, body) = handle().await;
    if let Some(k) = key {
        lock(&app.seen).put(k, (status, body.clone()));
    }
    reply(status, body)
}

/// Calls another service through the sidecar; answers its status and JSON body.
async fn call(app: &App, url: &str, body: &Value) -> (StatusCode, Value) {
    match app.mesh.post(url).json(body).send().await {
        Ok(resp) => {
            let status = resp.status();
            let body = resp.json().await.unwrap_or(Value::Null);
            (status, body)
        }
        Err(e) => (StatusCode::BAD_GATEWAY, json!({"error": e.to_string()})),
    }
}

#[derive(Deserialize)]
struct Basket {
    item: String,
    qty: i64,
}

async fn checkout(State(app): Shared, Json(basket): Json<Basket>) -> Response {
    work(1, 3).await;
    let amount = basket.qty * 7;
    let order = json!({"item": basket.item, "qty": basket.qty, "amount": amount});
    let (status, body) = call(&app, "http://orders/orders", &order).await;
    reply(status, body)
}

async fn place_order(State(app): Shared, Json(basket): Json<Basket>) -> Response {
    let line = json!({"item": basket.item, "qty": basket.qty});
    let (status, reservation) = call(&app, "http://stock/reserve", &line).await;
    if !status.is_success() {
        let reason = reservation["error"].as_str().unwrap_or("stock failed");
        return reply(status, json!({"error": format!("stock: {reason}")}));
    }
    let charge = json!({"amount": basket.qty * 7});
    let (status, payment) = call(&app, "http://payments/charge", &charge).await;
    if !status.is_success() {
        // Give the reservation back: the order did not happen.
        let _ = call(&app, "http://stock/release", &reservation).await;
        let reason = payment["error"].as_str().unwrap_or("payment failed");
        let status = if status == StatusCode::PAYMENT_REQUIRED {
            StatusCode::PAYMENT_REQUIRED
        } else {
            StatusCode::BAD_GATEWAY
        };
        return reply(status, json!({"error": format!("payments: {reason}")}));
    }
    let id = app.next_id.fetch_add(1, Ordering::Relaxed);
    let order = json!({"id": id, "item": basket.item, "qty": basket.qty, "payment": payment["id"]});
    lock(&app.orders).insert(id, order.clone());
    publish_placed(&app, id, &order).await;
    reply(StatusCode::CREATED, order)
}

/// Publishes `orders.placed` through the sidecar: a binary-mode CloudEvent (`ce-`
/// headers, the order as its JSON data) whose `correlationid` is the order's id. The
/// order stands whether or not the event could be published; a failure is logged.
async fn publish_placed(app: &App, id: u64, order: &Value) {
    let url = format!("{}/v1/publish/{SHOP_EVENTS}/{ORDERS_PLACED}", app.outbound);
    let sent = app
        .sidecar
        .post(url)
        .header("ce-specversion", "1.0")
        .header("ce-id", format!("order-{id}-placed"))
        .header("ce-source", "orders")
        .header("ce-type", ORDERS_PLACED)
        .header("ce-correlationid", format!("order-{id}"))
        .header("content-type", "application/json")
        .body(order.to_string())
        .send()
        .await;
    match sent {
        Ok(r) if r.status().is_success() => {}
        Ok(r) => {
            let status = r.status();
            let why = r.text().await.unwrap_or_default();
            eprintln!("orders: publishing {ORDERS_PLACED} for order {id} answered {status}: {why}");
        }
        Err(e) => eprintln!("orders: could not publish {ORDERS_PLACED} for order {id}: {e}"),
    }
}

async fn get_order(State(app): Shared, Path(id): Path<u64>) -> Response {
    match lock(&app.orders).get(&id) {
        Some(order) => reply(StatusCode::OK, order.clone()),
        None => reply(
            StatusCode::NOT_FOUND,
            json!({"error": format!("no order {id}")}),
        ),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn reserve(State(app): Shared, headers: HeaderMap, Json(line): Json<Basket>) -> Response {
    once(&app, &headers, || async {
        work(2, 12).await;
        let mut stock = lock(&app.stock);
        let Some(level) = ITEMS
            .iter()
            .find(|i| **i == line.item)
            .and_then(|i| stock.get_mut(i))
        else {
            return (
                StatusCode::NOT_FOUND,
                json!({"error": format!("unknown item {}", line.item)}),
            );
        };
        if *level < line.qty {
            // The warehouse restocks what runs out.
            *level += 1_000;
            return (
                StatusCode::CONFLICT,
                json!({"error": format!("{} is out of stock", line.item)}),
            );
        }
        *level -= line.qty;
        (
            StatusCode::OK,
            json!({"item": line.item, "qty": line.qty, "left": *level}),
        )
    })
    .await
}

async fn release(State(app): Shared, headers: HeaderMap, Json(line): Json<Basket>) -> Response {
    once(&app, &headers, || async {
        work(1, 4).await;
        if let Some(level) = lock(&app.stock).get_mut(line.item.as_str()) {
            *level += line.qty;
        }
        (StatusCode::OK, json!({"released": line.qty}))
    })
    .await
}

async fn items(State(app): Shared) -> Response {
    let stock = lock(&app.stock);
    reply(StatusCode::OK, json!(*stock))
}

/// Whether the payment provider is down `elapsed` after start.
fn in_outage(
    elapsed: std::time::Duration,
    after: Duration,
    every: Duration,
    len: Duration,
) -> bool {
    let (after, every, len) = (after.get(), every.get(), len.get());
    if elapsed < after || every.is_zero() {
        return false;
    }
    let into = (elapsed - after).as_millis() % every.as_millis();
    into < len.as_millis()
}

async fn charge(State(app): Shared, headers: HeaderMap) -> Response {
    let a = &app.args;
    if in_outage(
        app.started.elapsed(),
        a.outage_after,
        a.outage_every,
        a.outage_for,
    ) {
        // Nothing was charged: not remembered, so a retry with the same key is charged.
        work(1, 3).await;
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "payment provider unavailable"}),
        );
    }
    once(&app, &headers, || async {
        work(5, 25).await;
        if rand::random_range(0..100) == 0 {
            return (
                StatusCode::PAYMENT_REQUIRED,
                json!({"error": "card declined"}),
            );
        }
        let id = app.next_id.fetch_add(1, Ordering::Relaxed);
        (StatusCode::OK, json!({"id": format!("pay-{id}")}))
    })
    .await
}

async fn refund(State(app): Shared, headers: HeaderMap) -> Response {
    once(&app, &headers, || async {
        work(3, 10).await;
        (StatusCode::OK, json!({"refunded": true}))
    })
    .await
}

async fn ship(State(app): Shared, headers: HeaderMap) -> Response {
    once(&app, &headers, || async {
        work(3, 15).await;
        // Some addresses have no courier free: a business failure, not retried.
        if rand::random_range(0..100) < 15 {
            return (
                StatusCode::CONFLICT,
                json!({"error": "no courier is free for this address"}),
            );
        }
        let id = app.next_id.fetch_add(1, Ordering::Relaxed);
        (StatusCode::OK, json!({"id": format!("ship-{id}")}))
    })
    .await
}

/// An `orders.placed` event (the `shipping-orders-placed` Subscription). About one first
/// delivery in eight answers `{"status":"RETRY"}` (the courier desk is busy), so the
/// topic shows retries; the redelivery (`ieum-attempt: 2`) succeeds.
async fn order_placed(headers: HeaderMap, body: Bytes) -> Response {
    work(1, 5).await;
    let attempt = headers
        .get("ieum-attempt")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(1);
    if serde_json::from_slice::<Value>(&body).is_err() {
        // Not an order: retrying cannot help.
        return reply(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"error": "an orders.placed event carries the order as JSON"}),
        );
    }
    if attempt == 1 && rand::random_range(0..8) == 0 {
        return reply(StatusCode::OK, json!({"status": "RETRY"}));
    }
    reply(StatusCode::OK, json!({"status": "SUCCESS"}))
}

async fn cancel(State(app): Shared, headers: HeaderMap) -> Response {
    once(&app, &headers, || async {
        work(1, 5).await;
        (StatusCode::OK, json!({"cancelled": true}))
    })
    .await
}

/// Starts a `checkout` saga every `--saga-every` seconds, each with its own
/// `Idempotency-Key` (`order-N`).
async fn start_sagas(app: Arc<App>, server: String) {
    let Ok(http) = reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(5))
        .build()
    else {
        return;
    };
    let every = std::time::Duration::from_secs_f64(app.args.saga_every.clamp(0.1, 3_600.0));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let url = format!(
        "{}/v1/sagas/checkout/executions",
        server.trim_end_matches('/')
    );
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        n += 1;
        let item = ITEMS[rand::random_range(0..ITEMS.len())];
        let qty = rand::random_range(1..4);
        let input = json!({
            "line": {"item": item, "qty": qty},
            "amount": qty * 7,
            "to": format!("{} Teheran-ro, Seoul", rand::random_range(1..500)),
        });
        let started = http
            .post(&url)
            .header("idempotency-key", format!("order-{n}"))
            .json(&input)
            .send()
            .await;
        match started {
            Ok(r) if !r.status().is_success() => {
                eprintln!("shopper: checkout saga {n} was refused: {}", r.status());
            }
            Err(e) => eprintln!("shopper: could not start checkout saga {n}: {e}"),
            Ok(_) => {}
        }
    }
}

/// The shopper: checks out at a steady rate and says how it went every 30 s.
async fn shop(app: Arc<App>) {
    let every = std::time::Duration::from_secs_f64(1.0 / app.args.rate.clamp(0.1, 1_000.0));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut last_report = Instant::now();
    loop {
        tick.tick().await;
        let app = app.clone();
        let counters = (ok.clone(), failed.clone());
        tokio::spawn(async move {
            let (ok, failed) = counters;
            let item = ITEMS[rand::random_range(0..ITEMS.len())];
            let basket = json!({"item": item, "qty": rand::random_range(1..4)});
            let (status, _) = call(&app, "http://frontend/checkout", &basket).await;
            if status.is_success() { ok } else { failed }.fetch_add(1, Ordering::Relaxed);
        });
        if last_report.elapsed() >= std::time::Duration::from_secs(30) {
            last_report = Instant::now();
            eprintln!(
                "shopper: {} checkouts succeeded, {} failed",
                ok.load(Ordering::Relaxed),
                failed.load(Ordering::Relaxed)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_follow_the_schedule() {
        let d = |s: &str| s.parse::<Duration>().expect("duration");
        let at = std::time::Duration::from_secs;
        let (after, every, len) = (d("40s"), d("2m"), d("20s"));
        assert!(!in_outage(at(39), after, every, len));
        assert!(in_outage(at(40), after, every, len));
        assert!(in_outage(at(59), after, every, len));
        assert!(!in_outage(at(60), after, every, len));
        assert!(in_outage(at(165), after, every, len));
        assert!(!in_outage(at(100), after, d("0s"), len));
    }
}
