//! API keys and their secrets' hashes (K1–K7).
//!
//! Labels, allowed APIs and limits are stored as JSON text (their shape is owned
//! by the server); everything the gateway looks up by is a plain column.

use sqlx::{AnyConnection, Row};
use tally_common::Environment;

use crate::{bad_value, now_ms, Result};

#[derive(Debug, Clone)]
pub struct KeyRow {
    pub id: String,
    pub namespace_id: String,
    pub environment: Environment,
    pub name: String,
    pub last4: String,
    pub labels: String,
    pub allowed_apis: String,
    pub limits: String,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// The latest deadline of a previous secret still in its grace period.
    pub previous_secret_expires_at: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct NewKey<'a> {
    pub id: &'a str,
    pub namespace_id: &'a str,
    pub environment: Environment,
    pub name: &'a str,
    pub secret_hash: &'a str,
    pub last4: &'a str,
    pub labels: &'a str,
    pub allowed_apis: &'a str,
    pub limits: &'a str,
    pub expires_at: Option<i64>,
    pub created_by: &'a str,
}

/// Columns of `api_keys` (aliased `k`) plus the grace deadline of old secrets;
/// the query binds the current time as `$1`.
macro_rules! select_columns {
    () => {
        "SELECT k.id, k.namespace_id, k.environment, k.name, k.last4, k.labels, \
         k.allowed_apis, k.limits, k.expires_at, k.revoked_at, k.created_by, k.created_at, \
         k.updated_at, \
         (SELECT MAX(s.expires_at) FROM api_key_secrets s \
           WHERE s.key_id = k.id AND s.expires_at IS NOT NULL AND s.expires_at > $1) AS grace"
    };
}
const SELECT: &str = concat!(select_columns!(), " FROM api_keys k");

fn from_row(r: &sqlx::any::AnyRow) -> Result<KeyRow> {
    let env: String = r.try_get("environment")?;
    Ok(KeyRow {
        id: r.try_get("id")?,
        namespace_id: r.try_get("namespace_id")?,
        environment: Environment::parse(&env).ok_or_else(|| bad_value("environment", &env))?,
        name: r.try_get("name")?,
        last4: r.try_get("last4")?,
        labels: r.try_get("labels")?,
        allowed_apis: r.try_get("allowed_apis")?,
        limits: r.try_get("limits")?,
        expires_at: r.try_get("expires_at")?,
        revoked_at: r.try_get("revoked_at")?,
        created_by: r.try_get("created_by")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        previous_secret_expires_at: r.try_get("grace")?,
    })
}

pub async fn insert(conn: &mut AnyConnection, key: NewKey<'_>) -> Result<()> {
    let now = now_ms();
    sqlx::query(
        "INSERT INTO api_keys (id, namespace_id, environment, name, last4, labels, allowed_apis, \
         limits, expires_at, revoked_at, created_by, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, $10, $11, $11)",
    )
    .bind(key.id)
    .bind(key.namespace_id)
    .bind(key.environment.as_str())
    .bind(key.name)
    .bind(key.last4)
    .bind(key.labels)
    .bind(key.allowed_apis)
    .bind(key.limits)
    .bind(key.expires_at)
    .bind(key.created_by)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    insert_secret(conn, key.id, key.secret_hash).await
}

async fn insert_secret(conn: &mut AnyConnection, key_id: &str, secret_hash: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO api_key_secrets (secret_hash, key_id, created_at, expires_at) \
         VALUES ($1, $2, $3, NULL)",
    )
    .bind(secret_hash)
    .bind(key_id)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// One key of a namespace; `None` if it does not exist there.
pub async fn get(conn: &mut AnyConnection, namespace_id: &str, id: &str) -> Result<Option<KeyRow>> {
    let sql = format!("{SELECT} WHERE k.namespace_id = $2 AND k.id = $3");
    let row = sqlx::query(&sql)
        .bind(now_ms())
        .bind(namespace_id)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// The keys of a namespace, optionally of one environment, newest first.
pub async fn list(
    conn: &mut AnyConnection,
    namespace_id: &str,
    environment: Option<Environment>,
) -> Result<Vec<KeyRow>> {
    let sql = format!(
        "{SELECT} WHERE k.namespace_id = $2 \
         AND (CAST($3 AS TEXT) IS NULL OR k.environment = $3) \
         ORDER BY k.created_at DESC, k.id DESC"
    );
    let rows = sqlx::query(&sql)
        .bind(now_ms())
        .bind(namespace_id)
        .bind(environment.map(Environment::as_str))
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(from_row).collect()
}

/// The key a secret belongs to and when that secret stops working (set once
/// the key was rotated), whatever the key's state; the gateway tells revoked,
/// expired and rotated-out secrets apart with it.
pub async fn lookup_secret(
    conn: &mut AnyConnection,
    secret_hash: &str,
) -> Result<Option<(KeyRow, Option<i64>)>> {
    const SQL: &str = concat!(
        select_columns!(),
        ", sec.expires_at AS secret_expires_at FROM api_keys k \
         JOIN api_key_secrets sec ON sec.key_id = k.id WHERE sec.secret_hash = $2"
    );
    let row = sqlx::query(SQL)
        .bind(now_ms())
        .bind(secret_hash)
        .fetch_optional(&mut *conn)
        .await?;
    match row {
        Some(r) => Ok(Some((from_row(&r)?, r.try_get("secret_expires_at")?))),
        None => Ok(None),
    }
}

/// Keys changed (updated, rotated, revoked) at or after `since` (Unix ms).
pub async fn changed_since(conn: &mut AnyConnection, since: i64) -> Result<Vec<(String, i64)>> {
    let rows = sqlx::query("SELECT id, updated_at FROM api_keys WHERE updated_at >= $1")
        .bind(since)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("id")?, r.try_get("updated_at")?)))
        .collect()
}

#[derive(Debug, Clone, Default)]
pub struct KeyChanges<'a> {
    pub name: Option<&'a str>,
    pub labels: Option<&'a str>,
    pub allowed_apis: Option<&'a str>,
    pub limits: Option<&'a str>,
    pub expires_at: Option<i64>,
}

pub async fn update(conn: &mut AnyConnection, id: &str, c: KeyChanges<'_>) -> Result<()> {
    sqlx::query(
        "UPDATE api_keys SET name = COALESCE($1, name), labels = COALESCE($2, labels), \
         allowed_apis = COALESCE($3, allowed_apis), limits = COALESCE($4, limits), \
         expires_at = COALESCE($5, expires_at), updated_at = $6, \
         expiry_warned_at = CASE WHEN $5 IS NULL THEN expiry_warned_at END WHERE id = $7",
    )
    .bind(c.name)
    .bind(c.labels)
    .bind(c.allowed_apis)
    .bind(c.limits)
    .bind(c.expires_at)
    .bind(now_ms())
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A key about to expire, for its warning.
#[derive(Debug, Clone)]
pub struct Expiring {
    pub id: String,
    pub namespace_id: String,
    pub environment: Environment,
    pub name: String,
    pub expires_at: i64,
}

/// Keys that are not revoked, expire after `now` and by `horizon`, and have
/// not been warned of it, soonest first.
pub async fn expiring_unwarned(
    conn: &mut AnyConnection,
    now: i64,
    horizon: i64,
    limit: i64,
) -> Result<Vec<Expiring>> {
    let rows = sqlx::query(
        "SELECT id, namespace_id, environment, name, expires_at FROM api_keys \
         WHERE revoked_at IS NULL AND expiry_warned_at IS NULL \
           AND expires_at > $1 AND expires_at <= $2 ORDER BY expires_at LIMIT $3",
    )
    .bind(now)
    .bind(horizon)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            let env: String = r.try_get("environment")?;
            Ok(Expiring {
                id: r.try_get("id")?,
                namespace_id: r.try_get("namespace_id")?,
                environment: Environment::parse(&env)
                    .ok_or_else(|| bad_value("environment", &env))?,
                name: r.try_get("name")?,
                expires_at: r.try_get("expires_at")?,
            })
        })
        .collect()
}

/// Records that a key used up the quota period `period`: true when this
/// call did (the first refusal of the period, on any instance).
pub async fn mark_quota_reached(conn: &mut AnyConnection, id: &str, period: &str) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE api_keys SET quota_reached_period = $1 \
         WHERE id = $2 AND (quota_reached_period IS NULL OR quota_reached_period <> $1)",
    )
    .bind(period)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Marks a key warned of its expiry: true when this call did (a new expiry
/// clears the mark, see [`update`]).
pub async fn mark_expiry_warned(conn: &mut AnyConnection, id: &str, at: i64) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE api_keys SET expiry_warned_at = $1 WHERE id = $2 AND expiry_warned_at IS NULL",
    )
    .bind(at)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Issues a new secret; every secret issued before it stops working at
/// `old_secrets_expire_at` (or earlier, if it already had an earlier deadline).
pub async fn rotate(
    conn: &mut AnyConnection,
    id: &str,
    new_secret_hash: &str,
    new_last4: &str,
    old_secrets_expire_at: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE api_key_secrets SET expires_at = $1 \
         WHERE key_id = $2 AND (expires_at IS NULL OR expires_at > $1)",
    )
    .bind(old_secrets_expire_at)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    insert_secret(conn, id, new_secret_hash).await?;
    sqlx::query("UPDATE api_keys SET last4 = $1, updated_at = $2 WHERE id = $3")
        .bind(new_last4)
        .bind(now_ms())
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Revokes a key now. Returns false if it was already revoked.
pub async fn revoke(conn: &mut AnyConnection, id: &str) -> Result<bool> {
    let now = now_ms();
    let res = sqlx::query(
        "UPDATE api_keys SET revoked_at = $1, updated_at = $1 WHERE id = $2 AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(res.rows_affected() == 1)
}

#[derive(Debug, Clone)]
pub struct AuditRow {
    pub time: i64,
    pub actor: String,
    pub action: String,
    pub details: String,
}

pub async fn audit(
    conn: &mut AnyConnection,
    key_id: &str,
    actor: &str,
    action: &str,
    details: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO api_key_audit (key_id, time, actor, action, details) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(key_id)
    .bind(now_ms())
    .bind(actor)
    .bind(action)
    .bind(details)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn audit_trail(conn: &mut AnyConnection, key_id: &str) -> Result<Vec<AuditRow>> {
    let rows = sqlx::query(
        "SELECT time, actor, action, details FROM api_key_audit WHERE key_id = $1 ORDER BY id",
    )
    .bind(key_id)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(AuditRow {
                time: r.try_get("time")?,
                actor: r.try_get("actor")?,
                action: r.try_get("action")?,
                details: r.try_get("details")?,
            })
        })
        .collect()
}
