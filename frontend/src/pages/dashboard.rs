//! The first screen: KPI cards by role (D1), the 48-hour call-rate chart (D2),
//! the all-time API table (D3), the empty state of a namespace
//! without traffic (D6) and the event log (D4), refreshed in place every 30
//! seconds (D8).
//!
//! Policy: one summary request (`/dashboard`, answered from rollups) feeds the
//! KPIs, the chart and the table, so they always agree with each other. Every
//! panel reloads on the shell's shared tick and keeps showing the previous
//! data until the new data has arrived: no loading line, no flicker.

use leptos::prelude::*;
use leptos_router::components::A;
use tally_common::{
    ApiUsageRow, DashboardRole, DashboardSummary, Environment, HourlyBar, Severity,
};

use crate::api;
use crate::components::charts::{count_label, Bar, ChartSeries, StackedBars};
use crate::components::{credits_label, millis, short_time, use_refresh_tick, Loaded};
use crate::state::use_app;

type Summary = LocalResource<Result<DashboardSummary, api::ApiError>>;

#[component]
pub fn Dashboard() -> impl IntoView {
    let app = use_app();
    let name = move || app.current().map(|n| n.namespace.name).unwrap_or_default();
    let env_badge = move || match app.environment.get() {
        Environment::Test => view! { <span class="badge test">"Test"</span> },
        Environment::Live => view! { <span class="badge ok">"Live"</span> },
    };
    let tick = use_refresh_tick();
    let summary: Summary = LocalResource::new(move || {
        tick.track();
        app.reload.track();
        let ns = app.namespace.get().unwrap_or_default();
        let env = app.environment.get();
        async move { api::dashboard(&ns, env).await }
    });
    // The banners (D5) are the shell's, above every page.
    view! {
        <div class="page-head">
            <div>
                <h1 data-testid="namespace-name">{name}</h1>
                <span class="muted">"Dashboard · "</span>
                {env_badge}
            </div>
        </div>
        <EmptyState />
        <Kpis summary />
        <CallRate summary />
        <ApiTable summary />
        <EventLog />
    }
}

/// A ratio 0..=1 as a percentage with one decimal: `99.5%`.
fn percent(ratio: f64) -> String {
    let tenths = (ratio.clamp(0.0, 1.0) * 1000.0).round() as i64;
    format!("{}.{}%", tenths / 10, tenths % 10)
}

#[component]
fn Kpi(
    label: &'static str,
    value: String,
    #[prop(optional)] detail: Option<String>,
    #[prop(optional)] tone: &'static str,
    testid: &'static str,
) -> impl IntoView {
    view! {
        <div class="kpi" data-testid=testid>
            <span class="muted">{label}</span>
            <strong class=tone data-testid=format!("{testid}-value")>{value}</strong>
            {detail.map(|d| view! { <span class="muted">{d}</span> })}
        </div>
    }
}

/// The KPI cards (D1): the consumer's set always, the seller's set too when
/// the namespace owns catalog APIs.
#[component]
fn Kpis(summary: Summary) -> impl IntoView {
    view! {
        <section class="panel" data-testid="kpis">
            <Loaded resource=summary loading="Loading figures…" show=move |s: DashboardSummary| {
                let c = s.consumer;
                let rate_class = if c.success_rate_24h < 0.95 { "err" } else { "ok" };
                let seller = s.seller.map(|k| {
                    view! {
                        <h2>"As a seller"</h2>
                        <div class="kpis" data-testid="seller-kpis">
                            <Kpi label="Calls served (24h)" value=count_label(k.calls_served_24h as f64) testid="kpi-served-24h" />
                            <Kpi label="Success rate (24h)" value=percent(k.success_rate_24h) testid="kpi-seller-success" />
                            <Kpi label="Revenue (24h)" value=credits_label(k.revenue_24h_micros) testid="kpi-revenue-24h" />
                            <Kpi label="Calls served (7d)" value=count_label(k.calls_served_7d as f64) testid="kpi-served-7d" />
                            <Kpi label="Revenue (7d)" value=credits_label(k.revenue_7d_micros) testid="kpi-revenue-7d" />
                        </div>
                    }
                });
                let seller_first = s.role == DashboardRole::Seller;
                let consumer = view! {
                    {seller_first.then(|| view! { <h2>"As a consumer"</h2> })}
                    <div class="kpis" data-testid="consumer-kpis">
                        <Kpi label="Balance" value=credits_label(c.balance_micros) testid="kpi-balance" />
                        <Kpi
                            label="Calls (24h)"
                            value=count_label(c.calls_24h as f64)
                            detail=format!("{} success", percent(c.success_rate_24h))
                            tone=rate_class
                            testid="kpi-calls-24h"
                        />
                        <Kpi label="Average latency (24h)" value=millis(c.avg_latency_us_24h) testid="kpi-latency-24h" />
                        <Kpi label="Spent (24h)" value=credits_label(c.spent_24h_micros) testid="kpi-spent-24h" />
                        <Kpi label="Calls, all time" value=count_label(c.calls_total as f64) testid="kpi-calls-total" />
                        <Kpi label="Spent, all time" value=credits_label(c.spent_total_micros) testid="kpi-spent-total" />
                    </div>
                };
                if seller_first {
                    view! { {seller} {consumer} }.into_any()
                } else {
                    view! { {consumer} {seller} }.into_any()
                }
            } />
            <p class="muted"><A href="/credits">"Credits: held by calls in flight, ledger, test credits →"</A></p>
        </section>
    }
}

/// `2026-11-29T14:00:00Z` as `14:00`.
fn hour_of(rfc3339: &str) -> String {
    rfc3339.get(11..16).unwrap_or(rfc3339).to_owned()
}

fn hourly_bars(hours: &[HourlyBar]) -> Vec<Bar> {
    hours
        .iter()
        .enumerate()
        .map(|(i, h)| {
            // A label every six hours keeps the axis readable at 48 bars.
            let label = if (hours.len() - 1 - i).is_multiple_of(6) {
                hour_of(&h.start)
            } else {
                String::new()
            };
            Bar {
                label,
                tooltip: format!(
                    "{}: {} successful, {} failed",
                    short_time(&h.start),
                    count_label(h.successes as f64),
                    count_label(h.errors as f64)
                ),
                values: vec![h.successes as f64, h.errors as f64],
            }
        })
        .collect()
}

/// The call-rate chart (D2): hourly bars over the last 48 hours, successes
/// and errors stacked. A seller sees the calls its APIs served.
#[component]
fn CallRate(summary: Summary) -> impl IntoView {
    view! {
        <section class="panel" data-testid="call-rate">
            <Loaded resource=summary loading="Loading the call rate…" show=move |s: DashboardSummary| {
                let (title, hours) = match s.role {
                    DashboardRole::Seller => ("Calls served per hour, last 48 hours", s.served_hourly),
                    DashboardRole::Consumer => ("Calls per hour, last 48 hours", s.hourly),
                };
                let series = vec![
                    ChartSeries { name: "Successful", class: "series-ok" },
                    ChartSeries { name: "Errors", class: "series-err" },
                ];
                view! {
                    <h2>{title} <span class="muted">" (UTC)"</span></h2>
                    <StackedBars series bars=hourly_bars(&hours) format=count_label label=title width=1100.0 />
                }.into_any()
            } />
        </section>
    }
}

/// The API table (D3), all time: cost and average latency for a consumer,
/// revenue and success rate for a seller.
#[component]
fn ApiTable(summary: Summary) -> impl IntoView {
    view! {
        <section class="panel" data-testid="api-breakdown">
            <Loaded resource=summary loading="Loading APIs…" show=move |s: DashboardSummary| {
                let seller = s.role == DashboardRole::Seller;
                let rows: Vec<ApiUsageRow> = if seller { s.served_apis } else { s.apis };
                let title = if seller { "APIs served, all time" } else { "APIs called, all time" };
                if rows.is_empty() {
                    return view! { <h2>{title}</h2> <p class="muted">"No calls yet."</p> }.into_any();
                }
                view! {
                    <h2>{title}</h2>
                    <div class="table-wrap">
                        <table>
                            <thead>
                                <tr>
                                    <th>"API"</th>
                                    <th class="num">"Calls"</th>
                                    <th class="num">"Successful"</th>
                                    <th class="num">"Errors"</th>
                                    <th class="num">{if seller { "Revenue" } else { "Cost" }}</th>
                                    <th class="num">{if seller { "Success rate" } else { "Avg latency" }}</th>
                                </tr>
                            </thead>
                            <tbody>
                                {rows.into_iter().map(|r| view! {
                                    <tr data-testid="api-row" data-api=r.api.clone()>
                                        <td><code>{r.api.clone()}</code></td>
                                        <td class="num" data-testid="api-calls">{count_label(r.calls as f64)}</td>
                                        <td class="num">{count_label(r.successes as f64)}</td>
                                        <td class="num" class:neg={r.errors > 0}>{count_label(r.errors as f64)}</td>
                                        <td class="num">{credits_label(if seller { r.revenue_micros } else { r.cost_micros })}</td>
                                        <td class="num">{if seller { percent(r.success_rate) } else { millis(r.avg_latency_us) }}</td>
                                    </tr>
                                }).collect_view()}
                            </tbody>
                        </table>
                    </div>
                }.into_any()
            } />
        </section>
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
                                    let row = format!("sev-{}", e.severity.as_str());
                                    view! {
                                        <tr class=row>
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
