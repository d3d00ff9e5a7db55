//! Billing services behind the credit routes (C2, C5, C6): deposit
//! signatures, conversion rates, the low-balance check and auto top-ups.
//!
//! Policy:
//! - A deposit notification is trusted only with a valid HMAC-SHA256 over
//!   `"{timestamp}.{body}"` made with `billing.deposit_secret`, and only while
//!   its timestamp is within `billing.deposit_tolerance_secs` of the clock; the
//!   comparison is constant-time.
//! - Rates are integers (micro-credits per whole unit of a currency), from the
//!   config or fetched from `billing.price_url` at each deposit; a fetched
//!   decimal is converted exactly, never through a float.
//! - Low-balance alerts and auto top-up rules are checked by a background
//!   task that compares the committed balances with the thresholds every
//!   `billing.alert_check_interval_ms`, and at once after every credit the
//!   REST API makes. The gateway's hot path is untouched: a call never waits
//!   for an alert and debits need no extra write.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tally_common::{Currency, Environment, ErrorCode, Severity};
use tally_store::events::NewEvent;
use tally_store::Store;

use crate::config::BillingSettings;
use crate::egress::Egress;
use crate::error::{ApiError, ApiResult};
use crate::leadership::Leadership;

/// Header with the Unix time (seconds) the notification was signed at.
pub const TIMESTAMP_HEADER: &str = "x-tally-timestamp";
/// Header with `sha256=<hex HMAC-SHA256 of "{timestamp}.{body}">`.
pub const SIGNATURE_HEADER: &str = "x-tally-signature";

/// Largest rate accepted: a million credits per unit.
const MAX_RATE_MICROS: i64 = 1_000_000_000_000;

/// Why a signed request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    /// Headers missing or malformed, or the HMAC does not match.
    Invalid,
    /// Authentic, but signed too long ago (or too far ahead): a replay.
    Stale,
}

/// The HMAC of a signed notification, hex-encoded (what a sender computes).
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
}

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| <Hmac<Sha256> as Mac>::new(&Default::default()));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// Checks a notification's signature, then its age (so only authentic old
/// messages count as replays).
pub fn verify(
    secret: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    tolerance_secs: i64,
    now_secs: i64,
) -> Result<(), SignatureError> {
    let timestamp: i64 = timestamp
        .and_then(|t| t.trim().parse().ok())
        .ok_or(SignatureError::Invalid)?;
    let given = signature
        .and_then(|s| s.trim().strip_prefix("sha256="))
        .and_then(|h| hex::decode(h).ok())
        .ok_or(SignatureError::Invalid)?;
    mac(secret, timestamp, body)
        .verify_slice(&given)
        .map_err(|_| SignatureError::Invalid)?;
    if (now_secs - timestamp).abs() > tolerance_secs.max(0) {
        return Err(SignatureError::Stale);
    }
    Ok(())
}

/// Whether top-ups accept `currency` under these settings.
pub fn accepts(settings: &BillingSettings, currency: Currency) -> bool {
    match currency {
        Currency::Usdc | Currency::Usdt => true,
        Currency::Rtity => settings.post_tge,
    }
}

/// The rate to convert `currency` at now: fetched when `price_url` is set,
/// else from the config. A feed that fails, or that the egress policy
/// refuses, gives `upstream_error` (502).
pub async fn rate(
    settings: &BillingSettings,
    egress: &Egress,
    currency: Currency,
) -> ApiResult<i64> {
    let url = settings
        .price_url
        .as_deref()
        .map(str::trim)
        .filter(|u| !u.is_empty());
    let Some(url) = url else {
        let rate = match currency {
            Currency::Usdc => settings.rates.usdc,
            Currency::Usdt => settings.rates.usdt,
            Currency::Rtity => settings.rates.rtity,
        };
        if !(1..=MAX_RATE_MICROS).contains(&rate) {
            return Err(ApiError::internal(anyhow::anyhow!(
                "billing.rates.{} must be 1 to {MAX_RATE_MICROS}",
                currency.as_str().to_lowercase()
            )));
        }
        return Ok(rate);
    };
    let url = url.replace("{currency}", currency.as_str());
    fetch_rate(
        egress,
        &url,
        Duration::from_millis(settings.price_timeout_ms.max(1)),
    )
    .await
    .map_err(|e| {
        tracing::warn!(error = %e, "price feed failed");
        ApiError::new(
            ErrorCode::UpstreamError,
            format!("the price feed gave no usable rate for {currency}; retry later"),
        )
    })
}

async fn fetch_rate(egress: &Egress, url: &str, timeout: Duration) -> anyhow::Result<i64> {
    // Checked again here: the URL was checked at start, and a literal
    // address must meet the allow list, which the connection check cannot see.
    egress.policy().check_url(url).map_err(anyhow::Error::msg)?;
    let res = egress.client()?.get(url).timeout(timeout).send().await?;
    if !res.status().is_success() {
        anyhow::bail!("price feed answered {}", res.status());
    }
    let body: serde_json::Value = serde_json::from_slice(&res.bytes().await?)?;
    let value = match &body["credits_per_unit"] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        _ => anyhow::bail!("price feed answer has no credits_per_unit"),
    };
    let rate = decimal_micros(&value)
        .ok_or_else(|| anyhow::anyhow!("credits_per_unit {value:?} is not a plain decimal"))?;
    if !(1..=MAX_RATE_MICROS).contains(&rate) {
        anyhow::bail!("credits_per_unit {value} is out of range");
    }
    Ok(rate)
}

/// A non-negative plain decimal ("0.9995", "2", "1.25") in millionths,
/// rounded down past six decimals; `None` for anything else (signs,
/// exponents, empty parts).
pub fn decimal_micros(s: &str) -> Option<i64> {
    let s = s.trim();
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || (s.contains('.') && (int.is_empty() || frac.is_empty()))
    {
        return None;
    }
    let int: i64 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut micros = int.checked_mul(1_000_000)?;
    let digits: Vec<u8> = frac.bytes().take(6).collect();
    for (i, d) in digits.iter().enumerate() {
        micros = micros.checked_add(i64::from(d - b'0') * 10_i64.pow(5 - i as u32))?;
    }
    Some(micros)
}

/// Credits for `amount_units` (millionths of a unit) at `rate_micros`
/// (micro-credits per unit), rounded down; `None` on overflow.
pub fn convert(amount_units: i64, rate_micros: i64) -> Option<i64> {
    let credits = i128::from(amount_units) * i128::from(rate_micros) / 1_000_000;
    i64::try_from(credits).ok()
}

/// The rate a fixed credit works out at: micro-credits per whole unit when
/// `amount_units` (millionths) buys `credited_micros`; saturating.
pub fn rate_of(amount_units: i64, credited_micros: i64) -> i64 {
    if amount_units <= 0 {
        return 0;
    }
    let rate = i128::from(credited_micros) * 1_000_000 / i128::from(amount_units);
    i64::try_from(rate).unwrap_or(i64::MAX)
}

/// Brings one alert in line with its balance: fires it (one event) if it is
/// armed and the balance is below the threshold, re-arms it if the balance is
/// back. Safe to run from anywhere at any time.
pub async fn check_alert(store: &Store, ns: &str, env: Environment) -> ApiResult<()> {
    let mut tx = store.begin().await?;
    if let Some((threshold, balance)) = tally_store::alerts::fire(&mut tx, ns, env).await? {
        tally_store::events::insert(
            &mut tx,
            NewEvent {
                namespace_id: Some(ns),
                environment: Some(env),
                kind: "credits.low_balance",
                severity: Severity::Warning,
                message: &format!(
                    "The {env} balance ({}) dropped below the alert threshold ({})",
                    credits(balance),
                    credits(threshold)
                ),
                actor: Some("system"),
            },
        )
        .await?;
        super::webhooks::emit(
            &mut tx,
            ns,
            Some(env),
            "credits.low_balance",
            serde_json::json!({"balance_micros": balance, "threshold_micros": threshold}),
        )
        .await?;
    } else {
        tally_store::alerts::rearm(&mut tx, ns, env).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Brings one auto top-up rule (C6) in line with its balance: below the
/// threshold an armed rule creates one payment intent (and an event) in the
/// transaction that disarms it; a balance back re-arms it.
pub async fn check_auto_topup(store: &Store, ns: &str, env: Environment) -> ApiResult<()> {
    let intent_id = tally_store::new_id("pi");
    let mut tx = store.begin().await?;
    let fired = tally_store::auto_topups::fire(&mut tx, ns, env, &intent_id).await?;
    if let Some((amount_units, currency)) = fired {
        tally_store::billing::insert_intent(
            &mut tx,
            &tally_store::billing::IntentRow {
                id: intent_id.clone(),
                namespace_id: ns.to_owned(),
                environment: env,
                currency,
                amount_units,
                status: tally_common::IntentStatus::Pending,
                created_by: AUTO_TOPUP_ACTOR.to_owned(),
                created_at: tally_store::now_ms(),
                deposit: None,
                subscription_id: None,
            },
        )
        .await?;
        tally_store::events::insert(
            &mut tx,
            NewEvent {
                namespace_id: Some(ns),
                environment: Some(env),
                kind: "topup.auto_intent_created",
                severity: Severity::Info,
                message: &format!(
                    "The {env} balance dropped below the auto top-up threshold: payment \
                     intent {intent_id} for {} {currency} created",
                    credits(amount_units)
                ),
                actor: Some(AUTO_TOPUP_ACTOR),
            },
        )
        .await?;
    } else {
        tally_store::auto_topups::rearm(&mut tx, ns, env).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Who creates the intents of auto top-up rules.
pub const AUTO_TOPUP_ACTOR: &str = "auto top-up";

/// Both balance rules of one namespace and environment: the low-balance
/// alert and the auto top-up rule.
pub async fn check_balance_rules(store: &Store, ns: &str, env: Environment) -> ApiResult<()> {
    check_alert(store, ns, env).await?;
    check_auto_topup(store, ns, env).await
}

/// Checks every alert and auto top-up rule whose state disagrees with its
/// balance.
pub async fn check_alerts(store: &Store) -> ApiResult<()> {
    let (alerts, rules) = {
        let mut conn = store.conn().await?;
        (
            tally_store::alerts::pending(&mut conn, 1000).await?,
            tally_store::auto_topups::pending(&mut conn, 1000).await?,
        )
    };
    for a in alerts {
        check_alert(store, &a.namespace_id, a.environment).await?;
    }
    for r in rules {
        check_auto_topup(store, &r.namespace_id, r.environment).await?;
    }
    Ok(())
}

/// Starts the background low-balance check on the current runtime; it runs
/// while this instance leads the upkeep (O5).
pub fn start_alert_checker(store: Store, interval: Duration, leadership: Leadership) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !leadership.is_leader() {
                continue;
            }
            metrics::counter!("tally_upkeep_rounds_total", "task" => "alerts").increment(1);
            let result = check_alerts(&store).await;
            crate::telemetry::task_round("alerts", result.is_ok());
            if let Err(e) = result {
                tracing::warn!(error = %e, "low-balance check failed");
            }
        }
    });
}

/// Millionths of a unit as a decimal amount, e.g. `12.50 USDC`.
pub fn units(amount_units: i64, currency: Currency) -> String {
    format!("{} {currency}", credits(amount_units))
}

/// Micro-credits as people read them, for messages: `19.66`, `0.0021`
/// (`tally_common::format::Micros`; exact amounts are in the records).
pub fn credits(micros: i64) -> String {
    tally_common::format::Micros(micros).to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn decimals_convert_exactly_and_odd_input_is_refused() {
        assert_eq!(decimal_micros("1"), Some(1_000_000));
        assert_eq!(decimal_micros("0.9995"), Some(999_500));
        assert_eq!(decimal_micros("2.1234567"), Some(2_123_456));
        assert_eq!(decimal_micros("0.000001"), Some(1));
        for bad in ["", ".", "-1", "1e3", "1.", ".5", "abc", "1.2.3", " "] {
            assert_eq!(decimal_micros(bad), None, "{bad:?}");
        }
        assert_eq!(convert(12_500_000, 999_500), Some(12_493_750));
        assert_eq!(convert(i64::MAX, i64::MAX), None);
    }

    #[test]
    fn a_signature_must_match_and_be_fresh() {
        let body = br#"{"a":1}"#;
        let sig = format!("sha256={}", sign(b"secret", 1000, body));
        let ok = |ts: &str, sig: &str, body: &[u8], now| {
            verify(b"secret", Some(ts), Some(sig), body, 300, now)
        };
        assert_eq!(ok("1000", &sig, body, 1100), Ok(()));
        assert_eq!(ok("1000", &sig, body, 1301), Err(SignatureError::Stale));
        assert_eq!(ok("1000", &sig, body, 699), Err(SignatureError::Stale));
        assert_eq!(ok("1001", &sig, body, 1100), Err(SignatureError::Invalid));
        assert_eq!(
            ok("1000", &sig, br#"{"a":2}"#, 1100),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            ok("1000", "sha256=zz", body, 1100),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            verify(b"secret", None, Some(&sig), body, 300, 1000),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            verify(b"other", Some("1000"), Some(&sig), body, 300, 1000),
            Err(SignatureError::Invalid)
        );
    }
}
