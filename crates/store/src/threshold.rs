//! What low-balance alerts (C5) and auto top-up rules (C6) share: a threshold
//! per namespace and environment, armed while the balance is at or above it.
//! Each table fires with its own conditional UPDATE (what it records
//! differs); re-arming, removal and the search for rows whose state disagrees
//! with their balance are the same for both.

use sqlx::AnyConnection;
use tally_common::Environment;

use crate::Result;

/// The balance of the namespace `$1` in environment `$2`, 0 when it has none.
pub(crate) const BALANCE: &str = "COALESCE((SELECT balance_micros FROM balances \
     WHERE namespace_id = $1 AND environment = $2), 0)";

/// The WHERE condition of rows (table alias `t`, joined to their balance as
/// `b`) that are armed but below the threshold (to fire) or disarmed but back
/// at or above it (to re-arm).
pub(crate) fn disagreeing(t: &str) -> String {
    format!(
        "({t}.armed = 1 AND COALESCE(b.balance_micros, 0) < {t}.threshold_micros) \
         OR ({t}.armed = 0 AND COALESCE(b.balance_micros, 0) >= {t}.threshold_micros)"
    )
}

/// Removes the row of `table` for the namespace and environment; false if there was none.
pub(crate) async fn delete(
    conn: &mut AnyConnection,
    table: &str,
    namespace_id: &str,
    environment: Environment,
) -> Result<bool> {
    let sql = format!("DELETE FROM {table} WHERE namespace_id = $1 AND environment = $2");
    let res = sqlx::query(&sql)
        .bind(namespace_id)
        .bind(environment.as_str())
        .execute(&mut *conn)
        .await?;
    Ok(res.rows_affected() > 0)
}

/// Arms the row of `table` again if the balance is back at or above its threshold.
pub(crate) async fn rearm(
    conn: &mut AnyConnection,
    table: &str,
    namespace_id: &str,
    environment: Environment,
) -> Result<bool> {
    let sql = format!(
        "UPDATE {table} SET armed = 1 \
         WHERE namespace_id = $1 AND environment = $2 AND armed = 0 \
         AND threshold_micros <= {BALANCE}"
    );
    let res = sqlx::query(&sql)
        .bind(namespace_id)
        .bind(environment.as_str())
        .execute(&mut *conn)
        .await?;
    Ok(res.rows_affected() > 0)
}
