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

use serde::Serialize;

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
}
