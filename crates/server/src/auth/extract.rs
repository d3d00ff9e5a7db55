//! Request extractors that authenticate the caller.
//!
//! `CurrentAccount` checks the bearer access token. `CurrentMember` also loads the
//! caller's membership of the `{namespace_id}` in the path; a namespace the caller
//! does not belong to is reported as not found, exactly like one that does not
//! exist, so its existence never leaks.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::http::header::AUTHORIZATION;
use actix_web::{web, FromRequest, HttpRequest};
use tally_common::{NamespaceWithRole, Role};

use crate::error::ApiError;
use crate::state::AppState;
use crate::views::to_namespace;

#[derive(Debug, Clone)]
pub struct CurrentAccount {
    pub account_id: String,
}

fn bearer(req: &HttpRequest) -> Result<&str, ApiError> {
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer header"))?;
    let value = header
        .to_str()
        .map_err(|_| ApiError::unauthorized("malformed Authorization header"))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| ApiError::unauthorized("expected Authorization: Bearer <token>"))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::unauthorized(
            "expected Authorization: Bearer <token>",
        ));
    }
    Ok(token.trim())
}

fn state(req: &HttpRequest) -> Result<web::Data<AppState>, ApiError> {
    req.app_data::<web::Data<AppState>>()
        .cloned()
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("application state missing")))
}

/// The app state and the account id of a valid bearer access token.
fn authenticate(req: &HttpRequest) -> Result<(web::Data<AppState>, String), ApiError> {
    let state = state(req)?;
    let account_id = state.tokens.verify_access(bearer(req)?)?;
    Ok((state, account_id))
}

impl FromRequest for CurrentAccount {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(authenticate(req).map(|(_, account_id)| CurrentAccount { account_id }))
    }
}

/// What a role may do in its namespace (see docs/ARCHITECTURE.md, "Roles").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// See the namespace, its members, events, keys (never their secrets),
    /// balances, usage and monitoring. Every role.
    Read,
    /// Rename the namespace, add, change and remove members.
    ManageNamespace,
    /// Grant or take away the owner role.
    ManageOwners,
    /// Create, change and revoke keys; calls from the playground (test mode).
    Develop,
    /// Top-ups, subscriptions, alerts and statements.
    Billing,
}

pub fn allows(role: Role, permission: Permission) -> bool {
    use Permission::*;
    match role {
        Role::Owner => true,
        Role::Admin => permission != ManageOwners,
        Role::Developer => matches!(permission, Read | Develop),
        Role::Billing => matches!(permission, Read | Billing),
        Role::Viewer => permission == Read,
    }
}

/// The caller, a member of the namespace named in the path.
#[derive(Debug, Clone)]
pub struct CurrentMember {
    pub account_id: String,
    pub email: String,
    pub namespace: NamespaceWithRole,
}

impl CurrentMember {
    pub fn namespace_id(&self) -> &str {
        &self.namespace.namespace.id
    }

    pub fn role(&self) -> Role {
        self.namespace.role
    }

    /// Fails with 403 unless the caller's role has `permission`.
    pub fn require(&self, permission: Permission) -> Result<(), ApiError> {
        if allows(self.role(), permission) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "the {} role may not do this in this namespace",
                self.role()
            )))
        }
    }
}

impl FromRequest for CurrentMember {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let prelude = authenticate(req).and_then(|(state, account_id)| {
            let namespace_id = req
                .match_info()
                .get("namespace_id")
                .ok_or_else(|| ApiError::internal(anyhow::anyhow!("route has no namespace_id")))?
                .to_owned();
            Ok((state, account_id, namespace_id))
        });
        Box::pin(async move {
            let (state, account_id, namespace_id) = prelude?;
            let mut conn = state.store.conn().await?;
            let (membership, email) =
                tally_store::namespaces::caller(&mut conn, &namespace_id, &account_id)
                    .await?
                    .ok_or_else(|| ApiError::not_found("namespace"))?;
            Ok(CurrentMember {
                account_id,
                email,
                namespace: to_namespace(membership),
            })
        })
    }
}

/// An operator (runs the server: catalog, grants). Everyone else gets 403.
#[derive(Debug, Clone)]
pub struct CurrentOperator {
    pub account_id: String,
    pub email: String,
}

/// Whether an account is an operator: only its flag, set explicitly by
/// `tally admin` or the setup token (see `auth::bootstrap`).
pub fn is_operator(account: &tally_store::accounts::AccountRow) -> bool {
    account.is_operator
}

impl FromRequest for CurrentOperator {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let prelude = authenticate(req);
        Box::pin(async move {
            let (state, account_id) = prelude?;
            let mut conn = state.store.conn().await?;
            let account = tally_store::accounts::by_id(&mut conn, &account_id)
                .await?
                .ok_or_else(|| ApiError::unauthorized("the account no longer exists"))?;
            if !is_operator(&account) {
                return Err(ApiError::forbidden(
                    "only operators of this server may do this",
                ));
            }
            Ok(CurrentOperator {
                account_id,
                email: account.email,
            })
        })
    }
}

/// The caller's address as the throttle counts it (`crate::throttle`): the TCP
/// peer, or what trusted proxies forwarded.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

impl FromRequest for ClientIp {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(
            req.app_data::<web::Data<AppState>>()
                .map(|state| ClientIp(state.throttle.client_ip(req)))
                .ok_or_else(|| ApiError::internal(anyhow::anyhow!("application state missing"))),
        )
    }
}
