//! Forwarding to upstream pools (G2, G3): sync calls are read whole (up to
//! `max_response_bytes`) and answered after their record commits; streams
//! go through `stream`, which passes each event through as it arrives.

use std::time::{Duration, Instant};

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde::Deserialize;
use tally_common::ErrorCode;

use super::call::{Call, Outcome};
use super::catalog::Pool;
use super::sandbox::estimate_tokens;
use super::stream::{stream_reply, upstream_timeout, Counted, StreamLimits, Usage};
use super::wire::{error_reply, Endpoint, Headers, Reply};
use crate::error::ApiError;

/// Response headers passed back from an upstream (the rest are hop-by-hop
/// or describe the upstream's own framing).
const PASSED_HEADERS: [&str; 4] = [
    "content-type",
    "cache-control",
    "openai-processing-ms",
    "x-request-id",
];

#[derive(Deserialize)]
struct UsageOnly {
    usage: Option<Usage>,
}

/// One call to forward.
pub struct Forward<'a> {
    pub client: reqwest::Client,
    pub pool: &'a Pool,
    pub endpoint: &'a Endpoint,
    pub method: &'a Method,
    pub query: &'a str,
    pub content_type: Option<&'a str>,
    /// The body as sent upstream (the caller's, or re-encoded with limits).
    pub body: Bytes,
    /// The caller's body size, for estimates.
    pub request_bytes: usize,
    /// The API's timeout: for the whole of a sync call, for the first byte
    /// and each chunk of a stream.
    pub timeout: Duration,
    pub max_response_bytes: usize,
    pub stream: Option<StreamLimits>,
}

fn upstream_error(message: &str) -> ApiError {
    ApiError::new(ErrorCode::UpstreamError, message.to_owned())
}

fn timed_out(timeout: Duration) -> ApiError {
    upstream_timeout(format!(
        "the upstream did not answer within {} ms",
        timeout.as_millis()
    ))
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Reads a whole answer, refusing one larger than `limit`.
async fn read_limited(res: reqwest::Response, limit: usize) -> Result<Bytes, ApiError> {
    if res
        .content_length()
        .is_some_and(|n| n > u64::try_from(limit).unwrap_or(u64::MAX))
    {
        return Err(upstream_error(
            "the upstream answer is larger than the gateway accepts",
        ));
    }
    let mut body = BytesMut::new();
    let mut chunks = res.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| {
            tracing::warn!(error = %e, "reading the upstream response failed");
            upstream_error("the upstream response broke off")
        })?;
        if body.len() + chunk.len() > limit {
            return Err(upstream_error(
                "the upstream answer is larger than the gateway accepts",
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

pub async fn forward(call: Call, f: Forward<'_>, mut headers: Headers) -> Reply {
    let deadline = tokio::time::Instant::now() + f.timeout;
    let method =
        reqwest::Method::from_bytes(f.method.as_str().as_bytes()).unwrap_or(reqwest::Method::POST);
    let path = f.endpoint.upstream_path();
    let targets = f.pool.order(tally_store::now_ms());
    let last = targets.len().saturating_sub(1);
    let upstream_started = Instant::now();
    let mut failure = upstream_error("no upstream answered");
    let mut response = None;
    for (i, target) in targets.into_iter().enumerate() {
        let mut url = format!("{}{}", target.url, path);
        if !f.query.is_empty() {
            url.push('?');
            url.push_str(f.query);
        }
        let mut req = f.client.request(method.clone(), &url).body(f.body.clone());
        if let Some(ct) = f.content_type {
            req = req.header(reqwest::header::CONTENT_TYPE, ct);
        }
        if let Some(auth) = &target.auth {
            req = req.header(reqwest::header::AUTHORIZATION, auth.clone());
        }
        match tokio::time::timeout_at(deadline, req.send()).await {
            Err(_) => {
                target.failed(tally_store::now_ms());
                failure = timed_out(f.timeout);
                break;
            }
            Ok(Err(e)) => {
                tracing::warn!(api = %call.api, upstream = %target.url, error = %e, "upstream request failed");
                target.failed(tally_store::now_ms());
                failure = upstream_error("the upstream could not be reached");
            }
            Ok(Ok(res)) => {
                let s = res.status().as_u16();
                if matches!(s, 502..=504) && i < last {
                    tracing::warn!(api = %call.api, upstream = %target.url, status = s, "upstream failed; trying the next");
                    target.failed(tally_store::now_ms());
                    continue;
                }
                if s >= 500 {
                    target.failed(tally_store::now_ms());
                }
                response = Some(res);
                break;
            }
        }
    }
    let Some(res) = response else {
        let upstream_us = micros(upstream_started.elapsed());
        let _ = call
            .finish(Outcome::failed(failure.code, upstream_us))
            .await;
        return error_reply(failure, headers);
    };

    let status = StatusCode::from_u16(res.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    for name in PASSED_HEADERS {
        if let Some(v) = res.headers().get(name) {
            if let Ok(v) = HeaderValue::from_bytes(v.as_bytes()) {
                headers.push((HeaderName::from_static(name), v));
            }
        }
    }
    let is_sse = res
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if let Some(limits) = f.stream.filter(|_| status.is_success() && is_sse) {
        let chunks = res.bytes_stream().map(|r| r.map_err(|e| e.to_string()));
        return stream_reply(
            call,
            status,
            headers,
            Box::pin(chunks),
            Counted::Scan {
                request_bytes: f.request_bytes,
            },
            upstream_started,
            limits,
        );
    }

    let body =
        match tokio::time::timeout_at(deadline, read_limited(res, f.max_response_bytes)).await {
            Ok(Ok(b)) => b,
            Ok(Err(err)) => {
                let upstream_us = micros(upstream_started.elapsed());
                let _ = call.finish(Outcome::failed(err.code, upstream_us)).await;
                return error_reply(err, headers);
            }
            Err(_) => {
                let upstream_us = micros(upstream_started.elapsed());
                let err = timed_out(f.timeout);
                let _ = call.finish(Outcome::failed(err.code, upstream_us)).await;
                return error_reply(err, headers);
            }
        };
    let upstream_us = micros(upstream_started.elapsed());
    let usage = serde_json::from_slice::<UsageOnly>(&body)
        .ok()
        .and_then(|u| u.usage);
    let (tokens_in, tokens_out) = match (usage, f.endpoint) {
        (Some(u), _) => (u.prompt_tokens, u.completion_tokens),
        (None, Endpoint::Http { .. }) => (0, 0),
        (None, _) => (
            estimate_tokens(f.request_bytes),
            estimate_tokens(body.len()),
        ),
    };
    let outcome = Outcome::answered(status.as_u16(), tokens_in, tokens_out, upstream_us);
    call.reply_after_record(outcome, status, headers, body)
        .await
}
