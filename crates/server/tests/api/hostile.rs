//! Hostile input at every gateway route (A2, A3): NUL bytes, invalid UTF-8,
//! 10 KB headers, negative and huge numbers, malformed JSON and a flood of
//! random keys, all at once, while another namespace's ordinary calls keep
//! succeeding. No answer may be a 5xx, every error is a JSON error body with
//! `Content-Type: application/json`, and afterwards both namespaces' ledgers
//! still sum to their balances.
//!
//! Requests go through a raw HTTP/1.1 client (`raw`) so that bytes no HTTP
//! library would send (NUL in a header, invalid UTF-8 in a body) reach the
//! server exactly as written.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::distributions::{Alphanumeric, DistString};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tally_common::{CreatedKey, Environment};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{
    add_api, backend_tests, json, past_change_lookback, spawn_app, Backend, TestApp, User,
};

backend_tests!(
    hostile_input_at_every_gateway_route_never_gives_a_5xx_or_disturbs_another_namespace
);

/// Random-key requests per second sent to each gateway route.
const FLOOD_PER_ROUTE_PER_SEC: u64 = 50;
/// The flood and the other namespace's calls last at least this long.
const MIN_DURATION: Duration = Duration::from_secs(6);

/// Every gateway route, as (method, path).
const ROUTES: [(&str, &str); 10] = [
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/embeddings"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/tally-sandbox"),
    ("GET", "/v1/apis/plain/echo"),
    ("POST", "/v1/apis/plain/echo"),
    ("PUT", "/v1/apis/plain/echo"),
    ("PATCH", "/v1/apis/plain/echo"),
    ("DELETE", "/v1/apis/plain/echo"),
];
const GENERIC_METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];
const OPENAI_POSTS: [&str; 3] = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"];

/// A response as read off the socket.
struct Raw {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// Sends one request over a fresh connection, byte for byte, and reads the
/// whole response (`Connection: close`).
async fn raw(
    addr: &str,
    method: &str,
    target: &[u8],
    headers: &[(&str, Vec<u8>)],
    body: &[u8],
) -> Result<Raw, String> {
    let mut req = Vec::new();
    req.extend_from_slice(method.as_bytes());
    req.push(b' ');
    req.extend_from_slice(target);
    req.extend_from_slice(b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (name, value) in headers {
        req.extend_from_slice(name.as_bytes());
        req.extend_from_slice(b": ");
        req.extend_from_slice(value);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    req.extend_from_slice(body);
    let io = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.write_all(&req).await?;
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    let out = tokio::time::timeout(Duration::from_secs(30), io)
        .await
        .map_err(|_| "no answer within 30 s".to_owned())?
        .map_err(|e| format!("transport error: {e}"))?;
    parse(&out)
}

fn parse(out: &[u8]) -> Result<Raw, String> {
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no response head in {:?}", String::from_utf8_lossy(out)))?;
    let head = String::from_utf8_lossy(&out[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let headers: Vec<(String, Vec<u8>)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().as_bytes().to_vec()))
        .collect();
    let mut body = out[end + 4..].to_vec();
    let chunked = headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case(b"chunked")
    });
    if chunked {
        body = dechunk(&body)?;
    }
    Ok(Raw {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size")?;
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&data[..line_end])
                .split(';')
                .next()
                .unwrap_or("")
                .trim(),
            16,
        )
        .map_err(|e| format!("bad chunk size: {e}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// What a hostile request must get, besides never a 5xx and JSON errors.
#[derive(Clone, Copy)]
enum Expect {
    /// Any status below 500.
    NoServerError,
    /// A 4xx.
    ClientError,
    /// Exactly this status and error code.
    Error(u16, &'static str),
    /// One of these statuses (any code).
    OneOf(&'static [u16]),
    /// Not HTTP at all (RFC 9110 forbids NUL in a field value): actix-http's
    /// parser answers a bare 400 and closes before any handler runs, so no
    /// code of the server can make it JSON. Accepted as that or as a 4xx
    /// JSON error.
    NotHttp,
}

/// Checks one answer; a description of what is wrong, if anything.
fn check(r: &Result<Raw, String>, expect: Expect) -> Option<String> {
    let r = match r {
        Ok(r) => r,
        Err(e) => return Some(e.clone()),
    };
    let body = String::from_utf8_lossy(&r.body);
    let shown: String = body.chars().take(300).collect();
    if r.status >= 500 {
        return Some(format!("{} (5xx): {shown}", r.status));
    }
    if matches!(expect, Expect::NotHttp) && r.status == 400 && r.body.is_empty() {
        return None;
    }
    let mut code = None;
    if r.status >= 400 {
        let ct = r.header("content-type").unwrap_or_default();
        if !ct.starts_with("application/json") {
            return Some(format!(
                "{} error without Content-Type application/json (got {ct:?}): {shown:?}",
                r.status
            ));
        }
        match serde_json::from_slice::<Value>(&r.body) {
            Ok(v) => match v["error"]["code"].as_str() {
                Some(c) => code = Some(c.to_owned()),
                None => {
                    return Some(format!(
                        "{} error body without error.code: {shown}",
                        r.status
                    ))
                }
            },
            Err(e) => {
                return Some(format!(
                    "{} error body is not JSON ({e}): {shown:?}",
                    r.status
                ))
            }
        }
    }
    match expect {
        Expect::NoServerError | Expect::NotHttp => None,
        Expect::ClientError if (400..500).contains(&r.status) => None,
        Expect::ClientError => Some(format!("expected a 4xx, got {}: {shown}", r.status)),
        Expect::Error(status, c) if r.status == status && code.as_deref() == Some(c) => None,
        Expect::Error(status, c) => Some(format!(
            "expected {status} {c}, got {} {}: {shown}",
            r.status,
            code.unwrap_or_default()
        )),
        Expect::OneOf(statuses) if statuses.contains(&r.status) => None,
        Expect::OneOf(statuses) => Some(format!(
            "expected one of {statuses:?}, got {}: {shown}",
            r.status
        )),
    }
}

/// One hostile request of namespace A.
struct Case {
    what: String,
    method: &'static str,
    target: Vec<u8>,
    headers: Vec<(&'static str, Vec<u8>)>,
    body: Vec<u8>,
    expect: Expect,
}

fn case(
    what: impl Into<String>,
    method: &'static str,
    target: impl AsRef<[u8]>,
    body: impl AsRef<[u8]>,
    expect: Expect,
) -> Case {
    Case {
        what: what.into(),
        method,
        target: target.as_ref().to_vec(),
        headers: Vec::new(),
        body: body.as_ref().to_vec(),
        expect,
    }
}

fn with_header(mut c: Case, name: &'static str, value: impl AsRef<[u8]>) -> Case {
    c.headers.push((name, value.as_ref().to_vec()));
    c
}

/// A chat, completion or embeddings body for `path` with `extra` fields
/// spliced in as raw JSON text (so numbers keep their exact spelling).
fn openai_body(path: &str, model: &str, extra: &str) -> String {
    let model = serde_json::to_string(model).unwrap();
    let main = match path {
        "/v1/chat/completions" => r#""messages":[{"role":"user","content":"hi"}]"#,
        "/v1/completions" => r#""prompt":"hi""#,
        _ => r#""input":"hi""#,
    };
    if extra.is_empty() {
        format!(r#"{{"model":{model},{main}}}"#)
    } else {
        format!(r#"{{"model":{model},{main},{extra}}}"#)
    }
}

fn hostile_cases() -> Vec<Case> {
    use Expect::*;
    let mut cases = Vec::new();
    let sandbox = "tally-sandbox";

    // NUL bytes: in the path, the model name, X-Client-Id and JSON strings.
    for method in GENERIC_METHODS {
        cases.push(case(
            "NUL in the generic path",
            method,
            "/v1/apis/plain/%00x",
            "",
            NoServerError,
        ));
        cases.push(case(
            "NUL in the slug",
            method,
            "/v1/apis/sand%00box/x",
            "",
            ClientError,
        ));
        cases.push(case(
            "NUL in the query",
            method,
            "/v1/apis/plain/echo?q=%00",
            "",
            NoServerError,
        ));
    }
    for method in GENERIC_METHODS {
        cases.push(case(
            "an OpenAI-compatible API through the generic route",
            method,
            "/v1/apis/sandbox/v1/chat/completions",
            r#"{"model":"tally-sandbox","messages":[{"role":"user","content":"hi"}]}"#,
            Error(404, "not_found"),
        ));
    }
    cases.push(case(
        "NUL as the model id",
        "GET",
        "/v1/models/%00",
        "",
        Error(404, "not_found"),
    ));
    cases.push(case(
        "NUL after the model id",
        "GET",
        "/v1/models/tally-sandbox%00",
        "",
        Error(404, "not_found"),
    ));
    for path in OPENAI_POSTS {
        cases.push(case(
            format!("NUL in the model name at {path}"),
            "POST",
            path,
            openai_body(path, "tally-sandbox\u{0}", ""),
            ClientError,
        ));
        cases.push(case(
            format!("NUL in JSON strings at {path}"),
            "POST",
            path,
            openai_body(path, sandbox, r#""user":"a\u0000b","stop":["\u0000"]"#),
            NoServerError,
        ));
    }
    cases.push(case(
        "NUL in a chat message",
        "POST",
        "/v1/chat/completions",
        r#"{"model":"tally-sandbox","messages":[{"role":"user\u0000","content":"a\u0000b"}]}"#,
        NoServerError,
    ));
    for method in ["POST", "PUT", "PATCH"] {
        cases.push(case(
            "NUL in a generic JSON body",
            method,
            "/v1/apis/plain/echo",
            r#"{"x":"a\u0000b"}"#,
            NoServerError,
        ));
    }
    for (method, path) in ROUTES {
        let body = if method == "POST" && OPENAI_POSTS.contains(&path) {
            openai_body(path, sandbox, "")
        } else {
            String::new()
        };
        for (what, value, expect) in [
            ("NUL in X-Client-Id", b"client\x00id".to_vec(), NotHttp),
            (
                "invalid UTF-8 in X-Client-Id",
                b"client\xff\xfeid".to_vec(),
                NoServerError,
            ),
            ("a 10 KB X-Client-Id", vec![b'c'; 10 * 1024], NoServerError),
        ] {
            cases.push(with_header(
                case(
                    format!("{what} at {method} {path}"),
                    method,
                    path,
                    &body,
                    expect,
                ),
                "X-Client-Id",
                value,
            ));
        }
        cases.push(with_header(
            case(
                format!("a 10 KB header at {method} {path}"),
                method,
                path,
                &body,
                NoServerError,
            ),
            "X-Padding",
            vec![b'p'; 10 * 1024],
        ));
        // A 10 KB bearer is no key: 401, or 429 while the flood of random
        // keys from this same address has used up its allowance.
        let mut long_key = b"Bearer tk_test_".to_vec();
        long_key.extend(std::iter::repeat_n(b'k', 10 * 1024));
        cases.push(with_header(
            case(
                format!("a 10 KB bearer at {method} {path}"),
                method,
                path,
                &body,
                OneOf(&[401, 429]),
            ),
            "Authorization",
            long_key,
        ));
    }

    // Invalid UTF-8: raw bytes in bodies, percent-encoded sequences in paths.
    for path in OPENAI_POSTS {
        let mut body = openai_body(path, sandbox, r#""user":"X""#).into_bytes();
        let at = body.windows(3).position(|w| w == b"\"X\"").unwrap() + 1;
        body.splice(at..at + 1, [0xff, 0xfe, 0xc3, 0x28]);
        cases.push(case(
            format!("invalid UTF-8 in a JSON string at {path}"),
            "POST",
            path,
            body,
            Error(400, "invalid_json"),
        ));
        cases.push(case(
            format!("raw binary body at {path}"),
            "POST",
            path,
            [0x00u8, 0xff, 0xfe, 0x80, b'{'],
            Error(400, "invalid_json"),
        ));
    }
    for method in GENERIC_METHODS {
        cases.push(case(
            "raw binary generic body",
            method,
            "/v1/apis/plain/echo",
            [0x00u8, 0xff, 0xfe, 0x80, 0xc3, 0x28],
            NoServerError,
        ));
        cases.push(case(
            "invalid UTF-8 in the generic path",
            method,
            "/v1/apis/plain/%ff%fe/%c3%28",
            "",
            NoServerError,
        ));
        cases.push(case(
            "invalid UTF-8 in the slug",
            method,
            "/v1/apis/%ff%fe/x",
            "",
            ClientError,
        ));
        cases.push(case(
            "invalid UTF-8 in the query",
            method,
            "/v1/apis/plain/echo?q=%ff%fe",
            "",
            NoServerError,
        ));
    }
    cases.push(case(
        "invalid UTF-8 as the model id",
        "GET",
        "/v1/models/%ff%c3%28",
        "",
        ClientError,
    ));

    // Negative and huge numbers.
    for path in ["/v1/chat/completions", "/v1/completions"] {
        for extra in [
            r#""max_tokens":-5"#,
            r#""max_tokens":0"#,
            r#""max_completion_tokens":-1"#,
            r#""n":-1"#,
        ] {
            cases.push(case(
                format!("{extra} at {path}"),
                "POST",
                path,
                openai_body(path, sandbox, extra),
                Error(400, "invalid_request"),
            ));
        }
        for extra in [
            r#""max_tokens":1e308"#,
            r#""max_tokens":18446744073709551616"#,
            r#""max_tokens":-1e308"#,
            r#""max_tokens":1.5"#,
            r#""max_tokens":"5""#,
            r#""max_completion_tokens":99999999999999999999999999"#,
            r#""n":1e308"#,
            r#""n":18446744073709551616"#,
            r#""n":1000000000"#,
            r#""temperature":1e308"#,
            r#""logprobs":true,"top_logprobs":-9223372036854775809"#,
            r#""stream":true,"max_tokens":18446744073709551616"#,
        ] {
            cases.push(case(
                format!("{extra} at {path}"),
                "POST",
                path,
                openai_body(path, sandbox, extra),
                NoServerError,
            ));
        }
    }
    for extra in [
        r#""dimensions":-1"#,
        r#""dimensions":1e308"#,
        r#""dimensions":18446744073709551616"#,
    ] {
        cases.push(case(
            format!("{extra} at /v1/embeddings"),
            "POST",
            "/v1/embeddings",
            openai_body("/v1/embeddings", sandbox, extra),
            NoServerError,
        ));
    }
    for method in ["POST", "PUT", "PATCH"] {
        cases.push(case(
            "huge numbers in a generic body",
            method,
            "/v1/apis/plain/echo",
            r#"{"max_tokens":-5,"n":1e308,"big":18446744073709551616,"neg":-1e308}"#,
            NoServerError,
        ));
    }

    // Malformed JSON.
    let deep = "[".repeat(100_000);
    for path in OPENAI_POSTS {
        for body in [
            "",
            "{",
            r#"{"model":"#,
            "[]",
            "null",
            r#""tally-sandbox""#,
            "{}",
            r#"{"model":5}"#,
            r#"{"model":"tally-sandbox","messages":"#,
            r#"{"model":"tally-sandbox"} trailing"#,
            deep.as_str(),
        ] {
            let shown: String = body.chars().take(40).collect();
            cases.push(case(
                format!("malformed JSON {shown:?} at {path}"),
                "POST",
                path,
                body,
                ClientError,
            ));
        }
    }
    for method in ["POST", "PUT", "PATCH"] {
        cases.push(case(
            "malformed JSON in a generic body",
            method,
            "/v1/apis/plain/echo",
            r#"{"a":[1,2"#,
            NoServerError,
        ));
        cases.push(case(
            "deeply nested generic body",
            method,
            "/v1/apis/plain/echo",
            &deep,
            NoServerError,
        ));
    }
    cases
}

fn random_secret() -> String {
    format!(
        "tk_test_{}",
        Alphanumeric.sample_string(&mut rand::thread_rng(), 40)
    )
}

async fn test_key(app: &TestApp, user: &User) -> CreatedKey {
    json(
        app.post(
            &format!("/api/v1/namespaces/{}/keys", user.namespace_id),
            Some(&user.token),
            json!({"name": "k", "environment": "test"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await
}

/// Namespace B's ordinary calls, in a loop until `stop`: every one must be a
/// 2xx, and a stream must end with `data: [DONE]`.
async fn ordinary_calls(
    addr: String,
    secret: String,
    stop: Arc<AtomicBool>,
    calls: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
) {
    let auth = format!("Bearer {secret}").into_bytes();
    let json_ct = b"application/json".to_vec();
    let chat = r#"{"model":"tally-sandbox","messages":[{"role":"user","content":"Hello"}],"max_tokens":8}"#;
    let stream = r#"{"model":"tally-sandbox","messages":[{"role":"user","content":"Hello"}],"max_tokens":8,"stream":true}"#;
    let embed = r#"{"model":"tally-sandbox","input":"Hello"}"#;
    let steps: [(&str, &str, &str, &str); 5] = [
        ("chat", "POST", "/v1/chat/completions", chat),
        ("stream", "POST", "/v1/chat/completions", stream),
        ("embeddings", "POST", "/v1/embeddings", embed),
        ("generic GET", "GET", "/v1/apis/plain/weather?city=Oslo", ""),
        (
            "generic POST",
            "POST",
            "/v1/apis/plain/items",
            r#"{"name":"x"}"#,
        ),
    ];
    while !stop.load(Ordering::Relaxed) {
        for (what, method, path, body) in steps {
            let headers = [
                ("Authorization", auth.clone()),
                ("Content-Type", json_ct.clone()),
                ("X-Client-Id", b"namespace-b".to_vec()),
            ];
            let r = raw(&addr, method, path.as_bytes(), &headers, body.as_bytes()).await;
            calls.fetch_add(1, Ordering::Relaxed);
            let problem = match &r {
                Ok(r) if !(200..300).contains(&r.status) => Some(format!(
                    "{}: {}",
                    r.status,
                    String::from_utf8_lossy(&r.body)
                        .chars()
                        .take(300)
                        .collect::<String>()
                )),
                Ok(r)
                    if what == "stream"
                        && !String::from_utf8_lossy(&r.body).contains("data: [DONE]") =>
                {
                    Some("the stream did not end with data: [DONE]".into())
                }
                Ok(_) => None,
                Err(e) => Some(e.clone()),
            };
            if let Some(p) = problem {
                failures
                    .lock()
                    .unwrap()
                    .push(format!("namespace B's {what} call failed: {p}"));
            }
        }
    }
}

/// Random keys at one route, `FLOOD_PER_ROUTE_PER_SEC` a second, until
/// `stop`: each must be refused with 401 `invalid_api_key` or 429
/// `rate_limited`, as JSON.
async fn flood_route(
    addr: String,
    method: &'static str,
    path: &'static str,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
) {
    let mut tick =
        tokio::time::interval(Duration::from_micros(1_000_000 / FLOOD_PER_ROUTE_PER_SEC));
    let mut inflight = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let (addr, failures) = (addr.clone(), failures.clone());
        sent.fetch_add(1, Ordering::Relaxed);
        inflight.push(tokio::spawn(async move {
            let headers = [
                (
                    "Authorization",
                    format!("Bearer {}", random_secret()).into_bytes(),
                ),
                ("Content-Type", b"application/json".to_vec()),
            ];
            let body = if method == "POST" {
                r#"{"model":"tally-sandbox","input":"x","messages":[]}"#
            } else {
                ""
            };
            let r = raw(&addr, method, path.as_bytes(), &headers, body.as_bytes()).await;
            let problem = check(&r, Expect::OneOf(&[401, 429])).or_else(|| {
                let code = r
                    .as_ref()
                    .ok()
                    .and_then(|r| serde_json::from_slice::<Value>(&r.body).ok())
                    .and_then(|v| v["error"]["code"].as_str().map(str::to_owned));
                match code.as_deref() {
                    Some("invalid_api_key" | "rate_limited") => None,
                    other => Some(format!("unexpected code {other:?}")),
                }
            });
            if let Some(p) = problem {
                failures
                    .lock()
                    .unwrap()
                    .push(format!("random key at {method} {path}: {p}"));
            }
        }));
    }
    for t in inflight {
        t.await.unwrap();
    }
}

async fn assert_ledger_sums_to_balance(app: &TestApp, user: &User, who: &str) -> Option<String> {
    let mut conn = app.store.conn().await.unwrap();
    let sum = tally_store::ledger::sum(&mut conn, &user.namespace_id, Environment::Test)
        .await
        .unwrap();
    let stored = tally_store::ledger::balance(&mut conn, &user.namespace_id, Environment::Test)
        .await
        .unwrap();
    (sum != stored).then(|| format!("{who}: ledger sums to {sum}, balance is {stored}"))
}

async fn hostile_input_at_every_gateway_route_never_gives_a_5xx_or_disturbs_another_namespace(
    backend: Backend,
) {
    // The shipped settings: the throttle of unknown keys is on.
    let app = spawn_app(backend).await;
    let addr = app.address.trim_start_matches("http://").to_owned();
    let a = app.signup("a").await;
    let b = app.signup("b").await;
    // A plain HTTP API for the generic route (test keys get the sandbox's
    // echo); the OpenAI-compatible sandbox is not reachable there.
    let op = app.signup_operator("op").await;
    add_api(
        &app,
        &op,
        json!({"slug": "plain", "name": "Plain", "protocol": "http",
            "upstreams": [{"url": "http://127.0.0.1:9"}],
            "pricing": {"per_request_micros": 100}}),
    )
    .await;
    let key_a = test_key(&app, &a).await;
    let key_b = test_key(&app, &b).await;
    // Past the change poller's look-back, then into the cache: from here on,
    // the flood from this same address cannot refuse either key.
    past_change_lookback(tally_store::now_ms()).await;
    let chat = json!({"model": "tally-sandbox", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5});
    for key in [&key_a, &key_b] {
        let res = app
            .client
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(&key.secret)
            .json(&chat)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }

    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let (b_calls, flooded) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let started = Instant::now();
    let ordinary = tokio::spawn(ordinary_calls(
        addr.clone(),
        key_b.secret.clone(),
        stop.clone(),
        b_calls.clone(),
        failures.clone(),
    ));
    let floods: Vec<_> = ROUTES
        .iter()
        .map(|&(method, path)| {
            tokio::spawn(flood_route(
                addr.clone(),
                method,
                path,
                stop.clone(),
                flooded.clone(),
                failures.clone(),
            ))
        })
        .collect();

    let auth = format!("Bearer {}", key_a.secret).into_bytes();
    let cases = hostile_cases();
    let total = cases.len();
    for c in cases {
        let mut headers: Vec<(&str, Vec<u8>)> = Vec::new();
        if !c.headers.iter().any(|(n, _)| *n == "Authorization") {
            headers.push(("Authorization", auth.clone()));
        }
        headers.push(("Content-Type", b"application/json".to_vec()));
        headers.extend(c.headers.iter().cloned());
        let r = raw(&addr, c.method, &c.target, &headers, &c.body).await;
        if let Some(p) = check(&r, c.expect) {
            let target = String::from_utf8_lossy(&c.target);
            failures
                .lock()
                .unwrap()
                .push(format!("{} ({} {target}): {p}", c.what, c.method));
        }
    }
    if let Some(rest) = MIN_DURATION.checked_sub(started.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    stop.store(true, Ordering::Relaxed);
    ordinary.await.unwrap();
    for f in floods {
        f.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();

    let mut failures = std::mem::take(&mut *failures.lock().unwrap());
    failures.extend(assert_ledger_sums_to_balance(&app, &a, "namespace A").await);
    failures.extend(assert_ledger_sums_to_balance(&app, &b, "namespace B").await);
    let (b_calls, flooded) = (
        b_calls.load(Ordering::Relaxed),
        flooded.load(Ordering::Relaxed),
    );
    eprintln!(
        "{total} hostile requests, {flooded} random-key requests and {b_calls} calls of \
         namespace B in {elapsed:.1} s; {} problems",
        failures.len()
    );
    assert!(b_calls >= 10, "namespace B kept calling ({b_calls} calls)");
    assert!(
        failures.is_empty(),
        "{} problems:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
