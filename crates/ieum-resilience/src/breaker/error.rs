use std::sync::Arc;

use http::StatusCode;

use super::BreakerState;
use crate::classify::{Classification, Classify, Retryable, Source};

/// A circuit breaker refused the call.
#[derive(Debug, Clone, thiserror::Error)]
#[error("circuit breaker for {destination} is {state}")]
pub struct Blocked {
    /// The destination whose breaker refused.
    pub destination: Arc<str>,
    /// `blocked`, or `probing` with every trial slot taken.
    pub state: BreakerState,
}

impl Classify for Blocked {
    fn classification(&self) -> Classification {
        // Nothing was sent: safe to try elsewhere.
        Classification::new(
            Source::Local,
            Retryable::Safe,
            StatusCode::SERVICE_UNAVAILABLE,
            "circuit-blocked",
        )
    }
}
