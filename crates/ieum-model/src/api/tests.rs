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
