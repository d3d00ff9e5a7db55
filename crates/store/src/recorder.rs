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
//! - Checkpoints stay off the commit path as far as SQLite allows. The
//!   [`Checkpointer`] copies the WAL into the database every few hundred
//!   milliseconds from its own connection and thread, PASSIVE, so it never
//!   blocks the writer, and pays the syncs of the WAL and the database file.
//!   But SQLite restarts the WAL from its beginning only at a write that
//!   starts when every frame has been copied, which a separate thread never
//!   sees while calls keep coming; so this connection still checkpoints itself
//!   when the WAL passes [`WAL_RESTART_FRAMES`] (SQLite's automatic
//!   checkpoint, whose default is 1,000), copying the little the checkpointer
//!   has not, and restarts the WAL. That costs the commit that triggers it a
//!   few syncs of the disk; with the default threshold it was one commit in
//!   about a hundred at concurrency 1, now it is one in about a thousand, and
//!   the WAL stays bounded (about 40 MB).
//!   (The pool's connections keep the default for their own, rare, writes.)

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags};

use crate::usage::{ledger_lines, totals, CallRecord};
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
     VALUES (?1, ?2, ?3, 'usage', ?4, ?5, ?6, ?7, NULL)";

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
    /// usage rows, a `usage` ledger entry for every call with a cost, one
    /// balance update per namespace and environment. Nothing is written unless
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
        let now = now_ms();
        let mut balance = self.conn.prepare_cached(ADD_TO_BALANCE)?;
        let mut after = Vec::new();
        for (ns, env, total) in totals(calls) {
            let b: i64 = balance.query_row(params![ns, env.as_str(), -total, now], |r| r.get(0))?;
            after.push((ns, env, b));
        }
        let mut ledger = self.conn.prepare_cached(INSERT_LEDGER)?;
        for (c, balance_after) in ledger_lines(calls, &after) {
            ledger.execute(params![
                c.namespace_id,
                c.environment.as_str(),
                now,
                -c.cost_micros,
                balance_after,
                c.key_id,
                c.id,
            ])?;
        }
        Ok(())
    }
}

/// Copies the WAL into the database from a connection of its own.
pub struct Checkpointer {
    conn: Connection,
}

impl Checkpointer {
    pub fn open(path: &Path) -> Result<Self> {
        Ok(Checkpointer {
            conn: open(path, Duration::from_secs(1))?,
        })
    }

    /// One PASSIVE checkpoint: copies every frame no reader still needs and
    /// never waits for (or blocks) the writer. Returns the WAL's frames and how
    /// many of them are in the database now.
    pub fn run(&self) -> Result<(i64, i64)> {
        Ok(self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(1)?, r.get(2)?))
            })?)
    }
}
