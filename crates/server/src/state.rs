//! Shared application state, handed to handlers as `web::Data<AppState>`.

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use tally_store::Store;

use crate::auth::{Passwords, Tokens};
use crate::config::Settings;
use crate::gateway::Gateway;
use crate::services::accounts::Accounts;
use crate::throttle::AuthThrottle;

pub struct AppState {
    pub store: Store,
    pub tokens: Tokens,
    pub passwords: Passwords,
    /// The in-memory balances (`services::accounts`), shared with the gateway.
    pub accounts: Arc<Accounts>,
    pub throttle: Arc<AuthThrottle>,
    pub gateway: Arc<Gateway>,
    /// This instance among several (O5).
    pub cluster: Arc<crate::cluster::Cluster>,
    /// The egress policy and its clients (price feed, upstream validation).
    pub egress: Arc<crate::egress::Egress>,
    pub settings: Arc<Settings>,
    /// Backups taken through the API and the schedule, one at a time.
    pub backups: Arc<crate::services::backups::Backups>,
    /// This instance's webhook delivery worker (W2).
    pub webhooks: Arc<crate::services::webhooks::Worker>,
    pub started_at: DateTime<Utc>,
    pub started: Instant,
}

impl AppState {
    pub fn uptime_seconds(&self) -> i64 {
        i64::try_from(self.started.elapsed().as_secs()).unwrap_or(i64::MAX)
    }
}
