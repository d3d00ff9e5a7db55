//! Developer tasks behind `cargo xtask …`.
//!
//! Policy: the two product commands, `cargo xtask run` and `cargo xtask test`, work on a fresh
//! machine. They install what they need (Rust target, Trunk, wasm-bindgen-cli, and for
//! the browser suite chromium and the e2e Node packages) and skip whatever is already there, so a
//! second run costs only the checks. Every step is printed as `==> …` and the first failure stops
//! the task with a message saying what failed and what to do about it.
//!
//! Trunk must never download tools (the machines have no general internet access): the tools it
//! uses are installed here at the versions Cargo.lock and Trunk.toml pin, and Trunk runs with
//! `--offline`.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

mod bench;
mod compress;
mod http1;
mod mock;
mod nginx;
mod pg;
mod schemathesis;
mod stream;

const WASM_TARGET: &str = "wasm32-unknown-unknown";
/// Trunk 0.22 needs a newer rustc than the toolchain the project builds with.
const TRUNK_SERIES: &str = "0.21.";
const TRUNK_REQ: &str = "~0.21";
const CHROMIUM: &str = "/usr/bin/chromium";
const FRONTEND_PACKAGE: &str = "tally-frontend";

const USAGE: &str = "\
Usage: cargo xtask <command> [options]

Commands:
  run [ARGS...]        build the dashboard and run Tally (SQLite in ./data) on
                       http://127.0.0.1:8080; ARGS go to `tally serve`
                       (e.g. --bind 0.0.0.0:8080, --database-url postgres://…)
  test [--no-e2e] [--no-lint] [--no-schemathesis]
                       everything CI runs: rustfmt, clippy (host and wasm32),
                       cargo test, schemathesis over the whole API, the
                       release SPA build and the browser suite
  schemathesis         only the schemathesis step of `test`: a debug build of
                       tally, then every API operation checked against the
                       OpenAPI document (SQLite; PostgreSQL too when
                       TALLY_TEST_DATABASE_URL is set)
  setup [--no-e2e]     install the tools the other commands need (idempotent)
  build-spa            build the dashboard into frontend/dist (trunk build --release)
                       and write brotli and gzip siblings of its files
  openapi              regenerate the openapi/openapi.json snapshot
  dev                  how to work on the dashboard with `trunk serve`
  bench-gateway [--quick] [--postgres URL [--instances N] [--redis URL]]
                [--rate N] [--stream] [--soak SECS]
                       latency and throughput the gateway adds over a mock
                       upstream, beside nginx proxying the same mock
                       (installs oha and nginx-light; release build; prints
                       tables): SQLite, then with --postgres the same on a
                       fresh database on that server (dropped after),
                       through one and through N instances sharing it
                       (--redis URL gives them redis_url); --rate N adds a
                       fixed-rate latency run, --stream 1,000 paced streams
                       (TTFB, total, stalls), --soak SECS steady load with
                       tally's memory every 10 s; fails only on setup errors
                       and on the usage, spending, stream and
                       balance-vs-ledger checks
  bench-monitoring [--events N] [--postgres URL] [--no-sqlite]
                       loads N usage events (default 10,000,000) into a fresh
                       database and prints dashboard and monitoring query
                       latency p50/p95 (release build; SQLite, and PostgreSQL
                       when a server URL is given)
  bench-keyflood [--calls N] [--postgres URL] [--no-sqlite]
                       a cached key's call latency p50/p99 while random keys
                       flood the gateway from one and from 256 addresses
                       (release build; default settings)
  help                 this text
";

fn main() -> ExitCode {
    match try_main() {
        Ok(code) => code,
        Err(err) => {
            eprintln!();
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn try_main() -> Result<ExitCode> {
    let mut args = env::args().skip(1);
    let Some(task) = args.next() else {
        print!("{USAGE}");
        return Ok(ExitCode::SUCCESS);
    };
    let rest: Vec<String> = args.collect();
    let cx = Ctx::new()?;
    match task.as_str() {
        "run" => run(&cx, &rest),
        "test" => test(&cx, &rest).map(|()| ExitCode::SUCCESS),
        "setup" => {
            let flags = Flags::parse(&rest, &["--no-e2e"])?;
            setup(
                &cx,
                Setup {
                    browser: !flags.has("--no-e2e"),
                },
            )?;
            step("setup complete");
            Ok(ExitCode::SUCCESS)
        }
        "build-spa" => {
            Flags::parse(&rest, &[])?;
            step("build dashboard (trunk build --release)");
            build_spa(&cx).map(|()| ExitCode::SUCCESS)
        }
        "schemathesis" => {
            Flags::parse(&rest, &[])?;
            step("build tally (debug)");
            let tally = build_tally(&cx, false)?;
            for run in schemathesis::run_all(&cx, &tally)? {
                note(format!(
                    "schemathesis ({}): {} operations, {} test cases, {}",
                    run.label,
                    run.coverage.operations,
                    run.coverage.test_cases,
                    minutes(run.took)
                ));
            }
            step("schemathesis passed");
            Ok(ExitCode::SUCCESS)
        }
        "openapi" => {
            Flags::parse(&rest, &[])?;
            openapi(&cx).map(|()| ExitCode::SUCCESS)
        }
        "bench-gateway" => bench::bench_gateway(&cx, &rest).map(|()| ExitCode::SUCCESS),
        "bench-monitoring" => bench::bench_monitoring(&cx, &rest).map(|()| ExitCode::SUCCESS),
        "bench-keyflood" => bench::bench_keyflood(&cx, &rest).map(|()| ExitCode::SUCCESS),
        "dev" => {
            dev();
            Ok(ExitCode::SUCCESS)
        }
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        other => bail!("unknown command `{other}`\n\n{USAGE}"),
    }
}

/// The repository root and the environment every child process gets.
struct Ctx {
    root: PathBuf,
    /// `cargo` of the toolchain that runs xtask (Cargo sets `CARGO` for `cargo run`).
    cargo: OsString,
    /// PATH with the Cargo bin directory first, so tools installed by `cargo install` win.
    path: OsString,
}

impl Ctx {
    fn new() -> Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .ancestors()
            .nth(2)
            .context("cannot locate the repository root from crates/xtask")?
            .to_path_buf();
        let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let cargo_bin = cargo_home()?.join("bin");
        let mut dirs = vec![cargo_bin.clone()];
        if let Some(path) = env::var_os("PATH") {
            dirs.extend(env::split_paths(&path).filter(|dir| *dir != cargo_bin));
        }
        let path = env::join_paths(dirs).context("PATH contains an invalid entry")?;
        Ok(Self { root, cargo, path })
    }

    /// A command run at the repository root with the adjusted PATH.
    fn cmd(&self, program: impl Into<OsString>) -> Command {
        let program = program.into();
        // Resolve through our PATH so freshly installed tools are found even when the
        // caller's PATH lacks ~/.cargo/bin.
        let resolved = self
            .which(&program)
            .unwrap_or_else(|| PathBuf::from(&program));
        let mut cmd = Command::new(resolved);
        cmd.current_dir(&self.root).env("PATH", &self.path);
        cmd
    }

    fn cargo(&self) -> Command {
        self.cmd(self.cargo.clone())
    }

    /// Full path of `program` on our PATH, if it is there.
    fn which(&self, program: &OsString) -> Option<PathBuf> {
        let program = Path::new(program);
        if program.components().count() > 1 {
            return program.is_file().then(|| program.to_path_buf());
        }
        env::split_paths(&self.path)
            .map(|dir| dir.join(program))
            .find(|candidate| is_executable(candidate))
    }

    fn has(&self, program: &str) -> bool {
        self.which(&program.into()).is_some()
    }

    /// First line of stdout of a successful run, or None when the tool is missing or fails.
    fn probe(&self, program: &str, args: &[&str]) -> Option<String> {
        if !self.has(program) {
            return None;
        }
        let output = self
            .cmd(program)
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

fn cargo_home() -> Result<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME") {
        return Ok(PathBuf::from(home));
    }
    let home = env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cargo"))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path)
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn step(msg: impl AsRef<str>) {
    println!("==> {}", msg.as_ref());
}

fn note(msg: impl AsRef<str>) {
    println!("    {}", msg.as_ref());
}

/// Runs a command with inherited stdio; an unsuccessful exit is an error naming the command.
fn exec(cmd: &mut Command) -> Result<()> {
    let shown = show(cmd);
    note(format!("$ {shown}"));
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{shown}`"))?;
    if status.success() {
        Ok(())
    } else {
        bail!("`{shown}` failed ({})", describe(status))
    }
}

/// Test counts read from the runners' own summaries, for the closing line.
#[derive(Debug, Default, PartialEq)]
struct Counts {
    passed: u64,
    failed: u64,
}

impl Counts {
    /// Reads `test result: ok. 76 passed; 0 failed; …` (cargo test) and
    /// `  8 passed (12.4s)` / `  1 failed` (Playwright's list reporter).
    fn scan(&mut self, line: &str) {
        let line = line.trim();
        let number_before = |word: &str| -> Option<u64> {
            let at = line.find(word)?;
            line[..at].split_whitespace().last()?.parse().ok()
        };
        if line.starts_with("test result:") {
            self.passed += number_before(" passed").unwrap_or(0);
            self.failed += number_before(" failed").unwrap_or(0);
        } else if line.split_whitespace().nth(1) == Some("passed") {
            self.passed += number_before(" passed").unwrap_or(0);
        } else if line.split_whitespace().nth(1) == Some("failed") {
            self.failed += number_before(" failed").unwrap_or(0);
        }
    }
}

/// Like `exec`, but echoes the command's standard output while adding up the
/// test counts it reports.
fn exec_counting(cmd: &mut Command, counts: &mut Counts) -> Result<()> {
    use std::io::{BufRead, BufReader};
    let shown = show(cmd);
    note(format!("$ {shown}"));
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{shown}`"))?;
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line.with_context(|| format!("cannot read the output of `{shown}`"))?;
            println!("{line}");
            counts.scan(&line);
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("`{shown}` did not finish"))?;
    if status.success() {
        Ok(())
    } else {
        bail!("`{shown}` failed ({})", describe(status))
    }
}

fn describe(status: std::process::ExitStatus) -> String {
    match status.code() {
        Some(code) => format!("exit status {code}"),
        None => "terminated by a signal".to_string(),
    }
}

fn show(cmd: &Command) -> String {
    let program = Path::new(cmd.get_program());
    // Print `cargo`, `trunk`, … rather than the resolved absolute path.
    let mut parts = vec![program
        .file_name()
        .unwrap_or(program.as_os_str())
        .to_string_lossy()
        .into_owned()];
    parts.extend(cmd.get_args().map(|arg| quote(&arg.to_string_lossy())));
    parts.join(" ")
}

/// Single-quotes an argument with spaces or quotes so a printed command can be pasted.
fn quote(arg: &str) -> String {
    if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || "'\"$`\\".contains(c)) {
        format!("'{}'", arg.replace('\'', r"'\''"))
    } else {
        arg.to_string()
    }
}

/// Command-line flags of a task: only the listed ones are accepted.
struct Flags(Vec<String>);

impl Flags {
    fn parse(args: &[String], allowed: &[&str]) -> Result<Self> {
        for arg in args {
            if !allowed.contains(&arg.as_str()) {
                if allowed.is_empty() {
                    bail!("unexpected argument `{arg}`\n\n{USAGE}");
                }
                bail!(
                    "unexpected argument `{arg}` (accepted: {})\n\n{USAGE}",
                    allowed.join(", ")
                );
            }
        }
        Ok(Self(args.to_vec()))
    }

    fn has(&self, flag: &str) -> bool {
        self.0.iter().any(|arg| arg == flag)
    }
}

// ---------------------------------------------------------------------------------------------
// setup

#[derive(Clone, Copy)]
struct Setup {
    /// Also install what the browser suite needs: chromium, Node.js and the e2e packages.
    browser: bool,
}

fn setup(cx: &Ctx, what: Setup) -> Result<()> {
    ensure_wasm_target(cx)?;
    ensure_trunk(cx)?;
    ensure_wasm_bindgen(cx)?;
    if what.browser {
        ensure_chromium(cx)?;
        ensure_node(cx)?;
        ensure_e2e_packages(cx)?;
    }
    Ok(())
}

fn ensure_wasm_target(cx: &Ctx) -> Result<()> {
    if !cx.has("rustup") {
        bail!(
            "rustup not found: the {WASM_TARGET} target is installed with rustup; \
             install Rust with rustup (https://rustup.rs)"
        );
    }
    let installed = cx
        .probe("rustup", &["target", "list", "--installed"])
        .context("`rustup target list --installed` failed")?;
    if installed.lines().any(|line| line.trim() == WASM_TARGET) {
        step(format!("rust target {WASM_TARGET}: installed"));
        return Ok(());
    }
    step(format!("rust target {WASM_TARGET}: installing"));
    exec(cx.cmd("rustup").args(["target", "add", WASM_TARGET]))
}

fn ensure_trunk(cx: &Ctx) -> Result<()> {
    let found = cx
        .probe("trunk", &["--version"])
        .and_then(|out| second_word(&out));
    match &found {
        Some(version) if version.starts_with(TRUNK_SERIES) => {
            step(format!("trunk {version}: installed"));
            return Ok(());
        }
        Some(version) => step(format!(
            "trunk: found {version}, need {TRUNK_REQ}; installing (takes a few minutes, once)"
        )),
        None => step(format!(
            "trunk: not found; installing {TRUNK_REQ} (takes a few minutes, once)"
        )),
    }
    cargo_install(cx, "trunk", Some(TRUNK_REQ))?;
    match cx
        .probe("trunk", &["--version"])
        .and_then(|out| second_word(&out))
    {
        Some(version) if version.starts_with(TRUNK_SERIES) => Ok(()),
        other => bail!(
            "trunk was installed but `trunk --version` reports {} (wanted {TRUNK_REQ}); \
             is another trunk earlier on PATH?",
            other.as_deref().unwrap_or("nothing")
        ),
    }
}

fn ensure_wasm_bindgen(cx: &Ctx) -> Result<()> {
    let lock_path = cx.root.join("Cargo.lock");
    let lock = fs::read_to_string(&lock_path)
        .with_context(|| format!("cannot read {}", lock_path.display()))?;
    let wanted = single_locked_version(&lock, "wasm-bindgen")?;
    if let Some(pinned) = trunk_tool_pin(cx, "wasm_bindgen")? {
        if pinned != wanted {
            bail!(
                "Trunk.toml pins wasm_bindgen = \"{pinned}\" but Cargo.lock has wasm-bindgen \
                 {wanted}; they must agree (update the pin in Trunk.toml)"
            );
        }
    }
    let found = cx
        .probe("wasm-bindgen", &["--version"])
        .and_then(|out| second_word(&out));
    match &found {
        Some(version) if *version == wanted => {
            step(format!("wasm-bindgen-cli {version}: installed"));
            return Ok(());
        }
        Some(version) => step(format!(
            "wasm-bindgen-cli: found {version}, Cargo.lock needs {wanted}; installing"
        )),
        None => step(format!(
            "wasm-bindgen-cli: not found; installing {wanted} (takes a few minutes, once)"
        )),
    }
    cargo_install(cx, "wasm-bindgen-cli", Some(&wanted))?;
    match cx
        .probe("wasm-bindgen", &["--version"])
        .and_then(|out| second_word(&out))
    {
        Some(version) if version == wanted => Ok(()),
        other => bail!(
            "wasm-bindgen-cli was installed but `wasm-bindgen --version` reports {} \
             (wanted {wanted}); is another wasm-bindgen earlier on PATH?",
            other.as_deref().unwrap_or("nothing")
        ),
    }
}

/// `cargo install --locked` (of `version`, or the newest release), falling back to a fresh
/// resolution when a locked dependency is no longer available from the registry (for
/// instance, yanked since the release).
fn cargo_install(cx: &Ctx, krate: &str, version: Option<&str>) -> Result<()> {
    let install = |locked: bool| {
        let mut cmd = cx.cargo();
        cmd.args(["install", krate]);
        if let Some(version) = version {
            cmd.args(["--version", version]);
        }
        if locked {
            cmd.arg("--locked");
        }
        exec(&mut cmd)
    };
    if install(true).is_ok() {
        return Ok(());
    }
    note(format!(
        "`cargo install {krate} --locked` failed; retrying with freshly resolved dependencies"
    ));
    install(false).with_context(|| format!("cannot install {krate} {}", version.unwrap_or("")))
}

fn ensure_chromium(cx: &Ctx) -> Result<()> {
    if is_executable(Path::new(CHROMIUM)) {
        step(format!("chromium: {CHROMIUM}"));
        return Ok(());
    }
    step("chromium: not found; installing Debian package chromium");
    apt_install(cx, &["chromium"])?;
    if !is_executable(Path::new(CHROMIUM)) {
        bail!("the chromium package was installed but {CHROMIUM} is missing");
    }
    Ok(())
}

fn ensure_node(cx: &Ctx) -> Result<()> {
    if cx.has("node") && cx.has("npm") {
        let version = cx
            .probe("node", &["--version"])
            .unwrap_or_default()
            .trim()
            .to_string();
        step(format!("node {version}: installed"));
        return Ok(());
    }
    step("Node.js/npm: not found; installing Debian packages nodejs and npm");
    apt_install(cx, &["nodejs", "npm"])?;
    if !(cx.has("node") && cx.has("npm")) {
        bail!("nodejs and npm were installed but `node` or `npm` is still not on PATH");
    }
    Ok(())
}

fn ensure_e2e_packages(cx: &Ctx) -> Result<()> {
    let e2e = cx.root.join("e2e");
    let lock = e2e.join("package-lock.json");
    if !lock.is_file() {
        bail!(
            "{} is missing: the browser suite needs its locked dependencies",
            lock.display()
        );
    }
    let installed = e2e.join("node_modules").join(".package-lock.json");
    let fresh = match (modified(&installed), modified(&lock)) {
        (Some(installed), Some(lock)) => installed >= lock,
        _ => false,
    };
    if fresh {
        step("e2e packages: installed");
        return Ok(());
    }
    step("e2e packages: installing (npm ci)");
    exec(
        cx.cmd("npm")
            .arg("ci")
            .current_dir(&e2e)
            .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1"),
    )
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    fs::metadata(path).and_then(|meta| meta.modified()).ok()
}

/// `apt-get install -y PACKAGES`, running `apt-get update` only when the first attempt fails
/// (typically because the package lists are missing or stale). Uses sudo when not root.
fn apt_install(cx: &Ctx, packages: &[&str]) -> Result<()> {
    let list = packages.join(" ");
    if !cx.has("apt-get") {
        bail!("apt-get not found; install {list} with your system's package manager");
    }
    let root = cx.probe("id", &["-u"]).is_some_and(|uid| uid.trim() == "0");
    if !root && !cx.has("sudo") {
        bail!("installing {list} needs root: run `apt-get install {list}` as root");
    }
    let apt = |args: &[&str]| {
        let mut cmd = if root {
            cx.cmd("apt-get")
        } else {
            let mut cmd = cx.cmd("sudo");
            cmd.args(["env", "DEBIAN_FRONTEND=noninteractive", "apt-get"]);
            cmd
        };
        cmd.env("DEBIAN_FRONTEND", "noninteractive").args(args);
        cmd
    };
    let mut install = vec!["install", "-y"];
    install.extend_from_slice(packages);
    if exec(&mut apt(&install)).is_ok() {
        return Ok(());
    }
    note("apt-get install failed; refreshing the package lists and retrying");
    exec(&mut apt(&["update"]))?;
    exec(&mut apt(&install)).with_context(|| format!("cannot install {list}"))
}

// ---------------------------------------------------------------------------------------------
// version parsing

/// `trunk 0.21.14` -> `0.21.14`; `wasm-bindgen 0.2.130` -> `0.2.130`.
fn second_word(output: &str) -> Option<String> {
    output.split_whitespace().nth(1).map(str::to_string)
}

/// The value of `key = "value"` on one TOML line.
fn toml_string(line: &str, key: &str) -> Option<String> {
    let rest = line
        .trim()
        .strip_prefix(key)?
        .trim_start()
        .strip_prefix('=')?;
    let value = rest.trim().strip_prefix('"')?;
    Some(value[..value.find('"')?].to_string())
}

/// All versions of package `name` in a Cargo.lock.
fn locked_versions(lock: &str, name: &str) -> Vec<String> {
    let mut versions = Vec::new();
    let mut in_package = false;
    for line in lock.lines() {
        if line.trim() == "[[package]]" {
            in_package = false;
        } else if let Some(found) = toml_string(line, "name") {
            in_package = found == name;
        } else if in_package {
            if let Some(version) = toml_string(line, "version") {
                versions.push(version);
                in_package = false;
            }
        }
    }
    versions
}

fn single_locked_version(lock: &str, name: &str) -> Result<String> {
    let mut versions = locked_versions(lock, name);
    versions.dedup();
    match versions.as_slice() {
        [version] => Ok(version.clone()),
        [] => bail!("Cargo.lock has no `{name}` package (is the frontend in the workspace?)"),
        many => bail!(
            "Cargo.lock has several `{name}` versions ({}); the CLI must match exactly one",
            many.join(", ")
        ),
    }
}

/// A tool version pinned in Trunk.toml `[tools]`, if any.
fn trunk_tool_pin(cx: &Ctx, key: &str) -> Result<Option<String>> {
    let path = cx.root.join("Trunk.toml");
    if !path.is_file() {
        return Ok(None);
    }
    let text =
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut in_tools = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_tools = line == "[tools]";
        } else if in_tools {
            if let Some(value) = toml_string(line, key) {
                return Ok(Some(value));
            }
        }
    }
    Ok(None)
}

// ---------------------------------------------------------------------------------------------
// tasks

fn build_spa(cx: &Ctx) -> Result<()> {
    if !cx.root.join("Trunk.toml").is_file() {
        bail!("Trunk.toml not found at {}", cx.root.display());
    }
    // Trunk runs cargo with --offline, so the crates must already be in the local cache.
    exec(cx.cargo().arg("fetch"))?;
    exec(
        cx.cmd("trunk")
            .args(["build", "--release", "--offline"])
            .env("TRUNK_SKIP_VERSION_CHECK", "true"),
    )?;
    let index = cx.root.join("frontend/dist/index.html");
    if !index.is_file() {
        bail!(
            "trunk finished but {} does not exist; check the dist setting in Trunk.toml",
            index.display()
        );
    }
    step("precompress dashboard (brotli and gzip siblings)");
    let sizes = compress::precompress(&static_dir(cx))?;
    let kb = |n: u64| format!("{:.1} KB", n as f64 / 1000.0);
    let (mut plain, mut br, mut gz) = (0, 0, 0);
    for s in &sizes {
        plain += s.plain;
        br += s.brotli.unwrap_or(s.plain);
        gz += s.gzip.unwrap_or(s.plain);
        note(format!(
            "{}: {} -> br {}, gzip {}",
            s.path.display(),
            kb(s.plain),
            s.brotli.map_or("-".into(), kb),
            s.gzip.map_or("-".into(), kb)
        ));
    }
    note(format!(
        "total: {} -> br {}, gzip {}",
        kb(plain),
        kb(br),
        kb(gz)
    ));
    Ok(())
}

/// Builds the `tally` binary (release or debug) and returns the path cargo reports, so
/// CARGO_TARGET_DIR and target-dir settings are honoured.
fn build_tally(cx: &Ctx, release: bool) -> Result<PathBuf> {
    let mut cmd = cx.cargo();
    cmd.arg("build");
    if release {
        cmd.arg("--release");
    }
    cmd.args(["-p", "tally-server", "--bin", "tally"]);
    tally_built_by(cmd)
}

/// The `tally` that `cargo test --workspace` built for the HTTP tests: the same command with
/// `--no-run` finds it without compiling anything again (a plain `cargo build` of the binary
/// resolves features without the dev-dependencies and would compile the server once more).
fn tally_of_test_build(cx: &Ctx) -> Result<PathBuf> {
    let mut cmd = cx.cargo();
    cmd.args([
        "test",
        "--workspace",
        "--exclude",
        FRONTEND_PACKAGE,
        "--no-run",
    ]);
    tally_built_by(cmd)
}

/// Runs a cargo build command and returns the `tally` executable it reports.
fn tally_built_by(mut cmd: Command) -> Result<PathBuf> {
    use std::io::{BufRead, BufReader};
    cmd.arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped());
    let shown = show(&cmd);
    note(format!("$ {shown}"));
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start `{shown}`"))?;
    let mut executable = None;
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line.context("cannot read cargo's output")?;
            if let Some(path) = tally_executable(&line) {
                executable = Some(path);
            }
        }
    }
    let status = child.wait().context("cargo build did not finish")?;
    if !status.success() {
        bail!("`{shown}` failed ({})", describe(status));
    }
    executable.context("cargo built tally-server but reported no `tally` executable")
}

/// The executable of the `tally` binary target from one line of cargo's JSON messages.
fn tally_executable(line: &str) -> Option<PathBuf> {
    let message: serde_json::Value = serde_json::from_str(line).ok()?;
    // The binary itself, not the unit-test harness of the same name.
    if message["reason"] != "compiler-artifact"
        || message["target"]["name"] != "tally"
        || message["profile"]["test"] != false
        || !message["target"]["kind"]
            .as_array()
            .is_some_and(|kinds| kinds.iter().any(|k| k == "bin"))
    {
        return None;
    }
    message["executable"].as_str().map(PathBuf::from)
}

fn static_dir(cx: &Ctx) -> PathBuf {
    cx.root.join("frontend").join("dist")
}

fn run(cx: &Ctx, args: &[String]) -> Result<ExitCode> {
    setup(cx, Setup { browser: false })?;
    step("build dashboard (trunk build --release)");
    build_spa(cx)?;
    step("run Tally (Ctrl-C stops it)");
    let mut cmd = cx.cargo();
    cmd.args([
        "run",
        "--release",
        "-p",
        "tally-server",
        "--bin",
        "tally",
        "--",
    ])
    .arg("serve")
    .arg("--static-dir")
    .arg(static_dir(cx))
    .args(args);
    note(format!("$ {}", show(&cmd)));
    let status = cmd.status().context("cannot start cargo")?;
    // Pass the server's exit status through; Ctrl-C is a normal way to stop it.
    Ok(match status.code() {
        Some(0) | None => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
    })
}

/// Steps of `cargo xtask test` with their durations, for the closing summary.
struct Report {
    started: Instant,
    done: Vec<(String, Duration)>,
}

impl Report {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            done: Vec::new(),
        }
    }

    fn run(&mut self, name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
        step(name);
        let start = Instant::now();
        f().with_context(|| format!("test step `{name}` failed"))?;
        self.done.push((name.to_string(), start.elapsed()));
        Ok(())
    }
}

fn ci() -> bool {
    env::var("CI").is_ok_and(|value| !value.is_empty() && value != "false" && value != "0")
}

fn test(cx: &Ctx, args: &[String]) -> Result<()> {
    let flags = Flags::parse(args, &["--no-e2e", "--no-lint", "--no-schemathesis"])?;
    let e2e = !flags.has("--no-e2e");
    let lint = !flags.has("--no-lint");
    let api_check = !flags.has("--no-schemathesis");
    let postgres = env::var("TALLY_TEST_DATABASE_URL").is_ok_and(|url| !url.is_empty());
    if ci() && !postgres {
        bail!(
            "CI is set but TALLY_TEST_DATABASE_URL is not: in CI the storage tests must run on \
             PostgreSQL too, never skip silently. Set it, e.g.\n    \
             TALLY_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo xtask test"
        );
    }

    let mut report = Report::new();
    let mut counts = Counts::default();
    report.run("setup", || setup(cx, Setup { browser: e2e }))?;
    if lint {
        report.run("rustfmt", || {
            exec(cx.cargo().args(["fmt", "--all", "--", "--check"]))
        })?;
        report.run("clippy (host)", || {
            exec(cx.cargo().args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))
        })?;
        report.run("clippy (wasm32 dashboard)", || {
            exec(cx.cargo().args([
                "clippy",
                "-p",
                FRONTEND_PACKAGE,
                "--target",
                WASM_TARGET,
                "--",
                "-D",
                "warnings",
            ]))
        })?;
    }
    let databases = if postgres {
        "SQLite + PostgreSQL"
    } else {
        "SQLite only; set TALLY_TEST_DATABASE_URL for PostgreSQL"
    };
    report.run(&format!("cargo test ({databases})"), || {
        exec_counting(
            cx.cargo()
                .args(["test", "--workspace", "--exclude", FRONTEND_PACKAGE]),
            &mut counts,
        )
    })?;
    // `cargo test` has just built the debug `tally` for the HTTP tests; schemathesis and the
    // browser suite use that one.
    let mut tally = PathBuf::new();
    if api_check || e2e {
        report.run("find tally (debug, from the test build)", || {
            tally = tally_of_test_build(cx)?;
            Ok(())
        })?;
    }
    let mut api_runs = Vec::new();
    if api_check {
        report.run(&format!("schemathesis over the API ({databases})"), || {
            api_runs = schemathesis::run_all(cx, &tally)?;
            Ok(())
        })?;
    }
    if e2e {
        report.run("build dashboard (trunk build --release)", || build_spa(cx))?;
        report.run("browser suite (playwright)", || {
            let port = free_port()?;
            note(format!("TALLY_E2E_PORT={port}"));
            exec_counting(
                cx.cmd("npx")
                    .args(["playwright", "test"])
                    .current_dir(cx.root.join("e2e"))
                    .env("TALLY_BIN", &tally)
                    .env("TALLY_STATIC_DIR", static_dir(cx))
                    .env("TALLY_E2E_PORT", port.to_string()),
                &mut counts,
            )
        })?;
    }

    println!();
    for (name, took) in &report.done {
        println!("    ok  {name} ({})", minutes(*took));
    }
    for run in &api_runs {
        println!(
            "        schemathesis ({}): {} operations, {} test cases, {}",
            run.label,
            run.coverage.operations,
            run.coverage.test_cases,
            minutes(run.took)
        );
    }
    let mut skipped = Vec::new();
    if !lint {
        skipped.push("lint");
    }
    if !api_check {
        skipped.push("schemathesis");
    }
    if !e2e {
        skipped.push("browser suite");
    }
    let skipped = if skipped.is_empty() {
        String::new()
    } else {
        format!("; skipped: {}", skipped.join(", "))
    };
    step(format!(
        "all tests passed in {}{skipped}",
        minutes(report.started.elapsed())
    ));
    // The plain closing line CI systems read.
    println!("{} passed, {} failed", counts.passed, counts.failed);
    Ok(())
}

fn free_port() -> Result<u16> {
    let listener =
        TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0 to find a free port")?;
    Ok(listener.local_addr()?.port())
}

fn minutes(took: Duration) -> String {
    let secs = took.as_secs();
    if secs >= 60 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{:.1}s", took.as_secs_f64())
    }
}

fn openapi(cx: &Ctx) -> Result<()> {
    step("regenerate openapi/openapi.json");
    let mut cmd = cx.cargo();
    cmd.args([
        "run",
        "--quiet",
        "-p",
        "tally-server",
        "--bin",
        "tally",
        "--",
        "openapi",
    ])
    .stderr(Stdio::inherit());
    note(format!("$ {}", show(&cmd)));
    let output = cmd.output().context("cannot start cargo")?;
    if !output.status.success() {
        bail!("`tally openapi` failed ({})", describe(output.status));
    }
    if !output.stdout.starts_with(b"{") {
        bail!("`tally openapi` did not print a JSON document");
    }
    let dir = cx.root.join("openapi");
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("openapi.json");
    let unchanged = fs::read(&path).is_ok_and(|old| old == output.stdout);
    fs::write(&path, &output.stdout).with_context(|| format!("cannot write {}", path.display()))?;
    note(format!(
        "{} {}",
        path.display(),
        if unchanged { "unchanged" } else { "updated" }
    ));
    Ok(())
}

fn dev() {
    print!(
        "\
Working on the dashboard with live reload:

  1. Start the server (API on http://127.0.0.1:8080), in one terminal:
         cargo run -p tally-server --bin tally -- serve
     (or `cargo xtask run`, which also builds the release dashboard first)

  2. Serve the dashboard with Trunk, in another terminal at the repository root:
         cargo xtask setup --no-e2e     # once: wasm target, trunk, wasm-bindgen
         trunk serve

  3. Open http://127.0.0.1:8081 (the port is set in Trunk.toml). Trunk rebuilds on every
     change in frontend/ and proxies /api, /v1, /healthz, /readyz and /metrics to the
     server on 8080.
"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_version_of_a_package_from_cargo_lock() {
        let lock = r#"
[[package]]
name = "wasm-bindgen-macro"
version = "0.2.130"

[[package]]
name = "wasm-bindgen"
version = "0.2.130"
source = "registry+https://github.com/rust-lang/crates.io-index"
"#;
        assert_eq!(locked_versions(lock, "wasm-bindgen"), vec!["0.2.130"]);
        assert!(locked_versions(lock, "trunk").is_empty());
    }

    #[test]
    fn finds_the_tally_executable_in_cargo_messages() {
        let line = r#"{"reason":"compiler-artifact","target":{"name":"tally","kind":["bin"]},"profile":{"test":false},"executable":"/t/release/tally"}"#;
        assert_eq!(
            tally_executable(line),
            Some(PathBuf::from("/t/release/tally"))
        );
        // `cargo test --no-run` also reports the binary's unit-test harness, of the same name.
        let harness = r#"{"reason":"compiler-artifact","target":{"name":"tally","kind":["bin"]},"profile":{"test":true},"executable":"/t/debug/deps/tally-0123"}"#;
        assert_eq!(tally_executable(harness), None);
        let lib =
            r#"{"reason":"compiler-artifact","target":{"name":"tally_server"},"executable":null}"#;
        assert_eq!(tally_executable(lib), None);
        assert_eq!(tally_executable("not json"), None);
    }

    #[test]
    fn parses_tool_version_output() {
        assert_eq!(second_word("trunk 0.21.14\n").as_deref(), Some("0.21.14"));
    }

    #[test]
    fn adds_up_cargo_and_playwright_counts() {
        let mut counts = Counts::default();
        for line in [
            "test result: ok. 76 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out",
            "test result: ok. 0 passed; 0 failed; 0 ignored",
            "  ✓  1 tests/keys.spec.ts:3:1 › a key passed the check (1.8s)",
            "  8 passed (12.4s)",
            "  2 failed",
            "running 3 tests",
        ] {
            counts.scan(line);
        }
        assert_eq!(
            counts,
            Counts {
                passed: 84,
                failed: 2
            }
        );
    }

    #[test]
    fn quotes_printed_arguments_only_when_needed() {
        assert_eq!(quote("--release"), "--release");
        assert_eq!(
            quote("Authorization: Bearer x"),
            "'Authorization: Bearer x'"
        );
        assert_eq!(quote(r#"{"a":1}"#), r#"'{"a":1}'"#);
        assert_eq!(quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn reads_a_toml_string_value() {
        assert_eq!(
            toml_string(r#"wasm_bindgen = "0.2.130""#, "wasm_bindgen").as_deref(),
            Some("0.2.130")
        );
        assert_eq!(toml_string(r#"wasm_bindgen_x = "1""#, "wasm_bindgen"), None);
    }
}
