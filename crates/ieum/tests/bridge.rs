//! The sidecar bridge with real processes: `ieum server` and `ieum run` in front of a small
//! Python app that records what is delivered to it (and parses it with the CloudEvents
//! Python SDK when installed). `type: memory` PubSubs are hosted by the server, so the
//! always-on tests run across services — publish through one sidecar, deliver through
//! another, a RETRY answer, the consuming sidecar killed mid-delivery — and the same runs
//! on NATS JetStream when `IEUM_TEST_NATS_URL` is set.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

const TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The app: records every POST as a JSON line in `LOG` (path, headers, body and what the
/// CloudEvents SDK made of it), answers `GET /ieum/subscriptions` with `DECLARED` (404
/// when it is `-`), sleeps `SLOW` seconds in each POST whose path starts with `SLOW_PATH`
/// (every POST by default), answers `{"status":"RETRY"}` to the first attempt
/// (`ieum-attempt: 1`) of a POST whose path starts with `RETRY_PATH`, writes its pid and
/// environment beside the log.
const APP: &str = r#"
import http.server, json, os, sys, time
port, log, declared = int(sys.argv[1]), sys.argv[2], sys.argv[3]
slow = float(os.environ.get("SLOW", "0"))
slow_path = os.environ.get("SLOW_PATH", "/")
retry_path = os.environ.get("RETRY_PATH")
open(log + ".pid", "w").write(str(os.getpid()))
json.dump(dict(os.environ), open(log + ".env", "w"))
try:
    from cloudevents.http import from_http
except ImportError:
    from_http = None

class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def answer(self, code, body=b"", ctype="text/plain"):
        self.send_response(code)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        if self.path == "/ieum/subscriptions":
            if declared == "-":
                return self.answer(404)
            return self.answer(200, declared.encode(), "application/json")
        self.answer(200, b"ok")
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        headers = {k.lower(): v for k, v in self.headers.items()}
        if from_http is None:
            sdk = "missing"
        else:
            try:
                sdk = "ok:" + from_http(headers, body)["id"]
            except Exception as e:
                sdk = "error:" + repr(e)
        with open(log, "a") as f:
            f.write(json.dumps({"path": self.path, "headers": headers, "body": body.decode(), "sdk": sdk}) + "\n")
        if self.path.startswith(slow_path):
            time.sleep(slow)
        if retry_path and self.path.startswith(retry_path) and headers.get("ieum-attempt") == "1":
            return self.answer(200, b'{"status":"RETRY"}', "application/json")
        self.answer(200)

http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"#;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        support::kill_tree(&mut self.0);
    }
}

/// The stderr lines of a process, collected as they come.
type Lines = Arc<Mutex<Vec<String>>>;

fn collect(child: &mut Child) -> Lines {
    let lines: Lines = Arc::default();
    let l = lines.clone();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            l.lock().unwrap().push(line);
        }
    });
    lines
}

#[allow(clippy::zombie_processes, reason = "reaped by Proc's Drop")]
fn server(data: &Path) -> (Proc, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ieum"))
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let base = loop {
        let line = lines.next().expect("banner").unwrap();
        if let Some(rest) = line.trim().strip_prefix("listening") {
            break format!("http://{}", rest.split_whitespace().next().unwrap());
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (Proc(child), base)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An app and its sidecar: `ieum run --service SERVICE -- python3 APP`.
struct Instance {
    sidecar: Proc,
    stderr: Lines,
    log: PathBuf,
}

fn run(base: &str, dir: &Path, service: &str, declared: &str, slow: &str) -> Instance {
    run_with(base, dir, service, declared, &[("SLOW", slow)])
}

/// `ieum run` over the app with `env` set for it (`SLOW`, `SLOW_PATH`, `RETRY_PATH`).
#[allow(clippy::zombie_processes, reason = "reaped by Proc's Drop")]
fn run_with(
    base: &str,
    dir: &Path,
    service: &str,
    declared: &str,
    env: &[(&str, &str)],
) -> Instance {
    let log = dir.join(format!("{service}.log"));
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ieum"))
        .args(["run", "--service", service, "--app-port", &port.to_string()])
        .args(["--server", base, "--data-dir"])
        .arg(dir.join(format!("{service}-data")))
        .args(["--outbound", "127.0.0.1:0", "--inbound", "127.0.0.1:0"])
        .args([
            "--admin",
            "127.0.0.1:0",
            "--ttl",
            "3s",
            "--drain-grace",
            "2s",
        ])
        .args(["--", "python3", "-c", APP, &port.to_string()])
        .arg(&log)
        .arg(declared)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .env_remove("IEUM_SERVER")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = collect(&mut child);
    Instance {
        sidecar: Proc(child),
        stderr,
        log,
    }
}

impl Instance {
    /// The sidecar's outbound address, as the app was told (`IEUM_OUTBOUND`).
    async fn outbound(&self) -> String {
        let env = self.log.with_extension("log.env");
        wait_for("the app's environment", async || env.exists()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let env: Value = serde_json::from_str(&std::fs::read_to_string(&env).unwrap()).unwrap();
        env["IEUM_OUTBOUND"].as_str().unwrap().to_owned()
    }

    /// What the app recorded so far.
    fn seen(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// SIGKILL to the sidecar and its app (the app runs in its own process group, so it
    /// would outlive the sidecar).
    fn kill(mut self) {
        let pid = std::fs::read_to_string(self.log.with_extension("log.pid")).unwrap();
        let _ = self.sidecar.0.kill();
        let _ = self.sidecar.0.wait();
        let _ = Command::new("kill").args(["-9", pid.trim()]).status();
    }
}

async fn http() -> reqwest::Client {
    {
        // reqwest asks for a rustls provider even for plain HTTP: ring, as in ieum.
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder()
    }
    .no_proxy()
    .build()
    .unwrap()
}

async fn apply(base: &str, yaml: &str) {
    let res = http()
        .await
        .post(format!("{base}/v1/apply"))
        .header("content-type", "application/yaml")
        .body(yaml.to_owned())
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.text().await.unwrap());
}

async fn state(base: &str, service: &str) -> Value {
    let res = http()
        .await
        .get(format!("{base}/v1/services/{service}"))
        .send()
        .await
        .unwrap();
    if res.status() == 404 {
        return Value::Null;
    }
    res.json::<Value>().await.unwrap()["instances"][0]["state"].clone()
}

/// Waits until `service`'s first instance (run as `instance`) is `up`; on timeout, says
/// what its sidecar printed.
async fn wait_up(base: &str, service: &str, instance: &Instance) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while state(base, service).await != "up" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {service} up; its sidecar printed:\n{}",
            instance.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn publish(
    outbound: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> reqwest::Response {
    let mut req = http()
        .await
        .post(format!("{outbound}{path}"))
        .body(body.to_owned());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

/// Asserts the CloudEvents SDK parsed a recorded delivery (noting when it is missing).
fn sdk_parsed(seen: &Value) {
    let sdk = seen["sdk"].as_str().unwrap();
    if sdk == "missing" {
        eprintln!("CloudEvents SDK check skipped: pip install cloudevents==1.11.0 to run it");
        return;
    }
    assert_eq!(
        sdk,
        format!("ok:{}", seen["headers"]["ce-id"].as_str().unwrap()),
        "{seen}"
    );
}

#[tokio::test]
async fn run_registers_only_once_subscriptions_are_active_and_delivers_with_the_trace() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, base) = server(&dir.path().join("server"));
    let (bus, topic, declared_topic) = (unique("bus"), unique("orders"), unique("audit"));
    // The Subscription's PubSub points at a port nobody listens on.
    let dead = free_port();
    apply(
        &base,
        &format!(
            "apiVersion: ieum.dev/v1\nkind: PubSub\nmetadata: {{name: {bus}}}\nspec: {{type: memory}}\n---\napiVersion: ieum.dev/v1\nkind: PubSub\nmetadata: {{name: down}}\nspec: {{type: nats-jetstream, url: 'nats://127.0.0.1:{dead}'}}\n---\napiVersion: ieum.dev/v1\nkind: Subscription\nmetadata: {{name: billing-orders}}\nspec: {{pubsub: down, topic: {topic}, service: billing, route: /events/orders}}\n"
        ),
    )
    .await;
    let declared =
        format!(r#"[{{"pubsub":"{bus}","topic":"{declared_topic}","route":"/events/audit"}}]"#);
    let billing = run(&base, dir.path(), "billing", &declared, "0");

    // Healthy app, unreachable broker: not registered, and the log says why.
    wait_for("the reason in the log", async || {
        billing
            .stderr()
            .contains("not registering until subscriptions are active")
    })
    .await;
    let log = billing.stderr();
    assert!(
        log.contains("Subscription/billing-orders") && log.contains("unreachable"),
        "{log}"
    );
    assert_eq!(state(&base, "billing").await, Value::Null, "{log}");

    // Moving the Subscription to a broker that works: registered without a restart.
    apply(
        &base,
        &format!("apiVersion: ieum.dev/v1\nkind: Subscription\nmetadata: {{name: billing-orders}}\nspec: {{pubsub: {bus}, topic: {topic}, service: billing, route: /events/orders}}\n"),
    )
    .await;
    wait_for("billing up", async || state(&base, "billing").await == "up").await;
    assert!(
        billing
            .stderr()
            .contains("the app declared 1 subscription(s)"),
        "{}",
        billing.stderr()
    );

    let outbound = billing.outbound().await;
    let res = publish(
        &outbound,
        &format!("/v1/publish/{bus}/{topic}"),
        &[
            ("traceparent", TRACE),
            ("content-type", "application/json"),
            ("ce-type", "order.created"),
        ],
        r#"{"id":7}"#,
    )
    .await;
    assert_eq!(res.status(), 204, "{}", res.text().await.unwrap());
    let res = publish(
        &outbound,
        &format!("/v1/publish/{bus}/{declared_topic}"),
        &[],
        "audit",
    )
    .await;
    assert_eq!(res.status(), 204);
    wait_for("two deliveries", async || billing.seen().len() >= 2).await;
    let seen = billing.seen();
    let order = seen.iter().find(|s| s["path"] == "/events/orders").unwrap();
    assert_eq!(order["body"], r#"{"id":7}"#);
    assert_eq!(order["headers"]["ce-source"], "billing");
    assert_eq!(order["headers"]["ce-type"], "order.created");
    let tp = order["headers"]["traceparent"].as_str().unwrap();
    assert_eq!(
        tp.split('-').nth(1),
        TRACE.split('-').nth(1),
        "the trace continues"
    );
    sdk_parsed(order);
    let audit = seen.iter().find(|s| s["path"] == "/events/audit").unwrap();
    assert_eq!(audit["body"], "audit");
    assert_eq!(audit["headers"]["ieum-subscription"], "app");
}

/// What the app recorded on `path`.
fn on(seen: &[Value], path: &str) -> Vec<Value> {
    seen.iter().filter(|s| s["path"] == path).cloned().collect()
}

#[tokio::test]
async fn a_memory_pubsub_hosted_by_the_server_joins_services_and_redelivers_after_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, base) = server(&dir.path().join("server"));
    let (bus, orders_topic, retry_topic, slow_topic) = (
        unique("bus"),
        unique("orders"),
        unique("retry"),
        unique("slow"),
    );
    let subscription = |name: &str, topic: &str, route: &str| {
        format!(
            "---\napiVersion: ieum.dev/v1\nkind: Subscription\nmetadata: {{name: {name}}}\nspec: {{pubsub: {bus}, topic: {topic}, service: billing, route: {route}}}\n"
        )
    };
    apply(
        &base,
        &(format!(
            "apiVersion: ieum.dev/v1\nkind: PubSub\nmetadata: {{name: {bus}}}\nspec: {{type: memory, redeliverAfter: 4s}}\n"
        ) + &subscription("billing-orders", &orders_topic, "/events/orders")
            + &subscription("billing-retry", &retry_topic, "/events/retry")
            + &subscription("billing-slow", &slow_topic, "/events/slow")),
    )
    .await;
    // Two services, two processes: billing subscribes, orders publishes. Billing's app
    // asks for a retry of every first delivery on /events/retry and takes 30 s on
    // /events/slow, so its sidecar can be killed mid-delivery.
    let billing = run_with(
        &base,
        dir.path(),
        "billing",
        "-",
        &[
            ("SLOW", "30"),
            ("SLOW_PATH", "/events/slow"),
            ("RETRY_PATH", "/events/retry"),
        ],
    );
    let orders = run(&base, dir.path(), "orders", "-", "0");
    wait_up(&base, "billing", &billing).await;
    wait_up(&base, "orders", &orders).await;
    let outbound = orders.outbound().await;

    // Published through orders' sidecar, delivered through billing's.
    let res = publish(
        &outbound,
        &format!("/v1/publish/{bus}/{orders_topic}"),
        &[
            ("traceparent", TRACE),
            ("content-type", "application/json"),
            ("ce-type", "order.created"),
        ],
        r#"{"id":7}"#,
    )
    .await;
    assert_eq!(res.status(), 204, "{}", res.text().await.unwrap());
    wait_for("the delivery to billing", async || {
        !on(&billing.seen(), "/events/orders").is_empty()
    })
    .await;
    let order = on(&billing.seen(), "/events/orders")[0].clone();
    assert_eq!(order["body"], r#"{"id":7}"#);
    assert_eq!(order["headers"]["ce-source"], "orders");
    assert_eq!(order["headers"]["ce-type"], "order.created");
    assert_eq!(order["headers"]["ieum-attempt"], "1");
    assert_eq!(order["headers"]["ieum-pubsub"], bus.as_str());
    let tp = order["headers"]["traceparent"].as_str().unwrap();
    assert_eq!(
        tp.split('-').nth(1),
        TRACE.split('-').nth(1),
        "the trace continues"
    );
    sdk_parsed(&order);

    // A RETRY answer: the same event again, attempt 2, which the app takes.
    let res = publish(
        &outbound,
        &format!("/v1/publish/{bus}/{retry_topic}"),
        &[],
        "again",
    )
    .await;
    assert_eq!(res.status(), 204);
    wait_for("the redelivery after RETRY", async || {
        on(&billing.seen(), "/events/retry").len() >= 2
    })
    .await;
    let retried = on(&billing.seen(), "/events/retry");
    assert_eq!(retried[0]["headers"]["ieum-attempt"], "1");
    assert_eq!(retried[1]["headers"]["ieum-attempt"], "2");
    assert_eq!(
        retried[0]["headers"]["ce-id"],
        retried[1]["headers"]["ce-id"]
    );
    assert_eq!(retried[1]["body"], "again");

    // SIGKILL while billing's app works on an event: nothing was settled, so the server
    // gives it back once its lease (redeliverAfter, 4 s) runs out, to the restarted
    // sidecar, as attempt 2.
    let res = publish(
        &outbound,
        &format!("/v1/publish/{bus}/{slow_topic}"),
        &[],
        "slow 1",
    )
    .await;
    assert_eq!(res.status(), 204);
    wait_for("the slow delivery", async || {
        !on(&billing.seen(), "/events/slow").is_empty()
    })
    .await;
    let first = on(&billing.seen(), "/events/slow")[0].clone();
    assert_eq!(first["headers"]["ieum-attempt"], "1");
    let log = billing.log.clone();
    billing.kill();
    std::fs::remove_file(&log).unwrap();
    let billing = run(&base, dir.path(), "billing", "-", "0");
    wait_for("the redelivery to the restarted sidecar", async || {
        !on(&billing.seen(), "/events/slow").is_empty()
    })
    .await;
    let again = on(&billing.seen(), "/events/slow")[0].clone();
    assert_eq!(again["body"], "slow 1");
    assert_eq!(again["headers"]["ce-id"], first["headers"]["ce-id"]);
    assert_eq!(again["headers"]["ieum-attempt"], "2", "{again}");
    // Acknowledged this time: not delivered again once another lease would have run out.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        on(&billing.seen(), "/events/slow").len(),
        1,
        "{:?}",
        billing.seen()
    );
}

#[tokio::test]
async fn across_services_on_nats_and_redelivered_after_the_sidecar_is_killed() {
    let Some(url) = std::env::var("IEUM_TEST_NATS_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        eprintln!("skipped: set IEUM_TEST_NATS_URL to run it");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (_server, base) = server(&dir.path().join("server"));
    // A PubSub whose broker is down, for the last check.
    apply(
        &base,
        &format!(
            "apiVersion: ieum.dev/v1\nkind: PubSub\nmetadata: {{name: down}}\nspec: {{type: nats-jetstream, url: 'nats://127.0.0.1:{}'}}\n",
            free_port()
        ),
    )
    .await;
    let spec = format!("{{type: nats-jetstream, url: '{url}', redeliverAfter: 2s}}");
    let (orders, _, topic) = killed_mid_delivery(&base, dir.path(), &spec, true).await;

    // A broker that is down: a publish is a 503 that says so, never a 204.
    let outbound = orders.outbound().await;
    let res = publish(&outbound, &format!("/v1/publish/down/{topic}"), &[], "x").await;
    assert_eq!(res.status(), 503);
    let text = res.text().await.unwrap();
    assert!(
        text.contains("unreachable") && text.contains("down/"),
        "{text}"
    );
}

/// The same across services over every other broker whose URL is set: a SIGKILLed
/// consumer's sidecar leaves the event unacknowledged, and the restarted one gets it.
#[tokio::test]
async fn redelivered_after_the_sidecar_is_killed_on_every_broker() {
    for (var, spec, attempts_survive) in [
        (
            "IEUM_TEST_AMQP_URL",
            "{type: rabbitmq, url: 'URL', redeliverAfter: 2s}",
            true,
        ),
        (
            "IEUM_TEST_REDIS_URL",
            "{type: redis-streams, url: 'URL', redeliverAfter: 2s}",
            true,
        ),
        // Kafka keeps no delivery count: after a crash the attempt starts at 1 again.
        (
            "IEUM_TEST_KAFKA_URL",
            "{type: kafka, url: 'URL', redeliverAfter: 6s}",
            false,
        ),
    ] {
        let Some(url) = std::env::var(var).ok().filter(|u| !u.is_empty()) else {
            eprintln!("skipped: set {var} to run it");
            continue;
        };
        let dir = tempfile::tempdir().unwrap();
        let (_server, base) = server(&dir.path().join("server"));
        killed_mid_delivery(
            &base,
            dir.path(),
            &spec.replace("URL", &url),
            attempts_survive,
        )
        .await;
    }
}

/// `billing` consumes what `orders` publishes over the `PubSub` `spec`; billing's sidecar
/// is SIGKILLed while its app works on the first delivery, and the restarted sidecar gets
/// the same event again, once. Returns orders' instance, the PubSub and the topic.
async fn killed_mid_delivery(
    base: &str,
    dir: &Path,
    spec: &str,
    attempts_survive: bool,
) -> (Instance, String, String) {
    let (bus, topic) = (unique("bus"), unique("orders"));
    apply(
        base,
        &format!(
            "apiVersion: ieum.dev/v1\nkind: PubSub\nmetadata: {{name: {bus}}}\nspec: {spec}\n---\napiVersion: ieum.dev/v1\nkind: Subscription\nmetadata: {{name: billing-orders}}\nspec: {{pubsub: {bus}, topic: {topic}, service: billing, route: /events/orders}}\n"
        ),
    )
    .await;
    // The subscriber's app takes its time, so the sidecar is killed mid-delivery.
    let billing = run(base, dir, "billing", "-", "30");
    let orders = run(base, dir, "orders", "-", "0");
    wait_up(base, "billing", &billing).await;
    wait_up(base, "orders", &orders).await;
    assert!(billing.stderr().contains("404"), "{}", billing.stderr());

    let outbound = orders.outbound().await;
    let res = publish(
        &outbound,
        &format!("/v1/publish/{bus}/{topic}"),
        &[("traceparent", TRACE)],
        "order 7",
    )
    .await;
    assert_eq!(res.status(), 204, "{spec}: {}", res.text().await.unwrap());
    wait_for("the first delivery", async || !billing.seen().is_empty()).await;
    let first = billing.seen()[0].clone();
    assert_eq!(first["body"], "order 7", "{spec}");
    assert_eq!(first["headers"]["ce-source"], "orders");
    assert_eq!(first["headers"]["ieum-attempt"], "1");
    let tp = first["headers"]["traceparent"].as_str().unwrap();
    assert_eq!(
        tp.split('-').nth(1),
        TRACE.split('-').nth(1),
        "the trace continues"
    );
    sdk_parsed(&first);

    // SIGKILL while the app is still working on it: nothing was acknowledged.
    let log = billing.log.clone();
    billing.kill();
    std::fs::remove_file(&log).unwrap();
    let billing = run(base, dir, "billing", "-", "0");
    wait_for("the redelivery", async || !billing.seen().is_empty()).await;
    let again = billing.seen()[0].clone();
    assert_eq!(again["body"], "order 7", "{spec}");
    assert_eq!(
        again["headers"]["ce-id"], first["headers"]["ce-id"],
        "{spec}"
    );
    if attempts_survive {
        let attempt: u32 = again["headers"]["ieum-attempt"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(attempt >= 2, "{spec}: {again}");
    }
    // Acknowledged this time: not delivered a third time.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(billing.seen().len(), 1, "{spec}: {:?}", billing.seen());
    (orders, bus, topic)
}
