//! HTTP errors as RFC 9457 problem documents (`application/problem+json`). They say what the
//! caller did wrong and never leak internals; internal failures are logged with their cause.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

use crate::order_request::FieldError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the request body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("the order is invalid")]
    InvalidOrder(Vec<FieldError>),
    #[error(
        "the Idempotency-Key header is required: send a unique key per order (e.g. a UUID) and reuse it on retries"
    )]
    MissingIdempotencyKey,
    #[error("the Idempotency-Key header must be 1 to 255 visible ASCII characters")]
    InvalidIdempotencyKey,
    #[error("this Idempotency-Key was already used with a different request body")]
    IdempotencyKeyReused,
    #[error("the request body must be application/json")]
    UnsupportedMediaType,
    #[error("the request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("order ids are UUIDs; {0:?} is not one")]
    InvalidOrderId(String),
    #[error("no order {0}")]
    OrderNotFound(uuid::Uuid),
    #[error("{0}")]
    InvalidQuery(String),
    #[error("{0} requests are already waiting for order changes on this instance; retry shortly or poll")]
    TooManyWaiters(usize),
    #[error("{0}")]
    Unauthenticated(crate::auth::AuthError),
    #[error("{0}")]
    Forbidden(String),
    #[error("too many requests from this caller; retry after {0} s")]
    RateLimited(u64),
    #[error("the service cannot accept orders right now; retry with the same Idempotency-Key")]
    Unavailable(#[source] anyhow::Error),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        use ApiError::*;
        match self {
            MalformedJson(_) | MissingIdempotencyKey | InvalidIdempotencyKey | InvalidOrderId(_) | InvalidQuery(_) => {
                StatusCode::BAD_REQUEST
            }
            InvalidOrder(_) | IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            OrderNotFound(_) => StatusCode::NOT_FOUND,
            Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Forbidden(_) => StatusCode::FORBIDDEN,
            RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Unavailable(_) | TooManyWaiters(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Stable machine-readable kind, the last segment of the problem `type`.
    pub fn kind(&self) -> &'static str {
        use ApiError::*;
        match self {
            MalformedJson(_) => "malformed-json",
            InvalidOrder(_) => "invalid-order",
            MissingIdempotencyKey => "missing-idempotency-key",
            InvalidIdempotencyKey => "invalid-idempotency-key",
            IdempotencyKeyReused => "idempotency-key-reused",
            UnsupportedMediaType => "unsupported-media-type",
            TooLarge(_) => "body-too-large",
            InvalidOrderId(_) => "invalid-order-id",
            OrderNotFound(_) => "order-not-found",
            InvalidQuery(_) => "invalid-query",
            TooManyWaiters(_) => "too-many-waiters",
            RateLimited(_) => "rate-limited",
            Unauthenticated(_) => "unauthenticated",
            Forbidden(_) => "forbidden",
            Unavailable(_) => "unavailable",
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::KeyReused => ApiError::IdempotencyKeyReused,
            other => ApiError::Unavailable(other.into()),
        }
    }
}

impl From<crate::auth::AuthError> for ApiError {
    fn from(e: crate::auth::AuthError) -> Self {
        match e {
            crate::auth::AuthError::KeysUnavailable => ApiError::Unavailable(e.into()),
            other => ApiError::Unauthenticated(other),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::Unavailable(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Unavailable(cause) = &self {
            tracing::error!(error = format!("{cause:#}"), "request failed");
        }
        let mut body = json!({
            "type": format!("https://orderflow.dev/problems/{}", self.kind()),
            "title": status.canonical_reason().unwrap_or("error"),
            "status": status.as_u16(),
            "detail": self.to_string(),
        });
        if let ApiError::InvalidOrder(errors) = &self {
            body["errors"] = json!(errors);
        }
        let mut response = (status, body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let ApiError::RateLimited(seconds) = self {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        // RFC 6750: how to authenticate, and what was wrong with the token sent.
        let challenge = match &self {
            ApiError::Unauthenticated(crate::auth::AuthError::Missing) => {
                Some("Bearer realm=\"orderflow\"".to_string())
            }
            ApiError::Unauthenticated(reason) => Some(format!(
                "Bearer realm=\"orderflow\", error=\"invalid_token\", error_description=\"{}\"",
                reason.to_string().replace(['"', '\\'], "'")
            )),
            ApiError::Forbidden(_) => Some("Bearer realm=\"orderflow\", error=\"insufficient_scope\"".to_string()),
            _ => None,
        };
        if let Some(value) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            headers.insert(header::WWW_AUTHENTICATE, value);
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
