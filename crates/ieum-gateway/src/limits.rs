//! Rate limits and quotas of each `Api`, in this gateway's memory: per consumer and per
//! API (GCRA, from `ieum-resilience`), and quotas per consumer in fixed periods. Limiters
//! outlive snapshot changes and are replaced only when an API's limits change, so a
//! configuration push does not hand every consumer a fresh bucket.
//!
//! Every anonymous caller of an API shares the consumer bucket `anonymous`. With several
//! gateway replicas, each enforces its own share (limits are per gateway).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ieum_model::api::{ApiQuota, ApiRateLimit, ApiSpec};
use ieum_resilience::limit::{KeyedRateLimiter, RateLimitConfig};

/// The consumer name of calls without one.
pub(crate) const ANONYMOUS: &str = "anonymous";

/// Why a call is refused: answered 429 with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Exceeded {
    /// What ran out.
    pub(crate) what: &'static str,
    /// Whole seconds until a call would be admitted (at least 1).
    pub(crate) retry_after: u64,
}

/// Every API's limiters.
#[derive(Default)]
pub(crate) struct Limits {
    apis: Mutex<HashMap<String, Arc<ApiLimits>>>,
}

struct ApiLimits {
    /// The limits these were built from.
    rate: Option<ApiRateLimit>,
    quota: Option<ApiQuota>,
    per_consumer: Option<KeyedRateLimiter>,
    per_api: Option<KeyedRateLimiter>,
    /// Calls per consumer in the current period: (period number, count).
    used: Mutex<HashMap<String, (u64, u64)>>,
}

impl Limits {
    /// Admits one call of `consumer` to `api` (`spec`), counting it, or says which limit
    /// refuses it. The per-consumer rate, then the API's, then the quota.
    pub(crate) fn admit(&self, api: &str, spec: &ApiSpec, consumer: &str) -> Result<(), Exceeded> {
        if spec.rate_limit.is_none() && spec.quota.is_none() {
            return Ok(());
        }
        let limits = self.of(api, spec);
        if let Some(l) = &limits.per_consumer {
            l.check(consumer).map_err(|r| Exceeded {
                what: "rate limit per consumer",
                retry_after: r.retry_after_secs(),
            })?;
        }
        if let Some(l) = &limits.per_api {
            l.check("").map_err(|r| Exceeded {
                what: "rate limit of the API",
                retry_after: r.retry_after_secs(),
            })?;
        }
        if let Some(q) = &limits.quota {
            let period = q.per_consumer.per.get().as_secs().max(1);
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or(Duration::ZERO)
                .as_secs();
            let current = now / period;
            let mut used = limits.used.lock().unwrap_or_else(PoisonError::into_inner);
            let entry = used.entry(consumer.to_owned()).or_insert((current, 0));
            if entry.0 != current {
                *entry = (current, 0);
            }
            if entry.1 >= q.per_consumer.requests {
                return Err(Exceeded {
                    what: "quota",
                    retry_after: ((current + 1) * period).saturating_sub(now).max(1),
                });
            }
            entry.1 += 1;
        }
        Ok(())
    }

    /// The limiters of `api`, built again when its limits changed.
    fn of(&self, api: &str, spec: &ApiSpec) -> Arc<ApiLimits> {
        let mut apis = self.apis.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(l) = apis.get(api)
            && l.rate == spec.rate_limit
            && l.quota == spec.quota
        {
            return l.clone();
        }
        let limiter = |l: Option<&ieum_model::policy::RateLimit>| {
            l.and_then(RateLimitConfig::from_policy)
                .and_then(KeyedRateLimiter::new)
        };
        let rate = spec.rate_limit.as_ref();
        let built = Arc::new(ApiLimits {
            rate: spec.rate_limit.clone(),
            quota: spec.quota.clone(),
            per_consumer: limiter(rate.and_then(|r| r.per_consumer.as_ref())),
            per_api: limiter(rate.and_then(|r| r.per_api.as_ref())),
            used: Mutex::default(),
        });
        apis.insert(api.to_owned(), built.clone());
        built
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(limits: serde_json::Value) -> ApiSpec {
        let mut v = serde_json::json!({"basePath": "/a", "backend": {"service": "s"}, "auth": {"anonymous": true}});
        for (k, val) in limits.as_object().unwrap() {
            v[k] = val.clone();
        }
        serde_json::from_value(v).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn each_consumer_has_its_own_bucket_and_the_api_one_for_all() {
        let limits = Limits::default();
        let s = spec(serde_json::json!({"rateLimit": {
            "perConsumer": {"requests": 2, "per": "1s"},
            "perApi": {"requests": 3, "per": "1s"}}}));
        assert!(limits.admit("a", &s, "x").is_ok());
        assert!(limits.admit("a", &s, "x").is_ok());
        let refused = limits.admit("a", &s, "x").unwrap_err();
        assert_eq!(refused.what, "rate limit per consumer");
        assert_eq!(refused.retry_after, 1);
        // Another consumer has its own bucket, until the API's runs out.
        assert!(limits.admit("a", &s, "y").is_ok());
        assert_eq!(
            limits.admit("a", &s, "y").unwrap_err().what,
            "rate limit of the API"
        );
        // Time refills them.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(limits.admit("a", &s, "x").is_ok());
        // A configuration push with the same limits keeps the buckets; new limits start
        // new ones.
        assert!(limits.admit("a", &s, "x").is_ok());
        assert!(limits.admit("a", &s, "x").is_err());
        let looser =
            spec(serde_json::json!({"rateLimit": {"perConsumer": {"requests": 5, "per": "1s"}}}));
        assert!(limits.admit("a", &looser, "x").is_ok());
    }

    #[test]
    fn a_quota_counts_calls_per_consumer_in_its_period() {
        let limits = Limits::default();
        let s = spec(serde_json::json!({"quota": {"perConsumer": {"requests": 2, "per": "1d"}}}));
        assert!(limits.admit("a", &s, "x").is_ok());
        assert!(limits.admit("a", &s, "x").is_ok());
        let refused = limits.admit("a", &s, "x").unwrap_err();
        assert_eq!(refused.what, "quota");
        assert!((1..=86_400).contains(&refused.retry_after));
        assert!(limits.admit("a", &s, "y").is_ok());
        // No limits: nothing is counted.
        let open = spec(serde_json::json!({}));
        for _ in 0..100 {
            assert!(limits.admit("b", &open, "x").is_ok());
        }
    }
}
