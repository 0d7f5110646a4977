//! The one body type every listener answers with, and the in-flight guard that rides on it.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::Notify;
use tower::BoxError;

/// Response body of every listener: upstream bodies stream through boxed, local answers
/// are short texts. `Default` (empty) is what the resilience stack needs for its errors.
pub type ProxyBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// A short text body.
pub(crate) fn text(s: impl Into<String>) -> ProxyBody {
    http_body_util::Full::new(Bytes::from(s.into()))
        .map_err(|never| match never {})
        .boxed()
}

/// Boxes any body whose errors convert.
pub(crate) fn boxed<B>(body: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

pin_project_lite::pin_project! {
    /// A request body on its way through the proxy: the connection's own stream, held to a
    /// size limit when the listener sets one (an API gateway's `maxBodyBytes`). Past the
    /// limit the body fails, so the call upstream fails too, and the limit's flag (see
    /// [`RequestBody::limited`]) says why.
    pub struct RequestBody {
        #[pin]
        inner: hyper::body::Incoming,
        limit: Option<Limit>,
    }
}

#[derive(Debug)]
struct Limit {
    left: u64,
    exceeded: Arc<std::sync::atomic::AtomicBool>,
}

impl RequestBody {
    /// The stream as it comes.
    pub fn new(inner: hyper::body::Incoming) -> RequestBody {
        RequestBody { inner, limit: None }
    }

    /// The stream, failing once more than `max` bytes have come; `exceeded` is set then.
    pub fn limited(
        inner: hyper::body::Incoming,
        max: u64,
        exceeded: Arc<std::sync::atomic::AtomicBool>,
    ) -> RequestBody {
        RequestBody {
            inner,
            limit: Some(Limit {
                left: max,
                exceeded,
            }),
        }
    }
}

/// Why a limited request body failed.
#[derive(Debug, thiserror::Error)]
#[error("the request body is larger than allowed")]
pub struct BodyTooLarge;

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let frame = match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        if let (Some(limit), Some(data)) = (this.limit.as_mut(), frame.data_ref()) {
            let n = data.len() as u64;
            if n > limit.left {
                limit.exceeded.store(true, Ordering::Release);
                return Poll::Ready(Some(Err(BodyTooLarge.into())));
            }
            limit.left -= n;
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Counts requests in flight (request received, response body not yet finished), so a
/// drain knows when it may stop.
#[derive(Debug, Default)]
pub(crate) struct InFlightCounter {
    count: AtomicUsize,
    idle: Notify,
}

impl InFlightCounter {
    pub(crate) fn get(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Waits until nothing is in flight.
    pub(crate) async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.get() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One request in flight; decrements the counter when dropped.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<InFlightCounter>);

impl InFlight {
    pub(crate) fn new(counter: &Arc<InFlightCounter>) -> Self {
        counter.count.fetch_add(1, Ordering::AcqRel);
        InFlight(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

pin_project_lite::pin_project! {
    /// A body that keeps its request counted as in flight until it ends or is dropped.
    pub(crate) struct Guarded {
        #[pin]
        inner: ProxyBody,
        guard: Option<InFlight>,
    }
}

impl Guarded {
    pub(crate) fn wrap(inner: ProxyBody, guard: InFlight) -> ProxyBody {
        Guarded {
            inner,
            guard: Some(guard),
        }
        .boxed()
    }
}

impl Body for Guarded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let res = this.inner.poll_frame(cx);
        if matches!(res, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.guard.take();
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
