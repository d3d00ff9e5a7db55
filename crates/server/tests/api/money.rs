//! Money-path integrity (G1-G4, C3): every call pays for what it used, the
//! in-memory balance follows what was committed, and one caller's request
//! cannot fail another's. Against a mock upstream that misbehaves on purpose.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tally_common::{Balances, CreatedKey, Environment, ErrorCode, UsagePage};

use crate::helpers::{
    add_api, assert_error, backend_tests, grant, json, launch, spawn_app, test_settings, Backend,
    TestApp, TestDatabase, User,
};

backend_tests!(
    the_generic_route_cannot_reach_an_openai_api,
    the_hold_bounds_what_the_upstream_can_return,
    output_limits_below_one_and_odd_numbers_are_refused,
    a_stream_that_breaks_or_stalls_is_billed_for_what_it_delivered,
    a_client_that_hangs_up_pays_for_tool_call_deltas_it_received,
    the_balance_in_memory_follows_the_commit_when_callers_hang_up,
    a_nul_byte_in_one_call_fails_no_other_call,
    a_row_the_database_refuses_fails_alone,
    a_client_that_never_reads_and_a_trickling_upstream_are_cut_off,
    done_is_read_as_an_event_and_held_back_until_recorded,
    an_oversized_upstream_answer_is_refused_and_costs_nothing,
    gateway_errors_are_json,
);

/// What the mock upstream saw.
#[derive(Default)]
struct Seen {
    bodies: Vec<Value>,
    paths: Vec<String>,
}

type Shared = web::Data<Arc<Mutex<Seen>>>;

fn sse(v: Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

fn delta(text: &str) -> Bytes {
    sse(json!({"choices": [{"index": 0, "delta": {"content": text}}]}))
}

/// An OpenAI-like upstream whose behaviour the path picks.
async fn upstream() -> (String, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let data = web::Data::new(seen.clone());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(web::PayloadConfig::new(1 << 24))
            .route("/{mode}/{tail:.*}", web::to(answer))
    })
    .workers(2)
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    (format!("http://127.0.0.1:{port}"), seen)
}

async fn answer(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Bytes,
    seen: Shared,
) -> HttpResponse {
    let (mode, _) = path.into_inner();
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    {
        let mut s = seen.lock().unwrap();
        s.bodies.push(json.clone());
        s.paths.push(req.path().to_owned());
    }
    // The events one by one (so each goes out on its own), then the ending:
    // none, a broken connection, a stall, or more deltas forever.
    let events = |list: Vec<Bytes>, then: Option<&'static str>| {
        let tail = futures_util::stream::iter(then.map(|t| t.to_owned()));
        futures_util::stream::iter(list)
            .then(|b| async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Ok::<_, std::io::Error>(b)
            })
            .chain(tail.flat_map(|t| {
                futures_util::stream::unfold(Some(t), |t| async move {
                    let t = t?;
                    match t.as_str() {
                        "break" => Some((Err(std::io::Error::other("broken")), None)),
                        "more" => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            Some((Ok(delta(" more")), Some(t)))
                        }
                        _ => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            None
                        }
                    }
                })
            }))
    };
    let stream_ok = HttpResponse::Ok().content_type("text/event-stream").take();
    match mode.as_str() {
        // A whole answer that reports how many tokens it used: as many as
        // the request allowed, for every choice.
        "full" => {
            let max = json["max_tokens"]
                .as_u64()
                .or(json["max_completion_tokens"].as_u64())
                .unwrap_or(100_000);
            let n = json["n"].as_u64().unwrap_or(1);
            HttpResponse::Ok().json(json!({
                "id": "x", "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "long"}}],
                "usage": {"prompt_tokens": 10, "completion_tokens": max * n}
            }))
        }
        "break" | "stall" => {
            let then = if mode == "break" { "break" } else { "stall" };
            let mut s = stream_ok;
            s.streaming(events(
                vec![delta("Hello"), delta(" there"), delta(" friend")],
                Some(then),
            ))
        }
        "tools" => {
            let mut list = vec![sse(json!({"choices": [{"index": 0,
                "delta": {"role": "assistant", "tool_calls": [{"index": 0, "id": "c1",
                "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}}]}))];
            for part in ["{\"city\":", " \"Paris\",", " \"unit\": \"celsius\"}"] {
                list.push(sse(
                    json!({"choices": [{"index": 0, "delta": {"tool_calls": [
                    {"index": 0, "function": {"arguments": part}}]}}]}),
                ));
            }
            let mut s = stream_ok;
            s.streaming(events(list, Some("more")))
        }
        "flood" => {
            let big = "x".repeat(60_000);
            let list: Vec<Bytes> = (0..500).map(|_| delta(&big)).collect();
            let mut s = stream_ok;
            s.streaming(events(list, None))
        }
        "trickle" => {
            let bytes = futures_util::stream::unfold(0u64, |i| async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Some((Ok::<_, std::io::Error>(Bytes::from_static(b":")), i + 1))
            });
            let mut s = stream_ok;
            s.streaming(bytes)
        }
        "tricky" => {
            // Model output that contains the end marker, and the real end
            // marker split across two chunks.
            let list = vec![
                delta("the stream ends with data: [DONE]\n\n as you know"),
                sse(json!({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 7}})),
                Bytes::from_static(b"data: [DO"),
                Bytes::from_static(b"NE]\n\n"),
            ];
            let pieces = futures_util::stream::iter(list).then(|b| async move {
                tokio::time::sleep(Duration::from_millis(30)).await;
                Ok::<_, std::io::Error>(b)
            });
            let mut s = stream_ok;
            s.streaming(pieces)
        }
        "huge" => HttpResponse::Ok()
            .content_type("application/json")
            .body(vec![b' '; 3 << 20]),
        "slow" => {
            tokio::time::sleep(Duration::from_millis(400)).await;
            HttpResponse::Ok().json(json!({
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "late"}}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 10}
            }))
        }
        _ => HttpResponse::Ok().json(json!({"echo": req.path()})),
    }
}

fn ns(user: &User, rest: &str) -> String {
    format!("/api/v1/namespaces/{}{rest}", user.namespace_id)
}

async fn key(app: &TestApp, user: &User, env: &str) -> String {
    let k: CreatedKey = json(
        app.post(
            &ns(user, "/keys"),
            Some(&user.token),
            json!({"name": "k", "environment": env}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    k.secret
}

async fn post(app: &TestApp, secret: &str, path: &str, body: Value) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .bearer_auth(secret)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// Balance and held amount as the API shows them (the in-memory account).
async fn shown(app: &TestApp, user: &User, env: Environment) -> (i64, i64) {
    let b: Balances = json(
        app.get(&ns(user, "/credits"), Some(&user.token)).await,
        StatusCode::OK,
    )
    .await;
    let b = b.items.into_iter().find(|i| i.environment == env).unwrap();
    (b.balance_micros, b.held_micros)
}

/// C1: the ledger sums to the stored balance, and the in-memory balance the
/// API shows is the stored one with nothing held.
async fn assert_consistent(app: &TestApp, user: &User, env: Environment) -> i64 {
    let mut conn = app.store.conn().await.unwrap();
    let sum = tally_store::ledger::sum(&mut conn, &user.namespace_id, env)
        .await
        .unwrap();
    let stored = tally_store::ledger::balance(&mut conn, &user.namespace_id, env)
        .await
        .unwrap();
    drop(conn);
    assert_eq!(sum, stored, "the ledger sums to the stored balance");
    assert_eq!(
        shown(app, user, env).await,
        (stored, 0),
        "the account in memory equals the stored balance, nothing held"
    );
    stored
}

async fn calls(app: &TestApp, user: &User) -> UsagePage {
    json(
        app.get(&ns(user, "/usage?limit=200"), Some(&user.token))
            .await,
        StatusCode::OK,
    )
    .await
}

/// Waits until `n` calls are recorded.
async fn recorded(app: &TestApp, user: &User, n: usize) -> UsagePage {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let page = calls(app, user).await;
        if page.items.len() >= n || Instant::now() > until {
            return page;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An operator with a live balance and an API on the mock upstream.
async fn setup(app: &TestApp, upstream: &str, mode: &str, extra: Value) -> (User, String) {
    let op = app.signup_operator("op").await;
    let mut config = json!({
        "slug": "tok", "name": "Tokens", "models": ["tok-1"],
        "upstreams": [{"url": format!("{upstream}/{mode}")}],
        "pricing": {"per_request_micros": 100, "per_1k_input_tokens_micros": 1000,
                    "per_1k_output_tokens_micros": 1000, "default_max_output_tokens": 50}
    });
    if let (Some(c), Some(e)) = (config.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    add_api(app, &op, config).await;
    grant(app, &op, &op, "live", 10_000_000).await;
    let secret = key(app, &op, "live").await;
    (op, secret)
}

fn chat(extra: Value) -> Value {
    let mut body = json!({"model": "tok-1", "messages": [{"role": "user", "content": "Hi"}]});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    body
}

/// G1 (issue item 1): an OpenAI-protocol API is priced by tokens, which the
/// generic route cannot read, so it cannot be reached there at all.
async fn the_generic_route_cannot_reach_an_openai_api(backend: Backend) {
    let app = spawn_app(backend).await;
    let (up, seen) = upstream().await;
    let (op, secret) = setup(&app, &up, "full", json!({})).await;
    let before = shown(&app, &op, Environment::Live).await.0;
    for (method, path) in [
        (reqwest::Method::POST, "/v1/apis/tok/v1/chat/completions"),
        (reqwest::Method::GET, "/v1/apis/tok/v1/files"),
        (reqwest::Method::DELETE, "/v1/apis/tok/v1/files/file-1"),
        (reqwest::Method::POST, "/v1/apis/tok/v1/batches"),
    ] {
        let res = app
            .client
            .request(method, app.url(path))
            .bearer_auth(&secret)
            .json(&chat(json!({})))
            .send()
            .await
            .unwrap();
        assert_error(res, StatusCode::NOT_FOUND, ErrorCode::NotFound).await;
    }
    assert!(seen.lock().unwrap().paths.is_empty(), "never forwarded");
    assert_eq!(shown(&app, &op, Environment::Live).await.0, before);
    // The OpenAI endpoint prices it by its tokens.
    let res = post(
        &app,
        &secret,
        "/v1/chat/completions",
        chat(json!({"max_tokens": 20})),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["x-tally-cost-micros"], "130");
    assert_consistent(&app, &op, Environment::Live).await;
}

/// C3 (issue item 2): the upstream can never return more than the hold
/// assumed: a request without an output limit is forwarded with the API's
/// default written in, and `n`, `best_of` and lists of prompts multiply the
/// hold.
async fn the_hold_bounds_what_the_upstream_can_return(backend: Backend) {
    let app = spawn_app(backend).await;
    let (up, seen) = upstream().await;
    let (op, secret) = setup(&app, &up, "full", json!({})).await;

    let res = post(&app, &secret, "/v1/chat/completions", chat(json!({}))).await;
    assert_eq!(res.status(), StatusCode::OK);
    let forwarded = seen.lock().unwrap().bodies.last().cloned().unwrap();
    assert_eq!(forwarded["max_tokens"], 50, "the default is written in");
    // 100 per request + 10 input + 50 output tokens at 1 micro each.
    assert_eq!(res.headers()["x-tally-cost-micros"], "160");

    let res = post(
        &app,
        &secret,
        "/v1/chat/completions",
        chat(json!({"max_tokens": 30, "n": 3})),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()["x-tally-cost-micros"],
        "200",
        "all three choices are billed"
    );

    // A buyer whose balance covers one choice but not three is refused.
    let buyer = app.signup("buyer").await;
    grant(&app, &op, &buyer, "live", 400).await;
    let buyer_key = key(&app, &buyer, "live").await;
    let res = post(
        &app,
        &buyer_key,
        "/v1/chat/completions",
        chat(json!({"max_tokens": 100, "n": 3})),
    )
    .await;
    assert_error(
        res,
        StatusCode::PAYMENT_REQUIRED,
        ErrorCode::InsufficientCredits,
    )
    .await;
    let res = post(
        &app,
        &buyer_key,
        "/v1/completions",
        json!({"model": "tok-1", "prompt": ["a", "b", "c"], "max_tokens": 100, "best_of": 2}),
    )
    .await;
    assert_error(
        res,
        StatusCode::PAYMENT_REQUIRED,
        ErrorCode::InsufficientCredits,
    )
    .await;
    assert_consistent(&app, &op, Environment::Live).await;
    assert_consistent(&app, &buyer, Environment::Live).await;
}

/// Issue item 2: numbers that cannot bound a call are a 400 before anything
/// is held or forwarded.
async fn output_limits_below_one_and_odd_numbers_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let (up, seen) = upstream().await;
    let (op, secret) = setup(&app, &up, "full", json!({})).await;
    for bad in [
        json!({"max_tokens": -5}),
        json!({"max_tokens": 0}),
        json!({"max_completion_tokens": 0}),
        json!({"max_tokens": 1e308}),
        json!({"max_tokens": 2.5}),
        json!({"max_tokens": "10"}),
        json!({"n": 0}),
        json!({"n": -1}),
        json!({"n": 100000}),
        json!({"stream": "yes"}),
    ] {
        let res = post(&app, &secret, "/v1/chat/completions", chat(bad.clone())).await;
        let err = assert_error(res, StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest).await;
        assert!(!err.error.message.is_empty(), "{bad}");
    }
    let res = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&secret)
        .header("content-type", "application/json")
        .body(r#"{"model":"tok-1","messages":[],"max_tokens":18446744073709551616}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(seen.lock().unwrap().bodies.is_empty(), "nothing forwarded");
    assert_eq!(
        assert_consistent(&app, &op, Environment::Live).await,
        10_000_000
    );
}

async fn stream_text(res: reqwest::Response) -> String {
    let mut out = String::new();
    let mut body = res.bytes_stream();
    while let Some(Ok(chunk)) = body.next().await {
        out.push_str(&String::from_utf8_lossy(&chunk));
    }
    out
}

/// Issue item 3: a stream that breaks off or stalls after delivering tokens
/// is billed for them, not recorded at cost 0.
async fn a_stream_that_breaks_or_stalls_is_billed_for_what_it_delivered(backend: Backend) {
    let app = spawn_app(backend).await;
    let (up, _) = upstream().await;
    let (op, _) = setup(&app, &up, "break", json!({})).await;
    add_api(
        &app,
        &op,
        json!({
            "slug": "stall", "name": "Stall", "models": ["stall-1"], "timeout_ms": 500,
            "upstreams": [{"url": format!("{up}/stall")}],
            "pricing": {"per_request_micros": 100, "per_1k_output_tokens_micros": 1000}
        }),
    )
    .await;
    let secret = key(&app, &op, "live").await;
    for (model, code) in [("tok-1", "upstream_error"), ("stall-1", "upstream_timeout")] {
        let res = post(
            &app,
            &secret,
            "/v1/chat/completions",
            json!({"model": model, "stream": true, "max_tokens": 20, "messages": []}),
        )
        .await;
        assert_eq!(res.status(), StatusCode::OK);
        let text = stream_text(res).await;
        assert!(text.contains("there"), "the deltas went out: {text}");
        assert!(
            text.contains(code),
            "the stream ends with the error: {text}"
        );
        assert!(!text.contains("[DONE]"));
    }
    let page = recorded(&app, &op, 2).await;
    for ev in &page.items {
        assert!(ev.status == 502 || ev.status == 504, "{ev:?}");
        assert!(ev.tokens_out >= 2, "delivered tokens counted: {ev:?}");
        assert!(
            ev.cost_micros > 100,
            "billed for what was delivered: {ev:?}"
        );
    }
    assert_consistent(&app, &op, Environment::Live).await;
}

/// Issue item 3: on a client hang-up every delta it received counts, tool
/// call arguments included.
async fn a_client_that_hangs_up_pays_for_tool_call_deltas_it_received(backend: Backend) {
    let app = spawn_app(backend).await;
    let (up, _) = upstream().await;
    let (op, secret) = setup(&app, &up, "tools", json!({})).await;
    let res = post(
        &app,
        &secret,
        "/v1/chat/completions",
        chat(json!({"stream": true, "max_tokens": 200})),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = res.bytes_stream();
    let mut got = String::new();
    while !got.contains("celsius") {
        let chunk = body.next().await.unwrap().unwrap();
        got.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(body);
    let page = recorded(&app, &op, 1).await;
    let ev = &page.items[0];
    assert_eq!(ev.status, 499, "{ev:?}");
    // The name and arguments delivered are 46 characters, about 11 tokens
    // at four characters a token; counting one token per event gives 4.
    assert!(ev.tokens_out >= 8, "the tool call deltas count: {ev:?}");
    assert!(ev.cost_micros >= 100 + ev.tokens_in + 8, "{ev:?}");
    assert_consistent(&app, &op, Environment::Live).await;
}

/// Issue item 4: calls whose clients hang up while their record waits for
/// the commit still move the in-memory balance with the commit, so memory and
/// database never drift apart.
async fn the_balance_in_memory_follows_the_commit_when_callers_hang_up(backend: Backend) {
    let app = spawn_app(backend).await;
    let (up, _) = upstream().await;
    let (op, secret) = setup(&app, &up, "full", json!({})).await;
    // Lock the caller's balance row so the writer's commit waits.
    let mut blocker = app.store.begin().await.unwrap();
    tally_store::sqlx::query("UPDATE balances SET updated_at = updated_at WHERE namespace_id = $1")
        .bind(&op.namespace_id)
        .execute(&mut *blocker)
        .await
        .unwrap();
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let tries = (0..5).map(|_| {
        let (client, url, secret) = (
            impatient.clone(),
            app.url("/v1/chat/completions"),
            secret.clone(),
        );
        tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(secret)
                .json(&chat(json!({"max_tokens": 10})))
                .send()
                .await
                .is_err()
        })
    });
    let gave_up = futures_util::future::join_all(tries).await;
    assert!(
        gave_up.into_iter().all(Result::unwrap),
        "the clients gave up"
    );
    blocker.rollback().await.unwrap();
    let page = recorded(&app, &op, 5).await;
    assert_eq!(page.items.len(), 5);
    assert!(page
        .items
        .iter()
        .all(|e| e.status == 200 && e.cost_micros == 120));
    assert_eq!(
        assert_consistent(&app, &op, Environment::Live).await,
        10_000_000 - 5 * 120
    );
}

/// Issue item 5: a NUL byte (which PostgreSQL cannot store in text) in one
/// caller's path, model or client id is refused at the edge, and never fails
/// the calls committed with it.
async fn a_nul_byte_in_one_call_fails_no_other_call(backend: Backend) {
    let app = spawn_app(backend).await;
    let (up, _) = upstream().await;
    let (op, _) = setup(&app, &up, "full", json!({})).await;
    add_api(
        &app,
        &op,
        json!({"slug": "plain", "name": "Plain", "protocol": "http",
               "upstreams": [{"url": format!("{up}/echo")}],
               "pricing": {"per_request_micros": 10}}),
    )
    .await;
    let hostile = key(&app, &op, "live").await;
    let other = app.signup("other").await;
    grant(&app, &op, &other, "live", 1_000_000).await;
    let good = key(&app, &other, "live").await;
    let bad_calls = (0..10).map(|i| {
        let (client, base, secret) = (app.client.clone(), app.address.clone(), hostile.clone());
        tokio::spawn(async move {
            let res = match i % 3 {
                0 => client
                    .get(format!("{base}/v1/apis/plain/%00x"))
                    .bearer_auth(&secret)
                    .send(),
                1 => client
                    .post(format!("{base}/v1/chat/completions"))
                    .bearer_auth(&secret)
                    .json(&json!({"model": "tok-1\u{0}", "messages": []}))
                    .send(),
                _ => client
                    .post(format!("{base}/v1/apis/plain/x%00y/%C3%28"))
                    .bearer_auth(&secret)
                    .send(),
            };
            res.await.unwrap().status()
        })
    });
    let good_calls = (0..20).map(|_| {
        let (client, base, secret) = (app.client.clone(), app.address.clone(), good.clone());
        tokio::spawn(async move {
            client
                .get(format!("{base}/v1/apis/plain/weather"))
                .bearer_auth(&secret)
                .header("x-client-id", "app")
                .send()
                .await
                .unwrap()
                .status()
        })
    });
    let bad = futures_util::future::join_all(bad_calls).await;
    let good = futures_util::future::join_all(good_calls).await;
    assert!(
        bad.iter()
            .all(|s| *s.as_ref().unwrap() == StatusCode::BAD_REQUEST),
        "{bad:?}"
    );
    assert!(
        good.iter().all(|s| *s.as_ref().unwrap() == StatusCode::OK),
        "{good:?}"
    );
    assert_eq!(recorded(&app, &other, 20).await.items.len(), 20);
    assert_eq!(
        assert_consistent(&app, &other, Environment::Live).await,
        1_000_000 - 20 * 10
    );
}

/// Issue item 5: the writer isolates a row the database refuses: only that
/// call fails, the rest of its batch commits.
async fn a_row_the_database_refuses_fails_alone(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let store = tally_store::Store::connect(&tally_store::ConnectOptions {
        url: db.url.clone(),
        max_connections: 5,
    })
    .await
    .unwrap();
    store.migrate().await.unwrap();
    let ns = {
        let mut conn = store.conn().await.unwrap();
        let ns = tally_store::namespaces::insert(&mut conn, "n")
            .await
            .unwrap()
            .id;
        tally_store::ledger::add_to_balance(&mut conn, &ns, Environment::Test, 1_000_000)
            .await
            .unwrap();
        ns
    };
    let recorder = tally_server::services::recorder::Recorder::start(store.clone(), None).unwrap();
    let record = |i: usize, namespace_id: &str| tally_store::usage::CallRecord {
        id: format!("call_{i:03}"),
        time: tally_store::now_ms(),
        namespace_id: namespace_id.into(),
        environment: Environment::Test,
        key_id: "key".into(),
        api: "a".into(),
        model: Some("m\0odel".into()),
        endpoint: "/v1/x".into(),
        request_type: "sync",
        status: 200,
        error: None,
        latency_us: 1,
        upstream_latency_us: 1,
        tokens_in: 1,
        tokens_out: 1,
        cost_micros: 5,
        client_id: Some("c\0lient".into()),
        seller_namespace_id: None,
        platform_fee_micros: 0,
    };
    let waits = (0..40).map(|i| {
        let recorder = recorder.clone();
        // One call names a namespace that does not exist: its rows break a
        // foreign key.
        let call = record(i, if i == 17 { "ns_missing" } else { &ns });
        tokio::spawn(async move {
            recorder
                .record(
                    call,
                    tally_server::services::recorder::Settlement::default(),
                )
                .await
        })
    });
    let ok: Vec<bool> = futures_util::future::join_all(waits)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(ok.iter().filter(|o| !**o).count(), 1, "{ok:?}");
    assert!(!ok[17]);
    let mut conn = store.conn().await.unwrap();
    let rows: Vec<(String, Option<String>)> =
        tally_store::sqlx::query_as("SELECT model, client_id FROM usage_events")
            .fetch_all(&mut *conn)
            .await
            .unwrap();
    assert_eq!(rows.len(), 39);
    assert!(rows
        .iter()
        .all(|(m, c)| m == "model" && c.as_deref() == Some("client")));
    assert_eq!(
        tally_store::ledger::balance(&mut conn, &ns, Environment::Test)
            .await
            .unwrap(),
        1_000_000 - 39 * 5
    );
}

/// Issue item 7: a client that stops reading and an upstream that trickles
/// forever both end: the call is recorded, billed for what went out, and
/// its hold released.
async fn a_client_that_never_reads_and_a_trickling_upstream_are_cut_off(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let mut settings = test_settings(&db);
    settings.gateway.stream_send_timeout_secs = 1;
    settings.gateway.stream_deadline_secs = 3;
    let app = launch(db, settings).await.0;
    let (up, _) = upstream().await;
    let (op, secret) = setup(&app, &up, "flood", json!({})).await;
    add_api(
        &app,
        &op,
        json!({"slug": "trickle", "name": "Trickle", "models": ["trickle-1"],
               "upstreams": [{"url": format!("{up}/trickle")}],
               "pricing": {"per_request_micros": 100}}),
    )
    .await;
    // Opens the stream and never reads past the headers.
    let res = post(
        &app,
        &secret,
        "/v1/chat/completions",
        chat(json!({"stream": true, "max_tokens": 100})),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let started = Instant::now();
    let page = recorded(&app, &op, 1).await;
    assert_eq!(page.items.len(), 1, "the stalled client's call ended");
    assert_eq!(page.items[0].status, 499);
    assert!(started.elapsed() < Duration::from_secs(15));
    drop(res);

    let res = post(
        &app,
        &secret,
        "/v1/chat/completions",
        json!({"model": "trickle-1", "stream": true, "messages": []}),
    )
    .await;
    let text = stream_text(res).await;
    assert!(text.contains("upstream_timeout"), "{text}");
    let page = recorded(&app, &op, 2).await;
    assert_eq!(page.items[0].status, 504);
    assert_consistent(&app, &op, Environment::Live).await;
}

/// Issue item 7: `[DONE]` is an event, not a substring: model output that
/// contains it passes through whole, and the real one, even split across
/// chunks, comes last, after the call is recorded.
async fn done_is_read_as_an_event_and_held_back_until_recorded(backend: Backend) {
    let app = spawn_app(backend).await;
    let (up, _) = upstream().await;
    let (op, secret) = setup(&app, &up, "tricky", json!({})).await;
    let res = post(
        &app,
        &secret,
        "/v1/chat/completions",
        chat(json!({"stream": true, "max_tokens": 20})),
    )
    .await;
    let text = stream_text(res).await;
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 3, "{text:?}");
    let first: Value = serde_json::from_str(events[0].strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(
        first["choices"][0]["delta"]["content"],
        "the stream ends with data: [DONE]\n\n as you know"
    );
    assert_eq!(events[2], "data: [DONE]");
    // The call was recorded before the client saw the end.
    let page = calls(&app, &op).await;
    assert_eq!(page.items.len(), 1);
    assert_eq!((page.items[0].tokens_in, page.items[0].tokens_out), (5, 7));
    assert_consistent(&app, &op, Environment::Live).await;
}

/// Issue item 7: an upstream answer larger than `max_response_bytes` is a
/// 502 that costs nothing.
async fn an_oversized_upstream_answer_is_refused_and_costs_nothing(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let mut settings = test_settings(&db);
    settings.gateway.max_response_bytes = 1 << 20;
    let app = launch(db, settings).await.0;
    let (up, _) = upstream().await;
    let (op, secret) = setup(&app, &up, "huge", json!({})).await;
    let res = post(
        &app,
        &secret,
        "/v1/chat/completions",
        chat(json!({"max_tokens": 5})),
    )
    .await;
    assert_error(res, StatusCode::BAD_GATEWAY, ErrorCode::UpstreamError).await;
    assert_eq!(
        assert_consistent(&app, &op, Environment::Live).await,
        10_000_000
    );
}

/// Issue item 11: every error of the gateway is JSON and says so.
async fn gateway_errors_are_json(backend: Backend) {
    let app = spawn_app(backend).await;
    let (up, _) = upstream().await;
    let (_, secret) = setup(&app, &up, "full", json!({})).await;
    let answers = [
        app.client
            .post(app.url("/v1/chat/completions"))
            .bearer_auth("tk_test_unknown")
            .json(&chat(json!({})))
            .send()
            .await
            .unwrap(),
        post(
            &app,
            &secret,
            "/v1/chat/completions",
            json!({"model": "nope"}),
        )
        .await,
        post(
            &app,
            &secret,
            "/v1/chat/completions",
            chat(json!({"max_tokens": -1})),
        )
        .await,
        app.client
            .post(app.url("/v1/embeddings"))
            .bearer_auth(&secret)
            .body("not json")
            .send()
            .await
            .unwrap(),
        app.client
            .get(app.url("/v1/apis/missing/x"))
            .bearer_auth(&secret)
            .send()
            .await
            .unwrap(),
    ];
    for res in answers {
        assert!(res.status().is_client_error(), "{}", res.status());
        assert_eq!(
            res.headers()["content-type"],
            "application/json",
            "{}",
            res.status()
        );
        let _: tally_common::ErrorBody = res.json().await.unwrap();
    }
}

/// Dumps every row of `table`, ordered by all its columns, as text.
async fn dump(conn: &mut tally_store::AnyConnection, table: &str) -> Vec<Vec<String>> {
    use tally_store::sqlx::{Column, Row};
    let rows = tally_store::sqlx::query(&format!("SELECT * FROM {table}"))
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    let mut out: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut row: Vec<String> = (0..r.columns().len())
                .map(|i| {
                    let name = r.columns()[i].name().to_owned();
                    let value = r
                        .try_get::<Option<i64>, _>(i)
                        .map(|v| format!("{v:?}"))
                        .or_else(|_| r.try_get::<Option<String>, _>(i).map(|v| format!("{v:?}")))
                        .unwrap();
                    format!("{name}={value}")
                })
                .collect();
            row.sort();
            row
        })
        .collect();
    out.sort();
    out
}

/// Both writers run the one plan of `tally_store::recording`: the same calls
/// leave identical rows on SQLite and on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_writers_leave_identical_rows_for_the_same_calls() {
    if !crate::helpers::postgres_enabled() {
        return;
    }
    let lite = TestDatabase::new(Backend::Sqlite).await;
    let pg = TestDatabase::new(Backend::Postgres).await;
    let connect = |url: String| async move {
        let store = tally_store::Store::connect(&tally_store::ConnectOptions {
            url,
            max_connections: 2,
        })
        .await
        .unwrap();
        store.migrate().await.unwrap();
        let mut conn = store.conn().await.unwrap();
        for id in ["ns_a", "ns_b", "ns_seller"] {
            tally_store::sqlx::query(
                "INSERT INTO namespaces (id, name, created_at) VALUES ($1, $1, 0)",
            )
            .bind(id)
            .execute(&mut *conn)
            .await
            .unwrap();
        }
        // Callers have credits to pay with: a debit never makes a balance
        // negative.
        for id in ["ns_a", "ns_b"] {
            for env in ["live", "test"] {
                tally_store::sqlx::query(
                    "INSERT INTO balances (namespace_id, environment, balance_micros, updated_at) \
                     VALUES ($1, $2, 1000000000, 0)",
                )
                .bind(id)
                .bind(env)
                .execute(&mut *conn)
                .await
                .unwrap();
            }
        }
        drop(conn);
        store
    };
    let (lite_store, pg_store) = (
        connect(lite.url.clone()).await,
        connect(pg.url.clone()).await,
    );
    let now = 1_790_000_000_000;
    let calls: Vec<tally_store::usage::CallRecord> = (0..150)
        .map(|i: i64| tally_store::usage::CallRecord {
            id: format!("call_{i:04}"),
            time: now - i * 61_000,
            namespace_id: if i % 3 == 0 { "ns_a" } else { "ns_b" }.into(),
            environment: if i % 4 == 0 {
                Environment::Test
            } else {
                Environment::Live
            },
            key_id: format!("key_{}", i % 5),
            api: format!("api-{}", i % 2),
            model: (i % 2 == 0).then(|| "m-1".to_owned()),
            endpoint: "/v1/chat/completions".into(),
            request_type: if i % 7 == 0 { "stream" } else { "sync" },
            status: [200, 200, 429, 502, 499][(i % 5) as usize],
            error: (i % 5 == 2).then(|| "rate_limited".to_owned()),
            latency_us: i * 37 + 5,
            upstream_latency_us: i * 30,
            tokens_in: i,
            tokens_out: 2 * i,
            cost_micros: if i % 5 == 2 { 0 } else { 1000 + i },
            client_id: (i % 3 == 1).then(|| format!("client\u{0}{}", i % 4)),
            seller_namespace_id: (i % 6 == 1).then(|| "ns_seller".to_owned()),
            platform_fee_micros: if i % 6 == 1 { 100 } else { 0 },
        })
        .map(|mut c| {
            c.clean();
            c
        })
        .collect();
    let path = lite_store.sqlite_file().unwrap().to_path_buf();
    let mut recorder = tally_store::recorder::SqliteRecorder::open(&path).unwrap();
    for batch in calls.chunks(70) {
        recorder.record_calls(batch, now).unwrap();
    }
    let mut pg_writer = pg_store.pg_recorder().await.unwrap().unwrap();
    for batch in calls.chunks(70) {
        pg_writer.record_calls(batch, now, None).await.unwrap();
    }
    let (mut a, mut b) = (
        lite_store.conn().await.unwrap(),
        pg_store.conn().await.unwrap(),
    );
    let mut tables = vec!["usage_events", "ledger_entries", "balances"];
    tables.extend(tally_store::rollups::Table::ALL.iter().map(|t| t.name()));
    for table in tables {
        let (rows_a, rows_b) = (dump(&mut a, table).await, dump(&mut b, table).await);
        assert!(!rows_a.is_empty(), "{table} has rows");
        assert_eq!(rows_a, rows_b, "{table} is the same on both backends");
    }
}
