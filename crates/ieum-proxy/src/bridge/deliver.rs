//! One runner per subscription: subscribe, then deliver each event to the app and settle
//! it by the app's answer.
//!
//! | the app answers | the sidecar |
//! | --- | --- |
//! | 2xx (any body but the two below) | acknowledges |
//! | 2xx `{"status":"RETRY"}`, 5xx, 408, 429, a code in `retry.codes`, no answer | gives it back (`nack`) with backoff while `attempt ≤ retry.attempts`, then dead-letters it |
//! | 2xx `{"status":"DROP"}` | dead-letters it when a dead-letter topic is set, else acknowledges; logged either way |
//! | another 4xx | dead-letters it at once (no retry can help) |
//!
//! A dead-lettered event carries `deadletterreason`, `deadletterattempts` and
//! `deadlettertopic` (the app reading the dead-letter topic sees them as `ce-` headers).
//!
//! **Order.** Deliveries with the same ordering key (the subscription's `orderingKey`
//! attribute, `partitionkey` by default) go to the app one at a time, in the order the
//! broker handed them out; different keys and events without one go concurrently, at most
//! `maxInFlight` at once. A retried event goes back to the broker, so events of its key
//! that were already handed out are delivered before it.
//!
//! **Trace.** The event's `traceparent` extension is the parent of the delivery request's
//! `traceparent` (this hop: same trace, new span id), so a trace continues from the
//! publisher through the broker to the subscriber.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use ieum_bridge::cloudevents::{TRACEPARENT, TRACESTATE, http::to_http};
use ieum_bridge::{Delivery, SubscribeOptions, Subscription};
use ieum_resilience::retry::Backoff;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::resources::{AppFormat, Wanted};
use super::{Outcome, RunState, lock};
use crate::Shared;
use crate::body::InFlight;
use crate::bridge::metrics::{Seen, TopicMetrics};
use crate::trace::{Hop, Messaging, MessagingKind, SpanClock, messaging_span};

/// The attempt of this delivery (1 for the first).
pub(crate) const ATTEMPT_HEADER: HeaderName = HeaderName::from_static("ieum-attempt");
/// The `PubSub` a delivery came from.
pub(crate) const PUBSUB_HEADER: HeaderName = HeaderName::from_static("ieum-pubsub");
/// The topic a delivery came from.
pub(crate) const TOPIC_HEADER: HeaderName = HeaderName::from_static("ieum-topic");
/// The `Subscription`, `Binding` or `app` that asked for it.
pub(crate) const SUBSCRIPTION_HEADER: HeaderName = HeaderName::from_static("ieum-subscription");

/// Most of an app's answer read to find `{"status": …}`.
const MAX_ANSWER: usize = 64 * 1024;
/// Longest wait for the app's answer to `GET /ieum/subscriptions`.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);
/// Waits between attempts to subscribe.
const RESUBSCRIBE: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(15));

/// Asks the app which subscriptions it wants: `Ok(None)` for a 404.
pub(crate) async fn ask_app(shared: &Shared) -> Result<Option<Bytes>, String> {
    let uri = format!("http://{}/ieum/subscriptions", shared.app);
    let req = Request::get(uri)
        .header(header::HOST, shared.app.as_str())
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let res = tokio::time::timeout(ASK_TIMEOUT, shared.bridge.client.request(req))
        .await
        .map_err(|_| format!("no answer within {ASK_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    let status = res.status();
    if status == StatusCode::NOT_FOUND {
        return Ok(None);
    }
    let body = Limited::new(res.into_body(), 1024 * 1024)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("the app answered {status}"));
    }
    Ok(Some(body))
}

/// Runs one subscription until `stop`: subscribes (again, with backoff, whenever that
/// fails or the subscription ends), and delivers.
pub(crate) async fn run(
    shared: Arc<Shared>,
    wanted: Wanted,
    consumer: String,
    state: Arc<Mutex<RunState>>,
    stop: CancellationToken,
) {
    let bridge = &shared.bridge;
    let backoff = Backoff::new(RESUBSCRIBE.0, RESUBSCRIBE.1);
    let mut failures = 0u32;
    let metrics = bridge
        .metrics
        .topic(&wanted.pubsub, &wanted.topic, "inbound");
    loop {
        let mode =
            (wanted.format == AppFormat::Raw).then_some(ieum_model::bridge::ContentMode::Binary);
        let attempt = async {
            let resources = bridge.resources();
            let Some((spec, revision)) = resources.pubsubs.get(&wanted.pubsub) else {
                return Err(format!(
                    "PubSub `{}` is not defined: apply a `kind: PubSub` named {}",
                    wanted.pubsub, wanted.pubsub
                ));
            };
            let broker = bridge
                .broker(&wanted.pubsub, spec, *revision, mode)
                .await
                .map_err(|e| e.to_string())?;
            let options = SubscribeOptions {
                consumer: consumer.clone(),
                max_in_flight: wanted.max_in_flight,
                dead_letter_topic: wanted.dead_letter_topic.clone(),
                // A raw input binding reads queues fed from outside ieum: plain messages
                // are wrapped rather than discarded.
                raw_source: (wanted.format == AppFormat::Raw)
                    .then(|| format!("/{}/{}", wanted.pubsub, wanted.topic)),
            };
            match broker
                .subscribe(&wanted.topic, &wanted.group, options)
                .await
            {
                Ok(sub) => Ok((sub, spec.redeliver_after.get())),
                Err(e) => {
                    if e.is_retryable() {
                        bridge.forget(&wanted.pubsub, mode, &broker);
                    }
                    Err(e.to_string())
                }
            }
        };
        let result = tokio::select! {
            () = stop.cancelled() => return,
            r = attempt => r,
        };
        match result {
            Ok((sub, timeout)) => {
                failures = 0;
                tracing::info!(origin = %wanted.origin, pubsub = %wanted.pubsub, topic = %wanted.topic, group = %wanted.group, route = %wanted.route, "subscription active");
                bridge.set_state(&state, RunState::Active);
                deliver_all(&shared, &wanted, sub, &metrics, timeout, &stop).await;
                if stop.is_cancelled() {
                    return;
                }
                let why =
                    "the subscription ended (the broker connection closed); subscribing again";
                tracing::warn!(origin = %wanted.origin, topic = %wanted.topic, "{why}");
                bridge.set_state(&state, RunState::Failed(why.to_owned()));
            }
            Err(why) => {
                if failures == 0 {
                    tracing::warn!(origin = %wanted.origin, pubsub = %wanted.pubsub, topic = %wanted.topic, error = %why, "cannot subscribe yet (will retry)");
                }
                bridge.set_state(&state, RunState::Failed(why));
            }
        }
        let wait = backoff.ceiling(failures);
        failures = failures.saturating_add(1);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// One delivery on its way, with what it holds: a place among `maxInFlight` and a place
/// among the sidecar's requests in flight (so a drain waits for it).
struct Job {
    delivery: Delivery,
    _permit: OwnedSemaphorePermit,
    _in_flight: InFlight,
}

/// Deliveries waiting behind an earlier one of the same key.
type Keyed = Arc<Mutex<HashMap<String, VecDeque<Job>>>>;

/// Everything one delivery needs, shared by the subscription's tasks.
struct Ctx {
    shared: Arc<Shared>,
    wanted: Wanted,
    metrics: Arc<TopicMetrics>,
    timeout: Duration,
}

/// Takes deliveries until `stop` or the end of the subscription, and hands each to a task.
async fn deliver_all(
    shared: &Arc<Shared>,
    wanted: &Wanted,
    mut sub: Subscription,
    metrics: &Arc<TopicMetrics>,
    timeout: Duration,
    stop: &CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(
        usize::try_from(wanted.max_in_flight.max(1)).unwrap_or(1),
    ));
    let keyed: Keyed = Arc::default();
    let ctx = Arc::new(Ctx {
        shared: shared.clone(),
        wanted: wanted.clone(),
        metrics: metrics.clone(),
        timeout,
    });
    loop {
        let permit = tokio::select! {
            () = stop.cancelled() => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let delivery = tokio::select! {
            () = stop.cancelled() => break,
            d = sub.next() => match d {
                Some(d) => d,
                None => return,
            },
        };
        let job = Job {
            delivery,
            _permit: permit,
            _in_flight: InFlight::new(&shared.in_flight),
        };
        let key = job
            .delivery
            .ordering_key(&wanted.ordering_key)
            .map(str::to_owned);
        match key {
            None => {
                let ctx = ctx.clone();
                let Job {
                    delivery,
                    _permit,
                    _in_flight,
                } = job;
                tokio::spawn(async move {
                    deliver(&ctx, delivery).await;
                    drop((_permit, _in_flight));
                });
            }
            Some(key) => {
                let mut waiting = lock(&keyed);
                if let Some(queue) = waiting.get_mut(&key) {
                    queue.push_back(job);
                    continue;
                }
                waiting.insert(key.clone(), VecDeque::new());
                drop(waiting);
                tokio::spawn(serial(ctx.clone(), keyed.clone(), key, job, stop.clone()));
            }
        }
    }
    // Stop fetching; what was fetched and not handed out stays with the broker.
    sub.close().await;
}

/// Delivers one key's events one after the other. After a stop, those not yet started
/// are left unsettled: the broker delivers them again.
async fn serial(ctx: Arc<Ctx>, keyed: Keyed, key: String, first: Job, stop: CancellationToken) {
    let mut job = first;
    loop {
        let Job {
            delivery,
            _permit,
            _in_flight,
        } = job;
        deliver(&ctx, delivery).await;
        drop((_permit, _in_flight));
        let mut waiting = lock(&keyed);
        let next = if stop.is_cancelled() {
            None
        } else {
            waiting.get_mut(&key).and_then(VecDeque::pop_front)
        };
        match next {
            Some(j) => job = j,
            None => {
                waiting.remove(&key);
                return;
            }
        }
    }
}

/// What the app's answer means.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Done,
    Retry(String),
    Drop,
    Reject(String),
}

/// Delivers one event and settles it.
async fn deliver(ctx: &Ctx, d: Delivery) {
    let w = &ctx.wanted;
    let started = SpanClock::start();
    let (req, hop) = request(ctx, &d);
    let verdict = post(ctx, req).await;
    let attempt = d.attempt;
    // What the record and the span need once the delivery is settled (it is consumed).
    let event = d.event.clone();
    let id = &event.id;
    let has_dlt = w.dead_letter_topic.is_some();
    let (result, outcome, reason) = match verdict {
        Verdict::Done => (d.ack().await, Outcome::Delivered, None),
        Verdict::Retry(why) if attempt <= w.retry.attempts => {
            let backoff = Backoff::new(w.retry.backoff.get(), w.retry.max_backoff.get());
            let delay = backoff.delay(attempt.saturating_sub(1));
            tracing::debug!(%id, topic = %w.topic, attempt, ?delay, reason = %why, "delivery failed; retrying");
            (d.nack(delay).await, Outcome::Retried, Some(why))
        }
        Verdict::Retry(why) => {
            let reason = format!("{why}; gave up after {attempt} attempts");
            tracing::warn!(%id, topic = %w.topic, dead_letter_topic = ?w.dead_letter_topic, %reason, "delivery failed for good");
            (
                d.dead_letter(&reason).await,
                dead_or_dropped(has_dlt),
                Some(reason),
            )
        }
        Verdict::Drop => {
            tracing::warn!(%id, topic = %w.topic, dead_letter_topic = ?w.dead_letter_topic, "the app answered DROP");
            let reason = "the app answered DROP".to_owned();
            (
                d.dead_letter(&reason).await,
                dead_or_dropped(has_dlt),
                Some(reason),
            )
        }
        Verdict::Reject(why) => {
            tracing::warn!(%id, topic = %w.topic, dead_letter_topic = ?w.dead_letter_topic, reason = %why, "the app rejected an event");
            (
                d.dead_letter(&why).await,
                dead_or_dropped(has_dlt),
                Some(why),
            )
        }
    };
    if let (Some(tracer), Some(hop)) = (&ctx.shared.tracer, hop)
        && hop.ctx.sampled()
    {
        tracer.record(messaging_span(&Messaging {
            hop,
            kind: MessagingKind::Process,
            started,
            pubsub: &w.pubsub,
            topic: &w.topic,
            group: Some(&w.group),
            event: &event,
            attempt,
            error: reason.as_deref().filter(|_| outcome != Outcome::Delivered),
        }));
    }
    match result {
        Ok(()) => {
            ctx.metrics.record(outcome);
            if let Some(outcome) = outcome.record() {
                ctx.shared.bridge.metrics.log.note(&Seen {
                    pubsub: &w.pubsub,
                    topic: &w.topic,
                    direction: "consume",
                    event: &event,
                    outcome,
                    attempt,
                    reason: reason.as_deref(),
                });
            }
        }
        Err(e) => {
            tracing::warn!(%id, topic = %w.topic, error = %e, "could not settle a delivery; the broker will deliver it again");
        }
    }
}

fn dead_or_dropped(has_dead_letter_topic: bool) -> Outcome {
    if has_dead_letter_topic {
        Outcome::DeadLettered
    } else {
        Outcome::Dropped
    }
}

/// The delivery request: the event as the subscription wants it, its trace context, and
/// the `ieum-` headers.
fn request(ctx: &Ctx, d: &Delivery) -> (Option<Request<Full<Bytes>>>, Option<Hop>) {
    let shared = &ctx.shared;
    let w = &ctx.wanted;
    let (mut headers, body) = match w.format {
        AppFormat::CloudEvent(mode) => to_http(&d.event, mode),
        AppFormat::Raw => {
            let mut h = HeaderMap::new();
            if let Some(v) = d
                .event
                .datacontenttype
                .as_deref()
                .and_then(|ct| HeaderValue::from_str(ct).ok())
            {
                h.insert(header::CONTENT_TYPE, v);
            }
            (h, d.event.data.clone().unwrap_or_default())
        }
    };
    for name in [TRACEPARENT, TRACESTATE] {
        if let Some(v) = d
            .event
            .extension(name)
            .and_then(|v| HeaderValue::from_str(v).ok())
        {
            headers.insert(HeaderName::from_static(name), v);
        }
    }
    let hop = Hop::enter(&mut headers);
    headers.insert(ATTEMPT_HEADER, HeaderValue::from(d.attempt));
    for (name, value) in [
        (PUBSUB_HEADER, &w.pubsub),
        (TOPIC_HEADER, &w.topic),
        (SUBSCRIPTION_HEADER, &w.origin),
    ] {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(shared.app.as_str()) {
        headers.insert(header::HOST, v);
    }
    let Ok(mut req) =
        Request::post(format!("http://{}{}", shared.app, w.route)).body(Full::new(body))
    else {
        return (None, None);
    };
    req.headers_mut().extend(headers);
    (Some(req), Some(hop))
}

/// POSTs the event to the app and reads its answer.
async fn post(ctx: &Ctx, req: Option<Request<Full<Bytes>>>) -> Verdict {
    let w = &ctx.wanted;
    let Some(req) = req else {
        return Verdict::Reject(format!("`{}` is not a path a request can have", w.route));
    };
    let sent = tokio::time::timeout(ctx.timeout, ctx.shared.bridge.client.request(req)).await;
    let res = match sent {
        Err(_) => {
            return Verdict::Retry(format!(
                "the app did not answer within {:?} (the PubSub's redeliverAfter)",
                ctx.timeout
            ));
        }
        Ok(Err(e)) => {
            return Verdict::Retry(format!(
                "cannot deliver to the app at {}: {e}",
                ctx.shared.app
            ));
        }
        Ok(Ok(res)) => res,
    };
    let status = res.status();
    if status.is_success() {
        let body = Limited::new(res.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map(http_body_util::Collected::to_bytes)
            .unwrap_or_default();
        return verdict_of_success(&body);
    }
    let code = status.as_u16();
    if status.is_server_error() || code == 408 || code == 429 || w.retry.codes.contains(&code) {
        Verdict::Retry(format!("the app answered {status}"))
    } else {
        Verdict::Reject(format!("the app answered {status} for POST {}", w.route))
    }
}

/// Reads a 2xx answer: `{"status": "SUCCESS" | "RETRY" | "DROP"}` (any case), or anything
/// else, which means done.
fn verdict_of_success(body: &[u8]) -> Verdict {
    let Ok(serde_json::Value::Object(obj)) = serde_json::from_slice::<serde_json::Value>(body)
    else {
        return Verdict::Done;
    };
    match obj.get("status").and_then(serde_json::Value::as_str) {
        None => Verdict::Done,
        Some(s) if s.eq_ignore_ascii_case("success") => Verdict::Done,
        Some(s) if s.eq_ignore_ascii_case("retry") => {
            Verdict::Retry("the app answered RETRY".to_owned())
        }
        Some(s) if s.eq_ignore_ascii_case("drop") => Verdict::Drop,
        Some(other) => Verdict::Retry(format!(
            "the app answered status `{other}`, which is none of SUCCESS, RETRY, DROP"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_success_answer_can_ask_for_a_retry_or_a_drop() {
        assert_eq!(verdict_of_success(b""), Verdict::Done);
        assert_eq!(verdict_of_success(b"ok"), Verdict::Done);
        assert_eq!(verdict_of_success(br#"{"id":1}"#), Verdict::Done);
        assert_eq!(
            verdict_of_success(br#"{"status":"SUCCESS"}"#),
            Verdict::Done
        );
        assert_eq!(
            verdict_of_success(br#"{"status":"RETRY"}"#),
            Verdict::Retry("the app answered RETRY".into())
        );
        assert_eq!(verdict_of_success(br#"{"status":"drop"}"#), Verdict::Drop);
        assert!(matches!(
            verdict_of_success(br#"{"status":"MAYBE"}"#),
            Verdict::Retry(why) if why.contains("MAYBE")
        ));
    }
}
