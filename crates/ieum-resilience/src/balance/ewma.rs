//! Peak-EWMA latency estimate (Linkerd's and tower's): a slower sample replaces the
//! estimate at once (peak), faster samples pull it down gradually, and without samples it
//! decays towards zero so an endpoint that was once slow is tried again.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub(super) struct Ewma {
    /// Seconds.
    estimate: f64,
    stamp: Instant,
}

impl Ewma {
    pub(super) fn new(default_rtt: Duration, now: Instant) -> Self {
        Ewma {
            estimate: default_rtt.as_secs_f64(),
            stamp: now,
        }
    }

    fn decayed(&self, now: Instant, decay: Duration) -> f64 {
        let elapsed = now.saturating_duration_since(self.stamp).as_secs_f64();
        self.estimate * (-elapsed / decay.as_secs_f64().max(1e-9)).exp()
    }

    /// The estimate at `now`, in seconds.
    pub(super) fn estimate(&self, now: Instant, decay: Duration) -> f64 {
        self.decayed(now, decay)
    }

    pub(super) fn observe(&mut self, rtt: Duration, now: Instant, decay: Duration) {
        let rtt = rtt.as_secs_f64();
        let elapsed = now.saturating_duration_since(self.stamp).as_secs_f64();
        let w = (-elapsed / decay.as_secs_f64().max(1e-9)).exp();
        let current = self.estimate * w;
        self.estimate = if rtt > current {
            rtt
        } else {
            current * w + rtt * (1.0 - w)
        };
        self.stamp = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn peaks_at_once_and_decays_slowly() {
        let decay = Duration::from_secs(10);
        let mut e = Ewma::new(Duration::from_millis(30), Instant::now());
        e.observe(Duration::from_millis(500), Instant::now(), decay);
        assert_eq!(e.estimate(Instant::now(), decay), 0.5);
        tokio::time::advance(Duration::from_secs(1)).await;
        let after = e.estimate(Instant::now(), decay);
        assert!(after < 0.5 && after > 0.4, "{after}");
        tokio::time::advance(Duration::from_secs(100)).await;
        assert!(e.estimate(Instant::now(), decay) < 1e-4);
    }
}
