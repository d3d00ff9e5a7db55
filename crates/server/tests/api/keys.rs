use reqwest::StatusCode;
use serde_json::{json, Value};
use tally_common::{
    ApiKey, CreatedKey, Environment, ErrorBody, ErrorCode, EventPage, KeyAudit, KeyList, KeyStatus,
};
use tally_store::sqlx::{self, Row};

use crate::helpers::{
    assert_error, backend_tests, in_own_process, json, spawn_app, spawn_app_with, Backend, TestApp,
    User,
};

/// An access token lifetime that outlasts the clock's travels in these tests.
const DAY_SECS: i64 = 86_400;

backend_tests!(
    a_new_key_shows_its_secret_once_and_only_a_hash_is_stored,
    keys_are_listed_newest_first_and_filtered_by_environment_status_and_label,
    bad_key_input_is_rejected_and_creates_nothing,
    rotation_keeps_the_old_secret_at_the_gateway_until_the_grace_deadline,
    revocation_is_final_and_every_change_is_audited,
    only_developers_admins_and_owners_manage_keys,
    keys_of_another_namespace_are_never_visible,
    a_key_past_its_expiry_is_listed_as_expired,
);

fn keys_path(user: &User) -> String {
    format!("/api/v1/namespaces/{}/keys", user.namespace_id)
}

async fn create_key(app: &TestApp, user: &User, body: Value) -> CreatedKey {
    json(
        app.post(&keys_path(user), Some(&user.token), body).await,
        StatusCode::CREATED,
    )
    .await
}

/// The key a secret authenticates as, as the gateway will look it up.
/// Whether the gateway takes `secret`, asked as production asks it: a real
/// authenticated call (`GET /v1/models`), through the key cache; otherwise the
/// error code it gives.
async fn gateway_takes(app: &TestApp, secret: &str) -> Result<(), ErrorCode> {
    let res = app
        .client
        .get(app.url("/v1/models"))
        .bearer_auth(secret)
        .send()
        .await
        .unwrap();
    if res.status() == StatusCode::OK {
        return Ok(());
    }
    let body: ErrorBody = res.json().await.unwrap();
    Err(body.error.code)
}

async fn a_new_key_shows_its_secret_once_and_only_a_hash_is_stored(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = app.signup("dev").await;
    let created = create_key(
        &app,
        &user,
        json!({"name": "CI runner", "environment": "test", "labels": ["ci", "ci", " batch "],
               "allowed_apis": ["gpt-4o-mini"], "limits": {"requests_per_minute": 60}}),
    )
    .await;
    let key = &created.key;
    assert!(created.secret.starts_with("tk_test_"), "{}", created.secret);
    assert_eq!(created.secret.len(), "tk_test_".len() + 40);
    assert_eq!(key.prefix, "tk_test_");
    assert_eq!(key.last4, created.secret[created.secret.len() - 4..]);
    assert_eq!(key.status, KeyStatus::Active);
    assert_eq!(key.labels, ["ci", "batch"]);
    assert_eq!(key.allowed_apis, ["gpt-4o-mini"]);
    assert_eq!(key.limits.requests_per_minute, Some(60));
    assert_eq!(key.created_by, user.email);

    let live = create_key(&app, &user, json!({"name": "prod", "environment": "live"})).await;
    assert!(live.secret.starts_with("tk_live_"));
    assert!(live.key.allowed_apis.is_empty(), "default: all APIs");

    // Reading the key never returns the secret again.
    let res = app
        .get(
            &format!("{}/{}", keys_path(&user), key.id),
            Some(&user.token),
        )
        .await;
    let text = res.text().await.unwrap();
    assert!(!text.contains(&created.secret[8..]), "{text}");

    // The database holds the hash, not the secret, in any column of any key table.
    let mut conn = app.store.conn().await.unwrap();
    for table in ["api_keys", "api_key_secrets", "api_key_audit", "events"] {
        let rows = sqlx::query(&format!("SELECT * FROM {table}"))
            .fetch_all(&mut *conn)
            .await
            .unwrap();
        for row in rows {
            for i in 0..row.len() {
                if let Ok(Some(v)) = row.try_get::<Option<String>, _>(i) {
                    assert!(!v.contains(&created.secret[8..]), "secret in {table}");
                }
            }
        }
    }
    assert_eq!(gateway_takes(&app, &created.secret).await, Ok(()));
    assert_eq!(
        gateway_takes(&app, "tk_test_wrong").await,
        Err(ErrorCode::InvalidApiKey)
    );
}

async fn keys_are_listed_newest_first_and_filtered_by_environment_status_and_label(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let user = app.signup("dev").await;
    let a = create_key(
        &app,
        &user,
        json!({"name": "a", "environment": "test", "labels": ["x"]}),
    )
    .await;
    let b = create_key(
        &app,
        &user,
        json!({"name": "b", "environment": "live", "labels": ["x", "y"]}),
    )
    .await;
    let c = create_key(&app, &user, json!({"name": "c", "environment": "live"})).await;
    app.post(
        &format!("{}/{}/revoke", keys_path(&user), c.key.id),
        Some(&user.token),
        json!({}),
    )
    .await;

    let names = |list: KeyList| -> Vec<String> { list.items.into_iter().map(|k| k.name).collect() };
    let get = |q: &'static str| {
        let url = format!("{}{q}", keys_path(&user));
        let token = user.token.clone();
        let app = &app;
        async move { json::<KeyList>(app.get(&url, Some(&token)).await, StatusCode::OK).await }
    };
    assert_eq!(names(get("").await), ["c", "b", "a"]);
    assert_eq!(names(get("?environment=live").await), ["c", "b"]);
    assert_eq!(names(get("?environment=test").await), ["a"]);
    assert_eq!(names(get("?status=revoked").await), ["c"]);
    assert_eq!(names(get("?status=active&environment=live").await), ["b"]);
    assert_eq!(names(get("?label=x").await), ["b", "a"]);
    assert_eq!(names(get("?label=y").await), ["b"]);
    assert!(names(get("?status=expired").await).is_empty());
    let res = app
        .get(
            &format!("{}?status=paused", keys_path(&user)),
            Some(&user.token),
        )
        .await;
    assert_error(res, StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest).await;
    let _ = (a, b);
}

async fn bad_key_input_is_rejected_and_creates_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = app.signup("dev").await;
    let past = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let labels: Vec<String> = (0..21).map(|i| format!("l{i}")).collect();
    for body in [
        json!({"name": "", "environment": "test"}),
        json!({"name": "k", "environment": "test", "expires_at": past}),
        json!({"name": "k", "environment": "test", "expires_at": "tomorrow"}),
        json!({"name": "k", "environment": "test", "limits": {"requests_per_second": 0}}),
        json!({"name": "k", "environment": "test", "limits": {"credits_per_day_micros": -5}}),
        json!({"name": "k", "environment": "test", "allowed_apis": ["no spaces"]}),
        json!({"name": "k", "environment": "test", "labels": labels}),
    ] {
        let res = app.post(&keys_path(&user), Some(&user.token), body).await;
        assert_error(res, StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest).await;
    }
    for body in [
        json!({"name": "k", "environment": "staging"}),
        json!({"name": "k"}),
        json!({"name": "k", "environment": "test", "limits": {"requests_per_second": -1}}),
    ] {
        let res = app.post(&keys_path(&user), Some(&user.token), body).await;
        assert_error(res, StatusCode::BAD_REQUEST, ErrorCode::InvalidJson).await;
    }
    let list: KeyList = json(
        app.get(&keys_path(&user), Some(&user.token)).await,
        StatusCode::OK,
    )
    .await;
    assert!(list.items.is_empty());

    // A bad update changes nothing either.
    let key = create_key(&app, &user, json!({"name": "keep", "environment": "test"})).await;
    let res = app
        .patch(
            &format!("{}/{}", keys_path(&user), key.key.id),
            &user.token,
            json!({"name": "new name", "limits": {"requests_per_minute": 0}}),
        )
        .await;
    assert_error(res, StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest).await;
    let res = app
        .post(
            &format!("{}/{}/rotate", keys_path(&user), key.key.id),
            Some(&user.token),
            json!({"grace_seconds": -1}),
        )
        .await;
    assert_error(res, StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest).await;
    let now: ApiKey = json(
        app.get(
            &format!("{}/{}", keys_path(&user), key.key.id),
            Some(&user.token),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(now, key.key);
}

async fn rotation_keeps_the_old_secret_at_the_gateway_until_the_grace_deadline(backend: Backend) {
    // It moves the clock to either side of a grace deadline.
    in_own_process!(
        backend,
        "rotation_keeps_the_old_secret_at_the_gateway_until_the_grace_deadline"
    );
    let (app, _) = spawn_app_with(backend, |s| s.auth.access_token_ttl_secs = DAY_SECS).await;
    let user = app.signup("dev").await;
    let first = create_key(&app, &user, json!({"name": "k", "environment": "live"})).await;
    let rotate = |grace: Value| {
        let url = format!("{}/{}/rotate", keys_path(&user), first.key.id);
        let token = user.token.clone();
        let app = &app;
        async move {
            json::<CreatedKey>(app.post(&url, Some(&token), grace).await, StatusCode::OK).await
        }
    };
    let second = rotate(json!({"grace_seconds": 3600})).await;
    assert_ne!(second.secret, first.secret);
    assert!(second.secret.starts_with("tk_live_"));
    assert_eq!(second.key.id, first.key.id);
    assert_eq!(second.key.last4, second.secret[second.secret.len() - 4..]);
    assert!(second.key.previous_secret_expires_at.is_some());
    assert_eq!(gateway_takes(&app, &first.secret).await, Ok(()));
    assert_eq!(gateway_takes(&app, &second.secret).await, Ok(()));

    // Rotating with no grace ends every earlier secret at once.
    let third = rotate(json!({"grace_seconds": 0})).await;
    assert_eq!(
        gateway_takes(&app, &first.secret).await,
        Err(ErrorCode::KeyExpired)
    );
    assert_eq!(
        gateway_takes(&app, &second.secret).await,
        Err(ErrorCode::KeyExpired)
    );
    assert_eq!(gateway_takes(&app, &third.secret).await, Ok(()));
    assert!(third.key.previous_secret_expires_at.is_none());

    // A grace of an hour: the old secret works (and is cached) until its
    // deadline, half a minute before it still, and is refused once it has passed,
    // while the new one keeps working.
    let rotated_at = tally_store::now_ms();
    let fourth = rotate(json!({"grace_seconds": 3600})).await;
    assert_eq!(gateway_takes(&app, &third.secret).await, Ok(()));
    let deadline = chrono::DateTime::parse_from_rfc3339(
        fourth.key.previous_secret_expires_at.as_deref().unwrap(),
    )
    .unwrap()
    .timestamp_millis();
    assert!(
        (rotated_at + 3_600_000..=tally_store::now_ms() + 3_600_000).contains(&deadline),
        "{deadline}"
    );
    // Half a minute before (time runs on between the travel and the call).
    tally_store::clock::travel_to(deadline - 30_000);
    assert_eq!(gateway_takes(&app, &third.secret).await, Ok(()));
    tally_store::clock::travel_to(deadline + 1);
    assert_eq!(
        gateway_takes(&app, &third.secret).await,
        Err(ErrorCode::KeyExpired)
    );
    assert_eq!(gateway_takes(&app, &fourth.secret).await, Ok(()));
}

async fn revocation_is_final_and_every_change_is_audited(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = app.signup("owner").await;
    let dev = app.signup("dev").await;
    app.add_member(&owner, &dev, "developer").await;
    let key = create_key(&app, &owner, json!({"name": "k", "environment": "test"})).await;
    let base = format!("{}/{}", keys_path(&owner), key.key.id);

    let updated: ApiKey = json(
        app.patch(
            &base,
            &dev.token,
            json!({"name": "renamed", "labels": ["a"]}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(updated.name, "renamed");
    // An empty rotate body uses the defaults (one day of grace).
    let res = app
        .client
        .post(app.url(&format!("{base}/rotate")))
        .bearer_auth(&dev.token)
        .send()
        .await
        .unwrap();
    let rotated: CreatedKey = json(res, StatusCode::OK).await;
    let revoked: ApiKey = json(
        app.post(&format!("{base}/revoke"), Some(&owner.token), json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(revoked.status, KeyStatus::Revoked);
    assert!(revoked.revoked_at.is_some());
    // Revoked keys cannot change or rotate; revoking again is harmless.
    let res = app
        .patch(&base, &owner.token, json!({"name": "again"}))
        .await;
    assert_error(res, StatusCode::CONFLICT, ErrorCode::Conflict).await;
    let res = app
        .post(&format!("{base}/rotate"), Some(&owner.token), json!({}))
        .await;
    assert_error(res, StatusCode::CONFLICT, ErrorCode::Conflict).await;
    let again: ApiKey = json(
        app.post(&format!("{base}/revoke"), Some(&owner.token), json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(again.revoked_at, revoked.revoked_at);
    // The gateway refuses the revoked key's secret as revoked, at once.
    assert_eq!(
        gateway_takes(&app, &rotated.secret).await,
        Err(ErrorCode::KeyRevoked)
    );

    let audit: KeyAudit = json(
        app.get(&format!("{base}/audit"), Some(&owner.token)).await,
        StatusCode::OK,
    )
    .await;
    let trail: Vec<_> = audit
        .items
        .iter()
        .map(|a| (a.action.as_str(), a.actor.as_str()))
        .collect();
    assert_eq!(
        trail,
        [
            ("created", owner.email.as_str()),
            ("updated", dev.email.as_str()),
            ("rotated", dev.email.as_str()),
            ("revoked", owner.email.as_str()),
        ]
    );
    assert_eq!(audit.items[1].details["name"], json!(["k", "renamed"]));
    assert_eq!(audit.items[2].details["grace_seconds"], 86400);

    let events: EventPage = json(
        app.get(
            &format!(
                "/api/v1/namespaces/{}/events?environment=test",
                owner.namespace_id
            ),
            Some(&owner.token),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let kinds: Vec<_> = events.items.iter().map(|e| e.kind.as_str()).collect();
    for kind in ["key.created", "key.updated", "key.rotated", "key.revoked"] {
        assert!(kinds.contains(&kind), "{kinds:?}");
    }
    let revoked_event = events
        .items
        .iter()
        .find(|e| e.kind == "key.revoked")
        .unwrap();
    assert_eq!(revoked_event.environment, Some(Environment::Test));
    let live: EventPage = json(
        app.get(
            &format!(
                "/api/v1/namespaces/{}/events?environment=live",
                owner.namespace_id
            ),
            Some(&owner.token),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert!(live.items.iter().all(|e| !e.kind.starts_with("key.")));
}

async fn only_developers_admins_and_owners_manage_keys(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = app.signup("owner").await;
    let key = create_key(&app, &owner, json!({"name": "k", "environment": "test"})).await;
    let base = format!("{}/{}", keys_path(&owner), key.key.id);
    for role in ["viewer", "billing"] {
        let user = app.signup(role).await;
        app.add_member(&owner, &user, role).await;
        let res = app
            .post(
                &keys_path(&owner),
                Some(&user.token),
                json!({"name": "x", "environment": "test"}),
            )
            .await;
        assert_error(res, StatusCode::FORBIDDEN, ErrorCode::Forbidden).await;
        let res = app.patch(&base, &user.token, json!({"name": "x"})).await;
        assert_error(res, StatusCode::FORBIDDEN, ErrorCode::Forbidden).await;
        let res = app
            .post(&format!("{base}/rotate"), Some(&user.token), json!({}))
            .await;
        assert_error(res, StatusCode::FORBIDDEN, ErrorCode::Forbidden).await;
        let res = app
            .post(&format!("{base}/revoke"), Some(&user.token), json!({}))
            .await;
        assert_error(res, StatusCode::FORBIDDEN, ErrorCode::Forbidden).await;
        // Reading is allowed.
        let list: KeyList = json(
            app.get(&keys_path(&owner), Some(&user.token)).await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(list.items.len(), 1);
        let res = app.get(&format!("{base}/audit"), Some(&user.token)).await;
        assert_eq!(res.status(), StatusCode::OK);
    }
    for role in ["developer", "admin"] {
        let user = app.signup(role).await;
        app.add_member(&owner, &user, role).await;
        let res = app
            .post(
                &keys_path(&owner),
                Some(&user.token),
                json!({"name": role, "environment": "live"}),
            )
            .await;
        assert_eq!(res.status(), StatusCode::CREATED);
    }
}

async fn keys_of_another_namespace_are_never_visible(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let key = create_key(
        &app,
        &alice,
        json!({"name": "alice key", "environment": "live"}),
    )
    .await;

    // Through Bob's own namespace, Alice's key id does not exist.
    let mine = format!("{}/{}", keys_path(&bob), key.key.id);
    let responses = vec![
        app.get(&mine, Some(&bob.token)).await,
        app.patch(&mine, &bob.token, json!({"name": "stolen"}))
            .await,
        app.post(&format!("{mine}/rotate"), Some(&bob.token), json!({}))
            .await,
        app.post(&format!("{mine}/revoke"), Some(&bob.token), json!({}))
            .await,
        app.get(&format!("{mine}/audit"), Some(&bob.token)).await,
    ];
    for res in responses {
        let err = assert_error(res, StatusCode::NOT_FOUND, ErrorCode::NotFound).await;
        assert_eq!(err.error.message, "key not found");
    }
    // Through Alice's namespace, the namespace itself is not found for Bob.
    let theirs = format!("{}/{}", keys_path(&alice), key.key.id);
    let res = app.get(&theirs, Some(&bob.token)).await;
    let err = assert_error(res, StatusCode::NOT_FOUND, ErrorCode::NotFound).await;
    assert_eq!(err.error.message, "namespace not found");
    let list: KeyList = json(
        app.get(&keys_path(&bob), Some(&bob.token)).await,
        StatusCode::OK,
    )
    .await;
    assert!(list.items.is_empty());
    // Alice's key is untouched.
    let still: ApiKey = json(app.get(&theirs, Some(&alice.token)).await, StatusCode::OK).await;
    assert_eq!(still, key.key);
}

async fn a_key_past_its_expiry_is_listed_as_expired(backend: Backend) {
    // It moves the clock past the key's expiry.
    in_own_process!(backend, "a_key_past_its_expiry_is_listed_as_expired");
    let (app, _) = spawn_app_with(backend, |s| s.auth.access_token_ttl_secs = DAY_SECS).await;
    let user = app.signup("dev").await;
    let soon = (tally_store::clock::now() + chrono::Duration::hours(1)).to_rfc3339();
    let key = create_key(
        &app,
        &user,
        json!({"name": "short", "environment": "test", "expires_at": soon}),
    )
    .await;
    assert_eq!(key.key.status, KeyStatus::Active);
    assert_eq!(gateway_takes(&app, &key.secret).await, Ok(()));
    tally_store::clock::travel_to(tally_store::now_ms() + 3_600_000 + 1_000);
    assert_eq!(
        gateway_takes(&app, &key.secret).await,
        Err(ErrorCode::KeyExpired)
    );
    let list: KeyList = json(
        app.get(
            &format!("{}?status=expired", keys_path(&user)),
            Some(&user.token),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.items[0].status, KeyStatus::Expired);
}
