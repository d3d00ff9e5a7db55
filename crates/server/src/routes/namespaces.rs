//! Namespaces: list, create, read, rename.

use actix_web::{get, patch, post, web, HttpResponse};
use tally_common::{
    CreateNamespaceRequest, ErrorBody, NamespaceList, NamespaceWithRole, Role, Severity,
    UpdateNamespaceRequest,
};
use tally_store::events::NewEvent;

use crate::auth::{CurrentAccount, CurrentMember, Permission};
use crate::error::{ApiError, ApiResult};
use crate::input::clean_name;
use crate::state::AppState;
use crate::views::to_namespace;

/// Namespaces the caller belongs to, oldest first, with the caller's role.
#[utoipa::path(
    operation_id = "list_namespaces",
    tag = "namespaces",
    security(("bearer" = [])),
    responses((status = 200, body = NamespaceList), (status = 401, body = ErrorBody))
)]
#[get("/namespaces")]
pub async fn list(
    state: web::Data<AppState>,
    caller: CurrentAccount,
) -> ApiResult<web::Json<NamespaceList>> {
    let mut conn = state.store.conn().await?;
    let items = tally_store::namespaces::memberships_of(&mut conn, &caller.account_id)
        .await?
        .into_iter()
        .map(to_namespace)
        .collect();
    Ok(web::Json(NamespaceList { items }))
}

/// Creates a namespace; the caller becomes its owner.
#[utoipa::path(
    operation_id = "create_namespace",
    tag = "namespaces",
    security(("bearer" = [])),
    request_body = CreateNamespaceRequest,
    responses(
        (status = 201, body = NamespaceWithRole),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
    )
)]
#[post("/namespaces")]
pub async fn create(
    state: web::Data<AppState>,
    caller: CurrentAccount,
    body: web::Json<CreateNamespaceRequest>,
) -> ApiResult<HttpResponse> {
    let name = clean_name("name", &body.name, 100)?;
    let mut tx = state.store.begin().await?;
    let account = tally_store::accounts::by_id(&mut tx, &caller.account_id)
        .await?
        .ok_or_else(|| ApiError::unauthorized("the account no longer exists"))?;
    let ns = tally_store::namespaces::insert(&mut tx, &name).await?;
    crate::services::credits::welcome(
        &mut tx,
        &ns.id,
        state.settings.gateway.welcome_test_credits_micros,
    )
    .await?;
    tally_store::namespaces::upsert_member(&mut tx, &ns.id, &caller.account_id, Role::Owner)
        .await?;
    tally_store::events::insert(
        &mut tx,
        NewEvent {
            namespace_id: Some(&ns.id),
            environment: None,
            kind: "namespace.created",
            severity: Severity::Info,
            message: &format!("Namespace \"{name}\" created"),
            actor: Some(&account.email),
        },
    )
    .await?;
    let created = tally_store::namespaces::membership(&mut tx, &ns.id, &caller.account_id)
        .await?
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("new namespace vanished")))?;
    tx.commit().await?;
    Ok(HttpResponse::Created().json(to_namespace(created)))
}

/// One namespace, with the caller's role. 404 when the caller is not a member.
#[utoipa::path(
    operation_id = "get_namespace",
    tag = "namespaces",
    security(("bearer" = [])),
    params(("namespace_id" = String, Path, description = "Namespace id")),
    responses(
        (status = 200, body = NamespaceWithRole),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
#[get("/namespaces/{namespace_id}")]
pub async fn get(member: CurrentMember) -> web::Json<NamespaceWithRole> {
    web::Json(member.namespace)
}

/// Renames a namespace (owner, admin).
#[utoipa::path(
    operation_id = "update_namespace",
    tag = "namespaces",
    security(("bearer" = [])),
    params(("namespace_id" = String, Path, description = "Namespace id")),
    request_body = UpdateNamespaceRequest,
    responses(
        (status = 200, body = NamespaceWithRole),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
#[patch("/namespaces/{namespace_id}")]
pub async fn update(
    state: web::Data<AppState>,
    member: CurrentMember,
    body: web::Json<UpdateNamespaceRequest>,
) -> ApiResult<web::Json<NamespaceWithRole>> {
    member.require(Permission::ManageNamespace)?;
    let name = clean_name("name", &body.name, 100)?;
    let mut tx = state.store.begin().await?;
    tally_store::namespaces::rename(&mut tx, member.namespace_id(), &name).await?;
    tally_store::events::insert(
        &mut tx,
        NewEvent {
            namespace_id: Some(member.namespace_id()),
            environment: None,
            kind: "namespace.renamed",
            severity: Severity::Info,
            message: &format!(
                "Namespace renamed from \"{}\" to \"{name}\"",
                member.namespace.namespace.name
            ),
            actor: Some(&member.email),
        },
    )
    .await?;
    tx.commit().await?;
    let mut ns = member.namespace;
    ns.namespace.name = name;
    Ok(web::Json(ns))
}
