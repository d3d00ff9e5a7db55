//! Top-ups (C2): payment intents and the deposits that pay them.
//!
//! Policy: a deposit row is written in the same transaction as its `topup`
//! ledger entry and the intent's change to `succeeded`. Its primary key is the
//! external transaction id and its intent is unique, so neither a repeated
//! notification nor two notifications racing can credit twice: the loser's
//! insert fails and its transaction rolls back with nothing changed.

use sqlx::{AnyConnection, Row};
use tally_common::{Currency, Environment, IntentStatus};

use crate::{bad_value, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepositRow {
    pub external_tx_id: String,
    pub intent_id: String,
    pub namespace_id: String,
    pub environment: Environment,
    pub currency: Currency,
    pub amount_units: i64,
    pub rate_micros: i64,
    pub credited_micros: i64,
    pub ledger_entry_id: i64,
    pub received_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntentRow {
    pub id: String,
    pub namespace_id: String,
    pub environment: Environment,
    pub currency: Currency,
    pub amount_units: i64,
    pub status: IntentStatus,
    pub created_by: String,
    pub created_at: i64,
    pub deposit: Option<DepositRow>,
    /// The subscription whose period this intent pays (C6).
    pub subscription_id: Option<String>,
}

fn env(r: &sqlx::any::AnyRow, col: &str) -> Result<Environment> {
    let v: String = r.try_get(col)?;
    Environment::parse(&v).ok_or_else(|| bad_value("environment", &v))
}

fn currency(r: &sqlx::any::AnyRow, col: &str) -> Result<Currency> {
    let v: String = r.try_get(col)?;
    Currency::parse(&v).ok_or_else(|| bad_value("currency", &v))
}

const INTENT_SELECT: &str = "SELECT i.id, i.namespace_id, i.environment, i.currency, \
     i.amount_units, i.status, i.created_by, i.created_at, i.subscription_id, \
     d.external_tx_id, d.currency AS d_currency, d.amount_units AS d_amount_units, \
     d.rate_micros, d.credited_micros, d.ledger_entry_id, d.received_at \
     FROM payment_intents i LEFT JOIN deposits d ON d.intent_id = i.id";

fn intent_from_row(r: &sqlx::any::AnyRow) -> Result<IntentRow> {
    let status: String = r.try_get("status")?;
    let id: String = r.try_get("id")?;
    let namespace_id: String = r.try_get("namespace_id")?;
    let environment = env(r, "environment")?;
    let tx: Option<String> = r.try_get("external_tx_id")?;
    let deposit = match tx {
        Some(external_tx_id) => Some(DepositRow {
            external_tx_id,
            intent_id: id.clone(),
            namespace_id: namespace_id.clone(),
            environment,
            currency: currency(r, "d_currency")?,
            amount_units: r.try_get("d_amount_units")?,
            rate_micros: r.try_get("rate_micros")?,
            credited_micros: r.try_get("credited_micros")?,
            ledger_entry_id: r.try_get("ledger_entry_id")?,
            received_at: r.try_get("received_at")?,
        }),
        None => None,
    };
    Ok(IntentRow {
        id,
        namespace_id,
        environment,
        currency: currency(r, "currency")?,
        amount_units: r.try_get("amount_units")?,
        status: IntentStatus::parse(&status).ok_or_else(|| bad_value("intent status", &status))?,
        created_by: r.try_get("created_by")?,
        created_at: r.try_get("created_at")?,
        deposit,
        subscription_id: r.try_get("subscription_id")?,
    })
}

pub async fn insert_intent(conn: &mut AnyConnection, i: &IntentRow) -> Result<()> {
    sqlx::query(
        "INSERT INTO payment_intents (id, namespace_id, environment, currency, amount_units, \
         status, created_by, created_at, subscription_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&i.id)
    .bind(&i.namespace_id)
    .bind(i.environment.as_str())
    .bind(i.currency.as_str())
    .bind(i.amount_units)
    .bind(i.status.as_str())
    .bind(&i.created_by)
    .bind(i.created_at)
    .bind(i.subscription_id.as_deref())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// An intent by id, whatever its namespace (deposit notifications name only the intent).
pub async fn intent(conn: &mut AnyConnection, id: &str) -> Result<Option<IntentRow>> {
    let sql = format!("{INTENT_SELECT} WHERE i.id = $1");
    let row = sqlx::query(&sql)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(intent_from_row).transpose()
}

/// A namespace's intents, newest first, older than intent `before` when given.
pub async fn list_intents(
    conn: &mut AnyConnection,
    namespace_id: &str,
    environment: Option<Environment>,
    status: Option<IntentStatus>,
    before: Option<&str>,
    limit: i64,
) -> Result<Vec<IntentRow>> {
    let sql = format!(
        "{INTENT_SELECT} WHERE i.namespace_id = $1 \
         AND (CAST($2 AS TEXT) IS NULL OR i.environment = $2) \
         AND (CAST($3 AS TEXT) IS NULL OR i.status = $3) \
         AND (CAST($4 AS TEXT) IS NULL OR i.id < $4) \
         ORDER BY i.id DESC LIMIT $5"
    );
    let rows = sqlx::query(&sql)
        .bind(namespace_id)
        .bind(environment.map(Environment::as_str))
        .bind(status.map(IntentStatus::as_str))
        .bind(before)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(intent_from_row).collect()
}

/// The deposit already recorded for an external transaction id.
pub async fn deposit(conn: &mut AnyConnection, external_tx_id: &str) -> Result<Option<DepositRow>> {
    let row = sqlx::query(
        "SELECT external_tx_id, intent_id, namespace_id, environment, currency, amount_units, \
         rate_micros, credited_micros, ledger_entry_id, received_at \
         FROM deposits WHERE external_tx_id = $1",
    )
    .bind(external_tx_id)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|r| {
        Ok(DepositRow {
            external_tx_id: r.try_get("external_tx_id")?,
            intent_id: r.try_get("intent_id")?,
            namespace_id: r.try_get("namespace_id")?,
            environment: env(&r, "environment")?,
            currency: currency(&r, "currency")?,
            amount_units: r.try_get("amount_units")?,
            rate_micros: r.try_get("rate_micros")?,
            credited_micros: r.try_get("credited_micros")?,
            ledger_entry_id: r.try_get("ledger_entry_id")?,
            received_at: r.try_get("received_at")?,
        })
    })
    .transpose()
}

/// Records a deposit and marks its intent paid. `StoreError::Conflict` when
/// the transaction id or the intent already has a deposit.
pub async fn record_deposit(conn: &mut AnyConnection, d: &DepositRow) -> Result<()> {
    sqlx::query(
        "INSERT INTO deposits (external_tx_id, intent_id, namespace_id, environment, currency, \
         amount_units, rate_micros, credited_micros, ledger_entry_id, received_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&d.external_tx_id)
    .bind(&d.intent_id)
    .bind(&d.namespace_id)
    .bind(d.environment.as_str())
    .bind(d.currency.as_str())
    .bind(d.amount_units)
    .bind(d.rate_micros)
    .bind(d.credited_micros)
    .bind(d.ledger_entry_id)
    .bind(d.received_at)
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE payment_intents SET status = $1, paid_at = $2 WHERE id = $3")
        .bind(IntentStatus::Succeeded.as_str())
        .bind(d.received_at)
        .bind(&d.intent_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
