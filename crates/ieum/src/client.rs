//! The CLI's HTTP client for the server's REST API, with errors that map to exit codes.

use std::fmt;

use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a call to the server failed, and which exit code that means.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The server could not be reached (exit 3).
    Unreachable(String),
    /// The command line asks for something that does not exist (exit 2).
    Usage(String),
    /// The server refused the request (exit 1).
    Rejected {
        status: StatusCode,
        code: String,
        field: String,
        message: String,
        /// Every problem, one line each, when the server listed several.
        details: Vec<String>,
    },
}

impl Failure {
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            Failure::Unreachable(_) => 3,
            Failure::Usage(_) => 2,
            Failure::Rejected { .. } => 1,
        }
    }

    /// Whether the server answered 404.
    pub(crate) fn is_not_found(&self) -> bool {
        matches!(self, Failure::Rejected { status, .. } if *status == StatusCode::NOT_FOUND)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Unreachable(m) | Failure::Usage(m) => f.write_str(m),
            Failure::Rejected {
                status,
                code,
                field,
                message,
                details,
            } => {
                if !details.is_empty() {
                    write!(
                        f,
                        "the server refused the request (HTTP {}):",
                        status.as_u16()
                    )?;
                    for d in details {
                        write!(f, "\n  {d}")?;
                    }
                    return Ok(());
                }
                write!(f, "{code} ")?;
                if !field.is_empty() {
                    write!(f, "{field}: ")?;
                }
                write!(f, "{message} (HTTP {})", status.as_u16())
            }
        }
    }
}

impl std::error::Error for Failure {}

/// A client of one ieum server.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
    /// For an `https://` server: the TLS configuration that verifies it (ALPN `h2` and
    /// `http/1.1`), for the push stream.
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// What verifies an `https://` server.
    trust: Option<ieum_identity::ServerTrust>,
}

impl Client {
    pub(crate) fn new(server: &str, token: Option<String>) -> anyhow::Result<Client> {
        // The CLI talks to the server directly, never through the HTTP_PROXY an app
        // environment may set for its sidecar.
        // An `https://` server is verified before anything is sent: against IEUM_CA_FILE,
        // or the CA a join token pins; never without.
        let trust = ieum_identity::ServerTrust::from_env(token.as_deref())
            .map_err(|e| Failure::Usage(e.to_string()))?;
        let trust = ieum_identity::ServerTrust::required(server, trust.as_ref())
            .map_err(|e| Failure::Usage(e.to_string()))?;
        let tls = trust.as_ref().map(|t| t.client_config()).transpose()?;
        Client::build(server, token, tls, trust)
    }

    fn build(
        server: &str,
        token: Option<String>,
        tls: Option<std::sync::Arc<rustls::ClientConfig>>,
        trust: Option<ieum_identity::ServerTrust>,
    ) -> anyhow::Result<Client> {
        let mut builder = reqwest::Client::builder().no_proxy();
        if let Some(tls) = &tls {
            // This client speaks HTTP/1.1 only.
            let mut http1 = (**tls).clone();
            http1.alpn_protocols = vec![b"http/1.1".to_vec()];
            builder = builder.tls_backend_preconfigured(http1);
        }
        let http = builder.build()?;
        Ok(Client {
            base: server.trim_end_matches('/').to_owned(),
            token,
            http,
            tls,
            trust,
        })
    }

    /// For an `https://` server, a client that authenticates with `identity`'s certificate
    /// (the current one at each handshake) and sends no token: what an enrolled workload
    /// uses from then on. `None` for `http://` (a loopback server, where no certificate
    /// can be shown; the token, if any, goes on being sent).
    pub(crate) fn as_workload(
        &self,
        identity: &ieum_identity::Identity,
    ) -> anyhow::Result<Option<Client>> {
        let Some(trust) = &self.trust else {
            return Ok(None);
        };
        let tls = trust.client_config_as(Some(identity))?;
        Client::build(&self.base, None, Some(tls), Some(trust.clone())).map(Some)
    }

    /// The bearer token this client sends, if any.
    pub(crate) fn token(&self) -> Option<String> {
        self.token.clone()
    }

    /// The TLS configuration that verifies an `https://` server (`None` for `http://`).
    pub(crate) fn tls(&self) -> Option<std::sync::Arc<rustls::ClientConfig>> {
        self.tls.clone()
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<reqwest::Response, Failure> {
        let mut req = self.http.request(method, self.url(path));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| self.unreachable(&e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        let err = &body["error"];
        let details = err["details"]
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|d| {
                        serde_json::from_value::<ieum_model::ValidationError>(d.clone()).ok()
                    })
                    .map(|d| d.to_string())
                    .collect()
            })
            .unwrap_or_default();
        Err(Failure::Rejected {
            status,
            code: err["code"].as_str().unwrap_or("E1000").to_owned(),
            field: err["field"].as_str().unwrap_or("").to_owned(),
            message: err["message"]
                .as_str()
                .unwrap_or("the server refused the request")
                .to_owned(),
            details,
        })
    }

    pub(crate) fn unreachable(&self, e: &reqwest::Error) -> Failure {
        // A server that fails verification will not pass it by waiting: say so at once.
        if refused_by_tls(e) {
            return Failure::Usage(format!(
                "the ieum server at {} failed TLS verification ({}): check IEUM_CA_FILE or \
                 the join token's CA hash",
                self.base,
                root_cause(e)
            ));
        }
        Failure::Unreachable(format!(
            "cannot reach the ieum server at {} ({}): start one with `ieum server --dev`, or point --server / IEUM_SERVER at it",
            self.base,
            root_cause(e)
        ))
    }

    pub(crate) async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Failure> {
        let resp = self.send(Method::GET, path, None::<&()>).await?;
        resp.json().await.map_err(|e| self.unreachable(&e))
    }

    pub(crate) async fn write<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, Failure> {
        let resp = self.send(method, path, body).await?;
        if resp.status() == StatusCode::NO_CONTENT {
            return serde_json::from_value(serde_json::Value::Null)
                .map_err(|e| Failure::Unreachable(e.to_string()));
        }
        resp.json().await.map_err(|e| self.unreachable(&e))
    }

    /// A streaming GET (Server-Sent Events).
    pub(crate) async fn stream(&self, path: &str) -> Result<reqwest::Response, Failure> {
        self.send(Method::GET, path, None::<&()>).await
    }
}

/// Whether `e` comes from a refused certificate (the server's, or ours by the server):
/// a fault of configuration, not of reachability.
fn refused_by_tls(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if matches!(
            as_rustls(err),
            Some(
                rustls::Error::InvalidCertificate(_)
                    // What ieum's own verifiers refuse with (a join token's pin).
                    | rustls::Error::General(_)
                    | rustls::Error::AlertReceived(
                        rustls::AlertDescription::BadCertificate
                            | rustls::AlertDescription::UnknownCA
                            | rustls::AlertDescription::CertificateExpired
                            | rustls::AlertDescription::CertificateRevoked
                            | rustls::AlertDescription::AccessDenied
                    )
            )
        ) {
            return true;
        }
        cur = err.source();
    }
    false
}

/// The rustls error `err` is, or wraps in (nested) I/O errors.
fn as_rustls<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(tls) = err.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    let inner = err.downcast_ref::<std::io::Error>()?.get_ref()?;
    as_rustls(inner)
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
