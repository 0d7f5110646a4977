//! Services measured by both benchmarks.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Empty;
use ieum_resilience::balance::{BalanceConfig, Balancer, Endpoint};
use ieum_resilience::stack::{StackConfig, client};
use tower::{BoxError, Service};

/// The request every benchmark sends (its construction is part of the baseline).
pub(crate) fn request() -> Request<Empty<Bytes>> {
    Request::get("http://orders/v1/orders")
        .body(Empty::new())
        .expect("a valid request")
}

/// A service that answers at once.
pub(crate) fn noop<R>() -> impl Service<R, Response = Response<()>, Error = BoxError, Future: Send>
+ Clone
+ Send
+ Sync
+ 'static {
    tower::service_fn(|_req: R| std::future::ready(Ok::<_, BoxError>(Response::new(()))))
}

/// The default stack: deadline (15 s), attempt timeout (1 s), retry with budget, per-endpoint
/// circuit breakers, P2C peak-EWMA over 3 endpoints, rate limit and fault injection
/// present but unconfigured.
pub(crate) fn default_stack() -> impl Service<
    Request<Empty<Bytes>>,
    Response = Response<()>,
    Error = std::convert::Infallible,
    Future: Send,
> + Clone {
    let policy: ieum_model::policy::ResiliencePolicySpec = serde_json::from_str(
        r#"{"targetRef": {"kind": "Service", "name": "orders"},
            "timeouts": {"request": "15s", "backendRequest": "1s"},
            "retry": {}}"#,
    )
    .expect("a valid policy");
    let config = StackConfig::from_policy("web", "orders", None, &policy, None, None);
    let eps = (0..3)
        .map(|i| Endpoint::new(format!("10.0.0.{i}:80"), noop()))
        .collect();
    client(&config, eps).0
}

#[allow(
    dead_code,
    reason = "only the overhead benchmark measures the balancer alone"
)]
/// A balancer alone over 3 endpoints (P2C peak-EWMA, per-endpoint breakers).
pub(crate) fn balancer<R>() -> Balancer<
    impl Service<R, Response = Response<()>, Error = BoxError, Future: Send>
    + Clone
    + Send
    + Sync
    + 'static,
> {
    let eps = (0..3)
        .map(|i| Endpoint::new(Arc::<str>::from(format!("10.0.0.{i}:80")), noop()))
        .collect();
    Balancer::new(BalanceConfig::new("web", "orders"), eps).0
}
