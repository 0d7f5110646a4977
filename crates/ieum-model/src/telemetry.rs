//! What sidecars report every few seconds: golden signals per destination and route,
//! event counts per `PubSub` and topic, circuit-breaker transitions (which become
//! events on the caller's timeline) and samples of calls their authorization denied
//! (which become events on the service's timeline).

use serde::{Deserialize, Serialize};

use crate::{Duration, Name, Timestamp, Validator};

/// Most signal lines in one report.
pub const MAX_SIGNALS: usize = 1000;
/// Most breaker transitions in one report.
pub const MAX_BREAKER_CHANGES: usize = 100;
/// Most topic lines in one report.
pub const MAX_TOPICS: usize = 1000;
/// Most event records in one report.
pub const MAX_EVENTS: usize = 500;
/// Most denial lines in one report.
pub const MAX_DENIALS: usize = 100;

/// Body of `POST /v1/services/{name}/instances/{id}/telemetry`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TelemetryReport {
    /// The span of time the signals cover (the reporting interval).
    pub window: Duration,
    /// Golden signals, one line per direction, destination and route.
    #[serde(default)]
    pub signals: Vec<Signals>,
    /// Circuit-breaker transitions since the last report.
    #[serde(default)]
    pub breakers: Vec<BreakerChange>,
    /// Events published and consumed, one line per `PubSub`, topic and direction (absent
    /// from sidecars older than the field, hence the default).
    #[serde(default)]
    pub topics: Vec<TopicSignals>,
    /// Single events the sidecar saw since the last report: every one that was
    /// dead-lettered or dropped, every one carrying a correlation id, and a few others
    /// per topic as samples (absent from older sidecars, hence the default).
    #[serde(default)]
    pub events: Vec<EventRecord>,
    /// Calls into the service that authorization denied since the last report, sampled:
    /// one line per caller, method, path and deciding rule, with a count (absent from
    /// older sidecars, and left out when empty so older servers accept the report).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub denials: Vec<Denial>,
}

/// Calls into a service that its sidecar's authorization denied: one caller, request line
/// and deciding rule, counted over a report's window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Denial {
    /// The caller's mesh identity (`orders`, `gateway:edge`, `system:coordinator`);
    /// absent for a caller without one (no client certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    /// The request's method.
    pub method: String,
    /// The request's path, without its query (cut at 256 characters).
    pub path: String,
    /// The `AuthorizationPolicy` whose rule or default denied; absent when no policy set
    /// a default and the implicit one (`allow-mesh`) denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The index of the denying rule in the policy's `rules`; absent when the default
    /// denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<u32>,
    /// How many such calls were denied in the window (at least 1).
    pub count: u64,
}

/// What happened to one event in a sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum EventOutcome {
    /// The app published it and the broker acknowledged.
    Published,
    /// The app took it (2xx).
    Delivered,
    /// A delivery failed and the event went back to the broker for another try.
    Retried,
    /// It went to the dead-letter topic.
    DeadLettered,
    /// It was discarded (no dead-letter topic).
    Dropped,
}

impl EventOutcome {
    /// The camelCase name, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            EventOutcome::Published => "published",
            EventOutcome::Delivered => "delivered",
            EventOutcome::Retried => "retried",
            EventOutcome::DeadLettered => "deadLettered",
            EventOutcome::Dropped => "dropped",
        }
    }

    /// Whether the event is lost to its consumer (a timeline event on the service).
    pub fn is_failure(self) -> bool {
        matches!(self, EventOutcome::DeadLettered | EventOutcome::Dropped)
    }
}

/// One event as a sidecar saw it: enough to list a correlation's events in order and to
/// put a dead letter on the consumer's timeline, never the payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventRecord {
    /// When the sidecar saw the outcome (its clock).
    pub at: Timestamp,
    /// The `PubSub` (or `Binding`) the event went through.
    pub pubsub: String,
    /// The topic.
    pub topic: String,
    /// `publish` or `consume`.
    pub direction: String,
    /// What happened.
    pub outcome: EventOutcome,
    /// The CloudEvent `id`.
    pub id: String,
    /// The CloudEvent `source`.
    pub source: String,
    /// The CloudEvent `type`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The delivery attempt (1 for the first; 0 for a publish).
    #[serde(default)]
    pub attempt: u32,
    /// The `correlationid` extension, when the event has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The W3C trace id from the event's `traceparent`, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Why it failed, for dead letters, drops and retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A stored event record: which service and instance reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventSighting {
    /// The reporting service.
    pub service: String,
    /// The reporting instance.
    pub instance: String,
    /// The record.
    #[serde(flatten)]
    pub event: EventRecord,
}

/// Events of one `PubSub`, topic and direction over a report's window: counts within the
/// window, not totals, so the server adds lines without knowing a sidecar's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TopicSignals {
    /// The `PubSub` (or `Binding`) the events went through.
    pub pubsub: String,
    /// The topic.
    pub topic: String,
    /// `publish` (the app sent events) or `consume` (events were delivered to the app).
    pub direction: String,
    /// Publishes the broker acknowledged.
    #[serde(default)]
    pub published: u64,
    /// Deliveries the app took.
    #[serde(default)]
    pub delivered: u64,
    /// Deliveries given back for another try.
    #[serde(default)]
    pub retried: u64,
    /// Deliveries discarded.
    #[serde(default)]
    pub dropped: u64,
    /// Deliveries sent to the dead-letter topic.
    #[serde(default)]
    pub dead_lettered: u64,
    /// Publishes that failed.
    #[serde(default)]
    pub failed: u64,
}

/// A stored sample of topic counts: who reported it, when, and over what window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopicSample {
    /// When the server received it.
    pub at: Timestamp,
    /// The reporting instance.
    pub instance: String,
    /// The window it covers.
    pub window: Duration,
    /// The counts.
    #[serde(flatten)]
    pub topic: TopicSignals,
}

/// Golden signals of one direction, destination and route over a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Signals {
    /// `inbound` (calls to this service) or `outbound` (its calls to `destination`).
    pub direction: String,
    /// The service called.
    pub destination: String,
    /// The route resource, or `default`.
    #[serde(default = "default_route")]
    pub route: String,
    /// Requests in the window.
    pub requests: u64,
    /// Requests per second.
    pub requests_per_second: f64,
    /// Share of successful responses (0–1), when there were responses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<f64>,
    /// Median latency, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    /// 99th percentile latency, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
}

fn default_route() -> String {
    "default".into()
}

/// One circuit-breaker transition (or a summary of several folded together).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BreakerChange {
    /// The service called.
    pub destination: String,
    /// The endpoint, for per-endpoint breakers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// `allowed`, `blocked` or `probing`.
    pub from: String,
    /// `allowed`, `blocked` or `probing`.
    pub to: String,
    /// Why.
    pub reason: String,
    /// Further transitions folded into this one.
    #[serde(default)]
    pub coalesced: u32,
}

/// A stored sample of signals, as `GET /v1/services/{name}/signals` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignalSample {
    /// When the server received it.
    pub at: Timestamp,
    /// The reporting instance.
    pub instance: String,
    /// The window it covers.
    pub window: Duration,
    /// The signals.
    #[serde(flatten)]
    pub signals: Signals,
}

const STATES: [&str; 3] = ["allowed", "blocked", "probing"];

fn plain(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && !s.chars().any(char::is_control)
}

/// Checks what a topic line and an event record share: `direction`, `pubsub` and `topic`.
fn check_topic_line(v: &mut Validator, code: &str, f: &str, [direction, pubsub, topic]: [&str; 3]) {
    v.check(
        direction == "publish" || direction == "consume",
        code,
        &format!("{f}.direction"),
        || format!("`{direction}`: use publish or consume"),
    );
    v.check(
        Name::parse(pubsub).is_ok(),
        code,
        &format!("{f}.pubsub"),
        || format!("`{pubsub}` is not a PubSub name"),
    );
    if let Err(why) = crate::bridge::validate_topic(topic) {
        v.check(false, code, &format!("{f}.topic"), || why.clone());
    }
}

impl TelemetryReport {
    /// Checks sizes, names and ranges.
    pub fn validate(&self, v: &mut Validator) {
        v.check(
            !self.window.is_zero() && self.window <= Duration::from_secs(3600),
            "E1301",
            "window",
            || format!("must be above 0s and at most 1h (is {})", self.window),
        );
        v.check(
            self.signals.len() <= MAX_SIGNALS,
            "E1302",
            "signals",
            || format!("at most {MAX_SIGNALS} lines (has {})", self.signals.len()),
        );
        v.check(
            self.breakers.len() <= MAX_BREAKER_CHANGES,
            "E1303",
            "breakers",
            || {
                format!(
                    "at most {MAX_BREAKER_CHANGES} transitions (has {})",
                    self.breakers.len()
                )
            },
        );
        v.check(self.topics.len() <= MAX_TOPICS, "E1304", "topics", || {
            format!("at most {MAX_TOPICS} lines (has {})", self.topics.len())
        });
        for (i, t) in self.topics.iter().enumerate() {
            let f = format!("topics[{i}]");
            check_topic_line(v, "E1304", &f, [&t.direction, &t.pubsub, &t.topic]);
        }
        v.check(self.events.len() <= MAX_EVENTS, "E1305", "events", || {
            format!("at most {MAX_EVENTS} records (has {})", self.events.len())
        });
        for (i, e) in self.events.iter().enumerate() {
            let f = format!("events[{i}]");
            check_topic_line(v, "E1305", &f, [&e.direction, &e.pubsub, &e.topic]);
            for (field, value, max) in [
                ("id", Some(e.id.as_str()), 256),
                ("source", Some(e.source.as_str()), 512),
                ("type", Some(e.event_type.as_str()), 256),
                ("correlationId", e.correlation_id.as_deref(), 256),
                ("traceId", e.trace_id.as_deref(), 32),
                ("reason", e.reason.as_deref(), 512),
            ] {
                if let Some(value) = value {
                    v.check(plain(value, max), "E1305", &format!("{f}.{field}"), || {
                        format!("1 to {max} characters without control characters")
                    });
                }
            }
        }
        v.check(
            self.denials.len() <= MAX_DENIALS,
            "E1306",
            "denials",
            || format!("at most {MAX_DENIALS} lines (has {})", self.denials.len()),
        );
        for (i, d) in self.denials.iter().enumerate() {
            d.validate(v, &format!("denials[{i}]"));
        }
        for (i, s) in self.signals.iter().enumerate() {
            let f = format!("signals[{i}]");
            v.check(
                s.direction == "inbound" || s.direction == "outbound",
                "E1302",
                &format!("{f}.direction"),
                || format!("`{}`: use inbound or outbound", s.direction),
            );
            v.check(
                Name::parse(&s.destination).is_ok(),
                "E1302",
                &format!("{f}.destination"),
                || format!("`{}` is not a service name", s.destination),
            );
            v.check(plain(&s.route, 63), "E1302", &format!("{f}.route"), || {
                "1 to 63 characters".into()
            });
            let rates_ok = s.requests_per_second.is_finite()
                && s.requests_per_second >= 0.0
                && s.success_rate.is_none_or(|r| (0.0..=1.0).contains(&r))
                && [s.p50_ms, s.p99_ms]
                    .iter()
                    .flatten()
                    .all(|l| l.is_finite() && *l >= 0.0);
            v.check(rates_ok, "E1302", &f, || {
                "rates and latencies must be finite and not negative; successRate within 0–1".into()
            });
        }
        for (i, b) in self.breakers.iter().enumerate() {
            let f = format!("breakers[{i}]");
            v.check(
                Name::parse(&b.destination).is_ok(),
                "E1303",
                &format!("{f}.destination"),
                || format!("`{}` is not a service name", b.destination),
            );
            v.check(
                STATES.contains(&b.from.as_str()) && STATES.contains(&b.to.as_str()),
                "E1303",
                &f,
                || "states are allowed, blocked or probing".into(),
            );
            v.check(
                plain(&b.reason, 512),
                "E1303",
                &format!("{f}.reason"),
                || "1 to 512 characters without control characters".into(),
            );
            if let Some(e) = &b.endpoint {
                v.check(plain(e, 128), "E1303", &format!("{f}.endpoint"), || {
                    "1 to 128 characters".into()
                });
            }
        }
    }
}

impl Denial {
    /// Checks one line; `f` is its field path (`denials[3]`).
    fn validate(&self, v: &mut Validator, f: &str) {
        if let Some(caller) = &self.caller
            && let Err(why) = crate::authz::validate_principal(caller)
        {
            v.error("E1306", &format!("{f}.caller"), why);
        }
        v.check(
            crate::authz::validate_method(&self.method).is_ok(),
            "E1306",
            &format!("{f}.method"),
            || format!("`{}` is not an uppercase HTTP method", self.method),
        );
        v.check(
            self.path.starts_with('/') && plain(&self.path, 1024),
            "E1306",
            &format!("{f}.path"),
            || {
                "a path starting with `/`, at most 1024 characters without control characters"
                    .into()
            },
        );
        if let Some(policy) = &self.policy {
            v.check(
                Name::parse(policy).is_ok(),
                "E1306",
                &format!("{f}.policy"),
                || format!("`{policy}` is not a policy name"),
            );
        }
        if let Some(rule) = self.rule {
            v.check(
                self.policy.is_some() && (rule as usize) < crate::authz::MAX_RULES,
                "E1306",
                &format!("{f}.rule"),
                || {
                    format!(
                        "a rule index below {} of the `policy` named",
                        crate::authz::MAX_RULES
                    )
                },
            );
        }
        v.check(self.count >= 1, "E1306", &format!("{f}.count"), || {
            "at least 1".into()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_parse_and_validate() {
        let r: TelemetryReport = serde_json::from_value(serde_json::json!({
            "window": "10s",
            "signals": [{"direction": "outbound", "destination": "stock", "requests": 50,
                         "requestsPerSecond": 5.0, "successRate": 0.98, "p50Ms": 3.0, "p99Ms": 40.0}],
            "breakers": [{"destination": "stock", "endpoint": "s1", "from": "allowed", "to": "blocked",
                          "reason": "5 consecutive failures"}]
        }))
        .unwrap();
        let mut v = Validator::new("");
        r.validate(&mut v);
        assert!(v.finish().is_ok());
        assert_eq!(r.signals[0].route, "default");
        assert!(r.topics.is_empty(), "older sidecars send no topics");

        let t: TelemetryReport = serde_json::from_value(serde_json::json!({
            "window": "10s",
            "topics": [{"pubsub": "bus", "topic": "orders.created", "direction": "consume",
                        "delivered": 7, "retried": 2, "deadLettered": 1}]
        }))
        .unwrap();
        let mut v = Validator::new("");
        t.validate(&mut v);
        assert!(v.finish().is_ok());
        assert_eq!(
            (
                t.topics[0].delivered,
                t.topics[0].dead_lettered,
                t.topics[0].failed
            ),
            (7, 1, 0)
        );
        let hostile = TelemetryReport {
            topics: vec![
                TopicSignals {
                    pubsub: "Bus<script>".into(),
                    topic: "orders..created".into(),
                    direction: "inbound".into(),
                    ..t.topics[0].clone()
                };
                2
            ],
            ..t.clone()
        };
        let mut v = Validator::new("");
        hostile.validate(&mut v);
        let errors = v.finish().unwrap_err();
        assert!(errors.iter().all(|e| e.code == "E1304"), "{errors:?}");
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "topics[0].direction",
                "topics[0].pubsub",
                "topics[0].topic",
                "topics[1].direction",
                "topics[1].pubsub",
                "topics[1].topic"
            ]
        );
        let many = TelemetryReport {
            topics: vec![t.topics[0].clone(); MAX_TOPICS + 1],
            ..t
        };
        let mut v = Validator::new("");
        many.validate(&mut v);
        let fields: Vec<String> = v
            .finish()
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["topics"]);

        let bad = TelemetryReport {
            window: Duration::ZERO,
            signals: vec![Signals {
                direction: "sideways".into(),
                success_rate: Some(2.0),
                ..r.signals[0].clone()
            }],
            breakers: vec![BreakerChange {
                to: "open".into(),
                ..r.breakers[0].clone()
            }],
            topics: Vec::new(),
            events: Vec::new(),
            denials: Vec::new(),
        };
        let mut v = Validator::new("");
        bad.validate(&mut v);
        let fields: Vec<String> = v
            .finish()
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            [
                "window",
                "signals[0].direction",
                "signals[0]",
                "breakers[0]"
            ]
        );
    }

    #[test]
    fn event_records_parse_and_are_checked() {
        let r: TelemetryReport = serde_json::from_value(serde_json::json!({
            "window": "5s",
            "events": [{"at": "2026-11-26T12:00:00Z", "pubsub": "bus", "topic": "orders.placed",
                "direction": "consume", "outcome": "deadLettered", "id": "e-1",
                "source": "orders", "type": "order.placed", "attempt": 4,
                "correlationId": "order-7", "reason": "the app answered 500"}]
        }))
        .unwrap();
        let mut v = Validator::new("");
        r.validate(&mut v);
        assert!(v.finish().is_ok());
        let e = &r.events[0];
        assert_eq!(e.outcome, EventOutcome::DeadLettered);
        assert!(e.outcome.is_failure() && !EventOutcome::Retried.is_failure());
        assert_eq!(e.correlation_id.as_deref(), Some("order-7"));
        assert_eq!(
            serde_json::to_value(e).unwrap()["type"],
            serde_json::json!("order.placed")
        );

        let hostile = TelemetryReport {
            events: vec![EventRecord {
                direction: "sideways".into(),
                id: String::new(),
                correlation_id: Some("a\nb".into()),
                ..e.clone()
            }],
            ..r.clone()
        };
        let mut v = Validator::new("");
        hostile.validate(&mut v);
        let errors = v.finish().unwrap_err();
        assert!(errors.iter().all(|e| e.code == "E1305"), "{errors:?}");
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "events[0].direction",
                "events[0].id",
                "events[0].correlationId"
            ]
        );
        let many = TelemetryReport {
            events: vec![e.clone(); MAX_EVENTS + 1],
            ..r
        };
        let mut v = Validator::new("");
        many.validate(&mut v);
        let fields: Vec<String> = v
            .finish()
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["events"]);
    }

    #[test]
    fn denials_parse_and_are_checked() {
        let r: TelemetryReport = serde_json::from_value(serde_json::json!({
            "window": "10s",
            "denials": [
                {"caller": "reports", "method": "GET", "path": "/stock/7",
                 "policy": "stock-callers", "rule": 2, "count": 5},
                {"method": "POST", "path": "/", "count": 1}
            ]
        }))
        .unwrap();
        let mut v = Validator::new("");
        r.validate(&mut v);
        assert!(v.finish().is_ok());
        assert_eq!(r.denials[1].caller, None);
        let json = serde_json::to_value(&r).unwrap();
        assert!(json["denials"][1].get("caller").is_none());
        let empty = TelemetryReport {
            denials: Vec::new(),
            ..r.clone()
        };
        assert!(
            serde_json::to_value(&empty)
                .unwrap()
                .get("denials")
                .is_none(),
            "left out when empty, so older servers accept the report"
        );

        let hostile = TelemetryReport {
            denials: vec![Denial {
                caller: Some("user:bob".into()),
                method: "get".into(),
                path: "no-slash\n".into(),
                policy: Some("Bad_Name".into()),
                rule: Some(64),
                count: 0,
            }],
            ..r.clone()
        };
        let mut v = Validator::new("");
        hostile.validate(&mut v);
        let errors = v.finish().unwrap_err();
        assert!(errors.iter().all(|e| e.code == "E1306"), "{errors:?}");
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "denials[0].caller",
                "denials[0].method",
                "denials[0].path",
                "denials[0].policy",
                "denials[0].rule",
                "denials[0].count"
            ]
        );
        let orphan_rule = TelemetryReport {
            denials: vec![Denial {
                policy: None,
                ..r.denials[0].clone()
            }],
            ..r.clone()
        };
        let mut v = Validator::new("");
        orphan_rule.validate(&mut v);
        let fields: Vec<String> = v
            .finish()
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["denials[0].rule"], "a rule belongs to a policy");
        let many = TelemetryReport {
            denials: vec![r.denials[0].clone(); MAX_DENIALS + 1],
            ..r
        };
        let mut v = Validator::new("");
        many.validate(&mut v);
        let fields: Vec<String> = v
            .finish()
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["denials"]);
    }
}
