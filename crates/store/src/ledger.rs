//! The credit ledger (C1): append-only entries per namespace and environment,
//! and the balance row that is their sum.
//!
//! Policy: every change of a balance is one ledger insert plus one balance
//! update in the same transaction, so `balances.balance_micros` always equals
//! the sum of the namespace's entries; tests check that after every race.

use sqlx::{AnyConnection, Row};
use tally_common::Environment;

use crate::{bad_value, now_ms, Result};

#[derive(Debug, Clone)]
pub struct LedgerRow {
    pub id: i64,
    pub namespace_id: String,
    pub environment: Environment,
    pub time: i64,
    pub kind: String,
    pub amount_micros: i64,
    pub balance_after_micros: i64,
    pub actor: String,
    pub reference: Option<String>,
    pub memo: Option<String>,
    /// Micro-credits per unit of the paid currency (top-ups only).
    pub rate_micros: Option<i64>,
}

fn from_row(r: &sqlx::any::AnyRow) -> Result<LedgerRow> {
    let env: String = r.try_get("environment")?;
    Ok(LedgerRow {
        id: r.try_get("id")?,
        namespace_id: r.try_get("namespace_id")?,
        environment: Environment::parse(&env).ok_or_else(|| bad_value("environment", &env))?,
        time: r.try_get("time")?,
        kind: r.try_get("kind")?,
        amount_micros: r.try_get("amount_micros")?,
        balance_after_micros: r.try_get("balance_after_micros")?,
        actor: r.try_get("actor")?,
        reference: r.try_get("reference")?,
        memo: r.try_get("memo")?,
        rate_micros: r.try_get("rate_micros")?,
    })
}

const COLUMNS: &str = "id, namespace_id, environment, time, kind, amount_micros, \
     balance_after_micros, actor, reference, memo, rate_micros";

#[derive(Debug, Clone)]
pub struct NewEntry<'a> {
    pub namespace_id: &'a str,
    pub environment: Environment,
    pub kind: &'a str,
    pub amount_micros: i64,
    pub actor: &'a str,
    pub reference: Option<&'a str>,
    pub memo: Option<&'a str>,
    pub rate_micros: Option<i64>,
}

/// The balance (0 when the namespace never had an entry in `environment`).
pub async fn balance(
    conn: &mut AnyConnection,
    namespace_id: &str,
    environment: Environment,
) -> Result<i64> {
    let row = sqlx::query(
        "SELECT balance_micros FROM balances WHERE namespace_id = $1 AND environment = $2",
    )
    .bind(namespace_id)
    .bind(environment.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    Ok(match row {
        Some(r) => r.try_get("balance_micros")?,
        None => 0,
    })
}

/// Adds `delta` to a balance, creating its row at 0 first; returns the new balance.
pub async fn add_to_balance(
    conn: &mut AnyConnection,
    namespace_id: &str,
    environment: Environment,
    delta: i64,
) -> Result<i64> {
    crate::recording::move_balance(conn, namespace_id, environment, delta, now_ms()).await
}

/// Appends one entry and moves the balance with it. Run it in a transaction.
pub async fn append(conn: &mut AnyConnection, e: NewEntry<'_>) -> Result<LedgerRow> {
    let after = add_to_balance(conn, e.namespace_id, e.environment, e.amount_micros).await?;
    let sql = format!(
        "INSERT INTO ledger_entries (namespace_id, environment, time, kind, amount_micros, \
         balance_after_micros, actor, reference, memo, rate_micros) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING {COLUMNS}"
    );
    let row = sqlx::query(&sql)
        .bind(e.namespace_id)
        .bind(e.environment.as_str())
        .bind(now_ms())
        .bind(e.kind)
        .bind(e.amount_micros)
        .bind(after)
        .bind(e.actor)
        .bind(e.reference)
        .bind(e.memo)
        .bind(e.rate_micros)
        .fetch_one(&mut *conn)
        .await?;
    from_row(&row)
}

/// Which entries a ledger read returns (the spending log's filters, C4).
#[derive(Debug, Clone, Copy, Default)]
pub struct LedgerFilter<'a> {
    /// Only entries older than this id (paging).
    pub before: Option<i64>,
    pub kind: Option<&'a str>,
    /// Who caused it, e.g. the key id of a call.
    pub actor: Option<&'a str>,
    /// E.g. a call id.
    pub reference: Option<&'a str>,
    /// Unix ms, inclusive.
    pub from: Option<i64>,
    /// Unix ms, exclusive.
    pub to: Option<i64>,
}

/// Entries newest first.
pub async fn list(
    conn: &mut AnyConnection,
    namespace_id: &str,
    environment: Environment,
    f: LedgerFilter<'_>,
    limit: i64,
) -> Result<Vec<LedgerRow>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM ledger_entries \
         WHERE namespace_id = $1 AND environment = $2 AND id < $3 \
         AND (CAST($4 AS TEXT) IS NULL OR kind = $4) \
         AND (CAST($5 AS TEXT) IS NULL OR actor = $5) \
         AND (CAST($6 AS TEXT) IS NULL OR reference = $6) \
         AND time >= $7 AND time < $8 \
         ORDER BY id DESC LIMIT $9"
    );
    let rows = sqlx::query(&sql)
        .bind(namespace_id)
        .bind(environment.as_str())
        .bind(f.before.unwrap_or(i64::MAX))
        .bind(f.kind)
        .bind(f.actor)
        .bind(f.reference)
        .bind(f.from.unwrap_or(i64::MIN))
        .bind(f.to.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(from_row).collect()
}

/// When the namespace last had an entry of `kind` (the faucet's cooldown).
pub async fn last_time_of_kind(
    conn: &mut AnyConnection,
    namespace_id: &str,
    kind: &str,
) -> Result<Option<i64>> {
    let row = sqlx::query(
        "SELECT CAST(MAX(time) AS BIGINT) AS t FROM ledger_entries \
         WHERE namespace_id = $1 AND kind = $2",
    )
    .bind(namespace_id)
    .bind(kind)
    .fetch_one(&mut *conn)
    .await?;
    Ok(row.try_get("t")?)
}

/// The sum of the ledger, for consistency checks.
pub async fn sum(
    conn: &mut AnyConnection,
    namespace_id: &str,
    environment: Environment,
) -> Result<i64> {
    let row = sqlx::query(
        "SELECT CAST(COALESCE(SUM(amount_micros), 0) AS BIGINT) AS s FROM ledger_entries \
         WHERE namespace_id = $1 AND environment = $2",
    )
    .bind(namespace_id)
    .bind(environment.as_str())
    .fetch_one(&mut *conn)
    .await?;
    Ok(row.try_get("s")?)
}
