//! Billing (C2, C4, C5, C6): top-ups through payment intents and signed deposit
//! notifications, monthly statements, low-balance alerts, auto top-up rules.
//!
//! Currency amounts are integers in millionths of one unit (`_units`; USDC
//! and USDT have 6 decimals), credits are micro-credits (`_micros`), and a
//! conversion rate is micro-credits per whole unit of the currency.

use serde::{Deserialize, Serialize};

use crate::Environment;

/// What a top-up is paid in. RTITY is accepted only once the server is
/// configured as past the token generation event (`billing.post_tge`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Currency {
    #[serde(rename = "USDC")]
    Usdc,
    #[serde(rename = "USDT")]
    Usdt,
    #[serde(rename = "RTITY")]
    Rtity,
}

impl Currency {
    pub const ALL: [Currency; 3] = [Currency::Usdc, Currency::Usdt, Currency::Rtity];

    pub fn as_str(self) -> &'static str {
        match self {
            Currency::Usdc => "USDC",
            Currency::Usdt => "USDT",
            Currency::Rtity => "RTITY",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Currency::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl std::fmt::Display for Currency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum IntentStatus {
    /// Waiting for its deposit.
    Pending,
    /// Paid: the deposit was converted and credited.
    Succeeded,
}

impl IntentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            IntentStatus::Pending => "pending",
            IntentStatus::Succeeded => "succeeded",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(IntentStatus::Pending),
            "succeeded" => Some(IntentStatus::Succeeded),
            _ => None,
        }
    }
}

/// Start a top-up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateIntentRequest {
    /// The environment to credit: live credits from mainnet payments, test
    /// credits from testnet payments.
    pub environment: Environment,
    pub currency: Currency,
    /// Millionths of one unit of the currency (12.5 USDC is 12,500,000);
    /// 1 to 1,000,000,000,000,000.
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 1, maximum = 1_000_000_000_000_000_i64)
    )]
    pub amount_units: i64,
}

/// The deposit that paid an intent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Deposit {
    /// The payment processor's or chain's transaction id.
    pub external_tx_id: String,
    pub currency: Currency,
    /// What was received, in millionths of one unit.
    pub amount_units: i64,
    /// Micro-credits per whole unit of the currency.
    pub rate_micros: i64,
    pub credited_micros: i64,
    /// The `topup` ledger entry.
    pub ledger_entry_id: i64,
    /// RFC 3339.
    pub received_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PaymentIntent {
    /// Quote it as the payment reference; the deposit notification names it.
    pub id: String,
    pub environment: Environment,
    pub currency: Currency,
    /// The amount asked for, in millionths of one unit.
    pub amount_units: i64,
    pub status: IntentStatus,
    pub created_by: String,
    /// RFC 3339.
    pub created_at: String,
    /// Set once paid.
    pub deposit: Option<Deposit>,
    /// The subscription whose period this intent pays (C6); it credits the
    /// package's credits instead of converting the amount.
    #[serde(default)]
    pub subscription_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PaymentIntentPage {
    /// Newest first.
    pub items: Vec<PaymentIntent>,
    /// Pass as `before` for the next (older) page; absent on the last page.
    pub next_before: Option<String>,
}

/// A deposit notification from the payment processor or chain watcher. The
/// request carries `X-Tally-Timestamp` (Unix seconds) and `X-Tally-Signature:
/// sha256=<hex HMAC-SHA256 of "{timestamp}.{body}">`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DepositNotification {
    /// Unique per transaction: a second notification with the same id credits
    /// nothing more.
    pub external_tx_id: String,
    pub intent_id: String,
    pub currency: Currency,
    /// What was received, in millionths of one unit.
    pub amount_units: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DepositResult {
    pub intent_id: String,
    pub deposit: Deposit,
    /// True when this transaction had already been credited (nothing changed).
    pub duplicate: bool,
}

/// One month of one environment's ledger. Always
/// `closing = opening + topups + grants - usage + other`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatementSummary {
    /// `YYYY-MM` (UTC).
    pub month: String,
    pub environment: Environment,
    /// RFC 3339: the first instant of the month.
    pub period_start: String,
    /// RFC 3339: the first instant of the next month (exclusive).
    pub period_end: String,
    /// False for the running month, whose figures still change.
    pub closed: bool,
    pub opening_balance_micros: i64,
    /// Paid top-ups (C2).
    pub topups_micros: i64,
    /// Operator grants, welcome credits and the faucet.
    pub grants_micros: i64,
    /// Spent by calls (a positive number).
    pub usage_micros: i64,
    /// Subscription package credits (C6).
    pub subscriptions_micros: i64,
    /// Bonus credits granted, less those that expired (C7), signed.
    pub bonuses_micros: i64,
    /// A seller's earnings from calls to its APIs (C8).
    pub revenue_micros: i64,
    /// The platform's fee on those earnings (a positive number).
    pub platform_fees_micros: i64,
    /// Every other movement, signed.
    pub other_micros: i64,
    pub closing_balance_micros: i64,
}

/// Usage of one API in a statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiUsageLine {
    pub api: String,
    /// Calls that cost something.
    pub calls: i64,
    pub cost_micros: i64,
}

/// Usage of one key in a statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyUsageLine {
    pub key_id: String,
    pub key_name: Option<String>,
    /// Calls that cost something.
    pub calls: i64,
    pub cost_micros: i64,
}

/// A monthly statement (C4). Usage by API and by key each add up to
/// `summary.usage_micros`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Statement {
    pub summary: StatementSummary,
    pub usage_by_api: Vec<ApiUsageLine>,
    pub usage_by_key: Vec<KeyUsageLine>,
}

/// The invoice history: one summary per month, newest first, from the month
/// the namespace was created to the running month.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatementList {
    pub items: Vec<StatementSummary>,
}

/// Set or change a low-balance threshold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SetAlertRequest {
    /// 1 to 1,000,000,000,000,000 micro-credits.
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 1, maximum = 1_000_000_000_000_000_i64)
    )]
    pub threshold_micros: i64,
}

/// A low-balance alert (C5): one `credits.low_balance` event each time the
/// balance drops below the threshold; it re-arms once the balance is back at
/// or above it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LowBalanceAlert {
    pub environment: Environment,
    pub threshold_micros: i64,
    pub balance_micros: i64,
    /// The balance is below the threshold (the dashboard shows a banner).
    pub below: bool,
    /// The next drop below the threshold fires an event.
    pub armed: bool,
    /// RFC 3339: when it last fired.
    pub last_fired_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LowBalanceAlertList {
    /// One per environment that has a threshold.
    pub items: Vec<LowBalanceAlert>,
}

/// Set or change an auto top-up rule (C6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SetAutoTopupRequest {
    /// Below this balance (micro-credits; 1 to 1,000,000,000,000,000) a
    /// payment intent is created.
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 1, maximum = 1_000_000_000_000_000_i64)
    )]
    pub threshold_micros: i64,
    /// The intent's amount, in millionths of one unit of `currency`; 1 to
    /// 1,000,000,000,000,000.
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 1, maximum = 1_000_000_000_000_000_i64)
    )]
    pub amount_units: i64,
    pub currency: Currency,
}

/// An auto top-up rule: each time the balance drops below the threshold, a
/// payment intent for the amount is created (event `topup.auto_intent_created`)
/// for the payment processor to pay from the namespace's standing
/// authorization; the deposit notification credits it as any other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AutoTopup {
    pub environment: Environment,
    pub threshold_micros: i64,
    pub amount_units: i64,
    pub currency: Currency,
    pub balance_micros: i64,
    /// The next drop below the threshold creates an intent.
    pub armed: bool,
    /// The intent created at the last crossing.
    pub last_intent_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AutoTopupList {
    /// One per environment that has a rule.
    pub items: Vec<AutoTopup>,
}

/// A subscription credit package the server offers (C6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreditPackage {
    pub slug: String,
    pub name: String,
    /// Credited at every paid period (one month).
    pub credits_micros: i64,
    /// The price of one period, in millionths of one unit of `currency`.
    pub price_units: i64,
    pub currency: Currency,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreditPackageList {
    pub items: Vec<CreditPackage>,
}

/// Subscribe to a package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SubscribeRequest {
    pub environment: Environment,
    /// A package slug from `GET /api/v1/billing/packages`.
    pub package: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionStatus {
    /// Waiting for the payment of its first period.
    Pending,
    /// Paid up to `current_period_end`; renewed then unless cancelled.
    Active,
    Canceled,
}

impl SubscriptionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionStatus::Pending => "pending",
            SubscriptionStatus::Active => "active",
            SubscriptionStatus::Canceled => "canceled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            SubscriptionStatus::Pending,
            SubscriptionStatus::Active,
            SubscriptionStatus::Canceled,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

/// A namespace's subscription to a credit package (C6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Subscription {
    pub id: String,
    pub environment: Environment,
    pub package: String,
    pub credits_micros: i64,
    pub price_units: i64,
    pub currency: Currency,
    pub status: SubscriptionStatus,
    /// RFC 3339: the end of the paid period.
    pub current_period_end: Option<String>,
    /// Cancelled: it ends with the paid period instead of renewing.
    pub cancel_at_period_end: bool,
    /// The payment intent of the first period or of the renewal, while unpaid.
    pub pending_intent_id: Option<String>,
    pub created_by: String,
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SubscriptionList {
    /// Newest first.
    pub items: Vec<Subscription>,
}
