//! One tower layer per resilience concern, implemented once and composed by every
//! component that sends a request (sidecar, gateway, saga coordinator, proxyless library):
//! DESIGN invariant 2.
//!
//! Every layer is a `tower::Layer` over `http::Request<B>` → `http::Response<B>` services
//! and composes with `tower::ServiceBuilder`; [`stack::client`] builds the default stack
//! from a typed [`stack::StackConfig`], itself built from the policy types users write
//! (`ieum_model::policy`). This crate knows nothing of where configuration comes from.
//! Time is `tokio::time`, so every layer is tested with paused time.
//!
//! Composing layers by hand:
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use ieum_resilience::classify::ErrorResponseLayer;
//! use ieum_resilience::deadline::DeadlineLayer;
//! use ieum_resilience::retry::{RetryBody, RetryBudget, RetryLayer, RetryPolicy};
//! use ieum_resilience::timeout::AttemptTimeoutLayer;
//! use tower::{BoxError, ServiceBuilder, ServiceExt};
//!
//! type Body = http_body_util::Empty<bytes::Bytes>;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! let budget = Arc::new(RetryBudget::default()); // share one per destination
//! let client = ServiceBuilder::new()
//!     .layer(ErrorResponseLayer)
//!     .layer(DeadlineLayer::new(Some(Duration::from_secs(2))))
//!     .layer(RetryLayer::new(RetryPolicy::default(), budget))
//!     .layer(AttemptTimeoutLayer::new(Some(Duration::from_millis(500))))
//!     .service_fn(|_req: http::Request<RetryBody<Body>>| async {
//!         Ok::<_, BoxError>(http::Response::new(String::new()))
//!     });
//! let req = http::Request::get("http://orders/").body(Body::new()).unwrap();
//! assert_eq!(client.oneshot(req).await.unwrap().status(), 200);
//! # });
//! ```
//!
//! # Layout
//!
//! One module per concern, each with its Service, Layer, Future and a `thiserror` error
//! that knows its source and whether a retry is safe:
//!
//! - [`deadline`]: propagated deadlines (`grpc-timeout`, `ieum-budget-ms`, Envoy's
//!   `x-envoy-expected-rq-timeout-ms`) and the whole-exchange `request` timeout (GEP-1742).
//! - [`timeout`]: the per-attempt `backendRequest` timeout; rewrites the forwarded budget.
//! - [`retry`]: GEP-1731 retries, exponential backoff with full jitter, `Retry-After`,
//!   body replay up to a limit, and the [`retry::RetryBudget`].
//! - [`breaker`]: circuit breakers (`allowed` / `blocked` / `probing`) with a transition
//!   [`breaker::Reporter`] and a coalescing reporter.
//! - [`fail_fast`]: bounded queue and fail-fast when no endpoint is ready.
//! - [`limit`]: bulkhead (concurrency limit) and local GCRA rate limit (`governor`).
//! - [`fault`]: delay and abort injection.
//! - [`balance`]: P2C peak-EWMA (default), round robin, least request, consistent hash;
//!   weights; zone-aware preference; per-endpoint breakers and outlier detection.
//! - [`outlier`]: Envoy-style ejection after consecutive 5xx.
//! - [`classify`]: error classification (source, retry safety, status, reason header) and
//!   the layer turning errors into responses.
//! - [`stack`]: the default stack and its runtime configuration.
//!
//! # Defaults, beside Envoy's, Linkerd's and resilience4j's
//!
//! | concern | ieum | Envoy | Linkerd | resilience4j | why ours differs |
//! | --- | --- | --- | --- | --- | --- |
//! | whole-exchange timeout | 15 s, retries included | 15 s route timeout, retries included | none | TimeLimiter 1 s | as Envoy: an unbounded request ties up every hop behind it |
//! | per-attempt timeout | off (an attempt may use what is left) | `per_try_timeout` off | — | — | same |
//! | deadline propagation | reads `grpc-timeout`, `ieum-budget-ms`, `x-envoy-expected-rq-timeout-ms`; forwards the remainder | sets `x-envoy-expected-rq-timeout-ms` | gRPC only | — | one header works for HTTP as well as gRPC, and the budget shrinks hop by hop |
//! | retries | none without a `retry` stanza; with one: 1 retry of 502/503/504, connect failures, `REFUSED_STREAM`, gRPC `UNAVAILABLE` | none unless configured; `num_retries` 1 | `retry.linkerd.io/limit` 1 | `maxAttempts` 3 (2 retries), 500 ms wait | Envoy's and Linkerd's count; resilience4j's third try mostly adds load |
//! | backoff | base 25 ms, cap 250 ms, full jitter; `Retry-After` up to the cap | 25 ms / 250 ms, jittered | — | fixed 500 ms | Envoy's numbers; full jitter spreads synchronized callers best |
//! | body replay | copy of up to 64 KiB kept while the body streams to the first attempt | buffered up to the buffer limit | bodies > 64 KiB not retried | — | Linkerd's limit and approach: nothing is held back, gRPC and chunked bodies can be retried |
//! | may-have-been-processed failures (timeouts, resets) | not retried unless `idempotent: true` | retried on `reset` when configured | — | retried | a mesh cannot know a POST is idempotent |
//! | retry budget | on: ratio 0.2, 10 retries/s, 10 s window | 20 % of active requests, min 3 | 0.2, 10/s, 10 s | — | Linkerd's; on by default so retries cannot amplify an outage |
//! | circuit breaker | per endpoint, on: 5 consecutive failures; blocked 5 s → 2 min (×2, +0–50 % jitter); 1 probe | outlier detection (below); `circuit_breakers` are only limits | failure accrual: 7 consecutive, 1 s → 1 min, jitter 0.5, one probe | 50 % of 100 calls (min 100), open 60 s, 10 half-open calls | 5 as Envoy's outlier detection; a 1 s penalty flaps under a real outage, a 60 s one keeps a recovered endpoint out too long |
//! | failure-rate trigger | off; when set: window 100 calls, min 20 calls | — | — | 50 %, 100 calls, min 100 | 100 minimum calls never trips on a low-traffic service |
//! | slow-call trigger | off; needs a threshold and a duration | — | — | 100 % over 60 s | opt-in: "slow" depends on the service |
//! | outlier detection | off; when set: 5 consecutive 5xx, 30 s × ejections (max 5 min), max 50 % (at least one when ≥ 2 endpoints) | 5 consecutive 5xx, 30 s × ejections, max 10 % | — | — | meshes run few replicas: 10 % of 3 ejects none |
//! | balancing | P2C peak-EWMA, default RTT 30 ms, decay 10 s; failures count as ≥ 500 ms | round robin | P2C peak-EWMA, 30 ms, 10 s | — | Linkerd's; the failure penalty keeps fast 5xx/429 from attracting traffic |
//! | zone-aware | on when the caller's zone is known; stay local while ≥ 70 % of local endpoints are available | zone-aware routing with a minimum cluster size | — | — | a single, explainable rule |
//! | fail-fast | queue 10,000; fail fast after 3 s without a ready endpoint | pending requests 1,024, overflow → 503 | queue 10,000; 3 s outbound | — | Linkerd's |
//! | concurrency limit | off | 1,024 requests per cluster | — | bulkhead 25 calls | a limit users never set surprises them with 503s |
//! | rate limit | off; burst = `requests` | local token bucket, off | — | 50 per 500 ns refresh, 5 s wait | off until a `RateLimitPolicy` says otherwise; GCRA answers 429 at once with `Retry-After` |
//! | fault injection | off | off | off | — | — |
//!
//! Precedence of configuration: a Route rule's own `timeouts`/`retry` > a policy targeting
//! that Route > a policy targeting the Service > these defaults (see [`stack`]).

pub mod balance;
pub mod breaker;
pub mod classify;
pub mod deadline;
pub mod fail_fast;
pub mod fault;
pub mod limit;
pub mod outlier;
pub mod retry;
pub mod stack;
pub mod timeout;

#[cfg(test)]
mod test_util;
