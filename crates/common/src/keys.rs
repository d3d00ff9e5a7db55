//! API keys (K1–K7): what callers put in `Authorization: Bearer` at the gateway.
//!
//! A key's secret (`tk_live_…` / `tk_test_…`) is returned exactly once, when the
//! key is created or rotated; the server keeps only its hash and last 4 characters.

use serde::{Deserialize, Serialize};

use crate::Environment;

/// Random characters after the `tk_test_` / `tk_live_` prefix of a secret.
pub const SECRET_RANDOM_LEN: usize = 40;

/// Whether `secret` has the shape of a key secret: `tk_test_` or `tk_live_`
/// followed by exactly [`SECRET_RANDOM_LEN`] ASCII letters and digits. The
/// gateway turns anything else away before it hashes it or reads the database.
pub fn secret_well_formed(secret: &str) -> bool {
    let Some(random) = secret
        .strip_prefix("tk_test_")
        .or_else(|| secret.strip_prefix("tk_live_"))
    else {
        return false;
    };
    random.len() == SECRET_RANDOM_LEN && random.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Per-key rate limits and quotas (K2). Absent means unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_day: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_month: Option<u64>,
    /// Credits (micro-credits) the key may spend per UTC day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits_per_day_micros: Option<i64>,
    /// Credits (micro-credits) the key may spend per UTC calendar month.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits_per_month_micros: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    Active,
    Expired,
    Revoked,
}

impl KeyStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Active => "active",
            KeyStatus::Expired => "expired",
            KeyStatus::Revoked => "revoked",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiKey {
    pub id: String,
    pub namespace_id: String,
    pub name: String,
    pub environment: Environment,
    pub status: KeyStatus,
    /// How the secret starts: `tk_test_` or `tk_live_`.
    pub prefix: String,
    /// The secret's last 4 characters, to tell keys apart.
    pub last4: String,
    pub labels: Vec<String>,
    /// Catalog API slugs this key may call (K3); empty means all.
    pub allowed_apis: Vec<String>,
    pub limits: KeyLimits,
    /// RFC 3339 UTC; absent means the key never expires.
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    /// While a rotation's grace period runs: when the previous secret stops working.
    pub previous_secret_expires_at: Option<String>,
    pub created_by: String,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateKeyRequest {
    /// 1 to 100 characters.
    pub name: String,
    pub environment: Environment,
    /// RFC 3339; must be in the future.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// Up to 20 labels of 1 to 50 characters.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Catalog API slugs; empty (the default) allows all.
    #[serde(default)]
    pub allowed_apis: Vec<String>,
    #[serde(default)]
    pub limits: KeyLimits,
}

/// The key and its secret; the secret is never shown again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedKey {
    pub key: ApiKey,
    pub secret: String,
}

/// Fields to change; absent fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UpdateKeyRequest {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub labels: Option<Vec<String>>,
    #[serde(default)]
    pub allowed_apis: Option<Vec<String>>,
    /// Replaces all limits.
    #[serde(default)]
    pub limits: Option<KeyLimits>,
    /// RFC 3339; must be in the future.
    #[serde(default)]
    pub expires_at: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RotateKeyRequest {
    /// How long the previous secret keeps working, 0 to 2,592,000 seconds
    /// (30 days). Default 86,400 (one day).
    #[serde(default)]
    pub grace_seconds: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyList {
    /// Newest first.
    pub items: Vec<ApiKey>,
}

/// One change to a key (K6): who did what, when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyAuditEntry {
    pub time: String,
    /// Email of the account that made the change.
    pub actor: String,
    /// `created`, `updated`, `rotated` or `revoked`.
    pub action: String,
    /// What changed, e.g. `{"name": ["old", "new"]}` or `{"grace_seconds": 3600}`.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub details: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyAudit {
    /// Oldest first.
    pub items: Vec<KeyAuditEntry>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_prefixed_forty_character_alphanumeric_secrets_are_well_formed() {
        let random = "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8s9T0";
        assert!(secret_well_formed(&format!("tk_test_{random}")));
        assert!(secret_well_formed(&format!("tk_live_{random}")));
        for bad in [
            String::new(),
            "tk_test_nope".to_owned(),
            format!("tk_prod_{random}"),
            format!("tk_test_{random}x"),
            format!("tk_test_{}", &random[1..]),
            format!("tk_test_{}-", &random[1..]),
            format!("tk_test_{}\0", &random[1..]),
            format!("tk_test_{}é", &random[2..]),
            format!("TK_TEST_{random}"),
        ] {
            assert!(!secret_well_formed(&bad), "{bad:?}");
        }
    }
}
