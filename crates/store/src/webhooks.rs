//! Webhook endpoints, the messages sent to them, their deliveries and every
//! attempt (W1, W2).
//!
//! A message is written in the transaction of the change it reports (an
//! outbox): with one delivery per subscribed, enabled endpoint of its
//! namespace, or not at all when none subscribes. Instances claim due
//! deliveries with one conditional UPDATE (`claimed_until`), so two never
//! send the same attempt; a claim of an instance that dies expires.

use sqlx::{AnyConnection, Row};

use crate::{now_ms, Result};

#[derive(Debug, Clone)]
pub struct EndpointRow {
    pub id: String,
    pub namespace_id: String,
    pub url: String,
    pub description: String,
    /// JSON array of event types; empty: all.
    pub event_types: Vec<String>,
    pub secret: String,
    pub previous_secret: Option<String>,
    pub previous_secret_expires_at: Option<i64>,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub failing_since: Option<i64>,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
}

impl EndpointRow {
    /// Whether it wants events of `event_type`.
    pub fn subscribes(&self, event_type: &str) -> bool {
        self.event_types.is_empty() || self.event_types.iter().any(|t| t == event_type)
    }
}

const ENDPOINT_COLUMNS: &str = "id, namespace_id, url, description, event_types, secret, \
     previous_secret, previous_secret_expires_at, enabled, disabled_reason, failing_since, \
     created_by, created_at, updated_at";

fn endpoint_from_row(r: &sqlx::any::AnyRow) -> Result<EndpointRow> {
    let types: String = r.try_get("event_types")?;
    Ok(EndpointRow {
        id: r.try_get("id")?,
        namespace_id: r.try_get("namespace_id")?,
        url: r.try_get("url")?,
        description: r.try_get("description")?,
        event_types: serde_json::from_str(&types)
            .map_err(|_| crate::bad_value("event_types", &types))?,
        secret: r.try_get("secret")?,
        previous_secret: r.try_get("previous_secret")?,
        previous_secret_expires_at: r.try_get("previous_secret_expires_at")?,
        enabled: r.try_get::<i64, _>("enabled")? != 0,
        disabled_reason: r.try_get("disabled_reason")?,
        failing_since: r.try_get("failing_since")?,
        created_by: r.try_get("created_by")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn types_json(types: &[String]) -> String {
    serde_json::to_string(types).unwrap_or_else(|_| "[]".to_owned())
}

pub async fn insert_endpoint(conn: &mut AnyConnection, e: &EndpointRow) -> Result<()> {
    sqlx::query(&format!(
        "INSERT INTO webhook_endpoints ({ENDPOINT_COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
    ))
    .bind(&e.id)
    .bind(&e.namespace_id)
    .bind(&e.url)
    .bind(&e.description)
    .bind(types_json(&e.event_types))
    .bind(&e.secret)
    .bind(&e.previous_secret)
    .bind(e.previous_secret_expires_at)
    .bind(i64::from(e.enabled))
    .bind(&e.disabled_reason)
    .bind(e.failing_since)
    .bind(&e.created_by)
    .bind(e.created_at)
    .bind(e.updated_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Writes every changeable field of `e` (url, description, types, secrets,
/// enabled state and failure streak).
pub async fn update_endpoint(conn: &mut AnyConnection, e: &EndpointRow) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE webhook_endpoints SET url = $1, description = $2, event_types = $3, secret = $4, \
         previous_secret = $5, previous_secret_expires_at = $6, enabled = $7, \
         disabled_reason = $8, failing_since = $9, updated_at = $10 \
         WHERE id = $11 AND namespace_id = $12",
    )
    .bind(&e.url)
    .bind(&e.description)
    .bind(types_json(&e.event_types))
    .bind(&e.secret)
    .bind(&e.previous_secret)
    .bind(e.previous_secret_expires_at)
    .bind(i64::from(e.enabled))
    .bind(&e.disabled_reason)
    .bind(e.failing_since)
    .bind(now_ms())
    .bind(&e.id)
    .bind(&e.namespace_id)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn endpoints(conn: &mut AnyConnection, namespace_id: &str) -> Result<Vec<EndpointRow>> {
    let rows = sqlx::query(&format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE namespace_id = $1 \
         ORDER BY created_at, id"
    ))
    .bind(namespace_id)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(endpoint_from_row).collect()
}

pub async fn endpoint(
    conn: &mut AnyConnection,
    namespace_id: &str,
    id: &str,
) -> Result<Option<EndpointRow>> {
    let row = sqlx::query(&format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1 AND namespace_id = $2"
    ))
    .bind(id)
    .bind(namespace_id)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(endpoint_from_row).transpose()
}

/// Deletes an endpoint with its deliveries and their attempts.
pub async fn delete_endpoint(
    conn: &mut AnyConnection,
    namespace_id: &str,
    id: &str,
) -> Result<bool> {
    sqlx::query(
        "DELETE FROM webhook_attempts WHERE delivery_id IN \
         (SELECT id FROM webhook_deliveries WHERE endpoint_id = $1 AND namespace_id = $2)",
    )
    .bind(id)
    .bind(namespace_id)
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM webhook_deliveries WHERE endpoint_id = $1 AND namespace_id = $2")
        .bind(id)
        .bind(namespace_id)
        .execute(&mut *conn)
        .await?;
    let done = sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1 AND namespace_id = $2")
        .bind(id)
        .bind(namespace_id)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// A message about to be written: `payload` is the exact body to send.
#[derive(Debug, Clone)]
pub struct NewMessage<'a> {
    pub id: &'a str,
    pub namespace_id: &'a str,
    pub event_type: &'a str,
    pub payload: &'a str,
}

async fn insert_message(conn: &mut AnyConnection, m: &NewMessage<'_>, at: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO webhook_messages (id, namespace_id, event_type, payload, created_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(m.id)
    .bind(m.namespace_id)
    .bind(m.event_type)
    .bind(m.payload)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn insert_delivery(
    conn: &mut AnyConnection,
    message_id: &str,
    endpoint_id: &str,
    namespace_id: &str,
    at: i64,
) -> Result<String> {
    let id = crate::new_id("whd");
    sqlx::query(
        "INSERT INTO webhook_deliveries (id, message_id, endpoint_id, namespace_id, status, \
         attempts, next_attempt_at, claimed_until, created_at) \
         VALUES ($1, $2, $3, $4, 'pending', 0, $5, 0, $5)",
    )
    .bind(&id)
    .bind(message_id)
    .bind(endpoint_id)
    .bind(namespace_id)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    Ok(id)
}

/// Writes `m` with a delivery to every enabled endpoint of its namespace
/// that subscribes to its type; nothing when none does. The number of
/// deliveries made.
pub async fn enqueue(conn: &mut AnyConnection, m: &NewMessage<'_>) -> Result<usize> {
    let targets: Vec<EndpointRow> = endpoints(conn, m.namespace_id)
        .await?
        .into_iter()
        .filter(|e| e.enabled && e.subscribes(m.event_type))
        .collect();
    if targets.is_empty() {
        return Ok(0);
    }
    let at = now_ms();
    insert_message(conn, m, at).await?;
    for e in &targets {
        insert_delivery(conn, m.id, &e.id, m.namespace_id, at).await?;
    }
    Ok(targets.len())
}

/// Writes `m` with one delivery to `endpoint_id` whatever it subscribes to
/// (a test event); the delivery's id.
pub async fn enqueue_to(
    conn: &mut AnyConnection,
    m: &NewMessage<'_>,
    endpoint_id: &str,
) -> Result<String> {
    let at = now_ms();
    insert_message(conn, m, at).await?;
    insert_delivery(conn, m.id, endpoint_id, m.namespace_id, at).await
}

/// A claimed delivery with what sending it needs.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: String,
    pub message_id: String,
    pub endpoint_id: String,
    pub namespace_id: String,
    pub event_type: String,
    pub payload: String,
    pub url: String,
    pub secret: String,
    pub previous_secret: Option<String>,
    pub previous_secret_expires_at: Option<i64>,
    /// Attempts made before this one.
    pub attempts: i64,
    pub created_at: i64,
}

/// Claims up to `limit` due deliveries of enabled endpoints until `until`,
/// oldest due first. The outer conditions are checked again on each row as
/// it is updated, so of two instances claiming at once each row goes to one.
pub async fn claim(
    conn: &mut AnyConnection,
    me: &str,
    now: i64,
    until: i64,
    limit: i64,
) -> Result<Vec<Claimed>> {
    let ids: Vec<String> = sqlx::query_scalar(
        "UPDATE webhook_deliveries SET claimed_until = $1, claimed_by = $4 \
         WHERE id IN (SELECT d.id FROM webhook_deliveries d \
             JOIN webhook_endpoints e ON e.id = d.endpoint_id \
             WHERE d.status = 'pending' AND d.next_attempt_at <= $2 AND d.claimed_until <= $2 \
               AND e.enabled = 1 \
             ORDER BY d.next_attempt_at, d.created_at LIMIT $3) \
           AND status = 'pending' AND claimed_until <= $2 \
         RETURNING id",
    )
    .bind(until)
    .bind(now)
    .bind(limit)
    .bind(me)
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let row = sqlx::query(
            "SELECT d.id, d.message_id, d.endpoint_id, d.namespace_id, m.event_type, m.payload, \
             e.url, e.secret, e.previous_secret, e.previous_secret_expires_at, d.attempts, \
             d.created_at \
             FROM webhook_deliveries d \
             JOIN webhook_messages m ON m.id = d.message_id \
             JOIN webhook_endpoints e ON e.id = d.endpoint_id \
             WHERE d.id = $1",
        )
        .bind(&id)
        .fetch_optional(&mut *conn)
        .await?;
        let Some(r) = row else { continue };
        out.push(Claimed {
            id: r.try_get("id")?,
            message_id: r.try_get("message_id")?,
            endpoint_id: r.try_get("endpoint_id")?,
            namespace_id: r.try_get("namespace_id")?,
            event_type: r.try_get("event_type")?,
            payload: r.try_get("payload")?,
            url: r.try_get("url")?,
            secret: r.try_get("secret")?,
            previous_secret: r.try_get("previous_secret")?,
            previous_secret_expires_at: r.try_get("previous_secret_expires_at")?,
            attempts: r.try_get("attempts")?,
            created_at: r.try_get("created_at")?,
        });
    }
    out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    Ok(out)
}

/// Holds a claim of `me` until `until`, before an attempt: false when the
/// delivery is no longer this instance's (its claim expired and another
/// took it) or no longer pending.
pub async fn renew_claim(conn: &mut AnyConnection, id: &str, me: &str, until: i64) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE webhook_deliveries SET claimed_until = $1 \
         WHERE id = $2 AND claimed_by = $3 AND status = 'pending'",
    )
    .bind(until)
    .bind(id)
    .bind(me)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// One attempt's result.
#[derive(Debug, Clone)]
pub struct AttemptRow {
    pub attempted_at: i64,
    pub status_code: Option<i64>,
    pub latency_ms: i64,
    pub succeeded: bool,
    pub response_excerpt: String,
    pub error: Option<String>,
}

/// What becomes of a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    Succeeded,
    RetryAt(i64),
    Failed,
}

/// Records an attempt of a claimed delivery and its outcome, and the
/// endpoint's failure streak (ended by a success, begun by a failure). The
/// endpoint's `failing_since` afterwards.
pub async fn record_attempt(
    conn: &mut AnyConnection,
    claimed: &Claimed,
    attempt: &AttemptRow,
    after: After,
) -> Result<Option<i64>> {
    sqlx::query(
        "INSERT INTO webhook_attempts (delivery_id, attempted_at, status_code, latency_ms, \
         succeeded, response_excerpt, error) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&claimed.id)
    .bind(attempt.attempted_at)
    .bind(attempt.status_code)
    .bind(attempt.latency_ms)
    .bind(i64::from(attempt.succeeded))
    .bind(&attempt.response_excerpt)
    .bind(&attempt.error)
    .execute(&mut *conn)
    .await?;
    let now = now_ms();
    let (status, next, finished) = match after {
        After::Succeeded => ("succeeded", now, Some(now)),
        After::RetryAt(at) => ("pending", at, None),
        After::Failed => ("failed", now, Some(now)),
    };
    sqlx::query(
        "UPDATE webhook_deliveries SET status = $1, attempts = attempts + 1, next_attempt_at = $2, \
         claimed_until = 0, claimed_by = NULL, last_status = $3, finished_at = $4 WHERE id = $5",
    )
    .bind(status)
    .bind(next)
    .bind(attempt.status_code)
    .bind(finished)
    .bind(&claimed.id)
    .execute(&mut *conn)
    .await?;
    let failing_since: Option<Option<i64>> = if attempt.succeeded {
        sqlx::query_scalar(
            "UPDATE webhook_endpoints SET failing_since = NULL WHERE id = $1 RETURNING failing_since",
        )
        .bind(&claimed.endpoint_id)
        .fetch_optional(&mut *conn)
        .await?
    } else {
        sqlx::query_scalar(
            "UPDATE webhook_endpoints SET failing_since = COALESCE(failing_since, $1) \
             WHERE id = $2 RETURNING failing_since",
        )
        .bind(attempt.attempted_at)
        .bind(&claimed.endpoint_id)
        .fetch_optional(&mut *conn)
        .await?
    };
    Ok(failing_since.flatten())
}

/// Disables an enabled endpoint with a reason: true when this call did it.
pub async fn disable(conn: &mut AnyConnection, endpoint_id: &str, reason: &str) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE webhook_endpoints SET enabled = 0, disabled_reason = $1, updated_at = $2 \
         WHERE id = $3 AND enabled = 1",
    )
    .bind(reason)
    .bind(now_ms())
    .bind(endpoint_id)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

#[derive(Debug, Clone)]
pub struct DeliveryRow {
    pub id: String,
    pub message_id: String,
    pub endpoint_id: String,
    pub event_type: String,
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub last_status: Option<i64>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    pub payload: String,
}

const DELIVERY_SELECT: &str = "SELECT d.id, d.message_id, d.endpoint_id, m.event_type, d.status, \
     d.attempts, d.next_attempt_at, d.last_status, d.created_at, d.finished_at, m.payload \
     FROM webhook_deliveries d JOIN webhook_messages m ON m.id = d.message_id";

fn delivery_from_row(r: &sqlx::any::AnyRow) -> Result<DeliveryRow> {
    Ok(DeliveryRow {
        id: r.try_get("id")?,
        message_id: r.try_get("message_id")?,
        endpoint_id: r.try_get("endpoint_id")?,
        event_type: r.try_get("event_type")?,
        status: r.try_get("status")?,
        attempts: r.try_get("attempts")?,
        next_attempt_at: r.try_get("next_attempt_at")?,
        last_status: r.try_get("last_status")?,
        created_at: r.try_get("created_at")?,
        finished_at: r.try_get("finished_at")?,
        payload: r.try_get("payload")?,
    })
}

/// Deliveries of a namespace, newest first: of one endpoint and one status
/// when given, older than the delivery `before` when given.
pub async fn deliveries(
    conn: &mut AnyConnection,
    namespace_id: &str,
    endpoint_id: Option<&str>,
    status: Option<&str>,
    before: Option<(i64, &str)>,
    limit: i64,
) -> Result<Vec<DeliveryRow>> {
    let (before_at, before_id) = before.unwrap_or((i64::MAX, ""));
    let rows = sqlx::query(&format!(
        "{DELIVERY_SELECT} WHERE d.namespace_id = $1 \
           AND (CAST($2 AS TEXT) IS NULL OR d.endpoint_id = $2) \
           AND (CAST($3 AS TEXT) IS NULL OR d.status = $3) \
           AND (d.created_at < $4 OR (d.created_at = $4 AND d.id < $5)) \
         ORDER BY d.created_at DESC, d.id DESC LIMIT $6"
    ))
    .bind(namespace_id)
    .bind(endpoint_id)
    .bind(status)
    .bind(before_at)
    .bind(if before.is_some() {
        before_id
    } else {
        "\u{10FFFF}"
    })
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(delivery_from_row).collect()
}

pub async fn delivery(
    conn: &mut AnyConnection,
    namespace_id: &str,
    id: &str,
) -> Result<Option<DeliveryRow>> {
    let row = sqlx::query(&format!(
        "{DELIVERY_SELECT} WHERE d.id = $1 AND d.namespace_id = $2"
    ))
    .bind(id)
    .bind(namespace_id)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(delivery_from_row).transpose()
}

pub async fn attempts(conn: &mut AnyConnection, delivery_id: &str) -> Result<Vec<AttemptRow>> {
    let rows = sqlx::query(
        "SELECT attempted_at, status_code, latency_ms, succeeded, response_excerpt, error \
         FROM webhook_attempts WHERE delivery_id = $1 ORDER BY id",
    )
    .bind(delivery_id)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(AttemptRow {
                attempted_at: r.try_get("attempted_at")?,
                status_code: r.try_get("status_code")?,
                latency_ms: r.try_get("latency_ms")?,
                succeeded: r.try_get::<i64, _>("succeeded")? != 0,
                response_excerpt: r.try_get("response_excerpt")?,
                error: r.try_get("error")?,
            })
        })
        .collect()
}

/// A new delivery of `delivery`'s message to its endpoint, due now: the
/// same event id goes out again. Its id.
pub async fn replay(
    conn: &mut AnyConnection,
    d: &DeliveryRow,
    namespace_id: &str,
) -> Result<String> {
    insert_delivery(conn, &d.message_id, &d.endpoint_id, namespace_id, now_ms()).await
}

/// Deletes finished deliveries (with their attempts) older than `before`,
/// and messages left with no delivery. The number of deliveries deleted.
pub async fn prune(conn: &mut AnyConnection, before: i64) -> Result<u64> {
    sqlx::query(
        "DELETE FROM webhook_attempts WHERE delivery_id IN (SELECT id FROM webhook_deliveries \
         WHERE status <> 'pending' AND created_at < $1)",
    )
    .bind(before)
    .execute(&mut *conn)
    .await?;
    let done =
        sqlx::query("DELETE FROM webhook_deliveries WHERE status <> 'pending' AND created_at < $1")
            .bind(before)
            .execute(&mut *conn)
            .await?;
    sqlx::query(
        "DELETE FROM webhook_messages WHERE created_at < $1 AND NOT EXISTS \
         (SELECT 1 FROM webhook_deliveries d WHERE d.message_id = webhook_messages.id)",
    )
    .bind(before)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}
