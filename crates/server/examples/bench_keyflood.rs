//! A valid key's latency during a flood of random keys (A2): starts the
//! server with its default settings on a fresh database, caches one test key,
//! then times sequential sandbox calls of that key while nothing else runs,
//! while 64 connections from one address send random well-formed secrets as
//! fast as they can, and while 256 addresses (127.0.1.x and up, all on the
//! loopback) do, one connection each. The flood runs on a runtime of its own.
//!
//! Run through `cargo xtask bench-keyflood [--postgres URL] [--no-sqlite]
//! [--calls N]`. It prints figures; it never fails because of speed. It uses
//! only HTTP and the settings' defaults, so the same file measures older
//! versions of the server too.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::distributions::{Alphanumeric, DistString};
use serde_json::{json, Value};
use tally_server::config::Settings;
use tally_server::Application;
use tally_store::sqlx::{self, Connection};

struct Args {
    postgres: Option<String>,
    sqlite: bool,
    calls: usize,
}

fn args() -> Args {
    let mut a = Args {
        postgres: None,
        sqlite: true,
        calls: 2000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--postgres" => a.postgres = it.next(),
            "--no-sqlite" => a.sqlite = false,
            "--calls" => a.calls = it.next().and_then(|v| v.parse().ok()).expect("--calls N"),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

async fn create_pg_db(url: &str) -> String {
    let name = format!("tally_keyflood_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut conn)
        .await
        .unwrap();
    let (base, _) = url.rsplit_once('/').unwrap();
    format!("{base}/{name}")
}

fn pct(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

fn random_secret() -> String {
    format!(
        "tk_test_{}",
        Alphanumeric.sample_string(&mut rand::thread_rng(), 40)
    )
}

/// `calls` sequential calls of the valid key; their latencies in ms.
async fn time_calls(client: &reqwest::Client, base: &str, secret: &str, calls: usize) -> Vec<f64> {
    let body = json!({"model": "tally-sandbox", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5});
    let mut out = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        let res = client
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(secret)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = res.status();
        res.bytes().await.unwrap();
        out.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!(status.is_success(), "the valid key got {status}");
    }
    out
}

/// Answers counted by status, shared by the flood's tasks.
type StatusCounts = Arc<Mutex<BTreeMap<String, u64>>>;

/// Random-key requests from `addresses` source addresses, `per_address`
/// connections each, until `stop`; answers counted by status.
fn flood(
    rt: &tokio::runtime::Runtime,
    base: &str,
    addresses: usize,
    per_address: usize,
    stop: Arc<AtomicBool>,
) -> (Vec<tokio::task::JoinHandle<()>>, StatusCounts) {
    let counts = Arc::new(Mutex::new(BTreeMap::new()));
    let mut tasks = Vec::new();
    for a in 0..addresses {
        let source = if addresses == 1 {
            Ipv4Addr::LOCALHOST
        } else {
            Ipv4Addr::new(127, 0, 1 + (a / 250) as u8, 1 + (a % 250) as u8)
        };
        let client = {
            let _in_rt = rt.enter();
            reqwest::Client::builder()
                .local_address(IpAddr::V4(source))
                .build()
                .unwrap()
        };
        for _ in 0..per_address {
            let (client, url, stop, counts) = (
                client.clone(),
                format!("{base}/v1/chat/completions"),
                stop.clone(),
                counts.clone(),
            );
            tasks.push(rt.spawn(async move {
                let body = json!({"model": "tally-sandbox", "messages": []});
                while !stop.load(Ordering::Relaxed) {
                    let status = match client
                        .post(&url)
                        .bearer_auth(random_secret())
                        .json(&body)
                        .send()
                        .await
                    {
                        Ok(r) => {
                            let s = r.status().as_u16().to_string();
                            let _ = r.bytes().await;
                            s
                        }
                        Err(_) => "transport error".to_owned(),
                    };
                    *counts.lock().unwrap().entry(status).or_default() += 1;
                }
            }));
        }
    }
    (tasks, counts)
}

/// The key-lookup counters of `/metrics`, when the server has them.
async fn lookups(client: &reqwest::Client, base: &str) -> String {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("tally_gateway_key_lookups_total"))
        .collect();
    if lines.is_empty() {
        "no key lookup metrics".into()
    } else {
        lines.join("; ")
    }
}

async fn run(
    label: &str,
    database_url: String,
    dir: &std::path::Path,
    calls: usize,
    rt: &tokio::runtime::Runtime,
) {
    let settings = Settings {
        bind: "127.0.0.1:0".into(),
        data_dir: dir.to_path_buf(),
        database_url: Some(database_url.into()),
        static_dir: "/nonexistent".into(),
        ..Settings::default()
    };
    let app = Application::build(settings).await.expect("server starts");
    let base = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::new();
    let auth: Value = client
        .post(format!("{base}/api/v1/auth/signup"))
        .json(&json!({"email": "bench@example.com", "password": "correct horse battery", "display_name": "bench"}))
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
    let key: Value = client
        .post(format!("{base}/api/v1/namespaces/{ns}/keys"))
        .bearer_auth(&token)
        .json(&json!({"name": "bench", "environment": "test"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = key["secret"].as_str().unwrap().to_owned();
    // Past the change poller's look-back, which drops a new key for 2 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    time_calls(&client, &base, &secret, 200).await;

    println!("\n{label}: {calls} sequential calls of one cached test key (sandbox), ms");
    println!(
        "{:<34} {:>8} {:>8} {:>12} {:>10}  flood answers",
        "", "p50", "p99", "flood req/s", "calls/s"
    );
    for (what, addresses, per_address) in [
        ("quiet", 0, 0),
        ("flood: 64 connections, 1 address", 1, 64),
        ("flood: 256 addresses", 256, 1),
    ] {
        let stop = Arc::new(AtomicBool::new(false));
        let (tasks, counts) = flood(rt, &base, addresses, per_address, stop.clone());
        if addresses > 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            counts.lock().unwrap().clear();
        }
        let started = Instant::now();
        let mut lat = time_calls(&client, &base, &secret, calls).await;
        let secs = started.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
        let counts = counts.lock().unwrap().clone();
        let flooded: u64 = counts.values().sum();
        println!(
            "{what:<34} {:>8.3} {:>8.3} {:>12.0} {:>10.0}  {counts:?}",
            pct(&mut lat, 0.5),
            pct(&mut lat, 0.99),
            flooded as f64 / secs,
            calls as f64 / secs,
        );
    }
    println!("{}", lookups(&client, &base).await);
}

#[tokio::main]
async fn main() {
    let a = args();
    // The flood runs on threads of its own, so it competes with the server
    // for the CPU as an outside client would, not for the server's runtime
    // (the PostgreSQL writer is a task on it).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Sandbox calls cost about 0.0011 credits: the welcome credits cover
    // 9,000 of them, so keep each run below that.
    assert!(a.calls * 3 + 200 < 9_000, "--calls must stay below 2,900");
    if a.sqlite {
        let dir = tempfile::tempdir().unwrap();
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("tally.db").display()
        );
        run("SQLite", url, dir.path(), a.calls, &rt).await;
    }
    if let Some(pg) = &a.postgres {
        let dir = tempfile::tempdir().unwrap();
        let url = create_pg_db(pg).await;
        run("PostgreSQL", url, dir.path(), a.calls, &rt).await;
    }
    rt.shutdown_background();
}
