//! Credits (C1, C2 faucet and grants): the balance of the selected environment,
//! the testnet faucet, the ledger it is the sum of, and operators' grants.

use leptos::prelude::*;
use leptos::task::spawn_local;
use tally_common::{Balance, Balances, Environment, GrantRequest, LedgerEntry};

use crate::api;
use crate::components::{
    credits_label, exact_credits, invalid_input, parse_credits, short_time, use_refresh_tick,
    ErrorNotice, Loaded,
};
use crate::state::use_app;

const LEDGER_PAGE: u32 = 50;

/// The current environment's balance, or `None` when the server listed none for it.
fn balance_of(items: Vec<Balance>, env: Environment) -> Option<Balance> {
    items.into_iter().find(|b| b.environment == env)
}

#[component]
pub fn Credits() -> impl IntoView {
    let app = use_app();
    let tick = use_refresh_tick();
    // Bumped by the faucet and grants so the balance and ledger show them at once.
    let changed = RwSignal::new(0u32);
    let balances = balances_resource(changed);

    view! {
        <div class="page-head">
            <div>
                <h1>"Credits"</h1>
                <span class="muted">
                    {move || match app.environment.get() {
                        Environment::Test => "Test credits are free, come from the faucet and pay only for test calls.",
                        Environment::Live => "Live credits pay for calls made with live keys.",
                    }}
                </span>
            </div>
        </div>
        <section class="panel">
            <h2>{move || format!("Balance ({})", app.environment.get())}</h2>
            <CurrentBalance balances />
            <Show when=move || app.environment.get() == Environment::Test>
                <Faucet on_done=move || changed.update(|n| *n += 1) />
            </Show>
        </section>
        <Show when=move || app.is_operator.get()>
            <Grant on_done=move || changed.update(|n| *n += 1) />
        </Show>
        <Ledger tick changed />
    }
}

/// The namespace's balances, reloaded by the refresh tick and when `changed` is bumped.
pub fn balances_resource(changed: RwSignal<u32>) -> LocalResource<Result<Balances, api::ApiError>> {
    let app = use_app();
    let tick = use_refresh_tick();
    LocalResource::new(move || {
        tick.track();
        changed.track();
        let ns = app.namespace.get().unwrap_or_default();
        async move { api::balances(&ns).await }
    })
}

/// The selected environment's balance, held and available amounts.
#[component]
pub fn CurrentBalance(balances: LocalResource<Result<Balances, api::ApiError>>) -> impl IntoView {
    let app = use_app();
    view! {
        <Loaded resource=balances loading="Loading balance…" show=move |list| {
            match balance_of(list.items, app.environment.get()) {
                None => view! { <p class="muted">"The server reported no balance for this environment."</p> }.into_any(),
                Some(b) => view! { <BalanceCards balance=b /> }.into_any(),
            }
        } />
    }
}

#[component]
fn BalanceCards(balance: Balance) -> impl IntoView {
    view! {
        <div class="kpis">
            <div class="kpi"><span class="muted">"Balance"</span>
                <strong data-testid="balance" title=exact_credits(balance.balance_micros)>{credits_label(balance.balance_micros)}</strong></div>
            <div class="kpi"><span class="muted">"Held by calls in flight"</span>
                <strong data-testid="balance-held" title=exact_credits(balance.held_micros)>{credits_label(balance.held_micros)}</strong></div>
            <div class="kpi"><span class="muted">"Available"</span>
                <strong data-testid="balance-available" title=exact_credits(balance.available_micros)>{credits_label(balance.available_micros)}</strong></div>
        </div>
    }
}

#[component]
fn Faucet(on_done: impl Fn() + Copy + 'static) -> impl IntoView {
    let app = use_app();
    let message = RwSignal::new(None::<Result<String, api::ApiError>>);
    let busy = RwSignal::new(false);
    let claim = move |_| {
        let ns = app.namespace.get_untracked().unwrap_or_default();
        busy.set(true);
        spawn_local(async move {
            let result = api::faucet(&ns).await.map(|r| {
                format!(
                    "Added {}. The faucet gives again after {}.",
                    credits_label(r.amount_micros),
                    short_time(&r.next_available_at)
                )
            });
            if result.is_ok() {
                on_done();
            }
            // A 429 `rate_limited` says in its message when the faucet gives again.
            message.set(Some(result));
            busy.set(false);
        });
    };
    view! {
        <div class="inline-row" style="margin-top:14px">
            <button data-testid="faucet" on:click=claim disabled=move || busy.get()>"Get test credits"</button>
            <span class="muted">"Free test credits, a limited amount at a time."</span>
        </div>
        {move || message.get().map(|m| match m {
            Ok(text) => view! { <div class="alert ok" style="margin-top:12px" data-testid="faucet-result">{text}</div> }.into_any(),
            Err(e) => view! { <div style="margin-top:12px"><ErrorNotice error=e /></div> }.into_any(),
        })}
    }
}

#[component]
fn Grant(on_done: impl Fn() + Copy + 'static) -> impl IntoView {
    let app = use_app();
    let amount = RwSignal::new(String::new());
    let memo = RwSignal::new(String::new());
    let message = RwSignal::new(None::<Result<String, api::ApiError>>);
    let submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let Some(amount_micros) = parse_credits(&amount.get_untracked()).filter(|m| *m > 0) else {
            message.set(Some(Err(invalid_input(
                "The amount must be a positive number of credits with at most six decimals.",
            ))));
            return;
        };
        let memo_text = memo.get_untracked().trim().to_owned();
        let env = app.environment.get_untracked();
        let req = GrantRequest {
            environment: env,
            amount_micros,
            memo: (!memo_text.is_empty()).then_some(memo_text),
        };
        let ns = app.namespace.get_untracked().unwrap_or_default();
        spawn_local(async move {
            let result = api::grant(&ns, &req).await.map(|_| {
                amount.set(String::new());
                memo.set(String::new());
                format!("Granted {} ({env}).", credits_label(amount_micros))
            });
            if result.is_ok() {
                on_done();
            }
            message.set(Some(result));
        });
    };
    view! {
        <section class="panel" data-testid="grant">
            <h2>{move || format!("Grant {} credits (operator)", app.environment.get())}</h2>
            {move || message.get().map(|m| match m {
                Ok(text) => view! { <div class="alert ok">{text}</div> }.into_any(),
                Err(e) => view! { <ErrorNotice error=e /> }.into_any(),
            })}
            <form class="inline" on:submit=submit>
                <input data-testid="grant-amount" required inputmode="decimal" placeholder="Credits, e.g. 25 or 0.5"
                    prop:value=move || amount.get() on:input=move |ev| amount.set(event_target_value(&ev)) />
                <input data-testid="grant-memo" maxlength="200" placeholder="Memo (optional)"
                    prop:value=move || memo.get() on:input=move |ev| memo.set(event_target_value(&ev)) />
                <button type="submit" data-testid="grant-submit">"Grant"</button>
            </form>
        </section>
    }
}

/// The kinds of ledger entries, for the spending log's filter.
const KINDS: [(&str, &str); 11] = [
    ("", "All kinds"),
    ("usage", "Usage (calls)"),
    ("topup", "Top-ups"),
    ("subscription", "Subscriptions"),
    ("grant", "Grants"),
    ("faucet", "Faucet"),
    ("bonus", "Bonuses"),
    ("bonus_expired", "Expired bonuses"),
    ("revenue", "Seller revenue"),
    ("platform_fee", "Platform fees"),
    ("adjustment", "Adjustments"),
];

/// A date input (`YYYY-MM-DD`) as the start of that UTC day, or of the next.
fn day_bound(date: &str, next_day: bool) -> String {
    let date = date.trim();
    if date.is_empty() {
        return String::new();
    }
    if next_day {
        // The end bound is exclusive: the last instant of the day is included.
        format!("{date}T23:59:59.999Z")
    } else {
        format!("{date}T00:00:00Z")
    }
}

/// The ledger, newest first. With `filterable` it is the spending log (C4):
/// filters by kind, key, call id and dates, every debit traceable to its call.
#[component]
pub fn Ledger(
    tick: RwSignal<u32>,
    changed: RwSignal<u32>,
    #[prop(optional)] filterable: bool,
) -> impl IntoView {
    let app = use_app();
    let filter = RwSignal::new(api::LedgerFilter::default());
    let (from_day, to_day) = (RwSignal::new(String::new()), RwSignal::new(String::new()));
    let keys = LocalResource::new(move || {
        let ns = app.namespace.get().unwrap_or_default();
        let env = app.environment.get();
        async move {
            if filterable {
                api::keys(&ns, env, None).await.map(|k| k.items)
            } else {
                Ok(Vec::new())
            }
        }
    });
    // How many pages are shown. A refresh reloads all of them by following
    // `next_before` from the newest entry, so new entries never leave a gap
    // between the first page and the older ones.
    let pages = RwSignal::new(1u32);
    Effect::new(move |_| {
        app.namespace.track();
        app.environment.track();
        filter.track();
        pages.set(1);
    });
    let ledger = LocalResource::new(move || {
        tick.track();
        changed.track();
        let ns = app.namespace.get().unwrap_or_default();
        let env = app.environment.get();
        let pages = pages.get();
        let filter = filter.get();
        async move {
            let mut items: Vec<LedgerEntry> = Vec::new();
            let mut before = None;
            for _ in 0..pages {
                let page = api::ledger(&ns, env, LEDGER_PAGE, before, &filter).await?;
                items.extend(page.items);
                before = page.next_before;
                if before.is_none() {
                    break;
                }
            }
            Ok::<_, api::ApiError>((items, before))
        }
    });
    let set = move |f: fn(&mut api::LedgerFilter, String)| {
        move |ev: leptos::ev::Event| {
            let v = event_target_value(&ev);
            filter.update(|filter| f(filter, v));
        }
    };
    let filters = move || {
        filterable.then(|| view! {
            <div class="inline-row filters" data-testid="ledger-filters">
                <select data-testid="filter-kind" on:change=set(|f, v| f.kind = v)>
                    {KINDS.iter().map(|(value, label)| view! {
                        <option value=*value selected=move || filter.with(|f| f.kind == *value)>{*label}</option>
                    }).collect_view()}
                </select>
                <select data-testid="filter-key" on:change=set(|f, v| f.actor = v)>
                    <option value="">"All keys"</option>
                    {move || keys.get().and_then(Result::ok).unwrap_or_default().into_iter().map(|k| view! {
                        <option value=k.id.clone()>{format!("{} (…{})", k.name, k.last4)}</option>
                    }).collect_view()}
                </select>
                <input data-testid="filter-reference" placeholder="Call id or reference"
                    on:change=set(|f, v| f.reference = v) />
                <label class="muted">"From "
                    <input type="date" data-testid="filter-from" prop:value=move || from_day.get()
                        on:change=move |ev| {
                            let v = event_target_value(&ev);
                            filter.update(|f| f.from = day_bound(&v, false));
                            from_day.set(v);
                        } />
                </label>
                <label class="muted">"To "
                    <input type="date" data-testid="filter-to" prop:value=move || to_day.get()
                        on:change=move |ev| {
                            let v = event_target_value(&ev);
                            filter.update(|f| f.to = day_bound(&v, true));
                            to_day.set(v);
                        } />
                </label>
            </div>
        })
    };
    view! {
        <section class="panel" data-testid=if filterable { "spending-log" } else { "ledger-panel" }>
            <h2>{if filterable { "Spending log" } else { "Ledger" }}</h2>
            <p class="muted">{if filterable {
                "Every movement of the balance, newest first. A call's usage entry names its key and references its call id; filter to trace spending."
            } else {
                "Every change of the balance, newest first; the balance is their sum."
            }}</p>
            {filters}
            <Loaded resource=ledger loading="Loading the ledger…" show=move |ledger| {
                match ledger {
                    (items, _) if items.is_empty() => view! {
                        <p class="muted" data-testid="no-ledger">"No entries yet."</p>
                    }.into_any(),
                    (items, more) => view! {
                        <div class="table-wrap"><table data-testid="ledger">
                            <thead><tr>
                                <th>"Time"</th><th>"Kind"</th><th class="num">"Amount"</th>
                                <th class="num">"Balance after"</th><th>"By"</th><th>"Reference / memo"</th>
                            </tr></thead>
                            <tbody>
                                {items.into_iter().map(|e| {
                                    let class = if e.amount_micros < 0 { "num neg" } else { "num pos" };
                                    let note = [e.reference, e.memo].into_iter().flatten().collect::<Vec<_>>().join(" · ");
                                    view! {
                                        <tr data-testid="ledger-row">
                                            <td class="muted nowrap">{short_time(&e.time)}</td>
                                            <td><code>{e.kind}</code></td>
                                            <td class=class title=exact_credits(e.amount_micros)>{credits_label(e.amount_micros)}</td>
                                            <td class="num" title=exact_credits(e.balance_after_micros)>{credits_label(e.balance_after_micros)}</td>
                                            <td class="by">{e.actor}</td>
                                            <td class="muted by">{note}</td>
                                        </tr>
                                    }
                                }).collect_view()}
                            </tbody>
                        </table></div>
                        {more.is_some().then(|| view! {
                            <div class="inline-row" style="margin-top:12px">
                                <button class="secondary" data-testid="ledger-older"
                                    on:click=move |_| pages.update(|n| *n += 1)>"Load older"</button>
                            </div>
                        })}
                    }.into_any(),
                }
            } />
        </section>
    }
}
