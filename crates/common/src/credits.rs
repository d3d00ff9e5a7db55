//! Credits (C1, C3 core): balances per namespace and environment, the ledger
//! they are the sum of, operator grants and the testnet faucet.

use serde::{Deserialize, Serialize};

use crate::Environment;

/// A balance and what is held against it by calls in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Balance {
    pub environment: Environment,
    /// The sum of every ledger entry of this namespace and environment.
    pub balance_micros: i64,
    /// The maximum cost of calls in flight, reserved until they finish.
    pub held_micros: i64,
    /// What a new call can use: balance minus holds.
    pub available_micros: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Balances {
    pub items: Vec<Balance>,
}

/// One append-only ledger entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LedgerEntry {
    pub id: i64,
    pub time: String,
    pub environment: Environment,
    /// `grant`, `faucet`, `usage` or `topup`.
    pub kind: String,
    /// Signed: credits in are positive, usage is negative.
    pub amount_micros: i64,
    /// The balance right after this entry.
    pub balance_after_micros: i64,
    /// Who or what caused it: an operator's email, `faucet`, or the key id of a call.
    pub actor: String,
    /// The call id for usage, the external transaction id for top-ups.
    pub reference: Option<String>,
    pub memo: Option<String>,
    /// Top-ups: the conversion rate applied, in micro-credits per whole unit
    /// of the paid currency (1,000,000 is one credit per unit).
    #[serde(default)]
    pub rate_micros: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LedgerPage {
    /// Newest first.
    pub items: Vec<LedgerEntry>,
    /// Pass as `before` for the next (older) page; absent on the last page.
    pub next_before: Option<i64>,
}

/// An operator's grant of credits to a namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GrantRequest {
    pub environment: Environment,
    /// 1 to 1,000,000,000,000,000 micro-credits (one billion credits).
    pub amount_micros: i64,
    #[serde(default)]
    pub memo: Option<String>,
}

/// What the faucet gave and when it gives again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FaucetResult {
    pub amount_micros: i64,
    pub balance: Balance,
    /// RFC 3339: the earliest time of the next faucet top-up.
    pub next_available_at: String,
}
