//! The benchmark's upstream: a fixed OpenAI chat completion, answered as fast as a thread per
//! connection can, so that "through the gateway minus direct" is the gateway's own cost.
//!
//! HTTP/1.1 keep-alive (oha and the gateway's connection pool both reuse connections);
//! `POST …/chat/completions` gets the completion, `GET /health` (the catalog's health path)
//! gets 200, anything else 404.
//!
//! A chat completion asking for `"stream": true` gets a paced stream instead (`--stream`): server-
//! sent events in OpenAI's `chat.completion.chunk` format, [`STREAM_CHUNKS`] content chunks
//! [`STREAM_PACE`] apart (the first at once), then a chunk with no choices and the `usage` the
//! gateway bills from, then `data: [DONE]`, chunked transfer encoding, the connection kept. The
//! chunks follow a fixed schedule from the request's arrival (not a sleep after each write), so
//! a late wake-up does not push the rest of the stream back. A thread per connection is enough:
//! a streaming connection's thread sleeps between chunks.

use std::io::{self, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::http1::{read_body, read_head};

pub const HEALTH_PATH: &str = "/health";
pub const MODEL: &str = "bench-model";

/// A small, complete `chat.completion` with the `usage` the gateway prices from.
const COMPLETION: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench-model","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":2,"total_tokens":14}}"#;

/// Content chunks of a streamed answer.
pub const STREAM_CHUNKS: u32 = 20;
/// Time between two content chunks of a streamed answer.
pub const STREAM_PACE: Duration = Duration::from_millis(50);
/// The `usage` of a streamed answer's last chunk.
const STREAM_USAGE: &str = r#"{"prompt_tokens":12,"completion_tokens":20,"total_tokens":32}"#;

/// Counts of what the mock answered.
#[derive(Default)]
struct Counters {
    completions: AtomicU64,
    streams: AtomicU64,
}

/// A running mock; its threads live until the process exits.
pub struct MockUpstream {
    pub addr: SocketAddr,
    counters: Arc<Counters>,
}

impl MockUpstream {
    pub fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind the mock upstream")?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let shared = counters.clone();
        thread::Builder::new()
            .name("mock-accept".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    let counters = shared.clone();
                    // A connection that cannot get a thread is dropped; the client sees the
                    // error and oha reports it.
                    let _ = thread::Builder::new()
                        .name("mock-conn".into())
                        .spawn(move || serve(stream, &counters));
                }
            })
            .context("cannot start the mock upstream thread")?;
        Ok(Self { addr, counters })
    }

    /// Chat completions answered so far, streamed or not.
    pub fn completions(&self) -> u64 {
        self.counters.completions.load(Ordering::Relaxed)
    }

    /// Streamed chat completions begun so far.
    pub fn streams(&self) -> u64 {
        self.counters.streams.load(Ordering::Relaxed)
    }
}

fn serve(stream: TcpStream, counters: &Counters) {
    // A broken connection ends only that connection; the peer reports it.
    let _ = serve_connection(stream, counters);
}

/// Whether a request body asks for a streamed answer (`"stream": true`). The substring test
/// first keeps JSON parsing off the path of the plain calls the latency runs measure.
fn wants_stream(body: &[u8]) -> bool {
    let key = b"\"stream\"";
    body.windows(key.len()).any(|w| w == key)
        && serde_json::from_slice::<serde_json::Value>(body)
            .is_ok_and(|json| json["stream"] == true)
}

fn serve_connection(stream: TcpStream, counters: &Counters) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    while let Some(head) = read_head(&mut reader)? {
        let arrived = Instant::now();
        // The body is read to keep the connection in step, and looked at only for `stream`.
        let body = read_body(&mut reader, &head, false)?;
        let mut parts = head.start.split_whitespace();
        let method = parts.next().unwrap_or_default();
        let path = parts.next().unwrap_or_default();
        let path = path.split('?').next().unwrap_or_default();
        let (status, body) = match (method, path) {
            ("POST", path) if path.ends_with("/chat/completions") => {
                counters.completions.fetch_add(1, Ordering::Relaxed);
                if wants_stream(&body) {
                    counters.streams.fetch_add(1, Ordering::Relaxed);
                    let close = head.wants_close();
                    write_stream(&mut writer, arrived, close)?;
                    if close {
                        break;
                    }
                    continue;
                }
                ("200 OK", COMPLETION)
            }
            ("GET", HEALTH_PATH) => ("200 OK", r#"{"status":"ok"}"#),
            _ => (
                "404 Not Found",
                r#"{"error":{"message":"not found","type":"invalid_request_error"}}"#,
            ),
        };
        let close = head.wants_close();
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: {}\r\n\r\n{body}",
            body.len(),
            if close { "close" } else { "keep-alive" },
        );
        writer.write_all(response.as_bytes())?;
        if close {
            break;
        }
    }
    Ok(())
}

/// The `data:` payload of content chunk `i` (the first also carries the role, as OpenAI's do).
fn content_chunk(i: u32) -> String {
    let delta = if i == 0 {
        r#"{"role":"assistant","content":"ok"}"#
    } else {
        r#"{"content":" ok"}"#
    };
    format!(
        r#"{{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"{MODEL}","choices":[{{"index":0,"delta":{delta},"logprobs":null,"finish_reason":null}}]}}"#
    )
}

/// The last chunk before `[DONE]`: no choices, the usage (as `stream_options.include_usage`
/// asks for; the gateway sets that option on what it forwards).
fn usage_chunk() -> String {
    format!(
        r#"{{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"{MODEL}","choices":[],"usage":{STREAM_USAGE}}}"#
    )
}

/// One server-sent event as one HTTP chunk, in one write (one TCP segment with nodelay).
fn write_event(writer: &mut impl Write, data: &str) -> io::Result<()> {
    let event = format!("data: {data}\n\n");
    writer.write_all(format!("{:x}\r\n{event}\r\n", event.len()).as_bytes())
}

/// The paced stream: content chunk `i` at `arrived + i * STREAM_PACE`, the usage chunk and
/// `[DONE]` right after the last one.
fn write_stream(writer: &mut impl Write, arrived: Instant, close: bool) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
         Transfer-Encoding: chunked\r\nConnection: {}\r\n\r\n",
        if close { "close" } else { "keep-alive" },
    );
    writer.write_all(head.as_bytes())?;
    for i in 0..STREAM_CHUNKS {
        let due = arrived + STREAM_PACE * i;
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        }
        write_event(writer, &content_chunk(i))?;
    }
    write_event(writer, &usage_chunk())?;
    write_event(writer, "[DONE]")?;
    writer.write_all(b"0\r\n\r\n")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::http1::request;

    #[test]
    fn answers_chat_completions_and_health() {
        let mock = MockUpstream::start().unwrap();
        let chat = request(
            mock.addr,
            "POST",
            "/v1/chat/completions",
            Some("tk_live_x"),
            Some(br#"{"model":"bench-model","messages":[]}"#),
        )
        .unwrap();
        assert_eq!(chat.status, 200);
        let json: serde_json::Value = serde_json::from_slice(&chat.body).unwrap();
        assert_eq!(json["usage"]["total_tokens"], 14);
        assert_eq!(json["choices"][0]["message"]["content"], "ok");
        assert_eq!(mock.completions(), 1);

        assert_eq!(
            request(mock.addr, "GET", HEALTH_PATH, None, None)
                .unwrap()
                .status,
            200
        );
        assert_eq!(
            request(mock.addr, "GET", "/nope", None, None)
                .unwrap()
                .status,
            404
        );
    }

    #[test]
    fn keeps_a_connection_open_for_several_requests() {
        let mock = MockUpstream::start().unwrap();
        let mut stream = TcpStream::connect(mock.addr).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        for _ in 0..3 {
            stream
                .write_all(
                    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
                )
                .unwrap();
            let head = read_head(&mut reader).unwrap().unwrap();
            assert!(head.start.starts_with("HTTP/1.1 200"));
            assert!(!read_body(&mut reader, &head, false).unwrap().is_empty());
        }
        assert_eq!(mock.completions(), 3);
    }

    #[test]
    fn streams_paced_chunks_with_usage_then_done() {
        let mock = MockUpstream::start().unwrap();
        let started = Instant::now();
        let answer = request(
            mock.addr,
            "POST",
            "/v1/chat/completions",
            Some("tk_live_x"),
            Some(br#"{"model":"bench-model","messages":[],"stream":true}"#),
        )
        .unwrap();
        assert!(started.elapsed() >= STREAM_PACE * (STREAM_CHUNKS - 1));
        assert_eq!(answer.status, 200);
        let text = String::from_utf8(answer.body).unwrap();
        let events: Vec<&str> = text
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| e.strip_prefix("data: ").unwrap())
            .collect();
        assert_eq!(events.len(), STREAM_CHUNKS as usize + 2);
        assert_eq!(events[events.len() - 1], "[DONE]");
        let first: serde_json::Value = serde_json::from_str(events[0]).unwrap();
        assert_eq!(first["object"], "chat.completion.chunk");
        assert_eq!(first["choices"][0]["delta"]["content"], "ok");
        let usage: serde_json::Value = serde_json::from_str(events[events.len() - 2]).unwrap();
        assert_eq!(usage["usage"]["completion_tokens"], 20);
        assert_eq!((mock.completions(), mock.streams()), (1, 1));
    }

    #[test]
    fn only_stream_true_asks_for_a_stream() {
        assert!(wants_stream(br#"{"model":"m","stream":true}"#));
        assert!(wants_stream(br#"{"model":"m", "stream" : true}"#));
        assert!(!wants_stream(br#"{"model":"m","stream":false}"#));
        assert!(!wants_stream(br#"{"model":"m","content":"\"stream\""}"#));
        assert!(!wants_stream(b"not json \"stream\""));
    }
}
