use http::StatusCode;

use crate::classify::{Classification, Classify, Retryable, Source};

/// A request refused without reaching upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FailFastError {
    /// No endpoint has been ready for the fail-fast timeout.
    #[error("no endpoint ready: failing fast until one recovers")]
    NoEndpointReady,
    /// Too many requests already wait for an endpoint.
    #[error("too many requests waiting for an endpoint")]
    QueueFull,
}

impl Classify for FailFastError {
    fn classification(&self) -> Classification {
        let reason = match self {
            FailFastError::NoEndpointReady => "no-endpoint-ready",
            FailFastError::QueueFull => "queue-full",
        };
        Classification::new(
            Source::Local,
            Retryable::No,
            StatusCode::SERVICE_UNAVAILABLE,
            reason,
        )
    }
}
