//! The gateway's group commit on SQLite: a connection of its own, driven by
//! one thread, with its statements prepared once.
//!
//! Policy:
//! - The writer of the hot path does not go through sqlx on SQLite. sqlx runs
//!   each statement of an SQLite connection on a worker thread behind a
//!   channel, and the `Any` driver converts every argument and row on the way;
//!   for a batch of small inserts that costs more than SQLite itself. This
//!   connection runs the statements of [`crate::recording::Plan`] (the rows
//!   [`crate::pg_recorder::PgRecorder`] writes on PostgreSQL) on the thread
//!   that owns it through cached prepared statements, in one `BEGIN IMMEDIATE`
//!   transaction per batch. It links the same SQLite library as sqlx.
//! - Durability is unchanged: `COMMIT` returns once the batch is in the WAL
//!   file (WAL, `synchronous = NORMAL`), which survives the process being
//!   killed; the caller answers the calls only after that.
//! - Checkpoints: SQLite copies the WAL into the database (and restarts the
//!   WAL from its beginning) on the commit that finds the WAL past
//!   `wal_autocheckpoint` frames, and that commit waits for a few syncs of the
//!   disk (milliseconds on the development machine). This connection raises
//!   the threshold from SQLite's 1,000 frames to [`WAL_RESTART_FRAMES`]: a
//!   call commits about ten pages, so at concurrency 1 one commit in about a
//!   thousand waits instead of one in a hundred, which takes the syncs out of
//!   the p99; the WAL stays bounded (about 40 MB). Checkpointing from a second
//!   connection on a timer was tried and measured worse: its syncs stalled the
//!   writer's appends to the WAL, and it cannot restart the WAL while calls
//!   keep coming (SQLite restarts it only at a write that begins with every
//!   frame copied). The pool's connections keep the default for their own,
//!   rare, writes.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::recording::{Param, Plan, Statement};
use crate::usage::CallRecord;
use crate::Result;

/// WAL size (frames, about 4 KiB each) at which the writer checkpoints and
/// restarts the WAL itself; see the module policy.
pub const WAL_RESTART_FRAMES: u32 = 10_000;

/// Prepared statements kept: one per distinct text (tables times row counts).
const STATEMENT_CACHE: usize = 256;

fn open(path: &Path, busy_timeout: Duration) -> Result<Connection> {
    // The connection lives on one thread: SQLite's own mutexes are not needed.
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(busy_timeout)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
    )?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// Records batches of gateway calls on SQLite; see the module policy.
pub struct SqliteRecorder {
    conn: Connection,
}

impl SqliteRecorder {
    /// Opens the database file (already created and migrated by the pool).
    pub fn open(path: &Path) -> Result<Self> {
        let conn = open(path, Duration::from_secs(10))?;
        conn.execute_batch(&format!(
            "PRAGMA wal_autocheckpoint = {WAL_RESTART_FRAMES};"
        ))?;
        Ok(SqliteRecorder { conn })
    }

    /// Records a batch of (cleaned) calls in a transaction of its own: the
    /// statements of [`Plan`]. Nothing is written unless it all commits.
    pub fn record_calls(&mut self, calls: &[CallRecord], now: i64) -> Result<()> {
        // BEGIN and COMMIT are cached statements too, not parsed per batch.
        self.conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        let done = self.write(calls, now).and_then(|()| {
            self.conn.prepare_cached("COMMIT")?.execute([])?;
            Ok(())
        });
        if done.is_err() && !self.conn.is_autocommit() {
            // Nothing of a failed batch stays.
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        done
    }

    fn write(&self, calls: &[CallRecord], now: i64) -> Result<()> {
        let mut plan = Plan::new(calls);
        for s in plan.writes() {
            self.bind(&s)?.raw_execute()?;
        }
        let mut balances = Vec::new();
        for (s, (ns, env)) in plan.balance_updates(now, &[]).iter().zip(plan.accounts()) {
            let mut stmt = self.bind(s)?;
            let mut rows = stmt.raw_query();
            let row = rows
                .next()?
                .ok_or_else(|| crate::recording::no_balance(ns, env))?;
            balances.push(row.get::<_, i64>(0)?);
        }
        for s in plan.ledger(&balances, now) {
            self.bind(&s)?.raw_execute()?;
        }
        Ok(())
    }

    fn bind(&self, s: &Statement<'_>) -> Result<rusqlite::CachedStatement<'_>> {
        let mut stmt = self.conn.prepare_cached(&s.sql)?;
        for (i, p) in s.params.iter().enumerate() {
            match p {
                Param::Int(v) => stmt.raw_bind_parameter(i + 1, v)?,
                Param::Text(v) => stmt.raw_bind_parameter(i + 1, v)?,
            }
        }
        Ok(stmt)
    }
}
