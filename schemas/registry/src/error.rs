//! The registry's errors, answered in Confluent's shape:
//! `{"error_code": 40401, "message": "Subject 'x' not found."}` with the matching HTTP status.
//! Store failures are logged here and answered without internals.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Subject '{0}' not found.")]
    SubjectNotFound(String),
    #[error("Version {0} not found.")]
    VersionNotFound(String),
    #[error("Schema not found")]
    SchemaNotFound,
    #[error("Subject '{0}' was soft deleted.Set permanent=true to delete permanently")]
    SubjectSoftDeleted(String),
    #[error("Subject '{0}' was not deleted first before being permanently deleted")]
    SubjectNotSoftDeleted(String),
    #[error("Subject '{0}' Version {1} was soft deleted.Set permanent=true to delete permanently")]
    VersionSoftDeleted(String, i32),
    #[error("Subject '{0}' Version {1} was not deleted first before being permanently deleted")]
    VersionNotSoftDeleted(String, i32),
    #[error("Subject '{0}' does not have subject-level compatibility configured")]
    SubjectConfigNotFound(String),
    #[error("Schema being registered is incompatible with an earlier schema for subject \"{subject}\", details: [{}]", .details.join(", "))]
    Incompatible { subject: String, details: Vec<String> },
    #[error("Invalid schema: {0}")]
    InvalidSchema(String),
    #[error(
        "The specified version '{0}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""
    )]
    InvalidVersion(String),
    #[error(
        "Invalid compatibility level {0:?}. Valid values are none, backward, forward, full, backward_transitive, forward_transitive, and full_transitive"
    )]
    InvalidCompatibilityLevel(String),
    #[error("Invalid subject name {0:?}: it must be non-empty and free of control characters")]
    InvalidSubject(String),
    #[error("Unauthorized: {0}")]
    Unauthenticated(String),
    #[error("Forbidden: {0}")]
    Forbidden(String),
    #[error("The token issuer's keys cannot be read right now; retry shortly")]
    AuthUnavailable,
    #[error("Subject '{0}' is in read-only mode")]
    ReadOnly(String),
    #[error("Invalid mode {0:?}. Valid values are READWRITE and READONLY")]
    InvalidMode(String),
    #[error("Subject '{0}' does not have subject-level mode configured")]
    SubjectModeNotFound(String),
    #[error("Malformed request body: {0}")]
    MalformedBody(String),
    #[error("Error in the backend data store")]
    Store(#[source] anyhow::Error),
}

impl ApiError {
    pub fn status_and_code(&self) -> (StatusCode, u32) {
        use ApiError::*;
        match self {
            SubjectNotFound(_) => (StatusCode::NOT_FOUND, 40401),
            VersionNotFound(_) => (StatusCode::NOT_FOUND, 40402),
            SchemaNotFound => (StatusCode::NOT_FOUND, 40403),
            SubjectSoftDeleted(_) => (StatusCode::NOT_FOUND, 40404),
            SubjectNotSoftDeleted(_) => (StatusCode::NOT_FOUND, 40405),
            VersionSoftDeleted(..) => (StatusCode::NOT_FOUND, 40406),
            VersionNotSoftDeleted(..) => (StatusCode::NOT_FOUND, 40407),
            SubjectConfigNotFound(_) => (StatusCode::NOT_FOUND, 40408),
            Incompatible { .. } => (StatusCode::CONFLICT, 409),
            InvalidSchema(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42201),
            InvalidVersion(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42202),
            InvalidCompatibilityLevel(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42203),
            InvalidSubject(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42208),
            MalformedBody(_) => (StatusCode::BAD_REQUEST, 400),
            Unauthenticated(_) => (StatusCode::UNAUTHORIZED, 40101),
            Forbidden(_) => (StatusCode::FORBIDDEN, 40301),
            SubjectModeNotFound(_) => (StatusCode::NOT_FOUND, 40409),
            InvalidMode(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42204),
            ReadOnly(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42205),
            AuthUnavailable => (StatusCode::SERVICE_UNAVAILABLE, 50301),
            Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, 50001),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::Store(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if let ApiError::Store(source) = &self {
            tracing::error!(error = format!("{source:#}"), "schema store failed");
        }
        let body = json!({ "error_code": code, "message": self.to_string() });
        let mut response = (status, body.to_string()).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        response
    }
}
