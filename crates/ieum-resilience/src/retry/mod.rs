//! Retries with one shape for every kind (GEP-1731 `codes`, `attempts`, `backoff`,
//! `maxBackoff`), exponential backoff with full jitter, and a [`RetryBudget`].
//!
//! What is retried, when a retry stanza exists:
//! - answers whose status is in `codes`, and gRPC `UNAVAILABLE` answers;
//! - errors that [`crate::classify`] marks [`Retryable::Safe`] (connection refused,
//!   `REFUSED_STREAM`, refused locally before sending);
//! - errors marked [`Retryable::IfIdempotent`] (timeouts, resets: the request may have
//!   been processed) only when the policy says the target is idempotent.
//!
//! A request body streams to the first attempt as it arrives while a copy of up to
//! `max_body_bytes` (64 KiB by default) is kept ([`RetryBody`]); a retry replays the copy.
//! A body that turns out larger is never retried; one known to be larger is not recorded. A server's `Retry-After` (in seconds) is honoured
//! up to `max_backoff`. No retry starts when the request's [`Deadline`] would pass during
//! the wait. An answer to a retried request carries [`ATTEMPTS_HEADER`] with the number of
//! tries made (absent: the first try answered, which saves a header per request).

mod backoff;
mod body;
mod budget;
mod error;
mod layer;

pub use backoff::Backoff;
pub use body::RetryBody;
pub use budget::RetryBudget;
pub use error::BodyError;
pub use layer::RetryLayer;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use tokio::time::Instant;
use tower::{BoxError, Service, ServiceExt};

use crate::classify::{Retryable, classify, grpc};
use crate::deadline::Deadline;
use body::Recording;

/// Header on the answer to a retried request: how many tries were made.
pub const ATTEMPTS_HEADER: http::HeaderName = http::HeaderName::from_static("ieum-attempts");

/// What to retry and how long to wait, built from `ieum_model::policy::Retry`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Status codes worth another try.
    pub codes: Vec<StatusCode>,
    /// Retries after the first try; 0 disables retrying.
    pub attempts: u32,
    /// Waits between tries.
    pub backoff: Backoff,
    /// Largest body buffered for replay.
    pub max_body_bytes: u64,
    /// Retry failures after which the request may have been processed.
    pub idempotent: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::from(&ieum_model::policy::Retry::default())
    }
}

impl From<&ieum_model::policy::Retry> for RetryPolicy {
    fn from(r: &ieum_model::policy::Retry) -> Self {
        RetryPolicy {
            codes: r
                .codes
                .iter()
                .filter_map(|c| StatusCode::from_u16(*c).ok())
                .collect(),
            attempts: r.attempts,
            backoff: Backoff::new(r.backoff.get(), r.max_backoff.get()),
            max_body_bytes: r.max_body_bytes,
            idempotent: r.idempotent,
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries (the layer then only counts requests for the budget).
    pub fn none() -> Self {
        RetryPolicy {
            attempts: 0,
            ..RetryPolicy::default()
        }
    }

    /// Whether this answer is worth another try.
    pub fn retry_response<B>(&self, res: &Response<B>) -> bool {
        self.codes.contains(&res.status()) || grpc::status_of(res) == Some(grpc::UNAVAILABLE)
    }

    /// Whether this error is worth another try.
    pub fn retry_error(&self, err: &BoxError) -> bool {
        match classify(err).retryable {
            Retryable::Safe => true,
            Retryable::IfIdempotent => self.idempotent,
            Retryable::No => false,
        }
    }
}

/// See [`RetryLayer`].
#[derive(Debug, Clone)]
pub struct Retry<S> {
    inner: S,
    policy: Arc<RetryPolicy>,
    budget: Arc<RetryBudget>,
}

impl<S> Retry<S> {
    /// Retries calls to `inner` under `policy`, within `budget` (share one budget among
    /// every caller of the same destination).
    pub fn new(inner: S, policy: Arc<RetryPolicy>, budget: Arc<RetryBudget>) -> Self {
        Retry {
            inner,
            policy,
            budget,
        }
    }
}

impl<S, B, RB> Service<Request<B>> for Retry<S>
where
    S: Service<Request<RetryBody<B>>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    RB: Send + 'static,
{
    type Response = Response<RB>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<RB>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // Use the service polled ready for the first try, as tower's layers do.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        let policy = self.policy.clone();
        let budget = self.budget.clone();
        Box::pin(run(ready, req, policy, budget))
    }
}

async fn run<S, B, RB>(
    mut svc: S,
    req: Request<B>,
    policy: Arc<RetryPolicy>,
    budget: Arc<RetryBudget>,
) -> Result<Response<RB>, BoxError>
where
    S: Service<Request<RetryBody<B>>, Response = Response<RB>> + Clone,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    budget.deposit();
    let (parts, body) = req.into_parts();
    if policy.attempts == 0 || body.size_hint().lower() > policy.max_body_bytes {
        // Cannot be retried: sent once, nothing recorded.
        let res = svc
            .call(Request::from_parts(parts, RetryBody::once(body)))
            .await;
        return res.map_err(Into::into);
    }
    let (recording, first) = if body.is_end_stream() {
        (Recording::empty(), RetryBody::empty())
    } else {
        Recording::new(body, policy.max_body_bytes)
    };
    let deadline = parts.extensions.get::<Deadline>().copied();
    let mut next = Some(first);
    let mut tries: u32 = 0;
    loop {
        let body = next.take().expect("a body is prepared before every try");
        let req = Request::from_parts(parts.clone(), body);
        if tries > 0 {
            svc = svc.clone();
            svc.ready().await.map_err(Into::into)?;
        }
        let result = svc.call(req).await.map_err(Into::into);
        tries += 1;
        let retry_after = match &result {
            Ok(res) if policy.retry_response(res) => Some(retry_after(res)),
            Err(e) if policy.retry_error(e) => Some(None),
            _ => None,
        };
        let Some(retry_after) = retry_after else {
            return result.map(|r| with_attempts(r, tries));
        };
        if tries > policy.attempts {
            return result.map(|r| with_attempts(r, tries));
        }
        let wait = match retry_after {
            Some(server_says) => server_says.min(policy.backoff.max()),
            None => policy.backoff.delay(tries - 1),
        };
        if deadline.is_some_and(|d| d.remaining(Instant::now()) <= wait) {
            tracing::debug!(
                tries,
                "not retrying: the deadline would pass during the backoff"
            );
            return result.map(|r| with_attempts(r, tries));
        }
        let Some(replay) = recording.replay() else {
            tracing::debug!(
                tries,
                "not retrying: the request body was larger than the replay limit"
            );
            return result.map(|r| with_attempts(r, tries));
        };
        if !budget.withdraw() {
            tracing::debug!(tries, "not retrying: retry budget exhausted");
            return result.map(|r| with_attempts(r, tries));
        }
        next = Some(replay);
        // Release the failed answer (and its connection) before waiting.
        drop(result);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

fn with_attempts<B>(mut res: Response<B>, tries: u32) -> Response<B> {
    if tries <= 1 {
        return res;
    }
    res.headers_mut()
        .insert(ATTEMPTS_HEADER, HeaderValue::from(tries));
    res
}

/// A `Retry-After` given in seconds (HTTP dates are ignored: clocks differ).
fn retry_after<B>(res: &Response<B>) -> Option<Duration> {
    let v = res
        .headers()
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests;
