//! Recording gateway calls: what one group commit writes, for the SQLite
//! writer thread and the PostgreSQL writer alike.
//!
//! Policy:
//! - One plan, two renderings. A batch is turned into a [`Plan`]: its usage
//!   rows, its rollup cells aggregated per key, its ledger entries and what it
//!   moves on each account. [`crate::recorder::SqliteRecorder`] runs the
//!   plan's statements ([`Plan::writes`], one balance update per account that
//!   returns the new balance ([`Plan::balance_updates`]), then the ledger
//!   entries whose balance-after is counted back from those balances
//!   ([`Plan::ledger`])) on its own rusqlite connection;
//!   [`crate::pg_recorder::PgRecorder`] sends the same rows as arrays to one
//!   statement. A test writes the same calls through both and compares every
//!   table row for row, so the backends cannot drift apart. [`Writer`] opens
//!   the store's one for loaders, benchmarks and tests.
//! - Placeholders are `$N`, numbered in the order they first appear: sqlx
//!   passes them to both databases, and SQLite gives a repeated `$N` the index
//!   of its first appearance, so positional binding agrees on both.
//! - Several rows per statement (`USAGE_CHUNK`, `ROLLUP_CHUNK`): fewer round
//!   trips on PostgreSQL, fewer statement steps on SQLite, well under either
//!   backend's limit on bound parameters.
//! - Text is cleaned before a call is planned ([`CallRecord::clean`]): NUL
//!   characters, which PostgreSQL refuses in text, are dropped and lengths are
//!   capped, so no caller-supplied text can fail the batch it shares with
//!   other tenants' calls.

use std::collections::HashMap;

use sqlx::{AnyConnection, Row};
use tally_common::Environment;

use crate::pg_recorder::PgRecorder;
use crate::recorder::SqliteRecorder;
use crate::rollups::{self, RollupCell, RollupKey, Table};
use crate::usage::CallRecord;
use crate::{Result, Store};

/// Usage rows per multi-row INSERT.
const USAGE_CHUNK: usize = 32;
/// Rollup rows per multi-row upsert (each has 67 parameters).
const ROLLUP_CHUNK: usize = 16;
/// Ledger entries per multi-row INSERT.
const LEDGER_CHUNK: usize = 32;

/// Longest text kept of a caller-supplied field (model, endpoint, client id).
pub const MAX_TEXT: usize = 512;

/// One bound value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Param<'a> {
    Int(i64),
    Text(Option<&'a str>),
}

/// One statement of a plan and its parameters, in placeholder order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement<'a> {
    pub sql: String,
    pub params: Vec<Param<'a>>,
}

const USAGE_COLUMNS: [&str; 17] = [
    "id",
    "time",
    "namespace_id",
    "environment",
    "key_id",
    "api",
    "model",
    "endpoint",
    "request_type",
    "status",
    "error",
    "latency_us",
    "upstream_latency_us",
    "tokens_in",
    "tokens_out",
    "cost_micros",
    "client_id",
];

const LEDGER_COLUMNS: [&str; 9] = [
    "namespace_id",
    "environment",
    "time",
    "kind",
    "amount_micros",
    "balance_after_micros",
    "actor",
    "reference",
    "memo",
];

/// Adds `$3` (a credit, zero or more) to an account's balance, creating its
/// row, and returns the new balance.
const ADD_TO_BALANCE: &str = "INSERT INTO balances (namespace_id, environment, \
     balance_micros, updated_at, reserved_micros) VALUES ($1, $2, $3, $4, 0) \
     ON CONFLICT (namespace_id, environment) \
     DO UPDATE SET balance_micros = balances.balance_micros + $3, updated_at = $4 \
     RETURNING balance_micros";

/// Adds `$1` (a debit, below zero) to an existing account's balance and
/// returns the new balance; `$3` of it was spent from credit leases, so it
/// leaves the account's reservation too (O5; always 0 on one instance). A
/// debit is never an insert: the row to insert would break the balance's
/// floor before any conflict turned it into an update, and an account with
/// no row has nothing to take. No row returned means nothing was there.
const SUBTRACT_FROM_BALANCE: &str = "UPDATE balances SET \
     balance_micros = balance_micros + $1, updated_at = $2, \
     reserved_micros = reserved_micros - $3 \
     WHERE namespace_id = $4 AND environment = $5 RETURNING balance_micros";

/// The statement that moves an account's balance by `delta` (`leased` of a
/// debit came out of credit leases) and returns the new balance.
pub fn balance_statement(
    ns: &str,
    env: Environment,
    delta: i64,
    now: i64,
    leased: i64,
) -> Statement<'_> {
    if delta < 0 {
        Statement {
            sql: SUBTRACT_FROM_BALANCE.to_owned(),
            params: vec![
                Param::Int(delta),
                Param::Int(now),
                Param::Int(leased),
                Param::Text(Some(ns)),
                Param::Text(Some(env.as_str())),
            ],
        }
    } else {
        Statement {
            sql: ADD_TO_BALANCE.to_owned(),
            params: vec![
                Param::Text(Some(ns)),
                Param::Text(Some(env.as_str())),
                Param::Int(delta),
                Param::Int(now),
            ],
        }
    }
}

/// A debit of an account that has no balance row.
pub fn no_balance(ns: &str, env: Environment) -> crate::StoreError {
    crate::StoreError::Conflict(format!("no {env} balance to debit for namespace {ns}"))
}

/// Moves an account's balance by `delta` through sqlx ([`balance_statement`]);
/// the new balance.
pub async fn move_balance(
    conn: &mut AnyConnection,
    ns: &str,
    env: Environment,
    delta: i64,
    now: i64,
) -> Result<i64> {
    let s = balance_statement(ns, env, delta, now, 0);
    match bind(&s).fetch_optional(&mut *conn).await? {
        Some(row) => Ok(row.try_get(0)?),
        None => Err(no_balance(ns, env)),
    }
}

/// `($1,…,$arity),($arity+1,…)` for `rows` rows.
pub(crate) fn values(rows: usize, arity: usize) -> String {
    let mut out = String::with_capacity(rows * arity * 5);
    for r in 0..rows {
        if r > 0 {
            out.push(',');
        }
        out.push('(');
        for c in 0..arity {
            if c > 0 {
                out.push(',');
            }
            out.push('$');
            out.push_str(&(r * arity + c + 1).to_string());
        }
        out.push(')');
    }
    out
}

fn insert_sql(table: &str, columns: &[&str], rows: usize) -> String {
    format!(
        "INSERT INTO {table} ({}) VALUES {}",
        columns.join(", "),
        values(rows, columns.len())
    )
}

/// Who the seller's entries name as their cause.
pub const GATEWAY_ACTOR: &str = "gateway";

/// One ledger entry of a batch of calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Line<'a> {
    pub namespace_id: &'a str,
    pub environment: Environment,
    /// `usage`, `revenue` or `platform_fee`.
    pub kind: &'static str,
    pub amount: i64,
    /// The caller's key for `usage`, [`GATEWAY_ACTOR`] for the seller's entries.
    pub actor: &'a str,
    /// The call id.
    pub reference: &'a str,
    /// Filled in by [`Plan::ledger`].
    pub balance_after: i64,
}

/// The statements that record one batch of calls; see the module policy.
pub struct Plan<'a> {
    calls: &'a [CallRecord],
    lines: Vec<Line<'a>>,
    /// Each account the batch moves and by how much, in lock order.
    totals: Vec<(&'a str, Environment, i64)>,
}

/// What a batch's calls spent of one account's holds (the `usage` entries),
/// which on several instances came out of this instance's credit lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spent<'a> {
    pub namespace_id: &'a str,
    pub environment: Environment,
    pub micros: i64,
}

impl<'a> Plan<'a> {
    /// Plans a batch of (cleaned) calls.
    pub fn new(calls: &'a [CallRecord]) -> Plan<'a> {
        let lines = ledger_lines(calls);
        let totals = totals(&lines);
        Plan {
            calls,
            lines,
            totals,
        }
    }

    /// The usage rows, then the rollup upserts (aggregated per key, in key
    /// order so concurrent writers lock rollup rows in one order).
    pub fn writes(&self) -> Vec<Statement<'a>> {
        let mut out = Vec::new();
        for chunk in self.calls.chunks(USAGE_CHUNK) {
            let mut params = Vec::with_capacity(chunk.len() * USAGE_COLUMNS.len());
            for c in chunk {
                params.extend([
                    Param::Text(Some(&c.id)),
                    Param::Int(c.time),
                    Param::Text(Some(&c.namespace_id)),
                    Param::Text(Some(c.environment.as_str())),
                    Param::Text(Some(&c.key_id)),
                    Param::Text(Some(&c.api)),
                    Param::Text(c.model.as_deref()),
                    Param::Text(Some(&c.endpoint)),
                    Param::Text(Some(c.request_type)),
                    Param::Int(c.status),
                    Param::Text(c.error.as_deref()),
                    Param::Int(c.latency_us),
                    Param::Int(c.upstream_latency_us),
                    Param::Int(c.tokens_in),
                    Param::Int(c.tokens_out),
                    Param::Int(c.cost_micros),
                    Param::Text(c.client_id.as_deref()),
                ]);
            }
            out.push(Statement {
                sql: insert_sql("usage_events", &USAGE_COLUMNS, chunk.len()),
                params,
            });
        }
        let rows = rollups::aggregate(self.calls);
        for table in Table::ALL {
            let mine: Vec<&(RollupKey<'a>, RollupCell)> =
                rows.iter().filter(|(k, _)| k.table == table).collect();
            for chunk in mine.chunks(ROLLUP_CHUNK) {
                let mut params = Vec::with_capacity(chunk.len() * rollups::ARITY);
                for (k, v) in chunk {
                    params.extend([
                        Param::Text(Some(k.namespace_id)),
                        Param::Text(Some(k.environment)),
                        Param::Int(k.bucket),
                        Param::Text(Some(k.api)),
                        Param::Text(Some(k.model)),
                        Param::Text(Some(k.endpoint)),
                        Param::Text(Some(k.request_type)),
                        Param::Text(Some(k.key_id)),
                        Param::Text(Some(k.status_class)),
                        Param::Text(Some(k.client_id)),
                        Param::Text(Some(k.subcloud)),
                        Param::Int(v.calls),
                        Param::Int(v.errors),
                        Param::Int(v.cost_micros),
                        Param::Int(v.tokens_in),
                        Param::Int(v.tokens_out),
                        Param::Int(v.latency_sum_us),
                    ]);
                    params.extend(v.hist.iter().map(|&h| Param::Int(h)));
                }
                out.push(Statement {
                    sql: rollups::upsert_sql(table.name(), chunk.len()),
                    params,
                });
            }
        }
        out
    }

    /// Each account the batch moves and by how much, sorted by account.
    pub(crate) fn totals(&self) -> &[(&'a str, Environment, i64)] {
        &self.totals
    }

    /// The batch's ledger entries, in call order (balance-after not filled in).
    pub(crate) fn lines(&self) -> &[Line<'a>] {
        &self.lines
    }

    /// The accounts the batch moves, in the order of [`Plan::balance_updates`].
    pub fn accounts(&self) -> Vec<(&'a str, Environment)> {
        self.totals.iter().map(|&(ns, env, _)| (ns, env)).collect()
    }

    /// What the batch spent of each account's holds, in [`Plan::totals`] order
    /// (accounts that only earned are left out).
    pub fn spent(&self) -> Vec<Spent<'a>> {
        let mut out: Vec<Spent<'a>> = Vec::new();
        for &(ns, env, _) in &self.totals {
            let micros: i64 = self
                .lines
                .iter()
                .filter(|l| l.kind == "usage" && l.namespace_id == ns && l.environment == env)
                .map(|l| -l.amount)
                .sum();
            if micros > 0 {
                out.push(Spent {
                    namespace_id: ns,
                    environment: env,
                    micros,
                });
            }
        }
        out
    }

    /// One [`balance_statement`] per account the batch moves; each returns
    /// the account's new balance, to be handed to [`Plan::ledger`] in this
    /// order. `from_leases` lists what was taken out of credit leases
    /// ([`Spent`] entries whose lease held them); empty on one instance.
    pub fn balance_updates(&self, now: i64, from_leases: &[Spent<'_>]) -> Vec<Statement<'a>> {
        self.totals
            .iter()
            .map(|&(ns, env, delta)| {
                let leased = from_leases
                    .iter()
                    .find(|s| s.namespace_id == ns && s.environment == env)
                    .map_or(0, |s| s.micros);
                balance_statement(ns, env, delta, now, leased)
            })
            .collect()
    }

    /// The ledger entries, each with its balance-after counted back from the
    /// balances the updates returned.
    pub fn ledger(&mut self, balances: &[i64], now: i64) -> Vec<Statement<'a>> {
        let after: Vec<(&str, Environment, i64)> = self
            .totals
            .iter()
            .zip(balances)
            .map(|(&(ns, env, _), &b)| (ns, env, b))
            .collect();
        settle(&mut self.lines, &after);
        self.lines
            .chunks(LEDGER_CHUNK)
            .map(|chunk| {
                let mut params = Vec::with_capacity(chunk.len() * LEDGER_COLUMNS.len());
                for l in chunk {
                    params.extend([
                        Param::Text(Some(l.namespace_id)),
                        Param::Text(Some(l.environment.as_str())),
                        Param::Int(now),
                        Param::Text(Some(l.kind)),
                        Param::Int(l.amount),
                        Param::Int(l.balance_after),
                        Param::Text(Some(l.actor)),
                        Param::Text(Some(l.reference)),
                        Param::Text(None),
                    ]);
                }
                Statement {
                    sql: insert_sql("ledger_entries", &LEDGER_COLUMNS, chunk.len()),
                    params,
                }
            })
            .collect()
    }
}

/// The ledger entries of a batch, in call order: every call with a cost debits
/// its caller (`usage`); a call to a seller's API also credits the seller with
/// the cost (`revenue`) and debits the platform's share of it (`platform_fee`).
pub(crate) fn ledger_lines(calls: &[CallRecord]) -> Vec<Line<'_>> {
    let mut out = Vec::with_capacity(calls.len());
    for c in calls.iter().filter(|c| c.cost_micros != 0) {
        let line = |namespace_id, kind, amount, actor| Line {
            namespace_id,
            environment: c.environment,
            kind,
            amount,
            actor,
            reference: &c.id,
            balance_after: 0,
        };
        out.push(line(&c.namespace_id, "usage", -c.cost_micros, &c.key_id));
        if let Some(seller) = &c.seller_namespace_id {
            out.push(line(seller, "revenue", c.cost_micros, GATEWAY_ACTOR));
            if c.platform_fee_micros != 0 {
                out.push(line(
                    seller,
                    "platform_fee",
                    -c.platform_fee_micros,
                    GATEWAY_ACTOR,
                ));
            }
        }
    }
    out
}

/// What the entries move on each account (namespace, environment,
/// micro-credits), sorted by account so that concurrent writers lock balance
/// rows in one order.
pub(crate) fn totals<'a>(lines: &[Line<'a>]) -> Vec<(&'a str, Environment, i64)> {
    let mut sums: HashMap<(&'a str, Environment), i64> = HashMap::new();
    for l in lines {
        *sums.entry((l.namespace_id, l.environment)).or_default() += l.amount;
    }
    let mut out: Vec<_> = sums
        .into_iter()
        .map(|((ns, env), total)| (ns, env, total))
        .collect();
    out.sort_by(|a, b| (a.0, a.1.as_str()).cmp(&(b.0, b.1.as_str())));
    out
}

/// What the entries after each one move on its account, within the batch:
/// an entry's balance-after is its account's balance after the whole batch
/// minus this.
pub(crate) fn later(lines: &[Line<'_>]) -> Vec<i64> {
    let mut out = vec![0; lines.len()];
    let mut running: HashMap<(&str, Environment), i64> = HashMap::new();
    for (i, l) in lines.iter().enumerate().rev() {
        let sum = running.entry((l.namespace_id, l.environment)).or_default();
        out[i] = *sum;
        *sum += l.amount;
    }
    out
}

/// Fills in each entry's balance-after, counted back from each account's
/// balance after the whole batch (`after`, as returned for [`totals`]).
pub(crate) fn settle(lines: &mut [Line<'_>], after: &[(&str, Environment, i64)]) {
    let after: HashMap<(&str, Environment), i64> = after
        .iter()
        .map(|&(ns, env, balance)| ((ns, env), balance))
        .collect();
    let later = later(lines);
    for (l, later) in lines.iter_mut().zip(later) {
        if let Some(b) = after.get(&(l.namespace_id, l.environment)) {
            l.balance_after = b - later;
        }
    }
}

/// Drops NUL characters from `text` and cuts it to at most `max` characters.
pub fn clean_text(text: &mut String, max: usize) {
    if text.contains('\0') {
        text.retain(|c| c != '\0');
    }
    if let Some((cut, _)) = text.char_indices().nth(max) {
        text.truncate(cut);
    }
}

impl CallRecord {
    /// Makes every caller-supplied text of the record storable on both
    /// backends: no NUL characters, at most [`MAX_TEXT`] characters.
    pub fn clean(&mut self) {
        for t in [&mut self.endpoint]
            .into_iter()
            .chain(self.model.as_mut())
            .chain(self.client_id.as_mut())
        {
            clean_text(t, MAX_TEXT);
        }
    }
}

/// The gateway's batch writer of a store's backend, for whoever records calls
/// outside the gateway (loaders, benchmarks, tests): the very writers the
/// gateway runs, [`SqliteRecorder`] on SQLite and [`PgRecorder`] on
/// PostgreSQL.
pub enum Writer {
    Sqlite(SqliteRecorder),
    Postgres(PgRecorder),
}

impl Writer {
    /// Opens the backend's writer on a connection of its own. SQLite needs a
    /// database file (not an in-memory database).
    pub async fn open(store: &Store) -> Result<Writer> {
        if let Some(path) = store.sqlite_file() {
            return Ok(Writer::Sqlite(SqliteRecorder::open(path)?));
        }
        match store.pg_recorder().await? {
            Some(pg) => Ok(Writer::Postgres(pg)),
            None => Err(crate::StoreError::UnsupportedUrl),
        }
    }

    /// Records a batch of (cleaned) calls in one transaction, on one instance
    /// (no credit leases). On SQLite this blocks the thread for the commit.
    pub async fn record_calls(&mut self, calls: &[CallRecord], now: i64) -> Result<()> {
        match self {
            Writer::Sqlite(w) => w.record_calls(calls, now),
            Writer::Postgres(w) => w.record_calls(calls, now, None).await,
        }
    }
}

fn bind<'q>(
    s: &'q Statement<'q>,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    let mut q = sqlx::query(&s.sql);
    for p in &s.params {
        q = match p {
            Param::Int(v) => q.bind(*v),
            Param::Text(v) => q.bind(*v),
        };
    }
    q
}

/// The `$N` placeholders of `sql`, each once, in the order they first appear.
#[cfg(test)]
#[allow(clippy::expect_used)]
pub(crate) fn placeholders(sql: &str) -> Vec<usize> {
    let mut seen: Vec<usize> = Vec::new();
    for p in sql.split('$').skip(1) {
        let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
        let n = digits.parse().expect("every `$` is followed by its number");
        if !seen.contains(&n) {
            seen.push(n);
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn placeholders_number_every_row_in_order() {
        assert_eq!(values(2, 3), "($1,$2,$3),($4,$5,$6)");
        let sql = insert_sql("t", &["a", "b"], 1);
        assert_eq!(sql, "INSERT INTO t (a, b) VALUES ($1,$2)");
    }

    #[test]
    fn cleaning_drops_nul_and_caps_length() {
        let mut s = "a\0b".to_owned();
        clean_text(&mut s, 10);
        assert_eq!(s, "ab");
        let mut long = "é".repeat(20);
        clean_text(&mut long, 5);
        assert_eq!(long, "ééééé");
    }

    fn call(id: &str, ns: &str, cost: i64, seller: Option<&str>) -> CallRecord {
        CallRecord {
            id: id.into(),
            time: 1_000,
            namespace_id: ns.into(),
            environment: Environment::Live,
            key_id: "key".into(),
            api: "api".into(),
            model: None,
            endpoint: "/v1/chat/completions".into(),
            request_type: "sync",
            status: 200,
            error: None,
            latency_us: 10,
            upstream_latency_us: 5,
            tokens_in: 1,
            tokens_out: 1,
            cost_micros: cost,
            client_id: None,
            seller_namespace_id: seller.map(str::to_owned),
            platform_fee_micros: cost / 10,
        }
    }

    #[test]
    fn every_statement_binds_as_many_values_as_it_has_placeholders() {
        let calls: Vec<CallRecord> = (0..70)
            .map(|i| {
                call(
                    &format!("c{i}"),
                    "ns",
                    100,
                    (i % 3 == 0).then_some("seller"),
                )
            })
            .collect();
        let mut plan = Plan::new(&calls);
        let mut all = plan.writes();
        let spent = plan.spent();
        let updates = plan.balance_updates(5, &spent);
        let balances: Vec<i64> = updates.iter().map(|_| 1_000).collect();
        all.extend(updates);
        all.extend(plan.ledger(&balances, 5));
        for s in &all {
            let first_seen = placeholders(&s.sql);
            assert_eq!(
                first_seen.iter().max().copied().unwrap(),
                s.params.len(),
                "{}",
                s.sql
            );
            // SQLite numbers `$N` by first appearance: they must appear in order.
            let expected: Vec<usize> = (1..=first_seen.len()).collect();
            assert_eq!(first_seen, expected, "{}", s.sql);
        }
    }

    #[test]
    fn balances_after_count_back_from_the_new_balance() {
        let calls = vec![call("a", "ns", 100, None), call("b", "ns", 50, None)];
        let mut plan = Plan::new(&calls);
        let ledger = plan.ledger(&[850], 7);
        assert_eq!(ledger.len(), 1);
        let after: Vec<&Param<'_>> = ledger[0].params.iter().skip(5).step_by(9).collect();
        assert_eq!(after, [&Param::Int(900), &Param::Int(850)]);
    }
}
