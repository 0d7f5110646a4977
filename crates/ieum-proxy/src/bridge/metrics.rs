//! Event counters per `pubsub`, `topic` and `direction` (`outbound`: the app published;
//! `inbound`: delivered to the app): `ieum_events_published_total`,
//! `ieum_events_publish_failed_total`, `ieum_events_delivered_total`,
//! `ieum_events_retried_total`, `ieum_events_dropped_total` and
//! `ieum_events_dead_lettered_total`. Like the request metrics, one set of atomics per
//! label set, registered on first use.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ieum_bridge::CloudEvent;
use ieum_bridge::cloudevents::{CORRELATION_ID, TRACEPARENT};
use ieum_model::Timestamp;
use ieum_model::telemetry::{EventOutcome, EventRecord};
use serde::Serialize;

use crate::trace::TraceContext;

/// The counters of one `pubsub` / `topic` / `direction`.
#[derive(Debug, Default)]
pub(crate) struct TopicMetrics {
    published: AtomicU64,
    publish_failed: AtomicU64,
    delivered: AtomicU64,
    retried: AtomicU64,
    dropped: AtomicU64,
    dead_lettered: AtomicU64,
}

/// What happened to one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The broker acknowledged a publish.
    Published,
    /// A publish failed.
    PublishFailed,
    /// The app took a delivery (2xx).
    Delivered,
    /// A delivery is given back to the broker for another try.
    Retried,
    /// A delivery was discarded: `DROP` without a dead-letter topic, or retries exhausted
    /// without one.
    Dropped,
    /// A delivery went to the dead-letter topic.
    DeadLettered,
}

impl Outcome {
    /// The outcome as an event record names it (`None` for a failed publish: the app got
    /// the error and there is no event to list).
    pub(crate) fn record(self) -> Option<EventOutcome> {
        match self {
            Outcome::Published => Some(EventOutcome::Published),
            Outcome::PublishFailed => None,
            Outcome::Delivered => Some(EventOutcome::Delivered),
            Outcome::Retried => Some(EventOutcome::Retried),
            Outcome::Dropped => Some(EventOutcome::Dropped),
            Outcome::DeadLettered => Some(EventOutcome::DeadLettered),
        }
    }
}

impl TopicMetrics {
    pub(crate) fn record(&self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Published => &self.published,
            Outcome::PublishFailed => &self.publish_failed,
            Outcome::Delivered => &self.delivered,
            Outcome::Retried => &self.retried,
            Outcome::Dropped => &self.dropped,
            Outcome::DeadLettered => &self.dead_lettered,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Cumulative counts of one `pubsub` / `topic` / `direction`, as sampled by
/// [`crate::Sidecar::topic_traffic`]: two samples give the rates of the time between.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicTraffic {
    /// The `PubSub`.
    pub pubsub: String,
    /// The topic.
    pub topic: String,
    /// `outbound` (the app published) or `inbound` (delivered to the app).
    pub direction: &'static str,
    /// Publishes the broker acknowledged.
    pub published: u64,
    /// Publishes that failed.
    pub publish_failed: u64,
    /// Deliveries the app took.
    pub delivered: u64,
    /// Deliveries given back for another try.
    pub retried: u64,
    /// Deliveries discarded.
    pub dropped: u64,
    /// Deliveries sent to the dead-letter topic.
    pub dead_lettered: u64,
}

type Key = (String, String, &'static str);

/// A metric family: name, help text, and the value it reads.
type Family = (&'static str, &'static str, fn(&TopicTraffic) -> u64);

/// Every label set's counters.
#[derive(Debug, Default)]
pub(crate) struct EventMetrics {
    topics: Mutex<BTreeMap<Key, Arc<TopicMetrics>>>,
    /// Single events for the next telemetry report.
    pub(crate) log: EventLog,
}

impl EventMetrics {
    /// The counters of one label set, registered on first use.
    pub(crate) fn topic(
        &self,
        pubsub: &str,
        topic: &str,
        direction: &'static str,
    ) -> Arc<TopicMetrics> {
        self.topics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((pubsub.to_owned(), topic.to_owned(), direction))
            .or_default()
            .clone()
    }

    /// A sample of every label set.
    pub(crate) fn traffic(&self) -> Vec<TopicTraffic> {
        let topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        topics
            .iter()
            .map(|((pubsub, topic, direction), m)| TopicTraffic {
                pubsub: pubsub.clone(),
                topic: topic.clone(),
                direction,
                published: m.published.load(Ordering::Relaxed),
                publish_failed: m.publish_failed.load(Ordering::Relaxed),
                delivered: m.delivered.load(Ordering::Relaxed),
                retried: m.retried.load(Ordering::Relaxed),
                dropped: m.dropped.load(Ordering::Relaxed),
                dead_lettered: m.dead_lettered.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Appends the Prometheus text of every counter to `out`.
    pub(crate) fn render(&self, out: &mut String) {
        let traffic = self.traffic();
        if traffic.is_empty() {
            return;
        }
        let families: [Family; 6] = [
            (
                "ieum_events_published_total",
                "Events the broker acknowledged after the app published them.",
                |t| t.published,
            ),
            (
                "ieum_events_publish_failed_total",
                "Publishes that failed (the app got a 4xx or 5xx).",
                |t| t.publish_failed,
            ),
            (
                "ieum_events_delivered_total",
                "Events the app took (2xx) and that were acknowledged to the broker.",
                |t| t.delivered,
            ),
            (
                "ieum_events_retried_total",
                "Deliveries given back to the broker for another try (RETRY, 5xx, no answer).",
                |t| t.retried,
            ),
            (
                "ieum_events_dropped_total",
                "Deliveries discarded: DROP, or retries exhausted, without a dead-letter topic.",
                |t| t.dropped,
            ),
            (
                "ieum_events_dead_lettered_total",
                "Deliveries sent to the dead-letter topic.",
                |t| t.dead_lettered,
            ),
        ];
        for (name, help, value) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for t in &traffic {
                let _ = writeln!(
                    out,
                    "{name}{{pubsub=\"{}\",topic=\"{}\",direction=\"{}\"}} {}",
                    escape(&t.pubsub),
                    escape(&t.topic),
                    t.direction,
                    value(t)
                );
            }
        }
    }
}

/// Records of other events kept per topic and direction between two reports.
const SAMPLES_PER_TOPIC: u32 = 5;

/// Single events kept for the next telemetry report: every dead letter and drop, every
/// event carrying a correlation id, and the first few others of each topic and direction
/// as samples, up to [`MAX_EVENTS`](ieum_model::telemetry::MAX_EVENTS) in all. What does
/// not fit is only counted (the counters above still see it).
#[derive(Debug, Default)]
pub(crate) struct EventLog {
    inner: Mutex<LogInner>,
}

#[derive(Debug, Default)]
struct LogInner {
    records: Vec<EventRecord>,
    /// Samples kept this window, by a hash of pubsub, topic and direction: looked up on
    /// every event, so without building a key (two topics sharing a hash would only share
    /// their sample budget).
    samples: std::collections::HashMap<u64, u32>,
    hasher: std::hash::RandomState,
    left_out: u64,
}

/// One event's outcome as [`EventLog::note`] takes it.
pub(crate) struct Seen<'a> {
    pub(crate) pubsub: &'a str,
    pub(crate) topic: &'a str,
    /// `publish` or `consume`.
    pub(crate) direction: &'static str,
    pub(crate) event: &'a CloudEvent,
    pub(crate) outcome: EventOutcome,
    pub(crate) attempt: u32,
    pub(crate) reason: Option<&'a str>,
}

impl EventLog {
    /// Keeps a record of `seen` when the policy above says so.
    pub(crate) fn note(&self, seen: &Seen<'_>) {
        let correlation = seen
            .event
            .extension(CORRELATION_ID)
            .filter(|c| !c.is_empty() && c.len() <= 256);
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.records.len() >= ieum_model::telemetry::MAX_EVENTS {
            inner.left_out += 1;
            return;
        }
        if !seen.outcome.is_failure() && correlation.is_none() {
            let key = std::hash::BuildHasher::hash_one(
                &inner.hasher,
                (seen.pubsub, seen.topic, seen.direction),
            );
            let n = inner.samples.entry(key).or_default();
            if *n >= SAMPLES_PER_TOPIC {
                return;
            }
            *n += 1;
        }
        let trace_id = seen
            .event
            .extension(TRACEPARENT)
            .and_then(|tp| TraceContext::parse(tp.as_bytes()))
            .map(|c| c.trace_id.iter().map(|b| format!("{b:02x}")).collect());
        inner.records.push(EventRecord {
            at: Timestamp::from_system(std::time::SystemTime::now()),
            pubsub: seen.pubsub.to_owned(),
            topic: seen.topic.to_owned(),
            direction: seen.direction.to_owned(),
            outcome: seen.outcome,
            id: clip(&seen.event.id, 256),
            source: clip(&seen.event.source, 512),
            event_type: clip(&seen.event.ty, 256),
            attempt: seen.attempt,
            correlation_id: correlation.map(str::to_owned),
            trace_id,
            reason: seen.reason.map(|r| clip(r, 512)),
        });
    }

    /// The records kept since the last call, and how many were left out.
    pub(crate) fn take(&self) -> (Vec<EventRecord>, u64) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.samples.clear();
        (
            std::mem::take(&mut inner.records),
            std::mem::take(&mut inner.left_out),
        )
    }
}

/// At most `max` bytes of `s` (on a character boundary), control characters as spaces, so
/// a record always passes the server's checks.
fn clip(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    for c in s.chars() {
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(if c.is_control() { ' ' } else { c });
    }
    if out.is_empty() { "-".to_owned() } else { out }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_per_label_set() {
        let m = EventMetrics::default();
        let out = m.topic("bus", "orders", "outbound");
        out.record(Outcome::Published);
        out.record(Outcome::Published);
        let inb = m.topic("bus", "orders", "inbound");
        inb.record(Outcome::Retried);
        inb.record(Outcome::DeadLettered);
        let mut text = String::new();
        m.render(&mut text);
        assert!(text.contains(
            "ieum_events_published_total{pubsub=\"bus\",topic=\"orders\",direction=\"outbound\"} 2"
        ));
        assert!(text.contains(
            "ieum_events_retried_total{pubsub=\"bus\",topic=\"orders\",direction=\"inbound\"} 1"
        ));
        assert!(text.contains(
            "ieum_events_dead_lettered_total{pubsub=\"bus\",topic=\"orders\",direction=\"inbound\"} 1"
        ));
        assert!(text.contains("# TYPE ieum_events_dropped_total counter"));
    }

    #[test]
    fn the_event_log_keeps_failures_and_correlations_and_samples_the_rest() {
        let log = EventLog::default();
        let plain = CloudEvent::wrap("orders", "order.placed", None, bytes::Bytes::new());
        let mut correlated = plain.clone();
        correlated
            .extensions
            .insert(CORRELATION_ID.into(), "order-7".into());
        correlated.extensions.insert(
            TRACEPARENT.into(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        );
        let seen = |event, outcome| Seen {
            pubsub: "bus",
            topic: "orders.placed",
            direction: "consume",
            event,
            outcome,
            attempt: 1,
            reason: None,
        };
        for _ in 0..20 {
            log.note(&seen(&plain, EventOutcome::Delivered));
            log.note(&seen(&correlated, EventOutcome::Delivered));
        }
        log.note(&Seen {
            reason: Some("the app answered\n500"),
            attempt: 4,
            ..seen(&plain, EventOutcome::DeadLettered)
        });
        let (records, left_out) = log.take();
        assert_eq!(left_out, 0);
        let count = |f: &dyn Fn(&EventRecord) -> bool| records.iter().filter(|r| f(r)).count();
        assert_eq!(
            count(&|r| r.correlation_id.as_deref() == Some("order-7")),
            20
        );
        assert_eq!(
            count(&|r| r.correlation_id.is_none() && r.outcome == EventOutcome::Delivered),
            SAMPLES_PER_TOPIC as usize
        );
        let dead = records
            .iter()
            .find(|r| r.outcome == EventOutcome::DeadLettered)
            .unwrap();
        assert_eq!(dead.reason.as_deref(), Some("the app answered 500"));
        assert_eq!(dead.attempt, 4);
        assert_eq!(
            records.iter().find_map(|r| r.trace_id.as_deref()).unwrap(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        // A new window samples again; past the cap, records are only counted.
        log.note(&seen(&plain, EventOutcome::Delivered));
        assert_eq!(log.take().0.len(), 1);
        for _ in 0..ieum_model::telemetry::MAX_EVENTS + 3 {
            log.note(&seen(&correlated, EventOutcome::Delivered));
        }
        let (records, left_out) = log.take();
        assert_eq!(
            (records.len(), left_out),
            (ieum_model::telemetry::MAX_EVENTS, 3)
        );
    }
}
