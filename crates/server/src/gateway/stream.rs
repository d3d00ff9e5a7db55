//! Streamed answers (G2): server-sent events passed through as they arrive,
//! counted, and billed for what was delivered however the stream ends.
//!
//! Policy:
//! - The upstream's bytes are split into events as the SSE format defines
//!   them (lines ended by CR, LF or CRLF; an event ends at a blank line).
//!   Complete events go out at once; a partial event waits for its end, so an
//!   event split across chunks is judged whole. The closing `data: [DONE]`
//!   event (its data exactly `[DONE]`, never text that merely contains it) is
//!   held back until the call is recorded, so a client that saw it knows the
//!   call is in usage and the ledger.
//! - Bounded in every way: an event larger than `max_event_bytes` ends the
//!   stream as an upstream error; the upstream gets `idle` between chunks and
//!   the whole call `deadline`; a client that does not take a chunk within
//!   `send_timeout`, or hangs up while the upstream is silent, counts as gone.
//!   No ending leaves the task, the upstream connection or the hold behind.
//! - Billing: the upstream's `usage` event when it came; otherwise the input
//!   is estimated from the request and the output from what was delivered
//!   (every text of each choice's delta: content, refusal, reasoning, tool
//!   and function call arguments and names). A stream that delivered nothing
//!   costs nothing. The answer's status records how it ended (200, 499 when
//!   the client went away, 502/504 when the upstream broke off or stalled).

use std::pin::Pin;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::Value;
use tally_common::ErrorCode;
use tokio::sync::mpsc;

use super::call::{Call, Outcome};
use super::sandbox::estimate_tokens;
use super::wire::{header, Headers, Reply, ReplyBody};
use crate::error::ApiError;

pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send>>;

#[derive(Deserialize, Default, Clone, Copy)]
pub struct Usage {
    #[serde(default, alias = "input_tokens")]
    pub prompt_tokens: u64,
    #[serde(default, alias = "output_tokens")]
    pub completion_tokens: u64,
}

/// How a stream's tokens are known.
pub enum Counted {
    /// The sandbox knows them up front (billed whole when it was all delivered).
    Known { tokens_in: u64, tokens_out: u64 },
    /// Read from the events: a `usage` object when the upstream sends one,
    /// else estimated from the request size and the delivered deltas.
    Scan { request_bytes: usize },
}

/// Limits of one stream; see the module policy.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    pub idle: Duration,
    pub deadline: tokio::time::Instant,
    pub send_timeout: Duration,
    pub max_event_bytes: usize,
}

/// One complete event, as raw bytes and as read.
#[derive(Debug, PartialEq, Eq)]
pub struct Event {
    pub raw: Bytes,
    /// The `data` lines joined by `\n`; `None` when it has none.
    pub data: Option<Vec<u8>>,
}

impl Event {
    pub fn is_done(&self) -> bool {
        self.data.as_deref() == Some(b"[DONE]")
    }
}

/// Splits bytes into server-sent events (see the module policy).
#[derive(Default)]
pub struct SseSplitter {
    buf: BytesMut,
    /// Where scanning resumes.
    scan: usize,
    /// Start of the line being scanned.
    line_start: usize,
    /// The last byte scanned was a CR (a LF right after it ends no line).
    after_cr: bool,
    data: Option<Vec<u8>>,
}

/// An event grew past the limit without ending.
#[derive(Debug, PartialEq, Eq)]
pub struct Oversized;

impl SseSplitter {
    pub fn feed(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete event, if the bytes fed so far hold one.
    pub fn next_event(&mut self, max_event_bytes: usize) -> Result<Option<Event>, Oversized> {
        while self.scan < self.buf.len() {
            let i = self.scan;
            let b = self.buf[i];
            self.scan += 1;
            if self.after_cr && b == b'\n' {
                self.after_cr = false;
                self.line_start = self.scan;
                continue;
            }
            self.after_cr = b == b'\r';
            if b != b'\n' && b != b'\r' {
                continue;
            }
            let line_start = std::mem::replace(&mut self.line_start, self.scan);
            if line_start == i {
                // A blank line: the event ends here (with a CRLF's LF, if it
                // is already in the buffer).
                let mut end = self.scan;
                if b == b'\r' && self.buf.get(end) == Some(&b'\n') {
                    end += 1;
                    self.after_cr = false;
                }
                let raw = self.buf.split_to(end).freeze();
                self.scan = 0;
                self.line_start = 0;
                return Ok(Some(Event {
                    raw,
                    data: self.data.take(),
                }));
            }
            self.line(line_start, i);
        }
        if self.buf.len() > max_event_bytes {
            return Err(Oversized);
        }
        Ok(None)
    }

    fn line(&mut self, from: usize, to: usize) {
        let line = &self.buf[from..to];
        let value = match line.iter().position(|&c| c == b':') {
            Some(0) => return, // a comment
            Some(colon) if &line[..colon] == b"data" => {
                let v = &line[colon + 1..];
                v.strip_prefix(b" ").unwrap_or(v)
            }
            Some(_) => return,
            None if line == b"data" => &[][..],
            None => return,
        };
        let data = self.data.get_or_insert_with(Vec::new);
        if !data.is_empty() {
            data.push(b'\n');
        }
        data.extend_from_slice(value);
    }

    /// What is left after the last complete event (at the end of a stream).
    pub fn rest(&mut self) -> Bytes {
        self.scan = 0;
        self.line_start = 0;
        self.data = None;
        self.buf.split().freeze()
    }
}

/// What the delivered events say about the call's tokens.
#[derive(Default)]
struct Tally {
    usage: Option<Usage>,
    chars: usize,
    deltas: u64,
}

/// Characters of every string in a choice's delta (or its `text`), the
/// role aside.
fn delta_chars(v: &Value) -> usize {
    match v {
        Value::String(s) => s.chars().count(),
        Value::Array(items) => items.iter().map(delta_chars).sum(),
        Value::Object(map) => map
            .iter()
            .filter(|(k, _)| k.as_str() != "role" && k.as_str() != "type")
            .map(|(_, v)| delta_chars(v))
            .sum(),
        _ => 0,
    }
}

impl Tally {
    fn add(&mut self, data: &[u8]) {
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
                let chars =
                    c.get("delta").map_or(0, delta_chars) + c.get("text").map_or(0, delta_chars);
                if chars > 0 {
                    self.chars += chars;
                    self.deltas += 1;
                }
            }
        }
    }

    fn delivered(&self) -> bool {
        self.deltas > 0 || self.usage.is_some()
    }

    fn tokens(&self, request_bytes: usize) -> (u64, u64) {
        match self.usage {
            Some(u) => (u.prompt_tokens, u.completion_tokens),
            None => (
                estimate_tokens(request_bytes),
                self.deltas
                    .max(estimate_tokens(self.chars).min(self.deltas * 4)),
            ),
        }
    }
}

fn upstream_error(message: &str) -> ApiError {
    ApiError::new(ErrorCode::UpstreamError, message.to_owned())
}

pub fn upstream_timeout(message: String) -> ApiError {
    ApiError::new(ErrorCode::UpstreamTimeout, message)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Why the pass-through loop stopped.
enum End {
    Done,
    ClientGone,
    Broke(ApiError),
}

/// Sends `bytes` unless the client has gone or stopped reading.
async fn send(tx: &mpsc::Sender<Bytes>, bytes: Bytes, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, tx.send(bytes)).await,
        Ok(Ok(()))
    )
}

/// Streams `chunks` to the caller through a channel fed by a task that splits
/// and counts events and, at the end, records the call before the closing
/// `[DONE]` goes out.
pub fn stream_reply(
    call: Call,
    status: StatusCode,
    mut headers: Headers,
    mut chunks: ChunkStream,
    counted: Counted,
    upstream_started: Instant,
    limits: StreamLimits,
) -> Reply {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    crate::telemetry::spawn_detached(async move {
        let mut splitter = SseSplitter::default();
        let mut tally = Tally::default();
        let mut held_back: Option<Bytes> = None;
        let end = 'pass: loop {
            let wait = tokio::time::timeout_at(
                limits
                    .deadline
                    .min(tokio::time::Instant::now() + limits.idle),
                chunks.next(),
            );
            // A client that hangs up while the upstream thinks ends the call
            // now, not at the next chunk.
            let next = tokio::select! {
                () = tx.closed() => break End::ClientGone,
                next = wait => next,
            };
            let chunk = match next {
                Err(_) if tokio::time::Instant::now() >= limits.deadline => {
                    break End::Broke(upstream_timeout(
                        "the stream ran past the gateway's time limit".into(),
                    ))
                }
                Err(_) => {
                    break End::Broke(upstream_timeout(format!(
                        "the upstream sent nothing for {} ms",
                        limits.idle.as_millis()
                    )))
                }
                Ok(None) => break End::Done,
                Ok(Some(Ok(c))) => c,
                Ok(Some(Err(e))) => {
                    tracing::warn!(api = %call.api, error = %e, "upstream stream broke off");
                    break End::Broke(upstream_error("the upstream stream broke off"));
                }
            };
            splitter.feed(&chunk);
            // The complete events of this chunk go out together.
            let mut out = BytesMut::new();
            let mut pending = Tally::default();
            loop {
                match splitter.next_event(limits.max_event_bytes) {
                    Err(Oversized) => {
                        break 'pass End::Broke(upstream_error(
                            "the upstream sent an event larger than the gateway accepts",
                        ))
                    }
                    Ok(None) => break,
                    Ok(Some(event)) if event.is_done() => held_back = Some(event.raw),
                    Ok(Some(event)) => {
                        if let Some(data) = &event.data {
                            pending.add(data);
                        }
                        out.extend_from_slice(&event.raw);
                    }
                }
            }
            if out.is_empty() {
                continue;
            }
            if !send(&tx, out.freeze(), limits.send_timeout).await {
                break End::ClientGone;
            }
            tally.usage = pending.usage.or(tally.usage);
            tally.chars += pending.chars;
            tally.deltas += pending.deltas;
        };
        // Whatever followed the last complete event goes out as it is.
        let rest = splitter.rest();
        if matches!(end, End::Done) && !rest.is_empty() {
            let _ = send(&tx, rest, limits.send_timeout).await;
        }
        let complete = matches!(end, End::Done);
        let (tokens_in, tokens_out) = match counted {
            Counted::Known {
                tokens_in,
                tokens_out,
            } if complete => (tokens_in, tokens_out),
            Counted::Known { tokens_in, .. } => (tokens_in, tally.tokens(0).1),
            Counted::Scan { request_bytes } => tally.tokens(request_bytes),
        };
        let (status, error) = match &end {
            End::Broke(e) => (e.code.http_status(), Some(e.code)),
            // nginx's "client closed request".
            End::ClientGone => (499, None),
            End::Done => (200, None),
        };
        let outcome = Outcome {
            status,
            error,
            billable: complete || tally.delivered(),
            tokens_in,
            tokens_out,
            upstream_us: micros(upstream_started.elapsed()),
        };
        let recorded = call.finish(outcome).await.is_some();
        let closing = match end {
            End::ClientGone => None,
            End::Broke(err) => Some(error_event(&err)),
            End::Done if !recorded => Some(error_event(&ApiError::new(
                ErrorCode::Unavailable,
                "the call could not be recorded, so it was not charged",
            ))),
            End::Done => held_back,
        };
        if let Some(closing) = closing {
            let _ = send(&tx, closing, limits.send_timeout).await;
        }
    });
    headers.retain(|(n, _)| n != actix_web::http::header::CONTENT_TYPE);
    headers.extend(header("content-type", "text/event-stream"));
    headers.extend(header("cache-control", "no-cache"));
    headers.extend(header("x-accel-buffering", "no"));
    Reply {
        status,
        headers,
        body: ReplyBody::Stream(rx),
        summary: None,
    }
}

fn error_event(err: &ApiError) -> Bytes {
    Bytes::from(format!(
        "data: {}\n\n",
        serde_json::to_string(&err.body()).unwrap_or_default()
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn events(input: &[&[u8]]) -> Vec<Event> {
        let mut s = SseSplitter::default();
        let mut out = Vec::new();
        for piece in input {
            s.feed(piece);
            while let Some(e) = s.next_event(1 << 20).unwrap() {
                out.push(e);
            }
        }
        out
    }

    #[test]
    fn events_split_anywhere_are_read_whole() {
        let text = b"data: {\"a\":1}\n\ndata: [DONE]\n\n";
        for cut in 1..text.len() {
            let got = events(&[&text[..cut], &text[cut..]]);
            assert_eq!(got.len(), 2, "cut at {cut}");
            assert_eq!(got[0].data.as_deref(), Some(&b"{\"a\":1}"[..]));
            assert!(got[1].is_done());
            assert_eq!(&got[1].raw[..], b"data: [DONE]\n\n");
        }
    }

    #[test]
    fn done_inside_model_output_is_not_the_end() {
        let got =
            events(&[b"data: {\"choices\":[{\"delta\":{\"content\":\"data: [DONE]\"}}]}\n\n"]);
        assert_eq!(got.len(), 1);
        assert!(!got[0].is_done());
    }

    #[test]
    fn every_line_ending_ends_lines() {
        for text in [
            &b"data: x\r\n\r\ndata: [DONE]\r\n\r\n"[..],
            &b"data: x\r\rdata: [DONE]\r\r"[..],
            &b"event: m\ndata: x\n: comment\ndata: y\n\n"[..],
        ] {
            let got = events(&[text]);
            assert!(!got.is_empty(), "{text:?}");
            assert!(got[0].data.as_deref().unwrap().starts_with(b"x"));
        }
        let got = events(&[b"data: x\ndata: y\n\n"]);
        assert_eq!(got[0].data.as_deref(), Some(&b"x\ny"[..]));
        let got = events(&[b"data: x\r", b"\n\r", b"\ndata: [DONE]\r\n\r\n"]);
        assert_eq!(got.len(), 2);
        assert!(got[1].is_done());
    }

    #[test]
    fn an_event_that_never_ends_is_refused() {
        let mut s = SseSplitter::default();
        s.feed(&[b'x'; 100]);
        assert_eq!(s.next_event(64), Err(Oversized));
    }

    #[test]
    fn tool_call_deltas_are_counted() {
        let mut t = Tally::default();
        t.add(br#"{"choices":[{"delta":{"role":"assistant","tool_calls":[{"index":0,"function":{"name":"get","arguments":"{\"city\":\"Paris\"}"}}]}}]}"#);
        assert_eq!(t.deltas, 1);
        assert!(t.chars >= 16, "{}", t.chars);
        assert!(t.tokens(0).1 >= 1);
        let mut empty = Tally::default();
        empty.add(br#"{"choices":[{"delta":{"role":"assistant"}}]}"#);
        assert!(!empty.delivered());
    }

    #[test]
    fn usage_wins_over_the_estimate() {
        let mut t = Tally::default();
        t.add(br#"{"choices":[{"delta":{"content":"Hello"}}]}"#);
        t.add(br#"{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2}}"#);
        assert_eq!(t.tokens(100), (7, 2));
    }
}
