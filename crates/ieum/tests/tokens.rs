//! API tokens end to end: the real `ieum server` with `--require-tokens`, and
//! `ieum token create|list|revoke` as a user runs them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

struct Server {
    child: Child,
    base: String,
    /// What it printed before its banner.
    early: Vec<String>,
    logs: mpsc::Receiver<String>,
}

impl Server {
    #[allow(
        clippy::zombie_processes,
        reason = "the child is reaped by Server's Drop"
    )]
    fn start(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ieum"))
            .arg("server")
            .args(args)
            .env("RUST_LOG", "info")
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
                    early: seen,
                    logs: rx,
                };
            }
            seen.push(line);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `ieum ARGS` against `server` with `IEUM_TOKEN=token`: (exit code, stdout, stderr).
fn ieum(server: &Server, token: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ieum"));
    cmd.args(args)
        .env("IEUM_SERVER", &server.base)
        .env_remove("IEUM_TOKEN");
    if let Some(t) = token {
        cmd.env("IEUM_TOKEN", t);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `ieum token create …`: the secret, checked to be all that is on stdout.
fn create(server: &Server, admin: &str, args: &[&str]) -> String {
    let mut all = vec!["token", "create"];
    all.extend_from_slice(args);
    let (code, out, err) = ieum(server, Some(admin), &all);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("created token"), "{err}");
    let printed = out.strip_suffix('\n').expect("one line");
    assert!(
        !printed.contains('\n'),
        "only the secret on stdout: {out:?}"
    );
    // Sidecar and gateway tokens are join tokens, `ieum1.<CA sha256>.<secret>`; the server
    // accepts the whole of it as the bearer token.
    let secret = match printed.strip_prefix("ieum1.") {
        Some(rest) => {
            let (hash, secret) = rest.split_once('.').expect("ieum1.<hash>.<secret>");
            assert_eq!(hash.len(), 64, "{out:?}");
            assert!(!err.contains(secret), "the secret is only on stdout");
            return printed.to_owned();
        }
        None => printed,
    };
    assert_eq!(secret.len(), 43, "{out:?}");
    assert!(
        secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "{out:?}"
    );
    assert!(!err.contains(secret), "the secret is only on stdout");
    secret.to_owned()
}

const SHOP: &str = "apiVersion: ieum.dev/v1\nkind: Service\nmetadata: {name: orders}\nspec: {description: Takes orders}\n";

#[tokio::test]
async fn tokens_are_created_used_listed_and_revoked_with_the_cli() {
    let db = ieum_store::testing::TestDb::sqlite();
    let dir = db.dir().unwrap();
    // A data dir from before tokens: only its admin token. The server registers it.
    let admin = "0123456789abcdef".repeat(4);
    std::fs::write(dir.join("admin.token"), format!("{admin}\n")).unwrap();
    let server = Server::start(&[
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &dir.display().to_string(),
        "--require-tokens",
    ]);

    let ci = create(&server, &admin, &["ci", "--role", "operator"]);
    let reader = create(&server, &admin, &["ro", "--role", "reader", "--ttl", "24h"]);
    let sidecar = create(
        &server,
        &admin,
        &["orders-sidecar", "--role", "sidecar", "--service", "orders"],
    );
    // Usage errors are caught before the server.
    let (code, _, err) = ieum(
        &server,
        Some(&admin),
        &["token", "create", "x", "--role", "root"],
    );
    assert_eq!(code, 2, "{err}");
    // The server's refusals keep their codes.
    let (code, _, err) = ieum(
        &server,
        Some(&admin),
        &["token", "create", "y", "--role", "sidecar"],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("E1018") && err.contains("service"), "{err}");
    // Only an admin manages tokens.
    let (code, _, err) = ieum(
        &server,
        Some(&ci),
        &["token", "create", "z", "--role", "admin"],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("E1015"), "{err}");

    // The operator applies; the reader cannot; without a token, nobody can.
    let file = dir.join("shop.yaml");
    std::fs::write(&file, SHOP).unwrap();
    let f = file.display().to_string();
    let (code, _, err) = ieum(&server, Some(&reader), &["apply", "-f", &f]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("E1015"), "{err}");
    let (code, _, err) = ieum(&server, None, &["apply", "-f", &f]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("E1010"), "{err}");
    let (code, _, err) = ieum(&server, Some(&ci), &["apply", "-f", &f]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = ieum(
        &server,
        None,
        &["history", "service", "orders", "-o", "json"],
    );
    assert_eq!(code, 0, "{err}");
    let history: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(history[0]["author"], "ci", "{out}");

    // The sidecar token registers its own service's instance, not another's.
    let http = {
        // reqwest asks for a rustls provider even for plain HTTP: ring, as in ieum.
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder()
    }
    .no_proxy()
    .build()
    .unwrap();
    let body = json!({"id": "o1", "address": "127.0.0.1", "port": 8080});
    let r = http
        .post(format!("{}/v1/services/orders/instances", server.base))
        .bearer_auth(&sidecar)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = http
        .post(format!("{}/v1/services/stock/instances", server.base))
        .bearer_auth(&sidecar)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let refused: Value = r.json().await.unwrap();
    assert_eq!(refused["error"]["code"], "E1016");

    // The list has every token and no secret.
    let (code, out, err) = ieum(&server, Some(&admin), &["token", "list"]);
    assert_eq!(code, 0, "{err}");
    for name in ["admin", "ci", "ro", "orders-sidecar"] {
        assert!(out.contains(name), "{out}");
    }
    let (code, json_out, _) = ieum(&server, Some(&admin), &["token", "list", "-o", "json"]);
    assert_eq!(code, 0);
    for secret in [admin.as_str(), &ci, &reader, &sidecar] {
        assert!(!out.contains(secret) && !json_out.contains(secret));
    }
    let list: Value = serde_json::from_str(&json_out).unwrap();
    assert_eq!(list[0]["name"], "admin");
    assert_eq!(list[0]["createdBy"], "ieum");

    // Revoked: refused from then on.
    let (code, out, err) = ieum(&server, Some(&admin), &["token", "revoke", "ci"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("revoked"), "{out}");
    let (code, _, err) = ieum(&server, Some(&ci), &["apply", "-f", &f]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("E1014"), "{err}");

    let mut logs = server.early.clone();
    logs.extend(server.logs.try_iter());
    for secret in [admin.as_str(), &ci, &reader, &sidecar] {
        assert!(
            logs.iter().all(|l| !l.contains(secret)),
            "a secret was logged"
        );
    }
    assert!(
        logs.iter().any(|l| l.contains("as the API token `admin`")),
        "{logs:#?}"
    );
    drop(server);
    assert_token_file_kept(dir, &admin);
}

fn assert_token_file_kept(dir: &Path, admin: &str) {
    let kept = std::fs::read_to_string(dir.join("admin.token")).unwrap();
    assert_eq!(kept.trim(), admin, "the admin token file is left as it was");
}

const CONSUMER: &str = "apiVersion: ieum.dev/v1\nkind: Api\nmetadata: {name: shop}\nspec: {basePath: /shop, backend: {service: orders}, auth: {apiKey: {}}}\n---\napiVersion: ieum.dev/v1\nkind: ApiConsumer\nmetadata: {name: mobile-app}\nspec: {apis: [shop]}\n";

#[test]
fn api_keys_are_created_listed_and_revoked_with_the_cli() {
    let db = ieum_store::testing::TestDb::sqlite();
    let dir = db.dir().unwrap();
    let admin = "fedcba9876543210".repeat(4);
    std::fs::write(dir.join("admin.token"), format!("{admin}\n")).unwrap();
    let server = Server::start(&[
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &dir.display().to_string(),
        "--require-tokens",
    ]);
    let ops = create(&server, &admin, &["ops", "--role", "operator"]);
    let file = dir.join("consumer.yaml");
    std::fs::write(&file, CONSUMER).unwrap();
    let (code, _, err) = ieum(
        &server,
        Some(&ops),
        &["apply", "-f", &file.display().to_string()],
    );
    assert_eq!(code, 0, "{err}");

    let (code, _, err) = ieum(&server, Some(&ops), &["apikey", "create", "web"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("E3405"), "{err}");
    // The key alone on stdout; its id on stderr.
    let (code, out, err) = ieum(&server, Some(&ops), &["apikey", "create", "mobile-app"]);
    assert_eq!(code, 0, "{err}");
    let key = out.strip_suffix('\n').expect("one line");
    assert!(key.starts_with("ieumk_") && key.len() == 49, "{out:?}");
    assert!(!err.contains(key), "{err}");
    let id = err.split('`').nth(1).expect("the id on stderr").to_owned();
    assert!(id.starts_with("mobile-app-"), "{err}");

    let (code, out, err) = ieum(
        &server,
        Some(&ops),
        &["apikey", "list", "--consumer", "mobile-app"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&id) && out.contains(&key[..12]), "{out}");
    assert!(!out.contains(key), "{out}");

    // A key cannot come from a file.
    let forged = dir.join("key.yaml");
    std::fs::write(
        &forged,
        format!("apiVersion: ieum.dev/v1\nkind: ApiKey\nmetadata: {{name: {id}}}\nspec: {{consumer: mobile-app, sha256: {}, prefix: x}}\n", "0".repeat(64)),
    )
    .unwrap();
    let (code, _, err) = ieum(
        &server,
        Some(&ops),
        &["apply", "-f", &forged.display().to_string()],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("E3406") && err.contains("ieum apikey create"),
        "{err}"
    );

    let (code, out, err) = ieum(&server, Some(&ops), &["apikey", "revoke", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("revoked"), "{out}");
    let (code, out, _) = ieum(&server, Some(&ops), &["apikey", "list", "-o", "json"]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "[]");

    let logs: Vec<String> = server
        .early
        .iter()
        .cloned()
        .chain(server.logs.try_iter())
        .collect();
    assert!(logs.iter().all(|l| !l.contains(key)), "the key was logged");
}
