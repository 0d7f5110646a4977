//! The per-attempt (`backendRequest`) timeout of GEP-1742.
//!
//! Sits under the retry layer, so it runs once per attempt: it bounds the attempt by
//! `min(backendRequest, what is left of the request's` [`Deadline`]`)`, and rewrites the
//! remaining budget on the outgoing request so the next hop knows how long it has. An
//! attempt that starts after the deadline fails with [`DeadlineExceeded`] without being
//! sent.

mod error;
mod future;
mod layer;

pub use error::AttemptTimedOut;
pub use future::AttemptTimeoutFuture;
pub use layer::AttemptTimeoutLayer;

use std::task::{Context, Poll};
use std::time::Duration;

use http::Request;
use tokio::time::Instant;
use tower::{BoxError, Service};

use crate::deadline::{Deadline, DeadlineExceeded, write_budget};

/// See [`AttemptTimeoutLayer`].
#[derive(Debug, Clone)]
pub struct AttemptTimeout<S> {
    inner: S,
    per_attempt: Option<Duration>,
}

impl<S> AttemptTimeout<S> {
    /// Bounds each attempt by `per_attempt` (`None` or zero: only by the deadline).
    pub fn new(inner: S, per_attempt: Option<Duration>) -> Self {
        AttemptTimeout {
            inner,
            per_attempt: per_attempt.filter(|d| !d.is_zero()),
        }
    }
}

impl<S, B> Service<Request<B>> for AttemptTimeout<S>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = AttemptTimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let deadline = Deadline::of(&req);
        if deadline.is_none() && self.per_attempt.is_none() {
            return AttemptTimeoutFuture::new(self.inner.call(req), None);
        }
        let now = Instant::now();
        let remaining = deadline.map(|d| d.remaining(now));
        if remaining.is_some_and(|r| r.is_zero()) {
            return AttemptTimeoutFuture::failed(DeadlineExceeded::before_sending(false));
        }
        let (budget, own_timer) = match (remaining, self.per_attempt) {
            // The deadline layer's timer already covers the whole budget.
            (Some(r), Some(a)) if a < r => (a, true),
            (Some(r), _) => (r, false),
            (None, Some(a)) => (a, true),
            (None, None) => unreachable!("handled above"),
        };
        write_budget(req.headers_mut(), budget);
        let timer = own_timer.then(|| now + budget);
        AttemptTimeoutFuture::new(self.inner.call(req), timer)
    }
}

#[cfg(test)]
mod tests;
