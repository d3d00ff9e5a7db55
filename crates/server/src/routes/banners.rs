//! The dashboard's banners (D5): what needs the namespace's attention now.
//!
//! Policy: computed on every read from the live state, never stored, so a
//! banner goes away as soon as its cause does: serving paused (the namespace
//! sells an API and its live balance is below the critical level, C8), low
//! balance (below the namespace's alert threshold, C5), backup overdue (for
//! owners and admins: no successful backup for `backup.overdue_days`, or
//! none at all on a server in use that long, O1).

use actix_web::{get, web};
use serde::Deserialize;
use tally_common::{Banner, BannerList, Environment, ErrorBody, Role, Severity};
use utoipa::IntoParams;

use crate::auth::{CurrentMember, Permission};
use crate::error::ApiResult;
use crate::services::billing::credits;
use crate::state::AppState;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BannerQuery {
    /// The environment the dashboard shows (default `test`); a paused seller's
    /// banner shows in both.
    pub environment: Option<Environment>,
}

/// The banners to show above the dashboard, most urgent first.
#[utoipa::path(
    operation_id = "list_banners",
    tag = "credits",
    security(("bearer" = [])),
    params(("namespace_id" = String, Path), BannerQuery),
    responses(
        (status = 200, body = BannerList),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
#[get("/namespaces/{namespace_id}/banners")]
pub async fn list(
    state: web::Data<AppState>,
    member: CurrentMember,
    query: web::Query<BannerQuery>,
) -> ApiResult<web::Json<BannerList>> {
    member.require(Permission::Read)?;
    let ns = member.namespace_id();
    let env = query.environment.unwrap_or(Environment::Test);
    let mut items = Vec::new();
    let gateway = &state.gateway;
    if gateway.is_seller(ns) && gateway.seller_paused(ns).await? {
        items.push(Banner {
            kind: "serving_paused".into(),
            severity: Severity::Error,
            message: format!(
                "API serving paused — low balance. Live calls to your APIs get 503 until the live balance is back at {} credits; test mode keeps working.",
                credits(gateway.settings().seller_critical_balance_micros)
            ),
            link: "/finance".into(),
        });
    }
    let mut conn = state.store.conn().await?;
    if matches!(member.role(), Role::Owner | Role::Admin) {
        if let Some(banner) = backup_overdue(&state, &mut conn).await? {
            items.push(banner);
        }
    }
    let alerts = tally_store::alerts::list(&mut conn, ns).await?;
    drop(conn);
    if let Some(a) = alerts.iter().find(|a| a.environment == env) {
        let (balance, _) = state.accounts.snapshot(ns, env).await?;
        if balance < a.threshold_micros {
            items.push(Banner {
                kind: "low_balance".into(),
                severity: Severity::Warning,
                message: format!(
                    "Low balance: the {env} balance is {} credits, below the alert threshold of {} credits.",
                    credits(balance),
                    credits(a.threshold_micros)
                ),
                link: "/finance".into(),
            });
        }
    }
    Ok(web::Json(BannerList { items }))
}

/// The backup-overdue banner, when the last successful backup (or, with
/// none, the first account) is older than `backup.overdue_days`.
async fn backup_overdue(
    state: &AppState,
    conn: &mut tally_store::sqlx::AnyConnection,
) -> ApiResult<Option<Banner>> {
    let days = state.settings.backup.overdue_days;
    if days == 0 {
        return Ok(None);
    }
    let limit = i64::from(days) * 86_400_000;
    let now = tally_store::now_ms();
    let message = match tally_store::backup::last_success(conn).await? {
        Some(last) if now - last <= limit => return Ok(None),
        Some(last) => format!(
            "Backup overdue: the last backup is {} days old. Take one under Settings › Backup.",
            (now - last) / 86_400_000
        ),
        None => match tally_store::accounts::first_created_at(conn).await? {
            Some(first) if now - first > limit => format!(
                "Backup overdue: this server has been in use for {} days without a backup. Take one under Settings › Backup.",
                (now - first) / 86_400_000
            ),
            _ => return Ok(None),
        },
    };
    Ok(Some(Banner {
        kind: "backup_overdue".into(),
        severity: Severity::Warning,
        message,
        link: "/settings/backup".into(),
    }))
}
