use std::time::Duration;

use http::StatusCode;

use crate::classify::{Classification, Classify, Retryable, Source};

/// The bulkhead is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{max} requests already in flight")]
pub struct Overloaded {
    /// The limit.
    pub max: usize,
}

impl Classify for Overloaded {
    fn classification(&self) -> Classification {
        Classification::new(
            Source::Local,
            Retryable::No,
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
        )
    }
}

/// The rate limit is exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rate limit exceeded: retry in {retry_after:?}")]
pub struct RateLimited {
    /// When the next request would be admitted.
    pub retry_after: Duration,
}

impl RateLimited {
    /// `Retry-After` in whole seconds, rounded up (at least 1).
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_nanos().div_ceil(1_000_000_000).max(1) as u64
    }
}

impl Classify for RateLimited {
    fn classification(&self) -> Classification {
        Classification::new(
            Source::Downstream,
            Retryable::No,
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
        )
    }
}
