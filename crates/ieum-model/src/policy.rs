//! Resilience policy types users write: timeouts, retries, budgets, breakers, balancing,
//! rate limits and fault injection.
//!
//! Three resource kinds carry them, each with a `targetRef` (a `Service` or a `Route`):
//! [`ResiliencePolicySpec`], [`RateLimitPolicySpec`] and [`FaultInjectionSpec`]. The
//! [`Timeouts`] and [`Retry`] stanzas are also embedded as is in Route rules, Subscriptions
//! and Saga steps, so `retry` has one shape everywhere.
//!
//! **Precedence** (most specific wins, stanza by stanza, never field by field, so what
//! applies is always one block a user can point at), from strongest to weakest:
//! 1. a Route rule's own `timeouts`/`retry`;
//! 2. a `ResiliencePolicy` targeting that Route;
//! 3. one targeting the Service;
//! 4. the defaults below.
//!
//! [`ResiliencePolicySpec::overlay`] implements the policy part of that rule.
//!
//! Validation codes: `E20xx` target, `E21xx` timeouts, retries and budgets, `E22xx`
//! circuit breaker, `E23xx` outlier detection, `E24xx` load balancing, `E25xx` fail-fast
//! and concurrency, `E26xx` rate limits, `E27xx` fault injection.

use serde::{Deserialize, Serialize};

use crate::{Duration, Name, Validator};

/// Longest timeout accepted: longer exchanges belong to async messaging, not a request.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Default bound on a whole exchange including retries (Envoy's route timeout).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Most retries after the first try (GEP-1731 `attempts`).
pub const MAX_RETRY_ATTEMPTS: u32 = 10;
/// Largest request body buffered so it can be replayed on a retry.
pub const MAX_RETRY_BODY_BYTES: u64 = 16 * 1024 * 1024;

/// What a policy applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetRef {
    /// The kind of resource targeted.
    pub kind: TargetKind,
    /// Its name.
    #[schema(value_type = String)]
    pub name: Name,
}

/// Kinds a policy may target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum TargetKind {
    /// Every call to a service.
    Service,
    /// Calls matched by one route.
    Route,
}

/// GEP-1742 timeouts. `0s` disables a timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Timeouts {
    /// Bounds the whole exchange as the caller sees it, retries and backoff included. It is
    /// also the budget forwarded downstream, so callers deeper in the chain stop in time.
    #[serde(default = "default_request_timeout")]
    pub request: Duration,
    /// Bounds each attempt, so one slow backend leaves time to retry on another. `0s` (the
    /// default) means an attempt may use whatever is left of `request`.
    #[serde(default)]
    pub backend_request: Duration,
}

fn default_request_timeout() -> Duration {
    DEFAULT_REQUEST_TIMEOUT
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            request: DEFAULT_REQUEST_TIMEOUT,
            backend_request: Duration::ZERO,
        }
    }
}

impl Timeouts {
    /// Checks every field; paths are relative to `v`'s prefix.
    pub fn validate(&self, v: &mut Validator) {
        v.check(self.request <= MAX_TIMEOUT, "E2101", "request", || {
            format!(
                "must be at most {MAX_TIMEOUT} (is {}); use `0s` to disable",
                self.request
            )
        });
        v.check(
            self.backend_request <= MAX_TIMEOUT,
            "E2101",
            "backendRequest",
            || {
                format!(
                    "must be at most {MAX_TIMEOUT} (is {}); use `0s` to disable",
                    self.backend_request
                )
            },
        );
        v.check(
            self.request.is_zero() || self.backend_request <= self.request,
            "E2102",
            "backendRequest",
            || {
                format!(
                    "must be at most `request` {} (is {}): one attempt cannot outlive the exchange",
                    self.request, self.backend_request
                )
            },
        );
    }
}

/// One retry shape for every kind (routes, subscriptions, saga steps), after GEP-1731.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retry {
    /// HTTP status codes worth another try. Connection failures, `REFUSED_STREAM` and gRPC
    /// `UNAVAILABLE` are retried whenever a retry stanza exists: nothing was processed.
    #[serde(default = "default_retry_codes")]
    pub codes: Vec<u16>,
    /// Retries after the first try (GEP-1731); `0` disables retrying.
    #[serde(default = "default_retry_attempts")]
    pub attempts: u32,
    /// Base of the exponential backoff; each wait is drawn uniformly below
    /// `min(maxBackoff, backoff × 2^retry)` ("full jitter") so retries do not synchronise.
    #[serde(default = "default_backoff")]
    pub backoff: Duration,
    /// Cap of one wait, also the most a server's `Retry-After` is honoured.
    #[serde(default = "default_max_backoff")]
    pub max_backoff: Duration,
    /// Largest request body kept for replay (a copy is kept while the body streams to the
    /// first attempt); a body that turns out bigger is sent once and not retried.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// Also retry failures after which the request may have been processed (timeouts,
    /// resets): only safe when the target is idempotent, hence off by default.
    #[serde(default)]
    pub idempotent: bool,
}

fn default_retry_codes() -> Vec<u16> {
    vec![502, 503, 504]
}

fn default_retry_attempts() -> u32 {
    1
}

fn default_backoff() -> Duration {
    Duration::from_millis(25)
}

fn default_max_backoff() -> Duration {
    Duration::from_millis(250)
}

fn default_max_body_bytes() -> u64 {
    64 * 1024
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            codes: default_retry_codes(),
            attempts: default_retry_attempts(),
            backoff: default_backoff(),
            max_backoff: default_max_backoff(),
            max_body_bytes: default_max_body_bytes(),
            idempotent: false,
        }
    }
}

impl Retry {
    /// Checks every field; paths are relative to `v`'s prefix.
    pub fn validate(&self, v: &mut Validator) {
        for (i, code) in self.codes.iter().enumerate() {
            v.check(
                (400..=599).contains(code),
                "E2103",
                &format!("codes[{i}]"),
                || format!("{code} is not an error status: use codes between 400 and 599"),
            );
        }
        v.check(
            self.attempts <= MAX_RETRY_ATTEMPTS,
            "E2104",
            "attempts",
            || {
                format!(
                    "must be at most {MAX_RETRY_ATTEMPTS} (is {})",
                    self.attempts
                )
            },
        );
        v.check(
            !self.backoff.is_zero() && self.backoff <= self.max_backoff,
            "E2105",
            "backoff",
            || {
                format!(
                    "must be above 0s and at most maxBackoff {} (is {})",
                    self.max_backoff, self.backoff
                )
            },
        );
        v.check(
            self.max_backoff <= Duration::from_secs(3600),
            "E2106",
            "maxBackoff",
            || format!("must be at most 1h (is {})", self.max_backoff),
        );
        v.check(
            self.max_body_bytes <= MAX_RETRY_BODY_BYTES,
            "E2107",
            "maxBodyBytes",
            || {
                format!(
                    "must be at most {MAX_RETRY_BODY_BYTES} (is {})",
                    self.max_body_bytes
                )
            },
        );
    }
}

/// Caps retries to a share of ordinary traffic so retries cannot amplify an outage
/// (Linkerd's budget; GEP-3388). On by default.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudget {
    /// Retries allowed per original request over the window (0.2 = 20 %).
    #[serde(default = "default_budget_ratio")]
    pub ratio: f64,
    /// Retries per second always allowed, so low-traffic callers can still retry.
    #[serde(default = "default_budget_min_per_second")]
    pub min_per_second: u32,
    /// How long a request counts towards the budget.
    #[serde(default = "default_budget_window")]
    pub window: Duration,
}

fn default_budget_ratio() -> f64 {
    0.2
}

fn default_budget_min_per_second() -> u32 {
    10
}

fn default_budget_window() -> Duration {
    Duration::from_secs(10)
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            ratio: default_budget_ratio(),
            min_per_second: default_budget_min_per_second(),
            window: default_budget_window(),
        }
    }
}

impl RetryBudget {
    /// Checks every field; paths are relative to `v`'s prefix.
    pub fn validate(&self, v: &mut Validator) {
        v.check(
            (0.0..=1000.0).contains(&self.ratio),
            "E2111",
            "ratio",
            || format!("must be between 0 and 1000 (is {})", self.ratio),
        );
        v.check(
            self.min_per_second <= 1_000_000,
            "E2112",
            "minPerSecond",
            || format!("must be at most 1000000 (is {})", self.min_per_second),
        );
        v.check(
            self.window >= Duration::from_secs(1) && self.window <= Duration::from_secs(60),
            "E2113",
            "window",
            || format!("must be between 1s and 60s (is {})", self.window),
        );
    }
}

/// A circuit breaker: `allowed` → `blocked` on too many failures → `probing` after a
/// penalty → `allowed` when the probes succeed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Where the breaker counts: per endpoint (one bad replica is avoided, the default) or
    /// per service (everyone backs off together).
    #[serde(default)]
    pub scope: BreakerScope,
    /// Block after this many failures in a row; `0` disables this trigger.
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    /// Block when the failure rate over a sliding window is too high.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_rate: Option<FailureRate>,
    /// Block when too many calls are slow (they hold resources even when they succeed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_calls: Option<SlowCalls>,
    /// How long to stay blocked: grows with jittered exponential backoff each time probes
    /// fail, from `base` to `max`.
    #[serde(default)]
    pub blocked_for: BlockedFor,
    /// Trial calls let through while probing; all must succeed to close the breaker.
    #[serde(default = "default_probes")]
    pub probes: u32,
}

fn default_consecutive_failures() -> u32 {
    5
}

fn default_probes() -> u32 {
    1
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        CircuitBreaker {
            scope: BreakerScope::default(),
            consecutive_failures: default_consecutive_failures(),
            failure_rate: None,
            slow_calls: None,
            blocked_for: BlockedFor::default(),
            probes: default_probes(),
        }
    }
}

/// Where a breaker counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum BreakerScope {
    /// One breaker per endpoint, inside the balancer.
    #[default]
    Endpoint,
    /// One breaker for the whole service.
    Service,
}

/// Failure-rate trigger.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FailureRate {
    /// Percentage of failed calls (1–100) that blocks.
    pub threshold: f64,
    /// The last N calls (`100`) or the calls of the last period (`"60s"`).
    #[serde(default = "default_window")]
    pub window: Window,
    /// Fewer calls than this in the window never block: a few failures prove nothing.
    #[serde(default = "default_minimum_calls")]
    pub minimum_calls: u32,
}

fn default_window() -> Window {
    Window::Calls(100)
}

fn default_minimum_calls() -> u32 {
    20
}

/// A sliding window: count-based or time-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Window {
    /// The last N calls.
    Calls(u32),
    /// The calls of the last period.
    Time(Duration),
}

/// Slow-call trigger.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SlowCalls {
    /// Percentage of slow calls (1–100) that blocks.
    pub threshold: f64,
    /// A call slower than this is slow.
    pub duration: Duration,
}

/// How long a breaker stays blocked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BlockedFor {
    /// First penalty.
    #[serde(default = "default_blocked_base")]
    pub base: Duration,
    /// Longest penalty.
    #[serde(default = "default_blocked_max")]
    pub max: Duration,
}

fn default_blocked_base() -> Duration {
    Duration::from_secs(5)
}

fn default_blocked_max() -> Duration {
    Duration::from_secs(120)
}

impl Default for BlockedFor {
    fn default() -> Self {
        BlockedFor {
            base: default_blocked_base(),
            max: default_blocked_max(),
        }
    }
}

impl CircuitBreaker {
    /// Checks every field; paths are relative to `v`'s prefix.
    pub fn validate(&self, v: &mut Validator) {
        v.check(
            self.consecutive_failures <= 10_000,
            "E2201",
            "consecutiveFailures",
            || format!("must be at most 10000 (is {})", self.consecutive_failures),
        );
        if let Some(rate) = &self.failure_rate {
            v.nested("failureRate", |v| {
                v.check(
                    rate.threshold > 0.0 && rate.threshold <= 100.0,
                    "E2202",
                    "threshold",
                    || {
                        format!(
                            "must be a percentage above 0 and at most 100 (is {})",
                            rate.threshold
                        )
                    },
                );
                match rate.window {
                    Window::Calls(n) => {
                        v.check((1..=100_000).contains(&n), "E2203", "window", || {
                            format!("must count 1 to 100000 calls (is {n})")
                        });
                        v.check(
                            rate.minimum_calls >= 1 && rate.minimum_calls <= n,
                            "E2204",
                            "minimumCalls",
                            || {
                                format!(
                                    "must be between 1 and the window {n} (is {})",
                                    rate.minimum_calls
                                )
                            },
                        );
                    }
                    Window::Time(d) => {
                        v.check(
                            d >= Duration::from_secs(1) && d <= Duration::from_secs(3600),
                            "E2203",
                            "window",
                            || format!("must be between 1s and 1h (is {d})"),
                        );
                        v.check(rate.minimum_calls >= 1, "E2204", "minimumCalls", || {
                            "must be at least 1".into()
                        });
                    }
                }
            });
        }
        if let Some(slow) = &self.slow_calls {
            v.nested("slowCalls", |v| {
                v.check(
                    slow.threshold > 0.0 && slow.threshold <= 100.0,
                    "E2205",
                    "threshold",
                    || {
                        format!(
                            "must be a percentage above 0 and at most 100 (is {})",
                            slow.threshold
                        )
                    },
                );
                v.check(
                    !slow.duration.is_zero() && slow.duration <= MAX_TIMEOUT,
                    "E2206",
                    "duration",
                    || {
                        format!(
                            "must be above 0s and at most {MAX_TIMEOUT} (is {})",
                            slow.duration
                        )
                    },
                );
            });
            v.check(self.failure_rate.is_some(), "E2209", "slowCalls", || {
                "needs `failureRate` too: its window and minimumCalls define what is counted".into()
            });
        }
        let b = self.blocked_for;
        v.check(
            !b.base.is_zero() && b.base <= b.max,
            "E2207",
            "blockedFor.base",
            || {
                format!(
                    "must be above 0s and at most blockedFor.max {} (is {})",
                    b.max, b.base
                )
            },
        );
        v.check(
            b.max <= Duration::from_secs(3600),
            "E2207",
            "blockedFor.max",
            || format!("must be at most 1h (is {})", b.max),
        );
        v.check((1..=100).contains(&self.probes), "E2208", "probes", || {
            format!("must be between 1 and 100 (is {})", self.probes)
        });
        v.check(
            self.consecutive_failures > 0 || self.failure_rate.is_some(),
            "E2210",
            "",
            || {
                "set `consecutiveFailures` above 0 or a `failureRate`, or the breaker never blocks"
                    .into()
            },
        );
    }
}

/// Envoy-style outlier detection: eject an endpoint after consecutive 5xx or gateway
/// errors, for `baseEjectionTime × times ejected`, never more than a share of endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// Consecutive 5xx answers (or connection failures) that eject an endpoint.
    #[serde(default = "default_consecutive_5xx", rename = "consecutive5xx")]
    pub consecutive_5xx: u32,
    /// First ejection; the n-th ejection lasts n times as long.
    #[serde(default = "default_base_ejection_time")]
    pub base_ejection_time: Duration,
    /// Longest ejection, so a recovered endpoint comes back in reasonable time.
    #[serde(default = "default_max_ejection_time")]
    pub max_ejection_time: Duration,
    /// Most endpoints ejected at once, in percent; at least one may always be ejected.
    #[serde(default = "default_max_ejection_percent")]
    pub max_ejection_percent: u32,
}

fn default_consecutive_5xx() -> u32 {
    5
}

fn default_base_ejection_time() -> Duration {
    Duration::from_secs(30)
}

fn default_max_ejection_time() -> Duration {
    Duration::from_secs(300)
}

fn default_max_ejection_percent() -> u32 {
    50
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            consecutive_5xx: default_consecutive_5xx(),
            base_ejection_time: default_base_ejection_time(),
            max_ejection_time: default_max_ejection_time(),
            max_ejection_percent: default_max_ejection_percent(),
        }
    }
}

impl OutlierDetection {
    /// Checks every field; paths are relative to `v`'s prefix.
    pub fn validate(&self, v: &mut Validator) {
        v.check(
            (1..=10_000).contains(&self.consecutive_5xx),
            "E2301",
            "consecutive5xx",
            || format!("must be between 1 and 10000 (is {})", self.consecutive_5xx),
        );
        v.check(
            !self.base_ejection_time.is_zero() && self.base_ejection_time <= self.max_ejection_time,
            "E2302",
            "baseEjectionTime",
            || {
                format!(
                    "must be above 0s and at most maxEjectionTime {} (is {})",
                    self.max_ejection_time, self.base_ejection_time
                )
            },
        );
        v.check(
            self.max_ejection_time <= Duration::from_secs(3600),
            "E2303",
            "maxEjectionTime",
            || format!("must be at most 1h (is {})", self.max_ejection_time),
        );
        v.check(
            (1..=100).contains(&self.max_ejection_percent),
            "E2304",
            "maxEjectionPercent",
            || {
                format!(
                    "must be between 1 and 100 (is {})",
                    self.max_ejection_percent
                )
            },
        );
    }
}

/// How a caller picks an endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancer {
    /// The algorithm.
    #[serde(default, rename = "type")]
    pub kind: LoadBalancerKind,
    /// Prefer endpoints in the caller's zone while enough healthy capacity remains there.
    #[serde(default = "default_true")]
    pub zone_aware: bool,
    /// Leave the caller's zone when fewer than this percentage of its endpoints are
    /// healthy: the local zone would be overloaded.
    #[serde(default = "default_zone_min_healthy")]
    pub zone_min_healthy_percent: u32,
    /// Header whose value picks the endpoint for `ConsistentHash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_header: Option<String>,
}

fn default_true() -> bool {
    true
}

fn default_zone_min_healthy() -> u32 {
    70
}

impl Default for LoadBalancer {
    fn default() -> Self {
        LoadBalancer {
            kind: LoadBalancerKind::default(),
            zone_aware: true,
            zone_min_healthy_percent: default_zone_min_healthy(),
            hash_header: None,
        }
    }
}

/// Balancing algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub enum LoadBalancerKind {
    /// Power of two choices over peak-EWMA latency (Linkerd's default): adapts to slow
    /// endpoints without global coordination.
    #[default]
    PeakEwmaP2C,
    /// Weighted round robin.
    RoundRobin,
    /// Power of two choices over in-flight requests.
    LeastRequest,
    /// Same header value, same endpoint (sessions, caches).
    ConsistentHash,
}

impl LoadBalancer {
    /// Checks every field; paths are relative to `v`'s prefix.
    pub fn validate(&self, v: &mut Validator) {
        match (&self.hash_header, self.kind) {
            (None, LoadBalancerKind::ConsistentHash) => v.error(
                "E2401",
                "hashHeader",
                "`ConsistentHash` needs a `hashHeader`, like `x-user-id`",
            ),
            (Some(h), _) => v.check(valid_header_name(h), "E2402", "hashHeader", || {
                format!("`{h}` is not a header name: use lowercase letters, digits and `-`")
            }),
            (None, _) => {}
        }
        v.check(
            self.zone_min_healthy_percent <= 100,
            "E2403",
            "zoneMinHealthyPercent",
            || format!("must be at most 100 (is {})", self.zone_min_healthy_percent),
        );
    }
}

fn valid_header_name(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 128
        && h.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Fail-fast: when no endpoint is ready for `timeout`, fail every request at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FailFast {
    /// Requests allowed to wait for an endpoint; more are refused at once (load shedding).
    #[serde(default = "default_queue")]
    pub queue: u32,
    /// How long requests may wait for a ready endpoint before the caller fails fast.
    #[serde(default = "default_fail_fast_timeout")]
    pub timeout: Duration,
}

fn default_queue() -> u32 {
    10_000
}

fn default_fail_fast_timeout() -> Duration {
    Duration::from_secs(3)
}

impl Default for FailFast {
    fn default() -> Self {
        FailFast {
            queue: default_queue(),
            timeout: default_fail_fast_timeout(),
        }
    }
}

impl FailFast {
    /// Checks every field; paths are relative to `v`'s prefix.
    pub fn validate(&self, v: &mut Validator) {
        v.check(
            (1..=1_000_000).contains(&self.queue),
            "E2501",
            "queue",
            || format!("must be between 1 and 1000000 (is {})", self.queue),
        );
        v.check(
            !self.timeout.is_zero() && self.timeout <= MAX_TIMEOUT,
            "E2502",
            "timeout",
            || {
                format!(
                    "must be above 0s and at most {MAX_TIMEOUT} (is {})",
                    self.timeout
                )
            },
        );
    }
}

/// A bulkhead: at most `max` requests in flight; more are refused at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Concurrency {
    /// Most requests in flight.
    pub max: u32,
}

impl Concurrency {
    /// Checks every field; paths are relative to `v`'s prefix.
    pub fn validate(&self, v: &mut Validator) {
        v.check((1..=1_000_000).contains(&self.max), "E2511", "max", || {
            format!("must be between 1 and 1000000 (is {})", self.max)
        });
    }
}

/// The spec of a `ResiliencePolicy`. Every stanza is optional: an absent stanza is taken
/// from a less specific policy, or from the defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResiliencePolicySpec {
    /// What the policy applies to.
    pub target_ref: TargetRef,
    /// Request and per-attempt timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
    /// Retries; without this stanza nothing is retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Retry budget; on by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
    /// Circuit breaker; on by default per endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    /// Outlier detection; off unless set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Balancing; P2C over peak-EWMA, zone-aware, by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    /// Fail-fast; on by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_fast: Option<FailFast>,
    /// Bulkhead; off unless set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Concurrency>,
}

impl ResiliencePolicySpec {
    /// A policy for `target_ref` that sets nothing (all defaults).
    pub fn new(target_ref: TargetRef) -> Self {
        ResiliencePolicySpec {
            target_ref,
            timeouts: None,
            retry: None,
            retry_budget: None,
            circuit_breaker: None,
            outlier_detection: None,
            load_balancer: None,
            fail_fast: None,
            concurrency: None,
        }
    }

    /// This policy with every absent stanza taken from `less_specific` (a policy on the
    /// Service when this one targets a Route). Keeps this policy's `targetRef`.
    pub fn overlay(&self, less_specific: &ResiliencePolicySpec) -> ResiliencePolicySpec {
        let o = less_specific;
        ResiliencePolicySpec {
            target_ref: self.target_ref.clone(),
            timeouts: self.timeouts.or(o.timeouts),
            retry: self.retry.clone().or_else(|| o.retry.clone()),
            retry_budget: self.retry_budget.or(o.retry_budget),
            circuit_breaker: self
                .circuit_breaker
                .clone()
                .or_else(|| o.circuit_breaker.clone()),
            outlier_detection: self.outlier_detection.or(o.outlier_detection),
            load_balancer: self
                .load_balancer
                .clone()
                .or_else(|| o.load_balancer.clone()),
            fail_fast: self.fail_fast.or(o.fail_fast),
            concurrency: self.concurrency.or(o.concurrency),
        }
    }

    /// Checks every stanza; paths are relative to `v`'s prefix (usually `spec`).
    pub fn validate(&self, v: &mut Validator) {
        if let Some(t) = &self.timeouts {
            v.nested("timeouts", |v| t.validate(v));
        }
        if let Some(r) = &self.retry {
            v.nested("retry", |v| r.validate(v));
        }
        if let Some(b) = &self.retry_budget {
            v.nested("retryBudget", |v| b.validate(v));
        }
        if let Some(cb) = &self.circuit_breaker {
            v.nested("circuitBreaker", |v| cb.validate(v));
        }
        if let Some(o) = &self.outlier_detection {
            v.nested("outlierDetection", |v| o.validate(v));
        }
        if let Some(lb) = &self.load_balancer {
            v.nested("loadBalancer", |v| lb.validate(v));
        }
        if let Some(ff) = &self.fail_fast {
            v.nested("failFast", |v| ff.validate(v));
        }
        if let Some(c) = &self.concurrency {
            v.nested("concurrency", |v| c.validate(v));
        }
        if let (Some(t), Some(ff)) = (&self.timeouts, &self.fail_fast) {
            v.check(t.request.is_zero() || ff.timeout <= t.request, "E2503", "failFast.timeout", || {
                format!("must be at most timeouts.request {} (is {}): requests would time out first", t.request, ff.timeout)
            });
        }
    }
}

/// The spec of a `RateLimitPolicy`: a local GCRA limit, answered with 429 and
/// `Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitPolicySpec {
    /// What the limit applies to.
    pub target_ref: TargetRef,
    /// The limit.
    pub limit: RateLimit,
}

/// `requests` per `per`, with bursts of up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimit {
    /// Requests allowed per period, evenly spread.
    pub requests: u32,
    /// The period.
    pub per: Duration,
    /// Requests allowed at once after a quiet spell; defaults to `requests`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

impl RateLimit {
    /// The burst size in effect.
    pub fn effective_burst(&self) -> u32 {
        self.burst.unwrap_or(self.requests)
    }

    /// Checks every field; paths are relative to `v`'s prefix.
    pub fn validate(&self, v: &mut Validator) {
        v.check(self.requests >= 1, "E2601", "requests", || {
            "must be at least 1".into()
        });
        v.check(
            self.per >= Duration::from_millis(1) && self.per <= Duration::from_secs(86_400),
            "E2602",
            "per",
            || format!("must be between 1ms and 24h (is {})", self.per),
        );
        if let Some(burst) = self.burst {
            v.check(burst >= 1, "E2603", "burst", || "must be at least 1".into());
        }
    }
}

impl RateLimitPolicySpec {
    /// Checks every field; paths are relative to `v`'s prefix.
    pub fn validate(&self, v: &mut Validator) {
        v.nested("limit", |v| self.limit.validate(v));
    }
}

/// The spec of a `FaultInjection`: delay and abort a share of requests, for chaos testing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultInjectionSpec {
    /// What the faults apply to.
    pub target_ref: TargetRef,
    /// Delay a share of requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    /// Answer a share of requests with an error without calling the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

/// Delay `percent` of requests by `duration`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    /// The added delay.
    pub duration: Duration,
    /// Share of requests delayed, 0–100.
    pub percent: f64,
}

/// Abort `percent` of requests with an HTTP or gRPC status.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    /// HTTP status answered (200–599).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// gRPC status answered (1–16), in `grpc-status` with HTTP 200.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u8>,
    /// Share of requests aborted, 0–100.
    pub percent: f64,
}

impl FaultInjectionSpec {
    /// Checks every field; paths are relative to `v`'s prefix.
    pub fn validate(&self, v: &mut Validator) {
        v.check(
            self.delay.is_some() || self.abort.is_some(),
            "E2701",
            "",
            || "set `delay`, `abort` or both".into(),
        );
        if let Some(d) = &self.delay {
            v.nested("delay", |v| {
                check_percent(v, d.percent);
                v.check(
                    !d.duration.is_zero() && d.duration <= MAX_TIMEOUT,
                    "E2703",
                    "duration",
                    || {
                        format!(
                            "must be above 0s and at most {MAX_TIMEOUT} (is {})",
                            d.duration
                        )
                    },
                );
            });
        }
        if let Some(a) = &self.abort {
            v.nested("abort", |v| {
                check_percent(v, a.percent);
                match (a.http_status, a.grpc_status) {
                    (Some(code), None) => {
                        v.check((200..=599).contains(&code), "E2705", "httpStatus", || {
                            format!("must be between 200 and 599 (is {code})")
                        })
                    }
                    (None, Some(code)) => {
                        v.check((1..=16).contains(&code), "E2706", "grpcStatus", || {
                            format!("must be a gRPC error code between 1 and 16 (is {code})")
                        })
                    }
                    _ => v.error(
                        "E2704",
                        "",
                        "set exactly one of `httpStatus` or `grpcStatus`",
                    ),
                }
            });
        }
    }
}

fn check_percent(v: &mut Validator, percent: f64) {
    v.check((0.0..=100.0).contains(&percent), "E2702", "percent", || {
        format!("must be between 0 and 100 (is {percent})")
    });
}

#[cfg(test)]
mod tests;
