//! Per-request overhead of each resilience layer alone and of the default stack, over a
//! no-op service. Run: `cargo bench -p ieum-resilience --bench overhead`.

mod common;

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Empty;
use ieum_resilience::breaker::{Breaker, BreakerConfig, BreakerId, CircuitBreakerLayer};
use ieum_resilience::classify::ErrorResponseLayer;
use ieum_resilience::deadline::DeadlineLayer;
use ieum_resilience::fail_fast::{FailFastConfig, FailFastLayer};
use ieum_resilience::fault::FaultInjectionLayer;
use ieum_resilience::limit::{ConcurrencyLimitLayer, RateLimitConfig, RateLimitLayer};
use ieum_resilience::retry::{RetryBudget, RetryLayer, RetryPolicy};
use ieum_resilience::timeout::AttemptTimeoutLayer;
use tokio::runtime::Runtime;
use tower::{Layer, Service, ServiceExt};

type Req = Request<Empty<Bytes>>;

fn measure<S, E>(c: &mut Criterion, rt: &Runtime, name: &str, make: impl Fn() -> S)
where
    S: Service<Req, Response = Response<()>, Error = E>,
    E: std::fmt::Debug,
{
    c.bench_function(name, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut svc = make();
                let start = tokio::time::Instant::now();
                for _ in 0..iters {
                    let req = common::request();
                    svc.ready().await.expect("ready");
                    black_box(svc.call(req).await.expect("answered"));
                }
                start.elapsed()
            })
        })
    });
}

fn layers(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let _guard = rt.enter();
    measure(c, &rt, "baseline/noop", common::noop::<Req>);
    measure(c, &rt, "stack/default", common::default_stack);
    measure(c, &rt, "layer/error_response", || {
        ErrorResponseLayer.layer(common::noop::<Req>())
    });
    measure(c, &rt, "layer/deadline", || {
        DeadlineLayer::new(Some(Duration::from_secs(15))).layer(common::noop::<Req>())
    });
    measure(c, &rt, "layer/attempt_timeout", || {
        AttemptTimeoutLayer::new(Some(Duration::from_secs(1))).layer(common::noop::<Req>())
    });
    measure(c, &rt, "layer/retry_with_budget", || {
        RetryLayer::new(RetryPolicy::default(), Arc::new(RetryBudget::default()))
            .layer(common::noop())
    });
    measure(c, &rt, "layer/circuit_breaker", || {
        let breaker = Breaker::new(
            BreakerId::service("web", "orders"),
            BreakerConfig::default(),
            None,
        );
        CircuitBreakerLayer::new(Arc::new(breaker)).layer(common::noop::<Req>())
    });
    measure(c, &rt, "layer/fail_fast", || {
        FailFastLayer::new(FailFastConfig::default()).layer(common::noop::<Req>())
    });
    measure(c, &rt, "layer/concurrency_limit", || {
        ConcurrencyLimitLayer::new(Some(1024)).layer(common::noop::<Req>())
    });
    measure(c, &rt, "layer/rate_limit_unconfigured", || {
        RateLimitLayer::new(None).layer(common::noop::<Req>())
    });
    measure(c, &rt, "layer/rate_limit_configured", || {
        let n = NonZeroU32::new(1_000_000_000).expect("non-zero");
        RateLimitLayer::new(Some(RateLimitConfig {
            requests: n,
            per: Duration::from_secs(1),
            burst: n,
        }))
        .layer(common::noop::<Req>())
    });
    measure(c, &rt, "layer/fault_unconfigured", || {
        FaultInjectionLayer::new(None).layer(common::noop::<Req>())
    });
    measure(c, &rt, "layer/balancer_p2c_3", common::balancer::<Req>);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    targets = layers
}
criterion_main!(benches);
