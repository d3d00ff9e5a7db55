//! The event log (D4). Server-wide events have no namespace and are visible
//! to every namespace; namespace events only to their own.

use sqlx::{AnyConnection, Row};
use tally_common::{Environment, Severity};

use crate::{bad_value, now_ms, Result};

#[derive(Debug, Clone)]
pub struct NewEvent<'a> {
    pub namespace_id: Option<&'a str>,
    pub environment: Option<Environment>,
    pub kind: &'a str,
    pub severity: Severity,
    pub message: &'a str,
    pub actor: Option<&'a str>,
}

#[derive(Debug, Clone)]
pub struct EventRow {
    pub id: i64,
    pub time: i64,
    pub namespace_id: Option<String>,
    pub environment: Option<Environment>,
    pub kind: String,
    pub severity: Severity,
    pub message: String,
    pub actor: Option<String>,
}

pub async fn insert(conn: &mut AnyConnection, ev: NewEvent<'_>) -> Result<i64> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO events (time, namespace_id, environment, kind, severity, message, actor) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
    )
    .bind(now_ms())
    .bind(ev.namespace_id)
    .bind(ev.environment.map(Environment::as_str))
    .bind(ev.kind)
    .bind(ev.severity.as_str())
    .bind(ev.message)
    .bind(ev.actor)
    .fetch_one(&mut *conn)
    .await?;
    Ok(id)
}

#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Events of this environment plus those that concern no single one.
    pub environment: Option<Environment>,
    pub severity: Option<Severity>,
    /// Only events with a smaller id (older), for paging.
    pub before: Option<i64>,
    pub limit: i64,
}

/// Events visible to a namespace, newest first.
pub async fn list(
    conn: &mut AnyConnection,
    namespace_id: &str,
    filter: &EventFilter,
) -> Result<Vec<EventRow>> {
    let rows = sqlx::query(
        "SELECT id, time, namespace_id, environment, kind, severity, message, actor FROM events \
         WHERE (namespace_id = $1 OR namespace_id IS NULL) \
           AND (CAST($2 AS TEXT) IS NULL OR environment IS NULL OR environment = $2) \
           AND (CAST($3 AS TEXT) IS NULL OR severity = $3) \
           AND id < $4 \
         ORDER BY id DESC LIMIT $5",
    )
    .bind(namespace_id)
    .bind(filter.environment.map(Environment::as_str))
    .bind(filter.severity.map(Severity::as_str))
    .bind(filter.before.unwrap_or(i64::MAX))
    .bind(filter.limit)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            let env: Option<String> = r.try_get("environment")?;
            let severity: String = r.try_get("severity")?;
            Ok(EventRow {
                id: r.try_get("id")?,
                time: r.try_get("time")?,
                namespace_id: r.try_get("namespace_id")?,
                environment: env.as_deref().and_then(Environment::parse),
                kind: r.try_get("kind")?,
                severity: Severity::parse(&severity)
                    .ok_or_else(|| bad_value("severity", &severity))?,
                message: r.try_get("message")?,
                actor: r.try_get("actor")?,
            })
        })
        .collect()
}
