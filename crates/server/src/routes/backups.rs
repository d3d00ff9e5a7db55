//! Backups (O1) for operators: take one now, list them with the schedule,
//! download one, delete one. Restore goes into an empty database: `tally
//! backup restore FILE` on the command line, or an upload to a new server
//! with its setup token instead of creating the first operator (a server
//! with an operator holds data, and restore never merges).

use actix_web::http::header::{ContentDisposition, DispositionParam, DispositionType};
use actix_web::{delete, get, post, web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use tally_common::{
    BackupInfo, BackupList, BackupSchedule, CreateBackup, ErrorBody, ErrorCode, RestoredBackup,
    Severity,
};
use tally_store::backup::{BackupError, RestoreOptions};
use tally_store::events::NewEvent;
use tokio::io::AsyncWriteExt;

use crate::auth::tokens::sha256_hex;
use crate::auth::{ClientIp, CurrentOperator};
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

/// A backup archive in a request body (the schema of the upload).
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct BackupArchive(pub Vec<u8>);

/// The header that carries the setup token of a restore.
pub const SETUP_TOKEN_HEADER: &str = "X-Setup-Token";

/// Restores a backup into this new server instead of creating its first
/// operator: the body is the archive, as downloaded, and `X-Setup-Token`
/// the one-time setup token. The server must hold no accounts yet; the
/// archive is checked whole and written in one transaction, so a damaged
/// or other-version archive changes nothing and the token still works.
/// Afterwards everyone signs in with the accounts of the backup; this server
/// keeps its own JWT secret, so sessions of the backup carry on.
#[utoipa::path(
    operation_id = "restore_backup",
    tag = "backups",
    params(("X-Setup-Token" = String, Header, description = "The server's one-time setup token")),
    request_body(content = BackupArchive, content_type = "application/octet-stream", description = "A backup archive (a tar file) as downloaded; any content type is accepted"),
    responses(
        (status = 200, body = RestoredBackup),
        (status = 400, description = "`invalid_backup`: the archive is damaged, not a backup, or of another schema version; nothing was written", body = ErrorBody),
        (status = 401, description = "`invalid_setup_token`: unknown, expired or used token", body = ErrorBody),
        (status = 409, description = "`conflict`: the server already holds accounts; restore goes into an empty database", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: larger than `backup.max_restore_mb`", body = ErrorBody),
        (status = 429, description = "`rate_limited`; see Retry-After", body = ErrorBody),
    )
)]
#[post("/auth/setup/restore")]
pub async fn restore(
    req: HttpRequest,
    state: web::Data<AppState>,
    ClientIp(ip): ClientIp,
    mut body: web::Payload,
) -> ApiResult<web::Json<RestoredBackup>> {
    state.throttle.request(ip).await?;
    let invalid_token = || {
        ApiError::new(
            ErrorCode::InvalidSetupToken,
            "the setup token is unknown, expired or used, or this server already has an operator",
        )
    };
    let token = req
        .headers()
        .get(SETUP_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(invalid_token)?;
    let token_hash = sha256_hex(token);
    {
        // Checked before the upload is read; the restore's transaction
        // checks both again.
        let mut conn = state.store.conn().await?;
        if !tally_store::setup_tokens::is_valid(&mut conn, &token_hash).await? {
            return Err(invalid_token());
        }
        if tally_store::accounts::any(&mut conn).await? {
            return Err(not_empty());
        }
    }
    let dir = backups::dir(&state.settings);
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(ApiError::internal)?;
    let upload = Upload(dir.join(format!(".restore-{}.upload", uuid::Uuid::new_v4().simple())));
    let limit = state.settings.backup.max_restore_mb.saturating_mul(1 << 20);
    let mut file = tokio::io::BufWriter::new(
        tokio::fs::File::create(&upload.0)
            .await
            .map_err(ApiError::internal)?,
    );
    let mut size = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(
                ErrorCode::InvalidRequest,
                format!("the upload did not arrive whole: {e}"),
            )
        })?;
        size += chunk.len() as u64;
        if size > limit {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "the archive is larger than {} MB (backup.max_restore_mb)",
                    state.settings.backup.max_restore_mb
                ),
            ));
        }
        file.write_all(&chunk).await.map_err(ApiError::internal)?;
    }
    file.flush().await.map_err(ApiError::internal)?;
    drop(file);

    let restored = {
        let _no_backup_meanwhile = state.backups.hold().await;
        tally_store::backup::restore_with(
            &state.store,
            &upload.0,
            RestoreOptions {
                setup_token_hash: Some(token_hash),
                keep_settings: vec!["jwt_secret".to_owned()],
            },
        )
        .await
    };
    let r = restored.map_err(|e| match e {
        BackupError::Damaged(_) | BackupError::Version(_) => {
            ApiError::new(ErrorCode::InvalidBackup, e.to_string())
        }
        BackupError::NotEmpty(_) => not_empty(),
        BackupError::SetupToken => invalid_token(),
        BackupError::Store(e) => e.into(),
        e => ApiError::internal(e),
    })?;
    drop(upload);
    crate::auth::bootstrap::remove_setup_token_file(&state.settings.data_dir);
    state.gateway.reload_catalog().await?;
    let rows = r.rows.values().sum::<i64>();
    let mut conn = state.store.conn().await?;
    tally_store::events::insert(
        &mut conn,
        NewEvent {
            namespace_id: None,
            environment: None,
            kind: "backup.restored",
            severity: Severity::Info,
            message: &format!(
                "A backup of {} ({} backup of schema {}, {} tables, {rows} rows) was restored with the setup token",
                rfc3339(r.manifest.created_at),
                r.manifest.source_backend,
                r.manifest.schema_version,
                r.rows.len(),
            ),
            actor: Some("setup token"),
        },
    )
    .await?;
    tracing::info!(rows, "backup restored through the setup token");
    Ok(web::Json(RestoredBackup {
        created_at: rfc3339(r.manifest.created_at),
        tables: r.rows.len() as i64,
        rows,
        schema_version: r.manifest.schema_version,
        source_backend: r.manifest.source_backend,
        secrets_included: r.manifest.secrets_included,
    }))
}

fn not_empty() -> ApiError {
    ApiError::new(
        ErrorCode::Conflict,
        "this server already holds accounts; a backup restores into an empty database only",
    )
}

/// An uploaded archive, deleted when the restore is done with it (or the
/// upload fails half-way).
struct Upload(std::path::PathBuf);

impl Drop for Upload {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(file = %self.0.display(), error = %e, "cannot remove an uploaded backup");
            }
        }
    }
}
