//! Monitoring rollups (M6): per-minute and per-hour aggregates of usage events.
//!
//! Policy:
//! - Rollups are written in the same transaction as the usage events they
//!   count, by the gateway's writer (the statements of [`crate::recording`]),
//!   so a committed call is in
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

use tally_common::{latency_bucket, StatusClass, LATENCY_BUCKETS};

use crate::usage::CallRecord;

/// The width of a rollup table's buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Grain {
    Minute,
    Hour,
    /// A UTC day.
    Day,
}

impl Grain {
    pub fn millis(self) -> i64 {
        match self {
            Grain::Minute => 60_000,
            Grain::Hour => 3_600_000,
            Grain::Day => 86_400_000,
        }
    }

    /// Start of the bucket holding `time_ms`.
    pub fn floor(self, time_ms: i64) -> i64 {
        time_ms.div_euclid(self.millis()) * self.millis()
    }
}

/// Which dimensions a rollup table keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Level {
    /// Every dimension of M2/M3: any filter, any breakdown.
    Full,
    /// A namespace's calls by API and status class only (the other
    /// dimensions `''`): the dashboard and unfiltered charts.
    Api,
    /// The calls made to a seller's APIs by any namespace, by API and status
    /// class, keyed by the seller (`namespace_id` holds the API's owner).
    Served,
    /// A namespace's calls by key, client id and status class only (API,
    /// model, endpoint and request type `''`): breakdowns by key or client id
    /// and series filtered by them, without the rows every API, endpoint and
    /// request type multiply them into.
    Caller,
}

impl Level {
    /// Whether rows of this level can answer a filter or grouping on `column`.
    pub fn keeps(self, column: &str) -> bool {
        match self {
            Level::Full => true,
            Level::Api => matches!(column, "namespace_id" | "api" | "status_class"),
            Level::Served => matches!(column, "api" | "status_class"),
            Level::Caller => matches!(
                column,
                "namespace_id" | "key_id" | "client_id" | "status_class"
            ),
        }
    }
}

/// The rollup tables the writer maintains: each is one more upsert statement
/// per batch (per distinct key and table), so a table exists only for queries
/// that would otherwise read many full-dimension rows. At minute grain only
/// the unfiltered series has its own table (the last hour by minute); a
/// minute breakdown by key or client id reads full rows, a few hours at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Minute,
    Hour,
    Day,
    ApiMinute,
    ApiHour,
    ApiDay,
    ServedHour,
    ServedDay,
    CallerHour,
    CallerDay,
}

impl Table {
    pub const ALL: [Table; 10] = [
        Table::Minute,
        Table::Hour,
        Table::Day,
        Table::ApiMinute,
        Table::ApiHour,
        Table::ApiDay,
        Table::ServedHour,
        Table::ServedDay,
        Table::CallerHour,
        Table::CallerDay,
    ];

    pub fn grain(self) -> Grain {
        match self {
            Table::Minute | Table::ApiMinute => Grain::Minute,
            Table::Hour | Table::ApiHour | Table::ServedHour | Table::CallerHour => Grain::Hour,
            Table::Day | Table::ApiDay | Table::ServedDay | Table::CallerDay => Grain::Day,
        }
    }

    pub fn level(self) -> Level {
        match self {
            Table::Minute | Table::Hour | Table::Day => Level::Full,
            Table::ApiMinute | Table::ApiHour | Table::ApiDay => Level::Api,
            Table::ServedHour | Table::ServedDay => Level::Served,
            Table::CallerHour | Table::CallerDay => Level::Caller,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Table::Minute => "usage_rollup_minute",
            Table::Hour => "usage_rollup_hour",
            Table::Day => "usage_rollup_day",
            Table::ApiMinute => "usage_rollup_api_minute",
            Table::ApiHour => "usage_rollup_api_hour",
            Table::ApiDay => "usage_rollup_api_day",
            Table::ServedHour => "usage_rollup_served_hour",
            Table::ServedDay => "usage_rollup_served_day",
            Table::CallerHour => "usage_rollup_caller_hour",
            Table::CallerDay => "usage_rollup_caller_day",
        }
    }

    /// The most compact table of `grain` whose rows answer a query of `scope`
    /// ([`Level::Served`] for a seller's view, else the caller's own calls)
    /// that filters or groups on `columns`. Levels are tried from the fewest
    /// rows per bucket (API and status class: a handful) to the most (every
    /// dimension).
    pub fn pick(grain: Grain, scope: Level, columns: &[&str]) -> Option<Table> {
        let levels: &[Level] = match scope {
            Level::Served => &[Level::Served],
            _ => &[Level::Api, Level::Caller, Level::Full],
        };
        levels.iter().find_map(|l| {
            Table::ALL.into_iter().find(|t| {
                t.grain() == grain && t.level() == *l && columns.iter().all(|c| l.keeps(c))
            })
        })
    }
}

/// The dimensions a rollup row is keyed by (M2, M3); ordered by table first,
/// the order in which a batch's upserts lock rows.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RollupKey<'a> {
    pub table: Table,
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

impl<'a> RollupKey<'a> {
    /// The row of `table` that counts call `c`, if that table counts it.
    fn of(table: Table, c: &'a CallRecord) -> Option<RollupKey<'a>> {
        let namespace_id = match table.level() {
            Level::Served => c.seller_namespace_id.as_deref()?,
            _ => &c.namespace_id,
        };
        let level = table.level();
        let dim = |column: &str, v: &'a str| if level.keeps(column) { v } else { "" };
        Some(RollupKey {
            table,
            namespace_id,
            environment: c.environment.as_str(),
            bucket: table.grain().floor(c.time),
            api: dim("api", &c.api),
            model: dim("model", c.model.as_deref().unwrap_or("")),
            endpoint: dim("endpoint", &c.endpoint),
            request_type: dim("request_type", c.request_type),
            key_id: dim("key_id", &c.key_id),
            status_class: status_class(c.status),
            client_id: dim("client_id", c.client_id.as_deref().unwrap_or("")),
            subcloud: "",
        })
    }
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

/// A batch's rollup rows: one per distinct key and table, sorted by table
/// and key so that concurrent writers lock rows in one order.
pub fn aggregate(calls: &[CallRecord]) -> Vec<(RollupKey<'_>, RollupCell)> {
    let mut out: Vec<(RollupKey<'_>, RollupCell)> = Vec::new();
    let mut index: HashMap<RollupKey<'_>, usize> = HashMap::new();
    for c in calls {
        for key in Table::ALL.iter().filter_map(|t| RollupKey::of(*t, c)) {
            let i = *index.entry(key.clone()).or_insert_with(|| {
                out.push((key, RollupCell::default()));
                out.len() - 1
            });
            out[i].1.add_call(c);
        }
    }
    out.sort_by(|(a, _), (b, _)| a.cmp(b));
    out
}

pub(crate) const KEY_COLUMNS: [&str; 11] = [
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
pub(crate) const SUM_COLUMNS: [&str; 6] = [
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

/// The upsert of `rows` rows into `table`, placeholders `$1`… in order.
pub fn upsert_sql(table: &str, rows: usize) -> String {
    upsert_from(
        table,
        &format!("VALUES {}", crate::recording::values(rows, ARITY)),
    )
}

/// The upsert of `table`'s rows produced by `source` (`VALUES …`, or
/// `SELECT * FROM …` yielding every column in order): sums and histogram
/// are added to an existing row's.
pub fn upsert_from(table: &str, source: &str) -> String {
    let mut cols: Vec<&str> = KEY_COLUMNS.to_vec();
    cols.extend(SUM_COLUMNS);
    cols.extend(hist_columns().iter().map(String::as_str));
    let updates = cols[KEY_COLUMNS.len()..]
        .iter()
        .map(|c| format!("{c} = {table}.{c} + excluded.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "INSERT INTO {table} ({}) {source} ON CONFLICT ({}) DO UPDATE SET {updates}",
        cols.join(", "),
        KEY_COLUMNS.join(", "),
    )
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
    fn a_batch_becomes_one_row_per_key_and_table() {
        let mut other_key = call(62_000, 200, 100);
        other_key.key_id = "k2".into();
        other_key.seller_namespace_id = Some("seller".into());
        let calls = vec![
            call(60_000, 200, 100),
            call(61_000, 200, 5_000),
            call(125_000, 200, 100),
            call(61_500, 502, 100),
            other_key,
        ];
        let rows = aggregate(&calls);
        let count = |t: Table| rows.iter().filter(|(k, _)| k.table == t).count();
        // minute 1 (2xx k, 5xx k, 2xx k2), minute 2 (2xx k)
        assert_eq!(count(Table::Minute), 4);
        // 2xx k, 5xx k, 2xx k2 in the hour and in the day
        assert_eq!(count(Table::Hour), 3);
        assert_eq!(count(Table::Day), 3);
        // the key is not kept: 2xx and 5xx
        assert_eq!(count(Table::ApiHour), 2);
        assert_eq!(count(Table::ApiDay), 2);
        // minute 1 (2xx, 5xx), minute 2 (2xx)
        assert_eq!(count(Table::ApiMinute), 3);
        // the API is not kept: (k, 2xx), (k, 5xx), (k2, 2xx)
        assert_eq!(count(Table::CallerHour), 3);
        assert_eq!(count(Table::CallerDay), 3);
        let caller = rows
            .iter()
            .find(|(k, _)| {
                k.table == Table::CallerDay && k.key_id == "k" && k.status_class == "2xx"
            })
            .unwrap();
        assert_eq!(
            (
                caller.0.api,
                caller.0.endpoint,
                caller.0.request_type,
                caller.0.model
            ),
            ("", "", "", "")
        );
        assert_eq!(caller.1.calls, 3);
        // only the call to the seller's API, keyed by the seller
        assert_eq!(count(Table::ServedHour), 1);
        let served = rows
            .iter()
            .find(|(k, _)| k.table == Table::ServedDay)
            .unwrap();
        assert_eq!((served.0.namespace_id, served.0.key_id), ("seller", ""));
        assert_eq!(served.1.calls, 1);
        let api_ok = rows
            .iter()
            .find(|(k, _)| k.table == Table::ApiHour && k.status_class == "2xx")
            .unwrap();
        assert_eq!(api_ok.1.calls, 4);
        assert_eq!(api_ok.1.cost_micros, 40);
        assert_eq!(api_ok.1.hist.iter().sum::<i64>(), 4);
        for t in Table::ALL {
            let errs: i64 = rows
                .iter()
                .filter(|(k, _)| k.table == t)
                .map(|(_, v)| v.errors)
                .sum();
            let want = i64::from(t.level() != Level::Served);
            assert_eq!(errs, want, "{t:?}");
        }
        let mut sorted = rows.clone();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(rows, sorted);
    }

    #[test]
    fn queries_read_the_most_compact_table_that_keeps_their_columns() {
        assert_eq!(
            Table::pick(Grain::Hour, Level::Full, &["api"]),
            Some(Table::ApiHour)
        );
        assert_eq!(
            Table::pick(Grain::Day, Level::Full, &["api", "key_id"]),
            Some(Table::Day)
        );
        assert_eq!(
            Table::pick(Grain::Minute, Level::Full, &[]),
            Some(Table::ApiMinute)
        );
        assert_eq!(
            Table::pick(Grain::Minute, Level::Full, &["key_id"]),
            Some(Table::Minute)
        );
        assert_eq!(
            Table::pick(Grain::Hour, Level::Full, &["key_id"]),
            Some(Table::CallerHour)
        );
        assert_eq!(
            Table::pick(Grain::Day, Level::Full, &["client_id"]),
            Some(Table::CallerDay)
        );
        assert_eq!(
            Table::pick(Grain::Day, Level::Full, &["key_id", "status_class"]),
            Some(Table::CallerDay)
        );
        assert_eq!(
            Table::pick(Grain::Hour, Level::Full, &["key_id", "api"]),
            Some(Table::Hour)
        );
        assert_eq!(
            Table::pick(Grain::Day, Level::Full, &["namespace_id", "status_class"]),
            Some(Table::ApiDay)
        );
        assert_eq!(
            Table::pick(Grain::Day, Level::Served, &["status_class"]),
            Some(Table::ServedDay)
        );
        assert_eq!(Table::pick(Grain::Hour, Level::Served, &["key_id"]), None);
        assert_eq!(Table::pick(Grain::Minute, Level::Served, &[]), None);
    }

    #[test]
    fn the_upsert_adds_every_counter() {
        let sql = upsert_sql("t", 2);
        assert!(sql.contains("$134)"));
        assert!(sql.contains("h49 = t.h49 + excluded.h49"));
        assert!(sql.contains("calls = t.calls + excluded.calls"));
        assert!(!sql.contains("api = t.api"));
    }
}
