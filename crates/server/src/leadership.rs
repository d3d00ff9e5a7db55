//! Whether this instance runs the background upkeep now (O5): always on one
//! instance; on several, the holder of the upkeep lock (`crate::cluster`).
//! The background loops (`upkeep`, `services::billing`, `monitoring`) only
//! read it, so they need nothing else of the cluster.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Whether this instance runs the background upkeep now.
#[derive(Debug, Clone)]
pub struct Leadership(Arc<AtomicBool>);

impl Leadership {
    /// A single instance: always the leader.
    pub fn single() -> Leadership {
        Leadership(Arc::new(AtomicBool::new(true)))
    }

    /// One of several, not leading until it takes the lock.
    pub fn follower() -> Leadership {
        Leadership(Arc::new(AtomicBool::new(false)))
    }

    pub fn is_leader(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    pub(crate) fn set(&self, leading: bool) {
        if self.0.swap(leading, Ordering::Relaxed) != leading {
            if leading {
                tracing::info!("this instance now runs the background upkeep");
            } else {
                tracing::warn!("this instance no longer runs the background upkeep");
            }
        }
        metrics::gauge!("tally_cluster_leader").set(if leading { 1.0 } else { 0.0 });
    }
}
