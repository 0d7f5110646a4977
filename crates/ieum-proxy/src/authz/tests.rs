use http::HeaderMap;
use ieum_model::Validator;
use serde_json::json;

use super::*;

/// A policy on `stock` as users write it; it must pass the server's validation, so the
/// tests only use what can be applied.
fn policy(name: &str, spec: serde_json::Value) -> Policy {
    let mut spec = spec;
    spec["targetRef"] = json!({"kind": "Service", "name": "stock"});
    let spec: AuthorizationPolicySpec = serde_json::from_value(spec).unwrap();
    let mut v = Validator::new("spec");
    spec.validate(&mut v);
    v.finish().unwrap();
    Policy::compile(name, &spec)
}

/// A short form of what decided, for tables.
fn by(d: &Decision<'_>) -> String {
    match d.by {
        DecidedBy::Rule {
            policy,
            index,
            action,
        } => format!("{policy}.rules[{index}] {}", action.as_str()),
        DecidedBy::Default {
            policy: Some(p),
            default,
        } => format!("{p}.default {}", default.as_str()),
        DecidedBy::Default {
            policy: None,
            default,
        } => format!("implicit {}", default.as_str()),
        DecidedBy::Unreadable { policy, .. } => format!("{policy} unreadable"),
    }
}

struct Case {
    what: &'static str,
    policies: Vec<Policy>,
    caller: Caller<'static>,
    request: (
        &'static str,
        &'static str,
        &'static [(&'static str, &'static str)],
    ),
    dev: bool,
    allow: bool,
    by: &'static str,
}

const ORDERS: Caller<'static> = Caller::Mesh("orders");
const ANON: Caller<'static> = Caller::Unauthenticated;
const GET_STOCK: (&str, &str, &[(&str, &str)]) = ("GET", "/stock/7", &[]);

fn run(cases: Vec<Case>) {
    for c in cases {
        let (method, path, headers) = c.request;
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let req = RequestFacts::new(&method, path, &h);
        let d = decide(&c.policies, &c.caller, &req, c.dev);
        assert_eq!(
            (d.allow, by(&d).as_str()),
            (c.allow, c.by),
            "{}: {}",
            c.what,
            d.reason(&c.caller)
        );
    }
}

#[test]
fn defaults_without_policies_or_without_a_default() {
    let rules_only = || {
        vec![policy(
            "p",
            json!({"rules": [{"action": "allow", "from": ["billing"]}]}),
        )]
    };
    run(vec![
        Case {
            what: "no policy: allow-mesh admits a mesh caller",
            policies: vec![],
            caller: ORDERS,
            request: GET_STOCK,
            dev: false,
            allow: true,
            by: "implicit allow-mesh",
        },
        Case {
            what: "no policy: allow-mesh refuses a caller without identity",
            policies: vec![],
            caller: ANON,
            request: GET_STOCK,
            dev: false,
            allow: false,
            by: "implicit allow-mesh",
        },
        Case {
            what: "no policy under --dev: allow-all",
            policies: vec![],
            caller: ANON,
            request: GET_STOCK,
            dev: true,
            allow: true,
            by: "implicit allow-all",
        },
        Case {
            what: "a policy without default: still allow-mesh for a mesh caller",
            policies: rules_only(),
            caller: ORDERS,
            request: GET_STOCK,
            dev: false,
            allow: true,
            by: "implicit allow-mesh",
        },
        Case {
            what: "a policy without default: still allow-mesh for a caller without identity",
            policies: rules_only(),
            caller: ANON,
            request: GET_STOCK,
            dev: false,
            allow: false,
            by: "implicit allow-mesh",
        },
        Case {
            what: "a policy without default under --dev: allow-all",
            policies: rules_only(),
            caller: ANON,
            request: GET_STOCK,
            dev: true,
            allow: true,
            by: "implicit allow-all",
        },
    ]);
}

#[test]
fn explicit_defaults() {
    let with = |d: &str| vec![policy("p", json!({"default": d}))];
    run(vec![
        Case {
            what: "allow-all admits a caller without identity",
            policies: with("allow-all"),
            caller: ANON,
            request: GET_STOCK,
            dev: false,
            allow: true,
            by: "p.default allow-all",
        },
        Case {
            what: "allow-mesh admits a mesh caller",
            policies: with("allow-mesh"),
            caller: ORDERS,
            request: GET_STOCK,
            dev: false,
            allow: true,
            by: "p.default allow-mesh",
        },
        Case {
            what: "an explicit allow-mesh refuses a caller without identity, even under --dev",
            policies: with("allow-mesh"),
            caller: ANON,
            request: GET_STOCK,
            dev: true,
            allow: false,
            by: "p.default allow-mesh",
        },
        Case {
            what: "deny refuses a mesh caller",
            policies: with("deny"),
            caller: ORDERS,
            request: GET_STOCK,
            dev: false,
            allow: false,
            by: "p.default deny",
        },
        Case {
            what: "deny refuses under --dev too",
            policies: with("deny"),
            caller: ANON,
            request: GET_STOCK,
            dev: true,
            allow: false,
            by: "p.default deny",
        },
    ]);
}

#[test]
fn rules_allow_and_deny_beats_allow() {
    let p = || {
        vec![policy(
            "p",
            json!({"default": "deny", "rules": [
                {"action": "allow", "from": ["orders", "reports"], "to": [{"paths": ["/stock/*"]}]},
                {"action": "deny", "from": ["reports"], "to": [{"methods": ["GET"]}]},
            ]}),
        )]
    };
    run(vec![
        Case {
            what: "a matching allow allows",
            policies: p(),
            caller: ORDERS,
            request: GET_STOCK,
            dev: false,
            allow: true,
            by: "p.rules[0] allow",
        },
        Case {
            what: "a matching deny beats an earlier matching allow",
            policies: p(),
            caller: Caller::Mesh("reports"),
            request: GET_STOCK,
            dev: false,
            allow: false,
            by: "p.rules[1] deny",
        },
        Case {
            what: "the deny rule does not match another method: the allow does",
            policies: p(),
            caller: Caller::Mesh("reports"),
            request: ("POST", "/stock/7", &[]),
            dev: false,
            allow: true,
            by: "p.rules[0] allow",
        },
        Case {
            what: "nothing matches: the default",
            policies: p(),
            caller: ORDERS,
            request: ("GET", "/admin", &[]),
            dev: false,
            allow: false,
            by: "p.default deny",
        },
        Case {
            what: "a from list never matches a caller without identity",
            policies: vec![policy(
                "p",
                json!({"default": "deny", "rules": [{"action": "allow", "from": ["*"]}]}),
            )],
            caller: ANON,
            request: GET_STOCK,
            dev: true,
            allow: false,
            by: "p.default deny",
        },
    ]);
}

#[test]
fn caller_patterns() {
    let p = || {
        vec![policy(
            "p",
            json!({"default": "deny", "rules": [
                {"action": "allow", "from": ["checkout-*"]},
                {"action": "allow", "from": ["gateway:edge", "system:coordinator"]},
                {"action": "allow", "from": ["*"], "to": [{"paths": ["/public/*"]}]},
            ]}),
        )]
    };
    let case = |caller, path, allow, by| Case {
        what: "caller pattern",
        policies: p(),
        caller,
        request: ("GET", path, &[]),
        dev: false,
        allow,
        by,
    };
    run(vec![
        case(Caller::Mesh("checkout-web"), "/x", true, "p.rules[0] allow"),
        case(Caller::Mesh("checkout"), "/x", false, "p.default deny"),
        case(
            Caller::Mesh("gateway:checkout-web"),
            "/x",
            false,
            "p.default deny",
        ),
        case(Caller::Mesh("gateway:edge"), "/x", true, "p.rules[1] allow"),
        case(
            Caller::Mesh("system:coordinator"),
            "/x",
            true,
            "p.rules[1] allow",
        ),
        case(Caller::Mesh("gateway:other"), "/x", false, "p.default deny"),
        case(
            Caller::Mesh("gateway:other"),
            "/public/a",
            true,
            "p.rules[2] allow",
        ),
        case(
            Caller::Mesh("billing"),
            "/public/a",
            true,
            "p.rules[2] allow",
        ),
        case(ANON, "/public/a", false, "p.default deny"),
    ]);
}

#[test]
fn rules_without_from_and_callers_without_identity() {
    let public = |default: &str| {
        vec![policy(
            "p",
            json!({"default": default, "rules": [
                {"action": "allow", "to": [{"methods": ["GET"], "paths": ["/public/*"]}]},
                {"action": "deny", "to": [{"paths": ["/admin/*"]}]},
            ]}),
        )]
    };
    run(vec![
        Case {
            what: "an allow without from matches any mesh caller",
            policies: public("deny"),
            caller: ORDERS,
            request: ("GET", "/public/a", &[]),
            dev: false,
            allow: true,
            by: "p.rules[0] allow",
        },
        Case {
            what: "an allow without from does not admit a caller without identity when the \
                   service does not (default deny, mTLS expected)",
            policies: public("deny"),
            caller: ANON,
            request: ("GET", "/public/a", &[]),
            dev: false,
            allow: false,
            by: "p.default deny",
        },
        Case {
            what: "nor under default allow-mesh",
            policies: public("allow-mesh"),
            caller: ANON,
            request: ("GET", "/public/a", &[]),
            dev: false,
            allow: false,
            by: "p.default allow-mesh",
        },
        Case {
            what: "in dev mode (no mTLS) it does",
            policies: public("deny"),
            caller: ANON,
            request: ("GET", "/public/a", &[]),
            dev: true,
            allow: true,
            by: "p.rules[0] allow",
        },
        Case {
            what: "and under default allow-all it does",
            policies: public("allow-all"),
            caller: ANON,
            request: ("GET", "/public/a", &[]),
            dev: false,
            allow: true,
            by: "p.rules[0] allow",
        },
        Case {
            what: "a deny without from matches a caller without identity under allow-all",
            policies: public("allow-all"),
            caller: ANON,
            request: ("GET", "/admin/users", &[]),
            dev: false,
            allow: false,
            by: "p.rules[1] deny",
        },
        Case {
            what: "and under allow-mesh (the rule, not the default, is named)",
            policies: public("allow-mesh"),
            caller: ANON,
            request: ("GET", "/admin/users", &[]),
            dev: false,
            allow: false,
            by: "p.rules[1] deny",
        },
        Case {
            what: "a deny without from matches mesh callers",
            policies: public("allow-all"),
            caller: ORDERS,
            request: ("GET", "/admin/users", &[]),
            dev: false,
            allow: false,
            by: "p.rules[1] deny",
        },
    ]);
}

#[test]
fn operations_match_methods_paths_and_headers() {
    let p = || {
        vec![policy(
            "p",
            json!({"default": "deny", "rules": [
                {"action": "allow", "from": ["orders"], "to": [
                    {"methods": ["GET", "HEAD"], "paths": ["/stock/*", "/health"]},
                    {"methods": ["POST"], "headers": {"x-role": "admin-*", "x-trace": "*"}},
                ]},
            ]}),
        )]
    };
    let case = |request, allow| Case {
        what: "operation",
        policies: p(),
        caller: ORDERS,
        request,
        dev: false,
        allow,
        by: if allow {
            "p.rules[0] allow"
        } else {
            "p.default deny"
        },
    };
    run(vec![
        case(("GET", "/stock/7", &[]), true),
        case(("HEAD", "/health", &[]), true),
        case(("GET", "/health/", &[]), false),
        case(("GET", "/stock", &[]), false),
        case(("DELETE", "/stock/7", &[]), false),
        case(
            ("POST", "/any", &[("x-role", "admin-eu"), ("x-trace", "")]),
            true,
        ),
        case(
            (
                "POST",
                "/any",
                &[("x-role", "user"), ("x-role", "admin-1"), ("x-trace", "1")],
            ),
            true,
        ),
        case(("POST", "/any", &[("x-role", "admin-eu")]), false),
        case(
            ("POST", "/any", &[("x-role", "user"), ("x-trace", "1")]),
            false,
        ),
        case(("POST", "/stock/7", &[]), false),
    ]);
}

#[test]
fn several_policies_combine() {
    run(vec![
        Case {
            what: "the strictest default applies",
            policies: vec![
                policy("a", json!({"default": "allow-all"})),
                policy("b", json!({"default": "deny"})),
                policy("c", json!({"default": "allow-mesh"})),
            ],
            caller: ORDERS,
            request: GET_STOCK,
            dev: false,
            allow: false,
            by: "b.default deny",
        },
        Case {
            what: "allow-mesh over allow-all refuses a caller without identity",
            policies: vec![
                policy("a", json!({"default": "allow-all"})),
                policy("b", json!({"default": "allow-mesh"})),
            ],
            caller: ANON,
            request: GET_STOCK,
            dev: false,
            allow: false,
            by: "b.default allow-mesh",
        },
        Case {
            what: "the first policy in name order names an equal default",
            policies: vec![
                policy("a", json!({"default": "deny"})),
                policy("b", json!({"default": "deny"})),
            ],
            caller: ORDERS,
            request: GET_STOCK,
            dev: false,
            allow: false,
            by: "a.default deny",
        },
        Case {
            what: "a policy's default applies over one that sets none",
            policies: vec![
                policy("a", json!({"default": "deny"})),
                policy(
                    "b",
                    json!({"rules": [{"action": "allow", "from": ["billing"]}]}),
                ),
            ],
            caller: ORDERS,
            request: GET_STOCK,
            dev: false,
            allow: false,
            by: "a.default deny",
        },
        Case {
            what: "any policy's allow allows",
            policies: vec![
                policy("a", json!({"default": "deny"})),
                policy(
                    "b",
                    json!({"rules": [{"action": "allow", "from": ["orders"]}]}),
                ),
            ],
            caller: ORDERS,
            request: GET_STOCK,
            dev: false,
            allow: true,
            by: "b.rules[0] allow",
        },
        Case {
            what: "any policy's deny beats another's allow",
            policies: vec![
                policy(
                    "a",
                    json!({"rules": [{"action": "allow", "from": ["orders"]}]}),
                ),
                policy(
                    "b",
                    json!({"rules": [{"action": "deny", "from": ["orders"]}]}),
                ),
            ],
            caller: ORDERS,
            request: GET_STOCK,
            dev: false,
            allow: false,
            by: "b.rules[0] deny",
        },
        Case {
            what: "a policy this sidecar cannot read denies everything",
            policies: vec![
                policy("a", json!({"default": "allow-all"})),
                Policy::unreadable("b", "unknown field `when`".into()),
            ],
            caller: ORDERS,
            request: GET_STOCK,
            dev: true,
            allow: false,
            by: "b unreadable",
        },
    ]);
}

#[test]
fn encoded_and_dotted_paths_cannot_slip_past_rules() {
    let p = || {
        vec![
            policy(
                "p",
                json!({"default": "allow-all", "rules": [
                    {"action": "deny", "to": [{"paths": ["/admin/*"]}]},
                ]}),
            ),
            policy(
                "q",
                json!({"rules": [
                    {"action": "allow", "from": ["orders"], "to": [{"paths": ["/public/*"]}]},
                ]}),
            ),
        ]
    };
    let only_public = || {
        vec![policy(
            "p",
            json!({"default": "deny", "rules": [
                {"action": "allow", "from": ["orders"], "to": [{"paths": ["/public/*"]}]},
            ]}),
        )]
    };
    let case = |policies, path, allow, by| Case {
        what: "path reading",
        policies,
        caller: ORDERS,
        request: ("GET", path, &[]),
        dev: false,
        allow,
        by,
    };
    run(vec![
        case(p(), "/admin/x", false, "p.rules[0] deny"),
        case(p(), "/%61dmin/x", false, "p.rules[0] deny"),
        case(p(), "/x/../admin/y", false, "p.rules[0] deny"),
        case(p(), "/x/..%2Fadmin/y", false, "p.rules[0] deny"),
        case(p(), "/x/..%5cadmin/y", false, "p.rules[0] deny"),
        case(p(), "//admin/y", false, "p.rules[0] deny"),
        case(p(), "/./admin/", false, "p.rules[0] deny"),
        case(p(), "/administrator", true, "p.default allow-all"),
        case(only_public(), "/public/a", true, "p.rules[0] allow"),
        case(only_public(), "/public//a", true, "p.rules[0] allow"),
        case(only_public(), "/public/../admin", false, "p.default deny"),
        case(only_public(), "/public/..%2fadmin", false, "p.default deny"),
        case(only_public(), "/public", false, "p.default deny"),
    ]);
}

#[test]
fn path_readings_resolve_dots_slashes_and_encodings() {
    assert_eq!(path_readings("/a/b"), ["/a/b"]);
    assert_eq!(path_readings("/a/./b/../c/"), ["/a/./b/../c/", "/a/c/"]);
    assert_eq!(path_readings("/a//b"), ["/a//b", "/a/b"]);
    assert_eq!(
        path_readings("/%7Ea%2Fb"),
        ["/%7Ea%2Fb", "/~a%2Fb", "/~a/b"]
    );
    assert_eq!(path_readings("/a\\..\\b"), ["/a\\..\\b", "/b"]);
    assert_eq!(path_readings("/.."), ["/..", "/"]);
    assert_eq!(path_readings("/%zz%4"), ["/%zz%4"], "broken escapes stay");
    assert_eq!(path_readings("/caf%C3%A9"), ["/caf%C3%A9"]);
}

#[test]
fn reasons_and_answers_name_the_rule_and_the_fix() {
    let policies = vec![policy(
        "stock-callers",
        json!({"default": "deny", "rules": [
            {"action": "allow", "from": ["orders"]},
            {"action": "deny", "from": ["reports"]},
        ]}),
    )];
    let method = Method::GET;
    let headers = HeaderMap::new();
    let req = RequestFacts::new(&method, "/stock/7", &headers);

    let reports = Caller::Mesh("reports");
    let d = decide(&policies, &reports, &req, false);
    assert_eq!(
        d.reason(&reports),
        "rules[1] (action: deny) of AuthorizationPolicy/stock-callers matches"
    );
    let res = forbidden(&d, &reports, &req, "stock", false);
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(res.headers()[REASON_HEADER], "authz-denied");
    assert_eq!(res.headers()[SOURCE_HEADER], "local");

    let billing = Caller::Mesh("billing");
    let d = decide(&policies, &billing, &req, false);
    assert_eq!((d.policy(), d.rule()), (Some("stock-callers"), None));
    assert_eq!(
        d.fix(&billing, &req, "stock"),
        "add the rule `{action: allow, from: [\"billing\"], to: [{methods: [GET], paths: \
         [\"/stock/7\"]}]}` to AuthorizationPolicy/stock-callers and `ieum apply` it"
    );

    let d = decide(&[], &ANON, &req, false);
    assert_eq!(
        d.reason(&ANON),
        "no AuthorizationPolicy sets a default, so the service is allow-mesh, which admits \
         only callers with a mesh identity"
    );
    assert!(
        d.fix(&ANON, &req, "stock")
            .starts_with("call through a sidecar")
    );
    let d = decide(&policies, &ANON, &req, true);
    assert!(
        d.fix(&ANON, &req, "stock")
            .starts_with("add the rule `{action: allow, to: [{methods: [GET]"),
        "in dev mode a rule without `from` admits the caller"
    );

    let grpc_res = forbidden(&d, &ANON, &req, "stock", true);
    assert_eq!(grpc_res.status(), StatusCode::OK);
    assert_eq!(grpc_res.headers()[grpc::STATUS], "7");
    assert_eq!(grpc_res.headers()[REASON_HEADER], "authz-denied");
}

#[test]
fn the_caller_comes_from_the_peer_identity_extension() {
    let mut req = Request::new(());
    assert_eq!(Caller::of(&req), Caller::Unauthenticated);
    assert_eq!(Caller::of(&req).label(), "-");
    req.extensions_mut()
        .insert(PeerIdentity("gateway:edge".into()));
    assert_eq!(Caller::of(&req), Caller::Mesh("gateway:edge"));
    assert_eq!(Caller::of(&req).label(), "gateway:edge");
}

#[test]
fn denials_are_sampled_with_counts_up_to_a_bound() {
    let policies = vec![policy("p", json!({"default": "deny"}))];
    let log = DenialLog::default();
    let method = Method::GET;
    let headers = HeaderMap::new();
    for _ in 0..3 {
        let req = RequestFacts::new(&method, "/same", &headers);
        let d = decide(&policies, &ORDERS, &req, false);
        log.record(&ORDERS, &req, &d);
    }
    let paths: Vec<String> = (0..MAX_DENIAL_SAMPLES + 5)
        .map(|i| format!("/p/{i}"))
        .collect();
    for p in &paths {
        let req = RequestFacts::new(&method, p, &headers);
        let d = decide(&policies, &ANON, &req, false);
        log.record(&ANON, &req, &d);
    }
    let (lines, left_out) = log.take();
    assert_eq!(lines.len(), MAX_DENIAL_SAMPLES);
    assert_eq!(left_out, 6, "5 paths plus the one the `/same` line took");
    assert_eq!(
        lines[0],
        Denial {
            caller: Some("orders".into()),
            method: "GET".into(),
            path: "/same".into(),
            policy: Some("p".into()),
            rule: None,
            count: 3,
        }
    );
    assert_eq!(lines[1].caller, None);
    // Whatever is sent must pass the server's validation.
    let report = ieum_model::telemetry::TelemetryReport {
        window: ieum_model::Duration::from_secs(10),
        signals: vec![],
        breakers: vec![],
        topics: vec![],
        events: vec![],
        denials: lines,
    };
    let mut v = Validator::new("");
    report.validate(&mut v);
    v.finish().unwrap();
    assert_eq!(log.take(), (vec![], 0), "taken lines are gone");
}
