use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Number of buckets the window is split into; requests expire a bucket at a time.
const BUCKETS: usize = 10;

/// Caps retries to `ratio` of the original requests seen over `window`, plus
/// `min_per_second` retries per second always allowed (Linkerd's retry budget: 0.2,
/// 10/s, 10 s). Share one budget per destination across every caller clone so retries
/// cannot multiply an outage.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    reserve: f64,
    bucket_len: Duration,
    ring: Mutex<Ring>,
}

#[derive(Debug)]
struct Ring {
    deposits: [u32; BUCKETS],
    withdrawals: [u32; BUCKETS],
    current: usize,
    current_start: Instant,
}

impl RetryBudget {
    /// A budget of `ratio` retries per request over `window`, plus `min_per_second`.
    pub fn new(ratio: f64, min_per_second: u32, window: Duration) -> Self {
        let window = window.max(Duration::from_millis(BUCKETS as u64));
        RetryBudget {
            ratio: ratio.max(0.0),
            reserve: f64::from(min_per_second) * window.as_secs_f64(),
            bucket_len: window / BUCKETS as u32,
            ring: Mutex::new(Ring {
                deposits: [0; BUCKETS],
                withdrawals: [0; BUCKETS],
                current: 0,
                current_start: Instant::now(),
            }),
        }
    }

    /// Records an original request.
    pub fn deposit(&self) {
        let mut ring = self.lock();
        ring.rotate(Instant::now(), self.bucket_len);
        let c = ring.current;
        ring.deposits[c] = ring.deposits[c].saturating_add(1);
    }

    /// Takes one retry from the budget; `false` when the budget is spent.
    pub fn withdraw(&self) -> bool {
        let mut ring = self.lock();
        ring.rotate(Instant::now(), self.bucket_len);
        let deposits: u64 = ring.deposits.iter().map(|d| u64::from(*d)).sum();
        let withdrawals: u64 = ring.withdrawals.iter().map(|d| u64::from(*d)).sum();
        let allowed = self.reserve + self.ratio * deposits as f64;
        if (withdrawals as f64) < allowed.floor() {
            let c = ring.current;
            ring.withdrawals[c] = ring.withdrawals[c].saturating_add(1);
            true
        } else {
            false
        }
    }

    /// Retries still available now.
    pub fn remaining(&self) -> u64 {
        let mut ring = self.lock();
        ring.rotate(Instant::now(), self.bucket_len);
        let deposits: u64 = ring.deposits.iter().map(|d| u64::from(*d)).sum();
        let withdrawals: u64 = ring.withdrawals.iter().map(|d| u64::from(*d)).sum();
        ((self.reserve + self.ratio * deposits as f64).floor() as u64).saturating_sub(withdrawals)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        // A panic while holding this lock leaves consistent counters: keep going.
        self.ring
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget::from(&ieum_model::policy::RetryBudget::default())
    }
}

impl From<&ieum_model::policy::RetryBudget> for RetryBudget {
    fn from(b: &ieum_model::policy::RetryBudget) -> Self {
        RetryBudget::new(b.ratio, b.min_per_second, b.window.get())
    }
}

impl Ring {
    fn rotate(&mut self, now: Instant, bucket_len: Duration) {
        let elapsed = now.saturating_duration_since(self.current_start);
        if elapsed < bucket_len {
            return;
        }
        let steps = (elapsed.as_nanos() / bucket_len.as_nanos().max(1)) as usize;
        for _ in 0..steps.min(BUCKETS) {
            self.current = (self.current + 1) % BUCKETS;
            self.deposits[self.current] = 0;
            self.withdrawals[self.current] = 0;
        }
        self.current_start += bucket_len * u32::try_from(steps).unwrap_or(u32::MAX);
        if steps >= BUCKETS {
            self.current_start = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[tokio::test(start_paused = true)]
    async fn reserve_then_ratio() {
        let b = RetryBudget::new(0.2, 1, Duration::from_secs(10));
        // Reserve: 1/s × 10 s.
        for _ in 0..10 {
            assert!(b.withdraw());
        }
        assert!(!b.withdraw());
        for _ in 0..50 {
            b.deposit();
        }
        // 50 × 0.2 = 10 more.
        assert_eq!(b.remaining(), 10);
        for _ in 0..10 {
            assert!(b.withdraw());
        }
        assert!(!b.withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn requests_expire_after_the_window() {
        let b = RetryBudget::new(0.5, 0, Duration::from_secs(10));
        for _ in 0..100 {
            b.deposit();
        }
        assert_eq!(b.remaining(), 50);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(b.remaining(), 50);
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(b.remaining(), 0);
        assert!(!b.withdraw());
    }

    #[test]
    fn budget_holds_under_concurrent_load() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let b = Arc::new(RetryBudget::new(0.2, 10, Duration::from_secs(10)));
            let granted = Arc::new(AtomicU64::new(0));
            let mut tasks = Vec::new();
            for _ in 0..8 {
                let (b, granted) = (b.clone(), granted.clone());
                tasks.push(tokio::spawn(async move {
                    for _ in 0..1000 {
                        b.deposit();
                        // Every request would like two retries.
                        for _ in 0..2 {
                            if b.withdraw() {
                                granted.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            // 8000 requests × 0.2 + 10/s × 10 s reserve; the test runs in well under a window.
            let granted = granted.load(Ordering::Relaxed);
            assert!(granted <= 1600 + 100, "granted {granted}");
            assert!(granted >= 1600, "granted {granted}");
        });
    }
}
