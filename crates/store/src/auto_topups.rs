//! Auto top-up rules (C6): below a threshold, a payment intent is created
//! for the payment processor to pay.
//!
//! Policy: armed and fired like a low-balance alert (`alerts`): one
//! conditional UPDATE compares the threshold with the balance row and
//! disarms the rule, so one downward crossing creates exactly one intent
//! however many checks race; a balance back at or above the threshold
//! re-arms it.

use sqlx::{AnyConnection, Row};
use tally_common::{Currency, Environment};

use crate::threshold::{self, BALANCE};
use crate::{bad_value, now_ms, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRow {
    pub namespace_id: String,
    pub environment: Environment,
    pub threshold_micros: i64,
    pub amount_units: i64,
    pub currency: Currency,
    pub armed: bool,
    pub last_intent_id: Option<String>,
    /// The balance now (0 when the namespace has none in this environment).
    pub balance_micros: i64,
}

const SELECT: &str = "SELECT r.namespace_id, r.environment, r.threshold_micros, r.amount_units, \
     r.currency, r.armed, r.last_intent_id, COALESCE(b.balance_micros, 0) AS balance_micros \
     FROM auto_topups r LEFT JOIN balances b \
     ON b.namespace_id = r.namespace_id AND b.environment = r.environment";

fn from_row(r: &sqlx::any::AnyRow) -> Result<RuleRow> {
    let env: String = r.try_get("environment")?;
    let currency: String = r.try_get("currency")?;
    let armed: i64 = r.try_get("armed")?;
    Ok(RuleRow {
        namespace_id: r.try_get("namespace_id")?,
        environment: Environment::parse(&env).ok_or_else(|| bad_value("environment", &env))?,
        threshold_micros: r.try_get("threshold_micros")?,
        amount_units: r.try_get("amount_units")?,
        currency: Currency::parse(&currency).ok_or_else(|| bad_value("currency", &currency))?,
        armed: armed != 0,
        last_intent_id: r.try_get("last_intent_id")?,
        balance_micros: r.try_get("balance_micros")?,
    })
}

/// Creates or replaces a rule, armed.
pub async fn set(
    conn: &mut AnyConnection,
    namespace_id: &str,
    environment: Environment,
    threshold_micros: i64,
    amount_units: i64,
    currency: Currency,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO auto_topups (namespace_id, environment, threshold_micros, amount_units, \
         currency, armed, updated_at) VALUES ($1, $2, $3, $4, $5, 1, $6) \
         ON CONFLICT (namespace_id, environment) DO UPDATE SET \
         threshold_micros = excluded.threshold_micros, amount_units = excluded.amount_units, \
         currency = excluded.currency, armed = 1, updated_at = excluded.updated_at",
    )
    .bind(namespace_id)
    .bind(environment.as_str())
    .bind(threshold_micros)
    .bind(amount_units)
    .bind(currency.as_str())
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
    threshold::delete(conn, "auto_topups", namespace_id, environment).await
}

/// A namespace's rules with their balances.
pub async fn list(conn: &mut AnyConnection, namespace_id: &str) -> Result<Vec<RuleRow>> {
    let sql = format!("{SELECT} WHERE r.namespace_id = $1 ORDER BY r.environment");
    let rows = sqlx::query(&sql)
        .bind(namespace_id)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(from_row).collect()
}

/// Rules whose state disagrees with their balance (to fire or to re-arm).
pub async fn pending(conn: &mut AnyConnection, limit: i64) -> Result<Vec<RuleRow>> {
    let sql = format!("{SELECT} WHERE {} LIMIT $1", threshold::disagreeing("r"));
    let rows = sqlx::query(&sql).bind(limit).fetch_all(&mut *conn).await?;
    rows.iter().map(from_row).collect()
}

/// Disarms the rule if it is armed and the balance is below its threshold,
/// recording `intent_id` as its latest intent; returns `(amount_units,
/// currency)` when it did, for the caller to create that intent in the same
/// transaction.
pub async fn fire(
    conn: &mut AnyConnection,
    namespace_id: &str,
    environment: Environment,
    intent_id: &str,
) -> Result<Option<(i64, Currency)>> {
    let sql = format!(
        "UPDATE auto_topups SET armed = 0, last_intent_id = $3 \
         WHERE namespace_id = $1 AND environment = $2 AND armed = 1 \
         AND threshold_micros > {BALANCE} \
         RETURNING amount_units, currency"
    );
    let row = sqlx::query(&sql)
        .bind(namespace_id)
        .bind(environment.as_str())
        .bind(intent_id)
        .fetch_optional(&mut *conn)
        .await?;
    row.map(|r| {
        let currency: String = r.try_get("currency")?;
        Ok((
            r.try_get("amount_units")?,
            Currency::parse(&currency).ok_or_else(|| bad_value("currency", &currency))?,
        ))
    })
    .transpose()
}

/// Arms the rule again if the balance is back at or above its threshold.
pub async fn rearm(
    conn: &mut AnyConnection,
    namespace_id: &str,
    environment: Environment,
) -> Result<bool> {
    threshold::rearm(conn, "auto_topups", namespace_id, environment).await
}
