//! The catalog (S1 browsing; operators' API management): everyone sees the APIs
//! they can call with their prices; operators also see upstreams, add APIs and
//! turn them on and off.

use leptos::prelude::*;
use leptos::task::spawn_local;
use tally_common::{
    CatalogApiAdmin, CatalogApiConfig, OutputLimitParam, Pricing, Protocol, UpdateCatalogApi,
    Upstream,
};

use crate::api;
use crate::components::{
    invalid_input, parse_credits, parse_optional, pricing_summary, ErrorNotice, Loaded,
};
use crate::state::use_app;

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Openai => "OpenAI-compatible",
        Protocol::Http => "HTTP",
    }
}

fn list(text: &str) -> Vec<String> {
    text.split([',', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn enabled_badge(enabled: bool) -> impl IntoView {
    if enabled {
        view! { <span class="badge ok">"enabled"</span> }
    } else {
        view! { <span class="badge error">"disabled"</span> }
    }
}

#[component]
pub fn Catalog() -> impl IntoView {
    let app = use_app();
    view! {
        <div class="page-head">
            <div>
                <h1>"Catalog"</h1>
                <span class="muted">
                    "APIs and models callable through the gateway. OpenAI-compatible ones are reached at "
                    <code>"/v1/chat/completions"</code>" or "<code>"/v1/embeddings"</code>
                    " by model name, others at "<code>"/v1/apis/{slug}/…"</code>"."
                </span>
            </div>
        </div>
        <Show when=move || app.is_operator.get() fallback=PublicCatalog>
            <AdminCatalog />
        </Show>
    }
}

#[component]
fn PublicCatalog() -> impl IntoView {
    let catalog = LocalResource::new(api::catalog);
    view! {
        <section class="panel">
            <Loaded resource=catalog loading="Loading the catalog…" show=move |catalog| {
                match catalog {
                    list if list.items.is_empty() => view! {
                        <p class="muted" data-testid="catalog-empty">"The catalog is empty."</p>
                    }.into_any(),
                    list => view! {
                        <table data-testid="catalog">
                            <thead><tr>
                                <th>"API"</th><th>"Protocol"</th><th>"Models"</th><th>"Price"</th>
                                <th>"Live"</th><th>"Test keys reach"</th><th>"Status"</th>
                            </tr></thead>
                            <tbody>
                                {list.items.into_iter().map(|a| view! {
                                    <tr data-testid="catalog-row">
                                        <td><strong>{a.name}</strong>" "<code>{a.slug}</code>
                                            <div class="muted">{a.description}</div></td>
                                        <td>{protocol_name(a.protocol)}</td>
                                        <td>{a.models.join(", ")}</td>
                                        <td>{pricing_summary(&a.pricing)}</td>
                                        <td>{if a.live { "yes" } else { "no" }}</td>
                                        <td>{a.test_mode}</td>
                                        <td>{enabled_badge(a.enabled)}</td>
                                    </tr>
                                }).collect_view()}
                            </tbody>
                        </table>
                    }.into_any(),
                }
            } />
        </section>
    }
}

#[component]
fn AdminCatalog() -> impl IntoView {
    let changed = RwSignal::new(0u32);
    let catalog = LocalResource::new(move || {
        changed.track();
        api::admin_catalog()
    });
    let error = RwSignal::new(None::<api::ApiError>);
    let toggle = move |slug: String, enabled: bool| {
        spawn_local(async move {
            let change = UpdateCatalogApi {
                enabled: Some(enabled),
                ..UpdateCatalogApi::default()
            };
            match api::update_catalog_api(&slug, &change).await {
                Ok(_) => {
                    error.set(None);
                    changed.update(|n| *n += 1);
                }
                Err(e) => error.set(Some(e)),
            }
        });
    };
    view! {
        {move || error.get().map(|e| view! { <ErrorNotice error=e /> })}
        <section class="panel">
            <h2>"APIs (operator view)"</h2>
            <Loaded resource=catalog loading="Loading the catalog…" show=move |catalog| {
                match catalog {
                    list if list.items.is_empty() => view! {
                        <p class="muted" data-testid="catalog-empty">"The catalog is empty."</p>
                    }.into_any(),
                    list => view! {
                        <table data-testid="catalog">
                            <thead><tr>
                                <th>"API"</th><th>"Protocol"</th><th>"Models"</th><th>"Upstreams"</th>
                                <th>"Price"</th><th>"Source"</th><th>"Status"</th><th></th>
                            </tr></thead>
                            <tbody>
                                {list.items.into_iter().map(|a| view! { <AdminRow api=a toggle /> }).collect_view()}
                            </tbody>
                        </table>
                    }.into_any(),
                }
            } />
        </section>
        <CreateApi on_created=move || changed.update(|n| *n += 1) />
    }
}

#[component]
fn AdminRow(api: CatalogApiAdmin, toggle: impl Fn(String, bool) + Copy + 'static) -> impl IntoView {
    let c = api.config;
    let upstreams = |list: &[Upstream]| {
        list.iter()
            .map(|u| u.url.clone())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (live, test) = (upstreams(&c.upstreams), upstreams(&c.test_upstreams));
    let (slug, enabled) = (c.slug.clone(), c.enabled);
    view! {
        <tr data-testid="catalog-row">
            <td><strong>{c.name}</strong>" "<code>{c.slug}</code>
                <div class="muted">{c.description}</div></td>
            <td>{protocol_name(c.protocol)}</td>
            <td>{c.models.join(", ")}</td>
            <td>
                <div>"live: "{if live.is_empty() { "none".to_owned() } else { live }}</div>
                <div class="muted">"test: "{if test.is_empty() { "sandbox".to_owned() } else { test }}</div>
            </td>
            <td>{pricing_summary(&c.pricing)}</td>
            <td><span class="badge">{api.source}</span>
                {c.owner_namespace_id.map(|o| view! { <div class="muted">"seller "<code>{o}</code></div> })}</td>
            <td>{enabled_badge(enabled)}</td>
            <td>
                <button class=if enabled { "danger" } else { "secondary" } data-testid="catalog-toggle"
                    on:click=move |_| toggle(slug.clone(), !enabled)>
                    {if enabled { "Disable" } else { "Enable" }}
                </button>
            </td>
        </tr>
    }
}

#[component]
fn CreateApi(on_created: impl Fn() + Copy + 'static) -> impl IntoView {
    let field = || RwSignal::new(String::new());
    let (slug, name, description, models) = (field(), field(), field(), field());
    let (upstreams, upstream_key, test_upstreams) = (field(), field(), field());
    let (per_request, per_1k_in, per_1k_out, per_second) = (field(), field(), field(), field());
    let (max_output, timeout, owner) = (field(), field(), field());
    let protocol = RwSignal::new(Protocol::Openai);
    let message = RwSignal::new(None::<Result<String, api::ApiError>>);

    let price = |signal: RwSignal<String>, what: &str| -> Result<i64, api::ApiError> {
        let text = signal.get_untracked();
        if text.trim().is_empty() {
            return Ok(0);
        }
        parse_credits(&text).filter(|m| *m >= 0).ok_or_else(|| {
            invalid_input(&format!(
                "{what} must be a number of credits with at most six decimals"
            ))
        })
    };
    let config = move || -> Result<CatalogApiConfig, api::ApiError> {
        let key = upstream_key.get_untracked().trim().to_owned();
        let pool = |text: &str, api_key: Option<String>| {
            list(text)
                .into_iter()
                .map(|url| Upstream {
                    url,
                    api_key: api_key.clone(),
                    weight: 1,
                })
                .collect::<Vec<_>>()
        };
        Ok(CatalogApiConfig {
            slug: slug.get_untracked().trim().to_owned(),
            name: name.get_untracked().trim().to_owned(),
            description: description.get_untracked().trim().to_owned(),
            protocol: protocol.get_untracked(),
            models: list(&models.get_untracked()),
            upstreams: pool(&upstreams.get_untracked(), (!key.is_empty()).then_some(key)),
            test_upstreams: pool(&test_upstreams.get_untracked(), None),
            pricing: Pricing {
                per_request_micros: price(per_request, "The price per request")?,
                per_1k_input_tokens_micros: price(per_1k_in, "The price per 1k input tokens")?,
                per_1k_output_tokens_micros: price(per_1k_out, "The price per 1k output tokens")?,
                per_compute_second_micros: price(per_second, "The price per compute second")?,
                default_max_output_tokens: parse_optional(
                    &max_output.get_untracked(),
                    "Default max output tokens",
                )?
                .unwrap_or_default(),
            },
            output_limit_param: OutputLimitParam::default(),
            timeout_ms: parse_optional(&timeout.get_untracked(), "The timeout")?.unwrap_or(60_000),
            health_path: None,
            enabled: true,
            owner_namespace_id: Some(owner.get_untracked().trim().to_owned())
                .filter(|o| !o.is_empty()),
        })
    };
    let submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let config = match config() {
            Ok(c) => c,
            Err(e) => {
                message.set(Some(Err(e)));
                return;
            }
        };
        spawn_local(async move {
            let result = api::create_catalog_api(&config).await.map(|created| {
                for s in [
                    slug,
                    name,
                    description,
                    models,
                    upstreams,
                    upstream_key,
                    test_upstreams,
                ] {
                    s.set(String::new());
                }
                for s in [
                    per_request,
                    per_1k_in,
                    per_1k_out,
                    per_second,
                    max_output,
                    timeout,
                    owner,
                ] {
                    s.set(String::new());
                }
                format!("Added {}.", created.config.slug)
            });
            if result.is_ok() {
                on_created();
            }
            message.set(Some(result));
        });
    };
    let input = move |signal: RwSignal<String>,
                      label: &'static str,
                      testid: &'static str,
                      placeholder: &'static str| {
        view! {
            <label>{label}
                <input data-testid=testid placeholder=placeholder
                    prop:value=move || signal.get() on:input=move |ev| signal.set(event_target_value(&ev)) />
            </label>
        }
    };
    view! {
        <section class="panel" data-testid="catalog-create">
            <h2>"Add an API"</h2>
            {move || message.get().map(|m| match m {
                Ok(text) => view! { <div class="alert ok">{text}</div> }.into_any(),
                Err(e) => view! { <ErrorNotice error=e /> }.into_any(),
            })}
            <form on:submit=submit>
                <div class="form-grid">
                    {input(slug, "Slug", "catalog-slug", "e.g. weather (a-z, 0-9, -)")}
                    {input(name, "Name", "catalog-name", "e.g. Weather forecasts")}
                    <label>"Protocol"
                        <select data-testid="catalog-protocol" on:change=move |ev| protocol.set(
                            if event_target_value(&ev) == "http" { Protocol::Http } else { Protocol::Openai })>
                            <option value="openai">"OpenAI-compatible"</option>
                            <option value="http">"HTTP (JSON)"</option>
                        </select>
                    </label>
                    {input(models, "Models (OpenAI protocol)", "catalog-models", "comma separated, e.g. llama-3-8b")}
                    {input(description, "Description", "catalog-description", "optional")}
                    {input(upstreams, "Live upstream URLs", "catalog-upstreams", "comma separated base URLs")}
                    {input(upstream_key, "Upstream API key", "catalog-upstream-key", "optional, sent as Bearer")}
                    {input(test_upstreams, "Test upstream URLs", "catalog-test-upstreams", "empty: built-in sandbox")}
                    {input(per_request, "Credits per request", "catalog-per-request", "e.g. 0.001")}
                    {input(per_1k_in, "Credits per 1k input tokens", "catalog-per-1k-in", "e.g. 0.002")}
                    {input(per_1k_out, "Credits per 1k output tokens", "catalog-per-1k-out", "e.g. 0.004")}
                    {input(per_second, "Credits per compute second", "catalog-per-second", "optional")}
                    {input(max_output, "Default max output tokens", "catalog-max-output", "held when a request sets none")}
                    {input(timeout, "Timeout (ms)", "catalog-timeout", "default 60000")}
                    {input(owner, "Seller namespace id", "catalog-owner", "empty: owned by the platform")}
                </div>
                <div class="inline-row" style="margin-top:12px">
                    <button type="submit" data-testid="catalog-submit">"Add API"</button>
                </div>
            </form>
        </section>
    }
}
