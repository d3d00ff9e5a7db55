//! The in-memory [`Limiter`]: one GCRA state (a "theoretical arrival time")
//! per key in a bounded `moka` cache.
//!
//! Bounds: keys are stored as 128-bit digests (fixed size, and no email or
//! address is kept in memory), the cache holds at most `max_entries`, and an
//! entry expires the moment its budget is full again, because a full budget
//! and no entry mean the same thing. Under a flood of new keys, moka's
//! admission policy (TinyLFU) keeps the keys that are hit often, so a busy
//! attacker cannot evict the state that throttles them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::{ready, BoxFuture};
use moka::ops::compute::Op;
use moka::sync::Cache;
use moka::Expiry;
use sha2::{Digest, Sha256};

use super::{Limiter, Rate};

type Key = [u8; 16];

/// Expires each entry when its theoretical arrival time is reached.
struct UntilFull;

impl Expiry<Key, Instant> for UntilFull {
    fn expire_after_create(&self, _: &Key, tat: &Instant, now: Instant) -> Option<Duration> {
        Some(tat.saturating_duration_since(now))
    }

    fn expire_after_update(
        &self,
        _: &Key,
        tat: &Instant,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(tat.saturating_duration_since(now))
    }
}

pub struct MemoryLimiter {
    cache: Cache<Key, Instant>,
}

impl MemoryLimiter {
    pub fn new(max_entries: u64) -> Arc<Self> {
        Arc::new(MemoryLimiter {
            cache: Cache::builder()
                .max_capacity(max_entries.max(1))
                .expire_after(UntilFull)
                .build(),
        })
    }

    fn key(key: &str) -> Key {
        let digest = Sha256::digest(key.as_bytes());
        let mut out = [0u8; 16];
        out.copy_from_slice(&digest[..16]);
        out
    }

    /// GCRA: a budget of `burst` that refills one unit every `period / burst`.
    pub fn take_now(&self, key: &str, rate: Rate, now: Instant) -> Result<(), Duration> {
        let Some(interval) = rate.interval() else {
            return Ok(());
        };
        let mut verdict = Ok(());
        self.cache.entry(Self::key(key)).and_compute_with(|entry| {
            let tat = entry.map(|e| e.into_value()).unwrap_or(now).max(now);
            let next = tat.checked_add(interval).unwrap_or(tat);
            let limit = now.checked_add(rate.period).unwrap_or(now);
            if next > limit {
                verdict = Err(next.saturating_duration_since(limit));
                Op::Nop
            } else {
                Op::Put(next)
            }
        });
        verdict
    }

    fn give_back_now(&self, key: &str, rate: Rate, now: Instant) {
        let Some(interval) = rate.interval() else {
            return;
        };
        self.cache.entry(Self::key(key)).and_compute_with(|entry| {
            match entry.map(|e| e.into_value()) {
                Some(tat) => match tat.checked_sub(interval) {
                    Some(earlier) if earlier > now => Op::Put(earlier),
                    _ => Op::Remove,
                },
                None => Op::Nop,
            }
        });
    }

    /// Entries held now (after pending evictions), for tests and metrics.
    pub fn len(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Limiter for MemoryLimiter {
    fn take<'a>(&'a self, key: &'a str, rate: Rate) -> BoxFuture<'a, Result<(), Duration>> {
        Box::pin(ready(self.take_now(key, rate, Instant::now())))
    }

    fn give_back<'a>(&'a self, key: &'a str, rate: Rate) -> BoxFuture<'a, ()> {
        self.give_back_now(key, rate, Instant::now());
        Box::pin(ready(()))
    }

    fn clear<'a>(&'a self, key: &'a str) -> BoxFuture<'a, ()> {
        self.cache.invalidate(&Self::key(key));
        Box::pin(ready(()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn rate(burst: u32, secs: u64) -> Rate {
        Rate::new(burst, Duration::from_secs(secs))
    }

    #[test]
    fn a_burst_passes_then_one_unit_per_interval() {
        let limiter = MemoryLimiter::new(100);
        let start = Instant::now();
        let r = rate(3, 60);
        for _ in 0..3 {
            assert_eq!(limiter.take_now("k", r, start), Ok(()));
        }
        let wait = limiter.take_now("k", r, start).unwrap_err();
        assert_eq!(
            wait,
            Duration::from_secs(20),
            "one unit refills every 60/3 s"
        );
        let later = start + Duration::from_secs(20);
        assert_eq!(limiter.take_now("k", r, later), Ok(()));
        assert!(limiter.take_now("k", r, later).is_err());
        // Other keys have their own budget.
        assert_eq!(limiter.take_now("other", r, start), Ok(()));
    }

    #[test]
    fn a_given_back_unit_can_be_taken_again_and_clear_refills() {
        let limiter = MemoryLimiter::new(100);
        let now = Instant::now();
        let r = rate(2, 60);
        limiter.take_now("k", r, now).unwrap();
        limiter.take_now("k", r, now).unwrap();
        assert!(limiter.take_now("k", r, now).is_err());
        limiter.give_back_now("k", r, now);
        assert_eq!(limiter.take_now("k", r, now), Ok(()));
        limiter.cache.invalidate(&MemoryLimiter::key("k"));
        assert_eq!(limiter.take_now("k", r, now), Ok(()));
    }

    #[test]
    fn a_zero_rate_never_limits() {
        let limiter = MemoryLimiter::new(10);
        let now = Instant::now();
        for _ in 0..1000 {
            assert_eq!(limiter.take_now("k", rate(0, 60), now), Ok(()));
        }
        assert!(limiter.is_empty(), "a disabled limit keeps no state");
    }

    #[test]
    fn the_table_stays_within_its_bound_under_a_flood_of_keys() {
        let limiter = MemoryLimiter::new(1_000);
        let now = Instant::now();
        for i in 0..20_000 {
            let _ = limiter.take_now(&format!("addr-{i}"), rate(5, 60), now);
        }
        let held = limiter.len();
        assert!(held <= 1_000, "{held} entries for a bound of 1,000");
    }
}
