//! Accepting an invitation (A1): the invitee presents the invitation's token.
//!
//! Policy: the token is the only credential. It is 256 random bits, stored
//! as a SHA-256 hash, single use, and expires after `auth.invitation_ttl_secs`;
//! it travels in request bodies (and the dashboard's `/invite#token` fragment),
//! never in a URL path or query, so it does not end up in access logs. Any
//! signed-in account holding it may accept: the invited email is the
//! inviter's note of whom they meant, since an email is never verified. Both
//! routes are throttled per client address, and accepts per account too.

use actix_web::{post, web};
use tally_common::{
    ErrorBody, ErrorCode, InvitationPreview, InvitationTokenRequest, NamespaceWithRole, Severity,
};
use tally_store::events::NewEvent;

use crate::auth::tokens::sha256_hex;
use crate::auth::ClientIp;
use crate::auth::CurrentAccount;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::views::{rfc3339, to_namespace};

fn not_found() -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        "invitation not found: the link is wrong, was withdrawn or has been used",
    )
}

fn expired() -> ApiError {
    ApiError::new(
        ErrorCode::InvitationExpired,
        "this invitation has expired; ask for a new link",
    )
}

/// What an invitation offers: namespace, role, inviter, expiry. No session
/// needed, so the invitee can read it before signing up or logging in.
#[utoipa::path(
    tag = "members",
    request_body = InvitationTokenRequest,
    responses(
        (status = 200, body = InvitationPreview),
        (status = 404, description = "`not_found`: no such invitation (wrong, withdrawn or used)", body = ErrorBody),
        (status = 410, description = "`invitation_expired`", body = ErrorBody),
        (status = 429, description = "`rate_limited`; see Retry-After", body = ErrorBody),
    )
)]
#[post("/invitations/lookup")]
pub async fn lookup(
    state: web::Data<AppState>,
    ClientIp(ip): ClientIp,
    body: web::Json<InvitationTokenRequest>,
) -> ApiResult<web::Json<InvitationPreview>> {
    state.throttle.request(ip).await?;
    let mut conn = state.store.conn().await?;
    let found =
        tally_store::namespaces::invitation_by_token(&mut conn, &sha256_hex(body.token.trim()))
            .await?
            .ok_or_else(not_found)?;
    if found.invitation.expires_at <= tally_store::now_ms() {
        return Err(expired());
    }
    Ok(web::Json(InvitationPreview {
        namespace_name: found.namespace_name,
        role: found.invitation.role,
        email: found.invitation.email,
        invited_by: found.invited_by,
        expires_at: rfc3339(found.invitation.expires_at),
    }))
}

/// Joins the invitation's namespace with its role, as the signed-in account.
/// The token works once.
#[utoipa::path(
    tag = "members",
    security(("bearer" = [])),
    request_body = InvitationTokenRequest,
    responses(
        (status = 200, description = "joined", body = NamespaceWithRole),
        (status = 401, body = ErrorBody),
        (status = 404, description = "`not_found`: no such invitation (wrong, withdrawn or used)", body = ErrorBody),
        (status = 409, description = "`conflict`: already a member of that namespace (the invitation stays)", body = ErrorBody),
        (status = 410, description = "`invitation_expired`", body = ErrorBody),
        (status = 429, description = "`rate_limited`; see Retry-After", body = ErrorBody),
    )
)]
#[post("/invitations/accept")]
pub async fn accept(
    state: web::Data<AppState>,
    ClientIp(ip): ClientIp,
    caller: CurrentAccount,
    body: web::Json<InvitationTokenRequest>,
) -> ApiResult<web::Json<NamespaceWithRole>> {
    state.throttle.request(ip).await?;
    state.throttle.accept(&caller.account_id).await?;
    let mut tx = state.store.begin().await?;
    // Taking the row first makes the token single use under concurrency; an
    // early return below rolls the transaction back and leaves it in place.
    let inv = tally_store::namespaces::take_invitation(&mut tx, &sha256_hex(body.token.trim()))
        .await?
        .ok_or_else(not_found)?;
    if inv.expires_at <= tally_store::now_ms() {
        return Err(expired());
    }
    if tally_store::namespaces::membership(&mut tx, &inv.namespace_id, &caller.account_id)
        .await?
        .is_some()
    {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "you are already a member of this namespace",
        ));
    }
    let account = tally_store::accounts::by_id(&mut tx, &caller.account_id)
        .await?
        .ok_or_else(|| ApiError::unauthorized("the account no longer exists"))?;
    tally_store::namespaces::upsert_member(&mut tx, &inv.namespace_id, &account.id, inv.role)
        .await?;
    tally_store::events::insert(
        &mut tx,
        NewEvent {
            namespace_id: Some(&inv.namespace_id),
            environment: None,
            kind: "member.joined",
            severity: Severity::Info,
            message: &format!(
                "{} accepted the invitation for {} as {}",
                account.email, inv.email, inv.role
            ),
            actor: Some(&account.email),
        },
    )
    .await?;
    let joined = tally_store::namespaces::membership(&mut tx, &inv.namespace_id, &account.id)
        .await?
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("membership vanished")))?;
    tx.commit().await?;
    Ok(web::Json(to_namespace(joined)))
}
