//! Test harness: a real server on port 0 over a fresh database per test.
//!
//! Every test body takes a `Backend` and runs twice through `backend_tests!`:
//! on a new SQLite file and on a new PostgreSQL database (created on the server
//! named by `TALLY_TEST_DATABASE_URL`, dropped when the test ends). Without that
//! variable the PostgreSQL variants say so on stderr and pass locally; under CI
//! (`CI` set) its absence fails them, so they can never be skipped silently there.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use reqwest::{Response, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tally_common::{AuthResponse, ErrorBody, ErrorCode};
use tally_server::config::Settings;
use tally_server::Application;
use tally_store::sqlx::{self, Connection};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs each listed `async fn name(backend: Backend)` on both backends, as
/// `sqlite::name` and `postgres::name`.
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if $crate::helpers::postgres_enabled() {
                        super::$name($crate::helpers::Backend::Postgres).await
                    }
                }
            )*
        }
    };
}
pub(crate) use backend_tests;

/// Makes the calling test run alone in a child process of this test binary,
/// for a test that moves the process-wide clock (`tally_store::clock`): the
/// tests sharing this process would see it move. The first line of such a
/// test: `in_own_process!(backend, "its_function_name");`. In the parent it
/// waits for the child and returns from the test, failing when the child
/// failed or ran no test.
macro_rules! in_own_process {
    ($backend:expr, $name:expr) => {
        if !$crate::helpers::own_process(module_path!(), $name, $backend).await {
            return;
        }
    };
}
pub(crate) use in_own_process;

const OWN_PROCESS_ENV: &str = "TALLY_TEST_OWN_PROCESS";

/// Whether this process is the one the test `name` (in `module`, on
/// `backend`) runs in; see [`in_own_process`].
pub async fn own_process(module: &str, name: &str, backend: Backend) -> bool {
    // `module_path!()` starts with the test crate's name, which test names omit.
    let module = module.split_once("::").map_or(module, |(_, rest)| rest);
    let variant = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    let test = format!("{module}::{variant}::{name}");
    if std::env::var(OWN_PROCESS_ENV).is_ok_and(|t| t == test) {
        return true;
    }
    let exe = std::env::current_exe().expect("the test binary");
    let run = test.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(exe)
            .args([run.as_str(), "--exact", "--test-threads=1", "--nocapture"])
            .env(OWN_PROCESS_ENV, &run)
            .output()
    })
    .await
    .expect("the child's waiter")
    .expect("the test binary starts");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "{test}, run in its own process, failed or did not run:\n{stdout}\n{stderr}"
    );
    false
}

/// Waits until a key changed (created, updated) at or before `changed_at`
/// (Unix ms, read after the change's answer) is past the change poller's
/// look-back: a poll drops a cached key read less than
/// `CHANGE_COMMIT_MS` after its change, so only a read after that stays cached.
pub async fn past_change_lookback(changed_at: i64) {
    let until = changed_at + tally_server::gateway::keys::CHANGE_COMMIT_MS + 1;
    while tally_store::now_ms() < until {
        let left = u64::try_from(until - tally_store::now_ms()).unwrap_or(0);
        tokio::time::sleep(std::time::Duration::from_millis(left.max(1))).await;
    }
}

/// Rounds a background task (`credits`, `alerts`, `backup`, `retention`) has
/// begun in this process, from `/metrics`. Metrics are process-wide: only a
/// test alone in its process (`in_own_process!`) reads its own server's.
pub async fn upkeep_rounds(app: &TestApp, task: &str) -> f64 {
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("tally_upkeep_rounds_total{{task=\"{task}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Polls `check` until it holds, failing with `what` after `secs` seconds:
/// for what happens in the background (a poll, a sweep), where a fixed sleep
/// would be too short on a loaded machine and wasted on an idle one.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "not within {secs} s: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

const PG_ENV: &str = "TALLY_TEST_DATABASE_URL";

/// Whether the PostgreSQL variants run. Fails under CI when they cannot.
pub fn postgres_enabled() -> bool {
    match std::env::var(PG_ENV) {
        Ok(url) if !url.is_empty() => true,
        _ if std::env::var_os("CI").is_some() => {
            panic!("{PG_ENV} must be set under CI: PostgreSQL tests may not be skipped")
        }
        _ => {
            eprintln!(
                "SKIPPED on PostgreSQL: set {PG_ENV}=postgres://postgres@127.0.0.1:5432/test"
            );
            false
        }
    }
}

/// Swaps the database name in a PostgreSQL URL.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let prefix = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{prefix}/{db}?{q}"),
        None => format!("{prefix}/{db}"),
    }
}

/// A throwaway database that lives as long as the test.
pub struct TestDatabase {
    pub url: String,
    admin_url: String,
    name: Option<String>,
    pub dir: tempfile::TempDir,
}

impl TestDatabase {
    pub async fn new(backend: Backend) -> TestDatabase {
        let dir = tempfile::tempdir().expect("temp dir");
        match backend {
            Backend::Sqlite => TestDatabase {
                url: format!(
                    "sqlite://{}?mode=rwc",
                    dir.path().join("tally.db").display()
                ),
                admin_url: String::new(),
                name: None,
                dir,
            },
            Backend::Postgres => {
                let admin_url = std::env::var(PG_ENV).expect("postgres url");
                let name = format!("tally_test_{}", uuid::Uuid::new_v4().simple());
                let mut conn = sqlx::PgConnection::connect(&admin_url)
                    .await
                    .expect("connect to the PostgreSQL test server");
                sqlx::query(&format!("CREATE DATABASE \"{name}\""))
                    .execute(&mut conn)
                    .await
                    .expect("create test database");
                conn.close().await.ok();
                TestDatabase {
                    url: with_database(&admin_url, &name),
                    admin_url,
                    name: Some(name),
                    dir,
                }
            }
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some(name) = self.name.take() else { return };
        let admin_url = self.admin_url.clone();
        // Async work cannot run in Drop; a short-lived runtime on its own thread can.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin_url).await {
                    let _ =
                        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                            .execute(&mut conn)
                            .await;
                }
            });
        })
        .join();
    }
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub db: TestDatabase,
    pub store: tally_store::Store,
    pub settings: Settings,
}

/// Settings for a test server on `db`: port 0, cheap Argon2id parameters,
/// and the sign-up and login throttles off (tests that check them turn them
/// on), since a test signs up many accounts from one address.
pub fn test_settings(db: &TestDatabase) -> Settings {
    let mut settings = Settings {
        bind: "127.0.0.1:0".into(),
        data_dir: db.dir.path().to_path_buf(),
        database_url: Some(db.url.clone().into()),
        database_max_connections: 5,
        static_dir: PathBuf::from("/nonexistent-static-dir"),
        ..Settings::default()
    };
    // Still Argon2id; only the cost is lowered so the suite stays quick.
    settings.auth.argon2_memory_kib = 1024;
    settings.auth.argon2_iterations = 1;
    settings.auth.ip_requests_per_minute = 0;
    settings.auth.signups_per_ip_per_hour = 0;
    settings.auth.signups_per_email_per_hour = 0;
    settings.auth.login_failures_per_account_ip = 0;
    settings.auth.login_failures_per_account_per_hour = 0;
    settings.auth.invitation_accepts_per_account_per_hour = 0;
    // Webhook receivers of the tests listen on loopback.
    settings.webhooks.allow_private = true;
    settings
}

/// Starts a second server (e.g. on the database of another test app).
pub async fn start(settings: Settings) -> (String, tally_store::Store) {
    let app = Application::build(settings).await.expect("server starts");
    let address = format!("http://127.0.0.1:{}", app.port());
    let store = app.store().clone();
    tokio::spawn(app.run_until_stopped());
    (address, store)
}

/// Starts a second server, as [`start`] does, and returns its gateway.
pub async fn start_with_gateway(
    settings: Settings,
) -> (String, std::sync::Arc<tally_server::gateway::Gateway>) {
    let app = Application::build(settings).await.expect("server starts");
    let address = format!("http://127.0.0.1:{}", app.port());
    let gateway = app.gateway().clone();
    tokio::spawn(app.run_until_stopped());
    (address, gateway)
}

/// Starts a server on `db` with `settings`; also returns its gateway (whose
/// caches and counters some tests look at).
pub async fn launch(
    db: TestDatabase,
    settings: Settings,
) -> (TestApp, std::sync::Arc<tally_server::gateway::Gateway>) {
    let app = Application::build(settings.clone())
        .await
        .expect("server starts");
    let address = format!("http://127.0.0.1:{}", app.port());
    let store = app.store().clone();
    let gateway = app.gateway().clone();
    tokio::spawn(app.run_until_stopped());
    let app = TestApp {
        address,
        client: reqwest::Client::new(),
        db,
        store,
        settings,
    };
    (app, gateway)
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    let db = TestDatabase::new(backend).await;
    spawn_with(db, |_| {}).await
}

/// A server on `db` with test settings changed by `change`.
pub async fn spawn_with(db: TestDatabase, change: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = test_settings(&db);
    change(&mut settings);
    launch(db, settings).await.0
}

/// A test server with `configure`d settings, and its gateway (whose caches
/// and counters some tests look at).
pub async fn spawn_app_with(
    backend: Backend,
    configure: impl FnOnce(&mut Settings),
) -> (TestApp, std::sync::Arc<tally_server::gateway::Gateway>) {
    let db = TestDatabase::new(backend).await;
    let mut settings = test_settings(&db);
    configure(&mut settings);
    launch(db, settings).await
}

/// A signed-up account: its tokens and personal namespace.
pub struct User {
    pub email: String,
    pub password: String,
    pub token: String,
    pub refresh_token: String,
    pub account_id: String,
    pub namespace_id: String,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Response {
        let mut req = self.client.post(self.url(path)).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.expect("request")
    }

    pub async fn patch(&self, path: &str, token: &str, body: Value) -> Response {
        self.client
            .patch(self.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("request")
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Response {
        let mut req = self.client.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.expect("request")
    }

    pub async fn delete(&self, path: &str, token: &str) -> Response {
        self.client
            .delete(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request")
    }

    pub async fn signup(&self, name: &str) -> User {
        let email = unique_email(name);
        let password = "correct horse battery".to_owned();
        let res = self
            .post(
                "/api/v1/auth/signup",
                None,
                json!({"email": email, "password": password, "display_name": name}),
            )
            .await;
        assert_eq!(res.status(), StatusCode::CREATED);
        let auth: AuthResponse = res.json().await.expect("auth body");
        self.user(email, password, auth).await
    }

    pub async fn user(&self, email: String, password: String, auth: AuthResponse) -> User {
        let me: Value = self
            .get("/api/v1/me", Some(&auth.access_token))
            .await
            .json()
            .await
            .expect("me body");
        User {
            email,
            password,
            token: auth.access_token,
            refresh_token: auth.refresh_token,
            account_id: auth.account.id,
            namespace_id: me["namespaces"][0]["id"]
                .as_str()
                .expect("namespace id")
                .to_owned(),
        }
    }

    /// An operator, made the way `tally admin create-operator` makes one (on
    /// this test's database), then logged in over HTTP.
    pub async fn signup_operator(&self, name: &str) -> User {
        let email = unique_email(name);
        let password = "operator horse battery".to_owned();
        let passwords =
            tally_server::auth::Passwords::new(&self.settings.auth).expect("argon2 settings");
        tally_server::auth::bootstrap::create_operator(
            &self.store,
            &self.settings,
            &passwords,
            &email,
            &password,
            Some(name),
        )
        .await
        .expect("create operator");
        let res = self
            .post(
                "/api/v1/auth/login",
                None,
                json!({"email": email, "password": password}),
            )
            .await;
        assert_eq!(res.status(), StatusCode::OK, "operator logs in");
        let auth: AuthResponse = res.json().await.expect("auth body");
        self.user(email, password, auth).await
    }

    /// Invites `email` to `owner`'s namespace with `role`: the invitation's token.
    pub async fn invite(&self, owner: &User, email: &str, role: &str) -> String {
        let res = self
            .post(
                &format!("/api/v1/namespaces/{}/members", owner.namespace_id),
                Some(&owner.token),
                json!({"email": email, "role": role}),
            )
            .await;
        assert_eq!(res.status(), StatusCode::CREATED, "invite");
        let body: Value = res.json().await.expect("invitation body");
        body["token"].as_str().expect("token").to_owned()
    }

    /// Adds `user` to `owner`'s namespace with `role`: an invitation that
    /// `user` accepts with its token.
    pub async fn add_member(&self, owner: &User, user: &User, role: &str) {
        let token = self.invite(owner, &user.email, role).await;
        let res = self
            .post(
                "/api/v1/invitations/accept",
                Some(&user.token),
                json!({"token": token}),
            )
            .await;
        assert_eq!(res.status(), StatusCode::OK, "accept invitation");
    }
}

/// A new email that no other test uses.
pub fn unique_email(name: &str) -> String {
    format!(
        "{name}-{}@example.com",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Asserts an error response: status, JSON body with the code, a request id
/// equal to the `X-Request-Id` header.
pub async fn assert_error(res: Response, status: StatusCode, code: ErrorCode) -> ErrorBody {
    assert_eq!(res.status(), status, "status");
    let content_type = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().expect("ascii").to_owned());
    assert!(
        content_type
            .as_deref()
            .is_some_and(|t| t.starts_with("application/json")),
        "an error is JSON with Content-Type: application/json, not {content_type:?}"
    );
    let header = res
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().expect("ascii").to_owned());
    let body: ErrorBody = res.json().await.expect("error body is JSON");
    assert_eq!(body.error.code, code, "error code ({})", body.error.message);
    assert!(body.error.request_id.is_some(), "request id in body");
    assert_eq!(
        body.error.request_id, header,
        "body and header request ids agree"
    );
    body
}

pub async fn json<T: DeserializeOwned>(res: Response, status: StatusCode) -> T {
    assert_eq!(res.status(), status, "status");
    res.json().await.expect("JSON body")
}

/// Adds an API to the catalog as `operator`.
pub async fn add_api(app: &TestApp, operator: &User, config: Value) {
    let res = app
        .post("/api/v1/admin/catalog", Some(&operator.token), config)
        .await;
    assert_eq!(
        res.status(),
        StatusCode::CREATED,
        "{}",
        res.text().await.unwrap()
    );
}

/// Grants `micros` credits in `env` to `to`'s namespace as `operator`.
pub async fn grant(app: &TestApp, operator: &User, to: &User, env: &str, micros: i64) {
    let res = app
        .post(
            &format!("/api/v1/admin/namespaces/{}/grants", to.namespace_id),
            Some(&operator.token),
            json!({"environment": env, "amount_micros": micros, "memo": "test"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
}

/// A `tally serve` process of the test build on a free port, for tests that
/// kill it or run several; killed (SIGKILL) when dropped.
pub struct TallyProcess {
    pub child: Child,
    pub base: String,
}

impl TallyProcess {
    /// Starts `tally serve` on `database_url` with `data_dir`, cheap
    /// Argon2id and `RUST_LOG=warn`, then `env` on top; its output goes to
    /// `log` (or nowhere). Returns once `/readyz` answers.
    pub async fn start(
        database_url: &str,
        data_dir: &Path,
        log: Option<&Path>,
        env: &[(&str, &str)],
    ) -> TallyProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tally"));
        cmd.args([
            "serve",
            "--bind",
            &format!("127.0.0.1:{port}"),
            "--static-dir",
            "/nonexistent",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--database-url", database_url])
        .env("TALLY_AUTH__ARGON2_MEMORY_KIB", "1024")
        .env("TALLY_AUTH__ARGON2_ITERATIONS", "1")
        .env("RUST_LOG", "warn");
        match log {
            Some(path) => {
                let file = std::fs::File::create(path).unwrap();
                cmd.stdout(Stdio::from(file.try_clone().unwrap()))
                    .stderr(Stdio::from(file));
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let process = TallyProcess {
            child: cmd.spawn().expect("start tally"),
            base: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::new();
        for _ in 0..400 {
            if let Ok(res) = client.get(process.url("/readyz")).send().await {
                if res.status().is_success() {
                    return process;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!(
            "tally did not start: {}",
            log.and_then(|p| std::fs::read_to_string(p).ok())
                .unwrap_or_default()
        );
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGKILL: no shutdown of any kind.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TallyProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
