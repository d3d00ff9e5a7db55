//! Group commit of gateway calls (G4).
//!
//! Policy:
//! - One writer owns every write of the hot path. It takes everything queued,
//!   records the whole batch in one transaction (usage rows, rollups, ledger
//!   entries, one balance update per account; the statements of
//!   [`tally_store::recording`]) and then wakes the calls waiting on it. A call
//!   answers its client only after that, so a call that got its response is in
//!   usage and the ledger even if the process dies right after. While one
//!   batch commits the next one queues, so the batch grows with load and the
//!   cost of a commit is shared by every call in it.
//! - The writer, not the waiting call, moves the in-memory accounts once a
//!   batch has committed: each call's hold is captured and each seller's share
//!   credited ([`Settlement`]), whether or not the call is still waiting, so
//!   the accounts always follow what was committed. A batch that failed
//!   releases its holds.
//! - One call's row never fails another's: text is cleaned before it is
//!   queued ([`tally_store::usage::CallRecord::clean`]), a batch that fails on
//!   something transient is retried whole, and a batch the database refuses
//!   ([`tally_store::StoreError::refused_rows`]) is split in halves until the
//!   rows it refuses are alone; only those calls are told they failed.
//! - On SQLite the writer is a thread of its own with a direct connection
//!   ([`tally_store::recorder`]): no async hops per statement, statements
//!   prepared once, and a WAL checkpoint on the commit path ten times rarer
//!   than SQLite's default. On PostgreSQL it is a task on the runtime with a
//!   connection of its own, one statement per batch
//!   ([`tally_store::pg_recorder`]).

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tally_store::pg_recorder::PgRecorder;
use tally_store::recorder::SqliteRecorder;
use tally_store::usage::CallRecord;
use tally_store::{Store, StoreError};
use tokio::sync::{mpsc, oneshot};

use super::accounts::{Hold, Pinned};

/// Most calls committed in one transaction.
const MAX_BATCH: usize = 2048;
/// Attempts of a whole batch before it is split or given up.
const ATTEMPTS: u32 = 3;

/// What a call's commit moves in memory: its capture, and a seller's share.
#[derive(Debug, Default)]
pub struct Settlement {
    pub hold: Option<Hold>,
    pub seller: Option<(Pinned, i64)>,
}

impl Settlement {
    /// The call's rows committed: apply them to the accounts.
    fn committed(self) {
        if let Some(hold) = self.hold {
            hold.committed();
        }
        if let Some((seller, net)) = self.seller {
            seller.credit(net);
        }
    }
}

struct Job {
    call: CallRecord,
    settlement: Settlement,
    done: oneshot::Sender<bool>,
}

#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::UnboundedSender<Job>,
}

impl Recorder {
    /// Starts the writer: a thread with its own connection on SQLite, a task
    /// on the current runtime on PostgreSQL. `lease_holder` is this instance
    /// when holds come from its credit leases (O5): captures leave them too.
    pub fn start(store: Store, lease_holder: Option<String>) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        match store.sqlite_file() {
            Some(path) => start_sqlite(path, rx)?,
            None => {
                tokio::spawn(run(store, lease_holder, rx));
            }
        }
        Ok(Recorder { tx })
    }

    /// Queues a call and waits until it is committed; false if it could not
    /// be. The settlement is applied by the writer at the commit, even if
    /// this future is dropped meanwhile.
    pub async fn record(&self, mut call: CallRecord, settlement: Settlement) -> bool {
        call.clean();
        let (done, wait) = oneshot::channel();
        let job = Job {
            call,
            settlement,
            done,
        };
        if self.tx.send(job).is_err() {
            return false;
        }
        wait.await.unwrap_or(false)
    }
}

/// Takes the next batch: waits for one call, then everything else queued.
fn batch(first: Job, rx: &mut mpsc::UnboundedReceiver<Job>, jobs: &mut Vec<Job>) {
    let mut next = Some(first);
    while let Some(job) = next {
        jobs.push(job);
        next = if jobs.len() < MAX_BATCH {
            rx.try_recv().ok()
        } else {
            None
        };
    }
}

/// Tells each call of the batch how it went and applies the committed ones.
fn finish_batch(jobs: &mut Vec<Job>, ok: &[bool]) {
    metrics::histogram!("tally_gateway_commit_batch_size").record(jobs.len() as f64);
    for (job, &ok) in jobs.drain(..).zip(ok) {
        if ok {
            job.settlement.committed();
        } else {
            metrics::counter!("tally_gateway_unrecorded_calls_total").increment(1);
        }
        // The hold of a failed call is released when its settlement drops.
        let _ = job.done.send(ok);
    }
}

/// Commits `calls` with `commit`, isolating refused rows (see the module
/// policy); one flag per call. Both writers run this one policy: the SQLite
/// thread blocks on it, the PostgreSQL task awaits it.
async fn isolate<'a, C, F, P, G>(calls: &'a [CallRecord], mut commit: C, mut pause: P) -> Vec<bool>
where
    C: FnMut(&'a [CallRecord]) -> F,
    F: Future<Output = Result<(), StoreError>>,
    P: FnMut(u32) -> G,
    G: Future<Output = ()>,
{
    let mut out = vec![false; calls.len()];
    // (from, to, whether transient failures are retried): only the whole
    // batch is; its parts are split because rows were refused.
    let mut todo: Vec<(usize, usize, bool)> = vec![(0, calls.len(), true)];
    while let Some((from, to, retry)) = todo.pop() {
        let part = &calls[from..to];
        let mut attempt = 1;
        loop {
            match commit(part).await {
                Ok(()) => {
                    out[from..to].fill(true);
                    break;
                }
                Err(e) if e.refused_rows() => {
                    if part.len() == 1 {
                        tracing::error!(call = %part[0].id, error = %e, "a gateway call could not be recorded");
                    } else {
                        tracing::warn!(calls = part.len(), error = %e, "a batch of gateway calls was refused; splitting it");
                        let mid = from + part.len() / 2;
                        todo.push((mid, to, false));
                        todo.push((from, mid, false));
                    }
                    break;
                }
                Err(e) => {
                    tracing::error!(attempt, calls = part.len(), error = %e, "recording gateway calls failed");
                    if !retry || attempt == ATTEMPTS {
                        break;
                    }
                    pause(attempt).await;
                    attempt += 1;
                }
            }
        }
    }
    out
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(50 * u64::from(attempt))
}

fn start_sqlite(path: &Path, mut rx: mpsc::UnboundedReceiver<Job>) -> anyhow::Result<()> {
    let mut recorder = SqliteRecorder::open(path)?;
    std::thread::Builder::new()
        .name("tally-writer".into())
        .spawn(move || {
            let mut jobs: Vec<Job> = Vec::with_capacity(64);
            // Ends when every sender is gone: the gateway was dropped.
            while let Some(first) = rx.blocking_recv() {
                batch(first, &mut rx, &mut jobs);
                let calls: Vec<CallRecord> = jobs.iter().map(|j| j.call.clone()).collect();
                // Every future here is ready at once but the pause, which
                // blocks this thread of its own.
                let ok = futures_executor::block_on(isolate(
                    &calls,
                    |c| std::future::ready(recorder.record_calls(c, tally_store::now_ms())),
                    |attempt| {
                        std::thread::sleep(backoff(attempt));
                        std::future::ready(())
                    },
                ));
                finish_batch(&mut jobs, &ok);
            }
        })?;
    Ok(())
}

async fn run(store: Store, lease_holder: Option<String>, mut rx: mpsc::UnboundedReceiver<Job>) {
    let mut jobs: Vec<Job> = Vec::with_capacity(64);
    // The writer's own connection, opened again after a failure that may
    // have broken it.
    let writer: Arc<tokio::sync::Mutex<Option<PgRecorder>>> = Arc::default();
    while let Some(first) = rx.recv().await {
        batch(first, &mut rx, &mut jobs);
        let calls: Vec<CallRecord> = jobs.iter().map(|j| j.call.clone()).collect();
        let ok = isolate(
            &calls,
            |c| commit(&store, writer.clone(), lease_holder.as_deref(), c),
            |attempt| tokio::time::sleep(backoff(attempt)),
        )
        .await;
        finish_batch(&mut jobs, &ok);
    }
}

async fn commit(
    store: &Store,
    writer: Arc<tokio::sync::Mutex<Option<PgRecorder>>>,
    lease_holder: Option<&str>,
    calls: &[CallRecord],
) -> tally_store::Result<()> {
    let mut slot = writer.lock().await;
    let recorder = match &mut *slot {
        Some(recorder) => recorder,
        None => slot.insert(
            store
                .pg_recorder()
                .await?
                .ok_or(StoreError::UnsupportedUrl)?,
        ),
    };
    let done = recorder
        .record_calls(calls, tally_store::now_ms(), lease_holder)
        .await;
    if let Err(e) = &done {
        if !e.refused_rows() {
            *slot = None;
        }
    }
    done
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use tally_common::Environment;

    use super::*;

    fn call(id: &str) -> CallRecord {
        CallRecord {
            id: id.into(),
            time: 0,
            namespace_id: "ns".into(),
            environment: Environment::Test,
            key_id: "k".into(),
            api: "a".into(),
            model: None,
            endpoint: "/".into(),
            request_type: "sync",
            status: 200,
            error: None,
            latency_us: 0,
            upstream_latency_us: 0,
            tokens_in: 0,
            tokens_out: 0,
            cost_micros: 0,
            client_id: None,
            seller_namespace_id: None,
            platform_fee_micros: 0,
        }
    }

    fn refused() -> StoreError {
        StoreError::Conflict("bad row".into())
    }

    #[test]
    fn a_refused_row_fails_alone() {
        let calls: Vec<CallRecord> = (0..9).map(|i| call(&format!("c{i}"))).collect();
        let mut commits = 0;
        let ok = futures_executor::block_on(isolate(
            &calls,
            |c: &[CallRecord]| {
                commits += 1;
                std::future::ready(if c.iter().any(|c| c.id == "c5") {
                    Err(refused())
                } else {
                    Ok(())
                })
            },
            |_| std::future::ready(()),
        ));
        let expected: Vec<bool> = (0..9).map(|i| i != 5).collect();
        assert_eq!(ok, expected);
        assert!(commits < 9, "split in halves, not row by row: {commits}");
    }

    #[test]
    fn a_transient_failure_is_retried_whole_then_given_up() {
        let calls = vec![call("a"), call("b")];
        let mut commits = 0;
        let mut pauses = 0;
        let ok = futures_executor::block_on(isolate(
            &calls,
            |_: &[CallRecord]| {
                commits += 1;
                std::future::ready(Err(StoreError::UnsupportedUrl))
            },
            |_| {
                pauses += 1;
                std::future::ready(())
            },
        ));
        assert_eq!(ok, vec![false, false]);
        assert_eq!((commits, pauses), (ATTEMPTS, ATTEMPTS - 1));
    }
}
