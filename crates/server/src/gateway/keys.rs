//! The gateway's key cache (G1, K5): secret hash -> key, with no database
//! read on a hit.
//!
//! Policy: known keys and unknown secrets live in two separate bounded caches
//! (moka), so a flood of random secrets can only churn the unknown one and
//! never pushes a valid key out. A miss reads the database once however many
//! calls wait for the same secret (single flight), and at most
//! `key_lookup_concurrency` misses read it at once, so misses cannot take the
//! whole pool. Before any lookup, a secret that does not have the shape of a
//! key (`tally_common::secret_well_formed`) is refused, and so is a request
//! from a client address that keeps presenting unknown secrets
//! (`unknown_keys_per_ip_per_sec`, 429 `rate_limited`). A key found in the
//! cache is never throttled, so valid keys keep working during a flood.
//!
//! Every instance polls for keys changed since its last look
//! (`poll_interval_ms`, 500 ms by default) and drops them, so a revocation,
//! rotation or limit change takes effect everywhere within a second. Entries
//! also expire (`key_cache_ttl_secs`) in case a poll was missed.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache;
use moka::policy::EvictionPolicy;
use sha2::{Digest, Sha256};
use tally_common::{secret_well_formed, Environment, ErrorCode, KeyLimits};
use tally_store::keys::KeyRow;
use tally_store::Store;
use tokio::sync::Semaphore;

use crate::config::GatewaySettings;
use crate::error::ApiError;

/// How long a miss waits for a free lookup slot before it is answered 503.
const LOOKUP_WAIT: Duration = Duration::from_secs(2);
/// Client addresses whose unknown-key failures are tracked at once.
const MAX_TRACKED_CLIENTS: u64 = 100_000;

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

type Hash = [u8; 32];

/// Why a database lookup gave no key; shared by every call waiting on it.
#[derive(Debug)]
enum Miss {
    Unknown,
    Busy,
    Failed(ErrorCode, String),
}

/// What the cache did, counted since it started (for tests and benchmarks;
/// the same counts go to the `tally_gateway_key_*` metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyCacheStats {
    /// Database lookups that found a key.
    pub found_lookups: u64,
    /// Database lookups that found nothing.
    pub unknown_lookups: u64,
    /// Secrets refused for their shape, without a lookup.
    pub malformed: u64,
    /// Unknown secrets answered from the unknown cache, without a lookup.
    pub known_unknown: u64,
    /// Requests refused with 429 because their address sent too many unknown secrets.
    pub throttled: u64,
    /// Misses refused with 503 because every lookup slot stayed busy.
    pub busy: u64,
}

#[derive(Default)]
struct Counters {
    found_lookups: AtomicU64,
    unknown_lookups: AtomicU64,
    malformed: AtomicU64,
    known_unknown: AtomicU64,
    throttled: AtomicU64,
    busy: AtomicU64,
}

/// Counts a database lookup by what it found.
fn looked_up(counter: &AtomicU64, result: &'static str) {
    counter.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("tally_gateway_key_lookups_total", "result" => result).increment(1);
}

/// Counts a secret refused without a database lookup, by why.
fn refused(counter: &AtomicU64, reason: &'static str) {
    counter.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("tally_gateway_key_refusals_total", "reason" => reason).increment(1);
}

pub struct KeyCache {
    store: Store,
    /// Secrets of keys that exist (usable or not: revoked and expired keys
    /// are answered from here too).
    found: Cache<Hash, Arc<KeyInfo>>,
    /// Secrets no key has. Separate, so that it alone churns under a flood.
    unknown: Cache<Hash, ()>,
    lookups: Semaphore,
    clients: ClientThrottle,
    counters: Counters,
}

impl KeyCache {
    pub fn new(store: Store, settings: &GatewaySettings) -> Self {
        KeyCache {
            store,
            found: Cache::builder()
                .max_capacity(settings.key_cache_capacity.max(1))
                .time_to_live(Duration::from_secs(settings.key_cache_ttl_secs.max(1)))
                .support_invalidation_closures()
                .build(),
            // Least recently used goes first: a client retrying one bad secret
            // keeps it cached while random secrets pass through.
            unknown: Cache::builder()
                .max_capacity(settings.unknown_key_cache_capacity.max(1))
                .time_to_live(Duration::from_secs(
                    settings.unknown_key_cache_ttl_secs.max(1),
                ))
                .eviction_policy(EvictionPolicy::lru())
                .build(),
            lookups: Semaphore::new(settings.key_lookup_concurrency.max(1)),
            clients: ClientThrottle::new(settings.unknown_keys_per_ip_per_sec),
            counters: Counters::default(),
        }
    }

    /// The key a bearer secret names, usable or not. `invalid_api_key` (401)
    /// when no key has that secret, `rate_limited` (429, retry in a second)
    /// when `client` sent too many unknown secrets, `unavailable` (503) when
    /// every lookup slot stayed busy.
    pub async fn lookup(
        &self,
        secret: &str,
        client: Option<IpAddr>,
    ) -> Result<Arc<KeyInfo>, ApiError> {
        if !secret_well_formed(secret) {
            self.charge(client).await?;
            refused(&self.counters.malformed, "malformed");
            return Err(invalid_key());
        }
        let hash: Hash = Sha256::digest(secret.as_bytes()).into();
        if let Some(info) = self.found.get(&hash).await {
            return Ok(info);
        }
        let charge = self.charge(client).await?;
        if self.unknown.contains_key(&hash) {
            refused(&self.counters.known_unknown, "known_unknown");
            return Err(invalid_key());
        }
        match self.found.try_get_with(hash, self.load(hash)).await {
            Ok(info) => {
                charge.refund();
                Ok(info)
            }
            Err(miss) => match &*miss {
                Miss::Unknown => Err(invalid_key()),
                Miss::Busy => {
                    charge.refund();
                    Err(ApiError::new(
                        ErrorCode::Unavailable,
                        "too many API keys are being looked up at once; retry in a second",
                    ))
                }
                Miss::Failed(code, message) => {
                    charge.refund();
                    Err(ApiError::new(*code, message.clone()))
                }
            },
        }
    }

    /// Counts one request with a key that is not in the cache against its
    /// client's allowance; 429 when the allowance is used up.
    async fn charge(&self, client: Option<IpAddr>) -> Result<Charge, ApiError> {
        match self.clients.charge(client).await {
            Some(charge) => Ok(charge),
            None => {
                refused(&self.counters.throttled, "throttled");
                Err(ApiError::new(
                    ErrorCode::RateLimited,
                    "too many requests with unknown API keys from this address; retry in 1 s",
                ))
            }
        }
    }

    /// Reads one secret from the database, waiting for a lookup slot.
    async fn load(&self, hash: Hash) -> Result<Arc<KeyInfo>, Miss> {
        let Ok(Ok(_slot)) = tokio::time::timeout(LOOKUP_WAIT, self.lookups.acquire()).await
        else {
            refused(&self.counters.busy, "busy");
            return Err(Miss::Busy);
        };
        let failed = |e: ApiError| {
            tracing::error!(error = %e, "API key lookup failed");
            Miss::Failed(e.code, e.message)
        };
        let mut conn = self.store.conn().await.map_err(|e| failed(e.into()))?;
        let found = tally_store::keys::lookup_secret(&mut conn, &hex::encode(hash))
            .await
            .map_err(|e| failed(e.into()))?;
        drop(conn);
        match found {
            Some((row, secret_expires_at)) => {
                looked_up(&self.counters.found_lookups, "found");
                Ok(Arc::new(
                    KeyInfo::from_row(&row, secret_expires_at).map_err(failed)?,
                ))
            }
            None => {
                looked_up(&self.counters.unknown_lookups, "unknown");
                self.unknown.insert(hash, ()).await;
                Err(Miss::Unknown)
            }
        }
    }

    /// Drops the cached entries of these keys. moka applies the predicate to
    /// every entry cached until now (reads never return a match again) and
    /// removes the matches in its maintenance; entries cached afterwards are
    /// read after the change and stay.
    pub fn invalidate(&self, key_ids: &HashSet<String>) {
        if key_ids.is_empty() {
            return;
        }
        let ids = key_ids.clone();
        if let Err(e) = self
            .found
            .invalidate_entries_if(move |_, info| ids.contains(&info.id))
        {
            // Only possible without `support_invalidation_closures`; drop all
            // rather than serve a revoked key.
            tracing::error!(error = %e, "key cache invalidation failed; clearing it");
            self.found.invalidate_all();
        }
    }

    pub fn stats(&self) -> KeyCacheStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        KeyCacheStats {
            found_lookups: get(&c.found_lookups),
            unknown_lookups: get(&c.unknown_lookups),
            malformed: get(&c.malformed),
            known_unknown: get(&c.known_unknown),
            throttled: get(&c.throttled),
            busy: get(&c.busy),
        }
    }
}

/// Per-client-address allowance of requests whose key is not in the cache:
/// GCRA, `per_sec` a second with bursts as large, in memory and bounded
/// (`MAX_TRACKED_CLIENTS` addresses; an address idle for 2 s has a full
/// allowance again and is forgotten). IPv6 clients count per /64, the block
/// one subscriber usually gets.
struct ClientThrottle {
    per_sec: u32,
    started: Instant,
    /// Theoretical arrival time (microseconds since `started`) per address.
    tats: Cache<IpAddr, Arc<AtomicI64>>,
}

/// One unit of a client's allowance, given back when the key was valid.
struct Charge(Option<(Arc<AtomicI64>, i64)>);

impl Charge {
    fn refund(self) {
        if let Some((tat, interval)) = self.0 {
            tat.fetch_sub(interval, Ordering::Relaxed);
        }
    }
}

impl ClientThrottle {
    fn new(per_sec: u32) -> Self {
        ClientThrottle {
            per_sec,
            started: Instant::now(),
            tats: Cache::builder()
                .max_capacity(MAX_TRACKED_CLIENTS)
                .time_to_idle(Duration::from_secs(2))
                .build(),
        }
    }

    /// Takes one unit of `client`'s allowance; `None` when none is left.
    async fn charge(&self, client: Option<IpAddr>) -> Option<Charge> {
        let (Some(ip), per_sec) = (client, self.per_sec) else {
            return Some(Charge(None));
        };
        if per_sec == 0 {
            return Some(Charge(None));
        }
        let tat = self
            .tats
            .get_with(client_block(ip), async { Arc::new(AtomicI64::new(0)) })
            .await;
        let now = i64::try_from(self.started.elapsed().as_micros()).unwrap_or(i64::MAX);
        let interval = (1_000_000 / i64::from(per_sec)).max(1);
        let tolerance = 1_000_000 - interval;
        let mut current = tat.load(Ordering::Relaxed);
        loop {
            let next = current.max(now) + interval;
            if next - interval - tolerance > now {
                return None;
            }
            match tat.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Some(Charge(Some((tat, interval)))),
                Err(seen) => current = seen,
            }
        }
    }
}

/// The address a client is counted under: IPv4 as is (IPv4-mapped IPv6
/// too), IPv6 by its /64.
fn client_block(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(
                u128::from(v6) & 0xffff_ffff_ffff_ffff_0000_0000_0000_0000,
            )),
        },
    }
}

pub fn invalid_key() -> ApiError {
    ApiError::new(
        ErrorCode::InvalidApiKey,
        "missing or unknown API key; send it as 'Authorization: Bearer tk_…'",
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn the_lookup_hash_matches_the_stored_hash_format() {
        let secret = "tk_test_abc";
        let hash: Hash = Sha256::digest(secret.as_bytes()).into();
        assert_eq!(
            hex::encode(hash),
            crate::auth::tokens::sha256_hex(secret)
        );
    }

    #[test]
    fn ipv6_clients_count_per_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_block(a), client_block(b));
        assert_ne!(client_block(a), client_block(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(client_block(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[tokio::test]
    async fn a_client_gets_its_allowance_per_second_and_refunds_restore_it() {
        let throttle = ClientThrottle::new(5);
        let me: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let mut charges = Vec::new();
        for _ in 0..5 {
            charges.push(throttle.charge(Some(me)).await.expect("within the burst"));
        }
        assert!(throttle.charge(Some(me)).await.is_none(), "the sixth is refused");
        assert!(throttle.charge(Some(other)).await.is_some(), "others are not");
        assert!(throttle.charge(None).await.is_some(), "no address, no throttle");
        charges.pop().unwrap().refund();
        assert!(throttle.charge(Some(me)).await.is_some(), "a refund gives one back");
        assert!(throttle.charge(Some(me)).await.is_none());
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(throttle.charge(Some(me)).await.is_some(), "one more after 200 ms");
        let off = ClientThrottle::new(0);
        for _ in 0..100 {
            assert!(off.charge(Some(me)).await.is_some());
        }
    }
}
