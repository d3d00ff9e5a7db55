//! Subscriptions to credit packages (C6).
//!
//! Policy: a subscription is `pending` until the payment intent of its first
//! period is paid, then `active`; each paid period credits the package's
//! credits and moves `period_end` one month on. At the end of a period a
//! renewal intent is created once (a conditional UPDATE claims it), for the
//! payment processor to pay from the namespace's standing authorization. A
//! cancelled subscription keeps its paid period and ends with it. A namespace
//! has at most one pending or active subscription per environment.

use sqlx::{AnyConnection, Row};
use tally_common::{Currency, Environment};

use crate::{bad_value, now_ms, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionRow {
    pub id: String,
    pub namespace_id: String,
    pub environment: Environment,
    pub package: String,
    pub currency: Currency,
    pub price_units: i64,
    pub credits_micros: i64,
    /// `pending`, `active` or `canceled`.
    pub status: String,
    pub period_end: Option<i64>,
    pub cancel_at_period_end: bool,
    pub pending_intent_id: Option<String>,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
}

const COLUMNS: &str = "id, namespace_id, environment, package, currency, price_units, \
     credits_micros, status, period_end, cancel_at_period_end, pending_intent_id, created_by, \
     created_at, updated_at";

fn from_row(r: &sqlx::any::AnyRow) -> Result<SubscriptionRow> {
    let env: String = r.try_get("environment")?;
    let currency: String = r.try_get("currency")?;
    let cancel: i64 = r.try_get("cancel_at_period_end")?;
    Ok(SubscriptionRow {
        id: r.try_get("id")?,
        namespace_id: r.try_get("namespace_id")?,
        environment: Environment::parse(&env).ok_or_else(|| bad_value("environment", &env))?,
        package: r.try_get("package")?,
        currency: Currency::parse(&currency).ok_or_else(|| bad_value("currency", &currency))?,
        price_units: r.try_get("price_units")?,
        credits_micros: r.try_get("credits_micros")?,
        status: r.try_get("status")?,
        period_end: r.try_get("period_end")?,
        cancel_at_period_end: cancel != 0,
        pending_intent_id: r.try_get("pending_intent_id")?,
        created_by: r.try_get("created_by")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

pub async fn insert(conn: &mut AnyConnection, s: &SubscriptionRow) -> Result<()> {
    sqlx::query(&format!(
        "INSERT INTO subscriptions ({COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
    ))
    .bind(&s.id)
    .bind(&s.namespace_id)
    .bind(s.environment.as_str())
    .bind(&s.package)
    .bind(s.currency.as_str())
    .bind(s.price_units)
    .bind(s.credits_micros)
    .bind(&s.status)
    .bind(s.period_end)
    .bind(i64::from(s.cancel_at_period_end))
    .bind(s.pending_intent_id.as_deref())
    .bind(&s.created_by)
    .bind(s.created_at)
    .bind(s.updated_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn get(conn: &mut AnyConnection, id: &str) -> Result<Option<SubscriptionRow>> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM subscriptions WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .as_ref()
    .map(from_row)
    .transpose()
}

/// A namespace's subscriptions, newest first.
pub async fn list(conn: &mut AnyConnection, namespace_id: &str) -> Result<Vec<SubscriptionRow>> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM subscriptions WHERE namespace_id = $1 \
         ORDER BY created_at DESC, id DESC LIMIT 100"
    ))
    .bind(namespace_id)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(from_row)
    .collect()
}

/// The pending or active subscription of an environment.
pub async fn current(
    conn: &mut AnyConnection,
    namespace_id: &str,
    environment: Environment,
) -> Result<Option<SubscriptionRow>> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM subscriptions WHERE namespace_id = $1 AND environment = $2 \
         AND status IN ('pending', 'active')"
    ))
    .bind(namespace_id)
    .bind(environment.as_str())
    .fetch_optional(&mut *conn)
    .await?
    .as_ref()
    .map(from_row)
    .transpose()
}

/// A period was paid: the subscription is active until `period_end`.
pub async fn paid(conn: &mut AnyConnection, id: &str, period_end: i64) -> Result<()> {
    sqlx::query(
        "UPDATE subscriptions SET status = 'active', period_end = $2, pending_intent_id = NULL, \
         updated_at = $3 WHERE id = $1",
    )
    .bind(id)
    .bind(period_end)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Cancels: a subscription never paid ends now, an active one at the end of
/// its paid period. False when it was not pending or active.
pub async fn cancel(conn: &mut AnyConnection, id: &str) -> Result<bool> {
    let n = sqlx::query(
        "UPDATE subscriptions SET \
         status = CASE WHEN status = 'pending' THEN 'canceled' ELSE status END, \
         cancel_at_period_end = CASE WHEN status = 'active' THEN 1 ELSE cancel_at_period_end END, \
         pending_intent_id = CASE WHEN status = 'pending' THEN NULL ELSE pending_intent_id END, \
         updated_at = $2 WHERE id = $1 AND status IN ('pending', 'active')",
    )
    .bind(id)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Active subscriptions whose paid period is over and that have no renewal
/// intent yet (or are cancelled and must end).
pub async fn due(conn: &mut AnyConnection, now: i64) -> Result<Vec<SubscriptionRow>> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM subscriptions WHERE status = 'active' AND period_end <= $1 \
         AND pending_intent_id IS NULL LIMIT 1000"
    ))
    .bind(now)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(from_row)
    .collect()
}

/// Claims the renewal of a period for `intent_id`; false when another
/// checker claimed it first.
pub async fn claim_renewal(conn: &mut AnyConnection, id: &str, intent_id: &str) -> Result<bool> {
    let n = sqlx::query(
        "UPDATE subscriptions SET pending_intent_id = $2, updated_at = $3 \
         WHERE id = $1 AND status = 'active' AND pending_intent_id IS NULL",
    )
    .bind(id)
    .bind(intent_id)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Ends a cancelled subscription whose paid period is over; false when it
/// was already ended.
pub async fn end(conn: &mut AnyConnection, id: &str) -> Result<bool> {
    let n = sqlx::query(
        "UPDATE subscriptions SET status = 'canceled', updated_at = $2 \
         WHERE id = $1 AND status = 'active'",
    )
    .bind(id)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(n == 1)
}
