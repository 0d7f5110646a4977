//! The server's API over HTTPS (`ieum server --tls`, as beyond loopback) and bootstrap
//! trust: the CLI verifies the server with `IEUM_CA_FILE` or the CA a join token pins,
//! and refuses a server it cannot verify before sending anything.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

struct Server {
    child: Child,
    base: String,
    banner: Vec<String>,
}

impl Server {
    #[allow(
        clippy::zombie_processes,
        reason = "the child is reaped by Server's Drop"
    )]
    fn start(data: &std::path::Path) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ieum"))
            .arg("server")
            .args(["--listen", "127.0.0.1:0", "--tls", "--require-tokens"])
            .arg("--data-dir")
            .arg(data)
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
        let mut banner = Vec::new();
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("no banner; saw {banner:#?}"));
            banner.push(line.clone());
            if line.trim().starts_with("try:") {
                break;
            }
        }
        let addr = banner
            .iter()
            .find_map(|l| l.trim().strip_prefix("listening"))
            .and_then(|a| a.split_whitespace().next())
            .expect("a listen address")
            .to_owned();
        Server {
            child,
            base: format!("https://{addr}"),
            banner,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `ieum ARGS` against `server`: (exit code, stdout, stderr).
fn ieum(
    server: &Server,
    token: Option<&str>,
    ca_file: Option<&std::path::Path>,
    args: &[&str],
) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ieum"));
    cmd.args(args)
        .env("IEUM_SERVER", &server.base)
        .env_remove("IEUM_TOKEN")
        .env_remove("IEUM_CA_FILE");
    if let Some(t) = token {
        cmd.env("IEUM_TOKEN", t);
    }
    if let Some(f) = ca_file {
        cmd.env("IEUM_CA_FILE", f);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_cli_pins_the_ca_of_an_https_server() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path());
    let ca_file = data.path().join("ca").join("ca.pem");
    let admin = std::fs::read_to_string(data.path().join("admin.token")).unwrap();
    let admin = admin.trim();
    let banner = server.banner.join("\n");
    assert!(banner.contains("https://"), "{banner}");
    let pin = banner
        .split("sha256:")
        .nth(1)
        .map(|s| s.chars().take(64).collect::<String>())
        .expect("the banner prints the CA's fingerprint");
    assert_eq!(pin.len(), 64, "{banner}");

    // With the CA file, the CLI verifies the server and works.
    let (code, _, err) = ieum(&server, Some(admin), Some(&ca_file), &["get", "services"]);
    assert_eq!(code, 0, "{err}");

    // With nothing to verify the server, it refuses, saying what to set.
    let (code, _, err) = ieum(&server, Some(admin), None, &["get", "services"]);
    assert_ne!(code, 0);
    assert!(err.contains("IEUM_CA_FILE"), "{err}");

    // A sidecar token is a join token that pins this server's CA.
    let (code, join, err) = ieum(
        &server,
        Some(admin),
        Some(&ca_file),
        &[
            "token",
            "create",
            "orders-1",
            "--role",
            "sidecar",
            "--service",
            "orders",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let join = join.trim().to_owned();
    assert!(join.starts_with(&format!("ieum1.{pin}.")), "{join}");

    // The join token alone (no CA file) verifies the server and authenticates.
    let (code, _, err) = ieum(&server, Some(&join), None, &["get", "services"]);
    assert_eq!(code, 0, "{err}");
    let secret = join.rsplit('.').next().unwrap();
    let (code, _, err) = ieum(&server, Some(secret), Some(&ca_file), &["get", "services"]);
    assert_eq!(code, 0, "the bare secret is accepted too: {err}");

    // A join token pinning another CA: the TLS handshake fails, nothing is sent.
    let other = format!("ieum1.{}.{secret}", "ab".repeat(32));
    let (code, _, err) = ieum(&server, Some(&other), None, &["get", "services"]);
    assert_ne!(code, 0);
    assert!(err.contains("pinned by the join token"), "{err}");

    // The server refuses a join token naming another CA (over a verified connection).
    let (code, _, err) = ieum(&server, Some(&other), Some(&ca_file), &["get", "services"]);
    assert_ne!(code, 0);
    assert!(err.contains("E1022"), "{err}");
}
