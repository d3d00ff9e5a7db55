//! Usage events (G4) and the dashboard's Playground.

use serde::{Deserialize, Serialize};

use crate::Environment;

/// One gateway call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsageEvent {
    /// The call id, also returned to the caller in the `X-Tally-Call-Id` header.
    pub id: String,
    pub time: String,
    pub environment: Environment,
    pub key_id: String,
    pub api: String,
    pub model: Option<String>,
    /// e.g. `/v1/chat/completions` or `/v1/apis/weather/forecast`.
    pub endpoint: String,
    /// `sync` or `stream`.
    pub request_type: String,
    /// The HTTP status the caller got.
    pub status: u16,
    /// The error code when the call failed.
    pub error: Option<String>,
    pub latency_us: i64,
    pub upstream_latency_us: i64,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub cost_micros: i64,
    /// The caller's `X-Client-Id`, if it sent one.
    pub client_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsagePage {
    /// Newest first.
    pub items: Vec<UsageEvent>,
    /// Pass as `before` for the next (older) page; absent on the last page.
    pub next_before: Option<String>,
}

/// A key's statistics (K6), over its whole life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyStats {
    pub calls: i64,
    pub errors: i64,
    pub spend_micros: i64,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub last_used_at: Option<String>,
    /// Calls and credits counted against the key's quotas (K2) now, with the
    /// times the counters reset (RFC 3339).
    pub day_requests: i64,
    pub day_credits_micros: i64,
    pub day_resets_at: String,
    pub month_requests: i64,
    pub month_credits_micros: i64,
    pub month_resets_at: String,
}

/// A call made from the dashboard with one of the namespace's keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlaygroundRequest {
    pub key_id: String,
    /// Gateway path, e.g. `/v1/chat/completions` or `/v1/apis/weather/today`.
    pub path: String,
    /// `POST` (default) or `GET`.
    #[serde(default)]
    pub method: Option<String>,
    /// The JSON body sent to the gateway.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub body: Option<serde_json::Value>,
}

/// What the gateway answered, with the call's measurements.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlaygroundResponse {
    pub status: u16,
    /// The response body (JSON when it parses, else a string).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub body: serde_json::Value,
    pub call_id: String,
    pub latency_us: i64,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub cost_micros: i64,
}
