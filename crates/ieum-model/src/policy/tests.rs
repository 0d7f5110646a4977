use super::*;

fn codes<T>(value: &T, validate: impl Fn(&T, &mut Validator)) -> Vec<String> {
    let mut v = Validator::new("spec");
    validate(value, &mut v);
    v.finish()
        .err()
        .unwrap_or_default()
        .into_iter()
        .map(|e| format!("{} {}", e.code, e.field))
        .collect()
}

fn policy(json: &str) -> ResiliencePolicySpec {
    serde_json::from_str(json).unwrap()
}

#[test]
fn config_language_example_parses_and_validates() {
    let p = policy(
        r#"{
        "targetRef": {"kind": "Service", "name": "orders"},
        "timeouts": {"request": "3s", "backendRequest": "1s"},
        "retry": {"codes": [503], "attempts": 1, "backoff": "25ms", "maxBackoff": "250ms"},
        "retryBudget": {"ratio": 0.2, "minPerSecond": 10, "window": "10s"},
        "circuitBreaker": {
            "consecutiveFailures": 5,
            "failureRate": {"threshold": 50, "window": 100, "minimumCalls": 20},
            "slowCalls": {"threshold": 80, "duration": "1s"},
            "blockedFor": {"base": "5s", "max": "2m"},
            "probes": 3
        },
        "outlierDetection": {"consecutive5xx": 5, "baseEjectionTime": "30s", "maxEjectionPercent": 50},
        "loadBalancer": {"type": "PeakEwmaP2C", "zoneAware": true},
        "failFast": {"queue": 1000, "timeout": "3s"},
        "concurrency": {"max": 500}
    }"#,
    );
    assert_eq!(
        codes(&p, ResiliencePolicySpec::validate),
        Vec::<String>::new()
    );
    let cb = p.circuit_breaker.as_ref().unwrap();
    assert_eq!(cb.failure_rate.unwrap().window, Window::Calls(100));
    assert_eq!(cb.blocked_for.max, Duration::from_secs(120));
    assert_eq!(p.timeouts.unwrap().backend_request, Duration::from_secs(1));
    // Round trip keeps the same shape.
    let back: ResiliencePolicySpec =
        serde_json::from_value(serde_json::to_value(&p).unwrap()).unwrap();
    assert_eq!(back, p);
}

#[test]
fn defaults_match_the_documented_values() {
    let r: Retry = serde_json::from_str("{}").unwrap();
    assert_eq!(r.codes, [502, 503, 504]);
    assert_eq!(r.attempts, 1);
    assert_eq!(r.backoff, Duration::from_millis(25));
    assert_eq!(r.max_backoff, Duration::from_millis(250));
    assert_eq!(r.max_body_bytes, 65_536);
    assert!(!r.idempotent);
    let b: RetryBudget = serde_json::from_str("{}").unwrap();
    assert_eq!(
        (b.ratio, b.min_per_second, b.window),
        (0.2, 10, Duration::from_secs(10))
    );
    let t: Timeouts = serde_json::from_str("{}").unwrap();
    assert_eq!(t, Timeouts::default());
    assert_eq!(t.request, Duration::from_secs(15));
    let cb: CircuitBreaker = serde_json::from_str("{}").unwrap();
    assert_eq!(cb, CircuitBreaker::default());
    let lb: LoadBalancer = serde_json::from_str("{}").unwrap();
    assert_eq!(lb, LoadBalancer::default());
    assert_eq!(lb.kind, LoadBalancerKind::PeakEwmaP2C);
    let ff: FailFast = serde_json::from_str("{}").unwrap();
    assert_eq!((ff.queue, ff.timeout), (10_000, Duration::from_secs(3)));
    let od: OutlierDetection = serde_json::from_str("{}").unwrap();
    assert_eq!(od, OutlierDetection::default());
}

#[test]
fn subscription_and_saga_retry_shapes_parse() {
    let r: Retry =
        serde_json::from_str(r#"{"attempts": 5, "backoff": "100ms", "maxBackoff": "10s"}"#)
            .unwrap();
    assert_eq!(codes(&r, Retry::validate), Vec::<String>::new());
    let r: Retry = serde_json::from_str(r#"{"backoff": "1s", "maxBackoff": "1m"}"#).unwrap();
    assert_eq!(codes(&r, Retry::validate), Vec::<String>::new());
}

#[test]
fn time_based_window_parses() {
    let fr: FailureRate = serde_json::from_str(r#"{"threshold": 50, "window": "60s"}"#).unwrap();
    assert_eq!(fr.window, Window::Time(Duration::from_secs(60)));
}

#[test]
fn unknown_fields_are_rejected() {
    let err = serde_json::from_str::<Retry>(r#"{"attemps": 2}"#).unwrap_err();
    assert!(err.to_string().contains("unknown field `attemps`"), "{err}");
    let err = serde_json::from_str::<ResiliencePolicySpec>(
        r#"{"targetRef": {"kind": "Service", "name": "a"}, "retries": {}}"#,
    )
    .unwrap_err();
    assert!(err.to_string().contains("unknown field `retries`"), "{err}");
}

#[test]
fn every_bad_field_is_reported_with_its_path() {
    let p = policy(
        r#"{
        "targetRef": {"kind": "Route", "name": "r"},
        "timeouts": {"request": "1s", "backendRequest": "2s"},
        "retry": {"codes": [200, 503], "attempts": 11, "backoff": "1s", "maxBackoff": "100ms", "maxBodyBytes": 999999999},
        "retryBudget": {"ratio": -1, "window": "0s"},
        "circuitBreaker": {
            "consecutiveFailures": 0,
            "failureRate": {"threshold": 0, "window": 10, "minimumCalls": 20},
            "slowCalls": {"threshold": 101, "duration": "0s"},
            "blockedFor": {"base": "0s"},
            "probes": 0
        },
        "outlierDetection": {"consecutive5xx": 0, "maxEjectionPercent": 0},
        "loadBalancer": {"type": "ConsistentHash", "zoneMinHealthyPercent": 101},
        "failFast": {"queue": 0, "timeout": "5s"},
        "concurrency": {"max": 0}
    }"#,
    );
    assert_eq!(
        codes(&p, ResiliencePolicySpec::validate),
        [
            "E2102 spec.timeouts.backendRequest",
            "E2103 spec.retry.codes[0]",
            "E2104 spec.retry.attempts",
            "E2105 spec.retry.backoff",
            "E2107 spec.retry.maxBodyBytes",
            "E2111 spec.retryBudget.ratio",
            "E2113 spec.retryBudget.window",
            "E2202 spec.circuitBreaker.failureRate.threshold",
            "E2204 spec.circuitBreaker.failureRate.minimumCalls",
            "E2205 spec.circuitBreaker.slowCalls.threshold",
            "E2206 spec.circuitBreaker.slowCalls.duration",
            "E2207 spec.circuitBreaker.blockedFor.base",
            "E2208 spec.circuitBreaker.probes",
            "E2301 spec.outlierDetection.consecutive5xx",
            "E2304 spec.outlierDetection.maxEjectionPercent",
            "E2401 spec.loadBalancer.hashHeader",
            "E2403 spec.loadBalancer.zoneMinHealthyPercent",
            "E2501 spec.failFast.queue",
            "E2511 spec.concurrency.max",
            "E2503 spec.failFast.timeout",
        ]
    );
}

#[test]
fn breaker_that_never_blocks_is_rejected() {
    let cb = CircuitBreaker {
        consecutive_failures: 0,
        ..CircuitBreaker::default()
    };
    assert_eq!(codes(&cb, CircuitBreaker::validate), ["E2210 spec"]);
}

#[test]
fn zero_request_timeout_disables_and_allows_any_backend_timeout() {
    let t = Timeouts {
        request: Duration::ZERO,
        backend_request: Duration::from_secs(5),
    };
    assert!(codes(&t, Timeouts::validate).is_empty());
}

#[test]
fn overlay_takes_whole_stanzas_from_the_less_specific_policy() {
    let route =
        policy(r#"{"targetRef": {"kind": "Route", "name": "r"}, "retry": {"attempts": 3}}"#);
    let service = policy(
        r#"{"targetRef": {"kind": "Service", "name": "s"},
            "retry": {"attempts": 1, "codes": [503]},
            "timeouts": {"request": "2s"}}"#,
    );
    let merged = route.overlay(&service);
    assert_eq!(merged.target_ref.kind, TargetKind::Route);
    let retry = merged.retry.unwrap();
    assert_eq!(retry.attempts, 3);
    // Field defaults of the specific stanza win, not the service's codes.
    assert_eq!(retry.codes, [502, 503, 504]);
    assert_eq!(merged.timeouts.unwrap().request, Duration::from_secs(2));
    assert!(merged.circuit_breaker.is_none());
}

#[test]
fn rate_limit_policy() {
    let p: RateLimitPolicySpec = serde_json::from_str(
        r#"{"targetRef": {"kind": "Service", "name": "orders"}, "limit": {"requests": 100, "per": "1s", "burst": 50}}"#,
    )
    .unwrap();
    assert!(codes(&p, RateLimitPolicySpec::validate).is_empty());
    assert_eq!(p.limit.effective_burst(), 50);
    let bad = RateLimitPolicySpec {
        limit: RateLimit {
            requests: 0,
            per: Duration::ZERO,
            burst: Some(0),
        },
        ..p
    };
    assert_eq!(
        codes(&bad, RateLimitPolicySpec::validate),
        [
            "E2601 spec.limit.requests",
            "E2602 spec.limit.per",
            "E2603 spec.limit.burst"
        ]
    );
}

#[test]
fn fault_injection() {
    let p: FaultInjectionSpec = serde_json::from_str(
        r#"{"targetRef": {"kind": "Route", "name": "stock-main"},
            "delay": {"duration": "300ms", "percent": 10},
            "abort": {"httpStatus": 503, "percent": 5}}"#,
    )
    .unwrap();
    assert!(codes(&p, FaultInjectionSpec::validate).is_empty());
    let bad: FaultInjectionSpec = serde_json::from_str(
        r#"{"targetRef": {"kind": "Route", "name": "x"},
            "delay": {"duration": "0s", "percent": 101},
            "abort": {"httpStatus": 503, "grpcStatus": 14, "percent": 5}}"#,
    )
    .unwrap();
    assert_eq!(
        codes(&bad, FaultInjectionSpec::validate),
        [
            "E2702 spec.delay.percent",
            "E2703 spec.delay.duration",
            "E2704 spec.abort"
        ]
    );
    let empty: FaultInjectionSpec =
        serde_json::from_str(r#"{"targetRef": {"kind": "Route", "name": "x"}}"#).unwrap();
    assert_eq!(codes(&empty, FaultInjectionSpec::validate), ["E2701 spec"]);
}

#[test]
fn bad_target_names_fail_to_parse() {
    let err = serde_json::from_str::<TargetRef>(r#"{"kind": "Service", "name": "Bad_Name"}"#)
        .unwrap_err();
    assert!(err.to_string().contains("lowercase"), "{err}");
}
