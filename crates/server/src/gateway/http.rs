//! The gateway's HTTP endpoints (G1): OpenAI-compatible `/v1/...` and
//! `/v1/apis/{slug}/{path}` for every other catalog API. Callers authenticate
//! with `Authorization: Bearer tk_…`.

use std::sync::Arc;
use std::time::Instant;

use actix_web::http::header::AUTHORIZATION;
use actix_web::{get, post, route, web, HttpRequest, HttpResponse, ResponseError};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde_json::json;
use tally_common::{ErrorBody, ErrorCode, Protocol};

use super::keys::invalid_key;
use super::{Endpoint, Inbound, Reply, ReplyBody};
use crate::error::ApiError;
use crate::state::AppState;

// The request bodies below are documentation: the gateway forwards the body as
// it came and reads only these fields from it (the model to route by, `stream`,
// and what bounds the cost); any other OpenAI field passes through unchanged.

/// One message of a chat.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`.
    role: String,
    /// The text (OpenAI also accepts a list of content parts).
    content: String,
}

/// An OpenAI chat completion request.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ChatCompletionRequest {
    /// A model from `GET /v1/models`; it picks the catalog API.
    model: String,
    messages: Vec<ChatMessage>,
    /// Answer with server-sent events (`text/event-stream`).
    stream: Option<bool>,
    /// Bounds the answer, and so the credits held for the call.
    max_tokens: Option<u32>,
    /// Answers to generate; each is paid for.
    n: Option<u32>,
}

/// An OpenAI (legacy) completion request.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct CompletionRequest {
    /// A model from `GET /v1/models`; it picks the catalog API.
    model: String,
    /// A prompt (OpenAI also accepts a list of prompts, each paid for).
    prompt: String,
    stream: Option<bool>,
    max_tokens: Option<u32>,
    n: Option<u32>,
}

/// An OpenAI embeddings request.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct EmbeddingsRequest {
    /// A model from `GET /v1/models`; it picks the catalog API.
    model: String,
    /// The text to embed (OpenAI also accepts a list of texts).
    input: String,
}

fn bearer(req: &HttpRequest) -> Result<&str, ApiError> {
    req.headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(invalid_key)
}

/// The key of a request, looked up with the caller's address: the TCP peer,
/// or behind trusted proxies (`auth.trusted_proxies`, e.g. a load balancer)
/// the address they forwarded, so the throttle of unknown keys counts each
/// client, not the balancer.
async fn authenticate(
    req: &HttpRequest,
    state: &AppState,
) -> Result<Arc<super::keys::KeyInfo>, ApiError> {
    let secret = bearer(req)?;
    let client = Some(state.throttle.client_ip(req));
    state.gateway.authenticate(secret, client).await
}

async fn read_body(mut payload: web::Payload, limit: usize) -> Result<Bytes, ApiError> {
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| ApiError::invalid("the request body could not be read"))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("the request body is larger than {limit} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Turns the gateway's reply into an HTTP response.
pub fn respond(reply: Reply) -> HttpResponse {
    let mut res = HttpResponse::build(reply.status);
    for (name, value) in reply.headers {
        res.append_header((name, value));
    }
    match reply.body {
        ReplyBody::Full(body) => res.body(body),
        ReplyBody::Stream(rx) => res.streaming(tokio_stream_of(rx).map(Ok::<_, actix_web::Error>)),
    }
}

fn tokio_stream_of(
    mut rx: tokio::sync::mpsc::Receiver<Bytes>,
) -> impl futures_util::Stream<Item = Bytes> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn call(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    endpoint: Endpoint,
) -> HttpResponse {
    let started = Instant::now();
    let gw = &state.gateway;
    let key = match authenticate(&req, &state).await {
        Ok(k) => k,
        Err(e) => return e.error_response(),
    };
    let body = match read_body(payload, gw.settings().max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return e.error_response(),
    };
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let inbound = Inbound {
        endpoint,
        method: req.method().clone(),
        query: req.query_string().to_owned(),
        content_type: header("content-type"),
        client_id: header("x-client-id").map(|c| c.chars().take(200).collect()),
        body,
        started,
    };
    respond(gw.serve(key, inbound).await)
}

/// OpenAI-compatible chat completions.
///
/// The body is an OpenAI chat request; `model` picks the catalog API. With
/// `"stream": true` the answer is `text/event-stream`, passed through as it
/// arrives. Test keys reach the sandbox or the API's test upstream and spend
/// test credits. `X-Tally-Call-Id` names the call in usage; sync answers carry
/// its cost in `X-Tally-Cost-Micros`.
#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    tag = "gateway",
    request_body(content = ChatCompletionRequest, description = "An OpenAI chat completion request; fields not listed pass through"),
    responses(
        (status = 200, description = "The model's answer: JSON, or server-sent events when the request has `\"stream\": true`",
            content((Object = "application/json"), (String = "text/event-stream"))),
        (status = 400, description = "`invalid_json`: the body is not a JSON object; `invalid_request`: no `model`", body = ErrorBody),
        (status = 401, description = "Missing, unknown, revoked or expired key", body = ErrorBody),
        (status = 402, description = "`insufficient_credits`: the balance cannot cover the call's maximum cost", body = ErrorBody),
        (status = 403, description = "`api_not_allowed`: the key may not call this model", body = ErrorBody),
        (status = 404, description = "The model is not in the catalog", body = ErrorBody),
        (status = 413, description = "The body is larger than `gateway.max_body_bytes`", body = ErrorBody),
        (status = 429, description = "`rate_limited` or `quota_exceeded`, or too many unknown keys from this address (`rate_limited`); see Retry-After", body = ErrorBody),
        (status = 502, description = "`upstream_error`: the upstream failed", body = ErrorBody),
        (status = 503, description = "The API is disabled or has no upstream, its seller's serving is paused, or the call could not be recorded; or key lookups are saturated (`unavailable`, Retry-After: 1)", body = ErrorBody),
        (status = 504, description = "`upstream_timeout`: the upstream did not answer in time", body = ErrorBody),
        (status = "4XX", description = "An upstream's error answer, passed through as it came", content_type = "*/*"),
        (status = "5XX", description = "An upstream's error answer, passed through as it came", content_type = "*/*"),
    ),
    security(("api_key" = []))
)]
#[post("/v1/chat/completions")]
pub async fn chat_completions(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    call(req, payload, state, Endpoint::Chat).await
}

/// OpenAI-compatible (legacy) text completions; see chat completions.
#[utoipa::path(
    post,
    path = "/v1/completions",
    tag = "gateway",
    request_body(content = CompletionRequest, description = "An OpenAI completion request; fields not listed pass through"),
    responses(
        (status = 200, description = "The model's answer: JSON, or server-sent events when the request has `\"stream\": true`",
            content((Object = "application/json"), (String = "text/event-stream"))),
        (status = 400, description = "`invalid_json`: the body is not a JSON object; `invalid_request`: no `model`", body = ErrorBody),
        (status = 401, description = "Missing, unknown, revoked or expired key", body = ErrorBody),
        (status = 402, description = "`insufficient_credits`: the balance cannot cover the call's maximum cost", body = ErrorBody),
        (status = 403, description = "`api_not_allowed`: the key may not call this model", body = ErrorBody),
        (status = 404, description = "The model is not in the catalog", body = ErrorBody),
        (status = 413, description = "The body is larger than `gateway.max_body_bytes`", body = ErrorBody),
        (status = 429, description = "`rate_limited` or `quota_exceeded`, or too many unknown keys from this address (`rate_limited`); see Retry-After", body = ErrorBody),
        (status = 502, description = "`upstream_error`: the upstream failed", body = ErrorBody),
        (status = 503, description = "The API is disabled or has no upstream, its seller's serving is paused, or the call could not be recorded; or key lookups are saturated (`unavailable`, Retry-After: 1)", body = ErrorBody),
        (status = 504, description = "`upstream_timeout`: the upstream did not answer in time", body = ErrorBody),
        (status = "4XX", description = "An upstream's error answer, passed through as it came", content_type = "*/*"),
        (status = "5XX", description = "An upstream's error answer, passed through as it came", content_type = "*/*"),
    ),
    security(("api_key" = []))
)]
#[post("/v1/completions")]
pub async fn completions(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    call(req, payload, state, Endpoint::Completions).await
}

/// OpenAI-compatible embeddings; see chat completions.
#[utoipa::path(
    post,
    path = "/v1/embeddings",
    tag = "gateway",
    request_body(content = EmbeddingsRequest, description = "An OpenAI embeddings request; fields not listed pass through"),
    responses(
        (status = 200, description = "The embeddings", body = Object),
        (status = 400, description = "`invalid_json`: the body is not a JSON object; `invalid_request`: no `model`", body = ErrorBody),
        (status = 401, description = "Missing, unknown, revoked or expired key", body = ErrorBody),
        (status = 402, description = "`insufficient_credits`: the balance cannot cover the call's maximum cost", body = ErrorBody),
        (status = 403, description = "`api_not_allowed`: the key may not call this model", body = ErrorBody),
        (status = 404, description = "The model is not in the catalog", body = ErrorBody),
        (status = 413, description = "The body is larger than `gateway.max_body_bytes`", body = ErrorBody),
        (status = 429, description = "`rate_limited` or `quota_exceeded`, or too many unknown keys from this address (`rate_limited`); see Retry-After", body = ErrorBody),
        (status = 502, description = "`upstream_error`: the upstream failed", body = ErrorBody),
        (status = 503, description = "The API is disabled or has no upstream, its seller's serving is paused, or the call could not be recorded; or key lookups are saturated (`unavailable`, Retry-After: 1)", body = ErrorBody),
        (status = 504, description = "`upstream_timeout`: the upstream did not answer in time", body = ErrorBody),
        (status = "4XX", description = "An upstream's error answer, passed through as it came", content_type = "*/*"),
        (status = "5XX", description = "An upstream's error answer, passed through as it came", content_type = "*/*"),
    ),
    security(("api_key" = []))
)]
#[post("/v1/embeddings")]
pub async fn embeddings(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    call(req, payload, state, Endpoint::Embeddings).await
}

/// Any other catalog API: `{path}` (with the query string) is forwarded to
/// the API's upstream pool with the same method and body.
#[utoipa::path(
    method(get, post, put, patch, delete),
    path = "/v1/apis/{slug}/{path}",
    operation_id = "call_api",
    tag = "gateway",
    params(
        ("slug" = String, Path, description = "The catalog API"),
        ("path" = String, Path, description = "Path forwarded to the upstream"),
    ),
    request_body(content = Object, description = "Forwarded as is", content_type = "*/*"),
    responses(
        (status = "2XX", description = "The upstream's answer, passed through (test keys without a test upstream get the sandbox's JSON echo)", content_type = "*/*"),
        (status = 400, description = "The request body could not be read", body = ErrorBody),
        (status = 401, description = "Missing, unknown, revoked or expired key", body = ErrorBody),
        (status = 402, description = "`insufficient_credits`: the balance cannot cover the call's maximum cost", body = ErrorBody),
        (status = 403, description = "`api_not_allowed`: the key may not call this API", body = ErrorBody),
        (status = 404, description = "No catalog API has this slug", body = ErrorBody),
        (status = 413, description = "The body is larger than `gateway.max_body_bytes`", body = ErrorBody),
        (status = 429, description = "`rate_limited` or `quota_exceeded`, or too many unknown keys from this address (`rate_limited`); see Retry-After", body = ErrorBody),
        (status = 502, description = "`upstream_error`: the upstream failed", body = ErrorBody),
        (status = 503, description = "The API is disabled or has no upstream, its seller's serving is paused, or the call could not be recorded; or key lookups are saturated (`unavailable`, Retry-After: 1)", body = ErrorBody),
        (status = 504, description = "`upstream_timeout`: the upstream did not answer in time", body = ErrorBody),
        (status = "4XX", description = "An upstream's error answer, passed through as it came", content_type = "*/*"),
        (status = "5XX", description = "An upstream's error answer, passed through as it came", content_type = "*/*"),
    ),
    security(("api_key" = []))
)]
#[route(
    "/v1/apis/{slug}/{path:.*}",
    method = "GET",
    method = "POST",
    method = "PUT",
    method = "PATCH",
    method = "DELETE"
)]
pub async fn generic(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    let (slug, rest) = path.into_inner();
    call(
        req,
        payload,
        state,
        Endpoint::Http {
            slug,
            path: format!("/{rest}"),
        },
    )
    .await
}

/// The models this key can call (OpenAI's list format).
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "gateway",
    responses(
        (status = 200, description = "`{\"object\": \"list\", \"data\": [{\"id\", \"object\": \"model\", \"owned_by\"}]}`", body = Object),
        (status = 401, description = "Missing, unknown, revoked or expired key", body = ErrorBody),
        (status = 429, description = "Too many unknown keys from this address (`rate_limited`); see Retry-After", body = ErrorBody),
        (status = 503, description = "Key lookups are saturated (`unavailable`, Retry-After: 1)", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
#[get("/v1/models")]
pub async fn models(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    match visible_models(&req, &state).await {
        Ok(list) => HttpResponse::Ok().json(json!({"object": "list", "data": list})),
        Err(e) => e.error_response(),
    }
}

/// One model this key can call.
#[utoipa::path(
    get,
    path = "/v1/models/{model}",
    tag = "gateway",
    params(("model" = String, Path, description = "Model id")),
    responses(
        (status = 200, description = "`{\"id\", \"object\": \"model\", \"owned_by\"}`", body = Object),
        (status = 401, description = "Missing, unknown, revoked or expired key", body = ErrorBody),
        (status = 404, description = "Unknown model", body = ErrorBody),
        (status = 429, description = "Too many unknown keys from this address (`rate_limited`); see Retry-After", body = ErrorBody),
        (status = 503, description = "Key lookups are saturated (`unavailable`, Retry-After: 1)", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
#[get("/v1/models/{model}")]
pub async fn model(
    req: HttpRequest,
    state: web::Data<AppState>,
    model: web::Path<String>,
) -> HttpResponse {
    match visible_models(&req, &state).await {
        Ok(list) => match list.into_iter().find(|m| m["id"] == model.as_str()) {
            Some(m) => HttpResponse::Ok().json(m),
            None => ApiError::not_found(&format!("model '{model}'")).error_response(),
        },
        Err(e) => e.error_response(),
    }
}

async fn visible_models(
    req: &HttpRequest,
    state: &AppState,
) -> Result<Vec<serde_json::Value>, ApiError> {
    let key = authenticate(req, state).await?;
    key.check_usable(tally_store::now_ms())?;
    let catalog = state.gateway.catalog();
    let mut out = Vec::new();
    for api in catalog
        .apis
        .iter()
        .filter(|a| a.config.enabled && a.config.protocol == Protocol::Openai)
    {
        if api
            .pool(key.environment)
            .is_some_and(super::catalog::Pool::is_empty)
        {
            continue;
        }
        for m in &api.config.models {
            if key.allows(api.slug(), Some(m)) {
                out.push(json!({"id": m, "object": "model", "created": 0, "owned_by": api.slug()}));
            }
        }
    }
    Ok(out)
}
