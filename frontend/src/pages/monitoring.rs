//! Monitoring (M1–M5): volume, error rate, latency percentiles and cost over a
//! chosen range, filters, breakdowns, the request log with a live tail, and
//! usage exports.
//!
//! Policy: the filters are one `MonitoringQuery` signal (the environment comes
//! from the app state), so the charts, the breakdown, the request log and the
//! export links always describe the same calls. Charts and breakdowns come from
//! the server's rollups and reload on the shell's 30 s tick, keeping the
//! previous data on screen while they load. The live tail polls the request
//! log's `after` cursor every few seconds and prepends what is new; it never
//! reloads the rows already shown.

use leptos::prelude::*;
use leptos::task::spawn_local;
use tally_common::format::{credit_axis, error_rate, ms_axis, pct_axis};
use tally_common::{
    Breakdown, BreakdownBy, Bucket, Environment, ExportFormat, MonitoringQuery, Series,
    SeriesPoint, StatusClass, TimeRange, UsageEvent,
};

use crate::api::{self, LogCursor};
use crate::components::charts::{count_label, Bar, ChartSeries, LineChart, Point, StackedBars};
use crate::components::{credits_label, millis, short_time, use_refresh_tick, ErrorNotice, Loaded};
use crate::state::use_app;

/// Rows per page of the request log.
const PAGE: u32 = 50;
/// How often the live tail asks for new calls.
const TAIL_EVERY: std::time::Duration = std::time::Duration::from_secs(3);

#[component]
pub fn Monitoring() -> impl IntoView {
    let app = use_app();
    let filters = RwSignal::new(MonitoringQuery {
        range: Some(TimeRange::Hours24),
        ..Default::default()
    });
    // The filters with the app's environment: what every request sends.
    let query = Memo::new(move |_| MonitoringQuery {
        environment: Some(app.environment.get()),
        ..filters.get()
    });
    let tick = use_refresh_tick();
    let series = LocalResource::new(move || {
        tick.track();
        let ns = app.namespace.get().unwrap_or_default();
        let q = query.get();
        async move { api::monitoring_series(&ns, &q).await }
    });
    view! {
        <div class="page-head">
            <div>
                <h1>"Monitoring"</h1>
                <span class="muted">
                    {move || format!("{} calls, from the server's rollups", app.environment.get())}
                </span>
            </div>
            <Exports query />
        </div>
        <Filters filters />
        <Totals series />
        <Charts series />
        <Breakdowns query />
        <RequestLog query />
    }
}

/// The range picker and the filters (M2).
#[component]
fn Filters(filters: RwSignal<MonitoringQuery>) -> impl IntoView {
    let app = use_app();
    // Choices for the selects: the catalog's APIs and models, the
    // environment's keys, and the endpoints seen in the last 90 days.
    let catalog = LocalResource::new(api::catalog);
    let keys = LocalResource::new(move || {
        let ns = app.namespace.get().unwrap_or_default();
        let env = app.environment.get();
        async move { api::keys(&ns, env, None).await }
    });
    let endpoints = LocalResource::new(move || {
        let ns = app.namespace.get().unwrap_or_default();
        let q = MonitoringQuery {
            environment: Some(app.environment.get()),
            range: Some(TimeRange::Days90),
            ..Default::default()
        };
        async move { api::monitoring_breakdown(&ns, &q, BreakdownBy::Endpoint).await }
    });
    let set = move |f: fn(&mut MonitoringQuery, Option<String>)| {
        move |ev: leptos::ev::Event| {
            let v = event_target_value(&ev);
            filters.update(|q| f(q, (!v.is_empty()).then_some(v)));
        }
    };
    let apis = move || {
        catalog
            .get()
            .and_then(Result::ok)
            .map(|c| c.items)
            .unwrap_or_default()
    };
    view! {
        <div class="filters" data-testid="filters">
            <div class="range-picker" role="group" aria-label="Range">
                {TimeRange::ALL
                    .into_iter()
                    .map(|r| {
                        view! {
                            <button
                                class:active=move || filters.with(|q| q.range == Some(r))
                                data-testid=format!("range-{}", r.as_str())
                                on:click=move |_| filters.update(|q| {
                                    q.range = Some(r);
                                    q.bucket = None;
                                })
                            >
                                {r.as_str()}
                            </button>
                        }
                    })
                    .collect_view()}
            </div>
            <label>
                "Endpoint"
                <select data-testid="filter-endpoint" on:change=set(|q, v| q.endpoint = v)>
                    <option value="">"All"</option>
                    {move || {
                        endpoints
                            .get()
                            .and_then(Result::ok)
                            .map(|b| b.rows)
                            .unwrap_or_default()
                            .into_iter()
                            .map(|r| view! { <option value=r.key.clone()>{r.key.clone()}</option> })
                            .collect_view()
                    }}
                </select>
            </label>
            <label>
                "API"
                <select data-testid="filter-api" on:change=set(|q, v| q.api = v)>
                    <option value="">"All"</option>
                    {move || apis().into_iter().map(|a| view! { <option value=a.slug.clone()>{a.slug.clone()}</option> }).collect_view()}
                </select>
            </label>
            <label>
                "Model"
                <select data-testid="filter-model" on:change=set(|q, v| q.model = v)>
                    <option value="">"All"</option>
                    {move || {
                        apis()
                            .into_iter()
                            .flat_map(|a| a.models)
                            .map(|m| view! { <option value=m.clone()>{m.clone()}</option> })
                            .collect_view()
                    }}
                </select>
            </label>
            <label>
                "Request type"
                <select data-testid="filter-type" on:change=set(|q, v| q.request_type = v)>
                    <option value="">"All"</option>
                    <option value="sync">"sync"</option>
                    <option value="stream">"stream"</option>
                </select>
            </label>
            <label>
                "Key"
                <select data-testid="filter-key" on:change=set(|q, v| q.key_id = v)>
                    <option value="">"All"</option>
                    {move || {
                        keys.get()
                            .and_then(Result::ok)
                            .map(|k| k.items)
                            .unwrap_or_default()
                            .into_iter()
                            .map(|k| view! { <option value=k.id.clone()>{format!("{} (…{})", k.name, k.last4)}</option> })
                            .collect_view()
                    }}
                </select>
            </label>
            <label>
                "Status"
                <select
                    data-testid="filter-status"
                    on:change=move |ev| {
                        let v = event_target_value(&ev);
                        filters.update(|q| q.status_class = StatusClass::parse(&v));
                    }
                >
                    <option value="">"All"</option>
                    <option value="2xx">"2xx"</option>
                    <option value="4xx">"4xx"</option>
                    <option value="5xx">"5xx"</option>
                </select>
            </label>
        </div>
    }
}

/// The window's totals above the charts.
#[component]
fn Totals(series: LocalResource<Result<Series, api::ApiError>>) -> impl IntoView {
    view! {
        <Loaded resource=series loading="Loading…" show=move |s: Series| {
            let t = s.totals;
            view! {
                <div class="kpis" data-testid="monitoring-totals">
                    <div class="kpi"><span class="muted">"Calls"</span><strong data-testid="total-calls">{count_label(t.calls as f64)}</strong></div>
                    <div class="kpi"><span class="muted">"Error rate"</span><strong class:err={t.errors > 0}>{error_rate(t.errors, t.calls)}</strong></div>
                    <div class="kpi"><span class="muted">"Latency p50 / p95 / p99"</span><strong>{format!("{} / {} / {}", millis(t.p50_us), millis(t.p95_us), millis(t.p99_us))}</strong></div>
                    <div class="kpi"><span class="muted">"Cost"</span><strong>{credits_label(t.cost_micros)}</strong></div>
                    <div class="kpi"><span class="muted">"Tokens in / out"</span><strong>{format!("{} / {}", count_label(t.tokens_in as f64), count_label(t.tokens_out as f64))}</strong></div>
                </div>
            }.into_any()
        } />
    }
}

/// The x label of a point: a label at about eight evenly spaced points.
fn x_label(s: &Series, i: usize, p: &SeriesPoint) -> String {
    let every = s.points.len().div_ceil(8).max(1);
    if !(s.points.len() - 1 - i).is_multiple_of(every) {
        return String::new();
    }
    let t = &p.start;
    match s.bucket {
        Bucket::Day => t.get(5..10).unwrap_or(t).to_owned(),
        Bucket::Hour if s.points.len() > 24 => {
            format!(
                "{} {}",
                t.get(5..10).unwrap_or(t),
                t.get(11..16).unwrap_or("")
            )
        }
        _ => t.get(11..16).unwrap_or(t).to_owned(),
    }
}

/// Volume, error rate, latency and cost (M1).
#[component]
fn Charts(series: LocalResource<Result<Series, api::ApiError>>) -> impl IntoView {
    view! {
        <Loaded resource=series loading="Loading charts…" show=move |s: Series| {
            let labels: Vec<(String, String)> = s
                .points
                .iter()
                .enumerate()
                .map(|(i, p)| (x_label(&s, i, p), short_time(&p.start)))
                .collect();
            let volume: Vec<Bar> = s
                .points
                .iter()
                .zip(&labels)
                .map(|(p, (label, when))| Bar {
                    label: label.clone(),
                    tooltip: format!("{when}: {} calls, {} errors", count_label(p.calls as f64), count_label(p.errors as f64)),
                    values: vec![(p.calls - p.errors) as f64, p.errors as f64],
                })
                .collect();
            let points = |f: &dyn Fn(&SeriesPoint) -> Vec<Option<f64>>| -> Vec<Point> {
                s.points
                    .iter()
                    .zip(&labels)
                    .map(|(p, (label, when))| Point { label: label.clone(), tooltip: when.clone(), values: f(p) })
                    .collect()
            };
            let errors = points(&|p| vec![(p.calls > 0).then(|| p.errors as f64 * 100.0 / p.calls as f64)]);
            let latency = points(&|p| {
                [p.p50_us, p.p95_us, p.p99_us]
                    .into_iter()
                    .map(|us| (p.calls > 0).then_some(us as f64 / 1000.0))
                    .collect()
            });
            let cost = points(&|p| vec![Some(p.cost_micros as f64 / 1_000_000.0)]);
            view! {
                <div class="chart-grid" data-testid="monitoring-charts">
                    <section class="panel" data-testid="chart-volume">
                        <h2>"Requests"</h2>
                        <StackedBars
                            series=vec![ChartSeries { name: "Successful", class: "series-ok" }, ChartSeries { name: "Errors", class: "series-err" }]
                            bars=volume
                            format=count_label
                            label="Requests per interval"
                            width=560.0
                        />
                    </section>
                    <section class="panel" data-testid="chart-errors">
                        <h2>"Error rate"</h2>
                        <LineChart series=vec![ChartSeries { name: "Error rate", class: "series-err" }] points=errors format=pct_axis label="Error rate" width=560.0 />
                    </section>
                    <section class="panel" data-testid="chart-latency">
                        <h2>"Latency"</h2>
                        <LineChart
                            series=vec![
                                ChartSeries { name: "p50", class: "series-a" },
                                ChartSeries { name: "p95", class: "series-b" },
                                ChartSeries { name: "p99", class: "series-c" },
                            ]
                            points=latency
                            format=ms_axis
                            label="Latency percentiles"
                            width=560.0
                        />
                    </section>
                    <section class="panel" data-testid="chart-cost">
                        <h2>"Cost (credits)"</h2>
                        <LineChart series=vec![ChartSeries { name: "Cost", class: "series-d" }] points=cost format=credit_axis label="Cost" width=560.0 />
                    </section>
                </div>
            }.into_any()
        } />
    }
}

const BREAKDOWNS: [(BreakdownBy, &str); 7] = [
    (BreakdownBy::Api, "API"),
    (BreakdownBy::Model, "Model"),
    (BreakdownBy::Key, "Key"),
    (BreakdownBy::ClientId, "Client id"),
    (BreakdownBy::Endpoint, "Endpoint"),
    (BreakdownBy::Subcloud, "Subcloud"),
    (BreakdownBy::Namespace, "Namespace"),
];

/// The window's calls grouped by one dimension at a time (M3).
#[component]
fn Breakdowns(query: Memo<MonitoringQuery>) -> impl IntoView {
    let app = use_app();
    let by = RwSignal::new(BreakdownBy::Api);
    let tick = use_refresh_tick();
    let breakdown = LocalResource::new(move || {
        tick.track();
        let ns = app.namespace.get().unwrap_or_default();
        let q = query.get();
        let by = by.get();
        async move { api::monitoring_breakdown(&ns, &q, by).await }
    });
    view! {
        <section class="panel" data-testid="breakdown">
            <h2>"Breakdown"</h2>
            <div class="tabs" role="tablist">
                {BREAKDOWNS
                    .into_iter()
                    .map(|(b, label)| view! {
                        <button
                            role="tab"
                            class:active=move || by.get() == b
                            data-testid=format!("breakdown-{}", b.as_str())
                            on:click=move |_| by.set(b)
                        >
                            {label}
                        </button>
                    })
                    .collect_view()}
            </div>
            <Loaded resource=breakdown loading="Loading breakdown…" show=move |b: Breakdown| breakdown_table(b) />
        </section>
    }
}

fn breakdown_table(b: Breakdown) -> AnyView {
    if b.rows.is_empty() {
        return view! { <p class="muted">"No calls in this range."</p> }.into_any();
    }
    let heading = BREAKDOWNS
        .iter()
        .find(|(by, _)| *by == b.by)
        .map_or("Value", |(_, label)| label);
    view! {
        <div class="table-wrap">
            <table data-testid="breakdown-table">
                <thead>
                    <tr>
                        <th>{heading}</th>
                        <th class="num">"Calls"</th>
                        <th class="num">"Errors"</th>
                        <th class="num">"Error rate"</th>
                        <th class="num">"Cost"</th>
                        <th class="num">"Avg"</th>
                        <th class="num">"p95"</th>
                        <th class="num">"p99"</th>
                    </tr>
                </thead>
                <tbody>
                    {b.rows.into_iter().map(|r| {
                        let name = match (&r.label, r.key.is_empty()) {
                            (Some(label), _) => format!("{label} ({})", r.key),
                            (None, true) => "(none)".to_owned(),
                            (None, false) => r.key.clone(),
                        };
                        view! {
                            <tr data-testid="breakdown-row">
                                <td class="by">{name}</td>
                                <td class="num">{count_label(r.calls as f64)}</td>
                                <td class="num" class:neg={r.errors > 0}>{count_label(r.errors as f64)}</td>
                                <td class="num">{error_rate(r.errors, r.calls)}</td>
                                <td class="num">{credits_label(r.cost_micros)}</td>
                                <td class="num">{millis(r.avg_latency_us)}</td>
                                <td class="num">{millis(r.p95_us)}</td>
                                <td class="num">{millis(r.p99_us)}</td>
                            </tr>
                        }
                    }).collect_view()}
                </tbody>
            </table>
        </div>
    }
    .into_any()
}

/// Export buttons (M5): the filtered window as CSV or NDJSON, fetched with
/// the session's token and saved as a file.
#[component]
fn Exports(query: Memo<MonitoringQuery>) -> impl IntoView {
    let app = use_app();
    let error = RwSignal::new(None::<api::ApiError>);
    let export = move |format: ExportFormat| {
        let ns = app.namespace.get_untracked().unwrap_or_default();
        let q = query.get_untracked();
        let path = api::monitoring_export_path(&ns, &q, format);
        let env = q.environment.unwrap_or(Environment::Test);
        let range = q.range.map_or("custom", TimeRange::as_str);
        let filename = format!("tally-usage-{env}-{range}.{}", format.as_str());
        spawn_local(async move {
            error.set(api::download(&path, &filename).await.err());
        });
    };
    view! {
        <div class="inline-row" data-testid="exports">
            <span class="muted">"Export"</span>
            <button class="secondary" data-testid="export-csv" on:click=move |_| export(ExportFormat::Csv)>"CSV"</button>
            <button class="secondary" data-testid="export-ndjson" on:click=move |_| export(ExportFormat::Ndjson)>"NDJSON"</button>
            {move || error.get().map(|e| view! { <ErrorNotice error=e /> })}
        </div>
    }
}

/// The request log (M4): search, pages back through older calls, and a live
/// tail that polls for newer ones.
#[component]
fn RequestLog(query: Memo<MonitoringQuery>) -> impl IntoView {
    let app = use_app();
    let search = RwSignal::new(String::new());
    let typed = RwSignal::new(String::new());
    // The pages walked back so far: the cursor of each (Newest first).
    let cursors = RwSignal::new(vec![LogCursor::Newest]);
    let rows = RwSignal::new(Vec::<UsageEvent>::new());
    let next_before = RwSignal::new(None::<String>);
    let tail_after = RwSignal::new(None::<String>);
    let error = RwSignal::new(None::<api::ApiError>);
    let loaded = RwSignal::new(false);
    let live = RwSignal::new(false);
    // New filters or search text start again at the newest page.
    Effect::new(move |_| {
        query.track();
        search.track();
        app.namespace.track();
        cursors.set(vec![LogCursor::Newest]);
    });
    let page = LocalResource::new(move || {
        let ns = app.namespace.get().unwrap_or_default();
        let q = query.get();
        let text = search.get();
        let cursor = cursors.with(|c| c.last().cloned().unwrap_or(LogCursor::Newest));
        async move { api::monitoring_requests(&ns, &q, &text, &cursor, PAGE).await }
    });
    Effect::new(move |_| match page.get() {
        Some(Ok(p)) => {
            rows.set(p.items);
            next_before.set(p.next_before);
            tail_after.set(p.tail_after);
            error.set(None);
            loaded.set(true);
        }
        Some(Err(e)) => error.set(Some(e)),
        None => {}
    });
    // The live tail: only on the newest page; new calls go on top.
    let poll = move || {
        if !live.get_untracked() || cursors.with_untracked(|c| c.len() > 1) {
            return;
        }
        let Some(after) = tail_after.get_untracked() else {
            return;
        };
        let ns = app.namespace.get_untracked().unwrap_or_default();
        let q = query.get_untracked();
        let text = search.get_untracked();
        spawn_local(async move {
            let cursor = LogCursor::After(after.clone());
            match api::monitoring_requests(&ns, &q, &text, &cursor, PAGE).await {
                Ok(p) => {
                    // Ignore an answer for a cursor that is no longer current.
                    if tail_after.get_untracked().as_deref() != Some(after.as_str()) {
                        return;
                    }
                    if !p.items.is_empty() {
                        rows.update(|r| {
                            let mut fresh = p.items;
                            fresh.append(r);
                            fresh.truncate(PAGE as usize * 4);
                            *r = fresh;
                        });
                    }
                    if p.tail_after.is_some() {
                        tail_after.set(p.tail_after);
                    }
                }
                Err(e) => error.set(Some(e)),
            }
        });
    };
    if let Ok(handle) = set_interval_with_handle(poll, TAIL_EVERY) {
        on_cleanup(move || handle.clear());
    }
    let submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        search.set(typed.get_untracked());
    };
    view! {
        <section class="panel" data-testid="request-log">
            <div class="page-head" style="margin-bottom:12px">
                <h2 style="margin:0">"Requests"</h2>
                <div class="inline-row">
                    <form class="inline" on:submit=submit>
                        <input
                            type="search"
                            data-testid="log-search"
                            placeholder="Search call id, key, API, model, endpoint, client id, error"
                            size="44"
                            prop:value=move || typed.get()
                            on:input=move |ev| typed.set(event_target_value(&ev))
                        />
                        <button type="submit" class="secondary" data-testid="log-search-submit">"Search"</button>
                    </form>
                    <label class="inline-row" title="Poll for new calls every few seconds">
                        <input
                            type="checkbox"
                            data-testid="live-tail"
                            prop:checked=move || live.get()
                            on:change=move |ev| {
                                let on = event_target_checked(&ev);
                                live.set(on);
                                if on {
                                    cursors.set(vec![LogCursor::Newest]);
                                }
                            }
                        />
                        {move || live.get().then(|| view! { <span class="live-dot"></span> })}
                        "Live tail"
                    </label>
                </div>
            </div>
            {move || error.get().map(|e| view! { <ErrorNotice error=e /> })}
            {move || {
                if !loaded.get() {
                    return view! { <p class="loading">"Loading requests…"</p> }.into_any();
                }
                let list = rows.get();
                if list.is_empty() {
                    return view! { <p class="muted" data-testid="log-empty">"No calls match."</p> }.into_any();
                }
                view! {
                    <div class="table-wrap">
                        <table data-testid="log-table">
                            <thead>
                                <tr>
                                    <th>"Time"</th>
                                    <th>"Status"</th>
                                    <th>"Endpoint"</th>
                                    <th>"API / model"</th>
                                    <th>"Type"</th>
                                    <th>"Client"</th>
                                    <th class="num">"Latency"</th>
                                    <th class="num">"Tokens"</th>
                                    <th class="num">"Cost"</th>
                                </tr>
                            </thead>
                            <tbody>
                                {list.into_iter().map(|e| {
                                    let status_class = format!("num status-{}", e.status / 100);
                                    let title = format!("call {} · key {}", e.id, e.key_id);
                                    view! {
                                        <tr data-testid="log-row" title=title>
                                            <td class="muted nowrap">{short_time(&e.time)}</td>
                                            <td class=status_class>
                                                {e.status}
                                                {e.error.map(|c| view! { " " <span class="badge error">{c}</span> })}
                                            </td>
                                            <td><code>{e.endpoint}</code></td>
                                            <td>{match e.model { Some(m) => format!("{} / {m}", e.api), None => e.api }}</td>
                                            <td>{e.request_type}</td>
                                            <td class="muted">{e.client_id.unwrap_or_default()}</td>
                                            <td class="num">{millis(e.latency_us)}</td>
                                            <td class="num">{format!("{} / {}", e.tokens_in, e.tokens_out)}</td>
                                            <td class="num">{credits_label(e.cost_micros)}</td>
                                        </tr>
                                    }
                                }).collect_view()}
                            </tbody>
                        </table>
                    </div>
                }.into_any()
            }}
            <div class="inline-row" style="margin-top:12px">
                <button
                    class="secondary"
                    data-testid="log-newer"
                    disabled={move || cursors.with(|c| c.len() <= 1)}
                    on:click=move |_| cursors.update(|c| { c.pop(); })
                >
                    "← Newer"
                </button>
                <button
                    class="secondary"
                    data-testid="log-older"
                    disabled=move || next_before.with(Option::is_none)
                    on:click=move |_| {
                        if let Some(before) = next_before.get_untracked() {
                            live.set(false);
                            cursors.update(|c| c.push(LogCursor::Before(before)));
                        }
                    }
                >
                    "Older →"
                </button>
                <span class="muted">{move || format!("Page {}", cursors.with(Vec::len))}</span>
            </div>
        </section>
    }
}
