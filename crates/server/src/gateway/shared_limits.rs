//! Per-key rate limits and quotas shared by every instance through Redis
//! (K2 across instances, O5).
//!
//! Policy:
//! - Without `redis_url` nothing here touches Redis: each instance limits on
//!   its own with its in-memory [`KeyLimiter`] (`limits.rs`), as a single
//!   instance always has.
//! - With it, a key that has at least one rate limit or quota is decided by
//!   Redis: one atomic Lua script (`EVALSHA`) per admission does what
//!   [`KeyLimiter::admit`] does, and one per finished call what
//!   [`KeyLimiter::settle`] does (while the call's record commits), so N
//!   instances together admit what one would. Keys without limits never
//!   reach Redis: their hot path has no round trip. A key that has only
//!   request-rate limits (no quota, no tokens per minute) has nothing to
//!   settle: one round trip per call.
//! - Time: the caller's clock (Unix microseconds, as the local limiter uses),
//!   never Redis's, so the local and the shared limiter compute the same
//!   buckets and periods. Instance clocks are NTP-synced; a skew of a few
//!   milliseconds moves a bucket by as much, and a call a few milliseconds
//!   either side of midnight may count in the neighbouring day.
//! - State, under `{prefix}:limits:{<key id>}:…` (the braces are a Redis
//!   Cluster hash tag: one key's state lives in one slot, as a script needs):
//!   `rps`, `rpm`, `tpm` hold the GCRA theoretical arrival times and expire
//!   when they are past (a missing one means "full"); `day:<start ms>` and
//!   `month:<start ms>` are hashes (`requests`, `credits`, `reserved`,
//!   `version`) that expire an hour after their period; `inflight` is a
//!   sorted set of the admitted calls not yet settled, scored by a deadline.
//!   So Redis never fills up: everything expires on its own.
//! - Seeding: a quota hash that is missing (a new period, a Redis restart or
//!   flush) or older than the key (`version`, the key's `updated_at`: a key
//!   whose limits changed may have stopped counting while it had no quota)
//!   makes the admission script answer "unseeded"; the instance reads the
//!   recorded usage (`tally_store::usage::key_quota_usage`; calls of one key
//!   arriving together share one read), writes it with a
//!   set-if-absent script (keeping the `reserved` of calls in flight) and
//!   tries again. A Redis restart never resets a quota; calls admitted but
//!   not yet recorded at that moment are not in the seed (the local
//!   limiter's `ensure_counted` has the same window).
//! - Reservations: a call admitted by Redis is entered in `inflight` with its
//!   maximum cost and a deadline (its compute limit plus two minutes).
//!   Settling removes it, and only a call it removes is settled, so a settle
//!   that is retried (after a timeout that may have reached Redis) counts
//!   once. The admission script releases the reservations of calls past their
//!   deadline (an instance that died mid-call), so a lost settle holds credits
//!   for minutes, not for the rest of the period. Credits count in the period
//!   the call finished in, as its usage row does.
//! - Degradation: every Redis operation waits at most
//!   `cluster.redis_timeout_ms`. An error or a timeout marks Redis down for
//!   this instance: calls are decided by the local limiter (kept warm: after
//!   every shared admission it takes over the counters and buckets Redis
//!   returned), Redis is not tried for a second, then one call probes it; the
//!   probe's success marks it up again. A call is never failed by Redis, and
//!   the first failure ends its use of Redis (an admission that has to seed
//!   makes at most five operations, each bounded). Each transition logs, writes a server-wide event (`redis.down`,
//!   `redis.up`) and sets the gauge `tally_redis_up`; the counter
//!   `tally_limits_local_total` counts the calls of limited keys decided
//!   locally while Redis was down. While down, each instance enforces the
//!   whole limit by itself (N instances may admit up to N times the limit
//!   between them): the documented tolerance of an outage, in exchange for
//!   never refusing service. Settles that could not reach Redis wait in a
//!   bounded queue (100,000) and are replayed when it is back.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use secrecy::ExposeSecret;
use tally_common::{KeyLimits, Severity};
use tally_store::events::NewEvent;
use tally_store::Store;

use super::keys::KeyInfo;
use super::limits::{
    self, has_quota, is_limited, lock, Counted, KeyLimiter, LimitState, Quota, QuotaCounters, Rate,
    Refusal, SharedState,
};
use crate::config::Settings;
use crate::error::ApiError;

/// How long Redis counts as down after a failure before one call probes it.
const DOWN_FOR_MS: i64 = 1000;
/// Most settles kept for Redis while it is down.
const MAX_PENDING: usize = 100_000;
/// A reservation outlives its call's compute limit by this much (the wait
/// for the record's commit), then the admission script releases it.
const HOLD_MARGIN_MS: i64 = 120_000;
/// A quota hash outlives its period by this much (settles of calls that
/// started in it).
const PERIOD_GRACE_MS: i64 = 3_600_000;
/// The largest token count charged at once; larger ones are absurd and
/// would lose precision in Lua's numbers (doubles).
const MAX_TOKENS: u64 = 1_000_000_000;

/// Where Redis is and how long to wait for it (`redis_url`, `[cluster]`).
#[derive(Clone)]
pub struct RedisSettings {
    client: redis::Client,
    prefix: String,
    timeout: Duration,
}

impl std::fmt::Debug for RedisSettings {
    // The client's connection info may hold a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &"[REDACTED]")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl RedisSettings {
    /// The Redis settings, when `redis_url` is set (and not empty); a URL that
    /// cannot be read is an error, so the server does not start with it.
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Option<RedisSettings>> {
        let Some(url) = settings
            .redis_url
            .as_ref()
            .map(|u| u.expose_secret().trim())
            .filter(|u| !u.is_empty())
        else {
            return Ok(None);
        };
        // The error may quote the URL, which may hold a password.
        let invalid = |_| anyhow::anyhow!("redis_url is not a valid redis:// URL");
        // Small requests, each awaited by a call: no Nagle delay.
        let info = redis::IntoConnectionInfo::into_connection_info(url)
            .map_err(invalid)?
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let client = redis::Client::open(info).map_err(invalid)?;
        let prefix = settings.cluster.redis_prefix.trim();
        if prefix.is_empty() || prefix.chars().any(|c| c.is_control() || c == ' ') {
            anyhow::bail!("cluster.redis_prefix must be a non-empty word");
        }
        Ok(Some(RedisSettings {
            client,
            prefix: prefix.to_owned(),
            timeout: Duration::from_millis(settings.cluster.redis_timeout_ms.max(1)),
        }))
    }
}

/// Who admitted a call, so its settle goes to the same place.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Admission {
    /// This instance's limiter (or nothing was admitted).
    #[default]
    Local,
    /// Redis, in the periods starting then (Unix ms).
    Shared {
        day_start_ms: i64,
        month_start_ms: i64,
    },
}

/// What admission says: the tightest rate limit's state and who admitted,
/// or why not.
pub type Admitted = Result<(Option<LimitState>, Admission), Refusal>;

/// The limits of every key: Redis when configured and up, else this
/// instance's limiters.
pub struct SharedLimits {
    store: Store,
    redis: Option<Arc<Redis>>,
}

impl SharedLimits {
    /// `redis: None` keeps every decision local. Starts one probe of Redis
    /// in the background, so its gauge and the event log tell at once when
    /// it cannot be reached.
    pub fn new(store: Store, redis: Option<RedisSettings>) -> anyhow::Result<SharedLimits> {
        let redis = match redis {
            None => None,
            Some(s) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(s.timeout))
                    .set_response_timeout(Some(s.timeout))
                    // The probes of `Health` retry; the manager itself tries once.
                    .set_number_of_retries(0);
                let conn = ConnectionManager::new_lazy_with_config(s.client, config)?;
                let redis = Arc::new(Redis {
                    conn,
                    prefix: s.prefix,
                    timeout: s.timeout,
                    health: Health::default(),
                    store: store.clone(),
                    seeds: moka::future::Cache::builder()
                        .max_capacity(10_000)
                        .time_to_live(Duration::from_secs(1))
                        .build(),
                    pending: Mutex::new(VecDeque::new()),
                });
                metrics::gauge!("tally_redis_up").set(1.0);
                let probe = redis.clone();
                tokio::spawn(async move {
                    let mut conn = probe.conn.clone();
                    let ping = redis::cmd("PING");
                    probe
                        .outcome(Attempt::Normal, ping.query_async::<String>(&mut conn))
                        .await;
                });
                Some(redis)
            }
        };
        Ok(SharedLimits { store, redis })
    }

    /// Checks a call that may cost up to `max_cost` against the key's limits
    /// and quotas and, when admitted, counts it and reserves its cost (see
    /// [`KeyLimiter::admit`]). `compute_limit_us` bounds how long the call
    /// may run. `Err` only when the recorded usage cannot be read.
    pub async fn admit(
        &self,
        key: &KeyInfo,
        limiter: &Mutex<KeyLimiter>,
        call_id: &str,
        now: i64,
        max_cost: i64,
        compute_limit_us: u64,
    ) -> Result<Admitted, ApiError> {
        if let Some(redis) = self.redis.as_ref().filter(|_| is_limited(&key.limits)) {
            let call = AdmitCall {
                key,
                call_id,
                now,
                max_cost,
                deadline_ms: now
                    .saturating_add(i64::try_from(compute_limit_us / 1000).unwrap_or(i64::MAX))
                    .saturating_add(HOLD_MARGIN_MS),
            };
            if let Some(decided) = redis.admit(&self.store, limiter, &call).await? {
                return Ok(decided);
            }
            metrics::counter!("tally_limits_local_total").increment(1);
        }
        ensure_counted(&self.store, &key.id, limiter, now).await?;
        Ok(lock(limiter)
            .admit(&key.limits, now, max_cost)
            .map(|state| (state, Admission::Local)))
    }

    /// Settles a finished call with what admission reserved, what it cost and
    /// the tokens it used, where it was admitted. Never fails: a settle Redis
    /// cannot take now is kept for when it is back.
    #[allow(clippy::too_many_arguments)]
    pub async fn settle(
        &self,
        key: &KeyInfo,
        limiter: &Mutex<KeyLimiter>,
        admission: Admission,
        call_id: &str,
        now: i64,
        reserved: i64,
        cost: i64,
        tokens: u64,
    ) {
        lock(limiter).settle(&key.limits, now, reserved, cost, tokens);
        let (Some(redis), Admission::Shared { .. }) = (&self.redis, admission) else {
            return;
        };
        if !tracked(&key.limits) {
            return;
        }
        let settle = Settle {
            key_id: key.id.clone(),
            member: member(call_id, reserved, admission),
            admission,
            now,
            tpm: key.limits.tokens_per_minute,
            quotas: has_quota(&key.limits),
            tokens: tokens.min(MAX_TOKENS),
            reserved: reserved.max(0),
            cost: cost.max(0),
        };
        redis.settle(settle).await;
    }

    /// A key's quota counters now, for its statistics: from Redis when it
    /// holds them (else from the recorded usage), from this instance's
    /// limiter without Redis. `version` is the key's `updated_at`.
    pub async fn quota_counters(
        &self,
        key_id: &str,
        version: i64,
        limiter: &Mutex<KeyLimiter>,
    ) -> Result<QuotaCounters, ApiError> {
        let now = tally_store::now_ms();
        if let Some(redis) = &self.redis {
            if let Some(c) = redis
                .quota_counters(&self.store, key_id, version, now)
                .await?
            {
                return Ok(c);
            }
        }
        ensure_counted(&self.store, key_id, limiter, now).await?;
        Ok(lock(limiter).counters())
    }
}

/// Whether a key's calls have anything to settle in Redis: a quota's
/// reservation and cost, or tokens per minute.
fn tracked(l: &KeyLimits) -> bool {
    has_quota(l) || l.tokens_per_minute.is_some()
}

/// A call's entry in the key's `inflight` set.
fn member(call_id: &str, reserved: i64, admission: Admission) -> String {
    match admission {
        Admission::Shared {
            day_start_ms,
            month_start_ms,
        } => format!(
            "{call_id}|{}|{day_start_ms}|{month_start_ms}",
            reserved.max(0)
        ),
        Admission::Local => String::new(),
    }
}

/// Loads a key's day and month counters into its limiter when the period is
/// new to it.
async fn ensure_counted(
    store: &Store,
    key_id: &str,
    limiter: &Mutex<KeyLimiter>,
    now: i64,
) -> Result<(), ApiError> {
    if lock(limiter).counted(now) {
        return Ok(());
    }
    let c = count_usage(store, key_id, now).await?;
    lock(limiter).load(c);
    Ok(())
}

/// The recorded usage of a key in the day and the month of `now`.
async fn count_usage(store: &Store, key_id: &str, now: i64) -> Result<Counted, ApiError> {
    let (day_start, month_start) = (limits::day_start(now), limits::month_start(now));
    let mut conn = store.conn().await?;
    let (day_requests, day_credits) =
        tally_store::usage::key_quota_usage(&mut conn, key_id, day_start).await?;
    let (month_requests, month_credits) =
        tally_store::usage::key_quota_usage(&mut conn, key_id, month_start).await?;
    Ok(Counted {
        day_start_ms: day_start,
        day_requests,
        day_credits,
        month_start_ms: month_start,
        month_requests,
        month_credits,
    })
}

/// Whether Redis is up, as this instance sees it.
#[derive(Debug)]
struct Health {
    up: AtomicBool,
    /// While down: when the next probe may go (Unix ms).
    retry_at_ms: AtomicI64,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            up: AtomicBool::new(true),
            retry_at_ms: AtomicI64::new(0),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    /// Redis is up.
    Normal,
    /// Redis is down and this call may find out whether it is back.
    Probe,
}

impl Health {
    /// Whether a call may use Redis now: always while it is up; while it is
    /// down, one call a second (the probe).
    fn attempt(&self, now: i64) -> Option<Attempt> {
        if self.up.load(Ordering::Acquire) {
            return Some(Attempt::Normal);
        }
        let at = self.retry_at_ms.load(Ordering::Acquire);
        (now >= at
            && self
                .retry_at_ms
                .compare_exchange(at, now + DOWN_FOR_MS, Ordering::AcqRel, Ordering::Acquire)
                .is_ok())
        .then_some(Attempt::Probe)
    }

    /// Records a success; true when it brought Redis back up. Only a probe
    /// does: a call that started before Redis went down and succeeded late
    /// says nothing about now.
    fn succeeded(&self, attempt: Attempt) -> bool {
        attempt == Attempt::Probe && !self.up.swap(true, Ordering::AcqRel)
    }

    /// Records a failure; true when it took Redis down.
    fn failed(&self, now: i64) -> bool {
        self.retry_at_ms.store(now + DOWN_FOR_MS, Ordering::Release);
        self.up.swap(false, Ordering::AcqRel)
    }
}

/// A settle for Redis (kept while Redis is down).
#[derive(Debug, Clone)]
struct Settle {
    key_id: String,
    member: String,
    admission: Admission,
    now: i64,
    tpm: Option<u64>,
    quotas: bool,
    tokens: u64,
    reserved: i64,
    cost: i64,
}

/// A call being admitted.
struct AdmitCall<'a> {
    key: &'a KeyInfo,
    call_id: &'a str,
    now: i64,
    max_cost: i64,
    deadline_ms: i64,
}

/// What the admission script answered.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    Admitted(SharedState),
    Refused(Refusal),
    /// A quota hash is missing or older than the key: seed it and retry.
    Unseeded,
}

struct Redis {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    health: Health,
    store: Store,
    /// The recorded usage being read for seeding, by (key, day, month):
    /// concurrent calls of one key read it once (entries go when read).
    seeds: moka::future::Cache<(String, i64, i64), Counted>,
    pending: Mutex<VecDeque<Settle>>,
}

/// The Redis key of one part of a key's state.
fn redis_key(prefix: &str, key_id: &str, what: &str) -> String {
    format!("{prefix}:limits:{{{key_id}}}:{what}")
}

/// The admission script for one call (see [`ADMIT_LUA`]).
fn admit_invocation(prefix: &str, c: &AdmitCall<'_>) -> redis::ScriptInvocation<'static> {
    let limits = &c.key.limits;
    let (day_start, month_start) = (limits::day_start(c.now), limits::month_start(c.now));
    let member = if tracked(limits) {
        let admission = Admission::Shared {
            day_start_ms: day_start,
            month_start_ms: month_start,
        };
        member(c.call_id, c.max_cost, admission)
    } else {
        String::new()
    };
    let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
    let opt_i = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_default();
    let key = |what: &str| redis_key(prefix, &c.key.id, what);
    let mut inv = ADMIT.prepare_invoke();
    inv.key(key("rps"))
        .key(key("rpm"))
        .key(key("tpm"))
        .key(key(&format!("day:{day_start}")))
        .key(key(&format!("month:{month_start}")))
        .key(key("inflight"))
        .arg(c.now.saturating_mul(1000))
        .arg(opt(limits.requests_per_second.map(u64::from)))
        .arg(opt(limits.requests_per_minute.map(u64::from)))
        .arg(opt(limits.tokens_per_minute))
        .arg(if has_quota(limits) { "1" } else { "0" })
        .arg(opt(limits.requests_per_day))
        .arg(opt(limits.requests_per_month))
        .arg(opt_i(limits.credits_per_day_micros))
        .arg(opt_i(limits.credits_per_month_micros))
        .arg(c.max_cost)
        .arg(c.key.updated_at)
        .arg(member)
        .arg(c.deadline_ms)
        .arg(limits::next_day_start(c.now) - c.now + PERIOD_GRACE_MS)
        .arg(limits::next_month_start(c.now) - c.now + PERIOD_GRACE_MS)
        .arg(day_start)
        .arg(month_start);
    inv
}

/// The seeding script for a key's periods at `now` (see [`SEED_LUA`]).
fn seed_invocation(
    prefix: &str,
    key_id: &str,
    version: i64,
    now: i64,
    usage: &Counted,
) -> redis::ScriptInvocation<'static> {
    let mut inv = SEED.prepare_invoke();
    inv.key(redis_key(
        prefix,
        key_id,
        &format!("day:{}", usage.day_start_ms),
    ))
    .key(redis_key(
        prefix,
        key_id,
        &format!("month:{}", usage.month_start_ms),
    ))
    .arg(version)
    .arg(usage.day_requests)
    .arg(usage.day_credits)
    .arg(usage.month_requests)
    .arg(usage.month_credits)
    .arg(limits::next_day_start(now) - now + PERIOD_GRACE_MS)
    .arg(limits::next_month_start(now) - now + PERIOD_GRACE_MS);
    inv
}

/// The settle script of a call Redis admitted (see [`SETTLE_LUA`]).
fn settle_invocation(prefix: &str, s: &Settle) -> Option<redis::ScriptInvocation<'static>> {
    let Admission::Shared {
        day_start_ms,
        month_start_ms,
    } = s.admission
    else {
        return None;
    };
    let (day_now, month_now) = (limits::day_start(s.now), limits::month_start(s.now));
    let key = |what: &str| redis_key(prefix, &s.key_id, what);
    let mut inv = SETTLE.prepare_invoke();
    inv.key(key("tpm"))
        .key(key(&format!("day:{day_start_ms}")))
        .key(key(&format!("month:{month_start_ms}")))
        .key(key(&format!("day:{day_now}")))
        .key(key(&format!("month:{month_now}")))
        .key(key("inflight"))
        .arg(&s.member)
        .arg(s.now.saturating_mul(1000))
        .arg(s.tpm.map(|t| t.to_string()).unwrap_or_default())
        .arg(s.tokens)
        .arg(s.reserved)
        .arg(s.cost)
        .arg(if s.quotas { "1" } else { "0" });
    Some(inv)
}

impl Redis {
    fn key(&self, key_id: &str, what: &str) -> String {
        redis_key(&self.prefix, key_id, what)
    }

    /// Runs one Redis operation within the timeout and records how it went;
    /// `None` when it failed (Redis is then down).
    async fn outcome<T>(
        self: &Arc<Self>,
        attempt: Attempt,
        op: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        let result = match tokio::time::timeout(self.timeout, op).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {} ms", self.timeout.as_millis())),
        };
        match result {
            Ok(v) => {
                if self.health.succeeded(attempt) {
                    self.transition(true, None);
                }
                Some(v)
            }
            Err(why) => {
                if self.health.failed(tally_store::now_ms()) {
                    self.transition(false, Some(why));
                }
                None
            }
        }
    }

    /// Logs a change of state, records it in the event log and sets the gauge;
    /// back up, replays the settles kept meanwhile.
    fn transition(self: &Arc<Self>, up: bool, why: Option<String>) {
        metrics::gauge!("tally_redis_up").set(if up { 1.0 } else { 0.0 });
        let (kind, severity, message) = if up {
            tracing::info!("Redis is reachable again: per-key limits and quotas are shared again");
            (
                "redis.up",
                Severity::Info,
                "Redis is reachable again: per-key rate limits and quotas are shared by every instance again",
            )
        } else {
            tracing::warn!(
                error = why.as_deref().unwrap_or(""),
                "Redis is unreachable: per-key limits and quotas are enforced by this instance alone"
            );
            (
                "redis.down",
                Severity::Warning,
                "Redis is unreachable: each instance enforces per-key rate limits and quotas on its own until it is back",
            )
        };
        let store = self.store.clone();
        tokio::spawn(async move {
            let written = async {
                let mut conn = store.conn().await?;
                tally_store::events::insert(
                    &mut conn,
                    NewEvent {
                        namespace_id: None,
                        environment: None,
                        kind,
                        severity,
                        message,
                        actor: Some("system"),
                    },
                )
                .await
            };
            if let Err(e) = written.await {
                tracing::warn!(error = %e, kind, "cannot record a Redis event");
            }
        });
        if up {
            let redis = self.clone();
            tokio::spawn(async move { redis.replay().await });
        }
    }

    /// `None`: Redis could not decide (down, failing or not seeded after two
    /// tries); the local limiter decides.
    async fn admit(
        self: &Arc<Self>,
        store: &Store,
        limiter: &Mutex<KeyLimiter>,
        c: &AdmitCall<'_>,
    ) -> Result<Option<Admitted>, ApiError> {
        let Some(attempt) = self.health.attempt(c.now) else {
            return Ok(None);
        };
        let limits = &c.key.limits;
        let (day_start, month_start) = (limits::day_start(c.now), limits::month_start(c.now));
        let admission = Admission::Shared {
            day_start_ms: day_start,
            month_start_ms: month_start,
        };
        for _ in 0..3 {
            let mut conn = self.conn.clone();
            let inv = admit_invocation(&self.prefix, c);
            let Some(raw) = self
                .outcome(attempt, inv.invoke_async::<Vec<i64>>(&mut conn))
                .await
            else {
                return Ok(None);
            };
            match parse_admit(&raw, limits, c.now, day_start, month_start) {
                Some(Reply::Admitted(state)) => {
                    let rate = lock(limiter).adopt(limits, c.now, &state, c.max_cost);
                    return Ok(Some(Ok((rate, admission))));
                }
                Some(Reply::Refused(r)) => return Ok(Some(Err(r))),
                Some(Reply::Unseeded) => {
                    if !self.seed(store, c, attempt).await? {
                        return Ok(None);
                    }
                }
                None => {
                    tracing::warn!(?raw, "unexpected answer of the Redis admission script");
                    return Ok(None);
                }
            }
        }
        Ok(None)
    }

    /// Writes the recorded usage of the key's periods into the hashes that
    /// are missing or older than the key; false when Redis failed.
    async fn seed(
        self: &Arc<Self>,
        store: &Store,
        c: &AdmitCall<'_>,
        attempt: Attempt,
    ) -> Result<bool, ApiError> {
        let (day_start, month_start) = (limits::day_start(c.now), limits::month_start(c.now));
        let id = (c.key.id.clone(), day_start, month_start);
        let usage = self
            .seeds
            .try_get_with(id.clone(), count_usage(store, &c.key.id, c.now))
            .await
            .map_err(|e| match Arc::try_unwrap(e) {
                Ok(e) => e,
                Err(e) => ApiError::new(e.code, e.message.clone()),
            });
        // Only the calls waiting for this read share it: the next seeding
        // (say, Redis lost its data a moment later) reads the usage again.
        self.seeds.invalidate(&id).await;
        let usage = usage?;
        let mut conn = self.conn.clone();
        let inv = seed_invocation(&self.prefix, &c.key.id, c.key.updated_at, c.now, &usage);
        Ok(self
            .outcome(attempt, inv.invoke_async::<i64>(&mut conn))
            .await
            .is_some())
    }

    async fn settle(self: &Arc<Self>, s: Settle) {
        let Some(attempt) = self.health.attempt(s.now) else {
            self.keep(s);
            return;
        };
        if !self.run_settle(attempt, &s).await {
            self.keep(s);
        }
    }

    /// Runs one settle script; false when Redis failed.
    async fn run_settle(self: &Arc<Self>, attempt: Attempt, s: &Settle) -> bool {
        let Some(inv) = settle_invocation(&self.prefix, s) else {
            return true;
        };
        let mut conn = self.conn.clone();
        self.outcome(attempt, inv.invoke_async::<i64>(&mut conn))
            .await
            .is_some()
    }

    /// Keeps a settle for when Redis is back (the oldest go past the bound:
    /// their reservations expire with their deadline).
    fn keep(&self, s: Settle) {
        let mut pending = lock(&self.pending);
        if pending.len() >= MAX_PENDING {
            pending.pop_front();
        }
        pending.push_back(s);
    }

    /// Replays the settles kept while Redis was down; stops at the first
    /// failure (Redis is down again and they wait for the next time).
    async fn replay(self: &Arc<Self>) {
        loop {
            let Some(s) = lock(&self.pending).pop_front() else {
                return;
            };
            if !self.run_settle(Attempt::Normal, &s).await {
                lock(&self.pending).push_front(s);
                return;
            }
        }
    }

    /// The quota counters Redis holds for a key, periods it does not hold
    /// read from the recorded usage; `None` when Redis is down.
    async fn quota_counters(
        self: &Arc<Self>,
        store: &Store,
        key_id: &str,
        version: i64,
        now: i64,
    ) -> Result<Option<QuotaCounters>, ApiError> {
        let Some(attempt) = self.health.attempt(now) else {
            return Ok(None);
        };
        let (day_start, month_start) = (limits::day_start(now), limits::month_start(now));
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        for what in [format!("day:{day_start}"), format!("month:{month_start}")] {
            pipe.cmd("HMGET")
                .arg(self.key(key_id, &what))
                .arg("requests")
                .arg("credits")
                .arg("version");
        }
        let Some(hashes) = self
            .outcome(
                attempt,
                pipe.query_async::<Vec<Vec<Option<i64>>>>(&mut conn),
            )
            .await
        else {
            return Ok(None);
        };
        let held = |i: usize| match hashes.get(i).map(Vec::as_slice) {
            Some([Some(requests), Some(credits), Some(v)]) if *v >= version => {
                Some((*requests, *credits))
            }
            _ => None,
        };
        let (day, month) = match (held(0), held(1)) {
            (Some(d), Some(m)) => (d, m),
            (d, m) => {
                let usage = count_usage(store, key_id, now).await?;
                (
                    d.unwrap_or((usage.day_requests, usage.day_credits)),
                    m.unwrap_or((usage.month_requests, usage.month_credits)),
                )
            }
        };
        Ok(Some(QuotaCounters {
            day_requests: day.0,
            day_credits: day.1,
            month_requests: month.0,
            month_credits: month.1,
        }))
    }
}

/// Reads the admission script's answer (see [`ADMIT_LUA`]).
fn parse_admit(
    raw: &[i64],
    limits: &KeyLimits,
    now: i64,
    day_start: i64,
    month_start: i64,
) -> Option<Reply> {
    match raw {
        [0, rps, rpm, tpm, day_requests, day_credits, month_requests, month_credits] => {
            Some(Reply::Admitted(SharedState {
                rps_tat_us: *rps,
                rpm_tat_us: *rpm,
                tpm_tat_us: *tpm,
                quotas: has_quota(limits).then_some(Counted {
                    day_start_ms: day_start,
                    day_requests: *day_requests,
                    day_credits: *day_credits,
                    month_start_ms: month_start,
                    month_requests: *month_requests,
                    month_credits: *month_credits,
                }),
            }))
        }
        [1, which, wait_us] => {
            let rate = match which {
                1 => Rate::PerSecond,
                2 => Rate::PerMinute,
                3 => Rate::TokensPerMinute,
                _ => return None,
            };
            Some(Reply::Refused(rate.refusal(limits, *wait_us)))
        }
        [2, which] => {
            let quota = match which {
                1 => Quota::DayRequests,
                2 => Quota::MonthRequests,
                3 => Quota::DayCredits,
                4 => Quota::MonthCredits,
                _ => return None,
            };
            Some(Reply::Refused(quota.refusal(now)))
        }
        [3] => Some(Reply::Unseeded),
        _ => None,
    }
}

/// Functions every script shares. Numbers are Lua doubles: exact for
/// integers below 2^53 (microsecond times are about 2^51); they are written
/// back with `%.0f`, since `tostring` would shorten them to 14 digits.
const LUA_COMMON: &str = r#"
local function int(x) return string.format('%.0f', x) end
local function interval_of(limit, period)
  return math.max(math.floor(period / math.max(limit, 1)), 1)
end
-- A TAT key lives until its time is past (a missing key means a full bucket).
local function set_tat(key, tat, now)
  local ttl = math.min(math.max(math.floor((tat - now) / 1000), 0) + 1000, 172800000)
  redis.call('SET', key, int(tat), 'PX', int(ttl))
end
local function release(key, amount)
  if amount ~= '0' and redis.call('EXISTS', key) == 1 then
    if redis.call('HINCRBY', key, 'reserved', '-' .. amount) < 0 then
      redis.call('HSET', key, 'reserved', 0)
    end
  end
end
"#;

/// `KeyLimiter::admit` against Redis.
///
/// KEYS: rps, rpm, tpm TATs; day hash; month hash; inflight set.
/// ARGV: 1 now (us); 2 rps, 3 rpm, 4 tpm limits ('' none); 5 quotas '1'/'0';
/// 6 requests/day, 7 requests/month, 8 credits/day, 9 credits/month ('' none);
/// 10 max cost; 11 key version; 12 inflight member ('' none); 13 its deadline
/// (ms); 14 day hash TTL, 15 month hash TTL (ms); 16 day start, 17 month start.
///
/// Answers `{0, rps TAT, rpm TAT, tpm TAT, day requests, day credits, month
/// requests, month credits}` (admitted, counted, reserved), `{1, limit,
/// wait us}` (1 rps, 2 rpm, 3 tpm), `{2, quota}` (1 day requests, 2 month
/// requests, 3 day credits, 4 month credits) or `{3}` (unseeded). A refusal
/// changes nothing.
const ADMIT_LUA: &str = r#"
local now = tonumber(ARGV[1])
local now_ms = math.floor(now / 1000)
local quotas = ARGV[5] == '1'
local member = ARGV[12]
local version = tonumber(ARGV[11])
local day_req, day_cred, month_req, month_cred = 0, 0, 0, 0
if quotas then
  for i = 4, 5 do
    local v = redis.call('HGET', KEYS[i], 'version')
    if not v or tonumber(v) < version then return {3} end
  end
end
if member ~= '' then
  -- Calls past their deadline will not settle: release what they hold.
  local expired = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', now_ms, 'LIMIT', 0, 100)
  for _, m in ipairs(expired) do
    local amount, d, mo = string.match(m, '|(%d+)|(%d+)|(%d+)$')
    if amount then
      if d == ARGV[16] then release(KEYS[4], amount) end
      if mo == ARGV[17] then release(KEYS[5], amount) end
    end
    redis.call('ZREM', KEYS[6], m)
  end
end
local max_cost = tonumber(ARGV[10])
if quotas then
  local d = redis.call('HMGET', KEYS[4], 'requests', 'credits', 'reserved')
  local m = redis.call('HMGET', KEYS[5], 'requests', 'credits', 'reserved')
  day_req, day_cred = tonumber(d[1] or '0'), tonumber(d[2] or '0')
  month_req, month_cred = tonumber(m[1] or '0'), tonumber(m[2] or '0')
  local day_res, month_res = tonumber(d[3] or '0'), tonumber(m[3] or '0')
  if ARGV[6] ~= '' and day_req >= tonumber(ARGV[6]) then return {2, 1} end
  if ARGV[7] ~= '' and month_req >= tonumber(ARGV[7]) then return {2, 2} end
  if ARGV[8] ~= '' and day_cred + day_res + max_cost > tonumber(ARGV[8]) then return {2, 3} end
  if ARGV[9] ~= '' and month_cred + month_res + max_cost > tonumber(ARGV[9]) then return {2, 4} end
end
local tpm_tat = 0
if ARGV[4] ~= '' then
  tpm_tat = tonumber(redis.call('GET', KEYS[3]) or '0')
  if tpm_tat - 60000000 > now then return {1, 3, tpm_tat - 60000000 - now} end
end
-- Both request limits are checked before either changes.
local function gcra(key, limit, period)
  if limit == '' then return 0, nil end
  local tat = tonumber(redis.call('GET', key) or '0')
  local new_tat = math.max(tat, now) + interval_of(tonumber(limit), period)
  if new_tat - period > now then return nil, new_tat - period - now end
  return new_tat, nil
end
local rps_tat, rps_wait = gcra(KEYS[1], ARGV[2], 1000000)
if not rps_tat then return {1, 1, rps_wait} end
local rpm_tat, rpm_wait = gcra(KEYS[2], ARGV[3], 60000000)
if not rpm_tat then return {1, 2, rpm_wait} end
if ARGV[2] ~= '' then set_tat(KEYS[1], rps_tat, now) end
if ARGV[3] ~= '' then set_tat(KEYS[2], rpm_tat, now) end
if quotas then
  for i = 4, 5 do
    redis.call('HINCRBY', KEYS[i], 'requests', 1)
    if ARGV[10] ~= '0' then redis.call('HINCRBY', KEYS[i], 'reserved', ARGV[10]) end
  end
  day_req, month_req = day_req + 1, month_req + 1
end
if member ~= '' then
  redis.call('ZADD', KEYS[6], ARGV[13], member)
  local keep = tonumber(ARGV[13]) - now_ms + 60000
  if redis.call('PTTL', KEYS[6]) < keep then redis.call('PEXPIRE', KEYS[6], int(keep)) end
end
return {0, rps_tat, rpm_tat, tpm_tat, day_req, day_cred, month_req, month_cred}
"#;

/// Writes recorded usage into quota hashes that are missing or older than
/// the key, keeping the `reserved` of calls in flight.
///
/// KEYS: day hash, month hash. ARGV: 1 version; 2 day requests, 3 day
/// credits; 4 month requests, 5 month credits; 6 day TTL, 7 month TTL (ms).
const SEED_LUA: &str = r#"
for i = 1, 2 do
  local v = redis.call('HGET', KEYS[i], 'version')
  if not v or tonumber(v) < tonumber(ARGV[1]) then
    redis.call('HSET', KEYS[i], 'requests', ARGV[2 * i], 'credits', ARGV[2 * i + 1],
      'version', ARGV[1])
    redis.call('HSETNX', KEYS[i], 'reserved', 0)
    redis.call('PEXPIRE', KEYS[i], ARGV[5 + i])
  end
end
return 1
"#;

/// `KeyLimiter::settle` against Redis, once per call.
///
/// KEYS: tpm TAT; day and month hashes of the admission; day and month
/// hashes of now; inflight set. ARGV: 1 member; 2 now (us); 3 tpm limit ('':
/// none); 4 tokens; 5 reserved; 6 cost; 7 quotas '1'/'0'. Answers 1, or 0
/// when the call was settled before (or released past its deadline).
const SETTLE_LUA: &str = r#"
if redis.call('ZREM', KEYS[6], ARGV[1]) == 0 then return 0 end
if ARGV[7] == '1' then
  release(KEYS[2], ARGV[5])
  release(KEYS[3], ARGV[5])
  if ARGV[6] ~= '0' then
    for i = 4, 5 do
      if redis.call('EXISTS', KEYS[i]) == 1 then
        redis.call('HINCRBY', KEYS[i], 'credits', ARGV[6])
      end
    end
  end
end
if ARGV[3] ~= '' and ARGV[4] ~= '0' then
  local now = tonumber(ARGV[2])
  local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
    + interval_of(tonumber(ARGV[3]), 60000000) * tonumber(ARGV[4])
  set_tat(KEYS[1], tat, now)
end
return 1
"#;

static ADMIT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(&format!("{LUA_COMMON}{ADMIT_LUA}")));
static SEED: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(SEED_LUA));
static SETTLE: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(&format!("{LUA_COMMON}{SETTLE_LUA}")));

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use rand::{Rng, SeedableRng};
    use tally_common::Environment;

    use super::*;

    /// The test Redis (`TALLY_TEST_REDIS_URL`, default the local one); under
    /// CI it must be there, elsewhere its absence skips the test.
    async fn test_redis() -> Option<redis::aio::MultiplexedConnection> {
        let url = std::env::var("TALLY_TEST_REDIS_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
        if let Ok(client) = redis::Client::open(url.as_str()) {
            if let Ok(conn) = client.get_multiplexed_async_connection().await {
                return Some(conn);
            }
        }
        assert!(
            std::env::var_os("CI").is_none(),
            "Redis at {url} must be reachable under CI"
        );
        eprintln!("SKIPPED: no Redis at {url}; set TALLY_TEST_REDIS_URL");
        None
    }

    fn random_limits(rng: &mut impl Rng) -> KeyLimits {
        let mut pick = |p: f64, lo: u64, hi: u64| rng.gen_bool(p).then(|| rng.gen_range(lo..hi));
        KeyLimits {
            requests_per_second: pick(0.5, 1, 6).map(|v| u32::try_from(v).unwrap()),
            requests_per_minute: pick(0.4, 1, 40).map(|v| u32::try_from(v).unwrap()),
            tokens_per_minute: pick(0.4, 100, 3000),
            requests_per_day: pick(0.5, 1, 15),
            requests_per_month: pick(0.3, 5, 30),
            credits_per_day_micros: pick(0.5, 100, 2000).map(|v| i64::try_from(v).unwrap()),
            credits_per_month_micros: pick(0.3, 500, 4000).map(|v| i64::try_from(v).unwrap()),
        }
    }

    /// The Lua scripts against the Rust limiter they mirror: random limits,
    /// random calls, costs and tokens at random times, every decision and
    /// counter compared.
    #[tokio::test]
    async fn the_scripts_decide_exactly_as_the_local_limiter_does() {
        let Some(mut conn) = test_redis().await else {
            return;
        };
        let prefix = format!("tallyunit-{}", uuid::Uuid::new_v4().simple());
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        for round in 0..60 {
            let key = KeyInfo {
                id: format!("key{round}"),
                namespace_id: "ns".into(),
                environment: Environment::Test,
                allowed_apis: Vec::new(),
                limits: random_limits(&mut rng),
                expires_at: None,
                revoked: false,
                secret_expires_at: None,
                updated_at: 1,
            };
            // 2026-11-22T12:00:00Z: the round stays inside one day.
            let mut now: i64 = 1_795_348_800_000;
            let day_requests = rng.gen_range(0..3);
            let day_credits = rng.gen_range(0..100);
            let usage = Counted {
                day_start_ms: limits::day_start(now),
                day_requests,
                day_credits,
                month_start_ms: limits::month_start(now),
                month_requests: day_requests + rng.gen_range(0..5),
                month_credits: day_credits + rng.gen_range(0..300),
            };
            let mut local = KeyLimiter::default();
            local.load(usage);
            let _: i64 = seed_invocation(&prefix, &key.id, key.updated_at, now, &usage)
                .invoke_async(&mut conn)
                .await
                .unwrap();
            let mut inflight: Vec<(String, i64)> = Vec::new();
            for step in 0..80 {
                now += rng.gen_range(0..400);
                let context = format!("round {round} step {step}, {:?}", key.limits);
                if !inflight.is_empty() && rng.gen_bool(0.4) {
                    let (call_id, reserved) =
                        inflight.swap_remove(rng.gen_range(0..inflight.len()));
                    let cost = rng.gen_range(0..=reserved);
                    let tokens = rng.gen_range(0..300);
                    local.settle(&key.limits, now, reserved, cost, tokens);
                    if !tracked(&key.limits) {
                        continue;
                    }
                    let admission = Admission::Shared {
                        day_start_ms: usage.day_start_ms,
                        month_start_ms: usage.month_start_ms,
                    };
                    let settle = Settle {
                        key_id: key.id.clone(),
                        member: member(&call_id, reserved, admission),
                        admission,
                        now,
                        tpm: key.limits.tokens_per_minute,
                        quotas: has_quota(&key.limits),
                        tokens,
                        reserved,
                        cost,
                    };
                    for expected in [1, 0] {
                        let settled: i64 = settle_invocation(&prefix, &settle)
                            .unwrap()
                            .invoke_async(&mut conn)
                            .await
                            .unwrap();
                        assert_eq!(settled, expected, "settled once: {context}");
                    }
                    continue;
                }
                let max_cost = rng.gen_range(0..200);
                let call_id = format!("call{step}");
                let expected = local.admit(&key.limits, now, max_cost);
                let call = AdmitCall {
                    key: &key,
                    call_id: &call_id,
                    now,
                    max_cost,
                    deadline_ms: now + 600_000,
                };
                let raw: Vec<i64> = admit_invocation(&prefix, &call)
                    .invoke_async(&mut conn)
                    .await
                    .unwrap();
                let reply = parse_admit(
                    &raw,
                    &key.limits,
                    now,
                    usage.day_start_ms,
                    usage.month_start_ms,
                );
                let got = match reply {
                    Some(Reply::Admitted(state)) => {
                        if let Some(c) = state.quotas {
                            let l = local.counters();
                            assert_eq!(
                                (c.day_requests, c.day_credits),
                                (l.day_requests, l.day_credits),
                                "{context}"
                            );
                            assert_eq!(
                                (c.month_requests, c.month_credits),
                                (l.month_requests, l.month_credits),
                                "{context}"
                            );
                        }
                        let mut scratch = KeyLimiter::default();
                        Ok(scratch.adopt(&key.limits, now, &state, max_cost))
                    }
                    Some(Reply::Refused(r)) => Err(r),
                    other => panic!("{other:?} ({raw:?}): {context}"),
                };
                assert_eq!(got, expected, "{context}");
                if got.is_ok() {
                    inflight.push((call_id, max_cost));
                }
            }
        }
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}:*"))
            .query_async(&mut conn)
            .await
            .unwrap();
        for k in keys {
            let _: i64 = redis::cmd("DEL")
                .arg(k)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    }

    /// A call whose instance died never settles: past its deadline its
    /// reservation goes back, and a settle arriving after that counts nothing.
    #[tokio::test]
    async fn reservations_of_calls_past_their_deadline_are_released_once() {
        let Some(mut conn) = test_redis().await else {
            return;
        };
        let prefix = format!("tallyunit-{}", uuid::Uuid::new_v4().simple());
        let key = KeyInfo {
            id: "key".into(),
            namespace_id: "ns".into(),
            environment: Environment::Test,
            allowed_apis: Vec::new(),
            limits: KeyLimits {
                credits_per_day_micros: Some(100),
                ..KeyLimits::default()
            },
            expires_at: None,
            revoked: false,
            secret_expires_at: None,
            updated_at: 1,
        };
        let now: i64 = 1_795_348_800_000;
        let usage = Counted {
            day_start_ms: limits::day_start(now),
            month_start_ms: limits::month_start(now),
            ..Counted::default()
        };
        let _: i64 = seed_invocation(&prefix, &key.id, 1, now, &usage)
            .invoke_async(&mut conn)
            .await
            .unwrap();
        let admit = |call_id: &'static str, at: i64| {
            let call = AdmitCall {
                key: &key,
                call_id,
                now: at,
                max_cost: 80,
                deadline_ms: at + 1000,
            };
            let inv = admit_invocation(&prefix, &call);
            let mut conn = conn.clone();
            async move { inv.invoke_async::<Vec<i64>>(&mut conn).await.unwrap()[0] }
        };
        assert_eq!(admit("a", now).await, 0, "admitted");
        assert_eq!(admit("b", now + 10).await, 2, "80 of 100 reserved");
        assert_eq!(admit("c", now + 1001).await, 0, "a's reservation expired");
        let admission = Admission::Shared {
            day_start_ms: usage.day_start_ms,
            month_start_ms: usage.month_start_ms,
        };
        let late = Settle {
            key_id: key.id.clone(),
            member: member("a", 80, admission),
            admission,
            now: now + 2000,
            tpm: None,
            quotas: true,
            tokens: 0,
            reserved: 80,
            cost: 50,
        };
        let settled: i64 = settle_invocation(&prefix, &late)
            .unwrap()
            .invoke_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(settled, 0);
        let day: Vec<Option<i64>> = redis::cmd("HMGET")
            .arg(redis_key(
                &prefix,
                &key.id,
                &format!("day:{}", usage.day_start_ms),
            ))
            .arg("credits")
            .arg("reserved")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(day, [Some(0), Some(80)], "only c holds credits");
        for what in ["inflight", &format!("day:{}", usage.day_start_ms)] {
            let _: i64 = redis::cmd("DEL")
                .arg(redis_key(&prefix, &key.id, what))
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        let _: i64 = redis::cmd("DEL")
            .arg(redis_key(
                &prefix,
                &key.id,
                &format!("month:{}", usage.month_start_ms),
            ))
            .query_async(&mut conn)
            .await
            .unwrap();
    }

    #[test]
    fn the_redis_url_is_optional_checked_and_never_printed() {
        let mut settings = Settings::default();
        assert!(RedisSettings::from_settings(&settings).unwrap().is_none());
        settings.redis_url = Some(" ".to_owned().into());
        assert!(RedisSettings::from_settings(&settings).unwrap().is_none());
        settings.redis_url = Some("redis://:hunter2@127.0.0.1:6379/2".to_owned().into());
        let redis = RedisSettings::from_settings(&settings).unwrap().unwrap();
        assert_eq!(redis.prefix, "tally");
        assert_eq!(redis.timeout, Duration::from_millis(200));
        assert!(!format!("{redis:?}").contains("hunter2"));
        settings.redis_url = Some("mysql://:hunter2@host".to_owned().into());
        let e = RedisSettings::from_settings(&settings)
            .unwrap_err()
            .to_string();
        assert!(e.contains("redis_url") && !e.contains("hunter2"), "{e}");
        settings.redis_url = Some("redis://127.0.0.1".to_owned().into());
        settings.cluster.redis_prefix = String::new();
        assert!(RedisSettings::from_settings(&settings).is_err());
    }

    #[test]
    fn redis_is_probed_once_a_second_while_down_and_only_a_probe_brings_it_back() {
        let h = Health::default();
        assert_eq!(h.attempt(1000), Some(Attempt::Normal));
        assert!(h.failed(1000), "up -> down");
        assert!(!h.failed(1000), "already down");
        assert_eq!(h.attempt(1500), None);
        assert!(
            !h.succeeded(Attempt::Normal),
            "a late success of a call in flight"
        );
        assert_eq!(h.attempt(2000), Some(Attempt::Probe));
        assert_eq!(h.attempt(2000), None, "one probe at a time");
        assert!(!h.failed(2100));
        assert_eq!(h.attempt(3000), None);
        assert_eq!(h.attempt(3100), Some(Attempt::Probe));
        assert!(h.succeeded(Attempt::Probe), "down -> up");
        assert_eq!(h.attempt(3100), Some(Attempt::Normal));
    }

    #[test]
    fn the_admission_answer_is_read_into_decisions() {
        let limits = KeyLimits {
            requests_per_minute: Some(6),
            requests_per_day: Some(10),
            ..KeyLimits::default()
        };
        let now = 1_795_348_800_000;
        assert_eq!(
            parse_admit(&[1, 2, 2_500_000], &limits, now, 0, 0),
            Some(Reply::Refused(Refusal::Rate(LimitState {
                limit: 6,
                remaining: 0,
                reset_secs: 3
            })))
        );
        assert_eq!(
            parse_admit(&[2, 1], &limits, now, 0, 0),
            Some(Reply::Refused(Quota::DayRequests.refusal(now)))
        );
        assert_eq!(parse_admit(&[3], &limits, now, 0, 0), Some(Reply::Unseeded));
        assert_eq!(parse_admit(&[9], &limits, now, 0, 0), None);
        assert_eq!(parse_admit(&[1, 7, 5], &limits, now, 0, 0), None);
    }
}
