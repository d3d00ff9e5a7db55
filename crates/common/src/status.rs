//! Server status: version and uptime (D7), health and readiness (O2).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServerStatus {
    pub version: String,
    /// When this process started (RFC 3339 UTC).
    pub started_at: String,
    /// Seconds since `started_at`.
    pub uptime_seconds: i64,
    /// `sqlite` or `postgres`.
    pub database: String,
    /// What top-ups accept: USDC and USDT, and RTITY once the server is past
    /// the token generation event.
    #[serde(default)]
    pub topup_currencies: Vec<crate::Currency>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HealthStatus {
    /// `ok` for `/healthz`, `ready` for `/readyz`.
    pub status: String,
}
