//! G4: a call whose response completed is in usage and the ledger, even when
//! the server is killed (SIGKILL) right after answering it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tally_common::Environment;
use tally_store::{ConnectOptions, Store};
use tokio::sync::Notify;

use crate::helpers::{backend_tests, Backend, TallyProcess, TestDatabase};

backend_tests!(answered_calls_survive_a_kill_right_after_the_response);

async fn answered_calls_survive_a_kill_right_after_the_response(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let mut server = TallyProcess::start(&db.url, db.dir.path(), None, &[]).await;
    let base = server.base.clone();
    let client = reqwest::Client::new();

    let auth: Value = client
        .post(format!("{base}/api/v1/auth/signup"))
        .json(&json!({"email": "kill@example.com", "password": "correct horse battery"}))
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
        .json(&json!({"name": "k", "environment": "test"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = key["secret"].as_str().unwrap().to_owned();

    // Sixteen clients call in a loop; the server dies as soon as ten calls
    // have been answered, and each client stops at its first failed call.
    let count = Arc::new(AtomicUsize::new(0));
    let ten = Arc::new(Notify::new());
    let workers: Vec<_> = (0..16)
        .map(|w| {
            let (client, base, secret) = (client.clone(), base.clone(), secret.clone());
            let (count, ten) = (count.clone(), ten.clone());
            tokio::spawn(async move {
                let mut mine = Vec::new();
                for i in 0..10_000 {
                    let call = async {
                        let res = client
                            .post(format!("{base}/v1/chat/completions"))
                            .bearer_auth(&secret)
                            .json(&json!({"model": "tally-sandbox", "messages": [{"role": "user", "content": format!("call {w}-{i}")}]}))
                            .send()
                            .await
                            .ok()?;
                        if res.status() != StatusCode::OK {
                            return None;
                        }
                        let id = res.headers().get("x-tally-call-id")?.to_str().ok()?.to_owned();
                        let cost: i64 = res.headers().get("x-tally-cost-micros")?.to_str().ok()?.parse().ok()?;
                        res.bytes().await.ok()?;
                        Some((id, cost))
                    };
                    match call.await {
                        Some(c) => {
                            mine.push(c);
                            if count.fetch_add(1, Ordering::SeqCst) + 1 == 10 {
                                ten.notify_one();
                            }
                        }
                        // Cut off: the server is gone.
                        None => return (mine, true),
                    }
                }
                (mine, false)
            })
        })
        .collect();
    ten.notified().await;
    server.kill();
    let mut answered = Vec::new();
    let mut cut = 0;
    for w in workers {
        let (mine, was_cut) = w.await.unwrap();
        answered.extend(mine);
        cut += usize::from(was_cut);
    }
    drop(server);
    assert!(answered.len() >= 10, "{} answered", answered.len());
    // The kill really cut calls off: every client lost a call to it.
    assert_eq!(
        cut, 16,
        "{cut} of 16 clients had a call cut off by the kill"
    );

    let store = Store::connect(&ConnectOptions {
        url: db.url.clone(),
        max_connections: 1,
    })
    .await
    .unwrap();
    let mut conn = store.conn().await.unwrap();
    let recorded: HashSet<String> =
        tally_store::usage::list(&mut conn, &ns, Default::default(), 1000)
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.id)
            .collect();
    for (id, _) in &answered {
        assert!(recorded.contains(id), "answered call {id} is in usage");
    }
    let ledger =
        tally_store::ledger::list(&mut conn, &ns, Environment::Test, Default::default(), 1000)
            .await
            .unwrap();
    let charged: HashSet<&str> = ledger
        .iter()
        .filter_map(|e| e.reference.as_deref())
        .collect();
    for (id, cost) in &answered {
        assert!(
            *cost > 0 && charged.contains(id.as_str()),
            "answered call {id} is in the ledger"
        );
    }
    let sum = tally_store::ledger::sum(&mut conn, &ns, Environment::Test)
        .await
        .unwrap();
    let balance = tally_store::ledger::balance(&mut conn, &ns, Environment::Test)
        .await
        .unwrap();
    assert_eq!(sum, balance);
    drop(conn);
    store.close().await;
}
