//! One admitted gateway call from its admission to its record: what it is
//! (key, API, endpoint), its limiter and its [`Charge`], and how it ends.
//!
//! Every ending goes through [`Call::finish`]: the charge is priced from what
//! the call used (`services::settle`), the key's limits and quotas are settled
//! with the cost (`shared_limits`) while the group-commit writer records the
//! call.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use actix_web::http::StatusCode;
use bytes::Bytes;
use tally_common::ErrorCode;
use tally_store::usage::CallRecord;

use super::keys::KeyInfo;
use super::limits::KeyLimiter;
use super::shared_limits::{Admission, SharedLimits};
use super::wire::{error_reply, header, Headers, Reply, ReplyBody, Summary};
use crate::error::ApiError;
use crate::services::settle::{Charge, Settler, Usage};

/// The state a call carries from admission to its record.
pub struct Call {
    pub id: String,
    pub key: Arc<KeyInfo>,
    pub limiter: Arc<Mutex<KeyLimiter>>,
    /// Where the key's limits are settled (Redis or this instance).
    pub limits: Arc<SharedLimits>,
    /// Who admitted the call (nobody yet: `Local` with nothing reserved).
    pub admission: Admission,
    pub api: String,
    pub model: Option<String>,
    pub endpoint: String,
    pub stream: bool,
    pub client_id: Option<String>,
    pub started: Instant,
    /// What the key's credit quotas reserved for the call at admission.
    pub reserved: i64,
    pub charge: Charge,
    pub settler: Arc<Settler>,
    /// Counts the call in `tally_gateway_calls_in_flight` while it lives.
    pub in_flight: InFlight,
}

/// A call in flight, holding credits, from its attribution to a key until
/// its record is written (or it is dropped): `tally_gateway_calls_in_flight`.
#[derive(Debug)]
pub struct InFlight(());

impl InFlight {
    pub fn start() -> Self {
        metrics::gauge!("tally_gateway_calls_in_flight").increment(1.0);
        InFlight(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!("tally_gateway_calls_in_flight").decrement(1.0);
    }
}

/// How a call ended, for its record.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub status: u16,
    pub error: Option<ErrorCode>,
    /// Whether the caller received something billable (`services::settle`).
    pub billable: bool,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub upstream_us: u64,
}

impl Outcome {
    /// Turned away or failed before anything was delivered: no cost.
    pub fn failed(code: ErrorCode, upstream_us: u64) -> Outcome {
        Outcome {
            status: code.http_status(),
            error: Some(code),
            billable: false,
            tokens_in: 0,
            tokens_out: 0,
            upstream_us,
        }
    }

    /// A whole answer: 2xx answers are billed, the upstream's own 4xx and 5xx
    /// answers are not (its 5xx count as upstream errors).
    pub fn answered(status: u16, tokens_in: u64, tokens_out: u64, upstream_us: u64) -> Outcome {
        let ok = (200..300).contains(&status);
        Outcome {
            status,
            error: (status >= 500).then_some(ErrorCode::UpstreamError),
            billable: ok,
            tokens_in,
            tokens_out,
            upstream_us,
        }
    }
}

impl Call {
    /// Prices the call, settles the key's limits and records it (waiting for
    /// the commit). `None` when the record could not be written: nothing is
    /// then charged.
    pub async fn finish(self, o: Outcome) -> Option<Summary> {
        let Call {
            id,
            key,
            limiter,
            limits,
            admission,
            api,
            model,
            endpoint,
            stream,
            client_id,
            started,
            reserved,
            mut charge,
            settler,
            in_flight: _in_flight,
        } = self;
        let cost = charge.price(&Usage {
            billable: o.billable,
            tokens_in: o.tokens_in,
            tokens_out: o.tokens_out,
            compute_us: o.upstream_us,
        });
        let now = tally_store::now_ms();
        let latency_us = i64::try_from(started.elapsed().as_micros()).unwrap_or(i64::MAX);
        let record = CallRecord {
            id: id.clone(),
            time: now,
            namespace_id: key.namespace_id.clone(),
            environment: key.environment,
            key_id: key.id.clone(),
            api,
            model,
            endpoint,
            request_type: if stream { "stream" } else { "sync" },
            status: i64::from(o.status),
            error: o.error.map(|c| c.as_str().to_owned()),
            latency_us,
            upstream_latency_us: i64::try_from(o.upstream_us).unwrap_or(i64::MAX),
            tokens_in: i64::try_from(o.tokens_in).unwrap_or(i64::MAX),
            tokens_out: i64::try_from(o.tokens_out).unwrap_or(i64::MAX),
            cost_micros: cost,
            client_id,
            seller_namespace_id: None,
            platform_fee_micros: 0,
        };
        let (tokens_in, tokens_out) = (record.tokens_in, record.tokens_out);
        metrics::counter!("tally_gateway_calls_total", "status" => o.status.to_string())
            .increment(1);
        metrics::histogram!(
            "tally_gateway_call_duration_seconds",
            "request_type" => if stream { "stream" } else { "sync" }
        )
        .record(latency_us as f64 / 1e6);
        // The key's limits are settled while the record commits: with Redis
        // that round trip costs the call no time, and both are done before
        // the call is answered.
        let settle = limits.settle(
            &key,
            &limiter,
            admission,
            &id,
            now,
            reserved,
            cost,
            o.tokens_in + o.tokens_out,
        );
        let waiting = Instant::now();
        let ((), recorded) = tokio::join!(settle, settler.record(record, charge));
        // How long the answer waited for its record's commit (the writer's lag).
        metrics::histogram!("tally_gateway_commit_wait_seconds")
            .record(waiting.elapsed().as_secs_f64());
        if !recorded {
            return None;
        }
        Some(Summary {
            call_id: id,
            latency_us,
            tokens_in,
            tokens_out,
            cost_micros: cost,
        })
    }

    /// A call turned away after it was attributed to a key and an API: it is
    /// recorded (with no cost) so the key's statistics show it.
    pub async fn refuse(self, e: ApiError, headers: Headers) -> Reply {
        let _ = self.finish(Outcome::failed(e.code, 0)).await;
        error_reply(e, headers)
    }

    /// Records a finished sync call and answers it, or answers 503 if the
    /// record could not be written (the call is then not charged).
    pub async fn reply_after_record(
        self,
        outcome: Outcome,
        status: StatusCode,
        mut headers: Headers,
        body: Bytes,
    ) -> Reply {
        match self.finish(outcome).await {
            Some(summary) => {
                headers.extend(header("x-tally-cost-micros", summary.cost_micros));
                Reply {
                    status,
                    headers,
                    body: ReplyBody::Full(body),
                    summary: Some(summary),
                }
            }
            None => error_reply(
                ApiError::new(
                    ErrorCode::Unavailable,
                    "the call could not be recorded, so it was not charged; retry it",
                ),
                headers,
            ),
        }
    }
}
