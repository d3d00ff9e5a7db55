//! Background upkeep of credits: bonus expiry (C7), the serving state of
//! sellers (C8), subscription renewals (C6) and warnings of keys about to
//! expire (W1).
//!
//! Policy: one loop per instance, every `billing.alert_check_interval_ms`,
//! calling the services that do the work (`services::credits`,
//! `services::subscriptions`); it works only while this instance leads the
//! upkeep (`crate::cluster::Leadership`), so on several instances one does it.
//! Each step is also safe should two overlap while the leadership moves: an
//! expiry is taken by one conditional UPDATE of its grant, a pause or resume is
//! reported by one conditional UPDATE of the seller's state, a renewal is
//! claimed by one conditional UPDATE of its subscription.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tally_common::{Environment, Severity};
use tally_store::events::NewEvent;
use tally_store::Store;

use crate::config::WebhookSettings;
use crate::error::ApiResult;
use crate::gateway::Gateway;
use crate::leadership::Leadership;
use crate::services::{self, billing::credits};

/// Reports a seller's pause or resume (one event per change) when its state
/// differs from the last one seen. `seen` is this instance's memory of the
/// states it last recorded, so a state that did not change costs no database
/// write.
pub async fn check_seller(
    store: &Store,
    gateway: &Gateway,
    seller: &str,
    seen: &mut HashMap<String, bool>,
) -> ApiResult<()> {
    let paused = gateway.seller_paused(seller).await?;
    if seen.get(seller) == Some(&paused) {
        return Ok(());
    }
    let mut tx = store.begin().await?;
    if !tally_store::namespaces::exists(&mut tx, seller).await? {
        return Ok(());
    }
    if tally_store::sellers::set_paused(&mut tx, seller, paused).await? {
        tally_store::cluster::notify(&mut tx, &format!("seller:{seller}")).await?;
        let critical = credits(gateway.settings().seller_critical_balance_micros);
        let (kind, severity, message) = if paused {
            (
                "serving.paused",
                Severity::Error,
                format!(
                    "API serving paused: the live balance is below the critical level of {critical} credits. Live calls to this namespace's APIs get 503 until it is topped up; test mode keeps working"
                ),
            )
        } else {
            (
                "serving.resumed",
                Severity::Info,
                format!(
                    "API serving resumed: the live balance is back at or above {critical} credits"
                ),
            )
        };
        tally_store::events::insert(
            &mut tx,
            NewEvent {
                namespace_id: Some(seller),
                environment: Some(Environment::Live),
                kind,
                severity,
                message: &message,
                actor: Some("system"),
            },
        )
        .await?;
        services::webhooks::emit(
            &mut tx,
            seller,
            Some(Environment::Live),
            kind,
            serde_json::json!({
                "critical_balance_micros": gateway.settings().seller_critical_balance_micros,
            }),
        )
        .await?;
    }
    tx.commit().await?;
    seen.insert(seller.to_owned(), paused);
    Ok(())
}

/// One round of upkeep; `seen` as for [`check_seller`].
pub async fn run_once(
    store: &Store,
    gateway: &Gateway,
    webhooks: &WebhookSettings,
    seen: &mut HashMap<String, bool>,
) -> ApiResult<()> {
    let due = {
        let mut conn = store.conn().await?;
        tally_store::bonuses::due(&mut conn, tally_store::now_ms()).await?
    };
    for (ns, env) in due {
        services::credits::expire_bonuses(store, gateway.accounts(), &ns, env).await?;
    }
    for seller in gateway.sellers() {
        check_seller(store, gateway, &seller, seen).await?;
    }
    services::subscriptions::renew(store).await?;
    services::webhooks::warn_expiring_keys(store, webhooks).await?;
    Ok(())
}

/// Starts the upkeep loop on the current runtime.
pub fn start(
    store: Store,
    gateway: Arc<Gateway>,
    webhooks: WebhookSettings,
    interval: Duration,
    leadership: Leadership,
) {
    let gateway = Arc::downgrade(&gateway);
    tokio::spawn(async move {
        let mut seen = HashMap::new();
        let mut tick = tokio::time::interval(interval.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(gateway) = gateway.upgrade() else {
                return;
            };
            if !leadership.is_leader() {
                // Another instance may change what was seen meanwhile.
                seen.clear();
                continue;
            }
            metrics::counter!("tally_upkeep_rounds_total", "task" => "credits").increment(1);
            let result = run_once(&store, &gateway, &webhooks, &mut seen).await;
            crate::telemetry::task_round("credits", result.is_ok());
            if let Err(e) = result {
                tracing::warn!(error = %e, "credit upkeep failed");
            }
        }
    });
}
