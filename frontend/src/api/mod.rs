//! The one typed client of the Tally REST API.
//!
//! Every call returns `Result<T, ApiError>` over the DTOs of `tally-common`.
//! Tokens live in `localStorage`; an expired access token is refreshed once
//! (refresh tokens rotate) and the call retried. When the session cannot be
//! renewed the stored session is cleared and the app returns to the login page.

use gloo_net::http::{Request, RequestBuilder, Response};
use gloo_storage::{LocalStorage, Storage};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tally_common::*;

const TOKENS_KEY: &str = "tally.tokens";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tokens {
    pub access_token: String,
    pub refresh_token: String,
    pub account: Account,
}

pub fn stored_tokens() -> Option<Tokens> {
    LocalStorage::get(TOKENS_KEY).ok()
}

fn store_tokens(auth: &AuthResponse) -> Tokens {
    let tokens = Tokens {
        access_token: auth.access_token.clone(),
        refresh_token: auth.refresh_token.clone(),
        account: auth.account.clone(),
    };
    let _ = LocalStorage::set(TOKENS_KEY, &tokens);
    tokens
}

pub fn clear_tokens() {
    LocalStorage::delete(TOKENS_KEY);
}

/// An error from the API (its stable `code` and message) or from the network.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl ApiError {
    fn network(e: impl std::fmt::Display) -> Self {
        ApiError {
            status: 0,
            code: "network".into(),
            message: format!("cannot reach the server: {e}"),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

pub type ApiResult<T> = Result<T, ApiError>;

#[derive(Clone, Copy)]
enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

fn builder(method: Method, path: &str) -> RequestBuilder {
    match method {
        Method::Get => Request::get(path),
        Method::Post => Request::post(path),
        Method::Put => Request::put(path),
        Method::Patch => Request::patch(path),
        Method::Delete => Request::delete(path),
    }
}

async fn send(
    method: Method,
    path: &str,
    body: Option<&serde_json::Value>,
    token: Option<&str>,
) -> ApiResult<Response> {
    let mut req = builder(method, path);
    if let Some(token) = token {
        req = req.header("Authorization", &format!("Bearer {token}"));
    }
    let res = match body {
        Some(body) => req.json(body).map_err(ApiError::network)?.send().await,
        None => req.send().await,
    };
    res.map_err(ApiError::network)
}

async fn error_of(res: Response) -> ApiError {
    let status = res.status();
    // Read the code as a plain string so codes added by a newer server still
    // come through with their message.
    let body = res.json::<serde_json::Value>().await.ok();
    let field = |name: &str| {
        body.as_ref()
            .and_then(|b| b["error"][name].as_str())
            .map(str::to_owned)
    };
    match (field("code"), field("message")) {
        (Some(code), Some(message)) => ApiError {
            status,
            code,
            message,
        },
        _ => ApiError {
            status,
            code: "http".into(),
            message: format!("the server answered {status}"),
        },
    }
}

async fn decode<T: DeserializeOwned>(res: Response) -> ApiResult<T> {
    if res.ok() {
        if res.status() == 204 {
            return serde_json::from_value(serde_json::Value::Null)
                .map_err(|e| ApiError::network(format!("unexpected empty response: {e}")));
        }
        res.json::<T>()
            .await
            .map_err(|e| ApiError::network(format!("unexpected response: {e}")))
    } else {
        Err(error_of(res).await)
    }
}

/// A call that needs the signed-in account.
async fn authed<T: DeserializeOwned>(
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> ApiResult<T> {
    decode(authed_response(method, path, body).await?).await
}

/// A signed-in call's raw response (after renewing the session once if needed).
async fn authed_response(
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> ApiResult<Response> {
    let Some(tokens) = stored_tokens() else {
        crate::state::session_ended();
        return Err(ApiError {
            status: 401,
            code: "unauthorized".into(),
            message: "please log in".into(),
        });
    };
    let res = send(method, path, body.as_ref(), Some(&tokens.access_token)).await?;
    if res.status() != 401 {
        return Ok(res);
    }
    // The access token expired (or was rejected): renew the session once.
    let renewed = send(
        Method::Post,
        "/api/v1/auth/refresh",
        Some(&serde_json::json!({ "refresh_token": tokens.refresh_token })),
        None,
    )
    .await?;
    if !renewed.ok() {
        clear_tokens();
        crate::state::session_ended();
        return Err(error_of(renewed).await);
    }
    let auth: AuthResponse = decode(renewed).await?;
    let tokens = store_tokens(&auth);
    send(method, path, body.as_ref(), Some(&tokens.access_token)).await
}

fn to_value<T: Serialize>(v: &T) -> Option<serde_json::Value> {
    serde_json::to_value(v).ok()
}

// --- Accounts and sessions -------------------------------------------------

pub async fn signup(req: &SignupRequest) -> ApiResult<Tokens> {
    let res = send(
        Method::Post,
        "/api/v1/auth/signup",
        to_value(req).as_ref(),
        None,
    )
    .await?;
    let auth: AuthResponse = decode(res).await?;
    Ok(store_tokens(&auth))
}

pub async fn login(req: &LoginRequest) -> ApiResult<Tokens> {
    let res = send(
        Method::Post,
        "/api/v1/auth/login",
        to_value(req).as_ref(),
        None,
    )
    .await?;
    let auth: AuthResponse = decode(res).await?;
    Ok(store_tokens(&auth))
}

/// Creates the server's first operator with its one-time setup token.
pub async fn setup(req: &SetupRequest) -> ApiResult<Tokens> {
    let res = send(
        Method::Post,
        "/api/v1/auth/setup",
        to_value(req).as_ref(),
        None,
    )
    .await?;
    let auth: AuthResponse = decode(res).await?;
    Ok(store_tokens(&auth))
}

/// Restores a backup into a new server with its setup token, instead of
/// creating the first operator (O1).
pub async fn restore_backup(token: &str, archive: &web_sys::File) -> ApiResult<RestoredBackup> {
    let res = Request::post("/api/v1/auth/setup/restore")
        .header("X-Setup-Token", token.trim())
        .header("Content-Type", "application/octet-stream")
        .body(archive.clone())
        .map_err(ApiError::network)?
        .send()
        .await
        .map_err(ApiError::network)?;
    decode(res).await
}

/// What an invitation offers (no session needed).
pub async fn lookup_invitation(token: &str) -> ApiResult<InvitationPreview> {
    let body = to_value(&InvitationTokenRequest {
        token: token.into(),
    });
    let res = send(
        Method::Post,
        "/api/v1/invitations/lookup",
        body.as_ref(),
        None,
    )
    .await?;
    decode(res).await
}

/// Joins the invitation's namespace as the signed-in account.
pub async fn accept_invitation(token: &str) -> ApiResult<NamespaceWithRole> {
    let body = to_value(&InvitationTokenRequest {
        token: token.into(),
    });
    authed(Method::Post, "/api/v1/invitations/accept", body).await
}

/// Ends the session on the server (best effort) and forgets it here.
pub async fn logout() {
    if let Some(tokens) = stored_tokens() {
        let body = serde_json::json!({ "refresh_token": tokens.refresh_token });
        let _ = send(Method::Post, "/api/v1/auth/logout", Some(&body), None).await;
    }
    clear_tokens();
}

pub async fn me() -> ApiResult<Me> {
    authed(Method::Get, "/api/v1/me", None).await
}

pub async fn status() -> ApiResult<ServerStatus> {
    let res = send(Method::Get, "/api/v1/status", None, None).await?;
    decode(res).await
}

// --- Namespaces and members ------------------------------------------------

pub async fn create_namespace(name: &str) -> ApiResult<NamespaceWithRole> {
    let body = to_value(&CreateNamespaceRequest { name: name.into() });
    authed(Method::Post, "/api/v1/namespaces", body).await
}

pub async fn rename_namespace(ns: &str, name: &str) -> ApiResult<NamespaceWithRole> {
    let body = to_value(&UpdateNamespaceRequest { name: name.into() });
    authed(Method::Patch, &format!("/api/v1/namespaces/{ns}"), body).await
}

pub async fn members(ns: &str) -> ApiResult<MemberList> {
    authed(
        Method::Get,
        &format!("/api/v1/namespaces/{ns}/members"),
        None,
    )
    .await
}

pub async fn add_member(ns: &str, email: &str, role: Role) -> ApiResult<AddMemberResponse> {
    let body = to_value(&AddMemberRequest {
        email: email.into(),
        role,
    });
    authed(
        Method::Post,
        &format!("/api/v1/namespaces/{ns}/members"),
        body,
    )
    .await
}

pub async fn update_member(ns: &str, account_id: &str, role: Role) -> ApiResult<Member> {
    let body = to_value(&UpdateMemberRequest { role });
    let path = format!("/api/v1/namespaces/{ns}/members/{account_id}");
    authed(Method::Patch, &path, body).await
}

pub async fn remove_member(ns: &str, account_id: &str) -> ApiResult<()> {
    let path = format!("/api/v1/namespaces/{ns}/members/{account_id}");
    authed(Method::Delete, &path, None).await
}

pub async fn withdraw_invitation(ns: &str, invitation_id: &str) -> ApiResult<()> {
    let path = format!("/api/v1/namespaces/{ns}/invitations/{invitation_id}");
    authed(Method::Delete, &path, None).await
}

// --- Event log ---------------------------------------------------------------

pub async fn events(ns: &str, env: Environment, limit: u32) -> ApiResult<EventPage> {
    let path = format!("/api/v1/namespaces/{ns}/events?environment={env}&limit={limit}");
    authed(Method::Get, &path, None).await
}

// --- API keys -----------------------------------------------------------------

pub async fn keys(ns: &str, env: Environment, status: Option<KeyStatus>) -> ApiResult<KeyList> {
    let mut path = format!("/api/v1/namespaces/{ns}/keys?environment={env}");
    if let Some(status) = status {
        path.push_str(&format!("&status={}", status.as_str()));
    }
    authed(Method::Get, &path, None).await
}

pub async fn create_key(ns: &str, req: &CreateKeyRequest) -> ApiResult<CreatedKey> {
    authed(
        Method::Post,
        &format!("/api/v1/namespaces/{ns}/keys"),
        to_value(req),
    )
    .await
}

pub async fn rotate_key(ns: &str, key_id: &str, grace_seconds: i64) -> ApiResult<CreatedKey> {
    let body = to_value(&RotateKeyRequest {
        grace_seconds: Some(grace_seconds),
    });
    let path = format!("/api/v1/namespaces/{ns}/keys/{key_id}/rotate");
    authed(Method::Post, &path, body).await
}

pub async fn revoke_key(ns: &str, key_id: &str) -> ApiResult<ApiKey> {
    let path = format!("/api/v1/namespaces/{ns}/keys/{key_id}/revoke");
    authed(Method::Post, &path, Some(serde_json::json!({}))).await
}

pub async fn key_audit(ns: &str, key_id: &str) -> ApiResult<KeyAudit> {
    let path = format!("/api/v1/namespaces/{ns}/keys/{key_id}/audit");
    authed(Method::Get, &path, None).await
}

pub async fn key_stats(ns: &str, key_id: &str) -> ApiResult<KeyStats> {
    let path = format!("/api/v1/namespaces/{ns}/keys/{key_id}/stats");
    authed(Method::Get, &path, None).await
}

// --- Catalog ------------------------------------------------------------------

pub async fn catalog() -> ApiResult<CatalogList> {
    authed(Method::Get, "/api/v1/catalog", None).await
}

pub async fn admin_catalog() -> ApiResult<CatalogAdminList> {
    authed(Method::Get, "/api/v1/admin/catalog", None).await
}

pub async fn create_catalog_api(config: &CatalogApiConfig) -> ApiResult<CatalogApiAdmin> {
    authed(Method::Post, "/api/v1/admin/catalog", to_value(config)).await
}

pub async fn update_catalog_api(
    slug: &str,
    change: &UpdateCatalogApi,
) -> ApiResult<CatalogApiAdmin> {
    let path = format!("/api/v1/admin/catalog/{slug}");
    authed(Method::Patch, &path, to_value(change)).await
}

// --- Backups (operators) ----------------------------------------------------------

pub async fn backups() -> ApiResult<BackupList> {
    authed(Method::Get, "/api/v1/admin/backups", None).await
}

pub async fn create_backup(include_secrets: bool) -> ApiResult<BackupInfo> {
    let body = to_value(&CreateBackup { include_secrets });
    authed(Method::Post, "/api/v1/admin/backups", body).await
}

pub async fn delete_backup(name: &str) -> ApiResult<()> {
    authed(Method::Delete, &backup_path(name), None).await
}

/// The path of a backup's file, for [`download`].
pub fn backup_path(name: &str) -> String {
    format!("/api/v1/admin/backups/{}", query_value(name))
}

// --- Credits ------------------------------------------------------------------

pub async fn balances(ns: &str) -> ApiResult<Balances> {
    authed(
        Method::Get,
        &format!("/api/v1/namespaces/{ns}/credits"),
        None,
    )
    .await
}

/// Percent-encodes a query parameter value.
pub fn query_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Filters of a ledger read (the spending log, C4); empty fields are left out.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LedgerFilter {
    pub kind: String,
    pub actor: String,
    pub reference: String,
    /// RFC 3339.
    pub from: String,
    /// RFC 3339.
    pub to: String,
}

pub async fn ledger(
    ns: &str,
    env: Environment,
    limit: u32,
    before: Option<i64>,
    filter: &LedgerFilter,
) -> ApiResult<LedgerPage> {
    let mut path =
        format!("/api/v1/namespaces/{ns}/credits/ledger?environment={env}&limit={limit}");
    if let Some(before) = before {
        path.push_str(&format!("&before={before}"));
    }
    for (name, value) in [
        ("kind", &filter.kind),
        ("actor", &filter.actor),
        ("reference", &filter.reference),
        ("from", &filter.from),
        ("to", &filter.to),
    ] {
        if !value.trim().is_empty() {
            path.push_str(&format!("&{name}={}", query_value(value.trim())));
        }
    }
    authed(Method::Get, &path, None).await
}

pub async fn faucet(ns: &str) -> ApiResult<FaucetResult> {
    let path = format!("/api/v1/namespaces/{ns}/credits/faucet");
    authed(Method::Post, &path, Some(serde_json::json!({}))).await
}

pub async fn grant(ns: &str, req: &GrantRequest) -> ApiResult<LedgerEntry> {
    let path = format!("/api/v1/admin/namespaces/{ns}/grants");
    authed(Method::Post, &path, to_value(req)).await
}

// --- Usage and the Playground ---------------------------------------------------

pub async fn usage(
    ns: &str,
    env: Environment,
    key_id: Option<&str>,
    limit: u32,
) -> ApiResult<UsagePage> {
    let mut path = format!("/api/v1/namespaces/{ns}/usage?environment={env}&limit={limit}");
    if let Some(key_id) = key_id {
        path.push_str(&format!("&key_id={key_id}"));
    }
    authed(Method::Get, &path, None).await
}

pub async fn playground(ns: &str, req: &PlaygroundRequest) -> ApiResult<PlaygroundResponse> {
    let path = format!("/api/v1/namespaces/{ns}/playground");
    authed(Method::Post, &path, to_value(req)).await
}

// --- Billing: top-ups, statements, alerts, auto top-up ---------------------------

pub async fn create_intent(ns: &str, req: &CreateIntentRequest) -> ApiResult<PaymentIntent> {
    let path = format!("/api/v1/namespaces/{ns}/credits/intents");
    authed(Method::Post, &path, to_value(req)).await
}

pub async fn intents(ns: &str, env: Environment, limit: u32) -> ApiResult<PaymentIntentPage> {
    let path = format!("/api/v1/namespaces/{ns}/credits/intents?environment={env}&limit={limit}");
    authed(Method::Get, &path, None).await
}

pub async fn intent(ns: &str, intent_id: &str) -> ApiResult<PaymentIntent> {
    let path = format!("/api/v1/namespaces/{ns}/credits/intents/{intent_id}");
    authed(Method::Get, &path, None).await
}

pub async fn statements(ns: &str, env: Environment) -> ApiResult<StatementList> {
    let path = format!("/api/v1/namespaces/{ns}/credits/statements?environment={env}");
    authed(Method::Get, &path, None).await
}

/// The path of a month's statement as `json` or `csv`, for [`download`].
pub fn statement_path(ns: &str, env: Environment, month: &str, format: &str) -> String {
    format!("/api/v1/namespaces/{ns}/credits/statements/{month}?environment={env}&format={format}")
}

/// Fetches `path` with the session's token and hands the body to the browser
/// as a file named `filename`: a plain link could not carry the token.
pub async fn download(path: &str, filename: &str) -> ApiResult<()> {
    use wasm_bindgen::JsCast;
    let res = authed_response(Method::Get, path, None).await?;
    if !res.ok() {
        return Err(error_of(res).await);
    }
    let failed = |what: &str| ApiError::network(format!("cannot save the download ({what})"));
    let raw: web_sys::Response = res.into();
    let promise = raw.blob().map_err(|_| failed("body"))?;
    let blob: web_sys::Blob = wasm_bindgen_futures::JsFuture::from(promise)
        .await
        .map_err(|_| failed("body"))?
        .unchecked_into();
    let url = web_sys::Url::create_object_url_with_blob(&blob).map_err(|_| failed("url"))?;
    let link = web_sys::window()
        .and_then(|w| w.document())
        .and_then(|d| d.create_element("a").ok())
        .and_then(|a| a.dyn_into::<web_sys::HtmlElement>().ok())
        .ok_or_else(|| failed("link"))?;
    let _ = link.set_attribute("href", &url);
    let _ = link.set_attribute("download", filename);
    link.click();
    let _ = web_sys::Url::revoke_object_url(&url);
    Ok(())
}

pub async fn alerts(ns: &str) -> ApiResult<LowBalanceAlertList> {
    let path = format!("/api/v1/namespaces/{ns}/credits/alerts");
    authed(Method::Get, &path, None).await
}

pub async fn set_alert(
    ns: &str,
    env: Environment,
    threshold_micros: i64,
) -> ApiResult<LowBalanceAlert> {
    let path = format!("/api/v1/namespaces/{ns}/credits/alerts/{env}");
    authed(
        Method::Put,
        &path,
        to_value(&SetAlertRequest { threshold_micros }),
    )
    .await
}

pub async fn remove_alert(ns: &str, env: Environment) -> ApiResult<()> {
    let path = format!("/api/v1/namespaces/{ns}/credits/alerts/{env}");
    authed(Method::Delete, &path, None).await
}

pub async fn auto_topups(ns: &str) -> ApiResult<AutoTopupList> {
    let path = format!("/api/v1/namespaces/{ns}/credits/auto-topups");
    authed(Method::Get, &path, None).await
}

pub async fn set_auto_topup(
    ns: &str,
    env: Environment,
    req: &SetAutoTopupRequest,
) -> ApiResult<AutoTopup> {
    let path = format!("/api/v1/namespaces/{ns}/credits/auto-topups/{env}");
    authed(Method::Put, &path, to_value(req)).await
}

pub async fn remove_auto_topup(ns: &str, env: Environment) -> ApiResult<()> {
    let path = format!("/api/v1/namespaces/{ns}/credits/auto-topups/{env}");
    authed(Method::Delete, &path, None).await
}

// --- Subscriptions, bonuses, banners (C6, C7, C8, D5) ----------------------------

pub async fn packages() -> ApiResult<CreditPackageList> {
    authed(Method::Get, "/api/v1/billing/packages", None).await
}

pub async fn subscriptions(ns: &str) -> ApiResult<SubscriptionList> {
    let path = format!("/api/v1/namespaces/{ns}/credits/subscriptions");
    authed(Method::Get, &path, None).await
}

pub async fn subscribe(ns: &str, req: &SubscribeRequest) -> ApiResult<Subscription> {
    let path = format!("/api/v1/namespaces/{ns}/credits/subscriptions");
    authed(Method::Post, &path, to_value(req)).await
}

pub async fn cancel_subscription(ns: &str, id: &str) -> ApiResult<Subscription> {
    let path = format!("/api/v1/namespaces/{ns}/credits/subscriptions/{id}");
    authed(Method::Delete, &path, None).await
}

pub async fn bonuses(ns: &str, env: Environment) -> ApiResult<BonusList> {
    let path = format!("/api/v1/namespaces/{ns}/credits/bonuses?environment={env}");
    authed(Method::Get, &path, None).await
}

pub async fn banners(ns: &str, env: Environment) -> ApiResult<BannerList> {
    let path = format!("/api/v1/namespaces/{ns}/banners?environment={env}");
    authed(Method::Get, &path, None).await
}

// --- Monitoring and the dashboard summary (M1–M5, D1–D3) ----------------------

/// The dashboard's first screen: KPIs by role, 48 hourly bars, the all-time
/// API table and the uptime, from the server's rollups.
pub async fn dashboard(ns: &str, env: Environment) -> ApiResult<DashboardSummary> {
    let path = format!("/api/v1/namespaces/{ns}/dashboard?environment={env}");
    authed(Method::Get, &path, None).await
}

fn monitoring_path(ns: &str, what: &str, query: &MonitoringQuery, extra: &str) -> String {
    let mut path = format!(
        "/api/v1/namespaces/{ns}/monitoring/{what}?{}",
        query.to_query_string()
    );
    if !extra.is_empty() {
        path.push('&');
        path.push_str(extra);
    }
    path
}

/// Volume, errors, cost and latency percentiles over the query's window (M1).
pub async fn monitoring_series(ns: &str, query: &MonitoringQuery) -> ApiResult<Series> {
    authed(Method::Get, &monitoring_path(ns, "series", query, ""), None).await
}

/// The window's calls grouped by one dimension (M3).
pub async fn monitoring_breakdown(
    ns: &str,
    query: &MonitoringQuery,
    by: BreakdownBy,
) -> ApiResult<Breakdown> {
    let extra = format!("by={}", by.as_str());
    authed(
        Method::Get,
        &monitoring_path(ns, "breakdown", query, &extra),
        None,
    )
    .await
}

/// Where a page of the request log starts.
#[derive(Debug, Clone, PartialEq)]
pub enum LogCursor {
    /// The newest calls.
    Newest,
    /// Older than this cursor (paging back).
    Before(String),
    /// Newer than this cursor (the live tail's poll).
    After(String),
}

/// A page of individual calls matching the filters and the search text (M4).
pub async fn monitoring_requests(
    ns: &str,
    query: &MonitoringQuery,
    search: &str,
    cursor: &LogCursor,
    limit: u32,
) -> ApiResult<RequestPage> {
    let mut extra = format!("limit={limit}");
    let search = search.trim();
    if !search.is_empty() {
        extra.push_str(&format!("&q={}", encode_query_value(search)));
    }
    match cursor {
        LogCursor::Newest => {}
        LogCursor::Before(c) => extra.push_str(&format!("&before={}", encode_query_value(c))),
        LogCursor::After(c) => extra.push_str(&format!("&after={}", encode_query_value(c))),
    }
    authed(
        Method::Get,
        &monitoring_path(ns, "requests", query, &extra),
        None,
    )
    .await
}

/// The path of a usage export (M5) for [`download`].
pub fn monitoring_export_path(ns: &str, query: &MonitoringQuery, format: ExportFormat) -> String {
    monitoring_path(ns, "export", query, &format!("format={}", format.as_str()))
}

// --- Webhooks -----------------------------------------------------------------

pub async fn webhooks(ns: &str) -> ApiResult<WebhookEndpointList> {
    authed(
        Method::Get,
        &format!("/api/v1/namespaces/{ns}/webhooks"),
        None,
    )
    .await
}

pub async fn create_webhook(
    ns: &str,
    req: &CreateWebhookEndpoint,
) -> ApiResult<WebhookEndpointWithSecret> {
    let path = format!("/api/v1/namespaces/{ns}/webhooks");
    authed(Method::Post, &path, to_value(req)).await
}

pub async fn update_webhook(
    ns: &str,
    id: &str,
    req: &UpdateWebhookEndpoint,
) -> ApiResult<WebhookEndpoint> {
    let path = format!("/api/v1/namespaces/{ns}/webhooks/{}", query_value(id));
    authed(Method::Patch, &path, to_value(req)).await
}

pub async fn delete_webhook(ns: &str, id: &str) -> ApiResult<()> {
    let path = format!("/api/v1/namespaces/{ns}/webhooks/{}", query_value(id));
    authed(Method::Delete, &path, None).await
}

pub async fn rotate_webhook(ns: &str, id: &str) -> ApiResult<WebhookEndpointWithSecret> {
    let path = format!(
        "/api/v1/namespaces/{ns}/webhooks/{}/rotate",
        query_value(id)
    );
    authed(
        Method::Post,
        &path,
        to_value(&RotateWebhookSecret::default()),
    )
    .await
}

pub async fn test_webhook(ns: &str, id: &str) -> ApiResult<WebhookDelivery> {
    let path = format!("/api/v1/namespaces/{ns}/webhooks/{}/test", query_value(id));
    authed(Method::Post, &path, None).await
}

pub async fn webhook_deliveries(
    ns: &str,
    status: Option<&str>,
    before: Option<&str>,
) -> ApiResult<WebhookDeliveryPage> {
    let mut path = format!("/api/v1/namespaces/{ns}/webhook-deliveries?limit=25");
    if let Some(s) = status {
        path.push_str(&format!("&status={}", query_value(s)));
    }
    if let Some(b) = before {
        path.push_str(&format!("&before={}", query_value(b)));
    }
    authed(Method::Get, &path, None).await
}

pub async fn webhook_delivery(ns: &str, id: &str) -> ApiResult<WebhookDeliveryDetail> {
    let path = format!(
        "/api/v1/namespaces/{ns}/webhook-deliveries/{}",
        query_value(id)
    );
    authed(Method::Get, &path, None).await
}

pub async fn replay_webhook(ns: &str, id: &str) -> ApiResult<WebhookDelivery> {
    let path = format!(
        "/api/v1/namespaces/{ns}/webhook-deliveries/{}/replay",
        query_value(id)
    );
    authed(Method::Post, &path, None).await
}
