//! Events: the durable record of every change of state.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// What happened. The dotted names are stable: the UI, the CLI and users' scripts filter on
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum EventKind {
    /// A service was defined (explicitly or by its first instance).
    #[serde(rename = "service.created")]
    ServiceCreated,
    /// A service's definition changed.
    #[serde(rename = "service.updated")]
    ServiceUpdated,
    /// An instance registered for the first time.
    #[serde(rename = "instance.registered")]
    InstanceRegistered,
    /// A registered instance re-registered with different details.
    #[serde(rename = "instance.updated")]
    InstanceUpdated,
    /// An instance became `up` (first check passed, heartbeats resumed, drain ended).
    #[serde(rename = "instance.up")]
    InstanceUp,
    /// An instance went `down` (missed its lease or failed its check).
    #[serde(rename = "instance.down")]
    InstanceDown,
    /// An instance was put into `draining`.
    #[serde(rename = "instance.draining")]
    InstanceDraining,
    /// An instance deregistered itself (or an operator removed it).
    #[serde(rename = "instance.deregistered")]
    InstanceDeregistered,
    /// An instance stayed `down` longer than its `deregisterAfter` and was removed.
    #[serde(rename = "instance.expired")]
    InstanceExpired,
    /// Too many instances missed heartbeats at once: removal is suspended.
    #[serde(rename = "registry.protection.entered")]
    ProtectionEntered,
    /// Heartbeats recovered: removal of expired instances resumes.
    #[serde(rename = "registry.protection.left")]
    ProtectionLeft,
    /// The server started (and restored this many instances).
    #[serde(rename = "registry.started")]
    RegistryStarted,
    /// A configuration resource that concerns the service was created, changed or deleted
    /// (the diff and the author are in the event).
    #[serde(rename = "config.changed")]
    ConfigChanged,
    /// A caller's circuit breaker towards another service changed state (reported by its
    /// sidecar, coalesced so an outage is a few events).
    #[serde(rename = "breaker.changed")]
    BreakerChanged,
    /// A consumer's sidecar sent an event to the dead-letter topic (retries exhausted, the
    /// app rejected it or answered `DROP`); reported with the event's id and the reason.
    #[serde(rename = "event.dead_lettered")]
    EventDeadLettered,
    /// A consumer's sidecar discarded an event (no dead-letter topic was set).
    #[serde(rename = "event.dropped")]
    EventDropped,
    /// A service's sidecar denied calls by authorization (an `AuthorizationPolicy` rule or
    /// default); reported as samples with the caller, request, policy, rule and count.
    #[serde(rename = "authz.denied")]
    AuthzDenied,
    /// An API token was created (on its service's timeline when it is bound to one); the
    /// author is who created it, the data its name, role and expiry, never the secret.
    #[serde(rename = "token.created")]
    TokenCreated,
    /// An API token was revoked: it no longer authenticates, and certificates it enrolled
    /// are no longer renewed.
    #[serde(rename = "token.revoked")]
    TokenRevoked,
}

impl EventKind {
    /// Every kind, for documentation and filters.
    pub const ALL: [EventKind; 19] = [
        EventKind::ServiceCreated,
        EventKind::ServiceUpdated,
        EventKind::InstanceRegistered,
        EventKind::InstanceUpdated,
        EventKind::InstanceUp,
        EventKind::InstanceDown,
        EventKind::InstanceDraining,
        EventKind::InstanceDeregistered,
        EventKind::InstanceExpired,
        EventKind::ProtectionEntered,
        EventKind::ProtectionLeft,
        EventKind::RegistryStarted,
        EventKind::ConfigChanged,
        EventKind::BreakerChanged,
        EventKind::EventDeadLettered,
        EventKind::EventDropped,
        EventKind::AuthzDenied,
        EventKind::TokenCreated,
        EventKind::TokenRevoked,
    ];

    /// The dotted name, e.g. `instance.down`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::ServiceCreated => "service.created",
            EventKind::ServiceUpdated => "service.updated",
            EventKind::InstanceRegistered => "instance.registered",
            EventKind::InstanceUpdated => "instance.updated",
            EventKind::InstanceUp => "instance.up",
            EventKind::InstanceDown => "instance.down",
            EventKind::InstanceDraining => "instance.draining",
            EventKind::InstanceDeregistered => "instance.deregistered",
            EventKind::InstanceExpired => "instance.expired",
            EventKind::ProtectionEntered => "registry.protection.entered",
            EventKind::ProtectionLeft => "registry.protection.left",
            EventKind::RegistryStarted => "registry.started",
            EventKind::ConfigChanged => "config.changed",
            EventKind::BreakerChanged => "breaker.changed",
            EventKind::EventDeadLettered => "event.dead_lettered",
            EventKind::EventDropped => "event.dropped",
            EventKind::AuthzDenied => "authz.denied",
            EventKind::TokenCreated => "token.created",
            EventKind::TokenRevoked => "token.revoked",
        }
    }

    /// Parses a dotted name.
    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One durable event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// Position in the event log; increases with every event, so it is also a cursor.
    pub id: i64,
    /// When it happened.
    pub time: Timestamp,
    /// What happened.
    pub kind: EventKind,
    /// The service concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The instance concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Why, in words: the check output, the missed lease, who drained it.
    pub message: String,
    /// Who caused it: `local` on a loopback server, a token's name, or `registry` for
    /// changes the server made itself (expiry, checks).
    pub author: String,
    /// Details for tools (previous state, addresses, …).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub data: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_serialize_as_their_dotted_names() {
        for kind in EventKind::ALL {
            let json = serde_json::to_value(kind).unwrap();
            assert_eq!(json, serde_json::Value::String(kind.as_str().into()));
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(EventKind::parse("instance.exploded"), None);
    }
}
