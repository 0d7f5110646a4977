//! The HTTP binding, both ways: what the sidecar reads from `POST
//! /v1/publish/{pubsub}/{topic}` and writes when it delivers an event to an app.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use ieum_model::bridge::ContentMode;

use super::binding::{self, Message, Protocol};
use super::{CloudEvent, CloudEventError, TRACEPARENT, TRACESTATE};

/// Writes an event as HTTP headers and a body, in `mode`.
pub fn to_http(event: &CloudEvent, mode: ContentMode) -> (HeaderMap, Bytes) {
    let message = binding::encode(event, Protocol::Http, mode);
    let mut headers = HeaderMap::with_capacity(message.headers.len() + 1);
    for (name, value) in &message.headers {
        // Names are `ce-` + a lowercase attribute name and values are percent-encoded
        // printable ASCII: both always valid.
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(n, v);
        }
    }
    if let Some(v) = message
        .content_type
        .as_deref()
        .and_then(|ct| HeaderValue::from_str(ct).ok())
    {
        headers.insert(CONTENT_TYPE, v);
    }
    (headers, message.payload)
}

/// Whether a request claims to carry a CloudEvent (a `ce-specversion` header or a
/// structured content type). A request that claims one but fails to parse is an error for
/// the sender, not a raw payload to wrap.
pub fn is_cloudevent(headers: &HeaderMap) -> bool {
    binding::mode_of(&message(headers, Bytes::new()), Protocol::Http).is_some()
}

/// Reads a CloudEvent from HTTP headers and body, in either mode, and validates it.
pub fn from_http(headers: &HeaderMap, body: Bytes) -> Result<CloudEvent, CloudEventError> {
    binding::decode(&message(headers, body), Protocol::Http)
}

/// What the sidecar publishes for a request: the CloudEvent it carries (passed through
/// after validation), or its raw body wrapped as a new event from `source` of type `ty`,
/// with the request's `Content-Type`, its W3C trace context (`traceparent`, `tracestate`
/// headers) as extensions, and any `ce-subject`, `ce-dataschema` or extension header
/// (`ce-correlationid`, `ce-partitionkey`, …; values percent-decoded as the HTTP binding
/// says) as the attribute it names. `ce-id`, `ce-source` and `ce-time` are the sidecar's
/// to set and are refused on a raw body.
pub fn event_from_request(
    headers: &HeaderMap,
    body: Bytes,
    source: &str,
    ty: &str,
) -> Result<CloudEvent, CloudEventError> {
    if is_cloudevent(headers) {
        return from_http(headers, body);
    }
    let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let mut event = CloudEvent::wrap(source, ty, content_type, body);
    for (name, value) in headers.iter() {
        let Some(attribute) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        let value = binding::percent_decode(&String::from_utf8_lossy(value.as_bytes()))
            .map_err(|why| CloudEventError::Header(name.to_string(), why))?;
        match attribute {
            "type" => {}
            "subject" => event.subject = Some(value),
            "dataschema" => event.dataschema = Some(value),
            "id" | "source" | "time" | "datacontenttype" => {
                return Err(CloudEventError::Header(
                    name.to_string(),
                    format!(
                        "a raw body gets its {attribute} from the sidecar; send a whole CloudEvent (with ce-specversion) to set it"
                    ),
                ));
            }
            extension => event.set_extension(extension, value)?,
        }
    }
    for name in [TRACEPARENT, TRACESTATE] {
        if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
            event.extensions.insert(name.to_owned(), v.to_owned());
        }
    }
    event.validate()?;
    Ok(event)
}

fn message(headers: &HeaderMap, body: Bytes) -> Message {
    Message {
        headers: headers
            .iter()
            .filter(|(n, _)| n.as_str().starts_with("ce-"))
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        content_type: headers
            .get(CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        payload: body,
    }
}
