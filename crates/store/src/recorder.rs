//! The gateway's group commit on SQLite: a connection of its own, driven by
//! one thread, with its statements prepared once.
//!
//! Policy:
//! - The writer of the hot path does not go through sqlx on SQLite. sqlx runs
//!   each statement of an SQLite connection on a worker thread behind a
//!   channel, and the `Any` driver converts every argument and row on the way;
//!   for a batch of small inserts that costs more than SQLite itself. This
//!   connection runs the same statements as [`crate::usage::record_calls`]
//!   (which PostgreSQL keeps using) on the thread that owns it, one row at a
//!   time through cached prepared statements, in one `BEGIN IMMEDIATE`
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

use rusqlite::{params, Connection, OpenFlags};

use crate::usage::{ledger_lines, settle, totals, CallRecord};
use crate::{now_ms, Result};

/// WAL size (frames, about 4 KiB each) at which the writer checkpoints and
/// restarts the WAL itself; see the module policy.
pub const WAL_RESTART_FRAMES: u32 = 10_000;

const INSERT_USAGE: &str = "INSERT INTO usage_events (id, time, namespace_id, environment, \
     key_id, api, model, endpoint, request_type, status, error, latency_us, \
     upstream_latency_us, tokens_in, tokens_out, cost_micros, client_id) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)";

const ADD_TO_BALANCE: &str = "INSERT INTO balances (namespace_id, environment, balance_micros, \
     updated_at) VALUES (?1, ?2, ?3, ?4) \
     ON CONFLICT (namespace_id, environment) \
     DO UPDATE SET balance_micros = balances.balance_micros + ?3, updated_at = ?4 \
     RETURNING balance_micros";

const INSERT_LEDGER: &str = "INSERT INTO ledger_entries (namespace_id, environment, time, kind, \
     amount_micros, balance_after_micros, actor, reference, memo) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, NULL)";

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

    /// Same as [`crate::usage::record_calls`], in a transaction of its own:
    /// usage rows, the ledger entries of every call with a cost (the caller's
    /// and a seller's), one balance update per namespace and environment. Nothing is written unless
    /// it all commits.
    pub fn record_calls(&mut self, calls: &[CallRecord]) -> Result<()> {
        // BEGIN and COMMIT are cached statements too, not parsed per batch.
        self.conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        let done = self.write(calls).and_then(|()| {
            self.conn.prepare_cached("COMMIT")?.execute([])?;
            Ok(())
        });
        if done.is_err() && !self.conn.is_autocommit() {
            // Nothing of a failed batch stays.
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        done
    }

    fn write(&self, calls: &[CallRecord]) -> Result<()> {
        let mut usage = self.conn.prepare_cached(INSERT_USAGE)?;
        for c in calls {
            usage.execute(params![
                c.id,
                c.time,
                c.namespace_id,
                c.environment.as_str(),
                c.key_id,
                c.api,
                c.model,
                c.endpoint,
                c.request_type,
                c.status,
                c.error,
                c.latency_us,
                c.upstream_latency_us,
                c.tokens_in,
                c.tokens_out,
                c.cost_micros,
                c.client_id,
            ])?;
        }
        crate::rollups::record_sqlite(&self.conn, calls)?;
        let now = now_ms();
        let mut lines = ledger_lines(calls);
        let mut balance = self.conn.prepare_cached(ADD_TO_BALANCE)?;
        let mut after = Vec::new();
        for (ns, env, delta) in totals(&lines) {
            let b: i64 = balance.query_row(params![ns, env.as_str(), delta, now], |r| r.get(0))?;
            after.push((ns, env, b));
        }
        settle(&mut lines, &after);
        let mut ledger = self.conn.prepare_cached(INSERT_LEDGER)?;
        for l in &lines {
            ledger.execute(params![
                l.namespace_id,
                l.environment.as_str(),
                now,
                l.kind,
                l.amount,
                l.balance_after,
                l.actor,
                l.reference,
            ])?;
        }
        Ok(())
    }
}
