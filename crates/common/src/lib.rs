//! Types that cross the wire between the Tally server and its clients.
//!
//! Policy: everything here is plain data (serde), builds for wasm32, and carries
//! no server dependencies. The `openapi` feature adds `utoipa::ToSchema` derives
//! for the server's OpenAPI document; the dashboard builds without it.
//!
//! Conventions: ids are opaque strings, times are RFC 3339 UTC strings, money is
//! integer micro-credits (`i64`, suffix `_micros`).

pub mod auth;
pub mod backups;
pub mod billing;
pub mod catalog;
pub mod credits;
pub mod error;
pub mod events;
pub mod format;
pub mod keys;
pub mod monitoring;
pub mod namespaces;
pub mod status;
pub mod usage;
pub mod webhooks;

pub use auth::*;
pub use backups::*;
pub use billing::*;
pub use catalog::*;
pub use credits::*;
pub use error::*;
pub use events::*;
pub use keys::*;
pub use monitoring::*;
pub use namespaces::*;
pub use status::*;
pub use usage::*;
pub use webhooks::*;

use serde::{Deserialize, Serialize};

/// Test (testnet) or live (mainnet). Keys, credits, usage and dashboards are
/// separate per environment; test credits never become live credits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Environment {
    #[default]
    Test,
    Live,
}

impl Environment {
    pub const ALL: [Environment; 2] = [Environment::Test, Environment::Live];

    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Test => "test",
            Environment::Live => "live",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "test" => Some(Environment::Test),
            "live" => Some(Environment::Live),
            _ => None,
        }
    }
}

impl std::fmt::Display for Environment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
