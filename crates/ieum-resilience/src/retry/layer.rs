use std::sync::Arc;

use tower::Layer;

use super::{Retry, RetryBudget, RetryPolicy};

/// Retries under a policy within a shared budget; see the [module docs](super).
#[derive(Debug, Clone)]
pub struct RetryLayer {
    policy: Arc<RetryPolicy>,
    budget: Arc<RetryBudget>,
}

impl RetryLayer {
    /// A layer retrying under `policy` within `budget`.
    pub fn new(policy: RetryPolicy, budget: Arc<RetryBudget>) -> Self {
        RetryLayer {
            policy: Arc::new(policy),
            budget,
        }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Retry::new(inner, self.policy.clone(), self.budget.clone())
    }
}
