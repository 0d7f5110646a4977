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
  cors: {allowOrigins: ["https://shop.example"]}
---
apiVersion: ieum.dev/v1
kind: Api
metadata: {name: limited}
spec:
  basePath: /limited
  backend: {service: orders}
  auth: {anonymous: true}
  rateLimit: {perConsumer: {requests: 2, per: 1m}}
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

    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (_gateway, listening) = start(
        &[
            "gateway",
            "--server",
            &base,
            "--listen",
            "127.0.0.1:0",
            "--admin",
            &admin.to_string(),
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

    // Counted per API, operation and consumer on the admin listener.
    let metrics = c
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "ieum_gateway_requests_total{api=\"shop\",operation=\"*\",consumer=\"mobile\",code=\"2xx\"}"
        ),
        "{metrics}"
    );

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

    // A rate limit per consumer: 429 with Retry-After once used up.
    assert_eq!(call("/limited/a", None).await.0, 200);
    assert_eq!(call("/limited/b", None).await.0, 200);
    let (status, headers, body) = call("/limited/c", None).await;
    assert_eq!(status, 429, "{body}");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");

    // CORS: the gateway answers preflights from allowed origins, before any key.
    let preflight = async |origin: &str| {
        c.request(reqwest::Method::OPTIONS, format!("{edge}/shop/orders"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "x-api-key")
            .send()
            .await
            .unwrap()
    };
    let r = preflight("https://shop.example").await;
    assert_eq!(r.status(), 204);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    assert!(
        r.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("x-api-key")
    );
    assert_eq!(preflight("https://evil.example").await.status(), 403);
    let r = c
        .get(format!("{edge}/shop/orders/7"))
        .header("origin", "https://shop.example")
        .header("x-api-key", &mobile)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://shop.example"
    );

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

    // JWTs from an identity provider whose keys (JWKS) the test serves.
    let issuer = Issuer::new();
    let jwks = issuer.jwks();
    let jwks_port = support::http_app(move |_| jwks.to_string());
    let partners = format!(
        "apiVersion: ieum.dev/v1\nkind: Api\nmetadata: {{name: partners}}\nspec:\n  basePath: /partners\n  backend: {{service: orders}}\n  auth: {{jwt: {{issuer: https://id.test, audiences: [shop], jwksUrl: http://127.0.0.1:{jwks_port}/jwks.json}}}}\n---\napiVersion: ieum.dev/v1\nkind: ApiConsumer\nmetadata: {{name: acme}}\nspec: {{apis: [partners], jwtSubjects: [\"client:acme\"]}}\n"
    );
    let r = c
        .post(format!("{base}/v1/apply"))
        .header("content-type", "application/yaml")
        .body(partners)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let bearer = async |token: Option<String>| {
        let mut req = c.get(format!("{edge}/partners/orders/7"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let challenge = r
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, challenge, r.text().await.unwrap())
    };
    let claims = |sub: &str, aud: &str, exp: u64| json!({"iss": "https://id.test", "sub": sub, "aud": aud, "exp": exp});
    let valid = issuer.sign(&claims("client:acme", "shop", now + 300));
    wait_for("the partners API at the gateway", async || {
        bearer(Some(valid.clone())).await.0 == 200
    })
    .await;
    let (_, _, body) = bearer(Some(valid)).await;
    assert!(
        body.to_ascii_lowercase().contains("ieum-consumer: acme"),
        "{body}"
    );
    let (status, challenge, _) = bearer(None).await;
    assert_eq!(status, 401);
    assert!(challenge.starts_with("Bearer"), "{challenge}");
    let (status, challenge, body) =
        bearer(Some(issuer.sign(&claims("client:acme", "shop", now - 600)))).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        challenge.contains("invalid_token") && challenge.contains("expired"),
        "{challenge}"
    );
    let (status, _, body) = bearer(Some(issuer.sign(&claims(
        "client:acme",
        "admin",
        now + 300,
    ))))
    .await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("audience"), "{body}");
    let (status, _, _) = bearer(Some(issuer.sign(&claims(
        "client:nobody",
        "shop",
        now + 300,
    ))))
    .await;
    assert_eq!(status, 403);

    // TLS termination with a certificate from files.
    let key_pair = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .self_signed(&key_pair)
        .unwrap();
    let (cert_file, key_file) = (data.path().join("cert.pem"), data.path().join("key.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key_pair.serialize_pem()).unwrap();
    let (_tls_gateway, tls_listening) = start(
        &[
            "gateway",
            "--name",
            "edge-tls",
            "--server",
            &base,
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--data-dir",
            &dir("gateway-tls"),
            "--tls-cert",
            cert_file.to_str().unwrap(),
            "--tls-key",
            key_file.to_str().unwrap(),
        ],
        "listening",
    );
    assert!(tls_listening.starts_with("https://"), "{tls_listening}");
    let https = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([reqwest::Certificate::from_pem(cert.pem().as_bytes()).unwrap()])
        .build()
        .unwrap();
    let mut last = String::new();
    let mut served = false;
    for _ in 0..100 {
        match https
            .get(format!("{tls_listening}/open/hello/tls"))
            .send()
            .await
        {
            Ok(r) if r.status() == 200 => {
                served = true;
                break;
            }
            Ok(r) => last = r.status().to_string(),
            Err(e) => last = format!("{e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "no answer over TLS: {last}");

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

/// An identity provider: an ES256 key pair, its JWKS, tokens it signs.
struct Issuer {
    pkcs8: Vec<u8>,
    public: Vec<u8>,
}

impl Issuer {
    fn new() -> Issuer {
        use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        Issuer {
            pkcs8: pkcs8.as_ref().to_vec(),
            public: pair.public_key().as_ref().to_vec(),
        }
    }

    /// `{"keys": [the public key]}`: x and y of the uncompressed point.
    fn jwks(&self) -> Value {
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "use": "sig",
            "x": b64(&self.public[1..33]), "y": b64(&self.public[33..65])}]})
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("k1".into());
        jsonwebtoken::encode(
            &header,
            claims,
            &jsonwebtoken::EncodingKey::from_ec_der(&self.pkcs8),
        )
        .unwrap()
    }
}
