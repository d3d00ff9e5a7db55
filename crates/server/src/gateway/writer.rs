//! Group commit of gateway calls (G4).
//!
//! Policy: one writer owns every write of the hot path. It takes everything
//! queued, records the whole batch in one transaction (usage rows, ledger
//! entries, one balance update per account) and then wakes the calls waiting
//! on it. A call answers its client only after that, so a call that got its
//! response is in usage and the ledger even if the process dies right after.
//! While one batch commits the next one queues, so the batch grows with load
//! and the cost of a commit is shared by every call in it.
//!
//! On SQLite the writer is a thread of its own with a direct connection
//! ([`tally_store::recorder`]): no async hops per statement, statements
//! prepared once, and a WAL checkpoint on the commit path ten times rarer than
//! SQLite's default. On PostgreSQL it is a task on the runtime using the pool.

use std::path::Path;
use std::time::Duration;

use tally_store::recorder::SqliteRecorder;
use tally_store::usage::CallRecord;
use tally_store::Store;
use tokio::sync::{mpsc, oneshot};

/// Most calls committed in one transaction.
const MAX_BATCH: usize = 2048;
/// Attempts before the calls of a batch are told it failed.
const ATTEMPTS: u32 = 3;

struct Job {
    call: CallRecord,
    done: oneshot::Sender<bool>,
}

#[derive(Clone)]
pub struct Writer {
    tx: mpsc::UnboundedSender<Job>,
}

impl Writer {
    /// Starts the writer: a thread with its own connection on SQLite, a task
    /// on the current runtime on PostgreSQL.
    pub fn start(store: Store) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        match store.sqlite_file() {
            Some(path) => start_sqlite(path, rx)?,
            None => {
                tokio::spawn(run(store, rx));
            }
        }
        Ok(Writer { tx })
    }

    /// Queues a call and waits until it is committed; false if it could not be.
    pub async fn record(&self, call: CallRecord) -> bool {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Job { call, done }).is_err() {
            return false;
        }
        wait.await.unwrap_or(false)
    }
}

/// Takes the next batch: waits for one call, then everything else queued.
fn batch(
    first: Job,
    rx: &mut mpsc::UnboundedReceiver<Job>,
    calls: &mut Vec<CallRecord>,
    waiting: &mut Vec<oneshot::Sender<bool>>,
) {
    let mut next = Some(first);
    while let Some(job) = next {
        calls.push(job.call);
        waiting.push(job.done);
        next = if calls.len() < MAX_BATCH {
            rx.try_recv().ok()
        } else {
            None
        };
    }
}

fn finish_batch(ok: bool, calls: &mut Vec<CallRecord>, waiting: &mut Vec<oneshot::Sender<bool>>) {
    metrics::histogram!("tally_gateway_commit_batch_size").record(calls.len() as f64);
    calls.clear();
    for done in waiting.drain(..) {
        let _ = done.send(ok);
    }
}

fn start_sqlite(path: &Path, mut rx: mpsc::UnboundedReceiver<Job>) -> anyhow::Result<()> {
    let mut recorder = SqliteRecorder::open(path)?;
    std::thread::Builder::new()
        .name("tally-writer".into())
        .spawn(move || {
            let mut calls: Vec<CallRecord> = Vec::with_capacity(64);
            let mut waiting: Vec<oneshot::Sender<bool>> = Vec::with_capacity(64);
            // Ends when every sender is gone: the gateway was dropped.
            while let Some(first) = rx.blocking_recv() {
                batch(first, &mut rx, &mut calls, &mut waiting);
                let mut ok = false;
                for attempt in 1..=ATTEMPTS {
                    match recorder.record_calls(&calls) {
                        Ok(()) => {
                            ok = true;
                            break;
                        }
                        Err(e) => {
                            tracing::error!(attempt, calls = calls.len(), error = %e, "recording gateway calls failed");
                            std::thread::sleep(Duration::from_millis(50 * u64::from(attempt)));
                        }
                    }
                }
                finish_batch(ok, &mut calls, &mut waiting);
            }
        })?;
    Ok(())
}

async fn run(store: Store, mut rx: mpsc::UnboundedReceiver<Job>) {
    let mut calls: Vec<CallRecord> = Vec::with_capacity(64);
    let mut waiting: Vec<oneshot::Sender<bool>> = Vec::with_capacity(64);
    while let Some(first) = rx.recv().await {
        batch(first, &mut rx, &mut calls, &mut waiting);
        let ok = commit_with_retries(&store, &calls).await;
        finish_batch(ok, &mut calls, &mut waiting);
    }
}

async fn commit_with_retries(store: &Store, calls: &[CallRecord]) -> bool {
    for attempt in 1..=ATTEMPTS {
        match commit(store, calls).await {
            Ok(()) => return true,
            Err(e) => {
                tracing::error!(attempt, calls = calls.len(), error = %e, "recording gateway calls failed");
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
            }
        }
    }
    false
}

async fn commit(store: &Store, calls: &[CallRecord]) -> tally_store::Result<()> {
    let mut tx = store.begin().await?;
    tally_store::usage::record_calls(&mut tx, calls).await?;
    tx.commit().await?;
    Ok(())
}
