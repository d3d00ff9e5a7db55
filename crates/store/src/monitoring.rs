//! Monitoring queries (M1–M5, D1–D3): aggregates from the rollups, the request
//! log and the export from raw events, and retention.
//!
//! Policy:
//! - Charts, breakdowns and the dashboard read only the rollup tables
//!   ([`crate::rollups`]), never `usage_events`. The caller picks the grain
//!   (minute rows for short windows, hour and day rows beyond); [`aggregate`]
//!   picks, of that grain, the most compact table that keeps the columns the
//!   query filters and groups on. Histograms are summed in SQL and
//!   percentiles read from the sums.
//! - The request log and the export read raw events through the
//!   `(namespace_id, environment, time)` index, a page at a time, with a
//!   keyset cursor on `(time, id)`, so no query ever holds a range in memory.
//! - Query text is built here from fixed column names; every value is bound.

use sqlx::{AnyConnection, Row};
use tally_common::{Environment, StatusClass, LATENCY_BUCKETS};

use crate::rollups::{hist_columns, hist_sums, Grain, Level, Table};
use crate::usage::CallRecord;
use crate::{bad_value, Result};

/// Counters summed over some rollup rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agg {
    pub calls: i64,
    pub errors: i64,
    pub cost_micros: i64,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub latency_sum_us: i64,
    pub hist: [i64; LATENCY_BUCKETS],
}

impl Default for Agg {
    fn default() -> Self {
        Agg {
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

impl Agg {
    pub fn merge(&mut self, o: &Agg) {
        self.calls += o.calls;
        self.errors += o.errors;
        self.cost_micros += o.cost_micros;
        self.tokens_in += o.tokens_in;
        self.tokens_out += o.tokens_out;
        self.latency_sum_us += o.latency_sum_us;
        for (a, b) in self.hist.iter_mut().zip(o.hist.iter()) {
            *a += b;
        }
    }

    pub fn avg_latency_us(&self) -> i64 {
        if self.calls == 0 {
            0
        } else {
            self.latency_sum_us / self.calls
        }
    }

    pub fn quantile(&self, q: f64) -> i64 {
        tally_common::histogram_quantile(&self.hist, q)
    }
}

/// Dimension filters (M2); `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct Filter<'a> {
    pub api: Option<&'a str>,
    pub model: Option<&'a str>,
    pub endpoint: Option<&'a str>,
    pub request_type: Option<&'a str>,
    pub key_id: Option<&'a str>,
    pub status_class: Option<StatusClass>,
    pub client_id: Option<&'a str>,
}

impl Filter<'_> {
    /// The columns this filter constrains.
    fn columns(&self) -> Vec<&'static str> {
        [
            ("api", self.api.is_some()),
            ("model", self.model.is_some()),
            ("endpoint", self.endpoint.is_some()),
            ("request_type", self.request_type.is_some()),
            ("key_id", self.key_id.is_some()),
            ("status_class", self.status_class.is_some()),
            ("client_id", self.client_id.is_some()),
        ]
        .into_iter()
        .filter_map(|(c, set)| set.then_some(c))
        .collect()
    }
}

/// Which rows: the calls some namespaces made, or the calls any namespace
/// made to the APIs a seller owned at the time (the seller's view).
#[derive(Debug, Clone)]
pub enum Scope<'a> {
    Namespaces(&'a [String]),
    Served(&'a str),
}

/// How rows are grouped.
#[derive(Debug, Clone, Copy)]
pub enum Group {
    /// One total.
    None,
    /// By bucket start rounded down to a multiple of this many ms.
    Time(i64),
    /// By one key column (`api`, `key_id`, `namespace_id`, …).
    Column(&'static str),
}

/// The key columns a breakdown can group by.
pub const GROUP_COLUMNS: [&str; 9] = [
    "api",
    "key_id",
    "client_id",
    "endpoint",
    "namespace_id",
    "subcloud",
    "model",
    "request_type",
    "status_class",
];

enum Arg<'a> {
    Text(&'a str),
    Int(i64),
}

struct Sql<'a> {
    text: String,
    args: Vec<Arg<'a>>,
}

impl<'a> Sql<'a> {
    fn new(text: &str) -> Self {
        Sql {
            text: text.to_owned(),
            args: Vec::new(),
        }
    }
    fn bind(&mut self, a: Arg<'a>) -> String {
        self.args.push(a);
        format!("${}", self.args.len())
    }
    fn text(&mut self, s: &'a str) -> String {
        self.bind(Arg::Text(s))
    }
    fn int(&mut self, i: i64) -> String {
        self.bind(Arg::Int(i))
    }
    fn push(&mut self, s: &str) {
        self.text.push_str(s);
    }
    fn query(&self) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments<'_>> {
        let mut q = sqlx::query(&self.text);
        for a in &self.args {
            q = match a {
                Arg::Text(s) => q.bind(*s),
                Arg::Int(i) => q.bind(*i),
            };
        }
        q
    }
}

fn in_list<'a>(sql: &mut Sql<'a>, column: &str, values: &'a [String]) {
    if values.is_empty() {
        sql.push(" AND 1 = 0");
        return;
    }
    let marks: Vec<String> = values.iter().map(|v| sql.text(v)).collect();
    sql.push(&format!(" AND {column} IN ({})", marks.join(", ")));
}

fn filter_clauses<'a>(sql: &mut Sql<'a>, f: &Filter<'a>) {
    for (col, v) in [
        ("api", f.api),
        ("model", f.model),
        ("endpoint", f.endpoint),
        ("request_type", f.request_type),
        ("key_id", f.key_id),
        ("client_id", f.client_id),
    ] {
        if let Some(v) = v {
            let m = sql.text(v);
            sql.push(&format!(" AND {col} = {m}"));
        }
    }
    if let Some(s) = f.status_class {
        let m = sql.text(s.as_str());
        sql.push(&format!(" AND status_class = {m}"));
    }
}

fn opt_i64(r: &sqlx::any::AnyRow, col: &str) -> Result<i64> {
    Ok(r.try_get::<Option<i64>, _>(col)?.unwrap_or(0))
}

fn agg_from_row(r: &sqlx::any::AnyRow) -> Result<Agg> {
    let mut a = Agg {
        calls: opt_i64(r, "calls")?,
        errors: opt_i64(r, "errors")?,
        cost_micros: opt_i64(r, "cost_micros")?,
        tokens_in: opt_i64(r, "tokens_in")?,
        tokens_out: opt_i64(r, "tokens_out")?,
        latency_sum_us: opt_i64(r, "latency_sum_us")?,
        ..Agg::default()
    };
    for (i, c) in hist_columns().iter().enumerate() {
        a.hist[i] = opt_i64(r, c)?;
    }
    Ok(a)
}

/// One group of [`aggregate`]: its time (for [`Group::Time`]) or column value
/// (for [`Group::Column`]), and its sums.
#[derive(Debug, Clone)]
pub struct Grouped {
    pub time: i64,
    pub key: String,
    pub agg: Agg,
}

/// Sums rollup rows of one grain in `[from, to)` (`None`: unbounded), grouped.
/// A seller's view ([`Scope::Served`]) can filter and group by API and status
/// class only.
#[allow(clippy::too_many_arguments)]
pub async fn aggregate(
    conn: &mut AnyConnection,
    grain: Grain,
    scope: &Scope<'_>,
    environment: Environment,
    from: Option<i64>,
    to: Option<i64>,
    filter: &Filter<'_>,
    group: Group,
) -> Result<Vec<Grouped>> {
    let mut columns = filter.columns();
    if let Group::Column(col) = group {
        columns.push(col);
    }
    let level = match scope {
        Scope::Namespaces(_) => Level::Full,
        Scope::Served(_) => Level::Served,
    };
    let table = Table::pick(grain, level, &columns)
        .ok_or_else(|| bad_value("rollup query columns", &columns.join(", ")))?;
    let mut sql = Sql::new("");
    let (select, group_by) = match group {
        Group::None => (String::new(), String::new()),
        Group::Time(step) => {
            let a = sql.int(step);
            let b = sql.int(step);
            (
                format!("(bucket / {a}) * {b} AS g_time, "),
                " GROUP BY g_time ORDER BY g_time".to_owned(),
            )
        }
        Group::Column(col) => {
            if !GROUP_COLUMNS.contains(&col) {
                return Err(bad_value("group column", col));
            }
            (format!("{col} AS g_key, "), format!(" GROUP BY {col}"))
        }
    };
    sql.push(&format!(
        "SELECT {select}CAST(SUM(calls) AS BIGINT) AS calls, \
         CAST(SUM(errors) AS BIGINT) AS errors, \
         CAST(SUM(cost_micros) AS BIGINT) AS cost_micros, \
         CAST(SUM(tokens_in) AS BIGINT) AS tokens_in, \
         CAST(SUM(tokens_out) AS BIGINT) AS tokens_out, \
         CAST(SUM(latency_sum_us) AS BIGINT) AS latency_sum_us, {} \
         FROM {} WHERE 1 = 1",
        hist_sums(),
        table.name()
    ));
    match scope {
        Scope::Namespaces(ns) => in_list(&mut sql, "namespace_id", ns),
        Scope::Served(seller) => {
            let m = sql.text(seller);
            sql.push(&format!(" AND namespace_id = {m}"));
        }
    }
    let env = sql.text(environment.as_str());
    sql.push(&format!(" AND environment = {env}"));
    if let Some(from) = from {
        let m = sql.int(from);
        sql.push(&format!(" AND bucket >= {m}"));
    }
    if let Some(to) = to {
        let m = sql.int(to);
        sql.push(&format!(" AND bucket < {m}"));
    }
    filter_clauses(&mut sql, filter);
    sql.push(&group_by);
    let rows = sql.query().fetch_all(&mut *conn).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let agg = agg_from_row(r)?;
        if matches!(group, Group::None) && agg.calls == 0 {
            continue;
        }
        out.push(Grouped {
            time: match group {
                Group::Time(_) => r.try_get("g_time")?,
                _ => 0,
            },
            key: match group {
                Group::Column(_) => r.try_get("g_key")?,
                _ => String::new(),
            },
            agg,
        });
    }
    Ok(out)
}

/// Labels for breakdown rows: key names and namespace names by id.
pub async fn names(
    conn: &mut AnyConnection,
    table: &'static str,
    ids: &[String],
) -> Result<Vec<(String, String)>> {
    let (t, col) = match table {
        "api_keys" => ("api_keys", "name"),
        "namespaces" => ("namespaces", "name"),
        other => return Err(bad_value("table", other)),
    };
    let mut out = Vec::new();
    for chunk in ids.chunks(200) {
        let mut sql = Sql::new(&format!("SELECT id, {col} AS name FROM {t} WHERE 1 = 1"));
        in_list(&mut sql, "id", chunk);
        for r in sql.query().fetch_all(&mut *conn).await? {
            out.push((r.try_get("id")?, r.try_get("name")?));
        }
    }
    Ok(out)
}

/// Filters of the request log and the export.
#[derive(Debug, Clone, Default)]
pub struct EventFilter<'a> {
    pub environment: Option<Environment>,
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub dims: Filter<'a>,
    /// Case-insensitive substring of endpoint, API, model, error or client id,
    /// or an exact call id.
    pub search: Option<&'a str>,
}

/// A keyset position in the log: `(time, id)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub time: i64,
    pub id: String,
}

impl Cursor {
    pub fn encode(&self) -> String {
        format!("{}-{}", self.time, self.id)
    }
    pub fn decode(s: &str) -> Option<Cursor> {
        let (t, id) = s.split_once('-')?;
        Some(Cursor {
            time: t.parse().ok()?,
            id: id.to_owned(),
        })
    }
    pub fn of(c: &CallRecord) -> Cursor {
        Cursor {
            time: c.time,
            id: c.id.clone(),
        }
    }
}

/// Direction of a page of raw events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Newest first, older than the cursor.
    NewestFirst,
    /// Oldest first, newer than the cursor.
    OldestFirst,
}

const EVENT_COLUMNS: &str = "id, time, namespace_id, environment, key_id, api, model, endpoint, \
     request_type, status, error, latency_us, upstream_latency_us, tokens_in, tokens_out, \
     cost_micros, client_id";

fn escape_like(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('%');
    for ch in s.to_lowercase().chars() {
        if matches!(ch, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    out.push('%');
    out
}

/// One page of a namespace's raw events (request log, export, live tail).
pub async fn events_page(
    conn: &mut AnyConnection,
    namespace_id: &str,
    f: &EventFilter<'_>,
    cursor: Option<&Cursor>,
    order: Order,
    limit: i64,
) -> Result<Vec<CallRecord>> {
    let pattern = f.search.map(escape_like);
    let mut sql = Sql::new(&format!("SELECT {EVENT_COLUMNS} FROM usage_events WHERE "));
    let ns = sql.text(namespace_id);
    sql.push(&format!("namespace_id = {ns}"));
    if let Some(env) = f.environment {
        let m = sql.text(env.as_str());
        sql.push(&format!(" AND environment = {m}"));
    }
    if let Some(from) = f.from {
        let m = sql.int(from);
        sql.push(&format!(" AND time >= {m}"));
    }
    if let Some(to) = f.to {
        let m = sql.int(to);
        sql.push(&format!(" AND time < {m}"));
    }
    for (col, v) in [
        ("api", f.dims.api),
        ("model", f.dims.model),
        ("endpoint", f.dims.endpoint),
        ("request_type", f.dims.request_type),
        ("key_id", f.dims.key_id),
        ("client_id", f.dims.client_id),
    ] {
        if let Some(v) = v {
            let m = sql.text(v);
            sql.push(&format!(" AND {col} = {m}"));
        }
    }
    if let Some(s) = f.dims.status_class {
        let (lo, hi) = match s {
            StatusClass::Success => (200, 300),
            StatusClass::Redirect => (300, 400),
            StatusClass::ClientError => (400, 500),
            StatusClass::ServerError => (500, 100_000),
        };
        let a = sql.int(lo);
        let b = sql.int(hi);
        if s == StatusClass::ServerError {
            sql.push(&format!(
                " AND (status >= {a} OR status < 200) AND status < {b}"
            ));
        } else {
            sql.push(&format!(" AND status >= {a} AND status < {b}"));
        }
    }
    if let (Some(p), Some(raw)) = (pattern.as_deref(), f.search) {
        let mut ors = Vec::new();
        for col in ["endpoint", "api", "model", "error", "client_id"] {
            let m = sql.text(p);
            ors.push(format!("LOWER({col}) LIKE {m} ESCAPE '\\'"));
        }
        let m = sql.text(raw);
        ors.push(format!("id = {m}"));
        sql.push(&format!(" AND ({})", ors.join(" OR ")));
    }
    if let Some(c) = cursor {
        let t1 = sql.int(c.time);
        let t2 = sql.int(c.time);
        let id = sql.text(&c.id);
        let (op, cmp) = match order {
            Order::NewestFirst => ("<", "<"),
            Order::OldestFirst => (">", ">"),
        };
        sql.push(&format!(
            " AND (time {op} {t1} OR (time = {t2} AND id {cmp} {id}))"
        ));
    }
    let dir = match order {
        Order::NewestFirst => "DESC",
        Order::OldestFirst => "ASC",
    };
    let l = sql.int(limit);
    sql.push(&format!(" ORDER BY time {dir}, id {dir} LIMIT {l}"));
    let rows = sql.query().fetch_all(&mut *conn).await?;
    rows.iter().map(crate::usage::call_from_row).collect()
}

/// How long each kind of row is kept: rows older than these (Unix ms) are
/// deleted; `None` keeps everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cutoffs {
    pub raw: Option<i64>,
    pub minute: Option<i64>,
    pub hour: Option<i64>,
    pub day: Option<i64>,
}

/// Retention: deletes raw events and rollup rows older than the cutoffs,
/// namespace by namespace so each statement uses the namespace's index and
/// no transaction grows with the whole table. Returns the rows deleted.
pub async fn prune(conn: &mut AnyConnection, cutoffs: Cutoffs) -> Result<u64> {
    let namespaces: Vec<String> = sqlx::query("SELECT id FROM namespaces")
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| r.try_get::<String, _>("id"))
        .collect::<std::result::Result<_, _>>()?;
    let mut targets = vec![("usage_events", "time", cutoffs.raw)];
    for t in Table::ALL {
        let cutoff = match t.grain() {
            Grain::Minute => cutoffs.minute,
            Grain::Hour => cutoffs.hour,
            Grain::Day => cutoffs.day,
        };
        targets.push((t.name(), "bucket", cutoff));
    }
    let mut deleted = 0;
    for ns in &namespaces {
        for env in Environment::ALL {
            for (table, column, cutoff) in &targets {
                if let Some(cutoff) = cutoff {
                    deleted += sqlx::query(&format!(
                        "DELETE FROM {table} WHERE namespace_id = $1 AND environment = $2 \
                         AND {column} < $3"
                    ))
                    .bind(ns)
                    .bind(env.as_str())
                    .bind(*cutoff)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected();
                }
            }
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn cursors_round_trip() {
        let c = Cursor {
            time: 1_700_000_000_123,
            id: "call_0190abc".into(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        assert_eq!(Cursor::decode("nope"), None);
    }

    #[test]
    fn search_patterns_escape_wildcards() {
        assert_eq!(escape_like("A_b%"), "%a\\_b\\%%");
    }
}
