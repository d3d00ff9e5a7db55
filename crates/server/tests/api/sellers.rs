//! Seller revenue and auto-pause (C8), through HTTP: a call to a seller's API
//! credits the seller, less the platform fee, in the commit that debits the
//! caller; below its critical balance the seller's live serving pauses
//! (503) while test mode keeps working; pause and resume are one event each.

use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use reqwest::StatusCode;
use serde_json::json;
use tally_common::{
    BannerList, CreatedKey, DashboardRole, DashboardSummary, Environment, ErrorCode,
};

use crate::billing::{assert_ledger_consistent, balance, billing_app, events_of_kind, ledger, ns};
use crate::helpers::{add_api, assert_error, backend_tests, grant, json, Backend, TestApp, User};

backend_tests!(
    a_sellers_api_pays_the_seller_less_the_fee_and_pauses_below_the_critical_level,
    concurrent_calls_credit_the_seller_exactly_once_per_paid_call,
);

/// An upstream that answers any request with a small JSON body.
async fn upstream() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = HttpServer::new(|| {
        App::new().default_service(web::to(|| async {
            HttpResponse::Ok().json(json!({"ok": true}))
        }))
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    format!("http://127.0.0.1:{port}")
}

async fn key(app: &TestApp, user: &User, env: &str) -> String {
    let k: CreatedKey = json(
        app.post(
            &ns(user, "/keys"),
            Some(&user.token),
            json!({"name": "k", "environment": env}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    k.secret
}

async fn call(app: &TestApp, secret: &str, slug: &str) -> reqwest::Response {
    app.client
        .post(app.url(&format!("/v1/apis/{slug}/run")))
        .bearer_auth(secret)
        .json(&json!({"input": 1}))
        .send()
        .await
        .unwrap()
}

/// Waits until the seller has `n` events of `kind`.
async fn expect_events(app: &TestApp, user: &User, kind: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let found = events_of_kind(app, user, kind).await.len();
        if found == n || Instant::now() > deadline {
            assert_eq!(found, n, "{kind} events");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn banners(app: &TestApp, user: &User) -> Vec<String> {
    let list: BannerList = json(
        app.get(&ns(user, "/banners?environment=live"), Some(&user.token))
            .await,
        StatusCode::OK,
    )
    .await;
    list.items.into_iter().map(|b| b.kind).collect()
}

/// A seller's API priced at 0.1 credits a call (fee 10%: the seller nets
/// 0.09), and a platform API at 1 credit a call.
async fn marketplace(app: &TestApp) -> (User, User, User) {
    let up = upstream().await;
    let operator = app.signup_operator("op").await;
    let seller = app.signup("seller").await;
    let buyer = app.signup("buyer").await;
    add_api(
        app,
        &operator,
        json!({
            "slug": "sold", "name": "Sold", "protocol": "http",
            "upstreams": [{"url": up}],
            "pricing": {"per_request_micros": 100_000},
            "owner_namespace_id": seller.namespace_id,
        }),
    )
    .await;
    add_api(
        app,
        &operator,
        json!({
            "slug": "platform", "name": "Platform", "protocol": "http",
            "upstreams": [{"url": up}],
            "pricing": {"per_request_micros": 1_000_000},
        }),
    )
    .await;
    (operator, seller, buyer)
}

async fn a_sellers_api_pays_the_seller_less_the_fee_and_pauses_below_the_critical_level(
    backend: Backend,
) {
    let app = billing_app(backend, |s| s.billing.alert_check_interval_ms = 50).await;
    let (operator, seller, buyer) = marketplace(&app).await;
    grant(&app, &operator, &buyer, "live", 1_000_000).await;
    let live = key(&app, &buyer, "live").await;
    let test = key(&app, &buyer, "test").await;

    // The seller has no live credits: below the critical level (1 credit).
    let res = call(&app, &live, "sold").await;
    let err = assert_error(
        res,
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::ServingPaused,
    )
    .await;
    assert!(
        err.error.message.contains("paused"),
        "{}",
        err.error.message
    );
    assert_eq!(balance(&app, &buyer, Environment::Live).await, 1_000_000);
    expect_events(&app, &seller, "serving.paused", 1).await;
    assert_eq!(banners(&app, &seller).await, ["serving_paused"]);
    assert!(
        banners(&app, &buyer).await.is_empty(),
        "only the seller sees it"
    );
    // Test mode keeps working, and earns the seller test credits.
    let seller_test = balance(&app, &seller, Environment::Test).await;
    assert_eq!(call(&app, &test, "sold").await.status(), StatusCode::OK);
    assert_eq!(
        balance(&app, &seller, Environment::Test).await,
        seller_test + 90_000
    );

    // Topped up: serving resumes at once, and once as an event.
    grant(&app, &operator, &seller, "live", 2_000_000).await;
    for _ in 0..5 {
        assert_eq!(call(&app, &live, "sold").await.status(), StatusCode::OK);
    }
    expect_events(&app, &seller, "serving.resumed", 1).await;
    assert!(banners(&app, &seller).await.is_empty());
    assert_eq!(balance(&app, &buyer, Environment::Live).await, 500_000);
    assert_eq!(
        balance(&app, &seller, Environment::Live).await,
        2_000_000 + 5 * 90_000
    );
    // Each paid call: the buyer's usage, the seller's revenue and the fee,
    // all referencing the call.
    let buyer_entries = ledger(&app, &buyer, "live").await.items;
    let calls: Vec<&str> = buyer_entries
        .iter()
        .filter(|e| e.kind == "usage")
        .map(|e| e.reference.as_deref().unwrap())
        .collect();
    assert_eq!(calls.len(), 5);
    let seller_entries = ledger(&app, &seller, "live").await.items;
    for call_id in &calls {
        let of_call: Vec<(&str, i64)> = seller_entries
            .iter()
            .filter(|e| e.reference.as_deref() == Some(call_id))
            .map(|e| (e.kind.as_str(), e.amount_micros))
            .collect();
        assert_eq!(of_call.len(), 2, "{of_call:?}");
        assert!(of_call.contains(&("revenue", 100_000)), "{of_call:?}");
        assert!(of_call.contains(&("platform_fee", -10_000)), "{of_call:?}");
    }
    let filtered: tally_common::LedgerPage = json(
        app.get(
            &ns(&seller, "/credits/ledger?environment=live&kind=revenue"),
            Some(&seller.token),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(filtered.items.len(), 5);
    assert!(filtered.items.iter().all(|e| e.kind == "revenue"));

    // The seller spends below the critical level: paused again.
    let seller_key = key(&app, &seller, "live").await;
    assert_eq!(
        call(&app, &seller_key, "platform").await.status(),
        StatusCode::OK
    );
    assert_eq!(
        call(&app, &seller_key, "platform").await.status(),
        StatusCode::OK
    );
    assert_eq!(balance(&app, &seller, Environment::Live).await, 450_000);
    let res = call(&app, &live, "sold").await;
    assert_error(
        res,
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::ServingPaused,
    )
    .await;
    expect_events(&app, &seller, "serving.paused", 2).await;
    // Statements show revenue and fees.
    let list: tally_common::StatementList = json(
        app.get(
            &ns(&seller, "/credits/statements?environment=live"),
            Some(&seller.token),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let month = &list.items[0];
    assert_eq!(month.revenue_micros, 500_000);
    assert_eq!(month.platform_fees_micros, 50_000);
    assert_eq!(month.usage_micros, 2_000_000);
    for user in [&buyer, &seller] {
        assert_ledger_consistent(&app, user).await;
    }
    // Nothing moves credits between namespaces but calls: the buyer's
    // credits never reach the seller's test balance.
    assert_eq!(
        balance(&app, &seller, Environment::Test).await,
        seller_test + 90_000
    );

    // The dashboards (D1, D3): the seller sees the calls its API served
    // (the two paused ones as errors) and what callers paid for them, per
    // API; its own spending stays in its consumer figures.
    let d = dashboard(&app, &seller, "live").await;
    assert_eq!(d.role, DashboardRole::Seller);
    let k = d.seller.expect("seller figures");
    assert_eq!((k.calls_served_24h, k.errors_24h), (7, 2));
    assert_eq!((k.calls_served_7d, k.revenue_7d_micros), (7, 500_000));
    assert_eq!(k.revenue_24h_micros, 500_000);
    assert_eq!(d.served_apis.len(), 1);
    let row = &d.served_apis[0];
    assert_eq!(row.api, "sold");
    assert_eq!((row.calls, row.successes, row.errors), (7, 5, 2));
    assert_eq!(row.revenue_micros, 500_000);
    assert_eq!(d.served_hourly.iter().map(|b| b.successes).sum::<i64>(), 5);
    assert_eq!(
        (d.consumer.calls_24h, d.consumer.spent_24h_micros),
        (2, 2_000_000)
    );
    assert_eq!(d.apis.len(), 1);
    assert_eq!(d.apis[0].api, "platform");
    let test = dashboard(&app, &seller, "test").await.seller.unwrap();
    assert_eq!(
        (test.calls_served_24h, test.revenue_24h_micros),
        (1, 100_000)
    );
    // The buyer is a consumer only: its calls, by API, at what it paid.
    let d = dashboard(&app, &buyer, "live").await;
    assert_eq!(d.role, DashboardRole::Consumer);
    assert!(d.seller.is_none() && d.served_apis.is_empty());
    assert_eq!((d.consumer.calls_24h, d.consumer.errors_24h), (7, 2));
    assert_eq!(d.consumer.spent_total_micros, 500_000);
    assert_eq!(d.apis[0].cost_micros, 500_000);
    assert_eq!(d.apis[0].revenue_micros, 0);
}

async fn dashboard(app: &TestApp, user: &User, env: &str) -> DashboardSummary {
    json(
        app.get(
            &ns(user, &format!("/dashboard?environment={env}")),
            Some(&user.token),
        )
        .await,
        StatusCode::OK,
    )
    .await
}

async fn concurrent_calls_credit_the_seller_exactly_once_per_paid_call(backend: Backend) {
    let app = billing_app(backend, |s| s.gateway.platform_fee_bps = 2500).await;
    let (operator, seller, buyer) = marketplace(&app).await;
    grant(&app, &operator, &seller, "live", 1_000_000).await;
    const PAID: i64 = 7;
    grant(&app, &operator, &buyer, "live", PAID * 100_000).await;
    let live = key(&app, &buyer, "live").await;
    let calls = (0..25).map(|_| {
        let client = app.client.clone();
        let url = app.url("/v1/apis/sold/run");
        let secret = live.clone();
        tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(secret)
                .json(&json!({}))
                .send()
                .await
                .unwrap()
                .status()
        })
    });
    let statuses: Vec<StatusCode> = futures_util::future::join_all(calls)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count() as i64;
    assert_eq!(ok, PAID, "{statuses:?}");
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::OK || *s == StatusCode::PAYMENT_REQUIRED),
        "every call the balance did not cover got 402: {statuses:?}"
    );
    assert_eq!(balance(&app, &buyer, Environment::Live).await, 0);
    // 25% fee: the seller nets 0.075 per call.
    assert_eq!(
        balance(&app, &seller, Environment::Live).await,
        1_000_000 + PAID * 75_000
    );
    for user in [&buyer, &seller] {
        assert_ledger_consistent(&app, user).await;
    }
}
