//! What the gateway counts, per API, operation and consumer, for the admin listener's
//! `/metrics` (Prometheus text), and the access log line of each request.
//!
//! Labels stay bounded: `api` and `consumer` are names of resources (or `anonymous`, or
//! `-` before a consumer is known), `operation` the listed operation that matched
//! (`GET /orders/{id}`) or `*` for an API that exposes all, `code` the status class.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// Counters by label set.
#[derive(Debug, Default)]
pub(crate) struct ApiMetrics {
    /// By API, operation and consumer, then status class (`CLASSES`): nested so that a
    /// request already seen is counted without building a key.
    series: Mutex<BTreeMap<String, ByOperation>>,
}

/// An API's counters: by operation, consumer, then status class.
type ByOperation = BTreeMap<String, BTreeMap<String, [Counters; 5]>>;

/// The status classes, in the order of the counters.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    requests: u64,
    seconds: f64,
}

/// A metric family: name, help, and the value of a label set.
type Family = (&'static str, &'static str, fn(&Counters) -> String);

/// One request, as the metrics and the access log see it.
pub(crate) struct Seen<'a> {
    pub(crate) api: &'a str,
    pub(crate) operation: &'a str,
    pub(crate) consumer: &'a str,
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    pub(crate) status: u16,
    pub(crate) duration: Duration,
}

impl ApiMetrics {
    /// Counts one request.
    pub(crate) fn record(&self, seen: &Seen<'_>) {
        let mut series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        let by_operation = match series.get_mut(seen.api) {
            Some(m) => m,
            None => series.entry(seen.api.to_owned()).or_default(),
        };
        let by_consumer = match by_operation.get_mut(seen.operation) {
            Some(m) => m,
            None => by_operation.entry(seen.operation.to_owned()).or_default(),
        };
        let classes = match by_consumer.get_mut(seen.consumer) {
            Some(c) => c,
            None => by_consumer.entry(seen.consumer.to_owned()).or_default(),
        };
        let c = &mut classes[class(seen.status)];
        c.requests += 1;
        c.seconds += seen.duration.as_secs_f64();
    }

    /// Appends the series to `out`.
    pub(crate) fn render(&self, out: &mut String) {
        let series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        if series.is_empty() {
            return;
        }
        let families: [Family; 2] = [
            (
                "ieum_gateway_requests_total",
                "Requests the gateway answered, by API, operation, consumer and status class.",
                |c| c.requests.to_string(),
            ),
            (
                "ieum_gateway_request_seconds_sum",
                "Time spent answering them, in seconds (divide by the requests for a mean).",
                |c| format!("{:.6}", c.seconds),
            ),
        ];
        for (name, help, value) in families {
            let _ = writeln!(out, "# HELP {name} {help}");
            let kind = if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (api, by_operation) in series.iter() {
                for (operation, by_consumer) in by_operation {
                    for (consumer, classes) in by_consumer {
                        for (code, c) in CLASSES.iter().zip(classes) {
                            if c.requests == 0 {
                                continue;
                            }
                            let _ = writeln!(
                                out,
                                "{name}{{api=\"{}\",operation=\"{}\",consumer=\"{}\",code=\"{code}\"}} {}",
                                escape(api),
                                escape(operation),
                                escape(consumer),
                                value(c)
                            );
                        }
                    }
                }
            }
        }
    }
}

/// The access log line of a request (JSON, one line).
pub(crate) fn access_line(seen: &Seen<'_>) -> String {
    serde_json::json!({
        "api": seen.api,
        "operation": seen.operation,
        "consumer": seen.consumer,
        "method": seen.method,
        "path": seen.path,
        "status": seen.status,
        "duration_ms": (seen.duration.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
    })
    .to_string()
}

/// The index in `CLASSES` of a status.
fn class(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
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

    fn seen<'a>(consumer: &'a str, status: u16) -> Seen<'a> {
        Seen {
            api: "shop",
            operation: "GET /orders/{id}",
            consumer,
            method: "GET",
            path: "/shop/orders/7",
            status,
            duration: Duration::from_millis(3),
        }
    }

    #[test]
    fn requests_are_counted_per_consumer_and_status_class() {
        let m = ApiMetrics::default();
        m.record(&seen("mobile", 200));
        m.record(&seen("mobile", 204));
        m.record(&seen("mobile", 429));
        m.record(&seen("partner", 200));
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("ieum_gateway_requests_total{api=\"shop\",operation=\"GET /orders/{id}\",consumer=\"mobile\",code=\"2xx\"} 2\n"), "{out}");
        assert!(
            out.contains("consumer=\"mobile\",code=\"4xx\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("consumer=\"partner\",code=\"2xx\"} 1\n"),
            "{out}"
        );
        assert!(out.contains("ieum_gateway_request_seconds_sum{api=\"shop\",operation=\"GET /orders/{id}\",consumer=\"mobile\",code=\"2xx\"} 0.006000\n"), "{out}");
        let mut empty = String::new();
        ApiMetrics::default().render(&mut empty);
        assert!(empty.is_empty());
    }

    #[test]
    fn an_access_line_carries_the_consumer() {
        let line: serde_json::Value =
            serde_json::from_str(&access_line(&seen("mobile", 200))).unwrap();
        assert_eq!(line["consumer"], "mobile");
        assert_eq!(line["api"], "shop");
        assert_eq!(line["status"], 200);
        assert_eq!(line["duration_ms"], 3.0);
    }
}
