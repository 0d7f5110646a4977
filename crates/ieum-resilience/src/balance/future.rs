use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use http::Response;
use tokio::time::Instant;
use tower::util::Oneshot;
use tower::{BoxError, Service};

use super::{NoEndpoint, Shared, Stats};
use crate::breaker::{Guard, Outcome};
use crate::classify::is_failure;

pin_project_lite::pin_project! {
    /// Future of [`super::Balancer`]: the call to one endpoint, recording its latency and
    /// outcome when it ends.
    pub struct BalanceFuture<S: Service<R>, R> {
        #[pin]
        inner: Option<Oneshot<S, R>>,
        shared: Arc<Shared<S>>,
        done: Option<Done>,
        failed: Option<NoEndpoint>,
    }
}

/// What to update when the call ends; dropping it (a cancelled call) only releases the
/// in-flight count and the breaker permit.
struct Done {
    stats: Arc<Stats>,
    guard: Option<Guard>,
    started: Instant,
}

impl Drop for Done {
    fn drop(&mut self) {
        self.stats.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<S: Service<R>, R> BalanceFuture<S, R> {
    pub(super) fn new(
        fut: Oneshot<S, R>,
        shared: Arc<Shared<S>>,
        stats: Arc<Stats>,
        guard: Option<Guard>,
        started: Instant,
    ) -> Self {
        BalanceFuture {
            inner: Some(fut),
            shared,
            done: Some(Done {
                stats,
                guard,
                started,
            }),
            failed: None,
        }
    }

    pub(super) fn failed(shared: Arc<Shared<S>>, err: NoEndpoint) -> Self {
        BalanceFuture {
            inner: None,
            shared,
            done: None,
            failed: Some(err),
        }
    }
}

impl<S, R, RB> Future for BalanceFuture<S, R>
where
    S: Service<R, Response = Response<RB>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<RB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            let err = this
                .failed
                .take()
                .expect("a future without a call holds its error");
            return Poll::Ready(Err(err.into()));
        };
        let res = std::task::ready!(inner.poll(cx)).map_err(Into::into);
        if let Some(mut done) = this.done.take() {
            let now = Instant::now();
            let shared = &**this.shared;
            let c = &shared.config;
            let (failed, shed) = match &res {
                Ok(r) => (
                    is_failure(r),
                    r.status() == http::StatusCode::TOO_MANY_REQUESTS,
                ),
                Err(_) => (true, false),
            };
            let mut rtt = now.saturating_duration_since(done.started);
            if failed || shed {
                rtt = rtt.max(c.failure_penalty);
            }
            done.stats
                .ewma
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .observe(rtt, now, c.decay);
            if let Some(guard) = done.guard.take() {
                guard.finish(if failed {
                    Outcome::Failure
                } else {
                    Outcome::Success
                });
            }
            if let Some(oc) = &c.outlier {
                if failed {
                    let total = shared.snapshot().len();
                    if let Some(d) = done
                        .stats
                        .outlier
                        .record_failure(oc, now, total, || shared.ejected(now))
                    {
                        tracing::info!(destination = %c.destination, ejected_for = ?d, "outlier ejected");
                    }
                } else {
                    done.stats.outlier.record_success();
                }
            }
        }
        Poll::Ready(res)
    }
}
