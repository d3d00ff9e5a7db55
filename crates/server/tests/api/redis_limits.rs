//! Per-key limits and quotas shared by several instances through Redis (K2,
//! O5): two servers on one database and one Redis admit together what one
//! would, quotas survive Redis losing its data, and an unreachable Redis
//! leaves every call answered by the local limits.
//!
//! Each test uses a Redis prefix of its own and deletes only its keys (other
//! tests share the Redis). Redis is `TALLY_TEST_REDIS_URL`
//! (default `redis://127.0.0.1:6379`); without it these tests say so and
//! pass locally, and fail under CI.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tally_common::{CreatedKey, ErrorBody, ErrorCode, EventPage, KeyStats};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;

use crate::helpers::{
    backend_tests, json, spawn_with, start, test_settings, Backend, TestApp, TestDatabase, User,
};

backend_tests!(
    two_instances_together_admit_no_more_than_a_per_minute_limit,
    two_instances_together_admit_no_more_than_a_per_second_limit,
    daily_request_and_credit_quotas_hold_across_two_instances,
    quotas_survive_redis_losing_its_data,
    calls_are_answered_by_local_limits_while_redis_is_unreachable,
);

const REDIS_ENV: &str = "TALLY_TEST_REDIS_URL";

/// The test Redis, if there is one (see the module doc).
pub(crate) async fn redis_url() -> Option<String> {
    let url = std::env::var(REDIS_ENV)
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let reachable = match redis::Client::open(url.as_str()) {
        Ok(c) => c.get_multiplexed_async_connection().await.is_ok(),
        Err(_) => false,
    };
    if reachable {
        return Some(url);
    }
    if std::env::var_os("CI").is_some() {
        panic!("Redis at {url} ({REDIS_ENV}) must be reachable under CI");
    }
    eprintln!("SKIPPED: no Redis at {url}; set {REDIS_ENV}");
    None
}

/// The host:port of a `redis://host:port/db` URL.
pub(crate) fn redis_addr(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest).to_owned()
}

/// A prefix of this test's own, and a connection to delete its keys.
struct Keys {
    prefix: String,
    conn: redis::aio::MultiplexedConnection,
}

impl Keys {
    async fn new(url: &str) -> Keys {
        let conn = redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        Keys {
            prefix: format!("tallytest-{}", uuid::Uuid::new_v4().simple()),
            conn,
        }
    }

    /// Every key under this test's prefix.
    async fn list(&mut self) -> Vec<String> {
        let mut found = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}:*", self.prefix))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut self.conn)
                .await
                .unwrap();
            found.extend(keys);
            if next == 0 {
                return found;
            }
            cursor = next;
        }
    }

    /// Deletes every key under this test's prefix (and nothing else).
    async fn delete_all(&mut self) {
        for key in self.list().await {
            let _: i64 = redis::cmd("DEL")
                .arg(&key)
                .query_async(&mut self.conn)
                .await
                .unwrap();
        }
    }

    /// The `requests` count of a key's current daily quota hash, if any.
    async fn day_requests(&mut self, key_id: &str) -> Option<i64> {
        let pattern = format!("{}:limits:{{{key_id}}}:day:", self.prefix);
        for key in self.list().await {
            if key.starts_with(&pattern) {
                return redis::cmd("HGET")
                    .arg(&key)
                    .arg("requests")
                    .query_async(&mut self.conn)
                    .await
                    .unwrap();
            }
        }
        None
    }
}

/// Two servers on one database sharing Redis under `keys.prefix`.
async fn two_instances(backend: Backend, redis_url: &str, prefix: &str) -> (TestApp, String) {
    let db = TestDatabase::new(backend).await;
    let mut settings = test_settings(&db);
    settings.redis_url = Some(redis_url.to_owned().into());
    settings.cluster.redis_prefix = prefix.to_owned();
    let (other, _) = start(settings.clone()).await;
    let app = spawn_with(db, |s| *s = settings).await;
    (app, other)
}

fn ns(user: &User, rest: &str) -> String {
    format!("/api/v1/namespaces/{}{rest}", user.namespace_id)
}

async fn create_key(app: &TestApp, user: &User, limits: Value) -> CreatedKey {
    json(
        app.post(
            &ns(user, "/keys"),
            Some(&user.token),
            json!({"name": "k", "environment": "test", "limits": limits}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await
}

/// One sandbox chat call with `secret` to the server at `base`.
async fn call(client: &reqwest::Client, base: &str, secret: &str) -> reqwest::Response {
    client
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(secret)
        .json(&json!({"model": "tally-sandbox", "max_tokens": 50,
                      "messages": [{"role": "user", "content": "Say hello"}]}))
        .send()
        .await
        .unwrap()
}

/// The status of a call and, for a 429, its error code; never a 5xx.
async fn outcome(res: reqwest::Response) -> (StatusCode, Option<ErrorCode>, i64) {
    let status = res.status();
    assert!(
        status == StatusCode::OK || status == StatusCode::TOO_MANY_REQUESTS,
        "a call with limits answers 200 or 429, not {status}: {}",
        res.text().await.unwrap_or_default()
    );
    if status == StatusCode::OK {
        let cost = res.headers()["x-tally-cost-micros"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        return (status, None, cost);
    }
    let body: ErrorBody = res.json().await.unwrap();
    (status, Some(body.error.code), 0)
}

/// Sends `per_instance` calls at once to each instance; the admitted count,
/// the refusals' codes, and how long the burst took.
async fn burst(
    app: &TestApp,
    other: &str,
    secret: &str,
    per_instance: usize,
) -> (usize, Vec<ErrorCode>, Duration) {
    let started = Instant::now();
    let calls = (0..per_instance * 2).map(|i| {
        let base = if i % 2 == 0 {
            app.address.clone()
        } else {
            other.to_owned()
        };
        let client = app.client.clone();
        let secret = secret.to_owned();
        async move { outcome(call(&client, &base, &secret).await).await }
    });
    let results = join_all(calls).await;
    let elapsed = started.elapsed();
    let admitted = results.iter().filter(|r| r.0 == StatusCode::OK).count();
    let refused = results.iter().filter_map(|r| r.1).collect();
    (admitted, refused, elapsed)
}

/// A key's statistics as the server at `base` reports them.
async fn stats(app: &TestApp, base: &str, user: &User, key_id: &str) -> KeyStats {
    let res = app
        .client
        .get(format!(
            "{base}{}",
            ns(user, &format!("/keys/{key_id}/stats"))
        ))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();
    json(res, StatusCode::OK).await
}

async fn two_instances_together_admit_no_more_than_a_per_minute_limit(backend: Backend) {
    let Some(url) = redis_url().await else { return };
    let mut keys = Keys::new(&url).await;
    let (app, other) = two_instances(backend, &url, &keys.prefix).await;
    let user = app.signup("dev").await;
    let key = create_key(&app, &user, json!({"requests_per_minute": 4})).await;
    let (admitted, refused, elapsed) = burst(&app, &other, &key.secret, 6).await;
    // One more call fits every 15 s of the burst (none, unless it was slow).
    let allowed = 4 + usize::try_from(elapsed.as_secs() / 15).unwrap();
    assert!(
        (4..=allowed).contains(&admitted),
        "{admitted} calls admitted by two instances with a limit of 4 a minute"
    );
    assert!(refused.iter().all(|c| *c == ErrorCode::RateLimited));
    // Each instance alone would admit 4 more; together they admit none.
    for base in [&app.address, &other] {
        let (status, code, _) = outcome(call(&app.client, base, &key.secret).await).await;
        if elapsed.as_secs() < 15 {
            assert_eq!(
                (status, code),
                (StatusCode::TOO_MANY_REQUESTS, Some(ErrorCode::RateLimited))
            );
        }
    }
    assert!(!keys.list().await.is_empty(), "the limit lives in Redis");
    keys.delete_all().await;
}

async fn two_instances_together_admit_no_more_than_a_per_second_limit(backend: Backend) {
    let Some(url) = redis_url().await else { return };
    let mut keys = Keys::new(&url).await;
    let (app, other) = two_instances(backend, &url, &keys.prefix).await;
    let user = app.signup("dev").await;
    let key = create_key(&app, &user, json!({"requests_per_second": 5})).await;
    // Warm both instances' key caches, so the burst is quick; the bucket is
    // then read from Redis and refills before the burst.
    for base in [&app.address, &other] {
        outcome(call(&app.client, base, &key.secret).await).await;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (admitted, refused, elapsed) = burst(&app, &other, &key.secret, 10).await;
    // A burst of 5, then one more call every 200 ms the burst lasted.
    let allowed = 5 + usize::try_from(elapsed.as_millis() / 200).unwrap();
    assert!(
        (5..=allowed).contains(&admitted),
        "{admitted} calls admitted in {elapsed:?} by two instances with a limit of 5 a second"
    );
    assert!(refused.iter().all(|c| *c == ErrorCode::RateLimited));
    keys.delete_all().await;
}

async fn daily_request_and_credit_quotas_hold_across_two_instances(backend: Backend) {
    let Some(url) = redis_url().await else { return };
    let mut keys = Keys::new(&url).await;
    let (app, other) = two_instances(backend, &url, &keys.prefix).await;
    let user = app.signup("dev").await;

    // Requests: 5 a day, calls alternating between the instances.
    let key = create_key(&app, &user, json!({"requests_per_day": 5})).await;
    let mut codes = Vec::new();
    for i in 0..8 {
        let base = if i % 2 == 0 { &app.address } else { &other };
        codes.push(outcome(call(&app.client, base, &key.secret).await).await.1);
    }
    let quota = Some(ErrorCode::QuotaExceeded);
    assert_eq!(codes, [None, None, None, None, None, quota, quota, quota]);
    let s = stats(&app, &other, &user, &key.key.id).await;
    assert_eq!(s.day_requests, 5, "the counters both instances share");

    // Credits: every admission reserves the call's maximum cost, every
    // finished call counts what it cost; the spend of both instances
    // together never passes the quota.
    const QUOTA: i64 = 20_000;
    let key = create_key(&app, &user, json!({"credits_per_day_micros": QUOTA})).await;
    let (mut spent, mut admitted, mut refusals_in_a_row) = (0, 0, 0);
    for i in 0..100 {
        let base = if i % 2 == 0 { &app.address } else { &other };
        let (status, code, cost) = outcome(call(&app.client, base, &key.secret).await).await;
        if status == StatusCode::OK {
            spent += cost;
            admitted += 1;
            refusals_in_a_row = 0;
        } else {
            assert_eq!(code, quota);
            refusals_in_a_row += 1;
            if refusals_in_a_row == 2 {
                break;
            }
        }
    }
    assert_eq!(refusals_in_a_row, 2, "both instances refuse in the end");
    assert!(admitted >= 2, "{admitted} calls fit");
    assert!(
        spent <= QUOTA,
        "{spent} micro-credits spent through two instances with a quota of {QUOTA}"
    );
    let s = stats(&app, &app.address, &user, &key.key.id).await;
    assert_eq!((s.day_requests, s.day_credits_micros), (admitted, spent));
    keys.delete_all().await;
}

async fn quotas_survive_redis_losing_its_data(backend: Backend) {
    let Some(url) = redis_url().await else { return };
    let mut keys = Keys::new(&url).await;
    let (app, other) = two_instances(backend, &url, &keys.prefix).await;
    let user = app.signup("dev").await;
    let key = create_key(&app, &user, json!({"requests_per_day": 6})).await;
    for i in 0..3 {
        let base = if i % 2 == 0 { &app.address } else { &other };
        assert_eq!(
            outcome(call(&app.client, base, &key.secret).await).await.1,
            None
        );
    }
    assert_eq!(keys.day_requests(&key.key.id).await, Some(3));
    // Redis restarted empty (or flushed): the counts come back from the
    // recorded usage.
    keys.delete_all().await;
    let mut codes = Vec::new();
    for i in 0..5 {
        let base = if i % 2 == 0 { &app.address } else { &other };
        codes.push(outcome(call(&app.client, base, &key.secret).await).await.1);
    }
    let quota = Some(ErrorCode::QuotaExceeded);
    assert_eq!(codes, [None, None, None, quota, quota]);
    assert_eq!(keys.day_requests(&key.key.id).await, Some(6));
    keys.delete_all().await;
}

/// A TCP forwarder to Redis that can be shut down (no listener, every
/// connection cut) and started again on the same port.
pub(crate) struct Forwarder {
    pub(crate) port: u16,
    target: String,
    accept: Option<JoinHandle<()>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Forwarder {
    pub(crate) async fn start(target: &str) -> Forwarder {
        let mut f = Forwarder {
            port: 0,
            target: target.to_owned(),
            accept: None,
            conns: Arc::default(),
        };
        f.resume();
        f
    }

    fn resume(&mut self) {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket
            .bind(format!("127.0.0.1:{}", self.port).parse().unwrap())
            .unwrap();
        let listener = socket.listen(128).unwrap();
        self.port = listener.local_addr().unwrap().port();
        let (target, conns) = (self.target.clone(), self.conns.clone());
        self.accept = Some(tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns.lock().unwrap().push(conn);
            }
        }));
    }

    /// Stops accepting and cuts every open connection.
    pub(crate) async fn stop(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
            let _ = accept.await;
        }
        let conns: Vec<_> = self.conns.lock().unwrap().drain(..).collect();
        for c in conns {
            c.abort();
            let _ = c.await;
        }
    }
}

async fn events(app: &TestApp, user: &User) -> Vec<String> {
    let page: EventPage = json(
        app.get(&ns(user, "/events?limit=100"), Some(&user.token))
            .await,
        StatusCode::OK,
    )
    .await;
    page.items.into_iter().map(|e| e.kind).collect()
}

/// Waits (up to 20 s, calling `poke` between looks) until the event log has
/// an event of `kind`.
async fn wait_for_event<F, Fut>(app: &TestApp, user: &User, kind: &str, mut poke: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !events(app, user).await.iter().any(|k| k == kind) {
        assert!(Instant::now() < deadline, "no '{kind}' event after 20 s");
        poke().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn calls_are_answered_by_local_limits_while_redis_is_unreachable(backend: Backend) {
    let Some(url) = redis_url().await else { return };
    let mut keys = Keys::new(&url).await;
    let mut forwarder = Forwarder::start(&redis_addr(&url)).await;
    let db = TestDatabase::new(backend).await;
    let prefix = keys.prefix.clone();
    let port = forwarder.port;
    let app = spawn_with(db, |s| {
        s.redis_url = Some(format!("redis://127.0.0.1:{port}").into());
        s.cluster.redis_prefix = prefix;
    })
    .await;
    let user = app.signup("dev").await;
    let limited = create_key(
        &app,
        &user,
        json!({"requests_per_minute": 3, "requests_per_day": 100}),
    )
    .await;
    let later = create_key(&app, &user, json!({"requests_per_day": 100})).await;
    let secret = limited.secret.clone();
    let check = |res: (StatusCode, Option<ErrorCode>, i64)| (res.0, res.1);

    let first = outcome(call(&app.client, &app.address, &secret).await).await;
    assert_eq!(check(first), (StatusCode::OK, None));
    assert_eq!(
        keys.day_requests(&limited.key.id).await,
        Some(1),
        "counted in Redis"
    );

    // Redis goes away: the local limiter, which took over the counts Redis
    // had, admits the rest of the minute's 3 calls and then refuses.
    forwarder.stop().await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(check(
            outcome(call(&app.client, &app.address, &secret).await).await,
        ));
    }
    assert_eq!(
        seen,
        [
            (StatusCode::OK, None),
            (StatusCode::OK, None),
            (StatusCode::TOO_MANY_REQUESTS, Some(ErrorCode::RateLimited))
        ]
    );
    wait_for_event(&app, &user, "redis.down", || async {}).await;
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    assert!(
        metrics.contains("tally_limits_local_total"),
        "calls decided locally are counted"
    );
    assert_eq!(
        keys.day_requests(&limited.key.id).await,
        Some(1),
        "Redis saw nothing"
    );

    // Back: a probe finds it, and calls are decided by Redis again.
    forwarder.resume();
    wait_for_event(&app, &user, "redis.up", || async {
        let res = call(&app.client, &app.address, &secret).await;
        outcome(res).await;
    })
    .await;
    let res = outcome(call(&app.client, &app.address, &later.secret).await).await;
    assert_eq!(check(res), (StatusCode::OK, None));
    assert_eq!(
        keys.day_requests(&later.key.id).await,
        Some(1),
        "a call after Redis came back is counted there"
    );
    forwarder.stop().await;
    keys.delete_all().await;
}
