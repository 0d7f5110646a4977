//! The push stream's wire protocol (`proto/push.proto`, package `ieum.push.v1`) and its
//! generated Rust types: the server (`ieum-control`) and every client (`ieum-client`)
//! share these, and nothing else.
//!
//! **Invariant:** field numbers are never reused; a message carries its `protocol` version
//! and a newer server answers a client in the version the client announced.

#![allow(missing_docs, unreachable_pub, clippy::all, reason = "generated code")]

/// The protocol version this build speaks.
pub const PROTOCOL: u32 = 1;

/// `ieum.push.v1`.
pub mod v1 {
    tonic::include_proto!("ieum.push.v1");
}
