//! The catalog of callable APIs: what the gateway forwards to and what a call costs.
//!
//! Operators manage the catalog through `/api/v1/admin/catalog` or the
//! `[[catalog]]` tables of the config file. An API is owned by the platform or
//! by a seller namespace, which earns what its API's calls cost, less the
//! platform fee (C8). Members of any namespace read the public view
//! (`CatalogApi`), which never shows upstream addresses or their credentials.

use serde::{Deserialize, Serialize};

/// How the gateway talks to an API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// OpenAI-compatible chat/completions/embeddings, reached at `/v1/...` by model name.
    #[default]
    Openai,
    /// Any JSON-over-HTTP API, reached at `/v1/apis/{slug}/{path}`.
    Http,
}

/// The request field that limits a chat call's output. The gateway writes it
/// in when a request sets no limit, so the upstream cannot produce more than
/// the call's hold assumed: `max_tokens` (the default, understood by most
/// OpenAI-compatible servers) or `max_completion_tokens` (required by
/// OpenAI's reasoning models).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OutputLimitParam {
    #[default]
    MaxTokens,
    MaxCompletionTokens,
}

/// What a call costs, in micro-credits (1 credit = 1,000,000). Every part is
/// added: a chat call pays `per_request + input/1000 * per_1k_input +
/// output/1000 * per_1k_output + seconds * per_compute_second`, rounded up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct Pricing {
    pub per_request_micros: i64,
    pub per_1k_input_tokens_micros: i64,
    pub per_1k_output_tokens_micros: i64,
    pub per_compute_second_micros: i64,
    /// The output limit written into a request that sets no `max_tokens`
    /// (and so the most it can be billed for per choice); 0 means 4096. For
    /// a plain HTTP API priced per output token, the most one call is billed.
    pub default_max_output_tokens: u32,
}

/// One upstream target of a pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Upstream {
    /// Base URL; the gateway appends the request path (`/v1/chat/completions`
    /// for OpenAI APIs, `{path}` for HTTP APIs), e.g. `https://api.example.com`.
    pub url: String,
    /// Sent as `Authorization: Bearer …` to the upstream. Write-only: reads show
    /// `"********"` when one is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// Relative share of traffic among healthy targets (default 1).
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// An API as operators configure it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CatalogApiConfig {
    /// Lower-case letters, digits and `-`, 1 to 64 characters; unique.
    pub slug: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub protocol: Protocol,
    /// Model names served (OpenAI protocol); requests pick the API by `model`.
    #[serde(default)]
    pub models: Vec<String>,
    /// Live traffic goes to these, load-balanced by weight with failover.
    #[serde(default)]
    pub upstreams: Vec<Upstream>,
    /// Test keys go here; when empty they get the built-in sandbox responder.
    #[serde(default)]
    pub test_upstreams: Vec<Upstream>,
    #[serde(default)]
    pub pricing: Pricing,
    /// Which field limits a chat call's output (see [`OutputLimitParam`]).
    #[serde(default)]
    pub output_limit_param: OutputLimitParam,
    /// Whole-call timeout towards the upstream, 100 to 600,000 ms (default 60,000).
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Path probed with `GET` every few seconds on each upstream (e.g. `/health`);
    /// without it, targets are judged by the calls they serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_path: Option<String>,
    /// Disabled APIs answer 503 and are left out of `/v1/models`.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The seller namespace that owns the API and is credited for its calls
    /// (C8); absent for APIs of the platform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_namespace_id: Option<String>,
}

fn default_timeout() -> u64 {
    60_000
}

fn yes() -> bool {
    true
}

/// An API as operators see it: its configuration plus where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CatalogApiAdmin {
    #[serde(flatten)]
    pub config: CatalogApiConfig,
    /// `config` when it comes from the config file (which wins at every start),
    /// `api` when it was made through the REST API.
    pub source: String,
    pub created_at: String,
    pub updated_at: String,
}

/// Partial change of an API; absent fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UpdateCatalogApi {
    pub name: Option<String>,
    pub description: Option<String>,
    pub models: Option<Vec<String>>,
    /// Replaces the pool. An upstream given with `api_key: "********"` keeps
    /// the credential stored for the same URL.
    pub upstreams: Option<Vec<Upstream>>,
    pub test_upstreams: Option<Vec<Upstream>>,
    pub pricing: Option<Pricing>,
    pub output_limit_param: Option<OutputLimitParam>,
    pub timeout_ms: Option<u64>,
    pub health_path: Option<String>,
    pub enabled: Option<bool>,
    /// A seller namespace id, or `""` to give the API back to the platform.
    pub owner_namespace_id: Option<String>,
}

/// An API as callers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CatalogApi {
    pub slug: String,
    pub name: String,
    pub description: String,
    pub protocol: Protocol,
    pub models: Vec<String>,
    pub pricing: Pricing,
    /// Whether live keys can call it (it has live upstreams and is enabled).
    pub live: bool,
    /// What test keys reach: `sandbox` or `upstream`.
    pub test_mode: String,
    pub enabled: bool,
    /// `platform`, or `seller` for an API a seller namespace owns.
    pub owner: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CatalogList {
    pub items: Vec<CatalogApi>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CatalogAdminList {
    pub items: Vec<CatalogApiAdmin>,
}
