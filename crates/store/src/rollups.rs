//! Monitoring rollups (M6): per-minute and per-hour aggregates of usage events.
//!
//! Policy:
//! - Rollups are written in the same transaction as the usage events they
//!   count, by the gateway's writer ([`crate::recorder`] on SQLite,
//!   [`crate::usage::record_calls`] on PostgreSQL), so a committed call is in
//!   its rollups and the totals of the rollups always equal the raw events.
//! - A batch is aggregated in memory first: one upsert per distinct rollup key
//!   (table, bucket and dimensions) per batch, not one per call.
//! - Latency is kept as a histogram of [`LATENCY_BUCKETS`] integer columns
//!   (`h00`..`h49`, buckets of [`latency_bucket`]): upserts add column to
//!   column, plain SQL on both backends, and a range's histogram is the `SUM`
//!   of its rows, from which percentiles are read ([`histogram_quantile`]).
//!   Integer columns rather than an encoded blob because both backends merge
//!   them in the upsert itself and in `SUM`, with no read-modify-write in the
//!   writer; on SQLite a zero costs one byte of the record header.
//! - Missing dimensions are stored as `''` so they can be part of the key.
//!
//! [`histogram_quantile`]: tally_common::histogram_quantile

use std::collections::HashMap;
use std::sync::OnceLock;

use sqlx::AnyConnection;
use tally_common::{latency_bucket, StatusClass, LATENCY_BUCKETS};

use crate::usage::CallRecord;
use crate::Result;

/// The two rollup tables and the width of their buckets (ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Grain {
    Minute,
    Hour,
}

impl Grain {
    pub const ALL: [Grain; 2] = [Grain::Minute, Grain::Hour];

    pub fn table(self) -> &'static str {
        match self {
            Grain::Minute => "usage_rollup_minute",
            Grain::Hour => "usage_rollup_hour",
        }
    }

    pub fn millis(self) -> i64 {
        match self {
            Grain::Minute => 60_000,
            Grain::Hour => 3_600_000,
        }
    }

    /// Start of the bucket holding `time_ms`.
    pub fn floor(self, time_ms: i64) -> i64 {
        time_ms.div_euclid(self.millis()) * self.millis()
    }
}

/// The dimensions a rollup row is keyed by (M2, M3).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RollupKey<'a> {
    pub grain: Grain,
    pub namespace_id: &'a str,
    pub environment: &'static str,
    pub bucket: i64,
    pub api: &'a str,
    pub model: &'a str,
    pub endpoint: &'a str,
    pub request_type: &'a str,
    pub key_id: &'a str,
    pub status_class: &'static str,
    pub client_id: &'a str,
    pub subcloud: &'a str,
}

/// What a rollup row counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollupCell {
    pub calls: i64,
    pub errors: i64,
    pub cost_micros: i64,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub latency_sum_us: i64,
    pub hist: [i64; LATENCY_BUCKETS],
}

impl Default for RollupCell {
    fn default() -> Self {
        RollupCell {
            calls: 0,
            errors: 0,
            cost_micros: 0,
            tokens_in: 0,
            tokens_out: 0,
            latency_sum_us: 0,
            hist: [0; LATENCY_BUCKETS],
        }
    }
}

impl RollupCell {
    pub fn add_call(&mut self, c: &CallRecord) {
        self.calls += 1;
        if !(200..300).contains(&c.status) {
            self.errors += 1;
        }
        self.cost_micros += c.cost_micros;
        self.tokens_in += c.tokens_in;
        self.tokens_out += c.tokens_out;
        self.latency_sum_us += c.latency_us;
        self.hist[latency_bucket(c.latency_us)] += 1;
    }
}

/// A status code's class as stored in the rollups.
pub fn status_class(status: i64) -> &'static str {
    StatusClass::of(u16::try_from(status).unwrap_or(599)).as_str()
}

/// A batch's rollup rows: one per distinct key, minute and hour, in the order
/// keys first appear (so concurrent writers lock rows in a stable order).
pub fn aggregate(calls: &[CallRecord]) -> Vec<(RollupKey<'_>, RollupCell)> {
    let mut out: Vec<(RollupKey<'_>, RollupCell)> = Vec::new();
    let mut index: HashMap<RollupKey<'_>, usize> = HashMap::new();
    for c in calls {
        for grain in Grain::ALL {
            let key = RollupKey {
                grain,
                namespace_id: &c.namespace_id,
                environment: c.environment.as_str(),
                bucket: grain.floor(c.time),
                api: &c.api,
                model: c.model.as_deref().unwrap_or(""),
                endpoint: &c.endpoint,
                request_type: c.request_type,
                key_id: &c.key_id,
                status_class: status_class(c.status),
                client_id: c.client_id.as_deref().unwrap_or(""),
                subcloud: "",
            };
            let i = *index.entry(key.clone()).or_insert_with(|| {
                out.push((key, RollupCell::default()));
                out.len() - 1
            });
            out[i].1.add_call(c);
        }
    }
    out
}

const KEY_COLUMNS: [&str; 11] = [
    "namespace_id",
    "environment",
    "bucket",
    "api",
    "model",
    "endpoint",
    "request_type",
    "key_id",
    "status_class",
    "client_id",
    "subcloud",
];
const SUM_COLUMNS: [&str; 6] = [
    "calls",
    "errors",
    "cost_micros",
    "tokens_in",
    "tokens_out",
    "latency_sum_us",
];
/// Bound values per row.
pub const ARITY: usize = KEY_COLUMNS.len() + SUM_COLUMNS.len() + LATENCY_BUCKETS;

/// `h00`..`h49`.
pub fn hist_columns() -> &'static [String] {
    static COLS: OnceLock<Vec<String>> = OnceLock::new();
    COLS.get_or_init(|| (0..LATENCY_BUCKETS).map(|i| format!("h{i:02}")).collect())
}

/// `SUM(h00) AS h00, …` cast for PostgreSQL's NUMERIC sums.
pub fn hist_sums() -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    SQL.get_or_init(|| {
        hist_columns()
            .iter()
            .map(|c| format!("CAST(SUM({c}) AS BIGINT) AS {c}"))
            .collect::<Vec<_>>()
            .join(", ")
    })
}

/// The upsert of `rows` rows into `table`; `mark` is the placeholder prefix
/// (`$` for sqlx, `?` for rusqlite), numbered from 1.
pub fn upsert_sql(table: &str, rows: usize, mark: char) -> String {
    let mut cols: Vec<&str> = KEY_COLUMNS.to_vec();
    cols.extend(SUM_COLUMNS);
    cols.extend(hist_columns().iter().map(String::as_str));
    let mut values = String::new();
    for r in 0..rows {
        if r > 0 {
            values.push(',');
        }
        values.push('(');
        for c in 0..ARITY {
            if c > 0 {
                values.push(',');
            }
            values.push(mark);
            values.push_str(&(r * ARITY + c + 1).to_string());
        }
        values.push(')');
    }
    let updates = cols[KEY_COLUMNS.len()..]
        .iter()
        .map(|c| format!("{c} = {table}.{c} + excluded.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "INSERT INTO {table} ({}) VALUES {values} ON CONFLICT ({}) DO UPDATE SET {updates}",
        cols.join(", "),
        KEY_COLUMNS.join(", "),
    )
}

/// Rows per multi-row upsert on the sqlx path (under every bind limit).
const CHUNK: usize = 16;

/// Adds a batch of calls to the rollups through sqlx (PostgreSQL's writer, and
/// SQLite outside the gateway). Run it in the transaction that inserts the calls.
pub async fn record(conn: &mut AnyConnection, calls: &[CallRecord]) -> Result<()> {
    let rows = aggregate(calls);
    for grain in Grain::ALL {
        let mine: Vec<&(RollupKey<'_>, RollupCell)> =
            rows.iter().filter(|(k, _)| k.grain == grain).collect();
        for chunk in mine.chunks(CHUNK) {
            let sql = upsert_sql(grain.table(), chunk.len(), '$');
            let mut q = sqlx::query(&sql);
            for (k, v) in chunk {
                q = q
                    .bind(k.namespace_id)
                    .bind(k.environment)
                    .bind(k.bucket)
                    .bind(k.api)
                    .bind(k.model)
                    .bind(k.endpoint)
                    .bind(k.request_type)
                    .bind(k.key_id)
                    .bind(k.status_class)
                    .bind(k.client_id)
                    .bind(k.subcloud)
                    .bind(v.calls)
                    .bind(v.errors)
                    .bind(v.cost_micros)
                    .bind(v.tokens_in)
                    .bind(v.tokens_out)
                    .bind(v.latency_sum_us);
                for h in v.hist {
                    q = q.bind(h);
                }
            }
            q.execute(&mut *conn).await?;
        }
    }
    Ok(())
}

/// The same on the SQLite writer's own connection, inside its transaction:
/// one cached single-row statement per table, executed once per key.
pub fn record_sqlite(conn: &rusqlite::Connection, calls: &[CallRecord]) -> Result<()> {
    static SQL: OnceLock<[String; 2]> = OnceLock::new();
    let sql = SQL.get_or_init(|| {
        [
            upsert_sql(Grain::Minute.table(), 1, '?'),
            upsert_sql(Grain::Hour.table(), 1, '?'),
        ]
    });
    for (k, v) in aggregate(calls) {
        let mut stmt = conn.prepare_cached(match k.grain {
            Grain::Minute => &sql[0],
            Grain::Hour => &sql[1],
        })?;
        let texts = [
            k.namespace_id,
            k.environment,
            "",
            k.api,
            k.model,
            k.endpoint,
            k.request_type,
            k.key_id,
            k.status_class,
            k.client_id,
            k.subcloud,
        ];
        for (i, t) in texts.iter().enumerate() {
            if i == 2 {
                stmt.raw_bind_parameter(3, k.bucket)?;
            } else {
                stmt.raw_bind_parameter(i + 1, t)?;
            }
        }
        let sums = [
            v.calls,
            v.errors,
            v.cost_micros,
            v.tokens_in,
            v.tokens_out,
            v.latency_sum_us,
        ];
        let base = KEY_COLUMNS.len();
        for (i, n) in sums.iter().chain(v.hist.iter()).enumerate() {
            stmt.raw_bind_parameter(base + i + 1, n)?;
        }
        stmt.raw_execute()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use tally_common::Environment;

    fn call(time: i64, status: i64, latency_us: i64) -> CallRecord {
        CallRecord {
            id: format!("c{time}{status}{latency_us}"),
            time,
            namespace_id: "ns".into(),
            environment: Environment::Test,
            key_id: "k".into(),
            api: "sandbox".into(),
            model: None,
            endpoint: "/v1/chat/completions".into(),
            request_type: "sync",
            status,
            error: None,
            latency_us,
            upstream_latency_us: 0,
            tokens_in: 3,
            tokens_out: 4,
            cost_micros: 10,
            client_id: None,
            seller_namespace_id: None,
            platform_fee_micros: 0,
        }
    }

    #[test]
    fn a_batch_becomes_one_row_per_key_and_grain() {
        let calls = vec![
            call(60_000, 200, 100),
            call(61_000, 200, 5_000),
            call(125_000, 200, 100),
            call(61_500, 502, 100),
        ];
        let rows = aggregate(&calls);
        // minute 1 (2xx), hour 0 (2xx), minute 2 (2xx), minute 1 (5xx), hour 0 (5xx)
        assert_eq!(rows.len(), 5);
        let hour_ok = rows
            .iter()
            .find(|(k, _)| k.grain == Grain::Hour && k.status_class == "2xx")
            .unwrap();
        assert_eq!(hour_ok.1.calls, 3);
        assert_eq!(hour_ok.1.cost_micros, 30);
        assert_eq!(hour_ok.1.hist.iter().sum::<i64>(), 3);
        let errs: i64 = rows
            .iter()
            .filter(|(k, _)| k.grain == Grain::Minute)
            .map(|(_, v)| v.errors)
            .sum();
        assert_eq!(errs, 1);
    }

    #[test]
    fn the_upsert_adds_every_counter() {
        let sql = upsert_sql("t", 2, '$');
        assert!(sql.contains("$134)"));
        assert!(sql.contains("h49 = t.h49 + excluded.h49"));
        assert!(sql.contains("calls = t.calls + excluded.calls"));
        assert!(!sql.contains("api = t.api"));
    }
}
