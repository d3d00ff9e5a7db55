//! The benchmark's upstream: a fixed OpenAI chat completion, answered as fast as a thread per
//! connection can, so that "through the gateway minus direct" is the gateway's own cost.
//!
//! HTTP/1.1 keep-alive (oha and the gateway's connection pool both reuse connections);
//! `POST …/chat/completions` gets the completion, `GET /health` (the catalog's health path)
//! gets 200, anything else 404.

use std::io::{self, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;

use anyhow::{Context, Result};

use crate::http1::{read_body, read_head};

pub const HEALTH_PATH: &str = "/health";
pub const MODEL: &str = "bench-model";

/// A small, complete `chat.completion` with the `usage` the gateway prices from.
const COMPLETION: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench-model","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":2,"total_tokens":14}}"#;

/// A running mock; its threads live until the process exits.
pub struct MockUpstream {
    pub addr: SocketAddr,
    completions: Arc<AtomicU64>,
}

impl MockUpstream {
    pub fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind the mock upstream")?;
        let addr = listener.local_addr()?;
        let completions = Arc::new(AtomicU64::new(0));
        let counter = completions.clone();
        thread::Builder::new()
            .name("mock-accept".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    let counter = counter.clone();
                    // A connection that cannot get a thread is dropped; the client sees the
                    // error and oha reports it.
                    let _ = thread::Builder::new()
                        .name("mock-conn".into())
                        .spawn(move || serve(stream, &counter));
                }
            })
            .context("cannot start the mock upstream thread")?;
        Ok(Self { addr, completions })
    }

    /// Chat completions answered so far.
    pub fn completions(&self) -> u64 {
        self.completions.load(Ordering::Relaxed)
    }
}

fn serve(stream: TcpStream, completions: &AtomicU64) {
    // A broken connection ends only that connection; the peer reports it.
    let _ = serve_connection(stream, completions);
}

fn serve_connection(stream: TcpStream, completions: &AtomicU64) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    while let Some(head) = read_head(&mut reader)? {
        // The body is read (and dropped) to keep the connection in step.
        read_body(&mut reader, &head, false)?;
        let mut parts = head.start.split_whitespace();
        let method = parts.next().unwrap_or_default();
        let path = parts.next().unwrap_or_default();
        let path = path.split('?').next().unwrap_or_default();
        let (status, body) = match (method, path) {
            ("POST", path) if path.ends_with("/chat/completions") => {
                completions.fetch_add(1, Ordering::Relaxed);
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
}
