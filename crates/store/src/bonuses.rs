//! Bonus credits (C7): grants with an optional expiry, and the expiry of what
//! is left of them.
//!
//! Policy: a grant is a `bonus` ledger entry plus a row here. Bonus credits
//! that expire are spent before any other credit, the grant that expires
//! soonest first; a debit can only spend a grant made before it and not yet
//! expired. What is left of each grant is found by replaying the account's
//! debits against its grants ([`replay`]): exact, and off the gateway's hot
//! path (nothing per call is written for it). At expiry the remainder leaves
//! the balance through a `bonus_expired` entry referencing the grant. Grants
//! without an expiry are ordinary credits once granted.

use std::collections::HashMap;

use sqlx::{AnyConnection, Row};
use tally_common::Environment;

use crate::{bad_value, Result};

/// The ledger kind of a grant and of an expiry.
pub const GRANT_KIND: &str = "bonus";
pub const EXPIRY_KIND: &str = "bonus_expired";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BonusRow {
    pub id: String,
    pub namespace_id: String,
    pub environment: Environment,
    pub reason: String,
    pub memo: Option<String>,
    pub amount_micros: i64,
    pub remaining_micros: i64,
    pub expires_at: Option<i64>,
    pub ledger_entry_id: i64,
    /// `active`, `used` (nothing left) or `expired`.
    pub status: String,
    pub expired_micros: i64,
    pub granted_by: String,
    pub created_at: i64,
}

const COLUMNS: &str = "id, namespace_id, environment, reason, memo, amount_micros, \
     remaining_micros, expires_at, ledger_entry_id, status, expired_micros, granted_by, created_at";

fn from_row(r: &sqlx::any::AnyRow) -> Result<BonusRow> {
    let env: String = r.try_get("environment")?;
    Ok(BonusRow {
        id: r.try_get("id")?,
        namespace_id: r.try_get("namespace_id")?,
        environment: Environment::parse(&env).ok_or_else(|| bad_value("environment", &env))?,
        reason: r.try_get("reason")?,
        memo: r.try_get("memo")?,
        amount_micros: r.try_get("amount_micros")?,
        remaining_micros: r.try_get("remaining_micros")?,
        expires_at: r.try_get("expires_at")?,
        ledger_entry_id: r.try_get("ledger_entry_id")?,
        status: r.try_get("status")?,
        expired_micros: r.try_get("expired_micros")?,
        granted_by: r.try_get("granted_by")?,
        created_at: r.try_get("created_at")?,
    })
}

/// Records a grant whose `bonus` ledger entry was just appended.
pub async fn insert(conn: &mut AnyConnection, g: &BonusRow) -> Result<()> {
    sqlx::query(&format!(
        "INSERT INTO bonus_grants ({COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
    ))
    .bind(&g.id)
    .bind(&g.namespace_id)
    .bind(g.environment.as_str())
    .bind(&g.reason)
    .bind(g.memo.as_deref())
    .bind(g.amount_micros)
    .bind(g.remaining_micros)
    .bind(g.expires_at)
    .bind(g.ledger_entry_id)
    .bind(&g.status)
    .bind(g.expired_micros)
    .bind(&g.granted_by)
    .bind(g.created_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// An account's grants, newest first.
pub async fn list(
    conn: &mut AnyConnection,
    namespace_id: &str,
    environment: Environment,
) -> Result<Vec<BonusRow>> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM bonus_grants WHERE namespace_id = $1 AND environment = $2 \
         ORDER BY created_at DESC, id DESC LIMIT 500"
    ))
    .bind(namespace_id)
    .bind(environment.as_str())
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(from_row).collect()
}

/// Accounts with an active grant past its expiry.
pub async fn due(conn: &mut AnyConnection, now: i64) -> Result<Vec<(String, Environment)>> {
    let rows = sqlx::query(
        "SELECT DISTINCT namespace_id, environment FROM bonus_grants \
         WHERE status = 'active' AND expires_at IS NOT NULL AND expires_at <= $1 LIMIT 1000",
    )
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            let env: String = r.try_get("environment")?;
            Ok((
                r.try_get("namespace_id")?,
                Environment::parse(&env).ok_or_else(|| bad_value("environment", &env))?,
            ))
        })
        .collect()
}

/// One debit of the ledger, for [`spend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Debit {
    pub ledger_id: i64,
    pub time: i64,
    pub amount_micros: i64,
}

/// What is left of each expiring grant after `debits` (in ledger order):
/// each debit spends the grants made before it and not expired at its time,
/// soonest expiry first. Grants without an expiry are left out (they are
/// ordinary credits). Returns grant id -> remaining.
pub fn spend(grants: &[BonusRow], debits: &[Debit]) -> HashMap<String, i64> {
    let mut order: Vec<&BonusRow> = grants.iter().filter(|g| g.expires_at.is_some()).collect();
    order.sort_by_key(|g| (g.expires_at, g.ledger_entry_id));
    let mut left: Vec<i64> = order.iter().map(|g| g.amount_micros).collect();
    for d in debits {
        let mut owed = -d.amount_micros;
        for (i, g) in order.iter().enumerate() {
            if owed <= 0 {
                break;
            }
            let open = g.ledger_entry_id < d.ledger_id && g.expires_at.is_some_and(|e| d.time < e);
            if open && left[i] > 0 {
                let take = owed.min(left[i]);
                left[i] -= take;
                owed -= take;
            }
        }
    }
    order
        .iter()
        .zip(left)
        .map(|(g, l)| (g.id.clone(), l))
        .collect()
}

/// Replays the account's debits against its expiring grants and stores what
/// is left of each grant still active; returns those grants, updated. Run it
/// in a transaction.
pub async fn replay(
    conn: &mut AnyConnection,
    namespace_id: &str,
    environment: Environment,
) -> Result<Vec<BonusRow>> {
    let active = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM bonus_grants WHERE namespace_id = $1 AND environment = $2 \
         AND status = 'active' AND expires_at IS NOT NULL"
    ))
    .bind(namespace_id)
    .bind(environment.as_str())
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(from_row)
    .collect::<Result<Vec<_>>>()?;
    let Some(since) = active.iter().map(|g| g.created_at).min() else {
        return Ok(Vec::new());
    };
    // Every grant that could have been spent since the oldest active one:
    // those that were used up or expired meanwhile took debits too.
    let grants = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM bonus_grants WHERE namespace_id = $1 AND environment = $2 \
         AND expires_at IS NOT NULL AND expires_at > $3"
    ))
    .bind(namespace_id)
    .bind(environment.as_str())
    .bind(since)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(from_row)
    .collect::<Result<Vec<_>>>()?;
    let first = grants.iter().map(|g| g.ledger_entry_id).min().unwrap_or(0);
    let debits = sqlx::query(
        "SELECT id, time, amount_micros FROM ledger_entries \
         WHERE namespace_id = $1 AND environment = $2 AND id > $3 \
         AND amount_micros < 0 AND kind <> $4 ORDER BY id",
    )
    .bind(namespace_id)
    .bind(environment.as_str())
    .bind(first)
    .bind(EXPIRY_KIND)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| {
        Ok(Debit {
            ledger_id: r.try_get("id")?,
            time: r.try_get("time")?,
            amount_micros: r.try_get("amount_micros")?,
        })
    })
    .collect::<Result<Vec<_>>>()?;
    let left = spend(&grants, &debits);
    let mut out = Vec::with_capacity(active.len());
    for mut g in active {
        let remaining = left.get(&g.id).copied().unwrap_or(g.remaining_micros);
        let status = if remaining == 0 { "used" } else { "active" };
        if remaining != g.remaining_micros || status != g.status {
            sqlx::query(
                "UPDATE bonus_grants SET remaining_micros = $2, status = $3 \
                 WHERE id = $1 AND status = 'active'",
            )
            .bind(&g.id)
            .bind(remaining)
            .bind(status)
            .execute(&mut *conn)
            .await?;
        }
        g.remaining_micros = remaining;
        g.status = status.to_owned();
        out.push(g);
    }
    Ok(out)
}

/// Marks an active grant expired with `expired_micros` taken from the
/// balance; false when another checker got there first.
pub async fn mark_expired(conn: &mut AnyConnection, id: &str, expired_micros: i64) -> Result<bool> {
    let n = sqlx::query(
        "UPDATE bonus_grants SET status = 'expired', expired_micros = $2, remaining_micros = 0 \
         WHERE id = $1 AND status = 'active'",
    )
    .bind(id)
    .bind(expired_micros)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(n == 1)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn grant(id: &str, ledger_entry_id: i64, amount: i64, expires_at: Option<i64>) -> BonusRow {
        BonusRow {
            id: id.into(),
            namespace_id: "ns".into(),
            environment: Environment::Live,
            reason: "referral".into(),
            memo: None,
            amount_micros: amount,
            remaining_micros: amount,
            expires_at,
            ledger_entry_id,
            status: "active".into(),
            expired_micros: 0,
            granted_by: "op".into(),
            created_at: 0,
        }
    }

    fn debit(ledger_id: i64, time: i64, amount: i64) -> Debit {
        Debit {
            ledger_id,
            time,
            amount_micros: -amount,
        }
    }

    #[test]
    fn the_grant_that_expires_first_is_spent_first() {
        let grants = [
            grant("late", 1, 100, Some(2000)),
            grant("soon", 2, 50, Some(1000)),
            grant("never", 3, 70, None),
        ];
        let left = spend(&grants, &[debit(4, 10, 30), debit(5, 20, 40)]);
        assert_eq!(left["soon"], 0);
        assert_eq!(left["late"], 80);
        assert!(!left.contains_key("never"));
    }

    #[test]
    fn a_debit_spends_only_grants_made_before_it_and_still_open() {
        let grants = [grant("a", 5, 100, Some(1000)), grant("b", 1, 100, Some(50))];
        // Ledger 3 is before grant a; ledger 6 at t=60 is after b expired.
        let left = spend(&grants, &[debit(3, 10, 30), debit(6, 60, 20)]);
        assert_eq!(left["b"], 70);
        assert_eq!(left["a"], 80);
    }

    #[test]
    fn debits_beyond_the_bonuses_leave_them_at_zero() {
        let grants = [grant("a", 1, 100, Some(1000))];
        let left = spend(&grants, &[debit(2, 10, 500)]);
        assert_eq!(left["a"], 0);
    }
}
