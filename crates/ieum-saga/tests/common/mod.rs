//! Test support: a real registry server on a socket, a real coordinator on a real SQLite
//! (or PostgreSQL) log, and participants written as axum services that de-duplicate on
//! `Idempotency-Key`, as the docs ask participants to.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use ieum_control::{AppState, Auth, router_with};
use ieum_model::{InstanceRegistration, Name};
use ieum_registry::{Options as RegistryOptions, Registry, SystemClock};
use ieum_saga::{Coordinator, ExecutionView, Options};
use ieum_store::{SagaLog, SqlSagaLog, SqlStore, Store};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// `ieum server` in process over a store URL, with a coordinator.
pub struct Server {
    pub registry: Registry,
    pub addr: SocketAddr,
    pub url: String,
    pub log: Arc<dyn SagaLog>,
    pub coordinator: Coordinator,
    stop: CancellationToken,
}

impl Server {
    pub async fn start(store_url: &str) -> Server {
        Server::start_with(store_url, |_| {}).await
    }

    pub async fn start_with(store_url: &str, tune: impl FnOnce(&mut Options)) -> Server {
        let store: Arc<dyn Store> = Arc::new(SqlStore::open(store_url).await.unwrap());
        let registry = Registry::start(
            store.clone(),
            Arc::new(SystemClock),
            RegistryOptions::default(),
        )
        .await
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log: Arc<dyn SagaLog> = Arc::new(SqlSagaLog::open(store_url).await.unwrap());
        let mut options = Options::new(log.clone(), store, format!("http://{addr}"));
        options.claim_every = Duration::from_millis(200);
        tune(&mut options);
        let coordinator = Coordinator::start(options).await.unwrap();
        let stop = CancellationToken::new();
        let app = router_with(
            AppState {
                registry: registry.clone(),
                auth: Auth::Open,
                shutdown: stop.clone(),
            },
            Some(coordinator.clone()),
        );
        let s = stop.clone();
        tokio::spawn(async move {
            let _ = ieum_control::serve(listener, app, async move { s.cancelled().await }).await;
        });
        Server {
            registry,
            addr,
            url: store_url.to_owned(),
            log,
            coordinator,
            stop,
        }
    }

    /// Stops everything abruptly (as a crash): nothing is released or flushed.
    pub async fn crash(self) {
        self.coordinator.abort();
        self.stop.cancel();
        self.registry.shutdown().await;
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn register(&self, service: &str, addr: SocketAddr) {
        let mut reg = InstanceRegistration::new(addr.ip().to_string(), addr.port());
        reg.id = Some(format!("{service}-1"));
        reg.ttl = ieum_model::Duration::from_secs(3600);
        self.registry
            .register(&Name::parse(service).unwrap(), reg, "test")
            .await
            .unwrap();
    }

    pub async fn apply(&self, yaml: &str) {
        let checked: Vec<_> = ieum_model::resource::parse_documents(yaml)
            .unwrap()
            .iter()
            .map(|r| ieum_model::resource::check(r).unwrap())
            .collect();
        self.registry.apply(checked, "test", false).await.unwrap();
    }

    /// Starts an execution and waits for it to finish.
    pub async fn run(&self, saga: &str, input: Value) -> ExecutionView {
        let started = self
            .coordinator
            .start_execution(saga, input, None, "test")
            .await
            .unwrap();
        self.finish(&started.id).await
    }

    pub async fn finish(&self, id: &str) -> ExecutionView {
        match self
            .coordinator
            .wait(id, Duration::from_secs(20))
            .await
            .unwrap()
        {
            Some(v) => v,
            None => panic!(
                "execution did not finish: {:#?}",
                self.coordinator.execution(id).await.unwrap()
            ),
        }
    }

    /// Waits until the execution is in `state`.
    pub async fn until_state(&self, id: &str, state: &str) -> ExecutionView {
        for _ in 0..400 {
            let v = self.coordinator.execution(id).await.unwrap();
            if v.state == state {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "never {state}: {:#?}",
            self.coordinator.execution(id).await.unwrap()
        );
    }
}

/// What a participant answers to one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// This status and JSON body.
    Status(u16, Value),
    /// Wait this long, then answer 200 (and apply the effect when the wait ends).
    Slow(Duration),
}

type Rule = Arc<dyn Fn(&str, u32) -> Option<Reply> + Send + Sync>;

/// One call as a participant saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub path: String,
    pub key: String,
    pub traceparent: Option<String>,
}

#[derive(Default)]
struct Inner {
    /// Results per idempotency key: the effect is applied once per key.
    done: HashMap<String, (u16, Value)>,
    /// Effects applied, in order (path).
    effects: Vec<String>,
    /// Every request, in order.
    seen: Vec<Seen>,
    /// Requests per path so far.
    counts: HashMap<String, u32>,
}

/// A participant service: answers `{"id": "PATH-N"}` with 200 and applies each key once,
/// unless a rule says otherwise for (path, n-th request on that path).
#[derive(Clone)]
pub struct Participant {
    name: String,
    inner: Arc<Mutex<Inner>>,
    rule: Arc<Mutex<Rule>>,
    pub addr: SocketAddr,
}

impl Participant {
    pub async fn start(name: &str) -> Participant {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let p = Participant {
            name: name.into(),
            inner: Arc::default(),
            rule: Arc::new(Mutex::new(Arc::new(|_: &str, _: u32| None))),
            addr,
        };
        let app = axum::Router::new().fallback(handle).with_state(p.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        p
    }

    /// Sets how the participant answers: `rule(path, n)` for the n-th request (1-based) on
    /// `path`; `None` answers normally.
    pub fn rule(&self, rule: impl Fn(&str, u32) -> Option<Reply> + Send + Sync + 'static) {
        *self.rule.lock().unwrap() = Arc::new(rule);
    }

    /// Effects applied (paths, in order).
    pub fn effects(&self) -> Vec<String> {
        self.inner.lock().unwrap().effects.clone()
    }

    /// Every request seen.
    pub fn seen(&self) -> Vec<Seen> {
        self.inner.lock().unwrap().seen.clone()
    }

    /// How many requests `path` got.
    pub fn count(&self, path: &str) -> u32 {
        self.inner
            .lock()
            .unwrap()
            .counts
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

async fn handle(
    State(p): State<Participant>,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let traceparent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let n = {
        let mut g = p.inner.lock().unwrap();
        g.seen.push(Seen {
            path: path.clone(),
            key: key.clone(),
            traceparent,
        });
        let c = g.counts.entry(path.clone()).or_insert(0);
        *c += 1;
        *c
    };
    let rule = p.rule.lock().unwrap().clone();
    let reply = rule(&path, n);
    if let Some(Reply::Status(code, body)) = &reply
        && *code >= 500
    {
        // A failing service did nothing (and remembers nothing).
        return (
            StatusCode::from_u16(*code).unwrap(),
            axum::Json(body.clone()),
        )
            .into_response();
    }
    if let Some(Reply::Slow(d)) = &reply {
        // The work is done at once; only the answer is late (the caller is in doubt).
        let (code, out) = {
            let mut g = p.inner.lock().unwrap();
            if !g.done.contains_key(&key) {
                g.effects.push(path.clone());
                let id = format!("{}{}-{}", p.name, path.replace('/', "-"), g.effects.len());
                g.done.insert(key.clone(), (200, json!({"id": id})));
            }
            g.done[&key].clone()
        };
        tokio::time::sleep(*d).await;
        return (StatusCode::from_u16(code).unwrap(), axum::Json(out)).into_response();
    }
    let mut g = p.inner.lock().unwrap();
    if let Some((code, body)) = g.done.get(&key) {
        return (
            StatusCode::from_u16(*code).unwrap(),
            axum::Json(body.clone()),
        )
            .into_response();
    }
    let (code, out) = match reply {
        Some(Reply::Status(code, body)) => (code, body),
        _ => {
            let input: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            g.effects.push(path.clone());
            let id = format!("{}{}-{}", p.name, path.replace('/', "-"), g.effects.len());
            (200, json!({"id": id, "input": input}))
        }
    };
    if !key.is_empty() {
        g.done.insert(key, (code, out.clone()));
    }
    (StatusCode::from_u16(code).unwrap(), axum::Json(out)).into_response()
}

/// The trip saga of the docs, over three participants.
pub const TRIP: &str = r#"
apiVersion: ieum.dev/v1
kind: Saga
metadata: {name: trip}
spec:
  steps:
  - name: flight
    action: {service: flights, method: POST, path: /book, body: "${input.flight}"}
    compensation: {service: flights, method: POST, path: "/cancel/${steps.flight.body.id}"}
    retry: {attempts: 2, backoff: 10ms}
  - name: hotel
    action: {service: hotels, method: POST, path: /book, body: {guest: "${input.name}", flight: "${steps.flight.body.id}"}}
    compensation: {service: hotels, method: POST, path: "/cancel/${steps.hotel.idempotencyKey}"}
    retry: {attempts: 2, backoff: 10ms}
    timeouts: {request: 2s, backendRequest: 300ms}
  - name: payment
    action: {service: payments, method: POST, path: /charge, body: "${input.payment}"}
    compensation: {service: payments, method: POST, path: /refund}
    retry: {attempts: 2, backoff: 10ms}
  compensation: {retry: {backoff: 10ms, maxBackoff: 50ms}, stuckAfter: 3}
"#;

/// The three participants of [`TRIP`], registered.
pub struct Trip {
    pub flights: Participant,
    pub hotels: Participant,
    pub payments: Participant,
}

impl Trip {
    pub async fn start(server: &Server) -> Trip {
        let t = Trip {
            flights: Participant::start("flights").await,
            hotels: Participant::start("hotels").await,
            payments: Participant::start("payments").await,
        };
        server.register("flights", t.flights.addr).await;
        server.register("hotels", t.hotels.addr).await;
        server.register("payments", t.payments.addr).await;
        server.apply(TRIP).await;
        t
    }
}

pub fn input() -> Value {
    json!({"flight": {"to": "ICN"}, "name": "kim", "payment": {"amount": 120}})
}

/// The calls of a view's log, as `phase:step` in order.
pub fn calls(v: &ExecutionView) -> Vec<String> {
    v.log
        .iter()
        .filter(|r| r.kind == "call.started")
        .map(|r| {
            format!(
                "{}:{}",
                r.data["phase"].as_str().unwrap(),
                r.step.clone().unwrap()
            )
        })
        .collect()
}
