use reqwest::StatusCode;
use tally_common::{Currency, ErrorCode, HealthStatus, ServerStatus};

use crate::helpers::{assert_error, backend_tests, json, spawn_app, Backend};

backend_tests!(
    health_readiness_and_status_answer,
    metrics_are_exposed_by_route_template,
    unknown_api_routes_are_json_not_found_with_a_request_id,
    oversized_and_mistyped_bodies_are_rejected_as_json_errors,
    the_api_docs_are_served_from_the_binary,
);

async fn health_readiness_and_status_answer(backend: Backend) {
    let app = spawn_app(backend).await;
    let health: HealthStatus = json(app.get("/healthz", None).await, StatusCode::OK).await;
    assert_eq!(health.status, "ok");
    let ready: HealthStatus = json(app.get("/readyz", None).await, StatusCode::OK).await;
    assert_eq!(ready.status, "ready");
    let status: ServerStatus = json(app.get("/api/v1/status", None).await, StatusCode::OK).await;
    assert_eq!(status.version, env!("CARGO_PKG_VERSION"));
    assert!(status.uptime_seconds >= 0);
    let expected = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    assert_eq!(status.database, expected);
    assert!(chrono::DateTime::parse_from_rfc3339(&status.started_at).is_ok());
    // Before the token generation event (the default) top-ups take stablecoins only.
    assert_eq!(status.topup_currencies, [Currency::Usdc, Currency::Usdt]);
}

async fn metrics_are_exposed_by_route_template(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = app.signup("metric").await;
    app.get(
        &format!("/api/v1/namespaces/{}", user.namespace_id),
        Some(&user.token),
    )
    .await;
    let res = app.get("/metrics", None).await;
    assert_eq!(res.status(), StatusCode::OK);
    let text = res.text().await.unwrap();
    assert!(text.contains("http_requests_total"), "{text}");
    assert!(text.contains("route=\"/api/v1/namespaces/{namespace_id}\""));
    assert!(!text.contains(&user.namespace_id), "no raw ids in labels");
    assert!(text.contains("tally_uptime_seconds"));
}

async fn unknown_api_routes_are_json_not_found_with_a_request_id(backend: Backend) {
    let app = spawn_app(backend).await;
    for path in ["/api/v1/nope", "/api", "/v1/unknown"] {
        let res = app.get(path, None).await;
        assert_error(res, StatusCode::NOT_FOUND, ErrorCode::NotFound).await;
    }
    let res = app
        .client
        .delete(app.url("/api/v1/auth/signup"))
        .send()
        .await
        .unwrap();
    assert_error(res, StatusCode::NOT_FOUND, ErrorCode::NotFound).await;
    // Any other path is a dashboard route and gets the SPA (or the hint page).
    let res = app.get("/keys", None).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.text().await.unwrap().contains("Tally"));
}

async fn oversized_and_mistyped_bodies_are_rejected_as_json_errors(backend: Backend) {
    let app = spawn_app(backend).await;
    let huge = format!(
        "{{\"email\":\"a@b.c\",\"password\":\"{}\"}}",
        "x".repeat(2 * 1024 * 1024)
    );
    let res = app
        .client
        .post(app.url("/api/v1/auth/signup"))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_error(
        res,
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::PayloadTooLarge,
    )
    .await;
    let res = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .header("content-type", "text/plain")
        .body("email=a")
        .send()
        .await
        .unwrap();
    assert_error(res, StatusCode::BAD_REQUEST, ErrorCode::InvalidJson).await;
}

async fn the_api_docs_are_served_from_the_binary(backend: Backend) {
    let app = spawn_app(backend).await;
    let doc: serde_json::Value =
        json(app.get("/api/openapi.json", None).await, StatusCode::OK).await;
    assert_eq!(doc["info"]["title"], "Tally API");
    let res = app.get("/api/docs/", None).await;
    assert_eq!(res.status(), StatusCode::OK);
    let html = res.text().await.unwrap();
    assert!(html.contains("swagger"), "{html}");
    assert!(
        !html.contains("://cdn") && !html.contains("unpkg"),
        "no CDN"
    );
}
