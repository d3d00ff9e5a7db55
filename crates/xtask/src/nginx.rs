//! The baseline proxy of `bench-gateway`: Debian's nginx forwarding to the same mock upstream,
//! so the report shows what a proxy that does no work of its own costs beside what Tally costs.
//!
//! Policy: one worker process and no master (`master_process off`, `daemon off`: the process
//! xtask starts is the one that serves, pinned where tally is pinned), an `upstream` block with
//! `keepalive` (HTTP/1.1 to the mock and `Connection ""`, as Tally's pool keeps its upstream
//! connections), `proxy_buffering off` so a stream passes through event by event (Tally never
//! buffers a stream either), no access log. Everything it writes (config, error log, pid, temp
//! files) is in a temporary directory removed at the end; the process is killed on drop. nginx
//! is taken from PATH or /usr/sbin, else the Debian package `nginx-light` (then `nginx`) is
//! installed; when neither can be, the report says why and goes on without the row.

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::bench::{Pinning, TempDir};
use crate::{apt_install, describe, free_port, is_executable, note, show, step, Ctx};

const SBIN: &str = "/usr/sbin/nginx";

/// The nginx binary, installing `nginx-light` (or `nginx`) when there is none; `Err` says why
/// there is none.
pub fn ensure(cx: &Ctx) -> Result<PathBuf> {
    if let Some(found) = find(cx) {
        return Ok(found);
    }
    step("nginx: not found; installing Debian package nginx-light");
    let light = apt_install(cx, &["nginx-light"]);
    if let Some(found) = find(cx) {
        return Ok(found);
    }
    note(format!(
        "nginx-light gave no nginx ({}); trying the package nginx",
        light
            .err()
            .map_or("installed".into(), |err| format!("{err:#}"))
    ));
    apt_install(cx, &["nginx"]).context("neither nginx-light nor nginx could be installed")?;
    find(cx).context("the nginx package was installed but there is no nginx binary")
}

fn find(cx: &Ctx) -> Option<PathBuf> {
    if is_executable(Path::new(SBIN)) {
        return Some(PathBuf::from(SBIN));
    }
    cx.which(&"nginx".into())
}

/// The config: see the module policy.
fn config(dir: &Path, listen: SocketAddr, upstream: SocketAddr) -> String {
    let dir = dir.display();
    format!(
        r#"# Written by `cargo xtask bench-gateway`.
worker_processes 1;
daemon off;
master_process off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
# 1,000 streams are 2,000 connections (client side and upstream side).
worker_rlimit_nofile 16384;

events {{
    worker_connections 8192;
}}

http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    # Keep client connections as long as oha and the stream client keep them (Tally has no
    # per-connection request limit either).
    keepalive_requests 1000000;

    upstream mock {{
        server {upstream};
        keepalive 64;
        keepalive_requests 1000000;
    }}

    server {{
        listen {listen};
        location / {{
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"#
    )
}

/// nginx running as the baseline proxy; killed (and its directory removed) on drop.
pub struct Nginx {
    child: Option<Child>,
    pub addr: SocketAddr,
    // Dropped after the process is killed (fields drop in order; `Drop::drop` runs first).
    work: TempDir,
}

impl Nginx {
    /// nginx `bin` on CPU 0 (where tally runs), proxying to `upstream`, ready to take calls.
    pub fn start(cx: &Ctx, bin: &Path, pin: &Pinning, upstream: SocketAddr) -> Result<Self> {
        let work = TempDir::new("tally-bench-nginx")?;
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let conf = work.path.join("nginx.conf");
        fs::write(&conf, config(&work.path, addr, upstream))
            .with_context(|| format!("cannot write {}", conf.display()))?;
        let mut cmd = pin.command(cx, 0, bin);
        // -e: the error log from the first line on (before the config is read, nginx would
        // otherwise open /var/log/nginx/error.log).
        cmd.arg("-p")
            .arg(&work.path)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(work.path.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        note(format!("$ {}", show(&cmd)));
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start `{}`", show(&cmd)))?;
        let mut nginx = Self {
            child: Some(child),
            addr,
            work,
        };
        nginx.wait_ready()?;
        Ok(nginx)
    }

    /// The serving process's id (with `master_process off`, the one xtask started).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "nginx exited during start-up ({}): {}",
                        describe(status),
                        self.log_tail()
                    );
                }
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "nginx was not listening on {} within 10 s: {}",
                    self.addr,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.work.path.join("error.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_config_keeps_upstream_connections_and_does_not_buffer() {
        let text = config(
            Path::new("/tmp/x"),
            ([127, 0, 0, 1], 8081).into(),
            ([127, 0, 0, 1], 9000).into(),
        );
        for line in [
            "worker_processes 1;",
            "daemon off;",
            "master_process off;",
            "pid /tmp/x/nginx.pid;",
            "error_log /tmp/x/error.log warn;",
            "access_log off;",
            "server 127.0.0.1:9000;",
            "keepalive 64;",
            "listen 127.0.0.1:8081;",
            "proxy_http_version 1.1;",
            "proxy_set_header Connection \"\";",
            "proxy_buffering off;",
        ] {
            assert!(text.contains(line), "{line}");
        }
    }

    /// Installs nginx-light when it is missing, hence ignored by default:
    /// `cargo test -p xtask -- --ignored nginx`.
    #[test]
    #[ignore]
    fn proxies_calls_and_streams_to_the_mock() {
        use crate::mock::{MockUpstream, STREAM_CHUNKS};
        use crate::stream;

        let cx = Ctx::new().unwrap();
        let bin = ensure(&cx).unwrap();
        let mock = MockUpstream::start().unwrap();
        let pin = Pinning::detect(&cx);
        let mut proxy = Nginx::start(&cx, &bin, &pin, mock.addr).unwrap();
        let answer = crate::http1::request(
            proxy.addr,
            "POST",
            "/v1/chat/completions",
            Some("tk_live_x"),
            Some(br#"{"model":"bench-model","messages":[]}"#),
        )
        .unwrap();
        assert_eq!(answer.status, 200);
        let plan = stream::Plan {
            streams: 50,
            ramp: Duration::from_millis(100),
            per_stream: Duration::from_secs(20),
            stall: Duration::from_secs(1),
            events: STREAM_CHUNKS + 1,
        };
        let summary = stream::run(proxy.addr, "tk_live_x", plan)
            .unwrap()
            .summary();
        assert_eq!(summary.complete, 50, "{:?}", summary.failures);
        // Not buffered: the first event comes long before the stream ends.
        assert!(summary.ttfb_p99.unwrap() * 4 < summary.total_p50.unwrap());
        assert!(proxy.pid().is_some());
        let dir = proxy.work.path.clone();
        proxy.stop();
        drop(proxy);
        assert!(!dir.exists());
    }
}
