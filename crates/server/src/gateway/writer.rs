//! Group commit of gateway calls (G4).
//!
//! Policy: one task owns every write of the hot path. It takes everything
//! queued, records the whole batch in one transaction (usage rows, ledger
//! entries, one balance update per account) and then wakes the calls waiting
//! on it. A call answers its client only after that, so a call that got its
//! response is in usage and the ledger even if the process dies right after.
//! While one batch commits the next one queues, so the batch grows with load
//! and the cost of a commit is shared by every call in it.

use std::time::Duration;

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
    /// Starts the writer task on the current runtime.
    pub fn start(store: Store) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(store, rx));
        Writer { tx }
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

async fn run(store: Store, mut rx: mpsc::UnboundedReceiver<Job>) {
    let mut calls: Vec<CallRecord> = Vec::with_capacity(64);
    let mut waiting: Vec<oneshot::Sender<bool>> = Vec::with_capacity(64);
    while let Some(first) = rx.recv().await {
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
        let ok = commit_with_retries(&store, &calls).await;
        metrics::histogram!("tally_gateway_commit_batch_size").record(calls.len() as f64);
        calls.clear();
        for done in waiting.drain(..) {
            let _ = done.send(ok);
        }
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
