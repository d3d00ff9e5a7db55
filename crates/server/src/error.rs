//! The one API error type.
//!
//! Policy: a handler returns `ApiError` with a stable code (`tally_common::ErrorCode`)
//! and a message safe to show to the caller. Internal causes (database errors,
//! panics in blocking tasks) are logged with the request id and never sent to the
//! client, which sees `internal` and the request id to quote. Extractor failures
//! (bad JSON, bad path or query) are mapped here too, so no response of this
//! server has a non-JSON error body.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use tally_common::{ErrorBody, ErrorCode, ErrorDetail};

use crate::telemetry::current_request_id;

#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Logged, never returned.
    source: Option<anyhow::Error>,
    /// Sent as `Retry-After` (seconds), with 429 and 503.
    retry_after_secs: Option<u64>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            source: None,
            retry_after_secs: None,
        }
    }

    /// 429 `rate_limited`, with `Retry-After` rounded up to whole seconds.
    pub fn rate_limited(message: impl Into<String>, wait: std::time::Duration) -> Self {
        Self::new(ErrorCode::RateLimited, message).with_retry_after(wait)
    }

    /// Adds `Retry-After` (at least one second).
    pub fn with_retry_after(mut self, wait: std::time::Duration) -> Self {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        self.retry_after_secs = Some(secs.max(1));
        self
    }

    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after_secs
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("{what} not found"))
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, message)
    }

    /// An unexpected failure: the cause goes to the log, the caller gets `internal`.
    pub fn internal(cause: impl Into<anyhow::Error>) -> Self {
        ApiError {
            code: ErrorCode::Internal,
            message: "internal error; quote the request id when reporting it".into(),
            source: Some(cause.into()),
            retry_after_secs: None,
        }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message.clone(),
                request_id: current_request_id(),
            },
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl From<tally_store::StoreError> for ApiError {
    fn from(e: tally_store::StoreError) -> Self {
        match e {
            tally_store::StoreError::Conflict(_) => {
                ApiError::new(ErrorCode::Conflict, "the resource already exists")
            }
            tally_store::StoreError::Database(tally_store::sqlx::Error::PoolTimedOut) => {
                let mut err = ApiError::new(ErrorCode::Unavailable, "the database is busy");
                err.source = Some(anyhow::anyhow!("database pool timed out"));
                err
            }
            other => ApiError::internal(other),
        }
    }
}

/// Errors of sqlx calls made directly by handlers (`tx.commit()`) convert the
/// same way as store errors.
impl From<tally_store::sqlx::Error> for ApiError {
    fn from(e: tally_store::sqlx::Error) -> Self {
        tally_store::StoreError::from(e).into()
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        if let Some(cause) = &self.source {
            tracing::error!(code = %self.code, error = format!("{cause:#}"), "request failed");
        }
        let mut res = HttpResponse::build(self.status_code()).json(self.body());
        if let Some(secs) = self.retry_after_secs {
            res.headers_mut().insert(
                actix_web::http::header::RETRY_AFTER,
                actix_web::http::header::HeaderValue::from(secs),
            );
        }
        if self.code == ErrorCode::Unauthorized
            || self.code == ErrorCode::TokenExpired
            || self.code == ErrorCode::InvalidCredentials
        {
            res.headers_mut().insert(
                actix_web::http::header::WWW_AUTHENTICATE,
                actix_web::http::header::HeaderValue::from_static("Bearer"),
            );
        }
        res
    }
}

/// Maps actix's extractor errors into the API's JSON errors.
pub mod extractors {
    use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
    use actix_web::HttpRequest;
    use tally_common::ErrorCode;

    use super::ApiError;

    pub fn json(err: JsonPayloadError, _req: &HttpRequest) -> actix_web::Error {
        let api = match &err {
            JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => {
                ApiError::new(ErrorCode::PayloadTooLarge, "request body is too large")
            }
            JsonPayloadError::ContentType => ApiError::new(
                ErrorCode::InvalidJson,
                "expected a JSON body with Content-Type: application/json",
            ),
            JsonPayloadError::Deserialize(e) => {
                ApiError::new(ErrorCode::InvalidJson, format!("invalid JSON body: {e}"))
            }
            other => ApiError::new(
                ErrorCode::InvalidJson,
                format!("invalid JSON body: {other}"),
            ),
        };
        api.into()
    }

    pub fn path(err: PathError, _req: &HttpRequest) -> actix_web::Error {
        ApiError::invalid(format!("invalid path parameter: {err}")).into()
    }

    pub fn query(err: QueryPayloadError, _req: &HttpRequest) -> actix_web::Error {
        ApiError::invalid(format!("invalid query parameter: {err}")).into()
    }
}
