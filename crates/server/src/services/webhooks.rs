//! Signed webhooks (W1, W2): what a message says, how it is signed, and the
//! delivery worker.
//!
//! Policy:
//! - A message is written with the change it reports, in the same
//!   transaction ([`emit`]): a change that rolls back sends nothing, and a
//!   change that commits is delivered even if the server dies right after.
//! - Signing follows Standard Webhooks: headers `webhook-id` (the message
//!   id, the same on every retry and replay), `webhook-timestamp` (Unix
//!   seconds of the attempt) and `webhook-signature: v1,<base64 HMAC-SHA256
//!   of "{id}.{timestamp}.{body}">`, keyed with the base64-decoded part of
//!   the `whsec_` secret. During a rotation's grace both secrets sign
//!   (space-separated), so receivers switch secrets without a gap.
//! - Every instance runs the worker; it claims due deliveries in the
//!   database, so none is sent twice at once, and holds at most
//!   `webhooks.concurrency` requests. Deliveries of one endpoint go out one
//!   at a time, oldest first. Only a 2xx answer within the timeout succeeds;
//!   redirects are never followed; 410 disables the endpoint; other failures
//!   retry on `webhooks.retry_schedule_secs` with jitter (a longer
//!   `Retry-After` wins), then fail. An endpoint failing for
//!   `webhooks.disable_after_secs` is disabled with an event.
//! - A crash between a receiver's answer and its record sends that attempt
//!   again: delivery is at least once, and receivers deduplicate by
//!   `webhook-id`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::Rng;
use serde_json::{json, Value};
use sha2::Sha256;
use tally_common::{Environment, Severity};
use tally_store::events::NewEvent;
use tally_store::sqlx::AnyConnection;
use tally_store::webhooks::{After, AttemptRow, Claimed, NewMessage};
use tally_store::Store;

use crate::config::WebhookSettings;
use crate::leadership::Leadership;
use crate::views::rfc3339;

/// Bytes of a receiver's answer kept with the attempt.
pub const EXCERPT_BYTES: usize = 1024;
/// Longest wait a `Retry-After` may ask for.
const MAX_RETRY_AFTER_SECS: u64 = 86_400;
const SECRET_PREFIX: &str = "whsec_";

/// A new signing secret: `whsec_` and 32 random bytes in base64.
pub fn new_secret() -> String {
    let bytes: [u8; 32] = rand::thread_rng().gen();
    format!(
        "{SECRET_PREFIX}{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// The HMAC key of a secret (the decoded base64 after `whsec_`).
fn key_of(secret: &str) -> Vec<u8> {
    let encoded = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap_or_else(|_| encoded.as_bytes().to_vec())
}

/// `v1,<base64 signature>` of one message attempt with one secret.
pub fn sign(secret: &str, msg_id: &str, timestamp: i64, body: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key_of(secret))
        .unwrap_or_else(|_| <Hmac<Sha256> as Mac>::new(&Default::default()));
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// Whether `signature_header` holds a valid signature of the message with
/// `secret` (what a receiver checks; used by the tests and documented).
pub fn verify(
    secret: &str,
    msg_id: &str,
    timestamp: i64,
    body: &str,
    signature_header: &str,
) -> bool {
    let expected = sign(secret, msg_id, timestamp, body);
    signature_header.split(' ').any(|s| {
        s.len() == expected.len()
            && s.bytes()
                .zip(expected.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    })
}

/// Writes a message of `event_type` about `data` for the namespace's
/// subscribed endpoints, in the caller's transaction. The body is
/// `{"id", "type", "created_at", "namespace_id", "environment", "data"}`.
pub async fn emit(
    conn: &mut AnyConnection,
    namespace_id: &str,
    environment: Option<Environment>,
    event_type: &str,
    data: Value,
) -> tally_store::Result<usize> {
    let id = tally_store::new_id("msg");
    let payload = body(&id, namespace_id, environment, event_type, data);
    tally_store::webhooks::enqueue(
        conn,
        &NewMessage {
            id: &id,
            namespace_id,
            event_type,
            payload: &payload,
        },
    )
    .await
}

fn body(
    id: &str,
    namespace_id: &str,
    environment: Option<Environment>,
    event_type: &str,
    data: Value,
) -> String {
    json!({
        "id": id,
        "type": event_type,
        "created_at": rfc3339(tally_store::now_ms()),
        "namespace_id": namespace_id,
        "environment": environment.map(Environment::as_str),
        "data": data,
    })
    .to_string()
}

/// Writes a `webhook.test` message to one endpoint; the delivery's id.
pub async fn send_test(
    conn: &mut AnyConnection,
    namespace_id: &str,
    endpoint_id: &str,
    actor: &str,
) -> tally_store::Result<String> {
    let id = tally_store::new_id("msg");
    let payload = body(
        &id,
        namespace_id,
        None,
        "webhook.test",
        json!({"endpoint_id": endpoint_id, "sent_by": actor}),
    );
    tally_store::webhooks::enqueue_to(
        conn,
        &NewMessage {
            id: &id,
            namespace_id,
            event_type: "webhook.test",
            payload: &payload,
        },
        endpoint_id,
    )
    .await
}

/// Warns of keys expiring within `key_expiry_warning_days` (once per key
/// and expiry): an event and a `key.expiring` message each.
pub async fn warn_expiring_keys(
    store: &Store,
    settings: &WebhookSettings,
) -> tally_store::Result<()> {
    let now = tally_store::now_ms();
    let horizon = now + i64::from(settings.key_expiry_warning_days) * 86_400_000;
    let due = {
        let mut conn = store.conn().await?;
        tally_store::keys::expiring_unwarned(&mut conn, now, horizon, 500).await?
    };
    for key in due {
        let mut tx = store.begin().await?;
        if !tally_store::keys::mark_expiry_warned(&mut tx, &key.id, now).await? {
            continue;
        }
        let days = (key.expires_at - now) as f64 / 86_400_000.0;
        tally_store::events::insert(
            &mut tx,
            NewEvent {
                namespace_id: Some(&key.namespace_id),
                environment: Some(key.environment),
                kind: "key.expiring",
                severity: Severity::Warning,
                message: &format!(
                    "Key {} expires on {} (in {:.1} days)",
                    key.name,
                    rfc3339(key.expires_at),
                    days
                ),
                actor: Some("system"),
            },
        )
        .await?;
        emit(
            &mut tx,
            &key.namespace_id,
            Some(key.environment),
            "key.expiring",
            json!({"key_id": key.id, "name": key.name, "expires_at": rfc3339(key.expires_at)}),
        )
        .await?;
        tx.commit().await?;
    }
    Ok(())
}

/// A key's quota was used up: one event and one `quota.reached` message
/// per key, quota and period (`period` names both), whichever instance
/// refused first.
pub async fn quota_reached(
    store: &Store,
    key_id: &str,
    namespace_id: &str,
    environment: Environment,
    quota: &str,
    period: &str,
    resets_at_ms: i64,
) -> tally_store::Result<()> {
    let mut tx = store.begin().await?;
    if !tally_store::keys::mark_quota_reached(&mut tx, key_id, period).await? {
        return Ok(());
    }
    tally_store::events::insert(
        &mut tx,
        NewEvent {
            namespace_id: Some(namespace_id),
            environment: Some(environment),
            kind: "quota.reached",
            severity: Severity::Warning,
            message: &format!(
                "Key {key_id} used up its {quota} quota; calls are refused until {}",
                rfc3339(resets_at_ms)
            ),
            actor: Some("system"),
        },
    )
    .await?;
    emit(
        &mut tx,
        namespace_id,
        Some(environment),
        "quota.reached",
        json!({"key_id": key_id, "quota": quota, "resets_at": rfc3339(resets_at_ms)}),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The delivery worker of this instance.
pub struct Worker {
    store: Store,
    settings: WebhookSettings,
    /// The egress policy of webhook URLs (stricter than upstreams' unless
    /// `webhooks.allow_private`).
    egress: crate::egress::Egress,
    client: reqwest::Client,
    wake: tokio::sync::Notify,
    /// This worker's name in its claims.
    me: String,
}

impl Worker {
    pub fn new(
        store: Store,
        settings: WebhookSettings,
        egress: crate::egress::Egress,
    ) -> reqwest::Result<Arc<Worker>> {
        let client = egress
            .client_builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(settings.timeout_secs.max(1)))
            .user_agent(concat!("Tally-Webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Arc::new(Worker {
            store,
            settings,
            egress,
            client,
            wake: tokio::sync::Notify::new(),
            me: tally_store::new_id("whw"),
        }))
    }

    /// The policy webhook URLs must pass.
    pub fn policy(&self) -> &crate::egress::Policy {
        self.egress.policy()
    }

    /// Looks for due deliveries now (after a message was written).
    pub fn poke(&self) {
        self.wake.notify_one();
    }

    /// Starts the loop: claim what is due, send it, record it; and, on the
    /// instance leading the upkeep, prune old deliveries hourly.
    pub fn start(self: &Arc<Self>, leadership: Leadership) {
        let me = Arc::downgrade(self);
        let every = Duration::from_millis(self.settings.poll_interval_ms.max(20));
        tokio::spawn(async move {
            let mut pruned = Instant::now() - Duration::from_secs(3_600);
            loop {
                let Some(worker) = me.upgrade() else { return };
                let wake = worker.wake.notified();
                let result = worker.round().await;
                crate::telemetry::task_round("webhooks", result.is_ok());
                let sent = result.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "webhook delivery round failed");
                    0
                });
                if leadership.is_leader() && pruned.elapsed() >= Duration::from_secs(3_600) {
                    pruned = Instant::now();
                    if let Err(e) = worker.prune().await {
                        tracing::warn!(error = %e, "webhook pruning failed");
                    }
                }
                if sent == 0 {
                    tokio::select! {
                        () = tokio::time::sleep(every) => {}
                        () = wake => {}
                    }
                }
            }
        });
    }

    async fn prune(&self) -> tally_store::Result<()> {
        if self.settings.retention_days == 0 {
            return Ok(());
        }
        let before = tally_store::now_ms() - i64::from(self.settings.retention_days) * 86_400_000;
        let mut conn = self.store.conn().await?;
        tally_store::webhooks::prune(&mut conn, before).await?;
        Ok(())
    }

    /// One round: the deliveries due now, endpoints side by side (at most
    /// `concurrency`), each endpoint's one after another. How many were sent.
    pub async fn round(&self) -> tally_store::Result<usize> {
        let now = tally_store::now_ms();
        let limit = (self.settings.concurrency.max(1) * 4) as i64;
        // A claim covers one attempt; it is renewed before each later one,
        // so the deliveries of an instance that dies wait one attempt's time.
        let hold = (self.settings.timeout_secs.max(1) as i64 + 5) * 1000;
        let claimed = {
            let mut conn = self.store.conn().await?;
            tally_store::webhooks::claim(&mut conn, &self.me, now, now + hold, limit).await?
        };
        let n = claimed.len();
        if n == 0 {
            return Ok(0);
        }
        let mut by_endpoint: BTreeMap<String, Vec<Claimed>> = BTreeMap::new();
        for c in claimed {
            by_endpoint
                .entry(c.endpoint_id.clone())
                .or_default()
                .push(c);
        }
        let slots = Arc::new(tokio::sync::Semaphore::new(
            self.settings.concurrency.max(1),
        ));
        let mut tasks = tokio::task::JoinSet::new();
        for (_, queue) in by_endpoint {
            let slots = slots.clone();
            let store = self.store.clone();
            let client = self.client.clone();
            let settings = self.settings.clone();
            let me = self.me.clone();
            tasks.spawn(async move {
                let Ok(_slot) = slots.acquire_owned().await else {
                    return;
                };
                for c in queue {
                    let renewed = match store.conn().await {
                        Ok(mut conn) => tally_store::webhooks::renew_claim(
                            &mut conn,
                            &c.id,
                            &me,
                            tally_store::now_ms() + hold,
                        )
                        .await
                        .unwrap_or(false),
                        Err(_) => false,
                    };
                    if !renewed {
                        continue;
                    }
                    if let Err(e) = deliver(&store, &client, &settings, &c).await {
                        tracing::warn!(error = %e, delivery = %c.id, "webhook delivery not recorded");
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        Ok(n)
    }
}

/// Sends one attempt of `c` and records it.
async fn deliver(
    store: &Store,
    client: &reqwest::Client,
    settings: &WebhookSettings,
    c: &Claimed,
) -> tally_store::Result<()> {
    let attempted_at = tally_store::now_ms();
    let ts = attempted_at / 1000;
    let mut signature = sign(&c.secret, &c.message_id, ts, &c.payload);
    if let (Some(old), Some(until)) = (&c.previous_secret, c.previous_secret_expires_at) {
        if until > attempted_at {
            signature.push(' ');
            signature.push_str(&sign(old, &c.message_id, ts, &c.payload));
        }
    }
    let started = Instant::now();
    let sent = client
        .post(&c.url)
        .header("content-type", "application/json")
        .header("webhook-id", &c.message_id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", signature)
        .body(c.payload.clone())
        .send()
        .await;
    let mut attempt = AttemptRow {
        attempted_at,
        status_code: None,
        latency_ms: 0,
        succeeded: false,
        response_excerpt: String::new(),
        error: None,
    };
    let mut retry_after = None;
    match sent {
        Ok(mut res) => {
            let status = res.status();
            attempt.status_code = Some(i64::from(status.as_u16()));
            attempt.succeeded = status.is_success();
            if status.is_redirection() {
                attempt.error = Some("redirects are not followed".to_owned());
            }
            retry_after = res
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            let mut excerpt = Vec::new();
            loop {
                match res.chunk().await {
                    Ok(Some(chunk)) => {
                        let room = EXCERPT_BYTES - excerpt.len();
                        excerpt.extend_from_slice(&chunk[..chunk.len().min(room)]);
                        if excerpt.len() >= EXCERPT_BYTES {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        if attempt.succeeded {
                            // The status came; a body cut short does not undo it.
                            break;
                        }
                        attempt.error = Some(format!("reading the answer: {e}"));
                        break;
                    }
                }
            }
            attempt.response_excerpt = String::from_utf8_lossy(&excerpt).into_owned();
        }
        Err(e) => {
            attempt.error = Some(if e.is_timeout() {
                format!("no answer within {} s", settings.timeout_secs)
            } else if e.is_connect() {
                "cannot connect".to_owned()
            } else {
                e.to_string()
            });
        }
    }
    attempt.latency_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
    let gone = attempt.status_code == Some(410);
    let after = if attempt.succeeded {
        After::Succeeded
    } else if gone {
        After::Failed
    } else {
        match next_delay(settings, c.attempts, retry_after) {
            Some(delay) => After::RetryAt(tally_store::now_ms() + delay),
            None => After::Failed,
        }
    };
    metrics::counter!(
        "tally_webhook_attempts_total",
        "outcome" => if attempt.succeeded { "succeeded" } else { "failed" }
    )
    .increment(1);
    let mut tx = store.begin().await?;
    let failing_since = tally_store::webhooks::record_attempt(&mut tx, c, &attempt, after).await?;
    let disable = if gone {
        Some("the endpoint answered 410 Gone".to_owned())
    } else if let Some(since) = failing_since {
        let limit = i64::try_from(settings.disable_after_secs).unwrap_or(i64::MAX);
        (settings.disable_after_secs > 0
            && !attempt.succeeded
            && attempted_at - since >= limit.saturating_mul(1000))
        .then(|| {
            format!(
                "every attempt failed since {} ({} s)",
                rfc3339(since),
                settings.disable_after_secs
            )
        })
    } else {
        None
    };
    if let Some(reason) = disable {
        if tally_store::webhooks::disable(&mut tx, &c.endpoint_id, &reason).await? {
            tally_store::events::insert(
                &mut tx,
                NewEvent {
                    namespace_id: Some(&c.namespace_id),
                    environment: None,
                    kind: "webhook.disabled",
                    severity: Severity::Error,
                    message: &format!(
                        "Webhook endpoint {} was disabled: {reason}. Enable it again once it answers",
                        c.url
                    ),
                    actor: Some("system"),
                },
            )
            .await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

/// The wait before the retry after attempt number `made + 1` failed, or
/// none when the schedule is used up.
fn next_delay(settings: &WebhookSettings, made: i64, retry_after: Option<u64>) -> Option<i64> {
    let base = *settings
        .retry_schedule_secs
        .get(usize::try_from(made).unwrap_or(usize::MAX))?;
    let jitter = settings.jitter.clamp(0.0, 1.0);
    let factor = if jitter > 0.0 {
        rand::thread_rng().gen_range(1.0 - jitter..=1.0 + jitter)
    } else {
        1.0
    };
    let ms = (base as f64 * 1000.0 * factor) as i64;
    let asked = retry_after
        .map(|s| s.min(MAX_RETRY_AFTER_SECS) as i64 * 1000)
        .unwrap_or(0);
    Some(ms.max(asked))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn signatures_follow_standard_webhooks() {
        // The example of the Standard Webhooks specification.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = r#"{"test": 2432232314}"#;
        assert_eq!(
            sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        let header = format!("v1,bm90IGl0 {}", sign(secret, "m", 5, "b"));
        assert!(verify(secret, "m", 5, "b", &header));
        assert!(!verify(secret, "m", 6, "b", &header));
        assert!(!verify(secret, "m", 5, "b", "v1,"));
    }

    #[test]
    fn the_schedule_ends_and_retry_after_can_only_lengthen_it() {
        let s = WebhookSettings {
            retry_schedule_secs: vec![1, 10],
            jitter: 0.0,
            ..WebhookSettings::default()
        };
        assert_eq!(next_delay(&s, 0, None), Some(1_000));
        assert_eq!(next_delay(&s, 1, Some(3)), Some(10_000));
        assert_eq!(next_delay(&s, 0, Some(30)), Some(30_000));
        assert_eq!(next_delay(&s, 2, None), None);
        let j = WebhookSettings {
            retry_schedule_secs: vec![100],
            jitter: 0.1,
            ..WebhookSettings::default()
        };
        for _ in 0..100 {
            let d = next_delay(&j, 0, None).unwrap();
            assert!((90_000..=110_000).contains(&d), "{d}");
        }
    }
}
