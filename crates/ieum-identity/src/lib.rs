//! Workload identity and the mesh's TLS: who each workload is, the CA that certifies it,
//! and the rustls configurations with which sidecars authenticate each other. A library
//! with no networking: `ieum server` issues with it, sidecars enrol and speak mTLS with it.
//!
//! # Layout
//!
//! - [`spiffe`]: [`TrustDomain`], [`SpiffeId`] (`spiffe://ieum.local/svc/orders`) and
//!   [`Workload`], whose display is the principal policies name (`orders`,
//!   `gateway:edge`, `system:coordinator`).
//! - [`ca`]: the server's [`Ca`]: a root created on first start or supplied by the
//!   operator, [`Ca::issue`] for workloads' CSRs, [`Ca::server_certificate`] for the
//!   server's own API, [`Ca::fingerprint`] for join tokens.
//! - [`workload`]: the workload's [`KeyPair`] and CSR, and the [`Credentials`] built from
//!   what was issued, with [`Credentials::renew_at`].
//! - [`bootstrap`]: bootstrap trust: [`JoinToken`] (`ieum1.<ca-hash>.<secret>`),
//!   [`ServerTrust`] (the CA file or the pin every client of the server verifies it
//!   with) and the server's own renewable API certificate ([`ServerKey`]).
//! - [`mesh`]: [`Identity`] (rotating credentials, a rustls certificate resolver),
//!   [`server_config`], [`client_config`], [`peer_identity`] and [`PeerError`].
//!
//! # Enrolment, end to end
//!
//! ```
//! use std::time::Duration;
//!
//! use ieum_identity::{
//!     Ca, ClientAuth, Credentials, Identity, KeyPair, SpiffeId, TrustDomain, client_config,
//!     server_config,
//! };
//!
//! // The server: its CA (kept in its data directory with `Ca::load_or_create`).
//! let ca = Ca::generate(TrustDomain::default())?;
//!
//! // A sidecar of `orders`: its key stays here, only the CSR is sent.
//! let id = SpiffeId::service(TrustDomain::default(), "orders".parse()?);
//! let key = KeyPair::generate()?;
//! let csr = key.csr(&id)?;
//!
//! // The server decides the id (from the join token), whatever the CSR asks.
//! let issued = ca.issue(&csr, &id, Duration::from_secs(24 * 3600))?;
//!
//! // The sidecar: its credentials, presented by both directions of its traffic.
//! let identity = Identity::new(Credentials::new(&issued.chain_pem, key)?);
//! let inbound = server_config(&identity, ca.roots(), ClientAuth::Required)?;
//! let stock = SpiffeId::service(TrustDomain::default(), "stock".parse()?);
//! let to_stock = client_config(&identity, ca.roots(), Some(stock))?;
//! # let _ = (inbound, to_stock);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Invariants
//!
//! - A private key never leaves the process that generated it: a workload sends a CSR,
//!   and the server generates its own API key itself. Nothing here exports a key.
//! - The CA certifies only the SPIFFE id its caller decides; it reads nothing from a CSR
//!   but the public key, once the CSR's signature proves the sender holds the key.
//! - Every rustls configuration names the ring provider; none uses the process default.

pub mod bootstrap;
pub mod ca;
pub mod mesh;
pub mod spiffe;
pub mod workload;
mod x509;

use std::sync::Arc;

pub use bootstrap::{BootstrapError, JoinToken, ServerKey, ServerTrust, api_server_config};
pub use ca::{Ca, CaError, Issued, ServerCertificate, fingerprint};
pub use mesh::{
    ClientAuth, ConfigError, Identity, PeerError, client_config, enrolled_by, peer_identity,
    roots_from_pem, server_config,
};
pub use spiffe::{IdError, SpiffeId, TrustDomain, Workload};
pub use workload::{Credentials, CredentialsError, KeyPair};

/// The crypto provider of everything built here: ring, named explicitly so that nothing
/// depends on which provider the process installed as its default. AES-128-GCM comes
/// first: both ends of a mesh hop are ieum, the client's order decides, and it costs
/// fewer rounds per record than AES-256 for the same 128-bit security level the P-256
/// keys give.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::ring::cipher_suite;
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|suite| {
        let s = suite.suite();
        [
            cipher_suite::TLS13_AES_128_GCM_SHA256.suite(),
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256.suite(),
            cipher_suite::TLS13_AES_256_GCM_SHA384.suite(),
        ]
        .iter()
        .position(|preferred| *preferred == s)
        .unwrap_or(usize::MAX)
    });
    Arc::new(provider)
}
