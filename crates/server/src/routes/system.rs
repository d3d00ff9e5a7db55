//! Health, readiness, status (uptime, D7) and metrics (O2).

use actix_web::{get, web, HttpResponse};
use tally_common::{Currency, ErrorCode, HealthStatus, ServerStatus};

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
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    metrics::gauge!("tally_uptime_seconds").set(state.uptime_seconds() as f64);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(crate::telemetry::metrics_handle().render())
}
