//! Error classification: every error says where it came from, whether retrying is safe,
//! and which status code and short reason a caller sees.
//!
//! Layers fail with [`tower::BoxError`] (as tower's layers do); [`classify`] looks inside:
//! first for this crate's own errors, then along the `source()` chain for what HTTP clients
//! produce (`std::io::Error` from connecting, `h2::Error` with `REFUSED_STREAM`).
//! [`ErrorResponseLayer`] turns any error into a response with [`REASON_HEADER`] and
//! [`SOURCE_HEADER`], so a caller never sees an opaque connection drop.

mod layer;

pub use layer::{ErrorResponse, ErrorResponseFuture, ErrorResponseLayer, error_response};

use std::fmt;

use http::{HeaderName, StatusCode};
use tower::BoxError;

/// Header carrying the short reason of an answer ieum produced, e.g. `deadline-exceeded`.
pub const REASON_HEADER: HeaderName = HeaderName::from_static("ieum-reason");
/// Header carrying where the failure came from: `upstream`, `downstream` or `local`.
pub const SOURCE_HEADER: HeaderName = HeaderName::from_static("ieum-error-source");

/// Where a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// The service called (or the network towards it).
    Upstream,
    /// The caller (a bad or aborted request body).
    Downstream,
    /// ieum itself decided: a deadline, a limit, a blocked breaker.
    Local,
}

impl Source {
    /// The lowercase name used in headers and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Upstream => "upstream",
            Source::Downstream => "downstream",
            Source::Local => "local",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether sending the same request again is safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Retryable {
    /// The request was certainly not processed (connection refused, `REFUSED_STREAM`,
    /// refused locally before sending): retrying is always safe.
    Safe,
    /// The request may have been processed (timeout, reset): safe only for idempotent
    /// targets.
    IfIdempotent,
    /// Retrying cannot help (no time left, caller's fault, local limit).
    No,
}

/// What a caller needs to know about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classification {
    /// Where it came from.
    pub source: Source,
    /// Whether a retry is safe.
    pub retryable: Retryable,
    /// Status code answered to the caller.
    pub status: StatusCode,
    /// Short reason, lowercase words joined by `-`, sent in [`REASON_HEADER`].
    pub reason: &'static str,
}

impl Classification {
    /// A classification.
    pub const fn new(
        source: Source,
        retryable: Retryable,
        status: StatusCode,
        reason: &'static str,
    ) -> Self {
        Classification {
            source,
            retryable,
            status,
            reason,
        }
    }
}

/// Implemented by every error type of this crate.
pub trait Classify {
    /// What the caller sees.
    fn classification(&self) -> Classification;
}

/// Wrap a connector's error in this to say "the connection was never established": such
/// failures are always safe to retry.
#[derive(Debug, thiserror::Error)]
#[error("could not connect: {0}")]
pub struct ConnectError(#[source] pub BoxError);

impl Classify for ConnectError {
    fn classification(&self) -> Classification {
        Classification::new(
            Source::Upstream,
            Retryable::Safe,
            StatusCode::BAD_GATEWAY,
            "connect-failed",
        )
    }
}

macro_rules! try_classify {
    ($err:expr, $($ty:ty),+ $(,)?) => {
        $(if let Some(e) = $err.downcast_ref::<$ty>() {
            return e.classification();
        })+
    };
}

/// Classifies any error produced by a stack of ieum layers or an HTTP client under them.
pub fn classify(error: &BoxError) -> Classification {
    classify_dyn(error.as_ref())
}

/// Like [`classify`], for a borrowed error.
pub fn classify_dyn(error: &(dyn std::error::Error + Send + Sync + 'static)) -> Classification {
    try_classify!(
        error,
        crate::deadline::DeadlineExceeded,
        crate::timeout::AttemptTimedOut,
        crate::retry::BodyError,
        crate::breaker::Blocked,
        crate::fail_fast::FailFastError,
        crate::limit::Overloaded,
        crate::limit::RateLimited,
        crate::balance::NoEndpoint,
        ConnectError,
    );
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(c) = classify_foreign(e) {
            return c;
        }
        current = e.source();
    }
    Classification::new(
        Source::Upstream,
        Retryable::IfIdempotent,
        StatusCode::BAD_GATEWAY,
        "upstream-error",
    )
}

fn classify_foreign(e: &(dyn std::error::Error + 'static)) -> Option<Classification> {
    if let Some(c) = e.downcast_ref::<ConnectError>() {
        return Some(c.classification());
    }
    // An HTTP client reports the caller's failing body inside its own error.
    if let Some(c) = e.downcast_ref::<crate::retry::BodyError>() {
        return Some(c.classification());
    }
    if let Some(io) = e.downcast_ref::<std::io::Error>() {
        use std::io::ErrorKind::*;
        let c = match io.kind() {
            ConnectionRefused | AddrNotAvailable | HostUnreachable | NetworkUnreachable => {
                Classification::new(
                    Source::Upstream,
                    Retryable::Safe,
                    StatusCode::BAD_GATEWAY,
                    "connect-failed",
                )
            }
            TimedOut => Classification::new(
                Source::Upstream,
                Retryable::IfIdempotent,
                StatusCode::GATEWAY_TIMEOUT,
                "upstream-timeout",
            ),
            ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => {
                Classification::new(
                    Source::Upstream,
                    Retryable::IfIdempotent,
                    StatusCode::BAD_GATEWAY,
                    "upstream-reset",
                )
            }
            _ => return None,
        };
        return Some(c);
    }
    if let Some(h2) = e.downcast_ref::<h2::Error>()
        && h2.reason() == Some(h2::Reason::REFUSED_STREAM)
    {
        return Some(Classification::new(
            Source::Upstream,
            Retryable::Safe,
            StatusCode::SERVICE_UNAVAILABLE,
            "refused-stream",
        ));
    }
    None
}

/// gRPC status codes this crate reads or writes.
pub mod grpc {
    use http::HeaderName;

    /// The `grpc-status` header (or trailer).
    pub const STATUS: HeaderName = HeaderName::from_static("grpc-status");
    /// The `grpc-message` header (or trailer).
    pub const MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
    /// `DEADLINE_EXCEEDED`.
    pub const DEADLINE_EXCEEDED: u8 = 4;
    /// `RESOURCE_EXHAUSTED`.
    pub const RESOURCE_EXHAUSTED: u8 = 8;
    /// `INTERNAL`.
    pub const INTERNAL: u8 = 13;
    /// `UNAVAILABLE`: the only status retried without being listed.
    pub const UNAVAILABLE: u8 = 14;

    /// Whether the request is gRPC (`content-type: application/grpc…`).
    pub fn is_grpc<B>(req: &http::Request<B>) -> bool {
        is_grpc_headers(req.headers())
    }

    /// Whether these request headers are gRPC's.
    pub fn is_grpc_headers(headers: &http::HeaderMap) -> bool {
        headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
    }

    /// The `grpc-status` of a response when it is in the headers (trailers-only answers).
    pub fn status_of<B>(res: &http::Response<B>) -> Option<u8> {
        res.headers()
            .get(STATUS)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse().ok())
    }

    /// The gRPC status matching an HTTP status ieum answers with.
    pub fn from_http(status: http::StatusCode) -> u8 {
        match status.as_u16() {
            504 | 408 => DEADLINE_EXCEEDED,
            429 => RESOURCE_EXHAUSTED,
            502..=503 => UNAVAILABLE,
            _ => INTERNAL,
        }
    }
}

/// Whether a response counts as a failure for breakers, outlier detection and balancing:
/// any 5xx, or a gRPC status meaning the server is in trouble.
pub fn is_failure<B>(res: &http::Response<B>) -> bool {
    res.status().is_server_error()
        || matches!(
            grpc::status_of(res),
            Some(2 | grpc::DEADLINE_EXCEEDED | grpc::INTERNAL | grpc::UNAVAILABLE)
        )
}

#[cfg(test)]
mod tests;
