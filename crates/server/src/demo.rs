//! `tally demo` (O4): fills a namespace with realistic traffic so every chart
//! and table of the dashboard has something to show.
//!
//! Policy: the demo is an ordinary client of a running server. It signs in (or
//! signs up) over the REST API, creates keys, and sends every call through the
//! real gateway over HTTP, so what it leaves behind is exactly what real
//! callers would: usage events, ledger entries, rollups and events. It never
//! writes to the database itself. It has no fixed password: unless one is
//! given, it generates one on first use and keeps it in
//! `<data_dir>/demo-password` (mode 0600), so later runs sign in again. It
//! becomes an operator only through the explicit bootstrap: when the server's
//! setup token is in the data directory (a server that has no operator yet),
//! the demo uses it for its account. Everything works offline: test keys reach
//! the built-in sandbox; when the account is an operator, the demo adds three
//! demo APIs to the catalog whose live upstream is this same server (called
//! with a test key of a separate "Demo upstream" namespace), so live keys get
//! real answers through a real upstream hop too. Errors are part of the mix:
//! a key limited to one request per second (429), a key scoped to one API
//! (403), and calls whose maximum cost exceeds the balance (402).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tally_common::{
    AuthResponse, Balances, CatalogList, CreatedKey, Environment, Me, NamespaceWithRole, Protocol,
};

/// What `tally demo` was asked to do.
pub struct DemoOptions {
    /// The server's base URL, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    pub email: String,
    /// `None`: the one kept in `<data_dir>/demo-password`, made on first use.
    pub password: Option<String>,
    /// The server's data directory: its setup token, the demo's password.
    pub data_dir: PathBuf,
    /// A namespace id or name; a name that does not exist yet is created.
    /// Default: the account's first namespace.
    pub namespace: Option<String>,
    /// How many gateway calls to make.
    pub calls: u32,
    /// Spread the calls over this long (default: as fast as `concurrency` allows).
    pub duration: Option<Duration>,
    pub concurrency: usize,
    /// Skip adding the demo APIs to the catalog (operators only anyway).
    pub no_catalog: bool,
    /// Seed of the traffic mix, for a repeatable run.
    pub seed: Option<u64>,
}

/// The REST API and the gateway of one server, as one signed-in account.
struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    async fn send(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<&Value>,
        client_id: Option<&str>,
    ) -> anyhow::Result<(StatusCode, Vec<u8>)> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(bearer) = bearer {
            req = req.header("Authorization", format!("Bearer {bearer}"));
        }
        if let Some(client_id) = client_id {
            req = req.header("X-Client-Id", client_id);
        }
        if let Some(body) = body {
            req = req
                .header("Content-Type", "application/json")
                .body(serde_json::to_vec(body)?);
        }
        let res = req
            .send()
            .await
            .with_context(|| format!("cannot reach {}{path}", self.base))?;
        let status = res.status();
        // Read streams to the end, as a client would (the call is recorded
        // when the stream finishes).
        let mut body = Vec::new();
        let mut chunks = res.bytes_stream();
        while let Some(chunk) = chunks.next().await {
            body.extend_from_slice(&chunk.with_context(|| format!("reading {path}"))?);
        }
        Ok((status, body))
    }

    /// A REST call as the signed-in account that must succeed.
    async fn rest<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<T> {
        let (status, bytes) = self
            .send(method.clone(), path, Some(&self.token), body.as_ref(), None)
            .await?;
        if !status.is_success() {
            bail!(
                "{method} {path} answered {status}: {}",
                error_message(&bytes)
            );
        }
        serde_json::from_slice(&bytes).with_context(|| format!("unexpected answer from {path}"))
    }
}

fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(200).collect())
}

const PASSWORD_FILE: &str = "demo-password";

/// The demo account's password: given, kept from an earlier run, or new (and
/// then kept, readable by this user only).
fn demo_password(opts: &DemoOptions) -> anyhow::Result<String> {
    if let Some(password) = &opts.password {
        return Ok(password.clone());
    }
    let path = opts.data_dir.join(PASSWORD_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let kept = text.trim();
        if !kept.is_empty() {
            return Ok(kept.to_owned());
        }
    }
    let password: String = rand::thread_rng()
        .sample_iter(rand::distributions::Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    write_private(&path, &password)
        .with_context(|| format!("cannot keep the demo password in {}", path.display()))?;
    Ok(password)
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
        .open(path)?
        .write_all(format!("{text}\n").as_bytes())
}

/// How the demo got its session.
enum SignedIn {
    SetUp,
    LoggedIn,
    SignedUp,
}

/// Uses the server's setup token when it is in the data directory (the
/// account becomes the first operator), else logs in, else signs up.
async fn sign_in(
    http: &reqwest::Client,
    opts: &DemoOptions,
    log: &mut Vec<String>,
) -> anyhow::Result<(Client, SignedIn)> {
    let mut client = Client {
        http: http.clone(),
        base: opts.url.trim_end_matches('/').to_owned(),
        token: String::new(),
    };
    let password = demo_password(opts)?;
    let setup_file = opts.data_dir.join("setup-token");
    if let Ok(token) = std::fs::read_to_string(&setup_file) {
        let setup = json!({ "token": token.trim(), "email": opts.email,
                            "password": password, "display_name": "Demo" });
        let (status, body) = client
            .send(Method::POST, "/api/v1/auth/setup", None, Some(&setup), None)
            .await?;
        if status.is_success() {
            client.token = serde_json::from_slice::<AuthResponse>(&body)?.access_token;
            return Ok((client, SignedIn::SetUp));
        }
        log.push(format!(
            "setup token in {} not used: {}",
            setup_file.display(),
            error_message(&body)
        ));
    }
    let creds = json!({ "email": opts.email, "password": password });
    let (status, body) = client
        .send(Method::POST, "/api/v1/auth/login", None, Some(&creds), None)
        .await?;
    let (auth, how) = if status.is_success() {
        (
            serde_json::from_slice::<AuthResponse>(&body)?,
            SignedIn::LoggedIn,
        )
    } else if status == StatusCode::UNAUTHORIZED {
        let signup = json!({ "email": opts.email, "password": password,
                             "display_name": "Demo" });
        let (status, body) = client
            .send(
                Method::POST,
                "/api/v1/auth/signup",
                None,
                Some(&signup),
                None,
            )
            .await?;
        if status == StatusCode::CONFLICT {
            bail!(
                "{} has an account whose password is not the demo's (kept in {}); \
                 pass --password, or use another --email",
                opts.email,
                opts.data_dir.join(PASSWORD_FILE).display()
            );
        }
        if !status.is_success() {
            bail!(
                "cannot log in or sign up as {}: {}",
                opts.email,
                error_message(&body)
            );
        }
        (
            serde_json::from_slice::<AuthResponse>(&body)?,
            SignedIn::SignedUp,
        )
    } else {
        bail!("login answered {status}: {}", error_message(&body));
    };
    client.token = auth.access_token;
    Ok((client, how))
}

async fn pick_namespace(
    client: &Client,
    me: &Me,
    wanted: Option<&str>,
) -> anyhow::Result<NamespaceWithRole> {
    let Some(wanted) = wanted else {
        return me
            .namespaces
            .first()
            .cloned()
            .context("the account has no namespace");
    };
    if let Some(ns) = me
        .namespaces
        .iter()
        .find(|n| n.namespace.id == wanted || n.namespace.name == wanted)
    {
        return Ok(ns.clone());
    }
    client
        .rest(
            Method::POST,
            "/api/v1/namespaces",
            Some(json!({ "name": wanted })),
        )
        .await
}

/// The demo APIs: a chat model family, an embedding model and a plain HTTP
/// API, each with a price so costs show up.
fn demo_apis(base: &str, upstream_secret: &str) -> Vec<Value> {
    let upstream =
        |path: &str| json!([{ "url": format!("{base}{path}"), "api_key": upstream_secret }]);
    vec![
        json!({
            "slug": "demo-chat", "name": "Demo chat models",
            "description": "Added by `tally demo`: answers from the sandbox, live calls through this server.",
            "protocol": "openai", "models": ["demo-chat-mini", "demo-chat-pro"],
            "upstreams": upstream(""), "timeout_ms": 10_000,
            "pricing": { "per_request_micros": 500, "per_1k_input_tokens_micros": 4_000,
                         "per_1k_output_tokens_micros": 12_000, "default_max_output_tokens": 512 }
        }),
        json!({
            "slug": "demo-embed", "name": "Demo embeddings",
            "description": "Added by `tally demo`.",
            "protocol": "openai", "models": ["demo-embed-small"],
            "upstreams": upstream(""), "timeout_ms": 10_000,
            "pricing": { "per_request_micros": 100, "per_1k_input_tokens_micros": 1_000,
                         "default_max_output_tokens": 1 }
        }),
        json!({
            "slug": "demo-weather", "name": "Demo weather API",
            "description": "Added by `tally demo`: a generic JSON API (the sandbox echoes requests).",
            "protocol": "http", "upstreams": upstream("/v1/apis/demo-weather"),
            "timeout_ms": 10_000,
            "pricing": { "per_request_micros": 2_000 }
        }),
    ]
}

/// Adds the demo APIs that are not in the catalog yet (operators only). Their
/// live upstream is this server, called with a test key of a namespace of its
/// own, so live demo traffic gets sandbox answers through a real upstream hop
/// without touching the demo namespace's test data.
async fn ensure_demo_apis(client: &Client, me: &Me, log: &mut Vec<String>) -> anyhow::Result<()> {
    let catalog: CatalogList = client.rest(Method::GET, "/api/v1/catalog", None).await?;
    if catalog.items.iter().any(|a| a.slug == "demo-chat") {
        return Ok(());
    }
    let upstream_ns = match me
        .namespaces
        .iter()
        .find(|n| n.namespace.name == "Demo upstream")
    {
        Some(ns) => ns.clone(),
        None => {
            client
                .rest::<NamespaceWithRole>(
                    Method::POST,
                    "/api/v1/namespaces",
                    Some(json!({ "name": "Demo upstream" })),
                )
                .await?
        }
    };
    let ns_id = &upstream_ns.namespace.id;
    // Upstream calls spend this namespace's test credits; plenty of them.
    let _: Value = client
        .rest(
            Method::POST,
            &format!("/api/v1/admin/namespaces/{ns_id}/grants"),
            Some(
                json!({ "environment": "test", "amount_micros": 1_000_000_000i64,
                         "memo": "tally demo: upstream of the demo APIs" }),
            ),
        )
        .await?;
    let key: CreatedKey = client
        .rest(
            Method::POST,
            &format!("/api/v1/namespaces/{ns_id}/keys"),
            Some(json!({ "name": "demo upstream", "environment": "test" })),
        )
        .await?;
    for api in demo_apis(&client.base, &key.secret) {
        let (status, body) = client
            .send(
                Method::POST,
                "/api/v1/admin/catalog",
                Some(&client.token),
                Some(&api),
                None,
            )
            .await?;
        if status.is_success() || status == StatusCode::CONFLICT {
            log.push(format!(
                "catalog: {} ready",
                api["slug"].as_str().unwrap_or("")
            ));
        } else {
            bail!(
                "cannot add {} to the catalog: {}",
                api["slug"],
                error_message(&body)
            );
        }
    }
    Ok(())
}

/// One of the demo's keys and the part it plays.
#[derive(Clone)]
struct DemoKey {
    secret: String,
    environment: Environment,
    role: KeyRole,
}

#[derive(Clone, Copy, PartialEq)]
enum KeyRole {
    /// Ordinary traffic.
    Main,
    /// One request per second: bursts get 429.
    Limited,
    /// Allowed one API only: calls to others get 403.
    Scoped,
}

async fn create_key(
    client: &Client,
    ns: &str,
    name: &str,
    environment: Environment,
    extra: Value,
) -> anyhow::Result<String> {
    let mut body = json!({ "name": name, "environment": environment, "labels": ["demo"] });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    let key: CreatedKey = client
        .rest(
            Method::POST,
            &format!("/api/v1/namespaces/{ns}/keys"),
            Some(body),
        )
        .await?;
    Ok(key.secret)
}

/// What the traffic can reach: OpenAI models and HTTP API slugs.
struct Targets {
    chat_models: Vec<String>,
    embed_models: Vec<String>,
    http_slugs: Vec<String>,
    /// A slug for a scoped key, and a model outside that scope.
    scope: Option<(String, String)>,
}

fn targets(catalog: &CatalogList) -> Targets {
    let mut t = Targets {
        chat_models: Vec::new(),
        embed_models: Vec::new(),
        http_slugs: Vec::new(),
        scope: None,
    };
    for api in catalog.items.iter().filter(|a| a.enabled) {
        match api.protocol {
            Protocol::Http => t.http_slugs.push(api.slug.clone()),
            Protocol::Openai if api.slug.contains("embed") => {
                t.embed_models.extend(api.models.iter().cloned())
            }
            Protocol::Openai => t.chat_models.extend(api.models.iter().cloned()),
        }
    }
    if t.embed_models.is_empty() {
        // The sandbox answers embeddings for any OpenAI model.
        t.embed_models = t.chat_models.iter().take(1).cloned().collect();
    }
    // A key scoped to the first OpenAI API; calls to another API's model are refused.
    let openai: Vec<_> = catalog
        .items
        .iter()
        .filter(|a| a.enabled && a.protocol == Protocol::Openai && !a.models.is_empty())
        .collect();
    if let [first, .., other] = openai.as_slice() {
        t.scope = Some((first.slug.clone(), other.models[0].clone()));
    }
    t
}

const PROMPTS: [&str; 8] = [
    "Summarise the quarterly report in three bullet points.",
    "Translate 'good morning' into French, Spanish and German.",
    "Write a haiku about rate limits.",
    "What is the capital of Australia?",
    "Explain prepaid credits to a new customer in two sentences.",
    "Suggest five names for a weather app.",
    "Classify this ticket: 'my invoice shows the wrong amount'.",
    "Draft a polite reminder about an overdue payment.",
];
const CLIENTS: [&str; 5] = [
    "web-frontend",
    "ios-app",
    "android-app",
    "nightly-batch",
    "cli",
];
const CITIES: [&str; 5] = ["berlin", "lagos", "lima", "osaka", "toronto"];

/// One planned gateway call.
struct Planned {
    method: Method,
    path: String,
    body: Option<Value>,
    secret: String,
    client_id: &'static str,
    /// Sent twice at once: the limited key's burst.
    burst: bool,
}

fn plan(rng: &mut StdRng, keys: &[DemoKey], t: &Targets) -> Option<Planned> {
    let pick_key = |rng: &mut StdRng, role: KeyRole| {
        let matching: Vec<_> = keys.iter().filter(|k| k.role == role).collect();
        (!matching.is_empty()).then(|| matching[rng.gen_range(0..matching.len())].secret.clone())
    };
    let pick = |rng: &mut StdRng, list: &[String]| {
        (!list.is_empty()).then(|| list[rng.gen_range(0..list.len())].clone())
    };
    let client_id = CLIENTS[rng.gen_range(0..CLIENTS.len())];
    let prompt = PROMPTS[rng.gen_range(0..PROMPTS.len())];
    let roll = rng.gen_range(0..100);
    let call = |path: &str, body: Value, secret: String| Planned {
        method: Method::POST,
        path: path.to_owned(),
        body: Some(body),
        secret,
        client_id,
        burst: false,
    };
    let main = pick_key(&mut *rng, KeyRole::Main)?;
    let chat = pick(&mut *rng, &t.chat_models)?;
    let max_tokens = rng.gen_range(8..96);
    Some(match roll {
        0..=39 => call(
            "/v1/chat/completions",
            json!({ "model": chat, "max_tokens": max_tokens,
                    "messages": [{"role": "user", "content": prompt}] }),
            main,
        ),
        40..=54 => call(
            "/v1/chat/completions",
            json!({ "model": chat, "max_tokens": max_tokens, "stream": true,
                    "stream_options": {"include_usage": true},
                    "messages": [{"role": "user", "content": prompt}] }),
            main,
        ),
        55..=62 => call(
            "/v1/completions",
            json!({ "model": chat, "max_tokens": max_tokens, "prompt": prompt }),
            main,
        ),
        63..=74 => {
            let model = pick(&mut *rng, &t.embed_models).unwrap_or(chat);
            call(
                "/v1/embeddings",
                json!({ "model": model, "input": [prompt, client_id] }),
                main,
            )
        }
        75..=86 if !t.http_slugs.is_empty() => {
            let slug = pick(&mut *rng, &t.http_slugs).unwrap_or_default();
            let city = CITIES[rng.gen_range(0..CITIES.len())];
            let get = rng.gen_bool(0.7);
            Planned {
                method: if get { Method::GET } else { Method::POST },
                path: if get {
                    format!("/v1/apis/{slug}/forecast?city={city}")
                } else {
                    format!("/v1/apis/{slug}/alerts")
                },
                body: (!get).then(|| json!({ "city": city, "threshold_c": 30 })),
                secret: main,
                client_id,
                burst: false,
            }
        }
        75..=86 => call(
            "/v1/chat/completions",
            json!({ "model": chat, "max_tokens": max_tokens,
                    "messages": [{"role": "user", "content": prompt}] }),
            main,
        ),
        87..=93 => {
            let Some(limited) = pick_key(&mut *rng, KeyRole::Limited) else {
                return Some(call(
                    "/v1/chat/completions",
                    json!({ "model": chat, "messages": [{"role": "user", "content": prompt}] }),
                    main,
                ));
            };
            let mut p = call(
                "/v1/chat/completions",
                json!({ "model": chat, "max_tokens": 16,
                        "messages": [{"role": "user", "content": prompt}] }),
                limited,
            );
            p.burst = true;
            p
        }
        94..=96 => match (&t.scope, pick_key(&mut *rng, KeyRole::Scoped)) {
            (Some((_, outside)), Some(scoped)) => call(
                "/v1/chat/completions",
                json!({ "model": outside, "messages": [{"role": "user", "content": prompt}] }),
                scoped,
            ),
            _ => call(
                "/v1/completions",
                json!({ "model": chat, "prompt": prompt, "max_tokens": 10_000_000u64, "n": 128 }),
                main,
            ),
        },
        // A call whose maximum cost is more than any demo balance: 402.
        _ => call(
            "/v1/completions",
            json!({ "model": chat, "prompt": prompt, "max_tokens": 10_000_000u64, "n": 128 }),
            main,
        ),
    })
}

/// Runs the demo and prints what it did.
pub async fn run(opts: DemoOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let mut log = Vec::new();
    let (client, how) = sign_in(&http, &opts, &mut log).await?;
    log.push(format!(
        "account: {} ({})",
        opts.email,
        match how {
            SignedIn::SetUp => "created as the server's first operator with its setup token",
            SignedIn::LoggedIn => "logged in",
            SignedIn::SignedUp => "signed up",
        }
    ));
    let me: Me = client.rest(Method::GET, "/api/v1/me", None).await?;
    if !me.is_operator {
        log.push(format!(
            "not an operator: test credits only, no demo APIs or live credits \
             (`tally admin grant-operator --email {}` changes that)",
            opts.email
        ));
    }
    let ns = pick_namespace(&client, &me, opts.namespace.as_deref()).await?;
    let ns_id = ns.namespace.id.clone();
    log.push(format!("namespace: {} ({ns_id})", ns.namespace.name));

    if me.is_operator && !opts.no_catalog {
        ensure_demo_apis(&client, &me, &mut log).await?;
    }
    // Test credits from the faucet (at most once per cooldown); live credits
    // from an operator's grant.
    let (status, _) = client
        .send(
            Method::POST,
            &format!("/api/v1/namespaces/{ns_id}/credits/faucet"),
            Some(&client.token),
            Some(&json!({})),
            None,
        )
        .await?;
    if status.is_success() {
        log.push("test credits: faucet top-up".to_owned());
    }
    if me.is_operator {
        let _: Value = client
            .rest(
                Method::POST,
                &format!("/api/v1/admin/namespaces/{ns_id}/grants"),
                Some(
                    json!({ "environment": "live", "amount_micros": 25_000_000i64,
                             "memo": "tally demo" }),
                ),
            )
            .await?;
        log.push("live credits: granted 25 credits".to_owned());
    }
    let balances: Balances = client
        .rest(
            Method::GET,
            &format!("/api/v1/namespaces/{ns_id}/credits"),
            None,
        )
        .await?;
    let live_funded = balances
        .items
        .iter()
        .any(|b| b.environment == Environment::Live && b.available_micros > 0);

    let catalog: CatalogList = client.rest(Method::GET, "/api/v1/catalog", None).await?;
    let t = targets(&catalog);
    if t.chat_models.is_empty() {
        bail!("the catalog has no OpenAI-compatible model to call");
    }
    let mut keys = Vec::new();
    let mut envs = vec![Environment::Test];
    if live_funded && catalog.items.iter().any(|a| a.live) {
        envs.push(Environment::Live);
    }
    for env in envs {
        for (name, role, extra) in [
            ("demo web app", KeyRole::Main, json!({})),
            ("demo batch worker", KeyRole::Main, json!({})),
            (
                "demo limited",
                KeyRole::Limited,
                json!({ "limits": { "requests_per_second": 1 } }),
            ),
        ] {
            let secret = create_key(&client, &ns_id, name, env, extra).await?;
            keys.push(DemoKey {
                secret,
                environment: env,
                role,
            });
        }
        if let Some((slug, _)) = &t.scope {
            let extra = json!({ "allowed_apis": [slug] });
            let secret = create_key(&client, &ns_id, "demo scoped", env, extra).await?;
            keys.push(DemoKey {
                secret,
                environment: env,
                role: KeyRole::Scoped,
            });
        }
        log.push(format!("keys: created 3-4 {env} keys labelled 'demo'"));
    }
    // Live keys only serve live APIs: give them the live-capable models.
    let live_targets = Targets {
        chat_models: catalog
            .items
            .iter()
            .filter(|a| a.live && a.protocol == Protocol::Openai && !a.slug.contains("embed"))
            .flat_map(|a| a.models.clone())
            .collect(),
        embed_models: catalog
            .items
            .iter()
            .filter(|a| a.live && a.slug.contains("embed"))
            .flat_map(|a| a.models.clone())
            .collect(),
        http_slugs: catalog
            .items
            .iter()
            .filter(|a| a.live && a.protocol == Protocol::Http)
            .map(|a| a.slug.clone())
            .collect(),
        scope: t.scope.clone(),
    };

    let mut rng = opts
        .seed
        .map_or_else(StdRng::from_entropy, StdRng::seed_from_u64);
    let test_keys: Vec<_> = keys
        .iter()
        .filter(|k| k.environment == Environment::Test)
        .cloned()
        .collect();
    let live_keys: Vec<_> = keys
        .iter()
        .filter(|k| k.environment == Environment::Live)
        .cloned()
        .collect();
    let mut planned = Vec::new();
    for _ in 0..opts.calls {
        // About a third of the calls are live when live keys exist.
        let live =
            !live_keys.is_empty() && !live_targets.chat_models.is_empty() && rng.gen_bool(0.35);
        let p = if live {
            plan(&mut rng, &live_keys, &live_targets)
        } else {
            plan(&mut rng, &test_keys, &t)
        };
        planned.extend(p);
    }

    let gap = opts
        .duration
        .map(|d| d / opts.calls.max(1) * opts.concurrency.max(1) as u32);
    let statuses = futures_util::stream::iter(planned)
        .map(|p| {
            let client = &client;
            async move {
                let mut out = Vec::new();
                let times = if p.burst { 2 } else { 1 };
                let sends = (0..times).map(|_| {
                    client.send(
                        p.method.clone(),
                        &p.path,
                        Some(&p.secret),
                        p.body.as_ref(),
                        Some(p.client_id),
                    )
                });
                for res in futures_util::future::join_all(sends).await {
                    out.push(match res {
                        Ok((status, _)) => status.as_u16(),
                        Err(_) => 0,
                    });
                }
                if let Some(gap) = gap {
                    tokio::time::sleep(gap).await;
                }
                (p.path, out)
            }
        })
        .buffer_unordered(opts.concurrency.max(1))
        .collect::<Vec<_>>()
        .await;

    let mut by_status: BTreeMap<u16, u32> = BTreeMap::new();
    let mut by_endpoint: BTreeMap<String, u32> = BTreeMap::new();
    for (path, codes) in &statuses {
        let endpoint = path.split('?').next().unwrap_or(path).to_owned();
        *by_endpoint.entry(endpoint).or_default() += codes.len() as u32;
        for code in codes {
            *by_status.entry(*code).or_default() += 1;
        }
    }
    let total: u32 = by_status.values().sum();
    for line in log {
        println!("{line}");
    }
    println!(
        "calls: {total} through {} in {:.1} s",
        client.base,
        started.elapsed().as_secs_f64()
    );
    for (code, n) in &by_status {
        let what = match code {
            0 => "transport error".to_owned(),
            c => StatusCode::from_u16(*c)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("")
                .to_owned(),
        };
        println!("  {code} {what}: {n}");
    }
    println!("by endpoint:");
    for (endpoint, n) in &by_endpoint {
        println!("  {endpoint}: {n}");
    }
    println!(
        "open {}/ and sign in as {} to see the dashboard",
        client.base, opts.email
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(slug: &str, protocol: Protocol, models: &[&str]) -> tally_common::CatalogApi {
        tally_common::CatalogApi {
            slug: slug.into(),
            name: slug.into(),
            description: String::new(),
            protocol,
            models: models.iter().map(|m| (*m).to_owned()).collect(),
            pricing: Default::default(),
            live: false,
            test_mode: "sandbox".into(),
            enabled: true,
            owner: "platform".into(),
        }
    }

    #[test]
    fn the_mix_reaches_every_kind_of_api_and_includes_refusals() {
        let catalog = CatalogList {
            items: vec![
                api("sandbox", Protocol::Openai, &["tally-sandbox"]),
                api("demo-chat", Protocol::Openai, &["demo-chat-mini"]),
                api("demo-embed", Protocol::Openai, &["demo-embed-small"]),
                api("demo-weather", Protocol::Http, &[]),
            ],
        };
        let t = targets(&catalog);
        assert_eq!(t.embed_models, vec!["demo-embed-small".to_owned()]);
        assert_eq!(
            t.scope,
            Some(("sandbox".to_owned(), "demo-embed-small".to_owned()))
        );
        let keys = [KeyRole::Main, KeyRole::Limited, KeyRole::Scoped].map(|role| DemoKey {
            secret: format!("{}", role as u8),
            environment: Environment::Test,
            role,
        });
        let mut rng = StdRng::seed_from_u64(7);
        let plans: Vec<_> = (0..500).filter_map(|_| plan(&mut rng, &keys, &t)).collect();
        assert_eq!(plans.len(), 500);
        for path in [
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/embeddings",
            "/v1/apis/",
        ] {
            assert!(plans.iter().any(|p| p.path.starts_with(path)), "{path}");
        }
        assert!(plans.iter().any(|p| p.burst));
        assert!(plans
            .iter()
            .any(|p| p.body.as_ref().is_some_and(|b| b["stream"] == true)));
        assert!(
            plans.iter().any(|p| p.secret == "2"),
            "the scoped key is used"
        );
    }
}
