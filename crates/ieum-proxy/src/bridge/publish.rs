//! The bridge's part of the sidecar's own API, on the outbound listener:
//!
//! - `POST /v1/publish/{pubsub}/{topic}`: a raw body is wrapped as a CloudEvent (`source`
//!   the service, `type` from a `ce-type` header or `ieum.publish`, `datacontenttype` from
//!   `Content-Type`, `time` now, `traceparent` this hop's); a CloudEvent (binary `ce-`
//!   headers, or an `application/cloudevents+json` body) is validated and passed through.
//!   An ordering key comes from the `ieum-ordering-key` header or the event's
//!   `partitionkey`.
//! - `POST /v1/bindings/{name}`: the same into an output `Binding`'s topic; a `raw`
//!   binding sends the body as is (binary mode, whatever the `PubSub` says).
//!
//! Answers: 204 once the broker acknowledged (with `ieum-event-id`); 400 for an event or
//! topic that cannot be published; 404 for an unknown `PubSub` or binding; 413 for a body
//! over 4 MiB; 503 with `Retry-After` when the broker is unreachable or did not
//! acknowledge in time. Never a 2xx without the broker's acknowledgement.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use ieum_bridge::cloudevents::http::event_from_request;
use ieum_bridge::cloudevents::{CloudEvent, PARTITION_KEY, TRACEPARENT};
use ieum_bridge::{BrokerError, cloudevents};
use ieum_model::bridge::{BindingFormat, ContentMode};
use ieum_model::telemetry::EventOutcome;
use ieum_resilience::classify::{REASON_HEADER, SOURCE_HEADER};

use super::Outcome;
use super::metrics::Seen;
use crate::Shared;
use crate::body::{ProxyBody, text};
use crate::trace::{Hop, Messaging, MessagingKind, SpanClock, messaging_span};

const PUBLISH: &str = "/v1/publish/";
const BINDINGS: &str = "/v1/bindings/";
/// The type of an event wrapped from a raw publish without `ce-type`.
pub(crate) const DEFAULT_TYPE: &str = "ieum.publish";
/// The type of an event wrapped for a raw output binding.
const BINDING_TYPE: &str = "ieum.binding";
/// The header naming a publish's ordering key.
const ORDERING_KEY: &str = "ieum-ordering-key";
/// The header of a 204 naming the event's id.
const EVENT_ID: &str = "ieum-event-id";
/// Largest body accepted.
const MAX_BODY: usize = 4 * 1024 * 1024;

/// Whether a path of the sidecar's own API belongs to the bridge.
pub(crate) fn is_bridge_path(path: &str) -> bool {
    path.starts_with(PUBLISH) || path.starts_with(BINDINGS)
}

/// Serves `/v1/publish/…` and `/v1/bindings/…`.
pub(crate) async fn handle(
    shared: &Arc<Shared>,
    req: Request<crate::body::RequestBody>,
) -> Response<ProxyBody> {
    if req.method() != Method::POST {
        let mut res = answer(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            format!("{} {}: publish with POST\n", req.method(), req.uri().path()),
        );
        res.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return res;
    }
    let path = req.uri().path().to_owned();
    if let Some(rest) = path.strip_prefix(PUBLISH) {
        let Some((pubsub, topic)) = rest.split_once('/') else {
            return answer(
                StatusCode::NOT_FOUND,
                "not-found",
                "publish with POST /v1/publish/PUBSUB/TOPIC\n".to_owned(),
            );
        };
        return publish(shared, pubsub, topic, None, req).await;
    }
    let name = path.strip_prefix(BINDINGS).unwrap_or_default();
    let resources = shared.bridge.resources();
    let Some(binding) = resources.outputs.get(name) else {
        let known: Vec<&str> = resources.outputs.keys().map(String::as_str).collect();
        return answer(
            StatusCode::NOT_FOUND,
            "binding-not-found",
            format!(
                "no output Binding named `{name}` that {} may use (known here: {}): apply a `kind: Binding` with `direction: output`\n",
                shared.service,
                list(&known)
            ),
        );
    };
    let (pubsub, topic) = (binding.pubsub.clone(), binding.topic.clone());
    publish(shared, &pubsub, &topic, Some(binding.format), req).await
}

fn list(names: &[&str]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

/// Publishes the request's event to `pubsub`/`topic`; `binding` is the format of an
/// output binding (`None` for `/v1/publish`).
async fn publish(
    shared: &Arc<Shared>,
    pubsub: &str,
    topic: &str,
    binding: Option<BindingFormat>,
    req: Request<crate::body::RequestBody>,
) -> Response<ProxyBody> {
    let resources = shared.bridge.resources();
    let Some((spec, revision)) = resources.pubsubs.get(pubsub) else {
        let known: Vec<&str> = resources.pubsubs.keys().map(String::as_str).collect();
        return answer(
            StatusCode::NOT_FOUND,
            "pubsub-not-found",
            format!(
                "PubSub `{pubsub}` is not defined (known here: {}): apply a `kind: PubSub` named {pubsub}\n",
                list(&known)
            ),
        );
    };
    if let Err(why) = ieum_model::bridge::validate_topic(topic) {
        return answer(
            StatusCode::BAD_REQUEST,
            "bad-topic",
            format!("topic {why}\n"),
        );
    }
    let metrics = shared.bridge.metrics.topic(pubsub, topic, "outbound");
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            metrics.record(Outcome::PublishFailed);
            let too_big = e
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            return if too_big {
                answer(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too-large",
                    format!("an event body is at most {MAX_BODY} bytes\n"),
                )
            } else {
                answer(
                    StatusCode::BAD_REQUEST,
                    "bad-request",
                    format!("reading the body: {e}\n"),
                )
            };
        }
    };
    let mut event = match event_of(&shared.service, &parts.headers, body, binding) {
        Ok(e) => e,
        Err(e) => {
            metrics.record(Outcome::PublishFailed);
            return answer(
                StatusCode::BAD_REQUEST,
                "bad-event",
                format!("cannot publish to {pubsub}/{topic}: {e}\n"),
            );
        }
    };
    let key = match parts.headers.get(ORDERING_KEY) {
        Some(v) => match v.to_str() {
            Ok(k) if !k.is_empty() => Some(k.to_owned()),
            _ => {
                metrics.record(Outcome::PublishFailed);
                return answer(
                    StatusCode::BAD_REQUEST,
                    "bad-ordering-key",
                    format!("the {ORDERING_KEY} header must be non-empty printable ASCII\n"),
                );
            }
        },
        None => event.extension(PARTITION_KEY).map(str::to_owned),
    };
    // The publish is a span of its own, below the outbound hop; the event carries it, so
    // every delivery is its child.
    let hop = Hop::child_of(event.extension(TRACEPARENT));
    if let Some(hop) = &hop
        && let Ok(tp) = hop.ctx.header().to_str()
    {
        event
            .extensions
            .insert(TRACEPARENT.to_owned(), tp.to_owned());
    }
    let started = SpanClock::start();
    // A raw binding keeps payloads as they are: binary mode on the broker.
    let mode = (binding == Some(BindingFormat::Raw)).then_some(ContentMode::Binary);
    let result = match shared.bridge.broker(pubsub, spec, *revision, mode).await {
        Ok(broker) => {
            let r = broker.publish(topic, &event, key.as_deref()).await;
            if let Err(e) = &r
                && e.is_retryable()
            {
                shared.bridge.forget(pubsub, mode, &broker);
            }
            r
        }
        Err(e) => Err(e),
    };
    if let (Some(tracer), Some(hop)) = (&shared.tracer, hop)
        && hop.ctx.sampled()
    {
        let error = result.as_ref().err().map(ToString::to_string);
        tracer.record(messaging_span(&Messaging {
            hop,
            kind: MessagingKind::Send,
            started,
            pubsub,
            topic,
            group: None,
            event: &event,
            attempt: 0,
            error: error.as_deref(),
        }));
    }
    match result {
        Ok(()) => {
            metrics.record(Outcome::Published);
            shared.bridge.metrics.log.note(&Seen {
                pubsub,
                topic,
                direction: "publish",
                event: &event,
                outcome: EventOutcome::Published,
                attempt: 0,
                reason: None,
            });
            let mut res = Response::new(text(String::new()));
            *res.status_mut() = StatusCode::NO_CONTENT;
            if let Ok(v) = HeaderValue::from_str(&event.id) {
                res.headers_mut().insert(EVENT_ID, v);
            }
            res
        }
        Err(e) => {
            metrics.record(Outcome::PublishFailed);
            failure(pubsub, topic, &e)
        }
    }
}

/// The event a request publishes.
fn event_of(
    service: &str,
    headers: &http::HeaderMap,
    body: Bytes,
    binding: Option<BindingFormat>,
) -> Result<CloudEvent, cloudevents::CloudEventError> {
    let hop = headers
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut event = if binding == Some(BindingFormat::Raw) {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        CloudEvent::wrap(service, BINDING_TYPE, content_type, body)
    } else {
        let ty = headers
            .get("ce-type")
            .and_then(|v| v.to_str().ok())
            .filter(|t| !t.is_empty())
            .unwrap_or(DEFAULT_TYPE);
        event_from_request(headers, body, service, ty)?
    };
    // The publisher's hop (the outbound listener wrote it) carries the trace on.
    if event.extension(TRACEPARENT).is_none()
        && let Some(tp) = hop
    {
        event.extensions.insert(TRACEPARENT.to_owned(), tp);
    }
    event.validate()?;
    Ok(event)
}

/// The answer to a publish the broker did not take.
fn failure(pubsub: &str, topic: &str, e: &BrokerError) -> Response<ProxyBody> {
    let (status, reason) = match e {
        BrokerError::Unreachable { .. } | BrokerError::Timeout { .. } | BrokerError::Closed => {
            (StatusCode::SERVICE_UNAVAILABLE, "broker-unavailable")
        }
        BrokerError::Topic { .. } => (StatusCode::BAD_REQUEST, "bad-topic"),
        BrokerError::Event(_) => (StatusCode::BAD_REQUEST, "bad-event"),
        BrokerError::Missing(_) => (StatusCode::NOT_FOUND, "topic-missing"),
        BrokerError::Rejected { .. } => (StatusCode::BAD_GATEWAY, "broker-rejected"),
        BrokerError::Config(_) => (StatusCode::INTERNAL_SERVER_ERROR, "pubsub-misconfigured"),
    };
    let mut res = answer(
        status,
        reason,
        format!("publish to {pubsub}/{topic} failed: {e}\n"),
    );
    if e.is_retryable() {
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    res
}

fn answer(status: StatusCode, reason: &'static str, body: String) -> Response<ProxyBody> {
    let mut res = Response::new(text(body));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(REASON_HEADER, HeaderValue::from_static(reason));
    h.insert(SOURCE_HEADER, HeaderValue::from_static("local"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_raw_body_is_wrapped_with_the_service_the_type_and_the_trace() {
        let mut h = http::HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("application/json"));
        h.insert("ce-type", HeaderValue::from_static("order.created"));
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        h.insert("traceparent", HeaderValue::from_static(tp));
        let e = event_of("orders", &h, Bytes::from_static(b"{\"id\":1}"), None).unwrap();
        assert_eq!(e.source, "orders");
        assert_eq!(e.ty, "order.created");
        assert_eq!(e.datacontenttype.as_deref(), Some("application/json"));
        assert_eq!(e.extension("traceparent"), Some(tp));
        assert!(e.time.is_some());
        let e = event_of("orders", &http::HeaderMap::new(), Bytes::new(), None).unwrap();
        assert_eq!(e.ty, DEFAULT_TYPE);

        // Attributes other than the sidecar's own come from `ce-` headers.
        h.insert("ce-correlationid", HeaderValue::from_static("order%207"));
        h.insert("ce-subject", HeaderValue::from_static("order 7"));
        let e = event_of("orders", &h, Bytes::from_static(b"{}"), None).unwrap();
        assert_eq!(e.extension("correlationid"), Some("order 7"));
        assert_eq!(e.subject.as_deref(), Some("order 7"));
        h.insert("ce-Bad_Name", HeaderValue::from_static("x"));
        assert!(event_of("orders", &h, Bytes::new(), None).is_err());
        h.remove("ce-bad_name");
        h.insert("ce-id", HeaderValue::from_static("mine"));
        let err = event_of("orders", &h, Bytes::new(), None).unwrap_err();
        assert!(err.to_string().contains("ce-specversion"), "{err}");
    }

    #[test]
    fn a_cloudevent_passes_through_and_a_broken_one_is_refused() {
        let mut h = http::HeaderMap::new();
        for (k, v) in [
            ("ce-specversion", "1.0"),
            ("ce-id", "e-1"),
            ("ce-source", "/elsewhere"),
            ("ce-type", "x.y"),
            ("ce-partitionkey", "k1"),
        ] {
            h.insert(k, HeaderValue::from_static(v));
        }
        let e = event_of("orders", &h, Bytes::from_static(b"hi"), None).unwrap();
        assert_eq!((e.id.as_str(), e.source.as_str()), ("e-1", "/elsewhere"));
        assert_eq!(e.extension(PARTITION_KEY), Some("k1"));
        h.remove("ce-id");
        assert!(event_of("orders", &h, Bytes::new(), None).is_err());
        // A raw binding does not read `ce-` headers.
        let e = event_of(
            "orders",
            &h,
            Bytes::from_static(b"x"),
            Some(BindingFormat::Raw),
        )
        .unwrap();
        assert_eq!(e.ty, BINDING_TYPE);
    }

    #[test]
    fn broker_failures_map_to_retryable_or_client_errors() {
        let down = BrokerError::Unreachable {
            broker: "nats-jetstream",
            url: "nats://127.0.0.1:1".into(),
            reason: "connection refused".into(),
        };
        let res = failure("bus", "orders", &down);
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()[header::RETRY_AFTER], "1");
        let bad = BrokerError::Topic {
            topic: "a b".into(),
            reason: "no".into(),
        };
        assert_eq!(
            failure("bus", "a b", &bad).status(),
            StatusCode::BAD_REQUEST
        );
    }
}
