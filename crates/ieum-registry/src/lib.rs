//! The service registry: instances, leases, active checks, the event timeline, blocking
//! queries and live event subscriptions.
//!
//! Layout:
//! - [`registry`]: the [`Registry`] handle and its state. Instances live in memory behind
//!   one lock; every change of *state* (registration, up, down, drain, removal, service
//!   definition) is written through to the [`ieum_store::Store`] by one writer task that
//!   commits many changes per transaction, in order, and publishes their events only once
//!   they are durable. Heartbeats touch memory only.
//! - Leases and removals are timers in one heap; a heartbeat only moves a deadline, and a
//!   timer that fires early re-arms itself, so a heartbeat costs a map lookup.
//! - [`check`](crate::check): HTTP, TCP and gRPC health checks against instances.
//! - [`clock`]: wall-clock time behind a trait; durations use `tokio::time::Instant` so
//!   tests run with paused time.
//!
//! **Invariant:** every change of state is an event, stored in the same transaction as the
//! change itself. **Invariant:** the registry never removes instances while it believes it
//! is cut off (mass-failure protection); it still marks them `down`.

mod check;
pub mod clock;
mod error;
pub mod registry;

pub use clock::{Clock, SystemClock, TokioClock};
pub use error::RegistryError;
pub use registry::{
    Applied, GATEWAY_KINDS, InstanceFilter, Options, Outcome, ProtectionStatus, Registered,
    Registry, Status,
};
