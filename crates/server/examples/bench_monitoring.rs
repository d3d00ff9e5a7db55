//! Monitoring query latency at scale (M6): loads N usage events (10 million by
//! default) into a fresh database through the gateway's own batch writers
//! (raw rows and rollups, as the gateway commits them), starts the server on
//! it and times the dashboard and monitoring endpoints over HTTP.
//!
//! Run through `cargo xtask bench-monitoring [--events N] [--postgres URL]`.
//! It prints figures; it never fails because of speed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

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
        0 => ("gpt", Some("gpt-4o-mini"), "/v1/chat/completions"),
        1 => ("embed", Some("text-embed"), "/v1/embeddings"),
        _ => ("weather", None, "/v1/apis/weather/forecast"),
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

async fn run(label: &str, url: String, dir: &std::path::Path, events: u64) {
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
    let mut i = 0u64;
    while i < events {
        let n = (events - i).min(BATCH as u64);
        let batch: Vec<CallRecord> = (i..i + n)
            .map(|j| make(&ns, j, start, step, &mut rng))
            .collect();
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
    drop(recorder);
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
    let cases = [
        ("dashboard", p("/dashboard?environment=live")),
        (
            "series 1h (minute)",
            p("/monitoring/series?environment=live&range=1h"),
        ),
        (
            "series 24h (hour)",
            p("/monitoring/series?environment=live&range=24h"),
        ),
        (
            "series 7d (hour)",
            p("/monitoring/series?environment=live&range=7d"),
        ),
        (
            "series 30d (day)",
            p("/monitoring/series?environment=live&range=30d"),
        ),
        (
            "series 90d (day)",
            p("/monitoring/series?environment=live&range=90d"),
        ),
        (
            "series 7d, one API",
            p("/monitoring/series?environment=live&range=7d&api=embed"),
        ),
        (
            "series 30d, one key, 5xx",
            p("/monitoring/series?environment=live&range=30d&key_id=key_03&status_class=5xx"),
        ),
        (
            "breakdown by key 24h",
            p("/monitoring/breakdown?environment=live&by=key&range=24h"),
        ),
        (
            "breakdown by API 30d",
            p("/monitoring/breakdown?environment=live&by=api&range=30d"),
        ),
        (
            "breakdown by client 30d",
            p("/monitoring/breakdown?environment=live&by=client_id&range=30d"),
        ),
        (
            "request log, first page",
            p("/monitoring/requests?environment=live&limit=50"),
        ),
        (
            "request log, search",
            p("/monitoring/requests?environment=live&limit=50&q=client-7"),
        ),
    ];
    println!("    {:<28} {:>10} {:>10}", "query", "p50 ms", "p95 ms");
    for (name, url) in cases {
        let mut times = Vec::with_capacity(RUNS);
        for run in 0..RUNS + 3 {
            let t = Instant::now();
            let res = client.get(&url).bearer_auth(&token).send().await.unwrap();
            assert!(res.status().is_success(), "{name}: {}", res.status());
            let _ = res.bytes().await.unwrap();
            if run >= 3 {
                times.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
        let p50 = pct(&mut times, 0.5);
        let p95 = pct(&mut times, 0.95);
        println!("    {name:<28} {p50:>10.2} {p95:>10.2}");
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::main]
async fn main() {
    let a = args();
    if a.sqlite {
        let dir = tempfile::tempdir().unwrap();
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("tally.db").display()
        );
        run("SQLite", url, dir.path(), a.events).await;
    }
    if let Some(pg) = a.postgres {
        let dir = tempfile::tempdir().unwrap();
        let url = create_pg_db(&pg).await;
        run("PostgreSQL", url.clone(), dir.path(), a.events).await;
        println!("    (database left for inspection: {url}; drop it when done)");
    }
}
