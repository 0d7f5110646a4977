//! The push stream (gRPC `ieum.push.v1.Push/Stream`, on the API port): one session per
//! client, a snapshot of exactly what it calls, then deltas driven by the registry's
//! events. Heartbeats cause no events, so they cause no messages.

use std::collections::BTreeSet;

use ieum_model::{EventKind, Instance, Name};
use ieum_registry::Registry;
use ieum_store::StoredResource;
use ieum_wire::PROTOCOL;
use ieum_wire::v1::push_server::Push;
use ieum_wire::v1::{
    ClientMessage, Endpoint, Hello, ResourceUpdate, ServerMessage, ServiceUpdate, client_message,
};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

/// The generated gRPC server around [`PushService`].
pub type PushServer = ieum_wire::v1::push_server::PushServer<PushService>;

/// The gRPC service, ready to be served beside the REST API.
pub fn service(registry: Registry, shutdown: CancellationToken) -> PushServer {
    PushServer::new(PushService { registry, shutdown })
}

/// Serves push sessions.
#[derive(Debug, Clone)]
pub struct PushService {
    registry: Registry,
    shutdown: CancellationToken,
}

fn endpoint(i: &Instance) -> Endpoint {
    Endpoint {
        id: i.id.clone(),
        address: i.address.clone(),
        port: u32::from(i.port),
        protocol: serde_json::to_value(i.protocol)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        state: i.state.as_str().to_owned(),
        zone: i.zone.clone().unwrap_or_default(),
        region: i.region.clone().unwrap_or_default(),
        version: i.version.clone().unwrap_or_default(),
        weight: i.weight,
        metadata: i.metadata.clone().into_iter().collect(),
    }
}

fn resource_update(r: StoredResource) -> ResourceUpdate {
    ResourceUpdate {
        kind: r.kind,
        name: r.name,
        revision: r.revision,
        spec_json: r.spec.to_string(),
        deleted: false,
    }
}

fn check_names(names: &[String], field: &str) -> Result<(), Status> {
    for n in names {
        Name::parse(n)
            .map_err(|m| Status::invalid_argument(format!("{field}: service name {m}")))?;
    }
    Ok(())
}

#[tonic::async_trait]
impl Push for PushService {
    type StreamStream = ReceiverStream<Result<ServerMessage, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<ClientMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        // A sidecar's token (or certificate) is for one service: its stream follows that one.
        let caller = request.extensions().get::<crate::auth::Caller>().cloned();
        let own = caller
            .as_ref()
            .filter(|c| c.role == crate::auth::Role::Sidecar)
            .and_then(|c| c.service.clone().map(|s| (c.name.clone(), s)));
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("the stream ended before its hello"))?;
        let Some(client_message::Kind::Hello(hello)) = first.kind else {
            return Err(Status::invalid_argument(
                "the first message must be a hello",
            ));
        };
        if hello.protocol == 0 || hello.protocol > PROTOCOL {
            return Err(Status::failed_precondition(format!(
                "this server speaks push protocol 1 to {PROTOCOL}; the client asked for {}: upgrade the server",
                hello.protocol
            )));
        }
        check_names(&hello.calls, "calls")?;
        if !hello.service.is_empty() {
            check_names(std::slice::from_ref(&hello.service), "service")?;
        }
        if let Some((name, own)) = own
            && !hello.service.is_empty()
            && hello.service != own
        {
            return Err(Status::permission_denied(format!(
                "`{name}` acts for service `{own}` only, and this stream says hello as `{}`: use that service's own join token",
                hello.service
            )));
        }
        if !hello.gateway.is_empty() {
            check_names(std::slice::from_ref(&hello.gateway), "gateway")?;
            may_follow_gateway(caller.as_ref(), &hello.gateway)?;
        }
        let (tx, rx) = mpsc::channel(256);
        let session = Session::new(self.registry.clone(), &hello);
        tracing::debug!(client = %hello.client, calls = hello.calls.len(), "push session opened");
        let resume = if hello.resume_epoch == session.epoch {
            hello.resume_version
        } else {
            0
        };
        tokio::spawn(session.run(resume, inbound, tx, self.shutdown.clone()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Whether `caller` may follow what gateway `name` publishes: a `gateway` token (for that
/// gateway, or for none in particular), `admin` or `operator`; without a caller the server
/// is open on loopback.
fn may_follow_gateway(caller: Option<&crate::auth::Caller>, name: &str) -> Result<(), Status> {
    use crate::auth::Role;
    let Some(c) = caller else { return Ok(()) };
    let allowed = match c.role {
        Role::Admin | Role::Operator => true,
        Role::Gateway => c.service.as_deref().is_none_or(|own| own == name),
        Role::Reader | Role::Sidecar => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "`{}` ({}) may not follow gateway `{name}`: use a gateway token (`ieum token create --role gateway`)",
            c.name, c.role
        )))
    }
}

/// Kinds a gateway session receives whole, whoever's timeline records their changes.
fn for_gateways(kind: &str) -> bool {
    ieum_registry::GATEWAY_KINDS
        .iter()
        .any(|k| k.as_str() == kind)
}

struct Session {
    registry: Registry,
    /// Whether the client is a gateway: it also gets every `Api`, `ApiConsumer`, `ApiKey`
    /// and `Flow` (`GATEWAY_KINDS`).
    gateway: bool,
    /// Services the client calls: it gets their endpoints.
    calls: BTreeSet<String>,
    /// Calls plus the client's own service: it gets resources concerning these.
    concerned: BTreeSet<String>,
    /// The registry's lifetime, so a client never resumes across a storage reset.
    epoch: String,
    /// The last resource revision sent to every client (kind, name, revision): one change
    /// of a `PubSub` is one event per service using it, and becomes one message.
    last_for_everyone: Option<(String, String, i64)>,
}

type Tx = mpsc::Sender<Result<ServerMessage, Status>>;

impl Session {
    fn new(registry: Registry, hello: &Hello) -> Self {
        let calls: BTreeSet<String> = hello.calls.iter().cloned().collect();
        let mut concerned = calls.clone();
        if !hello.service.is_empty() {
            concerned.insert(hello.service.clone());
        }
        let epoch = registry.epoch();
        Session {
            registry,
            gateway: !hello.gateway.is_empty(),
            calls,
            concerned,
            epoch,
            last_for_everyone: None,
        }
    }

    async fn run(
        mut self,
        resume: u64,
        mut inbound: Streaming<ClientMessage>,
        tx: Tx,
        shutdown: CancellationToken,
    ) {
        // Subscribe before building the snapshot, so no change falls between the two.
        let mut events = self.registry.subscribe();
        let all: Vec<String> = self.calls.iter().cloned().collect();
        let mut version = match self.snapshot(&all, resume, true).await {
            Ok(msg) => {
                let v = msg.version;
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
                v
            }
            Err(status) => {
                let _ = tx.send(Err(status)).await;
                return;
            }
        };
        loop {
            let msg = tokio::select! {
                m = inbound.message() => match m {
                    Ok(Some(ClientMessage { kind: Some(client_message::Kind::Subscribe(s)) })) => {
                        if let Err(status) = check_names(&s.services, "subscribe") {
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                        let new: Vec<String> = s.services.into_iter().filter(|n| !self.calls.contains(n)).collect();
                        self.calls.extend(new.iter().cloned());
                        self.concerned.extend(new.iter().cloned());
                        if new.is_empty() { continue; }
                        self.snapshot(&new, 0, false).await
                    }
                    Ok(Some(_)) => Err(Status::invalid_argument("only subscribe messages may follow the hello")),
                    Ok(None) | Err(_) => return,
                },
                e = events.recv() => match e {
                    Ok(event) => match self.delta(&event).await {
                        Some(m) => m,
                        None => continue,
                    },
                    // Too slow for the live feed: send what changed since the last version.
                    Err(RecvError::Lagged(_)) => {
                        let all: Vec<String> = self.calls.iter().cloned().collect();
                        self.snapshot(&all, version, true).await
                    }
                    Err(RecvError::Closed) => return,
                },
                () = shutdown.cancelled() => return,
            };
            match msg {
                Ok(m) => {
                    version = version.max(m.version);
                    if tx.send(Ok(m)).await.is_err() {
                        return;
                    }
                }
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            }
        }
    }

    /// Every endpoint of `services` changed after `since` (all of them for 0), and, with
    /// `with_resources`, the complete set of resources that concern the client.
    async fn snapshot(
        &self,
        services: &[String],
        since: u64,
        with_resources: bool,
    ) -> Result<ServerMessage, Status> {
        let version = self.registry.index();
        let mut updates = Vec::new();
        for name in services {
            match self.registry.endpoints(name) {
                Some((index, _)) if since > 0 && index <= since => {}
                Some((_, instances)) => updates.push(ServiceUpdate {
                    name: name.clone(),
                    replace: true,
                    upserted: instances.iter().map(endpoint).collect(),
                    removed: Vec::new(),
                    unknown: false,
                }),
                None => updates.push(ServiceUpdate {
                    name: name.clone(),
                    replace: true,
                    unknown: true,
                    ..Default::default()
                }),
            }
        }
        let resources = if with_resources {
            let mut list = self
                .registry
                .resources_for(&self.concerned)
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            if self.gateway {
                list.extend(
                    self.registry
                        .gateway_resources()
                        .await
                        .map_err(|e| Status::unavailable(e.to_string()))?,
                );
            }
            list.into_iter().map(resource_update).collect()
        } else {
            let new: BTreeSet<String> = services.iter().cloned().collect();
            let list = self
                .registry
                .resources_for(&new)
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            list.into_iter().map(resource_update).collect()
        };
        Ok(ServerMessage {
            protocol: PROTOCOL,
            // Only a full snapshot vouches for a version: it is built from memory, which
            // already holds every change up to it, while deltas and partial snapshots may
            // overtake changes whose events are still being stored.
            version: if with_resources { version } else { 0 },
            services: updates,
            resources,
            replace_resources: with_resources,
            epoch: self.epoch.clone(),
        })
    }

    /// The message an event means for this client, if any.
    async fn delta(&mut self, event: &ieum_model::Event) -> Option<Result<ServerMessage, Status>> {
        if event.kind == EventKind::ConfigChanged
            && let Some(kind) = event.data["kind"].as_str()
            && for_gateways(kind)
        {
            // Only gateways get these, all of them.
            if !self.gateway {
                return None;
            }
            let name = event.data["name"].as_str()?.to_owned();
            let revision = event.data["revision"].as_i64().unwrap_or(0);
            let key = (kind.to_owned(), name.clone(), revision);
            if self.last_for_everyone.as_ref() == Some(&key) {
                return None;
            }
            self.last_for_everyone = Some(key);
            let kind_parsed = ieum_model::resource::Kind::parse(kind)?;
            let update = match self.registry.resource(kind_parsed, &name).await {
                Ok(r) => resource_update(r),
                Err(_) => ResourceUpdate {
                    kind: kind.to_owned(),
                    name,
                    revision,
                    deleted: true,
                    ..Default::default()
                },
            };
            return Some(Ok(ServerMessage {
                protocol: PROTOCOL,
                resources: vec![update],
                epoch: self.epoch.clone(),
                ..Default::default()
            }));
        }
        if event.kind == EventKind::ConfigChanged
            && let Some(kind) = event.data["kind"].as_str()
            && matches!(kind, "PubSub" | "Binding")
        {
            // Every client gets every PubSub and every Binding that names no service (see
            // `Registry::resources_for`), whoever's timeline the change is recorded on.
            let name = event.data["name"].as_str()?.to_owned();
            let revision = event.data["revision"].as_i64().unwrap_or(0);
            let kind_parsed = ieum_model::resource::Kind::parse(kind)?;
            let current = self.registry.resource(kind_parsed, &name).await.ok();
            let for_everyone = kind == "PubSub"
                || match &current {
                    Some(r) => r.spec["service"].is_null(),
                    None => event.service.is_none(),
                };
            if for_everyone {
                let key = (kind.to_owned(), name.clone(), revision);
                if self.last_for_everyone.as_ref() == Some(&key) {
                    return None;
                }
                self.last_for_everyone = Some(key);
                let update = match current {
                    Some(r) => resource_update(r),
                    None => ResourceUpdate {
                        kind: kind.to_owned(),
                        name,
                        revision,
                        deleted: true,
                        ..Default::default()
                    },
                };
                return Some(Ok(ServerMessage {
                    protocol: PROTOCOL,
                    resources: vec![update],
                    epoch: self.epoch.clone(),
                    ..Default::default()
                }));
            }
        }
        let service = event.service.as_deref()?;
        // Deltas carry no version (0): see `snapshot`.
        match event.kind {
            EventKind::InstanceRegistered
            | EventKind::InstanceUpdated
            | EventKind::InstanceUp
            | EventKind::InstanceDown
            | EventKind::InstanceDraining
            | EventKind::InstanceDeregistered
            | EventKind::InstanceExpired
                if self.calls.contains(service) =>
            {
                let id = event.instance.as_deref()?;
                let update = match self.registry.instance(service, id) {
                    Some(i) => ServiceUpdate {
                        name: service.to_owned(),
                        upserted: vec![endpoint(&i)],
                        ..Default::default()
                    },
                    None => ServiceUpdate {
                        name: service.to_owned(),
                        removed: vec![id.to_owned()],
                        ..Default::default()
                    },
                };
                Some(Ok(ServerMessage {
                    protocol: PROTOCOL,
                    services: vec![update],
                    epoch: self.epoch.clone(),
                    ..Default::default()
                }))
            }
            EventKind::ConfigChanged | EventKind::ServiceCreated | EventKind::ServiceUpdated
                if self.concerned.contains(service) =>
            {
                let (kind, name) = match event.kind {
                    EventKind::ConfigChanged => (
                        event.data["kind"].as_str()?.to_owned(),
                        event.data["name"].as_str()?.to_owned(),
                    ),
                    _ => ("Service".to_owned(), service.to_owned()),
                };
                let kind_parsed = ieum_model::resource::Kind::parse(&kind)?;
                let update = match self.registry.resource(kind_parsed, &name).await {
                    Ok(r) => resource_update(r),
                    Err(_) => ResourceUpdate {
                        kind,
                        name,
                        revision: event.data["revision"].as_i64().unwrap_or(0),
                        deleted: true,
                        ..Default::default()
                    },
                };
                Some(Ok(ServerMessage {
                    protocol: PROTOCOL,
                    resources: vec![update],
                    epoch: self.epoch.clone(),
                    ..Default::default()
                }))
            }
            _ => None,
        }
    }
}
