use super::*;
use crate::resource::{Kind, check, parse_documents};

fn errors(yaml: &str) -> Vec<String> {
    let docs = parse_documents(yaml).unwrap();
    match check(&docs[0]) {
        Ok(_) => Vec::new(),
        Err(errors) => errors
            .into_iter()
            .map(|e| format!("{} {}", e.code, e.field))
            .collect(),
    }
}

const SHOP: &str = r#"
apiVersion: ieum.dev/v1
kind: Api
metadata: {name: shop-public}
spec:
  basePath: /shop
  hostnames: [api.shop.example, "*.shop.example"]
  backend: {service: orders}
  operations: fromOpenApi
  auth:
    apiKey: {header: x-api-key}
    jwt: {issuer: https://id.example, audiences: [shop], jwksUrl: https://id.example/jwks.json}
  rateLimit: {perConsumer: {requests: 60, per: 1m}}
  quota: {perConsumer: {requests: 10000, per: 1d}}
  cors: {allowOrigins: ["https://shop.example"]}
  timeouts: {request: 5s}
"#;

#[test]
fn the_documented_api_and_consumer_check_with_defaults_written_out() {
    let docs = parse_documents(SHOP).unwrap();
    let checked = check(&docs[0]).unwrap();
    assert_eq!(checked.kind, Kind::Api);
    assert_eq!(checked.services, [Name::parse("orders").unwrap()]);
    assert_eq!(checked.spec["maxBodyBytes"], DEFAULT_BODY_LIMIT);
    assert_eq!(checked.spec["operations"], "fromOpenApi");
    assert_eq!(checked.spec["cors"]["maxAge"], "10m");
    assert_eq!(checked.spec["auth"]["jwt"]["clockSkew"], "1m");
    let spec: ApiSpec = serde_json::from_value(checked.spec).unwrap();
    assert_eq!(spec.auth.api_key.unwrap().header, "x-api-key");

    let consumer = r#"
apiVersion: ieum.dev/v1
kind: ApiConsumer
metadata: {name: mobile-app}
spec:
  apis: [shop-public]
  jwtSubjects: ["client:mobile"]
"#;
    let docs = parse_documents(consumer).unwrap();
    let checked = check(&docs[0]).unwrap();
    assert_eq!(checked.kind, Kind::ApiConsumer);
    assert!(checked.services.is_empty());
}

#[test]
fn operations_are_all_by_default_or_a_list() {
    let yaml = r#"
apiVersion: ieum.dev/v1
kind: Api
metadata: {name: open}
spec:
  basePath: /
  backend: {service: orders}
  auth: {anonymous: true}
"#;
    let docs = parse_documents(yaml).unwrap();
    let spec: ApiSpec = serde_json::from_value(check(&docs[0]).unwrap().spec).unwrap();
    assert_eq!(spec.operations, Operations::Named(OperationSet::All));

    let listed = yaml.replace(
        "auth:",
        "operations: [{method: GET, path: \"/orders/{id}\"}]\n  auth:",
    );
    let docs = parse_documents(&listed).unwrap();
    let spec: ApiSpec = serde_json::from_value(check(&docs[0]).unwrap().spec).unwrap();
    let Operations::List(ops) = spec.operations else {
        panic!("a list")
    };
    assert!(ops[0].matches("GET", "/orders/7"));
    assert!(ops[0].matches("GET", "/orders/7/"));
    assert!(!ops[0].matches("POST", "/orders/7"));
    assert!(!ops[0].matches("GET", "/orders"));
    assert!(!ops[0].matches("GET", "/orders//"));
    assert!(!ops[0].matches("GET", "/orders/7/items"));
}

#[test]
fn every_bad_field_is_named_with_its_code() {
    let yaml = r#"
apiVersion: ieum.dev/v1
kind: Api
metadata: {name: bad}
spec:
  basePath: /shop/
  hostnames: [API.example]
  backend: {service: orders, flow: quote}
  operations: [{method: get, path: "orders/{id"}]
  auth: {apiKey: {header: Authorization}}
  rateLimit: {}
  cors: {allowOrigins: ["*"], allowCredentials: true}
  maxBodyBytes: 0
"#;
    assert_eq!(
        errors(yaml),
        [
            "E3301 spec.basePath",
            "E3302 spec.hostnames[0]",
            "E3303 spec.backend",
            "E3304 spec.operations[0].method",
            "E3304 spec.operations[0].path",
            "E3306 spec.auth.apiKey.header",
            "E3309 spec.rateLimit",
            "E3310 spec.cors.allowCredentials",
            "E3308 spec.maxBodyBytes",
        ]
    );
}

#[test]
fn an_api_says_how_consumers_authenticate_and_jwt_needs_keys() {
    let base = r#"
apiVersion: ieum.dev/v1
kind: Api
metadata: {name: a}
spec:
  basePath: /a
  backend: {flow: quote}
"#;
    assert_eq!(
        errors(&format!("{base}  auth: {{}}\n")),
        ["E3305 spec.auth"]
    );
    assert_eq!(
        errors(&format!(
            "{base}  auth: {{jwt: {{issuer: x, audiences: []}}}}\n"
        )),
        ["E3307 spec.auth.jwt.audiences", "E3307 spec.auth.jwt"]
    );
    assert_eq!(
        errors(&format!(
            "{base}  operations: fromOpenApi\n  auth: {{anonymous: true}}\n"
        )),
        ["E3304 spec.operations"]
    );
    assert!(
        errors(&format!(
            "{base}  auth: {{jwt: {{issuer: x, audiences: [a], jwks: {{keys: [{{kty: OKP}}]}}}}}}\n"
        ))
        .is_empty()
    );
}

#[test]
fn a_consumer_names_at_least_one_api() {
    let yaml = r#"
apiVersion: ieum.dev/v1
kind: ApiConsumer
metadata: {name: c}
spec: {apis: [], jwtSubjects: [""]}
"#;
    assert_eq!(
        errors(yaml),
        ["E3311 spec.apis", "E3312 spec.jwtSubjects[0]"]
    );
}

#[test]
fn paths_hosts_and_origins() {
    assert!(valid_base_path("/"));
    assert!(valid_base_path("/shop/v1"));
    assert!(!valid_base_path("shop"));
    assert!(!valid_base_path("/shop//v1"));
    assert!(!valid_base_path("/shop/../admin"));
    assert!(valid_operation_path("/"));
    assert!(valid_operation_path("/orders/{id}/items"));
    assert!(!valid_operation_path("/orders/{}"));
    assert!(!valid_operation_path("/orders/x{id}"));
    assert!(valid_hostname("*.shop.example"));
    assert!(!valid_hostname("shop.*.example"));
    assert!(!valid_hostname("-shop.example"));
    assert!(valid_origin("https://shop.example"));
    assert!(valid_origin("http://127.0.0.1:8080"));
    assert!(!valid_origin("https://shop.example/"));
    assert!(!valid_origin("shop.example"));
}

#[test]
fn an_api_key_holds_a_hash_a_prefix_and_its_consumer() {
    let sha = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    let key = |spec: &str| {
        format!(
            "apiVersion: ieum.dev/v1\nkind: ApiKey\nmetadata: {{name: mobile-app-3f9c2a}}\nspec: {spec}\n"
        )
    };
    let docs = parse_documents(&key(&format!(
        "{{consumer: mobile-app, sha256: {sha}, prefix: Ab-_9z}}"
    )))
    .unwrap();
    let checked = check(&docs[0]).unwrap();
    assert_eq!(checked.kind, Kind::ApiKey);
    assert!(checked.services.is_empty(), "no sidecar's business");
    let spec: ApiKeySpec = serde_json::from_value(checked.spec).unwrap();
    assert_eq!(spec.sha256, sha);
    assert!(spec.valid_at(crate::Timestamp::from_millis(i64::MAX)));

    // Every field wrong at once: each named with its code.
    assert_eq!(
        errors(&key(&format!(
            "{{consumer: Mobile_App, sha256: {}, prefix: 'ab+'}}",
            sha.to_uppercase()
        ))),
        [
            "E3401 spec.consumer",
            "E3402 spec.sha256",
            "E3403 spec.prefix"
        ]
    );
    assert_eq!(
        errors(&key(&format!(
            "{{consumer: m, sha256: {}, prefix: abcdefghi}}",
            &sha[..63]
        ))),
        ["E3402 spec.sha256", "E3403 spec.prefix"]
    );
    assert_eq!(
        errors(&key(&format!("{{consumer: m, sha256: {sha}, prefix: ''}}"))),
        ["E3403 spec.prefix"]
    );
    // No room for the key itself.
    assert_eq!(
        errors(&key(&format!(
            "{{consumer: m, sha256: {sha}, prefix: ab, key: ieumk_x}}"
        ))),
        ["E1002 spec.key"]
    );

    let expiring = parse_documents(&key(&format!(
        "{{consumer: m, sha256: {sha}, prefix: ab, expiresAt: '2030-01-01T00:00:00Z'}}"
    )))
    .unwrap();
    let spec: ApiKeySpec = serde_json::from_value(check(&expiring[0]).unwrap().spec).unwrap();
    let at = spec.expires_at.unwrap();
    assert!(spec.valid_at(crate::Timestamp::from_millis(at.as_millis() - 1)));
    assert!(!spec.valid_at(at));
}

#[test]
fn api_keys_are_not_applied() {
    let docs = parse_documents(
        "apiVersion: ieum.dev/v1\nkind: ApiKey\nmetadata: {name: k}\nspec: {}\n---\napiVersion: ieum.dev/v1\nkind: ApiConsumer\nmetadata: {name: c}\nspec: {apis: [a]}\n",
    )
    .unwrap();
    let refused = crate::resource::applicable(&docs[0]).unwrap_err();
    assert_eq!(
        (refused.code.as_str(), refused.field.as_str()),
        ("E3406", "kind")
    );
    assert!(refused.message.contains("ieum apikey create"), "{refused}");
    assert!(crate::resource::applicable(&docs[1]).is_ok());
}
