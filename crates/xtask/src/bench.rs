//! `cargo xtask bench-gateway`: what the gateway adds to a call (G6).
//!
//! Policy: this measures and reports; it never fails because of speed. It fails only when the
//! setup cannot be done (build, server start, sign-up, …). Non-2xx answers and transport errors
//! are counted and printed next to the figures, never dropped, and at the end the usage the
//! server recorded is compared with the 2xx answers oha saw (an acknowledged call must never be
//! missing from usage, G4).
//!
//! Placement on a 2-core machine: `tally serve` pinned to CPU 0, oha pinned to CPU 1, the mock
//! upstream (threads of this process) wherever the scheduler puts it. The mock answers in
//! microseconds, so "gateway minus direct" is the gateway's own cost: key check, rate limit,
//! quota, credit hold and capture, the extra hop, and the durable usage write. The live key's
//! limits are set far above what the run sends so every check runs and none rejects.

use std::collections::BTreeMap;
use std::env;
use std::fs;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::http1;
use crate::mock::{MockUpstream, HEALTH_PATH, MODEL};
use crate::{
    build_tally, cargo_install, describe, exec, free_port, note, second_word, show, step, Ctx,
    Flags,
};

const API_SLUG: &str = "bench";
/// Live credits granted to the benchmark namespace: far more than any run can spend.
const GRANT_MICROS: i64 = 1_000_000_000_000;
/// The chat request oha sends, directly and through the gateway.
const CHAT_BODY: &str =
    r#"{"model":"bench-model","messages":[{"role":"user","content":"Say ok."}],"max_tokens":16}"#;

/// How much load each phase sends.
#[derive(Clone, Copy)]
struct Plan {
    warmup: u64,
    latency_requests: u64,
    throughput_secs: u64,
    concurrency: u32,
}

const FULL: Plan = Plan {
    warmup: 300,
    latency_requests: 3000,
    throughput_secs: 10,
    concurrency: 32,
};

/// `--quick`: checks the plumbing in a few seconds; the figures are too noisy to quote.
const QUICK: Plan = Plan {
    warmup: 30,
    latency_requests: 300,
    throughput_secs: 2,
    concurrency: 32,
};

/// `cargo xtask bench-monitoring`: the dashboard and monitoring queries over a
/// database loaded with millions of usage events (M6). The work is done by the
/// server crate's `bench_monitoring` example, which links the store's batch
/// writers and the HTTP server; this only builds and runs it in release mode.
pub fn bench_monitoring(cx: &Ctx, args: &[String]) -> Result<()> {
    step("build and run the monitoring benchmark (release)");
    let mut cmd = cx.cargo();
    cmd.args([
        "run",
        "--release",
        "-p",
        "tally-server",
        "--example",
        "bench_monitoring",
        "--",
    ])
    .args(args);
    exec(&mut cmd)
}

pub fn bench_keyflood(cx: &Ctx, args: &[String]) -> Result<()> {
    step("build and run the key flood benchmark (release)");
    let mut cmd = cx.cargo();
    cmd.args([
        "run",
        "--release",
        "-p",
        "tally-server",
        "--example",
        "bench_keyflood",
        "--",
    ])
    .args(args);
    exec(&mut cmd)
}

pub fn bench_gateway(cx: &Ctx, args: &[String]) -> Result<()> {
    let flags = Flags::parse(args, &["--quick"])?;
    let plan = if flags.has("--quick") { QUICK } else { FULL };
    let pin = Pinning::detect(cx);

    step("oha (load generator)");
    ensure_oha(cx)?;
    let json_flag = oha_json_flag(cx)?;

    let tally = match env::var_os("TALLY_BIN") {
        // A binary built elsewhere (as the e2e suite accepts it): no build, but the figures
        // are that binary's, debug or not.
        Some(bin) => {
            step(format!("tally: TALLY_BIN={}", Path::new(&bin).display()));
            PathBuf::from(bin)
        }
        None => {
            step("build tally (release)");
            build_tally(cx, true)?
        }
    };

    step("start the mock upstream");
    let mock = MockUpstream::start()?;
    note(format!("mock upstream on http://{}", mock.addr));

    let work = TempDir::new("tally-bench")?;
    let config = work.path.join("tally.toml");
    fs::write(&config, bench_config(mock.addr))
        .with_context(|| format!("cannot write {}", config.display()))?;

    step("start tally serve (SQLite in a temporary directory)");
    let mut server = Server::start(cx, &tally, &work.path, &config, &pin)?;
    note(format!("tally on http://{}", server.addr));

    let data_dir = work.path.join("data");
    let outcome = measure(cx, &pin, &json_flag, plan, &mock, server.addr, &data_dir);
    // The server is stopped before the report so its log is complete when we show it.
    server.stop();
    match outcome {
        Ok(report) => {
            report.print(plan);
            Ok(())
        }
        Err(err) => {
            server.print_log_tail();
            Err(err)
        }
    }
}

fn measure(
    cx: &Ctx,
    pin: &Pinning,
    json_flag: &[&str],
    plan: Plan,
    mock: &MockUpstream,
    gateway: SocketAddr,
    data_dir: &Path,
) -> Result<Report> {
    step("set up the operator (setup token), grant live credits, create a live key");
    let setup = Setup::create(gateway, data_dir)?;
    note(format!(
        "namespace {}, key {} ({}…)",
        setup.namespace,
        setup.key_id,
        &setup.secret[..setup.secret.len().min(12)]
    ));
    let balance_before = setup.live_balance()?;

    let oha = Oha {
        cx,
        pin,
        json_flag,
        secret: &setup.secret,
    };
    let direct_url = format!("http://{}/v1/chat/completions", mock.addr);
    let gateway_url = format!("http://{gateway}/v1/chat/completions");

    step("direct to the mock upstream");
    let direct_warmup = oha.run("warm-up", &direct_url, Load::Count(plan.warmup, 1))?;
    let direct_latency = oha.run(
        "latency",
        &direct_url,
        Load::Count(plan.latency_requests, 1),
    )?;
    let direct_throughput = oha.run(
        "throughput",
        &direct_url,
        Load::Seconds(plan.throughput_secs, plan.concurrency),
    )?;

    step("through the gateway (live key)");
    let upstream_before = mock.completions();
    let gateway_warmup = oha.run("warm-up", &gateway_url, Load::Count(plan.warmup, 1))?;
    let gateway_latency = oha.run(
        "latency",
        &gateway_url,
        Load::Count(plan.latency_requests, 1),
    )?;
    let gateway_throughput = oha.run(
        "throughput",
        &gateway_url,
        Load::Seconds(plan.throughput_secs, plan.concurrency),
    )?;
    let upstream_calls = mock.completions() - upstream_before;

    step("compare recorded usage with the 2xx answers");
    let recorded = setup.recorded_usage()?;
    let balance_after = setup.live_balance()?;

    Ok(Report {
        pinned: pin.enabled,
        direct: [direct_warmup, direct_latency, direct_throughput],
        gateway: [gateway_warmup, gateway_latency, gateway_throughput],
        upstream_calls,
        recorded,
        spent_micros: balance_before - balance_after,
    })
}

// ---------------------------------------------------------------------------------------------
// tools

/// CPU pinning with `taskset`, when it exists and there are at least two CPUs to split.
struct Pinning {
    enabled: bool,
}

impl Pinning {
    fn detect(cx: &Ctx) -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let enabled = cx.has("taskset") && cpus >= 2;
        if !enabled {
            note(format!(
                "not pinning to CPUs (taskset {}, {cpus} CPU(s)): figures include contention",
                if cx.has("taskset") {
                    "found"
                } else {
                    "missing"
                }
            ));
        }
        Self { enabled }
    }

    /// `program` on `cpu` when pinning is on.
    fn command(&self, cx: &Ctx, cpu: u32, program: impl AsRef<std::ffi::OsStr>) -> Command {
        if self.enabled {
            let mut cmd = cx.cmd("taskset");
            cmd.arg("-c").arg(cpu.to_string()).arg(program.as_ref());
            cmd
        } else {
            cx.cmd(program.as_ref())
        }
    }
}

/// oha from `cargo install oha --locked`, installed only when missing.
fn ensure_oha(cx: &Ctx) -> Result<()> {
    if let Some(version) = cx
        .probe("oha", &["--version"])
        .and_then(|out| second_word(&out))
    {
        step(format!("oha {version}: installed"));
        return Ok(());
    }
    step("oha: not found; installing (takes a few minutes, once)");
    cargo_install(cx, "oha", None)?;
    if cx.probe("oha", &["--version"]).is_none() {
        bail!("oha was installed but `oha --version` does not run; is ~/.cargo/bin on PATH?");
    }
    Ok(())
}

/// The flag that makes oha print its summary as JSON: `--output-format json` in current
/// releases, `-j` in older ones.
fn oha_json_flag(cx: &Ctx) -> Result<Vec<&'static str>> {
    let help = cx
        .probe("oha", &["--help"])
        .context("`oha --help` failed")?;
    if help.contains("--output-format") {
        Ok(vec!["--output-format", "json"])
    } else if help.contains("--json") {
        Ok(vec!["-j"])
    } else {
        bail!("this oha has neither --output-format nor --json; install a current one with `cargo install oha --locked --force`")
    }
}

// ---------------------------------------------------------------------------------------------
// the server

/// The `[[catalog]]` entry for the mock: an OpenAI-protocol API whose live upstream is the mock.
fn bench_config(mock: SocketAddr) -> String {
    format!(
        r#"# Written by `cargo xtask bench-gateway`.
[[catalog]]
slug = "{API_SLUG}"
name = "Benchmark mock upstream"
protocol = "openai"
models = ["{MODEL}"]
upstreams = [{{ url = "http://{mock}", weight = 1 }}]
timeout_ms = 10000
health_path = "{HEALTH_PATH}"
enabled = true

[catalog.pricing]
per_request_micros = 10
per_1k_input_tokens_micros = 100
per_1k_output_tokens_micros = 200
default_max_output_tokens = 64
"#
    )
}

/// A directory under the system temp dir, removed on drop.
pub(crate) struct TempDir {
    pub(crate) path: PathBuf,
}

impl TempDir {
    pub(crate) fn new(prefix: &str) -> Result<Self> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
        fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// `tally serve` as a child process, killed on drop so an error anywhere leaves nothing behind.
pub(crate) struct Server {
    child: Option<Child>,
    pub(crate) addr: SocketAddr,
    log: PathBuf,
}

impl Server {
    fn start(cx: &Ctx, tally: &Path, dir: &Path, config: &Path, pin: &Pinning) -> Result<Self> {
        Self::spawn(pin.command(cx, 0, tally), dir, config, None)
    }

    /// Runs `cmd` (the `tally` binary, perhaps behind a wrapper) as `tally --config CONFIG
    /// serve` on a free port with its data in `dir`: on SQLite there, or on `database_url`.
    pub(crate) fn spawn(
        mut cmd: Command,
        dir: &Path,
        config: &Path,
        database_url: Option<&str>,
    ) -> Result<Self> {
        let port = free_port()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let log = dir.join("tally.log");
        let log_file =
            fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        cmd.arg("--config")
            .arg(config)
            .arg("serve")
            .arg("--bind")
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(dir.join("data"))
            // The embedded SQLite file in the data directory, whatever the caller's shell
            // says, unless `database_url` names a database.
            .env_remove("TALLY_DATABASE_URL")
            .env_remove("TALLY_CONFIG")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        if let Some(url) = database_url {
            cmd.env("TALLY_DATABASE_URL", url);
        }
        note(format!("$ {}", show(&cmd)));
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start `{}`", show(&cmd)))?;
        let mut server = Self {
            child: Some(child),
            addr,
            log,
        };
        server.wait_ready()?;
        Ok(server)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.print_log_tail();
                    bail!("tally serve exited during start-up ({})", describe(status));
                }
            }
            if http1::request(self.addr, "GET", "/readyz", None, None)
                .is_ok_and(|response| response.status == 200)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.print_log_tail();
                bail!("tally serve was not ready on {} within 60 s", self.addr);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub(crate) fn print_log_tail(&self) {
        let Ok(text) = fs::read_to_string(&self.log) else {
            return;
        };
        let lines: Vec<&str> = text.lines().collect();
        eprintln!(
            "--- last lines of the tally log ({}) ---",
            self.log.display()
        );
        for line in &lines[lines.len().saturating_sub(30)..] {
            eprintln!("{line}");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// REST setup and usage

/// A JSON call to the REST API that must succeed.
pub(crate) fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Result<Value> {
    let body = body.map(|body| body.to_string());
    let response = http1::request(
        addr,
        method,
        path,
        token,
        body.as_deref().map(str::as_bytes),
    )
    .with_context(|| format!("{method} {path}: no answer"))?;
    if !(200..300).contains(&response.status) {
        bail!(
            "{method} {path}: HTTP {}: {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        );
    }
    if response.body.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&response.body)
        .with_context(|| format!("{method} {path}: the answer is not JSON"))
}

/// Makes `email` the operator of a fresh server and returns its access token. A server without
/// an operator writes a one-time setup token to its data directory; `POST /api/v1/auth/setup`
/// with it creates the operator account.
pub(crate) fn create_operator(
    addr: SocketAddr,
    data_dir: &Path,
    email: &str,
    password: &str,
) -> Result<String> {
    let token_file = data_dir.join("setup-token");
    let setup_token = fs::read_to_string(&token_file)
        .with_context(|| format!("cannot read the setup token {}", token_file.display()))?;
    let auth = call(
        addr,
        "POST",
        "/api/v1/auth/setup",
        None,
        Some(&json!({
            "token": setup_token.trim(),
            "email": email,
            "password": password,
        })),
    )?;
    let token = text(&auth["access_token"], "access_token")?;
    let me = call(addr, "GET", "/api/v1/me", Some(&token), None)?;
    if me["is_operator"] != true {
        bail!(
            "the setup token should make an operator, but /api/v1/me says is_operator = {}",
            me["is_operator"]
        );
    }
    Ok(token)
}

/// The operator account, its namespace and the live key the benchmark calls with.
struct Setup {
    addr: SocketAddr,
    token: String,
    namespace: String,
    key_id: String,
    secret: String,
}

impl Setup {
    fn create(addr: SocketAddr, data_dir: &Path) -> Result<Self> {
        let email = format!("bench-{}@example.com", std::process::id());
        let token = create_operator(addr, data_dir, &email, "benchmark password 1")?;
        let me = call(addr, "GET", "/api/v1/me", Some(&token), None)?;
        let namespace = text(&me["namespaces"][0]["id"], "namespaces[0].id")?;
        call(
            addr,
            "POST",
            &format!("/api/v1/admin/namespaces/{namespace}/grants"),
            Some(&token),
            Some(&json!({
                "environment": "live",
                "amount_micros": GRANT_MICROS,
                "memo": "cargo xtask bench-gateway",
            })),
        )?;
        // Limits far above the run's load: every check is on the path, none rejects.
        let created = call(
            addr,
            "POST",
            &format!("/api/v1/namespaces/{namespace}/keys"),
            Some(&token),
            Some(&json!({
                "name": "bench",
                "environment": "live",
                "limits": {
                    "requests_per_second": 1_000_000_000u32,
                    "requests_per_minute": 1_000_000_000u32,
                    "tokens_per_minute": 1_000_000_000_000u64,
                    "requests_per_day": 1_000_000_000_000u64,
                    "requests_per_month": 1_000_000_000_000u64,
                    "credits_per_day_micros": GRANT_MICROS,
                    "credits_per_month_micros": GRANT_MICROS,
                },
            })),
        )?;
        Ok(Self {
            addr,
            namespace,
            key_id: text(&created["key"]["id"], "key.id")?,
            secret: text(&created["secret"], "secret")?,
            token,
        })
    }

    fn get(&self, path: &str) -> Result<Value> {
        call(self.addr, "GET", path, Some(&self.token), None)
    }

    fn live_balance(&self) -> Result<i64> {
        let balances = self.get(&format!("/api/v1/namespaces/{}/credits", self.namespace))?;
        balances["items"]
            .as_array()
            .and_then(|items| items.iter().find(|item| item["environment"] == "live"))
            .and_then(|item| item["balance_micros"].as_i64())
            .context("GET credits has no live balance")
    }

    /// Every live usage event of the bench key, read page by page.
    fn recorded_usage(&self) -> Result<Recorded> {
        let mut recorded = Recorded::default();
        let mut before: Option<String> = None;
        loop {
            let mut path = format!(
                "/api/v1/namespaces/{}/usage?environment=live&key_id={}&limit=500",
                self.namespace, self.key_id
            );
            if let Some(before) = &before {
                path.push_str(&format!("&before={before}"));
            }
            let page = self.get(&path)?;
            let items = page["items"]
                .as_array()
                .context("GET usage: no items array")?;
            for item in items {
                if item["key_id"] != self.key_id.as_str() {
                    continue;
                }
                let status = item["status"].as_u64().unwrap_or(0);
                if (200..300).contains(&status) {
                    recorded.ok += 1;
                } else {
                    *recorded.other.entry(status).or_default() += 1;
                }
                recorded.cost_micros += item["cost_micros"].as_i64().unwrap_or(0);
            }
            match &page["next_before"] {
                Value::String(next) if !items.is_empty() => before = Some(next.clone()),
                _ => return Ok(recorded),
            }
        }
    }
}

pub(crate) fn text(value: &Value, what: &str) -> Result<String> {
    value
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("the answer has no string `{what}`"))
}

/// Usage events the server recorded for the bench key.
#[derive(Default)]
struct Recorded {
    ok: u64,
    other: BTreeMap<u64, u64>,
    cost_micros: i64,
}

// ---------------------------------------------------------------------------------------------
// oha

enum Load {
    /// This many requests at this concurrency.
    Count(u64, u32),
    /// This many seconds at this concurrency.
    Seconds(u64, u32),
}

struct Oha<'a> {
    cx: &'a Ctx,
    pin: &'a Pinning,
    json_flag: &'a [&'a str],
    secret: &'a str,
}

impl Oha<'_> {
    fn run(&self, label: &str, url: &str, load: Load) -> Result<Run> {
        let mut cmd = self.pin.command(self.cx, 1, "oha");
        cmd.arg("--no-tui").args(self.json_flag);
        match load {
            Load::Count(n, c) => cmd.args(["-n", &n.to_string(), "-c", &c.to_string()]),
            // -w: requests in flight at the deadline are finished, not dropped, so every
            // request oha counts got an answer and can be compared with the recorded usage.
            Load::Seconds(s, c) => cmd.args(["-z", &format!("{s}s"), "-c", &c.to_string(), "-w"]),
        };
        cmd.args(["-m", "POST", "-T", "application/json"])
            .arg("-H")
            .arg(format!("Authorization: Bearer {}", self.secret))
            .args(["-d", CHAT_BODY])
            .arg(url)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit());
        // The secret is a throwaway key on a temporary server, but it still stays off the screen.
        let shown = show(&cmd).replace(self.secret, "tk_live_…");
        note(format!("{label}: $ {shown}"));
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start `{shown}`"))?;
        let mut out = String::new();
        if let Some(mut stdout) = child.stdout.take() {
            stdout
                .read_to_string(&mut out)
                .context("cannot read oha's output")?;
        }
        let status = child.wait().context("oha did not finish")?;
        if !status.success() {
            bail!("`{shown}` failed ({})", describe(status));
        }
        let run = Run::parse(&out).with_context(|| format!("cannot read oha's JSON: {out}"))?;
        note(format!(
            "{label}: {} requests, {} 2xx, p50 {} ms, p99 {} ms, {:.0} req/s",
            run.sent(),
            run.ok,
            ms(run.p50),
            ms(run.p99),
            run.rps
        ));
        Ok(run)
    }
}

/// What one oha run measured. Latencies in seconds, as oha reports them.
#[derive(Debug, Default, PartialEq)]
struct Run {
    p50: Option<f64>,
    p99: Option<f64>,
    rps: f64,
    ok: u64,
    /// Non-2xx answers by status code.
    other: BTreeMap<String, u64>,
    /// Requests that got no HTTP answer, by oha's error text.
    errors: BTreeMap<String, u64>,
}

impl Run {
    fn parse(json: &str) -> Result<Self> {
        let doc: Value = serde_json::from_str(json)?;
        let mut run = Run {
            p50: doc["latencyPercentiles"]["p50"].as_f64(),
            p99: doc["latencyPercentiles"]["p99"].as_f64(),
            rps: doc["summary"]["requestsPerSec"]
                .as_f64()
                .context("no summary.requestsPerSec")?,
            ..Run::default()
        };
        if let Some(codes) = doc["statusCodeDistribution"].as_object() {
            for (code, count) in codes {
                let count = count.as_u64().unwrap_or(0);
                if code.starts_with('2') {
                    run.ok += count;
                } else {
                    *run.other.entry(code.clone()).or_default() += count;
                }
            }
        }
        if let Some(errors) = doc["errorDistribution"].as_object() {
            for (error, count) in errors {
                *run.errors.entry(error.clone()).or_default() += count.as_u64().unwrap_or(0);
            }
        }
        Ok(run)
    }

    fn sent(&self) -> u64 {
        self.ok + self.other.values().sum::<u64>() + self.errors.values().sum::<u64>()
    }

    fn problems(&self) -> String {
        let mut parts: Vec<String> = self
            .other
            .iter()
            .map(|(code, n)| format!("{n}× HTTP {code}"))
            .collect();
        parts.extend(self.errors.iter().map(|(err, n)| format!("{n}× {err}")));
        parts.join(", ")
    }
}

fn ms(seconds: Option<f64>) -> String {
    seconds.map_or_else(|| "-".to_string(), |s| format!("{:.3}", s * 1000.0))
}

// ---------------------------------------------------------------------------------------------
// report

struct Report {
    pinned: bool,
    /// warm-up, latency (concurrency 1), throughput (concurrency N)
    direct: [Run; 3],
    gateway: [Run; 3],
    upstream_calls: u64,
    recorded: Recorded,
    spent_micros: i64,
}

impl Report {
    fn print(&self, plan: Plan) {
        let [_, dl, dt] = &self.direct;
        let [_, gl, gt] = &self.gateway;
        let added = |g: Option<f64>, d: Option<f64>| match (g, d) {
            (Some(g), Some(d)) => format!("{:+.3}", (g - d) * 1000.0),
            _ => "-".to_string(),
        };
        let ratio = if dt.rps > 0.0 {
            format!("{:.2}x", gt.rps / dt.rps)
        } else {
            "-".to_string()
        };
        let c = plan.concurrency;
        println!();
        println!(
            "Gateway benchmark: POST /v1/chat/completions, live key, mock upstream{}",
            if self.pinned {
                "; tally on CPU 0, oha on CPU 1"
            } else {
                "; no CPU pinning"
            }
        );
        println!();
        println!(
            "{:<30} {:>14} {:>14} {:>14}",
            "", "direct", "gateway", "added"
        );
        println!(
            "{:<30} {:>14} {:>14} {:>14}",
            "latency p50, c=1 (ms)",
            ms(dl.p50),
            ms(gl.p50),
            added(gl.p50, dl.p50)
        );
        println!(
            "{:<30} {:>14} {:>14} {:>14}",
            "latency p99, c=1 (ms)",
            ms(dl.p99),
            ms(gl.p99),
            added(gl.p99, dl.p99)
        );
        println!(
            "{:<30} {:>14.0} {:>14.0} {:>14}",
            format!("throughput, c={c} (req/s)"),
            dt.rps,
            gt.rps,
            ratio
        );
        println!(
            "{:<30} {:>14} {:>14}",
            format!("2xx / sent, c=1 ({} req)", plan.latency_requests),
            format!("{}/{}", dl.ok, dl.sent()),
            format!("{}/{}", gl.ok, gl.sent())
        );
        println!(
            "{:<30} {:>14} {:>14}",
            format!("2xx / sent, c={c} ({} s)", plan.throughput_secs),
            format!("{}/{}", dt.ok, dt.sent()),
            format!("{}/{}", gt.ok, gt.sent())
        );
        for (side, runs) in [("direct", &self.direct), ("gateway", &self.gateway)] {
            for (phase, run) in ["warm-up", "c=1", &format!("c={c}")].iter().zip(runs) {
                let problems = run.problems();
                if !problems.is_empty() {
                    println!("  not 2xx ({side}, {phase}): {problems}");
                }
            }
        }

        let answered: u64 = self.gateway.iter().map(|run| run.ok).sum();
        let sent: u64 = self.gateway.iter().map(Run::sent).sum();
        println!();
        println!(
            "Usage check (all gateway runs incl. warm-up): {sent} sent, {answered} answered 2xx"
        );
        println!(
            "  usage events recorded with a 2xx status: {} {}",
            self.recorded.ok,
            if self.recorded.ok == answered {
                "(equal)"
            } else {
                "(MISMATCH)"
            }
        );
        if !self.recorded.other.is_empty() {
            let other: Vec<String> = self
                .recorded
                .other
                .iter()
                .map(|(status, n)| format!("{n}× {status}"))
                .collect();
            println!("  usage events with other statuses: {}", other.join(", "));
        }
        println!(
            "  upstream calls the mock answered: {}",
            self.upstream_calls
        );
        println!(
            "  live credits spent (balance before - after): {} micros; sum of usage costs: {} micros {}",
            self.spent_micros,
            self.recorded.cost_micros,
            if self.spent_micros == self.recorded.cost_micros {
                "(equal)"
            } else {
                "(MISMATCH)"
            }
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn reads_oha_json_counting_non_2xx_and_errors() {
        let json = r#"{
            "summary": {"successRate": 0.99, "total": 1.5, "requestsPerSec": 2000.5},
            "latencyPercentiles": {"p10": 0.0001, "p50": 0.0004, "p99": 0.002},
            "statusCodeDistribution": {"200": 2990, "201": 2, "429": 3, "500": 1},
            "errorDistribution": {"connection closed": 4}
        }"#;
        let run = Run::parse(json).unwrap();
        assert_eq!(run.ok, 2992);
        assert_eq!(run.sent(), 3000);
        assert_eq!(run.p50, Some(0.0004));
        assert_eq!(run.rps, 2000.5);
        assert_eq!(
            run.problems(),
            "3× HTTP 429, 1× HTTP 500, 4× connection closed"
        );
    }

    #[test]
    fn a_run_without_answers_has_no_percentiles() {
        let json = r#"{"summary": {"requestsPerSec": 0.0}, "latencyPercentiles": {"p50": null},
            "statusCodeDistribution": {}, "errorDistribution": {"refused": 10}}"#;
        let run = Run::parse(json).unwrap();
        assert_eq!(run.p50, None);
        assert_eq!(ms(run.p50), "-");
        assert_eq!(run.sent(), 10);
    }

    #[test]
    fn the_config_routes_the_bench_api_to_the_mock() {
        let config = bench_config(([127, 0, 0, 1], 4321).into());
        assert!(config.contains(r#"url = "http://127.0.0.1:4321""#));
        assert!(config.contains(r#"models = ["bench-model"]"#));
    }
}
