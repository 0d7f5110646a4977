//! A sidecar's workload identity: whether the mesh is on (`GET /v1/mesh`), a key pair made
//! here (the private key is never sent anywhere), a certificate for the service's SPIFFE
//! id (`POST /v1/certificates` with a CSR), and its renewal once two thirds of its
//! lifetime have passed — in place, so listeners and connections pick it up on their
//! next handshake.
//!
//! The mesh settings, the certificate and its key are kept in the sidecar's data
//! directory (`identity-SERVICE/`, the key readable by the owner only), so a sidecar
//! restarted while the server is away goes on with a certificate that is still valid,
//! as it goes on with its saved configuration snapshot.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use ieum_control::mesh::{CertificateRequest, IssuedCertificate, MeshInfo};
use ieum_identity::{Credentials, Identity, KeyPair, SpiffeId, TrustDomain, Workload};
use reqwest::Method;
use tokio_util::sync::CancellationToken;

use crate::client::{Client, Failure};

/// Waits between attempts when a renewal fails (the current certificate still serves).
const RETRY: Duration = Duration::from_secs(5);

/// What enrolment gave: the identity the data plane presents, and the mesh's roots.
pub(crate) struct Enrolled {
    /// The rotating credentials.
    pub(crate) identity: Identity,
    /// The CA certificates peers are verified against.
    pub(crate) roots: Arc<rustls::RootCertStore>,
    /// The mesh's trust domain.
    pub(crate) trust_domain: TrustDomain,
    /// This workload's SPIFFE id (what the registration carries).
    pub(crate) id: SpiffeId,
}

/// Enrols `workload` (a service name or `gateway:NAME`) with the server `api`, keeping what
/// it got in `dir`: `None` when the mesh is off (`--dev`) or the server runs no CA. With
/// the server unreachable, the settings and certificate saved in `dir` are used while the
/// certificate is valid; with nothing saved, the server is waited for at most `wait`.
pub(crate) async fn enroll(
    api: &Client,
    workload: &str,
    dir: &Path,
    wait: Duration,
) -> anyhow::Result<Option<Enrolled>> {
    let saved = Saved::at(dir);
    let deadline = tokio::time::Instant::now() + wait;
    let info: MeshInfo = loop {
        match api.get("/v1/mesh").await {
            Ok(info) => break info,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(Failure::Unreachable(why)) => {
                if saved.exists() {
                    return saved.restore(&why);
                }
                if tokio::time::Instant::now() >= deadline {
                    anyhow::bail!(
                        "no configuration snapshot from {} within {} and none saved in {} ({why})",
                        api.url(""),
                        humantime::format_duration(wait),
                        dir.display()
                    );
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e).context("cannot read the mesh settings (GET /v1/mesh)"),
        }
    };
    saved.write("mesh.json", &serde_json::to_vec_pretty(&info)?, false)?;
    if !info.mtls {
        return Ok(None);
    }
    let (trust_domain, roots) = mesh_of(&info)?;
    let workload = Workload::parse_principal(workload)
        .map_err(|e| anyhow::anyhow!("workload `{workload}`: {e}"))?;
    let id = SpiffeId::new(trust_domain.clone(), workload);
    let credentials = request(api, &id, &saved).await?;
    eprintln!(
        "  identity  {} (certificate until {})",
        id.uri(),
        humantime::format_rfc3339_seconds(credentials.not_after())
    );
    Ok(Some(Enrolled {
        identity: Identity::new(credentials),
        roots,
        trust_domain,
        id,
    }))
}

fn mesh_of(info: &MeshInfo) -> anyhow::Result<(TrustDomain, Arc<rustls::RootCertStore>)> {
    let trust_domain = TrustDomain::parse(&info.trust_domain)
        .map_err(|e| anyhow::anyhow!("the server's trust domain: {e}"))?;
    let roots = Arc::new(
        ieum_identity::roots_from_pem(&info.ca_pem)
            .map_err(|e| anyhow::anyhow!("the server's CA certificate: {e}"))?,
    );
    Ok((trust_domain, roots))
}

/// The identity files in a sidecar's data directory.
#[derive(Debug, Clone)]
pub(crate) struct Saved {
    dir: PathBuf,
}

impl Saved {
    pub(crate) fn at(dir: &Path) -> Saved {
        Saved {
            dir: dir.to_owned(),
        }
    }

    /// Writes `name` whole or not at all (a temporary file renamed), `secret` ones readable
    /// by the owner only.
    fn write(&self, name: &str, bytes: &[u8], secret: bool) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if secret {
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        }
        let mut f = options
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::io::Write::write_all(&mut f, bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }

    fn read(&self, name: &str) -> anyhow::Result<String> {
        let path = self.dir.join(name);
        std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))
    }

    /// Whether an earlier start saved the mesh settings.
    fn exists(&self) -> bool {
        self.dir.join("mesh.json").exists()
    }

    /// What was saved, when the server is unreachable (`why`).
    fn restore(&self, why: &str) -> anyhow::Result<Option<Enrolled>> {
        let info: MeshInfo = serde_json::from_str(&self.read("mesh.json").map_err(|_| {
            anyhow::anyhow!(
                "{why}; and no mesh settings were saved in {} by an earlier start",
                self.dir.display()
            )
        })?)?;
        if !info.mtls {
            return Ok(None);
        }
        let (trust_domain, roots) = mesh_of(&info)?;
        let key = KeyPair::from_pkcs8_pem(&self.read("key.pem")?)
            .map_err(|e| anyhow::anyhow!("the saved key: {e}"))?;
        let credentials = Credentials::new(&self.read("chain.pem")?, key)
            .map_err(|e| anyhow::anyhow!("the saved certificate: {e}"))?;
        if credentials.not_after() <= SystemTime::now() {
            anyhow::bail!(
                "{why}; and the certificate saved in {} expired at {}: start the server so the sidecar can get a new one",
                self.dir.display(),
                humantime::format_rfc3339_seconds(credentials.not_after())
            );
        }
        eprintln!(
            "the control plane is unreachable; using the certificate saved in {} ({}, until {})",
            self.dir.display(),
            credentials.id().uri(),
            humantime::format_rfc3339_seconds(credentials.not_after())
        );
        let id = credentials.id().clone();
        Ok(Some(Enrolled {
            identity: Identity::new(credentials),
            roots,
            trust_domain,
            id,
        }))
    }
}

/// One certificate for `id`, with a new key pair; saved in `saved` with its key.
async fn request(api: &Client, id: &SpiffeId, saved: &Saved) -> anyhow::Result<Credentials> {
    let key = KeyPair::generate().map_err(|e| anyhow::anyhow!("making a key pair: {e}"))?;
    let csr = key
        .csr(id)
        .map_err(|e| anyhow::anyhow!("making a certificate request: {e}"))?;
    let issued: IssuedCertificate = api
        .write(
            Method::POST,
            "/v1/certificates",
            Some(&CertificateRequest {
                workload: id.principal(),
                csr,
            }),
        )
        .await
        .map_err(|e: Failure| {
            anyhow::anyhow!(
                "the server did not issue a certificate for {}: {e}",
                id.uri()
            )
        })?;
    let key_pem = key.to_pkcs8_pem();
    let credentials = Credentials::new(&issued.chain_pem, key)
        .map_err(|e| anyhow::anyhow!("the certificate the server issued for {}: {e}", id.uri()))?;
    saved.write("key.pem", key_pem.as_bytes(), true)?;
    saved.write("chain.pem", issued.chain_pem.as_bytes(), false)?;
    Ok(credentials)
}

/// A workload that has enrolled (or runs without a mesh): the client it talks to the
/// server with from then on, its data plane's mesh configuration, and its renewal, which
/// stops when this is dropped.
pub(crate) struct Enrolment {
    /// Presents the certificate to an `https://` server instead of the token; the
    /// original client otherwise.
    pub(crate) api: Client,
    /// `None` when the mesh is off (`--dev`) or the server runs no CA.
    pub(crate) mesh: Option<ieum_proxy::MeshConfig>,
    _renewal: tokio_util::sync::DropGuard,
}

/// Enrols `workload` with `api` (see [`enroll`]), keeping what it got in `dir`, and renews
/// its certificate in the background until the [`Enrolment`] is dropped. A server that
/// fails TLS verification is a setting to fix ([`Failure::Usage`], exit 2); anything else
/// that stops enrolment is [`Failure::Unreachable`] (exit 3).
pub(crate) async fn enrolment(
    api: Client,
    workload: &str,
    dir: &Path,
    wait: Duration,
) -> anyhow::Result<Enrolment> {
    let enrolled =
        enroll(&api, workload, dir, wait)
            .await
            .map_err(|e| match e.downcast_ref::<Failure>() {
                Some(Failure::Usage(_)) => Failure::Usage(format!("{e:#}")),
                _ => Failure::Unreachable(format!("{e:#}")),
            })?;
    let by_token = api.clone();
    let api = match &enrolled {
        Some(e) => api.as_workload(&e.identity)?.unwrap_or(api),
        None => api,
    };
    let stop = CancellationToken::new();
    let mesh = enrolled.map(|e| {
        tokio::spawn(renew(
            api.clone(),
            by_token,
            e.identity.clone(),
            e.id.clone(),
            Saved::at(dir),
            stop.clone(),
        ));
        ieum_proxy::MeshConfig {
            identity: e.identity,
            roots: e.roots,
            trust_domain: e.trust_domain,
        }
    });
    Ok(Enrolment {
        api,
        mesh,
        _renewal: stop.drop_guard(),
    })
}

/// Renews `identity`'s certificate whenever two thirds of its lifetime have passed, until
/// `stop`; a failed renewal is retried while the current certificate is still valid. The
/// request goes with the certificate itself (`by_certificate`) while it is valid, with the
/// token (`by_token`) once it has expired.
pub(crate) async fn renew(
    by_certificate: Client,
    by_token: Client,
    identity: Identity,
    id: SpiffeId,
    saved: Saved,
    stop: CancellationToken,
) {
    let current = identity.clone();
    keep_renewed(identity, stop, || {
        let api = if current.current().not_after() > SystemTime::now() {
            &by_certificate
        } else {
            &by_token
        };
        request(api, &id, &saved)
    })
    .await;
}

/// The renewal loop shared by sidecars (over the API) and the server's own identity (issued
/// in process): at each renewal time, `issue` a fresh certificate and swap it in; on failure
/// retry every few seconds while the current one serves, until `stop`.
pub(crate) async fn keep_renewed<F, Fut>(identity: Identity, stop: CancellationToken, issue: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Credentials>>,
{
    loop {
        let current = identity.current();
        let wait = current
            .renew_at()
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        loop {
            match issue().await {
                Ok(fresh) => {
                    tracing::info!(
                        id = %fresh.id().uri(),
                        until = %humantime::format_rfc3339_seconds(fresh.not_after()),
                        "renewed the workload certificate"
                    );
                    identity.replace(fresh);
                    break;
                }
                Err(e) => {
                    let left = current
                        .not_after()
                        .duration_since(SystemTime::now())
                        .unwrap_or(Duration::ZERO);
                    tracing::warn!(error = %e, left = ?left, "cannot renew the certificate yet; retrying");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(RETRY) => {}
                    }
                }
            }
        }
    }
}
