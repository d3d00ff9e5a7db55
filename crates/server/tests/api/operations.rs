//! Operations (O2, O3): `tally check-config` says whether a configuration
//! can start and what is in effect, without its secrets; `/metrics` can be
//! closed behind a token; SIGTERM lets a stream in flight finish, recorded
//! and billed, while new connections are refused.

use std::process::Command;
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tally_common::ErrorCode;
use tally_store::sqlx;

use crate::helpers::{
    assert_error, backend_tests, spawn_app_with, test_settings, Backend, TallyProcess, TestDatabase,
};

backend_tests!(metrics_can_be_closed_behind_a_token);

fn check_config(file: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tally"))
        .arg("--config")
        .arg(file)
        .arg("check-config")
        .env_remove("TALLY_DATABASE_URL")
        .output()
        .unwrap()
}

#[test]
fn check_config_accepts_a_good_file_without_printing_secrets_and_refuses_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        r#"
bind = "0.0.0.0:9000"
database_url = "postgres://tally:db-password-123@db.example.com/tally"
[auth]
jwt_secret = "short-jwt-secret"
[[catalog]]
slug = "acme"
name = "Acme"
models = ["acme-1"]
upstreams = [{ url = "https://api.acme.example", api_key = "sk-upstream-456" }]
pricing = { per_request_micros = 100 }
"#,
    )
    .unwrap();
    let out = check_config(&good);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("configuration OK"), "{text}");
    assert!(
        text.contains("0.0.0.0:9000"),
        "the settings in effect: {text}"
    );
    assert!(text.contains("api.acme.example"), "{text}");
    for warning in [
        "jwt_secret is shorter than 32 bytes",
        "/metrics is open",
        "no backup schedule",
    ] {
        assert!(text.contains(warning), "{warning}: {text}");
    }
    for secret in ["db-password-123", "short-jwt-secret", "sk-upstream-456"] {
        assert!(!text.contains(secret), "{secret} printed: {text}");
    }

    for (body, why) in [
        ("operators = [\"a@example.com\"]", "tally admin grant-operator"),
        ("database_url = \"mysql://x\"", "database_url must start with"),
        (
            "[[catalog]]\nslug = \"Bad Slug\"\nname = \"x\"\nupstreams = [{ url = \"https://x.example\" }]",
            "catalog API 'Bad Slug'",
        ),
        ("bind = 5", "bind"),
    ] {
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, body).unwrap();
        let out = check_config(&bad);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{body}: {out:?}");
        assert!(err.contains(why), "{body}: {err}");
    }
}

async fn metrics_can_be_closed_behind_a_token(backend: Backend) {
    let (app, _) = spawn_app_with(backend, |s| {
        s.metrics_token = Some("metrics-token-789".to_owned().into());
    })
    .await;
    let get = |auth: Option<&'static str>| {
        let mut req = app.client.get(app.url("/metrics"));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.send()
    };
    for auth in [None, Some("Bearer wrong"), Some("metrics-token-789")] {
        let res = get(auth).await.unwrap();
        assert_error(res, StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized).await;
    }
    let res = get(Some("Bearer metrics-token-789")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.text().await.unwrap().contains("tally_uptime_seconds"));
}

/// The server's `/metrics` page.
async fn metrics_text(client: &reqwest::Client, node: &TallyProcess) -> String {
    client
        .get(node.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// An upstream that streams sixty words, one every 100 ms, then its usage.
async fn slow_stream_upstream() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = HttpServer::new(|| {
        App::new().route(
            "/v1/chat/completions",
            web::post().to(|| async {
                let words = futures_util::stream::unfold(0, |i| async move {
                    if i > 61 {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let event = match i {
                        0..=59 => format!(
                            "data: {}\n\n",
                            json!({"choices": [{"index": 0, "delta": {"content": format!("w{i} ")}}]})
                        ),
                        60 => format!(
                            "data: {}\n\n",
                            json!({"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 20}})
                        ),
                        _ => "data: [DONE]\n\n".to_owned(),
                    };
                    Some((Ok::<_, actix_web::Error>(web::Bytes::from(event)), i + 1))
                });
                HttpResponse::Ok()
                    .content_type("text/event-stream")
                    .streaming(words)
            }),
        )
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    format!("http://127.0.0.1:{port}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_stream_in_flight_finish_and_bills_it_while_refusing_new_connections() {
    let db = TestDatabase::new(Backend::Sqlite).await;
    let upstream = slow_stream_upstream().await;
    let data = db.dir.path().join("node");
    std::fs::create_dir_all(&data).unwrap();
    let node = TallyProcess::start(
        &db.url,
        &data,
        Some(&db.dir.path().join("node.log")),
        &[
            ("TALLY_SHUTDOWN_TIMEOUT_SECS", "30"),
            ("TALLY_AUTH__SIGNUPS_PER_IP_PER_HOUR", "0"),
        ],
    )
    .await;
    // An operator, an API on the slow upstream, live credits and a live key.
    let store = tally_store::Store::connect(&tally_store::ConnectOptions {
        url: db.url.clone(),
        max_connections: 2,
    })
    .await
    .unwrap();
    let settings = test_settings(&db);
    let passwords = tally_server::auth::Passwords::new(&settings.auth).unwrap();
    tally_server::auth::bootstrap::create_operator(
        &store,
        &settings,
        &passwords,
        "op@example.com",
        "operator horse battery",
        Some("op"),
    )
    .await
    .unwrap();
    let client = reqwest::Client::new();
    let login: Value = client
        .post(node.url("/api/v1/auth/login"))
        .json(&json!({"email": "op@example.com", "password": "operator horse battery"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["access_token"].as_str().unwrap().to_owned();
    let me: Value = client
        .get(node.url("/api/v1/me"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ns = me["namespaces"][0]["id"].as_str().unwrap().to_owned();
    let admin = |path: String, body: Value| {
        let (client, token, url) = (client.clone(), token.clone(), node.url(&path));
        async move {
            let res = client
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert!(
                res.status().is_success(),
                "{path}: {}",
                res.text().await.unwrap()
            );
            res.json::<Value>().await.unwrap()
        }
    };
    admin(
        "/api/v1/admin/catalog".into(),
        json!({"slug": "slow", "name": "Slow", "models": ["slow-1"],
               "upstreams": [{"url": upstream}],
               "pricing": {"per_1k_output_tokens_micros": 1000, "default_max_output_tokens": 100}}),
    )
    .await;
    admin(
        format!("/api/v1/admin/namespaces/{ns}/grants"),
        json!({"environment": "live", "amount_micros": 1_000_000, "memo": "drain"}),
    )
    .await;
    let key = admin(
        format!("/api/v1/namespaces/{ns}/keys"),
        json!({"name": "k", "environment": "live"}),
    )
    .await;
    let secret = key["secret"].as_str().unwrap().to_owned();
    let test_key = admin(
        format!("/api/v1/namespaces/{ns}/keys"),
        json!({"name": "t", "environment": "test"}),
    )
    .await;
    // Two sandbox calls: the second finds the key in the cache.
    for _ in 0..2 {
        let res = client
            .post(node.url("/v1/chat/completions"))
            .bearer_auth(test_key["secret"].as_str().unwrap())
            .json(
                &json!({"model": "tally-sandbox", "messages": [{"role": "user", "content": "hi"}]}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }

    // The credits upkeep has had a successful round (it runs every second).
    let metric = |text: &str, name: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    };
    crate::helpers::eventually(30, "a successful round of the credits upkeep", || async {
        let text = metrics_text(&client, &node).await;
        metric(
            &text,
            "tally_upkeep_last_success_timestamp_seconds{task=\"credits\"}",
        )
        .is_some()
    })
    .await;

    let res = client
        .post(node.url("/v1/chat/completions"))
        .bearer_auth(&secret)
        .json(&json!({"model": "slow-1", "stream": true, "max_tokens": 50,
                      "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = res.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("w0"));

    // The metrics show the stream in flight, the finished calls' durations
    // and commit waits, the cache hit and the background tasks' health.
    let text = metrics_text(&client, &node).await;
    assert_eq!(
        metric(&text, "tally_gateway_calls_in_flight"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "tally_gateway_call_duration_seconds_count{request_type=\"sync\"}"
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "tally_gateway_commit_wait_seconds_count"),
        Some(2.0),
        "{text}"
    );
    assert!(
        metric(&text, "tally_gateway_key_cache_hits_total").is_some_and(|n| n >= 1.0),
        "{text}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let credits = metric(
        &text,
        "tally_upkeep_last_success_timestamp_seconds{task=\"credits\"}",
    );
    assert!(credits.is_some_and(|t| (now - t).abs() < 60.0), "{text}");

    // SIGTERM while the stream runs: new connections are refused at once,
    // the stream goes on to its end.
    let pid = node.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let mut refused = false;
    for _ in 0..500 {
        let fresh = reqwest::Client::new();
        if fresh.get(node.url("/healthz")).send().await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "new connections are refused once draining");
    let mut text = String::from_utf8_lossy(&first).into_owned();
    while let Some(chunk) = body.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    assert!(text.contains("w59") && text.contains("[DONE]"), "{text}");

    // The process ends by itself, and the stream is recorded and billed.
    let mut node = node;
    let mut exited = false;
    for _ in 0..300 {
        if node.child.try_wait().unwrap().is_some() {
            exited = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(exited, "the server stopped after the drain");
    let mut conn = store.conn().await.unwrap();
    let (calls, tokens_out, cost): (i64, i64, i64) = sqlx::query_as(
        "SELECT CAST(COUNT(*) AS BIGINT), CAST(COALESCE(SUM(tokens_out), 0) AS BIGINT), \
         CAST(COALESCE(SUM(cost_micros), 0) AS BIGINT) FROM usage_events \
         WHERE namespace_id = $1 AND environment = 'live' AND status = 200",
    )
    .bind(&ns)
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert_eq!((calls, tokens_out), (1, 20));
    assert_eq!(cost, 20, "20 output tokens at 1,000 micro-credits per 1k");
    let (balance, ledger): (i64, i64) = sqlx::query_as(
        "SELECT b.balance_micros, CAST((SELECT SUM(amount_micros) FROM ledger_entries l \
         WHERE l.namespace_id = b.namespace_id AND l.environment = b.environment) AS BIGINT) \
         FROM balances b WHERE b.namespace_id = $1 AND b.environment = 'live'",
    )
    .bind(&ns)
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert_eq!((balance, ledger), (1_000_000 - 20, 1_000_000 - 20));
}
