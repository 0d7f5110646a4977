//! CloudEvents conformance against a real external implementation: the events ieum writes
//! in HTTP binary and structured mode are parsed by the CloudEvents Python SDK
//! (`pip install cloudevents==1.11.0`; 1.x, since 2.x changed its API), which must read
//! back every attribute and the data. Skipped, with a note, where the SDK is missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::process::{Command, Stdio};

use base64::Engine as _;
use bytes::Bytes;
use ieum_bridge::CloudEvent;
use ieum_bridge::cloudevents::http::to_http;
use ieum_model::bridge::ContentMode;

fn sdk_available() -> bool {
    Command::new("python3")
        .args(["-c", "import cloudevents.http"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn events() -> Vec<(&'static str, CloudEvent)> {
    let mut json = CloudEvent::wrap(
        "orders",
        "com.example.order.created",
        Some("application/json"),
        Bytes::from_static(br#"{"id":42,"items":[{"sku":"a","qty":2}],"note":"caf\u00e9"}"#),
    );
    json.subject = Some("order 42 – café \"quoted\" 100%".into());
    json.dataschema = Some("https://example.com/schemas/order.json".into());
    json.extensions.insert(
        "traceparent".into(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
    );
    json.extensions
        .insert("tracestate".into(), "ieum=1,other=x".into());
    json.extensions
        .insert("correlationid".into(), "checkout-7".into());
    json.extensions
        .insert("partitionkey".into(), "customer-9".into());

    let mut text = CloudEvent::new("t-1", "/sensors/7", "com.example.reading");
    text.datacontenttype = Some("text/plain; charset=utf-8".into());
    text.time = Some("2026-11-26T06:48:30.5+09:00".into());
    text.data = Some(Bytes::from_static("21.5 °C".as_bytes()));

    let mut binary = CloudEvent::new("b-1", "urn:ieum:test", "com.example.blob");
    binary.datacontenttype = Some("application/octet-stream".into());
    binary.data = Some(Bytes::from_static(&[0, 1, 2, 0xfe, 0xff]));

    binary.time = Some("2026-01-02T03:04:05Z".into());

    // The SDK adds a `time` to events without one, so every case sets it.
    let mut empty = CloudEvent::new("e-1", "orders", "com.example.ping");
    empty.time = Some("2026-01-02T03:04:05.123456789Z".into());
    vec![
        ("json", json),
        ("text", text),
        ("binary", binary),
        ("no-data", empty),
    ]
}

#[test]
fn the_python_sdk_reads_what_ieum_writes_over_http() {
    if !sdk_available() {
        eprintln!(
            "skipped: the CloudEvents Python SDK is missing; install it with `pip install cloudevents==1.11.0`"
        );
        return;
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut input = String::new();
    let mut cases = 0;
    for (name, event) in events() {
        event.validate().unwrap();
        for mode in [ContentMode::Binary, ContentMode::Structured] {
            let (headers, body) = to_http(&event, mode);
            let headers: serde_json::Map<String, serde_json::Value> = headers
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().into()))
                .collect();
            let mut attributes: serde_json::Map<String, serde_json::Value> = event
                .header_attributes()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.into()))
                .collect();
            if let Some(ct) = &event.datacontenttype {
                attributes.insert("datacontenttype".into(), ct.as_str().into());
            }
            let case = serde_json::json!({
                "name": format!("{name} {mode:?}"),
                "binary": mode == ContentMode::Binary,
                "headers": headers,
                "body_b64": b64.encode(&body),
                "attributes": attributes,
                "data_b64": event.data.as_ref().map(|d| b64.encode(d)),
            });
            input.push_str(&case.to_string());
            input.push('\n');
            cases += 1;
        }
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/conformance/check.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the SDK disagrees:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok ")).count(),
        cases,
        "{stdout}"
    );
}
