//! API keys (K1–K7): create, list and filter, read, change, rotate, revoke, audit.
//!
//! Policy: a secret is `tk_<environment>_` plus 40 random alphanumerics (about
//! 238 bits). It is returned once; the database keeps its SHA-256 (a fast hash
//! is right for a secret this long) and last 4 characters. Developers, admins
//! and owners manage keys; every role can read them. Each change is written to
//! the key's audit trail and the namespace's event log in the same transaction.

use actix_web::{get, patch, post, web, HttpResponse};
use rand::distributions::{Alphanumeric, DistString};
use serde::Deserialize;
use serde_json::json;
use tally_common::{
    ApiKey, CreateKeyRequest, CreatedKey, Environment, ErrorBody, ErrorCode, KeyAudit,
    KeyAuditEntry, KeyLimits, KeyList, KeyStatus, RotateKeyRequest, Severity, UpdateKeyRequest,
};
use tally_store::events::NewEvent;
use tally_store::keys::{KeyChanges, KeyRow, NewKey};
use tally_store::AnyConnection;
use utoipa::IntoParams;

use crate::auth::tokens::sha256_hex;
use crate::auth::{CurrentMember, Permission};
use crate::error::{ApiError, ApiResult};
use crate::input::clean_name;
use crate::input::parse_expiry;
use crate::state::AppState;
use crate::views::rfc3339;

const MAX_LABELS: usize = 20;
const MAX_ALLOWED_APIS: usize = 100;
const DEFAULT_GRACE_SECS: i64 = 24 * 3600;
const MAX_GRACE_SECS: i64 = 30 * 24 * 3600;

/// A new secret for a key of `env`.
pub fn new_secret(env: Environment) -> String {
    format!(
        "tk_{}_{}",
        env.as_str(),
        Alphanumeric.sample_string(&mut rand::thread_rng(), tally_common::SECRET_RANDOM_LEN)
    )
}

fn last4(secret: &str) -> String {
    secret[secret.len().saturating_sub(4)..].to_owned()
}

pub fn status_of(row: &KeyRow, now_ms: i64) -> KeyStatus {
    if row.revoked_at.is_some() {
        KeyStatus::Revoked
    } else if row.expires_at.is_some_and(|t| t <= now_ms) {
        KeyStatus::Expired
    } else {
        KeyStatus::Active
    }
}

fn to_key(row: KeyRow) -> ApiResult<ApiKey> {
    let status = status_of(&row, tally_store::now_ms());
    let decode = |what: &str, e: serde_json::Error| {
        ApiError::internal(anyhow::anyhow!("key {} has malformed {what}: {e}", row.id))
    };
    Ok(ApiKey {
        labels: serde_json::from_str(&row.labels).map_err(|e| decode("labels", e))?,
        allowed_apis: serde_json::from_str(&row.allowed_apis)
            .map_err(|e| decode("allowed_apis", e))?,
        limits: serde_json::from_str(&row.limits).map_err(|e| decode("limits", e))?,
        prefix: format!("tk_{}_", row.environment.as_str()),
        status,
        expires_at: row.expires_at.map(rfc3339),
        revoked_at: row.revoked_at.map(rfc3339),
        previous_secret_expires_at: row.previous_secret_expires_at.map(rfc3339),
        created_at: rfc3339(row.created_at),
        updated_at: rfc3339(row.updated_at),
        id: row.id,
        namespace_id: row.namespace_id,
        name: row.name,
        environment: row.environment,
        last4: row.last4,
        created_by: row.created_by,
    })
}

fn clean_labels(labels: &[String]) -> ApiResult<Vec<String>> {
    if labels.len() > MAX_LABELS {
        return Err(ApiError::invalid(format!("at most {MAX_LABELS} labels")));
    }
    let mut out: Vec<String> = Vec::with_capacity(labels.len());
    for label in labels {
        let label = clean_name("label", label, 50)?;
        if !out.contains(&label) {
            out.push(label);
        }
    }
    Ok(out)
}

fn clean_allowed_apis(apis: &[String]) -> ApiResult<Vec<String>> {
    if apis.len() > MAX_ALLOWED_APIS {
        return Err(ApiError::invalid(format!(
            "at most {MAX_ALLOWED_APIS} allowed APIs"
        )));
    }
    let mut out: Vec<String> = Vec::with_capacity(apis.len());
    for api in apis {
        let api = api.trim();
        let valid = !api.is_empty()
            && api.len() <= 100
            && api
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ':'));
        if !valid {
            return Err(ApiError::invalid(format!(
                "allowed_apis entries are API slugs or model names (letters, digits, - _ . / :), got {api:?}"
            )));
        }
        if !out.iter().any(|a| a == api) {
            out.push(api.to_owned());
        }
    }
    Ok(out)
}

fn check_limits(l: &KeyLimits) -> ApiResult<()> {
    let positive = [
        l.requests_per_second.map(u64::from),
        l.requests_per_minute.map(u64::from),
        l.tokens_per_minute,
        l.requests_per_day,
        l.requests_per_month,
    ]
    .iter()
    .flatten()
    .all(|v| *v > 0)
        && [l.credits_per_day_micros, l.credits_per_month_micros]
            .iter()
            .flatten()
            .all(|v| *v > 0);
    if positive {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "limits must be positive; leave a limit out for no limit",
        ))
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> ApiResult<String> {
    serde_json::to_string(v).map_err(ApiError::internal)
}

async fn record(
    conn: &mut AnyConnection,
    member: &CurrentMember,
    key: &KeyRow,
    action: &str,
    details: serde_json::Value,
    severity: Severity,
    message: String,
) -> ApiResult<()> {
    tally_store::keys::audit(conn, &key.id, &member.email, action, &details.to_string()).await?;
    tally_store::events::insert(
        conn,
        NewEvent {
            namespace_id: Some(member.namespace_id()),
            environment: Some(key.environment),
            kind: &format!("key.{action}"),
            severity,
            message: &message,
            actor: Some(&member.email),
        },
    )
    .await?;
    Ok(())
}

async fn load(conn: &mut AnyConnection, member: &CurrentMember, key_id: &str) -> ApiResult<KeyRow> {
    tally_store::keys::get(conn, member.namespace_id(), key_id)
        .await?
        .ok_or_else(|| ApiError::not_found("key"))
}

fn not_revoked(row: &KeyRow) -> ApiResult<()> {
    if row.revoked_at.is_some() {
        Err(ApiError::new(
            ErrorCode::Conflict,
            "the key is revoked; create a new key instead",
        ))
    } else {
        Ok(())
    }
}

/// Creates a key. The response holds the secret, which is never shown again.
#[utoipa::path(
    operation_id = "create_key",
    tag = "keys",
    security(("bearer" = [])),
    params(("namespace_id" = String, Path, description = "Namespace id")),
    request_body = CreateKeyRequest,
    responses(
        (status = 201, body = CreatedKey),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
#[post("/namespaces/{namespace_id}/keys")]
pub async fn create(
    state: web::Data<AppState>,
    member: CurrentMember,
    body: web::Json<CreateKeyRequest>,
) -> ApiResult<HttpResponse> {
    member.require(Permission::Develop)?;
    let req = body.into_inner();
    let name = clean_name("name", &req.name, 100)?;
    let labels = clean_labels(&req.labels)?;
    let allowed = clean_allowed_apis(&req.allowed_apis)?;
    check_limits(&req.limits)?;
    let expires_at = req.expires_at.as_deref().map(parse_expiry).transpose()?;

    let secret = new_secret(req.environment);
    let id = tally_store::new_id("key");
    let mut tx = state.store.begin().await?;
    tally_store::keys::insert(
        &mut tx,
        NewKey {
            id: &id,
            namespace_id: member.namespace_id(),
            environment: req.environment,
            name: &name,
            secret_hash: &sha256_hex(&secret),
            last4: &last4(&secret),
            labels: &to_json(&labels)?,
            allowed_apis: &to_json(&allowed)?,
            limits: &to_json(&req.limits)?,
            expires_at,
            created_by: &member.email,
        },
    )
    .await?;
    let row = load(&mut tx, &member, &id).await?;
    record(
        &mut tx,
        &member,
        &row,
        "created",
        json!({"name": name, "environment": req.environment}),
        Severity::Info,
        format!(
            "{} key \"{name}\" created (…{})",
            req.environment, row.last4
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(HttpResponse::Created().json(CreatedKey {
        key: to_key(row)?,
        secret,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct KeyQuery {
    /// Only keys of this environment.
    pub environment: Option<Environment>,
    /// Only keys with this status.
    pub status: Option<KeyStatus>,
    /// Only keys carrying this label.
    pub label: Option<String>,
}

/// Keys of the namespace, newest first, filtered by environment, status and label (K7).
#[utoipa::path(
    operation_id = "list_keys",
    tag = "keys",
    security(("bearer" = [])),
    params(("namespace_id" = String, Path, description = "Namespace id"), KeyQuery),
    responses(
        (status = 200, body = KeyList),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
#[get("/namespaces/{namespace_id}/keys")]
pub async fn list(
    state: web::Data<AppState>,
    member: CurrentMember,
    query: web::Query<KeyQuery>,
) -> ApiResult<web::Json<KeyList>> {
    member.require(Permission::Read)?;
    let mut conn = state.store.conn().await?;
    let rows = tally_store::keys::list(&mut conn, member.namespace_id(), query.environment).await?;
    let mut items = Vec::with_capacity(rows.len());
    for row in rows {
        let key = to_key(row)?;
        let status_ok = query.status.is_none_or(|s| s == key.status);
        let label_ok = query
            .label
            .as_deref()
            .is_none_or(|l| key.labels.iter().any(|k| k == l.trim()));
        if status_ok && label_ok {
            items.push(key);
        }
    }
    Ok(web::Json(KeyList { items }))
}

/// One key.
#[utoipa::path(
    operation_id = "get_key",
    tag = "keys",
    security(("bearer" = [])),
    params(
        ("namespace_id" = String, Path, description = "Namespace id"),
        ("key_id" = String, Path, description = "Key id"),
    ),
    responses(
        (status = 200, body = ApiKey),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
#[get("/namespaces/{namespace_id}/keys/{key_id}")]
pub async fn get(
    state: web::Data<AppState>,
    member: CurrentMember,
    path: web::Path<(String, String)>,
) -> ApiResult<web::Json<ApiKey>> {
    member.require(Permission::Read)?;
    let mut conn = state.store.conn().await?;
    let row = load(&mut conn, &member, &path.1).await?;
    Ok(web::Json(to_key(row)?))
}

/// Changes a key's name, labels, allowed APIs, limits or expiry. Revoked keys
/// cannot change (409).
#[utoipa::path(
    operation_id = "update_key",
    tag = "keys",
    security(("bearer" = [])),
    params(
        ("namespace_id" = String, Path, description = "Namespace id"),
        ("key_id" = String, Path, description = "Key id"),
    ),
    request_body = UpdateKeyRequest,
    responses(
        (status = 200, body = ApiKey),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody),
    )
)]
#[patch("/namespaces/{namespace_id}/keys/{key_id}")]
pub async fn update(
    state: web::Data<AppState>,
    member: CurrentMember,
    path: web::Path<(String, String)>,
    body: web::Json<UpdateKeyRequest>,
) -> ApiResult<web::Json<ApiKey>> {
    member.require(Permission::Develop)?;
    let req = body.into_inner();
    let name = req
        .name
        .as_deref()
        .map(|n| clean_name("name", n, 100))
        .transpose()?;
    let labels = req.labels.as_deref().map(clean_labels).transpose()?;
    let allowed = req
        .allowed_apis
        .as_deref()
        .map(clean_allowed_apis)
        .transpose()?;
    if let Some(l) = &req.limits {
        check_limits(l)?;
    }
    let expires_at = req.expires_at.as_deref().map(parse_expiry).transpose()?;

    let mut tx = state.store.begin().await?;
    let before = load(&mut tx, &member, &path.1).await?;
    not_revoked(&before)?;
    let old = to_key(before.clone())?;
    let labels_json = labels.as_ref().map(to_json).transpose()?;
    let allowed_json = allowed.as_ref().map(to_json).transpose()?;
    let limits_json = req.limits.as_ref().map(to_json).transpose()?;
    tally_store::keys::update(
        &mut tx,
        &before.id,
        KeyChanges {
            name: name.as_deref(),
            labels: labels_json.as_deref(),
            allowed_apis: allowed_json.as_deref(),
            limits: limits_json.as_deref(),
            expires_at,
        },
    )
    .await?;
    let after = load(&mut tx, &member, &before.id).await?;
    let new = to_key(after.clone())?;
    let mut changes = serde_json::Map::new();
    if old.name != new.name {
        changes.insert("name".into(), json!([old.name, new.name]));
    }
    if old.labels != new.labels {
        changes.insert("labels".into(), json!([old.labels, new.labels]));
    }
    if old.allowed_apis != new.allowed_apis {
        changes.insert(
            "allowed_apis".into(),
            json!([old.allowed_apis, new.allowed_apis]),
        );
    }
    if old.limits != new.limits {
        changes.insert("limits".into(), json!([old.limits, new.limits]));
    }
    if old.expires_at != new.expires_at {
        changes.insert("expires_at".into(), json!([old.expires_at, new.expires_at]));
    }
    if !changes.is_empty() {
        let fields: Vec<_> = changes.keys().cloned().collect();
        record(
            &mut tx,
            &member,
            &after,
            "updated",
            serde_json::Value::Object(changes),
            Severity::Info,
            format!("key \"{}\" changed: {}", new.name, fields.join(", ")),
        )
        .await?;
    }
    tx.commit().await?;
    // K5: this instance drops the key at once; others within one poll.
    state.gateway.forget_key(&new.id);
    Ok(web::Json(new))
}

/// Issues a new secret (K4). The previous secret keeps working until the grace
/// period ends (default one day; 0 ends it at once).
#[utoipa::path(
    tag = "keys",
    security(("bearer" = [])),
    params(
        ("namespace_id" = String, Path, description = "Namespace id"),
        ("key_id" = String, Path, description = "Key id"),
    ),
    request_body(content = Option<RotateKeyRequest>, description = "Optional; an empty body uses the defaults"),
    responses(
        (status = 200, body = CreatedKey),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody),
    )
)]
#[post("/namespaces/{namespace_id}/keys/{key_id}/rotate")]
pub async fn rotate(
    state: web::Data<AppState>,
    member: CurrentMember,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> ApiResult<web::Json<CreatedKey>> {
    member.require(Permission::Develop)?;
    // The body is optional; when present it must be valid.
    let req: RotateKeyRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RotateKeyRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(ErrorCode::InvalidJson, format!("invalid JSON body: {e}")))?
    };
    let grace = req.grace_seconds.unwrap_or(DEFAULT_GRACE_SECS);
    if !(0..=MAX_GRACE_SECS).contains(&grace) {
        return Err(ApiError::invalid(format!(
            "grace_seconds must be between 0 and {MAX_GRACE_SECS}"
        )));
    }
    let mut tx = state.store.begin().await?;
    let row = load(&mut tx, &member, &path.1).await?;
    not_revoked(&row)?;
    let secret = new_secret(row.environment);
    let deadline = tally_store::now_ms() + grace * 1000;
    tally_store::keys::rotate(
        &mut tx,
        &row.id,
        &sha256_hex(&secret),
        &last4(&secret),
        deadline,
    )
    .await?;
    let after = load(&mut tx, &member, &row.id).await?;
    record(
        &mut tx,
        &member,
        &after,
        "rotated",
        json!({"grace_seconds": grace, "previous_last4": row.last4, "last4": after.last4}),
        Severity::Info,
        format!(
            "key \"{}\" rotated; the previous secret (…{}) works until {}",
            row.name,
            row.last4,
            rfc3339(deadline)
        ),
    )
    .await?;
    tx.commit().await?;
    state.gateway.forget_key(&after.id);
    Ok(web::Json(CreatedKey {
        key: to_key(after)?,
        secret,
    }))
}

/// Revokes a key (K5): every secret of it stops working. Revoking a revoked key
/// changes nothing and returns it.
#[utoipa::path(
    tag = "keys",
    security(("bearer" = [])),
    params(
        ("namespace_id" = String, Path, description = "Namespace id"),
        ("key_id" = String, Path, description = "Key id"),
    ),
    responses(
        (status = 200, body = ApiKey),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
#[post("/namespaces/{namespace_id}/keys/{key_id}/revoke")]
pub async fn revoke(
    state: web::Data<AppState>,
    member: CurrentMember,
    path: web::Path<(String, String)>,
) -> ApiResult<web::Json<ApiKey>> {
    member.require(Permission::Develop)?;
    let mut tx = state.store.begin().await?;
    let row = load(&mut tx, &member, &path.1).await?;
    if tally_store::keys::revoke(&mut tx, &row.id).await? {
        record(
            &mut tx,
            &member,
            &row,
            "revoked",
            json!({}),
            Severity::Warning,
            format!("key \"{}\" (…{}) revoked", row.name, row.last4),
        )
        .await?;
    }
    let after = load(&mut tx, &member, &row.id).await?;
    tx.commit().await?;
    state.gateway.forget_key(&row.id);
    Ok(web::Json(to_key(after)?))
}

/// Who created, changed, rotated or revoked the key, oldest first (K6).
#[utoipa::path(
    tag = "keys",
    security(("bearer" = [])),
    params(
        ("namespace_id" = String, Path, description = "Namespace id"),
        ("key_id" = String, Path, description = "Key id"),
    ),
    responses(
        (status = 200, body = KeyAudit),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
#[get("/namespaces/{namespace_id}/keys/{key_id}/audit")]
pub async fn audit(
    state: web::Data<AppState>,
    member: CurrentMember,
    path: web::Path<(String, String)>,
) -> ApiResult<web::Json<KeyAudit>> {
    member.require(Permission::Read)?;
    let mut conn = state.store.conn().await?;
    let row = load(&mut conn, &member, &path.1).await?;
    let items = tally_store::keys::audit_trail(&mut conn, &row.id)
        .await?
        .into_iter()
        .map(|a| KeyAuditEntry {
            time: rfc3339(a.time),
            actor: a.actor,
            action: a.action,
            details: serde_json::from_str(&a.details).unwrap_or(serde_json::Value::Null),
        })
        .collect();
    Ok(web::Json(KeyAudit { items }))
}
