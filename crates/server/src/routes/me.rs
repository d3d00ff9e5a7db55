use actix_web::{get, web};
use tally_common::{ErrorBody, Me};

use crate::auth::CurrentAccount;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::views::to_account;
use crate::views::to_namespace;

/// The signed-in account and every namespace it belongs to, with its role.
#[utoipa::path(
    tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 200, body = Me),
        (status = 401, body = ErrorBody),
    )
)]
#[get("/me")]
pub async fn me(state: web::Data<AppState>, caller: CurrentAccount) -> ApiResult<web::Json<Me>> {
    let mut conn = state.store.conn().await?;
    let account = tally_store::accounts::by_id(&mut conn, &caller.account_id)
        .await?
        .ok_or_else(|| ApiError::unauthorized("the account no longer exists"))?;
    let namespaces = tally_store::namespaces::memberships_of(&mut conn, &caller.account_id)
        .await?
        .into_iter()
        .map(to_namespace)
        .collect();
    Ok(web::Json(Me {
        is_operator: crate::auth::extract::is_operator(&account),
        account: to_account(&account),
        namespaces,
    }))
}
