use std::time::Duration;

use tower::Layer;

use super::DeadlineService;

/// Applies the whole-exchange timeout and the caller's propagated budget; see the
/// [module docs](super).
#[derive(Debug, Clone, Copy, Default)]
pub struct DeadlineLayer {
    timeout: Option<Duration>,
    forward: bool,
}

impl DeadlineLayer {
    /// Bounds every exchange by `timeout`; `None` or zero bounds it only by the caller's
    /// budget (GEP-1742: `0s` disables).
    pub fn new(timeout: Option<Duration>) -> Self {
        DeadlineLayer {
            timeout,
            forward: true,
        }
    }

    /// Leaves writing the remaining budget on the request to a
    /// [`crate::timeout::AttemptTimeoutLayer`] below, which rewrites it before each attempt
    /// anyway: saves a header write and keeps the request head small for retry clones.
    pub fn without_forwarding(mut self) -> Self {
        self.forward = false;
        self
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        DeadlineService {
            forward: self.forward,
            ..DeadlineService::new(inner, self.timeout)
        }
    }
}
