#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;

use axum::http::Method;

use super::{Permission, ROUTES, Required, Role, required};

/// Every `.route("PATH", METHODS…)` in the Rust sources under `dir`, as (method, path);
/// test files are skipped.
fn routes_in(dir: &Path, out: &mut BTreeSet<(String, String)>, files: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            routes_in(&path, out, files);
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy();
        if !name.ends_with(".rs") || name == "tests.rs" || name == "test.rs" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let mut found = false;
        for (i, _) in text.match_indices(".route(") {
            let rest = text[i + ".route(".len()..].trim_start();
            let Some(rest) = rest.strip_prefix('"') else {
                continue;
            };
            let route = &rest[..rest.find('"').unwrap()];
            // The methods are in the route's own arguments: up to the next route or the end of
            // the router.
            let end = [".route(", ".with_state(", ".fallback("]
                .iter()
                .filter_map(|m| rest.find(m))
                .min()
                .unwrap_or(rest.len());
            let args = &rest[..end];
            let mut methods = 0;
            for m in ["get", "post", "put", "delete", "patch"] {
                for (j, _) in args.match_indices(&format!("{m}(")) {
                    let before = args[..j].chars().next_back();
                    if before.is_none_or(|c| !(c.is_alphanumeric() || c == '_')) {
                        out.insert((m.to_uppercase(), route.to_owned()));
                        methods += 1;
                    }
                }
            }
            assert!(
                methods > 0,
                "no method found for {route} in {}",
                path.display()
            );
            found = true;
        }
        if found {
            files.push(path.display().to_string());
        }
    }
}

#[test]
fn every_registered_route_has_a_permission() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut registered = BTreeSet::new();
    let mut files = Vec::new();
    routes_in(&here.join("src"), &mut registered, &mut files);
    routes_in(&here.join("../ieum-ui/src"), &mut registered, &mut files);
    // The scan sees the routers it must: the API, sagas, PubSubs, tokens, API keys and the
    // UI.
    for f in [
        "lib.rs",
        "saga.rs",
        "pubsub.rs",
        "tokens.rs",
        "apikeys.rs",
        "sagas.rs",
    ] {
        assert!(
            files.iter().any(|p| p.ends_with(f)),
            "{f} not scanned: {files:?}"
        );
    }
    assert!(
        registered.len() >= 55,
        "too few routes found: {registered:?}"
    );
    // The push stream is mounted with `route_service` under a computed path.
    registered.insert((
        "POST".into(),
        format!(
            "/{}/{{*rest}}",
            <crate::push::PushServer as tonic::server::NamedService>::NAME
        ),
    ));
    // And every operation of the OpenAPI document.
    let doc = serde_json::to_value(crate::openapi()).unwrap();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            registered.insert((method.to_uppercase(), path.clone()));
        }
    }
    let mut missing = Vec::new();
    for (method, path) in &registered {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        if !matches!(required(&method, path), Required::Route(_)) {
            missing.push(format!("{method} {path}"));
        }
    }
    assert!(
        missing.is_empty(),
        "routes without an entry in auth::ROUTES (they are refused): {missing:#?}"
    );
    // And the table names nothing that is not a route.
    let extra: Vec<_> = ROUTES
        .iter()
        .filter(|(m, p, _)| !registered.contains(&((*m).to_owned(), (*p).to_owned())))
        .collect();
    assert!(extra.is_empty(), "entries for no route: {extra:?}");
}

#[test]
fn the_table_has_one_entry_per_route() {
    let mut seen = BTreeSet::new();
    for (m, p, _) in ROUTES {
        assert!(seen.insert((m, p)), "{m} {p} is listed twice");
    }
}

#[test]
fn lookups_treat_head_as_get_and_tell_unknown_routes_from_wrong_methods() {
    assert_eq!(
        required(&Method::HEAD, "/v1/services"),
        Required::Route(Permission::ReadConfig)
    );
    assert_eq!(
        required(&Method::POST, "/v1/apply"),
        Required::Route(Permission::Operate)
    );
    assert_eq!(required(&Method::GET, "/v1/apply"), Required::WrongMethod);
    assert_eq!(required(&Method::GET, "/v1/new-thing"), Required::Unlisted);
}

#[test]
fn roles_hold_what_the_readme_says() {
    use Permission::*;
    let all = [
        Public,
        Read,
        ReadConfig,
        Push,
        Instance,
        Telemetry,
        Operate,
        StartSaga,
        PubSub,
        Certificate,
        Admin,
    ];
    let held = |r: Role| -> Vec<Permission> { all.into_iter().filter(|p| r.allows(*p)).collect() };
    assert_eq!(held(Role::Admin), all.to_vec());
    assert_eq!(
        held(Role::Operator),
        vec![
            Public,
            Read,
            ReadConfig,
            Push,
            Instance,
            Operate,
            Certificate
        ]
    );
    assert_eq!(held(Role::Reader), vec![Public, Read, ReadConfig, Push]);
    assert_eq!(
        held(Role::Sidecar),
        vec![
            Public,
            ReadConfig,
            Push,
            Instance,
            Telemetry,
            StartSaga,
            PubSub,
            Certificate
        ]
    );
    assert_eq!(
        held(Role::Gateway),
        vec![Public, ReadConfig, Push, Telemetry, Certificate]
    );
    for r in Role::ALL {
        assert_eq!(Role::parse(r.as_str()), Some(r));
    }
    assert_eq!(Role::parse("root"), None);
}

#[test]
fn writes_are_never_open_reads() {
    for (m, p, permission) in ROUTES {
        if permission.is_read() {
            assert_eq!(*m, "GET", "{m} {p} would be open without a token");
        }
    }
}

#[test]
fn comparison_is_exact() {
    assert!(super::same(b"abc", b"abc"));
    assert!(!super::same(b"abc", b"abd"));
    assert!(!super::same(b"abc", b"abcd"));
}

#[test]
fn base64_decodes_rfc_4648_vectors() {
    for (raw, encoded) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foobar", "Zm9vYmFy"),
        ("x:s3cret", "eDpzM2NyZXQ="),
    ] {
        assert_eq!(super::base64_decode(encoded).unwrap(), raw.as_bytes());
    }
    assert!(super::base64_decode("not base64!").is_none());
}
