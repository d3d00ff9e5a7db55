//! Monitoring (M1–M5): series, breakdowns, the request log and the export.
//!
//! Policy: series and breakdowns read only the rollups (minute rows when the
//! series is per minute or the window is at most six hours, hour rows
//! otherwise); the request log and the export read raw events a keyset page at
//! a time. Every filter is validated here and a bad one is a 400
//! `invalid_request`, never a 500. A window is at most [`MAX_WINDOW_DAYS`]
//! days and a series at most [`MAX_POINTS`] points.

use actix_web::http::header::{ContentDisposition, DispositionParam, DispositionType};
use actix_web::{get, web, HttpResponse};
use bytes::Bytes;
use chrono::DateTime;
use serde::Deserialize;
use tally_common::{
    Breakdown, BreakdownBy, BreakdownRow, Bucket, Environment, ErrorBody, ExportFormat,
    MonitoringQuery, RequestPage, Series, SeriesPoint, Summary, UsageEvent,
};
use tally_store::monitoring::{self as mon, Agg, Cursor, EventFilter, Filter, Group, Order, Scope};
use tally_store::rollups::Grain;
use tally_store::Store;
use utoipa::IntoParams;

use crate::auth::{CurrentMember, Permission};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::views::csv_text;
use crate::views::rfc3339;
use crate::views::to_event;

pub const MAX_WINDOW_DAYS: i64 = 400;
pub const MAX_POINTS: i64 = 1_500;
const SIX_HOURS_MS: i64 = 6 * 3_600_000;
/// Rows per page of the export: each page is one query and one chunk.
pub const EXPORT_PAGE: i64 = 1_000;

fn parse_time(field: &str, s: &str) -> ApiResult<i64> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|_| ApiError::invalid(format!("{field} must be an RFC 3339 time")))
}

/// The window a query names: `from`/`to`, else `range` ending now, else
/// `default_ms` ending now (`None`: unbounded).
pub fn window(
    q: &MonitoringQuery,
    now: i64,
    default_ms: Option<i64>,
) -> ApiResult<(Option<i64>, Option<i64>)> {
    let to = q.to.as_deref().map(|t| parse_time("to", t)).transpose()?;
    let from = q
        .from
        .as_deref()
        .map(|t| parse_time("from", t))
        .transpose()?;
    let (from, to) = match (from, q.range) {
        (Some(f), _) => (Some(f), to.or(Some(now))),
        (None, Some(r)) => {
            let to = to.unwrap_or(now);
            (Some(to - r.seconds() * 1000), Some(to))
        }
        (None, None) => match default_ms {
            Some(d) => {
                let to = to.unwrap_or(now);
                (Some(to - d), Some(to))
            }
            None => (None, to),
        },
    };
    if let (Some(f), Some(t)) = (from, to) {
        if f >= t {
            return Err(ApiError::invalid("from must be before to"));
        }
        if t - f > MAX_WINDOW_DAYS * 86_400_000 {
            return Err(ApiError::invalid(format!(
                "the window may be at most {MAX_WINDOW_DAYS} days"
            )));
        }
    }
    Ok((from, to))
}

/// A text filter: 1 to 512 bytes without control characters (the gateway
/// records none, and PostgreSQL text cannot hold NUL).
fn check_text(field: &str, v: &Option<String>) -> ApiResult<()> {
    if let Some(v) = v {
        if v.is_empty() || v.len() > 512 || v.chars().any(char::is_control) {
            return Err(ApiError::invalid(format!(
                "{field} must be 1 to 512 bytes without control characters"
            )));
        }
    }
    Ok(())
}

/// The dimension filters of a query, checked.
pub fn filter(q: &MonitoringQuery) -> ApiResult<Filter<'_>> {
    for (name, v) in [
        ("endpoint", &q.endpoint),
        ("api", &q.api),
        ("model", &q.model),
        ("key_id", &q.key_id),
        ("client_id", &q.client_id),
    ] {
        check_text(name, v)?;
    }
    if let Some(rt) = q.request_type.as_deref() {
        if rt != "sync" && rt != "stream" {
            return Err(ApiError::invalid("request_type must be sync or stream"));
        }
    }
    Ok(Filter {
        api: q.api.as_deref(),
        model: q.model.as_deref(),
        endpoint: q.endpoint.as_deref(),
        request_type: q.request_type.as_deref(),
        key_id: q.key_id.as_deref(),
        status_class: q.status_class,
        client_id: q.client_id.as_deref(),
    })
}

fn floor(t: i64, step: i64) -> i64 {
    t.div_euclid(step) * step
}

fn ceil(t: i64, step: i64) -> i64 {
    floor(t - 1, step) + step
}

pub fn summary(a: &Agg) -> Summary {
    Summary {
        calls: a.calls,
        errors: a.errors,
        cost_micros: a.cost_micros,
        tokens_in: a.tokens_in,
        tokens_out: a.tokens_out,
        avg_latency_us: a.avg_latency_us(),
        p50_us: a.quantile(0.50),
        p95_us: a.quantile(0.95),
        p99_us: a.quantile(0.99),
    }
}

fn point(start: i64, a: &Agg) -> SeriesPoint {
    let s = summary(a);
    SeriesPoint {
        start: rfc3339(start),
        calls: s.calls,
        errors: s.errors,
        cost_micros: s.cost_micros,
        tokens_in: s.tokens_in,
        tokens_out: s.tokens_out,
        avg_latency_us: s.avg_latency_us,
        p50_us: s.p50_us,
        p95_us: s.p95_us,
        p99_us: s.p99_us,
    }
}

/// Request volume, errors, cost and latency percentiles over a window, one
/// point per bucket (zero-filled), with the window's totals (M1, M2).
#[utoipa::path(
    tag = "monitoring",
    security(("bearer" = [])),
    params(("namespace_id" = String, Path), MonitoringQuery),
    responses(
        (status = 401, body = ErrorBody),
        (status = 200, body = Series),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
#[get("/namespaces/{namespace_id}/monitoring/series")]
pub async fn series(
    state: web::Data<AppState>,
    member: CurrentMember,
    query: web::Query<MonitoringQuery>,
) -> ApiResult<web::Json<Series>> {
    member.require(Permission::Read)?;
    let q = query.into_inner();
    let now = tally_store::now_ms();
    let (from, to) = window(&q, now, Some(86_400_000))?;
    let (from, to) = (from.unwrap_or(now), to.unwrap_or(now));
    let span = to - from;
    let bucket = q.bucket.unwrap_or(if span <= SIX_HOURS_MS {
        Bucket::Minute
    } else if span <= 7 * 86_400_000 {
        Bucket::Hour
    } else {
        Bucket::Day
    });
    let step = bucket.seconds() * 1000;
    let to_a = ceil(to, step);
    let from_a = match (q.from.is_none(), q.range) {
        // A preset range ending now: exactly range / bucket points, the last
        // one the running bucket.
        (true, Some(r)) if q.to.is_none() => floor(to_a - r.seconds() * 1000, step),
        _ => floor(from, step),
    };
    let points_n = (to_a - from_a) / step;
    if points_n > MAX_POINTS {
        return Err(ApiError::invalid(format!(
            "{points_n} points of a {} are more than {MAX_POINTS}; choose a wider bucket",
            bucket.as_str()
        )));
    }
    let f = filter(&q)?;
    let grain = match bucket {
        Bucket::Minute => Grain::Minute,
        Bucket::Hour => Grain::Hour,
        Bucket::Day => Grain::Day,
    };
    let environment = q.environment.unwrap_or_default();
    let ns = [member.namespace_id().to_owned()];
    let rows = {
        let mut conn = state.store.conn().await?;
        mon::aggregate(
            &mut conn,
            grain,
            &Scope::Namespaces(&ns),
            environment,
            Some(from_a),
            Some(to_a),
            &f,
            Group::Time(step),
        )
        .await?
    };
    let mut totals = Agg::default();
    let mut rows = rows.into_iter().peekable();
    let mut points = Vec::with_capacity(points_n as usize);
    let mut t = from_a;
    while t < to_a {
        let mut a = Agg::default();
        while let Some(r) = rows.next_if(|r| r.time <= t) {
            if r.time == t {
                a.merge(&r.agg);
            }
        }
        totals.merge(&a);
        points.push(point(t, &a));
        t += step;
    }
    Ok(web::Json(Series {
        environment,
        bucket,
        from: rfc3339(from_a),
        to: rfc3339(to_a),
        points,
        totals: summary(&totals),
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BreakdownParams {
    /// `api`, `key`, `client_id`, `endpoint`, `namespace` (every namespace of
    /// the caller's account), `subcloud`, `model`, `request_type` or `status_class`.
    pub by: BreakdownBy,
    /// Most rows returned (by calls), 1 to 1000 (default 100).
    pub limit: Option<i64>,
}

/// Calls, errors, cost and latency over a window, grouped by one dimension (M3).
#[utoipa::path(
    tag = "monitoring",
    security(("bearer" = [])),
    params(("namespace_id" = String, Path), BreakdownParams, MonitoringQuery),
    responses(
        (status = 401, body = ErrorBody),
        (status = 200, body = Breakdown),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
#[get("/namespaces/{namespace_id}/monitoring/breakdown")]
pub async fn breakdown(
    state: web::Data<AppState>,
    member: CurrentMember,
    params: web::Query<BreakdownParams>,
    query: web::Query<MonitoringQuery>,
) -> ApiResult<web::Json<Breakdown>> {
    member.require(Permission::Read)?;
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit must be 1 to 1000"));
    }
    let q = query.into_inner();
    let now = tally_store::now_ms();
    let (from, to) = window(&q, now, Some(86_400_000))?;
    let (from, to) = (from.unwrap_or(now), to.unwrap_or(now));
    let grain = if to - from <= SIX_HOURS_MS {
        Grain::Minute
    } else if to - from <= 7 * 86_400_000 {
        Grain::Hour
    } else {
        Grain::Day
    };
    let (from_a, to_a) = (floor(from, grain.millis()), ceil(to, grain.millis()));
    let f = filter(&q)?;
    let environment = q.environment.unwrap_or_default();
    let (column, label_table) = match params.by {
        BreakdownBy::Api => ("api", None),
        BreakdownBy::Key => ("key_id", Some("api_keys")),
        BreakdownBy::ClientId => ("client_id", None),
        BreakdownBy::Endpoint => ("endpoint", None),
        BreakdownBy::Namespace => ("namespace_id", Some("namespaces")),
        BreakdownBy::Subcloud => ("subcloud", None),
        BreakdownBy::Model => ("model", None),
        BreakdownBy::RequestType => ("request_type", None),
        BreakdownBy::StatusClass => ("status_class", None),
    };
    let mut conn = state.store.conn().await?;
    let namespaces: Vec<String> = if params.by == BreakdownBy::Namespace {
        tally_store::namespaces::memberships_of(&mut conn, &member.account_id)
            .await?
            .into_iter()
            .map(|m| m.namespace.id)
            .collect()
    } else {
        vec![member.namespace_id().to_owned()]
    };
    let mut groups = mon::aggregate(
        &mut conn,
        grain,
        &Scope::Namespaces(&namespaces),
        environment,
        Some(from_a),
        Some(to_a),
        &f,
        Group::Column(column),
    )
    .await?;
    groups.sort_by(|a, b| b.agg.calls.cmp(&a.agg.calls).then(a.key.cmp(&b.key)));
    groups.truncate(limit as usize);
    let labels: std::collections::HashMap<String, String> = match label_table {
        Some(t) => {
            let ids: Vec<String> = groups.iter().map(|g| g.key.clone()).collect();
            mon::names(&mut conn, t, &ids).await?.into_iter().collect()
        }
        None => Default::default(),
    };
    let rows = groups
        .into_iter()
        .map(|g| {
            let s = summary(&g.agg);
            BreakdownRow {
                label: labels.get(&g.key).cloned(),
                key: g.key,
                calls: s.calls,
                errors: s.errors,
                cost_micros: s.cost_micros,
                tokens_in: s.tokens_in,
                tokens_out: s.tokens_out,
                avg_latency_us: s.avg_latency_us,
                p50_us: s.p50_us,
                p95_us: s.p95_us,
                p99_us: s.p99_us,
            }
        })
        .collect();
    Ok(web::Json(Breakdown {
        by: params.by,
        environment,
        from: rfc3339(from_a),
        to: rfc3339(to_a),
        rows,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RequestLogParams {
    /// Search: a case-insensitive part of the endpoint, API, model, error code
    /// or client id, or a whole call id.
    pub q: Option<String>,
    /// Page size, 1 to 500 (default 50).
    pub limit: Option<i64>,
    /// The `next_before` of the previous page: older calls.
    pub before: Option<String>,
    /// The `tail_after` of an earlier answer: calls newer than it (live tail),
    /// up to `limit` of them, the oldest of those first served (the page is
    /// still newest first).
    pub after: Option<String>,
}

fn cursor(field: &str, s: &Option<String>) -> ApiResult<Option<Cursor>> {
    s.as_deref()
        .map(|s| {
            Cursor::decode(s).ok_or_else(|| ApiError::invalid(format!("{field} is not a cursor")))
        })
        .transpose()
}

fn event_filter<'a>(
    q: &'a MonitoringQuery,
    search: Option<&'a str>,
    now: i64,
) -> ApiResult<EventFilter<'a>> {
    let (from, to) = if q.from.is_some() || q.to.is_some() || q.range.is_some() {
        window(q, now, None)?
    } else {
        (None, None)
    };
    Ok(EventFilter {
        environment: Some(q.environment.unwrap_or_default()),
        from,
        to,
        dims: filter(q)?,
        search,
    })
}

/// Individual calls, newest first, filtered and searchable, paged with
/// `before` and followed live with `after` (M4). Without a time filter the
/// whole history is searched.
#[utoipa::path(
    tag = "monitoring",
    security(("bearer" = [])),
    params(("namespace_id" = String, Path), RequestLogParams, MonitoringQuery),
    responses(
        (status = 401, body = ErrorBody),
        (status = 200, body = RequestPage),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
#[get("/namespaces/{namespace_id}/monitoring/requests")]
pub async fn requests(
    state: web::Data<AppState>,
    member: CurrentMember,
    params: web::Query<RequestLogParams>,
    query: web::Query<MonitoringQuery>,
) -> ApiResult<web::Json<RequestPage>> {
    member.require(Permission::Read)?;
    let limit = params.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid("limit must be 1 to 500"));
    }
    if params.before.is_some() && params.after.is_some() {
        return Err(ApiError::invalid("give before or after, not both"));
    }
    let search = params.q.as_deref().map(str::trim).filter(|s| !s.is_empty());
    if search.is_some_and(|s| s.len() > 200 || s.chars().any(char::is_control)) {
        return Err(ApiError::invalid(
            "q must be at most 200 bytes without control characters",
        ));
    }
    let before = cursor("before", &params.before)?;
    let after = cursor("after", &params.after)?;
    let q = query.into_inner();
    let f = event_filter(&q, search, tally_store::now_ms())?;
    let mut conn = state.store.conn().await?;
    let (items, next_before) = if let Some(after) = &after {
        let mut rows = mon::events_page(
            &mut conn,
            member.namespace_id(),
            &f,
            Some(after),
            Order::OldestFirst,
            limit,
        )
        .await?;
        rows.reverse();
        (rows, None)
    } else {
        let mut rows = mon::events_page(
            &mut conn,
            member.namespace_id(),
            &f,
            before.as_ref(),
            Order::NewestFirst,
            limit + 1,
        )
        .await?;
        let more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        let next = if more {
            rows.last().map(|c| Cursor::of(c).encode())
        } else {
            None
        };
        (rows, next)
    };
    let tail_after = match (items.first(), &after, &before) {
        (Some(c), _, None) => Some(Cursor::of(c).encode()),
        (None, Some(a), _) => Some(a.encode()),
        _ => None,
    };
    Ok(web::Json(RequestPage {
        items: items.into_iter().map(to_event).collect(),
        next_before,
        tail_after,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportParams {
    /// `csv` (default) or `ndjson`.
    pub format: Option<ExportFormat>,
}

const CSV_HEADER: &str = "id,time,environment,key_id,api,model,endpoint,request_type,status,\
error,latency_us,upstream_latency_us,tokens_in,tokens_out,cost_micros,client_id\n";

fn csv_row(out: &mut String, e: &UsageEvent) {
    use std::fmt::Write;
    let t = |s: &Option<String>| s.as_deref().map(csv_text).unwrap_or_default();
    let _ = writeln!(
        out,
        "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
        csv_text(&e.id),
        e.time,
        e.environment.as_str(),
        csv_text(&e.key_id),
        csv_text(&e.api),
        t(&e.model),
        csv_text(&e.endpoint),
        csv_text(&e.request_type),
        e.status,
        t(&e.error),
        e.latency_us,
        e.upstream_latency_us,
        e.tokens_in,
        e.tokens_out,
        e.cost_micros,
        t(&e.client_id),
    );
}

struct Export {
    store: Store,
    namespace_id: String,
    query: MonitoringQuery,
    format: ExportFormat,
    cursor: Option<Cursor>,
    header_sent: bool,
    done: bool,
}

impl Export {
    /// The next chunk: one keyset page of events, encoded.
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, ApiError> {
        if self.done {
            return Ok(None);
        }
        let mut out = String::new();
        if !self.header_sent {
            self.header_sent = true;
            if self.format == ExportFormat::Csv {
                out.push_str(CSV_HEADER);
            }
        }
        let rows = {
            let f = event_filter(&self.query, None, tally_store::now_ms())?;
            let mut conn = self.store.conn().await?;
            mon::events_page(
                &mut conn,
                &self.namespace_id,
                &f,
                self.cursor.as_ref(),
                Order::OldestFirst,
                EXPORT_PAGE,
            )
            .await?
        };
        if (rows.len() as i64) < EXPORT_PAGE {
            self.done = true;
        }
        self.cursor = rows.last().map(Cursor::of);
        for c in rows {
            let e = to_event(c);
            match self.format {
                ExportFormat::Csv => csv_row(&mut out, &e),
                ExportFormat::Ndjson => {
                    out.push_str(&serde_json::to_string(&e).map_err(ApiError::internal)?);
                    out.push('\n');
                }
            }
        }
        if out.is_empty() {
            return Ok(None);
        }
        Ok(Some(Bytes::from(out)))
    }
}

/// Usage by date range and/or key as CSV or NDJSON, oldest first (M5). The
/// body is streamed: one page of [`EXPORT_PAGE`] events is read and sent at a
/// time, so memory stays constant at any size. Without `from`, `to` or
/// `range` the whole history is exported.
#[utoipa::path(
    tag = "monitoring",
    security(("bearer" = [])),
    params(("namespace_id" = String, Path), ExportParams, MonitoringQuery),
    responses(
        (status = 401, body = ErrorBody),
        (status = 200, description = "The events as CSV (`format=csv`, the default) or NDJSON (`format=ndjson`), streamed in chunks",
            content((String = "text/csv"), (String = "application/x-ndjson"))),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
#[get("/namespaces/{namespace_id}/monitoring/export")]
pub async fn export(
    state: web::Data<AppState>,
    member: CurrentMember,
    params: web::Query<ExportParams>,
    query: web::Query<MonitoringQuery>,
) -> ApiResult<HttpResponse> {
    member.require(Permission::Read)?;
    let q = query.into_inner();
    // Validate before the first byte goes out: later errors can only cut the stream.
    event_filter(&q, None, tally_store::now_ms())?;
    let format = params.format.unwrap_or_default();
    let environment: Environment = q.environment.unwrap_or_default();
    let (content_type, ext) = match format {
        ExportFormat::Csv => ("text/csv; charset=utf-8", "csv"),
        ExportFormat::Ndjson => ("application/x-ndjson", "ndjson"),
    };
    let filename = format!(
        "usage-{}-{}.{ext}",
        member.namespace_id(),
        environment.as_str()
    );
    let export = Export {
        store: state.store.clone(),
        namespace_id: member.namespace_id().to_owned(),
        query: q,
        format,
        cursor: None,
        header_sent: false,
        done: false,
    };
    let stream = futures_util::stream::unfold(export, |mut ex| async move {
        match ex.next_chunk().await {
            Ok(Some(b)) => Some((Ok::<Bytes, actix_web::Error>(b), ex)),
            Ok(None) => None,
            Err(e) => {
                tracing::error!(error = %e, "usage export failed mid-stream");
                ex.done = true;
                Some((Err(e.into()), ex))
            }
        }
    });
    Ok(HttpResponse::Ok()
        .content_type(content_type)
        .insert_header(ContentDisposition {
            disposition: DispositionType::Attachment,
            parameters: vec![DispositionParam::Filename(filename)],
        })
        .streaming(stream))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn windows_are_checked() {
        let q = MonitoringQuery {
            from: Some("2026-01-02T00:00:00Z".into()),
            to: Some("2026-01-01T00:00:00Z".into()),
            ..Default::default()
        };
        assert!(window(&q, 0, None).is_err());
        let q = MonitoringQuery {
            from: Some("yesterday".into()),
            ..Default::default()
        };
        assert!(window(&q, 0, None).is_err());
        assert_eq!(ceil(120_000, 60_000), 120_000);
        assert_eq!(ceil(120_001, 60_000), 180_000);
    }
}
