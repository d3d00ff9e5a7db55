//! Taking backups (O1) for the REST API and the schedule: one at a time per
//! instance, recorded as the last success in the database, reported in the
//! event log, and pruned to `backup.keep` after each scheduled one.
//!
//! Policy: the archive format and restore are `tally_store::backup`'s; this
//! module decides where files go, when the schedule runs (while this
//! instance leads the upkeep) and what is kept.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tally_common::{BackupInfo, Severity};
use tally_store::backup::{self, CreateOptions, Manifest};
use tally_store::events::NewEvent;
use tally_store::Store;

use crate::config::{BackupSettings, Settings};
use crate::leadership::Leadership;
use crate::views::rfc3339;

/// The backup directory of these settings.
pub fn dir(settings: &Settings) -> PathBuf {
    settings
        .backup
        .dir
        .clone()
        .unwrap_or_else(|| settings.data_dir.join("backups"))
}

/// Serializes the backups of one instance: a second request waits for the
/// first instead of reading the database twice at once.
#[derive(Debug, Default)]
pub struct Backups {
    running: tokio::sync::Mutex<()>,
}

/// A backup file as the API shows it: its name, size and manifest.
pub fn info(name: String, size: u64, m: &Manifest) -> BackupInfo {
    BackupInfo {
        name,
        size_bytes: i64::try_from(size).unwrap_or(i64::MAX),
        created_at: rfc3339(m.created_at),
        tables: m.tables.len() as i64,
        rows: m.rows(),
        schema_version: m.schema_version,
        source_backend: m.source_backend.clone(),
        secrets_included: m.secrets_included,
    }
}

impl Backups {
    /// Waits for a backup in progress and keeps others from starting until
    /// the guard is dropped (a restore writes the whole database).
    pub async fn hold(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.running.lock().await
    }

    /// Takes a backup into `dir`; records it and logs an event either way.
    pub async fn take(
        &self,
        store: &Store,
        dir: &Path,
        include_secrets: bool,
        actor: Option<&str>,
    ) -> Result<BackupInfo, backup::BackupError> {
        let _one = self.running.lock().await;
        let at = tally_store::now_ms();
        let name = backup::file_name(at);
        let path = dir.join(&name);
        let result = backup::create(store, &path, CreateOptions { include_secrets }).await;
        let (severity, kind, message) = match &result {
            Ok(m) => (
                Severity::Info,
                "backup.created",
                format!(
                    "Backup {name} taken: {} tables, {} rows{}",
                    m.tables.len(),
                    m.rows(),
                    if include_secrets {
                        ", secrets included"
                    } else {
                        ""
                    }
                ),
            ),
            Err(e) => {
                tracing::error!(error = %e, backup = %name, "backup failed");
                (
                    Severity::Error,
                    "backup.failed",
                    "A backup failed; the server log says why".to_owned(),
                )
            }
        };
        if let Ok(m) = &result {
            backup::record_success(store, m.created_at).await?;
        }
        let mut tx = store.begin().await.map_err(backup::BackupError::Store)?;
        tally_store::events::insert(
            &mut tx,
            NewEvent {
                namespace_id: None,
                environment: None,
                kind,
                severity,
                message: &message,
                actor,
            },
        )
        .await?;
        // Operators hear of it through their namespaces' webhooks too.
        let data = match &result {
            Ok(m) => serde_json::json!({
                "name": name,
                "created_at": rfc3339(m.created_at),
                "tables": m.tables.len(),
                "rows": m.rows(),
                "secrets_included": m.secrets_included,
            }),
            Err(_) => serde_json::json!({"name": name}),
        };
        for ns in tally_store::namespaces::owned_by_operators(&mut tx).await? {
            super::webhooks::emit(&mut tx, &ns, None, kind, data.clone()).await?;
        }
        tx.commit().await?;
        let m = result?;
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        Ok(info(name, size, &m))
    }
}

/// Deletes the oldest backups in `dir` beyond the newest `keep` (0: none).
pub fn prune(dir: &Path, keep: usize) -> std::io::Result<usize> {
    if keep == 0 {
        return Ok(0);
    }
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| backup::is_file_name(n))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    // The names sort by time.
    names.sort_unstable_by(|a, b| b.cmp(a));
    let mut deleted = 0;
    for old in names.iter().skip(keep) {
        std::fs::remove_file(dir.join(old))?;
        deleted += 1;
    }
    Ok(deleted)
}

/// How long the schedule waits after a failed backup.
const RETRY_MS: i64 = 10 * 60 * 1000;

/// When the next scheduled backup is due (Unix ms), if there is a schedule:
/// `every_hours` after the last success, or now when there was none.
pub fn next_due(s: &BackupSettings, last: Option<i64>, now: i64) -> Option<i64> {
    (s.every_hours > 0).then(|| {
        let period = i64::try_from(s.every_hours)
            .unwrap_or(i64::MAX)
            .saturating_mul(3_600_000);
        last.map_or(now, |t| t.saturating_add(period))
    })
}

/// Starts the schedule: every `check` it looks whether a backup is due and,
/// while this instance leads the upkeep, takes it and prunes.
pub fn start_schedule(
    store: Store,
    settings: Arc<Settings>,
    backups: Arc<Backups>,
    leadership: Leadership,
    check: Duration,
) {
    if settings.backup.every_hours == 0 {
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(check.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let dir = dir(&settings);
        // After a failure the schedule waits a while: one event per attempt.
        let mut retry_at = 0_i64;
        loop {
            tick.tick().await;
            if !leadership.is_leader() {
                continue;
            }
            metrics::counter!("tally_upkeep_rounds_total", "task" => "backup").increment(1);
            let last = match store.conn().await {
                Ok(mut conn) => backup::last_success(&mut conn).await,
                Err(e) => Err(e),
            };
            let last = match last {
                Ok(last) => last,
                Err(e) => {
                    tracing::warn!(error = %e, "backup schedule: reading the last backup failed");
                    continue;
                }
            };
            let now = tally_store::now_ms();
            if now < retry_at || next_due(&settings.backup, last, now).is_none_or(|due| due > now) {
                continue;
            }
            let result = backups
                .take(
                    &store,
                    &dir,
                    settings.backup.include_secrets,
                    Some("schedule"),
                )
                .await;
            crate::telemetry::task_round("backup", result.is_ok());
            match result {
                Ok(b) => {
                    tracing::info!(backup = %b.name, rows = b.rows, "scheduled backup taken");
                    match prune(&dir, settings.backup.keep) {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(deleted = n, "old backups deleted"),
                        Err(e) => tracing::warn!(error = %e, "deleting old backups failed"),
                    }
                }
                // Logged and in the event log; tried again in ten minutes.
                Err(e) => {
                    tracing::warn!(error = %e, "scheduled backup failed");
                    retry_at = now + RETRY_MS;
                }
            }
        }
    });
}
