//! `cargo xtask bench-gateway`: what the gateway adds to a call (G6), on SQLite and, with
//! `--postgres URL`, on PostgreSQL with one and with several instances (O5).
//!
//! Policy: this measures and reports; it never fails because of speed. It fails when the setup
//! cannot be done (build, server start, sign-up, database, …) and when a correctness check
//! fails, after printing every figure: the usage the server recorded must equal the 2xx answers
//! oha saw (an acknowledged call must never be missing from usage, G4), the live credits spent
//! must equal the recorded costs, and on PostgreSQL the stored balance must equal the sum of
//! the ledger once every instance has stopped. Non-2xx answers and transport errors are counted
//! and printed next to the figures, never dropped.
//!
//! Placement on a 2-core machine: every `tally serve` pinned to CPU 0, every oha pinned to
//! CPU 1, the mock upstream (threads of this process) wherever the scheduler puts it. The mock
//! answers in microseconds, so "gateway minus direct" is the gateway's own cost: key check,
//! rate limit, quota, credit hold and capture, the extra hop, and the durable usage write. The
//! live key's limits are set far above what the run sends so every check runs and none rejects.
//!
//! Several instances (`--instances N`, PostgreSQL only): the first instance creates the
//! operator, the credits and the key; the others start afterwards on the same database. Latency
//! (one call at a time) is measured through each instance in turn and the slowest instance's
//! figures go in the table; throughput is one oha per instance, all at once, the concurrency
//! split among them and their requests per second summed. With every instance on CPU 0, N
//! instances show what coordinating through the database costs, not added capacity.
//!
//! Baseline proxy: nginx (`nginx.rs`: one worker, upstream keepalive, no buffering) on CPU 0 in
//! front of the same mock gets the same runs as direct, and each gateway row shows its
//! requests per second over nginx's: what Tally costs beside a proxy that does no work of its
//! own. Without nginx (not installable) the report says why and has no such row.
//!
//! Options beyond the table, each run through direct, nginx, SQLite and the first PostgreSQL
//! instance, after the latency and throughput runs:
//! - `--rate N`: oha at a fixed N requests per second (`-q`, `--latency-correction`: latency
//!   from when a request was due) with up to `RATE_CONCURRENCY` in flight; p50/p99 and the rate
//!   achieved. Its answers count in the usage check.
//! - `--stream`: `STREAMS` (1,000) paced streams (`stream.rs`; the mock's SSE answer in
//!   `mock.rs`), each on its own connection, started over a ramp so that all are open at once;
//!   TTFB and total p50/p99, the TTFB and total each gateway adds over direct and over nginx,
//!   stalls and failures. Meanwhile this process (client and mock) runs on CPU 1. Checks: every
//!   stream got every event and `[DONE]` (else `MISMATCH: FAILED`), and the gateway recorded as
//!   many streamed (`request_type` "stream") 2xx usage events as streams completed.
//! - `--soak SECS`: oha at `SOAK_RATE` for SECS, the tally process's memory read every
//!   `SOAK_SAMPLE`; its answers count in the usage check.
//! - Memory, always: VmRSS and VmHWM (`/proc/PID/status`) of tally (the first instance) and
//!   nginx right after start-up, after the oha runs, at the highest reading during the streams
//!   (every 100 ms) and after them.

use std::collections::BTreeMap;
use std::env;
use std::fs;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::mock::{MockUpstream, HEALTH_PATH, MODEL, STREAM_CHUNKS};
use crate::nginx::{self, Nginx};
use crate::pg::{self, FreshDatabase};
use crate::{
    build_tally, cargo_install, describe, exec, free_port, note, second_word, show, step, Ctx,
};
use crate::{http1, stream};

const API_SLUG: &str = "bench";
/// Live credits granted to the benchmark namespace: far more than any run can spend.
const GRANT_MICROS: i64 = 1_000_000_000_000;
/// The chat request oha sends, directly and through the gateway.
const CHAT_BODY: &str =
    r#"{"model":"bench-model","messages":[{"role":"user","content":"Say ok."}],"max_tokens":16}"#;
/// The bearer token of the direct runs: the mock ignores it, but the request keeps the size
/// of a gateway call (`tk_live_` and 40 characters).
const DIRECT_SECRET: &str = "tk_live_direct0000000000000000000000000000000000";
/// How long a stopping instance may take to finish its calls before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(40);
/// The concurrency of the fixed-rate runs (`--rate`, `--soak`): enough connections that oha
/// can keep to the rate while answers are slow, so the latency is measured, not the queue.
const RATE_CONCURRENCY: u32 = 64;
/// The rate of `--soak`: steady and moderate, well under what a quiet core serves.
const SOAK_RATE: u32 = 1000;
/// How often `--soak` reads the tally process's memory.
const SOAK_SAMPLE: Duration = Duration::from_secs(10);
/// The open-file limit the benchmark asks for (tally and nginx inherit it): 1,000 streams
/// are 1,000 client and 1,000 upstream sockets in this process, as many in the proxy.
const OPEN_FILES: u64 = 16_384;

/// How much load each phase sends.
#[derive(Clone, Copy)]
struct Plan {
    warmup: u64,
    latency_requests: u64,
    throughput_secs: u64,
    concurrency: u32,
    /// How long each `--rate` run lasts.
    rate_secs: u64,
    /// The `--stream` runs.
    streams: stream::Plan,
}

/// 1,000 streams started over half a second: each lasts about a second (`mock::STREAM_PACE`
/// times `STREAM_CHUNKS`), so all of them are open together for about half a second.
const STREAMS: stream::Plan = stream::Plan {
    streams: 1000,
    ramp: Duration::from_millis(500),
    per_stream: Duration::from_secs(60),
    stall: Duration::from_secs(1),
    // The content chunks and the usage chunk.
    events: STREAM_CHUNKS + 1,
};

const FULL: Plan = Plan {
    warmup: 300,
    latency_requests: 3000,
    throughput_secs: 10,
    concurrency: 32,
    rate_secs: 10,
    streams: STREAMS,
};

/// `--quick`: checks the plumbing in a few seconds; the figures are too noisy to quote. The
/// streams stay 1,000: what is checked is that so many can be open at once.
const QUICK: Plan = Plan {
    warmup: 30,
    latency_requests: 300,
    throughput_secs: 2,
    concurrency: 32,
    rate_secs: 3,
    streams: STREAMS,
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

/// The options of `bench-gateway`.
#[derive(Debug, PartialEq)]
struct Options {
    quick: bool,
    /// A PostgreSQL server: the run creates a database of its own there and drops it after.
    postgres: Option<String>,
    /// Instances on that database; 1 without `--postgres`.
    instances: usize,
    /// `redis_url` of the PostgreSQL instances.
    redis: Option<String>,
    /// Paced streams through every target.
    stream: bool,
    /// A fixed-rate latency run at this many requests per second through every target.
    rate: Option<u32>,
    /// Seconds of steady load on each tally, its memory read every `SOAK_SAMPLE`.
    soak: Option<u64>,
}

const ACCEPTED: &str =
    "--quick, --postgres URL, --instances N, --redis URL, --stream, --rate N, --soak SECS";

impl Options {
    fn parse(args: &[String]) -> Result<Self> {
        let mut quick = false;
        let mut postgres = None;
        let mut instances = None;
        let mut redis = None;
        let mut stream = false;
        let mut rate = None;
        let mut soak = None;
        let mut rest = args.iter();
        while let Some(arg) = rest.next() {
            // `--flag value` or `--flag=value`.
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_string())),
                _ => (arg.as_str(), None),
            };
            let mut value = || -> Result<String> {
                match inline.clone().or_else(|| rest.next().cloned()) {
                    Some(value) if !value.is_empty() => Ok(value),
                    _ => bail!("{flag} needs a value (accepted: {ACCEPTED})"),
                }
            };
            match flag {
                "--quick" if inline.is_none() => quick = true,
                "--stream" if inline.is_none() => stream = true,
                "--rate" => {
                    let text = value()?;
                    let n = text
                        .parse::<u32>()
                        .ok()
                        .filter(|n| *n >= 1)
                        .with_context(|| {
                            format!("--rate takes requests per second, at least 1, not `{text}`")
                        })?;
                    rate = Some(n);
                }
                "--soak" => {
                    let text = value()?;
                    let n = text
                        .parse::<u64>()
                        .ok()
                        .filter(|n| *n >= 1)
                        .with_context(|| {
                            format!(
                                "--soak takes a whole number of seconds, at least 1, not `{text}`"
                            )
                        })?;
                    soak = Some(n);
                }
                "--postgres" => postgres = Some(value()?),
                "--redis" => redis = Some(value()?),
                "--instances" => {
                    let text = value()?;
                    let n = text
                        .parse::<usize>()
                        .ok()
                        .filter(|n| *n >= 1)
                        .with_context(|| {
                            format!("--instances takes a whole number of at least 1, not `{text}`")
                        })?;
                    instances = Some(n);
                }
                _ => bail!("unexpected argument `{arg}` (accepted: {ACCEPTED})"),
            }
        }
        if postgres.is_none() {
            if instances.is_some() {
                bail!("--instances needs --postgres URL: several instances share one PostgreSQL database");
            }
            if redis.is_some() {
                bail!("--redis needs --postgres URL: Redis is passed to the PostgreSQL instances");
            }
        }
        Ok(Self {
            quick,
            postgres,
            instances: instances.unwrap_or(1),
            redis,
            stream,
            rate,
            soak,
        })
    }
}

pub fn bench_gateway(cx: &Ctx, args: &[String]) -> Result<()> {
    let opts = Options::parse(args)?;
    let plan = if opts.quick { QUICK } else { FULL };
    if opts.instances > plan.concurrency as usize {
        bail!(
            "--instances {}: at most {} (the throughput run's concurrency is split among them)",
            opts.instances,
            plan.concurrency
        );
    }
    if opts.postgres.is_some() {
        // Before the long SQLite part, not after it.
        pg::require_psql(
            cx,
            "--postgres is given: the benchmark runs on PostgreSQL too",
        )?;
    }
    let pin = Pinning::detect(cx);
    if opts.stream {
        match stream::raise_nofile(OPEN_FILES) {
            Ok(n) if n < OPEN_FILES => note(format!(
                "open-file limit {n} (the hard limit): fewer than {OPEN_FILES}, streams may fail"
            )),
            Ok(_) => {}
            Err(err) => note(format!("{err:#}: streams may run out of file descriptors")),
        }
    }

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

    let bench = Bench {
        cx,
        pin: &pin,
        json_flag: &json_flag,
        plan,
        opts: &opts,
        mock: &mock,
        tally: &tally,
    };

    step("direct to the mock upstream");
    let mut direct = bench.measure("direct to the mock", DIRECT_SECRET, &[mock.addr])?;
    bench.extras(&mut direct, DIRECT_SECRET, mock.addr, Serving::Direct, None)?;

    step("nginx (baseline proxy)");
    let (baseline, no_baseline) = match nginx::ensure(cx) {
        Ok(bin) => (Some(bench.nginx(&bin)?), None),
        Err(err) => {
            let why = format!("{err:#}");
            note(format!("no nginx row: {why}"));
            (None, Some(why))
        }
    };

    let mut backends = vec![bench.sqlite()?];
    if let Some(server_url) = &opts.postgres {
        backends.push(bench.postgres(server_url, opts.instances, opts.redis.as_deref())?);
    }

    let report = Report {
        pinned: pin.enabled,
        plan,
        opts: &opts,
        direct,
        baseline,
        no_baseline,
        backends,
    };
    let failures = report.print();
    if !failures.is_empty() {
        println!();
        for failure in &failures {
            println!("FAILED: {failure}");
        }
        bail!(
            "{} correctness check(s) failed: see the FAILED lines above (speed never fails \
             the benchmark)",
            failures.len()
        );
    }
    Ok(())
}

/// What every phase of a run shares.
struct Bench<'a> {
    cx: &'a Ctx,
    pin: &'a Pinning,
    json_flag: &'a [&'a str],
    plan: Plan,
    opts: &'a Options,
    mock: &'a MockUpstream,
    tally: &'a Path,
}

impl Bench<'_> {
    fn oha<'b>(&'b self, secret: &'b str) -> Oha<'b> {
        Oha {
            cx: self.cx,
            pin: self.pin,
            json_flag: self.json_flag,
            secret,
        }
    }

    /// The baseline: nginx on CPU 0 proxying to the mock, the same runs as direct.
    fn nginx(&self, bin: &Path) -> Result<Measured> {
        let mut proxy = Nginx::start(self.cx, bin, self.pin, self.mock.addr)?;
        note(format!("nginx on http://{}", proxy.addr));
        let idle = proxy.pid().and_then(memory);
        let mut row = self.measure("nginx (baseline proxy)", DIRECT_SECRET, &[proxy.addr])?;
        let serving = Serving::Proxy(proxy.pid());
        self.extras(&mut row, DIRECT_SECRET, proxy.addr, serving, idle)?;
        proxy.stop();
        Ok(row)
    }

    /// What follows the latency and throughput runs through one address, as the options ask:
    /// the fixed-rate run, the streams, and for a gateway (`tally` is its process id) the soak;
    /// with a process id (`tally`, else `proxy`: nginx's), that process's memory after the runs
    /// (`idle` is the reading taken after start-up), at the peak of the streams and after them,
    /// and during the soak.
    fn extras(
        &self,
        row: &mut Measured,
        secret: &str,
        addr: SocketAddr,
        serving: Serving,
        idle: Option<Memory>,
    ) -> Result<()> {
        let pid = match serving {
            Serving::Direct => None,
            Serving::Proxy(pid) | Serving::Tally(pid) => pid,
        };
        let url = format!("http://{addr}/v1/chat/completions");
        if let Some(idle) = idle {
            row.memory.push(("idle, after start-up", idle));
        }
        if let Some(rate) = self.opts.rate {
            let load = Load::Rate(rate, self.plan.rate_secs, RATE_CONCURRENCY);
            row.rate = Some(self.oha(secret).run("fixed rate", &url, load)?);
        }
        if let Some(now) = pid.and_then(memory) {
            row.memory.push(("after the oha runs", now));
        }
        if self.opts.stream {
            let plan = self.plan.streams;
            note(format!(
                "streams: {} paced streams started over {} ms, each on a connection of its own \
                 (this process, with the mock, on CPU 1 meanwhile)",
                plan.streams,
                plan.ramp.as_millis()
            ));
            let before = self.mock.streams();
            self.pin.pin_self(self.cx, true);
            let (run, peak) = sampled(pid, || stream::run(addr, secret, plan));
            self.pin.pin_self(self.cx, false);
            let summary = run?.summary();
            note(format!(
                "streams: {}/{} complete, {} stall(s), TTFB p50 {} ms p99 {} ms, total p50 {} ms \
                 p99 {} ms; the mock began {}",
                summary.complete,
                summary.streams,
                summary.stalls,
                dms(summary.ttfb_p50),
                dms(summary.ttfb_p99),
                dms(summary.total_p50),
                dms(summary.total_p99),
                self.mock.streams() - before
            ));
            row.streams = Some(summary);
            if let Some(peak) = peak {
                row.memory.push(("highest during the streams", peak));
            }
            if let Some(now) = pid.and_then(memory) {
                row.memory.push(("after the streams", now));
            }
        }
        if let (Some(secs), Serving::Tally(_)) = (self.opts.soak, serving) {
            let (run, samples) = self.soak(secret, &url, secs, pid)?;
            row.soak = Some(run);
            row.soak_memory = samples;
        }
        Ok(())
    }

    /// `secs` of steady load at `SOAK_RATE`, the memory of `pid` read every `SOAK_SAMPLE`.
    fn soak(
        &self,
        secret: &str,
        url: &str,
        secs: u64,
        pid: Option<u32>,
    ) -> Result<(Run, Vec<(u64, Memory)>)> {
        let oha = self.oha(secret);
        let load = Load::Rate(SOAK_RATE, secs, RATE_CONCURRENCY);
        // oha stops at `secs`; the sampling stops at this deadline whatever happens.
        let deadline = Instant::now() + Duration::from_secs(secs + 120);
        std::thread::scope(|scope| {
            let running = scope.spawn(|| oha.run("soak", url, load));
            let started = Instant::now();
            let mut samples = Vec::new();
            let mut next = started;
            while !running.is_finished() && Instant::now() < deadline {
                if Instant::now() >= next {
                    if let Some(now) = pid.and_then(memory) {
                        let at = started.elapsed().as_secs();
                        note(format!("soak: {at} s, {}", now.describe()));
                        samples.push((at, now));
                    }
                    next += SOAK_SAMPLE;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if let Some(now) = pid.and_then(memory) {
                samples.push((started.elapsed().as_secs(), now));
            }
            let run = running
                .join()
                .unwrap_or_else(|_| Err(anyhow!("the soak's oha run panicked")))?;
            Ok((run, samples))
        })
    }

    /// Warm-up and latency (concurrency 1) through each address in turn, then throughput
    /// through all of them at once: one oha per address, the concurrency split among them.
    fn measure(&self, label: &str, secret: &str, addrs: &[SocketAddr]) -> Result<Measured> {
        let oha = Oha {
            cx: self.cx,
            pin: self.pin,
            json_flag: self.json_flag,
            secret,
        };
        let plan = self.plan;
        let urls: Vec<String> = addrs
            .iter()
            .map(|addr| format!("http://{addr}/v1/chat/completions"))
            .collect();
        let named = |phase: &str, i: usize| {
            if urls.len() == 1 {
                phase.to_string()
            } else {
                format!("{phase}, instance {}", i + 1)
            }
        };
        let mut measured = Measured {
            label: label.to_string(),
            addrs: addrs.to_vec(),
            warmup: Vec::new(),
            latency: Vec::new(),
            throughput: Vec::new(),
            shares: split(plan.concurrency, urls.len()),
            rate: None,
            streams: None,
            memory: Vec::new(),
            soak: None,
            soak_memory: Vec::new(),
        };
        for (i, url) in urls.iter().enumerate() {
            let load = Load::Count(plan.warmup, 1);
            measured
                .warmup
                .push(oha.run(&named("warm-up", i), url, load)?);
        }
        for (i, url) in urls.iter().enumerate() {
            let load = Load::Count(plan.latency_requests, 1);
            measured
                .latency
                .push(oha.run(&named("latency", i), url, load)?);
        }
        let shares = &measured.shares;
        measured.throughput = std::thread::scope(|scope| {
            let running: Vec<_> = urls
                .iter()
                .zip(shares)
                .enumerate()
                .map(|(i, (url, c))| {
                    let (oha, label) = (&oha, named("throughput", i));
                    let load = Load::Seconds(plan.throughput_secs, *c);
                    scope.spawn(move || oha.run(&label, url, load))
                })
                .collect();
            running
                .into_iter()
                .map(|run| {
                    run.join()
                        .unwrap_or_else(|_| Err(anyhow!("an oha run panicked")))
                })
                .collect::<Result<Vec<_>>>()
        })?;
        Ok(measured)
    }

    fn sqlite(&self) -> Result<Backend> {
        let work = TempDir::new("tally-bench")?;
        let config = write_config(&work.path, &bench_config(self.mock.addr, None))?;
        step("start tally serve (SQLite in a temporary directory)");
        let mut server = Server::start(self.cx, self.tally, &work.path, &config, self.pin, None)?;
        note(format!("tally on http://{}", server.addr));
        let pid = server.pid();
        let outcome = self.run_sqlite(server.addr, pid, &work.path.join("data"));
        // The server is stopped before the report so its log is complete when we show it.
        server.stop();
        if outcome.is_err() {
            server.print_log_tail();
        }
        outcome
    }

    fn run_sqlite(&self, addr: SocketAddr, pid: Option<u32>, data_dir: &Path) -> Result<Backend> {
        let idle = pid.and_then(memory);
        let setup = Setup::create(addr, data_dir)?;
        let balance_before = setup.live_balance(addr)?;
        let upstream_before = self.mock.completions();
        step("through the gateway (SQLite, live key)");
        let mut row = self.measure("SQLite, 1 instance", &setup.secret, &[addr])?;
        self.extras(&mut row, &setup.secret, addr, Serving::Tally(pid), idle)?;
        let upstream_calls = self.mock.completions() - upstream_before;
        step("compare recorded usage with the 2xx answers");
        let recorded = setup.recorded_usage()?;
        let balance_after = setup.live_balance(addr)?;
        Ok(Backend {
            name: "SQLite",
            rows: vec![row],
            recorded,
            upstream_calls,
            spent_micros: balance_before - balance_after,
            database: None,
            stored: Vec::new(),
            views: Vec::new(),
            redis_metrics: None,
        })
    }

    /// The PostgreSQL runs on a database of their own, dropped at the end, also on error.
    fn postgres(&self, server_url: &str, instances: usize, redis: Option<&str>) -> Result<Backend> {
        step(format!(
            "create a fresh PostgreSQL database on {}",
            pg::redact(server_url)
        ));
        let db = FreshDatabase::create(self.cx, server_url, "tally_bench", "--postgres is given")?;
        let work = TempDir::new("tally-bench-pg")?;
        // A prefix of its own, so the run's Redis keys never meet another deployment's.
        let cluster = redis.map(|url| (url, format!("tally-bench-{}", std::process::id())));
        let config = write_config(
            &work.path,
            &bench_config(
                self.mock.addr,
                cluster
                    .as_ref()
                    .map(|(url, prefix)| (*url, prefix.as_str())),
            ),
        )?;
        if let Some((url, prefix)) = &cluster {
            note(format!(
                "redis_url = {} (key prefix {prefix}) for every PostgreSQL instance",
                pg::redact(url)
            ));
        }
        // Declared after `db`, so dropped (killed) before the database is.
        let mut servers = Vec::new();
        let outcome = self.run_postgres(
            &db,
            &work.path,
            &config,
            instances,
            cluster.is_some(),
            &mut servers,
        );
        if outcome.is_err() {
            for server in &servers {
                server.print_log_tail();
            }
        }
        for server in &mut servers {
            server.stop();
        }
        outcome
    }

    fn run_postgres(
        &self,
        db: &FreshDatabase,
        dir: &Path,
        config: &Path,
        instances: usize,
        redis: bool,
        servers: &mut Vec<Server>,
    ) -> Result<Backend> {
        let start = |i: usize, servers: &mut Vec<Server>| -> Result<SocketAddr> {
            let dir = dir.join(format!("instance-{i}"));
            fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            let server = Server::start(self.cx, self.tally, &dir, config, self.pin, Some(&db.url))?;
            note(format!("instance {i}: tally on http://{}", server.addr));
            let addr = server.addr;
            servers.push(server);
            Ok(addr)
        };
        step(format!(
            "start tally serve (PostgreSQL, database {})",
            db.name
        ));
        let first = start(1, servers)?;
        let pid = servers.first().and_then(Server::pid);
        let idle = pid.and_then(memory);
        let setup = Setup::create(first, &dir.join("instance-1").join("data"))?;
        let balance_before = live(&stored_balances(self.cx, db, &setup.namespace)?)?;
        let upstream_before = self.mock.completions();

        step("through the gateway (PostgreSQL, 1 instance, live key)");
        let mut row = self.measure("PostgreSQL, 1 instance", &setup.secret, &[first])?;
        self.extras(&mut row, &setup.secret, first, Serving::Tally(pid), idle)?;
        let mut rows = vec![row];
        if instances > 1 {
            step(format!(
                "start {} more instance(s) on the same database",
                instances - 1
            ));
            for i in 2..=instances {
                start(i, servers)?;
            }
            let addrs: Vec<SocketAddr> = servers.iter().map(|server| server.addr).collect();
            step(format!(
                "through the gateway (PostgreSQL, {instances} instances, live key)"
            ));
            rows.push(self.measure(
                &format!("PostgreSQL, {instances} instances"),
                &setup.secret,
                &addrs,
            )?);
        }
        let upstream_calls = self.mock.completions() - upstream_before;

        step("compare recorded usage with the 2xx answers (every instance: one database)");
        let recorded = setup.recorded_usage()?;
        let views = servers
            .iter()
            .map(|server| Ok((server.addr, setup.live_balance(server.addr)?)))
            .collect::<Result<Vec<_>>>()?;
        let redis_metrics = redis.then(|| metric_lines(first, "tally_redis_up"));

        step("stop every instance (SIGTERM), then compare the stored balance with the ledger");
        for server in servers.iter_mut() {
            server.terminate(STOP_GRACE);
        }
        let stored = stored_balances(self.cx, db, &setup.namespace)?;
        let balance_after = live(&stored)?;
        Ok(Backend {
            name: "PostgreSQL",
            rows,
            recorded,
            upstream_calls,
            spent_micros: balance_before - balance_after,
            database: Some(db.name.clone()),
            stored,
            views,
            redis_metrics,
        })
    }
}

/// What answers at the address [`Bench::extras`] measures, with its process id when known.
#[derive(Clone, Copy)]
enum Serving {
    /// The mock itself (threads of this process: no memory of its own to read).
    Direct,
    /// nginx.
    Proxy(Option<u32>),
    /// A tally instance: the soak runs only here.
    Tally(Option<u32>),
}

/// The concurrency of each of `n` oha runs sharing `total`: as even as it gets.
fn split(total: u32, n: usize) -> Vec<u32> {
    let n = u32::try_from(n.max(1)).unwrap_or(u32::MAX);
    (0..n)
        .map(|i| total / n + u32::from(i < total % n))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// tools

/// CPU pinning with `taskset`, when it exists and there are at least two CPUs to split.
pub(crate) struct Pinning {
    enabled: bool,
    cpus: usize,
}

impl Pinning {
    pub(crate) fn detect(cx: &Ctx) -> Self {
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
        Self { enabled, cpus }
    }

    /// Every thread of this process (the mock's and the stream client's) on CPU 1 (`on`), or
    /// back on every CPU: during the streams the client shares CPU 1 with the mock, as oha
    /// does in the other runs, and CPU 0 is the gateway's. Best effort: a failure only means
    /// the figures include contention.
    pub(crate) fn pin_self(&self, cx: &Ctx, on: bool) {
        if !self.enabled {
            return;
        }
        let cpus = if on {
            "1".to_string()
        } else {
            format!("0-{}", self.cpus.saturating_sub(1))
        };
        let pinned = cx
            .cmd("taskset")
            .args(["-a", "-p", "-c", &cpus, &std::process::id().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !pinned {
            note(format!(
                "could not set this process's CPUs to {cpus} (taskset -a -p)"
            ));
        }
    }

    /// `program` on `cpu` when pinning is on.
    pub(crate) fn command(
        &self,
        cx: &Ctx,
        cpu: u32,
        program: impl AsRef<std::ffi::OsStr>,
    ) -> Command {
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

/// The config of the benchmark's instances: the `[[catalog]]` entry for the mock (an
/// OpenAI-protocol API whose live upstream is the mock) and, given `(redis_url, prefix)`, Redis
/// for the per-key limits under a key prefix of the run's own.
fn bench_config(mock: SocketAddr, redis: Option<(&str, &str)>) -> String {
    // Top-level keys come before the first table. A JSON string is a valid TOML basic string.
    let redis_url = redis.map_or_else(String::new, |(url, _)| {
        format!("redis_url = {}\n", Value::from(url))
    });
    let cluster = redis.map_or_else(String::new, |(_, prefix)| {
        format!("\n[cluster]\nredis_prefix = {}\n", Value::from(prefix))
    });
    format!(
        r#"# Written by `cargo xtask bench-gateway`.
{redis_url}
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
{cluster}"#
    )
}

/// Writes `tally.toml` in `dir` and returns its path.
fn write_config(dir: &Path, text: &str) -> Result<PathBuf> {
    let path = dir.join("tally.toml");
    fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
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
    /// `tally` pinned to CPU 0 (with every other instance), on SQLite in `dir` or on
    /// `database_url`.
    fn start(
        cx: &Ctx,
        tally: &Path,
        dir: &Path,
        config: &Path,
        pin: &Pinning,
        database_url: Option<&str>,
    ) -> Result<Self> {
        Self::spawn(pin.command(cx, 0, tally), dir, config, database_url)
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

    /// The process id of `tally serve` (`taskset` runs it in its own process).
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Asks the server to stop (SIGTERM: it finishes the calls in flight and gives back what
    /// it holds, as an operator's stop would) and kills it if it has not exited within `grace`.
    fn terminate(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let signalled = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        let deadline = Instant::now() + grace;
        while signalled && Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(_) => break,
            }
        }
        note(format!(
            "tally on {} did not stop within {} s of SIGTERM; killing it",
            self.addr,
            grace.as_secs()
        ));
        let _ = child.kill();
        let _ = child.wait();
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
    /// Through the server at `addr`, whose data directory (with the setup token) is `data_dir`.
    fn create(addr: SocketAddr, data_dir: &Path) -> Result<Self> {
        step("set up the operator (setup token), grant live credits, create a live key");
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
        let setup = Self {
            addr,
            namespace,
            key_id: text(&created["key"]["id"], "key.id")?,
            secret: text(&created["secret"], "secret")?,
            token,
        };
        note(format!(
            "namespace {}, key {} ({}…)",
            setup.namespace,
            setup.key_id,
            &setup.secret[..setup.secret.len().min(12)]
        ));
        Ok(setup)
    }

    fn get(&self, path: &str) -> Result<Value> {
        call(self.addr, "GET", path, Some(&self.token), None)
    }

    /// The live balance as the instance at `addr` reports it (GET credits).
    fn live_balance(&self, addr: SocketAddr) -> Result<i64> {
        let balances = call(
            addr,
            "GET",
            &format!("/api/v1/namespaces/{}/credits", self.namespace),
            Some(&self.token),
            None,
        )?;
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
                    if item["request_type"] == "stream" {
                        recorded.streams_ok += 1;
                    } else {
                        recorded.ok += 1;
                    }
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
    /// 2xx calls that were not streamed (`request_type` "sync").
    ok: u64,
    /// 2xx streamed calls (`request_type` "stream").
    streams_ok: u64,
    /// Every other status, streamed or not.
    other: BTreeMap<u64, u64>,
    cost_micros: i64,
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL: what the shared database holds

/// One environment of the benchmark namespace as stored in PostgreSQL.
#[derive(Debug, PartialEq)]
struct StoredBalance {
    environment: String,
    /// `balances.balance_micros`; None when the ledger has entries but there is no balance row.
    balance_micros: Option<i64>,
    /// `balances.reserved_micros` (credit leases), where the schema has that column.
    reserved_micros: Option<i64>,
    /// The sum of `ledger_entries.amount_micros`.
    ledger_micros: i64,
    entries: i64,
}

/// The query behind [`stored_balances`]: one JSON array, an element per environment that has a
/// balance row or ledger entries. The balance row comes whole (`to_jsonb`), so columns that a
/// later schema adds (`reserved_micros`) are read where they exist.
fn stored_balances_sql(namespace: &str) -> Result<String> {
    // The id goes into the SQL text (psql -c takes no parameters): only id characters pass.
    if namespace.is_empty()
        || !namespace
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!("unexpected namespace id `{namespace}`");
    }
    Ok(format!(
        "SELECT COALESCE(json_agg(row_to_json(x) ORDER BY x.environment), '[]'::json) FROM ( \
           SELECT e.environment, \
             (SELECT to_jsonb(b) FROM balances b \
                WHERE b.namespace_id = '{namespace}' AND b.environment = e.environment) AS balance, \
             (SELECT COALESCE(SUM(l.amount_micros), 0)::bigint FROM ledger_entries l \
                WHERE l.namespace_id = '{namespace}' AND l.environment = e.environment) AS ledger, \
             (SELECT COUNT(*) FROM ledger_entries l \
                WHERE l.namespace_id = '{namespace}' AND l.environment = e.environment) AS entries \
           FROM (SELECT environment FROM balances WHERE namespace_id = '{namespace}' \
                 UNION SELECT environment FROM ledger_entries WHERE namespace_id = '{namespace}') e \
         ) x"
    ))
}

fn stored_balances(cx: &Ctx, db: &FreshDatabase, namespace: &str) -> Result<Vec<StoredBalance>> {
    let out = db.query(cx, &stored_balances_sql(namespace)?)?;
    parse_stored_balances(out.trim())
        .with_context(|| format!("cannot read the stored balances from psql's output: {out}"))
}

fn parse_stored_balances(json: &str) -> Result<Vec<StoredBalance>> {
    let doc: Value = serde_json::from_str(json)?;
    let items = doc.as_array().context("not a JSON array")?;
    items
        .iter()
        .map(|item| {
            let balance = &item["balance"];
            Ok(StoredBalance {
                environment: text(&item["environment"], "environment")?,
                balance_micros: balance["balance_micros"].as_i64(),
                reserved_micros: balance["reserved_micros"].as_i64(),
                ledger_micros: item["ledger"].as_i64().context("no ledger sum")?,
                entries: item["entries"].as_i64().context("no entry count")?,
            })
        })
        .collect()
}

/// "1 ledger entry", "2 ledger entries".
fn entries(n: i64) -> String {
    format!("{n} ledger {}", if n == 1 { "entry" } else { "entries" })
}

/// The stored live balance.
fn live(stored: &[StoredBalance]) -> Result<i64> {
    stored
        .iter()
        .find(|balance| balance.environment == "live")
        .and_then(|balance| balance.balance_micros)
        .context("the database has no live balance for the benchmark namespace")
}

/// The samples of the metric `name` in the instance's `/metrics`, or what went wrong.
fn metric_lines(addr: SocketAddr, name: &str) -> Vec<String> {
    match http1::request(addr, "GET", "/metrics", None, None) {
        Ok(response) if response.status == 200 => String::from_utf8_lossy(&response.body)
            .lines()
            .filter(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with([' ', '{']))
            })
            .map(str::to_string)
            .collect(),
        Ok(response) => vec![format!("(GET /metrics: HTTP {})", response.status)],
        Err(err) => vec![format!("(GET /metrics: {err})")],
    }
}

// ---------------------------------------------------------------------------------------------
// oha

enum Load {
    /// This many requests at this concurrency.
    Count(u64, u32),
    /// This many seconds at this concurrency.
    Seconds(u64, u32),
    /// This many requests per second for this many seconds, at most this many in flight.
    Rate(u32, u64, u32),
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
            // --latency-correction: a request delayed by an earlier slow one is timed from
            // when it was due, not from when it was sent (no coordinated omission).
            Load::Rate(q, s, c) => cmd.args([
                "-q",
                &q.to_string(),
                "-z",
                &format!("{s}s"),
                "-c",
                &c.to_string(),
                "-w",
                "--latency-correction",
            ]),
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

/// Milliseconds with three decimals, or "-".
fn dms(d: Option<Duration>) -> String {
    ms(d.map(|d| d.as_secs_f64()))
}

// ---------------------------------------------------------------------------------------------
// memory

/// A process's resident memory (`/proc/PID/status`), in KiB.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Memory {
    /// VmRSS: resident now.
    rss_kib: u64,
    /// VmHWM: the highest resident so far.
    hwm_kib: u64,
}

impl Memory {
    fn describe(&self) -> String {
        format!("VmRSS {}, VmHWM {}", mib(self.rss_kib), mib(self.hwm_kib))
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// The memory of process `pid`, if it is still running.
fn memory(pid: u32) -> Option<Memory> {
    parse_status(&fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

fn parse_status(text: &str) -> Option<Memory> {
    let kib = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some(Memory {
        rss_kib: kib("VmRSS:")?,
        hwm_kib: kib("VmHWM:")?,
    })
}

/// Runs `f` while a thread reads the memory of `pid` every 100 ms; returns what `f` returned
/// and the reading with the highest VmRSS.
fn sampled<T>(pid: Option<u32>, f: impl FnOnce() -> T) -> (T, Option<Memory>) {
    let Some(pid) = pid else {
        return (f(), None);
    };
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            // Bounded even if `stop` were never set.
            let deadline = Instant::now() + Duration::from_secs(3600);
            let mut peak: Option<Memory> = None;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                if let Some(now) = memory(pid) {
                    if peak.is_none_or(|p| now.rss_kib > p.rss_kib) {
                        peak = Some(now);
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            peak
        });
        let out = f();
        stop.store(true, Ordering::Relaxed);
        (out, sampler.join().ok().flatten())
    })
}

// ---------------------------------------------------------------------------------------------
// report

/// What one configuration measured. With several instances: a warm-up and a latency run per
/// instance (one after the other) and a throughput run per instance (all at once).
struct Measured {
    label: String,
    addrs: Vec<SocketAddr>,
    warmup: Vec<Run>,
    latency: Vec<Run>,
    throughput: Vec<Run>,
    /// The concurrency of each throughput run.
    shares: Vec<u32>,
    /// `--rate`: the fixed-rate run.
    rate: Option<Run>,
    /// `--stream`: the streams.
    streams: Option<stream::Summary>,
    /// The serving process's memory at points of the run (none for direct).
    memory: Vec<(&'static str, Memory)>,
    /// `--soak`: the run and the memory read during it (seconds into it).
    soak: Option<Run>,
    soak_memory: Vec<(u64, Memory)>,
}

impl Measured {
    fn runs(&self) -> impl Iterator<Item = &Run> {
        self.warmup
            .iter()
            .chain(&self.latency)
            .chain(&self.throughput)
            .chain(&self.rate)
            .chain(&self.soak)
    }

    /// Streams that got every event and `[DONE]`.
    fn streams_complete(&self) -> u64 {
        self.streams
            .as_ref()
            .map_or(0, |s| u64::try_from(s.complete).unwrap_or(u64::MAX))
    }

    /// Requests per second of the throughput runs, summed.
    fn rps(&self) -> f64 {
        self.throughput.iter().map(|run| run.rps).sum()
    }

    /// The slowest instance's p50 at concurrency 1 (the only one's, with one).
    fn p50(&self) -> Option<f64> {
        slowest(self.latency.iter().map(|run| run.p50))
    }

    fn p99(&self) -> Option<f64> {
        slowest(self.latency.iter().map(|run| run.p99))
    }

    fn ok(&self) -> u64 {
        self.runs().map(|run| run.ok).sum()
    }

    fn sent(&self) -> u64 {
        self.runs().map(Run::sent).sum()
    }
}

/// The largest of the figures; none when any run had no answer to take a percentile of.
fn slowest(figures: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    figures
        .collect::<Option<Vec<f64>>>()?
        .into_iter()
        .reduce(f64::max)
}

/// One backend's runs and what the server recorded for them.
struct Backend {
    name: &'static str,
    rows: Vec<Measured>,
    recorded: Recorded,
    upstream_calls: u64,
    /// Live balance before the runs minus after them.
    spent_micros: i64,
    /// PostgreSQL: the run's database.
    database: Option<String>,
    /// PostgreSQL: the namespace's stored balances and ledger sums once every instance stopped.
    stored: Vec<StoredBalance>,
    /// The live balance each instance reported (GET credits) before it stopped.
    views: Vec<(SocketAddr, i64)>,
    /// With `--redis`: the `tally_redis_up` samples of the first instance.
    redis_metrics: Option<Vec<String>>,
}

impl Backend {
    /// Prints the correctness checks and adds the failed ones to `failures`.
    fn print_checks(&self, failures: &mut Vec<String>) {
        let name = self.name;
        let answered: u64 = self.rows.iter().map(Measured::ok).sum();
        let sent: u64 = self.rows.iter().map(Measured::sent).sum();
        let instances = self
            .rows
            .iter()
            .map(|row| row.addrs.len())
            .max()
            .unwrap_or(1);
        let mut check = |ok: bool, failure: String| {
            if ok {
                "(equal)"
            } else {
                failures.push(failure);
                "(MISMATCH: FAILED)"
            }
        };
        println!();
        println!(
            "Usage check, {name} ({}all gateway runs incl. warm-up): {sent} sent, {answered} answered 2xx",
            if instances > 1 {
                format!("{instances} instances, one database; ")
            } else {
                String::new()
            }
        );
        let recorded = self.recorded.ok;
        let verdict = check(
            recorded == answered,
            format!("{name}: {recorded} usage events recorded with a 2xx status, but oha counted {answered} 2xx answers"),
        );
        println!("  usage events recorded with a 2xx status, not streamed: {recorded} {verdict}");
        if self.rows.iter().any(|row| row.streams.is_some()) {
            let complete: u64 = self.rows.iter().map(Measured::streams_complete).sum();
            let recorded = self.recorded.streams_ok;
            let verdict = check(
                recorded == complete,
                format!("{name}: {recorded} streamed usage events recorded with a 2xx status, but {complete} streams got [DONE]"),
            );
            println!(
                "  streamed usage events with a 2xx status: {recorded}; streams that got every event and [DONE]: {complete} {verdict}"
            );
        }
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
        let (spent, costs) = (self.spent_micros, self.recorded.cost_micros);
        let verdict = check(
            spent == costs,
            format!("{name}: the live balance dropped by {spent} micros, but the recorded usage costs {costs} micros"),
        );
        let source = if self.database.is_some() {
            "stored balance before - after, read from the database"
        } else {
            "balance before - after"
        };
        println!(
            "  live credits spent ({source}): {spent} micros; sum of usage costs: {costs} micros {verdict}"
        );
        let Some(database) = &self.database else {
            return;
        };
        println!(
            "Stored balance vs ledger, {name}, after every instance stopped (database {database}):"
        );
        if self.stored.is_empty() {
            let verdict = check(
                false,
                format!(
                    "{name}: the benchmark namespace has neither balance rows nor ledger entries"
                ),
            );
            println!("  no balance rows and no ledger entries {verdict}");
        }
        for stored in &self.stored {
            let env = &stored.environment;
            let ledger = stored.ledger_micros;
            let line = match stored.balance_micros {
                Some(balance) => {
                    let verdict = check(
                        balance == ledger,
                        format!("{name}, {env}: the stored balance is {balance} micros, but the ledger sums to {ledger} micros"),
                    );
                    format!("stored balance {balance} micros, ledger sum {ledger} micros over {} {verdict}", entries(stored.entries))
                }
                None => {
                    let verdict = check(
                        ledger == 0,
                        format!(
                            "{name}, {env}: no balance row, but the ledger sums to {ledger} micros"
                        ),
                    );
                    format!(
                        "no balance row, ledger sum {ledger} micros over {} {verdict}",
                        entries(stored.entries)
                    )
                }
            };
            println!("  {env}: {line}");
            if let Some(reserved) = stored.reserved_micros {
                println!("  {env}: still reserved by credit leases: {reserved} micros");
            }
        }
        if !self.views.is_empty() {
            let views: Vec<String> = self
                .views
                .iter()
                .enumerate()
                .map(|(i, (addr, balance))| format!("instance {} ({addr}) {balance}", i + 1))
                .collect();
            println!(
                "  live balance each instance reported before stopping (GET credits, micros; \
                 information, not a check): {}",
                views.join(", ")
            );
        }
        if let Some(lines) = &self.redis_metrics {
            if lines.is_empty() {
                println!(
                    "  Redis: redis_url was given, but instance 1 has no tally_redis_up metric \
                     (this build does not use Redis)"
                );
            } else {
                println!("  Redis: instance 1 reports {}", lines.join(", "));
            }
        }
    }
}

struct Report<'a> {
    pinned: bool,
    plan: Plan,
    opts: &'a Options,
    direct: Measured,
    /// nginx proxying to the mock; `no_baseline` says why there is none.
    baseline: Option<Measured>,
    no_baseline: Option<String>,
    backends: Vec<Backend>,
}

impl Report<'_> {
    /// direct, nginx, then every gateway row.
    fn rows(&self) -> impl Iterator<Item = &Measured> {
        std::iter::once(&self.direct)
            .chain(&self.baseline)
            .chain(self.backends.iter().flat_map(|b| &b.rows))
    }

    /// The gateway rows.
    fn gateways(&self) -> impl Iterator<Item = &Measured> {
        self.backends.iter().flat_map(|b| &b.rows)
    }

    /// Prints the figures and the checks; returns the checks that failed.
    fn print(&self) -> Vec<String> {
        let plan = self.plan;
        let direct = &self.direct;
        let added = |g: Option<f64>, d: Option<f64>| match (g, d) {
            (Some(g), Some(d)) => format!("{:+.3}", (g - d) * 1000.0),
            _ => "-".to_string(),
        };
        let several = self.gateways().any(|row| row.addrs.len() > 1);
        println!();
        println!(
            "Gateway benchmark: POST /v1/chat/completions, live key, mock upstream{}",
            match (self.pinned, several) {
                (true, true) => "; every tally instance and nginx on CPU 0, every oha on CPU 1",
                (true, false) => "; tally and nginx on CPU 0, oha on CPU 1",
                (false, _) => "; no CPU pinning",
            }
        );
        println!(
            "req/s at concurrency {} for {} s; latency at concurrency 1 over {} requests after {} \
             warm-up; 2xx / sent over all runs; x nginx = req/s over nginx's",
            plan.concurrency, plan.throughput_secs, plan.latency_requests, plan.warmup
        );
        if let Some(why) = &self.no_baseline {
            println!("no nginx row: {why}");
        }
        println!();
        println!(
            "{:<34} {:>9} {:>9} {:>9} {:>10} {:>10} {:>8} {:>17}",
            "", "req/s", "p50 ms", "p99 ms", "added p50", "added p99", "x nginx", "2xx / sent"
        );
        let nginx_rps = self.baseline.as_ref().map(Measured::rps);
        for (i, row) in self.rows().enumerate() {
            let (added_p50, added_p99) = if i == 0 {
                ("-".to_string(), "-".to_string())
            } else {
                (
                    added(row.p50(), direct.p50()),
                    added(row.p99(), direct.p99()),
                )
            };
            let ratio = match nginx_rps {
                Some(n) if i > 0 && n > 0.0 => format!("{:.2}x", row.rps() / n),
                _ => "-".to_string(),
            };
            let mark = if row.addrs.len() > 1 { " *" } else { "" };
            println!(
                "{:<34} {:>9.0} {:>9} {:>9} {:>10} {:>10} {:>8} {:>17}",
                format!("{}{mark}", row.label),
                row.rps(),
                ms(row.p50()),
                ms(row.p99()),
                added_p50,
                added_p99,
                ratio,
                format!("{}/{}", row.ok(), row.sent())
            );
        }
        for row in self.gateways() {
            if row.addrs.len() < 2 {
                continue;
            }
            let shares: Vec<String> = row.shares.iter().map(u32::to_string).collect();
            println!();
            println!(
                "* {}: req/s is the sum of {} oha runs at once, one per instance (concurrency {});\n  \
                 p50/p99 are the slowest instance's, each instance measured alone in turn:",
                row.label,
                row.addrs.len(),
                shares.join(" + ")
            );
            for (i, (addr, (latency, throughput))) in row
                .addrs
                .iter()
                .zip(row.latency.iter().zip(&row.throughput))
                .enumerate()
            {
                println!(
                    "    instance {} ({addr}): p50 {} ms, p99 {} ms, {:.0} req/s",
                    i + 1,
                    ms(latency.p50),
                    ms(latency.p99),
                    throughput.rps
                );
            }
        }
        self.print_rate();
        let mut failures = Vec::new();
        self.print_streams(&mut failures);
        self.print_memory();
        for row in self.rows() {
            let mut phases = vec![
                ("warm-up", &row.warmup[..]),
                ("c=1", &row.latency[..]),
                ("throughput", &row.throughput[..]),
            ];
            if let Some(rate) = &row.rate {
                phases.push(("fixed rate", std::slice::from_ref(rate)));
            }
            if let Some(soak) = &row.soak {
                phases.push(("soak", std::slice::from_ref(soak)));
            }
            for (phase, runs) in phases {
                for (i, run) in runs.iter().enumerate() {
                    let problems = run.problems();
                    if problems.is_empty() {
                        continue;
                    }
                    let instance = if runs.len() > 1 {
                        format!(", instance {}", i + 1)
                    } else {
                        String::new()
                    };
                    println!("  not 2xx ({}, {phase}{instance}): {problems}", row.label);
                }
            }
        }

        for backend in &self.backends {
            backend.print_checks(&mut failures);
        }
        failures
    }

    /// `--rate`: achieved rate and latency of each target at the same fixed rate.
    fn print_rate(&self) {
        let Some(rate) = self.opts.rate else {
            return;
        };
        let direct = self.direct.rate.as_ref();
        println!();
        println!(
            "Fixed rate: {rate} req/s asked for {} s, at most {RATE_CONCURRENCY} in flight; \
             latency from when each request was due (oha --latency-correction)",
            self.plan.rate_secs
        );
        println!(
            "{:<34} {:>9} {:>9} {:>9} {:>10} {:>10} {:>17}",
            "", "req/s", "p50 ms", "p99 ms", "added p50", "added p99", "2xx / sent"
        );
        for (i, row) in self.rows().enumerate() {
            let Some(run) = &row.rate else {
                continue;
            };
            // Row 0 is direct itself.
            let added = |g: Option<f64>, d: Option<f64>| match (g, d) {
                (Some(g), Some(d)) if i > 0 => format!("{:+.3}", (g - d) * 1000.0),
                _ => "-".to_string(),
            };
            println!(
                "{:<34} {:>9.0} {:>9} {:>9} {:>10} {:>10} {:>17}",
                row.label,
                run.rps,
                ms(run.p50),
                ms(run.p99),
                added(run.p50, direct.and_then(|d| d.p50)),
                added(run.p99, direct.and_then(|d| d.p99)),
                format!("{}/{}", run.ok, run.sent())
            );
        }
    }

    /// `--stream`: TTFB and total per target, what the gateways add over direct and over
    /// nginx, stalls and failures. A stream that did not complete is a failed check.
    fn print_streams(&self, failures: &mut Vec<String>) {
        if !self.opts.stream {
            return;
        }
        let plan = self.plan.streams;
        println!();
        println!(
            "Streams: {} at once (started over {} ms), each {} content chunks {} ms apart, a \
             usage chunk and [DONE];\nTTFB = connect to first event, total = connect to end; \
             percentiles over complete streams; stall = a gap > {} ms between two reads",
            plan.streams,
            plan.ramp.as_millis(),
            STREAM_CHUNKS,
            crate::mock::STREAM_PACE.as_millis(),
            plan.stall.as_millis()
        );
        println!(
            "{:<34} {:>11} {:>13} {:>11} {:>11} {:>11} {:>11} {:>11}",
            "",
            "complete",
            "stalls (in)",
            "max gap ms",
            "TTFB p50",
            "TTFB p99",
            "total p50",
            "total p99"
        );
        for row in self.rows() {
            let Some(s) = &row.streams else {
                continue;
            };
            println!(
                "{:<34} {:>11} {:>13} {:>11} {:>11} {:>11} {:>11} {:>11}",
                row.label,
                format!("{}/{}", s.complete, s.streams),
                format!("{} ({})", s.stalls, s.stalled_streams),
                dms(Some(s.max_gap)),
                dms(s.ttfb_p50),
                dms(s.ttfb_p99),
                dms(s.total_p50),
                dms(s.total_p99)
            );
        }
        let added = |g: Option<Duration>, base: Option<Duration>| match (g, base) {
            (Some(g), Some(b)) => format!("{:+.3}", (g.as_secs_f64() - b.as_secs_f64()) * 1e3),
            _ => "-".to_string(),
        };
        let baselines = std::iter::once(&self.direct).chain(&self.baseline);
        for base in baselines {
            let Some(b) = &base.streams else {
                continue;
            };
            for row in self.gateways() {
                let Some(s) = &row.streams else {
                    continue;
                };
                println!(
                    "  {} over {}: TTFB p50 {} ms, p99 {} ms; total p50 {} ms, p99 {} ms",
                    row.label,
                    base.label,
                    added(s.ttfb_p50, b.ttfb_p50),
                    added(s.ttfb_p99, b.ttfb_p99),
                    added(s.total_p50, b.total_p50),
                    added(s.total_p99, b.total_p99)
                );
            }
        }
        for row in self.rows() {
            let Some(s) = &row.streams else {
                continue;
            };
            if s.complete == s.streams {
                continue;
            }
            let reasons: Vec<String> = s
                .failures
                .iter()
                .take(5)
                .map(|(why, n)| format!("{n}x {why}"))
                .collect();
            println!(
                "  incomplete ({}): {} of {} (MISMATCH: FAILED): {}",
                row.label,
                s.streams - s.complete,
                s.streams,
                reasons.join("; ")
            );
            failures.push(format!(
                "{}: {} of {} streams did not get every event and [DONE]",
                row.label,
                s.streams - s.complete,
                s.streams
            ));
        }
    }

    /// The memory of nginx and of each first tally instance at the points read.
    fn print_memory(&self) {
        let rows: Vec<&Measured> = self.rows().filter(|r| !r.memory.is_empty()).collect();
        if rows.is_empty() {
            return;
        }
        println!();
        println!("Memory of the serving process (/proc/PID/status; VmHWM = highest so far):");
        for row in rows {
            println!("  {}:", row.label);
            for (when, mem) in &row.memory {
                println!("    {when:<28} {}", mem.describe());
            }
            if !row.soak_memory.is_empty() {
                let samples: Vec<String> = row
                    .soak_memory
                    .iter()
                    .map(|(at, mem)| format!("{at} s {}", mib(mem.rss_kib)))
                    .collect();
                println!(
                    "    soak at {SOAK_RATE} req/s, VmRSS: {}",
                    samples.join(", ")
                );
                if let (Some(first), Some(last)) = (row.soak_memory.first(), row.soak_memory.last())
                {
                    let grew = last.1.rss_kib as f64 - first.1.rss_kib as f64;
                    println!(
                        "    soak: VmRSS {:+.1} MiB from the first reading to the last, VmHWM {}",
                        grew / 1024.0,
                        mib(last.1.hwm_kib)
                    );
                }
            }
        }
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
        let config = bench_config(([127, 0, 0, 1], 4321).into(), None);
        assert!(config.contains(r#"url = "http://127.0.0.1:4321""#));
        assert!(config.contains(r#"models = ["bench-model"]"#));
        assert!(!config.contains("redis_url"));
        assert!(!config.contains("[cluster]"));
    }

    #[test]
    fn the_config_with_redis_sets_the_url_before_any_table_and_a_prefix() {
        let config = bench_config(
            ([127, 0, 0, 1], 4321).into(),
            Some((r#"redis://127.0.0.1:6379/0?x="y""#, "tally-bench-7")),
        );
        let url_at = config.find("redis_url = ").unwrap();
        assert!(url_at < config.find("[[catalog]]").unwrap());
        assert!(config.contains(r#"redis_url = "redis://127.0.0.1:6379/0?x=\"y\"""#));
        assert!(config.ends_with("[cluster]\nredis_prefix = \"tally-bench-7\"\n"));
    }

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|arg| arg.to_string()).collect()
    }

    #[test]
    fn reads_the_options_in_both_spellings() {
        let opts = Options::parse(&args(&[
            "--quick",
            "--postgres",
            "postgres://postgres@127.0.0.1:5432/test",
            "--instances=2",
            "--redis",
            "redis://127.0.0.1:6379/0",
        ]))
        .unwrap();
        assert_eq!(
            opts,
            Options {
                quick: true,
                postgres: Some("postgres://postgres@127.0.0.1:5432/test".into()),
                instances: 2,
                redis: Some("redis://127.0.0.1:6379/0".into()),
                stream: false,
                rate: None,
                soak: None,
            }
        );
        let more = Options::parse(&args(&["--stream", "--rate", "2000", "--soak=600"])).unwrap();
        assert_eq!(
            (more.stream, more.rate, more.soak, more.postgres),
            (true, Some(2000), Some(600), None)
        );
        let plain = Options::parse(&[]).unwrap();
        assert_eq!(
            (plain.quick, plain.instances, plain.postgres),
            (false, 1, None)
        );
    }

    #[test]
    fn refuses_options_that_make_no_sense() {
        for bad in [
            &["--instances", "2"][..],
            &["--redis", "redis://h"],
            &["--postgres"],
            &["--postgres", "postgres://h/db", "--instances", "0"],
            &["--postgres", "postgres://h/db", "--instances", "two"],
            &["--quick=yes"],
            &["--fast"],
            &["--stream=yes"],
            &["--rate", "0"],
            &["--rate", "fast"],
            &["--rate"],
            &["--soak", "-1"],
        ] {
            assert!(Options::parse(&args(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn reads_resident_memory_from_proc_status() {
        let status =
            "Name:\ttally\nVmPeak:\t  900000 kB\nVmHWM:\t   71234 kB\nVmRSS:\t   29876 kB\n";
        assert_eq!(
            parse_status(status),
            Some(Memory {
                rss_kib: 29876,
                hwm_kib: 71234
            })
        );
        assert_eq!(parse_status("Name:\tkthreadd\n"), None);
        let mine = memory(std::process::id()).unwrap();
        assert!(mine.rss_kib > 0 && mine.hwm_kib >= mine.rss_kib);
    }

    #[test]
    fn the_direct_runs_send_a_token_of_a_key_s_length() {
        assert_eq!(DIRECT_SECRET.len(), "tk_live_".len() + 40);
    }

    #[test]
    fn splits_the_concurrency_among_the_instances() {
        assert_eq!(split(32, 1), vec![32]);
        assert_eq!(split(32, 2), vec![16, 16]);
        assert_eq!(split(32, 3), vec![11, 11, 10]);
        assert_eq!(split(32, 5).iter().sum::<u32>(), 32);
    }

    #[test]
    fn the_slowest_instance_gives_the_latency_unless_one_had_no_answer() {
        assert_eq!(
            slowest([Some(0.2), Some(0.5), Some(0.3)].into_iter()),
            Some(0.5)
        );
        assert_eq!(slowest([Some(0.2), None].into_iter()), None);
    }

    #[test]
    fn reads_stored_balances_with_and_without_leases() {
        let json = r#"[
            {"environment": "live", "balance": {"namespace_id": "ns", "environment": "live",
             "balance_micros": 990, "reserved_micros": 30, "updated_at": 1}, "ledger": 990, "entries": 12},
            {"environment": "test", "balance": {"balance_micros": 10000000}, "ledger": 10000000, "entries": 1},
            {"environment": "x", "balance": null, "ledger": 0, "entries": 0}
        ]"#;
        let stored = parse_stored_balances(json).unwrap();
        assert_eq!(stored[0].balance_micros, Some(990));
        assert_eq!(stored[0].reserved_micros, Some(30));
        assert_eq!(stored[1].reserved_micros, None);
        assert_eq!(stored[2].balance_micros, None);
        assert_eq!(live(&stored).unwrap(), 990);
        assert!(parse_stored_balances("[]").unwrap().is_empty());
    }

    #[test]
    fn only_an_id_goes_into_the_balance_query() {
        let sql = stored_balances_sql("0192-abc_DEF").unwrap();
        assert!(sql.contains("b.namespace_id = '0192-abc_DEF'"));
        assert!(stored_balances_sql("x' OR '1'='1").is_err());
        assert!(stored_balances_sql("").is_err());
    }
}
