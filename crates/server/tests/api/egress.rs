//! The egress policy (`[egress]`): upstream URLs and the price feed are
//! checked when they are accepted, and connections to denied addresses are
//! never made, whatever a name resolves to.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use actix_web::{web, App, HttpResponse, HttpServer};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tally_common::{CreatedKey, Environment, ErrorCode};
use tally_server::config::Settings;
use tally_server::Application;

use crate::billing::{balance, billing_app, create_intent, deposit_body, notify};
use crate::helpers::{
    assert_error, backend_tests, grant, json, launch, start, test_settings, Backend, TestApp,
    TestDatabase, User,
};

backend_tests!(
    a_denied_upstream_is_refused_when_an_api_is_created_or_changed,
    a_config_file_or_price_url_the_policy_refuses_stops_the_server_from_starting,
    a_name_that_resolves_to_a_denied_address_is_never_connected_and_costs_nothing,
    a_stored_literal_address_the_policy_now_denies_is_never_connected,
    a_price_feed_that_resolves_to_a_denied_address_is_not_fetched_and_credits_nothing,
);

/// An upstream that counts the requests it receives and answers a chat
/// completion on any path.
async fn counting_upstream() -> (u16, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = hits.clone();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = HttpServer::new(move || {
        let seen = seen.clone();
        App::new().default_service(web::to(move || {
            seen.fetch_add(1, Ordering::SeqCst);
            async {
                HttpResponse::Ok().json(json!({
                    "id": "x", "object": "chat.completion", "credits_per_unit": "1",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}
                }))
            }
        }))
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    (port, hits)
}

async fn app_with(backend: Backend, configure: impl FnOnce(&mut Settings)) -> TestApp {
    let db = TestDatabase::new(backend).await;
    let mut settings = test_settings(&db);
    configure(&mut settings);
    launch(db, settings).await.0
}

fn deny_loopback(s: &mut Settings) {
    s.egress.deny = vec!["127.0.0.0/8".into(), "::1".into()];
}

fn api(slug: &str, upstream: &str) -> Value {
    json!({
        "slug": slug, "name": slug, "protocol": "openai", "models": [format!("{slug}-model")],
        "upstreams": [{"url": upstream, "api_key": "sk-upstream"}],
        "pricing": {"per_request_micros": 1000}
    })
}

async fn admin_api(app: &TestApp, operator: &User, slug: &str) -> reqwest::Response {
    app.get(
        &format!("/api/v1/admin/catalog/{slug}"),
        Some(&operator.token),
    )
    .await
}

async fn live_key(app: &TestApp, user: &User) -> String {
    let key: CreatedKey = json(
        app.post(
            &format!("/api/v1/namespaces/{}/keys", user.namespace_id),
            Some(&user.token),
            json!({"name": "live", "environment": "live"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    key.secret
}

async fn chat(app: &TestApp, secret: &str, model: &str) -> reqwest::Response {
    chat_at(&app.address, secret, model).await
}

async fn chat_at(address: &str, secret: &str, model: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{address}/v1/chat/completions"))
        .bearer_auth(secret)
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}))
        .send()
        .await
        .unwrap()
}

async fn a_denied_upstream_is_refused_when_an_api_is_created_or_changed(backend: Backend) {
    let app = app_with(backend, |s| {
        s.egress.deny = vec!["*.internal.example".into(), "10.0.0.0/8".into()];
    })
    .await;
    let operator = app.signup_operator("operator").await;
    let create = |config: Value| app.post("/api/v1/admin/catalog", Some(&operator.token), config);

    for (slug, url) in [
        ("by-name", "http://llm.internal.example/v1"),
        ("by-address", "http://10.2.3.4:8000"),
        // The metadata service is refused without any setting.
        ("metadata", "http://169.254.169.254/latest"),
        ("metadata-v6", "http://[fd00:ec2::254]/"),
    ] {
        let res = create(api(slug, url)).await;
        let body = assert_error(res, StatusCode::BAD_REQUEST, ErrorCode::UpstreamNotAllowed).await;
        assert!(body.error.message.contains(url), "{}", body.error.message);
        assert_error(
            admin_api(&app, &operator, slug).await,
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
        )
        .await;
    }
    // Test upstreams are checked the same way.
    let mut config = api("test-side", "https://api.example.com");
    config["test_upstreams"] = json!([{"url": "http://10.9.9.9"}]);
    assert_error(
        create(config).await,
        StatusCode::BAD_REQUEST,
        ErrorCode::UpstreamNotAllowed,
    )
    .await;

    // An allowed API, then a change to a denied upstream: refused, nothing changes.
    let res = create(api("public", "https://api.example.com")).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let res = app
        .patch(
            "/api/v1/admin/catalog/public",
            &operator.token,
            json!({"name": "renamed", "upstreams": [{"url": "http://db.internal.example:5432"}]}),
        )
        .await;
    assert_error(res, StatusCode::BAD_REQUEST, ErrorCode::UpstreamNotAllowed).await;
    let stored: Value = json(admin_api(&app, &operator, "public").await, StatusCode::OK).await;
    assert_eq!(stored["name"], "public");
    assert_eq!(stored["upstreams"][0]["url"], "https://api.example.com");
}

async fn a_config_file_or_price_url_the_policy_refuses_stops_the_server_from_starting(
    backend: Backend,
) {
    let db = TestDatabase::new(backend).await;
    let build = |configure: &dyn Fn(&mut Settings)| {
        let mut settings = test_settings(&db);
        configure(&mut settings);
        Application::build(settings)
    };
    let config_api = |url: &str| -> tally_common::CatalogApiConfig {
        serde_json::from_value(api("from-file", url)).unwrap()
    };

    let err = build(&|s| {
        s.egress.deny_private = true;
        s.catalog = vec![config_api("http://192.168.1.20:8000")];
    })
    .await
    .err()
    .expect("a private upstream in the config file stops the start");
    let err = format!("{err:#}");
    assert!(
        err.contains("from-file") && err.contains("egress.deny_private"),
        "{err}"
    );

    let err = build(&|s| {
        s.egress.allow = vec!["api.openai.com".into()];
        s.billing.price_url = Some("https://prices.example.com/{currency}".into());
    })
    .await
    .err()
    .expect("a price feed outside the allow list stops the start");
    let err = format!("{err:#}");
    assert!(
        err.contains("billing.price_url") && err.contains("egress.allow"),
        "{err}"
    );

    let err = build(&|s| s.egress.deny = vec!["not a host".into()])
        .await
        .err()
        .expect("a malformed entry stops the start");
    assert!(format!("{err:#}").contains("egress.deny"), "{err:#}");

    // Nothing of the refused catalog API was written.
    let app = build(&|s| s.egress.deny_private = true).await.unwrap();
    let mut conn = app.store().conn().await.unwrap();
    assert!(tally_store::catalog::get(&mut conn, "from-file")
        .await
        .unwrap()
        .is_none());
}

async fn a_name_that_resolves_to_a_denied_address_is_never_connected_and_costs_nothing(
    backend: Backend,
) {
    let (port, hits) = counting_upstream().await;
    let app = app_with(backend, deny_loopback).await;
    let operator = app.signup_operator("operator").await;

    // A literal loopback address is refused at once; a name passes validation
    // (DNS is asked at call time, not when the URL is written).
    let res = app
        .post(
            "/api/v1/admin/catalog",
            Some(&operator.token),
            api("literal", &format!("http://127.0.0.1:{port}")),
        )
        .await;
    assert_error(res, StatusCode::BAD_REQUEST, ErrorCode::UpstreamNotAllowed).await;
    let res = app
        .post(
            "/api/v1/admin/catalog",
            Some(&operator.token),
            api("named", &format!("http://localhost:{port}")),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);

    grant(&app, &operator, &operator, "live", 5_000_000).await;
    let secret = live_key(&app, &operator).await;
    let before = balance(&app, &operator, Environment::Live).await;
    for _ in 0..2 {
        let res = chat(&app, &secret, "named-model").await;
        assert_error(res, StatusCode::BAD_GATEWAY, ErrorCode::UpstreamError).await;
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "the upstream was never reached"
    );
    assert_eq!(balance(&app, &operator, Environment::Live).await, before);

    // deny_private refuses loopback the same way.
    let (port, hits) = counting_upstream().await;
    let app = app_with(backend, |s| s.egress.deny_private = true).await;
    let operator = app.signup_operator("operator").await;
    let res = app
        .post(
            "/api/v1/admin/catalog",
            Some(&operator.token),
            api("named", &format!("http://localhost:{port}")),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    grant(&app, &operator, &operator, "live", 5_000_000).await;
    let secret = live_key(&app, &operator).await;
    let res = chat(&app, &secret, "named-model").await;
    assert_error(res, StatusCode::BAD_GATEWAY, ErrorCode::UpstreamError).await;
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    assert_eq!(balance(&app, &operator, Environment::Live).await, 5_000_000);
}

async fn a_stored_literal_address_the_policy_now_denies_is_never_connected(backend: Backend) {
    let (port, hits) = counting_upstream().await;
    // An open server stores an API on a literal loopback address ...
    let open = app_with(backend, |_| {}).await;
    let operator = open.signup_operator("operator").await;
    let res = open
        .post(
            "/api/v1/admin/catalog",
            Some(&operator.token),
            api("stored", &format!("http://127.0.0.1:{port}")),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    grant(&open, &operator, &operator, "live", 5_000_000).await;
    let secret = live_key(&open, &operator).await;
    let res = chat(&open, &secret, "stored-model").await;
    assert_eq!(res.status(), StatusCode::OK, "the open server reaches it");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    let spent = 5_000_000 - balance(&open, &operator, Environment::Live).await;
    assert!(spent > 0);

    // ... and a server on the same database that denies loopback never connects to it.
    let mut settings = test_settings(&open.db);
    deny_loopback(&mut settings);
    let (hardened, _store) = start(settings).await;
    let res = chat_at(&hardened, &secret, "stored-model").await;
    assert_error(res, StatusCode::BAD_GATEWAY, ErrorCode::UpstreamError).await;
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "no request reached the upstream"
    );
    assert_eq!(
        balance(&open, &operator, Environment::Live).await,
        5_000_000 - spent,
        "the refused call cost nothing"
    );
}

async fn a_price_feed_that_resolves_to_a_denied_address_is_not_fetched_and_credits_nothing(
    backend: Backend,
) {
    let (port, hits) = counting_upstream().await;
    let app = billing_app(backend, |s| {
        s.billing.price_url = Some(format!("http://localhost:{port}/price/{{currency}}"));
        deny_loopback(s);
    })
    .await;
    let user = app.signup("payer").await;
    let intent = create_intent(&app, &user, "live", "USDC", 10_000_000).await;
    let res = notify(&app, &deposit_body("egress-1", &intent, 10_000_000)).await;
    assert_error(res, StatusCode::BAD_GATEWAY, ErrorCode::UpstreamError).await;
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the feed was never fetched");
    assert_eq!(balance(&app, &user, Environment::Live).await, 0);

    // The same feed without the deny: fetched, and the deposit credits.
    let app = billing_app(backend, |s| {
        s.billing.price_url = Some(format!("http://localhost:{port}/price/{{currency}}"));
    })
    .await;
    let user = app.signup("payer").await;
    let intent = create_intent(&app, &user, "live", "USDC", 10_000_000).await;
    let res = notify(&app, &deposit_body("egress-2", &intent, 10_000_000)).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert_eq!(balance(&app, &user, Environment::Live).await, 10_000_000);
}
