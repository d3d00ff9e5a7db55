//! Finance (C2, C4–C7): the selected environment's balance, top-ups through
//! payment intents, the spending log with filters, the invoice history with
//! downloads, subscription packages, bonus credits, the low-balance alert and
//! the auto top-up rule. The paused and low-balance banners link here.
//!
//! Every member sees the balance, the spending log, bonuses and the alert;
//! top-ups, invoices, subscriptions and auto top-up belong to owners, admins
//! and billing members, as on the server.

use leptos::prelude::*;
use leptos::task::spawn_local;
use tally_common::{
    AutoTopup, Bonus, Currency, Environment, IntentStatus, LowBalanceAlert, LowBalanceAlertList,
    PaymentIntent, SetAutoTopupRequest, StatementSummary, SubscribeRequest, Subscription,
    SubscriptionStatus,
};

use crate::api::{self, ApiError};
use crate::components::banners::banners_changed;
use crate::components::{
    credits, credits_label, invalid_input, parse_credits, short_time, use_refresh_tick,
    ErrorNotice, Loaded, Micros,
};
use crate::pages::credits::{balances_resource, CurrentBalance, Ledger};
use crate::state::use_app;

const INTENT_PAGE: u32 = 20;
/// How often a pending intent is asked for its status.
const POLL_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Millionths of a unit as an amount of the currency: `12.500000 USDC`.
fn units_label(amount_units: i64, currency: Currency) -> String {
    format!("{} {currency}", Micros(amount_units))
}

fn alert_of(list: &LowBalanceAlertList, env: Environment) -> Option<LowBalanceAlert> {
    list.items.iter().find(|a| a.environment == env).cloned()
}

type Outcome = RwSignal<Option<Result<String, ApiError>>>;

/// A form's last outcome: a green line or the error.
fn outcome_view(outcome: Outcome) -> impl IntoView {
    move || {
        outcome.get().map(|m| match m {
            Ok(text) => {
                view! { <div class="alert ok" data-testid="outcome">{text}</div> }.into_any()
            }
            Err(e) => view! { <ErrorNotice error=e /> }.into_any(),
        })
    }
}

#[component]
pub fn Finance() -> impl IntoView {
    let app = use_app();
    let tick = use_refresh_tick();
    // Bumped by a payment, a new intent or a settings change so every panel
    // shows it at once.
    let changed = RwSignal::new(0u32);
    let balances = balances_resource(changed);
    let alerts = LocalResource::new(move || {
        tick.track();
        changed.track();
        app.environment.track();
        let ns = app.namespace.get().unwrap_or_default();
        async move { api::alerts(&ns).await }
    });
    // What changes here may change a banner (a top-up, the threshold).
    Effect::new(move |first: Option<()>| {
        changed.track();
        if first.is_some() {
            banners_changed();
        }
    });

    view! {
        <div class="page-head">
            <div>
                <h1>"Finance"</h1>
                <span class="muted">
                    {move || match app.environment.get() {
                        Environment::Test => "Test credits: top-ups here are paid on testnet.",
                        Environment::Live => "Live credits: top-ups here are paid with real stablecoins.",
                    }}
                </span>
            </div>
        </div>
        <section class="panel">
            <h2>{move || format!("Balance ({})", app.environment.get())}</h2>
            <CurrentBalance balances />
        </section>
        <Show
            when=move || app.can_bill()
            fallback=|| view! {
                <section class="panel" data-testid="billing-readonly">
                    <h2>"Top-ups and invoices"</h2>
                    <p class="muted">"Top-ups, invoices and auto top-up are for owners, admins and billing members of this namespace."</p>
                </section>
            }
        >
            <TopUp changed />
            <Intents tick changed />
        </Show>
        <Ledger tick changed filterable=true />
        <Show when=move || app.can_bill()>
            <Invoices tick changed />
            <Subscriptions tick changed />
        </Show>
        <Bonuses tick changed />
        <AlertSettings alerts changed />
        <Show when=move || app.can_bill()>
            <AutoTopupSettings tick changed />
        </Show>
    }
}

#[component]
fn TopUp(changed: RwSignal<u32>) -> impl IntoView {
    let app = use_app();
    // The server says which currencies it accepts (RTITY only after TGE).
    let status = LocalResource::new(api::status);
    let accepted = move || {
        status
            .get()
            .and_then(Result::ok)
            .map(|s| s.topup_currencies)
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| vec![Currency::Usdc, Currency::Usdt])
    };
    let currency = RwSignal::new(Currency::Usdc);
    let amount = RwSignal::new(String::new());
    let error = RwSignal::new(None::<ApiError>);
    let busy = RwSignal::new(false);
    // The intent being paid; forgotten when the namespace or environment changes.
    let current = RwSignal::new(None::<PaymentIntent>);
    Effect::new(move |_| {
        app.namespace.track();
        app.environment.track();
        current.set(None);
    });
    let submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let Some(amount_units) = parse_credits(&amount.get_untracked()).filter(|m| *m > 0) else {
            error.set(Some(invalid_input(
                "The amount must be a positive number with at most six decimals.",
            )));
            return;
        };
        let req = tally_common::CreateIntentRequest {
            environment: app.environment.get_untracked(),
            currency: currency.get_untracked(),
            amount_units,
        };
        let ns = app.namespace.get_untracked().unwrap_or_default();
        busy.set(true);
        spawn_local(async move {
            match api::create_intent(&ns, &req).await {
                Ok(intent) => {
                    error.set(None);
                    amount.set(String::new());
                    current.set(Some(intent));
                    changed.update(|n| *n += 1);
                }
                Err(e) => error.set(Some(e)),
            }
            busy.set(false);
        });
    };

    view! {
        <section class="panel" data-testid="topup">
            <h2>{move || format!("Top up {} credits", app.environment.get())}</h2>
            <p class="muted">"Create a payment intent, then pay it quoting its reference. The credits arrive when the deposit is confirmed."</p>
            {move || error.get().map(|e| view! { <ErrorNotice error=e /> })}
            <form class="inline" on:submit=submit>
                <select data-testid="topup-currency"
                    on:change=move |ev| {
                        if let Some(c) = Currency::parse(&event_target_value(&ev)) {
                            currency.set(c);
                        }
                    }>
                    {move || accepted().into_iter().map(|c| view! {
                        <option value=c.as_str() selected=move || currency.get() == c>{c.as_str()}</option>
                    }).collect_view()}
                </select>
                <input data-testid="topup-amount" required inputmode="decimal" placeholder="Amount, e.g. 25 or 12.5"
                    prop:value=move || amount.get() on:input=move |ev| amount.set(event_target_value(&ev)) />
                <button type="submit" data-testid="topup-submit" disabled=move || busy.get()>"Create payment intent"</button>
            </form>
            {move || current.get().map(|intent| view! { <CurrentIntent intent changed /> })}
        </section>
    }
}

/// The intent just created: what to pay and its status, asked again every
/// few seconds until it is paid.
#[component]
fn CurrentIntent(intent: PaymentIntent, changed: RwSignal<u32>) -> impl IntoView {
    let app = use_app();
    let poll = RwSignal::new(0u32);
    let paid = RwSignal::new(intent.status == IntentStatus::Succeeded);
    if let Ok(handle) = set_interval_with_handle(
        move || {
            if !paid.get_untracked() {
                poll.update(|n| *n = n.wrapping_add(1));
            }
        },
        POLL_EVERY,
    ) {
        on_cleanup(move || handle.clear());
    }
    let id = intent.id.clone();
    let latest = LocalResource::new(move || {
        poll.track();
        let ns = app.namespace.get_untracked().unwrap_or_default();
        let id = id.clone();
        async move { api::intent(&ns, &id).await }
    });
    // The moment it is paid, the balance, history and invoices reload.
    Effect::new(move |_| {
        if let Some(Ok(i)) = latest.get() {
            if i.status == IntentStatus::Succeeded && !paid.get_untracked() {
                paid.set(true);
                changed.update(|n| *n += 1);
            }
        }
    });
    view! {
        <div class="intent" data-testid="current-intent">
            <Loaded resource=latest loading="Checking the payment…" show=move |i: PaymentIntent| {
                let pay = units_label(i.amount_units, i.currency);
                let env = i.environment;
                view! {
                    <div class="intent-head">
                        <span>"Pay " <strong data-testid="intent-amount">{pay}</strong></span>
                        <IntentBadge status=i.status />
                    </div>
                    <div class="intent-ref">
                        <span class="muted">"Payment reference"</span>
                        <code data-testid="intent-id">{i.id.clone()}</code>
                    </div>
                    {match i.deposit {
                        None => view! {
                            <p class="muted" data-testid="intent-waiting">
                                {format!("Quote the reference with the payment. The {env} balance is credited as soon as the deposit is confirmed; this updates by itself.")}
                            </p>
                        }.into_any(),
                        Some(d) => view! {
                            <p data-testid="intent-credited">
                                {format!(
                                    "Received {} on {}: {} credited at {} credits per {}.",
                                    units_label(d.amount_units, d.currency),
                                    short_time(&d.received_at),
                                    credits_label(d.credited_micros),
                                    Micros(d.rate_micros),
                                    d.currency,
                                )}
                                <br /><span class="muted">"Transaction " <code>{d.external_tx_id}</code></span>
                            </p>
                        }.into_any(),
                    }}
                }.into_any()
            } />
        </div>
    }
}

#[component]
fn IntentBadge(status: IntentStatus) -> impl IntoView {
    match status {
        IntentStatus::Pending => {
            view! { <span class="badge warning" data-testid="intent-status">"waiting for payment"</span> }
                .into_any()
        }
        IntentStatus::Succeeded => {
            view! { <span class="badge ok" data-testid="intent-status">"paid"</span> }.into_any()
        }
    }
}

#[component]
fn Intents(tick: RwSignal<u32>, changed: RwSignal<u32>) -> impl IntoView {
    let app = use_app();
    let intents = LocalResource::new(move || {
        tick.track();
        changed.track();
        let ns = app.namespace.get().unwrap_or_default();
        let env = app.environment.get();
        async move { api::intents(&ns, env, INTENT_PAGE).await }
    });
    view! {
        <section class="panel">
            <h2>"Top-up history"</h2>
            <Loaded resource=intents loading="Loading top-ups…" show=move |page| {
                if page.items.is_empty() {
                    return view! { <p class="muted" data-testid="no-intents">"No top-ups in this environment yet."</p> }.into_any();
                }
                view! {
                    <div class="table-wrap"><table data-testid="intents">
                        <thead><tr>
                            <th>"Created"</th><th>"Reference"</th><th class="num">"Amount"</th>
                            <th>"Status"</th><th class="num">"Credited"</th><th>"By"</th>
                        </tr></thead>
                        <tbody>
                            {page.items.into_iter().map(|i| view! {
                                <tr data-testid="intent-row">
                                    <td class="muted nowrap">{short_time(&i.created_at)}</td>
                                    <td><code>{i.id}</code></td>
                                    <td class="num">{units_label(i.amount_units, i.currency)}</td>
                                    <td><IntentBadge status=i.status /></td>
                                    <td class="num pos">{i.deposit.map(|d| credits_label(d.credited_micros))}</td>
                                    <td class="by">{i.created_by}</td>
                                </tr>
                            }).collect_view()}
                        </tbody>
                    </table></div>
                    {page.next_before.is_some().then(|| view! {
                        <p class="muted" style="margin-top:10px">{format!("The {INTENT_PAGE} newest are shown.")}</p>
                    })}
                }.into_any()
            } />
        </section>
    }
}

#[component]
fn Invoices(tick: RwSignal<u32>, changed: RwSignal<u32>) -> impl IntoView {
    let app = use_app();
    let statements = LocalResource::new(move || {
        tick.track();
        changed.track();
        let ns = app.namespace.get().unwrap_or_default();
        let env = app.environment.get();
        async move { api::statements(&ns, env).await }
    });
    let download_error = RwSignal::new(None::<ApiError>);
    let download = move |month: String, format: &'static str| {
        let ns = app.namespace.get_untracked().unwrap_or_default();
        let env = app.environment.get_untracked();
        let path = api::statement_path(&ns, env, &month, format);
        let filename = format!("tally-statement-{month}-{env}.{format}");
        spawn_local(async move {
            download_error.set(api::download(&path, &filename).await.err());
        });
    };
    view! {
        <section class="panel">
            <h2>"Invoices"</h2>
            <p class="muted">"One statement per month (UTC). The running month's figures change until it closes; closing = opening + top-ups + grants − usage + subscriptions + bonuses + revenue − fees + other."</p>
            {move || download_error.get().map(|e| view! { <ErrorNotice error=e /> })}
            <Loaded resource=statements loading="Loading statements…" show=move |list| {
                view! {
                    <div class="table-wrap"><table data-testid="statements">
                        <thead><tr>
                            <th>"Month"</th><th class="num">"Opening"</th><th class="num">"Top-ups"</th>
                            <th class="num">"Grants"</th><th class="num">"Usage"</th><th class="num">"Other"</th>
                            <th class="num">"Closing"</th><th>"Download"</th>
                        </tr></thead>
                        <tbody>
                            {list.items.into_iter().map(|s| view! { <StatementRow s download /> }).collect_view()}
                        </tbody>
                    </table></div>
                }.into_any()
            } />
        </section>
    }
}

#[component]
fn StatementRow(
    s: StatementSummary,
    download: impl Fn(String, &'static str) + Copy + 'static,
) -> impl IntoView {
    let month = s.month.clone();
    let (csv, json) = (month.clone(), month.clone());
    let usage_class = if s.usage_micros > 0 { "num neg" } else { "num" };
    view! {
        <tr data-testid="statement-row" data-month=month.clone()>
            <td>
                <strong>{month.clone()}</strong>
                {(!s.closed).then(|| view! { " " <span class="badge info">"running"</span> })}
            </td>
            <td class="num">{credits(s.opening_balance_micros)}</td>
            <td class="num pos" data-testid="statement-topups">{credits(s.topups_micros)}</td>
            <td class="num">{credits(s.grants_micros)}</td>
            <td class=usage_class data-testid="statement-usage">{credits(s.usage_micros)}</td>
            <td class="num">{credits(
                s.other_micros + s.subscriptions_micros + s.bonuses_micros + s.revenue_micros
                    - s.platform_fees_micros,
            )}</td>
            <td class="num" data-testid="statement-closing"><strong>{credits(s.closing_balance_micros)}</strong></td>
            <td class="downloads">
                <button class="small secondary" data-testid="download-csv"
                    on:click=move |_| download(csv.clone(), "csv")>"CSV"</button>
                <button class="small secondary" data-testid="download-json"
                    on:click=move |_| download(json.clone(), "json")>"JSON"</button>
            </td>
        </tr>
    }
}

#[component]
fn AlertSettings(
    alerts: LocalResource<Result<LowBalanceAlertList, ApiError>>,
    changed: RwSignal<u32>,
) -> impl IntoView {
    let app = use_app();
    let threshold = RwSignal::new(String::new());
    let outcome: Outcome = RwSignal::new(None);
    let has_alert = move || {
        let env = app.environment.get();
        alerts
            .get()
            .and_then(Result::ok)
            .is_some_and(|list| alert_of(&list, env).is_some())
    };
    let save = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let Some(micros) = parse_credits(&threshold.get_untracked()).filter(|m| *m > 0) else {
            outcome.set(Some(Err(invalid_input(
                "The threshold must be a positive number of credits with at most six decimals.",
            ))));
            return;
        };
        let ns = app.namespace.get_untracked().unwrap_or_default();
        let env = app.environment.get_untracked();
        spawn_local(async move {
            let result = api::set_alert(&ns, env, micros).await.map(|a| {
                threshold.set(String::new());
                changed.update(|n| *n += 1);
                format!(
                    "The {env} alert is set at {}.",
                    credits_label(a.threshold_micros)
                )
            });
            outcome.set(Some(result));
        });
    };
    let clear = move |_| {
        let ns = app.namespace.get_untracked().unwrap_or_default();
        let env = app.environment.get_untracked();
        spawn_local(async move {
            let result = api::remove_alert(&ns, env).await.map(|()| {
                changed.update(|n| *n += 1);
                format!("The {env} alert is removed.")
            });
            outcome.set(Some(result));
        });
    };
    view! {
        <section class="panel" data-testid="alert-settings">
            <h2>"Low-balance alert"</h2>
            <p class="muted">"When the balance drops below the threshold, a credits.low_balance event fires once and this page shows a banner until the balance is back."</p>
            {outcome_view(outcome)}
            <Loaded resource=alerts loading="Loading the alert…" show=move |list| {
                let env = app.environment.get();
                match alert_of(&list, env) {
                    None => view! { <p data-testid="alert-current">{format!("No threshold is set for {env} credits.")}</p> }.into_any(),
                    Some(a) => view! {
                        <p data-testid="alert-current">
                            {format!("Alert below {}", credits_label(a.threshold_micros))}
                            " "
                            {if a.below {
                                view! { <span class="badge warning">"below now"</span> }.into_any()
                            } else {
                                view! { <span class="badge ok">"above"</span> }.into_any()
                            }}
                            {a.last_fired_at.map(|t| view! { <span class="muted">{format!(" · last fired {}", short_time(&t))}</span> })}
                        </p>
                    }.into_any(),
                }
            } />
            <Show
                when=move || app.can_bill()
                fallback=|| view! { <p class="muted" data-testid="alert-readonly">"Owners, admins and billing members change the threshold."</p> }
            >
                <form class="inline" on:submit=save style="margin-top:12px">
                    <input data-testid="alert-threshold" required inputmode="decimal" placeholder="Credits, e.g. 10"
                        prop:value=move || threshold.get() on:input=move |ev| threshold.set(event_target_value(&ev)) />
                    <button type="submit" data-testid="alert-save">"Set threshold"</button>
                    {move || has_alert().then(|| view! {
                        <button type="button" class="secondary" data-testid="alert-clear" on:click=clear>"Remove"</button>
                    })}
                </form>
            </Show>
        </section>
    }
}

#[component]
fn AutoTopupSettings(tick: RwSignal<u32>, changed: RwSignal<u32>) -> impl IntoView {
    let app = use_app();
    let rules = LocalResource::new(move || {
        tick.track();
        changed.track();
        app.environment.track();
        let ns = app.namespace.get().unwrap_or_default();
        async move { api::auto_topups(&ns).await }
    });
    let has_rule = move || {
        let env = app.environment.get();
        rules
            .get()
            .and_then(Result::ok)
            .is_some_and(|list| list.items.iter().any(|r| r.environment == env))
    };
    let accepted = LocalResource::new(api::status);
    let threshold = RwSignal::new(String::new());
    let amount = RwSignal::new(String::new());
    let currency = RwSignal::new(Currency::Usdc);
    let outcome: Outcome = RwSignal::new(None);
    let save = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let Some(threshold_micros) = parse_credits(&threshold.get_untracked()).filter(|m| *m > 0)
        else {
            outcome.set(Some(Err(invalid_input(
                "The threshold must be a positive number of credits with at most six decimals.",
            ))));
            return;
        };
        let Some(amount_units) = parse_credits(&amount.get_untracked()).filter(|m| *m > 0) else {
            outcome.set(Some(Err(invalid_input(
                "The amount must be a positive number with at most six decimals.",
            ))));
            return;
        };
        let req = SetAutoTopupRequest {
            threshold_micros,
            amount_units,
            currency: currency.get_untracked(),
        };
        let ns = app.namespace.get_untracked().unwrap_or_default();
        let env = app.environment.get_untracked();
        spawn_local(async move {
            let result = api::set_auto_topup(&ns, env, &req).await.map(|r| {
                threshold.set(String::new());
                amount.set(String::new());
                changed.update(|n| *n += 1);
                format!("Auto top-up set: {}.", rule_text(&r))
            });
            outcome.set(Some(result));
        });
    };
    let clear = move |_| {
        let ns = app.namespace.get_untracked().unwrap_or_default();
        let env = app.environment.get_untracked();
        spawn_local(async move {
            let result = api::remove_auto_topup(&ns, env).await.map(|()| {
                changed.update(|n| *n += 1);
                format!("The {env} auto top-up is removed.")
            });
            outcome.set(Some(result));
        });
    };
    view! {
        <section class="panel" data-testid="auto-topup-settings">
            <h2>"Auto top-up"</h2>
            <p class="muted">"Each time the balance drops below the threshold, a payment intent for the amount is created for the payment processor to pay from your standing authorization."</p>
            {outcome_view(outcome)}
            <Loaded resource=rules loading="Loading the rule…" show=move |list| {
                let env = app.environment.get();
                match list.items.into_iter().find(|r| r.environment == env) {
                    None => view! { <p data-testid="auto-topup-current">{format!("No auto top-up for {env} credits.")}</p> }.into_any(),
                    Some(r) => view! {
                        <p data-testid="auto-topup-current">
                            {rule_text(&r)}
                            {r.last_intent_id.map(|id| view! { <span class="muted">" · last intent " <code>{id}</code></span> })}
                        </p>
                    }.into_any(),
                }
            } />
            <form class="inline" on:submit=save style="margin-top:12px">
                <input data-testid="auto-topup-threshold" required inputmode="decimal" placeholder="Below (credits)"
                    prop:value=move || threshold.get() on:input=move |ev| threshold.set(event_target_value(&ev)) />
                <input data-testid="auto-topup-amount" required inputmode="decimal" placeholder="Top up (amount)"
                    prop:value=move || amount.get() on:input=move |ev| amount.set(event_target_value(&ev)) />
                <select data-testid="auto-topup-currency"
                    on:change=move |ev| {
                        if let Some(c) = Currency::parse(&event_target_value(&ev)) {
                            currency.set(c);
                        }
                    }>
                    {move || accepted
                        .get()
                        .and_then(Result::ok)
                        .map(|s| s.topup_currencies)
                        .filter(|c| !c.is_empty())
                        .unwrap_or_else(|| vec![Currency::Usdc, Currency::Usdt])
                        .into_iter()
                        .map(|c| view! {
                            <option value=c.as_str() selected=move || currency.get() == c>{c.as_str()}</option>
                        })
                        .collect_view()}
                </select>
                <button type="submit" data-testid="auto-topup-save">"Set rule"</button>
                {move || has_rule().then(|| view! {
                    <button type="button" class="secondary" data-testid="auto-topup-clear" on:click=clear>"Remove"</button>
                })}
            </form>
        </section>
    }
}

fn rule_text(r: &AutoTopup) -> String {
    format!(
        "Below {}, top up {}",
        credits_label(r.threshold_micros),
        units_label(r.amount_units, r.currency)
    )
}

#[component]
fn Subscriptions(tick: RwSignal<u32>, changed: RwSignal<u32>) -> impl IntoView {
    let app = use_app();
    let packages = LocalResource::new(api::packages);
    let subscriptions = LocalResource::new(move || {
        tick.track();
        changed.track();
        let ns = app.namespace.get().unwrap_or_default();
        async move { api::subscriptions(&ns).await }
    });
    let outcome: Outcome = RwSignal::new(None);
    let subscribe = move |package: String| {
        let ns = app.namespace.get_untracked().unwrap_or_default();
        let req = SubscribeRequest {
            environment: app.environment.get_untracked(),
            package,
        };
        spawn_local(async move {
            let result = api::subscribe(&ns, &req).await.map(|s| {
                changed.update(|n| *n += 1);
                format!(
                    "Subscribed to {}: pay payment intent {} to start it.",
                    s.package,
                    s.pending_intent_id.unwrap_or_default()
                )
            });
            outcome.set(Some(result));
        });
    };
    let cancel = move |id: String| {
        let ns = app.namespace.get_untracked().unwrap_or_default();
        spawn_local(async move {
            let result = api::cancel_subscription(&ns, &id).await.map(|s| {
                changed.update(|n| *n += 1);
                match s.current_period_end {
                    Some(end) if s.status == SubscriptionStatus::Active => {
                        format!("Cancelled: it ends on {}.", short_time(&end))
                    }
                    _ => "Cancelled.".to_owned(),
                }
            });
            outcome.set(Some(result));
        });
    };
    let current = move || {
        let env = app.environment.get();
        subscriptions.get().and_then(Result::ok).and_then(|list| {
            list.items
                .into_iter()
                .find(|s| s.environment == env && s.status != SubscriptionStatus::Canceled)
        })
    };
    view! {
        <section class="panel" data-testid="subscriptions">
            <h2>"Subscription"</h2>
            <p class="muted">"A package credits its credits every month once its payment intent is paid; renewals create a new intent at the end of each period."</p>
            {outcome_view(outcome)}
            {move || match current() {
                Some(s) => view! { <SubscriptionView s cancel /> }.into_any(),
                None => view! {
                    <Loaded resource=packages loading="Loading packages…" show=move |list| {
                        if list.items.is_empty() {
                            return view! { <p class="muted">"This server offers no packages."</p> }.into_any();
                        }
                        view! {
                            <div class="packages">
                                {list.items.into_iter().map(|p| {
                                    let slug = p.slug.clone();
                                    view! {
                                        <div class="package" data-testid="package">
                                            <strong>{p.name}</strong>
                                            <div>{format!("{} a month", credits_label(p.credits_micros))}</div>
                                            <div class="muted">{units_label(p.price_units, p.currency)}" / month"</div>
                                            <button class="small" data-testid="subscribe"
                                                on:click=move |_| subscribe(slug.clone())>"Subscribe"</button>
                                        </div>
                                    }
                                }).collect_view()}
                            </div>
                        }.into_any()
                    } />
                }.into_any(),
            }}
        </section>
    }
}

#[component]
fn SubscriptionView(s: Subscription, cancel: impl Fn(String) + Copy + 'static) -> impl IntoView {
    let id = s.id.clone();
    let state = match (s.status, s.cancel_at_period_end) {
        (SubscriptionStatus::Pending, _) => {
            view! { <span class="badge warning">"awaiting payment"</span> }.into_any()
        }
        (_, true) => view! { <span class="badge">"ends with the period"</span> }.into_any(),
        _ => view! { <span class="badge ok">"active"</span> }.into_any(),
    };
    view! {
        <p data-testid="subscription-current">
            <strong>{s.package.clone()}</strong>
            {format!(
                " · {} a month for {} ",
                credits_label(s.credits_micros),
                units_label(s.price_units, s.currency)
            )}
            {state}
        </p>
        {s.current_period_end.map(|end| view! {
            <p class="muted">{format!("Paid until {}", short_time(&end))}</p>
        })}
        {s.pending_intent_id.map(|pi| view! {
            <p class="muted">"Payment intent to pay: " <code data-testid="subscription-intent">{pi}</code></p>
        })}
        {(!s.cancel_at_period_end).then(|| view! {
            <button class="secondary" data-testid="subscription-cancel"
                on:click=move |_| cancel(id.clone())>"Cancel subscription"</button>
        })}
    }
}

#[component]
fn Bonuses(tick: RwSignal<u32>, changed: RwSignal<u32>) -> impl IntoView {
    let app = use_app();
    let bonuses = LocalResource::new(move || {
        tick.track();
        changed.track();
        let ns = app.namespace.get().unwrap_or_default();
        let env = app.environment.get();
        async move { api::bonuses(&ns, env).await }
    });
    view! {
        <section class="panel" data-testid="bonuses">
            <h2>"Bonus credits"</h2>
            <p class="muted">"Bonuses for running nodes, test jobs, feedback and referrals. Those that expire are spent first; what is left at expiry leaves the balance."</p>
            <Loaded resource=bonuses loading="Loading bonuses…" show=move |list| {
                if list.items.is_empty() {
                    return view! { <p class="muted" data-testid="no-bonuses">"No bonus credits in this environment."</p> }.into_any();
                }
                view! {
                    {(list.expiring_micros > 0).then(|| view! {
                        <p data-testid="bonus-expiring">
                            {format!("{} of bonus credits expire", credits_label(list.expiring_micros))}
                            {list.next_expiry.map(|t| format!(", the next on {}", short_time(&t)))}
                        </p>
                    })}
                    <div class="table-wrap"><table>
                        <thead><tr>
                            <th>"Granted"</th><th>"Reason"</th><th class="num">"Amount"</th>
                            <th class="num">"Left"</th><th>"Expires"</th><th>"Status"</th>
                        </tr></thead>
                        <tbody>
                            {list.items.into_iter().map(|b| view! { <BonusRow b /> }).collect_view()}
                        </tbody>
                    </table></div>
                }.into_any()
            } />
        </section>
    }
}

#[component]
fn BonusRow(b: Bonus) -> impl IntoView {
    let status = match b.status.as_str() {
        "active" => view! { <span class="badge ok">"active"</span> }.into_any(),
        "expired" => view! { <span class="badge">{format!("expired · {} left", credits_label(b.expired_micros))}</span> }.into_any(),
        other => view! { <span class="badge">{other.to_owned()}</span> }.into_any(),
    };
    view! {
        <tr data-testid="bonus-row">
            <td class="muted nowrap">{short_time(&b.created_at)}</td>
            <td>{b.reason.label()}{b.memo.map(|m| view! { <div class="muted">{m}</div> })}</td>
            <td class="num pos">{credits_label(b.amount_micros)}</td>
            <td class="num">{credits_label(b.remaining_micros)}</td>
            <td class="muted nowrap">{b.expires_at.map_or_else(|| "never".to_owned(), |t| short_time(&t))}</td>
            <td>{status}</td>
        </tr>
    }
}
