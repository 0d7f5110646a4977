//! `ieum gateway` as a real process in front of a service under `ieum sidecar`, with a
//! server that is not `--dev` (so the gateway calls the service over mTLS as
//! `gateway:edge`): API keys, anonymous APIs, listed operations, header spoofing, body
//! limits, and errors that name nothing internal.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        support::kill_tree(&mut self.0);
    }
}

/// Starts `ieum ARGS` and returns it with the first word after `marker` in its stderr.
#[allow(clippy::zombie_processes, reason = "reaped by Proc's Drop")]
fn start(args: &[&str], marker: &str) -> (Proc, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ieum"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("IEUM_TOKEN")
        .env_remove("IEUM_SERVER")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let found = loop {
        let Some(Ok(line)) = lines.next() else {
            panic!("`ieum {}` ended before `{marker}`: {seen:#?}", args[0]);
        };
        if let Some(rest) = line.trim().strip_prefix(marker) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
        seen.push(line);
    };
    std::thread::spawn(move || for _ in lines {});
    (Proc(child), found)
}

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().no_proxy().build().unwrap()
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

const APIS: &str = r#"
apiVersion: ieum.dev/v1
kind: Api
metadata: {name: shop}
spec:
  basePath: /shop
  backend: {service: orders}
  auth: {apiKey: {header: x-api-key}}
  maxBodyBytes: 1000
  responseHeaders: {set: [{name: x-api, value: shop}]}
---
apiVersion: ieum.dev/v1
kind: Api
metadata: {name: open}
spec:
  basePath: /open
  backend: {service: orders}
  operations: [{method: GET, path: "/hello/{name}"}]
  auth: {anonymous: true}
---
apiVersion: ieum.dev/v1
kind: ApiConsumer
metadata: {name: mobile}
spec: {apis: [shop]}
---
apiVersion: ieum.dev/v1
kind: ApiConsumer
metadata: {name: partner}
spec: {apis: [open]}
"#;

#[tokio::test]
async fn a_service_published_as_an_api_with_keys() {
    let data = tempfile::tempdir().unwrap();
    let dir = |n: &str| data.path().join(n).display().to_string();
    let (_server, addr) = start(
        &[
            "server",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &dir("server"),
        ],
        "listening",
    );
    let base = format!("http://{addr}");
    // The service: its app echoes the request line and headers it got.
    let app = support::http_app(|head| json!({ "head": head }).to_string());
    let (_orders, _) = start(
        &[
            "sidecar",
            "--service",
            "orders",
            "--app-port",
            &app.to_string(),
            "--server",
            &base,
            "--data-dir",
            &dir("orders"),
            "--outbound",
            "127.0.0.1:0",
            "--inbound",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ],
        "inbound",
    );
    let c = http();
    let r = c
        .post(format!("{base}/v1/apply"))
        .header("content-type", "application/yaml")
        .body(APIS)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let key = async |consumer: &str| -> String {
        let r = c
            .post(format!("{base}/v1/apikeys"))
            .json(&json!({ "consumer": consumer }))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, 201, "{body}");
        body["key"].as_str().unwrap().to_owned()
    };
    let mobile = key("mobile").await;
    let partner = key("partner").await;
    wait_for("orders up", async || {
        let v: Value = c
            .get(format!("{base}/v1/services/orders"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["instances"][0]["state"] == "up"
    })
    .await;

    let (_gateway, listening) = start(
        &[
            "gateway",
            "--server",
            &base,
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--data-dir",
            &dir("gateway"),
        ],
        "listening",
    );
    let edge = listening.trim_end_matches('/').to_owned();
    let call = async |path: &str, key: Option<&str>| {
        let mut req = c
            .get(format!("{edge}{path}"))
            .header("ieum-consumer", "admin");
        if let Some(k) = key {
            req = req.header("x-api-key", k);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        (status, headers, r.text().await.unwrap())
    };

    // With its key, a consumer reaches the service: the base path stripped, the consumer
    // set by the gateway (the client's own `ieum-consumer` dropped), over the mesh.
    let mut last = None;
    let first = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let got = call("/shop/orders/7", Some(&mobile)).await;
            if got.0 == 200 {
                return;
            }
            last = Some(got);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(first.is_ok(), "no first call through the gateway: {last:?}");
    let (status, headers, body) = call("/shop/orders/7?full=1", Some(&mobile)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-api"], "shop");
    let head = serde_json::from_str::<Value>(&body).unwrap()["head"]
        .as_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(head.starts_with("get /orders/7?full=1 "), "{head}");
    assert!(head.contains("ieum-consumer: mobile"), "{head}");
    assert!(!head.contains("ieum-consumer: admin"), "{head}");
    assert!(head.contains("ieum-api: shop"), "{head}");

    // No key, a wrong key, a key of a consumer without this API.
    let (status, headers, body) = call("/shop/orders/7", None).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        headers[reqwest::header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .contains("x-api-key")
    );
    let (status, _, _) = call("/shop/orders/7", Some("ieumk_not-a-key")).await;
    assert_eq!(status, 401);
    let (status, _, body) = call("/shop/orders/7", Some(&partner)).await;
    assert_eq!(status, 403, "{body}");

    // An anonymous API exposes only its listed operations.
    let (status, _, body) = call("/open/hello/ana", None).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, _) = call("/open/bye/ana", None).await;
    assert_eq!(status, 404);

    // Unknown paths: 404 naming nothing inside.
    let (status, _, body) = call("/admin", Some(&mobile)).await;
    assert_eq!(status, 404);
    assert!(
        !body.contains("127.0.0.1") && !body.contains("orders"),
        "{body}"
    );

    // Bodies above the API's limit: 413, declared or streamed.
    let r = c
        .post(format!("{edge}/shop/orders"))
        .header("x-api-key", &mobile)
        .body(vec![b'x'; 5000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        vec![Ok(vec![b'x'; 800]), Ok(vec![b'x'; 800])];
    let r = c
        .post(format!("{edge}/shop/orders"))
        .header("x-api-key", &mobile)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let r = c
        .post(format!("{edge}/shop/orders"))
        .header("x-api-key", &mobile)
        .body(vec![b'x'; 900])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // A revoked key stops working once the gateway hears of it.
    let list: Value = c
        .get(format!("{base}/v1/apikeys?consumer=mobile"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = list
        .as_array()
        .or_else(|| list["keys"].as_array())
        .and_then(|l| l.first())
        .and_then(|k| k["id"].as_str())
        .unwrap_or_else(|| panic!("a key in {list}"))
        .to_owned();
    let r = c
        .delete(format!("{base}/v1/apikeys/{id}"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    wait_for("the revoked key refused", async || {
        call("/shop/orders/7", Some(&mobile)).await.0 == 401
    })
    .await;
}
