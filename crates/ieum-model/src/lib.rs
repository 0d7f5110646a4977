//! The shapes users write and read: resource types, their JSON/YAML form and their
//! validation.
//!
//! Everything here is pure data and pure functions; nothing does I/O. Every other crate
//! speaks these types, so a field means the same thing in the REST API, in a YAML file, in
//! the store and on the push stream.
//!
//! Layout:
//! - [`duration`], [`time`], [`name`]: the scalar types (`"15s"`, RFC 3339 instants,
//!   DNS-1123 names) with their serde forms.
//! - [`error`]: [`ValidationError`], a coded error that points at the field to fix.
//! - [`service`]: the `Service` resource spec (the registry's definition of a service).
//! - [`instance`]: instances, their registration body, states and active checks.
//! - [`event`]: the durable event every state change produces.
//! - [`policy`]: resilience policy types (timeouts, retries, breakers, …).
//! - [`route`]: the `Route` resource (matches, weighted backends, filters).
//! - [`saga`], [`flow`]: the `Saga` (steps with compensations) and `Flow` (stateless
//!   orchestration) resources; [`template`]: their `${…}` CEL templates.
//! - [`telemetry`]: golden signals and breaker transitions that sidecars report.
//! - [`bridge`]: the sidecar bridge's `PubSub`, `Subscription` and `Binding` specs.
//! - [`authz`]: the `AuthorizationPolicy` resource (who may call a service) and the
//!   principal and path patterns it matches with.
//! - [`resource`]: the `apiVersion / kind / metadata / spec` envelope, the kinds, YAML
//!   documents, whole-resource validation, JSON Schemas and diffs.
//!
//! **Invariant:** every type that users write denies unknown fields and has a `validate()`
//! that reports *all* problems with a code and a field path, so bad input is explained,
//! never half-applied.

pub mod api;
pub mod authz;
pub mod bridge;
pub mod duration;
pub mod error;
pub mod event;
pub mod flow;
pub mod instance;
pub mod name;
pub mod policy;
pub mod resource;
pub mod route;
pub mod saga;
pub mod secret;
pub mod service;
pub mod telemetry;
pub mod template;
pub mod time;

pub use duration::Duration;
pub use error::{ValidationError, Validator};
pub use event::{Event, EventKind};
pub use instance::{
    Check, CheckKind, CheckResult, Instance, InstanceRegistration, InstanceState, Protocol,
};
pub use name::Name;
pub use service::{InstanceCounts, ServiceSpec, ServiceSummary, ServiceView};
pub use time::Timestamp;
