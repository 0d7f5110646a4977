//! Load balancing over a changing set of endpoints, with per-endpoint circuit breakers
//! and outlier detection.
//!
//! Algorithms ([`Algorithm`]): power of two choices over peak-EWMA latency × in-flight
//! requests (the default, as in Linkerd), weighted round robin, least request (P2C over
//! in-flight requests), and consistent hashing on a header (weighted rendezvous hashing:
//! adding or removing an endpoint moves only its share of keys). Endpoint weights bias the
//! sampling; weight 0 takes no traffic.
//!
//! **Zone-aware:** with the caller's zone known, endpoints in that zone are preferred
//! while at least `zone_min_healthy` of them are available; otherwise every zone is used.
//!
//! **Failures do not attract traffic:** a 5xx/429 or an error is recorded in the latency
//! estimate as at least `failure_penalty`, so an endpoint that fails fast does not look
//! fast. Failures also feed the endpoint's breaker and outlier state, and an endpoint that
//! is blocked or ejected is skipped. When none is available the balancer is not ready
//! (so [`crate::fail_fast`] above it can fail fast), and wakes up when one recovers or
//! the endpoint set changes through the [`BalancerHandle`].
//!
//! The balancer picks per request (it needs the request for hashing), so endpoint
//! services must be `Clone`; each request drives its own clone to readiness (tower's
//! `Oneshot`), which is how HTTP client handles are used anyway.

mod error;
mod ewma;
mod future;
mod pick;

pub use error::NoEndpoint;
pub use future::BalanceFuture;

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::{HeaderName, Request, Response};
use tokio::time::{Instant, Sleep};
use tower::{BoxError, Service, ServiceExt};

use crate::breaker::{Breaker, BreakerConfig, BreakerId, Reporter};
use crate::outlier::{OutlierConfig, OutlierState};
use ewma::Ewma;

/// One endpoint: a service to call and what the balancer needs to know about it.
#[derive(Debug, Clone)]
pub struct Endpoint<S> {
    /// Stable id (instance id or `address:port`); state is kept across updates by id.
    pub id: Arc<str>,
    /// The client for this endpoint.
    pub service: S,
    /// Relative share of traffic; 0 takes none.
    pub weight: u32,
    /// Availability zone.
    pub zone: Option<Arc<str>>,
}

impl<S> Endpoint<S> {
    /// An endpoint of weight 1 in no particular zone.
    pub fn new(id: impl Into<Arc<str>>, service: S) -> Self {
        Endpoint {
            id: id.into(),
            service,
            weight: 1,
            zone: None,
        }
    }

    /// With this weight.
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// In this zone.
    pub fn zone(mut self, zone: impl Into<Arc<str>>) -> Self {
        self.zone = Some(zone.into());
        self
    }
}

/// Balancing algorithms.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Algorithm {
    /// P2C over peak-EWMA latency × (in-flight + 1).
    #[default]
    PeakEwma,
    /// Weighted round robin.
    RoundRobin,
    /// P2C over in-flight requests.
    LeastRequest,
    /// Weighted rendezvous hashing on this header's value (P2C when it is absent).
    ConsistentHash(HeaderName),
}

/// Runtime configuration, built from `ieum_model::policy` types.
#[derive(Debug, Clone)]
pub struct BalanceConfig {
    /// Calling service, for breaker reports.
    pub caller: Arc<str>,
    /// Destination service, for breaker reports and errors.
    pub destination: Arc<str>,
    /// The algorithm.
    pub algorithm: Algorithm,
    /// The caller's zone; `None` disables zone preference.
    pub local_zone: Option<Arc<str>>,
    /// Share (0–1) of the local zone's endpoints that must be available to stay local.
    pub zone_min_healthy: f64,
    /// Latency assumed for an endpoint without samples (Linkerd: 30 ms).
    pub default_rtt: Duration,
    /// Time constant of the EWMA (Linkerd: 10 s).
    pub decay: Duration,
    /// Least latency recorded for a failed call, so fast failures do not attract traffic.
    pub failure_penalty: Duration,
    /// Per-endpoint breaker, if any.
    pub breaker: Option<BreakerConfig>,
    /// Outlier detection, if any.
    pub outlier: Option<OutlierConfig>,
    /// Where breaker transitions go.
    pub reporter: Option<Reporter>,
}

impl BalanceConfig {
    /// Defaults: P2C peak-EWMA, no zone, a per-endpoint breaker, no outlier detection.
    pub fn new(caller: impl Into<Arc<str>>, destination: impl Into<Arc<str>>) -> Self {
        BalanceConfig {
            caller: caller.into(),
            destination: destination.into(),
            algorithm: Algorithm::PeakEwma,
            local_zone: None,
            zone_min_healthy: 0.7,
            default_rtt: Duration::from_millis(30),
            decay: Duration::from_secs(10),
            failure_penalty: Duration::from_millis(500),
            breaker: Some(BreakerConfig::default()),
            outlier: None,
            reporter: None,
        }
    }

    /// Applies a `loadBalancer` stanza; `local_zone` is the caller's zone.
    pub fn with_policy(
        mut self,
        lb: &ieum_model::policy::LoadBalancer,
        local_zone: Option<Arc<str>>,
    ) -> Self {
        use ieum_model::policy::LoadBalancerKind as K;
        self.algorithm = match lb.kind {
            K::PeakEwmaP2C => Algorithm::PeakEwma,
            K::RoundRobin => Algorithm::RoundRobin,
            K::LeastRequest => Algorithm::LeastRequest,
            K::ConsistentHash => match lb
                .hash_header
                .as_deref()
                .and_then(|h| HeaderName::try_from(h).ok())
            {
                Some(h) => Algorithm::ConsistentHash(h),
                None => Algorithm::PeakEwma,
            },
        };
        self.local_zone = if lb.zone_aware { local_zone } else { None };
        self.zone_min_healthy = f64::from(lb.zone_min_healthy_percent) / 100.0;
        self
    }
}

/// What the balancer tracks per endpoint, kept across updates.
#[derive(Debug)]
struct Stats {
    ewma: Mutex<Ewma>,
    in_flight: AtomicU32,
    breaker: Option<Arc<Breaker>>,
    outlier: OutlierState,
}

#[derive(Debug)]
struct Slot<S> {
    ep: Endpoint<S>,
    stats: Arc<Stats>,
}

#[derive(Debug)]
struct Shared<S> {
    config: BalanceConfig,
    endpoints: RwLock<Arc<[Slot<S>]>>,
    rr: AtomicUsize,
    wakers: Mutex<Vec<Waker>>,
}

impl<S> Shared<S> {
    fn snapshot(&self) -> Arc<[Slot<S>]> {
        self.endpoints
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn new_stats(&self, id: &Arc<str>, now: Instant) -> Arc<Stats> {
        let c = &self.config;
        Arc::new(Stats {
            ewma: Mutex::new(Ewma::new(c.default_rtt, now)),
            in_flight: AtomicU32::new(0),
            breaker: c.breaker.clone().map(|b| {
                let bid = BreakerId {
                    caller: c.caller.clone(),
                    destination: c.destination.clone(),
                    endpoint: Some(id.clone()),
                };
                Arc::new(Breaker::new(bid, b, c.reporter.clone()))
            }),
            outlier: OutlierState::default(),
        })
    }

    /// Whether `stats` may take a request at `now`; if not, when it may.
    fn available(&self, slot: &Slot<S>, now: Instant) -> Result<(), Option<Instant>> {
        if slot.ep.weight == 0 {
            return Err(None);
        }
        if self.config.outlier.is_some()
            && let Some(until) = slot.stats.outlier.ejected_until(now)
        {
            return Err(Some(until));
        }
        match &slot.stats.breaker {
            Some(b) => b.available(now).map_err(Some),
            None => Ok(()),
        }
    }

    /// Whether `slot` may take a request, answered without a clock when it surely may.
    fn surely_available(&self, slot: &Slot<S>) -> bool {
        slot.ep.weight > 0
            && self.config.outlier.is_none()
            && slot.stats.breaker.as_ref().is_none_or(|b| b.is_allowed())
    }

    fn ejected(&self, now: Instant) -> usize {
        self.snapshot()
            .iter()
            .filter(|s| s.stats.outlier.ejected_until(now).is_some())
            .count()
    }
}

/// A load balancer; see the [module docs](self). Cheap to clone: clones share endpoints
/// and their state.
#[derive(Debug)]
pub struct Balancer<S> {
    shared: Arc<Shared<S>>,
    wake_at: Option<std::pin::Pin<Box<Sleep>>>,
    /// The endpoints seen ready by `poll_ready`, used by the next `call`.
    ready: Option<Arc<[Slot<S>]>>,
}

impl<S> Clone for Balancer<S> {
    fn clone(&self) -> Self {
        Balancer {
            shared: self.shared.clone(),
            wake_at: None,
            ready: None,
        }
    }
}

/// Changes the endpoints of a [`Balancer`] (from discovery) and reads their state.
#[derive(Debug)]
pub struct BalancerHandle<S> {
    shared: Arc<Shared<S>>,
}

impl<S> Clone for BalancerHandle<S> {
    fn clone(&self) -> Self {
        BalancerHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<S> Balancer<S> {
    /// A balancer over `endpoints`, and the handle to update them.
    pub fn new(config: BalanceConfig, endpoints: Vec<Endpoint<S>>) -> (Self, BalancerHandle<S>) {
        let shared = Arc::new(Shared {
            config,
            endpoints: RwLock::new(Arc::from(Vec::new())),
            rr: AtomicUsize::new(0),
            wakers: Mutex::new(Vec::new()),
        });
        let handle = BalancerHandle {
            shared: shared.clone(),
        };
        handle.update(endpoints);
        (
            Balancer {
                shared,
                wake_at: None,
                ready: None,
            },
            handle,
        )
    }
}

impl<S> BalancerHandle<S> {
    /// Replaces the endpoint set; endpoints keeping their id keep their latency estimate,
    /// breaker and outlier state.
    pub fn update(&self, endpoints: Vec<Endpoint<S>>) {
        let now = Instant::now();
        let old = self.shared.snapshot();
        let slots: Vec<Slot<S>> = endpoints
            .into_iter()
            .map(|ep| {
                let stats = old
                    .iter()
                    .find(|s| s.ep.id == ep.id)
                    .map(|s| s.stats.clone())
                    .unwrap_or_else(|| self.shared.new_stats(&ep.id, now));
                Slot { ep, stats }
            })
            .collect();
        *self
            .shared
            .endpoints
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::from(slots);
        let wakers = std::mem::take(
            &mut *self
                .shared
                .wakers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Ids of the endpoints.
    pub fn ids(&self) -> Vec<Arc<str>> {
        self.shared
            .snapshot()
            .iter()
            .map(|s| s.ep.id.clone())
            .collect()
    }

    /// The breaker of endpoint `id`, if it has one.
    pub fn breaker(&self, id: &str) -> Option<Arc<Breaker>> {
        self.shared
            .snapshot()
            .iter()
            .find(|s| &*s.ep.id == id)
            .and_then(|s| s.stats.breaker.clone())
    }

    /// Whether endpoint `id` is ejected by outlier detection now.
    pub fn is_ejected(&self, id: &str) -> bool {
        let now = Instant::now();
        self.shared
            .snapshot()
            .iter()
            .any(|s| &*s.ep.id == id && s.stats.outlier.ejected_until(now).is_some())
    }

    /// Requests in flight to endpoint `id`.
    pub fn in_flight(&self, id: &str) -> u32 {
        self.shared
            .snapshot()
            .iter()
            .find(|s| &*s.ep.id == id)
            .map_or(0, |s| s.stats.in_flight.load(Ordering::Acquire))
    }
}

impl<S, B, RB> Service<Request<B>> for Balancer<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = Response<RB>;
    type Error = BoxError;
    type Future = BalanceFuture<S, Request<B>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let eps = self.shared.snapshot();
        if eps.iter().any(|s| self.shared.surely_available(s)) {
            self.wake_at = None;
            self.ready = Some(eps);
            return Poll::Ready(Ok(()));
        }
        let now = Instant::now();
        let mut earliest: Option<Instant> = None;
        for slot in eps.iter() {
            match self.shared.available(slot, now) {
                Ok(()) => {
                    self.wake_at = None;
                    self.ready = Some(eps.clone());
                    return Poll::Ready(Ok(()));
                }
                Err(Some(at)) => earliest = Some(earliest.map_or(at, |e| e.min(at))),
                Err(None) => {}
            }
        }
        // Nothing available: wake on an update, or when the first endpoint recovers.
        {
            let mut wakers = self
                .shared
                .wakers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
                wakers.push(cx.waker().clone());
            }
        }
        if let Some(at) = earliest {
            let sleep = self
                .wake_at
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
            sleep.as_mut().reset(at);
            if sleep.as_mut().poll(cx).is_ready() {
                cx.waker().wake_by_ref();
            }
        }
        Poll::Pending
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let now = Instant::now();
        let eps = self.ready.take().unwrap_or_else(|| self.shared.snapshot());
        let mut candidates = pick::candidates(&self.shared, &eps, now);
        while !candidates.is_empty() {
            let i = pick::pick(&self.shared, &eps, &candidates, &req, now);
            let slot = &eps[candidates[i]];
            let permit = match &slot.stats.breaker {
                Some(b) => match b.try_acquire() {
                    Ok(p) => Some(crate::breaker::Guard::new(b.clone(), p)),
                    Err(_) => {
                        candidates.remove(i);
                        continue;
                    }
                },
                None => None,
            };
            slot.stats.in_flight.fetch_add(1, Ordering::AcqRel);
            let fut = slot.ep.service.clone().oneshot(req);
            return BalanceFuture::new(fut, self.shared.clone(), slot.stats.clone(), permit, now);
        }
        BalanceFuture::failed(
            self.shared.clone(),
            NoEndpoint {
                destination: self.shared.config.destination.clone(),
            },
        )
    }
}

#[cfg(test)]
mod tests;
