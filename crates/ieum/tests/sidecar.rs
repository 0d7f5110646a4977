//! `ieum run` as a real process: snapshot wait, the app's environment, registration with
//! the inbound address, drain on SIGTERM, and crashes recorded with their exit code.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ieum_store::testing::TestDb;
use serde_json::Value;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `ieum server` on a free port; returns it with its base URL.
#[allow(clippy::zombie_processes, reason = "reaped by Proc's Drop")]
fn server(data: &str) -> (Proc, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ieum"))
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir", data])
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

#[allow(clippy::zombie_processes, reason = "reaped by the caller")]
fn run(server: &str, data: &str, service: &str, app_port: u16, app: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_ieum"))
        .args([
            "run",
            "--service",
            service,
            "--app-port",
            &app_port.to_string(),
            "--server",
            server,
            "--data-dir",
            data,
        ])
        .args([
            "--outbound",
            "127.0.0.1:0",
            "--inbound",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--ttl",
            "3s",
        ])
        .arg("--")
        .args(app)
        .env("RUST_LOG", "warn")
        .env_remove("IEUM_SERVER")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

async fn get(url: &str) -> Value {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn wait_for(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn wait_exit(child: &mut Child) -> (i32, String) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                std::io::Read::read_to_string(&mut e, &mut err).unwrap();
            }
            return (status.code().unwrap_or(-1), err);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ieum run did not exit"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn without_a_snapshot_run_exits_3_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ieum"))
        .args([
            "run",
            "--service",
            "a",
            "--app-port",
            "1",
            "--server",
            "http://127.0.0.1:1",
            "--data-dir",
            &data,
        ])
        .args(["--snapshot-wait", "1s", "--", "sleep", "30"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (code, err) = wait_exit(&mut child);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("no configuration snapshot from http://127.0.0.1:1 within 1s"),
        "{err}"
    );
}

#[tokio::test]
async fn run_prepares_the_app_registers_it_and_drains_on_sigterm() {
    let db = TestDb::sqlite();
    let data = db.dir().unwrap().display().to_string();
    let (_server, base) = server(&data);
    let port = free_port();
    let env_file = db.dir().unwrap().join("app.env");
    let script = format!(
        "import os, json, http.server\n\
         json.dump(dict(os.environ), open({env:?}, 'w'))\n\
         http.server.ThreadingHTTPServer(('127.0.0.1', {port}), http.server.SimpleHTTPRequestHandler).serve_forever()\n",
        env = env_file.display().to_string()
    );
    let mut child = run(&base, &data, "web", port, &["python3", "-c", &script]);

    let url = format!("{base}/v1/services/web");
    wait_for("the registration", async || {
        get(&url).await["instances"][0]["state"] == "up"
    })
    .await;
    let view = get(&url).await;
    let inst = &view["instances"][0];
    assert_eq!(inst["metadata"]["appPort"], port.to_string());
    assert_ne!(
        inst["port"], port,
        "others reach the inbound listener, not the app"
    );
    assert_eq!(inst["address"], "127.0.0.1");

    let env: Value = serde_json::from_str(&std::fs::read_to_string(&env_file).unwrap()).unwrap();
    let outbound = env["IEUM_OUTBOUND"].as_str().unwrap();
    assert!(outbound.starts_with("http://127.0.0.1:"), "{outbound}");
    assert_eq!(env["HTTP_PROXY"], outbound);
    assert_eq!(env["http_proxy"], outbound);
    assert_eq!(env["NO_PROXY"], "localhost,127.0.0.1,::1");
    assert_eq!(env["NODE_USE_ENV_PROXY"], "1");
    assert!(
        env["JAVA_TOOL_OPTIONS"]
            .as_str()
            .unwrap()
            .contains("-Dhttp.proxyHost=127.0.0.1")
    );

    // Through the inbound listener to the app.
    let inbound = format!(
        "http://{}:{}/",
        inst["address"].as_str().unwrap(),
        inst["port"]
    );
    let resp = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(&inbound)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let (code, err) = wait_exit(&mut child);
    assert_eq!(code, 128 + 15, "the app's code after SIGTERM: {err}");
    let events = get(&format!("{base}/v1/services/web/events?order=oldest")).await;
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds[kinds.len() - 2..],
        ["instance.draining", "instance.deregistered"],
        "{kinds:?}"
    );
}

#[tokio::test]
async fn an_app_that_crashes_leaves_a_down_event_with_its_exit_code() {
    let db = TestDb::sqlite();
    let data = db.dir().unwrap().display().to_string();
    let (_server, base) = server(&data);
    let port = free_port();
    let script = format!(
        "import socket, sys, time\ns = socket.socket()\ns.bind(('127.0.0.1', {port}))\ns.listen()\ntime.sleep(2)\nsys.exit(7)\n"
    );
    let mut child = run(&base, &data, "crashy", port, &["python3", "-c", &script]);
    let (code, err) = wait_exit(&mut child);
    assert_eq!(code, 7, "ieum run exits with the app's code: {err}");
    let events = get(&format!("{base}/v1/services/crashy/events?order=oldest")).await;
    let down = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "instance.down")
        .expect("a down event");
    assert!(
        down["message"]
            .as_str()
            .unwrap()
            .ends_with("app exited with code 7"),
        "{down}"
    );
    assert_eq!(
        events.as_array().unwrap().last().unwrap()["kind"],
        "instance.deregistered"
    );
}

/// Starts `echo` (Python's http.server) under `ieum run`, and a caller app whose client code
/// knows nothing of the mesh; returns what the caller wrote to `out`.
async fn call_through_the_mesh(caller: &[&str], out: &std::path::Path) -> String {
    call_and_check(caller, out, async |_| {}).await
}

/// As `call_through_the_mesh`, then runs `then` with the server's base URL while both
/// sidecars still run.
async fn call_and_check(
    caller: &[&str],
    out: &std::path::Path,
    then: impl AsyncFnOnce(&str),
) -> String {
    let db = TestDb::sqlite();
    let data = db.dir().unwrap().display().to_string();
    let (_server, base) = server(&data);
    let echo_port = free_port();
    let port = echo_port.to_string();
    let echo = run(
        &base,
        &data,
        "echo",
        echo_port,
        &["python3", "-m", "http.server", &port, "--bind", "127.0.0.1"],
    );
    let _echo = Proc(echo);
    let url = format!("{base}/v1/services/echo");
    wait_for("echo", async || {
        get(&url).await["instances"][0]["state"] == "up"
    })
    .await;

    let caller_port = free_port();
    let mut args: Vec<String> = caller
        .iter()
        .map(|s| s.replace("@PORT@", &caller_port.to_string()))
        .collect();
    args.iter_mut()
        .for_each(|a| *a = a.replace("@OUT@", &out.display().to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let _caller = Proc(run(&base, &data, "caller", caller_port, &refs));
    wait_for("the caller's result", async || {
        out.exists() && !std::fs::read_to_string(out).unwrap().is_empty()
    })
    .await;
    then(&base).await;
    std::fs::read_to_string(out).unwrap()
}

#[tokio::test]
async fn a_python_app_calls_another_service_by_name_with_no_code_change() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("python.out");
    // Plain urllib: it honours HTTP_PROXY, which `ieum run` set.
    let script = r#"
import urllib.request, time, http.server
for _ in range(100):
    try:
        r = urllib.request.urlopen('http://echo/', timeout=2)
        open('@OUT@', 'w').write(str(r.status))
        break
    except Exception:
        time.sleep(0.2)
http.server.HTTPServer(('127.0.0.1', @PORT@), http.server.BaseHTTPRequestHandler).serve_forever()
"#;
    let got = call_and_check(&["python3", "-c", script], &out, async |base| {
        // The caller's sidecar reports what it saw: the server keeps the signals.
        let url = format!("{base}/v1/services/caller/signals?since=5m");
        wait_for("the caller's signals", async || {
            get(&url)
                .await
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["direction"] == "outbound" && s["destination"] == "echo")
        })
        .await;
    })
    .await;
    assert_eq!(got, "200");
}

#[tokio::test]
async fn node_fetch_uses_the_path_form() {
    if Command::new("node").arg("--version").output().is_err() {
        panic!("node is required for this test (it is part of the machine's toolchain)");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("node.out");
    let script = "const fs = require('fs'); const http = require('http');\
(async () => { for (let i = 0; i < 100; i++) { try {\
  const r = await fetch(process.env.IEUM_OUTBOUND + '/v1/invoke/echo/');\
  fs.writeFileSync('@OUT@', String(r.status)); break; } catch (e) { await new Promise(s => setTimeout(s, 200)); } } })();\
http.createServer((q, s) => s.end('ok')).listen(@PORT@, '127.0.0.1');";
    let got = call_through_the_mesh(&["node", "-e", script], &out).await;
    assert_eq!(got, "200");
}

#[tokio::test]
async fn a_java_app_goes_through_the_sidecar_by_jvm_proxy_properties() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("java.out");
    let source = dir.path().join("Caller.java");
    // Plain HttpURLConnection: it follows -Dhttp.proxyHost/-Dhttp.proxyPort, which `ieum run`
    // puts in JAVA_TOOL_OPTIONS.
    std::fs::write(
        &source,
        r#"
import java.net.*; import java.nio.file.*; import com.sun.net.httpserver.HttpServer;
public class Caller {
  public static void main(String[] a) throws Exception {
    for (int i = 0; i < 100; i++) {
      try {
        HttpURLConnection c = (HttpURLConnection) new URL("http://echo/").openConnection();
        int code = c.getResponseCode();
        Files.writeString(Path.of(a[0]), String.valueOf(code));
        break;
      } catch (Exception e) { Thread.sleep(200); }
    }
    HttpServer s = HttpServer.create(new InetSocketAddress("127.0.0.1", Integer.parseInt(a[1])), 0);
    s.start();
  }
}
"#,
    )
    .unwrap();
    let got =
        call_through_the_mesh(&["java", source.to_str().unwrap(), "@OUT@", "@PORT@"], &out).await;
    assert_eq!(got, "200");
}
