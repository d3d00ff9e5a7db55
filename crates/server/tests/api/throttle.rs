//! Throttling of sign-up, login, refresh and invitations (A2): 429
//! `rate_limited` with `Retry-After`, per client address and per account.
//! The tests pose as several clients through a trusted proxy's
//! `X-Forwarded-For`.

use reqwest::StatusCode;
use serde_json::{json, Value};
use tally_common::ErrorCode;
use tally_server::config::Settings;

use crate::helpers::{assert_error, backend_tests, spawn_with, Backend, TestApp, TestDatabase};

backend_tests!(
    failed_logins_lock_the_account_for_that_address_only,
    failed_logins_from_many_addresses_reach_the_account_ceiling,
    sign_ups_are_throttled_per_address_and_per_email,
    every_account_endpoint_is_throttled_per_address,
    forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy,
    invitation_accepts_are_throttled_per_account,
);

/// A server behind a "proxy" at 127.0.0.1, with every throttle off except
/// what `change` turns on.
async fn app(backend: Backend, change: impl FnOnce(&mut Settings)) -> TestApp {
    let db = TestDatabase::new(backend).await;
    spawn_with(db, |s| {
        s.auth.trusted_proxies = vec!["127.0.0.1".into()];
        change(s);
    })
    .await
}

async fn post_from(app: &TestApp, from: &str, path: &str, body: Value) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .header("X-Forwarded-For", from)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn login(app: &TestApp, from: &str, email: &str, password: &str) -> reqwest::Response {
    post_from(
        app,
        from,
        "/api/v1/auth/login",
        json!({"email": email, "password": password}),
    )
    .await
}

/// A 429 `rate_limited` with a Retry-After of at least a second.
async fn assert_throttled(res: reqwest::Response) -> u64 {
    let retry: u64 = res
        .headers()
        .get("retry-after")
        .expect("Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    assert_eq!(
        res.headers().get("content-type").unwrap(),
        "application/json"
    );
    assert_error(res, StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited).await;
    retry
}

async fn failed_logins_lock_the_account_for_that_address_only(backend: Backend) {
    let app = app(backend, |s| s.auth.login_failures_per_account_ip = 3).await;
    let user = app.signup("victim").await;
    let attacker = "198.51.100.66";

    // A success in between clears this address's failures.
    for _ in 0..2 {
        let res = login(&app, attacker, &user.email, "guess").await;
        assert_error(res, StatusCode::UNAUTHORIZED, ErrorCode::InvalidCredentials).await;
    }
    assert_eq!(
        login(&app, attacker, &user.email, &user.password)
            .await
            .status(),
        StatusCode::OK
    );
    for _ in 0..3 {
        let res = login(&app, attacker, &user.email, "guess").await;
        assert_error(res, StatusCode::UNAUTHORIZED, ErrorCode::InvalidCredentials).await;
    }
    // Locked for this address, even with the right password: 15 min / 3.
    let retry = assert_throttled(login(&app, attacker, &user.email, &user.password).await).await;
    assert!((290..=300).contains(&retry), "{retry}");
    // Unknown emails are counted the same way, so 429 reveals nothing.
    for _ in 0..3 {
        let res = login(&app, attacker, "ghost@example.com", "guess").await;
        assert_error(res, StatusCode::UNAUTHORIZED, ErrorCode::InvalidCredentials).await;
    }
    assert_throttled(login(&app, attacker, "ghost@example.com", "guess").await).await;
    // The owner, from elsewhere, is not locked out.
    let res = login(&app, "203.0.113.7", &user.email, &user.password).await;
    assert_eq!(res.status(), StatusCode::OK);
}

async fn failed_logins_from_many_addresses_reach_the_account_ceiling(backend: Backend) {
    let app = app(backend, |s| {
        s.auth.login_failures_per_account_ip = 100;
        s.auth.login_failures_per_account_per_hour = 4;
    })
    .await;
    let user = app.signup("target").await;
    for i in 0..4 {
        let res = login(&app, &format!("198.51.100.{i}"), &user.email, "guess").await;
        assert_error(res, StatusCode::UNAUTHORIZED, ErrorCode::InvalidCredentials).await;
    }
    let retry = assert_throttled(login(&app, "198.51.100.9", &user.email, "guess").await).await;
    assert!(
        (890..=900).contains(&retry),
        "one more try every hour / 4: {retry}"
    );
    // A correct password does not count as a failure.
    let db = &app;
    let other = db.signup("bystander").await;
    for i in 0..6 {
        let res = login(db, &format!("203.0.113.{i}"), &other.email, &other.password).await;
        assert_eq!(res.status(), StatusCode::OK);
    }
}

async fn sign_ups_are_throttled_per_address_and_per_email(backend: Backend) {
    let app = app(backend, |s| {
        s.auth.signups_per_ip_per_hour = 2;
        s.auth.signups_per_email_per_hour = 3;
    })
    .await;
    let signup = |from: &'static str, email: String| {
        let app = &app;
        async move {
            post_from(
                app,
                from,
                "/api/v1/auth/signup",
                json!({"email": email, "password": "a long password"}),
            )
            .await
        }
    };
    for i in 0..2 {
        let res = signup("198.51.100.1", format!("spam{i}@example.com")).await;
        assert_eq!(res.status(), StatusCode::CREATED);
    }
    let retry = assert_throttled(signup("198.51.100.1", "spam9@example.com".into()).await).await;
    assert!((1790..=1800).contains(&retry), "an hour / 2: {retry}");
    let res = signup("198.51.100.2", "fresh@example.com".into()).await;
    assert_eq!(
        res.status(),
        StatusCode::CREATED,
        "another address signs up"
    );

    // Probing one email (409 says it is taken) from many addresses.
    for from in ["203.0.113.1", "203.0.113.2"] {
        let res = signup(from, "fresh@example.com".into()).await;
        assert_error(res, StatusCode::CONFLICT, ErrorCode::Conflict).await;
    }
    assert_throttled(signup("203.0.113.3", "fresh@example.com".into()).await).await;
}

async fn every_account_endpoint_is_throttled_per_address(backend: Backend) {
    let app = app(backend, |s| s.auth.ip_requests_per_minute = 5).await;
    let from = "198.51.100.5";
    let calls: [(&str, Value); 5] = [
        (
            "/api/v1/auth/login",
            json!({"email": "a@example.com", "password": "x"}),
        ),
        (
            "/api/v1/auth/signup",
            json!({"email": "b@example.com", "password": "a long password"}),
        ),
        ("/api/v1/auth/refresh", json!({"refresh_token": "trt_nope"})),
        (
            "/api/v1/auth/setup",
            json!({"token": "tsu_nope", "email": "c@example.com", "password": "a long password"}),
        ),
        ("/api/v1/invitations/lookup", json!({"token": "tin_nope"})),
    ];
    for (path, body) in &calls {
        let res = post_from(&app, from, path, body.clone()).await;
        assert_ne!(res.status(), StatusCode::TOO_MANY_REQUESTS, "{path}");
    }
    for (path, body) in &calls {
        let retry = assert_throttled(post_from(&app, from, path, body.clone()).await).await;
        assert!((1..=12).contains(&retry), "{path}: {retry}");
    }
    let res = post_from(&app, "198.51.100.6", calls[4].0, calls[4].1.clone()).await;
    assert_error(res, StatusCode::NOT_FOUND, ErrorCode::NotFound).await;
}

async fn forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let app = spawn_with(db, |s| s.auth.ip_requests_per_minute = 2).await;
    // No trusted proxy: a client cannot pose as new addresses.
    for i in 0..2 {
        let res = post_from(
            &app,
            &format!("198.51.100.{i}"),
            "/api/v1/invitations/lookup",
            json!({"token": "tin_nope"}),
        )
        .await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
    }
    let res = post_from(
        &app,
        "198.51.100.99",
        "/api/v1/invitations/lookup",
        json!({"token": "tin_nope"}),
    )
    .await;
    assert_throttled(res).await;
}

async fn invitation_accepts_are_throttled_per_account(backend: Backend) {
    let app = app(backend, |s| {
        s.auth.invitation_accepts_per_account_per_hour = 2
    })
    .await;
    let user = app.signup("guesser").await;
    for i in 0..2 {
        let res = app
            .client
            .post(app.url("/api/v1/invitations/accept"))
            .header("X-Forwarded-For", format!("198.51.100.{i}"))
            .bearer_auth(&user.token)
            .json(&json!({"token": format!("tin_guess{i}")}))
            .send()
            .await
            .unwrap();
        assert_error(res, StatusCode::NOT_FOUND, ErrorCode::NotFound).await;
    }
    let res = app
        .client
        .post(app.url("/api/v1/invitations/accept"))
        .header("X-Forwarded-For", "198.51.100.50")
        .bearer_auth(&user.token)
        .json(&json!({"token": "tin_guess9"}))
        .send()
        .await
        .unwrap();
    assert_throttled(res).await;
}
