//! The first screen: the balance, the empty state of a namespace without
//! traffic (D6) and the event log (D4), refreshed in place every 30 seconds (D8).

use leptos::prelude::*;
use leptos_router::components::A;
use tally_common::{Environment, Severity};

use crate::api;
use crate::components::{short_time, use_refresh_tick, Loaded};
use crate::pages::credits::{balances_resource, CurrentBalance};
use crate::state::use_app;

#[component]
pub fn Dashboard() -> impl IntoView {
    let app = use_app();
    let name = move || app.current().map(|n| n.namespace.name).unwrap_or_default();
    let env_badge = move || match app.environment.get() {
        Environment::Test => view! { <span class="badge test">"Test"</span> },
        Environment::Live => view! { <span class="badge ok">"Live"</span> },
    };
    view! {
        <div class="page-head">
            <div>
                <h1 data-testid="namespace-name">{name}</h1>
                <span class="muted">"Dashboard · "</span>
                {env_badge}
            </div>
        </div>
        <BalanceSummary />
        <EmptyState />
        <EventLog />
    }
}

/// The empty state (D6): shown while the environment has no recorded call.
#[component]
fn EmptyState() -> impl IntoView {
    let app = use_app();
    let tick = use_refresh_tick();
    let traffic = LocalResource::new(move || {
        tick.track();
        let ns = app.namespace.get().unwrap_or_default();
        let env = app.environment.get();
        async move { api::usage(&ns, env, None, 1).await }
    });
    let quiet = move || {
        traffic
            .get()
            .is_some_and(|page| page.is_ok_and(|p| p.items.is_empty()))
    };
    view! {
        <Show when=quiet>
            <section class="panel empty" data-testid="empty-state">
                <h2>"This namespace has no traffic yet"</h2>
                <p class="muted">
                    "Calls made with this namespace's keys will show up here: balance, calls, latency and spend. "
                    "Start by finding an API to call, or register your own and earn credits when others call it."
                </p>
                <div class="actions">
                    <A href="/catalog"><span class="button">"Browse the catalog"</span></A>
                    <A href="/apis"><span class="button secondary">"Register an API"</span></A>
                </div>
            </section>
        </Show>
    }
}

/// The current environment's credits at a glance, linking to the Credits page.
#[component]
fn BalanceSummary() -> impl IntoView {
    let balances = balances_resource(RwSignal::new(0));
    view! {
        <section class="panel" data-testid="balance-summary">
            <div class="page-head" style="margin-bottom:12px">
                <h2 style="margin:0">"Credits"</h2>
                <A href="/credits">"Ledger and test credits →"</A>
            </div>
            <CurrentBalance balances />
        </section>
    }
}

#[component]
fn EventLog() -> impl IntoView {
    let app = use_app();
    let tick = use_refresh_tick();
    let events = LocalResource::new(move || {
        tick.track();
        app.reload.track();
        let ns = app.namespace.get().unwrap_or_default();
        let env = app.environment.get();
        async move { api::events(&ns, env, 50).await }
    });
    view! {
        <section class="panel">
            <h2>"Event log"</h2>
            // Transition keeps the previous rows while a refresh loads: no flicker.
            <Loaded resource=events loading="Loading events…" show=move |events| {
                match events {
                    page if page.items.is_empty() => {
                        view! { <p class="muted">"No events yet."</p> }.into_any()
                    }
                    page => view! {
                        <table data-testid="event-log">
                            <thead>
                                <tr><th>"Time"</th><th>"Type"</th><th>"Severity"</th><th>"Description"</th></tr>
                            </thead>
                            <tbody>
                                {page.items.into_iter().map(|e| {
                                    let class = match e.severity {
                                        Severity::Info => "badge info",
                                        Severity::Warning => "badge warning",
                                        Severity::Error => "badge error",
                                    };
                                    view! {
                                        <tr>
                                            <td class="muted">{short_time(&e.time)}</td>
                                            <td><code>{e.kind}</code></td>
                                            <td><span class=class>{e.severity.as_str()}</span></td>
                                            <td>{e.message}</td>
                                        </tr>
                                    }
                                }).collect_view()}
                            </tbody>
                        </table>
                    }.into_any(),
                }
            } />
        </section>
    }
}
