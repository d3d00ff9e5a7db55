//! `cargo xtask test`'s API conformance step: schemathesis over every operation of the served
//! OpenAPI document, against a real `tally serve`.
//!
//! Policy: the document must tell the truth. Schemathesis (pinned below, installed from PyPI
//! into a virtualenv under `.tally-tools/` only when missing) generates valid and invalid
//! requests for every operation and fails the step on any answer that is a server error, has a
//! status the operation does not document, a Content-Type it does not document, or a body that
//! does not match the documented schema. Its seed is fixed so CI is repeatable
//! (`TALLY_SCHEMATHESIS_SEED` tries others).
//!
//! The server is the binary the test build made, on a fresh SQLite directory, and again on a
//! fresh PostgreSQL database when `TALLY_TEST_DATABASE_URL` is set. Before the run, an operator,
//! a second member, an invitation, a key, a top-up intent and a subscription are created, and
//! a separate account gets the API key the gateway operations use, so that nothing the REST
//! operations do (revoking keys, removing members, deleting catalog APIs) can take the
//! gateway's key away. The ids go to `schemathesis/hooks.py`, which puts them into path
//! parameters most of the time, so the operations behind a namespace are reached instead of
//! answering 404. The gateway operations (`/v1/...`, API key) run first, the REST operations
//! (`/api/...`, JWT) second; each run prints its operations, test cases and failures.
//!
//! The server under test never connects anywhere but this machine: its catalog's upstreams
//! are loopback addresses (the hooks rewrite generated upstream URLs) and test keys are answered
//! by the built-in sandbox.

use std::env;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::bench::{call, text, Server, TempDir};
use crate::pg::FreshDatabase;
use crate::{describe, exec, minutes, note, show, step, Ctx};

/// The schemathesis release the step installs and runs (its v4 CLI and config file).
pub const VERSION: &str = "4.32.5";
/// The checks every response must pass.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_schema_conformance";
/// Test cases per operation and phase; with the coverage phase's own cases this keeps both
/// runs within a few minutes on two cores.
const MAX_EXAMPLES: u32 = 25;
/// One worker: schemathesis' generation is Python bound by the GIL, so a second worker
/// barely shortens the run, and with two threads CPython 3.11 can fail inside `ast.parse`
/// ("AST constructor recursion depth mismatch", fixed in later CPython releases).
const WORKERS: u32 = 1;
const DEFAULT_SEED: &str = "20261201";
const PASSWORD: &str = "schemathesis password 1";

/// What one schemathesis run covered, read from its summary.
#[derive(Debug, Default, PartialEq)]
pub struct Coverage {
    pub operations: u64,
    pub test_cases: u64,
}

/// The figures of one run, for the closing summary of `cargo xtask test`.
pub struct Outcome {
    pub label: String,
    pub coverage: Coverage,
    pub took: Duration,
}

fn tools_dir(cx: &Ctx) -> PathBuf {
    cx.root.join(".tally-tools")
}

fn files_dir(cx: &Ctx) -> PathBuf {
    cx.root.join("crates").join("xtask").join("schemathesis")
}

/// The `schemathesis` executable of the project's virtualenv, installed at [`VERSION`] when
/// missing or at another version.
pub fn ensure(cx: &Ctx) -> Result<PathBuf> {
    let venv = tools_dir(cx).join("schemathesis-venv");
    let exe = venv.join("bin").join("schemathesis");
    let installed = |exe: &Path| {
        Command::new(exe)
            .arg("--version")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    // `schemathesis, version 4.32.5`
    let version = installed(&exe).and_then(|out| out.rsplit(' ').next().map(str::to_string));
    if version.as_deref() == Some(VERSION) {
        step(format!("schemathesis {VERSION}: installed"));
        return Ok(exe);
    }
    match version {
        Some(other) => step(format!(
            "schemathesis: found {other}, need {VERSION}; installing from PyPI"
        )),
        None => step(format!(
            "schemathesis: not found; installing {VERSION} from PyPI into {}",
            venv.display()
        )),
    }
    let python = ["python3", "python"]
        .into_iter()
        .find(|p| cx.has(p))
        .context("python3 not found: schemathesis needs Python 3.10 or newer with venv and pip")?;
    if !venv.join("bin").join("python").is_file() {
        exec(cx.cmd(python).arg("-m").arg("venv").arg(&venv)).context(
            "cannot create a virtualenv (on Debian, `apt-get install python3-venv` provides it)",
        )?;
    }
    exec(
        cx.cmd(venv.join("bin").join("python"))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .arg(format!("schemathesis=={VERSION}")),
    )?;
    match installed(&exe) {
        Some(out) if out.ends_with(VERSION) => Ok(exe),
        other => bail!(
            "schemathesis was installed but `{} --version` reports {}",
            exe.display(),
            other.as_deref().unwrap_or("nothing")
        ),
    }
}

/// Runs schemathesis over the whole API against `tally` on SQLite, and on PostgreSQL when
/// `TALLY_TEST_DATABASE_URL` is set. Fails on the first run with a failure.
pub fn run_all(cx: &Ctx, tally: &Path) -> Result<Vec<Outcome>> {
    let exe = ensure(cx)?;
    let mut outcomes = run_on(cx, &exe, tally, "SQLite", None)?;
    if let Some(server_url) = env::var("TALLY_TEST_DATABASE_URL")
        .ok()
        .filter(|url| !url.is_empty())
    {
        let db = FreshDatabase::create(
            cx,
            &server_url,
            "tally_schemathesis",
            "TALLY_TEST_DATABASE_URL is set: the schemathesis step runs on PostgreSQL too",
        )?;
        outcomes.extend(run_on(cx, &exe, tally, "PostgreSQL", Some(&db.url))?);
    }
    Ok(outcomes)
}

fn run_on(
    cx: &Ctx,
    exe: &Path,
    tally: &Path,
    backend: &str,
    database_url: Option<&str>,
) -> Result<Vec<Outcome>> {
    step(format!("schemathesis on {backend}: start tally serve"));
    let work = TempDir::new("tally-schemathesis")?;
    let config = work.path.join("tally.toml");
    fs::write(&config, SERVER_CONFIG)
        .with_context(|| format!("cannot write {}", config.display()))?;
    let mut server = Server::spawn(cx.cmd(tally), &work.path, &config, database_url)?;
    note(format!("tally on http://{}", server.addr));
    let result = provision(server.addr, &work.path.join("data")).and_then(|fixture| {
        let mut outcomes = Vec::new();
        for (part, filter) in [
            ("gateway, API key", ["--include-path-regex", "^/v1/"]),
            ("REST, JWT", ["--exclude-path-regex", "^/v1/"]),
        ] {
            let label = format!("{backend}, {part}");
            step(format!("schemathesis ({label})"));
            outcomes.push(schemathesis(
                cx,
                exe,
                &work.path,
                server.addr,
                &fixture,
                &label,
                &filter,
            )?);
        }
        Ok(outcomes)
    });
    server.stop();
    if result.is_err() {
        server.print_log_tail();
    }
    result
}

/// Limits of the server under test: cheap password hashing (sign-up and log-in are fuzzed
/// too), a token that outlives the run, a deposit secret so signed notifications are
/// checked rather than refused as unconfigured, and two catalog APIs that need no upstream:
/// test keys reach the sandbox.
const SERVER_CONFIG: &str = r#"# Written by `cargo xtask test` for the schemathesis step.
[auth]
access_token_ttl_secs = 3600
# Sign-up and log-in are fuzzed: throttles far above the run's rate let every request reach
# the handlers (the throttles have their own tests).
ip_requests_per_minute = 1000000
signups_per_ip_per_hour = 1000000
signups_per_email_per_hour = 1000000
login_failures_per_account_ip = 1000000
login_failures_per_account_per_hour = 1000000
argon2_memory_kib = 1024
argon2_iterations = 1

[billing]
deposit_secret = "schemathesis-deposit-secret"

[[catalog]]
slug = "st-http"
name = "Schemathesis HTTP API"
protocol = "http"
upstreams = [{ url = "http://127.0.0.1:9", weight = 1 }]
test_upstreams = []

[[catalog]]
slug = "st-victim"
name = "Schemathesis API to delete"
protocol = "http"
upstreams = [{ url = "http://127.0.0.1:9", weight = 1 }]
test_upstreams = []
"#;

/// What the generated requests use: credentials and ids of real resources.
struct Fixture {
    jwt: String,
    api_key: String,
    /// Path parameter name -> a value that exists.
    path_values: Value,
    /// "METHOD /path/template" -> values that replace those of `path_values` there.
    path_values_by_operation: Value,
}

/// A signed-in account and its first namespace.
struct Session {
    token: String,
    account_id: String,
    namespace_id: String,
}

fn sign_up(addr: SocketAddr, email: &str) -> Result<Session> {
    let auth = call(
        addr,
        "POST",
        "/api/v1/auth/signup",
        None,
        Some(&json!({ "email": email, "password": PASSWORD })),
    )?;
    session(addr, text(&auth["access_token"], "access_token")?)
}

/// The account and first namespace an access token belongs to.
fn session(addr: SocketAddr, token: String) -> Result<Session> {
    let me = call(addr, "GET", "/api/v1/me", Some(&token), None)?;
    Ok(Session {
        account_id: text(&me["account"]["id"], "account.id")?,
        namespace_id: text(&me["namespaces"][0]["id"], "namespaces[0].id")?,
        token,
    })
}

/// The operator whose token the REST operations use, made with the setup token the fresh
/// server wrote to its data directory.
fn create_operator(addr: SocketAddr, data_dir: &Path) -> Result<Session> {
    let token = crate::bench::create_operator(addr, data_dir, "st-operator@example.com", PASSWORD)?;
    session(addr, token)
}

fn provision(addr: SocketAddr, data_dir: &Path) -> Result<Fixture> {
    step("provision accounts, keys and ids for schemathesis");
    let operator = create_operator(addr, data_dir)?;
    let op = Some(operator.token.as_str());
    let ns = operator.namespace_id.as_str();
    for environment in ["test", "live"] {
        call(
            addr,
            "POST",
            &format!("/api/v1/admin/namespaces/{ns}/grants"),
            op,
            Some(&json!({
                "environment": environment,
                "amount_micros": 1_000_000_000_000i64,
                "memo": "cargo xtask test (schemathesis)",
            })),
        )?;
    }
    let member = sign_up(addr, "st-member@example.com")?;
    call(
        addr,
        "POST",
        &format!("/api/v1/namespaces/{ns}/members"),
        op,
        Some(&json!({ "email": "st-member@example.com", "role": "developer" })),
    )?;
    let invited = call(
        addr,
        "POST",
        &format!("/api/v1/namespaces/{ns}/members"),
        op,
        Some(&json!({ "email": "st-invitee@example.com", "role": "viewer" })),
    )?;
    let new_key = |name: &str| {
        call(
            addr,
            "POST",
            &format!("/api/v1/namespaces/{ns}/keys"),
            op,
            Some(&json!({ "name": name, "environment": "test" })),
        )
        .and_then(|created| text(&created["key"]["id"], "key.id"))
    };
    let key_id = new_key("schemathesis")?;
    // Rotation gets a key of its own: the revoke operation may take the first one early.
    let rotated_key_id = new_key("schemathesis rotation")?;
    let intent = call(
        addr,
        "POST",
        &format!("/api/v1/namespaces/{ns}/credits/intents"),
        op,
        Some(&json!({ "environment": "live", "currency": "USDC", "amount_units": 10_000_000 })),
    )?;
    let subscription = call(
        addr,
        "POST",
        &format!("/api/v1/namespaces/{ns}/credits/subscriptions"),
        op,
        Some(&json!({ "environment": "live", "package": "starter" })),
    )?;

    // The gateway's caller: its own account, so nothing the REST run does to the operator's
    // namespace reaches this key.
    let caller = sign_up(addr, "st-caller@example.com")?;
    call(
        addr,
        "POST",
        &format!("/api/v1/admin/namespaces/{}/grants", caller.namespace_id),
        op,
        Some(&json!({ "environment": "test", "amount_micros": 1_000_000_000_000i64 })),
    )?;
    let caller_key = call(
        addr,
        "POST",
        &format!("/api/v1/namespaces/{}/keys", caller.namespace_id),
        Some(&caller.token),
        Some(&json!({ "name": "schemathesis gateway", "environment": "test" })),
    )?;

    let month = {
        let now = call(addr, "GET", "/api/v1/status", None, None)?;
        // `2026-12-01T…`: the statement of the running month exists.
        text(&now["started_at"], "started_at")?
            .get(..7)
            .context("started_at is too short")?
            .to_string()
    };
    let path_values = json!({
        "namespace_id": ns,
        "key_id": key_id,
        "account_id": member.account_id,
        "invitation_id": text(&invited["invitation"]["id"], "invitation.id")?,
        "intent_id": text(&intent["id"], "intent id")?,
        "subscription_id": text(&subscription["id"], "subscription id")?,
        "month": month,
        "slug": "st-http",
        "model": "tally-sandbox",
    });
    note(format!("path values: {path_values}"));
    Ok(Fixture {
        jwt: operator.token,
        api_key: text(&caller_key["secret"], "secret")?,
        path_values,
        path_values_by_operation: json!({
            "DELETE /api/v1/admin/catalog/{slug}": { "slug": "st-victim" },
            "POST /api/v1/namespaces/{namespace_id}/keys/{key_id}/rotate": { "key_id": rotated_key_id },
        }),
    })
}

fn schemathesis(
    cx: &Ctx,
    exe: &Path,
    work: &Path,
    addr: SocketAddr,
    fixture: &Fixture,
    label: &str,
    filter: &[&str],
) -> Result<Outcome> {
    let files = files_dir(cx);
    let seed = env::var("TALLY_SCHEMATHESIS_SEED").unwrap_or_else(|_| DEFAULT_SEED.into());
    let mut cmd = Command::new(exe);
    cmd.arg("--no-color")
        .arg("--config-file")
        .arg(files.join("schemathesis.toml"))
        .arg("run")
        .arg(format!("http://{addr}/api/openapi.json"))
        .args(filter)
        .args(["--checks", CHECKS])
        .arg(format!("--max-examples={MAX_EXAMPLES}"))
        .arg(format!("--workers={WORKERS}"))
        .args(["--phases", "examples,coverage,fuzzing"])
        .arg(format!("--seed={seed}"))
        .args(["--request-timeout", "30"])
        .args(["--generation-database", "none"])
        // Reports, caches and Hypothesis' files stay in the temporary directory.
        .current_dir(work)
        .env("SCHEMATHESIS_HOOKS", files.join("hooks.py"))
        .env("TALLY_ST_JWT", &fixture.jwt)
        .env("TALLY_ST_API_KEY", &fixture.api_key)
        .env("TALLY_ST_PATH_VALUES", fixture.path_values.to_string())
        .env(
            "TALLY_ST_PATH_VALUES_BY_OPERATION",
            fixture.path_values_by_operation.to_string(),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let shown = show(&cmd);
    note(format!("$ {shown}"));
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start `{shown}`"))?;
    let mut summary = Summary::default();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line.context("cannot read schemathesis' output")?;
            println!("{line}");
            summary.scan(&line);
        }
    }
    let status = child.wait().context("schemathesis did not finish")?;
    let took = started.elapsed();
    let coverage = summary.coverage();
    note(format!(
        "schemathesis ({label}): {} operations, {} test cases in {}",
        coverage.operations,
        coverage.test_cases,
        minutes(took)
    ));
    if !status.success() {
        bail!(
            "schemathesis ({label}) found failures ({}); each is listed above with a curl \
             command that reproduces it (seed {seed})",
            describe(status)
        );
    }
    if coverage.operations == 0 {
        bail!("schemathesis ({label}) tested no operation");
    }
    Ok(Outcome {
        label: label.to_string(),
        coverage,
        took,
    })
}

/// Reads schemathesis' closing summary: `  Tested: 60` under "API Operations" and
/// `  3358 generated, …` under "Test cases".
#[derive(Default)]
struct Summary {
    operations: Option<u64>,
    test_cases: Option<u64>,
}

impl Summary {
    fn scan(&mut self, line: &str) {
        let line = line.trim();
        let first_number = |s: &str| s.split_whitespace().next()?.parse::<u64>().ok();
        if let Some(rest) = line.strip_prefix("Tested:") {
            self.operations = first_number(rest);
        } else if line.contains(" generated") {
            self.test_cases = first_number(line).or(self.test_cases);
        }
    }

    fn coverage(&self) -> Coverage {
        Coverage {
            operations: self.operations.unwrap_or(0),
            test_cases: self.test_cases.unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_operations_and_test_cases_from_the_summary() {
        let mut summary = Summary::default();
        for line in [
            "API Operations:",
            "  Selected: 60/72",
            "  Tested: 60",
            "Test cases:",
            "  3358 generated, 3358 passed",
        ] {
            summary.scan(line);
        }
        assert_eq!(
            summary.coverage(),
            Coverage {
                operations: 60,
                test_cases: 3358
            }
        );
    }
}
