//! Destinations: one resilience stack (`ieum_resilience::stack::client`) per route rule and
//! backend (service and version subset), created on first use and kept while the
//! configuration stays the same. Discovery updates their endpoints in place (the balancer
//! keeps each endpoint's latency estimate and breaker); a configuration change replaces
//! them.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, RwLock};

use http::{Request, Response};
use ieum_client::Snapshot;
use ieum_resilience::balance::{BalancerHandle, Endpoint};
use ieum_resilience::retry::RetryBody;
use ieum_resilience::stack::{StackConfig, client};
use tower::util::BoxCloneSyncService;

use crate::body::{ProxyBody, RequestBody};
use crate::metrics::RouteMetrics;
use crate::upstream::{Clients, Upstream, Wire, authority};

/// The body the stack hands to endpoints.
pub(crate) type UpBody = RetryBody<RequestBody>;
/// A destination's stack: never fails (errors are answers with a reason).
pub(crate) type Stack = BoxCloneSyncService<Request<RequestBody>, Response<ProxyBody>, Infallible>;

/// Which stack a call uses.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct DestKey {
    /// Route resource name (empty without one) and rule index.
    pub(crate) route: String,
    pub(crate) rule: usize,
    /// The service called, and the version subset of its endpoints.
    pub(crate) service: String,
    pub(crate) version: Option<String>,
}

/// One destination.
pub(crate) struct Dest {
    pub(crate) key: DestKey,
    pub(crate) stack: Stack,
    handle: BalancerHandle<Upstream<UpBody>>,
    /// What the endpoints were last built from, so an unchanged snapshot changes nothing.
    last: Mutex<Vec<Signature>>,
    /// Recorded into by every call, registered when the destination was created.
    pub(crate) metrics: Arc<RouteMetrics>,
    /// What the stack was built from ([`crate::config::Config::inputs`]).
    pub(crate) inputs: String,
}

impl Dest {
    pub(crate) fn new(
        key: DestKey,
        config: &StackConfig,
        snapshot: &Snapshot,
        upstream: &Clients<UpBody>,
        metrics: Arc<RouteMetrics>,
        inputs: String,
    ) -> Dest {
        let (endpoints, signature) = endpoints(snapshot, &key, upstream);
        let (svc, handle) = client(config, endpoints);
        Dest {
            key,
            stack: BoxCloneSyncService::new(svc),
            handle,
            last: Mutex::new(signature),
            metrics,
            inputs,
        }
    }

    /// Takes the endpoints of `snapshot` when they changed (address, weight or zone
    /// included); the balancer keeps the state of endpoints that stay.
    pub(crate) fn update(&self, snapshot: &Snapshot, upstream: &Clients<UpBody>) {
        let (fresh, signature) = endpoints(snapshot, &self.key, upstream);
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if *last != signature {
            self.handle.update(fresh);
            *last = signature;
        }
    }
}

/// Whether `service` has an endpoint up running `version` (any when `None`).
pub(crate) fn has_up(snapshot: &Snapshot, service: &str, version: Option<&str>) -> bool {
    snapshot
        .up(service)
        .iter()
        .any(|e| version.is_none_or(|v| endpoint_version(e) == v))
}

fn endpoint_version(e: &ieum_client::Endpoint) -> &str {
    if e.version.is_empty() {
        e.metadata.get("version").map_or("", String::as_str)
    } else {
        &e.version
    }
}

/// The `up` endpoints of a destination. Their address and port are the other sidecar's
/// inbound listener (or the instance itself when it has no sidecar).
fn endpoints(
    snapshot: &Snapshot,
    key: &DestKey,
    upstream: &Clients<UpBody>,
) -> (Vec<Endpoint<Upstream<UpBody>>>, Vec<Signature>) {
    let eps: Vec<_> = snapshot
        .up(&key.service)
        .into_iter()
        .filter(|e| {
            key.version
                .as_deref()
                .is_none_or(|v| endpoint_version(e) == v)
        })
        .filter_map(|e| {
            let authority = authority(&e.address, e.port)?;
            let transport = upstream.transport(&key.service, &authority, &e.metadata);
            let mut ep = Endpoint::new(
                e.id.as_str(),
                Upstream {
                    client: upstream.clone(),
                    authority,
                    wire: Wire::of(&e.protocol, &e.metadata),
                    transport,
                },
            )
            .weight(e.weight);
            if !e.zone.is_empty() {
                ep = ep.zone(e.zone.as_str());
            }
            Some(ep)
        })
        .collect();
    let signature = eps
        .iter()
        .map(|e| {
            (
                e.id.to_string(),
                e.service.authority.to_string(),
                e.service.wire,
                e.weight,
                e.zone.as_deref().map(str::to_owned),
                format!("{:?}", e.service.transport),
            )
        })
        .collect();
    (eps, signature)
}

/// Id, authority, wire version, weight, zone and transport (the identity expected) of an
/// endpoint.
type Signature = (String, String, Wire, u32, Option<String>, String);

/// Destinations by key.
#[derive(Default)]
pub(crate) struct Dests {
    map: RwLock<HashMap<DestKey, Arc<Dest>>>,
}

impl Dests {
    pub(crate) fn get(&self, key: &DestKey) -> Option<Arc<Dest>> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    /// Inserts `make()` unless another request did first.
    pub(crate) fn get_or_insert(&self, key: DestKey, make: impl FnOnce() -> Dest) -> Arc<Dest> {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        map.entry(key).or_insert_with(|| Arc::new(make())).clone()
    }

    /// Keeps `dest` (carried over from the previous configuration).
    pub(crate) fn insert(&self, dest: Arc<Dest>) {
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(dest.key.clone(), dest);
    }

    pub(crate) fn all(&self) -> Vec<Arc<Dest>> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}
