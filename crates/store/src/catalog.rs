//! The catalog of callable APIs. Each API's configuration is one JSON document
//! (its shape is owned by the server); the slug and timestamps are columns.

use sqlx::{AnyConnection, Row};

use crate::{now_ms, Result};

#[derive(Debug, Clone)]
pub struct CatalogRow {
    pub slug: String,
    pub config: String,
    pub source: String,
    pub created_at: i64,
    pub updated_at: i64,
}

fn from_row(r: &sqlx::any::AnyRow) -> Result<CatalogRow> {
    Ok(CatalogRow {
        slug: r.try_get("slug")?,
        config: r.try_get("config")?,
        source: r.try_get("source")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

const COLUMNS: &str = "slug, config, source, created_at, updated_at";

pub async fn list(conn: &mut AnyConnection) -> Result<Vec<CatalogRow>> {
    let sql = format!("SELECT {COLUMNS} FROM catalog_apis ORDER BY slug");
    let rows = sqlx::query(&sql).fetch_all(&mut *conn).await?;
    rows.iter().map(from_row).collect()
}

pub async fn get(conn: &mut AnyConnection, slug: &str) -> Result<Option<CatalogRow>> {
    let sql = format!("SELECT {COLUMNS} FROM catalog_apis WHERE slug = $1");
    let row = sqlx::query(&sql)
        .bind(slug)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// Inserts an API; `StoreError::Conflict` when the slug is taken.
pub async fn insert(
    conn: &mut AnyConnection,
    slug: &str,
    config: &str,
    source: &str,
) -> Result<CatalogRow> {
    let sql = format!(
        "INSERT INTO catalog_apis (slug, config, source, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $4) RETURNING {COLUMNS}"
    );
    let row = sqlx::query(&sql)
        .bind(slug)
        .bind(config)
        .bind(source)
        .bind(now_ms())
        .fetch_one(&mut *conn)
        .await?;
    from_row(&row)
}

/// Inserts or replaces an API (the config file's entries at start-up).
pub async fn upsert(
    conn: &mut AnyConnection,
    slug: &str,
    config: &str,
    source: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO catalog_apis (slug, config, source, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $4) \
         ON CONFLICT (slug) DO UPDATE SET config = $2, source = $3, updated_at = $4",
    )
    .bind(slug)
    .bind(config)
    .bind(source)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn update(
    conn: &mut AnyConnection,
    slug: &str,
    config: &str,
) -> Result<Option<CatalogRow>> {
    let sql = format!(
        "UPDATE catalog_apis SET config = $1, updated_at = $2 WHERE slug = $3 RETURNING {COLUMNS}"
    );
    let row = sqlx::query(&sql)
        .bind(config)
        .bind(now_ms())
        .bind(slug)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(from_row).transpose()
}

pub async fn delete(conn: &mut AnyConnection, slug: &str) -> Result<bool> {
    let res = sqlx::query("DELETE FROM catalog_apis WHERE slug = $1")
        .bind(slug)
        .execute(&mut *conn)
        .await?;
    Ok(res.rows_affected() == 1)
}

/// A fingerprint of the whole catalog that changes with every insert, update
/// and delete, so instances notice changes made by others with one cheap query.
pub async fn version(conn: &mut AnyConnection) -> Result<(i64, i64)> {
    let row = sqlx::query(
        "SELECT CAST(COUNT(*) AS BIGINT) AS n, CAST(COALESCE(MAX(updated_at), 0) AS BIGINT) AS t \
         FROM catalog_apis",
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok((row.try_get("n")?, row.try_get("t")?))
}
