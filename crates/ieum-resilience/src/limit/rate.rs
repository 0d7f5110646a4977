use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use governor::clock::{Clock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;
use tower::{BoxError, Layer, Service};

use super::RateLimited;

/// A `governor` clock reading `tokio::time::Instant`, so paused test time drives it.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    origin: Instant,
}

impl Default for TokioClock {
    fn default() -> Self {
        TokioClock {
            origin: Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    type Instant = Nanos;
    fn now(&self) -> Nanos {
        Nanos::from(Instant::now().saturating_duration_since(self.origin))
    }
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Nanos>>;

/// Runtime configuration, built from `ieum_model::policy::RateLimit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Requests per `per`, evenly spread.
    pub requests: NonZeroU32,
    /// The period.
    pub per: Duration,
    /// Requests admitted at once after a quiet spell.
    pub burst: NonZeroU32,
}

impl RateLimitConfig {
    /// From the validated policy (`None` when a field is zero, which validation rejects).
    pub fn from_policy(l: &ieum_model::policy::RateLimit) -> Option<Self> {
        Some(RateLimitConfig {
            requests: NonZeroU32::new(l.requests)?,
            per: l.per.get(),
            burst: NonZeroU32::new(l.effective_burst())?,
        })
    }
}

type KeyedLimiter = RateLimiter<
    String,
    governor::state::keyed::HashMapStateStore<String>,
    TokioClock,
    NoOpMiddleware<Nanos>,
>;

/// A GCRA limit per key, each key with its own bucket (an API gateway's limit per
/// consumer). Keys are kept for the limiter's life: use it for a bounded set of keys.
#[derive(Debug)]
pub struct KeyedRateLimiter {
    limiter: KeyedLimiter,
}

impl KeyedRateLimiter {
    /// A limiter with `config` for every key; `None` when the period cannot be divided
    /// into `requests` (validation rejects such limits).
    pub fn new(config: RateLimitConfig) -> Option<KeyedRateLimiter> {
        let quota =
            Quota::with_period(config.per / config.requests.get())?.allow_burst(config.burst);
        Some(KeyedRateLimiter {
            limiter: RateLimiter::hashmap_with_clock(quota, TokioClock::default()),
        })
    }

    /// Admits one request for `key`, or says how long until one would be.
    pub fn check(&self, key: &str) -> Result<(), RateLimited> {
        self.limiter
            .check_key(&key.to_owned())
            .map_err(|not_until| {
                let now = self.limiter.clock().now();
                RateLimited {
                    retry_after: Duration::from(not_until.earliest_possible().duration_since(now)),
                }
            })
    }
}

/// A local GCRA rate limit shared by every service it makes; `None` is a pass-through.
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    limiter: Option<Arc<Limiter>>,
}

impl RateLimitLayer {
    /// A limit, or a pass-through for `None`.
    pub fn new(config: Option<RateLimitConfig>) -> Self {
        let limiter = config.and_then(|c| {
            let quota = Quota::with_period(c.per / c.requests.get())?.allow_burst(c.burst);
            Some(Arc::new(RateLimiter::direct_with_clock(
                quota,
                TokioClock::default(),
            )))
        });
        RateLimitLayer { limiter }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            limiter: self.limiter.clone(),
        }
    }
}

/// See [`RateLimitLayer`].
#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
    limiter: Option<Arc<Limiter>>,
}

impl<S, R> Service<R> for RateLimit<S>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = RateLimitFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: R) -> Self::Future {
        if let Some(limiter) = &self.limiter
            && let Err(not_until) = limiter.check()
        {
            let now = limiter.clock().now();
            let retry_after = Duration::from(not_until.earliest_possible().duration_since(now));
            return RateLimitFuture {
                inner: None,
                refused: Some(RateLimited { retry_after }),
            };
        }
        RateLimitFuture {
            inner: Some(self.inner.call(req)),
            refused: None,
        }
    }
}

pin_project_lite::pin_project! {
    /// Future of [`RateLimit`].
    pub struct RateLimitFuture<F> {
        #[pin]
        inner: Option<F>,
        refused: Option<RateLimited>,
    }
}

impl<F, T, E> Future for RateLimitFuture<F>
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
                .refused
                .take()
                .unwrap_or(RateLimited {
                    retry_after: Duration::ZERO,
                })
                .into())),
        }
    }
}
