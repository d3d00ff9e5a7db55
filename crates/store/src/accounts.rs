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
}

fn from_row(row: &sqlx::any::AnyRow) -> Result<AccountRow> {
    Ok(AccountRow {
        id: row.try_get("id")?,
        email: row.try_get("email")?,
        display_name: row.try_get("display_name")?,
        password_hash: row.try_get("password_hash")?,
        created_at: row.try_get("created_at")?,
    })
}

const COLUMNS: &str = "id, email, display_name, password_hash, created_at";

/// Inserts an account; `StoreError::Conflict` when the email is taken.
pub async fn insert(
    conn: &mut AnyConnection,
    email: &str,
    display_name: &str,
    password_hash: &str,
) -> Result<AccountRow> {
    let row = AccountRow {
        id: new_id("acc"),
        email: email.to_owned(),
        display_name: display_name.to_owned(),
        password_hash: password_hash.to_owned(),
        created_at: now_ms(),
    };
    sqlx::query(
        "INSERT INTO accounts (id, email, display_name, password_hash, created_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&row.id)
    .bind(&row.email)
    .bind(&row.display_name)
    .bind(&row.password_hash)
    .bind(row.created_at)
    .execute(&mut *conn)
    .await?;
    Ok(row)
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
