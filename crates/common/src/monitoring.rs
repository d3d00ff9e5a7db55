//! Monitoring (M1–M5) and the dashboard summary (D1–D3, D7).
//!
//! Policy: charts, breakdowns and the dashboard are answered from the minute,
//! hour and day rollups, never from raw events; the request log and the export
//! read raw events a page at a time. Times on the wire are RFC 3339 UTC strings,
//! money is integer micro-credits, latencies are integer microseconds.
//! Percentiles come from mergeable log-scale histograms, so they are exact to
//! within one histogram bucket (at most 41% wide; see [`latency_bucket`]).

use serde::{Deserialize, Serialize};

use crate::{Environment, UsageEvent};

/// A preset range ending now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum TimeRange {
    #[serde(rename = "1h")]
    Hour1,
    #[serde(rename = "6h")]
    Hours6,
    #[serde(rename = "24h")]
    Hours24,
    #[serde(rename = "7d")]
    Days7,
    #[serde(rename = "30d")]
    Days30,
    #[serde(rename = "90d")]
    Days90,
}

impl TimeRange {
    pub const ALL: [TimeRange; 6] = [
        TimeRange::Hour1,
        TimeRange::Hours6,
        TimeRange::Hours24,
        TimeRange::Days7,
        TimeRange::Days30,
        TimeRange::Days90,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TimeRange::Hour1 => "1h",
            TimeRange::Hours6 => "6h",
            TimeRange::Hours24 => "24h",
            TimeRange::Days7 => "7d",
            TimeRange::Days30 => "30d",
            TimeRange::Days90 => "90d",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Length in seconds.
    pub fn seconds(self) -> i64 {
        match self {
            TimeRange::Hour1 => 3_600,
            TimeRange::Hours6 => 6 * 3_600,
            TimeRange::Hours24 => 24 * 3_600,
            TimeRange::Days7 => 7 * 86_400,
            TimeRange::Days30 => 30 * 86_400,
            TimeRange::Days90 => 90 * 86_400,
        }
    }

    /// The bucket a chart of this range uses unless one is asked for.
    pub fn default_bucket(self) -> Bucket {
        match self {
            TimeRange::Hour1 | TimeRange::Hours6 => Bucket::Minute,
            TimeRange::Hours24 | TimeRange::Days7 => Bucket::Hour,
            TimeRange::Days30 | TimeRange::Days90 => Bucket::Day,
        }
    }
}

/// Width of one point of a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Bucket {
    Minute,
    Hour,
    Day,
}

impl Bucket {
    pub fn as_str(self) -> &'static str {
        match self {
            Bucket::Minute => "minute",
            Bucket::Hour => "hour",
            Bucket::Day => "day",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "minute" => Some(Bucket::Minute),
            "hour" => Some(Bucket::Hour),
            "day" => Some(Bucket::Day),
            _ => None,
        }
    }

    pub fn seconds(self) -> i64 {
        match self {
            Bucket::Minute => 60,
            Bucket::Hour => 3_600,
            Bucket::Day => 86_400,
        }
    }
}

/// The class of the HTTP status a caller got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum StatusClass {
    #[serde(rename = "2xx")]
    Success,
    #[serde(rename = "3xx")]
    Redirect,
    #[serde(rename = "4xx")]
    ClientError,
    #[serde(rename = "5xx")]
    ServerError,
}

impl StatusClass {
    pub fn as_str(self) -> &'static str {
        match self {
            StatusClass::Success => "2xx",
            StatusClass::Redirect => "3xx",
            StatusClass::ClientError => "4xx",
            StatusClass::ServerError => "5xx",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "2xx" => Some(StatusClass::Success),
            "3xx" => Some(StatusClass::Redirect),
            "4xx" => Some(StatusClass::ClientError),
            "5xx" => Some(StatusClass::ServerError),
            _ => None,
        }
    }

    /// The class of a status code; anything outside 200..=499 counts as 5xx
    /// (1xx never reaches a caller as a final answer).
    pub fn of(status: u16) -> Self {
        match status {
            200..=299 => StatusClass::Success,
            300..=399 => StatusClass::Redirect,
            400..=499 => StatusClass::ClientError,
            _ => StatusClass::ServerError,
        }
    }
}

/// Filters shared by the monitoring endpoints (M2). The time window is either
/// `range` (ending now) or `from`/`to`; neither means the last 24 hours.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema, utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct MonitoringQuery {
    /// Default `test`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<Environment>,
    /// `1h`, `6h`, `24h`, `7d`, `30d` or `90d`, ending now. Ignored when `from` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<TimeRange>,
    /// Start of the window, RFC 3339 (inclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// End of the window, RFC 3339 (exclusive); default now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Point width of a series; default by the window's length (minute up to
    /// 6 hours, hour up to 7 days, day beyond).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<Bucket>,
    /// e.g. `/v1/chat/completions`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The API's slug.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// `sync` or `stream`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_class: Option<StatusClass>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

impl MonitoringQuery {
    /// The query string (without `?`) for these filters, for clients that build URLs.
    pub fn to_query_string(&self) -> String {
        let mut pairs: Vec<(&str, String)> = Vec::new();
        if let Some(e) = self.environment {
            pairs.push(("environment", e.as_str().to_owned()));
        }
        if let Some(r) = self.range {
            pairs.push(("range", r.as_str().to_owned()));
        }
        for (name, value) in [
            ("from", &self.from),
            ("to", &self.to),
            ("endpoint", &self.endpoint),
            ("api", &self.api),
            ("model", &self.model),
            ("request_type", &self.request_type),
            ("key_id", &self.key_id),
            ("client_id", &self.client_id),
        ] {
            if let Some(v) = value {
                pairs.push((name, v.clone()));
            }
        }
        if let Some(b) = self.bucket {
            pairs.push(("bucket", b.as_str().to_owned()));
        }
        if let Some(s) = self.status_class {
            pairs.push(("status_class", s.as_str().to_owned()));
        }
        pairs
            .into_iter()
            .map(|(k, v)| format!("{k}={}", encode_query_value(&v)))
            .collect::<Vec<_>>()
            .join("&")
    }
}

/// Percent-encodes a query value (RFC 3986 unreserved characters pass).
pub fn encode_query_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Totals over a window (or one point of a series).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Summary {
    pub calls: i64,
    /// Calls whose status was not 2xx.
    pub errors: i64,
    pub cost_micros: i64,
    pub tokens_in: i64,
    pub tokens_out: i64,
    /// 0 when there were no calls.
    pub avg_latency_us: i64,
    /// Percentiles from the merged histograms: the upper edge of the bucket
    /// holding the percentile (0 without calls).
    pub p50_us: i64,
    pub p95_us: i64,
    pub p99_us: i64,
}

/// One point of a series: the bucket starting at `start`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SeriesPoint {
    /// RFC 3339 UTC.
    pub start: String,
    pub calls: i64,
    pub errors: i64,
    pub cost_micros: i64,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub avg_latency_us: i64,
    pub p50_us: i64,
    pub p95_us: i64,
    pub p99_us: i64,
}

/// Volume, errors, cost and latency over a window (M1). Every bucket of the
/// window has a point, zero-filled when it had no calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Series {
    pub environment: Environment,
    pub bucket: Bucket,
    /// The window, aligned to `bucket` (RFC 3339; `to` exclusive).
    pub from: String,
    pub to: String,
    /// Oldest first.
    pub points: Vec<SeriesPoint>,
    pub totals: Summary,
}

/// The dimension of a breakdown (M3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum BreakdownBy {
    Api,
    Key,
    ClientId,
    Endpoint,
    /// Across the namespaces the caller's account belongs to.
    Namespace,
    Subcloud,
    Model,
    RequestType,
    StatusClass,
}

impl BreakdownBy {
    pub const ALL: [BreakdownBy; 9] = [
        BreakdownBy::Api,
        BreakdownBy::Key,
        BreakdownBy::ClientId,
        BreakdownBy::Endpoint,
        BreakdownBy::Namespace,
        BreakdownBy::Subcloud,
        BreakdownBy::Model,
        BreakdownBy::RequestType,
        BreakdownBy::StatusClass,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BreakdownBy::Api => "api",
            BreakdownBy::Key => "key",
            BreakdownBy::ClientId => "client_id",
            BreakdownBy::Endpoint => "endpoint",
            BreakdownBy::Namespace => "namespace",
            BreakdownBy::Subcloud => "subcloud",
            BreakdownBy::Model => "model",
            BreakdownBy::RequestType => "request_type",
            BreakdownBy::StatusClass => "status_class",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.as_str() == s)
    }
}

/// One row of a breakdown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BreakdownRow {
    /// The dimension's value: an API slug, key id, client id, endpoint,
    /// namespace id, subcloud, model, request type or status class. Empty when
    /// calls had none (no client id, no model, no subcloud).
    pub key: String,
    /// A readable name where one exists (a key's label, a namespace's name).
    pub label: Option<String>,
    pub calls: i64,
    pub errors: i64,
    pub cost_micros: i64,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub avg_latency_us: i64,
    pub p50_us: i64,
    pub p95_us: i64,
    pub p99_us: i64,
}

/// Rows sorted by calls, most first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Breakdown {
    pub by: BreakdownBy,
    pub environment: Environment,
    pub from: String,
    pub to: String,
    pub rows: Vec<BreakdownRow>,
}

/// A page of the request log (M4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RequestPage {
    /// Newest first.
    pub items: Vec<UsageEvent>,
    /// Pass as `before` for the next (older) page; absent on the last page.
    pub next_before: Option<String>,
    /// Pass as `after` to poll for calls newer than everything seen so far
    /// (live tail); the newest item's cursor, or the one given when no newer
    /// call matched.
    pub tail_after: Option<String>,
}

/// `csv` or `ndjson`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ExportFormat {
    #[default]
    Csv,
    Ndjson,
}

impl ExportFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ExportFormat::Csv => "csv",
            ExportFormat::Ndjson => "ndjson",
        }
    }
}

/// Whose view the dashboard shows: a namespace that owns catalog APIs is a seller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DashboardRole {
    Consumer,
    Seller,
}

/// The consumer's KPI cards (D1): calls the namespace made.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConsumerKpis {
    pub balance_micros: i64,
    pub calls_24h: i64,
    pub errors_24h: i64,
    /// 0.0 to 1.0; 1.0 when there were no calls.
    pub success_rate_24h: f64,
    pub avg_latency_us_24h: i64,
    pub spent_24h_micros: i64,
    pub calls_total: i64,
    pub spent_total_micros: i64,
}

/// The seller's KPI cards (D1): calls other namespaces (and itself) made to
/// the APIs this namespace owns, and the revenue ledger.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SellerKpis {
    pub calls_served_24h: i64,
    pub errors_24h: i64,
    /// 0.0 to 1.0; 1.0 when there were no calls.
    pub success_rate_24h: f64,
    pub revenue_24h_micros: i64,
    pub calls_served_7d: i64,
    pub revenue_7d_micros: i64,
}

/// One bar of the 48-hour call-rate chart (D2).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HourlyBar {
    /// Start of the hour, RFC 3339 UTC.
    pub start: String,
    pub successes: i64,
    pub errors: i64,
}

/// One row of the all-time API table (D3).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiUsageRow {
    pub api: String,
    pub calls: i64,
    pub successes: i64,
    pub errors: i64,
    /// What callers paid (the consumer's spend, or the seller's gross).
    pub cost_micros: i64,
    /// Seller rows: revenue credited to the seller for this API (0 in consumer rows).
    pub revenue_micros: i64,
    pub avg_latency_us: i64,
    /// 0.0 to 1.0.
    pub success_rate: f64,
}

/// Everything the dashboard's first screen shows (D1–D3, D7), from rollups.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DashboardSummary {
    pub environment: Environment,
    pub role: DashboardRole,
    /// Always present: the namespace's own calls.
    pub consumer: ConsumerKpis,
    /// Present when the namespace owns catalog APIs.
    pub seller: Option<SellerKpis>,
    /// The namespace's own calls, the last 48 hours, oldest first, 48 bars
    /// (the last one is the running hour).
    pub hourly: Vec<HourlyBar>,
    /// The namespace's own calls by API, all time, most calls first.
    pub apis: Vec<ApiUsageRow>,
    /// Calls served by the namespace's APIs, same shape as `hourly` (empty for consumers).
    pub served_hourly: Vec<HourlyBar>,
    /// Calls served by API, all time (empty for consumers).
    pub served_apis: Vec<ApiUsageRow>,
    /// Seconds since the server started (D7).
    pub uptime_secs: i64,
    /// RFC 3339 UTC.
    pub started_at: String,
    /// When this summary was computed, RFC 3339 UTC.
    pub generated_at: String,
}

/// Number of latency histogram buckets (one integer column each in the rollups).
pub const LATENCY_BUCKETS: usize = 50;

/// The histogram bucket of a latency in microseconds. Bucket 0 holds 0 to
/// 7 µs; from 8 µs on, each power of two is split in two halves, so a bucket
/// is at most √2 (about 41%) wider than the one before; bucket 49 holds
/// everything from 2^27 µs (134 s) on. Integer math only: the position of the
/// top bit and the bit below it.
pub fn latency_bucket(latency_us: i64) -> usize {
    if latency_us < 8 {
        return 0;
    }
    let v = latency_us as u64;
    let top = 63 - v.leading_zeros() as usize; // >= 3
    let half = ((v >> (top - 1)) & 1) as usize;
    (1 + (top - 3) * 2 + half).min(LATENCY_BUCKETS - 1)
}

/// The smallest latency (µs) that lands in `bucket`.
pub fn latency_bucket_lower(bucket: usize) -> i64 {
    if bucket == 0 {
        return 0;
    }
    let b = bucket.min(LATENCY_BUCKETS - 1) - 1;
    let base = 1i64 << (b / 2 + 3);
    base + (b % 2) as i64 * (base >> 1)
}

/// The largest latency (µs) that lands in `bucket`; the last bucket is open
/// ended and reports its lower edge.
pub fn latency_bucket_upper(bucket: usize) -> i64 {
    if bucket >= LATENCY_BUCKETS - 1 {
        return latency_bucket_lower(LATENCY_BUCKETS - 1);
    }
    latency_bucket_lower(bucket + 1) - 1
}

/// The value at quantile `q` (0..=1) of a histogram, interpolated linearly
/// inside the bucket that holds the rank-`ceil(q * n)` sample, so it always
/// lies in the same bucket as the exact percentile; 0 for an empty histogram.
pub fn histogram_quantile(counts: &[i64], q: f64) -> i64 {
    let total: i64 = counts.iter().sum();
    if total <= 0 {
        return 0;
    }
    let rank = ((q * total as f64).ceil() as i64).clamp(1, total);
    let mut seen = 0i64;
    for (i, &c) in counts.iter().enumerate() {
        if c > 0 && seen + c >= rank {
            let lo = latency_bucket_lower(i);
            let hi = latency_bucket_upper(i);
            let into = (rank - seen) as f64 / c as f64;
            return lo + ((hi - lo) as f64 * into).round() as i64;
        }
        seen += c;
    }
    latency_bucket_upper(counts.len().saturating_sub(1))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn every_latency_falls_between_its_bucket_edges() {
        let mut v = 0i64;
        while v < 200_000_000 {
            let b = latency_bucket(v);
            assert!(b < LATENCY_BUCKETS);
            assert!(latency_bucket_lower(b) <= v.max(0), "v={v} b={b}");
            if b < LATENCY_BUCKETS - 1 {
                assert!(v <= latency_bucket_upper(b), "v={v} b={b}");
            }
            v = if v < 5_000 { v + 1 } else { v + v / 97 };
        }
    }

    #[test]
    fn buckets_are_monotonic_and_at_most_half_again_as_wide() {
        let mut last = 0;
        for v in 1..1_000_000i64 {
            let b = latency_bucket(v);
            assert!(b >= last);
            last = b;
        }
        for b in 1..LATENCY_BUCKETS - 1 {
            let lo = latency_bucket_lower(b) as f64;
            let hi = latency_bucket_upper(b) as f64 + 1.0;
            assert!(hi / lo <= 1.5, "bucket {b}: {lo}..{hi}");
            assert_eq!(latency_bucket(latency_bucket_lower(b)), b);
            assert_eq!(latency_bucket(latency_bucket_upper(b)), b);
        }
        assert_eq!(latency_bucket(i64::MAX), LATENCY_BUCKETS - 1);
        assert_eq!(latency_bucket(-5), 0);
    }

    #[test]
    fn quantiles_come_from_the_bucket_holding_the_rank() {
        let mut counts = vec![0i64; LATENCY_BUCKETS];
        for v in 1..=100i64 {
            counts[latency_bucket(v * 1000)] += 1;
        }
        for (q, exact) in [
            (0.5, 50_000),
            (0.95, 95_000),
            (0.99, 99_000),
            (1.0, 100_000),
        ] {
            let est = histogram_quantile(&counts, q);
            assert_eq!(
                latency_bucket(est),
                latency_bucket(exact),
                "q={q} est={est}"
            );
        }
        assert_eq!(histogram_quantile(&[0; 4], 0.5), 0);
    }

    #[test]
    fn filters_make_a_query_string() {
        let q = MonitoringQuery {
            range: Some(TimeRange::Hours24),
            endpoint: Some("/v1/chat completions".into()),
            status_class: Some(StatusClass::ClientError),
            ..Default::default()
        };
        assert_eq!(
            q.to_query_string(),
            "range=24h&endpoint=%2Fv1%2Fchat%20completions&status_class=4xx"
        );
    }
}
