//! Backups (O1): one archive moves a whole install from SQLite to
//! PostgreSQL and back, every table row for row; it is taken while the
//! gateway serves; secrets stay out unless asked for; and a truncated,
//! altered or newer archive, or a target that holds data, is refused with
//! nothing written.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tally_common::{
    AuthResponse, BackupInfo, BackupList, BannerList, CreatedKey, ErrorCode, RestoredBackup,
};
use tally_store::backup::{self, BackupError, CreateOptions};
use tally_store::sqlx::{self, any::AnyRow, Row};
use tally_store::{ConnectOptions, Store};

use crate::billing::events_of_kind;
use crate::helpers::{
    add_api, assert_error, backend_tests, grant, in_own_process, json, postgres_enabled, spawn_app,
    spawn_app_with, spawn_with, start, test_settings, upkeep_rounds, Backend, TestApp,
    TestDatabase, User,
};
use crate::operators::setup_token;

backend_tests!(
    operators_take_list_download_and_delete_backups_and_no_one_else_can,
    a_schedule_backs_up_when_due_and_keeps_the_newest,
    owners_and_admins_see_the_overdue_banner_until_a_backup_is_taken,
    a_backup_that_cannot_be_written_is_a_500_and_an_event_and_records_nothing,
    a_new_server_restores_an_uploaded_backup_with_its_setup_token_once,
);

/// Every table of a database, its columns by name and its rows sorted, each
/// value as `i<integer>`, `t<text>` or `NULL`: read without the backup
/// module, so a fault there cannot hide itself.
type Dump = BTreeMap<String, (Vec<String>, Vec<Vec<String>>)>;

async fn dump(store: &Store) -> Dump {
    let mut conn = store.conn().await.unwrap();
    let sqlite = store.backend() == tally_store::Backend::Sqlite;
    let tables: Vec<String> = if sqlite {
        sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' \
             AND name NOT LIKE 'sqlite%' AND name <> '_sqlx_migrations'",
        )
        .fetch_all(&mut *conn)
        .await
        .unwrap()
    } else {
        sqlx::query_scalar(
            "SELECT CAST(tablename AS TEXT) FROM pg_tables \
             WHERE schemaname = current_schema() AND tablename <> '_sqlx_migrations'",
        )
        .fetch_all(&mut *conn)
        .await
        .unwrap()
    };
    let mut out = Dump::new();
    for table in tables {
        let mut columns: Vec<String> = if sqlite {
            sqlx::query_scalar("SELECT name FROM pragma_table_info($1)")
        } else {
            sqlx::query_scalar(
                "SELECT CAST(column_name AS TEXT) FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name = $1",
            )
        }
        .bind(&table)
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        columns.sort();
        let list: Vec<String> = columns.iter().map(|c| format!("\"{c}\"")).collect();
        let rows = sqlx::query(&format!("SELECT {} FROM \"{table}\"", list.join(", ")))
            .fetch_all(&mut *conn)
            .await
            .unwrap();
        let mut rows: Vec<Vec<String>> = rows
            .iter()
            .map(|r| (0..columns.len()).map(|i| value(r, i)).collect())
            .collect();
        rows.sort();
        out.insert(table, (columns, rows));
    }
    out
}

fn value(row: &AnyRow, i: usize) -> String {
    if let Ok(v) = row.try_get::<Option<i64>, _>(i) {
        return v.map_or_else(|| "NULL".to_owned(), |v| format!("i{v}"));
    }
    row.try_get::<Option<String>, _>(i)
        .unwrap()
        .map_or_else(|| "NULL".to_owned(), |t| format!("t{t}"))
}

fn assert_same(a: &Dump, b: &Dump, what: &str) {
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "{what}: tables"
    );
    for (table, (columns, rows)) in a {
        let (other_columns, other_rows) = &b[table];
        assert_eq!(columns, other_columns, "{what}: columns of {table}");
        assert_eq!(rows.len(), other_rows.len(), "{what}: rows of {table}");
        assert!(rows == other_rows, "{what}: the rows of {table} differ");
    }
}

async fn open(db: &TestDatabase) -> Store {
    let store = Store::connect(&ConnectOptions {
        url: db.url.clone(),
        max_connections: 4,
    })
    .await
    .unwrap();
    store.migrate().await.unwrap();
    store
}

/// Every balance equals the sum of its ledger, and the counts the checks
/// below rely on are there.
async fn assert_balances_match_ledgers(store: &Store) {
    let mut conn = store.conn().await.unwrap();
    let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT b.namespace_id, b.environment, b.balance_micros, \
         CAST(COALESCE((SELECT SUM(l.amount_micros) FROM ledger_entries l \
           WHERE l.namespace_id = b.namespace_id AND l.environment = b.environment), 0) AS BIGINT) \
         FROM balances b",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    assert!(rows.len() >= 4, "{rows:?}");
    for (ns, env, balance, ledger) in rows {
        assert_eq!(balance, ledger, "{ns} {env}");
    }
}

async fn count(store: &Store, table: &str) -> i64 {
    let mut conn = store.conn().await.unwrap();
    sqlx::query_scalar(&format!("SELECT CAST(COUNT(*) AS BIGINT) FROM {table}"))
        .fetch_one(&mut *conn)
        .await
        .unwrap()
}

async fn create_key(app: &TestApp, user: &User, env: &str) -> CreatedKey {
    json(
        app.post(
            &format!("/api/v1/namespaces/{}/keys", user.namespace_id),
            Some(&user.token),
            json!({"name": format!("{env} key"), "environment": env, "labels": ["backup"]}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await
}

async fn chat(app: &TestApp, secret: &str, model: &str) -> StatusCode {
    app.client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(secret)
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}))
        .send()
        .await
        .unwrap()
        .status()
}

/// Keys (one rotated, one revoked), members, grants, a bonus, an API with an
/// upstream credential, and calls that succeed and fail: usage, rollups,
/// ledger entries and events.
async fn realistic_data(app: &TestApp) -> (String, User) {
    let operator = app.signup_operator("op").await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    app.add_member(&alice, &bob, "developer").await;
    add_api(
        app,
        &operator,
        json!({"slug": "paid", "name": "Paid", "models": ["paid-1"],
               "upstreams": [{"url": "http://127.0.0.1:9", "api_key": "sk-upstream-secret"}],
               "pricing": {"per_request_micros": 100}}),
    )
    .await;
    grant(app, &operator, &alice, "live", 5_000_000).await;
    let res = app
        .post(
            &format!("/api/v1/admin/namespaces/{}/bonuses", bob.namespace_id),
            Some(&operator.token),
            json!({"environment": "test", "amount_micros": 700_000, "reason": "referral"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let test = create_key(app, &alice, "test").await;
    let live = create_key(app, &alice, "live").await;
    let revoked = create_key(app, &bob, "test").await;
    let res = app
        .post(
            &format!(
                "/api/v1/namespaces/{}/keys/{}/rotate",
                alice.namespace_id, test.key.id
            ),
            Some(&alice.token),
            json!({"grace_seconds": 3600}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = app
        .post(
            &format!(
                "/api/v1/namespaces/{}/keys/{}/revoke",
                bob.namespace_id, revoked.key.id
            ),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    for _ in 0..10 {
        assert_eq!(
            chat(app, &test.secret, "tally-sandbox").await,
            StatusCode::OK
        );
    }
    // Refused (unknown model) and failed upstream calls are recorded too.
    assert_ne!(
        chat(app, &test.secret, "no-such-model").await,
        StatusCode::OK
    );
    assert_ne!(chat(app, &live.secret, "paid-1").await, StatusCode::OK);
    // A webhook endpoint with a delivery that went out (and its attempt).
    let rx = crate::webhooks::receiver(|_| 200);
    let made: Value = json(
        app.post(
            &format!("/api/v1/namespaces/{}/webhooks", alice.namespace_id),
            Some(&alice.token),
            json!({"url": rx.url}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let sent: Value = json(
        app.post(
            &format!(
                "/api/v1/namespaces/{}/webhooks/{}/test",
                alice.namespace_id,
                made["endpoint"]["id"].as_str().unwrap()
            ),
            Some(&alice.token),
            json!({}),
        )
        .await,
        StatusCode::ACCEPTED,
    )
    .await;
    let delivery = format!(
        "/api/v1/namespaces/{}/webhook-deliveries/{}",
        alice.namespace_id,
        sent["id"].as_str().unwrap()
    );
    crate::helpers::eventually(10, "the webhook delivery succeeds", || async {
        let d: Value = json(app.get(&delivery, Some(&alice.token)).await, StatusCode::OK).await;
        d["delivery"]["status"] == "succeeded"
    })
    .await;
    (test.secret, alice)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_moves_every_row_between_sqlite_and_postgresql_and_a_damaged_one_changes_nothing()
{
    if !postgres_enabled() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_with(TestDatabase::new(Backend::Sqlite).await, |_| {}).await;
    let (secret, alice) = realistic_data(&app).await;

    // Taken while calls keep coming: every call is answered, and the
    // archive is one moment's state, where balances equal their ledgers.
    let under_load = dir.path().join("under-load.tar");
    let load = {
        let (client, url, secret) = (
            app.client.clone(),
            app.url("/v1/chat/completions"),
            secret.clone(),
        );
        tokio::spawn(async move {
            let calls = (0..40).map(|_| {
                client
                    .post(&url)
                    .bearer_auth(&secret)
                    .json(&json!({"model": "tally-sandbox", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}))
                    .send()
            });
            join_all(calls)
                .await
                .into_iter()
                .map(|r| r.unwrap().status())
                .collect::<Vec<_>>()
        })
    };
    let manifest = backup::create(&app.store, &under_load, CreateOptions::default())
        .await
        .unwrap();
    assert!(load.await.unwrap().iter().all(|s| *s == StatusCode::OK));
    assert_eq!(manifest.source_backend, "sqlite");
    assert!(!manifest.secrets_included);
    let pg = TestDatabase::new(Backend::Postgres).await;
    let pg_store = open(&pg).await;
    let restored = backup::restore(&pg_store, &under_load).await.unwrap();
    assert_eq!(restored.rows.len(), manifest.tables.len());
    assert_balances_match_ledgers(&pg_store).await;
    for table in [
        "webhook_endpoints",
        "webhook_messages",
        "webhook_deliveries",
        "webhook_attempts",
    ] {
        assert_eq!(count(&pg_store, table).await, 1, "{table}");
    }
    // Without secrets: no JWT secret, and the upstream credential is gone
    // while the rest of the API's configuration stays.
    let mut conn = pg_store.conn().await.unwrap();
    let jwt: i64 = sqlx::query_scalar(
        "SELECT CAST(COUNT(*) AS BIGINT) FROM server_settings WHERE key = 'jwt_secret'",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert_eq!(jwt, 0);
    let config: String = sqlx::query_scalar("SELECT config FROM catalog_apis WHERE slug = 'paid'")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    assert!(!config.contains("sk-upstream-secret"), "{config}");
    let config: Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["upstreams"][0]["url"], "http://127.0.0.1:9");
    assert_eq!(config["pricing"]["per_request_micros"], 100);

    // SQLite to PostgreSQL, secrets included: every table row for row.
    let quiet = dir.path().join("quiet.tar");
    let m = backup::create(
        &app.store,
        &quiet,
        CreateOptions {
            include_secrets: true,
        },
    )
    .await
    .unwrap();
    let source = dump(&app.store).await;
    let calls = source["usage_events"].1.len();
    assert!(calls >= 50, "the calls are there: {calls}");
    assert_eq!(
        m.tables.iter().map(|t| t.rows).sum::<i64>(),
        source.values().map(|t| t.1.len() as i64).sum::<i64>()
    );
    let pg2 = TestDatabase::new(Backend::Postgres).await;
    let pg2_store = open(&pg2).await;
    backup::restore(&pg2_store, &quiet).await.unwrap();
    let on_pg = dump(&pg2_store).await;
    assert_same(&source, &on_pg, "SQLite to PostgreSQL");
    assert_balances_match_ledgers(&pg2_store).await;

    // And back, through the command line: PostgreSQL to a new SQLite file.
    let tally = env!("CARGO_BIN_EXE_tally");
    let out = Command::new(tally)
        .args(["backup", "create", "--include-secrets", "--out"])
        .arg(dir.path().join("from-pg"))
        .args(["--database-url", &pg2.url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let listed = backup::list(&dir.path().join("from-pg")).unwrap();
    assert_eq!(listed.len(), 1);
    let from_pg = listed[0].path.clone();
    let out = Command::new(tally)
        .args(["backup", "list", "--dir"])
        .arg(dir.path().join("from-pg"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("from postgres") && text.contains("secrets"),
        "{text}"
    );
    let back = TestDatabase::new(Backend::Sqlite).await;
    let out = Command::new(tally)
        .args(["backup", "restore"])
        .arg(&from_pg)
        .args(["--database-url", &back.url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let back_store = open(&back).await;
    assert_same(&on_pg, &dump(&back_store).await, "PostgreSQL to SQLite");
    // Refused, with nothing written: a target that holds data, a truncated
    // archive, an altered one and one of a newer schema.
    // (The command line's backup recorded itself there as the last one.)
    let holding = dump(&pg2_store).await;
    let err = backup::restore(&pg2_store, &quiet).await.unwrap_err();
    assert!(matches!(err, BackupError::NotEmpty(_)), "{err}");
    assert_same(&holding, &dump(&pg2_store).await, "a refused restore");

    // A server on the restored database: the session signed with the
    // restored JWT secret still works, the key still calls, and new rows
    // (a sign-up's events and welcome credits) continue the serial ids.
    let (restored_server, _) = start(test_settings(&pg2)).await;
    let me = app
        .client
        .get(format!("{restored_server}/api/v1/me"))
        .bearer_auth(&alice.token)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), StatusCode::OK);
    let call = app
        .client
        .post(format!("{restored_server}/v1/chat/completions"))
        .bearer_auth(&secret)
        .json(&json!({"model": "tally-sandbox", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}))
        .send()
        .await
        .unwrap();
    assert_eq!(call.status(), StatusCode::OK);
    let signup = app
        .client
        .post(format!("{restored_server}/api/v1/auth/signup"))
        .json(&json!({"email": "carol@example.com", "password": "a long enough password", "display_name": "Carol"}))
        .send()
        .await
        .unwrap();
    assert_eq!(signup.status(), StatusCode::CREATED);
    assert_balances_match_ledgers(&pg2_store).await;

    let bytes = std::fs::read(&quiet).unwrap();
    let truncated = dir.path().join("truncated.tar");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let mut altered_bytes = bytes.clone();
    let at = bytes.len() * 3 / 4;
    altered_bytes[at] ^= 0x40;
    let altered = dir.path().join("altered.tar");
    std::fs::write(&altered, &altered_bytes).unwrap();
    let newer = dir.path().join("newer.tar");
    rewrite_manifest(&quiet, &newer, |m| {
        m["schema_version"] = json!(backup::schema_version() + 1)
    });
    let miscounted = dir.path().join("miscounted.tar");
    rewrite_manifest(&quiet, &miscounted, |m| {
        let tables = m["tables"].as_array_mut().unwrap();
        let t = tables
            .iter_mut()
            .find(|t| t["name"] == "usage_events")
            .unwrap();
        t["rows"] = json!(t["rows"].as_i64().unwrap() + 1);
    });
    for (path, expect) in [
        (&truncated, "damaged"),
        (&altered, "damaged"),
        (&newer, "newer"),
        (&miscounted, "damaged"),
    ] {
        for backend in [Backend::Sqlite, Backend::Postgres] {
            let db = TestDatabase::new(backend).await;
            let store = open(&db).await;
            let err = backup::restore(&store, path).await.unwrap_err();
            assert!(err.to_string().contains(expect), "{path:?}: {err}");
            for table in [
                "accounts",
                "namespaces",
                "ledger_entries",
                "usage_events",
                "api_keys",
            ] {
                assert_eq!(count(&store, table).await, 0, "{path:?} wrote {table}");
            }
        }
    }
}

/// Copies an archive with its manifest changed by `change` (the table files
/// as they are).
fn rewrite_manifest(from: &Path, to: &Path, change: impl FnOnce(&mut Value)) {
    let mut input = tar::Archive::new(std::fs::File::open(from).unwrap());
    let mut output = tar::Builder::new(std::fs::File::create(to).unwrap());
    let mut change = Some(change);
    for entry in input.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
        if name == "manifest.json" {
            let mut m: Value = serde_json::from_slice(&data).unwrap();
            (change.take().unwrap())(&mut m);
            data = serde_json::to_vec(&m).unwrap();
        }
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o600);
        header.set_cksum();
        output
            .append_data(&mut header, &name, data.as_slice())
            .unwrap();
    }
    output.finish().unwrap();
}

async fn backups(app: &TestApp, operator: &User) -> BackupList {
    json(
        app.get("/api/v1/admin/backups", Some(&operator.token))
            .await,
        StatusCode::OK,
    )
    .await
}

async fn operators_take_list_download_and_delete_backups_and_no_one_else_can(backend: Backend) {
    let app = spawn_app(backend).await;
    let operator = app.signup_operator("op").await;
    let user = app.signup("user").await;
    // Backups are news for operators' webhooks, not for anyone else's.
    let (to_operator, to_user) = (
        crate::webhooks::receiver(|_| 200),
        crate::webhooks::receiver(|_| 200),
    );
    for (who, rx) in [(&operator, &to_operator), (&user, &to_user)] {
        let res = app
            .post(
                &format!("/api/v1/namespaces/{}/webhooks", who.namespace_id),
                Some(&who.token),
                json!({"url": rx.url}),
            )
            .await;
        assert_eq!(res.status(), StatusCode::CREATED);
    }
    for res in [
        app.get("/api/v1/admin/backups", Some(&user.token)).await,
        app.post("/api/v1/admin/backups", Some(&user.token), json!({}))
            .await,
    ] {
        assert_error(res, StatusCode::FORBIDDEN, ErrorCode::Forbidden).await;
    }
    let res = app.get("/api/v1/admin/backups", None).await;
    assert_error(res, StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized).await;
    let empty = backups(&app, &operator).await;
    assert!(empty.items.is_empty() && empty.last_backup_at.is_none());
    assert_eq!(empty.schedule.every_hours, 0);
    assert!(empty.schedule.next_at.is_none());

    let taken: BackupInfo = json(
        app.post("/api/v1/admin/backups", Some(&operator.token), json!({}))
            .await,
        StatusCode::CREATED,
    )
    .await;
    assert!(backup::is_file_name(&taken.name), "{}", taken.name);
    assert!(taken.rows > 0 && taken.tables > 20, "{taken:?}");
    assert!(!taken.secrets_included);
    assert_eq!(taken.schema_version, backup::schema_version());
    let list = backups(&app, &operator).await;
    assert_eq!(list.items, vec![taken.clone()]);
    assert_eq!(
        list.last_backup_at.as_deref(),
        Some(taken.created_at.as_str())
    );
    assert_eq!(
        events_of_kind(&app, &operator, "backup.created")
            .await
            .len(),
        1
    );
    crate::helpers::eventually(10, "the operator's webhook hears of the backup", || async {
        !to_operator.got().is_empty()
    })
    .await;
    let body: Value = serde_json::from_str(&to_operator.got()[0].body).unwrap();
    assert_eq!(body["type"], "backup.created");
    assert_eq!(body["data"]["name"], taken.name);
    assert!(to_user.got().is_empty());

    // The download is the archive itself: it verifies whole.
    let res = app
        .get(
            &format!("/api/v1/admin/backups/{}", taken.name),
            Some(&operator.token),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "application/x-tar");
    assert!(res.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .contains(&taken.name));
    let bytes = res.bytes().await.unwrap();
    assert_eq!(bytes.len() as i64, taken.size_bytes);
    let copy = app.db.dir.path().join("downloaded.tar");
    std::fs::write(&copy, &bytes).unwrap();
    let m = backup::verify(&copy).unwrap();
    assert_eq!(m.rows(), taken.rows);
    // Someone else's download, and names that are not backups' (a path out
    // of the directory, another file in it) are refused.
    std::fs::write(
        app.db.dir.path().join("backups").join("notes.txt"),
        "not a backup",
    )
    .unwrap();
    let res = app
        .get(
            &format!("/api/v1/admin/backups/{}", taken.name),
            Some(&user.token),
        )
        .await;
    assert_error(res, StatusCode::FORBIDDEN, ErrorCode::Forbidden).await;
    for name in [
        "notes.txt",
        "..%2Ftally.db",
        "..%2F..%2Ftally.db",
        "tally-backup-1.tar",
        "tally-backup-20991231-000000-000.tar",
    ] {
        let res = app
            .get(
                &format!("/api/v1/admin/backups/{name}"),
                Some(&operator.token),
            )
            .await;
        assert_error(res, StatusCode::NOT_FOUND, ErrorCode::NotFound).await;
    }

    let res = app
        .delete(
            &format!("/api/v1/admin/backups/{}", taken.name),
            &operator.token,
        )
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = app
        .delete(
            &format!("/api/v1/admin/backups/{}", taken.name),
            &operator.token,
        )
        .await;
    assert_error(res, StatusCode::NOT_FOUND, ErrorCode::NotFound).await;
    let after = backups(&app, &operator).await;
    assert!(after.items.is_empty());
    // The last success stays on record: the file went, the backup happened.
    assert_eq!(after.last_backup_at, list.last_backup_at);
}

async fn a_schedule_backs_up_when_due_and_keeps_the_newest(backend: Backend) {
    // It moves the clock across the schedule's periods.
    in_own_process!(backend, "a_schedule_backs_up_when_due_and_keeps_the_newest");
    let (app, _) = spawn_app_with(backend, |s| {
        s.backup.every_hours = 24;
        s.backup.keep = 2;
        s.billing.alert_check_interval_ms = 50;
        s.auth.access_token_ttl_secs = 10 * 86_400;
    })
    .await;
    let operator = app.signup_operator("op").await;
    // `n` backups, the newest recorded as the last success (the file is in
    // place a moment before its success is recorded).
    let count_is = |n: usize| {
        let (app, operator) = (&app, &operator);
        async move {
            let l = backups(app, operator).await;
            l.items.len() == n
                && l.last_backup_at.as_deref() == l.items.first().map(|b| b.created_at.as_str())
        }
    };
    // No backup yet: the first is due at once.
    crate::helpers::eventually(30, "the first scheduled backup", || count_is(1)).await;
    let first = backups(&app, &operator).await;
    let next = first.schedule.next_at.clone().unwrap();
    let last = first.last_backup_at.clone().unwrap();
    let ms = |t: &str| {
        chrono::DateTime::parse_from_rfc3339(t)
            .unwrap()
            .timestamp_millis()
    };
    assert_eq!(ms(&next) - ms(&last), 24 * 3_600_000);
    // Not before its time: two whole rounds of the schedule a minute early.
    tally_store::clock::travel_to(ms(&next) - 60_000);
    let rounds = upkeep_rounds(&app, "backup").await;
    crate::helpers::eventually(30, "two rounds of the schedule", || async {
        upkeep_rounds(&app, "backup").await >= rounds + 2.0
    })
    .await;
    assert_eq!(backups(&app, &operator).await.items.len(), 1);
    // Each period brings one more; the oldest beyond two are deleted.
    tally_store::clock::travel_to(ms(&next) + 1_000);
    crate::helpers::eventually(30, "the second scheduled backup", || count_is(2)).await;
    let second = backups(&app, &operator).await;
    tally_store::clock::travel_to(ms(&second.schedule.next_at.unwrap()) + 1_000);
    crate::helpers::eventually(30, "the third backup, the first deleted", || async {
        let l = backups(&app, &operator).await;
        l.items.len() == 2
            && l.items.iter().all(|b| b.name != first.items[0].name)
            && l.last_backup_at.as_deref() == Some(l.items[0].created_at.as_str())
    })
    .await;
    let third = backups(&app, &operator).await;
    assert_eq!(third.items[1], second.items[0]);
    assert!(third
        .items
        .iter()
        .all(|b| b.source_backend == app.store.backend().as_str()));
    assert_eq!(
        events_of_kind(&app, &operator, "backup.created")
            .await
            .len(),
        3
    );
}

async fn banners(app: &TestApp, user: &User) -> Vec<String> {
    let list: BannerList = json(
        app.get(
            &format!("/api/v1/namespaces/{}/banners", user.namespace_id),
            Some(&user.token),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    list.items.into_iter().map(|b| b.kind).collect()
}

async fn owners_and_admins_see_the_overdue_banner_until_a_backup_is_taken(backend: Backend) {
    // It moves the clock past the overdue limit.
    in_own_process!(
        backend,
        "owners_and_admins_see_the_overdue_banner_until_a_backup_is_taken"
    );
    let (app, _) = spawn_app_with(backend, |s| {
        s.auth.access_token_ttl_secs = 100 * 86_400;
    })
    .await;
    let operator = app.signup_operator("op").await;
    let owner = app.signup("owner").await;
    let admin = app.signup("admin").await;
    let dev = app.signup("dev").await;
    app.add_member(&owner, &admin, "admin").await;
    app.add_member(&owner, &dev, "developer").await;
    let as_member = |u: &User| User {
        namespace_id: owner.namespace_id.clone(),
        email: u.email.clone(),
        password: u.password.clone(),
        token: u.token.clone(),
        refresh_token: u.refresh_token.clone(),
        account_id: u.account_id.clone(),
    };
    let (admin, dev) = (as_member(&admin), as_member(&dev));
    let day = 86_400_000;
    let start = tally_store::now_ms();
    // A new server needs no backup yet.
    assert!(!banners(&app, &owner)
        .await
        .contains(&"backup_overdue".to_owned()));
    // In use for 31 days without one: owners and admins are told, others not.
    tally_store::clock::travel_to(start + 31 * day);
    for (u, shown) in [(&owner, true), (&admin, true), (&dev, false)] {
        assert_eq!(
            banners(&app, u)
                .await
                .contains(&"backup_overdue".to_owned()),
            shown,
            "{}",
            u.email
        );
    }
    // A backup ends it; thirty days later it is still fresh, a day more and
    // it is overdue again.
    let res = app
        .post("/api/v1/admin/backups", Some(&operator.token), json!({}))
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    assert!(!banners(&app, &owner)
        .await
        .contains(&"backup_overdue".to_owned()));
    tally_store::clock::travel_to(start + 60 * day);
    assert!(!banners(&app, &admin)
        .await
        .contains(&"backup_overdue".to_owned()));
    tally_store::clock::travel_to(start + 62 * day);
    assert!(banners(&app, &owner)
        .await
        .contains(&"backup_overdue".to_owned()));
}

async fn a_backup_that_cannot_be_written_is_a_500_and_an_event_and_records_nothing(
    backend: Backend,
) {
    let blocker = tempfile::NamedTempFile::new().unwrap();
    let dir = blocker.path().join("backups");
    let (app, _) = spawn_app_with(backend, |s| s.backup.dir = Some(dir.clone())).await;
    let operator = app.signup_operator("op").await;
    let res = app
        .post("/api/v1/admin/backups", Some(&operator.token), json!({}))
        .await;
    assert_error(res, StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal).await;
    let failed = events_of_kind(&app, &operator, "backup.failed").await;
    assert_eq!(failed.len(), 1);
    assert!(
        !failed[0].message.contains(&*dir.to_string_lossy()),
        "no path in the event"
    );
    // Nothing was recorded as a success (the list itself cannot read the
    // directory either: a 500 JSON error too).
    let mut conn = app.store.conn().await.unwrap();
    assert_eq!(backup::last_success(&mut conn).await.unwrap(), None);
    drop(conn);
    let res = app
        .get("/api/v1/admin/backups", Some(&operator.token))
        .await;
    assert_error(res, StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal).await;
}

async fn upload(app: &TestApp, token: Option<&str>, archive: Vec<u8>) -> reqwest::Response {
    let mut req = app
        .client
        .post(app.url("/api/v1/auth/setup/restore"))
        .header("content-type", "application/octet-stream")
        .body(archive);
    if let Some(token) = token {
        req = req.header("x-setup-token", token);
    }
    req.send().await.unwrap()
}

/// O1 through the API: a new server (no accounts) takes an uploaded backup
/// with its setup token instead of a first operator. Before that, a wrong or
/// missing token, a damaged archive and an oversized one change nothing and
/// leave the token usable; after it, the backup's people sign in (their
/// refresh tokens carry on), its keys call the gateway, its catalog serves,
/// and the token is used up. A server that holds an account refuses.
async fn a_new_server_restores_an_uploaded_backup_with_its_setup_token_once(backend: Backend) {
    let source = spawn_app(Backend::Sqlite).await;
    let (secret, alice) = realistic_data(&source).await;
    let operator = source.signup_operator("op2").await;
    let taken: BackupInfo = json(
        source
            .post("/api/v1/admin/backups", Some(&operator.token), json!({}))
            .await,
        StatusCode::CREATED,
    )
    .await;
    let archive = source
        .get(
            &format!("/api/v1/admin/backups/{}", taken.name),
            Some(&operator.token),
        )
        .await
        .bytes()
        .await
        .unwrap()
        .to_vec();
    let balances_before: Value = json(
        source
            .get(
                &format!("/api/v1/namespaces/{}/credits", alice.namespace_id),
                Some(&alice.token),
            )
            .await,
        StatusCode::OK,
    )
    .await;

    let target = spawn_app(backend).await;
    let token = setup_token(&target).expect("a new server has a setup token");
    for (token, body) in [
        (None, archive.clone()),
        (Some("not-the-token"), archive.clone()),
        (Some(""), archive.clone()),
    ] {
        let res = upload(&target, token, body).await;
        assert_error(res, StatusCode::UNAUTHORIZED, ErrorCode::InvalidSetupToken).await;
    }
    let mut truncated = archive.clone();
    truncated.truncate(archive.len() * 2 / 3);
    let mut altered = archive.clone();
    let at = archive.len() - 2048;
    altered[at] ^= 0x55;
    for damaged in [
        truncated,
        altered,
        b"not a tar archive".to_vec(),
        Vec::new(),
    ] {
        let res = upload(&target, Some(&token), damaged).await;
        assert_error(res, StatusCode::BAD_REQUEST, ErrorCode::InvalidBackup).await;
    }
    assert_eq!(count(&target.store, "accounts").await, 0);
    assert_eq!(count(&target.store, "ledger_entries").await, 0);
    let hidden: Vec<_> = std::fs::read_dir(target.db.dir.path().join("backups"))
        .unwrap()
        .collect();
    assert!(hidden.is_empty(), "uploads are removed: {hidden:?}");

    let jwt_secret = || async {
        let mut conn = target.store.conn().await.unwrap();
        tally_store::settings::get(&mut conn, "jwt_secret")
            .await
            .unwrap()
    };
    let signing = jwt_secret().await.expect("the server's JWT secret");
    let restored: RestoredBackup = json(
        upload(&target, Some(&token), archive.clone()).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        jwt_secret().await,
        Some(signing),
        "the server keeps its secret"
    );
    assert_eq!(restored.rows, taken.rows);
    assert_eq!(restored.tables, taken.tables);
    assert_eq!(restored.source_backend, "sqlite");
    assert!(!restored.secrets_included);
    assert!(setup_token(&target).is_none(), "the token file is removed");
    for res in [
        upload(&target, Some(&token), archive.clone()).await,
        target
            .post(
                "/api/v1/auth/setup",
                None,
                json!({"token": token, "email": "late@example.com", "password": "correct horse battery"}),
            )
            .await,
    ] {
        assert_error(res, StatusCode::UNAUTHORIZED, ErrorCode::InvalidSetupToken).await;
    }
    assert_eq!(
        count(&target.store, "ledger_entries").await,
        count(&source.store, "ledger_entries").await
    );
    assert_balances_match_ledgers(&target.store).await;

    // The backup's accounts sign in, and a session of the source carries on
    // (refresh tokens are restored as hashes; the server keeps its own JWT
    // secret, so the source's access token is not valid here).
    let res = target
        .post(
            "/api/v1/auth/login",
            None,
            json!({"email": alice.email, "password": alice.password}),
        )
        .await;
    let login: AuthResponse = json(res, StatusCode::OK).await;
    let res = target
        .get(
            &format!("/api/v1/namespaces/{}/credits", alice.namespace_id),
            Some(&alice.token),
        )
        .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let refreshed: AuthResponse = json(
        target
            .post(
                "/api/v1/auth/refresh",
                None,
                json!({"refresh_token": alice.refresh_token}),
            )
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(refreshed.account.id, login.account.id);
    let balances_after: Value = json(
        target
            .get(
                &format!("/api/v1/namespaces/{}/credits", alice.namespace_id),
                Some(&login.access_token),
            )
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(balances_after, balances_before);
    // Its key calls the gateway, and its catalog is served at once.
    assert_eq!(
        chat(&target, &secret, "tally-sandbox").await,
        StatusCode::OK
    );
    let catalog: Value = json(
        target
            .get("/api/v1/catalog", Some(&login.access_token))
            .await,
        StatusCode::OK,
    )
    .await;
    assert!(
        catalog.to_string().contains("\"paid\""),
        "the backup's API is in the catalog: {catalog}"
    );
    let operator_login: AuthResponse = json(
        target
            .post(
                "/api/v1/auth/login",
                None,
                json!({"email": operator.email, "password": operator.password}),
            )
            .await,
        StatusCode::OK,
    )
    .await;
    let operator = target
        .user(operator.email, operator.password, operator_login)
        .await;
    let restores = events_of_kind(&target, &operator, "backup.restored").await;
    assert_eq!(restores.len(), 1, "{restores:?}");
    assert!(restores[0].message.contains("with the setup token"));

    // A server that holds an account refuses, and one with a tiny limit
    // refuses the upload as too large; neither uses up its token.
    let db = TestDatabase::new(backend).await;
    let small = spawn_with(db, |s| s.backup.max_restore_mb = 0).await;
    let token = setup_token(&small).unwrap();
    let res = upload(&small, Some(&token), archive.clone()).await;
    assert_error(
        res,
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::PayloadTooLarge,
    )
    .await;
    small.signup("early").await;
    let res = upload(&small, Some(&token), archive).await;
    assert_error(res, StatusCode::CONFLICT, ErrorCode::Conflict).await;
    assert_eq!(count(&small.store, "accounts").await, 1);
    assert!(setup_token(&small).is_some());
}
