//! Just enough HTTP/1.1 for the benchmark: the mock upstream's request parsing and a
//! one-request-per-connection client for the REST setup calls.
//!
//! Why hand-written: xtask stays free of an HTTP stack (it builds in seconds and adds nothing to
//! the lock file that the product does not already need). Only what the two sides use is here:
//! Content-Length and chunked bodies, `Connection: close`, no TLS, no redirects.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The start line and headers of a request or response.
#[derive(Debug, Default, PartialEq)]
pub struct Head {
    pub start: String,
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// The value of a header, matched case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.header(name).is_some_and(|value| {
            value
                .split(',')
                .any(|part| part.trim().eq_ignore_ascii_case(token))
        })
    }

    pub fn chunked(&self) -> bool {
        self.has_token("transfer-encoding", "chunked")
    }

    pub fn wants_close(&self) -> bool {
        self.has_token("connection", "close") || self.start.ends_with("HTTP/1.0")
    }

    fn content_length(&self) -> io::Result<Option<usize>> {
        self.header("content-length")
            .map(|value| {
                value
                    .trim()
                    .parse()
                    .map_err(|_| invalid("bad Content-Length"))
            })
            .transpose()
    }
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// Reads a start line and headers; `None` when the peer closed the connection before a new
/// message began (the normal end of a keep-alive connection).
pub fn read_head(reader: &mut impl BufRead) -> io::Result<Option<Head>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut head = Head {
        start: line.trim_end().to_string(),
        headers: Vec::new(),
    };
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end();
        if line.is_empty() {
            return Ok(Some(head));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid("header line without a colon"))?;
        head.headers
            .push((name.trim().to_string(), value.trim().to_string()));
    }
}

/// Reads the body that follows `head`. Without Content-Length or chunking a request has no
/// body, while a response runs to the end of the connection (`to_eof`).
pub fn read_body(reader: &mut impl BufRead, head: &Head, to_eof: bool) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    if head.chunked() {
        read_chunked(reader, &mut body)?;
    } else if let Some(len) = head.content_length()? {
        body.resize(len, 0);
        reader.read_exact(&mut body)?;
    } else if to_eof {
        reader.read_to_end(&mut body)?;
    }
    Ok(body)
}

fn read_chunked(reader: &mut impl BufRead, body: &mut Vec<u8>) -> io::Result<()> {
    let mut line = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let size = line.trim().split(';').next().unwrap_or_default();
        let size = usize::from_str_radix(size, 16).map_err(|_| invalid("bad chunk size"))?;
        if size == 0 {
            // Trailers, up to the blank line that ends the message.
            loop {
                line.clear();
                if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
                    return Ok(());
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        line.clear();
        reader.read_line(&mut line)?;
    }
}

/// A response as the client saw it.
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// One request on a fresh connection (`Connection: close`). `body` is sent as JSON.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&[u8]>,
) -> io::Result<Response> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: application/json\r\n"
    );
    if let Some(token) = bearer {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    match body {
        Some(body) => head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        )),
        None if method != "GET" => head.push_str("Content-Length: 0\r\n"),
        None => {}
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if let Some(body) = body {
        stream.write_all(body)?;
    }
    let mut reader = BufReader::new(stream);
    let head = read_head(&mut reader)?.ok_or_else(|| invalid("connection closed early"))?;
    let status = head
        .start
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| invalid("bad status line"))?;
    let body = read_body(&mut reader, &head, true)?;
    Ok(Response { status, body })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn reads_a_request_with_a_content_length_body() {
        let raw =
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
        let mut reader = &raw[..];
        let head = read_head(&mut reader).unwrap().unwrap();
        assert_eq!(head.start, "POST /v1/chat/completions HTTP/1.1");
        assert_eq!(head.header("content-length"), Some("5"));
        assert_eq!(read_body(&mut reader, &head, false).unwrap(), b"hello");
        assert!(read_head(&mut reader).unwrap().is_none());
    }

    #[test]
    fn decodes_a_chunked_body_with_trailers() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=1\r\nde\r\n0\r\nX-T: 1\r\n\r\n";
        let mut reader = &raw[..];
        let head = read_head(&mut reader).unwrap().unwrap();
        assert!(head.chunked());
        assert_eq!(read_body(&mut reader, &head, true).unwrap(), b"abcde");
    }

    #[test]
    fn a_request_without_length_has_no_body_but_a_response_runs_to_eof() {
        let raw = b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n";
        let mut reader = &raw[..];
        let head = read_head(&mut reader).unwrap().unwrap();
        assert!(head.wants_close());
        assert!(read_body(&mut reader, &head, false).unwrap().is_empty());

        let raw = b"HTTP/1.1 200 OK\r\n\r\n{}";
        let mut reader = &raw[..];
        let head = read_head(&mut reader).unwrap().unwrap();
        assert_eq!(read_body(&mut reader, &head, true).unwrap(), b"{}");
    }
}
