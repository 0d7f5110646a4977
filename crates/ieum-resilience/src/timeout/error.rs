use std::time::Duration;

use http::StatusCode;

use crate::classify::{Classification, Classify, Retryable, Source};

/// One attempt took longer than `backendRequest`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("upstream attempt timed out after {0:?}")]
pub struct AttemptTimedOut(pub Duration);

impl Classify for AttemptTimedOut {
    fn classification(&self) -> Classification {
        // The request was sent: it may have been processed.
        Classification::new(
            Source::Upstream,
            Retryable::IfIdempotent,
            StatusCode::GATEWAY_TIMEOUT,
            "upstream-timeout",
        )
    }
}
