//! Sliding-window counters for the rate triggers.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::WindowKind;

const TIME_BUCKETS: u32 = 10;

#[derive(Debug)]
pub(super) enum Stats {
    /// Last N outcomes, with running totals.
    Calls {
        cap: usize,
        ring: VecDeque<(bool, bool)>,
        failures: u64,
        slows: u64,
    },
    /// Buckets of `window / 10`: (start, calls, failures, slow calls).
    Time {
        window: Duration,
        buckets: VecDeque<(Instant, u64, u64, u64)>,
    },
}

impl Stats {
    pub(super) fn new(kind: WindowKind) -> Self {
        match kind {
            WindowKind::Calls(n) => Stats::Calls {
                cap: n.max(1) as usize,
                ring: VecDeque::with_capacity(n.clamp(1, 1024) as usize),
                failures: 0,
                slows: 0,
            },
            WindowKind::Time(window) => Stats::Time {
                window,
                buckets: VecDeque::new(),
            },
        }
    }

    pub(super) fn record(&mut self, now: Instant, failed: bool, slow: bool) {
        match self {
            Stats::Calls {
                cap,
                ring,
                failures,
                slows,
            } => {
                if ring.len() == *cap
                    && let Some((f, s)) = ring.pop_front()
                {
                    *failures -= u64::from(f);
                    *slows -= u64::from(s);
                }
                ring.push_back((failed, slow));
                *failures += u64::from(failed);
                *slows += u64::from(slow);
            }
            Stats::Time { window, buckets } => {
                let bucket_len = *window / TIME_BUCKETS;
                expire(buckets, *window, now);
                match buckets.back_mut() {
                    Some(b) if now < b.0 + bucket_len => {
                        b.1 += 1;
                        b.2 += u64::from(failed);
                        b.3 += u64::from(slow);
                    }
                    _ => buckets.push_back((now, 1, u64::from(failed), u64::from(slow))),
                }
            }
        }
    }

    /// (calls, failures, slow calls) in the window.
    pub(super) fn totals(&mut self, now: Instant) -> (u64, u64, u64) {
        match self {
            Stats::Calls {
                ring,
                failures,
                slows,
                ..
            } => (ring.len() as u64, *failures, *slows),
            Stats::Time { window, buckets } => {
                expire(buckets, *window, now);
                buckets
                    .iter()
                    .fold((0, 0, 0), |(c, f, s), b| (c + b.1, f + b.2, s + b.3))
            }
        }
    }

    pub(super) fn clear(&mut self) {
        match self {
            Stats::Calls {
                ring,
                failures,
                slows,
                ..
            } => {
                ring.clear();
                *failures = 0;
                *slows = 0;
            }
            Stats::Time { buckets, .. } => buckets.clear(),
        }
    }
}

fn expire(buckets: &mut VecDeque<(Instant, u64, u64, u64)>, window: Duration, now: Instant) {
    while buckets
        .front()
        .is_some_and(|b| now.saturating_duration_since(b.0) >= window)
    {
        buckets.pop_front();
    }
}
