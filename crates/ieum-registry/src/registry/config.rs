//! Configuration resources: apply (validated beforehand, all or nothing, with a revision,
//! a diff and a `config.changed` event on the timeline of every service concerned),
//! delete, and reads.

use std::collections::BTreeSet;

use ieum_model::resource::{self, Checked, Kind};
use ieum_model::{EventKind, Name, ServiceSpec, ValidationError};
use ieum_store::{Change, Revision, StoredResource};
use serde::Serialize;

use super::{Registry, define_service, event};
use crate::RegistryError;

/// The kinds every gateway receives whole ([`Registry::gateway_resources`]): what it
/// publishes, who may use it and, to check their keys, the hashes of those keys (which no
/// sidecar ever receives).
pub const GATEWAY_KINDS: [Kind; 4] = [Kind::Api, Kind::ApiConsumer, Kind::ApiKey, Kind::Flow];

/// What applying one resource did (or, in a dry run, would do).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It did not exist.
    Created,
    /// It changed.
    Configured,
    /// It was already exactly so; nothing was written.
    Unchanged,
    /// It was deleted.
    Deleted,
}

/// The result of applying or deleting one resource.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Applied {
    /// Kind.
    pub kind: String,
    /// Name.
    pub name: String,
    /// What happened.
    pub outcome: Outcome,
    /// The revision now current (the one that would be, in a dry run).
    pub revision: i64,
    /// Field by field, what changed (`labels.…`, `spec.…`).
    pub diff: Vec<resource::Change>,
    /// Problems that do not stop the apply, such as a reference to a service that is not
    /// registered yet.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<ValidationError>,
}

/// A resource to apply with what is known about it before taking the lock.
struct Plan {
    checked: Checked,
    current: Option<StoredResource>,
    next_revision: i64,
    services: Vec<Name>,
}

fn envelope(
    labels: &std::collections::BTreeMap<String, String>,
    spec: &serde_json::Value,
) -> serde_json::Value {
    serde_json::json!({"labels": labels, "spec": spec})
}

impl Registry {
    /// Applies checked resources in one transaction. With `dry_run`, reports what would
    /// change and writes nothing.
    pub async fn apply(
        &self,
        resources: Vec<Checked>,
        author: &str,
        dry_run: bool,
    ) -> Result<Vec<Applied>, RegistryError> {
        let mut seen = BTreeSet::new();
        let mut dupes = Vec::new();
        for r in &resources {
            if !seen.insert((r.kind, r.name.clone())) {
                dupes.push(
                    ValidationError::new("E2010", "metadata.name", "listed twice in one apply")
                        .in_resource(r.id()),
                );
            }
        }
        if !dupes.is_empty() {
            return Err(RegistryError::Invalid(dupes));
        }
        let _one_at_a_time = self.core.config_lock.lock().await;
        let store = self.core.store.clone();
        let mut plans = Vec::with_capacity(resources.len());
        for checked in &resources {
            let current = store
                .resource(checked.kind.as_str(), checked.name.as_str())
                .await?;
            let last = store
                .history(checked.kind.as_str(), checked.name.as_str())
                .await?
                .last()
                .map_or(0, |r| r.revision);
            let mut services = self.services_concerned(checked, &resources).await?;
            // A resource moved to another target must also leave its old one's clients.
            if let Some(cur) = &current {
                for s in self.stored_services_concerned(checked.kind, cur).await? {
                    if !services.contains(&s) {
                        services.push(s);
                    }
                }
            }
            plans.push(Plan {
                checked: checked.clone(),
                current,
                next_revision: last + 1,
                services,
            });
        }

        let now = self.core.clock.now();
        let mut results = Vec::with_capacity(plans.len());
        let rx = {
            let mut st = self.core.lock();
            let mut changes = Vec::new();
            let defined: BTreeSet<&str> = resources
                .iter()
                .filter(|r| r.kind == Kind::Service)
                .map(|r| r.name.as_str())
                .collect();
            for plan in &plans {
                let c = &plan.checked;
                let before = plan.current.as_ref().map_or(serde_json::json!({}), |cur| {
                    envelope(&cur.labels, &cur.spec)
                });
                let diff = resource::diff(&before, &envelope(&c.labels, &c.spec), "");
                let outcome = match (&plan.current, diff.is_empty()) {
                    (None, _) => Outcome::Created,
                    (Some(_), true) => Outcome::Unchanged,
                    (Some(_), false) => Outcome::Configured,
                };
                let warnings = c
                    .services
                    .iter()
                    .filter(|s| !st.services.contains_key(s.as_str()) && !defined.contains(s.as_str()))
                    .map(|s| {
                        ValidationError::new(
                            "W2001",
                            "spec",
                            format!("service `{s}` is not registered yet; calls to it will fail until it is"),
                        )
                        .in_resource(c.id())
                    })
                    .collect();
                let revision = match outcome {
                    Outcome::Unchanged => plan.current.as_ref().map_or(0, |cur| cur.revision),
                    _ => plan.next_revision,
                };
                if !dry_run && outcome != Outcome::Unchanged {
                    if c.kind == Kind::Service {
                        let spec: ServiceSpec =
                            serde_json::from_value(c.spec.clone()).map_err(|e| {
                                RegistryError::Invalid(vec![ValidationError::new(
                                    "E1005",
                                    "spec",
                                    e.to_string(),
                                )])
                            })?;
                        changes.extend(define_service(
                            &mut st,
                            c.name.as_str(),
                            spec,
                            c.labels.clone(),
                            author,
                            now,
                            false,
                        ));
                    } else {
                        changes.push(Change::PutResource {
                            kind: c.kind.as_str().to_owned(),
                            name: c.name.to_string(),
                            labels: c.labels.clone(),
                            spec: c.spec.clone(),
                            author: author.to_owned(),
                            time: now,
                        });
                        let verb = if outcome == Outcome::Created {
                            "created"
                        } else {
                            "changed"
                        };
                        changes.extend(config_events(
                            &plan.services,
                            c.kind,
                            c.name.as_str(),
                            verb,
                            revision,
                            &diff,
                            author,
                            now,
                        ));
                    }
                }
                results.push(Applied {
                    kind: c.kind.as_str().to_owned(),
                    name: c.name.to_string(),
                    outcome,
                    revision,
                    diff,
                    warnings,
                });
            }
            if changes.is_empty() {
                return Ok(results);
            }
            self.core.send_acked(changes)
        };
        self.core.wait(rx).await?;
        Ok(results)
    }

    /// Deletes a resource. A service can only be deleted once it has no instances.
    pub async fn delete_resource(
        &self,
        kind: Kind,
        name: &str,
        author: &str,
    ) -> Result<Applied, RegistryError> {
        let _one_at_a_time = self.core.config_lock.lock().await;
        let store = self.core.store.clone();
        let Some(current) = store.resource(kind.as_str(), name).await? else {
            return Err(RegistryError::NotFound(format!(
                "{kind}/{name} does not exist"
            )));
        };
        let last = store
            .history(kind.as_str(), name)
            .await?
            .last()
            .map_or(current.revision, |r| r.revision);
        let services = self.stored_services_concerned(kind, &current).await?;
        let diff = resource::diff(
            &envelope(&current.labels, &current.spec),
            &serde_json::json!({}),
            "",
        );
        let now = self.core.clock.now();
        let rx = {
            let mut st = self.core.lock();
            if kind == Kind::Service {
                let instances = st.services.get(name).map_or(0, |s| s.instances.len());
                if instances > 0 {
                    return Err(RegistryError::Conflict(format!(
                        "service `{name}` still has {instances} instances: deregister them first"
                    )));
                }
                st.services.remove(name);
                st.index += 1;
            }
            let mut changes = vec![Change::DeleteResource {
                kind: kind.as_str().to_owned(),
                name: name.to_owned(),
                author: author.to_owned(),
                time: now,
            }];
            changes.extend(config_events(
                &services,
                kind,
                name,
                "deleted",
                last + 1,
                &diff,
                author,
                now,
            ));
            self.core.send_acked(changes)
        };
        self.core.wait(rx).await?;
        Ok(Applied {
            kind: kind.as_str().to_owned(),
            name: name.to_owned(),
            outcome: Outcome::Deleted,
            revision: last + 1,
            diff,
            warnings: Vec::new(),
        })
    }

    /// Every resource of a kind.
    pub async fn resources(&self, kind: Kind) -> Result<Vec<StoredResource>, RegistryError> {
        Ok(self.core.store.resources(kind.as_str()).await?)
    }

    /// One resource.
    pub async fn resource(&self, kind: Kind, name: &str) -> Result<StoredResource, RegistryError> {
        self.core
            .store
            .resource(kind.as_str(), name)
            .await?
            .ok_or_else(|| RegistryError::NotFound(format!("{kind}/{name} does not exist")))
    }

    /// Every revision of a resource, oldest first.
    pub async fn history(&self, kind: Kind, name: &str) -> Result<Vec<Revision>, RegistryError> {
        let revisions = self.core.store.history(kind.as_str(), name).await?;
        if revisions.is_empty() {
            return Err(RegistryError::NotFound(format!(
                "{kind}/{name} has no history"
            )));
        }
        Ok(revisions)
    }

    /// What a gateway publishes: every `Api`, `ApiConsumer`, `ApiKey` and `Flow`.
    pub async fn gateway_resources(&self) -> Result<Vec<StoredResource>, RegistryError> {
        let store = &self.core.store;
        let mut out = Vec::new();
        for kind in GATEWAY_KINDS {
            out.extend(store.resources(kind.as_str()).await?);
        }
        Ok(out)
    }

    /// Every configuration resource that concerns any of `services` (routes to or from
    /// them, policies targeting them or their routes), for push-stream snapshots.
    pub async fn resources_for(
        &self,
        services: &BTreeSet<String>,
    ) -> Result<Vec<StoredResource>, RegistryError> {
        let store = &self.core.store;
        let routes = store.resources(Kind::Route.as_str()).await?;
        let route_service: std::collections::BTreeMap<&str, &str> = routes
            .iter()
            .filter_map(|r| r.spec["service"].as_str().map(|s| (r.name.as_str(), s)))
            .collect();
        let mut out = Vec::new();
        for kind in Kind::ALL {
            let list = if kind == Kind::Route {
                routes.clone()
            } else {
                store.resources(kind.as_str()).await?
            };
            for r in list {
                let names =
                    |field: &str| r.spec[field].as_str().is_some_and(|s| services.contains(s));
                let relevant = match kind {
                    Kind::Service => services.contains(&r.name),
                    // Any app may publish through any PubSub (a spec holds no secret).
                    Kind::PubSub => true,
                    Kind::Subscription => names("service"),
                    // Input bindings go to their service; output bindings to the service
                    // they name, or to every client when they name none.
                    Kind::Binding => names("service") || r.spec["service"].is_null(),
                    // Run by the server (sagas, flows) or published by gateways
                    // (`gateway_resources`): no sidecar needs them, and none may hold
                    // API keys' hashes.
                    Kind::Saga | Kind::Flow | Kind::Api | Kind::ApiConsumer | Kind::ApiKey => false,
                    Kind::Route => {
                        r.spec["service"]
                            .as_str()
                            .is_some_and(|s| services.contains(s))
                            || r.spec["rules"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .any(|rule| {
                                    rule["backends"].as_array().into_iter().flatten().any(|b| {
                                        b["service"].as_str().is_some_and(|s| services.contains(s))
                                    })
                                })
                    }
                    _ => {
                        let target = &r.spec["targetRef"];
                        let name = target["name"].as_str().unwrap_or_default();
                        match target["kind"].as_str() {
                            Some("Service") => services.contains(name),
                            Some("Route") => route_service
                                .get(name)
                                .is_some_and(|s| services.contains(*s)),
                            _ => false,
                        }
                    }
                };
                if relevant {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }

    /// The services a stored resource concerns (as `services_concerned` for its spec).
    async fn stored_services_concerned(
        &self,
        kind: Kind,
        stored: &StoredResource,
    ) -> Result<Vec<Name>, RegistryError> {
        let checked = resource::check(&resource::Resource {
            api_version: resource::API_VERSION.into(),
            kind: kind.as_str().into(),
            metadata: resource::Metadata {
                name: stored.name.clone(),
                labels: stored.labels.clone(),
            },
            spec: stored.spec.clone(),
        });
        match checked {
            Ok(c) => self.services_concerned(&c, &[]).await,
            Err(_) => Ok(Vec::new()),
        }
    }

    /// The services whose timelines record changes to `c`: those it names, or, for a
    /// policy targeting a route, the route's service (from this batch or the store).
    async fn services_concerned(
        &self,
        c: &Checked,
        batch: &[Checked],
    ) -> Result<Vec<Name>, RegistryError> {
        if !c.services.is_empty() {
            return Ok(c.services.clone());
        }
        if c.kind == Kind::PubSub {
            return self.pubsub_users(c.name.as_str(), batch).await;
        }
        let target = &c.spec["targetRef"];
        if target["kind"] != "Route" {
            return Ok(Vec::new());
        }
        let route = target["name"].as_str().unwrap_or_default();
        let spec = match batch
            .iter()
            .find(|r| r.kind == Kind::Route && r.name.as_str() == route)
        {
            Some(r) => Some(r.spec.clone()),
            None => self
                .core
                .store
                .resource("Route", route)
                .await?
                .map(|r| r.spec),
        };
        Ok(spec
            .and_then(|s| s["service"].as_str().and_then(|n| Name::parse(n).ok()))
            .into_iter()
            .collect())
    }
}

impl Registry {
    /// The services whose `Subscription`s and `Binding`s use the PubSub `name` (from this
    /// batch, then the store): a change of the PubSub reaches their sidecars, which
    /// reconnect, and is recorded on their timelines.
    async fn pubsub_users(
        &self,
        name: &str,
        batch: &[Checked],
    ) -> Result<Vec<Name>, RegistryError> {
        let mut out: Vec<Name> = Vec::new();
        let mut add = |spec: &serde_json::Value| {
            if spec["pubsub"].as_str() == Some(name)
                && let Some(s) = spec["service"].as_str().and_then(|s| Name::parse(s).ok())
                && !out.contains(&s)
            {
                out.push(s);
            }
        };
        for kind in [Kind::Subscription, Kind::Binding] {
            let in_batch: BTreeSet<&str> = batch
                .iter()
                .filter(|r| r.kind == kind)
                .map(|r| {
                    add(&r.spec);
                    r.name.as_str()
                })
                .collect();
            for r in self.core.store.resources(kind.as_str()).await? {
                if !in_batch.contains(r.name.as_str()) {
                    add(&r.spec);
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

/// One `config.changed` event per service concerned (one without a service when none is).
#[allow(clippy::too_many_arguments)]
fn config_events(
    services: &[Name],
    kind: Kind,
    name: &str,
    verb: &str,
    revision: i64,
    diff: &[resource::Change],
    author: &str,
    now: ieum_model::Timestamp,
) -> Vec<Change> {
    let mut message = format!("{kind}/{name} {verb} by {author} (revision {revision})");
    if verb == "changed" {
        let paths: Vec<&str> = diff.iter().take(3).map(|c| c.path.as_str()).collect();
        message += &format!(": {}", paths.join(", "));
        if diff.len() > 3 {
            message += &format!(" and {} more", diff.len() - 3);
        }
    }
    let data = serde_json::json!({"kind": kind.as_str(), "name": name, "revision": revision, "diff": diff});
    if services.is_empty() {
        return vec![Change::Event(ieum_store::NewEvent {
            time: now,
            kind: EventKind::ConfigChanged,
            service: None,
            instance: None,
            message,
            author: author.to_owned(),
            data,
        })];
    }
    services
        .iter()
        .map(|s| {
            event(
                now,
                EventKind::ConfigChanged,
                s.as_str(),
                None,
                message.clone(),
                author,
                data.clone(),
            )
        })
        .collect()
}
