//! CloudEvents 1.0: the event type, its validation, the JSON event format (structured
//! mode) and the protocol bindings ([`http`], [`binding`]).
//!
//! **Attribute values are strings.** Binary mode carries every attribute as text, so a
//! typed extension (a JSON number or boolean in structured mode) is read as its canonical
//! string (`42`, `true`) and written back as a JSON string. An event then reads the same in
//! every binding and mode, which is what lets the bridge pass events through unchanged.
//!
//! **Data is bytes.** In structured mode, data whose `datacontenttype` is JSON (or absent,
//! as the JSON format says) is embedded as JSON when it is exactly one JSON value without
//! surrounding whitespace, text data of another type as a JSON string, anything else as
//! `data_base64`; reading gives back the same bytes. An empty payload is no data.

pub mod binding;
pub mod http;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use base64::Engine as _;
use bytes::Bytes;
use serde_json::value::RawValue;

/// The only `specversion` this bridge reads and writes.
pub const SPEC_VERSION: &str = "1.0";
/// The media type of a structured-mode event in the JSON format.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";
/// The W3C trace context extension (distributed tracing), carried through the broker so a
/// trace continues from publisher to subscriber.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C `tracestate` companion of [`TRACEPARENT`].
pub const TRACESTATE: &str = "tracestate";
/// Correlates the events of one business exchange (the UI lists them together).
pub const CORRELATION_ID: &str = "correlationid";
/// The partitioning extension: the ordering key of the event.
pub const PARTITION_KEY: &str = "partitionkey";
/// Set on a dead-lettered event: why it was dead-lettered.
pub const DEAD_LETTER_REASON: &str = "deadletterreason";
/// Set on a dead-lettered event: how many deliveries were tried.
pub const DEAD_LETTER_ATTEMPTS: &str = "deadletterattempts";
/// Set on a dead-lettered event: the topic it was consumed from.
pub const DEAD_LETTER_TOPIC: &str = "deadlettertopic";

/// Context attributes defined by the spec (not extensions).
const CONTEXT: [&str; 8] = [
    "id",
    "source",
    "specversion",
    "type",
    "datacontenttype",
    "dataschema",
    "subject",
    "time",
];

/// One CloudEvent (spec 1.0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudEvent {
    /// Identifies the event; `source` + `id` is unique per distinct event.
    pub id: String,
    /// The context the event happened in (a URI-reference; for events ieum wraps, the
    /// publishing service).
    pub source: String,
    /// The kind of occurrence (`type` in the spec; `com.example.order.created`).
    pub ty: String,
    /// The media type of `data`.
    pub datacontenttype: Option<String>,
    /// The schema `data` adheres to (an absolute URI).
    pub dataschema: Option<String>,
    /// The subject of the event within its source.
    pub subject: Option<String>,
    /// When the occurrence happened (RFC 3339), kept as written so an event passes through
    /// unchanged.
    pub time: Option<String>,
    /// Extension attributes, by name (`traceparent`, `correlationid`, `partitionkey`…).
    pub extensions: BTreeMap<String, String>,
    /// The payload; `None` when the event has none.
    pub data: Option<Bytes>,
}

/// Why an event, or a message meant to carry one, was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloudEventError {
    /// A required attribute is absent.
    #[error("the required attribute `{0}` is missing")]
    Missing(&'static str),
    /// An attribute is present but empty where the spec wants a value.
    #[error("the attribute `{0}` must not be empty")]
    Empty(String),
    /// `specversion` is not 1.0.
    #[error("specversion `{0}` is not supported: use 1.0")]
    SpecVersion(String),
    /// An attribute name breaks the naming rule.
    #[error("`{0}` is not a CloudEvents attribute name: use lowercase letters a-z and digits only")]
    Name(String),
    /// An extension takes a name the event format reserves.
    #[error("`{0}` is reserved by the event format and cannot be an extension attribute")]
    Reserved(String),
    /// An attribute value holds control characters.
    #[error("the attribute `{0}` holds control characters, which CloudEvents strings exclude")]
    Control(String),
    /// `time` is not RFC 3339.
    #[error("time `{0}` is not an RFC 3339 timestamp, like 2026-11-26T06:48:30Z")]
    Time(String),
    /// `dataschema` is not an absolute URI.
    #[error("dataschema `{0}` is not an absolute URI, like https://example.com/schema.json")]
    DataSchema(String),
    /// An attribute has a JSON type CloudEvents does not allow.
    #[error("the attribute `{0}` must be a string, a number or a boolean")]
    Type(String),
    /// The structured form is not a JSON object.
    #[error("not a CloudEvent in JSON: {0}")]
    Json(String),
    /// `data_base64` is not base64.
    #[error("data_base64 is not valid base64: {0}")]
    Base64(String),
    /// `data` and `data_base64` are both set.
    #[error("an event has `data` or `data_base64`, not both")]
    BothData,
    /// A header or property value could not be read.
    #[error("the header `{0}` is not valid: {1}")]
    Header(String, String),
    /// The message is not a CloudEvent this bridge reads.
    #[error("not a CloudEvent: {0}")]
    NotAnEvent(String),
}

impl CloudEvent {
    /// An event with the three attributes every event needs besides `specversion`.
    pub fn new(id: impl Into<String>, source: impl Into<String>, ty: impl Into<String>) -> Self {
        CloudEvent {
            id: id.into(),
            source: source.into(),
            ty: ty.into(),
            datacontenttype: None,
            dataschema: None,
            subject: None,
            time: None,
            extensions: BTreeMap::new(),
            data: None,
        }
    }

    /// Wraps a raw payload: a new random id (UUID v4), `time` now, the payload's content
    /// type as `datacontenttype`. This is what the sidecar does with a plain publish body.
    pub fn wrap(
        source: impl Into<String>,
        ty: impl Into<String>,
        content_type: Option<&str>,
        data: Bytes,
    ) -> Self {
        let mut event = CloudEvent::new(new_id(), source, ty);
        event.time = Some(now_rfc3339());
        event.datacontenttype = content_type.map(str::to_owned);
        event.data = (!data.is_empty()).then_some(data);
        event
    }

    /// An extension's value.
    pub fn extension(&self, name: &str) -> Option<&str> {
        self.extensions.get(name).map(String::as_str)
    }

    /// Sets an extension, checking its name.
    pub fn set_extension(
        &mut self,
        name: &str,
        value: impl Into<String>,
    ) -> Result<(), CloudEventError> {
        check_extension_name(name)?;
        self.extensions.insert(name.to_owned(), value.into());
        Ok(())
    }

    /// Any attribute by name, context or extension (`specversion` included): how an
    /// ordering key such as `subject` or `partitionkey` is looked up.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        match name {
            "id" => Some(&self.id),
            "source" => Some(&self.source),
            "specversion" => Some(SPEC_VERSION),
            "type" => Some(&self.ty),
            "datacontenttype" => self.datacontenttype.as_deref(),
            "dataschema" => self.dataschema.as_deref(),
            "subject" => self.subject.as_deref(),
            "time" => self.time.as_deref(),
            other => self.extension(other),
        }
    }

    /// Every attribute but `datacontenttype` (which bindings carry in their own content
    /// type) as name and value, `specversion` included: what binary mode writes.
    pub fn header_attributes(&self) -> Vec<(&str, &str)> {
        let mut out = vec![
            ("specversion", SPEC_VERSION),
            ("id", self.id.as_str()),
            ("source", self.source.as_str()),
            ("type", self.ty.as_str()),
        ];
        for (name, value) in [
            ("dataschema", &self.dataschema),
            ("subject", &self.subject),
            ("time", &self.time),
        ] {
            if let Some(v) = value {
                out.push((name, v.as_str()));
            }
        }
        out.extend(
            self.extensions
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        out
    }

    /// Builds an event from attributes read in binary mode (`specversion` required) and
    /// its payload, then validates it.
    pub fn from_attributes<N: AsRef<str>>(
        attributes: impl IntoIterator<Item = (N, String)>,
        datacontenttype: Option<String>,
        data: Option<Bytes>,
    ) -> Result<CloudEvent, CloudEventError> {
        let mut event = CloudEvent::new("", "", "");
        let (mut id, mut source, mut ty, mut version) = (None, None, None, None);
        for (name, value) in attributes {
            match name.as_ref() {
                "id" => id = Some(value),
                "source" => source = Some(value),
                "type" => ty = Some(value),
                "specversion" => version = Some(value),
                "datacontenttype" => event.datacontenttype = Some(value),
                "dataschema" => event.dataschema = Some(value),
                "subject" => event.subject = Some(value),
                "time" => event.time = Some(value),
                reserved @ ("data" | "data_base64") => {
                    return Err(CloudEventError::Reserved(reserved.to_owned()));
                }
                ext => {
                    check_extension_name(ext)?;
                    event.extensions.insert(ext.to_owned(), value);
                }
            }
        }
        match version {
            None => return Err(CloudEventError::Missing("specversion")),
            Some(v) if v != SPEC_VERSION => return Err(CloudEventError::SpecVersion(v)),
            Some(_) => {}
        }
        event.id = id.ok_or(CloudEventError::Missing("id"))?;
        event.source = source.ok_or(CloudEventError::Missing("source"))?;
        event.ty = ty.ok_or(CloudEventError::Missing("type"))?;
        if datacontenttype.is_some() {
            event.datacontenttype = datacontenttype;
        }
        event.data = data.filter(|d| !d.is_empty());
        event.validate()?;
        Ok(event)
    }

    /// Checks the event against the spec: required attributes present and non-empty,
    /// attribute names, `time` in RFC 3339, `dataschema` an absolute URI, no control
    /// characters in values.
    pub fn validate(&self) -> Result<(), CloudEventError> {
        for (name, value) in [
            ("id", &self.id),
            ("source", &self.source),
            ("type", &self.ty),
        ] {
            if value.is_empty() {
                return Err(CloudEventError::Empty(name.to_owned()));
            }
        }
        for (name, value) in [
            ("datacontenttype", &self.datacontenttype),
            ("dataschema", &self.dataschema),
            ("subject", &self.subject),
            ("time", &self.time),
        ] {
            if value.as_ref().is_some_and(String::is_empty) {
                return Err(CloudEventError::Empty(name.to_owned()));
            }
        }
        for name in self.extensions.keys() {
            check_extension_name(name)?;
        }
        for (name, value) in self.header_attributes().into_iter().chain(
            self.datacontenttype
                .as_deref()
                .map(|v| ("datacontenttype", v)),
        ) {
            if value.chars().any(char::is_control) {
                return Err(CloudEventError::Control(name.to_owned()));
            }
        }
        if let Some(t) = &self.time
            && !is_rfc3339(t)
        {
            return Err(CloudEventError::Time(t.clone()));
        }
        if let Some(s) = &self.dataschema
            && !is_absolute_uri(s)
        {
            return Err(CloudEventError::DataSchema(s.clone()));
        }
        Ok(())
    }

    /// The event in the JSON format (structured mode).
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = String::with_capacity(256 + self.data.as_ref().map_or(0, Bytes::len));
        out.push('{');
        let mut first = true;
        let mut field = |out: &mut String, name: &str, value: &str| {
            if !first {
                out.push(',');
            }
            first = false;
            let _ = write!(out, "{}:{}", json_string(name), json_string(value));
        };
        for (name, value) in self.header_attributes() {
            field(&mut out, name, value);
        }
        if let Some(ct) = &self.datacontenttype {
            field(&mut out, "datacontenttype", ct);
        }
        if let Some(data) = &self.data {
            let json = self
                .datacontenttype
                .as_deref()
                .is_none_or(is_json_media_type);
            match std::str::from_utf8(data) {
                Ok(text) if json && is_exact_json(text) => {
                    out.push_str(",\"data\":");
                    out.push_str(text);
                }
                Ok(text) if !json => {
                    out.push_str(",\"data\":");
                    out.push_str(&json_string(text));
                }
                _ => {
                    let encoded = base64::engine::general_purpose::STANDARD.encode(data);
                    let _ = write!(out, ",\"data_base64\":{}", json_string(&encoded));
                }
            }
        }
        out.push('}');
        out.into_bytes()
    }

    /// Reads an event in the JSON format (structured mode) and validates it.
    pub fn from_json(bytes: &[u8]) -> Result<CloudEvent, CloudEventError> {
        let fields: BTreeMap<String, &RawValue> = serde_json::from_slice(bytes)
            .map_err(|e| CloudEventError::Json(format!("{e}: send a JSON object")))?;
        let mut attributes = Vec::new();
        let (mut data, mut data_base64) = (None, None);
        for (name, raw) in &fields {
            match name.as_str() {
                "data" => {
                    if raw.get() != "null" {
                        data = Some(*raw);
                    }
                }
                "data_base64" => match serde_json::from_str::<Option<String>>(raw.get()) {
                    Ok(v) => data_base64 = v,
                    Err(_) => return Err(CloudEventError::Type(name.clone())),
                },
                _ => {
                    let value: serde_json::Value = serde_json::from_str(raw.get())
                        .map_err(|e| CloudEventError::Json(e.to_string()))?;
                    let text = match value {
                        serde_json::Value::Null => continue,
                        serde_json::Value::String(s) => s,
                        serde_json::Value::Number(n) if !CONTEXT.contains(&name.as_str()) => {
                            n.to_string()
                        }
                        serde_json::Value::Bool(b) if !CONTEXT.contains(&name.as_str()) => {
                            b.to_string()
                        }
                        _ => return Err(CloudEventError::Type(name.clone())),
                    };
                    attributes.push((name.as_str(), text));
                }
            }
        }
        let datacontenttype = attributes
            .iter()
            .find(|(n, _)| *n == "datacontenttype")
            .map(|(_, v)| v.clone());
        let data = match (data, data_base64) {
            (Some(_), Some(_)) => return Err(CloudEventError::BothData),
            (None, Some(b64)) => Some(Bytes::from(
                base64::engine::general_purpose::STANDARD
                    .decode(b64.as_bytes())
                    .map_err(|e| CloudEventError::Base64(e.to_string()))?,
            )),
            (Some(raw), None) => {
                let json = datacontenttype.as_deref().is_none_or(is_json_media_type);
                match serde_json::from_str::<String>(raw.get()) {
                    Ok(text) if !json => Some(Bytes::from(text)),
                    _ => Some(Bytes::copy_from_slice(raw.get().as_bytes())),
                }
            }
            (None, None) => None,
        };
        CloudEvent::from_attributes(attributes, None, data)
    }
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

/// One JSON value, with no whitespace around it (so reading it back gives the same bytes).
fn is_exact_json(text: &str) -> bool {
    text.trim() == text && serde_json::from_str::<&RawValue>(text).is_ok()
}

/// Whether a media type is JSON: `application/json`, `text/json` or any `…+json`.
pub fn is_json_media_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

fn check_extension_name(name: &str) -> Result<(), CloudEventError> {
    if name == "data" || name == "data_base64" || CONTEXT.contains(&name) {
        return Err(CloudEventError::Reserved(name.to_owned()));
    }
    if !is_attribute_name(name) {
        return Err(CloudEventError::Name(name.to_owned()));
    }
    Ok(())
}

/// Whether `name` follows the attribute naming rule: lowercase ASCII letters and digits.
pub fn is_attribute_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

fn is_absolute_uri(s: &str) -> bool {
    match s.split_once(':') {
        Some((scheme, rest)) => {
            !rest.is_empty()
                && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
                && !s.chars().any(char::is_whitespace)
        }
        None => false,
    }
}

/// Whether `s` is an RFC 3339 `date-time` (`2026-11-26T06:48:30.5+09:00`).
pub fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<u32> {
        let part = b.get(from..from + len)?;
        part.iter()
            .all(u8::is_ascii_digit)
            .then(|| part.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
    };
    let sep = |at: usize, allowed: &[u8]| b.get(at).is_some_and(|c| allowed.contains(c));
    let (Some(year), Some(month), Some(day), Some(hour), Some(min), Some(sec)) = (
        num(0, 4),
        num(5, 2),
        num(8, 2),
        num(11, 2),
        num(14, 2),
        num(17, 2),
    ) else {
        return false;
    };
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt") && sep(13, b":") && sep(16, b":")) {
        return false;
    }
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    if day == 0 || day > days || hour > 23 || min > 59 || sec > 60 {
        return false;
    }
    let mut i = 19;
    if sep(i, b".") {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    match b.get(i) {
        Some(b'Z' | b'z') => i + 1 == b.len(),
        Some(b'+' | b'-') => {
            i + 6 == b.len()
                && sep(i + 3, b":")
                && num(i + 1, 2).is_some_and(|h| h <= 23)
                && num(i + 4, 2).is_some_and(|m| m <= 59)
        }
        _ => false,
    }
}

/// A random UUID v4, the id of events ieum creates.
pub fn new_id() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The current time in RFC 3339 with milliseconds, UTC.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests;
