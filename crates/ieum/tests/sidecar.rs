//! `ieum run` as a real process: snapshot wait, the app's environment, registration with
//! the inbound address, drain on SIGTERM, and crashes recorded with their exit code.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ieum_store::testing::TestDb;
use serde_json::Value;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        support::kill_tree(&mut self.0);
    }
}

/// Starts `ieum server` on a free port; returns it with its base URL.
fn server(data: &str) -> (Proc, String) {
    server_on(data, "127.0.0.1:0")
}

/// Starts `ieum server` listening on `listen` (a fixed port lets a test restart it where
/// the sidecars expect it); returns it with its base URL.
#[allow(clippy::zombie_processes, reason = "reaped by Proc's Drop")]
fn server_on(data: &str, listen: &str) -> (Proc, String) {
    server_with(data, listen, &[])
}

/// [`server_on`] with more flags.
#[allow(clippy::zombie_processes, reason = "reaped by Proc's Drop")]
fn server_with(data: &str, listen: &str, extra: &[&str]) -> (Proc, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ieum"))
        .args(["server", "--listen", listen, "--data-dir", data])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let scheme = if extra.contains(&"--tls") {
        "https"
    } else {
        "http"
    };
    let base = loop {
        let line = lines.next().expect("banner").unwrap();
        if let Some(rest) = line.trim().strip_prefix("listening") {
            break format!("{scheme}://{}", rest.split_whitespace().next().unwrap());
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
    {
        // reqwest asks for a rustls provider even for plain HTTP: ring, as in ieum.
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder()
    }
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

    // The server is not in --dev: the sidecar enrolled with no manual step, registered its
    // identity, and its inbound listener takes only mesh peers.
    assert_eq!(inst["metadata"]["identity"], "spiffe://ieum.local/svc/web");
    let inbound = format!(
        "http://{}:{}/",
        inst["address"].as_str().unwrap(),
        inst["port"]
    );
    let resp = {
        // reqwest asks for a rustls provider even for plain HTTP: ring, as in ieum.
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder()
    }
    .no_proxy()
    .build()
    .unwrap()
    .get(&inbound)
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 403, "a caller without a certificate");
    assert_eq!(resp.headers()["ieum-reason"], "mtls-required");

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

/// A sidecar process and the addresses it printed in its banner.
struct SidecarProc {
    _proc: Proc,
    /// `http://IP:PORT` of the outbound listener.
    outbound: String,
    /// `http://IP:PORT` of the admin listener.
    admin: String,
}

/// Starts `ieum sidecar` (no app of its own: the app is whatever listens on `app_port`)
/// and reads its banner for the listeners' addresses.
#[allow(clippy::zombie_processes, reason = "reaped by Proc's Drop")]
fn sidecar_proc(
    server: &str,
    data: &str,
    service: &str,
    app_port: u16,
    extra: &[&str],
    env: &[(&str, &str)],
) -> SidecarProc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ieum"))
        .args(["sidecar", "--service", service, "--app-port"])
        .arg(app_port.to_string())
        .args(["--server", server, "--data-dir", data, "--ttl", "3s"])
        .args([
            "--outbound",
            "127.0.0.1:0",
            "--inbound",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ])
        .args(extra)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .env_remove("IEUM_SERVER")
        .env_remove("IEUM_EGRESS")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (mut outbound, mut admin, mut seen) = (None, None, Vec::new());
    while outbound.is_none() || admin.is_none() {
        let Some(Ok(line)) = lines.next() else {
            panic!("`ieum sidecar` ended before its banner: {seen:#?}");
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["outbound", url, ..] => outbound = Some((*url).to_owned()),
            ["admin", url, ..] => admin = Some(url.trim_end_matches("/ready").to_owned()),
            _ => {}
        }
        seen.push(line);
    }
    std::thread::spawn(move || for _ in lines {});
    SidecarProc {
        _proc: Proc(child),
        outbound: outbound.unwrap(),
        admin: admin.unwrap(),
    }
}

/// A stand-in app for a sidecar whose app only needs to pass the TCP health check.
fn tcp_app() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || for _ in listener.incoming() {});
    port
}

/// `GET url` through the sidecar's outbound listener (as an app with `HTTP_PROXY` does);
/// a fresh client each time, so no pooled connection hides a restart.
async fn call_via(outbound: &str, url: &str) -> Result<(u16, String), reqwest::Error> {
    let res = {
        // reqwest asks for a rustls provider even for plain HTTP: ring, as in ieum.
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder()
    }
    .proxy(reqwest::Proxy::http(outbound).unwrap())
    .timeout(Duration::from_secs(5))
    .build()
    .unwrap()
    .get(url)
    .send()
    .await?;
    let status = res.status().as_u16();
    Ok((status, res.text().await?))
}

/// The admin `/ready` answer.
async fn ready(admin: &str) -> (u16, String) {
    let res = {
        // reqwest asks for a rustls provider even for plain HTTP: ring, as in ieum.
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder()
    }
    .no_proxy()
    .build()
    .unwrap()
    .get(format!("{admin}/ready"))
    .send()
    .await
    .unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

#[tokio::test]
async fn traffic_survives_a_killed_server_and_sidecars_resync_when_it_returns() {
    let db = TestDb::sqlite();
    let data = db.dir().unwrap().display().to_string();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let (server_proc, base) = server_on(&data, &listen);

    let sidecars = tempfile::tempdir().unwrap();
    let echo_dir = sidecars.path().join("echo").display().to_string();
    let caller_dir = sidecars.path().join("caller").display().to_string();
    let echo_port = free_port();
    let _echo = Proc(run(
        &base,
        &echo_dir,
        "echo",
        echo_port,
        &[
            "python3",
            "-m",
            "http.server",
            &echo_port.to_string(),
            "--bind",
            "127.0.0.1",
        ],
    ));
    let echo_url = format!("{base}/v1/services/echo");
    wait_for("echo", async || {
        get(&echo_url).await["instances"][0]["state"] == "up"
    })
    .await;
    let app_port = tcp_app();
    let caller_args = ["--egress", "registry-only"];
    let caller = sidecar_proc(&base, &caller_dir, "caller", app_port, &caller_args, &[]);
    wait_for("a first call through the caller", async || {
        matches!(
            call_via(&caller.outbound, "http://echo/").await,
            Ok((200, _))
        )
    })
    .await;
    // Registry-only egress: a name outside the registry is refused, and says why.
    let (status, body) = call_via(
        &caller.outbound,
        &format!("http://127.0.0.1:{port}/healthz"),
    )
    .await
    .unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains(&format!("127.0.0.1:{port}")) && body.contains("--egress allow"),
        "{body}"
    );

    // kill -9 the control plane: the data plane keeps calling on its last snapshot.
    drop(server_proc);
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut calls = 0;
    while tokio::time::Instant::now() < until {
        let got = call_via(&caller.outbound, "http://echo/").await;
        assert!(
            matches!(got, Ok((200, _))),
            "call {calls} after the kill: {got:?}"
        );
        calls += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(calls >= 10, "only {calls} calls in 3 s");
    wait_for("the caller to say degraded", async || {
        let (code, text) = ready(&caller.admin).await;
        assert_eq!(code, 200, "degraded is still ready: {text}");
        text.starts_with("degraded: control plane unreachable since")
    })
    .await;

    // A sidecar restarted while the server is down routes from its saved snapshot.
    drop(caller);
    let caller = sidecar_proc(&base, &caller_dir, "caller", app_port, &caller_args, &[]);
    let (code, text) = ready(&caller.admin).await;
    assert_eq!((code, text.starts_with("degraded")), (200, true), "{text}");
    let got = call_via(&caller.outbound, "http://echo/").await;
    assert!(
        matches!(got, Ok((200, _))),
        "the restarted sidecar calls from the saved snapshot: {got:?}"
    );

    // The server comes back on the same data and port: the sidecars reconnect, their
    // instances are there again, and a change made now reaches the caller's data plane.
    let (_server, base) = server_on(&data, &listen);
    wait_for("the caller to reconnect", async || {
        ready(&caller.admin).await == (200, "ready\n".to_owned())
    })
    .await;
    let caller_url = format!("{base}/v1/services/caller");
    wait_for("both instances up on the restarted server", async || {
        get(&echo_url).await["instances"][0]["state"] == "up"
            && get(&caller_url).await["instances"][0]["state"] == "up"
    })
    .await;
    let fault = "apiVersion: ieum.dev/v1\nkind: FaultInjection\nmetadata: {name: echo-chaos}\nspec: {targetRef: {kind: Service, name: echo}, abort: {httpStatus: 418, percent: 100}}\n";
    let res = {
        // reqwest asks for a rustls provider even for plain HTTP: ring, as in ieum.
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder()
    }
    .no_proxy()
    .build()
    .unwrap()
    .post(format!("{base}/v1/apply"))
    .header("content-type", "application/yaml")
    .body(fault)
    .send()
    .await
    .unwrap();
    assert!(res.status().is_success(), "{}", res.text().await.unwrap());
    wait_for("the fault to take effect in the caller", async || {
        matches!(
            call_via(&caller.outbound, "http://echo/").await,
            Ok((418, _))
        )
    })
    .await;
}

#[tokio::test]
async fn tcp_flags_pipe_bytes_between_real_sidecar_processes() {
    use std::io::{Read, Write};
    let db = TestDb::sqlite();
    let data = db.dir().unwrap().display().to_string();
    let (_server, base) = server(&data);
    // A TCP echo server stands for the database.
    let echo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let echo_port = echo.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in echo.incoming().flatten() {
            std::thread::spawn(move || {
                let mut r = s.try_clone().unwrap();
                let mut w = s;
                let _ = std::io::copy(&mut r, &mut w);
            });
        }
    });
    let dirs = tempfile::tempdir().unwrap();
    let dir = |n: &str| dirs.path().join(n).display().to_string();
    let _db = sidecar_proc(
        &base,
        &dir("db"),
        "db",
        echo_port,
        &["--app-protocol", "tcp"],
        &[],
    );
    let db_url = format!("{base}/v1/services/db");
    wait_for("db registered", async || {
        get(&db_url).await["instances"][0]["state"] == "up"
    })
    .await;
    assert_eq!(get(&db_url).await["instances"][0]["protocol"], "tcp");
    let listen = format!("127.0.0.1:{}", free_port());
    let forward = format!("{listen}=db");
    let _web = sidecar_proc(
        &base,
        &dir("web"),
        "web",
        tcp_app(),
        &["--tcp", &forward],
        &[],
    );
    let got = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(&listen).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"SELECT 1;\n").unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).unwrap();
        got
    })
    .await
    .unwrap();
    assert_eq!(got, "SELECT 1;\n");
}

#[tokio::test]
async fn otel_variables_make_the_sidecar_export_spans_over_otlp_http() {
    use std::io::{Read, Write};
    let db = TestDb::sqlite();
    let data = db.dir().unwrap().display().to_string();
    let (_server, base) = server(&data);
    // One tiny HTTP server is both the collector and a destination outside the mesh.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel::<(String, Vec<u8>)>();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0; 4096];
                loop {
                    let n = s.read(&mut chunk).unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    if buf.len() < end + 4 + len {
                        continue;
                    }
                    let line = head.lines().next().unwrap().to_owned();
                    let _ = tx.send((line, buf[end + 4..end + 4 + len].to_vec()));
                    buf.drain(..end + 4 + len);
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
                }
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("http://127.0.0.1:{port}");
    let sc = sidecar_proc(
        &base,
        &dir.path().display().to_string(),
        "web",
        tcp_app(),
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_SERVICE_NAME", "storefront"),
        ],
    );
    let (status, _) = call_via(&sc.outbound, &format!("http://127.0.0.1:{port}/hello"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let export = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Duration::from_secs(10);
        loop {
            let (line, body) = rx.recv_timeout(deadline).expect("an export within 10 s");
            if line.starts_with("post /v1/traces ") {
                return body;
            }
        }
    })
    .await
    .unwrap();
    // Protobuf keeps strings as they are: the resource and the span's attributes.
    let has = |s: &str| export.windows(s.len()).any(|w| w == s.as_bytes());
    assert!(has("storefront"), "OTEL_SERVICE_NAME names the resource");
    assert!(has("/hello") && has("http.request.method") && has("external"));
}

/// Two services under real sidecars on a server that is not in `--dev`: their traffic is
/// mTLS with no certificate step, and certificates renewed every few seconds under steady
/// traffic lose no request.
#[tokio::test]
async fn traffic_between_sidecars_is_mtls_and_survives_certificate_renewals() {
    let db = TestDb::sqlite();
    let data = db.dir().unwrap().display().to_string();
    // 6 s certificates: renewed every 4 s.
    let (_server, base) = server_with(&data, "127.0.0.1:0", &["--cert-ttl", "6s"]);
    let sidecars = tempfile::tempdir().unwrap();
    let stock_dir = sidecars.path().join("stock");
    let echo_port = free_port();
    let _app = Proc(
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                &echo_port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stock = sidecar_proc(
        &base,
        &stock_dir.display().to_string(),
        "stock",
        echo_port,
        &[],
        &[],
    );
    wait_for("stock", async || {
        get(&format!("{base}/v1/services/stock")).await["instances"][0]["state"] == "up"
    })
    .await;
    let web_dir = sidecars.path().join("web").display().to_string();
    let web = sidecar_proc(&base, &web_dir, "web", tcp_app(), &[], &[]);
    wait_for("a first call", async || {
        matches!(call_via(&web.outbound, "http://stock/").await, Ok((200, _)))
    })
    .await;
    let chain = stock_dir.join("identity-stock").join("chain.pem");
    let first = std::fs::read_to_string(&chain).unwrap();

    // Steady traffic over two renewals of both sidecars' certificates.
    let until = tokio::time::Instant::now() + Duration::from_secs(9);
    let mut calls = 0;
    while tokio::time::Instant::now() < until {
        let got = call_via(&web.outbound, "http://stock/").await;
        assert!(matches!(got, Ok((200, _))), "call {calls}: {got:?}");
        calls += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(calls >= 50, "only {calls} calls");
    let renewed = std::fs::read_to_string(&chain).unwrap();
    assert_ne!(first, renewed, "stock's certificate was renewed");

    // The callee registered its identity and saw a mesh caller over TLS.
    let view = get(&format!("{base}/v1/services/stock")).await;
    assert_eq!(
        view["instances"][0]["metadata"]["identity"],
        "spiffe://ieum.local/svc/stock"
    );
    let metrics = {
        // reqwest asks for a rustls provider even for plain HTTP: ring, as in ieum.
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder()
    }
    .no_proxy()
    .build()
    .unwrap()
    .get(format!("{}/metrics", stock.admin))
    .send()
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    let mtls = "request_total{direction=\"inbound\",dst_service=\"stock\",route=\"default\",tls=\"true\",client_id=\"web\"} ";
    let served: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(mtls))
        .unwrap_or_else(|| panic!("no mTLS series from web in {metrics}"))
        .parse()
        .unwrap();
    assert!(served >= calls, "{served} of {calls} calls seen over mTLS");
}

/// A stand-in HTTP service answering every request `200 {"ok":true}`: an app to be
/// healthy, a saga participant.
fn http_ok_app() -> u16 {
    support::http_app(|_| r#"{"ok":true}"#.to_owned())
}

/// A client of an `https://` server that trusts the CA in `ca_file`.
fn https_client(ca_file: &std::path::Path) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let trust = ieum_identity::ServerTrust::from_ca_file(ca_file).unwrap();
    let mut tls = (*trust.client_config().unwrap()).clone();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .no_proxy()
        .tls_backend_preconfigured(tls)
        .build()
        .unwrap()
}

/// Off loopback (`--tls`, tokens required): a sidecar refuses a server its join token does
/// not pin, enrols with its token over a verified connection (`IEUM_CA_FILE`), then speaks
/// to the server with its certificate only: it registers as its SPIFFE id, and forwards its
/// app's saga starts under that identity. Revoking the token does not cut it off (the
/// certificate serves until it expires; renewals stop).
#[tokio::test]
async fn a_sidecar_enrols_with_its_token_then_speaks_with_its_certificate() {
    let db = TestDb::sqlite();
    let data = db.dir().unwrap().display().to_string();
    let (_server, base) = server_with(&data, "127.0.0.1:0", &["--tls", "--require-tokens"]);
    assert!(base.starts_with("https://"), "{base}");
    let ca_file = std::path::Path::new(&data).join("ca").join("ca.pem");
    let admin = std::fs::read_to_string(std::path::Path::new(&data).join("admin.token")).unwrap();
    let admin = admin.trim().to_owned();
    let http = https_client(&ca_file);
    let created: Value = http
        .post(format!("{base}/v1/tokens"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"name": "orders-1", "role": "sidecar", "service": "orders"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = created["secret"].as_str().unwrap().to_owned();
    let sidecars = tempfile::tempdir().unwrap();
    let app_port = http_ok_app();

    // A join token that pins another CA: refused at the handshake, at once, saying why.
    let wrong_pin = format!("ieum1.{}.{secret}", "ab".repeat(32));
    let out = Command::new(env!("CARGO_BIN_EXE_ieum"))
        .args(["sidecar", "--service", "orders", "--app-port"])
        .arg(app_port.to_string())
        .args(["--server", &base, "--data-dir"])
        .arg(sidecars.path().join("wrong"))
        .args(["--outbound", "127.0.0.1:0", "--inbound", "127.0.0.1:0"])
        .args(["--admin", "127.0.0.1:0", "--snapshot-wait", "20s"])
        .env("IEUM_TOKEN", &wrong_pin)
        .env_remove("IEUM_CA_FILE")
        .env_remove("IEUM_SERVER")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("pinned by the join token"), "{err}");

    // The bare secret with IEUM_CA_FILE: enrols, then registers with its certificate.
    let orders = sidecar_proc(
        &base,
        &sidecars.path().join("orders").display().to_string(),
        "orders",
        app_port,
        &[],
        &[
            ("IEUM_TOKEN", secret.as_str()),
            ("IEUM_CA_FILE", ca_file.to_str().unwrap()),
        ],
    );
    let events = async |kind: &str| -> Value {
        http.get(format!("{base}/v1/events?service=orders&kind={kind}"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    };
    wait_for("orders registered", async || {
        events("instance.registered").await[0]["author"] == "spiffe://ieum.local/svc/orders"
    })
    .await;

    // The app starts a saga through its sidecar, with no token of its own.
    let stock_port = http_ok_app();
    let r = http
        .post(format!("{base}/v1/services/stock/instances"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"address": "127.0.0.1", "port": stock_port, "ttl": "1h"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let saga = "apiVersion: ieum.dev/v1\nkind: Saga\nmetadata: {name: reserve}\nspec:\n  steps:\n  - name: stock\n    action: {service: stock, method: POST, path: /reserve}\n    compensation: {service: stock, method: POST, path: /release}\n";
    let r = http
        .post(format!("{base}/v1/apply"))
        .bearer_auth(&admin)
        .header("content-type", "application/yaml")
        .body(saga)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let plain = {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder().no_proxy().build().unwrap()
    };
    let start = async |key: &str| {
        plain
            .post(format!(
                "{}/v1/sagas/reserve/executions?wait=10s",
                orders.outbound
            ))
            .header("idempotency-key", key)
            .json(&serde_json::json!({"order": 7}))
            .send()
            .await
            .unwrap()
    };
    let r = start("order-7").await;
    let status = r.status();
    let done: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["state"], "completed", "{done}");
    // The server's own errors come back as they are.
    let r = plain
        .post(format!("{}/v1/flows/nope", orders.outbound))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let err: Value = r.json().await.unwrap();
    assert!(err["error"]["code"].is_string(), "{err}");

    // Revoked: the sidecar's certificate still works for its heartbeats and starts.
    let r = http
        .delete(format!("{base}/v1/tokens/orders-1"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let r = start("order-8").await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let revoked = events("token.revoked").await;
    assert_eq!(revoked[0]["data"]["token"], "orders-1", "{revoked}");
}
