//! API keys of the selected namespace and environment (K1–K7): create with
//! limits and allowed APIs (the secret is shown once), filter by status, rotate,
//! revoke, and each key's statistics, quota use and audit trail.

use leptos::prelude::*;
use leptos::task::spawn_local;
use tally_common::{ApiKey, CreateKeyRequest, CreatedKey, KeyLimits, KeyStatus};

use crate::api;
use crate::components::{
    credits_label, invalid_input, parse_credits, parse_optional, short_time, use_refresh_tick,
    ErrorNotice, Loaded,
};
use crate::state::use_app;

fn status_badge(status: KeyStatus) -> impl IntoView {
    let class = match status {
        KeyStatus::Active => "badge ok",
        KeyStatus::Expired => "badge warning",
        KeyStatus::Revoked => "badge error",
    };
    view! { <span class=class>{status.as_str()}</span> }
}

fn parse_labels(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

#[component]
pub fn Keys() -> impl IntoView {
    let app = use_app();
    let changed = RwSignal::new(0u32);
    let status = RwSignal::new(None::<KeyStatus>);
    let keys = LocalResource::new(move || {
        changed.track();
        let ns = app.namespace.get().unwrap_or_default();
        let env = app.environment.get();
        let status = status.get();
        async move { api::keys(&ns, env, status).await }
    });
    // The secret of the key just created or rotated; shown once, never fetched again.
    let secret = RwSignal::new(None::<CreatedKey>);
    let error = RwSignal::new(None::<api::ApiError>);
    let detail_of = RwSignal::new(None::<ApiKey>);

    view! {
        <div class="page-head">
            <div>
                <h1>"Keys"</h1>
                <span class="muted">
                    {move || match app.environment.get() {
                        tally_common::Environment::Test => "Keys of the test environment; they spend only test credits.",
                        tally_common::Environment::Live => "Keys of the live environment.",
                    }}
                    " Callers send the secret as Authorization: Bearer <key>."
                </span>
            </div>
            <select
                data-testid="key-status-filter"
                aria-label="Status"
                on:change=move |ev| status.set(match event_target_value(&ev).as_str() {
                    "active" => Some(KeyStatus::Active),
                    "expired" => Some(KeyStatus::Expired),
                    "revoked" => Some(KeyStatus::Revoked),
                    _ => None,
                })
            >
                <option value="">"All statuses"</option>
                <option value="active">"Active"</option>
                <option value="expired">"Expired"</option>
                <option value="revoked">"Revoked"</option>
            </select>
        </div>
        {move || error.get().map(|e| view! { <ErrorNotice error=e /> })}
        {move || secret.get().map(|created| view! {
            <section class="panel" data-testid="key-secret-panel">
                <h2>{format!("Secret of \"{}\"", created.key.name)}</h2>
                <p class="muted">"Copy it now: it is shown only once and cannot be retrieved later."</p>
                <div class="inline-row">
                    <code data-testid="key-secret">{created.secret.clone()}</code>
                    <button class="secondary" on:click={
                        let text = created.secret.clone();
                        move |_| {
                            if let Some(window) = web_sys::window() {
                                let _ = window.navigator().clipboard().write_text(&text);
                            }
                        }
                    }>"Copy"</button>
                    <button class="secondary" on:click=move |_| secret.set(None)>"Done"</button>
                </div>
            </section>
        })}
        <Show when=move || app.can_develop()>
            <CreateKey on_created=move |created| {
                secret.set(Some(created));
                error.set(None);
                changed.update(|n| *n += 1);
            } />
        </Show>
        <section class="panel">
            <Loaded resource=keys loading="Loading keys…" show=move |keys| {
                match keys {
                    list if list.items.is_empty() => view! {
                        <p class="muted" data-testid="no-keys">"No keys here yet."</p>
                    }.into_any(),
                    list => view! {
                        <table data-testid="keys">
                            <thead><tr>
                                <th>"Name"</th><th>"Key"</th><th>"Status"</th><th>"Labels"</th>
                                <th>"Created"</th><th>"Expires"</th><th></th>
                            </tr></thead>
                            <tbody>
                                {list.items.into_iter().map(|key| view! {
                                    <KeyRow key=key
                                        on_secret=move |c| { secret.set(Some(c)); changed.update(|n| *n += 1); }
                                        on_error=move |e| error.set(Some(e))
                                        on_changed=move || changed.update(|n| *n += 1)
                                        on_detail=move |key| detail_of.set(Some(key))
                                    />
                                }).collect_view()}
                            </tbody>
                        </table>
                    }.into_any(),
                }
            } />
        </section>
        {move || detail_of.get().map(|key| view! { <KeyDetail key on_close=move || detail_of.set(None) /> })}
    }
}

#[component]
fn KeyRow(
    key: ApiKey,
    on_secret: impl Fn(CreatedKey) + Copy + 'static,
    on_error: impl Fn(api::ApiError) + Copy + 'static,
    on_changed: impl Fn() + Copy + 'static,
    on_detail: impl Fn(ApiKey) + Copy + 'static,
) -> impl IntoView {
    let app = use_app();
    let (rotate_id, revoke_id) = (key.id.clone(), key.id.clone());
    let detail = key.clone();
    let active = key.status == KeyStatus::Active;
    let rotate = move |_| {
        let (ns, id) = (
            app.namespace.get_untracked().unwrap_or_default(),
            rotate_id.clone(),
        );
        spawn_local(async move {
            match api::rotate_key(&ns, &id, 24 * 3600).await {
                Ok(created) => on_secret(created),
                Err(e) => on_error(e),
            }
        });
    };
    let revoke = move |_| {
        let (ns, id) = (
            app.namespace.get_untracked().unwrap_or_default(),
            revoke_id.clone(),
        );
        spawn_local(async move {
            match api::revoke_key(&ns, &id).await {
                Ok(_) => on_changed(),
                Err(e) => on_error(e),
            }
        });
    };
    view! {
        <tr data-testid="key-row">
            <td>{key.name.clone()}</td>
            <td><code>{format!("{}…{}", key.prefix, key.last4)}</code></td>
            <td>{status_badge(key.status)}</td>
            <td>{key.labels.iter().map(|l| view! { <span class="badge">{l.clone()}</span>" " }).collect_view()}</td>
            <td class="muted">{short_time(&key.created_at)}</td>
            <td class="muted">{key.expires_at.as_deref().map(short_time).unwrap_or_else(|| "never".into())}</td>
            <td>
                <button class="secondary" data-testid="key-detail" on:click=move |_| on_detail(detail.clone())>"History"</button>
                " "
                {(active && app.can_develop()).then(|| view! {
                    <button class="secondary" data-testid="key-rotate" on:click=rotate>"Rotate"</button>
                    " "
                    <button class="danger" data-testid="key-revoke" on:click=revoke>"Revoke"</button>
                })}
            </td>
        </tr>
    }
}

#[component]
fn CreateKey(on_created: impl Fn(CreatedKey) + Copy + 'static) -> impl IntoView {
    let app = use_app();
    let field = || RwSignal::new(String::new());
    let (name, labels, allowed) = (field(), field(), field());
    let (rps, rpm, tpm) = (field(), field(), field());
    let (per_day, per_month, credits_day, credits_month) = (field(), field(), field(), field());
    let error = RwSignal::new(None::<api::ApiError>);
    let credits_limit = |signal: RwSignal<String>,
                         what: &str|
     -> Result<Option<i64>, api::ApiError> {
        let text = signal.get_untracked();
        if text.trim().is_empty() {
            return Ok(None);
        }
        parse_credits(&text)
            .filter(|m| *m > 0)
            .map(Some)
            .ok_or_else(|| invalid_input(&format!("{what} must be a positive number of credits")))
    };
    let limits = move || -> Result<KeyLimits, api::ApiError> {
        Ok(KeyLimits {
            requests_per_second: parse_optional(&rps.get_untracked(), "Requests per second")?,
            requests_per_minute: parse_optional(&rpm.get_untracked(), "Requests per minute")?,
            tokens_per_minute: parse_optional(&tpm.get_untracked(), "Tokens per minute")?,
            requests_per_day: parse_optional(&per_day.get_untracked(), "Requests per day")?,
            requests_per_month: parse_optional(&per_month.get_untracked(), "Requests per month")?,
            credits_per_day_micros: credits_limit(credits_day, "Credits per day")?,
            credits_per_month_micros: credits_limit(credits_month, "Credits per month")?,
        })
    };
    let submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let ns = app.namespace.get_untracked().unwrap_or_default();
        let limits = match limits() {
            Ok(l) => l,
            Err(e) => {
                error.set(Some(e));
                return;
            }
        };
        let req = CreateKeyRequest {
            name: name.get_untracked(),
            environment: app.environment.get_untracked(),
            expires_at: None,
            labels: parse_labels(&labels.get_untracked()),
            allowed_apis: parse_labels(&allowed.get_untracked()),
            limits,
        };
        spawn_local(async move {
            match api::create_key(&ns, &req).await {
                Ok(created) => {
                    error.set(None);
                    for s in [
                        name,
                        labels,
                        allowed,
                        rps,
                        rpm,
                        tpm,
                        per_day,
                        per_month,
                        credits_day,
                        credits_month,
                    ] {
                        s.set(String::new());
                    }
                    on_created(created);
                }
                Err(e) => error.set(Some(e)),
            }
        });
    };
    let input = move |signal: RwSignal<String>,
                      label: &'static str,
                      testid: &'static str,
                      placeholder: &'static str| {
        view! {
            <label>{label}
                <input data-testid=testid placeholder=placeholder inputmode="decimal"
                    prop:value=move || signal.get() on:input=move |ev| signal.set(event_target_value(&ev)) />
            </label>
        }
    };
    view! {
        <section class="panel">
            <h2>{move || format!("New {} key", app.environment.get().as_str())}</h2>
            {move || error.get().map(|e| view! { <ErrorNotice error=e /> })}
            <form on:submit=submit>
                <div class="inline-row">
                    <input data-testid="key-name" required maxlength="100" placeholder="Name, e.g. CI runner"
                        prop:value=move || name.get() on:input=move |ev| name.set(event_target_value(&ev)) />
                    <input data-testid="key-labels" placeholder="Labels, comma separated"
                        prop:value=move || labels.get() on:input=move |ev| labels.set(event_target_value(&ev)) />
                    <input data-testid="key-rpm" inputmode="numeric" placeholder="Requests/minute (optional)"
                        prop:value=move || rpm.get() on:input=move |ev| rpm.set(event_target_value(&ev)) />
                    <button type="submit" data-testid="key-create">"Create key"</button>
                </div>
                <details class="more">
                    <summary data-testid="key-more">"More limits and allowed APIs"</summary>
                    <p class="muted">"Empty means unlimited. Exceeding a limit answers 429; quotas reset at 00:00 UTC (day) and on the 1st (month)."</p>
                    <div class="form-grid">
                        {input(rps, "Requests per second", "key-rps", "e.g. 5")}
                        {input(tpm, "Tokens per minute", "key-tpm", "e.g. 100000")}
                        {input(per_day, "Requests per day", "key-requests-day", "e.g. 10000")}
                        {input(per_month, "Requests per month", "key-requests-month", "e.g. 200000")}
                        {input(credits_day, "Credits per day", "key-credits-day", "e.g. 5 or 0.25")}
                        {input(credits_month, "Credits per month", "key-credits-month", "e.g. 100")}
                        <label class="wide">"Allowed APIs"
                            <input data-testid="key-allowed-apis" placeholder="Catalog slugs, comma separated; empty allows all"
                                prop:value=move || allowed.get() on:input=move |ev| allowed.set(event_target_value(&ev)) />
                        </label>
                    </div>
                </details>
            </form>
        </section>
    }
}

/// Limits and quota use in words: `12 of 1000` or `12 (no limit)`.
fn of_limit(used: String, limit: Option<String>) -> String {
    match limit {
        Some(limit) => format!("{used} of {limit}"),
        None => format!("{used} (no limit)"),
    }
}

fn limits_summary(l: &KeyLimits) -> String {
    let parts: Vec<String> = [
        l.requests_per_second.map(|v| format!("{v} requests/s")),
        l.requests_per_minute.map(|v| format!("{v} requests/min")),
        l.tokens_per_minute.map(|v| format!("{v} tokens/min")),
        l.requests_per_day.map(|v| format!("{v} requests/day")),
        l.requests_per_month.map(|v| format!("{v} requests/month")),
        l.credits_per_day_micros
            .map(|v| format!("{}/day", credits_label(v))),
        l.credits_per_month_micros
            .map(|v| format!("{}/month", credits_label(v))),
    ]
    .into_iter()
    .flatten()
    .collect();
    if parts.is_empty() {
        "none (unlimited)".to_owned()
    } else {
        parts.join(" · ")
    }
}

/// A key's limits, statistics (K6) and audit trail.
#[component]
fn KeyDetail(key: ApiKey, on_close: impl Fn() + Copy + 'static) -> impl IntoView {
    let app = use_app();
    let tick = use_refresh_tick();
    let (audit_id, stats_id) = (key.id.clone(), key.id.clone());
    let trail = LocalResource::new(move || {
        let (ns, id) = (app.namespace.get().unwrap_or_default(), audit_id.clone());
        async move { api::key_audit(&ns, &id).await }
    });
    let stats = LocalResource::new(move || {
        tick.track();
        let (ns, id) = (app.namespace.get().unwrap_or_default(), stats_id.clone());
        async move { api::key_stats(&ns, &id).await }
    });
    let limits = key.limits.clone();
    view! {
        <section class="panel" data-testid="key-audit">
            <div class="page-head">
                <h2>{format!("Key \"{}\" ({}…{})", key.name, key.prefix, key.last4)}</h2>
                <button class="secondary" on:click=move |_| on_close()>"Close"</button>
            </div>
            <p>
                <span class="muted">"Limits: "</span><span data-testid="key-limits">{limits_summary(&key.limits)}</span>
                <br />
                <span class="muted">"Allowed APIs: "</span>
                <span data-testid="key-allowed">{if key.allowed_apis.is_empty() { "all".to_owned() } else { key.allowed_apis.join(", ") }}</span>
            </p>
            <h2>"Statistics"</h2>
            <Loaded resource=stats loading="Loading statistics…" show=move |s| view! {
                <div class="kpis" data-testid="key-stats">
                    <div class="kpi"><span class="muted">"Calls"</span><strong data-testid="key-stats-calls">{s.calls}</strong></div>
                    <div class="kpi"><span class="muted">"Errors"</span><strong>{s.errors}</strong></div>
                    <div class="kpi"><span class="muted">"Spend"</span><strong>{credits_label(s.spend_micros)}</strong></div>
                    <div class="kpi"><span class="muted">"Tokens in / out"</span><strong>{format!("{} / {}", s.tokens_in, s.tokens_out)}</strong></div>
                    <div class="kpi"><span class="muted">"Last used"</span>
                        <strong>{s.last_used_at.as_deref().map(short_time).unwrap_or_else(|| "never".into())}</strong></div>
                </div>
                <table data-testid="key-quotas">
                    <thead><tr><th>"Quota"</th><th>"Requests"</th><th>"Credits"</th><th>"Resets"</th></tr></thead>
                    <tbody>
                        <tr>
                            <td>"Today (UTC)"</td>
                            <td>{of_limit(s.day_requests.to_string(), limits.requests_per_day.map(|v| v.to_string()))}</td>
                            <td>{of_limit(credits_label(s.day_credits_micros), limits.credits_per_day_micros.map(credits_label))}</td>
                            <td class="muted">{short_time(&s.day_resets_at)}</td>
                        </tr>
                        <tr>
                            <td>"This month"</td>
                            <td>{of_limit(s.month_requests.to_string(), limits.requests_per_month.map(|v| v.to_string()))}</td>
                            <td>{of_limit(credits_label(s.month_credits_micros), limits.credits_per_month_micros.map(credits_label))}</td>
                            <td class="muted">{short_time(&s.month_resets_at)}</td>
                        </tr>
                    </tbody>
                </table>
            }.into_any() />
            <h2 style="margin-top:18px">"History"</h2>
            <Loaded resource=trail loading="Loading…" show=move |trail| {
                view! {
                    <table>
                        <thead><tr><th>"Time"</th><th>"Action"</th><th>"By"</th><th>"Details"</th></tr></thead>
                        <tbody>
                            {trail.items.into_iter().map(|a| view! {
                                <tr>
                                    <td class="muted">{short_time(&a.time)}</td>
                                    <td><code>{a.action}</code></td>
                                    <td>{a.actor}</td>
                                    <td class="muted">{a.details.to_string()}</td>
                                </tr>
                            }).collect_view()}
                        </tbody>
                    </table>
                }.into_any()
            } />
        </section>
    }
}
