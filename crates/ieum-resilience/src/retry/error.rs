use http::StatusCode;
use tower::BoxError;

use crate::classify::{Classification, Classify, Retryable, Source};

/// The caller's request body failed while it was being buffered for replay.
#[derive(Debug, thiserror::Error)]
#[error("reading the request body failed: {0}")]
pub struct BodyError(#[source] BoxError);

impl BodyError {
    pub(crate) fn from_box(e: BoxError) -> Self {
        BodyError(e)
    }
}

impl Classify for BodyError {
    fn classification(&self) -> Classification {
        Classification::new(
            Source::Downstream,
            Retryable::No,
            StatusCode::BAD_REQUEST,
            "request-body-failed",
        )
    }
}
