//! The gateway data plane (G1-G5): authenticate a key, route to a catalog
//! API, enforce limits and quotas, hold credits, forward (or answer from the
//! sandbox), capture the cost and record the call.
//!
//! Policy (the hot path, ARCHITECTURE.md): no database read per call on the
//! read side (keys, catalog, balances and limits live in memory), one
//! group-committed write per call, and a call is answered only once that write
//! has committed. Money is the services' business (`crate::services`): this
//! module asks them for a call's bound and hold and hands them the finished
//! call. Failures are JSON errors with stable codes: 400 for requests whose
//! text or numbers cannot be taken, 401 for bad, revoked or expired keys, 403
//! for scopes, 404 for unknown APIs and models, 402 when the balance cannot
//! cover the call, 429 for limits and quotas, 502/504 when the upstream fails
//! or is too slow.
//!
//! Once a call is admitted, it runs in a task of its own: a client that goes
//! away cannot stop it between the upstream's answer and its record, so work
//! the upstream did is billed and every hold is settled.

mod call;
pub mod catalog;
pub mod http;
pub mod keys;
pub mod limits;
mod proxy;
pub mod sandbox;
pub mod shared_limits;
mod stream;
mod wire;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use bytes::Bytes;
use serde_json::Value;
use tally_common::{CatalogApiConfig, Environment, ErrorCode};
use tally_store::Store;

use crate::config::GatewaySettings;
use crate::error::ApiError;
use crate::services::accounts::{self, Accounts};
use crate::services::billing::credits;
use crate::services::pricing;
use crate::services::recorder::Recorder;
use crate::services::settle::{Charge, Settler};
use call::{Call, Outcome};
use catalog::{Api, Catalog};
use keys::{KeyCache, KeyInfo};
use limits::{KeyLimiter, Limiters, Refusal};
use shared_limits::SharedLimits;
use wire::{error_reply, header, rate_headers, Headers};
pub use wire::{Endpoint, Inbound, Reply, ReplyBody, Summary};

/// Longest path (after the slug) a generic call may name.
const MAX_PATH: usize = 2048;
/// Longest model name.
const MAX_MODEL: usize = 200;
/// How old a seller's shared balance may be when its serving state is
/// decided (several instances, O5).
const SELLER_STATE_AGE: Duration = Duration::from_millis(500);

pub struct Gateway {
    store: Store,
    pub keys: KeyCache,
    pub limiters: Limiters,
    /// Decides limits through Redis when configured (O5), else with `limiters`.
    shared_limits: Arc<SharedLimits>,
    settler: Arc<Settler>,
    catalog: RwLock<Arc<Catalog>>,
    client: reqwest::Client,
    settings: GatewaySettings,
    /// Whether change notifications arrive (several instances, O5): the
    /// change poll is then only a fallback.
    pushed: AtomicBool,
    /// Wakes the change poller at once.
    poll_wake: tokio::sync::Notify,
    /// Change polls completed, for tests that wait for the next one.
    change_polls: AtomicU64,
    /// Quota periods this instance already reported used up (key id,
    /// period), so a key hammering a spent quota costs one database write.
    quota_noted: moka::sync::Cache<(String, String), ()>,
}

/// Text a caller chose that the gateway keeps (a path, a model name): at
/// most `max` characters, no control characters (NUL among them).
fn clean_text(what: &str, text: &str, max: usize) -> Result<(), ApiError> {
    if text.chars().count() > max || text.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "{what} must be at most {max} characters without control characters"
        )));
    }
    Ok(())
}

impl Gateway {
    /// Builds the gateway and starts its writer; `start_background` starts
    /// the pollers. `redis` shares per-key limits with other instances.
    pub async fn new(
        store: Store,
        settings: GatewaySettings,
        config_apis: &[CatalogApiConfig],
        accounts: Arc<Accounts>,
        redis: Option<shared_limits::RedisSettings>,
    ) -> anyhow::Result<Arc<Self>> {
        catalog_sync(&store, config_apis).await?;
        let catalog = load_catalog(&store).await?;
        let client = upstream_client(&settings.egress)?;
        let lease_holder = accounts.leasing().map(|l| l.instance.clone());
        let settler = Settler::new(
            accounts,
            Recorder::start(store.clone(), lease_holder)?,
            settings.platform_fee_bps,
        );
        Ok(Arc::new(Gateway {
            keys: KeyCache::new(store.clone(), &settings),
            limiters: Limiters::new(settings.limiter_capacity),
            shared_limits: Arc::new(SharedLimits::new(store.clone(), redis)?),
            settler: Arc::new(settler),
            catalog: RwLock::new(Arc::new(catalog)),
            client,
            store,
            settings,
            pushed: AtomicBool::new(false),
            poll_wake: tokio::sync::Notify::new(),
            change_polls: AtomicU64::new(0),
            quota_noted: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(3_600))
                .build(),
        }))
    }

    pub fn settings(&self) -> &GatewaySettings {
        &self.settings
    }

    /// The in-memory balances the gateway spends from.
    pub fn accounts(&self) -> &Arc<Accounts> {
        self.settler.accounts()
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

    /// Change notifications arrive (true) or not (false): see `crate::cluster`.
    pub fn set_pushed(&self, pushed: bool) {
        self.pushed.store(pushed, Ordering::Relaxed);
    }

    /// How many change polls have completed.
    pub fn change_polls(&self) -> u64 {
        self.change_polls.load(Ordering::Relaxed)
    }

    /// Polls for changes now (after change notifications were missed).
    pub fn poll_now(&self) {
        self.poll_wake.notify_one();
    }

    /// Starts the change poller (keys, catalog), the upstream health probes
    /// and the sweep of idle accounts. The poller looks every
    /// `gateway.poll_interval_ms` while changes are not pushed, and every
    /// `cluster.fallback_poll_ms` while they are.
    pub fn start_background(self: &Arc<Self>) {
        let gw = Arc::downgrade(self);
        let every = Duration::from_millis(self.settings.poll_interval_ms.max(50));
        let fallback = Duration::from_millis(self.settings.fallback_poll_ms.max(50));
        tokio::spawn(async move {
            let mut since = tally_store::now_ms();
            let mut last = Instant::now();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let woken = {
                    let Some(gw) = gw.upgrade() else { return };
                    let wake = gw.poll_wake.notified();
                    tokio::pin!(wake);
                    tokio::select! {
                        _ = tick.tick() => false,
                        () = &mut wake => true,
                    }
                };
                let Some(gw) = gw.upgrade() else { return };
                if !woken && gw.pushed.load(Ordering::Relaxed) && last.elapsed() < fallback {
                    continue;
                }
                last = Instant::now();
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
        let gw = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                let Some(gw) = gw.upgrade() else { return };
                gw.accounts().sweep(accounts::IDLE);
                metrics::gauge!("tally_gateway_accounts").set(gw.accounts().len() as f64);
            }
        });
    }

    async fn poll_changes(&self, since: &mut i64) -> tally_store::Result<()> {
        let mut conn = self.store.conn().await?;
        // Look back a little: a change committed late with an earlier
        // timestamp must not slip past the watermark. Dropping a key twice is harmless.
        let polled_at = tally_store::now_ms();
        let changed =
            tally_store::keys::changed_since(&mut conn, *since - keys::CHANGE_COMMIT_MS).await?;
        // The watermark is the time of this poll, not of the newest change:
        // that one would stay the watermark while nothing else changed, and
        // its key would be dropped and read again at every poll.
        *since = (*since).max(polled_at);
        self.keys.invalidate_changed(&changed);
        let version = tally_store::catalog::version(&mut conn).await?;
        drop(conn);
        if version != self.catalog().version {
            self.reload_catalog().await?;
        }
        self.change_polls.fetch_add(1, Ordering::Relaxed);
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

    /// The key a bearer secret names; `client` is the caller's address, for
    /// the throttle of unknown keys.
    pub async fn authenticate(
        &self,
        secret: &str,
        client: Option<std::net::IpAddr>,
    ) -> Result<Arc<KeyInfo>, ApiError> {
        self.keys.lookup(secret, client).await
    }

    fn limiter(&self, key_id: &str) -> Arc<Mutex<KeyLimiter>> {
        self.limiters.get(key_id, tally_store::now_ms())
    }

    /// The quota counters of a key as the gateway enforces them now;
    /// `version` is the key's `updated_at`.
    pub async fn quota_counters(
        &self,
        key_id: &str,
        version: i64,
    ) -> Result<limits::QuotaCounters, ApiError> {
        let limiter = self.limiter(key_id);
        self.shared_limits
            .quota_counters(key_id, version, &limiter)
            .await
    }

    /// Serves one call of an authenticated key, in a task of its own (see
    /// the module policy).
    pub async fn serve(self: &Arc<Self>, key: Arc<KeyInfo>, inb: Inbound) -> Reply {
        let gw = self.clone();
        match crate::telemetry::spawn_detached(async move { gw.admit(key, inb).await }).await {
            Ok(reply) => reply,
            Err(e) => error_reply(
                ApiError::internal(anyhow::anyhow!("a gateway call failed: {e}")),
                Vec::new(),
            ),
        }
    }

    async fn admit(self: Arc<Self>, key: Arc<KeyInfo>, inb: Inbound) -> Reply {
        let now = tally_store::now_ms();
        if let Err(e) = key.check_usable(now) {
            return error_reply(e, Vec::new());
        }
        let catalog = self.catalog();

        // Route: OpenAI endpoints by the body's model, others by slug.
        let (api, model, json) = match &inb.endpoint {
            Endpoint::Http { slug, path } => {
                if let Err(e) = clean_text("the path", path, MAX_PATH) {
                    return error_reply(e, Vec::new());
                }
                match catalog.by_slug(slug) {
                    // G1: an OpenAI-compatible API is priced by its model's
                    // tokens, which this route cannot read; it is reached only
                    // through the OpenAI endpoints, so no other path of its
                    // upstream (files, batches, fine-tuning) is reachable.
                    Some(api) if pricing::priced_by_model(&api.config) => {
                        return error_reply(
                            ApiError::new(
                                ErrorCode::NotFound,
                                format!("API '{slug}' is OpenAI-compatible and is not reached through /v1/apis: call /v1/chat/completions, /v1/completions or /v1/embeddings with one of its models"),
                            ),
                            Vec::new(),
                        )
                    }
                    Some(api) => (api.clone(), None, None),
                    None => {
                        return error_reply(
                            ApiError::not_found(&format!("API '{slug}'")),
                            Vec::new(),
                        )
                    }
                }
            }
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
                    return error_reply(
                        ApiError::invalid("'model' is required and must be a string"),
                        Vec::new(),
                    );
                };
                if let Err(e) = clean_text("'model'", &model, MAX_MODEL) {
                    return error_reply(e, Vec::new());
                }
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
        let stream = match json.as_ref().and_then(|j| j.get("stream")) {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return error_reply(
                    ApiError::invalid("'stream' must be true or false"),
                    Vec::new(),
                )
            }
        };
        let limiter = self.limiter(&key.id);
        let call = Call {
            id: tally_store::new_id("call"),
            key: key.clone(),
            limiter: limiter.clone(),
            limits: self.shared_limits.clone(),
            admission: Default::default(),
            api: api.slug().to_owned(),
            model: model.clone(),
            endpoint: inb.endpoint.name(),
            stream,
            client_id: inb.client_id.clone(),
            started: inb.started,
            reserved: 0,
            charge: Charge::none(api.config.owner_namespace_id.clone()),
            settler: self.settler.clone(),
            in_flight: call::InFlight::start(),
        };

        if !api.config.enabled {
            let e = ApiError::new(
                ErrorCode::Unavailable,
                format!("API '{}' is disabled", api.slug()),
            );
            return call.refuse(e, Vec::new()).await;
        }
        if let Some(seller) = call.charge.seller() {
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
                        return call.refuse(e, Vec::new()).await;
                    }
                    Err(e) => return call.refuse(e.into(), Vec::new()).await,
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
            return call.refuse(e, Vec::new()).await;
        }
        let pool = api.pool(key.environment);
        if pool.is_some_and(catalog::Pool::is_empty) {
            let e = ApiError::new(
                ErrorCode::Unavailable,
                format!("API '{}' has no live upstream configured", api.slug()),
            );
            return call.refuse(e, Vec::new()).await;
        }

        // The hold must bound what the upstream can return (services::pricing).
        let compute_limit_us = if stream {
            self.settings.stream_deadline_secs.saturating_mul(1_000_000)
        } else {
            api.config.timeout_ms.saturating_mul(1000)
        };
        let mut json = json;
        let (max_cost, rewritten) = match json.as_mut() {
            Some(j) => match pricing::bound_openai(
                &api.config,
                inb.endpoint.kind(),
                j,
                inb.body.len(),
                compute_limit_us,
            ) {
                Ok(b) => (b.max_cost, b.rewritten),
                Err(e) => return error_reply(e, Vec::new()),
            },
            None => (
                pricing::bound_http(&api.config, inb.body.len(), compute_limit_us),
                false,
            ),
        };
        let admitted = match self
            .shared_limits
            .admit(&key, &limiter, &call.id, now, max_cost, compute_limit_us)
            .await
        {
            Ok(admitted) => admitted,
            Err(e) => return error_reply(e, Vec::new()),
        };
        let mut call = call;
        let rate = match admitted {
            Ok((state, admission)) => {
                call.reserved = max_cost;
                call.admission = admission;
                state
            }
            Err(refusal) => {
                if let Refusal::Quota {
                    what,
                    retry_after_secs,
                } = &refusal
                {
                    self.note_quota(&key, what, now, *retry_after_secs);
                }
                // Nothing was counted or reserved for a refused call.
                let (e, headers) = refusal_error(&refusal);
                return call.refuse(e, headers).await;
            }
        };
        let mut headers: Headers = rate.as_ref().map(rate_headers).unwrap_or_default();
        headers.extend(header("x-tally-call-id", &call.id));

        let seller = call.charge.seller().map(str::to_owned);
        match self
            .settler
            .hold(
                &key.namespace_id,
                key.environment,
                &api.config.pricing,
                max_cost,
                seller,
            )
            .await
        {
            Ok(Ok(charge)) => call.charge = charge,
            Ok(Err(short)) => {
                let e = ApiError::new(
                    ErrorCode::InsufficientCredits,
                    format!(
                        "this call may cost up to {} credits and the {} balance has {} available; top up or use the faucet for test credits",
                        credits(max_cost),
                        key.environment,
                        credits(short.available.max(0))
                    ),
                );
                return call.refuse(e, headers).await;
            }
            Err(e) => return call.refuse(e.into(), headers).await,
        }

        match pool {
            None => {
                self.answer_from_sandbox(call, &api, &inb, json, headers)
                    .await
            }
            Some(pool) => {
                let body = match (&json, stream || rewritten) {
                    (Some(j), true) => Bytes::from(upstream_json(j.clone(), &inb.endpoint, stream)),
                    _ => inb.body.clone(),
                };
                let forward = proxy::Forward {
                    client: self.forwarding_client(),
                    pool,
                    endpoint: &inb.endpoint,
                    method: &inb.method,
                    query: &inb.query,
                    content_type: inb.content_type.as_deref(),
                    body,
                    request_bytes: inb.body.len(),
                    timeout: Duration::from_millis(api.config.timeout_ms),
                    max_response_bytes: self.settings.max_response_bytes,
                    stream: stream.then(|| self.stream_limits(&api)),
                };
                proxy::forward(call, forward, headers).await
            }
        }
    }

    fn stream_limits(&self, api: &Api) -> stream::StreamLimits {
        stream::StreamLimits {
            idle: Duration::from_millis(api.config.timeout_ms),
            deadline: tokio::time::Instant::now()
                + Duration::from_secs(self.settings.stream_deadline_secs),
            send_timeout: Duration::from_secs(self.settings.stream_send_timeout_secs.max(1)),
            max_event_bytes: self.settings.max_event_bytes,
        }
    }

    async fn answer_from_sandbox(
        &self,
        call: Call,
        api: &Api,
        inb: &Inbound,
        json: Option<Value>,
        mut headers: Headers,
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
            let limits = self.stream_limits(api);
            return stream::stream_reply(
                call,
                StatusCode::OK,
                headers,
                Box::pin(events),
                stream::Counted::Known {
                    tokens_in: answer.tokens_in,
                    tokens_out: answer.tokens_out,
                },
                Instant::now(),
                limits,
            );
        }
        let outcome = Outcome::answered(200, answer.tokens_in, answer.tokens_out, 0);
        let body = Bytes::from(answer.body.to_string());
        headers.extend(header("content-type", "application/json"));
        call.reply_after_record(outcome, StatusCode::OK, headers, body)
            .await
    }
}

/// The JSON sent upstream: the caller's request with the limits written in,
/// and for a stream a request for usage in its last event so the gateway can
/// bill it exactly.
fn upstream_json(mut j: Value, endpoint: &Endpoint, stream: bool) -> Vec<u8> {
    if stream && *endpoint != Endpoint::Embeddings {
        if let Some(obj) = j.as_object_mut() {
            let opts = obj
                .entry("stream_options")
                .or_insert_with(|| Value::Object(Default::default()));
            if let Some(o) = opts.as_object_mut() {
                o.insert("include_usage".into(), Value::Bool(true));
            }
        }
    }
    serde_json::to_vec(&j).unwrap_or_default()
}

/// A client for upstream calls: keep-alive pool, no Nagle delay; its
/// connections obey the egress policy.
fn upstream_client(egress: &crate::egress::Egress) -> reqwest::Result<reqwest::Client> {
    egress
        .client_builder()
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
            c.get_or_init(|| {
                upstream_client(&self.settings.egress).unwrap_or_else(|_| self.client.clone())
            })
            .clone()
        })
    }
}

impl Gateway {
    /// Whether a seller's live serving is paused (C8): its live balance is
    /// below `seller_critical_balance_micros`. Read from the in-memory account,
    /// so it changes with the very call or top-up that crosses the level.
    /// With several instances the shared balance is read at most every
    /// [`SELLER_STATE_AGE`] per seller (at once after a change this instance
    /// made or another announced).
    pub async fn seller_paused(&self, seller: &str) -> tally_store::Result<bool> {
        let balance = self
            .accounts()
            .balance(seller, Environment::Live, SELLER_STATE_AGE)
            .await?;
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

    /// Reports a quota used up (an event and a `quota.reached` webhook)
    /// once per key, quota and period, off the call's path.
    fn note_quota(&self, key: &KeyInfo, what: &'static str, now_ms: i64, retry_after_secs: u64) {
        let resets_at_ms = now_ms + i64::try_from(retry_after_secs).unwrap_or(0) * 1000;
        // Periods end on the hour: the nearest hour names the period even
        // when the countdown is a second off.
        let period = format!("{what}@{}", (resets_at_ms / 1000 + 1800) / 3600);
        let noted = (key.id.clone(), period.clone());
        if self.quota_noted.contains_key(&noted) {
            return;
        }
        self.quota_noted.insert(noted, ());
        let store = self.store.clone();
        let (id, ns, env) = (key.id.clone(), key.namespace_id.clone(), key.environment);
        tokio::spawn(async move {
            if let Err(e) = crate::services::webhooks::quota_reached(
                &store,
                &id,
                &ns,
                env,
                what,
                &period,
                resets_at_ms,
            )
            .await
            {
                tracing::warn!(error = %e, key = %id, "cannot report a used-up quota");
            }
        });
    }
}

fn refusal_error(r: &Refusal) -> (ApiError, Headers) {
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
