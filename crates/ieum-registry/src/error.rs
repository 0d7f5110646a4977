//! Registry errors, each mapping to one HTTP status at the API edge.

use ieum_model::ValidationError;
use ieum_store::StoreError;

/// Why a registry operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The input is invalid; nothing was changed.
    #[error("invalid input: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<ValidationError>),
    /// The service or instance does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The operation does not fit the current state.
    #[error("{0}")]
    Conflict(String),
    /// The change was made in memory but could not be stored; the server is not ready
    /// until storage recovers.
    #[error(transparent)]
    Storage(#[from] StoreError),
    /// The registry is shutting down.
    #[error("the registry is shutting down")]
    ShuttingDown,
}
