//! The serving state of sellers (C8): whether a seller's live serving was
//! last seen paused.
//!
//! Policy: the gateway decides a call from the seller's balance in memory;
//! this table only remembers the last state seen so that pausing and resuming
//! are each one event. The change is one conditional UPDATE, so however many
//! checkers run at once (several instances), one transition is reported once.

use sqlx::AnyConnection;

use crate::{now_ms, Result};

/// Records that the seller's serving is `paused` now; true when that is a
/// change. A seller seen for the first time counts as serving before.
pub async fn set_paused(
    conn: &mut AnyConnection,
    namespace_id: &str,
    paused: bool,
) -> Result<bool> {
    let now = now_ms();
    sqlx::query(
        "INSERT INTO seller_serving (namespace_id, paused, changed_at) VALUES ($1, 0, $2) \
         ON CONFLICT (namespace_id) DO NOTHING",
    )
    .bind(namespace_id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    let changed = sqlx::query(
        "UPDATE seller_serving SET paused = $2, changed_at = $3 \
         WHERE namespace_id = $1 AND paused <> $2",
    )
    .bind(namespace_id)
    .bind(i64::from(paused))
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(changed == 1)
}
