//! Instances of a service: how they register, what state they are in, how they are checked.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::service::valid_host;
use crate::{Duration, Timestamp, Validator};

/// Default lease: an instance that does not heartbeat for this long goes `down`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(15);
/// Shortest lease accepted; shorter leases cost heartbeats without making failover faster.
pub const MIN_TTL: Duration = Duration::from_secs(1);
/// Longest lease accepted.
pub const MAX_TTL: Duration = Duration::from_secs(3600);
/// Default time an instance may stay `down` before it is removed.
pub const DEFAULT_DEREGISTER_AFTER: Duration = Duration::from_secs(600);
/// Longest time an instance may stay `down` before removal (also keeps deadline arithmetic
/// far from overflow).
pub const MAX_DEREGISTER_AFTER: Duration = Duration::from_secs(30 * 24 * 3600);
/// Longest instance id.
pub const MAX_ID_LEN: usize = 128;

/// Lifecycle states, in words people use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    /// Registered with an active check that has not passed yet: receives no traffic.
    Starting,
    /// Healthy and receiving traffic.
    Up,
    /// Taken out of rotation on purpose (deploys, maintenance); finishes what it has.
    Draining,
    /// Missed its lease or failed its check: receives no traffic.
    Down,
}

impl InstanceState {
    /// The lowercase name used in JSON, queries and events.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Starting => "starting",
            InstanceState::Up => "up",
            InstanceState::Draining => "draining",
            InstanceState::Down => "down",
        }
    }

    /// Parses the lowercase name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "starting" => Some(InstanceState::Starting),
            "up" => Some(InstanceState::Up),
            "draining" => Some(InstanceState::Draining),
            "down" => Some(InstanceState::Down),
            _ => None,
        }
    }
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The application protocol an instance serves.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1.
    #[default]
    Http,
    /// HTTP/2 (cleartext or TLS).
    H2,
    /// gRPC over HTTP/2.
    Grpc,
    /// Opaque TCP.
    Tcp,
}

/// An active health check the server runs against an instance.
///
/// Exactly one of `http`, `tcp` or `grpc` is set. The first check runs as soon as the
/// instance registers; until it passes the instance is `starting`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Check {
    /// `GET` this path on the instance; a 2xx answer passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// Open a TCP connection to the instance's port; connecting passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<bool>,
    /// Call `grpc.health.v1.Health/Check` for this service name (empty for the server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<String>,
    /// Time between checks.
    #[serde(default = "default_check_interval")]
    pub interval: Duration,
    /// How long one check may take before it counts as failed.
    #[serde(default = "default_check_timeout")]
    pub timeout: Duration,
}

fn default_check_interval() -> Duration {
    Duration::from_secs(10)
}

fn default_check_timeout() -> Duration {
    Duration::from_secs(2)
}

/// What a [`Check`] does, once validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// `GET` this path.
    Http(String),
    /// Connect to the port.
    Tcp,
    /// gRPC health protocol for this service name.
    Grpc(String),
}

impl Check {
    /// What this check does; `None` unless exactly one kind is set (see `validate`).
    pub fn kind(&self) -> Option<CheckKind> {
        match (&self.http, self.tcp, &self.grpc) {
            (Some(path), None | Some(false), None) => Some(CheckKind::Http(path.clone())),
            (None, Some(true), None) => Some(CheckKind::Tcp),
            (None, None | Some(false), Some(svc)) => Some(CheckKind::Grpc(svc.clone())),
            _ => None,
        }
    }

    fn validate(&self, v: &mut Validator) {
        if self.kind().is_none() {
            v.error(
                "E1201",
                "",
                "set exactly one of `http: PATH`, `tcp: true` or `grpc: SERVICE`",
            );
        }
        if let Some(path) = &self.http {
            v.check(path.starts_with('/'), "E1202", "http", || {
                format!("`{path}` must be a path starting with `/`, like `/healthz`")
            });
        }
        v.check(
            self.interval >= Duration::from_secs(1) && self.interval <= Duration::from_secs(3600),
            "E1203",
            "interval",
            || format!("must be between 1s and 1h (is {})", self.interval),
        );
        v.check(
            !self.timeout.is_zero() && self.timeout <= self.interval,
            "E1204",
            "timeout",
            || {
                format!(
                    "must be above 0s and at most the interval {} (is {})",
                    self.interval, self.timeout
                )
            },
        );
    }
}

/// The body of `POST /v1/services/{name}/instances`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstanceRegistration {
    /// Stable id of the instance; the server generates one when absent. Registering the
    /// same id again updates the instance instead of adding one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// IP address or DNS name where the instance listens.
    pub address: String,
    /// Port where the instance listens (1–65535).
    pub port: i64,
    /// Application protocol.
    #[serde(default)]
    pub protocol: Protocol,
    /// Availability zone, for zone-aware balancing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Cluster (a Kubernetes cluster, a data centre, a VM group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Where it runs: `kubernetes`, `vm`, `local`, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// Version of the code it runs (canary routing selects on it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Free-form key/value pairs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Relative share of traffic (0 takes none), default 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Lease: without a heartbeat for this long the instance goes `down`. Ignored when an
    /// active `check` is set, because the check then decides liveness.
    #[serde(default = "default_ttl")]
    pub ttl: Duration,
    /// How long the instance may stay `down` before it is removed.
    #[serde(default = "default_deregister_after")]
    pub deregister_after: Duration,
    /// Active check run by the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<Check>,
}

fn default_weight() -> u32 {
    1
}

fn default_ttl() -> Duration {
    DEFAULT_TTL
}

fn default_deregister_after() -> Duration {
    DEFAULT_DEREGISTER_AFTER
}

impl InstanceRegistration {
    /// A registration with defaults for everything but the address.
    pub fn new(address: impl Into<String>, port: u16) -> Self {
        InstanceRegistration {
            id: None,
            address: address.into(),
            port: i64::from(port),
            protocol: Protocol::Http,
            zone: None,
            region: None,
            cluster: None,
            platform: None,
            version: None,
            metadata: BTreeMap::new(),
            weight: default_weight(),
            ttl: DEFAULT_TTL,
            deregister_after: DEFAULT_DEREGISTER_AFTER,
            check: None,
        }
    }

    /// The port, once validated.
    pub fn port_u16(&self) -> u16 {
        u16::try_from(self.port).unwrap_or(0)
    }

    /// Checks every field; paths are relative to `v`'s prefix.
    pub fn validate(&self, v: &mut Validator) {
        if let Some(id) = &self.id {
            v.check(valid_instance_id(id), "E1205", "id", || {
                format!("`{id}`: ids are 1 to {MAX_ID_LEN} characters of letters, digits, `.`, `_`, `:` and `-`")
            });
        }
        v.check(valid_host(&self.address), "E1206", "address", || {
            format!("`{}` is not an IP address or DNS name", self.address)
        });
        v.check((1..=65535).contains(&self.port), "E1207", "port", || {
            format!("must be between 1 and 65535 (is {})", self.port)
        });
        for (field, value) in [
            ("zone", &self.zone),
            ("region", &self.region),
            ("cluster", &self.cluster),
            ("platform", &self.platform),
        ] {
            if let Some(value) = value {
                v.check(valid_label(value), "E1208", field, || {
                    format!("`{value}`: use 1 to 63 letters, digits, `.`, `_` or `-`")
                });
            }
        }
        if let Some(version) = &self.version {
            v.check(
                !version.is_empty() && version.len() <= 128,
                "E1209",
                "version",
                || "must be 1 to 128 characters".into(),
            );
        }
        v.check(self.metadata.len() <= 64, "E1210", "metadata", || {
            format!("at most 64 entries (has {})", self.metadata.len())
        });
        for (k, val) in &self.metadata {
            v.check(
                !k.is_empty() && k.len() <= 128 && val.len() <= 1024,
                "E1210",
                &format!("metadata.{k}"),
                || "keys are 1 to 128 characters, values at most 1024".into(),
            );
        }
        v.check(self.weight <= 10_000, "E1211", "weight", || {
            format!("must be between 0 and 10000 (is {})", self.weight)
        });
        v.check(
            self.ttl >= MIN_TTL && self.ttl <= MAX_TTL,
            "E1212",
            "ttl",
            || format!("must be between {MIN_TTL} and {MAX_TTL} (is {})", self.ttl),
        );
        v.check(
            self.deregister_after >= Duration::from_secs(1)
                && self.deregister_after <= MAX_DEREGISTER_AFTER,
            "E1213",
            "deregisterAfter",
            || {
                format!(
                    "must be between 1s and {MAX_DEREGISTER_AFTER} (is {})",
                    self.deregister_after
                )
            },
        );
        if let Some(check) = &self.check {
            v.nested("check", |v| check.validate(v));
            // Behind a sidecar with a mesh identity the port answers mTLS only: the
            // sidecar reports the app's health itself (heartbeats, `up`/`down`).
            v.check(
                !self.metadata.contains_key("identity")
                    || matches!(check.kind(), Some(CheckKind::Tcp) | None),
                "E1216",
                "check",
                || {
                    "this instance has a mesh identity (metadata.identity), so its port answers \
                     mTLS only and the server cannot run an HTTP or gRPC check on it: its sidecar \
                     reports its health with heartbeats; leave `check` out, or use `check.tcp`"
                        .into()
                },
            );
        }
    }
}

/// Whether `id` is a valid instance id.
pub fn valid_instance_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
}

fn valid_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The outcome of the last active check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckResult {
    /// When the check finished.
    pub at: Timestamp,
    /// Whether it passed.
    pub passed: bool,
    /// What the check saw (status line, error), for people debugging.
    pub output: String,
}

/// An instance as the registry knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    /// Instance id, unique within its service.
    pub id: String,
    /// Where it listens.
    pub address: String,
    /// Port where it listens.
    pub port: u16,
    /// Application protocol.
    pub protocol: Protocol,
    /// Availability zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Platform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// Version of the code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Free-form key/value pairs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Relative share of traffic.
    pub weight: u32,
    /// Current state.
    pub state: InstanceState,
    /// Set when an operator drained the instance: it stays out of rotation through a
    /// `down` and back, until set `up` again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drained: bool,
    /// Why it is in that state, in words (`"registered"`, `"missed heartbeats for 15s"`).
    pub state_reason: String,
    /// When the state last changed.
    pub state_since: Timestamp,
    /// When it first registered.
    pub registered_at: Timestamp,
    /// When it last became `up`; absent unless `up` or `draining`. Uptime is now minus this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up_since: Option<Timestamp>,
    /// Last heartbeat seen (kept in memory only: after a server restart it is the time the
    /// server restored the instance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<Timestamp>,
    /// Lease length.
    pub ttl: Duration,
    /// How long it may stay `down` before removal.
    pub deregister_after: Duration,
    /// Active check, when the server checks it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<Check>,
    /// Outcome of the last active check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check: Option<CheckResult>,
}

impl Instance {
    /// How long it has been up at `now`, if it is up or draining.
    pub fn uptime(&self, now: Timestamp) -> Option<Duration> {
        self.up_since.map(|since| now.since(since))
    }

    /// Whether the registration describes this instance exactly (re-registering the same
    /// thing is a no-op).
    pub fn matches(&self, reg: &InstanceRegistration) -> bool {
        self.address == reg.address
            && i64::from(self.port) == reg.port
            && self.protocol == reg.protocol
            && self.zone == reg.zone
            && self.region == reg.region
            && self.cluster == reg.cluster
            && self.platform == reg.platform
            && self.version == reg.version
            && self.metadata == reg.metadata
            && self.weight == reg.weight
            && self.ttl == reg.ttl
            && self.deregister_after == reg.deregister_after
            && self.check == reg.check
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(reg: &InstanceRegistration) -> Vec<String> {
        let mut v = Validator::new("");
        reg.validate(&mut v);
        v.finish()
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|e| format!("{} {}", e.code, e.field))
            .collect()
    }

    #[test]
    fn defaults_apply() {
        let reg: InstanceRegistration =
            serde_json::from_str(r#"{"address": "10.0.0.1", "port": 8080}"#).unwrap();
        assert_eq!(reg.ttl, DEFAULT_TTL);
        assert_eq!(reg.deregister_after, DEFAULT_DEREGISTER_AFTER);
        assert_eq!(reg.weight, 1);
        assert_eq!(reg.protocol, Protocol::Http);
        assert!(errors(&reg).is_empty());
    }

    #[test]
    fn bad_fields_are_each_reported() {
        let mut reg = InstanceRegistration::new("not a host", 80);
        reg.id = Some("has space".into());
        reg.port = 70000;
        reg.zone = Some("eu west".into());
        reg.weight = 20_000;
        reg.ttl = Duration::from_millis(500);
        reg.check = Some(Check {
            http: Some("healthz".into()),
            tcp: Some(true),
            grpc: None,
            interval: Duration::from_millis(10),
            timeout: Duration::ZERO,
        });
        assert_eq!(
            errors(&reg),
            [
                "E1205 id",
                "E1206 address",
                "E1207 port",
                "E1208 zone",
                "E1211 weight",
                "E1212 ttl",
                "E1201 check",
                "E1202 check.http",
                "E1203 check.interval",
                "E1204 check.timeout",
            ]
        );
    }

    #[test]
    fn an_instance_with_a_mesh_identity_takes_only_tcp_checks() {
        let mut reg: InstanceRegistration = serde_json::from_str(
            r#"{"address": "10.0.0.1", "port": 7711, "check": {"http": "/healthz"},
                "metadata": {"identity": "spiffe://ieum.local/svc/orders"}}"#,
        )
        .unwrap();
        assert_eq!(errors(&reg), ["E1216 check"]);
        reg.check = Some(serde_json::from_str(r#"{"grpc": ""}"#).unwrap());
        assert_eq!(errors(&reg), ["E1216 check"]);
        reg.check = Some(serde_json::from_str(r#"{"tcp": true}"#).unwrap());
        assert!(errors(&reg).is_empty());
        // Without an identity, an HTTP check is fine.
        reg.metadata.clear();
        reg.check = Some(serde_json::from_str(r#"{"http": "/healthz"}"#).unwrap());
        assert!(errors(&reg).is_empty());
    }

    #[test]
    fn check_kinds() {
        let http: Check = serde_json::from_str(r#"{"http": "/healthz"}"#).unwrap();
        assert_eq!(http.kind(), Some(CheckKind::Http("/healthz".into())));
        assert_eq!(http.interval, Duration::from_secs(10));
        let tcp: Check =
            serde_json::from_str(r#"{"tcp": true, "interval": "5s", "timeout": "1s"}"#).unwrap();
        assert_eq!(tcp.kind(), Some(CheckKind::Tcp));
        let grpc: Check = serde_json::from_str(r#"{"grpc": ""}"#).unwrap();
        assert_eq!(grpc.kind(), Some(CheckKind::Grpc(String::new())));
        let none: Check = serde_json::from_str(r#"{"tcp": false}"#).unwrap();
        assert_eq!(none.kind(), None);
    }
}
