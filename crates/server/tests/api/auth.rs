use reqwest::StatusCode;
use serde_json::{json, Value};
use tally_common::{AuthResponse, ErrorCode, Me, Role};
use tally_store::sqlx::{self, Row};

use crate::helpers::{assert_error, backend_tests, json, spawn_app, start, test_settings, Backend};

backend_tests!(
    signup_returns_a_session_and_an_owned_personal_namespace,
    signup_rejects_bad_input_and_creates_nothing,
    signup_with_a_taken_email_is_a_conflict_whatever_the_case,
    login_with_a_wrong_password_or_unknown_email_is_invalid_credentials,
    login_returns_a_working_session,
    refresh_rotates_tokens_and_a_reused_token_ends_the_session,
    concurrent_refreshes_with_one_token_let_exactly_one_through,
    logout_revokes_the_refresh_token,
    api_routes_reject_missing_malformed_forged_and_expired_tokens,
    secrets_are_stored_only_as_hashes,
    the_generated_signing_secret_survives_a_restart,
);

async fn signup_returns_a_session_and_an_owned_personal_namespace(backend: Backend) {
    let app = spawn_app(backend).await;
    let res = app
        .post(
            "/api/v1/auth/signup",
            None,
            json!({"email": "  Ada@Example.COM ", "password": "long enough pw"}),
        )
        .await;
    let auth: AuthResponse = json(res, StatusCode::CREATED).await;
    assert_eq!(auth.token_type, "Bearer");
    assert_eq!(auth.account.email, "ada@example.com");
    assert_eq!(auth.account.display_name, "ada");
    assert!(auth.refresh_token.starts_with("trt_"));
    assert!(auth.expires_in > 0);

    let me: Me = json(
        app.get("/api/v1/me", Some(&auth.access_token)).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(me.account.id, auth.account.id);
    assert_eq!(me.namespaces.len(), 1);
    assert_eq!(me.namespaces[0].role, Role::Owner);
    assert_eq!(me.namespaces[0].namespace.name, "Personal");
}

async fn signup_rejects_bad_input_and_creates_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let cases = [
        json!({"email": "not-an-email", "password": "long enough pw"}),
        json!({"email": "a@b@c", "password": "long enough pw"}),
        json!({"email": "", "password": "long enough pw"}),
        json!({"email": "x@example.com", "password": "short"}),
        json!({"email": "x@example.com", "password": "p".repeat(257)}),
        json!({"email": "x@example.com", "password": "long enough pw", "display_name": "n".repeat(101)}),
    ];
    for body in cases {
        let res = app.post("/api/v1/auth/signup", None, body).await;
        assert_error(res, StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest).await;
    }
    let res = app
        .post(
            "/api/v1/auth/signup",
            None,
            json!({"email": 42, "password": []}),
        )
        .await;
    assert_error(res, StatusCode::BAD_REQUEST, ErrorCode::InvalidJson).await;
    let res = app
        .client
        .post(app.url("/api/v1/auth/signup"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_error(res, StatusCode::BAD_REQUEST, ErrorCode::InvalidJson).await;

    let mut conn = app.store.conn().await.unwrap();
    let accounts: i64 = sqlx::query_scalar("SELECT CAST(COUNT(*) AS BIGINT) FROM accounts")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    let namespaces: i64 = sqlx::query_scalar("SELECT CAST(COUNT(*) AS BIGINT) FROM namespaces")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!((accounts, namespaces), (0, 0));
}

async fn signup_with_a_taken_email_is_a_conflict_whatever_the_case(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = app.signup("grace").await;
    let res = app
        .post(
            "/api/v1/auth/signup",
            None,
            json!({"email": user.email.to_uppercase(), "password": "another password"}),
        )
        .await;
    assert_error(res, StatusCode::CONFLICT, ErrorCode::Conflict).await;
    // The failed attempt left no second namespace behind.
    let mut conn = app.store.conn().await.unwrap();
    let namespaces: i64 = sqlx::query_scalar("SELECT CAST(COUNT(*) AS BIGINT) FROM namespaces")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(namespaces, 1);
}

async fn login_with_a_wrong_password_or_unknown_email_is_invalid_credentials(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = app.signup("linus").await;
    for body in [
        json!({"email": user.email, "password": "wrong password"}),
        json!({"email": "nobody@example.com", "password": user.password}),
        json!({"email": "garbage", "password": ""}),
    ] {
        let res = app.post("/api/v1/auth/login", None, body).await;
        let err = assert_error(res, StatusCode::UNAUTHORIZED, ErrorCode::InvalidCredentials).await;
        assert_eq!(err.error.message, "wrong email or password");
    }
}

async fn login_returns_a_working_session(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = app.signup("barbara").await;
    let res = app
        .post(
            "/api/v1/auth/login",
            None,
            json!({"email": user.email.to_uppercase(), "password": user.password}),
        )
        .await;
    let auth: AuthResponse = json(res, StatusCode::OK).await;
    assert_eq!(auth.account.id, user.account_id);
    let res = app.get("/api/v1/me", Some(&auth.access_token)).await;
    assert_eq!(res.status(), StatusCode::OK);
}

async fn refresh_rotates_tokens_and_a_reused_token_ends_the_session(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = app.signup("edsger").await;
    let first = user.refresh_token.clone();

    let res = app
        .post(
            "/api/v1/auth/refresh",
            None,
            json!({"refresh_token": first}),
        )
        .await;
    let second: AuthResponse = json(res, StatusCode::OK).await;
    assert_ne!(second.refresh_token, first);
    assert_eq!(second.account.id, user.account_id);

    // Presenting the used token again looks like theft: the whole session ends.
    let res = app
        .post(
            "/api/v1/auth/refresh",
            None,
            json!({"refresh_token": first}),
        )
        .await;
    assert_error(
        res,
        StatusCode::UNAUTHORIZED,
        ErrorCode::InvalidRefreshToken,
    )
    .await;
    let res = app
        .post(
            "/api/v1/auth/refresh",
            None,
            json!({"refresh_token": second.refresh_token}),
        )
        .await;
    assert_error(
        res,
        StatusCode::UNAUTHORIZED,
        ErrorCode::InvalidRefreshToken,
    )
    .await;

    let res = app
        .post(
            "/api/v1/auth/refresh",
            None,
            json!({"refresh_token": "trt_made_up"}),
        )
        .await;
    assert_error(
        res,
        StatusCode::UNAUTHORIZED,
        ErrorCode::InvalidRefreshToken,
    )
    .await;
}

async fn concurrent_refreshes_with_one_token_let_exactly_one_through(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = app.signup("tony").await;
    let attempts = (0..8).map(|_| {
        app.post(
            "/api/v1/auth/refresh",
            None,
            json!({"refresh_token": user.refresh_token}),
        )
    });
    let results = futures_util::future::join_all(attempts).await;
    let ok = results
        .iter()
        .filter(|r| r.status() == StatusCode::OK)
        .count();
    assert_eq!(ok, 1, "{ok} refreshes succeeded with one valid token");
    for r in &results {
        assert!(
            r.status() == StatusCode::OK || r.status() == StatusCode::UNAUTHORIZED,
            "unexpected status {}",
            r.status()
        );
    }
}

async fn logout_revokes_the_refresh_token(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = app.signup("alan").await;
    let res = app
        .post(
            "/api/v1/auth/logout",
            None,
            json!({"refresh_token": user.refresh_token}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = app
        .post(
            "/api/v1/auth/refresh",
            None,
            json!({"refresh_token": user.refresh_token}),
        )
        .await;
    assert_error(
        res,
        StatusCode::UNAUTHORIZED,
        ErrorCode::InvalidRefreshToken,
    )
    .await;
    // Unknown tokens log out "successfully" too: nothing is revealed.
    let res = app
        .post(
            "/api/v1/auth/logout",
            None,
            json!({"refresh_token": "nope"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
}

async fn api_routes_reject_missing_malformed_forged_and_expired_tokens(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = app.signup("mallory").await;
    let ns_path = format!("/api/v1/namespaces/{}", user.namespace_id);

    for path in ["/api/v1/me", "/api/v1/namespaces", ns_path.as_str()] {
        let res = app.get(path, None).await;
        assert_error(res, StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized).await;
        let res = app.get(path, Some("not-a-jwt")).await;
        assert_error(res, StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized).await;
        let res = app
            .client
            .get(app.url(path))
            .header("authorization", format!("Basic {}", user.token))
            .send()
            .await
            .unwrap();
        assert_error(res, StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized).await;
    }

    let now = chrono::Utc::now().timestamp();
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": user.account_id, "iat": now, "exp": now + 600}),
        &jsonwebtoken::EncodingKey::from_secret(b"not the server's secret"),
    )
    .unwrap();
    let res = app.get("/api/v1/me", Some(&forged)).await;
    assert_error(res, StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized).await;

    // A correctly signed but expired token asks the client to refresh.
    let mut conn = app.store.conn().await.unwrap();
    let secret: String =
        sqlx::query_scalar("SELECT value FROM server_settings WHERE key = 'jwt_secret'")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": user.account_id, "iat": now - 7200, "exp": now - 3600}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    let res = app.get("/api/v1/me", Some(&expired)).await;
    assert_eq!(
        res.headers()
            .get("www-authenticate")
            .unwrap()
            .to_str()
            .unwrap(),
        "Bearer"
    );
    assert_error(res, StatusCode::UNAUTHORIZED, ErrorCode::TokenExpired).await;
}

async fn secrets_are_stored_only_as_hashes(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = app.signup("eve").await;
    let mut conn = app.store.conn().await.unwrap();
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM accounts WHERE id = $1")
        .bind(&user.account_id)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains(&user.password));

    let rows = sqlx::query("SELECT token_hash FROM refresh_tokens")
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let stored: String = rows[0].try_get("token_hash").unwrap();
    assert_ne!(stored, user.refresh_token);
    assert!(!stored.contains(&user.refresh_token[4..]));
    assert_eq!(stored.len(), 64, "hex SHA-256");
}

async fn the_generated_signing_secret_survives_a_restart(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = app.signup("ken").await;
    // A second server on the same database accepts the first one's tokens.
    let (address, _store) = start(test_settings(&app.db)).await;
    let res = app
        .client
        .get(format!("{address}/api/v1/me"))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();
    let me: Value = json(res, StatusCode::OK).await;
    assert_eq!(me["account"]["id"], user.account_id.as_str());
}
