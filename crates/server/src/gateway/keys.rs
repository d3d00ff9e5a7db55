//! The gateway's key cache (G1, K5): secret hash -> key, with no database
//! read on a hit.
//!
//! Policy: a miss reads the key once and caches it, unknown secrets included
//! (briefly, so a flood of bad keys cannot turn into a flood of queries). Every
//! instance polls for keys changed since its last look (`poll_interval_ms`,
//! 500 ms by default) and drops them, so a revocation, rotation or limit change
//! takes effect everywhere within a second. Entries also expire
//! (`key_cache_ttl_secs`) in case a poll was missed.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use sha2::{Digest, Sha256};
use tally_common::{Environment, ErrorCode, KeyLimits};
use tally_store::keys::KeyRow;
use tally_store::Store;

use crate::error::ApiError;

/// How long an unknown secret stays cached as unknown.
const MISSING_TTL: Duration = Duration::from_secs(5);
/// Bound on cached entries; the cache is cleared when it grows past this.
const MAX_ENTRIES: usize = 100_000;

/// What the gateway needs of a key, parsed once.
#[derive(Debug, Clone)]
pub struct KeyInfo {
    pub id: String,
    pub namespace_id: String,
    pub environment: Environment,
    pub allowed_apis: Vec<String>,
    pub limits: KeyLimits,
    pub expires_at: Option<i64>,
    pub revoked: bool,
    /// When the presented secret stops working (a rotated-out secret).
    pub secret_expires_at: Option<i64>,
}

impl KeyInfo {
    pub fn from_row(row: &KeyRow, secret_expires_at: Option<i64>) -> Result<Self, ApiError> {
        let decode = |what: &str, e: serde_json::Error| {
            ApiError::internal(anyhow::anyhow!("key {} has malformed {what}: {e}", row.id))
        };
        Ok(KeyInfo {
            id: row.id.clone(),
            namespace_id: row.namespace_id.clone(),
            environment: row.environment,
            allowed_apis: serde_json::from_str(&row.allowed_apis)
                .map_err(|e| decode("allowed APIs", e))?,
            limits: serde_json::from_str(&row.limits).map_err(|e| decode("limits", e))?,
            expires_at: row.expires_at,
            revoked: row.revoked_at.is_some(),
            secret_expires_at,
        })
    }

    /// Whether the key may be used now: 401 with a code that says why not.
    pub fn check_usable(&self, now_ms: i64) -> Result<(), ApiError> {
        if self.revoked {
            return Err(ApiError::new(
                ErrorCode::KeyRevoked,
                "this API key has been revoked",
            ));
        }
        if self.expires_at.is_some_and(|t| t <= now_ms) {
            return Err(ApiError::new(
                ErrorCode::KeyExpired,
                "this API key has expired",
            ));
        }
        if self.secret_expires_at.is_some_and(|t| t <= now_ms) {
            return Err(ApiError::new(
                ErrorCode::KeyExpired,
                "this secret was replaced by a rotation and its grace period is over; use the new secret",
            ));
        }
        Ok(())
    }

    /// K3: an empty list allows every API.
    pub fn allows(&self, slug: &str, model: Option<&str>) -> bool {
        self.allowed_apis.is_empty()
            || self
                .allowed_apis
                .iter()
                .any(|a| a == slug || model.is_some_and(|m| a == m))
    }
}

#[derive(Clone)]
enum Entry {
    Found(Arc<KeyInfo>, Instant),
    Missing(Instant),
}

pub struct KeyCache {
    store: Store,
    entries: DashMap<[u8; 32], Entry>,
    ttl: Duration,
}

impl KeyCache {
    pub fn new(store: Store, ttl: Duration) -> Self {
        KeyCache {
            store,
            entries: DashMap::new(),
            ttl,
        }
    }

    /// The key a bearer secret names, usable or not; `invalid_api_key` when
    /// no key has that secret.
    pub async fn lookup(&self, secret: &str) -> Result<Arc<KeyInfo>, ApiError> {
        let hash: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        if let Some(entry) = self.entries.get(&hash).map(|e| e.clone()) {
            match entry {
                Entry::Found(info, at) if at.elapsed() < self.ttl => return Ok(info),
                Entry::Missing(at) if at.elapsed() < MISSING_TTL => return Err(invalid_key()),
                _ => {}
            }
        }
        let mut conn = self.store.conn().await?;
        let found = tally_store::keys::lookup_secret(&mut conn, &hex(&hash)).await?;
        drop(conn);
        if self.entries.len() >= MAX_ENTRIES {
            self.entries.clear();
        }
        match found {
            Some((row, secret_expires_at)) => {
                let info = Arc::new(KeyInfo::from_row(&row, secret_expires_at)?);
                self.entries
                    .insert(hash, Entry::Found(info.clone(), Instant::now()));
                Ok(info)
            }
            None => {
                self.entries.insert(hash, Entry::Missing(Instant::now()));
                Err(invalid_key())
            }
        }
    }

    /// Drops the cached entries of these keys.
    pub fn invalidate(&self, key_ids: &HashSet<String>) {
        if key_ids.is_empty() {
            return;
        }
        self.entries.retain(|_, e| match e {
            Entry::Found(info, _) => !key_ids.contains(&info.id),
            Entry::Missing(_) => true,
        });
    }
}

pub fn invalid_key() -> ApiError {
    ApiError::new(
        ErrorCode::InvalidApiKey,
        "missing or unknown API key; send it as 'Authorization: Bearer tk_…'",
    )
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    #[test]
    fn hex_matches_the_stored_hash_format() {
        let secret = "tk_test_abc";
        let hash: [u8; 32] = sha2::Sha256::digest(secret.as_bytes()).into();
        assert_eq!(super::hex(&hash), crate::auth::tokens::sha256_hex(secret));
    }
    use sha2::Digest;
}
