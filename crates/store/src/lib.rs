//! Tally storage: one interface over SQLite (the embedded default) and PostgreSQL.
//!
//! Policy:
//! - The backend is chosen once, at startup, from the database URL. Both run through
//!   sqlx's `Any` driver with the same query text wherever the dialects agree
//!   (`$N` placeholders, `RETURNING`, `ON CONFLICT`); the few differences stay in
//!   this crate, never in handlers.
//! - Only portable column types: `TEXT` and 64-bit integers. Times are Unix
//!   milliseconds (UTC), money is integer micro-credits. Aggregates are cast to
//!   `BIGINT` because PostgreSQL's `SUM(bigint)` is `NUMERIC`.
//! - Callers own transactions: store functions take `&mut AnyConnection`, so a
//!   handler composes several of them inside one `Store::begin()` transaction.

pub mod accounts;
pub mod alerts;
pub mod auto_topups;
pub mod backup;
pub mod billing;
pub mod bonuses;
pub mod catalog;
pub mod clock;
pub mod cluster;
pub mod events;
pub mod keys;
pub mod ledger;
pub mod monitoring;
pub mod namespaces;
pub mod pg_recorder;
pub mod recorder;
pub mod recording;
pub mod rollups;
pub mod sellers;
pub mod sessions;
pub mod settings;
pub mod setup_tokens;
pub mod statements;
pub mod subscriptions;
mod threshold;
pub mod usage;
pub mod webhooks;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor};

pub use sqlx::{self, Any, AnyConnection, Transaction};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../../migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("../../migrations/postgres");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn from_url(url: &str) -> Option<Self> {
        if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness rule was violated (e.g. an email already registered).
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("unsupported database URL (expected sqlite: or postgres:)")]
    UnsupportedUrl,
    #[error(transparent)]
    Database(sqlx::Error),
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// From the gateway writer's own SQLite connection ([`recorder`]).
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

impl StoreError {
    /// Whether the database refused the statement itself (a constraint, a
    /// value it cannot store) rather than failing to run it (a lost
    /// connection, a lock held too long): retrying the same rows fails again,
    /// but the rows of a batch without the offending one can commit.
    pub fn refused_rows(&self) -> bool {
        match self {
            StoreError::Conflict(_) => true,
            StoreError::Database(sqlx::Error::Database(db)) => {
                // PostgreSQL: 40001 serialization failure, 40P01 deadlock,
                // 55P03 lock not available; SQLite: busy and locked (with
                // their extended codes). These are worth a retry as they are.
                !matches!(
                    db.code().as_deref(),
                    Some("40001" | "40P01" | "55P03" | "5" | "6" | "261" | "262" | "517" | "773")
                )
            }
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => !matches!(
                e.code,
                rusqlite::ErrorCode::DatabaseBusy
                    | rusqlite::ErrorCode::DatabaseLocked
                    | rusqlite::ErrorCode::SystemIoFailure
                    | rusqlite::ErrorCode::DiskFull
                    | rusqlite::ErrorCode::CannotOpen
            ),
            _ => false,
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::Conflict(db.message().to_owned())
            }
            _ => StoreError::Database(e),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A stored value this version cannot read (e.g. an unknown role name).
pub(crate) fn bad_value(what: &str, value: &str) -> StoreError {
    StoreError::Database(sqlx::Error::Decode(
        format!("unknown {what} {value:?} in database").into(),
    ))
}

/// The connection pool and the backend it talks to. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// The database file, on SQLite (not for in-memory databases).
    sqlite_file: Option<PathBuf>,
    /// How to open a connection outside the pool, on PostgreSQL.
    postgres: Option<PgOptions>,
}

/// PostgreSQL connection options, kept out of `Debug` (they hold the password).
#[derive(Clone)]
struct PgOptions(std::sync::Arc<sqlx::postgres::PgConnectOptions>);

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgOptions(..)")
    }
}

/// Options for [`Store::connect`].
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub url: String,
    pub max_connections: u32,
}

impl Store {
    /// Connects to the database named by the URL. SQLite files are created when
    /// missing and run in WAL mode with a busy timeout, so concurrent writers wait
    /// instead of failing.
    pub async fn connect(opts: &ConnectOptions) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = Backend::from_url(&opts.url).ok_or(StoreError::UnsupportedUrl)?;
        let connect_opts = AnyConnectOptions::from_str(&opts.url)?;
        let sqlite_file = match backend {
            Backend::Sqlite => {
                let o = sqlx::sqlite::SqliteConnectOptions::from_str(&opts.url)?;
                let file = o.get_filename();
                // sqlx names in-memory databases `file:sqlx-in-memory-N`.
                let in_memory = file.as_os_str().is_empty()
                    || file.to_string_lossy().starts_with("file:")
                    || opts.url.contains(":memory:")
                    || opts.url.contains("mode=memory");
                (!in_memory).then(|| file.to_path_buf())
            }
            Backend::Postgres => None,
        };
        let postgres = match backend {
            Backend::Postgres => Some(PgOptions(std::sync::Arc::new(
                sqlx::postgres::PgConnectOptions::from_str(&opts.url)?,
            ))),
            Backend::Sqlite => None,
        };
        let pool = AnyPoolOptions::new()
            .max_connections(opts.max_connections.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                             PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;",
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(connect_opts)
            .await?;
        Ok(Store {
            pool,
            backend,
            sqlite_file,
            postgres,
        })
    }

    /// Applies the migrations of this backend that have not run yet.
    pub async fn migrate(&self) -> Result<()> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator.run(&self.pool).await?;
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The SQLite database file, for a connection outside the pool (the
    /// gateway's writer); `None` on PostgreSQL and for in-memory databases.
    pub fn sqlite_file(&self) -> Option<&Path> {
        self.sqlite_file.as_deref()
    }

    /// The gateway's writer on PostgreSQL, on a connection of its own
    /// ([`pg_recorder`]); `None` on SQLite.
    pub async fn pg_recorder(&self) -> Result<Option<pg_recorder::PgRecorder>> {
        match &self.postgres {
            Some(options) => Ok(Some(pg_recorder::PgRecorder::connect(&options.0).await?)),
            None => Ok(None),
        }
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Starts a transaction; commit it or it rolls back when dropped.
    ///
    /// On SQLite the transaction takes the write lock up front (`BEGIN
    /// IMMEDIATE`): a deferred transaction that reads and then writes fails at
    /// once with "database is locked" when another writer got in between,
    /// whereas an immediate one waits for its turn (busy timeout).
    pub async fn begin(&self) -> Result<Transaction<'static, Any>> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// A pooled connection for reads that need no transaction.
    pub async fn conn(&self) -> Result<sqlx::pool::PoolConnection<Any>> {
        Ok(self.pool.acquire().await?)
    }

    /// Round trip to the database, for readiness checks.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Current time in Unix milliseconds (see [`clock`]).
pub fn now_ms() -> i64 {
    clock::now_ms()
}

/// A new time-ordered id with a readable prefix, e.g. `ns_0190c3…`.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}
