//! Server-side render of the services page for 1,000 services (3 instances each, golden
//! signals from every service, a few open breakers), through the router as a browser's
//! request would go: read the registry, render, answer. Target: under 200 ms.
//!
//! `cargo bench -p ieum-ui --bench render`

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::BodyExt;
use ieum_model::service::Sla;
use ieum_model::telemetry::{BreakerChange, Signals, TelemetryReport};
use ieum_model::{Duration, InstanceRegistration, Name, ServiceSpec};
use ieum_registry::{Options, Registry, SystemClock};
use ieum_store::MemoryStore;
use tower::ServiceExt;

const SERVICES: usize = 1000;

async fn fleet() -> Registry {
    let r = Registry::start(
        Arc::new(MemoryStore::new()),
        Arc::new(SystemClock),
        Options::default(),
    )
    .await
    .unwrap();
    for n in 0..SERVICES {
        let name = Name::parse(&format!("svc-{n:04}")).unwrap();
        let spec = ServiceSpec {
            description: Some(format!("Service number {n}")),
            owner: Some("team-bench".into()),
            sla: (n % 2 == 0).then_some(Sla {
                availability: 99.9,
                latency_p99: Some(Duration::from_millis(200)),
            }),
            ..ServiceSpec::default()
        };
        r.put_service(&name, spec, Default::default(), "bench")
            .await
            .unwrap();
        for i in 0..3 {
            let mut reg =
                InstanceRegistration::new(format!("10.{}.{}.{}", n / 250, n % 250, i + 1), 8080);
            reg.id = Some(format!("svc-{n:04}-{i}"));
            reg.zone = Some(["eu-1a", "eu-1b", "eu-1c"][i].into());
            reg.region = Some("eu".into());
            reg.platform = Some("kubernetes".into());
            reg.version = Some("v1".into());
            reg.ttl = Duration::from_secs(3600);
            r.register(&name, reg, "bench").await.unwrap();
        }
        let next = format!("svc-{:04}", (n + 1) % SERVICES);
        let line = |direction: &str, destination: &str| Signals {
            direction: direction.into(),
            destination: destination.into(),
            route: "default".into(),
            requests: 500,
            requests_per_second: 50.0,
            success_rate: Some(0.999),
            p50_ms: Some(4.0),
            p99_ms: Some(80.0),
        };
        let report = TelemetryReport {
            events: Vec::new(),
            denials: Vec::new(),
            window: Duration::from_secs(10),
            signals: vec![line("inbound", name.as_str()), line("outbound", &next)],
            breakers: if n % 100 == 0 {
                vec![BreakerChange {
                    destination: next.clone(),
                    endpoint: None,
                    from: "allowed".into(),
                    to: "blocked".into(),
                    reason: "5 consecutive failures".into(),
                    coalesced: 0,
                }]
            } else {
                Vec::new()
            },
            topics: Vec::new(),
        };
        r.report_telemetry(name.as_str(), &format!("svc-{n:04}-0"), report, "bench")
            .await
            .unwrap();
    }
    r
}

fn services_page(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let registry = rt.block_on(fleet());
    let app = ieum_ui::router::<()>(registry);
    let render = || async {
        let req = Request::builder()
            .uri("/ui/services")
            .body(Body::empty())
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        assert!(resp.status().is_success());
        resp.into_body().collect().await.unwrap().to_bytes().len()
    };
    let size = rt.block_on(render());
    eprintln!("services page for {SERVICES} services: {} KiB", size / 1024);
    c.bench_function("services page, 1000 services", |b| {
        b.iter(|| rt.block_on(render()))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = services_page
}
criterion_main!(benches);
