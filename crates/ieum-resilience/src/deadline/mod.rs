//! Propagated deadlines and the whole-exchange (`request`) timeout of GEP-1742.
//!
//! A request may arrive with a budget from its caller: `grpc-timeout` for gRPC,
//! [`BUDGET_HEADER`] (`ieum-budget-ms`, the remaining budget in milliseconds) for HTTP,
//! or Envoy's `x-envoy-expected-rq-timeout-ms`. [`DeadlineLayer`] takes the minimum of that
//! budget and the local `request` timeout, records the resulting [`Deadline`] in the
//! request's extensions, forwards the remainder on the outgoing request and bounds the
//! whole exchange (retries and backoff included) by it. An exhausted budget fails at once
//! with [`DeadlineExceeded`] (504) without calling upstream.
//!
//! Per-attempt timeouts and re-writing the remaining budget before each attempt are the
//! [`crate::timeout`] layer's job.

mod error;
mod future;
mod layer;

pub use error::DeadlineExceeded;
pub use future::DeadlineFuture;
pub use layer::DeadlineLayer;

use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Request};
use tokio::time::Instant;
use tower::{BoxError, Service};

/// Header carrying the remaining time budget of a request, in whole milliseconds.
pub const BUDGET_HEADER: HeaderName = HeaderName::from_static("ieum-budget-ms");
/// gRPC's deadline header: up to 8 digits and a unit (`H M S m u n`).
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
/// Envoy's header announcing the timeout it applies to the request.
pub const ENVOY_EXPECTED_TIMEOUT: HeaderName =
    HeaderName::from_static("x-envoy-expected-rq-timeout-ms");

/// The instant by which the whole exchange must be over; stored in request extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline(pub Instant);

impl Deadline {
    /// The deadline of `req`, if a [`DeadlineLayer`] set one.
    pub fn of<B>(req: &Request<B>) -> Option<Deadline> {
        req.extensions().get::<Deadline>().copied()
    }

    /// Time left at `now` (zero once passed).
    pub fn remaining(self, now: Instant) -> Duration {
        self.0.saturating_duration_since(now)
    }
}

/// See [`DeadlineLayer`].
#[derive(Debug, Clone)]
pub struct DeadlineService<S> {
    inner: S,
    timeout: Option<Duration>,
    forward: bool,
}

impl<S> DeadlineService<S> {
    /// Bounds every exchange by `timeout` (`None` or zero: only by the caller's budget).
    pub fn new(inner: S, timeout: Option<Duration>) -> Self {
        DeadlineService {
            inner,
            timeout: timeout.filter(|t| !t.is_zero()),
            forward: true,
        }
    }
}

impl<S, B> Service<Request<B>> for DeadlineService<S>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = DeadlineFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let now = Instant::now();
        let incoming = incoming_budget(req.headers());
        let budget = match (incoming, self.timeout) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // An existing deadline (set by an outer layer) can only get tighter.
        let outer = Deadline::of(&req);
        let deadline = match (budget.map(|b| Deadline(now + b)), outer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let headers = req.headers_mut();
        headers.remove(ENVOY_EXPECTED_TIMEOUT);
        let Some(deadline) = deadline else {
            return DeadlineFuture::unbounded(self.inner.call(req));
        };
        let remaining = deadline.remaining(now);
        if remaining.is_zero() {
            return DeadlineFuture::exhausted(DeadlineExceeded::before_sending(incoming.is_some()));
        }
        if self.forward {
            write_budget(req.headers_mut(), remaining);
        }
        req.extensions_mut().insert(deadline);
        DeadlineFuture::bounded(self.inner.call(req), deadline.0)
    }
}

/// The budget a caller gave, the smallest when several headers are present.
pub fn incoming_budget(headers: &HeaderMap) -> Option<Duration> {
    let grpc = headers
        .get(GRPC_TIMEOUT)
        .and_then(|v| parse_grpc_timeout(v.as_bytes()));
    let ieum = headers
        .get(BUDGET_HEADER)
        .and_then(|v| parse_millis(v.as_bytes()));
    let envoy = headers
        .get(ENVOY_EXPECTED_TIMEOUT)
        .and_then(|v| parse_millis(v.as_bytes()));
    [grpc, ieum, envoy].into_iter().flatten().min()
}

/// Writes the remaining budget on an outgoing request: [`BUDGET_HEADER`] always, and
/// `grpc-timeout` when the request is gRPC. Rounded up to whole milliseconds so a budget
/// left is never sent as exhausted.
pub fn write_budget(headers: &mut HeaderMap, remaining: Duration) {
    let millis = u64::try_from(remaining.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
    headers.insert(BUDGET_HEADER, HeaderValue::from(millis));
    if crate::classify::grpc::is_grpc_headers(headers) {
        headers.insert(GRPC_TIMEOUT, format_grpc_timeout(millis));
    }
}

fn parse_millis(v: &[u8]) -> Option<Duration> {
    let s = std::str::from_utf8(v).ok()?.trim();
    if s.is_empty() || s.len() > 12 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().map(Duration::from_millis)
}

/// Parses a `grpc-timeout` value: 1 to 8 digits and a unit `H M S m u n`.
pub fn parse_grpc_timeout(v: &[u8]) -> Option<Duration> {
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

fn format_grpc_timeout(millis: u64) -> HeaderValue {
    // At most 8 digits: switch to coarser units for long budgets.
    let value = if millis < 100_000_000 {
        format!("{millis}m")
    } else if millis / 1000 < 100_000_000 {
        format!("{}S", millis.div_ceil(1000))
    } else {
        format!("{}H", (millis / 3_600_000).min(99_999_999))
    };
    HeaderValue::try_from(value).expect("digits and a letter are a valid header value")
}

#[cfg(test)]
mod tests;
