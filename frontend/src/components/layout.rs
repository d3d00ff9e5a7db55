//! The frame of every signed-in page: navigation, namespace switcher,
//! test/live toggle, uptime badge (D7) and log-out.

use leptos::prelude::*;
use leptos::task::spawn_local;
use leptos_router::components::{Outlet, Redirect, A};
use leptos_router::hooks::use_navigate;
use tally_common::Environment;

use crate::api;
use crate::components::banners::{provide_banners_changed, Banners};
use crate::components::{human_duration, provide_refresh_tick, use_refresh_tick, ErrorNotice};
use crate::state::use_app;

const AREAS: [(&str, &str, bool); 12] = [
    ("/", "Dashboard", true),
    ("/keys", "Keys", true),
    ("/playground", "Playground", true),
    ("/credits", "Credits", true),
    ("/monitoring", "Monitoring", true),
    ("/finance", "Finance", true),
    ("/catalog", "Catalog", true),
    ("/apis", "APIs", false),
    ("/subclouds", "Subclouds", false),
    ("/webhooks", "Webhooks", true),
    ("/settings", "Settings", true),
    ("/api/docs/", "API docs", true),
];

#[component]
pub fn Layout() -> impl IntoView {
    let app = use_app();
    view! {
        <Show when=move || app.account.with(Option::is_some) fallback=|| view! { <Redirect path="/login" /> }>
            <Shell />
        </Show>
    }
}

#[component]
fn Shell() -> impl IntoView {
    provide_refresh_tick();
    provide_banners_changed();
    let app = use_app();
    // The account's namespaces; reloaded when something changes them.
    let me = LocalResource::new(move || {
        app.reload.track();
        api::me()
    });
    Effect::new(move |_| {
        if let Some(Ok(me)) = me.get() {
            app.is_operator.set(me.is_operator);
            app.set_namespaces(me.namespaces);
        }
    });
    let load_error = move || me.get().and_then(Result::err);

    view! {
        <div class="shell">
            <nav class="sidebar">
                <div class="brand">"Tally" <span>"."</span></div>
                {AREAS
                    .iter()
                    .map(|(href, label, built)| {
                        if href.starts_with("/api/") {
                            view! { <a href=*href target="_blank" rel="noopener">{*label}</a> }.into_any()
                        } else {
                            view! {
                                <A href=*href exact=true>
                                    <span>{*label}</span>
                                    {(!built).then(|| view! { <span class="soon">"soon"</span> })}
                                </A>
                            }
                                .into_any()
                        }
                    })
                    .collect_view()}
            </nav>
            <div class="main">
                <header class="topbar">
                    <NamespaceSwitcher />
                    <EnvironmentToggle />
                    <div class="spacer"></div>
                    <UptimeBadge />
                    <span class="user" data-testid="account-email">
                        {move || app.account.get().map(|a| a.email).unwrap_or_default()}
                    </span>
                    <LogoutButton />
                </header>
                <main class="content">
                    {move || load_error().map(|e| view! { <ErrorNotice error=e /> })}
                    <Show
                        when=move || app.current().is_some()
                        fallback=|| view! { <p class="loading">"Loading…"</p> }
                    >
                        <Banners />
                        <Outlet />
                    </Show>
                </main>
            </div>
        </div>
    }
}

#[component]
fn NamespaceSwitcher() -> impl IntoView {
    let app = use_app();
    let creating = RwSignal::new(false);
    let name = RwSignal::new(String::new());
    let error = RwSignal::new(None::<api::ApiError>);
    let create = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let value = name.get_untracked();
        spawn_local(async move {
            match api::create_namespace(&value).await {
                Ok(ns) => {
                    app.select_namespace(&ns.namespace.id);
                    app.reload.update(|n| *n += 1);
                    creating.set(false);
                    name.set(String::new());
                    error.set(None);
                }
                Err(e) => error.set(Some(e)),
            }
        });
    };
    view! {
        <select
            data-testid="namespace-switcher"
            aria-label="Namespace"
            on:change=move |ev| app.select_namespace(&event_target_value(&ev))
            prop:value=move || app.namespace.get().unwrap_or_default()
        >
            {move || {
                app.namespaces
                    .get()
                    .into_iter()
                    .map(|n| {
                        let id = n.namespace.id.clone();
                        let selected = app.namespace.get().as_deref() == Some(id.as_str());
                        view! {
                            <option value=id selected=selected>
                                {format!("{} ({})", n.namespace.name, n.role)}
                            </option>
                        }
                    })
                    .collect_view()
            }}
        </select>
        <Show
            when=move || creating.get()
            fallback=move || view! {
                <button class="secondary" data-testid="new-namespace" on:click=move |_| creating.set(true)>
                    "+ New namespace"
                </button>
            }
        >
            <form class="inline" on:submit=create>
                <input
                    data-testid="new-namespace-name"
                    placeholder="Namespace name"
                    required
                    maxlength="100"
                    prop:value=move || name.get()
                    on:input=move |ev| name.set(event_target_value(&ev))
                />
                <button type="submit" data-testid="new-namespace-submit">"Create"</button>
                <button type="button" class="secondary" on:click=move |_| creating.set(false)>"Cancel"</button>
                {move || error.get().map(|e| view! { <span class="badge error">{e.message}</span> })}
            </form>
        </Show>
    }
}

#[component]
fn EnvironmentToggle() -> impl IntoView {
    let app = use_app();
    let button = move |env: Environment, label: &'static str| {
        view! {
            <button
                class=move || {
                    let active = if app.environment.get() == env { " active" } else { "" };
                    format!("{}{active}", env.as_str())
                }
                data-testid=format!("env-{}", env.as_str())
                aria-pressed=move || (app.environment.get() == env).to_string()
                on:click=move |_| app.select_environment(env)
            >
                {label}
            </button>
        }
    };
    view! {
        <div class="env-toggle" role="group" aria-label="Environment">
            {button(Environment::Test, "Test")}
            {button(Environment::Live, "Live")}
        </div>
    }
}

/// How long the server has run since its last restart (D7), refreshed every 30 s.
#[component]
fn UptimeBadge() -> impl IntoView {
    let tick = use_refresh_tick();
    let status = LocalResource::new(move || {
        tick.track();
        api::status()
    });
    view! {
        <span class="uptime" data-testid="uptime" title="Time since the server last started">
            {move || match status.get() {
                Some(Ok(s)) => format!("Up {}", human_duration(s.uptime_seconds)),
                Some(Err(_)) => "Server unreachable".to_owned(),
                None => "Up …".to_owned(),
            }}
        </span>
    }
}

#[component]
fn LogoutButton() -> impl IntoView {
    let app = use_app();
    let navigate = use_navigate();
    let logout = move |_| {
        let navigate = navigate.clone();
        spawn_local(async move {
            api::logout().await;
            app.account.set(None);
            navigate("/login", Default::default());
        });
    };
    view! { <button class="secondary" data-testid="logout" on:click=logout>"Log out"</button> }
}
