//! Retention of usage events and monitoring rollups (M6).
//!
//! Policy: a background task deletes raw events and rollup rows older than
//! `monitoring.*_retention_days` every `monitoring.prune_interval_secs`,
//! starting one interval after startup. 0 days keeps a table forever. Deletes
//! go namespace by namespace (see `tally_store::monitoring::prune`), outside
//! the gateway's writer, so a call never waits for them beyond SQLite's
//! single-writer lock for one statement.

use std::time::Duration;

use tally_store::monitoring::Cutoffs;
use tally_store::Store;

use crate::config::MonitoringSettings;
use crate::leadership::Leadership;

fn cutoff(now: i64, days: u32) -> Option<i64> {
    (days > 0).then(|| now - i64::from(days) * 86_400_000)
}

/// Runs one pruning pass; returns the rows deleted.
pub async fn prune_once(store: &Store, s: &MonitoringSettings) -> tally_store::Result<u64> {
    let now = tally_store::now_ms();
    let cutoffs = Cutoffs {
        raw: cutoff(now, s.raw_retention_days),
        minute: cutoff(now, s.minute_retention_days),
        hour: cutoff(now, s.hour_retention_days),
        day: cutoff(now, s.day_retention_days),
    };
    if [cutoffs.raw, cutoffs.minute, cutoffs.hour, cutoffs.day] == [None; 4] {
        return Ok(0);
    }
    let mut conn = store.conn().await?;
    tally_store::monitoring::prune(&mut conn, cutoffs).await
}

/// Starts the pruning task on the current runtime; it prunes while this
/// instance leads the upkeep (O5).
pub fn start_pruner(store: Store, settings: MonitoringSettings, leadership: Leadership) {
    tokio::spawn(async move {
        let period = Duration::from_secs(settings.prune_interval_secs.max(1));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !leadership.is_leader() {
                continue;
            }
            metrics::counter!("tally_upkeep_rounds_total", "task" => "retention").increment(1);
            let result = prune_once(&store, &settings).await;
            crate::telemetry::task_round("retention", result.is_ok());
            match result {
                Ok(0) => {}
                Ok(n) => tracing::info!(rows = n, "pruned old usage events and rollups"),
                Err(e) => tracing::warn!(error = %e, "pruning usage events failed"),
            }
        }
    });
}
