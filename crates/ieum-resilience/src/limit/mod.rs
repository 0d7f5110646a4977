//! Admission limits: a bulkhead ([`ConcurrencyLimitLayer`]) and a local GCRA rate limit
//! ([`RateLimitLayer`], on the `governor` crate). Both refuse at once instead of queueing
//! (load shedding): a bulkhead with 503 `overloaded`, a rate limit with 429
//! `rate-limited` and `Retry-After`.
//!
//! `governor` fits: it is a lock-free GCRA, and its `Clock` trait lets it read
//! `tokio::time::Instant`, so tests drive it with paused time like every other layer.

mod concurrency;
mod error;
mod rate;

pub use concurrency::{ConcurrencyLimit, ConcurrencyLimitLayer};
pub use error::{Overloaded, RateLimited};
pub use rate::{KeyedRateLimiter, RateLimit, RateLimitConfig, RateLimitLayer, TokioClock};

#[cfg(test)]
mod tests;
