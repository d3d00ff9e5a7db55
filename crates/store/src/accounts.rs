//! Accounts. Emails are stored lower-cased and trimmed, so uniqueness is
//! case-insensitive on both backends.

use sqlx::{AnyConnection, Row};

use crate::{new_id, now_ms, Result};

#[derive(Debug, Clone)]
pub struct AccountRow {
    pub id: String,
    pub email: String,
    pub display_name: String,
    pub password_hash: String,
    pub created_at: i64,
    /// Runs the server (catalog, grants). Set only explicitly: `tally admin`,
    /// or the one-time setup token of a server without an operator.
    pub is_operator: bool,
}

fn from_row(row: &sqlx::any::AnyRow) -> Result<AccountRow> {
    Ok(AccountRow {
        id: row.try_get("id")?,
        email: row.try_get("email")?,
        display_name: row.try_get("display_name")?,
        password_hash: row.try_get("password_hash")?,
        created_at: row.try_get("created_at")?,
        is_operator: row.try_get::<i64, _>("is_operator")? != 0,
    })
}

const COLUMNS: &str = "id, email, display_name, password_hash, created_at, is_operator";

/// Inserts an account; `StoreError::Conflict` when the email is taken.
/// Nothing about the other accounts decides `is_operator`: only the caller.
pub async fn insert(
    conn: &mut AnyConnection,
    email: &str,
    display_name: &str,
    password_hash: &str,
    is_operator: bool,
) -> Result<AccountRow> {
    let sql = format!(
        "INSERT INTO accounts (id, email, display_name, password_hash, created_at, is_operator) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING {COLUMNS}"
    );
    let row = sqlx::query(&sql)
        .bind(new_id("acc"))
        .bind(email)
        .bind(display_name)
        .bind(password_hash)
        .bind(now_ms())
        .bind(i64::from(is_operator))
        .fetch_one(&mut *conn)
        .await?;
    from_row(&row)
}

/// Makes an account an operator or takes that away; false when there is no
/// such account.
pub async fn set_operator(conn: &mut AnyConnection, id: &str, is_operator: bool) -> Result<bool> {
    let res = sqlx::query("UPDATE accounts SET is_operator = $1 WHERE id = $2")
        .bind(i64::from(is_operator))
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(res.rows_affected() == 1)
}

/// Every operator, oldest first.
pub async fn operators(conn: &mut AnyConnection) -> Result<Vec<AccountRow>> {
    let sql =
        format!("SELECT {COLUMNS} FROM accounts WHERE is_operator = 1 ORDER BY created_at, id");
    let rows = sqlx::query(&sql).fetch_all(&mut *conn).await?;
    rows.iter().map(from_row).collect()
}

/// Whether the server has at least one operator.
pub async fn any_operator(conn: &mut AnyConnection) -> Result<bool> {
    let row = sqlx::query("SELECT 1 FROM accounts WHERE is_operator = 1 LIMIT 1")
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.is_some())
}

/// Whether the server has any account (a restore needs none).
pub async fn any(conn: &mut AnyConnection) -> Result<bool> {
    let row = sqlx::query("SELECT 1 FROM accounts LIMIT 1")
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.is_some())
}

pub async fn by_email(conn: &mut AnyConnection, email: &str) -> Result<Option<AccountRow>> {
    let sql = format!("SELECT {COLUMNS} FROM accounts WHERE email = $1");
    let row = sqlx::query(&sql)
        .bind(email)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(from_row).transpose()
}

pub async fn by_id(conn: &mut AnyConnection, id: &str) -> Result<Option<AccountRow>> {
    let sql = format!("SELECT {COLUMNS} FROM accounts WHERE id = $1");
    let row = sqlx::query(&sql)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// When the first account was created (Unix ms): how long this server has
/// been in use.
pub async fn first_created_at(conn: &mut AnyConnection) -> Result<Option<i64>> {
    Ok(
        sqlx::query_scalar("SELECT CAST(MIN(created_at) AS BIGINT) FROM accounts")
            .fetch_one(&mut *conn)
            .await?,
    )
}
