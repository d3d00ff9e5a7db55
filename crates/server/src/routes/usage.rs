//! Usage (G4) and key statistics (K6), read from the recorded calls.

use actix_web::{get, post, web};
use serde::Deserialize;
use serde_json::Value;
use tally_common::{
    Environment, ErrorBody, ErrorCode, KeyStats, PlaygroundRequest, PlaygroundResponse, UsageEvent,
    UsagePage,
};
use tally_store::usage::UsageFilter;
use utoipa::IntoParams;

use crate::auth::{CurrentMember, Permission};
use crate::error::{ApiError, ApiResult};
use crate::gateway::keys::KeyInfo;
use crate::gateway::{limits, Endpoint, Inbound, ReplyBody};
use crate::state::AppState;
use crate::views::rfc3339;
use crate::views::to_event;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    pub environment: Option<Environment>,
    /// Only calls of this key.
    pub key_id: Option<String>,
    /// Page size, 1 to 500 (default 50).
    pub limit: Option<i64>,
    /// Only calls older than this call id (the `next_before` of the previous page).
    pub before: Option<String>,
}

/// Recorded gateway calls of the namespace, newest first.
#[utoipa::path(
    operation_id = "list_usage",
    tag = "usage",
    security(("bearer" = [])),
    params(("namespace_id" = String, Path), UsageQuery),
    responses(
        (status = 401, body = ErrorBody),(status = 200, body = UsagePage), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody))
)]
#[get("/namespaces/{namespace_id}/usage")]
pub async fn list(
    state: web::Data<AppState>,
    member: CurrentMember,
    query: web::Query<UsageQuery>,
) -> ApiResult<web::Json<UsagePage>> {
    member.require(Permission::Read)?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid("limit must be 1 to 500"));
    }
    let mut conn = state.store.conn().await?;
    let rows = tally_store::usage::list(
        &mut conn,
        member.namespace_id(),
        UsageFilter {
            environment: query.environment,
            key_id: query.key_id.as_deref(),
            before: query.before.as_deref(),
        },
        limit + 1,
    )
    .await?;
    let more = rows.len() as i64 > limit;
    let items: Vec<UsageEvent> = rows
        .into_iter()
        .take(limit as usize)
        .map(to_event)
        .collect();
    let next_before = if more {
        items.last().map(|e| e.id.clone())
    } else {
        None
    };
    Ok(web::Json(UsagePage { items, next_before }))
}

/// A key's calls, errors, spend and tokens, and its quota counters now.
#[utoipa::path(
    tag = "keys",
    security(("bearer" = [])),
    params(("namespace_id" = String, Path), ("key_id" = String, Path)),
    responses(
        (status = 401, body = ErrorBody),(status = 200, body = KeyStats), (status = 404, body = ErrorBody))
)]
#[get("/namespaces/{namespace_id}/keys/{key_id}/stats")]
pub async fn key_stats(
    state: web::Data<AppState>,
    member: CurrentMember,
    path: web::Path<(String, String)>,
) -> ApiResult<web::Json<KeyStats>> {
    member.require(Permission::Read)?;
    let (_, key_id) = path.into_inner();
    let (totals, version) = {
        let mut conn = state.store.conn().await?;
        let key = tally_store::keys::get(&mut conn, member.namespace_id(), &key_id)
            .await?
            .ok_or_else(|| ApiError::not_found("key"))?;
        (
            tally_store::usage::key_totals(&mut conn, &key_id, 0).await?,
            key.updated_at,
        )
    };
    let counters = state.gateway.quota_counters(&key_id, version).await?;
    let now = tally_store::now_ms();
    Ok(web::Json(KeyStats {
        calls: totals.calls,
        errors: totals.errors,
        spend_micros: totals.spend_micros,
        tokens_in: totals.tokens_in,
        tokens_out: totals.tokens_out,
        last_used_at: totals.last_used_at.map(rfc3339),
        day_requests: counters.day_requests,
        day_credits_micros: counters.day_credits,
        day_resets_at: rfc3339(limits::next_day_start(now)),
        month_requests: counters.month_requests,
        month_credits_micros: counters.month_credits,
        month_resets_at: rfc3339(limits::next_month_start(now)),
    }))
}

/// Sends one request through the gateway with one of the namespace's keys,
/// exactly as a caller with its secret would (limits, credits and usage
/// included), and returns the answer with its measurements. Streaming is off.
#[utoipa::path(
    tag = "usage",
    security(("bearer" = [])),
    params(("namespace_id" = String, Path)),
    request_body = PlaygroundRequest,
    responses(
        (status = 401, body = ErrorBody),
        (status = 200, description = "The gateway's answer, whatever its status", body = PlaygroundResponse),
        (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
#[post("/namespaces/{namespace_id}/playground")]
pub async fn playground(
    state: web::Data<AppState>,
    member: CurrentMember,
    body: web::Json<PlaygroundRequest>,
) -> ApiResult<web::Json<PlaygroundResponse>> {
    member.require(Permission::Develop)?;
    let req = body.into_inner();
    let started = std::time::Instant::now();
    let row = {
        let mut conn = state.store.conn().await?;
        tally_store::keys::get(&mut conn, member.namespace_id(), &req.key_id)
            .await?
            .ok_or_else(|| ApiError::not_found("key"))?
    };
    let key = std::sync::Arc::new(KeyInfo::from_row(&row, None)?);
    let (path, query) = req.path.split_once('?').unwrap_or((&req.path, ""));
    let endpoint = match path {
        "/v1/chat/completions" => Endpoint::Chat,
        "/v1/completions" => Endpoint::Completions,
        "/v1/embeddings" => Endpoint::Embeddings,
        other => match other.strip_prefix("/v1/apis/").and_then(|r| r.split_once('/')) {
            Some((slug, rest)) if !slug.is_empty() => Endpoint::Http {
                slug: slug.to_owned(),
                path: format!("/{rest}"),
            },
            _ => {
                return Err(ApiError::invalid(
                    "path must be /v1/chat/completions, /v1/completions, /v1/embeddings or /v1/apis/{slug}/{path}",
                ))
            }
        },
    };
    let method = match req
        .method
        .as_deref()
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        None | Some("POST") => actix_web::http::Method::POST,
        Some("GET") => actix_web::http::Method::GET,
        Some(_) => return Err(ApiError::invalid("method must be GET or POST")),
    };
    let mut json = req.body.unwrap_or(Value::Null);
    if let Some(obj) = json.as_object_mut() {
        obj.insert("stream".into(), Value::Bool(false));
    }
    let body = if json.is_null() {
        Vec::new()
    } else {
        json.to_string().into_bytes()
    };
    let reply = state
        .gateway
        .serve(
            key,
            Inbound {
                endpoint,
                method,
                query: query.to_owned(),
                content_type: Some("application/json".into()),
                client_id: Some("dashboard-playground".into()),
                body: body.into(),
                started,
            },
        )
        .await;
    let bytes = match reply.body {
        ReplyBody::Full(b) => b,
        ReplyBody::Stream(_) => {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "the Playground does not stream",
            ))
        }
    };
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    let summary = reply.summary;
    let call_id = reply
        .headers
        .iter()
        .find(|(n, _)| n.as_str() == "x-tally-call-id")
        .and_then(|(_, v)| v.to_str().ok())
        .map(str::to_owned);
    Ok(web::Json(PlaygroundResponse {
        status: reply.status.as_u16(),
        body,
        call_id: summary
            .as_ref()
            .map(|s| s.call_id.clone())
            .or(call_id)
            .unwrap_or_default(),
        latency_us: summary.as_ref().map_or_else(
            || i64::try_from(started.elapsed().as_micros()).unwrap_or(0),
            |s| s.latency_us,
        ),
        tokens_in: summary.as_ref().map_or(0, |s| s.tokens_in),
        tokens_out: summary.as_ref().map_or(0, |s| s.tokens_out),
        cost_micros: summary.as_ref().map_or(0, |s| s.cost_micros),
    }))
}
