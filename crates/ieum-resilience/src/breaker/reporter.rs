//! Where breaker transitions go: a callback, and a coalescing reporter in front of it.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{BreakerId, BreakerState};

/// One change of state, with its reason in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// Whose breaker.
    pub id: BreakerId,
    /// State before.
    pub from: BreakerState,
    /// State after.
    pub to: BreakerState,
    /// Why, e.g. `5 consecutive failures; blocked for 5210ms`.
    pub reason: String,
    /// When.
    pub at: Instant,
}

/// Receives every transition; cheap to clone. Called with the breaker's lock held, so
/// the callback must be quick and must not call back into the breaker.
#[derive(Clone)]
pub struct Reporter(Arc<dyn Fn(Transition) + Send + Sync>);

impl Reporter {
    /// A reporter calling `f` for every transition.
    pub fn new(f: impl Fn(Transition) + Send + Sync + 'static) -> Self {
        Reporter(Arc::new(f))
    }

    /// Reports one transition.
    pub fn report(&self, t: Transition) {
        (self.0)(t)
    }
}

impl fmt::Debug for Reporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Reporter")
    }
}

/// What a coalescing reporter hands on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The transition reported (for a summary, the latest one of the window).
    pub transition: Transition,
    /// Transitions of the same caller and destination folded into this report (0 for
    /// the first transition of a burst, which is reported at once).
    pub coalesced: u32,
}

struct Pending {
    until: Instant,
    latest: Option<Transition>,
    folded: u32,
}

/// A reporter that hands the first transition of each caller and destination on at once,
/// then folds the following ones of the next `window` into one summary [`Report`] (with
/// the latest state) at the end of the window. A flapping endpoint, or a hundred endpoints
/// of one service tripping together, make two events per window instead of hundreds.
///
/// The returned task ends when every clone of the reporter is dropped, after flushing.
pub fn coalescing(
    window: Duration,
    sink: impl Fn(Report) + Send + 'static,
) -> (Reporter, JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Transition>();
    let task = tokio::spawn(async move {
        let mut pending: HashMap<(Arc<str>, Arc<str>), Pending> = HashMap::new();
        loop {
            let next = pending.values().map(|p| p.until).min();
            tokio::select! {
                msg = rx.recv() => {
                    let Some(t) = msg else { break };
                    let now = Instant::now();
                    let key = (t.id.caller.clone(), t.id.destination.clone());
                    match pending.get_mut(&key) {
                        Some(p) if now < p.until => {
                            p.folded += 1;
                            p.latest = Some(t);
                        }
                        _ => {
                            sink(Report { transition: t, coalesced: 0 });
                            pending.insert(key, Pending { until: now + window, latest: None, folded: 0 });
                        }
                    }
                }
                () = sleep_until(next), if next.is_some() => {
                    let now = Instant::now();
                    pending.retain(|_, p| {
                        if p.until > now {
                            return true;
                        }
                        if let Some(t) = p.latest.take() {
                            sink(Report { transition: t, coalesced: p.folded });
                        }
                        false
                    });
                }
            }
        }
        for (_, mut p) in pending {
            if let Some(t) = p.latest.take() {
                sink(Report {
                    transition: t,
                    coalesced: p.folded,
                });
            }
        }
    });
    let reporter = Reporter::new(move |t| {
        // The task only stops once every sender is gone, so this cannot fail while the
        // reporter exists, unless the runtime is shutting down.
        let _ = tx.send(t);
    });
    (reporter, task)
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
