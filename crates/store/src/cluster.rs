//! Several instances on one PostgreSQL database (O5): who is running, the
//! credit leases they hold, and the change notifications they exchange.
//!
//! Policy:
//! - `balances.reserved_micros` is always the sum of the account's
//!   `credit_leases` rows: every statement here that changes a lease changes
//!   the reservation by the same amount in the same statement, and a capture
//!   ([`crate::pg_recorder::PgRecorder`]) takes its cost out of both. The
//!   database's checks (balance ≥ 0, 0 ≤ reserved ≤ balance) refuse anything
//!   that would over-commit a balance, whatever an instance believes.
//! - An instance that has not heartbeaten for the lease timeout is dead: any
//!   instance removes it and returns its leases ([`reap`]).
//! - These statements are PostgreSQL's (data-modifying CTEs, `FOR UPDATE`);
//!   one instance on SQLite spends balances in memory and never leases.

use sqlx::{AnyConnection, Row};
use tally_common::Environment;

use crate::Result;

/// The notification channel of [`notify`].
pub const CHANNEL: &str = "tally_changes";

/// A running instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRow {
    pub id: String,
    pub address: String,
    pub version: String,
    pub started_at: i64,
    pub heartbeat_at: i64,
}

pub async fn register(
    conn: &mut AnyConnection,
    id: &str,
    address: &str,
    version: &str,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO cluster_instances (id, address, version, started_at, heartbeat_at) \
         VALUES ($1, $2, $3, $4, $4) \
         ON CONFLICT (id) DO UPDATE SET heartbeat_at = $4",
    )
    .bind(id)
    .bind(address)
    .bind(version)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Marks the instance alive; false when it was already declared dead (its
/// row is gone, and with it its leases).
pub async fn heartbeat(conn: &mut AnyConnection, id: &str, now: i64) -> Result<bool> {
    let done = sqlx::query("UPDATE cluster_instances SET heartbeat_at = $1 WHERE id = $2")
        .bind(now)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn instances(conn: &mut AnyConnection) -> Result<Vec<InstanceRow>> {
    let rows = sqlx::query(
        "SELECT id, address, version, started_at, heartbeat_at FROM cluster_instances \
         ORDER BY started_at, id",
    )
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(InstanceRow {
                id: r.try_get("id")?,
                address: r.try_get("address")?,
                version: r.try_get("version")?,
                started_at: r.try_get("started_at")?,
                heartbeat_at: r.try_get("heartbeat_at")?,
            })
        })
        .collect()
}

/// Returns every lease of `instance` to its account's balance; the total
/// returned. Run in a transaction with the removal of the instance when it
/// leaves.
pub async fn return_all(conn: &mut AnyConnection, instance: &str, now: i64) -> Result<i64> {
    let row = sqlx::query(
        "WITH gone AS (DELETE FROM credit_leases WHERE instance_id = $1 \
             RETURNING namespace_id, environment, amount_micros), \
         moved AS (UPDATE balances b SET reserved_micros = b.reserved_micros - gone.amount_micros, \
             updated_at = $2 FROM gone \
             WHERE b.namespace_id = gone.namespace_id AND b.environment = gone.environment \
             RETURNING gone.amount_micros) \
         SELECT CAST(COALESCE(SUM(amount_micros), 0) AS BIGINT) AS total FROM moved",
    )
    .bind(instance)
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    Ok(row.try_get("total")?)
}

/// Removes the instance and returns its leases (a clean shutdown).
pub async fn leave(conn: &mut AnyConnection, instance: &str, now: i64) -> Result<i64> {
    let total = return_all(conn, instance, now).await?;
    sqlx::query("DELETE FROM cluster_instances WHERE id = $1")
        .bind(instance)
        .execute(&mut *conn)
        .await?;
    Ok(total)
}

/// Removes the instances whose last heartbeat is older than `dead_before`
/// and returns their leases; the ids removed and what went back.
pub async fn reap(
    conn: &mut AnyConnection,
    dead_before: i64,
    now: i64,
) -> Result<Vec<(String, i64)>> {
    let dead: Vec<String> =
        sqlx::query("DELETE FROM cluster_instances WHERE heartbeat_at < $1 RETURNING id")
            .bind(dead_before)
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|r| r.try_get("id"))
            .collect::<std::result::Result<_, _>>()?;
    // Leases of instances that left no row at all (removed while a capture
    // of theirs still ran) go back too.
    let orphans: Vec<String> = sqlx::query(
        "SELECT DISTINCT instance_id FROM credit_leases l WHERE NOT EXISTS \
         (SELECT 1 FROM cluster_instances i WHERE i.id = l.instance_id)",
    )
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| r.try_get("instance_id"))
    .collect::<std::result::Result<_, _>>()?;
    let mut out = Vec::new();
    for id in dead.into_iter().chain(orphans) {
        if out.iter().any(|(seen, _)| seen == &id) {
            continue;
        }
        let total = return_all(conn, &id, now).await?;
        out.push((id, total));
    }
    Ok(out)
}

/// What an instance asks of an account's balance ([`acquire`]).
#[derive(Debug, Clone, Copy)]
pub struct LeaseRequest<'a> {
    pub instance: &'a str,
    pub ns: &'a str,
    pub env: Environment,
    /// What the hold lacks: the least that is any use.
    pub need: i64,
    /// What the recent rate asks for.
    pub want: i64,
    /// The hold's own amount.
    pub unit: i64,
    pub now: i64,
}

/// Reserves part of an account's unreserved balance for `instance`: at least
/// `need`, at most `want`, and never more than half of what is unreserved
/// unless `need` itself asks for more; what exceeds `need` is a whole number
/// of `unit`s (the hold that asked), so calls of one price never leave a
/// fragment too small for a call in a lease. Run in a transaction: the lease row is
/// locked first, then the balance row (the order every statement here and the
/// capture follow), the amount chosen, the reservation and the lease moved.
/// `None` when the unreserved balance cannot cover `need`.
pub async fn acquire(conn: &mut AnyConnection, r: &LeaseRequest<'_>) -> Result<Option<i64>> {
    let LeaseRequest {
        instance,
        ns,
        env,
        need,
        want,
        unit,
        now,
    } = *r;
    sqlx::query(
        "INSERT INTO credit_leases (instance_id, namespace_id, environment, amount_micros, \
         updated_at) VALUES ($1, $2, $3, 0, $4) \
         ON CONFLICT (instance_id, namespace_id, environment) \
         DO UPDATE SET updated_at = EXCLUDED.updated_at",
    )
    .bind(instance)
    .bind(ns)
    .bind(env.as_str())
    .bind(now)
    .execute(&mut *conn)
    .await?;
    let row = sqlx::query(
        "WITH pick AS (SELECT CAST($3 AS BIGINT) + (LEAST(CAST($4 AS BIGINT), \
                 GREATEST(CAST($3 AS BIGINT), (balance_micros - reserved_micros) / 2)) \
                 - CAST($3 AS BIGINT)) / CAST($7 AS BIGINT) * CAST($7 AS BIGINT) AS n \
             FROM balances WHERE namespace_id = $1 AND environment = $2 \
             AND balance_micros - reserved_micros >= $3 FOR UPDATE), \
         moved AS (UPDATE balances b SET reserved_micros = b.reserved_micros + pick.n, \
             updated_at = $5 FROM pick WHERE b.namespace_id = $1 AND b.environment = $2 \
             RETURNING pick.n AS n), \
         leased AS (UPDATE credit_leases l SET amount_micros = l.amount_micros + moved.n \
             FROM moved WHERE l.instance_id = $6 AND l.namespace_id = $1 \
             AND l.environment = $2 RETURNING 1) \
         SELECT n FROM moved",
    )
    .bind(ns)
    .bind(env.as_str())
    .bind(need)
    .bind(want.max(need))
    .bind(now)
    .bind(instance)
    .bind(unit.max(1))
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|r| Ok(r.try_get("n")?)).transpose()
}

/// Gives up to `amount` of the instance's lease on an account back to the
/// balance; what went back (less when the lease holds less).
pub async fn release(
    conn: &mut AnyConnection,
    instance: &str,
    ns: &str,
    env: Environment,
    amount: i64,
    now: i64,
) -> Result<i64> {
    let row = sqlx::query(
        "WITH pick AS (SELECT LEAST(amount_micros, CAST($4 AS BIGINT)) AS n FROM credit_leases \
             WHERE instance_id = $1 AND namespace_id = $2 AND environment = $3 FOR UPDATE), \
         cut AS (UPDATE credit_leases l SET amount_micros = l.amount_micros - pick.n, \
             updated_at = $5 FROM pick WHERE l.instance_id = $1 AND l.namespace_id = $2 \
             AND l.environment = $3 RETURNING pick.n AS n), \
         moved AS (UPDATE balances b SET reserved_micros = b.reserved_micros - cut.n, \
             updated_at = $5 FROM cut WHERE b.namespace_id = $2 AND b.environment = $3 \
             RETURNING cut.n AS n) \
         SELECT CAST(COALESCE(SUM(n), 0) AS BIGINT) AS n FROM moved",
    )
    .bind(instance)
    .bind(ns)
    .bind(env.as_str())
    .bind(amount.max(0))
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    Ok(row.try_get("n")?)
}

/// The account's balance and what instances have reserved of it.
pub async fn balance(conn: &mut AnyConnection, ns: &str, env: Environment) -> Result<(i64, i64)> {
    let row = sqlx::query(
        "SELECT balance_micros, reserved_micros FROM balances \
         WHERE namespace_id = $1 AND environment = $2",
    )
    .bind(ns)
    .bind(env.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    Ok(match row {
        Some(r) => (r.try_get("balance_micros")?, r.try_get("reserved_micros")?),
        None => (0, 0),
    })
}

/// What no instance has reserved of the account, with its balance row locked
/// until the transaction ends (a debit outside the gateway takes only that).
pub async fn lock_unreserved(conn: &mut AnyConnection, ns: &str, env: Environment) -> Result<i64> {
    let row = sqlx::query(
        "SELECT balance_micros - reserved_micros AS free FROM balances \
         WHERE namespace_id = $1 AND environment = $2 FOR UPDATE",
    )
    .bind(ns)
    .bind(env.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    row.map_or(Ok(0), |r| Ok(r.try_get("free")?))
}

/// Announces a change to every instance when the transaction commits
/// (PostgreSQL NOTIFY on [`CHANNEL`]); nothing on SQLite, which has one
/// instance. Payloads: `key:<id>`, `catalog`, `balance:<namespace>:<env>`,
/// `seller:<namespace>`.
pub async fn notify(conn: &mut AnyConnection, payload: &str) -> Result<()> {
    if conn.backend_name() != "PostgreSQL" {
        return Ok(());
    }
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(payload)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
