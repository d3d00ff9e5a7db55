//! Subscription credit packages (C6), through HTTP: subscribing creates the
//! first period's payment intent; each paid period credits the package; the
//! end of a period creates one renewal intent; a cancelled subscription ends
//! with its paid period.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use tally_common::{
    CreditPackageList, DepositResult, Environment, ErrorCode, StatementList, Subscription,
    SubscriptionList, SubscriptionStatus,
};

use crate::billing::{
    assert_ledger_consistent, balance, billing_app, deposit_body, events_of_kind, get_intent,
    ledger, notify, ns,
};
use crate::helpers::{assert_error, backend_tests, json, Backend, TestApp, User};

backend_tests!(a_subscription_credits_its_package_each_paid_period_and_ends_when_cancelled);

async fn subscription(app: &TestApp, user: &User, id: &str) -> Subscription {
    let list: SubscriptionList = json(
        app.get(&ns(user, "/credits/subscriptions"), Some(&user.token))
            .await,
        StatusCode::OK,
    )
    .await;
    list.items.into_iter().find(|s| s.id == id).unwrap()
}

/// Moves the end of the paid period into the past, as if a month went by.
async fn end_period(app: &TestApp, id: &str) {
    let mut conn = app.store.conn().await.unwrap();
    sqlx::query("UPDATE subscriptions SET period_end = $1 WHERE id = $2")
        .bind(tally_store::now_ms() - 1000)
        .bind(id)
        .execute(&mut *conn)
        .await
        .unwrap();
}

/// Waits until the subscription satisfies `done`.
async fn wait_for(
    app: &TestApp,
    user: &User,
    id: &str,
    done: impl Fn(&Subscription) -> bool,
) -> Subscription {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = subscription(app, user, id).await;
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_subscription_credits_its_package_each_paid_period_and_ends_when_cancelled(
    backend: Backend,
) {
    let app = billing_app(backend, |s| s.billing.alert_check_interval_ms = 50).await;
    let user = app.signup("subscriber").await;
    let viewer = app.signup("viewer").await;
    app.add_member(&user, &viewer, "viewer").await;

    let packages: CreditPackageList = json(
        app.get("/api/v1/billing/packages", Some(&user.token)).await,
        StatusCode::OK,
    )
    .await;
    let starter = packages.items.iter().find(|p| p.slug == "starter").unwrap();
    assert_eq!(starter.credits_micros, 110_000_000);

    let res = app
        .post(
            &ns(&user, "/credits/subscriptions"),
            Some(&user.token),
            json!({"environment": "live", "package": "platinum"}),
        )
        .await;
    assert_error(res, StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest).await;
    let res = app
        .post(
            &ns(&user, "/credits/subscriptions"),
            Some(&viewer.token),
            json!({"environment": "live", "package": "starter"}),
        )
        .await;
    assert_error(res, StatusCode::FORBIDDEN, ErrorCode::Forbidden).await;

    let sub: Subscription = json(
        app.post(
            &ns(&user, "/credits/subscriptions"),
            Some(&user.token),
            json!({"environment": "live", "package": "starter"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(sub.status, SubscriptionStatus::Pending);
    assert_eq!(sub.current_period_end, None);
    let res = app
        .post(
            &ns(&user, "/credits/subscriptions"),
            Some(&user.token),
            json!({"environment": "live", "package": "growth"}),
        )
        .await;
    assert_error(res, StatusCode::CONFLICT, ErrorCode::Conflict).await;

    // The first period's intent asks for the price; its deposit credits the package.
    let first = get_intent(&app, &user, sub.pending_intent_id.as_deref().unwrap()).await;
    assert_eq!(first.amount_units, starter.price_units);
    assert_eq!(first.subscription_id.as_deref(), Some(sub.id.as_str()));
    let paid: DepositResult = json(
        notify(&app, &deposit_body("0xsub-1", &first, first.amount_units)).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(paid.deposit.credited_micros, 110_000_000);
    assert_eq!(balance(&app, &user, Environment::Live).await, 110_000_000);
    let active = subscription(&app, &user, &sub.id).await;
    assert_eq!(active.status, SubscriptionStatus::Active);
    assert_eq!(active.pending_intent_id, None);
    let end = chrono::DateTime::parse_from_rfc3339(active.current_period_end.as_deref().unwrap())
        .unwrap()
        .timestamp_millis();
    let days = (end - tally_store::now_ms()) / (24 * 3600 * 1000);
    assert!((27..=31).contains(&days), "one month paid: {days} days");
    let entry = &ledger(&app, &user, "live").await.items[0];
    assert_eq!(entry.kind, "subscription");
    assert_eq!(entry.reference.as_deref(), Some("0xsub-1"));

    // A month later: one renewal intent, however many checks run.
    end_period(&app, &sub.id).await;
    let renewing = wait_for(&app, &user, &sub.id, |s| s.pending_intent_id.is_some()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        subscription(&app, &user, &sub.id).await.pending_intent_id,
        renewing.pending_intent_id
    );
    assert_eq!(
        events_of_kind(&app, &user, "subscription.renewal_due")
            .await
            .len(),
        1
    );
    let renewal = get_intent(&app, &user, renewing.pending_intent_id.as_deref().unwrap()).await;
    // A short payment credits nothing; the full price renews.
    let res = notify(
        &app,
        &deposit_body("0xsub-short", &renewal, renewal.amount_units - 1),
    )
    .await;
    assert_error(res, StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest).await;
    assert_eq!(balance(&app, &user, Environment::Live).await, 110_000_000);
    let _: DepositResult = json(
        notify(
            &app,
            &deposit_body("0xsub-2", &renewal, renewal.amount_units),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(balance(&app, &user, Environment::Live).await, 220_000_000);
    let renewed = subscription(&app, &user, &sub.id).await;
    assert_eq!(renewed.pending_intent_id, None);
    assert!(renewed.current_period_end > active.current_period_end);

    // Cancelled: it keeps the paid period, then ends without a new intent.
    let cancelled: Subscription = json(
        app.delete(
            &ns(&user, &format!("/credits/subscriptions/{}", sub.id)),
            &user.token,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(cancelled.status, SubscriptionStatus::Active);
    assert!(cancelled.cancel_at_period_end);
    let res = app
        .delete(
            &ns(&user, &format!("/credits/subscriptions/{}", sub.id)),
            &user.token,
        )
        .await;
    assert_error(res, StatusCode::CONFLICT, ErrorCode::Conflict).await;
    end_period(&app, &sub.id).await;
    let ended = wait_for(&app, &user, &sub.id, |s| {
        s.status == SubscriptionStatus::Canceled
    })
    .await;
    assert_eq!(ended.pending_intent_id, None);
    assert_eq!(
        events_of_kind(&app, &user, "subscription.ended")
            .await
            .len(),
        1
    );
    assert_eq!(
        events_of_kind(&app, &user, "subscription.renewal_due")
            .await
            .len(),
        1
    );
    // A new subscription can start now.
    let _: Subscription = json(
        app.post(
            &ns(&user, "/credits/subscriptions"),
            Some(&user.token),
            json!({"environment": "live", "package": "growth"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;

    let list: StatementList = json(
        app.get(
            &ns(&user, "/credits/statements?environment=live"),
            Some(&user.token),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(list.items[0].subscriptions_micros, 220_000_000);
    assert_eq!(list.items[0].topups_micros, 0);
    // Another namespace cannot see or cancel it.
    let other = app.signup("other").await;
    let res = app
        .delete(
            &ns(&user, &format!("/credits/subscriptions/{}", sub.id)),
            &other.token,
        )
        .await;
    assert_error(res, StatusCode::NOT_FOUND, ErrorCode::NotFound).await;
    assert_ledger_consistent(&app, &user).await;
}
