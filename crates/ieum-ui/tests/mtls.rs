//! The service page warns about `mtls: permissive`, and says nothing for strict services.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use ieum_model::service::MtlsMode;
use ieum_model::{Name, ServiceSpec};
use ieum_registry::{Options, Registry, TokioClock};
use ieum_store::MemoryStore;
use tower::ServiceExt;

async fn page(registry: &Registry, service: &str) -> String {
    let req = Request::builder()
        .uri(format!("/ui/services/{service}"))
        .body(Body::empty())
        .unwrap();
    let res = ieum_ui::router(registry.clone())
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_permissive_service_shows_a_warning_badge() {
    let r = Registry::start(
        Arc::new(MemoryStore::new()),
        Arc::new(TokioClock::starting_at(ieum_model::Timestamp::from_millis(
            1_777_636_800_000,
        ))),
        Options::default(),
    )
    .await
    .unwrap();
    for (name, mtls) in [
        ("legacy", Some(MtlsMode::Permissive)),
        ("strict", Some(MtlsMode::Strict)),
        ("unset", None),
    ] {
        let spec = ServiceSpec {
            mtls,
            ..ServiceSpec::default()
        };
        r.put_service(
            &Name::parse(name).unwrap(),
            spec,
            Default::default(),
            "alice",
        )
        .await
        .unwrap();
    }
    let html = page(&r, "legacy").await;
    assert!(
        html.contains(r#"<dd data-testid="mtls"><span class="badge warn">permissive</span>"#),
        "{html}"
    );
    assert!(html.contains("<code>mtls: strict</code>"), "{html}");
    for name in ["strict", "unset"] {
        let html = page(&r, name).await;
        assert!(!html.contains(r#"data-testid="mtls""#), "{name}: {html}");
    }
}
