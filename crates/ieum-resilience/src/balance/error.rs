use http::StatusCode;

use crate::classify::{Classification, Classify, Retryable, Source};

/// No endpoint could take the request (none known, or all ejected or blocked).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no endpoint available for {destination}")]
pub struct NoEndpoint {
    /// The destination service.
    pub destination: std::sync::Arc<str>,
}

impl Classify for NoEndpoint {
    fn classification(&self) -> Classification {
        Classification::new(
            Source::Local,
            Retryable::No,
            StatusCode::SERVICE_UNAVAILABLE,
            "no-endpoint",
        )
    }
}
