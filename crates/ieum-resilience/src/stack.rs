//! The default client stack, and the typed runtime configuration it is built from.
//!
//! [`StackConfig`] is built from the policy types users write (`ieum_model::policy`);
//! this crate never reads configuration from anywhere itself. Precedence, as documented in
//! `ieum_model::policy`, from strongest to weakest: a Route rule's own `timeouts`/`retry`
//! ([`StackConfig::with_route`]); a `ResiliencePolicy` targeting that Route; one targeting
//! the Service ([`ieum_model::policy::ResiliencePolicySpec::overlay`]); the defaults.
//!
//! Layer order, outermost first, and why:
//!
//! | layer | why here |
//! | --- | --- |
//! | [`ErrorResponseLayer`] | every failure below becomes a status code and a reason |
//! | [`DeadlineLayer`] | the whole exchange, retries included, fits the budget |
//! | [`RateLimitLayer`] | refused requests cost nothing further |
//! | [`ConcurrencyLimitLayer`] | bulkhead on requests in flight, retries included |
//! | [`FaultInjectionLayer`] | injected faults are not retried (as in Envoy) |
//! | [`CircuitBreakerLayer`] | per-service breaker sees the outcome after retries |
//! | [`RetryLayer`] | retries within the budget |
//! | [`AttemptTimeoutLayer`] | bounds each attempt, rewrites the forwarded budget |
//! | [`FailFastLayer`] | no endpoint ready for too long: fail at once |
//! | [`Balancer`] | picks an endpoint; per-endpoint breakers and outlier detection |

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use ieum_model::policy::{
    FaultInjectionSpec, RateLimitPolicySpec, ResiliencePolicySpec, Retry, Timeouts,
};
use tower::{BoxError, Service, ServiceBuilder};

use crate::balance::{BalanceConfig, Balancer, BalancerHandle, Endpoint};
use crate::breaker::{Breaker, BreakerConfig, BreakerId, CircuitBreakerLayer, Reporter};
use crate::classify::ErrorResponseLayer;
use crate::deadline::DeadlineLayer;
use crate::fail_fast::{FailFastConfig, FailFastLayer};
use crate::fault::{FaultConfig, FaultInjectionLayer};
use crate::limit::{ConcurrencyLimitLayer, RateLimitConfig, RateLimitLayer};
use crate::outlier::OutlierConfig;
use crate::retry::{RetryBody, RetryBudget, RetryLayer, RetryPolicy};
use crate::timeout::AttemptTimeoutLayer;

/// Everything the client stack needs, resolved and typed.
#[derive(Debug, Clone)]
pub struct StackConfig {
    /// Whole-exchange timeout (`None`: only the caller's budget).
    pub request_timeout: Option<Duration>,
    /// Per-attempt timeout.
    pub backend_request: Option<Duration>,
    /// Retries; [`RetryPolicy::none`] without a retry stanza.
    pub retry: RetryPolicy,
    /// The retry budget, shared by every clone of the stack.
    pub budget: Arc<RetryBudget>,
    /// Per-service breaker (a `circuitBreaker` with `scope: service`).
    pub service_breaker: Option<BreakerConfig>,
    /// Balancing, per-endpoint breakers and outlier detection.
    pub balance: BalanceConfig,
    /// Fail-fast.
    pub fail_fast: FailFastConfig,
    /// Bulkhead.
    pub concurrency: Option<usize>,
    /// Local rate limit.
    pub rate_limit: Option<RateLimitConfig>,
    /// Fault injection.
    pub fault: Option<FaultConfig>,
}

impl StackConfig {
    /// The defaults for calls from `caller` to `destination`.
    pub fn new(caller: impl Into<Arc<str>>, destination: impl Into<Arc<str>>) -> Self {
        let spec = ResiliencePolicySpec::new(ieum_model::policy::TargetRef {
            kind: ieum_model::policy::TargetKind::Service,
            name: ieum_model::Name::parse("default").expect("a valid name"),
        });
        StackConfig::from_policy(caller, destination, None, &spec, None, None)
    }

    /// From (already overlaid and validated) policies; `local_zone` is the caller's zone.
    pub fn from_policy(
        caller: impl Into<Arc<str>>,
        destination: impl Into<Arc<str>>,
        local_zone: Option<Arc<str>>,
        policy: &ResiliencePolicySpec,
        rate_limit: Option<&RateLimitPolicySpec>,
        fault: Option<&FaultInjectionSpec>,
    ) -> Self {
        let (caller, destination) = (caller.into(), destination.into());
        let timeouts = policy.timeouts.unwrap_or_default();
        let breaker = policy.circuit_breaker.clone().unwrap_or_default();
        let scope_service = breaker.scope == ieum_model::policy::BreakerScope::Service;
        let mut balance = BalanceConfig::new(caller, destination).with_policy(
            &policy.load_balancer.clone().unwrap_or_default(),
            local_zone,
        );
        balance.breaker = (!scope_service).then(|| BreakerConfig::from(&breaker));
        balance.outlier = policy.outlier_detection.as_ref().map(OutlierConfig::from);
        StackConfig {
            request_timeout: nonzero(timeouts.request.get()),
            backend_request: nonzero(timeouts.backend_request.get()),
            retry: policy
                .retry
                .as_ref()
                .map_or_else(RetryPolicy::none, RetryPolicy::from),
            budget: Arc::new(RetryBudget::from(&policy.retry_budget.unwrap_or_default())),
            service_breaker: scope_service.then(|| BreakerConfig::from(&breaker)),
            balance,
            fail_fast: FailFastConfig::from(&policy.fail_fast.unwrap_or_default()),
            concurrency: policy.concurrency.map(|c| c.max as usize),
            rate_limit: rate_limit.and_then(|r| RateLimitConfig::from_policy(&r.limit)),
            fault: fault.map(FaultConfig::from),
        }
    }

    /// Applies a Route rule's own `timeouts` and `retry`, which win over any policy.
    pub fn with_route(mut self, timeouts: Option<&Timeouts>, retry: Option<&Retry>) -> Self {
        if let Some(t) = timeouts {
            self.request_timeout = nonzero(t.request.get());
            self.backend_request = nonzero(t.backend_request.get());
        }
        if let Some(r) = retry {
            self.retry = RetryPolicy::from(r);
        }
        self
    }

    /// Sends breaker transitions (per service and per endpoint) to `reporter`.
    pub fn with_reporter(mut self, reporter: Reporter) -> Self {
        self.balance.reporter = Some(reporter);
        self
    }
}

fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

/// Builds the client stack over `endpoints`: a cloneable service that never fails (errors
/// become responses), and the handle to update the endpoints.
pub fn client<S, B, RB>(
    config: &StackConfig,
    endpoints: Vec<Endpoint<S>>,
) -> (
    impl Service<Request<B>, Response = Response<RB>, Error = Infallible, Future: Send>
    + Clone
    + Send
    + use<S, B, RB>,
    BalancerHandle<S>,
)
where
    S: Service<Request<RetryBody<B>>, Response = Response<RB>> + Clone + Send + Sync + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    RB: Default + Send + 'static,
{
    let (balancer, handle) = Balancer::new(config.balance.clone(), endpoints);
    let breaker = match &config.service_breaker {
        Some(b) => {
            let id = BreakerId::service(
                config.balance.caller.clone(),
                config.balance.destination.clone(),
            );
            CircuitBreakerLayer::new(Arc::new(Breaker::new(
                id,
                b.clone(),
                config.balance.reporter.clone(),
            )))
        }
        None => CircuitBreakerLayer::disabled(),
    };
    let svc = ServiceBuilder::new()
        .layer(ErrorResponseLayer)
        .layer(DeadlineLayer::new(config.request_timeout).without_forwarding())
        .layer(RateLimitLayer::new(config.rate_limit))
        .layer(ConcurrencyLimitLayer::new(config.concurrency))
        .layer(FaultInjectionLayer::new(config.fault))
        .layer(breaker)
        .layer(RetryLayer::new(config.retry.clone(), config.budget.clone()))
        .layer(AttemptTimeoutLayer::new(config.backend_request))
        .layer(FailFastLayer::new(config.fail_fast))
        .service(balancer);
    (svc, handle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::Algorithm;

    fn policy(json: &str) -> ResiliencePolicySpec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn defaults_without_any_policy() {
        let c = StackConfig::new("web", "orders");
        assert_eq!(c.request_timeout, Some(Duration::from_secs(15)));
        assert_eq!(c.backend_request, None);
        assert_eq!(c.retry.attempts, 0, "no retry stanza, no retries");
        assert_eq!(
            c.budget.remaining(),
            100,
            "10/s over 10 s before any request"
        );
        assert!(c.service_breaker.is_none());
        assert_eq!(
            c.balance.breaker,
            Some(BreakerConfig::default()),
            "per-endpoint breakers on"
        );
        assert!(c.balance.outlier.is_none());
        assert_eq!(c.balance.algorithm, Algorithm::PeakEwma);
        assert_eq!(
            c.fail_fast,
            FailFastConfig {
                queue: 10_000,
                timeout: Duration::from_secs(3)
            }
        );
        assert!(c.concurrency.is_none() && c.rate_limit.is_none() && c.fault.is_none());
    }

    #[test]
    fn policy_stanzas_map_to_runtime_settings() {
        let p = policy(
            r#"{"targetRef": {"kind": "Service", "name": "orders"},
                "timeouts": {"request": "0s", "backendRequest": "250ms"},
                "circuitBreaker": {"scope": "service", "consecutiveFailures": 2},
                "outlierDetection": {"consecutive5xx": 3},
                "loadBalancer": {"type": "ConsistentHash", "hashHeader": "x-user", "zoneAware": false},
                "concurrency": {"max": 7}}"#,
        );
        let c = StackConfig::from_policy("web", "orders", Some("z1".into()), &p, None, None);
        assert_eq!(c.request_timeout, None, "0s disables");
        assert_eq!(c.backend_request, Some(Duration::from_millis(250)));
        assert_eq!(
            c.service_breaker.as_ref().map(|b| b.consecutive_failures),
            Some(2)
        );
        assert!(
            c.balance.breaker.is_none(),
            "a service-scoped breaker replaces endpoint ones"
        );
        assert_eq!(c.balance.outlier.map(|o| o.consecutive_5xx), Some(3));
        assert_eq!(
            c.balance.algorithm,
            Algorithm::ConsistentHash(http::HeaderName::from_static("x-user"))
        );
        assert_eq!(c.balance.local_zone, None, "zoneAware: false");
        assert_eq!(c.concurrency, Some(7));
        let zoned = StackConfig::from_policy(
            "web",
            "orders",
            Some("z1".into()),
            &policy(r#"{"targetRef": {"kind": "Service", "name": "orders"}}"#),
            None,
            None,
        );
        assert_eq!(zoned.balance.local_zone.as_deref(), Some("z1"));
    }

    #[test]
    fn route_stanzas_win() {
        let p = policy(
            r#"{"targetRef": {"kind": "Service", "name": "orders"}, "timeouts": {"request": "3s"}, "retry": {"attempts": 1}}"#,
        );
        let t = Timeouts {
            request: ieum_model::Duration::from_secs(1),
            backend_request: ieum_model::Duration::ZERO,
        };
        let r = Retry {
            attempts: 4,
            ..Retry::default()
        };
        let c = StackConfig::from_policy("web", "orders", None, &p, None, None)
            .with_route(Some(&t), Some(&r));
        assert_eq!(c.request_timeout, Some(Duration::from_secs(1)));
        assert_eq!(c.retry.attempts, 4);
        let c =
            StackConfig::from_policy("web", "orders", None, &p, None, None).with_route(None, None);
        assert_eq!(c.request_timeout, Some(Duration::from_secs(3)));
        assert_eq!(c.retry.attempts, 1);
    }
}
