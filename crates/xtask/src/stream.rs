//! `bench-gateway --stream`: many paced streams open at once through one address, each timed
//! from the client's side.
//!
//! Policy: every stream is a `"stream": true` chat completion on a connection of its own (as
//! 1,000 separate clients would open them), started on a ramp ([`Plan::ramp`]) so that all of
//! them are open together once the ramp is over (a stream lasts about a second, see
//! `mock::STREAM_PACE`) without timing 1,000 simultaneous connects instead of the streams.
//! Per stream: the time to the first event (TTFB, from the connect; the connect is part of what
//! a client waits for), the total time to the end of the answer, the longest gap between two
//! pieces of the body, and whether every content event and `data: [DONE]` arrived. A gap longer
//! than [`Plan::stall`] is a stall; a stream that broke, answered non-2xx, carried an error event
//! or missed an event is a failure. Every stream has a deadline ([`Plan::per_stream`]), so the
//! run ends even when the target hangs.
//!
//! Why tokio and hyper here while the rest of xtask is blocking: 1,000 open streams are 1,000
//! sockets that are idle most of the time; one thread polling them all keeps the client's own
//! cost (and its scheduling noise on the CPU it shares with the mock) small, where 1,000 OS
//! threads would each wake 20 times a second. hyper, hyper-util and tokio are already in the
//! workspace's lock file (reqwest and actix use them), so nothing new is downloaded.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The streamed chat request, directly and through the gateways.
pub const STREAM_BODY: &str = r#"{"model":"bench-model","messages":[{"role":"user","content":"Say ok."}],"max_tokens":32,"stream":true}"#;

/// How many streams, how they start and when one counts as stalled or failed.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub streams: usize,
    /// Stream `i` starts at `i / streams * ramp`.
    pub ramp: Duration,
    /// The longest one stream may take.
    pub per_stream: Duration,
    /// A gap between two pieces of a body longer than this is a stall.
    pub stall: Duration,
    /// Content events (not counting `[DONE]`) every stream must carry.
    pub events: u32,
}

/// What one stream saw.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Connect to the first event.
    pub ttfb: Option<Duration>,
    /// Connect to the end of the body.
    pub total: Option<Duration>,
    /// `data:` events before `[DONE]`.
    pub events: u32,
    pub done: bool,
    /// Gaps between two pieces of the body longer than the plan's stall.
    pub stalls: u32,
    pub max_gap: Duration,
    /// Why the stream did not complete, when it did not.
    pub error: Option<String>,
}

impl Outcome {
    /// Every content event and `[DONE]` arrived, with no error.
    pub fn complete(&self, plan: &Plan) -> bool {
        self.error.is_none() && self.done && self.events == plan.events
    }
}

/// All the streams of one run.
pub struct Run {
    pub plan: Plan,
    pub outcomes: Vec<Outcome>,
}

/// Opens `plan.streams` streams to `addr` (`POST /v1/chat/completions` with `bearer`) and waits
/// for all of them; a stream's own failure is in its outcome, not an error of the run.
pub fn run(addr: SocketAddr, bearer: &str, plan: Plan) -> Result<Run> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the stream client's runtime")?;
    let auth = format!("Bearer {bearer}");
    let outcomes = runtime.block_on(async move {
        let start = tokio::time::Instant::now();
        let count = u32::try_from(plan.streams).unwrap_or(u32::MAX).max(1);
        let tasks: Vec<_> = (0..count)
            .map(|i| {
                let auth = auth.clone();
                let at = start + plan.ramp * i / count;
                tokio::spawn(async move {
                    tokio::time::sleep_until(at).await;
                    let mut outcome = Outcome::default();
                    let began = Instant::now();
                    let timed = tokio::time::timeout(
                        plan.per_stream,
                        one(addr, &auth, &plan, began, &mut outcome),
                    )
                    .await;
                    match timed {
                        Ok(Ok(())) => {}
                        Ok(Err(err)) => outcome.error = Some(format!("{err:#}")),
                        Err(_) => {
                            outcome.error = Some(format!(
                                "not finished within {} s",
                                plan.per_stream.as_secs()
                            ))
                        }
                    }
                    outcome
                })
            })
            .collect();
        let mut outcomes = Vec::with_capacity(tasks.len());
        for task in tasks {
            outcomes.push(task.await.unwrap_or_else(|err| Outcome {
                error: Some(format!("the stream's task failed: {err}")),
                ..Outcome::default()
            }));
        }
        outcomes
    });
    Ok(Run { plan, outcomes })
}

/// One stream, filling `outcome` as it goes (so a timeout keeps what was seen).
async fn one(
    addr: SocketAddr,
    auth: &str,
    plan: &Plan,
    began: Instant,
    outcome: &mut Outcome,
) -> Result<()> {
    let tcp = TcpStream::connect(addr).await.context("connect")?;
    tcp.set_nodelay(true)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .context("HTTP handshake")?;
    // The connection is driven by a task of its own; it ends when the stream does (the
    // request says `Connection: close`) or when `_driver` is dropped with this future.
    let driver = tokio::spawn(connection);
    let _driver = AbortOnDrop(driver);
    let request = Request::post("/v1/chat/completions")
        .header("host", addr.to_string())
        .header("authorization", auth)
        .header("content-type", "application/json")
        .header("accept", "text/event-stream")
        .header("connection", "close")
        .body(Full::new(Bytes::from_static(STREAM_BODY.as_bytes())))?;
    let response = sender.send_request(request).await.context("request")?;
    let status = response.status();
    let mut body = response.into_body();
    if !status.is_success() {
        let bytes = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        anyhow::bail!(
            "HTTP {}: {}",
            status.as_u16(),
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
        );
    }
    let mut events = EventScanner::default();
    let mut last: Option<Instant> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.context("the body broke off")?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let now = Instant::now();
        if let Some(last) = last {
            let gap = now - last;
            outcome.max_gap = outcome.max_gap.max(gap);
            if gap > plan.stall {
                outcome.stalls += 1;
            }
        }
        last = Some(now);
        for event in events.feed(&data) {
            match event {
                Event::Done => outcome.done = true,
                Event::Error(text) => anyhow::bail!("error event: {text}"),
                Event::Data if outcome.done => anyhow::bail!("an event after [DONE]"),
                Event::Data => {
                    outcome.events += 1;
                    if outcome.ttfb.is_none() {
                        outcome.ttfb = Some(began.elapsed());
                    }
                }
            }
        }
    }
    outcome.total = Some(began.elapsed());
    if !outcome.done {
        anyhow::bail!("the stream ended without [DONE]");
    }
    if outcome.events != plan.events {
        anyhow::bail!(
            "{} events instead of {} before [DONE]",
            outcome.events,
            plan.events
        );
    }
    Ok(())
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Debug, PartialEq)]
enum Event {
    Data,
    Done,
    Error(String),
}

/// Splits a body into server-sent events (`\n\n`-separated, as the mock and the gateway send
/// them) and classifies each by its `data:`.
#[derive(Default)]
struct EventScanner {
    buf: Vec<u8>,
}

impl EventScanner {
    fn feed(&mut self, bytes: &[u8]) -> Vec<Event> {
        self.buf.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
            let raw: Vec<u8> = self.buf.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&raw);
            let data: Vec<&str> = text
                .lines()
                .filter_map(|line| line.strip_prefix("data:"))
                .map(str::trim)
                .collect();
            if data.is_empty() {
                continue;
            }
            let data = data.join("\n");
            events.push(if data == "[DONE]" {
                Event::Done
            } else if serde_json::from_str::<serde_json::Value>(&data)
                .map_or(true, |json| json.get("error").is_some())
            {
                Event::Error(data.chars().take(200).collect())
            } else {
                Event::Data
            });
        }
        events
    }
}

/// The `p`-th percentile (0 < p <= 1) of `sorted`, nearest rank.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// What a run's report needs.
#[derive(Debug, Default)]
pub struct Summary {
    pub streams: usize,
    pub complete: usize,
    /// Streams with at least one stall, and all stalls.
    pub stalled_streams: usize,
    pub stalls: u64,
    pub max_gap: Duration,
    pub ttfb_p50: Option<Duration>,
    pub ttfb_p99: Option<Duration>,
    pub total_p50: Option<Duration>,
    pub total_p99: Option<Duration>,
    /// The failures by reason (the first few words of the error), with a count.
    pub failures: Vec<(String, usize)>,
}

impl Run {
    /// Percentiles over the complete streams; failures counted by reason.
    pub fn summary(&self) -> Summary {
        let complete: Vec<&Outcome> = self
            .outcomes
            .iter()
            .filter(|o| o.complete(&self.plan))
            .collect();
        let mut ttfb: Vec<Duration> = complete.iter().filter_map(|o| o.ttfb).collect();
        let mut total: Vec<Duration> = complete.iter().filter_map(|o| o.total).collect();
        ttfb.sort();
        total.sort();
        let mut failures = std::collections::BTreeMap::<String, usize>::new();
        for outcome in &self.outcomes {
            if let Some(error) = &outcome.error {
                *failures.entry(error.clone()).or_default() += 1;
            } else if !outcome.complete(&self.plan) {
                *failures.entry("incomplete".into()).or_default() += 1;
            }
        }
        let mut failures: Vec<(String, usize)> = failures.into_iter().collect();
        failures.sort_by_key(|f| std::cmp::Reverse(f.1));
        Summary {
            streams: self.outcomes.len(),
            complete: complete.len(),
            stalled_streams: self.outcomes.iter().filter(|o| o.stalls > 0).count(),
            stalls: self.outcomes.iter().map(|o| u64::from(o.stalls)).sum(),
            max_gap: self
                .outcomes
                .iter()
                .map(|o| o.max_gap)
                .max()
                .unwrap_or_default(),
            ttfb_p50: percentile(&ttfb, 0.50),
            ttfb_p99: percentile(&ttfb, 0.99),
            total_p50: percentile(&total, 0.50),
            total_p99: percentile(&total, 0.99),
            failures,
        }
    }
}

/// Raises this process's soft limit on open files to `want` (or the hard limit, if lower);
/// child processes (tally, nginx) inherit it. Returns the soft limit in force afterwards.
pub fn raise_nofile(want: u64) -> Result<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let current = limit.current.unwrap_or(u64::MAX);
    if current >= want {
        return Ok(current);
    }
    let target = limit.maximum.map_or(want, |max| max.min(want));
    if target <= current {
        return Ok(current);
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(target),
            maximum: limit.maximum,
        },
    )
    .context("cannot raise the open-file limit (setrlimit)")?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::mock::{MockUpstream, STREAM_CHUNKS};

    #[test]
    fn scans_events_split_anywhere() {
        let mut scanner = EventScanner::default();
        assert!(scanner.feed(b"data: {\"a\":1}\n").is_empty());
        assert_eq!(
            scanner.feed(b"\ndata: {\"b\":2}\n\ndata: [DO"),
            vec![Event::Data, Event::Data]
        );
        assert_eq!(scanner.feed(b"NE]\n\n"), vec![Event::Done]);
        assert!(matches!(
            scanner.feed(b"data: {\"error\":{\"code\":\"x\"}}\n\n")[0],
            Event::Error(_)
        ));
        assert!(scanner.feed(b": a comment\n\n").is_empty());
    }

    #[test]
    fn takes_percentiles_by_nearest_rank() {
        let ms = |n| Duration::from_millis(n);
        let sorted: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(percentile(&sorted, 0.5), Some(ms(50)));
        assert_eq!(percentile(&sorted, 0.99), Some(ms(99)));
        assert_eq!(percentile(&[ms(7)], 0.99), Some(ms(7)));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn times_paced_streams_from_the_mock() {
        let mock = MockUpstream::start().unwrap();
        let plan = Plan {
            streams: 20,
            ramp: Duration::from_millis(100),
            per_stream: Duration::from_secs(20),
            stall: Duration::from_secs(1),
            events: STREAM_CHUNKS + 1,
        };
        let run = run(mock.addr, "tk_live_x", plan).unwrap();
        let summary = run.summary();
        assert_eq!(summary.complete, 20, "{:?}", summary.failures);
        assert_eq!(summary.stalls, 0);
        assert!(summary.ttfb_p99.unwrap() < summary.total_p50.unwrap());
        assert_eq!(mock.streams(), 20);
    }

    #[test]
    fn a_stream_that_cannot_connect_is_a_failure() {
        let plan = Plan {
            streams: 1,
            ramp: Duration::ZERO,
            per_stream: Duration::from_secs(5),
            stall: Duration::from_secs(1),
            events: 1,
        };
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let summary = run(addr, "x", plan).unwrap().summary();
        assert_eq!(summary.complete, 0);
        assert_eq!(summary.failures.len(), 1);
    }
}
