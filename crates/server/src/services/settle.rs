//! Settling a gateway call (C3, C8): hold its maximum cost before it is
//! forwarded, price what it used, and record it with its ledger entries.
//!
//! Policy:
//! - A call is admitted only with a [`Charge`] holding its maximum cost
//!   ([`super::pricing`]) against the in-memory balance, or with none when it
//!   is refused before that (it then costs nothing).
//! - What a call costs is priced from what it used and never exceeds the
//!   hold ([`Charge::price`]). Billable are answers the caller received: 2xx
//!   answers, and streams for what they delivered however they ended (the
//!   upstream broke off, stalled, or the client went away). Refusals, upstream
//!   failures before any answer, and the upstream's own 4xx/5xx answers cost
//!   nothing.
//! - A call to a seller's API (C8) credits the seller with its cost less the
//!   platform fee, in the same commit as the caller's debit.
//! - [`Settler::record`] hands the call to the group-commit writer with what
//!   its commit moves in memory, so the accounts follow the commit even when
//!   the call is no longer waiting.

use std::sync::Arc;

use tally_common::{Environment, Pricing};
use tally_store::usage::CallRecord;

use super::accounts::{Accounts, Hold, Insufficient};
use super::pricing;
use super::recorder::{Recorder, Settlement};

/// The money side of one gateway call.
#[derive(Debug)]
pub struct Charge {
    pricing: Pricing,
    hold: Option<Hold>,
    /// The seller namespace that owns the API (C8).
    seller: Option<String>,
}

/// What a finished call used.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// Whether the caller received something billable (see the module policy).
    pub billable: bool,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub compute_us: u64,
}

impl Charge {
    /// A call refused before anything was held: it costs nothing.
    pub fn none(seller: Option<String>) -> Charge {
        Charge {
            pricing: Pricing::default(),
            hold: None,
            seller,
        }
    }

    pub fn seller(&self) -> Option<&str> {
        self.seller.as_deref()
    }

    /// Prices what the call used, keeps holding just that (never more than
    /// was held) and releases the rest; returns the cost.
    pub fn price(&mut self, used: &Usage) -> i64 {
        let cost = if used.billable {
            pricing::cost(
                &self.pricing,
                used.tokens_in,
                used.tokens_out,
                used.compute_us,
            )
        } else {
            0
        };
        match self.hold.as_mut() {
            Some(h) => h.settle(cost),
            None => 0,
        }
    }
}

pub struct Settler {
    accounts: Arc<Accounts>,
    recorder: Recorder,
    platform_fee_bps: u32,
}

impl Settler {
    pub fn new(accounts: Arc<Accounts>, recorder: Recorder, platform_fee_bps: u32) -> Self {
        Settler {
            accounts,
            recorder,
            platform_fee_bps,
        }
    }

    pub fn accounts(&self) -> &Arc<Accounts> {
        &self.accounts
    }

    /// Holds `max_cost` of the caller's balance for a call priced by `pricing`.
    pub async fn hold(
        &self,
        ns: &str,
        env: Environment,
        pricing: &Pricing,
        max_cost: i64,
        seller: Option<String>,
    ) -> tally_store::Result<Result<Charge, Insufficient>> {
        Ok(self
            .accounts
            .hold(ns, env, max_cost)
            .await?
            .map(|hold| Charge {
                pricing: pricing.clone(),
                hold: Some(hold),
                seller,
            }))
    }

    /// Records a finished call whose cost is `record.cost_micros` (from
    /// [`Charge::price`]) and waits for the commit; false when it could not be
    /// recorded (nothing is then charged).
    pub async fn record(&self, mut record: CallRecord, charge: Charge) -> bool {
        let cost = record.cost_micros;
        record.seller_namespace_id = charge.seller;
        record.platform_fee_micros = match &record.seller_namespace_id {
            Some(_) => pricing::platform_fee(cost, self.platform_fee_bps),
            None => 0,
        };
        let seller = match record.seller_namespace_id.as_deref() {
            Some(seller) if cost > 0 => {
                // Pinned before the commit, so the credit cannot be missed by
                // a load racing with it (see `accounts`).
                match self.accounts.pin(seller, record.environment).await {
                    Ok(pinned) => Some((pinned, cost - record.platform_fee_micros)),
                    Err(e) => {
                        tracing::error!(error = %e, "loading a seller's account failed");
                        return false;
                    }
                }
            }
            _ => None,
        };
        let settlement = Settlement {
            hold: charge.hold,
            seller,
        };
        self.recorder.record(record, settlement).await
    }
}
