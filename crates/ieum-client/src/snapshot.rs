//! The local snapshot: what the client knows of the services it calls and the resources
//! that concern it, updated by push-stream messages and persisted for restarts.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use ieum_wire::v1::{ServerMessage, ServiceUpdate};
use serde::{Deserialize, Serialize};

/// The format of a persisted snapshot; a file of another format is ignored, not misread.
pub const FORMAT: u32 = 1;

/// Everything the client knows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// Persisted format ([`FORMAT`]).
    pub format: u32,
    /// The server epoch the version belongs to.
    pub epoch: String,
    /// The registry version this snapshot reflects.
    pub version: u64,
    /// Services the client calls, by name.
    pub services: BTreeMap<String, Service>,
    /// Resources that concern the client, by `Kind/name`.
    pub resources: BTreeMap<String, Resource>,
}

/// One service's endpoints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    /// False when the server does not know the service (yet).
    pub known: bool,
    /// Endpoints by instance id.
    pub endpoints: BTreeMap<String, Endpoint>,
}

/// One instance of a service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// Instance id.
    pub id: String,
    /// Address.
    pub address: String,
    /// Port.
    pub port: u16,
    /// `http`, `h2`, `grpc` or `tcp`.
    pub protocol: String,
    /// `starting`, `up`, `draining` or `down`.
    pub state: String,
    /// Zone (empty when unknown).
    pub zone: String,
    /// Region.
    pub region: String,
    /// Version of the code.
    pub version: String,
    /// Relative share of traffic.
    pub weight: u32,
    /// Free-form metadata.
    pub metadata: BTreeMap<String, String>,
}

/// A configuration resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resource {
    /// Kind.
    pub kind: String,
    /// Name.
    pub name: String,
    /// Revision.
    pub revision: i64,
    /// The normalized spec.
    pub spec: serde_json::Value,
}

impl From<&ieum_wire::v1::Endpoint> for Endpoint {
    fn from(e: &ieum_wire::v1::Endpoint) -> Self {
        Endpoint {
            id: e.id.clone(),
            address: e.address.clone(),
            port: u16::try_from(e.port).unwrap_or(0),
            protocol: e.protocol.clone(),
            state: e.state.clone(),
            zone: e.zone.clone(),
            region: e.region.clone(),
            version: e.version.clone(),
            weight: e.weight,
            metadata: e.metadata.clone().into_iter().collect(),
        }
    }
}

impl Snapshot {
    /// A snapshot holding only `resources` (kind, name, spec; revision 1): what tests of
    /// code that reads resources start from.
    pub fn of_resources(resources: &[(&str, &str, serde_json::Value)]) -> Snapshot {
        let mut s = Snapshot::default();
        for (kind, name, spec) in resources {
            s.resources.insert(
                format!("{kind}/{name}"),
                Resource {
                    kind: (*kind).to_owned(),
                    name: (*name).to_owned(),
                    revision: 1,
                    spec: spec.clone(),
                },
            );
        }
        s
    }

    /// Applies one push-stream message.
    pub fn apply(&mut self, msg: &ServerMessage) {
        self.format = FORMAT;
        if !msg.epoch.is_empty() && msg.epoch != self.epoch {
            // Another server lifetime: versions start again, the old one means nothing.
            self.epoch.clone_from(&msg.epoch);
            self.version = msg.version;
        } else {
            self.version = self.version.max(msg.version);
        }
        for u in &msg.services {
            self.apply_service(u);
        }
        if msg.replace_resources {
            self.resources.clear();
        }
        for r in &msg.resources {
            let key = format!("{}/{}", r.kind, r.name);
            if r.deleted {
                self.resources.remove(&key);
            } else {
                let spec = serde_json::from_str(&r.spec_json).unwrap_or(serde_json::Value::Null);
                self.resources.insert(
                    key,
                    Resource {
                        kind: r.kind.clone(),
                        name: r.name.clone(),
                        revision: r.revision,
                        spec,
                    },
                );
            }
        }
    }

    fn apply_service(&mut self, u: &ServiceUpdate) {
        let service = self.services.entry(u.name.clone()).or_default();
        if u.replace {
            service.endpoints.clear();
        }
        service.known = !u.unknown;
        for id in &u.removed {
            service.endpoints.remove(id);
        }
        for e in &u.upserted {
            service.known = true;
            service.endpoints.insert(e.id.clone(), Endpoint::from(e));
        }
    }

    /// Endpoints of `service` that take traffic (`up`).
    pub fn up(&self, service: &str) -> Vec<&Endpoint> {
        self.services
            .get(service)
            .map(|s| s.endpoints.values().filter(|e| e.state == "up").collect())
            .unwrap_or_default()
    }

    /// Writes the snapshot to `path` atomically (a temporary file flushed to disk, then a
    /// rename), so neither a crash nor a power loss leaves half a file.
    pub fn save(&self, path: &Path) -> io::Result<()> {
        use std::io::Write;
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(self)?)?;
        f.sync_all()?;
        std::fs::rename(tmp, path)
    }

    /// Reads a snapshot saved by [`Snapshot::save`]; `None` when there is none or it is of
    /// another format.
    pub fn load(path: &Path) -> io::Result<Option<Snapshot>> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let snapshot: Snapshot = match serde_json::from_slice(&bytes) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable snapshot");
                return Ok(None);
            }
        };
        Ok((snapshot.format == FORMAT).then_some(snapshot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ieum_wire::v1::{Endpoint as WireEndpoint, ResourceUpdate};

    fn ep(id: &str, state: &str) -> WireEndpoint {
        WireEndpoint {
            id: id.into(),
            address: "10.0.0.1".into(),
            port: 80,
            state: state.into(),
            ..Default::default()
        }
    }

    #[test]
    fn messages_replace_upsert_and_remove() {
        let mut s = Snapshot::default();
        s.apply(&ServerMessage {
            version: 5,
            epoch: "e1".into(),
            services: vec![ServiceUpdate {
                name: "stock".into(),
                replace: true,
                upserted: vec![ep("a", "up"), ep("b", "down")],
                ..Default::default()
            }],
            resources: vec![ResourceUpdate {
                kind: "Route".into(),
                name: "r".into(),
                revision: 1,
                spec_json: "{\"service\":\"stock\"}".into(),
                deleted: false,
            }],
            replace_resources: true,
            ..Default::default()
        });
        assert_eq!(s.up("stock").len(), 1);
        assert_eq!(s.resources["Route/r"].spec["service"], "stock");
        s.apply(&ServerMessage {
            version: 7,
            services: vec![ServiceUpdate {
                name: "stock".into(),
                upserted: vec![ep("b", "up")],
                removed: vec!["a".into()],
                ..Default::default()
            }],
            resources: vec![ResourceUpdate {
                kind: "Route".into(),
                name: "r".into(),
                deleted: true,
                ..Default::default()
            }],
            ..Default::default()
        });
        assert_eq!(s.version, 7);
        assert_eq!(s.epoch, "e1");
        // A new epoch (restarted server) replaces the version instead of keeping the max.
        let mut restarted = s.clone();
        restarted.apply(&ServerMessage {
            version: 2,
            epoch: "e2".into(),
            ..Default::default()
        });
        assert_eq!((restarted.version, restarted.epoch.as_str()), (2, "e2"));
        assert_eq!(
            s.up("stock")
                .iter()
                .map(|e| e.id.as_str())
                .collect::<Vec<_>>(),
            ["b"]
        );
        assert!(s.resources.is_empty());
        s.apply(&ServerMessage {
            version: 8,
            services: vec![ServiceUpdate {
                name: "stock".into(),
                replace: true,
                ..Default::default()
            }],
            ..Default::default()
        });
        assert!(
            s.services["stock"].endpoints.is_empty(),
            "replace drops what was there"
        );
    }

    #[test]
    fn snapshots_persist_and_refuse_other_formats() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap.json");
        assert_eq!(Snapshot::load(&path).unwrap(), None);
        let mut s = Snapshot::default();
        s.apply(&ServerMessage {
            version: 3,
            services: vec![ServiceUpdate {
                name: "stock".into(),
                upserted: vec![ep("a", "up")],
                ..Default::default()
            }],
            ..Default::default()
        });
        s.save(&path).unwrap();
        assert_eq!(Snapshot::load(&path).unwrap(), Some(s.clone()));
        s.format = 99;
        s.save(&path).unwrap();
        assert_eq!(Snapshot::load(&path).unwrap(), None);
        std::fs::write(&path, "{not json").unwrap();
        assert_eq!(Snapshot::load(&path).unwrap(), None);
    }
}
