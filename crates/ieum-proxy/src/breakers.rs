//! Circuit-breaker transitions: the latest state of every breaker (for `/endpoints`), and
//! a coalesced feed of transitions for the lifecycle to record as events on the
//! service's timeline ([`crate::Sidecar::breaker_reports`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ieum_model::Timestamp;
use ieum_resilience::breaker::reporter::{Report, coalescing};
use ieum_resilience::breaker::{Reporter, Transition};
use serde::Serialize;
use tokio::sync::broadcast;

/// Transitions of one caller and destination within this window fold into one report.
const COALESCE: Duration = Duration::from_secs(10);

/// A breaker's latest state.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BreakerView {
    destination: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    endpoint: Option<String>,
    state: &'static str,
    reason: String,
    since: Timestamp,
}

/// Where transitions go.
pub(crate) struct Breakers {
    /// Given to every stack.
    pub(crate) reporter: Reporter,
    latest: Arc<Mutex<BTreeMap<String, BreakerView>>>,
    feed: broadcast::Sender<Report>,
}

impl Breakers {
    /// Starts the coalescing task (it ends when the last reporter is dropped).
    pub(crate) fn start() -> Breakers {
        let (feed, _) = broadcast::channel(256);
        let tx = feed.clone();
        let (coalesced, _task) = coalescing(COALESCE, move |r: Report| {
            let t = &r.transition;
            tracing::info!(
                destination = %t.id.destination,
                endpoint = t.id.endpoint.as_deref().unwrap_or("-"),
                from = t.from.as_str(),
                to = t.to.as_str(),
                reason = %t.reason,
                coalesced = r.coalesced,
                "circuit breaker"
            );
            let _ = tx.send(r);
        });
        let latest: Arc<Mutex<BTreeMap<String, BreakerView>>> = Arc::default();
        let l = latest.clone();
        // Called with the breaker's lock held: a map insert and a channel send, no more.
        let reporter = Reporter::new(move |t: Transition| {
            let key = match &t.id.endpoint {
                Some(e) => format!("{}/{e}", t.id.destination),
                None => t.id.destination.to_string(),
            };
            let view = BreakerView {
                destination: t.id.destination.to_string(),
                endpoint: t.id.endpoint.as_deref().map(str::to_owned),
                state: t.to.as_str(),
                reason: t.reason.clone(),
                since: Timestamp::from_system(SystemTime::now()),
            };
            l.lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key, view);
            coalesced.report(t);
        });
        Breakers {
            reporter,
            latest,
            feed,
        }
    }

    /// Every breaker that ever left `allowed`, with its latest state.
    pub(crate) fn views(&self) -> Vec<BreakerView> {
        self.latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Report> {
        self.feed.subscribe()
    }
}
