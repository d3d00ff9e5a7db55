//! Backups (O1): the archives an operator takes, lists, downloads and deletes.

use serde::{Deserialize, Serialize};

/// One backup file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BackupInfo {
    /// File name, its id in the API: `tally-backup-20261201-160000-123.tar`.
    pub name: String,
    pub size_bytes: i64,
    /// When its snapshot was read (RFC 3339 UTC).
    pub created_at: String,
    pub tables: i64,
    pub rows: i64,
    /// The database schema it holds; restore needs a Tally of the same one.
    pub schema_version: i64,
    /// `sqlite` or `postgres`: where it was taken (it restores into either).
    pub source_backend: String,
    /// Whether the JWT signing secret and upstream credentials are in it.
    /// Without them a restored server signs everyone out and its APIs need
    /// their credentials again.
    pub secrets_included: bool,
}

/// The schedule of automatic backups (`[backup]` in the configuration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BackupSchedule {
    /// Hours between backups; 0: no schedule.
    pub every_hours: i64,
    /// Backups kept; older ones are deleted after each new one (0: all).
    pub keep: i64,
    pub include_secrets: bool,
    /// When the next scheduled backup is due (RFC 3339 UTC), if scheduled.
    pub next_at: Option<String>,
}

/// The backups on this server, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BackupList {
    pub items: Vec<BackupInfo>,
    /// Files in the backup directory that are not readable backups.
    pub unreadable: Vec<String>,
    /// The last successful backup of this database, wherever it was written
    /// (RFC 3339 UTC).
    pub last_backup_at: Option<String>,
    pub schedule: BackupSchedule,
}

/// A backup to take now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateBackup {
    /// Include the JWT signing secret and upstream credentials (default no).
    #[serde(default)]
    pub include_secrets: bool,
}

/// What a restore wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RestoredBackup {
    /// When the backup's snapshot was read (RFC 3339 UTC).
    pub created_at: String,
    pub tables: i64,
    pub rows: i64,
    pub schema_version: i64,
    /// `sqlite` or `postgres`: where the backup was taken.
    pub source_backend: String,
    /// Without secrets, APIs with upstream credentials need them entered
    /// again.
    pub secrets_included: bool,
}
