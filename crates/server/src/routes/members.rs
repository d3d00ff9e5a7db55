//! Members and invitations of a namespace.
//!
//! Rules: owners and admins manage members; only an owner grants the owner role
//! or changes or removes an owner; anyone may leave; a namespace always keeps
//! at least one owner. Changes lock the namespace row so two concurrent
//! demotions cannot both pass the last-owner check. Every addition is an
//! invitation that the invitee accepts with its token (`routes::invitations`).

use actix_web::{delete, get, patch, post, web, HttpResponse};
use tally_common::{
    AddMemberRequest, AddMemberResponse, ErrorBody, ErrorCode, Invitation, Member, MemberList,
    Role, Severity, UpdateMemberRequest,
};
use tally_store::events::NewEvent;
use tally_store::namespaces::{InvitationRow, MemberRow};
use tally_store::AnyConnection;

use crate::auth::tokens::{random_token, sha256_hex};
use crate::auth::{CurrentMember, Permission};
use crate::error::{ApiError, ApiResult};
use crate::input::normalize_email;
use crate::state::AppState;
use crate::views::rfc3339;

fn to_member(row: MemberRow) -> Member {
    Member {
        account_id: row.account_id,
        email: row.email,
        display_name: row.display_name,
        role: row.role,
        joined_at: rfc3339(row.joined_at),
    }
}

fn to_invitation(row: InvitationRow) -> Invitation {
    Invitation {
        id: row.id,
        email: row.email,
        role: row.role,
        created_at: rfc3339(row.created_at),
        expires_at: rfc3339(row.expires_at),
        expired: row.expires_at <= tally_store::now_ms(),
    }
}

/// Pending invitations one namespace may have (a bound on what an admin can
/// make the server store).
const MAX_INVITATIONS: usize = 500;
const INVITATION_PREFIX: &str = "tin_";

async fn event(
    conn: &mut AnyConnection,
    member: &CurrentMember,
    kind: &str,
    message: String,
) -> ApiResult<()> {
    tally_store::events::insert(
        conn,
        NewEvent {
            namespace_id: Some(member.namespace_id()),
            environment: None,
            kind,
            severity: Severity::Info,
            message: &message,
            actor: Some(&member.email),
        },
    )
    .await?;
    Ok(())
}

async fn find_member(
    conn: &mut AnyConnection,
    namespace_id: &str,
    account_id: &str,
) -> ApiResult<MemberRow> {
    tally_store::namespaces::member(conn, namespace_id, account_id)
        .await?
        .ok_or_else(|| ApiError::not_found("member"))
}

fn last_owner() -> ApiError {
    ApiError::new(
        ErrorCode::LastOwner,
        "a namespace must keep at least one owner; make someone else owner first",
    )
}

/// Members and pending invitations.
#[utoipa::path(
    operation_id = "list_members",
    tag = "members",
    security(("bearer" = [])),
    params(("namespace_id" = String, Path, description = "Namespace id")),
    responses(
        (status = 200, body = MemberList),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
#[get("/namespaces/{namespace_id}/members")]
pub async fn list(
    state: web::Data<AppState>,
    member: CurrentMember,
) -> ApiResult<web::Json<MemberList>> {
    member.require(Permission::Read)?;
    let mut conn = state.store.conn().await?;
    let members = tally_store::namespaces::members(&mut conn, member.namespace_id()).await?;
    let invitations =
        tally_store::namespaces::invitations(&mut conn, member.namespace_id()).await?;
    Ok(web::Json(MemberList {
        members: members.into_iter().map(to_member).collect(),
        invitations: invitations.into_iter().map(to_invitation).collect(),
    }))
}

/// Invites someone by email (owner, admin): returns the invitation and its
/// token once, as a link to send them. Whoever opens the link and accepts it
/// while signed in joins with the role; nothing is joined by email alone, and
/// the answer is the same whether or not the email has an account. Inviting
/// the same email again renews the invitation with a new link.
#[utoipa::path(
    tag = "members",
    security(("bearer" = [])),
    params(("namespace_id" = String, Path, description = "Namespace id")),
    request_body = AddMemberRequest,
    responses(
        (status = 201, body = AddMemberResponse),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "`conflict`: already a member, or 500 pending invitations", body = ErrorBody),
    )
)]
#[post("/namespaces/{namespace_id}/members")]
pub async fn add(
    state: web::Data<AppState>,
    member: CurrentMember,
    body: web::Json<AddMemberRequest>,
) -> ApiResult<HttpResponse> {
    member.require(Permission::ManageNamespace)?;
    if body.role == Role::Owner {
        member.require(Permission::ManageOwners)?;
    }
    let email = normalize_email(&body.email)?;
    let ns_id = member.namespace_id();
    let mut tx = state.store.begin().await?;
    tally_store::namespaces::lock(&mut tx, ns_id).await?;
    // Members are listed to every member already, so this reveals nothing new.
    let members = tally_store::namespaces::members(&mut tx, ns_id).await?;
    if members.iter().any(|m| m.email == email) {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "this email is already a member; change its role instead",
        ));
    }
    // A renewal replaces a row; only a new email adds one.
    let pending = tally_store::namespaces::invitations(&mut tx, ns_id).await?;
    if pending.len() >= MAX_INVITATIONS && !pending.iter().any(|i| i.email == email) {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("a namespace has at most {MAX_INVITATIONS} pending invitations; withdraw some"),
        ));
    }
    let token = random_token(INVITATION_PREFIX);
    let expires_at = tally_store::now_ms() + state.settings.auth.invitation_ttl_secs.max(60) * 1000;
    let inv = tally_store::namespaces::upsert_invitation(
        &mut tx,
        ns_id,
        &email,
        body.role,
        &member.account_id,
        &sha256_hex(&token),
        expires_at,
    )
    .await?;
    event(
        &mut tx,
        &member,
        "member.invited",
        format!("{email} invited as {}", body.role),
    )
    .await?;
    tx.commit().await?;
    Ok(HttpResponse::Created().json(AddMemberResponse {
        invitation: to_invitation(inv),
        invite_path: format!("/invite#{token}"),
        token,
    }))
}

/// Changes a member's role (owner, admin; only an owner grants or removes the
/// owner role). 409 `last_owner` if it would leave no owner.
#[utoipa::path(
    operation_id = "update_member",
    tag = "members",
    security(("bearer" = [])),
    params(
        ("namespace_id" = String, Path, description = "Namespace id"),
        ("account_id" = String, Path, description = "The member's account id"),
    ),
    request_body = UpdateMemberRequest,
    responses(
        (status = 200, body = Member),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody),
    )
)]
#[patch("/namespaces/{namespace_id}/members/{account_id}")]
pub async fn update(
    state: web::Data<AppState>,
    member: CurrentMember,
    path: web::Path<(String, String)>,
    body: web::Json<UpdateMemberRequest>,
) -> ApiResult<web::Json<Member>> {
    member.require(Permission::ManageNamespace)?;
    let (_, account_id) = path.into_inner();
    let ns_id = member.namespace_id();
    let mut tx = state.store.begin().await?;
    tally_store::namespaces::lock(&mut tx, ns_id).await?;
    let target = find_member(&mut tx, ns_id, &account_id).await?;
    if target.role == Role::Owner || body.role == Role::Owner {
        member.require(Permission::ManageOwners)?;
    }
    if target.role != body.role {
        tally_store::namespaces::upsert_member(&mut tx, ns_id, &account_id, body.role).await?;
        if tally_store::namespaces::count_owners(&mut tx, ns_id).await? == 0 {
            return Err(last_owner());
        }
        event(
            &mut tx,
            &member,
            "member.role_changed",
            format!(
                "{} changed from {} to {}",
                target.email, target.role, body.role
            ),
        )
        .await?;
    }
    let updated = find_member(&mut tx, ns_id, &account_id).await?;
    tx.commit().await?;
    Ok(web::Json(to_member(updated)))
}

/// Removes a member (owner, admin; only an owner removes an owner). Any member
/// may remove themself (leave). 409 `last_owner` if it would leave no owner.
#[utoipa::path(
    operation_id = "remove_member",
    tag = "members",
    security(("bearer" = [])),
    params(
        ("namespace_id" = String, Path, description = "Namespace id"),
        ("account_id" = String, Path, description = "The member's account id"),
    ),
    responses(
        (status = 204, description = "removed"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody),
    )
)]
#[delete("/namespaces/{namespace_id}/members/{account_id}")]
pub async fn remove(
    state: web::Data<AppState>,
    member: CurrentMember,
    path: web::Path<(String, String)>,
) -> ApiResult<HttpResponse> {
    let (_, account_id) = path.into_inner();
    let leaving = account_id == member.account_id;
    if !leaving {
        member.require(Permission::ManageNamespace)?;
    }
    let ns_id = member.namespace_id();
    let mut tx = state.store.begin().await?;
    tally_store::namespaces::lock(&mut tx, ns_id).await?;
    let target = find_member(&mut tx, ns_id, &account_id).await?;
    if target.role == Role::Owner && !leaving {
        member.require(Permission::ManageOwners)?;
    }
    tally_store::namespaces::remove_member(&mut tx, ns_id, &account_id).await?;
    if tally_store::namespaces::count_owners(&mut tx, ns_id).await? == 0 {
        return Err(last_owner());
    }
    let message = if leaving {
        format!("{} left the namespace", target.email)
    } else {
        format!("{} removed", target.email)
    };
    event(&mut tx, &member, "member.removed", message).await?;
    tx.commit().await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Withdraws a pending invitation (owner, admin).
#[utoipa::path(
    tag = "members",
    security(("bearer" = [])),
    params(
        ("namespace_id" = String, Path, description = "Namespace id"),
        ("invitation_id" = String, Path, description = "Invitation id"),
    ),
    responses(
        (status = 204, description = "withdrawn"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
#[delete("/namespaces/{namespace_id}/invitations/{invitation_id}")]
pub async fn delete_invitation(
    state: web::Data<AppState>,
    member: CurrentMember,
    path: web::Path<(String, String)>,
) -> ApiResult<HttpResponse> {
    member.require(Permission::ManageNamespace)?;
    let (_, invitation_id) = path.into_inner();
    let mut tx = state.store.begin().await?;
    if !tally_store::namespaces::delete_invitation(&mut tx, member.namespace_id(), &invitation_id)
        .await?
    {
        return Err(ApiError::not_found("invitation"));
    }
    event(
        &mut tx,
        &member,
        "member.invitation_withdrawn",
        "an invitation was withdrawn".to_owned(),
    )
    .await?;
    tx.commit().await?;
    Ok(HttpResponse::NoContent().finish())
}
