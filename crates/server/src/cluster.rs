//! Several instances on one PostgreSQL database behaving as one (O5).
//!
//! Policy:
//! - Every instance registers itself in `cluster_instances` and heartbeats
//!   every third of `cluster.lease_ttl_secs`. Each heartbeat also removes the
//!   instances that missed a whole timeout and returns their credit leases to
//!   the balances ([`tally_store::cluster::reap`]); an instance that finds
//!   itself removed stops spending its leases ([`Accounts::void_leases`]) and
//!   registers again. Unused leases go back every second once idle
//!   ([`Accounts::return_idle`]), and all of them at shutdown ([`Cluster::leave`]).
//! - Changes other instances must see (keys, catalog, credits, seller pauses)
//!   arrive through PostgreSQL LISTEN/NOTIFY on
//!   [`tally_store::cluster::CHANNEL`]; each one is applied at once. While the
//!   listening connection is down, the gateway polls at its short interval
//!   (`gateway.poll_interval_ms`) and otherwise only every
//!   `cluster.fallback_poll_ms`, so a lost notification delays a change but
//!   never loses it.
//! - Background upkeep runs on one instance at a time: the holder of a
//!   PostgreSQL session advisory lock on a connection of its own
//!   ([`Leadership`]). The lock goes with the connection, so a dead leader's
//!   lock is free as soon as PostgreSQL sees the connection gone; the holder
//!   checks its connection every second and stops leading when it fails.
//!   Upkeep steps are conditional updates anyway, so the moment two
//!   instances might overlap does no harm.
//! - On SQLite there is one instance: it leads, and nothing here runs.

use std::sync::Arc;
use std::time::Duration;

use tally_common::Environment;
use tally_store::sqlx::postgres::{PgConnection, PgListener};
use tally_store::sqlx::{self, Connection};
use tally_store::{Backend, Store};

use crate::config::ClusterSettings;
use crate::gateway::Gateway;
use crate::leadership::Leadership;
use crate::services::accounts::Accounts;

/// The advisory lock key of the upkeep leader ("tally" in ASCII).
const LEADER_LOCK: i64 = 0x0074_616c_6c79;

/// This instance's place among several.
pub struct Cluster {
    pub instance: String,
    store: Store,
    url: String,
    address: String,
    settings: ClusterSettings,
    pub leadership: Leadership,
}

impl Cluster {
    /// The id an instance gets at start; leases name it.
    pub fn new_instance_id() -> String {
        tally_store::new_id("inst")
    }

    /// Registers the instance (PostgreSQL) and returns its handle; background
    /// work starts with [`Cluster::start`].
    pub async fn join(
        store: Store,
        url: String,
        instance: String,
        address: String,
        settings: ClusterSettings,
    ) -> anyhow::Result<Arc<Cluster>> {
        let single = store.backend() == Backend::Sqlite;
        if !single {
            let mut conn = store.conn().await?;
            tally_store::cluster::register(
                &mut conn,
                &instance,
                &address,
                env!("CARGO_PKG_VERSION"),
                tally_store::now_ms(),
            )
            .await?;
        }
        let leadership = if single {
            Leadership::single()
        } else {
            Leadership::follower()
        };
        Ok(Arc::new(Cluster {
            instance,
            store,
            url,
            address,
            settings,
            leadership,
        }))
    }

    pub fn is_single(&self) -> bool {
        self.store.backend() == Backend::Sqlite
    }

    fn ttl(&self) -> Duration {
        Duration::from_secs(self.settings.lease_ttl_secs.max(1))
    }

    /// Starts the heartbeat, the lease upkeep, the change listener and the
    /// leader election (nothing on SQLite).
    pub fn start(self: &Arc<Self>, gateway: &Arc<Gateway>) {
        if self.is_single() {
            return;
        }
        let me = Arc::downgrade(self);
        let gw = Arc::downgrade(gateway);
        tokio::spawn(async move {
            let Some(every) = me.upgrade().map(|c| c.ttl() / 3) else {
                return;
            };
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let (Some(me), Some(gw)) = (me.upgrade(), gw.upgrade()) else {
                    return;
                };
                if let Err(e) = me.heartbeat(gw.accounts()).await {
                    tracing::warn!(error = %e, "cluster heartbeat failed");
                }
            }
        });
        let gw = Arc::downgrade(gateway);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(gw) = gw.upgrade() else { return };
                match gw.accounts().return_idle().await {
                    Ok(n) if n > 0 => {
                        metrics::counter!("tally_credit_lease_returns_total").increment(n as u64);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "returning idle credit leases failed"),
                }
            }
        });
        let me = Arc::downgrade(self);
        let gw = Arc::downgrade(gateway);
        tokio::spawn(async move { listen(me, gw).await });
        let me = Arc::downgrade(self);
        tokio::spawn(async move { lead(me).await });
    }

    async fn heartbeat(&self, accounts: &Accounts) -> tally_store::Result<()> {
        let now = tally_store::now_ms();
        let mut tx = self.store.begin().await?;
        if !tally_store::cluster::heartbeat(&mut tx, &self.instance, now).await? {
            tracing::error!(
                instance = %self.instance,
                "this instance was taken for dead (no heartbeat for the lease timeout); its credit leases went back to the balances: joining again"
            );
            accounts.void_leases();
            tally_store::cluster::register(
                &mut tx,
                &self.instance,
                &self.address,
                env!("CARGO_PKG_VERSION"),
                now,
            )
            .await?;
        }
        let ttl_ms = i64::try_from(self.ttl().as_millis()).unwrap_or(i64::MAX);
        let reaped = tally_store::cluster::reap(&mut tx, now - ttl_ms, now).await?;
        tx.commit().await?;
        for (id, returned) in reaped {
            tracing::warn!(instance = %id, returned_micros = returned, "an instance stopped heartbeating; its credit leases went back to the balances");
        }
        Ok(())
    }

    /// Leaves the cluster: every lease goes back and the instance is removed.
    pub async fn leave(&self) {
        if self.is_single() {
            return;
        }
        let done = async {
            let mut tx = self.store.begin().await?;
            let returned =
                tally_store::cluster::leave(&mut tx, &self.instance, tally_store::now_ms()).await?;
            tx.commit().await?;
            Ok::<_, tally_store::StoreError>(returned)
        }
        .await;
        match done {
            Ok(returned) => {
                tracing::info!(
                    returned_micros = returned,
                    "left the cluster; credit leases returned"
                )
            }
            Err(e) => {
                tracing::warn!(error = %e, "leaving the cluster failed; leases return after the lease timeout")
            }
        }
    }
}

/// Applies one change notification.
fn apply(gateway: &Gateway, payload: &str) -> bool {
    match payload.split_once(':') {
        Some(("key", id)) => {
            gateway.forget_key(id);
            false
        }
        Some(("balance", rest)) => {
            if let Some((ns, env)) = rest.rsplit_once(':') {
                if let Some(env) = Environment::parse(env) {
                    gateway.accounts().wake(ns, env);
                }
            }
            false
        }
        Some(("seller", ns)) => {
            gateway.accounts().wake(ns, Environment::Live);
            false
        }
        _ if payload == "catalog" => true,
        _ => false,
    }
}

/// Follows change notifications, reconnecting after a second when the
/// connection fails; a catalog change reloads the catalog, anything missed
/// while disconnected is caught by a full poll.
async fn listen(me: std::sync::Weak<Cluster>, gw: std::sync::Weak<Gateway>) {
    loop {
        let Some(url) = me.upgrade().map(|c| c.url.clone()) else {
            return;
        };
        match PgListener::connect(&url).await {
            Ok(mut listener) => {
                if let Err(e) = listener.listen(tally_store::cluster::CHANNEL).await {
                    tracing::warn!(error = %e, "cannot listen for changes");
                } else {
                    metrics::gauge!("tally_cluster_notifications_up").set(1.0);
                    // What changed before this connection listened.
                    if let Some(gw) = gw.upgrade() {
                        gw.set_pushed(true);
                        gw.poll_now();
                    }
                    loop {
                        match listener.try_recv().await {
                            Ok(Some(n)) => {
                                let Some(gw) = gw.upgrade() else { return };
                                if apply(&gw, n.payload()) {
                                    if let Err(e) = gw.reload_catalog().await {
                                        tracing::warn!(error = %e, "reloading the catalog failed");
                                    }
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                tracing::warn!(error = %e, "the change notification connection failed");
                                break;
                            }
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot connect for change notifications"),
        }
        if me.upgrade().is_none() {
            return;
        }
        metrics::gauge!("tally_cluster_notifications_up").set(0.0);
        if let Some(gw) = gw.upgrade() {
            gw.set_pushed(false);
            gw.poll_now();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Tries to become the upkeep leader every second; holds the lock on a
/// connection of its own and stops leading as soon as that connection fails.
async fn lead(me: std::sync::Weak<Cluster>) {
    let mut conn: Option<PgConnection> = None;
    loop {
        let Some(c) = me.upgrade() else { return };
        let leading = c.leadership.is_leader();
        let outcome = async {
            if conn.is_none() {
                conn = Some(PgConnection::connect(&c.url).await?);
            }
            let Some(db) = conn.as_mut() else {
                return Ok(false);
            };
            if leading {
                sqlx::query("SELECT 1").execute(&mut *db).await?;
                Ok(true)
            } else {
                let (got,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
                    .bind(LEADER_LOCK)
                    .fetch_one(&mut *db)
                    .await?;
                Ok::<_, sqlx::Error>(got)
            }
        }
        .await;
        match outcome {
            Ok(got) => c.leadership.set(got),
            Err(e) => {
                if leading {
                    tracing::warn!(error = %e, "the upkeep leader's connection failed");
                }
                c.leadership.set(false);
                conn = None;
            }
        }
        drop(c);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
