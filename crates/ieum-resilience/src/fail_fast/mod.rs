//! Fail-fast with a bounded queue (Linkerd's behaviour): a request waits for the inner
//! service (usually the balancer) to be ready; when nothing has been ready for the
//! fail-fast `timeout`, every request fails at once with 503 `no-endpoint-ready` until the
//! inner service recovers, instead of piling up. At most `queue` requests wait at a time;
//! more are refused at once with 503 `queue-full` (load shedding).

mod error;

pub use error::FailFastError;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Sleep;
use tower::{BoxError, Layer, Service};

/// Runtime configuration, built from `ieum_model::policy::FailFast`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailFastConfig {
    /// Requests allowed to wait.
    pub queue: usize,
    /// Wait before failing fast.
    pub timeout: Duration,
}

impl Default for FailFastConfig {
    fn default() -> Self {
        FailFastConfig::from(&ieum_model::policy::FailFast::default())
    }
}

impl From<&ieum_model::policy::FailFast> for FailFastConfig {
    fn from(f: &ieum_model::policy::FailFast) -> Self {
        FailFastConfig {
            queue: f.queue as usize,
            timeout: f.timeout.get(),
        }
    }
}

#[derive(Debug, Default)]
struct Shared {
    waiting: AtomicUsize,
    failing: AtomicBool,
}

/// Fails fast when the inner service stays unready; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct FailFastLayer {
    config: FailFastConfig,
    shared: Arc<Shared>,
}

impl FailFastLayer {
    /// A layer; services it makes share one queue and one failing state.
    pub fn new(config: FailFastConfig) -> Self {
        FailFastLayer {
            config,
            shared: Arc::default(),
        }
    }
}

impl<S> Layer<S> for FailFastLayer {
    type Service = FailFast<S>;
    fn layer(&self, inner: S) -> Self::Service {
        FailFast {
            inner,
            config: self.config,
            shared: self.shared.clone(),
            wait: None,
            refuse: None,
        }
    }
}

/// See [`FailFastLayer`].
#[derive(Debug)]
pub struct FailFast<S> {
    inner: S,
    config: FailFastConfig,
    shared: Arc<Shared>,
    /// Set while this handle waits in the queue: fires at the fail-fast timeout.
    wait: Option<Pin<Box<Sleep>>>,
    /// The next call fails with this without reaching the inner service.
    refuse: Option<FailFastError>,
}

impl<S: Clone> Clone for FailFast<S> {
    fn clone(&self) -> Self {
        FailFast {
            inner: self.inner.clone(),
            config: self.config,
            shared: self.shared.clone(),
            wait: None,
            refuse: None,
        }
    }
}

impl<S> FailFast<S> {
    fn leave_queue(&mut self) {
        if self.wait.take().is_some() {
            self.shared.waiting.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Whether requests currently fail fast.
    pub fn is_failing(&self) -> bool {
        self.shared.failing.load(Ordering::Acquire)
    }
}

impl<S> Drop for FailFast<S> {
    fn drop(&mut self) {
        self.leave_queue();
    }
}

impl<S, R> Service<R> for FailFast<S>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = FailFastFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.refuse.is_some() {
            return Poll::Ready(Ok(()));
        }
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => {
                self.leave_queue();
                if self.shared.failing.swap(false, Ordering::AcqRel) {
                    tracing::info!("an endpoint is ready again: no longer failing fast");
                }
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(e)) => {
                self.leave_queue();
                return Poll::Ready(Err(e.into()));
            }
            Poll::Pending => {}
        }
        if self.shared.failing.load(Ordering::Acquire) {
            self.leave_queue();
            self.refuse = Some(FailFastError::NoEndpointReady);
            return Poll::Ready(Ok(()));
        }
        if self.wait.is_none() {
            if self.shared.waiting.fetch_add(1, Ordering::AcqRel) >= self.config.queue {
                self.shared.waiting.fetch_sub(1, Ordering::AcqRel);
                self.refuse = Some(FailFastError::QueueFull);
                return Poll::Ready(Ok(()));
            }
            self.wait = Some(Box::pin(tokio::time::sleep(self.config.timeout)));
        }
        if let Some(wait) = self.wait.as_mut()
            && wait.as_mut().poll(cx).is_ready()
        {
            self.leave_queue();
            if !self.shared.failing.swap(true, Ordering::AcqRel) {
                tracing::warn!(timeout = ?self.config.timeout, "no endpoint ready: failing fast");
            }
            self.refuse = Some(FailFastError::NoEndpointReady);
            return Poll::Ready(Ok(()));
        }
        Poll::Pending
    }

    fn call(&mut self, req: R) -> Self::Future {
        match self.refuse.take() {
            Some(e) => FailFastFuture {
                inner: None,
                error: Some(e),
            },
            None => FailFastFuture {
                inner: Some(self.inner.call(req)),
                error: None,
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// Future of [`FailFast`].
    pub struct FailFastFuture<F> {
        #[pin]
        inner: Option<F>,
        error: Option<FailFastError>,
    }
}

impl<F, T, E> Future for FailFastFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.inner.as_pin_mut() {
            Some(f) => f.poll(cx).map_err(Into::into),
            None => Poll::Ready(Err(this
                .error
                .take()
                .unwrap_or(FailFastError::NoEndpointReady)
                .into())),
        }
    }
}

#[cfg(test)]
mod tests;
