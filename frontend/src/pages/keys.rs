//! API keys of the selected namespace and environment (K1, K4–K7): create (the
//! secret is shown once), filter by status, rotate, revoke, and the audit trail.

use leptos::prelude::*;
use leptos::task::spawn_local;
use tally_common::{ApiKey, CreateKeyRequest, CreatedKey, KeyLimits, KeyStatus};

use crate::api;
use crate::components::{short_time, ErrorNotice};
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
    let audit_of = RwSignal::new(None::<String>);

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
            <Transition fallback=|| view! { <p class="loading">"Loading keys…"</p> }>
                {move || Suspend::new(async move {
                    match keys.await {
                        Err(e) => view! { <ErrorNotice error=e /> }.into_any(),
                        Ok(list) if list.items.is_empty() => view! {
                            <p class="muted" data-testid="no-keys">"No keys here yet."</p>
                        }.into_any(),
                        Ok(list) => view! {
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
                                            on_audit=move |id| audit_of.set(Some(id))
                                        />
                                    }).collect_view()}
                                </tbody>
                            </table>
                        }.into_any(),
                    }
                })}
            </Transition>
        </section>
        {move || audit_of.get().map(|id| view! { <Audit key_id=id on_close=move || audit_of.set(None) /> })}
    }
}

#[component]
fn KeyRow(
    key: ApiKey,
    on_secret: impl Fn(CreatedKey) + Copy + 'static,
    on_error: impl Fn(api::ApiError) + Copy + 'static,
    on_changed: impl Fn() + Copy + 'static,
    on_audit: impl Fn(String) + Copy + 'static,
) -> impl IntoView {
    let app = use_app();
    let (rotate_id, revoke_id, audit_id) = (key.id.clone(), key.id.clone(), key.id.clone());
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
                <button class="secondary" on:click=move |_| on_audit(audit_id.clone())>"History"</button>
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
    let name = RwSignal::new(String::new());
    let labels = RwSignal::new(String::new());
    let rpm = RwSignal::new(String::new());
    let error = RwSignal::new(None::<api::ApiError>);
    let submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let ns = app.namespace.get_untracked().unwrap_or_default();
        let rpm_value = rpm.get_untracked().trim().to_owned();
        let requests_per_minute = if rpm_value.is_empty() {
            None
        } else {
            match rpm_value.parse::<u32>() {
                Ok(v) => Some(v),
                Err(_) => {
                    error.set(Some(api::ApiError {
                        status: 400,
                        code: "invalid_request".into(),
                        message: "requests per minute must be a whole number".into(),
                    }));
                    return;
                }
            }
        };
        let req = CreateKeyRequest {
            name: name.get_untracked(),
            environment: app.environment.get_untracked(),
            expires_at: None,
            labels: parse_labels(&labels.get_untracked()),
            allowed_apis: Vec::new(),
            limits: KeyLimits {
                requests_per_minute,
                ..KeyLimits::default()
            },
        };
        spawn_local(async move {
            match api::create_key(&ns, &req).await {
                Ok(created) => {
                    error.set(None);
                    name.set(String::new());
                    labels.set(String::new());
                    rpm.set(String::new());
                    on_created(created);
                }
                Err(e) => error.set(Some(e)),
            }
        });
    };
    view! {
        <section class="panel">
            <h2>{move || format!("New {} key", app.environment.get().as_str())}</h2>
            {move || error.get().map(|e| view! { <ErrorNotice error=e /> })}
            <form class="inline" on:submit=submit>
                <input data-testid="key-name" required maxlength="100" placeholder="Name, e.g. CI runner"
                    prop:value=move || name.get() on:input=move |ev| name.set(event_target_value(&ev)) />
                <input data-testid="key-labels" placeholder="Labels, comma separated"
                    prop:value=move || labels.get() on:input=move |ev| labels.set(event_target_value(&ev)) />
                <input data-testid="key-rpm" inputmode="numeric" placeholder="Requests/minute (optional)"
                    prop:value=move || rpm.get() on:input=move |ev| rpm.set(event_target_value(&ev)) />
                <button type="submit" data-testid="key-create">"Create key"</button>
            </form>
        </section>
    }
}

#[component]
fn Audit(key_id: String, on_close: impl Fn() + Copy + 'static) -> impl IntoView {
    let app = use_app();
    let trail = LocalResource::new(move || {
        let (ns, id) = (app.namespace.get().unwrap_or_default(), key_id.clone());
        async move { api::key_audit(&ns, &id).await }
    });
    view! {
        <section class="panel" data-testid="key-audit">
            <div class="page-head">
                <h2>"Key history"</h2>
                <button class="secondary" on:click=move |_| on_close()>"Close"</button>
            </div>
            <Transition fallback=|| view! { <p class="loading">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match trail.await {
                        Err(e) => view! { <ErrorNotice error=e /> }.into_any(),
                        Ok(trail) => view! {
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
                        }.into_any(),
                    }
                })}
            </Transition>
        </section>
    }
}
