//! Server-wide settings kept in the database, so that every instance sharing a
//! database agrees on them (e.g. the generated JWT signing secret).

use sqlx::AnyConnection;

use crate::{now_ms, Result};

/// Returns the stored value of `key`, storing `candidate` first if there is
/// none. Safe against concurrent first starts: exactly one candidate wins and
/// everyone reads the winner.
pub async fn get_or_insert(conn: &mut AnyConnection, key: &str, candidate: &str) -> Result<String> {
    sqlx::query(
        "INSERT INTO server_settings (key, value, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (key) DO NOTHING",
    )
    .bind(key)
    .bind(candidate)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    let value: String = sqlx::query_scalar("SELECT value FROM server_settings WHERE key = $1")
        .bind(key)
        .fetch_one(&mut *conn)
        .await?;
    Ok(value)
}

/// Stores `value` under `key`, replacing any earlier value.
pub async fn set(conn: &mut AnyConnection, key: &str, value: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO server_settings (key, value, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (key) DO UPDATE SET value = $2",
    )
    .bind(key)
    .bind(value)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The stored value of `key`, if any.
pub async fn get(conn: &mut AnyConnection, key: &str) -> Result<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT value FROM server_settings WHERE key = $1")
            .bind(key)
            .fetch_optional(&mut *conn)
            .await?,
    )
}
