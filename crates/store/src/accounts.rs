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
    /// The first account of a server is an operator.
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

/// Inserts an account; `StoreError::Conflict` when the email is taken. The
/// first account of the database becomes an operator.
pub async fn insert(
    conn: &mut AnyConnection,
    email: &str,
    display_name: &str,
    password_hash: &str,
) -> Result<AccountRow> {
    let sql = format!(
        "INSERT INTO accounts (id, email, display_name, password_hash, created_at, is_operator) \
         VALUES ($1, $2, $3, $4, $5, \
           CASE WHEN EXISTS (SELECT 1 FROM accounts) THEN 0 ELSE 1 END) RETURNING {COLUMNS}"
    );
    let row = sqlx::query(&sql)
        .bind(new_id("acc"))
        .bind(email)
        .bind(display_name)
        .bind(password_hash)
        .bind(now_ms())
        .fetch_one(&mut *conn)
        .await?;
    from_row(&row)
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
