//! Sign-up, log-in, refresh and log-out.

use actix_web::{post, web, HttpResponse};
use tally_common::{
    Account, AuthResponse, ErrorBody, ErrorCode, LoginRequest, RefreshRequest, Role, Severity,
    SignupRequest,
};
use tally_store::accounts::AccountRow;
use tally_store::events::NewEvent;

use crate::auth::tokens::hash_refresh_token;
use crate::error::{ApiError, ApiResult};
use crate::routes::{clean_name, normalize_email, rfc3339};
use crate::state::AppState;

const MIN_PASSWORD: usize = 8;
const MAX_PASSWORD: usize = 256;

pub fn to_account(row: &AccountRow) -> Account {
    Account {
        id: row.id.clone(),
        email: row.email.clone(),
        display_name: row.display_name.clone(),
        created_at: rfc3339(row.created_at),
    }
}

/// Creates an account with a personal namespace (the caller is its owner) and
/// starts a session. Pending invitations for the email become memberships.
#[utoipa::path(
    tag = "auth",
    request_body = SignupRequest,
    responses(
        (status = 201, body = AuthResponse),
        (status = 400, description = "invalid email, password or name", body = ErrorBody),
        (status = 409, description = "an account with this email exists", body = ErrorBody),
    )
)]
#[post("/auth/signup")]
pub async fn signup(
    state: web::Data<AppState>,
    body: web::Json<SignupRequest>,
) -> ApiResult<HttpResponse> {
    let SignupRequest {
        email,
        password,
        display_name,
    } = body.into_inner();
    let email = normalize_email(&email)?;
    let len = password.chars().count();
    if !(MIN_PASSWORD..=MAX_PASSWORD).contains(&len) {
        return Err(ApiError::invalid(format!(
            "password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters"
        )));
    }
    let display_name = match display_name.as_deref().map(str::trim) {
        Some(name) if !name.is_empty() => clean_name("display_name", name, 100)?,
        _ => email.split('@').next().unwrap_or_default().to_owned(),
    };
    let hash = state.passwords.hash(password).await?;

    let mut tx = state.store.begin().await?;
    let account = match tally_store::accounts::insert(&mut tx, &email, &display_name, &hash).await {
        Err(tally_store::StoreError::Conflict(_)) => {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "an account with this email already exists",
            ))
        }
        other => other?,
    };
    let ns = tally_store::namespaces::insert(&mut tx, "Personal").await?;
    crate::services::credits::welcome(
        &mut tx,
        &ns.id,
        state.settings.gateway.welcome_test_credits_micros,
    )
    .await?;
    tally_store::namespaces::upsert_member(&mut tx, &ns.id, &account.id, Role::Owner).await?;
    tally_store::events::insert(
        &mut tx,
        NewEvent {
            namespace_id: Some(&ns.id),
            environment: None,
            kind: "namespace.created",
            severity: Severity::Info,
            message: &format!("Namespace \"{}\" created", ns.name),
            actor: Some(&account.email),
        },
    )
    .await?;
    for inv in tally_store::namespaces::take_invitations_for(&mut tx, &email).await? {
        tally_store::namespaces::upsert_member(&mut tx, &inv.namespace_id, &account.id, inv.role)
            .await?;
        tally_store::events::insert(
            &mut tx,
            NewEvent {
                namespace_id: Some(&inv.namespace_id),
                environment: None,
                kind: "member.joined",
                severity: Severity::Info,
                message: &format!("{} accepted the invitation as {}", account.email, inv.role),
                actor: Some(&account.email),
            },
        )
        .await?;
    }
    let family = tally_store::new_id("sess");
    let session = state
        .tokens
        .issue(&mut tx, to_account(&account), &family)
        .await?;
    tx.commit().await?;
    tracing::info!(account_id = %account.id, "account created");
    Ok(HttpResponse::Created().json(session))
}

/// Starts a session with email and password.
#[utoipa::path(
    tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, body = AuthResponse),
        (status = 401, description = "`invalid_credentials`", body = ErrorBody),
    )
)]
#[post("/auth/login")]
pub async fn login(
    state: web::Data<AppState>,
    body: web::Json<LoginRequest>,
) -> ApiResult<web::Json<AuthResponse>> {
    let LoginRequest { email, password } = body.into_inner();
    let invalid = || ApiError::new(ErrorCode::InvalidCredentials, "wrong email or password");
    // Malformed emails and over-long passwords are simply wrong credentials.
    let email = normalize_email(&email).unwrap_or_default();
    if password.len() > 4 * MAX_PASSWORD {
        return Err(invalid());
    }
    let account = {
        let mut conn = state.store.conn().await?;
        tally_store::accounts::by_email(&mut conn, &email).await?
    };
    let hash = account.as_ref().map(|a| a.password_hash.clone());
    if !state.passwords.verify(password, hash).await? {
        return Err(invalid());
    }
    let account = account.ok_or_else(invalid)?;
    let mut tx = state.store.begin().await?;
    let family = tally_store::new_id("sess");
    let session = state
        .tokens
        .issue(&mut tx, to_account(&account), &family)
        .await?;
    tx.commit().await?;
    Ok(web::Json(session))
}

/// Exchanges a refresh token for a new access token and a new refresh token.
/// Each refresh token works once; presenting a used one again revokes the whole
/// session, since only a stolen copy would do that.
#[utoipa::path(
    tag = "auth",
    request_body = RefreshRequest,
    responses(
        (status = 200, body = AuthResponse),
        (status = 401, description = "`invalid_refresh_token`", body = ErrorBody),
    )
)]
#[post("/auth/refresh")]
pub async fn refresh(
    state: web::Data<AppState>,
    body: web::Json<RefreshRequest>,
) -> ApiResult<web::Json<AuthResponse>> {
    let invalid = || {
        ApiError::new(
            ErrorCode::InvalidRefreshToken,
            "the refresh token is invalid, expired or revoked; log in again",
        )
    };
    let token_hash = hash_refresh_token(body.refresh_token.trim());
    let mut tx = state.store.begin().await?;
    let row = tally_store::sessions::get(&mut tx, &token_hash)
        .await?
        .ok_or_else(invalid)?;
    if row.revoked_at.is_some() || row.expires_at <= tally_store::now_ms() {
        return Err(invalid());
    }
    if row.used_at.is_some() || !tally_store::sessions::mark_used(&mut tx, &token_hash).await? {
        tally_store::sessions::revoke_family(&mut tx, &row.family_id).await?;
        tx.commit().await?;
        tracing::warn!(account_id = %row.account_id, "refresh token reused; session revoked");
        return Err(invalid());
    }
    let account = tally_store::accounts::by_id(&mut tx, &row.account_id)
        .await?
        .ok_or_else(invalid)?;
    let session = state
        .tokens
        .issue(&mut tx, to_account(&account), &row.family_id)
        .await?;
    tx.commit().await?;
    Ok(web::Json(session))
}

/// Ends the session the refresh token belongs to. Always 204, so it reveals
/// nothing about the token.
#[utoipa::path(
    tag = "auth",
    request_body = RefreshRequest,
    responses((status = 204, description = "session ended"))
)]
#[post("/auth/logout")]
pub async fn logout(
    state: web::Data<AppState>,
    body: web::Json<RefreshRequest>,
) -> ApiResult<HttpResponse> {
    let token_hash = hash_refresh_token(body.refresh_token.trim());
    let mut tx = state.store.begin().await?;
    if let Some(row) = tally_store::sessions::get(&mut tx, &token_hash).await? {
        tally_store::sessions::revoke_family(&mut tx, &row.family_id).await?;
    }
    tx.commit().await?;
    Ok(HttpResponse::NoContent().finish())
}
