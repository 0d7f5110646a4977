//! End-to-end: the real `ieum` binary as a separate process, killed with SIGKILL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use ieum_store::testing::TestDb;
use serde_json::{Value, json};

struct Server {
    child: Child,
    base: String,
    logs: mpsc::Receiver<String>,
}

impl Server {
    /// Starts `ieum server ARGS` and waits for its banner.
    #[allow(
        clippy::zombie_processes,
        reason = "the child is reaped by Server's Drop"
    )]
    fn start(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ieum"))
            .arg("server")
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
                let addr = addr
                    .split_whitespace()
                    .next()
                    .expect("an address")
                    .to_owned();
                let base = format!("http://{}", addr.replace("0.0.0.0", "127.0.0.1"));
                return Server {
                    child,
                    base,
                    logs: rx,
                };
            }
            seen.push(line);
        }
    }

    fn kill_9(mut self) {
        self.child.kill().expect("SIGKILL the server");
        self.child.wait().expect("reap the server");
    }

    fn logs(&self) -> Vec<String> {
        self.logs.try_iter().collect()
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
    .build()
    .unwrap()
}

async fn acknowledged_writes_survive_kill_9(store_args: Vec<String>) {
    let args: Vec<&str> = store_args.iter().map(String::as_str).collect();
    let server = Server::start(&args);
    let c = http();
    let spec = json!({"description": "Takes orders", "sla": {"availability": 99.9}});
    let r = c
        .put(format!("{}/v1/services/orders", server.base))
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    for i in 0..60 {
        let body =
            json!({"id": format!("i{i}"), "address": "10.0.0.1", "port": 8000 + i, "zone": "eu-1"});
        let r = c
            .post(format!("{}/v1/services/orders/instances", server.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    }
    let r = c
        .put(format!(
            "{}/v1/services/orders/instances/i7/state",
            server.base
        ))
        .json(&json!({"state": "draining"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // No pause, no graceful shutdown: SIGKILL right after the last acknowledgement.
    server.kill_9();

    let server = Server::start(&args);
    let view: Value = c
        .get(format!("{}/v1/services/orders", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["spec"]["description"], "Takes orders");
    let instances = view["instances"].as_array().unwrap();
    assert_eq!(
        instances.len(),
        60,
        "every acknowledged registration survived"
    );
    let i7 = instances.iter().find(|i| i["id"] == "i7").unwrap();
    assert_eq!(i7["state"], "draining");
    assert!(
        instances
            .iter()
            .filter(|i| i["id"] != "i7")
            .all(|i| i["state"] == "up"),
        "restored leases get grace"
    );
    let events: Value = c
        .get(format!(
            "{}/v1/events?service=orders&kind=instance.registered&limit=1000",
            server.base
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(events.as_array().unwrap().len(), 60);
    let started: Value = c
        .get(format!("{}/v1/events?kind=registry.started", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        started[0]["message"],
        "started; restored 60 instances of 1 services"
    );
}

#[tokio::test]
async fn sqlite_survives_kill_9() {
    let db = TestDb::sqlite();
    let dir = db.dir().unwrap().display().to_string();
    acknowledged_writes_survive_kill_9(vec![
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--data-dir".into(),
        dir,
    ])
    .await;
}

#[tokio::test]
async fn postgres_survives_kill_9() {
    let Some(db) = TestDb::postgres().await else {
        eprintln!("IEUM_TEST_POSTGRES_URL not set: PostgreSQL run skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    acknowledged_writes_survive_kill_9(vec![
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--data-dir".into(),
        dir.path().display().to_string(),
        "--store".into(),
        db.url.clone(),
    ])
    .await;
    db.cleanup().await;
}

fn cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ieum"))
        .args(args)
        .env_remove("IEUM_SERVER")
        .env_remove("IEUM_TOKEN")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn cli_exit_codes_and_outputs() {
    let db = TestDb::sqlite();
    let server = Server::start(&[
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &db.dir().unwrap().display().to_string(),
    ]);
    let s = server.base.as_str();

    let (code, _, err) = cli(&["get", "services", "--server", "http://127.0.0.1:1"], &[]);
    assert_eq!(code, 3, "unreachable: {err}");
    assert!(err.contains("cannot reach the ieum server"), "{err}");
    let (code, _, err) = cli(&["get", "widgets", "--server", s], &[]);
    assert_eq!(code, 2, "usage: {err}");
    let (code, _, _) = cli(&["get"], &[]);
    assert_eq!(code, 2, "clap usage error");
    let (code, _, err) = cli(&["describe", "service", "nope", "--server", s], &[]);
    assert_eq!(code, 1, "rejected: {err}");
    assert!(err.contains("E1404"), "{err}");

    let c = http();
    let body =
        json!({"id": "o1", "address": "127.0.0.1", "port": 8080, "zone": "eu-1", "version": "v3"});
    c.post(format!("{s}/v1/services/orders/instances"))
        .json(&body)
        .send()
        .await
        .unwrap();

    let (code, out, _) = cli(&["get", "services", "-o", "json"], &[("IEUM_SERVER", s)]);
    assert_eq!(code, 0);
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list[0]["name"], "orders");
    let (code, out, _) = cli(&["GET", "Services", "--server", s], &[]);
    assert_eq!(code, 2, "subcommands are lowercase; kinds are not: {out}");
    let (code, out, _) = cli(&["get", "Service", "orders", "--server", s], &[]);
    assert_eq!(code, 0);
    assert!(out.lines().next().unwrap().starts_with("ID"), "{out}");
    assert!(
        out.contains("o1") && out.contains("eu-1") && out.contains("v3"),
        "{out}"
    );
    let (code, out, _) = cli(&["describe", "service", "orders", "--server", s], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("instance.registered"), "{out}");
    assert!(out.contains("1 up"), "{out}");
    let (code, out, _) = cli(&["events", "orders", "-o", "yaml", "--server", s], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("kind: instance.registered"), "{out}");
    drop(server);
}

#[tokio::test]
async fn off_loopback_the_server_makes_a_token_and_requires_it() {
    let db = TestDb::sqlite();
    let dir = db.dir().unwrap().to_owned();
    let server = Server::start(&[
        "--listen",
        "0.0.0.0:0",
        "--data-dir",
        &dir.display().to_string(),
    ]);
    let token_file = dir.join("admin.token");
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_owned();
    assert_eq!(token.len(), 64);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    // Beyond loopback the API is HTTPS, with a certificate of the server's CA (which
    // names 127.0.0.1 among its addresses).
    let port = server.base.rsplit(':').next().unwrap().to_owned();
    let base = format!("https://127.0.0.1:{port}");
    let ca_file = dir.join("ca").join("ca.pem");
    let mut tls = (*ieum_identity::ServerTrust::from_ca_file(&ca_file)
        .unwrap()
        .client_config()
        .unwrap())
    .clone();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let _ = http();
    let c = reqwest::Client::builder()
        .no_proxy()
        .tls_backend_preconfigured(tls)
        .build()
        .unwrap();
    assert!(
        c.get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .map(|r| !r.status().is_success())
            .unwrap_or(true),
        "plain HTTP is not served beyond loopback"
    );
    let body = json!({"address": "10.0.0.1", "port": 80});
    let r = c
        .post(format!("{base}/v1/services/orders/instances"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .post(format!("{base}/v1/services/orders/instances"))
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let (code, out, err) = cli(
        &["get", "services", "--server", &base],
        &[
            ("IEUM_TOKEN", &token),
            ("IEUM_CA_FILE", &ca_file.display().to_string()),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("orders"));
    assert!(
        server.logs().iter().all(|l| !l.contains(&token)),
        "the token is never logged"
    );
}

#[tokio::test]
async fn configuration_commands_apply_validate_diff_and_show_history() {
    let db = TestDb::sqlite();
    let server = Server::start(&[
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &db.dir().unwrap().display().to_string(),
    ]);
    let s = server.base.as_str();
    let dir = tempfile::tempdir().unwrap();
    let shop = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/shop.yaml");

    let (code, out, err) = cli(&["validate", "-f", shop], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "5 resources valid\n");

    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: ieum.dev/v1\nkind: Route\nmetadata: {name: checkout}\nspec:\n  service: orders\n  rules:\n  - {}\n  - retry: {attempts: 11}\n",
    )
    .unwrap();
    let (code, _, err) = cli(&["validate", "-f", bad.to_str().unwrap()], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("E2104 Route/checkout spec.rules[1].retry.attempts: must be at most 10"),
        "{err}"
    );
    let (code, _, err) = cli(&["apply", "-f", bad.to_str().unwrap(), "--server", s], &[]);
    assert_eq!(
        code, 1,
        "invalid files are refused before reaching the server: {err}"
    );

    let (code, out, err) = cli(&["apply", "-f", shop, "--server", s], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("Route/orders-api created (revision 1)"),
        "{out}"
    );

    let changed = dir.path().join("shop.yaml");
    std::fs::write(
        &changed,
        std::fs::read_to_string(shop)
            .unwrap()
            .replace("request: 2s", "request: 4s"),
    )
    .unwrap();
    let (code, out, _) = cli(
        &["diff", "-f", dir.path().to_str().unwrap(), "--server", s],
        &[],
    );
    assert_eq!(code, 1, "bad.yaml is in the folder too: {out}");
    std::fs::remove_file(&bad).unwrap();
    let (code, out, err) = cli(
        &["diff", "-f", dir.path().to_str().unwrap(), "--server", s],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "Route/orders-api (configured)\n  ~ spec.rules[1].timeouts.request: \"2s\" -> \"4s\"\n"
    );
    let (code, out, _) = cli(
        &["apply", "-f", changed.to_str().unwrap(), "--server", s],
        &[],
    );
    assert_eq!(code, 0);
    assert!(
        out.contains("Route/orders-api configured (revision 2)"),
        "{out}"
    );

    let (code, out, _) = cli(&["history", "Routes", "orders-api", "--server", s], &[]);
    assert_eq!(code, 0);
    assert!(
        out.contains("revision 1 by local") && out.contains("  created"),
        "{out}"
    );
    assert!(
        out.contains("revision 2 by local") && out.contains("~ spec.rules[1].timeouts.request"),
        "{out}"
    );
    let (code, out, _) = cli(
        &["get", "route", "orders-api", "-o", "json", "--server", s],
        &[],
    );
    assert_eq!(code, 0);
    let route: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(route["metadata"]["revision"], 2);
    let (code, out, _) = cli(
        &[
            "events",
            "orders",
            "--kind",
            "config.changed",
            "--server",
            s,
        ],
        &[],
    );
    assert_eq!(code, 0);
    assert!(
        out.contains("Route/orders-api changed by local (revision 2)"),
        "{out}"
    );
    let (code, out, _) = cli(
        &["delete", "faultinjection", "orders-chaos", "--server", s],
        &[],
    );
    assert_eq!(
        (code, out.as_str()),
        (0, "FaultInjection/orders-chaos deleted (revision 2)\n")
    );
    let (code, _, err) = cli(&["get", "gizmos", "--server", s], &[]);
    assert_eq!(code, 2, "{err}");
    let (code, out, _) = cli(&["schema", "route"], &[]);
    assert_eq!(code, 0);
    let schema: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(schema["properties"]["kind"]["const"], "Route");
}

#[tokio::test]
async fn the_client_library_rides_out_a_server_kill_and_restart() {
    let db = TestDb::sqlite();
    let data = db.dir().unwrap().display().to_string();
    let server = Server::start(&["--listen", "127.0.0.1:0", "--data-dir", &data]);
    let base = server.base.clone();
    // A new client per call: a pooled connection to the killed server would fail the first
    // request after the restart.
    let register = |id: &'static str| {
        let c = http();
        let base = base.clone();
        async move {
            let body = json!({"id": id, "address": "10.0.0.1", "port": 80, "ttl": "1h"});
            let r = c
                .post(format!("{base}/v1/services/stock/instances"))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
        }
    };
    register("s1").await;
    let snapshot_dir = tempfile::tempdir().unwrap();
    let client = ieum_client::Client::start(ieum_client::Options {
        server: base.clone(),
        client: "e2e".into(),
        service: None,
        calls: vec!["stock".into()],
        gateway: None,
        snapshot_file: Some(snapshot_dir.path().join("snapshot.json")),
        token: None,
        tls: None,
    });
    let mut changes = client.changes();
    let wait = std::time::Duration::from_secs(10);
    tokio::time::timeout(wait, changes.wait_for(|s| s.up("stock").len() == 1))
        .await
        .unwrap()
        .unwrap();

    server.kill_9();
    tokio::time::timeout(wait, async {
        while client.connected() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(
        client.snapshot().up("stock").len(),
        1,
        "static stability: last endpoints stay"
    );

    let addr = base.trim_start_matches("http://").to_owned();
    let server = Server::start(&["--listen", &addr, "--data-dir", &data]);
    register("s2").await;
    assert!(
        client
            .wait_connected(std::time::Duration::from_secs(20))
            .await,
        "{:?}",
        client.last_error()
    );
    tokio::time::timeout(wait, changes.wait_for(|s| s.up("stock").len() == 2))
        .await
        .unwrap()
        .unwrap();
    client.shutdown().await;
    drop(server);
}
