//! Authorization in the inbound sidecar, over real sockets on 127.0.0.1: policies from
//! the push stream decide before the app is called, and a change applies live.
//!
//! Callers here have no mesh identity (mTLS is not in yet), so identity-based rules are
//! covered by the unit tests of `authz`; these tests cover what does not depend on it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use ieum_model::EventKind;
use ieum_model::resource::Kind;
use ieum_proxy::Sidecar;
use tokio::time::Instant;

/// A control plane, the `stock` app behind its sidecar, and a `web` sidecar calling it.
struct Mesh {
    server: Server,
    web: Sidecar,
    stock: Sidecar,
    /// Calls that reached the `stock` app.
    hits: Arc<AtomicUsize>,
}

impl Mesh {
    async fn start(enforce_mesh_identity: bool) -> Mesh {
        let server = Server::start().await;
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let app_addr = app(move |req| {
            h.fetch_add(1, Ordering::SeqCst);
            let path = req.uri().path().to_owned();
            async move { reply(200, format!("stock {path}")) }
        })
        .await;
        let stock = sidecar_with(client(&server, "stock", &[]), "stock", app_addr, |c| {
            c.enforce_mesh_identity = enforce_mesh_identity
        })
        .await;
        server
            .register("stock", "stock-1", stock.inbound_addr(), None)
            .await;
        let web_client = client(&server, "web", &["stock"]);
        until(&web_client, "stock's endpoint", |s| {
            s.up("stock").len() == 1
        })
        .await;
        let web = sidecar(web_client, "web", "127.0.0.1:9".parse().unwrap(), None).await;
        Mesh {
            server,
            web,
            stock,
            hits,
        }
    }

    /// Calls `stock` through the `web` sidecar: status, `ieum-reason`, body.
    async fn call(&self, method: &str, path: &str) -> (u16, String, String) {
        let res = proxied(&self.web)
            .request(method.parse().unwrap(), format!("http://stock{path}"))
            .send()
            .await
            .unwrap();
        let reason = res
            .headers()
            .get("ieum-reason")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (res.status().as_u16(), reason, res.text().await.unwrap())
    }
}

/// Waits until `sidecar`'s configuration in effect holds `key` (`Kind/name@revision`),
/// or, with `gone`, no longer holds `Kind/name` at all.
async fn in_effect(sidecar: &Sidecar, key: &str, gone: bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, text) = admin(sidecar, "/config").await;
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let names: Vec<&str> = v["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        let found = if gone {
            !names.iter().any(|n| n.starts_with(&format!("{key}@")))
        } else {
            names.contains(&key)
        };
        if found {
            return;
        }
        assert!(Instant::now() < deadline, "{key} never took effect: {v:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const POLICY: &str = "\
apiVersion: ieum.dev/v1
kind: AuthorizationPolicy
metadata: {name: stock-policy}
spec:
  targetRef: {kind: Service, name: stock}
  default: deny
  rules:
  - action: allow
    to: [{methods: [GET], paths: [\"/public/*\"]}]
";

const POLICY_CHANGED: &str = "\
apiVersion: ieum.dev/v1
kind: AuthorizationPolicy
metadata: {name: stock-policy}
spec:
  targetRef: {kind: Service, name: stock}
  default: deny
  rules:
  - action: allow
    to: [{methods: [GET], paths: [\"/public/*\", \"/admin\"]}]
  - action: deny
    to: [{paths: [\"/public/secret/*\"]}]
";

#[tokio::test]
async fn a_policy_allows_and_denies_and_follows_changes_live() {
    let mesh = Mesh::start(false).await;
    // Without a policy (and without enforced identities) nothing is checked.
    assert_eq!(mesh.call("GET", "/admin").await.0, 200);

    mesh.server.apply(POLICY).await;
    in_effect(&mesh.stock, "AuthorizationPolicy/stock-policy@1", false).await;
    let before = mesh.hits.load(Ordering::SeqCst);
    let (status, reason, body) = mesh.call("GET", "/public/a").await;
    assert_eq!((status, reason.as_str()), (200, ""), "{body}");
    assert_eq!(body, "stock /public/a");

    for (method, path) in [("GET", "/admin"), ("POST", "/public/a"), ("GET", "/public")] {
        let (status, reason, body) = mesh.call(method, path).await;
        assert_eq!(
            (status, reason.as_str()),
            (403, "authz-denied"),
            "{method} {path}: {body}"
        );
        assert!(
            body.starts_with(&format!(
                "authz-denied: a caller without a mesh identity may not {method} {path} on \
                 `stock`: no rule matches and AuthorizationPolicy/stock-policy sets `default: deny`"
            )),
            "{body}"
        );
        assert!(
            body.contains(&format!(
                "To allow it, add the rule `{{action: allow, to: [{{methods: [{method}], paths: \
                 [\"{path}\"]}}]}}` to AuthorizationPolicy/stock-policy"
            )),
            "{body}"
        );
    }
    assert_eq!(
        mesh.hits.load(Ordering::SeqCst),
        before + 1,
        "denied calls never reach the app"
    );
    // The inbound listener itself refuses, whoever connects to it (not only sidecars).
    let res = direct()
        .get(format!("http://{}/admin", mesh.stock.inbound_addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(res.headers()["ieum-reason"], "authz-denied");
    assert_eq!(res.headers()["ieum-error-source"], "local");

    let (_, metrics) = admin(&mesh.stock, "/metrics").await;
    assert!(
        metrics.contains("ieum_authz_denied_total{caller=\"-\",policy=\"stock-policy\"} 4"),
        "{metrics}"
    );

    // A change applies without restarting anything.
    mesh.server.apply(POLICY_CHANGED).await;
    in_effect(&mesh.stock, "AuthorizationPolicy/stock-policy@2", false).await;
    assert_eq!(mesh.call("GET", "/admin").await.0, 200);
    assert_eq!(mesh.call("GET", "/public/a").await.0, 200);
    let (status, reason, body) = mesh.call("GET", "/public/secret/x").await;
    assert_eq!((status, reason.as_str()), (403, "authz-denied"));
    assert!(
        body.contains("rules[1] (action: deny) of AuthorizationPolicy/stock-policy matches"),
        "{body}"
    );
    assert!(body.contains("narrow or remove rules[1]"), "{body}");
    assert_eq!(mesh.call("POST", "/admin").await.0, 403);

    // Denials are sampled for the telemetry report, and the registry puts them on the
    // service's timeline.
    let (denials, left_out) = mesh.stock.take_denials();
    assert_eq!(left_out, 0);
    /// Policy, method, path, rule, count.
    type Line<'a> = (Option<&'a str>, &'a str, &'a str, Option<u32>, u64);
    let lines: Vec<Line<'_>> = denials
        .iter()
        .map(|d| {
            (
                d.policy.as_deref(),
                d.method.as_str(),
                d.path.as_str(),
                d.rule,
                d.count,
            )
        })
        .collect();
    assert_eq!(
        lines,
        [
            (Some("stock-policy"), "GET", "/admin", None, 2),
            (Some("stock-policy"), "POST", "/public/a", None, 1),
            (Some("stock-policy"), "GET", "/public", None, 1),
            (Some("stock-policy"), "GET", "/public/secret/x", Some(1), 1),
            (Some("stock-policy"), "POST", "/admin", None, 1),
        ]
    );
    mesh.server
        .registry
        .report_telemetry(
            "stock",
            "stock-1",
            ieum_model::telemetry::TelemetryReport {
                window: ieum_model::Duration::from_secs(10),
                signals: Vec::new(),
                breakers: Vec::new(),
                topics: Vec::new(),
                events: Vec::new(),
                denials,
            },
            "sidecar",
        )
        .await
        .unwrap();
    let events = mesh
        .server
        .registry
        .events(&ieum_store::EventQuery {
            service: Some("stock".into()),
            kinds: vec![EventKind::AuthzDenied],
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages: Vec<&str> = events.iter().map(|e| e.message.as_str()).collect();
    messages.sort_unstable();
    assert_eq!(
        messages,
        [
            "1 call GET /public from a caller without a mesh identity denied by the default of AuthorizationPolicy/stock-policy",
            "1 call GET /public/secret/x from a caller without a mesh identity denied by rules[1] of AuthorizationPolicy/stock-policy",
            "1 call POST /admin from a caller without a mesh identity denied by the default of AuthorizationPolicy/stock-policy",
            "1 call POST /public/a from a caller without a mesh identity denied by the default of AuthorizationPolicy/stock-policy",
            "2 calls GET /admin from a caller without a mesh identity denied by the default of AuthorizationPolicy/stock-policy",
        ]
    );
    assert!(
        events
            .iter()
            .all(|e| e.instance.as_deref() == Some("stock-1"))
    );
    assert_eq!(mesh.stock.take_denials(), (Vec::new(), 0));

    // Deleting the policy lifts it, live.
    mesh.server
        .registry
        .delete_resource(Kind::AuthorizationPolicy, "stock-policy", "test")
        .await
        .unwrap();
    in_effect(&mesh.stock, "AuthorizationPolicy/stock-policy", true).await;
    assert_eq!(mesh.call("POST", "/admin").await.0, 200);
}

#[tokio::test]
async fn enforced_mesh_identity_denies_callers_without_one_by_default() {
    let mesh = Mesh::start(true).await;
    let (status, reason, body) = mesh.call("GET", "/anything").await;
    assert_eq!((status, reason.as_str()), (403, "authz-denied"), "{body}");
    assert!(
        body.contains(
            "no AuthorizationPolicy sets a default, so the service is allow-mesh, which admits \
             only callers with a mesh identity"
        ),
        "{body}"
    );
    assert!(
        body.contains("call through a sidecar of the mesh"),
        "{body}"
    );
    assert_eq!(mesh.hits.load(Ordering::SeqCst), 0);
    let (_, metrics) = admin(&mesh.stock, "/metrics").await;
    assert!(
        metrics.contains("ieum_authz_denied_total{caller=\"-\",policy=\"-\"} 1"),
        "{metrics}"
    );

    // `default: allow-all` admits them.
    mesh.server
        .apply(
            "apiVersion: ieum.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: open}\nspec: {targetRef: {kind: Service, name: stock}, default: allow-all}\n",
        )
        .await;
    in_effect(&mesh.stock, "AuthorizationPolicy/open@1", false).await;
    assert_eq!(mesh.call("GET", "/anything").await.0, 200);
    assert_eq!(mesh.hits.load(Ordering::SeqCst), 1);
}
