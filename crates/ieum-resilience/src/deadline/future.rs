use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep};
use tower::BoxError;

use super::DeadlineExceeded;

pin_project_lite::pin_project! {
    /// Future of [`super::DeadlineService`].
    pub struct DeadlineFuture<F> {
        #[pin]
        inner: Option<F>,
        #[pin]
        sleep: Option<Sleep>,
        exhausted: Option<DeadlineExceeded>,
    }
}

impl<F> DeadlineFuture<F> {
    pub(crate) fn unbounded(inner: F) -> Self {
        DeadlineFuture {
            inner: Some(inner),
            sleep: None,
            exhausted: None,
        }
    }

    pub(crate) fn bounded(inner: F, deadline: Instant) -> Self {
        DeadlineFuture {
            inner: Some(inner),
            sleep: Some(tokio::time::sleep_until(deadline)),
            exhausted: None,
        }
    }

    pub(crate) fn exhausted(err: DeadlineExceeded) -> Self {
        DeadlineFuture {
            inner: None,
            sleep: None,
            exhausted: Some(err),
        }
    }
}

impl<F, T, E> Future for DeadlineFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            let err = this
                .exhausted
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
            return Poll::Ready(Err(DeadlineExceeded::while_waiting().into()));
        }
        Poll::Pending
    }
}
