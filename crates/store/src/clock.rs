//! The time Tally reads everywhere a date matters: expiries, quota periods,
//! statements, leases, recorded calls.
//!
//! It is the system clock plus an offset that only tests move, to cross a day
//! or month boundary or an expiry without waiting for it (see
//! [`travel_to`]). Nothing in the server moves it. Durations (timeouts, rate
//! buckets' refill, poll intervals) use `Instant` and are not affected.

use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Utc};

static OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// Current time in Unix milliseconds.
pub fn now_ms() -> i64 {
    system_ms() + OFFSET_MS.load(Ordering::Relaxed)
}

/// Current time.
pub fn now() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(now_ms()).unwrap_or_default()
}

/// Moves this process's clock so that it reads `at_ms` now and runs on from
/// there. The offset is process-wide: a test that travels runs alone in its
/// process (the API tests' `in_own_process!`).
pub fn travel_to(at_ms: i64) {
    OFFSET_MS.store(at_ms - system_ms(), Ordering::Relaxed);
}

fn system_ms() -> i64 {
    Utc::now().timestamp_millis()
}
