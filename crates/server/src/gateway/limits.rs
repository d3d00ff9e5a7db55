//! Per-key rate limits and quotas (K2), enforced in memory on the hot path.
//!
//! Rate limits use GCRA (the generic cell rate algorithm): one "theoretical
//! arrival time" per limit, so a check is a few integer operations and the
//! state is one number. A limit of N per period admits bursts of up to N and
//! then one call every period/N. The tokens-per-minute limit is charged after
//! the call, when the tokens are known: a call is admitted while the bucket is
//! not in debt, and its tokens may push it into debt for the next ones.
//!
//! Quotas count calls and credits per UTC day and calendar month. Credits are
//! reserved at admission (the call's maximum cost) and settled at capture, so
//! concurrent calls cannot overrun a credit quota either.
//!
//! The limiters of all keys live in [`Limiters`], bounded: past its capacity
//! it drops the limiters that hold nothing a fresh one would not (every bucket
//! refilled, no call in flight). Their day and month counters are read again
//! from the recorded usage when the key next calls.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{Datelike, TimeZone, Utc};
use dashmap::DashMap;
use tally_common::KeyLimits;

const MS_PER_SEC: i64 = 1000;

/// Locks a limiter, poisoned or not: its state is plain counters, consistent
/// after any panic.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One GCRA limit. Times are Unix milliseconds scaled by 1000 (microseconds)
/// so sub-millisecond emission intervals stay exact enough.
#[derive(Debug, Clone, Copy, Default)]
struct Gcra {
    tat_us: i64,
}

/// What a limit says about a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitState {
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the limit is fully replenished (or, when exceeded, until
    /// the next call is admitted).
    pub reset_secs: u64,
}

impl Gcra {
    /// Admits one unit of `limit` per `period_us` if the bucket allows it.
    fn admit(
        &mut self,
        now_us: i64,
        limit: u64,
        period_us: i64,
        cost: u64,
    ) -> Result<LimitState, LimitState> {
        let limit_i = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
        let interval = (period_us / limit_i).max(1);
        let tolerance = period_us - interval;
        let tat = self.tat_us.max(now_us);
        let cost_us = interval.saturating_mul(i64::try_from(cost).unwrap_or(i64::MAX));
        let new_tat = tat.saturating_add(cost_us);
        let allow_at = new_tat - tolerance - interval;
        if allow_at > now_us {
            return Err(LimitState {
                limit,
                remaining: 0,
                reset_secs: ceil_secs(allow_at - now_us),
            });
        }
        self.tat_us = new_tat;
        Ok(self.state(now_us, limit, interval, tolerance))
    }

    fn state(&self, now_us: i64, limit: u64, interval: i64, tolerance: i64) -> LimitState {
        let used = (self.tat_us - now_us).max(0);
        let free = (tolerance + interval - used).max(0);
        LimitState {
            limit,
            remaining: u64::try_from(free / interval).unwrap_or(0).min(limit),
            reset_secs: ceil_secs(used),
        }
    }

    /// [`Gcra::state`] of a limit of `limit` per `period_us`.
    fn state_of(&self, now_us: i64, limit: u64, period_us: i64) -> LimitState {
        let limit_i = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
        let interval = (period_us / limit_i).max(1);
        self.state(now_us, limit, interval, period_us - interval)
    }

    /// Charges `cost` units after the fact, possibly into debt.
    fn charge(&mut self, now_us: i64, limit: u64, period_us: i64, cost: u64) {
        let limit_i = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
        let interval = (period_us / limit_i).max(1);
        let cost_us = interval.saturating_mul(i64::try_from(cost).unwrap_or(i64::MAX));
        self.tat_us = self.tat_us.max(now_us).saturating_add(cost_us);
    }

    /// Whether a call may start: the bucket is not in debt.
    fn open(&self, now_us: i64, limit: u64, period_us: i64) -> Result<(), LimitState> {
        let limit_i = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
        let interval = (period_us / limit_i).max(1);
        let tolerance = period_us - interval;
        if self.tat_us - tolerance - interval > now_us {
            return Err(LimitState {
                limit,
                remaining: 0,
                reset_secs: ceil_secs(self.tat_us - tolerance - interval - now_us),
            });
        }
        Ok(())
    }
}

pub(crate) fn ceil_secs(us: i64) -> u64 {
    u64::try_from((us + 999_999) / 1_000_000).unwrap_or(0)
}

/// Calls and credits of one quota period.
#[derive(Debug, Clone, Copy, Default)]
struct Period {
    /// Start of the period (Unix ms); 0 until counted.
    start_ms: i64,
    requests: i64,
    credits: i64,
    /// Maximum cost of calls in flight.
    reserved: i64,
}

/// Why a call was turned away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A rate limit (429 `rate_limited`).
    Rate(LimitState),
    /// A daily or monthly quota (429 `quota_exceeded`); which one, and when it resets.
    Quota {
        what: &'static str,
        retry_after_secs: u64,
    },
}

/// The four quotas, in the order they are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    DayRequests,
    MonthRequests,
    DayCredits,
    MonthCredits,
}

impl Quota {
    /// The refusal of a call by this quota at `now_ms`: it resets with its period.
    pub fn refusal(self, now_ms: i64) -> Refusal {
        let (what, resets_ms) = match self {
            Quota::DayRequests => ("daily request", next_day_start(now_ms)),
            Quota::MonthRequests => ("monthly request", next_month_start(now_ms)),
            Quota::DayCredits => ("daily credit", next_day_start(now_ms)),
            Quota::MonthCredits => ("monthly credit", next_month_start(now_ms)),
        };
        Refusal::Quota {
            what,
            retry_after_secs: ceil_secs((resets_ms - now_ms).saturating_mul(1000)),
        }
    }
}

/// Which rate limit refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    PerSecond,
    PerMinute,
    TokensPerMinute,
}

impl Rate {
    /// The limit and its period (microseconds), if the key has it.
    pub fn of(self, limits: &KeyLimits) -> Option<(u64, i64)> {
        match self {
            Rate::PerSecond => limits
                .requests_per_second
                .map(|l| (u64::from(l), 1_000_000)),
            Rate::PerMinute => limits
                .requests_per_minute
                .map(|l| (u64::from(l), 60_000_000)),
            Rate::TokensPerMinute => limits.tokens_per_minute.map(|l| (l, 60_000_000)),
        }
    }

    /// The refusal of a call by this limit when it admits again in `wait_us`.
    pub fn refusal(self, limits: &KeyLimits, wait_us: i64) -> Refusal {
        Refusal::Rate(LimitState {
            limit: self.of(limits).map_or(0, |(l, _)| l),
            remaining: 0,
            reset_secs: ceil_secs(wait_us),
        })
    }
}

/// The state the shared limiter (`shared_limits`, Redis) holds for a key
/// right after it admitted a call: this instance's limiter takes it over, so
/// it decides from the cluster's counts should Redis go away.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SharedState {
    /// Theoretical arrival times (Unix microseconds; 0: none).
    pub rps_tat_us: i64,
    pub rpm_tat_us: i64,
    pub tpm_tat_us: i64,
    /// The day and month counters, when the key has a quota (the shared
    /// limiter keeps none otherwise).
    pub quotas: Option<Counted>,
}

/// Whether a key has any rate limit or quota at all: only those reach the
/// shared limiter.
pub fn is_limited(l: &KeyLimits) -> bool {
    has_quota(l)
        || l.requests_per_second.is_some()
        || l.requests_per_minute.is_some()
        || l.tokens_per_minute.is_some()
}

/// Whether a key has a daily or monthly quota.
pub fn has_quota(l: &KeyLimits) -> bool {
    l.requests_per_day.is_some()
        || l.requests_per_month.is_some()
        || l.credits_per_day_micros.is_some()
        || l.credits_per_month_micros.is_some()
}

/// The in-memory limit and quota state of one key.
#[derive(Debug, Default)]
pub struct KeyLimiter {
    rps: Gcra,
    rpm: Gcra,
    tpm: Gcra,
    day: Period,
    month: Period,
}

pub fn day_start(now_ms: i64) -> i64 {
    let now = Utc
        .timestamp_millis_opt(now_ms)
        .single()
        .unwrap_or_default();
    now.date_naive()
        .and_hms_opt(0, 0, 0)
        .map(|d| d.and_utc().timestamp_millis())
        .unwrap_or(0)
}

pub fn next_day_start(now_ms: i64) -> i64 {
    day_start(now_ms) + 24 * 3600 * MS_PER_SEC
}

pub fn month_start(now_ms: i64) -> i64 {
    let now = Utc
        .timestamp_millis_opt(now_ms)
        .single()
        .unwrap_or_default();
    Utc.with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .single()
        .map(|d| d.timestamp_millis())
        .unwrap_or(0)
}

pub fn next_month_start(now_ms: i64) -> i64 {
    let now = Utc
        .timestamp_millis_opt(now_ms)
        .single()
        .unwrap_or_default();
    let (y, m) = if now.month() == 12 {
        (now.year() + 1, 1)
    } else {
        (now.year(), now.month() + 1)
    };
    Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0)
        .single()
        .map(|d| d.timestamp_millis())
        .unwrap_or(i64::MAX)
}

/// Counters read from the database when a key is first used in a period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counted {
    pub day_start_ms: i64,
    pub day_requests: i64,
    pub day_credits: i64,
    pub month_start_ms: i64,
    pub month_requests: i64,
    pub month_credits: i64,
}

/// The current quota counters, for key statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaCounters {
    pub day_requests: i64,
    pub day_credits: i64,
    pub month_requests: i64,
    pub month_credits: i64,
}

impl KeyLimiter {
    /// Whether a fresh limiter would decide exactly as this one does: every
    /// rate bucket has refilled (its last call is a full window back, token
    /// debt paid) and no call holds a reservation. Its quota counters are not
    /// lost with it: they are read again from the recorded usage.
    fn idle(&self, now_ms: i64) -> bool {
        let now_us = now_ms.saturating_mul(1000);
        [self.rps, self.rpm, self.tpm]
            .iter()
            .all(|g| g.tat_us <= now_us)
            && self.day.reserved == 0
            && self.month.reserved == 0
    }

    /// Whether the day and month counters are current for `now_ms`; when not,
    /// the caller loads them from the database with [`KeyLimiter::load`].
    pub fn counted(&self, now_ms: i64) -> bool {
        self.day.start_ms == day_start(now_ms) && self.month.start_ms == month_start(now_ms)
    }

    pub fn load(&mut self, c: Counted) {
        if self.day.start_ms != c.day_start_ms {
            self.day = Period {
                start_ms: c.day_start_ms,
                requests: c.day_requests,
                credits: c.day_credits,
                reserved: self.day.reserved,
            };
        }
        if self.month.start_ms != c.month_start_ms {
            self.month = Period {
                start_ms: c.month_start_ms,
                requests: c.month_requests,
                credits: c.month_credits,
                reserved: self.month.reserved,
            };
        }
    }

    pub fn counters(&self) -> QuotaCounters {
        QuotaCounters {
            day_requests: self.day.requests,
            day_credits: self.day.credits,
            month_requests: self.month.requests,
            month_credits: self.month.credits,
        }
    }

    /// Checks every limit and quota for one call that may cost up to
    /// `max_cost`; on success counts the call and reserves its cost. Returns
    /// the state of the tightest rate limit, for the `RateLimit-*` headers.
    pub fn admit(
        &mut self,
        limits: &KeyLimits,
        now_ms: i64,
        max_cost: i64,
    ) -> Result<Option<LimitState>, Refusal> {
        let now_us = now_ms.saturating_mul(1000);
        // Quotas first: they do not change state when they refuse.
        let over = |used: i64, limit: Option<u64>| {
            limit.is_some_and(|l| u64::try_from(used).unwrap_or(0) >= l)
        };
        if over(self.day.requests, limits.requests_per_day) {
            return Err(Quota::DayRequests.refusal(now_ms));
        }
        if over(self.month.requests, limits.requests_per_month) {
            return Err(Quota::MonthRequests.refusal(now_ms));
        }
        let credits_over = |p: &Period, limit: Option<i64>| {
            limit.is_some_and(|l| p.credits + p.reserved + max_cost > l)
        };
        if credits_over(&self.day, limits.credits_per_day_micros) {
            return Err(Quota::DayCredits.refusal(now_ms));
        }
        if credits_over(&self.month, limits.credits_per_month_micros) {
            return Err(Quota::MonthCredits.refusal(now_ms));
        }
        if let Some(tpm) = limits.tokens_per_minute {
            self.tpm
                .open(now_us, tpm, 60_000_000)
                .map_err(Refusal::Rate)?;
        }
        // Check both request limits before changing either.
        let (mut rps, mut rpm) = (self.rps, self.rpm);
        let mut tightest: Option<LimitState> = None;
        let mut consider = |s: LimitState| {
            if tightest.is_none_or(|t| s.remaining < t.remaining) {
                tightest = Some(s);
            }
        };
        if let Some(l) = limits.requests_per_second {
            consider(
                rps.admit(now_us, u64::from(l), 1_000_000, 1)
                    .map_err(Refusal::Rate)?,
            );
        }
        if let Some(l) = limits.requests_per_minute {
            consider(
                rpm.admit(now_us, u64::from(l), 60_000_000, 1)
                    .map_err(Refusal::Rate)?,
            );
        }
        self.rps = rps;
        self.rpm = rpm;
        self.day.requests += 1;
        self.month.requests += 1;
        self.day.reserved += max_cost;
        self.month.reserved += max_cost;
        Ok(tightest)
    }

    /// Takes over the state the shared limiter reached by admitting a call
    /// that may cost up to `max_cost` (see [`SharedState`]); returns the
    /// state of the tightest rate limit, as [`KeyLimiter::admit`] does.
    pub fn adopt(
        &mut self,
        limits: &KeyLimits,
        now_ms: i64,
        shared: &SharedState,
        max_cost: i64,
    ) -> Option<LimitState> {
        self.rps.tat_us = shared.rps_tat_us;
        self.rpm.tat_us = shared.rpm_tat_us;
        self.tpm.tat_us = shared.tpm_tat_us;
        match shared.quotas {
            Some(c) => {
                for (p, start, requests, credits) in [
                    (&mut self.day, c.day_start_ms, c.day_requests, c.day_credits),
                    (
                        &mut self.month,
                        c.month_start_ms,
                        c.month_requests,
                        c.month_credits,
                    ),
                ] {
                    p.start_ms = start;
                    p.requests = requests;
                    p.credits = credits;
                }
            }
            // Counted as an admission here would count it.
            None => {
                self.day.requests += 1;
                self.month.requests += 1;
            }
        }
        // The reservation of this instance's calls: released by `settle`.
        self.day.reserved += max_cost;
        self.month.reserved += max_cost;
        self.rate_state(limits, now_ms)
    }

    /// The state of the tightest request-rate limit now.
    fn rate_state(&self, limits: &KeyLimits, now_ms: i64) -> Option<LimitState> {
        let now_us = now_ms.saturating_mul(1000);
        let mut tightest: Option<LimitState> = None;
        for (gcra, rate) in [(&self.rps, Rate::PerSecond), (&self.rpm, Rate::PerMinute)] {
            if let Some((limit, period_us)) = rate.of(limits) {
                let s = gcra.state_of(now_us, limit, period_us);
                if tightest.is_none_or(|t| s.remaining < t.remaining) {
                    tightest = Some(s);
                }
            }
        }
        tightest
    }

    /// Settles a finished call: its reservation becomes its actual cost, and
    /// its tokens count against the tokens-per-minute limit.
    pub fn settle(
        &mut self,
        limits: &KeyLimits,
        now_ms: i64,
        reserved: i64,
        cost: i64,
        tokens: u64,
    ) {
        for p in [&mut self.day, &mut self.month] {
            p.reserved = (p.reserved - reserved).max(0);
            p.credits += cost;
        }
        if let Some(tpm) = limits.tokens_per_minute {
            self.tpm
                .charge(now_ms.saturating_mul(1000), tpm, 60_000_000, tokens);
        }
    }
}

/// The limiters of every key that called recently, by key id.
///
/// Bounded: when a new key would take the map past `capacity`, and at most
/// once a second, it drops every limiter that is [idle](KeyLimiter::idle)
/// and that nothing outside the map holds (a call in flight keeps its
/// limiter, from admission until its usage is committed, so the counts it
/// settles are never lost). Limiters in use are kept even past the capacity:
/// they belong to keys that authenticated, so the map cannot grow past the
/// keys actually calling.
pub struct Limiters {
    map: DashMap<String, Arc<Mutex<KeyLimiter>>>,
    capacity: usize,
    /// When the last sweep ran (Unix ms).
    swept_ms: AtomicI64,
}

impl Limiters {
    pub fn new(capacity: usize) -> Self {
        Limiters {
            map: DashMap::new(),
            capacity: capacity.max(1),
            swept_ms: AtomicI64::new(0),
        }
    }

    /// The limiter of `key_id`, created (fresh, quotas not yet counted) when
    /// there is none.
    pub fn get(&self, key_id: &str, now_ms: i64) -> Arc<Mutex<KeyLimiter>> {
        if let Some(l) = self.map.get(key_id) {
            return l.clone();
        }
        if self.map.len() >= self.capacity {
            self.sweep(now_ms);
        }
        self.map.entry(key_id.to_owned()).or_default().clone()
    }

    /// Drops the idle limiters nobody holds, at most once a second.
    fn sweep(&self, now_ms: i64) {
        let last = self.swept_ms.load(Ordering::Relaxed);
        if now_ms - last < 1000
            || self
                .swept_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        // `retain` holds each shard's write lock, so nobody can take a new
        // handle to a limiter while its count is checked. A limiter locked
        // right now is in use: keep it rather than wait.
        self.map.retain(|_, limiter| {
            Arc::strong_count(limiter) > 1 || limiter.try_lock().map_or(true, |l| !l.idle(now_ms))
        });
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap()
    }

    fn limits(f: impl FnOnce(&mut KeyLimits)) -> KeyLimits {
        let mut l = KeyLimits::default();
        f(&mut l);
        l
    }

    #[test]
    fn a_per_second_limit_admits_a_burst_then_refuses_until_time_passes() {
        let l = limits(|l| l.requests_per_second = Some(3));
        let mut k = KeyLimiter::default();
        let t = 1_700_000_000_000;
        for expected_remaining in [2, 1, 0] {
            let s = k.admit(&l, t, 0).unwrap().unwrap();
            assert_eq!(s.remaining, expected_remaining);
            assert_eq!(s.limit, 3);
        }
        match k.admit(&l, t, 0) {
            Err(Refusal::Rate(s)) => assert_eq!(s.reset_secs, 1),
            other => panic!("expected a refusal, got {other:?}"),
        }
        // One interval (333 ms) later, one more call fits.
        assert!(k.admit(&l, t + 334, 0).is_ok());
        assert!(k.admit(&l, t + 334, 0).is_err());
    }

    #[test]
    fn a_refused_per_minute_call_does_not_use_up_the_per_second_limit() {
        let l = limits(|l| {
            l.requests_per_second = Some(10);
            l.requests_per_minute = Some(2);
        });
        let mut k = KeyLimiter::default();
        let t = 1_700_000_000_000;
        assert!(k.admit(&l, t, 0).is_ok());
        assert!(k.admit(&l, t, 0).is_ok());
        for _ in 0..20 {
            assert!(k.admit(&l, t, 0).is_err());
        }
        assert_eq!(k.rps.tat_us, t * 1000 + 200_000);
    }

    #[test]
    fn quotas_count_requests_and_reserve_credits() {
        let l = limits(|l| {
            l.requests_per_day = Some(3);
            l.credits_per_day_micros = Some(100);
        });
        let mut k = KeyLimiter::default();
        let t = 1_700_000_000_000;
        k.load(Counted {
            day_start_ms: day_start(t),
            month_start_ms: month_start(t),
            ..Counted::default()
        });
        assert!(k.counted(t));
        k.admit(&l, t, 60).unwrap();
        // 60 reserved: another call that may cost 60 does not fit.
        assert!(matches!(
            k.admit(&l, t, 60),
            Err(Refusal::Quota {
                what: "daily credit",
                ..
            })
        ));
        k.settle(&l, t, 60, 10, 0);
        k.admit(&l, t, 60).unwrap();
        k.settle(&l, t, 60, 10, 0);
        k.admit(&l, t, 0).unwrap();
        assert!(matches!(
            k.admit(&l, t, 0),
            Err(Refusal::Quota {
                what: "daily request",
                ..
            })
        ));
        assert_eq!(k.counters().day_credits, 20);
        // The next day starts from zero.
        assert!(!k.counted(next_day_start(t)));
    }

    #[test]
    fn tokens_per_minute_refuses_while_in_debt() {
        let l = limits(|l| l.tokens_per_minute = Some(600));
        let mut k = KeyLimiter::default();
        let t = 1_700_000_000_000;
        k.admit(&l, t, 0).unwrap();
        k.settle(&l, t, 0, 0, 1200);
        match k.admit(&l, t, 0) {
            Err(Refusal::Rate(s)) => assert_eq!(s.reset_secs, 60),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(k.admit(&l, t + 61_000, 0).is_ok());
    }

    #[test]
    fn the_limiter_map_drops_only_idle_unheld_limiters_past_its_capacity() {
        // Two a minute: each call takes 30 s of the bucket.
        let l = limits(|l| l.requests_per_minute = Some(2));
        let limiters = Limiters::new(3);
        let t = 1_700_000_000_000;
        for key in ["a", "b", "c"] {
            lock(&limiters.get(key, t)).admit(&l, t, 0).unwrap();
        }
        // "a" is held by a call in flight; "b" called again at t + 50 s, so
        // its bucket refills only at t + 80 s; "c" refilled at t + 30 s.
        let held = limiters.get("a", t);
        lock(&limiters.get("b", t + 50_000))
            .admit(&l, t + 50_000, 0)
            .unwrap();
        limiters.get("d", t + 70_000);
        let mut kept: Vec<_> = limiters.map.iter().map(|e| e.key().clone()).collect();
        kept.sort();
        assert_eq!(kept, ["a", "b", "d"]);
        // The next sweep waits a second; then "a", released and refilled, goes.
        drop(held);
        limiters.get("e", t + 70_500);
        assert_eq!(limiters.len(), 4);
        limiters.get("f", t + 100_000);
        let mut kept: Vec<_> = limiters.map.iter().map(|e| e.key().clone()).collect();
        kept.sort();
        assert_eq!(kept, ["f"], "b, d and e refilled too");
        // A limiter with a reservation (a call admitted, not settled) stays.
        let busy = limiters.get("g", t + 100_000);
        lock(&busy).admit(&l, t + 100_000, 500).unwrap();
        drop(busy);
        limiters.get("h", t + 200_000);
        limiters.get("i", t + 300_000);
        assert!(limiters.map.contains_key("g"));
        assert!(!limiters.map.contains_key("f"));
    }

    #[test]
    fn periods_start_at_utc_midnight_and_the_first_of_the_month() {
        // 2026-11-22T15:30:00Z
        let t = 1_795_361_400_000;
        assert_eq!(day_start(t), 1_795_305_600_000);
        assert_eq!(month_start(t), 1_793_491_200_000);
        assert_eq!(next_month_start(t), 1_796_083_200_000);
    }
}
