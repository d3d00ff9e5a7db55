//! Usage events (G4): the recorded gateway calls and their queries.
//!
//! Policy: the gateway's writer task hands every finished call to
//! its backend's writer ([`crate::recording`]) in batches; one transaction inserts the usage rows, the
//! ledger entries of the calls that cost something (the caller's debit and,
//! for a seller's API, the seller's revenue and the platform's fee, C8), and
//! moves each balance once. A call is acknowledged only after that
//! transaction commits.

use sqlx::{AnyConnection, Row};
use tally_common::Environment;

use crate::{bad_value, Result};

/// One finished gateway call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    pub id: String,
    pub time: i64,
    pub namespace_id: String,
    pub environment: Environment,
    pub key_id: String,
    pub api: String,
    pub model: Option<String>,
    pub endpoint: String,
    pub request_type: &'static str,
    pub status: i64,
    pub error: Option<String>,
    pub latency_us: i64,
    pub upstream_latency_us: i64,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub cost_micros: i64,
    pub client_id: Option<String>,
    /// The seller namespace that owns the API and earns the cost (C8).
    pub seller_namespace_id: Option<String>,
    /// What the platform keeps of the cost; the seller earns the rest.
    pub platform_fee_micros: i64,
}

const USAGE_COLUMNS: &str = "id, time, namespace_id, environment, key_id, api, model, endpoint, \
     request_type, status, error, latency_us, upstream_latency_us, tokens_in, tokens_out, \
     cost_micros, client_id";

pub(crate) fn call_from_row(r: &sqlx::any::AnyRow) -> Result<CallRecord> {
    let env: String = r.try_get("environment")?;
    let request_type: String = r.try_get("request_type")?;
    Ok(CallRecord {
        id: r.try_get("id")?,
        time: r.try_get("time")?,
        namespace_id: r.try_get("namespace_id")?,
        environment: Environment::parse(&env).ok_or_else(|| bad_value("environment", &env))?,
        key_id: r.try_get("key_id")?,
        api: r.try_get("api")?,
        model: r.try_get("model")?,
        endpoint: r.try_get("endpoint")?,
        request_type: if request_type == "stream" {
            "stream"
        } else {
            "sync"
        },
        status: r.try_get("status")?,
        error: r.try_get("error")?,
        latency_us: r.try_get("latency_us")?,
        upstream_latency_us: r.try_get("upstream_latency_us")?,
        tokens_in: r.try_get("tokens_in")?,
        tokens_out: r.try_get("tokens_out")?,
        cost_micros: r.try_get("cost_micros")?,
        client_id: r.try_get("client_id")?,
        seller_namespace_id: None,
        platform_fee_micros: 0,
    })
}

#[derive(Debug, Clone, Default)]
pub struct UsageFilter<'a> {
    pub environment: Option<Environment>,
    pub key_id: Option<&'a str>,
    /// Calls older than this call id (ids are time-ordered).
    pub before: Option<&'a str>,
}

/// A namespace's calls, newest first.
pub async fn list(
    conn: &mut AnyConnection,
    namespace_id: &str,
    f: UsageFilter<'_>,
    limit: i64,
) -> Result<Vec<CallRecord>> {
    let sql = format!(
        "SELECT {USAGE_COLUMNS} FROM usage_events WHERE namespace_id = $1 \
         AND (CAST($2 AS TEXT) IS NULL OR environment = $2) \
         AND (CAST($3 AS TEXT) IS NULL OR key_id = $3) \
         AND (CAST($4 AS TEXT) IS NULL OR id < $4) \
         ORDER BY id DESC LIMIT $5"
    );
    let rows = sqlx::query(&sql)
        .bind(namespace_id)
        .bind(f.environment.map(Environment::as_str))
        .bind(f.key_id)
        .bind(f.before)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(call_from_row).collect()
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyTotals {
    pub calls: i64,
    pub errors: i64,
    pub spend_micros: i64,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub last_used_at: Option<i64>,
}

/// A key's calls since `since` (Unix ms; 0 for its whole life).
pub async fn key_totals(conn: &mut AnyConnection, key_id: &str, since: i64) -> Result<KeyTotals> {
    let row = sqlx::query(
        "SELECT CAST(COUNT(*) AS BIGINT) AS calls, \
         CAST(COALESCE(SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END), 0) AS BIGINT) AS errors, \
         CAST(COALESCE(SUM(cost_micros), 0) AS BIGINT) AS spend, \
         CAST(COALESCE(SUM(tokens_in), 0) AS BIGINT) AS tin, \
         CAST(COALESCE(SUM(tokens_out), 0) AS BIGINT) AS tout, \
         CAST(MAX(time) AS BIGINT) AS last \
         FROM usage_events WHERE key_id = $1 AND time >= $2",
    )
    .bind(key_id)
    .bind(since)
    .fetch_one(&mut *conn)
    .await?;
    Ok(KeyTotals {
        calls: row.try_get("calls")?,
        errors: row.try_get("errors")?,
        spend_micros: row.try_get("spend")?,
        tokens_in: row.try_get("tin")?,
        tokens_out: row.try_get("tout")?,
        last_used_at: row.try_get("last")?,
    })
}

/// Calls that count against a key's request quota since `since`: every call
/// the gateway admitted (those it turned away before forwarding have no cost
/// and a 4xx status of its own, and are left out).
pub async fn key_quota_usage(
    conn: &mut AnyConnection,
    key_id: &str,
    since: i64,
) -> Result<(i64, i64)> {
    let row = sqlx::query(
        "SELECT CAST(COUNT(*) AS BIGINT) AS calls, \
         CAST(COALESCE(SUM(cost_micros), 0) AS BIGINT) AS spend \
         FROM usage_events WHERE key_id = $1 AND time >= $2 \
         AND (error IS NULL OR error NOT IN \
           ('rate_limited', 'quota_exceeded', 'insufficient_credits', 'api_not_allowed'))",
    )
    .bind(key_id)
    .bind(since)
    .fetch_one(&mut *conn)
    .await?;
    Ok((row.try_get("calls")?, row.try_get("spend")?))
}
