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
    /// The maximum cost of calls in flight, reserved until they finish (with
    /// several instances: the calls in flight on the instance that answered).
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
    /// `grant`, `faucet`, `usage`, `topup`, `subscription`, `bonus`,
    /// `bonus_expired`, `revenue` (a seller's earnings from a call) or
    /// `platform_fee` (the platform's share of them).
    pub kind: String,
    /// Signed: credits in are positive, usage is negative.
    pub amount_micros: i64,
    /// The balance right after this entry.
    pub balance_after_micros: i64,
    /// Who or what caused it: an operator's email, `faucet`, `system`,
    /// `gateway` (a seller's entries), or the key id of a call.
    pub actor: String,
    /// The call id for usage and seller revenue, the external transaction id
    /// for top-ups, the grant id for bonuses and their expiry.
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
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 1, maximum = 1_000_000_000_000_000_i64)
    )]
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

/// Why a bonus was granted (C7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum BonusReason {
    RunningNode,
    TestJob,
    Feedback,
    Referral,
    Other,
}

impl BonusReason {
    pub const ALL: [BonusReason; 5] = [
        BonusReason::RunningNode,
        BonusReason::TestJob,
        BonusReason::Feedback,
        BonusReason::Referral,
        BonusReason::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BonusReason::RunningNode => "running_node",
            BonusReason::TestJob => "test_job",
            BonusReason::Feedback => "feedback",
            BonusReason::Referral => "referral",
            BonusReason::Other => "other",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        BonusReason::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// How the dashboard names it.
    pub fn label(self) -> &'static str {
        match self {
            BonusReason::RunningNode => "Running a node",
            BonusReason::TestJob => "Completing test jobs",
            BonusReason::Feedback => "Feedback",
            BonusReason::Referral => "Referral",
            BonusReason::Other => "Other",
        }
    }
}

/// An operator's bonus to a namespace (C7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BonusRequest {
    pub environment: Environment,
    /// 1 to 1,000,000,000,000,000 micro-credits.
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 1, maximum = 1_000_000_000_000_000_i64)
    )]
    pub amount_micros: i64,
    pub reason: BonusReason,
    /// RFC 3339, in the future and at most 366 days away; absent: never expires.
    #[serde(default)]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub memo: Option<String>,
}

/// A bonus grant and what is left of it. Bonus credits that expire are spent
/// before other credits, the soonest to expire first; at expiry what is left
/// leaves the balance through a `bonus_expired` ledger entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Bonus {
    pub id: String,
    pub environment: Environment,
    pub reason: BonusReason,
    pub memo: Option<String>,
    pub amount_micros: i64,
    /// Unspent part of an expiring grant; the whole amount for one that never expires.
    pub remaining_micros: i64,
    pub expires_at: Option<String>,
    /// `active`, `used` or `expired`.
    pub status: String,
    /// What left the balance at expiry.
    pub expired_micros: i64,
    pub granted_by: String,
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BonusList {
    /// Newest first.
    pub items: Vec<Bonus>,
    /// Unspent bonus credits that will expire.
    pub expiring_micros: i64,
    /// The soonest expiry among active grants (RFC 3339).
    pub next_expiry: Option<String>,
}

/// A notice the dashboard shows above every page (D5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Banner {
    /// `serving_paused`, `low_balance` or `backup_overdue`.
    pub kind: String,
    pub severity: crate::Severity,
    pub message: String,
    /// Where the dashboard sends the user to fix it (an SPA path).
    pub link: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BannerList {
    pub items: Vec<Banner>,
}
