//! Top-ups (C2): payment intents, and the signed deposit notification that
//! pays one.
//!
//! Policy: billing members (owner, admin, billing) create and read intents.
//! The deposit endpoint has no session: it trusts a request only with a valid,
//! fresh HMAC signature (`crate::services::billing::verify`). A transaction id credits at
//! most once: a repeat of the same notification answers the first result with
//! `duplicate: true` and changes nothing; a different notification with a used
//! transaction id, or for an intent already paid, is a 409. Every refusal (bad
//! signature, stale timestamp, repeat, conflict) changes no balance and is
//! recorded as an event: in the intent's namespace when the body names a known
//! intent, else server-wide (at most one a minute, so unsigned noise cannot
//! flood the log). The credit itself is `services::credits::deposit`.

use std::sync::atomic::{AtomicI64, Ordering};

use actix_web::{get, post, web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use secrecy::ExposeSecret;
use serde::Deserialize;
use tally_common::{
    CreateIntentRequest, Deposit, DepositNotification, DepositResult, Environment, ErrorBody,
    ErrorCode, IntentStatus, PaymentIntent, PaymentIntentPage, Severity,
};
use tally_store::billing::{DepositRow, IntentRow};
use tally_store::events::NewEvent;
use utoipa::IntoParams;

use crate::auth::{CurrentMember, Permission};
use crate::error::{ApiError, ApiResult};
use crate::services::billing::units;
use crate::services::billing::{self, SignatureError, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use crate::services::credits::{self, DepositCredit, DepositOutcome, MAX_CREDIT};
use crate::state::AppState;
use crate::views::rfc3339;

/// Largest intent or deposit: a billion whole units, in millionths.
const MAX_UNITS: i64 = 1_000_000_000_000_000;
/// Largest deposit notification body.
const MAX_BODY: usize = 64 * 1024;

/// Reads the raw body (the signature covers its exact bytes), refusing more
/// than `MAX_BODY` with a JSON error.
async fn read_body(mut payload: web::Payload) -> ApiResult<web::Bytes> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| ApiError::invalid("the request body could not be read"))?;
        if body.len() + chunk.len() > MAX_BODY {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("the request body is larger than {MAX_BODY} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

fn to_deposit(d: DepositRow) -> Deposit {
    Deposit {
        external_tx_id: d.external_tx_id,
        currency: d.currency,
        amount_units: d.amount_units,
        rate_micros: d.rate_micros,
        credited_micros: d.credited_micros,
        ledger_entry_id: d.ledger_entry_id,
        received_at: rfc3339(d.received_at),
    }
}

fn to_intent(i: IntentRow) -> PaymentIntent {
    PaymentIntent {
        id: i.id,
        environment: i.environment,
        currency: i.currency,
        amount_units: i.amount_units,
        status: i.status,
        created_by: i.created_by,
        created_at: rfc3339(i.created_at),
        deposit: i.deposit.map(to_deposit),
        subscription_id: i.subscription_id,
    }
}

/// Starts a top-up: an intent to pay an amount in a currency. The payment
/// quotes the intent's id; its deposit notification credits the namespace.
#[utoipa::path(
    tag = "credits",
    security(("bearer" = [])),
    params(("namespace_id" = String, Path)),
    request_body = CreateIntentRequest,
    responses(
        (status = 201, body = PaymentIntent),
        (status = 400, description = "Invalid amount, or `unsupported_currency` (RTITY before TGE)", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
#[post("/namespaces/{namespace_id}/credits/intents")]
pub async fn create_intent(
    state: web::Data<AppState>,
    member: CurrentMember,
    body: web::Json<CreateIntentRequest>,
) -> ApiResult<HttpResponse> {
    member.require(Permission::Billing)?;
    if !(1..=MAX_UNITS).contains(&body.amount_units) {
        return Err(ApiError::invalid(
            "amount_units must be 1 to 1,000,000,000,000,000 (millionths of a unit)",
        ));
    }
    if !billing::accepts(&state.settings.billing, body.currency) {
        return Err(ApiError::new(
            ErrorCode::UnsupportedCurrency,
            format!(
                "{} top-ups open after the token generation event; pay in USDC or USDT",
                body.currency
            ),
        ));
    }
    let intent = IntentRow {
        id: tally_store::new_id("pi"),
        namespace_id: member.namespace_id().to_owned(),
        environment: body.environment,
        currency: body.currency,
        amount_units: body.amount_units,
        status: IntentStatus::Pending,
        created_by: member.email.clone(),
        created_at: tally_store::now_ms(),
        deposit: None,
        subscription_id: None,
    };
    let mut tx = state.store.begin().await?;
    tally_store::billing::insert_intent(&mut tx, &intent).await?;
    tally_store::events::insert(
        &mut tx,
        NewEvent {
            namespace_id: Some(&intent.namespace_id),
            environment: Some(intent.environment),
            kind: "topup.intent_created",
            severity: Severity::Info,
            message: &format!(
                "Top-up of {} started ({})",
                units(intent.amount_units, intent.currency),
                intent.id
            ),
            actor: Some(&member.email),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(HttpResponse::Created().json(to_intent(intent)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct IntentQuery {
    /// Only intents of this environment.
    pub environment: Option<Environment>,
    /// Only intents with this status.
    pub status: Option<IntentStatus>,
    /// Page size, 1 to 200 (default 50).
    pub limit: Option<i64>,
    /// Only intents older than this id (the `next_before` of the previous page).
    pub before: Option<String>,
}

/// The namespace's payment intents, newest first.
#[utoipa::path(
    tag = "credits",
    security(("bearer" = [])),
    params(("namespace_id" = String, Path), IntentQuery),
    responses(
        (status = 200, body = PaymentIntentPage),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
#[get("/namespaces/{namespace_id}/credits/intents")]
pub async fn list_intents(
    state: web::Data<AppState>,
    member: CurrentMember,
    query: web::Query<IntentQuery>,
) -> ApiResult<web::Json<PaymentIntentPage>> {
    member.require(Permission::Billing)?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::invalid("limit must be 1 to 200"));
    }
    let mut conn = state.store.conn().await?;
    let rows = tally_store::billing::list_intents(
        &mut conn,
        member.namespace_id(),
        query.environment,
        query.status,
        query.before.as_deref(),
        limit + 1,
    )
    .await?;
    let more = rows.len() as i64 > limit;
    let items: Vec<PaymentIntent> = rows
        .into_iter()
        .take(limit as usize)
        .map(to_intent)
        .collect();
    let next_before = if more {
        items.last().map(|i| i.id.clone())
    } else {
        None
    };
    Ok(web::Json(PaymentIntentPage { items, next_before }))
}

/// One payment intent and, once paid, its deposit.
#[utoipa::path(
    tag = "credits",
    security(("bearer" = [])),
    params(("namespace_id" = String, Path), ("intent_id" = String, Path)),
    responses(
        (status = 200, body = PaymentIntent),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
#[get("/namespaces/{namespace_id}/credits/intents/{intent_id}")]
pub async fn get_intent(
    state: web::Data<AppState>,
    member: CurrentMember,
    path: web::Path<(String, String)>,
) -> ApiResult<web::Json<PaymentIntent>> {
    member.require(Permission::Billing)?;
    let (_, intent_id) = path.into_inner();
    let mut conn = state.store.conn().await?;
    let intent = tally_store::billing::intent(&mut conn, &intent_id)
        .await?
        .filter(|i| i.namespace_id == member.namespace_id())
        .ok_or_else(|| ApiError::not_found("payment intent"))?;
    Ok(web::Json(to_intent(intent)))
}

/// Records a refusal as an event; failures to record are logged only (the
/// caller answers the refusal either way).
async fn record_refusal(state: &AppState, intent: Option<&IntentRow>, message: &str) {
    static LAST_SERVER_WIDE: AtomicI64 = AtomicI64::new(0);
    let now = tally_store::now_ms();
    if intent.is_none() {
        let last = LAST_SERVER_WIDE.load(Ordering::Relaxed);
        if now - last < 60_000
            || LAST_SERVER_WIDE
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            tracing::warn!(message, "deposit notification refused");
            return;
        }
    }
    let result = async {
        let mut conn = state.store.conn().await?;
        tally_store::events::insert(
            &mut conn,
            NewEvent {
                namespace_id: intent.map(|i| i.namespace_id.as_str()),
                environment: intent.map(|i| i.environment),
                kind: "topup.deposit_refused",
                severity: Severity::Warning,
                message,
                actor: Some("deposit"),
            },
        )
        .await
    }
    .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "recording a refused deposit failed");
    }
}

/// The intent a (possibly unauthenticated) body names, if it exists.
async fn named_intent(state: &AppState, body: &[u8]) -> Option<IntentRow> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let id = value.get("intent_id")?.as_str()?;
    if id.len() > 100 {
        return None;
    }
    let mut conn = state.store.conn().await.ok()?;
    tally_store::billing::intent(&mut conn, id).await.ok()?
}

/// Confirms a payment: a deposit notification from the payment processor or
/// chain watcher, signed with `X-Tally-Timestamp` (Unix seconds) and
/// `X-Tally-Signature: sha256=<hex HMAC-SHA256 of "{timestamp}.{body}">` under
/// the shared `billing.deposit_secret`. The amount is converted at the
/// configured or fetched rate, which the ledger entry records. Idempotent by
/// `external_tx_id`: a repeat answers the first result with `duplicate: true`.
#[utoipa::path(
    tag = "credits",
    request_body = DepositNotification,
    params(
        ("X-Tally-Timestamp" = i64, Header, description = "Unix seconds when the notification was signed; refused when more than `billing.deposit_tolerance_secs` away"),
        ("X-Tally-Signature" = String, Header, description = "`sha256=` and the hex HMAC-SHA256 of `{timestamp}.{body}`"),
    ),
    responses(
        (status = 200, body = DepositResult),
        (status = 400, description = "Invalid body, or a currency other than the intent's", body = ErrorBody),
        (status = 401, description = "`invalid_signature` or `stale_timestamp`", body = ErrorBody),
        (status = 404, description = "No such payment intent", body = ErrorBody),
        (status = 409, description = "The transaction id was used for a different deposit, or the intent is already paid", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 502, description = "The price feed failed; retry later", body = ErrorBody),
        (status = 503, description = "Deposits are not configured on this server", body = ErrorBody),
    )
)]
#[post("/billing/deposits")]
pub async fn deposit(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> ApiResult<web::Json<DepositResult>> {
    let body = read_body(payload).await?;
    let cfg = &state.settings.billing;
    let secret = cfg
        .deposit_secret
        .as_ref()
        .map(|s| s.expose_secret().as_bytes())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unavailable,
                "deposit notifications are not configured on this server",
            )
        })?;
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let now_secs = tally_store::now_ms().div_euclid(1000);
    if let Err(e) = billing::verify(
        secret,
        header(TIMESTAMP_HEADER),
        header(SIGNATURE_HEADER),
        &body,
        cfg.deposit_tolerance_secs,
        now_secs,
    ) {
        let (code, message) = match e {
            SignatureError::Invalid => (
                ErrorCode::InvalidSignature,
                "the deposit notification's signature is missing or wrong",
            ),
            SignatureError::Stale => (
                ErrorCode::StaleTimestamp,
                "the deposit notification's timestamp is too old or too far ahead (replay)",
            ),
        };
        let intent = named_intent(&state, &body).await;
        record_refusal(
            &state,
            intent.as_ref(),
            &format!("Deposit notification refused: {message}"),
        )
        .await;
        return Err(ApiError::new(code, message));
    }

    let n: DepositNotification = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(ErrorCode::InvalidJson, format!("invalid JSON body: {e}")))?;
    let tx_id = n.external_tx_id.trim();
    if tx_id.is_empty()
        || tx_id != n.external_tx_id
        || n.external_tx_id.chars().count() > 200
        || n.external_tx_id.chars().any(char::is_control)
    {
        return Err(ApiError::invalid(
            "external_tx_id must be 1 to 200 characters without spaces around or control characters",
        ));
    }
    if !(1..=MAX_UNITS).contains(&n.amount_units) {
        return Err(ApiError::invalid(
            "amount_units must be 1 to 1,000,000,000,000,000 (millionths of a unit)",
        ));
    }
    let intent = {
        let mut conn = state.store.conn().await?;
        tally_store::billing::intent(&mut conn, &n.intent_id).await?
    }
    .ok_or_else(|| ApiError::not_found("payment intent"))?;

    let mut seen = {
        let mut conn = state.store.conn().await?;
        tally_store::billing::deposit(&mut conn, &n.external_tx_id).await?
    };
    for _ in 0..3 {
        if let Some(d) = seen.take() {
            return repeated(&state, &intent, &n, d).await;
        }
        if n.currency != intent.currency {
            let message = format!(
                "the deposit is in {} but payment intent {} asks for {}",
                n.currency, intent.id, intent.currency
            );
            record_refusal(
                &state,
                Some(&intent),
                &format!("Deposit refused: {message}"),
            )
            .await;
            return Err(ApiError::invalid(message));
        }
        if intent.status != IntentStatus::Pending {
            return Err(already_paid(&state, &intent, &n).await);
        }
        let credit = credit_for(&state, &intent, &n).await?;
        match credits::deposit(&state.store, &state.accounts, &intent, &n, &credit).await? {
            DepositOutcome::Credited(d) => {
                return Ok(web::Json(DepositResult {
                    intent_id: d.intent_id.clone(),
                    deposit: to_deposit(d),
                    duplicate: false,
                }));
            }
            DepositOutcome::Recorded(d) => seen = Some(d),
            DepositOutcome::AlreadyPaid => return Err(already_paid(&state, &intent, &n).await),
            DepositOutcome::Raced => {
                let mut conn = state.store.conn().await?;
                seen = tally_store::billing::deposit(&mut conn, &n.external_tx_id).await?;
                if seen.is_none() {
                    return Err(already_paid(&state, &intent, &n).await);
                }
            }
        }
    }
    match seen {
        Some(d) => repeated(&state, &intent, &n, d).await,
        None => Err(ApiError::internal(anyhow::anyhow!(
            "deposit {} neither recorded nor credited",
            n.external_tx_id
        ))),
    }
}

/// A deposit for a subscription that is still pending or active credits the
/// package (the price must be paid in full); any other deposit, including
/// one for a subscription cancelled meanwhile, converts at the current rate.
async fn credit_for(
    state: &AppState,
    intent: &IntentRow,
    n: &DepositNotification,
) -> ApiResult<DepositCredit> {
    let subscription = match &intent.subscription_id {
        Some(id) => {
            let mut conn = state.store.conn().await?;
            tally_store::subscriptions::get(&mut conn, id)
                .await?
                .filter(|s| s.status == "pending" || s.status == "active")
        }
        None => None,
    };
    if let Some(sub) = subscription {
        if n.amount_units < intent.amount_units {
            let message = format!(
                "payment intent {} pays a subscription period of {}; the deposit of {} is short",
                intent.id,
                units(intent.amount_units, intent.currency),
                units(n.amount_units, n.currency)
            );
            record_refusal(state, Some(intent), &format!("Deposit refused: {message}")).await;
            return Err(ApiError::invalid(message));
        }
        let rate = billing::rate_of(n.amount_units, sub.credits_micros);
        return Ok(DepositCredit {
            rate,
            credited: sub.credits_micros,
            subscription: Some(sub),
        });
    }
    let rate = billing::rate(&state.settings.billing, &state.egress, n.currency).await?;
    let credited = billing::convert(n.amount_units, rate)
        .filter(|c| (1..=MAX_CREDIT).contains(c))
        .ok_or_else(|| {
            ApiError::invalid(format!(
                "{} at {} credits per unit is less than one micro-credit or more than a billion credits",
                units(n.amount_units, n.currency),
                billing::credits(rate)
            ))
        })?;
    Ok(DepositCredit {
        rate,
        credited,
        subscription: None,
    })
}

async fn already_paid(state: &AppState, intent: &IntentRow, n: &DepositNotification) -> ApiError {
    let message = format!(
        "payment intent {} is already paid by another transaction",
        intent.id
    );
    record_refusal(
        state,
        Some(intent),
        &format!("Deposit {} refused: {message}", n.external_tx_id),
    )
    .await;
    ApiError::new(ErrorCode::Conflict, message)
}

/// A notification whose transaction id is already recorded: the same deposit
/// again is answered as it was (nothing changes); a different one is a 409.
async fn repeated(
    state: &AppState,
    intent: &IntentRow,
    n: &DepositNotification,
    d: DepositRow,
) -> ApiResult<web::Json<DepositResult>> {
    let same =
        d.intent_id == n.intent_id && d.currency == n.currency && d.amount_units == n.amount_units;
    if same {
        record_refusal(
            state,
            Some(intent),
            &format!(
                "Repeated deposit notification for transaction {} ignored: it was credited once",
                n.external_tx_id
            ),
        )
        .await;
        return Ok(web::Json(DepositResult {
            intent_id: d.intent_id.clone(),
            deposit: to_deposit(d),
            duplicate: true,
        }));
    }
    let message = format!(
        "transaction {} was already recorded for a different deposit",
        n.external_tx_id
    );
    record_refusal(state, Some(intent), &format!("Deposit refused: {message}")).await;
    Err(ApiError::new(ErrorCode::Conflict, message))
}
