//! The CloudEvents protocol bindings, as one neutral [`Message`] (named headers, a content
//! type, a payload) that each broker maps onto its native message one to one.
//!
//! | protocol | binary mode: attributes as | `datacontenttype` as | structured mode | spec |
//! | --- | --- | --- | --- | --- |
//! | HTTP | `ce-` headers, percent-encoded | `Content-Type` | JSON body | HTTP binding 1.0.2 |
//! | AMQP (RabbitMQ) | `cloudEvents:` application properties (headers table); `cloudEvents_` also read | `content-type` property | JSON body | AMQP binding 1.0.2 |
//! | MQTT 5 | user properties named as the attributes | Content Type property | JSON payload | MQTT binding 1.0.2 |
//! | NATS | `ce-` headers, percent-encoded as in HTTP | `content-type` header | JSON payload | NATS binding 1.0.1 |
//! | Kafka | `ce_` headers | `content-type` header | JSON value | Kafka binding 1.0.2 |
//! | Redis Streams | `ce_` fields | `content-type` field | JSON in the `data` field | none: ieum's choice |
//!
//! Redis Streams has no official binding. Its entries are flat field/value lists, so ieum
//! follows the Kafka binding (the closest model: a log of records with headers): attribute
//! `x` is field `ce_x`, the content type is field `content-type` and the payload is field
//! `data` (absent without data). A structured entry has `content-type:
//! application/cloudevents+json` and the JSON event in `data`.
//!
//! Percent-encoding (HTTP and NATS headers) follows the HTTP binding: space, `"`, `%` and
//! everything outside printable ASCII is written `%XX` of its UTF-8 bytes. The other
//! bindings carry UTF-8 as is.

use bytes::Bytes;
use ieum_model::bridge::ContentMode;

use super::{CloudEvent, CloudEventError, STRUCTURED_CONTENT_TYPE};

/// A protocol with a CloudEvents binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// HTTP (the sidecar's API and deliveries to apps).
    Http,
    /// AMQP (RabbitMQ's headers table).
    Amqp,
    /// MQTT 5 (user properties).
    Mqtt,
    /// NATS (message headers).
    Nats,
    /// Kafka (record headers).
    Kafka,
    /// Redis Streams (entry fields).
    RedisStreams,
}

impl Protocol {
    /// Every protocol.
    pub const ALL: [Protocol; 6] = [
        Protocol::Http,
        Protocol::Amqp,
        Protocol::Mqtt,
        Protocol::Nats,
        Protocol::Kafka,
        Protocol::RedisStreams,
    ];

    /// The prefix of an attribute's header or property name in binary mode.
    pub fn prefix(self) -> &'static str {
        match self {
            Protocol::Http | Protocol::Nats => "ce-",
            Protocol::Amqp => "cloudEvents:",
            Protocol::Mqtt => "",
            Protocol::Kafka | Protocol::RedisStreams => "ce_",
        }
    }

    /// Whether header names compare without regard to case (HTTP-style headers).
    fn case_insensitive(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Nats)
    }

    /// Whether values are percent-encoded (headers limited to printable ASCII).
    fn percent_encoded(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Nats)
    }
}

/// A message as a protocol carries it, before it becomes the broker's own type.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    /// Headers, properties or fields, in order (names as the protocol spells them).
    pub headers: Vec<(String, String)>,
    /// The protocol's own content type.
    pub content_type: Option<String>,
    /// The payload.
    pub payload: Bytes,
}

impl Message {
    /// A header's value, by exact name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Lays an event out for `protocol` in `mode`.
pub fn encode(event: &CloudEvent, protocol: Protocol, mode: ContentMode) -> Message {
    match mode {
        ContentMode::Structured => Message {
            headers: Vec::new(),
            content_type: Some(STRUCTURED_CONTENT_TYPE.to_owned()),
            payload: Bytes::from(event.to_json()),
        },
        ContentMode::Binary => {
            let prefix = protocol.prefix();
            let headers = event
                .header_attributes()
                .into_iter()
                .map(|(name, value)| {
                    let value = if protocol.percent_encoded() {
                        percent_encode(value)
                    } else {
                        value.to_owned()
                    };
                    (format!("{prefix}{name}"), value)
                })
                .collect();
            Message {
                headers,
                content_type: event.datacontenttype.clone(),
                payload: event.data.clone().unwrap_or_default(),
            }
        }
    }
}

/// The content mode of a message: structured when its content type is
/// `application/cloudevents+json`, binary when it carries a `specversion` attribute,
/// `None` when it is no CloudEvent at all.
pub fn mode_of(message: &Message, protocol: Protocol) -> Option<ContentMode> {
    if message.content_type.as_deref().is_some_and(is_structured) {
        return Some(ContentMode::Structured);
    }
    binary_name(message, protocol, "specversion").map(|_| ContentMode::Binary)
}

fn is_structured(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .eq_ignore_ascii_case(STRUCTURED_CONTENT_TYPE)
}

fn binary_name<'a>(message: &'a Message, protocol: Protocol, attr: &str) -> Option<&'a str> {
    message.headers.iter().find_map(|(n, _)| {
        attribute_name(protocol, n).filter(|a| {
            if protocol.case_insensitive() {
                a.eq_ignore_ascii_case(attr)
            } else {
                *a == attr
            }
        })
    })
}

/// The attribute a header name carries in binary mode, if any.
fn attribute_name(protocol: Protocol, header: &str) -> Option<&str> {
    let strip = |prefix: &str| -> Option<&str> {
        let head = header.get(..prefix.len())?;
        let matches = if protocol.case_insensitive() {
            head.eq_ignore_ascii_case(prefix)
        } else {
            head == prefix
        };
        matches.then(|| &header[prefix.len()..])
    };
    match protocol {
        // The AMQP binding's `cloudEvents_` form is for JMS-style property names.
        Protocol::Amqp => strip("cloudEvents:").or_else(|| strip("cloudEvents_")),
        // MQTT user properties share one namespace with the application's own; only valid
        // attribute names are read as attributes.
        Protocol::Mqtt => Some(header).filter(|h| super::is_attribute_name(h)),
        _ => strip(protocol.prefix()),
    }
}

/// Reads the event a message carries, in whichever mode it was written, and validates it.
pub fn decode(message: &Message, protocol: Protocol) -> Result<CloudEvent, CloudEventError> {
    match mode_of(message, protocol) {
        Some(ContentMode::Structured) => CloudEvent::from_json(&message.payload),
        Some(ContentMode::Binary) => {
            let mut attributes = Vec::with_capacity(message.headers.len());
            for (header, value) in &message.headers {
                // HTTP-style header names are case-insensitive; attribute names lowercase.
                let header_name = if protocol.case_insensitive() {
                    header.to_ascii_lowercase()
                } else {
                    header.clone()
                };
                let Some(name) = attribute_name(protocol, &header_name) else {
                    continue;
                };
                let value = if protocol.percent_encoded() {
                    percent_decode(value).map_err(|e| CloudEventError::Header(header.clone(), e))?
                } else {
                    value.clone()
                };
                attributes.push((name.to_owned(), value));
            }
            CloudEvent::from_attributes(
                attributes,
                message.content_type.clone(),
                Some(message.payload.clone()),
            )
        }
        None => {
            let got = match &message.content_type {
                Some(ct) if ct.to_ascii_lowercase().contains("cloudevents-batch") => {
                    return Err(CloudEventError::NotAnEvent(format!(
                        "batched events (`{ct}`) are not supported: send one event per message"
                    )));
                }
                Some(ct) => format!("content type `{ct}`"),
                None => "no content type".to_owned(),
            };
            Err(CloudEventError::NotAnEvent(format!(
                "no `{}specversion` {} and {got}; send a structured event ({STRUCTURED_CONTENT_TYPE}) or binary attributes",
                protocol.prefix(),
                if protocol == Protocol::Mqtt {
                    "user property"
                } else {
                    "header"
                }
            )))
        }
    }
}

/// The `type` of an event wrapped around a message that is no CloudEvent.
pub const RAW_TYPE: &str = "ieum.binding.message";

/// Where a message that is no CloudEvent came from (see [`decode_or_wrap`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawOrigin {
    /// The wrapped event's `source`: `/{pubsub}/{topic}`.
    pub source: String,
    /// The broker's own id of the message, when it has a stable one (a stream sequence,
    /// an entry id, a partition and offset): the wrapped event's `id`, so a redelivery
    /// keeps it and the app can de-duplicate. Without one the id is new on every delivery.
    pub id: Option<String>,
}

/// Reads the event a message carries; or, when it carries none and `raw` says where it
/// came from, wraps its payload as a new event (`source` and `id` from `raw`, `type`
/// [`RAW_TYPE`], `datacontenttype` the message's content type). Input bindings read
/// queues fed by systems that do not speak CloudEvents this way. A message that claims to
/// be a CloudEvent but is broken is still an error.
pub fn decode_or_wrap(
    message: &Message,
    protocol: Protocol,
    raw: Option<RawOrigin>,
) -> Result<CloudEvent, CloudEventError> {
    match (mode_of(message, protocol), raw) {
        (None, Some(origin)) => {
            let mut event = CloudEvent::wrap(
                &origin.source,
                RAW_TYPE,
                message.content_type.as_deref(),
                message.payload.clone(),
            );
            if let Some(id) = origin.id.filter(|id| !id.is_empty()) {
                event.id = id;
            }
            event.validate()?;
            Ok(event)
        }
        _ => decode(message, protocol),
    }
}

/// Percent-encodes a header value as the HTTP binding says.
pub fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if (0x21..=0x7e).contains(&b) && b != b'"' && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reverses [`percent_encode`]; the result must be UTF-8. A `%` not followed by two hex
/// digits is kept as is: senders that predate the percent-encoding rule (the Python SDK
/// 1.x, for one) write values like `100%` unencoded.
pub fn percent_decode(value: &str) -> Result<String, String> {
    if !value.contains('%') {
        return Ok(value.to_owned());
    }
    let b = value.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let escaped = (b[i] == b'%')
            .then(|| b.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| "percent-encoded bytes are not UTF-8".to_owned())
}
