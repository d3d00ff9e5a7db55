//! Webhooks (W1, W2): the namespace's endpoints (create, enable or disable,
//! rotate the signing secret, send a test event, delete) and the deliveries
//! with every attempt, replayable.

use leptos::prelude::*;
use leptos::task::spawn_local;
use tally_common::{
    CreateWebhookEndpoint, UpdateWebhookEndpoint, WebhookDelivery, WebhookDeliveryDetail,
    WebhookEndpoint, WebhookEndpointList, WebhookEndpointWithSecret,
};

use crate::api;
use crate::components::{short_time, use_refresh_tick, ErrorNotice, Loaded};
use crate::state::use_app;

fn delivery_badge(status: &str) -> impl IntoView {
    let class = match status {
        "succeeded" => "badge ok",
        "failed" => "badge error",
        _ => "badge warning",
    };
    view! { <span class=class>{status.to_owned()}</span> }
}

#[component]
pub fn Webhooks() -> impl IntoView {
    let app = use_app();
    let changed = RwSignal::new(0u32);
    let error = RwSignal::new(None::<api::ApiError>);
    let notice = RwSignal::new(None::<String>);
    // The secret of the endpoint just created or rotated: shown once.
    let secret = RwSignal::new(None::<WebhookEndpointWithSecret>);
    // Bumped when a delivery is queued here: the deliveries reload.
    let queued = RwSignal::new(0u32);
    let endpoints = LocalResource::new(move || {
        changed.track();
        // A delivery's outcome changes its endpoint's state (failing, disabled).
        queued.track();
        let ns = app.namespace.get().unwrap_or_default();
        async move { api::webhooks(&ns).await }
    });

    view! {
        <div class="page-head">
            <div>
                <h1>"Webhooks"</h1>
                <span class="muted">
                    "Signed POSTs to your URLs when something happens in this namespace, retried for about three days until your endpoint answers 2xx."
                </span>
            </div>
        </div>
        {move || error.get().map(|e| view! { <ErrorNotice error=e /> })}
        {move || notice.get().map(|t| view! { <div class="alert ok" data-testid="webhook-notice">{t}</div> })}
        {move || secret.get().map(|s| view! {
            <section class="panel" data-testid="webhook-secret-panel">
                <h2>"Signing secret"</h2>
                <p>"Copy it now: it is not shown again. Verify each delivery's webhook-signature with it (Standard Webhooks; see the API docs)."</p>
                <p><code class="wrap-anywhere" data-testid="webhook-secret">{s.secret.clone()}</code></p>
                <p class="muted">{format!("For {}", s.endpoint.url)}</p>
                <button class="secondary" on:click=move |_| secret.set(None)>"Done"</button>
            </section>
        })}
        <Show when=move || app.can_develop()>
            <CreateEndpoint endpoints changed error secret />
        </Show>
        <Loaded resource=endpoints loading="Loading endpoints…" show=move |l: WebhookEndpointList| {
            view! { <EndpointTable items=l.items changed queued error notice secret /> }.into_any()
        } />
        <Deliveries queued error notice />
    }
}

#[component]
fn CreateEndpoint(
    endpoints: LocalResource<Result<WebhookEndpointList, api::ApiError>>,
    changed: RwSignal<u32>,
    error: RwSignal<Option<api::ApiError>>,
    secret: RwSignal<Option<WebhookEndpointWithSecret>>,
) -> impl IntoView {
    let app = use_app();
    let url = RwSignal::new(String::new());
    let description = RwSignal::new(String::new());
    let chosen = RwSignal::new(Vec::<String>::new());
    let busy = RwSignal::new(false);
    let offered = move || {
        endpoints
            .get()
            .and_then(Result::ok)
            .map(|l| l.event_types)
            .unwrap_or_default()
    };
    let submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        busy.set(true);
        let ns = app.namespace.get_untracked().unwrap_or_default();
        let req = CreateWebhookEndpoint {
            url: url.get_untracked(),
            description: description.get_untracked(),
            event_types: chosen.get_untracked(),
        };
        spawn_local(async move {
            match api::create_webhook(&ns, &req).await {
                Ok(made) => {
                    error.set(None);
                    secret.set(Some(made));
                    url.set(String::new());
                    description.set(String::new());
                    chosen.set(Vec::new());
                    changed.update(|n| *n += 1);
                }
                Err(e) => error.set(Some(e)),
            }
            busy.set(false);
        });
    };
    view! {
        <section class="panel">
            <h2>"Add an endpoint"</h2>
            <form class="stack" on:submit=submit>
                <label>
                    "URL"
                    <input data-testid="webhook-url" type="url" required placeholder="https://example.com/tally-webhooks"
                        prop:value=move || url.get() on:input=move |ev| url.set(event_target_value(&ev)) />
                </label>
                <label>
                    "Description (optional)"
                    <input data-testid="webhook-description" maxlength="200"
                        prop:value=move || description.get() on:input=move |ev| description.set(event_target_value(&ev)) />
                </label>
                <fieldset class="choices">
                    <legend>"Events (none ticked: all)"</legend>
                    {move || offered().into_iter().map(|t| {
                        let (t1, t2) = (t.clone(), t.clone());
                        view! {
                            <label class="check">
                                <input type="checkbox" data-testid=format!("webhook-type-{t}")
                                    prop:checked=move || chosen.with(|c| c.contains(&t1))
                                    on:change=move |ev| {
                                        let on = event_target_checked(&ev);
                                        chosen.update(|c| {
                                            c.retain(|x| x != &t2);
                                            if on { c.push(t2.clone()); }
                                        });
                                    } />
                                <span><code>{t}</code></span>
                            </label>
                        }
                    }).collect_view()}
                </fieldset>
                <button type="submit" data-testid="webhook-create" disabled=move || busy.get()>"Add endpoint"</button>
            </form>
        </section>
    }
}

#[component]
fn EndpointTable(
    items: Vec<WebhookEndpoint>,
    changed: RwSignal<u32>,
    queued: RwSignal<u32>,
    error: RwSignal<Option<api::ApiError>>,
    notice: RwSignal<Option<String>>,
    secret: RwSignal<Option<WebhookEndpointWithSecret>>,
) -> impl IntoView {
    let app = use_app();
    let ns = move || app.namespace.get_untracked().unwrap_or_default();
    let act = move |what: &'static str, id: String| {
        let ns = ns();
        spawn_local(async move {
            let result = match what {
                "test" => api::test_webhook(&ns, &id)
                    .await
                    .map(|d| format!("Test event {} queued.", d.message_id)),
                "enable" | "disable" => api::update_webhook(
                    &ns,
                    &id,
                    &UpdateWebhookEndpoint {
                        enabled: Some(what == "enable"),
                        ..Default::default()
                    },
                )
                .await
                .map(|e| {
                    format!(
                        "{} {}.",
                        e.url,
                        if e.enabled { "enabled" } else { "disabled" }
                    )
                }),
                "rotate" => api::rotate_webhook(&ns, &id).await.map(|s| {
                    secret.set(Some(s));
                    "New signing secret made; the old one also signs for 24 hours.".to_owned()
                }),
                _ => api::delete_webhook(&ns, &id)
                    .await
                    .map(|()| "Endpoint deleted.".to_owned()),
            };
            match result {
                Ok(text) => {
                    error.set(None);
                    notice.set(Some(text));
                    changed.update(|n| *n += 1);
                    queued.update(|n| *n += 1);
                }
                Err(e) => error.set(Some(e)),
            }
        });
    };
    if items.is_empty() {
        return view! {
            <section class="panel"><h2>"Endpoints"</h2><p class="muted" data-testid="webhooks-empty">"No endpoints yet."</p></section>
        }
        .into_any();
    }
    let rows = items
        .into_iter()
        .map(|e| {
            let state = if e.enabled {
                match &e.failing_since {
                    Some(t) => view! { <span class="badge warning" title=format!("failing since {}", short_time(t))>"failing"</span> }.into_any(),
                    None => view! { <span class="badge ok">"enabled"</span> }.into_any(),
                }
            } else {
                view! { <span class="badge error" title=e.disabled_reason.clone().unwrap_or_default()>"disabled"</span> }.into_any()
            };
            let types = if e.event_types.is_empty() {
                "all events".to_owned()
            } else {
                e.event_types.join(", ")
            };
            let (i1, i2, i3, i4) = (e.id.clone(), e.id.clone(), e.id.clone(), e.id.clone());
            let enabled = e.enabled;
            view! {
                <tr data-testid="webhook-row">
                    <td class="wrap-anywhere"><code>{e.url.clone()}</code><div class="muted">{e.description.clone()}</div></td>
                    <td class="wrap-anywhere">{types}</td>
                    <td data-testid="webhook-state">{state}</td>
                    <td class="nowrap">{short_time(&e.created_at)}</td>
                    <td class="row-actions">
                        <Show when=move || app.can_develop()>
                            <button class="secondary" data-testid="webhook-test" disabled=!enabled
                                on:click={let i = i1.clone(); move |_| act("test", i.clone())}>"Send test"</button>
                            <button class="secondary" data-testid="webhook-toggle"
                                on:click={let i = i2.clone(); move |_| act(if enabled { "disable" } else { "enable" }, i.clone())}>
                                {if enabled { "Disable" } else { "Enable" }}
                            </button>
                            <button class="secondary" data-testid="webhook-rotate"
                                on:click={let i = i3.clone(); move |_| act("rotate", i.clone())}>"Rotate secret"</button>
                            <button class="secondary danger" data-testid="webhook-delete"
                                on:click={let i = i4.clone(); move |_| act("delete", i.clone())}>"Delete"</button>
                        </Show>
                    </td>
                </tr>
            }
        })
        .collect_view();
    view! {
        <section class="panel">
            <h2>"Endpoints"</h2>
            <div class="table-wrap">
                <table>
                    <thead><tr><th>"URL"</th><th>"Events"</th><th>"State"</th><th>"Added"</th><th></th></tr></thead>
                    <tbody>{rows}</tbody>
                </table>
            </div>
        </section>
    }
    .into_any()
}

#[component]
fn Deliveries(
    queued: RwSignal<u32>,
    error: RwSignal<Option<api::ApiError>>,
    notice: RwSignal<Option<String>>,
) -> impl IntoView {
    let app = use_app();
    let tick = use_refresh_tick();
    let status = RwSignal::new(None::<String>);
    let replayed = queued;
    let open = RwSignal::new(None::<String>);
    let list = LocalResource::new(move || {
        tick.track();
        replayed.track();
        let ns = app.namespace.get().unwrap_or_default();
        let status = status.get();
        async move { api::webhook_deliveries(&ns, status.as_deref(), None).await }
    });
    // While a delivery is pending, look again every two seconds.
    Effect::new(move |_| {
        let pending = list
            .get()
            .and_then(Result::ok)
            .is_some_and(|p| p.items.iter().any(|d| d.status == "pending"));
        if pending {
            set_timeout(
                move || replayed.update(|n| *n += 1),
                std::time::Duration::from_secs(2),
            );
        }
    });
    let replay = move |id: String| {
        let ns = app.namespace.get_untracked().unwrap_or_default();
        spawn_local(async move {
            match api::replay_webhook(&ns, &id).await {
                Ok(d) => {
                    error.set(None);
                    notice.set(Some(format!(
                        "Event {} sent again as a new delivery.",
                        d.message_id
                    )));
                    replayed.update(|n| *n += 1);
                }
                Err(e) => error.set(Some(e)),
            }
        });
    };
    view! {
        <section class="panel">
            <div class="panel-head">
                <h2>"Deliveries"</h2>
                <select data-testid="delivery-status-filter" aria-label="Status"
                    on:change=move |ev| status.set(Some(event_target_value(&ev)).filter(|s| !s.is_empty()))>
                    <option value="">"All"</option>
                    <option value="pending">"Pending"</option>
                    <option value="succeeded">"Succeeded"</option>
                    <option value="failed">"Failed"</option>
                </select>
            </div>
            <Loaded resource=list loading="Loading deliveries…" show=move |page: tally_common::WebhookDeliveryPage| {
                if page.items.is_empty() {
                    return view! { <p class="muted" data-testid="deliveries-empty">"No deliveries yet. Send a test event to an endpoint."</p> }.into_any();
                }
                let rows = page.items.into_iter().map(|d: WebhookDelivery| {
                    let (id1, id2) = (d.id.clone(), d.id.clone());
                    view! {
                        <tr data-testid="delivery-row">
                            <td class="nowrap">{short_time(&d.created_at)}</td>
                            <td><code>{d.event_type.clone()}</code></td>
                            <td>{delivery_badge(&d.status)}</td>
                            <td class="num" data-testid="delivery-attempts">{d.attempts}</td>
                            <td class="num">{d.last_status.map(|s| s.to_string()).unwrap_or_else(|| "—".into())}</td>
                            <td class="nowrap">{d.next_attempt_at.as_deref().map(short_time).unwrap_or_default()}</td>
                            <td class="row-actions">
                                <button class="secondary" data-testid="delivery-open" on:click=move |_| open.set(Some(id1.clone()))>"Attempts"</button>
                                <Show when=move || app.can_develop()>
                                    <button class="secondary" data-testid="delivery-replay"
                                        on:click={let i = id2.clone(); move |_| replay(i.clone())}>"Replay"</button>
                                </Show>
                            </td>
                        </tr>
                    }
                }).collect_view();
                view! {
                    <div class="table-wrap">
                        <table>
                            <thead><tr>
                                <th>"Created"</th><th>"Event"</th><th>"Status"</th><th class="num">"Attempts"</th>
                                <th class="num">"Last HTTP"</th><th>"Next attempt"</th><th></th>
                            </tr></thead>
                            <tbody>{rows}</tbody>
                        </table>
                    </div>
                }.into_any()
            } />
        </section>
        {move || open.get().map(|id| view! { <DeliveryDetail id open /> })}
    }
}

#[component]
fn DeliveryDetail(id: String, open: RwSignal<Option<String>>) -> impl IntoView {
    let app = use_app();
    let detail = LocalResource::new(move || {
        let ns = app.namespace.get().unwrap_or_default();
        let id = id.clone();
        async move { api::webhook_delivery(&ns, &id).await }
    });
    view! {
        <section class="panel" data-testid="delivery-detail">
            <div class="panel-head">
                <h2>"Delivery"</h2>
                <button class="secondary" on:click=move |_| open.set(None)>"Close"</button>
            </div>
            <Loaded resource=detail loading="Loading the delivery…" show=move |d: WebhookDeliveryDetail| {
                let attempts = d.attempts.into_iter().map(|a| view! {
                    <tr data-testid="attempt-row">
                        <td class="nowrap">{short_time(&a.attempted_at)}</td>
                        <td>{if a.succeeded { view! { <span class="badge ok">"accepted"</span> }.into_any() } else { view! { <span class="badge error">"failed"</span> }.into_any() }}</td>
                        <td class="num">{a.status_code.map(|s| s.to_string()).unwrap_or_else(|| "—".into())}</td>
                        <td class="num">{format!("{} ms", a.latency_ms)}</td>
                        <td class="wrap-anywhere"><code>{a.error.unwrap_or(a.response_excerpt)}</code></td>
                    </tr>
                }).collect_view();
                view! {
                    <p>"Event id (webhook-id): " <code data-testid="delivery-message-id">{d.delivery.message_id.clone()}</code></p>
                    <div class="table-wrap">
                        <table>
                            <thead><tr><th>"When"</th><th>"Result"</th><th class="num">"HTTP"</th><th class="num">"Latency"</th><th>"Answer"</th></tr></thead>
                            <tbody>{attempts}</tbody>
                        </table>
                    </div>
                    <details class="more"><summary>"Body sent"</summary><pre class="code">{d.payload}</pre></details>
                }.into_any()
            } />
        </section>
    }
}
