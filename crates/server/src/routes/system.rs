//! Health, readiness, status (uptime, D7) and metrics (O2).

use actix_web::{get, web, HttpResponse};
use tally_common::{Currency, ErrorCode, HealthStatus, ServerStatus};

use secrecy::ExposeSecret;

use crate::auth::tokens::sha256_hex;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Liveness: the process is up and serving HTTP.
#[utoipa::path(tag = "system", responses((status = 200, body = HealthStatus)))]
#[get("/healthz")]
pub async fn healthz() -> web::Json<HealthStatus> {
    web::Json(HealthStatus {
        status: "ok".into(),
    })
}

/// Readiness: the database answers. 503 `unavailable` when it does not.
#[utoipa::path(
    tag = "system",
    responses(
        (status = 200, body = HealthStatus),
        (status = 503, body = tally_common::ErrorBody),
    )
)]
#[get("/readyz")]
pub async fn readyz(state: web::Data<AppState>) -> ApiResult<web::Json<HealthStatus>> {
    match state.store.ping().await {
        Ok(()) => Ok(web::Json(HealthStatus {
            status: "ready".into(),
        })),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            Err(ApiError::new(
                ErrorCode::Unavailable,
                "the database is not reachable",
            ))
        }
    }
}

/// Server version, start time and uptime (the dashboard's uptime badge).
#[utoipa::path(tag = "system", responses((status = 200, body = ServerStatus)))]
#[get("/status")]
pub async fn status(state: web::Data<AppState>) -> web::Json<ServerStatus> {
    web::Json(ServerStatus {
        version: env!("CARGO_PKG_VERSION").into(),
        started_at: state
            .started_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        uptime_seconds: state.uptime_seconds(),
        database: state.store.backend().as_str().into(),
        topup_currencies: Currency::ALL
            .into_iter()
            .filter(|c| crate::services::billing::accepts(&state.settings.billing, *c))
            .collect(),
    })
}

/// Prometheus metrics in the text exposition format. Not part of the REST API.
/// With `metrics_token` set, only `Authorization: Bearer <token>` reads them
/// (401 `unauthorized` otherwise).
pub async fn metrics(
    req: actix_web::HttpRequest,
    state: web::Data<AppState>,
) -> ApiResult<HttpResponse> {
    if let Some(token) = &state.settings.metrics_token {
        let given = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        // Compared as hashes: equal-length values, no early exit on the secret.
        let (a, b) = (sha256_hex(given), sha256_hex(token.expose_secret()));
        if a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            != 0
        {
            return Err(ApiError::unauthorized(
                "the metrics need `Authorization: Bearer <metrics_token>`",
            ));
        }
    }
    metrics::gauge!("tally_uptime_seconds").set(state.uptime_seconds() as f64);
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(crate::telemetry::metrics_handle().render()))
}
