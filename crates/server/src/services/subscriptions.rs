//! Subscription periods (C6): the payment intent of each period, and the
//! renewal of the periods that end.
//!
//! Policy: a renewal is claimed by one conditional UPDATE of its
//! subscription, so it is made once even with several instances; a cancelled
//! subscription ends with its paid period instead. The credits of a period
//! come with the deposit that pays its intent (`credits::deposit`).

use tally_common::{IntentStatus, Severity};
use tally_store::billing::IntentRow;
use tally_store::events::NewEvent;
use tally_store::subscriptions::SubscriptionRow;
use tally_store::{AnyConnection, Store};

use super::billing::units;
use crate::error::ApiResult;

/// Who creates renewal intents.
pub const RENEWAL_ACTOR: &str = "subscription";

/// Creates the payment intent of one period of a subscription.
pub async fn new_period_intent(
    conn: &mut AnyConnection,
    sub: &SubscriptionRow,
    intent_id: &str,
    actor: &str,
) -> ApiResult<()> {
    tally_store::billing::insert_intent(
        conn,
        &IntentRow {
            id: intent_id.to_owned(),
            namespace_id: sub.namespace_id.clone(),
            environment: sub.environment,
            currency: sub.currency,
            amount_units: sub.price_units,
            status: IntentStatus::Pending,
            created_by: actor.to_owned(),
            created_at: tally_store::now_ms(),
            deposit: None,
            subscription_id: Some(sub.id.clone()),
        },
    )
    .await?;
    Ok(())
}

/// Ends cancelled subscriptions whose paid period is over and creates the
/// renewal intent of the others (once per period).
pub async fn renew(store: &Store) -> ApiResult<()> {
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
        if !sub.cancel_at_period_end {
            super::webhooks::emit(
                &mut tx,
                &sub.namespace_id,
                Some(sub.environment),
                kind,
                serde_json::json!({
                    "subscription_id": sub.id,
                    "package": sub.package,
                    "price_units": sub.price_units,
                    "currency": sub.currency.as_str(),
                }),
            )
            .await?;
        }
        tx.commit().await?;
    }
    Ok(())
}
