//! Subscription credit packages (C6): the packages the server offers, and a
//! namespace's subscription to one.
//!
//! Policy: billing members (owner, admin, billing) subscribe and cancel;
//! every member reads. Subscribing creates the payment intent of the first
//! period; its deposit credits the package's credits (`routes::topups`).
//! Renewal intents are created by `services::subscriptions` at the end of
//! each paid period. See `tally_store::subscriptions` for the states.

use actix_web::{delete, get, post, web, HttpResponse};
use tally_common::{
    CreditPackage, CreditPackageList, ErrorBody, ErrorCode, Severity, SubscribeRequest,
    Subscription, SubscriptionList, SubscriptionStatus,
};
use tally_store::events::NewEvent;
use tally_store::subscriptions::SubscriptionRow;

use crate::auth::{CurrentAccount, CurrentMember, Permission};
use crate::config::PackageSettings;
use crate::error::{ApiError, ApiResult};
use crate::services::billing;
use crate::services::billing::units;
use crate::services::subscriptions::new_period_intent;
use crate::state::AppState;
use crate::views::rfc3339;

fn valid(p: &PackageSettings) -> bool {
    p.credits_micros > 0 && p.price_units > 0
}

fn to_package(p: &PackageSettings) -> CreditPackage {
    CreditPackage {
        slug: p.slug.clone(),
        name: p.name.clone(),
        credits_micros: p.credits_micros,
        price_units: p.price_units,
        currency: p.currency,
    }
}

pub fn to_subscription(s: SubscriptionRow) -> Subscription {
    Subscription {
        status: SubscriptionStatus::parse(&s.status).unwrap_or(SubscriptionStatus::Canceled),
        id: s.id,
        environment: s.environment,
        package: s.package,
        credits_micros: s.credits_micros,
        price_units: s.price_units,
        currency: s.currency,
        current_period_end: s.period_end.map(rfc3339),
        cancel_at_period_end: s.cancel_at_period_end,
        pending_intent_id: s.pending_intent_id,
        created_by: s.created_by,
        created_at: rfc3339(s.created_at),
    }
}

/// The credit packages on offer, each credited monthly while subscribed.
#[utoipa::path(
    tag = "credits",
    security(("bearer" = [])),
    responses((status = 200, body = CreditPackageList), (status = 401, body = ErrorBody))
)]
#[get("/billing/packages")]
pub async fn packages(
    state: web::Data<AppState>,
    _account: CurrentAccount,
) -> ApiResult<web::Json<CreditPackageList>> {
    let items = state
        .settings
        .billing
        .packages
        .iter()
        .filter(|p| valid(p) && billing::accepts(&state.settings.billing, p.currency))
        .map(to_package)
        .collect();
    Ok(web::Json(CreditPackageList { items }))
}

/// The namespace's subscriptions, newest first.
#[utoipa::path(
    operation_id = "list_subscriptions",
    tag = "credits",
    security(("bearer" = [])),
    params(("namespace_id" = String, Path)),
    responses(
        (status = 200, body = SubscriptionList),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
#[get("/namespaces/{namespace_id}/credits/subscriptions")]
pub async fn list(
    state: web::Data<AppState>,
    member: CurrentMember,
) -> ApiResult<web::Json<SubscriptionList>> {
    member.require(Permission::Read)?;
    let mut conn = state.store.conn().await?;
    let items = tally_store::subscriptions::list(&mut conn, member.namespace_id())
        .await?
        .into_iter()
        .map(to_subscription)
        .collect();
    Ok(web::Json(SubscriptionList { items }))
}

/// Subscribes to a package: the subscription is `pending` until the payment
/// intent of its first period (`pending_intent_id`) is paid.
#[utoipa::path(
    operation_id = "create_subscription",
    tag = "credits",
    security(("bearer" = [])),
    params(("namespace_id" = String, Path)),
    request_body = SubscribeRequest,
    responses(
        (status = 201, body = Subscription),
        (status = 400, description = "Unknown package", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "The environment already has a pending or active subscription", body = ErrorBody),
    )
)]
#[post("/namespaces/{namespace_id}/credits/subscriptions")]
pub async fn create(
    state: web::Data<AppState>,
    member: CurrentMember,
    body: web::Json<SubscribeRequest>,
) -> ApiResult<HttpResponse> {
    member.require(Permission::Billing)?;
    let cfg = &state.settings.billing;
    let package = cfg
        .packages
        .iter()
        .find(|p| p.slug == body.package && valid(p) && billing::accepts(cfg, p.currency))
        .ok_or_else(|| {
            ApiError::invalid(format!(
                "package '{}' is not offered; GET /api/v1/billing/packages lists the packages",
                body.package
            ))
        })?;
    let ns = member.namespace_id();
    let now = tally_store::now_ms();
    let sub = SubscriptionRow {
        id: tally_store::new_id("sub"),
        namespace_id: ns.to_owned(),
        environment: body.environment,
        package: package.slug.clone(),
        currency: package.currency,
        price_units: package.price_units,
        credits_micros: package.credits_micros,
        status: SubscriptionStatus::Pending.as_str().into(),
        period_end: None,
        cancel_at_period_end: false,
        pending_intent_id: Some(tally_store::new_id("pi")),
        created_by: member.email.clone(),
        created_at: now,
        updated_at: now,
    };
    let mut tx = state.store.begin().await?;
    // Serialises subscribing, so two requests cannot both find no subscription.
    if !tally_store::namespaces::lock(&mut tx, ns).await? {
        return Err(ApiError::not_found("namespace"));
    }
    if tally_store::subscriptions::current(&mut tx, ns, body.environment)
        .await?
        .is_some()
    {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!(
                "the {} environment already has a subscription; cancel it first",
                body.environment
            ),
        ));
    }
    tally_store::subscriptions::insert(&mut tx, &sub).await?;
    let intent_id = sub.pending_intent_id.clone().unwrap_or_default();
    new_period_intent(&mut tx, &sub, &intent_id, &member.email).await?;
    tally_store::events::insert(
        &mut tx,
        NewEvent {
            namespace_id: Some(ns),
            environment: Some(body.environment),
            kind: "subscription.created",
            severity: Severity::Info,
            message: &format!(
                "Subscribed to {} ({} credits a month for {}); waiting for payment intent {intent_id}",
                package.name,
                billing::credits(package.credits_micros),
                units(package.price_units, package.currency)
            ),
            actor: Some(&member.email),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(HttpResponse::Created().json(to_subscription(sub)))
}

/// Cancels a subscription: one never paid ends now; an active one keeps its
/// paid period and does not renew.
#[utoipa::path(
    tag = "credits",
    security(("bearer" = [])),
    params(("namespace_id" = String, Path), ("subscription_id" = String, Path)),
    responses(
        (status = 200, body = Subscription),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Already cancelled", body = ErrorBody),
    )
)]
#[delete("/namespaces/{namespace_id}/credits/subscriptions/{subscription_id}")]
pub async fn cancel(
    state: web::Data<AppState>,
    member: CurrentMember,
    path: web::Path<(String, String)>,
) -> ApiResult<web::Json<Subscription>> {
    member.require(Permission::Billing)?;
    let (_, id) = path.into_inner();
    let ns = member.namespace_id();
    let mut tx = state.store.begin().await?;
    let sub = tally_store::subscriptions::get(&mut tx, &id)
        .await?
        .filter(|s| s.namespace_id == ns)
        .ok_or_else(|| ApiError::not_found("subscription"))?;
    if sub.cancel_at_period_end || !tally_store::subscriptions::cancel(&mut tx, &id).await? {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "the subscription is already cancelled",
        ));
    }
    tally_store::events::insert(
        &mut tx,
        NewEvent {
            namespace_id: Some(ns),
            environment: Some(sub.environment),
            kind: "subscription.canceled",
            severity: Severity::Info,
            message: &match sub.period_end {
                Some(end) if sub.status == "active" => format!(
                    "Subscription to {} cancelled; it ends with the paid period on {}",
                    sub.package,
                    rfc3339(end)
                ),
                _ => format!(
                    "Subscription to {} cancelled before its first payment",
                    sub.package
                ),
            },
            actor: Some(&member.email),
        },
    )
    .await?;
    let sub = tally_store::subscriptions::get(&mut tx, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("subscription"))?;
    tx.commit().await?;
    Ok(web::Json(to_subscription(sub)))
}
