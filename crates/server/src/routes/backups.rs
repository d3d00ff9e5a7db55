//! Backups (O1) for operators: take one now, list them with the schedule,
//! download one, delete one. Restore is `tally backup restore FILE` into an
//! empty database (a running server always holds data: at least its
//! operator).

use actix_web::http::header::{ContentDisposition, DispositionParam, DispositionType};
use actix_web::{delete, get, post, web, HttpRequest, HttpResponse};
use tally_common::{BackupInfo, BackupList, BackupSchedule, CreateBackup, ErrorBody};

use crate::auth::CurrentOperator;
use crate::error::{ApiError, ApiResult};
use crate::services::backups::{self, info};
use crate::state::AppState;
use crate::views::rfc3339;

/// The path of backup `name` in the backup directory; 404 for anything that
/// is not a backup's file name (so nothing outside it is reachable).
fn file(state: &AppState, name: &str) -> ApiResult<std::path::PathBuf> {
    if !tally_store::backup::is_file_name(name) {
        return Err(ApiError::not_found("backup"));
    }
    let path = backups::dir(&state.settings).join(name);
    if !path.is_file() {
        return Err(ApiError::not_found("backup"));
    }
    Ok(path)
}

/// The backups in this server's backup directory, newest first, with the
/// time of the last successful backup and the schedule.
#[utoipa::path(
    operation_id = "list_backups",
    tag = "backups",
    security(("bearer" = [])),
    responses(
        (status = 200, body = BackupList),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 500, description = "The backup directory cannot be read", body = ErrorBody),
    )
)]
#[get("/admin/backups")]
pub async fn list(
    state: web::Data<AppState>,
    _operator: CurrentOperator,
) -> ApiResult<web::Json<BackupList>> {
    let dir = backups::dir(&state.settings);
    let listed = web::block(move || tally_store::backup::list(&dir))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    let (mut items, mut unreadable) = (Vec::new(), Vec::new());
    for b in listed {
        let name = b
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match b.manifest {
            Ok(m) if tally_store::backup::is_file_name(&name) => items.push(info(name, b.size, &m)),
            _ => unreadable.push(name),
        }
    }
    let mut conn = state.store.conn().await?;
    let last = tally_store::backup::last_success(&mut conn).await?;
    drop(conn);
    let s = &state.settings.backup;
    Ok(web::Json(BackupList {
        items,
        unreadable,
        last_backup_at: last.map(rfc3339),
        schedule: BackupSchedule {
            every_hours: i64::try_from(s.every_hours).unwrap_or(i64::MAX),
            keep: i64::try_from(s.keep).unwrap_or(i64::MAX),
            include_secrets: s.include_secrets,
            next_at: backups::next_due(s, last, tally_store::now_ms()).map(rfc3339),
        },
    }))
}

/// Takes a backup of the whole database now, from one snapshot, while the
/// server keeps serving. Answers when the file is complete.
#[utoipa::path(
    operation_id = "create_backup",
    tag = "backups",
    security(("bearer" = [])),
    request_body = CreateBackup,
    responses(
        (status = 201, body = BackupInfo),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 500, description = "The backup could not be written (the event log and server log say why)", body = ErrorBody),
    )
)]
#[post("/admin/backups")]
pub async fn create(
    state: web::Data<AppState>,
    operator: CurrentOperator,
    body: web::Json<CreateBackup>,
) -> ApiResult<HttpResponse> {
    let dir = backups::dir(&state.settings);
    let b = state
        .backups
        .take(
            &state.store,
            &dir,
            body.include_secrets,
            Some(&operator.account_id),
        )
        .await
        .map_err(ApiError::internal)?;
    Ok(HttpResponse::Created().json(b))
}

/// Downloads a backup file (a tar archive; see the README's "Backups").
#[utoipa::path(
    operation_id = "download_backup",
    tag = "backups",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "The backup's file name")),
    responses(
        (status = 200, content((String = "application/x-tar"))),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
#[get("/admin/backups/{name}")]
pub async fn download(
    req: HttpRequest,
    state: web::Data<AppState>,
    _operator: CurrentOperator,
    name: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let path = file(&state, &name)?;
    let named = actix_files::NamedFile::open_async(&path)
        .await
        .map_err(|_| ApiError::not_found("backup"))?
        .set_content_type("application/x-tar".parse().map_err(ApiError::internal)?)
        .set_content_disposition(ContentDisposition {
            disposition: DispositionType::Attachment,
            parameters: vec![DispositionParam::Filename(name.into_inner())],
        });
    Ok(named.into_response(&req))
}

/// Deletes a backup file.
#[utoipa::path(
    operation_id = "delete_backup",
    tag = "backups",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "The backup's file name")),
    responses(
        (status = 204),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
#[delete("/admin/backups/{name}")]
pub async fn remove(
    state: web::Data<AppState>,
    _operator: CurrentOperator,
    name: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let path = file(&state, &name)?;
    web::block(move || std::fs::remove_file(path))
        .await
        .map_err(ApiError::internal)?
        .map_err(|_| ApiError::not_found("backup"))?;
    Ok(HttpResponse::NoContent().finish())
}
