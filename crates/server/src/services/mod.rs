//! The money rules, in one place: what a call may cost and costs
//! (`pricing`), holding, pricing and recording a gateway call (`settle`,
//! `recorder`), the in-memory balances (`accounts`), credits and debits
//! outside calls (`credits`), subscription periods (`subscriptions`) and the
//! billing checks (`billing`: deposit signatures, rates, low-balance rules).
//!
//! Policy: routes, the gateway and the upkeep loop call these modules; these
//! modules never call a route or the gateway. Money is integer micro-credits
//! throughout; every change of a balance is a ledger entry committed before
//! the in-memory account moves.

pub mod accounts;
pub mod backups;
pub mod billing;
pub mod credits;
pub mod pricing;
pub mod recorder;
pub mod settle;
pub mod subscriptions;
pub mod webhooks;
