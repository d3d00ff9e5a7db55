//! What the gateway's HTTP layer hands in ([`Inbound`]) and gets back
//! ([`Reply`]), and the headers every answer may carry.

use std::time::Instant;

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use bytes::Bytes;
use tokio::sync::mpsc;

use super::limits::LimitState;
use crate::error::ApiError;
use crate::services::pricing::Kind;

pub type Headers = Vec<(HeaderName, HeaderValue)>;

/// Which gateway endpoint a call came in on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
    Embeddings,
    /// `/v1/apis/{slug}/{path}`.
    Http {
        slug: String,
        path: String,
    },
}

impl Endpoint {
    pub fn upstream_path(&self) -> &str {
        match self {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Embeddings => "/v1/embeddings",
            Endpoint::Http { path, .. } => path,
        }
    }

    pub fn name(&self) -> String {
        match self {
            Endpoint::Http { slug, path } => format!("/v1/apis/{slug}{path}"),
            other => other.upstream_path().to_owned(),
        }
    }

    /// How a call to this endpoint is priced.
    pub fn kind(&self) -> Kind {
        match self {
            Endpoint::Chat => Kind::Chat,
            Endpoint::Completions => Kind::Completions,
            Endpoint::Embeddings => Kind::Embeddings,
            Endpoint::Http { .. } => Kind::Http,
        }
    }
}

/// One incoming gateway call, after the HTTP layer read it.
pub struct Inbound {
    pub endpoint: Endpoint,
    pub method: Method,
    pub query: String,
    pub content_type: Option<String>,
    pub client_id: Option<String>,
    pub body: Bytes,
    pub started: Instant,
}

/// What the gateway answers.
pub struct Reply {
    pub status: StatusCode,
    pub headers: Headers,
    pub body: ReplyBody,
    /// Set when the call was recorded (sync calls; streams record at the end).
    pub summary: Option<Summary>,
}

pub enum ReplyBody {
    Full(Bytes),
    /// Chunks as they arrive; the channel closes after the call is recorded.
    Stream(mpsc::Receiver<Bytes>),
}

/// A recorded call's measurements (for the Playground and response headers).
#[derive(Debug, Clone)]
pub struct Summary {
    pub call_id: String,
    pub latency_us: i64,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub cost_micros: i64,
}

/// A JSON error answer (`ErrorBody`, `Content-Type: application/json`).
pub fn error_reply(err: ApiError, mut headers: Headers) -> Reply {
    let body = serde_json::to_vec(&err.body()).unwrap_or_default();
    headers.retain(|(n, _)| n != actix_web::http::header::CONTENT_TYPE);
    headers.extend(header("content-type", "application/json"));
    Reply {
        status: StatusCode::from_u16(err.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        headers,
        body: ReplyBody::Full(Bytes::from(body)),
        summary: None,
    }
}

pub fn header(name: &'static str, value: impl ToString) -> Option<(HeaderName, HeaderValue)> {
    Some((
        HeaderName::from_static(name),
        HeaderValue::from_str(&value.to_string()).ok()?,
    ))
}

pub fn rate_headers(s: &LimitState) -> Headers {
    [
        header("ratelimit-limit", s.limit),
        header("ratelimit-remaining", s.remaining),
        header("ratelimit-reset", s.reset_secs),
    ]
    .into_iter()
    .flatten()
    .collect()
}
