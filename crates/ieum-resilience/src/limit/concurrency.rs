use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tower::{BoxError, Layer, Service};

use super::Overloaded;

/// At most `max` requests in flight through every service this layer makes; more are
/// refused at once. `None` makes a pass-through layer (present but unconfigured).
#[derive(Debug, Clone)]
pub struct ConcurrencyLimitLayer {
    limit: Option<(usize, Arc<AtomicUsize>)>,
}

impl ConcurrencyLimitLayer {
    /// A bulkhead of `max` requests, or a pass-through for `None`.
    pub fn new(max: Option<usize>) -> Self {
        ConcurrencyLimitLayer {
            limit: max.map(|m| (m, Arc::new(AtomicUsize::new(0)))),
        }
    }
}

impl<S> Layer<S> for ConcurrencyLimitLayer {
    type Service = ConcurrencyLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyLimit {
            inner,
            limit: self.limit.clone(),
        }
    }
}

/// See [`ConcurrencyLimitLayer`].
#[derive(Debug, Clone)]
pub struct ConcurrencyLimit<S> {
    inner: S,
    limit: Option<(usize, Arc<AtomicUsize>)>,
}

impl<S> ConcurrencyLimit<S> {
    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.limit
            .as_ref()
            .map_or(0, |(_, n)| n.load(Ordering::Acquire))
    }
}

impl<S, R> Service<R> for ConcurrencyLimit<S>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ConcurrencyFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let Some((max, count)) = &self.limit else {
            return ConcurrencyFuture {
                inner: Some(self.inner.call(req)),
                slot: None,
                refused: None,
            };
        };
        if count.fetch_add(1, Ordering::AcqRel) >= *max {
            count.fetch_sub(1, Ordering::AcqRel);
            return ConcurrencyFuture {
                inner: None,
                slot: None,
                refused: Some(Overloaded { max: *max }),
            };
        }
        let slot = Slot(count.clone());
        ConcurrencyFuture {
            inner: Some(self.inner.call(req)),
            slot: Some(slot),
            refused: None,
        }
    }
}

/// One in-flight request; released on drop.
#[derive(Debug)]
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project_lite::pin_project! {
    /// Future of [`ConcurrencyLimit`].
    pub struct ConcurrencyFuture<F> {
        #[pin]
        inner: Option<F>,
        slot: Option<Slot>,
        refused: Option<Overloaded>,
    }
}

impl<F, T, E> Future for ConcurrencyFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(Err(this
                .refused
                .take()
                .unwrap_or(Overloaded { max: 0 })
                .into()));
        };
        let res = std::task::ready!(inner.poll(cx));
        this.slot.take();
        Poll::Ready(res.map_err(Into::into))
    }
}
