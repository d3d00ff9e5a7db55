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
use moka::ops::compute::{CompResult, Op};
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
    /// When the key last changed (Unix ms): the version of its shared quota
    /// counters (`shared_limits`).
    pub updated_at: i64,
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
            updated_at: row.updated_at,
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

/// A key as read from the database, and when.
#[derive(Clone)]
struct Cached {
    info: Arc<KeyInfo>,
    loaded: Instant,
    /// Wall-clock time (Unix ms) the database read began: what it read was
    /// committed by then.
    read_at_ms: i64,
}

/// How long after its `updated_at` a key change may still commit: a cached
/// key read later than that already has it (see [`KeyCache::invalidate_changed`]).
pub const CHANGE_COMMIT_MS: i64 = 2000;

/// Why a database lookup gave no key.
#[derive(Debug)]
enum Miss {
    Throttled,
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
    /// The most database lookups that ran at once.
    pub peak_concurrent_lookups: u64,
}

#[derive(Default)]
struct Counters {
    found_lookups: AtomicU64,
    unknown_lookups: AtomicU64,
    malformed: AtomicU64,
    known_unknown: AtomicU64,
    throttled: AtomicU64,
    busy: AtomicU64,
    in_flight: AtomicU64,
    peak: AtomicU64,
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
    /// are answered from here too). Only a valid secret can enter it.
    found: Cache<Hash, Cached>,
    /// Secrets no key has. Separate, so that it alone churns under a flood.
    unknown: Cache<Hash, ()>,
    /// A cached key is read again after this long.
    ttl: Duration,
    lookups: Semaphore,
    clients: ClientThrottle,
    counters: Counters,
}

impl KeyCache {
    pub fn new(store: Store, settings: &GatewaySettings) -> Self {
        let ttl = Duration::from_secs(settings.key_cache_ttl_secs.max(1));
        KeyCache {
            store,
            // Keys unused for an hour leave; the others are re-read every
            // `ttl` (see `lookup`), so the cache never serves older data.
            found: Cache::builder()
                .max_capacity(settings.key_cache_capacity.max(1))
                .time_to_idle(ttl.max(Duration::from_secs(3600)))
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
            ttl,
            lookups: Semaphore::new(settings.key_lookup_concurrency.max(1)),
            clients: ClientThrottle::new(settings.unknown_keys_per_ip_per_sec),
            counters: Counters::default(),
        }
    }

    /// The key a bearer secret names, usable or not. `invalid_api_key` (401)
    /// when no key has that secret, `rate_limited` (429, retry in a second)
    /// when `client` sent too many unknown secrets, `unavailable` (503) when
    /// every lookup slot stayed busy.
    ///
    /// A key cached less than `ttl` ago is answered from memory, whoever
    /// asks. One cached longer is read again whatever the client's allowance:
    /// its secret was valid, so a throttled address keeps the keys it was
    /// using. Unknown secrets (malformed ones included) use up the client's
    /// allowance; once it is used up, its secrets that are not cached get
    /// 429 without a lookup.
    pub async fn lookup(
        &self,
        secret: &str,
        client: Option<IpAddr>,
    ) -> Result<Arc<KeyInfo>, ApiError> {
        if !secret_well_formed(secret) {
            self.refuse_throttled(client).await?;
            refused(&self.counters.malformed, "malformed");
            self.clients.failed(client).await;
            return Err(invalid_key());
        }
        let hash: Hash = Sha256::digest(secret.as_bytes()).into();
        let client = match self.found.get(&hash).await {
            Some(c) if c.loaded.elapsed() < self.ttl => {
                metrics::counter!("tally_gateway_key_cache_hits_total").increment(1);
                return Ok(c.info);
            }
            // Stale: the secret was valid, so the client is not throttled.
            Some(_) => None,
            None => {
                self.refuse_throttled(client).await?;
                if self.unknown.contains_key(&hash) {
                    refused(&self.counters.known_unknown, "known_unknown");
                    self.clients.failed(client).await;
                    return Err(invalid_key());
                }
                client
            }
        };
        match self.fetch(hash, client).await {
            Ok(Some(info)) => Ok(info),
            Ok(None) => {
                self.clients.failed(client).await;
                Err(invalid_key())
            }
            Err(Miss::Throttled) => Err(throttled()),
            Err(Miss::Busy) => Err(ApiError::new(
                ErrorCode::Unavailable,
                "too many API keys are being looked up at once; retry in a second",
            )
            .with_retry_after(RETRY_SOON)),
            // A database that is busy (503) clears as soon as the lookups do.
            Err(Miss::Failed(code, message)) if code == ErrorCode::Unavailable => {
                Err(ApiError::new(code, message).with_retry_after(RETRY_SOON))
            }
            Err(Miss::Failed(code, message)) => Err(ApiError::new(code, message)),
        }
    }

    /// 429 when `client` has used up its allowance of unknown keys.
    async fn refuse_throttled(&self, client: Option<IpAddr>) -> Result<(), ApiError> {
        if self.clients.blocked(client).await {
            refused(&self.counters.throttled, "throttled");
            return Err(throttled());
        }
        Ok(())
    }

    /// Reads a secret that is missing or stale, once however many calls ask
    /// for it at the same moment: moka runs the computations of one secret
    /// one after the other, and those after the first find its result.
    async fn fetch(
        &self,
        hash: Hash,
        client: Option<IpAddr>,
    ) -> Result<Option<Arc<KeyInfo>>, Miss> {
        let ttl = self.ttl;
        let result = self
            .found
            .entry(hash)
            .and_try_compute_with(|current| async move {
                if current.is_some_and(|c| c.value().loaded.elapsed() < ttl) {
                    return Ok(Op::Nop);
                }
                let read_at_ms = tally_store::now_ms();
                Ok(match self.load(hash, client).await? {
                    Some(info) => Op::Put(Cached {
                        info,
                        loaded: Instant::now(),
                        read_at_ms,
                    }),
                    None => Op::Remove,
                })
            })
            .await?;
        Ok(match result {
            CompResult::Inserted(e) | CompResult::ReplacedWith(e) | CompResult::Unchanged(e) => {
                Some(e.into_value().info)
            }
            CompResult::Removed(_) | CompResult::StillNone(_) => None,
        })
    }

    /// One database lookup of a secret, in a lookup slot; unknown secrets go
    /// to the unknown cache. `client` is checked again once a slot is free:
    /// its failures may have used up its allowance while it waited.
    async fn load(&self, hash: Hash, client: Option<IpAddr>) -> Result<Option<Arc<KeyInfo>>, Miss> {
        if self.unknown.contains_key(&hash) {
            refused(&self.counters.known_unknown, "known_unknown");
            return Ok(None);
        }
        let Ok(Ok(_slot)) = tokio::time::timeout(LOOKUP_WAIT, self.lookups.acquire()).await else {
            refused(&self.counters.busy, "busy");
            return Err(Miss::Busy);
        };
        if self.clients.blocked(client).await {
            refused(&self.counters.throttled, "throttled");
            return Err(Miss::Throttled);
        }
        let c = &self.counters;
        let running = c.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        c.peak.fetch_max(running, Ordering::Relaxed);
        let found = self.read(hash).await;
        c.in_flight.fetch_sub(1, Ordering::Relaxed);
        let failed = |e: ApiError| {
            tracing::error!(error = %e, "API key lookup failed");
            Miss::Failed(e.code, e.message)
        };
        match found.map_err(failed)? {
            Some((row, secret_expires_at)) => {
                looked_up(&c.found_lookups, "found");
                let info = KeyInfo::from_row(&row, secret_expires_at).map_err(failed)?;
                Ok(Some(Arc::new(info)))
            }
            None => {
                looked_up(&c.unknown_lookups, "unknown");
                self.unknown.insert(hash, ()).await;
                Ok(None)
            }
        }
    }

    async fn read(&self, hash: Hash) -> Result<Option<(KeyRow, Option<i64>)>, ApiError> {
        let mut conn = self.store.conn().await?;
        Ok(tally_store::keys::lookup_secret(&mut conn, &hex::encode(hash)).await?)
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
            .invalidate_entries_if(move |_, c| ids.contains(&c.info.id))
        {
            // Only possible without `support_invalidation_closures`; drop all
            // rather than serve a revoked key.
            tracing::error!(error = %e, "key cache invalidation failed; clearing it");
            self.found.invalidate_all();
        }
    }

    /// Drops the cached keys among `changed` (id, `updated_at`) that were
    /// read before their change could have committed; a key read later
    /// already has it and stays cached (a poll that looks back over changes
    /// it may have missed does not drop keys it need not).
    pub fn invalidate_changed(&self, changed: &[(String, i64)]) {
        if changed.is_empty() {
            return;
        }
        let changed: std::collections::HashMap<String, i64> = changed.iter().cloned().collect();
        if let Err(e) = self.found.invalidate_entries_if(move |_, c| {
            changed
                .get(&c.info.id)
                .is_some_and(|&updated| c.read_at_ms < updated.saturating_add(CHANGE_COMMIT_MS))
        }) {
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
            peak_concurrent_lookups: get(&c.peak),
        }
    }
}

/// Per-client-address allowance of unknown-key failures: GCRA, `per_sec` a
/// second with bursts as large, in memory and bounded (`MAX_TRACKED_CLIENTS`
/// addresses; an address idle for 2 s has its whole allowance again and is
/// forgotten). IPv6 clients count per /64, the block one subscriber usually
/// gets. Only failures are counted, so valid keys (many calls at once with a
/// new key included) never use the allowance up.
struct ClientThrottle {
    per_sec: u32,
    started: Instant,
    /// Theoretical arrival time (microseconds since `started`) per address.
    tats: Cache<IpAddr, Arc<AtomicI64>>,
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

    fn now_us(&self) -> i64 {
        i64::try_from(self.started.elapsed().as_micros()).unwrap_or(i64::MAX)
    }

    /// One failure's share of a second, when the throttle applies to `client`.
    fn interval_us(&self, client: Option<IpAddr>) -> Option<(IpAddr, i64)> {
        match (client, self.per_sec) {
            (Some(ip), per_sec @ 1..) => {
                Some((client_block(ip), (1_000_000 / i64::from(per_sec)).max(1)))
            }
            _ => None,
        }
    }

    /// Whether `client` has used up its allowance: `per_sec` failures within
    /// the last second, or more at a lower rate than it refills.
    async fn blocked(&self, client: Option<IpAddr>) -> bool {
        let Some((block, interval)) = self.interval_us(client) else {
            return false;
        };
        let Some(tat) = self.tats.get(&block).await else {
            return false;
        };
        let tolerance = 1_000_000 - interval;
        tat.load(Ordering::Relaxed) > self.now_us() + tolerance
    }

    /// Counts one unknown-key failure of `client`. The debt never exceeds a
    /// second, so an address is refused for at most a second after it stops.
    async fn failed(&self, client: Option<IpAddr>) {
        let Some((block, interval)) = self.interval_us(client) else {
            return;
        };
        let tat = self
            .tats
            .get_with(block, async { Arc::new(AtomicI64::new(0)) })
            .await;
        let now = self.now_us();
        let _ = tat.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
            Some((t.max(now) + interval).min(now + 1_000_000))
        });
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

/// The throttle of unknown keys and busy lookups clear within a second.
const RETRY_SOON: Duration = Duration::from_secs(1);

fn throttled() -> ApiError {
    ApiError::new(
        ErrorCode::RateLimited,
        "too many requests with unknown API keys from this address; retry in 1 s",
    )
    .with_retry_after(RETRY_SOON)
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
        assert_eq!(hex::encode(hash), crate::auth::tokens::sha256_hex(secret));
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
    async fn a_client_is_blocked_after_its_allowance_of_failures_until_it_refills() {
        let throttle = ClientThrottle::new(5);
        let me: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..4 {
            throttle.failed(Some(me)).await;
        }
        assert!(!throttle.blocked(Some(me)).await, "four of five used");
        throttle.failed(Some(me)).await;
        assert!(throttle.blocked(Some(me)).await, "five in a second");
        assert!(!throttle.blocked(Some(other)).await, "others are not");
        for _ in 0..100 {
            throttle.failed(None).await;
        }
        assert!(!throttle.blocked(None).await, "no address, no throttle");
        // The debt is capped at a second: many more failures do not extend it.
        for _ in 0..100 {
            throttle.failed(Some(me)).await;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(!throttle.blocked(Some(me)).await, "one more after 200 ms");
        throttle.failed(Some(me)).await;
        assert!(throttle.blocked(Some(me)).await);
        let off = ClientThrottle::new(0);
        for _ in 0..100 {
            off.failed(Some(me)).await;
        }
        assert!(!off.blocked(Some(me)).await);
    }
}
