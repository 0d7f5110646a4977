//! CORS at the edge: preflights are answered by the gateway (they carry no credentials and
//! never reach the service), and answers to allowed origins carry the CORS headers.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use ieum_model::api::{ApiSpec, Cors, Operations};

/// Methods a preflight may ask for when neither the rule nor the API's operations say.
const DEFAULT_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE";

/// The request's `Origin` if the API's CORS rule allows it.
pub(crate) fn allowed_origin<B>(cors: &Cors, req: &Request<B>) -> Option<HeaderValue> {
    let origin = req.headers().get(header::ORIGIN)?;
    let text = origin.to_str().ok()?;
    cors.allow_origins
        .iter()
        .any(|o| o == "*" || o.eq_ignore_ascii_case(text))
        .then(|| origin.clone())
}

/// Whether `req` is a CORS preflight.
pub(crate) fn is_preflight<B>(req: &Request<B>) -> bool {
    req.method() == Method::OPTIONS
        && req.headers().contains_key(header::ORIGIN)
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The answer to a preflight from `origin` (already allowed): what may be sent, for how
/// long the browser may remember it.
pub(crate) fn preflight(spec: &ApiSpec, cors: &Cors, origin: HeaderValue) -> Response<()> {
    let mut res = Response::new(());
    *res.status_mut() = StatusCode::NO_CONTENT;
    let h = res.headers_mut();
    allow(h, cors, origin);
    let methods = if !cors.allow_methods.is_empty() {
        cors.allow_methods.join(", ")
    } else if let Operations::List(ops) = &spec.operations {
        let mut m: Vec<&str> = ops.iter().map(|o| o.method.as_str()).collect();
        m.sort_unstable();
        m.dedup();
        m.join(", ")
    } else {
        DEFAULT_METHODS.to_owned()
    };
    let mut headers: Vec<&str> = cors.allow_headers.iter().map(String::as_str).collect();
    if let Some(k) = &spec.auth.api_key {
        headers.push(&k.header);
    }
    if spec.auth.jwt.is_some() {
        headers.push("authorization");
    }
    if !headers
        .iter()
        .any(|h| h.eq_ignore_ascii_case("content-type"))
    {
        headers.push("content-type");
    }
    for (name, value) in [
        (header::ACCESS_CONTROL_ALLOW_METHODS, methods),
        (header::ACCESS_CONTROL_ALLOW_HEADERS, headers.join(", ")),
        (
            header::ACCESS_CONTROL_MAX_AGE,
            cors.max_age.get().as_secs().to_string(),
        ),
    ] {
        if let Ok(v) = HeaderValue::try_from(value) {
            h.insert(name, v);
        }
    }
    res
}

/// The CORS headers of an answer to an allowed `origin`.
pub(crate) fn allow(h: &mut HeaderMap, cors: &Cors, origin: HeaderValue) {
    let any = cors.allow_origins.iter().any(|o| o == "*") && !cors.allow_credentials;
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        if any {
            HeaderValue::from_static("*")
        } else {
            origin
        },
    );
    if !any {
        h.append(header::VARY, HeaderValue::from_static("origin"));
    }
    if cors.allow_credentials {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if !cors.expose_headers.is_empty()
        && let Ok(v) = HeaderValue::try_from(cors.expose_headers.join(", "))
    {
        h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ApiSpec {
        serde_json::from_value(serde_json::json!({
            "basePath": "/a", "backend": {"service": "s"},
            "operations": [{"method": "GET", "path": "/x"}, {"method": "POST", "path": "/x"}],
            "auth": {"apiKey": {"header": "x-api-key"}},
            "cors": {"allowOrigins": ["https://shop.example"], "exposeHeaders": ["x-total"]}
        }))
        .unwrap()
    }

    fn req(method: Method, origin: &str) -> Request<()> {
        Request::builder()
            .method(method)
            .uri("/a/x")
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .body(())
            .unwrap()
    }

    #[test]
    fn a_preflight_from_an_allowed_origin_says_what_may_be_sent() {
        let spec = spec();
        let cors = spec.cors.clone().unwrap();
        let r = req(Method::OPTIONS, "https://shop.example");
        assert!(is_preflight(&r));
        let origin = allowed_origin(&cors, &r).unwrap();
        let res = preflight(&spec, &cors, origin);
        let h = res.headers();
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            h[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://shop.example"
        );
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_METHODS], "GET, POST");
        assert_eq!(
            h[header::ACCESS_CONTROL_ALLOW_HEADERS],
            "x-api-key, content-type"
        );
        assert_eq!(h[header::ACCESS_CONTROL_MAX_AGE], "600");
        assert_eq!(h[header::VARY], "origin");
        assert!(allowed_origin(&cors, &req(Method::OPTIONS, "https://evil.example")).is_none());
        assert!(!is_preflight(&req(Method::GET, "https://shop.example")));
    }

    #[test]
    fn any_origin_is_a_star_unless_credentials_are_allowed() {
        let mut cors: Cors =
            serde_json::from_value(serde_json::json!({"allowOrigins": ["*"]})).unwrap();
        let origin = HeaderValue::from_static("https://a.example");
        let mut h = HeaderMap::new();
        allow(&mut h, &cors, origin.clone());
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert!(!h.contains_key(header::VARY));
        cors.allow_credentials = true;
        let mut h = HeaderMap::new();
        allow(&mut h, &cors, origin);
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://a.example");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
    }
}
