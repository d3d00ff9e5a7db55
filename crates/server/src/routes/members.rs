//! Members and invitations of a namespace.
//!
//! Rules: owners and admins manage members; only an owner grants the owner role
//! or changes or removes an owner; anyone may leave; a namespace always keeps
//! at least one owner. Changes lock the namespace row so two concurrent
//! demotions cannot both pass the last-owner check.

use actix_web::{delete, get, patch, post, web, HttpResponse};
use tally_common::{
    AddMemberRequest, AddMemberResponse, ErrorBody, ErrorCode, Invitation, Member, MemberList,
    Role, Severity, UpdateMemberRequest,
};
use tally_store::events::NewEvent;
use tally_store::namespaces::{InvitationRow, MemberRow};
use tally_store::AnyConnection;

use crate::auth::{CurrentMember, Permission};
use crate::error::{ApiError, ApiResult};
use crate::routes::{normalize_email, rfc3339};
use crate::state::AppState;

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
    }
}

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

/// Adds a member by email (owner, admin). An email without an account gets an
/// invitation that becomes a membership when it signs up.
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
        (status = 409, description = "already a member", body = ErrorBody),
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
    let response = match tally_store::accounts::by_email(&mut tx, &email).await? {
        Some(account) => {
            if tally_store::namespaces::membership(&mut tx, ns_id, &account.id)
                .await?
                .is_some()
            {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    "this account is already a member; change its role instead",
                ));
            }
            tally_store::namespaces::upsert_member(&mut tx, ns_id, &account.id, body.role).await?;
            event(
                &mut tx,
                &member,
                "member.added",
                format!("{email} added as {}", body.role),
            )
            .await?;
            AddMemberResponse::Added {
                member: to_member(find_member(&mut tx, ns_id, &account.id).await?),
            }
        }
        None => {
            let inv = tally_store::namespaces::upsert_invitation(
                &mut tx,
                ns_id,
                &email,
                body.role,
                &member.account_id,
            )
            .await?;
            event(
                &mut tx,
                &member,
                "member.invited",
                format!("{email} invited as {}", body.role),
            )
            .await?;
            AddMemberResponse::Invited {
                invitation: to_invitation(inv),
            }
        }
    };
    tx.commit().await?;
    Ok(HttpResponse::Created().json(response))
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
