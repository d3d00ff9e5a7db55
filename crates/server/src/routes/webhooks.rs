//! Webhook endpoints and their deliveries (W1, W2).
//!
//! Policy: every member sees the endpoints (never their secrets) and the
//! deliveries; owners, admins and developers create, change, rotate, test
//! and delete endpoints and replay deliveries. A secret is answered once, at
//! creation and at each rotation. What is sent and how is
//! `crate::services::webhooks`.

use actix_web::{delete, get, patch, post, web, HttpResponse};
use serde::Deserialize;
use tally_common::{
    CreateWebhookEndpoint, ErrorBody, ErrorCode, RotateWebhookSecret, UpdateWebhookEndpoint,
    WebhookAttempt, WebhookDelivery, WebhookDeliveryDetail, WebhookDeliveryPage, WebhookEndpoint,
    WebhookEndpointList, WebhookEndpointWithSecret, WEBHOOK_EVENT_TYPES,
};
use tally_store::webhooks::{AttemptRow, DeliveryRow, EndpointRow};

use crate::auth::{CurrentMember, Permission};
use crate::error::{ApiError, ApiResult};
use crate::services::webhooks;
use crate::state::AppState;
use crate::views::rfc3339;

const MAX_URL: usize = 2048;
const MAX_DESCRIPTION: usize = 200;
const DEFAULT_GRACE_SECS: i64 = 86_400;
const MAX_GRACE_SECS: i64 = 7 * 86_400;

fn to_endpoint(e: &EndpointRow) -> WebhookEndpoint {
    let now = tally_store::now_ms();
    WebhookEndpoint {
        id: e.id.clone(),
        url: e.url.clone(),
        description: e.description.clone(),
        event_types: e.event_types.clone(),
        enabled: e.enabled,
        disabled_reason: if e.enabled {
            None
        } else {
            e.disabled_reason.clone()
        },
        failing_since: e.failing_since.map(rfc3339),
        previous_secret_expires_at: e
            .previous_secret_expires_at
            .filter(|&t| t > now && e.previous_secret.is_some())
            .map(rfc3339),
        created_at: rfc3339(e.created_at),
        updated_at: rfc3339(e.updated_at),
    }
}

fn to_delivery(d: &DeliveryRow) -> WebhookDelivery {
    WebhookDelivery {
        id: d.id.clone(),
        message_id: d.message_id.clone(),
        endpoint_id: d.endpoint_id.clone(),
        event_type: d.event_type.clone(),
        status: d.status.clone(),
        attempts: d.attempts,
        next_attempt_at: (d.status == "pending").then(|| rfc3339(d.next_attempt_at)),
        last_status: d.last_status,
        created_at: rfc3339(d.created_at),
        finished_at: d.finished_at.map(rfc3339),
    }
}

fn to_attempt(a: AttemptRow) -> WebhookAttempt {
    WebhookAttempt {
        attempted_at: rfc3339(a.attempted_at),
        status_code: a.status_code,
        latency_ms: a.latency_ms,
        succeeded: a.succeeded,
        response_excerpt: a.response_excerpt,
        error: a.error,
    }
}

/// A URL the server may POST to: http(s), with a host, within the webhook
/// egress policy (no non-public address unless `webhooks.allow_private`),
/// without control characters or a fragment.
fn check_url(state: &AppState, url: &str) -> ApiResult<String> {
    let url = url.trim();
    let parsed = url::Url::parse(url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
        .filter(|u| u.fragment().is_none())
        .filter(|_| url.len() <= MAX_URL && !url.chars().any(char::is_control));
    let Some(parsed) = parsed else {
        return Err(ApiError::invalid(format!(
            "url must be an http:// or https:// URL with a host, no fragment, at most {MAX_URL} characters"
        )));
    };
    state
        .webhooks
        .policy()
        .check_url(parsed.as_str())
        .map_err(|why| {
            ApiError::new(
                ErrorCode::UpstreamNotAllowed,
                format!("the webhook URL is refused by the server's egress policy: {why}"),
            )
        })?;
    Ok(parsed.to_string())
}

fn check_description(d: &str) -> ApiResult<String> {
    let d = d.trim();
    if d.chars().count() > MAX_DESCRIPTION || d.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "description must be at most {MAX_DESCRIPTION} characters without control characters"
        )));
    }
    Ok(d.to_owned())
}

fn check_types(types: &[String]) -> ApiResult<Vec<String>> {
    let mut out: Vec<String> = Vec::with_capacity(types.len());
    for t in types {
        if !WEBHOOK_EVENT_TYPES.contains(&t.as_str()) {
            return Err(ApiError::invalid(format!(
                "unknown event type {t:?}; one of {}",
                WEBHOOK_EVENT_TYPES.join(", ")
            )));
        }
        if out.contains(t) {
            return Err(ApiError::invalid(format!("event type {t} is listed twice")));
        }
        out.push(t.clone());
    }
    out.sort();
    Ok(out)
}

async fn find(state: &AppState, member: &CurrentMember, id: &str) -> ApiResult<EndpointRow> {
    let mut conn = state.store.conn().await?;
    tally_store::webhooks::endpoint(&mut conn, member.namespace_id(), id)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook endpoint"))
}

/// The namespace's webhook endpoints, oldest first, and the event types on
/// offer.
#[utoipa::path(
    operation_id = "list_webhook_endpoints",
    tag = "webhooks",
    security(("bearer" = [])),
    params(("namespace_id" = String, Path)),
    responses(
        (status = 200, body = WebhookEndpointList),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
#[get("/namespaces/{namespace_id}/webhooks")]
pub async fn list(
    state: web::Data<AppState>,
    member: CurrentMember,
) -> ApiResult<web::Json<WebhookEndpointList>> {
    member.require(Permission::Read)?;
    let mut conn = state.store.conn().await?;
    let items = tally_store::webhooks::endpoints(&mut conn, member.namespace_id())
        .await?
        .iter()
        .map(to_endpoint)
        .collect();
    Ok(web::Json(WebhookEndpointList {
        items,
        event_types: WEBHOOK_EVENT_TYPES
            .iter()
            .map(|t| (*t).to_owned())
            .collect(),
    }))
}

/// Registers an endpoint; the answer holds its signing secret, shown only
/// now.
#[utoipa::path(
    operation_id = "create_webhook_endpoint",
    tag = "webhooks",
    security(("bearer" = [])),
    params(("namespace_id" = String, Path)),
    request_body = CreateWebhookEndpoint,
    responses(
        (status = 201, body = WebhookEndpointWithSecret),
        (status = 400, description = "`invalid_request`, `invalid_json`, or `upstream_not_allowed`: the URL's host is refused by the egress policy", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "`conflict`: the namespace has `webhooks.max_endpoints` endpoints", body = ErrorBody),
    )
)]
#[post("/namespaces/{namespace_id}/webhooks")]
pub async fn create(
    state: web::Data<AppState>,
    member: CurrentMember,
    body: web::Json<CreateWebhookEndpoint>,
) -> ApiResult<HttpResponse> {
    member.require(Permission::Develop)?;
    let body = body.into_inner();
    let url = check_url(&state, &body.url)?;
    let description = check_description(&body.description)?;
    let event_types = check_types(&body.event_types)?;
    let now = tally_store::now_ms();
    let row = EndpointRow {
        id: tally_store::new_id("whe"),
        namespace_id: member.namespace_id().to_owned(),
        url,
        description,
        event_types,
        secret: webhooks::new_secret(),
        previous_secret: None,
        previous_secret_expires_at: None,
        enabled: true,
        disabled_reason: None,
        failing_since: None,
        created_by: member.email.clone(),
        created_at: now,
        updated_at: now,
    };
    let mut tx = state.store.begin().await?;
    tally_store::namespaces::lock(&mut tx, member.namespace_id()).await?;
    let existing = tally_store::webhooks::endpoints(&mut tx, member.namespace_id()).await?;
    if existing.len() >= state.settings.webhooks.max_endpoints {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!(
                "a namespace has at most {} webhook endpoints",
                state.settings.webhooks.max_endpoints
            ),
        ));
    }
    tally_store::webhooks::insert_endpoint(&mut tx, &row).await?;
    tx.commit().await?;
    Ok(HttpResponse::Created().json(WebhookEndpointWithSecret {
        endpoint: to_endpoint(&row),
        secret: row.secret,
    }))
}

/// One endpoint.
#[utoipa::path(
    operation_id = "get_webhook_endpoint",
    tag = "webhooks",
    security(("bearer" = [])),
    params(("namespace_id" = String, Path), ("endpoint_id" = String, Path)),
    responses(
        (status = 200, body = WebhookEndpoint),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
#[get("/namespaces/{namespace_id}/webhooks/{endpoint_id}")]
pub async fn get(
    state: web::Data<AppState>,
    member: CurrentMember,
    path: web::Path<(String, String)>,
) -> ApiResult<web::Json<WebhookEndpoint>> {
    member.require(Permission::Read)?;
    let e = find(&state, &member, &path.1).await?;
    Ok(web::Json(to_endpoint(&e)))
}

/// Changes an endpoint's URL, description, event types or enabled state.
/// Enabling it ends its failure streak; its pending deliveries go out again.
#[utoipa::path(
    operation_id = "update_webhook_endpoint",
    tag = "webhooks",
    security(("bearer" = [])),
    params(("namespace_id" = String, Path), ("endpoint_id" = String, Path)),
    request_body = UpdateWebhookEndpoint,
    responses(
        (status = 200, body = WebhookEndpoint),
        (status = 400, description = "`invalid_request`, `invalid_json`, or `upstream_not_allowed`", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
#[patch("/namespaces/{namespace_id}/webhooks/{endpoint_id}")]
pub async fn update(
    state: web::Data<AppState>,
    member: CurrentMember,
    path: web::Path<(String, String)>,
    body: web::Json<UpdateWebhookEndpoint>,
) -> ApiResult<web::Json<WebhookEndpoint>> {
    member.require(Permission::Develop)?;
    let body = body.into_inner();
    // Everything is checked before anything is written.
    let url = body
        .url
        .as_deref()
        .map(|u| check_url(&state, u))
        .transpose()?;
    let description = body
        .description
        .as_deref()
        .map(check_description)
        .transpose()?;
    let types = body.event_types.as_deref().map(check_types).transpose()?;
    let mut e = find(&state, &member, &path.1).await?;
    if let Some(url) = url {
        e.url = url;
    }
    if let Some(d) = description {
        e.description = d;
    }
    if let Some(t) = types {
        e.event_types = t;
    }
    if let Some(enabled) = body.enabled {
        if enabled && !e.enabled {
            e.failing_since = None;
            e.disabled_reason = None;
        }
        if !enabled && e.enabled {
            e.disabled_reason = Some(format!("disabled by {}", member.email));
        }
        e.enabled = enabled;
    }
    let mut conn = state.store.conn().await?;
    if !tally_store::webhooks::update_endpoint(&mut conn, &e).await? {
        return Err(ApiError::not_found("webhook endpoint"));
    }
    let e = tally_store::webhooks::endpoint(&mut conn, member.namespace_id(), &e.id)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook endpoint"))?;
    if e.enabled {
        state.webhooks.poke();
    }
    Ok(web::Json(to_endpoint(&e)))
}

/// Deletes an endpoint with its deliveries; nothing more is sent to it.
#[utoipa::path(
    operation_id = "delete_webhook_endpoint",
    tag = "webhooks",
    security(("bearer" = [])),
    params(("namespace_id" = String, Path), ("endpoint_id" = String, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
#[delete("/namespaces/{namespace_id}/webhooks/{endpoint_id}")]
pub async fn remove(
    state: web::Data<AppState>,
    member: CurrentMember,
    path: web::Path<(String, String)>,
) -> ApiResult<HttpResponse> {
    member.require(Permission::Develop)?;
    let mut tx = state.store.begin().await?;
    if !tally_store::webhooks::delete_endpoint(&mut tx, member.namespace_id(), &path.1).await? {
        return Err(ApiError::not_found("webhook endpoint"));
    }
    tx.commit().await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Makes a new signing secret. The old one keeps signing beside it (both
/// signatures in `webhook-signature`) for `grace_seconds`, so receivers can
/// switch without missing a delivery.
#[utoipa::path(
    operation_id = "rotate_webhook_secret",
    tag = "webhooks",
    security(("bearer" = [])),
    params(("namespace_id" = String, Path), ("endpoint_id" = String, Path)),
    request_body = RotateWebhookSecret,
    responses(
        (status = 200, body = WebhookEndpointWithSecret),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
#[post("/namespaces/{namespace_id}/webhooks/{endpoint_id}/rotate")]
pub async fn rotate(
    state: web::Data<AppState>,
    member: CurrentMember,
    path: web::Path<(String, String)>,
    body: web::Json<RotateWebhookSecret>,
) -> ApiResult<web::Json<WebhookEndpointWithSecret>> {
    member.require(Permission::Develop)?;
    let grace = body.grace_seconds.unwrap_or(DEFAULT_GRACE_SECS);
    if !(0..=MAX_GRACE_SECS).contains(&grace) {
        return Err(ApiError::invalid(format!(
            "grace_seconds must be 0 to {MAX_GRACE_SECS}"
        )));
    }
    let mut e = find(&state, &member, &path.1).await?;
    let secret = webhooks::new_secret();
    e.previous_secret = Some(std::mem::replace(&mut e.secret, secret.clone()));
    e.previous_secret_expires_at = Some(tally_store::now_ms() + grace * 1000);
    let mut conn = state.store.conn().await?;
    if !tally_store::webhooks::update_endpoint(&mut conn, &e).await? {
        return Err(ApiError::not_found("webhook endpoint"));
    }
    Ok(web::Json(WebhookEndpointWithSecret {
        endpoint: to_endpoint(&e),
        secret,
    }))
}

/// Sends a `webhook.test` event to the endpoint now (whatever it subscribes
/// to); the answer is its delivery, to follow.
#[utoipa::path(
    operation_id = "test_webhook_endpoint",
    tag = "webhooks",
    security(("bearer" = [])),
    params(("namespace_id" = String, Path), ("endpoint_id" = String, Path)),
    responses(
        (status = 202, body = WebhookDelivery),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "`conflict`: the endpoint is disabled; enable it first", body = ErrorBody),
    )
)]
#[post("/namespaces/{namespace_id}/webhooks/{endpoint_id}/test")]
pub async fn test(
    state: web::Data<AppState>,
    member: CurrentMember,
    path: web::Path<(String, String)>,
) -> ApiResult<HttpResponse> {
    member.require(Permission::Develop)?;
    let e = find(&state, &member, &path.1).await?;
    if !e.enabled {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "the endpoint is disabled; enable it first",
        ));
    }
    let mut tx = state.store.begin().await?;
    let id = webhooks::send_test(&mut tx, member.namespace_id(), &e.id, &member.email).await?;
    let d = tally_store::webhooks::delivery(&mut tx, member.namespace_id(), &id)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook delivery"))?;
    tx.commit().await?;
    state.webhooks.poke();
    Ok(HttpResponse::Accepted().json(to_delivery(&d)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeliveryQuery {
    /// Only deliveries to this endpoint.
    pub endpoint_id: Option<String>,
    /// `pending`, `succeeded` or `failed`.
    pub status: Option<String>,
    /// A delivery id: only older deliveries (the previous page's `next_before`).
    pub before: Option<String>,
    /// 1 to 200 (default 50).
    pub limit: Option<i64>,
}

/// The namespace's deliveries, newest first.
#[utoipa::path(
    operation_id = "list_webhook_deliveries",
    tag = "webhooks",
    security(("bearer" = [])),
    params(("namespace_id" = String, Path), DeliveryQuery),
    responses(
        (status = 200, body = WebhookDeliveryPage),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
#[get("/namespaces/{namespace_id}/webhook-deliveries")]
pub async fn deliveries(
    state: web::Data<AppState>,
    member: CurrentMember,
    query: web::Query<DeliveryQuery>,
) -> ApiResult<web::Json<WebhookDeliveryPage>> {
    member.require(Permission::Read)?;
    let q = query.into_inner();
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::invalid("limit must be 1 to 200"));
    }
    if let Some(s) = &q.status {
        if !matches!(s.as_str(), "pending" | "succeeded" | "failed") {
            return Err(ApiError::invalid(
                "status must be pending, succeeded or failed",
            ));
        }
    }
    let ns = member.namespace_id();
    let mut conn = state.store.conn().await?;
    let before = match &q.before {
        Some(id) => {
            let d = tally_store::webhooks::delivery(&mut conn, ns, id)
                .await?
                .ok_or_else(|| {
                    ApiError::invalid("before must be a delivery id of this namespace")
                })?;
            Some((d.created_at, d.id))
        }
        None => None,
    };
    let rows = tally_store::webhooks::deliveries(
        &mut conn,
        ns,
        q.endpoint_id.as_deref(),
        q.status.as_deref(),
        before.as_ref().map(|(t, id)| (*t, id.as_str())),
        limit + 1,
    )
    .await?;
    let more = rows.len() as i64 > limit;
    let items: Vec<WebhookDelivery> = rows.iter().take(limit as usize).map(to_delivery).collect();
    Ok(web::Json(WebhookDeliveryPage {
        next_before: if more {
            items.last().map(|d| d.id.clone())
        } else {
            None
        },
        items,
    }))
}

/// One delivery with the exact body sent and every attempt.
#[utoipa::path(
    operation_id = "get_webhook_delivery",
    tag = "webhooks",
    security(("bearer" = [])),
    params(("namespace_id" = String, Path), ("delivery_id" = String, Path)),
    responses(
        (status = 200, body = WebhookDeliveryDetail),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
#[get("/namespaces/{namespace_id}/webhook-deliveries/{delivery_id}")]
pub async fn delivery(
    state: web::Data<AppState>,
    member: CurrentMember,
    path: web::Path<(String, String)>,
) -> ApiResult<web::Json<WebhookDeliveryDetail>> {
    member.require(Permission::Read)?;
    let mut conn = state.store.conn().await?;
    let d = tally_store::webhooks::delivery(&mut conn, member.namespace_id(), &path.1)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook delivery"))?;
    let attempts = tally_store::webhooks::attempts(&mut conn, &d.id)
        .await?
        .into_iter()
        .map(to_attempt)
        .collect();
    Ok(web::Json(WebhookDeliveryDetail {
        delivery: to_delivery(&d),
        payload: d.payload,
        attempts,
    }))
}

/// Sends a delivery's event to its endpoint again, as a new delivery with
/// the same event id (`webhook-id`).
#[utoipa::path(
    operation_id = "replay_webhook_delivery",
    tag = "webhooks",
    security(("bearer" = [])),
    params(("namespace_id" = String, Path), ("delivery_id" = String, Path)),
    responses(
        (status = 202, body = WebhookDelivery),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
#[post("/namespaces/{namespace_id}/webhook-deliveries/{delivery_id}/replay")]
pub async fn replay(
    state: web::Data<AppState>,
    member: CurrentMember,
    path: web::Path<(String, String)>,
) -> ApiResult<HttpResponse> {
    member.require(Permission::Develop)?;
    let ns = member.namespace_id();
    let mut tx = state.store.begin().await?;
    let d = tally_store::webhooks::delivery(&mut tx, ns, &path.1)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook delivery"))?;
    let id = tally_store::webhooks::replay(&mut tx, &d, ns).await?;
    let new = tally_store::webhooks::delivery(&mut tx, ns, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook delivery"))?;
    tx.commit().await?;
    state.webhooks.poke();
    Ok(HttpResponse::Accepted().json(to_delivery(&new)))
}
