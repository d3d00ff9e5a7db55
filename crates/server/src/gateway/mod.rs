//! The gateway data plane (G1-G5): authenticate a key, route to a catalog
//! API, enforce limits and quotas, hold credits, forward (or answer from the
//! sandbox), capture the cost and record the call.
//!
//! Policy (the hot path, ARCHITECTURE.md): no database read per call on the
//! read side (keys, catalog, balances and limits live in memory), one
//! group-committed write per call, and a call is answered only once that write
//! has committed. Failures are JSON errors with stable codes: 401 for bad,
//! revoked or expired keys, 403 for scopes, 404 for unknown APIs and models,
//! 402 when the balance cannot cover the call, 429 for limits and quotas,
//! 502/504 when the upstream fails or is too slow.

pub mod accounts;
pub mod catalog;
pub mod http;
pub mod keys;
pub mod limits;
mod proxy;
pub mod sandbox;
mod writer;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use bytes::Bytes;
use dashmap::DashMap;
use serde_json::Value;
use tally_common::{CatalogApiConfig, Environment, ErrorCode, Pricing, Protocol};
use tally_store::usage::CallRecord;
use tally_store::Store;
use tokio::sync::mpsc;

use crate::config::GatewaySettings;
use crate::error::ApiError;
use accounts::{Accounts, Hold};
use catalog::{Api, Catalog};
use keys::{KeyCache, KeyInfo};
use limits::{Counted, KeyLimiter, LimitState, Refusal};
use writer::Writer;

/// Output tokens assumed for a hold when neither the request nor the API's
/// pricing says how many a call may produce.
const FALLBACK_MAX_OUTPUT_TOKENS: u64 = 4096;

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
    fn upstream_path(&self) -> &str {
        match self {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Embeddings => "/v1/embeddings",
            Endpoint::Http { path, .. } => path,
        }
    }

    fn name(&self) -> String {
        match self {
            Endpoint::Http { slug, path } => format!("/v1/apis/{slug}{path}"),
            other => other.upstream_path().to_owned(),
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
    pub headers: Vec<(HeaderName, HeaderValue)>,
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

pub struct Gateway {
    store: Store,
    keys: KeyCache,
    limiters: DashMap<String, Arc<Mutex<KeyLimiter>>>,
    pub accounts: Accounts,
    catalog: RwLock<Arc<Catalog>>,
    writer: Writer,
    client: reqwest::Client,
    settings: GatewaySettings,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Limiter state is plain counters, consistent after any panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn error_reply(err: ApiError, mut headers: Vec<(HeaderName, HeaderValue)>) -> Reply {
    let body = serde_json::to_vec(&err.body()).unwrap_or_default();
    // The body is the API's JSON error, whatever headers came with it.
    headers.retain(|(name, _)| name != actix_web::http::header::CONTENT_TYPE);
    headers.push((
        actix_web::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    ));
    Reply {
        status: StatusCode::from_u16(err.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        headers,
        body: ReplyBody::Full(Bytes::from(body)),
        summary: None,
    }
}

fn header(name: &'static str, value: impl ToString) -> Option<(HeaderName, HeaderValue)> {
    Some((
        HeaderName::from_static(name),
        HeaderValue::from_str(&value.to_string()).ok()?,
    ))
}

fn rate_headers(s: &LimitState) -> Vec<(HeaderName, HeaderValue)> {
    [
        header("ratelimit-limit", s.limit),
        header("ratelimit-remaining", s.remaining),
        header("ratelimit-reset", s.reset_secs),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The state a call carries from admission to its record.
struct Call {
    id: String,
    key: Arc<KeyInfo>,
    limiter: Arc<Mutex<KeyLimiter>>,
    api: String,
    model: Option<String>,
    endpoint: String,
    stream: bool,
    client_id: Option<String>,
    started: Instant,
    pricing: Pricing,
    max_cost: i64,
    hold: Option<Hold>,
    /// The seller namespace that owns the API (C8).
    seller: Option<String>,
}

/// How a call ended, for its record.
struct Outcome {
    status: u16,
    error: Option<ErrorCode>,
    tokens_in: u64,
    tokens_out: u64,
    upstream_us: u64,
}

impl Gateway {
    /// Builds the gateway and starts its writer; `start_background` starts the pollers.
    pub async fn new(
        store: Store,
        settings: GatewaySettings,
        config_apis: &[CatalogApiConfig],
    ) -> anyhow::Result<Arc<Self>> {
        catalog_sync(&store, config_apis).await?;
        let catalog = load_catalog(&store).await?;
        let client = upstream_client()?;
        Ok(Arc::new(Gateway {
            keys: KeyCache::new(
                store.clone(),
                Duration::from_secs(settings.key_cache_ttl_secs),
            ),
            limiters: DashMap::new(),
            accounts: Accounts::new(store.clone()),
            catalog: RwLock::new(Arc::new(catalog)),
            writer: Writer::start(store.clone())?,
            client,
            store,
            settings,
        }))
    }

    pub fn settings(&self) -> &GatewaySettings {
        &self.settings
    }

    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Re-reads the catalog now (after a change through the API).
    pub async fn reload_catalog(&self) -> tally_store::Result<()> {
        let fresh = Arc::new(load_catalog(&self.store).await?);
        match self.catalog.write() {
            Ok(mut c) => *c = fresh,
            Err(e) => *e.into_inner() = fresh,
        }
        Ok(())
    }

    /// Starts the change poller (keys, catalog) and the upstream health probes.
    pub fn start_background(self: &Arc<Self>) {
        let gw = Arc::downgrade(self);
        let every = Duration::from_millis(self.settings.poll_interval_ms.max(50));
        tokio::spawn(async move {
            let mut since = tally_store::now_ms();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(gw) = gw.upgrade() else { return };
                if let Err(e) = gw.poll_changes(&mut since).await {
                    tracing::warn!(error = %e, "gateway change poll failed");
                }
            }
        });
        let gw = Arc::downgrade(self);
        let every = Duration::from_secs(self.settings.health_interval_secs.max(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(gw) = gw.upgrade() else { return };
                gw.probe_upstreams().await;
            }
        });
    }

    async fn poll_changes(&self, since: &mut i64) -> tally_store::Result<()> {
        let mut conn = self.store.conn().await?;
        // Look back a little: a change committed late with an earlier
        // timestamp must not slip past the watermark. Dropping a key twice is harmless.
        let changed = tally_store::keys::changed_since(&mut conn, *since - 2000).await?;
        let ids: HashSet<String> = changed.iter().map(|(id, _)| id.clone()).collect();
        if let Some(max) = changed.iter().map(|(_, t)| *t).max() {
            *since = (*since).max(max);
        }
        self.keys.invalidate(&ids);
        let version = tally_store::catalog::version(&mut conn).await?;
        drop(conn);
        if version != self.catalog().version {
            self.reload_catalog().await?;
        }
        Ok(())
    }

    async fn probe_upstreams(&self) {
        let catalog = self.catalog();
        for api in &catalog.apis {
            let Some(path) = &api.config.health_path else {
                continue;
            };
            for target in api.live.targets.iter().chain(&api.test.targets) {
                let url = format!("{}{}", target.url, path);
                let ok = self
                    .client
                    .get(&url)
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if !ok {
                    tracing::warn!(api = api.slug(), upstream = %target.url, "health probe failed");
                }
                target.probed(ok);
            }
        }
    }

    /// Drops a key from the cache at once (this instance); other instances
    /// notice within one poll.
    pub fn forget_key(&self, key_id: &str) {
        self.keys.invalidate(&HashSet::from([key_id.to_owned()]));
    }

    /// The key a bearer secret names.
    pub async fn authenticate(&self, secret: &str) -> Result<Arc<KeyInfo>, ApiError> {
        self.keys.lookup(secret).await
    }

    fn limiter(&self, key_id: &str) -> Arc<Mutex<KeyLimiter>> {
        if let Some(l) = self.limiters.get(key_id) {
            return l.clone();
        }
        self.limiters.entry(key_id.to_owned()).or_default().clone()
    }

    /// The quota counters of a key as the gateway enforces them now.
    pub async fn quota_counters(&self, key_id: &str) -> Result<limits::QuotaCounters, ApiError> {
        let limiter = self.limiter(key_id);
        self.ensure_counted(key_id, &limiter).await?;
        let counters = lock(&limiter).counters();
        Ok(counters)
    }

    /// Loads a key's day and month counters when the period is new to this process.
    async fn ensure_counted(
        &self,
        key_id: &str,
        limiter: &Mutex<KeyLimiter>,
    ) -> Result<(), ApiError> {
        let now = tally_store::now_ms();
        if lock(limiter).counted(now) {
            return Ok(());
        }
        let (day_start, month_start) = (limits::day_start(now), limits::month_start(now));
        let mut conn = self.store.conn().await?;
        let (day_requests, day_credits) =
            tally_store::usage::key_quota_usage(&mut conn, key_id, day_start).await?;
        let (month_requests, month_credits) =
            tally_store::usage::key_quota_usage(&mut conn, key_id, month_start).await?;
        lock(limiter).load(Counted {
            day_start_ms: day_start,
            day_requests,
            day_credits,
            month_start_ms: month_start,
            month_requests,
            month_credits,
        });
        Ok(())
    }

    /// Serves one call of an authenticated key.
    pub async fn serve(self: &Arc<Self>, key: Arc<KeyInfo>, inb: Inbound) -> Reply {
        let now = tally_store::now_ms();
        if let Err(e) = key.check_usable(now) {
            return error_reply(e, Vec::new());
        }
        let catalog = self.catalog();

        // Route: OpenAI endpoints by the body's model, others by slug.
        let (api, model, json) = match &inb.endpoint {
            Endpoint::Http { slug, .. } => match catalog.by_slug(slug) {
                Some(api) => (api.clone(), None, None),
                None => {
                    return error_reply(ApiError::not_found(&format!("API '{slug}'")), Vec::new())
                }
            },
            _ => {
                let json: Value = match serde_json::from_slice(&inb.body) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => {
                        return error_reply(
                            ApiError::new(ErrorCode::InvalidJson, "the body must be a JSON object"),
                            Vec::new(),
                        )
                    }
                };
                let Some(model) = json.get("model").and_then(Value::as_str).map(str::to_owned)
                else {
                    return error_reply(ApiError::invalid("'model' is required"), Vec::new());
                };
                match catalog.by_model(&model) {
                    Some(api) => (api.clone(), Some(model), Some(json)),
                    None => {
                        return error_reply(
                            ApiError::new(
                                ErrorCode::NotFound,
                                format!("model '{model}' is not in the catalog; GET /v1/models lists the models this key can call"),
                            ),
                            Vec::new(),
                        )
                    }
                }
            }
        };
        let stream = json
            .as_ref()
            .and_then(|j| j.get("stream"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let limiter = self.limiter(&key.id);
        let mut call = Call {
            id: tally_store::new_id("call"),
            key: key.clone(),
            limiter: limiter.clone(),
            api: api.slug().to_owned(),
            model: model.clone(),
            endpoint: inb.endpoint.name(),
            stream,
            client_id: inb.client_id.clone(),
            started: inb.started,
            pricing: api.config.pricing.clone(),
            max_cost: 0,
            hold: None,
            seller: api.config.owner_namespace_id.clone(),
        };

        if !api.config.enabled {
            let e = ApiError::new(
                ErrorCode::Unavailable,
                format!("API '{}' is disabled", api.slug()),
            );
            return self.refuse(call, e, Vec::new()).await;
        }
        if let Some(seller) = &call.seller {
            if key.environment == Environment::Live {
                match self.seller_paused(seller).await {
                    Ok(false) => {}
                    Ok(true) => {
                        let e = ApiError::new(
                            ErrorCode::ServingPaused,
                            format!(
                                "live serving of '{}' is paused: its seller's balance is below the critical level; test keys keep working",
                                api.slug()
                            ),
                        );
                        return self.refuse(call, e, Vec::new()).await;
                    }
                    Err(e) => return self.refuse(call, e.into(), Vec::new()).await,
                }
            }
        }
        if !key.allows(api.slug(), model.as_deref()) {
            let e = ApiError::new(
                ErrorCode::ApiNotAllowed,
                format!(
                    "this key may not call '{}'",
                    model.as_deref().unwrap_or(api.slug())
                ),
            );
            return self.refuse(call, e, Vec::new()).await;
        }
        let pool = api.pool(key.environment);
        if pool.is_some_and(catalog::Pool::is_empty) {
            let e = ApiError::new(
                ErrorCode::Unavailable,
                format!("API '{}' has no live upstream configured", api.slug()),
            );
            return self.refuse(call, e, Vec::new()).await;
        }

        call.max_cost = max_cost(&api, &inb, json.as_ref());
        if let Err(e) = self.ensure_counted(&key.id, &limiter).await {
            return error_reply(e, Vec::new());
        }
        let admitted = lock(&limiter).admit(&key.limits, now, call.max_cost);
        let rate = match admitted {
            Ok(state) => state,
            Err(refusal) => {
                // Nothing was counted or reserved for a refused call.
                call.max_cost = 0;
                let (e, headers) = refusal_error(&refusal);
                return self.refuse(call, e, headers).await;
            }
        };
        let mut headers: Vec<_> = rate.as_ref().map(rate_headers).unwrap_or_default();
        headers.extend(header("x-tally-call-id", &call.id));

        match self
            .accounts
            .hold(&key.namespace_id, key.environment, call.max_cost)
            .await
        {
            Ok(Ok(hold)) => call.hold = Some(hold),
            Ok(Err(short)) => {
                let e = ApiError::new(
                    ErrorCode::InsufficientCredits,
                    format!(
                        "this call may cost up to {} credits and the {} balance has {} available; top up or use the faucet for test credits",
                        credits(call.max_cost),
                        key.environment,
                        credits(short.available.max(0))
                    ),
                );
                return self.refuse(call, e, headers).await;
            }
            Err(e) => return self.refuse(call, e.into(), headers).await,
        }

        match pool {
            None => {
                self.answer_from_sandbox(call, &api, &inb, json, headers)
                    .await
            }
            Some(pool) => {
                proxy::forward(self.clone(), call, api.clone(), pool, inb, json, headers).await
            }
        }
    }

    /// A call turned away after it was attributed to a key and an API: it is
    /// recorded (with no cost) so the key's statistics show it.
    async fn refuse(
        &self,
        call: Call,
        e: ApiError,
        headers: Vec<(HeaderName, HeaderValue)>,
    ) -> Reply {
        let status = e.code.http_status();
        let code = e.code;
        let _ = self
            .finish(
                call,
                Outcome {
                    status,
                    error: Some(code),
                    tokens_in: 0,
                    tokens_out: 0,
                    upstream_us: 0,
                },
            )
            .await;
        error_reply(e, headers)
    }

    async fn answer_from_sandbox(
        self: &Arc<Self>,
        call: Call,
        api: &Api,
        inb: &Inbound,
        json: Option<Value>,
        mut headers: Vec<(HeaderName, HeaderValue)>,
    ) -> Reply {
        let created = tally_store::now_ms() / 1000;
        let model = call.model.clone().unwrap_or_default();
        let answer = match (&inb.endpoint, json.as_ref()) {
            (Endpoint::Chat, Some(j)) => sandbox::chat(j, &model, created, call.stream),
            (Endpoint::Completions, Some(j)) => {
                sandbox::completion(j, &model, created, call.stream)
            }
            (Endpoint::Embeddings, Some(j)) => sandbox::embeddings(j, &model),
            (Endpoint::Http { path, .. }, _) => {
                sandbox::echo(api.slug(), inb.method.as_str(), path, &inb.query, &inb.body)
            }
            _ => sandbox::echo(api.slug(), inb.method.as_str(), "", "", &inb.body),
        };
        if call.stream && !answer.events.is_empty() {
            let events = futures_util::stream::iter(answer.events.into_iter().map(Ok::<_, String>));
            return proxy::stream_reply(
                self,
                call,
                StatusCode::OK,
                headers,
                Box::pin(events),
                proxy::Counted::Known {
                    tokens_in: answer.tokens_in,
                    tokens_out: answer.tokens_out,
                },
                Instant::now(),
            );
        }
        let outcome = Outcome {
            status: 200,
            error: None,
            tokens_in: answer.tokens_in,
            tokens_out: answer.tokens_out,
            upstream_us: 0,
        };
        let body = Bytes::from(answer.body.to_string());
        headers.extend(header("content-type", "application/json"));
        self.reply_after_record(call, outcome, StatusCode::OK, headers, body)
            .await
    }

    /// Records a finished sync call and answers it, or answers 503 if the
    /// record could not be written (the call is then not charged).
    async fn reply_after_record(
        &self,
        call: Call,
        outcome: Outcome,
        status: StatusCode,
        mut headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
    ) -> Reply {
        match self.finish(call, outcome).await {
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

    /// Captures the cost, settles limits and records the call (waiting for the
    /// commit). `None` when the record could not be written.
    async fn finish(&self, mut call: Call, o: Outcome) -> Option<Summary> {
        // Successful calls pay; so does a stream whose client went away (499)
        // for what it received.
        let charge = (200..300).contains(&o.status) || o.status == 499;
        let mut cost = if charge {
            catalog::cost(&call.pricing, o.tokens_in, o.tokens_out, o.upstream_us)
        } else {
            0
        };
        // Never more than was held: the hold is what the balance guaranteed.
        cost = match call.hold.as_mut() {
            Some(h) => h.settle(cost),
            None => 0,
        };
        let now = tally_store::now_ms();
        lock(&call.limiter).settle(
            &call.key.limits,
            now,
            call.max_cost,
            cost,
            o.tokens_in + o.tokens_out,
        );
        let latency_us = i64::try_from(call.started.elapsed().as_micros()).unwrap_or(i64::MAX);
        let record = CallRecord {
            id: call.id.clone(),
            time: now,
            namespace_id: call.key.namespace_id.clone(),
            environment: call.key.environment,
            key_id: call.key.id.clone(),
            api: call.api.clone(),
            model: call.model.clone(),
            endpoint: call.endpoint.clone(),
            request_type: if call.stream { "stream" } else { "sync" },
            status: i64::from(o.status),
            error: o.error.map(|c| c.as_str().to_owned()),
            latency_us,
            upstream_latency_us: i64::try_from(o.upstream_us).unwrap_or(i64::MAX),
            tokens_in: i64::try_from(o.tokens_in).unwrap_or(i64::MAX),
            tokens_out: i64::try_from(o.tokens_out).unwrap_or(i64::MAX),
            cost_micros: cost,
            client_id: call.client_id.clone(),
            platform_fee_micros: if call.seller.is_some() {
                platform_fee(cost, self.settings.platform_fee_bps)
            } else {
                0
            },
            seller_namespace_id: call.seller.clone(),
        };
        let seller_share = match record.seller_namespace_id.as_deref() {
            Some(seller) if cost > 0 => {
                // Loaded before the commit, so the credit cannot be missed
                // by a load racing with it (see `Accounts::load`).
                if self
                    .accounts
                    .load(seller, record.environment)
                    .await
                    .is_err()
                {
                    return None;
                }
                Some((seller.to_owned(), cost - record.platform_fee_micros))
            }
            _ => None,
        };
        let (tokens_in, tokens_out) = (record.tokens_in, record.tokens_out);
        metrics::counter!("tally_gateway_calls_total", "status" => o.status.to_string())
            .increment(1);
        if !self.writer.record(record).await {
            // The hold is dropped with `call`, which releases it.
            return None;
        }
        if let Some(hold) = call.hold.take() {
            hold.committed();
        }
        if let Some((seller, net)) = seller_share {
            self.accounts.credited(&seller, call.key.environment, net);
        }
        Some(Summary {
            call_id: call.id,
            latency_us,
            tokens_in,
            tokens_out,
            cost_micros: cost,
        })
    }
}

/// A client for upstream calls: keep-alive pool, no Nagle delay.
fn upstream_client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(512)
        .connect_timeout(Duration::from_secs(5))
        .build()
}

thread_local! {
    /// The upstream client of the HTTP worker thread a call runs on.
    static WORKER_CLIENT: std::cell::OnceCell<reqwest::Client> = const { std::cell::OnceCell::new() };
}

impl Gateway {
    /// The client that forwards a call: one per worker thread. A client's
    /// connections are driven by the runtime that opened them, and a pool
    /// shared by every thread hands a worker connections that another thread
    /// (e.g. the one running the health probes) drives, which costs two thread
    /// switches per call. With a client of its own, a worker's calls stay on
    /// its thread from the client's request to the upstream's answer.
    fn forwarding_client(&self) -> reqwest::Client {
        WORKER_CLIENT.with(|c| {
            c.get_or_init(|| upstream_client().unwrap_or_else(|_| self.client.clone()))
                .clone()
        })
    }
}

impl Gateway {
    /// Whether a seller's live serving is paused (C8): its live balance is
    /// below `seller_critical_balance_micros`. Read from the in-memory account,
    /// so it changes with the very call or top-up that crosses the level.
    pub async fn seller_paused(&self, seller: &str) -> tally_store::Result<bool> {
        let (balance, _) = self.accounts.snapshot(seller, Environment::Live).await?;
        Ok(balance < self.settings.seller_critical_balance_micros)
    }

    /// Whether `namespace_id` owns an API of the catalog (C8): a seller.
    pub fn is_seller(&self, namespace_id: &str) -> bool {
        self.catalog()
            .apis
            .iter()
            .any(|a| a.config.owner_namespace_id.as_deref() == Some(namespace_id))
    }

    /// The namespaces that own an API of the catalog.
    pub fn sellers(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .catalog()
            .apis
            .iter()
            .filter_map(|a| a.config.owner_namespace_id.clone())
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// The platform's share of a call's cost, in basis points, rounded down (the
/// seller keeps the odd micro-credit).
fn platform_fee(cost: i64, fee_bps: u32) -> i64 {
    let fee = i128::from(cost) * i128::from(fee_bps.min(10_000)) / 10_000;
    i64::try_from(fee).unwrap_or(cost)
}

fn credits(micros: i64) -> String {
    let whole = micros / 1_000_000;
    let frac = (micros % 1_000_000).abs();
    if frac == 0 {
        whole.to_string()
    } else {
        format!("{whole}.{frac:06}")
            .trim_end_matches('0')
            .to_owned()
    }
}

fn refusal_error(r: &Refusal) -> (ApiError, Vec<(HeaderName, HeaderValue)>) {
    match r {
        Refusal::Rate(state) => {
            let mut headers = rate_headers(state);
            headers.extend(header("retry-after", state.reset_secs.max(1)));
            (
                ApiError::new(
                    ErrorCode::RateLimited,
                    format!(
                        "rate limit of this key reached; retry in {} s",
                        state.reset_secs.max(1)
                    ),
                ),
                headers,
            )
        }
        Refusal::Quota {
            what,
            retry_after_secs,
        } => (
            ApiError::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "the {what} quota of this key is used up; it resets in {retry_after_secs} s"
                ),
            ),
            header("retry-after", retry_after_secs)
                .into_iter()
                .collect(),
        ),
    }
}

/// The most a call can cost, held before it is forwarded: the request
/// bounds its output (`max_tokens`, else the API's default), its input is
/// bounded by its size, and its compute time by the API's timeout.
fn max_cost(api: &Api, inb: &Inbound, json: Option<&Value>) -> i64 {
    let p = &api.config.pricing;
    let (tokens_in, tokens_out) = match (&inb.endpoint, json) {
        (Endpoint::Http { .. }, _) | (_, None) => (0, 0),
        (endpoint, Some(j)) => {
            let tokens_in = inb.body.len() as u64 / 2 + 16;
            let tokens_out = if *endpoint == Endpoint::Embeddings {
                0
            } else {
                j.get("max_completion_tokens")
                    .or_else(|| j.get("max_tokens"))
                    .and_then(Value::as_u64)
                    .unwrap_or(match p.default_max_output_tokens {
                        0 => FALLBACK_MAX_OUTPUT_TOKENS,
                        n => u64::from(n),
                    })
            };
            (tokens_in, tokens_out)
        }
    };
    // Generic APIs that report token usage are billed by it when priced per
    // token; their hold assumes the default output size.
    let (tokens_in, tokens_out) = if api.config.protocol == Protocol::Http
        && (p.per_1k_input_tokens_micros > 0 || p.per_1k_output_tokens_micros > 0)
    {
        (
            inb.body.len() as u64 / 2 + 16,
            match p.default_max_output_tokens {
                0 => FALLBACK_MAX_OUTPUT_TOKENS,
                n => u64::from(n),
            },
        )
    } else {
        (tokens_in, tokens_out)
    };
    catalog::cost(
        p,
        tokens_in,
        tokens_out,
        api.config.timeout_ms.saturating_mul(1000),
    )
}

/// Applies the config file's catalog (it wins at every start) and, on a new
/// server, adds the sandbox API so test keys have something to call.
async fn catalog_sync(store: &Store, config_apis: &[CatalogApiConfig]) -> anyhow::Result<()> {
    let mut tx = store.begin().await?;
    for api in config_apis {
        catalog::validate(api)
            .map_err(|e| anyhow::anyhow!("catalog API '{}' in the config file: {e}", api.slug))?;
        // A seller that does not exist could not be credited: every batch of
        // calls naming it would fail to commit.
        if let Some(owner) = &api.owner_namespace_id {
            if !tally_store::namespaces::exists(&mut tx, owner).await? {
                anyhow::bail!(
                    "catalog API '{}' in the config file: owner_namespace_id '{owner}' is not a namespace",
                    api.slug
                );
            }
        }
        tally_store::catalog::upsert(&mut tx, &api.slug, &serde_json::to_string(api)?, "config")
            .await?;
    }
    let seeded = tally_store::settings::get_or_insert(&mut tx, "catalog_seeded", "no").await?;
    if seeded == "no" {
        if tally_store::catalog::get(&mut tx, "sandbox")
            .await?
            .is_none()
        {
            let sandbox = catalog::sandbox_api();
            tally_store::catalog::insert(
                &mut tx,
                &sandbox.slug,
                &serde_json::to_string(&sandbox)?,
                "api",
            )
            .await?;
        }
        tally_store::settings::set(&mut tx, "catalog_seeded", "yes").await?;
    }
    tx.commit().await?;
    Ok(())
}

async fn load_catalog(store: &Store) -> tally_store::Result<Catalog> {
    let mut conn = store.conn().await?;
    let version = tally_store::catalog::version(&mut conn).await?;
    let rows = tally_store::catalog::list(&mut conn).await?;
    let configs = rows
        .iter()
        .filter_map(|r| match serde_json::from_str::<CatalogApiConfig>(&r.config) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(slug = %r.slug, error = %e, "skipping a catalog API with a malformed configuration");
                None
            }
        })
        .collect();
    Ok(Catalog::new(configs, version))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    #[test]
    fn credits_print_without_trailing_zeros() {
        assert_eq!(super::credits(10_000_000), "10");
        assert_eq!(super::credits(2_100), "0.0021");
        assert_eq!(super::credits(1_500_000), "1.5");
    }
}
