//! Forwarding to upstream pools (G2, G3): sync calls are read whole and
//! answered after their record commits; streams pass each chunk through as it
//! arrives, count tokens from the events, and hold back only the final
//! `[DONE]` event until the call is recorded.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::Value;
use tally_common::ErrorCode;
use tokio::sync::mpsc;

use super::catalog::{Api, Pool};
use super::sandbox::estimate_tokens;
use super::{error_reply, header, Call, Endpoint, Gateway, Inbound, Outcome, Reply, ReplyBody};
use crate::error::ApiError;

pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send>>;

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

#[derive(Deserialize, Default, Clone, Copy)]
struct Usage {
    #[serde(default, alias = "input_tokens")]
    prompt_tokens: u64,
    #[serde(default, alias = "output_tokens")]
    completion_tokens: u64,
}

/// How a stream's tokens are known.
pub enum Counted {
    /// The sandbox knows them up front.
    Known { tokens_in: u64, tokens_out: u64 },
    /// Read from the events: a `usage` object when the upstream sends one,
    /// else estimated from the request size and the content deltas.
    Scan { request_bytes: usize },
}

/// Finds usage and content in server-sent events split anywhere across chunks.
#[derive(Default)]
struct SseScanner {
    line: Vec<u8>,
    usage: Option<Usage>,
    content_chars: usize,
    content_events: u64,
}

impl SseScanner {
    fn feed(&mut self, chunk: &[u8]) {
        for &b in chunk {
            if b == b'\n' {
                let line = std::mem::take(&mut self.line);
                self.line_done(&line);
            } else if self.line.len() < 1 << 20 {
                self.line.push(b);
            }
        }
    }

    fn line_done(&mut self, line: &[u8]) {
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        let data = data.trim_ascii();
        if data.is_empty() || data == b"[DONE]" {
            return;
        }
        let Ok(v) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            if let Ok(u) = serde_json::from_value::<Usage>(u.clone()) {
                self.usage = Some(u);
            }
        }
        if let Some(choices) = v.get("choices").and_then(Value::as_array) {
            for c in choices {
                let text = c
                    .pointer("/delta/content")
                    .or_else(|| c.get("text"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if !text.is_empty() {
                    self.content_chars += text.chars().count();
                    self.content_events += 1;
                }
            }
        }
    }

    fn tokens(&self, request_bytes: usize) -> (u64, u64) {
        match self.usage {
            Some(u) => (u.prompt_tokens, u.completion_tokens),
            None => (
                estimate_tokens(request_bytes),
                self.content_events
                    .max(estimate_tokens(self.content_chars).min(self.content_events * 4)),
            ),
        }
    }
}

fn upstream_error(message: &str) -> ApiError {
    ApiError::new(ErrorCode::UpstreamError, message.to_owned())
}

fn upstream_timeout(timeout: Duration) -> ApiError {
    ApiError::new(
        ErrorCode::UpstreamTimeout,
        format!(
            "the upstream did not answer within {} ms",
            timeout.as_millis()
        ),
    )
}

/// The body sent upstream: the caller's bytes, except that a stream asks for
/// usage in its last event so the gateway can bill it exactly.
fn upstream_body(inb: &Inbound, json: Option<Value>, stream: bool) -> Bytes {
    match json {
        Some(mut j) if stream && inb.endpoint != Endpoint::Embeddings => {
            if let Some(obj) = j.as_object_mut() {
                let opts = obj
                    .entry("stream_options")
                    .or_insert_with(|| Value::Object(Default::default()));
                if let Some(o) = opts.as_object_mut() {
                    o.insert("include_usage".into(), Value::Bool(true));
                }
            }
            Bytes::from(j.to_string())
        }
        _ => inb.body.clone(),
    }
}

pub async fn forward(
    gw: Arc<Gateway>,
    call: Call,
    api: Arc<Api>,
    pool: &Pool,
    inb: Inbound,
    json: Option<Value>,
    mut headers: Vec<(HeaderName, HeaderValue)>,
) -> Reply {
    let timeout = Duration::from_millis(api.config.timeout_ms);
    let deadline = tokio::time::Instant::now() + timeout;
    let body = upstream_body(&inb, json, call.stream);
    let method = reqwest::Method::from_bytes(inb.method.as_str().as_bytes())
        .unwrap_or(reqwest::Method::POST);
    let path = inb.endpoint.upstream_path();
    let targets = pool.order(tally_store::now_ms());
    let last = targets.len().saturating_sub(1);
    let upstream_started = Instant::now();
    let client = gw.forwarding_client();
    let mut failure = upstream_error("no upstream answered");
    let mut response = None;
    for (i, target) in targets.into_iter().enumerate() {
        let mut url = format!("{}{}", target.url, path);
        if !inb.query.is_empty() {
            url.push('?');
            url.push_str(&inb.query);
        }
        let mut req = client.request(method.clone(), &url).body(body.clone());
        if let Some(ct) = &inb.content_type {
            req = req.header(reqwest::header::CONTENT_TYPE, ct.as_str());
        }
        if let Some(auth) = &target.auth {
            req = req.header(reqwest::header::AUTHORIZATION, auth.clone());
        }
        match tokio::time::timeout_at(deadline, req.send()).await {
            Err(_) => {
                target.failed(tally_store::now_ms());
                failure = upstream_timeout(timeout);
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
        let code = failure.code;
        let status = code.http_status();
        let upstream_us = micros(upstream_started.elapsed());
        let outcome = Outcome {
            status,
            error: Some(code),
            tokens_in: 0,
            tokens_out: 0,
            upstream_us,
        };
        let _ = gw.finish(call, outcome).await;
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
    if call.stream && status.is_success() && is_sse {
        let chunks = res.bytes_stream().map(|r| r.map_err(|e| e.to_string()));
        let request_bytes = inb.body.len();
        return stream_reply(
            &gw,
            call,
            status,
            headers,
            Box::pin(chunks),
            Counted::Scan { request_bytes },
            upstream_started,
        );
    }

    let body = match tokio::time::timeout_at(deadline, res.bytes()).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            tracing::warn!(api = %call.api, error = %e, "reading the upstream response failed");
            let upstream_us = micros(upstream_started.elapsed());
            let err = upstream_error("the upstream response broke off");
            let outcome = Outcome {
                status: 502,
                error: Some(err.code),
                tokens_in: 0,
                tokens_out: 0,
                upstream_us,
            };
            let _ = gw.finish(call, outcome).await;
            return error_reply(err, headers);
        }
        Err(_) => {
            let upstream_us = micros(upstream_started.elapsed());
            let err = upstream_timeout(timeout);
            let outcome = Outcome {
                status: 504,
                error: Some(err.code),
                tokens_in: 0,
                tokens_out: 0,
                upstream_us,
            };
            let _ = gw.finish(call, outcome).await;
            return error_reply(err, headers);
        }
    };
    let upstream_us = micros(upstream_started.elapsed());
    let usage = serde_json::from_slice::<UsageOnly>(&body)
        .ok()
        .and_then(|u| u.usage);
    let (tokens_in, tokens_out) = match (usage, &inb.endpoint) {
        (Some(u), _) => (u.prompt_tokens, u.completion_tokens),
        (None, Endpoint::Http { .. }) => (0, 0),
        (None, _) => (estimate_tokens(inb.body.len()), estimate_tokens(body.len())),
    };
    let outcome = Outcome {
        status: status.as_u16(),
        // The upstream's own 4xx answers pass through as they are; its 5xx
        // answers count as upstream errors.
        error: status.is_server_error().then_some(ErrorCode::UpstreamError),
        tokens_in,
        tokens_out,
        upstream_us,
    };
    gw.reply_after_record(call, outcome, status, headers, body)
        .await
}

/// Streams `chunks` to the caller through a channel fed by a task that
/// counts tokens and, at the end, records the call before closing the stream.
pub fn stream_reply(
    gw: &Arc<Gateway>,
    call: Call,
    status: StatusCode,
    mut headers: Vec<(HeaderName, HeaderValue)>,
    mut chunks: ChunkStream,
    counted: Counted,
    upstream_started: Instant,
) -> Reply {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let gw = gw.clone();
    let idle = Duration::from_millis(
        gw.catalog()
            .by_slug(&call.api)
            .map_or(60_000, |a| a.config.timeout_ms),
    );
    tokio::spawn(async move {
        let mut scanner = SseScanner::default();
        let mut held_back: Option<Bytes> = None;
        let mut client_gone = false;
        let mut broke: Option<ApiError> = None;
        loop {
            let next = match tokio::time::timeout(idle, chunks.next()).await {
                Ok(n) => n,
                Err(_) => {
                    broke = Some(upstream_timeout(idle));
                    break;
                }
            };
            let chunk = match next {
                None => break,
                Some(Ok(c)) => c,
                Some(Err(e)) => {
                    tracing::warn!(api = %call.api, error = %e, "upstream stream broke off");
                    broke = Some(upstream_error("the upstream stream broke off"));
                    break;
                }
            };
            scanner.feed(&chunk);
            // Everything but the closing `[DONE]` goes out at once.
            let (now, later) = split_done(chunk);
            if let Some(later) = later {
                held_back = Some(later);
            }
            if !now.is_empty() && tx.send(now).await.is_err() {
                client_gone = true;
                break;
            }
        }
        let (tokens_in, tokens_out) = match counted {
            Counted::Known {
                tokens_in,
                tokens_out,
            } => (tokens_in, tokens_out),
            Counted::Scan { request_bytes } => scanner.tokens(request_bytes),
        };
        let (status, error) = match (&broke, client_gone) {
            (Some(e), _) => (e.code.http_status(), Some(e.code)),
            // The client went away: nginx's "client closed request"; the
            // tokens it received are still billed.
            (None, true) => (499, None),
            (None, false) => (200, None),
        };
        let outcome = Outcome {
            status,
            error,
            tokens_in,
            tokens_out,
            upstream_us: micros(upstream_started.elapsed()),
        };
        let recorded = gw.finish(call, outcome).await.is_some();
        if !recorded || broke.is_some() {
            let err = broke.unwrap_or_else(|| {
                ApiError::new(
                    ErrorCode::Unavailable,
                    "the call could not be recorded, so it was not charged",
                )
            });
            let event = format!(
                "data: {}\n\n",
                serde_json::to_string(&err.body()).unwrap_or_default()
            );
            let _ = tx.send(Bytes::from(event)).await;
        } else if let Some(done) = held_back {
            let _ = tx.send(done).await;
        }
    });
    headers.extend(header("content-type", "text/event-stream"));
    headers.extend(header("cache-control", "no-cache"));
    headers.extend(header("x-accel-buffering", "no"));
    headers.retain({
        let mut seen_ct = false;
        move |(n, _)| {
            if n.as_str() == "content-type" {
                let keep = !seen_ct;
                seen_ct = true;
                return keep;
            }
            true
        }
    });
    Reply {
        status,
        headers,
        body: ReplyBody::Stream(rx),
        summary: None,
    }
}

/// Splits a chunk before its `data: [DONE]` event, if it has one.
fn split_done(chunk: Bytes) -> (Bytes, Option<Bytes>) {
    const DONE: &[u8] = b"data: [DONE]";
    match chunk.windows(DONE.len()).position(|w| w == DONE) {
        Some(at) => (chunk.slice(..at), Some(chunk.slice(at..))),
        None => (chunk, None),
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn the_scanner_reads_usage_and_content_across_chunk_boundaries() {
        let events = "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n\
                      data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\n\
                      data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2}}\n\n\
                      data: [DONE]\n\n";
        let mut s = SseScanner::default();
        for piece in events.as_bytes().chunks(5) {
            s.feed(piece);
        }
        assert_eq!(s.content_events, 2);
        assert_eq!(s.tokens(100), (7, 2));
        let mut estimated = SseScanner::default();
        estimated.feed(&events.as_bytes()[..events.find("data: {\"choices\":[],").unwrap()]);
        assert_eq!(estimated.tokens(40), (10, 2));
    }

    #[test]
    fn only_the_done_event_is_held_back() {
        let (now, later) = split_done(Bytes::from_static(b"data: {}\n\ndata: [DONE]\n\n"));
        assert_eq!(&now[..], b"data: {}\n\n");
        assert_eq!(&later.unwrap()[..], b"data: [DONE]\n\n");
        let (now, later) = split_done(Bytes::from_static(b"data: {}\n\n"));
        assert_eq!(&now[..], b"data: {}\n\n");
        assert!(later.is_none());
    }
}
