//! Request extractors that turn every kind of bad input into a coded 4xx.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use ieum_model::Name;
use ieum_model::instance::valid_instance_id;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Largest request body accepted.
pub(crate) const MAX_BODY: usize = 1024 * 1024;

/// A JSON body, parsed strictly: malformed JSON, unknown fields and wrong types are 400s
/// that name the field.
#[derive(Debug)]
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(body_rejection)?;
        parse_json(&bytes).map(JsonBody)
    }
}

fn body_rejection(r: BytesRejection) -> ApiError {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "E1003",
            format!("the body is larger than {} KiB", MAX_BODY / 1024),
        )
    } else {
        ApiError::new(r.status(), "E1000", format!("could not read the body: {r}"))
    }
}

/// Parses a JSON object with the path of the field at fault.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "E1001",
            "the body is empty: send a JSON object",
        ));
    }
    // Every body is an object; serde would otherwise read a struct from an array by position.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "E1005",
            "the body must be a JSON object (`{...}`)",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let inner = e.into_inner();
        let message = inner.to_string();
        match inner.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "E1001",
                    format!("malformed JSON: {message}"),
                )
            }
            _ if message.starts_with("unknown field") => {
                ApiError::new(StatusCode::BAD_REQUEST, "E1002", strip_position(&message))
                    .field(path)
            }
            _ => ApiError::new(StatusCode::BAD_REQUEST, "E1005", strip_position(&message))
                .field(path),
        }
    })
}

/// serde_json appends " at line 1 column 17"; the field path says more.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// The `{name}` of a path, checked as a DNS-1123 label.
#[derive(Debug)]
pub(crate) struct ServiceName(pub(crate) Name);

impl<S: Send + Sync> FromRequestParts<S> for ServiceName {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(params) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "E1000", e.to_string()))?;
        let raw = params.get("name").map(String::as_str).unwrap_or_default();
        Ok(ServiceName(Name::parse_field(raw, "name").map_err(
            |e| {
                ApiError::from(ieum_model::ValidationError::new(
                    "E1004",
                    "name",
                    format!("service name {}", e.message),
                ))
            },
        )?))
    }
}

/// The `{name}` and `{id}` of an instance path, both checked.
#[derive(Debug)]
pub(crate) struct InstancePath(pub(crate) Name, pub(crate) String);

impl<S: Send + Sync> FromRequestParts<S> for InstancePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let ServiceName(name) = ServiceName::from_request_parts(parts, state).await?;
        let Path(params) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "E1000", e.to_string()))?;
        let id = params.get("id").cloned().unwrap_or_default();
        if !valid_instance_id(&id) {
            return Err(ieum_model::ValidationError::new(
                "E1205",
                "id",
                format!(
                    "`{id}` is not an instance id: 1 to 128 letters, digits, `.`, `_`, `:` or `-`"
                ),
            )
            .into());
        }
        Ok(InstancePath(name, id))
    }
}

/// Query parameters, each parsed with an error that names it.
#[derive(Debug)]
pub(crate) struct QueryParams(HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        let mut map = HashMap::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| {
                percent_decode(s).ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "E1006",
                        format!("query parameter `{k}` is not valid percent-encoding"),
                    )
                })
            };
            map.insert(decode(k)?, decode(v)?);
        }
        Ok(QueryParams(map))
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

impl QueryParams {
    /// Rejects parameters outside `allowed`, so a typo is not silently ignored.
    pub(crate) fn only(&self, allowed: &[&str]) -> Result<(), ApiError> {
        for k in self.0.keys() {
            if !allowed.contains(&k.as_str()) {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "E1006",
                    format!("unknown query parameter `{k}`: use {}", allowed.join(", ")),
                )
                .field(k.clone()));
            }
        }
        Ok(())
    }

    /// The raw value of `key`.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// `key` parsed with `parse`, whose error message is shown to the caller.
    pub(crate) fn parse<T>(
        &self,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ApiError> {
        self.get(key)
            .map(|v| {
                parse(v).map_err(|m| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "E1006",
                        format!("query parameter `{key}`: {m}"),
                    )
                    .field(key)
                })
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b+c").as_deref(), Some("a b c"));
        assert_eq!(
            percent_decode("2026-11-26T06%3A00%3A00Z").as_deref(),
            Some("2026-11-26T06:00:00Z")
        );
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
    }

    #[test]
    fn json_errors_name_the_field() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct T {
            a: Inner,
        }
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Inner {
            n: u8,
        }
        let e = parse_json::<T>(br#"{"a": {"n": 300}}"#).unwrap_err();
        assert_eq!((e.detail_code(), e.detail_field()), ("E1005", "a.n"));
        let e = parse_json::<T>(br#"{"a": {"m": 1}}"#).unwrap_err();
        assert_eq!((e.detail_code(), e.detail_field()), ("E1002", "a.m"));
        let e = parse_json::<T>(br#"{"a": "#).unwrap_err();
        assert_eq!(e.detail_code(), "E1001");
        let e = parse_json::<T>(b"  ").unwrap_err();
        assert_eq!(e.detail_code(), "E1001");
    }
}
