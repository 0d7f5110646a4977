//! Circuit breakers with states people understand: **allowed**, **blocked**, **probing**.
//!
//! A [`Breaker`] is the state machine; it trips on consecutive failures, on the failure
//! rate over a sliding window (count- or time-based, with a minimum number of calls) and
//! on the slow-call rate. Blocked, it refuses calls for a penalty that grows with jittered
//! exponential backoff each time it trips again; then it lets `probes` trial calls through
//! (`probing`) and is allowed again when they all succeed.
//!
//! Breakers work per service ([`CircuitBreakerLayer`]) and per endpoint (the balancer in
//! [`crate::balance`] keeps one per endpoint, like Linkerd's failure accrual). Every
//! transition goes to a [`Reporter`] with its reason; [`reporter::coalescing`] groups
//! transitions per caller and destination over a short window so an outage is a few
//! events, not thousands.

mod error;
pub mod reporter;
mod service;
mod window;

pub use error::Blocked;
pub use reporter::{Reporter, Transition};
pub(crate) use service::Guard;
pub use service::{CircuitBreaker, CircuitBreakerFuture, CircuitBreakerLayer};

use std::fmt;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use window::Stats;

/// The three states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls go through.
    Allowed,
    /// Calls are refused until the penalty is over.
    Blocked,
    /// A few trial calls go through; the rest are refused.
    Probing,
}

impl BreakerState {
    /// The lowercase name shown in events, metrics and the UI.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Allowed => "allowed",
            BreakerState::Blocked => "blocked",
            BreakerState::Probing => "probing",
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Sliding window of the failure-rate trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// The last N calls.
    Calls(u32),
    /// The calls of the last period.
    Time(Duration),
}

/// Runtime configuration of a breaker, built from `ieum_model::policy::CircuitBreaker`.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Failures in a row that block; 0 disables the trigger.
    pub consecutive_failures: u32,
    /// Failure share (0–1) over `window` that blocks; `None` disables the trigger.
    pub failure_rate: Option<f64>,
    /// Slow-call share (0–1) over `window` that blocks, and what "slow" means.
    pub slow_calls: Option<(f64, Duration)>,
    /// The window of the rate triggers.
    pub window: WindowKind,
    /// Fewer calls in the window never block on a rate.
    pub minimum_calls: u32,
    /// First penalty.
    pub blocked_base: Duration,
    /// Longest penalty.
    pub blocked_max: Duration,
    /// Trial calls while probing.
    pub probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig::from(&ieum_model::policy::CircuitBreaker::default())
    }
}

impl From<&ieum_model::policy::CircuitBreaker> for BreakerConfig {
    fn from(c: &ieum_model::policy::CircuitBreaker) -> Self {
        let (window, minimum_calls) = match &c.failure_rate {
            Some(fr) => (
                match fr.window {
                    ieum_model::policy::Window::Calls(n) => WindowKind::Calls(n),
                    ieum_model::policy::Window::Time(d) => WindowKind::Time(d.get()),
                },
                fr.minimum_calls,
            ),
            None => (WindowKind::Calls(100), 20),
        };
        BreakerConfig {
            consecutive_failures: c.consecutive_failures,
            failure_rate: c.failure_rate.map(|fr| fr.threshold / 100.0),
            slow_calls: c
                .slow_calls
                .map(|s| (s.threshold / 100.0, s.duration.get())),
            window,
            minimum_calls,
            blocked_base: c.blocked_for.base.get(),
            blocked_max: c.blocked_for.max.get(),
            probes: c.probes.max(1),
        }
    }
}

/// Who is calling whom, for reports.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BreakerId {
    /// The calling service (or component).
    pub caller: Arc<str>,
    /// The destination service.
    pub destination: Arc<str>,
    /// The endpoint, for per-endpoint breakers.
    pub endpoint: Option<Arc<str>>,
}

impl BreakerId {
    /// A per-service breaker id.
    pub fn service(caller: impl Into<Arc<str>>, destination: impl Into<Arc<str>>) -> Self {
        BreakerId {
            caller: caller.into(),
            destination: destination.into(),
            endpoint: None,
        }
    }
}

/// How a call ended, as the breaker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Succeeded.
    Success,
    /// Failed (5xx, connection error, timeout).
    Failure,
    /// Dropped before an answer: counts neither way.
    Cancelled,
}

/// Permission to make one call; give it back with [`Breaker::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit {
    probe: bool,
    generation: u64,
}

/// A circuit breaker; share it with `Arc`.
///
/// The common case (allowed, call succeeded, no rate triggers) takes no lock and reads no
/// clock: the state, generation and run of failures are mirrored in atomics.
#[derive(Debug)]
pub struct Breaker {
    id: BreakerId,
    config: BreakerConfig,
    reporter: Option<Reporter>,
    /// Mirror of `inner.state` (see [`encode`]) for the lock-free fast path.
    fast_state: AtomicU8,
    /// Mirror of `inner.generation`.
    fast_generation: AtomicU64,
    /// Failures in a row while allowed.
    consecutive: AtomicU32,
    /// Whether calls must be timed and counted in a window (rate triggers configured).
    windowed: bool,
    inner: Mutex<Inner>,
}

fn encode(s: BreakerState) -> u8 {
    match s {
        BreakerState::Allowed => 0,
        BreakerState::Blocked => 1,
        BreakerState::Probing => 2,
    }
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    /// Bumped on every transition, so late results of older calls are ignored.
    generation: u64,
    stats: Stats,
    blocked_until: Instant,
    times_blocked: u32,
    probes_admitted: u32,
    probes_succeeded: u32,
}

impl Breaker {
    /// A breaker in state `allowed`.
    pub fn new(id: BreakerId, config: BreakerConfig, reporter: Option<Reporter>) -> Self {
        let stats = Stats::new(config.window);
        let windowed = config.failure_rate.is_some() || config.slow_calls.is_some();
        Breaker {
            id,
            config,
            reporter,
            fast_state: AtomicU8::new(encode(BreakerState::Allowed)),
            fast_generation: AtomicU64::new(0),
            consecutive: AtomicU32::new(0),
            windowed,
            inner: Mutex::new(Inner {
                state: BreakerState::Allowed,
                generation: 0,
                stats,
                blocked_until: Instant::now(),
                times_blocked: 0,
                probes_admitted: 0,
                probes_succeeded: 0,
            }),
        }
    }

    /// Who calls whom.
    pub fn id(&self) -> &BreakerId {
        &self.id
    }

    /// The current state (a blocked breaker whose penalty is over reads as `probing`).
    pub fn state(&self) -> BreakerState {
        let inner = self.lock();
        if inner.state == BreakerState::Blocked && Instant::now() >= inner.blocked_until {
            BreakerState::Probing
        } else {
            inner.state
        }
    }

    /// Whether the breaker is `allowed`, read without a lock or a clock.
    pub(crate) fn is_allowed(&self) -> bool {
        self.fast_state.load(Ordering::Acquire) == encode(BreakerState::Allowed)
    }

    /// Whether calls must be timed (a slow-call trigger is configured).
    pub fn needs_timing(&self) -> bool {
        self.config.slow_calls.is_some()
    }

    /// Whether [`Breaker::try_acquire`] would succeed now, and if not, when it may.
    pub fn available(&self, now: Instant) -> Result<(), Instant> {
        if self.fast_state.load(Ordering::Acquire) == encode(BreakerState::Allowed) {
            return Ok(());
        }
        let inner = self.lock();
        match inner.state {
            BreakerState::Allowed => Ok(()),
            BreakerState::Blocked if now >= inner.blocked_until => Ok(()),
            BreakerState::Blocked => Err(inner.blocked_until),
            BreakerState::Probing if inner.probes_admitted < self.config.probes => Ok(()),
            // Waiting for probe results; checked again when one arrives.
            BreakerState::Probing => Err(now + self.config.blocked_base),
        }
    }

    /// Asks to make a call.
    pub fn try_acquire(&self) -> Result<Permit, Blocked> {
        if self.fast_state.load(Ordering::Acquire) == encode(BreakerState::Allowed) {
            return Ok(Permit {
                probe: false,
                generation: self.fast_generation.load(Ordering::Acquire),
            });
        }
        let now = Instant::now();
        let mut inner = self.lock();
        if inner.state == BreakerState::Blocked {
            if now < inner.blocked_until {
                return Err(Blocked {
                    destination: self.id.destination.clone(),
                    state: BreakerState::Blocked,
                });
            }
            self.transition(
                &mut inner,
                BreakerState::Probing,
                "penalty over, probing".into(),
                now,
            );
        }
        match inner.state {
            BreakerState::Allowed => Ok(Permit {
                probe: false,
                generation: inner.generation,
            }),
            BreakerState::Probing if inner.probes_admitted < self.config.probes => {
                inner.probes_admitted += 1;
                Ok(Permit {
                    probe: true,
                    generation: inner.generation,
                })
            }
            state => Err(Blocked {
                destination: self.id.destination.clone(),
                state,
            }),
        }
    }

    /// Records how a permitted call ended and how long it took.
    pub fn record(&self, permit: Permit, outcome: Outcome, elapsed: Duration) {
        if !permit.probe && outcome != Outcome::Failure && !self.windowed {
            // Allowed and not failing: only the run of failures ends.
            if outcome == Outcome::Success && self.consecutive.load(Ordering::Relaxed) != 0 {
                self.consecutive.store(0, Ordering::Relaxed);
            }
            return;
        }
        let now = Instant::now();
        let mut inner = self.lock();
        if permit.generation != inner.generation {
            return;
        }
        if permit.probe {
            match outcome {
                Outcome::Cancelled => {
                    inner.probes_admitted = inner.probes_admitted.saturating_sub(1)
                }
                Outcome::Failure => self.block(&mut inner, "a probe failed".into(), now),
                Outcome::Success => {
                    inner.probes_succeeded += 1;
                    if inner.probes_succeeded >= self.config.probes {
                        let reason = format!("{} probe(s) succeeded", inner.probes_succeeded);
                        inner.times_blocked = 0;
                        self.transition(&mut inner, BreakerState::Allowed, reason, now);
                    }
                }
            }
            return;
        }
        if inner.state != BreakerState::Allowed || outcome == Outcome::Cancelled {
            return;
        }
        let failed = outcome == Outcome::Failure;
        let slow = self.config.slow_calls.is_some_and(|(_, d)| elapsed >= d);
        let run = if failed {
            self.consecutive.fetch_add(1, Ordering::AcqRel) + 1
        } else {
            self.consecutive.store(0, Ordering::Relaxed);
            0
        };
        if self.windowed {
            inner.stats.record(now, failed, slow);
        }
        let c = &self.config;
        if c.consecutive_failures > 0 && run >= c.consecutive_failures {
            let reason = format!("{run} consecutive failures");
            self.block(&mut inner, reason, now);
            return;
        }
        let (calls, failures, slows) = inner.stats.totals(now);
        if !self.windowed || calls < u64::from(c.minimum_calls) || calls == 0 {
            return;
        }
        let window = match c.window {
            WindowKind::Calls(n) => format!("the last {n} calls"),
            WindowKind::Time(d) => format!("the last {}s", d.as_secs()),
        };
        if let Some(threshold) = c.failure_rate {
            let rate = failures as f64 / calls as f64;
            if rate >= threshold {
                let reason = format!("failure rate {:.0}% over {window}", rate * 100.0);
                self.block(&mut inner, reason, now);
                return;
            }
        }
        if let Some((threshold, d)) = c.slow_calls {
            let rate = slows as f64 / calls as f64;
            if rate >= threshold {
                let reason = format!(
                    "{:.0}% of calls slower than {d:?} over {window}",
                    rate * 100.0
                );
                self.block(&mut inner, reason, now);
            }
        }
    }

    fn block(&self, inner: &mut Inner, reason: String, now: Instant) {
        inner.times_blocked = inner.times_blocked.saturating_add(1);
        let penalty = self.penalty(inner.times_blocked);
        inner.blocked_until = now + penalty;
        let reason = format!("{reason}; blocked for {}ms", penalty.as_millis());
        self.transition(inner, BreakerState::Blocked, reason, now);
    }

    /// The n-th penalty: `min(max, base × 2^(n-1))`, stretched by up to 50 % of jitter and
    /// capped at `max`, so breakers that tripped together do not probe together.
    fn penalty(&self, n: u32) -> Duration {
        let c = &self.config;
        let factor = 1u32
            .checked_shl(n.saturating_sub(1).min(31))
            .unwrap_or(u32::MAX);
        let d = c
            .blocked_base
            .checked_mul(factor)
            .map_or(c.blocked_max, |d| d.min(c.blocked_max));
        d.mul_f64(1.0 + rand::random::<f64>() * 0.5)
            .min(c.blocked_max.max(c.blocked_base))
    }

    fn transition(&self, inner: &mut Inner, to: BreakerState, reason: String, now: Instant) {
        let from = inner.state;
        inner.state = to;
        inner.generation += 1;
        self.fast_generation
            .store(inner.generation, Ordering::Release);
        self.fast_state.store(encode(to), Ordering::Release);
        self.consecutive.store(0, Ordering::Release);
        inner.probes_admitted = 0;
        inner.probes_succeeded = 0;
        inner.stats.clear();
        tracing::debug!(caller = %self.id.caller, destination = %self.id.destination, %from, %to, %reason, "circuit breaker");
        if let Some(r) = &self.reporter {
            r.report(Transition {
                id: self.id.clone(),
                from,
                to,
                reason,
                at: now,
            });
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests;
