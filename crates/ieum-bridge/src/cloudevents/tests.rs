use super::binding::{self, Message, Protocol};
use super::*;
use ieum_model::bridge::ContentMode;
use proptest::prelude::*;

fn sample() -> CloudEvent {
    let mut e = CloudEvent::new("e-1", "/services/orders", "com.example.order.created");
    e.datacontenttype = Some("application/json".into());
    e.subject = Some("order 42 – café".into());
    e.time = Some("2026-11-26T06:48:30.123+09:00".into());
    e.dataschema = Some("https://example.com/order.json".into());
    e.extensions.insert(
        TRACEPARENT.into(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
    );
    e.extensions.insert(CORRELATION_ID.into(), "c-9".into());
    e.data = Some(Bytes::from_static(br#"{"id":42,"total":9.5}"#));
    e
}

#[test]
fn validation_names_what_is_wrong() {
    assert_eq!(sample().validate(), Ok(()));
    let mut e = sample();
    e.id.clear();
    assert_eq!(e.validate(), Err(CloudEventError::Empty("id".into())));
    let mut e = sample();
    e.extensions.insert("Trace_Parent".into(), "x".into());
    assert_eq!(
        e.validate(),
        Err(CloudEventError::Name("Trace_Parent".into()))
    );
    let mut e = sample();
    assert_eq!(
        e.set_extension("data", "x"),
        Err(CloudEventError::Reserved("data".into()))
    );
    assert_eq!(
        e.set_extension("subject", "x"),
        Err(CloudEventError::Reserved("subject".into()))
    );
    for bad in [
        "2026-13-01T00:00:00Z",
        "2026-02-30T00:00:00Z",
        "2026-11-26 06:48:30Z",
        "2026-11-26T06:48:30",
        "2026-11-26T06:48:30.Z",
        "2026-11-26T06:48:30+0900",
        "yesterday",
    ] {
        let mut e = sample();
        e.time = Some(bad.into());
        assert_eq!(
            e.validate(),
            Err(CloudEventError::Time(bad.into())),
            "{bad}"
        );
    }
    for good in [
        "2024-02-29T23:59:60Z",
        "2026-11-26t06:48:30.000000001z",
        "2026-11-26T06:48:30-05:30",
    ] {
        assert!(is_rfc3339(good), "{good}");
    }
    let mut e = sample();
    e.dataschema = Some("order.json".into());
    assert!(matches!(e.validate(), Err(CloudEventError::DataSchema(_))));
    let mut e = sample();
    e.subject = Some("a\nb".into());
    assert_eq!(
        e.validate(),
        Err(CloudEventError::Control("subject".into()))
    );
}

#[test]
fn structured_json_reads_spec_examples_and_rejects_bad_ones() {
    let text = br#"{"specversion":"1.0","type":"t","source":"s","id":"1","comexampleothervalue":5,"flag":true,"datacontenttype":"text/xml","data":"<much wow=\"xml\"/>"}"#;
    let e = CloudEvent::from_json(text).unwrap();
    assert_eq!(e.extension("comexampleothervalue"), Some("5"));
    assert_eq!(e.extension("flag"), Some("true"));
    assert_eq!(e.data.as_deref(), Some(&b"<much wow=\"xml\"/>"[..]));
    let e = CloudEvent::from_json(
        br#"{"specversion":"1.0","type":"t","source":"s","id":"1","data_base64":"AAEC"}"#,
    )
    .unwrap();
    assert_eq!(e.data.as_deref(), Some(&[0u8, 1, 2][..]));
    let e = CloudEvent::from_json(
        br#"{"specversion":"1.0","type":"t","source":"s","id":"1","data":{"a": [1, 2]}}"#,
    )
    .unwrap();
    assert_eq!(
        e.data.as_deref(),
        Some(&br#"{"a": [1, 2]}"#[..]),
        "JSON data keeps its bytes"
    );

    let missing = CloudEvent::from_json(br#"{"specversion":"1.0","type":"t","source":"s"}"#);
    assert_eq!(missing, Err(CloudEventError::Missing("id")));
    let v03 = CloudEvent::from_json(br#"{"specversion":"0.3","type":"t","source":"s","id":"1"}"#);
    assert_eq!(v03, Err(CloudEventError::SpecVersion("0.3".into())));
    let both = CloudEvent::from_json(
        br#"{"specversion":"1.0","type":"t","source":"s","id":"1","data":1,"data_base64":"AA=="}"#,
    );
    assert_eq!(both, Err(CloudEventError::BothData));
    let typed = CloudEvent::from_json(br#"{"specversion":"1.0","type":"t","source":"s","id":7}"#);
    assert_eq!(typed, Err(CloudEventError::Type("id".into())));
    assert!(matches!(
        CloudEvent::from_json(b"[1]"),
        Err(CloudEventError::Json(_))
    ));
}

#[test]
fn structured_json_embeds_json_data_and_base64_for_binary_data() {
    let json: serde_json::Value = serde_json::from_slice(&sample().to_json()).unwrap();
    assert_eq!(json["data"]["id"], 42, "JSON data is embedded as JSON");
    assert_eq!(json["specversion"], "1.0");
    assert_eq!(json["traceparent"], sample().extensions[TRACEPARENT]);
    let mut e = sample();
    e.datacontenttype = Some("application/octet-stream".into());
    e.data = Some(Bytes::from_static(&[0xff, 0, 1]));
    let json: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
    assert_eq!(json["data_base64"], "/wAB");
    assert!(json.get("data").is_none());
    e.datacontenttype = Some("text/plain".into());
    e.data = Some(Bytes::from_static(b"hello"));
    let json: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
    assert_eq!(json["data"], "hello", "text data is a JSON string");
}

#[test]
fn protocol_bindings_use_their_own_names() {
    let e = sample();
    let amqp = binding::encode(&e, Protocol::Amqp, ContentMode::Binary);
    assert_eq!(amqp.header("cloudEvents:id"), Some("e-1"));
    assert_eq!(amqp.header("cloudEvents:specversion"), Some("1.0"));
    assert_eq!(amqp.content_type.as_deref(), Some("application/json"));
    let kafka = binding::encode(&e, Protocol::Kafka, ContentMode::Binary);
    assert_eq!(kafka.header("ce_type"), Some("com.example.order.created"));
    let mqtt = binding::encode(&e, Protocol::Mqtt, ContentMode::Binary);
    assert_eq!(mqtt.header("correlationid"), Some("c-9"));
    let nats = binding::encode(&e, Protocol::Nats, ContentMode::Binary);
    assert_eq!(
        nats.header("ce-subject"),
        Some("order%2042%20%E2%80%93%20caf%C3%A9")
    );
    assert_eq!(nats.payload, e.data.clone().unwrap());
    let structured = binding::encode(&e, Protocol::RedisStreams, ContentMode::Structured);
    assert!(structured.headers.is_empty());
    assert_eq!(
        structured.content_type.as_deref(),
        Some(STRUCTURED_CONTENT_TYPE)
    );

    // AMQP's JMS-style prefix and HTTP's case-insensitive names are read too.
    let mut jms = amqp.clone();
    for (n, _) in &mut jms.headers {
        *n = n.replace("cloudEvents:", "cloudEvents_");
    }
    assert_eq!(binding::decode(&jms, Protocol::Amqp).unwrap(), e);
    let mut upper = binding::encode(&e, Protocol::Http, ContentMode::Binary);
    for (n, _) in &mut upper.headers {
        *n = n.replace("ce-", "CE-").to_uppercase();
    }
    assert_eq!(binding::decode(&upper, Protocol::Http).unwrap(), e);
}

#[test]
fn messages_that_are_not_events_are_refused_with_a_reason() {
    let plain = Message {
        headers: vec![],
        content_type: Some("application/json".into()),
        payload: Bytes::from_static(b"{}"),
    };
    let err = binding::decode(&plain, Protocol::Nats)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no `ce-specversion` header"), "{err}");
    let batch = Message {
        content_type: Some("application/cloudevents-batch+json".into()),
        ..plain.clone()
    };
    assert!(
        binding::decode(&batch, Protocol::Http)
            .unwrap_err()
            .to_string()
            .contains("batched")
    );
    let mut bad = binding::encode(&sample(), Protocol::Http, ContentMode::Binary);
    bad.headers.push(("ce-x".into(), "%FF".into()));
    assert!(matches!(
        binding::decode(&bad, Protocol::Http),
        Err(CloudEventError::Header(..))
    ));
    // Values from senders that do not percent-encode are read as written.
    let mut lax = binding::encode(&sample(), Protocol::Http, ContentMode::Binary);
    lax.headers.push(("ce-share".into(), "100% sure".into()));
    assert_eq!(
        binding::decode(&lax, Protocol::Http)
            .unwrap()
            .extension("share"),
        Some("100% sure")
    );
}

#[test]
fn a_message_that_is_no_event_is_wrapped_only_when_asked() {
    let plain = Message {
        headers: vec![("x-order".into(), "7".into())],
        content_type: Some("text/plain".into()),
        payload: bytes::Bytes::from_static(b"hello"),
    };
    let origin = binding::RawOrigin {
        source: "/bus/legacy.orders".into(),
        id: Some("17".into()),
    };
    assert!(binding::decode_or_wrap(&plain, Protocol::Nats, None).is_err());
    let e = binding::decode_or_wrap(&plain, Protocol::Nats, Some(origin.clone())).unwrap();
    assert_eq!(
        (e.id.as_str(), e.source.as_str(), e.ty.as_str()),
        ("17", "/bus/legacy.orders", binding::RAW_TYPE)
    );
    assert_eq!(e.datacontenttype.as_deref(), Some("text/plain"));
    assert_eq!(e.data.as_deref(), Some(&b"hello"[..]));
    // Without a stable broker id, a new one.
    let e = binding::decode_or_wrap(
        &plain,
        Protocol::Amqp,
        Some(binding::RawOrigin {
            id: None,
            ..origin.clone()
        }),
    )
    .unwrap();
    assert!(!e.id.is_empty());
    // A real CloudEvent is read as one, and a broken one stays an error.
    let event = sample();
    let m = binding::encode(&event, Protocol::Nats, ContentMode::Binary);
    let read = binding::decode_or_wrap(&m, Protocol::Nats, Some(origin.clone())).unwrap();
    assert_eq!(read.id, event.id);
    let broken = Message {
        content_type: Some("application/cloudevents+json".into()),
        ..plain
    };
    assert!(binding::decode_or_wrap(&broken, Protocol::Nats, Some(origin)).is_err());
}

#[test]
fn http_requests_are_passed_through_or_wrapped() {
    use ::http::HeaderMap;
    let (headers, body) = http::to_http(&sample(), ContentMode::Binary);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["ce-id"], "e-1");
    assert_eq!(
        http::event_from_request(&headers, body, "/x", "t").unwrap(),
        sample()
    );

    let mut headers = HeaderMap::new();
    headers.insert("content-type", "text/plain".parse().unwrap());
    headers.insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap(),
    );
    let e = http::event_from_request(
        &headers,
        Bytes::from_static(b"hi"),
        "orders",
        "ieum.publish.orders",
    )
    .unwrap();
    assert_eq!(
        (e.source.as_str(), e.ty.as_str()),
        ("orders", "ieum.publish.orders")
    );
    assert_eq!(e.datacontenttype.as_deref(), Some("text/plain"));
    assert_eq!(
        e.extension(TRACEPARENT),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );
    assert!(e.time.as_deref().is_some_and(is_rfc3339));
    assert_eq!(e.id.len(), 36);
    assert_eq!(&e.id[14..15], "4", "a UUID v4");
    assert_ne!(
        e.id,
        http::event_from_request(&headers, Bytes::new(), "o", "t")
            .unwrap()
            .id
    );

    // Claiming to be an event but failing to be one is an error, not a raw payload.
    let mut headers = HeaderMap::new();
    headers.insert("ce-specversion", "1.0".parse().unwrap());
    assert_eq!(
        http::event_from_request(&headers, Bytes::new(), "o", "t"),
        Err(CloudEventError::Missing("id"))
    );
}

fn text() -> impl Strategy<Value = String> {
    // Printable Unicode without controls, including spaces, quotes, `%` and non-ASCII.
    "[ -~é–☃\"%]{1,24}"
}

fn event() -> impl Strategy<Value = CloudEvent> {
    let data = prop_oneof![
        Just(None),
        proptest::collection::vec(any::<u8>(), 1..64).prop_map(|b| Some(Bytes::from(b))),
        "[a-z ]{1,20}".prop_map(|s| Some(Bytes::from(serde_json::json!({"s": s}).to_string()))),
        text().prop_map(|s| Some(Bytes::from(s))),
    ];
    (
        (text(), text(), text()),
        proptest::option::of(prop_oneof![
            Just("application/json".to_owned()),
            Just("text/plain; charset=utf-8".to_owned()),
            Just("application/octet-stream".to_owned()),
            Just("application/vnd.x+json".to_owned()),
        ]),
        proptest::option::of("https://[a-z]{1,8}\\.example/[a-z]{0,8}"),
        proptest::option::of(text()),
        proptest::option::of(Just("2026-11-26T06:48:30.25-05:00".to_owned())),
        proptest::collection::btree_map("[a-z][a-z0-9]{0,19}", text(), 0..5),
        data,
    )
        .prop_map(
            |((id, source, ty), dct, schema, subject, time, mut ext, data)| {
                for reserved in CONTEXT.iter().chain(&["data"]) {
                    ext.remove(*reserved);
                }
                CloudEvent {
                    id,
                    source,
                    ty,
                    datacontenttype: dct,
                    dataschema: schema,
                    subject,
                    time,
                    extensions: ext,
                    data,
                }
            },
        )
}

proptest! {
    #[test]
    fn every_binding_round_trips_in_both_modes(e in event()) {
        prop_assert_eq!(e.validate(), Ok(()));
        for protocol in Protocol::ALL {
            for mode in [ContentMode::Binary, ContentMode::Structured] {
                let message = binding::encode(&e, protocol, mode);
                prop_assert_eq!(binding::mode_of(&message, protocol), Some(mode));
                let back = binding::decode(&message, protocol);
                prop_assert_eq!(back.as_ref(), Ok(&e), "{:?} {:?}", protocol, mode);
            }
        }
        for mode in [ContentMode::Binary, ContentMode::Structured] {
            let (headers, body) = http::to_http(&e, mode);
            prop_assert_eq!(http::from_http(&headers, body), Ok(e.clone()));
        }
    }

    #[test]
    fn percent_encoding_round_trips_to_printable_ascii(s in "\\PC{0,40}") {
        let encoded = binding::percent_encode(&s);
        prop_assert!(encoded.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b'"'));
        prop_assert_eq!(binding::percent_decode(&encoded), Ok(s));
    }
}
