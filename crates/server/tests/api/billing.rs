//! Top-ups through signed deposit notifications (C2), monthly statements
//! (C4) and low-balance alerts (C5), through HTTP. After every scenario the
//! ledger sums to the balance.

use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tally_common::{
    AutoTopup, AutoTopupList, Balances, DepositResult, Environment, ErrorCode, EventPage,
    IntentStatus, LedgerPage, LowBalanceAlert, LowBalanceAlertList, PaymentIntent,
    PaymentIntentPage, Statement, StatementList,
};
use tally_server::config::Settings;

use crate::helpers::{
    assert_error, backend_tests, json, spawn_app, spawn_with, Backend, TestApp, TestDatabase, User,
};

backend_tests!(
    a_signed_deposit_pays_an_intent_at_the_configured_rate_exactly_once,
    wrong_signatures_stale_timestamps_and_conflicts_change_nothing_and_are_events,
    concurrent_duplicate_notifications_credit_exactly_once,
    rates_come_from_the_price_feed_and_a_failing_feed_credits_nothing,
    without_a_secret_deposits_are_refused_and_rtity_waits_for_tge,
    statements_add_up_to_the_ledger_for_closed_and_running_months,
    a_low_balance_alert_fires_once_per_crossing_and_rearms,
    billing_data_of_another_namespace_is_never_visible_and_roles_apply,
    an_auto_top_up_rule_creates_one_intent_per_crossing,
);

pub(crate) const SECRET: &str = "whsec-test-0123456789abcdef";

pub(crate) async fn billing_app(
    backend: Backend,
    configure: impl FnOnce(&mut Settings),
) -> TestApp {
    let db = TestDatabase::new(backend).await;
    spawn_with(db, |settings| {
        settings.billing.deposit_secret = Some(SECRET.to_owned().into());
        configure(settings);
    })
    .await
}

pub(crate) fn ns(user: &User, rest: &str) -> String {
    format!("/api/v1/namespaces/{}{rest}", user.namespace_id)
}

pub(crate) fn now_secs() -> i64 {
    tally_store::now_ms() / 1000
}

/// HMAC-SHA256 (RFC 2104) written out here from SHA-256 alone, so a
/// signature the tests send never shares code with the server's `verify`.
fn hmac_sha256_hex(key: &[u8], message: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| k.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    let outer = Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize();
    hex::encode(outer)
}

/// The signature of a deposit notification: HMAC-SHA256 of
/// `"{timestamp}.{body}"` with the deposit secret, in hex.
pub(crate) fn expected_signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut message = timestamp.to_string().into_bytes();
    message.push(b'.');
    message.extend_from_slice(body);
    hmac_sha256_hex(secret, &message)
}

#[test]
fn the_tests_hmac_matches_rfc_4231() {
    // RFC 4231, test cases 1 and 2.
    assert_eq!(
        hmac_sha256_hex(&[0x0b; 20], b"Hi There"),
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
    );
    assert_eq!(
        hmac_sha256_hex(b"Jefe", b"what do ya want for nothing?"),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}

/// Posts a deposit notification signed with `secret` at `ts`.
pub(crate) async fn notify_signed(
    app: &TestApp,
    secret: &str,
    ts: i64,
    body: &Value,
) -> reqwest::Response {
    let raw = serde_json::to_vec(body).unwrap();
    let sig = expected_signature(secret.as_bytes(), ts, &raw);
    app.client
        .post(app.url("/api/v1/billing/deposits"))
        .header("content-type", "application/json")
        .header("x-tally-timestamp", ts.to_string())
        .header("x-tally-signature", format!("sha256={sig}"))
        .body(raw)
        .send()
        .await
        .unwrap()
}

pub(crate) async fn notify(app: &TestApp, body: &Value) -> reqwest::Response {
    notify_signed(app, SECRET, now_secs(), body).await
}

pub(crate) async fn create_intent(
    app: &TestApp,
    user: &User,
    env: &str,
    currency: &str,
    amount: i64,
) -> PaymentIntent {
    json(
        app.post(
            &ns(user, "/credits/intents"),
            Some(&user.token),
            json!({"environment": env, "currency": currency, "amount_units": amount}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await
}

pub(crate) async fn get_intent(app: &TestApp, user: &User, id: &str) -> PaymentIntent {
    json(
        app.get(
            &ns(user, &format!("/credits/intents/{id}")),
            Some(&user.token),
        )
        .await,
        StatusCode::OK,
    )
    .await
}

pub(crate) async fn balance(app: &TestApp, user: &User, env: Environment) -> i64 {
    let b: Balances = json(
        app.get(&ns(user, "/credits"), Some(&user.token)).await,
        StatusCode::OK,
    )
    .await;
    b.items
        .iter()
        .find(|i| i.environment == env)
        .unwrap()
        .balance_micros
}

/// C1: the stored balance equals the sum of the ledger and what the API shows.
pub(crate) async fn assert_ledger_consistent(app: &TestApp, user: &User) {
    for env in Environment::ALL {
        let mut conn = app.store.conn().await.unwrap();
        let sum = tally_store::ledger::sum(&mut conn, &user.namespace_id, env)
            .await
            .unwrap();
        let stored = tally_store::ledger::balance(&mut conn, &user.namespace_id, env)
            .await
            .unwrap();
        assert_eq!(sum, stored, "{env}: ledger sum equals the stored balance");
        assert_eq!(balance(app, user, env).await, stored, "{env}: API balance");
    }
}

pub(crate) async fn events_of_kind(
    app: &TestApp,
    user: &User,
    kind: &str,
) -> Vec<tally_common::Event> {
    let page: EventPage = json(
        app.get(&ns(user, "/events?limit=200"), Some(&user.token))
            .await,
        StatusCode::OK,
    )
    .await;
    page.items.into_iter().filter(|e| e.kind == kind).collect()
}

pub(crate) async fn ledger(app: &TestApp, user: &User, env: &str) -> LedgerPage {
    json(
        app.get(
            &ns(
                user,
                &format!("/credits/ledger?environment={env}&limit=200"),
            ),
            Some(&user.token),
        )
        .await,
        StatusCode::OK,
    )
    .await
}

pub(crate) fn deposit_body(tx: &str, intent: &PaymentIntent, amount: i64) -> Value {
    json!({
        "external_tx_id": tx,
        "intent_id": intent.id,
        "currency": intent.currency,
        "amount_units": amount,
    })
}

async fn a_signed_deposit_pays_an_intent_at_the_configured_rate_exactly_once(backend: Backend) {
    let app = billing_app(backend, |s| s.billing.rates.usdc = 999_500).await;
    let user = app.signup("payer").await;
    assert_eq!(balance(&app, &user, Environment::Live).await, 0);

    let intent = create_intent(&app, &user, "live", "USDC", 12_500_000).await;
    assert!(intent.id.starts_with("pi_"), "{}", intent.id);
    assert_eq!(intent.status, IntentStatus::Pending);
    assert_eq!(intent.deposit, None);
    assert_eq!(get_intent(&app, &user, &intent.id).await, intent);

    let body = deposit_body("0xabc-1", &intent, 12_500_000);
    let res: DepositResult = json(notify(&app, &body).await, StatusCode::OK).await;
    assert!(!res.duplicate);
    assert_eq!(res.intent_id, intent.id);
    // 12.5 USDC at 0.9995 credits per USDC.
    assert_eq!(res.deposit.credited_micros, 12_493_750);
    assert_eq!(res.deposit.rate_micros, 999_500);
    assert_eq!(balance(&app, &user, Environment::Live).await, 12_493_750);

    let paid = get_intent(&app, &user, &intent.id).await;
    assert_eq!(paid.status, IntentStatus::Succeeded);
    assert_eq!(paid.deposit.as_ref(), Some(&res.deposit));
    let entries = ledger(&app, &user, "live").await.items;
    assert_eq!(entries.len(), 1);
    let entry = &entries[0];
    assert_eq!(entry.id, res.deposit.ledger_entry_id);
    assert_eq!(entry.kind, "topup");
    assert_eq!(entry.amount_micros, 12_493_750);
    assert_eq!(entry.rate_micros, Some(999_500), "the rate is on the entry");
    assert_eq!(entry.reference.as_deref(), Some("0xabc-1"));
    assert!(events_of_kind(&app, &user, "credits.added")
        .await
        .iter()
        .any(|e| e.message.contains("0xabc-1")));

    // The same notification again: the first result, nothing credited, an event.
    let again: DepositResult = json(notify(&app, &body).await, StatusCode::OK).await;
    assert!(again.duplicate);
    assert_eq!(again.deposit, res.deposit);
    assert_eq!(balance(&app, &user, Environment::Live).await, 12_493_750);
    assert_eq!(
        events_of_kind(&app, &user, "topup.deposit_refused")
            .await
            .len(),
        1
    );

    // Listing: newest first, filters, paging.
    let second = create_intent(&app, &user, "test", "USDT", 1_000_000).await;
    let page: PaymentIntentPage = json(
        app.get(&ns(&user, "/credits/intents"), Some(&user.token))
            .await,
        StatusCode::OK,
    )
    .await;
    let ids: Vec<&str> = page.items.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, [second.id.as_str(), intent.id.as_str()]);
    let page: PaymentIntentPage = json(
        app.get(
            &ns(&user, "/credits/intents?status=pending&environment=test"),
            Some(&user.token),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].id, second.id);
    let page: PaymentIntentPage = json(
        app.get(&ns(&user, "/credits/intents?limit=1"), Some(&user.token))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(page.next_before.as_deref(), Some(second.id.as_str()));
    let page: PaymentIntentPage = json(
        app.get(
            &ns(
                &user,
                &format!("/credits/intents?limit=1&before={}", second.id),
            ),
            Some(&user.token),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(page.items[0].id, intent.id);
    assert_eq!(page.next_before, None);

    // A testnet payment credits test credits only.
    let before = balance(&app, &user, Environment::Test).await;
    let res: DepositResult = json(
        notify(&app, &deposit_body("testnet-tx", &second, 1_000_000)).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(res.deposit.credited_micros, 1_000_000);
    assert_eq!(
        balance(&app, &user, Environment::Test).await,
        before + 1_000_000
    );
    assert_eq!(balance(&app, &user, Environment::Live).await, 12_493_750);

    // Bad input is refused without a change.
    for (body, code) in [
        (
            json!({"environment": "live", "currency": "USDC", "amount_units": 0}),
            ErrorCode::InvalidRequest,
        ),
        (
            json!({"environment": "live", "currency": "EUR", "amount_units": 5}),
            ErrorCode::InvalidJson,
        ),
        (
            json!({"environment": "live", "currency": "USDC"}),
            ErrorCode::InvalidJson,
        ),
        (
            json!({"environment": "live", "currency": "RTITY", "amount_units": 5}),
            ErrorCode::UnsupportedCurrency,
        ),
    ] {
        let res = app
            .post(&ns(&user, "/credits/intents"), Some(&user.token), body)
            .await;
        assert_error(res, StatusCode::BAD_REQUEST, code).await;
    }
    let res = app
        .get(&ns(&user, "/credits/intents?limit=0"), Some(&user.token))
        .await;
    assert_error(res, StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest).await;
    let res = app
        .get(&ns(&user, "/credits/intents/pi_nope"), Some(&user.token))
        .await;
    assert_error(res, StatusCode::NOT_FOUND, ErrorCode::NotFound).await;
    assert_ledger_consistent(&app, &user).await;
}

async fn wrong_signatures_stale_timestamps_and_conflicts_change_nothing_and_are_events(
    backend: Backend,
) {
    let app = billing_app(backend, |_| {}).await;
    let user = app.signup("payer").await;
    let intent = create_intent(&app, &user, "live", "USDC", 5_000_000).await;
    let body = deposit_body("tx-1", &intent, 5_000_000);
    let raw = serde_json::to_vec(&body).unwrap();
    let now = now_secs();
    let good_sig = format!(
        "sha256={}",
        expected_signature(SECRET.as_bytes(), now, &raw)
    );
    let post = |ts: Option<String>, sig: Option<String>, raw: Vec<u8>| {
        let mut req = app
            .client
            .post(app.url("/api/v1/billing/deposits"))
            .header("content-type", "application/json")
            .body(raw);
        if let Some(ts) = ts {
            req = req.header("x-tally-timestamp", ts);
        }
        if let Some(sig) = sig {
            req = req.header("x-tally-signature", sig);
        }
        req.send()
    };

    // Wrong secret, no headers, a tampered body, a timestamp that is not the signed one.
    let res = notify_signed(&app, "not-the-secret", now, &body).await;
    assert_error(res, StatusCode::UNAUTHORIZED, ErrorCode::InvalidSignature).await;
    let res = post(None, None, raw.clone()).await.unwrap();
    assert_error(res, StatusCode::UNAUTHORIZED, ErrorCode::InvalidSignature).await;
    let tampered = serde_json::to_vec(&deposit_body("tx-1", &intent, 500_000_000)).unwrap();
    let res = post(Some(now.to_string()), Some(good_sig.clone()), tampered)
        .await
        .unwrap();
    assert_error(res, StatusCode::UNAUTHORIZED, ErrorCode::InvalidSignature).await;
    let res = post(
        Some((now + 1).to_string()),
        Some(good_sig.clone()),
        raw.clone(),
    )
    .await
    .unwrap();
    assert_error(res, StatusCode::UNAUTHORIZED, ErrorCode::InvalidSignature).await;
    let res = post(Some(now.to_string()), Some("sha256=zz".into()), raw.clone())
        .await
        .unwrap();
    assert_error(res, StatusCode::UNAUTHORIZED, ErrorCode::InvalidSignature).await;
    // Correctly signed, but six minutes old (a replay) or six minutes ahead.
    let res = notify_signed(&app, SECRET, now - 360, &body).await;
    assert_error(res, StatusCode::UNAUTHORIZED, ErrorCode::StaleTimestamp).await;
    let res = notify_signed(&app, SECRET, now + 360, &body).await;
    assert_error(res, StatusCode::UNAUTHORIZED, ErrorCode::StaleTimestamp).await;

    assert_eq!(balance(&app, &user, Environment::Live).await, 0);
    assert_eq!(
        get_intent(&app, &user, &intent.id).await.status,
        IntentStatus::Pending
    );
    let refused = events_of_kind(&app, &user, "topup.deposit_refused").await;
    assert_eq!(
        refused.len(),
        7,
        "every refusal is an event in the intent's namespace"
    );
    assert!(refused
        .iter()
        .any(|e| e.message.contains("timestamp") && e.environment == Some(Environment::Live)));

    // Signed but unusable bodies.
    let res = notify(&app, &json!({"external_tx_id": "x"})).await;
    assert_error(res, StatusCode::BAD_REQUEST, ErrorCode::InvalidJson).await;
    let res = notify(
        &app,
        &json!({"external_tx_id": "x", "intent_id": "pi_unknown", "currency": "USDC", "amount_units": 1}),
    )
    .await;
    assert_error(res, StatusCode::NOT_FOUND, ErrorCode::NotFound).await;
    let res = notify(&app, &deposit_body("tx-0", &intent, 0)).await;
    assert_error(res, StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest).await;
    let res = notify(&app, &deposit_body(" ", &intent, 5)).await;
    assert_error(res, StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest).await;
    let mut wrong_currency = body.clone();
    wrong_currency["currency"] = json!("USDT");
    let res = notify(&app, &wrong_currency).await;
    assert_error(res, StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest).await;
    assert_eq!(balance(&app, &user, Environment::Live).await, 0);

    // Paid once; then a used transaction id with other content, and another
    // transaction for the paid intent, are conflicts.
    let paid: DepositResult = json(notify(&app, &body).await, StatusCode::OK).await;
    assert_eq!(paid.deposit.credited_micros, 5_000_000);
    let res = notify(&app, &deposit_body("tx-1", &intent, 6_000_000)).await;
    assert_error(res, StatusCode::CONFLICT, ErrorCode::Conflict).await;
    let res = notify(&app, &deposit_body("tx-2", &intent, 5_000_000)).await;
    assert_error(res, StatusCode::CONFLICT, ErrorCode::Conflict).await;
    // A used transaction id named for another intent is a conflict too.
    let other = create_intent(&app, &user, "live", "USDC", 1_000_000).await;
    let res = notify(&app, &deposit_body("tx-1", &other, 5_000_000)).await;
    assert_error(res, StatusCode::CONFLICT, ErrorCode::Conflict).await;
    assert_eq!(
        get_intent(&app, &user, &other.id).await.status,
        IntentStatus::Pending
    );
    assert_eq!(balance(&app, &user, Environment::Live).await, 5_000_000);
    assert_eq!(ledger(&app, &user, "live").await.items.len(), 1);
    assert_eq!(
        events_of_kind(&app, &user, "topup.deposit_refused")
            .await
            .len(),
        7 + 1 + 3,
        "the wrong currency and the three conflicts are events too"
    );
    assert_ledger_consistent(&app, &user).await;
}

async fn concurrent_duplicate_notifications_credit_exactly_once(backend: Backend) {
    let app = billing_app(backend, |_| {}).await;
    let user = app.signup("payer").await;
    let intent = create_intent(&app, &user, "live", "USDT", 7_000_000).await;
    let body = deposit_body("0xdup", &intent, 7_000_000);

    let results = futures_util::future::join_all((0..12).map(|_| notify(&app, &body))).await;
    let mut fresh = 0;
    for res in results {
        let r: DepositResult = json(res, StatusCode::OK).await;
        assert_eq!(r.deposit.credited_micros, 7_000_000);
        if !r.duplicate {
            fresh += 1;
        }
    }
    assert_eq!(fresh, 1, "exactly one notification credits");
    assert_eq!(balance(&app, &user, Environment::Live).await, 7_000_000);

    // Different transactions racing for one intent: one pays it, the others conflict.
    let second = create_intent(&app, &user, "live", "USDC", 2_000_000).await;
    let app_ref = &app;
    let results = futures_util::future::join_all((0..8).map(|i| {
        let body = deposit_body(&format!("race-{i}"), &second, 2_000_000);
        async move { notify(app_ref, &body).await }
    }))
    .await;
    let statuses: Vec<StatusCode> = results.iter().map(|r| r.status()).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CONFLICT)
            .count(),
        7,
        "{statuses:?}"
    );
    assert_eq!(balance(&app, &user, Environment::Live).await, 9_000_000);
    assert_eq!(ledger(&app, &user, "live").await.items.len(), 2);
    assert_ledger_consistent(&app, &user).await;
}

/// A price feed on a free port: `/price/USDC` and `/price/RTITY` answer a
/// rate, `/price/USDT` fails.
async fn price_feed() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = HttpServer::new(|| {
        App::new()
            .route(
                "/price/USDC",
                web::get()
                    .to(|| async { HttpResponse::Ok().json(json!({"credits_per_unit": "0.98"})) }),
            )
            .route(
                "/price/RTITY",
                web::get()
                    .to(|| async { HttpResponse::Ok().json(json!({"credits_per_unit": 2.5})) }),
            )
            .route(
                "/price/USDT",
                web::get().to(|| async { HttpResponse::InternalServerError().finish() }),
            )
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    format!("http://127.0.0.1:{port}")
}

async fn rates_come_from_the_price_feed_and_a_failing_feed_credits_nothing(backend: Backend) {
    let feed = price_feed().await;
    let app = billing_app(backend, |s| {
        s.billing.price_url = Some(format!("{feed}/price/{{currency}}"));
        s.billing.post_tge = true;
    })
    .await;
    let user = app.signup("payer").await;

    let usdc = create_intent(&app, &user, "live", "USDC", 10_000_000).await;
    let res: DepositResult = json(
        notify(&app, &deposit_body("feed-1", &usdc, 10_000_000)).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(res.deposit.rate_micros, 980_000);
    assert_eq!(res.deposit.credited_micros, 9_800_000);

    // After TGE, RTITY is accepted (and the status says so) and converted at its own rate.
    let status: Value = json(app.get("/api/v1/status", None).await, StatusCode::OK).await;
    assert_eq!(status["topup_currencies"], json!(["USDC", "USDT", "RTITY"]));
    let rtity = create_intent(&app, &user, "live", "RTITY", 4_000_000).await;
    let res: DepositResult = json(
        notify(&app, &deposit_body("feed-2", &rtity, 4_000_000)).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(res.deposit.rate_micros, 2_500_000);
    assert_eq!(res.deposit.credited_micros, 10_000_000);

    // The feed fails: 502, nothing credited, the intent still waits.
    let usdt = create_intent(&app, &user, "live", "USDT", 3_000_000).await;
    let res = notify(&app, &deposit_body("feed-3", &usdt, 3_000_000)).await;
    assert_error(res, StatusCode::BAD_GATEWAY, ErrorCode::UpstreamError).await;
    assert_eq!(
        get_intent(&app, &user, &usdt.id).await.status,
        IntentStatus::Pending
    );
    assert_eq!(balance(&app, &user, Environment::Live).await, 19_800_000);
    let rates: Vec<Option<i64>> = ledger(&app, &user, "live")
        .await
        .items
        .iter()
        .map(|e| e.rate_micros)
        .collect();
    assert_eq!(rates, [Some(2_500_000), Some(980_000)]);
    assert_ledger_consistent(&app, &user).await;
}

async fn without_a_secret_deposits_are_refused_and_rtity_waits_for_tge(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = app.signup("payer").await;
    let intent = create_intent(&app, &user, "live", "USDC", 1_000_000).await;
    let res = notify(&app, &deposit_body("t", &intent, 1_000_000)).await;
    assert_error(res, StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable).await;
    let res = app
        .post(
            &ns(&user, "/credits/intents"),
            Some(&user.token),
            json!({"environment": "live", "currency": "RTITY", "amount_units": 1}),
        )
        .await;
    assert_error(res, StatusCode::BAD_REQUEST, ErrorCode::UnsupportedCurrency).await;
    assert_eq!(balance(&app, &user, Environment::Live).await, 0);
    assert_ledger_consistent(&app, &user).await;
}

async fn statements_add_up_to_the_ledger_for_closed_and_running_months(backend: Backend) {
    let app = billing_app(backend, |_| {}).await;
    let user = app.signup("payer").await;

    // Two keys spend test credits in the sandbox.
    let mut spent = 0;
    let mut keys = Vec::new();
    for name in ["alpha", "beta, \"quoted\""] {
        let key: tally_common::CreatedKey = json(
            app.post(
                &ns(&user, "/keys"),
                Some(&user.token),
                json!({"name": name, "environment": "test"}),
            )
            .await,
            StatusCode::CREATED,
        )
        .await;
        keys.push(key);
    }
    for (i, key) in keys.iter().enumerate() {
        for _ in 0..=i {
            let res = app
                .client
                .post(app.url("/v1/chat/completions"))
                .bearer_auth(&key.secret)
                .json(&json!({"model": "tally-sandbox", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            spent += res.headers()["x-tally-cost-micros"]
                .to_str()
                .unwrap()
                .parse::<i64>()
                .unwrap();
        }
    }
    let test_balance = balance(&app, &user, Environment::Test).await;
    assert_eq!(test_balance, 10_000_000 - spent);

    // The namespace and its welcome credits date from the previous month.
    let now = chrono::Utc::now();
    let this_month = chrono::NaiveDate::from_ymd_opt(
        chrono::Datelike::year(&now),
        chrono::Datelike::month(&now),
        1,
    )
    .unwrap()
    .and_hms_opt(0, 0, 0)
    .unwrap()
    .and_utc();
    let last_month_ms = this_month.timestamp_millis() - 5 * 24 * 3600 * 1000;
    let last_month = chrono::DateTime::from_timestamp_millis(last_month_ms)
        .unwrap()
        .format("%Y-%m")
        .to_string();
    let current = this_month.format("%Y-%m").to_string();
    {
        let mut conn = app.store.conn().await.unwrap();
        tally_store::sqlx::query("UPDATE namespaces SET created_at = $1 WHERE id = $2")
            .bind(last_month_ms)
            .bind(&user.namespace_id)
            .execute(&mut *conn)
            .await
            .unwrap();
        tally_store::sqlx::query(
            "UPDATE ledger_entries SET time = $1 WHERE namespace_id = $2 AND kind = 'grant'",
        )
        .bind(last_month_ms)
        .bind(&user.namespace_id)
        .execute(&mut *conn)
        .await
        .unwrap();
    }

    // A live top-up this month.
    let intent = create_intent(&app, &user, "live", "USDC", 3_000_000).await;
    json::<DepositResult>(
        notify(&app, &deposit_body("stmt-tx", &intent, 3_000_000)).await,
        StatusCode::OK,
    )
    .await;

    let list: StatementList = json(
        app.get(
            &ns(&user, "/credits/statements?environment=test"),
            Some(&user.token),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let months: Vec<&str> = list.items.iter().map(|s| s.month.as_str()).collect();
    assert_eq!(months, [current.as_str(), last_month.as_str()]);
    let (now_s, last_s) = (&list.items[0], &list.items[1]);
    assert!(last_s.closed && !now_s.closed);
    assert_eq!(
        (
            last_s.opening_balance_micros,
            last_s.grants_micros,
            last_s.closing_balance_micros
        ),
        (0, 10_000_000, 10_000_000)
    );
    assert_eq!(now_s.opening_balance_micros, 10_000_000);
    assert_eq!(now_s.usage_micros, spent);
    assert_eq!(now_s.closing_balance_micros, test_balance);
    for s in &list.items {
        assert_eq!(
            s.opening_balance_micros + s.topups_micros + s.grants_micros - s.usage_micros
                + s.subscriptions_micros
                + s.bonuses_micros
                + s.revenue_micros
                - s.platform_fees_micros
                + s.other_micros,
            s.closing_balance_micros,
            "{}: opening + movements = closing",
            s.month
        );
    }

    let stmt: Statement = json(
        app.get(
            &ns(
                &user,
                &format!("/credits/statements/{current}?environment=test"),
            ),
            Some(&user.token),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(&stmt.summary, now_s);
    assert_eq!(stmt.usage_by_api.len(), 1);
    assert_eq!(stmt.usage_by_api[0].api, "sandbox");
    assert_eq!(stmt.usage_by_api[0].calls, 3);
    assert_eq!(stmt.usage_by_api[0].cost_micros, spent);
    assert_eq!(stmt.usage_by_key.len(), 2);
    assert_eq!(
        stmt.usage_by_key.iter().map(|k| k.cost_micros).sum::<i64>(),
        spent,
        "usage by key adds up"
    );
    let beta = stmt
        .usage_by_key
        .iter()
        .find(|k| k.key_id == keys[1].key.id)
        .unwrap();
    assert_eq!(
        (beta.calls, beta.key_name.as_deref()),
        (2, Some("beta, \"quoted\""))
    );

    // Live: the top-up.
    let live: Statement = json(
        app.get(
            &ns(
                &user,
                &format!("/credits/statements/{current}?environment=live"),
            ),
            Some(&user.token),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(live.summary.topups_micros, 3_000_000);
    assert_eq!(live.summary.closing_balance_micros, 3_000_000);
    assert!(live.usage_by_api.is_empty());

    // CSV downloads.
    let res = app
        .get(
            &ns(
                &user,
                &format!("/credits/statements/{current}?environment=test&format=csv"),
            ),
            Some(&user.token),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    assert!(res.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .contains(&format!(
            "statement-{}-test-{current}.csv",
            user.namespace_id
        )));
    let csv = res.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "section,item,name,calls,amount_micros");
    assert!(
        lines.contains(&"summary,opening_balance,,,10000000"),
        "{csv}"
    );
    assert!(
        lines.contains(&format!("summary,usage,,,{spent}").as_str()),
        "{csv}"
    );
    assert!(lines.contains(&format!("summary,closing_balance,,,{test_balance}").as_str()));
    assert!(
        lines.contains(&format!("usage_by_api,sandbox,,3,{spent}").as_str()),
        "{csv}"
    );
    assert!(
        lines.contains(
            &format!(
                "usage_by_key,{},\"beta, \"\"quoted\"\"\",2,{}",
                keys[1].key.id, beta.cost_micros
            )
            .as_str()
        ),
        "{csv}"
    );
    let res = app
        .get(
            &ns(&user, "/credits/statements?environment=test&format=csv"),
            Some(&user.token),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let csv = res.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(lines[0].starts_with("month,environment,"));
    assert!(lines[2].starts_with(&format!("{last_month},test,")));
    assert!(
        lines[2].ends_with(",true,0,0,10000000,0,0,0,0,0,0,10000000"),
        "{csv}"
    );

    // Bad months.
    for month in ["2026-13", "nope", "2026-1"] {
        let res = app
            .get(
                &ns(&user, &format!("/credits/statements/{month}")),
                Some(&user.token),
            )
            .await;
        assert_error(res, StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest).await;
    }
    for month in ["2001-01", "9990-01"] {
        let res = app
            .get(
                &ns(&user, &format!("/credits/statements/{month}")),
                Some(&user.token),
            )
            .await;
        assert_error(res, StatusCode::NOT_FOUND, ErrorCode::NotFound).await;
    }
    let res = app
        .get(
            &ns(&user, "/credits/statements?format=pdf"),
            Some(&user.token),
        )
        .await;
    assert_error(res, StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest).await;
    assert_ledger_consistent(&app, &user).await;
}

async fn alerts(app: &TestApp, user: &User) -> Vec<LowBalanceAlert> {
    let list: LowBalanceAlertList = json(
        app.get(&ns(user, "/credits/alerts"), Some(&user.token))
            .await,
        StatusCode::OK,
    )
    .await;
    list.items
}

/// Waits until the namespace has `n` low-balance events (the background check
/// runs every 50 ms here), then a little longer to see that no more come.
async fn expect_low_balance_events(app: &TestApp, user: &User, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = events_of_kind(app, user, "credits.low_balance").await.len();
        assert!(got <= n, "{got} low-balance events, expected {n}");
        if got == n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{got} low-balance events after 10 s, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = events_of_kind(app, user, "credits.low_balance").await.len();
    assert_eq!(got, n, "no further low-balance events");
}

async fn a_low_balance_alert_fires_once_per_crossing_and_rearms(backend: Backend) {
    let app = billing_app(backend, |s| s.billing.alert_check_interval_ms = 50).await;
    let operator = app.signup_operator("operator").await;
    let user = app.signup("dev").await;
    let key: tally_common::CreatedKey = json(
        app.post(
            &ns(&user, "/keys"),
            Some(&user.token),
            json!({"name": "k", "environment": "test"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let spend = |n: usize| {
        let app = &app;
        let secret = key.secret.clone();
        async move {
            for _ in 0..n {
                let res = app
                    .client
                    .post(app.url("/v1/chat/completions"))
                    .bearer_auth(&secret)
                    .json(&json!({"model": "tally-sandbox", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), StatusCode::OK);
            }
        }
    };

    let start = balance(&app, &user, Environment::Test).await;
    let alert: LowBalanceAlert = json(
        app.client
            .put(app.url(&ns(&user, "/credits/alerts/test")))
            .bearer_auth(&user.token)
            .json(&json!({"threshold_micros": start - 1}))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        (
            alert.threshold_micros,
            alert.balance_micros,
            alert.below,
            alert.armed
        ),
        (start - 1, start, false, true)
    );

    // The first call crosses; the next ones stay below and fire nothing.
    spend(1).await;
    expect_low_balance_events(&app, &user, 1).await;
    spend(3).await;
    expect_low_balance_events(&app, &user, 1).await;
    let a = &alerts(&app, &user).await[0];
    assert!(a.below && !a.armed && a.last_fired_at.is_some(), "{a:?}");
    let event = &events_of_kind(&app, &user, "credits.low_balance").await[0];
    assert_eq!(event.environment, Some(Environment::Test));

    // A grant lifts it back above: re-armed; the next drop fires again.
    let res = app
        .post(
            &format!("/api/v1/admin/namespaces/{}/grants", user.namespace_id),
            Some(&operator.token),
            json!({"environment": "test", "amount_micros": 50_000}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let a = &alerts(&app, &user).await[0];
    assert!(!a.below && a.armed, "{a:?}");
    let mut calls = 0;
    while balance(&app, &user, Environment::Test).await >= start - 1 {
        spend(1).await;
        calls += 1;
        assert!(calls < 100);
    }
    expect_low_balance_events(&app, &user, 2).await;
    spend(2).await;
    expect_low_balance_events(&app, &user, 2).await;

    // A threshold set above the balance fires at once.
    let live: LowBalanceAlert = json(
        app.client
            .put(app.url(&ns(&user, "/credits/alerts/live")))
            .bearer_auth(&user.token)
            .json(&json!({"threshold_micros": 1_000_000}))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert!(live.below && !live.armed, "{live:?}");
    expect_low_balance_events(&app, &user, 3).await;
    assert_eq!(alerts(&app, &user).await.len(), 2);

    // Bad input, removal.
    for body in [
        json!({"threshold_micros": 0}),
        json!({"threshold_micros": -5}),
    ] {
        let res = app
            .client
            .put(app.url(&ns(&user, "/credits/alerts/test")))
            .bearer_auth(&user.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_error(res, StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest).await;
    }
    let res = app
        .client
        .put(app.url(&ns(&user, "/credits/alerts/staging")))
        .bearer_auth(&user.token)
        .json(&json!({"threshold_micros": 5}))
        .send()
        .await
        .unwrap();
    assert_error(res, StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest).await;
    let res = app
        .delete(&ns(&user, "/credits/alerts/live"), &user.token)
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = app
        .delete(&ns(&user, "/credits/alerts/live"), &user.token)
        .await;
    assert_error(res, StatusCode::NOT_FOUND, ErrorCode::NotFound).await;
    assert_eq!(alerts(&app, &user).await.len(), 1);
    assert_ledger_consistent(&app, &user).await;
}

async fn billing_data_of_another_namespace_is_never_visible_and_roles_apply(backend: Backend) {
    let app = billing_app(backend, |_| {}).await;
    let owner = app.signup("owner").await;
    let stranger = app.signup("stranger").await;
    let developer = app.signup("developer").await;
    let viewer = app.signup("viewer").await;
    let billing = app.signup("billing").await;
    app.add_member(&owner, &developer, "developer").await;
    app.add_member(&owner, &viewer, "viewer").await;
    app.add_member(&owner, &billing, "billing").await;

    let intent = create_intent(&app, &owner, "live", "USDC", 1_000_000).await;
    let res = app
        .client
        .put(app.url(&ns(&owner, "/credits/alerts/live")))
        .bearer_auth(&owner.token)
        .json(&json!({"threshold_micros": 10}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    // A stranger: the namespace does not exist for them.
    let foreign = |rest: &str| ns(&owner, rest);
    for path in [
        foreign("/credits/intents"),
        foreign(&format!("/credits/intents/{}", intent.id)),
        foreign("/credits/statements"),
        foreign("/credits/statements/2026-11"),
        foreign("/credits/alerts"),
        foreign("/credits/auto-topups"),
    ] {
        let res = app.get(&path, Some(&stranger.token)).await;
        assert_error(res, StatusCode::NOT_FOUND, ErrorCode::NotFound).await;
    }
    let res = app
        .post(
            &foreign("/credits/intents"),
            Some(&stranger.token),
            json!({"environment": "live", "currency": "USDC", "amount_units": 1}),
        )
        .await;
    assert_error(res, StatusCode::NOT_FOUND, ErrorCode::NotFound).await;
    let res = app
        .client
        .put(app.url(&foreign("/credits/alerts/live")))
        .bearer_auth(&stranger.token)
        .json(&json!({"threshold_micros": 1}))
        .send()
        .await
        .unwrap();
    assert_error(res, StatusCode::NOT_FOUND, ErrorCode::NotFound).await;
    let res = app
        .delete(&foreign("/credits/alerts/live"), &stranger.token)
        .await;
    assert_error(res, StatusCode::NOT_FOUND, ErrorCode::NotFound).await;
    // Their own namespace does not see the intent either.
    let res = app
        .get(
            &ns(&stranger, &format!("/credits/intents/{}", intent.id)),
            Some(&stranger.token),
        )
        .await;
    assert_error(res, StatusCode::NOT_FOUND, ErrorCode::NotFound).await;
    let page: PaymentIntentPage = json(
        app.get(&ns(&stranger, "/credits/intents"), Some(&stranger.token))
            .await,
        StatusCode::OK,
    )
    .await;
    assert!(page.items.is_empty());
    assert!(alerts(&app, &stranger).await.is_empty());
    // A deposit for the owner's intent never shows in the stranger's log.
    json::<DepositResult>(
        notify(&app, &deposit_body("iso-tx", &intent, 1_000_000)).await,
        StatusCode::OK,
    )
    .await;
    let res = notify(&app, &deposit_body("iso-tx", &intent, 1_000_000)).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(events_of_kind(&app, &stranger, "credits.added")
        .await
        .is_empty());
    assert!(events_of_kind(&app, &stranger, "topup.deposit_refused")
        .await
        .is_empty());
    assert_eq!(balance(&app, &stranger, Environment::Live).await, 0);

    // Roles: developers and viewers see no billing data but the alerts; billing does.
    for user in [&developer, &viewer] {
        for path in [
            foreign("/credits/intents"),
            foreign("/credits/statements"),
            foreign("/credits/auto-topups"),
        ] {
            let res = app.get(&path, Some(&user.token)).await;
            assert_error(res, StatusCode::FORBIDDEN, ErrorCode::Forbidden).await;
        }
        let res = app
            .post(
                &foreign("/credits/intents"),
                Some(&user.token),
                json!({"environment": "live", "currency": "USDC", "amount_units": 1}),
            )
            .await;
        assert_error(res, StatusCode::FORBIDDEN, ErrorCode::Forbidden).await;
        let res = app
            .client
            .put(app.url(&foreign("/credits/alerts/live")))
            .bearer_auth(&user.token)
            .json(&json!({"threshold_micros": 1}))
            .send()
            .await
            .unwrap();
        assert_error(res, StatusCode::FORBIDDEN, ErrorCode::Forbidden).await;
        let res = app
            .client
            .put(app.url(&foreign("/credits/auto-topups/live")))
            .bearer_auth(&user.token)
            .json(&json!({"threshold_micros": 1, "amount_units": 1, "currency": "USDC"}))
            .send()
            .await
            .unwrap();
        assert_error(res, StatusCode::FORBIDDEN, ErrorCode::Forbidden).await;
        let list: LowBalanceAlertList = json(
            app.get(&foreign("/credits/alerts"), Some(&user.token))
                .await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(list.items.len(), 1);
    }
    let got: PaymentIntent = json(
        app.get(
            &foreign(&format!("/credits/intents/{}", intent.id)),
            Some(&billing.token),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(got.status, IntentStatus::Succeeded);
    let res = app
        .get(&foreign("/credits/statements"), Some(&billing.token))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    // No session at all.
    let res = app.get(&foreign("/credits/intents"), None).await;
    assert_error(res, StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized).await;
    assert_ledger_consistent(&app, &owner).await;
    assert_ledger_consistent(&app, &stranger).await;
}

async fn put_rule(app: &TestApp, user: &User, env: &str, body: Value) -> reqwest::Response {
    app.client
        .put(app.url(&ns(user, &format!("/credits/auto-topups/{env}"))))
        .bearer_auth(&user.token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn auto_intents(app: &TestApp, user: &User) -> Vec<PaymentIntent> {
    let page: PaymentIntentPage = json(
        app.get(&ns(user, "/credits/intents"), Some(&user.token))
            .await,
        StatusCode::OK,
    )
    .await;
    page.items
        .into_iter()
        .filter(|i| i.created_by == "auto top-up")
        .collect()
}

/// Waits until the namespace has `n` intents from its auto top-up rule, then
/// a little longer to see that no more come.
async fn expect_auto_intents(app: &TestApp, user: &User, n: usize) -> Vec<PaymentIntent> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = auto_intents(app, user).await.len();
        assert!(got <= n, "{got} auto top-up intents, expected {n}");
        if got == n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{got} auto top-up intents after 10 s, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let intents = auto_intents(app, user).await;
    assert_eq!(intents.len(), n, "no further auto top-up intents");
    intents
}

async fn an_auto_top_up_rule_creates_one_intent_per_crossing(backend: Backend) {
    let app = billing_app(backend, |s| s.billing.alert_check_interval_ms = 50).await;
    let user = app.signup("dev").await;
    let key: tally_common::CreatedKey = json(
        app.post(
            &ns(&user, "/keys"),
            Some(&user.token),
            json!({"name": "k", "environment": "test"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let spend = |n: usize| {
        let app = &app;
        let secret = key.secret.clone();
        async move {
            for _ in 0..n {
                let res = app
                    .client
                    .post(app.url("/v1/chat/completions"))
                    .bearer_auth(&secret)
                    .json(&json!({"model": "tally-sandbox", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), StatusCode::OK);
            }
        }
    };

    let start = balance(&app, &user, Environment::Test).await;
    let rule: AutoTopup = json(
        put_rule(
            &app,
            &user,
            "test",
            json!({"threshold_micros": start - 1, "amount_units": 2_000_000, "currency": "USDC"}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert!(rule.armed && rule.last_intent_id.is_none(), "{rule:?}");
    assert!(auto_intents(&app, &user).await.is_empty());

    // The first call crosses: one intent; more calls below create no more.
    spend(1).await;
    let intents = expect_auto_intents(&app, &user, 1).await;
    spend(2).await;
    expect_auto_intents(&app, &user, 1).await;
    let first = &intents[0];
    assert_eq!(
        (
            first.environment,
            first.currency,
            first.amount_units,
            first.status
        ),
        (
            Environment::Test,
            tally_common::Currency::Usdc,
            2_000_000,
            IntentStatus::Pending
        )
    );
    let list: AutoTopupList = json(
        app.get(&ns(&user, "/credits/auto-topups"), Some(&user.token))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(list.items.len(), 1);
    assert!(!list.items[0].armed);
    assert_eq!(
        list.items[0].last_intent_id.as_deref(),
        Some(first.id.as_str())
    );
    assert_eq!(
        events_of_kind(&app, &user, "topup.auto_intent_created")
            .await
            .len(),
        1
    );

    // The processor pays it: back above the threshold, re-armed; the next drop
    // creates the next intent.
    let before = balance(&app, &user, Environment::Test).await;
    json::<DepositResult>(
        notify(&app, &deposit_body("auto-1", first, 2_000_000)).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        balance(&app, &user, Environment::Test).await,
        before + 2_000_000
    );
    let list: AutoTopupList = json(
        app.get(&ns(&user, "/credits/auto-topups"), Some(&user.token))
            .await,
        StatusCode::OK,
    )
    .await;
    assert!(list.items[0].armed, "{:?}", list.items[0]);
    let mut calls = 0;
    while balance(&app, &user, Environment::Test).await >= start - 1 {
        spend(1).await;
        calls += 1;
        assert!(calls < 2000);
    }
    let intents = expect_auto_intents(&app, &user, 2).await;
    assert_ne!(intents[0].id, first.id);

    // A rule set above the balance creates its intent at once.
    let live: AutoTopup = json(
        put_rule(
            &app,
            &user,
            "live",
            json!({"threshold_micros": 5_000_000, "amount_units": 10_000_000, "currency": "USDT"}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert!(!live.armed && live.last_intent_id.is_some(), "{live:?}");
    assert_eq!(auto_intents(&app, &user).await.len(), 3);

    // Bad input changes nothing; removal.
    for (body, code) in [
        (
            json!({"threshold_micros": 0, "amount_units": 1, "currency": "USDC"}),
            ErrorCode::InvalidRequest,
        ),
        (
            json!({"threshold_micros": 1, "amount_units": 0, "currency": "USDC"}),
            ErrorCode::InvalidRequest,
        ),
        (
            json!({"threshold_micros": 1, "amount_units": 1, "currency": "RTITY"}),
            ErrorCode::UnsupportedCurrency,
        ),
        (
            json!({"threshold_micros": 1, "amount_units": 1}),
            ErrorCode::InvalidJson,
        ),
    ] {
        let res = put_rule(&app, &user, "test", body).await;
        assert_error(res, StatusCode::BAD_REQUEST, code).await;
    }
    let list: AutoTopupList = json(
        app.get(&ns(&user, "/credits/auto-topups"), Some(&user.token))
            .await,
        StatusCode::OK,
    )
    .await;
    let test_rule = list
        .items
        .iter()
        .find(|r| r.environment == Environment::Test)
        .unwrap();
    assert_eq!(test_rule.threshold_micros, start - 1);
    let res = app
        .delete(&ns(&user, "/credits/auto-topups/live"), &user.token)
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = app
        .delete(&ns(&user, "/credits/auto-topups/live"), &user.token)
        .await;
    assert_error(res, StatusCode::NOT_FOUND, ErrorCode::NotFound).await;
    assert_ledger_consistent(&app, &user).await;
}
