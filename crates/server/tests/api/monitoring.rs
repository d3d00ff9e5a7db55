//! Monitoring and the dashboard (M1–M6, D1–D3, D7): rollups against raw
//! events, percentiles, the request log, the export and isolation.

use std::collections::HashMap;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tally_common::{
    latency_bucket, Breakdown, Bucket, CreatedKey, DashboardRole, DashboardSummary, Environment,
    ErrorCode, RequestPage, Series, TimeRange, UsageEvent,
};
use tally_store::sqlx::{self, Row};
use tally_store::usage::CallRecord;

use crate::helpers::{assert_error, backend_tests, json, spawn_app, Backend, TestApp, User};

backend_tests!(
    rollup_totals_equal_raw_events_for_random_gateway_traffic,
    percentiles_from_histograms_are_within_one_bucket_of_exact,
    the_export_streams_every_event_of_a_large_range_in_both_formats,
    the_request_log_filters_searches_pages_and_tails,
    the_dashboard_reports_kpis_bars_and_api_rows_from_rollups,
    another_namespace_sees_nothing_and_namespace_breakdowns_stay_within_the_account,
    bad_filters_are_400_json_errors,
    retention_deletes_what_is_older_than_each_tables_cutoff,
    key_and_client_breakdowns_and_minute_series_answer_from_their_own_rollups_as_from_every_dimension,
);

fn ns(user: &User, rest: &str) -> String {
    format!("/api/v1/namespaces/{}{rest}", user.namespace_id)
}

async fn create_key(app: &TestApp, user: &User, body: Value) -> CreatedKey {
    json(
        app.post(&ns(user, "/keys"), Some(&user.token), body).await,
        StatusCode::CREATED,
    )
    .await
}

/// Deterministic pseudo-random numbers (xorshift), so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Sends `n` varied calls through the real gateway with test keys: chat,
/// completions, embeddings, streams, client ids, and refused calls.
async fn random_traffic(app: &TestApp, user: &User, n: usize, seed: u64) -> usize {
    let good = create_key(app, user, json!({"name": "good", "environment": "test"})).await;
    let other = create_key(app, user, json!({"name": "other", "environment": "test"})).await;
    let refused = create_key(
        app,
        user,
        json!({"name": "refused", "environment": "test", "allowed_apis": ["not-this-one"]}),
    )
    .await;
    let mut rng = Rng(seed);
    for i in 0..n {
        let secret = match rng.below(5) {
            0 => &refused.secret,
            1 | 2 => &other.secret,
            _ => &good.secret,
        };
        let words = "lorem ipsum dolor sit amet ".repeat(1 + rng.below(20) as usize);
        let (path, body) = match rng.below(4) {
            0 => (
                "/v1/completions",
                json!({"model": "tally-sandbox", "prompt": words, "max_tokens": 20}),
            ),
            1 => (
                "/v1/embeddings",
                json!({"model": "tally-sandbox", "input": words}),
            ),
            2 => (
                "/v1/chat/completions",
                json!({"model": "tally-sandbox", "stream": true, "max_tokens": 20,
                       "messages": [{"role": "user", "content": words}]}),
            ),
            _ => (
                "/v1/chat/completions",
                json!({"model": "tally-sandbox", "max_tokens": 20,
                       "messages": [{"role": "user", "content": words}]}),
            ),
        };
        let mut req = app
            .client
            .post(app.url(path))
            .bearer_auth(secret)
            .json(&body);
        if rng.below(3) == 0 {
            req = req.header("X-Client-Id", format!("client-{}", i % 3));
        }
        let res = req.send().await.unwrap();
        // Read the whole answer: a stream is recorded before its last event.
        let _ = res.bytes().await.unwrap();
    }
    n
}

#[derive(Debug, Default, PartialEq, Eq, Clone)]
struct Sums {
    calls: i64,
    errors: i64,
    cost: i64,
    tokens_in: i64,
    tokens_out: i64,
    latency: i64,
}

async fn raw_sums(app: &TestApp, namespace_id: &str, group: &str) -> HashMap<String, Sums> {
    let mut conn = app.store.conn().await.unwrap();
    let sql = format!(
        "SELECT {group} AS g, CAST(COUNT(*) AS BIGINT) AS calls, \
         CAST(SUM(CASE WHEN status >= 200 AND status < 300 THEN 0 ELSE 1 END) AS BIGINT) AS errors, \
         CAST(SUM(cost_micros) AS BIGINT) AS cost, CAST(SUM(tokens_in) AS BIGINT) AS ti, \
         CAST(SUM(tokens_out) AS BIGINT) AS tout, CAST(SUM(latency_us) AS BIGINT) AS lat \
         FROM usage_events WHERE namespace_id = $1 GROUP BY {group}"
    );
    let rows = sqlx::query(&sql)
        .bind(namespace_id)
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    rows.iter()
        .map(|r| {
            (
                r.try_get::<Option<String>, _>("g")
                    .unwrap()
                    .unwrap_or_default(),
                Sums {
                    calls: r.try_get("calls").unwrap(),
                    errors: r.try_get("errors").unwrap(),
                    cost: r.try_get("cost").unwrap(),
                    tokens_in: r.try_get("ti").unwrap(),
                    tokens_out: r.try_get("tout").unwrap(),
                    latency: r.try_get("lat").unwrap(),
                },
            )
        })
        .collect()
}

async fn rollup_sums(
    app: &TestApp,
    table: &str,
    namespace_id: &str,
    group: &str,
) -> HashMap<String, Sums> {
    let mut conn = app.store.conn().await.unwrap();
    let hist: Vec<String> = (0..tally_common::LATENCY_BUCKETS)
        .map(|i| format!("h{i:02}"))
        .collect();
    let sql = format!(
        "SELECT {group} AS g, CAST(SUM(calls) AS BIGINT) AS calls, \
         CAST(SUM(errors) AS BIGINT) AS errors, CAST(SUM(cost_micros) AS BIGINT) AS cost, \
         CAST(SUM(tokens_in) AS BIGINT) AS ti, CAST(SUM(tokens_out) AS BIGINT) AS tout, \
         CAST(SUM(latency_sum_us) AS BIGINT) AS lat, CAST(SUM({}) AS BIGINT) AS hist \
         FROM {table} WHERE namespace_id = $1 GROUP BY {group}",
        hist.join(" + ")
    );
    let rows = sqlx::query(&sql)
        .bind(namespace_id)
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    rows.iter()
        .map(|r| {
            let calls: i64 = r.try_get("calls").unwrap();
            assert_eq!(
                r.try_get::<i64, _>("hist").unwrap(),
                calls,
                "every call is in one histogram bucket"
            );
            (
                r.try_get::<String, _>("g").unwrap(),
                Sums {
                    calls,
                    errors: r.try_get("errors").unwrap(),
                    cost: r.try_get("cost").unwrap(),
                    tokens_in: r.try_get("ti").unwrap(),
                    tokens_out: r.try_get("tout").unwrap(),
                    latency: r.try_get("lat").unwrap(),
                },
            )
        })
        .collect()
}

async fn rollup_totals_equal_raw_events_for_random_gateway_traffic(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = app.signup("dev").await;
    let n = random_traffic(&app, &user, 120, 0x5eed_1234).await;

    let raw = raw_sums(&app, &user.namespace_id, "key_id").await;
    assert_eq!(raw.values().map(|s| s.calls).sum::<i64>(), n as i64);
    assert!(
        raw.values().map(|s| s.errors).sum::<i64>() > 0,
        "some calls were refused"
    );
    for table in [
        "usage_rollup_minute",
        "usage_rollup_hour",
        "usage_rollup_day",
    ] {
        for group in ["key_id", "api", "endpoint", "request_type", "client_id"] {
            let rolled = rollup_sums(&app, table, &user.namespace_id, group).await;
            let raw = raw_sums(&app, &user.namespace_id, group).await;
            assert_eq!(rolled, raw, "{table} by {group}");
        }
    }
    // The per-API tables keep the API and status class only.
    for table in ["usage_rollup_api_hour", "usage_rollup_api_day"] {
        for group in ["api", "namespace_id", "environment"] {
            let rolled = rollup_sums(&app, table, &user.namespace_id, group).await;
            let raw = raw_sums(&app, &user.namespace_id, group).await;
            assert_eq!(rolled, raw, "{table} by {group}");
        }
    }

    // The API reports the same totals, whichever table answers.
    let total = raw_sums(&app, &user.namespace_id, "namespace_id").await;
    let total = total.values().next().unwrap();
    for range in ["1h", "6h", "24h", "7d", "30d", "90d"] {
        let s: Series = json(
            app.get(
                &ns(
                    &user,
                    &format!("/monitoring/series?range={range}&environment=test"),
                ),
                Some(&user.token),
            )
            .await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(s.totals.calls, total.calls, "{range}");
        assert_eq!(s.totals.errors, total.errors, "{range}");
        assert_eq!(s.totals.cost_micros, total.cost, "{range}");
        assert_eq!(s.totals.tokens_in, total.tokens_in, "{range}");
        assert_eq!(s.totals.tokens_out, total.tokens_out, "{range}");
        assert_eq!(s.points.iter().map(|p| p.calls).sum::<i64>(), total.calls);
        // One point per bucket of the window, none missing.
        let span = chrono::DateTime::parse_from_rfc3339(&s.to).unwrap()
            - chrono::DateTime::parse_from_rfc3339(&s.from).unwrap();
        assert_eq!(
            span.num_seconds(),
            s.points.len() as i64 * s.bucket.seconds(),
            "{range}"
        );
        let expected = match range {
            "1h" | "6h" => Bucket::Minute,
            "24h" | "7d" => Bucket::Hour,
            _ => Bucket::Day,
        };
        assert_eq!(s.bucket, expected, "{range}");
        assert!(
            span.num_seconds() >= TimeRange::parse(range).unwrap().seconds(),
            "{range}"
        );
    }
    for range in ["1h", "6h", "24h", "30d"] {
        for (by, column) in [
            ("key", "key_id"),
            ("api", "api"),
            ("client_id", "client_id"),
        ] {
            let b: Breakdown = json(
                app.get(
                    &ns(
                        &user,
                        &format!("/monitoring/breakdown?by={by}&range={range}"),
                    ),
                    Some(&user.token),
                )
                .await,
                StatusCode::OK,
            )
            .await;
            let raw = raw_sums(&app, &user.namespace_id, column).await;
            assert_eq!(b.rows.len(), raw.len(), "{by} over {range}");
            for row in &b.rows {
                let raw = &raw[&row.key];
                assert_eq!(
                    (row.calls, row.errors, row.cost_micros),
                    (raw.calls, raw.errors, raw.cost),
                    "{by} over {range}"
                );
                if by == "key" {
                    assert!(row.label.is_some(), "keys are labelled with their names");
                }
            }
        }
    }
    let sc: Breakdown = json(
        app.get(
            &ns(&user, "/monitoring/breakdown?by=status_class&range=24h"),
            Some(&user.token),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let errs: i64 = sc
        .rows
        .iter()
        .filter(|r| r.key != "2xx")
        .map(|r| r.calls)
        .sum();
    assert_eq!(errs, total.errors);
    // Filters narrow the rollups like they narrow the raw events.
    let by_key = raw_sums(&app, &user.namespace_id, "key_id").await;
    let one = by_key.keys().next().unwrap().clone();
    let s: Series = json(
        app.get(
            &ns(
                &user,
                &format!("/monitoring/series?range=1h&key_id={one}&status_class=2xx"),
            ),
            Some(&user.token),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(s.totals.calls, by_key[&one].calls - by_key[&one].errors);
    assert_eq!(s.totals.errors, 0);
}

fn record(ns: &str, i: usize, time: i64, latency_us: i64) -> CallRecord {
    CallRecord {
        id: format!("call_{time:016}{i:08}"),
        time,
        namespace_id: ns.to_owned(),
        environment: Environment::Test,
        key_id: if i.is_multiple_of(2) {
            "key_a"
        } else {
            "key_b"
        }
        .to_owned(),
        api: "sandbox".into(),
        model: Some("tally-sandbox".into()),
        endpoint: "/v1/chat/completions".into(),
        request_type: "sync",
        status: if i.is_multiple_of(10) { 502 } else { 200 },
        error: i.is_multiple_of(10).then(|| "upstream_error".to_owned()),
        latency_us,
        upstream_latency_us: latency_us / 2,
        tokens_in: (i % 7) as i64,
        tokens_out: (i % 5) as i64,
        cost_micros: 0,
        client_id: i.is_multiple_of(3).then(|| format!("client,\"{}\"", i % 4)),
        seller_namespace_id: None,
        platform_fee_micros: 0,
    }
}

/// Writes records through the gateway's own writer of the backend (the SQLite
/// writer's connection, or the PostgreSQL one), in batches like the gateway's.
async fn write(app: &TestApp, records: &[CallRecord]) {
    let mut writer = tally_store::recording::Writer::open(&app.store)
        .await
        .unwrap();
    for chunk in records.chunks(500) {
        writer
            .record_calls(chunk, tally_store::now_ms())
            .await
            .unwrap();
    }
}

async fn percentiles_from_histograms_are_within_one_bucket_of_exact(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = app.signup("dev").await;
    let now = tally_store::now_ms();
    let mut rng = Rng(42);
    // Log-normal-ish latencies from 50 us to about 3 s, spread over 30 minutes.
    let records: Vec<CallRecord> = (0..3000)
        .map(|i| {
            let lat = 50
                * (1 + rng.below(60_000) as i64)
                * (1 + rng.below(3) as i64 * (rng.below(2) as i64 * 10));
            record(&user.namespace_id, i, now - 60_000 - (i as i64 * 600), lat)
        })
        .collect();
    write(&app, &records).await;
    let mut lats: Vec<i64> = records.iter().map(|r| r.latency_us).collect();
    lats.sort_unstable();
    let exact = |q: f64| lats[((q * lats.len() as f64).ceil() as usize).clamp(1, lats.len()) - 1];
    for path in [
        "/monitoring/series?range=1h",
        "/monitoring/series?range=24h",
    ] {
        let s: Series = json(
            app.get(&ns(&user, path), Some(&user.token)).await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(s.totals.calls, 3000);
        for (q, got) in [
            (0.5, s.totals.p50_us),
            (0.95, s.totals.p95_us),
            (0.99, s.totals.p99_us),
        ] {
            let want = exact(q);
            let (bg, bw) = (latency_bucket(got) as i64, latency_bucket(want) as i64);
            assert!((bg - bw).abs() <= 1, "{path} p{q}: {got} vs exact {want}");
        }
        assert_eq!(
            s.totals.avg_latency_us,
            lats.iter().sum::<i64>() / lats.len() as i64
        );
    }
    let b: Breakdown = json(
        app.get(
            &ns(&user, "/monitoring/breakdown?by=key&range=1h"),
            Some(&user.token),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    for row in &b.rows {
        let mut l: Vec<i64> = records
            .iter()
            .filter(|r| r.key_id == row.key)
            .map(|r| r.latency_us)
            .collect();
        l.sort_unstable();
        let want = l[((0.95 * l.len() as f64).ceil() as usize) - 1];
        let diff = latency_bucket(row.p95_us) as i64 - latency_bucket(want) as i64;
        assert!(diff.abs() <= 1, "{} p95 {} vs {want}", row.key, row.p95_us);
    }
}

async fn the_export_streams_every_event_of_a_large_range_in_both_formats(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = app.signup("dev").await;
    let now = tally_store::now_ms();
    let n = 2_600; // three pages of the export
    let records: Vec<CallRecord> = (0..n)
        .map(|i| {
            record(
                &user.namespace_id,
                i,
                now - 3_000_000 + i as i64 * 1_000,
                100 + i as i64,
            )
        })
        .collect();
    write(&app, &records).await;

    let res = app
        .get(
            &ns(&user, "/monitoring/export?format=ndjson&range=24h"),
            Some(&user.token),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "application/x-ndjson");
    assert!(
        res.headers().get("content-length").is_none(),
        "the body is streamed, not sized up front"
    );
    assert_eq!(res.headers()["transfer-encoding"], "chunked");
    let mut body = Vec::new();
    let mut chunks = 0;
    let mut res = res;
    while let Some(c) = res.chunk().await.unwrap() {
        chunks += 1;
        body.extend_from_slice(&c);
    }
    assert!(chunks >= 3, "one chunk per page at least ({chunks})");
    let events: Vec<UsageEvent> = String::from_utf8(body)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), n);
    for (e, r) in events.iter().zip(&records) {
        assert_eq!(e.id, r.id);
        assert_eq!(e.latency_us, r.latency_us);
        assert_eq!(e.client_id, r.client_id);
        assert_eq!(e.error, r.error);
        assert_eq!(i64::from(e.status), r.status);
    }

    // CSV of one key: a header, one line per event, fields quoted.
    let csv = app
        .get(
            &ns(&user, "/monitoring/export?format=csv&key_id=key_b"),
            Some(&user.token),
        )
        .await;
    assert_eq!(csv.status(), StatusCode::OK);
    assert!(csv.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .contains("attachment"));
    let text = csv.text().await.unwrap();
    let mut lines = text.lines();
    assert!(lines
        .next()
        .unwrap()
        .starts_with("id,time,environment,key_id"));
    let want: Vec<&CallRecord> = records.iter().filter(|r| r.key_id == "key_b").collect();
    let got: Vec<&str> = lines.collect();
    assert_eq!(got.len(), want.len());
    for (line, r) in got.iter().zip(&want) {
        assert!(line.starts_with(&format!("{},", r.id)), "{line}");
        if let Some(c) = &r.client_id {
            let quoted = format!("\"{}\"", c.replace('"', "\"\""));
            assert!(line.ends_with(&quoted), "{line}");
        }
    }

    // A window: only its events.
    let from = tally_common_time(now - 3_000_000 + 100 * 1_000);
    let to = tally_common_time(now - 3_000_000 + 200 * 1_000);
    let part = app
        .get(
            &ns(
                &user,
                &format!("/monitoring/export?format=ndjson&from={from}&to={to}"),
            ),
            Some(&user.token),
        )
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(part.lines().count(), 100);
}

fn tally_common_time(ms: i64) -> String {
    let t = chrono::DateTime::from_timestamp_millis(ms).unwrap();
    tally_common::encode_query_value(&t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

async fn the_request_log_filters_searches_pages_and_tails(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = app.signup("dev").await;
    let now = tally_store::now_ms();
    let records: Vec<CallRecord> = (0..230)
        .map(|i| record(&user.namespace_id, i, now - 500_000 + i as i64 * 1_000, 100))
        .collect();
    write(&app, &records).await;

    // Paging with before walks every call once, newest first.
    let mut seen = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let q = match &before {
            Some(b) => format!("/monitoring/requests?limit=100&before={b}"),
            None => "/monitoring/requests?limit=100".to_owned(),
        };
        let page: RequestPage = json(
            app.get(&ns(&user, &q), Some(&user.token)).await,
            StatusCode::OK,
        )
        .await;
        seen.extend(page.items.iter().map(|e| e.id.clone()));
        match page.next_before {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    let mut want: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
    want.reverse();
    assert_eq!(seen, want);

    // Filters and search.
    let page: RequestPage = json(
        app.get(
            &ns(&user, "/monitoring/requests?status_class=5xx&limit=500"),
            Some(&user.token),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(page.items.len(), 23);
    assert!(page.items.iter().all(|e| e.status == 502));
    let page: RequestPage = json(
        app.get(
            &ns(&user, "/monitoring/requests?q=UPSTREAM_ERR&limit=500"),
            Some(&user.token),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        page.items.len(),
        23,
        "search is case-insensitive over error codes"
    );
    let page: RequestPage = json(
        app.get(
            &ns(&user, &format!("/monitoring/requests?q={}", records[7].id)),
            Some(&user.token),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(page.items.len(), 1);
    let page: RequestPage = json(
        app.get(
            &ns(&user, "/monitoring/requests?q=%25&limit=500"),
            Some(&user.token),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert!(page.items.is_empty(), "% is searched for literally");
    let page: RequestPage = json(
        app.get(
            &ns(
                &user,
                "/monitoring/requests?key_id=key_a&client_id=client%2C%220%22&limit=500",
            ),
            Some(&user.token),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let want = records
        .iter()
        .filter(|r| r.key_id == "key_a" && r.client_id.as_deref() == Some("client,\"0\""))
        .count();
    assert_eq!(page.items.len(), want);

    // Live tail: after the newest cursor only new calls come.
    let head: RequestPage = json(
        app.get(
            &ns(&user, "/monitoring/requests?limit=5"),
            Some(&user.token),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let cursor = head.tail_after.clone().unwrap();
    let empty: RequestPage = json(
        app.get(
            &ns(&user, &format!("/monitoring/requests?after={cursor}")),
            Some(&user.token),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert!(empty.items.is_empty());
    assert_eq!(empty.tail_after.as_deref(), Some(cursor.as_str()));
    let fresh: Vec<CallRecord> = (1000..1003)
        .map(|i| record(&user.namespace_id, i, now + i as i64, 100))
        .collect();
    write(&app, &fresh).await;
    let tail: RequestPage = json(
        app.get(
            &ns(&user, &format!("/monitoring/requests?after={cursor}")),
            Some(&user.token),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let ids: Vec<&str> = tail.items.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, vec![&fresh[2].id, &fresh[1].id, &fresh[0].id]);
    assert_ne!(tail.tail_after, Some(cursor));
}

async fn the_dashboard_reports_kpis_bars_and_api_rows_from_rollups(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = app.signup("dev").await;
    let empty: DashboardSummary = json(
        app.get(&ns(&user, "/dashboard?environment=test"), Some(&user.token))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(empty.consumer.calls_total, 0);
    assert_eq!(empty.hourly.len(), 48);
    assert_eq!(empty.consumer.balance_micros, 10_000_000);

    let n = random_traffic(&app, &user, 40, 7).await as i64;
    // An old call: in the all-time totals, not in the last 48 hours.
    let old = record(
        &user.namespace_id,
        1,
        tally_store::now_ms() - 72 * 3_600_000,
        900,
    );
    write(&app, std::slice::from_ref(&old)).await;

    let d: DashboardSummary = json(
        app.get(&ns(&user, "/dashboard?environment=test"), Some(&user.token))
            .await,
        StatusCode::OK,
    )
    .await;
    let raw = raw_sums(&app, &user.namespace_id, "namespace_id").await;
    let raw = raw.values().next().unwrap().clone();
    assert_eq!(d.role, DashboardRole::Consumer);
    assert!(d.seller.is_none());
    assert_eq!(d.consumer.calls_24h, n);
    assert_eq!(d.consumer.calls_total, n + 1);
    assert_eq!(d.consumer.spent_total_micros, raw.cost);
    assert_eq!(d.consumer.spent_24h_micros, raw.cost);
    assert_eq!(d.consumer.balance_micros, 10_000_000 - raw.cost);
    assert_eq!(d.consumer.errors_24h, raw.errors);
    assert_eq!(d.hourly.len(), 48);
    let bars: i64 = d.hourly.iter().map(|b| b.successes + b.errors).sum();
    assert_eq!(bars, n);
    assert!(d.hourly.last().unwrap().successes + d.hourly.last().unwrap().errors > 0);
    assert_eq!(d.apis.len(), 1);
    assert_eq!(d.apis[0].api, "sandbox");
    assert_eq!(d.apis[0].calls, n + 1);
    assert!(d.uptime_secs >= 0);
    assert!(!d.started_at.is_empty());
}

async fn another_namespace_sees_nothing_and_namespace_breakdowns_stay_within_the_account(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let alice = app.signup("alice").await;
    let mallory = app.signup("mallory").await;
    random_traffic(&app, &alice, 10, 1).await;
    random_traffic(&app, &mallory, 6, 2).await;
    for path in [
        "/monitoring/series?range=1h",
        "/monitoring/breakdown?by=api",
        "/monitoring/requests",
        "/monitoring/export",
        "/dashboard",
    ] {
        assert_error(
            app.get(&ns(&alice, path), Some(&mallory.token)).await,
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
        )
        .await;
        assert_error(
            app.get(&ns(&alice, path), None).await,
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
        )
        .await;
    }
    // Alice's second namespace, with its own traffic.
    let second: Value = json(
        app.post(
            "/api/v1/namespaces",
            Some(&alice.token),
            json!({"name": "second"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let second_id = second["id"].as_str().unwrap().to_owned();
    let alice2 = User {
        email: alice.email.clone(),
        password: alice.password.clone(),
        token: alice.token.clone(),
        refresh_token: alice.refresh_token.clone(),
        account_id: alice.account_id.clone(),
        namespace_id: second_id.clone(),
    };
    random_traffic(&app, &alice2, 4, 3).await;
    let b: Breakdown = json(
        app.get(
            &ns(&alice, "/monitoring/breakdown?by=namespace&range=1h"),
            Some(&alice.token),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let mut keys: Vec<(&str, i64)> = b.rows.iter().map(|r| (r.key.as_str(), r.calls)).collect();
    keys.sort();
    let mut want = vec![(alice.namespace_id.as_str(), 10), (second_id.as_str(), 4)];
    want.sort();
    assert_eq!(keys, want, "never mallory's namespace");
    assert!(b.rows.iter().any(|r| r.label.as_deref() == Some("second")));
    // Mallory's own view has only her calls.
    let s: Series = json(
        app.get(
            &ns(&mallory, "/monitoring/series?range=1h"),
            Some(&mallory.token),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(s.totals.calls, 6);
    let page: RequestPage = json(
        app.get(
            &ns(&mallory, "/monitoring/requests?limit=500"),
            Some(&mallory.token),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(page.items.len(), 6);
}

async fn bad_filters_are_400_json_errors(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = app.signup("dev").await;
    for q in [
        "/monitoring/series?range=2d",
        "/monitoring/series?from=yesterday",
        "/monitoring/series?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
        "/monitoring/series?range=90d&bucket=minute",
        "/monitoring/series?bucket=week",
        "/monitoring/series?status_class=6xx",
        "/monitoring/series?environment=prod",
        "/monitoring/series?request_type=batch",
        "/monitoring/breakdown",
        "/monitoring/breakdown?by=colour",
        "/monitoring/breakdown?by=api&limit=0",
        "/monitoring/requests?before=nonsense",
        "/monitoring/requests?limit=100000",
        "/monitoring/requests?before=1-a&after=1-b",
        // Control characters (NUL among them: PostgreSQL text cannot hold it).
        "/monitoring/series?range=1h&client_id=a%00b",
        "/monitoring/series?range=1h&model=%C3%95%00%06",
        "/monitoring/breakdown?by=api&key_id=k%0A",
        "/monitoring/requests?q=x%00y",
        "/monitoring/export?format=csv&api=%01",
        "/monitoring/export?format=xml",
        "/monitoring/export?from=2020-01-01T00:00:00Z&to=2026-01-01T00:00:00Z",
        "/dashboard?environment=staging",
    ] {
        let res = app.get(&ns(&user, q), Some(&user.token)).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{q}");
        assert_error(res, StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest).await;
    }
}

async fn count_rows(app: &TestApp, table: &str, namespace_id: &str) -> i64 {
    let mut conn = app.store.conn().await.unwrap();
    let column = if table == "usage_events" {
        "id"
    } else {
        "calls"
    };
    sqlx::query(&format!(
        "SELECT CAST(COUNT({column}) AS BIGINT) AS n FROM {table} WHERE namespace_id = $1"
    ))
    .bind(namespace_id)
    .fetch_one(&mut *conn)
    .await
    .unwrap()
    .try_get("n")
    .unwrap()
}

async fn retention_deletes_what_is_older_than_each_tables_cutoff(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = app.signup("dev").await;
    let seller = app.signup("seller").await;
    let day = 86_400_000;
    let now = tally_store::now_ms();
    // One call 40 days ago, one 3 days ago and one now, each to the seller's API.
    let records: Vec<CallRecord> = [now - 40 * day, now - 3 * day, now]
        .iter()
        .enumerate()
        .map(|(i, t)| CallRecord {
            seller_namespace_id: Some(seller.namespace_id.clone()),
            ..record(&user.namespace_id, i + 1, *t, 1_000)
        })
        .collect();
    write(&app, &records).await;
    let tables = [
        ("usage_events", &user.namespace_id),
        ("usage_rollup_minute", &user.namespace_id),
        ("usage_rollup_hour", &user.namespace_id),
        ("usage_rollup_day", &user.namespace_id),
        ("usage_rollup_api_hour", &user.namespace_id),
        ("usage_rollup_api_day", &user.namespace_id),
        ("usage_rollup_served_hour", &seller.namespace_id),
        ("usage_rollup_served_day", &seller.namespace_id),
        ("usage_rollup_api_minute", &user.namespace_id),
        ("usage_rollup_caller_hour", &user.namespace_id),
        ("usage_rollup_caller_day", &user.namespace_id),
    ];
    for (t, owner) in tables {
        assert_eq!(count_rows(&app, t, owner).await, 3, "{t} before");
    }
    // Keep raw events 60 days, minutes 1, hours 30 and days 35: only what
    // is older than a table's cutoff goes.
    let settings = tally_server::config::MonitoringSettings {
        raw_retention_days: 60,
        minute_retention_days: 1,
        hour_retention_days: 30,
        day_retention_days: 35,
        prune_interval_secs: 3_600,
    };
    let deleted = tally_server::monitoring::prune_once(&app.store, &settings)
        .await
        .unwrap();
    // Minutes: two in each of two tables; hours and days: the oldest call in
    // each of four tables.
    assert_eq!(deleted, 2 * 2 + 4 + 4);
    let want = [3, 1, 2, 2, 2, 2, 2, 2, 1, 2, 2];
    for ((t, owner), want) in tables.into_iter().zip(want) {
        assert_eq!(count_rows(&app, t, owner).await, want, "{t} after");
    }
    // Defaults keep everything but minutes older than 14 days: nothing here.
    let kept = tally_server::monitoring::prune_once(&app.store, &Default::default())
        .await
        .unwrap();
    assert_eq!(kept, 0);
}

/// Figures of one breakdown row or series point: calls, errors, cost, tokens
/// in and out, average latency, p50, p95 and p99.
type Figures = [i64; 9];

/// What a query answered from the rollups keyed by every dimension (the
/// tables that answered every breakdown and series before the smaller ones):
/// `group` is a column or `bucket`, `filters` are `(column, value)` pairs.
async fn from_every_dimension(
    app: &TestApp,
    table: &str,
    namespace_id: &str,
    (from, to): (i64, i64),
    group: &str,
    filters: &[(&str, &str)],
) -> HashMap<String, Figures> {
    let hist: Vec<String> = (0..tally_common::LATENCY_BUCKETS)
        .map(|i| format!("CAST(SUM(h{i:02}) AS BIGINT) AS h{i:02}"))
        .collect();
    let mut sql = format!(
        "SELECT CAST({group} AS TEXT) AS g, CAST(SUM(calls) AS BIGINT) AS calls, \
         CAST(SUM(errors) AS BIGINT) AS errors, CAST(SUM(cost_micros) AS BIGINT) AS cost, \
         CAST(SUM(tokens_in) AS BIGINT) AS ti, CAST(SUM(tokens_out) AS BIGINT) AS tout, \
         CAST(SUM(latency_sum_us) AS BIGINT) AS lat, {} FROM {table} \
         WHERE namespace_id = $1 AND environment = 'test' AND bucket >= $2 AND bucket < $3",
        hist.join(", ")
    );
    for (i, (column, _)) in filters.iter().enumerate() {
        sql.push_str(&format!(" AND {column} = ${}", i + 4));
    }
    sql.push_str(&format!(" GROUP BY {group}"));
    let mut q = sqlx::query(&sql).bind(namespace_id).bind(from).bind(to);
    for (_, v) in filters {
        q = q.bind(*v);
    }
    let mut conn = app.store.conn().await.unwrap();
    let rows = q.fetch_all(&mut *conn).await.unwrap();
    rows.iter()
        .map(|r| {
            let calls: i64 = r.try_get("calls").unwrap();
            let hist: Vec<i64> = (0..tally_common::LATENCY_BUCKETS)
                .map(|i| r.try_get(format!("h{i:02}").as_str()).unwrap())
                .collect();
            let q = |x| tally_common::histogram_quantile(&hist, x);
            let lat: i64 = r.try_get("lat").unwrap();
            (
                r.try_get::<String, _>("g").unwrap(),
                [
                    calls,
                    r.try_get("errors").unwrap(),
                    r.try_get("cost").unwrap(),
                    r.try_get("ti").unwrap(),
                    r.try_get("tout").unwrap(),
                    if calls == 0 { 0 } else { lat / calls },
                    q(0.5),
                    q(0.95),
                    q(0.99),
                ],
            )
        })
        .collect()
}

fn ms(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .timestamp_millis()
}

/// One query, the table that answered it before and how its answer is
/// grouped there.
struct Case {
    path: String,
    table: &'static str,
    /// The smaller table that answers it now.
    answered_by: &'static str,
    group: &'static str,
    filters: Vec<(&'static str, &'static str)>,
}

/// The figures the API answers for a case, by breakdown key or point start
/// (Unix ms as text, like `CAST(bucket AS TEXT)`), and the window.
async fn answer(app: &TestApp, user: &User, case: &Case) -> (HashMap<String, Figures>, (i64, i64)) {
    let res = app.get(&ns(user, &case.path), Some(&user.token)).await;
    if case.path.contains("/breakdown") {
        let b: Breakdown = json(res, StatusCode::OK).await;
        let rows = b.rows.iter().map(|r| {
            (
                r.key.clone(),
                [
                    r.calls,
                    r.errors,
                    r.cost_micros,
                    r.tokens_in,
                    r.tokens_out,
                    r.avg_latency_us,
                    r.p50_us,
                    r.p95_us,
                    r.p99_us,
                ],
            )
        });
        (rows.collect(), (ms(&b.from), ms(&b.to)))
    } else {
        let s: Series = json(res, StatusCode::OK).await;
        let points = s.points.iter().filter(|p| p.calls > 0).map(|p| {
            (
                ms(&p.start).to_string(),
                [
                    p.calls,
                    p.errors,
                    p.cost_micros,
                    p.tokens_in,
                    p.tokens_out,
                    p.avg_latency_us,
                    p.p50_us,
                    p.p95_us,
                    p.p99_us,
                ],
            )
        });
        (points.collect(), (ms(&s.from), ms(&s.to)))
    }
}

async fn key_and_client_breakdowns_and_minute_series_answer_from_their_own_rollups_as_from_every_dimension(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let user = app.signup("dev").await;
    let now = tally_store::now_ms();
    let mut rng = Rng(0xb0a7);
    // Four keys, three client ids and none, two APIs with their endpoints,
    // both request types, 2xx, 4xx and 5xx, spread over 35 days with one call
    // in three in the last hour (so the minute series has many points).
    let records: Vec<CallRecord> = (0..4000)
        .map(|i| {
            let age = if rng.below(3) == 0 {
                rng.below(3_600_000) as i64
            } else {
                rng.below(35 * 86_400_000) as i64
            };
            let mut r = record(&user.namespace_id, i, now - 1 - age, 0);
            r.latency_us = 20 + rng.below(3_000_000) as i64;
            r.key_id = format!("key_{}", rng.below(4));
            r.client_id = match rng.below(4) {
                3 => None,
                c => Some(format!("client-{c}")),
            };
            if rng.below(2) == 0 {
                r.api = "weather".into();
                r.model = None;
                r.endpoint = "/v1/apis/weather/forecast".into();
            }
            r.request_type = if rng.below(4) == 0 { "stream" } else { "sync" };
            r.status = match rng.below(20) {
                0 => 502,
                1 | 2 => 429,
                _ => 200,
            };
            r
        })
        .collect();
    let mut sorted = records.clone();
    sorted.sort_by_key(|r| r.time);
    write(&app, &sorted).await;

    let case = |path: &str, table, answered_by, group, filters| Case {
        path: path.to_owned(),
        table,
        answered_by,
        group,
        filters,
    };
    let cases = [
        case(
            "/monitoring/breakdown?by=key&range=24h",
            "usage_rollup_hour",
            "usage_rollup_caller_hour",
            "key_id",
            vec![],
        ),
        case(
            "/monitoring/breakdown?by=client_id&range=24h",
            "usage_rollup_hour",
            "usage_rollup_caller_hour",
            "client_id",
            vec![],
        ),
        case(
            "/monitoring/breakdown?by=key&range=30d",
            "usage_rollup_day",
            "usage_rollup_caller_day",
            "key_id",
            vec![],
        ),
        case(
            "/monitoring/breakdown?by=client_id&range=30d&status_class=4xx",
            "usage_rollup_day",
            "usage_rollup_caller_day",
            "client_id",
            vec![("status_class", "4xx")],
        ),
        case(
            "/monitoring/series?range=30d&key_id=key_1&status_class=5xx",
            "usage_rollup_day",
            "usage_rollup_caller_day",
            "bucket",
            vec![("key_id", "key_1"), ("status_class", "5xx")],
        ),
        case(
            "/monitoring/series?range=24h&client_id=client-2",
            "usage_rollup_hour",
            "usage_rollup_caller_hour",
            "bucket",
            vec![("client_id", "client-2")],
        ),
        case(
            "/monitoring/series?range=1h",
            "usage_rollup_minute",
            "usage_rollup_api_minute",
            "bucket",
            vec![],
        ),
        case(
            "/monitoring/series?range=1h&status_class=2xx",
            "usage_rollup_minute",
            "usage_rollup_api_minute",
            "bucket",
            vec![("status_class", "2xx")],
        ),
    ];
    let mut answers = Vec::new();
    for c in &cases {
        let (got, window) = answer(&app, &user, c).await;
        let want = from_every_dimension(
            &app,
            c.table,
            &user.namespace_id,
            window,
            c.group,
            &c.filters,
        )
        .await;
        assert!(got.len() > 1, "{}: the data covers several groups", c.path);
        assert_eq!(got, want, "{} against {}", c.path, c.table);
        answers.push(got);
    }

    // The smaller tables answer: a database upgraded from before them has
    // them filled by the migration's own statements from the tables keyed by
    // every dimension, and then answers the same as one that wrote them all
    // along. Emptied, they leave those queries with nothing.
    let mut conn = app.store.conn().await.unwrap();
    for t in [
        "usage_rollup_api_minute",
        "usage_rollup_caller_hour",
        "usage_rollup_caller_day",
    ] {
        sqlx::query(&format!("DELETE FROM {t}"))
            .execute(&mut *conn)
            .await
            .unwrap();
    }
    for c in &cases {
        let (got, _) = answer(&app, &user, c).await;
        assert!(got.is_empty(), "{} reads {}", c.path, c.answered_by);
    }
    let dialect = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../migrations")
        .join(dialect)
        .join("0010_monitoring_rollups.sql");
    let migration = std::fs::read_to_string(path).unwrap();
    let fills: Vec<&str> = migration
        .split(';')
        .map(str::trim)
        .filter(|s| s.starts_with("INSERT INTO"))
        .collect();
    assert_eq!(fills.len(), 3, "one fill per new table");
    for sql in fills {
        sqlx::query(sql).execute(&mut *conn).await.unwrap();
    }
    drop(conn);
    for (c, before) in cases.iter().zip(&answers) {
        let (got, _) = answer(&app, &user, c).await;
        assert_same_answer(
            &got,
            before,
            &format!("{} after the migration's fill", c.path),
        );
    }
}

/// The two answers agree. A series over a range that ends now may have
/// slid by a slot between them (a slow machine crossing a minute): slots
/// may leave at the old end and arrive at the new one; every slot in both
/// has the same figures.
fn assert_same_answer(
    got: &HashMap<String, Figures>,
    before: &HashMap<String, Figures>,
    what: &str,
) {
    if !what.contains("/series") {
        assert_eq!(got, before, "{what}");
        return;
    }
    let at = |k: &String| k.parse::<i64>().unwrap_or(0);
    let first_now = got.keys().map(at).min().unwrap_or(i64::MAX);
    let last_before = before.keys().map(at).max().unwrap_or(i64::MIN);
    for (k, figures) in before {
        match got.get(k) {
            Some(g) => assert_eq!(g, figures, "{what}: slot {k}"),
            None => assert!(at(k) < first_now, "{what}: slot {k} is missing"),
        }
    }
    for k in got.keys().filter(|k| !before.contains_key(*k)) {
        assert!(at(k) > last_before, "{what}: slot {k} is new");
    }
}
