//! Refresh tokens, stored only as SHA-256 hashes of the secret.
//!
//! Each token is single use. Tokens issued from one log-in share a family; when
//! a token that was already used is presented again (a sign it was stolen), the
//! whole family is revoked.

use sqlx::{AnyConnection, Row};

use crate::{now_ms, Result};

#[derive(Debug, Clone)]
pub struct RefreshTokenRow {
    pub account_id: String,
    pub family_id: String,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

pub async fn insert(
    conn: &mut AnyConnection,
    token_hash: &str,
    account_id: &str,
    family_id: &str,
    expires_at: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, account_id, family_id, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(token_hash)
    .bind(account_id)
    .bind(family_id)
    .bind(now_ms())
    .bind(expires_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn get(conn: &mut AnyConnection, token_hash: &str) -> Result<Option<RefreshTokenRow>> {
    let row = sqlx::query(
        "SELECT account_id, family_id, expires_at, used_at, revoked_at \
         FROM refresh_tokens WHERE token_hash = $1",
    )
    .bind(token_hash)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|r| {
        Ok(RefreshTokenRow {
            account_id: r.try_get("account_id")?,
            family_id: r.try_get("family_id")?,
            expires_at: r.try_get("expires_at")?,
            used_at: r.try_get("used_at")?,
            revoked_at: r.try_get("revoked_at")?,
        })
    })
    .transpose()
}

/// Marks a token used, only if it is still unused and unrevoked. Returns false
/// when another request used it first, so two concurrent refreshes with the same
/// token cannot both succeed.
pub async fn mark_used(conn: &mut AnyConnection, token_hash: &str) -> Result<bool> {
    let res = sqlx::query(
        "UPDATE refresh_tokens SET used_at = $1 \
         WHERE token_hash = $2 AND used_at IS NULL AND revoked_at IS NULL",
    )
    .bind(now_ms())
    .bind(token_hash)
    .execute(&mut *conn)
    .await?;
    Ok(res.rows_affected() == 1)
}

pub async fn revoke_family(conn: &mut AnyConnection, family_id: &str) -> Result<()> {
    sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = $1 WHERE family_id = $2 AND revoked_at IS NULL",
    )
    .bind(now_ms())
    .bind(family_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
