//! Outlier detection (Envoy's, simplified): an endpoint answering `consecutive_5xx`
//! failures in a row (5xx, or a connection error) is ejected for `base × times ejected`
//! (at most `max`), while never more than `max_ejection_share` of the endpoints are out at
//! once — though one may always be ejected when there are at least two. The multiplier
//! drops by one for every `base` an endpoint stays in.
//!
//! The balancer in [`crate::balance`] keeps one [`OutlierState`] per endpoint and skips
//! ejected ones.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Runtime configuration, built from `ieum_model::policy::OutlierDetection`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutlierConfig {
    /// Failures in a row that eject.
    pub consecutive_5xx: u32,
    /// First ejection.
    pub base: Duration,
    /// Longest ejection.
    pub max: Duration,
    /// Largest share (0–1) of endpoints ejected at once.
    pub max_ejection_share: f64,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig::from(&ieum_model::policy::OutlierDetection::default())
    }
}

impl From<&ieum_model::policy::OutlierDetection> for OutlierConfig {
    fn from(o: &ieum_model::policy::OutlierDetection) -> Self {
        OutlierConfig {
            consecutive_5xx: o.consecutive_5xx.max(1),
            base: o.base_ejection_time.get(),
            max: o.max_ejection_time.get(),
            max_ejection_share: f64::from(o.max_ejection_percent) / 100.0,
        }
    }
}

impl OutlierConfig {
    /// How many of `total` endpoints may be ejected at once.
    pub fn max_ejected(&self, total: usize) -> usize {
        let share = (total as f64 * self.max_ejection_share).floor() as usize;
        if total >= 2 { share.max(1) } else { share }
    }
}

/// Outlier state of one endpoint.
#[derive(Debug, Default)]
pub struct OutlierState {
    consecutive: AtomicU32,
    ejection: Mutex<Ejection>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Ejection {
    until: Option<Instant>,
    times: u32,
}

impl OutlierState {
    /// When the current ejection ends, if ejected at `now`.
    pub fn ejected_until(&self, now: Instant) -> Option<Instant> {
        self.lock().until.filter(|u| *u > now)
    }

    /// Records a success: resets the run of failures.
    pub fn record_success(&self) {
        if self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Relaxed);
        }
    }

    /// Records a failure; ejects the endpoint when the run is long enough and
    /// `ejected_now` (endpoints already out) leaves room. Returns the ejection time.
    pub fn record_failure(
        &self,
        config: &OutlierConfig,
        now: Instant,
        total: usize,
        ejected_now: impl FnOnce() -> usize,
    ) -> Option<Duration> {
        let run = self.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
        if run < config.consecutive_5xx {
            return None;
        }
        // Count before locking: the count reads every endpoint, this one included.
        let ejected = ejected_now();
        let mut e = self.lock();
        if e.until.is_some_and(|u| u > now) || ejected >= config.max_ejected(total) {
            return None;
        }
        // The multiplier decays by one per `base` spent in rotation since the last ejection.
        if let Some(ended) = e.until {
            let healthy = now.saturating_duration_since(ended);
            let decay = (healthy.as_nanos() / config.base.as_nanos().max(1)) as u32;
            e.times = e.times.saturating_sub(decay);
        }
        e.times = e.times.saturating_add(1);
        let d = config
            .base
            .checked_mul(e.times)
            .map_or(config.max, |d| d.min(config.max));
        e.until = Some(now + d);
        drop(e);
        self.consecutive.store(0, Ordering::Release);
        Some(d)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ejection> {
        self.ejection
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> OutlierConfig {
        OutlierConfig {
            consecutive_5xx: 3,
            base: Duration::from_secs(30),
            max: Duration::from_secs(300),
            max_ejection_share: 0.5,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ejects_after_consecutive_failures_for_base_times_count() {
        let s = OutlierState::default();
        let c = cfg();
        let now = Instant::now();
        assert_eq!(s.record_failure(&c, now, 4, || 0), None);
        s.record_success();
        assert_eq!(s.record_failure(&c, now, 4, || 0), None);
        assert_eq!(s.record_failure(&c, now, 4, || 0), None);
        assert_eq!(
            s.record_failure(&c, now, 4, || 0),
            Some(Duration::from_secs(30))
        );
        assert!(s.ejected_until(now).is_some());
        tokio::time::advance(Duration::from_secs(31)).await;
        let now = Instant::now();
        assert_eq!(s.ejected_until(now), None);
        for _ in 0..2 {
            assert_eq!(s.record_failure(&c, now, 4, || 0), None);
        }
        // Second ejection right after the first: twice as long.
        assert_eq!(
            s.record_failure(&c, now, 4, || 0),
            Some(Duration::from_secs(60))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_than_the_share() {
        let c = cfg();
        let s = OutlierState::default();
        let now = Instant::now();
        for _ in 0..2 {
            s.record_failure(&c, now, 4, || 2);
        }
        // 2 of 4 already out and the share is 50 %: no room.
        assert_eq!(s.record_failure(&c, now, 4, || 2), None);
        assert_eq!(c.max_ejected(1), 0);
        assert_eq!(c.max_ejected(2), 1);
        assert_eq!(c.max_ejected(3), 1);
        assert_eq!(c.max_ejected(10), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_is_capped_and_multiplier_decays() {
        let c = OutlierConfig {
            consecutive_5xx: 1,
            ..cfg()
        };
        let s = OutlierState::default();
        let mut last = Duration::ZERO;
        for _ in 0..20 {
            let now = Instant::now();
            last = s.record_failure(&c, now, 10, || 0).unwrap();
            tokio::time::advance(last).await;
        }
        assert_eq!(last, Duration::from_secs(300));
        // Healthy for a long time: back to the base.
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(
            s.record_failure(&c, Instant::now(), 10, || 0),
            Some(Duration::from_secs(30))
        );
    }
}
