//! O5: several instances of the real binary on one PostgreSQL database behave
//! as one: credit leases never spend more than the balance, credits and
//! revocations reach every instance within a second, a killed instance's
//! lease goes back, and the upkeep runs on one instance.
//!
//! These tests need PostgreSQL (`TALLY_TEST_DATABASE_URL`); in CI (`CI` set)
//! its absence is a failure, not a skip.

use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection, Row};

use crate::helpers::{postgres_enabled, test_settings, Backend, TallyProcess, TestDatabase};

type Node = TallyProcess;

/// The PostgreSQL test database, or `None` to skip outside CI.
async fn cluster_database() -> Option<TestDatabase> {
    if !postgres_enabled() {
        assert!(
            std::env::var_os("CI").is_none(),
            "the cluster tests need PostgreSQL: set TALLY_TEST_DATABASE_URL"
        );
        eprintln!("skipped: the cluster tests need TALLY_TEST_DATABASE_URL");
        return None;
    }
    Some(TestDatabase::new(Backend::Postgres).await)
}

/// Starts an instance on `db` with `env` settings on top of the cluster
/// test's own; its log goes to `<data dir>/<name>.log`.
async fn start_node(db: &TestDatabase, name: &str, env: &[(&str, &str)]) -> Node {
    let dir = db.dir.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let log = db.dir.path().join(format!("{name}.log"));
    let mut all = vec![
        ("TALLY_AUTH__IP_REQUESTS_PER_MINUTE", "0"),
        ("TALLY_AUTH__SIGNUPS_PER_IP_PER_HOUR", "0"),
        ("TALLY_AUTH__SIGNUPS_PER_EMAIL_PER_HOUR", "0"),
        ("TALLY_GATEWAY__WELCOME_TEST_CREDITS_MICROS", "0"),
        ("TALLY_CLUSTER__LEASE_TTL_SECS", "3"),
        ("TALLY_CLUSTER__LEASE_IDLE_SECS", "1"),
        ("TALLY_BILLING__ALERT_CHECK_INTERVAL_MS", "200"),
        ("RUST_LOG", "info"),
    ];
    all.extend_from_slice(env);
    TallyProcess::start(&db.url, &dir, Some(&log), &all).await
}

/// An operator (made as `tally admin create-operator` makes one), logged in
/// through `node`: its token and namespace.
async fn operator(db: &TestDatabase, node: &Node) -> (String, String) {
    let store = tally_store::Store::connect(&tally_store::ConnectOptions {
        url: db.url.clone(),
        max_connections: 2,
    })
    .await
    .unwrap();
    let mut settings = test_settings(db);
    settings.gateway.welcome_test_credits_micros = 0;
    let passwords = tally_server::auth::Passwords::new(&settings.auth).unwrap();
    let email = crate::helpers::unique_email("op");
    tally_server::auth::bootstrap::create_operator(
        &store,
        &settings,
        &passwords,
        &email,
        "operator horse battery",
        Some("op"),
    )
    .await
    .unwrap();
    store.close().await;
    let client = reqwest::Client::new();
    let auth: Value = client
        .post(node.url("/api/v1/auth/login"))
        .json(&json!({"email": email, "password": "operator horse battery"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = auth["access_token"].as_str().unwrap().to_owned();
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
    (token, ns)
}

/// Adds an API priced at 1,000 micro-credits per call; test keys are answered
/// by the sandbox (it has no test upstream), so no upstream is needed.
async fn add_flat_api(node: &Node, token: &str) {
    let res = reqwest::Client::new()
        .post(node.url("/api/v1/admin/catalog"))
        .bearer_auth(token)
        .json(&json!({
            "slug": "flat", "name": "Flat", "models": ["flat-1"],
            "upstreams": [{"url": "http://127.0.0.1:9"}],
            "pricing": {"per_request_micros": 1000}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::CREATED,
        "{}",
        res.text().await.unwrap()
    );
}

async fn grant(node: &Node, token: &str, ns: &str, micros: i64) {
    let res = reqwest::Client::new()
        .post(node.url(&format!("/api/v1/admin/namespaces/{ns}/grants")))
        .bearer_auth(token)
        .json(&json!({"environment": "test", "amount_micros": micros, "memo": "cluster"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::CREATED,
        "{}",
        res.text().await.unwrap()
    );
}

/// A test key: (id, secret).
async fn test_key(node: &Node, token: &str, ns: &str, extra: Value) -> (String, String) {
    let mut body = json!({"name": "k", "environment": "test"});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let res = reqwest::Client::new()
        .post(node.url(&format!("/api/v1/namespaces/{ns}/keys")))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::CREATED,
        "{}",
        res.text().await.unwrap()
    );
    let key: Value = res.json().await.unwrap();
    (
        key["key"]["id"].as_str().unwrap().to_owned(),
        key["secret"].as_str().unwrap().to_owned(),
    )
}

async fn chat(client: &reqwest::Client, node: &Node, secret: &str) -> StatusCode {
    client
        .post(node.url("/v1/chat/completions"))
        .bearer_auth(secret)
        .json(&json!({"model": "flat-1", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .map(|r| r.status())
        .unwrap_or(StatusCode::BAD_GATEWAY)
}

/// (balance, reserved, ledger sum) of the namespace's test account.
async fn account(db: &TestDatabase, ns: &str) -> (i64, i64, i64) {
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    let row = sqlx::query(
        "SELECT COALESCE((SELECT balance_micros FROM balances WHERE namespace_id = $1 AND environment = 'test'), 0) AS b, \
                COALESCE((SELECT reserved_micros FROM balances WHERE namespace_id = $1 AND environment = 'test'), 0) AS r, \
                COALESCE((SELECT CAST(SUM(amount_micros) AS BIGINT) FROM ledger_entries WHERE namespace_id = $1 AND environment = 'test'), 0) AS l",
    )
    .bind(ns)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    conn.close().await.ok();
    (row.get("b"), row.get("r"), row.get("l"))
}

async fn usage_rows(db: &TestDatabase, key_id: &str) -> i64 {
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    let n: i64 =
        sqlx::query("SELECT COUNT(*) AS n FROM usage_events WHERE key_id = $1 AND status = 200")
            .bind(key_id)
            .fetch_one(&mut conn)
            .await
            .unwrap()
            .get("n");
    conn.close().await.ok();
    n
}

/// Waits until `check` holds, for at most `limit`; how long it took.
async fn within<F, Fut>(limit: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

fn log_of(db: &TestDatabase, name: &str) -> String {
    std::fs::read_to_string(db.dir.path().join(format!("{name}.log"))).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_spend_exactly_the_balance() {
    let Some(db) = cluster_database().await else {
        return;
    };
    let nodes = vec![
        start_node(&db, "a", &[]).await,
        start_node(&db, "b", &[]).await,
        start_node(&db, "c", &[]).await,
    ];
    let (token, ns) = operator(&db, &nodes[0]).await;
    add_flat_api(&nodes[0], &token).await;
    grant(&nodes[0], &token, &ns, 100 * 1000).await;
    let (_, secret) = test_key(&nodes[0], &token, &ns, json!({})).await;
    // Every instance sees the API (pushed catalog change) before the race.
    for node in &nodes {
        let client = reqwest::Client::new();
        let seen = within(Duration::from_secs(5), || async {
            let res = client
                .get(node.url("/v1/models"))
                .bearer_auth(&secret)
                .send()
                .await
                .unwrap();
            res.text().await.unwrap().contains("flat-1")
        })
        .await;
        assert!(seen.is_some(), "the new API reaches every instance");
    }

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(200)
        .build()
        .unwrap();
    let calls = (0..300).map(|i| {
        let (client, node, secret) = (&client, &nodes[i % 3], &secret);
        async move { chat(client, node, secret).await }
    });
    let statuses = join_all(calls).await;
    let ok = statuses.iter().filter(|s| s.is_success()).count();
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::PAYMENT_REQUIRED)
        .count();
    assert_eq!(
        (ok, refused),
        (100, 200),
        "exactly the calls the balance covers succeed, the rest get 402: {statuses:?}\n{}",
        log_of(&db, "a")
    );
    let (balance, _, ledger) = account(&db, &ns).await;
    assert_eq!(
        (balance, ledger),
        (0, 0),
        "the balance is spent and equals the ledger"
    );
    // Idle leases go back: nothing stays reserved.
    let settled = within(Duration::from_secs(10), || async {
        account(&db, &ns).await.1 == 0
    })
    .await;
    assert!(
        settled.is_some(),
        "idle leases went back: {:?}",
        account(&db, &ns).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_top_up_and_a_revocation_on_one_instance_reach_another_within_a_second() {
    let Some(db) = cluster_database().await else {
        return;
    };
    let a = start_node(&db, "a", &[]).await;
    let b = start_node(&db, "b", &[]).await;
    let (token, ns) = operator(&db, &a).await;
    add_flat_api(&a, &token).await;
    let (key_id, secret) = test_key(&a, &token, &ns, json!({})).await;
    let client = reqwest::Client::new();
    let api_seen = within(Duration::from_secs(5), || async {
        chat(&client, &b, &secret).await == StatusCode::PAYMENT_REQUIRED
    })
    .await;
    assert!(
        api_seen.is_some(),
        "B knows the API and refuses for want of credits"
    );

    // A top-up through A: B serves within a second.
    grant(&a, &token, &ns, 10 * 1000).await;
    let served = within(Duration::from_secs(3), || async {
        chat(&client, &b, &secret).await == StatusCode::OK
    })
    .await;
    let took = served.expect("B serves after the top-up on A");
    assert!(
        took <= Duration::from_secs(1),
        "the top-up reached B in {took:?}"
    );

    // A revocation through A: B refuses the key within a second.
    let res = client
        .post(a.url(&format!("/api/v1/namespaces/{ns}/keys/{key_id}/revoke")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.text().await.unwrap());
    let refused = within(Duration::from_secs(3), || async {
        chat(&client, &b, &secret).await == StatusCode::UNAUTHORIZED
    })
    .await;
    let took = refused.expect("B refuses the revoked key");
    assert!(
        took <= Duration::from_secs(1),
        "the revocation reached B in {took:?}"
    );
    let (balance, reserved, ledger) = account(&db, &ns).await;
    assert_eq!(balance, ledger);
    assert!(reserved <= balance);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_instance_keeps_its_answered_calls_and_its_lease_goes_back() {
    let Some(db) = cluster_database().await else {
        return;
    };
    let a = start_node(&db, "a", &[]).await;
    // B would give an idle lease back after a minute: only its death returns it.
    let mut b = start_node(&db, "b", &[("TALLY_CLUSTER__LEASE_IDLE_SECS", "60")]).await;
    let (token, ns) = operator(&db, &a).await;
    add_flat_api(&a, &token).await;
    grant(&a, &token, &ns, 1000 * 1000).await;
    let (key_id, secret) = test_key(&a, &token, &ns, json!({})).await;
    let client = reqwest::Client::new();
    let ready = within(Duration::from_secs(5), || async {
        chat(&client, &b, &secret).await == StatusCode::OK
    })
    .await;
    assert!(ready.is_some(), "B serves the key");
    // Calls through B while it is killed.
    let load = {
        let (client, url, secret) = (
            client.clone(),
            b.url("/v1/chat/completions"),
            secret.clone(),
        );
        tokio::spawn(async move {
            let mut answered = 1_i64; // the readiness call above
            let mut failed = 0_i64;
            for _ in 0..2000 {
                let ok = match client
                    .post(&url)
                    .bearer_auth(&secret)
                    .json(&json!({"model": "flat-1", "messages": [{"role": "user", "content": "hi"}]}))
                    .send()
                    .await
                {
                    Ok(r) => r.status() == StatusCode::OK && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if ok {
                    answered += 1;
                } else {
                    failed += 1;
                    if failed > 3 {
                        break;
                    }
                }
            }
            (answered, failed)
        })
    };
    let leased = within(Duration::from_secs(30), || async {
        account(&db, &ns).await.1 > 0
    })
    .await;
    assert!(leased.is_some(), "B holds a lease while it serves");
    b.kill();
    let (answered, failed) = load.await.unwrap();
    assert!(failed > 0, "the kill cut calls off");
    // Every call B answered is in usage; a call cut off after its commit
    // (between the answer's head and body) may be there too.
    let recorded = usage_rows(&db, &key_id).await;
    assert!(
        recorded >= answered && recorded <= answered + failed,
        "answered {answered}, cut off {failed}, recorded {recorded}"
    );
    let (balance, _, ledger) = account(&db, &ns).await;
    assert_eq!(balance, ledger, "the balance equals the ledger");
    assert_eq!(
        ledger,
        1000 * 1000 - recorded * 1000,
        "each recorded call was paid once"
    );
    // The dead instance's lease goes back within the lease timeout (3 s) and
    // one heartbeat of A (1 s).
    let back = within(Duration::from_secs(8), || async {
        account(&db, &ns).await.1 == 0
    })
    .await;
    assert!(
        back.is_some(),
        "B's lease went back: {:?}\n{}",
        account(&db, &ns).await,
        log_of(&db, "a")
    );
    // A serves the rest.
    assert_eq!(chat(&client, &a, &secret).await, StatusCode::OK);
}

/// The upkeep counters of an instance's `/metrics`: (leader gauge, rounds).
async fn upkeep_state(client: &reqwest::Client, node: &Node) -> Option<(f64, f64)> {
    let text = client
        .get(node.url("/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let mut leader = 0.0;
    let mut rounds = 0.0;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("tally_cluster_leader ") {
            leader = v.trim().parse().unwrap_or(0.0);
        }
        if line.starts_with("tally_upkeep_rounds_total{") {
            rounds += line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0);
        }
    }
    Some((leader, rounds))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_upkeep_runs_on_exactly_one_instance_and_moves_when_it_dies() {
    let Some(db) = cluster_database().await else {
        return;
    };
    let mut nodes = vec![
        start_node(&db, "a", &[]).await,
        start_node(&db, "b", &[]).await,
    ];
    let client = reqwest::Client::new();
    let one_leader = within(Duration::from_secs(5), || async {
        let mut leaders = 0.0;
        for n in &nodes {
            leaders += upkeep_state(&client, n).await.map_or(0.0, |s| s.0);
        }
        leaders == 1.0
    })
    .await;
    assert!(one_leader.is_some(), "one instance leads");
    // Over several of its 200 ms rounds, only the leader works.
    let mut first = Vec::new();
    for n in &nodes {
        first.push(upkeep_state(&client, n).await.unwrap());
    }
    let leader = first.iter().position(|s| s.0 == 1.0).unwrap();
    let rounds = within(Duration::from_secs(30), || async {
        upkeep_state(&client, &nodes[leader])
            .await
            .is_some_and(|s| s.1 >= first[leader].1 + 5.0)
    })
    .await;
    assert!(rounds.is_some(), "the leader runs its rounds: {first:?}");
    let mut states = Vec::new();
    for n in &nodes {
        states.push(upkeep_state(&client, n).await.unwrap());
    }
    let leader = states.iter().position(|s| s.0 == 1.0).unwrap();
    let follower = 1 - leader;
    assert!(
        states[leader].1 > 0.0,
        "the leader runs the upkeep: {states:?}"
    );
    assert_eq!(
        states[follower],
        (0.0, 0.0),
        "the other never does: {states:?}"
    );

    // The leader dies: the other takes over.
    nodes[leader].kill();
    let took_over = within(Duration::from_secs(10), || async {
        upkeep_state(&client, &nodes[follower])
            .await
            .is_some_and(|s| s.0 == 1.0 && s.1 > 0.0)
    })
    .await;
    assert!(
        took_over.is_some(),
        "the other instance took the upkeep over"
    );
}

/// The leases of a clean shutdown go back at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_clean_shutdown_returns_the_lease() {
    let Some(db) = cluster_database().await else {
        return;
    };
    let a = start_node(&db, "a", &[("TALLY_CLUSTER__LEASE_IDLE_SECS", "60")]).await;
    let (token, ns) = operator(&db, &a).await;
    add_flat_api(&a, &token).await;
    grant(&a, &token, &ns, 100 * 1000).await;
    let (_, secret) = test_key(&a, &token, &ns, json!({})).await;
    let client = reqwest::Client::new();
    assert_eq!(chat(&client, &a, &secret).await, StatusCode::OK);
    assert!(account(&db, &ns).await.1 > 0, "A holds a lease");
    let pid = a.child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let back = within(Duration::from_secs(10), || async {
        account(&db, &ns).await.1 == 0
    })
    .await;
    assert!(
        back.is_some(),
        "the lease went back at shutdown: {}",
        log_of(&db, "a")
    );
    let (balance, _, ledger) = account(&db, &ns).await;
    assert_eq!((balance, ledger), (99 * 1000, 99 * 1000));
}

/// The lease rule itself: at most half of what is unreserved, in whole
/// holds, at least what the hold lacks; nothing when that is not there; the
/// reservation always the sum of the leases, and a release gives back at
/// most what the lease holds.
#[tokio::test]
async fn leases_take_at_most_half_of_what_is_free_in_whole_holds() {
    use tally_common::Environment::Test;
    use tally_store::cluster::{acquire, release, LeaseRequest};
    let Some(db) = cluster_database().await else {
        return;
    };
    let store = tally_store::Store::connect(&tally_store::ConnectOptions {
        url: db.url.clone(),
        max_connections: 2,
    })
    .await
    .unwrap();
    store.migrate().await.unwrap();
    let mut conn = store.conn().await.unwrap();
    let ns = tally_store::namespaces::insert(&mut conn, "n")
        .await
        .unwrap()
        .id;
    tally_store::ledger::add_to_balance(&mut conn, &ns, Test, 1005)
        .await
        .unwrap();
    let ask = |instance: &'static str, need: i64, want: i64, unit: i64| LeaseRequest {
        instance,
        ns: &ns,
        env: Test,
        need,
        want,
        unit,
        now: 1,
    };
    // Half of 1,005 is 502: 10 plus 49 whole holds of 10.
    assert_eq!(
        acquire(&mut conn, &ask("a", 10, 10_000, 10)).await.unwrap(),
        Some(500)
    );
    // Free 505: half is 252, so 250; the rate asks only 40, so 40.
    assert_eq!(
        acquire(&mut conn, &ask("b", 10, 40, 10)).await.unwrap(),
        Some(40)
    );
    assert_eq!(
        acquire(&mut conn, &ask("b", 10, 10_000, 10)).await.unwrap(),
        Some(230)
    );
    // Free 235: a hold that needs more than half still gets what it needs.
    assert_eq!(
        acquire(&mut conn, &ask("a", 200, 200, 200)).await.unwrap(),
        Some(200)
    );
    // Free 35: not enough for 40.
    assert_eq!(
        acquire(&mut conn, &ask("c", 40, 40, 40)).await.unwrap(),
        None
    );
    let (balance, reserved) = tally_store::cluster::balance(&mut conn, &ns, Test)
        .await
        .unwrap();
    assert_eq!((balance, reserved), (1005, 970));
    let leases: i64 = tally_store::sqlx::query_scalar(
        "SELECT CAST(SUM(amount_micros) AS BIGINT) FROM credit_leases WHERE namespace_id = $1",
    )
    .bind(&ns)
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert_eq!(leases, reserved, "the reservation is the sum of the leases");
    // A release gives back at most what the lease holds.
    assert_eq!(
        release(&mut conn, "b", &ns, Test, 1000, 2).await.unwrap(),
        270
    );
    assert_eq!(
        release(&mut conn, "b", &ns, Test, 1000, 2).await.unwrap(),
        0
    );
    assert_eq!(
        tally_store::cluster::balance(&mut conn, &ns, Test)
            .await
            .unwrap(),
        (1005, 700)
    );
    // The database refuses reserving more than the balance, whatever asks.
    let over = tally_store::sqlx::query(
        "UPDATE balances SET reserved_micros = balance_micros + 1 WHERE namespace_id = $1",
    )
    .bind(&ns)
    .execute(&mut *conn)
    .await;
    assert!(over.is_err(), "reserved above the balance is refused");
    let negative = tally_store::ledger::add_to_balance(&mut conn, &ns, Test, -2000).await;
    assert!(negative.is_err(), "a negative balance is refused");
    drop(conn);
    store.close().await;
}

/// Counts a node's calls by status over `secs` seconds, from `workers`
/// concurrent loops.
async fn hammer(node: &Node, secret: &str, workers: usize, secs: f64) -> Vec<StatusCode> {
    let client = reqwest::Client::new();
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let loops = (0..workers).map(|_| {
        let client = client.clone();
        async move {
            let mut out = Vec::new();
            while Instant::now() < until {
                out.push(chat(&client, node, secret).await);
            }
            out
        }
    });
    join_all(loops).await.into_iter().flatten().collect()
}

async fn metric(client: &reqwest::Client, node: &Node, name: &str) -> Option<f64> {
    let text = client
        .get(node.url("/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rate_limit_holds_across_instances_through_redis_and_calls_go_on_when_redis_stops() {
    let Some(db) = cluster_database().await else {
        return;
    };
    let Some(redis) = crate::redis_limits::redis_url().await else {
        return;
    };
    let mut forwarder =
        crate::redis_limits::Forwarder::start(&crate::redis_limits::redis_addr(&redis)).await;
    let prefix = format!("tallytest-{}", uuid::Uuid::new_v4().simple());
    let redis_url = format!("redis://127.0.0.1:{}", forwarder.port);
    let env = [
        ("TALLY_REDIS_URL", redis_url.as_str()),
        ("TALLY_CLUSTER__REDIS_PREFIX", prefix.as_str()),
    ];
    let a = start_node(&db, "a", &env).await;
    let b = start_node(&db, "b", &env).await;
    let (token, ns) = operator(&db, &a).await;
    add_flat_api(&a, &token).await;
    grant(&a, &token, &ns, 1_000_000 * 1000).await;
    let (_, secret) = test_key(
        &a,
        &token,
        &ns,
        json!({"limits": {"requests_per_second": 10}}),
    )
    .await;
    let client = reqwest::Client::new();
    let ready = within(Duration::from_secs(5), || async {
        chat(&client, &b, &secret).await == StatusCode::OK
    })
    .await;
    assert!(ready.is_some(), "B serves the key");
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // Both instances flat out for 3 s: together at most the burst of 10
    // plus 10 a second (and 2 for the edges of the window).
    let started = Instant::now();
    let (ra, rb) = tokio::join!(hammer(&a, &secret, 4, 3.0), hammer(&b, &secret, 4, 3.0));
    let elapsed = started.elapsed().as_secs_f64();
    let all: Vec<StatusCode> = ra.iter().chain(&rb).copied().collect();
    let ok = all.iter().filter(|s| **s == StatusCode::OK).count() as f64;
    let limited = all
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!(
        ok as usize + limited,
        all.len(),
        "only 200 and 429: {all:?}"
    );
    assert!(
        ok <= 10.0 + 10.0 * elapsed + 2.0,
        "{ok} calls admitted in {elapsed:.2} s across two instances"
    );
    assert!(
        ok >= 10.0 * elapsed * 0.5,
        "the limit still admits: {ok} in {elapsed:.2} s"
    );
    assert!(
        ra.contains(&StatusCode::OK) && rb.contains(&StatusCode::OK),
        "both instances admitted calls"
    );

    // Redis goes away mid-run: calls keep being answered (by each
    // instance's own limits), and the degradation is reported.
    forwarder.stop().await;
    let (ra, rb) = tokio::join!(hammer(&a, &secret, 2, 2.0), hammer(&b, &secret, 2, 2.0));
    for (name, statuses) in [("A", &ra), ("B", &rb)] {
        assert!(
            statuses
                .iter()
                .all(|s| *s == StatusCode::OK || *s == StatusCode::TOO_MANY_REQUESTS),
            "{name} answered every call while Redis was away: {statuses:?}"
        );
        assert!(statuses.contains(&StatusCode::OK), "{name} kept serving");
    }
    for node in [&a, &b] {
        assert_eq!(metric(&client, node, "tally_redis_up").await, Some(0.0));
        assert!(
            metric(&client, node, "tally_limits_local_total")
                .await
                .unwrap_or(0.0)
                > 0.0
        );
    }
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    let reported: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE kind = 'redis.down'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.ok();
    assert!(reported >= 1, "a redis.down event was written");
    let (balance, reserved, ledger) = account(&db, &ns).await;
    assert_eq!(balance, ledger);
    assert!(reserved <= balance);

    // Clean up this test's Redis keys.
    let mut redis_conn = redis::Client::open(redis.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut redis_conn)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut redis_conn)
            .await
            .unwrap_or(());
    }
}
