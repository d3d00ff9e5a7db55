//! The event log of a namespace (D4).

use actix_web::{get, web};
use serde::Deserialize;
use tally_common::{Environment, ErrorBody, Event, EventPage, Severity};
use tally_store::events::EventFilter;
use utoipa::IntoParams;

use crate::auth::{CurrentMember, Permission};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::views::rfc3339;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventQuery {
    /// Only events of this environment (plus those that concern no single one).
    pub environment: Option<Environment>,
    /// Only events of this severity.
    pub severity: Option<Severity>,
    /// Page size, 1 to 200 (default 50).
    pub limit: Option<i64>,
    /// Only events older than this id (the `next_before` of the previous page).
    pub before: Option<i64>,
}

/// Events visible to the namespace, newest first: its own and server-wide
/// events such as `startup`.
#[utoipa::path(
    operation_id = "list_events",
    tag = "events",
    security(("bearer" = [])),
    params(("namespace_id" = String, Path, description = "Namespace id"), EventQuery),
    responses(
        (status = 200, body = EventPage),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
#[get("/namespaces/{namespace_id}/events")]
pub async fn list(
    state: web::Data<AppState>,
    member: CurrentMember,
    query: web::Query<EventQuery>,
) -> ApiResult<web::Json<EventPage>> {
    member.require(Permission::Read)?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::invalid("limit must be between 1 and 200"));
    }
    let filter = EventFilter {
        environment: query.environment,
        severity: query.severity,
        before: query.before,
        limit: limit + 1,
    };
    let mut conn = state.store.conn().await?;
    let mut rows = tally_store::events::list(&mut conn, member.namespace_id(), &filter).await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next_before = if more {
        rows.last().map(|r| r.id)
    } else {
        None
    };
    let items = rows
        .into_iter()
        .map(|r| Event {
            id: r.id,
            time: rfc3339(r.time),
            kind: r.kind,
            severity: r.severity,
            environment: r.environment,
            namespace_id: r.namespace_id,
            message: r.message,
            actor: r.actor,
        })
        .collect();
    Ok(web::Json(EventPage { items, next_before }))
}
