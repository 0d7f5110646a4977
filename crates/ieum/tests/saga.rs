//! Sagas end to end with the real binary: `ieum server` killed with SIGKILL mid-saga and
//! started again over the same database resumes the execution. With
//! `IEUM_SAGA_CRASH_LOOP=N`, 1,000 sagas (20 % of them failing) run while the server is
//! killed and restarted N times: every execution ends completed or compensated, none is
//! lost, and no participant applies an effect twice.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use ieum_store::testing::TestDb;
use serde_json::{Value, json};

struct Server {
    child: Child,
    base: String,
    _logs: mpsc::Receiver<String>,
}

impl Server {
    #[allow(
        clippy::zombie_processes,
        reason = "the child is reaped by Server's Drop"
    )]
    fn start(args: &[String]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ieum"))
            .arg("server")
            .args(["--listen", "127.0.0.1:0", "--saga-lease", "2s"])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ieum server");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut seen = Vec::new();
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("no banner; saw {seen:#?}"));
            if let Some(addr) = line.trim().strip_prefix("listening") {
                let addr = addr.split_whitespace().next().expect("an address");
                return Server {
                    child,
                    base: format!("http://{addr}"),
                    _logs: rx,
                };
            }
            seen.push(line);
        }
    }

    fn kill_9(mut self) {
        self.child.kill().expect("SIGKILL the server");
        self.child.wait().expect("reap the server");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http() -> reqwest::Client {
    {
        // reqwest asks for a rustls provider even for plain HTTP: ring, as in ieum.
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder()
    }
    .no_proxy()
    .timeout(Duration::from_secs(10))
    .build()
    .unwrap()
}

/// A participant that applies each idempotency key once and remembers the answer.
#[derive(Clone, Default)]
struct Participant {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    done: HashMap<String, Value>,
    /// Effects applied per key (must never exceed 1).
    effects: BTreeMap<String, u32>,
    /// Delay before answering `/charge`, to hold a call in flight.
    slow: Option<Duration>,
}

async fn handle(
    State(p): State<Participant>,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let input: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    // Inputs marked to fail are refused at `/charge` (a business failure).
    if uri.path() == "/charge" && input["fail"] == true {
        return (StatusCode::PAYMENT_REQUIRED, "declined").into_response();
    }
    let (answer, slow) = {
        let mut g = p.inner.lock().unwrap();
        let answer = match g.done.get(&key) {
            Some(a) => a.clone(),
            None => {
                *g.effects.entry(key.clone()).or_insert(0) += 1;
                let a = json!({"id": format!("{}-{}", uri.path().trim_start_matches('/'), g.done.len())});
                g.done.insert(key.clone(), a.clone());
                a
            }
        };
        (
            answer,
            if uri.path() == "/charge" {
                g.slow
            } else {
                None
            },
        )
    };
    if let Some(d) = slow {
        tokio::time::sleep(d).await;
    }
    axum::Json(answer).into_response()
}

impl Participant {
    async fn start() -> (Participant, SocketAddr) {
        let p = Participant::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().fallback(handle).with_state(p.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (p, addr)
    }

    fn effects(&self) -> BTreeMap<String, u32> {
        self.inner.lock().unwrap().effects.clone()
    }
}

const SAGA: &str = r#"
apiVersion: ieum.dev/v1
kind: Saga
metadata: {name: checkout}
spec:
  steps:
  - name: stock
    action: {service: stock, method: POST, path: /reserve, body: "${input}"}
    compensation: {service: stock, method: POST, path: "/release/${steps.stock.idempotencyKey}"}
    retry: {attempts: 5, backoff: 20ms}
  - name: payment
    action: {service: payments, method: POST, path: /charge, body: "${input}"}
    compensation: {service: payments, method: POST, path: "/refund/${steps.payment.idempotencyKey}"}
    retry: {attempts: 5, backoff: 20ms}
  - name: shipping
    action: {service: shipping, method: POST, path: /ship, body: "${input}"}
    compensation: {service: shipping, method: POST, path: "/unship/${steps.shipping.idempotencyKey}"}
    retry: {attempts: 5, backoff: 20ms}
  compensation: {retry: {backoff: 20ms, maxBackoff: 200ms}, stuckAfter: 1000}
"#;

struct Shop {
    stock: Participant,
    payments: Participant,
    shipping: Participant,
    addrs: Vec<(&'static str, SocketAddr)>,
}

impl Shop {
    async fn start() -> Shop {
        let (stock, a) = Participant::start().await;
        let (payments, b) = Participant::start().await;
        let (shipping, c) = Participant::start().await;
        Shop {
            stock,
            payments,
            shipping,
            addrs: vec![("stock", a), ("payments", b), ("shipping", c)],
        }
    }

    /// Registers the participants and applies the saga (once per database).
    async fn setup(&self, base: &str) {
        let c = http();
        for (name, addr) in &self.addrs {
            let body = json!({"id": format!("{name}-1"), "address": "127.0.0.1", "port": addr.port(), "ttl": "1h"});
            let r = c
                .post(format!("{base}/v1/services/{name}/instances"))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.text().await.unwrap());
        }
        let r = c
            .post(format!("{base}/v1/apply"))
            .header("content-type", "application/yaml")
            .body(SAGA)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }
}

async fn execution(base: &str, id: &str) -> Option<Value> {
    let r = http()
        .get(format!("{base}/v1/sagas/executions/{id}"))
        .send()
        .await
        .ok()?;
    r.json().await.ok()
}

async fn start(base: &str, key: &str, input: &Value) -> Option<String> {
    let r = http()
        .post(format!("{base}/v1/sagas/checkout/executions"))
        .header("idempotency-key", key)
        .json(input)
        .send()
        .await
        .ok()?;
    if r.status() != StatusCode::ACCEPTED {
        return None;
    }
    let v: Value = r.json().await.ok()?;
    v["id"].as_str().map(str::to_owned)
}

async fn kill_9_mid_saga_resumes(store: Vec<String>) {
    let shop = Shop::start().await;
    shop.payments.inner.lock().unwrap().slow = Some(Duration::from_millis(1500));
    let server = Server::start(&store);
    shop.setup(&server.base).await;
    let id = start(&server.base, "k1", &json!({"order": 1}))
        .await
        .unwrap();
    // Kill while the payment is in flight.
    for _ in 0..200 {
        if !shop.payments.effects().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(shop.payments.effects().len(), 1, "the payment is in flight");
    server.kill_9();

    let server = Server::start(&store);
    let mut last = Value::Null;
    for _ in 0..300 {
        if let Some(v) = execution(&server.base, &id).await {
            if v["state"] == "completed" {
                last = v;
                break;
            }
            last = v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last["state"], "completed", "{last:#}");
    let resumed = last["log"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "call.started" && r["data"]["resumed"] == true)
        .count();
    assert_eq!(resumed, 1, "the in-flight payment was sent again");
    for p in [&shop.stock, &shop.payments, &shop.shipping] {
        assert_eq!(p.effects().values().copied().collect::<Vec<_>>(), [1]);
    }
    // Starting again with the same key finds the same execution after the restart.
    assert_eq!(
        start(&server.base, "k1", &json!({})).await.as_deref(),
        Some(id.as_str())
    );
}

#[tokio::test]
async fn kill_9_mid_saga_then_restart_resumes_on_sqlite() {
    let db = TestDb::sqlite();
    let dir = db.dir().unwrap().display().to_string();
    kill_9_mid_saga_resumes(vec!["--data-dir".into(), dir]).await;
    db.cleanup().await;
}

#[tokio::test]
async fn kill_9_mid_saga_then_restart_resumes_on_postgres() {
    let Some(db) = TestDb::postgres().await else {
        eprintln!("IEUM_TEST_POSTGRES_URL not set: PostgreSQL run skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    kill_9_mid_saga_resumes(vec![
        "--data-dir".into(),
        dir.path().display().to_string(),
        "--store".into(),
        db.url.clone(),
    ])
    .await;
    db.cleanup().await;
}

/// `IEUM_SAGA_CRASH_LOOP=N`: 1,000 sagas, 20 % failing, N SIGKILLs and restarts.
#[tokio::test]
async fn crash_loop() {
    let Some(restarts) = std::env::var("IEUM_SAGA_CRASH_LOOP")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
    else {
        eprintln!("IEUM_SAGA_CRASH_LOOP not set: crash loop skipped");
        return;
    };
    const SAGAS: usize = 1000;
    let db = TestDb::sqlite();
    let store = vec![
        "--data-dir".to_owned(),
        db.dir().unwrap().display().to_string(),
    ];
    let shop = Shop::start().await;
    let mut server = Server::start(&store);
    shop.setup(&server.base).await;
    let inputs: Vec<Value> = (0..SAGAS)
        .map(|i| json!({"order": i, "fail": i % 5 == 0}))
        .collect();
    let mut ids: Vec<Option<String>> = vec![None; SAGAS];
    let mut kills = 0;
    let started = tokio::time::Instant::now();
    // Start sagas in waves; kill the server every so often. A start that fails during
    // a kill is sent again with the same key, as a client would.
    while ids.iter().any(Option::is_none) || kills < restarts {
        let base = server.base.clone();
        let todo: Vec<usize> = (0..SAGAS).filter(|i| ids[*i].is_none()).take(150).collect();
        let mut set = tokio::task::JoinSet::new();
        for i in todo {
            let (base, input) = (base.clone(), inputs[i].clone());
            set.spawn(async move { (i, start(&base, &format!("order-{i}"), &input).await) });
        }
        while let Some(r) = set.join_next().await {
            let (i, id) = r.unwrap();
            if id.is_some() {
                ids[i] = id;
            }
        }
        if kills < restarts {
            tokio::time::sleep(Duration::from_millis(rand::random_range(50..400))).await;
            server.kill_9();
            kills += 1;
            server = Server::start(&store);
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the crash loop took too long"
        );
    }
    // Every execution finishes.
    let ids: Vec<String> = ids.into_iter().map(Option::unwrap).collect();
    let mut states = vec![String::new(); SAGAS];
    for _ in 0..600 {
        let r = http()
            .get(format!(
                "{}/v1/sagas/executions?saga=checkout&limit=10000",
                server.base
            ))
            .send()
            .await
            .unwrap();
        let list: Value = r.json().await.unwrap();
        let by_id: HashMap<&str, &str> = list["executions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["id"].as_str().unwrap(), e["state"].as_str().unwrap()))
            .collect();
        assert_eq!(by_id.len(), SAGAS, "one execution per key, none lost");
        for (i, id) in ids.iter().enumerate() {
            states[i] = by_id
                .get(id.as_str())
                .copied()
                .unwrap_or("missing")
                .to_owned();
        }
        if states
            .iter()
            .all(|s| s == "completed" || s == "compensated")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for (i, s) in states.iter().enumerate() {
        let want = if i % 5 == 0 {
            "compensated"
        } else {
            "completed"
        };
        if s != want {
            // The step log says why (which attempt failed, with what).
            let log = execution(&server.base, &ids[i]).await;
            panic!("saga {i} ({}) is {s}, expected {want}: {log:#?}", ids[i]);
        }
    }
    // No effect applied twice; each failed checkout's stock reservation was released.
    for (name, p) in [
        ("stock", &shop.stock),
        ("payments", &shop.payments),
        ("shipping", &shop.shipping),
    ] {
        let effects = p.effects();
        assert!(
            effects.values().all(|n| *n == 1),
            "{name}: an effect applied twice"
        );
    }
    let releases = shop
        .stock
        .effects()
        .keys()
        .filter(|k| k.ends_with(":compensation"))
        .count();
    assert_eq!(releases, SAGAS / 5);
    let shipped = shop.shipping.effects().len();
    assert_eq!(shipped, SAGAS - SAGAS / 5);
    eprintln!(
        "crash loop: {SAGAS} sagas, {kills} SIGKILLs, {:?}",
        started.elapsed()
    );
    db.cleanup().await;
}
