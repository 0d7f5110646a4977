use std::time::Duration;

/// Exponential backoff with full jitter: the wait before retry `n` (0-based) is drawn
/// uniformly from `[0, min(max, base × 2^n)]`, so callers that failed together do not
/// retry together (AWS architecture blog, "Exponential Backoff and Jitter").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
}

impl Backoff {
    /// Waits growing from `base`, capped at `max` (`max` is raised to `base` if lower).
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max: max.max(base),
        }
    }

    /// The cap.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The most retry `n` may wait: `min(max, base × 2^n)`.
    pub fn ceiling(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX);
        self.base
            .checked_mul(factor)
            .map_or(self.max, |d| d.min(self.max))
    }

    /// A random wait before retry `n`.
    pub fn delay(&self, n: u32) -> Duration {
        let ceiling = self.ceiling(n);
        if ceiling.is_zero() {
            return ceiling;
        }
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::random_range(0..=nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn delay_stays_within_the_ceiling(base_ms in 1u64..10_000, max_ms in 1u64..100_000, n in 0u32..64) {
            let b = Backoff::new(Duration::from_millis(base_ms), Duration::from_millis(max_ms));
            let ceiling = b.ceiling(n);
            prop_assert!(ceiling <= b.max());
            prop_assert!(ceiling >= Duration::from_millis(base_ms).min(b.max()));
            let d = b.delay(n);
            prop_assert!(d <= ceiling, "{d:?} > {ceiling:?}");
        }

        #[test]
        fn ceiling_grows_until_the_cap(base_ms in 1u64..1_000, max_ms in 1u64..100_000, n in 0u32..40) {
            let b = Backoff::new(Duration::from_millis(base_ms), Duration::from_millis(max_ms));
            prop_assert!(b.ceiling(n) <= b.ceiling(n + 1));
            let exact = Duration::from_millis(base_ms).checked_mul(1u32 << n.min(20));
            if n <= 20 && let Some(exact) = exact { prop_assert_eq!(b.ceiling(n), exact.min(b.max())); }
        }
    }

    #[test]
    fn jitter_spreads_waits() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let waits: Vec<_> = (0..200).map(|_| b.delay(3)).collect();
        let below_half = waits
            .iter()
            .filter(|d| **d < Duration::from_millis(400))
            .count();
        // Uniform over [0, 800ms]: about half below 400ms; all equal would give 0 or 200.
        assert!((50..150).contains(&below_half), "{below_half}");
    }
}
