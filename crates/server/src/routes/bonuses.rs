//! Bonus credits (C7): operators grant them, every member reads them.
//!
//! Policy: a bonus is a credit (`routes::credits::credit`) plus a grant row
//! in the same transaction. Expiring bonuses are spent first and expire
//! through a ledger entry (`crate::upkeep`); reading the list replays the
//! ledger against the grants so what is left is exact at that moment.

use actix_web::{get, post, web, HttpResponse};
use serde::Deserialize;
use tally_common::{Bonus, BonusList, BonusReason, BonusRequest, Environment, ErrorBody};
use tally_store::bonuses::{BonusRow, GRANT_KIND};
use utoipa::IntoParams;

use crate::auth::{CurrentMember, CurrentOperator, Permission};
use crate::error::{ApiError, ApiResult};
use crate::input::parse_expiry;
use crate::services::credits::{self, Credit};
use crate::state::AppState;
use crate::views::rfc3339;

/// Furthest expiry: bounds the part of the ledger a replay reads.
const MAX_EXPIRY_MS: i64 = 366 * 24 * 3600 * 1000;

fn to_bonus(g: BonusRow) -> Bonus {
    Bonus {
        id: g.id,
        environment: g.environment,
        reason: BonusReason::parse(&g.reason).unwrap_or(BonusReason::Other),
        memo: g.memo,
        amount_micros: g.amount_micros,
        remaining_micros: g.remaining_micros,
        expires_at: g.expires_at.map(rfc3339),
        status: g.status,
        expired_micros: g.expired_micros,
        granted_by: g.granted_by,
        created_at: rfc3339(g.created_at),
    }
}

/// Grants bonus credits to a namespace, with an optional expiry (operators only).
#[utoipa::path(
    operation_id = "grant_bonus",
    tag = "credits",
    security(("bearer" = [])),
    params(("namespace_id" = String, Path)),
    request_body = BonusRequest,
    responses(
        (status = 201, body = Bonus),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
#[post("/admin/namespaces/{namespace_id}/bonuses")]
pub async fn grant(
    state: web::Data<AppState>,
    operator: CurrentOperator,
    path: web::Path<String>,
    body: web::Json<BonusRequest>,
) -> ApiResult<HttpResponse> {
    let ns = path.into_inner();
    let body = body.into_inner();
    let expires_at = body.expires_at.as_deref().map(parse_expiry).transpose()?;
    let now = tally_store::now_ms();
    if expires_at.is_some_and(|t| t - now > MAX_EXPIRY_MS) {
        return Err(ApiError::invalid(
            "expires_at must be at most 366 days away; leave it out for a bonus that never expires",
        ));
    }
    let memo =
        credits::check_grant(&state.store, &ns, body.amount_micros, body.memo.as_deref()).await?;
    let id = tally_store::new_id("bonus");
    let row = BonusRow {
        id: id.clone(),
        namespace_id: ns.clone(),
        environment: body.environment,
        reason: body.reason.as_str().to_owned(),
        memo: memo.clone(),
        amount_micros: body.amount_micros,
        remaining_micros: body.amount_micros,
        expires_at,
        ledger_entry_id: 0,
        status: "active".into(),
        expired_micros: 0,
        granted_by: operator.email.clone(),
        created_at: now,
    };
    let event = format!("Bonus credits: {}", body.reason.label());
    let entry = credits::credit(
        &state.store,
        &state.accounts,
        Credit {
            namespace_id: ns,
            environment: body.environment,
            kind: GRANT_KIND,
            amount_micros: body.amount_micros,
            actor: operator.email.clone(),
            reference: Some(id),
            memo,
            event,
            cooldown_ms: None,
            bonus: Some(row.clone()),
        },
    )
    .await?
    .map_err(|_| ApiError::internal(anyhow::anyhow!("a bonus has no cooldown")))?;
    Ok(HttpResponse::Created().json(to_bonus(BonusRow {
        ledger_entry_id: entry.id,
        ..row
    })))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BonusQuery {
    /// Default `test`.
    pub environment: Option<Environment>,
}

/// The namespace's bonus grants in one environment, with what is left of
/// each and the next expiry.
#[utoipa::path(
    operation_id = "list_bonuses",
    tag = "credits",
    security(("bearer" = [])),
    params(("namespace_id" = String, Path), BonusQuery),
    responses(
        (status = 200, body = BonusList),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
#[get("/namespaces/{namespace_id}/credits/bonuses")]
pub async fn list(
    state: web::Data<AppState>,
    member: CurrentMember,
    query: web::Query<BonusQuery>,
) -> ApiResult<web::Json<BonusList>> {
    member.require(Permission::Read)?;
    let env = query.environment.unwrap_or(Environment::Test);
    let ns = member.namespace_id();
    let mut tx = state.store.begin().await?;
    tally_store::bonuses::replay(&mut tx, ns, env).await?;
    let rows = tally_store::bonuses::list(&mut tx, ns, env).await?;
    tx.commit().await?;
    let active = rows
        .iter()
        .filter(|g| g.status == "active" && g.expires_at.is_some());
    let expiring_micros = active.clone().map(|g| g.remaining_micros).sum();
    let next_expiry = active.filter_map(|g| g.expires_at).min().map(rfc3339);
    Ok(web::Json(BonusList {
        items: rows.into_iter().map(to_bonus).collect(),
        expiring_micros,
        next_expiry,
    }))
}
