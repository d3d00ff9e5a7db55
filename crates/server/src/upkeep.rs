//! Background upkeep of credits: bonus expiry (C7), the serving state of
//! sellers (C8) and subscription renewals (C6).
//!
//! Policy: one loop per instance, every `billing.alert_check_interval_ms`.
//! Each step is safe to run from several instances at once: an expiry is
//! taken by one conditional UPDATE of its grant, a pause or resume is
//! reported by one conditional UPDATE of the seller's state, a renewal is
//! claimed by one conditional UPDATE of its subscription. Debits go
//! through the gateway's in-memory account like a call's capture, so an
//! expiry never takes credits that calls in flight have reserved.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tally_common::{Environment, Severity};
use tally_store::events::NewEvent;
use tally_store::ledger::NewEntry;
use tally_store::Store;

use crate::billing::credits;
use crate::error::ApiResult;
use crate::gateway::Gateway;
use crate::routes::subscriptions::{new_period_intent, RENEWAL_ACTOR};
use crate::routes::topups::units;

/// Expires what is left of the account's bonus grants past their expiry.
pub async fn expire_bonuses(
    store: &Store,
    gateway: &Gateway,
    ns: &str,
    env: Environment,
) -> ApiResult<()> {
    let now = tally_store::now_ms();
    let grants = {
        let mut tx = store.begin().await?;
        let grants = tally_store::bonuses::replay(&mut tx, ns, env).await?;
        tx.commit().await?;
        grants
    };
    for g in grants
        .into_iter()
        .filter(|g| g.status == "active" && g.expires_at.is_some_and(|t| t <= now))
    {
        let hold = gateway
            .accounts
            .hold_up_to(ns, env, g.remaining_micros)
            .await?;
        let taken = hold.amount();
        let mut tx = store.begin().await?;
        if !tally_store::bonuses::mark_expired(&mut tx, &g.id, taken).await? {
            // Another instance expired it; dropping the hold releases it.
            continue;
        }
        if taken > 0 {
            tally_store::ledger::append(
                &mut tx,
                NewEntry {
                    namespace_id: ns,
                    environment: env,
                    kind: tally_store::bonuses::EXPIRY_KIND,
                    amount_micros: -taken,
                    actor: "system",
                    reference: Some(&g.id),
                    memo: Some(&format!(
                        "unspent part of a bonus of {} credits",
                        credits(g.amount_micros)
                    )),
                    rate_micros: None,
                },
            )
            .await?;
        }
        tally_store::events::insert(
            &mut tx,
            NewEvent {
                namespace_id: Some(ns),
                environment: Some(env),
                kind: "credits.bonus_expired",
                severity: Severity::Info,
                message: &format!(
                    "A bonus expired: {} of its {} credits left the {env} balance",
                    credits(taken),
                    credits(g.amount_micros)
                ),
                actor: Some("system"),
            },
        )
        .await?;
        tx.commit().await?;
        hold.committed();
    }
    Ok(())
}

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
    }
    tx.commit().await?;
    seen.insert(seller.to_owned(), paused);
    Ok(())
}

/// Ends cancelled subscriptions whose paid period is over and creates the
/// renewal intent of the others (once per period).
pub async fn renew_subscriptions(store: &Store) -> ApiResult<()> {
    let due = {
        let mut conn = store.conn().await?;
        tally_store::subscriptions::due(&mut conn, tally_store::now_ms()).await?
    };
    for sub in due {
        let mut tx = store.begin().await?;
        let (kind, message) = if sub.cancel_at_period_end {
            if !tally_store::subscriptions::end(&mut tx, &sub.id).await? {
                continue;
            }
            (
                "subscription.ended",
                format!(
                    "The cancelled subscription to {} ended with its paid period",
                    sub.package
                ),
            )
        } else {
            let intent_id = tally_store::new_id("pi");
            if !tally_store::subscriptions::claim_renewal(&mut tx, &sub.id, &intent_id).await? {
                continue;
            }
            new_period_intent(&mut tx, &sub, &intent_id, RENEWAL_ACTOR).await?;
            (
                "subscription.renewal_due",
                format!(
                    "The subscription to {} renews: payment intent {intent_id} for {} created",
                    sub.package,
                    units(sub.price_units, sub.currency)
                ),
            )
        };
        tally_store::events::insert(
            &mut tx,
            NewEvent {
                namespace_id: Some(&sub.namespace_id),
                environment: Some(sub.environment),
                kind,
                severity: Severity::Info,
                message: &message,
                actor: Some(RENEWAL_ACTOR),
            },
        )
        .await?;
        tx.commit().await?;
    }
    Ok(())
}

/// One round of upkeep; `seen` as for [`check_seller`].
pub async fn run_once(
    store: &Store,
    gateway: &Gateway,
    seen: &mut HashMap<String, bool>,
) -> ApiResult<()> {
    let due = {
        let mut conn = store.conn().await?;
        tally_store::bonuses::due(&mut conn, tally_store::now_ms()).await?
    };
    for (ns, env) in due {
        expire_bonuses(store, gateway, &ns, env).await?;
    }
    for seller in gateway.sellers() {
        check_seller(store, gateway, &seller, seen).await?;
    }
    renew_subscriptions(store).await
}

/// Starts the upkeep loop on the current runtime.
pub fn start(store: Store, gateway: Arc<Gateway>, interval: Duration) {
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
            if let Err(e) = run_once(&store, &gateway, &mut seen).await {
                tracing::warn!(error = %e, "credit upkeep failed");
            }
        }
    });
}
