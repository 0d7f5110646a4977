use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tokio::time::Instant;
use tower::{BoxError, Layer, Service};

use super::{Blocked, Breaker, Outcome, Permit};
use crate::classify::is_failure;

/// A per-service circuit breaker in front of `S`; see the [module docs](super).
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer {
    breaker: Option<Arc<Breaker>>,
}

impl CircuitBreakerLayer {
    /// Guards the wrapped service with `breaker`.
    pub fn new(breaker: Arc<Breaker>) -> Self {
        CircuitBreakerLayer {
            breaker: Some(breaker),
        }
    }

    /// A pass-through (no per-service breaker; endpoints may still have theirs).
    pub fn disabled() -> Self {
        CircuitBreakerLayer { breaker: None }
    }
}

impl<S> Layer<S> for CircuitBreakerLayer {
    type Service = CircuitBreaker<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker {
            inner,
            breaker: self.breaker.clone(),
        }
    }
}

/// See [`CircuitBreakerLayer`].
#[derive(Debug, Clone)]
pub struct CircuitBreaker<S> {
    inner: S,
    breaker: Option<Arc<Breaker>>,
}

impl<S, B, RB> Service<Request<B>> for CircuitBreaker<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<RB>;
    type Error = BoxError;
    type Future = CircuitBreakerFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let Some(breaker) = &self.breaker else {
            return CircuitBreakerFuture {
                inner: Some(self.inner.call(req)),
                guard: None,
                blocked: None,
            };
        };
        match breaker.try_acquire() {
            Ok(permit) => CircuitBreakerFuture {
                inner: Some(self.inner.call(req)),
                guard: Some(Guard::new(breaker.clone(), permit)),
                blocked: None,
            },
            Err(blocked) => CircuitBreakerFuture {
                inner: None,
                guard: None,
                blocked: Some(blocked),
            },
        }
    }
}

/// Gives the permit back on drop, as cancelled unless an outcome was recorded.
#[derive(Debug)]
pub(crate) struct Guard {
    breaker: Arc<Breaker>,
    permit: Permit,
    started: Instant,
    done: bool,
}

impl Guard {
    pub(crate) fn new(breaker: Arc<Breaker>, permit: Permit) -> Self {
        Guard {
            breaker,
            permit,
            started: Instant::now(),
            done: false,
        }
    }

    pub(crate) fn finish(mut self, outcome: Outcome) {
        self.done = true;
        self.breaker
            .record(self.permit, outcome, self.started.elapsed());
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.done {
            self.breaker
                .record(self.permit, Outcome::Cancelled, self.started.elapsed());
        }
    }
}

pin_project_lite::pin_project! {
    /// Future of [`CircuitBreaker`].
    pub struct CircuitBreakerFuture<F> {
        #[pin]
        inner: Option<F>,
        guard: Option<Guard>,
        blocked: Option<Blocked>,
    }
}

impl<F, RB, E> Future for CircuitBreakerFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<RB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            let blocked = this
                .blocked
                .take()
                .expect("a future without inner holds the refusal");
            return Poll::Ready(Err(blocked.into()));
        };
        let res = std::task::ready!(inner.poll(cx)).map_err(Into::into);
        if let Some(guard) = this.guard.take() {
            let failed = match &res {
                Ok(r) => is_failure(r),
                Err(_) => true,
            };
            guard.finish(if failed {
                Outcome::Failure
            } else {
                Outcome::Success
            });
        }
        Poll::Ready(res)
    }
}
