//! Low-balance alerts (C5): a threshold per environment.
//!
//! Policy: every member reads the alerts (the dashboard banner shows to
//! everyone); owners, admins and billing members set and remove them. Setting
//! a threshold above the current balance counts as a crossing and fires at
//! once; after that an alert fires once per drop below the threshold and
//! re-arms when the balance is back at or above it (`crate::services::billing`).

use actix_web::{delete, get, put, web, HttpResponse};
use tally_common::{Environment, ErrorBody, LowBalanceAlert, LowBalanceAlertList, SetAlertRequest};
use tally_store::alerts::AlertRow;

use crate::auth::{CurrentMember, Permission};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::views::rfc3339;

const MAX_THRESHOLD: i64 = 1_000_000_000_000_000;

fn to_alert(a: AlertRow) -> LowBalanceAlert {
    LowBalanceAlert {
        environment: a.environment,
        threshold_micros: a.threshold_micros,
        balance_micros: a.balance_micros,
        below: a.balance_micros < a.threshold_micros,
        armed: a.armed,
        last_fired_at: a.last_fired_at.map(rfc3339),
    }
}

/// The namespace's low-balance alerts, one per environment that has one.
#[utoipa::path(
    operation_id = "list_alerts",
    tag = "credits",
    security(("bearer" = [])),
    params(("namespace_id" = String, Path)),
    responses(
        (status = 200, body = LowBalanceAlertList),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
#[get("/namespaces/{namespace_id}/credits/alerts")]
pub async fn list(
    state: web::Data<AppState>,
    member: CurrentMember,
) -> ApiResult<web::Json<LowBalanceAlertList>> {
    member.require(Permission::Read)?;
    let mut conn = state.store.conn().await?;
    let items = tally_store::alerts::list(&mut conn, member.namespace_id())
        .await?
        .into_iter()
        .map(to_alert)
        .collect();
    Ok(web::Json(LowBalanceAlertList { items }))
}

/// Sets the low-balance threshold of one environment (replacing any other).
#[utoipa::path(
    operation_id = "set_alert",
    tag = "credits",
    security(("bearer" = [])),
    params(("namespace_id" = String, Path), ("environment" = Environment, Path)),
    request_body = SetAlertRequest,
    responses(
        (status = 200, body = LowBalanceAlert),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
#[put("/namespaces/{namespace_id}/credits/alerts/{environment}")]
pub async fn set(
    state: web::Data<AppState>,
    member: CurrentMember,
    path: web::Path<(String, Environment)>,
    body: web::Json<SetAlertRequest>,
) -> ApiResult<web::Json<LowBalanceAlert>> {
    member.require(Permission::Billing)?;
    let (_, env) = path.into_inner();
    if !(1..=MAX_THRESHOLD).contains(&body.threshold_micros) {
        return Err(ApiError::invalid(
            "threshold_micros must be 1 to 1,000,000,000,000,000",
        ));
    }
    let ns = member.namespace_id();
    {
        let mut tx = state.store.begin().await?;
        // Armed: the check below fires it at once when the balance is already under.
        tally_store::alerts::set(&mut tx, ns, env, body.threshold_micros, true).await?;
        tx.commit().await?;
    }
    crate::services::billing::check_alert(&state.store, ns, env).await?;
    let mut conn = state.store.conn().await?;
    tally_store::alerts::list(&mut conn, ns)
        .await?
        .into_iter()
        .find(|a| a.environment == env)
        .map(|a| web::Json(to_alert(a)))
        .ok_or_else(|| ApiError::not_found("alert"))
}

/// Removes the low-balance threshold of one environment.
#[utoipa::path(
    operation_id = "remove_alert",
    tag = "credits",
    security(("bearer" = [])),
    params(("namespace_id" = String, Path), ("environment" = Environment, Path)),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
#[delete("/namespaces/{namespace_id}/credits/alerts/{environment}")]
pub async fn remove(
    state: web::Data<AppState>,
    member: CurrentMember,
    path: web::Path<(String, Environment)>,
) -> ApiResult<HttpResponse> {
    member.require(Permission::Billing)?;
    let (_, env) = path.into_inner();
    let mut conn = state.store.conn().await?;
    if !tally_store::alerts::delete(&mut conn, member.namespace_id(), env).await? {
        return Err(ApiError::not_found("alert"));
    }
    Ok(HttpResponse::NoContent().finish())
}
