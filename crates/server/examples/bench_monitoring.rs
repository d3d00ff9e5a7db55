//! Monitoring query latency at scale (M6): loads N usage events (10 million by
//! default) into a fresh database through the gateway's own batch writers
//! (raw rows and rollups, as the gateway commits them), starts the server on
//! it and times the dashboard and monitoring endpoints over HTTP.
//!
//! Run through `cargo xtask bench-monitoring [--events N] [--postgres URL]`.
//! It never fails because of speed, but it knows what it loaded: every
//! endpoint's first answer is checked against counts kept while generating
//! the events (per minute, so any aligned window can be summed), a wrong
//! figure prints `MISMATCH` and the example exits non-zero after printing
//! every figure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tally_common::Environment;
use tally_server::config::Settings;
use tally_server::Application;
use tally_store::rollups::Table;
use tally_store::sqlx::{self, Connection};
use tally_store::usage::CallRecord;

const SPAN_DAYS: i64 = 30;
const BATCH: usize = 2_048;
const RUNS: usize = 30;
const KEYS: usize = 20;
const CLIENTS: usize = 2 * KEYS;
const APIS: [&str; 3] = ["gpt", "embed", "weather"];
/// The client id the search case looks for, and the key of the filtered case.
const SEARCHED_CLIENT: usize = 7;
const FILTERED_KEY: usize = 3;
/// Page size of the request log cases.
const PAGE: usize = 50;

struct Args {
    events: u64,
    postgres: Option<String>,
    sqlite: bool,
}

fn args() -> Args {
    let mut a = Args {
        events: 10_000_000,
        postgres: None,
        sqlite: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--events" => a.events = it.next().and_then(|v| v.parse().ok()).expect("--events N"),
            "--postgres" => a.postgres = it.next(),
            "--no-sqlite" => a.sqlite = false,
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// Deterministic traffic with dimensions that go together the way they do in
/// practice: 20 keys, each used by two clients; three APIs with their own
/// model and endpoint; 5% 4xx, 2% 5xx; latencies spread over 100 us to 2 s.
fn make(ns: &str, i: u64, start: i64, step_ms: f64, rng: &mut u64) -> CallRecord {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    let r = *rng;
    let key = r % 20;
    let api = (r >> 8) % 3;
    let (api, model, endpoint) = match api {
        0 => (APIS[0], Some("gpt-4o-mini"), "/v1/chat/completions"),
        1 => (APIS[1], Some("text-embed"), "/v1/embeddings"),
        _ => (APIS[2], None, "/v1/apis/weather/forecast"),
    };
    let roll = (r >> 16) % 100;
    let status = if roll < 5 {
        429
    } else if roll < 7 {
        502
    } else {
        200
    };
    let latency = 100 + ((r >> 24) % 1000) * ((r >> 34) % 2000 + 1);
    CallRecord {
        id: format!("call_{i:020}"),
        time: start + (i as f64 * step_ms) as i64,
        namespace_id: ns.to_owned(),
        environment: Environment::Live,
        key_id: format!("key_{key:02}"),
        api: api.to_owned(),
        model: model.map(str::to_owned),
        endpoint: endpoint.to_owned(),
        request_type: if (r >> 40) & 3 == 0 { "stream" } else { "sync" },
        status,
        error: (status != 200).then(|| "rate_limited".to_owned()),
        latency_us: latency as i64,
        upstream_latency_us: latency as i64 * 9 / 10,
        tokens_in: ((r >> 44) % 500) as i64,
        tokens_out: ((r >> 52) % 800) as i64,
        cost_micros: 0,
        client_id: Some(format!("client-{}", key * 2 + (r >> 60) % 2)),
        seller_namespace_id: None,
        platform_fee_micros: 0,
    }
}

/// What one minute of the loaded traffic holds, for the data checks.
#[derive(Clone)]
struct Minute {
    calls_by_client: [u32; CLIENTS],
    errors_by_client: [u32; CLIENTS],
    server_errors_by_key: [u32; KEYS],
    calls_by_api: [u32; APIS.len()],
    errors_by_api: [u32; APIS.len()],
}

impl Default for Minute {
    fn default() -> Self {
        Minute {
            calls_by_client: [0; CLIENTS],
            errors_by_client: [0; CLIENTS],
            server_errors_by_key: [0; KEYS],
            calls_by_api: [0; APIS.len()],
            errors_by_api: [0; APIS.len()],
        }
    }
}

/// What the benchmark loaded, counted while generating it.
#[derive(Default)]
struct Loaded {
    events: u64,
    minutes: BTreeMap<i64, Minute>,
    /// The newest [`PAGE`] + 1 call ids, and those of [`SEARCHED_CLIENT`].
    newest: VecDeque<String>,
    newest_searched: VecDeque<String>,
}

fn client_index(c: &CallRecord) -> usize {
    c.client_id
        .as_deref()
        .and_then(|s| s.strip_prefix("client-"))
        .and_then(|n| n.parse().ok())
        .expect("generated client id")
}

impl Loaded {
    fn add(&mut self, c: &CallRecord) {
        self.events += 1;
        let m = self
            .minutes
            .entry(c.time.div_euclid(60_000) * 60_000)
            .or_default();
        let client = client_index(c);
        let api = APIS
            .iter()
            .position(|a| *a == c.api)
            .expect("generated API");
        let error = !(200..300).contains(&c.status);
        m.calls_by_client[client] += 1;
        m.calls_by_api[api] += 1;
        if error {
            m.errors_by_client[client] += 1;
            m.errors_by_api[api] += 1;
        }
        if c.status >= 500 {
            m.server_errors_by_key[client / 2] += 1;
        }
        for (list, take) in [
            (&mut self.newest, true),
            (&mut self.newest_searched, client == SEARCHED_CLIENT),
        ] {
            if take {
                list.push_front(c.id.clone());
                list.truncate(PAGE + 1);
            }
        }
    }

    /// Sums `f` over the minutes in `[from, to)`.
    fn sum(&self, from: i64, to: i64, f: impl Fn(&Minute) -> u64) -> u64 {
        self.minutes.range(from..to).map(|(_, m)| f(m)).sum()
    }
}

fn ms(v: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(v.as_str().expect("a time"))
        .expect("an RFC 3339 time")
        .timestamp_millis()
}

fn int(v: &Value) -> u64 {
    v.as_i64().expect("a number") as u64
}

/// What a case's answer must agree with.
#[derive(Clone, Copy)]
enum Check {
    Dashboard,
    /// Series: the calls (and errors) of every point and the totals; with
    /// an API filter, or of one key's 5xx.
    Series,
    SeriesApi(usize),
    SeriesKey5xx(usize),
    BreakdownKey,
    BreakdownApi,
    BreakdownClient,
    FirstPage,
    Search,
}

/// The disagreements between a case's answer and what was loaded.
fn check(kind: Check, body: &Value, loaded: &Loaded) -> Vec<String> {
    fn expect(bad: &mut Vec<String>, what: String, got: u64, want: u64) {
        if got != want {
            bad.push(format!("{what}: answered {got}, loaded {want}"));
        }
    }
    let mut bad = Vec::new();
    let client_calls = |m: &Minute| m.calls_by_client.iter().map(|&n| u64::from(n)).sum::<u64>();
    let client_errors = |m: &Minute| {
        m.errors_by_client
            .iter()
            .map(|&n| u64::from(n))
            .sum::<u64>()
    };
    match kind {
        Check::Dashboard => {
            let c = &body["consumer"];
            expect(
                &mut bad,
                "all-time calls".into(),
                int(&c["calls_total"]),
                loaded.events,
            );
            for bar in body["hourly"].as_array().expect("bars") {
                let from = ms(&bar["start"]);
                let to = from + 3_600_000;
                expect(
                    &mut bad,
                    format!("bar {} calls", bar["start"]),
                    int(&bar["successes"]) + int(&bar["errors"]),
                    loaded.sum(from, to, client_calls),
                );
                expect(
                    &mut bad,
                    format!("bar {} errors", bar["start"]),
                    int(&bar["errors"]),
                    loaded.sum(from, to, client_errors),
                );
            }
            let apis = body["apis"].as_array().expect("API rows");
            for (i, api) in APIS.iter().enumerate() {
                let row = apis.iter().find(|r| r["api"] == *api);
                expect(
                    &mut bad,
                    format!("all-time calls of {api}"),
                    row.map_or(0, |r| int(&r["calls"])),
                    loaded.sum(i64::MIN, i64::MAX, |m| u64::from(m.calls_by_api[i])),
                );
            }
        }
        Check::Series | Check::SeriesApi(_) | Check::SeriesKey5xx(_) => {
            let calls = |m: &Minute| match kind {
                Check::SeriesApi(a) => u64::from(m.calls_by_api[a]),
                Check::SeriesKey5xx(k) => u64::from(m.server_errors_by_key[k]),
                _ => client_calls(m),
            };
            let errors = |m: &Minute| match kind {
                Check::SeriesApi(a) => u64::from(m.errors_by_api[a]),
                Check::SeriesKey5xx(k) => u64::from(m.server_errors_by_key[k]),
                _ => client_errors(m),
            };
            let points = body["points"].as_array().expect("points");
            let step = match points.as_slice() {
                [a, b, ..] => ms(&b["start"]) - ms(&a["start"]),
                _ => ms(&body["to"]) - ms(&body["from"]),
            };
            for p in points {
                let from = ms(&p["start"]);
                expect(
                    &mut bad,
                    format!("point {} calls", p["start"]),
                    int(&p["calls"]),
                    loaded.sum(from, from + step, calls),
                );
                expect(
                    &mut bad,
                    format!("point {} errors", p["start"]),
                    int(&p["errors"]),
                    loaded.sum(from, from + step, errors),
                );
            }
            let (from, to) = (ms(&body["from"]), ms(&body["to"]));
            expect(
                &mut bad,
                "total calls".into(),
                int(&body["totals"]["calls"]),
                loaded.sum(from, to, calls),
            );
            expect(
                &mut bad,
                "total errors".into(),
                int(&body["totals"]["errors"]),
                loaded.sum(from, to, errors),
            );
        }
        Check::BreakdownKey | Check::BreakdownApi | Check::BreakdownClient => {
            let (from, to) = (ms(&body["from"]), ms(&body["to"]));
            let mut want: HashMap<String, (u64, u64)> = HashMap::new();
            for m in loaded.minutes.range(from..to).map(|(_, m)| m) {
                let mut add = |k: String, c: u32, e: u32| {
                    let w = want.entry(k).or_default();
                    w.0 += u64::from(c);
                    w.1 += u64::from(e);
                };
                match kind {
                    Check::BreakdownApi => {
                        for (i, api) in APIS.iter().enumerate() {
                            add((*api).to_owned(), m.calls_by_api[i], m.errors_by_api[i]);
                        }
                    }
                    _ => {
                        for c in 0..CLIENTS {
                            let k = match kind {
                                Check::BreakdownKey => format!("key_{:02}", c / 2),
                                _ => format!("client-{c}"),
                            };
                            add(k, m.calls_by_client[c], m.errors_by_client[c]);
                        }
                    }
                }
            }
            want.retain(|_, (c, _)| *c > 0);
            let rows = body["rows"].as_array().expect("rows");
            expect(
                &mut bad,
                "rows".into(),
                rows.len() as u64,
                want.len() as u64,
            );
            for r in rows {
                let key = r["key"].as_str().unwrap_or_default();
                let (c, e) = want.get(key).copied().unwrap_or_default();
                expect(&mut bad, format!("{key} calls"), int(&r["calls"]), c);
                expect(&mut bad, format!("{key} errors"), int(&r["errors"]), e);
            }
            let total: u64 = rows.iter().map(|r| int(&r["calls"])).sum();
            expect(
                &mut bad,
                "sum of the rows".into(),
                total,
                loaded.sum(from, to, client_calls),
            );
        }
        Check::FirstPage | Check::Search => {
            let all = match kind {
                Check::Search => &loaded.newest_searched,
                _ => &loaded.newest,
            };
            let got: Vec<&str> = body["items"]
                .as_array()
                .expect("items")
                .iter()
                .map(|i| i["id"].as_str().unwrap_or_default())
                .collect();
            let want: Vec<&str> = all.iter().take(PAGE).map(String::as_str).collect();
            if got != want {
                bad.push(format!(
                    "page: answered {} calls from {:?}, the newest {} that match are from {:?}",
                    got.len(),
                    got.first(),
                    want.len(),
                    want.first()
                ));
            }
            expect(
                &mut bad,
                "a next page".into(),
                u64::from(body["next_before"].is_string()),
                u64::from(all.len() > PAGE),
            );
        }
    }
    bad
}

async fn create_pg_db(url: &str) -> String {
    let name = format!("tally_bench_{}", std::process::id());
    let mut admin = sqlx::PgConnection::connect(url).await.expect("postgres");
    sqlx::Executor::execute(&mut admin, format!("CREATE DATABASE {name}").as_str())
        .await
        .expect("create database");
    match url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("postgres URL needs a database part"),
    }
}

fn pct(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
}

/// Loads, checks and times one backend; returns the number of mismatches.
async fn run(label: &str, url: String, dir: &std::path::Path, events: u64) -> usize {
    println!("==> {label}: {events} events over {SPAN_DAYS} days");
    let settings = Settings {
        bind: "127.0.0.1:0".into(),
        data_dir: dir.to_path_buf(),
        database_url: Some(url.clone().into()),
        static_dir: "/nonexistent".into(),
        ..Settings::default()
    };
    let app = Application::build(settings).await.expect("server starts");
    let store = app.store().clone();
    let base = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::new();
    let email = "bench@example.com";
    let auth: Value = client
        .post(format!("{base}/api/v1/auth/signup"))
        .json(&json!({"email": email, "password": "correct horse battery", "display_name": "b"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = auth["access_token"].as_str().unwrap().to_owned();
    let me: Value = client
        .get(format!("{base}/api/v1/me"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ns = me["namespaces"][0]["id"].as_str().unwrap().to_owned();

    let now = tally_store::now_ms();
    let start = now - SPAN_DAYS * 86_400_000;
    let step = (SPAN_DAYS * 86_400_000) as f64 / events as f64;
    let t0 = Instant::now();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut writer = tally_store::recording::Writer::open(&store)
        .await
        .expect("writer");
    let mut loaded = Loaded::default();
    let mut i = 0u64;
    while i < events {
        let n = (events - i).min(BATCH as u64);
        let batch: Vec<CallRecord> = (i..i + n)
            .map(|j| make(&ns, j, start, step, &mut rng))
            .collect();
        batch.iter().for_each(|c| loaded.add(c));
        writer
            .record_calls(&batch, tally_store::now_ms())
            .await
            .expect("record");
        i += n;
        if i % 1_000_000 < n {
            println!(
                "    loaded {i} ({:.0} events/s)",
                i as f64 / t0.elapsed().as_secs_f64()
            );
        }
    }
    drop(writer);
    println!("    load: {:.1} s", t0.elapsed().as_secs_f64());
    if label == "PostgreSQL" {
        let mut conn = store.conn().await.unwrap();
        let rollups = Table::ALL.iter().map(|t| t.name());
        for t in ["usage_events", "ledger_entries"]
            .into_iter()
            .chain(rollups)
        {
            sqlx::query(&format!("ANALYZE {t}"))
                .execute(&mut *conn)
                .await
                .unwrap();
        }
    }
    {
        let mut conn = store.conn().await.unwrap();
        for t in Table::ALL.iter().map(|t| t.name()) {
            let n: i64 = sqlx::Row::get(
                &sqlx::query(&format!("SELECT CAST(COUNT(*) AS BIGINT) AS n FROM {t}"))
                    .fetch_one(&mut *conn)
                    .await
                    .unwrap(),
                "n",
            );
            println!("    {t}: {n} rows");
        }
    }

    let p = |rest: &str| format!("{base}/api/v1/namespaces/{ns}{rest}");
    let key = format!("key_{FILTERED_KEY:02}");
    let cases = [
        (
            "dashboard",
            p("/dashboard?environment=live"),
            Check::Dashboard,
        ),
        (
            "series 1h (minute)",
            p("/monitoring/series?environment=live&range=1h"),
            Check::Series,
        ),
        (
            "series 24h (hour)",
            p("/monitoring/series?environment=live&range=24h"),
            Check::Series,
        ),
        (
            "series 7d (hour)",
            p("/monitoring/series?environment=live&range=7d"),
            Check::Series,
        ),
        (
            "series 30d (day)",
            p("/monitoring/series?environment=live&range=30d"),
            Check::Series,
        ),
        (
            "series 90d (day)",
            p("/monitoring/series?environment=live&range=90d"),
            Check::Series,
        ),
        (
            "series 7d, one API",
            p(&format!(
                "/monitoring/series?environment=live&range=7d&api={}",
                APIS[1]
            )),
            Check::SeriesApi(1),
        ),
        (
            "series 30d, one key, 5xx",
            p(&format!(
                "/monitoring/series?environment=live&range=30d&key_id={key}&status_class=5xx"
            )),
            Check::SeriesKey5xx(FILTERED_KEY),
        ),
        (
            "breakdown by key 24h",
            p("/monitoring/breakdown?environment=live&by=key&range=24h"),
            Check::BreakdownKey,
        ),
        (
            "breakdown by API 30d",
            p("/monitoring/breakdown?environment=live&by=api&range=30d"),
            Check::BreakdownApi,
        ),
        (
            "breakdown by client 30d",
            p("/monitoring/breakdown?environment=live&by=client_id&range=30d"),
            Check::BreakdownClient,
        ),
        (
            "request log, first page",
            p(&format!(
                "/monitoring/requests?environment=live&limit={PAGE}"
            )),
            Check::FirstPage,
        ),
        (
            "request log, search",
            p(&format!(
                "/monitoring/requests?environment=live&limit={PAGE}&q=client-{SEARCHED_CLIENT}"
            )),
            Check::Search,
        ),
    ];
    println!(
        "    {:<28} {:>10} {:>10}  data",
        "query", "p50 ms", "p95 ms"
    );
    let mut mismatches = 0;
    for (name, url, kind) in cases {
        let mut times = Vec::with_capacity(RUNS);
        let mut bad = Vec::new();
        for run in 0..RUNS + 3 {
            let t = Instant::now();
            let res = client.get(&url).bearer_auth(&token).send().await.unwrap();
            assert!(res.status().is_success(), "{name}: {}", res.status());
            let body = res.bytes().await.unwrap();
            if run >= 3 {
                times.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            if run == 0 {
                let body: Value = serde_json::from_slice(&body).expect("a JSON answer");
                bad = check(kind, &body, &loaded);
            }
        }
        let p50 = pct(&mut times, 0.5);
        let p95 = pct(&mut times, 0.95);
        let verdict = if bad.is_empty() { "ok" } else { "MISMATCH" };
        println!("    {name:<28} {p50:>10.2} {p95:>10.2}  {verdict}");
        for b in &bad {
            println!("        MISMATCH {name}: {b}");
        }
        mismatches += bad.len();
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    mismatches
}

#[tokio::main]
async fn main() {
    let a = args();
    let mut mismatches = 0;
    if a.sqlite {
        let dir = tempfile::tempdir().unwrap();
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("tally.db").display()
        );
        mismatches += run("SQLite", url, dir.path(), a.events).await;
    }
    if let Some(pg) = a.postgres {
        let dir = tempfile::tempdir().unwrap();
        let url = create_pg_db(&pg).await;
        mismatches += run("PostgreSQL", url.clone(), dir.path(), a.events).await;
        println!("    (database left for inspection: {url}; drop it when done)");
    }
    if mismatches > 0 {
        println!("MISMATCH: {mismatches} figures disagree with the loaded events");
        std::process::exit(1);
    }
}
