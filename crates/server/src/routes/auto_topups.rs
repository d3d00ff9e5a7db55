//! Auto top-up rules (C6): threshold, amount and currency per environment.
//!
//! Policy: owners, admins and billing members read, set and remove them. A
//! rule creates a payment intent each time the balance drops below its
//! threshold (`crate::services::billing::check_auto_topup`); the payment processor
//! pays it from the namespace's standing authorization and the signed deposit
//! notification credits it like any top-up. Setting a rule above the current
//! balance counts as a crossing and creates the intent at once.

use actix_web::{delete, get, put, web, HttpResponse};
use tally_common::{
    AutoTopup, AutoTopupList, Environment, ErrorBody, ErrorCode, SetAutoTopupRequest,
};
use tally_store::auto_topups::RuleRow;

use crate::auth::{CurrentMember, Permission};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

const MAX: i64 = 1_000_000_000_000_000;

fn to_rule(r: RuleRow) -> AutoTopup {
    AutoTopup {
        environment: r.environment,
        threshold_micros: r.threshold_micros,
        amount_units: r.amount_units,
        currency: r.currency,
        balance_micros: r.balance_micros,
        armed: r.armed,
        last_intent_id: r.last_intent_id,
    }
}

/// The namespace's auto top-up rules, one per environment that has one.
#[utoipa::path(
    operation_id = "list_auto_topups",
    tag = "credits",
    security(("bearer" = [])),
    params(("namespace_id" = String, Path)),
    responses(
        (status = 200, body = AutoTopupList),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
#[get("/namespaces/{namespace_id}/credits/auto-topups")]
pub async fn list(
    state: web::Data<AppState>,
    member: CurrentMember,
) -> ApiResult<web::Json<AutoTopupList>> {
    member.require(Permission::Billing)?;
    let mut conn = state.store.conn().await?;
    let items = tally_store::auto_topups::list(&mut conn, member.namespace_id())
        .await?
        .into_iter()
        .map(to_rule)
        .collect();
    Ok(web::Json(AutoTopupList { items }))
}

/// Sets the auto top-up rule of one environment (replacing any other).
#[utoipa::path(
    operation_id = "set_auto_topup",
    tag = "credits",
    security(("bearer" = [])),
    params(("namespace_id" = String, Path), ("environment" = Environment, Path)),
    request_body = SetAutoTopupRequest,
    responses(
        (status = 200, body = AutoTopup),
        (status = 400, description = "Invalid amounts, or `unsupported_currency`", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
#[put("/namespaces/{namespace_id}/credits/auto-topups/{environment}")]
pub async fn set(
    state: web::Data<AppState>,
    member: CurrentMember,
    path: web::Path<(String, Environment)>,
    body: web::Json<SetAutoTopupRequest>,
) -> ApiResult<web::Json<AutoTopup>> {
    member.require(Permission::Billing)?;
    let (_, env) = path.into_inner();
    if !(1..=MAX).contains(&body.threshold_micros) {
        return Err(ApiError::invalid(
            "threshold_micros must be 1 to 1,000,000,000,000,000",
        ));
    }
    if !(1..=MAX).contains(&body.amount_units) {
        return Err(ApiError::invalid(
            "amount_units must be 1 to 1,000,000,000,000,000 (millionths of a unit)",
        ));
    }
    if !crate::services::billing::accepts(&state.settings.billing, body.currency) {
        return Err(ApiError::new(
            ErrorCode::UnsupportedCurrency,
            format!(
                "{} top-ups open after the token generation event; pay in USDC or USDT",
                body.currency
            ),
        ));
    }
    let ns = member.namespace_id();
    {
        let mut tx = state.store.begin().await?;
        tally_store::auto_topups::set(
            &mut tx,
            ns,
            env,
            body.threshold_micros,
            body.amount_units,
            body.currency,
        )
        .await?;
        tx.commit().await?;
    }
    crate::services::billing::check_auto_topup(&state.store, ns, env).await?;
    let mut conn = state.store.conn().await?;
    tally_store::auto_topups::list(&mut conn, ns)
        .await?
        .into_iter()
        .find(|r| r.environment == env)
        .map(|r| web::Json(to_rule(r)))
        .ok_or_else(|| ApiError::not_found("auto top-up rule"))
}

/// Removes the auto top-up rule of one environment.
#[utoipa::path(
    operation_id = "remove_auto_topup",
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
#[delete("/namespaces/{namespace_id}/credits/auto-topups/{environment}")]
pub async fn remove(
    state: web::Data<AppState>,
    member: CurrentMember,
    path: web::Path<(String, Environment)>,
) -> ApiResult<HttpResponse> {
    member.require(Permission::Billing)?;
    let (_, env) = path.into_inner();
    let mut conn = state.store.conn().await?;
    if !tally_store::auto_topups::delete(&mut conn, member.namespace_id(), env).await? {
        return Err(ApiError::not_found("auto top-up rule"));
    }
    Ok(HttpResponse::NoContent().finish())
}
