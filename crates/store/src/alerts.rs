//! Low-balance alerts (C5): a threshold per namespace and environment.
//!
//! Policy: an alert is armed while the balance is at or above its threshold.
//! Firing is one conditional UPDATE that compares the threshold with the
//! balance row in the same statement and disarms the alert, so however many
//! checks run at once (requests, the background check, other instances) one
//! downward crossing fires exactly once; re-arming is the mirror UPDATE.

use sqlx::{AnyConnection, Row};
use tally_common::Environment;

use crate::threshold::{self, BALANCE};
use crate::{bad_value, now_ms, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertRow {
    pub namespace_id: String,
    pub environment: Environment,
    pub threshold_micros: i64,
    pub armed: bool,
    pub last_fired_at: Option<i64>,
    /// The balance now (0 when the namespace has none in this environment).
    pub balance_micros: i64,
}

const SELECT: &str = "SELECT a.namespace_id, a.environment, a.threshold_micros, a.armed, \
     a.last_fired_at, COALESCE(b.balance_micros, 0) AS balance_micros \
     FROM low_balance_alerts a LEFT JOIN balances b \
     ON b.namespace_id = a.namespace_id AND b.environment = a.environment";

fn from_row(r: &sqlx::any::AnyRow) -> Result<AlertRow> {
    let env: String = r.try_get("environment")?;
    let armed: i64 = r.try_get("armed")?;
    Ok(AlertRow {
        namespace_id: r.try_get("namespace_id")?,
        environment: Environment::parse(&env).ok_or_else(|| bad_value("environment", &env))?,
        threshold_micros: r.try_get("threshold_micros")?,
        armed: armed != 0,
        last_fired_at: r.try_get("last_fired_at")?,
        balance_micros: r.try_get("balance_micros")?,
    })
}

/// Creates or replaces a threshold, armed as given.
pub async fn set(
    conn: &mut AnyConnection,
    namespace_id: &str,
    environment: Environment,
    threshold_micros: i64,
    armed: bool,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO low_balance_alerts (namespace_id, environment, threshold_micros, armed, \
         updated_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (namespace_id, environment) DO UPDATE SET \
         threshold_micros = excluded.threshold_micros, armed = excluded.armed, \
         updated_at = excluded.updated_at",
    )
    .bind(namespace_id)
    .bind(environment.as_str())
    .bind(threshold_micros)
    .bind(i64::from(armed))
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn delete(
    conn: &mut AnyConnection,
    namespace_id: &str,
    environment: Environment,
) -> Result<bool> {
    threshold::delete(conn, "low_balance_alerts", namespace_id, environment).await
}

/// A namespace's alerts with their balances.
pub async fn list(conn: &mut AnyConnection, namespace_id: &str) -> Result<Vec<AlertRow>> {
    let sql = format!("{SELECT} WHERE a.namespace_id = $1 ORDER BY a.environment");
    let rows = sqlx::query(&sql)
        .bind(namespace_id)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(from_row).collect()
}

/// Alerts whose state disagrees with their balance: armed but below the
/// threshold (to fire) or disarmed but back at or above it (to re-arm).
pub async fn pending(conn: &mut AnyConnection, limit: i64) -> Result<Vec<AlertRow>> {
    let sql = format!("{SELECT} WHERE {} LIMIT $1", threshold::disagreeing("a"));
    let rows = sqlx::query(&sql).bind(limit).fetch_all(&mut *conn).await?;
    rows.iter().map(from_row).collect()
}

/// Disarms the alert if it is armed and the balance is below its threshold;
/// returns `(threshold, balance)` when it did (the caller records the event in
/// the same transaction).
pub async fn fire(
    conn: &mut AnyConnection,
    namespace_id: &str,
    environment: Environment,
) -> Result<Option<(i64, i64)>> {
    let sql = format!(
        "UPDATE low_balance_alerts SET armed = 0, last_fired_at = $3 \
         WHERE namespace_id = $1 AND environment = $2 AND armed = 1 \
         AND threshold_micros > {BALANCE} \
         RETURNING threshold_micros, {BALANCE} AS balance_micros"
    );
    let row = sqlx::query(&sql)
        .bind(namespace_id)
        .bind(environment.as_str())
        .bind(now_ms())
        .fetch_optional(&mut *conn)
        .await?;
    row.map(|r| Ok((r.try_get("threshold_micros")?, r.try_get("balance_micros")?)))
        .transpose()
}

/// Arms the alert again if the balance is back at or above its threshold.
pub async fn rearm(
    conn: &mut AnyConnection,
    namespace_id: &str,
    environment: Environment,
) -> Result<bool> {
    threshold::rearm(conn, "low_balance_alerts", namespace_id, environment).await
}
