//! The OpenAPI 3.1 document of an `Api`, as its consumers see it at the edge
//! (`GET /v1/apis/{name}/openapi.json`, and the operations the UI's catalogue lists).
//!
//! - When the backend service has an OpenAPI 3 document of its own (an inline `openapi`
//!   interface, [`crate::ServiceSpec::openapi_document`]), its paths are taken, kept to
//!   the API's operations (all, or those listed: a listed `{param}` segment covers any
//!   segment of the document's path) and prefixed with the base path. Listed operations
//!   the document does not have are added as below, so every exposed operation is there.
//! - Otherwise the document is built from the listed operations: each path's `{param}`
//!   segments declared as path parameters, a generic `200` answer. An API exposing `all`
//!   operations of a backend without a document has no paths to list.
//! - `servers` only when the API names hosts (`https://HOST`); `components.securitySchemes`
//!   and a global `security` from `auth` (none for an anonymous-only API; an empty
//!   alternative when anonymous calls are let in beside credentials).
//!
//! The backend document's own `servers` and `security` are dropped: they describe how the
//! service is reached inside the mesh, not through the gateway.

use serde_json::{Map, Value, json};

use super::{ApiSpec, Operation, Operations};

/// The name of the API key scheme in `components.securitySchemes`.
pub const API_KEY_SCHEME: &str = "apiKey";
/// The name of the bearer JWT scheme in `components.securitySchemes`.
pub const JWT_SCHEME: &str = "jwt";

/// The methods an OpenAPI path item can hold, as its keys (`CONNECT` has none).
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The OpenAPI 3.1 document of the API `name`; `backend` is the backend service's own
/// OpenAPI document, if it has one (anything but an OpenAPI 3 document with `paths` is
/// ignored).
pub fn document(name: &str, spec: &ApiSpec, backend: Option<&Value>) -> Value {
    let backend = backend.filter(|d| {
        d["openapi"].as_str().is_some_and(|v| v.starts_with("3.")) && d["paths"].is_object()
    });
    let mut paths = Map::new();
    if let Some(doc) = backend {
        let listed = match &spec.operations {
            Operations::List(ops) => Some(ops.as_slice()),
            Operations::Named(_) => None,
        };
        from_backend(doc, &spec.base_path, listed, &mut paths);
    }
    if let Operations::List(ops) = &spec.operations {
        for op in ops {
            declare(op, &spec.base_path, &mut paths);
        }
    }

    let mut info = Map::new();
    info.insert("title".into(), json!(name));
    let description = spec
        .description
        .clone()
        .or_else(|| backend.and_then(|d| d["info"]["description"].as_str().map(str::to_owned)));
    if let Some(d) = description {
        info.insert("description".into(), json!(d));
    }
    let version = backend
        .and_then(|d| d["info"]["version"].as_str())
        .unwrap_or("1");
    info.insert("version".into(), json!(version));

    let mut doc = Map::new();
    doc.insert("openapi".into(), json!("3.1.0"));
    doc.insert("info".into(), Value::Object(info));
    if !spec.hostnames.is_empty() {
        let servers: Vec<Value> = spec.hostnames.iter().map(|h| server(h)).collect();
        doc.insert("servers".into(), Value::Array(servers));
    }
    doc.insert("paths".into(), Value::Object(paths));

    let mut components = backend
        .and_then(|d| d["components"].as_object().cloned())
        .unwrap_or_default();
    components.remove("securitySchemes");
    let mut schemes = Map::new();
    let mut security = Vec::new();
    if let Some(k) = &spec.auth.api_key {
        schemes.insert(
            API_KEY_SCHEME.into(),
            json!({"type": "apiKey", "in": "header", "name": k.header}),
        );
        security.push(json!({ API_KEY_SCHEME: [] }));
    }
    if spec.auth.jwt.is_some() {
        schemes.insert(
            JWT_SCHEME.into(),
            json!({"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}),
        );
        security.push(json!({ JWT_SCHEME: [] }));
    }
    if !schemes.is_empty() {
        components.insert("securitySchemes".into(), Value::Object(schemes));
    }
    if !components.is_empty() {
        doc.insert("components".into(), Value::Object(components));
    }
    if !security.is_empty() {
        // An empty requirement makes credentials optional: anonymous calls are let in.
        if spec.auth.anonymous {
            security.push(json!({}));
        }
        doc.insert("security".into(), Value::Array(security));
    }
    if let Some(tags) = backend.and_then(|d| d["tags"].as_array()) {
        doc.insert("tags".into(), Value::Array(tags.clone()));
    }
    Value::Object(doc)
}

/// Every operation of a document as `(METHOD, path)`, paths in the document's order.
pub fn operations(doc: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for m in METHODS {
            if item.get(m).is_some() {
                out.push((m.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    out
}

/// `base` + `path` as the edge sees it (`/shop` + `/orders/{id}`); base `/` adds nothing.
pub fn full_path(base: &str, path: &str) -> String {
    if base == "/" {
        path.to_owned()
    } else {
        format!("{base}{path}")
    }
}

/// A server for one host name; `*.shop.example` becomes a variable for its first label.
fn server(host: &str) -> Value {
    match host.strip_prefix("*.") {
        Some(rest) => json!({
            "url": format!("https://{{label}}.{rest}"),
            "variables": {"label": {"default": "www", "description": "any one DNS label"}},
        }),
        None => json!({ "url": format!("https://{host}") }),
    }
}

/// Whether the document's path `doc_path` is under the listed operation path `listed`:
/// literal segments equal, and a listed `{param}` covers any one segment.
fn covers(listed: &str, doc_path: &str) -> bool {
    let want: Vec<&str> = listed.trim_matches('/').split('/').collect();
    let got: Vec<&str> = doc_path.trim_matches('/').split('/').collect();
    want.len() == got.len()
        && want
            .iter()
            .zip(&got)
            .all(|(w, g)| w == g || is_param(w) && !g.is_empty())
}

fn is_param(segment: &str) -> bool {
    segment.len() > 2 && segment.starts_with('{') && segment.ends_with('}')
}

/// The path with every parameter written `{}`: two paths of one shape are one path to
/// OpenAPI, whatever their parameters are called.
fn shape(path: &str) -> String {
    path.split('/')
        .map(|s| if is_param(s) { "{}" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

/// The backend document's operations (only those `listed`, when a list is given), under
/// the base path, without the backend's own `servers` and `security`.
fn from_backend(
    doc: &Value,
    base: &str,
    listed: Option<&[Operation]>,
    paths: &mut Map<String, Value>,
) {
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        let Some(item) = item.as_object() else {
            continue;
        };
        let mut kept = Map::new();
        let mut methods = 0;
        for (key, value) in item {
            if METHODS.contains(&key.as_str()) {
                let method = key.to_ascii_uppercase();
                let exposed = listed.is_none_or(|ops| {
                    ops.iter()
                        .any(|o| o.method == method && covers(&o.path, path))
                });
                if exposed {
                    let mut op = value.clone();
                    if let Some(o) = op.as_object_mut() {
                        o.remove("servers");
                        o.remove("security");
                    }
                    kept.insert(key.clone(), op);
                    methods += 1;
                }
            } else if key != "servers" {
                // `summary`, `description`, `parameters`, extensions.
                kept.insert(key.clone(), value.clone());
            }
        }
        if methods > 0 {
            paths.insert(full_path(base, path), Value::Object(kept));
        }
    }
}

/// Adds a listed operation built from its declaration, unless an operation of the same
/// method and shape is there already (taken from the backend's document).
fn declare(op: &Operation, base: &str, paths: &mut Map<String, Value>) {
    let method = op.method.to_ascii_lowercase();
    if !METHODS.contains(&method.as_str()) {
        return;
    }
    let wanted = full_path(base, &op.path);
    // The path of the same shape if the document has one, so its parameter names hold.
    let key = paths
        .keys()
        .find(|k| shape(k) == shape(&wanted))
        .cloned()
        .unwrap_or(wanted);
    let parameters: Vec<Value> = key
        .split('/')
        .filter(|s| is_param(s))
        .map(|s| {
            json!({
                "name": &s[1..s.len() - 1],
                "in": "path",
                "required": true,
                "schema": {"type": "string"},
            })
        })
        .collect();
    let item = paths
        .entry(key)
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(item) = item.as_object_mut() else {
        return;
    };
    if item.contains_key(&method) {
        return;
    }
    let mut operation = Map::new();
    if !parameters.is_empty() {
        operation.insert("parameters".into(), Value::Array(parameters));
    }
    operation.insert(
        "responses".into(),
        json!({"200": {"description": "The backend's answer"}}),
    );
    item.insert(method, Value::Object(operation));
}

#[cfg(test)]
mod tests;
