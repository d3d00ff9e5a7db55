//! The dashboard's first screen (D1–D3, D7) in one answer.
//!
//! Policy: everything here comes from the per-API rollups (a namespace's
//! calls by API and status class; for a seller, the calls made to its APIs),
//! never from raw events, so a refresh reads a few hundred rows at any volume
//! (M6). "24h" and "48h" are the last 24 and 48 hour buckets, the running
//! hour included; "all time" is what the day rollups keep
//! (`monitoring.day_retention_days`, forever by default). A seller's revenue
//! is what callers paid for calls to its APIs, which is what its `revenue`
//! ledger entries credit (the platform fee is its own entry).

use std::collections::BTreeMap;

use actix_web::{get, web};
use serde::Deserialize;
use tally_common::{
    ApiUsageRow, ConsumerKpis, DashboardRole, DashboardSummary, Environment, ErrorBody, HourlyBar,
    SellerKpis,
};
use tally_store::monitoring::{self as mon, Agg, Filter, Group, Grouped, Scope};
use tally_store::rollups::Grain;
use utoipa::IntoParams;

use crate::auth::{CurrentMember, Permission};
use crate::error::ApiResult;
use crate::state::AppState;
use crate::views::rfc3339;

const HOUR_MS: i64 = 3_600_000;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DashboardQuery {
    /// Default `test`.
    pub environment: Option<Environment>,
}

fn rate(calls: i64, errors: i64) -> f64 {
    if calls == 0 {
        1.0
    } else {
        (calls - errors) as f64 / calls as f64
    }
}

/// 48 bars ending with the running hour, zero-filled (rows of other hours
/// are left out).
fn bars(rows: &[Grouped], first: i64) -> Vec<HourlyBar> {
    let by_time: BTreeMap<i64, &Agg> = rows.iter().map(|g| (g.time, &g.agg)).collect();
    (0..48)
        .map(|i| {
            let t = first + i * HOUR_MS;
            let a = by_time.get(&t);
            HourlyBar {
                start: rfc3339(t),
                successes: a.map_or(0, |a| a.calls - a.errors),
                errors: a.map_or(0, |a| a.errors),
            }
        })
        .collect()
}

/// The sum of the rows from `since` on.
fn sum_since(rows: &[Grouped], since: i64) -> Agg {
    let mut a = Agg::default();
    for g in rows.iter().filter(|g| g.time >= since) {
        a.merge(&g.agg);
    }
    a
}

/// A scope's hourly sums from `since` to `to`, and its all-time sums by API.
async fn hours_and_apis(
    conn: &mut tally_store::AnyConnection,
    scope: &Scope<'_>,
    env: Environment,
    since: i64,
    to: i64,
) -> tally_store::Result<(Vec<Grouped>, Vec<Grouped>)> {
    let all = Filter::default();
    let hourly = mon::aggregate(
        conn,
        Grain::Hour,
        scope,
        env,
        Some(since),
        Some(to),
        &all,
        Group::Time(HOUR_MS),
    )
    .await?;
    let by_api = mon::aggregate(
        conn,
        Grain::Day,
        scope,
        env,
        None,
        None,
        &all,
        Group::Column("api"),
    )
    .await?;
    Ok((hourly, by_api))
}

/// The API table; `seller` rows count what callers paid as revenue.
fn api_rows(groups: Vec<Grouped>, seller: bool) -> Vec<ApiUsageRow> {
    let mut rows: Vec<ApiUsageRow> = groups
        .into_iter()
        .map(|g| ApiUsageRow {
            success_rate: rate(g.agg.calls, g.agg.errors),
            avg_latency_us: g.agg.avg_latency_us(),
            api: g.key,
            calls: g.agg.calls,
            successes: g.agg.calls - g.agg.errors,
            errors: g.agg.errors,
            cost_micros: g.agg.cost_micros,
            revenue_micros: if seller { g.agg.cost_micros } else { 0 },
        })
        .collect();
    rows.sort_by(|a, b| b.calls.cmp(&a.calls).then(a.api.cmp(&b.api)));
    rows
}

/// KPI cards by role, the 48-hour call-rate bars and the all-time API table
/// (the namespace's own calls, and for a namespace that owns catalog APIs the
/// calls they served), with the server's uptime.
#[utoipa::path(
    tag = "monitoring",
    security(("bearer" = [])),
    params(("namespace_id" = String, Path), DashboardQuery),
    responses(
        (status = 401, body = ErrorBody),
        (status = 200, body = DashboardSummary),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
#[get("/namespaces/{namespace_id}/dashboard")]
pub async fn summary(
    state: web::Data<AppState>,
    member: CurrentMember,
    query: web::Query<DashboardQuery>,
) -> ApiResult<web::Json<DashboardSummary>> {
    member.require(Permission::Read)?;
    let env = query.environment.unwrap_or_default();
    let now = tally_store::now_ms();
    let hour = Grain::Hour.floor(now);
    let first = hour - 47 * HOUR_MS;
    let day_ago = hour - 23 * HOUR_MS;
    let to = hour + HOUR_MS;
    let ns = [member.namespace_id().to_owned()];
    let mut conn = state.store.conn().await?;

    let (hourly, by_api) =
        hours_and_apis(&mut conn, &Scope::Namespaces(&ns), env, first, to).await?;
    let balance = tally_store::ledger::balance(&mut conn, member.namespace_id(), env).await?;
    let day = sum_since(&hourly, day_ago);
    let total = sum_since(&by_api, i64::MIN);
    let consumer = ConsumerKpis {
        balance_micros: balance,
        calls_24h: day.calls,
        errors_24h: day.errors,
        success_rate_24h: rate(day.calls, day.errors),
        avg_latency_us_24h: day.avg_latency_us(),
        spent_24h_micros: day.cost_micros,
        calls_total: total.calls,
        spent_total_micros: total.cost_micros,
    };

    let (seller, served_hourly, served_apis) = if state.gateway.is_seller(member.namespace_id()) {
        let served = Scope::Served(member.namespace_id());
        let (week, served_by_api) =
            hours_and_apis(&mut conn, &served, env, hour - 167 * HOUR_MS, to).await?;
        let sday = sum_since(&week, day_ago);
        let sweek = sum_since(&week, i64::MIN);
        let kpis = SellerKpis {
            calls_served_24h: sday.calls,
            errors_24h: sday.errors,
            success_rate_24h: rate(sday.calls, sday.errors),
            revenue_24h_micros: sday.cost_micros,
            calls_served_7d: sweek.calls,
            revenue_7d_micros: sweek.cost_micros,
        };
        (
            Some(kpis),
            bars(&week, first),
            api_rows(served_by_api, true),
        )
    } else {
        (None, Vec::new(), Vec::new())
    };
    drop(conn);

    Ok(web::Json(DashboardSummary {
        environment: env,
        role: if seller.is_some() {
            DashboardRole::Seller
        } else {
            DashboardRole::Consumer
        },
        consumer,
        seller,
        hourly: bars(&hourly, first),
        apis: api_rows(by_api, false),
        served_hourly,
        served_apis,
        uptime_secs: state.uptime_seconds(),
        started_at: state
            .started_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        generated_at: rfc3339(now),
    }))
}
