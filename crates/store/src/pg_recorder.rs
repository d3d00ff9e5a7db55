//! The gateway's group commit on PostgreSQL: a connection of its own and one
//! statement per batch.
//!
//! Policy:
//! - A batch is one round trip. The rows of [`crate::recording::Plan`] (usage
//!   events, every rollup table's upserts, the lease spending, the balance
//!   moves and the ledger entries) are sent as arrays and written by one
//!   statement of data-modifying `WITH` clauses reading them with `UNNEST`.
//!   Text columns are an array each; the integers of a usage row, and the
//!   sums and histogram of a rollup row, go in one flat array read by the
//!   row's ordinal, and every rollup table's rows share one set of arrays:
//!   each array PostgreSQL unnests costs about 6 µs per execution however
//!   short it is (measured with `EXECUTE` in psql), and an array per column
//!   of every rollup table (about 700) made a batch of one call 2 ms slower
//!   than the dozen statements it replaced. Its text does not depend on the batch's size, so the
//!   connection prepares it once; a single statement commits atomically on
//!   its own, with no `BEGIN` and `COMMIT` round trips, and it returns after
//!   PostgreSQL has flushed its WAL (`synchronous_commit` is left on: an
//!   answered call is durable).
//! - The statement always runs with its generic plan (`plan_cache_mode`):
//!   planning it per batch cost more than running it.
//! - The connection is not from the pool: the writer never waits behind the
//!   dashboard's queries for one, and it goes through the native PostgreSQL
//!   driver (arrays are not part of the `Any` driver).
//! - The same rules as the SQLite writer, in SQL: a debit is an `UPDATE`
//!   (never an upsert; the floor is checked on the row an upsert would
//!   insert), a credit an upsert; what the calls spent leaves this instance's
//!   credit lease and the account's reservation when the lease still holds it
//!   (O5); each ledger entry's balance-after is the account's new balance
//!   minus the entries after it in the batch. A debit of an account with no
//!   balance row leaves that balance-after `NULL`, which the ledger's
//!   `NOT NULL` refuses, so the statement fails whole and the writer isolates
//!   the call, as on SQLite.
//! - Lock order: the balance and rollup rows are given sorted (accounts and
//!   rollup keys), as the per-statement writer did; concurrent instances that
//!   still deadlock are retried by the writer (`40P01`).

use std::fmt::Write as _;
use std::sync::OnceLock;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Connection, Row};
use tally_common::LATENCY_BUCKETS;

use crate::recording::Plan;
use crate::rollups::{self, Table};
use crate::usage::CallRecord;
use crate::Result;

/// Records batches of gateway calls on PostgreSQL; see the module policy.
pub struct PgRecorder {
    conn: PgConnection,
}

impl std::fmt::Debug for PgRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgRecorder").finish_non_exhaustive()
    }
}

/// The usage columns, their array types, in `usage_events` order.
const USAGE: [(&str, &str); 17] = [
    ("id", "text"),
    ("time", "int8"),
    ("namespace_id", "text"),
    ("environment", "text"),
    ("key_id", "text"),
    ("api", "text"),
    ("model", "text"),
    ("endpoint", "text"),
    ("request_type", "text"),
    ("status", "int8"),
    ("error", "text"),
    ("latency_us", "int8"),
    ("upstream_latency_us", "int8"),
    ("tokens_in", "int8"),
    ("tokens_out", "int8"),
    ("cost_micros", "int8"),
    ("client_id", "text"),
];

/// Integer columns of a usage row.
const USAGE_INTS: usize = 7;
/// Integers of a rollup row: the sums, then the histogram.
const ROLLUP_INTS: usize = rollups::SUM_COLUMNS.len() + LATENCY_BUCKETS;

/// `UNNEST($from::t1[], $from+1::t2[], …)` for `types`; advances `from`.
fn unnest(next: &mut usize, types: &[&str]) -> String {
    let mut out = String::from("UNNEST(");
    for (i, t) in types.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "${}::{t}[]", *next);
        *next += 1;
    }
    out.push(')');
    out
}

/// The statement of a batch; see the module policy. Parameters, in order:
/// the usage columns, each rollup table's columns (key, sums, histogram), the
/// time, the lease holder, the spending (account, micros), the moves
/// (account, delta) and the ledger (account, kind, amount, later, actor,
/// reference).
fn statement() -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    SQL.get_or_init(|| {
        let mut next = 1;
        let mut sql = String::from("WITH ");
        // Usage: the text columns as arrays, the integers as one flat array
        // (`USAGE_INTS` per row), read by the row's ordinal.
        let texts: Vec<&str> = USAGE
            .iter()
            .filter(|(_, t)| *t == "text")
            .map(|(c, _)| *c)
            .collect();
        let text_arrays = unnest(&mut next, &vec!["text"; texts.len()]);
        let ints = next;
        next += 1;
        let mut int_i = 0;
        let select: Vec<String> = USAGE
            .iter()
            .map(|(c, t)| {
                if *t == "text" {
                    format!("u.{c}")
                } else {
                    int_i += 1;
                    format!("(${ints}::int8[])[(u.n::int4 - 1) * {USAGE_INTS} + {int_i}]")
                }
            })
            .collect();
        let _ = write!(
            sql,
            "u AS (INSERT INTO usage_events ({}) SELECT {} FROM {text_arrays} \
             WITH ORDINALITY AS u({}, n)), ",
            USAGE.iter().map(|(c, _)| *c).collect::<Vec<_>>().join(", "),
            select.join(", "),
            texts.join(", "),
        );
        // Rollups: every table's rows in one set of arrays, `t` naming the
        // table (its index in `Table::ALL`), the key columns as arrays and
        // the sums and histogram as one flat array (`ROLLUP_INTS` per row).
        let mut types = vec!["int8"];
        types.extend(
            rollups::KEY_COLUMNS
                .iter()
                .map(|c| if *c == "bucket" { "int8" } else { "text" }),
        );
        let keys = unnest(&mut next, &types);
        let values = next;
        next += 1;
        let _ = write!(
            sql,
            "rk AS (SELECT * FROM {keys} WITH ORDINALITY AS rk(t, {}, n)), ",
            rollups::KEY_COLUMNS.join(", ")
        );
        let mut cells: Vec<String> = rollups::KEY_COLUMNS
            .iter()
            .map(|c| (*c).to_owned())
            .collect();
        cells.extend(
            (1..=ROLLUP_INTS)
                .map(|j| format!("(${values}::int8[])[(n::int4 - 1) * {ROLLUP_INTS} + {j}]")),
        );
        let cells = cells.join(", ");
        for (i, table) in Table::ALL.iter().enumerate() {
            let _ = write!(
                sql,
                "r{i} AS ({}), ",
                rollups::upsert_from(
                    table.name(),
                    &format!("SELECT {cells} FROM rk WHERE t = {i} ORDER BY n")
                )
            );
        }
        let now = next;
        let holder = next + 1;
        next += 2;
        let spending = unnest(&mut next, &["text", "text", "int8"]);
        let moves = unnest(&mut next, &["text", "text", "int8"]);
        let ledger = unnest(
            &mut next,
            &["text", "text", "text", "int8", "int8", "text", "text"],
        );
        let _ = write!(
            sql,
            "spent AS (UPDATE credit_leases l SET amount_micros = l.amount_micros - s.micros, \
               updated_at = ${now} \
             FROM {spending} AS s(ns, env, micros) \
             WHERE l.instance_id = ${holder}::text AND l.namespace_id = s.ns \
               AND l.environment = s.env AND l.amount_micros >= s.micros \
             RETURNING l.namespace_id, l.environment, s.micros), \
             d AS (SELECT * FROM {moves} AS d(ns, env, delta)), \
             debited AS (UPDATE balances b SET balance_micros = b.balance_micros + d.delta, \
               updated_at = ${now}, reserved_micros = b.reserved_micros - COALESCE(\
                 (SELECT s.micros FROM spent s WHERE s.namespace_id = d.ns \
                  AND s.environment = d.env), 0) \
             FROM d WHERE d.delta < 0 AND b.namespace_id = d.ns AND b.environment = d.env \
             RETURNING b.namespace_id, b.environment, b.balance_micros), \
             credited AS (INSERT INTO balances (namespace_id, environment, balance_micros, \
               updated_at, reserved_micros) \
             SELECT ns, env, delta, ${now}, 0 FROM d WHERE delta >= 0 \
             ON CONFLICT (namespace_id, environment) DO UPDATE SET \
               balance_micros = balances.balance_micros + excluded.balance_micros, \
               updated_at = excluded.updated_at \
             RETURNING namespace_id, environment, balance_micros), \
             moved AS (SELECT * FROM debited UNION ALL SELECT * FROM credited), \
             entries AS (INSERT INTO ledger_entries (namespace_id, environment, time, kind, \
               amount_micros, balance_after_micros, actor, reference, memo) \
             SELECT e.ns, e.env, ${now}, e.kind, e.amount, \
               (SELECT m.balance_micros FROM moved m WHERE m.namespace_id = e.ns \
                AND m.environment = e.env) - e.later, e.actor, e.reference, NULL \
             FROM {ledger} WITH ORDINALITY AS e(ns, env, kind, amount, later, actor, reference, n) \
             ORDER BY e.n RETURNING 1) \
             SELECT (SELECT count(*) FROM moved), (SELECT count(*) FROM entries)"
        );
        sql
    })
}

/// One column of arrays: text or integers.
enum Column<'a> {
    Text(Vec<Option<&'a str>>),
    Int(Vec<i64>),
}

/// One text column of a rollup table's rows.
fn key_texts<'r>(
    rows: &[&(rollups::RollupKey<'r>, rollups::RollupCell)],
    f: impl Fn(&rollups::RollupKey<'r>) -> &'r str,
) -> Column<'r> {
    Column::Text(rows.iter().map(|(k, _)| Some(f(k))).collect())
}

impl PgRecorder {
    /// Opens the writer's own connection with the pool's options.
    pub async fn connect(options: &PgConnectOptions) -> Result<Self> {
        // PostgreSQL plans a prepared statement afresh for its first runs and
        // keeps doing so while a plan for the actual array lengths looks
        // cheaper than the generic one, which it always does for short
        // batches: planning ten `WITH` clauses cost milliseconds per batch.
        // The generic plan fits every batch.
        let options = options
            .clone()
            .options([("plan_cache_mode", "force_generic_plan")]);
        let conn = PgConnection::connect_with(&options).await?;
        Ok(PgRecorder { conn })
    }

    /// Records a batch of (cleaned) calls in one statement; see the module
    /// policy. `lease_holder` is this instance when its holds come from
    /// credit leases (O5). Nothing is written unless all of it is.
    pub async fn record_calls(
        &mut self,
        calls: &[CallRecord],
        now: i64,
        lease_holder: Option<&str>,
    ) -> Result<()> {
        let plan = Plan::new(calls);
        let mut columns: Vec<Column<'_>> = Vec::new();

        let text =
            |f: &dyn Fn(&CallRecord) -> Option<&str>| Column::Text(calls.iter().map(f).collect());
        columns.extend([
            text(&|c| Some(&c.id)),
            text(&|c| Some(&c.namespace_id)),
            text(&|c| Some(c.environment.as_str())),
            text(&|c| Some(&c.key_id)),
            text(&|c| Some(&c.api)),
            text(&|c| c.model.as_deref()),
            text(&|c| Some(&c.endpoint)),
            text(&|c| Some(c.request_type)),
            text(&|c| c.error.as_deref()),
            text(&|c| c.client_id.as_deref()),
        ]);
        let mut ints = Vec::with_capacity(calls.len() * USAGE_INTS);
        for c in calls {
            ints.extend([
                c.time,
                c.status,
                c.latency_us,
                c.upstream_latency_us,
                c.tokens_in,
                c.tokens_out,
                c.cost_micros,
            ]);
        }
        columns.push(Column::Int(ints));

        let rows = rollups::aggregate(calls);
        let refs: Vec<_> = rows.iter().collect();
        let index = |t: Table| Table::ALL.iter().position(|x| *x == t).unwrap_or(0) as i64;
        columns.push(Column::Int(
            refs.iter().map(|(k, _)| index(k.table)).collect(),
        ));
        columns.extend([
            key_texts(&refs, |k| k.namespace_id),
            key_texts(&refs, |k| k.environment),
            Column::Int(refs.iter().map(|(k, _)| k.bucket).collect()),
            key_texts(&refs, |k| k.api),
            key_texts(&refs, |k| k.model),
            key_texts(&refs, |k| k.endpoint),
            key_texts(&refs, |k| k.request_type),
            key_texts(&refs, |k| k.key_id),
            key_texts(&refs, |k| k.status_class),
            key_texts(&refs, |k| k.client_id),
            key_texts(&refs, |k| k.subcloud),
        ]);
        let mut values = Vec::with_capacity(rows.len() * ROLLUP_INTS);
        for (_, v) in &rows {
            values.extend([
                v.calls,
                v.errors,
                v.cost_micros,
                v.tokens_in,
                v.tokens_out,
                v.latency_sum_us,
            ]);
            values.extend(v.hist);
        }
        columns.push(Column::Int(values));

        let spent = if lease_holder.is_some() {
            plan.spent()
        } else {
            Vec::new()
        };
        let totals = plan.totals();
        let lines = plan.lines();
        let later = crate::recording::later(lines);

        let mut q = sqlx::query(statement());
        for column in columns {
            q = match column {
                Column::Text(v) => q.bind(v),
                Column::Int(v) => q.bind(v),
            };
        }
        let row = q
            .bind(now)
            .bind(lease_holder)
            .bind(spent.iter().map(|s| s.namespace_id).collect::<Vec<_>>())
            .bind(
                spent
                    .iter()
                    .map(|s| s.environment.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(spent.iter().map(|s| s.micros).collect::<Vec<_>>())
            .bind(totals.iter().map(|t| t.0).collect::<Vec<_>>())
            .bind(totals.iter().map(|t| t.1.as_str()).collect::<Vec<_>>())
            .bind(totals.iter().map(|t| t.2).collect::<Vec<_>>())
            .bind(lines.iter().map(|l| l.namespace_id).collect::<Vec<_>>())
            .bind(
                lines
                    .iter()
                    .map(|l| l.environment.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(lines.iter().map(|l| l.kind).collect::<Vec<_>>())
            .bind(lines.iter().map(|l| l.amount).collect::<Vec<_>>())
            .bind(later)
            .bind(lines.iter().map(|l| l.actor).collect::<Vec<_>>())
            .bind(lines.iter().map(|l| l.reference).collect::<Vec<_>>())
            .fetch_one(&mut self.conn)
            .await?;
        let (moved, entries): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
        debug_assert_eq!(moved as usize, totals.len());
        debug_assert_eq!(entries as usize, lines.len());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn the_statement_uses_every_parameter_it_binds() {
        let seen = crate::recording::placeholders(statement());
        // Usage (texts, integers), rollups (table, keys, integers), now,
        // holder, spending (3), moves (3), ledger (7).
        let usage = USAGE.iter().filter(|(_, t)| *t == "text").count() + 1;
        let rollup = 1 + rollups::KEY_COLUMNS.len() + 1;
        assert_eq!(seen.len(), usage + rollup + 2 + 3 + 3 + 7);
        let mut sorted = seen.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (1..=seen.len()).collect::<Vec<_>>());
        assert_eq!(
            USAGE_INTS,
            USAGE.iter().filter(|(_, t)| *t == "int8").count()
        );
    }
}
