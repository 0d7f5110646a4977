//! One module per page: each reads what it shows from the registry, then renders it.

pub(crate) mod apis;
pub(crate) mod config;
pub(crate) mod events;
pub(crate) mod sagas;
pub(crate) mod service;
pub(crate) mod services;
pub(crate) mod topics;
pub(crate) mod topology;
