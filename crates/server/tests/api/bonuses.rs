//! Bonus credits (C7), through HTTP: operators grant them with an optional
//! expiry; expiring bonuses are spent first; what is left at expiry leaves
//! the balance through one ledger entry, and the ledger still sums to it.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use tally_common::{Bonus, BonusList, CreatedKey, Environment, ErrorCode};

use crate::billing::{assert_ledger_consistent, balance, billing_app, events_of_kind, ledger, ns};
use crate::helpers::{
    assert_error, backend_tests, eventually, in_own_process, json, upkeep_rounds, Backend, TestApp,
    User,
};

backend_tests!(
    expiring_bonuses_are_spent_first_and_what_is_left_expires_through_the_ledger,
    only_operators_grant_bonuses_and_only_members_see_them,
);

async fn grant_bonus(
    app: &TestApp,
    operator: &User,
    to: &User,
    body: serde_json::Value,
) -> reqwest::Response {
    app.post(
        &format!("/api/v1/admin/namespaces/{}/bonuses", to.namespace_id),
        Some(&operator.token),
        body,
    )
    .await
}

async fn bonuses(app: &TestApp, user: &User, env: &str) -> BonusList {
    json(
        app.get(
            &ns(user, &format!("/credits/bonuses?environment={env}")),
            Some(&user.token),
        )
        .await,
        StatusCode::OK,
    )
    .await
}

const HOUR_MS: i64 = 3_600_000;

fn in_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(tally_store::now_ms() + ms)
        .unwrap()
        .to_rfc3339()
}

async fn expiring_bonuses_are_spent_first_and_what_is_left_expires_through_the_ledger(
    backend: Backend,
) {
    // It moves the clock past the bonus's expiry.
    in_own_process!(
        backend,
        "expiring_bonuses_are_spent_first_and_what_is_left_expires_through_the_ledger"
    );
    let app = billing_app(backend, |s| {
        s.billing.alert_check_interval_ms = 50;
        // Sessions that outlast the clock's travel.
        s.auth.access_token_ttl_secs = 86_400;
    })
    .await;
    let operator = app.signup_operator("op").await;
    let user = app.signup("node-runner").await;
    let welcome = balance(&app, &user, Environment::Test).await;

    let expiring: Bonus = json(
        grant_bonus(
            &app,
            &operator,
            &user,
            json!({"environment": "test", "amount_micros": 1_000_000, "reason": "running_node",
                   "expires_at": in_ms(HOUR_MS), "memo": "node n-1, week 12"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(expiring.status, "active");
    assert_eq!(expiring.remaining_micros, 1_000_000);
    let _forever: Bonus = json(
        grant_bonus(
            &app,
            &operator,
            &user,
            json!({"environment": "test", "amount_micros": 500_000, "reason": "referral"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(
        balance(&app, &user, Environment::Test).await,
        welcome + 1_500_000
    );

    // Spend some test credits in the sandbox.
    let key: CreatedKey = json(
        app.post(
            &ns(&user, "/keys"),
            Some(&user.token),
            json!({"name": "k", "environment": "test"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    for _ in 0..3 {
        let res = app
            .client
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(&key.secret)
            .json(&json!({"model": "tally-sandbox", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    let spent: i64 = ledger(&app, &user, "test")
        .await
        .items
        .iter()
        .filter(|e| e.kind == "usage")
        .map(|e| -e.amount_micros)
        .sum();
    assert!(spent > 0 && spent < 1_000_000, "{spent}");

    // The expiring bonus paid for the calls; the other is untouched.
    let list = bonuses(&app, &user, "test").await;
    let exp = list.items.iter().find(|b| b.id == expiring.id).unwrap();
    assert_eq!(exp.remaining_micros, 1_000_000 - spent);
    assert_eq!(list.expiring_micros, 1_000_000 - spent);
    assert!(list.next_expiry.is_some());
    let never = list.items.iter().find(|b| b.expires_at.is_none()).unwrap();
    assert_eq!(never.remaining_micros, 500_000);

    // Not before its time: an hour less a minute later, nothing has expired.
    let granted_at = tally_store::now_ms();
    tally_store::clock::travel_to(granted_at + HOUR_MS - 60_000);
    let rounds = upkeep_rounds(&app, "credits").await;
    eventually(30, "two rounds of the expiry check", || async {
        upkeep_rounds(&app, "credits").await >= rounds + 2.0
    })
    .await;
    assert!(ledger(&app, &user, "test")
        .await
        .items
        .iter()
        .all(|e| e.kind != "bonus_expired"));
    assert_eq!(
        bonuses(&app, &user, "test").await.expiring_micros,
        1_000_000 - spent
    );

    // At expiry what is left leaves through one entry referencing the grant.
    tally_store::clock::travel_to(granted_at + HOUR_MS + 1_000);
    let deadline = Instant::now() + Duration::from_secs(30);
    let expiry = loop {
        let entries = ledger(&app, &user, "test").await.items;
        if let Some(e) = entries.iter().find(|e| e.kind == "bonus_expired") {
            break e.clone();
        }
        assert!(Instant::now() < deadline, "the bonus never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(expiry.amount_micros, -(1_000_000 - spent));
    assert_eq!(expiry.reference.as_deref(), Some(expiring.id.as_str()));
    assert_eq!(
        balance(&app, &user, Environment::Test).await,
        welcome + 500_000
    );
    let list = bonuses(&app, &user, "test").await;
    let exp = list.items.iter().find(|b| b.id == expiring.id).unwrap();
    assert_eq!(exp.status, "expired");
    assert_eq!(exp.expired_micros, 1_000_000 - spent);
    assert_eq!(list.expiring_micros, 0);
    // Once: later rounds of the checker find nothing more to expire.
    let rounds = upkeep_rounds(&app, "credits").await;
    eventually(30, "two more rounds of the expiry check", || async {
        upkeep_rounds(&app, "credits").await >= rounds + 2.0
    })
    .await;
    assert_eq!(
        events_of_kind(&app, &user, "credits.bonus_expired")
            .await
            .len(),
        1
    );
    assert_eq!(
        ledger(&app, &user, "test")
            .await
            .items
            .iter()
            .filter(|e| e.kind == "bonus_expired")
            .count(),
        1
    );
    assert_ledger_consistent(&app, &user).await;
}

async fn only_operators_grant_bonuses_and_only_members_see_them(backend: Backend) {
    let app = billing_app(backend, |_| {}).await;
    let operator = app.signup_operator("op").await;
    let user = app.signup("user").await;
    let other = app.signup("other").await;
    let ok = json!({"environment": "live", "amount_micros": 1000, "reason": "feedback"});

    let res = grant_bonus(&app, &user, &user, ok.clone()).await;
    assert_error(res, StatusCode::FORBIDDEN, ErrorCode::Forbidden).await;
    for bad in [
        json!({"environment": "live", "amount_micros": 0, "reason": "feedback"}),
        json!({"environment": "live", "amount_micros": 1000, "reason": "feedback", "expires_at": in_ms(-1000)}),
        json!({"environment": "live", "amount_micros": 1000, "reason": "feedback", "expires_at": in_ms(400 * 24 * 3600 * 1000)}),
        json!({"environment": "live", "amount_micros": 1000, "reason": "feedback", "expires_at": "tomorrow"}),
    ] {
        let res = grant_bonus(&app, &operator, &user, bad).await;
        assert_error(res, StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest).await;
    }
    let res = grant_bonus(
        &app,
        &operator,
        &user,
        json!({"environment": "live", "amount_micros": 1000, "reason": "bribe"}),
    )
    .await;
    // A reason outside the list does not parse as a grant at all.
    assert_error(res, StatusCode::BAD_REQUEST, ErrorCode::InvalidJson).await;
    assert_eq!(
        balance(&app, &user, Environment::Live).await,
        0,
        "nothing granted"
    );

    let res = app
        .post(
            "/api/v1/admin/namespaces/ns_missing/bonuses",
            Some(&operator.token),
            ok.clone(),
        )
        .await;
    assert_error(res, StatusCode::NOT_FOUND, ErrorCode::NotFound).await;
    let _: Bonus = json(
        grant_bonus(&app, &operator, &user, ok).await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(bonuses(&app, &user, "live").await.items.len(), 1);
    // Another namespace's member sees nothing of it.
    let res = app
        .get(
            &ns(&user, "/credits/bonuses?environment=live"),
            Some(&other.token),
        )
        .await;
    assert_error(res, StatusCode::NOT_FOUND, ErrorCode::NotFound).await;
    assert!(bonuses(&app, &other, "live").await.items.is_empty());
    assert_ledger_consistent(&app, &user).await;
}
