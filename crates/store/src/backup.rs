//! Backups (O1): every table in one portable archive, read from one snapshot
//! while the server keeps serving, and restored into an empty database of
//! either backend, so an SQLite install moves onto PostgreSQL with one command.
//!
//! The archive is a tar file:
//! - `manifest.json`, first: the format, the schema version, the backend it
//!   came from, when it was taken, whether secrets are in it, and per table
//!   its columns, row count and the SHA-256 of its file;
//! - `tables/<table>.ndjson.zst`: one JSON array per row, the values in the
//!   manifest's column order (integers as numbers, text as strings, NULL as
//!   null), zstd-compressed.
//!
//! Restore checks the whole archive against its manifest before it touches
//! the database, then writes every table in one transaction: a damaged,
//! truncated or newer archive changes nothing.
//!
//! Secrets: API keys, refresh tokens and passwords are stored hashed and stay
//! so. The JWT signing secret (`server_settings.jwt_secret`) and upstream
//! credentials (`api_key` of each upstream in `catalog_apis.config`) are left
//! out unless asked for: restored without them, the server makes a new JWT
//! secret (everyone signs in again) and those APIs need their credentials
//! entered again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::{Backend, Store, StoreError, POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS};

/// The archive layout this build writes and reads.
pub const FORMAT: u32 = 1;
const MANIFEST: &str = "manifest.json";
const TABLES_DIR: &str = "tables/";
const TABLE_SUFFIX: &str = ".ndjson.zst";
/// Serialized rows handed to the compressor at a time.
const CHUNK: usize = 1 << 20;
/// Bound parameters per INSERT, under SQLite's 32,766 and PostgreSQL's 65,535.
const MAX_PARAMS: usize = 30_000;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("backup file: {0}")]
    Io(#[from] std::io::Error),
    /// The archive is not what its manifest says (truncated, altered, not a
    /// backup at all).
    #[error("the archive is damaged: {0}")]
    Damaged(String),
    /// The archive's schema is not this build's.
    #[error("{0}")]
    Version(String),
    /// Restore goes into an empty database only.
    #[error("the target database is not empty: {0}; restore goes into an empty database")]
    NotEmpty(String),
    /// A restore that needs a setup token got one that is unknown, expired
    /// or used.
    #[error("the setup token is unknown, expired or used")]
    SetupToken,
    /// This database's tables cannot be written to an archive.
    #[error("unsupported schema: {0}")]
    Schema(String),
}

impl From<sqlx::Error> for BackupError {
    fn from(e: sqlx::Error) -> Self {
        BackupError::Store(e.into())
    }
}

pub type Result<T, E = BackupError> = std::result::Result<T, E>;

/// What an archive holds, written first in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub schema_version: i64,
    /// `sqlite` or `postgres`.
    pub source_backend: String,
    /// Unix milliseconds.
    pub created_at: i64,
    pub tally_version: String,
    /// Whether the JWT secret and upstream credentials are in it.
    pub secrets_included: bool,
    pub tables: Vec<TableManifest>,
}

impl Manifest {
    pub fn rows(&self) -> i64 {
        self.tables.iter().map(|t| t.rows).sum()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableManifest {
    pub name: String,
    pub columns: Vec<Column>,
    pub rows: i64,
    /// Hex SHA-256 of the table's compressed file.
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    pub kind: Kind,
}

/// The portable column types (see the crate's policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Integer,
    Text,
}

/// A table as the database describes it.
#[derive(Debug, Clone)]
struct Table {
    name: String,
    columns: Vec<Column>,
    /// Primary key columns, in key order (empty: none).
    key: Vec<String>,
}

/// The schema version of this build: the newest migration both backends
/// have (SQLite has physical-only migrations of its own, such as 0011).
pub fn schema_version() -> i64 {
    let pg: HashSet<i64> = POSTGRES_MIGRATIONS.iter().map(|m| m.version).collect();
    SQLITE_MIGRATIONS
        .iter()
        .map(|m| m.version)
        .filter(|v| pg.contains(v))
        .max()
        .unwrap_or(0)
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// The tables of the database, sorted by name, without sqlx's and SQLite's own.
async fn tables(conn: &mut AnyConnection, backend: Backend) -> Result<Vec<Table>> {
    let names: Vec<String> = match backend {
        Backend::Sqlite => {
            sqlx::query_scalar(
                "SELECT name FROM sqlite_master WHERE type = 'table' \
                 AND name NOT LIKE 'sqlite!_%' ESCAPE '!' AND name <> '_sqlx_migrations' \
                 ORDER BY name",
            )
            .fetch_all(&mut *conn)
            .await?
        }
        Backend::Postgres => {
            sqlx::query_scalar(
                "SELECT CAST(table_name AS TEXT) FROM information_schema.tables \
                 WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' \
                 AND table_name <> '_sqlx_migrations' ORDER BY table_name",
            )
            .fetch_all(&mut *conn)
            .await?
        }
    };
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let (columns, key) = match backend {
            Backend::Sqlite => {
                let rows: Vec<(String, String, i64)> = sqlx::query_as(
                    "SELECT name, type, CAST(pk AS BIGINT) FROM pragma_table_info($1) ORDER BY cid",
                )
                .bind(&name)
                .fetch_all(&mut *conn)
                .await?;
                let mut key: Vec<(i64, String)> = rows
                    .iter()
                    .filter(|r| r.2 > 0)
                    .map(|r| (r.2, r.0.clone()))
                    .collect();
                key.sort();
                (
                    rows.into_iter().map(|(c, t, _)| (c, t)).collect::<Vec<_>>(),
                    key.into_iter().map(|k| k.1).collect(),
                )
            }
            Backend::Postgres => {
                let cols: Vec<(String, String)> = sqlx::query_as(
                    "SELECT CAST(column_name AS TEXT), CAST(data_type AS TEXT) \
                     FROM information_schema.columns \
                     WHERE table_schema = current_schema() AND table_name = $1 \
                     ORDER BY ordinal_position",
                )
                .bind(&name)
                .fetch_all(&mut *conn)
                .await?;
                let key: Vec<String> = sqlx::query_scalar(
                    "SELECT CAST(a.attname AS TEXT) FROM pg_index i \
                     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                     WHERE i.indrelid = CAST($1 AS regclass) AND i.indisprimary \
                     ORDER BY array_position(CAST(i.indkey AS int2[]), a.attnum)",
                )
                .bind(quote(&name))
                .fetch_all(&mut *conn)
                .await?;
                (cols, key)
            }
        };
        let columns = columns
            .into_iter()
            .map(|(column, declared)| {
                let t = declared.to_ascii_lowercase();
                let kind = if t.contains("int") {
                    Kind::Integer
                } else if t == "text" || t.contains("char") {
                    Kind::Text
                } else {
                    return Err(BackupError::Schema(format!(
                        "{name}.{column} is {declared}; only integers and text are portable"
                    )));
                };
                Ok(Column { name: column, kind })
            })
            .collect::<Result<Vec<_>>>()?;
        out.push(Table { name, columns, key });
    }
    Ok(out)
}

/// Options of [`create`].
#[derive(Debug, Clone, Copy, Default)]
pub struct CreateOptions {
    /// Include the JWT secret and upstream credentials.
    pub include_secrets: bool,
}

/// A [`Write`] that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

type TableWriter = zstd::stream::write::Encoder<'static, Hashing<BufWriter<File>>>;

/// Hands `buf` to the compressor off the async runtime's threads.
async fn write_chunk(w: TableWriter, buf: Vec<u8>) -> Result<(TableWriter, Vec<u8>)> {
    tokio::task::spawn_blocking(move || {
        let mut w = w;
        let mut buf = buf;
        w.write_all(&buf)?;
        buf.clear();
        Ok::<_, std::io::Error>((w, buf))
    })
    .await
    .map_err(|e| BackupError::Io(std::io::Error::other(e)))?
    .map_err(BackupError::Io)
}

/// Leaves secrets out of a row unless they are wanted: `false` drops the row.
fn redact(table: &str, columns: &[Column], values: &mut [Value]) -> bool {
    let at = |name: &str| columns.iter().position(|c| c.name == name);
    match table {
        "server_settings" => at("key").is_none_or(|i| values[i] != "jwt_secret"),
        "catalog_apis" => {
            if let Some(i) = at("config") {
                if let Some(mut config) = values[i]
                    .as_str()
                    .and_then(|s| serde_json::from_str::<Value>(s).ok())
                {
                    for list in ["upstreams", "test_upstreams"] {
                        if let Some(items) = config.get_mut(list).and_then(Value::as_array_mut) {
                            for u in items {
                                if let Some(o) = u.as_object_mut() {
                                    o.remove("api_key");
                                }
                            }
                        }
                    }
                    values[i] = Value::String(config.to_string());
                }
            }
            true
        }
        _ => true,
    }
}

fn row_values(row: &AnyRow, columns: &[Column]) -> Result<Vec<Value>> {
    columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            Ok(match c.kind {
                Kind::Integer => row
                    .try_get::<Option<i64>, _>(i)?
                    .map_or(Value::Null, Value::from),
                Kind::Text => row
                    .try_get::<Option<String>, _>(i)?
                    .map_or(Value::Null, Value::String),
            })
        })
        .collect()
}

/// Writes a backup of every table to `path` (a `.partial` file renamed into
/// place when complete), from one snapshot. Returns its manifest.
pub async fn create(store: &Store, path: &Path, opts: CreateOptions) -> Result<Manifest> {
    let work = tempdir_beside(path)?;
    let result = write_archive(store, path, &work, opts).await;
    let _ = std::fs::remove_dir_all(&work);
    if result.is_err() {
        // A failed backup leaves nothing behind that could pass for one.
        let _ = std::fs::remove_file(path.with_extension("partial"));
    }
    result
}

fn tempdir_beside(path: &Path) -> Result<PathBuf> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let work = dir.join(format!(
        ".{}.work-{}",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir(&work)?;
    Ok(work)
}

async fn write_archive(
    store: &Store,
    path: &Path,
    work: &Path,
    opts: CreateOptions,
) -> Result<Manifest> {
    let backend = store.backend();
    let mut conn = store.conn().await?;
    // One snapshot for every table: PostgreSQL's repeatable read; on SQLite
    // (WAL) a read transaction sees the database as of its first read.
    sqlx::query("BEGIN").execute(&mut *conn).await?;
    let read = async {
        if backend == Backend::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *conn)
                .await?;
        }
        let tables = tables(&mut conn, backend).await?;
        let mut manifests = Vec::with_capacity(tables.len());
        for t in &tables {
            let file = File::create(work.join(&t.name))?;
            let hashing = Hashing {
                inner: BufWriter::new(file),
                hasher: Sha256::new(),
            };
            let mut w: TableWriter = zstd::stream::write::Encoder::new(hashing, 3)?;
            let cols: Vec<String> = t.columns.iter().map(|c| quote(&c.name)).collect();
            let order = if t.key.is_empty() {
                String::new()
            } else {
                let key: Vec<String> = t.key.iter().map(|k| quote(k)).collect();
                format!(" ORDER BY {}", key.join(", "))
            };
            let sql = format!("SELECT {} FROM {}{order}", cols.join(", "), quote(&t.name));
            let mut rows = 0_i64;
            let mut buf = Vec::with_capacity(CHUNK + 4096);
            {
                let mut stream = sqlx::query(&sql).fetch(&mut *conn);
                while let Some(row) = stream.try_next().await? {
                    let mut values = row_values(&row, &t.columns)?;
                    if !opts.include_secrets && !redact(&t.name, &t.columns, &mut values) {
                        continue;
                    }
                    serde_json::to_writer(&mut buf, &values)
                        .map_err(|e| BackupError::Io(e.into()))?;
                    buf.push(b'\n');
                    rows += 1;
                    if buf.len() >= CHUNK {
                        (w, buf) = write_chunk(w, buf).await?;
                    }
                }
            }
            (w, buf) = write_chunk(w, buf).await?;
            drop(buf);
            let sha256 = tokio::task::spawn_blocking(move || {
                let mut hashing = w.finish()?;
                hashing.flush()?;
                Ok::<_, std::io::Error>(hex(&hashing.hasher.finalize()))
            })
            .await
            .map_err(|e| BackupError::Io(std::io::Error::other(e)))??;
            manifests.push(TableManifest {
                name: t.name.clone(),
                columns: t.columns.clone(),
                rows,
                sha256,
            });
        }
        Ok::<_, BackupError>(manifests)
    }
    .await;
    let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
    drop(conn);
    let manifest = Manifest {
        format: FORMAT,
        schema_version: schema_version(),
        source_backend: backend.as_str().to_owned(),
        created_at: crate::now_ms(),
        tally_version: env!("CARGO_PKG_VERSION").to_owned(),
        secrets_included: opts.include_secrets,
        tables: read?,
    };
    let (work, path, m) = (work.to_path_buf(), path.to_path_buf(), manifest.clone());
    tokio::task::spawn_blocking(move || assemble(&work, &path, &m))
        .await
        .map_err(|e| BackupError::Io(std::io::Error::other(e)))??;
    Ok(manifest)
}

/// The tar file: the manifest first, then each table's file.
fn assemble(work: &Path, path: &Path, manifest: &Manifest) -> Result<()> {
    let partial = path.with_extension("partial");
    let file = File::create(&partial)?;
    let mut tar = tar::Builder::new(BufWriter::new(file));
    let json = serde_json::to_vec_pretty(manifest).map_err(|e| BackupError::Io(e.into()))?;
    let mut header = tar::Header::new_gnu();
    header.set_size(json.len() as u64);
    header.set_mode(0o600);
    header.set_mtime(u64::try_from(manifest.created_at / 1000).unwrap_or(0));
    header.set_cksum();
    tar.append_data(&mut header, MANIFEST, json.as_slice())?;
    for t in &manifest.tables {
        let mut f = File::open(work.join(&t.name))?;
        tar.append_file(format!("{TABLES_DIR}{}{TABLE_SUFFIX}", t.name), &mut f)?;
    }
    let mut out = tar.into_inner()?;
    out.flush()?;
    out.into_inner()
        .map_err(|e| BackupError::Io(e.into_error()))?
        .sync_all()?;
    std::fs::rename(&partial, path)?;
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn damaged(why: impl Into<String>) -> BackupError {
    BackupError::Damaged(why.into())
}

/// Reads the manifest at the start of an archive (cheap: listing backups
/// reads only this). Says nothing of whether the rest is intact: see [`verify`].
pub fn read_manifest(path: &Path) -> Result<Manifest> {
    let mut archive = tar::Archive::new(BufReader::new(File::open(path)?));
    let mut entries = archive.entries().map_err(|e| damaged(e.to_string()))?;
    let mut first = entries
        .next()
        .ok_or_else(|| damaged("it is empty"))?
        .map_err(|e| damaged(e.to_string()))?;
    if first.path().ok().as_deref() != Some(Path::new(MANIFEST)) {
        return Err(damaged("it does not start with a Tally backup manifest"));
    }
    let mut text = String::new();
    first
        .read_to_string(&mut text)
        .map_err(|e| damaged(format!("its manifest cannot be read: {e}")))?;
    serde_json::from_str(&text).map_err(|e| damaged(format!("its manifest is invalid: {e}")))
}

/// Checks a whole archive against its manifest (every table's file present,
/// complete and with its checksum, nothing else) and that this build can
/// restore it. Returns the manifest.
pub fn verify(path: &Path) -> Result<Manifest> {
    let manifest = read_manifest(path)?;
    if manifest.format != FORMAT {
        return Err(BackupError::Version(format!(
            "archive format {} is not this version's ({FORMAT})",
            manifest.format
        )));
    }
    let ours = schema_version();
    if manifest.schema_version > ours {
        return Err(BackupError::Version(format!(
            "the backup was made by a newer Tally (schema {}, this one has {ours}); \
             restore it with that version or a later one",
            manifest.schema_version
        )));
    }
    if manifest.schema_version < ours {
        return Err(BackupError::Version(format!(
            "the backup was made by an older Tally (schema {}, this one has {ours}); \
             restore it with Tally {}, start that version's server once, then upgrade",
            manifest.schema_version, manifest.tally_version
        )));
    }
    let expected: HashMap<String, &TableManifest> = manifest
        .tables
        .iter()
        .map(|t| (format!("{TABLES_DIR}{}{TABLE_SUFFIX}", t.name), t))
        .collect();
    let mut seen = HashSet::new();
    let mut archive = tar::Archive::new(BufReader::new(File::open(path)?));
    for entry in archive
        .entries()
        .map_err(|e| damaged(e.to_string()))?
        .skip(1)
    {
        let mut entry = entry.map_err(|e| damaged(e.to_string()))?;
        let name = entry
            .path()
            .map_err(|e| damaged(e.to_string()))?
            .to_string_lossy()
            .into_owned();
        let Some(t) = expected.get(&name) else {
            return Err(damaged(format!("{name} is not in its manifest")));
        };
        if !seen.insert(name.clone()) {
            return Err(damaged(format!("{name} appears twice")));
        }
        let mut hasher = Sha256::new();
        std::io::copy(&mut entry, &mut HashSink(&mut hasher))
            .map_err(|e| damaged(format!("{name} cannot be read: {e}")))?;
        if hex(&hasher.finalize()) != t.sha256 {
            return Err(damaged(format!(
                "{name} does not match its checksum (altered or truncated)"
            )));
        }
    }
    if let Some(missing) = expected.keys().find(|k| !seen.contains(*k)) {
        return Err(damaged(format!("{missing} is missing (truncated?)")));
    }
    Ok(manifest)
}

struct HashSink<'a>(&'a mut Sha256);

impl Write for HashSink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Tables in an order that puts every table after those its foreign keys
/// point to (by name otherwise).
async fn insert_order(
    conn: &mut AnyConnection,
    backend: Backend,
    names: &[String],
) -> Result<Vec<String>> {
    let mut parents: BTreeMap<String, HashSet<String>> = BTreeMap::new();
    for name in names {
        let refs: Vec<String> = match backend {
            Backend::Sqlite => {
                sqlx::query_scalar("SELECT \"table\" FROM pragma_foreign_key_list($1)")
                    .bind(name)
                    .fetch_all(&mut *conn)
                    .await?
            }
            Backend::Postgres => {
                sqlx::query_scalar(
                    "SELECT CAST(p.relname AS TEXT) FROM pg_constraint c \
                     JOIN pg_class p ON p.oid = c.confrelid \
                     WHERE c.contype = 'f' AND c.conrelid = CAST($1 AS regclass)",
                )
                .bind(quote(name))
                .fetch_all(&mut *conn)
                .await?
            }
        };
        parents.insert(
            name.clone(),
            refs.into_iter().filter(|p| p != name).collect(),
        );
    }
    let mut order = Vec::with_capacity(names.len());
    let mut placed = HashSet::new();
    while order.len() < names.len() {
        let ready: Vec<String> = parents
            .iter()
            .filter(|(n, ps)| {
                !placed.contains(*n)
                    && ps
                        .iter()
                        .all(|p| placed.contains(p) || !parents.contains_key(p))
            })
            .map(|(n, _)| n.clone())
            .collect();
        if ready.is_empty() {
            return Err(BackupError::Schema(
                "the tables' foreign keys form a cycle".into(),
            ));
        }
        for n in ready {
            placed.insert(n.clone());
            order.push(n);
        }
    }
    Ok(order)
}

/// What a restore wrote.
#[derive(Debug, Clone)]
pub struct Restored {
    pub manifest: Manifest,
    /// Rows written per table.
    pub rows: BTreeMap<String, i64>,
}

/// What a restore into a running server keeps of the target.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// The hash of a setup token the restore uses up first, in its own
    /// transaction: of a restore and a setup racing on a new server, only
    /// one goes through.
    pub setup_token_hash: Option<String>,
    /// `server_settings` keys whose values in the target stay as they are
    /// (a running server keeps the JWT secret it signs with).
    pub keep_settings: Vec<String>,
}

/// Restores the archive at `path` into `store`, which must be migrated to
/// this build's schema and hold no accounts, namespaces or ledger entries.
/// Everything is checked first and written in one transaction: on any error
/// the database is as it was.
pub async fn restore(store: &Store, path: &Path) -> Result<Restored> {
    restore_with(store, path, RestoreOptions::default()).await
}

/// [`restore`], keeping what `opts` says of the target.
pub async fn restore_with(store: &Store, path: &Path, opts: RestoreOptions) -> Result<Restored> {
    let p = path.to_path_buf();
    let manifest = tokio::task::spawn_blocking(move || verify(&p))
        .await
        .map_err(|e| BackupError::Io(std::io::Error::other(e)))??;
    let backend = store.backend();
    let mut tx = store.begin().await?;
    if let Some(hash) = &opts.setup_token_hash {
        if !crate::setup_tokens::consume(&mut tx, hash).await? {
            return Err(BackupError::SetupToken);
        }
    }
    let target = tables(&mut tx, backend).await?;
    let target_by_name: HashMap<&str, &Table> =
        target.iter().map(|t| (t.name.as_str(), t)).collect();
    for t in &manifest.tables {
        let Some(have) = target_by_name.get(t.name.as_str()) else {
            return Err(BackupError::Version(format!(
                "table {} of the backup is not in this database; is it migrated?",
                t.name
            )));
        };
        let mut theirs: Vec<(&str, Kind)> = t
            .columns
            .iter()
            .map(|c| (c.name.as_str(), c.kind))
            .collect();
        let mut ours: Vec<(&str, Kind)> = have
            .columns
            .iter()
            .map(|c| (c.name.as_str(), c.kind))
            .collect();
        theirs.sort_unstable();
        ours.sort_unstable();
        if theirs != ours {
            return Err(BackupError::Version(format!(
                "table {} has other columns in the backup than in this database",
                t.name
            )));
        }
    }
    if let Some(extra) = target
        .iter()
        .find(|t| !manifest.tables.iter().any(|m| m.name == t.name))
    {
        return Err(BackupError::Version(format!(
            "table {} of this database is not in the backup",
            extra.name
        )));
    }
    for table in ["accounts", "namespaces", "ledger_entries"] {
        if target_by_name.contains_key(table) {
            let n: i64 = sqlx::query_scalar(&format!(
                "SELECT CAST(COUNT(*) AS BIGINT) FROM {}",
                quote(table)
            ))
            .fetch_one(&mut *tx)
            .await?;
            if n > 0 {
                return Err(BackupError::NotEmpty(format!("{n} rows in {table}")));
            }
        }
    }
    let mut kept = Vec::with_capacity(opts.keep_settings.len());
    for key in &opts.keep_settings {
        if let Some(value) = crate::settings::get(&mut tx, key).await? {
            kept.push((key, value));
        }
    }
    let names: Vec<String> = target.iter().map(|t| t.name.clone()).collect();
    let order = insert_order(&mut tx, backend, &names).await?;
    // What the server seeds at start (its JWT secret, config-file APIs, a
    // setup token) makes way for the backup's rows.
    for name in order.iter().rev() {
        sqlx::query(&format!("DELETE FROM {}", quote(name)))
            .execute(&mut *tx)
            .await?;
    }
    let by_name: HashMap<&str, &TableManifest> = manifest
        .tables
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    let mut rows = BTreeMap::new();
    for name in &order {
        let t = by_name[name.as_str()];
        let n = restore_table(&mut tx, path, t).await?;
        if n != t.rows {
            return Err(damaged(format!(
                "{} holds {n} rows, its manifest says {}",
                t.name, t.rows
            )));
        }
        rows.insert(t.name.clone(), n);
    }
    for (key, value) in &kept {
        crate::settings::set(&mut tx, key, value).await?;
    }
    if backend == Backend::Postgres {
        reset_sequences(&mut tx).await?;
    }
    tx.commit().await?;
    Ok(Restored { manifest, rows })
}

/// Reads one table's rows from the archive on a blocking thread, in batches.
fn read_table(
    path: PathBuf,
    entry_name: String,
    width: usize,
    per_batch: usize,
    out: tokio::sync::mpsc::Sender<Result<Vec<Vec<Value>>>>,
) {
    let run = || -> Result<()> {
        let mut archive = tar::Archive::new(BufReader::new(File::open(&path)?));
        // Seeks past the tables before this one instead of reading them.
        for entry in archive.entries_with_seek()? {
            let entry = entry?;
            if entry.path()?.to_string_lossy() != entry_name {
                continue;
            }
            let lines = BufReader::new(zstd::stream::read::Decoder::new(entry)?).lines();
            let mut batch = Vec::with_capacity(per_batch);
            for (i, line) in lines.enumerate() {
                let line = line.map_err(|e| damaged(format!("{entry_name}: {e}")))?;
                let row: Vec<Value> = serde_json::from_str(&line)
                    .map_err(|e| damaged(format!("{entry_name} line {}: {e}", i + 1)))?;
                if row.len() != width {
                    return Err(damaged(format!(
                        "{entry_name} line {}: {} values for {width} columns",
                        i + 1,
                        row.len()
                    )));
                }
                batch.push(row);
                if batch.len() == per_batch
                    && out
                        .blocking_send(Ok(std::mem::replace(
                            &mut batch,
                            Vec::with_capacity(per_batch),
                        )))
                        .is_err()
                {
                    return Ok(());
                }
            }
            if !batch.is_empty() {
                let _ = out.blocking_send(Ok(batch));
            }
            return Ok(());
        }
        Err(damaged(format!("{entry_name} is missing")))
    };
    if let Err(e) = run() {
        let _ = out.blocking_send(Err(e));
    }
}

async fn restore_table(conn: &mut AnyConnection, path: &Path, t: &TableManifest) -> Result<i64> {
    let width = t.columns.len().max(1);
    let per_batch = (MAX_PARAMS / width).clamp(1, 1000);
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let entry_name = format!("{TABLES_DIR}{}{TABLE_SUFFIX}", t.name);
    let (p, w) = (path.to_path_buf(), t.columns.len());
    let reader = tokio::task::spawn_blocking(move || read_table(p, entry_name, w, per_batch, tx));
    let cols: Vec<String> = t.columns.iter().map(|c| quote(&c.name)).collect();
    let head = format!(
        "INSERT INTO {} ({}) VALUES ",
        quote(&t.name),
        cols.join(", ")
    );
    let mut n = 0_i64;
    while let Some(batch) = rx.recv().await {
        let batch = batch?;
        let mut sql = String::with_capacity(head.len() + batch.len() * width * 6);
        sql.push_str(&head);
        let mut p = 0;
        for (r, _) in batch.iter().enumerate() {
            if r > 0 {
                sql.push(',');
            }
            sql.push('(');
            for c in 0..t.columns.len() {
                if c > 0 {
                    sql.push(',');
                }
                p += 1;
                sql.push_str(&format!("${p}"));
            }
            sql.push(')');
        }
        let mut q = sqlx::query(&sql);
        for row in &batch {
            for (value, column) in row.iter().zip(&t.columns) {
                q = match (column.kind, value) {
                    (_, Value::Null) if column.kind == Kind::Integer => q.bind(None::<i64>),
                    (_, Value::Null) => q.bind(None::<String>),
                    (Kind::Integer, Value::Number(v)) => q.bind(v.as_i64().ok_or_else(|| {
                        damaged(format!("{}.{}: {v} is not an integer", t.name, column.name))
                    })?),
                    (Kind::Text, Value::String(s)) => q.bind(s.clone()),
                    (_, v) => {
                        return Err(damaged(format!(
                            "{}.{}: {v} is not of its column's type",
                            t.name, column.name
                        )))
                    }
                };
            }
        }
        q.execute(&mut *conn).await?;
        n += batch.len() as i64;
    }
    reader
        .await
        .map_err(|e| BackupError::Io(std::io::Error::other(e)))?;
    Ok(n)
}

/// PostgreSQL: serial columns continue after the restored ids.
async fn reset_sequences(conn: &mut AnyConnection) -> Result<()> {
    let serials: Vec<(String, String)> = sqlx::query_as(
        "SELECT CAST(table_name AS TEXT), CAST(column_name AS TEXT) FROM information_schema.columns \
         WHERE table_schema = current_schema() AND column_default LIKE 'nextval(%'",
    )
    .fetch_all(&mut *conn)
    .await?;
    for (table, column) in serials {
        sqlx::query(&format!(
            "SELECT CAST(setval(pg_get_serial_sequence($1, $2), \
             COALESCE((SELECT MAX({c}) FROM {t}), 0) + 1, false) AS BIGINT)",
            c = quote(&column),
            t = quote(&table)
        ))
        .bind(quote(&table))
        .bind(&column)
        .fetch_one(&mut *conn)
        .await?;
    }
    Ok(())
}

/// A backup file in a directory, with its manifest when it could be read.
#[derive(Debug)]
pub struct Listed {
    pub path: PathBuf,
    pub size: u64,
    pub manifest: Result<Manifest>,
}

/// The `*.tar` backups in `dir`, newest first (by file name, which starts
/// with the time of the backup). A file deleted while it is listed (the
/// schedule prunes old backups) is left out, not an error.
pub fn list(dir: &Path) -> Result<Vec<Listed>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e.into()),
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("tar") {
            continue;
        }
        let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
        let size = match entry.metadata() {
            Ok(m) => m.len(),
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(e.into()),
        };
        let manifest = read_manifest(&path);
        if matches!(&manifest, Err(BackupError::Io(e)) if gone(e)) {
            continue;
        }
        out.push(Listed {
            size,
            manifest,
            path,
        });
    }
    out.sort_by(|a, b| b.path.cmp(&a.path));
    Ok(out)
}

/// The file name of a backup taken at `at_ms`:
/// `tally-backup-20261201-153000-123.tar` (UTC, to the millisecond).
pub fn file_name(at_ms: i64) -> String {
    let t = chrono::DateTime::from_timestamp_millis(at_ms).unwrap_or_default();
    format!("tally-backup-{}.tar", t.format("%Y%m%d-%H%M%S-%3f"))
}

/// Whether `name` is a backup's file name as [`file_name`] makes them (and
/// nothing that could leave the backup directory).
pub fn is_file_name(name: &str) -> bool {
    let Some(stamp) = name
        .strip_prefix("tally-backup-")
        .and_then(|n| n.strip_suffix(".tar"))
    else {
        return false;
    };
    let b = stamp.as_bytes();
    b.len() == 19
        && b[8] == b'-'
        && b[15] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 8 || i == 15 || c.is_ascii_digit())
}

/// Where the server keeps the time of the last successful backup (Unix ms),
/// in `server_settings`, so every instance and the command line agree.
pub const LAST_BACKUP_KEY: &str = "last_backup_at";

/// Records a successful backup taken at `at_ms`, unless a later one is
/// already recorded.
pub async fn record_success(store: &Store, at_ms: i64) -> crate::Result<()> {
    let mut conn = store.conn().await?;
    let last = last_success(&mut conn).await?;
    if last.is_none_or(|t| t < at_ms) {
        crate::settings::set(&mut conn, LAST_BACKUP_KEY, &at_ms.to_string()).await?;
    }
    Ok(())
}

/// The time of the last successful backup (Unix ms).
pub async fn last_success(conn: &mut AnyConnection) -> crate::Result<Option<i64>> {
    Ok(crate::settings::get(conn, LAST_BACKUP_KEY)
        .await?
        .and_then(|v| v.parse().ok()))
}
