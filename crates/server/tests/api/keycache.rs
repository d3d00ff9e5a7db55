//! The key cache under unauthenticated load (G1, K5): random secrets never
//! push a valid key out, unknown secrets are answered from memory, one
//! address sending unknown secrets is throttled, lookups are bounded, and the
//! limiter map stays bounded without losing rate or quota state.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use rand::distributions::{Alphanumeric, DistString};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tally_common::{CreatedKey, ErrorCode};

use crate::helpers::{
    assert_error, backend_tests, eventually, json, past_change_lookback, spawn_app_with, Backend,
    TestApp, User,
};

backend_tests!(
    a_flood_of_random_keys_never_evicts_a_cached_valid_key,
    concurrent_misses_of_one_secret_read_the_database_once,
    malformed_and_repeated_unknown_secrets_cost_no_lookup,
    an_address_sending_unknown_keys_gets_429_while_cached_keys_keep_working,
    behind_a_trusted_balancer_the_unknown_key_throttle_counts_each_client,
    misses_never_run_more_lookups_at_once_than_allowed,
    the_limiter_map_stays_bounded_and_keeps_rate_and_quota_state,
);

/// A secret of the right shape that no key has.
fn random_secret() -> String {
    format!(
        "tk_test_{}",
        Alphanumeric.sample_string(&mut rand::thread_rng(), 40)
    )
}

async fn create_key(app: &TestApp, user: &User, body: Value) -> CreatedKey {
    json(
        app.post(
            &format!("/api/v1/namespaces/{}/keys", user.namespace_id),
            Some(&user.token),
            body,
        )
        .await,
        StatusCode::CREATED,
    )
    .await
}

async fn chat(app: &TestApp, secret: &str) -> reqwest::Response {
    app.client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(secret)
        .json(&json!({"model": "tally-sandbox", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}))
        .send()
        .await
        .unwrap()
}

/// Sends a random secret to one of the gateway's routes (by `i`).
async fn random_key_call(app: &TestApp, i: usize) -> reqwest::Response {
    let secret = random_secret();
    let req = match i % 4 {
        0 => app.client.post(app.url("/v1/chat/completions")),
        1 => app.client.post(app.url("/v1/embeddings")),
        2 => app.client.get(app.url("/v1/models")),
        _ => app.client.get(app.url("/v1/apis/sandbox/echo")),
    };
    req.bearer_auth(secret)
        .json(&json!({"model": "tally-sandbox", "input": "x"}))
        .send()
        .await
        .unwrap()
}

async fn a_flood_of_random_keys_never_evicts_a_cached_valid_key(backend: Backend) {
    // Caches far smaller than the flood, and no throttle, so every random
    // secret reaches the database and the unknown cache overflows many times.
    let (app, gw) = spawn_app_with(backend, |s| {
        s.gateway.key_cache_capacity = 20;
        s.gateway.unknown_key_cache_capacity = 20;
        s.gateway.unknown_keys_per_ip_per_sec = 0;
    })
    .await;
    let user = app.signup("dev").await;
    let key = create_key(&app, &user, json!({"name": "k", "environment": "test"})).await;
    // The change poller drops a key read within its look-back after a
    // change; a key read after it stays cached, through every later poll.
    past_change_lookback(tally_store::now_ms()).await;
    assert_eq!(chat(&app, &key.secret).await.status(), StatusCode::OK);
    let polls = gw.change_polls();
    eventually(30, "two more change polls", || async {
        gw.change_polls() >= polls + 2
    })
    .await;
    assert_eq!(chat(&app, &key.secret).await.status(), StatusCode::OK);
    let before = gw.keys.stats();
    assert_eq!(
        before.found_lookups, 1,
        "one read, and no poll dropped the key again"
    );

    const FLOOD: usize = 400;
    for batch in 0..FLOOD / 20 {
        let calls = (0..20).map(|i| random_key_call(&app, batch * 20 + i));
        for res in join_all(calls).await {
            assert_error(res, StatusCode::UNAUTHORIZED, ErrorCode::InvalidApiKey).await;
        }
        // The valid key keeps working in the middle of the flood.
        assert_eq!(chat(&app, &key.secret).await.status(), StatusCode::OK);
    }
    for _ in 0..10 {
        assert_eq!(chat(&app, &key.secret).await.status(), StatusCode::OK);
    }
    let after = gw.keys.stats();
    assert_eq!(
        after.unknown_lookups - before.unknown_lookups,
        FLOOD as u64,
        "each random secret was looked up once"
    );
    assert_eq!(
        after.found_lookups, 1,
        "the valid key was never read again: it stayed cached through the flood"
    );
}

async fn concurrent_misses_of_one_secret_read_the_database_once(backend: Backend) {
    let (app, gw) = spawn_app_with(backend, |_| {}).await;
    let user = app.signup("dev").await;
    let key = create_key(&app, &user, json!({"name": "k", "environment": "test"})).await;
    past_change_lookback(tally_store::now_ms()).await;

    let calls = (0..16).map(|_| chat(&app, &key.secret));
    for res in join_all(calls).await {
        assert_eq!(res.status(), StatusCode::OK);
    }
    assert_eq!(gw.keys.stats().found_lookups, 1, "16 calls, one lookup");

    let unknown = random_secret();
    let calls = (0..16).map(|_| chat(&app, &unknown));
    for res in join_all(calls).await {
        assert_error(res, StatusCode::UNAUTHORIZED, ErrorCode::InvalidApiKey).await;
    }
    let stats = gw.keys.stats();
    assert_eq!(stats.unknown_lookups, 1, "16 calls, one lookup");
    assert_eq!(
        stats.known_unknown, 15,
        "the others were answered from memory"
    );
}

async fn malformed_and_repeated_unknown_secrets_cost_no_lookup(backend: Backend) {
    let (app, gw) = spawn_app_with(backend, |s| {
        s.gateway.unknown_keys_per_ip_per_sec = 0;
    })
    .await;
    let random = "a".repeat(40);
    let malformed = [
        "tk_test_nope".to_owned(),
        format!("tk_prod_{random}"),
        format!("tk_test_{random}a"),
        format!("tk_test_{}-", &random[1..]),
        format!("sk-{random}"),
        "x".repeat(10_000),
    ];
    for secret in &malformed {
        let res = chat(&app, secret).await;
        assert_error(res, StatusCode::UNAUTHORIZED, ErrorCode::InvalidApiKey).await;
    }
    let stats = gw.keys.stats();
    assert_eq!(stats.malformed, malformed.len() as u64);
    assert_eq!(stats.unknown_lookups + stats.found_lookups, 0, "no lookup");

    let unknown = random_secret();
    for _ in 0..5 {
        let res = chat(&app, &unknown).await;
        assert_error(res, StatusCode::UNAUTHORIZED, ErrorCode::InvalidApiKey).await;
    }
    let stats = gw.keys.stats();
    assert_eq!((stats.unknown_lookups, stats.known_unknown), (1, 4));
}

async fn an_address_sending_unknown_keys_gets_429_while_cached_keys_keep_working(backend: Backend) {
    const PER_SEC: u32 = 1;
    let (app, gw) = spawn_app_with(backend, |s| {
        s.gateway.unknown_keys_per_ip_per_sec = PER_SEC;
    })
    .await;
    let user = app.signup("dev").await;
    let cached = create_key(&app, &user, json!({"name": "c", "environment": "test"})).await;
    let uncached = create_key(&app, &user, json!({"name": "u", "environment": "test"})).await;
    past_change_lookback(tally_store::now_ms()).await;
    assert_eq!(chat(&app, &cached.secret).await.status(), StatusCode::OK);

    // The first PER_SEC unknown secrets are looked up and answered 401; the
    // allowance refills at PER_SEC a second, so the next ones are refused
    // with 429 and no lookup (for the second that follows).
    let started = Instant::now();
    let (mut unauthorized, mut throttled) = (0u64, None);
    for i in 0..50 {
        let res = chat(&app, &random_secret()).await;
        if res.status() == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(res.headers()["retry-after"], "1");
            assert_eq!(res.headers()["content-type"], "application/json");
            let body =
                assert_error(res, StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited).await;
            assert!(
                body.error.message.contains("unknown API keys"),
                "{}",
                body.error.message
            );
            throttled = Some(i);
            break;
        }
        assert_error(res, StatusCode::UNAUTHORIZED, ErrorCode::InvalidApiKey).await;
        unauthorized += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    assert!(throttled.is_some(), "the address was throttled");
    assert!(unauthorized >= u64::from(PER_SEC), "the burst was allowed");
    assert!(
        unauthorized as f64 <= f64::from(PER_SEC) * (1.0 + elapsed) + 1.0,
        "{unauthorized} unknown keys in {elapsed:.2} s"
    );

    // While throttled: a cached key works; anything else from the address
    // (an unknown, a malformed or a not yet cached secret) gets 429.
    assert_eq!(chat(&app, &cached.secret).await.status(), StatusCode::OK);
    for secret in [
        random_secret(),
        "tk_test_short".to_owned(),
        uncached.secret.clone(),
    ] {
        let res = chat(&app, &secret).await;
        assert_error(res, StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited).await;
    }
    let stats = gw.keys.stats();
    assert_eq!(stats.unknown_lookups, unauthorized, "429s cost no lookup");
    assert!(stats.throttled >= 4);

    // The allowance refills: a second later the address is looked up again,
    // and a valid key's lookup does not use up the allowance.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(chat(&app, &uncached.secret).await.status(), StatusCode::OK);
    let res = chat(&app, &random_secret()).await;
    assert_error(res, StatusCode::UNAUTHORIZED, ErrorCode::InvalidApiKey).await;
}

async fn misses_never_run_more_lookups_at_once_than_allowed(backend: Backend) {
    let (app, gw) = spawn_app_with(backend, |s| {
        s.gateway.key_lookup_concurrency = 2;
        s.gateway.unknown_keys_per_ip_per_sec = 0;
    })
    .await;
    let calls = (0..60).map(|i| random_key_call(&app, i));
    for res in join_all(calls).await {
        assert_error(res, StatusCode::UNAUTHORIZED, ErrorCode::InvalidApiKey).await;
    }
    let stats = gw.keys.stats();
    assert_eq!(stats.unknown_lookups, 60);
    assert!(
        (1..=2).contains(&stats.peak_concurrent_lookups),
        "{stats:?}"
    );
}

async fn the_limiter_map_stays_bounded_and_keeps_rate_and_quota_state(backend: Backend) {
    const CAPACITY: usize = 2;
    let (app, gw) = spawn_app_with(backend, |s| {
        s.gateway.limiter_capacity = CAPACITY;
    })
    .await;
    let user = app.signup("dev").await;
    let quota = create_key(
        &app,
        &user,
        json!({"name": "q", "environment": "test", "limits": {"requests_per_day": 3}}),
    )
    .await;
    let rate = create_key(
        &app,
        &user,
        json!({"name": "r", "environment": "test", "limits": {"requests_per_minute": 1}}),
    )
    .await;
    for _ in 0..2 {
        assert_eq!(chat(&app, &quota.secret).await.status(), StatusCode::OK);
    }
    assert_eq!(chat(&app, &rate.secret).await.status(), StatusCode::OK);

    // Six more keys call, a sweep's interval apart: the map never holds much
    // more than its capacity, though eight keys called.
    let mut others = Vec::new();
    for i in 0..6 {
        let k = create_key(
            &app,
            &user,
            json!({"name": format!("o{i}"), "environment": "test"}),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(1050)).await;
        assert_eq!(chat(&app, &k.secret).await.status(), StatusCode::OK);
        assert!(
            gw.limiters.len() <= CAPACITY + 1,
            "{} limiters after {} keys",
            gw.limiters.len(),
            i + 3
        );
        others.push(k);
    }

    // The rate-limited key's bucket had not refilled, so its limiter was
    // kept: its next call is still refused.
    let res = chat(&app, &rate.secret).await;
    assert_error(res, StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited).await;
    // The quota key's limiter was dropped; its counters are read again from
    // the recorded usage, so it has exactly one call left today.
    assert_eq!(chat(&app, &quota.secret).await.status(), StatusCode::OK);
    let res = chat(&app, &quota.secret).await;
    assert_error(res, StatusCode::TOO_MANY_REQUESTS, ErrorCode::QuotaExceeded).await;
    assert!(gw.limiters.len() <= CAPACITY + 1);
}

/// Behind a load balancer listed in `auth.trusted_proxies`, the throttle of
/// unknown keys counts the address the balancer forwarded: one client's flood
/// does not refuse another client's first call of a valid key.
async fn behind_a_trusted_balancer_the_unknown_key_throttle_counts_each_client(backend: Backend) {
    let (app, _) = spawn_app_with(backend, |s| {
        s.gateway.unknown_keys_per_ip_per_sec = 1;
        s.auth.trusted_proxies = vec!["127.0.0.1/32".to_owned()];
    })
    .await;
    let user = app.signup("dev").await;
    let key = create_key(&app, &user, json!({"name": "k", "environment": "test"})).await;
    past_change_lookback(tally_store::now_ms()).await;
    let from = |client: &'static str, secret: String| {
        app.client
            .post(app.url("/v1/chat/completions"))
            .header("x-forwarded-for", client)
            .bearer_auth(secret)
            .json(&json!({"model": "tally-sandbox", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}))
            .send()
    };
    let mut throttled = false;
    for _ in 0..10 {
        if from("198.51.100.1", random_secret())
            .await
            .unwrap()
            .status()
            == StatusCode::TOO_MANY_REQUESTS
        {
            throttled = true;
            break;
        }
    }
    assert!(throttled, "the flooding client is throttled");
    // Another client behind the same balancer: its key, not yet cached, works.
    let res = from("198.51.100.2", key.secret.clone()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // The flooding client stays throttled for keys not cached.
    let res = from("198.51.100.1", random_secret()).await.unwrap();
    assert_error(res, StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited).await;
}
