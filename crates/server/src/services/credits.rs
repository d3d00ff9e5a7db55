//! Credits and debits outside the gateway's calls (C1, C2, C6, C7): grants,
//! the faucet, a namespace's welcome credits, deposits of top-ups and
//! subscriptions, bonus grants and their expiry.
//!
//! Policy:
//! - Every credit pins the namespace's in-memory account first, commits the
//!   ledger entry (with whatever row records why: a deposit, a bonus grant),
//!   then adds the amount to the pinned account; so the account never misses
//!   or double-counts a credit (see `accounts`).
//! - The commit and the in-memory move run in a task of their own: a request
//!   whose client goes away cannot stop between the two and leave the
//!   account behind the ledger.
//! - A debit outside the gateway (a bonus expiry) takes a hold like a call,
//!   so it never takes credits that calls in flight have reserved; on several
//!   instances it takes what no instance has reserved, under the balance row's
//!   lock.
//! - A credit is announced to the other instances (O5) when it commits, so
//!   one that was refusing the namespace's calls looks at the balance again.
//! - A credit may lift a balance back over a low-balance threshold, so the
//!   balance rules are checked after it (C5).

use std::sync::Arc;

use tally_common::{DepositNotification, Environment, IntentStatus, Severity};
use tally_store::billing::{DepositRow, IntentRow};
use tally_store::bonuses::BonusRow;
use tally_store::events::NewEvent;
use tally_store::ledger::{LedgerRow, NewEntry};
use tally_store::subscriptions::SubscriptionRow;
use tally_store::{AnyConnection, Store, StoreError};

use super::accounts::Accounts;
use super::billing::{self, units};
use crate::error::{ApiError, ApiResult};

/// Largest single grant, bonus or top-up: a billion credits.
pub const MAX_CREDIT: i64 = 1_000_000_000_000_000;

/// A credit to make.
#[derive(Debug, Clone)]
pub struct Credit {
    pub namespace_id: String,
    pub environment: Environment,
    /// The ledger kind: `grant`, `faucet`, `bonus`.
    pub kind: &'static str,
    pub amount_micros: i64,
    pub actor: String,
    pub reference: Option<String>,
    pub memo: Option<String>,
    /// The `credits.added` event's message.
    pub event: String,
    /// The namespace's last entry of the same kind must be older than this.
    pub cooldown_ms: Option<i64>,
    /// A bonus grant recorded with the entry, pointing at it.
    pub bonus: Option<BonusRow>,
}

/// Runs `work` in a task of its own (see the module policy).
async fn detached<T, F>(work: F) -> ApiResult<T>
where
    T: Send + 'static,
    F: std::future::Future<Output = ApiResult<T>> + Send + 'static,
{
    crate::telemetry::spawn_detached(work)
        .await
        .map_err(|e| ApiError::internal(anyhow::anyhow!("a credit task failed: {e}")))?
}

/// Adds credits; `Err(last)` when a cooldown is set and the namespace's last
/// entry of the kind (checked under its row lock, so two requests at once
/// cannot both pass) is at `last`, too recent.
pub async fn credit(
    store: &Store,
    accounts: &Arc<Accounts>,
    c: Credit,
) -> ApiResult<Result<LedgerRow, i64>> {
    let (store, accounts) = (store.clone(), accounts.clone());
    detached(async move {
        let pinned = accounts.pin(&c.namespace_id, c.environment).await?;
        let mut tx = store.begin().await?;
        if !tally_store::namespaces::lock(&mut tx, &c.namespace_id).await? {
            return Err(ApiError::not_found("namespace"));
        }
        if let Some(cooldown) = c.cooldown_ms {
            let last =
                tally_store::ledger::last_time_of_kind(&mut tx, &c.namespace_id, c.kind).await?;
            if let Some(last) = last.filter(|t| tally_store::now_ms() - t < cooldown) {
                return Ok(Err(last));
            }
        }
        let row = tally_store::ledger::append(
            &mut tx,
            NewEntry {
                namespace_id: &c.namespace_id,
                environment: c.environment,
                kind: c.kind,
                amount_micros: c.amount_micros,
                actor: &c.actor,
                reference: c.reference.as_deref(),
                memo: c.memo.as_deref(),
                rate_micros: None,
            },
        )
        .await?;
        if let Some(mut bonus) = c.bonus {
            bonus.ledger_entry_id = row.id;
            tally_store::bonuses::insert(&mut tx, &bonus).await?;
        }
        tally_store::events::insert(
            &mut tx,
            NewEvent {
                namespace_id: Some(&c.namespace_id),
                environment: Some(c.environment),
                kind: "credits.added",
                severity: Severity::Info,
                message: &c.event,
                actor: Some(&c.actor),
            },
        )
        .await?;
        announce_credit(&mut tx, &c.namespace_id, c.environment).await?;
        tx.commit().await?;
        pinned.credit(c.amount_micros);
        after_credit(&store, &c.namespace_id, c.environment).await;
        Ok(Ok(row))
    })
    .await
}

/// Tells the other instances (O5) that the account's balance grew, when the
/// transaction commits: one of them may be refusing its calls.
async fn announce_credit(
    conn: &mut AnyConnection,
    ns: &str,
    env: Environment,
) -> tally_store::Result<()> {
    tally_store::cluster::notify(conn, &format!("balance:{ns}:{env}")).await
}

/// The balance rules after a credit (C5); a failure is logged, the credit stands.
async fn after_credit(store: &Store, ns: &str, env: Environment) {
    if let Err(e) = billing::check_balance_rules(store, ns, env).await {
        tracing::warn!(error = %e, "low-balance check after a credit failed");
    }
}

/// Checks an operator's grant or bonus: the amount, the memo (trimmed; empty
/// is none; at most 500 characters without control characters) and that the
/// namespace exists. Returns the memo.
pub async fn check_grant(
    store: &Store,
    ns: &str,
    amount_micros: i64,
    memo: Option<&str>,
) -> ApiResult<Option<String>> {
    if !(1..=MAX_CREDIT).contains(&amount_micros) {
        return Err(ApiError::invalid(
            "amount_micros must be 1 to 1,000,000,000,000,000",
        ));
    }
    let memo = memo.map(str::trim).filter(|m| !m.is_empty());
    if memo
        .is_some_and(|m| m.chars().count() > 500 || m.chars().any(|c| c.is_control() && c != '\n'))
    {
        return Err(ApiError::invalid(
            "memo must be at most 500 characters without control characters",
        ));
    }
    let mut conn = store.conn().await?;
    if !tally_store::namespaces::exists(&mut conn, ns).await? {
        return Err(ApiError::not_found("namespace"));
    }
    Ok(memo.map(str::to_owned))
}

/// The test credits a namespace starts with, in its creating transaction
/// (no account of it is in memory yet).
pub async fn welcome(conn: &mut AnyConnection, namespace_id: &str, amount: i64) -> ApiResult<()> {
    if amount > 0 {
        tally_store::ledger::append(
            conn,
            NewEntry {
                namespace_id,
                environment: Environment::Test,
                kind: "grant",
                amount_micros: amount,
                actor: "system",
                reference: None,
                memo: Some("welcome test credits"),
                rate_micros: None,
            },
        )
        .await?;
    }
    Ok(())
}

/// What a deposit credits.
#[derive(Debug, Clone)]
pub struct DepositCredit {
    /// Micro-credits per unit: the conversion rate, or for a subscription
    /// period what its price works out at.
    pub rate: i64,
    pub credited: i64,
    /// The subscription whose period it pays.
    pub subscription: Option<SubscriptionRow>,
}

/// How committing a deposit went.
#[derive(Debug)]
pub enum DepositOutcome {
    Credited(DepositRow),
    /// The transaction id was already recorded (possibly by a racing request).
    Recorded(DepositRow),
    /// Another transaction paid the intent first.
    AlreadyPaid,
    /// A concurrent insert won; look again.
    Raced,
}

/// Credits a deposit in one transaction with its ledger entry, its deposit
/// row and the intent it pays (and the subscription period it starts).
pub async fn deposit(
    store: &Store,
    accounts: &Arc<Accounts>,
    intent: &IntentRow,
    n: &DepositNotification,
    credit: &DepositCredit,
) -> ApiResult<DepositOutcome> {
    let (store, accounts) = (store.clone(), accounts.clone());
    let (intent, n, credit) = (intent.clone(), n.clone(), credit.clone());
    detached(async move {
        let (rate, credited) = (credit.rate, credit.credited);
        let (ns, env) = (intent.namespace_id.as_str(), intent.environment);
        let pinned = accounts.pin(ns, env).await?;
        let mut tx = store.begin().await?;
        if !tally_store::namespaces::lock(&mut tx, ns).await? {
            return Err(ApiError::not_found("payment intent"));
        }
        if let Some(d) = tally_store::billing::deposit(&mut tx, &n.external_tx_id).await? {
            return Ok(DepositOutcome::Recorded(d));
        }
        let current = tally_store::billing::intent(&mut tx, &intent.id).await?;
        if current.is_none_or(|i| i.status != IntentStatus::Pending) {
            return Ok(DepositOutcome::AlreadyPaid);
        }
        let memo = match &credit.subscription {
            Some(sub) => format!(
                "{} for payment intent {}: one month of the {} package",
                units(n.amount_units, n.currency),
                intent.id,
                sub.package
            ),
            None => format!(
                "{} for payment intent {} at {} credits per unit",
                units(n.amount_units, n.currency),
                intent.id,
                billing::credits(rate)
            ),
        };
        if let Some(sub) = &credit.subscription {
            let now = tally_store::now_ms();
            let start = sub.period_end.unwrap_or(now).max(now);
            tally_store::subscriptions::paid(&mut tx, &sub.id, one_month_after(start)).await?;
        }
        let entry = tally_store::ledger::append(
            &mut tx,
            NewEntry {
                namespace_id: ns,
                environment: env,
                kind: if credit.subscription.is_some() {
                    "subscription"
                } else {
                    "topup"
                },
                amount_micros: credited,
                actor: "deposit",
                reference: Some(&n.external_tx_id),
                memo: Some(&memo),
                rate_micros: Some(rate),
            },
        )
        .await?;
        let recorded = DepositRow {
            external_tx_id: n.external_tx_id.clone(),
            intent_id: intent.id.clone(),
            namespace_id: ns.to_owned(),
            environment: env,
            currency: n.currency,
            amount_units: n.amount_units,
            rate_micros: rate,
            credited_micros: credited,
            ledger_entry_id: entry.id,
            received_at: entry.time,
        };
        match tally_store::billing::record_deposit(&mut tx, &recorded).await {
            Err(StoreError::Conflict(_)) => return Ok(DepositOutcome::Raced),
            other => other?,
        }
        tally_store::events::insert(
            &mut tx,
            NewEvent {
                namespace_id: Some(ns),
                environment: Some(env),
                kind: "credits.added",
                severity: Severity::Info,
                message: &format!(
                    "{} of {} credits: {} (transaction {})",
                    if credit.subscription.is_some() {
                        "Subscription credits"
                    } else {
                        "Top-up"
                    },
                    billing::credits(credited),
                    memo,
                    n.external_tx_id
                ),
                actor: Some("deposit"),
            },
        )
        .await?;
        let mut data = serde_json::json!({
            "intent_id": intent.id,
            "external_tx_id": n.external_tx_id,
            "currency": n.currency.as_str(),
            "amount_units": n.amount_units,
            "rate_micros": rate,
            "credited_micros": credited,
            "ledger_entry_id": recorded.ledger_entry_id,
        });
        let event_type = match &credit.subscription {
            Some(sub) => {
                data["subscription_id"] = sub.id.clone().into();
                data["package"] = sub.package.clone().into();
                "subscription.renewed"
            }
            None => "topup.confirmed",
        };
        super::webhooks::emit(&mut tx, ns, Some(env), event_type, data).await?;
        announce_credit(&mut tx, ns, env).await?;
        tx.commit().await?;
        pinned.credit(credited);
        after_credit(&store, ns, env).await;
        Ok(DepositOutcome::Credited(recorded))
    })
    .await
}

/// The same time of day one calendar month later (the month's last day when
/// it is shorter).
pub fn one_month_after(ms: i64) -> i64 {
    chrono::DateTime::from_timestamp_millis(ms)
        .and_then(|t| t.checked_add_months(chrono::Months::new(1)))
        .map_or(ms + 30 * 24 * 3600 * 1000, |t| t.timestamp_millis())
}

/// Expires what is left of the account's bonus grants past their expiry (C7).
pub async fn expire_bonuses(
    store: &Store,
    accounts: &Accounts,
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
        // Several instances: this one's spare lease goes back first, so the
        // expiry can take it.
        accounts.return_lease(ns, env).await?;
        let hold = accounts.hold_up_to(ns, env, g.remaining_micros).await?;
        let mut taken = hold.amount();
        let mut tx = store.begin().await?;
        if accounts.leasing().is_some() {
            // Several instances: take what no instance has reserved, under
            // the balance row's lock.
            let free = tally_store::cluster::lock_unreserved(&mut tx, ns, env).await?;
            taken = taken.min(free).max(0);
        }
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
                        billing::credits(g.amount_micros)
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
                    billing::credits(taken),
                    billing::credits(g.amount_micros)
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
