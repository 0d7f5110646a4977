//! The client library against a server on a real socket (HTTP/2, gRPC), in process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ieum_client::{Client, Options, Snapshot};
use ieum_control::{AppState, Auth, router};
use ieum_model::{InstanceRegistration, Name};
use ieum_registry::{Options as RegistryOptions, Registry, SystemClock};
use ieum_store::{MemoryStore, Store};
use ieum_wire::PROTOCOL;
use ieum_wire::v1::push_client::PushClient;
use ieum_wire::v1::{ClientMessage, Hello, ServerMessage, client_message};
use tokio_util::sync::CancellationToken;

struct Server {
    registry: Registry,
    addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(store: Arc<dyn Store>, addr: &str) -> Server {
        let registry = Registry::start(store, Arc::new(SystemClock), RegistryOptions::default())
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let app = router(AppState {
            registry: registry.clone(),
            auth: Auth::Open,
            shutdown: stop.clone(),
        });
        let s = stop.clone();
        let task = tokio::spawn(async move {
            ieum_control::serve(listener, app, async move { s.cancelled().await })
                .await
                .unwrap();
        });
        Server {
            registry,
            addr,
            stop,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
        self.registry.shutdown().await;
    }

    async fn register(&self, service: &str, id: &str) {
        let mut reg = InstanceRegistration::new("10.0.0.1", 8080);
        reg.id = Some(id.into());
        reg.ttl = ieum_model::Duration::from_secs(3600);
        self.registry
            .register(&Name::parse(service).unwrap(), reg, "test")
            .await
            .unwrap();
    }
}

fn options(server: &Server, calls: &[&str]) -> Options {
    Options {
        server: server.url(),
        client: "test".into(),
        service: Some("orders".into()),
        calls: calls.iter().map(|s| (*s).to_owned()).collect(),
        gateway: None,
        snapshot_file: None,
        token: None,
        tls: None,
    }
}

/// Waits until the client's snapshot satisfies `f`.
async fn until(client: &Client, what: &str, f: impl Fn(&Snapshot) -> bool) -> Arc<Snapshot> {
    let mut rx = client.changes();
    let r = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|s| f(s))).await;
    match r {
        Ok(Ok(s)) => s.clone(),
        _ => panic!(
            "timed out waiting for {what}; have {:#?}",
            client.snapshot()
        ),
    }
}

#[tokio::test]
async fn snapshot_then_deltas_for_only_what_the_client_calls() {
    let server = Server::start(Arc::new(MemoryStore::new()), "127.0.0.1:0").await;
    server.register("stock", "s1").await;
    server.register("stock", "s2").await;
    server.register("other", "o1").await;
    let client = Client::start(options(&server, &["stock"]));
    let s = until(&client, "the snapshot", |s| s.up("stock").len() == 2).await;
    assert!(!s.services.contains_key("other"), "only what it calls");
    assert!(client.connected());

    server.register("stock", "s3").await;
    until(&client, "an added endpoint", |s| s.up("stock").len() == 3).await;
    server
        .registry
        .deregister("stock", "s1", "test")
        .await
        .unwrap();
    let s = until(&client, "a removed endpoint", |s| s.up("stock").len() == 2).await;
    assert!(!s.services["stock"].endpoints.contains_key("s1"));
    server
        .registry
        .set_state("stock", "s2", ieum_model::InstanceState::Draining, "test")
        .await
        .unwrap();
    let s = until(&client, "a state change", |s| s.up("stock").len() == 1).await;
    assert_eq!(s.services["stock"].endpoints["s2"].state, "draining");

    // Services met later are added on demand, within the first-use wait.
    server.register("payments", "p1").await;
    let started = tokio::time::Instant::now();
    let payments = client
        .endpoints("payments")
        .await
        .expect("subscribed on first use");
    assert!(started.elapsed() <= ieum_client::FIRST_USE_WAIT);
    assert_eq!(payments.endpoints.len(), 1);
    assert!(
        client.endpoints("ghost").await.is_some_and(|s| !s.known),
        "an unknown service is known to be unknown"
    );
    assert!(client.endpoints("Not_A_Name").await.is_none());
    server.register("stock", "s9").await;
    until(&client, "deltas after an invalid name", |s| {
        s.services["stock"].endpoints.contains_key("s9")
    })
    .await;
    assert!(
        client.connected(),
        "an invalid name does not end the session"
    );
    client.shutdown().await;
    server.stop().await;
}

/// A raw stream, to count exactly what the server sends.
async fn raw(server: &Server, calls: &[&str]) -> tonic::Streaming<ServerMessage> {
    raw_resuming(server, calls, 0, "").await
}

/// A raw stream that says which version (of which epoch) it already holds.
async fn raw_resuming(
    server: &Server,
    calls: &[&str],
    version: u64,
    epoch: &str,
) -> tonic::Streaming<ServerMessage> {
    let mut c = PushClient::new(
        tonic::transport::Endpoint::from_shared(server.url())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let hello = Hello {
        protocol: PROTOCOL,
        client: "raw".into(),
        calls: calls.iter().map(|s| (*s).to_owned()).collect(),
        resume_version: version,
        resume_epoch: epoch.to_owned(),
        ..Default::default()
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(ClientMessage {
        kind: Some(client_message::Kind::Hello(hello)),
    })
    .await
    .unwrap();
    std::mem::forget(tx); // keep the request stream open
    c.stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner()
}

async fn next(
    stream: &mut tonic::Streaming<ServerMessage>,
    wait: Duration,
) -> Option<ServerMessage> {
    tokio::time::timeout(wait, stream.message())
        .await
        .ok()
        .map(|m| m.unwrap().unwrap())
}

#[tokio::test]
async fn unaffected_clients_get_nothing_and_heartbeats_cost_nothing() {
    let server = Server::start(Arc::new(MemoryStore::new()), "127.0.0.1:0").await;
    server.register("stock", "s1").await;
    server.register("other", "o1").await;
    let mut stock_watcher = raw(&server, &["stock"]).await;
    let first = next(&mut stock_watcher, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(first.services.len(), 1);
    assert!(first.replace_resources);

    server.register("other", "o2").await;
    server.registry.heartbeat("stock", "s1").await.unwrap();
    assert!(
        next(&mut stock_watcher, Duration::from_millis(300))
            .await
            .is_none(),
        "no message for changes elsewhere or heartbeats"
    );

    server.register("stock", "s2").await;
    let delta = next(&mut stock_watcher, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(delta.services[0].upserted[0].id, "s2");
    assert!(!delta.services[0].replace);
    let bytes = prost::Message::encoded_len(&delta);
    assert!(bytes <= 1024, "one endpoint change costs {bytes} bytes");

    // Newer protocol versions than the server speaks are refused with a reason.
    let mut c = PushClient::new(
        tonic::transport::Endpoint::from_shared(server.url())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let hello = Hello {
        protocol: PROTOCOL + 1,
        ..Default::default()
    };
    let msgs = tokio_stream::iter(vec![ClientMessage {
        kind: Some(client_message::Kind::Hello(hello)),
    }]);
    let err = c.stream(msgs).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    server.stop().await;
}

#[tokio::test]
async fn resources_that_concern_the_client_are_pushed() {
    let server = Server::start(Arc::new(MemoryStore::new()), "127.0.0.1:0").await;
    let client = Client::start(options(&server, &["stock"]));
    until(&client, "the snapshot", |s| {
        s.services.contains_key("stock")
    })
    .await;
    let doc = "apiVersion: ieum.dev/v1\nkind: Route\nmetadata: {name: stock-main}\nspec: {service: stock, rules: [{timeouts: {request: 2s}}]}\n---\napiVersion: ieum.dev/v1\nkind: RateLimitPolicy\nmetadata: {name: orders-in}\nspec: {targetRef: {kind: Service, name: orders}, limit: {requests: 10, per: 1s}}\n---\napiVersion: ieum.dev/v1\nkind: Route\nmetadata: {name: elsewhere}\nspec: {service: billing, rules: [{}]}\n";
    let checked: Vec<_> = ieum_model::resource::parse_documents(doc)
        .unwrap()
        .iter()
        .map(|r| ieum_model::resource::check(r).unwrap())
        .collect();
    server.registry.apply(checked, "test", false).await.unwrap();
    let s = until(&client, "the route and the inbound policy", |s| {
        s.resources.len() == 2
    })
    .await;
    assert_eq!(
        s.resources["Route/stock-main"].spec["rules"][0]["timeouts"]["request"],
        "2s"
    );
    assert!(
        s.resources.contains_key("RateLimitPolicy/orders-in"),
        "resources targeting its own service"
    );
    server
        .registry
        .delete_resource(ieum_model::resource::Kind::Route, "stock-main", "test")
        .await
        .unwrap();
    until(&client, "the deletion", |s| {
        !s.resources.contains_key("Route/stock-main")
    })
    .await;
    client.shutdown().await;
    server.stop().await;
}

#[tokio::test]
async fn pubsubs_and_open_bindings_applied_later_reach_every_client() {
    let server = Server::start(Arc::new(MemoryStore::new()), "127.0.0.1:0").await;
    // A publish-only app: it calls nothing, no Subscription or Binding names it.
    let client = Client::start(options(&server, &[]));
    until(&client, "the snapshot", |s| !s.epoch.is_empty()).await;
    let apply = |doc: &str| {
        let checked: Vec<_> = ieum_model::resource::parse_documents(doc)
            .unwrap()
            .iter()
            .map(|r| ieum_model::resource::check(r).unwrap())
            .collect();
        let registry = server.registry.clone();
        async move { registry.apply(checked, "test", false).await.unwrap() }
    };
    // No service uses it yet: its event is on no timeline.
    apply("apiVersion: ieum.dev/v1\nkind: PubSub\nmetadata: {name: bus}\nspec: {type: memory}\n")
        .await;
    until(&client, "the PubSub applied after it connected", |s| {
        s.resources.contains_key("PubSub/bus")
    })
    .await;
    // Used by billing only: its change is on billing's timeline, and still reaches orders.
    apply("apiVersion: ieum.dev/v1\nkind: Subscription\nmetadata: {name: billing-orders}\nspec: {pubsub: bus, topic: orders, service: billing, route: /events}\n---\napiVersion: ieum.dev/v1\nkind: Binding\nmetadata: {name: invoices-out}\nspec: {pubsub: bus, direction: output, topic: invoices}\n---\napiVersion: ieum.dev/v1\nkind: Binding\nmetadata: {name: billing-only}\nspec: {pubsub: bus, direction: output, topic: invoices, service: billing}\n").await;
    apply("apiVersion: ieum.dev/v1\nkind: PubSub\nmetadata: {name: bus}\nspec: {type: memory, redeliverAfter: 5s}\n").await;
    let s = until(&client, "the PubSub's change and the open Binding", |s| {
        s.resources
            .get("PubSub/bus")
            .is_some_and(|r| r.revision == 2)
            && s.resources.contains_key("Binding/invoices-out")
    })
    .await;
    assert!(
        !s.resources.contains_key("Subscription/billing-orders")
            && !s.resources.contains_key("Binding/billing-only"),
        "what names another service stays with it: {:?}",
        s.resources.keys()
    );
    server
        .registry
        .delete_resource(ieum_model::resource::Kind::Binding, "invoices-out", "test")
        .await
        .unwrap();
    until(&client, "the open Binding's deletion", |s| {
        !s.resources.contains_key("Binding/invoices-out")
    })
    .await;
    client.shutdown().await;
    server.stop().await;
}

#[tokio::test]
async fn the_snapshot_outlives_the_server_and_a_restart_of_the_client() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let server = Server::start(store.clone(), "127.0.0.1:0").await;
    let addr = server.addr;
    server.register("stock", "s1").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("snapshot.json");
    let opts = Options {
        gateway: None,
        snapshot_file: Some(file.clone()),
        ..options(&server, &["stock"])
    };
    let client = Client::start(opts.clone());
    until(&client, "the snapshot", |s| s.up("stock").len() == 1).await;

    // Server down: the client keeps serving its last snapshot and says it is disconnected.
    server.stop().await;
    tokio::time::timeout(Duration::from_secs(5), async {
        while client.connected() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(
        client.snapshot().up("stock").len(),
        1,
        "last known endpoints stay"
    );
    client.shutdown().await;

    // A restarted client with the server still down serves from disk.
    let restarted = Client::start(opts.clone());
    assert_eq!(restarted.snapshot().up("stock").len(), 1);
    assert!(!restarted.connected());
    assert!(!restarted.wait_connected(Duration::from_millis(300)).await);

    // The server comes back on the same address: the client reconnects and catches up.
    let server = Server::start(store, &addr.to_string()).await;
    server.register("stock", "s2").await;
    assert!(
        restarted.wait_connected(Duration::from_secs(15)).await,
        "{:?}",
        restarted.last_error()
    );
    until(&restarted, "the catch-up", |s| s.up("stock").len() == 2).await;
    restarted.shutdown().await;
    server.stop().await;
}

#[tokio::test]
async fn a_reconnect_resends_only_what_changed_meanwhile() {
    let server = Server::start(Arc::new(MemoryStore::new()), "127.0.0.1:0").await;
    server.register("stock", "s1").await;
    server.register("payments", "p1").await;
    let mut first = raw(&server, &["stock", "payments"]).await;
    let snapshot = next(&mut first, Duration::from_secs(5)).await.unwrap();
    assert_eq!(snapshot.services.len(), 2);
    drop(first);

    // While the client is away, only payments changes.
    server.register("payments", "p2").await;
    let mut resumed = raw_resuming(
        &server,
        &["stock", "payments"],
        snapshot.version,
        &snapshot.epoch,
    )
    .await;
    let catch_up = next(&mut resumed, Duration::from_secs(5)).await.unwrap();
    let names: Vec<&str> = catch_up.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["payments"],
        "stock did not change and is not resent"
    );
    assert_eq!(catch_up.services[0].upserted.len(), 2);
    assert!(catch_up.services[0].replace);

    // A version from another epoch (a restarted server) gets everything.
    let mut other = raw_resuming(
        &server,
        &["stock", "payments"],
        snapshot.version,
        "another-epoch",
    )
    .await;
    assert_eq!(
        next(&mut other, Duration::from_secs(5))
            .await
            .unwrap()
            .services
            .len(),
        2
    );
    server.stop().await;
}

#[tokio::test]
async fn gateways_get_every_api_consumer_and_flow_and_sidecars_none() {
    let server = Server::start(Arc::new(MemoryStore::new()), "127.0.0.1:0").await;
    let apply = async |doc: &str| {
        let checked: Vec<_> = ieum_model::resource::parse_documents(doc)
            .unwrap()
            .iter()
            .map(|r| ieum_model::resource::check(r).unwrap())
            .collect();
        server.registry.apply(checked, "test", false).await.unwrap();
    };
    // One API before the gateway connects (in its snapshot), the rest after (deltas).
    apply("apiVersion: ieum.dev/v1\nkind: Api\nmetadata: {name: shop}\nspec: {basePath: /shop, backend: {service: orders}, auth: {anonymous: true}}\n").await;
    let gateway = Client::start(Options {
        gateway: Some("edge".into()),
        service: None,
        ..options(&server, &[])
    });
    let sidecar = Client::start(options(&server, &["stock"]));
    until(&gateway, "the API in the snapshot", |s| {
        s.resources.contains_key("Api/shop")
    })
    .await;
    until(&sidecar, "the sidecar's snapshot", |s| {
        s.services.contains_key("stock")
    })
    .await;
    apply("apiVersion: ieum.dev/v1\nkind: ApiConsumer\nmetadata: {name: mobile}\nspec: {apis: [shop]}\n---\napiVersion: ieum.dev/v1\nkind: Flow\nmetadata: {name: quote}\nspec: {steps: [{name: a, call: {service: stock, method: GET, path: /}}]}\n---\napiVersion: ieum.dev/v1\nkind: Api\nmetadata: {name: shop}\nspec: {basePath: /shop/v2, backend: {service: orders}, auth: {anonymous: true}}\n").await;
    let s = until(
        &gateway,
        "the consumer, the flow and the changed API",
        |s| {
            s.resources.contains_key("ApiConsumer/mobile")
                && s.resources.contains_key("Flow/quote")
                && s.resources["Api/shop"].spec["basePath"] == "/shop/v2"
        },
    )
    .await;
    assert_eq!(s.resources.len(), 3, "{:?}", s.resources.keys());
    server
        .registry
        .delete_resource(ieum_model::resource::Kind::ApiConsumer, "mobile", "test")
        .await
        .unwrap();
    until(&gateway, "the deletion", |s| {
        !s.resources.contains_key("ApiConsumer/mobile")
    })
    .await;
    // The orders sidecar (whose service the API fronts, and which the flow's service
    // concerns) holds none of them.
    assert!(
        sidecar
            .snapshot()
            .resources
            .keys()
            .all(|k| !k.starts_with("Api") && !k.starts_with("Flow/")),
        "{:?}",
        sidecar.snapshot().resources.keys()
    );
    gateway.shutdown().await;
    sidecar.shutdown().await;
    server.stop().await;
}
