//! What a call may cost and what it costs (G3, C3).
//!
//! Policy: the hold taken before a call is forwarded must bound what the
//! upstream can return, because the capture is never more than the hold.
//! - Input tokens are bounded by the body: a token is at least one byte of the
//!   text it encodes, and JSON only adds bytes, so `body bytes + 16` covers
//!   every message, prompt and embedding input, arrays included.
//! - Output tokens are bounded per choice by `max_tokens` /
//!   `max_completion_tokens`; a request without one is forwarded with the
//!   API's default written in (`default_max_output_tokens`, else 4096), so the
//!   upstream cannot produce more than the hold assumed. Choices multiply it:
//!   `n` for chat and completions, `best_of` (generated server-side) and the
//!   number of prompts for completions.
//! - The numbers are checked: `max_tokens` and `max_completion_tokens` are
//!   integers of 1 to [`MAX_OUTPUT_TOKENS`], `n` 1 to [`MAX_CHOICES`],
//!   `best_of` 1 to [`MAX_BEST_OF`] and at least `n`; anything else is a 400
//!   before any credit is held.
//! - Compute time is bounded by the longest the gateway lets the call run.
//! - Plain HTTP APIs are priced per request and per compute second; one priced
//!   per token is billed by the `usage` its upstream reports, up to the
//!   declared `default_max_output_tokens` (the catalog refuses token pricing
//!   without it).

use serde_json::Value;
use tally_common::{CatalogApiConfig, ErrorCode, OutputLimitParam, Pricing, Protocol};

use crate::error::ApiError;

/// Output tokens assumed for a hold when neither the request nor the API's
/// pricing says how many a call may produce.
pub const FALLBACK_MAX_OUTPUT_TOKENS: u64 = 4096;
/// Largest `max_tokens` a request may ask for.
pub const MAX_OUTPUT_TOKENS: u64 = 10_000_000;
/// Largest `n`.
pub const MAX_CHOICES: u64 = 128;
/// Largest `best_of`.
pub const MAX_BEST_OF: u64 = 20;
/// Input tokens added to the body's size for what the upstream wraps around
/// the messages.
const INPUT_SLACK: u64 = 16;

/// Which kind of call is priced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Completions,
    Embeddings,
    /// `/v1/apis/{slug}/{path}` of a plain HTTP API.
    Http,
}

/// The most a call may cost, and whether its JSON body was changed (an
/// output limit written in) and must be forwarded re-encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    pub max_cost: i64,
    pub rewritten: bool,
}

/// What a call costs: every part of the pricing added, each rounded up.
pub fn cost(p: &Pricing, tokens_in: u64, tokens_out: u64, compute_us: u64) -> i64 {
    let per = |units: u64, price: i64, per_units: u64| -> i128 {
        let total = i128::from(units) * i128::from(price.max(0));
        let per_units = i128::from(per_units);
        (total + per_units - 1) / per_units
    };
    let total = i128::from(p.per_request_micros.max(0))
        + per(tokens_in, p.per_1k_input_tokens_micros, 1000)
        + per(tokens_out, p.per_1k_output_tokens_micros, 1000)
        + per(compute_us, p.per_compute_second_micros, 1_000_000);
    i64::try_from(total).unwrap_or(i64::MAX)
}

/// The platform's share of a call's cost, in basis points, rounded down (the
/// seller keeps the odd micro-credit).
pub fn platform_fee(cost: i64, fee_bps: u32) -> i64 {
    let fee = i128::from(cost) * i128::from(fee_bps.min(10_000)) / 10_000;
    i64::try_from(fee).unwrap_or(cost)
}

fn default_output(p: &Pricing) -> u64 {
    match p.default_max_output_tokens {
        0 => FALLBACK_MAX_OUTPUT_TOKENS,
        n => u64::from(n),
    }
}

fn invalid(message: String) -> ApiError {
    ApiError::new(ErrorCode::InvalidRequest, message)
}

/// An optional integer field of `lo..=hi`.
fn bounded(json: &Value, field: &str, lo: u64, hi: u64) -> Result<Option<u64>, ApiError> {
    match json.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .filter(|n| (lo..=hi).contains(n))
            .map(Some)
            .ok_or_else(|| invalid(format!("'{field}' must be an integer from {lo} to {hi}"))),
    }
}

/// How many prompts a completions request carries: a string or a list of
/// token ids is one, a list of strings or of token lists is one per item.
fn prompts(json: &Value) -> u64 {
    match json.get("prompt") {
        Some(Value::Array(items)) if items.iter().any(|i| !i.is_number()) => {
            (items.len() as u64).max(1)
        }
        _ => 1,
    }
}

/// Checks the numbers of an OpenAI request, writes in the output limit it
/// lacks, and bounds what it can cost. `compute_limit_us` is the longest the
/// call may run.
pub fn bound_openai(
    api: &CatalogApiConfig,
    kind: Kind,
    json: &mut Value,
    body_len: usize,
    compute_limit_us: u64,
) -> Result<Bound, ApiError> {
    let p = &api.pricing;
    let tokens_in = body_len as u64 + INPUT_SLACK;
    if kind == Kind::Embeddings {
        return Ok(Bound {
            max_cost: cost(p, tokens_in, 0, compute_limit_us),
            rewritten: false,
        });
    }
    let max_tokens = bounded(json, "max_tokens", 1, MAX_OUTPUT_TOKENS)?;
    let max_completion = bounded(json, "max_completion_tokens", 1, MAX_OUTPUT_TOKENS)?;
    let n = bounded(json, "n", 1, MAX_CHOICES)?.unwrap_or(1);
    let mut choices = n;
    if kind == Kind::Completions {
        let best_of = bounded(json, "best_of", 1, MAX_BEST_OF)?.unwrap_or(n);
        if best_of < n {
            return Err(invalid("'best_of' must be at least 'n'".into()));
        }
        choices = best_of.saturating_mul(prompts(json));
    }
    // With both set, the upstream stops at the smaller one.
    let asked = match (max_tokens, max_completion) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let (per_choice, rewritten) = match asked {
        Some(n) => (n, false),
        None => {
            let limit = default_output(p);
            let field = match (kind, api.output_limit_param) {
                (Kind::Chat, OutputLimitParam::MaxCompletionTokens) => "max_completion_tokens",
                _ => "max_tokens",
            };
            if let Some(obj) = json.as_object_mut() {
                obj.insert(field.to_owned(), Value::from(limit));
            }
            (limit, true)
        }
    };
    Ok(Bound {
        max_cost: cost(
            p,
            tokens_in,
            per_choice.saturating_mul(choices),
            compute_limit_us,
        ),
        rewritten,
    })
}

/// The most a call to a plain HTTP API can cost.
pub fn bound_http(api: &CatalogApiConfig, body_len: usize, compute_limit_us: u64) -> i64 {
    let p = &api.pricing;
    let tokens_in = if p.per_1k_input_tokens_micros > 0 {
        body_len as u64 + INPUT_SLACK
    } else {
        0
    };
    let tokens_out = if p.per_1k_output_tokens_micros > 0 {
        default_output(p)
    } else {
        0
    };
    cost(p, tokens_in, tokens_out, compute_limit_us)
}

/// Whether an API is reached by model on the OpenAI endpoints (and so never
/// through `/v1/apis/{slug}/…`, which could not price it).
pub fn priced_by_model(api: &CatalogApiConfig) -> bool {
    api.protocol == Protocol::Openai
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use serde_json::json;

    use super::*;

    fn api(per_1k_out: i64, default_out: u32) -> CatalogApiConfig {
        serde_json::from_value(json!({
            "slug": "a", "name": "A", "models": ["m"],
            "pricing": {"per_1k_output_tokens_micros": per_1k_out,
                        "default_max_output_tokens": default_out}
        }))
        .unwrap()
    }

    #[test]
    fn costs_add_up_every_part_and_round_up() {
        let p = Pricing {
            per_request_micros: 100,
            per_1k_input_tokens_micros: 500,
            per_1k_output_tokens_micros: 1500,
            per_compute_second_micros: 1000,
            default_max_output_tokens: 0,
        };
        // 100 + ceil(3 * 0.5) + ceil(2 * 1.5) + ceil(0.0015 * 1000)
        assert_eq!(cost(&p, 3, 2, 1500), 100 + 2 + 3 + 2);
        assert_eq!(cost(&Pricing::default(), 1_000_000, 1_000_000, 1), 0);
    }

    #[test]
    fn a_request_without_an_output_limit_is_given_the_default() {
        let mut body = json!({"model": "m", "messages": []});
        let b = bound_openai(&api(1000, 100), Kind::Chat, &mut body, 0, 0).unwrap();
        assert!(b.rewritten);
        assert_eq!(body["max_tokens"], 100);
        assert_eq!(b.max_cost, 100);
        let mut body = json!({"model": "m", "max_tokens": 7});
        let b = bound_openai(&api(1000, 100), Kind::Chat, &mut body, 0, 0).unwrap();
        assert!(!b.rewritten);
        assert_eq!(b.max_cost, 7);
    }

    #[test]
    fn choices_multiply_the_output_bound() {
        let mut chat = json!({"model": "m", "max_tokens": 10, "n": 3});
        let b = bound_openai(&api(1000, 0), Kind::Chat, &mut chat, 0, 0).unwrap();
        assert_eq!(b.max_cost, 30);
        let mut comp = json!({"model": "m", "max_tokens": 10, "n": 2, "best_of": 5,
                              "prompt": ["a", "b", "c"]});
        let b = bound_openai(&api(1000, 0), Kind::Completions, &mut comp, 0, 0).unwrap();
        assert_eq!(b.max_cost, 10 * 5 * 3);
        let mut ids = json!({"model": "m", "max_tokens": 10, "prompt": [1, 2, 3]});
        let b = bound_openai(&api(1000, 0), Kind::Completions, &mut ids, 0, 0).unwrap();
        assert_eq!(b.max_cost, 10, "a list of token ids is one prompt");
    }

    #[test]
    fn out_of_range_numbers_are_refused() {
        for bad in [
            json!({"max_tokens": -5}),
            json!({"max_tokens": 0}),
            json!({"max_tokens": 1e308}),
            json!({"max_tokens": 1.5}),
            json!({"max_tokens": "10"}),
            json!({"max_completion_tokens": 0}),
            json!({"n": 0}),
            json!({"n": 129}),
            json!({"n": -1}),
        ] {
            let mut body = bad.clone();
            assert!(
                bound_openai(&api(1, 0), Kind::Chat, &mut body, 0, 0).is_err(),
                "{bad}"
            );
        }
        let mut body = json!({"n": 3, "best_of": 2});
        assert!(bound_openai(&api(1, 0), Kind::Completions, &mut body, 0, 0).is_err());
    }

    #[test]
    fn input_is_bounded_by_the_body() {
        let mut api = api(0, 0);
        api.pricing.per_1k_input_tokens_micros = 1000;
        let mut body = json!({"input": ["x", "y"]});
        let b = bound_openai(&api, Kind::Embeddings, &mut body, 984, 0).unwrap();
        assert_eq!(b.max_cost, 1000);
    }
}
