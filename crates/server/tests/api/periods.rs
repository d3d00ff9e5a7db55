//! Limits over time (K2) through real gateway calls: monthly request and
//! credit quotas, a daily and a monthly quota reset at their period's
//! boundary (the clock moved, the server's counters and the recorded usage
//! both crossing it), and a tokens-per-minute limit.

use reqwest::StatusCode;
use serde_json::{json, Value};
use tally_common::{CreatedKey, ErrorCode, KeyStats};
use tally_server::gateway::limits::next_month_start;

use crate::helpers::{
    assert_error, backend_tests, in_own_process, json, spawn_app_with, start, test_settings,
    Backend, TestApp, User,
};

backend_tests!(
    quotas_hold_to_the_end_of_their_period_and_reset_at_its_boundary,
    a_tokens_per_minute_limit_refuses_once_the_minute_s_tokens_are_spent,
);

const MINUTE_MS: i64 = 60_000;

async fn create_key(app: &TestApp, user: &User, limits: Value) -> CreatedKey {
    json(
        app.post(
            &format!("/api/v1/namespaces/{}/keys", user.namespace_id),
            Some(&user.token),
            json!({"name": "k", "environment": "test", "limits": limits}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await
}

async fn call(address: &str, app: &TestApp, secret: &str) -> reqwest::Response {
    app.client
        .post(format!("{address}/v1/chat/completions"))
        .bearer_auth(secret)
        .json(&json!({"model": "tally-sandbox", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}))
        .send()
        .await
        .unwrap()
}

async fn stats(app: &TestApp, user: &User, key: &CreatedKey) -> KeyStats {
    json(
        app.get(
            &format!(
                "/api/v1/namespaces/{}/keys/{}/stats",
                user.namespace_id, key.key.id
            ),
            Some(&user.token),
        )
        .await,
        StatusCode::OK,
    )
    .await
}

/// A refusal by a quota: 429 `quota_exceeded` naming the quota, with a
/// `Retry-After` of at most `max_secs`, returned.
async fn refused_by_quota(res: reqwest::Response, what: &str, max_secs: i64) -> i64 {
    let retry: i64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=max_secs).contains(&retry), "retry after {retry} s");
    let body = assert_error(res, StatusCode::TOO_MANY_REQUESTS, ErrorCode::QuotaExceeded).await;
    assert!(body.error.message.contains(what), "{}", body.error.message);
    retry
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

async fn quotas_hold_to_the_end_of_their_period_and_reset_at_its_boundary(backend: Backend) {
    // It moves the clock to either side of a month's end.
    in_own_process!(
        backend,
        "quotas_hold_to_the_end_of_their_period_and_reset_at_its_boundary"
    );
    let (app, _) = spawn_app_with(backend, |s| s.auth.access_token_ttl_secs = 86_400).await;
    // Ten minutes before a month (and a day) ends, UTC.
    let boundary = next_month_start(tally_store::now_ms());
    tally_store::clock::travel_to(boundary - 10 * MINUTE_MS);
    let user = app.signup("dev").await;
    let monthly = create_key(&app, &user, json!({"requests_per_month": 2})).await;
    let daily = create_key(&app, &user, json!({"requests_per_day": 1})).await;
    let credits = create_key(&app, &user, json!({"credits_per_month_micros": 10})).await;

    for _ in 0..2 {
        assert_eq!(
            call(&app.address, &app, &monthly.secret).await.status(),
            StatusCode::OK
        );
    }
    assert_eq!(
        call(&app.address, &app, &daily.secret).await.status(),
        StatusCode::OK
    );
    // Refused until the boundary, ten minutes away: Retry-After says so.
    let retry = refused_by_quota(
        call(&app.address, &app, &monthly.secret).await,
        "monthly request",
        600,
    )
    .await;
    assert!(retry > 500, "{retry}");
    refused_by_quota(
        call(&app.address, &app, &daily.secret).await,
        "daily request",
        600,
    )
    .await;
    // A credit quota smaller than one call's hold refuses before spending.
    refused_by_quota(
        call(&app.address, &app, &credits.secret).await,
        "monthly credit",
        600,
    )
    .await;
    let before = stats(&app, &user, &monthly).await;
    assert_eq!((before.month_requests, before.calls), (2, 3));
    assert_eq!(before.month_resets_at, rfc3339(boundary));
    assert_eq!(before.day_resets_at, rfc3339(boundary));

    // Half a minute before the boundary the quotas still hold (time runs
    // on between the travel and the calls).
    tally_store::clock::travel_to(boundary - 30_000);
    let res = call(&app.address, &app, &monthly.secret).await;
    refused_by_quota(res, "monthly request", 30).await;
    let res = call(&app.address, &app, &daily.secret).await;
    refused_by_quota(res, "daily request", 30).await;

    // Past it both periods are new: the month's two calls and the day's one
    // are there again, and no more.
    tally_store::clock::travel_to(boundary + 1_000);
    for _ in 0..2 {
        assert_eq!(
            call(&app.address, &app, &monthly.secret).await.status(),
            StatusCode::OK
        );
    }
    assert_eq!(
        call(&app.address, &app, &daily.secret).await.status(),
        StatusCode::OK
    );
    let res = call(&app.address, &app, &monthly.secret).await;
    refused_by_quota(res, "monthly request", 31 * 86_400).await;
    let res = call(&app.address, &app, &daily.secret).await;
    refused_by_quota(res, "daily request", 86_400).await;
    let after = stats(&app, &user, &monthly).await;
    assert_eq!(after.month_requests, 2);
    assert_eq!(after.calls, 7, "every call, refused ones too, is recorded");
    assert_eq!(
        after.month_resets_at,
        rfc3339(next_month_start(boundary + 1_000))
    );

    // A second instance, whose counters come from the recorded usage, counts
    // only this month's calls: the month key has none left, the day key none.
    let (other, _store) = start(test_settings(&app.db)).await;
    let res = call(&other, &app, &monthly.secret).await;
    refused_by_quota(res, "monthly request", 31 * 86_400).await;
    let res = call(&other, &app, &daily.secret).await;
    refused_by_quota(res, "daily request", 86_400).await;
}

async fn a_tokens_per_minute_limit_refuses_once_the_minute_s_tokens_are_spent(backend: Backend) {
    const TPM: i64 = 100;
    let (app, _) = spawn_app_with(backend, |_| {}).await;
    let user = app.signup("dev").await;
    let key = create_key(&app, &user, json!({"tokens_per_minute": TPM})).await;
    // Calls are admitted while the tokens of those before them fit in the
    // minute; the first call after they went past it is refused.
    let mut spent = 0;
    let mut admitted = 0;
    // The bucket refills at TPM a minute while the calls run: on a slow
    // machine that allows a little more than TPM in all.
    let started = std::time::Instant::now();
    let refusal = loop {
        assert!(
            admitted < 50,
            "{admitted} calls and {spent} tokens admitted"
        );
        let res = call(&app.address, &app, &key.secret).await;
        if res.status() != StatusCode::OK {
            break res;
        }
        let refilled = started.elapsed().as_secs_f64() * TPM as f64 / 60.0;
        assert!(
            spent as f64 <= TPM as f64 + refilled,
            "admitted with {spent} tokens already spent"
        );
        let body: Value = res.json().await.unwrap();
        let tokens = body["usage"]["total_tokens"].as_i64().unwrap();
        assert!(tokens > 0, "{body}");
        spent += tokens;
        admitted += 1;
    };
    assert!(spent > TPM, "refused with {spent} tokens spent");
    assert!(admitted >= 2, "{admitted}");
    let retry: u64 = refusal.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "retry after {retry} s");
    assert_error(
        refusal,
        StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::RateLimited,
    )
    .await;
    let s = stats(&app, &user, &key).await;
    assert_eq!(s.tokens_in + s.tokens_out, spent);
}
