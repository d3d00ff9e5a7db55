//! The event log (D4): what happened to the server and to a namespace.

use serde::{Deserialize, Serialize};

use crate::Environment;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "info" => Some(Severity::Info),
            "warning" => Some(Severity::Warning),
            "error" => Some(Severity::Error),
            _ => None,
        }
    }
}

/// One entry of the event log. Server-wide events (such as `startup`) have no
/// namespace and appear in every namespace's log; namespace events appear only
/// in their own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Event {
    pub id: i64,
    /// RFC 3339 UTC.
    pub time: String,
    /// Machine-readable type, e.g. `startup`, `namespace.created`, `member.added`.
    pub kind: String,
    pub severity: Severity,
    /// Set when the event concerns one environment only.
    pub environment: Option<Environment>,
    pub namespace_id: Option<String>,
    /// Human-readable description.
    pub message: String,
    /// Who caused it: an account email, `system`, …
    pub actor: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventPage {
    /// Newest first.
    pub items: Vec<Event>,
    /// Pass as `before` to get the next (older) page; absent on the last page.
    pub next_before: Option<i64>,
}
