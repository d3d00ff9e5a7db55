//! Operators are made only explicitly (A1): `tally admin` on the database, or
//! the one-time setup token of a server that has none. Signing up first, or
//! with an email named in the config file, grants nothing.

use reqwest::StatusCode;
use serde_json::{json, Value};
use tally_common::{AuthResponse, ErrorCode};
use tally_server::auth::bootstrap;
use tally_server::Application;

use crate::helpers::{
    assert_error, backend_tests, json, spawn_app, start, test_settings, Backend, TestApp,
    TestDatabase,
};

backend_tests!(
    the_first_sign_up_is_not_an_operator,
    the_setup_token_makes_the_first_operator_once,
    the_setup_token_can_make_an_existing_account_operator_with_its_password,
    an_operator_made_on_the_command_line_ends_the_setup_token,
    the_operators_setting_no_longer_grants_and_stops_the_server,
    tally_admin_grants_and_revokes_operators,
);

async fn is_operator(app: &TestApp, token: &str) -> bool {
    let me: Value = json(app.get("/api/v1/me", Some(token)).await, StatusCode::OK).await;
    me["is_operator"].as_bool().unwrap()
}

pub(crate) fn setup_token(app: &TestApp) -> Option<String> {
    std::fs::read_to_string(app.db.dir.path().join("setup-token"))
        .ok()
        .map(|t| t.trim().to_owned())
}

async fn setup(app: &TestApp, token: &str, email: &str, password: &str) -> reqwest::Response {
    app.post(
        "/api/v1/auth/setup",
        None,
        json!({"token": token, "email": email, "password": password}),
    )
    .await
}

async fn the_first_sign_up_is_not_an_operator(backend: Backend) {
    let app = spawn_app(backend).await;
    let first = app.signup("first").await;
    assert!(!is_operator(&app, &first.token).await);
    let res = app
        .post(
            &format!("/api/v1/admin/namespaces/{}/grants", first.namespace_id),
            Some(&first.token),
            json!({"environment": "live", "amount_micros": 5}),
        )
        .await;
    assert_error(res, StatusCode::FORBIDDEN, ErrorCode::Forbidden).await;
    let res = app.get("/api/v1/admin/catalog", Some(&first.token)).await;
    assert_error(res, StatusCode::FORBIDDEN, ErrorCode::Forbidden).await;
}

async fn the_setup_token_makes_the_first_operator_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let path = app.db.dir.path().join("setup-token");
    let token = setup_token(&app).expect("a server without an operator writes a setup token");
    assert!(
        token.starts_with("tsu_") && token.len() >= 4 + 43,
        "{token}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "only the server's user reads the token"
        );
    }

    for wrong in ["", "tsu_wrong", &format!("{token}x")] {
        let res = setup(&app, wrong, "root@example.com", "a long password").await;
        assert_error(res, StatusCode::UNAUTHORIZED, ErrorCode::InvalidSetupToken).await;
    }
    let res = setup(&app, &token, "root@example.com", "short").await;
    assert_error(res, StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest).await;

    let auth: AuthResponse = json(
        setup(&app, &token, "Root@Example.com", "a long password").await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(auth.account.email, "root@example.com");
    assert!(is_operator(&app, &auth.access_token).await);
    assert!(!path.exists(), "the used token's file is removed");

    // Used up: neither again nor for another account.
    for email in ["root@example.com", "second@example.com"] {
        let res = setup(&app, &token, email, "a long password").await;
        assert_error(res, StatusCode::UNAUTHORIZED, ErrorCode::InvalidSetupToken).await;
    }
    // A restart of a server that has an operator makes no new token.
    let (_address, _store) = start(app.settings.clone()).await;
    assert!(!path.exists());
    // And the operator can log in like anyone.
    let res = app
        .post(
            "/api/v1/auth/login",
            None,
            json!({"email": "root@example.com", "password": "a long password"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
}

async fn the_setup_token_can_make_an_existing_account_operator_with_its_password(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = app.signup("early").await;
    let token = setup_token(&app).unwrap();
    let res = setup(&app, &token, &user.email, "not the password").await;
    assert_error(res, StatusCode::UNAUTHORIZED, ErrorCode::InvalidCredentials).await;
    assert!(!is_operator(&app, &user.token).await);
    // The wrong password did not burn the token.
    let auth: AuthResponse = json(
        setup(&app, &token, &user.email, &user.password).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(auth.account.id, user.account_id);
    assert!(is_operator(&app, &user.token).await);
}

async fn an_operator_made_on_the_command_line_ends_the_setup_token(backend: Backend) {
    let app = spawn_app(backend).await;
    let token = setup_token(&app).unwrap();
    let operator = app.signup_operator("cli").await;
    assert!(is_operator(&app, &operator.token).await);
    assert!(setup_token(&app).is_none(), "the token file is removed");
    let res = setup(&app, &token, "late@example.com", "a long password").await;
    assert_error(res, StatusCode::UNAUTHORIZED, ErrorCode::InvalidSetupToken).await;
}

async fn the_operators_setting_no_longer_grants_and_stops_the_server(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let mut settings = test_settings(&db);
    settings.operators = vec!["boss@example.com".into()];
    let err = match Application::build(settings).await {
        Ok(_) => panic!("a server with `operators` set must not start"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("tally admin grant-operator"), "{err}");

    // Without the setting, signing up with that email grants nothing.
    let (address, store) = start(test_settings(&db)).await;
    let app = TestApp {
        address,
        client: reqwest::Client::new(),
        settings: test_settings(&db),
        db,
        store,
    };
    let res = app
        .post(
            "/api/v1/auth/signup",
            None,
            json!({"email": "boss@example.com", "password": "a long password"}),
        )
        .await;
    let auth: AuthResponse = json(res, StatusCode::CREATED).await;
    assert!(!is_operator(&app, &auth.access_token).await);
}

async fn tally_admin_grants_and_revokes_operators(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = app.signup("helper").await;
    let account = bootstrap::grant_operator(&app.store, &app.settings, &user.email.to_uppercase())
        .await
        .unwrap();
    assert!(account.is_operator);
    assert!(is_operator(&app, &user.token).await);
    // Granting twice is harmless; the list shows the operator once.
    bootstrap::grant_operator(&app.store, &app.settings, &user.email)
        .await
        .unwrap();
    let listed = bootstrap::list_operators(&app.store).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].email, user.email);

    let left = bootstrap::revoke_operator(&app.store, &user.email)
        .await
        .unwrap();
    assert_eq!(left, 0);
    assert!(!is_operator(&app, &user.token).await);
    let err = bootstrap::revoke_operator(&app.store, &user.email)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not an operator"), "{err}");
    let err = bootstrap::grant_operator(&app.store, &app.settings, "ghost@example.com")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no account"), "{err}");
    // A taken email cannot be created again.
    let passwords = tally_server::auth::Passwords::new(&app.settings.auth).unwrap();
    let err = bootstrap::create_operator(
        &app.store,
        &app.settings,
        &passwords,
        &user.email,
        "another password",
        None,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    let err = bootstrap::create_operator(
        &app.store,
        &app.settings,
        &passwords,
        "new@example.com",
        "short",
        None,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("password"), "{err}");
}
