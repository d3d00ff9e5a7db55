//! The gateway (G1-G5), the ledger core (C1, C3) and the catalog, through HTTP
//! against a mock upstream.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tally_common::{
    Balances, CatalogAdminList, CatalogApiAdmin, CatalogList, CreatedKey, Environment, ErrorCode,
    FaucetResult, KeyStats, LedgerPage, PlaygroundResponse, UsagePage,
};

use crate::helpers::{
    add_api, assert_error, backend_tests, eventually, grant, json, spawn_app, start_with_gateway,
    test_settings, Backend, TestApp, User,
};

backend_tests!(
    a_test_key_calls_the_sandbox_and_pays_with_test_credits,
    bad_revoked_expired_and_out_of_scope_keys_get_clear_errors,
    a_revocation_reaches_another_instance_by_its_next_change_poll,
    rate_limits_answer_429_with_retry_after_and_ratelimit_headers,
    quotas_stop_a_key_and_say_when_the_period_resets,
    exactly_the_calls_a_balance_covers_succeed_when_they_race,
    live_calls_reach_the_upstream_with_its_credential_and_pay_by_tokens,
    streams_pass_through_and_are_billed_from_their_usage_event,
    upstream_failures_fail_over_time_out_and_cost_nothing,
    generic_apis_are_reached_at_their_slug,
    operators_manage_the_catalog_and_others_only_read_it,
    the_faucet_tops_up_test_credits_once_per_cooldown,
    the_playground_calls_with_a_chosen_key_and_reports_the_cost,
    usage_credits_and_stats_of_another_namespace_are_never_visible,
    one_model_and_one_catalog_api_are_read_by_their_ids,
);

/// What the mock upstream saw.
#[derive(Default)]
struct Seen {
    authorization: Vec<Option<String>>,
    bodies: Vec<Value>,
}

/// A small OpenAI-like upstream on a free port.
async fn mock_upstream() -> (String, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let data = web::Data::new(seen.clone());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route(
                "/health",
                web::get().to(|| async { HttpResponse::Ok().finish() }),
            )
            .route("/ok/v1/chat/completions", web::post().to(chat))
            .route(
                "/fail/v1/chat/completions",
                web::post().to(|| async {
                    HttpResponse::ServiceUnavailable().json(json!({"error": "overloaded"}))
                }),
            )
            .route(
                "/slow/v1/chat/completions",
                web::post().to(|| async {
                    // Longer than any test waits: only a timeout ends the call.
                    tokio::time::sleep(Duration::from_secs(600)).await;
                    HttpResponse::Ok().json(json!({}))
                }),
            )
            .route("/echo/{tail:.*}", web::to(echo))
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    (format!("http://127.0.0.1:{port}"), seen)
}

async fn chat(
    req: HttpRequest,
    body: web::Json<Value>,
    seen: web::Data<Arc<Mutex<Seen>>>,
) -> HttpResponse {
    {
        let mut s = seen.lock().unwrap();
        s.authorization.push(
            req.headers()
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_owned()),
        );
        s.bodies.push(body.0.clone());
    }
    if body["stream"] == true {
        let mut events = String::new();
        for word in ["Hello", " from", " upstream"] {
            events.push_str(&format!(
                "data: {}\n\n",
                json!({"choices": [{"index": 0, "delta": {"content": word}}]})
            ));
        }
        if body["stream_options"]["include_usage"] == true {
            events.push_str(&format!(
                "data: {}\n\n",
                json!({"choices": [], "usage": {"prompt_tokens": 40, "completion_tokens": 3}})
            ));
        }
        events.push_str("data: [DONE]\n\n");
        return HttpResponse::Ok()
            .content_type("text/event-stream")
            .body(events);
    }
    HttpResponse::Ok().json(json!({
        "id": "x", "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from upstream"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1000, "completion_tokens": 2000, "total_tokens": 3000}
    }))
}

async fn echo(req: HttpRequest, body: web::Bytes) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "method": req.method().as_str(), "path": req.path(), "query": req.query_string(),
        "body": String::from_utf8_lossy(&body),
    }))
}

fn ns(user: &User, rest: &str) -> String {
    format!("/api/v1/namespaces/{}{rest}", user.namespace_id)
}

async fn create_key(app: &TestApp, user: &User, body: Value) -> CreatedKey {
    json(
        app.post(&ns(user, "/keys"), Some(&user.token), body).await,
        StatusCode::CREATED,
    )
    .await
}

async fn test_key(app: &TestApp, user: &User) -> String {
    create_key(app, user, json!({"name": "t", "environment": "test"}))
        .await
        .secret
}

async fn call(app: &TestApp, secret: &str, path: &str, body: Value) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .bearer_auth(secret)
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn chat_body(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 50})
}

async fn balance(app: &TestApp, user: &User, env: Environment) -> i64 {
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

/// C1: the stored balance equals the sum of the ledger.
async fn assert_ledger_consistent(app: &TestApp, user: &User, env: Environment) -> i64 {
    let mut conn = app.store.conn().await.unwrap();
    let sum = tally_store::ledger::sum(&mut conn, &user.namespace_id, env)
        .await
        .unwrap();
    let stored = tally_store::ledger::balance(&mut conn, &user.namespace_id, env)
        .await
        .unwrap();
    assert_eq!(sum, stored, "ledger sum equals the stored balance");
    assert_eq!(
        balance(app, user, env).await,
        stored,
        "the API shows the stored balance"
    );
    stored
}

async fn usage(app: &TestApp, user: &User, query: &str) -> UsagePage {
    json(
        app.get(&ns(user, &format!("/usage{query}")), Some(&user.token))
            .await,
        StatusCode::OK,
    )
    .await
}

async fn a_test_key_calls_the_sandbox_and_pays_with_test_credits(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = app.signup("dev").await;
    let start = balance(&app, &user, Environment::Test).await;
    assert_eq!(
        start, 10_000_000,
        "a new namespace starts with welcome test credits"
    );
    let secret = test_key(&app, &user).await;

    let res = call(
        &app,
        &secret,
        "/v1/chat/completions",
        chat_body("tally-sandbox"),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let cost: i64 = res.headers()["x-tally-cost-micros"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let call_id = res.headers()["x-tally-call-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = res.json().await.unwrap();
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(content.contains("Say hello"), "{content}");
    let (tin, tout) = (
        body["usage"]["prompt_tokens"].as_i64().unwrap(),
        body["usage"]["completion_tokens"].as_i64().unwrap(),
    );
    // Sandbox pricing: 1000 per request + 10,000 per 1k in + 30,000 per 1k out, rounded up.
    let expected = 1000 + (tin * 10_000 + 999) / 1000 + (tout * 30_000 + 999) / 1000;
    assert_eq!(cost, expected);

    // The same request gives the same answer.
    let again: Value = call(
        &app,
        &secret,
        "/v1/chat/completions",
        chat_body("tally-sandbox"),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(again["choices"], body["choices"]);

    let page = usage(&app, &user, "?environment=test").await;
    assert_eq!(page.items.len(), 2);
    let first = page.items.iter().find(|e| e.id == call_id).unwrap();
    assert_eq!(
        (
            first.status,
            first.cost_micros,
            first.tokens_in,
            first.tokens_out
        ),
        (200, cost, tin, tout)
    );
    assert_eq!(first.api, "sandbox");
    assert_eq!(first.model.as_deref(), Some("tally-sandbox"));
    assert!(usage(&app, &user, "?environment=live")
        .await
        .items
        .is_empty());

    let left = assert_ledger_consistent(&app, &user, Environment::Test).await;
    assert_eq!(left, start - 2 * cost);
    assert_eq!(
        balance(&app, &user, Environment::Live).await,
        0,
        "live credits untouched"
    );
    let ledger: LedgerPage = json(
        app.get(
            &ns(&user, "/credits/ledger?environment=test"),
            Some(&user.token),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(ledger.items[0].kind, "usage");
    assert_eq!(ledger.items[0].balance_after_micros, left);
    assert_eq!(ledger.items.last().unwrap().kind, "grant");

    // Embeddings and the models list work with the same key.
    let emb: Value = call(
        &app,
        &secret,
        "/v1/embeddings",
        json!({"model": "tally-sandbox", "input": ["a", "b"]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(emb["data"].as_array().unwrap().len(), 2);
    let models: Value = app
        .client
        .get(app.url("/v1/models"))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(models["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["id"] == "tally-sandbox"));
}

async fn bad_revoked_expired_and_out_of_scope_keys_get_clear_errors(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = app.signup("dev").await;
    let body = chat_body("tally-sandbox");

    let res = app
        .client
        .post(app.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_error(res, StatusCode::UNAUTHORIZED, ErrorCode::InvalidApiKey).await;
    let res = call(&app, "tk_test_nope", "/v1/chat/completions", body.clone()).await;
    assert_error(res, StatusCode::UNAUTHORIZED, ErrorCode::InvalidApiKey).await;

    let key = create_key(&app, &user, json!({"name": "k", "environment": "test"})).await;
    let res = call(
        &app,
        &key.secret,
        "/v1/chat/completions",
        json!({"model": "no-such-model", "messages": []}),
    )
    .await;
    assert_error(res, StatusCode::NOT_FOUND, ErrorCode::NotFound).await;
    let res = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key.secret)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_error(res, StatusCode::BAD_REQUEST, ErrorCode::InvalidJson).await;
    let res = call(
        &app,
        &key.secret,
        "/v1/chat/completions",
        json!({"messages": []}),
    )
    .await;
    assert_error(res, StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest).await;
    let res = call(&app, &key.secret, "/v1/apis/nothing-here/x", json!({})).await;
    assert_error(res, StatusCode::NOT_FOUND, ErrorCode::NotFound).await;

    // K3: a key limited to another API may not call this one.
    let scoped = create_key(
        &app,
        &user,
        json!({"name": "s", "environment": "test", "allowed_apis": ["other-api"]}),
    )
    .await;
    let res = call(&app, &scoped.secret, "/v1/chat/completions", body.clone()).await;
    assert_error(res, StatusCode::FORBIDDEN, ErrorCode::ApiNotAllowed).await;

    // A live key on an API without live upstreams: 503, nothing charged.
    let live = create_key(&app, &user, json!({"name": "l", "environment": "live"})).await;
    let res = call(&app, &live.secret, "/v1/chat/completions", body.clone()).await;
    assert_error(res, StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable).await;

    // K5: revoked keys fail at once on this instance.
    assert_eq!(
        call(&app, &key.secret, "/v1/chat/completions", body.clone())
            .await
            .status(),
        StatusCode::OK
    );
    let res = app
        .post(
            &ns(&user, &format!("/keys/{}/revoke", key.key.id)),
            Some(&user.token),
            json!({}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = call(&app, &key.secret, "/v1/chat/completions", body.clone()).await;
    assert_error(res, StatusCode::UNAUTHORIZED, ErrorCode::KeyRevoked).await;

    // An expired key (expiry moved into the past behind the API's back, as
    // time passing would) fails once the change is noticed.
    let old = create_key(&app, &user, json!({"name": "o", "environment": "test"})).await;
    assert_eq!(
        call(&app, &old.secret, "/v1/chat/completions", body.clone())
            .await
            .status(),
        StatusCode::OK
    );
    let past = tally_store::now_ms() - 1000;
    let mut conn = app.store.conn().await.unwrap();
    tally_store::sqlx::query("UPDATE api_keys SET expires_at = $1, updated_at = $2 WHERE id = $3")
        .bind(past)
        .bind(tally_store::now_ms())
        .bind(&old.key.id)
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    // The change poller drops the cached key; then the gateway reads it again.
    eventually(30, "the expired key is refused", || async {
        call(&app, &old.secret, "/v1/chat/completions", body.clone())
            .await
            .status()
            == StatusCode::UNAUTHORIZED
    })
    .await;
    let res = call(&app, &old.secret, "/v1/chat/completions", body.clone()).await;
    assert_error(res, StatusCode::UNAUTHORIZED, ErrorCode::KeyExpired).await;

    // K4: after a rotation with no grace the old secret is expired, the new one works.
    let rot = create_key(&app, &user, json!({"name": "r", "environment": "test"})).await;
    let rotated: CreatedKey = json(
        app.post(
            &ns(&user, &format!("/keys/{}/rotate", rot.key.id)),
            Some(&user.token),
            json!({"grace_seconds": 0}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let res = call(&app, &rot.secret, "/v1/chat/completions", body.clone()).await;
    assert_error(res, StatusCode::UNAUTHORIZED, ErrorCode::KeyExpired).await;
    assert_eq!(
        call(&app, &rotated.secret, "/v1/chat/completions", body)
            .await
            .status(),
        StatusCode::OK
    );
}

async fn a_revocation_reaches_another_instance_by_its_next_change_poll(backend: Backend) {
    let app = spawn_app(backend).await;
    // A second server on the same database.
    let (other, other_gateway) = start_with_gateway(test_settings(&app.db)).await;
    let user = app.signup("dev").await;
    let key = create_key(&app, &user, json!({"name": "k", "environment": "test"})).await;
    let via_other = |secret: String| {
        let client = app.client.clone();
        let url = format!("{other}/v1/chat/completions");
        async move {
            client
                .post(url)
                .bearer_auth(secret)
                .json(&chat_body("tally-sandbox"))
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(
        via_other(key.secret.clone()).await.status(),
        StatusCode::OK,
        "cached on the other instance"
    );
    let res = app
        .post(
            &ns(&user, &format!("/keys/{}/revoke", key.key.id)),
            Some(&user.token),
            json!({}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    // Whether a notification or the poll (every 500 ms here) brings it, the
    // revocation is in force once the other instance has polled for changes
    // after it (two polls: one may have been under way at the revocation).
    let polls = other_gateway.change_polls();
    eventually(30, "two change polls on the other instance", || async {
        other_gateway.change_polls() >= polls + 2
    })
    .await;
    let res = via_other(key.secret.clone()).await;
    assert_error(res, StatusCode::UNAUTHORIZED, ErrorCode::KeyRevoked).await;
}

async fn rate_limits_answer_429_with_retry_after_and_ratelimit_headers(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = app.signup("dev").await;
    let key = create_key(
        &app,
        &user,
        json!({"name": "k", "environment": "test", "limits": {"requests_per_minute": 2}}),
    )
    .await;
    let mut remaining = Vec::new();
    for _ in 0..2 {
        let res = call(
            &app,
            &key.secret,
            "/v1/chat/completions",
            chat_body("tally-sandbox"),
        )
        .await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["ratelimit-limit"], "2");
        remaining.push(
            res.headers()["ratelimit-remaining"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(remaining, ["1", "0"]);
    let res = call(
        &app,
        &key.secret,
        "/v1/chat/completions",
        chat_body("tally-sandbox"),
    )
    .await;
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry), "retry after {retry}");
    assert_eq!(res.headers()["ratelimit-remaining"], "0");
    assert_error(res, StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited).await;
    // The refused call is recorded, uncharged.
    let page = usage(&app, &user, "").await;
    assert_eq!(page.items[0].status, 429);
    assert_eq!(page.items[0].cost_micros, 0);
}

async fn quotas_stop_a_key_and_say_when_the_period_resets(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = app.signup("dev").await;
    let key = create_key(
        &app,
        &user,
        json!({"name": "k", "environment": "test", "limits": {"requests_per_day": 2}}),
    )
    .await;
    for _ in 0..2 {
        assert_eq!(
            call(
                &app,
                &key.secret,
                "/v1/chat/completions",
                chat_body("tally-sandbox")
            )
            .await
            .status(),
            StatusCode::OK
        );
    }
    let res = call(
        &app,
        &key.secret,
        "/v1/chat/completions",
        chat_body("tally-sandbox"),
    )
    .await;
    let retry: i64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=86_400).contains(&retry));
    assert_error(res, StatusCode::TOO_MANY_REQUESTS, ErrorCode::QuotaExceeded).await;

    let stats: KeyStats = json(
        app.get(
            &ns(&user, &format!("/keys/{}/stats", key.key.id)),
            Some(&user.token),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!((stats.calls, stats.errors, stats.day_requests), (3, 1, 2));
    assert!(stats.spend_micros > 0 && stats.last_used_at.is_some());
    assert!(stats.day_resets_at.ends_with("T00:00:00.000Z"));

    // A credit quota smaller than one call's hold refuses before spending.
    let tight = create_key(
        &app,
        &user,
        json!({"name": "c", "environment": "test", "limits": {"credits_per_day_micros": 10}}),
    )
    .await;
    let res = call(
        &app,
        &tight.secret,
        "/v1/chat/completions",
        chat_body("tally-sandbox"),
    )
    .await;
    assert_error(res, StatusCode::TOO_MANY_REQUESTS, ErrorCode::QuotaExceeded).await;
}

async fn exactly_the_calls_a_balance_covers_succeed_when_they_race(backend: Backend) {
    let app = spawn_app(backend).await;
    let (upstream, _) = mock_upstream().await;
    let operator = app.signup_operator("op").await;
    let buyer = app.signup("buyer").await;
    // Priced per request only, so each call holds and costs exactly 1000.
    add_api(
        &app,
        &operator,
        json!({
            "slug": "flat", "name": "Flat", "models": ["flat-1"],
            "upstreams": [{"url": format!("{upstream}/ok")}],
            "pricing": {"per_request_micros": 1000}
        }),
    )
    .await;
    const N: i64 = 7;
    grant(&app, &operator, &buyer, "live", N * 1000).await;
    let key = create_key(&app, &buyer, json!({"name": "k", "environment": "live"})).await;
    let calls = (0..30).map(|_| {
        let client = app.client.clone();
        let url = app.url("/v1/chat/completions");
        let secret = key.secret.clone();
        tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(secret)
                .json(&chat_body("flat-1"))
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
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::PAYMENT_REQUIRED)
        .count() as i64;
    assert_eq!((ok, refused), (N, 30 - N), "{statuses:?}");
    assert_eq!(
        assert_ledger_consistent(&app, &buyer, Environment::Live).await,
        0
    );
    let page = usage(&app, &buyer, "?environment=live&limit=100").await;
    assert_eq!(
        page.items.iter().filter(|e| e.status == 200).count() as i64,
        N
    );
    assert_eq!(
        page.items
            .iter()
            .filter(|e| e.error.as_deref() == Some("insufficient_credits"))
            .count() as i64,
        30 - N
    );
    // A 402 explains itself.
    let res = call(
        &app,
        &key.secret,
        "/v1/chat/completions",
        chat_body("flat-1"),
    )
    .await;
    let err = assert_error(
        res,
        StatusCode::PAYMENT_REQUIRED,
        ErrorCode::InsufficientCredits,
    )
    .await;
    assert!(
        err.error.message.contains("live balance"),
        "{}",
        err.error.message
    );
}

async fn live_calls_reach_the_upstream_with_its_credential_and_pay_by_tokens(backend: Backend) {
    let app = spawn_app(backend).await;
    let (upstream, seen) = mock_upstream().await;
    let operator = app.signup_operator("op").await;
    add_api(
        &app,
        &operator,
        json!({
            "slug": "gpt", "name": "GPT", "models": ["gpt-x"],
            "upstreams": [{"url": format!("{upstream}/ok"), "api_key": "upstream-secret"}],
            "pricing": {"per_1k_input_tokens_micros": 1000, "per_1k_output_tokens_micros": 2000,
                        "default_max_output_tokens": 4000}
        }),
    )
    .await;
    grant(&app, &operator, &operator, "live", 1_000_000).await;
    let key = create_key(&app, &operator, json!({"name": "k", "environment": "live"})).await;
    let res = call(
        &app,
        &key.secret,
        "/v1/chat/completions",
        json!({"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()["x-tally-cost-micros"],
        "5000",
        "1000 in + 2000 out tokens"
    );
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Hello from upstream"
    );
    let auth = seen.lock().unwrap().authorization.clone();
    assert_eq!(
        auth,
        [Some("Bearer upstream-secret".to_owned())],
        "the caller's key never goes upstream"
    );
    assert_eq!(
        assert_ledger_consistent(&app, &operator, Environment::Live).await,
        995_000
    );
    let ev = &usage(&app, &operator, "").await.items[0];
    assert_eq!(
        (ev.tokens_in, ev.tokens_out, ev.cost_micros),
        (1000, 2000, 5000)
    );
    assert!(ev.upstream_latency_us > 0 && ev.latency_us >= ev.upstream_latency_us);
}

async fn streams_pass_through_and_are_billed_from_their_usage_event(backend: Backend) {
    let app = spawn_app(backend).await;
    let (upstream, seen) = mock_upstream().await;
    let operator = app.signup_operator("op").await;
    add_api(
        &app,
        &operator,
        json!({
            "slug": "gpt", "name": "GPT", "models": ["gpt-x"],
            "upstreams": [{"url": format!("{upstream}/ok")}],
            "pricing": {"per_1k_input_tokens_micros": 1000, "per_1k_output_tokens_micros": 1000}
        }),
    )
    .await;
    grant(&app, &operator, &operator, "live", 1_000_000).await;
    let key = create_key(&app, &operator, json!({"name": "k", "environment": "live"})).await;
    let res = call(
        &app,
        &key.secret,
        "/v1/chat/completions",
        json!({"model": "gpt-x", "stream": true, "max_tokens": 10, "messages": []}),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = res.text().await.unwrap();
    assert!(
        text.contains("upstream") && text.trim_end().ends_with("data: [DONE]"),
        "{text}"
    );
    assert_eq!(
        seen.lock().unwrap().bodies[0]["stream_options"]["include_usage"],
        true
    );
    let ev = &usage(&app, &operator, "").await.items[0];
    assert_eq!(
        (ev.request_type.as_str(), ev.tokens_in, ev.tokens_out),
        ("stream", 40, 3)
    );
    assert_eq!(ev.cost_micros, 40 + 3);
    assert_ledger_consistent(&app, &operator, Environment::Live).await;

    // The sandbox streams too, with the same text as its sync answer.
    let secret = test_key(&app, &operator).await;
    let mut stream_body = chat_body("tally-sandbox");
    stream_body["stream"] = json!(true);
    let text = call(&app, &secret, "/v1/chat/completions", stream_body)
        .await
        .text()
        .await
        .unwrap();
    let streamed: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    let sync: Value = call(
        &app,
        &secret,
        "/v1/chat/completions",
        chat_body("tally-sandbox"),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(
        streamed,
        sync["choices"][0]["message"]["content"].as_str().unwrap()
    );
}

async fn upstream_failures_fail_over_time_out_and_cost_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let (upstream, _) = mock_upstream().await;
    let operator = app.signup_operator("op").await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://127.0.0.1:{}", l.local_addr().unwrap().port())
    };
    let pricing = json!({"per_request_micros": 1000});
    add_api(&app, &operator, json!({"slug": "pool", "name": "Pool", "models": ["pool-1"], "pricing": pricing,
        "upstreams": [{"url": dead}, {"url": format!("{upstream}/fail")}, {"url": format!("{upstream}/ok")}]})).await;
    add_api(
        &app,
        &operator,
        json!({"slug": "down", "name": "Down", "models": ["down-1"], "pricing": pricing,
        "upstreams": [{"url": dead}]}),
    )
    .await;
    add_api(
        &app,
        &operator,
        json!({"slug": "slow", "name": "Slow", "models": ["slow-1"], "pricing": pricing,
        "timeout_ms": 300, "upstreams": [{"url": format!("{upstream}/slow")}]}),
    )
    .await;
    grant(&app, &operator, &operator, "live", 1_000_000).await;
    let key = create_key(&app, &operator, json!({"name": "k", "environment": "live"})).await;

    for _ in 0..3 {
        let res = call(
            &app,
            &key.secret,
            "/v1/chat/completions",
            chat_body("pool-1"),
        )
        .await;
        assert_eq!(res.status(), StatusCode::OK, "a failed target is skipped");
    }
    let res = call(
        &app,
        &key.secret,
        "/v1/chat/completions",
        chat_body("down-1"),
    )
    .await;
    assert_error(res, StatusCode::BAD_GATEWAY, ErrorCode::UpstreamError).await;
    let started = Instant::now();
    let res = call(
        &app,
        &key.secret,
        "/v1/chat/completions",
        chat_body("slow-1"),
    )
    .await;
    // The upstream would take ten minutes: the gateway's timeout answered.
    assert_error(res, StatusCode::GATEWAY_TIMEOUT, ErrorCode::UpstreamTimeout).await;
    assert!(started.elapsed() < Duration::from_secs(300));
    assert_eq!(
        assert_ledger_consistent(&app, &operator, Environment::Live).await,
        1_000_000 - 3 * 1000
    );
    let page = usage(&app, &operator, "").await;
    let failed: Vec<_> = page.items.iter().filter(|e| e.status >= 500).collect();
    assert_eq!(failed.len(), 2);
    assert!(failed.iter().all(|e| e.cost_micros == 0));
}

async fn generic_apis_are_reached_at_their_slug(backend: Backend) {
    let app = spawn_app(backend).await;
    let (upstream, _) = mock_upstream().await;
    let operator = app.signup_operator("op").await;
    add_api(&app, &operator, json!({"slug": "weather", "name": "Weather", "protocol": "http",
        "upstreams": [{"url": format!("{upstream}/echo")}], "pricing": {"per_request_micros": 500}})).await;
    grant(&app, &operator, &operator, "live", 10_000).await;
    let live = create_key(&app, &operator, json!({"name": "k", "environment": "live"})).await;
    let res = app
        .client
        .get(app.url("/v1/apis/weather/forecast/today?city=Oslo"))
        .bearer_auth(&live.secret)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["path"], "/echo/forecast/today");
    assert_eq!(body["query"], "city=Oslo");
    assert_eq!(body["method"], "GET");
    assert_eq!(
        assert_ledger_consistent(&app, &operator, Environment::Live).await,
        9_500
    );

    // Test keys get the sandbox's echo when the API has no test upstream.
    let secret = test_key(&app, &operator).await;
    let res = call(&app, &secret, "/v1/apis/weather/forecast", json!({"q": 1})).await;
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        (body["sandbox"].clone(), body["body"]["q"].clone()),
        (json!(true), json!(1))
    );
}

async fn operators_manage_the_catalog_and_others_only_read_it(backend: Backend) {
    let app = spawn_app(backend).await;
    let operator = app.signup_operator("op").await;
    let user = app.signup("user").await;
    let api = json!({"slug": "paid", "name": "Paid", "models": ["paid-1"],
        "upstreams": [{"url": "http://127.0.0.1:9/x", "api_key": "sk-secret"}]});

    for res in [
        app.get("/api/v1/admin/catalog", Some(&user.token)).await,
        app.post("/api/v1/admin/catalog", Some(&user.token), api.clone())
            .await,
        app.patch(
            "/api/v1/admin/catalog/sandbox",
            &user.token,
            json!({"enabled": false}),
        )
        .await,
        app.delete("/api/v1/admin/catalog/sandbox", &user.token)
            .await,
        app.post(
            &format!("/api/v1/admin/namespaces/{}/grants", user.namespace_id),
            Some(&user.token),
            json!({"environment": "live", "amount_micros": 5}),
        )
        .await,
    ] {
        assert_error(res, StatusCode::FORBIDDEN, ErrorCode::Forbidden).await;
    }
    let me: Value = app
        .get("/api/v1/me", Some(&operator.token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        me["is_operator"], true,
        "made by `tally admin create-operator`"
    );

    for bad in [
        json!({"slug": "Bad Slug", "name": "x", "models": ["m"]}),
        json!({"slug": "ok", "name": "", "models": ["m"]}),
        json!({"slug": "ok", "name": "x", "models": []}),
        json!({"slug": "ok", "name": "x", "models": ["m"], "upstreams": [{"url": "ftp://x"}]}),
        json!({"slug": "ok", "name": "x", "models": ["m"], "pricing": {"per_request_micros": -1}}),
        json!({"slug": "ok", "name": "x", "models": ["m"], "timeout_ms": 1}),
    ] {
        let res = app
            .post("/api/v1/admin/catalog", Some(&operator.token), bad)
            .await;
        assert_error(res, StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest).await;
    }
    add_api(&app, &operator, api.clone()).await;
    let res = app
        .post("/api/v1/admin/catalog", Some(&operator.token), api)
        .await;
    assert_error(res, StatusCode::CONFLICT, ErrorCode::Conflict).await;
    let res = app
        .post(
            "/api/v1/admin/catalog",
            Some(&operator.token),
            json!({"slug": "copy", "name": "Copy", "models": ["paid-1"]}),
        )
        .await;
    assert_error(res, StatusCode::CONFLICT, ErrorCode::Conflict).await;

    let admin: CatalogAdminList = json(
        app.get("/api/v1/admin/catalog", Some(&operator.token))
            .await,
        StatusCode::OK,
    )
    .await;
    let paid = admin
        .items
        .iter()
        .find(|a| a.config.slug == "paid")
        .unwrap();
    assert_eq!(
        paid.config.upstreams[0].api_key.as_deref(),
        Some("********")
    );
    let public = app
        .get("/api/v1/catalog", Some(&user.token))
        .await
        .text()
        .await
        .unwrap();
    assert!(!public.contains("127.0.0.1") && !public.contains("sk-secret"));
    let public: CatalogList = serde_json::from_str(&public).unwrap();
    assert!(public.items.iter().any(|a| a.slug == "paid" && a.live));

    // Disabling keeps the stored credential (sent back masked) and stops calls.
    let res = app
        .patch(
            "/api/v1/admin/catalog/sandbox",
            &operator.token,
            json!({"enabled": false}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = app
        .patch(
            "/api/v1/admin/catalog/paid",
            &operator.token,
            json!({"upstreams": [{"url": "http://127.0.0.1:9/x", "api_key": "********"}]}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let mut conn = app.store.conn().await.unwrap();
    let row = tally_store::catalog::get(&mut conn, "paid")
        .await
        .unwrap()
        .unwrap();
    assert!(row.config.contains("sk-secret"));
    drop(conn);
    let secret = test_key(&app, &user).await;
    let res = call(
        &app,
        &secret,
        "/v1/chat/completions",
        chat_body("tally-sandbox"),
    )
    .await;
    assert_error(res, StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable).await;
    let res = app
        .delete("/api/v1/admin/catalog/paid", &operator.token)
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = app
        .delete("/api/v1/admin/catalog/paid", &operator.token)
        .await;
    assert_error(res, StatusCode::NOT_FOUND, ErrorCode::NotFound).await;
}

async fn the_faucet_tops_up_test_credits_once_per_cooldown(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = app.signup("owner").await;
    let viewer = app.signup("viewer").await;
    app.add_member(&owner, &viewer, "viewer").await;
    let before = balance(&app, &owner, Environment::Test).await;
    let got: FaucetResult = json(
        app.post(
            &ns(&owner, "/credits/faucet"),
            Some(&owner.token),
            json!({}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(got.amount_micros, 10_000_000);
    assert_eq!(got.balance.balance_micros, before + 10_000_000);
    let res = app
        .post(
            &ns(&owner, "/credits/faucet"),
            Some(&owner.token),
            json!({}),
        )
        .await;
    assert!(res.headers().contains_key("retry-after"));
    assert_error(res, StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited).await;
    let res = app
        .post(
            &ns(&owner, "/credits/faucet"),
            Some(&viewer.token),
            json!({}),
        )
        .await;
    assert_error(res, StatusCode::FORBIDDEN, ErrorCode::Forbidden).await;
    assert_eq!(
        assert_ledger_consistent(&app, &owner, Environment::Test).await,
        before + 10_000_000
    );
    assert_eq!(
        balance(&app, &owner, Environment::Live).await,
        0,
        "test credits never become live"
    );
}

async fn the_playground_calls_with_a_chosen_key_and_reports_the_cost(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = app.signup("dev").await;
    let key = create_key(&app, &user, json!({"name": "k", "environment": "test"})).await;
    let res: PlaygroundResponse = json(
        app.post(&ns(&user, "/playground"), Some(&user.token), json!({
            "key_id": key.key.id, "path": "/v1/chat/completions",
            "body": {"model": "tally-sandbox", "stream": true, "messages": [{"role": "user", "content": "Hi"}]}
        })).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(res.status, 200);
    assert!(res.cost_micros > 0 && res.tokens_out > 0);
    assert!(res.body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .contains("Hi"));
    let page = usage(&app, &user, &format!("?key_id={}", key.key.id)).await;
    assert_eq!(page.items[0].id, res.call_id);
    assert_eq!(
        page.items[0].client_id.as_deref(),
        Some("dashboard-playground")
    );
    // Errors come back as the gateway's answer.
    let res: PlaygroundResponse = json(
        app.post(
            &ns(&user, "/playground"),
            Some(&user.token),
            json!({
            "key_id": key.key.id, "path": "/v1/chat/completions", "body": {"model": "nope"}}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        (res.status, res.body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let res = app
        .post(
            &ns(&user, "/playground"),
            Some(&user.token),
            json!({"key_id": key.key.id, "path": "/admin"}),
        )
        .await;
    assert_error(res, StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest).await;
}

async fn usage_credits_and_stats_of_another_namespace_are_never_visible(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.signup("alice").await;
    let mallory = app.signup("mallory").await;
    let key = create_key(&app, &alice, json!({"name": "k", "environment": "test"})).await;
    assert_eq!(
        call(
            &app,
            &key.secret,
            "/v1/chat/completions",
            chat_body("tally-sandbox")
        )
        .await
        .status(),
        StatusCode::OK
    );
    for path in [
        ns(&alice, "/usage"),
        ns(&alice, "/credits"),
        ns(&alice, "/credits/ledger"),
        ns(&alice, &format!("/keys/{}/stats", key.key.id)),
    ] {
        assert_error(
            app.get(&path, Some(&mallory.token)).await,
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
        )
        .await;
    }
    assert_error(
        app.post(
            &ns(&alice, "/credits/faucet"),
            Some(&mallory.token),
            json!({}),
        )
        .await,
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
    )
    .await;
    // Mallory's own routes with Alice's key id.
    let res = app
        .get(
            &ns(&mallory, &format!("/keys/{}/stats", key.key.id)),
            Some(&mallory.token),
        )
        .await;
    assert_error(res, StatusCode::NOT_FOUND, ErrorCode::NotFound).await;
    let res = app
        .post(
            &ns(&mallory, "/playground"),
            Some(&mallory.token),
            json!({"key_id": key.key.id, "path": "/v1/chat/completions"}),
        )
        .await;
    assert_error(res, StatusCode::NOT_FOUND, ErrorCode::NotFound).await;
    assert!(usage(&app, &mallory, "").await.items.is_empty());
}

/// `GET /v1/models/{model}` answers a model the key may call and 404s one it
/// may not (or that does not exist); `GET /api/v1/admin/catalog/{slug}` gives
/// operators one API's configuration and nobody else.
async fn one_model_and_one_catalog_api_are_read_by_their_ids(backend: Backend) {
    let app = spawn_app(backend).await;
    let operator = app.signup_operator("op").await;
    let dev = app.signup("dev").await;
    add_api(
        &app,
        &operator,
        json!({"slug": "alpha", "name": "Alpha", "models": ["alpha-1"],
            "upstreams": [{"url": "http://127.0.0.1:9"}], "pricing": {"per_request_micros": 7}}),
    )
    .await;
    let any = test_key(&app, &dev).await;
    let scoped = create_key(
        &app,
        &dev,
        json!({"name": "s", "environment": "test", "allowed_apis": ["sandbox"]}),
    )
    .await
    .secret;
    let get = |secret: String, model: &'static str| {
        app.client
            .get(app.url(&format!("/v1/models/{model}")))
            .bearer_auth(secret)
            .send()
    };
    let m: Value = json(get(any.clone(), "alpha-1").await.unwrap(), StatusCode::OK).await;
    assert_eq!(
        (m["id"].as_str(), m["owned_by"].as_str()),
        (Some("alpha-1"), Some("alpha"))
    );
    assert_eq!(m["object"], "model");
    for (secret, model) in [(any.clone(), "nope-1"), (scoped.clone(), "alpha-1")] {
        let res = get(secret, model).await.unwrap();
        assert_error(res, StatusCode::NOT_FOUND, ErrorCode::NotFound).await;
    }
    let res = get("tk_test_wrong".into(), "alpha-1").await.unwrap();
    assert_error(res, StatusCode::UNAUTHORIZED, ErrorCode::InvalidApiKey).await;

    let api: CatalogApiAdmin = json(
        app.get("/api/v1/admin/catalog/alpha", Some(&operator.token))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(api.config.slug, "alpha");
    assert_eq!(api.config.models, ["alpha-1"]);
    assert_eq!(api.config.pricing.per_request_micros, 7);
    assert_eq!(api.source, "api");
    let res = app
        .get("/api/v1/admin/catalog/nope", Some(&operator.token))
        .await;
    assert_error(res, StatusCode::NOT_FOUND, ErrorCode::NotFound).await;
    let res = app
        .get("/api/v1/admin/catalog/alpha", Some(&dev.token))
        .await;
    assert_error(res, StatusCode::FORBIDDEN, ErrorCode::Forbidden).await;
}
