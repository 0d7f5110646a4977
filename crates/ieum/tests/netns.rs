//! Two sidecars on different addresses, in two network namespaces joined by a veth pair,
//! reach each other; the server runs off loopback, so everything also goes through the
//! token. Needs root (`ip netns`): runs when `IEUM_TEST_NETNS=1` (set by `.ci/run`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const A: &str = "ieumt-a";
const B: &str = "ieumt-b";

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

struct Namespaces;

impl Namespaces {
    fn create() -> Namespaces {
        Namespaces::remove();
        for (args, what) in [
            (vec!["netns", "add", A], "add namespace a"),
            (vec!["netns", "add", B], "add namespace b"),
            (
                vec![
                    "link", "add", "ieumt-va", "type", "veth", "peer", "name", "ieumt-vb",
                ],
                "add veth",
            ),
            (vec!["link", "set", "ieumt-va", "netns", A], "move veth a"),
            (vec!["link", "set", "ieumt-vb", "netns", B], "move veth b"),
            (
                vec!["-n", A, "addr", "add", "10.77.0.1/24", "dev", "ieumt-va"],
                "address a",
            ),
            (
                vec!["-n", B, "addr", "add", "10.77.0.2/24", "dev", "ieumt-vb"],
                "address b",
            ),
            (vec!["-n", A, "link", "set", "ieumt-va", "up"], "up a"),
            (vec!["-n", B, "link", "set", "ieumt-vb", "up"], "up b"),
            (vec!["-n", A, "link", "set", "lo", "up"], "lo a"),
            (vec!["-n", B, "link", "set", "lo", "up"], "lo b"),
        ] {
            assert!(
                ip(&args),
                "ip {}: cannot {what} (needs root)",
                args.join(" ")
            );
        }
        Namespaces
    }

    fn remove() {
        ip(&["netns", "del", A]);
        ip(&["netns", "del", B]);
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        Namespaces::remove();
    }
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        support::kill_tree(&mut self.0);
    }
}

#[allow(clippy::zombie_processes, reason = "reaped by Proc's Drop")]
fn in_ns(ns: &str, args: &[&str], env: &[(&str, &str)]) -> Child {
    Command::new("ip")
        .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_ieum")])
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .env_remove("IEUM_SERVER")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn sidecars_in_two_namespaces_reach_each_other() {
    if std::env::var("IEUM_TEST_NETNS").as_deref() != Ok("1") {
        eprintln!("IEUM_TEST_NETNS not set: network-namespace test skipped (needs root)");
        return;
    }
    let _ns = Namespaces::create();
    let dir = tempfile::tempdir().unwrap();
    let data = |n: &str| dir.path().join(n).display().to_string();

    // The server in namespace a, off loopback: writes need the token it creates.
    let mut server = in_ns(
        A,
        &[
            "server",
            "--listen",
            "10.77.0.1:7700",
            "--data-dir",
            &data("server"),
        ],
        &[],
    );
    let mut lines = BufReader::new(server.stderr.take().unwrap()).lines();
    loop {
        let line = lines.next().expect("server banner").unwrap();
        if line.trim().starts_with("listening") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let _server = Proc(server);
    let token = std::fs::read_to_string(dir.path().join("server/admin.token"))
        .unwrap()
        .trim()
        .to_owned();
    // Beyond loopback the API is HTTPS: each sidecar gets a join token from
    // `ieum token create` (run with the admin token, verifying the server with its CA
    // file), which pins the server's CA; the sidecars have no CA file.
    let ca_file = data("server/ca/ca.pem");
    let join = |name: &str, service: &str| -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", A, env!("CARGO_BIN_EXE_ieum")])
            .args([
                "token",
                "create",
                name,
                "--role",
                "sidecar",
                "--service",
                service,
            ])
            .env("IEUM_SERVER", "https://10.77.0.1:7700")
            .env("IEUM_TOKEN", &token)
            .env("IEUM_CA_FILE", &ca_file)
            .output()
            .unwrap();
        let printed = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(
            out.status.success() && printed.starts_with("ieum1."),
            "token create: {printed} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        printed
    };
    let echo_token = join("echo-1", "echo");
    let caller_token = join("caller-1", "caller");
    let env = [("IEUM_TOKEN", echo_token.as_str())];

    // echo in namespace b, reachable at 10.77.0.2:7711.
    let echo = in_ns(
        B,
        &[
            "run",
            "--service",
            "echo",
            "--app-port",
            "8001",
            "--server",
            "https://10.77.0.1:7700",
            "--data-dir",
            &data("b"),
            "--inbound",
            "10.77.0.2:7711",
            "--",
            "python3",
            "-m",
            "http.server",
            "8001",
            "--bind",
            "127.0.0.1",
        ],
        &env,
    );
    let _echo = Proc(echo);

    // The caller in namespace a: plain urllib through its sidecar to http://echo/.
    let out = dir.path().join("result");
    let script = format!(
        "import urllib.request, time, http.server\n\
for _ in range(150):\n    try:\n        r = urllib.request.urlopen('http://echo/', timeout=2)\n        open({out:?}, 'w').write(str(r.status))\n        break\n    except Exception:\n        time.sleep(0.2)\n\
http.server.HTTPServer(('127.0.0.1', 8002), http.server.BaseHTTPRequestHandler).serve_forever()\n",
        out = out.display().to_string()
    );
    let caller = in_ns(
        A,
        &[
            "run",
            "--service",
            "caller",
            "--app-port",
            "8002",
            "--server",
            "https://10.77.0.1:7700",
            "--data-dir",
            &data("a"),
            "--inbound",
            "10.77.0.1:7711",
            "--",
            "python3",
            "-c",
            &script,
        ],
        &[("IEUM_TOKEN", caller_token.as_str())],
    );
    let _caller = Proc(caller);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while !out.exists() || std::fs::read_to_string(&out).unwrap().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the caller never reached echo across namespaces"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "200");
    // And the call really crossed namespaces: echo is registered at namespace b's address.
    let view = Command::new("ip")
        .args([
            "netns",
            "exec",
            A,
            "curl",
            "-sf",
            "--cacert",
            &ca_file,
            "https://10.77.0.1:7700/v1/services/echo",
        ])
        .output()
        .unwrap();
    let view: serde_json::Value = serde_json::from_slice(&view.stdout).unwrap();
    assert_eq!(view["instances"][0]["address"], "10.77.0.2");
    assert_eq!(view["instances"][0]["port"], 7711);
}
