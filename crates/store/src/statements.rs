//! Monthly statements (C4), computed from the append-only ledger.
//!
//! Policy: a statement is a set of sums over ledger entries by their time, so
//! a closed month's statement never changes and every total is exactly what
//! the ledger holds. Usage is broken down through the entries' references:
//! the call id (to its API) and the key id in `actor`.

use sqlx::{AnyConnection, Row};
use tally_common::Environment;

use crate::Result;

/// The sum of every entry before `time` (the opening balance at `time`).
pub async fn balance_before(
    conn: &mut AnyConnection,
    namespace_id: &str,
    environment: Environment,
    time: i64,
) -> Result<i64> {
    let row = sqlx::query(
        "SELECT CAST(COALESCE(SUM(amount_micros), 0) AS BIGINT) AS s FROM ledger_entries \
         WHERE namespace_id = $1 AND environment = $2 AND time < $3",
    )
    .bind(namespace_id)
    .bind(environment.as_str())
    .bind(time)
    .fetch_one(&mut *conn)
    .await?;
    Ok(row.try_get("s")?)
}

/// Sums per ledger kind of the entries in `[from, to)`: (kind, amount).
pub async fn totals_by_kind(
    conn: &mut AnyConnection,
    namespace_id: &str,
    environment: Environment,
    from: i64,
    to: i64,
) -> Result<Vec<(String, i64)>> {
    let rows = sqlx::query(
        "SELECT kind, CAST(SUM(amount_micros) AS BIGINT) AS s FROM ledger_entries \
         WHERE namespace_id = $1 AND environment = $2 AND time >= $3 AND time < $4 \
         GROUP BY kind ORDER BY kind",
    )
    .bind(namespace_id)
    .bind(environment.as_str())
    .bind(from)
    .bind(to)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("kind")?, r.try_get("s")?)))
        .collect()
}

/// One line of a usage breakdown: what, its name (keys), charged calls, and
/// the amount spent (positive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageLine {
    pub id: String,
    pub name: Option<String>,
    pub calls: i64,
    pub cost_micros: i64,
}

/// Usage entries in `[from, to)` by the API of their call, largest first.
pub async fn usage_by_api(
    conn: &mut AnyConnection,
    namespace_id: &str,
    environment: Environment,
    from: i64,
    to: i64,
) -> Result<Vec<UsageLine>> {
    let rows = sqlx::query(
        "SELECT COALESCE(u.api, '') AS api, CAST(COUNT(*) AS BIGINT) AS calls, \
         CAST(-SUM(l.amount_micros) AS BIGINT) AS cost FROM ledger_entries l \
         LEFT JOIN usage_events u ON u.id = l.reference \
         WHERE l.namespace_id = $1 AND l.environment = $2 AND l.kind = 'usage' \
         AND l.time >= $3 AND l.time < $4 \
         GROUP BY COALESCE(u.api, '') ORDER BY cost DESC, api",
    )
    .bind(namespace_id)
    .bind(environment.as_str())
    .bind(from)
    .bind(to)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(UsageLine {
                id: r.try_get("api")?,
                name: None,
                calls: r.try_get("calls")?,
                cost_micros: r.try_get("cost")?,
            })
        })
        .collect()
}

/// Usage entries in `[from, to)` by key (the entry's actor), largest first.
pub async fn usage_by_key(
    conn: &mut AnyConnection,
    namespace_id: &str,
    environment: Environment,
    from: i64,
    to: i64,
) -> Result<Vec<UsageLine>> {
    let rows = sqlx::query(
        "SELECT l.actor AS key_id, MAX(k.name) AS name, CAST(COUNT(*) AS BIGINT) AS calls, \
         CAST(-SUM(l.amount_micros) AS BIGINT) AS cost FROM ledger_entries l \
         LEFT JOIN api_keys k ON k.id = l.actor \
         WHERE l.namespace_id = $1 AND l.environment = $2 AND l.kind = 'usage' \
         AND l.time >= $3 AND l.time < $4 \
         GROUP BY l.actor ORDER BY cost DESC, key_id",
    )
    .bind(namespace_id)
    .bind(environment.as_str())
    .bind(from)
    .bind(to)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(UsageLine {
                id: r.try_get("key_id")?,
                name: r.try_get("name")?,
                calls: r.try_get("calls")?,
                cost_micros: r.try_get("cost")?,
            })
        })
        .collect()
}
