//! How stored rows look in the API: the conversions and formats that more
//! than one route (and the auth layer) use, so no route reaches into another.

use chrono::{TimeZone, Utc};
use tally_common::{Account, Namespace, NamespaceWithRole, UsageEvent};
use tally_store::accounts::AccountRow;
use tally_store::namespaces::MembershipRow;
use tally_store::usage::CallRecord;

/// Unix milliseconds to RFC 3339 UTC with millisecond precision.
pub fn rfc3339(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub fn to_namespace(row: MembershipRow) -> NamespaceWithRole {
    NamespaceWithRole {
        namespace: Namespace {
            id: row.namespace.id,
            name: row.namespace.name,
            created_at: rfc3339(row.namespace.created_at),
        },
        role: row.role,
    }
}

pub fn to_account(row: &AccountRow) -> Account {
    Account {
        id: row.id.clone(),
        email: row.email.clone(),
        display_name: row.display_name.clone(),
        created_at: rfc3339(row.created_at),
    }
}

/// A recorded call as the API shows it.
pub fn to_event(c: CallRecord) -> UsageEvent {
    UsageEvent {
        id: c.id,
        time: rfc3339(c.time),
        environment: c.environment,
        key_id: c.key_id,
        api: c.api,
        model: c.model,
        endpoint: c.endpoint,
        request_type: c.request_type.to_owned(),
        status: u16::try_from(c.status).unwrap_or(0),
        error: c.error,
        latency_us: c.latency_us,
        upstream_latency_us: c.upstream_latency_us,
        tokens_in: c.tokens_in,
        tokens_out: c.tokens_out,
        cost_micros: c.cost_micros,
        client_id: c.client_id,
    }
}

/// A CSV field: quoted when it needs to be, and defused when a spreadsheet
/// would read it as a formula.
pub fn csv_text(s: &str) -> String {
    let guarded = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_owned()
    };
    if guarded.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", guarded.replace('"', "\"\""))
    } else {
        guarded
    }
}
