//! Active health checks the server runs: HTTP `GET`, TCP connect, gRPC health protocol.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use ieum_model::{Check, CheckKind};

/// Longest check output kept (enough for a status line and the start of an error page).
const MAX_OUTPUT: usize = 256;

/// Where and how to check one instance.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) address: String,
    pub(crate) port: u16,
    pub(crate) check: Check,
}

/// The result of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub(crate) passed: bool,
    pub(crate) output: String,
}

impl Outcome {
    fn pass(output: String) -> Self {
        Outcome {
            passed: true,
            output,
        }
    }
    fn fail(output: String) -> Self {
        Outcome {
            passed: false,
            output,
        }
    }
}

/// Shared HTTP clients for checks (connection pools are per client, so one for all).
#[derive(Clone)]
pub(crate) struct Checker {
    http: Client<HttpConnector, Empty<Bytes>>,
    grpc: Client<HttpConnector, Full<Bytes>>,
}

impl Checker {
    pub(crate) fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        // A check must see the instance as a new caller would: no pooled connections.
        let http = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector.clone());
        let grpc = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .pool_max_idle_per_host(0)
            .build(connector);
        Checker { http, grpc }
    }

    /// Runs one check, bounded by its timeout.
    pub(crate) async fn run(&self, t: &Target) -> Outcome {
        let timeout = t.check.timeout;
        let authority = authority(&t.address, t.port);
        let run = async {
            match t.check.kind() {
                Some(CheckKind::Http(path)) => self.http_check(&authority, &path).await,
                Some(CheckKind::Tcp) => tcp_check(&authority).await,
                Some(CheckKind::Grpc(service)) => self.grpc_check(&authority, &service).await,
                None => Outcome::fail("the check sets no kind".into()),
            }
        };
        match tokio::time::timeout(timeout.get(), run).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::fail(format!("no answer within the check timeout of {timeout}")),
        }
    }

    async fn http_check(&self, authority: &str, path: &str) -> Outcome {
        let uri = format!("http://{authority}{path}");
        let req = match http::Request::get(&uri)
            .header("user-agent", "ieum-check")
            .body(Empty::new())
        {
            Ok(r) => r,
            Err(e) => return Outcome::fail(format!("bad check URL {uri}: {e}")),
        };
        let resp = match self.http.request(req).await {
            Ok(r) => r,
            Err(e) => return Outcome::fail(format!("GET {uri}: {}", error_chain(&e))),
        };
        let status = resp.status();
        // Only the start of the body is shown; never read an unbounded one.
        let body = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&body);
        let text = text.trim();
        let mut output = format!("HTTP {status}");
        if !text.is_empty() {
            output.push_str(": ");
            output.push_str(text);
        }
        truncate(&mut output);
        if status.is_success() {
            Outcome::pass(output)
        } else {
            Outcome::fail(output)
        }
    }

    async fn grpc_check(&self, authority: &str, service: &str) -> Outcome {
        let uri = format!("http://{authority}/grpc.health.v1.Health/Check");
        let req = http::Request::post(&uri)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("user-agent", "ieum-check")
            .body(Full::new(Bytes::from(health_request(service))));
        let req = match req {
            Ok(r) => r,
            Err(e) => return Outcome::fail(format!("bad check URL {uri}: {e}")),
        };
        let resp = match self.grpc.request(req).await {
            Ok(r) => r,
            Err(e) => {
                return Outcome::fail(format!("gRPC health check {uri}: {}", error_chain(&e)));
            }
        };
        let (parts, body) = resp.into_parts();
        let collected = match body.collect().await {
            Ok(c) => c,
            Err(e) => return Outcome::fail(format!("gRPC health check: reading the answer: {e}")),
        };
        // A trailers-only answer carries grpc-status in the headers.
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let grpc_status = trailers
            .get("grpc-status")
            .or_else(|| parts.headers.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        if grpc_status != "0" {
            let message = trailers
                .get("grpc-message")
                .or_else(|| parts.headers.get("grpc-message"))
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let shown = if grpc_status.is_empty() {
                "missing".to_owned()
            } else {
                grpc_status
            };
            return Outcome::fail(
                format!("gRPC status {shown} (HTTP {}) {message}", parts.status)
                    .trim()
                    .to_owned(),
            );
        }
        match health_status(&collected.to_bytes()) {
            Some(1) => Outcome::pass("SERVING".into()),
            Some(2) => Outcome::fail("NOT_SERVING".into()),
            Some(3) => Outcome::fail("SERVICE_UNKNOWN".into()),
            Some(0) => Outcome::fail("UNKNOWN".into()),
            Some(n) => Outcome::fail(format!("unexpected health status {n}")),
            None => Outcome::fail("malformed grpc.health.v1.HealthCheckResponse".into()),
        }
    }
}

async fn tcp_check(authority: &str) -> Outcome {
    match tokio::net::TcpStream::connect(authority).await {
        Ok(_) => Outcome::pass(format!("connected to {authority}")),
        Err(e) => Outcome::fail(format!("connect to {authority}: {e}")),
    }
}

fn authority(address: &str, port: u16) -> String {
    if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

fn truncate(s: &mut String) {
    // Output goes into event messages; control characters (NUL above all, which
    // PostgreSQL refuses in text) are shown as `?`.
    if s.chars().any(char::is_control) {
        *s = s
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
    }
    if s.len() > MAX_OUTPUT {
        let mut cut = MAX_OUTPUT;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// A length-prefixed `grpc.health.v1.HealthCheckRequest { service }`.
fn health_request(service: &str) -> Vec<u8> {
    let mut msg = Vec::new();
    if !service.is_empty() {
        msg.push(0x0a); // field 1, length-delimited
        put_varint(&mut msg, service.len() as u64);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut framed = vec![0u8];
    framed.extend_from_slice(&u32::try_from(msg.len()).unwrap_or(u32::MAX).to_be_bytes());
    framed.extend_from_slice(&msg);
    framed
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The `status` of a length-prefixed `HealthCheckResponse` (0 when absent, as proto3 says).
fn health_status(framed: &[u8]) -> Option<u64> {
    let len = u32::from_be_bytes(framed.get(1..5)?.try_into().ok()?) as usize;
    let mut msg = framed.get(5..5 + len)?;
    let mut status = 0;
    while let Some((&tag, rest)) = msg.split_first() {
        let (value, rest) = get_varint(rest)?;
        match tag {
            0x08 => status = value,
            t if t & 0x07 == 0 => {}
            t if t & 0x07 == 2 => {
                let skip = usize::try_from(value).ok()?;
                msg = rest.get(skip..)?;
                continue;
            }
            _ => return None,
        }
        msg = rest;
    }
    Some(status)
}

fn get_varint(mut b: &[u8]) -> Option<(u64, &[u8])> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = b.split_first()?;
        b = rest;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some((v, b));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_messages_encode_and_decode() {
        assert_eq!(health_request(""), [0, 0, 0, 0, 0]);
        assert_eq!(health_request("ab"), [0, 0, 0, 0, 4, 0x0a, 2, b'a', b'b']);
        assert_eq!(health_status(&[0, 0, 0, 0, 2, 0x08, 1]), Some(1));
        assert_eq!(health_status(&[0, 0, 0, 0, 0]), Some(0));
        assert_eq!(health_status(&[0, 0, 0, 0, 2, 0x08]), None);
        assert_eq!(health_status(&[0, 0, 0]), None);
    }

    #[test]
    fn ipv6_addresses_get_brackets() {
        assert_eq!(authority("::1", 80), "[::1]:80");
        assert_eq!(authority("10.0.0.1", 80), "10.0.0.1:80");
    }

    #[test]
    fn control_characters_are_masked() {
        let mut s = "bad\0body\n".to_owned();
        truncate(&mut s);
        assert_eq!(s, "bad?body?");
    }

    #[test]
    fn long_output_is_cut_on_a_char_boundary() {
        let mut s = "é".repeat(200);
        truncate(&mut s);
        assert!(s.len() <= MAX_OUTPUT + '…'.len_utf8());
        assert!(s.ends_with('…'));
    }
}
