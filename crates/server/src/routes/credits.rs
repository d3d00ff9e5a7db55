//! Credits (C1, C2 grants and faucet): balances, the ledger, operator grants
//! and the testnet faucet. Top-ups are in `topups`, statements in
//! `statements`, low-balance alerts in `alerts`.
//!
//! Policy: every credit goes through `services::credits`, which keeps the
//! in-memory balance in step with the ledger. Every role reads balances and the ledger; developers, billing,
//! admins and owners may use the faucet; only operators grant.

use actix_web::{get, post, web, HttpResponse};
use serde::Deserialize;
use tally_common::{
    Balance, Balances, Environment, ErrorBody, ErrorCode, FaucetResult, GrantRequest, LedgerEntry,
    LedgerPage,
};
use tally_store::ledger::{LedgerFilter, LedgerRow};
use utoipa::IntoParams;

use crate::auth::{CurrentMember, CurrentOperator, Permission};
use crate::error::{ApiError, ApiResult};
use crate::services::credits::{self, Credit};
use crate::state::AppState;
use crate::views::rfc3339;

pub fn to_entry(r: LedgerRow) -> LedgerEntry {
    LedgerEntry {
        id: r.id,
        time: rfc3339(r.time),
        environment: r.environment,
        kind: r.kind,
        amount_micros: r.amount_micros,
        balance_after_micros: r.balance_after_micros,
        actor: r.actor,
        reference: r.reference,
        memo: r.memo,
        rate_micros: r.rate_micros,
    }
}

async fn balance(state: &AppState, ns: &str, env: Environment) -> ApiResult<Balance> {
    let (balance, held) = state.accounts.snapshot(ns, env).await?;
    Ok(Balance {
        environment: env,
        balance_micros: balance,
        held_micros: held,
        available_micros: balance - held,
    })
}

/// Balances of the namespace, one per environment.
#[utoipa::path(
    tag = "credits",
    security(("bearer" = [])),
    params(("namespace_id" = String, Path)),
    responses((status = 200, body = Balances), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody))
)]
#[get("/namespaces/{namespace_id}/credits")]
pub async fn balances(
    state: web::Data<AppState>,
    member: CurrentMember,
) -> ApiResult<web::Json<Balances>> {
    member.require(Permission::Read)?;
    let mut items = Vec::new();
    for env in Environment::ALL {
        items.push(balance(&state, member.namespace_id(), env).await?);
    }
    Ok(web::Json(Balances { items }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LedgerQuery {
    /// Default `test`.
    pub environment: Option<Environment>,
    /// Page size, 1 to 200 (default 50).
    pub limit: Option<i64>,
    /// Only entries older than this id (the `next_before` of the previous page).
    pub before: Option<i64>,
    /// Only this kind (`usage`, `topup`, `grant`, `bonus`, `revenue`, …).
    pub kind: Option<String>,
    /// Only entries caused by this actor, e.g. a key id (the spending of one key).
    pub actor: Option<String>,
    /// Only entries with this reference, e.g. a call id.
    pub reference: Option<String>,
    /// RFC 3339; entries at or after it.
    pub from: Option<String>,
    /// RFC 3339; entries before it.
    pub to: Option<String>,
}

fn time_param(name: &str, value: Option<&str>) -> ApiResult<Option<i64>> {
    value
        .map(|v| {
            chrono::DateTime::parse_from_rfc3339(v.trim())
                .map(|t| t.timestamp_millis())
                .map_err(|_| ApiError::invalid(format!("{name} must be an RFC 3339 time")))
        })
        .transpose()
}

fn text_param<'a>(name: &str, value: Option<&'a str>) -> ApiResult<Option<&'a str>> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        Some(v) if v.chars().count() > 200 || v.chars().any(char::is_control) => Err(
            ApiError::invalid(format!("{name} must be at most 200 characters")),
        ),
        other => Ok(other),
    }
}

/// The ledger of one environment, newest first, optionally filtered: the
/// spending log (C4) is the `usage` entries, each referencing its call.
#[utoipa::path(
    tag = "credits",
    security(("bearer" = [])),
    params(("namespace_id" = String, Path), LedgerQuery),
    responses(
        (status = 401, body = ErrorBody),(status = 200, body = LedgerPage), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody))
)]
#[get("/namespaces/{namespace_id}/credits/ledger")]
pub async fn ledger(
    state: web::Data<AppState>,
    member: CurrentMember,
    query: web::Query<LedgerQuery>,
) -> ApiResult<web::Json<LedgerPage>> {
    member.require(Permission::Read)?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::invalid("limit must be 1 to 200"));
    }
    let env = query.environment.unwrap_or_default();
    let filter = LedgerFilter {
        before: query.before,
        kind: text_param("kind", query.kind.as_deref())?,
        actor: text_param("actor", query.actor.as_deref())?,
        reference: text_param("reference", query.reference.as_deref())?,
        from: time_param("from", query.from.as_deref())?,
        to: time_param("to", query.to.as_deref())?,
    };
    let mut conn = state.store.conn().await?;
    let rows =
        tally_store::ledger::list(&mut conn, member.namespace_id(), env, filter, limit + 1).await?;
    let more = rows.len() as i64 > limit;
    let items: Vec<LedgerEntry> = rows
        .into_iter()
        .take(limit as usize)
        .map(to_entry)
        .collect();
    let next_before = if more {
        items.last().map(|e| e.id)
    } else {
        None
    };
    Ok(web::Json(LedgerPage { items, next_before }))
}

/// Free test credits, once per cooldown (`gateway.faucet_cooldown_secs`).
#[utoipa::path(
    tag = "credits",
    security(("bearer" = [])),
    params(("namespace_id" = String, Path)),
    responses(
        (status = 401, body = ErrorBody),
        (status = 200, body = FaucetResult),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 429, description = "Used too recently; see Retry-After", body = ErrorBody),
    )
)]
#[post("/namespaces/{namespace_id}/credits/faucet")]
pub async fn faucet(state: web::Data<AppState>, member: CurrentMember) -> ApiResult<HttpResponse> {
    if !(crate::auth::extract::allows(member.role(), Permission::Develop)
        || crate::auth::extract::allows(member.role(), Permission::Billing))
    {
        return Err(ApiError::forbidden(format!(
            "the {} role may not use the faucet",
            member.role()
        )));
    }
    let ns = member.namespace_id();
    let cfg = &state.settings.gateway;
    let cooldown_ms = cfg.faucet_cooldown_secs.max(0) * 1000;
    let given = credits::credit(
        &state.store,
        &state.accounts,
        Credit {
            namespace_id: ns.to_owned(),
            environment: Environment::Test,
            kind: "faucet",
            amount_micros: cfg.faucet_amount_micros,
            actor: "faucet".into(),
            reference: None,
            memo: Some(format!("requested by {}", member.email)),
            event: "Test credits from the faucet".into(),
            cooldown_ms: Some(cooldown_ms),
            bonus: None,
        },
    )
    .await?;
    let now = tally_store::now_ms();
    if let Err(last) = given {
        let wait_secs = (last + cooldown_ms - now + 999) / 1000;
        let err = ApiError::new(
            ErrorCode::RateLimited,
            format!(
                "the faucet gives test credits once every {}; try again after {}",
                human(cfg.faucet_cooldown_secs),
                rfc3339(last + cooldown_ms)
            ),
        );
        return Ok(HttpResponse::TooManyRequests()
            .insert_header(("Retry-After", wait_secs.max(1).to_string()))
            .json(err.body()));
    }
    Ok(HttpResponse::Ok().json(FaucetResult {
        amount_micros: cfg.faucet_amount_micros,
        balance: balance(&state, ns, Environment::Test).await?,
        next_available_at: rfc3339(now + cooldown_ms),
    }))
}

fn human(secs: i64) -> String {
    match secs {
        s if s % 3600 == 0 && s >= 3600 => format!("{} h", s / 3600),
        s if s % 60 == 0 && s >= 60 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

/// Grants credits to any namespace (operators only).
#[utoipa::path(
    operation_id = "grant_credits",
    tag = "credits",
    security(("bearer" = [])),
    params(("namespace_id" = String, Path)),
    request_body = GrantRequest,
    responses(
        (status = 401, body = ErrorBody),
        (status = 201, body = LedgerEntry),
        (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
#[post("/admin/namespaces/{namespace_id}/grants")]
pub async fn grant(
    state: web::Data<AppState>,
    operator: CurrentOperator,
    path: web::Path<String>,
    body: web::Json<GrantRequest>,
) -> ApiResult<HttpResponse> {
    let ns = path.into_inner();
    let memo =
        credits::check_grant(&state.store, &ns, body.amount_micros, body.memo.as_deref()).await?;
    let row = credits::credit(
        &state.store,
        &state.accounts,
        Credit {
            namespace_id: ns,
            environment: body.environment,
            kind: "grant",
            amount_micros: body.amount_micros,
            actor: operator.email.clone(),
            reference: None,
            memo,
            event: "Credits granted by an operator".into(),
            cooldown_ms: None,
            bonus: None,
        },
    )
    .await?
    .map_err(|_| ApiError::internal(anyhow::anyhow!("a grant has no cooldown")))?;
    Ok(HttpResponse::Created().json(to_entry(row)))
}
