//! Usage events (G4) and the batch write that records gateway calls.
//!
//! Policy: the gateway's writer task hands every finished call to
//! [`record_calls`] in batches; one transaction inserts the usage rows, the
//! ledger entries of the calls that cost something (the caller's debit and,
//! for a seller's API, the seller's revenue and the platform's fee, C8), and
//! moves each balance once. A call is acknowledged only after that
//! transaction commits.

use std::collections::HashMap;

use sqlx::{AnyConnection, Row};
use tally_common::Environment;

use crate::{bad_value, ledger, now_ms, Result};

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

/// Usage rows per multi-row INSERT: few distinct statements to prepare, well
/// under every backend's limit on bound parameters.
const CHUNK: usize = 32;

const USAGE_COLUMNS: &str = "id, time, namespace_id, environment, key_id, api, model, endpoint, \
     request_type, status, error, latency_us, upstream_latency_us, tokens_in, tokens_out, \
     cost_micros, client_id";
const USAGE_ARITY: usize = 17;

fn placeholders(rows: usize, arity: usize) -> String {
    let mut out = String::with_capacity(rows * arity * 5);
    for r in 0..rows {
        if r > 0 {
            out.push(',');
        }
        out.push('(');
        for c in 0..arity {
            if c > 0 {
                out.push(',');
            }
            out.push('$');
            out.push_str(&(r * arity + c + 1).to_string());
        }
        out.push(')');
    }
    out
}

/// Records a batch of calls: usage rows, a `usage` ledger entry for every call
/// with a cost, and one balance update per namespace and environment. Run it in
/// a transaction.
pub async fn record_calls(conn: &mut AnyConnection, calls: &[CallRecord]) -> Result<()> {
    for chunk in calls.chunks(CHUNK) {
        let sql = format!(
            "INSERT INTO usage_events ({USAGE_COLUMNS}) VALUES {}",
            placeholders(chunk.len(), USAGE_ARITY)
        );
        let mut q = sqlx::query(&sql);
        for c in chunk {
            q = q
                .bind(&c.id)
                .bind(c.time)
                .bind(&c.namespace_id)
                .bind(c.environment.as_str())
                .bind(&c.key_id)
                .bind(&c.api)
                .bind(c.model.as_deref())
                .bind(&c.endpoint)
                .bind(c.request_type)
                .bind(c.status)
                .bind(c.error.as_deref())
                .bind(c.latency_us)
                .bind(c.upstream_latency_us)
                .bind(c.tokens_in)
                .bind(c.tokens_out)
                .bind(c.cost_micros)
                .bind(c.client_id.as_deref());
        }
        q.execute(&mut *conn).await?;
    }
    crate::rollups::record(conn, calls).await?;

    // One balance update per account, then each entry's balance-after is
    // counted back from the new balance in call order.
    let mut lines = ledger_lines(calls);
    let mut after = Vec::new();
    for (ns, env, delta) in totals(&lines) {
        after.push((ns, env, ledger::add_to_balance(conn, ns, env, delta).await?));
    }
    settle(&mut lines, &after);
    let now = now_ms();
    for chunk in lines.chunks(CHUNK) {
        let sql = format!(
            "INSERT INTO ledger_entries (namespace_id, environment, time, kind, amount_micros, \
             balance_after_micros, actor, reference, memo) VALUES {}",
            placeholders(chunk.len(), 9)
        );
        let mut q = sqlx::query(&sql);
        for l in chunk {
            q = q
                .bind(l.namespace_id)
                .bind(l.environment.as_str())
                .bind(now)
                .bind(l.kind)
                .bind(l.amount)
                .bind(l.balance_after)
                .bind(l.actor)
                .bind(l.reference)
                .bind(None::<String>);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Who the seller's entries name as their cause.
pub const GATEWAY_ACTOR: &str = "gateway";

/// One ledger entry of a batch of calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Line<'a> {
    pub namespace_id: &'a str,
    pub environment: Environment,
    /// `usage`, `revenue` or `platform_fee`.
    pub kind: &'static str,
    pub amount: i64,
    /// The caller's key for `usage`, [`GATEWAY_ACTOR`] for the seller's entries.
    pub actor: &'a str,
    /// The call id.
    pub reference: &'a str,
    /// Filled in by [`settle`].
    pub balance_after: i64,
}

/// The ledger entries of a batch, in call order: every call with a cost debits
/// its caller (`usage`); a call to a seller's API also credits the seller with
/// the cost (`revenue`) and debits the platform's share of it (`platform_fee`).
pub(crate) fn ledger_lines(calls: &[CallRecord]) -> Vec<Line<'_>> {
    let mut out = Vec::with_capacity(calls.len());
    for c in calls.iter().filter(|c| c.cost_micros != 0) {
        let line = |namespace_id, kind, amount, actor| Line {
            namespace_id,
            environment: c.environment,
            kind,
            amount,
            actor,
            reference: &c.id,
            balance_after: 0,
        };
        out.push(line(&c.namespace_id, "usage", -c.cost_micros, &c.key_id));
        if let Some(seller) = &c.seller_namespace_id {
            out.push(line(seller, "revenue", c.cost_micros, GATEWAY_ACTOR));
            if c.platform_fee_micros != 0 {
                out.push(line(
                    seller,
                    "platform_fee",
                    -c.platform_fee_micros,
                    GATEWAY_ACTOR,
                ));
            }
        }
    }
    out
}

/// What the entries move on each account (namespace, environment,
/// micro-credits), sorted by account so that concurrent writers lock balance
/// rows in one order.
pub(crate) fn totals<'a>(lines: &[Line<'a>]) -> Vec<(&'a str, Environment, i64)> {
    let mut sums: HashMap<(&'a str, Environment), i64> = HashMap::new();
    for l in lines {
        *sums.entry((l.namespace_id, l.environment)).or_default() += l.amount;
    }
    let mut out: Vec<_> = sums
        .into_iter()
        .map(|((ns, env), total)| (ns, env, total))
        .collect();
    out.sort_by(|a, b| (a.0, a.1.as_str()).cmp(&(b.0, b.1.as_str())));
    out
}

/// Fills in each entry's balance-after, counted back from each account's
/// balance after the whole batch (`after`, as returned for [`totals`]).
pub(crate) fn settle(lines: &mut [Line<'_>], after: &[(&str, Environment, i64)]) {
    let mut running: HashMap<(&str, Environment), i64> = after
        .iter()
        .map(|&(ns, env, balance)| ((ns, env), balance))
        .collect();
    for l in lines.iter() {
        if let Some(b) = running.get_mut(&(l.namespace_id, l.environment)) {
            *b -= l.amount;
        }
    }
    // `running` now holds each balance before the batch.
    for l in lines.iter_mut() {
        if let Some(b) = running.get_mut(&(l.namespace_id, l.environment)) {
            *b += l.amount;
            l.balance_after = *b;
        }
    }
}

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
