//! Creating accounts, shared by sign-up, the setup token and
//! `tally admin create-operator`, so an account looks the same whichever way
//! it was made: a personal namespace it owns, with the welcome test credits.

use tally_common::{Role, Severity};
use tally_store::accounts::AccountRow;
use tally_store::events::NewEvent;
use tally_store::AnyConnection;

use crate::config::GatewaySettings;
use crate::error::{ApiError, ApiResult};
use crate::input::clean_name;

pub const MIN_PASSWORD: usize = 8;
pub const MAX_PASSWORD: usize = 256;

/// Checks a new password's length (in characters).
pub fn check_password(password: &str) -> ApiResult<()> {
    let len = password.chars().count();
    if !(MIN_PASSWORD..=MAX_PASSWORD).contains(&len) {
        return Err(ApiError::invalid(format!(
            "password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters"
        )));
    }
    Ok(())
}

/// The display name given, cleaned, or the part of the email before `@`.
pub fn display_name(email: &str, given: Option<&str>) -> ApiResult<String> {
    match given.map(str::trim) {
        Some(name) if !name.is_empty() => clean_name("display_name", name, 100),
        _ => Ok(email.split('@').next().unwrap_or_default().to_owned()),
    }
}

/// Inserts an account (409 `conflict` when the email is taken) with its
/// personal namespace, in the caller's transaction.
pub async fn create(
    conn: &mut AnyConnection,
    gateway: &GatewaySettings,
    email: &str,
    display_name: &str,
    password_hash: &str,
    is_operator: bool,
) -> ApiResult<AccountRow> {
    let account =
        match tally_store::accounts::insert(conn, email, display_name, password_hash, is_operator)
            .await
        {
            Err(tally_store::StoreError::Conflict(_)) => {
                return Err(ApiError::new(
                    tally_common::ErrorCode::Conflict,
                    "an account with this email already exists",
                ))
            }
            other => other?,
        };
    let ns = tally_store::namespaces::insert(conn, "Personal").await?;
    crate::services::credits::welcome(conn, &ns.id, gateway.welcome_test_credits_micros).await?;
    tally_store::namespaces::upsert_member(conn, &ns.id, &account.id, Role::Owner).await?;
    tally_store::events::insert(
        conn,
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
    Ok(account)
}
