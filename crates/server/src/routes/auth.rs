//! Sign-up, log-in, setup, refresh and log-out.
//!
//! Every one of these is throttled (`crate::throttle`): per client address,
//! and sign-up and login per email too. Sign-up only creates an account:
//! it never joins a namespace or grants anything because of the email.

use actix_web::{post, web, HttpResponse};
use tally_common::{
    AuthResponse, ErrorBody, ErrorCode, LoginRequest, RefreshRequest, SetupRequest, Severity,
    SignupRequest,
};
use tally_store::events::NewEvent;

use crate::auth::accounts::{self, MAX_PASSWORD};
use crate::auth::tokens::{hash_refresh_token, sha256_hex};
use crate::auth::ClientIp;
use crate::error::{ApiError, ApiResult};
use crate::input::normalize_email;
use crate::state::AppState;
use crate::views::to_account;

/// Creates an account with a personal namespace (the caller is its owner) and
/// starts a session. It joins nothing else: invitations are accepted with
/// their token, and operators are made explicitly.
#[utoipa::path(
    tag = "auth",
    request_body = SignupRequest,
    responses(
        (status = 201, body = AuthResponse),
        (status = 400, description = "invalid email, password or name", body = ErrorBody),
        (status = 409, description = "an account with this email exists", body = ErrorBody),
        (status = 429, description = "`rate_limited`: too many requests or sign-ups from this address, or sign-ups for this email; see Retry-After", body = ErrorBody),
        (status = 503, description = "`unavailable`: every password-hashing slot is busy; see Retry-After", body = ErrorBody),
    )
)]
#[post("/auth/signup")]
pub async fn signup(
    state: web::Data<AppState>,
    ClientIp(ip): ClientIp,
    body: web::Json<SignupRequest>,
) -> ApiResult<HttpResponse> {
    state.throttle.request(ip).await?;
    let SignupRequest {
        email,
        password,
        display_name,
    } = body.into_inner();
    let email = normalize_email(&email)?;
    accounts::check_password(&password)?;
    let display_name = accounts::display_name(&email, display_name.as_deref())?;
    state.throttle.signup(ip, &email).await?;
    let hash = state.passwords.hash(password).await?;

    let mut tx = state.store.begin().await?;
    let account = accounts::create(
        &mut tx,
        &state.settings.gateway,
        &email,
        &display_name,
        &hash,
        false,
    )
    .await?;
    let family = tally_store::new_id("sess");
    let session = state
        .tokens
        .issue(&mut tx, to_account(&account), &family)
        .await?;
    tx.commit().await?;
    tracing::info!(account_id = %account.id, "account created");
    Ok(HttpResponse::Created().json(session))
}

/// Creates the server's first operator with the one-time setup token (A1).
/// A new email gets a new account (201); an email that has an account needs
/// its password, and that account becomes the operator (200). Using the token
/// burns it, and every other setup token; once an operator exists, none works.
#[utoipa::path(
    tag = "auth",
    request_body = SetupRequest,
    responses(
        (status = 200, description = "an existing account became the operator", body = AuthResponse),
        (status = 201, description = "a new operator account", body = AuthResponse),
        (status = 400, description = "invalid email, password or name", body = ErrorBody),
        (status = 401, description = "`invalid_setup_token`: unknown, expired or used token, or the server has an operator; `invalid_credentials`: the email has an account and the password is not its own", body = ErrorBody),
        (status = 429, description = "`rate_limited`; see Retry-After", body = ErrorBody),
        (status = 503, description = "`unavailable`: every password-hashing slot is busy; see Retry-After", body = ErrorBody),
    )
)]
#[post("/auth/setup")]
pub async fn setup(
    state: web::Data<AppState>,
    ClientIp(ip): ClientIp,
    body: web::Json<SetupRequest>,
) -> ApiResult<HttpResponse> {
    state.throttle.request(ip).await?;
    let SetupRequest {
        token,
        email,
        password,
        display_name,
    } = body.into_inner();
    let invalid_token = || {
        ApiError::new(
            ErrorCode::InvalidSetupToken,
            "the setup token is unknown, expired or used, or this server already has an operator",
        )
    };
    let token_hash = sha256_hex(token.trim());
    {
        // A cheap check before any password work; the transaction checks again.
        let mut conn = state.store.conn().await?;
        if !tally_store::setup_tokens::is_valid(&mut conn, &token_hash).await? {
            return Err(invalid_token());
        }
    }
    let email = normalize_email(&email)?;
    let existing = {
        let mut conn = state.store.conn().await?;
        tally_store::accounts::by_email(&mut conn, &email).await?
    };
    let hash = match &existing {
        Some(account) => {
            if password.len() > 4 * MAX_PASSWORD
                || !state
                    .passwords
                    .verify(password, Some(account.password_hash.clone()))
                    .await?
            {
                return Err(ApiError::new(
                    ErrorCode::InvalidCredentials,
                    "this email has an account and the password is not its own",
                ));
            }
            None
        }
        None => {
            accounts::check_password(&password)?;
            Some(state.passwords.hash(password).await?)
        }
    };

    let mut tx = state.store.begin().await?;
    if tally_store::accounts::any_operator(&mut tx).await?
        || !tally_store::setup_tokens::consume(&mut tx, &token_hash).await?
    {
        tally_store::setup_tokens::clear(&mut tx).await?;
        tx.commit().await?;
        return Err(invalid_token());
    }
    let (account, created) = match (existing, hash) {
        (Some(mut account), _) => {
            tally_store::accounts::set_operator(&mut tx, &account.id, true).await?;
            account.is_operator = true;
            (account, false)
        }
        (None, Some(hash)) => {
            let name = accounts::display_name(&email, display_name.as_deref())?;
            let account =
                accounts::create(&mut tx, &state.settings.gateway, &email, &name, &hash, true)
                    .await?;
            (account, true)
        }
        (None, None) => return Err(ApiError::internal(anyhow::anyhow!("no password hash"))),
    };
    tally_store::events::insert(
        &mut tx,
        NewEvent {
            namespace_id: None,
            environment: None,
            kind: "operator.granted",
            severity: Severity::Info,
            message: &format!("{} became an operator with the setup token", account.email),
            actor: Some(&account.email),
        },
    )
    .await?;
    let family = tally_store::new_id("sess");
    let session = state
        .tokens
        .issue(&mut tx, to_account(&account), &family)
        .await?;
    tx.commit().await?;
    crate::auth::bootstrap::remove_setup_token_file(&state.settings.data_dir);
    tracing::info!(account_id = %account.id, "first operator set up");
    Ok(if created {
        HttpResponse::Created().json(session)
    } else {
        HttpResponse::Ok().json(session)
    })
}

/// Starts a session with email and password.
#[utoipa::path(
    tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, body = AuthResponse),
        (status = 401, description = "`invalid_credentials`", body = ErrorBody),
        (status = 429, description = "`rate_limited`: too many requests from this address, or too many failed logins for this account (from this address, or from all together); see Retry-After", body = ErrorBody),
        (status = 503, description = "`unavailable`: every password-hashing slot is busy; see Retry-After", body = ErrorBody),
    )
)]
#[post("/auth/login")]
pub async fn login(
    state: web::Data<AppState>,
    ClientIp(ip): ClientIp,
    body: web::Json<LoginRequest>,
) -> ApiResult<web::Json<AuthResponse>> {
    state.throttle.request(ip).await?;
    let LoginRequest { email, password } = body.into_inner();
    let invalid = || ApiError::new(ErrorCode::InvalidCredentials, "wrong email or password");
    // Malformed emails and over-long passwords are simply wrong credentials.
    let email = normalize_email(&email).unwrap_or_default();
    let attempt = state.throttle.login(ip, &email).await?;
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
    state.throttle.login_succeeded(attempt).await;
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
        (status = 429, description = "`rate_limited`: too many requests from this address; see Retry-After", body = ErrorBody),
    )
)]
#[post("/auth/refresh")]
pub async fn refresh(
    state: web::Data<AppState>,
    ClientIp(ip): ClientIp,
    body: web::Json<RefreshRequest>,
) -> ApiResult<web::Json<AuthResponse>> {
    state.throttle.request(ip).await?;
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
