use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep};
use tower::BoxError;

use super::AttemptTimedOut;
use crate::deadline::DeadlineExceeded;

pin_project_lite::pin_project! {
    /// Future of [`super::AttemptTimeout`].
    pub struct AttemptTimeoutFuture<F> {
        #[pin]
        inner: Option<F>,
        #[pin]
        sleep: Option<Sleep>,
        started: Instant,
        failed: Option<DeadlineExceeded>,
    }
}

impl<F> AttemptTimeoutFuture<F> {
    pub(crate) fn new(inner: F, timer: Option<Instant>) -> Self {
        AttemptTimeoutFuture {
            inner: Some(inner),
            sleep: timer.map(tokio::time::sleep_until),
            started: Instant::now(),
            failed: None,
        }
    }

    pub(crate) fn failed(err: DeadlineExceeded) -> Self {
        AttemptTimeoutFuture {
            inner: None,
            sleep: None,
            started: Instant::now(),
            failed: Some(err),
        }
    }
}

impl<F, T, E> Future for AttemptTimeoutFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            let err = this
                .failed
                .take()
                .unwrap_or_else(DeadlineExceeded::while_waiting);
            return Poll::Ready(Err(err.into()));
        };
        if let Poll::Ready(res) = inner.poll(cx) {
            return Poll::Ready(res.map_err(Into::into));
        }
        if let Some(sleep) = this.sleep.as_pin_mut()
            && sleep.poll(cx).is_ready()
        {
            return Poll::Ready(Err(AttemptTimedOut(this.started.elapsed()).into()));
        }
        Poll::Pending
    }
}
