//! Signed webhooks (W1, W2): endpoints a namespace registers, the events it
//! can subscribe to, and the deliveries with every attempt.

use serde::{Deserialize, Serialize};

/// The event types an endpoint can subscribe to. `backup.*` go to the
/// namespaces an operator owns (backups are the whole server's).
pub const WEBHOOK_EVENT_TYPES: &[&str] = &[
    "backup.created",
    "backup.failed",
    "credits.low_balance",
    "key.expiring",
    "quota.reached",
    "serving.paused",
    "serving.resumed",
    "subscription.renewal_due",
    "subscription.renewed",
    "topup.confirmed",
    "webhook.test",
];

/// An endpoint as listed (its secret is never shown again after creation or
/// rotation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookEndpoint {
    pub id: String,
    pub url: String,
    pub description: String,
    /// The event types sent to it; empty: all.
    pub event_types: Vec<String>,
    pub enabled: bool,
    /// Why it was disabled, when it was disabled by the server (an endpoint
    /// that kept failing, or answered 410 Gone).
    pub disabled_reason: Option<String>,
    /// When its failures began (RFC 3339 UTC); none since the last success.
    pub failing_since: Option<String>,
    /// When the previous signing secret stops signing, after a rotation.
    pub previous_secret_expires_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// A new endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateWebhookEndpoint {
    /// `https://` (or `http://`) URL that receives POSTs; redirects are not
    /// followed.
    pub url: String,
    #[serde(default)]
    pub description: String,
    /// Event types to send (see `WEBHOOK_EVENT_TYPES`); empty or absent: all.
    #[serde(default)]
    pub event_types: Vec<String>,
}

/// A change to an endpoint; absent fields stay.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhookEndpoint {
    pub url: Option<String>,
    pub description: Option<String>,
    pub event_types: Option<Vec<String>>,
    /// Enabling an endpoint clears its failure streak; pending deliveries go
    /// out again.
    pub enabled: Option<bool>,
}

/// An endpoint with its signing secret: answered once, at creation and at
/// each rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookEndpointWithSecret {
    pub endpoint: WebhookEndpoint,
    /// `whsec_` and the base64 of the key bytes (Standard Webhooks).
    pub secret: String,
}

/// A rotation of the signing secret.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RotateWebhookSecret {
    /// How long the old secret keeps signing beside the new one (default
    /// 86,400 s; 0 ends it now; at most 7 days).
    pub grace_seconds: Option<i64>,
}

/// One message to one endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookDelivery {
    pub id: String,
    /// The event's id: the `webhook-id` header, the same on every attempt
    /// and replay.
    pub message_id: String,
    pub endpoint_id: String,
    pub event_type: String,
    /// `pending`, `succeeded` or `failed`.
    pub status: String,
    pub attempts: i64,
    /// When the next attempt is due, while pending (RFC 3339 UTC).
    pub next_attempt_at: Option<String>,
    /// The HTTP status of the last attempt, if it got one.
    pub last_status: Option<i64>,
    pub created_at: String,
    pub finished_at: Option<String>,
}

/// A delivery with its payload and every attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookDeliveryDetail {
    pub delivery: WebhookDelivery,
    /// The exact body sent (JSON text).
    pub payload: String,
    pub attempts: Vec<WebhookAttempt>,
}

/// One attempt of a delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookAttempt {
    pub attempted_at: String,
    /// The receiver's HTTP status; none when no answer came.
    pub status_code: Option<i64>,
    pub latency_ms: i64,
    pub succeeded: bool,
    /// The first bytes of the answer's body.
    pub response_excerpt: String,
    /// Why no usable answer came (timeout, connection refused, redirect).
    pub error: Option<String>,
}

/// Deliveries, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookDeliveryPage {
    pub items: Vec<WebhookDelivery>,
    /// Pass as `before` for the next (older) page.
    pub next_before: Option<String>,
}

/// The endpoints of a namespace, with the event types on offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookEndpointList {
    pub items: Vec<WebhookEndpoint>,
    pub event_types: Vec<String>,
}
