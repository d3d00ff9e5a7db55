//! Accounts and sessions: sign up, log in, refresh, log out.
//!
//! A session is a short-lived JWT access token plus a long-lived, single-use,
//! revocable refresh token (stored by the server only as a SHA-256 hash).

use serde::{Deserialize, Serialize};

use crate::namespaces::NamespaceWithRole;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SignupRequest {
    /// Login email; compared case-insensitively.
    pub email: String,
    /// At least 8 characters, at most 256.
    #[cfg_attr(feature = "openapi", schema(min_length = 8, max_length = 256))]
    pub password: String,
    /// Shown to other members; defaults to the part of the email before `@`.
    #[serde(default)]
    pub display_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
}

/// Creates the server's first operator with the one-time setup token that the
/// server made at its first start (A1). An email that already has an account
/// needs that account's password, and the account becomes the operator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SetupRequest {
    /// The setup token (`tsu_…`): printed at start and kept in `<data_dir>/setup-token`.
    pub token: String,
    pub email: String,
    /// At least 8 characters, at most 256.
    pub password: String,
    #[serde(default)]
    pub display_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RefreshRequest {
    pub refresh_token: String,
}

/// Returned by sign-up, log-in and refresh.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuthResponse {
    /// JWT for `Authorization: Bearer …` on `/api/v1` routes.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: i64,
    /// Single-use token for `POST /api/v1/auth/refresh`; a new one is returned each time.
    pub refresh_token: String,
    pub account: Account,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Account {
    pub id: String,
    pub email: String,
    pub display_name: String,
    /// RFC 3339 UTC.
    pub created_at: String,
}

/// The signed-in account and the namespaces it belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Me {
    pub account: Account,
    pub namespaces: Vec<NamespaceWithRole>,
    /// Operators run the server: they manage the catalog and grant credits.
    /// They are made explicitly: `tally admin create-operator` or
    /// `grant-operator`, or the one-time setup token of a new server.
    #[serde(default)]
    pub is_operator: bool,
}
