use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response};
use tower::{BoxError, Layer, Service};

use super::{REASON_HEADER, SOURCE_HEADER, classify, grpc};

/// Turns every error of the stack below into a response carrying a status code,
/// [`REASON_HEADER`] and [`SOURCE_HEADER`] (gRPC callers get `grpc-status` and
/// `grpc-message` instead of an HTTP error status). Outermost layer of a client stack.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorResponseLayer;

impl<S> Layer<S> for ErrorResponseLayer {
    type Service = ErrorResponse<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ErrorResponse {
            inner,
            ready_error: None,
        }
    }
}

/// See [`ErrorResponseLayer`].
#[derive(Debug)]
pub struct ErrorResponse<S> {
    inner: S,
    /// The inner service failed to become ready: the next call answers with this error.
    ready_error: Option<BoxError>,
}

impl<S: Clone> Clone for ErrorResponse<S> {
    fn clone(&self) -> Self {
        ErrorResponse {
            inner: self.inner.clone(),
            ready_error: None,
        }
    }
}

impl<S, B, RB> Service<Request<B>> for ErrorResponse<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
    RB: Default,
{
    type Response = Response<RB>;
    type Error = Infallible;
    type Future = ErrorResponseFuture<S::Future, RB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // An inner service that cannot become ready fails this request, not the stack.
        match self.inner.poll_ready(cx) {
            Poll::Ready(Err(e)) => {
                self.ready_error = Some(e.into());
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let grpc = grpc::is_grpc(&req);
        if let Some(e) = self.ready_error.take() {
            return ErrorResponseFuture {
                inner: None,
                ready: Some(error_response(&e, grpc)),
                grpc,
            };
        }
        ErrorResponseFuture {
            inner: Some(self.inner.call(req)),
            ready: None,
            grpc,
        }
    }
}

pin_project_lite::pin_project! {
    /// Future of [`ErrorResponse`].
    pub struct ErrorResponseFuture<F, RB> {
        #[pin]
        inner: Option<F>,
        ready: Option<Response<RB>>,
        grpc: bool,
    }
}

impl<F, RB, E> Future for ErrorResponseFuture<F, RB>
where
    F: Future<Output = Result<Response<RB>, E>>,
    E: Into<BoxError>,
    RB: Default,
{
    type Output = Result<Response<RB>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(Ok(this.ready.take().expect("polled after completion")));
        };
        match std::task::ready!(inner.poll(cx)) {
            Ok(res) => Poll::Ready(Ok(res)),
            Err(e) => Poll::Ready(Ok(error_response(&e.into(), *this.grpc))),
        }
    }
}

/// The response a caller gets for `error`.
pub fn error_response<RB: Default>(error: &BoxError, grpc: bool) -> Response<RB> {
    let c = classify(error);
    let mut res = Response::new(RB::default());
    let headers = res.headers_mut();
    headers.insert(REASON_HEADER, HeaderValue::from_static(c.reason));
    headers.insert(SOURCE_HEADER, HeaderValue::from_static(c.source.as_str()));
    if let Some(rl) = error.downcast_ref::<crate::limit::RateLimited>() {
        headers.insert(
            http::header::RETRY_AFTER,
            HeaderValue::from(rl.retry_after_secs()),
        );
    }
    if grpc {
        headers.insert(
            grpc::STATUS,
            HeaderValue::from(u16::from(grpc::from_http(c.status))),
        );
        headers.insert(grpc::MESSAGE, HeaderValue::from_static(c.reason));
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
    } else {
        *res.status_mut() = c.status;
    }
    res
}
