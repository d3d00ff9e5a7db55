//! Monthly statements and the invoice history (C4), as JSON or CSV.
//!
//! Policy: statements are computed from the append-only ledger by UTC month,
//! so a closed month never changes and `opening + movements = closing` holds
//! by construction; usage by API and by key add up to the month's usage.
//! Owners, admins and billing members read them. CSV text fields that a
//! spreadsheet would run as a formula are prefixed with `'`.

use actix_web::http::header::{ContentDisposition, DispositionParam, DispositionType};
use actix_web::{get, web, HttpResponse};
use chrono::{DateTime, Datelike, TimeZone, Utc};
use serde::Deserialize;
use tally_common::{
    ApiUsageLine, Environment, ErrorBody, KeyUsageLine, Statement, StatementList, StatementSummary,
};
use tally_store::AnyConnection;
use utoipa::{IntoParams, ToSchema};

use crate::auth::{CurrentMember, Permission};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::views::csv_text;
use crate::views::rfc3339;

/// Months in the invoice history at most (ten years).
const MAX_MONTHS: usize = 120;

/// The format of a statement or of the invoice history.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[schema(as = StatementFormat)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    #[default]
    Json,
    Csv,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatementQuery {
    /// Default `test`.
    pub environment: Option<Environment>,
    /// `json` (default) or `csv` (a download).
    pub format: Option<Format>,
}

/// A UTC month as (year, month).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Month(i32, u32);

impl Month {
    fn of(t: DateTime<Utc>) -> Month {
        Month(t.year(), t.month())
    }

    fn parse(s: &str) -> Option<Month> {
        let (y, m) = s.split_once('-')?;
        if y.len() != 4 || m.len() != 2 || !(y.bytes().chain(m.bytes())).all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let (y, m): (i32, u32) = (y.parse().ok()?, m.parse().ok()?);
        ((1970..=9998).contains(&y) && (1..=12).contains(&m)).then_some(Month(y, m))
    }

    fn next(self) -> Month {
        if self.1 == 12 {
            Month(self.0 + 1, 1)
        } else {
            Month(self.0, self.1 + 1)
        }
    }

    fn prev(self) -> Month {
        if self.1 == 1 {
            Month(self.0 - 1, 12)
        } else {
            Month(self.0, self.1 - 1)
        }
    }

    fn start_ms(self) -> i64 {
        Utc.with_ymd_and_hms(self.0, self.1, 1, 0, 0, 0)
            .single()
            .map(|t| t.timestamp_millis())
            .unwrap_or_default()
    }

    fn label(self) -> String {
        format!("{:04}-{:02}", self.0, self.1)
    }
}

/// The months a namespace has statements for: its creation month to now.
fn months_of(member: &CurrentMember) -> (Month, Month) {
    let now = tally_store::clock::now();
    let created = DateTime::parse_from_rfc3339(&member.namespace.namespace.created_at)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(now);
    (Month::of(created), Month::of(now))
}

async fn summary(
    conn: &mut AnyConnection,
    ns: &str,
    env: Environment,
    month: Month,
    opening: i64,
) -> ApiResult<StatementSummary> {
    let (start, end) = (month.start_ms(), month.next().start_ms());
    let mut s = StatementSummary {
        month: month.label(),
        environment: env,
        period_start: rfc3339(start),
        period_end: rfc3339(end),
        closed: end <= tally_store::now_ms(),
        opening_balance_micros: opening,
        topups_micros: 0,
        grants_micros: 0,
        usage_micros: 0,
        subscriptions_micros: 0,
        bonuses_micros: 0,
        revenue_micros: 0,
        platform_fees_micros: 0,
        other_micros: 0,
        closing_balance_micros: opening,
    };
    for (kind, amount) in tally_store::statements::totals_by_kind(conn, ns, env, start, end).await?
    {
        match kind.as_str() {
            "topup" => s.topups_micros += amount,
            "grant" | "faucet" => s.grants_micros += amount,
            "usage" => s.usage_micros -= amount,
            "subscription" => s.subscriptions_micros += amount,
            "bonus" | "bonus_expired" => s.bonuses_micros += amount,
            "revenue" => s.revenue_micros += amount,
            "platform_fee" => s.platform_fees_micros -= amount,
            _ => s.other_micros += amount,
        }
        s.closing_balance_micros += amount;
    }
    Ok(s)
}

fn download(body: String, filename: String) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/csv; charset=utf-8")
        .insert_header(ContentDisposition {
            disposition: DispositionType::Attachment,
            parameters: vec![DispositionParam::Filename(filename)],
        })
        .body(body)
}

const SUMMARY_HEADER: &str = "month,environment,period_start,period_end,closed,\
opening_balance_micros,topups_micros,grants_micros,usage_micros,subscriptions_micros,\
bonuses_micros,revenue_micros,platform_fees_micros,other_micros,closing_balance_micros\n";

fn summary_csv_row(s: &StatementSummary) -> String {
    format!(
        "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
        s.month,
        s.environment,
        s.period_start,
        s.period_end,
        s.closed,
        s.opening_balance_micros,
        s.topups_micros,
        s.grants_micros,
        s.usage_micros,
        s.subscriptions_micros,
        s.bonuses_micros,
        s.revenue_micros,
        s.platform_fees_micros,
        s.other_micros,
        s.closing_balance_micros
    )
}

/// The invoice history: one summary per month, newest first, from the month
/// the namespace was created to the running month (at most 120).
#[utoipa::path(
    operation_id = "list_statements",
    tag = "credits",
    security(("bearer" = [])),
    params(("namespace_id" = String, Path), StatementQuery),
    responses(
        (status = 200, content((StatementList = "application/json"), (String = "text/csv"))),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
#[get("/namespaces/{namespace_id}/credits/statements")]
pub async fn list(
    state: web::Data<AppState>,
    member: CurrentMember,
    query: web::Query<StatementQuery>,
) -> ApiResult<HttpResponse> {
    member.require(Permission::Billing)?;
    let env = query.environment.unwrap_or_default();
    let ns = member.namespace_id();
    let (first, current) = months_of(&member);
    let mut months = vec![current];
    while months.len() < MAX_MONTHS {
        let prev = months[months.len() - 1].prev();
        if prev < first {
            break;
        }
        months.push(prev);
    }
    months.reverse();
    let mut conn = state.store.conn().await?;
    let mut opening =
        tally_store::statements::balance_before(&mut conn, ns, env, months[0].start_ms()).await?;
    let mut items = Vec::with_capacity(months.len());
    for month in months {
        let s = summary(&mut conn, ns, env, month, opening).await?;
        opening = s.closing_balance_micros;
        items.push(s);
    }
    items.reverse();
    if query.format.unwrap_or_default() == Format::Csv {
        let mut out = String::from(SUMMARY_HEADER);
        for s in &items {
            out.push_str(&summary_csv_row(s));
        }
        return Ok(download(out, format!("statements-{ns}-{env}.csv")));
    }
    Ok(HttpResponse::Ok().json(StatementList { items }))
}

/// The statement of one month (`YYYY-MM`, UTC): opening balance, top-ups,
/// grants, usage by API and by key, closing balance. The running month's
/// figures are up to the moment of the request.
#[utoipa::path(
    operation_id = "get_statement",
    tag = "credits",
    security(("bearer" = [])),
    params(
        ("namespace_id" = String, Path),
        ("month" = String, Path, description = "`YYYY-MM`, UTC"),
        StatementQuery
    ),
    responses(
        (status = 200, content((Statement = "application/json"), (String = "text/csv"))),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, description = "No such namespace, or a month before it existed or still to come", body = ErrorBody),
    )
)]
#[get("/namespaces/{namespace_id}/credits/statements/{month}")]
pub async fn get(
    state: web::Data<AppState>,
    member: CurrentMember,
    path: web::Path<(String, String)>,
    query: web::Query<StatementQuery>,
) -> ApiResult<HttpResponse> {
    member.require(Permission::Billing)?;
    let (_, month) = path.into_inner();
    let month = Month::parse(&month)
        .ok_or_else(|| ApiError::invalid("month must be YYYY-MM, e.g. 2026-11"))?;
    let (first, current) = months_of(&member);
    if month < first || month > current {
        return Err(ApiError::not_found("statement"));
    }
    let env = query.environment.unwrap_or_default();
    let ns = member.namespace_id();
    let (start, end) = (month.start_ms(), month.next().start_ms());
    let mut conn = state.store.conn().await?;
    let opening = tally_store::statements::balance_before(&mut conn, ns, env, start).await?;
    let summary = summary(&mut conn, ns, env, month, opening).await?;
    let usage_by_api = tally_store::statements::usage_by_api(&mut conn, ns, env, start, end)
        .await?
        .into_iter()
        .map(|l| ApiUsageLine {
            api: l.id,
            calls: l.calls,
            cost_micros: l.cost_micros,
        })
        .collect::<Vec<_>>();
    let usage_by_key = tally_store::statements::usage_by_key(&mut conn, ns, env, start, end)
        .await?
        .into_iter()
        .map(|l| KeyUsageLine {
            key_id: l.id,
            key_name: l.name,
            calls: l.calls,
            cost_micros: l.cost_micros,
        })
        .collect::<Vec<_>>();
    let statement = Statement {
        summary,
        usage_by_api,
        usage_by_key,
    };
    if query.format.unwrap_or_default() == Format::Csv {
        let s = &statement.summary;
        let mut out = String::from("section,item,name,calls,amount_micros\n");
        for (item, amount) in [
            ("opening_balance", s.opening_balance_micros),
            ("topups", s.topups_micros),
            ("grants", s.grants_micros),
            ("usage", s.usage_micros),
            ("subscriptions", s.subscriptions_micros),
            ("bonuses", s.bonuses_micros),
            ("revenue", s.revenue_micros),
            ("platform_fees", s.platform_fees_micros),
            ("other", s.other_micros),
            ("closing_balance", s.closing_balance_micros),
        ] {
            out.push_str(&format!("summary,{item},,,{amount}\n"));
        }
        for l in &statement.usage_by_api {
            out.push_str(&format!(
                "usage_by_api,{},,{},{}\n",
                csv_text(&l.api),
                l.calls,
                l.cost_micros
            ));
        }
        for l in &statement.usage_by_key {
            out.push_str(&format!(
                "usage_by_key,{},{},{},{}\n",
                csv_text(&l.key_id),
                csv_text(l.key_name.as_deref().unwrap_or("")),
                l.calls,
                l.cost_micros
            ));
        }
        return Ok(download(
            out,
            format!("statement-{ns}-{env}-{}.csv", s.month),
        ));
    }
    Ok(HttpResponse::Ok().json(statement))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn months_parse_strictly_and_step_across_years() {
        assert_eq!(Month::parse("2026-11"), Some(Month(2026, 11)));
        for bad in [
            "2026-13", "2026-00", "2026-1", "26-11", "2026/11", "", "2026-1a",
        ] {
            assert_eq!(Month::parse(bad), None, "{bad:?}");
        }
        assert_eq!(Month(2026, 12).next(), Month(2027, 1));
        assert_eq!(Month(2027, 1).prev(), Month(2026, 12));
        assert_eq!(Month(2026, 11).start_ms(), 1_793_491_200_000);
    }

    #[test]
    fn csv_text_quotes_and_defuses_formulas() {
        assert_eq!(csv_text("plain"), "plain");
        assert_eq!(csv_text("a,b"), "\"a,b\"");
        assert_eq!(csv_text("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_text("=SUM(A1)"), "'=SUM(A1)");
    }
}
