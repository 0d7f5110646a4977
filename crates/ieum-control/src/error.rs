//! API errors: one JSON shape, a stable code, the field to fix.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ieum_model::ValidationError;
use ieum_registry::RegistryError;
use serde::Serialize;

/// The body of every error response: `{"error": {"code", "message", "field", "details"}}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// One error, with every validation problem when there are several.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable code (see `docs/errors.md`).
    pub code: String,
    /// What is wrong and what to do.
    pub message: String,
    /// The offending field, when one is to blame.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub field: String,
    /// Every problem found, when validation found more than one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<ValidationError>,
}

/// An error answered to an API caller.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    detail: ErrorDetail,
}

impl ApiError {
    /// An error with a status, a code and a message.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            detail: ErrorDetail {
                code: code.into(),
                message: message.into(),
                field: String::new(),
                details: Vec::new(),
            },
        }
    }

    /// Blames `field`.
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.detail.field = field.into();
        self
    }

    /// 400 for one or more validation problems; the first is the headline.
    pub fn invalid(mut errors: Vec<ValidationError>) -> Self {
        let Some(first) = errors.first().cloned() else {
            return ApiError::new(StatusCode::BAD_REQUEST, "E1000", "invalid request");
        };
        if errors.len() == 1 {
            errors.clear();
        }
        ApiError {
            status: StatusCode::BAD_REQUEST,
            detail: ErrorDetail {
                code: first.code,
                message: first.message,
                field: first.field,
                details: errors,
            },
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        ApiError::invalid(vec![e])
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Invalid(errors) => ApiError::invalid(errors),
            RegistryError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, "E1404", m),
            RegistryError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "E1409", m),
            RegistryError::Storage(e) => {
                tracing::error!(error = %e, "storage error answering a request");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "E1503",
                    "storage is unavailable; the change may not be durable: retry when /readyz answers 200",
                )
            }
            RegistryError::ShuttingDown => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "E1503",
                "the server is shutting down; retry",
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(ErrorBody { error: self.detail })).into_response()
    }
}

#[cfg(test)]
impl ApiError {
    pub(crate) fn detail_code(&self) -> &str {
        &self.detail.code
    }
    pub(crate) fn detail_field(&self) -> &str {
        &self.detail.field
    }
}
