//! The Playground (G1, G4, G5): call a catalog API through the gateway with one
//! of the namespace's keys, see what it answered and cost, and the key's recent
//! calls. The server makes the call (the dashboard never holds a key's secret),
//! so the snippets show `$TALLY_KEY` in its place.

use leptos::prelude::*;
use leptos::task::spawn_local;
use leptos_router::components::A;
use tally_common::{
    ApiKey, CatalogApi, Environment, KeyStatus, PlaygroundRequest, PlaygroundResponse, Protocol,
};

use crate::api;
use crate::components::{
    credits_label, invalid_input, millis, pricing_summary, short_time, use_refresh_tick,
    ErrorNotice,
};
use crate::state::use_app;

/// What the Playground calls: a model of an OpenAI-compatible API, or an HTTP API.
#[derive(Debug, Clone, PartialEq)]
enum Target {
    Model { slug: String, model: String },
    Http { slug: String },
}

impl Target {
    fn label(&self) -> String {
        match self {
            Target::Model { slug, model } => format!("{model} ({slug})"),
            Target::Http { slug } => format!("{slug} (HTTP API)"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Chat,
    Embeddings,
}

impl Endpoint {
    fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Embeddings => "/v1/embeddings",
        }
    }
}

/// Every model and HTTP API the current environment can call.
fn targets_of(apis: &[CatalogApi], env: Environment) -> Vec<Target> {
    apis.iter()
        .filter(|api| api.enabled && (env == Environment::Test || api.live))
        .flat_map(|api| match api.protocol {
            Protocol::Openai => api
                .models
                .iter()
                .map(|m| Target::Model {
                    slug: api.slug.clone(),
                    model: m.clone(),
                })
                .collect::<Vec<_>>(),
            Protocol::Http => vec![Target::Http {
                slug: api.slug.clone(),
            }],
        })
        .collect()
}

fn default_body(target: Option<&Target>, endpoint: Endpoint) -> String {
    let body = match (target, endpoint) {
        (Some(Target::Model { model, .. }), Endpoint::Chat) => serde_json::json!({
            "model": model,
            "messages": [{"role": "user", "content": "Hello! In one sentence, what can you do?"}],
            "max_tokens": 64,
        }),
        (Some(Target::Model { model, .. }), Endpoint::Embeddings) => serde_json::json!({
            "model": model,
            "input": "Tally meters every call.",
        }),
        _ => serde_json::json!({}),
    };
    serde_json::to_string_pretty(&body).unwrap_or_default()
}

fn gateway_path(target: &Target, endpoint: Endpoint, http_path: &str) -> String {
    match target {
        Target::Model { .. } => endpoint.path().to_owned(),
        Target::Http { slug } => format!("/v1/apis/{slug}/{}", http_path.trim_start_matches('/')),
    }
}

/// The server's address as the browser reaches it; the gateway lives at `/v1` of it.
fn origin() -> String {
    web_sys::window()
        .and_then(|w| w.location().origin().ok())
        .unwrap_or_default()
}

fn copy_button(text: String) -> impl IntoView {
    view! {
        <button class="secondary small" on:click=move |_| {
            if let Some(window) = web_sys::window() {
                let _ = window.navigator().clipboard().write_text(&text);
            }
        }>"Copy"</button>
    }
}

/// `'` inside a single-quoted shell word.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

fn curl_snippet(path: &str, method: &str, body: Option<&serde_json::Value>) -> String {
    let mut s = format!("curl {}{path}", origin());
    if method != "POST" || body.is_none() {
        s.push_str(&format!(" \\\n  -X {method}"));
    }
    s.push_str(" \\\n  -H \"Authorization: Bearer $TALLY_KEY\"");
    if let Some(body) = body {
        s.push_str(" \\\n  -H \"Content-Type: application/json\"");
        s.push_str(&format!(" \\\n  -d {}", shell_quote(&body.to_string())));
    }
    s
}

fn python_snippet(endpoint: Endpoint, body: &serde_json::Value) -> String {
    let mut args = String::new();
    if let Some(fields) = body.as_object() {
        for (name, value) in fields {
            let value = serde_json::to_string_pretty(value)
                .unwrap_or_default()
                .replace("true", "True")
                .replace("false", "False")
                .replace("null", "None")
                .replace('\n', "\n    ");
            args.push_str(&format!("    {name}={value},\n"));
        }
    }
    let (call, print) = match endpoint {
        Endpoint::Chat => (
            "client.chat.completions.create",
            "print(response.choices[0].message.content)",
        ),
        Endpoint::Embeddings => (
            "client.embeddings.create",
            "print(len(response.data[0].embedding))",
        ),
    };
    format!(
        "import os\nfrom openai import OpenAI\n\nclient = OpenAI(\n    base_url=\"{}/v1\",\n    api_key=os.environ[\"TALLY_KEY\"],\n)\nresponse = {call}(\n{args})\n{print}",
        origin()
    )
}

#[component]
pub fn Playground() -> impl IntoView {
    let app = use_app();
    let tick = use_refresh_tick();

    let keys = LocalResource::new(move || {
        let ns = app.namespace.get().unwrap_or_default();
        let env = app.environment.get();
        async move { api::keys(&ns, env, Some(KeyStatus::Active)).await }
    });
    let catalog = LocalResource::new(api::catalog);

    let key_id = RwSignal::new(String::new());
    let target = RwSignal::new(None::<Target>);
    let endpoint = RwSignal::new(Endpoint::Chat);
    let http_path = RwSignal::new(String::new());
    let method = RwSignal::new("POST".to_owned());
    let body = RwSignal::new(String::new());
    let result = RwSignal::new(None::<Result<PlaygroundResponse, api::ApiError>>);
    let sending = RwSignal::new(false);
    // Bumped after each call so the recent calls show it.
    let sent = RwSignal::new(0u32);

    let key_list = move || {
        keys.get()
            .and_then(Result::ok)
            .map(|l| l.items)
            .unwrap_or_default()
    };
    let target_list = move || {
        let env = app.environment.get();
        catalog
            .get()
            .and_then(Result::ok)
            .map(|c| targets_of(&c.items, env))
            .unwrap_or_default()
    };

    // Keep the choices valid when the lists (or the environment) change.
    Effect::new(move |_| {
        let list = key_list();
        if !list.iter().any(|k| k.id == key_id.get_untracked()) {
            key_id.set(list.first().map(|k| k.id.clone()).unwrap_or_default());
        }
    });
    Effect::new(move |_| {
        let list = target_list();
        let current = target.get_untracked();
        if !current.as_ref().is_some_and(|t| list.contains(t)) {
            let first = list.first().cloned();
            body.set(default_body(first.as_ref(), endpoint.get_untracked()));
            target.set(first);
        }
    });

    let choose_endpoint = move |ev: leptos::ev::Event| {
        let e = match event_target_value(&ev).as_str() {
            "embeddings" => Endpoint::Embeddings,
            _ => Endpoint::Chat,
        };
        endpoint.set(e);
        body.set(default_body(target.get_untracked().as_ref(), e));
    };

    let send = move |_| {
        let Some(t) = target.get_untracked() else {
            result.set(Some(Err(invalid_input("Choose an API or model to call."))));
            return;
        };
        let key = key_id.get_untracked();
        if key.is_empty() {
            result.set(Some(Err(invalid_input("Choose a key to call with."))));
            return;
        }
        let text = body.get_untracked();
        let parsed = if text.trim().is_empty() {
            None
        } else {
            match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(v) => Some(v),
                Err(e) => {
                    result.set(Some(Err(invalid_input(&format!(
                        "The request body is not valid JSON: {e}"
                    )))));
                    return;
                }
            }
        };
        let method = match t {
            Target::Http { .. } => method.get_untracked(),
            Target::Model { .. } => "POST".to_owned(),
        };
        let req = PlaygroundRequest {
            key_id: key,
            path: gateway_path(&t, endpoint.get_untracked(), &http_path.get_untracked()),
            body: if method == "GET" { None } else { parsed },
            method: Some(method),
        };
        let ns = app.namespace.get_untracked().unwrap_or_default();
        sending.set(true);
        spawn_local(async move {
            let r = api::playground(&ns, &req).await;
            result.set(Some(r));
            sending.set(false);
            sent.update(|n| *n += 1);
        });
    };

    let is_http = move || matches!(target.get(), Some(Target::Http { .. }));
    let chosen_key = move || key_list().into_iter().find(|k| k.id == key_id.get());

    view! {
        <div class="page-head">
            <div>
                <h1>"Playground"</h1>
                <span class="muted">
                    "Call an API through the gateway with one of your keys. "
                    {move || match app.environment.get() {
                        Environment::Test => "Test keys reach the sandbox or a test upstream and spend test credits.",
                        Environment::Live => "Live keys reach the real upstreams and spend live credits.",
                    }}
                </span>
            </div>
        </div>
        <section class="panel">
            <Transition fallback=|| view! { <p class="loading">"Loading keys and catalog…"</p> }>
                {move || Suspend::new(async move {
                    let (keys, catalog) = (keys.await, catalog.await);
                    let env = app.environment.get_untracked();
                    match (keys, catalog) {
                        (Err(e), _) | (_, Err(e)) => view! { <ErrorNotice error=e /> }.into_any(),
                        (Ok(keys), _) if keys.items.is_empty() => view! {
                            <p class="muted" data-testid="playground-no-keys">
                                {format!("This namespace has no active {env} keys. ")}
                                <A href="/keys">"Create one on the Keys page"</A>
                                " and come back."
                            </p>
                        }.into_any(),
                        (Ok(keys), Ok(catalog)) => {
                            let targets = targets_of(&catalog.items, env);
                            view! { <CallForm keys=keys.items targets=targets
                                key_id target endpoint method body /> }.into_any()
                        }
                    }
                })}
            </Transition>
            // Outside the Suspend: changing them must not reload the lists.
            <div class="form-grid" style="margin-top:12px">
                <Show when=move || !is_http()>
                    <label>"Endpoint"
                        <select data-testid="playground-endpoint" on:change=choose_endpoint>
                            <option value="chat" selected=move || endpoint.get() == Endpoint::Chat>"Chat completions"</option>
                            <option value="embeddings" selected=move || endpoint.get() == Endpoint::Embeddings>"Embeddings"</option>
                        </select>
                    </label>
                </Show>
                <Show when=is_http>
                    <label>"Method"
                        <select data-testid="playground-method" on:change=move |ev| method.set(event_target_value(&ev))>
                            <option value="POST" selected=move || method.get() == "POST">"POST"</option>
                            <option value="GET" selected=move || method.get() == "GET">"GET"</option>
                        </select>
                    </label>
                    <label>"Path"
                        <span class="inline-row">
                            <code>{move || match target.get() {
                                Some(Target::Http { slug }) => format!("/v1/apis/{slug}/"),
                                _ => String::new(),
                            }}</code>
                            <input data-testid="playground-path" placeholder="path, e.g. forecast?city=Oslo"
                                prop:value=move || http_path.get() on:input=move |ev| http_path.set(event_target_value(&ev)) />
                        </span>
                    </label>
                </Show>
            </div>
            <label class="block">"Request body (JSON)"
                <textarea data-testid="playground-body" rows="9" spellcheck="false"
                    prop:value=move || body.get() on:input=move |ev| body.set(event_target_value(&ev))></textarea>
            </label>
            <div class="inline-row" >
                <button data-testid="playground-send" on:click=send disabled=move || sending.get() || key_id.with(String::is_empty)>
                    {move || if sending.get() { "Sending…" } else { "Send" }}
                </button>
                <span class="muted">
                    {move || target.get().map(|t| {
                        let price = catalog.get().and_then(Result::ok).and_then(|c| {
                            let slug = match &t { Target::Model { slug, .. } | Target::Http { slug } => slug.clone() };
                            c.items.into_iter().find(|a| a.slug == slug).map(|a| pricing_summary(&a.pricing))
                        });
                        price.map(|p| format!("Price: {p}")).unwrap_or_default()
                    })}
                </span>
            </div>
            {move || target.with(Option::is_none).then(|| view! {
                <p class="muted" data-testid="playground-no-apis">
                    "No API in the catalog can be called from this environment."
                </p>
            })}
        </section>
        {move || result.get().map(|r| match r {
            Err(e) => view! { <ErrorNotice error=e /> }.into_any(),
            Ok(res) => view! { <CallResult res=res /> }.into_any(),
        })}
        <Snippets target endpoint http_path method body key=Signal::derive(chosen_key) />
        <RecentCalls key_id sent tick />
    }
}

/// The key and target choices; rebuilt when the key list or catalog reloads.
#[component]
fn CallForm(
    keys: Vec<ApiKey>,
    targets: Vec<Target>,
    key_id: RwSignal<String>,
    target: RwSignal<Option<Target>>,
    endpoint: RwSignal<Endpoint>,
    method: RwSignal<String>,
    body: RwSignal<String>,
) -> impl IntoView {
    let options = targets.clone();
    let choose_target = move |ev: leptos::ev::Event| {
        let chosen = event_target_value(&ev)
            .parse::<usize>()
            .ok()
            .and_then(|i| targets.get(i).cloned());
        body.set(default_body(chosen.as_ref(), endpoint.get_untracked()));
        method.set("POST".into());
        target.set(chosen);
    };
    view! {
        <div class="form-grid">
            <label>"Key"
                <select data-testid="playground-key" on:change=move |ev| key_id.set(event_target_value(&ev))>
                    {keys.into_iter().map(|k| {
                        let id = k.id.clone();
                        view! {
                            <option value=k.id.clone() selected=move || key_id.get() == id>
                                {format!("{} ({}…{})", k.name, k.prefix, k.last4)}
                            </option>
                        }
                    }).collect_view()}
                </select>
            </label>
            <label>"API / model"
                <select data-testid="playground-target" on:change=choose_target>
                    {options.into_iter().enumerate().map(|(i, t)| {
                        let label = t.label();
                        view! { <option value=i.to_string() selected=move || target.get().as_ref() == Some(&t)>{label}</option> }
                    }).collect_view()}
                </select>
            </label>
        </div>
    }
}

#[component]
fn CallResult(res: PlaygroundResponse) -> impl IntoView {
    let ok = (200..300).contains(&res.status);
    let assistant = res.body["choices"][0]["message"]["content"]
        .as_str()
        .map(str::to_owned);
    let pretty = match &res.body {
        serde_json::Value::String(text) => text.clone(),
        other => serde_json::to_string_pretty(other).unwrap_or_default(),
    };
    view! {
        <section class="panel" data-testid="playground-result">
            <h2>"Response"</h2>
            <div class="kpis">
                <div class="kpi"><span class="muted">"Status"</span>
                    <strong data-testid="playground-status" class=if ok { "ok" } else { "err" }>{res.status}</strong></div>
                <div class="kpi"><span class="muted">"Latency"</span>
                    <strong data-testid="playground-latency">{millis(res.latency_us)}</strong></div>
                <div class="kpi"><span class="muted">"Tokens in / out"</span>
                    <strong data-testid="playground-tokens">{format!("{} / {}", res.tokens_in, res.tokens_out)}</strong></div>
                <div class="kpi"><span class="muted">"Cost"</span>
                    <strong data-testid="playground-cost">{credits_label(res.cost_micros)}</strong></div>
            </div>
            <p class="muted">"Call id " <code>{res.call_id.clone()}</code></p>
            {assistant.map(|text| view! {
                <div class="assistant" data-testid="playground-assistant">
                    <span class="muted">"Assistant"</span>
                    <p>{text}</p>
                </div>
            })}
            <pre class="code" data-testid="playground-response-body">{pretty}</pre>
        </section>
    }
}

#[component]
fn Snippets(
    target: RwSignal<Option<Target>>,
    endpoint: RwSignal<Endpoint>,
    http_path: RwSignal<String>,
    method: RwSignal<String>,
    body: RwSignal<String>,
    key: Signal<Option<ApiKey>>,
) -> impl IntoView {
    let snippets = move || {
        let t = target.get()?;
        let e = endpoint.get();
        let parsed = serde_json::from_str::<serde_json::Value>(&body.get()).ok();
        let path = gateway_path(&t, e, &http_path.get());
        let m = match t {
            Target::Http { .. } => method.get(),
            Target::Model { .. } => "POST".to_owned(),
        };
        let sent_body = if m == "GET" { None } else { parsed.as_ref() };
        let curl = curl_snippet(&path, &m, sent_body);
        let python = match (&t, &parsed) {
            (Target::Model { .. }, Some(b)) => Some(python_snippet(e, b)),
            _ => None,
        };
        Some((curl, python))
    };
    view! {
        <section class="panel" data-testid="playground-snippets">
            <h2>"Call it from your code"</h2>
            <p class="muted">
                "Set "<code>"TALLY_KEY"</code>" to the secret of "
                {move || key.get().map(|k| format!("\"{}\" ({}…{})", k.name, k.prefix, k.last4)).unwrap_or_else(|| "your key".into())}
                ". The secret was shown once, when the key was created or rotated."
            </p>
            {move || snippets().map(|(curl, python)| view! {
                <div class="snippet-head"><strong>"curl"</strong>{copy_button(curl.clone())}</div>
                <pre class="code" data-testid="snippet-curl">{curl}</pre>
                {python.map(|py| view! {
                    <div class="snippet-head"><strong>"Python (OpenAI SDK)"</strong>{copy_button(py.clone())}</div>
                    <pre class="code" data-testid="snippet-python">{py}</pre>
                })}
            })}
        </section>
    }
}

#[component]
fn RecentCalls(
    key_id: RwSignal<String>,
    sent: RwSignal<u32>,
    tick: RwSignal<u32>,
) -> impl IntoView {
    let app = use_app();
    let calls = LocalResource::new(move || {
        tick.track();
        sent.track();
        let ns = app.namespace.get().unwrap_or_default();
        let env = app.environment.get();
        let key = key_id.get();
        async move {
            if key.is_empty() {
                None
            } else {
                Some(api::usage(&ns, env, Some(&key), 20).await)
            }
        }
    });
    view! {
        <section class="panel">
            <h2>"Recent calls with this key"</h2>
            <Transition fallback=|| view! { <p class="loading">"Loading calls…"</p> }>
                {move || Suspend::new(async move {
                    match calls.await {
                        None => view! { <p class="muted">"Choose a key to see its calls."</p> }.into_any(),
                        Some(Err(e)) => view! { <ErrorNotice error=e /> }.into_any(),
                        Some(Ok(page)) if page.items.is_empty() => view! {
                            <p class="muted" data-testid="no-recent-calls">"No calls with this key yet."</p>
                        }.into_any(),
                        Some(Ok(page)) => view! {
                            <table data-testid="recent-calls">
                                <thead><tr>
                                    <th>"Time"</th><th>"Endpoint"</th><th>"Model"</th><th>"Status"</th>
                                    <th>"Latency"</th><th>"Tokens in/out"</th><th>"Cost"</th><th>"Error"</th>
                                </tr></thead>
                                <tbody>
                                    {page.items.into_iter().map(|c| {
                                        let class = if (200..300).contains(&c.status) { "badge ok" } else { "badge error" };
                                        view! {
                                            <tr data-testid="recent-call">
                                                <td class="muted">{short_time(&c.time)}</td>
                                                <td><code>{c.endpoint}</code></td>
                                                <td>{c.model.unwrap_or_else(|| c.api.clone())}</td>
                                                <td><span class=class>{c.status}</span></td>
                                                <td>{millis(c.latency_us)}</td>
                                                <td>{format!("{} / {}", c.tokens_in, c.tokens_out)}</td>
                                                <td>{credits_label(c.cost_micros)}</td>
                                                <td class="muted">{c.error.unwrap_or_default()}</td>
                                            </tr>
                                        }
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
