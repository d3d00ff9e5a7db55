//! One-time setup tokens (A1): what lets the first operator of a server be
//! created over HTTP. Stored only as SHA-256 hashes, with an expiry; they exist
//! only while the server has no operator.

use sqlx::AnyConnection;

use crate::{now_ms, Result};

/// Stores a new token, dropping expired ones (each start without an operator
/// adds one, so this keeps the table as small as the live tokens).
pub async fn insert(conn: &mut AnyConnection, token_hash: &str, expires_at: i64) -> Result<()> {
    sqlx::query("DELETE FROM setup_tokens WHERE expires_at <= $1")
        .bind(now_ms())
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO setup_tokens (token_hash, created_at, expires_at) VALUES ($1, $2, $3)",
    )
    .bind(token_hash)
    .bind(now_ms())
    .bind(expires_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Whether `token_hash` is a setup token that has not expired.
pub async fn is_valid(conn: &mut AnyConnection, token_hash: &str) -> Result<bool> {
    let row = sqlx::query("SELECT 1 FROM setup_tokens WHERE token_hash = $1 AND expires_at > $2")
        .bind(token_hash)
        .bind(now_ms())
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.is_some())
}

/// Uses up `token_hash`: true when it was valid. Every other setup token goes
/// with it, since the server is about to have its operator.
pub async fn consume(conn: &mut AnyConnection, token_hash: &str) -> Result<bool> {
    let res = sqlx::query("DELETE FROM setup_tokens WHERE token_hash = $1 AND expires_at > $2")
        .bind(token_hash)
        .bind(now_ms())
        .execute(&mut *conn)
        .await?;
    let valid = res.rows_affected() == 1;
    if valid {
        clear(conn).await?;
    }
    Ok(valid)
}

/// Removes every setup token (an operator exists now).
pub async fn clear(conn: &mut AnyConnection) -> Result<()> {
    sqlx::query("DELETE FROM setup_tokens")
        .execute(&mut *conn)
        .await?;
    Ok(())
}
