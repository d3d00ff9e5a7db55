//! The one error shape of the API (SPEC "Errors"):
//! `{"error": {"code": "...", "message": "...", "request_id": "..."}}`.
//!
//! Codes are stable snake_case strings; clients branch on `code`, never on
//! `message`. New codes may be added; existing ones never change meaning.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed or a field fails validation (400).
    InvalidRequest,
    /// The body is not valid JSON or does not match the expected shape (400).
    InvalidJson,
    /// No credentials, or credentials that cannot be verified (401).
    Unauthorized,
    /// Email and password do not match an account (401).
    InvalidCredentials,
    /// The access token has expired; refresh it (401).
    TokenExpired,
    /// The refresh token is unknown, expired, revoked or already used (401).
    InvalidRefreshToken,
    /// The setup token is unknown, expired or used, or the server already has
    /// an operator (401).
    InvalidSetupToken,
    /// Authenticated, but the role does not allow this action (403).
    Forbidden,
    /// The resource does not exist or is not visible to the caller (404).
    NotFound,
    /// The HTTP method is not supported on this path (405).
    MethodNotAllowed,
    /// The request conflicts with existing state, e.g. a taken email (409).
    Conflict,
    /// The change would leave a namespace without an owner (409).
    LastOwner,
    /// The invitation's link is past its expiry; ask for a new one (410).
    InvitationExpired,
    /// The body is larger than the server accepts (413).
    PayloadTooLarge,
    /// Too many requests; see `Retry-After` (429).
    RateLimited,
    /// The gateway key is missing, malformed or unknown (401).
    InvalidApiKey,
    /// The gateway key has been revoked (401).
    KeyRevoked,
    /// The gateway key is past its expiry, or a rotated-out secret is past its grace deadline (401).
    KeyExpired,
    /// The key may not call this API or model (403).
    ApiNotAllowed,
    /// The key's daily or monthly quota is used up; see `Retry-After` (429).
    QuotaExceeded,
    /// The balance cannot cover the call's maximum cost (402).
    InsufficientCredits,
    /// The upstream failed or answered something unusable (502).
    UpstreamError,
    /// The upstream did not answer in time (504).
    UpstreamTimeout,
    /// A signed notification's signature is missing or wrong (401).
    InvalidSignature,
    /// A signed notification's timestamp is too far from the server's clock (401).
    StaleTimestamp,
    /// The currency is not accepted (yet) for top-ups (400).
    UnsupportedCurrency,
    /// An upstream URL names a host or address the server's egress policy
    /// refuses (400).
    UpstreamNotAllowed,
    /// A backup archive is damaged, not a backup, or of another schema
    /// version (400).
    InvalidBackup,
    /// Something failed inside the server; the request id finds it in the logs (500).
    Internal,
    /// A dependency (the database) is not available (503).
    Unavailable,
    /// The API's seller is below its critical balance: its live serving is
    /// paused until it tops up (503).
    ServingPaused,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::InvalidCredentials => "invalid_credentials",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::InvalidRefreshToken => "invalid_refresh_token",
            ErrorCode::InvalidSetupToken => "invalid_setup_token",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::LastOwner => "last_owner",
            ErrorCode::InvitationExpired => "invitation_expired",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::InvalidApiKey => "invalid_api_key",
            ErrorCode::KeyRevoked => "key_revoked",
            ErrorCode::KeyExpired => "key_expired",
            ErrorCode::ApiNotAllowed => "api_not_allowed",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::InsufficientCredits => "insufficient_credits",
            ErrorCode::UpstreamError => "upstream_error",
            ErrorCode::UpstreamTimeout => "upstream_timeout",
            ErrorCode::InvalidSignature => "invalid_signature",
            ErrorCode::StaleTimestamp => "stale_timestamp",
            ErrorCode::UnsupportedCurrency => "unsupported_currency",
            ErrorCode::UpstreamNotAllowed => "upstream_not_allowed",
            ErrorCode::InvalidBackup => "invalid_backup",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::ServingPaused => "serving_paused",
        }
    }

    /// The HTTP status that always accompanies this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidRequest
            | ErrorCode::InvalidJson
            | ErrorCode::UnsupportedCurrency
            | ErrorCode::UpstreamNotAllowed
            | ErrorCode::InvalidBackup => 400,
            ErrorCode::Unauthorized
            | ErrorCode::InvalidCredentials
            | ErrorCode::TokenExpired
            | ErrorCode::InvalidRefreshToken
            | ErrorCode::InvalidSetupToken
            | ErrorCode::InvalidApiKey
            | ErrorCode::KeyRevoked
            | ErrorCode::KeyExpired
            | ErrorCode::InvalidSignature
            | ErrorCode::StaleTimestamp => 401,
            ErrorCode::InsufficientCredits => 402,
            ErrorCode::Forbidden | ErrorCode::ApiNotAllowed => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Conflict | ErrorCode::LastOwner => 409,
            ErrorCode::InvitationExpired => 410,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::RateLimited | ErrorCode::QuotaExceeded => 429,
            ErrorCode::Internal => 500,
            ErrorCode::UpstreamError => 502,
            ErrorCode::Unavailable | ErrorCode::ServingPaused => 503,
            ErrorCode::UpstreamTimeout => 504,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    pub code: ErrorCode,
    /// Human-readable explanation; may change between releases.
    pub message: String,
    /// The request id (also in the `X-Request-Id` header and the server logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}
