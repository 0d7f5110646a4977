use std::time::Duration;

use tower::Layer;

use super::AttemptTimeout;

/// Bounds each attempt; see the [module docs](super).
#[derive(Debug, Clone, Copy, Default)]
pub struct AttemptTimeoutLayer {
    per_attempt: Option<Duration>,
}

impl AttemptTimeoutLayer {
    /// Bounds each attempt by `per_attempt`; `None` or zero leaves only the deadline.
    pub fn new(per_attempt: Option<Duration>) -> Self {
        AttemptTimeoutLayer { per_attempt }
    }
}

impl<S> Layer<S> for AttemptTimeoutLayer {
    type Service = AttemptTimeout<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AttemptTimeout::new(inner, self.per_attempt)
    }
}
